"""Two-stage training end to end on tiny synthetic data, and what it leaves on disk."""
from __future__ import annotations

import json

import keras
import numpy as np
import pandas as pd
import pytest

from conftest import make_class_folders, write_image
from cxrcore import runs
from cxrcore.config import HeadConfig, TrainConfig
from cxrcore.errors import DataError, WeightsError
from cxrcore.evaluation.evaluate import evaluate_run
from cxrcore.predict import Predictor
from cxrcore.training.train import train

pytestmark = pytest.mark.slow


def tiny_config(data, **changes) -> TrainConfig:
    base = dict(data=str(data), backbone="simple_cnn", weights="none", image_size=32, batch_size=8,
                epochs=2, fine_tune_epochs=1, head=HeadConfig(dense_units=[8], dropout=0.0),
                patience=0, reduce_lr_patience=0, seed=1)
    return TrainConfig(**{**base, **changes})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = make_class_folders(tmp_path_factory.mktemp("data") / "d", classes=("dark", "bright"), per_class=30)
    events = []
    run = train(tiny_config(root, val_fraction=0.2, test_fraction=0.2),
                out_dir=tmp_path_factory.mktemp("models"), progress=events.append)
    return run, events, root


def test_run_directory_is_complete(trained):
    run, _, _ = trained
    for name in (runs.CONFIG, runs.LABELS, runs.SPLIT, runs.HISTORY, runs.MODEL, runs.METRICS, runs.PREDICTIONS, runs.INFO, runs.LOG):
        assert run.file(name).is_file(), name
    assert any(run.file(runs.TENSORBOARD).rglob("events.out.tfevents.*"))
    assert not list(run.path.glob(".*tmp*")), "temporary files left behind"
    info = run.info()
    assert info["status"] == "succeeded" and info["device"] == "CPU"
    assert info["epochs_completed"] == 3 and info["n_test"] == 12
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
    assert metrics["n"] == 12
    assert metrics["accuracy"] >= 0.75        # classes differ in brightness by 150 grey levels


def test_predictions_csv_matches_the_prediction_path(trained):
    run = trained[0]
    table = pd.read_csv(run.file(runs.PREDICTIONS))
    predictor = Predictor(run.path)
    results = predictor.predict(table["path"].tolist()[:5])
    for row, result in zip(table.head(5).itertuples(), results):
        assert result["probabilities"]["bright"] == pytest.approx(getattr(row, "prob_bright"), abs=1e-5)
        assert result["label"] == row.pred_label
    split = run.split()
    assert set(table["path"]) == set(split.loc[split["split"] == "test", "path"])


def test_progress_events_report_stage_epoch_and_batch(trained):
    events = trained[1]
    epochs = [e for e in events if e["event"] == "epoch"]
    assert [(e["stage"], e["epoch"], e["epochs"]) for e in epochs] == [
        ("frozen", 1, 3), ("frozen", 2, 3), ("finetune", 3, 3)]
    batches = [e for e in events if e["event"] == "batch"]
    assert batches[0]["batches"] == 5 and batches[-1]["batch"] == 5   # 36 training images / 8
    assert "loss" in epochs[0]["logs"] and "val_loss" in epochs[0]["logs"]


