"""Findings runs on the dashboard: the per-finding figures (plots), the Evaluate page on a findings run (its test
split and an external set that lacks a finding) and the Train page on a findings dataset (AppTest)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from conftest import REPO, copy_run
from cxrcore.evaluation import multilabel, plots

APP = str(REPO / "app.py")
FINDINGS = ["Atelectasis", "Effusion", "Mass", "Hernia"]  # Hernia: 2 positives, fewer than MIN_POSITIVES


# -- plots on a metrics dict made here --------------------------------------------------------------------------


def made_metrics() -> dict:
    """A findings evaluation of 120 images over four findings, Hernia too rare to evaluate, with operating points,
    intervals and calibration (as a run's metrics.json holds them)."""
    rng = np.random.default_rng(0)
    n = 120
    y = (rng.random((n, len(FINDINGS))) < [0.3, 0.4, 0.25, 0.0]).astype(float)
    y[:2, 3] = 1.0
    y[5:15, 0] = np.nan  # Atelectasis left out of ten images (uncertain under "ignore")
    probs = np.clip(0.5 * np.nan_to_num(y) + 0.5 * rng.random(y.shape), 0.01, 0.99)
    points = multilabel.choose_points(probs, y, FINDINGS)
    metrics = multilabel.findings_metrics(
        y, probs, FINDINGS, patient_ids=[f"p{i // 2}" for i in range(n)], points=points, resamples=50
    )
    metrics["calibration"] = multilabel.calibration_report(probs, y, FINDINGS, [1.0] * len(FINDINGS))
    return json.loads(json.dumps(metrics))  # as read back from metrics.json


def test_findings_plots_draw_one_trace_per_evaluated_finding():
    metrics = made_metrics()
    evaluated = metrics["evaluated"]
    assert evaluated == ["Atelectasis", "Effusion", "Mass"] and "Hernia" in metrics["not_evaluated"]

    roc = plots.findings_roc(metrics)
    curves = [t for t in roc.data if t.mode == "lines" and t.name != "chance"]
    assert [t.name.split(" (AUC ")[0] for t in curves] == evaluated
    assert all(f"(AUC {metrics['findings'][f]['auc']:.3f})" in t.name for f, t in zip(evaluated, curves))
    markers = [t for t in roc.data if t.mode == "markers"]
    assert len(markers) == 1 and len(markers[0].x) == len(evaluated)  # one operating point per finding
    assert [t.name for t in plots.findings_roc(metrics, kind=None).data][-1] == "chance"

    pr = plots.findings_pr(metrics)
    assert [t.name.split(" (AP ")[0] for t in pr.data] == evaluated
    assert f"AP {metrics['findings']['Mass']['ap']:.3f}" in pr.data[2].name

    auc = plots.findings_auc(metrics)
    (bars,) = auc.data
    by_auc = sorted(evaluated, key=lambda f: metrics["findings"][f]["auc"])
    assert list(bars.y) == by_auc and list(bars.x) == [metrics["findings"][f]["auc"] for f in by_auc]
    high = metrics["findings"][by_auc[0]]["ci"]["auc"]["ci_high"]
    assert bars.error_x.array[0] == pytest.approx(high - bars.x[0])

    reliability = plots.findings_reliability(metrics)
    assert [t.name for t in reliability.data] == [*evaluated, "Hernia", "perfect"]  # every finding with images

    counts = plots.findings_counts(metrics, "youden")
    assert [t.name for t in counts.data] == evaluated and all(t.type == "heatmap" for t in counts.data)
    point = metrics["findings"]["Effusion"]["operating_points"]["youden"]
    assert counts.data[1].text[0][0] == f"TP {point['tp']}" and counts.data[1].text[1][1] == f"TN {point['tn']}"
    assert "no finding has a threshold" in plots.findings_counts({"evaluated": []}).layout.title.text


def test_training_curves_of_a_findings_history_show_the_mean_auc():
    history = pd.DataFrame(
        {"epoch": [1, 2], "stage": ["frozen"] * 2, "loss": [1.0, 0.8], "auc": [0.6, 0.7], "val_loss": [1.1, 0.9]}
        | {"val_auc": [0.55, 0.65]}
    )
    assert {t.name for t in plots.training_curves(history, ("loss", "auc")).data} == {
        "loss",
        "val_loss",
        "auc",
        "val_auc",
    }
    no_accuracy = plots.training_curves(history, ("accuracy",), title="Accuracy")
    assert not no_accuracy.data and "not recorded" in no_accuracy.layout.title.text


# -- the pages ----------------------------------------------------------------------------------------------------


@pytest.fixture
def open_app(monkeypatch, tmp_path):
    monkeypatch.setenv("CXRLAB_DEMO_DATA", str(tmp_path / "demo"))
    monkeypatch.setenv("CXRCORE_SCHEDULER_IDLE_EXIT", "2")

    def open_page(page: str, dataset: str | None = None) -> AppTest:
        at = AppTest.from_file(APP, default_timeout=180)
        if dataset:
            at.session_state["dataset"] = dataset
        at.switch_page(page)
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        return at

    return open_page


def metric(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def frames(at: AppTest) -> list[pd.DataFrame]:
    return [d.value for d in at.dataframe]


def test_evaluate_page_shows_a_findings_run_per_finding(open_app, findings_run, monkeypatch):
    monkeypatch.setenv("CXRCORE_MODELS", str(findings_run.models))
    metrics = findings_run.run.metrics()
    at = open_app("pages/evaluate.py")
    assert not at.error, [e.value for e in at.error]
    assert metric(at, "Mean AUC") == f"{metrics['mean_auc']:.3f}"
    evaluated, total = metrics["evaluated"], len(findings_run.run.labels())
    low, high = (metrics["ci"]["mean_auc"][k] for k in ("ci_low", "ci_high"))
    over = f"95% CI {low:.2f}–{high:.2f}, over {len(evaluated)} findings"
    assert any(c.value == over for c in at.caption), [c.value for c in at.caption]
    assert metric(at, "Findings evaluated") == f"{len(evaluated)} of {total}"
    table = next(t for t in frames(at) if "AUC" in t.columns and "finding" in t.columns)
    assert list(table["finding"]) == evaluated
    first = metrics["findings"][evaluated[0]]
    assert table["positives"][0] == f"{first['positives']} of {first['n']} ({first['prevalence']:.0%})"
    assert table["AUC"][0].startswith(f"{first['auc']:.3f} (")
    point = first["operating_points"]["sensitivity"]
    assert table["TP / FP / FN / TN"][0] == f"{point['tp']} / {point['fp']} / {point['fn']} / {point['tn']}"
    shown = set(table["finding"])
    for t in frames(at):
        if "reason" in t.columns:  # the findings not evaluated, with their reasons
            assert list(t["finding"]) == list(metrics["not_evaluated"]) and list(t["reason"]) == list(
                metrics["not_evaluated"].values()
            )
            shown |= set(t["finding"])
    assert shown == set(findings_run.run.labels())
    # the other operating point: the thresholds change, nothing breaks
    at.radio(key="evaluate_test_kind").set_value("youden").run()
    assert not at.exception and not at.error
    table = next(t for t in frames(at) if "TP / FP / FN / TN" in t.columns)
    youden = first["operating_points"]["youden"]
    assert table["threshold"][0] == f"{youden['threshold']:.4g}"


def test_evaluate_page_evaluates_a_findings_run_on_a_labels_column_lacking_a_finding(
    open_app, findings_run, findings_data, monkeypatch, tmp_path
):
    """An external manifest whose findings sit in a column of its own (a class-labelled manifest that also records
    findings) and that lacks Nodule: Nodule is listed as not evaluated, with the reason."""
    run = copy_run(findings_run.run, tmp_path / "models")
    monkeypatch.setenv("CXRCORE_MODELS", str(tmp_path / "models"))
    source = pd.read_csv(findings_data / "manifest.csv").iloc[::3]
    kept = source["labels"].map(lambda t: "|".join(f for f in t.split("|") if f != "Nodule") or "No Finding")
    external = tmp_path / "elsewhere.csv"
    pd.DataFrame({"path": [str(findings_data / p) for p in source["path"]], "label": "x", "nih_labels": kept}).to_csv(
        external, index=False
    )
    at = open_app("pages/evaluate.py")
    at.text_input(key="evaluate_external_path").set_value(str(external))
    at.text_input(key="evaluate_labels_column").set_value("nih_labels")
    at.run()
    at.button(key="evaluate_external_go").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert any(f"Evaluated {len(source)} images" in s.value for s in at.success)
    saved = run.external_evaluations()[0].metrics
    assert "Nodule" in saved["not_evaluated"] and "Nodule" not in saved["evaluated"]
    external_key = next(k for k in at.session_state if k.startswith("evaluate_ext_") and k.endswith("_kind"))
    assert external_key  # the external results are shown with the findings view
    reasons = next(t for t in frames(at) if "reason" in t.columns and "Nodule" in set(t["finding"]))
    assert "not among this dataset's findings" in reasons.set_index("finding").at["Nodule", "reason"]
    beside = next(t for t in frames(at) if "external" in t.columns)
    assert beside.at["AUC: Nodule", "external"] == "not evaluated"
    assert "mean AUC" in beside.index and "accuracy" not in beside.index


def test_train_page_trains_a_findings_dataset_with_its_reading_options(open_app, findings_data):
    at = open_app("pages/train.py", dataset=str(findings_data))
    assert not at.error and not any("class-labelled datasets only" in w.value for w in at.warning)
    names = "Cardiomegaly, Consolidation, Effusion, Nodule, Pneumothorax"
    assert any(s.value.startswith(f"**Findings dataset**: 5 findings ({names})") for s in at.success)
    assert not at.button(key="train_start").disabled
    keys = {w.key for w in [*at.checkbox, *at.selectbox, *at.number_input, *at.text_input]}
    assert not keys & {"train_focal", "train_smoothing", "train_preset", "train_balance", "train_external_map"}
    assert "train_drop_single_class_sources" not in keys
    at.selectbox(key="train_uncertain").set_value("zeros")
    at.multiselect(key="train_findings").set_value(["Effusion", "Nodule"])
    at.run()
    at.number_input(key="train_plateau_factor").set_value(0.1)
    at.text_input(key="train_external_labels_column").set_value("nih_labels")
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    config = json.loads(at.json[0].value)
    assert config["findings"] == {
        "uncertain": "zeros",
        "blank": "negative",
        "findings": ["Effusion", "Nodule"],
        "views": "all",
        "labels_column": "",
    }
    assert config["reduce_lr_factor"] == 0.1 and config["external_labels_column"] == "nih_labels"
    assert not config["focal_loss"] and config["labels"]["merge"] == {} and config["balance"] == "none"
    plan = at.dataframe[0].value
    assert plan["outputs"][0] == "2 findings (sigmoid)" and "findings: Effusion, Nodule" in plan["read"][0]
    # the CheXNet recipe is offered and fills the form, the findings options kept
    at.selectbox(key="train_recipe").set_value("chexnet").run()
    assert not at.exception
    config = json.loads(at.json[0].value)
    assert config["recipe"] == "chexnet" and config["backbone"] == "densenet121"
    assert config["reduce_lr_factor"] == 0.1 and config["findings"]["findings"] == ["Effusion", "Nodule"]
