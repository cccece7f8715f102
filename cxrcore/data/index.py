"""Dataset layouts and the image index.

:func:`build_index` turns a folder (or a CSV manifest) into a pandas DataFrame with
one row per image: ``path, label, split, patient_id, width, height, mode, bytes``.
Sizes and modes come from image headers (no pixel decoding). The index is cached
on disk per dataset and only files whose size or modification time changed are
read again, so re-opening a 100k-image dataset is a directory walk.

Supported layouts (detected in this order):

``dataset-list``       a JSON file naming several datasets (any of these layouts), recognised by its content:
                       ``{"datasets": [{"path": "...", "name": "...", "labels": {"old": "new" or null},
                       "weight": 1.0}, ...]}`` (see :func:`read_dataset_list`)
``manifest``           a CSV file, or ``ROOT/manifest.csv``: ``path,label[,patient_id][,split]``
``split-folders``      ``ROOT/{train,val,test}/<class>/*`` (e.g. the pediatric "chest_xray" set)
``covid-radiography``  ``ROOT/<Class>/images/*.png`` with ``masks/`` ignored
``class-folders``      ``ROOT/<class>/*.png|jpg|jpeg|dcm`` (sub-folders are searched too)
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..config import FindingsOptions
from ..errors import DataError, ImageDecodeError
from .findings import (
    FINDINGS_ATTRS,
    FORMATS,
    finding_columns,
    is_findings,
    locate,
    read_findings,
    require_view_column,
    view_kept,
)
from .findings_summary import findings_summary
from .formats import IMAGE_EXTENSIONS
from .io import read_header
from .patients import patient_from_filename, patients

INDEX_COLUMNS = ["path", "label", "split", "patient_id", "source", "weight", "width", "height", "mode", "bytes"]
#: manifest columns that name where an image came from (a hospital, a site, a public set); the
#: first one present becomes the index's ``source`` (empty when none is known)
SOURCE_COLUMNS = ("source", "source_repo", "hospital", "site")
SPLITS = ("train", "val", "test")
_SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}
_IGNORED_DIRS = {"masks", "mask", "__macosx"}
LAYOUTS_HELP = (
    "class folders (ROOT/<class>/*.png), split folders (ROOT/train|val|test/<class>/...), "
    "COVID-19 Radiography (ROOT/<Class>/images/*.png), a CSV manifest (path,label[,patient_id][,split]) "
    'or a JSON dataset list ({"datasets": [{"path": ..., "name": ..., "labels": {...}, "weight": 1.0}]})'
)
#: the keys a dataset list's entry may have (``path`` is required)
LIST_KEYS = ("path", "name", "labels", "weight")

Progress = Callable[[int, int], None] | None


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def _subdirs(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name.lower() not in _IGNORED_DIRS
    )


def _images_under(folder: Path) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d.lower() not in _IGNORED_DIRS)
        found.extend(Path(dirpath) / f for f in sorted(filenames) if _is_image(Path(f)))
    return found


def _class_folder_rows(folder: Path, root: Path, split: str) -> list[dict]:
    classes = _subdirs(folder)
    if not classes:
        raise DataError(f"{folder} has no class folders; expected {LAYOUTS_HELP}")
    rows = []
    for class_dir in classes:
        images = _images_under(class_dir)
        if not images:
            raise DataError(f"class folder {class_dir} has no images (PNG, JPEG or DICOM)")
        rows.extend(
            {
                "relpath": p.relative_to(root).as_posix(),
                "label": class_dir.name,
                "split": split,
                "patient_id": patient_from_filename(p.name),
            }
            for p in images
        )
    return rows


def _manifest_rows(csv_path: Path) -> tuple[Path, list[dict]]:
    root = csv_path.parent
    try:
        table = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read manifest {csv_path}: {exc}") from None
    missing = {"path", "label"} - set(table.columns)
    if missing:
        raise DataError(
            f"manifest {csv_path} lacks column(s) {', '.join(sorted(missing))}; "
            "expected path,label[,patient_id][,split]"
        )
    if table.empty:
        raise DataError(f"manifest {csv_path} lists no images")
    rows = []
    source_column = next((c for c in SOURCE_COLUMNS if c in table.columns), None)
    for rec in table.to_dict("records"):
        path = Path(rec["path"])
        full = path if path.is_absolute() else root / path
        if not rec["label"].strip():
            raise DataError(f"manifest {csv_path}: image {rec['path']} has an empty label")
        split_raw = rec.get("split", "").strip().lower()
        if split_raw and split_raw not in _SPLIT_ALIASES:
            raise DataError(
                f"manifest {csv_path}: unknown split '{rec['split']}' for {rec['path']} (use train, val or test)"
            )
        patient = rec.get("patient_id", "").strip() or patient_from_filename(path.name)
        rows.append(
            {
                "relpath": os.path.relpath(full, root) if path.is_absolute() else path.as_posix(),
                "label": rec["label"].strip(),
                "split": _SPLIT_ALIASES.get(split_raw, ""),
                "patient_id": patient,
                "source": rec[source_column].strip() if source_column else "",
                **({"view": rec["view"]} if "view" in rec else {}),
            }
        )
    absent = [r["relpath"] for r in rows if not (root / r["relpath"]).is_file()]
    if absent:
        raise DataError(f"manifest {csv_path}: {len(absent)} listed file(s) do not exist, first: {root / absent[0]}")
    return root, rows


@dataclass(frozen=True)
class ListedDataset:
    """One entry of a dataset list: where it is, the source its images carry (unless it names its own per
    image), how its labels map to the list's classes (``None``: left out) and its weight."""

    path: Path
    name: str
    labels: dict[str, str | None]
    weight: float


