"""Operating points, with thresholds and rates worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from cxrcore.evaluation import operating_points as ops
from cxrcore.stats.intervals import decision_intervals


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (0.8, 0.6),  # 4 of 5 positives must be at or above: the 4th highest, 0.6
        (0.6, 0.7),  # 3 of 5 (0.6 x 5 = 3 exactly, not 4)
        (0.95, 0.1),  # ceil(4.75) = 5: every positive
        (0.2, 0.9),  # 1 of 5
    ],
)
def test_threshold_for_a_target_sensitivity(target, expected):
    scores = np.array([0.9, 0.05, 0.8, 0.95, 0.7, 0.6, 0.3, 0.1])
    positive = np.array([1, 0, 1, 0, 1, 1, 0, 1], dtype=bool)
    threshold = ops.threshold_for_sensitivity(scores, positive, target)
    assert threshold == expected
    assert (scores[positive] >= threshold).mean() >= target


def test_threshold_with_tied_scores_and_without_positives():
    assert ops.threshold_for_sensitivity([0.5, 0.5, 0.5, 0.2], [1, 1, 1, 1], 0.5) == 0.5
    assert ops.threshold_for_sensitivity([0.5, 0.2], [0, 0], 0.9) is None


def test_youden_threshold_takes_the_highest_of_tied_maxima():
    # positives 0.9, 0.8, 0.4; negatives 0.7, 0.3, 0.2. J at each threshold:
    # 0.9: 1/3 + 1 - 1 = 0.333; 0.8: 2/3; 0.7: 2/3 + 2/3 - 1 = 0.333; 0.4: 1 + 2/3 - 1 = 2/3; 0.3: 1/3
    scores = [0.9, 0.8, 0.4, 0.7, 0.3, 0.2]
    positive = [1, 1, 1, 0, 0, 0]
    assert ops.youden_threshold(scores, positive) == 0.8
    assert ops.youden_threshold([0.1, 0.2], [1, 1]) is None  # no negatives: nothing to balance


def _two_class(p_first):
    p = np.asarray(p_first, dtype=float)
    return np.stack([p, 1 - p], axis=1)


def test_chosen_on_validation_applied_unchanged_to_test():
    classes = ["Abnormal", "Normal"]
    val = _two_class([0.9, 0.8, 0.6, 0.4, 0.3, 0.1])
    y_val = [0, 0, 0, 0, 1, 1]  # Abnormal scores 0.9, 0.8, 0.6, 0.4; Normal (as Abnormal) 0.3, 0.1
    points = ops.choose(val, y_val, classes, target_sensitivity=0.75)
    # Abnormal: 3 of 4 at or above -> 0.6. Youden: at 0.4 every Abnormal and no Normal -> J = 1.
    assert points["thresholds"]["Abnormal"] == {"sensitivity": 0.6, "youden": 0.4}
    # Normal's probabilities are 0.7 and 0.9 for its two images: 2 of 2 needed for 0.75 -> 0.7
    assert points["thresholds"]["Normal"]["sensitivity"] == pytest.approx(0.7)
    assert points["chosen_on"] == "val" and points["target_sensitivity"] == 0.75

    test = _two_class([0.95, 0.65, 0.5, 0.45, 0.62, 0.2])
    y_test = [0, 0, 0, 1, 1, 1]
    found = ops.evaluate(test, y_test, classes, points, resamples=200)
    at_target = found["classes"]["Abnormal"]["sensitivity"]
    # threshold 0.6 on test: called 0.95, 0.65, 0.62 -> TP 2 (0.95, 0.65), FN 1 (0.5), FP 1 (0.62), TN 2
    assert at_target["threshold"] == 0.6
    assert at_target["sensitivity"] == pytest.approx(2 / 3)
    assert at_target["specificity"] == pytest.approx(2 / 3)
    assert at_target["ppv"] == pytest.approx(2 / 3)
    assert at_target["npv"] == pytest.approx(2 / 3)
    youden = found["classes"]["Abnormal"]["youden"]
    # threshold 0.4: called all but 0.2 -> TP 3, FP 2, TN 1
    assert (youden["sensitivity"], youden["specificity"], youden["ppv"], youden["npv"]) == pytest.approx(
        (1.0, 1 / 3, 3 / 5, 1.0)
    )
    for point in (at_target, youden):
        for name in ("sensitivity", "specificity", "ppv", "npv"):
            ci = point["ci"][name]
            assert ci["ci_low"] <= point[name] <= ci["ci_high"]


def test_a_class_the_validation_split_cannot_choose_for_gets_no_threshold():
    classes = ["A", "B", "C"]
    val = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1]])
    points = ops.choose(val, [0, 1, 0], classes)
    assert points["thresholds"]["C"] == {"sensitivity": None, "youden": None}
    called = ops.decide(np.array([[0.1, 0.1, 0.99]]), points, classes, "sensitivity")
    assert called[0, 2] == np.False_  # no threshold: never positive
    found = ops.evaluate(val, [0, 1, 0], classes, points, resamples=50)
    assert found["classes"]["C"]["sensitivity"] is None
    with pytest.raises(ValueError, match="operating point"):
        ops.decide(val, points, classes, "f1")


def test_decision_intervals_count_by_hand_and_resample_patients():
    y = [0, 0, 1, 1]
    called = np.array([[1, 0], [0, 1], [0, 1], [1, 0]])
    rows = decision_intervals(y, called, resamples=300, seed=1)
    # class 0: TP 1, FN 1, FP 1, TN 1
    assert (rows[0]["sensitivity"], rows[0]["specificity"], rows[0]["ppv"], rows[0]["npv"]) == (0.5, 0.5, 0.5, 0.5)
    # one patient holding every image: each resample draws that patient, so the interval has no width
    same = decision_intervals(y, called, ["p"] * 4, resamples=300, seed=1)
    assert same[0]["ci"]["sensitivity"] == {"ci_low": 0.5, "ci_high": 0.5}
    assert rows[0]["ci"]["sensitivity"]["ci_low"] < 0.5 < rows[0]["ci"]["sensitivity"]["ci_high"]
