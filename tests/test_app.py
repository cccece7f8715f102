"""Every dashboard page through Streamlit's AppTest: empty state, with trained runs, uploads."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

import conftest
from conftest import REPO
from cxrcore.workflows import train

pytestmark = pytest.mark.slow
APP = str(REPO / "app.py")
PAGES = ["pages/data.py", "pages/train.py", "pages/evaluate.py", "pages/predict.py", "pages/compare.py"]


@pytest.fixture
def demo(demo_data):
    """The session's small demo set (conftest)."""
    return demo_data


tiny_config = conftest.demo_config


@pytest.fixture
def models(demo_runs):
    """The session's models folder with two finished tiny runs on the demo set (read-only: a test that
    changes a run works on a copy)."""
    return demo_runs


@pytest.fixture
def app(monkeypatch, demo):
    monkeypatch.setenv("CXRLAB_DEMO_DATA", str(demo))
    monkeypatch.setenv("CXRCORE_SCHEDULER_IDLE_EXIT", "2")

    def open_page(page: str, from_root: bool = False) -> AppTest:
        """A new session on ``page``: opened at its own address (a bookmark to it), or ``from_root`` as a user
        who opens the app (the Data page first) and then goes to it in the same session."""
        at = AppTest.from_file(APP, default_timeout=120)
        if from_root and page != "pages/data.py":
            at.run()
            assert not at.exception, [e.value for e in at.exception]
        at.switch_page(page)
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        return at

    return open_page


def texts(at: AppTest) -> str:
    parts = [m.value for m in at.markdown] + [i.value for i in at.info] + [w.value for w in at.warning]
    parts += [e.value for e in at.error] + [s.value for s in at.success] + [c.value for c in at.caption]
    return "\n".join(str(p) for p in parts)


def png_bytes(seed: int = 0, size: int = 80) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (size, size), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def identified_dicom(path):
    import pydicom

    ds = pydicom.dcmread(path)
    ds.PatientName, ds.PatientID, ds.InstitutionName = "Doe^Jane", "MRN-123456", "General Hospital"
    ds.save_as(path, enforce_file_format=True)
    return path


def test_data_page_shows_the_synthetic_demo_dataset(app):
    at = app("pages/data.py")
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Images"] == "36" and metrics["Classes"] == "3" and metrics["Layout"] == "manifest"
    assert "Synthetic demo data" in texts(at)
    assert "No patient appears in more than one split" in texts(at)
    assert len(at.get("image")) >= 1  # sample grid and augmentation preview
    # the shortcut check: accuracy from image statistics alone, its interval, and chance (12 of 36 per class)
    assert metrics["Chance"] == "0.33"
    accuracy = float(metrics["Accuracy from image statistics alone"])
    assert 0.0 <= accuracy <= 1.0
    frame = float(metrics["Accuracy from outside the lungs alone"])  # the same check without the lungs
    assert 0.0 <= frame <= 1.0
    assert any(c.value.startswith("95% CI ") and "by patient" in c.value for c in at.caption)
    assert "by chance" in texts(at)


def test_data_page_flags_classes_told_apart_by_brightness_alone(app, tmp_path):
    from test_audit import brightness_only, write_set

    at = app("pages/data.py")
    at.text_input(key="data_path").set_value(str(write_set(tmp_path / "bright", brightness_only)))
    at.button(key="data_open").click()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("without looking at the lungs" in e.value for e in at.error)


def test_data_page_reports_a_bad_folder_and_keeps_working(app, tmp_path):
    at = app("pages/data.py")
    at.text_input(key="data_path").set_value(str(tmp_path / "nowhere"))
    at.button(key="data_open").click()
    at.run()
    assert not at.exception
    assert any("dataset not found" in e.value for e in at.error)


@pytest.mark.parametrize(
    "page, expected",
    [
        ("pages/evaluate.py", "No trained model yet"),
        ("pages/predict.py", "No trained model yet"),
        ("pages/compare.py", "No trained model yet"),
        ("pages/train.py", "Nothing running"),
    ],
)
def test_pages_say_what_to_do_when_there_is_nothing_yet(app, page, expected):
    at = app(page)
    assert expected in texts(at)


def test_train_page_queues_a_job_and_rejects_an_empty_selection(app, tmp_path):
    from cxrcore.jobs.queue import cancel
    from cxrcore.jobs.store import JobStore, default_db

    at = app("pages/train.py")
    assert "Training runs on:" in texts(at)
    at.multiselect(key="train_backbones").set_value([])
    at.button(key="train_start").click()
    at.run()
    assert any("pick at least one backbone" in e.value for e in at.error)
    at.multiselect(key="train_backbones").set_value(["simple_cnn", "mobilenet_0.25"])
    at.number_input(key="train_epochs").set_value(1)
    at.number_input(key="train_ft_epochs").set_value(0)
    at.number_input(key="train_crop_border").set_value(0.1)
    at.checkbox(key="train_equalize").check()
    at.checkbox(key="train_lung_crop").check()
    at.number_input(key="train_target_sensitivity").set_value(0.9)
    at.run()
    plan = next(t.value for t in at.dataframe if "pixels" in t.value.columns)
    assert set(plan["pixels"]) == {"10% border cropped, histogram equalised, cropped to the lungs"}
    at.button(key="train_start").click()
    at.run()
    assert any("2 jobs, one per backbone" in s.value for s in at.success)
    at.run()  # a later rerun (a click anywhere) still says what was submitted
    assert any("2 jobs, one per backbone" in s.value for s in at.success)
    store = JobStore(default_db())
    queued = store.list()
    assert sorted(j["config"]["backbone"] for j in queued) == ["mobilenet_0.25", "simple_cnn"]
    pixels = {"crop_border": 0.1, "equalize": True, "lung_crop": True, "lung_mask": False}
    assert all(j["config"]["pixels"] == pixels for j in queued)
    assert all(j["config"]["target_sensitivity"] == 0.9 for j in queued)
    assert len({j["group_id"] for j in queued}) == 1
    for job in queued:  # do not train here
        if job["state"] in ("queued", "running"):
            cancel(job["id"], store=store, force=True)
    at.run()  # the notice stays while its jobs run, and goes once they are done
    assert not any("2 jobs, one per backbone" in s.value for s in at.success)