def is_dataset_list(path: Path) -> bool:
    """Whether ``path`` is a file holding a dataset list: a JSON object (its content decides, not its name; one
    that is not a list of datasets is refused by :func:`read_dataset_list`, naming what it lacks)."""
    if not path.is_file():
        return False
    try:
        with open(path, "rb") as fh:
            head = fh.read(4096).lstrip()
    except OSError:
        return False
    return head.startswith(b"{")


def read_dataset_list(path: str | os.PathLike) -> list[ListedDataset]:
    """The entries of a dataset list file, checked: each a JSON object with a ``path`` (relative to the
    list's folder) that exists, an optional ``name`` (default: the dataset's folder or file name),
    ``labels`` (label -> class, or null to leave the label out) and ``weight`` (a positive number, default
    1). Raises :class:`DataError` naming the file and the entry for anything else."""
    path = Path(path)
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"cannot read dataset list {path}: {exc}") from None
    entries = found.get("datasets") if isinstance(found, dict) else None
    if not isinstance(entries, list) or not entries:
        raise DataError(
            f'dataset list {path}: expected {{"datasets": [{{"path": ...}}, ...]}} with at least one dataset'
        )
    unknown_top = sorted(set(found) - {"datasets"})
    if unknown_top:
        raise DataError(f"dataset list {path}: unknown key(s) {', '.join(unknown_top)} (only datasets)")
    listed, seen_paths, seen_names = [], set(), set()
    for i, entry in enumerate(entries):
        where = f"dataset list {path}, datasets[{i}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str) or not entry["path"].strip():
            raise DataError(f"{where}: each dataset needs a path (a string)")
        unknown = sorted(set(entry) - set(LIST_KEYS))
        if unknown:
            raise DataError(f"{where}: unknown key(s) {', '.join(unknown)} (use {', '.join(LIST_KEYS)})")
        target = Path(entry["path"]).expanduser()
        target = (target if target.is_absolute() else path.parent / target).resolve()
        if not target.exists():
            raise DataError(f"{where}: {entry['path']} does not exist (looked for {target})")
        if is_dataset_list(target):
            raise DataError(f"{where}: {entry['path']} is itself a dataset list; list its datasets here instead")
        if target in seen_paths:
            raise DataError(f"{where}: {entry['path']} is listed twice")
        name = entry.get("name", target.stem if target.is_file() else target.name)
        if not isinstance(name, str) or not name.strip():
            raise DataError(f"{where}: name must be a non-empty string, got {name!r}")
        if name.strip() in seen_names:
            raise DataError(f"{where}: the name {name.strip()!r} is used twice")
        labels = entry.get("labels", {})
        if not isinstance(labels, dict) or not all(
            isinstance(k, str) and (v is None or (isinstance(v, str) and v.strip())) for k, v in labels.items()
        ):
            raise DataError(f"{where}: labels must map each label to a class name or null, got {labels!r}")
        weight = entry.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 < weight < float("inf"):
            raise DataError(f"{where}: weight must be a positive number, got {weight!r}")
        seen_paths.add(target)
        seen_names.add(name.strip())
        listed.append(
            ListedDataset(
                target, name.strip(), {k: (v.strip() if v else None) for k, v in labels.items()}, float(weight)
            )
        )
    return listed


