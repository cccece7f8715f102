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

Limits: an image may hold at most :data:`MAX_PIXELS` pixels (for DICOM: rows x columns
x frames x samples), read from its header before anything is decoded: the PNG IHDR,
the JPEG frame header, the DICOM Rows/Columns/NumberOfFrames/SamplesPerPixel and, for
compressed DICOM, the first frame's own JPEG / JPEG 2000 header or the decoded length
of its RLE segments, and the inflated size of a deflated DICOM. The stretch runs over
blocks of rows, so a large 16-bit image never gets a full-size float64 copy.

Privacy: DICOM files carry names, ids and institutions, and a corrupt length field can
make any element's value run on over them. :func:`dicom_summary` therefore shows only
values that parse as their VR and match a strict pattern, decoding works from a
dataset holding only validated image elements, and error messages are reasons written
here, never text taken from the file (nor from a decoder's message, which may quote
it). Both libraries that read files log what they read: Pillow logs EXIF tags and PNG
profile names at DEBUG, pydicom logs and warns with invalid values in full. So, once,
on first use (:func:`_pydicom`, and at import for Pillow): the ``PIL`` and ``pydicom``
loggers are set to CRITICAL (neither logs at that level: nothing from a file reaches
a log or ``job.log``); pydicom's ``reading_validation_mode`` is IGNORE (its validation
warnings quote the value; values are validated here instead); and a top-level
Specific Character Set that is not a plain defined term (pydicom warns with it) is
blanked before pydicom reads the file, text being decoded nowhere here (one inside a
sequence item is not: pydicom still parses undefined-length sequences it skips, and a
corrupt file could in principle put one there). Nothing touches the warnings filters,
which are process-wide while Streamlit sessions are threads.
"""
from __future__ import annotations

import functools
import io as _io
import logging
import math
import os
import re
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import ImageDecodeError

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

# Pillow logs EXIF values and PNG chunk contents at DEBUG; see the module docstring.
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
    for fmt, (_, accept) in Image.OPEN.items():   # each plugin's own check of the first bytes
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


_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC} | {0xF7}   # F7: JPEG-LS (SOF55)


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
        if marker == 0xFF:                      # fill byte
            pos += 1
            continue
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:   # no length field
            pos += 2
            continue
        if marker in (0xD9, 0xDA):              # end of image, start of scan: headers are over
            break
        length = int.from_bytes(data[pos + 2:pos + 4], "big")
        if length < 2:
            return None, True
        if marker in _JPEG_SOF:
            if pos + 10 > len(data):
                return best, False
            height = int.from_bytes(data[pos + 5:pos + 7], "big")
            width = int.from_bytes(data[pos + 7:pos + 9], "big")
            size = (width, height, data[pos + 9])
            if best is None or math.prod(size) > math.prod(best):
                best = size
        pos += 2 + length
    return best, True


def _j2k_size(data: bytes) -> tuple[int, int, int] | None:
    """(width, height, components) from a JPEG 2000 codestream's SIZ marker (or a JP2 file's
    codestream and image header, whichever is larger)."""
    pos, header = 0, None
    if data.startswith(b"\x00\x00\x00\x0cjP  \r\n\x87\n"):     # JP2 boxes around the codestream
        pos = 12
        while True:
            if pos + 8 > len(data):
                return None
            length, box = int.from_bytes(data[pos:pos + 4], "big"), data[pos + 4:pos + 8]
            start = pos + 8
            if length == 1:
                length, start = int.from_bytes(data[pos + 8:pos + 16], "big"), pos + 16
            if box == b"jp2c":
                pos = start
                break
            if box == b"jp2h" and data[start + 4:start + 8] == b"ihdr" and start + 18 <= len(data):
                height, width, components = struct.unpack(">IIH", data[start + 8:start + 18])
                header = (width, height, components)
            if length < start - pos:
                return None
            pos += length
    if data[pos:pos + 4] != b"\xff\x4f\xff\x51" or pos + 42 > len(data):
        return None
    xsiz, ysiz, xosiz, yosiz = struct.unpack(">IIII", data[pos + 8:pos + 24])
    (csiz,) = struct.unpack(">H", data[pos + 40:pos + 42])
    size = (max(0, xsiz - xosiz), max(0, ysiz - yosiz), csiz)
    return size if header is None or math.prod(size) >= math.prod(header) else header


def _rle_decoded_length(segment: bytes, limit: int) -> int:
    """How many bytes a DICOM RLE (PackBits) segment decodes to, counting stops past ``limit``.

    pydicom's decoder has no bound: two bytes can stand for 128, so a small segment can
    decode to 64 times its size whatever Rows and Columns say.
    """
    pos, total, end = 0, 0, len(segment)
    while pos < end and total <= limit:
        head = segment[pos]
        if head < 128:                          # a literal run of head + 1 bytes
            total += min(head + 1, end - pos - 1)
            pos += head + 2
        elif head > 128:                        # one byte repeated 257 - head times
            total += 257 - head if pos + 1 < end else 0
            pos += 2
        else:
            pos += 1
    return total


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
                img = img.resize((size, size), Image.BILINEAR)   # Pillow's pixels: no numpy copy
            return np.asarray(img, dtype=np.uint8)
        high = np.asarray(img)
    del img                                     # Pillow's copy of the pixels: the stretch needs `high`
    gray = _stretch(high)
    del high
    return gray if size is None else _resize(gray, size)


# ---------------------------------------------------------------- DICOM: reading

@functools.cache
def _pydicom():
    """pydicom, imported and configured once (see the module docstring for why)."""
    import pydicom
    import pydicom.config

    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    logging.getLogger("pydicom").setLevel(logging.CRITICAL)   # after import: it sets WARNING
    return pydicom


_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
_IMPLICIT_LE, _EXPLICIT_BE, _DEFLATED = "1.2.840.10008.1.2", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"


def _elements(data: bytes, pos: int, *, implicit: bool, little: bool):
    """(tag, value offset, length) of consecutive data elements from ``pos`` (no nesting)."""
    order = "<" if little else ">"
    while pos + 8 <= len(data):
        group, element = struct.unpack(order + "HH", data[pos:pos + 4])
        if implicit or not b"AA" <= data[pos + 4:pos + 6] <= b"ZZ":     # as pydicom reads it
            (length,), start = struct.unpack(order + "I", data[pos + 4:pos + 8]), pos + 8
        elif data[pos + 4:pos + 6] in _LONG_VRS:
            if pos + 12 > len(data):
                return
            (length,), start = struct.unpack(order + "I", data[pos + 8:pos + 12]), pos + 12
        else:
            (length,), start = struct.unpack(order + "H", data[pos + 6:pos + 8]), pos + 8
        yield (group << 16) | element, start, length
        if length == 0xFFFFFFFF:
            return
        pos = start + length


def _file_meta(data: bytes, label: str) -> tuple[str, int]:
    """The transfer syntax UID (validated) and where the data set starts."""
    syntax, end = None, 132
    for tag, start, length in _elements(data, 132, implicit=False, little=True):
        if tag >> 16 != 0x0002:
            break
        if tag == 0x00020010:
            syntax = data[start:start + length].rstrip(b"\0 ")
        end = start + length
    if syntax is None or not re.fullmatch(rb"[0-9.]{1,64}", syntax):
        raise ImageDecodeError(label, "invalid DICOM (no valid transfer syntax in the file meta information)")
    return syntax.decode("ascii"), end


def _defined_charset(value: bytes) -> bool:
    """Whether pydicom accepts this Specific Character Set without a warning (which quotes it)."""
    from pydicom.charset import STAND_ALONE_ENCODINGS, python_encoding

    try:
        terms = [t.strip(" \0") for t in value.decode("ascii").split("\\")]
    except UnicodeDecodeError:
        return False
    if not all(t in python_encoding for t in terms):
        return False
    return len(terms) == 1 or not any(t in STAND_ALONE_ENCODINGS for t in terms)


def _charset_to_blank(data: bytes, start: int, syntax: str, label: str) -> tuple[int, int] | None:
    """Where the top-level Specific Character Set's value lies, when pydicom would warn about it
    (quoting it) and so it must be blanked; nothing here decodes text.

    Also checks what pydicom would do blindly with a deflated data set: inflate it all (a
    few MB can inflate to gigabytes).
    """
    head = _inflated_head(data, start, label) if syntax == _DEFLATED else data[start:start + 65536]
    # pydicom reads a data set as implicit or explicit VR by its first element, whatever the
    # syntax says (implicit unless that element's VR is two capitals); so does this walk
    implicit = len(head) < 6 or not (0x40 < head[4] < 0x5B and 0x40 < head[5] < 0x5B)
    for tag, value_at, length in _elements(head, 0, implicit=implicit, little=syntax != _EXPLICIT_BE):
        if tag > 0x00080005:
            break
        if tag == 0x00080005 and not _defined_charset(head[value_at:value_at + length]):
            if syntax == _DEFLATED:
                raise ImageDecodeError(label, "invalid DICOM (bad Specific Character Set)")
            return start + value_at, length
    return None


def _inflated_head(data: bytes, start: int, label: str) -> bytes:
    """The first 64 kB of a deflated data set, after checking the whole inflates to a sane size."""
    limit = 4 * MAX_PIXELS + (1 << 24)        # 32-bit samples at the pixel limit, plus the header
    inflater, total, head = zlib.decompressobj(-zlib.MAX_WBITS), 0, b""
    try:
        for at in range(start, len(data), 1 << 20):
            chunk = data[at:at + (1 << 20)]
            while chunk:
                out = inflater.decompress(chunk, 1 << 24)
                total += len(out)
                if len(head) < 65536:
                    head += out[:65536 - len(head)]
                if total > limit:
                    raise ImageDecodeError(label, "invalid DICOM (the deflated data set inflates to too much data)")
                chunk = inflater.unconsumed_tail
    except zlib.error:
        raise ImageDecodeError(label, "invalid DICOM (corrupt deflated data set)") from None
    return head


#: Elements read from a file; every other element is skipped unread (names and ids among them).
_TAGS = {
    "SpecificCharacterSet": 0x00080005, "Modality": 0x00080060, "BodyPartExamined": 0x00180015,
    "ViewPosition": 0x00185101, "SamplesPerPixel": 0x00280002, "PhotometricInterpretation": 0x00280004,
    "PlanarConfiguration": 0x00280006, "NumberOfFrames": 0x00280008, "Rows": 0x00280010,
    "Columns": 0x00280011, "PixelSpacing": 0x00280030, "BitsAllocated": 0x00280100,
    "BitsStored": 0x00280101, "PixelRepresentation": 0x00280103, "WindowCenter": 0x00281050,
    "WindowWidth": 0x00281051, "RescaleIntercept": 0x00281052, "RescaleSlope": 0x00281053,
    "VOILUTFunction": 0x00281056, "ModalityLUTSequence": 0x00283000, "VOILUTSequence": 0x00283010,
}
_PIXEL_DATA = 0x7FE00010


def _read_dicom(src: bytes | BinaryIO, label: str, *, pixels: bool):
    """(dataset of the :data:`_TAGS` elements, raw and unconverted; transfer syntax).

    ``src`` is the file's bytes, or the file opened at its start (then only what is needed
    is read: the elements up to the pixel data, or all of a deflated or blanked file).
    """
    pydicom = _pydicom()
    data = src if isinstance(src, bytes) else src.read(1 << 16)
    syntax, start = _file_meta(data, label)
    if not isinstance(src, bytes) and (syntax == _DEFLATED or len(data) < start + (1 << 16)):
        data += src.read(-1 if syntax == _DEFLATED else start + (1 << 16) - len(data))
    blank = _charset_to_blank(data, start, syntax, label)
    if blank is not None:
        at, length = blank
        data += b"" if isinstance(src, bytes) else src.read()
        data = data[:at] + b" " * min(length, len(data) - at) + data[at + length:]
    if isinstance(src, bytes) or blank is not None or syntax == _DEFLATED:
        fp = _io.BytesIO(data)
    else:
        fp = src
        fp.seek(0)
    tags = list(_TAGS.values()) + ([_PIXEL_DATA] if pixels else [])
    try:
        ds = pydicom.dcmread(fp, stop_before_pixels=not pixels, specific_tags=tags)
    except Exception:  # pydicom raises many types for broken files; their messages may quote values
        raise ImageDecodeError(label, "invalid DICOM (unreadable data elements)") from None
    if str(ds.file_meta.get("TransferSyntaxUID", "")) != syntax:
        raise ImageDecodeError(label, "invalid DICOM (unreadable file meta information)")
    return ds, syntax


# ---------------------------------------------------------------- DICOM: validated values

_CS = re.compile(r"[A-Z0-9 _]{1,16}")
_MODALITY = re.compile(r"[A-Z]{2,16}")
_DS = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
_IS = re.compile(r"\+?\d{1,12}")
_PHOTOMETRIC_TERMS = ("MONOCHROME1", "MONOCHROME2", "PALETTE COLOR", "RGB", "YBR_FULL", "YBR_FULL_422",
                     "YBR_PARTIAL_422", "YBR_PARTIAL_420", "YBR_ICT", "YBR_RCT", "HSV", "ARGB", "CMYK")
_VOI_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")


def _raw(ds, tag: int, vrs: tuple[str, ...]) -> tuple[bytes, bool] | None:
    """An element's bytes and byte order, when it is present, unconverted and of one of ``vrs``."""
    from pydicom.dataelem import RawDataElement

    elem = ds.get_item(tag, keep_deferred=True)
    if not isinstance(elem, RawDataElement) or elem.VR not in (None, "UN", *vrs):
        return None
    if not isinstance(elem.value, (bytes, bytearray)):
        return None
    return bytes(elem.value), elem.is_little_endian