def test_saved_model_reloads_and_predicts_the_same(trained, tmp_path):
    run = trained[0]
    model = keras.saving.load_model(run.file(runs.MODEL), compile=False)
    model.save(tmp_path / "again.keras")
    again = keras.saving.load_model(tmp_path / "again.keras", compile=False)
    x = np.random.default_rng(0).uniform(0, 255, (3, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(model(x)), np.asarray(again(x)), atol=1e-6)


def test_external_validation_is_kept_apart_from_the_test_split(trained, tmp_path):
    run, _, _ = trained
    before = run.file(runs.METRICS).read_text()
    external = make_class_folders(tmp_path / "hospital_b", classes=("dark", "bright", "other"), per_class=4)
    with pytest.raises(DataError, match="not trained on: other"):
        evaluate_run(run.path, external)
    result = evaluate_run(run.path, external, drop_unknown=True)
    assert result["n"] == 8
    out = run.path / "external" / "hospital_b"
    assert json.loads((out / runs.METRICS).read_text())["n"] == 8
    assert len(pd.read_csv(out / runs.PREDICTIONS)) == 8
    assert run.file(runs.METRICS).read_text() == before


def test_either_stage_can_be_skipped(tmp_path):
    root = make_class_folders(tmp_path / "d", per_class=10)
    run = train(tiny_config(root, epochs=0, fine_tune_epochs=1), out_dir=tmp_path / "m")
    assert run.history()["stage"].tolist() == ["finetune"]
    run = train(tiny_config(root, epochs=1, fine_tune_epochs=0), out_dir=tmp_path / "m")
    assert run.history()["stage"].tolist() == ["frozen"]


def test_cancel_stops_at_the_next_batch_and_keeps_a_loadable_checkpoint(tmp_path):
    root = make_class_folders(tmp_path / "d", per_class=20)
    calls = []

    def should_stop():
        calls.append(1)
        return len(calls) >= 2          # cancel after the second batch of the first epoch

    run = train(tiny_config(root, batch_size=4, epochs=5), out_dir=tmp_path / "m", should_stop=should_stop)
    info = run.info()
    assert info["status"] == "cancelled"
    assert info["epochs_completed"] == 1
    assert len(calls) == 2
    assert not run.file(runs.METRICS).exists()
    assert Predictor(run.path).predict([str(next(root.rglob("*.png")))])[0]["label"] in ("A", "B")


def test_bad_data_fails_before_a_run_directory_is_made(tmp_path):
    root = make_class_folders(tmp_path / "d", per_class=5)
    (root / "B" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(DataError, match="broken.png"):
        train(tiny_config(root), out_dir=tmp_path / "m")
    with pytest.raises(WeightsError, match="missing.h5"):
        train(tiny_config(root, backbone="mobilenetv2_0.35", weights=str(tmp_path / "missing.h5")),
              out_dir=tmp_path / "m")
    assert not (tmp_path / "m").exists() or not any((tmp_path / "m").iterdir())


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
    pixels[0, 0], pixels[0, 1] = 0, 255       # pin the range so the min..max stretch is the identity
    Image.fromarray(pixels.astype(np.uint8)).save(tmp_path / "pinned.png")
    dicom = write_dicom(tmp_path / "scan.bin", pixels, bits_stored=8)
    as_png = predictor.predict([str(tmp_path / "pinned.png")])[0]
    as_dicom = predictor.predict([dicom.read_bytes()], names=["scan.bin"])[0]
    assert as_dicom["probabilities"] == pytest.approx(as_png["probabilities"], abs=1e-5)


def test_focal_loss_and_class_weights_reach_the_model(tmp_path):
    from cxrcore.training.train import compile_for_stage
    from cxrcore.training.model import build_model

    model = build_model("simple_cnn", 2, image_size=32, weights="none")
    compile_for_stage(model, tiny_config(tmp_path, focal_loss=True, focal_gamma=3.0), "frozen", pretrained=False)
    assert isinstance(model.loss, keras.losses.CategoricalFocalCrossentropy)
    assert model.loss.gamma == 3.0
    root = make_class_folders(tmp_path / "d", per_class=12)
    (root / "B" / "img_000.png").unlink()
    run = train(tiny_config(root, focal_loss=True, epochs=1, fine_tune_epochs=0), out_dir=tmp_path / "m")
    assert run.info()["status"] == "succeeded"


def test_mixed_precision_is_only_used_on_a_gpu():
    import tensorflow as tf
    from cxrcore.training.devices import configure_devices

    _, devices = configure_devices(mixed_precision=True)
    has_gpu = bool(tf.config.list_physical_devices("GPU"))
    assert devices["mixed_precision"] == has_gpu
    assert keras.mixed_precision.global_policy().name == ("mixed_float16" if has_gpu else "float32")
    keras.mixed_precision.set_global_policy("float32")


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
