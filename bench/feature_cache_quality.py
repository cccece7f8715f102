"""Quality of the default path, measured: cached activations against full passes, paired by seed, as JSON.

    python bench/feature_cache_quality.py [--data DEV] [--out DIR] [--seeds 1 2 3 4 5] [--split-seed 42]
                                          [--results bench/results/feature_cache_quality_cpu.json]

Trains MobileNetV2-0.35 (ImageNet weights, 224 px, 3 frozen epochs + 1 fine-tuning epoch) on DEV (default
../shared/data/cxr-dev) twice per training seed, the way a user would (``python -m cxrcore train ...``):
once on the default path (frozen parts trained on cached activations) and once with
``--no-feature-cache`` (the whole network run every epoch). Every run reads test accuracy and macro AUC
from its ``metrics.json``; the summary gives, for each, the mean paired difference (cached - full) over
the seeds with a 95% t-interval over the paired differences, each seed's pair, and the mean
``train_seconds`` of each path.

**One split for every run.** ``--seed`` sets both the split and the training seed, so the split is made
once, before any run, by the library (``build_index`` + ``assign_splits`` at ``--split-seed``: what
``train --seed SPLIT_SEED`` makes of DEV) and written to ``DIR/split-manifest.csv``
(``path,label,patient_id,source,split``). Every run trains on that manifest: a manifest's ``split``
column is kept as it is (``cxrcore/data/splits.py``: a split the layout already has is kept), so
``--seed`` then varies the training alone (weights of the head, batch order, dropout). Each run's
``split.csv`` is checked against the manifest (``split_kept`` in its line).

``KERAS_HOME`` points at ``DIR/keras`` whose ``models/`` links the shared ImageNet file, so
``--weights imagenet`` works offline. Each run gets its own empty ``CXRCORE_CACHE`` (removed when it has
finished), so no cached run reads another's activations: its ``train_seconds`` includes computing them,
as on a first run. Runs already in DIR are read back, so an interrupted benchmark goes on where it stopped.
One JSON line per run, then a summary line; all of it is written to ``--results`` as one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _common import MNV2_035_WEIGHTS, ROOT, SHARED

PATHS = {"cached": [], "full": ["--no-feature-cache"]}
COMMON = [
    "--backbone",
    "mobilenetv2_0.35",
    "--weights",
    "imagenet",
    "--image-size",
    "224",
    "--epochs",
    "3",
    "--fine-tune-epochs",
    "1",
]
METRICS = ("accuracy", "macro_auc")


def split_manifest(data: str, out: Path, split_seed: int) -> Path:
    """``out/split-manifest.csv``: DEV with the split ``train --seed split_seed`` gives it (made once)."""
    manifest = out / "split-manifest.csv"
    if manifest.exists():
        return manifest
    from cxrcore.data.index import build_index
    from cxrcore.data.splits import assign_splits

    frame = assign_splits(build_index(data), seed=split_seed)  # as training.train.prepare_data, no relabelling
    tmp = manifest.with_suffix(".tmp")
    frame[["path", "label", "patient_id", "source", "split"]].to_csv(tmp, index=False)
    os.replace(tmp, manifest)
    return manifest


def keras_home(out: Path, weights: Path) -> Path:
    """A KERAS_HOME whose ``models/`` holds the ImageNet weights file (a link to the shared one)."""
    home = out / "keras"
    target = home / "models" / weights.name
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(weights.resolve())
    return home


def _cell(metrics: dict, name: str) -> dict:
    ci = (metrics.get("ci") or {}).get(name) or {}
    return {"value": metrics.get(name), "ci_low": ci.get("ci_low"), "ci_high": ci.get("ci_high")}


def result_of(run_dir: Path, seed: int, path: str, manifest: Path) -> dict:
    import pandas as pd

    from cxrcore import runs

    run = runs.RunDir(run_dir)
    metrics = run.metrics() or {}
    info = run.info()
    wanted, got = (
        dict(zip(table["path"].map(os.path.realpath), table["split"]))
        for table in (pd.read_csv(manifest, dtype=str, keep_default_na=False), run.split())
    )
    history = run.history()
    return {
        "seed": seed,
        "path": path,
        "run": str(run_dir),
        "status": run.status(),
        "accuracy": _cell(metrics, "accuracy"),
        "macro_auc": _cell(metrics, "macro_auc"),
        "n_test": info.get("n_test"),
        "split_kept": got == wanted,
        "train_seconds": info.get("train_seconds"),
        "stage_seconds": info.get("stage_seconds"),
        "frozen_cut": info.get("frozen_cut"),
        "finetune_cut": info.get("finetune_cut"),
        "best_epoch": info.get("best_epoch"),
        "epochs_completed": info.get("epochs_completed"),
        "history": history[[c for c in ("epoch", "stage", "loss", "val_loss", "val_accuracy") if c in history]]
        .round(4)
        .to_dict("records")
        if len(history)
        else [],
    }


def train(args, manifest: Path, home: Path, parent: Path, seed: int, path: str) -> bool:
    """One ``cxrcore train`` run into ``parent``, with its own cache folder; True when it succeeded."""
    if parent.exists():
        shutil.rmtree(parent)  # an interrupted run: start it again
    cache = Path(args.out) / "cache" / parent.name
    shutil.rmtree(cache, ignore_errors=True)
    env = {**os.environ, "KERAS_HOME": str(home), "CXRCORE_CACHE": str(cache), "TF_CPP_MIN_LOG_LEVEL": "3"}
    command = [sys.executable, "-m", "cxrcore", "train", "--data", str(manifest), *COMMON, *PATHS[path]]
    command += ["--seed", str(seed), "--out", str(parent)]
    started = time.time()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    shutil.rmtree(cache, ignore_errors=True)
    if done.returncode != 0:
        print(json.dumps({"seed": seed, "path": path, "error": done.stderr.strip().splitlines()[-3:]}), flush=True)
        return False
    print(f"# seed {seed} {path}: trained in {time.time() - started:.0f} s", file=sys.stderr, flush=True)
    return True


def paired(rows: list[dict], metric: str) -> dict:
    """Mean of the paired differences cached - full over the seeds with both, and its 95% t-interval."""
    from scipy import stats

    by = {(r["seed"], r["path"]): r[metric]["value"] for r in rows if r.get(metric)}
    pairs = [
        {"seed": s, "cached": by[(s, "cached")], "full": by[(s, "full")], "diff": by[(s, "cached")] - by[(s, "full")]}
        for s in sorted({s for s, _ in by})
        if by.get((s, "cached")) is not None and by.get((s, "full")) is not None
    ]
    diffs = [p["diff"] for p in pairs]
    out = {"pairs": pairs, "n": len(diffs), "mean_diff": statistics.fmean(diffs) if diffs else None}
    if len(diffs) >= 2:
        half = float(stats.t.ppf(0.975, len(diffs) - 1)) * statistics.stdev(diffs) / math.sqrt(len(diffs))
        out.update(ci_low=out["mean_diff"] - half, ci_high=out["mean_diff"] + half)
        out["cached_worse"] = out["ci_high"] < 0
        out["cached_better"] = out["ci_low"] > 0
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(SHARED / "data" / "cxr-dev"))
    parser.add_argument("--weights-file", default=str(MNV2_035_WEIGHTS), help="the ImageNet file KERAS_HOME holds")
    parser.add_argument("--out", default=str(ROOT / "bench" / "out" / "feature-cache-quality"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5], help="training seeds")
    parser.add_argument("--split-seed", type=int, default=42, help="the one split every run trains on")
    parser.add_argument("--results", default=str(ROOT / "bench" / "results" / "feature_cache_quality_cpu.json"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    manifest = split_manifest(args.data, out, args.split_seed)
    home = keras_home(out, Path(args.weights_file))
    rows = []
    for seed in args.seeds:
        for path in PATHS:
            parent = out / f"seed-{seed}-{path}"
            finished = sorted(parent.glob("*/metrics.json"))
            if not finished:
                if not train(args, manifest, home, parent, seed, path):
                    continue
                finished = sorted(parent.glob("*/metrics.json"))
            rows.append(result_of(finished[-1].parent, seed, path, manifest))
            print(json.dumps(rows[-1]), flush=True)
    mean_seconds = {
        path: statistics.fmean(s) if (s := [r["train_seconds"] for r in rows if r["path"] == path]) else None
        for path in PATHS
    }
    summary = {
        "summary": {
            "data": args.data,
            "split_seed": args.split_seed,
            "seeds": args.seeds,
            "settings": COMMON,
            "split_kept_everywhere": all(r["split_kept"] for r in rows),
            **{f"{metric}_diff": paired(rows, metric) for metric in METRICS},
            "mean_train_seconds": mean_seconds,
            "cpu_count": os.cpu_count(),
        }
    }
    print(json.dumps(summary), flush=True)
    results = Path(args.results)
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps({**summary, "runs": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
