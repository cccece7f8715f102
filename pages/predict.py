"""Predict: upload X-rays (PNG, JPEG, DICOM), see class probabilities (a findings run: a probability and a decision
per finding) and what the model looked at."""

from pathlib import Path

import streamlit as st

from cxrcore.data.dicom import dicom_summary
from cxrcore.evaluation import plots
from cxrcore.evaluation.operating_points import KIND_NAMES, KINDS
from cxrcore.explain import faithfulness
from cxrcore.explain.cam import COLORMAPS, METHOD_LABELS, to_png_bytes
from cxrcore.lungs import geometry
from pages.shared import NOTICE, CXRError, analyse, pick_run, predictor, require_app, show_error

require_app()
st.title("Predict")
st.warning(NOTICE, icon=":material/warning:")

run = pick_run("predict_run")
if run is None:
    st.stop()

c = st.columns([1, 1, 1, 1, 1.2])
operating_point = c[4].radio(
    "Decision at",
    list(KINDS),
    format_func=KIND_NAMES.get,
    key="predict_operating_point",
    help="Thresholds chosen on the run's validation split: the target sensitivity misses few cases "
    "(the default); Youden's J balances sensitivity and specificity.",
)
method = c[0].selectbox(
    "Explanation",
    list(METHOD_LABELS),
    format_func=METHOD_LABELS.get,
    key="predict_method",
    help="Grad-CAM is fastest; Score-CAM runs the model many times and is slower.",
)
labels = predictor(run["path"]).labels
multi_label = predictor(run["path"]).multi_label  # a findings run: one sigmoid probability per finding
explained = c[1].selectbox(
    "Explain",
    [-1, *range(len(labels))],
    format_func=lambda i: (
        labels[i] if i >= 0 else "the most probable finding" if multi_label else "the predicted class"
    ),
    key="predict_explain_class",
    help="Which finding's evidence the map shows: by default the most probable one."
    if multi_label
    else "Which class's evidence the map shows: by default the one the model predicts.",
)
colormap = c[2].selectbox("Colormap", list(COLORMAPS), key="predict_colormap")
alpha = c[3].slider("Heatmap opacity", 0.0, 1.0, 0.4, 0.05, key="predict_alpha")
show_lungs = c[3].checkbox(
    "Lung outline",
    value=True,
    key="predict_lung_outline",
    help="Draw the edge of the lung fields found by the shipped lung model over the map, in magenta.",
)


def faithfulness_view(result: dict, key: str) -> None:
    """How far to believe this map: its deletion, insertion, border share and lung share, and the curves."""
    share, inside = result["border_share"], result["lung_share"]
    c = st.columns([1, 1, 1, 1, 2.4])
    c[0].metric("Deletion", f"{result['deletion']:.3f}", help="Lower is better: " + DELETION_HELP)
    c[1].metric("Insertion", f"{result['insertion']:.3f}", help="Higher is better: " + INSERTION_HELP)
    c[2].metric("Border share", "n/a" if share is None else f"{share:.0%}", help=BORDER_HELP)
    lung_text = None if inside is None else faithfulness.percent(inside, faithfulness.LUNG_SHARE_WARN)
    c[3].metric("Lung share", lung_text or "n/a", help=LUNG_HELP)
    c[4].caption(
        f"How far to believe this map ({result['faithfulness']['describe']}). **Deletion** (lower is better) and "
        "**insertion** (higher is better) are the areas under the probability curves below. "
        "**Border share**: the map's mass in the outer 10% of each side (36% of the image; a uniform map has 36%). "
        "**Lung share**: the map's mass inside the lung fields found by the shipped lung model (the magenta outline)."
    )
    if share is None:
        st.info("The map is empty: the model found no positive evidence for this class in the image.")
    elif result["border_flagged"]:
        st.warning(
            f"{share:.0%} of this map lies on the image's border band (more than {faithfulness.BORDER_WARN:.0%}): the "
            "model may be looking at the edge, a text marker or the shoulder rather than the lungs. This is a "
            "heuristic about position, not anatomy.",
            icon=":material/crop_free:",
        )
    lungs = result["lungs"]
    if lungs.found == 0:
        st.caption(
            "The lung model found no lung fields in this image, so the map's lung share is not measured (it may "
            "not be a frontal chest X-ray, or the lung model missed them)."
        )
    elif lungs.status != "ok":
        st.caption(
            f"No lung outline drawn: the lung model found no plausible pair of lungs here ({lungs.status}); the "
            "lung share below it is of what it found and means little."
        )
    if lungs.found and result["lung_flagged"]:
        st.warning(
            f"Most of this map's evidence is outside the lung fields: only {lung_text} of it lies inside the lungs "
            f"the lung model found (under {faithfulness.LUNG_SHARE_WARN:.0%}). The model may be using something "
            "other than the lungs; the share is only as good as the lung outline.",
            icon=":material/pulmonology:",
        )
    with st.expander("Deletion and insertion curves"):
        curves = result["faithfulness"]
        st.plotly_chart(
            plots.faithfulness_curves(curves["deletion_curve"], curves["insertion_curve"], result["class"]),
            width="stretch",
            key=key,
        )


