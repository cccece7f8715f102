"""Lung fields: the lung segmentation model shipped with CXR Lab and what is built on it (see
docs/lungs.md). Importing this package loads nothing heavy; TensorFlow comes with :mod:`.model` and :mod:`.segment`."""

#: the lung model's encoders: a plain U-Net, or a U-Net decoder on a MobileNetV2 of that width (ImageNet weights)
ENCODERS = ("unet", "mobilenetv2_0.35", "mobilenetv2_0.5", "mobilenetv2_1.0")
