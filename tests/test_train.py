"""Two-stage training end to end on tiny synthetic data, and what it leaves on disk."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest

import conftest
from conftest import copy_run, make_class_folders, once_per_session
from cxrcore import runs
from cxrcore.config import HeadConfig, TrainConfig
from cxrcore.errors import ConfigError, DataError, WeightsError
from cxrcore.evaluation.evaluate import evaluate_run
from cxrcore.predict import Predictor
from cxrcore.workflows import train


def tiny_config(data, **changes) -> TrainConfig:
    """conftest's tiny run with a one-epoch fine-tune stage, seed 1."""
    return conftest.tiny_config(data, **{"fine_tune_epochs": 1, "seed": 1, **changes})


@pytest.fixture
def trained(separable_run):
    """The session's run on dark vs bright (conftest: 30 images per class, 2 + 1 epochs, 24 training,
    18 validation and 18 test images, batches of 8), its progress events and its data. Read-only: a
    test that writes into it works on ``copy_run``."""
    return separable_run.run, list(separable_run.events), separable_run.data


def test_run_directory_is_complete(trained):
    run, _, _ = trained
    for name in (
        runs.CONFIG,
        runs.LABELS,
        runs.SPLIT,
        runs.HISTORY,
        runs.MODEL,
        runs.METRICS,
        runs.PREDICTIONS,
        runs.INFO,
        runs.LOG,
    ):
        assert run.file(name).is_file(), name
    assert any(run.file(runs.TENSORBOARD).rglob("events.out.tfevents.*"))
    assert not list(run.path.glob(".*tmp*")), "temporary files left behind"
    info = run.info()
    assert info["status"] == "succeeded" and info["device"] == "CPU"
    assert info["epochs_completed"] == 3 and info["n_test"] == 18
    assert TrainConfig.load(run.file(runs.CONFIG)).backbone == "simple_cnn"
    assert json.loads(run.file(runs.LABELS).read_text()) == ["bright", "dark"]


def test_history_covers_both_stages_with_the_lower_fine_tuning_rate(trained):
    history = trained[0].history()
    assert history["epoch"].tolist() == [1, 2, 3]
    assert history["stage"].tolist() == ["frozen", "frozen", "finetune"]
    lr = history.groupby("stage")["learning_rate"].first()
    assert lr["finetune"] == pytest.approx(lr["frozen"] * 0.1)
    assert {"loss", "accuracy", "val_loss", "val_accuracy", "auc"} <= set(history.columns)


def test_the_model_learns_the_synthetic_task(trained):
    metrics = json.loads(trained[0].file(runs.METRICS).read_text())
    assert metrics["n"] == 18
    assert metrics["accuracy"] >= 0.75  # classes differ in brightness by 150 grey levels


def test_predictions_csv_matches_the_prediction_path(trained):
    run = trained[0]
    table = pd.read_csv(run.file(runs.PREDICTIONS))
    predictor = Predictor(run.path)
    results = predictor.predict(table["path"].tolist()[:5])
    for row, result in zip(table.head(5).itertuples(), results):
        assert result["probabilities"]["bright"] == pytest.approx(row.prob_bright, abs=1e-5)
        assert result["label"] == row.pred_label
    split = run.split()
    assert set(table["path"]) == set(split.loc[split["split"] == "test", "path"])


