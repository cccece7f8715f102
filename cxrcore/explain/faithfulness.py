"""How far to believe a class activation map: deletion, insertion, and how much of it lies on the border.

**Deletion and insertion** (Petsiuk et al., "RISE", 2018). The map ranks the image's pixels from most
to least important (ties broken by a fixed random order). In :data:`STEPS` equal steps:

- *deletion* removes the top-ranked pixels, replacing them with the baseline, and records the model's
  probability of the explained class; its score is the area under that curve against the fraction
  removed (0 to 1, trapezoid rule). **Lower is better**: a faithful map names the pixels whose loss
  drops the probability first.
- *insertion* starts from the baseline and reveals the pixels in the same order; area under the
  curve. **Higher is better**.

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

import hashlib
import time
from collections.abc import Callable, Sequence
from functools import lru_cache

import numpy as np
from PIL import Image, ImageFilter

from ..data.audit import BORDER_FRACTION, border_mask
from ..errors import ConfigError
from ..lungs.geometry import LUNG_SHARE_WARN, lung_share

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
_VERSION = 2  # bump when the scores' definition changes: cached results are then recomputed (2: lung share)

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
    ``probabilities``: images float32 (n, H, W, 3) -> (n, classes). Returns ``{"deletion",
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
    from .cam import _resize_map

    grid = max(2, min(shape) // 32)
    coarse = np.random.default_rng(seed).random((grid, grid)).astype(np.float32)
    return _resize_map(coarse, *shape)


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
    from ..lungs.geometry import resize_mask

    heat = np.nan_to_num(np.asarray(heat, dtype=np.float64), nan=0.0)
    return lung_share(heat, resize_mask(lungs.labels, *heat.shape) > 0)


# --------------------------------------------------------------------------- over a test sample


def model_fingerprint(run) -> str:
    """Which model the scores belong to: a digest of the model file's content (so a copied or moved run
    keeps its scores), worked out once per file version (path, size, modification time)."""
    path = run.require_model()
    stat = path.stat()
    return _content_digest(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=64)
def _content_digest(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def _request(run, methods, sample_size: int, seed: int, steps: int, baseline: str) -> dict:
    from .. import runs
    from ..lungs.segment import shipped_fingerprint

    return {
        "version": _VERSION,
        "methods": list(methods),
        "sample_size": int(sample_size),
        "seed": int(seed),
        "steps": int(steps),
        "baseline": baseline,
        "model": model_fingerprint(run),
        "lungs": shipped_fingerprint(),  # the lung model the lung shares belong to
        "split": hashlib.sha1(run.file(runs.SPLIT).read_bytes()).hexdigest()[:16],
    }


def _summary(values: np.ndarray, seed: int) -> dict:
    """Mean and a 95% bootstrap interval over images."""
    from ..evaluation.intervals import percentile_interval, resample_weights

    values = np.asarray(values, dtype=np.float64)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return {"mean": None, "ci_low": None, "ci_high": None, "n": 0}
    weights = resample_weights(np.arange(finite.size), 1000, seed)
    means = weights @ finite / weights.sum(axis=1)
    return {"mean": float(finite.mean()), **percentile_interval(means, enough=100), "n": int(finite.size)}


def evaluate_run(
    run_dir,
    methods: Sequence[str] | None = None,
    sample_size: int = SAMPLE_SIZE,
    *,
    seed: int = 0,
    steps: int = STEPS,
    baseline: str = BASELINE,
    progress: Callable[[int, int], None] | None = None,
    predictor=None,
) -> dict:
    """Each method's deletion, insertion, border share and lung share averaged over a random sample of the
    run's test split (the predicted class explained), beside a random map; kept in the run
    (``faithfulness.json``) and returned from there when asked again with the same settings, model and lung
    model (the shipped one's fingerprint is part of the settings, so a result from before lung shares, or of
    another lung model, is computed again).

    Returns ``{"settings", "describe", "border_warn", "lung_warn", "methods": {name: {"deletion",
    "insertion", "border_share", "border_flagged", "lung_share", "lung_flagged", "seconds_per_image"}},
    "images": [...], "unreadable"}``, each score a ``{"mean", "ci_low", "ci_high", "n"}``; the ``*_flagged``
    entries are the share of the maps flagged (None when none had a share). The random map has deletion and
    insertion only. Raises RunError when the shipped lung model is missing."""
    from .. import runs
    from ..errors import ImageDecodeError
    from ..predict import Predictor
    from .cam import METHODS

    run = runs.RunDir(run_dir)
    methods = list(methods or METHODS)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ConfigError(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    if isinstance(sample_size, bool) or not isinstance(sample_size, (int, np.integer)) or sample_size < 1:
        raise ConfigError(f"sample size must be a positive integer, got {sample_size!r}")
    check_settings(steps, baseline)
    request = _request(run, methods, sample_size, seed, steps, baseline)
    cached = run.faithfulness()
    if cached and cached.get("settings") == request:
        return cached
    split = run.split()
    test = split[split["split"] == "test"]
    if test.empty:
        raise ConfigError(f"{run.path} has no test split to score explanations on")
    sample = test.sample(n=min(sample_size, len(test)), random_state=seed)
    predictor = predictor or Predictor(run.path)
    rows, unreadable, seconds = [], [], {m: 0.0 for m in methods}
    total = len(sample) * (len(methods) + 1)
    done = 0
    for path, label in zip(sample["path"], sample["label"]):
        try:
            image = predictor.prepare(path)
        except ImageDecodeError as exc:
            unreadable.append({"image": str(path), "error": str(exc)})
            done += len(methods) + 1
            continue
        probs = predictor.probabilities(image[None])[0]
        target = int(np.argmax(probs))
        row = {"image": str(path), "label": label, "explained": predictor.labels[target]}
        lungs = predictor.lungs(image)
        noise = random_map(image.shape[:2], seed=[seed, len(rows)])
        for method in [*methods, RANDOM]:
            started = time.perf_counter()
            heat = noise if method == RANDOM else predictor.explanation_map(image, method, target)
            found = scores(image, heat, target, predictor.probabilities, steps=steps, baseline=baseline)
            if method != RANDOM:
                seconds[method] += time.perf_counter() - started
            row[method] = {
                "deletion": found["deletion"],
                "insertion": found["insertion"],
                "border_share": None if method == RANDOM else border_share(heat),
                "lung_share": None if method == RANDOM else map_lung_share(heat, lungs),
            }
            done += 1
            if progress:
                progress(done, total)
        rows.append(row)
    summary = {}
    for method in [*methods, RANDOM]:
        deletion = [r[method]["deletion"] for r in rows]
        insertion = [r[method]["insertion"] for r in rows]
        entry = {"deletion": _summary(deletion, seed), "insertion": _summary(insertion, seed)}
        if method != RANDOM:
            for name, flagged in (("border", border_flagged), ("lung", lung_flagged)):
                shares = [r[method][f"{name}_share"] for r in rows]
                known = [s for s in shares if s is not None]
                entry[f"{name}_share"] = _summary([np.nan if s is None else s for s in shares], seed)
                entry[f"{name}_flagged"] = (sum(flagged(s) for s in known) / len(known)) if known else None
            entry["seconds_per_image"] = seconds[method] / len(rows) if rows else None
        summary[method] = entry
    result = {
        "settings": request,
        "describe": describe(steps, baseline),
        "border_warn": BORDER_WARN,
        "lung_warn": LUNG_SHARE_WARN,
        "methods": summary,
        "images": rows,
        "unreadable": unreadable,
    }
    run.write_faithfulness(result)
    return result


def table(result: dict):
    """One row per method (the random reference last): means with 95% intervals, as a DataFrame."""
    import pandas as pd

    from .cam import METHOD_LABELS

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
    from .cam import METHOD_LABELS

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
