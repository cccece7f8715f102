"""plotly figure builders: pure functions, data in, ``go.Figure`` out (no I/O, no Streamlit).

Inputs are the structures cxrcore already produces: an index DataFrame, a metrics
dict from :func:`cxrcore.evaluation.metrics.classification_metrics` (a findings run's from
:func:`cxrcore.evaluation.multilabel.findings_metrics`: the ``findings_*`` builders), a ``history.csv`` frame.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from .operating_points import KIND_NAMES

_COLORS = qualitative.Plotly
_LAYOUT = dict(template="plotly_white", margin=dict(l=50, r=20, t=50, b=50))
SPLIT_ORDER = ("train", "val", "test", "")


def class_distribution(index: pd.DataFrame, title: str = "Images per class") -> go.Figure:
    """Grouped bars: images per class, one bar per split (unsplit data: one bar)."""
    counts = index.groupby(["label", "split"]).size().unstack(fill_value=0)
    fig = go.Figure()
    for split in [s for s in SPLIT_ORDER if s in counts.columns]:
        fig.add_bar(
            x=list(counts.index),
            y=counts[split].tolist(),
            name=split or "all",
            text=counts[split].tolist(),
            textposition="auto",
        )
    fig.update_layout(title=title, barmode="group", xaxis_title="class", yaxis_title="images", **_LAYOUT)
    return fig


def findings_positives(table: pd.DataFrame, title: str = "Positive images per finding and split") -> go.Figure:
    """Grouped bars: each finding's positive images per split, from :func:`cxrcore.data.findings_summary.positives`
    (its rows: finding, split, positives, prevalence...); the hover gives the prevalence."""
    fig = go.Figure()
    order = list(dict.fromkeys(table["finding"]))
    for split in [s for s in ("train", "val", "test", "unassigned") if s in set(table["split"])]:
        part = table[table["split"] == split].set_index("finding").reindex(order)
        fig.add_bar(
            x=order,
            y=part["positives"].tolist(),
            name=split,
            customdata=part["prevalence"].tolist(),
            hovertemplate="%{x}<br>%{y} positive images (%{customdata:.1%})<extra>" + split + "</extra>",
        )
    fig.update_layout(title=title, barmode="group", xaxis_title="finding", yaxis_title="positive images", **_LAYOUT)
    return fig


def co_occurrence(matrix: pd.DataFrame, title: str = "Findings together (images holding both)") -> go.Figure:
    """Heatmap of images holding both findings (the diagonal: images holding the finding)."""
    names = list(matrix.index)
    z = matrix.to_numpy()
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=names,
            y=names,
            text=[[str(int(v)) for v in row] for row in z],
            texttemplate="%{text}" if len(names) <= 16 else None,
            colorscale="Blues",
            hovertemplate="%{y} and %{x}<br>%{text} images<extra></extra>",
        )
    )
    fig.update_layout(title=title, yaxis_autorange="reversed", **_LAYOUT)
    return fig


def findings_per_image(counts: Mapping[str, int], title: str = "Findings per image") -> go.Figure:
    """Bars: how many images hold 0, 1, 2... findings (0: the all-negative images, "No Finding")."""
    keys = sorted(counts, key=int)
    fig = go.Figure(go.Bar(x=[int(k) for k in keys], y=[counts[k] for k in keys], text=[counts[k] for k in keys]))
    fig.update_layout(title=title, xaxis_title="positive findings", yaxis_title="images", xaxis_dtick=1, **_LAYOUT)
    return fig


def confusion_matrix(metrics: Mapping, normalized: bool = False, title: str | None = None) -> go.Figure:
    """Heatmap of true (rows) vs predicted (columns); counts or row-normalised fractions."""
    classes = list(metrics["classes"])
    z = metrics["confusion_matrix_normalized" if normalized else "confusion_matrix"]
    text = [[f"{v:.2f}" if normalized else str(int(v)) for v in row] for row in z]
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=classes,
            y=classes,
            text=text,
            texttemplate="%{text}",
            colorscale="Blues",
            zmin=0,
            zmax=1 if normalized else None,
            hovertemplate="true %{y}<br>predicted %{x}<br>%{text}<extra></extra>",
        )
    )
    fig.update_layout(
        title=title or ("Confusion matrix (row-normalised)" if normalized else "Confusion matrix"),
        xaxis_title="predicted",
        yaxis_title="true",
        yaxis_autorange="reversed",
        **_LAYOUT,
    )
    return fig


def roc_curves(metrics: Mapping, title: str = "ROC (one-vs-rest)", name_prefix: str = "") -> go.Figure:
    """One ROC curve per class with its AUC in the legend, plus the chance diagonal; where the
    evaluation has operating points, each is marked where it lands on these images."""
    fig = go.Figure()
    add_roc_traces(fig, metrics, name_prefix)
    add_operating_points(fig, metrics)
    return _roc_frame(fig, title)


def _roc_frame(fig: go.Figure, title: str) -> go.Figure:
    """The chance diagonal, the axes and the title of a ROC figure."""
    fig.add_scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(dash="dash", color="gray"), name="chance")
    fig.update_layout(
        title=title,
        xaxis_title="false positive rate (1 - specificity)",
        yaxis_title="true positive rate (sensitivity)",
        **_LAYOUT,
    )
    return fig


def add_roc_traces(fig: go.Figure, metrics: Mapping, name_prefix: str = "") -> go.Figure:
    """Add a run's per-class ROC curves to ``fig`` (used to overlay several runs), one colour per class."""
    for i, (name, curve) in enumerate(metrics["roc"].items()):
        if curve is None:
            continue
        fig.add_scatter(
            x=curve["fpr"],
            y=curve["tpr"],
            mode="lines",
            line=dict(color=_COLORS[i % len(_COLORS)]),
            name=f"{name_prefix}{name} (AUC {curve['auc']:.3f})",
        )
    return fig


