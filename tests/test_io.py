"""Tests for cxrcore.data.io and cxrcore.data.dicom: decoding, pixel normalisation, headers and DICOM sniffing."""

from __future__ import annotations

import io
import logging
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import write_image
from cxrcore.data.dicom import dicom_summary
from cxrcore.data.io import (
    PixelRules,
    crop_border,
    decode_image,
    equalize,
    is_dicom,
    prepare_image,
    read_header,
)
from cxrcore.data.pixels import resize
from cxrcore.errors import DataError, ImageDecodeError

# ---------------------------------------------------------------- helpers


def save(img: Image.Image, path: Path, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kwargs)
    return path


def write_dicom(
    path: Path,
    pixels: np.ndarray | None,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
    slope: float | None = None,
    intercept: float | None = None,
    window: tuple[float, float] | None = None,
    rows_cols: tuple[int, int] | None = None,
) -> Path:
    """A minimal DICOM Part 10 file (16-bit allocated); ``pixels=None`` writes no Pixel Data."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    rows, cols = pixels.shape if pixels is not None else rows_cols
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    if slope is not None:
        ds.RescaleSlope = slope
    if intercept is not None:
        ds.RescaleIntercept = intercept
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if pixels is not None:
        ds.PixelData = pixels.astype("<u2").tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def png_chunk_offset(data: bytes, chunk: bytes) -> int:
    """Byte offset of the first ``chunk`` (e.g. b"IDAT") in a PNG, at its length field."""
    pos = 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        if data[pos + 4 : pos + 8] == chunk:
            return pos
        pos += 12 + length
    raise AssertionError(f"no {chunk!r} chunk")


def random_gray(size: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)


# ---------------------------------------------------------------- is_dicom


@pytest.mark.parametrize(
    "data, expected",
    [
        (b"\0" * 128 + b"DICM" + b"rest", True),
        (b"\0" * 128 + b"DICM", True),
        (b"\0" * 128 + b"DIC", False),  # too short to hold the magic
        (b"", False),
        (b"DICM" + b"\0" * 200, False),  # magic at the wrong offset
        (b"\0" * 128 + b"dicm" + b"\0" * 10, False),
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 200, False),
    ],
)
def test_is_dicom_checks_magic_at_offset_128(data, expected):
    assert is_dicom(data) is expected


# ---------------------------------------------------------------- 8-bit formats


def test_gray_png_keeps_values_in_three_equal_channels(tmp_path):
    pixels = random_gray(12, seed=1)
    path = save(Image.fromarray(pixels), tmp_path / "g.png")
    out = decode_image(path)
    assert out.dtype == np.uint8
    assert out.shape == (12, 12, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], pixels)


def test_rgb_png_keeps_channels(tmp_path):
    rgb = np.random.default_rng(2).integers(0, 256, (10, 14, 3), dtype=np.uint8)
    path = save(Image.fromarray(rgb), tmp_path / "c.png")
    out = decode_image(path)
    assert out.shape == (10, 14, 3)  # height, width kept (not square)
    np.testing.assert_array_equal(out, rgb)


def test_rgba_png_drops_alpha_without_touching_rgb(tmp_path):
    rgba = np.random.default_rng(3).integers(0, 256, (8, 8, 4), dtype=np.uint8)
    rgba[0, 0, 3] = 0  # fully transparent pixel keeps its colour too
    path = save(Image.fromarray(rgba, "RGBA"), tmp_path / "a.png")
    out = decode_image(path)
    assert out.shape == (8, 8, 3)
    np.testing.assert_array_equal(out, rgba[:, :, :3])


def test_palette_png_decodes_to_palette_colours(tmp_path):
    img = Image.new("P", (4, 2))
    img.putpalette([255, 0, 0, 0, 0, 255, 10, 200, 30] + [0] * (256 * 3 - 9))
    img.putdata([0, 1, 2, 0, 1, 1, 2, 2])
    path = save(img, tmp_path / "p.png")
    with Image.open(path) as check:
        assert check.mode == "P"
    out = decode_image(path)
    palette = {0: (255, 0, 0), 1: (0, 0, 255), 2: (10, 200, 30)}
    expected = np.array([[palette[i] for i in row] for row in ([0, 1, 2, 0], [1, 1, 2, 2])], dtype=np.uint8)
    np.testing.assert_array_equal(out, expected)


def test_la_png_decodes_to_gray_rgb_ignoring_alpha(tmp_path):
    gray = random_gray(8, seed=4)
    alpha = np.full((8, 8), 17, dtype=np.uint8)
    img = Image.merge("LA", [Image.fromarray(gray), Image.fromarray(alpha)])
    path = save(img, tmp_path / "la.png")
    out = decode_image(path)
    assert out.shape == (8, 8, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], gray)


@pytest.mark.parametrize("mode, colour", [("L", (100, 100, 100)), ("RGB", (200, 90, 40))])
def test_flat_jpeg_decodes_to_about_the_same_colour(tmp_path, mode, colour):
    img = Image.new(mode, (16, 16), colour[0] if mode == "L" else colour)
    path = save(img, tmp_path / "flat.jpg", quality=95)
    out = decode_image(path)
    assert out.shape == (16, 16, 3)
    diff = np.abs(out.astype(int) - np.array(colour)[None, None, :])
    assert diff.max() <= 3


# ---------------------------------------------------------------- high bit depth


def test_16bit_png_is_stretched_linearly_min_to_0_max_to_255(tmp_path):
    pixels = np.array([[1000, 2000, 3000], [1500, 2500, 1000]], dtype=np.uint16)
    img = Image.fromarray(pixels)
    assert img.mode == "I;16"
    path = save(img, tmp_path / "deep.png")
    out = decode_image(path)
    assert out.dtype == np.uint8 and out.shape == (2, 3, 3)
    gray = out[:, :, 0]
    # (v - 1000) / 2000 * 255, rounded
    expected = (pixels.astype(float) - 1000) / 2000 * 255  # 0, 127.5, 255 / 63.75, 191.25, 0
    assert gray[0, 0] == 0 and gray[1, 2] == 0 and gray[0, 2] == 255
    assert np.abs(gray.astype(float) - expected).max() <= 1
    assert gray[1, 0] == 64 and gray[1, 1] == 191
    np.testing.assert_array_equal(out[:, :, 1], gray)
    np.testing.assert_array_equal(out[:, :, 2], gray)


def test_flat_16bit_png_does_not_crash(tmp_path):
    path = save(Image.fromarray(np.full((4, 4), 1234, dtype=np.uint16)), tmp_path / "flat16.png")
    out = decode_image(path)
    assert out.shape == (4, 4, 3) and out.dtype == np.uint8
    assert len(np.unique(out)) == 1


# ---------------------------------------------------------------- DICOM

DICOM_PIXELS = np.array([[0, 1024, 2048], [3072, 4095, 512]], dtype=np.uint16)


def test_dicom_monochrome2_is_stretched_bright_stays_bright(tmp_path):
    path = write_dicom(tmp_path / "mono2.dcm", DICOM_PIXELS, slope=2.0, intercept=-1024.0)
    out = decode_image(path)
    assert out.dtype == np.uint8 and out.shape == (2, 3, 3)
    gray = out[:, :, 0]
    assert gray.min() == 0 and gray.max() == 255
    assert gray[0, 0] == 0  # darkest stored value
    assert gray[1, 1] == 255  # brightest stored value
    # a positive-slope rescale then a min..max stretch is linear in the stored value
    assert abs(int(gray[0, 2]) - round(2048 / 4095 * 255)) <= 1
    assert gray[0, 1] < gray[0, 2] < gray[1, 0]
    np.testing.assert_array_equal(out[:, :, 1], gray)
    np.testing.assert_array_equal(out[:, :, 2], gray)


def test_dicom_monochrome1_is_inverted(tmp_path):
    path = write_dicom(tmp_path / "mono1.dcm", DICOM_PIXELS, photometric="MONOCHROME1")
    gray = decode_image(path)[:, :, 0]
    assert gray[1, 1] == 0  # the maximum stored value becomes black
    assert gray[0, 0] == 255  # the minimum stored value becomes white
    assert gray[0, 1] > gray[0, 2] > gray[1, 0]


def test_dicom_window_is_applied_in_rescaled_units(tmp_path):
    # stored 1000 is 0 after the intercept of -1000; the window 0 +- 200 maps it to mid-gray.
    # Without the rescale, stored 1000 would be far above the window and come out white.
    pixels = np.array([[0, 1000, 4095]], dtype=np.uint16)
    path = write_dicom(tmp_path / "win.dcm", pixels, slope=1.0, intercept=-1000.0, window=(0, 400))
    gray = decode_image(path)[:, :, 0]
    assert gray[0, 0] == 0
    assert gray[0, 2] == 255
    assert abs(int(gray[0, 1]) - 128) <= 2


@pytest.mark.parametrize("sequence", ["VOILUTSequence", "ModalityLUTSequence"])
def test_dicom_lut_sequences_are_applied_as_pydicom_applies_them(tmp_path, sequence):
    """CR systems often carry a VOI LUT table instead of a window; the result must be pydicom's
    LUT output stretched min..max (computed here with pydicom on the whole original file)."""
    import pydicom
    from pydicom.dataset import Dataset
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    pixels = np.random.default_rng(14).integers(0, 4096, (9, 11)).astype(np.uint16)
    path = write_dicom(tmp_path / "lut.dcm", pixels)
    ds = pydicom.dcmread(path)
    item = Dataset()
    item.LUTDescriptor = [2048, 1000, 16]  # entries, first value mapped, bits
    item.LUTData = [int(v) for v in (np.sqrt(np.arange(2048)) * 1000).astype(np.uint16)]
    item["LUTData"].VR = "US"
    setattr(ds, sequence, [item])
    ds.save_as(path, enforce_file_format=True)
    ds = pydicom.dcmread(path)
    values = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds).astype(float)
    expected = np.rint((values - values.min()) * (255.0 / (values.max() - values.min())))
    np.testing.assert_array_equal(decode_image(path)[:, :, 0], expected)
    assert len(np.unique(expected)) > 10  # the LUT did not flatten it


def test_dicom_is_recognised_by_content_even_named_png(tmp_path):
    real = write_dicom(tmp_path / "real.dcm", DICOM_PIXELS)
    disguised = tmp_path / "looks_like.png"
    disguised.write_bytes(real.read_bytes())
    np.testing.assert_array_equal(decode_image(disguised), decode_image(real))
    assert read_header(disguised)["mode"] == "MONOCHROME2 12-bit"


def test_rgb_dicom_keeps_its_8bit_values(tmp_path):
    import pydicom

    rgb = np.random.default_rng(13).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    path = write_dicom(tmp_path / "rgb.dcm", None, rows_cols=(5, 7))
    ds = pydicom.dcmread(path)
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = rgb.tobytes()
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    out = decode_image(path)
    np.testing.assert_array_equal(out, rgb)
    out[0, 0] = 0  # an array of its own, not a view of the file
    assert read_header(path)["mode"] == "RGB 8-bit"


def test_dicom_from_bytes_equals_dicom_from_path(tmp_path):
    path = write_dicom(tmp_path / "x.dcm", DICOM_PIXELS, photometric="MONOCHROME1")
    from_bytes = decode_image(path.read_bytes(), name="upload")
    np.testing.assert_array_equal(from_bytes, decode_image(path))
    assert from_bytes[1, 1, 0] == 0


# ---------------------------------------------------------------- path vs bytes, prepare_image


@pytest.mark.parametrize("suffix, mode", [(".png", "L"), (".png", "RGB"), (".jpg", "L"), (".jpeg", "RGB")])
def test_path_and_bytes_give_identical_arrays(tmp_path, suffix, mode):
    path = write_image(tmp_path / f"img{suffix}", size=16, mode=mode, seed=5)
    from_path = decode_image(path)
    from_bytes = decode_image(path.read_bytes())
    np.testing.assert_array_equal(from_path, from_bytes)
    np.testing.assert_array_equal(prepare_image(path, 8), prepare_image(path.read_bytes(), 8))


@pytest.mark.parametrize("size", [8, 16, 32])
def test_prepare_image_returns_uint8_square_rgb(tmp_path, size):
    rgb = np.random.default_rng(6).integers(0, 256, (10, 20, 3), dtype=np.uint8)
    path = save(Image.fromarray(rgb), tmp_path / "wide.png")
    out = prepare_image(path, size)
    assert out.dtype == np.uint8
    assert out.shape == (size, size, 3)


def test_prepare_image_keeps_flat_value_and_same_size_unchanged(tmp_path):
    flat = write_image(tmp_path / "flat.png", size=12, value=77)
    out = prepare_image(flat, 24)
    assert out.shape == (24, 24, 3)
    assert (out == 77).all()  # bilinear resize of a flat image stays flat
    pixels = random_gray(16, seed=7)
    same = save(Image.fromarray(pixels), tmp_path / "same.png")
    np.testing.assert_array_equal(prepare_image(same, 16)[:, :, 0], pixels)


def test_prepare_image_dicom(tmp_path):
    path = write_dicom(tmp_path / "p.dcm", DICOM_PIXELS)
    out = prepare_image(path, 8)
    assert out.dtype == np.uint8 and out.shape == (8, 8, 3)


# ---------------------------------------------------------------- invalid inputs


def _png_bytes(size: int = 32) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(random_gray(size, seed=8)).save(buf, "PNG")
    return buf.getvalue()


INVALID = {
    "empty": lambda tmp: b"",
    "random-bytes": lambda tmp: np.random.default_rng(9).integers(0, 256, 300, dtype=np.uint8).tobytes(),
    "text-named-png": lambda tmp: b"this is not an image, just some text\n" * 4,
    "truncated-png": lambda tmp: _png_bytes()[: len(_png_bytes()) // 2],
    "dicom-without-pixels": lambda tmp: write_dicom(tmp / "nopix.dcm", None, rows_cols=(4, 4)).read_bytes(),
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_invalid_file_raises_decode_error_naming_the_path(tmp_path, case):
    path = tmp_path / f"bad_{case}.png"
    path.write_bytes(INVALID[case](tmp_path))
    with pytest.raises(ImageDecodeError) as info:
        decode_image(path)
    assert str(path) in str(info.value)
    assert info.value.source == str(path)
    assert isinstance(info.value, DataError)
    with pytest.raises(ImageDecodeError):
        prepare_image(path, 8)


@pytest.mark.parametrize("case", sorted(INVALID))
def test_invalid_bytes_raise_decode_error_naming_the_upload(tmp_path, case):
    data = INVALID[case](tmp_path)
    with pytest.raises(ImageDecodeError) as info:
        decode_image(data, name=f"upload-{case}.png")
    assert f"upload-{case}.png" in str(info.value)


def test_empty_file_reason_says_empty(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(ImageDecodeError, match="empty"):
        decode_image(path)


def test_nonexistent_path_raises_decode_error_naming_it(tmp_path):
    path = tmp_path / "missing" / "nothing.png"
    with pytest.raises(ImageDecodeError) as info:
        decode_image(path)
    assert str(path) in str(info.value)
    with pytest.raises(ImageDecodeError) as info:
        read_header(path)
    assert str(path) in str(info.value)


# ---------------------------------------------------------------- read_header


@pytest.mark.parametrize(
    "mode, suffix, expected_mode",
    [
        ("RGB", ".png", "RGB"),
        ("L", ".png", "L"),
        ("RGBA", ".png", "RGBA"),
        ("L", ".jpg", "L"),
    ],
)
def test_read_header_png_and_jpeg(tmp_path, mode, suffix, expected_mode):
    img = Image.new(mode, (20, 10))
    path = save(img, tmp_path / f"h{suffix}")
    header = read_header(path)
    assert (header["width"], header["height"], header["mode"]) == (20, 10, expected_mode)


def test_read_header_16bit_png(tmp_path):
    path = save(Image.fromarray(np.zeros((5, 7), dtype=np.uint16)), tmp_path / "h16.png")
    header = read_header(path)
    assert (header["width"], header["height"]) == (7, 5)
    assert header["mode"].startswith("I")


def test_read_header_dicom(tmp_path):
    pixels = np.zeros((6, 9), dtype=np.uint16)
    path = write_dicom(tmp_path / "h.dcm", pixels, photometric="MONOCHROME1", bits_stored=12)
    header = read_header(path)
    assert (header["width"], header["height"]) == (9, 6)
    assert header["mode"] == "MONOCHROME1 12-bit"
    assert header["format"] == "DICOM"


def test_read_header_does_not_decode_png_pixels(tmp_path):
    data = _png_bytes(32)
    idat = png_chunk_offset(data, b"IDAT")
    path = tmp_path / "cut.png"
    path.write_bytes(data[: idat + 8 + 10])  # IHDR intact, pixel data cut short
    header = read_header(path)
    assert (header["width"], header["height"], header["mode"]) == (32, 32, "L")
    with pytest.raises(ImageDecodeError) as info:
        decode_image(path)
    assert str(path) in str(info.value)


def test_read_header_does_not_decode_dicom_pixels(tmp_path):
    path = write_dicom(tmp_path / "nopix.dcm", None, rows_cols=(11, 13))
    header = read_header(path)
    assert (header["width"], header["height"]) == (13, 11)
    with pytest.raises(ImageDecodeError):
        decode_image(path)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"plain text, not an image\n",
        b"\0" * 128 + b"DICM" + b"\xff" * 20,  # DICOM magic followed by garbage
    ],
)
def test_read_header_unreadable_raises_naming_the_path(tmp_path, content):
    path = tmp_path / "broken.png"
    path.write_bytes(content)
    with pytest.raises(ImageDecodeError) as info:
        read_header(path)
    assert str(path) in str(info.value)


def test_dicom_summary_reads_only_non_identifying_fields(tmp_path):
    import pydicom

    from cxrcore.data.dicom import dicom_summary

    path = write_dicom(tmp_path / "scan.dcm", np.zeros((8, 8), np.uint16))
    ds = pydicom.dcmread(path)
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = "Doe^Jane", "MRN-123456", "19700101"
    ds.InstitutionName, ds.ViewPosition = "General Hospital", "PA"
    ds.save_as(path, enforce_file_format=True)
    facts = dicom_summary(path.read_bytes(), name="scan.dcm")
    assert facts["Modality"] == "CR" and facts["ViewPosition"] == "PA" and facts["Rows"] == 8
    text = repr(facts)
    for secret in ("Doe^Jane", "MRN-123456", "19700101", "General Hospital"):
        assert secret not in text
    assert dicom_summary(png_bytes_of_flat_image()) == {}


def png_bytes_of_flat_image() -> bytes:
    import io as _io

    from PIL import Image

    buf = _io.BytesIO()
    Image.new("L", (4, 4), 7).save(buf, format="PNG")
    return buf.getvalue()


# ---------------------------------------------------------------- identifiers, corrupt DICOM

SECRETS = ("Doe^Jane", "MRN-123456", "General Hospital")


def identify(path: Path, **extra) -> Path:
    """Adds a patient name, id and institution (and ``extra`` attributes) to a DICOM file."""
    import pydicom

    ds = pydicom.dcmread(path)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName, ds.PatientID, ds.InstitutionName = SECRETS
    for key, value in extra.items():
        setattr(ds, key, value)
    ds.save_as(path, enforce_file_format=True)
    return path


_LONG_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}


def length_fields(data: bytes) -> dict[int, tuple[int, int, int]]:
    """``{tag: (offset of the length field, its size in bytes, value length)}`` of every top-level
    element, file meta included, read with pydicom's own element parser."""
    from pydicom.filereader import data_element_generator

    def fields(fp, implicit, stop_when=None):
        out = {}
        for elem in data_element_generator(fp, implicit, True, stop_when=stop_when):
            size = 4 if implicit or elem.VR in _LONG_VRS else 2
            out[int(elem.tag)] = (elem.value_tell - size, size, elem.length)
        return out

    fp = io.BytesIO(data)
    fp.seek(132)
    meta = fields(fp, False, stop_when=lambda tag, vr, length: tag.group != 2)
    offset, size, length = meta[0x00020010]
    syntax = data[offset + size : offset + size + length].rstrip(b"\0 ").decode()
    return {**meta, **fields(fp, syntax == "1.2.840.10008.1.2")}


