"""Flat models, preprocessing, stage freezing, weights sources, save/reload."""

from __future__ import annotations

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from conftest import MNV2_035, REPO, copy_weights_to_keras_home, needs_weights
from cxrcore.config import HeadConfig
from cxrcore.errors import ConfigError, WeightsError
from cxrcore.training.backbones import REGISTRY, get_backbone
from cxrcore.training.layers import Preprocess
from cxrcore.training.model import backbone_layers, build_model, set_stage


def test_unknown_backbone_lists_the_valid_names():
    with pytest.raises(ConfigError, match="unknown backbone 'resnet51'.*mobilenetv2_0.35"):
        get_backbone("resnet51")


@pytest.mark.parametrize(
    "mode, pixel, expected",
    [
        ("tf", [0, 127.5, 255], [-1, 0, 1]),
        ("unit", [0, 51, 255], [0, 0.2, 1]),
        ("caffe", [255, 0, 0], [0 - 103.939, 0 - 116.779, 255 - 123.68]),  # RGB -> BGR, minus means
        ("torch", [255, 0, 0], [(1 - 0.485) / 0.229, (0 - 0.456) / 0.224, (0 - 0.406) / 0.225]),
        ("none", [1, 2, 3], [1, 2, 3]),
    ],
)
def test_preprocess_modes(mode, pixel, expected):
    out = Preprocess(mode)(np.array([[[pixel]]], dtype=np.float32))
    np.testing.assert_allclose(np.asarray(out)[0, 0, 0], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(REGISTRY))
def test_every_backbone_builds_flat_with_its_gradcam_layer(name):
    spec = REGISTRY[name]
    model = build_model(name, 3, image_size=64, weights="none")
    assert not any(isinstance(layer, keras.Model) for layer in model.layers), "nested model breaks Grad-CAM"
    layer = model.get_layer(spec.gradcam_layer)
    assert len(layer.output.shape) == 4  # a spatial feature map
    assert model.get_layer("preprocess").mode == spec.preprocess
    assert model.output.shape == (None, 3)


def test_head_options_shape_the_graph():
    model = build_model(
        "simple_cnn",
        2,
        image_size=32,
        weights="none",
        head=HeadConfig(pooling="flatten", dense_units=[16, 8], dropout=0.5, batch_norm=True),
    )
    names = [layer.name for layer in model.layers if layer.name.startswith("head_")]
    assert names == ["head_pool", "head_bn", "head_dense0", "head_dropout0", "head_dense1", "head_dropout1"]
    assert isinstance(model.get_layer("head_pool"), keras.layers.Flatten)
    assert model.get_layer("head_dense1").units == 8


def test_stages_freeze_the_backbone_then_unfreeze_top_layers_but_not_batchnorm():
    model = build_model("mobilenet_0.25", 2, image_size=64, weights="none")
    layers = backbone_layers(model)
    assert set_stage(model, "frozen") == 0
    assert not any(layer.trainable for layer in layers)
    assert model.get_layer("predictions").trainable
    count = set_stage(model, "finetune", unfreeze=6)
    top, rest = layers[-6:], layers[:-6]
    assert not any(layer.trainable for layer in rest)
    for layer in top:
        assert layer.trainable == (not isinstance(layer, keras.layers.BatchNormalization))
    assert count == sum(1 for layer in top if layer.trainable and layer.weights)
    assert set_stage(model, "finetune", unfreeze=-1) == sum(
        1 for layer in layers if layer.weights and not isinstance(layer, keras.layers.BatchNormalization)
    )


def test_a_backbone_without_pretrained_weights_trains_whole():
    model = build_model("simple_cnn", 2, image_size=32, weights="none")
    set_stage(model, "frozen", pretrained=False)
    assert all(layer.trainable for layer in backbone_layers(model))


def test_weights_errors_are_specific(tmp_path):
    with pytest.raises(WeightsError, match="weights file not found: .*nope.h5"):
        build_model("mobilenetv2_0.35", 2, weights=str(tmp_path / "nope.h5"))
    with pytest.raises(WeightsError, match="simple_cnn has no ImageNet weights"):
        build_model("simple_cnn", 2, weights="imagenet")
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not an hdf5 file")
    with pytest.raises(WeightsError, match="bad.h5 cannot be loaded into mobilenetv2_0.35"):
        build_model("mobilenetv2_0.35", 2, weights=str(bad))