_SYMBOLS = {"sensitivity": "circle", "youden": "diamond"}


def add_operating_points(fig: go.Figure, metrics: Mapping) -> go.Figure:
    """Mark each class's operating points (chosen on validation) at the false positive rate and
    sensitivity they give on these images, in the class's colour."""
    found = (metrics.get("operating_points") or {}).get("classes") or {}
    for i, name in enumerate(metrics.get("classes", list(found))):
        for kind, point in (found.get(name) or {}).items():
            if not point or point.get("sensitivity") is None or point.get("specificity") is None:
                continue
            fig.add_scatter(
                x=[1 - point["specificity"]],
                y=[point["sensitivity"]],
                mode="markers",
                marker=dict(
                    symbol=_SYMBOLS.get(kind, "x"),
                    size=11,
                    color=_COLORS[i % len(_COLORS)],
                    line=dict(color="black", width=1),
                ),
                name=f"{name} at {KIND_NAMES.get(kind, kind)} (threshold {point['threshold']:.3g})",
            )
    return fig


def pr_curves(metrics: Mapping, title: str = "Precision-recall (one-vs-rest)") -> go.Figure:
    """One precision-recall curve per class with its average precision in the legend."""
    fig = go.Figure()
    for name, curve in metrics["pr"].items():
        if curve is None:
            continue
        fig.add_scatter(x=curve["recall"], y=curve["precision"], mode="lines", name=f"{name} (AP {curve['ap']:.3f})")
    fig.update_layout(
        title=title, xaxis_title="recall", yaxis_title="precision", xaxis_range=[0, 1], yaxis_range=[0, 1.02], **_LAYOUT
    )
    return fig


def training_curves(
    history: pd.DataFrame, metrics: Sequence[str] = ("loss", "accuracy"), title: str = "Training curves"
) -> go.Figure:
    """Train and validation curves per epoch, with the stage change marked. A metric the history lacks is
    left out (a findings run records ``auc``, its mean AUC over findings, and no accuracy); when it has none
    of ``metrics`` the title says so."""
    fig = go.Figure()
    if history.empty:
        fig.update_layout(title=f"{title} (no epochs yet)", **_LAYOUT)
        return fig
    if not any(prefix + metric in history for metric in metrics for prefix in ("", "val_")):
        title = f"{title} (not recorded for this run)"
    for metric in metrics:
        for prefix, dash in (("", "solid"), ("val_", "dot")):
            column = prefix + metric
            if column in history:
                fig.add_scatter(
                    x=history["epoch"], y=history[column], mode="lines+markers", name=column, line=dict(dash=dash)
                )
    if "stage" in history and history["stage"].nunique() > 1:
        first_finetune = history.loc[history["stage"] == "finetune", "epoch"]
        if len(first_finetune):
            fig.add_vline(
                x=float(first_finetune.iloc[0]) - 0.5,
                line_dash="dash",
                line_color="gray",
                annotation_text="fine-tuning starts",
            )
    fig.update_layout(title=title, xaxis_title="epoch", **_LAYOUT)
    return fig


