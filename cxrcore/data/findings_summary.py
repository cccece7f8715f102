"""A findings index in numbers: what the Data page, ``index`` and the audit show of a findings dataset (read by
:mod:`cxrcore.data.findings`): positives per finding and split with the ones too rare to train or measure, the
co-occurrence of findings, findings per image, and the stated summary (any finding against No Finding) the
class-based checks look at."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .findings import MIN_POSITIVES, NO_FINDING, finding_columns, findings_of


def positives(frame: pd.DataFrame) -> pd.DataFrame:
    """Per finding and split: positive images, images with the finding labelled (not left out), prevalence
    among them, and whether there are too few positives (< :data:`MIN_POSITIVES`) to train or measure there."""
    rows = []
    order = {"train": 0, "val": 1, "test": 2}
    splits = sorted(set(frame["split"]), key=lambda s: (order.get(s, 3), s))
    for finding, column in zip(findings_of(frame), finding_columns(frame)):
        for split in splits:
            values = frame.loc[frame["split"] == split, column]
            labelled = int(values.notna().sum())
            n = int((values > 0.5).sum())
            rows.append(
                {
                    "finding": finding,
                    "split": split or "unassigned",
                    "positives": n,
                    "labelled": labelled,
                    "left_out": int(len(values) - labelled),
                    "prevalence": n / labelled if labelled else 0.0,
                    "too_few": n < MIN_POSITIVES,
                }
            )
    return pd.DataFrame(
        rows, columns=["finding", "split", "positives", "labelled", "left_out", "prevalence", "too_few"]
    )


def split_table(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per finding: its positive images per split, in all, its prevalence among the images where it is
    labelled, the labels left out (uncertain or blank under ``ignore``) and the splits where it has too few
    positives (fewer than :data:`MIN_POSITIVES`), as text; the Data page's table."""
    table = positives(frame)
    order = list(dict.fromkeys(table["finding"]))
    wide = table.pivot(index="finding", columns="split", values="positives").reindex(order)
    wide = wide[[s for s in ("train", "val", "test", "unassigned") if s in wide.columns]]
    wide.columns.name = None
    sums = table.groupby("finding", sort=False)[["positives", "labelled", "left_out"]].sum().reindex(order)
    wide["total"] = sums["positives"]
    wide["prevalence"] = sums["positives"] / sums["labelled"].where(sums["labelled"] > 0)
    wide["left out"] = sums["left_out"]
    rare = table[table["too_few"]].groupby("finding", sort=False)["split"].agg(", ".join)
    wide["too few positives in"] = rare.reindex(order).fillna("")
    return wide


def co_occurrence(frame: pd.DataFrame) -> pd.DataFrame:
    """Images holding both findings (the diagonal: images holding the finding), findings x findings."""
    names = findings_of(frame)
    positive = (np.nan_to_num(frame[finding_columns(frame)].to_numpy(dtype=np.float32), nan=0.0) > 0.5).astype(np.int64)
    return pd.DataFrame(positive.T @ positive, index=names, columns=names)


def findings_summary(frame: pd.DataFrame) -> dict:
    """A findings index (split or not) in numbers: per finding its positives, prevalence and left-out labels
    overall and per split, the findings too rare to train or measure (fewer than :data:`MIN_POSITIVES`
    positive images in a split), findings per image, the all-negative share and the co-occurrence counts."""
    table = positives(frame)
    counts = (np.nan_to_num(frame[finding_columns(frame)].to_numpy(dtype=np.float32), nan=0.0) > 0.5).sum(axis=1)
    per_finding = {}
    for finding, part in table.groupby("finding", sort=False):
        labelled = int(part["labelled"].sum())
        n = int(part["positives"].sum())
        per_finding[finding] = {
            "positives": n,
            "prevalence": n / labelled if labelled else 0.0,
            "left_out": int(part["left_out"].sum()),
            "by_split": {r.split: int(r.positives) for r in part.itertuples()},
        }
    too_few = {
        finding: part.loc[part["too_few"], "split"].tolist()
        for finding, part in table.groupby("finding", sort=False)
        if part["too_few"].any()
    }
    histogram = pd.Series(counts).value_counts().sort_index()
    return {
        "findings": per_finding,
        "too_few": too_few,
        "min_positives": MIN_POSITIVES,
        "findings_per_image": {str(int(k)): int(v) for k, v in histogram.items()},
        "all_negative": int((counts == 0).sum()),
        "all_negative_share": float((counts == 0).mean()) if len(counts) else 0.0,
        "co_occurrence": co_occurrence(frame).to_dict(),
    }


def summary_labels(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy of a findings index labelled by a stated summary, any finding (``"Any finding"``) against
    :data:`NO_FINDING`: what the class-based checks (shortcut, sources) see of a findings dataset."""
    out = frame.copy()
    out["label"] = np.where(out["label"] == NO_FINDING, NO_FINDING, ANY_FINDING)
    out.attrs.update(frame.attrs)
    return out


ANY_FINDING = "Any finding"
SUMMARY_NOTE = f"checked on a stated summary of the findings, {ANY_FINDING.lower()} against {NO_FINDING}"
