"""Evaluate: a run's test-split metrics, curves, mistakes, and external validation (a findings run: per finding)."""

from pathlib import Path

import pandas as pd
import streamlit as st

from cxrcore import export, runs, workflows
from cxrcore.data.io import prepare_image
from cxrcore.evaluation import plots
from cxrcore.evaluation.compare import (
    bootstrap_caption,
    format_interval,
    has_intervals,
    interval,
    level_percent,
    loso_sentence,
    loso_table,
    operating_points_table,
    report_display,
    report_table,
    side_by_side,
)
from cxrcore.evaluation.sanity import learned_nothing, transfer_drop
from cxrcore.explain import faithfulness, sampled
from cxrcore.explain.cam import METHOD_LABELS
from cxrcore.jobs import queue as job_queue
from cxrcore.recipes import writeup_comparison
from pages.evaluate_views import (
    calibration_table,
    findings_metrics_view,
    findings_side_by_side,
    no_intervals_warning,
    unlike_view,
)
from pages.shared import CXRError, jobs, labels_column_input, pick_run, require_app, show_error

require_app()
st.title("Evaluate")
run_info = pick_run("evaluate_run")
if run_info is None:
    st.stop()
run = runs.RunDir(run_info["path"])
info, status, epochs = run.info(), run.status(), run.epochs_completed()
findings_run = run.task() == "findings"  # several findings per image, one sigmoid output each
members = run.members()
if members:
    tta = " with flip test-time augmentation" if (run.ensemble() or {}).get("tta") == "flip" else ""
    st.caption(
        f"ensemble of {len(members)} runs{tta} ({', '.join(m.run_id for m in members)}) at {run.image_size()} px · "
        f"data `{info.get('data')}` · status {status}"
    )
else:
    labels = run.labels() if findings_run else []
    st.caption(
        f"{info.get('backbone')} at {run.image_size()} px · trained on `{info.get('data')}` · "
        + (f"{len(labels)} findings ({', '.join(labels)}) · " if findings_run else "")
        + f"{info.get('device', '?')} · {epochs} epoch{'' if epochs == 1 else 's'} completed · status {status}"
    )
if (verdict := learned_nothing(run)) is not None:
    st.error(verdict, icon=":material/block:")
annotation = run.annotation()
if annotation["note"]:
    st.markdown(f"*{annotation['note']}*")
with st.expander("Name and note", icon=":material/edit_note:"):
    with st.form(f"evaluate_notes_{run.run_id}", border=False):
        name = st.text_input(
            "Name (shown in every run picker)",
            annotation["name"],
            max_chars=runs.NAME_MAX,
            key=f"evaluate_name_{run.run_id}",
        )
        note = st.text_area("Note", annotation["note"], height=80, key=f"evaluate_note_{run.run_id}")
        if st.form_submit_button("Save"):
            try:
                run.annotate(name=name, note=note)
                st.rerun()
            except CXRError as exc:
                show_error(exc)


