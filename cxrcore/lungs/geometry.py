"""Lung fields as geometry: from a model's probability map to two lungs, their boxes, the lung fraction,
a crop box, and how much of an explanation map lies inside the lungs. NumPy and SciPy only (no TensorFlow),
so it is cheap to import and every rule here is tested on hand-drawn masks.

Conventions: a mask is a 2-D array, ``True``/non-zero inside a lung. A box is ``[x0, y0, x1, y1]`` in
pixels of the image the mask belongs to, ``x1`` and ``y1`` exclusive. ``image_left`` and ``image_right``
are the lungs on the left and the right of the picture as displayed (on a standard PA film that is the
patient's right lung and left lung respectively).
SciPy is imported by the functions that use it, so importing this module (as the explanation scores and the
CLI's parser do, for the constants) stays cheap.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..data.pixels import resize

#: A region smaller than this share of the image is noise, not a lung.
MIN_LUNG_SHARE = 0.01
#: A lung smaller than this share of the larger one is not counted as the second lung.
MIN_PAIR_RATIO = 0.15
#: A region with at least this share of its pixels on each side of the split column is two lungs joined.
JOINED_SIDE_SHARE = 0.2
#: Where the split column between two joined lungs is looked for: this band of the width around the centre.
MIDLINE_BAND = (0.3, 0.7)
#: Plausible lung fraction of a frontal chest film (both lungs over the whole image).
PLAUSIBLE_FRACTION = (0.10, 0.60)
#: Margin around the lungs' box for ``lung_crop``: this share of the box's width and height on each side.
CROP_MARGIN = 0.08
#: For ``lung_mask``: the lung mask is grown by this share of the image's side before the outside is blacked out.
MASK_GROW = 0.02
#: Below this share of an explanation's mass inside the lungs, most of the evidence is outside them.
LUNG_SHARE_WARN = 0.5

SIDES = ("image_left", "image_right")


@dataclass(frozen=True)
class Lungs:
    """Two lungs (or fewer, when they could not be found) in one image.

    ``labels`` is an ``int8`` array of the mask's shape: 0 outside, 1 the lung on the image's left, 2 the
    lung on its right. ``boxes`` maps each side to its box, or ``None`` when that lung was not found.
    """

    labels: np.ndarray
    boxes: dict[str, list[int] | None] = field(default_factory=dict)

    @property
    def mask(self) -> np.ndarray:
        return self.labels > 0

    @property
    def found(self) -> int:
        """How many lungs were found: 0, 1 or 2."""
        return sum(box is not None for box in self.boxes.values())

    @property
    def fraction(self) -> float:
        """The share of the image inside either lung."""
        return float(self.mask.mean()) if self.labels.size else 0.0

    @property
    def status(self) -> str:
        """``"ok"``, or what is wrong, in words: fewer than two lungs, or an implausible lung fraction."""
        if self.found < 2:
            return "no lungs found" if self.found == 0 else "only one lung found"
        low, high = PLAUSIBLE_FRACTION
        if not low <= self.fraction <= high:
            return f"lung fraction {self.fraction:.2f} outside the plausible {low:.2f}-{high:.2f}"
        return "ok"

    def record(self) -> dict:
        """What ``python -m cxrcore lungs segment`` prints per image (without the path)."""
        return {
            "lungs_found": self.found,
            "status": self.status,
            "lung_fraction": round(self.fraction, 4),
            "lung_boxes": {side: self.boxes.get(side) for side in SIDES},
        }


def box_of(mask: np.ndarray) -> list[int] | None:
    """``[x0, y0, x1, y1]`` (exclusive ends) of a mask's non-zero pixels, or ``None`` for an empty mask."""
    rows, cols = np.any(mask, axis=1), np.any(mask, axis=0)
    if not rows.any():
        return None
    y0, y1 = np.flatnonzero(rows)[[0, -1]]
    x0, x1 = np.flatnonzero(cols)[[0, -1]]
    return [int(x0), int(y0), int(x1) + 1, int(y1) + 1]


def _split_joined(region: np.ndarray) -> np.ndarray:
    """Cut a region that spans the midline (two lungs joined through the trachea or the heart's shadow) at the
    column of the band around the centre where it is thinnest. Returns the region with that column cleared."""
    width = region.shape[1]
    lo, hi = int(width * MIDLINE_BAND[0]), max(int(width * MIDLINE_BAND[1]), int(width * MIDLINE_BAND[0]) + 1)
    column = lo + int(np.argmin(region[:, lo:hi].sum(axis=0)))
    left, right = region[:, :column].sum(), region[:, column + 1 :].sum()
    total = region.sum()
    if total == 0 or min(left, right) < JOINED_SIDE_SHARE * total:
        return region  # one lung reaching over the centre, not two joined
    cut = region.copy()
    cut[:, column] = False
    return cut


