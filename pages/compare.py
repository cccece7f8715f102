"""Compare: 2 to 4 runs side by side: metrics, ROC, confusion matrices (findings runs: AUC per finding), and one
image through each."""

from pathlib import Path

import streamlit as st

from cxrcore import ensemble, workflows
from cxrcore import runs as run_files
from cxrcore.config import TrainConfig
from cxrcore.evaluation import plots
from cxrcore.evaluation.compare import (
    bootstrap_caption,
    compare_table,
    findings_side_by_side,
    format_value,
    has_intervals,
    is_findings,
    level_percent,
    loso_sentence,
    loso_table,
)
from cxrcore.evaluation.evaluate import (
    better,
    comparability,
    compare_runs,
    external_results,
    rankable,
)
from cxrcore.explain.cam import METHOD_LABELS
from cxrcore.training.backbones import list_backbones
from pages.shared import (
    CXRError,
    analyse,
    current_dataset,
    jobs,
    labels_column_input,
    no_models,
    require_app,
    run_label,
    show_error,
    trained_runs,
)


def loso_section(chosen: list[dict]) -> None:
    """Leave-one-source-out studies: each held-out source's AUC, beside the chosen runs on the same data;
    and a study queued as background jobs on the current dataset."""
    st.subheader("Leave one source out")
    with st.expander("Start a study on the current dataset", icon=":material/science:"):
        data = current_dataset()
        st.caption(
            f"Dataset: `{data}`. One background job per source that holds both classes: trained on every other "
            "source, tested on the one it never saw. The sources come from the dataset's source column or its "
            "dataset list."
        )
        names = [b["name"] for b in list_backbones()]
        c = st.columns(3)
        backbone = c[0].selectbox("Backbone", names, index=names.index("mobilenetv2_0.35"), key="loso_backbone")
        epochs = c[1].number_input("Frozen epochs", 0, 500, 6, key="loso_epochs")
        fine_tune = c[2].number_input("Fine-tune epochs", 0, 500, 3, key="loso_fine_tune")
        if st.button("Queue the study", key="loso_start", type="primary"):
            config = TrainConfig(data=data, backbone=backbone, epochs=int(epochs), fine_tune_epochs=int(fine_tune))
            try:
                folder, group, ids = workflows.submit_loso(config.resolved(), store=jobs())
            except CXRError as exc:
                show_error(exc)
            else:
                st.success(f"Queued {len(ids)} job(s) (group `{group}`), one per held-out source, into `{folder}`.")
    studies = run_files.list_loso()
    if not studies:
        st.caption("No study yet (or from the command line: `python -m cxrcore train --data DATA ... --loso`).")
        return
    study = st.selectbox(
        "Study",
        studies,
        format_func=lambda s: (
            f"{Path(s['folder']).name} · {Path(str(s['data'])).name} · "
            + (f"mean AUC {s['mean_auc']:.3f}" if s.get("mean_auc") is not None else s.get("status", ""))
        ),
        key="compare_loso",
    )
    st.dataframe(loso_table(study), hide_index=True, width="stretch")
    for r in chosen:
        run = run_files.RunDir(r["path"])
        if str(run.config().data) == str(study["data"]) and r.get("macro_auc") is not None:
            st.caption(f"`{r['run_id']}`: {loso_sentence(study, r['macro_auc'])}")


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
    loso_section(runs)
    st.stop()

chosen = st.multiselect(
    "Runs (2 to 4)", runs, default=runs[:2], format_func=run_label, max_selections=4, key="compare_runs"
)
if len(chosen) < 2:
    st.info("Pick at least two runs.")
    st.stop()

paths = [r["path"] for r in chosen]
try:
    table = compare_runs(paths)
    found = comparability(paths)
except CXRError as exc:  # a run whose files cannot be read
    show_error(exc)
    st.stop()
run_metrics = {r["run_id"]: run_files.RunDir(r["path"]).metrics() for r in chosen}
tasks = found.get("tasks") or {}
findings_runs = [run_id for run_id, task in tasks.items() if task == "findings"]
mixed = bool(findings_runs) and len(findings_runs) < len(tasks)
if mixed:
    st.error(
        "**These runs cannot be ranked against each other**: "
        + ", ".join(f"`{r}`" for r in findings_runs)
        + " predict findings (several per image, one probability each), the others classes (one per image). "
        "Their AUCs measure different things, on their own test splits or on external data.",
        icon=":material/block:",
    )
elif findings_runs and not found["same_classes"]:
    st.warning(
        "**These runs cannot be ranked: their findings differ.** A mean AUC over other findings is not the same "
        "measure; only the AUC of a finding they all predict ("
        + (", ".join(found["shared_classes"]) or "none")
        + ") is compared, and only on external data every one was evaluated on.",
        icon=":material/compare_arrows:",
    )
