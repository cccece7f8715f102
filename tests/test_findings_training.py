"""Training a findings (multi-label) model: the masked loss, the balanced positive weights and the mean AUC
worked by hand; what a findings run refuses, records and writes; the CheXNet recipe as data and built with
random weights; external findings sets read by name and alias. One shared findings run (conftest's
``findings_run``); the cancel-and-resume test trains its own tiny one, since no other test trains that."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from conftest import copy_run, tiny_config
from cxrcore.config import FindingsOptions, LabelScheme, TrainConfig, recipe_config
from cxrcore.data.findings import FINDING_PREFIX
from cxrcore.errors import ConfigError, DataError

TRAINING_FIXTURES = ("resumed_findings_run",)


def findings_frame(values: dict[str, list], split: list[str] | None = None) -> pd.DataFrame:
    """A findings index by hand: one ``finding:<name>`` column per finding (1, 0 or NaN)."""
    n = len(next(iter(values.values())))
    frame = pd.DataFrame(
        {"path": [f"img{i}.png" for i in range(n)], "label": "x", "split": split or ["train"] * n, "patient_id": ""}
    )
    for name, column in values.items():
        frame[FINDING_PREFIX + name] = np.asarray(column, dtype=np.float32)
    return frame


# -- the loss and the metric, by hand ------------------------------------------------------------------------


def test_masked_binary_cross_entropy_by_hand():
    from cxrcore.training.losses import MaskedBinaryCrossentropy

    y = np.array([[1, 0], [0, np.nan]], dtype="float32")
    p = np.array([[0.9, 0.2], [0.3, 0.99]], dtype="float32")
    per_image = MaskedBinaryCrossentropy().call(y, p).numpy()
    # image 0: (-ln 0.9 - ln 0.8) / 2 = (0.10536 + 0.22314) / 2 = 0.16425
    # image 1: (-ln 0.7 + 0 for the left-out label) / 2 = 0.35667 / 2 = 0.17834; the 0.99 is never scored
    np.testing.assert_allclose(per_image, [0.16425, 0.17834], atol=1e-4)
    # a positive weight of 2 on the first finding doubles its positive term only: (2 x 0.10536 + 0.22314) / 2
    weighted = MaskedBinaryCrossentropy(pos_weight=[2.0, 1.0]).call(y, p).numpy()
    np.testing.assert_allclose(weighted, [0.21693, 0.17834], atol=1e-4)
    # a left-out label's prediction changes nothing, however wrong
    p2 = p.copy()
    p2[1, 1] = 0.0001
    np.testing.assert_allclose(MaskedBinaryCrossentropy().call(y, p2).numpy(), per_image, atol=1e-6)


def test_masked_binary_cross_entropy_is_keras_binary_cross_entropy_without_masks_or_weights():
    import keras

    from cxrcore.training.losses import MaskedBinaryCrossentropy

    y = np.array([[1, 0, 1], [0, 0, 1]], dtype="float32")
    p = np.array([[0.6, 0.3, 0.8], [0.1, 0.5, 0.7]], dtype="float32")
    ours = MaskedBinaryCrossentropy().call(y, p).numpy()
    theirs = keras.losses.binary_crossentropy(y, p).numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_mean_auc_metric_by_hand():
    from cxrcore.training.losses import MaskedMeanAUC

    y = np.array([[1, 0], [0, np.nan], [1, 1], [0, 0]], dtype="float32")
    p = np.array([[0.35, 0.2], [0.3, 0.99], [0.6, 0.7], [0.4, 0.1]], dtype="float32")
    metric = MaskedMeanAUC(num_labels=2)
    metric.update_state(y, p)
    # finding 0: positives 0.35, 0.6 against negatives 0.3, 0.4: pairs won 0.35>0.3, 0.6>0.3, 0.6>0.4 = 3 of 4
    # finding 1: labelled rows 0, 2, 3: positive 0.7 against 0.2 and 0.1: 2 of 2 (row 1's 0.99 is left out)
    assert float(metric.result()) == pytest.approx((0.75 + 1.0) / 2, abs=0.01)


def test_distributed_loop_mean_auc_by_hand():
    from cxrcore.training.distributed import mean_auc

    y = np.array([[1, 0], [0, np.nan], [1, 1], [0, 0]])
    p = np.array([[0.35, 0.2], [0.3, 0.99], [0.6, 0.7], [0.4, 0.1]])
    assert mean_auc(y, p) == pytest.approx(0.875)
    # a finding with one label value only is skipped, not scored 0.5
    assert mean_auc(np.array([[1.0, 1.0], [0.0, 1.0]]), np.array([[0.9, 0.1], [0.1, 0.2]])) == pytest.approx(1.0)


def test_balanced_positive_weights_by_hand():
    from cxrcore.data.splits import positive_weights

    frame = findings_frame(
        {
            "A": [1, 0, 0, 0, 0, 1, 0, 0],  # 2 positives, 6 negatives: 6 / 2 = 3
            "B": [1, 1, 1, 0, np.nan, np.nan, np.nan, 0],  # left-out labels count as neither: 2 / 3
            "C": [0, 0, 0, 0, 0, 0, 0, 0],  # no positive: 1
        }
    )
    assert positive_weights(frame, ["A", "B", "C"]) == pytest.approx([3.0, 2 / 3, 1.0])
    assert positive_weights(frame, ["A", "B", "C"], "none") is None


def test_training_targets_keep_nan_and_one_hot_classes_as_before():
    from cxrcore.training.pipeline import training_targets

    frame = findings_frame({"A": [1, np.nan], "B": [0, 1]})
    np.testing.assert_array_equal(training_targets(frame, ["B", "A"]), [[0, 1], [1, np.nan]])
    classes = pd.DataFrame({"path": ["a", "b", "c"], "label": ["Normal", "COVID", "Normal"]})
    np.testing.assert_array_equal(training_targets(classes, ["COVID", "Normal"]), [[0, 1], [1, 0], [0, 1]])
    with pytest.raises(DataError, match="Other"):
        training_targets(classes.assign(label=["Other", "COVID", "Normal"]), ["COVID", "Normal"])


# -- what a findings run checks and refuses ------------------------------------------------------------------


def test_findings_trainable_needs_validation_and_ten_training_positives():
    from cxrcore.data.splits import check_trainable

    split = ["train"] * 12 + ["val"] * 2
    frame = findings_frame({"A": [1] * 10 + [0] * 4, "B": [1] * 3 + [0] * 11}, split)
    assert check_trainable(frame) == ["A", "B"]  # B is rare, but an output all the same
    with pytest.raises(DataError, match="validation split is empty"):
        check_trainable(frame.assign(split="train"))
    rare = findings_frame({"A": [1] * 9 + [0] * 5, "B": [1] * 3 + [0] * 11}, split)
    with pytest.raises(DataError, match=r"no finding has 10 positive training images .*A 9, B 3"):
        check_trainable(rare)


@pytest.mark.parametrize(
    "change, field",
    [
        ({"labels": LabelScheme(rename={"A": "B"})}, "labels"),
        ({"balance": "source"}, "balance"),
        ({"drop_single_class_sources": True}, "drop_single_class_sources"),
        ({"focal_loss": True}, "focal_loss"),
        ({"label_smoothing": 0.1}, "label_smoothing"),
    ],
)
def test_a_findings_run_refuses_class_only_settings_naming_them(change, field):
    from cxrcore.training.train import check_findings_options

    with pytest.raises(ConfigError, match=rf"^{field} does not apply to a findings dataset"):
        check_findings_options(TrainConfig(data="x", **change))
    check_findings_options(TrainConfig(data="x"))  # the defaults pass


def test_findings_options_and_the_plateau_factor_round_trip_in_the_config():
    config = TrainConfig(
        data="d",
        findings=FindingsOptions(uncertain="ones", findings=("Effusion",), labels_column="nih_labels"),
        reduce_lr_factor=0.1,
        external_labels_column="nih_labels",
    )
    written = json.loads(json.dumps(config.to_dict()))
    assert written["findings"] == {
        "uncertain": "ones",
        "blank": "negative",
        "findings": ["Effusion"],
        "views": "all",
        "labels_column": "nih_labels",
    }
    assert TrainConfig.from_dict(written) == config
    assert TrainConfig.from_dict({"data": "d"}).findings == FindingsOptions()  # configs written before: defaults
    with pytest.raises(ConfigError, match="reduce_lr_factor"):
        TrainConfig(data="d", reduce_lr_factor=1.0).validate()
    with pytest.raises(ConfigError, match="uncertain must be one of"):
        TrainConfig.from_dict({"data": "d", "findings": {"uncertain": "maybe"}}).validate()
    with pytest.raises(ConfigError, match=r"config.findings: unknown option\(s\) colour"):
        TrainConfig.from_dict({"data": "d", "findings": {"colour": "red"}})


def test_the_plateau_factor_reaches_the_callback(monkeypatch):
    import keras

    from cxrcore.training import train

    seen = {}

    class Spy(keras.callbacks.Callback):
        def __init__(self, **kwargs):
            super().__init__()
            seen.update(kwargs)

    monkeypatch.setattr(keras.callbacks, "ReduceLROnPlateau", Spy)
    model = SimpleNamespace(fit=lambda *a, **k: SimpleNamespace(epoch=[0]))
    config = TrainConfig(data="d", reduce_lr_factor=0.1, reduce_lr_patience=1, patience=0)
    train.run_stage(model, None, None, initial_epoch=0, final_epoch=1, config=config, callbacks=[], class_weight=None)
    assert seen["factor"] == 0.1 and seen["patience"] == 1


def test_cli_train_takes_the_findings_options_over_a_recipe():
    from cxrcore.cli import build_parser
    from cxrcore.cli.options import config_from_args

    args = build_parser().parse_args(
        ["train", "--recipe", "chexnet", "--data", "d", "--uncertain", "zeros", "--findings", "Effusion,Mass"]
    )
    config = config_from_args(args, resolve=False)
    assert config.findings == FindingsOptions(uncertain="zeros", findings=("Effusion", "Mass"))
    assert config.reduce_lr_factor == 0.1  # the recipe's, kept
    plain = config_from_args(build_parser().parse_args(["train", "--data", "d", "--reduce-lr-factor", "0.2"]))
    assert plain.findings == FindingsOptions() and plain.reduce_lr_factor == 0.2


# -- the CheXNet recipe ----------------------------------------------------------------------------------


def test_chexnet_recipe_as_data():
    from cxrcore.recipes import RECIPES, figure_of

    config = recipe_config("chexnet", "nih").resolved()
    assert (config.backbone, config.image_size, config.weights) == ("densenet121", 224, "imagenet")
    assert (config.optimizer, config.learning_rate, config.batch_size) == ("adam", 1e-3, 16)
    assert (config.reduce_lr_factor, config.reduce_lr_patience) == (0.1, 1)  # divided by 10 on a plateau
    assert config.unfreeze == -1 and config.epochs == 0 and config.fine_tune_lr_factor == 1.0  # end to end
    assert config.class_weights == "balanced" and config.augment.flip
    published = {f.metric: f.value for f in RECIPES["chexnet"].published}
    assert published["mean_auc"] == 0.8414 and published["auc:Pneumonia"] == 0.768
    per_finding = [v for k, v in published.items() if k.startswith("auc:")]
    assert len(per_finding) == 14 and sum(per_finding) / 14 == pytest.approx(0.8414, abs=1e-4)
    # the paper's "Pleural Thickening" is NIH's Pleural_Thickening
    metrics = {"findings": {"Pleural_Thickening": {"auc": 0.7, "ci": {"auc": {"ci_low": 0.6, "ci_high": 0.8}}}}}
    assert figure_of(metrics, "auc:Pleural Thickening") == (0.7, {"ci_low": 0.6, "ci_high": 0.8})


def test_chexnet_builds_with_random_weights_as_a_sigmoid_densenet121():
    import keras

    from cxrcore.training.model import build_model
    from cxrcore.training.train import compile_metrics, is_multi_label

    config = recipe_config("chexnet", "nih")
    model = build_model("densenet121", 14, image_size=224, weights="none", head=config.head, multi_label=True)
    assert model.outputs[0].shape[-1] == 14 and is_multi_label(model)
    assert model.get_layer("predictions").activation is keras.activations.sigmoid
    assert model.get_layer("head_pool").output.shape[-1] == 1024  # DenseNet121's features straight to the outputs
    probs = np.asarray(model(np.zeros((2, 224, 224, 3), np.float32)))
    assert probs.shape == (2, 14) and ((probs > 0) & (probs < 1)).all()
    assert [m.name for m in compile_metrics(model)] == ["auc"]


# -- a findings run, end to end ------------------------------------------------------------------------------


def test_a_findings_run_records_its_task_findings_and_weights(findings_run):
    run = findings_run.run
    info, history = run.info(), run.history()
    findings = ["Cardiomegaly", "Consolidation", "Effusion", "Nodule", "Pneumothorax"]
    assert run.task() == "findings" and sorted(run.labels()) == findings
    assert set(info["positive_weights"]) == set(findings) and all(w > 1 for w in info["positive_weights"].values())
    assert {"loss", "auc", "val_loss", "val_auc"} <= set(history.columns)
    assert not {"accuracy", "val_accuracy"} & set(history.columns)  # an image holds several findings
    assert all(0 <= v <= 1 for v in history["val_auc"])
    epochs = [e for e in findings_run.events if e["event"] == "epoch"]
    assert epochs and "val_auc" in epochs[-1]["logs"]  # the live curves get the mean AUC


def test_a_findings_run_is_calibrated_and_thresholded_per_finding(findings_run):
    run = findings_run.run
    calibration, points = run.calibration(), run.operating_points()
    assert set(calibration["temperatures"]) == set(run.labels()) and "temperature" not in calibration
    for name, why in calibration["not_fitted"].items():  # too few validation images of a kind: left at 1
        assert calibration["temperatures"][name] == 1.0 and "left uncalibrated" in why
    assert run.metrics()["calibration"]["not_fitted"] == calibration["not_fitted"]
    assert run.temperatures() == [calibration["temperatures"][f] for f in run.labels()]
    assert set(points["thresholds"]) == set(run.labels())
    assert run.feature_stats().means.shape[0] == 1  # one Gaussian: the training images' mean, not class means
    metrics = run.metrics()
    assert metrics["task"] == "findings" and "accuracy" not in metrics
    assert metrics["macro_auc"] == metrics["mean_auc"]
    assert set(metrics["findings"]) | set(metrics["not_evaluated"]) == set(run.labels())


def test_learned_nothing_judges_a_findings_run_on_its_mean_validation_auc(findings_run, tmp_path):
    from cxrcore.evaluation.sanity import learned_nothing
    from cxrcore.runs import HISTORY, write_csv

    run = copy_run(findings_run.run, tmp_path)
    history = run.history()
    write_csv(run.file(HISTORY), history.assign(val_auc=0.5))
    message = learned_nothing(run)
    assert message and "mean validation AUC over findings never rose above 0.50" in message
    assert "ranks images at random" in message
    write_csv(run.file(HISTORY), history.assign(val_auc=0.8))
    assert learned_nothing(run) is None


def test_cached_activations_carry_left_out_labels_as_nan(findings_data, tmp_path):
    from cxrcore.data.index import build_index
    from cxrcore.data.splits import assign_splits
    from cxrcore.training import features
    from cxrcore.training.model import build_model

    frame = assign_splits(build_index(findings_data), seed=1)
    frame.loc[frame.index[:40], FINDING_PREFIX + "Nodule"] = np.nan  # left out, as CheXpert's uncertain
    findings = [c[len(FINDING_PREFIX) :] for c in frame.columns if c.startswith(FINDING_PREFIX)]
    config = tiny_config(findings_data, image_size=32)
    model = build_model("simple_cnn", len(findings), image_size=32, weights="none", multi_label=True)
    plan = features.plan_stage(model, "frozen", config, frame, findings, 32, unfreeze=0)
    targets = np.concatenate([y.numpy() for _, y in plan.val] + [y.numpy() for _, y in plan.train])
    expected = frame[FINDING_PREFIX + "Nodule"]
    left = int(expected[frame["split"].isin(["train", "val"])].isna().sum())
    assert left > 0 and int(np.isnan(targets[:, findings.index("Nodule")]).sum()) == left


# -- external findings sets ------------------------------------------------------------------------------------


def external_manifest(findings_data, tmp_path, rename=None, drop=()):
    """A class-labelled manifest of the findings demo's images whose ``nih_labels`` column holds their findings,
    ``rename``d (old -> new) and with ``drop`` removed."""
    table = pd.read_csv(findings_data / "manifest.csv")

    def relabel(text):
        names = [(rename or {}).get(n, n) for n in text.split("|") if n not in drop]
        return "|".join(names) or "No Finding"

    out = pd.DataFrame(
        {
            "path": [str(findings_data / p) for p in table["path"]],
            "label": np.where(table["labels"] == "No Finding", "Normal", "Abnormal"),
            "patient_id": "ext-" + table["patient_id"],
            "nih_labels": table["labels"].map(relabel),
        }
    )
    path = tmp_path / "external.csv"
    out.to_csv(path, index=False)
    return path


def test_external_findings_are_matched_by_name_and_alias(findings_data, tmp_path):
    from cxrcore.evaluation.external import external_findings_frame

    path = external_manifest(findings_data, tmp_path, rename={"Effusion": "Pleural Effusion"}, drop=("Nodule",))
    model = ["Effusion", "Nodule", "Cardiomegaly"]
    frame = external_findings_frame(path, model, FindingsOptions(labels_column="nih_labels"))
    source = pd.read_csv(findings_data / "manifest.csv")
    effusion = source["labels"].str.contains("Effusion").to_numpy()
    np.testing.assert_array_equal(frame[FINDING_PREFIX + "Effusion"].to_numpy() == 1, effusion)  # via the alias
    assert frame[FINDING_PREFIX + "Nodule"].isna().all()
    assert list(frame.attrs["absent_findings"]) == ["Nodule"]
    with pytest.raises(DataError, match="--labels-column NAME"):
        external_findings_frame(path, model, FindingsOptions())  # read as classes Normal / Abnormal
    with pytest.raises(DataError, match="has no column nih"):
        external_findings_frame(path, model, FindingsOptions(labels_column="nih"))


def test_a_findings_run_is_evaluated_on_an_external_set_through_its_labels_column(findings_run, tmp_path):
    from cxrcore.workflows import evaluate

    run = copy_run(findings_run.run, tmp_path / "runs")
    path = external_manifest(findings_run.data, tmp_path, drop=("Nodule",))
    result = evaluate(run.path, path, labels_column="nih_labels")
    assert result["task"] == "findings" and result["n"] == len(pd.read_csv(findings_run.data / "manifest.csv"))
    assert "not among this dataset's findings" in result["not_evaluated"]["Nodule"]
    assert "Nodule" not in result["findings"]
    found = run.external_evaluations()[0]
    assert found.source["labels_column"] == "nih_labels"
    assert found.metrics["mean_auc"] == pytest.approx(result["mean_auc"])


# -- a killed findings run resumes ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def resumed_findings_run(findings_data, tmp_path_factory):
    """A findings run cancelled after its first epoch, then resumed to the end."""
    from cxrcore.workflows import resume, train

    config = tiny_config(findings_data, image_size=32, epochs=3, batch_size=32)
    out = tmp_path_factory.mktemp("resumed-findings")
    with pytest.raises(KeyboardInterrupt):
        calls = {"n": 0}

        def progress(event):
            if event["event"] == "epoch":
                calls["n"] += 1
                if calls["n"] == 1:
                    raise KeyboardInterrupt

        train(config, out_dir=out, progress=progress)
    run_dir = next(p for p in out.iterdir() if p.is_dir())
    return resume(run_dir)


def test_a_killed_findings_run_resumes_with_its_masked_loss(resumed_findings_run):
    run = resumed_findings_run
    assert run.status() == "succeeded" and run.info()["resumed_from_epoch"] == 1
    history = run.history()
    assert history["epoch"].tolist() == [1, 2, 3] and history["val_auc"].notna().all()
    assert run.metrics()["task"] == "findings" and math.isfinite(run.metrics()["mean_auc"])