def metrics_view(metrics: dict, predictions: pd.DataFrame, key: str, data: str | None = None) -> None:
    """Everything about one evaluation (test split or an external folder); ``data`` is the folder
    an external evaluation was made on (None for the test split)."""
    if metrics.get("task") == "findings":
        findings_metrics_view(run.path, metrics, predictions, key, data)
        return
    with_ci = has_intervals(metrics)
    if not with_ci:
        no_intervals_warning(run.path, data)
    c = st.columns(4)
    for col, (label, name) in zip(c, (("Accuracy", "accuracy"), ("Macro F1", "macro_f1"), ("Macro AUC", "macro_auc"))):
        value = metrics.get(name)
        col.metric(label, "n/a" if value is None else f"{value:.3f}")
        if value is None:
            col.caption("undefined for this data")
        elif with_ci:
            col.caption(f"{level_percent(metrics)} CI {format_interval(interval(metrics, name))}")
        else:
            col.caption("no interval (evaluated before intervals existed)")
    c[3].metric("Images", metrics["n"])
    patients = (metrics.get("bootstrap") or {}).get("patients")
    if patients is not None:
        c[3].caption(f"{patients:,} patient{'' if patients == 1 else 's'}")
    if with_ci:
        st.caption(bootstrap_caption(metrics))
    report = report_table(metrics)
    st.markdown("**Classification report** (one-vs-rest, per class)")
    st.dataframe(report_display(report, metrics), width="stretch")
    st.caption(
        f"Each cell: value ({level_percent(metrics)} CI low–high). Sensitivity is recall and PPV is precision. "
        "The CSV has every number, with `_ci_low` / `_ci_high` columns."
        if with_ci
        else "Point estimates only: this evaluation has no intervals (see above)."
    )
    st.download_button(
        "Download metrics (CSV)",
        report.to_csv().encode(),
        file_name=f"{key}_metrics.csv",
        mime="text/csv",
        key=f"{key}_download",
    )
    unlike_view(metrics)
    operating_points_view(metrics, key)
    left, right = st.columns(2)
    normalized = left.toggle("Normalise rows", key=f"{key}_norm")
    left.plotly_chart(plots.confusion_matrix(metrics, normalized=normalized), width="stretch", key=f"{key}_cm")
    right.plotly_chart(plots.roc_curves(metrics), width="stretch", key=f"{key}_roc")
    left, _ = st.columns(2)
    left.plotly_chart(plots.pr_curves(metrics), width="stretch", key=f"{key}_pr")
    calibration_view(metrics, key)
    mistakes(predictions, metrics["classes"], key)


def operating_points_view(metrics: dict, key: str) -> None:
    """The decision thresholds chosen on validation, and what they give on these images."""
    table = operating_points_table(metrics)
    if table.empty:
        return
    found = metrics["operating_points"]
    st.markdown("**Operating points** (marked on the ROC)")
    st.dataframe(table, width="stretch", hide_index=True, key=f"{key}_points")
    st.caption(
        f"Thresholds on calibrated probabilities, chosen on the validation split (target sensitivity "
        f"{found['target_sensitivity']:.2f}, and Youden's J) and applied unchanged here: an image is positive for "
        "a class when its probability is at or above the threshold. A sensitivity below the target here means "
        "the threshold does not carry over to these images."
    )


def calibration_view(metrics: dict, key: str) -> None:
    """The Calibration row: reliability diagram, ECE and Brier before/after, the temperature."""
    st.markdown("**Calibration**")
    calibration = metrics.get("calibration")
    if not calibration:
        st.info("Probabilities not calibrated (trained before calibration existed).")
        return
    left, right = st.columns(2)
    left.plotly_chart(plots.reliability_diagram(metrics), width="stretch", key=f"{key}_reliability")
    right.markdown(
        f"Temperature **{calibration['temperature']:.3f}**, fitted on the `{calibration.get('fitted_on', 'val')}` "
        "split: every probability shown is `softmax(log p / T)` (T > 1 softens over-confident outputs; the "
        "predicted class never changes)."
    )
    right.dataframe(calibration_table(calibration).style.format("{:.4f}", na_rep="n/a"), width="stretch")
    right.caption(
        f"One-vs-rest per class; ECE over {calibration.get('bins', 15)} equal-width bins; before = raw model "
        "output, after = calibrated. Lower is better for both."
    )


def mistakes(predictions: pd.DataFrame, classes: list[str], key: str) -> None:
    wrong = predictions[~predictions["correct"]].sort_values("confidence", ascending=False)
    st.markdown(f"**Misclassified images**: {len(wrong)} of {len(predictions)} (most confident mistakes first)")
    if wrong.empty:
        return
    per_page = 8
    pages = (len(wrong) + per_page - 1) // per_page
    page = st.number_input(f"Page (of {pages})", 1, pages, 1, key=f"{key}_mistake_page")
    cols = st.columns(4)
    for i, row in enumerate(wrong.iloc[(page - 1) * per_page : page * per_page].to_dict("records")):
        col = cols[i % 4]
        probs = ", ".join(f"{c} {row[f'prob_{c}']:.2f}" for c in classes if f"prob_{c}" in row)
        try:
            col.image(prepare_image(row["path"], 192, rules=run.pixel_rules()), width="stretch")
        except CXRError as exc:
            col.error(str(exc))
        col.caption(
            f"true **{row['true_label']}**, predicted **{row['pred_label']}** ({row['confidence']:.2f})  \n"
            f"{probs}  \n`{Path(row['path']).name}`"
        )