def tested_cell(finding: dict) -> str:
    """How well the run did on a finding on its test split: its AUC (95% CI), or that it was not evaluated."""
    if finding["test_auc"] is None:
        return "not evaluated" if finding["not_evaluated"] else "n/a"
    ci = finding["test_auc_ci"] or {}
    bounds = f" ({ci['ci_low']:.2f}–{ci['ci_high']:.2f})" if ci.get("ci_low") is not None else ""
    return f"{finding['test_auc']:.3f}{bounds}"


def findings_view(where, result: dict, key: str) -> None:
    """A findings run's answer: the decision, each finding's probability, threshold and decision (positive ones
    first), and the probabilities as bars with each finding's threshold marked."""
    decision = result["decision"]
    if decision and decision.get("withheld"):
        where.markdown(f"**No decision at {decision['name']}**: {decision['withheld']}.")
    elif decision:
        positive = [f["finding"] for f in result["findings"] if f["positive"]]  # the most probable first
        where.markdown(f"**Positive at {decision['name']}:** {', '.join(positive) or 'none of the findings'}")
        where.caption("Each finding on its own: positive where its calibrated probability reaches its threshold.")
    else:
        where.caption("This run has no operating points: no decision, only probabilities.")
    unlike = result["unlike_training"]
    if unlike and unlike["flagged"] and not (decision and decision.get("withheld")):  # else the decision says so
        where.caption("The probabilities below are not to be trusted: unlike the training data.")
    called = {True: "positive", False: "negative", None: "no decision"}
    where.dataframe(
        [
            {
                "finding": f["finding"],
                "probability": f"{f['probability']:.1%}",
                "threshold": "n/a" if f["threshold"] is None else f"{f['threshold']:.3f}",
                "decision": called[f["positive"]],
                "test AUC": tested_cell(f),
            }
            for f in result["findings"]
        ],
        hide_index=True,
        width="stretch",
    )
    unmeasured = [f["finding"] for f in result["findings"] if f["not_evaluated"]]
    if unmeasured:
        where.caption(
            f"Not evaluated on the test split (too few positive images to measure): {', '.join(unmeasured)}. "
            "Their probabilities and decisions rest on no measured accuracy."
        )
    figure = plots.probability_bars(result["probabilities"], title="Findings (calibrated; each on its own)")
    marked = [f for f in result["findings"] if f["threshold"] is not None]
    if marked:
        figure.add_scatter(
            x=[f["threshold"] for f in marked],
            y=[f["finding"] for f in marked],
            mode="markers",
            marker=dict(symbol="line-ns-open", size=22, line_width=3, color="black"),
            name="threshold",
        )
    where.plotly_chart(figure, width="stretch", key=key)


