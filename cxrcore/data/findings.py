"""Findings datasets: several findings per image, read as their publishers distribute them.

Three formats, recognised by a CSV's columns whatever the file is called (:func:`csv_format`):

``nih``                NIH ChestX-ray14's ``Data_Entry_2017.csv`` (or ``_v2020``): ``Image Index``, ``Finding
                       Labels`` (``|``-separated, "No Finding" when none), ``Patient ID``, ``View Position``,
                       ``Patient Age``, ``Patient Gender`` when present. Images are found anywhere under the CSV's
                       folder (``images_001/images/`` ... included). ``train_val_list.txt`` / ``test_list.txt``
                       beside the CSV give NIH's official test split.
``chexpert``           CheXpert's ``train.csv`` / ``valid.csv``: ``Path`` (relative to the parent of the CSV's
                       folder), ``Frontal/Lateral``, ``AP/PA``, ``Sex``, ``Age`` and the observation columns, each
                       1.0, 0.0, -1.0 (uncertain) or blank. ``valid.csv`` beside ``train.csv`` is the test split.
``findings-manifest``  a generic ``path,labels[,patient_id][,split][,source][,view]`` CSV, ``labels``
                       ``|``-separated ("No Finding" or empty when none), paths relative to the CSV's folder.

A findings index is the image index (:mod:`cxrcore.data.index`) plus one float column per finding,
``finding:<name>``: 1.0 (present), 0.0 (absent) or NaN (left out of the loss and the metrics for that
finding: CheXpert's uncertain or blank under the ``ignore`` policies). Its ``label`` is the image's positive
findings joined by ``|`` (its findings set), or "No Finding": the all-negative case, counted, never an
output. Names are kept as the dataset spells them; :data:`ALIASES` maps the exact equivalents between NIH
and CheXpert and nothing approximate.

NIH and CheXpert come in parts: rows whose image is not on disk are skipped and counted (``missing``), not
an error. Pure pandas: no image is opened here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import FindingsOptions
from ..errors import DataError
from .formats import IMAGE_EXTENSIONS
from .patients import CHEXPERT_PATIENT, patient_from_filename

FINDING_PREFIX = "finding:"
NO_FINDING = "No Finding"
SEPARATOR = "|"  # between an image's findings, in NIH's CSV, a findings manifest and the index's label
#: a finding needs at least this many positive images in a split to be trained or measured there
MIN_POSITIVES = 10
FINDINGS_MANIFEST = "findings-manifest"
FORMATS = ("nih", "chexpert", FINDINGS_MANIFEST)
NIH_REQUIRED = ("Image Index", "Finding Labels")
NIH_FINDINGS = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)
CHEXPERT_OBSERVATIONS = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)
#: NIH's name -> CheXpert's, for findings the two datasets name differently but define alike
ALIASES = {"Effusion": "Pleural Effusion"}
#: findings both datasets name alike (the exact equivalents besides :data:`ALIASES`)
SHARED_FINDINGS = ("Cardiomegaly", "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax")
_CHEXPERT_VALUES = {"1.0": 1.0, "1": 1.0, "0.0": 0.0, "0": 0.0, "-1.0": -1.0, "-1": -1.0, "": np.nan}
_LATERAL = {"LL", "RL", "LAT", "LATERAL"}
_SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val"}
_SPLIT_NAMES.update({"test": "test", "testing": "test"})
NIH_SPLIT_FILES = ("train_val_list.txt", "test_list.txt")
#: what a findings index's ``attrs`` say about how it was read (:meth:`FindingsTable.attrs`)
FINDINGS_ATTRS = (
    "findings",
    "available_findings",
    "csv",
    "missing",
    "missing_examples",
    "views_left_out",
    "ignored_csvs",
    "official_split",
)


def equivalents(name: str) -> tuple[str, ...]:
    """``name`` and its exact equivalent in the other dataset, if any (``"Effusion"`` <-> ``"Pleural
    Effusion"``)."""
    pairs = {**ALIASES, **{v: k for k, v in ALIASES.items()}}
    return (name, pairs[name]) if name in pairs else (name,)


def match_finding(name: str, available) -> str | None:
    """The finding of ``available`` that ``name`` names: itself, or its exact equivalent; None when neither."""
    return next((candidate for candidate in equivalents(name) if candidate in available), None)


def finding_columns(frame: pd.DataFrame) -> list[str]:
    """The index's ``finding:<name>`` columns, in the dataset's order ([] for a class-labelled index)."""
    return [c for c in frame.columns if c.startswith(FINDING_PREFIX)]


def findings_of(frame: pd.DataFrame) -> list[str]:
    """The findings of a findings index, in the dataset's order ([] for a class-labelled index)."""
    return [c[len(FINDING_PREFIX) :] for c in finding_columns(frame)]


def is_findings(frame: pd.DataFrame) -> bool:
    return bool(finding_columns(frame))


def targets(frame: pd.DataFrame, findings) -> np.ndarray:
    """(n, k) float32 training targets of ``findings`` (in that order): 1 positive, 0 negative, NaN left out
    (uncertain or blank under ``ignore``: out of the loss and the metrics for that finding only)."""
    missing = [f for f in findings if FINDING_PREFIX + f not in frame]
    if missing:
        raise DataError(
            f"finding(s) {', '.join(missing)} are not in this dataset (it has {', '.join(findings_of(frame))})"
        )
    return frame[[FINDING_PREFIX + f for f in findings]].to_numpy(dtype=np.float32)


def _columns(path: Path) -> set[str] | None:
    try:
        return set(pd.read_csv(path, nrows=0).columns.str.strip())
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError):
        return None


