"""Model assembly: backbone + head as one flat functional graph, and stage freezing.

The backbone's layers are wired directly between the input and the head (no nested
``Model``), which keeps every conv layer reachable for Grad-CAM. Layer names:
``image`` (input), ``preprocess``, the backbone's own names, ``head_*``, ``predictions``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import keras

from ..config import HeadConfig
from ..errors import RunError, WeightsError
from .backbones import Backbone, get_backbone
from .layers import Preprocess, simple_cnn

_NON_BACKBONE = ("image", "preprocess", "predictions")


def keras_models_dir() -> Path:
    """Where ``weights="imagenet"`` looks for (and downloads) weight files.

    Keras reads ``KERAS_HOME`` once, when it is imported."""
    try:
        from keras.src.backend.config import keras_home

        return Path(keras_home()) / "models"
    except ImportError:  # a future Keras that moved it
        return Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras") / "models"


def resolve_weights(spec: Backbone, weights: str):
    if weights in ("none", "", None):
        return None
    if weights == "imagenet":
        if not spec.pretrained:
            raise WeightsError(f"{spec.name} has no ImageNet weights; use --weights none")
        return "imagenet"
    path = Path(weights).expanduser()
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    return str(path)


def _missing_download(exc: Exception, spec: Backbone) -> WeightsError:
    urls = re.findall(r"https?://\S+", str(exc))
    fname = urls[0].rstrip(":,").rsplit("/", 1)[-1] if urls else spec.imagenet_file
    return WeightsError(
        f"ImageNet weights for {spec.name} are not on this machine and could not be downloaded: "
        f"put {fname} in {keras_models_dir()}/ (Keras's cache; KERAS_HOME moves it) "
        f"or pass --weights PATH to a weights file"
    )


def application(spec: Backbone, source: str | None, input_tensor) -> keras.Model:
    """The ``keras.applications`` network of a registry entry, without its top, on ``input_tensor``, with
    ``source`` weights (from :func:`resolve_weights`); a weights file that does not fit and ImageNet weights
    that cannot be downloaded are :class:`WeightsError` saying what to do."""
    constructor = getattr(keras.applications, spec.builder)
    try:
        return constructor(include_top=False, weights=source, input_tensor=input_tensor, **spec.kwargs)
    except (ValueError, OSError) as exc:
        if source not in (None, "imagenet"):
            raise WeightsError(
                f"weights file {source} cannot be loaded into {spec.name}: {str(exc).splitlines()[0]}"
            ) from None
        raise
    except Exception as exc:  # keras.utils.get_file raises a bare Exception offline
        if source == "imagenet" and "fetch failure" in str(exc):
            raise _missing_download(exc, spec) from None
        raise


def build_model(
    backbone: str,
    num_classes: int,
    *,
    image_size: int | None = None,
    weights: str = "imagenet",
    head: HeadConfig | None = None,
    multi_label: bool = False,
) -> keras.Model:
    """Backbone + head, softmax over ``num_classes`` (with ``multi_label``, one sigmoid per finding); input is
    (size, size, 3) RGB in 0..255."""
    spec = get_backbone(backbone)
    head = head or HeadConfig()
    size = image_size or spec.input_size
    source = resolve_weights(spec, weights)
    inputs = keras.Input((size, size, 3), name="image")
    x = Preprocess(spec.preprocess, name="preprocess")(inputs)
    if spec.builder == "simple_cnn":
        features = simple_cnn(x)
    else:
        features = application(spec, source, x).output
    x = _head(features, head)
    activation = "sigmoid" if multi_label else "softmax"
    outputs = keras.layers.Dense(num_classes, activation=activation, dtype="float32", name="predictions")(x)
    return keras.Model(inputs, outputs, name=f"cxr_{spec.name.replace('.', '_')}")


def _head(x, head: HeadConfig):
    if head.pooling == "avg":
        x = keras.layers.GlobalAveragePooling2D(name="head_pool")(x)
    elif head.pooling == "max":
        x = keras.layers.GlobalMaxPooling2D(name="head_pool")(x)
    else:
        x = keras.layers.Flatten(name="head_pool")(x)
    if head.batch_norm:
        x = keras.layers.BatchNormalization(name="head_bn")(x)
    for i, units in enumerate(head.dense_units):
        x = keras.layers.Dense(units, activation="relu", name=f"head_dense{i}")(x)
        if head.dropout:
            x = keras.layers.Dropout(head.dropout, name=f"head_dropout{i}")(x)
    if not head.dense_units and head.dropout:
        x = keras.layers.Dropout(head.dropout, name="head_dropout")(x)
    return x


def output_activation(model) -> str:
    """The name of ``model``'s output activation (``"softmax"`` for a classifier, ``"sigmoid"`` for a
    findings model), read from the layer that makes its first output; ``"linear"`` when it has none."""
    layer = model.get_layer(model.output_names[0])
    activation = getattr(layer, "activation", None)
    return getattr(activation, "__name__", "linear") if activation is not None else "linear"


def is_multi_label(model: keras.Model) -> bool:
    """Whether ``model`` is a findings model: sigmoid outputs, one per finding."""
    return output_activation(model) == "sigmoid"


def backbone_layers(model: keras.Model) -> list:
    """The backbone's layers, in graph order (input, preprocessing and head excluded)."""
    return [
        layer
        for layer in model.layers
        if layer.name not in _NON_BACKBONE
        and not layer.name.startswith("head_")
        and not isinstance(layer, keras.layers.InputLayer)
    ]


