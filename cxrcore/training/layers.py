"""The Keras layers the registry's models are made of: in-graph preprocessing and the custom CNN.

Models take RGB pixels in 0..255 (what :func:`cxrcore.data.io.prepare_image` returns) and
do their backbone's own preprocessing inside the graph, in a :class:`Preprocess`
layer, so a saved ``model.keras`` needs nothing but its input to predict. Importing this
module registers the layers for loading (as ``cxrcore>Preprocess``, ``cxrcore>Calibrate``,
``cxrcore>CalibrateSigmoid``, ``cxrcore>FlipLeftRight``).
"""

from __future__ import annotations

import keras
from keras import ops

from ..evaluation.multilabel import TASK as FINDINGS
from .backbones import PREPROCESS_MODES

_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH_STD = (0.229, 0.224, 0.225)


@keras.saving.register_keras_serializable(package="cxrcore")
class Preprocess(keras.layers.Layer):
    """Keras-applications pixel preprocessing as a layer (0..255 RGB in).

    ``caffe``: RGB->BGR, minus ImageNet means (VGG16, ResNet50); ``tf``: to [-1, 1]
    (ResNetV2, MobileNets); ``torch``: to [0, 1], then ImageNet mean/std (DenseNet);
    ``unit``: to [0, 1] (the custom CNN); ``none``: unchanged (EfficientNet rescales itself).
    """

    def __init__(self, mode: str = "tf", **kwargs):
        super().__init__(**kwargs)
        if mode not in PREPROCESS_MODES:
            raise ValueError(f"unknown preprocess mode {mode!r}")
        self.mode = mode

    def call(self, x):
        x = ops.cast(x, self.compute_dtype)
        if self.mode == "caffe":
            return ops.flip(x, axis=-1) - ops.convert_to_tensor(_CAFFE_MEAN_BGR, dtype=self.compute_dtype)
        if self.mode == "tf":
            return x / 127.5 - 1.0
        if self.mode == "torch":
            mean = ops.convert_to_tensor(_TORCH_MEAN, dtype=self.compute_dtype)
            std = ops.convert_to_tensor(_TORCH_STD, dtype=self.compute_dtype)
            return (x / 255.0 - mean) / std
        if self.mode == "unit":
            return x / 255.0
        return x

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


@keras.saving.register_keras_serializable(package="cxrcore")
class Calibrate(keras.layers.Layer):
    """Temperature scaling of probabilities, ``softmax(log p / T)``: in the graph what
    :func:`cxrcore.evaluation.calibration.apply_temperature` does to a run's outputs (an ensemble
    averages its members' calibrated probabilities)."""

    def __init__(self, temperature: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = float(temperature)

    def call(self, probs):
        logs = ops.log(ops.clip(ops.cast(probs, "float32"), 1e-12, 1.0))
        return ops.softmax(logs / self.temperature, axis=-1)

    def get_config(self):
        return {**super().get_config(), "temperature": self.temperature}


@keras.saving.register_keras_serializable(package="cxrcore")
class CalibrateSigmoid(keras.layers.Layer):
    """Temperature scaling of a findings model's sigmoid probabilities, one temperature per finding:
    ``sigmoid(logit(p_j) / T_j)``, the logit taken as ``log p - log(1 - p)`` with both clipped at 1e-12 as
    :class:`Calibrate` clips. In the graph what :func:`cxrcore.evaluation.multilabel.apply_temperatures` does
    to a findings run's outputs (an export applies it; an ensemble of findings runs averages its members'
    calibrated probabilities)."""

    def __init__(self, temperatures=(1.0,), **kwargs):
        super().__init__(**kwargs)
        values = [float(t) for t in temperatures]
        if not values or not all(t > 0 for t in values):
            raise ValueError(f"temperatures must be positive numbers, one per finding, got {list(temperatures)}")
        self.temperatures = values

    def build(self, input_shape):
        if input_shape[-1] is not None and int(input_shape[-1]) != len(self.temperatures):
            raise ValueError(f"{len(self.temperatures)} temperatures for {input_shape[-1]} findings")
        super().build(input_shape)

    def call(self, probs):
        p = ops.cast(probs, "float32")
        logits = ops.log(ops.clip(p, 1e-12, 1.0)) - ops.log(ops.clip(1.0 - p, 1e-12, 1.0))
        return ops.sigmoid(logits / ops.convert_to_tensor(self.temperatures, dtype="float32"))

    def get_config(self):
        return {**super().get_config(), "temperatures": list(self.temperatures)}


def calibration_of(run, name: str) -> keras.layers.Layer:
    """The layer applying a run's calibration (a :class:`cxrcore.runs.RunDir`): :class:`CalibrateSigmoid` with
    its temperature per finding for a findings run, :class:`Calibrate` with its one temperature otherwise."""
    if run.task() == FINDINGS:
        return CalibrateSigmoid(run.temperatures(), name=name)
    return Calibrate(run.temperature(), name=name)


@keras.saving.register_keras_serializable(package="cxrcore")
class FlipLeftRight(keras.layers.Layer):
    """The image mirrored left to right (test-time augmentation)."""

    def call(self, x):
        return ops.flip(x, axis=2)


def simple_cnn(x):
    """The custom CNN's feature extractor: four conv blocks; returns the last feature map."""
    for i, filters in enumerate((32, 64, 128, 128), start=1):
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"cnn_conv{i}_pre")(x)
        x = keras.layers.BatchNormalization(momentum=0.9, name=f"cnn_bn{i}")(x)
        x = keras.layers.Activation("relu", name=f"cnn_conv{i}")(x)
        if i < 4:
            x = keras.layers.MaxPooling2D(2, name=f"cnn_pool{i}")(x)
    return x
