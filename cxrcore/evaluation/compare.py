"""Metrics with their confidence intervals, as tables and text for people to read.

Pure functions over ``metrics.json`` dicts (:mod:`cxrcore.evaluation.metrics`, and a findings run's,
:func:`cxrcore.evaluation.multilabel.findings_metrics`: :func:`is_findings`). An evaluation made
before intervals existed has no ``ci``: its numbers are shown as such (``has_intervals`` is false)
and never as if they were complete. A bound may be ``None`` (undefined for that resample set,
e.g. a class with no positives). A findings run has no accuracy nor macro F1: its tables show its
mean AUC and AP (over the findings evaluated) and, per finding, what :func:`findings_table` lists.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import pandas as pd

from .evaluate import EXTERNAL_ROWS
from .metrics import per_class_table
from .multilabel import TASK as FINDINGS_TASK
from .operating_points import KIND_NAMES, KINDS

HEADLINE = {"accuracy": "accuracy", "macro F1": "macro_f1", "macro AUC": "macro_auc"}
PER_CLASS_INTERVALS = ("sensitivity", "specificity", "ppv", "npv", "auc", "ap")
# The macro-average row of the classification report: column -> headline metric whose interval it has.
MACRO_ROW = {"f1": "macro_f1", "auc": "macro_auc", "ap": "macro_ap"}
NO_INTERVAL = "no CI"


def is_findings(metrics: Mapping | None) -> bool:
    """Whether ``metrics`` are a findings run's (several findings per image, one sigmoid output each)."""
    return bool(metrics) and metrics.get("task") == FINDINGS_TASK


def has_intervals(metrics: Mapping | None) -> bool:
    """Whether this evaluation was made with intervals (a ``ci`` block)."""
    return bool(metrics) and isinstance(metrics.get("ci"), Mapping)


def _number(value) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _bounds(entry) -> tuple[float | None, float | None] | None:
    if not isinstance(entry, Mapping):
        return None
    return _number(entry.get("ci_low")), _number(entry.get("ci_high"))


def interval(metrics: Mapping | None, name: str, cls: str | None = None) -> tuple[float | None, float | None] | None:
    """``(low, high)`` of a headline metric (``cls`` None) or of a class's metric (a findings run: a
    finding's, ``auc`` or ``ap``); None when the evaluation recorded no interval for it."""
    if not metrics:
        return None
    if cls is None:
        return _bounds((metrics.get("ci") or {}).get(name))
    values = (metrics.get("per_class") or {}).get(cls) or (metrics.get("findings") or {}).get(cls) or {}
    return _bounds((values.get("ci") or {}).get(name))


def level_percent(metrics: Mapping | None) -> str:
    """``"95%"`` from ``bootstrap.level`` (95% when not recorded)."""
    level = _number(((metrics or {}).get("bootstrap") or {}).get("level")) or 0.95
    return f"{level * 100:g}%"


def format_interval(bounds: tuple[float | None, float | None] | None, digits: int = 2) -> str:
    """``"0.71–0.95"``; ``"undefined"`` where both bounds are missing, ``"?"`` for one missing."""
    if bounds is None:
        return NO_INTERVAL
    low, high = bounds
    if low is None and high is None:
        return "undefined"
    return "–".join("?" if b is None else f"{b:.{digits}f}" for b in (low, high))


def format_value(value, bounds: tuple[float | None, float | None] | None, *, digits: int = 3) -> str:
    """``"0.857 (0.71–0.95)"``; ``"0.857 (no CI)"`` without an interval; ``"n/a"`` without a value."""
    value = _number(value)
    if value is None:
        return "n/a"
    if bounds is None:
        return f"{value:.{digits}f} ({NO_INTERVAL})"
    if bounds == (None, None):
        return f"{value:.{digits}f} (CI undefined)"
    return f"{value:.{digits}f} ({format_interval(bounds)})"


