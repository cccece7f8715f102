"""The lung model: the shipped file and its record, segmenting files, the CLI, training, and the lung pixel
rules (crop to the lungs, black outside them) through the one pixel-rules function."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from conftest import CXR_DEV, cli, needs_cxr_dev, python_m_cxrcore
from cxrcore.data.io import decode_image, prepare_image
from cxrcore.data.pixels import PixelRules
from cxrcore.errors import ConfigError, DataError
from cxrcore.lungs import geometry
from cxrcore.lungs.segment import SHIPPED_MODEL, SHIPPED_RECORD, LungSegmenter, get_segmenter, shipped_record


def cxr_dev_image(label: str = "Normal") -> str:
    import csv

    with open(CXR_DEV / "manifest.csv", newline="") as fh:
        return str(CXR_DEV / next(r["path"] for r in csv.DictReader(fh) if r["label"] == label))


# -- the shipped model and its record -----------------------------------------------------------


def test_the_shipped_model_is_small_and_says_how_it_was_made():
    assert SHIPPED_MODEL.is_file() and SHIPPED_MODEL.stat().st_size < 10 * 1024 * 1024
    record = shipped_record()
    assert SHIPPED_RECORD.is_file()
    assert record["epochs"] >= 1 and record["best_epoch"] >= 1
    assert {d["name"] for d in record["data"]} >= {"lung-masks-openist"}
    assert "Shenzhen" in record["weights_licence"]  # what the weights may be used for, stated by who trained them
    for data in record["data"]:
        assert data["commits"] and all(len(c) == 40 for c in data["commits"])  # where the data came from
        assert data["licence"], data["name"]  # and under what terms
        assert sum(data["split"].values()) == data["used"] and data["split"]["test"] == len(data["test_images"])
    held = record["held_out"]
    assert 0 < held["iou"] <= held["dice"] <= 1
    assert held["dice"] >= 0.95  # the goal, measured on the held-out split at each image's own size


def test_the_shipped_model_loads_once_per_process():
    first = get_segmenter()
    assert get_segmenter() is first and first.size == shipped_record()["config"]["size"]


def test_a_missing_model_file_is_a_clear_error(tmp_path):
    from cxrcore.errors import RunError

    with pytest.raises(RunError, match="lung model not found: .*nothing.keras"):
        LungSegmenter(tmp_path / "nothing.keras")


@needs_cxr_dev
def test_two_lungs_are_found_on_a_real_film_in_every_format(tmp_path):
    segmenter = get_segmenter()
    lungs = segmenter.lungs(decode_image(cxr_dev_image("Normal")))
    assert lungs.found == 2 and lungs.status == "ok", lungs.record()
    left, right = lungs.boxes["image_left"], lungs.boxes["image_right"]
    assert left[2] <= right[0] + 10  # side by side, the left one on the left
    assert left[3] > 224 * 0.5 and right[3] > 224 * 0.5  # both reach the lower half
    assert 0.1 <= lungs.fraction <= 0.6
    # the same picture as JPEG and, upscaled to 448 x 336, as a non-square PNG: boxes in its own pixels
    rgb = np.asarray(Image.open(cxr_dev_image("Normal")).convert("L"))
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=95)
    jpeg = segmenter.lungs(decode_image(buf.getvalue(), name="upload.jpg"))
    assert jpeg.found == 2 and abs(jpeg.fraction - lungs.fraction) < 0.03
    big = Image.fromarray(rgb).resize((448, 336), Image.BILINEAR)
    wide = segmenter.lungs(np.asarray(big))
    assert wide.labels.shape == (336, 448)
    for side in geometry.SIDES:
        x0, y0, x1, y1 = wide.boxes[side]
        ref = lungs.boxes[side]
        assert abs(x0 - 2 * ref[0]) <= 8 and abs(x1 - 2 * ref[2]) <= 8
        assert abs(y0 - 1.5 * ref[1]) <= 8 and abs(y1 - 1.5 * ref[3]) <= 8


def test_lungs_of_many_images_are_each_images_own_lungs():
    """The audit finds the lungs of hundreds of images in batched forward passes: the same masks as one call per
    image (images of different sizes, a blank one, a repeated one)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:96, :96]
    lung_like = np.where(
        ((xx - 30) ** 2 / 200 + (yy - 48) ** 2 / 900 < 1) | ((xx - 66) ** 2 / 200 + (yy - 48) ** 2 / 900 < 1), 40, 200
    )
    images = [
        lung_like.astype(np.uint8),
        (lung_like + rng.integers(0, 30, lung_like.shape)).astype(np.uint8)[:80, :90],
        np.zeros((64, 64), np.uint8),
        rng.integers(0, 255, (70, 70, 3)).astype(np.uint8),
        lung_like.astype(np.uint8),
    ]
    one_by_one = [LungSegmenter().lungs(image) for image in images]
    together = LungSegmenter().lungs_of_many(images, batch_size=2)
    assert [lungs.mask.shape for lungs in together] == [image.shape[:2] for image in images]
    for alone, batched in zip(one_by_one, together):
        assert alone.found == batched.found
        np.testing.assert_array_equal(alone.mask, batched.mask)


