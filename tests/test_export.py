"""Export: a SavedModel and a TFLite file that give the run's calibrated probabilities on the same prepared images."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from conftest import ALL_PIXEL_RULES, CXR_DEV, REPO, copy_run, litert_runner, needs_cxr_dev, tiny_config
from cxrcore import runs
from cxrcore.errors import ConfigError, RunError
from cxrcore.export import download_bytes, export
from cxrcore.predict import Predictor
from cxrcore.workflows import train


def _check_exports_match_the_run(run: runs.RunDir, images: list[str], tmp_path) -> None:
    import tensorflow as tf

    predictor = Predictor(run.path)
    batch = np.stack([predictor.prepare(p) for p in images]).astype(np.float32)
    expected = predictor.probabilities(batch)  # calibrated, as the dashboard shows them
    saved = export(run.path, "savedmodel", tmp_path / "out")
    loaded = tf.saved_model.load(str(saved))
    np.testing.assert_allclose(np.asarray(loaded.serve(tf.constant(batch))), expected, atol=1e-5)
    lite = export(run.path, "tflite", tmp_path / "out")
    assert lite.suffix == ".tflite" and lite.stat().st_size > 0
    np.testing.assert_allclose(litert_runner(lite)(batch), expected, atol=1e-4)
    spec = json.loads((tmp_path / "out" / f"{lite.name}.json").read_text())
    assert spec["output"]["classes"] == run.labels()
    assert spec["output"]["temperature"] == pytest.approx(run.temperature())
    assert spec["input"]["shape"] == [None, run.image_size(), run.image_size(), 3]
    assert spec["input"]["range"] == [0, 255] and "bilinear" in spec["input"]["prepare"]
    assert spec["unlike_training_check"].startswith("not part of this export")


def test_savedmodel_and_tflite_give_the_runs_calibrated_probabilities(separable_run, tmp_path):
    run, data = separable_run.run, separable_run.data  # shared: exported to tmp_path, never into the run
    assert run.temperature() != 1.0  # the export must apply it
    _check_exports_match_the_run(run, [str(p) for p in sorted(data.rglob("*.png"))[:6]], tmp_path)


@pytest.mark.slow
@needs_cxr_dev
def test_exports_agree_with_the_run_on_cxr_dev_images(tmp_path):
    manifest = pd.read_csv(CXR_DEV / "manifest.csv")
    sample = manifest.groupby("label").head(24).copy()
    sample["path"] = [str(CXR_DEV / p) for p in sample["path"]]
    subset = tmp_path / "subset.csv"
    sample[["path", "label", "patient_id"]].to_csv(subset, index=False)
    run = train(tiny_config(subset, image_size=48, seed=2), out_dir=tmp_path / "m")
    others = manifest.drop(sample.index).groupby("label").head(3)  # images the model never saw
    _check_exports_match_the_run(run, [str(CXR_DEV / p) for p in others["path"]], tmp_path)


def test_export_refuses_an_unknown_format_or_a_folder_that_is_no_run(tmp_path):
    with pytest.raises(ConfigError, match="format must be one of savedmodel, tflite"):
        export(tmp_path, "onnx")
    with pytest.raises(RunError, match="is not a run directory"):
        export(tmp_path, "tflite")


def test_export_cli_prints_the_path_last_and_the_download_is_one_file(separable_run, tmp_path):
    run = copy_run(separable_run.run, tmp_path / "m")  # the command writes into the run's export/
    proc = subprocess.run(
        [sys.executable, "-m", "cxrcore", "export", str(run.path), "--format", "savedmodel"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    path = proc.stdout.strip().splitlines()[-1]
    assert path == str(run.path / "export" / f"{run.run_id}-savedmodel")
    payload, name = download_bytes(path)
    assert name == f"{run.run_id}-savedmodel.zip" and payload[:2] == b"PK"
    import io
    import zipfile

    names = zipfile.ZipFile(io.BytesIO(payload)).namelist()
    assert f"{run.run_id}-savedmodel.json" in names and any(n.endswith("saved_model.pb") for n in names)


def test_a_run_with_lung_rules_exports_the_lung_model_its_pixels_need(rules_run, tmp_path):
    import io
    import zipfile

    import tensorflow as tf

    from cxrcore.data.io import prepare_image
    from cxrcore.data.pixels import PixelRules
    from cxrcore.lungs.segment import SHIPPED_MODEL, shipped_fingerprint

    run, data = rules_run.run, rules_run.data  # every pixel rule, lung crop and mask among them
    rules = PixelRules(**ALL_PIXEL_RULES)
    assert run.info()["lung_model"] == shipped_fingerprint()
    saved = export(run.path, "savedmodel", tmp_path / "out")
    spec = json.loads((tmp_path / "out" / f"{saved.name}.json").read_text())
    assert spec["input"]["pixel_rules"] == {"crop_border": 0.2, "equalize": True, "lung_crop": True, "lung_mask": True}
    assert spec["input"]["lung_model"]["digest"] == shipped_fingerprint()
    copied = tmp_path / "out" / spec["input"]["lung_model"]["file"]
    assert copied.read_bytes() == SHIPPED_MODEL.read_bytes()
    assert "cropped to the lungs" in spec["input"]["prepare"]
    names = zipfile.ZipFile(io.BytesIO(download_bytes(saved)[0])).namelist()
    assert "lungs.keras" in names
    # the exported model on the pixels prepare_image gives for the run = what the dashboard shows
    images = sorted(str(p) for p in data.rglob("*.png"))[:4]
    batch = np.stack([prepare_image(p, run.image_size(), rules=rules) for p in images]).astype(np.float32)
    expected = Predictor(run.path).probabilities(batch)
    loaded = tf.saved_model.load(str(saved))  # kept in a name: serve() needs its variables alive
    np.testing.assert_allclose(np.asarray(loaded.serve(tf.constant(batch))), expected, atol=1e-5)
