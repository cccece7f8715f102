"""``ensemble`` and ``export``: new things made from finished runs."""

from __future__ import annotations

import sys


def cmd_ensemble(args) -> int:
    """Average finished runs into a new run directory (printed last); its comparison with the best member
    goes to stderr (an ensemble of findings runs: by the mean AUC over the findings evaluated)."""
    from ..ensemble import report  # lazy: scikit-learn (about 0.8 s on --help)
    from ..workflows import make_ensemble  # lazy: TensorFlow

    run = make_ensemble(args.runs, tta=args.tta, out_dir=args.out)
    found = report(run)
    if found and found["best_member"]:
        print(ensemble_line(found), file=sys.stderr)
    print(run.path)
    return 0


def ensemble_line(found: dict) -> str:
    """An ensemble against its best member in one line (:func:`cxrcore.ensemble.report`'s result with a best
    member): the paired difference of the macro AUC (a findings ensemble: the mean AUC) and the verdict."""
    findings = found.get("task") == "findings"
    auc = found["difference"]["mean_auc" if findings and "mean_auc" in found["difference"] else "macro_auc"]
    low, high = auc["ci_low"], auc["ci_high"]
    interval = "n/a" if low is None else f"{low:+.3f} to {high:+.3f}"
    return (
        f"ensemble vs its best member {found['best_member']}: {'mean' if findings else 'macro'} AUC "
        f"{auc['difference']:+.3f} (95% CI {interval}, paired bootstrap over patients): {found['verdict']}"
    )


def cmd_export(args) -> int:
    """Export a run's model (calibrated) as a SavedModel or a TFLite file; the path is printed last and its
    input spec (``<path>.json``) sits beside it."""
    from ..workflows import export  # lazy: TensorFlow

    path = export(args.run, args.format, args.out)
    print(f"input spec: {path.with_name(path.name + '.json')}", file=sys.stderr)
    print(path)
    return 0


def add_export_parser(sub) -> None:
    p = sub.add_parser("export", help="export a run's model as a SavedModel or TFLite file; prints the path last")
    p.add_argument("run", metavar="RUN", help="run directory")
    p.add_argument("--format", choices=["savedmodel", "tflite"], required=True)
    p.add_argument("--out", help="folder to write into (default: the run's export/)")
    p.set_defaults(func=cmd_export)


def add_ensemble_parser(sub) -> None:
    p = sub.add_parser("ensemble", help="average finished runs into a new run; prints its directory last")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories: same classes, same split of the same data")
    p.add_argument("--tta", choices=["none", "flip"], default="none", help="flip: each member also sees the mirror")
    p.add_argument("--out", help="parent folder of the new run (default: beside the first member)")
    p.set_defaults(func=cmd_ensemble)