def lungs_from_mask(mask: np.ndarray) -> Lungs:
    """Two lungs from a binary mask: the largest region on each side of the picture.

    Regions under :data:`MIN_LUNG_SHARE` of the image are dropped; a region that spans the midline with a
    good share on each side is cut at its thinnest column near the centre first; holes in each lung are
    filled. The second lung must be at least :data:`MIN_PAIR_RATIO` of the first's size.
    """
    from scipy import ndimage

    mask = np.asarray(mask) > 0
    if mask.ndim != 2:
        raise ValueError(f"a lung mask is 2-D, got shape {mask.shape}")
    labels = np.zeros(mask.shape, dtype=np.int8)
    boxes: dict[str, list[int] | None] = {side: None for side in SIDES}
    if not mask.any():
        return Lungs(labels, boxes)
    components, n = ndimage.label(mask)
    sizes = ndimage.sum_labels(mask, components, index=np.arange(1, n + 1))
    biggest = int(np.argmax(sizes)) + 1
    mask = mask & ~(components == biggest) | _split_joined(components == biggest)
    components, n = ndimage.label(mask)
    if n == 0:
        return Lungs(labels, boxes)
    index = np.arange(1, n + 1)
    sizes = ndimage.sum_labels(mask, components, index=index)
    centres = np.asarray(ndimage.center_of_mass(mask, components, index=index))[:, 1]
    half, minimum = mask.shape[1] / 2, MIN_LUNG_SHARE * mask.size
    chosen = {}
    for side, on_side in (("image_left", centres < half), ("image_right", centres >= half)):
        candidates = np.flatnonzero(on_side & (sizes >= minimum))
        if candidates.size:
            chosen[side] = int(candidates[np.argmax(sizes[candidates])])
    if len(chosen) == 2:
        big, small = sorted(sizes[list(chosen.values())], reverse=True)
        if small < MIN_PAIR_RATIO * big:
            smaller = min(chosen, key=lambda side: sizes[chosen[side]])
            del chosen[smaller]
    for value, side in enumerate(SIDES, start=1):
        if side in chosen:
            lung = ndimage.binary_fill_holes(components == chosen[side] + 1)
            labels[lung & (labels == 0)] = value
            boxes[side] = box_of(lung)
    return Lungs(labels, boxes)


def crop_box(lungs: Lungs, margin: float = CROP_MARGIN) -> list[int] | None:
    """The box around both lungs with ``margin`` of its width and height added on each side, clipped to the
    image; ``None`` unless two lungs were found."""
    if lungs.found < 2:
        return None
    x0 = min(box[0] for box in lungs.boxes.values())
    y0 = min(box[1] for box in lungs.boxes.values())
    x1 = max(box[2] for box in lungs.boxes.values())
    y1 = max(box[3] for box in lungs.boxes.values())
    dx, dy = int(round((x1 - x0) * margin)), int(round((y1 - y0) * margin))
    height, width = lungs.labels.shape
    return [max(0, x0 - dx), max(0, y0 - dy), min(width, x1 + dx), min(height, y1 + dy)]


def lung_share(heatmap: np.ndarray, mask: np.ndarray) -> float | None:
    """The share of an explanation map's mass inside the lung mask (both the same shape; negative values count
    as zero); ``None`` for an empty map or an empty mask."""
    heat = np.clip(np.asarray(heatmap, dtype=np.float64), 0, None)
    mask = np.asarray(mask) > 0
    if heat.shape != mask.shape:
        raise ValueError(f"the map {heat.shape} and the lung mask {mask.shape} differ in shape")
    total = heat.sum()
    if total <= 0 or not mask.any():
        return None
    return float(heat[mask].sum() / total)


def grow(mask: np.ndarray, fraction: float = MASK_GROW) -> np.ndarray:
    """The mask dilated by ``fraction`` of the image's longer side (at least one pixel; 0 changes nothing)."""
    from scipy import ndimage

    mask = np.asarray(mask) > 0
    steps = int(round(max(mask.shape) * fraction))
    if fraction <= 0 or not mask.any():
        return mask
    return ndimage.binary_dilation(mask, iterations=max(1, steps))


def outline(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """The pixels on the edge of a mask, ``width`` pixels thick, for drawing over an image."""
    from scipy import ndimage

    mask = np.asarray(mask) > 0
    inner = ndimage.binary_erosion(mask, iterations=max(1, width), border_value=0)
    return mask & ~inner


#: the colour lung outlines are drawn in: magenta, which neither the heatmap colormaps (jet and turbo pass through
#: cyan, hot ends in white) nor a gray X-ray contains
OUTLINE_COLOUR = (255, 0, 255)


def draw_outline(image: np.ndarray, mask: np.ndarray, colour=OUTLINE_COLOUR, width: int = 2) -> np.ndarray:
    """A copy of ``image`` (``uint8`` RGB, any size) with the edge of ``mask`` (resized to it) drawn ``width``
    pixels wide in ``colour``."""
    mask = np.asarray(mask) > 0
    if not mask.any():
        return image
    edge = outline(resize(mask.astype(np.uint8), *image.shape[:2], nearest=True) > 0, width)  # thin at the image's size
    drawn = np.array(image, copy=True)
    drawn[edge] = colour
    return drawn


def dice(predicted: np.ndarray, truth: np.ndarray) -> float:
    """Dice overlap of two binary masks (1.0 when both are empty)."""
    predicted, truth = np.asarray(predicted) > 0, np.asarray(truth) > 0
    total = predicted.sum() + truth.sum()
    return 1.0 if total == 0 else float(2 * (predicted & truth).sum() / total)


def iou(predicted: np.ndarray, truth: np.ndarray) -> float:
    """Intersection over union of two binary masks (1.0 when both are empty)."""
    predicted, truth = np.asarray(predicted) > 0, np.asarray(truth) > 0
    union = (predicted | truth).sum()
    return 1.0 if union == 0 else float((predicted & truth).sum() / union)
