"""The one resize (:func:`cxrcore.data.pixels.resize`) for images, maps and masks."""

from __future__ import annotations

import numpy as np
from PIL import Image

from cxrcore.data.pixels import resize


def test_an_image_a_pillow_image_and_its_channels_resize_alike():
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (37, 53), dtype=np.uint8)
    rgb = np.repeat(gray[..., None], 3, axis=2)
    small = resize(gray, 16, 24)
    assert small.shape == (16, 24) and small.dtype == np.uint8
    np.testing.assert_array_equal(resize(Image.fromarray(gray), 16, 24), small)  # the decoder's path
    np.testing.assert_array_equal(resize(rgb, 16, 24), np.repeat(small[..., None], 3, axis=2))
    assert resize(gray, 37, 53) is gray  # already that size: untouched


def test_a_map_stays_float_and_a_mask_keeps_its_labels():
    ramp = np.tile(np.linspace(0.0, 1.0, 8, dtype=np.float32), (8, 1))
    big = resize(ramp, 16)
    assert big.dtype == np.float32 and big.shape == (16, 16)
    assert 0.0 <= big.min() and big.max() <= 1.0 and np.all(np.diff(big[0]) >= 0)  # bilinear: still a ramp
    assert len(np.unique(big)) > 8  # values between the map's own: interpolated, not repeated
    labels = np.array([[0, 2], [1, 2]], dtype=np.int32)
    nearest = resize(labels, 4, nearest=True)
    assert nearest.dtype == np.int32 and set(np.unique(nearest)) == {0, 1, 2}
    np.testing.assert_array_equal(nearest[:2, :2], 0)
    np.testing.assert_array_equal(nearest[2:, 2:], 2)