def labels_of(data: str | os.PathLike) -> list[str]:
    """The labels a dataset's layout gives its images (no image is opened), sorted; a findings dataset (which
    a dataset list cannot hold) raises :class:`DataError`."""
    found = scan(data)
    if found.layout in FORMATS:
        raise DataError(_findings_in_list(str(data), found.layout))
    return sorted(set(found.rows["label"]))


def _findings_in_list(name: str, layout: str) -> str:
    return f"{name} is a findings dataset ({layout}); a dataset list combines class-labelled datasets"


def save_dataset_list(path: str | os.PathLike, datasets: list[dict]) -> Path:
    """Write a dataset list to ``path`` (``.json``): ``datasets`` as :func:`read_dataset_list` takes them
    (``path``, ``name``, ``labels``, ``weight``), each path written relative to the list's folder when it lies
    below it, else absolute. The file is read back and checked before it replaces anything: a bad entry
    raises :class:`DataError` naming it and nothing is written."""
    path = Path(path).expanduser()
    if path.suffix.lower() != ".json":
        raise DataError(f"a dataset list is saved as a .json file, not {path.name}")
    folder = path.parent.resolve()
    entries = []
    for entry in datasets:
        target = Path(entry["path"]).expanduser().resolve()
        relative = target.is_relative_to(folder)
        entries.append({**entry, "path": target.relative_to(folder).as_posix() if relative else str(target)})
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps({"datasets": entries}, indent=2) + "\n", encoding="utf-8")
    try:
        read_dataset_list(tmp)
        _dataset_list_rows(tmp)  # every path, label map and name checked as training will read them
    except DataError as exc:
        tmp.unlink(missing_ok=True)
        raise DataError(str(exc).replace(str(tmp), str(path))) from None
    os.replace(tmp, path)
    return path


def _dataset_list_rows(path: Path) -> tuple[Path, list[dict]]:
    """Every listed dataset's rows, each with its source (the dataset's own per image, else its name), its
    label mapped, its weight and its path made absolute; patients are kept apart per dataset."""
    rows = []
    for i, listed in enumerate(read_dataset_list(path)):
        root, layout, found = scan_layout(listed.path)
        if layout in FORMATS:
            raise DataError(f"dataset list {path}, datasets[{i}]: {_findings_in_list(listed.name, layout)}")
        present = {r["label"] for r in found}
        unknown = sorted(set(listed.labels) - present)
        if unknown:
            raise DataError(
                f"dataset list {path}, datasets[{i}] ({listed.name}): labels maps {', '.join(map(repr, unknown))}, "
                f"which it does not have; its labels: {', '.join(sorted(present))}"
            )
        kept = 0
        for r in found:
            label = listed.labels.get(r["label"], r["label"])
            if label is None:
                continue
            kept += 1
            patient = r.get("patient_id", "")
            rows.append(
                {
                    "relpath": os.path.normpath(root / r["relpath"]),
                    "label": label,
                    "split": r.get("split", ""),
                    "patient_id": f"{listed.name}/{patient}" if patient else "",
                    "source": r.get("source", "") or listed.name,
                    "weight": listed.weight,
                }
            )
        if not kept:
            raise DataError(f"dataset list {path}, datasets[{i}] ({listed.name}): every label is mapped to null")
    return path.parent, rows


