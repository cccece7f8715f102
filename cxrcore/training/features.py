"""Training on cached activations: the frozen part of a network runs once per image, not once per epoch.

In stage 1 the whole backbone is frozen, and in stage 2 everything below the top ``unfreeze``
layers is; BatchNorm layers stay frozen in both (they run in inference mode). A frozen part gives
the same output for an image every epoch, so its output (the *activations* at a cut) is computed
once, kept on disk, and only the layers above the cut are trained on it. The model that is trained
shares its layers (and so its weights) with the complete model, which is the one saved: it loads,
predicts and explains exactly as a model trained the slow way.

The cut:

- stage 1: the output of ``head_pool`` (the pooled backbone features; for ``flatten`` pooling the
  whole flattened feature map, much larger);
- stage 2: the highest *clean* cut at or below the first unfrozen layer: a layer whose output is
  the only tensor the layers above it need (a block boundary; inside a residual block two tensors
  cross). The layers between the cut and the first unfrozen layer stay frozen and run every epoch,
  so the trainable layers are exactly the requested ones.

Activations are cached per (frozen part's architecture and weights, image size, pixel rules,
images with their size and modification time, augmentation views) under the cache folder
(``features/``), so runs, head settings and comparison jobs that share a backbone reuse them, and a
changed image file or weights file means new activations. With augmentation on, ``views``
augmented versions of each training image are cached and each epoch draws one per image at
random (seeded); with ``views`` 0 the stage falls back to the full pass. The cache keeps at most
:data:`cxrcore.training.activation_store.LIMIT_BYTES`; the oldest entries go first.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass

import keras
import numpy as np
import pandas as pd

from ..config import TrainConfig
from ..data.splits import SourceGroups, source_groups
from ..lungs.segment import shipped_fingerprint
from .activation_store import ENTRY_LIMIT_BYTES, Entry, cache_root, evict
from .model import backbone_layers, finetune_layers
from .pipeline import balanced, build_augmenter, make_dataset, training_targets

log = logging.getLogger("cxrcore.training.features")

STAGE1_CUT = "head_pool"
_VERSION = 1
#: images per batch when computing activations (on 2 CPU cores, MobileNetV2-0.35 at 224 px: about 105
#: images/s at 32, 65-90 at 16 or 64; the activations do not depend on it)
ACTIVATION_BATCH = 32
#: activations per call when the layers above a cut score cached activations (few layers: large batches
#: spare the per-call overhead)
SCORING_BATCH = 512


# ------------------------------------------------------------------------------------- the cut


def split_at(model: keras.Model, layer_name: str) -> tuple[keras.Model, keras.Model]:
    """``(lower, upper)``: the model up to ``layer_name``'s output, and from there to the output.
    Both share the model's layers. Raises ValueError when the cut is not clean."""
    cut = model.get_layer(layer_name).output
    upper = keras.Model(cut, model.outputs[0], name=f"{model.name}_above_{layer_name}")
    lower = keras.Model(model.inputs, cut, name=f"{model.name}_to_{layer_name}")
    return lower, upper


def is_clean_cut(model: keras.Model, layer_name: str) -> bool:
    """True when the layers above ``layer_name`` need nothing but its output."""
    try:
        split_at(model, layer_name)
    except ValueError:
        return False
    return True


def stage2_cut(model: keras.Model, first_trainable: int, backbone: list) -> tuple[str, int] | None:
    """The highest clean cut among ``backbone`` layers below index ``first_trainable`` (an index into
    ``backbone``): ``(layer name, frozen layers between the cut and the first trainable one)``;
    None when there is none (everything trains, or no clean cut exists below)."""
    for i in range(first_trainable - 1, -1, -1):
        if is_clean_cut(model, backbone[i].name):
            return backbone[i].name, first_trainable - 1 - i
    return None


# ------------------------------------------------------------------------------------- the cache


def _weights_digest(model: keras.Model) -> str:
    digest = hashlib.sha1()
    for layer in model.layers:
        digest.update(json.dumps(layer.get_config(), sort_keys=True, default=str).encode())
        for weight in layer.weights:
            digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(weight)).tobytes())
    return digest.hexdigest()


