"""Where cached activations live (:mod:`cxrcore.training.features` makes them): one folder per entry
under the cache folder's ``features/``, a size limit, what is there, and clearing it. No TensorFlow here,
so the dashboard and the CLI can show and clear the cache cheaply."""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.index import cache_dir

log = logging.getLogger("cxrcore.training.features")

#: the most the activation cache keeps on disk; the least recently used entries go first
LIMIT_BYTES = 8 * 1024**3
#: an entry larger than this is not written (the stage takes the full pass instead)
ENTRY_LIMIT_BYTES = 4 * 1024**3


def cache_root() -> Path:
    return cache_dir() / "features"


@dataclass(frozen=True)
class Entry:
    """One set of cached activations: a folder with ``activations.npy`` and ``meta.json``."""

    folder: Path

    @property
    def data(self) -> Path:
        return self.folder / "activations.npy"

    def load(self) -> np.ndarray | None:
        try:
            found = np.load(self.data, mmap_mode="r")
        except (OSError, ValueError):
            return None
        os.utime(self.folder)  # recently used: the last to be evicted
        return found

    def save(self, activations: np.ndarray, meta: dict) -> None:
        tmp = self.folder.with_name(f".tmp{os.getpid()}-{self.folder.name}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        np.save(tmp / "activations.npy", activations)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        shutil.rmtree(self.folder, ignore_errors=True)
        try:
            os.replace(tmp, self.folder)
        except OSError:  # another process (a second job on the same images) saved this entry in between
            shutil.rmtree(tmp, ignore_errors=True)
            if self.load() is None:
                raise


def usage() -> dict:
    """What the cache holds: ``{"folder", "entries", "bytes", "items": [{name, bytes, images, cut, created}]}``."""
    root = cache_root()
    items = []
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        if folder.name.startswith(".") or not (folder / "meta.json").is_file():
            continue
        try:
            meta = json.loads((folder / "meta.json").read_text())
        except (OSError, ValueError):
            meta = {}
        size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
        items.append({"name": folder.name, "bytes": size, **{k: meta.get(k) for k in ("images", "cut", "created")}})
    return {"folder": str(root), "entries": len(items), "bytes": sum(i["bytes"] for i in items), "items": items}


def clear() -> int:
    """Remove every cached activation; returns the bytes freed."""
    freed = usage()["bytes"]
    shutil.rmtree(cache_root(), ignore_errors=True)
    return freed


def evict(room_for: int) -> None:
    """Remove the least recently used entries until ``room_for`` more bytes fit under :data:`LIMIT_BYTES`."""
    root = cache_root()
    if not root.is_dir():
        return
    entries = [f for f in root.iterdir() if f.is_dir() and not f.name.startswith(".")]
    entries.sort(key=lambda f: f.stat().st_mtime)
    total = sum(f.stat().st_size for e in entries for f in e.iterdir() if f.is_file())
    for folder in entries:
        if total + room_for <= LIMIT_BYTES:
            break
        total -= sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
        shutil.rmtree(folder, ignore_errors=True)
        log.info("activation cache: removed %s to stay under %.0f GiB", folder.name, LIMIT_BYTES / 1024**3)
