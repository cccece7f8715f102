"""The prediction path: files or uploaded bytes in, class (or finding) probabilities out, in label order.

Every consumer (the CLI, the dashboard, Grad-CAM, comparisons) predicts through
:class:`Predictor`, which prepares pixels with :func:`cxrcore.data.io.prepare_image`
(as training did) and calls the model through one compiled ``tf.function``: an eager
call or ``model.predict`` costs 5-10x more per image on a CPU, which a single upload
should not pay. Its probabilities are calibrated with the run's temperature
(:meth:`cxrcore.runs.RunDir.temperature`, 1.0 for runs trained before calibration existed).

A findings run (:meth:`cxrcore.runs.RunDir.task` ``"findings"``: one sigmoid output per finding, several may be
present) is calibrated per finding instead, ``sigmoid(logit(p_j) / T_j)`` with the run's
:meth:`~cxrcore.runs.RunDir.temperatures` (:func:`cxrcore.evaluation.multilabel.apply_temperatures`), and its
result lists each finding with its threshold and decision (:meth:`Predictor.result`).

Each result also carries what the run learned from its validation split, where it has it:
the decision per class at an operating point (:mod:`cxrcore.evaluation.operating_points`;
the target-sensitivity one unless asked otherwise) and whether the image is unlike the training
data (:mod:`cxrcore.stats.ood`), measured on the same forward pass.

:meth:`Predictor.explain` adds what the model looked at: a class activation map
(:mod:`cxrcore.explain.cam`) with its faithfulness scores, border share and lung share
(:mod:`cxrcore.explain.faithfulness`; the lungs found by the shipped lung model, :mod:`cxrcore.lungs`).
The map, scores and lungs are kept per image (and method and class), so asking again (a page rerun for a
new colormap or opacity) recomputes nothing.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from . import runs
from .data.formats import ImageSource
from .data.io import prepare_image
from .errors import ImageDecodeError
from .evaluation.calibration import apply_temperature
from .evaluation.multilabel import TASK as FINDINGS
from .evaluation.multilabel import apply_temperatures
from .evaluation.operating_points import KIND_NAMES, KINDS, decide
from .explain import faithfulness
from .explain.cam import Explainer
from .lungs import segment
from .training.model import feature_model, inference_function, load_model

#: why no decision is made for an image flagged as unlike the training data
WITHHELD = "the image is unlike the training data: its probabilities are not to be trusted"


class Predictor:
    """A run's best model, its labels (a findings run's: its findings) and input size, ready to predict.

    ``task`` is ``"classes"`` or ``"findings"``; ``temperature`` calibrates a class run, ``temperatures`` (one
    per finding, in label order; None for a class run) a findings run."""

    def __init__(self, run_dir: str | Path):
        self.run = runs.RunDir(run_dir)
        self.model = load_model(self.run.require_model())
        self.labels = self.run.labels()
        self.image_size = self.run.image_size()
        self.pixels = self.run.pixel_rules()
        self.task = self.run.task()
        self.temperature = self.run.temperature()
        self.temperatures = self.run.temperatures() if self.multi_label else None
        self.tested = (self.run.metrics() or {}) if self.multi_label else {}  # each finding's test result
        self.operating_points = self.run.operating_points()
        self.feature_stats = self.run.feature_stats()
        network = feature_model(self.model) if self.feature_stats is not None else self.model
        self._forward = inference_function(network, self.image_size)
        self._explainer = None
        self._memo: OrderedDict = OrderedDict()  # (image digest, what) -> computed; the newest last
        self._lock = threading.RLock()

    @property
    def multi_label(self) -> bool:
        """Whether this is a findings run (multi-label: one sigmoid probability per finding)."""
        return self.task == FINDINGS

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
        raw = np.concatenate(probs, axis=0)
        if self.multi_label:
            calibrated = apply_temperatures(raw, self.temperatures)
        else:
            calibrated = apply_temperature(raw, self.temperature)
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

    # -- explanations ----------------------------------------------------------------------------
    MEMO_SIZE = 64

    def explainer(self):
        """The run's :class:`cxrcore.explain.cam.Explainer` (an ensemble's: its members' mean), made once."""
        with self._lock:
            if self._explainer is None:
                self._explainer = Explainer.for_predictor(self)
            return self._explainer

    def _remember(self, key: tuple, compute):
        with self._lock:
            if key in self._memo:
                self._memo.move_to_end(key)
                return self._memo[key]
            value = compute()
            self._memo[key] = value
            while len(self._memo) > self.MEMO_SIZE:
                self._memo.popitem(last=False)
            return value

    def explanation_map(self, image: np.ndarray, method: str, class_index: int) -> np.ndarray:
        """The class activation map (H, W in [0, 1]) of a prepared image, computed once per (image, method,
        class)."""
        digest = hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()
        return self._remember(
            (digest, "map", method, int(class_index)),
            lambda: self.explainer().heatmap(image, class_index=int(class_index), method=method),
        )

    def lungs(self, image: np.ndarray):
        """The lung fields (:class:`cxrcore.lungs.geometry.Lungs`) of a prepared image, found by the shipped lung
        model once per image. Raises RunError when that model is missing."""
        digest = hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()
        return self._remember((digest, "lungs"), lambda: segment.get_segmenter().lungs(image))

    def explain(
        self,
        image: ImageSource | np.ndarray,
        method: str = "gradcam",
        class_index: int | None = None,
        *,
        name: str | None = None,
        operating_point: str = KINDS[0],
        steps: int = faithfulness.STEPS,
        baseline: str = faithfulness.BASELINE,
    ) -> dict:
        """One image's prediction, explained: :meth:`result`'s fields, plus

        - ``input``: the prepared image (what the model sees), ``heatmap``: the map (H, W in [0, 1]);
        - ``method``, ``class_index`` and ``class``: what is explained (None: the predicted class; for a findings
          run, ``class_index`` is the finding's index in :attr:`labels`, None the most probable finding);
        - ``deletion`` (lower is better), ``insertion`` (higher is better), ``border_share`` (None for an
          empty map) and ``border_flagged``;
        - ``lung_share``: the share of the map's mass inside the lung fields of the prepared image (None when no
          lung was found or the map is empty), ``lung_flagged`` (True when it is under
          :data:`cxrcore.lungs.geometry.LUNG_SHARE_WARN`: most of the evidence is outside the lungs) and
          ``lungs``: the :class:`cxrcore.lungs.geometry.Lungs` found (its ``mask`` outlines them on the input);
        - ``faithfulness``: ``{"steps", "baseline", "describe", "deletion_curve", "insertion_curve"}``.

        ``image`` is a file, bytes, or an image already prepared by :meth:`prepare`. Everything is computed
        once per (image, method, class, steps, baseline), the lungs once per image. Raises ImageDecodeError for an
        unreadable image, ValueError for an unknown method or class, RunError when the shipped lung model is
        missing."""
        faithfulness.check_settings(steps, baseline)
        if class_index is not None and (
            isinstance(class_index, bool)
            or not isinstance(class_index, (int, np.integer))
            or not 0 <= class_index < len(self.labels)
        ):
            raise ValueError(f"class_index must be an integer in 0..{len(self.labels) - 1}, got {class_index!r}")
        prepared = image if isinstance(image, np.ndarray) else self.prepare(image, name)
        digest = hashlib.sha1(np.ascontiguousarray(prepared).tobytes()).hexdigest()
        probs, features = self._remember((digest, "outputs"), lambda: self.outputs(prepared[None]))
        target = int(np.argmax(probs[0])) if class_index is None else int(class_index)
        heat = self.explanation_map(prepared, method, target)
        found = self._remember(
            (digest, "scores", method, target, steps, baseline),
            lambda: faithfulness.scores(prepared, heat, target, self.probabilities, steps=steps, baseline=baseline),
        )
        share = faithfulness.border_share(heat)
        lungs = self.lungs(prepared)
        inside = faithfulness.map_lung_share(heat, lungs)
        shown = name or (None if isinstance(image, np.ndarray) else _name(image)) or "image"
        return {
            **self.result(shown, probs[0], None if features is None else features[0], operating_point),
            "input": prepared,
            "heatmap": heat,
            "method": method,
            "class_index": target,
            "class": self.labels[target],
            "deletion": found["deletion"],
            "insertion": found["insertion"],
            "border_share": share,
            "border_flagged": faithfulness.border_flagged(share),
            "lung_share": inside,
            "lung_flagged": faithfulness.lung_flagged(inside),
            "lungs": lungs,
            "faithfulness": {
                "steps": steps,
                "baseline": baseline,
                "describe": faithfulness.describe(steps, baseline),
                "deletion_curve": found["deletion_curve"],
                "insertion_curve": found["insertion_curve"],
            },
        }

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

        - ``task``: ``"classes"`` or ``"findings"``;
        - ``image``, ``label`` (the most probable class, or finding), ``confidence``, ``probabilities``
          (calibrated);
        - ``decision``: ``{"operating_point", "name", "thresholds", "positive", "withheld"}``: ``positive``, the
          classes whose probability is at or above their threshold at ``operating_point``; for an image
          flagged as unlike the training data no decision is made: ``positive`` is None and ``withheld``
          says why (None otherwise). The whole ``decision`` is None for a run without operating points;
        - ``unlike_training``: ``{"score", "threshold", "percentile", "flagged"}`` (None without feature statistics
          or ``features``); when flagged, the probabilities are kept but are not to be trusted;
        - for a findings run, ``findings``: one ``{"finding", "probability", "threshold", "positive"}`` per
          finding, the positive ones first, each group by probability, highest first (``threshold`` at
          ``operating_point``, None where the finding has none; ``positive`` None when no decision is made).
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
                "thresholds": {
                    c: self.operating_points["thresholds"].get(c, {}).get(operating_point) for c in self.labels
                },
                "positive": [c for c, yes in zip(self.labels, called) if yes],
                "withheld": None,
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
        if decision is not None and unlike is not None and unlike["flagged"]:
            decision.update(positive=None, withheld=WITHHELD)
        found = {
            "task": self.task,
            "image": name,
            "label": self.labels[top],
            "confidence": float(probs[top]),
            "probabilities": {label: float(p) for label, p in zip(self.labels, probs)},
            "decision": decision,
            "unlike_training": unlike,
        }
        if self.multi_label:
            found["findings"] = findings_list(self.labels, probs, decision, self.tested)
        return found