def test_train_page_weights_follow_a_switch_to_a_pretrained_backbone(app, monkeypatch):
    """A newcomer replaces the default simple_cnn with a pretrained backbone and presses Start:
    the job fine-tunes from ImageNet weights (not simple_cnn's 'none', which trains it from scratch),
    at the backbone's own size and unfreeze depth, and the page said so before the click."""
    from cxrcore.jobs import queue
    from cxrcore.jobs.store import JobStore, default_db
    from cxrcore.training.backbones import REGISTRY

    monkeypatch.setattr(queue, "ensure_scheduler", lambda store: False)  # queue only: nothing trains here
    at = app("pages/train.py")
    at.multiselect(key="train_backbones").set_value(["mobilenetv2_0.35"])
    at.run()
    at.number_input(key="train_epochs").set_value(2)
    at.run()
    at.number_input(key="train_ft_epochs").set_value(1)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    spec = REGISTRY["mobilenetv2_0.35"]
    plan = [d.value for d in at.dataframe if "weights" in d.value.columns]
    assert plan, "no 'what will run' table before Start"
    row = plan[-1].set_index("backbone").loc["mobilenetv2_0.35"]
    assert row["weights"] == "imagenet" and int(row["image size"]) == spec.input_size
    at.button(key="train_start").click()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    queued = JobStore(default_db()).list()
    assert len(queued) == 1
    config = queued[0]["config"]
    assert (config["backbone"], config["weights"]) == ("mobilenetv2_0.35", "imagenet")
    assert (config["image_size"], config["unfreeze"]) == (spec.input_size, spec.unfreeze)
    assert (config["epochs"], config["fine_tune_epochs"]) == (2, 1)


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders_with_finished_runs_present(app, models, monkeypatch, page):
    monkeypatch.setenv("CXRCORE_MODELS", str(models))
    at = app(page, from_root=True)  # the Data page, then this one in the same session; asserts no exception
    assert at.title[0].value == page.split("/")[1].removesuffix(".py").capitalize()
    assert "No trained model yet" not in texts(at)


def test_evaluate_page_with_a_finished_run(app, models, monkeypatch):
    monkeypatch.setenv("CXRCORE_MODELS", str(models))
    at = app("pages/evaluate.py")
    labels = [m.label for m in at.metric]
    assert labels[:4] == ["Accuracy", "Macro F1", "Macro AUC", "Images"]
    assert "Classification report" in texts(at)
    assert len(at.get("plotly_chart")) >= 3


def test_predict_page_upload_png_dicom_and_a_corrupt_file(app, models, monkeypatch, tmp_path):
    from test_io import write_dicom

    monkeypatch.setenv("CXRCORE_MODELS", str(models))
    pixels = np.random.default_rng(1).integers(0, 4000, (48, 48)).astype(np.uint16)
    dicom = identified_dicom(write_dicom(tmp_path / "study", pixels)).read_bytes()
    at = app("pages/predict.py")
    assert "Research software, not a medical device" in texts(at)
    at.file_uploader(key="predict_upload").set_value(
        [
            ("chest.png", png_bytes(), "image/png"),
            ("study.dcm", dicom, "application/dicom"),
            ("broken.png", b"\x89PNG\r\n\x1a\nnot an image", "image/png"),
        ]
    )
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert [s.value for s in at.subheader] == ["chest.png", "study.dcm", "broken.png"]
    assert any("cannot read image broken.png" in e.value for e in at.error)
    assert len(at.get("image")) >= 2  # input and overlay images of the good uploads
    assert "DICOM (non-identifying fields only): Modality CR" in texts(at)
    shown = everything_shown(at)
    assert "what the model sees" in shown and "study.dcm" in shown  # image captions are seen too
    assert not [s for s in ("Doe^Jane", "MRN-123456", "General Hospital") if s in shown]


def everything_shown(at: AppTest) -> str:
    """Every text the page renders: each element's value and label, and its whole message (image
    captions, chart specs, download file names), which ``repr(at._tree)`` leaves out."""
    parts = []
    for node in at._tree:  # the tree and every element below it
        for attr in ("value", "label", "body", "proto"):
            try:
                parts.append(str(getattr(node, attr, "")))
            except Exception:  # a value some element types cannot give
                continue
    return "\n".join(parts)


def test_predict_page_dicom_with_a_corrupt_modality_length_shows_no_identifier(app, models, monkeypatch, tmp_path):
    """The Modality length runs on over InstitutionName, PatientName and PatientID, so its value
    holds them; the page still predicts, and shows none of it."""
    from test_io import SECRETS, swallow, write_dicom

    monkeypatch.setenv("CXRCORE_MODELS", str(models))
    pixels = np.random.default_rng(2).integers(0, 4000, (48, 48)).astype(np.uint16)
    dicom = swallow(identified_dicom(write_dicom(tmp_path / "corrupt", pixels)).read_bytes(), 0x00080060, 0x00100020)
    at = app("pages/predict.py")
    at.file_uploader(key="predict_upload").set_value([("corrupt.dcm", dicom, "application/dicom")])
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert [s.value for s in at.subheader] == ["corrupt.dcm"]
    # random noise is nothing like the demo set: the only error may be that, never a failure to read it
    assert all("unlike anything the model was trained on" in e.value for e in at.error)
    assert "DICOM (non-identifying fields only): PhotometricInterpretation MONOCHROME2" in texts(at)
    shown = everything_shown(at)
    assert "what the model sees" in shown
    assert not [s for s in SECRETS if s in shown]


