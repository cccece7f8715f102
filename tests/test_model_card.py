"""The model card states what was measured: a hand-made run directory, no training."""

from __future__ import annotations

import numpy as np
import pandas as pd

from cxrcore import runs
from cxrcore.config import LABEL_PRESETS, TrainConfig
from cxrcore.evaluation import model_card
from cxrcore.evaluation import operating_points as ops
from cxrcore.evaluation.metrics import classification_metrics


def _probs(y, right: float, rng) -> np.ndarray:
    """Two-class probabilities that put ``right`` of the images on their own class."""
    p_first = np.where(np.asarray(y) == 0, 0.8, 0.2)
    flip = rng.random(len(y)) > right
    p_first = np.where(flip, 1 - p_first, p_first) + rng.normal(0, 0.05, len(y))
    p_first = np.clip(p_first, 0.01, 0.99)
    return np.stack([p_first, 1 - p_first], axis=1)


def make_run(tmp_path, *, external_accuracy: float | None) -> runs.RunDir:
    rng = np.random.default_rng(0)
    classes = ["Abnormal", "Normal"]
    run = runs.RunDir(tmp_path / "run")
    run.path.mkdir()
    config = TrainConfig(
        data=str(tmp_path / "gone"), backbone="simple_cnn", labels=LABEL_PRESETS["abnormal-vs-normal"]
    ).resolved()
    config.save(run.file(runs.CONFIG))
    runs.write_json(run.file(runs.LABELS), classes)
    split = pd.DataFrame(
        {
            "path": [f"/x/{i}.png" for i in range(300)],
            "label": ["Abnormal", "Normal"] * 150,
            "patient_id": [f"p{i}" for i in range(300)],
            "split": ["train"] * 200 + ["val"] * 50 + ["test"] * 50,
        }
    )
    runs.write_csv(run.file(runs.SPLIT), split)
    run.update_info(status="succeeded", image_size=32, epochs_completed=3, params=1234, train_seconds=12.0)
    y_val = np.tile([0, 1], 25)
    points = ops.choose(_probs(y_val, 0.95, rng), y_val, classes)
    run.write_operating_points(points)
    y = np.tile([0, 1], 25)
    probs = _probs(y, 0.96, rng)
    metrics = classification_metrics(y, probs, classes, resamples=300)
    metrics["operating_points"] = ops.evaluate(probs, y, classes, points, resamples=300)
    runs.write_json(run.file(runs.METRICS), metrics)
    if external_accuracy is not None:
        y_ext = np.tile([0, 1], 100)
        found = classification_metrics(y_ext, _probs(y_ext, external_accuracy, rng), classes, resamples=300)
        folder = run.external_dir(tmp_path / "other-hospital")
        folder.mkdir(parents=True)
        runs.write_json(folder / runs.METRICS, found)
        runs.write_json(folder / runs.SOURCE, {"data": str(tmp_path / "other-hospital"), "n": 200})
    return run


def test_the_card_holds_every_section_and_the_measured_drop(tmp_path):
    run = make_run(tmp_path, external_accuracy=0.55)
    path = model_card.write(run)
    card = path.read_text()
    assert path == run.file(runs.MODEL_CARD) and card == run.model_card()
    for heading in (
        "## Intended use",
        "## Model",
        "## Data",
        "## Training",
        "## Results on the test split",
        "## Operating points",
        "## External validation",
        "## Limitations",
    ):
        assert f"\n{heading}\n" in card, heading
    metrics = run.metrics()
    ci = metrics["ci"]["accuracy"]
    assert f"Accuracy {metrics['accuracy']:.3f} ({ci['ci_low']:.2f}–{ci['ci_high']:.2f})" in card
    assert "| Abnormal | 100 | 25 | 25 |" in card  # counts per split
    assert "merged Abnormal = COVID + " in card  # the label scheme in words
    external = run.external_evaluations()[0].metrics
    drop = metrics["macro_auc"] - external["macro_auc"]
    assert f"−{drop:.3f}" in card  # the drop in macro AUC, beside the external result
    assert "does worse than on its own test split by more than chance explains" in card
    assert "No external validation" not in card
    assert "not a medical device" in card


