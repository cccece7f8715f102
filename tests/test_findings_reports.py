"""Reports of a findings run (several findings per image, one sigmoid output each): the tables of
``evaluation.compare``, the model card, comparisons of runs, the external-drop sentence, the ``evaluate``
command's report and the Compare page. Hand-made metrics dicts where the numbers are the point; the session's
``findings_run`` (read-only: changed on copies) where the files are."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from streamlit.testing.v1 import AppTest

from conftest import REPO, copy_run
from cxrcore import runs
from cxrcore.cli import build_parser
from cxrcore.cli.evaluate import findings_summary, report_lines
from cxrcore.evaluation import model_card
from cxrcore.evaluation.compare import (
    compare_table,
    findings_side_by_side,
    findings_table,
    interval,
    is_findings,
    not_evaluated_table,
    operating_points_table,
    side_by_side,
)
from cxrcore.evaluation.evaluate import comparability, compare_runs, rankable
from cxrcore.evaluation.sanity import transfer_drop

APP = str(REPO / "app.py")


def ci(low, high) -> dict:
    return {"ci_low": low, "ci_high": high}


def point(threshold, rates, counts, spread=None) -> dict:
    """An operating point: the four rates, the 2x2 counts and (``spread``) their intervals."""
    found = {"threshold": threshold, **dict(zip(("sensitivity", "specificity", "ppv", "npv"), rates))}
    found.update(dict(zip(("tp", "fp", "fn", "tn"), counts)))
    if spread is not None:
        found["ci"] = {k: ci(*b) for k, b in zip(("sensitivity", "specificity", "ppv", "npv"), spread)}
    return found


def hand_made(mean_auc=0.75, mean_ci=(0.65, 0.85)) -> dict:
    """A findings evaluation written by hand: Effusion and Mass evaluated, Hernia not."""
    return {
        "task": "findings",
        "n": 200,
        "findings": {
            "Effusion": {
                "n": 180,
                "positives": 40,
                "negatives": 140,
                "left_out": 20,
                "prevalence": 40 / 180,
                "auc": 0.812,
                "ap": 0.5,
                "ci": {"auc": ci(0.7, 0.9), "ap": ci(0.41, 0.6)},
                "operating_points": {
                    "sensitivity": point(
                        0.25,
                        (0.95, 0.6, 0.4, 0.98),
                        (38, 56, 2, 84),
                        [(0.85, 1.0), (0.52, 0.68), (0.3, 0.5), (0.95, 1.0)],
                    ),
                    "youden": point(0.4, (0.8, 0.8, 0.53, 0.93), (32, 28, 8, 112)),
                },
            },
            "Mass": {
                "n": 200,
                "positives": 12,
                "negatives": 188,
                "left_out": 0,
                "prevalence": 0.06,
                "auc": 0.688,
                "ap": 0.2,
                "ci": {"auc": ci(0.55, 0.81), "ap": ci(0.08, 0.35)},
                "operating_points": {
                    "sensitivity": None,
                    "youden": point(0.1, (0.5, 0.9, 0.25, 0.97), (6, 19, 6, 169)),
                },
            },
        },
        "not_evaluated": {"Hernia": "3 positive images in the evaluated split (fewer than 10)"},
        "evaluated": ["Effusion", "Mass"],
        "mean_auc": mean_auc,
        "macro_auc": mean_auc,
        "mean_ap": 0.35,
        "macro_ap": 0.35,
        "ci": {
            "mean_auc": ci(*mean_ci),
            "macro_auc": ci(*mean_ci),
            "mean_ap": ci(0.25, 0.45),
            "macro_ap": ci(0.25, 0.45),
        },
        "bootstrap": {
            "resamples": 1000,
            "level": 0.95,
            "seed": 0,
            "unit": "patient",
            "patients": 150,
            "images_without_patient_id": 0,
        },
        "operating_points": {"target_sensitivity": 0.95, "chosen_on": "val"},
        "calibration": {
            "temperatures": {"Effusion": 1.5, "Mass": 0.8, "Hernia": 1.0},
            "fitted_on": "val",
            "bins": 15,
            "ece": {
                "before": {"Effusion": 0.1, "Mass": 0.2, "Hernia": 0.3, "mean": 0.2},
                "after": {"Effusion": 0.05, "Mass": 0.1, "Hernia": 0.15, "mean": 0.1},
            },
        },
    }


# -- evaluation.compare: tables of text cells ------------------------------------------------------------------


def test_findings_table_has_one_row_per_evaluated_finding_with_intervals_and_counts():
    metrics = hand_made()
    table = findings_table(metrics)
    assert table["finding"].tolist() == ["Effusion", "Mass"]  # Hernia was not evaluated
    assert list(table.columns) == [
        *("finding", "positives / labelled", "prevalence", "AUC (95% CI)", "AP (95% CI)", "threshold"),
        *("sensitivity", "specificity", "PPV", "NPV", "TP", "FP", "FN", "TN"),
    ]
    effusion = table.iloc[0].to_dict()
    assert effusion["positives / labelled"] == "40 / 180"
    assert effusion["prevalence"] == "22.2%"
    assert effusion["AUC (95% CI)"] == "0.812 (0.70–0.90)"  # the cell format of a class run's
    assert effusion["AP (95% CI)"] == "0.500 (0.41–0.60)"
    assert effusion["threshold"] == "0.25"
    assert effusion["sensitivity"] == "0.950 (0.85–1.00)"
    assert effusion["NPV"] == "0.980 (0.95–1.00)"
    assert (effusion["TP"], effusion["FP"], effusion["FN"], effusion["TN"]) == ("38", "56", "2", "84")
    mass = table.iloc[1].to_dict()
    assert mass["AUC (95% CI)"] == "0.688 (0.55–0.81)"
    assert mass["threshold"].startswith("none")  # the validation split chose no target-sensitivity threshold
    assert mass["sensitivity"] == "" and mass["TP"] == ""
    # without intervals the numbers say so, never look complete
    bare = hand_made()
    del bare["ci"]
    assert findings_table(bare).iloc[0]["AUC (95% CI)"] == "0.812 (no CI)"


def test_not_evaluated_table_and_the_helpers_on_findings_metrics():
    metrics = hand_made()
    assert is_findings(metrics) and not is_findings({"accuracy": 0.9})
    assert not_evaluated_table(metrics).to_dict("records") == [
        {"finding": "Hernia", "reason": "3 positive images in the evaluated split (fewer than 10)"}
    ]
    assert not_evaluated_table({}).empty
    assert interval(metrics, "auc", "Effusion") == (0.7, 0.9)
    assert interval(metrics, "mean_auc") == (0.65, 0.85)
    points = operating_points_table(metrics)
    assert points[["finding", "operating point"]].values.tolist() == [
        ["Effusion", "target sensitivity"],
        ["Effusion", "Youden's J"],
        ["Mass", "target sensitivity"],
        ["Mass", "Youden's J"],
    ]
    assert points.iloc[1]["specificity"] == "0.800 (no CI)" and points.iloc[1]["TN"] == "112"
    assert points.iloc[2]["threshold"].startswith("none")
    both = side_by_side(metrics, hand_made(mean_auc=0.6, mean_ci=(0.5, 0.7)))
    assert "accuracy" not in both.index and "macro F1" not in both.index
    assert both.loc["mean AUC"].tolist() == ["0.750 (0.65–0.85)", "0.600 (0.50–0.70)", "-0.150"]
    table = compare_table({"a": metrics, "b": None})
    assert table.at["accuracy", "a"] == "n/a" and table.at["macro AUC", "a"] == "0.750 (0.65–0.85)"
    assert table.at["AUC Effusion", "a"] == "0.812 (0.70–0.90)" and table.at["AUC Hernia", "a"] == "not evaluated"
    wide = findings_side_by_side({"a": metrics, "b": {**hand_made(), "findings": {}, "evaluated": []}})
    assert wide.index.tolist() == ["Effusion", "Mass", "Hernia"]
    assert wide.at["Effusion", "a"] == "0.812 (0.70–0.90)"
    assert wide.at["Hernia", "a"].startswith("not evaluated: 3 positive images")
    assert wide.at["Effusion", "b"] == "not predicted"


# -- sanity.transfer_drop and the evaluate command -------------------------------------------------------------


def test_transfer_drop_compares_the_mean_auc_of_findings_metrics():
    inside = hand_made(mean_auc=0.85, mean_ci=(0.8, 0.9))
    fallen = hand_made(mean_auc=0.6, mean_ci=(0.52, 0.68))
    message = transfer_drop(inside, fallen)
    assert message is not None and "mean AUC 0.600 (95% CI 0.520-0.680) against 0.850 (0.800-0.900)" in message
    assert "accuracy" not in message
    assert transfer_drop(inside, hand_made(mean_auc=0.79, mean_ci=(0.7, 0.85))) is None  # overlapping intervals
    assert transfer_drop({**inside, "ci": {}}, fallen) is None  # no interval inside: nothing to compare


def test_evaluate_report_lines_and_summary_of_a_findings_result():
    result = {**hand_made(), "ood": {"flagged": 3, "n": 200, "fraction_flagged": 0.015, "percentile": 99.0}}
    lines = report_lines(result)
    text = "\n".join(lines)
    assert lines[0].strip().startswith("mean AUC 0.750 (0.650-0.850)")
    assert "over 2 of 3 findings evaluated, 200 images" in lines[0]
    effusion = next(line for line in lines if line.strip().startswith("Effusion"))
    assert "positives 40/180" in effusion and "AUC 0.812 (0.700-0.900)" in effusion
    assert "threshold 0.25" in effusion and "sensitivity 0.950 (0.850-1.000)" in effusion
    assert "specificity 0.600 (0.520-0.680)" in effusion and "PPV 0.400" in effusion and "NPV 0.980" in effusion
    assert "not evaluated: Hernia: 3 positive images in the evaluated split (fewer than 10)" in text
    assert "calibration: one temperature per finding, 0.800 (Mass) to 1.500 (Effusion)" in text
    assert "ECE 0.2000 -> 0.1000" in text and "unlike the training data: 3 of 200" in text
    assert "accuracy" not in text
    summary = findings_summary({**result, "out_dir": "/x"})
    assert summary["task"] == "findings" and summary["mean_auc"] == 0.75 and summary["n"] == 200
    assert summary["evaluated"] == ["Effusion", "Mass"] and list(summary["not_evaluated"]) == ["Hernia"]
    assert summary["ci"]["mean_auc"] == ci(0.65, 0.85)
    json.dumps(summary)
    args = build_parser().parse_args(["evaluate", "run", "--data", "d", "--labels-column", "nih_labels"])
    assert args.labels_column == "nih_labels"
    assert build_parser().parse_args(["evaluate", "run"]).labels_column == ""


# -- a real findings run: the card, the runs list, comparisons ------------------------------------------------


def leave_out(run: runs.RunDir, finding: str, reason: str) -> dict:
    """Move ``finding`` of the run's test metrics to ``not_evaluated`` (by hand, as too few positives would)."""
    metrics = run.metrics()
    metrics["findings"].pop(finding)
    metrics["evaluated"].remove(finding)
    metrics["not_evaluated"][finding] = reason
    runs.write_json(run.file(runs.METRICS), metrics)
    return metrics