def csv_format(path: Path) -> str | None:
    """Which findings format a CSV is in, from its header alone: ``nih``, ``chexpert``, ``findings-manifest``,
    or None (a class-labelled manifest, or anything else)."""
    columns = _columns(path)
    if columns is None:
        return None
    if set(NIH_REQUIRED) <= columns:
        return "nih"
    if "Path" in columns and columns & set(CHEXPERT_OBSERVATIONS):
        return "chexpert"
    if {"path", "labels"} <= columns and "label" not in columns:
        return FINDINGS_MANIFEST
    return None


def incomplete(path: Path) -> str | None:
    """What a CSV that looks like a findings format lacks, in words (None when it is complete or looks like
    none): NIH's ``Image Index`` without ``Finding Labels`` or the reverse, CheXpert's ``Path`` and view
    columns without an observation column, a ``labels`` column without ``path``."""
    columns = _columns(path) or set()
    if csv_format(path):
        return None
    nih = [c for c in NIH_REQUIRED if c in columns]
    if nih:
        lacks = [c for c in NIH_REQUIRED if c not in columns]
        return f"{path} looks like NIH's Data_Entry CSV ({', '.join(nih)}) but lacks the column {lacks[0]}"
    if "Path" in columns and columns & {"Frontal/Lateral", "AP/PA"}:
        observations = ", ".join(CHEXPERT_OBSERVATIONS)
        return f"{path} looks like CheXpert's CSV (Path) but has none of its observation columns ({observations})"
    if "labels" in columns and "path" not in columns and "label" not in columns:
        return f"{path} looks like a findings manifest (labels) but lacks the column path"
    return None


@dataclass
class FindingsTable:
    """A findings dataset read from its CSV: rows (``relpath`` below ``root``, ``label``, ``split``,
    ``patient_id``, ``source``, ``view``/``age``/``sex`` where known, and the ``finding:`` columns) and what
    reading it left out."""

    root: Path
    layout: str
    csv: Path
    rows: pd.DataFrame
    findings: tuple[str, ...]
    #: every finding the dataset names (``findings`` is those kept)
    available: tuple[str, ...] = ()
    #: rows whose image is not on disk (a partial download), with a few of their names
    missing: int = 0
    missing_examples: list[str] = field(default_factory=list)
    #: rows left out by ``views``
    views_left_out: int = 0
    #: other CSVs of a recognised format found beside the one read (a folder holding two of NIH's CSVs)
    ignored_csvs: list[str] = field(default_factory=list)
    #: where the test split came from ("" when the dataset has none of its own)
    official_split: str = ""

    def attrs(self) -> dict:  # keys: FINDINGS_ATTRS
        """What the index carries in ``attrs`` about how it was read."""
        return {
            "findings": list(self.findings),
            "available_findings": list(self.available),
            "csv": str(self.csv),
            "missing": int(self.missing),
            "missing_examples": list(self.missing_examples),
            "views_left_out": int(self.views_left_out),
            "ignored_csvs": list(self.ignored_csvs),
            "official_split": self.official_split,
        }


