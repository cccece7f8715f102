"""Faithfulness scores and the border flag (cxrcore.explain.faithfulness), Predictor.explain, and the
explain / faithfulness commands. The maps of a model trained to find a bright square are in
test_explain.py."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import copy_run, make_class_folders, once_per_session, tiny_config
from cxrcore import workflows
from cxrcore.errors import ConfigError, ImageDecodeError
from cxrcore.explain import faithfulness, sampled
from cxrcore.explain.faithfulness import border_flagged, border_share, curve_auc, pixel_ranks, random_map, scores

# --------------------------------------------------------------------------- worked by hand


def square_image() -> np.ndarray:
    """20 x 20, a white 10 x 10 square in the top-left corner on black: the square is 100 of 400 pixels."""
    image = np.zeros((20, 20, 3), np.uint8)
    image[:10, :10] = 255
    return image


def square_probability(images: np.ndarray) -> np.ndarray:
    """Class 0's probability = how white the square's place is; class 1 = the rest."""
    p = images[:, :10, :10, :].mean(axis=(1, 2, 3)) / 255.0
    return np.stack([p, 1 - p], axis=1)


def test_curve_area_by_the_trapezoid_rule():
    assert curve_auc([1, 0]) == 0.5
    assert curve_auc([0, 1, 1]) == 0.75
    assert curve_auc([1, 0, 0, 0, 0]) == 0.125


def test_pixel_ranks_most_important_first():
    ranks = pixel_ranks(np.array([[0.2, 0.9], [0.5, 0.9]]))
    assert ranks[1, 0] == 2 and ranks[0, 0] == 3
    assert sorted([ranks[0, 1], ranks[1, 1]]) == [0, 1]


def test_deletion_and_insertion_worked_by_hand():
    """4 steps, black baseline: a map on the square removes it in step 1 (probability 1 -> 0), so deletion
    is the area of [1, 0, 0, 0, 0] = 0.125 and insertion of [0, 1, 1, 1, 1] = 0.875; a map that ranks the
    square last gives the reverse."""
    image = square_image()
    on_square = np.zeros((20, 20))
    on_square[:10, :10] = 1.0
    found = scores(image, on_square, 0, square_probability, steps=4, baseline="black")
    assert found["deletion_curve"] == pytest.approx([1, 0, 0, 0, 0])
    assert found["insertion_curve"] == pytest.approx([0, 1, 1, 1, 1])
    assert found["deletion"] == pytest.approx(0.125)
    assert found["insertion"] == pytest.approx(0.875)
    backwards = scores(image, 1 - on_square, 0, square_probability, steps=4, baseline="black")
    assert backwards["deletion"] == pytest.approx(0.875)
    assert backwards["insertion"] == pytest.approx(0.125)


def test_every_curve_image_goes_through_one_probability_call():
    calls = []

    def counting(images):
        calls.append(len(images))
        return square_probability(images)

    scores(square_image(), np.random.default_rng(0).random((20, 20)), 0, counting)
    assert calls == [2 * faithfulness.STEPS]  # 19 + 19 inner steps, the image and the baseline


def test_blur_baseline_keeps_brightness_and_loses_detail():
    image = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    blurred = faithfulness.baseline_image(image, "blur")
    assert blurred.shape == image.shape and blurred.dtype == np.float32
    assert abs(blurred.mean() - image.mean()) < 3
    assert blurred.std() < 0.3 * image.std()


def test_bad_settings_name_the_setting():
    with pytest.raises(ConfigError, match="steps"):
        scores(square_image(), np.ones((20, 20)), 0, square_probability, steps=1)
    with pytest.raises(ConfigError, match="baseline must be one of blur, black"):
        scores(square_image(), np.ones((20, 20)), 0, square_probability, baseline="grey")
    with pytest.raises(ValueError, match="differ in size"):
        scores(square_image(), np.ones((10, 10)), 0, square_probability)


def test_border_share_worked_by_hand_and_the_flag():
    """100 x 100: the band is 10 rows and columns on each side, 10,000 - 80 x 80 = 3,600 pixels (36%)."""
    assert border_share(np.ones((100, 100))) == pytest.approx(0.36)
    corner = np.zeros((100, 100))
    corner[:10, :10] = 1.0
    assert border_share(corner) == pytest.approx(1.0)
    assert border_flagged(border_share(corner))
    centre = np.zeros((100, 100))
    centre[40:60, 40:60] = 1.0
    assert border_share(centre) == 0.0
    assert not border_flagged(border_share(centre))
    half = np.zeros((100, 100))  # 3,600 border pixels at 1 and 6,400 inner ones at 0.2: 3600 / 4880
    half[:] = 0.2
    half[faithfulness.border_mask(100, 100)] = 1.0
    assert border_share(half) == pytest.approx(3600 / (3600 + 0.2 * 6400))
    assert border_share(np.zeros((100, 100))) is None
    assert not border_flagged(None)


# --------------------------------------------------------------------------- lung share, on hand-made lungs


def lung_rectangle(shape=(32, 32)) -> np.ndarray:
    """One lung on the image's left: rows 4..27, columns 2..13 (24 x 12 = 288 pixels)."""
    mask = np.zeros(shape, dtype=bool)
    mask[4:28, 2:14] = True
    return mask


