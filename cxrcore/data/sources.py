"""Sources: the class mix of each source and what it says (the data audit's per-source view), and sources
as folds (which can be held out, and the split that holds one out).

Leave one source out (LOSO) trains one model per source on every other source and tests it on the one
it never saw: how a model does at a hospital it was not trained on. A source can be held out when it
holds at least two of the classes (an AUC needs positives and negatives) and what is left still holds
every class. Sources come from the index's ``source`` column (a manifest's own column or a dataset
list's names); images of no known source are never held out and always train.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import DataError
from .splits import UNKNOWN_SOURCE, assign_splits, sources

#: fewest images a held-out source needs to be a fold
MIN_FOLD_IMAGES = 10
#: from this source-only AUC up, the classes count as separated by source even where a source holds two
SEPARATED_AUC = 0.9
#: from this source-only AUC up (and below :data:`SEPARATED_AUC`), the class mix differs between sources
MIXED_AUC = 0.7
#: the verdict's sentence when the classes are separated by source
NO_TRANSFER = "Expect it not to transfer to another hospital."


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


# -- the per-source view of a dataset -------------------------------------------------------------------


def named_sources(index: pd.DataFrame) -> pd.Series | None:
    """Each image's source, :data:`UNKNOWN_SOURCE` where none is named; None when no image names one."""
    if "source" not in index:
        return None
    named = sources(index)
    if not (named != "").any():
        return None
    return named.replace("", UNKNOWN_SOURCE)


def source_table(index: pd.DataFrame) -> list[dict] | None:
    """The class mix of each source (a manifest's source column), sorted by source; None when none is named.

    One ``{"source", "counts": {class: images}, "images", "prevalence": {class: share}, "single_class"}`` per
    source, every class of the dataset in ``counts`` and ``prevalence`` (0 where the source has none);
    ``single_class`` where the source holds one class only. Images without a source count as
    :data:`UNKNOWN_SOURCE`.
    """
    column = named_sources(index)
    if column is None:
        return None
    labels = index["label"].astype(str)
    classes = sorted(labels.unique())
    table = pd.crosstab(column, labels).reindex(columns=classes, fill_value=0)
    rows = []
    for source in sorted(table.index):
        counts = {c: int(table.at[source, c]) for c in classes}
        images = sum(counts.values())
        rows.append(
            {
                "source": str(source),
                "counts": counts,
                "images": images,
                "prevalence": {c: round(n / images, 4) for c, n in counts.items()},
                "single_class": sum(n > 0 for n in counts.values()) == 1,
            }
        )
    return rows


def source_only_auc(index: pd.DataFrame) -> float | None:
    """How well the source alone predicts the label: the ROC AUC of a score that is, for each image, its class's
    share in the image's source (one-vs-rest per class, the mean over the classes; with two classes both are
    the same). 1.0 when every source holds one class, 0.5 when every source holds the classes in the same
    shares. None with fewer than two sources or classes, or no source named."""
    from sklearn.metrics import roc_auc_score  # lazy: scikit-learn (the CLI imports this module for --help)

    column = named_sources(index)
    labels = index["label"].astype(str)
    if column is None or column.nunique() < 2 or labels.nunique() < 2:
        return None
    shares = pd.crosstab(column, labels, normalize="index")
    aucs = [roc_auc_score(labels == c, column.map(shares[c]).to_numpy(float)) for c in shares.columns]
    return float(np.mean(aucs))


