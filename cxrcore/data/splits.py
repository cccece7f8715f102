"""Label schemes, train/val/test splits, class weights and leakage checks (pure pandas).

Splits are stratified by class, reproducible under a seed, and grouped by patient:
all images of one patient land in one split. Images without a patient id are their
own group. A split that the layout already has (split folders, a ``split`` column)
is kept; only a missing validation or test split is carved out of ``train``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import LabelScheme
from ..errors import ConfigError, DataError


def apply_label_scheme(index: pd.DataFrame, scheme: LabelScheme, *, strict: bool = True) -> pd.DataFrame:
    """Relabel an index: filename rules, then rename, then merge, then drop.

    With ``strict`` (the default) a class named in ``rename`` or ``drop`` that does not
    exist raises :class:`ConfigError`, and so does a ``merge`` none of whose classes exist
    (a merge may list alternative spellings, as the presets do).
    """
    out = index.copy()
    names = out["path"].map(lambda p: Path(p).name)
    for needle, label in scheme.filename_rules.items():
        out.loc[names.str.contains(needle, regex=False), "label"] = label

    def check(classes, what):
        unknown = sorted(set(classes) - set(out["label"]))
        if unknown and strict:
            raise ConfigError(
                f"{what}: no class named {', '.join(unknown)} (classes: {', '.join(sorted(out['label'].unique()))})"
            )

    check(scheme.rename, "rename")
    out["label"] = out["label"].replace(scheme.rename)
    for target, sources in scheme.merge.items():
        if not set(sources) & set(out["label"]):  # presets list alternative spellings: one must exist
            check(sources, f"merge into {target}")
        out.loc[out["label"].isin(sources), "label"] = target
    check(scheme.drop, "drop")
    out = out[~out["label"].isin(scheme.drop)].reset_index(drop=True)
    if out.empty:
        raise ConfigError("the label scheme leaves no images")
    out.attrs.update(index.attrs)
    return out


def _groups(frame: pd.DataFrame) -> pd.Series:
    return frame["patient_id"].where(frame["patient_id"] != "", "img:" + frame["path"])


def _grouped_split(frame: pd.DataFrame, fractions: dict[str, float], rng: np.random.Generator) -> pd.Series:
    """Assign each row of ``frame`` to a key of ``fractions`` (in order), by class, by patient group."""
    groups = _groups(frame)
    # A patient with images of several classes is stratified by its most common class.
    group_label = frame.groupby(groups)["label"].agg(lambda s: s.value_counts().idxmax())
    group_size = groups.value_counts()
    assignment: dict[str, str] = {}
    names = list(fractions)
    bounds = np.cumsum([fractions[n] for n in names])
    for label in sorted(group_label.unique()):
        members = sorted(group_label.index[group_label == label])
        order = rng.permutation(len(members))
        total = float(group_size[members].sum())
        seen = 0.0
        for j in order:
            g = members[j]
            middle = (seen + group_size[g] / 2.0) / total
            k = int(np.searchsorted(bounds, middle, side="right"))
            assignment[g] = names[min(k, len(names) - 1)]
            seen += group_size[g]
    return groups.map(assignment)


def assign_splits(
    index: pd.DataFrame, *, val_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 42
) -> pd.DataFrame:
    """Fill the ``split`` column (train / val / test), keeping splits the layout already has."""
    out = index.copy()
    rng = np.random.default_rng(seed)
    has = set(out["split"]) - {""}
    if not has:
        out["split"] = _grouped_split(
            out, {"test": test_fraction, "val": val_fraction, "train": 1.0 - test_fraction - val_fraction}, rng
        ).values
    else:
        unassigned = out["split"] == ""
        if unassigned.any():  # a manifest that gives splits for some rows only
            out.loc[unassigned, "split"] = _grouped_split(
                out[unassigned],
                {"test": test_fraction, "val": val_fraction, "train": 1 - test_fraction - val_fraction},
                rng,
            ).values
        for missing, fraction in (("val", val_fraction), ("test", test_fraction)):
            if missing in set(out["split"]) or fraction <= 0:
                continue
            train = out["split"] == "train"
            if train.sum() < 2:
                raise DataError("not enough training images to carve out a validation split")
            out.loc[train, "split"] = _grouped_split(out[train], {missing: fraction, "train": 1 - fraction}, rng).values
    out.attrs.update(index.attrs)
    return out


def check_trainable(index: pd.DataFrame) -> list[str]:
    """Classes in label order, after checking every split can be used for training."""
    classes = sorted(index["label"].unique())
    if len(classes) < 2:
        raise DataError(f"need at least two classes to train, found {len(classes)}: {', '.join(classes)}")
    train_classes = set(index.loc[index["split"] == "train", "label"])
    absent = [c for c in classes if c not in train_classes]
    if absent:
        raise DataError(f"class(es) {', '.join(absent)} have no training images")
    if not (index["split"] == "val").any():
        raise DataError("the validation split is empty; the dataset is too small to split")
    return classes


def class_weights(labels: pd.Series, classes: list[str], mode: str = "balanced") -> dict[int, float] | None:
    """Keras ``class_weight``: ``n / (k * count_c)`` for "balanced", ``None`` for "none"."""
    if mode == "none":
        return None
    counts = labels.value_counts()
    n, k = float(len(labels)), len(classes)
    return {i: (n / (k * counts[c])) if counts.get(c, 0) else 0.0 for i, c in enumerate(classes)}


def leakage_report(index: pd.DataFrame) -> pd.DataFrame:
    """Patients whose images fall in more than one split: ``patient_id, splits, images``."""
    known = index[index["patient_id"] != ""]
    per = known.groupby("patient_id").agg(
        splits=("split", lambda s: ",".join(sorted(set(s)))), n_splits=("split", "nunique"), images=("path", "size")
    )
    leaked = per[per["n_splits"] > 1].drop(columns="n_splits").reset_index()
    return leaked.sort_values("patient_id").reset_index(drop=True)


def duplicate_report(index: pd.DataFrame, progress=None, hashes: dict[str, str] | None = None) -> pd.DataFrame:
    """Byte-identical image files: ``hash, path, label, split`` for every file that has a twin.

    A duplicate across splits (``cross_split`` True) leaks a test image into training. ``hashes``
    (path -> SHA-1 of its bytes) spares reading files whose hash the caller already has.
    """
    known = hashes or {}
    hashes = []
    for i, path in enumerate(index["path"]):
        hashes.append(known.get(path) or hashlib.sha1(Path(path).read_bytes()).hexdigest())
        if progress is not None and ((i + 1) % 100 == 0 or i + 1 == len(index)):
            progress(i + 1, len(index))
    table = index[["path", "label", "split"]].assign(hash=hashes)
    dup = table[table.duplicated("hash", keep=False)].copy()
    dup["cross_split"] = dup.groupby("hash")["split"].transform("nunique") > 1
    return dup.sort_values(["hash", "path"]).reset_index(drop=True)