def set_length(data: bytes, tag: int, length: int) -> bytes:
    offset, size, _ = length_fields(data)[tag]
    return data[:offset] + length.to_bytes(size, "little") + data[offset + size :]


def swallow(data: bytes, tag: int, through: int) -> bytes:
    """``tag``'s length field stretched so that its value runs on through the element ``through``:
    pydicom then reads those elements' bytes as part of ``tag``'s value, and the rest normally."""
    fields = length_fields(data)
    offset, size, _ = fields[tag]
    end_offset, end_size, end_length = fields[through]
    return set_length(data, tag, end_offset + end_size + end_length - (offset + size))


def leaks(text: str) -> list[str]:
    return [s for s in SECRETS if s in text]


class Heard:
    """Everything a call logs (any logger, DEBUG up) or warns (any category), as text."""

    def __init__(self, caplog):
        self.caplog = caplog

    def __enter__(self):
        self.caplog.clear()
        self.caplog.set_level(logging.DEBUG)
        self._warnings = warnings.catch_warnings(record=True)
        self.recorded = self._warnings.__enter__()
        warnings.simplefilter("always")
        return self

    def __exit__(self, *exc):
        self._warnings.__exit__(*exc)
        self.text = "\n".join(
            [self.caplog.text, *(r.getMessage() for r in self.caplog.records), *(str(w.message) for w in self.recorded)]
        )
        return False


