"""95% confidence intervals by bootstrap over patients, vectorised.

Images of one patient are not independent: resampling images would make every interval
too narrow. So the unit resampled is the patient (an image without a patient id counts
as its own patient, and the result says how many did). Each resample is a vector of
counts per patient; every metric is computed from count-weighted sums, so the whole
bootstrap is a few matrix products, not a loop over resamples.

Metrics (one-vs-rest per class): sensitivity, specificity, PPV, NPV, F1, ROC-AUC, average
precision; overall: accuracy, macro F1, macro AUC, macro AP. The weighted AUC is the Mann-Whitney
statistic (ties count a half) and the weighted average precision is scikit-learn's
step-wise definition, so with all weights 1 both equal ``roc_auc_score`` and
``average_precision_score``. Intervals are percentile intervals; a metric undefined in
a resample (no positive patient drawn) is left out of that resample's count, and an
interval is ``None`` when fewer than half the resamples define it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

DEFAULT_RESAMPLES = 1000
DEFAULT_LEVEL = 0.95
PER_CLASS = ("sensitivity", "specificity", "ppv", "npv", "f1", "auc", "ap")
OVERALL = ("accuracy", "macro_f1", "macro_auc", "macro_ap")


def patient_groups(patient_ids: Sequence[str] | None, n: int) -> tuple[np.ndarray, int]:
    """Group index per image (0..P-1) and how many images had no patient id (each its own group)."""
    ids = ["" if p is None or (isinstance(p, float) and np.isnan(p)) else str(p) for p in (patient_ids or [""] * n)]
    if len(ids) != n:
        raise ValueError(f"{len(ids)} patient ids for {n} images")
    keys = [p if p else f"\0image-{i}" for i, p in enumerate(ids)]
    _, groups = np.unique(np.asarray(keys, dtype=object).astype(str), return_inverse=True)
    return groups.astype(np.int64), sum(1 for p in ids if not p)


def resample_weights(groups: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """(resamples, n) image weights: how often each image's patient was drawn in each resample."""
    n_groups = int(groups.max()) + 1
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_groups, size=(resamples, n_groups))
    counts = np.zeros((resamples, n_groups))
    np.add.at(counts, (np.repeat(np.arange(resamples), n_groups), draws.ravel()), 1.0)
    return counts[:, groups]


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def finite_or_none(value) -> float | None:
    """``float(value)``, or None where it is not finite (NaN, infinite): a number as it goes into JSON."""
    value = float(value)
    return value if np.isfinite(value) else None


def mean_over_defined(values: np.ndarray) -> np.ndarray:
    """Per row of ``values`` (R, k): the mean over the columns that row defines (finite ones); NaN where
    it defines none. A macro average per resample, over the classes that resample could measure."""
    defined = np.isfinite(values)
    return _ratio(np.where(defined, values, 0.0).sum(axis=1), defined.sum(axis=1))