def _images_digest(frame: pd.DataFrame) -> str:
    digest = hashlib.sha1()
    for path in frame["path"].astype(str):
        try:
            stat = os.stat(path)
            stamp = f"{path}|{stat.st_size}|{stat.st_mtime_ns}"
        except OSError:
            stamp = f"{path}|missing"
        digest.update(stamp.encode())
    return digest.hexdigest()


def entry_for(
    lower: keras.Model, frame: pd.DataFrame, image_size: int, config: TrainConfig, views: int, weights: str = ""
) -> Entry:
    """The cache entry of ``lower``'s activations for ``frame``'s images (``weights``: ``lower``'s weights
    digest when the caller already has it)."""
    parts = {
        "version": _VERSION,
        "keras": keras.__version__,
        "lower": weights or _weights_digest(lower),
        "images": _images_digest(frame),
        "size": image_size,
        "pixels": config.to_dict()["pixels"],
        "views": views,
        "augment": config.to_dict()["augment"] if views else None,
        "seed": config.seed if views else None,
    }
    if config.pixels.lung_crop or config.pixels.lung_mask:  # the pixels depend on the lung model too
        parts["lung_model"] = shipped_fingerprint()
    key = hashlib.sha1(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]
    return Entry(cache_root() / key)


def _fits(found: np.ndarray | None, lower: keras.Model) -> bool:
    shape = tuple(lower.output.shape[1:])
    return found is not None and tuple(found.shape[found.ndim - len(shape) :]) == shape


def compute_all(
    lowers: list[keras.Model],
    frame: pd.DataFrame,
    classes: list[str],
    image_size: int,
    config: TrainConfig,
    views: int = 0,
) -> list[np.ndarray]:
    """Activations of each of ``lowers`` (parts of one model, from its input to a cut) for every image
    of ``frame`` (n, ...), or with ``views`` > 0, for that many augmented versions of each
    (views, n, ...). Each is read from the cache when it is there; the others are computed together,
    in one pass over the images, and cached."""
    entries = [entry_for(lower, frame, image_size, config, views) for lower in lowers]
    found = [entry.load() for entry in entries]
    for lower, entry, got in zip(lowers, entries, found):
        if _fits(got, lower):
            log.info("activations at %s: read from the cache (%s)", lower.layers[-1].name, entry.folder.name)
    missing = [i for i, (lower, got) in enumerate(zip(lowers, found)) if not _fits(got, lower)]
    if not missing:
        return found
    sizes = [int(np.prod(lowers[i].output.shape[1:])) * 4 * len(frame) * max(1, views) for i in missing]
    if max(sizes) > ENTRY_LIMIT_BYTES:
        raise MemoryError(
            f"{max(sizes) / 1024**3:.1f} GiB of activations, over the {ENTRY_LIMIT_BYTES / 1024**3:.0f} GiB entry limit"
        )
    log.info(
        "activations at %s: computing %d image(s)%s in one pass, %.1f MB on disk",
        ", ".join(lowers[i].layers[-1].name for i in missing),
        len(frame),
        f" x {views} augmented views" if views else "",
        sum(sizes) / 1e6,
    )
    started = time.time()
    together = keras.Model(lowers[0].inputs, [lowers[i].outputs[0] for i in missing])
    images = make_dataset(
        frame, classes, image_size, batch_size=ACTIVATION_BATCH, cache=False, pixels=config.pixels
    ).map(lambda x, y: x)

    def run(batches) -> list[np.ndarray]:
        out = together.predict(batches, verbose=0)
        out = out if isinstance(out, (list, tuple)) else [out]
        return [np.asarray(o, dtype=np.float32) for o in out]

    if views:
        per_view = []
        for view in range(views):
            augmenter = build_augmenter(config.augment, config.seed + 1000 * view)
            per_view.append(run(images.map(lambda x, a=augmenter: keras.ops.clip(a(x, training=True), 0.0, 255.0))))
        computed = [np.stack([v[j] for v in per_view]) for j in range(len(missing))]
    else:
        computed = run(images)
    seconds = round(time.time() - started, 2)
    for i, activations in zip(missing, computed):
        evict(activations.nbytes)
        entries[i].save(
            activations,
            {
                "cut": lowers[i].layers[-1].name,
                "images": int(len(frame)),
                "views": views,
                "shape": list(activations.shape),
                "seconds": seconds / len(missing),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            },
        )
        found[i] = activations
    return found