def loso_view(run, metrics: dict) -> None:
    """A leave-one-source-out study beside the internal figures: the one this run is a fold of, or one on
    the same data."""
    study = run.loso()
    if study is None:
        return
    with st.container(border=True):
        if study["held_out"] is not None:
            st.markdown(
                f"**Leave one source out.** This run is one fold: trained without `{study['held_out']}`, tested "
                f"on all of it. The study's folds:"
            )
        else:
            st.markdown(f"**{loso_sentence(study, metrics.get('macro_auc'))}**")
        st.dataframe(loso_table(study), hide_index=True, width="stretch")
        st.caption(
            "Each held-out source is a hospital the model never saw: the AUC there is what to expect elsewhere, "
            "not the internal test split's."
        )


def writeup_view(run) -> None:
    """For a run started from a recipe: the figures its write-up published beside the run's."""
    found = writeup_comparison(run)
    if found is None:
        return
    recipe = found["recipe"]
    with st.container(border=True):
        st.markdown(f"**Recipe `{recipe.name}`**: {recipe.writeup}")
        if found["rows"]:
            table = pd.DataFrame(
                {
                    "metric": row["metric"],
                    "write-up published": f"{row['published']:.3f} ({row['published_note']})",
                    "this run": "n/a" if row["this_run"] is None else f"{row['this_run']:.3f}",
                    "95% CI": "n/a" if row["ci_low"] is None else f"{row['ci_low']:.3f}–{row['ci_high']:.3f}",
                    "published value inside the interval": "yes" if row["within_interval"] else "no",
                }
                for row in found["rows"]
            )
            st.dataframe(table, hide_index=True, width="stretch")
        else:
            st.caption("The write-up published no figure to compare with.")
        if found["data_matches"]:
            st.success(f"Data: {found['data']}.", icon=":material/check:")
        else:
            st.warning(
                f"Not comparable as it stands: {found['data']}. The write-up's figure was measured on other "
                "data; the difference says nothing about the recipe.",
                icon=":material/compare_arrows:",
            )


def resume_offer() -> None:
    """The one resume path (the Train page's button and `train --resume` use it too)."""
    st.caption(
        f"Continue it from its last completed epoch ({epochs} done) in the background, or in a terminal "
        f"with `python -m cxrcore train --resume {run.path}`."
    )
    if st.button("Resume in the background", key="evaluate_resume"):
        try:
            job = job_queue.resume_run(run.path, store=jobs())
            st.success(f"Job `{job['id']}` queued: follow it on the Train page.")
        except CXRError as exc:
            show_error(exc)