def _text(ds, tag: int, vr: str) -> list[str] | None:
    """A text element's values, stripped; ``None`` unless it is plain printable ASCII."""
    raw = _raw(ds, tag, (vr,))
    if raw is None:
        return None
    try:
        text = raw[0].decode("ascii").strip("\0")
    except UnicodeDecodeError:
        return None
    if not text.isprintable():
        return None
    return [part.strip(" ") for part in text.split("\\")]


def _code(ds, tag: int, pattern: re.Pattern | tuple[str, ...]) -> str | None:
    """One CS value matching ``pattern`` (a regex or the defined terms)."""
    values = _text(ds, tag, "CS")
    if values is None or len(values) != 1:
        return None
    value = values[0]
    ok = value in pattern if isinstance(pattern, tuple) else pattern.fullmatch(value)
    return value if ok else None


def _us(ds, tag: int, count: int = 1, vrs: tuple[str, ...] = ("US",)) -> list[int] | None:
    """``count`` unsigned 16-bit values."""
    raw = _raw(ds, tag, vrs)
    if raw is None or len(raw[0]) != 2 * count:
        return None
    return list(struct.unpack(("<" if raw[1] else ">") + "H" * count, raw[0]))


def _int(ds, tag: int, lo: int, hi: int) -> int | None:
    values = _us(ds, tag)
    return values[0] if values is not None and lo <= values[0] <= hi else None


