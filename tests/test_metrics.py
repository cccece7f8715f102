"""Metrics on tiny cases whose answers were worked out by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cxrcore.evaluation.metrics import classification_metrics, per_class_table, sensitivity_specificity, summary


def binary(p_positive):
    p = np.asarray(p_positive, dtype=float)
    return np.stack([1 - p, p], axis=1)


def test_binary_auc_is_three_quarters():
    # Positives score 0.35 and 0.8, negatives 0.1 and 0.4: of the 4 positive/negative
    # pairs, 3 are ranked correctly (0.35 < 0.4 is the miss) -> AUC 0.75.
    m = classification_metrics([0, 0, 1, 1], binary([0.1, 0.4, 0.35, 0.8]), ["neg", "pos"])
    assert m["per_class"]["pos"]["auc"] == pytest.approx(0.75)
    assert m["per_class"]["neg"]["auc"] == pytest.approx(0.75)
    assert m["macro_auc"] == pytest.approx(0.75)


def test_binary_counts_accuracy_sensitivity_specificity():
    # threshold by argmax: predictions neg, neg, neg, pos  (0.35 -> neg)
    m = classification_metrics([0, 0, 1, 1], binary([0.1, 0.4, 0.35, 0.8]), ["neg", "pos"])
    assert m["confusion_matrix"] == [[2, 0], [1, 1]]
    assert m["accuracy"] == pytest.approx(0.75)
    pos = m["per_class"]["pos"]
    assert pos["sensitivity"] == pytest.approx(0.5)  # 1 of 2 positives found
    assert pos["specificity"] == pytest.approx(1.0)  # no negative called positive
    assert pos["precision"] == pytest.approx(1.0)
    assert pos["f1"] == pytest.approx(2 * 1.0 * 0.5 / 1.5)
    assert m["per_class"]["neg"]["precision"] == pytest.approx(2 / 3)
    assert m["confusion_matrix_normalized"] == [[1.0, 0.0], [0.5, 0.5]]


def test_average_precision_hand_computed():
    # ranking by p(pos): 0.8 (pos), 0.4 (neg), 0.35 (pos), 0.1 (neg)
    # AP = sum over positives of precision at their rank / 2 = (1/1 + 2/3) / 2
    m = classification_metrics([0, 0, 1, 1], binary([0.1, 0.4, 0.35, 0.8]), ["neg", "pos"])
    assert m["per_class"]["pos"]["ap"] == pytest.approx((1 + 2 / 3) / 2)


def test_three_class_confusion_and_macro_f1():
    y = [0, 0, 1, 1, 2, 2]
    pred = [0, 1, 1, 1, 2, 0]
    probs = np.eye(3)[pred] * 0.8 + 0.2 / 3
    m = classification_metrics(y, probs, ["a", "b", "c"])
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    # per-class F1: a: p=1/2 r=1/2 -> 0.5; b: p=2/3 r=1 -> 0.8; c: p=1 r=1/2 -> 2/3
    assert m["per_class"]["a"]["f1"] == pytest.approx(0.5)
    assert m["per_class"]["b"]["f1"] == pytest.approx(0.8)
    assert m["per_class"]["c"]["f1"] == pytest.approx(2 / 3)
    assert m["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert m["accuracy"] == pytest.approx(4 / 6)
    # class c: TN = images not c and not predicted c = 4, FP = 0 -> specificity 1
    assert m["per_class"]["c"]["specificity"] == pytest.approx(1.0)
    assert m["per_class"]["a"]["specificity"] == pytest.approx(3 / 4)


def test_perfect_scores_give_auc_one():
    y = [0, 1, 2, 0, 1, 2]
    m = classification_metrics(y, np.eye(3)[y], ["a", "b", "c"])
    assert m["macro_auc"] == pytest.approx(1.0)
    assert m["micro_auc"] == pytest.approx(1.0)
    assert all(c["auc"] == pytest.approx(1.0) for c in m["per_class"].values())


def test_class_without_examples_has_no_auc_not_a_made_up_one():
    y = [0, 0, 1, 1]  # class "c" never occurs
    probs = np.array([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.3, 0.6, 0.1]])
    m = classification_metrics(y, probs, ["a", "b", "c"])
    assert m["per_class"]["c"]["auc"] is None
    assert m["roc"]["c"] is None
    assert m["per_class"]["c"]["support"] == 0
    assert m["macro_auc"] == pytest.approx(1.0)  # mean over the classes that have one


def test_result_is_strict_json():
    m = classification_metrics([0, 1, 1], binary([0.2, 0.9, 0.6]), ["n", "p"])
    text = json.dumps(m, allow_nan=False)  # ROC thresholds start at +inf: must be mapped to null
    assert json.loads(text)["roc"]["p"]["thresholds"][0] is None
    shown = summary(m)
    assert {k: shown[k] for k in ("accuracy", "macro_f1", "macro_auc", "n")} == {
        "accuracy": 1.0,
        "macro_f1": 1.0,
        "macro_auc": 1.0,
        "n": 3,
    }
    assert shown["ci"]["accuracy"] == {"ci_low": 1.0, "ci_high": 1.0}  # every resample is all correct
    assert shown["bootstrap"]["patients"] == 3 and shown["bootstrap"]["images_without_patient_id"] == 3


def test_sensitivity_specificity_from_matrix():
    cm = np.array([[5, 1], [2, 2]])
    sens, spec = sensitivity_specificity(cm)
    assert sens == [pytest.approx(5 / 6), pytest.approx(0.5)]
    assert spec == [pytest.approx(0.5), pytest.approx(5 / 6)]


def test_per_class_table_has_a_macro_row():
    m = classification_metrics([0, 1], binary([0.2, 0.9]), ["n", "p"])
    rows = per_class_table(m)
    assert [r["class"] for r in rows] == ["n", "p", "macro avg"]
    assert rows[-1]["support"] == 2


@pytest.mark.parametrize(
    "y, probs, message",
    [
        ([0, 1], np.ones((3, 2)) / 2, "probs must be"),
        ([0, 1], np.ones((2, 3)) / 3, "probs must be"),
        ([0, 5], np.ones((2, 2)) / 2, "outside"),
        ([], np.ones((0, 2)), "no samples"),
    ],
)
def test_invalid_inputs_raise(y, probs, message):
    with pytest.raises(ValueError, match=message):
        classification_metrics(y, probs, ["a", "b"])
