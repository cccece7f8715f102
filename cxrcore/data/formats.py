"""Image formats: recognising PNG, JPEG and DICOM by their content, their sizes from their headers, the
pixel limit, and PNG and JPEG decoding (DICOM: :mod:`cxrcore.data.dicom`; choosing between them and the
pixel rules: :mod:`cxrcore.data.io`).

Formats are recognised by content (DICOM by ``DICM`` at offset 128, PNG and JPEG by their signatures),
never by the file name. Everything else Pillow could open (GIF, TIFF, BMP, WebP, ...) is refused naming
its format, as is an animated PNG. Sizes are read from headers before anything is decoded, so an image
over :data:`MAX_PIXELS` is refused without its pixels being touched.
"""

from __future__ import annotations

import io as _io
import logging
import math
import os
import struct
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import ImageDecodeError
from .pixels import resize, stretch

ImageSource = str | os.PathLike | bytes

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")
HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")

#: Most pixels an image may have, in every format. Pillow's default decompression-bomb
#: limit (which PNG and JPEG had before this was checked here): 89.5 M, about 9459 x 9459.
#: Not above ``PIL.Image.MAX_IMAGE_PIXELS``, so Pillow's own check (a warning) never fires.
MAX_PIXELS = 1024 * 1024 * 1024 // 4 // 3

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
ACCEPTED = "only PNG, JPEG and DICOM are accepted"

# Pillow logs EXIF values and PNG chunk contents at DEBUG; see cxrcore.data.dicom's docstring.
logging.getLogger("PIL").setLevel(logging.CRITICAL)


def is_dicom(data: bytes) -> bool:
    """True when ``data`` starts like a DICOM Part 10 file (``DICM`` at offset 128)."""
    return len(data) >= 132 and data[128:132] == b"DICM"


def describe(src: ImageSource, name: str | None) -> str:
    if name:
        return name
    if isinstance(src, (bytes, bytearray)):
        return f"<{len(src)} bytes>"
    return str(src)


def read_bytes(src: ImageSource, label: str) -> bytes:
    if isinstance(src, (bytes, bytearray)):
        return bytes(src)
    try:
        return Path(src).read_bytes()
    except OSError as exc:
        raise ImageDecodeError(label, exc.strerror or type(exc).__name__) from None


def check_pixels(label: str, pixels: int) -> None:
    if pixels > MAX_PIXELS:
        raise ImageDecodeError(label, f"too many pixels (the limit is {MAX_PIXELS:,})")


# ---------------------------------------------------------------- format sniffing and headers


def sniff(data: bytes) -> str:
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


def refuse_format(label: str, fmt: str) -> ImageDecodeError:
    if fmt:
        return ImageDecodeError(label, f"{fmt} images are not read: {ACCEPTED} (convert it to PNG)")
    return ImageDecodeError(label, f"not a PNG, JPEG or DICOM image ({ACCEPTED})")


def png_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from the IHDR chunk, which must come first."""
    if len(data) < 24 or data[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", data[16:24])


_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC} | {0xF7}  # F7: JPEG-LS (SOF55)


def jpeg_size(data: bytes) -> tuple[int, int, int] | None:
    """(width, height, components) of the largest frame header before the first scan.

    Walks the marker segments as a decoder does; ``None`` when there is none or the
    segment chain is broken (no decoder could find the size either).
    """
    return jpeg_walk(data)[0]


def jpeg_walk(data: bytes) -> tuple[tuple[int, int, int] | None, bool]:
    """:func:`jpeg_size`'s answer, and whether ``data`` held all the headers (False: read more)."""
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


def j2k_size(data: bytes) -> tuple[int, int, int] | None:
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


def open_pil(fp, head: bytes, fmt: str, label: str) -> Image.Image:
    """The PNG or JPEG in ``fp``, opened (not decoded) once the size in its header passed the
    pixel limit: Pillow is never asked to open more (it would warn, or raise over twice its limit).

    ``head`` holds the file's first bytes, up to the end of the JPEG's header segments.
    """
    size = png_size(head) if fmt == "PNG" else jpeg_size(head)
    if size is None:
        raise ImageDecodeError(label, f"corrupt {fmt} data (no readable image header)")
    check_pixels(label, size[0] * size[1])
    img = Image.open(fp, formats=[fmt])
    check_pixels(label, img.width * img.height)
    if fmt == "PNG" and getattr(img, "n_frames", 1) > 1:
        img.close()
        raise ImageDecodeError(label, f"animated PNG images are not read: {ACCEPTED} (save one frame as a PNG)")
    return img


def pil_reason(exc: BaseException, fmt: str) -> str:
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


def decode_pil(data: bytes, fmt: str, label: str, size: int | None) -> np.ndarray:
    """Gray (2-D) or RGB ``uint8`` pixels, resized to ``size`` when given."""
    with open_pil(_io.BytesIO(data), data, fmt, label) as img:
        img.load()
        ImageOps.exif_transpose(img, in_place=True)
        if img.mode not in HIGH_BIT_MODES:
            if img.mode not in ("L", "RGB"):
                img = img.convert("RGB")
            return np.asarray(img, dtype=np.uint8) if size is None else resize(img, size)  # no numpy copy first
        high = np.asarray(img)
    del img  # Pillow's copy of the pixels: the stretch needs `high`
    gray = stretch(high)
    del high
    return gray if size is None else resize(gray, size)