def bootstrap_caption(metrics: Mapping | None) -> str | None:
    """How the intervals were made, in one sentence (None without intervals)."""
    if not has_intervals(metrics):
        return None
    boot = metrics.get("bootstrap") or {}
    resamples = boot.get("resamples")
    resamples = f"{int(resamples):,} resamples" if isinstance(resamples, (int, float)) else "resamples"
    unit = boot.get("unit") or "image"
    if unit == "patient" and boot.get("patients") is not None:
        over = f"{int(boot['patients']):,} patient{'' if int(boot['patients']) == 1 else 's'}"
    else:
        over = f"{int(metrics.get('n') or 0):,} images"
    text = f"{level_percent(metrics)} intervals: bootstrap over {over}, {resamples}"
    orphans = int(boot.get("images_without_patient_id") or 0)
    if unit == "patient" and orphans:
        text += (
            f"; {orphans:,} image{'' if orphans == 1 else 's'} without a patient id counted as "
            f"{'its' if orphans == 1 else 'their'} own patient"
        )
    if boot.get("seed") is not None:
        text += f" (seed {boot['seed']})"
    return text + "."


def report_table(metrics: Mapping) -> pd.DataFrame:
    """The classification report, indexed by class (plus ``macro avg``), numbers only, with
    ``<metric>_ci_low`` / ``<metric>_ci_high`` beside every metric that has an interval
    (for the CSV download). Works on evaluations with and without intervals."""
    frame = pd.DataFrame(per_class_table(dict(metrics))).set_index("class")
    if not has_intervals(metrics):
        return frame.apply(pd.to_numeric, errors="coerce")
    for cls in frame.index:
        pairs = (
            {col: interval(metrics, name) for col, name in MACRO_ROW.items()}
            if cls not in (metrics.get("per_class") or {})
            else {name: interval(metrics, name, cls) for name in PER_CLASS_INTERVALS}
        )
        for col, bounds in pairs.items():
            if bounds is None:
                continue
            for side, bound in zip(("ci_low", "ci_high"), bounds):
                column = f"{col}_{side}"
                if column not in frame.columns or pd.isna(frame.at[cls, column]):
                    frame.loc[cls, column] = bound
    frame = frame.apply(pd.to_numeric, errors="coerce")
    order = []
    for col in frame.columns:
        if col.endswith(("_ci_low", "_ci_high")):
            continue
        order += [col] + [c for c in (f"{col}_ci_low", f"{col}_ci_high") if c in frame.columns]
    return frame[order + [c for c in frame.columns if c not in order]]


def report_display(report: pd.DataFrame, metrics: Mapping) -> pd.DataFrame:
    """``report_table`` for reading: each metric one text cell ``"0.857 (0.71–0.95)"``. With
    intervals, precision and recall are left out (they are PPV and sensitivity, which have them)."""
    with_ci = has_intervals(metrics)
    columns = [c for c in report.columns if not c.endswith(("_ci_low", "_ci_high"))]
    if with_ci and "ppv" in columns:
        columns = [c for c in columns if c not in ("precision", "recall")]
    order = ["support", "sensitivity", "specificity", "ppv", "npv", "auc", "ap", "precision", "recall", "f1"]
    columns = [c for c in order if c in columns] + [c for c in columns if c not in order]
    out = pd.DataFrame(index=report.index)
    for col in columns:
        cells = []
        for cls in report.index:
            value = report.at[cls, col]
            if col == "support":
                cells.append("" if pd.isna(value) else f"{int(value):,}")
            elif not with_ci:
                cells.append("n/a" if pd.isna(value) else f"{value:.3f}")
            else:
                cells.append(format_value(None if pd.isna(value) else value, _cell_bounds(report, metrics, cls, col)))
        out[col] = cells
    names = {"ppv": "PPV", "npv": "NPV", "auc": "AUC", "ap": "AP", "f1": "F1"}
    return out.rename(columns=lambda c: names.get(c, c.capitalize()))


