"""Augmentation for lung segmentation: what the training sets (adult PA films, mostly clean) lack and uploads
have. NumPy, SciPy and Pillow only; every transform takes a gray image in 0..1 and its lung mask, and
returns both.

* **geometry**: rotation, scale (in and out: a small, pediatric-size chest in a large field), aspect,
  translation and crop, applied to the image and the mask alike;
* **intensity**: gamma, contrast and brightness, noise, blur;
* **portable films**: dark or bright bands along the edges (collimation, film borders; the mask is cleared
  under a band, as the lung there is not imaged) and burned-in text markers (``L``, ``AP``, ``PORTABLE``...);
* **opacities**: bright blobs and dense whitening over the lungs, the mask unchanged (a lung full of
  consolidation is still a lung);
* **inversion**: MONOCHROME1-like films where bone is dark.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

MARKER_TEXTS = ("L", "R", "AP", "PA", "PORTABLE", "SUPINE", "ERECT", "1", "2", "LT", "RT", "AP SITTING")


@lru_cache(maxsize=1)
def _marker_bank() -> tuple[np.ndarray, ...]:
    """Text markers rendered once (Pillow's built-in font, several sizes), as 0..1 alpha masks."""
    bank = []
    for text in MARKER_TEXTS:
        for size in (10, 16, 24):
            font = ImageFont.load_default(size=size)
            left, top, right, bottom = font.getbbox(text)
            canvas = Image.new("L", (right - left + 4, bottom - top + 4), 0)
            ImageDraw.Draw(canvas).text((2 - left, 2 - top), text, fill=255, font=font)
            bank.append(np.asarray(canvas, dtype=np.float32) / 255.0)
    return tuple(bank)


def geometry(image, mask, rng, out_size: int, *, small_chest: float = 0.15):
    """Random rotation, scale, aspect and shift, resampled to ``out_size`` (bilinear for the image, the mask
    resampled bilinearly then cut at 0.5). With probability ``small_chest`` the chest is shrunk to 55-80% in a
    field filled with a dark or mid-gray level."""
    height, width = image.shape
    if rng.random() < small_chest:
        zoom = rng.uniform(0.55, 0.8)
        fill = float(rng.choice([rng.uniform(0.0, 0.1), rng.uniform(0.2, 0.5)]))
    else:
        zoom = rng.uniform(0.85, 1.2)
        fill = None
    angle = math.radians(rng.uniform(-12, 12))
    aspect = math.exp(rng.uniform(-0.1, 0.1))
    scale_y, scale_x = height / out_size / zoom * aspect, width / out_size / zoom / aspect
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    matrix = rotation @ np.diag([scale_y, scale_x])
    shift = rng.uniform(-0.08, 0.08, size=2) * np.array([height, width])
    centre_out = np.array([out_size, out_size]) / 2 - 0.5
    centre_in = np.array([height, width]) / 2 - 0.5 + shift
    offset = centre_in - matrix @ centre_out
    mode, cval = ("nearest", 0.0) if fill is None else ("constant", fill)
    shape = (out_size, out_size)
    image = ndimage.affine_transform(image, matrix, offset, output_shape=shape, order=1, mode=mode, cval=cval)
    mask = ndimage.affine_transform(mask, matrix, offset, output_shape=shape, order=1, mode="constant", cval=0.0)
    return image, (mask > 0.5).astype(np.float32)


def intensity(image, rng):
    """Gamma, contrast and brightness, then noise and blur, each with its own chance."""
    if rng.random() < 0.7:
        image = image ** math.exp(rng.uniform(-0.7, 0.7))
    if rng.random() < 0.7:
        mean = image.mean()
        image = (image - mean) * rng.uniform(0.6, 1.4) + mean + rng.uniform(-0.15, 0.15)
    if rng.random() < 0.2:
        image = ndimage.gaussian_filter(image, rng.uniform(0.5, 1.5))
    if rng.random() < 0.3:
        image = image + rng.normal(0, rng.uniform(0.01, 0.04), image.shape)
    return np.clip(image, 0, 1)


def opacities(image, mask, rng):
    """Whiten parts of the lungs: 1-4 soft blobs centred on lung pixels, or (one time in three) the whole of
    both lungs, as dense consolidation or effusion does. The mask is unchanged."""
    size = image.shape[0]
    if rng.random() < 1 / 3:
        heat = ndimage.gaussian_filter(mask, size * rng.uniform(0.02, 0.06))
        heat = heat / max(heat.max(), 1e-6)
    else:
        ys, xs = np.nonzero(mask)
        if ys.size == 0:
            return image
        grid_y, grid_x = np.mgrid[0:size, 0:size]
        heat = np.zeros_like(image)
        for _ in range(rng.integers(1, 5)):
            k = rng.integers(ys.size)
            sigma = size * rng.uniform(0.05, 0.18)
            heat = np.maximum(heat, np.exp(-((grid_y - ys[k]) ** 2 + (grid_x - xs[k]) ** 2) / (2 * sigma**2)))
    strength = rng.uniform(0.3, 0.9)
    return np.clip(image + strength * heat * (1 - image), 0, 1)


def borders(image, mask, rng):
    """Dark or bright bands, 2-12% of the side, along one to four edges; the mask is cleared under them."""
    image, mask = image.copy(), mask.copy()
    size = image.shape[0]
    for side in range(4):
        if rng.random() < 0.5:
            continue
        band = max(1, int(size * rng.uniform(0.02, 0.12)))
        level = rng.uniform(0.0, 0.08) if rng.random() < 0.6 else rng.uniform(0.85, 1.0)
        region = [np.s_[:band, :], np.s_[-band:, :], np.s_[:, :band], np.s_[:, -band:]][side]
        image[region] = level
        mask[region] = 0
    return image, mask


def markers(image, rng):
    """One to three burned-in text markers, bright (mostly) or dark, near the edges or anywhere."""
    image = image.copy()
    size = image.shape[0]
    bank = _marker_bank()
    for _ in range(rng.integers(1, 4)):
        glyph = bank[rng.integers(len(bank))]
        gh, gw = glyph.shape
        if gh >= size or gw >= size:
            continue
        if rng.random() < 0.7:  # in a corner band, where markers usually are
            y = int(rng.choice([rng.integers(0, max(1, size // 6)), rng.integers(size - size // 6 - gh, size - gh)]))
        else:
            y = int(rng.integers(0, size - gh))
        x = int(rng.integers(0, size - gw))
        level = rng.uniform(0.85, 1.0) if rng.random() < 0.8 else rng.uniform(0.0, 0.1)
        patch = image[y : y + gh, x : x + gw]
        image[y : y + gh, x : x + gw] = patch * (1 - glyph) + level * glyph
    return image


def augment(image, mask, rng, out_size: int):
    """One augmented (image, mask) pair at ``out_size``: image in 0..1, mask 0/1, both float32."""
    image, mask = geometry(image, mask, rng, out_size)
    if rng.random() < 0.4:
        image = opacities(image, mask, rng)
    image = intensity(image, rng)
    if rng.random() < 0.3:
        image, mask = borders(image, mask, rng)
    if rng.random() < 0.5:
        image = markers(image, rng)
    if rng.random() < 0.1:
        image = 1.0 - image
    return image.astype(np.float32), mask.astype(np.float32)
