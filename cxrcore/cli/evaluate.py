"""``evaluate``: a run on its test split or on another labelled folder, the report printed for people
(stderr) and a JSON summary (stdout)."""

from __future__ import annotations

import json
import sys

from ..config import FindingsOptions, parse_pairs
from ..data.index import scan_layout
from ..runs import RunDir

FINDINGS = "findings"  # a findings run's ``task`` (:data:`cxrcore.evaluation.multilabel.TASK`)


def _with_ci(value, bounds: dict | None) -> str:
    if value is None:
        return "n/a"
    if not bounds or bounds.get("ci_low") is None:
        return f"{value:.3f}"
    return f"{value:.3f} ({bounds['ci_low']:.3f}-{bounds['ci_high']:.3f})"


def report_lines(result: dict) -> list[str]:
    """The evaluation as text: headline and per-class metrics, each with its 95% interval (a findings run:
    :func:`findings_report_lines`)."""
    if result.get("task") == FINDINGS:
        return findings_report_lines(result)
    ci = result.get("ci", {})
    lines = [
        "  "
        + "  ".join(
            f"{name} {_with_ci(result[key], ci.get(key))}"
            for name, key in (("accuracy", "accuracy"), ("macro F1", "macro_f1"), ("macro AUC", "macro_auc"))
        )
    ]
    for name, row in result["per_class"].items():
        row_ci = row.get("ci", {})
        shown = "  ".join(
            f"{key} {_with_ci(row.get(key), row_ci.get(key))}"
            for key in ("sensitivity", "specificity", "ppv", "npv", "auc")
        )
        lines.append(f"  {name:<20} {shown}  n {row['support']}")
    lines.append(_bootstrap_line(result))
    calibration = result.get("calibration")
    if calibration:
        ece = calibration["ece"]
        lines.append(
            f"  calibration: temperature {calibration['temperature']:.3f}, "
            f"ECE {_fmt(ece['before'].get('mean'))} -> {_fmt(ece['after'].get('mean'))}"
        )
    else:
        lines.append("  calibration: none (trained before calibration existed)")
    from ..evaluation.compare import operating_points_table  # lazy: scikit-learn (about 0.8 s on --help)

    points = operating_points_table(result)
    if not points.empty:
        lines.append("  operating points (thresholds chosen on the validation split, applied unchanged):")
        for row in points.to_dict("records"):
            rates = "  ".join(f"{k} {row[k]}" for k in ("sensitivity", "specificity", "PPV", "NPV") if row[k])
            lines.append(f"    {row['class']:<20} {row['operating point']:<18} threshold {row['threshold']}  {rates}")
    return lines + _ood_lines(result)


def _bootstrap_line(result: dict) -> str:
    boot = result.get("bootstrap")
    if not boot:
        return "  no intervals: evaluated before they existed"
    orphans = boot.get("images_without_patient_id")
    return f"  95% intervals: bootstrap over {boot['patients']} patients, {boot['resamples']} resamples" + (
        f" ({orphans} images without a patient id counted as their own patient)" if orphans else ""
    )


def _ood_lines(result: dict) -> list[str]:
    found = result.get("ood")
    if not found:
        return []
    return [
        f"  unlike the training data: {found['flagged']} of {found['n']} images ({found['fraction_flagged']:.1%}; "
        f"about {100 - found['percentile']:g}% expected for images like the training data)"
    ]


def _rate(point: dict, key: str) -> str:
    return _with_ci(point.get(key), (point.get("ci") or {}).get(key))