def test_the_card_of_a_findings_run_lists_every_finding_and_each_left_out_with_its_reason(findings_run, tmp_path):
    run = copy_run(findings_run.run, tmp_path)
    findings = run.labels()
    gone = findings[-1]
    why = "4 positive images in the evaluated split (fewer than 10)"
    metrics = leave_out(run, gone, why)
    card = model_card.render(run)
    assert f"predicting findings {', '.join(findings)} (multi-label: one sigmoid probability per finding)" in card
    results = card[card.index("## Results on the test split") : card.index("## Calibration")]
    assert f"over {len(findings) - 1} of {len(findings)} findings evaluated" in results
    for name in findings[:-1]:
        assert f"| {name} | " in results
    assert f"  - {gone}: {why}." in results
    assert "accuracy" not in results.lower()
    calibration = card[card.index("## Calibration") : card.index("## Operating points")]
    assert "One temperature per finding" in calibration and "ECE before" in calibration
    for name, temperature in run.calibration()["temperatures"].items():
        assert f"| {name} | {temperature:.3f} |" in calibration
    points = card[card.index("## Operating points") :]
    assert f"| {findings[0]} | target sensitivity |" in points
    limitations = card[card.index("## Limitations") :]
    assert f"1 of {len(findings)} findings not evaluated on the test split ({gone}: {why})" in limitations
    data = card[card.index("## Data") : card.index("## Training")]
    assert "| finding (positive images) | train | val | test |" in data
    assert f"{metrics['mean_auc']:.3f}" in results


