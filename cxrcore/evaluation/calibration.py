"""Probability calibration as pure functions: temperature scaling and how far off probabilities are.

A classifier can rank images well (high AUC) and still say "0.99" when it is right only 80% of
the time. Temperature scaling (Guo et al. 2017) corrects that with a single number fitted on the
validation split: ``p_T = softmax(log p / T)``. ``T > 1`` softens over-confident probabilities,
``T < 1`` sharpens timid ones; the predicted class (the argmax) never changes, so accuracy,
the confusion matrix and (per class) the ranking behind ROC curves stay as they were.

How far off probabilities are is measured per class, one-vs-rest (class ``c``'s probability
against "is it ``c``"):

- **ECE** (expected calibration error): the predicted probabilities are put in
  :data:`DEFAULT_BINS` (15) equal-width bins over [0, 1] (bin ``b`` holds ``b/15 <= p < (b+1)/15``,
  the last one also ``p = 1``); ECE is the mean over bins, weighted by the share of images in
  each, of ``|mean predicted probability - observed frequency of c|``. 0 is perfectly calibrated.
- **Brier score**: the mean squared difference between class ``c``'s probability and 1 (it is
  ``c``) or 0 (it is not). Lower is better; it mixes calibration and discrimination.
- **reliability**: per non-empty bin, the mean predicted probability, the observed frequency
  and the number of images: the points of a reliability diagram.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy.optimize import minimize_scalar

#: equal-width bins over [0, 1] for ECE and reliability diagrams
DEFAULT_BINS = 15
#: the range a fitted temperature is kept in
T_BOUNDS = (0.05, 20.0)
_EPS = 1e-12


def _log_probs(probs) -> np.ndarray:
    p = np.asarray(probs, dtype=float)
    if p.ndim != 2:
        raise ValueError(f"probs must be (n, k), got shape {p.shape}")
    return np.log(np.clip(p, _EPS, 1.0))


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def apply_temperature(probs, temperature: float) -> np.ndarray:
    """``softmax(log p / T)`` row by row; ``T = 1`` returns the probabilities unchanged."""
    p = np.asarray(probs, dtype=float)
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a positive number, got {temperature}")
    if temperature == 1.0:
        return p.copy()
    return np.exp(_log_softmax(_log_probs(p) / temperature))


def nll(probs, y: Sequence[int]) -> float:
    """Mean negative log-likelihood of the true classes."""
    y = np.asarray(y, dtype=int).ravel()
    return float(-_log_probs(probs)[np.arange(y.size), y].mean())


def fit_temperature(probs, y: Sequence[int], bounds: tuple[float, float] = T_BOUNDS) -> float:
    """The temperature ``T`` in ``bounds`` minimising the NLL of ``softmax(log p / T)`` on (probs, y);
    1.0 when there is nothing to fit (no samples)."""
    y = np.asarray(y, dtype=int).ravel()
    logp = _log_probs(probs)
    if y.size == 0:
        return 1.0
    if logp.shape[0] != y.size:
        raise ValueError(f"probs has {logp.shape[0]} rows for {y.size} labels")
    rows = np.arange(y.size)

    def loss(log_t: float) -> float:
        return float(-_log_softmax(logp / math.exp(log_t))[rows, y].mean())

    found = minimize_scalar(
        loss, bounds=(math.log(bounds[0]), math.log(bounds[1])), method="bounded", options={"xatol": 1e-6}
    )
    return float(math.exp(found.x))


def _bin_index(p: np.ndarray, bins: int) -> np.ndarray:
    return np.minimum((p * bins).astype(int), bins - 1)


def reliability_bins(p: np.ndarray, hit: np.ndarray, bins: int = DEFAULT_BINS) -> dict:
    """For one class: ``predicted``, ``observed`` and ``count`` per non-empty bin (lists, in bin order)."""
    p, hit = np.asarray(p, dtype=float).ravel(), np.asarray(hit, dtype=float).ravel()
    index = _bin_index(p, bins)
    count = np.bincount(index, minlength=bins)
    predicted = np.bincount(index, weights=p, minlength=bins)
    observed = np.bincount(index, weights=hit, minlength=bins)
    keep = count > 0
    return {
        "predicted": (predicted[keep] / count[keep]).tolist(),
        "observed": (observed[keep] / count[keep]).tolist(),
        "count": count[keep].astype(int).tolist(),
    }


def _one_vs_rest(probs, y) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(probs, dtype=float)
    y = np.asarray(y, dtype=int).ravel()
    if p.ndim != 2 or p.shape[0] != y.size:
        raise ValueError(f"probs must be (n, k) with n = {y.size}, got {p.shape}")
    return p, np.eye(p.shape[1])[y]


def expected_calibration_error(probs, y: Sequence[int], bins: int = DEFAULT_BINS) -> np.ndarray:
    """ECE per class (k,), one-vs-rest, over ``bins`` equal-width bins (see the module docstring)."""
    p, onehot = _one_vs_rest(probs, y)
    out = []
    for c in range(p.shape[1]):
        found = reliability_bins(p[:, c], onehot[:, c], bins)
        count = np.asarray(found["count"], dtype=float)
        gap = np.abs(np.asarray(found["predicted"]) - np.asarray(found["observed"]))
        out.append(float((count * gap).sum() / count.sum()) if count.sum() else float("nan"))
    return np.asarray(out)


def brier_score(probs, y: Sequence[int]) -> np.ndarray:
    """Brier score per class (k,), one-vs-rest: mean of ``(p_c - [y == c])**2``."""
    p, onehot = _one_vs_rest(probs, y)
    return ((p - onehot) ** 2).mean(axis=0)


def reliability(probs, y: Sequence[int], bins: int = DEFAULT_BINS, classes: Sequence[str] | None = None) -> dict:
    """Per class (keyed by name, or index without ``classes``): :func:`reliability_bins`."""
    p, onehot = _one_vs_rest(probs, y)
    names = list(classes) if classes is not None else list(range(p.shape[1]))
    return {name: reliability_bins(p[:, c], onehot[:, c], bins) for c, name in enumerate(names)}


def per_class_values(values: np.ndarray, classes: Sequence[str]) -> dict:
    """One number per class, keyed by name (None where not finite), and ``mean``: the mean of the finite
    ones (None when there are none): how ECE and Brier are written in metrics.json."""
    out = {name: (float(v) if math.isfinite(v) else None) for name, v in zip(classes, values)}
    finite = [float(v) for v in values if math.isfinite(v)]
    out["mean"] = float(np.mean(finite)) if finite else None
    return out


def calibration_report(
    raw_probs,
    y: Sequence[int],
    classes: Sequence[str],
    temperature: float,
    fitted_on: str = "val",
    bins: int = DEFAULT_BINS,
) -> dict:
    """The ``calibration`` entry of metrics.json: the temperature, ECE and Brier per class (and their
    mean) before (raw) and after (calibrated), and the calibrated reliability diagram's points."""
    calibrated = apply_temperature(raw_probs, temperature)
    return {
        "temperature": float(temperature),
        "fitted_on": fitted_on,
        "bins": int(bins),
        "ece": {
            "before": per_class_values(expected_calibration_error(raw_probs, y, bins), classes),
            "after": per_class_values(expected_calibration_error(calibrated, y, bins), classes),
        },
        "brier": {
            "before": per_class_values(brier_score(raw_probs, y), classes),
            "after": per_class_values(brier_score(calibrated, y), classes),
        },
        "reliability": reliability(calibrated, y, bins, classes),
    }
