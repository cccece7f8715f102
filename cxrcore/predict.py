"""The prediction path: files or uploaded bytes in, class probabilities out, in label order.

Every consumer (the CLI, the dashboard, Grad-CAM, comparisons) predicts through
:class:`Predictor`, which prepares pixels with :func:`cxrcore.data.io.prepare_image`
(as training did) and calls the model through one compiled ``tf.function``: an eager
call or ``model.predict`` costs 5-10x more per image on a CPU, which a single upload
should not pay. Its probabilities are calibrated with the run's temperature
(:meth:`cxrcore.runs.RunDir.temperature`, 1.0 for runs trained before calibration existed).

Each result also carries what the run learned from its validation split, where it has it:
the decision per class at an operating point (:mod:`cxrcore.evaluation.operating_points`;
the target-sensitivity one unless asked otherwise) and whether the image is unlike the training
data (:mod:`cxrcore.evaluation.ood`), measured on the same forward pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from . import runs
from .data.io import ImageSource, prepare_image
from .evaluation.calibration import apply_temperature
from .evaluation.operating_points import KIND_NAMES, KINDS, decide
from .training.model import feature_model, inference_function, load_model


class Predictor:
    """A run's best model, its labels and input size, ready to predict."""

    def __init__(self, run_dir: str | Path):
        self.run = runs.RunDir(run_dir)
        self.model = load_model(self.run.require_model())
        self.labels = self.run.labels()
        self.image_size = self.run.image_size()
        self.pixels = self.run.pixel_rules()
        self.temperature = self.run.temperature()
        self.operating_points = self.run.operating_points()
        self.feature_stats = self.run.feature_stats()
        network = feature_model(self.model) if self.feature_stats is not None else self.model
        self._forward = inference_function(network, self.image_size)

    def prepare(self, source: ImageSource, name: str | None = None) -> np.ndarray:
        """``uint8`` (size, size, 3): exactly what the model sees."""
        return prepare_image(source, self.image_size, name=name, rules=self.pixels)

    def outputs(self, images: np.ndarray, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray | None]:
        """Calibrated probabilities (n, k) and pooled features (n, d) for prepared images (n, size, size, 3);
        features are None for a run without feature statistics."""
        images = np.asarray(images, dtype=np.float32)
        if images.ndim == 3:
            images = images[None]
        probs, features = [], []
        for i in range(0, len(images), batch_size):
            out = self._forward(images[i : i + batch_size])
            if self.feature_stats is not None:
                probs.append(np.asarray(out[0], dtype=float))
                features.append(np.asarray(out[1], dtype=float))
            else:
                probs.append(np.asarray(out, dtype=float))
        calibrated = apply_temperature(np.concatenate(probs, axis=0), self.temperature)
        return calibrated, (np.concatenate(features, axis=0) if features else None)

    def probabilities(self, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """Calibrated probabilities (n, k) for prepared images (n, size, size, 3)."""
        return self.outputs(images, batch_size)[0]

    def predict(
        self,
        sources: Sequence[ImageSource],
        names: Sequence[str] | None = None,
        operating_point: str = KINDS[0],
    ) -> list[dict]:
        """One :meth:`result` per source.

        Raises :class:`cxrcore.errors.ImageDecodeError` naming the first bad image;
        use :meth:`predict_each` to get per-image errors instead.
        """
        names = list(names) if names is not None else [_name(s) for s in sources]
        prepared = np.stack([self.prepare(s, n) for s, n in zip(sources, names)])
        return self._results(names, prepared, operating_point)

    def predict_each(
        self,
        sources: Sequence[ImageSource],
        names: Sequence[str] | None = None,
        operating_point: str = KINDS[0],
    ) -> list[dict]:
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
            found = self._results([names[i] for i in good], np.stack(arrays), operating_point)
            for i, result in zip(good, found):
                results[i] = result
        return results

    def predict_image(self, source: ImageSource, name: str | None = None, operating_point: str = KINDS[0]):
        """``(prepared image, result)`` for one image: what the model saw and what it said."""
        image = self.prepare(source, name)
        return image, self._results([name or _name(source)], image[None], operating_point)[0]

    def _results(self, names: list[str], prepared: np.ndarray, operating_point: str) -> list[dict]:
        probs, features = self.outputs(prepared)
        return [
            self.result(name, p, None if features is None else features[i], operating_point)
            for i, (name, p) in enumerate(zip(names, probs))
        ]

    def result(
        self, name: str, probs: np.ndarray, features: np.ndarray | None = None, operating_point: str = KINDS[0]
    ) -> dict:
        """One image's result:

        - ``image``, ``label`` (the most probable class), ``confidence``, ``probabilities`` (calibrated);
        - ``decision``: ``{"operating_point", "name", "thresholds", "positive"}``, the classes whose
          probability is at or above their threshold at ``operating_point`` (None for a run without
          operating points);
        - ``unlike_training``: ``{"score", "threshold", "percentile", "flagged"}`` (None without feature statistics
          or ``features``).
        """
        if operating_point not in KINDS:
            raise ValueError(f"operating_point must be one of {', '.join(KINDS)}, got {operating_point!r}")
        top = int(np.argmax(probs))
        decision = None
        if self.operating_points is not None:
            called = decide(probs, self.operating_points, self.labels, operating_point)[0]
            target = self.operating_points.get("target_sensitivity")
            decision = {
                "operating_point": operating_point,
                "name": KIND_NAMES[operating_point]
                + (f" {target:.2f}" if operating_point == "sensitivity" and target else ""),
                "thresholds": {c: self.operating_points["thresholds"][c][operating_point] for c in self.labels},
                "positive": [c for c, yes in zip(self.labels, called) if yes],
            }
        unlike = None
        if self.feature_stats is not None and features is not None:
            score = float(self.feature_stats.scores(features)[0])
            unlike = {
                "score": score,
                "threshold": self.feature_stats.threshold,
                "percentile": self.feature_stats.percentile,
                "flagged": score > self.feature_stats.threshold,
            }
        return {
            "image": name,
            "label": self.labels[top],
            "confidence": float(probs[top]),
            "probabilities": {label: float(p) for label, p in zip(self.labels, probs)},
            "decision": decision,
            "unlike_training": unlike,
        }


def _name(source: ImageSource) -> str:
    return f"<{len(source)} bytes>" if isinstance(source, (bytes, bytearray)) else str(source)
