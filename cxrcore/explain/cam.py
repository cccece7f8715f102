"""Class activation maps (Grad-CAM, Grad-CAM++, Score-CAM) and heatmap overlays.

The maps come from tf-keras-vis 0.8.7, which works under Keras 3 because every
cxrcore model is one flat functional graph (see model.py): the conv layer named in
the backbone registry (``Backbone.gradcam_layer``) is a direct layer of the model.

How tf-keras-vis is used here, and why:

* One clone of the caller's model, with its output activation replaced by a linear one
  (``model_modifier=ReplaceToLinear()``, ``clone=True``: it sets the activation of every
  output layer to linear, whatever it was: a classifier's softmax, a findings model's
  sigmoid), is made once, lazily, by the first visualizer; the other visualizers reuse that
  clone. The caller's model keeps its activation and its weights. The clone is a snapshot: an
  Explainer made before further training explains the old weights.
* Gradients are taken on the logits (the class or finding score before its activation), which
  is what Grad-CAM's paper does. Score-CAM scores masked images by probability, as in its
  paper: tf-keras-vis applies softmax to what the clone's ``predict`` returns before scoring,
  which for a classifier turns the logits back into its probabilities. A findings model's
  probability is the sigmoid of its own logit, not a softmax over findings, so for it the
  clone's ``predict`` (ours, :meth:`Explainer._patch_predict`) returns
  ``[log sigmoid(z), log sigmoid(-z)]`` (2k columns): their softmax is
  ``[sigmoid(z), 1 - sigmoid(z)] / k`` exactly (each pair sums to 1), and the score is ``k``
  times column ``j``: finding ``j``'s sigmoid probability.
* The layer is passed by name with ``seek_penultimate_conv_layer=False``: with the
  library's default it would walk back from a named activation layer (``out_relu``,
  ``cnn_conv4``) to the ``Conv2D`` before it, i.e. to pre-BatchNorm, pre-ReLU
  features, which is not the layer the registry names.
* Grad-CAM itself is computed here, in one compiled ``tf.function`` on the same clone (gradient of
  the class logit at the layer, averaged per channel, weighted sum, ReLU: what tf-keras-vis's
  ``Gradcam`` computes, checked against it in the tests): the library runs its gradient tape
  eagerly, about 0.35 s per image for MobileNetV2 here, against a few hundredths compiled, and
  Predict's one-second budget also pays for the faithfulness scores.
* Score-CAM is bounded to ``max_n`` feature maps (the "Faster Score-CAM" variant)
  and its masked images go through one compiled forward pass in batches, instead of
  ``model.predict`` (which prints a progress bar and re-traces).
* The library's own min-max normalisation adds 1e-7 to the range, which flattens a
  map whose values are all tiny (an untrained model); maps are normalised here
  instead, and a constant or non-finite map comes back as all zeros.

Overlays use small 256-entry colour lookup tables built from plotly's colour
scales, so matplotlib is not needed.
"""

from __future__ import annotations

import io as _io
import threading
from functools import cache

import numpy as np
from PIL import Image

from ..data.pixels import resize
from ..training.backbones import get_backbone

METHODS = ("gradcam", "gradcam++", "scorecam")
METHOD_LABELS = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "scorecam": "Score-CAM"}

# plotly colour-scale name for each colormap (anchors evenly spaced from 0 to 1)
_PLOTLY_SCALES = {"jet": "Jet", "turbo": "Turbo", "viridis": "Viridis", "inferno": "Inferno", "hot": "Hot"}
COLORMAPS = tuple(_PLOTLY_SCALES)


# --------------------------------------------------------------------------- colours


def _check_colormap(name: str) -> str:
    if name not in _PLOTLY_SCALES:
        raise ValueError(f"unknown colormap {name!r}; choose one of: {', '.join(COLORMAPS)}")
    return name


@cache
def _lut(name: str) -> np.ndarray:
    import plotly.colors as pc

    anchors = getattr(pc.sequential, _PLOTLY_SCALES[name])
    rgb, _ = pc.convert_colors_to_same_type(list(anchors), colortype="tuple")
    rgb = np.asarray(rgb, dtype=np.float64)  # (n, 3) in 0..1
    stops = np.linspace(0.0, 1.0, len(rgb))
    grid = np.linspace(0.0, 1.0, 256)
    table = np.stack([np.interp(grid, stops, rgb[:, c]) for c in range(3)], axis=1)
    table = np.clip(np.rint(table * 255.0), 0, 255).astype(np.uint8)
    table.setflags(write=False)
    return table


def colormap_lut(name: str) -> np.ndarray:
    """The 256x3 ``uint8`` lookup table of a :data:`COLORMAPS` entry (read-only)."""
    return _lut(_check_colormap(name))


