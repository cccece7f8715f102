"""Metrics of a findings model: several findings per image, one sigmoid probability each.

Labels ``y`` are (n, k) floats: 1.0 present, 0.0 absent, NaN left out (CheXpert's uncertain or blank under
the ``ignore`` policies). A NaN leaves that image out of that finding's metrics only, never out of the
others'. Each finding is measured on its own, as a binary problem, with the single-label functions of
:mod:`.metrics`, :mod:`.operating_points`, :mod:`.calibration` and :mod:`cxrcore.stats.intervals`: the
finding's probability ``p`` is put in the two-class form ``[1 - p, p]`` (:func:`binary_form`) and its
class 1, one-vs-rest, is the finding itself.

A finding is measured only when the evaluated split has at least :data:`~cxrcore.data.findings.MIN_POSITIVES`
positive images and at least one negative one (and, when the training counts are given, training had at least
as many positives); the others are listed under ``not_evaluated`` with the reason, never given a number that
rests on a handful of images. The mean AUC and AP are over the evaluated findings.

95% intervals come from one bootstrap over patients (an image without a patient id is its own patient): each
resample weights every image by how often its patient was drawn, and every finding is measured on its labelled
images under those weights, so the mean over findings has an interval too (in each resample, the mean over
the evaluated findings that resample defines).

Calibration is temperature scaling per finding on the logit: ``sigmoid(logit(p) / T_j)``, which is the
two-class ``softmax(log [1 - p, p] / T)`` of :func:`.calibration.apply_temperature`, so that function fits
and applies it. Everything returned is JSON-serialisable (non-finite numbers are ``None``), except
:func:`predictions_table`'s DataFrame.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from ..data.findings import MIN_POSITIVES, findings_sets
from ..stats.intervals import (
    DEFAULT_LEVEL,
    DEFAULT_RESAMPLES,
    bootstrap_record,
    decision_rates,
    finite_or_none,
    mean_over_defined,
    patient_groups,
    percentile_interval,
    resample_weights,
    weighted_auc_ap,
)
from .calibration import (
    DEFAULT_BINS,
    T_BOUNDS,
    apply_temperature,
    brier_score,
    expected_calibration_error,
    fit_temperature,
    nll,
    per_class_values,
    reliability_bins,
)
from .metrics import pr_per_class, roc_per_class
from .operating_points import (
    DEFAULT_TARGET_SENSITIVITY,
    KINDS,
    decide,
    threshold_for_sensitivity,
    youden_threshold,
)

TASK = "findings"
#: the name of the "absent" class in :func:`binary_form`'s two-class form (never a finding's name)
_ABSENT = "\0absent"
#: the rates measured at an operating point, and its 2x2 counts
RATES = ("sensitivity", "specificity", "ppv", "npv")
COUNTS = ("tp", "fp", "fn", "tn")
#: the columns of :func:`per_finding_table`, in order
TABLE_COLUMNS = (
    *("finding", "n", "positives", "prevalence", "auc", "auc_ci_low", "auc_ci_high", "ap", "ap_ci_low", "ap_ci_high"),
    *(f"{kind}_{column}" for kind in KINDS for column in ("threshold", *RATES, *COUNTS)),
    "not_evaluated",
)


def binary_form(p) -> np.ndarray:
    """One finding's probabilities (n,) as (n, 2) ``[absent, present]``: the two-class form the single-label
    functions take, whose class 1 (one-vs-rest) is the finding."""
    p = np.asarray(p, dtype=float).ravel()
    return np.column_stack([1.0 - p, p])


def _check(probs, y, findings: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``probs`` and ``y`` as float arrays (n, k), checked: same shape, k findings, labels 1, 0 or NaN."""
    p = np.asarray(probs, dtype=float)
    labels = np.asarray(y, dtype=float)
    if p.ndim != 2 or labels.shape != p.shape:
        raise ValueError(f"probs and y must both be (n, k), got {p.shape} and {labels.shape}")
    if findings is not None and p.shape[1] != len(findings):
        raise ValueError(f"probs has {p.shape[1]} columns for {len(findings)} findings")
    if p.shape[0] == 0:
        raise ValueError("no images to evaluate")
    if not np.isfinite(p).all():
        raise ValueError("probs holds NaN or infinite values")
    given = labels[~np.isnan(labels)]
    odd = given[(given != 0.0) & (given != 1.0)]
    if odd.size:
        raise ValueError(f"labels must be 1.0, 0.0 or NaN (left out), found {odd[0]}")
    return p, labels