def inside_map(shape=(32, 32)) -> np.ndarray:
    """A map on rows 8..19, columns 4..11: all of it inside :func:`lung_rectangle`."""
    heat = np.zeros(shape, dtype=np.float32)
    heat[8:20, 4:12] = 1.0
    return heat


def outside_map(shape=(32, 32)) -> np.ndarray:
    """A map on rows 8..19, columns 20..27: none of it inside :func:`lung_rectangle`."""
    heat = np.zeros(shape, dtype=np.float32)
    heat[8:20, 20:28] = 1.0
    return heat


class HandSegmenter:
    """Stands in for the lung model: the lungs of any image are :func:`lung_rectangle` (or none); counts calls."""

    def __init__(self, empty: bool = False):
        self.calls = 0
        self.empty = empty

    def lungs(self, rgb):
        from cxrcore.lungs import geometry

        self.calls += 1
        mask = lung_rectangle(np.asarray(rgb).shape[:2])
        return geometry.lungs_from_mask(mask & (not self.empty))


@pytest.fixture
def hand_segmenter(monkeypatch):
    from cxrcore.lungs import segment

    fake = HandSegmenter()
    monkeypatch.setattr(segment, "get_segmenter", lambda path=None: fake)
    return fake


def test_lung_share_of_a_map_inside_and_outside_hand_made_lungs():
    from cxrcore.lungs import geometry

    lungs = geometry.lungs_from_mask(lung_rectangle())
    assert lungs.found == 1 and lungs.mask.sum() == 288  # the rectangle, kept whole
    inside = faithfulness.map_lung_share(inside_map(), lungs)
    assert inside == pytest.approx(1.0) and not faithfulness.lung_flagged(inside)
    outside = faithfulness.map_lung_share(outside_map(), lungs)
    assert outside == 0.0 and faithfulness.lung_flagged(outside)
    both = inside_map() + outside_map()  # 96 pixels in, 96 out: half, not under half
    assert faithfulness.map_lung_share(both, lungs) == pytest.approx(0.5)
    assert not faithfulness.lung_flagged(0.5)
    assert faithfulness.lung_flagged(0.49)
    assert faithfulness.map_lung_share(np.zeros((32, 32)), lungs) is None  # an empty map
    no_lungs = geometry.lungs_from_mask(np.zeros((32, 32), bool))
    assert faithfulness.map_lung_share(inside_map(), no_lungs) is None
    assert not faithfulness.lung_flagged(None)
    # lungs found on an image twice the map's size are resized to the map
    big = geometry.lungs_from_mask(np.kron(lung_rectangle(), np.ones((2, 2), bool)))
    assert faithfulness.map_lung_share(inside_map(), big) == pytest.approx(1.0)
    assert faithfulness.map_lung_share(both, big) == pytest.approx(0.5)


