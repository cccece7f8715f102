"""Run directories: what a training run writes, where, and how to read it back.

``models/<run_id>/`` (``models/`` is where the dashboard looks; ``CXRCORE_MODELS``
moves it) holds::

    config.json       the TrainConfig            labels.json     class names, model output order
    split.csv         the index with the split   history.csv     one row per epoch, both stages
    model.keras       best checkpoint            metrics.json    test-split metrics
    predictions.csv   per-image test results     run.json        status, device, timings, versions
    train.log         the training log           tensorboard/    TensorBoard logs
    external/<name>/  evaluations on other labelled folders

Every JSON/CSV file and the checkpoint are written to a temporary file and renamed,
so a killed process never leaves a half-written file behind.
"""
from __future__ import annotations

import json
import os
import re
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .errors import RunError

CONFIG, LABELS, SPLIT, HISTORY = "config.json", "labels.json", "split.csv", "history.csv"
MODEL, METRICS, PREDICTIONS, INFO = "model.keras", "metrics.json", "predictions.csv", "run.json"
LOG, TENSORBOARD, EXTERNAL = "train.log", "tensorboard", "external"


def models_dir() -> Path:
    """Default parent of run directories: ``$CXRCORE_MODELS`` or ``./models``."""
    return Path(os.environ.get("CXRCORE_MODELS") or "models")


def write_atomic(path: Path, text: str) -> None:
    """Write text to ``path`` through a temporary file and a rename."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: Path, obj) -> None:
    write_atomic(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")


def write_csv(path: Path, frame: pd.DataFrame) -> None:
    write_atomic(path, frame.to_csv(index=False))


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "run"


@dataclass
class RunDir:
    """A run directory on disk."""

    path: Path

    def __post_init__(self):
        self.path = Path(self.path)

    @property
    def run_id(self) -> str:
        return self.path.name

    def file(self, name: str) -> Path:
        return self.path / name

    def read_json(self, name: str) -> dict | list:
        path = self.file(name)
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            raise RunError(f"{self.path} has no {name}; is it a cxrcore run directory?") from None
        except json.JSONDecodeError as exc:
            raise RunError(f"{path} is corrupt: {exc}") from None

    def labels(self) -> list[str]:
        return list(self.read_json(LABELS))

    def config(self):
        from .config import TrainConfig
        return TrainConfig.from_dict(self.read_json(CONFIG))

    def info(self) -> dict:
        return self.read_json(INFO) if self.file(INFO).exists() else {}

    def update_info(self, **fields) -> dict:
        info = {**self.info(), **fields}
        write_json(self.file(INFO), info)
        return info

    def split(self) -> pd.DataFrame:
        path = self.file(SPLIT)
        if not path.exists():
            raise RunError(f"{self.path} has no {SPLIT}")
        return pd.read_csv(path, dtype={"patient_id": str, "split": str, "label": str}, keep_default_na=False)

    def history(self) -> pd.DataFrame:
        path = self.file(HISTORY)
        return pd.read_csv(path) if path.exists() and path.stat().st_size else pd.DataFrame()

    def require_model(self) -> Path:
        if not self.path.is_dir():
            raise RunError(f"run directory not found: {self.path}")
        model = self.file(MODEL)
        if not model.exists():
            raise RunError(f"{self.path} has no trained model ({MODEL}); did its training finish?")
        return model

    def external_dir(self, data: str | Path) -> Path:
        data = Path(data).resolve()
        return self.path / EXTERNAL / _slug(data.stem if data.is_file() else data.name)


def new_run_dir(backbone: str, parent: str | Path | None = None) -> RunDir:
    """Create ``<parent>/<YYYYmmdd-HHMMSS>-<backbone>`` (a suffix keeps it unique)."""
    parent = Path(parent) if parent else models_dir()
    parent.mkdir(parents=True, exist_ok=True)
    stem = f"{time.strftime('%Y%m%d-%H%M%S')}-{_slug(backbone)}"
    for n in range(1000):
        path = parent / (stem if n == 0 else f"{stem}-{n}")
        try:
            path.mkdir()
            return RunDir(path)
        except FileExistsError:
            continue
    raise RunError(f"cannot create a run directory under {parent}")


def run_status(info: dict) -> str:
    """A run's status, with ``interrupted`` for a "running" run whose process is gone on this host
    (killed, or the machine restarted): ``python -m cxrcore train --resume RUN_DIR`` continues it."""
    status = info.get("status", "unknown")
    if status == "running" and info.get("pid") and info.get("host") == socket.gethostname():
        try:
            os.kill(int(info["pid"]), 0)
        except ProcessLookupError:
            return "interrupted"
        except PermissionError:
            pass
    return status


def list_runs(parent: str | Path | None = None) -> list[dict]:
    """Runs under ``parent`` (newest first): id, path, backbone, status and headline metrics."""
    parent = Path(parent) if parent else models_dir()
    if not parent.is_dir():
        return []
    runs = []
    for path in sorted(parent.iterdir(), reverse=True):
        if not (path / CONFIG).is_file():
            continue
        run = RunDir(path)
        try:
            info, config = run.info(), run.read_json(CONFIG)
            metrics = run.read_json(METRICS) if run.file(METRICS).exists() else {}
        except RunError:
            continue
        runs.append({"run_id": run.run_id, "path": str(path), "backbone": config.get("backbone"),
                     "status": run_status(info), "has_model": run.file(MODEL).exists(),
                     "accuracy": metrics.get("accuracy"), "macro_f1": metrics.get("macro_f1"),
                     "macro_auc": metrics.get("macro_auc")})
    return runs
