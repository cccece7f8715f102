"""Close the gap: what moves external AUC, with internal AUC kept, printed as JSON lines.

    python bench/close_the_gap.py [--data DEV] [--external EXT] [--out DIR] [--only NAME ...]

Trains one MobileNetV2-0.35 (abnormal-vs-normal) per option on DEV (default
../shared/data/cxr-dev) and evaluates each on EXT (default ../shared/data/cxr-external-nih),
the way a user would: ``python -m cxrcore train ... --external EXT``. The external set is
only ever evaluated, never trained or tuned on: every option runs with the same fixed
settings, and all of them are reported, whatever they score. One JSON line per option
(internal and external macro AUC and accuracy with 95% intervals, the ECE, the share of external
images flagged as unlike the training data when the run has that statistic), then a summary
line. Runs already in DIR are read back, so an interrupted benchmark goes on where it stopped.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from _common import MNV2_035_WEIGHTS, ROOT, SHARED

#: every option tried: its name and the CLI flags it adds to the common ones
OPTIONS = {
    "baseline": [],
    "crop border 10%": ["--crop-border", "0.1"],
    "histogram equalisation": ["--equalize"],
    "crop 10% + equalisation": ["--crop-border", "0.1", "--equalize"],
    "strong augmentation": ["--augment", "rotation=10,zoom=0.15,contrast=0.4,brightness=0.3"],
    "input 320 px": ["--image-size", "320"],
    "lung crop": ["--lung-crop"],
    "lung mask": ["--lung-mask"],
}
COMMON = [
    "--backbone",
    "mobilenetv2_0.35",
    "--label-preset",
    "abnormal-vs-normal",
    "--epochs",
    "6",
    "--fine-tune-epochs",
    "3",
    "--batch-size",
    "32",
    "--seed",
    "42",
]


def _cell(metrics: dict, name: str) -> dict:
    ci = (metrics.get("ci") or {}).get(name) or {}
    return {"value": metrics.get(name), "ci_low": ci.get("ci_low"), "ci_high": ci.get("ci_high")}


def result_of(run_dir: Path, option: str) -> dict:
    from cxrcore import runs

    run = runs.RunDir(run_dir)
    internal = run.metrics() or {}
    row = {
        "option": option,
        "run": str(run_dir),
        "status": run.status(),
        "pixels": run.config().to_dict()["pixels"],
        "train_seconds": run.info().get("train_seconds"),
        "finish_seconds": run.info().get("finish_seconds"),
        "internal_auc": _cell(internal, "macro_auc"),
        "internal_accuracy": _cell(internal, "accuracy"),
    }
    for evaluation in run.external_evaluations():
        found = evaluation.metrics or {}
        row["external_data"] = evaluation.source.get("data")
        row["external_auc"] = _cell(found, "macro_auc")
        row["external_accuracy"] = _cell(found, "accuracy")
        row["external_ece"] = ((found.get("calibration") or {}).get("ece") or {}).get("after", {}).get("mean")
        row["external_unlike_training"] = (found.get("ood") or {}).get("fraction_flagged")
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(SHARED / "data" / "cxr-dev"))
    parser.add_argument("--external", default=str(SHARED / "data" / "cxr-external-nih"))
    parser.add_argument("--weights", default=str(MNV2_035_WEIGHTS))
    parser.add_argument("--out", default=str(ROOT / "bench" / "out" / "close-the-gap"))
    parser.add_argument("--only", nargs="*", choices=list(OPTIONS), help="run only these options")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(ROOT))
    rows = []
    for option in args.only or OPTIONS:
        parent = out / option.replace(" ", "-").replace("%", "").replace("+", "and")
        finished = sorted(parent.glob("*/metrics.json"))
        if not finished:
            if parent.exists():
                shutil.rmtree(parent)  # an interrupted run of this option: start it again
            command = [sys.executable, "-m", "cxrcore", "train", "--data", args.data, "--weights", args.weights]
            command += [*COMMON, *OPTIONS[option], "--external", args.external, "--out", str(parent)]
            started = time.time()
            done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
            if done.returncode != 0:
                print(json.dumps({"option": option, "error": done.stderr.strip().splitlines()[-3:]}), flush=True)
                continue
            print(f"# {option}: trained in {time.time() - started:.0f} s", file=sys.stderr, flush=True)
            finished = sorted(parent.glob("*/metrics.json"))
        rows.append(result_of(finished[-1].parent, option))
        print(json.dumps(rows[-1]), flush=True)
    print(json.dumps({"summary": [{k: r.get(k) for k in ("option", "internal_auc", "external_auc")} for r in rows]}))


if __name__ == "__main__":
    main()
