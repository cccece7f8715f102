"""Class activation maps and overlays (cxrcore.explain.cam)."""

from __future__ import annotations

import io
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from cxrcore.explain.cam import (
    COLORMAPS,
    METHOD_LABELS,
    METHODS,
    Explainer,
    _normalise,
    apply_colormap,
    colormap_lut,
    overlay,
    to_png_bytes,
)

SIZE = 32  # toy model input
SQUARE = 8  # side of the bright square, always inside the top-left 16x16 quadrant


def _toy_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Gray noise (0..119); odd-indexed images (class 1) also get a bright square at a
    random place in the top-left quadrant."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 120, (n, SIZE, SIZE, 1)).astype(np.uint8).repeat(3, axis=3)
    y = np.arange(n) % 2
    for i in np.flatnonzero(y == 1):
        r, c = rng.integers(1, SIZE // 2 - SQUARE + 1, 2)
        x[i, r : r + SQUARE, c : c + SQUARE] = 230
    return x, y


@pytest.fixture(scope="module")
def toy():
    """simple_cnn trained (seeded) to tell 'square in the top-left' from plain noise."""
    import keras

    from cxrcore.training.model import build_model

    keras.utils.set_random_seed(0)
    model = build_model("simple_cnn", 2, image_size=SIZE, weights="none")
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy")
    x, y = _toy_images(256, seed=0)
    model.fit(x.astype(np.float32), y, epochs=6, batch_size=32, verbose=0)
    x_test, y_test = _toy_images(12, seed=100)
    probs = model.predict(x_test.astype(np.float32), verbose=0)
    assert (probs.argmax(1) == y_test).mean() == 1.0, "toy model did not learn the task"
    return SimpleNamespace(model=model, explainer=Explainer(model, "cnn_conv4"), x=x_test, y=y_test, probs=probs)


def _check_map(heat: np.ndarray, shape=(SIZE, SIZE)) -> None:
    assert heat.shape == shape
    assert heat.dtype == np.float32
    assert np.all(np.isfinite(heat))
    assert heat.min() >= 0.0 and heat.max() <= 1.0


# --------------------------------------------------------------------------- maps


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_every_method_gives_a_valid_varying_map(toy, method):
    for i in (0, 1):
        heat = toy.explainer.heatmap(toy.x[i], method=method)
        _check_map(heat)
        assert heat.max() == pytest.approx(1.0, abs=1e-6)
        assert heat.std() > 0.05, f"{method} map is (nearly) constant"


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_map_points_at_the_square(toy, method):
    """Class 1 = the bright square: its evidence is in the top-left quadrant, never the
    opposite one. A wrong layer, a flipped sign or a wrong class would break this."""
    ratios = []
    for i in np.flatnonzero(toy.y == 1)[:4]:
        heat = toy.explainer.heatmap(toy.x[i], class_index=1, method=method)
        top_left, bottom_right = heat[: SIZE // 2, : SIZE // 2].sum(), heat[SIZE // 2 :, SIZE // 2 :].sum()
        ratios.append(top_left / (bottom_right + 1e-6))
        row, col = np.unravel_index(heat.argmax(), heat.shape)
        assert row < SIZE // 2 + 2 and col < SIZE // 2 + 2, (method, row, col)
    assert min(ratios) > 1.5 and np.mean(ratios) > 2.5, ratios


@pytest.mark.slow
def test_class_index_is_respected_and_none_means_predicted(toy):
    i = int(np.flatnonzero(toy.y == 1)[0])
    e = toy.explainer
    assert e.predicted_class(toy.x[i]) == 1
    auto = e.heatmap(toy.x[i])
    np.testing.assert_allclose(auto, e.heatmap(toy.x[i], class_index=1), atol=1e-6)
    # the noise class has no positive evidence in the square: its map avoids the quadrant
    other = e.heatmap(toy.x[i], class_index=0)
    assert other[: SIZE // 2, : SIZE // 2].sum() < 0.5 * auto[: SIZE // 2, : SIZE // 2].sum()
    # score-cam with class None uses the predicted class too
    np.testing.assert_allclose(
        e.heatmap(toy.x[i], method="scorecam"), e.heatmap(toy.x[i], class_index=1, method="scorecam"), atol=1e-5
    )


@pytest.mark.slow
def test_callers_model_is_untouched(toy):
    import keras

    model = toy.model
    for method in METHODS:
        toy.explainer.heatmap(toy.x[1], method=method)
    assert model.get_layer("predictions").activation is keras.activations.softmax
    probs = model.predict(toy.x.astype(np.float32), verbose=0)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(probs, toy.probs, atol=1e-6)
    # the explainer works on its own linear clone
    clone = toy.explainer._visualizers["gradcam"].model
    assert clone is not model
    assert clone.get_layer("predictions").activation is keras.activations.linear


@pytest.mark.slow
def test_save_and_reload_gives_the_same_map(toy, tmp_path):
    from cxrcore.training.model import load_model

    path = tmp_path / "model.keras"
    toy.model.save(path)
    reloaded = Explainer(load_model(path), "cnn_conv4")
    for method in ("gradcam", "scorecam"):
        before = toy.explainer.heatmap(toy.x[1], method=method)
        after = reloaded.heatmap(toy.x[1], method=method)
        np.testing.assert_allclose(after, before, atol=1e-3)


@pytest.mark.slow
def test_image_of_another_size_is_resized_to_the_input(toy):
    big = np.asarray(Image.fromarray(toy.x[1]).resize((64, 48), Image.BILINEAR))
    _check_map(toy.explainer.heatmap(big))


def test_mobilenet_gradcam_at_the_registry_layer():
    from cxrcore.training.backbones import get_backbone
    from cxrcore.training.model import build_model

    model = build_model("mobilenetv2_0.35", 3, image_size=96, weights="none")
    predictor = SimpleNamespace(
        model=model,
        run=SimpleNamespace(config=lambda: SimpleNamespace(backbone="mobilenetv2_0.35"), members=lambda: []),
    )
    e = Explainer.for_predictor(predictor)
    assert e.layer_name == get_backbone("mobilenetv2_0.35").gradcam_layer == "out_relu"
    image = np.random.default_rng(1).integers(0, 256, (96, 96, 3), dtype=np.uint8)
    heat = e.heatmap(image)
    _check_map(heat, (96, 96))
    assert heat.std() > 0.0


def test_bad_layer_method_and_class_are_value_errors():
    from cxrcore.training.model import build_model

    model = build_model("simple_cnn", 2, image_size=SIZE, weights="none")
    with pytest.raises(ValueError, match="'no_such_layer' not found"):
        Explainer(model, "no_such_layer")
    with pytest.raises(ValueError, match="head_pool.*conv feature map"):
        Explainer(model, "head_pool")
    e = Explainer(model, "cnn_conv4")
    image = np.zeros((SIZE, SIZE, 3), np.uint8)
    with pytest.raises(ValueError, match="gradcam, gradcam\\+\\+, scorecam"):
        e.heatmap(image, method="lime")
    with pytest.raises(ValueError, match="0..1"):
        e.heatmap(image, class_index=2)
    assert e._visualizers == {}  # nothing was built for the failed calls


def test_constant_and_nan_maps_become_zeros():
    for cam in (np.zeros((7, 7)), np.full((7, 7), 3.5), np.full((7, 7), np.nan)):
        out = _normalise(cam)
        assert out.dtype == np.float32 and not out.any()
    out = _normalise(np.array([[np.nan, 1.0], [2.0, 3.0]]))
    assert np.all(np.isfinite(out)) and out.max() == 1.0
    tiny = _normalise(np.array([[0.0, 1e-12], [2e-12, 4e-12]]))  # small but real: kept
    np.testing.assert_allclose(tiny, [[0, 0.25], [0.5, 1]], atol=1e-6)


# --------------------------------------------------------------------------- overlays


def _image(h=40, w=30, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_overlay_alpha_endpoints():
    image = _image()
    heat = np.linspace(0, 1, 40 * 30, dtype=np.float32).reshape(40, 30)
    np.testing.assert_array_equal(overlay(image, heat, alpha=0.0), image)
    np.testing.assert_array_equal(overlay(image, heat, alpha=1.0, colormap="turbo"), apply_colormap(heat, "turbo"))
    half = overlay(image, heat, alpha=0.5).astype(int)
    expected = (image.astype(int) + apply_colormap(heat, "jet").astype(int)) / 2
    assert np.abs(half - expected).max() <= 1
    assert overlay(image, heat).dtype == np.uint8


def test_overlay_resizes_the_heatmap():
    image = _image(40, 30)
    heat = np.zeros((8, 8), np.float32)
    heat[:, :4] = 1.0  # left half hot
    out = overlay(image, heat, alpha=1.0, colormap="jet")
    assert out.shape == (40, 30, 3)
    left, right = out[:, :5].reshape(-1, 3), out[:, -5:].reshape(-1, 3)
    assert np.all(left[:, 0] > left[:, 2])  # red side
    assert np.all(right[:, 2] > right[:, 0])  # blue side


@pytest.mark.parametrize("alpha", [-0.1, 1.5, float("nan")])
def test_overlay_rejects_bad_alpha(alpha):
    with pytest.raises(ValueError, match="alpha"):
        overlay(_image(), np.zeros((40, 30)), alpha=alpha)


def test_colormap_tables():
    assert set(COLORMAPS) >= {"jet", "turbo", "viridis", "inferno", "hot"}
    for name in COLORMAPS:
        lut = colormap_lut(name)
        assert lut.shape == (256, 3) and lut.dtype == np.uint8
        assert len(np.unique(lut, axis=0)) > 100  # interpolated, not a few steps
    jet = colormap_lut("jet")
    assert jet[0, 2] > 100 and jet[0, 0] < 30  # low end blue
    assert jet[255, 0] > 100 and jet[255, 2] < 30  # high end red
    np.testing.assert_array_equal(colormap_lut("hot")[0], [0, 0, 0])
    np.testing.assert_array_equal(colormap_lut("hot")[255], [255, 255, 255])
    np.testing.assert_array_equal(apply_colormap(np.array([[0.0, 1.0]]), "jet")[0], jet[[0, 255]])


def test_unknown_colormap_lists_the_valid_ones():
    with pytest.raises(ValueError, match="jet, turbo, viridis, inferno, hot"):
        overlay(_image(), np.zeros((40, 30)), colormap="rainbow")
    with pytest.raises(ValueError, match="jet"):
        apply_colormap(np.zeros((2, 2)), "nope")


def test_method_labels_cover_methods():
    assert set(METHOD_LABELS) == set(METHODS)


def test_png_round_trip():
    image = _image(17, 23)
    data = to_png_bytes(image)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    back = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    np.testing.assert_array_equal(back, image)


# --------------------------------------------------------------------------- faithfulness on the toy


@pytest.mark.slow
def test_deleting_the_square_drops_the_probability_faster_than_deleting_random_pixels(toy):
    """The model finds a bright square: a map on the square must score a lower deletion (and a higher
    insertion) than random pixels, on every square image. Black baseline: the default blur (radius 5% of
    the side, 1.6 px here) leaves an 8 px bright square a bright blob, which is still the evidence."""
    baseline = "black"
    from cxrcore.explain.faithfulness import random_map, scores

    def probabilities(images):
        return np.asarray(toy.model(images, training=False))

    rng = np.random.default_rng(0)
    for i in np.flatnonzero(toy.y == 1)[:4]:
        image = toy.x[i]
        on_square = (image[..., 0] == 230).astype(np.float32)
        square = scores(image, on_square, 1, probabilities, baseline=baseline)
        for noise in (rng.random((SIZE, SIZE)), random_map((SIZE, SIZE), seed=int(i))):
            chance = scores(image, noise, 1, probabilities, baseline=baseline)
            assert square["deletion"] < chance["deletion"] - 0.1, (i, square["deletion"], chance["deletion"])
            assert square["insertion"] > chance["insertion"] + 0.1, (i, square["insertion"], chance["insertion"])


@pytest.mark.slow
def test_gradcam_map_of_the_toy_beats_a_random_map_and_is_not_flagged(toy):
    from cxrcore.explain.faithfulness import border_flagged, border_share, random_map, scores

    def probabilities(images):
        return np.asarray(toy.model(images, training=False))

    for i in np.flatnonzero(toy.y == 1)[:4]:
        heat = toy.explainer.heatmap(toy.x[i], class_index=1)
        found = scores(toy.x[i], heat, 1, probabilities, baseline="black")
        chance = scores(toy.x[i], random_map((SIZE, SIZE), seed=int(i)), 1, probabilities, baseline="black")
        assert found["deletion"] < chance["deletion"], i
        share = border_share(heat)
        assert share < 0.6 and not border_flagged(share), (i, share)
    corner = np.zeros((SIZE, SIZE), np.float32)
    corner[:3, :3] = 1.0
    assert border_flagged(border_share(corner))


@pytest.mark.slow
def test_compiled_gradcam_equals_tf_keras_vis_at_the_layer(toy):
    """Grad-CAM is computed in one compiled function; at the layer's own resolution it must agree with
    tf-keras-vis's Gradcam (which runs eagerly), for a given class and for the predicted one."""
    vis = toy.explainer._visualizer("gradcam")
    compiled = toy.explainer._gradcam_function()
    images = toy.x[:4].astype(np.float32)
    for class_index in (0, 1):
        expected = vis(
            lambda out, c=class_index: out[:, c],
            images,
            penultimate_layer="cnn_conv4",
            seek_penultimate_conv_layer=False,
            normalize_cam=False,
            expand_cam=False,
        )
        got = np.asarray(compiled(images, np.full(4, class_index, np.int32)))
        np.testing.assert_allclose(got, np.asarray(expected), rtol=1e-4, atol=1e-6)
    top = np.asarray(compiled(images, np.full(4, -1, np.int32)))
    by_class = np.asarray(compiled(images, toy.probs[:4].argmax(1).astype(np.int32)))
    np.testing.assert_allclose(top, by_class, atol=1e-6)