@dataclass
class Scan:
    """What a dataset's layout says before any image is opened: its root, its layout's name, one row per
    image (``relpath`` below ``root``, ``label``, ``split``, ``patient_id``, ``source``, ``weight`` where a
    dataset list gives one; a findings dataset adds ``view``/``age``/``sex`` where known and its
    ``finding:`` columns) and, for a findings dataset, how it was read (:meth:`FindingsTable.attrs`)."""

    root: Path
    layout: str
    rows: pd.DataFrame
    attrs: dict = field(default_factory=dict)


def _class_options(options: FindingsOptions, rows: list[dict], where, has_view: bool) -> list[dict]:
    """A class-labelled dataset under findings options: the views kept where it has a view column; label
    policies and ``--findings`` refused (they apply to findings datasets)."""
    if options.findings or options.uncertain != "ignore" or options.blank != "negative":
        raise DataError(
            f"{where} is a class-labelled dataset: --findings, --uncertain and --blank apply to findings datasets "
            "(NIH ChestX-ray14, CheXpert, a path,labels manifest)"
        )
    require_view_column(has_view, options.views, where)
    if options.views == "all":
        return rows
    keep = view_kept(pd.Series([r.get("view", "") for r in rows], dtype=str), options.views)
    kept = [r for r, k in zip(rows, keep) if k]
    if not kept:
        raise DataError(f"{where}: no image is left by --views {options.views}")
    return kept


def scan(data: str | os.PathLike, options: FindingsOptions | None = None) -> Scan:
    """Detect the layout of ``data`` and list its images (no image is opened): a findings CSV first
    (:mod:`cxrcore.data.findings`, recognised by its columns, passed directly or at the top of the folder),
    then the class-labelled layouts. ``options`` (uncertain and blank labels, the findings and views kept)
    apply to findings datasets; of them, a class-labelled dataset takes only ``views``, and only with a view
    column."""
    options = (options or FindingsOptions()).validate()
    data = Path(data).expanduser()
    if not data.exists():
        raise DataError(f"dataset not found: {data}")
    if data.is_file() and is_dataset_list(data):
        root, rows = _dataset_list_rows(data.resolve())
        return Scan(root, "dataset-list", pd.DataFrame(_class_options(options, rows, data, False)), {})
    if data.is_file() and data.suffix.lower() != ".csv":
        raise DataError(f"{data} is a file; give a dataset folder, a CSV manifest or a JSON dataset list")
    found = locate(data, options.labels_column)
    if found:
        table = read_findings(found[0], found[1], options, found[2])
        return Scan(table.root, table.layout, table.rows, table.attrs())
    root, layout, rows = _class_layout(data)
    has_view = layout == "manifest" and any("view" in r for r in rows[:1])
    return Scan(root, layout, pd.DataFrame(_class_options(options, rows, data, has_view)), {})


