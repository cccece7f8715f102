"""Image reading: headers without pixels, and the one function that owns pixel normalisation.

Every image that reaches a model, in training, evaluation or prediction, goes
through :func:`prepare_image`, so a PNG seen in training and the same PNG uploaded
later give the model identical pixels.

Formats: PNG, JPEG and DICOM, recognised by their content (DICOM by ``DICM`` at
offset 128, PNG and JPEG by their signatures), never by the file name. Everything
else Pillow could open (GIF, TIFF, BMP, WebP, ...) is refused naming its format, as is
an animated PNG: a first frame picked silently is not the image someone meant. A JPEG
carrying extra pictures (MPO: previews, stereo pairs) is read as its primary picture,
which is what every JPEG viewer shows.

Pixel rules (documented once, here):

* 8-bit gray, RGB, RGBA, palette and JPEG images keep their values; gray is
  copied into three channels and an alpha channel is dropped.
* Images with more than 8 bits (16-bit PNG, DICOM) are stretched linearly from
  their own minimum..maximum to 0..255. DICOM first gets its modality LUT
  (rescale slope/intercept) and VOI LUT/window when present; MONOCHROME1 is
  inverted so that bone is bright, as in every other format. A multi-frame DICOM
  gives its first frame, and only that frame is decoded.
* The result is resized to ``size x size`` with bilinear filtering (aspect ratio
  not kept, as in the reference notebooks) and returned as ``uint8`` RGB.
  Backbone-specific preprocessing happens inside the model (see backbones.py).
* Optional rules, chosen per run (:class:`PixelRules`, the run's ``config.pixels``) and
  applied to every image the run's model sees, in training, evaluation and prediction:
  ``crop_border`` cuts that fraction of the width and the height from each side before
  resizing (film edges, burned-in markers, collimation); ``equalize`` equalises the
  histogram of the resized image's gray levels (each channel for a colour image), which
  takes away most of the differences in exposure and contrast between sites.
  ``lung_crop`` cuts the image to the box around both lungs, found by the shipped lung model
  (:mod:`cxrcore.lungs`), with :data:`cxrcore.lungs.geometry.CROP_MARGIN` of the box added on each side,
  after ``crop_border`` and before resizing; ``lung_mask`` sets every pixel outside the lungs (the mask
  grown by :data:`cxrcore.lungs.geometry.MASK_GROW` of the side, so the lungs' edges stay) to black, last.
  When the lung model does not find two lungs, the image is left whole (crop) or unmasked (mask).

Limits: an image may hold at most :data:`MAX_PIXELS` pixels (for DICOM: rows x columns
x frames x samples), read from its header before anything is decoded: the PNG IHDR,
the JPEG frame header, the DICOM Rows/Columns/NumberOfFrames/SamplesPerPixel and, for
compressed DICOM, the first frame's own JPEG / JPEG 2000 header or the decoded length
of its RLE segments, and the inflated size of a deflated DICOM. The stretch runs over
blocks of rows, so a large 16-bit image never gets a full-size float64 copy.

Privacy: what is read, logged and shown from a file is described in :mod:`cxrcore.data.dicom`.
"""

from __future__ import annotations

import io as _io
import logging
import math
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import ConfigError, ImageDecodeError

ImageSource = str | os.PathLike | bytes

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")
_HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")

#: Most pixels an image may have, in every format. Pillow's default decompression-bomb
#: limit (which PNG and JPEG had before this was checked here): 89.5 M, about 9459 x 9459.
#: Not above ``PIL.Image.MAX_IMAGE_PIXELS``, so Pillow's own check (a warning) never fires.
MAX_PIXELS = 1024 * 1024 * 1024 // 4 // 3

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_ACCEPTED = "only PNG, JPEG and DICOM are accepted"

# Pillow logs EXIF values and PNG chunk contents at DEBUG; see cxrcore.data.dicom's docstring.
logging.getLogger("PIL").setLevel(logging.CRITICAL)


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
        raise ImageDecodeError(label, exc.strerror or type(exc).__name__) from None