def explanations_view(run) -> None:
    """Which explanation method holds up for this model: each one's deletion, insertion, border share and lung
    share averaged over a sample of the test split (computed on request, kept in the run)."""
    st.caption(
        "Which map to believe: each method's maps of a random sample of the test split (the predicted class) are "
        "scored by **deletion** (lower is better: removing the pixels the map ranks first should drop the "
        "probability fast) and **insertion** (higher is better), beside a **random map** that a method must beat. "
        "**Border share** is the share of a map in the image's outer 10% on each side (36% of the area): a "
        f"heuristic about position, not anatomy; above {faithfulness.BORDER_WARN:.0%} a map is flagged. "
        "**Lung share** is the share of a map inside the lung fields found by the shipped lung model: under "
        f"{faithfulness.LUNG_SHARE_WARN:.0%}, most of the evidence the map shows is outside the lungs."
    )
    if not run.has_model():
        st.info("This run has no model yet: its explanations can be scored once it has one.")
        return
    c = st.columns([1, 2, 1])
    size = c[0].number_input(
        "Test images",
        1,
        1000,
        faithfulness.SAMPLE_SIZE,
        key="evaluate_faith_sample",
        help="A random sample of the test split (fixed seed). Each image costs 0.5-2 s per method with "
        "MobileNetV2 on a 2-core CPU, several times more with ResNet50.",
    )
    chosen = c[1].multiselect(
        "Methods",
        list(METHOD_LABELS),
        default=list(METHOD_LABELS),
        format_func=METHOD_LABELS.get,
        key="evaluate_faith_methods",
    )
    if c[2].button("Score the explanations", key="evaluate_faith_go", disabled=not chosen):
        bar = st.progress(0.0, text="Scoring maps...")
        try:
            workflows.score_explanations(
                run.path,
                chosen,
                int(size),
                progress=lambda done, total: bar.progress(done / total, text=f"{done}/{total} maps scored"),
            )
        except CXRError as exc:
            show_error(exc)
        bar.empty()
    found = run.faithfulness()
    if found is None:
        st.info("Not scored yet: choose a sample size and press **Score the explanations**.")
        return
    settings = found["settings"]
    st.markdown(f"**{len(found['images'])} test image(s)**, {found['describe']}; means with 95% intervals over images.")
    st.dataframe(
        faithfulness.table(found),
        hide_index=True,
        width="stretch",
        column_config={
            **{
                name: st.column_config.NumberColumn(format="%.3f")
                for name in ("deletion ↓", "insertion ↑", "border share", "lung share")
            },
            faithfulness.FLAGGED_COLUMN: st.column_config.NumberColumn(format="percent"),
            "seconds per image": st.column_config.NumberColumn(format="%.2f"),
        },
    )
    for line in faithfulness.verdict(found):
        warn = "border" in line or "no better" in line or "outside the lungs" in line
        (st.warning if warn else st.success)(line)
    if found["unreadable"]:
        st.caption(f"{len(found['unreadable'])} sampled image(s) could not be read and were skipped.")
    if settings.get("model") != sampled.model_fingerprint(run):
        st.warning("These scores are of an earlier model file: score again to update them.")


tabs = st.tabs(["Test split", "Training curves", "External validation", "Explanations", "Model card", "Export"])
with tabs[0]:
    test = run.test_evaluation()
    if status == "running":
        st.info(
            "This run is still training: its test-split metrics appear when it finishes. Its best "
            "checkpoint so far can already be used on the Predict page."
        )
    elif status in ("interrupted", "failed", "cancelled"):
        reason = {
            "interrupted": "its process stopped without recording an end (killed, or the machine restarted)",
            "failed": f"it failed: {run.error() or 'no reason recorded'}",
            "cancelled": "it was cancelled",
        }[status]
        st.warning(f"This run did not finish: {reason}.")
        resume_offer()
    if test is not None:
        if status != "succeeded":
            st.caption("Metrics of the best checkpoint so far (evaluated by hand before the run finished).")
        writeup_view(run)
        metrics_view(test.metrics, test.predictions(), key="evaluate_test")
        loso_view(run, test.metrics)
    elif status == "succeeded":
        st.info(
            "This run has no test split, so no test-split metrics: evaluate it on labelled data in the "
            "External validation tab."
        )

with tabs[1]:
    history = run.history()
    if history.empty:
        st.info("No epochs recorded.")
    else:
        left, right = st.columns(2)
        left.plotly_chart(plots.training_curves(history, ("loss",), title="Loss"), width="stretch")
        right.plotly_chart(
            plots.training_curves(history, ("auc",), title="Mean AUC over findings")
            if findings_run
            else plots.training_curves(history, ("accuracy", "auc"), title="Accuracy and AUC"),
            width="stretch",
        )
        st.dataframe(history, width="stretch", hide_index=True)


