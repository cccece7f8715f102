"""Seeded fuzzing of the upload path with files that carry a patient's name, id and institution.

Valid PNG (8- and 16-bit, identifiers in tEXt/zTXt/iTXt chunks), JPEG (in a comment and in
EXIF) and DICOM files (explicit and implicit VR, multi-frame, RLE, JPEG and JPEG 2000
compressed; identifiers in PatientName, PatientID, InstitutionName) are mutated: bit flips,
truncations, and corrupted length fields (every DICOM element's, file meta included; every
PNG chunk's and JPEG segment's). Each file goes through what the Predict page does with an
upload (pages/shared.py ``analyse`` and pages/predict.py): ``Predictor.prepare``,
``Predictor.result`` of its probabilities, then ``dicom_summary``; and, saved as a file, through
``read_header`` (what the dataset index reads). Every file must either predict or raise a
:class:`CXRError`, and no identifier (nor a six-character piece of one) may appear in the
result, the summary, the header, the error message, any log record (every logger, DEBUG up),
any warning, or anything written to stdout/stderr. About 2,500 files, 15 s on 2 CPU cores
(half of it importing TensorFlow): marked slow.
"""

from __future__ import annotations

import io
import json
import logging
import struct
import warnings

import numpy as np
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from test_io import SECRETS, length_fields, write_dicom

from cxrcore.data.dicom import dicom_summary
from cxrcore.data.io import read_header
from cxrcore.errors import CXRError

SEED = 20240611
PIECES = sorted({s[i : i + 6] for s in SECRETS for i in range(len(s) - 5)} - {"123456"})  # not digits alone


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    """A tiny run directory (untrained simple_cnn at 32 px) and its Predictor."""
    from cxrcore.config import HeadConfig
    from cxrcore.predict import Predictor
    from cxrcore.training.model import build_model

    run = tmp_path_factory.mktemp("run")
    model = build_model("simple_cnn", 2, image_size=32, weights="none", head=HeadConfig(dense_units=[4]))
    model.save(run / "model.keras")
    (run / "labels.json").write_text(json.dumps(["NORMAL", "PNEUMONIA"]))
    (run / "run.json").write_text(json.dumps({"image_size": 32}))
    return Predictor(run)


# ---------------------------------------------------------------- the valid files


def _gray(shape, seed: int, high: int = 256, dtype=np.uint8) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, high, shape).astype(dtype)


def png_files() -> dict[str, bytes]:
    info = PngInfo()
    info.add_text("PatientName", SECRETS[0])
    info.add_text("PatientID", SECRETS[1], zip=True)  # zTXt
    info.add_itxt("InstitutionName", SECRETS[2], lang="en", tkey="Institution")
    out = {}
    for name, pixels in (("png8", _gray((20, 24), 1)), ("png16", _gray((20, 24), 2, 4096, np.uint16))):
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, "PNG", pnginfo=info)
        out[name] = buf.getvalue()
    return out


def jpeg_files() -> dict[str, bytes]:
    exif = Image.Exif()
    exif[0x013B] = SECRETS[0]  # Artist
    exif[0x010E] = f"{SECRETS[1]} {SECRETS[2]}"  # ImageDescription
    exif[0x0112] = 6  # Orientation: rotated, so EXIF is read
    comment = " ".join(SECRETS).encode()
    out = {}
    for name, img in (
        ("jpeg_gray", Image.fromarray(_gray((20, 24), 3))),
        ("jpeg_rgb", Image.fromarray(_gray((20, 24, 3), 4))),
    ):
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90, exif=exif.tobytes(), comment=comment)
        out[name] = buf.getvalue()
    return out