def faithfulness_curves(deletion: Sequence[float], insertion: Sequence[float], class_name: str) -> go.Figure:
    """The class probability as the map's most important pixels are removed (deletion) or revealed
    (insertion), against the fraction of pixels; the areas under them are the scores."""
    steps = len(deletion) - 1
    x = [k / steps for k in range(steps + 1)]
    fig = go.Figure()
    fig.add_scatter(x=x, y=list(deletion), mode="lines+markers", name="deletion (lower area is better)")
    fig.add_scatter(x=x, y=list(insertion), mode="lines+markers", name="insertion (higher area is better)")
    fig.update_layout(
        title=f"Probability of {class_name} as pixels are removed or revealed, most important first",
        xaxis_title="fraction of pixels removed / revealed",
        yaxis_title="probability",
        yaxis_range=[0, 1.02],
        **_LAYOUT,
    )
    return fig


def probability_bars(probabilities: Mapping[str, float], title: str = "Class probabilities") -> go.Figure:
    """Horizontal bars of one image's class probabilities, highest on top."""
    items = sorted(probabilities.items(), key=lambda kv: kv[1])
    fig = go.Figure(
        go.Bar(
            x=[v for _, v in items],
            y=[k for k, _ in items],
            orientation="h",
            text=[f"{v:.1%}" for _, v in items],
            textposition="auto",
        )
    )
    fig.update_layout(title=title, xaxis_range=[0, 1], xaxis_title="probability", **_LAYOUT)
    return fig


def image_sizes(index: pd.DataFrame, title: str = "Image sizes (pixels)") -> go.Figure:
    """Overlaid histograms of image widths and heights."""
    fig = go.Figure()
    fig.add_histogram(x=index["width"], name="width", opacity=0.6)
    fig.add_histogram(x=index["height"], name="height", opacity=0.6)
    fig.update_layout(title=title, barmode="overlay", xaxis_title="pixels", yaxis_title="images", **_LAYOUT)
    return fig


def image_modes(index: pd.DataFrame, title: str = "Pixel formats") -> go.Figure:
    """Bars: images per pixel mode (L = 8-bit gray, RGB, I;16 = 16-bit gray, DICOM ...)."""
    counts = index["mode"].value_counts()
    fig = go.Figure(
        go.Bar(x=[str(m) for m in counts.index], y=counts.tolist(), text=counts.tolist(), textposition="auto")
    )
    fig.update_layout(title=title, xaxis_title="mode", yaxis_title="images", **_LAYOUT)
    return fig


def roc_overlay(metrics_by_run: Mapping[str, Mapping], class_name: str, title: str | None = None) -> go.Figure:
    """One class's ROC curve from several runs on one chart (runs without it are skipped)."""
    fig = go.Figure()
    for run, metrics in metrics_by_run.items():
        curve = metrics.get("roc", {}).get(class_name)
        if curve:
            fig.add_scatter(x=curve["fpr"], y=curve["tpr"], mode="lines", name=f"{run} (AUC {curve['auc']:.3f})")
    fig.add_scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(dash="dash", color="gray"), name="chance")
    fig.update_layout(
        title=title or f"ROC for {class_name}",
        xaxis_title="false positive rate",
        yaxis_title="true positive rate",
        **_LAYOUT,
    )
    return fig


def reliability_diagram(metrics: Mapping, title: str = "Reliability (calibrated, one-vs-rest)") -> go.Figure:
    """Observed frequency against mean predicted probability per bin, one line per class (marker
    size follows the images in the bin), plus the diagonal of perfect calibration. Needs
    ``metrics["calibration"]`` (:func:`cxrcore.evaluation.calibration.calibration_report`)."""
    found = (metrics.get("calibration") or {}).get("reliability") or {}
    return _reliability_lines([(str(name), points, None) for name, points in found.items()], title)


def _reliability_lines(lines: list[tuple[str, Mapping, dict | None]], title: str) -> go.Figure:
    """One line per ``(name, reliability bins, line style or None)`` (marker size follows the images in each
    bin; a line without bins is left out), plus the diagonal of perfect calibration."""
    fig = go.Figure()
    for name, points, line in lines:
        counts = list(points.get("count") or [])
        if not counts:
            continue
        biggest = max(counts)
        fig.add_scatter(
            x=points["predicted"],
            y=points["observed"],
            mode="lines+markers",
            name=name,
            marker=dict(size=[6 + 12 * c / biggest for c in counts]),
            customdata=counts,
            hovertemplate="predicted %{x:.2f}<br>observed %{y:.2f}<br>%{customdata} image(s)",
            **({"line": line} if line else {}),
        )
    fig.add_scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(dash="dash", color="gray"), name="perfect")
    fig.update_layout(
        title=title,
        xaxis_title="mean predicted probability",
        yaxis_title="observed frequency",
        xaxis_range=[0, 1],
        yaxis_range=[0, 1.02],
        **_LAYOUT,
    )
    return fig


