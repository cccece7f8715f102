"""``predict``: a run's model on image files, one JSON line each (and one line for people on stderr: for a
findings run, :func:`findings_line`)."""

from __future__ import annotations

import json
import sys

from ..runs import RunDir
from .options import prediction_line, unlike_note


def cmd_predict(args) -> int:
    RunDir(args.run_dir).require_model()
    from ..predict import Predictor  # lazy: TensorFlow

    predictor = Predictor(args.run_dir)
    failed = 0
    for result in predictor.predict_each(args.images, operating_point=args.operating_point):
        if "error" in result:
            failed += 1
            print(f"error: {result['error']}", file=sys.stderr)
        else:
            print(result_line(result), file=sys.stderr)
        print(json.dumps(result))
    return 2 if failed else 0


def result_line(result: dict) -> str:
    """One prediction for people: :func:`findings_line` for a findings run, else the class line
    (:func:`cxrcore.cli.options.prediction_line`)."""
    return findings_line(result) if result.get("task") == "findings" else prediction_line(result)


def findings_line(result: dict) -> str:
    """One findings prediction for people: the findings called positive at the operating point first, then
    the others, each with its calibrated probability and threshold; without a decision (none, or withheld for an
    image unlike the training data) the findings by probability; and, when so, that the image is unlike anything
    the model was trained on."""

    def shown(entry: dict, sign: str) -> str:
        threshold = entry["threshold"]
        return f"{entry['finding']} {entry['probability']:.1%}" + (
            f" ({sign} {threshold:.3f})" if threshold is not None and sign else ""
        )

    findings, decision = result["findings"], result.get("decision")
    line = f"{result['image']}: "
    if decision and not decision.get("withheld"):
        positive = [shown(f, ">=") for f in findings if f["positive"]]
        negative = [shown(f, "<") for f in findings if not f["positive"]]
        line += f"positive at {decision['name']}: {', '.join(positive) or 'none'}"
        line += f"; negative: {', '.join(negative)}" if negative else ""
    else:
        line += f"no decision at {decision['name']}; " if decision else ""
        line += ", ".join(shown(f, "") for f in findings)
    line += " (calibrated, one probability per finding)"
    return line + unlike_note(result)


def add_predict_parser(sub) -> None:
    p = sub.add_parser("predict", help="predict images; one JSON line each")
    p.add_argument("run_dir")
    p.add_argument("images", nargs="+")
    p.add_argument(
        "--operating-point",
        choices=["sensitivity", "youden"],
        default="sensitivity",
        help="the thresholds a decision is made at (chosen on validation; default: the target sensitivity)",
    )
    p.set_defaults(func=cmd_predict)