DELETION_HELP = (
    "the map's most important pixels are removed first, step by step; the score is the area under the class "
    "probability. A faithful map names the pixels whose loss drops the probability first."
)
INSERTION_HELP = "the most important pixels are revealed first into the removed image; area under the curve."
BORDER_HELP = (
    f"Share of the map in the image's outer band. Above {faithfulness.BORDER_WARN:.0%} it is flagged: a heuristic "
    "about position, not anatomy."
)
LUNG_HELP = (
    "Share of the map inside the lung fields found by the shipped lung model. Under "
    f"{faithfulness.LUNG_SHARE_WARN:.0%} it is flagged: most of the evidence is outside the lungs."
)

uploads = st.file_uploader(
    "Chest X-rays: PNG, JPEG or DICOM (DICOM is recognised by content, whatever its name)",
    accept_multiple_files=True,
    key="predict_upload",
)
if not uploads:
    st.info("Upload one or more images to see the model's prediction and a heatmap of the regions that drove it.")
    st.stop()

for upload in uploads:
    data = upload.getvalue()
    st.divider()
    st.subheader(upload.name)
    try:
        with st.spinner("Predicting and explaining..."):
            result = analyse(
                run["path"],
                upload.name,
                data,
                method,
                colormap,
                alpha,
                operating_point,
                None if explained < 0 else explained,
            )
        facts = dicom_summary(data, name=upload.name)
    except CXRError as exc:  # an unreadable upload: say which and why, go on with the others
        show_error(exc)
        continue
    unlike = result["unlike_training"]
    if unlike and unlike["flagged"]:
        st.error(
            "This image is unlike anything the model was trained on (feature distance "
            f"{unlike['score']:.1f}, beyond {unlike['threshold']:.1f}, the {unlike['percentile']:g}th percentile of "
            "its validation images). The probabilities below mean little for it: it may not be a chest X-ray, "
            "or it comes from a very different source.",
            icon=":material/report:",
        )
    left, middle, right = st.columns([1, 1, 1.2])
    left.image(result["input"], caption="what the model sees", width="stretch")
    lungs = result["lungs"]
    outlined = show_lungs and lungs.status == "ok"  # an outline only around plausible lungs
    shown = geometry.draw_outline(result["overlay"], lungs.mask) if outlined else result["overlay"]
    middle.image(shown, caption=f"{METHOD_LABELS[method]} for {result['class']}", width="stretch")
    decision = result["decision"]
    if multi_label:
        findings_view(right, result, key=f"predict_probs_{upload.file_id}")
    else:
        if decision and decision.get("withheld"):
            right.markdown(f"**No decision at {decision['name']}**: {decision['withheld']}.")
        elif decision:
            positive = ", ".join(decision["positive"]) or "none of the classes"
            right.markdown(f"**Decision at {decision['name']}:** {positive}")
            right.caption(
                "Positive where the calibrated probability reaches the class's threshold: "
                + ", ".join(f"{c} ≥ {t:.3f}" for c, t in decision["thresholds"].items() if t is not None)
            )
        else:
            right.caption("This run was trained before operating points existed: no decision, only probabilities.")
        if unlike and unlike["flagged"] and not (decision and decision.get("withheld")):  # else the decision says so
            right.caption("The probabilities below are not to be trusted: unlike the training data.")
        right.plotly_chart(
            plots.probability_bars(
                result["probabilities"], title=f"{result['label']} ({result['confidence']:.1%}, calibrated)"
            ),
            width="stretch",
            key=f"predict_probs_{upload.file_id}",
        )
    right.download_button(
        "Download overlay (PNG)",
        to_png_bytes(shown),
        file_name=f"{Path(upload.name).stem}_{method.replace('++', 'pp')}_{result['class']}.png",
        mime="image/png",
        key=f"predict_download_{upload.file_id}",
    )
    if facts:
        right.caption("DICOM (non-identifying fields only): " + ", ".join(f"{k} {v}" for k, v in facts.items()))
    faithfulness_view(result, key=f"predict_faith_{upload.file_id}")