def test_compare_page_with_two_runs(app, models, monkeypatch):
    monkeypatch.setenv("CXRCORE_MODELS", str(models))
    at = app("pages/compare.py")
    assert len(at.dataframe) == 1
    assert len(at.get("plotly_chart")) >= 3  # ROC overlay and two confusion matrices
    at.file_uploader(key="compare_upload").set_value(("one.png", png_bytes(3), "image/png"))
    at.run()
    assert not at.exception
    assert len(at.get("image")) == 2  # one overlay per run


def test_evaluate_page_external_validation_is_saved_and_shown_apart(app, models, demo, monkeypatch, tmp_path):
    monkeypatch.setenv("CXRCORE_MODELS", str(conftest.copy_models(models, tmp_path / "models")))  # it writes
    at = app("pages/evaluate.py")
    assert at.button(key="evaluate_external_go").disabled  # nothing typed yet
    at.text_input(key="evaluate_external_path").set_value(str(demo))
    at.run()
    at.button(key="evaluate_external_go").click()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("Evaluated 36 images" in s.value for s in at.success)
    assert "-demo-" in at.selectbox(key="evaluate_external_pick").value  # one folder per dataset
    assert any(f"`{demo}` against the run's own test split" in m.value for m in at.markdown)


def test_data_page_opens_a_folder_and_remembers_it(app, tmp_path):
    from conftest import make_class_folders

    folder = make_class_folders(tmp_path / "hospital_a", per_class=5)
    at = app("pages/data.py")
    at.text_input(key="data_path").set_value(str(folder))
    at.button(key="data_open").click()
    at.run()
    assert not at.exception
    assert at.subheader[0].value == str(folder)
    assert {m.label: m.value for m in at.metric}["Images"] == "10"
    again = app("pages/data.py")  # a new session
    assert str(folder) in again.selectbox(key="data_recent").options


def test_an_interrupted_run_reads_the_same_on_evaluate_and_train_and_resumes_from_either(
    app, demo, tmp_path, monkeypatch
):
    """One owner: a run whose process died reads `interrupted` on the Evaluate page and on the Train
    page's job list, and the Evaluate page's Resume queues it through the same path as `jobs resume`."""
    import socket

    from cxrcore import runs
    from cxrcore.jobs import queue
    from cxrcore.jobs.store import JobStore, default_db

    models = tmp_path / "models"
    monkeypatch.setenv("CXRCORE_MODELS", str(models))
    monkeypatch.setattr(queue, "ensure_scheduler", lambda store: False)  # queue only: nothing trains here
    calls = []
    run = train(
        tiny_config(demo, epochs=3, fine_tune_epochs=0),
        out_dir=models,
        should_stop=lambda: calls.append(1) or len(calls) > 4,
    )  # stops in epoch 2
    run.update_info(status="running", pid=2**22 + 3, host=socket.gethostname(), pid_started=None)
    assert run.status() == "interrupted" and run.epochs_completed() == 1

    at = app("pages/evaluate.py")
    assert "status interrupted" in texts(at) and "1 epoch completed" in texts(at)
    assert any("did not finish" in w.value for w in at.warning)
    at.button(key="evaluate_resume").click()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    (job,) = JobStore(default_db()).list()
    assert (job["state"], job["resume"], job["run_dir"]) == ("queued", 1, str(run.path))
    assert any(f"Job `{job['id']}` queued" in s.value for s in at.success)

    train_page = app("pages/train.py")
    table = [d.value for d in train_page.dataframe if "status" in d.value.columns][-1]
    assert table.set_index("id").loc[job["id"], "status"] == "queued"
    queue.cancel(job["id"], store=JobStore(default_db()))
    assert queue.get(job["id"])["status"] == "interrupted"  # the run's word once the queue lets go
    assert runs.RunDir(run.path).status() == "interrupted"


def test_the_dashboard_listens_on_this_machine_only_by_default():
    """Failure 12: the dashboard listened on every network interface (anyone on the network could
    browse local folders, upload and queue training). The browser test starts the server from this
    config and reaches it on 127.0.0.1."""
    import tomllib

    config = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text())
    assert config["server"]["address"] in ("localhost", "127.0.0.1")


# Confidence intervals: "a metric shown without its interval is a bug".
def with_intervals(metrics: dict) -> dict:
    """``metrics`` as an evaluation with bootstrap intervals writes it, with known numbers."""
    metrics = {**metrics, "accuracy": 0.857, "macro_f1": 0.856, "macro_auc": 0.963}
    metrics["ci"] = {
        "accuracy": {"ci_low": 0.71, "ci_high": 0.95},
        "macro_f1": {"ci_low": 0.69, "ci_high": 0.94},
        "macro_auc": {"ci_low": 0.88, "ci_high": 0.99},
    }
    metrics["bootstrap"] = {
        "resamples": 1000,
        "level": 0.95,
        "seed": 0,
        "unit": "patient",
        "patients": 18,
        "images_without_patient_id": 3,
    }
    per_class = {}
    for i, (name, values) in enumerate(metrics["per_class"].items()):
        values = {**values, "sensitivity": 0.8, "ppv": 0.75, "npv": 0.9, "auc": 0.9 + i / 100}
        ci = {k: {"ci_low": 0.5, "ci_high": 0.97} for k in ("sensitivity", "specificity", "ppv", "npv", "ap")}
        ci["auc"] = {"ci_low": 0.61 + i / 100, "ci_high": 0.99}
        if i == 0:
            ci["npv"] = {"ci_low": None, "ci_high": None}  # undefined for this resample set
        per_class[name] = {**values, "ci": ci}
    metrics["per_class"] = per_class
    return metrics