def finetune_layers(layers: list, unfreeze: int) -> list:
    """The backbone layers stage 2 unfreezes: the top ``unfreeze`` (-1: all; 0: none)."""
    return layers if unfreeze < 0 else layers[len(layers) - unfreeze :] if unfreeze else []


def set_stage(model: keras.Model, stage: str, *, unfreeze: int = 0, pretrained: bool = True) -> int:
    """Freeze for a training stage; returns the number of trainable backbone layers.

    ``stage="frozen"``: the backbone is frozen, the head trains. ``stage="finetune"``:
    the top ``unfreeze`` backbone layers train too (-1 = all), BatchNorm layers stay
    frozen (in Keras 3 a frozen BatchNorm also runs in inference mode, which is what
    fine-tuning needs). A backbone without pretrained weights trains whole in both
    stages, BatchNorm included: freezing random features would teach nothing.
    After changing ``trainable`` the model must be compiled again.
    """
    layers = backbone_layers(model)
    for layer in model.layers:
        layer.trainable = True
    if not pretrained:
        return len(layers)
    if stage == "frozen":
        chosen = []
    elif stage == "finetune":
        chosen = finetune_layers(layers, unfreeze)
    else:
        raise ValueError(f"unknown stage {stage!r}")
    chosen_ids = {id(layer) for layer in chosen}
    count = 0
    for layer in layers:
        train = id(layer) in chosen_ids and not isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = train
        count += bool(train and layer.weights)
    return count


def inference_function(model: keras.Model, image_size: int):
    """``model(x, training=False)`` compiled once for any batch of (size, size, 3) float32 images.

    On a 2-core CPU a 224 px MobileNetV2 takes ~10 ms per image this way, against ~110 ms
    for an eager call and ~55 ms for ``model.predict`` (bench/bench_core.py)."""
    import tensorflow as tf

    def forward(images):
        return model(images, training=False)

    spec = tf.TensorSpec((None, image_size, image_size, 3), tf.float32)
    return tf.function(forward, input_signature=[spec], autograph=False)


def has_features(model: keras.Model) -> bool:
    """Whether :func:`feature_model` applies: the model has one backbone and its ``head_pool``."""
    return any(layer.name == "head_pool" for layer in model.layers)


def feature_model(model: keras.Model) -> keras.Model:
    """``model`` with a second output: the global average of the backbone's last feature map (the
    input of the head's ``head_pool`` layer), the features :mod:`cxrcore.stats.ood` compares.
    Outputs ``[probabilities, features]``."""
    feature_map = model.get_layer("head_pool").input
    pooled = keras.layers.GlobalAveragePooling2D(name="ood_features")(feature_map)
    return keras.Model(model.inputs, [model.outputs[0], pooled], name=f"{model.name}_with_features")


def load_model(path: str | Path) -> keras.Model:
    """Load a saved ``model.keras`` (the Preprocess layer is registered on import)."""
    try:
        return keras.saving.load_model(str(path), compile=False)
    except (OSError, ValueError, FileNotFoundError) as exc:
        raise RunError(f"cannot load model {path}: {str(exc).splitlines()[0]}") from None
