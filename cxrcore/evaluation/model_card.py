"""A model card per run (``MODEL_CARD.md``): what the model is, what it was trained on, how well it does
with what uncertainty, where it fails, and what it must not be used for.

Written at the end of training and rewritten after each evaluation, from the run's own files only
(:class:`cxrcore.runs.RunDir`), so it never says more than was measured: rendering reads no image (the
data audit is the one recorded in the run, ``audit.json``). The limitations are
stated from the measured facts: a shortcut the data audit found, an external set where the model
fell, a small test split, images without patient ids, a run that learned nothing.

A findings run (several findings per image, one sigmoid probability each; :mod:`.multilabel`) gets its own
Model line, data table (positive images per finding and split), results (the mean AUC and one row per
finding), calibration (one temperature per finding), operating points per finding, external validation by
mean AUC, its write-up's figures per finding, and a limitation naming every finding left unmeasured.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pandas as pd

from .. import runs
from ..data.findings import NO_FINDING
from ..data.findings_summary import positives as finding_positives
from ..errors import CXRError
from ..explain import faithfulness, sampled
from ..lungs.geometry import LUNG_SHARE_WARN
from ..recipes import writeup_comparison
from . import sanity
from .compare import (
    bootstrap_caption,
    findings_side_by_side,
    findings_table,
    format_value,
    has_intervals,
    interval,
    is_findings,
    loso_sentence,
    loso_table,
    operating_points_table,
)
from .multilabel import TASK as FINDINGS

log = logging.getLogger("cxrcore")

#: a test split smaller than this gets a limitation about its wide intervals
SMALL_TEST = 200
INTENDED_USE = (
    "Research software for studying chest X-ray classifiers: comparing backbones, measuring how they "
    "transfer, and seeing what they look at. **It is not a medical device and must not be used to "
    "diagnose, triage or treat patients.** A clinical use needs a prospective validation on the "
    "intended population, equipment and workflow, and regulatory approval."
)


def _v(metrics: dict, key: str, cls: str | None = None) -> str:
    value = (metrics.get("per_class", {}).get(cls) or {}).get(key) if cls else metrics.get(key)
    return format_value(value, interval(metrics, key, cls) if has_intervals(metrics) else None)


def _table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def _data_section(run: runs.RunDir, config, found_audit: dict | None) -> list[str]:
    lines = ["## Data", "", f"- Training folder: `{config.data}`"]
    if not config.labels.is_identity:
        lines.append(f"- Label scheme: {config.labels.describe()} (names absent from the data change nothing).")
    try:
        split = run.split()
    except CXRError:
        return [*lines, "- The split is not recorded."]
    if run.task() == FINDINGS:
        lines += _findings_data_lines(split, run.labels())
    else:
        counts = split.groupby(["label", "split"]).size().unstack(fill_value=0)
        order = [s for s in ("train", "val", "test") if s in counts.columns]
        rows = [[label, *(int(counts.at[label, s]) for s in order)] for label in counts.index]
        rows.append(["**all**", *(int(counts[s].sum()) for s in order)])
        lines += ["", *_table(["class", *order], rows)]
    patients = split["patient_id"].astype(str)
    known = int((patients != "").sum())
    lines += [
        "",
        f"- Patient ids known for {known:,} of {len(split):,} images; splits are grouped by patient"
        + ("." if known == len(split) else ", and an image without an id counts as its own patient."),
    ]
    if found_audit:
        shortcut = found_audit.get("shortcut") or {}
        what = "any finding against No Finding" if found_audit.get("task") == FINDINGS else "the label"
        if shortcut.get("accuracy") is not None:
            lines.append(
                f"- Data audit, shortcut check: image statistics without anatomy predict {what} with "
                f"{shortcut['accuracy']:.2f} accuracy ({shortcut['ci_low']:.2f}–{shortcut['ci_high']:.2f}) against "
                f"{shortcut['chance']:.2f} chance" + (" — **flagged**." if shortcut.get("flagged") else ".")
            )
        leak = found_audit.get("patient_leak") or {}
        dups = found_audit.get("duplicates") or {}
        lines.append(
            f"- Data audit: {leak.get('patients', 0)} patient(s) across splits, "
            f"{dups.get('groups', 0)} group(s) of identical files ({dups.get('across_splits', 0)} across splits)."
        )
        lines += _sources_lines(found_audit)
    return lines


def _findings_data_lines(split: pd.DataFrame, findings: list[str]) -> list[str]:
    """A findings run's split: positive images per finding and split (an image can hold several), the
    images per split, those holding no finding, and the labels left out (uncertain or blank, ignored)."""
    table = finding_positives(split)
    table = table[table["finding"].isin(findings)]
    if table.empty:
        return ["- The split records no findings."]
    order = [s for s in ("train", "val", "test") if s in set(table["split"])]
    wide = table.pivot(index="finding", columns="split", values="positives").reindex(findings).fillna(0)
    rows = [[name, *(int(wide.at[name, s]) for s in order)] for name in findings]
    sizes = split["split"].value_counts()
    rows.append(["**images**", *(int(sizes.get(s, 0)) for s in order)])
    none = int((split["label"] == NO_FINDING).sum())
    lines = [
        f"- Multi-label: an image can hold several findings; {none:,} of {len(split):,} images hold none "
        f"({NO_FINDING})."
    ]
    left_out = table.groupby("finding", sort=False)["left_out"].sum()
    left_out = left_out[left_out > 0]
    if len(left_out):
        lines.append(
            "- Labels left out (uncertain or blank, ignored for that finding only): "
            + ", ".join(f"{name} {int(n):,}" for name, n in left_out.items())
            + "."
        )
    return [*lines, "", *_table(["finding (positive images)", *order], rows)]


def _sources_lines(found_audit: dict) -> list[str]:
    """The audit's per-source view: each source's images per class (``single class`` where it holds one) and
    the verdict (which quotes the source-only AUC and the source check). An audit recorded before the
    per-source view stored ``sources`` as ``{source: {class: images}}``, without the rest: still read."""
    found = found_audit.get("sources") or []
    if isinstance(found, dict):  # the old shape
        found = [{"source": source, "counts": mix} for source, mix in found.items()]
    lines = []
    for row in found:
        mix = {label: n for label, n in row["counts"].items() if n}
        single = " (single class)" if len(mix) == 1 else ""
        lines.append(f"- Source `{row['source']}`: " + ", ".join(f"{n} {label}" for label, n in mix.items()) + single)
    return lines + [f"- Data audit, sources: {sentence}" for sentence in found_audit.get("verdict") or []]


def _ensemble_section(run: runs.RunDir, found: dict) -> list[str]:
    findings = run.task() == FINDINGS
    rows = []
    for member in run.members():
        metrics = member.metrics() or {}
        auc = metrics.get("macro_auc")
        rows.append(
            [
                member.run_id,
                member.info().get("backbone"),
                f"{member.image_size()} px",
                "one per finding" if findings else f"{member.temperature():.3f}",
                "n/a" if auc is None else f"{auc:.3f}",
            ]
        )
    return [
        "## Ensemble",
        "",
        "- The mean of its members' calibrated probabilities (each member's own temperature), "
        + (
            "each also averaged with the left-right mirrored image."
            if found.get("tta") == "flip"
            else "no test-time augmentation."
        ),
        "- Members share the classes and one split of the same data; their training is in their own model cards.",
        "",
        *_table(["member", "backbone", "input", "temperature", f"test {'mean' if findings else 'macro'} AUC"], rows),
    ]


def _training_section(run: runs.RunDir, config) -> list[str]:
    found = run.ensemble()
    if found is not None:
        return _ensemble_section(run, found)
    info = run.info()
    rows = [
        ["backbone", config.backbone],
        ["weights", config.weights],
        ["input size", f"{run.image_size()} px"],
        ["pixel rules", config.pixels.describe()],
        ["epochs (frozen + fine-tuned)", f"{config.epochs} + {config.fine_tune_epochs} (unfreeze {config.unfreeze})"],
        ["epochs completed", info.get("epochs_completed")],
        ["optimizer, learning rate", f"{config.optimizer}, {config.learning_rate:g}"],
        ["class weights", config.class_weights],
        ["augmentation", ", ".join(f"{k}={v}" for k, v in config.augment.__dict__.items() if v) or "none"],
        ["seed", config.seed],
        ["parameters", f"{info['params']:,}" if isinstance(info.get("params"), int) else "n/a"],
        ["training time", f"{info['train_seconds']:.0f} s" if info.get("train_seconds") else "n/a"],
    ]
    return ["## Training", "", *_table(["setting", "value"], rows)]


def _count(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def _findings_results_section(metrics: dict) -> list[str]:
    """A findings run's test results: the mean AUC and AP over the findings evaluated, one table row per
    evaluated finding (:func:`.compare.findings_table`), then every finding not evaluated with its reason."""
    evaluated, left_out = metrics.get("evaluated") or [], metrics.get("not_evaluated") or {}
    lines = ["## Results on the test split", ""]
    if evaluated:
        lines.append(
            f"- Mean AUC {_v(metrics, 'mean_auc')} over {len(evaluated)} of "
            f"{_count(len(evaluated) + len(left_out), 'finding')} evaluated (mean AP {_v(metrics, 'mean_ap')}), "
            f"on {metrics.get('n', 0):,} images."
        )
    else:
        lines.append(f"- No finding could be evaluated on the {metrics.get('n', 0):,} test images (see below).")
    caption = bootstrap_caption(metrics)
    if caption:
        lines.append(f"- {caption}")
    target = (metrics.get("operating_points") or {}).get("target_sensitivity")
    if evaluated and target is not None:
        lines.append(
            f"- Threshold and what follows it: the operating point chosen on the validation split for sensitivity "
            f"{target:.2f} (calibrated probabilities), applied unchanged; TP, FP, FN, TN are its test images."
        )
    if evaluated:
        table = findings_table(metrics)
        lines += ["", *_table(list(table.columns), table.to_numpy().tolist())]
    if left_out:
        lines += ["", f"- Not evaluated ({_count(len(left_out), 'finding')}; no figure is given for them):"]
        lines += [f"  - {name}: {why}." for name, why in left_out.items()]
    return lines


def _results_section(metrics: dict) -> list[str]:
    if is_findings(metrics):
        return _findings_results_section(metrics)
    lines = ["## Results on the test split", ""]
    lines += [
        f"- Accuracy {_v(metrics, 'accuracy')}, macro F1 {_v(metrics, 'macro_f1')}, "
        f"macro AUC {_v(metrics, 'macro_auc')} on {metrics.get('n', 0):,} images."
    ]
    caption = bootstrap_caption(metrics)
    if caption:
        lines.append(f"- {caption}")
    rows = [
        [cls, *(_v(metrics, key, cls) for key in ("sensitivity", "specificity", "ppv", "npv", "auc"))]
        for cls in metrics.get("classes", [])
    ]
    return [*lines, "", *_table(["class", "sensitivity", "specificity", "PPV", "NPV", "AUC"], rows)]


def _calibration_section(metrics: dict) -> list[str]:
    found = metrics.get("calibration")
    if not found:
        return ["## Calibration", "", "- Not calibrated: probabilities are the network's own (trained before it)."]
    ece, brier = found["ece"], found["brier"]
    if "temperatures" in found:
        return _findings_calibration(found)
    return [
        "## Calibration",
        "",
        f"- Temperature {found['temperature']:.3f}, fitted on the {found.get('fitted_on', 'val')} split; "
        "every probability shown is divided by it (in log space).",
        f"- Test mean ECE {ece['before']['mean']:.4f} before, {ece['after']['mean']:.4f} after; "
        f"mean Brier {brier['before']['mean']:.4f} before, {brier['after']['mean']:.4f} after.",
    ]


def _number(value, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _findings_calibration(found: dict) -> list[str]:
    """A findings run's calibration: one temperature per finding (``sigmoid(logit(p) / T)``) and its test ECE
    before and after, per finding and on average."""
    ece, brier = found.get("ece") or {}, found.get("brier") or {}
    before, after = ece.get("before") or {}, ece.get("after") or {}
    rows = [
        [name, f"{t:.3f}", _number(before.get(name)), _number(after.get(name))]
        for name, t in found["temperatures"].items()
    ]
    return [
        "## Calibration",
        "",
        f"- One temperature per finding, fitted on the {found.get('fitted_on', 'val')} split on the images where "
        "that finding is labelled: each finding's probability is `sigmoid(logit(p) / T)` with its own T.",
        f"- Test ECE ({found.get('bins', 'equal-width')} bins) before and after, per finding:",
        "",
        *_table(["finding", "temperature", "ECE before", "ECE after"], rows),
        "",
        f"- Test mean ECE {_number(before.get('mean'))} before, {_number(after.get('mean'))} after; mean Brier "
        f"{_number((brier.get('before') or {}).get('mean'))} before, "
        f"{_number((brier.get('after') or {}).get('mean'))} after.",
        *(f"- {name}: {why} (temperature 1)." for name, why in (found.get("not_fitted") or {}).items()),
    ]


def _points_section(metrics: dict) -> list[str]:
    found = metrics.get("operating_points")
    if not found:
        return []
    table = operating_points_table(metrics)
    if is_findings(metrics):
        return [
            "## Operating points",
            "",
            f"- Per finding, thresholds on its calibrated probability, chosen on the validation split (target "
            f"sensitivity {found['target_sensitivity']:.2f}, and Youden's J), applied unchanged here; an image is "
            "called positive for a finding at or above its threshold. Test split results (evaluated findings):",
            "",
            *_table(list(table.columns), table.to_numpy().tolist()),
        ]
    return [
        "## Operating points",
        "",
        f"- Thresholds on calibrated probabilities, chosen on the validation split (target sensitivity "
        f"{found['target_sensitivity']:.2f}, and Youden's J), applied unchanged here; test split results:",
        "",
        *_table(list(table.columns), table.to_numpy().tolist()),
    ]


def _findings_external(metrics: dict, evaluations: list) -> list[str]:
    """A findings run's external evaluations: per dataset the mean AUC, its change against the test split,
    the findings evaluated there; then each finding's AUC on the test split and on each dataset, and the
    findings each dataset could not evaluate, with the reason."""
    header = ["data", "images", "mean AUC", "change against the test split", "findings evaluated", "unlike training"]
    inside = metrics.get("mean_auc")
    rows, notes = [], []
    columns = {"test split": metrics}
    for found in evaluations:
        outside = found.metrics
        name = f"`{found.source.get('data', found.name)}`"
        mean = outside.get("mean_auc")
        change = "n/a" if inside is None or mean is None else f"{mean - inside:+.3f}".replace("-", "−", 1)
        flagged = (outside.get("ood") or {}).get("fraction_flagged")
        evaluated, missing = outside.get("evaluated") or [], outside.get("not_evaluated") or {}
        rows.append(
            [
                name,
                f"{outside.get('n', 0):,}",
                _v(outside, "mean_auc"),
                change,
                f"{len(evaluated)} of {len(evaluated) + len(missing)}",
                "n/a" if flagged is None else f"{flagged:.0%}",
            ]
        )
        columns.setdefault(name, outside)
        if missing:
            notes.append(f"- Not evaluated on {name}: " + "; ".join(f"{k} ({why})" for k, why in missing.items()) + ".")
    lines = [*_table(header, rows), ""]
    table = findings_side_by_side(
        columns, list(metrics.get("evaluated") or []) + list(metrics.get("not_evaluated") or {})
    )
    if not table.empty:
        table = table.map(lambda c: "not evaluated" if c.startswith("not evaluated") else c)
        lines += [
            "- AUC per finding (95% CI):",
            "",
            *_table(["finding", *table.columns], [[i, *r] for i, r in zip(table.index, table.to_numpy().tolist())]),
            "",
        ]
    return lines + notes


def _external_section(metrics: dict, evaluations: list) -> list[str]:
    lines = ["## External validation", ""]
    if not evaluations:
        return [*lines, "- None yet: the model has only been tested on images from the sources it was trained on."]
    if is_findings(metrics) or any(is_findings(found.metrics) for found in evaluations):
        return [*lines, *_findings_external(metrics, evaluations)]
    header = ["data", "images", "accuracy", "macro AUC", "AUC drop", "unlike training"]
    rows = []
    for found in evaluations:
        outside = found.metrics
        drop = (
            f"{metrics['macro_auc'] - outside['macro_auc']:+.3f}".replace("+", "−", 1)
            if metrics.get("macro_auc") is not None and outside.get("macro_auc") is not None
            else "n/a"
        )
        flagged = (outside.get("ood") or {}).get("fraction_flagged")
        rows.append(
            [
                f"`{found.source.get('data', found.name)}`",
                f"{outside.get('n', 0):,}",
                _v(outside, "accuracy"),
                _v(outside, "macro_auc"),
                drop,
                "n/a" if flagged is None else f"{flagged:.0%}",
            ]
        )
    return [*lines, *_table(header, rows)]


def limitations(run: runs.RunDir, metrics: dict, evaluations: list, found_audit: dict | None) -> list[str]:
    """The limitations, each a sentence from a measured fact."""
    out = []
    nothing = sanity.learned_nothing(run)
    if nothing:
        out.append(nothing)
    shortcut = (found_audit or {}).get("shortcut") or {}
    if shortcut.get("flagged"):
        out.append(
            f"The training labels can be told apart without looking at the lungs (image statistics alone: "
            f"{shortcut['accuracy']:.2f} accuracy against {shortcut['chance']:.2f} chance): the classes differ in "
            "how their images were made, and the model can have learned that instead of disease."
        )
    for found in evaluations:
        warning = sanity.transfer_drop(metrics, found.metrics)
        if warning:
            out.append(f"On `{found.source.get('data', found.name)}`: {warning}")
    if not evaluations:
        out.append(
            "No external validation: the test split comes from the same sources as the training data, so its "
            "figures say nothing about other hospitals, scanners or populations."
        )
    missing = (metrics or {}).get("not_evaluated") or {}
    if is_findings(metrics) and missing:
        total = len(missing) + len(metrics.get("evaluated") or [])
        out.append(
            f"{len(missing)} of {_count(total, 'finding')} not evaluated on the test split ("
            + "; ".join(f"{name}: {why}" for name, why in missing.items())
            + "): the mean AUC leaves them out, and how well the model finds them is unmeasured."
        )
    if metrics and metrics.get("n", 0) < SMALL_TEST:
        out.append(f"The test split is small ({metrics.get('n', 0)} images): read the intervals, not the point values.")
    orphans = int((metrics.get("bootstrap") or {}).get("images_without_patient_id") or 0)
    if orphans:
        out.append(
            f"{orphans:,} test image(s) have no patient id: images of one patient may sit in more than one split, "
            "which makes the test figures optimistic."
        )
    out.append(
        "Calibration and operating points were fitted on the validation split, from the training sources; on other "
        "data the probabilities and the sensitivity at each threshold can differ (see external validation)."
    )
    return out


def _writeup_section(run: runs.RunDir) -> list[str]:
    """For a run started from a recipe: its write-up's published figures beside the run's."""
    found = writeup_comparison(run)
    if found is None:
        return []
    recipe = found["recipe"]
    lines = ["## Against its write-up", "", f"- Recipe `{recipe.name}`: {recipe.writeup}.", f"- Data: {found['data']}."]
    if run.task() == FINDINGS:
        return [*lines, *_findings_writeup(run, found["rows"]), ""]
    for row in found["rows"]:
        interval = "" if row["ci_low"] is None else f" (95% CI {row['ci_low']:.3f}-{row['ci_high']:.3f})"
        this = "n/a" if row["this_run"] is None else f"{row['this_run']:.3f}"
        lines.append(
            f"- {row['metric']}: published {row['published']:.3f} ({row['published_note']}); this run {this}{interval}."
        )
    if not found["rows"]:
        lines.append("- The write-up published no figure to compare with.")
    return [*lines, ""]


def _plain(name: str) -> str:
    """A finding's name without case, spaces or punctuation (``Pleural_Thickening`` is ``Pleural Thickening``)."""
    return "".join(ch for ch in name.lower() if ch.isalnum())


