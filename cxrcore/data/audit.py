"""The data audit, before training: patient leaks, duplicate files, and a shortcut check.

The shortcut check asks whether a dataset's labels can be told apart without looking at
the lungs. A small random forest sees only statistics of each image that carry no
anatomy (its intensity histogram and percentiles, the statistics of its border band,
its size and pixel format) and is scored by cross-validation grouped by patient. When
the lower end of the 95% interval of its accuracy (bootstrap over patients) lies more
than :data:`SHORTCUT_MARGIN` above chance (the share of the largest class), the classes
differ in how their images were made (a source, a scanner, a crop), and a CNN will
learn that too. On cxr-dev such a check predicts the class with 0.84 accuracy against
0.40 chance: its classes come from different sources.

The same check runs a second time on statistics of the pixels **outside the lung fields** only
(found by the shipped lung model, :mod:`cxrcore.lungs`): when the frame alone (markers, borders,
the shoulders, the exposure outside the chest) predicts the label, a model can find its answer
there. :func:`outside_lung_statistics` is that description.

Results are cached in the index cache folder, keyed by the dataset's content (every file's name
within the dataset, bytes, label, patient and source) and by the settings and the lung model, never
by the folder's path: opening the Data page again, or training on a copy of the data, costs nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from ..lungs import segment
from ..lungs.geometry import grow
from ..stats.intervals import patient_groups, resample_weights
from .index import build_index, cache_dir
from .io import prepare_image
from .splits import assign_splits, duplicate_report, leakage_report

#: the border band: the outer 10% of the image on each side (36% of its area). One
#: definition for the data audit and for explanations' shortcut flag.
BORDER_FRACTION = 0.10
#: flag a shortcut when the check's 95% interval starts this far above chance
SHORTCUT_MARGIN = 0.10
#: the pixels the statistics are computed on (gray, this size square)
STATS_SIZE = 128
_PERCENTILES = (1, 5, 25, 50, 75, 95, 99)
#: the shortcut check looks at most at this many images: a stratified sample of a larger dataset (fixed
#: seed), so its cost (the lung model and two cross-validated forests) does not grow with the dataset
SHORTCUT_SAMPLE = 600
_VERSION = 4  # bump when the features or the wording change: cached results are then recomputed

Progress = Callable[[int, int], None] | None


def border_mask(height: int, width: int, fraction: float = BORDER_FRACTION) -> np.ndarray:
    """True on the outer band of an image: ``fraction`` of its height and width on each side."""
    mask = np.ones((height, width), dtype=bool)
    dy, dx = round(height * fraction), round(width * fraction)
    mask[dy : height - dy, dx : width - dx] = False
    return mask


def _statistics(gray: np.ndarray, keep: np.ndarray | None = None) -> np.ndarray:
    """Intensity histogram (16 bins), percentiles, and mean and spread of the whole image, of its border band
    and of its centre, over the pixels ``keep`` selects (all when ``None``)."""
    keep = np.ones(gray.shape, dtype=bool) if keep is None else keep
    border = border_mask(*gray.shape)
    chosen = gray[keep]
    hist = np.histogram(chosen, bins=16, range=(0, 256))[0] / max(chosen.size, 1)
    parts = [chosen, gray[keep & border], gray[keep & ~border]]
    return np.concatenate(
        [
            hist,
            np.percentile(chosen, _PERCENTILES) if chosen.size else np.zeros(len(_PERCENTILES)),
            [f(part) if part.size else 0.0 for part in parts for f in (np.mean, np.std)],
        ]
    )


def outside_lung_statistics(gray: np.ndarray) -> tuple[np.ndarray, bool]:
    """The same statistics over the pixels outside the lung fields only (the shipped lung model's mask, grown
    by :data:`cxrcore.lungs.geometry.MASK_GROW`), and whether two lungs were found (when not, whatever was
    found is left out, or nothing)."""
    lungs = segment.get_segmenter().lungs(gray.astype(np.uint8))
    outside = ~grow(lungs.mask) if lungs.found else np.ones(gray.shape, dtype=bool)
    return _statistics(gray.astype(np.float32), outside), lungs.found == 2


def _header_features(index: pd.DataFrame) -> np.ndarray:
    modes = {m: i for i, m in enumerate(sorted(index["mode"].astype(str).unique()))}
    return np.stack(
        [
            index["width"].to_numpy(float),
            index["height"].to_numpy(float),
            index["width"].to_numpy(float) / index["height"].to_numpy(float),
            index["mode"].astype(str).map(modes).to_numpy(float),
        ],
        axis=1,
    )


def _cross_validated(features: np.ndarray, labels: np.ndarray, groups, folds: int, seed: int) -> dict:
    """Accuracy of a random forest on ``features``, cross-validated by patient group, with its 95% interval
    (bootstrap over patients)."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.model_selection import StratifiedGroupKFold, cross_val_predict

    forest = RandomForestClassifier(n_estimators=200, min_samples_leaf=2, random_state=seed, n_jobs=1)
    predicted = cross_val_predict(
        forest,
        features,
        labels,
        groups=groups,
        cv=StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed),
    )
    correct = (predicted == labels).astype(float)
    weights = resample_weights(groups, 1000, seed)
    resampled = (weights @ correct) / weights.sum(axis=1)
    low, high = np.percentile(resampled, [2.5, 97.5])
    return {"accuracy": float(correct.mean()), "ci_low": float(low), "ci_high": float(high)}


