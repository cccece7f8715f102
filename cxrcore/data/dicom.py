"""DICOM: reading, validating and summarising DICOM files (decoding: :mod:`.dicom_pixels`; PNG, JPEG:
:mod:`.formats`).

Privacy: DICOM files carry names, ids and institutions, and a corrupt length field can
make any element's value run on over them. :func:`dicom_summary` therefore shows only
values that parse as their VR and match a strict pattern, decoding works from a
dataset holding only validated image elements, and error messages are reasons written
here, never text taken from the file (nor from a decoder's message, which may quote
it). Both libraries that read files log what they read: Pillow logs EXIF tags and PNG
profile names at DEBUG, pydicom logs and warns with invalid values in full. So, once,
on first use (:func:`configured_pydicom`, and at import for Pillow): the ``PIL`` and ``pydicom``
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
import re
import struct
import zlib
from dataclasses import dataclass
from typing import BinaryIO

from ..errors import ImageDecodeError
from .formats import MAX_PIXELS, ImageSource, check_pixels, describe, is_dicom, read_bytes

# ---------------------------------------------------------------- DICOM: reading


@functools.cache
def configured_pydicom():
    """pydicom, imported and configured once (see the module docstring for why)."""
    import pydicom
    import pydicom.config

    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    logging.getLogger("pydicom").setLevel(logging.CRITICAL)  # after import: it sets WARNING
    return pydicom


_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
_IMPLICIT_LE, _EXPLICIT_BE, _DEFLATED = "1.2.840.10008.1.2", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"


def _elements(data: bytes, pos: int, *, implicit: bool, little: bool):
    """(tag, value offset, length) of consecutive data elements from ``pos`` (no nesting)."""
    order = "<" if little else ">"
    while pos + 8 <= len(data):
        group, element = struct.unpack(order + "HH", data[pos : pos + 4])
        if implicit or not b"AA" <= data[pos + 4 : pos + 6] <= b"ZZ":  # as pydicom reads it
            (length,), start = struct.unpack(order + "I", data[pos + 4 : pos + 8]), pos + 8
        elif data[pos + 4 : pos + 6] in _LONG_VRS:
            if pos + 12 > len(data):
                return
            (length,), start = struct.unpack(order + "I", data[pos + 8 : pos + 12]), pos + 12
        else:
            (length,), start = struct.unpack(order + "H", data[pos + 6 : pos + 8]), pos + 8
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
            syntax = data[start : start + length].rstrip(b"\0 ")
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
    head = _inflated_head(data, start, label) if syntax == _DEFLATED else data[start : start + 65536]
    # pydicom reads a data set as implicit or explicit VR by its first element, whatever the
    # syntax says (implicit unless that element's VR is two capitals); so does this walk
    implicit = len(head) < 6 or not (0x40 < head[4] < 0x5B and 0x40 < head[5] < 0x5B)
    for tag, value_at, length in _elements(head, 0, implicit=implicit, little=syntax != _EXPLICIT_BE):
        if tag > 0x00080005:
            break
        if tag == 0x00080005 and not _defined_charset(head[value_at : value_at + length]):
            if syntax == _DEFLATED:
                raise ImageDecodeError(label, "invalid DICOM (bad Specific Character Set)")
            return start + value_at, length
    return None


def _inflated_head(data: bytes, start: int, label: str) -> bytes:
    """The first 64 kB of a deflated data set, after checking the whole inflates to a sane size."""
    limit = 4 * MAX_PIXELS + (1 << 24)  # 32-bit samples at the pixel limit, plus the header
    inflater, total, head = zlib.decompressobj(-zlib.MAX_WBITS), 0, b""
    try:
        for at in range(start, len(data), 1 << 20):
            chunk = data[at : at + (1 << 20)]
            while chunk:
                out = inflater.decompress(chunk, 1 << 24)
                total += len(out)
                if len(head) < 65536:
                    head += out[: 65536 - len(head)]
                if total > limit:
                    raise ImageDecodeError(label, "invalid DICOM (the deflated data set inflates to too much data)")
                chunk = inflater.unconsumed_tail
    except zlib.error:
        raise ImageDecodeError(label, "invalid DICOM (corrupt deflated data set)") from None
    return head


#: Elements read from a file; every other element is skipped unread (names and ids among them).
_TAGS = {
    "SpecificCharacterSet": 0x00080005,
    "Modality": 0x00080060,
    "BodyPartExamined": 0x00180015,
    "ViewPosition": 0x00185101,
    "SamplesPerPixel": 0x00280002,
    "PhotometricInterpretation": 0x00280004,
    "PlanarConfiguration": 0x00280006,
    "NumberOfFrames": 0x00280008,
    "Rows": 0x00280010,
    "Columns": 0x00280011,
    "PixelSpacing": 0x00280030,
    "BitsAllocated": 0x00280100,
    "BitsStored": 0x00280101,
    "PixelRepresentation": 0x00280103,
    "WindowCenter": 0x00281050,
    "WindowWidth": 0x00281051,
    "RescaleIntercept": 0x00281052,
    "RescaleSlope": 0x00281053,
    "VOILUTFunction": 0x00281056,
    "ModalityLUTSequence": 0x00283000,
    "VOILUTSequence": 0x00283010,
}
PIXEL_DATA = 0x7FE00010


def read_dicom(src: bytes | BinaryIO, label: str, *, pixels: bool):
    """(dataset of the :data:`_TAGS` elements, raw and unconverted; transfer syntax).

    ``src`` is the file's bytes, or the file opened at its start (then only what is needed
    is read: the elements up to the pixel data, or all of a deflated or blanked file).
    """
    pydicom = configured_pydicom()
    data = src if isinstance(src, bytes) else src.read(1 << 16)
    syntax, start = _file_meta(data, label)
    if not isinstance(src, bytes) and (syntax == _DEFLATED or len(data) < start + (1 << 16)):
        data += src.read(-1 if syntax == _DEFLATED else start + (1 << 16) - len(data))
    blank = _charset_to_blank(data, start, syntax, label)
    if blank is not None:
        at, length = blank
        data += b"" if isinstance(src, bytes) else src.read()
        data = data[:at] + b" " * min(length, len(data) - at) + data[at + length :]
    if isinstance(src, bytes) or blank is not None or syntax == _DEFLATED:
        fp = _io.BytesIO(data)
    else:
        fp = src
        fp.seek(0)
    tags = list(_TAGS.values()) + ([PIXEL_DATA] if pixels else [])
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
_PHOTOMETRIC_TERMS = (
    "MONOCHROME1",
    "MONOCHROME2",
    "PALETTE COLOR",
    "RGB",
    "YBR_FULL",
    "YBR_FULL_422",
    "YBR_PARTIAL_422",
    "YBR_PARTIAL_420",
    "YBR_ICT",
    "YBR_RCT",
    "HSV",
    "ARGB",
    "CMYK",
)
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
class DicomImage:
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
        first -= 65536  # "US or SS": signed when the pixels are
    if bits != 8 and not 10 <= bits <= 16 or len(raw[0]) < 2 * entries:
        raise ImageDecodeError(label, f"invalid DICOM (bad {keyword})")
    return [entries % 65536, first, bits], raw[0]


def dicom_image(ds, syntax: str, label: str, *, pixels: bool) -> DicomImage:
    """Validates what decoding needs, and the pixel limit, from the header alone."""
    req = functools.partial(_required, label=label)
    rows = req(_int(ds, _TAGS["Rows"], 1, 65535), keyword="Rows")
    columns = req(_int(ds, _TAGS["Columns"], 1, 65535), keyword="Columns")
    frames = req(_frames(ds), keyword="NumberOfFrames")
    samples = req(_int(ds, _TAGS["SamplesPerPixel"], 1, 4), keyword="SamplesPerPixel")
    check_pixels(label, rows * columns * frames * samples)
    photometric = req(
        _code(ds, _TAGS["PhotometricInterpretation"], _PHOTOMETRIC_TERMS), keyword="PhotometricInterpretation"
    )
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
        raw = _raw(ds, PIXEL_DATA, ("OB", "OW"))
        pixel_data = req(raw[0] if raw and raw[0] else None, keyword="Pixel Data")
    return DicomImage(
        syntax=syntax,
        rows=rows,
        columns=columns,
        frames=frames,
        samples=samples,
        photometric=photometric,
        bits_allocated=bits_allocated,
        bits_stored=bits_stored,
        pixel_representation=pixel_representation,
        planar=planar,
        rescale=(slope[0], intercept[0]) if slope and intercept else None,
        window=(center[0], width[0]) if center and width else None,
        voi_function=voi_function,
        modality_lut=_lut(ds, "ModalityLUTSequence", pixel_representation, label),
        voi_lut=_lut(ds, "VOILUTSequence", pixel_representation, label),
        pixel_data=pixel_data,
    )


def dicom_header(fh: BinaryIO, label: str) -> dict:
    """Width, height, mode and format of a DICOM file from its elements, pixels not read."""
    ds, _ = read_dicom(fh, label, pixels=False)
    req = functools.partial(_required, label=label)
    rows = req(_int(ds, _TAGS["Rows"], 1, 65535), keyword="Rows")
    columns = req(_int(ds, _TAGS["Columns"], 1, 65535), keyword="Columns")
    frames = req(_frames(ds), keyword="NumberOfFrames")
    samples = _int(ds, _TAGS["SamplesPerPixel"], 1, 4) if _TAGS["SamplesPerPixel"] in ds else 1
    check_pixels(label, rows * columns * frames * req(samples, keyword="SamplesPerPixel"))
    photometric = "MONOCHROME2"
    if _TAGS["PhotometricInterpretation"] in ds:
        photometric = req(
            _code(ds, _TAGS["PhotometricInterpretation"], _PHOTOMETRIC_TERMS), keyword="PhotometricInterpretation"
        )
    bits = req(_int(ds, _TAGS["BitsStored"], 1, 64), keyword="BitsStored") if _TAGS["BitsStored"] in ds else 8
    return {"width": columns, "height": rows, "mode": f"{photometric} {bits}-bit", "format": "DICOM"}


# DICOM attributes that describe the image, never the patient, the institution or the operator.
# Manufacturer and ManufacturerModelName are not among them: they are free text (LO, any
# words), so no pattern can tell "Philips Medical Systems" from "General Hospital" or a
# name run on into them by a corrupt length, and the model does not need them.
SAFE_DICOM_TAGS = (
    "Modality",
    "BodyPartExamined",
    "ViewPosition",
    "PhotometricInterpretation",
    "Rows",
    "Columns",
    "BitsStored",
    "PixelSpacing",
)


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
    label = describe(src, name)
    data = read_bytes(src, label)
    if not is_dicom(data):
        return {}
    ds, _ = read_dicom(data, label, pixels=False)
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
