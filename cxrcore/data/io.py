"""Image reading: headers without pixels, and the one function that owns pixel normalisation.

Every image that reaches a model, in training, evaluation or prediction, goes
through :func:`prepare_image`, so a PNG seen in training and the same PNG uploaded
later give the model identical pixels.

Pixel rules (documented once, here):

* 8-bit gray, RGB, RGBA, palette and JPEG images keep their values; gray is
  copied into three channels and an alpha channel is dropped.
* Images with more than 8 bits (16-bit PNG, DICOM) are stretched linearly from
  their own minimum..maximum to 0..255. DICOM first gets its modality LUT
  (rescale slope/intercept) and VOI LUT/window when present; MONOCHROME1 is
  inverted so that bone is bright, as in every other format.
* The result is resized to ``size x size`` with bilinear filtering (aspect ratio
  not kept, as in the reference notebooks) and returned as ``uint8`` RGB.
  Backbone-specific preprocessing happens inside the model (see backbones.py).

DICOM is recognised by its magic bytes (``DICM`` at offset 128), not by its name.
"""
from __future__ import annotations

import io as _io
import os
import warnings
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import ImageDecodeError

ImageSource = Union[str, os.PathLike, bytes]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")
_HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def is_dicom(data: bytes) -> bool:
    """True when ``data`` starts like a DICOM Part 10 file (``DICM`` at offset 128)."""
    return len(data) >= 132 and data[128:132] == b"DICM"


def _describe(src: ImageSource, name: str | None) -> str:
    if name:
        return name
    if isinstance(src, (bytes, bytearray)):
        return f"<{len(src)} bytes>"
    return str(src)


def _read_bytes(src: ImageSource, label: str) -> bytes:
    if isinstance(src, (bytes, bytearray)):
        return bytes(src)
    try:
        return Path(src).read_bytes()
    except OSError as exc:
        raise ImageDecodeError(label, exc.strerror or str(exc)) from None


def read_header(path: str | os.PathLike) -> dict:
    """Width, height, mode and format of an image file, read from its header only.

    Pixels are not decoded, so this is cheap enough to run over a whole dataset.
    Raises :class:`ImageDecodeError` naming the file when the header is unreadable.
    """
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
            if is_dicom(head):
                return _dicom_header(path)
            fh.seek(0)
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(fh) as img:
                    return {"width": img.width, "height": img.height,
                            "mode": img.mode, "format": img.format or "unknown"}
    except ImageDecodeError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError,
            Image.DecompressionBombWarning, OSError, ValueError, SyntaxError) as exc:
        raise ImageDecodeError(str(path), _reason(exc)) from None


def _dicom_header(path: Path) -> dict:
    import pydicom

    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True)
        rows, cols = int(ds.Rows), int(ds.Columns)
    except Exception as exc:  # pydicom raises many types for broken files
        raise ImageDecodeError(str(path), f"invalid DICOM ({_reason(exc)})") from None
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2"))
    bits = int(getattr(ds, "BitsStored", 8) or 8)
    return {"width": cols, "height": rows, "mode": f"{photometric} {bits}-bit", "format": "DICOM"}


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:200]


