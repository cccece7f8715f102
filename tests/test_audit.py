"""The data audit's shortcut check on synthetic sets whose classes differ in a known way, and its per-source
view (class mix per source, the source-only AUC, the source check, the verdict) worked by hand."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import ndimage

from cxrcore.data.audit import (
    BORDER_FRACTION,
    STATS_SIZE,
    audit,
    border_mask,
    shortcut_check,
    source_check,
)
from cxrcore.data.index import build_index
from cxrcore.data.sources import source_only_auc, source_verdict
from cxrcore.data.sources import source_table as sources


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
    assert first["sources"] == [  # every class from one source
        {
            "source": "north",
            "counts": {"A": 12, "B": 0},
            "images": 12,
            "prevalence": {"A": 1.0, "B": 0.0},
            "single_class": True,
        },
        {
            "source": "south",
            "counts": {"A": 0, "B": 12},
            "images": 12,
            "prevalence": {"A": 0.0, "B": 1.0},
            "single_class": True,
        },
    ]
    assert first["source_only_auc"] == 1.0
    assert [c["checked"] for c in first["source_check"]["classes"]] == [False, False]  # one source per class
    assert first["source_check"]["classes"][0]["reason"] == "one source only: `north`"
    assert (
        "Each class comes from its own source(s): A from `north` (12 images); B from `south` (12 images)."
        in (first["verdict"][0])
    )
    assert first["verdict"][0].endswith("Expect it not to transfer to another hospital.")
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

    def lungs_of_many(self, images):
        return [self.lungs(image) for image in images]


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
    assert found["sources"] is None and found["source_only_auc"] is None and found["source_check"] is None
    assert found["verdict"][0].startswith("No source is named")


# ---------------------------------------------------------------- the per-source view


def frame(rows: list[tuple[str, str, int]]) -> pd.DataFrame:
    """An index without images: ``(label, source, images)`` rows, one patient per image."""
    labels = [label for label, _, n in rows for _ in range(n)]
    where = [source for _, source, n in rows for _ in range(n)]
    return pd.DataFrame({"label": labels, "source": where, "patient_id": [f"p{i}" for i in range(len(labels))]})


def test_the_class_mix_of_each_source_by_hand(tmp_path):
    root = tmp_path / "d"
    rows = [("A", "north"), ("A", "north"), ("A", "north"), ("A", "south"), ("B", "south"), ("B", "south")]
    rows += [("C", "east"), ("C", "east"), ("C", "")]  # the last one names no source
    for i, (label, _) in enumerate(rows):
        (root / label).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((32, 32), 10 * i, np.uint8)).save(root / label / f"{i}.png")
    manifest = [
        {"path": f"{label}/{i}.png", "label": label, "patient_id": f"p{i}", "source": src}
        for i, (label, src) in enumerate(rows)
    ]
    pd.DataFrame(manifest).to_csv(root / "manifest.csv", index=False)
    table = sources(build_index(root))
    assert [row["source"] for row in table] == ["(unknown)", "east", "north", "south"]  # sorted
    unknown, east, north, south = table
    assert north["counts"] == {"A": 3, "B": 0, "C": 0} and north["images"] == 3 and north["single_class"]
    assert north["prevalence"] == {"A": 1.0, "B": 0.0, "C": 0.0}
    assert south["counts"] == {"A": 1, "B": 2, "C": 0} and south["images"] == 3 and not south["single_class"]
    assert south["prevalence"]["A"] == pytest.approx(1 / 3, abs=1e-4)
    assert south["prevalence"]["B"] == pytest.approx(2 / 3, abs=1e-4)
    assert east["counts"] == {"A": 0, "B": 0, "C": 2} and east["single_class"]
    assert unknown["counts"] == {"A": 0, "B": 0, "C": 1} and unknown["images"] == 1
    assert sources(frame([("A", "", 3), ("B", "", 3)])) is None  # no source named: no table


def test_the_source_only_auc_by_hand():
    assert source_only_auc(frame([("A", "north", 5), ("B", "south", 5)])) == 1.0  # each source one class
    assert source_only_auc(frame([("A", "north", 4), ("B", "north", 4), ("A", "south", 2), ("B", "south", 2)])) == 0.5
    # A: 8 at x, 2 at y; B: 3 at x, 7 at y. A's share is 8/11 at x and 2/9 at y: of the 10 x 10 pairs of an A and a
    # B, 8 x 7 are ranked right, 8 x 3 and 2 x 7 tie (half each), 2 x 3 wrong: (56 + 12 + 7) / 100
    mixed = frame([("A", "x", 8), ("A", "y", 2), ("B", "x", 3), ("B", "y", 7)])
    assert source_only_auc(mixed) == pytest.approx(0.75)
    # three classes, macro: C and N share r half and half (each 0.75: ranked right against V, tied with the
    # other), V alone at w (1.0): (0.75 + 0.75 + 1) / 3
    three = frame([("C", "r", 2), ("N", "r", 2), ("V", "w", 2)])
    assert source_only_auc(three) == pytest.approx(2.5 / 3)
    assert source_only_auc(frame([("A", "north", 3), ("B", "north", 3)])) is None  # one source
    assert source_only_auc(frame([("A", "", 3), ("B", "", 3)])) is None  # none named


def test_the_verdict_says_expect_no_transfer_only_where_classes_are_separated_by_source():
    def verdict(rows):
        index = frame(rows)
        return source_verdict(sources(index), source_only_auc(index), None)

    separated = verdict([("A", "north", 12), ("B", "south", 30), ("B", "west", 5)])
    assert separated == [
        "Each class comes from its own source(s): A from `north` (12 images); B from `south` (30 images) and "
        "`west` (5 images). A model can learn the source instead of the finding. Expect it not to transfer to "
        "another hospital."
    ]
    one_alone = verdict([("C", "r", 8), ("N", "r", 10), ("V", "w", 7)])
    assert one_alone[0].startswith("V comes only from `w` (7 images), which holds no other class")
    assert one_alone[0].endswith("Expect it not to transfer to another hospital.")
    assert not any("transfer" in sentence for sentence in one_alone[1:])
    almost = verdict([("A", "north", 95), ("B", "north", 1), ("B", "south", 99), ("A", "south", 1)])
    assert almost[0].startswith("The classes are almost separated by source") and "AUC 0.99" in almost[0]
    assert "Expect it not to transfer" in almost[0]
    shared = verdict([("A", "north", 20), ("B", "north", 20), ("A", "south", 10), ("B", "south", 10)])
    assert shared == [
        "The classes share their sources: the source alone predicts the label with AUC 0.50 (1.00: fully "
        "separated, 0.50: not at all)."
    ]
    assert verdict([("A", "", 3), ("B", "", 3)])[0].startswith("No source is named")
    assert verdict([("A", "here", 3), ("B", "here", 4)]) == [
        "All 7 images come from one source, `here` (3 A, 4 B): its own test split says nothing about another hospital."
    ]


def write_sourced(root, per_source=12, size=64):
    """Classes A, B, C; A and B from north and south (12 images each, two per patient), C from north only.
    Within A the south images are brighter; within B both hospitals draw from the same noise."""
    rng = np.random.default_rng(0)
    rows = []
    for label, hospitals in (("A", ("north", "south")), ("B", ("north", "south")), ("C", ("north",))):
        (root / label).mkdir(parents=True, exist_ok=True)
        for hospital in hospitals:
            brighter = 50 if (label, hospital) == ("A", "south") else 0
            for i in range(per_source):
                pixels = np.clip(rng.normal(100 + brighter, 20, (size, size)), 0, 255).astype(np.uint8)
                name = f"{label}/{hospital}_{i:02d}.png"
                Image.fromarray(pixels).save(root / name)
                rows.append(
                    {"path": name, "label": label, "patient_id": f"{label}{hospital}{i // 2}", "site": hospital}
                )
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    return root


def test_the_source_check_flags_a_hospital_that_looks_different_within_a_class(tmp_path):
    check = source_check(build_index(write_sourced(tmp_path / "d")))
    a, b, c = check["classes"]
    assert a["class"] == "A" and a["checked"] and a["sources"] == {"north": 12, "south": 12}
    assert a["chance"] == 0.5 and a["flagged"] and a["ci_low"] > 0.8  # brighter in the south
    assert b["checked"] and not b["flagged"], b  # the same images in both hospitals
    assert b["ci_low"] - b["chance"] <= 0.10 and b["ci_low"] <= b["balanced_accuracy"] <= b["ci_high"]
    assert c == {
        "class": "C",
        "checked": False,
        "flagged": False,
        "images": 12,
        "sources": {"north": 12},
        "reason": "one source only: `north`",
    }
    assert check["flagged"] and check["images"] == 60  # 12 A and 12 B from each hospital, 12 C
    assert check["message"].startswith("Within A, the image tells its source apart (A: balanced accuracy")
    assert " Within B, it does not (B: balanced accuracy " in check["message"]
    assert check["message"].endswith(" Not checked: C (one source only: `north`).")
    assert source_check(frame([("A", "", 3), ("B", "", 3)])) is None  # no source named: nothing read
    # the finding joins the verdict; the class mix alone (C only at north) is not a separation for A and B
    index = build_index(tmp_path / "d")
    said = source_verdict(sources(index), source_only_auc(index), check)
    assert said[-2] == check["message"].split(" Not checked:")[0]
    assert said[-1].startswith("Here the classes share their sources, so telling the sources apart does not give")
    assert not any("Expect it not to transfer" in sentence for sentence in said)


def test_the_model_card_lists_sources_from_the_new_and_the_old_audit(tmp_path):
    from test_model_card import make_run

    from cxrcore.evaluation import model_card

    run = make_run(tmp_path, external_accuracy=None)
    index = frame([("Abnormal", "north", 150), ("Normal", "south", 100), ("Normal", "north", 50)])
    table = sources(index)
    verdict = source_verdict(table, source_only_auc(index), None)
    audit_base = {"shortcut": {"accuracy": None}, "patient_leak": {"patients": 0}, "duplicates": {"groups": 0}}
    run.write_audit({**audit_base, "sources": table, "source_only_auc": source_only_auc(index), "verdict": verdict})
    card = model_card.render(run)
    assert "- Source `north`: 150 Abnormal, 50 Normal\n" in card
    assert "- Source `south`: 100 Normal (single class)\n" in card
    assert f"- Data audit, sources: {verdict[0]}" in card and "Normal comes only from" not in card
    # an audit recorded before the per-source view: {source: {class: images}}, no verdict
    run.write_audit({**audit_base, "sources": {"north": {"Abnormal": 150, "Normal": 50}, "south": {"Normal": 100}}})
    old = model_card.render(run)
    assert "- Source `north`: 150 Abnormal, 50 Normal\n" in old
    assert "- Source `south`: 100 Normal (single class)\n" in old
    assert "Data audit, sources:" not in old


def test_the_audit_checks_sources_on_the_shortcut_checks_sample_reading_each_image_once(
    tmp_path, fresh_cache, monkeypatch, fixed_lungs
):
    from cxrcore.data import audit as audit_module

    monkeypatch.setattr(audit_module, "SHORTCUT_SAMPLE", 80)
    root = write_sourced(tmp_path / "d", per_source=20)  # 100 images: A and B 40 each, C 20
    calls = []
    found = audit(root, folds=3, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(50, 80), (80, 80)]  # the sample read once, for both checks
    check = found["source_check"]
    assert check["images"] == 80 and check["sampled_from"] == 100
    assert check["message"].startswith("On a stratified sample of 80 of the 100 images: Within A, the image tells")
    assert [c["class"] for c in check["classes"] if c["flagged"]] == ["A"]
    assert [row["images"] for row in found["sources"]] == [60, 40]  # north, south: every image, not the sample
    assert found["verdict"][-2] in check["message"]


def test_a_single_class_source_beside_shared_classes_is_named_with_the_way_to_leave_it_out():
    def row(source, a, b):
        return {"source": source, "counts": {"A": a, "B": b}, "images": a + b, "single_class": (a == 0) != (b == 0)}

    table = [row("north", 50, 50), row("south", 40, 60), row("east", 70, 0)]
    verdict = " ".join(source_verdict(table, 0.72, None))
    assert "`east` (70 A) holds one class only" in verdict and "--drop-single-class-sources" in verdict
    assert "Expect it not to transfer" not in verdict  # A is not only from single-class sources
    mixed = " ".join(source_verdict([row("north", 50, 50), row("south", 40, 60)], 0.55, None))
    assert "holds one class only" not in mixed
