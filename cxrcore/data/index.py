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
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..errors import DataError, ImageDecodeError
from .formats import IMAGE_EXTENSIONS
from .io import read_header

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

# Patient ids encoded in well-known file names.
PATIENT_PATTERNS = (
    re.compile(r"^(person\d+)_(?:bacteria|virus)_\d+", re.IGNORECASE),  # pediatric pneumonia set
    re.compile(r"^((?:NORMAL2-)?IM-\d+)-\d+", re.IGNORECASE),  # its NORMAL images
    re.compile(r"^(\d{8})_\d{3}$"),  # NIH ChestX-ray14
    re.compile(r"^synthetic_(p\d+)_\d+$"),  # cxrcore demo data
)

Progress = Callable[[int, int], None] | None


def patient_from_filename(name: str) -> str:
    """Patient id from a known file-name pattern, or "" when none matches."""
    stem = Path(name).stem
    for pattern in PATIENT_PATTERNS:
        match = pattern.match(stem)
        if match:
            return match.group(1)
    return ""


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
    """The labels a dataset's layout gives its images (no image is opened), sorted."""
    return sorted({row["label"] for row in scan_layout(data)[2]})


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
        root, _, found = scan_layout(listed.path)
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


def scan_layout(data: str | os.PathLike) -> tuple[Path, str, list[dict]]:
    """Detect the layout of ``data`` and list its images (no image is opened).

    Returns ``(root, layout, rows)`` where each row has relpath, label, split, patient_id.
    """
    data = Path(data).expanduser()
    if not data.exists():
        raise DataError(f"dataset not found: {data}")
    if data.is_file():
        if is_dataset_list(data):
            root, rows = _dataset_list_rows(data.resolve())
            return root, "dataset-list", rows
        if data.suffix.lower() != ".csv":
            raise DataError(f"{data} is a file; give a dataset folder, a CSV manifest or a JSON dataset list")
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
    cache = {}
    for r in table.to_dict("records"):
        try:
            cache[r["relpath"]] = {
                "bytes": int(r["bytes"]),
                "mtime_ns": int(r["mtime_ns"]),
                "width": int(r["width"]),
                "height": int(r["height"]),
                "mode": r["mode"],
            }
        except (TypeError, ValueError):
            continue  # a damaged row: that file's header is read again
    return cache


def _save_cache(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    pd.DataFrame(records, columns=["relpath", "bytes", "mtime_ns", "width", "height", "mode"]).to_csv(tmp, index=False)
    os.replace(tmp, path)


def build_index(data: str | os.PathLike, *, progress: Progress = None, use_cache: bool = True) -> pd.DataFrame:
    """Index a dataset: one row per image with label, split, patient and header facts.

    ``progress(done, total)`` is called while headers are read. Unreadable images
    raise :class:`DataError` naming the first bad file and how many there are.
    ``df.attrs`` holds ``root`` and ``layout``.
    """
    root, layout, rows = scan_layout(data)
    cache_path = _cache_file(root)
    cached = _load_cache(cache_path) if use_cache else {}
    records, bad, changed = [], [], False
    total = len(rows)
    for i, row in enumerate(rows):
        full = root / row["relpath"]
        st = full.stat()
        hit = cached.get(row["relpath"])
        if hit and int(hit["bytes"]) == st.st_size and int(hit["mtime_ns"]) == st.st_mtime_ns:
            header = {"width": int(hit["width"]), "height": int(hit["height"]), "mode": hit["mode"]}
        else:
            changed = True
            try:
                header = read_header(full)
            except ImageDecodeError as exc:
                bad.append(exc)
                header = None
        if header is not None:
            records.append(
                {
                    "relpath": row["relpath"],
                    "bytes": st.st_size,
                    "mtime_ns": st.st_mtime_ns,
                    "width": header["width"],
                    "height": header["height"],
                    "mode": header["mode"],
                }
            )
        if progress is not None and (i + 1 == total or (i + 1) % 50 == 0):
            progress(i + 1, total)
    if bad:
        more = f" (and {len(bad) - 1} more unreadable image(s))" if len(bad) > 1 else ""
        raise DataError(f"{bad[0]}{more}")
    if use_cache and (changed or len(cached) != len(records)):
        try:
            _save_cache(cache_path, records)
        except OSError:
            pass  # a read-only cache directory only costs speed
    facts = {r["relpath"]: r for r in records}
    frame = pd.DataFrame(
        [
            {
                "path": str(root / r["relpath"]),
                "label": r["label"],
                "split": r["split"],
                "patient_id": r["patient_id"],
                "source": r.get("source", ""),
                "weight": float(r.get("weight", 1.0)),
                "width": facts[r["relpath"]]["width"],
                "height": facts[r["relpath"]]["height"],
                "mode": facts[r["relpath"]]["mode"],
                "bytes": facts[r["relpath"]]["bytes"],
            }
            for r in rows
        ],
        columns=INDEX_COLUMNS,
    )
    frame.attrs.update(root=str(root), layout=layout)
    return frame


def summarize(index: pd.DataFrame) -> dict:
    """Counts per class and split, for the CLI and the dashboard."""
    counts = index.groupby(["label", "split"]).size().unstack(fill_value=0)
    per_class = index["label"].value_counts()
    return {
        "root": index.attrs.get("root", ""),
        "layout": index.attrs.get("layout", ""),
        "images": int(len(index)),
        "classes": {str(k): int(v) for k, v in per_class.sort_index().items()},
        "by_split": {
            str(label): {str(s or "unassigned"): int(n) for s, n in row.items() if n}
            for label, row in counts.iterrows()
        },
        "patients": int(index.loc[index["patient_id"] != "", "patient_id"].nunique()),
        "imbalance_ratio": float(per_class.max() / per_class.min()) if len(per_class) else 0.0,
        "modes": {str(k): int(v) for k, v in index["mode"].value_counts().items()},
    }
