"""The data audit's shortcut check on synthetic sets whose classes differ in a known way."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

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


@pytest.mark.slow
def test_cli_audit_prints_the_shortcut_check_last(tmp_path):
    import subprocess
    import sys

    from conftest import REPO

    root = write_set(tmp_path / "bright", brightness_only, per_class=20)
    proc = subprocess.run(
        [sys.executable, "-m", "cxrcore", "audit", str(root)], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["shortcut"]["chance"] == 0.5 and result["shortcut"]["flagged"]
    assert result["shortcut"]["ci_low"] <= result["shortcut"]["accuracy"] <= result["shortcut"]["ci_high"]
    assert "WARNING: Labels can be told apart without looking at the lungs" in proc.stderr
