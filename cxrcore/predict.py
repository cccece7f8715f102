"""The prediction path: files or uploaded bytes in, class probabilities out, in label order.

Every consumer (the CLI, the dashboard, Grad-CAM, comparisons) predicts through
:class:`Predictor`, which prepares pixels with :func:`cxrcore.data.io.prepare_image`
(as training did) and calls the model through one compiled ``tf.function``: an eager
call or ``model.predict`` costs 5-10x more per image on a CPU, which a single upload
should not pay. Its probabilities are calibrated with the run's temperature
(:meth:`cxrcore.runs.RunDir.temperature`, 1.0 for runs trained before calibration existed).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from . import runs
from .data.io import ImageSource, prepare_image
from .evaluation.calibration import apply_temperature
from .training.model import inference_function, load_model


class Predictor:
    """A run's best model, its labels and input size, ready to predict."""

    def __init__(self, run_dir: str | Path):
        self.run = runs.RunDir(run_dir)
        self.model = load_model(self.run.require_model())
        self.labels = self.run.labels()
        self.image_size = self.run.image_size()
        self.pixels = self.run.pixel_rules()
        self.temperature = self.run.temperature()
        self._forward = inference_function(self.model, self.image_size)

    def prepare(self, source: ImageSource, name: str | None = None) -> np.ndarray:
        """``uint8`` (size, size, 3): exactly what the model sees."""
        return prepare_image(source, self.image_size, name=name, rules=self.pixels)

    def probabilities(self, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """Calibrated probabilities (n, k) for prepared images (n, size, size, 3)."""
        images = np.asarray(images, dtype=np.float32)
        if images.ndim == 3:
            images = images[None]
        out = [
            np.asarray(self._forward(images[i : i + batch_size]), dtype=float)
            for i in range(0, len(images), batch_size)
        ]
        return apply_temperature(np.concatenate(out, axis=0), self.temperature)

    def predict(self, sources: Sequence[ImageSource], names: Sequence[str] | None = None) -> list[dict]:
        """One result per source: ``{"image", "label", "confidence", "probabilities"}``.

        Raises :class:`cxrcore.errors.ImageDecodeError` naming the first bad image;
        use :meth:`predict_each` to get per-image errors instead.
        """
        names = list(names) if names is not None else [_name(s) for s in sources]
        prepared = np.stack([self.prepare(s, n) for s, n in zip(sources, names)])
        return [self.result(n, p) for n, p in zip(names, self.probabilities(prepared))]

    def predict_each(self, sources: Sequence[ImageSource], names: Sequence[str] | None = None) -> list[dict]:
        """Like :meth:`predict`, but an unreadable image gives ``{"image", "error"}`` and the rest go on."""
        from .errors import ImageDecodeError

        names = list(names) if names is not None else [_name(s) for s in sources]
        results: list[dict | None] = [None] * len(names)
        good, arrays = [], []
        for i, (source, name) in enumerate(zip(sources, names)):
            try:
                arrays.append(self.prepare(source, name))
                good.append(i)
            except ImageDecodeError as exc:
                results[i] = {"image": name, "error": str(exc)}
        if arrays:
            for i, probs in zip(good, self.probabilities(np.stack(arrays))):
                results[i] = self.result(names[i], probs)
        return results

    def result(self, name: str, probs: np.ndarray) -> dict:
        """``{image, label, confidence, probabilities}`` for one row of probabilities."""
        top = int(np.argmax(probs))
        return {
            "image": name,
            "label": self.labels[top],
            "confidence": float(probs[top]),
            "probabilities": {label: float(p) for label, p in zip(self.labels, probs)},
        }


def _name(source: ImageSource) -> str:
    return f"<{len(source)} bytes>" if isinstance(source, (bytes, bytearray)) else str(source)