def outcome(fn, *args, **kwargs) -> str:
    """The result's repr, or the ImageDecodeError's message (any other exception propagates)."""
    try:
        return repr(fn(*args, **kwargs))
    except ImageDecodeError as exc:
        return str(exc)


@pytest.fixture
def identified(tmp_path) -> bytes:
    pixels = np.arange(64, dtype=np.uint16).reshape(8, 8) * 50
    path = write_dicom(tmp_path / "id.dcm", pixels)
    return identify(
        path, BodyPartExamined="CHEST", ViewPosition="PA", PixelSpacing=[0.14, 0.14], Manufacturer="ACME Imaging"
    ).read_bytes()


def test_corrupt_modality_length_shows_no_identifier(identified, caplog):
    """The Modality length runs on over InstitutionName, PatientName and PatientID: the value that
    comes out is 'CR' plus those elements' bytes, and none of it may be shown, logged or warned."""
    data = swallow(identified, 0x00080060, 0x00100020)
    import pydicom

    raw = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).get_item(0x00080060).value
    assert all(s.encode() in raw for s in SECRETS)  # the corruption does what it says
    with Heard(caplog) as heard:
        facts = dicom_summary(data, name="c.dcm")
        decoded = outcome(decode_image, data, name="c.dcm")
        header = outcome(read_header_of, data)
    assert "Modality" not in facts  # not a valid CS value: dropped, not shown
    assert (facts["Rows"], facts["Columns"], facts["BodyPartExamined"]) == (8, 8, "CHEST")
    assert not leaks(repr(facts) + decoded + header + heard.text)


