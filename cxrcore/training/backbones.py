"""Backbone registry: each CNN described as data (builder, input size, preprocessing, Grad-CAM layer).

Plain data with no TensorFlow import, so listing backbones and checking a configuration
are instant; the Keras pieces the entries name live in :mod:`cxrcore.training.layers` and
:mod:`cxrcore.training.model`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import ConfigError

PREPROCESS_MODES = ("caffe", "tf", "torch", "unit", "none")


@dataclass(frozen=True)
class Backbone:
    """One registry entry."""

    name: str
    builder: str  # keras.applications class name, or "simple_cnn"
    input_size: int  # default square input size
    preprocess: str  # a PREPROCESS_MODES entry
    gradcam_layer: str  # last conv-block output, by layer name
    unfreeze: int  # default number of top layers unfrozen in stage 2
    description: str
    kwargs: dict = field(default_factory=dict)
    imagenet_file: str = ""  # Keras's cache file name for the no-top ImageNet weights at 224

    @property
    def pretrained(self) -> bool:
        return bool(self.imagenet_file)


def _mnv2(alpha: str) -> Backbone:
    return Backbone(
        f"mobilenetv2_{alpha}",
        "MobileNetV2",
        224,
        "tf",
        "out_relu",
        20,
        f"MobileNetV2, width {alpha}: small and fast, good on a CPU",
        {"alpha": float(alpha)},
        f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{alpha}_224_no_top.h5",
    )


REGISTRY: dict[str, Backbone] = {
    b.name: b
    for b in [
        Backbone(
            "resnet50",
            "ResNet50",
            224,
            "caffe",
            "conv5_block3_out",
            30,
            "ResNet50 (reference write-ups 1 and 5)",
            {},
            "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
        ),
        Backbone(
            "resnet152v2",
            "ResNet152V2",
            224,
            "tf",
            "post_relu",
            30,
            "ResNet152V2 (reference write-up 3)",
            {},
            "resnet152v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
        ),
        Backbone(
            "densenet121",
            "DenseNet121",
            224,
            "torch",
            "relu",
            50,
            "DenseNet121 (CheXNet's backbone)",
            {},
            "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5",
        ),
        Backbone(
            "densenet169",
            "DenseNet169",
            224,
            "torch",
            "relu",
            50,
            "DenseNet169 (reference write-up 2)",
            {},
            "densenet169_weights_tf_dim_ordering_tf_kernels_notop.h5",
        ),
        Backbone(
            "vgg16",
            "VGG16",
            224,
            "caffe",
            "block5_conv3",
            4,
            "VGG16 (reference write-up 4)",
            {},
            "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
        ),
        Backbone(
            "efficientnetb0",
            "EfficientNetB0",
            224,
            "none",
            "top_activation",
            20,
            "EfficientNetB0",
            {},
            "efficientnetb0_notop.h5",
        ),
        _mnv2("0.35"),
        _mnv2("0.5"),
        _mnv2("1.0"),
        Backbone(
            "mobilenet_0.25",
            "MobileNet",
            224,
            "tf",
            "conv_pw_13_relu",
            12,
            "MobileNet v1, width 0.25: the smallest pretrained backbone",
            {"alpha": 0.25},
            "mobilenet_2_5_224_tf_no_top.h5",
        ),
        Backbone(
            "simple_cnn",
            "simple_cnn",
            128,
            "unit",
            "cnn_conv4",
            0,
            "A small custom CNN trained from scratch (reference write-up 3)",
        ),
    ]
}


def get_backbone(name: str) -> Backbone:
    """Registry entry by name; :class:`ConfigError` listing the valid names otherwise."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown backbone '{name}'; choose one of: {', '.join(REGISTRY)}") from None


def list_backbones() -> list[dict]:
    """Registry as plain dicts (for ``python -m cxrcore backbones`` and the dashboard)."""
    return [
        {
            "name": b.name,
            "input_size": b.input_size,
            "preprocess": b.preprocess,
            "gradcam_layer": b.gradcam_layer,
            "unfreeze": b.unfreeze,
            "pretrained": b.pretrained,
            "imagenet_file": b.imagenet_file,
            "description": b.description,
        }
        for b in REGISTRY.values()
    ]