def without_intervals(metrics: dict) -> dict:
    """``metrics`` as an evaluation made before intervals existed wrote it."""
    metrics = {k: v for k, v in metrics.items() if k not in ("ci", "bootstrap")}
    drop = ("ci", "ppv", "npv")
    metrics["per_class"] = {c: {k: v for k, v in m.items() if k not in drop} for c, m in metrics["per_class"].items()}
    return metrics


def rewrite_metrics(models, change) -> None:
    """Apply ``change(i, metrics)`` to every evaluation (test split and external) of the ``i``-th
    run under ``models``, newest first."""
    import json

    from cxrcore import runs

    for i, row in enumerate(runs.list_runs(models)):
        for path in runs.RunDir(row["path"]).path.rglob(runs.METRICS):
            path.write_text(json.dumps(change(i, json.loads(path.read_text()))))


@pytest.fixture
def models_with_intervals(models, tmp_path):
    """A copy of ``models`` whose newer run's test metrics carry known intervals; the older run's
    were made before intervals existed."""
    import shutil

    out = tmp_path / "models"
    shutil.copytree(models, out)
    rewrite_metrics(out, lambda i, m: with_intervals(m) if i == 0 else without_intervals(m))
    return out


@pytest.fixture
def models_without_intervals(models, tmp_path):
    """A copy of ``models`` evaluated before intervals existed."""
    import shutil

    out = tmp_path / "models"
    shutil.copytree(models, out)
    rewrite_metrics(out, lambda i, m: without_intervals(m))
    return out


def record_downloads(monkeypatch) -> dict[str, bytes]:
    """File name -> bytes of every file the app hands to Streamlit's media storage (downloads)."""
    from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage

    files, original = {}, MemoryMediaFileStorage.load_and_get_id

    def load_and_get_id(self, path_or_data, mimetype, kind, filename=None):
        if filename and isinstance(path_or_data, bytes):
            files[filename] = path_or_data
        return original(self, path_or_data, mimetype, kind, filename)

    monkeypatch.setattr(MemoryMediaFileStorage, "load_and_get_id", load_and_get_id)
    return files


def test_evaluate_page_shows_every_headline_metric_with_its_interval(app, models_with_intervals, monkeypatch):
    import pandas as pd

    monkeypatch.setenv("CXRCORE_MODELS", str(models_with_intervals))
    downloads = record_downloads(monkeypatch)
    at = app("pages/evaluate.py")  # the newest run, the one with intervals
    assert [m.value for m in at.metric[:3]] == ["0.857", "0.856", "0.963"]
    captions = [c.value for c in at.caption]
    for interval in ("95% CI 0.71–0.95", "95% CI 0.69–0.94", "95% CI 0.88–0.99"):
        assert interval in captions
    assert "18 patients" in captions
    assert any(
        "bootstrap over 18 patients, 1,000 resamples; 3 images without a patient id counted as their own patient" in c
        for c in captions
    )
    assert "no confidence intervals" not in texts(at).lower()
    report = at.dataframe[0].value
    first = report.index[0]
    assert report.loc[first, "AUC"] == "0.900 (0.61–0.99)"
    assert report.loc[first, "NPV"] == "0.900 (CI undefined)"
    assert report.loc[first, "Sensitivity"] == "0.800 (0.50–0.97)"
    assert report.loc["macro avg", "F1"] == "0.856 (0.69–0.94)"
    assert report.loc["macro avg", "AUC"] == "0.963 (0.88–0.99)"
    assert "Precision" not in report.columns  # it is PPV, shown with its interval
    csv = pd.read_csv(io.BytesIO(downloads["evaluate_test_metrics.csv"]), index_col=0)
    for name in ("sensitivity", "specificity", "ppv", "npv", "auc", "ap"):
        assert {f"{name}_ci_low", f"{name}_ci_high"} <= set(csv.columns)
    assert csv.loc[first, "auc"] == pytest.approx(0.9) and csv.loc[first, "auc_ci_low"] == pytest.approx(0.61)
    assert csv.loc[first, "npv_ci_low"] != csv.loc[first, "npv_ci_low"]  # undefined: an empty cell, not a number
    assert csv.loc["macro avg", "f1_ci_high"] == pytest.approx(0.94)


def test_evaluate_page_without_intervals_says_so(app, models_without_intervals, monkeypatch):
    monkeypatch.setenv("CXRCORE_MODELS", str(models_without_intervals))
    at = app("pages/evaluate.py")
    assert "no confidence intervals" in texts(at).lower()
    assert "evaluated before intervals existed" in texts(at)
    assert "python -m cxrcore evaluate" in texts(at)
    captions = [c.value for c in at.caption]
    headline = ("Accuracy", "Macro F1", "Macro AUC")
    shown = [m for m in at.metric if m.label in headline and m.value != "n/a"]  # an undefined AUC: nothing to qualify
    assert shown and captions.count("no interval (evaluated before intervals existed)") == len(shown)
    assert not any("95% CI" in c for c in captions)


