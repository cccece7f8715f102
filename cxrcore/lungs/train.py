"""Training the lung segmentation model: ``python -m cxrcore lungs train --data DIR [DIR ...]``.

A mask set is a folder with ``images/``, ``masks/`` (0 outside, 255 lung, the image's size) and a
``manifest.csv`` whose ``image`` and ``mask`` columns give the two files of each pair, relative to the
folder. Each set is split on its own (fixed seed): 80% training, 10% validation (keeps the best epoch),
10% held out for the Dice and IoU in the model's record, measured at each image's own size after the
same post-processing that ``lungs segment`` applies.

The result is a folder with ``lungs.keras`` and ``lungs.json``, the record of how it was made: the data
sets (with the commit and licence lines from their ``SOURCE.md``), the split, the settings, the epochs and
the held-out scores.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..data.pixels import resize
from ..errors import ConfigError, DataError
from . import geometry
from .augment import augment
from .segment import LungSegmenter

Progress = Callable[[str], None] | None

MODEL_FILE, RECORD_FILE = "lungs.keras", "lungs.json"


@dataclass(frozen=True)
class LungTrainConfig:
    data: tuple[str, ...]
    out: str
    size: int = 128
    encoder: str = "mobilenetv2_0.35"
    weights: str | None = "imagenet"  # for a MobileNetV2 encoder: "imagenet", a file's path, or None
    epochs: int = 30
    batch_size: int = 16
    learning_rate: float = 2e-3
    seed: int = 0
    limit: int | None = None  # at most this many pairs per set (quick runs and tests)
    exclude: tuple[str, ...] = ()  # "COLUMN=VALUE": manifest rows to leave out (e.g. source=Shenzhen)
    weights_licence: str = ""  # the terms the trained weights are shipped under, stated by whoever trains them

    def validate(self) -> None:
        if not self.data:
            raise ConfigError("--data: give at least one mask set folder")
        for name, value, low in (("epochs", self.epochs, 1), ("batch_size", self.batch_size, 1)):
            if not isinstance(value, int) or value < low:
                raise ConfigError(f"--{name.replace('_', '-')} must be a whole number >= {low}, got {value!r}")
        if not 0 < self.learning_rate < 1:
            raise ConfigError(f"--learning-rate must be in (0, 1), got {self.learning_rate}")
        for rule in self.exclude:
            if rule.count("=") != 1 or not all(rule.split("=")):
                raise ConfigError(f"--exclude takes COLUMN=VALUE, got {rule!r}")
        if self.limit is not None and self.limit < 10:
            raise ConfigError(f"--limit must be at least 10 (each set is split 80/10/10), got {self.limit}")


@dataclass
class MaskSet:
    """One mask set's pairs, read and split."""

    name: str
    folder: str
    source: dict = field(default_factory=dict)
    pairs: list[tuple[str, str]] = field(default_factory=list)
    split: dict[str, list[int]] = field(default_factory=dict)


_LICENCE = re.compile(r"licen[cs]e|CC BY|copyright|terms apply", re.I)


def _blocks(text: str) -> list[str]:
    """A Markdown text's paragraphs and list items, each joined into one line."""
    blocks, current = [], []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith(("- ", "* ", "#")):
            if current:
                blocks.append(" ".join(current))
            current = [stripped.lstrip("-* ").strip()] if stripped and not stripped.startswith("#") else []
        else:
            current.append(stripped)
    if current:
        blocks.append(" ".join(current))
    return [b for b in blocks if b]


def _source_facts(folder: Path) -> dict:
    """Commit hashes and the licence statements from a set's SOURCE.md (what the model's record must carry)."""
    path = folder / "SOURCE.md"
    if not path.is_file():
        return {"source_file": None}
    text = path.read_text(encoding="utf-8", errors="replace")
    return {
        "source_file": "SOURCE.md",
        "title": next((line.lstrip("# ") for line in text.splitlines() if line.startswith("#")), ""),
        "commits": sorted(set(re.findall(r"\b[0-9a-f]{40}\b", text))),
        "licence": [block for block in _blocks(text) if _LICENCE.search(block)],
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
    }


