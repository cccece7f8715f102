"""The lung segmentation network: a small U-Net, plain or on a MobileNetV2 encoder.

Input: ``(size, size, 1)`` gray pixels in 0..255 (scaled inside the model); output: ``(size, size, 1)``, the
probability that a pixel is lung. The plain U-Net is trained from scratch; the MobileNetV2 encoder starts
from ImageNet weights (``weights="imagenet"``, the standard Keras path, or a weights file's path) and sees
the gray image copied into three channels.
"""

from __future__ import annotations

import keras

from ..errors import ConfigError
from ..training.backbones import get_backbone
from ..training.model import application, resolve_weights
from . import ENCODERS

#: Filters per level of the plain U-Net, from the full-resolution level down to the bottleneck.
UNET_FILTERS = (16, 32, 64, 128, 160)
#: MobileNetV2 layers whose outputs feed the decoder, from 1/2 of the input size down to 1/16.
_MOBILENET_SKIPS = ("block_1_expand_relu", "block_3_expand_relu", "block_6_expand_relu", "block_13_expand_relu")


def _conv_block(x, filters: int, name: str):
    for i in (1, 2):
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv{i}")(x)
        x = keras.layers.BatchNormalization(name=f"{name}_bn{i}")(x)
        x = keras.layers.Activation("relu", name=f"{name}_relu{i}")(x)
    return x


def _decoder(x, skips: list, filters: list[int]):
    for i, (skip, width) in enumerate(zip(skips, filters)):
        x = keras.layers.UpSampling2D(2, interpolation="bilinear", name=f"up{i}")(x)
        x = keras.layers.Concatenate(name=f"up{i}_concat")([x, skip])
        x = _conv_block(x, width, f"up{i}")
    return x


def _plain_unet(inputs):
    x = keras.layers.Rescaling(1 / 255.0, name="scale")(inputs)
    skips = []
    for level, width in enumerate(UNET_FILTERS[:-1]):
        x = _conv_block(x, width, f"down{level}")
        skips.append(x)
        x = keras.layers.MaxPooling2D(2, name=f"pool{level}")(x)
    x = _conv_block(x, UNET_FILTERS[-1], "bottleneck")
    return _decoder(x, skips[::-1], list(UNET_FILTERS[-2::-1]))


def _mobilenet_unet(inputs, encoder: str, weights):

    spec = get_backbone(encoder)
    rgb = keras.layers.Concatenate(name="gray_to_rgb")([inputs, inputs, inputs])
    x = keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="scale")(rgb)
    base = application(spec, resolve_weights(spec, weights), x)
    skips = [base.get_layer(name).output for name in _MOBILENET_SKIPS[::-1]]
    x = base.get_layer("block_16_project").output
    x = _decoder(x, skips, [96, 48, 32, 24])
    x = keras.layers.UpSampling2D(2, interpolation="bilinear", name="up_full")(x)
    return _conv_block(x, 16, "up_full")


def build_lung_model(size: int = 128, encoder: str = "unet", weights: str | None = None) -> keras.Model:
    """A lung segmentation network for ``size x size`` gray input (``size`` a multiple of 16 for the plain
    U-Net, 32 for MobileNetV2). ``weights`` applies to the MobileNetV2 encoder: ``"imagenet"``, a file's path
    or ``None``."""
    if encoder not in ENCODERS:
        raise ConfigError(f"--encoder must be one of {', '.join(ENCODERS)}, got {encoder!r}")
    step = 16 if encoder == "unet" else 32
    if size < step or size % step:
        raise ConfigError(f"--size must be a multiple of {step} for {encoder}, got {size}")
    inputs = keras.Input((size, size, 1), name="gray")
    x = _plain_unet(inputs) if encoder == "unet" else _mobilenet_unet(inputs, encoder, weights)
    outputs = keras.layers.Conv2D(1, 1, activation="sigmoid", dtype="float32", name="lung")(x)
    return keras.Model(inputs, outputs, name=f"lungs_{encoder.replace('.', '_')}")


def dice_bce_loss(truth, predicted):
    """Binary cross-entropy plus (1 - soft Dice) per image: the cross-entropy gets every pixel right, the Dice
    term keeps small lungs from being outweighed by the background."""
    from keras import ops

    truth = ops.cast(truth, predicted.dtype)
    bce = ops.mean(keras.losses.binary_crossentropy(truth, predicted), axis=(1, 2))
    inter = ops.sum(truth * predicted, axis=(1, 2, 3))
    total = ops.sum(truth, axis=(1, 2, 3)) + ops.sum(predicted, axis=(1, 2, 3))
    return bce + 1.0 - (2.0 * inter + 1.0) / (total + 1.0)