def findings_csv(folder: Path) -> tuple[Path, str, list[str]] | None:
    """The findings CSV at the top of ``folder`` (format, and other recognised CSVs left aside), or None.

    With several of one format, CheXpert's ``train.csv`` is read (its ``valid.csv`` joins as the test split);
    otherwise the last by name (NIH's ``Data_Entry_2017_v2020.csv`` before ``Data_Entry_2017.csv``)."""
    found = [(p, csv_format(p)) for p in sorted(folder.glob("*.csv")) if p.is_file() and not p.name.startswith(".")]
    found = [(p, fmt) for p, fmt in found if fmt]
    if not found:
        return None
    chosen = next(((p, fmt) for p, fmt in found if fmt == "chexpert" and p.name.lower() == "train.csv"), found[-1])
    companion = _chexpert_companion(chosen[0]) if chosen[1] == "chexpert" else None
    others = [p.name for p, _ in found if p != chosen[0] and p != companion]
    return chosen[0], chosen[1], others


def locate(data: Path, labels_column: str = "") -> tuple[Path, str, list[str]] | None:
    """The findings CSV that ``data`` (a CSV, or a folder) holds, its format and the recognised CSVs left
    aside; None when ``data`` is not a findings dataset. Reads CSV headers only. A CSV that looks like a
    findings format but lacks a column it needs (passed directly, or the only such CSV in the folder) raises
    :class:`DataError` naming the column. With ``labels_column`` the manifest (``data``, or its
    ``manifest.csv``) is read as a findings manifest with its findings in that column."""
    if labels_column:
        return _labels_column_manifest(data, labels_column)
    if data.is_file():
        if data.suffix.lower() != ".csv":
            return None
        fmt = csv_format(data)
        if fmt is None and incomplete(data):
            raise DataError(incomplete(data))
        return (data.resolve(), fmt, []) if fmt else None
    if not data.is_dir():
        return None
    found = findings_csv(data.resolve())
    if found is None:
        for csv in sorted(data.glob("*.csv")):
            if incomplete(csv):
                raise DataError(incomplete(csv))
    return found


def _labels_column_manifest(data: Path, column: str) -> tuple[Path, str, list[str]]:
    csv = data if data.is_file() else data / "manifest.csv"
    if not csv.is_file() or csv.suffix.lower() != ".csv":
        raise DataError(f"--labels-column {column} reads a CSV manifest; {data} is not one and holds no manifest.csv")
    columns = _columns(csv) or set()
    lacks = [c for c in ("path", column) if c not in columns]
    if lacks:
        raise DataError(f"{csv} has no column {lacks[0]} (its columns: {', '.join(sorted(columns))})")
    return csv.resolve(), FINDINGS_MANIFEST, []


def _chexpert_companion(csv: Path) -> Path | None:
    """CheXpert's ``valid.csv`` beside its ``train.csv`` (the test split), when present and in the format."""
    if csv.name.lower() == "valid.csv":
        return None
    valid = csv.with_name("valid.csv")
    return valid if valid.is_file() and csv_format(valid) == "chexpert" else None


