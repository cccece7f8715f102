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

The per-source view (when a manifest names each image's source): the class mix of each source
(:func:`sources`, ``single_class`` where a source holds one class only), how well the source alone
predicts the label (:func:`source_only_auc`), whether the source can be read off the image within each
class (:func:`source_check`, on the shortcut check's sample and features), and a plain verdict
(:func:`source_verdict`): when the classes are separated by source, a model can learn the source
instead of the finding, and it should not be expected to transfer to another hospital.

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

from ..config import FindingsOptions
from ..lungs import segment
from ..lungs.geometry import grow
from ..stats.intervals import patient_groups, resample_weights
from .findings import is_findings
from .findings_summary import SUMMARY_NOTE, summary_labels
from .index import build_index, cache_dir
from .io import prepare_image
from .sources import (
    UNKNOWN_SOURCE,
    check_message,
    named_sources,
    source_only_auc,
    source_table,
    source_verdict,
)
from .splits import assign_splits, duplicate_report, leakage_report

#: the border band: the outer 10% of the image on each side (36% of its area). One
#: definition for the data audit and for explanations' shortcut flag.
BORDER_FRACTION = 0.10
#: flag a shortcut when the check's 95% interval starts this far above chance
SHORTCUT_MARGIN = 0.10
#: trees of the shortcut check's random forest: 100 give cxr-dev's sample the figures 200 gave, to 0.005
#: (0.78, 95% CI 0.75-0.82, against 0.78, 0.74-0.81), at half the cost
SHORTCUT_TREES = 100
#: the pixels the statistics are computed on (gray, this size square)
STATS_SIZE = 128
_PERCENTILES = (1, 5, 25, 50, 75, 95, 99)
#: the shortcut check looks at most at this many images: a stratified sample of a larger dataset (fixed
#: seed), so its cost (the lung model and two cross-validated forests) does not grow with the dataset
SHORTCUT_SAMPLE = 600
#: the source check looks at a class only where at least two sources have this many of its images
SOURCE_CHECK_MIN = 10
#: what the source check's features are, as its result says
SOURCE_FEATURES = (
    "anatomy-free image statistics (intensity histogram and percentiles, mean and spread of the whole image, "
    "its border band and its centre) with width, height, aspect ratio and pixel format"
)
_VERSION = 8  # bump when the features or the wording change: cached results are then recomputed

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


def outside_lung_statistics(gray: np.ndarray, lungs=None) -> tuple[np.ndarray, bool]:
    """The same statistics over the pixels outside the lung fields only (the shipped lung model's mask, grown
    by :data:`cxrcore.lungs.geometry.MASK_GROW`), and whether two lungs were found (when not, whatever was
    found is left out, or nothing). ``lungs``: the image's lungs when the caller has found them already."""
    lungs = lungs if lungs is not None else segment.get_segmenter().lungs(gray.astype(np.uint8))
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


def _predictions(features: np.ndarray, labels: np.ndarray, groups, folds: int, seed: int) -> np.ndarray:
    """A random forest's out-of-fold predictions of ``labels`` from ``features``, folds grouped by patient."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.model_selection import StratifiedGroupKFold, cross_val_predict

    forest = RandomForestClassifier(n_estimators=SHORTCUT_TREES, min_samples_leaf=2, random_state=seed, n_jobs=1)
    return cross_val_predict(
        forest,
        features,
        labels,
        groups=groups,
        cv=StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed),
    )


def _cross_validated(features: np.ndarray, labels: np.ndarray, groups, folds: int, seed: int) -> dict:
    """Accuracy of a random forest on ``features``, cross-validated by patient group, with its 95% interval
    (bootstrap over patients)."""
    correct = (_predictions(features, labels, groups, folds, seed) == labels).astype(float)
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


#: images read (and segmented) together by the statistics checks; progress is reported after each batch
_STATS_BATCH = 50


def _read_statistics(index: pd.DataFrame, progress: Progress, outside_lungs: bool) -> tuple[list, list, int]:
    """Each image's :func:`_statistics` (whole image), with ``outside_lungs`` also those outside the lung fields,
    and how many images the lung model found no two lungs in; ``progress`` every 50 images."""
    whole, outside, missed = [], [], 0
    paths = index["path"].tolist()
    for start in range(0, len(paths), _STATS_BATCH):  # the lungs of a batch found in batched forward passes
        grays = [prepare_image(path, STATS_SIZE)[..., 0] for path in paths[start : start + _STATS_BATCH]]
        whole += [_statistics(gray.astype(np.float32)) for gray in grays]
        if outside_lungs:
            found = segment.get_segmenter().lungs_of_many([gray.astype(np.uint8) for gray in grays])
            for gray, lungs in zip(grays, found):
                stats, two = outside_lung_statistics(gray, lungs)
                outside.append(stats)
                missed += not two
        if progress is not None:
            progress(len(whole), len(paths))
    return whole, outside, missed


def _too_few_for_shortcut(index: pd.DataFrame, folds: int, outside_lungs: bool) -> dict | None:
    """The shortcut check's answer when a class has too few images to cross-validate; None when it can run."""
    counts = index["label"].astype(str).value_counts()
    folds = int(min(folds, counts.min()))
    if counts.size >= 2 and folds >= 2:
        return None
    empty = {
        "accuracy": None,
        "ci_low": None,
        "ci_high": None,
        "chance": float(counts.iloc[0] / len(index)),
        "flagged": False,
        "folds": folds,
        "images": int(len(index)),
        "message": "too few images per class for a cross-validated check",
    }
    return {**empty, "outside_lungs": dict(empty)} if outside_lungs else empty


def _shortcut_from(index: pd.DataFrame, read: tuple[list, list, int], folds: int, seed: int) -> dict:
    """The shortcut check on statistics already read (:func:`_read_statistics`)."""
    whole, outside, missed = read
    labels = index["label"].astype(str).to_numpy()
    counts = pd.Series(labels).value_counts()
    chance = float(counts.iloc[0] / len(labels))
    folds = int(min(folds, counts.min()))
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
    if outside:
        result["outside_lungs"] = {**results["outside_lungs"], "lungs_not_found": int(missed)}
    return result


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
    empty = _too_few_for_shortcut(index, folds, outside_lungs)
    if empty is not None:
        return empty
    return _shortcut_from(index, _read_statistics(index, progress, outside_lungs), folds, seed)


def stratified_sample(index: pd.DataFrame, size: int, seed: int = 0) -> pd.DataFrame:
    """At most ``size`` rows of ``index``, each class keeping its share (at least 2 images of a class
    that has them), drawn with ``seed``; the whole index when it is no larger."""
    if len(index) <= size:
        return index
    counts = index["label"].value_counts()
    keep = {label: min(n, max(2, round(size * n / len(index)))) for label, n in counts.items()}
    parts = [group.sample(keep[label], random_state=seed) for label, group in index.groupby("label", sort=True)]
    return pd.concat(parts).sort_index()


def _balanced_accuracy(predicted: np.ndarray, truth: np.ndarray, groups: np.ndarray, seed: int) -> dict:
    """The mean over the true classes of the share predicted right, with its 95% interval (bootstrap over
    patients; a resample without some class averages the classes it has)."""
    hits = predicted == truth
    weights = resample_weights(groups, 1000, seed)
    point, spread = [], []
    for kind in np.unique(truth):
        mine = truth == kind
        point.append(hits[mine].mean())
        total, right = weights @ mine.astype(float), weights @ (hits & mine).astype(float)
        spread.append(np.divide(right, total, out=np.full(len(total), np.nan), where=total > 0))
    resampled = np.nanmean(np.stack(spread, axis=1), axis=1)
    low, high = np.percentile(resampled, [2.5, 97.5])
    return {"balanced_accuracy": float(np.mean(point)), "ci_low": float(low), "ci_high": float(high)}


def source_check(
    index: pd.DataFrame,
    *,
    folds: int = 5,
    seed: int = 0,
    progress: Progress = None,
    features: np.ndarray | None = None,
) -> dict | None:
    """Within each class separately: can the image's source be read off the image? None when no source is named.

    The features are the audit's own cheap, fixed image features, the ones the shortcut check uses (no
    trained network): the 16-bin intensity histogram, 7 percentiles, and mean and spread of the whole image,
    its border band and its centre (gray, :data:`STATS_SIZE` px), plus width, height, aspect ratio and pixel
    format; ``features`` passes them when already computed (one row per image of ``index``, in order). For
    each class, the sources with at least :data:`SOURCE_CHECK_MIN` images of it (an unnamed source left out)
    are told apart by a random forest, cross-validated by patient within the class; the score is the
    balanced accuracy (chance: one over the number of sources) with a 95% interval (bootstrap over patients),
    ``flagged`` when the interval starts more than :data:`SHORTCUT_MARGIN` above chance. A class with fewer
    than two such sources is listed with ``checked: false`` and its ``reason``.

    Returns ``{"classes": [{"class", "checked", "flagged", "images", "sources": {source: images}, ...}],
    "flagged", "images", "features", "message"}``; a class not checked adds its ``reason``, a checked one
    ``folds``, ``balanced_accuracy``, ``ci_low``, ``ci_high``, ``chance`` and ``left_out`` (its sources too
    small to check, or unnamed).
    """
    column = named_sources(index)
    if column is None:
        return None
    labels = index["label"].astype(str).to_numpy()
    where = column.to_numpy()
    patients = index["patient_id"].astype(str).to_numpy()
    classes, plan = [], []
    for cls in sorted(set(labels)):
        counts = pd.Series(where[labels == cls]).value_counts().sort_index()
        known = counts.drop(UNKNOWN_SOURCE, errors="ignore")
        enough = sorted(known[known >= SOURCE_CHECK_MIN].index)
        row = {"class": cls, "checked": False, "flagged": False, "images": int(counts.sum())}
        row["sources"] = {str(k): int(v) for k, v in counts.items()}
        rows = np.flatnonzero((labels == cls) & np.isin(where, enough))
        groups = patient_groups(patients[rows].tolist(), len(rows))[0] if len(rows) else np.zeros(0, int)
        fewest = min((len(set(groups[where[rows] == s])) for s in enough), default=0)
        if len(known) < 2:
            row["reason"] = "one source only: " + (f"`{known.index[0]}`" if len(known) else "none named")
        elif len(enough) < 2:
            row["reason"] = f"fewer than two sources with {SOURCE_CHECK_MIN} images or more"
        elif min(folds, fewest) < 2:
            row["reason"] = "too few patients per source to cross-validate"
        else:
            plan.append((row, rows, groups, int(min(folds, fewest)), enough))
        classes.append(row)
    if plan and features is None:
        whole, _, _ = _read_statistics(index, progress, False)
        features = np.concatenate([np.stack(whole), _header_features(index)], axis=1)
    for row, rows, groups, class_folds, enough in plan:
        truth = where[rows]
        predicted = _predictions(features[rows], truth, groups, class_folds, seed)
        scores = _balanced_accuracy(predicted, truth, groups, seed)
        chance = 1.0 / len(enough)
        row.update(
            checked=True,
            images=int(len(rows)),
            sources={s: int((truth == s).sum()) for s in enough},
            left_out=sorted(set(row["sources"]) - set(enough)),
            folds=class_folds,
            **scores,
            chance=chance,
            flagged=bool(scores["ci_low"] - chance > SHORTCUT_MARGIN),
        )
    flagged, message = check_message(classes)
    return {
        "classes": classes,
        "flagged": flagged,
        "images": int(len(index)),
        "features": SOURCE_FEATURES,
        "message": message,
    }


def _content_hashes(index: pd.DataFrame) -> list[str]:
    """The SHA-1 of every image file's bytes, in the index's order."""
    return [hashlib.sha1(Path(path).read_bytes()).hexdigest() for path in index["path"]]


def _cache_file(index: pd.DataFrame, hashes: list[str], folds: int, seed: int, how: str = "") -> Path:
    """The cache entry for this dataset's content: every image's name within the dataset, bytes,
    label, patient and source, with the settings and the lung model. Never the folder's path, so a
    copy of a dataset (or the same data written again) finds the audit of the first."""
    root = Path(index.attrs.get("root", ""))
    digest = hashlib.sha1(f"{_VERSION}|{folds}|{seed}|{segment.shipped_fingerprint()}|{how}".encode())
    for row, content in zip(index[["path", "label", "patient_id", "source"]].itertuples(index=False), hashes):
        path = Path(row.path)
        name = path.relative_to(root).as_posix() if path.is_relative_to(root) else path.name
        digest.update("|".join(map(str, (name, content, row.label, row.patient_id, row.source))).encode())
    return cache_dir() / "audit" / f"{digest.hexdigest()[:20]}.json"


def _sampled_checks(index: pd.DataFrame, folds: int, seed: int, progress: Progress) -> tuple[dict, dict | None]:
    """:func:`shortcut_check` (with the check outside the lungs) and :func:`source_check` on one stratified sample
    of at most :data:`SHORTCUT_SAMPLE` images, each image read once; ``sampled_from`` says how many the dataset
    has, and the messages say when a sample was checked."""
    sample = stratified_sample(index, SHORTCUT_SAMPLE, seed)
    result = _too_few_for_shortcut(sample, folds, True)
    features = None
    if result is None:
        read = _read_statistics(sample, progress, True)
        result = _shortcut_from(sample, read, folds, seed)
        features = np.concatenate([np.stack(read[0]), _header_features(sample)], axis=1)
    by_source = source_check(sample, folds=folds, seed=seed, progress=progress, features=features)
    if len(sample) < len(index):
        note = f"On a stratified sample of {len(sample):,} of the {len(index):,} images: "
        for part in (result, result.get("outside_lungs") or {}, by_source or {}):
            if part:
                part["sampled_from"] = int(len(index))
                part["message"] = note + part["message"]
    return result, by_source


def audit(
    data: str | os.PathLike,
    *,
    folds: int = 5,
    seed: int = 0,
    use_cache: bool = True,
    progress: Progress = None,
    options: FindingsOptions | None = None,
) -> dict:
    """The whole audit of a dataset: counts, patient leaks across the split training would use,
    byte-identical duplicates, the shortcut check (on the whole image, and on what lies outside the
    lungs only; on a stratified sample of :data:`SHORTCUT_SAMPLE` images of a larger dataset) and the per-source
    view: ``sources`` (:func:`sources`), ``source_only_auc`` (:func:`source_only_auc`), ``source_check``
    (:func:`source_check`, on the same sample) and ``verdict`` (:func:`source_verdict`, plain sentences).

    A findings dataset (read under ``options``) is checked on its findings sets for leaks and duplicates,
    and on a stated summary (any finding against No Finding: ``checked_on``) for the shortcut and source
    checks, whose messages say so."""
    index = build_index(data, options=options)
    findings = is_findings(index)
    hashes = _content_hashes(index)
    cache = _cache_file(index, hashes, folds, seed, (options or FindingsOptions()).describe() if findings else "")
    where = str(index.attrs.get("root", data))
    if use_cache:
        try:
            return {**json.loads(cache.read_text()), "data": where}
        except (OSError, ValueError):
            pass
    split = assign_splits(index)
    leaks = leakage_report(split)
    dups = duplicate_report(split, hashes=dict(zip(index["path"], hashes)))
    checked = summary_labels(index) if findings else index
    result = {
        "data": where,
        "task": "findings" if findings else "classes",
        "checked_on": SUMMARY_NOTE if findings else "checked on the classes",
        "images": int(len(index)),
        "classes": {str(k): int(v) for k, v in checked["label"].value_counts().sort_index().items()},
        "patients_known": int((index["patient_id"] != "").sum()),
        "patient_leak": {
            "patients": int(len(leaks)),
            "images_without_patient_id": int((index["patient_id"] == "").sum()),
        },
        "duplicates": {
            "groups": int(dups["hash"].nunique()) if len(dups) else 0,
            "across_splits": int(dups.loc[dups["cross_split"], "hash"].nunique()) if len(dups) else 0,
            "conflicting_labels": int((dups.groupby("hash")["label"].nunique() > 1).sum()) if len(dups) else 0,
        },
    }
    result["shortcut"], result["source_check"] = _sampled_checks(checked, folds, seed, progress)
    if findings:
        for part in (result["shortcut"], result["shortcut"].get("outside_lungs") or {}, result["source_check"] or {}):
            if part.get("message"):
                part["message"] = f"{SUMMARY_NOTE[0].upper()}{SUMMARY_NOTE[1:]}. {part['message']}"
    result["sources"] = source_table(checked)
    result["source_only_auc"] = source_only_auc(checked)
    result["verdict"] = source_verdict(result["sources"], result["source_only_auc"], result["source_check"])
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(result))
        os.replace(tmp, cache)
    except OSError:
        pass  # a read-only cache folder only costs time
    return result
