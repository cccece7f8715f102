"""``predict``: a run's model on image files, one JSON line each."""

from __future__ import annotations

import json
import sys

from ..runs import RunDir
from .options import prediction_line


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
            print(prediction_line(result), file=sys.stderr)
        print(json.dumps(result))
    return 2 if failed else 0


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