def test_border_band_is_the_data_audits():
    from cxrcore.data import audit

    assert faithfulness.border_mask is audit.border_mask
    assert audit.BORDER_FRACTION == 0.10


def test_random_map_is_smooth_seeded_and_full_size():
    a, b = random_map((224, 224), seed=1), random_map((224, 224), seed=1)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (224, 224)
    assert not np.array_equal(a, random_map((224, 224), seed=2))
    # neighbouring pixels nearly agree: it removes regions, not salt and pepper
    assert np.abs(np.diff(a, axis=1)).mean() < 0.05


# --------------------------------------------------------------------------- a trained run

#: this module's fixtures that train: tests that use them are slow (conftest)
TRAINING_FIXTURES = {"run_dir"}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, shared_runs):
    """Trained once per session (conftest.once_per_session: under xdist this module's tests may run on two
    workers) and read-only: a test that writes into a run works on ``copied_run``."""

    def make():
        from cxrcore.workflows import train

        data = make_class_folders(tmp_path_factory.mktemp("data"), classes=("Dark", "Bright"), per_class=20, size=32)
        out = tmp_path_factory.mktemp("models")
        return train(tiny_config(data, epochs=3), out_dir=out).path

    path = once_per_session(tmp_path_factory, "test_faithfulness.run_dir", make)
    shared_runs.freeze(path.parent)
    return path


def data_images(run_dir, pattern: str) -> list:
    from pathlib import Path

    from cxrcore import runs

    return sorted(Path(runs.RunDir(run_dir).config().data).glob(pattern))


@pytest.fixture(scope="module")
def predictor(run_dir):
    from cxrcore.predict import Predictor

    return Predictor(run_dir)


def test_explain_returns_probabilities_the_map_and_its_scores(predictor, run_dir):
    path = data_images(run_dir, "Bright/img_000.png")[0]
    found = predictor.explain(str(path), "gradcam")
    assert found["class"] == found["label"] and found["class_index"] == predictor.labels.index(found["label"])
    assert found["heatmap"].shape == (32, 32) and found["input"].shape == (32, 32, 3)
    assert sum(found["probabilities"].values()) == pytest.approx(1.0)
    assert 0 <= found["deletion"] <= 1 and 0 <= found["insertion"] <= 1
    assert found["border_share"] is None or 0 <= found["border_share"] <= 1
    from cxrcore.lungs import geometry

    assert isinstance(found["lungs"], geometry.Lungs) and found["lungs"].labels.shape == (32, 32)
    assert found["lung_share"] is None or 0 <= found["lung_share"] <= 1
    assert isinstance(found["lung_flagged"], bool)
    if found["lungs"].found == 0:
        assert found["lung_share"] is None and not found["lung_flagged"]
    curves = found["faithfulness"]
    assert (curves["steps"], curves["baseline"]) == (20, "blur")
    assert curves["describe"] == "20 steps; removed pixels replaced by a blurred copy of the image"
    assert len(curves["deletion_curve"]) == 21
    # the curves start (deletion) and end (insertion) at the image's own probability of the class
    assert curves["deletion_curve"][0] == pytest.approx(found["probabilities"][found["class"]], abs=1e-5)
    assert curves["insertion_curve"][-1] == pytest.approx(curves["deletion_curve"][0])
    other = 1 - found["class_index"]
    assert predictor.explain(str(path), "gradcam", other)["class"] == predictor.labels[other]