def read_header_of(data: bytes) -> dict:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "h.dcm"
        path.write_bytes(data)
        return read_header(path)


@pytest.mark.parametrize("tag", [0x00080005, 0x00080060, 0x00080070, 0x00080080, 0x00100010])
def test_every_length_corruption_before_the_identifiers_stays_quiet(identified, caplog, tag):
    """Lengths that run on over the identifiers (Specific Character Set's included: pydicom quotes
    an unknown character set in a warning) or stop short of them: no identifier anywhere."""
    last = 0x00100020
    for data in (swallow(identified, tag, last), set_length(identified, tag, 1), set_length(identified, tag, 0xFFFF)):
        with Heard(caplog) as heard:
            text = outcome(dicom_summary, data, name="x.dcm") + outcome(decode_image, data, name="x.dcm")
            text += outcome(read_header_of, data)
        assert not leaks(text + heard.text), (hex(tag), leaks(text + heard.text))


def with_raw_text(path: Path, keyword: str, text: str) -> bytes:
    """The file's bytes with ``keyword`` holding ``text`` as is, under its own VR (pydicom would
    refuse to write an invalid value: it is written as LO, then the VR bytes are changed)."""
    import pydicom
    from pydicom.datadict import dictionary_VR, tag_for_keyword

    tag = tag_for_keyword(keyword)
    ds = pydicom.dcmread(path)
    if tag in ds:
        del ds[tag]
    ds.add_new(tag, "LO", text)
    ds.save_as(path, enforce_file_format=True)
    data = path.read_bytes()
    offset, size, _ = length_fields(data)[tag]
    assert size == 2 and data[offset - 2 : offset] == b"LO"
    return data[: offset - 2] + dictionary_VR(tag).encode() + data[offset:]


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize(
    "keyword, value, shown",
    [
        ("Modality", "DX", "DX"),
        ("Modality", "dx", None),  # CS is upper case
        ("Modality", "D", None),  # two letters at least
        ("Modality", "CR\\DX", None),  # one value
        ("BodyPartExamined", "CHEST", "CHEST"),
        ("BodyPartExamined", "LEFT HAND_2", "LEFT HAND_2"),
        ("BodyPartExamined", "Chest", None),
        ("BodyPartExamined", "CHEST^X", None),
        ("ViewPosition", "AP", "AP"),
        ("ViewPosition", "A" * 17, None),  # CS is 16 characters at most
        ("PhotometricInterpretation", "MONOCHROME2", "MONOCHROME2"),
        ("PhotometricInterpretation", "MONOCHROME3", None),
        ("PixelSpacing", "0.139\\0.139", [0.139, 0.139]),
        ("PixelSpacing", "1e-1\\.2", [0.1, 0.2]),
        ("PixelSpacing", "0.1", None),  # two values
        ("PixelSpacing", "abc\\0.1", None),  # unparsable (raised ValueError before)
        ("PixelSpacing", "-0.1\\0.1", None),  # not positive
        ("PixelSpacing", "0\\0.1", None),
        ("PixelSpacing", "nan\\0.1", None),
        ("PixelSpacing", "inf\\0.1", None),
        ("Manufacturer", "ACME", None),  # free text: never shown
        ("ManufacturerModelName", "X1", None),
    ],
)
def test_dicom_summary_shows_only_values_that_pass_their_pattern(tmp_path, keyword, value, shown):
    path = write_dicom(tmp_path / "v.dcm", np.zeros((4, 4), np.uint16))
    facts = dicom_summary(with_raw_text(path, keyword, value), name="v.dcm")
    assert facts.get(keyword) == shown
    if keyword != "PhotometricInterpretation":
        assert facts["PhotometricInterpretation"] == "MONOCHROME2" and facts["Rows"] == 4


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_dicom_summary_bad_vr_and_bad_numbers_do_not_raise_raw_errors(tmp_path):
    """A wrong VR (Rows as text) and an unparsable PixelSpacing raised ValueError before."""
    import pydicom

    path = write_dicom(tmp_path / "bad.dcm", np.zeros((4, 4), np.uint16))
    path.write_bytes(with_raw_text(path, "PixelSpacing", "abc\\def"))
    ds = pydicom.dcmread(path)
    del ds[0x00280010]
    ds.add_new(0x00280010, "LO", "Doe^Jane")  # Rows, with the wrong VR and a name
    ds.save_as(path, enforce_file_format=True)
    facts = dicom_summary(path.read_bytes(), name="bad.dcm")
    assert "Rows" not in facts and "PixelSpacing" not in facts and facts["Columns"] == 4
    for fn in (decode_image, read_header):
        with pytest.raises(ImageDecodeError) as info:
            fn(path)
        assert "Rows" in info.value.reason and "Doe^Jane" not in str(info.value)


