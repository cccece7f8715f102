"""`python -m cxrcore` as a user runs it: outputs, exit codes, one-line errors.

The commands run in this process through :func:`cxrcore.cli.main` (what ``python -m cxrcore`` calls), their
stdout and stderr captured; one test runs ``python -m cxrcore`` itself in a new process (a model loaded in a
fresh process, the exit status through ``sys.exit``), and the killed-run test kills a real one."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from conftest import REPO, cli, copy_run, make_class_folders, once_per_session, python_m_cxrcore

pytestmark = pytest.mark.slow

ENV = {"TF_CPP_MIN_LOG_LEVEL": "3", "CXRCORE_MAX_STEPS": "3"}  # what every command here runs with


@contextlib.contextmanager
def cli_env():
    """``ENV`` set, for a module fixture (the tests get it from ``_cli_env``)."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in ENV.items():
            patch.setenv(name, value)
        yield


@pytest.fixture(autouse=True)
def _cli_env(monkeypatch):
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)


def last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "demo"
    with cli_env():
        proc = cli("demo-data", out, "--n-per-class", 20, "--image-size", 64)
    assert Path(last_line(proc.stdout)) == out.resolve() or Path(last_line(proc.stdout)) == out
    return out


@pytest.fixture(scope="module")
def run_dir(demo, tmp_path_factory, shared_runs):
    """Trained once per session (conftest.once_per_session: under xdist this module's tests may run on two
    workers) and read-only: a test that writes into the run works on ``copy_run``."""
    path = once_per_session(tmp_path_factory, "test_cli.run_dir", lambda: _train_run_dir(demo, tmp_path_factory))
    shared_runs.freeze(path.parent)
    return path


