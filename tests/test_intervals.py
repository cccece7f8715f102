"""Bootstrap intervals over patients, on cases small enough to work out by hand."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from cxrcore.evaluation.metrics import classification_metrics, predictive_values, sensitivity_specificity
from cxrcore.stats.intervals import (
    bootstrap_distribution,
    bootstrap_intervals,
    patient_groups,
    resample_weights,
    weighted_auc_ap,
)


def one_hot(pred: list[int], k: int = 2) -> np.ndarray:
    probs = np.full((len(pred), k), 0.1)
    probs[np.arange(len(pred)), pred] = 0.9
    return probs


def test_patients_not_images_are_resampled():
    """Patient A has three images, all wrong; patient B one image, right. Drawing two patients
    with replacement gives {A, A} (accuracy 0) a quarter of the time, {A, B} (1/4) half the time
    and {B, B} (1) a quarter of the time; the 95% interval spans 0..1."""
    y, pred = [0, 0, 0, 1], [1, 1, 1, 1]
    groups, without_id = patient_groups(["A", "A", "A", "B"], 4)
    assert without_id == 0 and len(set(groups)) == 2
    overall, _ = bootstrap_distribution(np.array(y), one_hot(pred), resample_weights(groups, 4000, seed=1))
    values, counts = np.unique(np.round(overall["accuracy"], 6), return_counts=True)
    assert values.tolist() == [0.0, 0.25, 1.0]
    assert counts / 4000 == pytest.approx([0.25, 0.5, 0.25], abs=0.03)
    found = bootstrap_intervals(y, one_hot(pred), ["neg", "pos"], ["A", "A", "A", "B"], resamples=4000)
    assert found["ci"]["accuracy"] == {"ci_low": 0.0, "ci_high": 1.0}
    assert found["bootstrap"]["patients"] == 2 and found["bootstrap"]["unit"] == "patient"


def test_an_image_without_a_patient_id_is_its_own_patient():
    groups, without_id = patient_groups(["p1", "", "p1", None, "p2"], 5)
    assert without_id == 2
    assert groups[0] == groups[2] and len(set(groups.tolist())) == 4


def test_weighted_auc_and_ap_match_scikit_learn_with_ties_and_repeats():
    # by hand: positives 0.9 and 0.4, negatives 0.4 and 0.1 -> pairs 1 + 1 + 0.5 + 1 = 3.5 of 4
    auc, _ = weighted_auc_ap(np.ones((1, 4)), np.array([True, True, False, False]), np.array([0.9, 0.4, 0.4, 0.1]))
    assert auc[0] == pytest.approx(0.875)
    rng = np.random.default_rng(0)
    scores = np.round(rng.random(40), 1)  # many ties
    positive = rng.random(40) < 0.4
    weights = rng.integers(0, 4, size=(3, 40)).astype(float)
    aucs, aps = weighted_auc_ap(weights, positive, scores)
    for row, auc_value, ap_value in zip(weights, aucs, aps):
        repeat = row.astype(int)  # a weight of 2 is the image drawn twice
        s, p = np.repeat(scores, repeat), np.repeat(positive, repeat)
        assert auc_value == pytest.approx(roc_auc_score(p, s))
        assert ap_value == pytest.approx(average_precision_score(p, s))


def test_resampled_rates_equal_the_confusion_matrix_of_the_drawn_images():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, 30)
    probs = rng.dirichlet([1, 1, 1], 30)
    weights = resample_weights(np.arange(30), 5, seed=2)
    _, per_class = bootstrap_distribution(y, probs, weights)
    for r in range(5):
        repeat = weights[r].astype(int)
        yy, pp = np.repeat(y, repeat), np.repeat(probs.argmax(1), repeat)
        cm = np.zeros((3, 3))
        np.add.at(cm, (yy, pp), 1)
        sens, spec = sensitivity_specificity(cm)
        ppv, npv = predictive_values(cm)
        for name, expected in (("sensitivity", sens), ("specificity", spec), ("ppv", ppv), ("npv", npv)):
            got = [None if np.isnan(v) else pytest.approx(v) for v in per_class[name][r]]
            assert got == expected, name


def test_intervals_sit_beside_the_values_and_are_reproducible():
    rng = np.random.default_rng(5)
    y = np.repeat([0, 1], 20)
    probs = np.clip(np.stack([1 - y, y], 1) * 0.6 + rng.random((40, 2)) * 0.5, 0, None)
    probs /= probs.sum(1, keepdims=True)
    ids = [f"p{i // 2}" for i in range(40)]
    first = classification_metrics(y, probs, ["neg", "pos"], patient_ids=ids, resamples=300)
    again = classification_metrics(y, probs, ["neg", "pos"], patient_ids=ids, resamples=300)
    assert first["ci"] == again["ci"] and first["bootstrap"]["patients"] == 20
    for name in ("accuracy", "macro_f1", "macro_auc"):
        bounds = first["ci"][name]
        assert bounds["ci_low"] <= first[name] <= bounds["ci_high"], name
    pos = first["per_class"]["pos"]
    assert set(pos["ci"]) == {"sensitivity", "specificity", "ppv", "npv", "f1", "auc", "ap"}
    assert pos["ppv"] == pytest.approx(pos["precision"])
    assert pos["ci"]["sensitivity"]["ci_low"] <= pos["sensitivity"] <= pos["ci"]["sensitivity"]["ci_high"]
    assert "ci" not in classification_metrics(y, probs, ["neg", "pos"], resamples=0)


def test_a_metric_no_resample_defines_has_no_interval():
    # no positive image at all: sensitivity and AUC of "pos" are undefined in every resample
    found = bootstrap_intervals([0] * 12, one_hot([0] * 10 + [1] * 2), ["neg", "pos"], resamples=200)
    assert found["per_class"]["pos"]["sensitivity"] == {"ci_low": None, "ci_high": None}
    assert found["per_class"]["pos"]["auc"] == {"ci_low": None, "ci_high": None}
    assert found["ci"]["macro_auc"] == {"ci_low": None, "ci_high": None}
    assert found["per_class"]["pos"]["specificity"]["ci_high"] <= 1.0
