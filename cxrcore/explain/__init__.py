"""Explanations: Grad-CAM, Grad-CAM++, Score-CAM and overlays (cam), how far to believe one map
(faithfulness), and those scores over a run's test sample (sampled)."""