def dataset(
    activations: np.ndarray,
    targets: np.ndarray,
    *,
    batch_size: int,
    training: bool,
    seed: int,
    max_steps: int | None = None,
    groups: SourceGroups | None = None,
):
    """Batches of ``(activations, targets)`` (``targets``: (n, k) float32, one-hot labels or a findings
    model's 1 / 0 / NaN: :func:`cxrcore.training.pipeline.training_targets`); with views (activations of
    shape (views, n, ...)), each image's view is drawn at random every epoch (seeded).

    ``groups`` (training only; :func:`cxrcore.data.splits.source_groups` of the same rows, in the same order)
    balances the draw over (source, class) groups as the image pipeline does (:func:`balanced`, by row
    index): ``n`` examples an epoch, as many batches as without it."""
    import tensorflow as tf

    target = tf.constant(np.asarray(targets, dtype=np.float32))
    n = int(target.shape[0])
    with_views = activations.ndim >= 2 and activations.shape[0] != n  # (views, n, ...)
    by_group = training and groups is not None
    if by_group and len(groups.codes) != n:
        raise ValueError(f"source groups for {len(groups.codes)} rows, activations for {n}")
    if with_views or by_group:  # a dataset of row indices, then the rows gathered
        table = tf.constant(np.asarray(activations))
        if by_group:
            ds = balanced(lambda rows: tf.data.Dataset.from_tensor_slices(rows.astype(np.int64)), groups, seed)
        else:
            ds = tf.data.Dataset.range(n)
            if training:
                ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True)
        if with_views:
            views = int(activations.shape[0])
            rng = tf.random.Generator.from_seed(seed)

            def pick(i):
                view = rng.uniform((), 0, views, dtype=tf.int64)
                return tf.gather(tf.gather(table, view), i), tf.gather(target, i)

            ds = ds.map(pick)
        else:
            ds = ds.map(lambda i: (tf.gather(table, i), tf.gather(target, i)), num_parallel_calls=tf.data.AUTOTUNE)
    else:
        ds = tf.data.Dataset.from_tensor_slices((np.asarray(activations), target))
        if training:
            ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    if max_steps:
        ds = ds.take(max_steps)
    return ds.prefetch(tf.data.AUTOTUNE)


@dataclass
class StagePlan:
    """How a stage trains on cached activations: the part above the cut, and its data."""

    model: keras.Model
    train: object
    val: object
    cut: str
    note: str


def finetune_cut(model: keras.Model, unfreeze: int) -> tuple[str, str] | None:
    """``(cut, note)`` for stage 2 with the top ``unfreeze`` backbone layers unfrozen (as
    :func:`cxrcore.training.model.set_stage` unfreezes them); None when no cut helps."""
    backbone = backbone_layers(model)
    chosen = {id(layer) for layer in finetune_layers(backbone, unfreeze)}
    trainable = [i for i, layer in enumerate(backbone) if id(layer) in chosen and layer.weights]
    trainable = [i for i in trainable if not isinstance(backbone[i], keras.layers.BatchNormalization)]
    if not trainable:
        return STAGE1_CUT, "the pooled backbone features (nothing in the backbone trains)"
    found = stage2_cut(model, trainable[0], backbone)
    if found is None:
        return None
    cut, extra = found
    return cut, f"{cut}, the clean cut below the first unfrozen layer ({extra} frozen layer(s) above it run each epoch)"