def findings_report_lines(result: dict) -> list[str]:
    """A findings evaluation as text: the mean AUC (and AP) with its interval over the findings evaluated; one
    line per finding with its positives, AUC and, at the target-sensitivity operating point chosen on
    validation, the threshold, sensitivity, specificity, PPV and NPV; the findings not evaluated and why; the
    intervals, the calibration (the range of the per-finding temperatures) and the unlike-training share."""
    ci = result.get("ci") or {}
    evaluated, left_out = result.get("evaluated") or [], result.get("not_evaluated") or {}
    total = len(evaluated) + len(left_out)
    lines = [
        f"  mean AUC {_with_ci(result.get('mean_auc'), ci.get('mean_auc'))}  "
        f"mean AP {_with_ci(result.get('mean_ap'), ci.get('mean_ap'))}  "
        f"over {len(evaluated)} of {total} findings evaluated, {result.get('n', 0)} images"
    ]
    target = (result.get("operating_points") or {}).get("target_sensitivity")
    for name in evaluated:
        row = (result.get("findings") or {}).get(name) or {}
        auc = _with_ci(row.get("auc"), (row.get("ci") or {}).get("auc"))
        shown = f"positives {row.get('positives')}/{row.get('n')}  AUC {auc}"
        point = (row.get("operating_points") or {}).get("sensitivity")
        if point:
            rates = "  ".join(
                f"{label} {_rate(point, key)}"
                for label, key in (
                    ("sensitivity", "sensitivity"),
                    ("specificity", "specificity"),
                    ("PPV", "ppv"),
                    ("NPV", "npv"),
                )
            )
            shown += f"  threshold {point['threshold']:.4g}  {rates}"
        elif row.get("operating_points") is not None:
            shown += "  threshold: none (the validation split could not choose one)"
        lines.append(f"  {name:<20} {shown}")
    if target is not None:
        lines.append(f"  thresholds: chosen on the validation split for sensitivity {target:.2f}, applied unchanged")
    for name, why in left_out.items():
        lines.append(f"  not evaluated: {name}: {why}")
    lines.append(_bootstrap_line(result))
    calibration = result.get("calibration")
    temperatures = (calibration or {}).get("temperatures") or {}
    if temperatures:
        ece = calibration.get("ece") or {}
        low, high = min(temperatures, key=temperatures.get), max(temperatures, key=temperatures.get)
        lines.append(
            f"  calibration: one temperature per finding, {temperatures[low]:.3f} ({low}) to "
            f"{temperatures[high]:.3f} ({high}), mean ECE {_fmt((ece.get('before') or {}).get('mean'))} -> "
            f"{_fmt((ece.get('after') or {}).get('mean'))}"
        )
    else:
        lines.append("  calibration: none")
    return lines + _ood_lines(result)


def findings_summary(result: dict) -> dict:
    """The JSON summary of a findings evaluation: task, mean AUC, images, intervals (and how they were made),
    the findings evaluated and those not evaluated with the reason."""
    out = {
        "task": FINDINGS,
        "mean_auc": result.get("mean_auc"),
        "mean_ap": result.get("mean_ap"),
        "n": result.get("n"),
        "evaluated": list(result.get("evaluated") or []),
        "not_evaluated": dict(result.get("not_evaluated") or {}),
    }
    if "ci" in result:
        out["ci"] = result["ci"]
        out["bootstrap"] = result.get("bootstrap")
    return out


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def cmd_evaluate(args) -> int:
    RunDir(args.run_dir).require_model()
    labels_column = getattr(args, "labels_column", None) or ""
    if args.data:
        scan_layout(args.data, FindingsOptions(labels_column=labels_column) if labels_column else None)
    from ..evaluation.metrics import summary  # lazy: scikit-learn (about 0.8 s on --help)
    from ..workflows import evaluate  # lazy: TensorFlow

    result = evaluate(
        args.run_dir,
        args.data,
        drop_unknown=args.drop_unknown,
        label_map=parse_pairs(args.label_map, "--map"),
        labels_column=labels_column,
    )
    for line in report_lines(result):
        print(line, file=sys.stderr)
    shared = result.get("shared_patients") or {}
    if shared.get("patients"):
        print(
            f"WARNING: {shared['patients']} patient(s) of this set are in the run's training or validation split "
            f"(e.g. {', '.join(shared['examples'])}): its results are not independent",
            file=sys.stderr,
        )
    print(f"results written to {result['out_dir']}", file=sys.stderr)
    print(json.dumps(findings_summary(result) if result.get("task") == FINDINGS else summary(result)))
    return 0


def add_evaluate_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="evaluate a run; prints a JSON summary last")
    p.add_argument("run_dir")
    p.add_argument("--data", help="another labelled folder (external validation)")
    p.add_argument("--drop-unknown", action="store_true", help="skip images of classes the model does not know")
    p.add_argument(
        "--map",
        action="append",
        metavar="NAME=CLASS",
        dest="label_map",
        help="a class name of --data as a model class, e.g. Pneumonia=Abnormal (repeatable)",
    )
    p.add_argument(
        "--labels-column",
        metavar="NAME",
        default="",
        help="a findings run: read --data's manifest column NAME as its findings (|-separated, 'No Finding' for "
        "none), e.g. nih_labels",
    )
    p.set_defaults(func=cmd_evaluate)
