"""How far to believe a class activation map: deletion, insertion, and how much of it lies on the border.

**Deletion and insertion** (Petsiuk et al., "RISE", 2018). The map ranks the image's pixels from most
to least important (ties broken by a fixed random order). In :data:`STEPS` equal steps:

- *deletion* removes the top-ranked pixels, replacing them with the baseline, and records the model's
  probability of the explained class; its score is the area under that curve against the fraction
  removed (0 to 1, trapezoid rule). **Lower is better**: a faithful map names the pixels whose loss
  drops the probability first.
- *insertion* starts from the baseline and reveals the pixels in the same order; area under the
  curve. **Higher is better**.

The probability is the explained output's own, taken as given (nothing is renormalised over the outputs): a
classifier's calibrated softmax probability of the class, or a findings model's calibrated sigmoid
probability of the finding, which does not depend on the other findings.

The baseline is, by default, a Gaussian blur of the image (radius :data:`BLUR_FRACTION` of its side):
blurring removes the detail a pixel carries without putting an edge or a black hole into the image,
which a model may react to by itself. ``"black"`` (zeros) is the other choice. All the images of both
curves go through the model's compiled forward function together, in batches (``2 x STEPS`` images:
the unchanged image and the baseline are shared by the two curves).

A **random map** (:func:`random_map`: random values on a coarse grid, smooth like a class activation
map) gives the reference a method must beat: :func:`evaluate_run` scores it beside the methods. ROAD
(Rong et al., 2022), which imputes removed pixels from their neighbours by solving a linear system,
costs several seconds per image here and is not offered.

**Border share**: the share of the map's mass in the image's border band, the outer 10% on each side
(36% of the area; :func:`cxrcore.data.audit.border_mask`, the band the data audit checks). A uniform
map has 0.36. Above :data:`BORDER_WARN` the map is flagged: the model may be reading the border, a
text marker or the shoulder rather than the lungs. It is a heuristic about position, not anatomy.

**Lung share**: the share of the map's mass inside the lung fields that the shipped lung model
(:mod:`cxrcore.lungs`) finds in the image the model saw (:func:`cxrcore.lungs.geometry.lung_share`);
None when no lung was found or the map is empty. Below :data:`LUNG_SHARE_WARN` the map is flagged: most
of the evidence it shows is outside the lungs. It is only as good as the lung model's outline.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
from PIL import Image, ImageFilter

from ..data.audit import BORDER_FRACTION, border_mask
from ..data.pixels import resize
from ..errors import ConfigError
from ..lungs.geometry import LUNG_SHARE_WARN, lung_share
from .cam import METHOD_LABELS

#: steps of the deletion and insertion curves
STEPS = 20
#: what removed pixels become
BASELINES = ("blur", "black")
BASELINE = "blur"
#: the blur baseline's Gaussian radius, as a fraction of the image's side (about 11 px at 224)
BLUR_FRACTION = 0.05
#: flag a map with more than this share of its mass in the border band
BORDER_WARN = 0.60
#: the column of :func:`table` with the share of maps flagged
FLAGGED_COLUMN = f"flagged (border > {BORDER_WARN:.0%})"
#: images of the test split scored per method on the Evaluate page, unless asked otherwise
SAMPLE_SIZE = 40
#: the reference "method" of :func:`evaluate_run`: a random map (:func:`random_map`)
RANDOM = "random"

ProbabilityFn = Callable[[np.ndarray], np.ndarray]


def describe(steps: int = STEPS, baseline: str = BASELINE) -> str:
    """The settings in words, as the pages and the JSON state them."""
    removed = "a blurred copy of the image" if baseline == "blur" else "black"
    return f"{steps} steps; removed pixels replaced by {removed}"


def check_settings(steps: int, baseline: str) -> None:
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or not 2 <= steps <= 200:
        raise ConfigError(f"steps must be an integer from 2 to 200, got {steps!r}")
    if baseline not in BASELINES:
        raise ConfigError(f"baseline must be one of {', '.join(BASELINES)}, got {baseline!r}")


def baseline_image(image: np.ndarray, baseline: str = BASELINE) -> np.ndarray:
    """What removed pixels are replaced by: float32 (H, W, 3)."""
    image = np.asarray(image)
    if baseline == "black":
        return np.zeros(image.shape, dtype=np.float32)
    radius = max(1.0, BLUR_FRACTION * max(image.shape[:2]))
    blurred = Image.fromarray(np.asarray(image, dtype=np.uint8)).filter(ImageFilter.GaussianBlur(radius))
    return np.asarray(blurred, dtype=np.float32)


def pixel_ranks(heat: np.ndarray, seed: int = 0) -> np.ndarray:
    """Each pixel's rank (0 = most important) by the map; ties in a fixed random order. (H, W) int."""
    heat = np.nan_to_num(np.asarray(heat, dtype=np.float64), nan=0.0)
    flat = heat.ravel()
    tiebreak = np.random.default_rng(seed).random(flat.size)
    order = np.lexsort((tiebreak, -flat))
    ranks = np.empty(flat.size, dtype=np.int64)
    ranks[order] = np.arange(flat.size)
    return ranks.reshape(heat.shape)