def test_the_card_of_a_findings_run_shows_its_write_up_and_external_results(findings_run, tmp_path):
    run = copy_run(findings_run.run, tmp_path)
    config = json.loads(run.file(runs.CONFIG).read_text())
    runs.write_json(run.file(runs.CONFIG), {**config, "recipe": "chexnet"})
    test = run.metrics()
    outside = leave_out(copy_run(run, tmp_path / "scratch"), run.labels()[0], "not in this dataset")
    outside["mean_auc"] = outside["macro_auc"] = test["mean_auc"] - 0.1
    folder = run.external_dir(tmp_path / "elsewhere")
    folder.mkdir(parents=True)
    runs.write_json(folder / runs.METRICS, outside)
    runs.write_json(folder / runs.SOURCE, {"data": str(tmp_path / "elsewhere"), "n": outside["n"]})
    card = model_card.render(run)
    writeup = card[card.index("## Against its write-up") :]
    assert "Recipe `chexnet`" in writeup
    assert f"| mean AUC | 0.841 | mean over the 14 findings, CheXNet's test split | {test['mean_auc']:.3f} (" in writeup
    cardiomegaly = test["findings"]["Cardiomegaly"]["auc"]
    assert f"| AUC Cardiomegaly | 0.925 | CheXNet's test split | {cardiomegaly:.3f} (" in writeup
    assert "| AUC Atelectasis | 0.809 | CheXNet's test split | not predicted by this run |" in writeup
    external = card[card.index("## External validation") : card.index("## Limitations")]
    assert "| data | images | mean AUC | change against the test split |" in external
    assert "−0.100" in external
    assert f"- Not evaluated on `{tmp_path / 'elsewhere'}`: {run.labels()[0]} (not in this dataset)." in external
    assert "accuracy" not in external