def plan_stage(
    model: keras.Model,
    stage: str,
    config: TrainConfig,
    frame: pd.DataFrame,
    classes: list[str],
    image_size: int,
    unfreeze: int,
    max_steps: int | None = None,
) -> StagePlan | None:
    """The fast way to train ``stage`` (its layers frozen as :func:`cxrcore.training.model.set_stage`
    left them, stage 2 with the top ``unfreeze`` backbone layers unfrozen), or None, logged with the
    reason, when the stage takes the full pass. Stage 1 also computes, in the same pass over the
    images, the activations stage 2 will train on."""
    if config.augment.enabled and config.augment_views == 0:
        log.info("stage %s: full pass (augmentation on and augment_views 0)", stage)
        return None
    later = finetune_cut(model, unfreeze) if config.fine_tune_epochs > 0 else None
    if stage == "frozen":
        cut, note = STAGE1_CUT, "the pooled backbone features"
    elif later is None:
        log.info("stage %s: full pass (no clean cut below the first unfrozen layer)", stage)
        return None
    else:
        cut, note = later
    lower, upper = split_at(model, cut)
    lowers = [lower] + ([split_at(model, later[0])[0]] if stage == "frozen" and later and later[0] != cut else [])
    labels = training_targets(frame, classes)
    train = frame[frame["split"] == "train"].reset_index(drop=True)
    val = frame[frame["split"] == "val"].reset_index(drop=True)
    views = config.augment_views if config.augment.enabled else 0
    try:
        train_acts = compute_all(lowers, train, classes, image_size, config, views=views)[0]
        val_acts = compute_all(lowers, val, classes, image_size, config)[0]
    except MemoryError as exc:
        log.info("stage %s: full pass (%s)", stage, exc)
        return None
    train_labels = labels[(frame["split"] == "train").to_numpy()]
    val_labels = labels[(frame["split"] == "val").to_numpy()]
    groups = source_groups(train) if config.balance == "source" else None  # by row of train_acts
    log.info(
        "stage %s: training on cached activations at %s%s%s",
        stage,
        note,
        f", {views} augmented view(s) per image" if views else "",
        f", batches balanced over {len(groups.names)} (source, class) group(s)" if groups is not None else "",
    )
    return StagePlan(
        model=upper,
        train=dataset(
            train_acts,
            train_labels,
            batch_size=config.batch_size,
            training=True,
            seed=config.seed,
            max_steps=max_steps,
            groups=groups,
        ),
        val=dataset(val_acts, val_labels, batch_size=config.batch_size, training=False, seed=config.seed),
        cut=cut,
        note=note,
    )


def cached_outputs(
    model: keras.Model, cut: str, frames: list[pd.DataFrame], image_size: int, config: TrainConfig
) -> list[tuple[np.ndarray, np.ndarray] | None]:
    """For each of ``frames``, ``(probabilities, pooled backbone features)`` of its images (what
    :func:`cxrcore.training.model.feature_model` gives: the input of ``head_pool``, averaged) from the
    activations the cache holds at ``cut`` for exactly these images, through the layers above the cut only
    (split and built once for all of them); None for a frame whose activations the cache does not hold (or
    when the cut cannot give the features): the caller makes a full pass. ``cut`` is where the model's last
    stage trained (below it, nothing changed since the activations were computed)."""
    try:
        lower, upper = split_at(model, cut)
    except ValueError:
        return [None] * len(frames)
    pool = model.get_layer(STAGE1_CUT)
    if cut == STAGE1_CUT:  # the cached activations are head_pool's output: the features when it averages
        if not isinstance(pool, keras.layers.GlobalAveragePooling2D):
            return [None] * len(frames)

        def above(x, training):
            return upper(x, training=training), x

    else:
        pooled = keras.layers.GlobalAveragePooling2D(name="cached_features")(pool.input)
        above = keras.Model(
            model.get_layer(cut).output, [model.outputs[0], pooled], name=f"{model.name}_outputs_above_{cut}"
        )
    weights = _weights_digest(lower)
    results = []
    for frame in frames:
        found = entry_for(lower, frame, image_size, config, views=0, weights=weights).load()
        if not _fits(found, lower) or len(found) != len(frame):
            results.append(None)
            continue
        probs, features = [], []
        for i in range(0, len(found), SCORING_BATCH):
            p, f = above(found[i : i + SCORING_BATCH], training=False)
            probs.append(np.asarray(p, dtype=float))
            features.append(np.asarray(f))  # float32: 1,280 wide for thousands of images
        log.info("%d image(s) scored from the activations cached at %s", len(frame), cut)
        results.append((np.concatenate(probs), np.concatenate(features)))
    return results
