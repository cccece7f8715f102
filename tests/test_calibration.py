"""Temperature scaling, ECE, Brier and reliability bins on hand-worked cases."""

from __future__ import annotations

import numpy as np
import pytest

from cxrcore.evaluation.calibration import (
    apply_temperature,
    brier_score,
    calibration_report,
    expected_calibration_error,
    fit_temperature,
    reliability,
)


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_temperature_scaling_recovers_a_known_temperature():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(20000, 3))
    true = softmax(z)
    y = np.array([rng.choice(3, p=row) for row in true])
    overconfident = softmax(3 * z)  # log of it / 3 gives back z (up to a constant per row)
    assert fit_temperature(overconfident, y) == pytest.approx(3.0, rel=0.05)
    np.testing.assert_allclose(apply_temperature(overconfident, 3.0), true, atol=1e-9)
    # already calibrated: T stays near 1
    assert fit_temperature(true, y) == pytest.approx(1.0, rel=0.05)


def test_temperature_stays_in_its_bounds_and_keeps_the_argmax():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    y = np.array([0, 1, 0])  # every prediction right: NLL falls as T -> 0, stopped at the lower bound
    t = fit_temperature(probs, y)
    assert 0.05 <= t <= 0.06
    scaled = apply_temperature(probs, t)
    np.testing.assert_allclose(scaled.sum(axis=1), 1.0)
    assert (scaled.argmax(axis=1) == probs.argmax(axis=1)).all()


def test_apply_temperature_one_is_the_identity():
    probs = np.array([[0.7, 0.2, 0.1], [0.05, 0.05, 0.9]])
    np.testing.assert_array_equal(apply_temperature(probs, 1.0), probs)
    with pytest.raises(ValueError):
        apply_temperature(probs, 0.0)


def test_ece_of_a_perfectly_calibrated_case_is_zero():
    # "0.75 class 0" said four times, and three of the four are class 0
    probs = np.array([[0.75, 0.25]] * 4)
    y = np.array([0, 0, 0, 1])
    np.testing.assert_allclose(expected_calibration_error(probs, y), [0.0, 0.0], atol=1e-12)


def test_ece_equals_the_hand_computed_value():
    # class 0: p 0.9, 0.9 (bin 13, observed 1 of 2), 0.3 (bin 4, observed 0), 0.65 (bin 9, observed 1)
    #   ECE = 2/4 * |0.9 - 0.5| + 1/4 * |0.3 - 0| + 1/4 * |0.65 - 1| = 0.2 + 0.075 + 0.0875 = 0.3625
    # class 1 is its mirror image (two classes), so the same value
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.3, 0.7], [0.65, 0.35]])
    y = np.array([0, 1, 1, 0])
    np.testing.assert_allclose(expected_calibration_error(probs, y), [0.3625, 0.3625])
    bins = reliability(probs, y, classes=["a", "b"])
    assert bins["a"]["count"] == [1, 1, 2]
    np.testing.assert_allclose(bins["a"]["predicted"], [0.3, 0.65, 0.9])
    np.testing.assert_allclose(bins["a"]["observed"], [0.0, 1.0, 0.5])


def test_brier_score_by_hand():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4]])
    y = np.array([0, 1, 0])
    # class 0: (0.3² + 0.1² + 0.7²) / 3 = 0.59 / 3; class 1: (0.2² + 0.2² + 0.3²) / 3 = 0.17 / 3;
    # class 2: (0.1² + 0.1² + 0.4²) / 3 = 0.18 / 3
    np.testing.assert_allclose(brier_score(probs, y), [0.59 / 3, 0.17 / 3, 0.18 / 3])


def test_calibration_report_shape():
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.3, 0.7], [0.65, 0.35]])
    y = np.array([0, 1, 1, 0])
    report = calibration_report(probs, y, ["a", "b"], 2.0)
    assert report["temperature"] == 2.0 and report["fitted_on"] == "val"
    assert report["ece"]["before"] == pytest.approx({"a": 0.3625, "b": 0.3625, "mean": 0.3625})
    assert set(report["brier"]["after"]) == {"a", "b", "mean"}
    assert set(report["reliability"]["a"]) == {"predicted", "observed", "count"}
    assert sum(report["reliability"]["b"]["count"]) == 4