def _labelled(labels: np.ndarray, j: int) -> tuple[np.ndarray, np.ndarray]:
    """Finding ``j``'s labelled images (a mask over all n) and, among them, which are positive."""
    mask = ~np.isnan(labels[:, j])
    return mask, labels[mask, j] == 1.0


def _resampling(patient_ids, n: int, resamples: int, seed: int, level: float) -> tuple[np.ndarray, dict]:
    """(resamples, n) bootstrap weights over patients and the ``bootstrap`` entry saying how they were made
    (the keys :func:`cxrcore.stats.intervals.bootstrap_intervals` writes)."""
    groups, without_id = patient_groups(None if patient_ids is None else list(patient_ids), n)
    return resample_weights(groups, resamples, seed), bootstrap_record(groups, without_id, resamples, level, seed)


def choose_points(probs, y, findings: Sequence[str], target_sensitivity: float = DEFAULT_TARGET_SENSITIVITY) -> dict:
    """Thresholds per finding and kind, chosen on (calibrated) validation probabilities over each finding's
    labelled images: the format of :func:`.operating_points.choose`, so :func:`.operating_points.decide`
    takes it unchanged. A finding without positives (or, for Youden's J, without negatives) gets None."""
    p, labels = _check(probs, y, findings)
    thresholds = {}
    for j, name in enumerate(findings):
        mask, positive = _labelled(labels, j)
        thresholds[name] = {
            "sensitivity": threshold_for_sensitivity(p[mask, j], positive, target_sensitivity),
            "youden": youden_threshold(p[mask, j], positive),
        }
    return {
        "target_sensitivity": float(target_sensitivity),
        "chosen_on": "val",
        "n": int(p.shape[0]),
        "thresholds": thresholds,
    }


def _at_points(p, labels, findings, points, weights, level, only=None) -> dict:
    """``{finding: {kind: {threshold, rates, counts[, ci]} or None}}`` over each finding's labelled images
    (the findings in ``only``, or all); ``ci`` only with bootstrap ``weights``."""
    called = {kind: decide(p, points, findings, kind) for kind in KINDS}
    out = {}
    for j, name in enumerate(findings):
        if only is not None and name not in only:
            continue
        mask, positive = _labelled(labels, j)
        truth = positive.astype(float)[:, None]
        spread_weights = weights[:, mask] if weights is not None else None
        out[name] = {}
        for kind in KINDS:
            threshold = points["thresholds"].get(name, {}).get(kind)
            if threshold is None:
                out[name][kind] = None
                continue
            yes = called[kind][mask, j].astype(float)[:, None]
            counts, rates = decision_rates(np.ones((1, truth.shape[0])), truth, yes)
            tp, fn, fp, tn = (int(round(float(c[0, 0]))) for c in counts)
            entry = {"threshold": float(threshold), **{r: finite_or_none(rates[r][0, 0]) for r in RATES}}
            entry.update(tp=tp, fp=fp, fn=fn, tn=tn)
            if spread_weights is not None:
                _, spread = decision_rates(spread_weights, truth, yes)
                enough = spread_weights.shape[0] // 2
                entry["ci"] = {r: percentile_interval(spread[r][:, 0], level, enough) for r in RATES}
            out[name][kind] = entry
    return out