def _read(csv: Path) -> pd.DataFrame:
    try:
        table = pd.read_csv(csv, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {csv}: {exc}") from None
    table.columns = table.columns.str.strip()
    if table.empty:
        raise DataError(f"{csv} lists no images")
    return table


def _line(i: int) -> int:
    """The CSV line of data row ``i`` (the header is line 1)."""
    return int(i) + 2


def _findings_matrix(text: pd.Series, csv: Path, paths: pd.Series, order: tuple[str, ...] = ()):
    """``|``-separated findings per row -> (names, 0/1 matrix): ``order``'s names first (those present), then
    the rest sorted; "No Finding" is no column. Each distinct text is parsed once (NIH: 112,120 rows, about 800
    distinct texts). A row with no text at all raises :class:`DataError` naming its line."""
    codes, texts = pd.factorize(text.astype(str), sort=False)
    parsed = [[n.strip() for n in t.split(SEPARATOR) if n.strip()] for t in texts]
    empty = [k for k, names in enumerate(parsed) if not names]
    if empty:
        i = int(np.flatnonzero(codes == empty[0])[0])
        raise DataError(f"{csv}, line {_line(i)} ({paths.iloc[i]}): no findings given (write '{NO_FINDING}' for none)")
    parsed = [[n for n in names if n != NO_FINDING] for names in parsed]
    seen = sorted({n for names in parsed for n in names})
    names = tuple([n for n in order if n in seen] + [n for n in seen if n not in order])
    column = {n: j for j, n in enumerate(names)}
    distinct = np.zeros((len(parsed), len(names)), dtype=np.float32)
    for k, found in enumerate(parsed):
        distinct[k, [column[n] for n in found]] = 1.0
    return names, distinct[codes]


def _image_files(folder: Path) -> dict[str, str]:
    """Every image file under ``folder`` by its name -> its path relative to ``folder`` (first one wins)."""
    found: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel = os.path.relpath(dirpath, folder)
        for name in filenames:
            if os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS and name not in found:
                found[name] = name if rel == "." else f"{rel}/{name}".replace(os.sep, "/")
    return found


def _nih_splits(csv: Path, names: pd.Series) -> tuple[pd.Series, str]:
    """NIH's official split from ``train_val_list.txt`` / ``test_list.txt`` beside the CSV: ``test`` for the
    test list, ``train`` for the other (validation is carved from it, by patient); "" where no list says."""
    lists = [csv.with_name(n) for n in NIH_SPLIT_FILES]
    if not lists[1].is_file():
        return pd.Series("", index=names.index), ""
    split = pd.Series("", index=names.index)
    for path, value in zip(lists, ("train", "test")):
        if path.is_file():
            listed = {line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()}
            split[names.isin(listed)] = value
    if not lists[0].is_file():
        split[split == ""] = "train"
    return split, f"NIH's {' and '.join(p.name for p in lists if p.is_file())}"


def _read_nih(csv: Path) -> tuple[pd.DataFrame, tuple[str, ...], str]:
    table = _read(csv)
    names = table["Image Index"].str.strip()
    bad = names == ""
    if bad.any():
        raise DataError(f"{csv}, line {_line(np.flatnonzero(bad)[0])}: empty Image Index")
    findings, values = _findings_matrix(table["Finding Labels"], csv, names, NIH_FINDINGS)
    patients = table["Patient ID"].str.strip() if "Patient ID" in table else names.map(patient_from_filename)
    split, official = _nih_splits(csv, names)
    rows = pd.DataFrame({"name": names, "split": split, "patient_id": patients, "source": ""})
    if "View Position" in table:
        rows["view"] = table["View Position"].str.strip().str.upper()
    if "Patient Age" in table:
        rows["age"] = pd.to_numeric(table["Patient Age"].str.strip().str.rstrip("Yy"), errors="coerce")
    if "Patient Gender" in table:
        rows["sex"] = table["Patient Gender"].str.strip().str.upper()
    return _with_values(rows, findings, values), findings, official


def _chexpert_values(table: pd.DataFrame, csv: Path, observations: list[str]) -> np.ndarray:
    """The raw CheXpert values: 1, 0, -1 (uncertain) or NaN (blank); a DataError names the first other value."""
    values = np.empty((len(table), len(observations)), dtype=np.float32)
    for j, name in enumerate(observations):
        column = table[name].str.strip()
        mapped = column.map(_CHEXPERT_VALUES)
        bad = mapped.isna() & (column != "")
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise DataError(
                f"{csv}, line {_line(i)} ({table['Path'].iloc[i]}): {name} is {column.iloc[i]!r}; "
                "CheXpert's values are 1.0, 0.0, -1.0 (uncertain) or blank"
            )
        values[:, j] = mapped.to_numpy(dtype=np.float32)
    return values


def _read_chexpert(csv: Path) -> tuple[pd.DataFrame, tuple[str, ...], str]:
    parts, official = [], ""
    companion = _chexpert_companion(csv)
    for path, split in ((csv, "train" if companion else ""), (companion, "test")):
        if path is None:
            continue
        table = _read(path)
        observations = [c for c in CHEXPERT_OBSERVATIONS if c in table.columns and c != NO_FINDING]
        values = _chexpert_values(table, path, observations)
        full = table["Path"].str.strip().map(lambda p, base=path.parent.parent: os.path.normpath(base / p))
        rows = pd.DataFrame({"full": full, "split": split, "source": ""})
        rows["patient_id"] = table["Path"].str.extract(CHEXPERT_PATIENT, expand=False).fillna("")
        frontal = table.get("Frontal/Lateral", pd.Series("", index=table.index)).str.strip().str.lower()
        ap_pa = table.get("AP/PA", pd.Series("", index=table.index)).str.strip().str.upper()
        if "Frontal/Lateral" in table or "AP/PA" in table:
            rows["view"] = np.where(frontal == "lateral", "LATERAL", ap_pa.where(ap_pa != "", "FRONTAL"))
        if "Age" in table:
            rows["age"] = pd.to_numeric(table["Age"], errors="coerce")
        if "Sex" in table:
            rows["sex"] = table["Sex"].str.strip().str.upper().str[:1]
        parts.append(_with_values(rows, tuple(observations), values))
        official = f"CheXpert's {companion.name}" if companion else ""
    frame = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
    findings = tuple(c[len(FINDING_PREFIX) :] for c in finding_columns(frame))
    return frame, findings, official


def _read_manifest(csv: Path, column: str = "labels") -> tuple[pd.DataFrame, tuple[str, ...], str]:
    table = _read(csv)
    paths = table["path"].str.strip()
    labels = table[column].where(table[column].str.strip() != "", NO_FINDING)
    findings, values = _findings_matrix(labels, csv, paths)
    if not findings:
        raise DataError(f"{csv}: no image has a finding (every row is '{NO_FINDING}'): nothing to learn")
    split = table.get("split", pd.Series("", index=table.index)).str.strip().str.lower()
    unknown = ~split.isin([*_SPLIT_NAMES, ""])
    if unknown.any():
        i = int(np.flatnonzero(unknown.to_numpy())[0])
        raise DataError(f"{csv}, line {_line(i)} ({paths.iloc[i]}): unknown split {split.iloc[i]!r} (train, val, test)")
    patients = table["patient_id"].str.strip() if "patient_id" in table else pd.Series("", index=table.index)
    patients = patients.where(patients != "", paths.map(lambda p: patient_from_filename(Path(p).name)))
    rows = pd.DataFrame(
        {
            "full": paths.map(lambda p: os.path.normpath(Path(p) if Path(p).is_absolute() else csv.parent / p)),
            "split": split.map(lambda s: _SPLIT_NAMES.get(s, "")),
            "patient_id": patients,
            "source": table["source"].str.strip() if "source" in table else "",
        }
    )
    if "view" in table:
        rows["view"] = table["view"].str.strip().str.upper()
    return _with_values(rows, findings, values), findings, ""


def _with_values(rows: pd.DataFrame, findings: tuple[str, ...], values: np.ndarray) -> pd.DataFrame:
    columns = pd.DataFrame(values, columns=[FINDING_PREFIX + f for f in findings], index=rows.index)
    return pd.concat([rows, columns], axis=1)


def apply_policies(raw: np.ndarray, options: FindingsOptions) -> np.ndarray:
    """CheXpert's raw values (1, 0, -1 uncertain, NaN blank) under the options: uncertain ``ignore`` -> NaN,
    ``ones`` -> 1, ``zeros`` -> 0; blank ``negative`` -> 0, ``ignore`` -> NaN. 1 and 0 are kept."""
    out = raw.astype(np.float32, copy=True)
    blank = np.isnan(raw)
    out[raw == -1] = {"ignore": np.nan, "ones": 1.0, "zeros": 0.0}[options.uncertain]
    out[blank] = 0.0 if options.blank == "negative" else np.nan
    return out


def view_kept(view: pd.Series, views: str) -> pd.Series:
    """Which films ``views`` keeps: ``frontal`` (anything but a lateral), ``pa``, ``ap`` (AP, AP supine...)."""
    view = view.fillna("").astype(str).str.strip().str.upper()
    if views == "all":
        return pd.Series(True, index=view.index)
    if views == "frontal":
        return (view != "") & ~view.isin(_LATERAL)
    if views == "pa":
        return view == "PA"
    return view.str.startswith("AP")


def require_view_column(has_view: bool, views: str, where) -> None:
    """A DataError when ``views`` asks for a view the data cannot tell (no view column)."""
    if views != "all" and not has_view:
        raise DataError(
            f"--views {views} needs a view column (NIH's View Position, CheXpert's Frontal/Lateral and AP/PA, a "
            f"manifest's view); {where} has none: use --views all"
        )


def _keep_findings(findings: tuple[str, ...], wanted: tuple[str, ...], csv: Path) -> tuple[str, ...]:
    if not wanted:
        return findings
    kept = []
    for name in wanted:
        match = match_finding(name, findings)
        if match is None:
            raise DataError(f"--findings: {csv.name} has no finding named {name!r}; it has: {', '.join(findings)}")
        if match not in kept:
            kept.append(match)
    return tuple(kept)


def read_findings(csv: Path, fmt: str, options: FindingsOptions | None = None, others=()) -> FindingsTable:
    """Read a findings CSV in format ``fmt`` under ``options``: the labels after the uncertain and blank
    policies, the findings kept, the views kept, rows whose image is absent skipped and counted, the official
    split where the dataset has one. Raises :class:`DataError` naming the file, the line or the name."""
    options = (options or FindingsOptions()).validate()
    csv = csv.resolve()
    root = csv.parent
    if fmt == FINDINGS_MANIFEST:
        rows, findings, official = _read_manifest(csv, options.labels_column or "labels")
    else:
        rows, findings, official = {"nih": _read_nih, "chexpert": _read_chexpert}[fmt](csv)
    kept = _keep_findings(findings, options.findings, csv)
    columns = [FINDING_PREFIX + f for f in kept]
    values = rows[columns].to_numpy(dtype=np.float32)
    if fmt == "chexpert":
        values = apply_policies(values, options)
    rows = rows.drop(columns=[c for c in finding_columns(rows) if c not in columns])
    rows[columns] = values
    require_view_column("view" in rows, options.views, csv)
    keep = view_kept(rows["view"], options.views) if "view" in rows else pd.Series(True, index=rows.index)
    views_left_out = int((~keep).sum())
    rows = rows[keep.to_numpy()].reset_index(drop=True)
    if fmt == "nih":
        names = rows.pop("name")
        rows["relpath"] = names.map(_image_files(root))
        absent = rows["relpath"].isna()
        examples = names[absent].head(3).tolist()
    else:
        full = rows.pop("full")
        absent = ~full.map(os.path.isfile)
        if fmt == FINDINGS_MANIFEST and absent.any():
            raise DataError(
                f"manifest {csv}: {int(absent.sum())} listed file(s) do not exist, first: {full[absent].iloc[0]}"
            )
        rows["relpath"] = full.map(lambda p: os.path.relpath(p, root).replace(os.sep, "/"))
        examples = rows.loc[absent, "relpath"].head(3).tolist()
    missing = int(absent.sum())
    rows = rows[~absent.to_numpy()].reset_index(drop=True)
    if rows.empty:
        why = f"none of its {missing} images is on disk" if missing else "every image was left out by --views"
        raise DataError(f"{csv}: {why} (looked under {root})")
    rows["label"] = findings_sets(rows[columns].to_numpy(), kept)
    return FindingsTable(
        root=root,
        layout=fmt,
        csv=csv,
        rows=rows,
        findings=kept,
        available=findings,
        missing=missing,
        missing_examples=examples,
        views_left_out=views_left_out,
        ignored_csvs=list(others),
        official_split=official,
    )


def findings_sets(values: np.ndarray, findings) -> list[str]:
    """Each image's findings set: its positive findings joined by ``|`` in the dataset's order, or
    :data:`NO_FINDING` when none is positive (its ``label`` in the index)."""
    positive = np.nan_to_num(values, nan=0.0) > 0.5
    names = np.asarray(findings, dtype=object)
    return [SEPARATOR.join(names[row]) if row.any() else NO_FINDING for row in positive]