def _findings_writeup(run: runs.RunDir, rows: list[dict]) -> list[str]:
    """A findings run against its write-up's figures (:func:`cxrcore.recipes.writeup_comparison`): the mean AUC
    and each finding's AUC, published and this run's with its interval; a finding this run does not predict,
    or did not evaluate (with the reason), is said so."""
    if not rows:
        return ["- The write-up published no figure to compare with."]
    metrics = run.metrics() or {}
    predicted = {_plain(name): name for name in run.labels()}
    missing = {_plain(name): why for name, why in (metrics.get("not_evaluated") or {}).items()}
    table = []
    for row in rows:
        metric = row["metric"]
        label = "mean AUC" if metric == "mean_auc" else f"AUC {metric[4:]}" if metric.startswith("auc:") else metric
        bounds = None if row["ci_low"] is None and row["ci_high"] is None else (row["ci_low"], row["ci_high"])
        key = _plain(metric[4:]) if metric.startswith("auc:") else None
        if row["this_run"] is not None:
            this = format_value(row["this_run"], bounds)
            within = "yes" if row["within_interval"] else "no" if bounds else ""
        elif key is not None and key not in predicted:
            this, within = "not predicted by this run", ""
        elif key is not None and key in missing:
            this, within = f"not evaluated: {missing[key]}", ""
        else:
            this, within = "n/a", ""
        table.append([label, f"{row['published']:.3f}", row["published_note"], this, within])
    return [
        "",
        *_table(["figure", "published", "published on", "this run (95% CI)", "published value inside the CI"], table),
    ]