def _cell_bounds(report: pd.DataFrame, metrics: Mapping, cls: str, col: str):
    if cls in (metrics.get("per_class") or {}):
        return interval(metrics, col, cls)
    if col in MACRO_ROW:
        return interval(metrics, MACRO_ROW[col])
    low, high = f"{col}_ci_low", f"{col}_ci_high"
    if low in report.columns and high in report.columns:
        lo, hi = report.at[cls, low], report.at[cls, high]
        if not (pd.isna(lo) and pd.isna(hi)):
            return (None if pd.isna(lo) else float(lo), None if pd.isna(hi) else float(hi))
    return None


def _cell(metrics: Mapping, key: str) -> str:
    return format_value(metrics.get(key), interval(metrics, key) if has_intervals(metrics) else None)


def compare_table(
    runs: Mapping[str, Mapping | None], external: Mapping[str, Mapping[str, Mapping]] | None = None
) -> pd.DataFrame:
    """Run id -> test metrics (None where a run has none) to text cells with intervals: rows
    accuracy, macro F1, macro AUC and ``AUC <class>``, then ``<dataset>: accuracy`` and
    ``<dataset>: macro AUC`` for each external dataset in ``external`` (run id -> dataset -> metrics,
    :func:`cxrcore.evaluation.evaluate.external_results`); one column per run (the row names of
    :func:`cxrcore.evaluation.evaluate.compare_runs`). A findings run's macro AUC is its mean AUC over the
    findings evaluated, its accuracy and macro F1 are n/a, its ``AUC <finding>`` rows are its findings' (``not
    evaluated`` for one it could not measure)."""
    external = external or {}
    datasets = sorted({name for found in external.values() for name in found})
    columns = {}
    for run_id, metrics in runs.items():
        metrics = metrics or {}
        with_ci = has_intervals(metrics)
        column = {row: _cell(metrics, key) for row, key in HEADLINE.items()}
        for cls, values in (metrics.get("per_class") or {}).items():
            column[f"AUC {cls}"] = format_value(values.get("auc"), interval(metrics, "auc", cls) if with_ci else None)
        for name, values in (metrics.get("findings") or {}).items():
            column[f"AUC {name}"] = format_value(values.get("auc"), interval(metrics, "auc", name) if with_ci else None)
        for name in metrics.get("not_evaluated") or {}:
            column[f"AUC {name}"] = "not evaluated"
        for dataset in datasets:
            found = (external.get(run_id) or {}).get(dataset)
            for row, key in EXTERNAL_ROWS.items():
                column[f"{dataset}: {row}"] = _cell(found, key) if found else "not evaluated"
        columns[run_id] = column
    return pd.DataFrame(columns).fillna("n/a")


def _point_cell(point: Mapping, name: str) -> str:
    ci = (point.get("ci") or {}).get(name)
    return format_value(point.get(name), (ci.get("ci_low"), ci.get("ci_high")) if ci else None)


NO_POINT = "none (the validation split could not choose one)"


def _point_row(point: Mapping | None, counts: bool = False) -> dict:
    """One operating point's cells: threshold, the four rates with intervals (and the 2x2 counts)."""
    if point is None:
        return {"threshold": NO_POINT}
    row = {"threshold": f"{point['threshold']:.4g}"}
    row.update({label: _point_cell(point, name) for label, name in _RATES.items()})
    if counts:
        row.update({label: _count(point.get(name)) for label, name in _COUNTS.items()})
    return row


def _count(value) -> str:
    return "" if value is None else f"{int(value):,}"


def operating_points_table(metrics: Mapping) -> pd.DataFrame:
    """The operating points of an evaluation as text cells: one row per class and operating point, with
    the threshold (chosen on validation) and the sensitivity, specificity, PPV and NPV it gives on these
    images with their intervals. A findings run: one row per evaluated finding and operating point (column
    ``finding``), with its 2x2 counts (TP, FP, FN, TN) too. Empty for an evaluation without operating points."""
    if is_findings(metrics):
        rows = []
        for name in metrics.get("evaluated") or []:
            kinds = (metrics.get("findings") or {}).get(name, {}).get("operating_points")
            if not kinds:
                continue
            for kind in KINDS:
                rows.append({"finding": name, "operating point": KIND_NAMES[kind], **_point_row(kinds.get(kind), True)})
        columns = ["finding", "operating point", "threshold", *_RATES, *_COUNTS]
        return pd.DataFrame(rows, columns=columns).fillna("")
    found = metrics.get("operating_points") or {}
    rows = []
    for cls, kinds in (found.get("classes") or {}).items():
        for kind in KINDS:
            rows.append({"class": cls, "operating point": KIND_NAMES[kind], **_point_row(kinds.get(kind))})
    return pd.DataFrame(rows, columns=["class", "operating point", "threshold", *_RATES]).fillna("")