def _decimals(ds, tag: int) -> list[float] | None:
    """DS values as finite floats."""
    values = _text(ds, tag, "DS")
    if not values or not all(_DS.fullmatch(v) for v in values):
        return None
    floats = [float(v) for v in values]
    return floats if all(math.isfinite(f) for f in floats) else None


def _frames(ds) -> int | None:
    """NumberOfFrames (IS): 1 when absent, empty or 0, as pydicom reads it; ``None`` when invalid."""
    if _TAGS["NumberOfFrames"] not in ds:
        return 1
    values = _text(ds, _TAGS["NumberOfFrames"], "IS")
    if values is None or len(values) != 1 or not (values[0] == "" or _IS.fullmatch(values[0])):
        return None
    return max(1, int(values[0] or 0))


@dataclass
class _DicomImage:
    """The validated image elements of a DICOM file: all pydicom gets to decode it."""

    syntax: str
    rows: int
    columns: int
    frames: int
    samples: int
    photometric: str
    bits_allocated: int
    bits_stored: int
    pixel_representation: int
    planar: int
    rescale: tuple[float, float] | None
    window: tuple[float, float] | None
    voi_function: str | None
    modality_lut: tuple[list[int], bytes] | None
    voi_lut: tuple[list[int], bytes] | None
    pixel_data: bytes | None