def test_explain_computes_the_map_once_per_image_method_and_class(predictor, run_dir, monkeypatch):
    path = data_images(run_dir, "Dark/img_001.png")[0]
    explainer = predictor.explainer()
    calls = []
    original = explainer.heatmap

    def counting(*args, **kwargs):
        calls.append(kwargs.get("method"))
        return original(*args, **kwargs)

    monkeypatch.setattr(explainer, "heatmap", counting)
    first = predictor.explain(path.read_bytes(), "gradcam++", name="a.png")
    again = predictor.explain(path.read_bytes(), "gradcam++", name="a.png", operating_point="youden")
    assert calls == ["gradcam++"]
    np.testing.assert_array_equal(first["heatmap"], again["heatmap"])
    assert again["decision"]["operating_point"] == "youden"  # the cheap parts still follow the request
    predictor.explain(path.read_bytes(), "scorecam", name="a.png")
    assert calls == ["gradcam++", "scorecam"]


def test_explain_gives_the_maps_share_inside_the_lungs(predictor, hand_segmenter, monkeypatch):
    """The map covers the left half (512 pixels); the lung rectangle (288 pixels) lies inside it: 288 / 512."""
    left_half = np.zeros((32, 32), dtype=np.float32)
    left_half[:, :16] = 1.0
    monkeypatch.setattr(predictor, "explanation_map", lambda image, method, target: left_half)
    image = np.random.default_rng(11).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    found = predictor.explain(image, "gradcam")
    assert found["lung_share"] == pytest.approx(288 / 512)
    assert found["lung_flagged"] is False
    np.testing.assert_array_equal(found["lungs"].mask, lung_rectangle())
    predictor.explain(image, "gradcam++")  # another method, the same image: its lungs are remembered
    assert hand_segmenter.calls == 1

    right_half = np.zeros((32, 32), dtype=np.float32)
    right_half[:, 16:] = 1.0
    monkeypatch.setattr(predictor, "explanation_map", lambda image, method, target: right_half)
    other = np.random.default_rng(12).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    found = predictor.explain(other, "gradcam")
    assert found["lung_share"] == 0.0 and found["lung_flagged"] is True

    hand_segmenter.empty = True  # no lungs found: no share, not flagged
    found = predictor.explain(np.random.default_rng(13).integers(0, 256, (32, 32, 3), dtype=np.uint8), "gradcam")
    assert found["lungs"].found == 0
    assert found["lung_share"] is None and found["lung_flagged"] is False


def test_explain_refuses_bad_input_clearly(predictor):
    with pytest.raises(ImageDecodeError, match="broken.png"):
        predictor.explain(b"not an image", name="broken.png")
    with pytest.raises(ValueError, match="unknown method 'lime'"):
        predictor.explain(np.zeros((32, 32, 3), np.uint8), "lime")
    with pytest.raises(ValueError, match="class_index must be an integer in 0..1"):
        predictor.explain(np.zeros((32, 32, 3), np.uint8), "gradcam", 2)


def test_explain_command_writes_overlays_and_one_json_line_each(run_dir, tmp_path, capsys):
    from PIL import Image

    from cxrcore.cli import main

    images = data_images(run_dir, "*/img_002.png")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"no")
    code = main(["explain", str(run_dir), *map(str, images), str(broken), "--out", str(tmp_path / "out")])
    captured = capsys.readouterr()
    lines = [json.loads(line) for line in captured.out.splitlines()]
    assert code == 2  # one image could not be read; the others were explained
    assert len(lines) == 3
    assert "error" in lines[2] and "broken.png" in lines[2]["error"]
    for line, image in zip(lines[:2], images):
        assert line["image"] == str(image)
        assert {"probabilities", "deletion", "insertion", "border_share", "steps", "baseline"} <= set(line)
        assert line["lung_share"] is None or 0 <= line["lung_share"] <= 1
        assert isinstance(line["lung_flagged"], bool)
        with Image.open(line["overlay"]) as overlay:
            assert overlay.size == (32, 32)
    assert len({line["overlay"] for line in lines[:2]}) == 2  # same file name, two folders: two files
    assert captured.err.count(", lung share ") == 2  # one per explained image, beside the border share
    assert main(["explain", str(run_dir), str(images[0]), "--class", "Nope", "--out", str(tmp_path)]) == 2
    assert "--class 'Nope' is not one of the model's classes: Bright, Dark" in capsys.readouterr().err