def apply_colormap(heatmap01: np.ndarray, name: str = "jet") -> np.ndarray:
    """Colour a (H, W) map with values in [0, 1]: ``uint8`` (H, W, 3).

    Values outside [0, 1] are clipped; NaN counts as 0."""
    table = colormap_lut(name)
    heat = np.asarray(heatmap01, dtype=np.float32)
    if heat.ndim != 2:
        raise ValueError(f"heatmap must be 2-D (H, W), got shape {heat.shape}")
    heat = np.clip(np.nan_to_num(heat, nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0)
    return table[np.rint(heat * 255.0).astype(np.intp)]


# --------------------------------------------------------------------------- images


def _as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (1, 3):
        raise ValueError(f"image must be (H, W, 3) RGB or (H, W) gray, got shape {arr.shape}")
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    if arr.dtype != np.uint8:
        arr = np.clip(np.rint(arr.astype(np.float64)), 0, 255).astype(np.uint8)
    return arr


def overlay(image_uint8: np.ndarray, heatmap01: np.ndarray, *, colormap: str = "jet", alpha: float = 0.4) -> np.ndarray:
    """Blend a coloured heatmap onto an image: ``(1 - alpha) * image + alpha * colours``.

    The heatmap is resized (bilinear) to the image's size when they differ.
    Returns ``uint8`` (H, W, 3)."""
    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be between 0 and 1, got {alpha}")
    _check_colormap(colormap)
    image = _as_rgb_uint8(image_uint8)
    heat = np.asarray(heatmap01, dtype=np.float32)
    if heat.ndim != 2:
        raise ValueError(f"heatmap must be 2-D (H, W), got shape {heat.shape}")
    heat = np.nan_to_num(heat, nan=0.0, posinf=1.0, neginf=0.0)
    colours = apply_colormap(resize(heat, image.shape[0], image.shape[1]), colormap)
    blended = (1.0 - alpha) * image.astype(np.float32) + alpha * colours.astype(np.float32)
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def to_png_bytes(rgb_uint8: np.ndarray) -> bytes:
    """PNG-encode a ``uint8`` RGB (or gray) image."""
    buf = _io.BytesIO()
    Image.fromarray(_as_rgb_uint8(rgb_uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _normalise(cam: np.ndarray) -> np.ndarray:
    """Min-max to [0, 1] as float32; constant or non-finite maps become zeros."""
    cam = np.asarray(cam, dtype=np.float64)
    if not np.all(np.isfinite(cam)):
        if not np.any(np.isfinite(cam)):
            return np.zeros(cam.shape, dtype=np.float32)
        cam = np.nan_to_num(cam, nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = float(cam.min()), float(cam.max())
    if not hi > lo or (hi - lo) <= 1e-6 * max(abs(hi), abs(lo)):
        return np.zeros(cam.shape, dtype=np.float32)
    return np.clip((cam - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


# --------------------------------------------------------------------------- explainer


class Explainer:
    """Class activation maps of one model at one conv layer.

    ``Explainer(model, layer_name)`` or ``Explainer.for_predictor(predictor)``.
    Nothing is built until the first map: the first call clones the model (about
    0.5 s for MobileNetV2 on a 2-core CPU) and the first Score-CAM traces a compiled
    forward pass (about 2 s); keep the Explainer (not just the model) between calls.
    Calls are serialised by a lock, so one Explainer can be shared between threads.
    """

    def __init__(self, model, layer_name: str, *, scorecam_max_n: int = 32, scorecam_batch_size: int = 32):
        names = [layer.name for layer in model.layers]
        if layer_name not in names:
            raise ValueError(
                f"layer {layer_name!r} not found in model {model.name!r} "
                f"({len(names)} layers; last ones: {', '.join(names[-6:])})"
            )
        shape = tuple(model.get_layer(layer_name).output.shape)
        if len(shape) != 4:
            raise ValueError(
                f"layer {layer_name!r} has output shape {shape}; Grad-CAM needs a "
                f"conv feature map (batch, height, width, channels)"
            )
        in_shape = tuple(model.inputs[0].shape)
        if len(model.inputs) != 1 or len(in_shape) != 4 or in_shape[-1] != 3 or None in in_shape[1:3]:
            raise ValueError(f"model input must be one (height, width, 3) image, got {in_shape}")
        if scorecam_max_n < 1 or scorecam_batch_size < 1:
            raise ValueError("scorecam_max_n and scorecam_batch_size must be at least 1")
        self.model = model
        self.layer_name = layer_name
        self.input_size = (int(in_shape[1]), int(in_shape[2]))
        self.num_classes = int(model.outputs[0].shape[-1])
        #: a findings model (sigmoid outputs): Score-CAM weighs masked images by each finding's sigmoid
        from ..training.model import is_multi_label  # lazy: TensorFlow

        self.multi_label = is_multi_label(model)
        self.channels = int(shape[-1])
        self.scorecam_max_n = int(scorecam_max_n)
        self.scorecam_batch_size = int(scorecam_batch_size)
        self._visualizers: dict[str, object] = {}
        self._forward = None
        self._gradcam = None
        self._lock = threading.RLock()

    @classmethod
    def for_predictor(cls, predictor, **kwargs) -> Explainer | EnsembleExplainer:
        """An Explainer for a :class:`cxrcore.predict.Predictor`, at its backbone's registry layer; for an
        ensemble run, an :class:`EnsembleExplainer` over its members."""
        from ..training.model import load_model  # lazy: TensorFlow

        members = predictor.run.members()
        if members:
            explainers = [
                cls(load_model(m.require_model()), get_backbone(m.config().backbone).gradcam_layer, **kwargs)
                for m in members
            ]
            return EnsembleExplainer(predictor.model, explainers)
        layer = get_backbone(predictor.run.config().backbone).gradcam_layer
        return cls(predictor.model, layer, **kwargs)

    # -- visualizers ---------------------------------------------------------

    def _visualizer(self, method: str):
        with self._lock:
            vis = self._visualizers.get(method)
            if vis is not None:
                return vis
            from tf_keras_vis.gradcam import Gradcam
            from tf_keras_vis.gradcam_plus_plus import GradcamPlusPlus
            from tf_keras_vis.scorecam import Scorecam
            from tf_keras_vis.utils.model_modifiers import ReplaceToLinear

            from ..training.model import output_activation  # lazy: TensorFlow

            cls = {"gradcam": Gradcam, "gradcam++": GradcamPlusPlus, "scorecam": Scorecam}[method]
            shared = next(iter(self._visualizers.values()), None)
            if shared is None:
                # the one clone (softmax or sigmoid -> linear); the caller's model is not modified
                vis = cls(self.model, model_modifier=ReplaceToLinear(), clone=True)
                left = output_activation(vis.model)
                if left != "linear":  # maps of probabilities, not logits, would be silently wrong
                    raise RuntimeError(f"the explainer's clone still ends in {left}, not a linear output")
                self._patch_predict(vis.model)
            else:
                vis = cls(shared.model, model_modifier=None, clone=False)
            self._visualizers[method] = vis
            return vis

    def _patch_predict(self, clone) -> None:
        """Score-CAM calls ``model.predict(masked, batch_size=...)``; on the clone (ours
        only) route that through one compiled forward pass: silent, traced once. For a
        findings model it returns ``[log sigmoid(z), log sigmoid(-z)]``, whose softmax (which
        Score-CAM takes) holds each finding's sigmoid probability over k (module docstring)."""
        import tensorflow as tf

        spec = tf.TensorSpec((None, *self.input_size, 3), tf.float32)
        forward = tf.function(lambda x: clone(x, training=False), input_signature=[spec], autograph=False)
        self._forward = forward
        if self.multi_label:
            pairs = tf.function(
                lambda x: _sigmoid_pairs(clone(x, training=False)), input_signature=[spec], autograph=False
            )
        else:
            pairs = forward

        def predict(x, batch_size=None, **_ignored):
            if isinstance(x, (list, tuple)):
                x = x[0]
            x = np.asarray(x, dtype=np.float32)
            step = batch_size or self.scorecam_batch_size
            return np.concatenate([np.asarray(pairs(x[i : i + step])) for i in range(0, len(x), step)])

        object.__setattr__(clone, "predict", predict)

    def _gradcam_function(self):
        """Grad-CAM at ``layer_name`` on the linear clone, compiled once: (image batch, class or -1 for the
        top logit) -> ReLU'd maps at the layer's resolution."""
        with self._lock:
            if self._gradcam is not None:
                return self._gradcam
            import keras
            import tensorflow as tf

            clone = self._visualizer("gradcam").model
            both = keras.Model(clone.inputs, [clone.get_layer(self.layer_name).output, clone.outputs[0]])
            spec = tf.TensorSpec((None, *self.input_size, 3), tf.float32)

            def gradcam(images, class_index):
                with tf.GradientTape() as tape:
                    features, logits = both(images, training=False)
                    chosen = tf.where(class_index < 0, tf.argmax(logits, axis=-1, output_type=tf.int32), class_index)
                    score = tf.gather(logits, chosen, axis=-1, batch_dims=1)
                grads = tape.gradient(score, features)
                weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
                return tf.nn.relu(tf.reduce_sum(features * weights, axis=-1))

            self._gradcam = tf.function(
                gradcam, input_signature=[spec, tf.TensorSpec((None,), tf.int32)], autograph=False
            )
            return self._gradcam

    # -- maps -----------------------------------------------------------------

    def _prepare(self, image_uint8: np.ndarray) -> np.ndarray:
        image = _as_rgb_uint8(image_uint8)
        h, w = self.input_size
        if image.shape[:2] != (h, w):
            image = resize(image, h, w)
        return image.astype(np.float32)[None]

    def predicted_class(self, image_uint8: np.ndarray) -> int:
        """Index of the class the model predicts for ``image_uint8``."""
        if self._forward is None:
            self._visualizer("gradcam")  # makes the clone and its forward pass
        return int(np.argmax(np.asarray(self._forward(self._prepare(image_uint8)))[0]))

    def heatmap(self, image_uint8: np.ndarray, class_index: int | None = None, method: str = "gradcam") -> np.ndarray:
        """The class activation map of ``image_uint8``: ``float32`` (H, W) in [0, 1] at the
        model's input size (the image is resized to it first when needed).

        ``class_index`` None explains the predicted class. A map with no positive
        evidence (constant after the ReLU) is all zeros."""
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; choose one of: {', '.join(METHODS)}")
        if class_index is not None:
            if (
                isinstance(class_index, bool)
                or not isinstance(class_index, (int, np.integer))
                or not 0 <= int(class_index) < self.num_classes
            ):
                raise ValueError(f"class_index must be an integer in 0..{self.num_classes - 1}, got {class_index!r}")
            class_index = int(class_index)
        seed = self._prepare(image_uint8)
        if method == "gradcam":
            chosen = -1 if class_index is None else class_index
            cam = np.asarray(self._gradcam_function()(seed, np.array([chosen], np.int32)))[0]
            return _normalise(resize(cam.astype(np.float32), *self.input_size))
        vis = self._visualizer(method)
        with self._lock:
            if method == "scorecam":
                if class_index is None:
                    class_index = self.predicted_class(seed[0])
                scale = float(self.num_classes) if self.multi_label else 1.0  # undoes the softmax's 1 / k
                cam = vis(
                    lambda out: out[:, class_index] * scale,
                    seed,
                    penultimate_layer=self.layer_name,
                    seek_penultimate_conv_layer=False,
                    normalize_cam=False,
                    max_N=min(self.scorecam_max_n, self.channels),
                    batch_size=self.scorecam_batch_size,
                )
            else:
                if class_index is None:  # the top logit, from the same forward pass
                    import tensorflow as tf

                    def score(out):
                        return tf.gather(out, tf.argmax(out, axis=-1), axis=-1, batch_dims=1)
                else:

                    def score(out):
                        return out[:, class_index]

                cam = vis(
                    score,
                    seed,
                    penultimate_layer=self.layer_name,
                    seek_penultimate_conv_layer=False,
                    normalize_cam=False,
                )
        cam = np.asarray(cam)
        cam = cam.reshape(cam.shape[-2:]) if cam.ndim == 3 else cam
        return _normalise(resize(cam.astype(np.float32), *self.input_size))


def _sigmoid_pairs(logits):
    """``[log sigmoid(z), log sigmoid(-z)]`` along the last axis (2k columns): their softmax is
    ``[sigmoid(z), 1 - sigmoid(z)] / k``, so Score-CAM's softmax gives each finding's sigmoid over k."""
    import tensorflow as tf

    return tf.concat([tf.math.log_sigmoid(logits), tf.math.log_sigmoid(-logits)], axis=-1)


class EnsembleExplainer:
    """An ensemble's maps: the mean of its members' maps for the ensemble's class (each member's map at
    its own layer, resized to the ensemble's input size), rescaled to [0, 1]. Members mirrored by
    test-time augmentation are explained on the image as given."""

    def __init__(self, model, members: list[Explainer]):
        in_shape = tuple(model.inputs[0].shape)
        self.model = model
        self.members = members
        self.input_size = (int(in_shape[1]), int(in_shape[2]))
        self.num_classes = int(model.outputs[0].shape[-1])

    def predicted_class(self, image_uint8: np.ndarray) -> int:
        image = _as_rgb_uint8(image_uint8)
        h, w = self.input_size
        if image.shape[:2] != (h, w):
            image = resize(image, h, w)
        return int(np.argmax(np.asarray(self.model(image.astype(np.float32)[None], training=False))[0]))

    def heatmap(self, image_uint8: np.ndarray, class_index: int | None = None, method: str = "gradcam") -> np.ndarray:
        if class_index is None:
            class_index = self.predicted_class(image_uint8)
        maps = [
            resize(np.asarray(m.heatmap(image_uint8, class_index, method), dtype=np.float32), *self.input_size)
            for m in self.members
        ]
        return member_maps_mean(maps)


def member_maps_mean(maps: list[np.ndarray]) -> np.ndarray:
    """The mean of the members' maps (each (H, W) in [0, 1] at the same size), rescaled to [0, 1]."""
    mean = np.mean(np.stack(maps), axis=0)
    top = float(mean.max())
    return (mean / top).astype(np.float32) if top > 0 else np.zeros_like(mean, dtype=np.float32)
