"""Evaluation metrics as pure functions: labels and probabilities in, plain dicts out.

Everything returned is JSON-serialisable (non-finite numbers become ``None``), so it
can be written to ``metrics.json`` and read back by the dashboard unchanged.
ROC and precision-recall are one-vs-rest per class; a class with no positive (or no
negative) example has no ROC and its AUC is ``None``, never a made-up number.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from sklearn.metrics import (
    auc,
    average_precision_score,
    classification_report,
    confusion_matrix,
    precision_recall_curve,
    roc_curve,
)

from ..stats.intervals import DEFAULT_RESAMPLES, bootstrap_intervals


def _num(value) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _list(values) -> list:
    return [_num(v) for v in np.asarray(values, dtype=float).ravel()]


def _check(y_true: Sequence[int], probs: np.ndarray, classes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true, dtype=int).ravel()
    p = np.asarray(probs, dtype=float)
    if p.ndim != 2 or p.shape[0] != y.shape[0] or p.shape[1] != len(classes):
        raise ValueError(f"probs must be (n, {len(classes)}) with n = {y.shape[0]}, got {p.shape}")
    if y.size == 0:
        raise ValueError("no samples to evaluate")
    if y.min() < 0 or y.max() >= len(classes):
        raise ValueError("y_true holds class indices outside 0..k-1")
    return y, p


def _one_vs_rest(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-class one-vs-rest true positives, false negatives, false positives and true negatives."""
    cm = np.asarray(cm, dtype=float)
    tp = np.diag(cm)
    fn, fp = cm.sum(axis=1) - tp, cm.sum(axis=0) - tp
    return tp, fn, fp, cm.sum() - tp - fn - fp


def _rates(num: np.ndarray, den: np.ndarray) -> list[float | None]:
    """``num / den`` per class; None where ``den`` is 0 (a rate with nothing to count)."""
    return [_num(n / d) if d else None for n, d in zip(num, den)]


def sensitivity_specificity(cm: np.ndarray) -> tuple[list[float | None], list[float | None]]:
    """Per-class one-vs-rest sensitivity (recall) and specificity from a confusion matrix."""
    tp, fn, fp, tn = _one_vs_rest(cm)
    return _rates(tp, tp + fn), _rates(tn, tn + fp)


def roc_per_class(y: np.ndarray, p: np.ndarray, classes: Sequence[str]) -> dict:
    """One-vs-rest ROC curve and AUC per class (None where a class lacks positives or negatives)."""
    out = {}
    for i, name in enumerate(classes):
        positive = y == i
        if positive.all() or not positive.any():
            out[name] = None
            continue
        fpr, tpr, thresholds = roc_curve(positive, p[:, i])
        out[name] = {"fpr": _list(fpr), "tpr": _list(tpr), "thresholds": _list(thresholds), "auc": _num(auc(fpr, tpr))}
    return out


def pr_per_class(y: np.ndarray, p: np.ndarray, classes: Sequence[str]) -> dict:
    """One-vs-rest precision-recall curve and average precision per class."""
    out = {}
    for i, name in enumerate(classes):
        positive = y == i
        if not positive.any():
            out[name] = None
            continue
        precision, recall, _ = precision_recall_curve(positive, p[:, i])
        out[name] = {
            "precision": _list(precision),
            "recall": _list(recall),
            "ap": _num(average_precision_score(positive, p[:, i])),
        }
    return out


