"""Views of one evaluation that the Evaluate page draws in several places: a findings run's metrics, calibration
and external comparison, and what class and findings runs share (the note when intervals are missing, the
images unlike the training data, the calibration table).

Not a page of its own (the app's navigation lists its pages); ``pages/evaluate.py`` calls these.
"""

import pandas as pd
import streamlit as st

from cxrcore.evaluation import plots
from cxrcore.evaluation.compare import (
    bootstrap_caption,
    format_interval,
    format_value,
    has_intervals,
    interval,
    level_percent,
    not_evaluated_table,
    side_by_side,
)
from cxrcore.evaluation.multilabel import per_finding_table
from cxrcore.evaluation.operating_points import KIND_NAMES, KINDS


def reevaluate_command(run_path, data: str | None) -> str:
    """The CLI line that redoes an evaluation of the run at ``run_path`` (now with intervals): the test split's
    without ``data``."""
    return f"python -m cxrcore evaluate {run_path}" + (f" --data {data}" if data else "")


def no_intervals_warning(run_path, data: str | None) -> None:
    st.warning(
        "This evaluation has **no confidence intervals**: it was evaluated before intervals existed, "
        "so the numbers below are point estimates only. Re-evaluate it to get them: "
        f"`{reevaluate_command(run_path, data)}`.",
        icon=":material/error:",
    )


def finding_ci(entry: dict | None, name: str) -> tuple[float | None, float | None] | None:
    """``(low, high)`` of ``entry["ci"][name]``; None when the entry has no interval for it."""
    found = ((entry or {}).get("ci") or {}).get(name)
    return None if not isinstance(found, dict) else (found.get("ci_low"), found.get("ci_high"))


def findings_rows(metrics: dict, kind: str) -> pd.DataFrame:
    """One row of text cells per evaluated finding: images and positives, AUC and AP with their intervals, and
    at the operating point ``kind`` its threshold, sensitivity, specificity, PPV and NPV (with intervals) and
    the 2x2 counts."""
    rows = []
    for name in metrics.get("evaluated") or []:
        values = metrics["findings"][name]
        point = (values.get("operating_points") or {}).get(kind)
        row = {
            "finding": name,
            "positives": f"{values['positives']:,} of {values['n']:,} ({values['prevalence']:.0%})",
            "AUC": format_value(values.get("auc"), finding_ci(values, "auc")),
            "AP": format_value(values.get("ap"), finding_ci(values, "ap")),
        }
        if point is None:
            row["threshold"] = "none (validation could not choose one)" if "operating_points" in values else "n/a"
        else:
            row["threshold"] = f"{point['threshold']:.4g}"
            for label, rate in (("sensitivity", "sensitivity"), ("specificity", "specificity"), ("PPV", "ppv")):
                row[label] = format_value(point.get(rate), finding_ci(point, rate))
            row["NPV"] = format_value(point.get("npv"), finding_ci(point, "npv"))
            row["TP / FP / FN / TN"] = " / ".join(str(point.get(c, "?")) for c in ("tp", "fp", "fn", "tn"))
        rows.append(row)
    columns = ["finding", "positives", "AUC", "AP", "threshold", "sensitivity", "specificity"]
    return pd.DataFrame(rows, columns=[*columns, "PPV", "NPV", "TP / FP / FN / TN"]).fillna("")


def findings_metrics_view(run_path, metrics: dict, predictions: pd.DataFrame, key: str, data: str | None) -> None:
    """A findings run's evaluation: the mean AUC and AP over the evaluated findings, each finding's figures and
    operating point, the findings not evaluated and why, and the charts per finding."""
    with_ci = has_intervals(metrics)
    if not with_ci:
        no_intervals_warning(run_path, data)
    evaluated, missing = list(metrics.get("evaluated") or []), metrics.get("not_evaluated") or {}
    total = len(evaluated) + len(missing)
    c = st.columns(4)
    for col, (label, name) in zip(c, (("Mean AUC", "mean_auc"), ("Mean AP", "mean_ap"))):
        value = metrics.get(name)
        col.metric(label, "n/a" if value is None else f"{value:.3f}")
        over = f"over {len(evaluated)} finding{'' if len(evaluated) == 1 else 's'}"
        if value is None:
            col.caption(f"undefined: no finding could be evaluated ({over})")
        elif with_ci:
            col.caption(f"{level_percent(metrics)} CI {format_interval(interval(metrics, name))}, {over}")
        else:
            col.caption(f"no interval (evaluated before intervals existed), {over}")
    c[2].metric("Findings evaluated", f"{len(evaluated)} of {total}")
    if missing:
        c[2].caption(f"not evaluated: {', '.join(missing)}")
    c[3].metric("Images", f"{metrics['n']:,}")
    patients = (metrics.get("bootstrap") or {}).get("patients")
    if patients is not None:
        c[3].caption(f"{patients:,} patient{'' if patients == 1 else 's'}")
    if with_ci:
        st.caption(bootstrap_caption(metrics))
    left, right = st.columns([3, 1])
    left.markdown("**Findings** (each measured on its own, over its labelled images)")
    kind = right.radio(
        "Operating point",
        list(KINDS),
        format_func=KIND_NAMES.get,
        key=f"{key}_kind",
        horizontal=True,
        help="Thresholds on calibrated probabilities, chosen per finding on the validation split and applied "
        "unchanged here.",
    )
    st.dataframe(findings_rows(metrics, kind), hide_index=True, width="stretch", key=f"{key}_findings")
    target = (metrics.get("operating_points") or {}).get("target_sensitivity")
    st.caption(
        (f"Each cell: value ({level_percent(metrics)} CI low–high). " if with_ci else "Point estimates only. ")
        + (f"Threshold at {KIND_NAMES[kind]}" + (f" ({target:.2f})" if kind == "sensitivity" and target else ""))
        + ", chosen on validation: an image is positive for a finding when its probability is at or above it. "
        "PPV is precision; the counts are over the finding's labelled images."
    )
    if missing:
        st.markdown(f"**Not evaluated** ({len(missing)} of {total} findings: no figure rests on too few images)")
        st.dataframe(
            not_evaluated_table(metrics),
            hide_index=True,
            width="stretch",
            key=f"{key}_not_evaluated",
        )
    st.download_button(
        "Download metrics per finding (CSV)",
        pd.DataFrame(per_finding_table(metrics)).to_csv(index=False).encode(),
        file_name=f"{key}_findings_metrics.csv",
        mime="text/csv",
        key=f"{key}_download",
    )
    unlike_view(metrics)
    if not evaluated:
        return
    left, right = st.columns(2)
    left.plotly_chart(plots.findings_auc(metrics), width="stretch", key=f"{key}_auc")
    right.plotly_chart(plots.findings_roc(metrics, kind), width="stretch", key=f"{key}_roc")
    st.plotly_chart(plots.findings_counts(metrics, kind), width="stretch", key=f"{key}_counts")
    st.caption(
        "Each finding at its threshold, over its labelled images: rows are the truth, columns the call (TP, FN / "
        "FP, TN); the shade is the share of the row."
    )
    left, _ = st.columns(2)
    left.plotly_chart(plots.findings_pr(metrics), width="stretch", key=f"{key}_pr")
    findings_calibration_view(metrics, key)
    st.download_button(
        "Download the predictions (CSV: probability, truth and call per finding)",
        predictions.to_csv(index=False).encode(),
        file_name=f"{key}_predictions.csv",
        mime="text/csv",
        key=f"{key}_predictions",
    )