def _train_run_dir(demo, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("models")
    with cli_env():
        proc = cli(
            "train",
            "--data",
            demo,
            "--backbone",
            "simple_cnn",
            "--weights",
            "none",
            "--image-size",
            48,
            "--epochs",
            2,
            "--fine-tune-epochs",
            1,
            "--batch-size",
            8,
            "--out",
            out,
            "--seed",
            3,
        )
    path = Path(last_line(proc.stdout))
    assert path.parent == out and path.is_dir()
    assert "[frozen] epoch 1/3" in proc.stderr and "[finetune] epoch 3/3" in proc.stderr
    return path


def test_index_prints_a_json_summary(demo):
    summary = json.loads(last_line(cli("index", demo).stdout))
    assert summary["images"] == 60 and summary["layout"] == "manifest"
    assert summary["classes"] == {"COVID": 20, "Normal": 20, "Pneumonia": 20}
    assert summary["patients"] > 0


def test_index_verify_decodes_every_image(tmp_path):
    root = make_class_folders(tmp_path / "d", per_class=3)
    victim = root / "B" / "img_001.png"
    data = victim.read_bytes()
    victim.write_bytes(data[:60] + b"\0" * (len(data) - 60))  # header intact, pixels destroyed
    assert cli("index", root).returncode == 0  # headers alone look fine
    proc = cli("index", root, "--verify", check=False)
    assert proc.returncode == 2
    assert "cannot read image" in proc.stderr and "img_001.png" in proc.stderr


def test_train_writes_a_complete_run(run_dir):
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "succeeded" and info["image_size"] == 48
    assert (run_dir / "model.keras").is_file() and (run_dir / "metrics.json").is_file()


def test_evaluate_prints_the_summary_last(run_dir, demo, tmp_path):
    run_dir = copy_run(run_dir, tmp_path).path  # evaluations are written into the run
    proc = cli("evaluate", run_dir)
    summary = json.loads(last_line(proc.stdout))
    assert set(summary) == {"accuracy", "macro_f1", "macro_auc", "n", "ci", "bootstrap"}
    stored = json.loads((run_dir / "metrics.json").read_text())
    assert summary["n"] == stored["n"] and summary["accuracy"] == pytest.approx(stored["accuracy"])
    bounds = summary["ci"]["accuracy"]  # every number comes with its 95% interval
    assert bounds["ci_low"] <= summary["accuracy"] <= bounds["ci_high"]
    assert summary["bootstrap"]["resamples"] == 1000 and summary["bootstrap"]["unit"] == "patient"
    assert f"accuracy {summary['accuracy']:.3f} ({bounds['ci_low']:.3f}-{bounds['ci_high']:.3f})" in proc.stderr
    assert "95% intervals: bootstrap over" in proc.stderr
    assert "calibration: temperature " in proc.stderr and " -> " in proc.stderr
    assert "operating points (thresholds chosen on the validation split, applied unchanged):" in proc.stderr
    assert "unlike the training data: " in proc.stderr
    external = json.loads(last_line(cli("evaluate", run_dir, "--data", demo).stdout))
    assert external["n"] == 60 and external["ci"]["macro_auc"]["ci_low"] is not None
    (saved,) = (run_dir / "external").glob("*-demo-*/metrics.json")
    assert json.loads(saved.read_text())["n"] == 60


def test_predict_prints_one_json_line_per_image(run_dir, demo):
    images = sorted((demo / "COVID").glob("*.png"))[:2]
    lines = cli("predict", run_dir, *images).stdout.strip().splitlines()
    results = [json.loads(line) for line in lines]
    assert [r["image"] for r in results] == [str(p) for p in images]
    for r in results:
        assert set(r["probabilities"]) == {"COVID", "Normal", "Pneumonia"}
        assert sum(r["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
        assert r["label"] == max(r["probabilities"], key=r["probabilities"].get)
        assert r["decision"]["operating_point"] == "sensitivity" and isinstance(r["unlike_training"]["flagged"], bool)


def test_predict_says_when_an_image_is_unlike_the_training_data(run_dir, tmp_path):
    from sklearn.datasets import load_sample_images

    photo = tmp_path / "holiday.png"
    Image.fromarray(load_sample_images().images[1]).save(photo)
    proc = cli("predict", run_dir, photo, "--operating-point", "youden")
    result = json.loads(last_line(proc.stdout))
    assert result["unlike_training"]["flagged"] and result["decision"]["operating_point"] == "youden"
    assert result["decision"]["positive"] is None and "unlike the training data" in result["decision"]["withheld"]
    assert sum(result["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)  # kept, not to be trusted
    assert "UNLIKE THE TRAINING DATA" in proc.stderr and "no decision at Youden's J" in proc.stderr
    assert "positive at" not in proc.stderr


def test_predict_reports_a_bad_image_and_still_predicts_the_rest(run_dir, demo, tmp_path):
    """The file's one run of ``python -m cxrcore`` itself (index, train, evaluate, predict): the model loads
    in a fresh process and the exit status comes through ``sys.exit``."""
    bad = tmp_path / "scan.png"
    bad.write_bytes(b"this is not an image")
    good = next((demo / "Normal").glob("*.png"))
    proc = python_m_cxrcore("predict", run_dir, good, bad, check=False)
    assert proc.returncode == 2
    results = [json.loads(line) for line in proc.stdout.strip().splitlines()]
    assert "probabilities" in results[0]
    assert str(bad) in results[1]["error"]
    assert "Traceback" not in proc.stderr


def test_backbones_lists_the_registry():
    rows = json.loads(cli("backbones", "--json").stdout)
    names = [r["name"] for r in rows]
    assert names == [
        "resnet50",
        "resnet152v2",
        "densenet121",
        "densenet169",
        "vgg16",
        "efficientnetb0",
        "mobilenetv2_0.35",
        "mobilenetv2_0.5",
        "mobilenetv2_1.0",
        "mobilenet_0.25",
        "simple_cnn",
    ]


def _empty_class(tmp: Path) -> Path:
    root = make_class_folders(tmp / "empty_class", per_class=3)
    (root / "C").mkdir()
    return root


def _bad_image(tmp: Path) -> Path:
    root = make_class_folders(tmp / "bad_image", per_class=3)
    (root / "A" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    return root


@pytest.mark.parametrize(
    "make_args, message",
    [
        (lambda t: ["train", "--data", t / "nowhere", "--backbone", "simple_cnn"], "dataset not found: .*nowhere"),
        (
            lambda t: ["train", "--data", t, "--backbone", "simple_cnn", "--weights", "imagenet"],
            "simple_cnn has no ImageNet weights",
        ),
        (
            lambda t: ["train", "--data", _empty_class(t), "--backbone", "simple_cnn", "--weights", "none"],
            "class folder .*C has no images",
        ),
        (
            lambda t: ["train", "--data", _bad_image(t), "--backbone", "simple_cnn", "--weights", "none"],
            "cannot read image .*corrupt.png",
        ),
        (lambda t: ["train", "--data", t, "--backbone", "resnet51"], "unknown backbone 'resnet51'"),
        (lambda t: ["index", t / "nowhere"], "dataset not found"),
        (lambda t: ["evaluate", t / "no_run"], "run directory not found"),
        (lambda t: ["train", "--data", t, "--augment", "flip,twirl=3"], "unknown augmentation 'twirl'"),
    ],
)
def test_bad_input_exits_non_zero_with_one_line(tmp_path, make_args, message):
    proc = cli(*make_args(tmp_path), check=False)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-2000:]
    assert __import__("re").search(message, errors[0]), errors[0]
    assert "Traceback" not in proc.stderr


def test_a_killed_foreground_run_shows_as_interrupted_and_resumes(tmp_path):
    import signal
    import time

    from cxrcore.runs import list_runs

    root = make_class_folders(tmp_path / "d", per_class=16)
    out = tmp_path / "m"
    env = {k: v for k, v in os.environ.items() if k != "CXRCORE_MAX_STEPS"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cxrcore",
            "train",
            "--data",
            str(root),
            "--backbone",
            "simple_cnn",
            "--image-size",
            "32",
            "--epochs",
            "12",
            "--fine-tune-epochs",
            "0",
            "--batch-size",
            "4",
            "--patience",
            "0",
            "--out",
            str(out),
        ],
        cwd=REPO,
        env={**env, "TF_CPP_MIN_LOG_LEVEL": "3"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while time.time() < deadline:
        # history.csv is written before the epoch's resume state, so a kill between the two
        # correctly resumes one epoch earlier: wait for the state the resume will read
        states = list(out.glob("*/state/resume.json"))
        try:
            if states and json.loads(states[0].read_text())["epochs_done"] >= 2:
                break
        except (ValueError, OSError):
            pass  # mid-replace
        time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("the training run never completed two epochs within 120 s")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (run,) = list_runs(out)
    assert run["status"] == "interrupted"
    resumed = cli("train", "--resume", run["path"])
    assert resumed.stdout.strip().splitlines()[-1] == run["path"]
    info = json.loads((Path(run["path"]) / "run.json").read_text())
    assert info["status"] == "succeeded" and info["resumed_from_epoch"] >= 2 and info["epochs_completed"] == 12
    history = pd.read_csv(Path(run["path"]) / "history.csv")
    assert history["epoch"].tolist() == list(range(1, 13))  # none lost or repeated
    again = cli("train", "--resume", run["path"], check=False)
    assert again.returncode == 2 and "already finished" in again.stderr