def _required(value, label: str, keyword: str):
    if value is None:
        raise ImageDecodeError(label, f"invalid DICOM (missing or bad {keyword})")
    return value


def _lut(ds, keyword: str, pixel_representation: int, label: str) -> tuple[list[int], bytes] | None:
    """The first item of a LUT sequence: its descriptor and its data (as bytes)."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    tag = _TAGS[keyword]
    if tag not in ds:
        return None
    try:
        seq = ds[tag].value
        item = seq[0] if isinstance(seq, Sequence) and len(seq) and isinstance(seq[0], Dataset) else None
    except Exception:  # an unparsable sequence
        item = None
    descriptor = None if item is None else _us(item, 0x00283002, 3, ("US", "SS"))
    raw = None if item is None else _raw(item, 0x00283006, ("US", "OW"))
    if descriptor is None or raw is None:
        raise ImageDecodeError(label, f"invalid DICOM (bad {keyword})")
    entries, first, bits = descriptor
    entries = entries or 65536
    if pixel_representation == 1 and first >= 32768:
        first -= 65536                          # "US or SS": signed when the pixels are
    if bits != 8 and not 10 <= bits <= 16 or len(raw[0]) < 2 * entries:
        raise ImageDecodeError(label, f"invalid DICOM (bad {keyword})")
    return [entries % 65536, first, bits], raw[0]


def _dicom_image(ds, syntax: str, label: str, *, pixels: bool) -> _DicomImage:
    """Validates what decoding needs, and the pixel limit, from the header alone."""
    req = functools.partial(_required, label=label)
    rows = req(_int(ds, _TAGS["Rows"], 1, 65535), keyword="Rows")
    columns = req(_int(ds, _TAGS["Columns"], 1, 65535), keyword="Columns")
    frames = req(_frames(ds), keyword="NumberOfFrames")
    samples = req(_int(ds, _TAGS["SamplesPerPixel"], 1, 4), keyword="SamplesPerPixel")
    _check_pixels(label, rows * columns * frames * samples)
    photometric = req(_code(ds, _TAGS["PhotometricInterpretation"], _PHOTOMETRIC_TERMS),
                      keyword="PhotometricInterpretation")
    bits_allocated = _int(ds, _TAGS["BitsAllocated"], 1, 64)
    bits_allocated = req(bits_allocated if bits_allocated in (1, 8, 16, 32, 64) else None, keyword="BitsAllocated")
    bits_stored = req(_int(ds, _TAGS["BitsStored"], 1, bits_allocated), keyword="BitsStored")
    pixel_representation = req(_int(ds, _TAGS["PixelRepresentation"], 0, 1), keyword="PixelRepresentation")
    planar = 0
    if samples > 1 and _TAGS["PlanarConfiguration"] in ds:
        planar = req(_int(ds, _TAGS["PlanarConfiguration"], 0, 1), keyword="PlanarConfiguration")

    def optional(keyword: str, count: int | None = None) -> list[float] | None:
        if _TAGS[keyword] not in ds:
            return None
        values = _decimals(ds, _TAGS[keyword])
        return req(values if values and (count is None or len(values) == count) else None, keyword=keyword)

    slope, intercept = optional("RescaleSlope", 1), optional("RescaleIntercept", 1)
    center, width = optional("WindowCenter"), optional("WindowWidth")
    voi_function = None
    if _TAGS["VOILUTFunction"] in ds:
        voi_function = req(_code(ds, _TAGS["VOILUTFunction"], _VOI_FUNCTIONS), keyword="VOILUTFunction")
    pixel_data = None
    if pixels:
        raw = _raw(ds, _PIXEL_DATA, ("OB", "OW"))
        pixel_data = req(raw[0] if raw and raw[0] else None, keyword="Pixel Data")
    return _DicomImage(
        syntax=syntax, rows=rows, columns=columns, frames=frames, samples=samples, photometric=photometric,
        bits_allocated=bits_allocated, bits_stored=bits_stored, pixel_representation=pixel_representation,
        planar=planar, rescale=(slope[0], intercept[0]) if slope and intercept else None,
        window=(center[0], width[0]) if center and width else None, voi_function=voi_function,
        modality_lut=_lut(ds, "ModalityLUTSequence", pixel_representation, label),
        voi_lut=_lut(ds, "VOILUTSequence", pixel_representation, label), pixel_data=pixel_data)


# ---------------------------------------------------------------- DICOM: decoding

# What pydicom 3.0.2 needs per compressed transfer syntax, beyond itself and Pillow
# (pydicom.pixels.decoders: pylibjpeg's plugins, pyjpegls, or python-gdcm; Pillow covers
# JPEG baseline, 8-bit JPEG extended and JPEG 2000; RLE and deflate need nothing).
_INSTALL = {
    "1.2.840.10008.1.2.4.50": "pylibjpeg pylibjpeg-libjpeg",     # JPEG Baseline
    "1.2.840.10008.1.2.4.51": "pylibjpeg pylibjpeg-libjpeg",     # JPEG Extended (12-bit)
    "1.2.840.10008.1.2.4.57": "pylibjpeg pylibjpeg-libjpeg",     # JPEG Lossless
    "1.2.840.10008.1.2.4.70": "pylibjpeg pylibjpeg-libjpeg",     # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80": "pylibjpeg pylibjpeg-libjpeg",     # JPEG-LS Lossless (or pyjpegls)
    "1.2.840.10008.1.2.4.81": "pylibjpeg pylibjpeg-libjpeg",     # JPEG-LS Near-lossless
    "1.2.840.10008.1.2.4.90": "pylibjpeg pylibjpeg-openjpeg",    # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91": "pylibjpeg pylibjpeg-openjpeg",    # JPEG 2000
    "1.2.840.10008.1.2.4.201": "pylibjpeg pylibjpeg-openjpeg",   # HTJ2K Lossless
    "1.2.840.10008.1.2.4.202": "pylibjpeg pylibjpeg-openjpeg",   # HTJ2K Lossless RPCL
    "1.2.840.10008.1.2.4.203": "pylibjpeg pylibjpeg-openjpeg",   # HTJ2K
    "1.2.840.10008.1.2.5": "pylibjpeg pylibjpeg-rle",            # RLE Lossless
}
_JPEG_FAMILY = ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57",
                "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81")
_J2K_FAMILY = ("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.201",
               "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203")
_RLE = "1.2.840.10008.1.2.5"


def _syntax_name(syntax: str) -> str:
    """The transfer syntax's name from pydicom's dictionary; never the UID string from the file."""
    from pydicom.uid import UID, UID_dictionary

    return f"'{UID(syntax).name}'" if syntax in UID_dictionary else "an unknown transfer syntax"


def _decoder(img: _DicomImage, label: str):
    from pydicom.pixels import get_decoder

    try:
        decoder = get_decoder(img.syntax)
    except NotImplementedError:
        raise ImageDecodeError(label, f"DICOM pixel data in {_syntax_name(img.syntax)} is not supported") from None
    pillow_only = decoder.available_plugins == ("pillow",)
    if not decoder.is_available or (pillow_only and img.syntax == "1.2.840.10008.1.2.4.51" and img.bits_stored > 8):
        raise ImageDecodeError(label, f"no decoder for DICOM pixel data in {_syntax_name(img.syntax)} is "
                                      f"installed: pip install {_INSTALL.get(img.syntax, 'pylibjpeg')}")
    return decoder


def _check_first_frame(img: _DicomImage, label: str) -> None:
    """The compressed first frame's own header against Rows/Columns and the pixel limit."""
    from pydicom.encaps import get_frame

    try:
        frame = get_frame(img.pixel_data, 0, number_of_frames=img.frames)
    except Exception:
        raise ImageDecodeError(label, "invalid DICOM (bad encapsulated pixel data)") from None
    if img.syntax == _RLE:
        expected = img.rows * img.columns
        if len(frame) < 64:
            raise ImageDecodeError(label, "invalid DICOM (bad RLE frame)")
        count, *offsets = struct.unpack("<16L", frame[:64])
        ends = [*offsets[:count], len(frame)][1:]
        limit = expected + expected // 64 + 64       # room for an encoder's padding, not for a bomb
        for start, end in zip(offsets[:count], ends, strict=False):
            if not 64 <= start <= end <= len(frame) or _rle_decoded_length(frame[start:end], limit) > limit:
                raise ImageDecodeError(label, "invalid DICOM (an RLE segment decodes to more than the "
                                              "frame's pixels)")
        return
    size = _jpeg_size(frame) if img.syntax in _JPEG_FAMILY else _j2k_size(frame)
    if size is None:
        raise ImageDecodeError(label, "invalid DICOM (unreadable compressed frame header)")
    _check_pixels(label, math.prod(size))
    if size[:2] != (img.columns, img.rows):
        raise ImageDecodeError(label, "invalid DICOM (the compressed frame's size differs from Rows/Columns)")