def test_the_runs_list_shows_a_findings_run_by_its_mean_auc(findings_run):
    summary = findings_run.run.summary()
    metrics = findings_run.run.metrics()
    assert summary["task"] == "findings" and summary["accuracy"] is None
    assert summary["mean_auc"] == metrics["mean_auc"] == summary["macro_auc"]
    assert summary["mean_auc_ci"] == metrics["ci"]["mean_auc"]


def two_runs(findings_run, folder: Path) -> tuple[runs.RunDir, runs.RunDir]:
    """Two copies of the findings run under ``folder``, the second named ``<id>-b``."""
    first = copy_run(findings_run.run, folder)
    second = copy_run(findings_run.run, folder / "tmp")
    target = folder / f"{second.path.name}-b"
    shutil.move(str(second.path), target)
    (folder / "tmp").rmdir()
    return first, runs.RunDir(target)


def test_runs_with_different_findings_are_not_ranked(findings_run, tmp_path):
    first, second = two_runs(findings_run, tmp_path / "models")
    same = comparability([first.path, second.path])
    assert same["comparable"] and same["tasks"] == {first.run_id: "findings", second.run_id: "findings"}
    table = compare_runs([first.path, second.path])
    for name in first.labels():
        assert table.at[f"AUC {name}", first.run_id] == first.metrics()["findings"][name]["auc"]
    assert table.at["macro AUC", first.run_id] == first.metrics()["mean_auc"]
    assert table.loc[["accuracy", "macro F1"], first.run_id].isna().all()
    assert rankable(f"AUC {first.labels()[0]}", same)
    # the second predicts other findings: named, never ranked
    runs.write_json(second.file(runs.LABELS), [*second.labels()[:-1], "Hernia"])
    found = comparability([first.path, second.path])
    assert not found["comparable"] and not found["same_classes"]
    assert any(d.startswith("findings differ: ") and "Hernia" in d for d in found["differences"])
    assert found["shared_classes"] == first.labels()[:-1]
    assert not rankable("macro AUC", found) and not rankable(f"AUC {first.labels()[0]}", found)
    # one predicts classes: not comparable, with the reason
    second.update_info(task="classes")
    mixed = comparability([first.path, second.path])
    assert not mixed["comparable"] and mixed["shared_classes"] == []
    assert any(d.startswith("one predicts findings, the other classes") for d in mixed["differences"])
    assert not rankable("elsewhere: macro AUC", {**mixed, "common_external": ["elsewhere"]})


# -- the Compare page ------------------------------------------------------------------------------------------


def open_compare(findings_data, monkeypatch, models: Path) -> AppTest:
    monkeypatch.setenv("CXRCORE_MODELS", str(models))
    monkeypatch.setenv("CXRCORE_SCHEDULER_IDLE_EXIT", "2")
    at = AppTest.from_file(APP, default_timeout=120)
    at.session_state["dataset"] = str(findings_data)
    at.switch_page("pages/compare.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_compare_page_shows_findings_runs_side_by_side_and_says_when_their_findings_differ(
    findings_run, findings_data, monkeypatch, tmp_path
):
    models = tmp_path / "models"
    first, second = two_runs(findings_run, models)
    at = open_compare(findings_data, monkeypatch, models)
    assert "Findings side by side" in [s.value for s in at.subheader]
    assert "Confusion matrices" not in [s.value for s in at.subheader]
    wide = next(d.value for d in at.dataframe if d.value.index.name == "finding")
    assert wide.index.tolist() == first.labels() and set(wide.columns) == {first.run_id, second.run_id}
    assert not any("cannot be ranked" in w.value for w in at.warning)
    assert len(at.get("plotly_chart")) >= 3  # the ROC overlay and an AUC chart per run
    runs.write_json(second.file(runs.LABELS), [*second.labels()[:-1], "Hernia"])
    at = open_compare(findings_data, monkeypatch, models)
    warnings = [w.value for w in at.warning]
    assert any("cannot be ranked: their findings differ" in w for w in warnings)
    assert any("findings differ: " in w for w in warnings)
    second.update_info(task="classes")  # one run predicting classes: never ranked against findings
    at = open_compare(findings_data, monkeypatch, models)
    assert any("cannot be ranked against each other" in e.value for e in at.error)
    assert any("one predicts findings, the other classes" in w.value for w in at.warning)
