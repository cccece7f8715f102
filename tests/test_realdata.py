"""Real chest X-rays: train MobileNetV2-0.35 from the shared ImageNet weights, through the CLI.

The run trains on a stratified subset of cxr-dev (SUBSET, 1,112 of its 2,500 images); how `train` splits
all of cxr-dev is checked without training, with the library functions `train` itself calls.

Skipped (with the reason) on a machine without ``../shared`` (a user's fresh clone).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import CXR_DEV, REPO, cli, copy_weights_to_keras_home, needs_cxr_dev, needs_weights

pytestmark = [pytest.mark.slow, needs_cxr_dev, needs_weights]


def cli_process(*args, env):
    """``python -m cxrcore ARGS`` in a process of its own, with exactly ``env``."""
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


def last_json(ran) -> dict:
    return json.loads(ran.stdout.strip().splitlines()[-1])


# How `train` is run here: all of cxr-dev is split without training (test_the_split_of_all_of_cxr_dev),
# the run itself trains on SUBSET.
TRAIN_ARGS = ["--backbone", "mobilenetv2_0.35", "--weights", "imagenet", "--image-size", 64, "--seed", 0]
TRAIN_ARGS += ["--epochs", 2, "--fine-tune-epochs", 1, "--batch-size", 32]

# The subset the run trains on: 500 COVID and 500 Normal images (no patient ids: a group of one each), and
# the 56 Viral Pneumonia patients with more than one image, two images each (1,112 images). Every group of a
# class has one size, so the default split (test 0.1, val 0.1, by patient) does not depend on the seed's
# order: group j of a class of N images in groups of s goes to test while (j + 1/2) s / N < 0.1, to val
# while it is < 0.2, else to train.
#   COVID, Normal (N 500, s 1): (j + 1/2) / 500 < 0.1 for j <= 49: 50 test; < 0.2 for j <= 99: 50 val; 400 train
#   Viral Pneumonia (N 112, s 2): (2j + 1) / 112 < 0.1 for j <= 5: 6 patients, 12 test; < 0.2 for j <= 10:
#   5 patients, 10 val; 45 patients, 90 train
# Why 500: the accuracy and AUC floors held on 120 a class too, but the unlike-training check did not. Its
# threshold is the 99th percentile of the validation images' scores, and with fewer training images the
# scores of images unlike them shrink: with 120 a class (34 validation images) the scanned text page scored
# 78 against a threshold of 100; with 200-400 a class it cleared its threshold by 2-15%, with 500 by 16-19%
# (two samples), with all of cxr-dev by 27%.
SUBSET_PER_CLASS = 500
SUBSET_SPLIT = {"train": 400 + 400 + 90, "val": 50 + 50 + 10, "test": 50 + 50 + 12}


def stratified_subset(folder: Path) -> Path:
    """SUBSET as a CSV manifest (absolute paths, patient ids kept)."""
    manifest = pd.read_csv(CXR_DEV / "manifest.csv", dtype=str, keep_default_na=False)
    no_id = manifest[manifest["patient_id"] == ""]
    assert set(no_id["label"]) == {"COVID", "Normal"}
    parts = [group.sample(SUBSET_PER_CLASS, random_state=0) for _, group in no_id.groupby("label")]
    patients = manifest[manifest["patient_id"] != ""].sort_values("path").groupby("patient_id")
    pairs = patients.filter(lambda g: len(g) > 1).groupby("patient_id").head(2)
    assert set(pairs["label"]) == {"Viral Pneumonia"} and len(pairs) == 112
    subset = pd.concat([*parts, pairs])
    subset = subset.assign(path=[str(CXR_DEV / rel) for rel in subset["path"]])
    folder.mkdir(parents=True, exist_ok=True)
    subset[["path", "label", "patient_id"]].to_csv(folder / "manifest.csv", index=False)
    return (folder / "manifest.csv").resolve()


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    home = copy_weights_to_keras_home(tmp_path_factory.mktemp("keras"))
    base = {k: v for k, v in os.environ.items() if k != "CXRCORE_MAX_STEPS"}
    # CXRCORE_CACHE stays the session's (conftest), which this process uses too: the training data's audit,
    # made once by `train`, is found again when an external evaluation here rewrites the model card
    return {**base, "KERAS_HOME": str(home), "TF_CPP_MIN_LOG_LEVEL": "3"}


@pytest.fixture(scope="module")
def subset(tmp_path_factory) -> Path:
    return stratified_subset(tmp_path_factory.mktemp("cxr-subset"))


@pytest.fixture(scope="module")
def run_dir(env, subset, tmp_path_factory):
    # 64 px is not one of MobileNetV2's weight sizes, so Keras takes the 224 file from KERAS_HOME/models:
    # the standard `weights="imagenet"` path, offline, through the CLI in a process of its own.
    out = tmp_path_factory.mktemp("models")
    proc = cli_process("train", "--data", subset, *TRAIN_ARGS, "--out", out, env=env)
    return Path(proc.stdout.strip().splitlines()[-1])


def prepared(data: Path):
    """What `train --data DATA` with TRAIN_ARGS indexes and splits (the run's split.csv and counts), untrained."""
    from cxrcore.cli import build_parser
    from cxrcore.cli.options import config_from_args
    from cxrcore.training.train import prepare_data

    config = config_from_args(build_parser().parse_args(["train", "--data", str(data), *map(str, TRAIN_ARGS)]))
    return prepare_data(config)


def test_the_split_of_all_of_cxr_dev():
    """All 2,500 images of cxr-dev split as `train` splits them: 2000/250/250, no patient in two splits."""
    from cxrcore.data.splits import leakage_report

    frame, classes = prepared(CXR_DEV)
    assert classes == ["COVID", "Normal", "Viral Pneumonia"]
    counts = frame["split"].value_counts()
    assert (counts["train"], counts["val"], counts["test"]) == (2000, 250, 250)
    known = frame[frame["patient_id"] != ""]
    assert known["patient_id"].duplicated().any()  # patients with several images: there is something to leak
    assert known.groupby("patient_id")["split"].nunique().max() == 1, "a patient leaked across splits"
    assert leakage_report(frame).empty


def test_run_directory_and_split_on_real_data(run_dir, subset):
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "succeeded"
    assert info["classes"] == ["COVID", "Normal", "Viral Pneumonia"]
    assert (info["n_train"], info["n_val"], info["n_test"]) == tuple(SUBSET_SPLIT[s] for s in ("train", "val", "test"))
    split = pd.read_csv(run_dir / "split.csv", keep_default_na=False)
    known = split[split["patient_id"] != ""]
    assert known.groupby("patient_id")["split"].nunique().max() == 1, "a patient leaked across splits"
    # the split the run recorded is the one the library computes without training (as for all of cxr-dev)
    frame, _ = prepared(subset)
    assert split.set_index("path")["split"].to_dict() == frame.set_index("path")["split"].to_dict()
    assert len(pd.read_csv(run_dir / "predictions.csv")) == SUBSET_SPLIT["test"]
    history = pd.read_csv(run_dir / "history.csv")
    assert history["stage"].tolist() == ["frozen", "frozen", "finetune"]


def test_pretrained_features_separate_the_real_classes(run_dir):
    # Chance is ~0.4 accuracy / 0.5 AUC; three short epochs on ImageNet features land far above it
    # (0.87-0.90 accuracy seen at 96 px on all of cxr-dev; at 64 px, 0.88 accuracy and 0.97 AUC on all of it,
    # 0.80-0.86 and 0.93-0.96 on two samples of SUBSET). A run from broken weights or a broken pipeline does not.
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["n"] == SUBSET_SPLIT["test"]
    assert metrics["macro_auc"] > 0.85
    assert metrics["accuracy"] > 0.7
    assert set(metrics["per_class"]) == {"COVID", "Normal", "Viral Pneumonia"}


def test_predict_and_external_evaluation_on_real_images(run_dir, tmp_path):
    manifest = pd.read_csv(CXR_DEV / "manifest.csv")
    external = tmp_path / "site_b"
    for label, group in manifest.groupby("label"):
        (external / label).mkdir(parents=True)
        for rel in group["path"].head(8):
            shutil.copy(CXR_DEV / rel, external / label)
    summary = last_json(cli("evaluate", run_dir, "--data", external))  # in this process
    assert summary["n"] == 24
    (saved,) = (run_dir / "external").glob("*-site_b-*/metrics.json")  # one folder per dataset
    assert json.loads(saved.read_text())["n"] == 24
    image = CXR_DEV / manifest["path"][0]
    result = last_json(cli("predict", run_dir, image))
    assert result["image"] == str(image)
    assert sum(result["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)


def not_chest_xrays(folder: Path) -> list[Path]:
    """Images that are not chest X-rays: two photos, two line drawings and a scanned text page."""
    from PIL import Image, ImageDraw
    from sklearn.datasets import load_sample_images

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, photo in enumerate(load_sample_images().images):
        paths.append(folder / f"photo{i}.png")
        Image.fromarray(photo).save(paths[-1])
    rng = np.random.default_rng(0)
    for i in range(2):
        drawing = Image.new("L", (400, 400), 255)
        pen = ImageDraw.Draw(drawing)
        for _ in range(12):
            box = sorted(rng.integers(20, 380, 2).tolist()), sorted(rng.integers(20, 380, 2).tolist())
            shape = (box[0][0], box[1][0], box[0][1] + 5, box[1][1] + 5)
            (pen.ellipse if rng.random() < 0.5 else pen.rectangle)(shape, outline=0, width=3)
        paths.append(folder / f"drawing{i}.png")
        drawing.save(paths[-1])
    page = Image.new("L", (850, 1100), 245)
    pen = ImageDraw.Draw(page)
    words = "the patient was seen in clinic today and reports a cough for three days without fever".split()
    for line in range(40):
        text = " ".join(rng.choice(words, 12))
        pen.text((60, 50 + line * 25), text, fill=20)
    paths.append(folder / "text_page.png")
    page.save(paths[-1])
    return paths


def test_images_unlike_the_training_data_are_flagged(run_dir, tmp_path):
    from cxrcore.predict import Predictor

    predictor = Predictor(run_dir)
    assert predictor.feature_stats is not None
    split = pd.read_csv(run_dir / "split.csv", keep_default_na=False)
    xrays = split.loc[split["split"] == "test", "path"].tolist()
    inside = predictor.predict(xrays)
    flagged = np.mean([r["unlike_training"]["flagged"] for r in inside])
    assert flagged <= 0.1, f"{flagged:.0%} of cxr-dev test images flagged as unlike the training data"
    outside = predictor.predict([str(p) for p in not_chest_xrays(tmp_path / "other")])
    assert [r["unlike_training"]["flagged"] for r in outside] == [True] * 5, [
        (r["image"], round(r["unlike_training"]["score"], 1), round(r["unlike_training"]["threshold"], 1))
        for r in outside
    ]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["ood"]["fraction_flagged"] <= 0.1 and metrics["ood"]["n"] == SUBSET_SPLIT["test"]


def test_decisions_and_model_card_of_a_real_run(run_dir):
    from cxrcore.predict import Predictor

    metrics = json.loads((run_dir / "metrics.json").read_text())
    points = metrics["operating_points"]
    assert points["target_sensitivity"] == 0.95 and points["chosen_on"] == "val"
    for cls in ("COVID", "Normal", "Viral Pneumonia"):
        at_target = points["classes"][cls]["sensitivity"]
        assert 0 < at_target["threshold"] < 1
        assert at_target["ci"]["sensitivity"]["ci_low"] <= at_target["sensitivity"]
    table = pd.read_csv(run_dir / "predictions.csv")
    image = table.loc[~table["unlike_training"], "path"].iloc[0]  # a decision is made for a familiar image
    result = Predictor(run_dir).predict([image], operating_point="youden")[0]
    thresholds = json.loads((run_dir / "operating_points.json").read_text())["thresholds"]
    expected = [c for c, p in result["probabilities"].items() if p >= thresholds[c]["youden"]]
    assert result["decision"]["positive"] == expected and result["decision"]["operating_point"] == "youden"

    card = (run_dir / "MODEL_CARD.md").read_text()
    assert "not a medical device" in card
    assert f"{metrics['accuracy']:.3f} (" in card  # the accuracy with its interval
    assert "| COVID | " in card and "Youden's J" in card
    # cxr-dev's classes come from different sources: the audit's shortcut check is in the card, flagged
    assert "shortcut check" in card and "**flagged**" in card
    assert "can be told apart without looking at the lungs" in card