def _decoding_dataset(img: _DicomImage):
    """A new dataset holding only the validated image elements and the pixel data bytes."""
    pydicom = _pydicom()
    from pydicom.dataelem import DataElement
    from pydicom.dataset import Dataset, FileMetaDataset

    def element(tag: int, vr: str, value) -> DataElement:
        return DataElement(tag, vr, value, validation_mode=pydicom.config.IGNORE)

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta[0x00020010] = element(0x00020010, "UI", img.syntax)
    for tag, vr, value in ((0x00280002, "US", img.samples), (0x00280004, "CS", img.photometric),
                           (0x00280010, "US", img.rows), (0x00280011, "US", img.columns),
                           (0x00280100, "US", img.bits_allocated), (0x00280101, "US", img.bits_stored),
                           (0x00280102, "US", img.bits_stored - 1),
                           (0x00280103, "US", img.pixel_representation)):
        ds[tag] = element(tag, vr, value)
    if img.samples > 1:
        ds[0x00280006] = element(0x00280006, "US", img.planar)
    if img.frames > 1:
        ds[0x00280008] = element(0x00280008, "IS", str(img.frames))
    if img.rescale is not None:
        ds[0x00281053] = element(0x00281053, "DS", img.rescale[0])
        ds[0x00281052] = element(0x00281052, "DS", img.rescale[1])
    if img.window is not None:
        ds[0x00281050] = element(0x00281050, "DS", img.window[0])
        ds[0x00281051] = element(0x00281051, "DS", img.window[1])
    if img.voi_function is not None:
        ds[0x00281056] = element(0x00281056, "CS", img.voi_function)
    for tag, lut in ((0x00283000, img.modality_lut), (0x00283010, img.voi_lut)):
        if lut is not None:
            item = Dataset()
            item[0x00283002] = element(0x00283002, "SS" if lut[0][1] < 0 else "US", lut[0])
            item[0x00283006] = element(0x00283006, "OW", lut[1])
            ds[tag] = element(tag, "SQ", [item])
    vr = "OB" if pydicom.uid.UID(img.syntax).is_encapsulated or img.bits_allocated <= 8 else "OW"
    ds[_PIXEL_DATA] = element(_PIXEL_DATA, vr, img.pixel_data)
    return ds


