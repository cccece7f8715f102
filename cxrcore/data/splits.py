"""Label schemes, train/val/test splits, class weights, sources and leakage checks (pure pandas).

Splits are stratified by class, reproducible under a seed, and grouped by patient:
all images of one patient land in one split. Images without a patient id are their
own group. A split that the layout already has (split folders, a ``split`` column)
is kept; only a missing validation or test split is carved out of ``train``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import LabelScheme
from ..errors import ConfigError, DataError
from .findings import MIN_POSITIVES, finding_columns, findings_of, is_findings, targets
from .patients import patient_key, patients


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
    known = patients(frame)
    return known.where(known != "", "img:" + frame["path"])


def _grouped_split(frame: pd.DataFrame, fractions: dict[str, float], rng: np.random.Generator) -> pd.Series:
    """Assign each row of ``frame`` to a key of ``fractions`` (in order), by class, by patient group."""
    if finding_columns(frame):
        return _findings_grouped_split(frame, fractions, rng)
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


def _findings_grouped_split(frame: pd.DataFrame, fractions: dict[str, float], rng: np.random.Generator) -> pd.Series:
    """Patient groups assigned to splits so that each finding's positives are shared as ``fractions`` says
    (iterative stratification, Sechidis et al. 2011, over patients instead of images): the rarest finding
    first, each of its patients to the split that most lacks that finding's positives; a finding with at
    least three positive patients gets one in every split besides ``train`` before that. Patients with no
    positive finding then fill each split up to its share of the images."""
    groups = _groups(frame)
    codes, names = pd.factorize(groups, sort=True)
    positive = (np.nan_to_num(frame[finding_columns(frame)].to_numpy(dtype=np.float32), nan=0.0) > 0.5).astype(float)
    per_group = np.zeros((len(names), positive.shape[1]))
    np.add.at(per_group, codes, positive)
    size = np.bincount(codes, minlength=len(names)).astype(float)
    splits = list(fractions)
    share = np.array([fractions[s] for s in splits], dtype=float)
    want = share[:, None] * per_group.sum(axis=0)[None, :]  # positives wanted per split and finding
    want_images = share * size.sum()
    have = np.zeros_like(want)
    have_images = np.zeros(len(splits))
    chosen = np.full(len(names), -1)
    others = [k for k, s in enumerate(splits) if s != "train" and share[k] > 0]

    def place(g: int, k: int) -> None:
        chosen[g] = k
        have[k] += per_group[g]
        have_images[k] += size[g]

    holders = (per_group > 0).sum(axis=0)
    for f in np.argsort(holders, kind="stable"):
        members = [int(g) for g in rng.permutation(np.flatnonzero(per_group[:, f] > 0)) if chosen[g] < 0]
        if holders[f] >= 3:
            for k in others:
                if have[k, f] == 0 and members:  # the smallest patient, so the split's share stays near its own
                    smallest = min(members, key=lambda g: (per_group[g, f], size[g]))
                    members.remove(smallest)
                    place(smallest, k)
        for g in members:
            room = want_images - have_images
            fits = room >= size[g]
            need = np.where(fits if fits.any() else True, want[:, f] - have[:, f], -np.inf)
            place(g, int(np.lexsort((-room, -need))[0]))
    for g in rng.permutation(np.flatnonzero(chosen < 0)):
        place(int(g), int(np.argmax(want_images - have_images)))
    return pd.Series(np.asarray(splits, dtype=object)[chosen[codes]], index=frame.index)


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
    """The model's outputs, after checking every split can be used for training: the classes in label order,
    or for a findings dataset its findings in the dataset's order (:func:`check_findings_trainable`)."""
    if is_findings(index):
        return check_findings_trainable(index)
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


def check_findings_trainable(index: pd.DataFrame) -> list[str]:
    """The findings of a findings index, after checking it can train a multi-label model: a validation split,
    and at least one finding with :data:`MIN_POSITIVES` positive training images. A rarer finding is still an
    output; evaluation reports it as not evaluated, with the reason."""
    findings = findings_of(index)
    if not (index["split"] == "val").any():
        raise DataError("the validation split is empty; the dataset is too small to split")
    train = index[index["split"] == "train"]
    counts = np.nansum(targets(train, findings) > 0.5, axis=0) if len(train) else np.zeros(len(findings))
    if not len(train) or counts.max() < MIN_POSITIVES:
        best = ", ".join(f"{f} {int(n)}" for f, n in zip(findings, counts))
        raise DataError(
            f"no finding has {MIN_POSITIVES} positive training images (positives per finding: {best}); "
            "a findings model needs at least one"
        )
    return findings


