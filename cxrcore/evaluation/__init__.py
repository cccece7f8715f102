"""Evaluation: metrics as pure functions (metrics), evaluating a run on its test split or an
external folder (evaluate), and plotly figure builders (plots)."""
