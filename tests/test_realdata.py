"""Real chest X-rays: train MobileNetV2-0.35 from the shared ImageNet weights, through the CLI.

Skipped (with the reason) on a machine without ``../shared`` (a user's fresh clone).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import CXR_DEV, REPO, copy_weights_to_keras_home, needs_cxr_dev, needs_weights

pytestmark = [pytest.mark.slow, needs_cxr_dev, needs_weights]


def cli(*args, env):
    proc = subprocess.run(
        [sys.executable, "-m", "cxrcore", *map(str, args)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    home = copy_weights_to_keras_home(tmp_path_factory.mktemp("keras"))
    base = {k: v for k, v in os.environ.items() if k != "CXRCORE_MAX_STEPS"}
    return {
        **base,
        "KERAS_HOME": str(home),
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "CXRCORE_CACHE": str(tmp_path_factory.mktemp("cache")),
    }


@pytest.fixture(scope="module")
def run_dir(env, tmp_path_factory):
    # 64 px is not one of MobileNetV2's weight sizes, so Keras takes the 224 file from KERAS_HOME/models:
    # the standard `weights="imagenet"` path, offline.
    out = tmp_path_factory.mktemp("models")
    proc = cli(
        "train",
        "--data",
        CXR_DEV,
        "--backbone",
        "mobilenetv2_0.35",
        "--weights",
        "imagenet",
        "--image-size",
        64,
        "--epochs",
        2,
        "--fine-tune-epochs",
        1,
        "--batch-size",
        32,
        "--out",
        out,
        "--seed",
        0,
        env=env,
    )
    return Path(proc.stdout.strip().splitlines()[-1])


def test_run_directory_and_split_on_real_data(run_dir):
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "succeeded"
    assert info["classes"] == ["COVID", "Normal", "Viral Pneumonia"]
    assert (info["n_train"], info["n_val"], info["n_test"]) == (2000, 250, 250)
    split = pd.read_csv(run_dir / "split.csv", keep_default_na=False)
    known = split[split["patient_id"] != ""]
    assert known.groupby("patient_id")["split"].nunique().max() == 1, "a patient leaked across splits"
    assert len(pd.read_csv(run_dir / "predictions.csv")) == 250
    history = pd.read_csv(run_dir / "history.csv")
    assert history["stage"].tolist() == ["frozen", "frozen", "finetune"]


def test_pretrained_features_separate_the_real_classes(run_dir):
    # Chance is ~0.4 accuracy / 0.5 AUC; three short epochs on ImageNet features land far above it
    # (0.87-0.90 accuracy seen at 96 px). A run from broken weights or a broken pipeline does not.
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["n"] == 250
    assert metrics["macro_auc"] > 0.85
    assert metrics["accuracy"] > 0.7
    assert set(metrics["per_class"]) == {"COVID", "Normal", "Viral Pneumonia"}


def test_predict_and_external_evaluation_on_real_images(run_dir, env, tmp_path):
    manifest = pd.read_csv(CXR_DEV / "manifest.csv")
    external = tmp_path / "site_b"
    for label, group in manifest.groupby("label"):
        (external / label).mkdir(parents=True)
        for rel in group["path"].head(8):
            shutil.copy(CXR_DEV / rel, external / label)
    summary = json.loads(cli("evaluate", run_dir, "--data", external, env=env).stdout.strip().splitlines()[-1])
    assert summary["n"] == 24
    (saved,) = (run_dir / "external").glob("*-site_b-*/metrics.json")  # one folder per dataset
    assert json.loads(saved.read_text())["n"] == 24
    image = CXR_DEV / manifest["path"][0]
    result = json.loads(cli("predict", run_dir, image, env=env).stdout.strip().splitlines()[-1])
    assert result["image"] == str(image)
    assert sum(result["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
