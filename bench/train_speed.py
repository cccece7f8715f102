"""Training speed: the notebook way against the project's default path, printed as JSON (last line).

    python bench/train_speed.py [--data DIR] [--limit N] [--backbone NAME] [--weights FILE] [--throughput]
                                [--image-size N] [--batch-size N] [--epochs N] [--fine-tune-epochs N]

Both train the same model (backbone, head, two stages, learning rates, seed) on the same split:

- **notebook**: what the reference write-ups do: a Python generator opens each image with Pillow,
  resizes it and yields batches, and ``model.fit`` runs the whole model on every image every epoch;
- **project**: ``cxrcore.train`` as the dashboard and the jobs run it (decoding through the one
  pixel function, the activation cache on).

Timed: each training stage (computing and caching activations included). Not timed: process
start, building the model, and the end-of-run evaluation and reports, which are the same for both.
The ceiling is what the project cannot avoid: one forward pass of the frozen part per image (the
activation cache's own time), plus the training of the layers above the cut; ``ceiling_ratio`` says
how close the project gets to it. ``--weights`` defaults to the shared ImageNet file for
MobileNetV2-0.35; for other backbones pass a weights file (random weights saved with
``save_weights`` give the same speed: a frozen stage exists).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import MNV2_035_WEIGHTS, SHARED


def notebook_way(frame, classes, config, stage_epochs) -> dict:
    """The reference notebooks' loop: PIL in a Python generator, the whole model every epoch."""
    import keras
    from PIL import Image

    from cxrcore.training.model import build_model
    from cxrcore.training.train import compile_for_stage

    keras.utils.set_random_seed(config.seed)
    size, batch = config.image_size, config.batch_size
    lookup = {c: i for i, c in enumerate(classes)}
    train = frame[frame["split"] == "train"].reset_index(drop=True)
    val = frame[frame["split"] == "val"].reset_index(drop=True)

    def batches(table, shuffle):
        rng = np.random.default_rng(config.seed)
        while True:
            order = rng.permutation(len(table)) if shuffle else np.arange(len(table))
            for start in range(0, len(order), batch):
                rows = table.iloc[order[start : start + batch]]
                x = np.stack(
                    [np.asarray(Image.open(p).convert("RGB").resize((size, size)), np.float32) for p in rows["path"]]
                )
                y = keras.utils.to_categorical(rows["label"].map(lookup), len(classes))
                yield x, y

    model = build_model(config.backbone, len(classes), image_size=size, weights=config.weights, head=config.head)
    out, done = {}, 0
    for stage, epochs in stage_epochs:
        compile_for_stage(model, config, stage, pretrained=True)
        started = time.perf_counter()
        history = model.fit(
            batches(train, True),
            steps_per_epoch=math.ceil(len(train) / batch),
            validation_data=batches(val, False),
            validation_steps=math.ceil(len(val) / batch),
            initial_epoch=done,
            epochs=done + epochs,
            verbose=0,
        )
        out[f"{stage}_seconds"] = round(time.perf_counter() - started, 2)
        out["val_accuracy"] = float(history.history["val_accuracy"][-1])
        done += epochs
    return out


def project_way(config, out_dir) -> dict:
    from cxrcore.workflows import train

    run = train(config, out_dir=out_dir)
    info, history = run.info(), run.history()
    seconds = info.get("stage_seconds") or {}
    return {
        "frozen_seconds": seconds.get("frozen"),
        "finetune_seconds": seconds.get("finetune"),
        "val_accuracy": float(history["val_accuracy"].iloc[-1]),
        "frozen_cut": info.get("frozen_cut"),
        "finetune_cut": info.get("finetune_cut"),
        "run": str(run.path),
    }


