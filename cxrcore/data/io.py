"""Image reading: headers without pixels, and the one function that owns the pixels a model sees.

Every image that reaches a model, in training, evaluation or prediction, goes
through :func:`prepare_image`, so a PNG seen in training and the same PNG uploaded
later give the model identical pixels.

Formats: PNG, JPEG and DICOM, recognised by their content (:mod:`cxrcore.data.formats`; DICOM:
:mod:`cxrcore.data.dicom`), never by the file name. Everything
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
  Backbone-specific preprocessing happens inside the model (see backbones.py). Normalisation,
  the one resize and the rules' own functions are :mod:`cxrcore.data.pixels`.
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

Limits: an image may hold at most :data:`cxrcore.data.formats.MAX_PIXELS` pixels (for DICOM: rows x columns
x frames x samples), read from its header before anything is decoded: the PNG IHDR,
the JPEG frame header, the DICOM Rows/Columns/NumberOfFrames/SamplesPerPixel and, for
compressed DICOM, the first frame's own JPEG / JPEG 2000 header or the decoded length
of its RLE segments, and the inflated size of a deflated DICOM. The stretch runs over
blocks of rows, so a large 16-bit image never gets a full-size float64 copy.

This module sits above :mod:`cxrcore.lungs.segment` (the lung rules need the lung model), which works
on decoded arrays only.

Privacy: what is read, logged and shown from a file is described in :mod:`cxrcore.data.dicom`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import ImageDecodeError
from ..lungs import segment
from .dicom import dicom_header
from .dicom_pixels import decode_dicom
from .formats import (
    ImageSource,
    decode_pil,
    describe,
    is_dicom,
    jpeg_walk,
    open_pil,
    pil_reason,
    read_bytes,
    refuse_format,
    sniff,
)
from .pixels import PixelRules, crop_border, equalize, resize, to_rgb

# ---------------------------------------------------------------- decoding and the model's view


def _decode(data: bytes, label: str, size: int | None = None) -> np.ndarray:
    """Gray (2-D) or RGB ``uint8`` pixels of any accepted file, resized when ``size`` is given."""
    if not data:
        raise ImageDecodeError(label, "the file is empty")
    fmt = sniff(data)
    if fmt not in ("DICOM", "PNG", "JPEG"):
        raise refuse_format(label, fmt)
    try:
        if fmt == "DICOM":
            arr = decode_dicom(data, label)
            if arr.shape[0] >= 1 and arr.shape[1] >= 1 and size is not None:
                arr = resize(arr, size)
        else:
            arr = decode_pil(data, fmt, label, size)
    except ImageDecodeError:
        raise
    except Exception as exc:  # Pillow raises OSError, ValueError, SyntaxError, ...
        raise ImageDecodeError(label, pil_reason(exc, fmt)) from None
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ImageDecodeError(label, "the image has no pixels")
    return arr


def decode_image(src: ImageSource, *, name: str | None = None) -> np.ndarray:
    """Decode a PNG, JPEG or DICOM file (path or bytes) to ``uint8`` RGB at its own size.

    ``name`` is used in error messages when ``src`` is bytes (e.g. an upload's file name).
    Raises :class:`ImageDecodeError` with the source and the reason on any failure.
    """
    label = describe(src, name)
    return to_rgb(_decode(read_bytes(src, label), label))


def prepare_image(
    src: ImageSource, size: int, *, name: str | None = None, rules: PixelRules | None = None
) -> np.ndarray:
    """The model's view of an image: decoded, normalised, resized, with the run's ``rules``
    applied; ``uint8`` (size, size, 3)."""
    label = describe(src, name)
    data = read_bytes(src, label)
    if rules is None or rules.is_default:
        return to_rgb(_decode(data, label, size))
    arr = _decode(data, label, None if rules.crop_border or rules.lung_crop else size)
    arr = crop_border(arr, rules.crop_border)
    if rules.lung_crop:
        arr = segment.get_segmenter().crop_to_lungs(arr)
    arr = resize(arr, size)
    arr = equalize(arr) if rules.equalize else arr
    if rules.lung_mask:
        arr = segment.get_segmenter().mask_outside(arr)
    return to_rgb(arr)


def read_header(path: str | os.PathLike) -> dict:
    """Width, height, mode and format of an image file, read from its header only.

    Pixels are not decoded, so this is cheap enough to run over a whole dataset. Applies
    the same rules as decoding: other formats, animated PNGs and images over
    :data:`cxrcore.data.formats.MAX_PIXELS` are refused. Raises :class:`ImageDecodeError` naming the file.
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
                return dicom_header(fh, label)
            fmt = sniff(head)
            if fmt not in ("PNG", "JPEG"):
                raise refuse_format(label, fmt)
            while fmt == "JPEG" and not jpeg_walk(head)[1]:  # EXIF, ICC profiles... before the frame
                more = fh.read(len(head))
                if not more:
                    break
                head += more
            fh.seek(0)
            with open_pil(fh, head, fmt, label) as img:
                return {"width": img.width, "height": img.height, "mode": img.mode, "format": fmt}
    except ImageDecodeError:
        raise
    except OSError as exc:
        if fmt in ("", "DICOM"):  # opening or reading the file
            raise ImageDecodeError(label, exc.strerror or type(exc).__name__) from None
        raise ImageDecodeError(label, pil_reason(exc, fmt)) from None
    except Exception as exc:  # Pillow raises SyntaxError, ValueError, ...
        raise ImageDecodeError(label, pil_reason(exc, fmt)) from None