def _check_pixels(label: str, pixels: int) -> None:
    if pixels > MAX_PIXELS:
        raise ImageDecodeError(label, f"too many pixels (the limit is {MAX_PIXELS:,})")


# ---------------------------------------------------------------- format sniffing and headers


def _sniff(data: bytes) -> str:
    """``"DICOM"``, ``"PNG"``, ``"JPEG"``, another format's name (Pillow's), or ``""``."""
    if is_dicom(data):
        return "DICOM"
    if data.startswith(_PNG_MAGIC):
        return "PNG"
    if data.startswith(_JPEG_MAGIC):
        return "JPEG"
    Image.init()
    for fmt, (_, accept) in Image.OPEN.items():  # each plugin's own check of the first bytes
        try:
            if accept is not None and accept(data[:16]):
                return fmt
        except Exception:  # a plugin's check on a short prefix
            continue
    return ""


def _refuse_format(label: str, fmt: str) -> ImageDecodeError:
    if fmt:
        return ImageDecodeError(label, f"{fmt} images are not read: {_ACCEPTED} (convert it to PNG)")
    return ImageDecodeError(label, f"not a PNG, JPEG or DICOM image ({_ACCEPTED})")


def _png_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from the IHDR chunk, which must come first."""
    if len(data) < 24 or data[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", data[16:24])


_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC} | {0xF7}  # F7: JPEG-LS (SOF55)


def _jpeg_size(data: bytes) -> tuple[int, int, int] | None:
    """(width, height, components) of the largest frame header before the first scan.

    Walks the marker segments as a decoder does; ``None`` when there is none or the
    segment chain is broken (no decoder could find the size either).
    """
    return _jpeg_walk(data)[0]


def _jpeg_walk(data: bytes) -> tuple[tuple[int, int, int] | None, bool]:
    """:func:`_jpeg_size`'s answer, and whether ``data`` held all the headers (False: read more)."""
    if data[:2] != b"\xff\xd8":
        return None, True
    pos, best = 2, None
    while True:
        if pos + 4 > len(data):
            return best, False
        if data[pos] != 0xFF:
            return None, True
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # no length field
            pos += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image, start of scan: headers are over
            break
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if length < 2:
            return None, True
        if marker in _JPEG_SOF:
            if pos + 10 > len(data):
                return best, False
            height = int.from_bytes(data[pos + 5 : pos + 7], "big")
            width = int.from_bytes(data[pos + 7 : pos + 9], "big")
            size = (width, height, data[pos + 9])
            if best is None or math.prod(size) > math.prod(best):
                best = size
        pos += 2 + length
    return best, True


def _j2k_size(data: bytes) -> tuple[int, int, int] | None:
    """(width, height, components) from a JPEG 2000 codestream's SIZ marker (or a JP2 file's
    codestream and image header, whichever is larger)."""
    pos, header = 0, None
    if data.startswith(b"\x00\x00\x00\x0cjP  \r\n\x87\n"):  # JP2 boxes around the codestream
        pos = 12
        while True:
            if pos + 8 > len(data):
                return None
            length, box = int.from_bytes(data[pos : pos + 4], "big"), data[pos + 4 : pos + 8]
            start = pos + 8
            if length == 1:
                length, start = int.from_bytes(data[pos + 8 : pos + 16], "big"), pos + 16
            if box == b"jp2c":
                pos = start
                break
            if box == b"jp2h" and data[start + 4 : start + 8] == b"ihdr" and start + 18 <= len(data):
                height, width, components = struct.unpack(">IIH", data[start + 8 : start + 18])
                header = (width, height, components)
            if length < start - pos:
                return None
            pos += length
    if data[pos : pos + 4] != b"\xff\x4f\xff\x51" or pos + 42 > len(data):
        return None
    xsiz, ysiz, xosiz, yosiz = struct.unpack(">IIII", data[pos + 8 : pos + 24])
    (csiz,) = struct.unpack(">H", data[pos + 40 : pos + 42])
    size = (max(0, xsiz - xosiz), max(0, ysiz - yosiz), csiz)
    return size if header is None or math.prod(size) >= math.prod(header) else header