def _class_layout(data: Path) -> tuple[Path, str, list[dict]]:
    if data.is_file():
        root, rows = _manifest_rows(data.resolve())
        return root, "manifest", rows
    root = data.resolve()
    if (root / "manifest.csv").is_file():
        manifest_root, rows = _manifest_rows(root / "manifest.csv")
        return manifest_root, "manifest", rows
    subdirs = _subdirs(root)
    split_dirs = {d: _SPLIT_ALIASES[d.name.lower()] for d in subdirs if d.name.lower() in _SPLIT_ALIASES}
    if "train" in split_dirs.values() and len(split_dirs) >= 2:
        rows = []
        for folder, split in split_dirs.items():
            rows.extend(_class_folder_rows(folder, root, split))
        return root, "split-folders", rows
    if not subdirs:
        raise DataError(f"{root} has no class folders; expected {LAYOUTS_HELP}")
    layout = "covid-radiography" if any((d / "images").is_dir() for d in subdirs) else "class-folders"
    if layout == "covid-radiography":
        rows = []
        for class_dir in subdirs:
            folder = class_dir / "images" if (class_dir / "images").is_dir() else class_dir
            images = _images_under(folder)
            if not images:
                raise DataError(f"class folder {class_dir} has no images (PNG, JPEG or DICOM)")
            rows.extend(
                {
                    "relpath": p.relative_to(root).as_posix(),
                    "label": class_dir.name,
                    "split": "",
                    "patient_id": patient_from_filename(p.name),
                }
                for p in images
            )
        return root, layout, rows
    return root, layout, _class_folder_rows(root, root, "")


def scan_layout(data: str | os.PathLike, options: FindingsOptions | None = None) -> tuple[Path, str, list[dict]]:
    """Detect the layout of ``data`` and list its images (no image is opened): :func:`scan` as
    ``(root, layout, rows)``, each row a dict with relpath, label, split, patient_id (and more where known)."""
    found = scan(data, options)
    return found.root, found.layout, found.rows.to_dict("records")


def cache_dir() -> Path:
    """Where indexes are cached: ``$CXRCORE_CACHE`` or ``~/.cache/cxrcore``."""
    return Path(os.environ.get("CXRCORE_CACHE") or Path.home() / ".cache" / "cxrcore")


def _cache_file(root: Path) -> Path:
    key = hashlib.sha1(str(root).encode()).hexdigest()[:16]
    return cache_dir() / "index" / f"{key}.csv"


def _load_cache(path: Path) -> dict[str, dict]:
    try:
        table = pd.read_csv(path, dtype={"relpath": str, "mode": str}, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, ValueError):
        return {}
    if not {"relpath", "bytes", "mtime_ns", "width", "height", "mode"} <= set(table.columns):
        return {}  # foreign or damaged cache file: read every header again
    numbers = table[["bytes", "mtime_ns", "width", "height"]].apply(pd.to_numeric, errors="coerce")
    good = numbers.notna().all(axis=1).to_numpy()  # a damaged row: that file's header is read again
    numbers = numbers[good].astype("int64")
    return {
        relpath: {"bytes": int(b), "mtime_ns": int(m), "width": int(w), "height": int(h), "mode": mode}
        for relpath, b, m, w, h, mode in zip(
            table["relpath"][good],
            numbers["bytes"],
            numbers["mtime_ns"],
            numbers["width"],
            numbers["height"],
            table["mode"][good],
        )
    }