def _message(scores: dict, chance: float, outside_lungs: bool) -> tuple[bool, str]:
    low = scores["ci_low"]
    flagged = bool(low - chance > SHORTCUT_MARGIN)
    figures = (
        f"accuracy {scores['accuracy']:.2f} (95% CI {low:.2f}-{scores['ci_high']:.2f}) against {chance:.2f} by chance"
    )
    if outside_lungs:
        what = "statistics of the pixels outside the lung fields (the lungs left out), size and format"
        if flagged:
            return flagged, (
                f"The frame alone predicts the label: {what} predict the class with {figures}. A model can find its "
                "answer outside the lungs (markers, borders, the shoulders, the scanner); try the lung crop or mask "
                "pixel rules and validate on external data."
            )
        if low > chance:
            return flagged, (
                f"Outside the lungs, {what} predict the class somewhat better than chance: {figures}. Not flagged."
            )
        return flagged, f"The frame alone does not predict the label: outside the lungs, {figures}."
    if flagged:
        return flagged, (
            "Labels can be told apart without looking at the lungs: image statistics alone (intensity, border "
            f"band, size, format) predict the class with {figures}. The classes likely differ by source, scanner "
            "or processing, and a model can learn that instead of the disease; validate on external data."
        )
    if low > chance:
        return flagged, (
            f"Image statistics alone predict the class somewhat better than chance: {figures}. Not flagged "
            f"(the interval starts within {SHORTCUT_MARGIN:.2f} of chance), but worth checking on external data."
        )
    return flagged, f"No shortcut found: image statistics alone predict the class with {figures}."


def shortcut_check(
    index: pd.DataFrame, *, folds: int = 5, seed: int = 0, progress: Progress = None, outside_lungs: bool = False
) -> dict:
    """Cross-validated accuracy of a classifier on image statistics alone, against chance.

    Returns ``{"accuracy", "ci_low", "ci_high", "chance", "flagged", "folds", "images",
    "features", "message"}``; ``flagged`` when ``ci_low - chance > SHORTCUT_MARGIN``. With
    ``outside_lungs``, also ``"outside_lungs"``: the same check on statistics of the pixels outside the
    lung fields only (plus size and format), with ``lungs_not_found`` (images where the lung model did not
    find two lungs): whether the frame alone predicts the label.
    """
    labels = index["label"].astype(str).to_numpy()
    counts = pd.Series(labels).value_counts()
    chance = float(counts.iloc[0] / len(labels))
    folds = int(min(folds, counts.min()))
    if counts.size < 2 or folds < 2:
        empty = {
            "accuracy": None,
            "ci_low": None,
            "ci_high": None,
            "chance": chance,
            "flagged": False,
            "folds": folds,
            "images": int(len(labels)),
            "message": "too few images per class for a cross-validated check",
        }
        return {**empty, "outside_lungs": dict(empty)} if outside_lungs else empty
    whole, outside, missed = [], [], 0
    for i, path in enumerate(index["path"]):
        gray = prepare_image(path, STATS_SIZE)[..., 0]
        whole.append(_statistics(gray.astype(np.float32)))
        if outside_lungs:
            stats, found = outside_lung_statistics(gray)
            outside.append(stats)
            missed += not found
        if progress is not None and (i + 1 == len(index) or (i + 1) % 50 == 0):
            progress(i + 1, len(index))
    header = _header_features(index)
    groups, _ = patient_groups(index["patient_id"].tolist(), len(labels))
    results = {}
    for name, rows in (("image", whole), ("outside_lungs", outside)):
        if not rows:
            continue
        features = np.concatenate([np.stack(rows), header], axis=1)
        scores = _cross_validated(features, labels, groups, folds, seed)
        flagged, message = _message(scores, chance, name == "outside_lungs")
        results[name] = {
            **scores,
            "chance": chance,
            "flagged": flagged,
            "folds": folds,
            "images": int(len(labels)),
            "features": int(features.shape[1]),
            "message": message,
        }
    result = results["image"]
    if outside_lungs:
        result["outside_lungs"] = {**results["outside_lungs"], "lungs_not_found": int(missed)}
    return result


