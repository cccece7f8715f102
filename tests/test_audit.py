"""The data audit's shortcut check on synthetic sets whose classes differ in a known way."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import ndimage

from cxrcore.data.audit import BORDER_FRACTION, STATS_SIZE, audit, border_mask, shortcut_check
from cxrcore.data.index import build_index


def write_set(root, draw, per_class=40, size=64):
    """ROOT/<class>/img_i.png, one patient per image; ``draw(rng, class_index)`` -> uint8 (size, size)."""
    rng = np.random.default_rng(0)
    for c, label in enumerate(("A", "B")):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(draw(rng, c, size)).save(root / label / f"img_{i:03d}.png")
    return root


def brightness_only(rng, c, size):
    return np.clip(rng.normal(90 + 40 * c, 20, (size, size)), 0, 255).astype(np.uint8)


def shape_only(rng, c, size):
    """The same noise for both classes, plus a bright bar lying down (A) or standing up (B)
    somewhere in the centre: the same pixel values in the same amounts, arranged differently."""
    img = np.clip(rng.normal(90, 20, (size, size)), 0, 255)
    h, w = (8, 32) if c == 0 else (32, 8)
    y0 = rng.integers(size * 0.2, size * 0.8 - h)
    x0 = rng.integers(size * 0.2, size * 0.8 - w)
    img[y0 : y0 + h, x0 : x0 + w] = 220
    return img.astype(np.uint8)


def test_the_border_band_is_the_outer_tenth_on_each_side():
    mask = border_mask(100, 50)
    assert mask[:10].all() and mask[-10:].all() and mask[:, :5].all() and mask[:, -5:].all()
    assert not mask[10:90, 5:45].any()
    assert mask.mean() == pytest.approx(1 - (1 - 2 * BORDER_FRACTION) ** 2)  # 36% of the area


def test_classes_that_differ_only_in_brightness_are_flagged(tmp_path):
    result = shortcut_check(build_index(write_set(tmp_path / "bright", brightness_only)))
    assert result["chance"] == 0.5
    assert result["flagged"] and result["ci_low"] > 0.6
    assert "without looking at the lungs" in result["message"]


def test_classes_that_differ_only_in_a_shape_are_not_flagged(tmp_path):
    result = shortcut_check(build_index(write_set(tmp_path / "shape", shape_only, size=STATS_SIZE)))
    assert not result["flagged"], result
    assert result["ci_low"] - result["chance"] <= 0.10


def test_audit_reports_sources_and_is_cached(tmp_path):
    root = write_set(tmp_path / "d", brightness_only, per_class=12)
    rows = [
        {
            "path": f"{label}/img_{i:03d}.png",
            "label": label,
            "patient_id": f"{label}{i // 2}",
            "hospital": "north" if label == "A" else "south",
        }
        for label in "AB"
        for i in range(12)
    ]
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    calls = []
    first = audit(root, progress=lambda done, total: calls.append(done))
    assert calls and first["images"] == 24 and first["classes"] == {"A": 12, "B": 12}
    assert first["sources"] == {"north": {"A": 12}, "south": {"B": 12}}  # every class from one source
    assert first["patient_leak"]["patients"] == 0 and first["duplicates"]["groups"] == 0
    assert set(first["shortcut"]) >= {"accuracy", "chance", "ci_low", "ci_high", "flagged"}
    calls.clear()
    assert audit(root, progress=lambda done, total: calls.append(done)) == json.loads(json.dumps(first))
    assert calls == []  # read from the cache


def test_the_audit_cache_follows_the_images_content_not_the_folder(tmp_path):
    import shutil

    root = write_set(tmp_path / "d", brightness_only, per_class=8)
    first = audit(root)
    copy = shutil.copytree(root, tmp_path / "elsewhere" / "copy")
    calls = []
    again = audit(copy, progress=lambda done, total: calls.append(done))
    assert calls == [], "a copy of the same images was audited again"
    assert again["data"] == str(copy) and again["shortcut"] == first["shortcut"]
    victim = next(copy.rglob("*.png"))
    with Image.open(victim) as img:
        pixels = np.asarray(img).copy()
    pixels[0, 0] = 255 - pixels[0, 0]  # one pixel changed, same size on disk or not
    Image.fromarray(pixels).save(victim)
    audit(copy, progress=lambda done, total: calls.append(done))
    assert calls, "changed images were read from the cache of the old ones"


@pytest.mark.slow
def test_cli_audit_prints_the_shortcut_check_last(tmp_path):
    from conftest import cli, python_m_cxrcore

    root = write_set(tmp_path / "bright", brightness_only, per_class=20)
    proc = cli("audit", root, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["shortcut"]["chance"] == 0.5 and result["shortcut"]["flagged"]
    assert result["shortcut"]["ci_low"] <= result["shortcut"]["accuracy"] <= result["shortcut"]["ci_high"]
    assert "WARNING: Labels can be told apart without looking at the lungs" in proc.stderr
    # `audit` as a user runs it, in its own process (the one here): the same report, read from the cache
    again = python_m_cxrcore("audit", root, check=False, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads(again.stdout.strip().splitlines()[-1]) == result
    assert "WARNING: Labels can be told apart without looking at the lungs" in again.stderr


class FixedLungs:
    """A stand-in for the lung model: the same two lungs (rectangles) in every image."""

    def lungs(self, gray):
        from cxrcore.lungs.geometry import lungs_from_mask

        size = gray.shape[0]
        mask = np.zeros(gray.shape[:2], dtype=bool)
        mask[size // 5 : size * 4 // 5, size // 8 : size * 3 // 8] = True
        mask[size // 5 : size * 4 // 5, size * 5 // 8 : size * 7 // 8] = True
        return lungs_from_mask(mask)


def lungs_and_frame(inside_differs: bool):
    """Noise everywhere; class B is brighter inside the lung rectangles (``inside_differs``) or outside them."""

    def draw(rng, c, size):
        img = rng.normal(100, 20, (size, size))
        lungs = FixedLungs().lungs(img).mask
        region = lungs if inside_differs else ~ndimage.binary_dilation(lungs, iterations=6)
        img[region] += 50 * c
        return np.clip(img, 0, 255).astype(np.uint8)

    return draw


@pytest.fixture
def fixed_lungs(monkeypatch):
    import cxrcore.lungs.segment as segment

    monkeypatch.setattr(segment, "get_segmenter", lambda path=None: FixedLungs())


def test_a_difference_outside_the_lungs_is_flagged_by_the_frame_check(tmp_path, fixed_lungs):
    index = build_index(write_set(tmp_path / "frame", lungs_and_frame(False), size=STATS_SIZE))
    result = shortcut_check(index, outside_lungs=True)
    frame = result["outside_lungs"]
    assert frame["flagged"] and frame["ci_low"] > 0.6
    assert frame["message"].startswith("The frame alone predicts the label")
    assert frame["lungs_not_found"] == 0 and frame["chance"] == 0.5


def test_a_difference_inside_the_lungs_only_is_not_flagged_by_the_frame_check(tmp_path, fixed_lungs):
    index = build_index(write_set(tmp_path / "inside", lungs_and_frame(True), size=STATS_SIZE))
    result = shortcut_check(index, outside_lungs=True)
    assert result["flagged"]  # the whole image's histogram sees the brighter lungs
    frame = result["outside_lungs"]
    assert not frame["flagged"], frame
    assert frame["ci_low"] - frame["chance"] <= 0.10
    assert "does not predict" in frame["message"] or "somewhat better" in frame["message"]


def test_stratified_sample_keeps_each_class_share_by_hand():
    from cxrcore.data.audit import stratified_sample

    index = pd.DataFrame({"path": [f"{i}.png" for i in range(40)], "label": ["A"] * 30 + ["B"] * 10})
    sample = stratified_sample(index, 8, seed=1)
    assert sample["label"].value_counts().to_dict() == {"A": 6, "B": 2}  # 8 x 30/40 and 8 x 10/40
    assert sample.index.is_unique and set(sample.index) <= set(index.index)
    assert stratified_sample(index, 40).equals(index)  # no larger than the dataset: all of it
    rare = pd.DataFrame({"path": [f"{i}.png" for i in range(41)], "label": ["A"] * 40 + ["B"]})
    assert stratified_sample(rare, 10)["label"].value_counts().to_dict() == {"A": 10, "B": 1}  # all it has


def test_a_large_set_is_audited_on_a_stratified_sample(tmp_path, fresh_cache, monkeypatch):
    from cxrcore.data import audit as audit_module

    monkeypatch.setattr(audit_module, "SHORTCUT_SAMPLE", 16)
    root = write_set(tmp_path / "d", brightness_only, per_class=12)
    calls = []
    found = audit(root, progress=lambda done, total: calls.append(total))
    assert found["images"] == 24  # counts, leaks and duplicates: every image
    shortcut = found["shortcut"]
    assert shortcut["images"] == 16 and shortcut["sampled_from"] == 24 and set(calls) == {16}
    assert shortcut["message"].startswith("On a stratified sample of 16 of the 24 images: ")
    assert shortcut["outside_lungs"]["sampled_from"] == 24