# ---------------------------------------------------------------- pixel normalisation

_BLOCK_PIXELS = 1 << 18


def _row_blocks(shape: tuple[int, ...]):
    per_row = max(1, math.prod(shape[1:]))
    step = max(1, _BLOCK_PIXELS // per_row)
    for start in range(0, shape[0], step):
        yield slice(start, min(shape[0], start + step))


def _stretch(arr: np.ndarray, transform: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
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


def _gray_or_rgb(arr: np.ndarray) -> np.ndarray:
    """2-D gray or (h, w, 3) RGB, without copying gray into three channels yet."""
    if arr.ndim == 3 and arr.shape[2] in (1, 2):
        return np.ascontiguousarray(arr[:, :, 0])
    return arr if arr.ndim == 2 else _to_rgb(arr)


# ---------------------------------------------------------------- PNG and JPEG


def _pil_image(fp, head: bytes, fmt: str, label: str) -> Image.Image:
    """The PNG or JPEG in ``fp``, opened (not decoded) once the size in its header passed the
    pixel limit: Pillow is never asked to open more (it would warn, or raise over twice its limit).

    ``head`` holds the file's first bytes, up to the end of the JPEG's header segments.
    """
    size = _png_size(head) if fmt == "PNG" else _jpeg_size(head)
    if size is None:
        raise ImageDecodeError(label, f"corrupt {fmt} data (no readable image header)")
    _check_pixels(label, size[0] * size[1])
    img = Image.open(fp, formats=[fmt])
    _check_pixels(label, img.width * img.height)
    if fmt == "PNG" and getattr(img, "n_frames", 1) > 1:
        img.close()
        raise ImageDecodeError(label, f"animated PNG images are not read: {_ACCEPTED} (save one frame as a PNG)")
    return img


def _pil_reason(exc: BaseException, fmt: str) -> str:
    """Our words for a Pillow failure: its messages can quote chunk names and other file bytes."""
    if isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return f"too many pixels (the limit is {MAX_PIXELS:,})"
    if isinstance(exc, MemoryError):
        return "not enough memory to decode it"
    if isinstance(exc, UnidentifiedImageError):
        return f"corrupt {fmt} data (unreadable header)"
    if isinstance(exc, EOFError) or "truncated" in str(exc):
        return f"corrupt {fmt} data (the file is truncated)"
    return f"corrupt {fmt} data ({type(exc).__name__})"


def _decode_pil(data: bytes, fmt: str, label: str, size: int | None) -> np.ndarray:
    """Gray (2-D) or RGB ``uint8`` pixels, resized to ``size`` when given."""
    with _pil_image(_io.BytesIO(data), data, fmt, label) as img:
        img.load()
        ImageOps.exif_transpose(img, in_place=True)
        if img.mode not in _HIGH_BIT_MODES:
            if img.mode not in ("L", "RGB"):
                img = img.convert("RGB")
            if size is not None and img.size != (size, size):
                img = img.resize((size, size), Image.BILINEAR)  # Pillow's pixels: no numpy copy
            return np.asarray(img, dtype=np.uint8)
        high = np.asarray(img)
    del img  # Pillow's copy of the pixels: the stretch needs `high`
    gray = _stretch(high)
    del high
    return gray if size is None else _resize(gray, size)


# ---------------------------------------------------------------- public API


def _decode(data: bytes, label: str, size: int | None = None) -> np.ndarray:
    """Gray (2-D) or RGB ``uint8`` pixels of any accepted file, resized when ``size`` is given."""
    if not data:
        raise ImageDecodeError(label, "the file is empty")
    fmt = _sniff(data)
    if fmt not in ("DICOM", "PNG", "JPEG"):
        raise _refuse_format(label, fmt)
    try:
        if fmt == "DICOM":
            from .dicom_pixels import _decode_dicom  # here, not at import: it imports this module

            arr = _decode_dicom(data, label)
            if arr.shape[0] >= 1 and arr.shape[1] >= 1 and size is not None:
                arr = _resize(arr, size)
        else:
            arr = _decode_pil(data, fmt, label, size)
    except ImageDecodeError:
        raise
    except Exception as exc:  # Pillow raises OSError, ValueError, SyntaxError, ...
        raise ImageDecodeError(label, _pil_reason(exc, fmt)) from None
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ImageDecodeError(label, "the image has no pixels")
    return arr


def decode_image(src: ImageSource, *, name: str | None = None) -> np.ndarray:
    """Decode a PNG, JPEG or DICOM file (path or bytes) to ``uint8`` RGB at its own size.

    ``name`` is used in error messages when ``src`` is bytes (e.g. an upload's file name).
    Raises :class:`ImageDecodeError` with the source and the reason on any failure.
    """
    label = _describe(src, name)
    return _to_rgb(_decode(_read_bytes(src, label), label))


def _resize(arr: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of ``uint8`` gray (2-D) or RGB pixels to ``size x size``.

    Pillow resamples each channel alike, so resizing gray and then copying it into three
    channels gives exactly the pixels of resizing the three-channel copy, for a third of
    the work and memory.
    """
    if arr.shape[0] == size and arr.shape[1] == size:
        return arr
    img = Image.fromarray(np.ascontiguousarray(arr, dtype=np.uint8))
    return np.asarray(img.resize((size, size), Image.BILINEAR), dtype=np.uint8)


def resize_rgb(arr: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of a ``uint8`` RGB array to ``size x size``."""
    return _resize(arr, size)


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


def prepare_image(
    src: ImageSource, size: int, *, name: str | None = None, rules: PixelRules | None = None
) -> np.ndarray:
    """The model's view of an image: decoded, normalised, resized, with the run's ``rules``
    applied; ``uint8`` (size, size, 3)."""
    label = _describe(src, name)
    data = _read_bytes(src, label)
    if rules is None or rules.is_default:
        return _to_rgb(_decode(data, label, size))
    arr = _decode(data, label, None if rules.crop_border or rules.lung_crop else size)
    arr = crop_border(arr, rules.crop_border)
    if rules.lung_crop:
        from ..lungs.segment import get_segmenter  # here: it loads TensorFlow

        arr = get_segmenter().crop_to_lungs(arr)
    arr = _resize(arr, size)
    arr = equalize(arr) if rules.equalize else arr
    if rules.lung_mask:
        from ..lungs.segment import get_segmenter

        arr = get_segmenter().mask_outside(arr)
    return _to_rgb(arr)


def read_header(path: str | os.PathLike) -> dict:
    """Width, height, mode and format of an image file, read from its header only.

    Pixels are not decoded, so this is cheap enough to run over a whole dataset. Applies
    the same rules as decoding: other formats, animated PNGs and images over
    :data:`MAX_PIXELS` are refused. Raises :class:`ImageDecodeError` naming the file.
    """
    path = Path(path)
    label = str(path)
    fmt = ""
    try:
        with open(path, "rb") as fh:
            head = fh.read(1 << 16)
            if not head:
                raise ImageDecodeError(label, "the file is empty")
            if is_dicom(head):
                from .dicom import _dicom_header

                fmt = "DICOM"
                fh.seek(0)
                return _dicom_header(fh, label)
            fmt = _sniff(head)
            if fmt not in ("PNG", "JPEG"):
                raise _refuse_format(label, fmt)
            while fmt == "JPEG" and not _jpeg_walk(head)[1]:  # EXIF, ICC profiles... before the frame
                more = fh.read(len(head))
                if not more:
                    break
                head += more
            fh.seek(0)
            with _pil_image(fh, head, fmt, label) as img:
                return {"width": img.width, "height": img.height, "mode": img.mode, "format": fmt}
    except ImageDecodeError:
        raise
    except OSError as exc:
        if fmt in ("", "DICOM"):  # opening or reading the file
            raise ImageDecodeError(label, exc.strerror or type(exc).__name__) from None
        raise ImageDecodeError(label, _pil_reason(exc, fmt)) from None
    except Exception as exc:  # Pillow raises SyntaxError, ValueError, ...
        raise ImageDecodeError(label, _pil_reason(exc, fmt)) from None