def test_decode_error_messages_never_quote_the_file(tmp_path):
    """Reasons are written by us: a corrupt PNG text chunk or DICOM value is never echoed."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("PatientName", SECRETS[0])
    buf = io.BytesIO()
    Image.fromarray(random_gray(8)).save(buf, "PNG", pnginfo=info)
    data = buf.getvalue()
    text_at = png_chunk_offset(data, b"tEXt")
    broken = data[: text_at + 8] + data[text_at + 8 : text_at + 30].replace(b"\0", b"x") + b"\xff" * 4
    dicom = write_dicom(tmp_path / "d.dcm", np.zeros((4, 4), np.uint16), slope=1.0)
    dicom = with_raw_text(dicom, "RescaleIntercept", "Doe^Jane")  # float() would quote it
    for data, name in ((broken, "p.png"), (dicom, "d.dcm")):
        with pytest.raises(ImageDecodeError) as err:
            decode_image(data, name=name)
        assert not leaks(str(err.value)) and str(err.value).startswith(f"cannot read image {name}: ")


# ---------------------------------------------------------------- pixel limits


def rle_dicom(path: Path, rows: int, cols: int, frames: list[bytes] | None = None) -> Path:
    """An RLE Lossless 16-bit DICOM whose frames are ``frames`` (default: one constant-row frame,
    a few bytes per row however wide, so a huge image is a small file)."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import RLELossless

    def row(value: int) -> bytes:
        full, rest = divmod(cols, 128)
        out = bytes([129, value]) * full
        return out + (bytes([0, value]) if rest == 1 else bytes([257 - rest, value]) if rest else b"")

    if frames is None:
        high = b"".join(row(0) for _ in range(rows))
        low = b"".join(row(r % 256) for r in range(rows))
        frames = [struct.pack("<16L", 2, 64, 64 + len(high), *([0] * 13)) + high + low]
    write_dicom(path, None, rows_cols=(rows, cols))
    import pydicom

    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = RLELossless
    if len(frames) > 1:
        ds.NumberOfFrames = len(frames)
    ds.PixelData = encapsulate(frames)
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.save_as(path, enforce_file_format=True)
    return path