if not found["comparable"]:
    st.warning(
        "**Not comparable as they stand**: no best is named across these runs on their own test splits, "
        "because " + "; and ".join(found["differences"]) + ".",
        icon=":material/compare_arrows:",
    )
    if found["common_external"] and not mixed:
        what = "finding's AUC" if findings_runs else "one-vs-rest AUC of a class"
        st.caption(
            "They can be compared on external data every one of them was evaluated on: the rows named "
            + ", ".join(f"`{d}: ...`" for d in found["common_external"])
            + (
                ""
                if found["same_classes"]
                else f" (with different {'findings' if findings_runs else 'classes'}, only the {what} they all have: "
                f"{', '.join(found['shared_classes']) or 'none'})"
            )
            + " name a best."
        )
    with st.expander("Compare them on one labelled dataset from elsewhere", expanded=not found["common_external"]):
        st.caption(
            "Each run is evaluated on the same images with its own label scheme and class map (a findings run: its "
            "findings matched by name); its result is kept in the run (Evaluate page, External validation) and added "
            "to the table below."
        )
        c = st.columns([4, 1])
        folder = c[0].text_input("Labelled folder or CSV manifest", key="compare_external_data")
        skip = c[1].checkbox("Skip unknown classes", key="compare_external_skip")
        labels_column = ""
        if findings_runs:
            labels_column = labels_column_input(st, "compare_external_labels_column", "Labels column (findings runs)")
        if st.button("Evaluate every run on it", key="compare_external_go", disabled=not folder.strip()):
            with st.spinner("Evaluating each run..."):
                outcome = workflows.evaluate_many(paths, folder.strip(), drop_unknown=skip, labels_column=labels_column)
            failed = {run_id: why for run_id, why in outcome.items() if why}
            for run_id, why in failed.items():
                st.error(f"`{run_id}`: {why}")
            if not failed:
                st.rerun()


def best_style(row):
    """Green where a row's point value is the best (numbers of ``compare_runs``, not the text), on the rows
    where the runs can be ranked (:func:`rankable`)."""
    rule = better(row.name)
    values = row.apply(lambda v: v if isinstance(v, (int, float)) else None).astype(float)
    if rule is None or values.isna().all() or not rankable(row.name, found):
        return [""] * len(row)
    best = values.max() if rule == "max" else values.min()
    return ["background-color: #d7f5dd; font-weight: 600" if v == best else "" for v in values]


def cell(value) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def ensemble_view(run) -> None:
    """An ensemble against its members: each one's test metrics with intervals, and the paired difference
    from its best member (:func:`cxrcore.ensemble.report`)."""
    found = ensemble.report(run)
    if found is None:
        st.caption(f"`{run.run_id}` has no test results to compare with its members.")
        return
    st.markdown(f"**`{run.run_id}`** against its members (test split)")
    findings = found.get("task") == "findings"  # no accuracy; its macro AUC is the mean AUC over findings
    auc_label = "mean AUC" if findings else "macro AUC"
    st.dataframe(
        [
            {
                "run": row["run"],
                "role": row["role"],
                "backbone": row["backbone"],
                **({} if findings else {"accuracy": format_value(row["accuracy"], interval_of(row["accuracy_ci"]))}),
                auc_label: format_value(row["macro_auc"], interval_of(row["macro_auc_ci"])),
            }
            for row in found["rows"]
        ],
        hide_index=True,
        width="stretch",
    )
    if found["best_member"]:
        auc = found["difference"]["macro_auc"]
        spread = "n/a" if auc["ci_low"] is None else f"{auc['ci_low']:+.3f} to {auc['ci_high']:+.3f}"
        text = (
            f"Ensemble minus its best member (`{found['best_member']}`): {auc_label} {auc['difference']:+.3f}, "
            f"95% CI {spread} (paired bootstrap over patients, {found['n']} test images)."
        )
        if found["verdict"] == "better":
            st.success(f"It beats its best member. {text}")
        elif found["verdict"] == "worse":
            st.error(f"It is worse than its best member. {text}")
        else:
            st.info(f"No clear difference from its best member: the interval includes 0. {text}")


def interval_of(bounds):
    return None if not bounds or bounds.get("ci_low") is None else (bounds["ci_low"], bounds["ci_high"])


styles = table.apply(best_style, axis=1, result_type="broadcast")
display = table.apply(lambda column: column.map(cell))
intervals = compare_table(run_metrics, external_results([r["path"] for r in chosen]))
display.update(intervals.reindex(index=display.index, columns=display.columns).dropna(how="all"))

