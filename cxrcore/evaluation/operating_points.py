"""Operating points: the thresholds that turn a class's calibrated probability into a yes/no decision.

A probability is not a decision. Per class (one-vs-rest: "is it this class?"), two thresholds are
chosen on the **validation split**, on calibrated probabilities, once at the end of training:

- ``sensitivity``: the highest threshold at which at least the target share of the class's
  validation images are called positive (default target :data:`DEFAULT_TARGET_SENSITIVITY`,
  the run's ``target_sensitivity``): a screening threshold that misses few cases;
- ``youden``: the threshold that maximises Youden's J = sensitivity + specificity - 1 on the
  validation split (the highest one when several tie).

An image is called positive for a class when its probability is **at or above** the threshold.
The thresholds are then applied unchanged to the test split and every external dataset, where
sensitivity, specificity, PPV and NPV are measured with 95% intervals (bootstrap over patients).
Choosing them anywhere but on the validation split would report an optimistic test result.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..stats.intervals import DEFAULT_RESAMPLES, decision_intervals

DEFAULT_TARGET_SENSITIVITY = 0.95
#: the operating points, in the order they are offered; the first is the default
KINDS = ("sensitivity", "youden")
KIND_NAMES = {"sensitivity": "target sensitivity", "youden": "Youden's J"}


def threshold_for_sensitivity(scores, positive, target: float) -> float | None:
    """The highest threshold ``t`` with ``mean(scores[positive] >= t) >= target``; None without positives."""
    scores = np.asarray(scores, dtype=float)
    positive = np.asarray(positive, dtype=bool)
    found = np.sort(scores[positive])[::-1]
    if found.size == 0:
        return None
    needed = max(1, math.ceil(target * found.size - 1e-9))  # positives that must be at or above t
    return float(found[needed - 1])


def youden_threshold(scores, positive) -> float | None:
    """The threshold maximising sensitivity + specificity - 1 (the highest of tied ones);
    None without positives or negatives."""
    scores = np.asarray(scores, dtype=float)
    positive = np.asarray(positive, dtype=bool)
    if positive.all() or not positive.any():
        return None
    candidates = np.unique(scores)[::-1]  # every distinct score, highest first
    called = scores[None, :] >= candidates[:, None]  # (thresholds, n)
    sensitivity = (called & positive).sum(axis=1) / positive.sum()
    specificity = (~called & ~positive).sum(axis=1) / (~positive).sum()
    return float(candidates[int(np.argmax(sensitivity + specificity - 1))])


def choose(
    probs, y: Sequence[int], classes: Sequence[str], target_sensitivity: float = DEFAULT_TARGET_SENSITIVITY
) -> dict:
    """Thresholds per class and kind, chosen on (calibrated) validation probabilities: what
    ``operating_points.json`` holds. A class the split cannot choose for (no positives, or for
    Youden's J no negatives either) gets None for that kind."""
    p = np.asarray(probs, dtype=float)
    y = np.asarray(y, dtype=int)
    thresholds = {}
    for c, name in enumerate(classes):
        positive = y == c
        thresholds[name] = {
            "sensitivity": threshold_for_sensitivity(p[:, c], positive, target_sensitivity),
            "youden": youden_threshold(p[:, c], positive),
        }
    return {
        "target_sensitivity": float(target_sensitivity),
        "chosen_on": "val",
        "n": int(y.size),
        "thresholds": thresholds,
    }


def decide(probs, points: dict, classes: Sequence[str], kind: str) -> np.ndarray:
    """(n, k) booleans: probability at or above the class's ``kind`` threshold (never, where it has none)."""
    if kind not in KINDS:
        raise ValueError(f"operating point must be one of {', '.join(KINDS)}, got {kind!r}")
    p = np.atleast_2d(np.asarray(probs, dtype=float))
    limits = [points["thresholds"].get(name, {}).get(kind) for name in classes]
    limits = np.asarray([np.inf if t is None else t for t in limits])
    return p >= limits[None, :]


def evaluate(
    probs,
    y: Sequence[int],
    classes: Sequence[str],
    points: dict,
    patient_ids: Sequence[str] | None = None,
    *,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> dict:
    """The ``operating_points`` entry of metrics.json: per class and kind, the threshold (chosen on
    validation) and what it gives on these images, sensitivity, specificity, PPV and NPV with
    their intervals."""
    out = {}
    for kind in KINDS:
        called = decide(probs, points, classes, kind)
        rows = decision_intervals(y, called, patient_ids, resamples=resamples, seed=seed)
        for name, row in zip(classes, rows):
            threshold = points["thresholds"].get(name, {}).get(kind)
            out.setdefault(name, {})[kind] = {"threshold": threshold, **row} if threshold is not None else None
    return {
        "target_sensitivity": points["target_sensitivity"],
        "chosen_on": points.get("chosen_on", "val"),
        "classes": out,
    }