def test_compare_page_shows_intervals_and_marks_runs_without_them(app, models_with_intervals, monkeypatch):
    monkeypatch.setenv("CXRCORE_MODELS", str(models_with_intervals))
    at = app("pages/compare.py")
    table = at.dataframe[0].value
    new, old = table.columns[:2]  # newest first: the run with intervals, then the one without
    assert table.loc["accuracy", new] == "0.857 (0.71–0.95)"
    assert table.loc["macro F1", new] == "0.856 (0.69–0.94)"
    assert table.loc["macro AUC", new] == "0.963 (0.88–0.99)"
    aucs = [row for row in table.index if row.startswith("AUC ")]
    assert aucs and all("(0.6" in table.loc[row, new] for row in aucs)
    assert [table.loc[row, old][-7:] for row in ("accuracy", "macro F1")] == ["(no CI)", "(no CI)"]
    assert all(table.loc[row, old] == "n/a" or table.loc[row, old].endswith("(no CI)") for row in aucs)
    assert table.loc["backbone", new] == "simple_cnn"
    assert any("bootstrap over 18 patients" in c.value for c in at.caption)
    assert any(f"No confidence intervals for `{old}`" in w.value for w in at.warning)


def test_evaluate_page_says_plainly_when_a_run_learned_nothing(app, models, tmp_path, monkeypatch):
    import json
    import shutil

    source = sorted(p for p in models.iterdir() if (p / "metrics.json").exists())[0]
    run = shutil.copytree(source, tmp_path / "models" / source.name)
    metrics = json.loads((run / "metrics.json").read_text())
    k = len(metrics["classes"])
    metrics["confusion_matrix"] = [[6 if j == 0 else 0 for j in range(k)] for _ in range(k)]  # all called class 0
    (run / "metrics.json").write_text(json.dumps(metrics))
    monkeypatch.setenv("CXRCORE_MODELS", str(tmp_path / "models"))
    at = app("pages/evaluate.py")
    verdicts = [e.value for e in at.error if "This run learned nothing" in e.value]
    assert verdicts and f"calls 100% of the test images {metrics['classes'][0]}" in verdicts[0]
    assert "Likely causes" in verdicts[0]


def test_evaluate_page_shows_calibration_and_says_when_a_run_has_none(app, models, tmp_path, monkeypatch):
    import json
    import shutil

    monkeypatch.setenv("CXRCORE_MODELS", str(models))
    at = app("pages/evaluate.py")
    assert "**Calibration**" in [m.value for m in at.markdown]
    assert any("Temperature **" in m.value and "fitted on the `val` split" in m.value for m in at.markdown)
    table = next(t.value for t in at.dataframe if "ECE before" in t.value.columns)
    assert list(table.columns) == ["ECE before", "ECE after", "Brier before", "Brier after"]
    assert "mean" in table.index
    titles = [json.loads(c.proto.spec)["layout"]["title"]["text"] for c in at.get("plotly_chart")]
    assert any(t.startswith("Reliability") for t in titles)

    source = sorted(p for p in models.iterdir() if (p / "metrics.json").exists())[0]
    run = shutil.copytree(source, tmp_path / "models" / source.name)
    metrics = json.loads((run / "metrics.json").read_text())
    metrics.pop("calibration")  # as evaluated before calibration existed
    (run / "metrics.json").write_text(json.dumps(metrics))
    (run / "calibration.json").unlink()
    monkeypatch.setenv("CXRCORE_MODELS", str(tmp_path / "models"))
    at = app("pages/evaluate.py")
    assert "not calibrated (trained before calibration existed)" in texts(at)


@pytest.fixture
def separable_run(separable_run):
    """The session's run on two classes told apart by brightness, 18 validation and 18 test images:
    its models folder."""
    return separable_run.models


def test_evaluate_page_shows_operating_points_on_the_roc_and_the_model_card(app, separable_run, monkeypatch):
    import json

    monkeypatch.setenv("CXRCORE_MODELS", str(separable_run))
    downloads = record_downloads(monkeypatch)
    at = app("pages/evaluate.py")
    table = next(t.value for t in at.dataframe if "operating point" in t.value.columns)
    assert set(table["operating point"]) == {"target sensitivity", "Youden's J"}
    assert list(table.columns) == ["class", "operating point", "threshold", "sensitivity", "specificity", "PPV", "NPV"]
    assert table["sensitivity"].str.contains(r"\(\d\.\d\d–\d\.\d\d\)|CI undefined").all()  # each with its interval
    roc = next(json.loads(c.proto.spec) for c in at.get("plotly_chart") if "ROC" in c.proto.spec)
    marked = [t["name"] for t in roc["data"] if t.get("mode") == "markers"]
    assert marked and all(" at " in name and "threshold" in name for name in marked)
    card = [m.value for m in at.markdown if m.value.startswith("### Model card:")]
    assert card and "#### Operating points" in card[0] and "#### Limitations" in card[0]
    name = next(n for n in downloads if n.endswith("MODEL_CARD.md"))
    downloaded = downloads[name].decode()
    assert downloaded.startswith("# Model card:") and "\n## Limitations\n" in downloaded
    assert downloaded.split("## Limitations")[1].strip() == card[0].split("#### Limitations")[1].strip()


def test_predict_page_shows_the_decision_at_the_chosen_operating_point(app, models, monkeypatch, demo):
    monkeypatch.setenv("CXRCORE_MODELS", str(models))
    at = app("pages/predict.py")
    image = next(demo.rglob("*.png"))
    at.file_uploader(key="predict_upload").set_value([("demo.png", image.read_bytes(), "image/png")])
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    decisions = [m.value for m in at.markdown if m.value.startswith("**Decision at")]
    assert decisions and decisions[0].startswith("**Decision at target sensitivity 0.95:**")
    assert not [e.value for e in at.error]  # an image of the training data is not flagged
    at.radio(key="predict_operating_point").set_value("youden")
    at.run()
    assert [m.value for m in at.markdown if m.value.startswith("**Decision at")][0].startswith(
        "**Decision at Youden's J:**"
    )