def findings_calibration_view(metrics: dict, key: str) -> None:
    """A findings run's calibration: reliability per finding, and per finding its temperature, ECE and Brier
    before and after."""
    st.markdown("**Calibration** (per finding)")
    calibration = metrics.get("calibration")
    if not calibration or "temperatures" not in calibration:
        st.info("Probabilities not calibrated.")
        return
    left, right = st.columns(2)
    left.plotly_chart(plots.findings_reliability(metrics), width="stretch", key=f"{key}_reliability")
    table = calibration_table(calibration).rename_axis("finding")
    table.insert(0, "temperature", [calibration["temperatures"].get(name, float("nan")) for name in table.index])
    shown = table.map(lambda v: "n/a" if pd.isna(v) else f"{v:.4f}")  # the mean row has no temperature
    right.dataframe(shown, width="stretch", key=f"{key}_calibration")
    right.caption(
        f"One temperature per finding, fitted on the `{calibration.get('fitted_on', 'val')}` split: every probability "
        "shown is `sigmoid(logit(p) / T)` (T > 1 softens over-confident outputs). ECE over "
        f"{calibration.get('bins', 15)} equal-width bins; before = raw model output, after = calibrated. Lower is "
        "better for both."
    )
    for name, why in (calibration.get("not_fitted") or {}).items():
        right.caption(f"{name}: {why} (temperature 1).")


def unlike_view(metrics: dict) -> None:
    """How many of these images are unlike the training data (the feature-distance check)."""
    found = metrics.get("ood")
    if not found:
        return
    text = (
        f"**{found['flagged']:,} of {found['n']:,} images ({found['fraction_flagged']:.1%}) are unlike the training "
        f"data**: beyond the {found['percentile']:g}th percentile of the validation images' feature distance "
        f"({found['threshold']:.1f}); about {100 - found['percentile']:g}% would be expected for images like them."
    )
    expected = (100 - found["percentile"]) / 100
    if found["flagged"] >= 3 and found["fraction_flagged"] > 2 * expected + 0.02:  # not one image of a small set
        st.warning(text + " These images differ from what the model learned from.", icon=":material/report:")
    else:
        st.caption(text)


def calibration_table(calibration: dict) -> pd.DataFrame:
    """ECE and Brier before (raw) and after (calibrated) per class, plus their mean."""
    names = list(calibration["ece"]["before"])
    return pd.DataFrame(
        {
            f"{measure} {when}": [calibration[key][when].get(n) for n in names]
            for measure, key in (("ECE", "ece"), ("Brier", "brier"))
            for when in ("before", "after")
        },
        index=pd.Index(names, name="class"),
    )


def findings_side_by_side(findings: list[str], internal: dict, external: dict) -> pd.DataFrame:
    """A findings run's test split against an external set: the mean AUC and AP (over each one's evaluated
    findings), the images, then each finding's AUC on both ("not evaluated" where one could not measure it)."""
    table = side_by_side(internal, external)  # mean AUC and AP for findings evaluations
    rows = []
    for name in findings:
        inside, outside = ((m.get("findings") or {}).get(name) or {} for m in (internal, external))
        both = inside.get("auc") is not None and outside.get("auc") is not None
        rows.append(
            {
                "metric": f"AUC: {name}",
                "internal (test split)": format_value(inside["auc"], finding_ci(inside, "auc"))
                if inside
                else "not evaluated",
                "external": format_value(outside["auc"], finding_ci(outside, "auc")) if outside else "not evaluated",
                "change": f"{outside['auc'] - inside['auc']:+.3f}" if both else "",
            }
        )
    return pd.concat([table, pd.DataFrame(rows).set_index("metric")])
