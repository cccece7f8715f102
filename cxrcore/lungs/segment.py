"""Finding the lungs in an image: :class:`LungSegmenter` and the model shipped with the package.

The shipped model (``cxrcore/lungs/shipped/lungs.keras``, with ``lungs.json``, the record of how it was made)
is trained by ``python -m cxrcore lungs train`` and loaded with nothing downloaded. The segmenter works on
decoded pixels (what :func:`cxrcore.data.io.decode_image` returns; it reads no file): they are made gray,
resized to the model's square input (aspect not kept, as for the classifiers), segmented, and the probability
map is resized back to the image's own size before :func:`cxrcore.lungs.geometry.lungs_from_mask` picks the two lungs.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..data.pixels import resize
from ..errors import RunError
from . import geometry

SHIPPED_DIR = Path(__file__).resolve().parent / "shipped"
SHIPPED_MODEL = SHIPPED_DIR / "lungs.keras"
SHIPPED_RECORD = SHIPPED_DIR / "lungs.json"
_MEMO_SIZE = 256
#: ``crop_to_lungs`` finds the lungs of a large image on a square of at most this side.
CROP_GRID = 256


def _gray(rgb: np.ndarray) -> np.ndarray:
    """``uint8`` RGB or gray pixels as gray 0..1 float32 (the channels' mean; X-rays are gray already)."""
    arr = np.asarray(rgb, dtype=np.float32)
    if arr.ndim == 3:
        arr = arr.mean(axis=2)
    return arr / 255.0


class LungSegmenter:
    """A lung model, loaded once; its forward pass compiled once.

    ``lungs(rgb)`` is remembered per image content (the last 256 images), so the pixel rules, the explanation
    and the page asking for the lungs of the same image segment it once."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path else SHIPPED_MODEL
        if not self.path.is_file():
            raise RunError(
                f"lung model not found: {self.path}"
                + (
                    " (the package's shipped model is missing: reinstall, or train one with "
                    "`python -m cxrcore lungs train`)"
                    if path is None
                    else ""
                )
            )
        import keras
        import tensorflow as tf

        try:
            self.model = keras.saving.load_model(str(self.path), compile=False)
        except (OSError, ValueError) as exc:
            raise RunError(f"cannot load lung model {self.path}: {str(exc).splitlines()[0]}") from None
        self.size = int(self.model.input_shape[1])
        spec = tf.TensorSpec((None, self.size, self.size, 1), tf.float32)
        self._forward = tf.function(lambda x: self.model(x, training=False), input_signature=[spec], autograph=False)
        self._memo: OrderedDict[str, geometry.Lungs] = OrderedDict()
        record = self.path.with_name("lungs.json")
        self.record = json.loads(record.read_text(encoding="utf-8")) if record.is_file() else {}

    def probabilities_of_gray(self, gray: np.ndarray) -> np.ndarray:
        """The lung probability of each pixel of a gray 0..1 image, at the image's own size."""
        height, width = gray.shape
        small = resize(np.clip(gray * 255, 0, 255).astype(np.uint8), self.size)
        x = np.asarray(small, dtype=np.float32)[None, ..., None]
        prob = np.asarray(self._forward(x))[0, ..., 0]
        return resize(prob.astype(np.float32), height, width)

    def lungs(self, rgb: np.ndarray, *, grid: int | None = None) -> geometry.Lungs:
        """The two lungs of decoded pixels (``uint8`` RGB or gray), at their size, or on a ``grid x grid``
        square (the image squashed to it, as the model sees it: cheaper for a large image)."""
        arr = np.ascontiguousarray(rgb)
        key = hashlib.blake2b(arr.tobytes(), digest_size=16).hexdigest() + str(arr.shape) + str(grid)
        if key in self._memo:
            self._memo.move_to_end(key)
            return self._memo[key]
        gray = _gray(arr)
        if grid:
            gray = resize((gray * 255).astype(np.uint8), grid).astype(np.float32) / 255.0
        found = geometry.lungs_from_mask(self.probabilities_of_gray(gray) >= 0.5)
        self._memo[key] = found
        while len(self._memo) > _MEMO_SIZE:
            self._memo.popitem(last=False)
        return found

    def lungs_of_many(self, images: list[np.ndarray], batch_size: int = 64) -> list[geometry.Lungs]:
        """:meth:`lungs` of each of ``images`` (decoded pixels, ``uint8`` RGB or gray, at their own size), the
        model's forward passes made ``batch_size`` images at a time: the same lungs, several times faster on a
        CPU than one call per image (the data audit reads hundreds)."""
        arrays = [np.ascontiguousarray(a) for a in images]
        keys = [hashlib.blake2b(a.tobytes(), digest_size=16).hexdigest() + str(a.shape) + "None" for a in arrays]
        todo = [i for i, key in enumerate(keys) if key not in self._memo]
        grays = {i: _gray(arrays[i]) for i in todo}
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            small = np.stack([resize(np.clip(grays[i] * 255, 0, 255).astype(np.uint8), self.size) for i in chunk])
            probs = np.asarray(self._forward(small.astype(np.float32)[..., None]))[..., 0]
            for i, prob in zip(chunk, probs):
                height, width = grays[i].shape
                self._memo[keys[i]] = geometry.lungs_from_mask(resize(prob.astype(np.float32), height, width) >= 0.5)
        found = [self._memo[key] for key in keys]
        while len(self._memo) > _MEMO_SIZE:
            self._memo.popitem(last=False)
        return found

    def crop_to_lungs(self, arr: np.ndarray, margin: float = geometry.CROP_MARGIN) -> np.ndarray:
        """``arr`` (gray or RGB) cut to the box around both lungs with ``margin``; unchanged without two lungs."""
        grid = min(CROP_GRID, max(arr.shape[:2]))
        box = geometry.crop_box(self.lungs(arr, grid=grid), margin)
        if box is None:
            return arr
        height, width = arr.shape[:2]
        x0, x1 = int(box[0] * width / grid), max(int(box[0] * width / grid) + 1, int(np.ceil(box[2] * width / grid)))
        y0, y1 = int(box[1] * height / grid), max(int(box[1] * height / grid) + 1, int(np.ceil(box[3] * height / grid)))
        return arr[y0:y1, x0:x1]

    def mask_outside(self, arr: np.ndarray, grow: float = geometry.MASK_GROW) -> np.ndarray:
        """``arr`` (gray or RGB) with every pixel outside the (grown) lungs set to 0; unchanged when no lung is
        found."""
        lungs = self.lungs(arr)
        if lungs.found == 0:
            return arr
        keep = geometry.grow(lungs.mask, grow)
        out = arr.copy()
        out[~keep] = 0
        return out


@lru_cache(maxsize=4)
def _segmenter(path: str | None) -> LungSegmenter:
    return LungSegmenter(path)


def get_segmenter(path: str | Path | None = None) -> LungSegmenter:
    """The segmenter for a model file (the shipped one by default), loaded once per process."""
    return _segmenter(str(path) if path else None)


def shipped_fingerprint() -> str:
    """A digest of the shipped model file's content (results that depend on the lungs are keyed by it), or
    ``"missing"``."""
    try:
        stat = SHIPPED_MODEL.stat()
    except OSError:
        return "missing"
    return _fingerprint(str(SHIPPED_MODEL), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=4)
def _fingerprint(path: str, size: int, mtime_ns: int) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def shipped_record() -> dict:
    """The shipped model's record (``lungs.json``): data, licences, split, epochs, held-out scores."""
    if not SHIPPED_RECORD.is_file():
        raise RunError(f"the shipped lung model's record is missing: {SHIPPED_RECORD}")
    return json.loads(SHIPPED_RECORD.read_text(encoding="utf-8"))