def stratified_sample(index: pd.DataFrame, size: int, seed: int = 0) -> pd.DataFrame:
    """At most ``size`` rows of ``index``, each class keeping its share (at least 2 images of a class
    that has them), drawn with ``seed``; the whole index when it is no larger."""
    if len(index) <= size:
        return index
    counts = index["label"].value_counts()
    keep = {label: min(n, max(2, round(size * n / len(index)))) for label, n in counts.items()}
    parts = [group.sample(keep[label], random_state=seed) for label, group in index.groupby("label", sort=True)]
    return pd.concat(parts).sort_index()


def sources(index: pd.DataFrame) -> dict[str, dict[str, int]] | None:
    """Images per class for each source (a manifest's source column), or None when none is named."""
    if "source" not in index or not (index["source"].astype(str) != "").any():
        return None
    table = index.assign(source=index["source"].replace("", "(unknown)")).groupby(["source", "label"]).size()
    return {src: {label: int(n) for label, n in group.droplevel(0).items()} for src, group in table.groupby(level=0)}


def _content_hashes(index: pd.DataFrame) -> list[str]:
    """The SHA-1 of every image file's bytes, in the index's order."""
    return [hashlib.sha1(Path(path).read_bytes()).hexdigest() for path in index["path"]]


def _cache_file(index: pd.DataFrame, hashes: list[str], folds: int, seed: int) -> Path:
    """The cache entry for this dataset's content: every image's name within the dataset, bytes,
    label, patient and source, with the settings and the lung model. Never the folder's path, so a
    copy of a dataset (or the same data written again) finds the audit of the first."""
    root = Path(index.attrs.get("root", ""))
    digest = hashlib.sha1(f"{_VERSION}|{folds}|{seed}|{segment.shipped_fingerprint()}".encode())
    for row, content in zip(index[["path", "label", "patient_id", "source"]].itertuples(index=False), hashes):
        path = Path(row.path)
        name = path.relative_to(root).as_posix() if path.is_relative_to(root) else path.name
        digest.update("|".join(map(str, (name, content, row.label, row.patient_id, row.source))).encode())
    return cache_dir() / "audit" / f"{digest.hexdigest()[:20]}.json"


def _sampled_shortcut_check(index: pd.DataFrame, folds: int, seed: int, progress: Progress) -> dict:
    """:func:`shortcut_check` (with the check outside the lungs) on at most :data:`SHORTCUT_SAMPLE` images;
    ``sampled_from`` says how many the dataset has, and the messages say when a sample was checked."""
    sample = stratified_sample(index, SHORTCUT_SAMPLE, seed)
    result = shortcut_check(sample, folds=folds, seed=seed, progress=progress, outside_lungs=True)
    if len(sample) < len(index):
        note = f"On a stratified sample of {len(sample):,} of the {len(index):,} images: "
        for part in (result, result.get("outside_lungs") or {}):
            part["sampled_from"] = int(len(index))
            part["message"] = note + part["message"]
    return result


def audit(
    data: str | os.PathLike, *, folds: int = 5, seed: int = 0, use_cache: bool = True, progress: Progress = None
) -> dict:
    """The whole audit of a dataset: counts, patient leaks across the split training would use,
    byte-identical duplicates, the shortcut check (on the whole image, and on what lies outside the
    lungs only; on a stratified sample of :data:`SHORTCUT_SAMPLE` images of a larger dataset) and the class
    mix per source."""
    index = build_index(data)
    hashes = _content_hashes(index)
    cache = _cache_file(index, hashes, folds, seed)
    where = str(index.attrs.get("root", data))
    if use_cache:
        try:
            return {**json.loads(cache.read_text()), "data": where}
        except (OSError, ValueError):
            pass
    split = assign_splits(index)
    leaks = leakage_report(split)
    dups = duplicate_report(split, hashes=dict(zip(index["path"], hashes)))
    result = {
        "data": where,
        "images": int(len(index)),
        "classes": {str(k): int(v) for k, v in index["label"].value_counts().sort_index().items()},
        "patients_known": int((index["patient_id"] != "").sum()),
        "patient_leak": {
            "patients": int(len(leaks)),
            "images_without_patient_id": int((index["patient_id"] == "").sum()),
        },
        "duplicates": {
            "groups": int(dups["hash"].nunique()) if len(dups) else 0,
            "across_splits": int(dups.loc[dups["cross_split"], "hash"].nunique()) if len(dups) else 0,
        },
        "shortcut": _sampled_shortcut_check(index, folds, seed, progress),
        "sources": sources(index),
    }
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(result))
        os.replace(tmp, cache)
    except OSError:
        pass  # a read-only cache folder only costs time
    return result