def test_the_run_is_calibrated_on_validation_and_every_probability_uses_it(trained):
    from cxrcore.evaluation.calibration import apply_temperature

    run = trained[0]
    stored = json.loads(run.file(runs.CALIBRATION).read_text())
    temperature = run.temperature()
    assert temperature == stored["temperature"] and np.isfinite(temperature) and temperature > 0
    assert stored["fitted_on"] == "val" and stored["n"] == 18
    calibration = run.metrics()["calibration"]
    assert calibration["temperature"] == temperature and calibration["fitted_on"] == "val"
    for when in ("before", "after"):
        assert set(calibration["ece"][when]) == {"bright", "dark", "mean"}
        assert 0 <= calibration["ece"][when]["mean"] <= 1
        assert set(calibration["brier"][when]) == {"bright", "dark", "mean"}
    assert sum(calibration["reliability"]["bright"]["count"]) == 18
    predictor = Predictor(run.path)
    path = run.split().query("split == 'test'")["path"].iloc[0]
    image = predictor.prepare(path)
    raw = np.asarray(predictor.model(image[None].astype(np.float32), training=False), dtype=float)
    got = predictor.predict([path])[0]["probabilities"]
    expected = apply_temperature(raw, temperature)[0]
    np.testing.assert_allclose([got[c] for c in predictor.labels], expected, atol=1e-5)
    # a run trained before calibration existed predicts its raw outputs
    assert runs.RunDir(run.path / "nowhere").temperature() == 1.0


def test_the_run_keeps_what_validation_chose_and_prediction_uses_it(trained):
    """Operating points, feature statistics and the model card, written at the end of training;
    the predictions table and the Predictor agree on the unlike-the-training-data score."""
    run = trained[0]
    points = run.operating_points()
    assert points["chosen_on"] == "val" and points["target_sensitivity"] == 0.95
    assert set(points["thresholds"]) == {"bright", "dark"}
    stats = run.feature_stats()
    assert stats.n_train == 24 and stats.n_val == 18 and stats.percentile == 99.0
    metrics = run.metrics()
    assert (
        metrics["operating_points"]["classes"]["bright"]["sensitivity"]["threshold"]
        == (points["thresholds"]["bright"]["sensitivity"])
    )
    assert metrics["ood"]["n"] == 18
    table = pd.read_csv(run.file(runs.PREDICTIONS))
    predictor = Predictor(run.path)
    results = predictor.predict(table["path"].tolist()[:4], operating_point="youden")
    for row, result in zip(table.head(4).itertuples(), results):
        assert result["unlike_training"]["score"] == pytest.approx(row.ood_score, rel=1e-4)
        assert result["unlike_training"]["flagged"] == row.unlike_training
        expected = [c for c in ("bright", "dark") if getattr(row, f"prob_{c}") >= points["thresholds"][c]["youden"]]
        if row.unlike_training:  # no decision for an image unlike the training data
            assert result["decision"]["positive"] is None and result["decision"]["withheld"]
        else:
            assert result["decision"]["positive"] == expected and result["decision"]["withheld"] is None
    card = run.model_card()
    assert card.startswith(f"# Model card: {run.run_id}") and "## Operating points" in card


def test_pixel_rules_are_recorded_and_applied_at_prediction(rules_run):
    from cxrcore.data.io import prepare_image
    from cxrcore.data.pixels import PixelRules

    run, root = rules_run.run, rules_run.data
    rules = PixelRules(**conftest.ALL_PIXEL_RULES)
    assert run.config().pixels == rules and run.pixel_rules() == rules
    path = str(next(root.rglob("*.png")))
    predictor = Predictor(run.path)
    assert np.array_equal(predictor.prepare(path), prepare_image(path, 32, rules=rules))
    assert not np.array_equal(predictor.prepare(path), prepare_image(path, 32))
    table = pd.read_csv(run.file(runs.PREDICTIONS))
    first = predictor.predict([table["path"].iloc[0]])[0]
    assert first["probabilities"]["bright"] == pytest.approx(table["prob_bright"].iloc[0], abs=1e-5)


def test_progress_events_report_stage_epoch_and_batch(trained):
    events = trained[1]
    epochs = [e for e in events if e["event"] == "epoch"]
    assert [(e["stage"], e["epoch"], e["epochs"]) for e in epochs] == [
        ("frozen", 1, 3),
        ("frozen", 2, 3),
        ("finetune", 3, 3),
    ]
    batches = [e for e in events if e["event"] == "batch"]
    assert batches[0]["batches"] == 3 and batches[-1]["batch"] == 3  # 24 training images / 8
    assert "loss" in epochs[0]["logs"] and "val_loss" in epochs[0]["logs"]