def classification_metrics(
    y_true: Sequence[int],
    probs: np.ndarray,
    classes: Sequence[str],
    *,
    patient_ids: Sequence[str] | None = None,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> dict:
    """All test-set metrics for integer labels ``y_true`` and probabilities ``probs`` (n, k).

    With ``resamples`` > 0, 95% intervals by bootstrap over patients (``patient_ids``; an
    image without one is its own patient) sit beside the values: ``ci`` for accuracy,
    macro F1 and macro AUC, ``per_class[c]["ci"]`` for sensitivity, specificity, PPV, NPV,
    AUC and AP, and ``bootstrap`` saying how they were made (:mod:`.intervals`).
    """
    y, p = _check(y_true, probs, classes)
    k = len(classes)
    pred = p.argmax(axis=1)
    cm = confusion_matrix(y, pred, labels=list(range(k)))
    row_sums = cm.sum(axis=1, keepdims=True)
    cm_norm = np.divide(cm, row_sums, out=np.zeros_like(cm, dtype=float), where=row_sums > 0)
    report = classification_report(
        y, pred, labels=list(range(k)), target_names=list(classes), output_dict=True, zero_division=0
    )
    sens, spec = sensitivity_specificity(cm)
    ppv, npv = predictive_values(cm)
    roc = roc_per_class(y, p, classes)
    pr = pr_per_class(y, p, classes)
    onehot = np.eye(k)[y]
    aucs = [c["auc"] for c in roc.values() if c is not None and c["auc"] is not None]
    aps = [c["ap"] for c in pr.values() if c is not None and c["ap"] is not None]
    micro_fpr, micro_tpr, _ = roc_curve(onehot.ravel(), p.ravel())
    per_class = {
        name: {
            "precision": _num(report[name]["precision"]),
            "recall": _num(report[name]["recall"]),
            "f1": _num(report[name]["f1-score"]),
            "support": int(report[name]["support"]),
            "sensitivity": sens[i],
            "specificity": spec[i],
            "ppv": ppv[i],
            "npv": npv[i],
            "auc": roc[name]["auc"] if roc[name] else None,
            "ap": pr[name]["ap"] if pr[name] else None,
        }
        for i, name in enumerate(classes)
    }
    result = {
        "classes": list(classes),
        "n": int(y.size),
        "accuracy": _num((pred == y).mean()),
        "macro_precision": _num(report["macro avg"]["precision"]),
        "macro_recall": _num(report["macro avg"]["recall"]),
        "macro_f1": _num(report["macro avg"]["f1-score"]),
        "weighted_f1": _num(report["weighted avg"]["f1-score"]),
        "macro_auc": _num(np.mean(aucs)) if aucs else None,
        "micro_auc": _num(auc(micro_fpr, micro_tpr)) if 0 < onehot.sum() < onehot.size else None,
        "macro_ap": _num(np.mean(aps)) if aps else None,
        "micro_ap": _num(average_precision_score(onehot.ravel(), p.ravel())),
        "per_class": per_class,
        "confusion_matrix": cm.astype(int).tolist(),
        "confusion_matrix_normalized": [_list(row) for row in cm_norm],
        "roc": roc,
        "roc_micro": {"fpr": _list(micro_fpr), "tpr": _list(micro_tpr)},
        "pr": pr,
    }
    if resamples > 0:
        found = bootstrap_intervals(y, p, classes, patient_ids, resamples=resamples, seed=seed)
        result["ci"], result["bootstrap"] = found["ci"], found["bootstrap"]
        for name in classes:
            per_class[name]["ci"] = found["per_class"][name]
    return result


def predictive_values(cm: np.ndarray) -> tuple[list[float | None], list[float | None]]:
    """Per-class one-vs-rest PPV (precision) and NPV from a confusion matrix."""
    tp, fn, fp, tn = _one_vs_rest(cm)
    return _rates(tp, tp + fp), _rates(tn, tn + fn)


def summary(metrics: dict) -> dict:
    """The headline numbers: accuracy, macro F1, macro AUC and n, with their intervals (``ci``)
    and how they were made (``bootstrap``) when the evaluation has them."""
    out = {key: metrics[key] for key in ("accuracy", "macro_f1", "macro_auc", "n")}
    if "ci" in metrics:
        out["ci"] = metrics["ci"]
        out["bootstrap"] = metrics["bootstrap"]
    return out


def per_class_table(metrics: dict) -> list[dict]:
    """Rows of the classification report (one per class plus macro average) for tables and CSV."""
    rows = []
    for name, values in metrics["per_class"].items():
        row = {"class": name, **{k: v for k, v in values.items() if k != "ci"}}
        for metric, bounds in values.get("ci", {}).items():
            row[f"{metric}_ci_low"], row[f"{metric}_ci_high"] = bounds["ci_low"], bounds["ci_high"]
        rows.append(row)
    macro = {
        "class": "macro avg",
        "precision": metrics["macro_precision"],
        "recall": metrics["macro_recall"],
        "f1": metrics["macro_f1"],
        "support": metrics["n"],
        "sensitivity": None,
        "specificity": None,
        "auc": metrics["macro_auc"],
        "ap": metrics["macro_ap"],
    }
    for column, key in (("f1", "macro_f1"), ("auc", "macro_auc"), ("ap", "macro_ap")):
        bounds = metrics.get("ci", {}).get(key)
        if bounds:
            macro[f"{column}_ci_low"], macro[f"{column}_ci_high"] = bounds["ci_low"], bounds["ci_high"]
    rows.append(macro)
    return rows
