"""Compare: 2 to 4 runs side by side: metrics, ROC, confusion matrices, and one image through each."""

import streamlit as st

from cxrcore import runs as run_files
from cxrcore.evaluation import plots
from cxrcore.evaluation.compare import bootstrap_caption, compare_table, has_intervals, level_percent
from cxrcore.evaluation.evaluate import better, compare_runs, external_results
from cxrcore.explain.cam import METHOD_LABELS
from pages.shared import CXRError, analyse, no_models, require_app, run_label, show_error, trained_runs

require_app()
st.title("Compare")
runs = trained_runs()
if len(runs) < 2:
    if runs:
        st.info(
            "Only one trained model so far: train another (or queue several backbones at once on the "
            "Train page) to compare them."
        )
        st.page_link("pages/train.py", label="Go to Train", icon=":material/model_training:")
    else:
        no_models()
    st.stop()

chosen = st.multiselect(
    "Runs (2 to 4)", runs, default=runs[:2], format_func=run_label, max_selections=4, key="compare_runs"
)
if len(chosen) < 2:
    st.info("Pick at least two runs.")
    st.stop()

table = compare_runs([r["path"] for r in chosen])
run_metrics = {r["run_id"]: run_files.RunDir(r["path"]).metrics() for r in chosen}


def best_style(row):
    """Green where a row's point value is the best (numbers of ``compare_runs``, not the text)."""
    rule = better(row.name)
    values = row.apply(lambda v: v if isinstance(v, (int, float)) else None).astype(float)
    if rule is None or values.isna().all():
        return [""] * len(row)
    best = values.max() if rule == "max" else values.min()
    return ["background-color: #d7f5dd; font-weight: 600" if v == best else "" for v in values]


def cell(value) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


styles = table.apply(best_style, axis=1, result_type="broadcast")
display = table.apply(lambda column: column.map(cell))
intervals = compare_table(run_metrics, external_results([r["path"] for r in chosen]))
display.update(intervals.reindex(index=display.index, columns=display.columns).dropna(how="all"))

st.subheader("Metrics (best in green)")
st.dataframe(
    display.style.apply(lambda _: styles, axis=None), width="stretch", height=35 * (len(display) + 1) + 3
)  # every row in view
notes = [
    "Test-split metrics are only comparable between runs trained on the same data and split; rows named "
    "`<dataset>: ...` are external validation (Evaluate page), comparable between runs evaluated on that dataset."
]
with_ci = [run_id for run_id, m in run_metrics.items() if has_intervals(m)]
if with_ci:
    notes.append(
        f"Metric cells: value ({level_percent(run_metrics[with_ci[0]])} CI low–high). Green marks the best "
        "point value; where the intervals overlap, that ranking may well not hold on new data."
    )
    captions = {bootstrap_caption(run_metrics[run_id]) for run_id in with_ci}
    if len(captions) == 1:
        notes.append(captions.pop())
    else:
        notes += [f"`{run_id}`: {bootstrap_caption(run_metrics[run_id])}" for run_id in with_ci]
st.caption("  \n".join(notes))
without = [run_id for run_id, m in run_metrics.items() if m is not None and not has_intervals(m)]
if without:
    st.warning(
        f"No confidence intervals for {', '.join(f'`{r}`' for r in without)}: evaluated before intervals existed, "
        "so those numbers are point estimates only (marked *no CI*). Re-evaluate to get them: "
        + ", ".join(
            f"`python -m cxrcore evaluate {run_files.RunDir(r['path']).path}`" for r in chosen if r["run_id"] in without
        )
        + ".",
        icon=":material/error:",
    )

metrics = {run_id: m for run_id, m in run_metrics.items() if m is not None}
if metrics:
    classes = sorted({c for m in metrics.values() for c in m["classes"]})
    cls = st.selectbox("ROC for class", classes, key="compare_class")
    st.plotly_chart(plots.roc_overlay(metrics, cls), width="stretch")
    st.subheader("Confusion matrices")
    normalized = st.toggle("Normalise rows", key="compare_norm")
    cols = st.columns(len(metrics))
    for col, (run_id, m) in zip(cols, metrics.items()):
        col.plotly_chart(
            plots.confusion_matrix(m, normalized=normalized, title=run_id), width="stretch", key=f"compare_cm_{run_id}"
        )

st.subheader("One image through every run")
c = st.columns([3, 1])
upload = c[0].file_uploader("A chest X-ray (PNG, JPEG or DICOM)", key="compare_upload")
method = c[1].selectbox("Explanation", list(METHOD_LABELS), format_func=METHOD_LABELS.get, key="compare_method")
if upload is not None:
    cols = st.columns(len(chosen))
    for col, r in zip(cols, chosen):
        try:
            result = analyse(r["path"], upload.name, upload.getvalue(), method, "jet", 0.4, "sensitivity")
        except CXRError as exc:
            with col:
                show_error(exc)
            continue
        col.image(result["overlay"], caption=r["run_id"], width="stretch")
        col.markdown(f"**{result['label']}** ({result['confidence']:.1%})")
        if result["unlike_training"] and result["unlike_training"]["flagged"]:
            col.warning("Unlike this model's training data: its probabilities mean little here.")
        col.plotly_chart(
            plots.probability_bars(result["probabilities"], title=r["backbone"]),
            width="stretch",
            key=f"compare_probs_{r['run_id']}",
        )