@needs_weights
def test_weights_of_another_backbone_are_refused():
    other = MNV2_035.parent / "mobilenet_2_5_224_tf_no_top.h5"
    with pytest.raises(WeightsError, match="cannot be loaded into mobilenetv2_0.35.*mismatch"):
        build_model("mobilenetv2_0.35", 2, weights=str(other))


def test_save_and_reload_gives_the_same_outputs(tmp_path):
    model = build_model("simple_cnn", 3, image_size=32, weights="none", head=HeadConfig(dense_units=[8]))
    x = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype(np.float32)
    model.save(tmp_path / "m.keras")
    again = keras.saving.load_model(tmp_path / "m.keras", compile=False)
    np.testing.assert_allclose(np.asarray(model(x)), np.asarray(again(x)), atol=1e-6)
    assert again.get_layer("preprocess").mode == "unit"


def test_a_model_saved_before_the_layer_moved_modules_still_loads(tmp_path):
    """Preprocess lived in cxrcore.training.backbones until it moved to cxrcore.training.layers: old runs must load."""
    import zipfile

    from cxrcore.training.model import load_model

    model = build_model("simple_cnn", 2, image_size=32, weights="none")
    model.save(tmp_path / "new.keras")
    with zipfile.ZipFile(tmp_path / "new.keras") as src, zipfile.ZipFile(tmp_path / "old.keras", "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename == "config.json":
                assert b'"cxrcore.training.layers"' in data
                data = data.replace(b'"cxrcore.training.layers"', b'"cxrcore.training.backbones"')
            dst.writestr(item, data)
    x = np.random.default_rng(1).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    again = load_model(tmp_path / "old.keras")
    np.testing.assert_allclose(np.asarray(model(x)), np.asarray(again(x)), atol=1e-6)


def test_registry_config_and_cli_load_without_tensorflow():
    """`backbones`, `index` and argument checks answer at once instead of after a TensorFlow import."""
    code = (
        "import sys, cxrcore.training.backbones, cxrcore.config, cxrcore.cli, cxrcore.data.index, cxrcore.runs; "
        "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@needs_weights
def test_pretrained_file_loads_real_imagenet_weights():
    model = build_model("mobilenetv2_0.35", 2, image_size=96, weights=str(MNV2_035))
    ref = keras.applications.MobileNetV2(alpha=0.35, include_top=False, weights=str(MNV2_035), input_shape=(96, 96, 3))
    for name in ("Conv1", "block_16_project", "Conv_1_bn"):
        for a, b in zip(model.get_layer(name).get_weights(), ref.get_layer(name).get_weights()):
            np.testing.assert_array_equal(a, b)


_IMAGENET_SCRIPT = """
import numpy as np, keras
from cxrcore.training.model import build_model
m = build_model("mobilenetv2_0.35", 2, image_size=64, weights="imagenet")
ref = keras.applications.MobileNetV2(alpha=0.35, include_top=False, weights=r"{path}", input_shape=(64, 64, 3))
print("SAME", bool(np.array_equal(m.get_layer("Conv1").get_weights()[0], ref.get_layer("Conv1").get_weights()[0])))
"""


def _run_python(code, keras_home, **extra_env):
    env = {**os.environ, "KERAS_HOME": str(keras_home), "TF_CPP_MIN_LOG_LEVEL": "3", **extra_env}
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
@needs_weights
def test_imagenet_path_uses_the_keras_cache(tmp_path):
    """The standard `weights="imagenet"` path, fed offline by placing the file in KERAS_HOME/models."""
    home = copy_weights_to_keras_home(tmp_path / "keras")
    proc = _run_python(_IMAGENET_SCRIPT.format(path=MNV2_035), home)
    assert "SAME True" in proc.stdout, proc.stderr[-2000:]


@pytest.mark.slow
def test_imagenet_offline_names_the_missing_file_and_where_to_put_it(tmp_path):
    code = (
        "from cxrcore.training.model import build_model\n"
        "from cxrcore.errors import WeightsError\n"
        "try:\n    build_model('mobilenetv2_0.35', 2, image_size=64, weights='imagenet')\n"
        "except WeightsError as e:\n    print('ERR', e)\n"
    )
    # an unreachable proxy makes the download fail at once, as it does offline
    proc = _run_python(code, tmp_path / "keras", https_proxy="http://127.0.0.1:9", HTTPS_PROXY="http://127.0.0.1:9")
    assert "ERR ImageNet weights for mobilenetv2_0.35 are not on this machine" in proc.stdout, proc.stderr[-2000:]
    assert "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5" in proc.stdout
    assert str(tmp_path / "keras" / "models") in proc.stdout