def test_scores_over_the_test_split_are_kept_in_the_run(run_dir, tmp_path, capsys):
    from cxrcore import runs
    from cxrcore.cli import main
    from cxrcore.predict import Predictor

    run_dir = copied_run(run_dir, tmp_path)  # the scores are written into the run
    predictor = Predictor(run_dir)
    calls = []
    original = faithfulness.scores

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    faithfulness.scores = counting
    try:
        result = sampled.evaluate_run(run_dir, ["gradcam"], 3, predictor=predictor)
        assert len(calls) == 3 * 2  # three images, Grad-CAM and the random reference
        again = sampled.evaluate_run(run_dir, ["gradcam"], 3, predictor=predictor)
        assert len(calls) == 6  # kept in the run: nothing computed again
        assert again == result
        workflows.score_explanations(run_dir, methods=["gradcam"], sample_size=2, predictor=predictor)
        assert len(calls) == 10  # other settings: computed again (the use case: scores, then the card)
    finally:
        faithfulness.scores = original
    kept = runs.RunDir(run_dir).faithfulness()
    assert kept["settings"]["sample_size"] == 2 and set(kept["methods"]) == {"gradcam", "random"}
    test_images = set(runs.RunDir(run_dir).split().query("split == 'test'")["path"])
    assert {row["image"] for row in kept["images"]} <= test_images
    entry = kept["methods"]["gradcam"]["deletion"]
    values = [row["gradcam"]["deletion"] for row in kept["images"]]
    assert entry["mean"] == pytest.approx(np.mean(values)) and entry["n"] == 2
    card = runs.RunDir(run_dir).model_card()
    assert "## Explanations" in card and f"| Grad-CAM | {entry['mean']:.3f} (" in card
    assert main(["faithfulness", str(run_dir), "--sample", "2", "--methods", "gradcam"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["settings"] == kept["settings"]
    with pytest.raises(ConfigError, match="unknown method"):
        sampled.evaluate_run(run_dir, ["lime"], 2)


def test_verdict_names_the_best_method_one_no_better_than_random_and_the_border():
    def entry(deletion, insertion, share=0.3, lungs=0.7):
        return {
            "deletion": {"mean": deletion},
            "insertion": {"mean": insertion},
            "border_share": {"mean": share},
            "lung_share": {"mean": lungs},
        }

    result = {
        "methods": {
            "gradcam": entry(0.2, 0.9),
            "gradcam++": entry(0.3, 0.8, lungs=0.35),
            "scorecam": entry(0.7, 0.3, share=0.8),
            "random": {"deletion": {"mean": 0.6}, "insertion": {"mean": 0.4}, "lung_share": None},
        },
        "border_warn": 0.6,
        "lung_warn": 0.5,
    }
    lines = faithfulness.verdict(result)
    assert lines[0].startswith("Grad-CAM holds up best")
    assert any(line.startswith("Score-CAM does no better than a random map") for line in lines)
    assert any(line.startswith("Score-CAM: on average 80% of the map lies on the image's border") for line in lines)
    outside = [line for line in lines if "inside the lung fields" in line]
    assert outside == [
        "Grad-CAM++: on average only 35% of the map lies inside the lung fields: most of the evidence it shows is "
        "outside the lungs."
    ]
    # a result from before lung shares says nothing about the lungs
    for method in ("gradcam", "gradcam++", "scorecam"):
        del result["methods"][method]["lung_share"]
    del result["lung_warn"]
    assert not [line for line in faithfulness.verdict(result) if "lung fields" in line]


def copied_run(run_dir, tmp_path):
    """A writable copy of the module's (read-only) run: its path."""
    return copy_run(run_dir, tmp_path).path


def test_scores_over_the_test_split_give_each_methods_lung_share(run_dir, tmp_path, hand_segmenter, monkeypatch):
    """Grad-CAM's maps lie inside the hand-made lungs, Grad-CAM++'s outside them; the random map has none."""
    from cxrcore import runs
    from cxrcore.predict import Predictor

    run = copied_run(run_dir, tmp_path)
    fresh = Predictor(run)  # nothing remembered from other tests
    maps = {"gradcam": inside_map(), "gradcam++": outside_map()}
    monkeypatch.setattr(fresh, "explanation_map", lambda image, method, target: maps[method])
    result = workflows.score_explanations(run, methods=["gradcam", "gradcam++"], sample_size=3, predictor=fresh)
    inside, outside, reference = (result["methods"][m] for m in ("gradcam", "gradcam++", "random"))
    assert inside["lung_share"]["mean"] == pytest.approx(1.0) and inside["lung_share"]["n"] == 3
    assert inside["lung_flagged"] == 0.0
    assert outside["lung_share"]["mean"] == 0.0 and outside["lung_flagged"] == 1.0
    assert reference.get("lung_share") is None
    for row in result["images"]:
        assert row["gradcam"]["lung_share"] == pytest.approx(1.0) and row["gradcam++"]["lung_share"] == 0.0
        assert row["random"]["lung_share"] is None
    shown = faithfulness.table(result).set_index("method")["lung share"]
    assert shown["Grad-CAM"] == pytest.approx(1.0) and shown["Grad-CAM++"] == 0.0
    assert shown.isna()["random map (reference)"]
    assert any(
        line.startswith("Grad-CAM++: on average only 0% of the map lies inside the lung fields")
        for line in faithfulness.verdict(result)
    )
    assert not any(line.startswith("Grad-CAM:") for line in faithfulness.verdict(result))
    assert "| lung share |" in runs.RunDir(run).model_card()


def test_stored_scores_without_lung_share_or_of_another_lung_model_are_computed_again(
    run_dir, tmp_path, hand_segmenter, monkeypatch
):
    from cxrcore import runs
    from cxrcore.lungs import segment
    from cxrcore.predict import Predictor

    run = copied_run(run_dir, tmp_path)
    fresh = Predictor(run)
    monkeypatch.setattr(fresh, "explanation_map", lambda image, method, target: inside_map())
    calls = []
    original = faithfulness.scores

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(faithfulness, "scores", counting)
    sampled.evaluate_run(run, ["gradcam"], 3, predictor=fresh)
    assert len(calls) == 6  # three images, Grad-CAM and the random reference
    sampled.evaluate_run(run, ["gradcam"], 3, predictor=fresh)
    assert len(calls) == 6  # kept

    # as an older version wrote it: no lung share anywhere, no lung model in the settings
    old = runs.RunDir(run).faithfulness()
    old["settings"].pop("lungs")
    old["settings"]["version"] = 1
    old.pop("lung_warn")
    for entry in old["methods"].values():
        entry.pop("lung_share", None)
        entry.pop("lung_flagged", None)
    for row in old["images"]:
        for method in ("gradcam", "random"):
            row[method].pop("lung_share")
    runs.RunDir(run).write_faithfulness(old)
    again = sampled.evaluate_run(run, ["gradcam"], 3, predictor=fresh)
    assert len(calls) == 12  # computed again
    assert again["methods"]["gradcam"]["lung_share"]["mean"] == pytest.approx(1.0)

    other_model = tmp_path / "other-lungs.keras"
    other_model.write_bytes(b"another lung model")
    monkeypatch.setattr(segment, "SHIPPED_MODEL", other_model)
    sampled.evaluate_run(run, ["gradcam"], 3, predictor=fresh)
    assert len(calls) == 18  # a new lung model: computed again
