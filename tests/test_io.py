"""Tests for cxrcore.data.io: decoding, pixel normalisation, headers and DICOM sniffing."""
from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxrcore.errors import DataError, ImageDecodeError
from cxrcore.data.io import decode_image, is_dicom, prepare_image, read_header

from conftest import write_image


# ---------------------------------------------------------------- helpers

def save(img: Image.Image, path: Path, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kwargs)
    return path


def write_dicom(path: Path, pixels: np.ndarray | None, *, photometric: str = "MONOCHROME2",
                bits_stored: int = 12, slope: float | None = None, intercept: float | None = None,
                window: tuple[float, float] | None = None, rows_cols: tuple[int, int] | None = None) -> Path:
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
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        if data[pos + 4:pos + 8] == chunk:
            return pos
        pos += 12 + length
    raise AssertionError(f"no {chunk!r} chunk")


def random_gray(size: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)


# ---------------------------------------------------------------- is_dicom

@pytest.mark.parametrize("data, expected", [
    (b"\0" * 128 + b"DICM" + b"rest", True),
    (b"\0" * 128 + b"DICM", True),
    (b"\0" * 128 + b"DIC", False),            # too short to hold the magic
    (b"", False),
    (b"DICM" + b"\0" * 200, False),           # magic at the wrong offset
    (b"\0" * 128 + b"dicm" + b"\0" * 10, False),
    (b"\x89PNG\r\n\x1a\n" + b"\0" * 200, False),
])
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
    assert out.shape == (10, 14, 3)            # height, width kept (not square)
    np.testing.assert_array_equal(out, rgb)


def test_rgba_png_drops_alpha_without_touching_rgb(tmp_path):
    rgba = np.random.default_rng(3).integers(0, 256, (8, 8, 4), dtype=np.uint8)
    rgba[0, 0, 3] = 0                          # fully transparent pixel keeps its colour too
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
    pixels = np.array([[1000, 2000, 3000],
                       [1500, 2500, 1000]], dtype=np.uint16)
    img = Image.fromarray(pixels)
    assert img.mode == "I;16"
    path = save(img, tmp_path / "deep.png")
    out = decode_image(path)
    assert out.dtype == np.uint8 and out.shape == (2, 3, 3)
    gray = out[:, :, 0]
    # (v - 1000) / 2000 * 255, rounded
    expected = (pixels.astype(float) - 1000) / 2000 * 255      # 0, 127.5, 255 / 63.75, 191.25, 0
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

DICOM_PIXELS = np.array([[0, 1024, 2048],
                         [3072, 4095, 512]], dtype=np.uint16)


def test_dicom_monochrome2_is_stretched_bright_stays_bright(tmp_path):
    path = write_dicom(tmp_path / "mono2.dcm", DICOM_PIXELS, slope=2.0, intercept=-1024.0)
    out = decode_image(path)
    assert out.dtype == np.uint8 and out.shape == (2, 3, 3)
    gray = out[:, :, 0]
    assert gray.min() == 0 and gray.max() == 255
    assert gray[0, 0] == 0                     # darkest stored value
    assert gray[1, 1] == 255                   # brightest stored value
    # a positive-slope rescale then a min..max stretch is linear in the stored value
    assert abs(int(gray[0, 2]) - round(2048 / 4095 * 255)) <= 1
    assert gray[0, 1] < gray[0, 2] < gray[1, 0]
    np.testing.assert_array_equal(out[:, :, 1], gray)
    np.testing.assert_array_equal(out[:, :, 2], gray)


def test_dicom_monochrome1_is_inverted(tmp_path):
    path = write_dicom(tmp_path / "mono1.dcm", DICOM_PIXELS, photometric="MONOCHROME1")
    gray = decode_image(path)[:, :, 0]
    assert gray[1, 1] == 0                     # the maximum stored value becomes black
    assert gray[0, 0] == 255                   # the minimum stored value becomes white
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


def test_dicom_is_recognised_by_content_even_named_png(tmp_path):
    real = write_dicom(tmp_path / "real.dcm", DICOM_PIXELS)
    disguised = tmp_path / "looks_like.png"
    disguised.write_bytes(real.read_bytes())
    np.testing.assert_array_equal(decode_image(disguised), decode_image(real))
    assert read_header(disguised)["mode"] == "MONOCHROME2 12-bit"


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
    assert (out == 77).all()                   # bilinear resize of a flat image stays flat
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

@pytest.mark.parametrize("mode, suffix, expected_mode", [
    ("RGB", ".png", "RGB"),
    ("L", ".png", "L"),
    ("RGBA", ".png", "RGBA"),
    ("L", ".jpg", "L"),
])
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
    path.write_bytes(data[: idat + 8 + 10])    # IHDR intact, pixel data cut short
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
@pytest.mark.parametrize("content", [
    b"",
    b"plain text, not an image\n",
    b"\0" * 128 + b"DICM" + b"\xff" * 20,      # DICOM magic followed by garbage
])
def test_read_header_unreadable_raises_naming_the_path(tmp_path, content):
    path = tmp_path / "broken.png"
    path.write_bytes(content)
    with pytest.raises(ImageDecodeError) as info:
        read_header(path)
    assert str(path) in str(info.value)


def test_dicom_summary_reads_only_non_identifying_fields(tmp_path):
    import pydicom

    from cxrcore.data.io import dicom_summary

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
