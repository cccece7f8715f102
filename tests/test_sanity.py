"""A run that learned nothing says so: judged from the run's own files, built here by hand."""

from __future__ import annotations

import json

import pandas as pd

from cxrcore.config import TrainConfig
from cxrcore.evaluation.sanity import learned_nothing, transfer_drop
from cxrcore.runs import RunDir


def make_run(tmp_path, *, confusion=None, val_accuracy=(), val_labels=("A",) * 6 + ("B",) * 4, **config) -> RunDir:
    run = RunDir(tmp_path / "run")
    run.path.mkdir(parents=True)
    settings = dict(data=str(tmp_path), backbone="mobilenetv2_0.35", weights="imagenet", epochs=10, fine_tune_epochs=5)
    TrainConfig(**{**settings, **config}).save(run.file("config.json"))
    rows = [
        {"path": f"v{i}.png", "label": label, "split": "val", "patient_id": ""} for i, label in enumerate(val_labels)
    ]
    pd.DataFrame(rows).to_csv(run.file("split.csv"), index=False)
    if val_accuracy:
        history = pd.DataFrame({"epoch": range(1, len(val_accuracy) + 1), "val_accuracy": val_accuracy})
        history.to_csv(run.file("history.csv"), index=False)
    if confusion is not None:
        run.file("metrics.json").write_text(json.dumps({"classes": ["A", "B"], "confusion_matrix": confusion}))
    return run


def test_predictions_collapsed_to_one_class_are_named(tmp_path):
    # 19 of 20 test images called A (95%)
    run = make_run(tmp_path, confusion=[[10, 0], [9, 1]], weights="none", epochs=2, fine_tune_epochs=1)
    message = learned_nothing(run)
    assert message.startswith("This run learned nothing: it calls 95% of the test images A")
    assert "no pretrained weights (mobilenetv2_0.35 trained from scratch)" in message
    assert "too few epochs (2 + 1)" in message


def test_validation_accuracy_stuck_at_the_majority_rate_is_named(tmp_path):
    # the largest validation class is 6 of 10: an accuracy of 0.60 is what guessing A gives
    run = make_run(tmp_path, val_accuracy=(0.6, 0.6, 0.605), learning_rate=0.1)
    message = learned_nothing(run)
    assert "never rose above 0.60, the share of the largest class (0.60) in 3 epochs" in message
    assert "a learning rate too high (0.1)" in message


def test_a_run_that_learned_is_left_alone(tmp_path):
    run = make_run(tmp_path, confusion=[[9, 1], [2, 8]], val_accuracy=(0.6, 0.7, 0.8))
    assert learned_nothing(run) is None
    assert learned_nothing(make_run(tmp_path / "early", val_accuracy=(0.6, 0.6))) is None  # too early to judge


def test_an_external_drop_beyond_the_intervals_is_called_out():
    inside = {
        "accuracy": 0.96,
        "macro_auc": 0.99,
        "ci": {"accuracy": {"ci_low": 0.93, "ci_high": 0.98}, "macro_auc": {"ci_low": 0.98, "ci_high": 1.0}},
    }
    far = {
        "accuracy": 0.51,
        "macro_auc": 0.50,
        "ci": {"accuracy": {"ci_low": 0.48, "ci_high": 0.55}, "macro_auc": {"ci_low": 0.46, "ci_high": 0.54}},
    }
    near = {
        "accuracy": 0.93,
        "macro_auc": 0.97,
        "ci": {"accuracy": {"ci_low": 0.88, "ci_high": 0.95}, "macro_auc": {"ci_low": 0.95, "ci_high": 0.985}},
    }
    message = transfer_drop(inside, far)
    assert "accuracy 0.510 (95% CI 0.480-0.550) against 0.960 (0.930-0.980) inside" in message
    assert "macro AUC 0.500" in message
    assert transfer_drop(inside, near) is None  # the intervals overlap: chance may explain the gap
    assert transfer_drop({"accuracy": 0.9}, far) is None  # no intervals inside: nothing to compare
