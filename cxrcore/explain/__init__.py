"""Explanations: Grad-CAM, Grad-CAM++, Score-CAM and overlays (cam)."""
