"""``python -m cxrcore``: index, train, evaluate, predict, ensemble, export, recipes, demo-data, backbones, jobs.

Machine-readable results go to stdout (the run directory, JSON lines); progress and
logs go to stderr. A bad input exits with status 2 and one line ``error: ...``.

One module per command group adds its commands' parsers: :mod:`.data` (index, audit, demo-data),
:mod:`.train` (train, backbones, recipes, cache), :mod:`.evaluate`, :mod:`.predict`, :mod:`.explain`
(explain, faithfulness), :mod:`.lungs`, :mod:`.jobs` and :mod:`.runs` (export, ensemble); what they
share lives in :mod:`.options`. Nothing below this package imports it.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback

from ..errors import CXRError
from . import data, evaluate, explain, jobs, lungs, predict, runs, train


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m cxrcore", description="Train, evaluate and explain chest X-ray classifiers."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    # the order here is the order `--help` lists the commands in
    data.add_index_parser(sub)
    data.add_audit_parser(sub)
    train.add_train_parser(sub)
    evaluate.add_evaluate_parser(sub)
    predict.add_predict_parser(sub)
    explain.add_explain_parser(sub)
    explain.add_faithfulness_parser(sub)
    lungs.add_lungs_parser(sub)
    train.add_cache_parser(sub)
    data.add_demo_data_parser(sub)
    jobs.add_jobs_parser(sub)
    train.add_backbones_parser(sub)
    runs.add_export_parser(sub)
    runs.add_ensemble_parser(sub)
    train.add_recipes_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    try:
        return args.func(args)
    except CXRError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (FileExistsError, ValueError) as exc:  # raised with a clear message by the demo generator
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: still one line, traceback on request
        if os.environ.get("CXRCORE_DEBUG"):
            traceback.print_exc()
        print(
            f"error: unexpected {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} "
            "(set CXRCORE_DEBUG=1 for the traceback)",
            file=sys.stderr,
        )
        return 1