def _names(items: list[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def check_finding(classes: list[dict]) -> tuple[bool, str]:
    """Whether any checked class is flagged, and what the source check found in the classes it checked (at
    least one)."""
    checked = [c for c in classes if c["checked"]]

    def figures(rows: list[dict]) -> str:
        return "; ".join(
            f"{c['class']}: balanced accuracy {c['balanced_accuracy']:.2f} "
            f"(95% CI {c['ci_low']:.2f}-{c['ci_high']:.2f}) against {c['chance']:.2f} by chance"
            for c in rows
        )

    flagged = [c for c in checked if c["flagged"]]
    calm = [c for c in checked if not c["flagged"]]
    if not flagged:
        return False, f"Within each class checked, the image does not tell its source apart ({figures(calm)})."
    message = (
        f"Within {_names([c['class'] for c in flagged])}, the image tells its source apart ({figures(flagged)}): "
        "the sources' images differ visibly (exposure, borders, size), and a model can tell them apart too."
    )
    if calm:
        message += f" Within {_names([c['class'] for c in calm])}, it does not ({figures(calm)})."
    return True, message


def check_message(classes: list[dict]) -> tuple[bool, str]:
    """The finding, then the classes not checked and why."""
    skipped = "; ".join(f"{c['class']} ({c['reason']})" for c in classes if not c["checked"])
    if not any(c["checked"] for c in classes):
        return False, f"No class could be checked: {skipped}."
    flagged, message = check_finding(classes)
    return flagged, message + (f" Not checked: {skipped}." if skipped else "")


def _holds(row: dict) -> str:
    """```north` (120 A, 8 B)``: a source and its class mix."""
    mix = ", ".join(f"{n:,} {c}" for c, n in row["counts"].items() if n)
    return f"`{row['source']}` ({mix})"


def _sized(rows: list[dict]) -> str:
    """```north` (120 images) and `east` (40 images)``."""
    return _names([f"`{row['source']}` ({row['images']:,} images)" for row in rows])


def source_verdict(table: list[dict] | None, auc: float | None, check: dict | None) -> list[str]:
    """The per-source view in plain sentences: whether the classes are separated by source (then a model can
    learn the source instead of the finding, and a sentence ends with :data:`NO_TRANSFER`), and what the
    source check found in the classes it checked."""
    if table is None:
        return [
            "No source is named (no source, source_repo, hospital or site column in a manifest): whether the "
            "classes come from different hospitals cannot be checked."
        ]
    if len(table) == 1:
        return [
            f"All {table[0]['images']:,} images come from one source, {_holds(table[0])}: its own test split says "
            "nothing about another hospital."
        ]
    out = []
    classes = list(table[0]["counts"])
    holders = {c: [row for row in table if row["counts"][c]] for c in classes}
    alone = [c for c in classes if all(row["single_class"] for row in holders[c])]
    figure = (
        "the source alone predicts the label with AUC "
        + ("n/a" if auc is None else f"{auc:.2f}")
        + " (1.00: fully separated, 0.50: not at all)"
    )
    if len(alone) == len(classes):
        parts = "; ".join(f"{c} from {_sized(holders[c])}" for c in classes)
        out.append(
            f"Each class comes from its own source(s): {parts}. A model can learn the source instead of the "
            f"finding. {NO_TRANSFER}"
        )
    elif auc is not None and auc >= SEPARATED_AUC:
        out.append(
            f"The classes are almost separated by source: {figure}; "
            + "; ".join(_holds(row) for row in table)
            + f". A model can learn the source instead of the finding. {NO_TRANSFER}"
        )
    elif alone:
        for c in alone:
            out.append(
                f"{c} comes only from {_sized(holders[c])}, which holds no other class: a model can learn that "
                f"source instead of {c}. {NO_TRANSFER}"
            )
        out.append(f"Over all classes, {figure}.")
    elif auc is not None and auc >= MIXED_AUC:
        out.append(
            f"The class mix differs between sources: {figure}. Part of the label can be read from where an image "
            "comes from; test the model on another hospital before trusting it there."
        )
    else:
        out.append(f"The classes share their sources: {figure}.")
    single = [row for row in table if row["single_class"] and row["source"] != UNKNOWN_SOURCE]
    if single and not alone:  # a class shared elsewhere, but some source holds it alone
        out.append(
            "; ".join(f"{_holds(row)} holds one class only" for row in single)
            + ": where such a source's images are, their source gives their label away. "
            "`--drop-single-class-sources` leaves them out of training."
        )
    unknown = next((row for row in table if row["source"] == UNKNOWN_SOURCE), None)
    if unknown:
        out.append(f"{unknown['images']:,} images name no source; they are counted as one source, `{UNKNOWN_SOURCE}`.")
    if check and any(c["checked"] for c in check["classes"]):
        flagged, finding = check_finding(check["classes"])
        out.append(finding)
        shared = not single and (auc is None or auc < MIXED_AUC)
        if flagged and shared and not any(NO_TRANSFER in sentence for sentence in out):
            out.append(
                "Here the classes share their sources, so telling the sources apart does not give the label away; "
                "but a hospital not in this data will look different again: test the model there before trusting it."
            )
    return out
