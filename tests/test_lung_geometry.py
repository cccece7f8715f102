"""Lung geometry on hand-drawn masks: boxes, fraction, the two-lung rule, crop box, a map's lung share."""

from __future__ import annotations

import numpy as np
import pytest

from cxrcore.data.pixels import resize
from cxrcore.lungs import geometry


def two_lungs(height=100, width=100):
    """A left lung at rows 20..69, columns 10..39 and a right one at rows 20..79, columns 60..89."""
    mask = np.zeros((height, width), dtype=bool)
    mask[20:70, 10:40] = True  # 50 x 30 = 1500 pixels
    mask[20:80, 60:90] = True  # 60 x 30 = 1800 pixels
    return mask


def test_box_of_is_exclusive_at_the_far_end():
    mask = np.zeros((30, 40), dtype=bool)
    mask[10:20, 5:15] = True
    assert geometry.box_of(mask) == [5, 10, 15, 20]
    assert geometry.box_of(np.zeros((5, 5))) is None
    one = np.zeros((5, 5), dtype=bool)
    one[2, 3] = True
    assert geometry.box_of(one) == [3, 2, 4, 3]


def test_two_lungs_boxes_fraction_and_status():
    lungs = geometry.lungs_from_mask(two_lungs())
    assert lungs.found == 2
    assert lungs.boxes == {"image_left": [10, 20, 40, 70], "image_right": [60, 20, 90, 80]}
    assert lungs.fraction == pytest.approx(3300 / 10000)
    assert lungs.status == "ok"
    assert set(np.unique(lungs.labels[20:70, 10:40])) == {1}
    assert set(np.unique(lungs.labels[20:80, 60:90])) == {2}
    record = lungs.record()
    assert record["lungs_found"] == 2 and record["lung_fraction"] == 0.33
    assert record["lung_boxes"]["image_right"] == [60, 20, 90, 80]


def test_lungs_joined_through_the_middle_are_cut_in_two():
    mask = two_lungs()
    mask[30:34, 40:60] = True  # a bridge four rows high joins them (the trachea, the heart's shadow)
    lungs = geometry.lungs_from_mask(mask)
    assert lungs.found == 2
    left, right = lungs.boxes["image_left"], lungs.boxes["image_right"]
    assert left[0] == 10 and right[2] == 90
    assert left[2] <= right[0]  # the two boxes do not overlap


def test_one_lung_reaching_over_the_centre_is_not_cut():
    mask = np.zeros((100, 100), dtype=bool)
    mask[20:80, 20:55] = True  # one region, 5 of its 35 columns past the centre
    lungs = geometry.lungs_from_mask(mask)
    assert lungs.found == 1
    assert lungs.status == "only one lung found"
    assert lungs.boxes["image_left"] == [20, 20, 55, 80] and lungs.boxes["image_right"] is None


def test_specks_and_a_tiny_second_region_are_not_lungs():
    mask = np.zeros((100, 100), dtype=bool)
    mask[20:80, 10:40] = True  # 1800 pixels
    mask[50:53, 70:73] = True  # 9 pixels: under 1% of the image
    assert geometry.lungs_from_mask(mask).found == 1
    mask[40:56, 70:80] = True  # 160 pixels: over 1% of the image, under 15% of the first lung
    assert geometry.lungs_from_mask(mask).found == 1
    empty = geometry.lungs_from_mask(np.zeros((10, 10)))
    assert empty.found == 0 and empty.status == "no lungs found" and empty.fraction == 0


def test_holes_in_a_lung_are_filled():
    mask = two_lungs()
    mask[40:45, 20:25] = False  # a 25-pixel hole, as a dense nodule leaves in a predicted mask
    lungs = geometry.lungs_from_mask(mask)
    assert lungs.fraction == pytest.approx(3300 / 10000)


def test_an_implausible_lung_fraction_is_named():
    mask = np.zeros((100, 100), dtype=bool)
    mask[5:95, 2:48] = True
    mask[5:95, 52:98] = True  # 82.8% of the image
    lungs = geometry.lungs_from_mask(mask)
    assert lungs.found == 2
    assert lungs.status.startswith("lung fraction 0.83 outside")


def test_crop_box_adds_the_margin_and_clips():
    lungs = geometry.lungs_from_mask(two_lungs())
    # both lungs: x 10..90, y 20..80 -> 80 x 60; 10% margin: 8 and 6 pixels
    assert geometry.crop_box(lungs, 0.1) == [2, 14, 98, 86]
    assert geometry.crop_box(lungs, 0.5) == [0, 0, 100, 100]
    one = np.zeros((100, 100), dtype=bool)
    one[20:80, 10:40] = True
    assert geometry.crop_box(geometry.lungs_from_mask(one)) is None


def test_lung_share_inside_outside_and_uniform():
    mask = two_lungs()
    inside = np.where(mask, 1.0, 0.0)
    assert geometry.lung_share(inside, mask) == 1.0
    assert geometry.lung_share(1.0 - inside, mask) == 0.0
    assert geometry.lung_share(np.ones((100, 100)), mask) == pytest.approx(0.33)
    half = np.zeros((100, 100))
    half[20:70, 10:40] = 1.0  # 1500 in the left lung
    half[0:10, 0:150] = 1.0  # 1000 on the top edge, outside
    assert geometry.lung_share(half, mask) == pytest.approx(0.6)
    assert geometry.lung_share(np.zeros((100, 100)), mask) is None
    assert geometry.lung_share(np.ones((100, 100)), np.zeros((100, 100))) is None
    with pytest.raises(ValueError, match="differ in shape"):
        geometry.lung_share(np.ones((10, 10)), mask)


def test_dice_and_iou_by_hand():
    a = np.zeros((10, 10), dtype=bool)
    b = np.zeros((10, 10), dtype=bool)
    a[0:4, 0:5] = True  # 20
    b[2:6, 0:5] = True  # 20, overlapping 10
    assert geometry.dice(a, b) == pytest.approx(0.5)
    assert geometry.iou(a, b) == pytest.approx(10 / 30)
    assert geometry.dice(a, a) == 1.0 and geometry.dice(a * 0, b * 0) == 1.0


def test_outline_is_the_edge_only():
    mask = np.zeros((10, 10), dtype=bool)
    mask[2:8, 2:8] = True
    edge = geometry.outline(mask)
    assert edge.sum() == 36 - 16  # a 6x6 square minus its 4x4 inside
    assert not edge[4, 4] and edge[2, 2]


def test_the_one_resize_keeps_labels_by_nearest_neighbour():
    labels = np.zeros((4, 4), dtype=np.int8)
    labels[:, :2], labels[:, 2:] = 1, 2
    big = resize(labels, 8, 12, nearest=True)
    assert big.shape == (8, 12) and set(np.unique(big)) == {1, 2} and big.dtype == np.int8


def test_draw_outline_colours_the_edge_of_the_resized_mask_only():
    mask = np.zeros((10, 10), dtype=bool)
    mask[2:8, 2:8] = True
    image = np.zeros((20, 20, 3), dtype=np.uint8)
    drawn = geometry.draw_outline(image, mask, colour=(1, 2, 3), width=1)
    assert image.sum() == 0  # the input is not changed
    coloured = (drawn == (1, 2, 3)).all(axis=2)
    assert coloured[4, 4] and coloured[4, 10] and not coloured[10, 10]  # the square's edge at twice the size
    assert not coloured[0, 0] and not coloured[19, 19]
    assert geometry.draw_outline(image, np.zeros((10, 10)), (1, 2, 3)) is image