def _decode_dicom(data: bytes, label: str) -> np.ndarray:
    """Gray (2-D) or RGB ``uint8`` pixels of the first frame."""
    ds, syntax = _read_dicom(data, label, pixels=True)
    img = _dicom_image(ds, syntax, label, pixels=True)
    del ds
    decoder = _decoder(img, label)
    if decoder.is_encapsulated:
        _check_first_frame(img, label)
    clean = _decoding_dataset(img)
    from pydicom.pixels import apply_modality_lut, apply_voi_lut, pixel_array

    try:
        arr = pixel_array(clean, index=0, view_only=True)
        if img.photometric.startswith("MONOCHROME"):
            windowed = img.window is not None or img.voi_lut is not None

            def transform(block: np.ndarray) -> np.ndarray:
                out = apply_modality_lut(block, clean)
                return apply_voi_lut(out, clean) if windowed else out

            gray = _stretch(arr, transform)
            if img.photometric == "MONOCHROME1":
                np.subtract(255, gray, out=gray)
            return gray
    except ImageDecodeError:
        raise
    except MemoryError:
        raise ImageDecodeError(label, "not enough memory to decode it") from None
    except Exception:  # decoders raise many types; their messages are not ours to show
        raise ImageDecodeError(label, f"invalid DICOM (the pixel data in {_syntax_name(syntax)} "
                                      f"cannot be decoded)") from None
    if arr.dtype != np.uint8:
        arr = _stretch(arr)
    elif not arr.flags.writeable:               # a view of the file's bytes (view_only above)
        arr = arr.copy()
    return _gray_or_rgb(arr)


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