def _explanations_section(run: runs.RunDir) -> list[str]:
    """Each explanation method's faithfulness on a test sample, where it was scored."""
    found = run.faithfulness()
    if not found:
        return []
    rows = []
    for _, row in faithfulness.table(found).iterrows():
        rows.append(
            [
                row["method"],
                f"{row['deletion ↓']:.3f} ({row['deletion 95% CI']})",
                f"{row['insertion ↑']:.3f} ({row['insertion 95% CI']})",
                "" if pd.isna(row["border share"]) else f"{row['border share']:.0%}",
                "" if pd.isna(row["lung share"]) else f"{row['lung share']:.0%}",
            ]
        )
    stale = found["settings"].get("model") != sampled.model_fingerprint(run)
    return [
        "## Explanations",
        "",
        f"- Scored on {len(found['images'])} test image(s) (the predicted class); {found['describe']}. Deletion: lower "
        "is better; insertion: higher is better; border share: the map's mass in the outer 10% of each side (36% of "
        "the image), a heuristic about position, not anatomy.",
        "- Lung share: the map's mass inside the lung fields found by the shipped lung model; under "
        f"{LUNG_SHARE_WARN:.0%}, most of the evidence the map shows is outside the lungs.",
        *(["- These scores are of an earlier model file."] if stale else []),
        "",
        *_table(["method", "deletion (95% CI)", "insertion (95% CI)", "border share", "lung share"], rows),
        "",
        *[f"- {line}" for line in faithfulness.verdict(found)],
        "",
    ]


