"""The tf.data input pipeline: decode, resize, cache, shuffle, batch, augment, prefetch.

Decoding goes through :func:`cxrcore.data.io.prepare_image` (inside ``tf.numpy_function``),
the same function the prediction path uses. Decoded, resized images are cached as
``uint8`` (224 px: ~150 kB per image), so epochs after the first skip decoding.
Augmentation uses Keras preprocessing layers on whole batches, after the cache, in a
sequential map, so a given seed gives the same batches on every run.

``balance="source"`` (training only) draws each example from the (source, class) groups of
:func:`cxrcore.data.splits.source_groups` with equal probability (times the source's weight):
one dataset per group, cached, shuffled and repeated, combined by
``tf.data.Dataset.sample_from_datasets``; an epoch still holds ``len(frame)`` examples, so it has
as many batches as without balancing. :func:`balanced` is shared with the activation cache
(:func:`cxrcore.training.features.dataset`), which draws row indices the same way.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from ..config import AugmentConfig
from ..data.findings import is_findings, targets
from ..data.io import prepare_image
from ..data.pixels import PixelRules
from ..data.splits import SourceGroups, source_groups
from ..errors import DataError

AUTOTUNE = tf.data.AUTOTUNE
SHUFFLE_BUFFER = 10_000


def max_steps_from_env(default: int | None = None) -> int | None:
    """``CXRCORE_MAX_STEPS`` caps batches per epoch (keeps tests and smoke runs short)."""
    value = os.environ.get("CXRCORE_MAX_STEPS")
    return int(value) if value else default


def build_augmenter(augment: AugmentConfig, seed: int) -> keras.Sequential | None:
    """Keras preprocessing layers for the enabled augmentations (None when none are)."""
    if not augment.enabled:
        return None
    layers = []
    if augment.flip:
        layers.append(keras.layers.RandomFlip("horizontal", seed=seed))
    if augment.rotation:
        layers.append(keras.layers.RandomRotation(augment.rotation / 360.0, fill_mode="constant", seed=seed + 1))
    if augment.zoom:
        layers.append(keras.layers.RandomZoom((-augment.zoom, augment.zoom), fill_mode="constant", seed=seed + 2))
    if augment.contrast:
        layers.append(keras.layers.RandomContrast(augment.contrast, value_range=(0, 255), seed=seed + 3))
    if augment.brightness:
        layers.append(keras.layers.RandomBrightness(augment.brightness, value_range=(0, 255), seed=seed + 4))
    return keras.Sequential(layers, name="augment")


def _loader(image_size: int, pixels: PixelRules | None):
    def load(path):
        return prepare_image(path.decode() if isinstance(path, bytes) else str(path), image_size, rules=pixels)

    def tf_load(path):
        image = tf.numpy_function(load, [path], tf.uint8, stateful=False)
        image.set_shape((image_size, image_size, 3))
        return image

    return tf_load


def make_dataset(
    frame: pd.DataFrame,
    classes: list[str],
    image_size: int,
    *,
    batch_size: int = 32,
    training: bool = False,
    augment: AugmentConfig | None = None,
    seed: int = 42,
    cache: bool = True,
    max_steps: int | None = None,
    pixels: PixelRules | None = None,
    balance: str = "none",
) -> tf.data.Dataset:
    """Batches of ``(float32 images in 0..255, targets)`` in the order of ``classes`` (one-hot labels, or a
    findings frame's 1 / 0 / NaN per finding: :func:`training_targets`), each image prepared with the run's
    ``pixels`` rules.

    ``training`` shuffles (reshuffled each epoch, seeded) and applies ``augment``; with ``balance``
    ``"source"`` it draws each example from the (source, class) groups of ``frame`` evenly (times the
    source's weight; see :func:`balanced`), ``len(frame)`` examples an epoch. Outside training
    ``balance`` is ignored: validation and test are never rebalanced.
    Class-labelled rows whose label is not in ``classes`` raise :class:`DataError`.
    """
    if frame.empty:
        raise DataError("no images to load")
    y = training_targets(frame, classes)
    paths = frame["path"].astype(str).to_numpy()
    load = _loader(image_size, pixels)

    def examples(rows: np.ndarray | None = None) -> tf.data.Dataset:
        """(image, target) for ``rows`` (positions in ``frame``; None: all, in order), cached."""
        chosen_paths, chosen = (paths, y) if rows is None else (paths[rows], y[rows])
        ds = tf.data.Dataset.from_tensor_slices(chosen_paths)
        ds = ds.map(load, num_parallel_calls=AUTOTUNE, deterministic=True)
        ds = tf.data.Dataset.zip(ds, tf.data.Dataset.from_tensor_slices(chosen))
        return ds.cache() if cache else ds

    if balance not in ("none", "source"):
        raise DataError(f"balance must be none or source, got '{balance}'")
    if training and balance == "source":
        ds = balanced(examples, source_groups(frame), seed)
    else:
        ds = examples()
        if training:
            ds = ds.shuffle(min(len(frame), SHUFFLE_BUFFER), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    if max_steps:
        ds = ds.take(max_steps)
    augmenter = build_augmenter(augment, seed) if (training and augment) else None

    def to_float(images, y):
        images = tf.cast(images, tf.float32)
        if augmenter is not None:
            images = tf.clip_by_value(augmenter(images, training=True), 0.0, 255.0)
        return images, y

    ds = ds.map(to_float, num_parallel_calls=None if augmenter is not None else AUTOTUNE)
    return ds.prefetch(AUTOTUNE)


def training_targets(frame: pd.DataFrame, classes: list[str]) -> np.ndarray:
    """(n, k) float32 targets in the order of ``classes``: one-hot rows of a class-labelled frame, or for a
    findings frame (``classes`` its findings) 1 / 0 / NaN per finding (NaN: left out; see
    :mod:`cxrcore.training.losses`). A class-labelled row whose label is not in ``classes`` raises
    :class:`DataError`."""
    if is_findings(frame):
        return targets(frame, classes)
    lookup = {c: i for i, c in enumerate(classes)}
    unknown = sorted(set(frame["label"]) - set(lookup))
    if unknown:
        raise DataError(f"label(s) {', '.join(unknown)} are not among the model's classes ({', '.join(classes)})")
    return np.eye(len(classes), dtype=np.float32)[frame["label"].map(lookup).to_numpy(np.int64)]


def balanced(part: Callable[[np.ndarray], tf.data.Dataset], groups: SourceGroups, seed: int) -> tf.data.Dataset:
    """Examples drawn from ``groups`` with their probabilities: ``part(rows)`` makes the dataset of one
    group's rows (positions, in order), which is shuffled (reshuffled each pass, seeded) and repeated, and
    ``tf.data.Dataset.sample_from_datasets`` picks the group of every example (seeded, a new draw each
    epoch). One epoch is as many examples as there are rows. A group of probability 0 is never drawn."""
    parts, weights = [], []
    for g, probability in enumerate(groups.probabilities):
        if probability <= 0:
            continue
        rows = np.flatnonzero(groups.codes == g)
        shuffled = part(rows).shuffle(min(len(rows), SHUFFLE_BUFFER), seed=seed + 1 + g, reshuffle_each_iteration=True)
        parts.append(shuffled.repeat())
        weights.append(float(probability))
    drawn = tf.data.Dataset.sample_from_datasets(parts, weights=weights, seed=seed, rerandomize_each_iteration=True)
    return drawn.take(len(groups.codes))


_DECODE_MESSAGE = re.compile(r"(cannot read image .*?)(?:\n|\s+\[\[|$)")


def decode_error_from(exc: Exception) -> DataError | None:
    """The :class:`DataError` hidden in a TensorFlow error raised by a failed image decode."""
    match = _DECODE_MESSAGE.search(str(exc))
    return DataError(match.group(1).strip()) if match else None


def augment_preview(
    path: str, image_size: int, augment: AugmentConfig, n: int = 5, seed: int = 0, pixels: PixelRules | None = None
) -> list[np.ndarray]:
    """The image as the model sees it (with the ``pixels`` rules), then ``n`` augmented versions (uint8 RGB)."""
    image = prepare_image(path, image_size, rules=pixels)
    augmenter = build_augmenter(augment, seed)
    if augmenter is None:
        return [image]
    batch = tf.convert_to_tensor(np.repeat(image[None].astype(np.float32), n, axis=0))
    out = tf.clip_by_value(augmenter(batch, training=True), 0, 255).numpy().round().astype(np.uint8)
    return [image, *out]