with tabs[2]:
    if findings_run:
        st.caption(
            "A model that scores well inside one dataset can fall to chance on another hospital's images. "
            "Evaluate it on another findings dataset (NIH ChestX-ray14, CheXpert, a `path,labels` manifest) or on a "
            "manifest with a column of findings: its findings are matched to the model's by name (and exact "
            "equivalents, e.g. Pleural Effusion for Effusion); those it lacks, or has too few images of, are listed "
            "as not evaluated. Results are kept apart from the test split's, in the run's `external/` folder."
        )
        c = st.columns([4, 1])
        folder = c[0].text_input("Labelled folder or CSV manifest", key="evaluate_external_path")
        options = {"labels_column": labels_column_input(c[1], "evaluate_labels_column")}
    else:
        st.caption(
            "A model that scores well inside one dataset can fall to chance on another hospital's images. "
            "Evaluate it on another labelled folder (same class names); results are kept apart from the "
            "test split's, in the run's `external/` folder."
        )
        c = st.columns([4, 1])
        folder = c[0].text_input("Labelled folder or CSV manifest", key="evaluate_external_path")
        options = {"drop_unknown": c[1].checkbox("Skip unknown classes", key="evaluate_drop_unknown")}
    if st.button("Evaluate on this folder", key="evaluate_external_go", disabled=not folder.strip()):
        try:
            with st.spinner("Predicting every image..."):
                result = workflows.evaluate(run.path, folder.strip(), **options)
            st.success(f"Evaluated {result['n']} images; saved in `{result['out_dir']}`.")
        except CXRError as exc:
            show_error(exc)
    externals = {e.name: e for e in run.external_evaluations()}
    if externals:
        name = st.selectbox(
            "Saved external evaluations (newest first)",
            list(externals),
            format_func=lambda n: (
                f"{externals[n].source.get('data', n)} · {externals[n].source.get('evaluated_at', '')}"
            ),
            key="evaluate_external_pick",
        )
        loaded = externals[name]
        if test:
            st.markdown(
                f"`{loaded.source.get('data', name)}` against the run's own test split "
                f"({level_percent(loaded.metrics)} intervals):"
            )
            table = (
                findings_side_by_side(run.labels(), test.metrics, loaded.metrics)
                if findings_run
                else side_by_side(test.metrics, loaded.metrics)
            )
            st.dataframe(table, width="stretch")
            if (drop := transfer_drop(test.metrics, loaded.metrics)) is not None:
                st.warning(drop, icon=":material/trending_down:")
        metrics_view(loaded.metrics, loaded.predictions(), key=f"evaluate_ext_{name}", data=loaded.source.get("data"))

with tabs[3]:
    explanations_view(run)

with tabs[4]:
    card = run.model_card()
    if card is None and run.is_final:
        with st.spinner("Writing the model card..."):
            workflows.write_card(run)
        card = run.model_card()
    if card is None:
        st.info("The model card is written when the run finishes, and refreshed by each evaluation.")
    else:
        c = st.columns([1.3, 0.7, 3])
        c[0].download_button(
            "Download MODEL_CARD.md", card.encode(), file_name=f"{run.run_id}_MODEL_CARD.md", mime="text/markdown"
        )
        if c[1].button("Refresh", key="evaluate_card_refresh", help="Write it again from the run's files"):
            workflows.write_card(run)
            card = run.model_card()
        c[2].caption(f"`{run.file(runs.MODEL_CARD)}`")
        with st.container(border=True):  # headings two levels down: the card sits inside the page
            st.markdown(card.replace("\n## ", "\n#### ").replace("# Model card:", "### Model card:", 1))

with tabs[5]:
    st.caption(
        "The run's best model with its calibration applied, for use outside CXR Lab: a TensorFlow SavedModel or a "
        "TFLite (LiteRT) file. Its input spec (shape, pixel range, how an image is prepared, class names, the "
        "temperature, the operating points) is written beside it as JSON and included in the download."
    )
    if not run.has_model():
        st.info("This run has no model to export yet.")
    else:
        c = st.columns(2)
        for col, (fmt, label) in zip(c, (("savedmodel", "SavedModel"), ("tflite", "TFLite"))):
            if col.button(f"Export {label}", key=f"evaluate_export_{fmt}"):
                try:
                    with st.spinner(f"Exporting {label}..."):
                        st.session_state[f"evaluate_exported_{fmt}"] = str(export.export(run.path, fmt))
                except CXRError as exc:
                    show_error(exc)
            written = st.session_state.get(f"evaluate_exported_{fmt}")
            if written and Path(written).exists() and Path(written).is_relative_to(run.path):
                data, name = export.download_bytes(written)
                col.success(f"Written: `{written}`")
                col.download_button(f"Download {name}", data, file_name=name, key=f"evaluate_download_{fmt}")