_RATES = {"sensitivity": "sensitivity", "specificity": "specificity", "PPV": "ppv", "NPV": "npv"}
_COUNTS = {"TP": "tp", "FP": "fp", "FN": "fn", "TN": "tn"}
SIDE_BY_SIDE = {"accuracy": "accuracy", "macro F1": "macro_f1", "macro AUC": "macro_auc", "macro AP": "macro_ap"}
#: a findings run's headline rows (it has no accuracy nor macro F1)
FINDINGS_SIDE_BY_SIDE = {"mean AUC": "mean_auc", "mean AP": "mean_ap"}


def findings_table(metrics: Mapping) -> pd.DataFrame:
    """A findings run's evaluation as text cells, one row per evaluated finding: ``finding``, ``positives /
    labelled`` (its positive images among those where it is labelled), ``prevalence``, ``AUC (95% CI)``, ``AP
    (95% CI)``, then at the target-sensitivity operating point (chosen on validation): ``threshold``,
    ``sensitivity``, ``specificity``, ``PPV``, ``NPV`` (each with its interval) and the 2x2 counts ``TP``, ``FP``,
    ``FN``, ``TN``. The findings not evaluated are in :func:`not_evaluated_table`."""
    with_ci = has_intervals(metrics)
    level = level_percent(metrics)
    auc_label, ap_label = f"AUC ({level} CI)", f"AP ({level} CI)"
    columns = ["finding", "positives / labelled", "prevalence", auc_label, ap_label, "threshold", *_RATES, *_COUNTS]
    rows = []
    for name in metrics.get("evaluated") or []:
        values = (metrics.get("findings") or {}).get(name) or {}
        prevalence = _number(values.get("prevalence"))
        row = {
            "finding": name,
            "positives / labelled": f"{_count(values.get('positives'))} / {_count(values.get('n'))}",
            "prevalence": "n/a" if prevalence is None else f"{prevalence:.1%}",
            auc_label: format_value(values.get("auc"), interval(metrics, "auc", name) if with_ci else None),
            ap_label: format_value(values.get("ap"), interval(metrics, "ap", name) if with_ci else None),
        }
        kinds = values.get("operating_points")
        if kinds is None:
            row["threshold"] = "not chosen"
        else:
            row.update(_point_row(kinds.get(KINDS[0]), counts=True))
        rows.append(row)
    return pd.DataFrame(rows, columns=columns).fillna("")


def not_evaluated_table(metrics: Mapping) -> pd.DataFrame:
    """The findings an evaluation could not measure, and why: columns ``finding`` and ``reason``."""
    found = (metrics or {}).get("not_evaluated") or {}
    return pd.DataFrame(
        [{"finding": name, "reason": why} for name, why in found.items()], columns=["finding", "reason"]
    )


def findings_side_by_side(runs: Mapping[str, Mapping | None], findings: list[str] | None = None) -> pd.DataFrame:
    """Findings runs side by side, one row per finding (``findings``, or every finding any run predicts, in
    first-seen order) and one column per run: the finding's AUC with its interval, ``not evaluated: <reason>``
    where the run could not measure it, ``not predicted`` where the run has no such output (or ``n/a`` where
    the run has no results)."""
    if findings is None:
        seen = {}
        for metrics in runs.values():
            for name in [*((metrics or {}).get("findings") or {}), *((metrics or {}).get("not_evaluated") or {})]:
                seen.setdefault(name, None)
        findings = list(seen)
    columns = {}
    for run_id, metrics in runs.items():
        metrics = metrics or {}
        measured, missing = metrics.get("findings") or {}, metrics.get("not_evaluated") or {}
        with_ci = has_intervals(metrics)
        column = []
        for name in findings:
            if name in measured:
                auc = measured[name].get("auc")
                column.append(format_value(auc, interval(metrics, "auc", name) if with_ci else None))
            elif name in missing:
                column.append(f"not evaluated: {missing[name]}")
            else:
                column.append("not predicted" if metrics else "n/a")
        columns[run_id] = column
    return pd.DataFrame(columns, index=pd.Index(findings, name="finding"))