# -- findings runs (several findings per image, one sigmoid output each) ------------------------------------


def _evaluated(metrics: Mapping) -> list[str]:
    """A findings evaluation's measured findings, in its order (those it did not evaluate have no numbers)."""
    return [name for name in metrics.get("evaluated") or [] if name in (metrics.get("findings") or {})]


def _finding_color(metrics: Mapping, name: str) -> str:
    """One colour per finding, the same on every findings chart (by its place among the evaluated ones)."""
    order = _evaluated(metrics)
    order += [n for n in (metrics.get("calibration") or {}).get("reliability") or {} if n not in order]
    return _COLORS[(order.index(name) if name in order else len(order)) % len(_COLORS)]


def findings_roc(metrics: Mapping, kind: str | None = "sensitivity", title: str = "ROC per finding") -> go.Figure:
    """One ROC curve per evaluated finding (its AUC in the legend) and the chance diagonal; with ``kind``, each
    finding's operating point of that kind (threshold chosen on validation) marked where it lands on these
    images, in the finding's colour (one marker trace)."""
    fig = go.Figure()
    roc = metrics.get("roc") or {}
    for name in _evaluated(metrics):
        curve = roc.get(name)
        if not curve:
            continue
        auc = curve.get("auc")
        fig.add_scatter(
            x=curve["fpr"],
            y=curve["tpr"],
            mode="lines",
            line=dict(color=_finding_color(metrics, name)),
            name=f"{name} (AUC {'n/a' if auc is None else f'{auc:.3f}'})",
        )
    if kind is not None:
        marked = []
        for name in _evaluated(metrics):
            point = ((metrics["findings"][name].get("operating_points") or {}).get(kind)) or {}
            if point.get("sensitivity") is not None and point.get("specificity") is not None:
                marked.append((name, point))
        if marked:
            fig.add_scatter(
                x=[1 - p["specificity"] for _, p in marked],
                y=[p["sensitivity"] for _, p in marked],
                mode="markers",
                marker=dict(
                    symbol=_SYMBOLS.get(kind, "x"),
                    size=11,
                    color=[_finding_color(metrics, n) for n, _ in marked],
                    line=dict(color="black", width=1),
                ),
                text=[f"{n}: threshold {p['threshold']:.3g}" for n, p in marked],
                hovertemplate="%{text}<br>1 - specificity %{x:.2f}<br>sensitivity %{y:.2f}<extra></extra>",
                name=f"at {KIND_NAMES.get(kind, kind)}",
            )
    return _roc_frame(fig, title)


def findings_pr(metrics: Mapping, title: str = "Precision-recall per finding") -> go.Figure:
    """One precision-recall curve per evaluated finding, its average precision (and prevalence, the AP of
    chance) in the legend."""
    fig = go.Figure()
    pr = metrics.get("pr") or {}
    for name in _evaluated(metrics):
        curve = pr.get(name)
        if not curve:
            continue
        ap, prevalence = curve.get("ap"), metrics["findings"][name].get("prevalence")
        chance = "" if prevalence is None else f", chance {prevalence:.2f}"
        fig.add_scatter(
            x=curve["recall"],
            y=curve["precision"],
            mode="lines",
            line=dict(color=_finding_color(metrics, name)),
            name=f"{name} (AP {'n/a' if ap is None else f'{ap:.3f}'}{chance})",
        )
    fig.update_layout(
        title=title, xaxis_title="recall", yaxis_title="precision", xaxis_range=[0, 1], yaxis_range=[0, 1.02], **_LAYOUT
    )
    return fig