def _loso_section(run: runs.RunDir, metrics: dict) -> list[str]:
    """For a run of a leave-one-source-out study, the source it was tested on and the whole study; for a
    run beside such a study on the same data (in the same folder), the study beside its internal AUC."""
    study = run.loso()
    if study is None:
        return []
    if study["held_out"] is not None:
        intro = (
            f"- This run is one fold of a leave-one-source-out study: trained without `{study['held_out']}`, "
            f"its test split is every image of `{study['held_out']}`, a source it never saw."
        )
    else:
        intro = f"- {loso_sentence(study, metrics.get('macro_auc'))}"
    table = loso_table(study)
    return ["## Leave one source out", "", intro, "", *_table(list(table.columns), table.values.tolist()), ""]


def render(run: runs.RunDir) -> str:
    """The model card of ``run``, as Markdown."""
    config = run.config()
    metrics = run.metrics() or {}
    evaluations = run.external_evaluations()
    found_audit = run.audit()
    if run.task() == FINDINGS:
        what = f"predicting findings {', '.join(run.labels())} (multi-label: one sigmoid probability per finding)"
    else:
        what = f"classifying {', '.join(run.labels())} (output order)"
    lines = [
        f"# Model card: {run.run_id}",
        "",
        f"*Written by CXR Lab on {time.strftime('%Y-%m-%d %H:%M')} from the run's own files. Status: {run.status()}.*",
        "",
        "## Intended use",
        "",
        INTENDED_USE,
        "",
        "## Model",
        "",
        f"- {config.backbone} {what}, input {run.image_size()} px, pixel rules: {config.pixels.describe()}.",
        "",
        *_data_section(run, config, found_audit),
        "",
        *_training_section(run, config),
        "",
    ]
    if metrics:
        lines += [
            *_results_section(metrics),
            "",
            *_calibration_section(metrics),
            "",
            *_points_section(metrics),
            "",
        ]
        ood = metrics.get("ood")
        if ood:
            lines += [
                "## Images unlike the training data",
                "",
                f"- Threshold: the {ood['percentile']:g}th percentile of the validation images' feature distance "
                f"({ood['threshold']:.2f}); {ood['flagged']} of {ood['n']} test images ({ood['fraction_flagged']:.1%}) "
                "are beyond it. Prediction says so beside the probabilities.",
                "",
            ]
    else:
        lines += ["## Results", "", "- No test results: the run has not finished.", ""]
    lines += _writeup_section(run)
    lines += _loso_section(run, metrics)
    lines += _explanations_section(run)
    lines += [*_external_section(metrics, evaluations), "", "## Limitations", ""]
    lines += [f"- {item}" for item in limitations(run, metrics, evaluations, found_audit)]
    return "\n".join(lines).replace("\n\n\n", "\n\n") + "\n"


def write(run: runs.RunDir) -> Path | None:
    """Write ``MODEL_CARD.md`` into the run directory; returns its path (None, logged, when the run's
    files cannot be read: a card never fails the training or evaluation that asked for it)."""
    path = run.file(runs.MODEL_CARD)
    try:
        runs.write_atomic(path, render(run))
    except (CXRError, OSError) as exc:
        log.error("model card of %s not written: %s", run.run_id, exc)
        return None
    return path