def test_saved_model_reloads_and_predicts_the_same(trained, tmp_path):
    run = trained[0]
    model = keras.saving.load_model(run.file(runs.MODEL), compile=False)
    model.save(tmp_path / "again.keras")
    again = keras.saving.load_model(tmp_path / "again.keras", compile=False)
    x = np.random.default_rng(0).uniform(0, 255, (3, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(model(x)), np.asarray(again(x)), atol=1e-6)


def test_external_validation_is_kept_apart_from_the_test_split(trained, tmp_path):
    run = copy_run(trained[0], tmp_path / "models")
    before = run.file(runs.METRICS).read_text()
    external = make_class_folders(tmp_path / "hospital_b", classes=("dark", "bright", "other"), per_class=4)
    with pytest.raises(DataError, match="not trained on: other"):
        evaluate_run(run.path, external)
    result = evaluate_run(run.path, external, drop_unknown=True)
    assert result["n"] == 8
    (saved,) = [e for e in run.external_evaluations() if e.source["data"] == str(external.resolve())]
    assert saved.folder.parent == run.path / "external" and "-hospital_b-" in saved.folder.name
    assert saved.metrics["n"] == 8 and len(saved.predictions()) == 8
    assert run.file(runs.METRICS).read_text() == before
    assert saved.source["shared_patients"] == {"patients": 0, "examples": []}
    # a patient the run trained on, spelled as NIH's file names spell it in the external set: the same patient
    split = pd.read_csv(run.file(runs.SPLIT), dtype=str, keep_default_na=False)
    split.loc[split["split"] == "train", "patient_id"] = "231"
    split.to_csv(run.file(runs.SPLIT), index=False)
    manifest = tmp_path / "hospital_b" / "listed.csv"
    manifest.write_text("path,label,patient_id\ndark/img_000.png,dark,00000231\nbright/img_000.png,bright,00000300\n")
    again = evaluate_run(run.path, manifest)
    assert again["shared_patients"] == {"patients": 1, "examples": ["00000231"]}


def test_test_metrics_written_before_intervals_get_them_added_beside_the_values(trained, tmp_path):

    run, _, _ = trained
    copy = copy_run(run, tmp_path / "old-run")
    stored = json.loads(copy.file(runs.METRICS).read_text())
    old = {k: v for k, v in stored.items() if k not in ("ci", "bootstrap")}  # as written before intervals
    old["per_class"] = {
        name: {k: v for k, v in values.items() if k not in ("ci", "ppv", "npv")}
        for name, values in stored["per_class"].items()
    }
    copy.file(runs.METRICS).write_text(json.dumps(old))
    result = evaluate_run(copy.path)
    assert result["ci"]["accuracy"]["ci_low"] <= result["accuracy"] <= result["ci"]["accuracy"]["ci_high"]
    assert result["ci"] == stored["ci"] and result["bootstrap"] == stored["bootstrap"]  # same data, same seed
    saved = json.loads(copy.file(runs.METRICS).read_text())
    assert {k: saved[k] for k in old if k != "per_class"} == {k: v for k, v in old.items() if k != "per_class"}
    assert saved["per_class"] == stored["per_class"]


def test_each_external_dataset_keeps_its_own_folder_inside_the_run(trained, tmp_path):
    """Failure 3: /a/hospitalA/test and /b/hospitalB/test shared external/test (the second replaced the
    first), and a manifest named `...csv` made the folder `external/..`, overwriting the test metrics."""
    run = copy_run(trained[0], tmp_path / "models")
    before = {name: run.file(name).read_bytes() for name in (runs.METRICS, runs.PREDICTIONS, runs.PER_CLASS)}
    first = make_class_folders(tmp_path / "hospitalA" / "test", classes=("dark", "bright"), per_class=3)
    second = make_class_folders(tmp_path / "hospitalB" / "test", classes=("dark", "bright"), per_class=5)
    rows = [{"path": str(p), "label": p.parent.name} for p in sorted(second.rglob("*.png"))[:4]]
    manifest = tmp_path / "exports" / "...csv"
    manifest.parent.mkdir()
    pd.DataFrame(rows).to_csv(manifest, index=False)
    already = len(run.external_evaluations())
    folders = {str(d): evaluate_run(run.path, d)["out_dir"] for d in (first, second, manifest)}
    assert len(set(folders.values())) == 3
    external = (run.path / "external").resolve()
    for out in folders.values():
        assert Path(out).resolve().parent == external
    by_data = {e.source["data"]: e.metrics["n"] for e in run.external_evaluations()}
    assert by_data[str(first.resolve())] == 6 and by_data[str(second.resolve())] == 10
    assert by_data[str(manifest.resolve())] == 4
    assert {name: run.file(name).read_bytes() for name in before} == before  # the test split's own results
    again = evaluate_run(run.path, first)  # replaces only its own folder
    assert again["out_dir"] == folders[str(first)] and len(run.external_evaluations()) == already + 3


@pytest.mark.slow
def test_either_stage_can_be_skipped(tmp_path, rules_run):
    root = make_class_folders(tmp_path / "d", per_class=10)
    run = train(tiny_config(root, epochs=0, fine_tune_epochs=1), out_dir=tmp_path / "m")
    assert run.history()["stage"].tolist() == ["finetune"]
    assert rules_run.run.config().fine_tune_epochs == 0  # trained 1 + 0 epochs
    assert rules_run.run.history()["stage"].tolist() == ["frozen"]


@pytest.mark.slow
def test_cancel_stops_at_the_next_batch_and_keeps_a_loadable_checkpoint(tmp_path):
    root = make_class_folders(tmp_path / "d", per_class=20)
    calls = []

    def should_stop():
        calls.append(1)
        return len(calls) >= 2  # cancel after the second batch of the first epoch

    run = train(tiny_config(root, batch_size=4, epochs=5), out_dir=tmp_path / "m", should_stop=should_stop)
    info = run.info()
    assert info["status"] == "cancelled"
    assert len(calls) == 2
    # Failure 9: Keras still ends the epoch it was stopped in; that partial epoch is not a completed one
    assert info["epochs_completed"] == 0 and run.epochs_completed() == 0
    assert run.history().empty and run.resume_state() is None
    assert not run.file(runs.METRICS).exists()
    assert Predictor(run.path).predict([str(next(root.rglob("*.png")))])[0]["label"] in ("A", "B")


#: this module's fixtures that train: tests that use them are slow (conftest)
TRAINING_FIXTURES = {"stopped_in_epoch_3"}


@pytest.fixture(scope="module")
def stopped_in_epoch_3(tmp_path_factory, shared_runs) -> runs.RunDir:
    """5 epochs of 8 batches, cancelled at the third batch of epoch 3: two whole epochs. Trained once per session
    (conftest.once_per_session) and read-only: each test that resumes it works on ``copy_run``."""

    def make():
        root = make_class_folders(tmp_path_factory.mktemp("stopped") / "d", per_class=20)  # 32 training images
        calls = []

        def should_stop():
            calls.append(1)
            return len(calls) >= 8 * 2 + 3  # the third batch of epoch 3

        config = tiny_config(root, batch_size=4, epochs=5, fine_tune_epochs=0)
        return train(config, out_dir=tmp_path_factory.mktemp("stopped-run"), should_stop=should_stop)

    run = once_per_session(tmp_path_factory, "test_train.stopped_in_epoch_3", make)
    shared_runs.freeze(run.path.parent)
    return run


@pytest.mark.slow
def test_a_cancel_mid_epoch_counts_only_whole_epochs_and_resumes_from_them(stopped_in_epoch_3, tmp_path):
    run = copy_run(stopped_in_epoch_3, tmp_path)  # cancelled at the third batch of epoch 3
    assert run.status() == "cancelled"
    assert run.info()["epochs_completed"] == 2 == run.resume_state()["epochs_done"]
    assert run.history()["epoch"].tolist() == [1, 2]
    assert run.info()["best_epoch"] in (1, 2)
    resumed = train(run.config(), run=run, resume=True)
    assert resumed.info()["resumed_from_epoch"] == 2
    assert resumed.history()["epoch"].tolist() == [1, 2, 3, 4, 5]


@pytest.mark.slow
def test_an_epoch_the_checkpoint_just_saved_is_linked_into_the_resume_state_not_saved_twice(tmp_path):
    root = make_class_folders(tmp_path / "d", per_class=20)  # 8 batches of 4 per epoch
    calls = []
    run = train(
        tiny_config(root, batch_size=4, epochs=3, fine_tune_epochs=0),
        out_dir=tmp_path / "m",
        should_stop=lambda: calls.append(1) or len(calls) > 8,  # stops in epoch 2
    )
    state = run.resume_state()
    assert state["epochs_done"] == 1 == state["best_epoch"]  # the first finite val_loss is the best so far
    saved = run.path / runs.STATE_DIR / state["model"]
    assert saved.stat().st_ino == run.file(runs.MODEL).stat().st_ino  # one file, not a second save
    resumed = train(run.config(), run=run, resume=True)
    assert resumed.info()["resumed_from_epoch"] == 1 and resumed.history()["epoch"].tolist() == [1, 2, 3]


def _val_loss_of_saved_model(run: runs.RunDir) -> float:
    from cxrcore.evaluation.evaluate import predict_frame
    from cxrcore.training.model import load_model

    split = run.split()
    val = split[split["split"] == "val"].reset_index(drop=True)
    classes = run.labels()
    probs = predict_frame(load_model(run.file(runs.MODEL)), val, classes, run.image_size())
    y = val["label"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    return float(-np.mean(np.log(np.clip(probs[np.arange(len(y)), y], 1e-7, 1.0))))


@pytest.mark.slow
def test_a_kill_between_checkpoint_and_resume_state_cannot_split_best_epoch_from_the_model(
    stopped_in_epoch_3, tmp_path
):
    """Failure 11: a process killed after writing a better model.keras but before that epoch's resume
    state left, after resuming, a best_epoch that disagreed with the saved model."""
    from cxrcore.training.model import build_model

    run = copy_run(stopped_in_epoch_3, tmp_path / "m")  # stopped in epoch 3
    assert run.resume_state()["epochs_done"] == 2
    # what a kill after epoch 3's checkpoint write and before its resume state leaves behind
    stranger = build_model("simple_cnn", 2, image_size=32, weights="none", head=HeadConfig(dense_units=[8]))
    stranger.save(tmp_path / "written.keras")  # the checkpoint writes a new file and renames it
    (tmp_path / "written.keras").replace(run.file(runs.MODEL))
    resumed = train(run.config(), run=run, resume=True, should_stop=lambda: True)  # stops at once
    info = resumed.info()
    history = resumed.history().set_index("epoch")
    assert info["best_epoch"] <= info["epochs_completed"] == 2
    assert info["best_val_loss"] == pytest.approx(history.loc[info["best_epoch"], "val_loss"], rel=1e-6)
    assert _val_loss_of_saved_model(resumed) == pytest.approx(info["best_val_loss"], rel=1e-3, abs=1e-4)


def test_no_training_path_writes_into_a_finished_or_live_run(trained, tmp_path):
    import os
    import socket

    from cxrcore.errors import RunError
    from cxrcore.training.train import resume_run

    run = copy_run(trained[0], tmp_path / "models")  # evaluate_run rewrites its card
    files = {name: run.file(name).read_bytes() for name in (runs.MODEL, runs.HISTORY, runs.METRICS, runs.INFO)}
    with pytest.raises(RunError, match="already finished"):
        resume_run(run.path)
    with pytest.raises(RunError, match="already holds a run"):
        train(run.config(), run=run)
    assert evaluate_run(run.path)["accuracy"] == json.loads(files[runs.METRICS])["accuracy"]
    assert {name: run.file(name).read_bytes() for name in files} == files

    live = runs.RunDir(tmp_path / "live")  # a run whose process is alive (this one)
    live.path.mkdir()
    for name in (runs.CONFIG, runs.LABELS, runs.SPLIT):
        live.file(name).write_bytes(run.file(name).read_bytes())
    live.update_info(status="running", **runs.this_process())
    assert live.status() == "running"
    with pytest.raises(RunError, match="still training"):
        resume_run(live.path)
    live.update_info(pid=os.getpid(), pid_started="0", host=socket.gethostname())  # a recycled pid
    assert live.status() == "interrupted"


def test_bad_data_fails_before_a_run_directory_is_made(tmp_path):
    root = make_class_folders(tmp_path / "d", per_class=5)
    (root / "B" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(DataError, match="broken.png"):
        train(tiny_config(root), out_dir=tmp_path / "m")
    with pytest.raises(WeightsError, match="missing.h5"):
        train(
            tiny_config(root, backbone="mobilenetv2_0.35", weights=str(tmp_path / "missing.h5")), out_dir=tmp_path / "m"
        )
    assert not (tmp_path / "m").exists() or not any((tmp_path / "m").iterdir())


@pytest.mark.slow
def test_a_failure_during_training_marks_the_run_failed_with_the_reason(tmp_path):
    root = make_class_folders(tmp_path / "d", per_class=10)

    def explode(event):
        if event["event"] == "epoch":
            raise RuntimeError("disk full while logging")

    with pytest.raises(RuntimeError):
        train(tiny_config(root), out_dir=tmp_path / "m", progress=explode)
    (run_dir,) = list((tmp_path / "m").iterdir())
    info = runs.RunDir(run_dir).info()
    assert info["status"] == "failed" and "disk full" in info["error"]
    assert runs.list_runs(tmp_path / "m")[0]["status"] == "failed"


def test_uploaded_bytes_and_dicom_take_the_same_prediction_path(trained, tmp_path):
    from PIL import Image
    from test_io import write_dicom

    run, _, root = trained
    predictor = Predictor(run.path)
    png = sorted((root / "bright").glob("*.png"))[0]
    by_path = predictor.predict([str(png)])[0]
    by_bytes = predictor.predict([png.read_bytes()], names=["upload.png"])[0]
    assert by_bytes["image"] == "upload.png"
    assert by_bytes["probabilities"] == pytest.approx(by_path["probabilities"], abs=1e-6)
    # the same 8-bit pixels stored as a DICOM (values 0..255 in a 16-bit container) predict the same
    pixels = np.asarray(Image.open(png), dtype=np.uint16)
    pixels[0, 0], pixels[0, 1] = 0, 255  # pin the range so the min..max stretch is the identity
    Image.fromarray(pixels.astype(np.uint8)).save(tmp_path / "pinned.png")
    dicom = write_dicom(tmp_path / "scan.bin", pixels, bits_stored=8)
    as_png = predictor.predict([str(tmp_path / "pinned.png")])[0]
    as_dicom = predictor.predict([dicom.read_bytes()], names=["scan.bin"])[0]
    assert as_dicom["probabilities"] == pytest.approx(as_png["probabilities"], abs=1e-5)


def test_focal_loss_and_class_weights_reach_the_model(tmp_path, rules_run):
    from cxrcore.training.model import build_model
    from cxrcore.training.train import compile_for_stage

    model = build_model("simple_cnn", 2, image_size=32, weights="none")
    compile_for_stage(model, tiny_config(tmp_path, focal_loss=True, focal_gamma=3.0), "frozen", pretrained=False)
    assert isinstance(model.loss, keras.losses.CategoricalFocalCrossentropy)
    assert model.loss.gamma == 3.0
    run = rules_run.run  # focal loss on 12 dark and 11 bright images
    assert run.config().focal_loss and len(list((rules_run.data / "bright").glob("*.png"))) == 11
    assert run.info()["status"] == "succeeded"


def test_mixed_precision_is_only_used_on_a_gpu():
    import tensorflow as tf

    from cxrcore.training.devices import configure_devices

    _, devices = configure_devices(mixed_precision=True)
    has_gpu = bool(tf.config.list_physical_devices("GPU"))
    assert devices["mixed_precision"] == has_gpu
    assert keras.mixed_precision.global_policy().name == ("mixed_float16" if has_gpu else "float32")
    keras.mixed_precision.set_global_policy("float32")


@pytest.mark.slow
def test_xla_is_an_option_and_each_stage_records_whether_it_ran(tmp_path, rules_run):
    import tensorflow as tf

    root = make_class_folders(tmp_path / "d", per_class=12)
    on = train(tiny_config(root, epochs=1, fine_tune_epochs=1, xla="on"), out_dir=tmp_path / "on")
    assert on.status() == "succeeded"
    assert (on.info()["frozen_xla"], on.info()["finetune_xla"]) == (True, True)
    assert on.config().xla == "on"
    auto = rules_run.run  # xla left at "auto"
    assert auto.config().xla == "auto"
    assert auto.info()["frozen_xla"] == bool(tf.config.list_physical_devices("GPU"))  # Keras: XLA on a GPU only
    with pytest.raises(ConfigError, match="xla must be one of auto, on, off"):
        tiny_config(root, xla="yes").validate()


def test_compare_runs_lines_up_metrics_and_costs(trained):
    from cxrcore.evaluation.evaluate import BETTER, compare_runs

    run = trained[0]
    table = compare_runs([run.path])
    metrics = json.loads(run.file(runs.METRICS).read_text())
    column = table[run.run_id]
    assert column["accuracy"] == metrics["accuracy"]
    assert column["AUC bright"] == metrics["per_class"]["bright"]["auc"]
    assert column["parameters"] == run.info()["params"] > 0
    assert column["inference (ms / image)"] > 0
    assert set(BETTER) <= set(table.index)


@pytest.mark.slow
def test_external_sets_are_checked_before_training_and_evaluated_after(tmp_path):
    root = make_class_folders(tmp_path / "d", classes=("dark", "bright"), per_class=12)
    other = make_class_folders(tmp_path / "site_b", classes=("dark", "light"), per_class=4)
    models = tmp_path / "m"
    # "light" is no class of the model: refused before anything is trained or written
    with pytest.raises(DataError, match=r"not trained on: light .*--external-map"):
        train(tiny_config(root, external=[str(other)]), out_dir=models)
    assert not models.exists() or not any(models.iterdir())
    one_stage = {"fine_tune_epochs": 0}  # the external sets are evaluated after either stage: one is enough here
    run = train(tiny_config(root, external=[str(other)], external_map={"light": "bright"}, **one_stage), out_dir=models)
    (evaluation,) = run.external_evaluations()
    assert evaluation.source["data"] == str(other.resolve()) and evaluation.metrics["n"] == 8
    assert evaluation.metrics["classes"] == run.labels() and "ci" in evaluation.metrics
    skipped = train(tiny_config(root, external=[str(other)], external_skip_unknown=True, **one_stage), out_dir=models)
    assert skipped.external_evaluations()[0].metrics["n"] == 4  # only "dark"


def test_feature_statistics_come_from_a_sample_of_a_large_training_split(rules_run):
    run = rules_run.run  # trained with ood.MAX_TRAIN_IMAGES lowered to 10 (conftest)
    assert run.info()["n_train"] > 10 and run.feature_stats().n_train == 10
    assert run.info()["finish_seconds"] >= 0
