"""DICOM pixels: the transfer syntax's decoder, the size checks that run before it, and the first frame as
``uint8`` gray or RGB. Reading and validating the file's elements are :mod:`cxrcore.data.dicom`'s; as there, no
value from a file reaches a message, a log or a warning."""

from __future__ import annotations

import math
import struct

import numpy as np

from ..errors import ImageDecodeError
from .dicom import PIXEL_DATA, DicomImage, configured_pydicom, dicom_image, read_dicom
from .formats import check_pixels, j2k_size, jpeg_size
from .pixels import gray_or_rgb, stretch


def _rle_decoded_length(segment: bytes, limit: int) -> int:
    """How many bytes a DICOM RLE (PackBits) segment decodes to, counting stops past ``limit``.

    pydicom's decoder has no bound: two bytes can stand for 128, so a small segment can
    decode to 64 times its size whatever Rows and Columns say.
    """
    pos, total, end = 0, 0, len(segment)
    while pos < end and total <= limit:
        head = segment[pos]
        if head < 128:  # a literal run of head + 1 bytes
            total += min(head + 1, end - pos - 1)
            pos += head + 2
        elif head > 128:  # one byte repeated 257 - head times
            total += 257 - head if pos + 1 < end else 0
            pos += 2
        else:
            pos += 1
    return total


# ---------------------------------------------------------------- DICOM: decoding

# What pydicom 3.0.2 needs per compressed transfer syntax, beyond itself and Pillow
# (pydicom.pixels.decoders: pylibjpeg's plugins, pyjpegls, or python-gdcm; Pillow covers
# JPEG baseline, 8-bit JPEG extended and JPEG 2000; RLE and deflate need nothing).
_INSTALL = {
    "1.2.840.10008.1.2.4.50": "pylibjpeg pylibjpeg-libjpeg",  # JPEG Baseline
    "1.2.840.10008.1.2.4.51": "pylibjpeg pylibjpeg-libjpeg",  # JPEG Extended (12-bit)
    "1.2.840.10008.1.2.4.57": "pylibjpeg pylibjpeg-libjpeg",  # JPEG Lossless
    "1.2.840.10008.1.2.4.70": "pylibjpeg pylibjpeg-libjpeg",  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80": "pylibjpeg pylibjpeg-libjpeg",  # JPEG-LS Lossless (or pyjpegls)
    "1.2.840.10008.1.2.4.81": "pylibjpeg pylibjpeg-libjpeg",  # JPEG-LS Near-lossless
    "1.2.840.10008.1.2.4.90": "pylibjpeg pylibjpeg-openjpeg",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91": "pylibjpeg pylibjpeg-openjpeg",  # JPEG 2000
    "1.2.840.10008.1.2.4.201": "pylibjpeg pylibjpeg-openjpeg",  # HTJ2K Lossless
    "1.2.840.10008.1.2.4.202": "pylibjpeg pylibjpeg-openjpeg",  # HTJ2K Lossless RPCL
    "1.2.840.10008.1.2.4.203": "pylibjpeg pylibjpeg-openjpeg",  # HTJ2K
    "1.2.840.10008.1.2.5": "pylibjpeg pylibjpeg-rle",  # RLE Lossless
}
_JPEG_FAMILY = (
    "1.2.840.10008.1.2.4.50",
    "1.2.840.10008.1.2.4.51",
    "1.2.840.10008.1.2.4.57",
    "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.80",
    "1.2.840.10008.1.2.4.81",
)
_J2K_FAMILY = (
    "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.4.91",
    "1.2.840.10008.1.2.4.201",
    "1.2.840.10008.1.2.4.202",
    "1.2.840.10008.1.2.4.203",
)
_RLE = "1.2.840.10008.1.2.5"


def _syntax_name(syntax: str) -> str:
    """The transfer syntax's name from pydicom's dictionary; never the UID string from the file."""
    from pydicom.uid import UID, UID_dictionary

    return f"'{UID(syntax).name}'" if syntax in UID_dictionary else "an unknown transfer syntax"


def _decoder(img: DicomImage, label: str):
    from pydicom.pixels import get_decoder

    try:
        decoder = get_decoder(img.syntax)
    except NotImplementedError:
        raise ImageDecodeError(label, f"DICOM pixel data in {_syntax_name(img.syntax)} is not supported") from None
    pillow_only = decoder.available_plugins == ("pillow",)
    if not decoder.is_available or (pillow_only and img.syntax == "1.2.840.10008.1.2.4.51" and img.bits_stored > 8):
        raise ImageDecodeError(
            label,
            f"no decoder for DICOM pixel data in {_syntax_name(img.syntax)} is "
            f"installed: pip install {_INSTALL.get(img.syntax, 'pylibjpeg')}",
        )
    return decoder


def _check_first_frame(img: DicomImage, label: str) -> None:
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
        limit = expected + expected // 64 + 64  # room for an encoder's padding, not for a bomb
        for start, end in zip(offsets[:count], ends, strict=False):
            if not 64 <= start <= end <= len(frame) or _rle_decoded_length(frame[start:end], limit) > limit:
                raise ImageDecodeError(label, "invalid DICOM (an RLE segment decodes to more than the frame's pixels)")
        return
    size = jpeg_size(frame) if img.syntax in _JPEG_FAMILY else j2k_size(frame)
    if size is None:
        raise ImageDecodeError(label, "invalid DICOM (unreadable compressed frame header)")
    check_pixels(label, math.prod(size))
    if size[:2] != (img.columns, img.rows):
        raise ImageDecodeError(label, "invalid DICOM (the compressed frame's size differs from Rows/Columns)")


def _decoding_dataset(img: DicomImage):
    """A new dataset holding only the validated image elements and the pixel data bytes."""
    pydicom = configured_pydicom()
    from pydicom.dataelem import DataElement
    from pydicom.dataset import Dataset, FileMetaDataset

    def element(tag: int, vr: str, value) -> DataElement:
        return DataElement(tag, vr, value, validation_mode=pydicom.config.IGNORE)

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta[0x00020010] = element(0x00020010, "UI", img.syntax)
    for tag, vr, value in (
        (0x00280002, "US", img.samples),
        (0x00280004, "CS", img.photometric),
        (0x00280010, "US", img.rows),
        (0x00280011, "US", img.columns),
        (0x00280100, "US", img.bits_allocated),
        (0x00280101, "US", img.bits_stored),
        (0x00280102, "US", img.bits_stored - 1),
        (0x00280103, "US", img.pixel_representation),
    ):
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
    ds[PIXEL_DATA] = element(PIXEL_DATA, vr, img.pixel_data)
    return ds


def decode_dicom(data: bytes, label: str) -> np.ndarray:
    """Gray (2-D) or RGB ``uint8`` pixels of the first frame."""
    ds, syntax = read_dicom(data, label, pixels=True)
    img = dicom_image(ds, syntax, label, pixels=True)
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

            gray = stretch(arr, transform)
            if img.photometric == "MONOCHROME1":
                np.subtract(255, gray, out=gray)
            return gray
    except ImageDecodeError:
        raise
    except MemoryError:
        raise ImageDecodeError(label, "not enough memory to decode it") from None
    except Exception:  # decoders raise many types; their messages are not ours to show
        raise ImageDecodeError(
            label, f"invalid DICOM (the pixel data in {_syntax_name(syntax)} cannot be decoded)"
        ) from None
    if arr.dtype != np.uint8:
        arr = stretch(arr)
    elif not arr.flags.writeable:  # a view of the file's bytes (view_only above)
        arr = arr.copy()
    return gray_or_rgb(arr)