def test_a_blank_image_finds_no_lungs_and_says_so():
    lungs = get_segmenter().lungs(np.zeros((64, 64, 3), dtype=np.uint8))
    assert lungs.found == 0 and lungs.status == "no lungs found"
    assert lungs.record()["lung_boxes"] == {"image_left": None, "image_right": None}


# -- the CLI --------------------------------------------------------------------------------------


# the commands run in this process through cxrcore.cli.main; `lungs train`'s refusal to overwrite runs
# `python -m cxrcore` itself, in its own process (the file's one)


@pytest.mark.slow
@needs_cxr_dev
def test_cli_segment_writes_masks_and_one_json_line_each(tmp_path):
    import pydicom
    from test_io import write_dicom  # the suite's DICOM writer

    source = cxr_dev_image("Normal")
    gray = np.asarray(Image.open(source).convert("L"))
    dicom = tmp_path / "film.dcm"
    write_dicom(dicom, gray.astype(np.uint16) * 16)  # 12-bit, stretched back to 0..255 when read
    assert pydicom.dcmread(dicom).Rows == gray.shape[0]
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    blank = tmp_path / "blank.png"
    Image.fromarray(np.zeros((50, 80), dtype=np.uint8)).save(blank)
    out = tmp_path / "masks"
    proc = cli("lungs", "segment", source, dicom, corrupt, blank, "--out", out, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]  # one file could not be read; the others went on
    lines = [json.loads(line) for line in proc.stdout.strip().splitlines()]
    assert [line["path"] for line in lines] == [source, str(dicom), str(corrupt), str(blank)]
    png, dcm, bad, empty = lines
    for found in (png, dcm):
        assert found["lungs_found"] == 2 and found["status"] == "ok"
        assert 0.1 <= found["lung_fraction"] <= 0.6
        assert set(found["lung_boxes"]) == {"image_left", "image_right"}
        mask = np.asarray(Image.open(found["mask"]))
        assert mask.shape == gray.shape and set(np.unique(mask)) <= {0, 255}
        assert abs((mask > 0).mean() - found["lung_fraction"]) < 1e-3
    for side in geometry.SIDES:  # the DICOM's pixels are the PNG's, up to the stretch's rounding
        assert np.abs(np.subtract(png["lung_boxes"][side], dcm["lung_boxes"][side])).max() <= 3
    assert "cannot read image" in bad["error"] and "mask" not in bad
    assert empty["lungs_found"] == 0 and empty["lung_boxes"] == {"image_left": None, "image_right": None}
    assert np.asarray(Image.open(empty["mask"])).shape == (50, 80)
    assert "no lungs found" in proc.stderr