def read_mask_set(
    folder: str | Path, *, seed: int = 0, limit: int | None = None, exclude: tuple[str, ...] = ()
) -> MaskSet:
    """A set's pairs from its manifest, checked to exist, and its 80/10/10 split. ``exclude`` rules
    (``COLUMN=VALUE``) leave out the rows whose column has that value, in manifests that have the column,
    before the split."""
    folder = Path(folder).expanduser()
    manifest = folder / "manifest.csv"
    if not manifest.is_file():
        raise DataError(f"{folder}: no manifest.csv (a mask set has images/, masks/ and manifest.csv)")
    with open(manifest, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if rows and not {"image", "mask"} <= set(rows[0]):
        raise DataError(f"{manifest}: needs 'image' and 'mask' columns, has {', '.join(rows[0])}")
    excluded = {}
    for rule in exclude:
        column, value = rule.split("=", 1)
        if rows and column in rows[0]:
            kept = [row for row in rows if row[column] != value]
            excluded[rule] = len(rows) - len(kept)
            rows = kept
    pairs = [(str(folder / row["image"]), str(folder / row["mask"])) for row in rows]
    missing = [p for pair in pairs for p in pair if not Path(p).is_file()]
    if missing:
        raise DataError(f"{manifest}: {len(missing)} listed files are missing, e.g. {missing[0]}")
    if len(pairs) < 10:
        raise DataError(f"{folder}: {len(pairs)} pairs; at least 10 are needed for an 80/10/10 split")
    order = np.random.default_rng(seed).permutation(len(pairs))
    if limit:
        order = order[:limit]
    n_val = n_test = max(1, int(round(len(order) * 0.1)))
    split = {
        "train": sorted(order[n_val + n_test :].tolist()),
        "val": sorted(order[:n_val].tolist()),
        "test": sorted(order[n_val : n_val + n_test].tolist()),
    }
    source = {**_source_facts(folder), **({"excluded": excluded} if excluded else {})}
    return MaskSet(folder.name, str(folder), source, pairs, split)


def _read_gray(path: str, size: int | None) -> np.ndarray:
    try:
        with Image.open(path) as img:
            gray = np.asarray(img.convert("L"), dtype=np.uint8)
        return np.asarray(resize(gray, size) if size else gray, dtype=np.float32)
    except (OSError, ValueError) as exc:  # Pillow's errors for a truncated or unknown file
        raise DataError(f"cannot read {path}: {str(exc).splitlines()[0] or type(exc).__name__}") from None


def load_gray(path: str, size: int | None = None) -> np.ndarray:
    """A mask set's image as gray 0..1 float32, resized to ``size x size`` when given."""
    return _read_gray(path, size) / 255.0


def load_mask(path: str, size: int | None = None) -> np.ndarray:
    """A mask set's mask as 0/1 float32 (lung where the gray level is at least 128)."""
    return (_read_gray(path, size) >= 128).astype(np.float32)


def _batches(images, masks, config: LungTrainConfig, *, train: bool):
    """A Keras ``PyDataset`` of (images 0..255, masks), augmented anew each epoch when ``train`` (two threads
    prepare batches while the model trains; each batch has its own seeded generator)."""
    import keras

    size = config.size

    class Pairs(keras.utils.PyDataset):
        epoch = 0

        def on_epoch_end(self):
            self.epoch += 1

        def __len__(self):
            return math.ceil(len(images) / config.batch_size)

        def __getitem__(self, index):
            chosen = range(index * config.batch_size, min(len(images), (index + 1) * config.batch_size))
            if train:  # a new order each epoch, so batches mix the sets
                chosen = np.random.default_rng([config.seed, self.epoch]).permutation(len(images))[chosen]
                rng = np.random.default_rng([config.seed, self.epoch, index])
                pairs = [augment(images[i], masks[i], rng, size) for i in chosen]
            else:
                pairs = [(images[i], masks[i]) for i in chosen]
            x = np.stack([p[0] for p in pairs])[..., None] * 255.0
            y = np.stack([p[1] for p in pairs])[..., None]
            return x.astype(np.float32), y.astype(np.float32)

    return Pairs(workers=2, use_multiprocessing=False) if train else Pairs()


def _resample(gray: np.ndarray, size: int) -> np.ndarray:
    return resize((gray * 255).astype(np.uint8), size).astype(np.float32) / 255.0


def held_out_scores(predict, sets: list[MaskSet], part: str = "test") -> dict:
    """Dice and IoU of ``predict`` (gray 0..1 at any size -> probability map at that size) on each set's
    ``part``, at each image's own size, after :func:`cxrcore.lungs.geometry.lungs_from_mask`; also the raw
    (thresholded only) Dice. Means over all images, and per set."""
    rows = []
    for mask_set in sets:
        for i in mask_set.split[part]:
            image_path, mask_path = mask_set.pairs[i]
            gray, truth = load_gray(image_path), load_mask(mask_path)
            prob = predict(gray)
            lungs = geometry.lungs_from_mask(prob >= 0.5)
            rows.append(
                {
                    "set": mask_set.name,
                    "dice": geometry.dice(lungs.mask, truth),
                    "iou": geometry.iou(lungs.mask, truth),
                    "dice_raw": geometry.dice(prob >= 0.5, truth),
                    "two_lungs": lungs.found == 2,
                }
            )
    if not rows:
        return {}

    def summary(chosen):
        return {
            "images": len(chosen),
            "dice": round(float(np.mean([r["dice"] for r in chosen])), 4),
            "iou": round(float(np.mean([r["iou"] for r in chosen])), 4),
            "dice_raw": round(float(np.mean([r["dice_raw"] for r in chosen])), 4),
            "dice_min": round(float(np.min([r["dice"] for r in chosen])), 4),
            "two_lungs": round(float(np.mean([r["two_lungs"] for r in chosen])), 4),
        }

    out = summary(rows)
    out["per_set"] = {s.name: summary([r for r in rows if r["set"] == s.name]) for s in sets}
    return out


def train_lungs(config: LungTrainConfig, progress: Progress = None) -> Path:
    """Train, keep the best validation epoch, score the held-out split, write the model and its record.
    Returns the output folder."""
    config.validate()
    say = progress or (lambda message: None)
    sets = [
        read_mask_set(folder, seed=config.seed, limit=config.limit, exclude=config.exclude) for folder in config.data
    ]
    out = Path(config.out).expanduser()
    if (out / MODEL_FILE).exists():
        raise ConfigError(f"{out / MODEL_FILE} exists; choose another --out (a trained model is never overwritten)")
    out.mkdir(parents=True, exist_ok=True)

    import keras

    from .model import build_lung_model, dice_bce_loss  # lazy: TensorFlow

    keras.utils.set_random_seed(config.seed)
    load_size = int(round(config.size * 1.25))
    arrays = {}
    for part in ("train", "val"):
        pairs = [s.pairs[i] for s in sets for i in s.split[part]]
        size = load_size if part == "train" else config.size
        arrays[part] = ([load_gray(a, size) for a, _ in pairs], [load_mask(b, size) for _, b in pairs])
        say(f"{part}: {len(pairs)} pairs loaded")
    train_data = _batches(*arrays["train"], config, train=True)
    val_data = _batches(*arrays["val"], config, train=False)

    model = build_lung_model(config.size, config.encoder, config.weights)
    steps = len(train_data) * config.epochs
    schedule = keras.optimizers.schedules.CosineDecay(config.learning_rate, steps, alpha=0.05)
    model.compile(
        optimizer=keras.optimizers.Adam(schedule),
        loss=dice_bce_loss,
        metrics=[keras.metrics.BinaryIoU(target_class_ids=[1], threshold=0.5, name="iou")],
    )
    best = out / "best.weights.h5"

    class Report(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            say(
                f"epoch {epoch + 1}/{config.epochs}: loss {logs.get('loss', float('nan')):.4f}, "
                f"val loss {logs.get('val_loss', float('nan')):.4f}, val IoU {logs.get('val_iou', float('nan')):.4f}"
            )

    started = time.time()
    history = model.fit(
        train_data,
        validation_data=val_data,
        epochs=config.epochs,
        verbose=0,
        callbacks=[
            keras.callbacks.ModelCheckpoint(
                str(best), monitor="val_iou", mode="max", save_best_only=True, save_weights_only=True
            ),
            Report(),
        ],
    )
    seconds = time.time() - started
    model.load_weights(str(best))
    best.unlink()
    shipped = build_lung_model(config.size, config.encoder, None)  # the weights alone, no optimizer state
    shipped.set_weights(model.get_weights())
    shipped.save(out / MODEL_FILE)

    segmenter = LungSegmenter(out / MODEL_FILE)
    say("scoring the held-out split")
    scores = held_out_scores(segmenter.probabilities_of_gray, sets)
    val_iou = history.history.get("val_iou", [])
    record = {
        "model": MODEL_FILE,
        "made": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items()},
        "input": f"{config.size}x{config.size} gray, 0..255; any image is resized to it (aspect not kept)",
        "parameters": int(model.count_params()),
        "data": [
            {
                "name": s.name,
                "pairs": len(s.pairs),
                "used": sum(len(v) for v in s.split.values()),
                "split": {part: len(idx) for part, idx in s.split.items()},
                "test_images": [Path(s.pairs[i][0]).name for i in s.split["test"]],
                **s.source,
            }
            for s in sets
        ],
        "weights_licence": config.weights_licence or None,
        "split": "each set on its own: 80% training, 10% validation (best epoch), 10% held out (scores below)",
        "epochs": config.epochs,
        "best_epoch": int(np.argmax(val_iou)) + 1 if val_iou else None,
        "history": {k: [round(float(v), 5) for v in vals] for k, vals in history.history.items()},
        "training_seconds": round(seconds, 1),
        "held_out": scores,
    }
    (out / RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return out