def findings_list(findings: Sequence[str], probs, decision: dict | None, tested: dict | None = None) -> list[dict]:
    """Each finding's ``{"finding", "probability", "threshold", "positive", "test_auc", "test_auc_ci",
    "not_evaluated"}``: those called positive by ``decision`` first, then the others, each group by probability,
    highest first (ties in label order). Without a decision (none, or withheld) thresholds are kept where known
    and ``positive`` is None. ``tested`` (the run's test metrics) says how far each probability was measured:
    its test AUC and interval, or why the finding was not evaluated (too few positive images)."""
    called = None if decision is None or decision["positive"] is None else set(decision["positive"])
    thresholds = (decision or {}).get("thresholds") or {}
    measured = (tested or {}).get("findings") or {}
    missing = (tested or {}).get("not_evaluated") or {}
    rows = [
        {
            "finding": name,
            "probability": float(p),
            "threshold": thresholds.get(name),
            "positive": None if called is None else name in called,
            "test_auc": (measured.get(name) or {}).get("auc"),
            "test_auc_ci": ((measured.get(name) or {}).get("ci") or {}).get("auc"),
            "not_evaluated": missing.get(name),
        }
        for name, p in zip(findings, probs)
    ]
    order = sorted(range(len(rows)), key=lambda i: (not rows[i]["positive"], -rows[i]["probability"], i))
    return [rows[i] for i in order]


def _name(source: ImageSource) -> str:
    return f"<{len(source)} bytes>" if isinstance(source, (bytes, bytearray)) else str(source)