def _save_cache(path: Path, relpaths: list[str], records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    table = pd.DataFrame.from_records(records, columns=["bytes", "mtime_ns", "width", "height", "mode"])
    table.insert(0, "relpath", relpaths)
    table.to_csv(tmp, index=False)
    os.replace(tmp, path)


#: columns a findings index carries beyond :data:`INDEX_COLUMNS` where its CSV has them
FINDINGS_EXTRA_COLUMNS = ("view", "age", "sex")


def build_index(
    data: str | os.PathLike,
    *,
    progress: Progress = None,
    use_cache: bool = True,
    options: FindingsOptions | None = None,
) -> pd.DataFrame:
    """Index a dataset: one row per image with label, split, patient and header facts.

    ``progress(done, total)`` is called while headers are read. Unreadable images
    raise :class:`DataError` naming the first bad file and how many there are.
    ``df.attrs`` holds ``root`` and ``layout``; a findings dataset's index (read under ``options``) adds
    ``view``/``age``/``sex`` where known and one ``finding:<name>`` column per finding, and its ``attrs``
    say how it was read (``findings``, ``missing`` images, ``views_left_out``, ``official_split``...).
    """
    found = scan(data, options)
    root, rows = found.root, found.rows
    cache_path = _cache_file(root)
    cached = _load_cache(cache_path) if use_cache else {}
    records, bad, changed = [], [], False
    relpaths = rows["relpath"].tolist()
    total = len(relpaths)
    base = str(root)
    for i, relpath in enumerate(relpaths):
        full = os.path.join(base, relpath)
        st = os.stat(full)
        hit = cached.get(relpath)
        if hit and hit["bytes"] == st.st_size and hit["mtime_ns"] == st.st_mtime_ns:
            record = hit
        else:
            changed = True
            try:
                header = read_header(full)
            except ImageDecodeError as exc:
                bad.append(exc)
                header = {"width": 0, "height": 0, "mode": ""}
            record = {"bytes": st.st_size, "mtime_ns": st.st_mtime_ns, **header}
        records.append(record)
        if progress is not None and (i + 1 == total or (i + 1) % 50 == 0):
            progress(i + 1, total)
    if bad:
        more = f" (and {len(bad) - 1} more unreadable image(s))" if len(bad) > 1 else ""
        raise DataError(f"{bad[0]}{more}")
    if use_cache and (changed or len(cached) != len(records)):
        try:
            _save_cache(cache_path, relpaths, records)
        except OSError:
            pass  # a read-only cache directory only costs speed
    facts = pd.DataFrame.from_records(records, columns=["width", "height", "mode", "bytes"])
    frame = pd.DataFrame(
        {
            "path": [os.path.join(base, r) for r in relpaths],
            "label": rows["label"].to_numpy(),
            "split": rows["split"].to_numpy(),
            "patient_id": rows["patient_id"].to_numpy(),
            "source": rows["source"].fillna("").to_numpy() if "source" in rows else "",
            "weight": rows["weight"].astype(float).to_numpy() if "weight" in rows else 1.0,
            "width": facts["width"].astype(int).to_numpy(),
            "height": facts["height"].astype(int).to_numpy(),
            "mode": facts["mode"].to_numpy(),
            "bytes": facts["bytes"].astype(int).to_numpy(),
        },
        columns=INDEX_COLUMNS,
    )
    if found.layout in FORMATS:
        extra = [c for c in FINDINGS_EXTRA_COLUMNS if c in rows]
        frame = pd.concat([frame, rows[extra + finding_columns(rows)].reset_index(drop=True)], axis=1)
    frame.attrs.update(root=str(root), layout=found.layout, **found.attrs)
    return frame


def summarize(index: pd.DataFrame) -> dict:
    """The index in numbers, for the CLI and the dashboard: images, patients, pixel modes and how it was
    read; per class and split for a class-labelled dataset (``task`` ``classes``); for a findings dataset
    (``task`` ``findings``) :func:`cxrcore.data.findings_summary.findings_summary` on the index's own splits, the
    images skipped as absent and the films left out by view."""
    common = {
        "root": index.attrs.get("root", ""),
        "layout": index.attrs.get("layout", ""),
        "images": int(len(index)),
        "patients": int(patients(index).loc[lambda p: p != ""].nunique()),
        "modes": {str(k): int(v) for k, v in index["mode"].value_counts().items()},
    }
    if is_findings(index):
        how = {k: index.attrs[k] for k in FINDINGS_ATTRS if k in index.attrs}
        return {**common, "task": "findings", **how, **findings_summary(index)}
    counts = index.groupby(["label", "split"]).size().unstack(fill_value=0)
    per_class = index["label"].value_counts()
    return {
        **common,
        "task": "classes",
        "classes": {str(k): int(v) for k, v in per_class.sort_index().items()},
        "by_split": {
            str(label): {str(s or "unassigned"): int(n) for s, n in row.items() if n}
            for label, row in counts.iterrows()
        },
        "imbalance_ratio": float(per_class.max() / per_class.min()) if len(per_class) else 0.0,
    }