def test_dicom_over_the_pixel_limit_is_refused_before_decoding(tmp_path):
    """A 3 MB RLE file of 10000 x 10000 cost 2.4 GB and was accepted."""
    from cxrcore.data import formats

    path = rle_dicom(tmp_path / "huge.dcm", 10_000, 10_000)
    assert path.stat().st_size < 4_000_000 and 10_000**2 > formats.MAX_PIXELS
    for fn in (decode_image, read_header):
        with pytest.raises(ImageDecodeError, match="too many pixels"):
            fn(path)


@pytest.mark.parametrize(
    "rows_cols, attrs",
    [
        ((5000, 5000), {"NumberOfFrames": 4}),  # frames count
        ((6000, 6000), {"SamplesPerPixel": 3, "PhotometricInterpretation": "RGB", "PlanarConfiguration": 0}),
    ],
)
def test_dicom_pixel_limit_counts_frames_and_samples(tmp_path, rows_cols, attrs):
    import pydicom

    path = write_dicom(tmp_path / "many.dcm", None, rows_cols=rows_cols)
    ds = pydicom.dcmread(path)
    for key, value in attrs.items():
        setattr(ds, key, value)
    ds.PixelData = b"\0" * 64  # never read: refused on the header
    ds["PixelData"].VR = "OW"
    ds.save_as(path, enforce_file_format=True)
    for fn in (decode_image, read_header):
        with pytest.raises(ImageDecodeError, match="too many pixels"):
            fn(path)


def test_multiframe_dicom_decodes_only_the_first_frame(tmp_path):
    """The second frame is not valid RLE: decoding every frame (as before) fails on it."""
    good = rle_dicom(tmp_path / "one.dcm", 6, 8).read_bytes()
    import pydicom

    first = pydicom.encaps.get_frame(pydicom.dcmread(io.BytesIO(good)).PixelData, 0)
    path = rle_dicom(tmp_path / "two.dcm", 6, 8, frames=[first, b"\x09" + b"\0" * 63])
    out = decode_image(path)
    np.testing.assert_array_equal(out, decode_image(good))
    assert out.shape == (6, 8, 3) and out[5, 0, 0] == 255 and out[0, 0, 0] == 0


