"""The tf.data pipeline: same pixels as the prediction path, seeded, labelled in class order."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from conftest import make_class_folders
from cxrcore.config import AugmentConfig
from cxrcore.data.index import build_index
from cxrcore.data.io import prepare_image
from cxrcore.errors import DataError
from cxrcore.training.pipeline import decode_error_from, make_dataset


@pytest.fixture
def index(tmp_path):
    return build_index(make_class_folders(tmp_path / "d", classes=("A", "B", "C"), per_class=4, size=20))


def test_batches_hold_the_prepared_pixels_and_one_hot_labels_in_class_order(index):
    ds = make_dataset(index, ["C", "B", "A"], 16, batch_size=5)
    images, labels = next(iter(ds))
    assert images.shape == (5, 16, 16, 3) and images.dtype == tf.float32
    for i in range(5):
        expected = prepare_image(index["path"][i], 16).astype(np.float32)
        np.testing.assert_array_equal(images[i].numpy(), expected)
        assert labels[i].numpy().tolist() == np.eye(3)[["C", "B", "A"].index(index["label"][i])].tolist()
    assert sum(int(x.shape[0]) for x, _ in ds) == 12


def test_training_order_and_augmentation_are_reproducible_under_a_seed(index):
    aug = AugmentConfig(flip=True, rotation=15, zoom=0.2, contrast=0.2, brightness=0.2)

    def first_batch(seed):
        ds = make_dataset(index, ["A", "B", "C"], 16, batch_size=6, training=True, augment=aug, seed=seed)
        return next(iter(ds))[0].numpy()

    a, b, c = first_batch(3), first_batch(3), first_batch(4)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.min() >= 0 and a.max() <= 255


def test_augmentation_changes_training_images_only(index):
    aug = AugmentConfig(rotation=30, contrast=0.5)
    plain = next(iter(make_dataset(index, ["A", "B", "C"], 16, batch_size=12)))[0].numpy()
    evald = next(iter(make_dataset(index, ["A", "B", "C"], 16, batch_size=12, augment=aug)))[0].numpy()
    np.testing.assert_array_equal(plain, evald)  # no augmentation outside training
    trained = next(iter(make_dataset(index, ["A", "B", "C"], 16, batch_size=12, training=True, augment=aug, seed=1)))[
        0
    ].numpy()
    assert not any(np.array_equal(trained[0], p) for p in plain)


def test_max_steps_caps_batches(index):
    assert sum(1 for _ in make_dataset(index, ["A", "B", "C"], 16, batch_size=2, max_steps=3)) == 3


def test_unknown_labels_are_rejected(index):
    with pytest.raises(DataError, match="label\\(s\\) C are not among the model's classes"):
        make_dataset(index, ["A", "B"], 16)


def test_a_corrupt_image_surfaces_as_a_data_error_naming_it(tmp_path):
    root = make_class_folders(tmp_path / "d", per_class=3)
    idx = build_index(root)
    victim = idx["path"][1]
    with open(victim, "r+b") as fh:  # keep the header, destroy the pixel data
        fh.seek(40)
        fh.write(b"\0" * 200)
    with pytest.raises(tf.errors.OpError) as info:
        list(make_dataset(idx, ["A", "B"], 16))
    error = decode_error_from(info.value)
    assert error is not None and victim in str(error)