def resnet50_throughput(image_size: int, batch_size: int) -> dict:
    """ResNet50's images/s: on a GPU float32 and mixed_float16, XLA off and on; on a CPU the default."""
    import tensorflow as tf
    import throughput

    gpu = bool(tf.config.list_physical_devices("GPU"))
    return throughput.run(
        "resnet50",
        image_size,
        batch_size if not gpu else max(batch_size, 64),
        ["float32", "mixed_float16"] if gpu else ["float32"],
        ["off", "on"] if gpu else ["off"],
        steps=20 if gpu else 3,
        max_seconds=20.0,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(SHARED / "data" / "cxr-dev"))
    parser.add_argument("--limit", type=int, help="use only this many images (a stratified sample)")
    parser.add_argument("--backbone", default="mobilenetv2_0.35")
    parser.add_argument("--weights", default=str(MNV2_035_WEIGHTS))
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--fine-tune-epochs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-notebook", action="store_true", help="time the project only")
    parser.add_argument(
        "--throughput",
        action="store_true",
        help="also record ResNet50's images/s at --image-size (forward and training step; on a GPU per "
        "precision and XLA setting): bench/throughput.py",
    )
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="cxr-train-speed-"))
    os.environ["CXRCORE_CACHE"] = str(tmp / "cache")  # a cold activation cache: its cost is counted

    from cxrcore.config import HeadConfig, TrainConfig
    from cxrcore.data.index import build_index
    from cxrcore.training.train import prepare_data

    data = args.data
    if args.limit:
        index = build_index(data)
        share = min(1.0, args.limit / len(index))
        sample = index.groupby("label").sample(frac=share, random_state=0)
        data = str(tmp / "subset.csv")
        sample[["path", "label", "patient_id"]].to_csv(data, index=False)
    config = TrainConfig(
        data=data,
        backbone=args.backbone,
        weights=args.weights,
        image_size=args.image_size,
        batch_size=args.batch_size,
        epochs=args.epochs,
        fine_tune_epochs=args.fine_tune_epochs,
        patience=0,
        reduce_lr_patience=0,
        class_weights="none",
        head=HeadConfig(),
        seed=args.seed,
    ).resolved()
    frame, classes = prepare_data(config)
    n_train = int((frame["split"] == "train").sum())
    stages = [("frozen", config.epochs), ("finetune", config.fine_tune_epochs)]
    results = {}
    if not args.skip_notebook:
        results["notebook"] = notebook_way(frame, classes, config, stages)
    results["project"] = project_way(config, tmp / "models")
    for found in results.values():
        total = sum(found.get(f"{s}_seconds") or 0 for s, _ in stages)
        found["train_seconds"] = round(total, 2)
        found["images_per_second"] = round(n_train * (config.epochs + config.fine_tune_epochs) / total, 1)
    activations = [json.loads(p.read_text()) for p in (tmp / "cache" / "features").glob("*/meta.json")]
    caching = sum(a.get("seconds", 0) for a in activations)
    results["project"]["activation_seconds"] = round(caching, 2)
    if "notebook" in results:
        results["speed_ratio"] = round(results["notebook"]["train_seconds"] / results["project"]["train_seconds"], 2)
        results["val_accuracy_difference"] = round(
            results["project"]["val_accuracy"] - results["notebook"]["val_accuracy"], 4
        )
    # the ceiling: the frozen part's forward passes (the caching) are unavoidable; the project's
    # time beyond them is the training of the layers above the cut
    results["ceiling_ratio"] = round(caching / results["project"]["train_seconds"], 3) if caching else None
    results["setup"] = {
        "data": args.data,
        "train_images": n_train,
        "val_images": int((frame["split"] == "val").sum()),
        "backbone": config.backbone,
        "image_size": config.image_size,
        "batch_size": config.batch_size,
        "epochs": [config.epochs, config.fine_tune_epochs],
        "unfreeze": config.unfreeze,
        "cpus": os.cpu_count(),
    }
    if args.throughput:
        results["throughput"] = resnet50_throughput(args.image_size, args.batch_size)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