st.subheader("Metrics (best in green, where they can be ranked)")
st.dataframe(
    display.style.apply(lambda _: styles, axis=None), width="stretch", height=35 * (len(display) + 1) + 3
)  # every row in view
notes = [
    "Test-split metrics are only comparable between runs trained on the same data and split; rows named "
    "`<dataset>: ...` are external validation (Evaluate page), comparable between runs evaluated on that dataset."
]
if findings_runs:
    notes.append(
        "A findings run's macro AUC is its mean AUC over the findings it evaluated, its `AUC <finding>` rows its "
        "findings'; it has no accuracy nor macro F1 (n/a)."
    )
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
with_findings = {run_id: m for run_id, m in metrics.items() if is_findings(m)}
with_classes = {run_id: m for run_id, m in metrics.items() if not is_findings(m)}
if metrics:
    # a findings run's curves are per evaluated finding (its "roc" keys), a class run's per class
    names = sorted({c for m in metrics.values() for c in (m.get("classes") or m.get("roc") or [])})
    cls = st.selectbox("ROC for finding or class" if with_findings else "ROC for class", names, key="compare_class")
    st.plotly_chart(plots.roc_overlay(metrics, cls), width="stretch")
if with_findings:
    st.subheader("Findings side by side")
    st.caption(
        "AUC per finding on each run's own test split (95% CI). A finding a run could not measure (too few "
        "positive images) says why; one it does not predict says so."
        + (" These runs predict different findings: they cannot be ranked." if not found["same_classes"] else "")
    )
    st.dataframe(findings_side_by_side(with_findings), width="stretch")
    cols = st.columns(len(with_findings))
    for col, (run_id, m) in zip(cols, with_findings.items()):
        col.plotly_chart(plots.findings_auc(m, title=run_id), width="stretch", key=f"compare_auc_{run_id}")
if with_classes:
    st.subheader("Confusion matrices")
    normalized = st.toggle("Normalise rows", key="compare_norm")
    cols = st.columns(len(with_classes))
    for col, (run_id, m) in zip(cols, with_classes.items()):
        col.plotly_chart(
            plots.confusion_matrix(m, normalized=normalized, title=run_id), width="stretch", key=f"compare_cm_{run_id}"
        )

loso_section(chosen)

st.subheader("Ensemble")
ensembles = [r for r in chosen if run_files.RunDir(r["path"]).ensemble() is not None]
for r in ensembles:
    ensemble_view(run_files.RunDir(r["path"]))
members = [r for r in chosen if run_files.RunDir(r["path"]).ensemble() is None]
if len(members) >= 2:
    c = st.columns([1, 3])
    tta = c[0].toggle("Flip test-time augmentation", key="compare_tta", help="each member also sees the mirror")
    names = ", ".join(f"`{r['run_id']}`" for r in members)
    c[1].caption(
        f"Average the calibrated probabilities of {names} into a new run "
        "that evaluates, predicts, explains and compares like any other. Members must share classes and one "
        "split of the same data."
    )
    if st.button("Make an ensemble of these runs", key="compare_make_ensemble"):
        try:
            with st.spinner("Building and evaluating the ensemble..."):
                made = workflows.make_ensemble([r["path"] for r in members], tta="flip" if tta else "none")
            st.session_state["compare_made"] = str(made.path)
        except CXRError as exc:
            show_error(exc)
    made = st.session_state.get("compare_made")
    if made and run_files.RunDir(made).exists():
        st.success(f"Ensemble `{run_files.RunDir(made).run_id}` written: pick it above to compare it further.")
        ensemble_view(run_files.RunDir(made))
elif not ensembles:
    st.caption("Pick at least two trained runs (not ensembles) to average them into an ensemble.")

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
        if result.get("task") == "findings":  # several findings per image: those called at the run's thresholds
            called = [f["finding"] for f in result.get("findings") or [] if f["positive"]]
            col.markdown(
                "Findings called: " + (", ".join(f"**{n}**" for n in called) or "none")
                if any(f["positive"] is not None for f in result.get("findings") or [])
                else f"Most probable finding: **{result['label']}** ({result['confidence']:.1%})"
            )
        else:
            col.markdown(f"**{result['label']}** ({result['confidence']:.1%})")
        if result["unlike_training"] and result["unlike_training"]["flagged"]:
            col.warning("Unlike this model's training data: its probabilities mean little here.")
        col.plotly_chart(
            plots.probability_bars(result["probabilities"], title=r["backbone"]),
            width="stretch",
            key=f"compare_probs_{r['run_id']}",
        )
