"""Sources as folds: which sources can be held out, and the split that holds one out.

Leave one source out (LOSO) trains one model per source on every other source and tests it on the one
it never saw: how a model does at a hospital it was not trained on. A source can be held out when it
holds at least two of the classes (an AUC needs positives and negatives) and what is left still holds
every class. Sources come from the index's ``source`` column (a manifest's own column or a dataset
list's names); images of no known source are never held out and always train.
"""

from __future__ import annotations

import pandas as pd

from ..errors import DataError
from .splits import assign_splits

#: fewest images a held-out source needs to be a fold
MIN_FOLD_IMAGES = 10


def loso_folds(frame: pd.DataFrame, classes: list[str]) -> tuple[list[str], dict[str, str]]:
    """``(sources to hold out, {source: why it is not one})`` of a labelled frame (``label`` already the
    run's classes). Raises :class:`DataError` when no source is known or none can be held out."""
    known = frame[frame["source"].astype(str) != ""]
    if known.empty:
        raise DataError("no image has a source: leave one source out needs a source column or a dataset list")
    folds, skipped = [], {}
    for source, part in sorted(known.groupby("source"), key=lambda kv: str(kv[0])):
        held = set(part["label"])
        rest = set(frame.loc[frame["source"] != source, "label"])
        if len(held) < 2:
            skipped[str(source)] = f"holds one class only ({next(iter(held))}, {len(part)} images)"
        elif len(part) < MIN_FOLD_IMAGES:
            skipped[str(source)] = f"{len(part)} images (a fold needs {MIN_FOLD_IMAGES})"
        elif set(classes) - rest:
            skipped[str(source)] = (
                f"without it, no image of {', '.join(sorted(set(classes) - rest))} is left to train on"
            )
        else:
            folds.append(str(source))
    if not folds:
        reasons = "; ".join(f"{s}: {why}" for s, why in skipped.items())
        raise DataError(f"no source can be held out ({reasons})")
    return folds, skipped


def fold_split(frame: pd.DataFrame, held_out: str, *, val_fraction: float, seed: int) -> pd.DataFrame:
    """``frame`` with ``split``: the held-out source is the test split; every other image is split into
    train and validation (patient-grouped, stratified: :func:`cxrcore.data.splits.assign_splits`)."""
    test = frame["source"] == held_out
    rest = assign_splits(frame[~test].assign(split=""), val_fraction=val_fraction, test_fraction=0.0, seed=seed)
    out = pd.concat([rest, frame[test].assign(split="test")])
    out.attrs.update(frame.attrs)
    return out
