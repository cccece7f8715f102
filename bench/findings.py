"""Findings (multi-label) models measured through the product, printed as JSON.

    python bench/findings.py demo [--images 1200] [--size 64] [--epochs 15] [--record]
    python bench/findings.py nih [--size 128] [--epochs 8] [--fine-tune 4] [--record]

``demo``: the synthetic findings demo (``make_findings_demo``, five drawn findings) and a small model trained
from scratch (``simple_cnn``, a dense layer of 64): its per-finding test AUCs with 95% intervals and the mean.

``nih``: MobileNetV2-0.35 with ImageNet weights (the file in ``shared/weights``) on ``shared/data/nih-findings-64``
(920 NIH films at 64 px, NIH's 2017 labels), patient-grouped split 50/20/30 so that more findings reach 10
positive test images; then the same model on ``shared/data/cxr-external-nih`` through its ``nih_labels`` column
(890 films at 320 px from the same hospital, NIH's 2020 labels), each finding matched by name. Two confounds
stand between the two figures: the model was trained on 64 px films upsampled to ``--size`` and is evaluated
on 320 px films downsampled to it, and the labels come from two releases of NIH's text mining.

Both go through ``cxrcore.workflows`` (train, calibrate, evaluate, card) as the CLI and the dashboard do, into a
temporary models folder. ``--record`` appends the JSON to ``bench/results/findings_cpu.jsonl``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import tempfile
import time
from pathlib import Path

from _common import MNV2_035_WEIGHTS, ROOT, SHARED


def per_finding(metrics: dict) -> dict:
    """Each evaluated finding's positives, AUC and interval; then the mean and the findings left out."""
    found = {
        name: {
            "positives": row["positives"],
            "auc": None if row["auc"] is None else round(row["auc"], 4),
            "ci": [
                round(v, 4) if v is not None else None
                for v in (row["ci"]["auc"]["ci_low"], row["ci"]["auc"]["ci_high"])
            ],
        }
        for name, row in metrics["findings"].items()
    }
    ci = metrics.get("ci", {}).get("mean_auc") or {}
    return {
        "images": metrics["n"],
        "mean_auc": None if metrics["mean_auc"] is None else round(metrics["mean_auc"], 4),
        "mean_auc_ci": [ci.get("ci_low"), ci.get("ci_high")],
        "findings": found,
        "not_evaluated": metrics["not_evaluated"],
    }


def demo(args) -> dict:
    from cxrcore.config import HeadConfig, TrainConfig
    from cxrcore.data.demo import make_findings_demo
    from cxrcore.workflows import train

    work = Path(tempfile.mkdtemp(prefix="cxr-findings-demo-"))
    data = make_findings_demo(work / "demo", n_images=args.images, image_size=args.size, seed=0)
    config = TrainConfig(
        data=str(data),
        backbone="simple_cnn",
        weights="none",
        image_size=args.size,
        batch_size=32,
        epochs=args.epochs,
        fine_tune_epochs=0,
        patience=0,
        reduce_lr_patience=2,
        head=HeadConfig(dense_units=[64], dropout=0.2),
        seed=3,
    )
    started = time.time()
    run = train(config, out_dir=work / "models")
    return {
        "what": "findings demo, simple_cnn from scratch",
        "images": args.images,
        "size": args.size,
        "epochs": args.epochs,
        "train_seconds": round(time.time() - started, 1),
        "test": per_finding(run.metrics()),
        "run": str(run.path),
    }


def nih(args) -> dict:
    from cxrcore.config import TrainConfig
    from cxrcore.workflows import evaluate, train

    work = Path(tempfile.mkdtemp(prefix="cxr-findings-nih-"))
    config = TrainConfig(
        data=str(SHARED / "data" / "nih-findings-64"),
        backbone="mobilenetv2_0.35",
        weights=str(MNV2_035_WEIGHTS),
        image_size=args.size,
        batch_size=32,
        epochs=args.epochs,
        fine_tune_epochs=args.fine_tune,
        unfreeze=20,
        patience=4,
        reduce_lr_patience=2,
        val_fraction=0.2,
        test_fraction=0.3,
        seed=7,
    )
    started = time.time()
    run = train(config, out_dir=work / "models")
    seconds = round(time.time() - started, 1)
    started = time.time()
    external = evaluate(run.path, SHARED / "data" / "cxr-external-nih", labels_column="nih_labels")
    return {
        "what": "MobileNetV2-0.35 (ImageNet) on nih-findings-64, then cxr-external-nih through nih_labels",
        "size": args.size,
        "epochs": [args.epochs, args.fine_tune],
        "split": run.info().get("n_train"),
        "n_train_val_test": [run.info().get(k) for k in ("n_train", "n_val", "n_test")],
        "train_seconds": seconds,
        "test": per_finding(run.metrics()),
        "external_seconds": round(time.time() - started, 1),
        "external": per_finding(external),
        "confounds": [
            f"trained on 64 px films upsampled to {args.size} px, evaluated on 320 px films downsampled to it",
            "NIH's 2017 labels (nih-findings-64) for training, its 2020 labels (nih_labels) for the external set",
        ],
        "run": str(run.path),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("demo", "nih"))
    parser.add_argument("--images", type=int, default=1200)
    parser.add_argument("--size", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--fine-tune", type=int, default=4)
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    if args.what == "demo":
        args.size, args.epochs = args.size or 64, args.epochs or 15
        result = demo(args)
    else:
        args.size, args.epochs = args.size or 128, args.epochs or 8
        result = nih(args)
    result.update(machine=platform.machine(), when=datetime.datetime.now().isoformat(timespec="seconds"))
    line = json.dumps(result)
    print(line)
    if args.record:
        with open(ROOT / "bench" / "results" / "findings_cpu.jsonl", "a") as out:
            out.write(line + "\n")


if __name__ == "__main__":
    main()