def prepare_image(src: ImageSource, size: int, *, name: str | None = None) -> np.ndarray:
    """The model's view of an image: decoded, normalised, resized; ``uint8`` (size, size, 3)."""
    label = _describe(src, name)
    return _to_rgb(_decode(_read_bytes(src, label), label, size))


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
                fmt = "DICOM"
                fh.seek(0)
                return _dicom_header(fh, label)
            fmt = _sniff(head)
            if fmt not in ("PNG", "JPEG"):
                raise _refuse_format(label, fmt)
            while fmt == "JPEG" and not _jpeg_walk(head)[1]:   # EXIF, ICC profiles... before the frame
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
        if fmt in ("", "DICOM"):                # opening or reading the file
            raise ImageDecodeError(label, exc.strerror or type(exc).__name__) from None
        raise ImageDecodeError(label, _pil_reason(exc, fmt)) from None
    except Exception as exc:  # Pillow raises SyntaxError, ValueError, ...
        raise ImageDecodeError(label, _pil_reason(exc, fmt)) from None


def _dicom_header(fh: BinaryIO, label: str) -> dict:
    ds, _ = _read_dicom(fh, label, pixels=False)
    req = functools.partial(_required, label=label)
    rows = req(_int(ds, _TAGS["Rows"], 1, 65535), keyword="Rows")
    columns = req(_int(ds, _TAGS["Columns"], 1, 65535), keyword="Columns")
    frames = req(_frames(ds), keyword="NumberOfFrames")
    samples = _int(ds, _TAGS["SamplesPerPixel"], 1, 4) if _TAGS["SamplesPerPixel"] in ds else 1
    _check_pixels(label, rows * columns * frames * req(samples, keyword="SamplesPerPixel"))
    photometric = "MONOCHROME2"
    if _TAGS["PhotometricInterpretation"] in ds:
        photometric = req(_code(ds, _TAGS["PhotometricInterpretation"], _PHOTOMETRIC_TERMS),
                          keyword="PhotometricInterpretation")
    bits = req(_int(ds, _TAGS["BitsStored"], 1, 64), keyword="BitsStored") if _TAGS["BitsStored"] in ds else 8
    return {"width": columns, "height": rows, "mode": f"{photometric} {bits}-bit", "format": "DICOM"}


