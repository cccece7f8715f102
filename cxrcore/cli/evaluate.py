"""``evaluate``: a run on its test split or on another labelled folder, the report printed for people
(stderr) and a JSON summary (stdout)."""

from __future__ import annotations

import json
import sys

from ..config import parse_pairs
from ..data.index import scan_layout
from ..runs import RunDir


def _with_ci(value, bounds: dict | None) -> str:
    if value is None:
        return "n/a"
    if not bounds or bounds.get("ci_low") is None:
        return f"{value:.3f}"
    return f"{value:.3f} ({bounds['ci_low']:.3f}-{bounds['ci_high']:.3f})"


def report_lines(result: dict) -> list[str]:
    """The evaluation as text: headline and per-class metrics, each with its 95% interval."""
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
    boot = result.get("bootstrap")
    lines.append(
        f"  95% intervals: bootstrap over {boot['patients']} patients, {boot['resamples']} resamples"
        + (
            f" ({boot['images_without_patient_id']} images without a patient id counted as their own patient)"
            if boot["images_without_patient_id"]
            else ""
        )
        if boot
        else "  no intervals: evaluated before they existed"
    )
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
    found = result.get("ood")
    if found:
        lines.append(
            f"  unlike the training data: {found['flagged']} of {found['n']} images ({found['fraction_flagged']:.1%}; "
            f"about {100 - found['percentile']:g}% expected for images like the training data)"
        )
    return lines


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def cmd_evaluate(args) -> int:
    RunDir(args.run_dir).require_model()
    if args.data:
        scan_layout(args.data)
    from ..evaluation.metrics import summary  # lazy: scikit-learn (about 0.8 s on --help)
    from ..workflows import evaluate  # lazy: TensorFlow

    result = evaluate(
        args.run_dir, args.data, drop_unknown=args.drop_unknown, label_map=parse_pairs(args.label_map, "--map")
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
    print(json.dumps(summary(result)))
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
    p.set_defaults(func=cmd_evaluate)