def side_by_side(internal: Mapping, external: Mapping) -> pd.DataFrame:
    """Internal (the run's test split) and external results of the same metrics, with the change:
    rows accuracy, macro F1, macro AUC, macro AP, images and the share unlike the training data. For a
    findings run: mean AUC and mean AP (over the findings each one evaluated) instead of the first four."""
    rows = []
    headline = FINDINGS_SIDE_BY_SIDE if is_findings(internal) or is_findings(external) else SIDE_BY_SIDE
    for label, key in headline.items():
        inside, outside = _number(internal.get(key)), _number(external.get(key))
        rows.append(
            {
                "metric": label,
                "internal (test split)": format_value(inside, interval(internal, key)),
                "external": format_value(outside, interval(external, key)),
                "change": "n/a" if inside is None or outside is None else f"{outside - inside:+.3f}",
            }
        )
    rows.append(
        {
            "metric": "images",
            "internal (test split)": f"{internal.get('n', 0):,}",
            "external": f"{external.get('n', 0):,}",
            "change": "",
        }
    )
    shares = [(m.get("ood") or {}).get("fraction_flagged") for m in (internal, external)]
    rows.append(
        {
            "metric": "unlike the training data",
            "internal (test split)": "n/a" if shares[0] is None else f"{shares[0]:.1%}",
            "external": "n/a" if shares[1] is None else f"{shares[1]:.1%}",
            "change": "",
        }
    )
    return pd.DataFrame(rows).set_index("metric")


def loso_table(study: Mapping) -> pd.DataFrame:
    """A leave-one-source-out study (``loso.json``) as a table: one row per held-out source (images, its
    AUC with the 95% interval, each class's share), then the mean and the worst."""
    classes = list(study.get("classes") or [])
    rows = []
    for fold in study.get("folds") or []:
        prevalence = fold.get("prevalence") or {}
        rows.append(
            {
                "held-out source": fold["source"],
                "images": f"{fold['n']:,}",
                "AUC (95% CI)": format_value(fold["auc"], (fold.get("ci_low"), fold.get("ci_high")))
                if fold.get("auc") is not None
                else fold.get("status", "n/a"),
                **{f"{c} share": f"{prevalence[c]:.0%}" if c in prevalence else "" for c in classes},
            }
        )
    if study.get("mean_auc") is not None:
        rows.append({"held-out source": "mean", "AUC (95% CI)": f"{study['mean_auc']:.3f}"})
        worst = next(f for f in study["folds"] if f["source"] == study["worst"])
        rows.append({"held-out source": f"worst: {worst['source']}", "AUC (95% CI)": f"{worst['auc']:.3f}"})
    return pd.DataFrame(rows).fillna("")


def loso_sentence(study: Mapping, internal_auc: float | None = None) -> str:
    """The study in one sentence, beside a run's internal test AUC when given."""
    folds = study.get("folds") or []
    if study.get("mean_auc") is None:
        return f"Leave one source out: {len(folds)} fold(s) so far, not complete."
    worst = next(f for f in folds if f["source"] == study["worst"])
    text = (
        f"Leave one source out ({len(folds)} held-out source(s)): mean AUC {study['mean_auc']:.3f}, worst "
        f"{worst['auc']:.3f} on {worst['source']}"
    )
    if internal_auc is not None:
        text += f", against {internal_auc:.3f} on the internal test split"
    return text + "."