def evaluate_points(
    probs,
    y,
    findings: Sequence[str],
    points: dict,
    patient_ids: Sequence[str] | None = None,
    *,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> dict:
    """Per finding and kind (:data:`.operating_points.KINDS`): the threshold chosen on validation and what it
    gives on these images, over the finding's labelled ones: sensitivity, specificity, PPV, NPV, the 2x2
    counts and (``resamples`` > 0) the rates' 95% intervals by bootstrap over patients. None for a kind
    without a threshold."""
    p, labels = _check(probs, y, findings)
    weights = _resampling(patient_ids, p.shape[0], resamples, seed, DEFAULT_LEVEL)[0] if resamples > 0 else None
    return {
        "target_sensitivity": points["target_sensitivity"],
        "chosen_on": points.get("chosen_on", "val"),
        "findings": _at_points(p, labels, findings, points, weights, DEFAULT_LEVEL),
    }


def _images(count: int) -> str:
    return "no positive images" if count == 0 else f"{count} positive image{'s' if count != 1 else ''}"


def _why_not(positives: int, negatives: int, trained: int | None, min_positives: int) -> str | None:
    """Why a finding is not measured (reasons joined by "; "), or None when it is."""
    reasons = []
    if trained is not None and trained < min_positives:
        reasons.append(f"{_images(trained)} in training (fewer than {min_positives})")
    if positives == 0:
        reasons.append("no positive images in the evaluated split")
    elif positives < min_positives:
        reasons.append(f"{_images(positives)} in the evaluated split (fewer than {min_positives})")
    if negatives == 0:
        reasons.append("no negative images in the evaluated split")
    return "; ".join(reasons) or None


def findings_metrics(
    y,
    probs,
    findings: Sequence[str],
    *,
    patient_ids: Sequence[str] | None = None,
    train_positives: dict[str, int] | None = None,
    points: dict | None = None,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    min_positives: int = MIN_POSITIVES,
) -> dict:
    """All metrics of a findings model on one split: per evaluated finding its counts, AUC and AP (scikit-learn,
    on its labelled images) with 95% intervals, and its operating points when ``points`` (chosen on validation,
    :func:`choose_points`) are given; the findings not evaluated and why; the mean AUC and AP over the
    evaluated findings with their intervals; the ROC and precision-recall curves.

    ``train_positives`` (finding -> positive images in training) drops the findings training had fewer than
    ``min_positives`` positives of; a finding it does not name, or None, is not checked. With
    ``resamples`` = 0 there are no intervals (no ``ci`` and no ``bootstrap`` keys)."""
    p, labels = _check(probs, y, findings)
    n = p.shape[0]
    weights, bootstrap = _resampling(patient_ids, n, resamples, seed, DEFAULT_LEVEL) if resamples > 0 else (None, {})
    enough = resamples // 2
    per_finding, not_evaluated, roc, pr = {}, {}, {}, {}
    spread_auc, spread_ap = [], []
    for j, name in enumerate(findings):
        mask, positive = _labelled(labels, j)
        positives = int(positive.sum())
        negatives = int(mask.sum()) - positives
        trained = None if train_positives is None or name not in train_positives else int(train_positives[name])
        reason = _why_not(positives, negatives, trained, min_positives)
        if reason is not None:
            not_evaluated[name] = reason
            continue
        two_class, truth = binary_form(p[mask, j]), positive.astype(int)
        roc[name] = roc_per_class(truth, two_class, (_ABSENT, name))[name]
        pr[name] = pr_per_class(truth, two_class, (_ABSENT, name))[name]
        entry = {
            "n": int(mask.sum()),
            "positives": positives,
            "negatives": negatives,
            "left_out": int(n - mask.sum()),
            "prevalence": positives / int(mask.sum()),
            "auc": roc[name]["auc"],
            "ap": pr[name]["ap"],
        }
        if weights is not None:
            auc, ap = weighted_auc_ap(weights[:, mask], positive, p[mask, j])
            spread_auc.append(auc)
            spread_ap.append(ap)
            entry["ci"] = {"auc": percentile_interval(auc, DEFAULT_LEVEL, enough)}
            entry["ci"]["ap"] = percentile_interval(ap, DEFAULT_LEVEL, enough)
        per_finding[name] = entry
    evaluated = list(per_finding)
    if points is not None:
        operating = _at_points(p, labels, findings, points, weights, DEFAULT_LEVEL, only=set(evaluated))
        for name in evaluated:
            per_finding[name]["operating_points"] = operating[name]
    aucs = [per_finding[name]["auc"] for name in evaluated if per_finding[name]["auc"] is not None]
    aps = [per_finding[name]["ap"] for name in evaluated if per_finding[name]["ap"] is not None]
    mean_auc = float(np.mean(aucs)) if aucs else None
    mean_ap = float(np.mean(aps)) if aps else None
    result = {
        "task": TASK,
        "n": int(n),
        "findings": per_finding,
        "not_evaluated": not_evaluated,
        "evaluated": evaluated,
        "mean_auc": mean_auc,
        "macro_auc": mean_auc,
        "mean_ap": mean_ap,
        "macro_ap": mean_ap,
    }
    if points is not None:
        result["operating_points"] = {
            "target_sensitivity": points["target_sensitivity"],
            "chosen_on": points.get("chosen_on", "val"),
        }
    if weights is not None:

        def mean_interval(spread: list[np.ndarray]) -> dict:
            if not spread:
                return {"ci_low": None, "ci_high": None}
            return percentile_interval(mean_over_defined(np.stack(spread, axis=1)), DEFAULT_LEVEL, enough)

        auc_ci, ap_ci = mean_interval(spread_auc), mean_interval(spread_ap)
        result["ci"] = {"mean_auc": auc_ci, "macro_auc": auc_ci, "mean_ap": ap_ci, "macro_ap": ap_ci}
        result["bootstrap"] = bootstrap
    result["roc"], result["pr"] = roc, pr
    return result


def fit_temperatures(
    probs, y, bounds: tuple[float, float] = T_BOUNDS, min_positives: int = MIN_POSITIVES
) -> list[float]:
    """One temperature per finding, in ``bounds``, minimising the binary NLL of ``sigmoid(logit(p) / T)`` on
    the finding's labelled images (:func:`.calibration.fit_temperature` on :func:`binary_form`); 1.0 (left as
    the network gives it) for a finding with fewer than ``min_positives`` positive or negative images there
    (:func:`unfitted` says which): a temperature fitted on a handful of images lands on a bound of its range,
    and 20 turns every probability of the finding into about 0.5."""
    p, labels = _check(probs, y)
    out = []
    for j in range(p.shape[1]):
        mask, positive = _labelled(labels, j)
        if min(int(positive.sum()), int((~positive).sum())) < max(1, min_positives):
            out.append(1.0)
            continue
        out.append(fit_temperature(binary_form(p[mask, j]), positive.astype(int), bounds))
    return out


def unfitted(y, findings: Sequence[str], min_positives: int = MIN_POSITIVES) -> dict[str, str]:
    """The findings :func:`fit_temperatures` leaves at 1.0, with the reason: ``{finding: reason}``."""
    labels = np.asarray(y, dtype=float)
    out = {}
    for j, name in enumerate(findings):
        mask, positive = _labelled(labels, j)
        counts = {"positive": int(positive.sum()), "negative": int((~positive).sum())}
        short = [f"{n} {kind} image{'s' if n != 1 else ''}" for kind, n in counts.items() if n < min_positives]
        if short:
            out[name] = f"{' and '.join(short)} on validation (fewer than {min_positives}): left uncalibrated"
    return out


def apply_temperatures(probs, temperatures: Sequence[float]) -> np.ndarray:
    """``sigmoid(logit(p_j) / T_j)`` per finding ``j`` (logits of 0 and 1 clipped as
    :func:`.calibration.apply_temperature` clips); ``T_j = 1`` leaves that column unchanged."""
    p = np.asarray(probs, dtype=float)
    if p.ndim != 2 or p.shape[1] != len(temperatures):
        raise ValueError(f"probs must be (n, {len(temperatures)}), one column per temperature, got {p.shape}")
    out = np.empty_like(p)
    for j, temperature in enumerate(temperatures):
        out[:, j] = apply_temperature(binary_form(p[:, j]), float(temperature))[:, 1]
    return out


def binary_nll(probs, y) -> float:
    """Mean binary negative log-likelihood over the labelled (image, finding) pairs; NaN when none is."""
    p, labels = _check(probs, y)
    given = ~np.isnan(labels)
    if not given.any():
        return float("nan")
    return nll(binary_form(p[given]), labels[given].astype(int))


def calibration_report(
    raw_probs,
    y,
    findings: Sequence[str],
    temperatures: Sequence[float],
    fitted_on: str = "val",
    bins: int = DEFAULT_BINS,
) -> dict:
    """The ``calibration`` entry of a findings model's metrics.json: the temperature per finding, ECE and Brier
    per finding (and their mean) before (raw) and after (calibrated), over each finding's labelled images, and
    the calibrated reliability diagram's points per finding (:func:`.calibration.reliability_bins`)."""
    raw, labels = _check(raw_probs, y, findings)
    calibrated = apply_temperatures(raw, temperatures)
    ece = {"before": [], "after": []}
    brier = {"before": [], "after": []}
    reliability = {}
    for j, name in enumerate(findings):
        mask, positive = _labelled(labels, j)
        truth = positive.astype(int)
        for when, p in (("before", raw), ("after", calibrated)):
            if mask.any():
                ece[when].append(expected_calibration_error(binary_form(p[mask, j]), truth, bins)[1])
                brier[when].append(brier_score(binary_form(p[mask, j]), truth)[1])
            else:
                ece[when].append(float("nan"))
                brier[when].append(float("nan"))
        reliability[name] = reliability_bins(calibrated[mask, j], truth, bins)
    return {
        "temperatures": {name: float(t) for name, t in zip(findings, temperatures)},
        "fitted_on": fitted_on,
        "bins": int(bins),
        "ece": {when: per_class_values(np.asarray(v, dtype=float), findings) for when, v in ece.items()},
        "brier": {when: per_class_values(np.asarray(v, dtype=float), findings) for when, v in brier.items()},
        "reliability": reliability,
    }


def _bounds(ci: dict | None, key: str) -> tuple[float | None, float | None]:
    found = (ci or {}).get(key) or {}
    return found.get("ci_low"), found.get("ci_high")


def _table_row(finding: str) -> dict:
    """A table row with every column of :data:`TABLE_COLUMNS`, all None but the finding's name."""
    return {**dict.fromkeys(TABLE_COLUMNS), "finding": finding}


def per_finding_table(metrics: dict) -> list[dict]:
    """Rows for a table or CSV, every row with the same columns: one per evaluated finding (counts, AUC, AP
    and their intervals, and per operating point kind its threshold, rates and 2x2 counts), one per finding
    not evaluated (its reason under ``not_evaluated``, the numbers None), then a ``mean`` row (mean AUC and
    AP over the evaluated findings, with their intervals)."""
    rows = []
    for name in metrics["evaluated"]:
        values = metrics["findings"][name]
        row = _table_row(name)
        row.update({key: values[key] for key in ("n", "positives", "prevalence", "auc", "ap")})
        row["auc_ci_low"], row["auc_ci_high"] = _bounds(values.get("ci"), "auc")
        row["ap_ci_low"], row["ap_ci_high"] = _bounds(values.get("ci"), "ap")
        for kind, point in (values.get("operating_points") or {}).items():
            for column in ("threshold", *RATES, *COUNTS):
                row[f"{kind}_{column}"] = (point or {}).get(column)
        rows.append(row)
    for name, reason in metrics["not_evaluated"].items():
        row = _table_row(name)
        row["not_evaluated"] = reason
        rows.append(row)
    mean = _table_row("mean")
    mean.update(n=metrics["n"], auc=metrics["mean_auc"], ap=metrics["mean_ap"])
    mean["auc_ci_low"], mean["auc_ci_high"] = _bounds(metrics.get("ci"), "mean_auc")
    mean["ap_ci_low"], mean["ap_ci_high"] = _bounds(metrics.get("ci"), "mean_ap")
    rows.append(mean)
    return rows


def predictions_table(paths: Sequence[str], y, probs, findings: Sequence[str], decisions=None) -> pd.DataFrame:
    """One row per image: ``path``, ``true_findings`` (its positive findings joined by ``|``, or "No Finding"),
    then per finding ``prob_<name>``, ``true_<name>`` (1.0, 0.0 or NaN when left out) and, with ``decisions``
    ((n, k) booleans, e.g. :func:`.operating_points.decide`), ``called_<name>``."""
    p, labels = _check(probs, y, findings)
    paths = [str(path) for path in paths]
    if len(paths) != p.shape[0]:
        raise ValueError(f"{len(paths)} paths for {p.shape[0]} images")
    called = None if decisions is None else np.asarray(decisions, dtype=bool)
    if called is not None and called.shape != p.shape:
        raise ValueError(f"decisions must be {p.shape}, got {called.shape}")
    columns = {"path": paths, "true_findings": findings_sets(labels, findings)}
    for j, name in enumerate(findings):
        columns[f"prob_{name}"] = p[:, j]
        columns[f"true_{name}"] = labels[:, j]
        if called is not None:
            columns[f"called_{name}"] = called[:, j]
    return pd.DataFrame(columns)
