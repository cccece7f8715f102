"""Pixels: normalisation to ``uint8``, the one resize (images, maps and masks) and a run's pixel rules.

A leaf: numpy and Pillow only. What the rules mean for every image a model sees is written once, in
:mod:`cxrcore.data.io`, whose :func:`~cxrcore.data.io.prepare_image` applies them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ..errors import ConfigError

_BLOCK_PIXELS = 1 << 18


def _row_blocks(shape: tuple[int, ...]):
    per_row = max(1, math.prod(shape[1:]))
    step = max(1, _BLOCK_PIXELS // per_row)
    for start in range(0, shape[0], step):
        yield slice(start, min(shape[0], start + step))


def stretch(arr: np.ndarray, transform: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """Linear min..max -> 0..255 (uint8) of ``transform(arr)``. A constant image becomes all zeros.

    Works on blocks of rows (``transform`` must act element by element), two passes: the
    minimum and maximum, then the mapping. The float64 arithmetic is the same as on the
    whole array at once, so the values are too, but the temporaries stay at a few MB where
    a 90 M pixel image would need about 2 GB of them.
    """
    out = np.empty(arr.shape, dtype=np.uint8)
    if arr.size == 0:
        return out

    def values(rows: slice) -> np.ndarray:
        return np.asarray(arr[rows] if transform is None else transform(arr[rows]))

    lo, hi, non_finite = math.inf, -math.inf, False
    for rows in _row_blocks(arr.shape):
        block = values(rows)
        if block.dtype.kind in "fc" and not np.isfinite(block).all():
            non_finite = True
            block = np.nan_to_num(block, nan=0.0, posinf=0.0, neginf=0.0)
        lo, hi = min(lo, float(np.min(block))), max(hi, float(np.max(block)))
    if hi <= lo:
        out.fill(0)
        return out
    scale = 255.0 / (hi - lo)
    for rows in _row_blocks(arr.shape):
        block = values(rows).astype(np.float64)
        if non_finite:
            block = np.nan_to_num(block, nan=0.0, posinf=0.0, neginf=0.0)
        block -= lo
        block *= scale
        np.rint(block, out=block)
        np.clip(block, 0, 255, out=block)
        out[rows] = block
    return out


def to_rgb(arr: np.ndarray) -> np.ndarray:
    if arr.ndim == 2:
        return np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim == 3 and arr.shape[2] == 1:
        return np.repeat(arr, 3, axis=2)
    if arr.ndim == 3 and arr.shape[2] == 2:  # gray + alpha
        return np.repeat(arr[:, :, :1], 3, axis=2)
    if arr.ndim == 3 and arr.shape[2] >= 3:
        return np.ascontiguousarray(arr[:, :, :3])
    raise ValueError(f"unsupported pixel array shape {arr.shape}")


def gray_or_rgb(arr: np.ndarray) -> np.ndarray:
    """2-D gray or (h, w, 3) RGB, without copying gray into three channels yet."""
    if arr.ndim == 3 and arr.shape[2] in (1, 2):
        return np.ascontiguousarray(arr[:, :, 0])
    return arr if arr.ndim == 2 else to_rgb(arr)


def resize(arr, height: int, width: int | None = None, *, nearest: bool = False) -> np.ndarray:
    """``arr`` resized to ``height x width`` (``width`` defaults to ``height``), the one resize of the
    project, with Pillow: ``uint8`` gray (2-D) or RGB images bilinear; float maps (heatmaps, probabilities)
    bilinear in float32; with ``nearest``, labels and masks (any integer or bool array, values 0..255)
    by nearest neighbour, in their own dtype. Returned as it is when it already has that size. An 8-bit
    Pillow image (``L`` or ``RGB``, as a decoder opened it) is resized as it is, without a numpy copy first.

    Pillow resamples each channel alike, so resizing gray and then copying it into three channels gives
    exactly the pixels of resizing the three-channel copy, for a third of the work and memory.
    """
    width = height if width is None else width
    if isinstance(arr, Image.Image):
        same = arr.size == (width, height)
        return np.asarray(arr if same else arr.resize((width, height), Image.BILINEAR), dtype=np.uint8)
    arr = np.asarray(arr)
    if arr.shape[0] == height and arr.shape[1] == width:
        return arr
    if nearest:
        img = Image.fromarray(arr.astype(np.uint8))
        return np.asarray(img.resize((width, height), Image.NEAREST)).astype(arr.dtype)
    if arr.dtype.kind == "f":
        img = Image.fromarray(np.ascontiguousarray(arr, dtype=np.float32), mode="F")
        return np.asarray(img.resize((width, height), Image.BILINEAR), dtype=np.float32)
    img = Image.fromarray(np.ascontiguousarray(arr, dtype=np.uint8))
    return np.asarray(img.resize((width, height), Image.BILINEAR), dtype=np.uint8)


@dataclass(frozen=True)
class PixelRules:
    """A run's optional pixel rules (see the module docstring); the defaults change nothing."""

    crop_border: float = 0.0  # fraction of width and height cut from each side, before resizing
    equalize: bool = False  # histogram equalisation after resizing
    lung_crop: bool = False  # crop to the box around both lungs (with a margin), before resizing
    lung_mask: bool = False  # black outside the lungs, last

    def __post_init__(self):
        if isinstance(self.crop_border, bool) or not isinstance(self.crop_border, (int, float)):
            raise ConfigError(f"pixels.crop_border must be a number, got {self.crop_border!r}")
        if not 0 <= self.crop_border < 0.4:
            raise ConfigError(f"pixels.crop_border must be in [0, 0.4), got {self.crop_border}")
        for name in ("equalize", "lung_crop", "lung_mask"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"pixels.{name} must be true or false, got {getattr(self, name)!r}")

    @property
    def is_default(self) -> bool:
        return self == PixelRules()

    def describe(self) -> str:
        """``"as decoded"``, or the rules in words, e.g. ``"10% border cropped, equalised"``."""
        parts = [f"{self.crop_border:.0%} border cropped"] if self.crop_border else []
        parts += ["histogram equalised"] if self.equalize else []
        parts += ["cropped to the lungs"] if self.lung_crop else []
        parts += ["outside the lungs blacked out"] if self.lung_mask else []
        return ", ".join(parts) or "as decoded"


def crop_border(arr: np.ndarray, fraction: float) -> np.ndarray:
    """``arr`` without ``fraction`` of its height and width on each side (at least one pixel is kept)."""
    if not fraction:
        return arr
    h, w = arr.shape[:2]
    dy, dx = min(int(round(h * fraction)), (h - 1) // 2), min(int(round(w * fraction)), (w - 1) // 2)
    return arr[dy : h - dy, dx : w - dx]


def equalize(arr: np.ndarray) -> np.ndarray:
    """Histogram equalisation of ``uint8`` gray (2-D) or RGB pixels, each channel on its own: level ``v``
    becomes ``round(255 * (cdf(v) - cdf_min) / (n - cdf_min))``, so the darkest level present goes to 0
    and the brightest to 255; a single-level channel is left as it is."""
    arr = np.asarray(arr, dtype=np.uint8)
    if arr.ndim == 3:
        return np.stack([equalize(arr[..., c]) for c in range(arr.shape[2])], axis=2)
    cdf = np.cumsum(np.bincount(arr.ravel(), minlength=256))
    low = cdf[arr.min()]
    if cdf[-1] == low:
        return arr.copy()
    lut = np.round(np.clip(cdf - low, 0, None) * 255.0 / (cdf[-1] - low)).astype(np.uint8)
    return lut[arr]