def test_predict_page_says_a_photo_is_unlike_the_training_data(app, models, monkeypatch):
    from sklearn.datasets import load_sample_images

    monkeypatch.setenv("CXRCORE_MODELS", str(models))
    buf = io.BytesIO()
    Image.fromarray(load_sample_images().images[0]).save(buf, format="PNG")
    at = app("pages/predict.py")
    at.file_uploader(key="predict_upload").set_value([("holiday.png", buf.getvalue(), "image/png")])
    at.run()
    assert any("unlike anything the model was trained on" in e.value for e in at.error)
    # no decision for it; its probabilities are kept, marked as not to be trusted
    shown = everything_shown(at)
    assert any(m.value.startswith("**No decision at target sensitivity") for m in at.markdown)
    assert "**Decision at" not in shown
    (said,) = [m.value for m in at.markdown if m.value.startswith("**No decision at")]
    assert said.endswith("the image is unlike the training data: its probabilities are not to be trusted.")


def flat_png(level: int) -> bytes:
    """An 80 px PNG of one grey level."""
    buf = io.BytesIO()
    Image.fromarray(np.full((80, 80), level, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_predict_page_outlines_only_lungs_the_lung_model_found_plausible(app, models, monkeypatch):
    """Hand-made lungs: two plausible ones in a mid-grey image (outlined), one lung in a bright one (no
    outline, and the page says what was found)."""
    import streamlit as st

    from cxrcore.explain.cam import Explainer
    from cxrcore.lungs import geometry, segment

    monkeypatch.setenv("CXRCORE_MODELS", str(models))
    st.cache_resource.clear()  # a fresh Predictor: nothing remembered from other tests

    def middle(self, image, class_index=None, method="gradcam"):
        heat = np.zeros(image.shape[:2], np.float32)
        h, w = image.shape[:2]
        heat[h // 8 : 7 * h // 8, w // 8 : 7 * w // 8] = 1.0
        return heat

    class HandSegmenter:
        def lungs(self, rgb):
            h, w = rgb.shape[:2]
            mask = np.zeros((h, w), bool)
            mask[h // 8 : 7 * h // 8, 5 * w // 8 : 7 * w // 8] = True  # the image's right lung
            if rgb.mean() < 200:
                mask[h // 8 : 7 * h // 8, w // 8 : 3 * w // 8] = True  # and its left one: 37.5% of the image
            return geometry.lungs_from_mask(mask)

    outlined = []
    draw = geometry.draw_outline
    monkeypatch.setattr(Explainer, "heatmap", middle)
    monkeypatch.setattr(segment, "get_segmenter", lambda path=None: HandSegmenter())
    monkeypatch.setattr(geometry, "draw_outline", lambda image, mask: outlined.append(mask.mean()) or draw(image, mask))

    at = app("pages/predict.py")
    at.file_uploader(key="predict_upload").set_value(
        [("two.png", flat_png(150), "image/png"), ("one.png", flat_png(220), "image/png")]
    )
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert outlined == [pytest.approx(0.375)]  # the two-lung image alone
    notes = [c.value for c in at.caption if c.value.startswith("No lung outline drawn")]
    assert len(notes) == 1 and "(only one lung found)" in notes[0]


def test_compare_page_has_a_row_per_external_dataset(app, models, demo, monkeypatch, tmp_path):
    import shutil

    from cxrcore.evaluation.evaluate import evaluate_run

    copy = shutil.copytree(models, tmp_path / "models")
    newest = sorted(p for p in copy.iterdir() if (p / "metrics.json").exists())[-1]
    evaluate_run(newest, demo)
    monkeypatch.setenv("CXRCORE_MODELS", str(copy))
    at = app("pages/compare.py")
    table = at.dataframe[0].value
    rows = [r for r in table.index if r.startswith(f"{demo.name}: ")]
    assert rows == [f"{demo.name}: accuracy", f"{demo.name}: macro AUC"]
    assert table.at[rows[1], newest.name].count("(") == 1  # a value with its interval
    other = next(c for c in table.columns if c != newest.name)
    assert table.at[rows[1], other] == "not evaluated"


def test_data_page_previews_the_pixel_rules(app):
    at = app("pages/data.py")
    at.slider(key="data_pix_crop").set_value(0.1)
    at.checkbox(key="data_pix_equalize").check()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert "with pixel rules (10% border cropped, histogram equalised)" in everything_shown(at)


def test_train_page_shows_the_activation_cache_and_clears_it(app, monkeypatch, tmp_path):
    from cxrcore.training import activation_store

    entry = activation_store.Entry(activation_store.cache_root() / "abc123")
    entry.save(np.zeros((10, 256), dtype=np.float32), {"cut": "head_pool", "images": 10, "created": "now"})
    at = app("pages/train.py")
    table = next(t.value for t in at.dataframe if "cut" in t.value.columns)
    assert table["cut"].tolist() == ["head_pool"] and table["images"].tolist() == [10]
    assert any("1 entry" in c.value for c in at.caption)
    at.button(key="train_clear_activations").click()
    at.run()
    assert any("Cleared:" in s.value for s in at.success)
    assert activation_store.usage()["entries"] == 0


def test_train_page_fills_the_form_from_a_recipe_in_one_click_and_the_run_records_it(app, monkeypatch):
    from cxrcore.jobs import queue
    from cxrcore.jobs.store import JobStore, default_db

    monkeypatch.setattr(queue, "ensure_scheduler", lambda store: False)  # queue only: nothing trains here
    at = app("pages/train.py")
    at.selectbox(key="train_recipe").set_value("densenet169-adamax")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.multiselect(key="train_backbones").value == ["densenet169"]
    assert at.selectbox(key="train_optimizer").value == "adamax"
    assert (at.number_input(key="train_batch").value, at.number_input(key="train_ft_epochs").value) == (16, 100)
    assert at.checkbox(key="train_flip").value is True
    assert any("80% training, 10% validation, 10% test" in m.value for m in at.markdown)  # what it states
    at.number_input(key="train_ft_epochs").set_value(2)  # the user changes one setting before starting
    at.run()
    at.button(key="train_start").click()
    at.run()
    (job,) = JobStore(default_db()).list()
    config = job["config"]
    assert (config["recipe"], config["backbone"], config["optimizer"]) == (
        "densenet169-adamax",
        "densenet169",
        "adamax",
    )
    assert (config["batch_size"], config["fine_tune_epochs"], config["augment"]["flip"]) == (16, 2, True)


def test_train_page_queues_several_recipes_as_one_comparison(app, monkeypatch):
    from cxrcore.jobs import queue
    from cxrcore.jobs.store import JobStore, default_db

    monkeypatch.setattr(queue, "ensure_scheduler", lambda store: False)
    at = app("pages/train.py")
    at.multiselect(key="train_recipes_many").set_value(["vgg16-binary", "pneumonet-cnn"])
    at.run()
    at.button(key="train_recipes_start").click()
    at.run()
    assert any("2 recipes, one job each" in s.value for s in at.success)
    queued = JobStore(default_db()).list()
    assert sorted(j["config"]["recipe"] for j in queued) == ["pneumonet-cnn", "vgg16-binary"]
    assert len({j["group_id"] for j in queued}) == 1


def test_compare_page_says_runs_on_different_splits_are_not_comparable(app, models, monkeypatch):
    monkeypatch.setenv("CXRCORE_MODELS", str(models))  # seeds 1 and 2: two different test splits
    at = app("pages/compare.py")
    warning = next(w.value for w in at.warning if "Not comparable as they stand" in w.value)
    assert "different test splits of the same data" in warning
    assert any("Evaluate every run on it" == b.label for b in at.button)  # the offer of a common external set


def test_compare_page_makes_an_ensemble_and_says_whether_it_beats_its_best_member(
    app, same_split_runs, monkeypatch, tmp_path
):
    models = conftest.copy_models(same_split_runs, tmp_path / "models")  # the ensemble is written beside them
    monkeypatch.setenv("CXRCORE_MODELS", str(models))
    at = app("pages/compare.py")
    assert not any("Not comparable" in w.value for w in at.warning)
    at.button(key="compare_make_ensemble").click()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("Ensemble `" in s.value and "written" in s.value for s in at.success)
    verdict = everything_shown(at)
    assert "Ensemble minus its best member" in verdict and "paired bootstrap over patients" in verdict
    table = next(d.value for d in at.dataframe if "role" in d.value.columns)
    assert table["role"].tolist() == ["ensemble", "member", "member"]
    made = [p for p in models.iterdir() if p.name.endswith("-ensemble")]
    assert len(made) == 1 and (made[0] / "ensemble.json").is_file()


def test_evaluate_page_names_a_run_and_shows_its_write_up_figure(app, same_split_runs, monkeypatch, tmp_path):
    from cxrcore.runs import RunDir, list_runs

    models = conftest.copy_models(same_split_runs, tmp_path / "models")  # the page writes the run's name
    monkeypatch.setenv("CXRCORE_MODELS", str(models))
    recipe_run = next(r for r in list_runs(models) if RunDir(r["path"]).config().recipe == "vgg16-binary")
    at = app("pages/evaluate.py")
    options = at.selectbox(key="evaluate_run").options
    at.selectbox(key="evaluate_run").select_index(next(i for i, o in enumerate(options) if recipe_run["run_id"] in o))
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    shown = everything_shown(at)
    assert "Recipe `vgg16-binary`" in shown
    assert "Not comparable as it stands: different data" in shown
    table = next(d.value for d in at.dataframe if "write-up published" in d.value.columns)
    assert table["write-up published"].tolist() == ["0.870 (test set)"]
    before = RunDir(recipe_run["path"]).file("run.json").read_bytes()
    at.text_input(key=f"evaluate_name_{recipe_run['run_id']}").set_value("binary baseline")
    at.text_area(key=f"evaluate_note_{recipe_run['run_id']}").set_value("first try on the demo set")
    next(b for b in at.button if b.label == "Save").click()
    at.run()
    assert RunDir(recipe_run["path"]).annotation() == {"name": "binary baseline", "note": "first try on the demo set"}
    assert RunDir(recipe_run["path"]).file("run.json").read_bytes() == before  # the run's record is untouched
    assert any("binary baseline" in o for o in at.selectbox(key="evaluate_run").options)


def test_predict_page_explains_an_ensemble_with_its_members_mean_map(app, same_split_runs, monkeypatch, tmp_path):
    from cxrcore.ensemble import create
    from cxrcore.runs import list_runs

    models = conftest.copy_models(same_split_runs, tmp_path / "models")
    monkeypatch.setenv("CXRCORE_MODELS", str(models))
    made = create([r["path"] for r in list_runs(models)])
    at = app("pages/predict.py")
    options = at.selectbox(key="predict_run").options
    at.selectbox(key="predict_run").select_index(next(i for i, o in enumerate(options) if made.run_id in o))
    at.run()
    at.file_uploader(key="predict_upload").set_value([("one.png", png_bytes(4), "image/png")])
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    assert len(at.get("image")) >= 1  # the overlay of the members' mean map


def test_predict_page_scores_the_map_and_moving_the_opacity_recomputes_nothing(app, models, monkeypatch, demo):
    import streamlit as st

    from cxrcore.explain.cam import Explainer

    monkeypatch.setenv("CXRCORE_MODELS", str(models))
    st.cache_resource.clear()  # a fresh Predictor: nothing remembered from other tests
    calls = []
    original = Explainer.heatmap

    def counting(self, *args, **kwargs):
        calls.append(kwargs.get("method"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Explainer, "heatmap", counting)
    at = app("pages/predict.py")
    image = sorted(demo.rglob("*.png"))[-1]
    at.file_uploader(key="predict_upload").set_value([("demo.png", image.read_bytes(), "image/png")])
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    shown = {m.label: m.value for m in at.metric}
    assert 0 <= float(shown["Deletion"]) <= 1 and 0 <= float(shown["Insertion"]) <= 1
    assert shown["Border share"].endswith("%") or shown["Border share"] == "n/a"
    lung = shown["Lung share"]  # the shipped lung model's (a placeholder): a share, or none found
    assert (lung.endswith("%") and 0 <= int(lung[:-1]) <= 100) or lung == "n/a"
    assert any("20 steps; removed pixels replaced by a blurred copy of the image" in c.value for c in at.caption)
    assert calls == ["gradcam"]
    at.slider(key="predict_alpha").set_value(0.8)
    at.run()
    at.selectbox(key="predict_colormap").set_value("viridis")
    at.run()
    assert at.checkbox(key="predict_lung_outline").value is True  # on by default
    at.checkbox(key="predict_lung_outline").uncheck()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert calls == ["gradcam"]  # a new look, the same map
    assert {m.label: m.value for m in at.metric}["Lung share"] == lung
    at.selectbox(key="predict_explain_class").set_value(1)
    at.run()
    assert calls == ["gradcam", "gradcam"]  # another class: a new map


def test_predict_page_shows_the_maps_lung_share_and_warns_when_it_lies_outside_the_lungs(app, models, monkeypatch):
    """A hand-made map on the image's left quarter; hand-made lungs on its right half for a bright image (0% of
    the map inside them: flagged), none for a dark one (no share)."""
    import streamlit as st

    from cxrcore.explain.cam import Explainer
    from cxrcore.lungs import geometry, segment

    monkeypatch.setenv("CXRCORE_MODELS", str(models))
    st.cache_resource.clear()  # a fresh Predictor: nothing remembered from other tests

    def left_quarter(self, image, class_index=None, method="gradcam"):
        heat = np.zeros(image.shape[:2], np.float32)
        heat[:, : image.shape[1] // 4] = 1.0
        return heat

    class HandSegmenter:
        calls = 0

        def lungs(self, rgb):
            HandSegmenter.calls += 1
            height, width = rgb.shape[:2]
            mask = np.zeros((height, width), bool)
            if rgb.mean() > 128:
                mask[height // 8 : 7 * height // 8, width // 2 + 2 : width - 2] = True
            return geometry.lungs_from_mask(mask)

    monkeypatch.setattr(Explainer, "heatmap", left_quarter)
    monkeypatch.setattr(segment, "get_segmenter", lambda path=None: HandSegmenter())

    at = app("pages/predict.py")
    at.file_uploader(key="predict_upload").set_value(
        [("bright.png", flat_png(220), "image/png"), ("dark.png", flat_png(30), "image/png")]
    )
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert [m.value for m in at.metric if m.label == "Lung share"] == ["0%", "n/a"]
    outside = [w.value for w in at.warning if "outside the lung fields" in w.value]
    assert len(outside) == 1 and outside[0].startswith("Most of this map's evidence is outside the lung fields")
    assert sum("found no lung fields" in c.value for c in at.caption) == 1
    assert HandSegmenter.calls == 2
    at.checkbox(key="predict_lung_outline").uncheck()
    at.run()
    at.slider(key="predict_alpha").set_value(0.7)
    at.run()
    assert HandSegmenter.calls == 2  # the lungs are remembered with the map


def test_evaluate_page_scores_explanations_on_a_test_sample_and_keeps_them(app, models, monkeypatch, tmp_path):
    import shutil

    import pandas as pd

    from cxrcore import runs

    copy = shutil.copytree(models, tmp_path / "models")
    monkeypatch.setenv("CXRCORE_MODELS", str(copy))
    at = app("pages/evaluate.py")
    assert any("Not scored yet" in i.value for i in at.info)
    at.number_input(key="evaluate_faith_sample").set_value(3)
    at.multiselect(key="evaluate_faith_methods").set_value(["gradcam"])
    at.button(key="evaluate_faith_go").click()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    tables = [d.value for d in at.dataframe if "deletion ↓" in getattr(d.value, "columns", [])]
    assert tables and list(tables[0]["method"]) == ["Grad-CAM", "random map (reference)"]
    run_id = at.selectbox(key="evaluate_run").value["run_id"]
    kept = runs.RunDir(copy / run_id).faithfulness()
    assert kept["settings"]["sample_size"] == 3 and kept["settings"]["methods"] == ["gradcam"]
    assert tables[0]["deletion ↓"][0] == pytest.approx(kept["methods"]["gradcam"]["deletion"]["mean"])
    assert "lung share" in tables[0].columns
    inside, shown = kept["methods"]["gradcam"]["lung_share"]["mean"], tables[0]["lung share"][0]
    assert pd.isna(shown) if inside is None else shown == pytest.approx(inside)
    if inside is not None and inside < 0.5:  # the verdict's sentence, as a warning
        assert any("only" in w.value and "inside the lung fields" in w.value for w in at.warning)
    assert any(m.value.startswith(f"**{len(kept['images'])} test image(s)**") for m in at.markdown)
    at2 = app("pages/evaluate.py")  # a new session reads them from the run
    assert not any("Not scored yet" in i.value for i in at2.info)