def dicom_files(tmp) -> dict[str, bytes]:
    import pydicom
    from pydicom.encaps import encapsulate
    from pydicom.uid import ImplicitVRLittleEndian, JPEG2000Lossless, JPEGBaseline8Bit, RLELossless

    def identified(name, pixels, syntax=None, frames=None, luts=True, **attrs):
        """A 16-bit DICOM (with a rescale and a window when ``luts``) carrying the identifiers."""
        path = write_dicom(
            tmp / f"{name}.dcm",
            pixels if frames is None else pixels[0],
            **(dict(slope=1.0, intercept=-1024.0, window=(1000.0, 3000.0)) if luts else {}),
        )
        ds = pydicom.dcmread(path)
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.PatientName, ds.PatientID, ds.InstitutionName = SECRETS
        ds.BodyPartExamined, ds.ViewPosition, ds.PixelSpacing = "CHEST", "PA", [0.14, 0.14]
        if frames is not None:
            ds.NumberOfFrames = len(pixels)
            ds.PixelData = np.asarray(pixels, "<u2").tobytes()
        for key, value in attrs.items():
            setattr(ds, key, value)
        if syntax is not None:
            ds.file_meta.TransferSyntaxUID = syntax
        ds.save_as(path, enforce_file_format=True)
        return path.read_bytes()

    def encapsulated(name, frame: bytes, syntax, **attrs):
        data = identified(
            name, np.zeros((16, 16), np.uint16), luts=False, BitsAllocated=8, BitsStored=8, HighBit=7, **attrs
        )
        ds = pydicom.dcmread(io.BytesIO(data))
        ds.file_meta.TransferSyntaxUID = syntax
        ds.PixelData = encapsulate([frame])
        ds["PixelData"].VR, ds["PixelData"].is_undefined_length = "OB", True
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        return buf.getvalue()

    pixels = _gray((16, 16), 5, 4096, np.uint16)
    out = {
        "dicom_explicit": identified("explicit", pixels),
        "dicom_implicit": identified("implicit", pixels, syntax=ImplicitVRLittleEndian),
        "dicom_frames": identified("frames", [pixels, pixels[::-1]], frames=True),
    }
    ds = pydicom.dcmread(io.BytesIO(out["dicom_explicit"]))
    ds.compress(RLELossless)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    out["dicom_rle"] = buf.getvalue()
    eight = Image.fromarray(_gray((16, 16), 6))
    jpeg, j2k = io.BytesIO(), io.BytesIO()
    eight.save(jpeg, "JPEG", quality=90)
    eight.save(j2k, "JPEG2000", no_jp2=True, irreversible=False)
    out["dicom_jpeg"] = encapsulated("jpeg", jpeg.getvalue(), JPEGBaseline8Bit)
    out["dicom_j2k"] = encapsulated("j2k", j2k.getvalue(), JPEG2000Lossless)
    return out


# ---------------------------------------------------------------- mutations


def png_length_offsets(data: bytes) -> list[tuple[int, int, int]]:
    """(offset, size, value) of every chunk length field."""
    out, pos = [], 8
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        out.append((pos, 4, length))
        pos += 12 + length
    return out


def jpeg_length_offsets(data: bytes) -> list[tuple[int, int, int]]:
    """(offset, size, value) of every marker segment length up to the first scan."""
    out, pos = [], 2
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        out.append((pos + 2, 2, length))
        if marker == 0xDA:
            break
        pos += 2 + length
    return out


def dicom_length_offsets(data: bytes) -> list[tuple[int, int, int]]:
    return sorted(length_fields(data).values())


def mutations(name: str, data: bytes, rng: np.random.Generator):
    """(label, bytes) pairs: the original, bit flips, truncations, corrupted length fields."""
    yield "original", data
    for i in range(12):
        mutated = bytearray(data)
        for pos in rng.integers(0, len(data), int(rng.integers(1, 9))):
            mutated[pos] ^= 1 << int(rng.integers(0, 8))
        yield f"flip{i}", bytes(mutated)
    for i, end in enumerate(sorted(rng.integers(1, len(data), 6))):
        yield f"cut{i}@{end}", data[:end]
    if name.startswith("dicom"):
        fields = dicom_length_offsets(data)
    elif name.startswith("png"):
        fields = png_length_offsets(data)
    else:
        fields = jpeg_length_offsets(data)
    for offset, size, value in fields:
        top = (1 << (8 * size)) - 1
        for new in {0, 1, value + 1, value + 7, value + 64, max(0, value - 1), top, int(rng.integers(0, top + 1))}:
            if new == value or new > top:
                continue
            order = "big" if not name.startswith("dicom") else "little"
            yield f"len@{offset}={new}", data[:offset] + new.to_bytes(size, order) + data[offset + size :]
    if name.startswith("dicom"):
        # a length that runs on exactly to the end of a later element: pydicom then parses the
        # rest normally, with those elements' bytes (identifiers among them) inside this value
        for i, (offset, size, _) in enumerate(fields):
            for later_offset, later_size, later_value in fields[i + 1 : i + 6]:
                new = later_offset + later_size + later_value - (offset + size)
                if new < (1 << (8 * size)) and later_value < 0xFFFFFFFF:
                    yield (
                        f"len@{offset}->{later_offset}",
                        (data[:offset] + new.to_bytes(size, "little") + data[offset + size :]),
                    )


