"""External data in the model's terms: the run's label scheme, then an explicit mapping of the
external set's class names (``Pneumonia=Abnormal``), then a clear refusal (or, when asked, a
skip) for images of classes the model does not know.

One function serves the check before training (``train --external`` refuses a set it could not
evaluate before spending hours on the model) and the evaluation after it.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..config import LabelScheme, TrainConfig
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


def check_external(config: TrainConfig, classes: list[str]) -> None:
    """Before training: every external set of ``config`` can be read and labelled as ``classes``."""
    for data in config.external:
        external_frame(
            data, classes, config.labels, label_map=config.external_map, skip_unknown=config.external_skip_unknown
        )