def weighted_auc_ap(weights: np.ndarray, positive: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weighted one-vs-rest ROC-AUC and average precision for each row of ``weights`` (R, n)."""
    order = np.argsort(scores, kind="stable")  # ascending; ties grouped into one level each
    sorted_scores = scores[order]
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    pos = np.add.reduceat((weights * positive)[:, order], starts, axis=1)  # (R, levels) positive weight
    neg = np.add.reduceat((weights * ~positive)[:, order], starts, axis=1)
    total_pos, total_neg = pos.sum(axis=1), neg.sum(axis=1)
    below = np.cumsum(neg, axis=1) - neg  # negatives strictly below each score
    auc = _ratio((pos * (below + 0.5 * neg)).sum(axis=1), total_pos * total_neg)
    tp = np.cumsum(pos[:, ::-1], axis=1)  # thresholds from the top score down
    fp = np.cumsum(neg[:, ::-1], axis=1)
    precision = _ratio(tp, tp + fp)
    ap = _ratio((pos[:, ::-1] * np.nan_to_num(precision)).sum(axis=1), total_pos)
    return auc, ap


def decision_rates(weights: np.ndarray, truth: np.ndarray, called: np.ndarray) -> tuple[tuple, dict[str, np.ndarray]]:
    """Weighted one-vs-rest counts ``(tp, fn, fp, tn)`` and rates (sensitivity, specificity, PPV, NPV),
    each (R, k), for decisions ``called`` (n, k of 0/1) against ``truth`` (n, k one-hot)."""
    total = weights.sum(axis=1, keepdims=True)
    tp = weights @ (truth * called)
    fn = weights @ (truth * (1 - called))
    fp = weights @ ((1 - truth) * called)
    tn = total - tp - fn - fp
    rates = {
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "ppv": _ratio(tp, tp + fp),
        "npv": _ratio(tn, tn + fn),
    }
    return (tp, fn, fp, tn), rates


def percentile_interval(values: np.ndarray, level: float = DEFAULT_LEVEL, enough: int = 0) -> dict:
    """``{ci_low, ci_high}``: the percentile interval of a metric's finite values over resamples
    (``None`` for both when fewer than ``enough`` resamples define it)."""
    finite = values[np.isfinite(values)]
    if finite.size == 0 or finite.size < enough:
        return {"ci_low": None, "ci_high": None}
    low, high = np.percentile(finite, [50 * (1 - level), 50 * (1 + level)])
    return {"ci_low": float(low), "ci_high": float(high)}


def decision_intervals(
    y_true: Sequence[int],
    called: np.ndarray,
    patient_ids: Sequence[str] | None = None,
    *,
    resamples: int = DEFAULT_RESAMPLES,
    level: float = DEFAULT_LEVEL,
    seed: int = 0,
) -> list[dict]:
    """Per class (one-vs-rest) of yes/no decisions ``called`` (n, k): sensitivity, specificity, PPV and
    NPV, each with its interval by bootstrap over patients: ``[{"sensitivity": v, ..., "ci": {...}}, ...]``."""
    y = np.asarray(y_true, dtype=int)
    called = np.asarray(called, dtype=float)
    truth = np.eye(called.shape[1])[y]
    _, point = decision_rates(np.ones((1, y.size)), truth, called)
    groups, _ = patient_groups(patient_ids, y.size)
    _, spread = decision_rates(resample_weights(groups, resamples, seed), truth, called)
    out = []
    for c in range(called.shape[1]):
        row = {name: (float(v[0, c]) if np.isfinite(v[0, c]) else None) for name, v in point.items()}
        row["ci"] = {name: percentile_interval(v[:, c], level, resamples // 2) for name, v in spread.items()}
        out.append(row)
    return out


def bootstrap_distribution(
    y: np.ndarray, probs: np.ndarray, weights: np.ndarray
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Every metric for each resample: ({overall name: (R,)}, {per-class name: (R, k)})."""
    y, probs = np.asarray(y, dtype=int), np.asarray(probs, dtype=float)
    k = probs.shape[1]
    pred = probs.argmax(axis=1)
    truth, called = np.eye(k)[y], np.eye(k)[pred]
    (tp, fn, fp, tn), per_class = decision_rates(weights, truth, called)
    f1 = np.nan_to_num(_ratio(2 * tp, 2 * tp + fp + fn))  # no support, no calls: 0, as sklearn
    per_class["f1"] = f1
    aucs, aps = zip(*(weighted_auc_ap(weights, y == c, probs[:, c]) for c in range(k)))
    per_class["auc"], per_class["ap"] = np.stack(aucs, axis=1), np.stack(aps, axis=1)

    overall = {
        "accuracy": _ratio(weights @ (pred == y).astype(float), weights.sum(axis=1)),
        "macro_f1": f1.mean(axis=1),
        "macro_auc": mean_over_defined(per_class["auc"]),
        "macro_ap": mean_over_defined(per_class["ap"]),
    }
    return overall, per_class


def bootstrap_intervals(
    y_true: Sequence[int],
    probs: np.ndarray,
    classes: Sequence[str],
    patient_ids: Sequence[str] | None = None,
    *,
    resamples: int = DEFAULT_RESAMPLES,
    level: float = DEFAULT_LEVEL,
    seed: int = 0,
) -> dict:
    """Percentile intervals for :data:`OVERALL` and, per class, :data:`PER_CLASS`:
    ``{"ci": {name: {ci_low, ci_high}}, "per_class": {class: {name: {...}}}, "bootstrap": {...}}``."""
    y = np.asarray(y_true, dtype=int)
    groups, without_id = patient_groups(patient_ids, y.size)
    weights = resample_weights(groups, resamples, seed)
    overall, per_class = bootstrap_distribution(y, probs, weights)

    def interval(values: np.ndarray) -> dict:
        return percentile_interval(values, level, resamples // 2)

    return {
        "ci": {name: interval(values) for name, values in overall.items()},
        "per_class": {
            name: {metric: interval(per_class[metric][:, c]) for metric in PER_CLASS} for c, name in enumerate(classes)
        },
        "bootstrap": bootstrap_record(groups, without_id, resamples, level, seed),
    }


def bootstrap_record(groups: np.ndarray, without_id: int, resamples: int, level: float, seed: int) -> dict:
    """The ``bootstrap`` entry of metrics.json: how the intervals were made (over which patients, how many
    resamples, at which level, from which seed), for ``groups`` and ``without_id`` of :func:`patient_groups`."""
    return {
        "resamples": int(resamples),
        "level": float(level),
        "seed": int(seed),
        "unit": "patient",
        "patients": int(groups.max()) + 1,
        "images_without_patient_id": int(without_id),
    }


def paired_differences(
    y_true: Sequence[int],
    probs_a: np.ndarray,
    probs_b: np.ndarray,
    patient_ids: Sequence[str] | None = None,
    *,
    resamples: int = DEFAULT_RESAMPLES,
    level: float = DEFAULT_LEVEL,
    seed: int = 0,
) -> dict:
    """Metric of ``a`` minus metric of ``b`` on the same images, for each :data:`OVERALL` metric:
    ``{name: {"difference", "ci_low", "ci_high"}}``. Each resample draws the same patients for both,
    so what the two share (which images happen to be hard) cancels: the interval is narrower than the
    two separate intervals suggest, and one that excludes 0 is a real difference."""
    y = np.asarray(y_true, dtype=int)
    groups, _ = patient_groups(patient_ids, y.size)
    weights = resample_weights(groups, resamples, seed)
    spread_a, _ = bootstrap_distribution(y, probs_a, weights)
    spread_b, _ = bootstrap_distribution(y, probs_b, weights)
    ones = np.ones((1, y.size))
    point_a, _ = bootstrap_distribution(y, probs_a, ones)
    point_b, _ = bootstrap_distribution(y, probs_b, ones)
    return {
        name: {
            "difference": float(point_a[name][0] - point_b[name][0]),
            **percentile_interval(spread_a[name] - spread_b[name], level, resamples // 2),
        }
        for name in OVERALL
    }