def curve_auc(curve: Sequence[float]) -> float:
    """Area under a curve sampled at equal steps from 0 to 1 (trapezoid rule)."""
    values = np.asarray(curve, dtype=np.float64)
    return float(((values[1:] + values[:-1]) / 2).sum() / (len(values) - 1))


def scores(
    image: np.ndarray,
    heat: np.ndarray,
    class_index: int,
    probabilities: ProbabilityFn,
    *,
    steps: int = STEPS,
    baseline: str = BASELINE,
) -> dict:
    """Deletion and insertion of one map.

    ``image``: uint8 (H, W, 3), what the model sees; ``heat``: (H, W), the map at that size;
    ``probabilities``: images float32 (n, H, W, 3) -> (n, classes or findings), of which column
    ``class_index`` is read as it is. Returns ``{"deletion",
    "insertion", "deletion_curve", "insertion_curve"}`` (curves of ``steps + 1`` probabilities)."""
    check_settings(steps, baseline)
    image = np.asarray(image)
    if heat.shape != image.shape[:2]:
        raise ValueError(f"map {heat.shape} and image {image.shape[:2]} differ in size")
    original = image.astype(np.float32)
    base = baseline_image(image, baseline)
    ranks = pixel_ranks(heat)
    pixels = ranks.size
    inner = [(pixels * k) // steps for k in range(1, steps)]
    removed = np.stack([ranks < n for n in inner])[..., None]  # (steps-1, H, W, 1)
    batch = np.concatenate(
        [
            original[None],
            base[None],
            np.where(removed, base, original),  # deletion, steps 1..steps-1
            np.where(removed, original, base),  # insertion, steps 1..steps-1
        ]
    )
    probs = np.asarray(probabilities(batch), dtype=np.float64)[:, class_index]
    full, empty = probs[0], probs[1]
    middle = steps - 1
    deletion = [full, *probs[2 : 2 + middle], empty]
    insertion = [empty, *probs[2 + middle :], full]
    return {
        "deletion": curve_auc(deletion),
        "insertion": curve_auc(insertion),
        "deletion_curve": [float(p) for p in deletion],
        "insertion_curve": [float(p) for p in insertion],
    }


def random_map(shape: tuple[int, int], seed=0) -> np.ndarray:
    """The reference a method must beat: random values on a coarse grid (a 32nd of the side, 7 x 7 at
    224 px, about a class activation map's resolution), resized bilinearly to ``shape``. Smooth like a
    map, so it removes regions too: a pixel-level random order turns the image into salt-and-pepper
    noise after the first step, which no model recognises, and would make every map look worse than
    chance."""
    grid = max(2, min(shape) // 32)
    coarse = np.random.default_rng(seed).random((grid, grid)).astype(np.float32)
    return resize(coarse, *shape)


def border_share(heat: np.ndarray, fraction: float = BORDER_FRACTION) -> float | None:
    """The share of the map's mass in the border band; None for a map with no mass (all zeros)."""
    heat = np.clip(np.nan_to_num(np.asarray(heat, dtype=np.float64), nan=0.0), 0.0, None)
    total = heat.sum()
    if not total > 0:
        return None
    return float(heat[border_mask(*heat.shape, fraction)].sum() / total)


def border_flagged(share: float | None) -> bool:
    return share is not None and share > BORDER_WARN


def lung_flagged(share: float | None) -> bool:
    """True when less than :data:`LUNG_SHARE_WARN` of the map lies inside the lungs (None: not flagged)."""
    return share is not None and share < LUNG_SHARE_WARN


def percent(share: float, threshold: float) -> str:
    """``share`` as a whole percentage, or with one decimal where rounding would put it on ``threshold``
    (49.7% is not shown as "50%" beside a warning that says "under 50%")."""
    text = f"{share:.0%}"
    if share != threshold and round(share, 2) == round(threshold, 2):
        text = f"{share:.1%}"
    return text


def map_lung_share(heat: np.ndarray, lungs) -> float | None:
    """The share of the map's mass inside ``lungs`` (a :class:`cxrcore.lungs.geometry.Lungs`, resized to the
    map when their sizes differ); None when no lung was found or the map is empty."""
    heat = np.nan_to_num(np.asarray(heat, dtype=np.float64), nan=0.0)
    labels = np.asarray(lungs.labels)
    return lung_share(heat, resize(labels, *heat.shape, nearest=labels.dtype.kind != "f") > 0)


def table(result: dict):
    """One row per method (the random reference last): means with 95% intervals, as a DataFrame."""

    def cell(entry):
        if not entry or entry.get("mean") is None:
            return None
        return entry["mean"]

    def interval(entry):
        if not entry or entry.get("ci_low") is None:
            return ""
        return f"{entry['ci_low']:.3f}–{entry['ci_high']:.3f}"

    rows = []
    for method, entry in result["methods"].items():
        flagged = entry.get("border_flagged")
        rows.append(
            {
                "method": METHOD_LABELS.get(method, "random map (reference)"),
                "deletion ↓": cell(entry["deletion"]),
                "deletion 95% CI": interval(entry["deletion"]),
                "insertion ↑": cell(entry["insertion"]),
                "insertion 95% CI": interval(entry["insertion"]),
                "border share": cell(entry.get("border_share")),
                FLAGGED_COLUMN: flagged,
                "lung share": cell(entry.get("lung_share")),
                "seconds per image": entry.get("seconds_per_image"),
            }
        )
    return pd.DataFrame(rows)


def verdict(result: dict) -> list[str]:
    """Plain sentences: which method holds up best, which do not beat a random map, which lean on the
    border, which lie mostly outside the lungs."""
    methods = {m: e for m, e in result["methods"].items() if m != RANDOM}
    reference = result["methods"].get(RANDOM, {})
    lines = []
    ranked = sorted(
        (m for m in methods if methods[m]["deletion"]["mean"] is not None),
        key=lambda m: methods[m]["insertion"]["mean"] - methods[m]["deletion"]["mean"],
        reverse=True,
    )
    if ranked:
        best = ranked[0]
        lines.append(
            f"{METHOD_LABELS[best]} holds up best for this model (insertion minus deletion "
            f"{methods[best]['insertion']['mean'] - methods[best]['deletion']['mean']:.3f})."
        )
    ref_del, ref_ins = reference.get("deletion", {}).get("mean"), reference.get("insertion", {}).get("mean")
    if ref_del is not None:
        for method in ranked:
            entry = methods[method]
            if entry["deletion"]["mean"] >= ref_del and entry["insertion"]["mean"] <= ref_ins:
                lines.append(
                    f"{METHOD_LABELS[method]} does no better than a random map: do not read its maps as what the "
                    "model used."
                )
    for method, entry in methods.items():
        share = entry.get("border_share", {}).get("mean")
        if share is not None and share > result.get("border_warn", BORDER_WARN):
            lines.append(
                f"{METHOD_LABELS[method]}: on average {share:.0%} of the map lies on the image's border band: the "
                "model may be using the border, markers or text rather than the lungs."
            )
    for method, entry in methods.items():
        share = (entry.get("lung_share") or {}).get("mean")
        if share is not None and share < result.get("lung_warn", LUNG_SHARE_WARN):
            lines.append(
                f"{METHOD_LABELS[method]}: on average only {percent(share, LUNG_SHARE_WARN)} of the map lies "
                "inside the lung fields: most of the evidence it shows is outside the lungs."
            )
    return lines