def corpus(tmp) -> list[tuple[str, bytes]]:
    rng = np.random.default_rng(SEED)
    files = {**png_files(), **jpeg_files(), **dicom_files(tmp)}
    for name, data in files.items():  # the identifiers are really in them
        assert SECRETS[0].encode() in data, name
    return [
        (f"{name}/{label}", mutated) for name, data in files.items() for label, mutated in mutations(name, data, rng)
    ]


# ---------------------------------------------------------------- the test


def upload(predictor, name: str, data: bytes) -> str:
    """What the Predict page does with one upload; returns everything it would show."""
    try:
        image = predictor.prepare(data, name)
        result = predictor.result(name, predictor.probabilities(image)[0])
        facts = dicom_summary(data, name=name)
        return "ok " + repr(result) + repr(facts)
    except CXRError as exc:  # ImageDecodeError is one
        return "refused " + str(exc)


def indexed(path, data: bytes) -> str:
    """What the dataset index reads of the same file."""
    path.write_bytes(data)
    try:
        return repr(read_header(path))
    except CXRError as exc:
        return str(exc)


@pytest.mark.slow
def test_mutated_uploads_predict_or_are_refused_and_never_leak(predictor, tmp_path, caplog, capfd):
    cases = corpus(tmp_path)
    assert len(cases) >= 300
    caplog.set_level(logging.DEBUG)
    outcomes, leaks, crashes = {}, [], []
    with warnings.catch_warnings(record=True) as recorded:
        warnings.simplefilter("always")
        for i, (label, data) in enumerate(cases):
            name = f"upload-{i}.{label.split('/')[0]}"
            before = len(recorded)
            caplog.clear()
            try:
                shown = upload(predictor, name, data)
                header = indexed(tmp_path / "file", data)
            except Exception as exc:  # anything but a CXRError is a bug
                crashes.append(f"{label}: {type(exc).__name__}")
                continue
            heard = [str(w.message) for w in recorded[before:]]
            heard += [caplog.text] + [r.getMessage() for r in caplog.records]
            out, err = capfd.readouterr()
            text = "\n".join([shown, header, *heard, out, err])
            found = [p for p in PIECES if p in text]
            if found:
                leaks.append(f"{label}: {found} in {text[:300]!r}")
            outcomes[label] = shown.split(" ", 1)[0]
    assert not crashes, crashes[:10]
    assert not leaks, leaks[:5]
    for name in {label.split("/")[0] for label in outcomes}:
        assert outcomes[f"{name}/original"] == "ok", name
    counts = {kind: sum(v == kind for v in outcomes.values()) for kind in ("ok", "refused")}
    assert counts["ok"] > 50 and counts["refused"] > 50, counts  # the mutations do both


def test_original_dicom_summaries_show_the_safe_fields(tmp_path):
    for name, data in dicom_files(tmp_path).items():
        facts = dicom_summary(data, name=name)
        assert facts["Modality"] == "CR" and facts["BodyPartExamined"] == "CHEST", name
        assert facts["PixelSpacing"] == [0.14, 0.14] and facts["Rows"] == 16, name
        assert not [s for s in SECRETS if s in repr(facts)]