def j2k_dicom(path: Path, size: int = 16, siz: tuple[int, int] | None = None) -> Path:
    """A JPEG 2000 Lossless 8-bit DICOM (Pillow's encoder); ``siz`` rewrites the codestream's
    declared width and height (its SIZ marker) while Rows/Columns stay ``size``."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEG2000Lossless

    buf = io.BytesIO()
    Image.fromarray(random_gray(size, seed=11)).save(buf, "JPEG2000", no_jp2=True, irreversible=False)
    stream = buf.getvalue()
    assert stream[:4] == b"\xff\x4f\xff\x51"
    if siz is not None:
        stream = stream[:8] + struct.pack(">II", *siz) + stream[16:]
    write_dicom(path, None, rows_cols=(size, size), bits_stored=8)
    import pydicom

    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = encapsulate([stream])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.save_as(path, enforce_file_format=True)
    return path


def test_jpeg2000_dicom_decodes(tmp_path):
    out = decode_image(j2k_dicom(tmp_path / "j2k.dcm"))
    np.testing.assert_array_equal(out[:, :, 0], random_gray(16, seed=11))  # lossless, 8-bit: kept


@pytest.mark.parametrize("siz", [(10_000, 10_000), (20_000, 20_000), (32, 16)])
def test_jpeg2000_frame_header_is_checked_before_decoding(tmp_path, siz):
    """A codestream declaring more pixels than the limit (Pillow warned, or raised over twice
    the limit) or another size than Rows/Columns is refused without a DecompressionBombWarning."""
    path = j2k_dicom(tmp_path / "bomb.dcm", siz=siz)
    with warnings.catch_warnings(record=True) as recorded:
        warnings.simplefilter("always")
        with pytest.raises(ImageDecodeError) as info:
            decode_image(path)
    assert not [w for w in recorded if issubclass(w.category, Image.DecompressionBombWarning)]
    assert ("too many pixels" if siz[0] > 100 else "frame") in info.value.reason


def test_png_over_the_pixel_limit_is_refused_from_its_header(tmp_path):
    from cxrcore.data import formats

    data = bytearray(_png_bytes(32))
    data[16:24] = struct.pack(">II", 10_000, 10_000)  # IHDR width, height (CRC now wrong)
    with warnings.catch_warnings(record=True) as recorded:
        warnings.simplefilter("always")
        with pytest.raises(ImageDecodeError, match="too many pixels"):
            decode_image(bytes(data), name="big.png")
    assert not recorded and 10_000**2 > formats.MAX_PIXELS


def test_no_warnings_filter_is_touched_per_call(tmp_path, monkeypatch):
    """Streamlit sessions are threads: warnings.catch_warnings/simplefilter are process-wide."""
    paths = [
        write_image(tmp_path / "a.png"),
        write_image(tmp_path / "b.jpg"),
        write_dicom(tmp_path / "c.dcm", DICOM_PIXELS),
        j2k_dicom(tmp_path / "d.dcm"),
    ]
    calls = []
    with monkeypatch.context() as patched:
        for name in ("catch_warnings", "simplefilter", "filterwarnings", "resetwarnings"):
            patched.setattr(warnings, name, lambda *args, _name=name, **kwargs: calls.append(_name))
        for path in paths:
            decode_image(path)
            read_header(path)
            dicom_summary(path.read_bytes())
    assert not calls


def test_16bit_png_costs_no_full_size_float64_copies(tmp_path):
    """About 27 bytes per pixel before (float64 copies); what Python allocates is now a few bytes."""
    import tracemalloc

    pixels = (np.arange(3000 * 2000, dtype=np.uint32) % 4096).astype(np.uint16).reshape(3000, 2000)
    path = save(Image.fromarray(pixels), tmp_path / "deep.png")
    tracemalloc.start()
    try:
        prepare_image(path, 64)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak / pixels.size < 8, f"{peak / pixels.size:.1f} bytes per pixel"


@pytest.mark.parametrize("kind", ["gray", "rgb", "16bit", "dicom", "palette"])
def test_prepare_image_equals_resizing_the_decoded_rgb(tmp_path, kind):
    """prepare_image resizes gray images before copying them to three channels (a third of the
    work): the pixels must be exactly those of resizing the full RGB decode."""
    rng = np.random.default_rng(12)
    if kind == "dicom":
        path = write_dicom(tmp_path / "x.dcm", rng.integers(0, 4096, (37, 53)).astype(np.uint16))
    else:
        img = {
            "gray": lambda: Image.fromarray(rng.integers(0, 256, (37, 53), dtype=np.uint8)),
            "rgb": lambda: Image.fromarray(rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)),
            "16bit": lambda: Image.fromarray(rng.integers(0, 65535, (37, 53)).astype(np.uint16)),
            "palette": lambda: Image.fromarray(rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)).convert("P"),
        }[kind]()
        path = save(img, tmp_path / "x.png")
    for size in (16, 53, 90):
        np.testing.assert_array_equal(prepare_image(path, size), resize(decode_image(path), size))


# ---------------------------------------------------------------- accepted formats


def _other_format(fmt: str, frames: int = 3, **kwargs) -> bytes:
    images = [Image.fromarray(random_gray(16, seed=s)).convert("RGB") for s in range(frames)]
    buf = io.BytesIO()
    if frames > 1:
        kwargs.update(save_all=True, append_images=images[1:])
    images[0].save(buf, fmt, **kwargs)
    return buf.getvalue()


OTHER_FORMATS = {
    "GIF": lambda: _other_format("GIF"),  # animated: the first frame was used
    "TIFF": lambda: _other_format("TIFF"),  # three pages
    "BMP": lambda: _other_format("BMP", frames=1),
    "WEBP": lambda: _other_format("WEBP", lossless=True),
    "PPM": lambda: _other_format("PPM", frames=1),
}


@pytest.mark.parametrize("fmt", sorted(OTHER_FORMATS))
@pytest.mark.parametrize("suffix", [".png", ".gif"])
def test_other_formats_are_refused_by_content_naming_the_format(tmp_path, fmt, suffix):
    if fmt == "WEBP":
        from PIL import features

        if not features.check("webp"):
            pytest.skip("this Pillow has no WebP support")
    path = tmp_path / f"image{suffix}"
    path.write_bytes(OTHER_FORMATS[fmt]())
    for fn in (decode_image, read_header, lambda p: prepare_image(p, 8)):
        with pytest.raises(ImageDecodeError) as info:
            fn(path)
        assert fmt in info.value.reason and "PNG, JPEG and DICOM" in info.value.reason
        assert info.value.source == str(path)


def test_animated_png_is_refused(tmp_path):
    data = _other_format("PNG")
    with Image.open(io.BytesIO(data)) as img:
        assert img.format == "PNG" and img.n_frames == 3
    path = tmp_path / "anim.png"
    path.write_bytes(data)
    for fn in (decode_image, read_header):
        with pytest.raises(ImageDecodeError, match="animated PNG"):
            fn(path)


@pytest.mark.parametrize("content", ["png", "jpeg", "dicom"])
@pytest.mark.parametrize("suffix", ["", ".gif", ".tif", ".dcm"])
def test_accepted_formats_are_recognised_by_content_not_name(tmp_path, content, suffix):
    made = {
        "png": lambda: write_image(tmp_path / "src.png", seed=3),
        "jpeg": lambda: write_image(tmp_path / "src.jpg", seed=3),
        "dicom": lambda: write_dicom(tmp_path / "src.dcm", DICOM_PIXELS),
    }[content]()
    path = tmp_path / f"renamed{suffix}"
    path.write_bytes(made.read_bytes())
    np.testing.assert_array_equal(decode_image(path), decode_image(made))
    assert read_header(path)["format"] == {"png": "PNG", "jpeg": "JPEG", "dicom": "DICOM"}[content]


# ---------------------------------------------------------------- missing decoders


@pytest.mark.parametrize(
    "syntax, needs",
    [
        ("1.2.840.10008.1.2.4.57", "pylibjpeg pylibjpeg-libjpeg"),  # JPEG Lossless
        ("1.2.840.10008.1.2.4.80", "pylibjpeg pylibjpeg-libjpeg"),  # JPEG-LS Lossless
        ("1.2.840.10008.1.2.4.201", "pylibjpeg pylibjpeg-openjpeg"),  # HTJ2K Lossless
    ],
)
def test_missing_decoder_names_the_syntax_and_what_to_install(tmp_path, syntax, needs):
    from pydicom.encaps import encapsulate
    from pydicom.pixels import get_decoder
    from pydicom.uid import UID

    if get_decoder(syntax).is_available:
        pytest.skip(f"a decoder for {UID(syntax).name} is installed here")
    path = write_dicom(tmp_path / "c.dcm", None, rows_cols=(4, 4))
    import pydicom

    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = syntax
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xc3\x00\x0b\x10\x00\x04\x00\x04\x01\x01\x11\x00\xff\xd9"])
    ds["PixelData"].VR, ds["PixelData"].is_undefined_length = "OB", True
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(ImageDecodeError) as info:
        decode_image(path)
    assert UID(syntax).name in info.value.reason and f"pip install {needs}" in info.value.reason


def test_unknown_transfer_syntax_is_named_without_quoting_it(tmp_path):
    path = write_dicom(tmp_path / "u.dcm", DICOM_PIXELS)
    data = path.read_bytes().replace(b"1.2.840.10008.1.2.1\0", b"1.2.840.10008.1.2.9\0")
    with pytest.raises(ImageDecodeError) as info:
        decode_image(data, name="u.dcm")
    assert "transfer syntax" in info.value.reason and "1.2.840.10008.1.2.9" not in info.value.reason


def test_decoding_in_threads_gives_the_same_pixels_and_errors(tmp_path):
    """Streamlit sessions are threads: decoding shares no state between calls."""
    from concurrent.futures import ThreadPoolExecutor

    sources = [
        write_image(tmp_path / "a.png", seed=1),
        write_image(tmp_path / "b.jpg", seed=2),
        save(Image.fromarray(random_gray(20, seed=3).astype(np.uint16) * 200), tmp_path / "c.png"),
        write_dicom(tmp_path / "d.dcm", DICOM_PIXELS, photometric="MONOCHROME1"),
        j2k_dicom(tmp_path / "e.dcm"),
        rle_dicom(tmp_path / "f.dcm", 6, 8),
        OTHER_FORMATS["GIF"](),
        rle_dicom(tmp_path / "g.dcm", 10_000, 10_000).read_bytes(),
    ]

    def result(src) -> bytes | str:
        try:
            return prepare_image(src, 12, name="x").tobytes()
        except ImageDecodeError as exc:
            return exc.reason

    expected = [result(src) for src in sources]
    assert sum(isinstance(r, str) for r in expected) == 2  # the GIF and the huge DICOM
    with ThreadPoolExecutor(max_workers=8) as pool:
        assert list(pool.map(result, sources * 12)) == expected * 12


def deflated(data: bytes, extra: bytes = b"") -> bytes:
    """The same DICOM in Deflated Explicit VR Little Endian (``extra`` appended to the data set)."""
    import zlib

    fields = length_fields(data)
    offset, _, length = fields[0x00020010]
    assert data[offset + 2 : offset + 2 + length] == b"1.2.840.10008.1.2.1\0"
    start = max(o + s + n for tag, (o, s, n) in fields.items() if tag >> 16 == 2)  # end of the meta
    syntax = b"1.2.840.10008.1.2.1.99"
    meta = data[:offset] + len(syntax).to_bytes(2, "little") + syntax + data[offset + 2 + length : start]
    assert meta[132:140] == b"\x02\x00\x00\x00UL\x04\x00"  # the meta group length
    meta = meta[:140] + (len(meta) - 144).to_bytes(4, "little") + meta[144:]
    squeeze = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return meta + squeeze.compress(data[start:] + extra) + squeeze.flush()


def test_deflated_dicom_decodes_and_a_deflate_bomb_is_refused(tmp_path, monkeypatch):
    from cxrcore.data import dicom as dicom_mod

    plain = write_dicom(tmp_path / "p.dcm", DICOM_PIXELS).read_bytes()
    squeezed = deflated(plain)
    np.testing.assert_array_equal(decode_image(squeezed, name="z.dcm"), decode_image(plain))
    assert dicom_summary(squeezed)["Rows"] == 2
    # a private element of 24 MB of zeros, 24 kB deflated: over the inflated-size bound
    monkeypatch.setattr(dicom_mod, "MAX_PIXELS", 1000)
    bomb = deflated(plain, b"\x09\x00\x10\x00OB\0\0" + (24 << 20).to_bytes(4, "little") + bytes(24 << 20))
    assert len(bomb) < 100_000
    for fn in (decode_image, dicom_summary):
        with pytest.raises(ImageDecodeError, match="inflates to too much"):
            fn(bomb, name="bomb.dcm")


def test_read_header_finds_a_jpeg_frame_header_after_large_metadata(tmp_path):
    """Frame headers come after the APP segments (EXIF, ICC profiles of hundreds of kB)."""
    profile = bytes(range(256)) * 1200  # 300 kB: split over five APP2 segments
    path = save(Image.new("L", (30, 20), 9), tmp_path / "icc.jpg", icc_profile=profile)
    assert path.stat().st_size > 300_000
    header = read_header(path)
    assert (header["width"], header["height"], header["format"]) == (30, 20, "JPEG")
    assert decode_image(path).shape == (20, 30, 3)


def test_crop_border_cuts_the_same_share_from_each_side():
    arr = np.arange(20 * 10).reshape(20, 10)
    cropped = crop_border(arr, 0.1)  # 2 rows and 1 column from each side
    assert cropped.shape == (16, 8)
    assert cropped[0, 0] == arr[2, 1] and cropped[-1, -1] == arr[17, 8]
    assert crop_border(arr, 0.0) is arr
    assert crop_border(np.zeros((3, 3)), 0.39).shape == (1, 1)  # never less than one pixel
    assert crop_border(np.zeros((2, 2)), 0.39).shape == (2, 2)


def test_equalize_spreads_a_narrow_histogram_over_the_range():
    gray = np.repeat(np.array([100, 101, 102, 103], dtype=np.uint8), 25).reshape(10, 10)
    out = equalize(gray)
    assert sorted(np.unique(out).tolist()) == [0, 85, 170, 255]  # four equal levels, evenly spaced
    assert out[0, 0] == 0 and out[-1, -1] == 255
    rgb = np.stack([gray, 255 - gray, np.full_like(gray, 7)], axis=2)
    both = equalize(rgb)
    assert np.array_equal(both[..., 0], out) and (both[..., 2] == 7).all()  # a flat channel stays as it is


def test_prepare_image_applies_the_pixel_rules(tmp_path):
    pixels = np.full((100, 100), 120, dtype=np.uint8)
    pixels[:10], pixels[-10:], pixels[:, :10], pixels[:, -10:] = 255, 255, 255, 255  # a white frame, 10 px
    Image.fromarray(pixels).save(tmp_path / "framed.png")
    plain = prepare_image(tmp_path / "framed.png", 50)
    assert plain.max() == 255
    cropped = prepare_image(tmp_path / "framed.png", 50, rules=PixelRules(crop_border=0.1))
    assert cropped.shape == (50, 50, 3) and (cropped == 120).all()  # the frame is gone
    both = prepare_image(tmp_path / "framed.png", 50, rules=PixelRules(crop_border=0.05, equalize=True))
    assert both.max() == 255 and both.min() < 120  # equalised: the gray moves down, the frame stays at the top
    assert np.array_equal(prepare_image(tmp_path / "framed.png", 50, rules=PixelRules()), plain)