@pytest.mark.slow
def test_cli_train_makes_a_model_and_its_record_and_never_overwrites(tmp_path):
    masks = tmp_path / "set"
    (masks / "images").mkdir(parents=True)
    (masks / "masks").mkdir()
    rows = ["image,mask,source"]
    rng = np.random.default_rng(0)
    for i in range(14):
        img = rng.normal(60, 10, (40, 48))
        mask = np.zeros((40, 48), dtype=np.uint8)
        mask[8:32, 6:20] = mask[8:34, 28:42] = 255
        img[mask > 0] += 100
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(masks / "images" / f"x{i}.jpg")
        Image.fromarray(mask).save(masks / "masks" / f"x{i}.png")
        rows.append(f"images/x{i}.jpg,masks/x{i}.png,{'restricted' if i in (3, 9) else 'open'}")
    (masks / "manifest.csv").write_text("\n".join(rows) + "\n")
    (masks / "SOURCE.md").write_text("# toy\nLicence: CC0. Commit 0123456789abcdef0123456789abcdef01234567.\n")
    out = tmp_path / "model"
    args = ["lungs", "train", "--data", masks, "--out", out, "--encoder", "unet", "--size", "32", "--epochs", "2"]
    args += ["--exclude", "source=restricted", "--weights-licence", "CC0, like the toy data"]
    proc = cli(*args, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == str(out)
    record = json.loads((out / "lungs.json").read_text())
    assert record["data"][0]["split"] == {"train": 10, "val": 1, "test": 1}  # 14 pairs, 2 excluded
    assert record["data"][0]["excluded"] == {"source=restricted": 2} and record["data"][0]["pairs"] == 12
    assert not {"x3.jpg", "x9.jpg"} & set(record["data"][0]["test_images"])
    assert record["weights_licence"] == "CC0, like the toy data"
    assert record["data"][0]["commits"] == ["0123456789abcdef0123456789abcdef01234567"]
    assert record["data"][0]["licence"] == ["Licence: CC0. Commit 0123456789abcdef0123456789abcdef01234567."]
    assert len(record["history"]["loss"]) == 2 and "dice" in record["held_out"]
    assert "held-out (1 images): Dice" in proc.stderr
    segmenter = LungSegmenter(out / "lungs.keras")
    assert segmenter.size == 32 and segmenter.lungs(np.zeros((40, 48), np.uint8)).labels.shape == (40, 48)
    again = python_m_cxrcore(*args, check=False, timeout=300)
    assert again.returncode == 2 and "never overwritten" in again.stderr


def test_a_mask_set_without_manifest_or_with_missing_files_is_refused(tmp_path):
    from cxrcore.lungs.train import LungTrainConfig, read_mask_set

    with pytest.raises(DataError, match="no manifest.csv"):
        read_mask_set(tmp_path)
    (tmp_path / "manifest.csv").write_text("image,mask\nimages/a.jpg,masks/a.png\n")
    with pytest.raises(DataError, match="1 listed files are missing|2 listed files are missing"):
        read_mask_set(tmp_path)
    from cxrcore.lungs.train import load_mask

    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(DataError, match="cannot read .*broken.png"):
        load_mask(str(tmp_path / "broken.png"))
    with pytest.raises(ConfigError, match="--epochs must be"):
        LungTrainConfig(data=("x",), out="y", epochs=0).validate()
    with pytest.raises(ConfigError, match="--exclude takes COLUMN=VALUE, got 'Shenzhen'"):
        LungTrainConfig(data=("x",), out="y", exclude=("Shenzhen",)).validate()


# -- the lung pixel rules ------------------------------------------------------------------------


class FixedSegmenter(LungSegmenter):
    """The real crop and mask code around fixed lungs: rectangles at known places of any image."""

    def __init__(self):
        self._memo = {}
        self.calls = 0

    def lungs(self, rgb, *, grid=None):
        self.calls += 1
        height, width = (grid, grid) if grid else rgb.shape[:2]
        mask = np.zeros((height, width), dtype=bool)
        mask[height // 4 : height * 3 // 4, width // 8 : width * 3 // 8] = True
        mask[height // 4 : height * 3 // 4, width * 5 // 8 : width * 7 // 8] = True
        return geometry.lungs_from_mask(mask)


@pytest.fixture
def fixed(monkeypatch):
    import cxrcore.lungs.segment as segment

    fake = FixedSegmenter()
    monkeypatch.setattr(segment, "get_segmenter", lambda path=None: fake)
    return fake


def test_lung_crop_cuts_to_the_lungs_box_with_its_margin(tmp_path, fixed):
    # a 256 x 256 image whose columns count 0..255: after the crop, the columns left say where it cut
    ramp = np.tile(np.arange(256, dtype=np.uint8), (256, 1))
    path = tmp_path / "ramp.png"
    Image.fromarray(ramp).save(path)
    out = prepare_image(path, 64, rules=PixelRules(lung_crop=True))
    # lungs: x 32..224, y 64..192 on the 256 grid; margin 8%: 15 and 10 pixels -> x 17..239, y 54..202
    assert out.shape == (64, 64, 3)
    assert abs(int(out[32, 0, 0]) - 17) <= 2 and abs(int(out[32, -1, 0]) - 238) <= 2
    plain = prepare_image(path, 64)
    assert int(plain[32, 0, 0]) <= 2 and int(plain[32, -1, 0]) >= 253


def test_lung_mask_blacks_out_the_outside_only(tmp_path, fixed):
    path = tmp_path / "flat.png"
    Image.fromarray(np.full((100, 100), 200, dtype=np.uint8)).save(path)
    out = prepare_image(path, 100, rules=PixelRules(lung_mask=True))[..., 0]
    assert out[50, 25] == 200 and out[50, 75] == 200  # inside the lungs
    assert out[5, 5] == 0 and out[95, 50] == 0 and out[50, 50] == 0  # the corner, the bottom, the midline
    assert out[23, 25] == 200 and out[22, 25] == 0  # the lung starts at row 25: grown by 2 px, not more
    assert 0.3 < (out > 0).mean() < 0.4


def test_without_two_lungs_the_image_is_kept_whole(tmp_path, monkeypatch):
    import cxrcore.lungs.segment as segment

    class NoLungs(FixedSegmenter):
        def lungs(self, rgb, *, grid=None):
            shape = (grid, grid) if grid else rgb.shape[:2]
            return geometry.lungs_from_mask(np.zeros(shape, dtype=bool))

    monkeypatch.setattr(segment, "get_segmenter", lambda path=None: NoLungs())
    path = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (80, 80), dtype=np.uint8)).save(path)
    plain = prepare_image(path, 40)
    assert np.array_equal(prepare_image(path, 40, rules=PixelRules(lung_crop=True, lung_mask=True)), plain)


@needs_cxr_dev
def test_lung_rules_on_a_real_film():
    path = cxr_dev_image("COVID")
    plain = prepare_image(path, 128)
    cropped = prepare_image(path, 128, rules=PixelRules(lung_crop=True))
    masked = prepare_image(path, 128, rules=PixelRules(lung_mask=True))
    assert cropped.shape == masked.shape == (128, 128, 3)
    assert not np.array_equal(cropped, plain)
    black = (masked[..., 0] == 0).mean()
    assert 0.3 < black < 0.9  # the outside of the lungs, not nothing and not everything
    assert np.array_equal(masked[masked > 0], plain[masked > 0])  # the lungs themselves are untouched