def _stretch(arr: np.ndarray) -> np.ndarray:
    """Linear min..max -> 0..255 (uint8). A constant image becomes all zeros."""
    arr = arr.astype(np.float64)
    lo, hi = float(np.min(arr)), float(np.max(arr))
    if not np.isfinite(lo) or not np.isfinite(hi):
        arr = np.nan_to_num(arr, nan=0.0, posinf=0.0, neginf=0.0)
        lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        return np.zeros(arr.shape, dtype=np.uint8)
    return np.clip(np.rint((arr - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8)


def _to_rgb(arr: np.ndarray) -> np.ndarray:
    if arr.ndim == 2:
        return np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim == 3 and arr.shape[2] == 1:
        return np.repeat(arr, 3, axis=2)
    if arr.ndim == 3 and arr.shape[2] == 2:  # gray + alpha
        return np.repeat(arr[:, :, :1], 3, axis=2)
    if arr.ndim == 3 and arr.shape[2] >= 3:
        return np.ascontiguousarray(arr[:, :, :3])
    raise ValueError(f"unsupported pixel array shape {arr.shape}")


def _decode_dicom(data: bytes) -> np.ndarray:
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    ds = pydicom.dcmread(_io.BytesIO(data))
    arr = ds.pixel_array
    if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1:
        arr = arr[0]
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2"))
    if photometric.startswith("MONOCHROME"):
        arr = apply_modality_lut(arr, ds)
        if "WindowCenter" in ds or "VOILUTSequence" in ds:
            arr = apply_voi_lut(arr, ds)
        arr = _stretch(arr)
        if photometric == "MONOCHROME1":
            arr = 255 - arr
        return _to_rgb(arr)
    if arr.dtype != np.uint8:
        arr = _stretch(arr)
    return _to_rgb(arr)


def _decode_pil(data: bytes) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(_io.BytesIO(data)) as img:
            img.load()
            img = ImageOps.exif_transpose(img)
            if img.mode in _HIGH_BIT_MODES:
                return _to_rgb(_stretch(np.asarray(img)))
            if img.mode not in ("L", "RGB"):
                img = img.convert("RGB")
            return _to_rgb(np.asarray(img, dtype=np.uint8))


def decode_image(src: ImageSource, *, name: str | None = None) -> np.ndarray:
    """Decode a PNG, JPEG or DICOM file (path or bytes) to ``uint8`` RGB at its own size.

    ``name`` is used in error messages when ``src`` is bytes (e.g. an upload's file name).
    Raises :class:`ImageDecodeError` with the source and the reason on any failure.
    """
    label = _describe(src, name)
    data = _read_bytes(src, label)
    if not data:
        raise ImageDecodeError(label, "the file is empty")
    try:
        arr = _decode_dicom(data) if is_dicom(data) else _decode_pil(data)
    except ImageDecodeError:
        raise
    except UnidentifiedImageError:
        raise ImageDecodeError(label, "not a PNG, JPEG or DICOM image") from None
    except Exception as exc:  # decoders raise OSError, ValueError, SyntaxError, ...
        raise ImageDecodeError(label, _reason(exc)) from None
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ImageDecodeError(label, "the image has no pixels")
    return arr


def resize_rgb(arr: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of a ``uint8`` RGB array to ``size x size``."""
    if arr.shape[0] == size and arr.shape[1] == size:
        return arr
    img = Image.fromarray(np.ascontiguousarray(arr, dtype=np.uint8))
    return np.asarray(img.resize((size, size), Image.BILINEAR), dtype=np.uint8)


def prepare_image(src: ImageSource, size: int, *, name: str | None = None) -> np.ndarray:
    """The model's view of an image: decoded, normalised, resized; ``uint8`` (size, size, 3)."""
    return resize_rgb(decode_image(src, name=name), size)


# DICOM attributes that describe the image, never the patient, the institution or the operator.
SAFE_DICOM_TAGS = ("Modality", "BodyPartExamined", "ViewPosition", "PhotometricInterpretation", "Rows", "Columns",
                   "BitsStored", "PixelSpacing", "Manufacturer", "ManufacturerModelName")


def dicom_summary(src: ImageSource, *, name: str | None = None) -> dict:
    """Non-identifying facts about a DICOM file (only :data:`SAFE_DICOM_TAGS`); {} for other formats.

    Names, ids, dates, institutions and free-text fields are never read out, so nothing
    identifying can reach a screen or a log through this function.
    """
    label = _describe(src, name)
    data = _read_bytes(src, label)
    if not is_dicom(data):
        return {}
    import pydicom

    try:
        ds = pydicom.dcmread(_io.BytesIO(data), stop_before_pixels=True)
    except Exception as exc:
        raise ImageDecodeError(label, f"invalid DICOM ({_reason(exc)})") from None
    out = {}
    for tag in SAFE_DICOM_TAGS:
        value = getattr(ds, tag, None)
        if value not in (None, ""):
            out[tag] = [float(v) for v in value] if tag == "PixelSpacing" else (
                int(value) if isinstance(value, int) else str(value))
    return out