# DICOM attributes that describe the image, never the patient, the institution or the operator.
# Manufacturer and ManufacturerModelName are not among them: they are free text (LO, any
# words), so no pattern can tell "Philips Medical Systems" from "General Hospital" or a
# name run on into them by a corrupt length, and the model does not need them.
SAFE_DICOM_TAGS = ("Modality", "BodyPartExamined", "ViewPosition", "PhotometricInterpretation", "Rows", "Columns",
                   "BitsStored", "PixelSpacing")


def dicom_summary(src: ImageSource, *, name: str | None = None) -> dict:
    """Non-identifying facts about a DICOM file (only :data:`SAFE_DICOM_TAGS`); {} for other formats.

    Names, ids, dates, institutions and free-text fields are never read (pydicom skips them
    unread), and a fact is shown only when its value parses as its VR and matches a strict
    pattern (Modality: 2-16 capital letters; BodyPartExamined, ViewPosition: a DICOM code
    string; PhotometricInterpretation: a defined term; Rows, Columns, BitsStored: sane
    integers; PixelSpacing: two positive finite numbers), so a value that a corrupt length
    ran on over other elements is left out, never shown raw. An unreadable file raises
    :class:`ImageDecodeError`.
    """
    label = _describe(src, name)
    data = _read_bytes(src, label)
    if not is_dicom(data):
        return {}
    ds, _ = _read_dicom(data, label, pixels=False)
    try:
        return _summary(ds)
    except Exception:  # the readers above return None for a bad value; this is a safety net
        raise ImageDecodeError(label, "invalid DICOM (unreadable element values)") from None


def _summary(ds) -> dict:
    spacing = _decimals(ds, _TAGS["PixelSpacing"])
    values = {
        "Modality": _code(ds, _TAGS["Modality"], _MODALITY),
        "BodyPartExamined": _code(ds, _TAGS["BodyPartExamined"], _CS),
        "ViewPosition": _code(ds, _TAGS["ViewPosition"], _CS),
        "PhotometricInterpretation": _code(ds, _TAGS["PhotometricInterpretation"], _PHOTOMETRIC_TERMS),
        "Rows": _int(ds, _TAGS["Rows"], 1, 65535),
        "Columns": _int(ds, _TAGS["Columns"], 1, 65535),
        "BitsStored": _int(ds, _TAGS["BitsStored"], 1, 64),
        "PixelSpacing": spacing if spacing and len(spacing) == 2 and min(spacing) > 0 else None,
    }
    return {tag: values[tag] for tag in SAFE_DICOM_TAGS if values[tag] is not None}