def positive_weights(train: pd.DataFrame, findings: list[str], mode: str = "balanced") -> list[float] | None:
    """Per finding, the weight of a positive label in the masked binary cross-entropy, from the training
    rows ``train``: with "balanced" its negatives / positives among the images where it is labelled (a
    finding labelled 1 in 10 of 100 images weighs each positive 90 / 10 = 9; negatives weigh 1), 1.0 for a
    finding with no positives or no negatives; None for "none"."""
    if mode == "none":
        return None
    values = targets(train, findings)
    positive = np.nansum(values > 0.5, axis=0)
    negative = np.nansum(values < 0.5, axis=0)  # NaN compares False: left-out labels count as neither
    return [float(n / p) if p and n else 1.0 for p, n in zip(positive, negative)]


def class_weights(labels: pd.Series, classes: list[str], mode: str = "balanced") -> dict[int, float] | None:
    """Keras ``class_weight``: ``n / (k * count_c)`` for "balanced", ``None`` for "none"."""
    if mode == "none":
        return None
    counts = labels.value_counts()
    n, k = float(len(labels)), len(classes)
    return {i: (n / (k * counts[c])) if counts.get(c, 0) else 0.0 for i, c in enumerate(classes)}


# -- sources: where images came from (the index's ``source`` column; "" when unknown) --------------------

UNKNOWN_SOURCE = "(unknown)"  # how a source named "" is shown
BALANCE_OPTION = "balancing batches by source (--balance source)"
DROP_OPTION = "dropping single-class sources (--drop-single-class-sources)"


def sources(frame: pd.DataFrame) -> pd.Series:
    """Each row's source as text ("" when unknown, or when the frame has no ``source`` column)."""
    if "source" not in frame:
        return pd.Series("", index=frame.index, dtype=object)
    return frame["source"].fillna("").astype(str).str.strip()


def source_weights(frame: pd.DataFrame) -> pd.Series:
    """Each row's source weight (a dataset list's ``weight``; 1.0 when the frame has no ``weight`` column or
    the row none). A weight that is not a finite number of 0 or more raises :class:`DataError`."""
    if "weight" not in frame:
        return pd.Series(1.0, index=frame.index, dtype=float)
    raw = frame["weight"]
    missing = raw.isna() | (raw.astype(str).str.strip() == "")
    weights = pd.to_numeric(raw.where(~missing, 1.0), errors="coerce").astype(float)
    values = weights.to_numpy(dtype=float)
    bad = ~np.isfinite(values) | (values < 0)
    if bad.any():
        where = sorted(set(sources(frame)[bad]))
        raise DataError(
            f"source weight(s) must be numbers of 0 or more; bad for {', '.join(s or UNKNOWN_SOURCE for s in where)}"
        )
    return weights


def require_sources(frame: pd.DataFrame, what: str) -> None:
    """Raise :class:`DataError` naming ``what`` (the option that needs them) when no image has a known source."""
    if not (sources(frame) != "").any():
        raise DataError(
            f"{what} needs to know where images came from, and no image of this dataset has a source: give the "
            "manifest a source (or hospital, site, source_repo) column"
        )


