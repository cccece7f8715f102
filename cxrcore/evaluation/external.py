"""External data in the model's terms: the run's label scheme, then an explicit mapping of the
external set's class names (``Pneumonia=Abnormal``), then a clear refusal (or, when asked, a
skip) for images of classes the model does not know.

One function serves the check before training (``train --external`` refuses a set it could not
evaluate before spending hours on the model) and the evaluation after it.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..config import FindingsOptions, LabelScheme, TrainConfig
from ..data.findings import FINDING_PREFIX, finding_columns, findings_of, is_findings, match_finding
from ..data.index import build_index
from ..data.splits import apply_label_scheme
from ..errors import DataError


def external_frame(
    data: str | Path,
    classes: list[str],
    scheme: LabelScheme,
    *,
    label_map: dict[str, str] | None = None,
    skip_unknown: bool = False,
    progress=None,
) -> pd.DataFrame:
    """The images of ``data`` labelled as the model's ``classes`` (DataError naming the unknown
    class names, the model's, and the two ways out, unless ``skip_unknown``)."""
    frame = apply_label_scheme(build_index(data, progress=progress), scheme, strict=False)
    if label_map:
        frame = frame.assign(label=frame["label"].replace(label_map))
    unknown = sorted(set(frame["label"]) - set(classes))
    if unknown and not skip_unknown:
        raise DataError(
            f"{data} has class(es) the model was not trained on: {', '.join(unknown)} (model classes: "
            f"{', '.join(classes)}); map them with --external-map NAME=CLASS, or skip them with "
            "--drop-unknown (evaluate) / --external-skip-unknown (train)"
        )
    frame = frame[frame["label"].isin(classes)].reset_index(drop=True)
    if frame.empty:
        raise DataError(f"{data} has no images of the model's classes ({', '.join(classes)})")
    return frame


def external_findings_frame(
    data: str | Path, findings: list[str], options: FindingsOptions, *, progress=None
) -> pd.DataFrame:
    """The images of ``data`` labelled with a findings model's ``findings``: ``data`` read as a findings
    dataset under ``options`` (its ``labels_column`` reads a manifest's column of findings), each of the model's
    findings taken from the dataset's finding of that name or its exact equivalent (``Effusion`` is ``Pleural
    Effusion``). A finding the dataset lacks is all NaN (left out) and named in ``attrs["absent_findings"]``
    with the reason; a class-labelled ``data`` raises :class:`DataError` saying how to read its findings."""
    index = build_index(data, progress=progress, options=options)
    if not is_findings(index):
        classes = ", ".join(sorted(index["label"].unique()))
        raise DataError(
            f"{data} is class-labelled ({classes}) and this model predicts findings: evaluate it on a findings "
            "dataset, or name the manifest's column of findings with --labels-column NAME (e.g. nih_labels)"
        )
    available = findings_of(index)
    columns, absent = {}, {}
    for name in findings:
        match = match_finding(name, available)
        if match is None:
            columns[FINDING_PREFIX + name] = float("nan")
            absent[name] = f"not among this dataset's findings ({Path(str(data)).name})"
        else:
            columns[FINDING_PREFIX + name] = index[FINDING_PREFIX + match].to_numpy()
    if len(absent) == len(findings):
        raise DataError(
            f"{data} has none of the model's findings ({', '.join(findings)}); its findings: {', '.join(available)}"
        )
    frame = index.drop(columns=finding_columns(index)).assign(**columns)
    frame.attrs.update(index.attrs, absent_findings=absent)
    return frame


def external_options(config: TrainConfig) -> FindingsOptions:
    """How a findings run reads an external set: its own uncertain and blank policies, every finding and view,
    and the column of findings ``external_labels_column`` names (if any)."""
    return FindingsOptions(
        uncertain=config.findings.uncertain, blank=config.findings.blank, labels_column=config.external_labels_column
    )


def check_external(config: TrainConfig, classes: list[str], findings: bool = False) -> None:
    """Before training: every external set of ``config`` can be read and labelled as ``classes`` (for a findings
    run, ``findings``: with at least one of its findings)."""
    for data in config.external:
        if findings:
            external_findings_frame(data, classes, external_options(config))
            continue
        external_frame(
            data, classes, config.labels, label_map=config.external_map, skip_unknown=config.external_skip_unknown
        )
