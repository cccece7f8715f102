"""Metrics of a findings (multi-label) model, on cases small enough to work out by hand."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from cxrcore.data.findings import NO_FINDING, SEPARATOR
from cxrcore.evaluation import multilabel as ml
from cxrcore.evaluation.operating_points import KINDS, decide
from cxrcore.stats.intervals import weighted_auc_ap

NAN = np.nan
FINDINGS = ["Cardiomegaly", "Effusion"]
# Six images, two findings. Cardiomegaly: positives score 0.9, 0.4, 0.8; negatives 0.6, 0.2, 0.1.
# Effusion: image 2 is left out (NaN); positives 0.7, 0.5; negatives 0.3, 0.6, 0.2.
PROBS = np.array(
    [
        [0.9, 0.3],
        [0.4, 0.7],
        [0.6, 0.95],
        [0.2, 0.5],
        [0.1, 0.6],
        [0.8, 0.2],
    ]
)
Y = np.array(
    [
        [1, 0],
        [1, 1],
        [0, NAN],
        [0, 1],
        [0, 0],
        [1, 0],
    ]
)
# Cardiomegaly AUC: 9 positive-negative pairs; 0.9 and 0.8 beat all three negatives (6), 0.4 beats 0.2
# and 0.1 but not 0.6 (2): 8/9. AP: ranked 0.9 P, 0.8 P, 0.6 N, 0.4 P: precision 1/1, 2/2, 3/4 at the
# positives, AP = (1 + 1 + 3/4) / 3 = 11/12.
# Effusion AUC: 6 pairs; 0.7 beats 0.3, 0.6, 0.2 (3), 0.5 beats 0.3 and 0.2 (2): 5/6. AP: ranked 0.7 P,
# 0.6 N, 0.5 P: precision 1, 2/3, AP = (1 + 2/3) / 2 = 5/6.
CARDIO_AUC, CARDIO_AP = 8 / 9, 11 / 12
EFFUSION_AUC, EFFUSION_AP = 5 / 6, 5 / 6


def small(**kwargs) -> dict:
    """The six-image example with every finding evaluated (min_positives 1) and no intervals unless asked."""
    kwargs.setdefault("resamples", 0)
    return ml.findings_metrics(Y, PROBS, FINDINGS, min_positives=1, **kwargs)


def test_auc_and_ap_worked_by_hand():
    found = small()
    assert found["task"] == "findings"
    assert found["n"] == 6
    assert found["evaluated"] == FINDINGS
    assert found["not_evaluated"] == {}
    cardio, effusion = found["findings"]["Cardiomegaly"], found["findings"]["Effusion"]
    assert cardio["auc"] == pytest.approx(CARDIO_AUC)
    assert cardio["ap"] == pytest.approx(CARDIO_AP)
    assert effusion["auc"] == pytest.approx(EFFUSION_AUC)
    assert effusion["ap"] == pytest.approx(EFFUSION_AP)
    # (8/9 + 5/6) / 2 = (16/18 + 15/18) / 2 = 31/36; (11/12 + 10/12) / 2 = 7/8
    assert found["mean_auc"] == pytest.approx(31 / 36)
    assert found["macro_auc"] == found["mean_auc"]
    assert found["mean_ap"] == pytest.approx(7 / 8)
    assert found["macro_ap"] == found["mean_ap"]
    # counts: Cardiomegaly 6 labelled, 3 positive; Effusion 5 labelled (one NaN), 2 positive: prevalence 2/5
    assert (cardio["n"], cardio["positives"], cardio["negatives"], cardio["left_out"]) == (6, 3, 3, 0)
    assert (effusion["n"], effusion["positives"], effusion["negatives"], effusion["left_out"]) == (5, 2, 3, 1)
    assert cardio["prevalence"] == pytest.approx(0.5)
    assert effusion["prevalence"] == pytest.approx(0.4)
    # no resamples: no intervals at all
    assert "ci" not in found and "bootstrap" not in found and "ci" not in cardio
    json.dumps(found, allow_nan=False)


def test_curves_have_the_single_label_format():
    found = small()
    assert set(found["roc"]) == set(found["pr"]) == set(FINDINGS)
    roc, pr = found["roc"]["Effusion"], found["pr"]["Effusion"]
    assert set(roc) == {"fpr", "tpr", "thresholds", "auc"}
    assert set(pr) == {"precision", "recall", "ap"}
    assert roc["auc"] == pytest.approx(EFFUSION_AUC)
    assert pr["ap"] == pytest.approx(EFFUSION_AP)
    # the ROC starts at (0, 0) and ends at (1, 1); only the 5 labelled images count: 3 negatives, so the
    # false positive rates are multiples of 1/3
    assert (roc["fpr"][0], roc["tpr"][0], roc["fpr"][-1], roc["tpr"][-1]) == (0.0, 0.0, 1.0, 1.0)
    assert all(math.isclose(3 * f, round(3 * f)) for f in roc["fpr"])


def test_a_left_out_label_changes_nothing():
    """Image 2's Effusion is NaN: whatever the model says there, Effusion's numbers stay."""
    before = small(resamples=200, patient_ids=[f"p{i}" for i in range(6)])
    probs = PROBS.copy()
    probs[2, 1] = 0.05  # from the highest Effusion score to the lowest
    after = ml.findings_metrics(
        Y, probs, FINDINGS, min_positives=1, resamples=200, patient_ids=[f"p{i}" for i in range(6)]
    )
    assert after["findings"]["Effusion"] == before["findings"]["Effusion"]
    assert after["roc"]["Effusion"] == before["roc"]["Effusion"]


def test_auc_and_ap_match_the_weighted_ones_with_unit_weights():
    rng = np.random.default_rng(4)
    n = 120
    y = (rng.random((n, 3)) < 0.35).astype(float)
    y[rng.random((n, 3)) < 0.2] = NAN
    probs = np.round(rng.random((n, 3)), 1)  # rounded: many ties
    found = ml.findings_metrics(y, probs, ["A", "B", "C"], resamples=0)
    assert found["evaluated"] == ["A", "B", "C"]
    for j, name in enumerate("ABC"):
        labelled = ~np.isnan(y[:, j])
        auc, ap = weighted_auc_ap(np.ones((1, labelled.sum())), y[labelled, j] == 1, probs[labelled, j])
        assert found["findings"][name]["auc"] == pytest.approx(auc[0], abs=1e-12)
        assert found["findings"][name]["ap"] == pytest.approx(ap[0], abs=1e-12)


def rare_example() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """30 images: Common has 12 positives (images 0-11), Rare 3 (images 0-2), Everywhere is positive on
    all 30 (no negatives)."""
    n = 30
    y = np.zeros((n, 3))
    y[:12, 0] = 1
    y[:3, 1] = 1
    y[:, 2] = 1
    probs = np.tile(np.linspace(0.9, 0.1, n)[:, None], (1, 3))
    return y, probs, ["Common", "Rare", "Everywhere"]


def test_too_few_positives_are_not_evaluated():
    y, probs, names = rare_example()
    found = ml.findings_metrics(y, probs, names, resamples=0)
    assert found["evaluated"] == ["Common"]
    assert list(found["findings"]) == ["Common"]
    assert found["not_evaluated"] == {
        "Rare": "3 positive images in the evaluated split (fewer than 10)",
        "Everywhere": "no negative images in the evaluated split",
    }
    # scores fall with the image number and the positives are images 0-11: a perfect ranking
    assert found["mean_auc"] == pytest.approx(1.0)
    assert set(found["roc"]) == set(found["pr"]) == {"Common"}


def test_too_few_positives_in_training_are_not_evaluated():
    y, probs, names = rare_example()
    found = ml.findings_metrics(y, probs, names, train_positives={"Common": 6, "Rare": 50}, resamples=0)
    assert found["evaluated"] == []
    assert found["not_evaluated"]["Common"] == "6 positive images in training (fewer than 10)"
    assert found["not_evaluated"]["Rare"] == "3 positive images in the evaluated split (fewer than 10)"
    assert found["mean_auc"] is None and found["mean_ap"] is None
    # enough in training and in the split: evaluated; a finding train_positives does not name is not checked
    found = ml.findings_metrics(y, probs, names, train_positives={"Common": 10}, resamples=0)
    assert found["evaluated"] == ["Common"]


# positives score 0.9, 0.8, 0.7, 0.6; negatives 0.75, 0.5, 0.3, 0.2; image 8 is left out (NaN) at 0.65.
POINT_PROBS = np.array([0.9, 0.8, 0.7, 0.6, 0.75, 0.5, 0.3, 0.2, 0.65])
POINT_Y = np.array([1, 1, 1, 1, 0, 0, 0, 0, NAN])


def points_example():
    # a second finding with no positive label at all: no threshold of either kind
    probs = np.column_stack([POINT_PROBS, np.full(9, 0.5)])
    y = np.column_stack([POINT_Y, np.zeros(9)])
    return probs, y, ["Effusion", "Nodule"]


def test_thresholds_chosen_by_hand():
    probs, y, names = points_example()
    points = ml.choose_points(probs, y, names, 0.75)
    assert points["target_sensitivity"] == 0.75
    assert points["chosen_on"] == "val"
    assert points["n"] == 9
    # target 0.75 of 4 positives: 3 must be at or above, the 3rd highest positive is 0.7. (Were the NaN
    # image at 0.65 counted as a positive, 5 x 0.75 -> 4 of 5 would give 0.65.)
    # Youden's J = sens + spec - 1: at 0.9: 1/4; 0.8: 2/4; 0.75: 2/4 + 3/4 - 1 = 1/4; 0.7: 3/4 + 3/4 - 1 = 1/2;
    # 0.6: 1 + 3/4 - 1 = 3/4 (the maximum); 0.5: 1/2; 0.3: 1/4; 0.2: 0
    assert points["thresholds"]["Effusion"] == {"sensitivity": 0.7, "youden": 0.6}
    assert points["thresholds"]["Nodule"] == {"sensitivity": None, "youden": None}
    # the single-label decide() takes it unchanged
    called = decide(probs, points, names, "sensitivity")
    assert called[:, 0].tolist() == [True, True, True, False, True, False, False, False, False]
    assert not called[:, 1].any()


def test_counts_and_rates_at_the_operating_points():
    probs, y, names = points_example()
    points = ml.choose_points(probs, y, names, 0.75)
    found = ml.evaluate_points(probs, y, names, points, resamples=0)
    assert found["target_sensitivity"] == 0.75
    assert found["chosen_on"] == "val"
    at = found["findings"]["Effusion"]
    # at 0.7: positives 0.9, 0.8, 0.7 called (tp 3), 0.6 missed (fn 1); negative 0.75 called (fp 1), 0.5, 0.3,
    # 0.2 not (tn 3); the NaN image at 0.65 counts nowhere. sens 3/4, spec 3/4, ppv 3/4, npv 3/4
    assert at["sensitivity"] == {
        "threshold": 0.7,
        "sensitivity": 0.75,
        "specificity": 0.75,
        "ppv": 0.75,
        "npv": 0.75,
        "tp": 3,
        "fp": 1,
        "fn": 1,
        "tn": 3,
    }
    # at 0.6: every positive called (tp 4, fn 0), negative 0.75 called (fp 1, tn 3): sens 1, spec 3/4,
    # ppv 4/5, npv 3/3
    youden = at["youden"]
    assert (youden["tp"], youden["fp"], youden["fn"], youden["tn"]) == (4, 1, 0, 3)
    assert youden["sensitivity"] == 1.0
    assert youden["specificity"] == 0.75
    assert youden["ppv"] == pytest.approx(0.8)
    assert youden["npv"] == 1.0
    assert found["findings"]["Nodule"] == {"sensitivity": None, "youden": None}
    json.dumps(found, allow_nan=False)


def test_operating_points_inside_the_metrics_and_ppv_without_calls():
    probs, y, names = points_example()
    points = ml.choose_points(probs, y, names, 0.75)
    # a threshold above every score: nothing called, so PPV has nothing to count (None), NPV = 4 tn / 8
    high = {**points, "thresholds": {"Effusion": {"sensitivity": 0.95, "youden": 0.6}}}
    found = ml.findings_metrics(y, probs, names, points=high, min_positives=4, resamples=0)
    assert found["evaluated"] == ["Effusion"]
    assert found["operating_points"] == {"target_sensitivity": 0.75, "chosen_on": "val"}
    at = found["findings"]["Effusion"]["operating_points"]
    assert set(at) == set(KINDS)
    assert at["sensitivity"]["ppv"] is None
    assert at["sensitivity"]["npv"] == 0.5
    assert (at["sensitivity"]["tp"], at["sensitivity"]["fn"]) == (0, 4)
    assert at["youden"]["tp"] == 4


def clustered(copies_share_a_patient: bool) -> dict:
    """20 distinct images (10 positive, 10 negative, AUC below 1), each repeated 4 times."""
    rng = np.random.default_rng(7)
    positive = np.r_[np.ones(10), np.zeros(10)]
    scores = np.clip(0.5 + 0.25 * (positive - 0.5) + rng.normal(0, 0.2, 20), 0, 1)
    y = np.repeat(positive, 4)[:, None]
    probs = np.repeat(scores, 4)[:, None]
    ids = [f"p{i // 4}" if copies_share_a_patient else f"p{i}" for i in range(80)]
    return ml.findings_metrics(y, probs, ["Effusion"], patient_ids=ids, resamples=200, seed=1)


def test_repeated_images_of_a_patient_widen_the_interval():
    """Four images of one patient carry about as much as one: 20 patients of four images each give an
    interval about twice as wide (sqrt(80 / 20)) as 80 patients of one image, the same images."""
    one_each, shared = clustered(False), clustered(True)
    assert one_each["findings"]["Effusion"]["auc"] == shared["findings"]["Effusion"]["auc"]
    assert (one_each["bootstrap"]["patients"], shared["bootstrap"]["patients"]) == (80, 20)

    def width(found: dict, key: str = "auc") -> float:
        ci = found["findings"]["Effusion"]["ci"][key]
        return ci["ci_high"] - ci["ci_low"]

    assert width(shared) > 1.4 * width(one_each)
    assert width(shared, "ap") > width(one_each, "ap")

    def mean_width(found: dict) -> float:
        return found["ci"]["mean_auc"]["ci_high"] - found["ci"]["mean_auc"]["ci_low"]

    assert mean_width(shared) > 1.4 * mean_width(one_each)  # one finding: the mean is its AUC


def test_intervals_hold_the_estimate_and_say_how_they_were_made():
    rng = np.random.default_rng(3)
    n = 160
    y = (rng.random((n, 2)) < 0.4).astype(float)
    probs = np.clip(0.3 + 0.4 * y + rng.normal(0, 0.2, (n, 2)), 0, 1)
    y[rng.random((n, 2)) < 0.1] = NAN
    ids = [f"p{i // 2}" for i in range(n - 4)] + ["", None, "", None]  # 78 patients of 2, 4 images without
    points = ml.choose_points(probs, y, FINDINGS, 0.9)
    found = ml.findings_metrics(y, probs, FINDINGS, patient_ids=ids, points=points, resamples=200, seed=5)
    assert found["bootstrap"] == {
        "resamples": 200,
        "level": 0.95,
        "seed": 5,
        "unit": "patient",
        "patients": 78 + 4,
        "images_without_patient_id": 4,
    }
    assert found["evaluated"] == FINDINGS
    for name in FINDINGS:
        values = found["findings"][name]
        for metric in ("auc", "ap"):
            assert values["ci"][metric]["ci_low"] <= values[metric] <= values["ci"][metric]["ci_high"]
        for kind in KINDS:
            at = values["operating_points"][kind]
            for rate in ("sensitivity", "specificity", "ppv", "npv"):
                assert at["ci"][rate]["ci_low"] <= at[rate] <= at["ci"][rate]["ci_high"]
    for key, value in (("mean_auc", found["mean_auc"]), ("mean_ap", found["mean_ap"])):
        assert found["ci"][key]["ci_low"] <= value <= found["ci"][key]["ci_high"]
        assert found["ci"][key.replace("mean", "macro")] == found["ci"][key]
    json.dumps(found, allow_nan=False)
    # every number and interval defined: enough patients (the ROC's first threshold, infinite, is null there)
    assert "null" not in json.dumps([found["findings"], found["ci"]])


def overconfident() -> tuple[np.ndarray, np.ndarray]:
    """Effusion: the model says 0.99 for five images of which four are positive, 0.01 for five of which one
    is; an eleventh image, left out (NaN), scores 0.99 and must count nowhere. Nodule: every label positive."""
    p = np.r_[np.full(5, 0.99), np.full(5, 0.01), 0.99]
    y = np.r_[1, 1, 1, 1, 0, 0, 0, 0, 0, 1, NAN]
    return np.column_stack([p, np.full(11, 0.7)]), np.column_stack([y, np.ones(11)])


# The best calibrated probabilities are the observed frequencies 0.8 and 0.2, so T takes logit(0.99) =
# ln 99 to logit(0.8) = ln 4: T = ln 99 / ln 4 = 3.3147 (> 1: overconfident)
OVERCONFIDENT_T = math.log(99) / math.log(4)


def test_overconfident_finding_gets_a_temperature_above_one():
    probs, y = overconfident()
    temperatures = ml.fit_temperatures(probs, y, min_positives=5)  # 5 positives and 5 negatives: fitted
    assert temperatures[0] == pytest.approx(OVERCONFIDENT_T, abs=1e-3)
    assert temperatures[1] == 1.0  # Nodule: no negatives, nothing to fit
    calibrated = ml.apply_temperatures(probs, temperatures)
    assert calibrated[0, 0] == pytest.approx(0.8, abs=1e-4)
    assert calibrated[5, 0] == pytest.approx(0.2, abs=1e-4)
    assert np.array_equal(calibrated[:, 1], probs[:, 1])


def test_a_finding_with_too_few_validation_images_of_either_kind_is_left_uncalibrated():
    probs, y = overconfident()  # Effusion: 5 positives, 5 negatives (and a left-out one); Nodule: 11 positives
    assert ml.fit_temperatures(probs, y) == [1.0, 1.0]  # fewer than 10 of each: nothing fitted
    assert ml.unfitted(y, ["Effusion", "Nodule"]) == {
        "Effusion": "5 positive images and 5 negative images on validation (fewer than 10): left uncalibrated",
        "Nodule": "0 negative images on validation (fewer than 10): left uncalibrated",
    }
    assert ml.unfitted(y, ["Effusion", "Nodule"], min_positives=5) == {
        "Nodule": "0 negative images on validation (fewer than 5): left uncalibrated"
    }


def test_temperature_one_is_the_identity():
    rng = np.random.default_rng(0)
    probs = rng.random((7, 3))
    assert np.array_equal(ml.apply_temperatures(probs, [1.0, 1.0, 1.0]), probs)


def test_binary_nll_by_hand():
    probs = np.array([[0.8, 0.3], [0.25, 0.9]])
    y = np.array([[1, NAN], [0, 1]])
    # labelled pairs: 0.8 positive (-ln 0.8), 0.25 negative (-ln 0.75), 0.9 positive (-ln 0.9)
    expected = -(math.log(0.8) + math.log(0.75) + math.log(0.9)) / 3
    assert ml.binary_nll(probs, y) == pytest.approx(expected)


def test_calibration_report_by_hand():
    probs, y = overconfident()
    report = ml.calibration_report(probs[:, :1], y[:, :1], ["Effusion"], [OVERCONFIDENT_T])
    assert report["temperatures"] == {"Effusion": OVERCONFIDENT_T}
    assert report["fitted_on"] == "val"
    assert report["bins"] == 15
    # before: bin 14 (0.99 x 15 = 14.85) holds five at 0.99, four positive (0.8): gap 0.19; bin 0 holds five at
    # 0.01, one positive (0.2): gap 0.19; ECE = 0.19. After: 0.8 and 0.2 against 0.8 and 0.2: 0
    assert report["ece"]["before"] == {"Effusion": pytest.approx(0.19), "mean": pytest.approx(0.19)}
    assert report["ece"]["after"]["Effusion"] == pytest.approx(0.0, abs=1e-9)
    # Brier before: eight right by 0.01 (1e-4 each), two wrong by 0.99 (0.9801 each): (8e-4 + 1.9602) / 10;
    # after: eight off by 0.2 (0.04 each), two by 0.8 (0.64 each): (0.32 + 1.28) / 10 = 0.16
    assert report["brier"]["before"]["Effusion"] == pytest.approx(0.19610)
    assert report["brier"]["after"]["Effusion"] == pytest.approx(0.16)
    assert report["brier"]["after"]["mean"] == report["brier"]["after"]["Effusion"]
    # reliability after: 0.2 falls in bin 3 (0.2 x 15 = 3), 0.8 in bin 12; five images each
    found = report["reliability"]["Effusion"]
    assert found["predicted"] == pytest.approx([0.2, 0.8])
    assert found["observed"] == pytest.approx([0.2, 0.8])
    assert found["count"] == [5, 5]
    json.dumps(report, allow_nan=False)


def test_per_finding_table_rows():
    y, probs, names = rare_example()
    points = ml.choose_points(probs, y, names, 0.75)
    found = ml.findings_metrics(y, probs, names, points=points, resamples=200)
    rows = ml.per_finding_table(found)
    assert [row["finding"] for row in rows] == ["Common", "Rare", "Everywhere", "mean"]
    assert all(list(row) == list(rows[0]) for row in rows)  # the same columns on every row
    common, rare, everywhere, mean = rows
    assert (common["n"], common["positives"], common["prevalence"]) == (30, 12, 0.4)
    assert common["auc"] == pytest.approx(1.0)
    assert common["not_evaluated"] is None
    # 12 positives at target 0.75: 9 must be called; the 9th highest positive is image 8's score,
    # 0.9 - 8 x 0.8 / 29; there tp 9, fn 3, fp 0, tn 18
    assert common["sensitivity_threshold"] == pytest.approx(0.9 - 8 * 0.8 / 29)
    assert (common["sensitivity_tp"], common["sensitivity_fp"]) == (9, 0)
    assert (common["sensitivity_fn"], common["sensitivity_tn"]) == (3, 18)
    assert common["sensitivity_sensitivity"] == 0.75
    assert common["youden_sensitivity"] == 1.0  # a perfect ranking: J = 1 at the lowest positive
    assert common["auc_ci_low"] is not None and common["auc_ci_high"] is not None
    assert rare["not_evaluated"] == "3 positive images in the evaluated split (fewer than 10)"
    assert rare["auc"] is None and rare["n"] is None and rare["sensitivity_threshold"] is None
    assert everywhere["not_evaluated"] == "no negative images in the evaluated split"
    assert mean["auc"] == found["mean_auc"]
    assert mean["ap"] == found["mean_ap"]
    assert (mean["auc_ci_low"], mean["auc_ci_high"]) == (
        found["ci"]["mean_auc"]["ci_low"],
        found["ci"]["mean_auc"]["ci_high"],
    )


def test_predictions_table():
    probs = np.array([[0.9, 0.8], [0.1, 0.4], [0.3, 0.7]])
    y = np.array([[1, 1], [0, NAN], [0, 1]])
    called = probs >= 0.5
    table = ml.predictions_table(["a.png", "b.png", "c.png"], y, probs, FINDINGS, decisions=called)
    assert list(table.columns) == [
        "path",
        "true_findings",
        "prob_Cardiomegaly",
        "true_Cardiomegaly",
        "called_Cardiomegaly",
        "prob_Effusion",
        "true_Effusion",
        "called_Effusion",
    ]
    assert table["true_findings"].tolist() == [f"Cardiomegaly{SEPARATOR}Effusion", NO_FINDING, "Effusion"]
    assert table["prob_Effusion"].tolist() == [0.8, 0.4, 0.7]
    assert table["true_Effusion"].tolist()[0::2] == [1.0, 1.0]
    assert np.isnan(table["true_Effusion"].iloc[1])
    assert table["called_Cardiomegaly"].tolist() == [True, False, False]
    without = ml.predictions_table(["a.png", "b.png", "c.png"], y, probs, FINDINGS)
    assert not any(column.startswith("called_") for column in without.columns)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="1.0, 0.0 or NaN"):
        ml.findings_metrics(np.array([[1.0], [-1.0]]), np.array([[0.5], [0.5]]), ["A"], resamples=0)
    with pytest.raises(ValueError, match="columns"):
        ml.findings_metrics(Y, PROBS, ["A"], resamples=0)