def drop_single_class_sources(frame: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """``frame`` without the images of sources that hold one class only (after the label scheme, before
    splitting), and what was done: ``{"dropped": {source: {"class", "images"}}, "images_dropped",
    "unknown_kept"}``. Images without a source ("") are never dropped: they may come from several places,
    so they are kept, and ``unknown_kept`` counts them. Raises :class:`DataError` when no source is known,
    when nothing would be left, or when fewer than two classes would be."""
    require_sources(frame, DROP_OPTION)
    where = sources(frame)
    known = where != ""
    per_source = frame.loc[known, "label"].groupby(where[known]).agg(["nunique", "size", "first"])
    single = per_source[per_source["nunique"] == 1]
    report = {
        "dropped": {
            str(name): {"class": str(row["first"]), "images": int(row["size"])} for name, row in single.iterrows()
        },
        "images_dropped": int(single["size"].sum()),
        "unknown_kept": int((~known).sum()),
    }
    kept = frame[~where.isin(set(single.index))].reset_index(drop=True)
    if kept.empty:
        raise DataError(
            f"{DROP_OPTION} leaves no images: every source holds one class ({_describe_dropped(report['dropped'])})"
        )
    left = sorted(kept["label"].unique())
    if len(left) < 2:
        raise DataError(
            f"{DROP_OPTION} leaves one class only ({', '.join(left)}): it dropped "
            f"{_describe_dropped(report['dropped'])}"
        )
    kept.attrs.update(frame.attrs)
    return kept, report


def _describe_dropped(dropped: dict) -> str:
    return ", ".join(f"{name} ({d['images']} {d['class']})" for name, d in dropped.items()) or "none"


def describe_drop(report: dict) -> str:
    """What :func:`drop_single_class_sources` did, in one line for the log."""
    dropped = report["dropped"]
    text = (
        f"dropped {len(dropped)} single-class source(s), {report['images_dropped']} image(s): "
        f"{_describe_dropped(dropped)}"
        if dropped
        else "no source holds one class only: nothing dropped"
    )
    if report["unknown_kept"]:
        text += f"; {report['unknown_kept']} image(s) without a source kept (a missing source is never dropped)"
    return text


@dataclass
class SourceGroups:
    """The (source, class) groups of a training split, for batches balanced over them: ``codes`` gives each
    row (in the frame's order) its group, ``probabilities`` the chance that a drawn example comes from each
    group (equal per group, times the source's weight), ``names`` and ``sizes`` say which groups they are."""

    codes: np.ndarray  # (n,) int: each row's group
    names: list[tuple[str, str]]  # (source, class) per group
    sizes: np.ndarray  # (groups,) images per group
    probabilities: np.ndarray  # (groups,) sums to 1

    def class_shares(self) -> dict[str, float]:
        """Each class's expected share of the drawn examples."""
        shares: dict[str, float] = {}
        for (_, label), p in zip(self.names, self.probabilities):
            shares[label] = shares.get(label, 0.0) + float(p)
        return shares

    def table(self) -> list[dict]:
        """One row per group: source, class, images, share of the drawn examples (for run.json)."""
        return [
            {"source": source, "class": label, "images": int(n), "share": round(float(p), 4)}
            for (source, label), n, p in zip(self.names, self.sizes, self.probabilities)
        ]

    def describe(self) -> str:
        return "; ".join(
            f"{source or UNKNOWN_SOURCE}/{label}: {int(n)} image(s), {p:.1%} of draws"
            for (source, label), n, p in zip(self.names, self.sizes, self.probabilities)
        )


def source_groups(frame: pd.DataFrame) -> SourceGroups:
    """The (source, class) groups of ``frame`` (the training rows) for ``--balance source``. Each group is
    drawn with the same probability, times its source's weight (the ``weight`` column, 1.0 without one).
    Images without a source form one more source, shown as (unknown). Raises :class:`DataError` when no
    source is known or every group's weight is 0."""
    require_sources(frame, BALANCE_OPTION)
    where = sources(frame).to_numpy()
    labels = frame["label"].astype(str).to_numpy()
    weights = source_weights(frame).to_numpy(dtype=float)
    keys = list(zip(where, labels))
    names = sorted(set(keys))
    lookup = {name: i for i, name in enumerate(names)}
    codes = np.fromiter((lookup[k] for k in keys), dtype=np.int64, count=len(keys))
    sizes = np.bincount(codes, minlength=len(names))
    group_weight = np.bincount(codes, weights=weights, minlength=len(names)) / np.maximum(sizes, 1)
    if group_weight.sum() <= 0:
        raise DataError(f"{BALANCE_OPTION}: every source has weight 0, so no image could be drawn")
    return SourceGroups(codes, names, sizes, group_weight / group_weight.sum())


def training_class_weights(
    train: pd.DataFrame, classes: list[str], mode: str = "balanced", groups: SourceGroups | None = None
) -> dict[int, float] | None:
    """Keras ``class_weight`` for the training rows ``train``. Without ``groups`` as :func:`class_weights`.
    With ``groups`` (batches balanced over (source, class)), "balanced" weighs each class by how often the
    balanced draw gives it, not by how many images it has: ``1 / (k * share_c)``, so all 1.0 when every source
    holds every class with equal weights, and only what the draw leaves unbalanced (a source lacking a class)
    is corrected."""
    if groups is None or mode == "none":
        return class_weights(train["label"], classes, mode)
    shares = groups.class_shares()
    k = len(classes)
    return {i: (1.0 / (k * shares[c])) if shares.get(c, 0.0) > 0 else 0.0 for i, c in enumerate(classes)}


def leakage_report(index: pd.DataFrame) -> pd.DataFrame:
    """Patients whose images fall in more than one split: ``patient_id, splits, images`` (one patient however
    its id is spelled: :func:`patients`)."""
    known = index.assign(patient_id=patients(index))
    known = known[known["patient_id"] != ""]
    per = known.groupby("patient_id").agg(
        splits=("split", lambda s: ",".join(sorted(set(s)))), n_splits=("split", "nunique"), images=("path", "size")
    )
    leaked = per[per["n_splits"] > 1].drop(columns="n_splits").reset_index()
    return leaked.sort_values("patient_id").reset_index(drop=True)


def shared_patients(first: pd.DataFrame, second: pd.DataFrame) -> list[str]:
    """Patients with images in both indexes (two datasets, or a run's training split and an external set),
    matched by :func:`patient_key`: NIH's ``231`` in one and ``00000231`` in the other are one patient.
    Returns the first index's spellings, sorted."""
    theirs = {patient_key(p) for p in second["patient_id"].astype(str) if p}
    return sorted({p for p in first["patient_id"].astype(str) if p and patient_key(p) in theirs})


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