def test_without_external_data_the_card_says_so(tmp_path):
    card = model_card.render(make_run(tmp_path, external_accuracy=None))
    assert "None yet: the model has only been tested on images from the sources it was trained on." in card
    assert "No external validation: the test split comes from the same sources" in card
    assert "The test split is small (50 images)" in card
    assert "Data audit" not in card  # the training folder is gone: no audit, and none made up


def test_the_card_states_the_audit_recorded_in_the_run_and_reads_no_image(tmp_path, monkeypatch):
    from cxrcore.data import audit as audit_module

    run = make_run(tmp_path, external_accuracy=None)
    (tmp_path / "gone").mkdir()  # the training folder exists again, images and all
    (tmp_path / "gone" / "A").mkdir()

    def no_audit(*args, **kwargs):
        raise AssertionError("rendering a card ran a data audit")

    monkeypatch.setattr(audit_module, "audit", no_audit)
    monkeypatch.setattr(audit_module, "shortcut_check", no_audit)
    assert "Data audit" not in model_card.render(run)  # none recorded: none computed, none made up
    run.write_audit(
        {
            "shortcut": {"accuracy": 0.84, "ci_low": 0.82, "ci_high": 0.85, "chance": 0.40, "flagged": True},
            "patient_leak": {"patients": 0},
            "duplicates": {"groups": 3, "across_splits": 1},
            "sources": {"north": {"Abnormal": 150}, "south": {"Normal": 150}},
        }
    )
    card = model_card.render(run)
    assert "predict the label with 0.84 accuracy (0.82–0.85) against 0.40 chance — **flagged**." in card
    assert "0 patient(s) across splits, 3 group(s) of identical files (1 across splits)" in card
    assert "- Source `north`: 150 Abnormal" in card and "- Source `south`: 150 Normal" in card


def test_the_explanations_section_has_a_lung_share_column(tmp_path):
    from cxrcore.explain import sampled

    run = make_run(tmp_path, external_accuracy=None)
    run.file(runs.MODEL).write_bytes(b"a model file")  # the scores are of this model file

    def score(mean):
        return {"mean": mean, "ci_low": mean - 0.05, "ci_high": mean + 0.05, "n": 10}

    faithful = {"deletion": score(0.2), "insertion": score(0.8)}
    run.write_faithfulness(
        {
            "settings": {"model": sampled.model_fingerprint(run)},
            "describe": "20 steps; removed pixels replaced by a blurred copy of the image",
            "border_warn": 0.6,
            "lung_warn": 0.5,
            "methods": {
                "gradcam": {**faithful, "border_share": score(0.30), "lung_share": score(0.42)},
                "random": {"deletion": score(0.5), "insertion": score(0.5)},
            },
            "images": [{}] * 10,
            "unreadable": [],
        }
    )
    card = model_card.render(run)
    assert "| method | deletion (95% CI) | insertion (95% CI) | border share | lung share |" in card
    assert "| Grad-CAM | 0.200 (0.150–0.250) | 0.800 (0.750–0.850) | 30% | 42% |" in card
    assert "| random map (reference) | 0.500 (0.450–0.550) | 0.500 (0.450–0.550) |  |  |" in card
    assert "Lung share: the map's mass inside the lung fields found by the shipped lung model" in card
    assert "Grad-CAM: on average only 42% of the map lies inside the lung fields" in card
    # scores from before lung shares: the column is there, empty
    old = run.faithfulness()
    del old["methods"]["gradcam"]["lung_share"]
    run.write_faithfulness(old)
    assert "| Grad-CAM | 0.200 (0.150–0.250) | 0.800 (0.750–0.850) | 30% |  |" in model_card.render(run)