def findings_auc(metrics: Mapping, title: str = "AUC per finding (95% CI)") -> go.Figure:
    """Each evaluated finding's AUC with its 95% interval as an error bar, highest on top (findings not
    evaluated have no bar), the mean AUC over findings and chance (0.5) as vertical lines."""
    rows = []
    for name in _evaluated(metrics):
        values = metrics["findings"][name]
        if values.get("auc") is None:
            continue
        ci = (values.get("ci") or {}).get("auc") or {}
        rows.append((name, values["auc"], ci.get("ci_low"), ci.get("ci_high")))
    rows.sort(key=lambda row: row[1])  # the last drawn is on top
    fig = go.Figure(
        go.Scatter(
            x=[auc for _, auc, _, _ in rows],
            y=[name for name, _, _, _ in rows],
            mode="markers",
            marker=dict(size=11, color=[_finding_color(metrics, name) for name, _, _, _ in rows]),
            error_x=dict(
                type="data",
                symmetric=False,
                array=[0 if high is None else high - auc for _, auc, _, high in rows],
                arrayminus=[0 if low is None else auc - low for _, auc, low, _ in rows],
                thickness=2,
                width=6,
            ),
            customdata=[
                ["n/a" if low is None else f"{low:.3f}", "n/a" if high is None else f"{high:.3f}"]
                for _, _, low, high in rows
            ],
            hovertemplate="%{y}<br>AUC %{x:.3f} (95% CI %{customdata[0]}–%{customdata[1]})<extra></extra>",
            name="AUC",
            showlegend=False,
        )
    )
    fig.add_vline(x=0.5, line_dash="dot", line_color="gray", annotation_text="chance")
    if metrics.get("mean_auc") is not None:
        fig.add_vline(
            x=metrics["mean_auc"],
            line_dash="dash",
            line_color="black",
            annotation_text=f"mean {metrics['mean_auc']:.3f}",
            annotation_position="bottom right",
        )
    fig.update_layout(
        title=title, xaxis_title="AUC", xaxis_range=[0, 1.02], height=max(300, 120 + 32 * len(rows)), **_LAYOUT
    )
    return fig


def findings_reliability(metrics: Mapping, title: str = "Reliability per finding (calibrated)") -> go.Figure:
    """Observed frequency against mean calibrated probability per bin, one line per finding of
    ``metrics["calibration"]["reliability"]`` that has labelled images (marker size follows the images in the
    bin), evaluated findings first, plus the diagonal of perfect calibration."""
    found = (metrics.get("calibration") or {}).get("reliability") or {}
    order = [n for n in _evaluated(metrics) if n in found] + [n for n in found if n not in _evaluated(metrics)]
    lines = [
        (str(name), found[name] or {}, dict(color=_finding_color(metrics, name), width=1, dash="dot")) for name in order
    ]
    return _reliability_lines(lines, title)


def findings_counts(
    metrics: Mapping, kind: str = "sensitivity", columns: int = 5, title: str | None = None
) -> go.Figure:
    """A small 2x2 heatmap per evaluated finding at its operating point of ``kind`` (threshold chosen on
    validation): true positive / negative (rows) against called positive / negative (columns), TP, FN, FP, TN
    counted over the finding's labelled images. One heatmap trace per finding that has a threshold of that
    kind; the colour is the share of the row (of the true positives, of the true negatives)."""
    shown = []
    for name in _evaluated(metrics):
        point = ((metrics["findings"][name].get("operating_points") or {}).get(kind)) or {}
        if point.get("threshold") is not None:
            shown.append((name, point))
    title = title or f"2x2 counts per finding at {KIND_NAMES.get(kind, kind)}"
    if not shown:
        fig = go.Figure()
        fig.update_layout(title=f"{title}: no finding has a threshold", **_LAYOUT)
        return fig
    cols = max(1, min(columns, len(shown)))
    rows = (len(shown) + cols - 1) // cols
    fig = make_subplots(
        rows=rows,
        cols=cols,
        subplot_titles=[f"{name}<br>threshold {point['threshold']:.3g}" for name, point in shown],
        horizontal_spacing=0.04,
        vertical_spacing=0.35 / rows,
    )
    for i, (name, point) in enumerate(shown):
        counts = [[point.get("tp"), point.get("fn")], [point.get("fp"), point.get("tn")]]
        shares = [[(v or 0) / max(1, sum(v or 0 for v in row)) for v in row] for row in counts]
        labels = [["TP", "FN"], ["FP", "TN"]]
        fig.add_trace(
            go.Heatmap(
                z=shares,
                x=["called +", "called −"],
                y=["true +", "true −"],
                text=[[f"{labels[r][c]} {counts[r][c]}" for c in range(2)] for r in range(2)],
                texttemplate="%{text}",
                colorscale="Blues",
                zmin=0,
                zmax=1,
                showscale=False,
                name=name,
                hovertemplate=f"{name}<br>%{{y}}, %{{x}}<br>%{{text}} (%{{z:.0%}} of the row)<extra></extra>",
            ),
            row=i // cols + 1,
            col=i % cols + 1,
        )
    fig.update_yaxes(autorange="reversed")
    for i in range(len(shown)):
        if i % cols:  # the row labels once per row of findings
            fig.update_yaxes(showticklabels=False, row=i // cols + 1, col=i % cols + 1)
    fig.update_annotations(font_size=12)
    fig.update_layout(title=title, height=80 + 250 * rows, **{**_LAYOUT, "margin": dict(l=60, r=20, t=100, b=40)})
    return fig
