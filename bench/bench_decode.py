"""Peak memory and time of decoding the largest accepted image of each format, printed as JSON.

    python bench/bench_decode.py [--dir DIR] [--size 224] [--only NAME,...]

Makes one square image per format just under :data:`cxrcore.data.formats.MAX_PIXELS` (8-bit
PNG, 16-bit PNG, gray and RGB JPEG, uncompressed 16-bit DICOM with a rescale and a
window, RLE DICOM) plus one RLE DICOM of 10000 x 10000, over the limit (a 1.6 MB file),
in DIR (kept and reused when given, so a before/after comparison reads the same files).
Each file then goes through ``prepare_image(path, SIZE)``, the path every upload,
training and evaluation image takes, in a fresh Python process: peak memory is that
process's peak resident memory during the call (``VmHWM``, reset just before it through
``/proc/self/clear_refs``) minus its resident memory before it (after the imports and one
tiny warm-up decode of the same format, so plugin imports are not counted); it includes
reading the file. ``ru_maxrss`` is not used: on Linux a child started by a process that
once held gigabytes (this one, making the images) inherits that figure. ``bytes_per_pixel``
is the peak over the image's pixels.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT

OVER_LIMIT_SIDE = 10_000


def pixel_limit() -> int:
    from PIL import Image

    try:
        from cxrcore.data.formats import MAX_PIXELS
    except ImportError:  # a commit from before data.formats
        from cxrcore.data import io

        MAX_PIXELS = getattr(io, "MAX_PIXELS", Image.MAX_IMAGE_PIXELS)  # before the constant existed: Pillow's
    return int(MAX_PIXELS)


def _pattern(side: int, dtype, modulo: int):
    """A smooth diagonal ramp (compresses well, so files are quick to write)."""
    import numpy as np

    rows = np.arange(side, dtype=np.uint32)[:, None]
    cols = np.arange(side, dtype=np.uint32)[None, :]
    return ((rows * 3 + cols) % modulo).astype(dtype)


def write_png(path: Path, side: int, bits: int) -> None:
    import numpy as np
    from PIL import Image

    img = Image.fromarray(_pattern(side, np.uint16, 4096) if bits == 16 else _pattern(side, np.uint8, 256))
    img.save(path, compress_level=1)


def write_jpeg(path: Path, side: int, mode: str) -> None:
    import numpy as np
    from PIL import Image

    img = Image.fromarray(_pattern(side, np.uint8, 256))
    (img if mode == "L" else img.convert(mode)).save(path, quality=90)


def _dicom(side: int, transfer_syntax):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = transfer_syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows = ds.Columns = side
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    return ds


def write_dicom(path: Path, side: int) -> None:
    """Uncompressed 12-bit, with a modality rescale and a window, so every LUT step runs."""
    import numpy as np
    from pydicom.uid import ExplicitVRLittleEndian

    ds = _dicom(side, ExplicitVRLittleEndian)
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.WindowCenter, ds.WindowWidth = 1000, 3000
    ds.PixelData = _pattern(side, np.dtype("<u2"), 4096).tobytes()
    ds.save_as(path, enforce_file_format=True)


def _rle_row(width: int, value: int) -> bytes:
    """One row of a constant byte, PackBits-encoded as DICOM RLE wants (runs of up to 128)."""
    full, rest = divmod(width, 128)
    row = bytes([257 - 128, value]) * full
    if rest == 1:
        row += bytes([0, value])  # a literal run of one byte
    elif rest:
        row += bytes([257 - rest, value])
    return row


def write_dicom_rle(path: Path, side: int) -> None:
    """RLE Lossless, one constant value per row: a tiny file that decodes to ``side**2`` pixels."""
    import struct

    from pydicom.encaps import encapsulate
    from pydicom.uid import RLELossless

    values = [(r * 7) % 4096 for r in range(side)]
    high = b"".join(_rle_row(side, v >> 8) for v in values)
    low = b"".join(_rle_row(side, v & 0xFF) for v in values)
    header = struct.pack("<16L", 2, 64, 64 + len(high), *([0] * 13))
    ds = _dicom(side, RLELossless)
    ds.PixelData = encapsulate([header + high + low])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.save_as(path, enforce_file_format=True)


def make_files(folder: Path, limit: int) -> dict[str, tuple[Path, int]]:
    side = math.isqrt(limit)  # side * side <= limit: just under it
    makers = {
        "png_8bit": ("png", lambda p: write_png(p, side, 8)),
        "png_16bit": ("png", lambda p: write_png(p, side, 16)),
        "jpeg_gray": ("jpg", lambda p: write_jpeg(p, side, "L")),
        "jpeg_rgb": ("jpg", lambda p: write_jpeg(p, side, "RGB")),
        "dicom_uncompressed": ("dcm", lambda p: write_dicom(p, side)),
        "dicom_rle": ("dcm", lambda p: write_dicom_rle(p, side)),
        "dicom_rle_over_limit": ("dcm", lambda p: write_dicom_rle(p, OVER_LIMIT_SIDE)),
    }
    files = {}
    for name, (suffix, make) in makers.items():
        path = folder / f"{name}_{side if 'over' not in name else OVER_LIMIT_SIDE}.{suffix}"
        if not path.exists():
            tmp = path.with_name("tmp-" + path.name)
            make(tmp)
            tmp.replace(path)
        files[name] = (path, (side if "over" not in name else OVER_LIMIT_SIDE) ** 2)
    return files


def _tiny_copy(path: Path) -> bytes:
    """A small file of the same format, for the warm-up decode."""
    import io

    import numpy as np
    from PIL import Image

    if path.suffix == ".dcm":
        tmp = Path(tempfile.mkdtemp()) / "tiny.dcm"
        (write_dicom_rle if "rle" in path.name else write_dicom)(tmp, 16)
        return tmp.read_bytes()
    buf = io.BytesIO()
    img = Image.fromarray(np.zeros((16, 16), np.uint16 if "16bit" in path.name else np.uint8))
    img.save(buf, format="PNG" if path.suffix == ".png" else "JPEG")
    return buf.getvalue()


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def child(path: str, size: int) -> None:
    """Runs in a fresh process: one prepare_image call, its peak memory and time as JSON."""
    from cxrcore.data.io import prepare_image
    from cxrcore.errors import ImageDecodeError

    prepare_image(_tiny_copy(Path(path)), size)
    Path("/proc/self/clear_refs").write_text("5")  # peak := current
    before = _status_mb("VmRSS")
    start = time.perf_counter()
    try:
        out = prepare_image(path, size)
        outcome = f"ok {out.shape}"
    except ImageDecodeError as exc:
        outcome = f"refused: {exc.reason}"
    seconds = time.perf_counter() - start
    peak = _status_mb("VmHWM")
    print(json.dumps({"seconds": round(seconds, 2), "peak_mb": round(peak - before, 1), "outcome": outcome}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", help="where the images are made (kept); a temporary folder by default")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--only", default="", help="comma-separated case names")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.size)
        return
    folder = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="cxrbench-decode-"))
    folder.mkdir(parents=True, exist_ok=True)
    limit = pixel_limit()
    files = make_files(folder, limit)
    only = set(filter(None, args.only.split(",")))
    result = {"max_pixels": limit, "size": args.size, "dir": str(folder), "cases": {}}
    for name, (path, pixels) in files.items():
        if only and name not in only:
            continue
        proc = subprocess.run(
            [sys.executable, __file__, "--child", str(path), "--size", str(args.size)],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            result["cases"][name] = {"error": (proc.stderr.strip().splitlines() or ["?"])[-1][:300]}
            continue
        measured = json.loads(proc.stdout.strip().splitlines()[-1])
        measured.update(
            pixels=pixels,
            file_mb=round(path.stat().st_size / 2**20, 1),
            bytes_per_pixel=round(measured["peak_mb"] * 2**20 / pixels, 1),
        )
        result["cases"][name] = measured
        print(name, measured, file=sys.stderr, flush=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
