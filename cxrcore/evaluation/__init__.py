"""Evaluation: metrics, calibration and operating points as pure functions, evaluating a run on its test
split or an external folder (evaluate, external), comparisons (compare), sanity checks, the model card and
plotly figure builders (plots)."""
