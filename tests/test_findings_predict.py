"""A findings run (one sigmoid output per finding) through prediction, explanations, the CLI, ensembles, export
and the Predict page: probabilities calibrated per finding, positives first, maps of any finding.

Two tiny findings models are trained once for the module (simple_cnn, 32 px, 1 epoch, the same split); their
calibration and operating points are written by hand, so every expectation below is worked out from numbers
the test chose."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import REPO, copy_run, litert_runner, once_per_session, tiny_config
from cxrcore import runs
from cxrcore.cli import main
from cxrcore.errors import ConfigError

#: this module's fixtures that train: tests asking for them are marked slow (conftest)
TRAINING_FIXTURES = {"findings_runs"}

FINDINGS = ["Cardiomegaly", "Consolidation", "Effusion", "Nodule", "Pneumothorax"]  # the demo's, sorted
TEMPERATURES = {
    "first": [2.0, 0.5, 1.5, 1.0, 3.0],
    "second": [1.0, 1.25, 0.8, 2.5, 1.0],
}
#: the first run's thresholds: Cardiomegaly and Consolidation always positive, Nodule never, the rest none
THRESHOLDS = {"Cardiomegaly": 0.0, "Consolidation": 0.0, "Effusion": None, "Nodule": 1.0, "Pneumothorax": None}


@dataclass(frozen=True)
class FindingsRuns:
    first: runs.RunDir
    second: runs.RunDir
    data: Path

    def images(self, n: int) -> list[str]:
        return [str(p) for p in sorted((self.data / "images").glob("*.png"))[:n]]


def write_points(run: runs.RunDir, sensitivity: dict, youden: dict | None = None) -> None:
    youden = youden or {}
    runs.write_json(
        run.file(runs.OPERATING_POINTS),
        {
            "target_sensitivity": 0.9,
            "chosen_on": "val",
            "n": 40,
            "thresholds": {f: {"sensitivity": sensitivity.get(f), "youden": youden.get(f)} for f in FINDINGS},
        },
    )


@pytest.fixture(scope="module")
def findings_runs(tmp_path_factory, shared_runs) -> FindingsRuns:
    """Two tiny findings runs (the training stage alone) with calibration and operating points written here by
    hand; trained once per session (:func:`once_per_session`: not once per xdist worker), read-only."""

    def make() -> FindingsRuns:
        from cxrcore.config import HeadConfig
        from cxrcore.data.demo import make_findings_demo
        from cxrcore.training.train import train

        base = tmp_path_factory.mktemp("findings-predict")
        data = make_findings_demo(base / "data", n_images=160, image_size=64, seed=0)
        made = {}
        for name, head in (("first", [8]), ("second", [16])):  # one seed: one split, so they make an ensemble
            config = tiny_config(data, epochs=1, head=HeadConfig(dense_units=head, dropout=0.0))
            run = train(config, out_dir=base / "runs" / name)
            assert run.task() == "findings" and run.labels() == FINDINGS
            runs.write_json(
                run.file(runs.CALIBRATION),
                {"temperatures": dict(zip(FINDINGS, TEMPERATURES[name])), "fitted_on": "val", "n": 40},
            )
            made[name] = run
        write_points(made["first"], THRESHOLDS)
        return FindingsRuns(made["first"], made["second"], data)

    found = once_per_session(tmp_path_factory, "findings_predict_runs", make)
    for run in (found.first, found.second):
        shared_runs.freeze(run.path.parent)
    return found


def fake_class_run(folder: Path) -> runs.RunDir:
    """A finished class run as far as the checks before loading a model can tell (no real model)."""
    folder.mkdir(parents=True)
    runs.write_json(folder / runs.LABELS, ["normal", "pneumonia"])
    runs.write_json(folder / runs.INFO, {"status": "succeeded", "classes": ["normal", "pneumonia"]})
    runs.write_json(folder / runs.CONFIG, {"backbone": "simple_cnn"})
    (folder / runs.MODEL).write_bytes(b"")
    return runs.RunDir(folder)


def by_hand(p: np.ndarray, temperatures) -> np.ndarray:
    """sigmoid(logit(p) / T) per finding, written out."""
    out = np.empty_like(p, dtype=float)
    for i in range(p.shape[0]):
        for j, t in enumerate(temperatures):
            z = math.log(float(p[i, j]) / (1.0 - float(p[i, j])))
            out[i, j] = 1.0 / (1.0 + math.exp(-z / t))
    return out


# ------------------------------------------------------------------------------------------- predictor


def test_probabilities_are_each_findings_sigmoid_of_its_logit_over_its_temperature(findings_runs):
    from cxrcore.predict import Predictor
    from cxrcore.training.model import load_model

    predictor = Predictor(findings_runs.first.path)
    assert predictor.task == "findings" and predictor.multi_label
    batch = np.stack([predictor.prepare(p) for p in findings_runs.images(4)]).astype(np.float32)
    raw = np.asarray(load_model(findings_runs.first.require_model())(batch), dtype=float)
    expected = by_hand(raw, TEMPERATURES["first"])
    found = predictor.probabilities(batch)
    np.testing.assert_allclose(found, expected, atol=1e-5)
    assert not np.allclose(found, raw, atol=1e-3)  # the temperatures changed them: calibration was applied


def test_result_lists_positive_findings_first_then_the_rest_by_probability(findings_runs, tmp_path):
    from cxrcore.predict import Predictor

    run = copy_run(findings_runs.first, tmp_path)
    write_points(
        run,
        {"Cardiomegaly": 0.25, "Consolidation": 0.95, "Effusion": 0.5, "Nodule": None, "Pneumothorax": 0.99},
        {"Nodule": 0.1},
    )
    predictor = Predictor(run.path)
    probs = np.array([0.30, 0.90, 0.60, 0.20, 0.95])  # Cardiomegaly .. Pneumothorax
    result = predictor.result("x.png", probs)
    assert result["task"] == "findings"
    assert (result["label"], result["confidence"]) == ("Pneumothorax", 0.95)  # the most probable, though negative
    assert result["decision"]["positive"] == ["Cardiomegaly", "Effusion"]
    assert [(f["finding"], f["positive"]) for f in result["findings"]] == [
        ("Effusion", True),
        ("Cardiomegaly", True),
        ("Pneumothorax", False),
        ("Consolidation", False),
        ("Nodule", False),
    ]
    rows = {f["finding"]: f for f in result["findings"]}
    assert rows["Effusion"] == {
        "finding": "Effusion",
        "probability": 0.60,
        "threshold": 0.5,
        "positive": True,
        "test_auc": None,  # this run has no test results: nothing measured, nothing claimed
        "test_auc_ci": None,
        "not_evaluated": None,
    }
    assert rows["Nodule"]["threshold"] is None
    youden = predictor.result("x.png", probs, operating_point="youden")
    assert youden["decision"]["positive"] == ["Nodule"]
    assert [f["finding"] for f in youden["findings"]][0] == "Nodule"  # 20% but positive: first


def test_an_image_unlike_the_training_data_gets_no_decision_and_findings_by_probability(findings_runs, tmp_path):
    from cxrcore.predict import Predictor
    from cxrcore.stats import ood

    predictor = Predictor(findings_runs.first.path)
    rng = np.random.default_rng(0)
    predictor.feature_stats = ood.fit(rng.normal(size=(40, 3)), np.zeros(40, int), rng.normal(size=(20, 3)))
    probs = np.array([0.30, 0.90, 0.60, 0.20, 0.95])
    result = predictor.result("photo.png", probs, features=np.full(3, 50.0))
    assert result["unlike_training"]["flagged"]
    assert result["decision"]["positive"] is None and result["decision"]["withheld"]
    assert [f["finding"] for f in result["findings"]] == [
        "Pneumothorax",
        "Consolidation",
        "Effusion",
        "Cardiomegaly",
        "Nodule",
    ]
    assert all(f["positive"] is None for f in result["findings"])


def test_a_class_run_result_only_gains_its_task(separable_run):
    from cxrcore.predict import Predictor

    predictor = Predictor(separable_run.run.path)
    image = next(separable_run.data.rglob("*.png"))
    (result,) = predictor.predict([str(image)])
    assert set(result) == {"task", "image", "label", "confidence", "probabilities", "decision", "unlike_training"}
    assert result["task"] == "classes"
    assert sum(result["probabilities"].values()) == pytest.approx(1.0)


# ------------------------------------------------------------------------------------------- explanations


def test_explain_any_finding_and_by_default_the_most_probable(findings_runs):
    from cxrcore.predict import Predictor

    predictor = Predictor(findings_runs.first.path)
    image = predictor.prepare(findings_runs.images(1)[0])
    probs = predictor.probabilities(image[None])[0]
    default = predictor.explain(image, "gradcam")
    assert default["class"] == FINDINGS[int(np.argmax(probs))] == default["label"]
    j = int(np.argmin(probs))  # the least probable finding
    for method in ("gradcam", "scorecam"):
        found = predictor.explain(image, method, class_index=j)
        assert (found["class_index"], found["class"]) == (j, FINDINGS[j])
        assert found["heatmap"].shape == image.shape[:2]
        # the curves follow that finding's own calibrated probability: the unchanged image's is the first point
        assert found["faithfulness"]["deletion_curve"][0] == pytest.approx(probs[j], abs=1e-6)
        assert found["faithfulness"]["insertion_curve"][-1] == pytest.approx(probs[j], abs=1e-6)


def _tiny_sigmoid_model():
    import keras

    keras.utils.set_random_seed(4)
    inputs = keras.Input((12, 12, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="features")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(3, activation="sigmoid", name="predictions")(x)
    model = keras.Model(inputs, outputs)
    dense = model.get_layer("predictions")
    weights = np.random.default_rng(1).normal(0, 3.0, size=dense.kernel.shape).astype(np.float32)
    dense.set_weights([weights, np.array([1.5, -0.5, 0.8], np.float32)])  # logits far from 0: sigmoid != softmax
    return model


def _scorecam_by_hand(model, image: np.ndarray, weigh) -> np.ndarray:
    """Score-CAM over every channel of ``features`` (at input resolution), written out: each channel's map,
    min-max scaled, masks the image; the channel's weight is ``weigh`` of the model's output on it."""
    import keras

    x = image.astype(np.float32)[None]
    maps = np.asarray(keras.Model(model.input, model.get_layer("features").output)(x))[0]  # (12, 12, 4)
    lo, hi = maps.min(axis=(0, 1)), maps.max(axis=(0, 1))
    masks = (maps - lo) / (hi - lo + 1e-7)
    masked = x[0][None] * np.moveaxis(masks, -1, 0)[..., None]  # (channels, 12, 12, 3)
    weights = weigh(np.asarray(model(masked), dtype=np.float64))
    cam = np.maximum((maps * weights).sum(axis=-1), 0.0)
    return (cam - cam.min()) / (cam.max() - cam.min())


def test_scorecam_weighs_a_findings_model_by_each_findings_sigmoid_not_a_softmax():
    from cxrcore.explain.cam import Explainer

    model = _tiny_sigmoid_model()
    image = np.random.default_rng(2).integers(0, 256, (12, 12, 3), dtype=np.uint8)
    explainer = Explainer(model, "features")
    assert explainer.multi_label
    for j in range(3):
        found = explainer.heatmap(image, class_index=j, method="scorecam")
        sigmoid = _scorecam_by_hand(model, image, lambda p, j=j: p[:, j])
        np.testing.assert_allclose(found, sigmoid, atol=1e-4)

        def softmax_weights(p, j=j):
            z = np.log(p / (1 - p))
            e = np.exp(z - z.max(axis=1, keepdims=True))
            return (e / e.sum(axis=1, keepdims=True))[:, j]

        assert np.abs(found - _scorecam_by_hand(model, image, softmax_weights)).max() > 0.01  # 100x the tolerance
    assert model.get_layer("predictions").activation.__name__ == "sigmoid"  # the caller's model is untouched


# ------------------------------------------------------------------------------------------- command line


def test_explain_cli_takes_a_finding_by_its_name_or_its_other_datasets_name(findings_runs, tmp_path, capsys):
    image = findings_runs.images(1)[0]
    for name in ("Effusion", "Pleural Effusion"):  # NIH's name, and CheXpert's for the same finding
        assert main(["explain", str(findings_runs.first.path), image, "--finding", name, "--out", str(tmp_path)]) == 0
        out, err = capsys.readouterr()
        line = json.loads(out.strip().splitlines()[-1])
        assert line["class"] == "Effusion" and line["task"] == "findings"
        assert [f["finding"] for f in line["findings"]][:2] == sorted(
            ["Cardiomegaly", "Consolidation"], key=lambda f: -line["probabilities"][f]
        )  # the two always positive first
        assert "gradcam for Effusion" in err and Path(line["overlay"]).is_file()


def test_explain_cli_refuses_an_unknown_finding_and_a_finding_of_a_class_run(findings_runs, tmp_path, capsys):
    image = findings_runs.images(1)[0]
    assert main(["explain", str(findings_runs.first.path), image, "--finding", "Atelectasis"]) == 2
    err = capsys.readouterr().err
    assert "--finding 'Atelectasis' is not one of the run's findings: " + ", ".join(FINDINGS) in err
    classes = fake_class_run(tmp_path / "classes")
    assert main(["explain", str(classes.path), image, "--finding", "normal"]) == 2
    err = capsys.readouterr().err
    assert "--finding is for findings runs" in err and "use --class NAME" in err


def test_predict_cli_prints_the_positive_findings_first(findings_runs, capsys):
    image = findings_runs.images(1)[0]
    assert main(["predict", str(findings_runs.first.path), image]) == 0
    out, err = capsys.readouterr()
    result = json.loads(out.strip().splitlines()[-1])
    assert result["decision"]["positive"] == ["Cardiomegaly", "Consolidation"]
    (line,) = [x for x in err.splitlines() if x.startswith(f"{image}: ")]
    positive, negative = line.split("; negative: ")
    assert positive.startswith(f"{image}: positive at target sensitivity 0.90: ")
    first, second = sorted(["Cardiomegaly", "Consolidation"], key=lambda f: -result["probabilities"][f])
    assert positive.index(first) < positive.index(second)
    assert f"{first} {result['probabilities'][first]:.1%} (>= 0.000)" in positive
    assert f"Nodule {result['probabilities']['Nodule']:.1%} (< 1.000)" in negative
    assert "Effusion" in negative and "Pneumothorax" in negative  # no threshold: never positive


# ------------------------------------------------------------------------------------------- ensembles


def test_an_ensemble_of_findings_runs_averages_their_calibrated_probabilities(findings_runs, tmp_path):
    import keras

    from cxrcore import ensemble
    from cxrcore.predict import Predictor
    from cxrcore.training.model import load_model

    members = ensemble.check_members([findings_runs.first.path, findings_runs.second.path])
    model = ensemble.build_model(members, 32)
    first, second = Predictor(findings_runs.first.path), Predictor(findings_runs.second.path)
    batch = np.stack([first.prepare(p) for p in findings_runs.images(5)]).astype(np.float32)
    expected = (first.probabilities(batch) + second.probabilities(batch)) / 2
    np.testing.assert_allclose(np.asarray(model(batch)), expected, atol=1e-5)
    model.save(tmp_path / "ensemble.keras")  # the per-finding temperature layer saves and loads
    loaded = load_model(tmp_path / "ensemble.keras")
    assert isinstance(loaded.get_layer("member0_calibrated"), keras.layers.Layer)
    np.testing.assert_allclose(np.asarray(loaded(batch)), expected, atol=1e-5)


def test_an_ensemble_refuses_to_mix_tasks_or_findings_in_another_order(findings_runs, tmp_path):
    from cxrcore import ensemble

    classes = fake_class_run(tmp_path / "classes")
    with pytest.raises(ConfigError, match="cannot average a findings run .* with a class run"):
        ensemble.check_members([findings_runs.first.path, classes.path])
    reordered = copy_run(findings_runs.second, tmp_path)
    runs.write_json(reordered.file(runs.LABELS), FINDINGS[::-1])
    with pytest.raises(ConfigError, match="the same findings in the same order"):
        ensemble.check_members([findings_runs.first.path, reordered.path])


def _fake_scored_run(folder: Path, metrics: dict, probs: dict, truth: dict, patients: list[str], info=None):
    folder.mkdir(parents=True)
    paths = [f"img{i}.png" for i in range(len(patients))]
    runs.write_json(
        folder / runs.INFO, {"status": "succeeded", "task": "findings", "backbone": "simple_cnn", **(info or {})}
    )
    runs.write_json(folder / runs.METRICS, {"task": "findings", **metrics})
    runs.write_json(folder / runs.LABELS, list(probs))
    columns = {"path": paths}
    for name in probs:
        columns[f"prob_{name}"], columns[f"true_{name}"] = probs[name], truth[name]
    runs.write_csv(folder / runs.PREDICTIONS, pd.DataFrame(columns))
    split = pd.DataFrame({"path": paths, "split": "test", "label": "x", "patient_id": patients})
    runs.write_csv(folder / runs.SPLIT, split)
    return runs.RunDir(folder)


def test_ensemble_report_of_findings_runs_compares_mean_auc_over_the_evaluated_findings(tmp_path):
    from cxrcore import ensemble

    n = 40  # ten times: two positives and two negatives of A, B and C; two images per patient
    patients = [f"p{i // 2}" for i in range(n)]
    truth_a = np.tile([1.0, 1.0, 0.0, 0.0], 10)
    truth_b = np.tile([0.0, 1.0, 1.0, 0.0], 10)
    truth_b[::8] = np.nan  # left out for B only
    truth = {"A": truth_a, "B": truth_b, "C": truth_a}
    perfect = {"A": truth_a * 0.8 + 0.1, "B": np.nan_to_num(truth_b) * 0.8 + 0.1, "C": 1.0 - truth_a}
    member_probs = {"A": np.tile([0.8, 0.4, 0.6, 0.2], 10), "B": np.full(n, 0.5), "C": truth_a}
    evaluated = {"A": {"auc": 1.0}, "B": {"auc": 1.0}}  # C: not evaluated (it would turn the verdict)
    low = _fake_scored_run(
        tmp_path / "low", {"macro_auc": 0.5, "mean_auc": 0.5, "findings": {}}, member_probs, truth, patients
    )
    best = _fake_scored_run(
        tmp_path / "best",
        {
            "macro_auc": 0.625,
            "mean_auc": 0.625,
            "findings": evaluated,
            "ci": {"mean_auc": {"ci_low": 0.5, "ci_high": 0.7}},
        },
        member_probs,
        truth,
        patients,
    )
    run = _fake_scored_run(
        tmp_path / "ens",
        {"macro_auc": 1.0, "mean_auc": 1.0, "findings": evaluated, "not_evaluated": {"C": "few positives"}},
        perfect,
        truth,
        patients,
        info={"backbone": "ensemble"},
    )
    runs.write_json(run.file(runs.ENSEMBLE), {"members": [str(low.path), str(best.path)], "tta": "none"})
    found = ensemble.report(run, resamples=200)
    assert found["task"] == "findings"
    assert [r["accuracy"] for r in found["rows"]] == [None, None, None]
    assert found["rows"][2]["macro_auc_ci"] == {"ci_low": 0.5, "ci_high": 0.7}
    assert found["best_member"] == "best"
    # ensemble: A and B perfect (1.0); best member: A 0.75 (3 of 4 positive-negative pairs), B 0.5 (a constant)
    assert found["difference"]["macro_auc"]["difference"] == pytest.approx(1.0 - (0.75 + 0.5) / 2)
    assert found["difference"]["macro_auc"]["ci_low"] > 0 and found["verdict"] == "better"


# ------------------------------------------------------------------------------------------- export


def test_savedmodel_and_tflite_give_the_findings_runs_calibrated_probabilities(findings_runs, tmp_path):
    import tensorflow as tf

    from cxrcore.export import export
    from cxrcore.predict import Predictor

    run = findings_runs.first
    predictor = Predictor(run.path)
    batch = np.stack([predictor.prepare(p) for p in findings_runs.images(4)]).astype(np.float32)
    expected = predictor.probabilities(batch)
    saved = export(run.path, "savedmodel", tmp_path / "out")
    loaded = tf.saved_model.load(str(saved))  # kept: its functions need its variables alive
    np.testing.assert_allclose(np.asarray(loaded.serve(tf.constant(batch))), expected, atol=1e-5)
    lite = export(run.path, "tflite", tmp_path / "out")
    np.testing.assert_allclose(litert_runner(lite)(batch), expected, atol=1e-5)
    spec = json.loads(lite.with_name(lite.name + ".json").read_text())
    assert spec["task"] == "findings" and spec["findings"] == FINDINGS
    assert spec["output"]["findings"] == FINDINGS and "classes" not in spec["output"]
    assert spec["output"]["temperatures"] == dict(zip(FINDINGS, TEMPERATURES["first"]))
    assert "sigmoid" in spec["output"]["probabilities"] and "do not sum to 1" in spec["output"]["probabilities"]
    assert spec["operating_points"] == {f: {"sensitivity": t, "youden": None} for f, t in THRESHOLDS.items()}


# ------------------------------------------------------------------------------------------- page


def image_captions(at) -> list[str]:
    return [image.caption for element in at.get("image") for image in element.proto.imgs]


def test_predict_page_shows_each_finding_with_its_decision_and_explains_any_finding(
    findings_runs, tmp_path, monkeypatch
):
    from streamlit.testing.v1 import AppTest

    models = tmp_path / "models"
    run = copy_run(findings_runs.first, models)
    monkeypatch.setenv("CXRCORE_MODELS", str(models))
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=120)
    at.switch_page("pages/predict.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    chooser = at.selectbox(key="predict_explain_class")
    assert chooser.options == ["the most probable finding", *FINDINGS] and chooser.value == -1
    image = Path(findings_runs.images(1)[0])
    at.file_uploader(key="predict_upload").set_value([(image.name, image.read_bytes(), "image/png")])
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    (said,) = [m.value for m in at.markdown if m.value.startswith("**Positive at")]
    table = at.dataframe[0].value
    assert list(table["finding"][:2]) != [] and set(table["finding"][:2]) == {"Cardiomegaly", "Consolidation"}
    # named as the table lists them: the most probable first
    assert said == f"**Positive at target sensitivity 0.90:** {', '.join(table['finding'][:2])}"
    assert list(table["decision"]) == ["positive", "positive", "negative", "negative", "negative"]
    from cxrcore.predict import Predictor

    probs = Predictor(run.path).probabilities(Predictor(run.path).prepare(str(image))[None])[0]
    assert f"Grad-CAM for {FINDINGS[int(np.argmax(probs))]}" in image_captions(at)
    chooser = at.selectbox(key="predict_explain_class").set_value(FINDINGS.index("Nodule"))
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert "Grad-CAM for Nodule" in image_captions(at)


def test_each_finding_says_how_well_it_did_on_the_test_split(findings_runs, tmp_path):
    from cxrcore.predict import Predictor

    run = copy_run(findings_runs.first, tmp_path)
    runs.write_json(
        run.file(runs.METRICS),
        {
            "task": "findings",
            "findings": {"Effusion": {"auc": 0.81, "ci": {"auc": {"ci_low": 0.7, "ci_high": 0.9}}}},
            "not_evaluated": {"Nodule": "4 positive images in the evaluated split (fewer than 10)"},
        },
    )
    rows = {f["finding"]: f for f in Predictor(run.path).result("x.png", np.full(5, 0.5))["findings"]}
    assert (rows["Effusion"]["test_auc"], rows["Effusion"]["test_auc_ci"]) == (0.81, {"ci_low": 0.7, "ci_high": 0.9})
    assert rows["Nodule"]["test_auc"] is None and rows["Nodule"]["not_evaluated"].startswith("4 positive images")
    assert rows["Cardiomegaly"]["not_evaluated"] is None and rows["Cardiomegaly"]["test_auc"] is None
