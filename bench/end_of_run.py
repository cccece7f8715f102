"""The end of a run against the run: ``finish_seconds`` over ``train_seconds``, printed as JSON.

    python bench/end_of_run.py [--data DIR] [--seeds 1,2,3] [--out DIR]

Each seed is one ``python -m cxrcore train`` as a user runs it (a fresh process, empty caches: its own
activation cache and data-audit cache folders), MobileNetV2-0.35 with ImageNet weights, 224 px, 3 + 1
epochs, on cxr-dev by default. ``train_seconds`` is the run's training (computing the activations
included); ``finish_seconds`` is everything from the end of the last epoch to the complete run:
loading the best model, temperature, operating points, feature statistics, the test split's results,
external sets (none here) and the model card. Issue 20's goal: the ratio at most 0.25. One JSON line
per seed, then a summary line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import MNV2_035_WEIGHTS, ROOT, SHARED

COMMAND = ["--backbone", "mobilenetv2_0.35", "--weights", "imagenet", "--image-size", "224"]
COMMAND += ["--epochs", "3", "--fine-tune-epochs", "1"]


def one_run(data: str, seed: int, out: Path) -> dict:
    home, cache = out / "keras", out / f"cache-{seed}"
    target = home / "models" / MNV2_035_WEIGHTS.name
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(MNV2_035_WEIGHTS.resolve())
    shutil.rmtree(cache, ignore_errors=True)
    env = {**os.environ, "KERAS_HOME": str(home), "CXRCORE_CACHE": str(cache), "TF_CPP_MIN_LOG_LEVEL": "3"}
    parent = out / f"runs-{seed}"
    shutil.rmtree(parent, ignore_errors=True)
    command = [sys.executable, "-m", "cxrcore", "train", "--data", data, *COMMAND, "--seed", str(seed)]
    done = subprocess.run([*command, "--out", str(parent)], cwd=ROOT, env=env, capture_output=True, text=True)
    shutil.rmtree(cache, ignore_errors=True)
    if done.returncode != 0:
        return {"seed": seed, "error": done.stderr.strip().splitlines()[-3:]}
    info = json.loads(next(parent.glob("*/run.json")).read_text())
    train, finish = info["train_seconds"], info["finish_seconds"]
    return {
        "seed": seed,
        "train_seconds": train,
        "finish_seconds": finish,
        "ratio": round(finish / train, 3),
        "stage_seconds": info.get("stage_seconds"),
        "inference_ms_per_image": info.get("inference_ms_per_image"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(SHARED / "data" / "cxr-dev"))
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--out", help="working folder (default: a temporary one, removed)")
    args = parser.parse_args()
    if not Path(args.data).exists():
        sys.exit(f"no dataset at {args.data} (cxr-dev lives in ../shared/data; pass --data)")
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="end-of-run-"))
    rows = []
    try:
        for seed in (int(s) for s in args.seeds.split(",")):
            rows.append(one_run(args.data, seed, out))
            print(json.dumps(rows[-1]), flush=True)
    finally:
        if not args.out:
            shutil.rmtree(out, ignore_errors=True)
    ok = [row for row in rows if "error" not in row]
    ratios = sorted(row["ratio"] for row in ok)
    print(
        json.dumps(
            {
                "data": args.data,
                "runs": len(ok),
                "train_seconds": [row["train_seconds"] for row in ok],
                "finish_seconds": [row["finish_seconds"] for row in ok],
                "ratio_max": ratios[-1] if ratios else None,
                "ratio_median": ratios[len(ratios) // 2] if ratios else None,
                "goal": 0.25,
            }
        )
    )


if __name__ == "__main__":
    main()
