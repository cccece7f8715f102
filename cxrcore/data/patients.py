"""Patient ids: read from well-known file names, and compared across their spellings.

NIH ChestX-ray14 names a patient ``231`` in its CSV's ``Patient ID`` and ``00000231`` in its file names
(``00000231_013.png``); :func:`patient_key` makes the two one key, so splits, leak checks and checks across
sets see one patient. Pure functions on names and pandas columns; no imports from the package.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

# Patient ids encoded in well-known file names.
PATIENT_PATTERNS = (
    re.compile(r"^(person\d+)_(?:bacteria|virus)_\d+", re.IGNORECASE),  # pediatric pneumonia set
    re.compile(r"^((?:NORMAL2-)?IM-\d+)-\d+", re.IGNORECASE),  # its NORMAL images
    re.compile(r"^(\d{8})_\d{3}$"),  # NIH ChestX-ray14
    re.compile(r"^synthetic_(p\d+)_\d+$"),  # cxrcore demo data
)
#: CheXpert's patient folder in an image's path (``train/patient00001/study1/view1_frontal.jpg``)
CHEXPERT_PATIENT = re.compile(r"(?:^|/)(patient\d+)/")


def patient_from_filename(name: str) -> str:
    """Patient id from a known file-name pattern, or "" when none matches."""
    stem = Path(name).stem
    for pattern in PATIENT_PATTERNS:
        match = pattern.match(stem)
        if match:
            return match.group(1)
    return ""


def patient_key(patient_id: str) -> str:
    """The key two spellings of one patient share: an all-digit id without its leading zeros (``"00000231"``
    and ``"231"`` -> ``"231"``; ``"0000"`` -> ``"0"``), anything else as it is (a dataset list's
    ``"name/231"`` keeps its prefix: patients of different datasets are different people)."""
    text = str(patient_id).strip()
    head, sep, tail = text.rpartition("/")
    if tail.isdigit() and tail.isascii():
        tail = tail.lstrip("0") or "0"
    return f"{head}{sep}{tail}"


def patients(frame: pd.DataFrame) -> pd.Series:
    """Each image's patient id, one spelling per patient: ids that :func:`patient_key` makes one (NIH's
    ``231`` and ``00000231``) take the first spelling in sort order; "" stays "" (unknown)."""
    spelled = frame["patient_id"].astype(str)
    if spelled.empty:
        return spelled
    keys = spelled.map(patient_key)
    return spelled.groupby(keys.to_numpy()).transform("min").where(spelled != "", "")
