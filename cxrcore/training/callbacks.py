"""Keras callbacks for training side effects: checkpoint, history, progress, cancellation."""
from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Callable, Optional

import keras
import pandas as pd

from ..runs import write_csv


def _clean(logs: dict | None) -> dict:
    return {k: float(v) for k, v in (logs or {}).items() if isinstance(v, (int, float)) or hasattr(v, "__float__")}


class AtomicCheckpoint(keras.callbacks.Callback):
    """Save the best model (lowest ``monitor``) to ``path`` through a temp file + rename.

    One instance is shared by both stages, so "best" means best over the whole run.
    """

    def __init__(self, path: Path, monitor: str = "val_loss"):
        super().__init__()
        self.path, self.monitor = Path(path), monitor
        self.best = math.inf
        self.best_epoch: int | None = None

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None or not math.isfinite(float(value)) or float(value) >= self.best:
            return
        self.best, self.best_epoch = float(value), epoch + 1
        self.save()

    def save(self):
        tmp = self.path.with_name(f".tmp{os.getpid()}-{self.path.name}")
        self.model.save(tmp)
        os.replace(tmp, self.path)


class HistoryLog(keras.callbacks.Callback):
    """``history.csv``: one row per epoch over both stages, rewritten atomically each epoch."""

    def __init__(self, path: Path):
        super().__init__()
        self.path = Path(path)
        self.rows: list[dict] = []
        self.stage = ""
        self._started = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._started = time.time()

    def on_epoch_end(self, epoch, logs=None):
        lr = self.model.optimizer.learning_rate
        self.rows.append({"epoch": epoch + 1, "stage": self.stage, **_clean(logs),
                          "learning_rate": float(keras.ops.convert_to_numpy(lr)),
                          "seconds": round(time.time() - self._started, 3)})
        write_csv(self.path, pd.DataFrame(self.rows))


class Progress(keras.callbacks.Callback):
    """Report ``{"event", "stage", "epoch", "epochs", "batch", "batches", "logs"}`` to a function."""

    def __init__(self, report: Callable[[dict], None], batches: int, epochs: int, every: int = 1):
        super().__init__()
        self.report, self.batches, self.epochs, self.every = report, batches, epochs, max(1, every)
        self.stage, self.epoch = "", 0

    def _send(self, event: str, batch: int, logs):
        self.report({"event": event, "stage": self.stage, "epoch": self.epoch, "epochs": self.epochs,
                     "batch": batch, "batches": self.batches, "logs": _clean(logs)})

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch + 1

    def on_train_batch_end(self, batch, logs=None):
        if (batch + 1) % self.every == 0 or batch + 1 == self.batches:
            self._send("batch", batch + 1, logs)

    def on_epoch_end(self, epoch, logs=None):
        self._send("epoch", self.batches, logs)


class Cancel(keras.callbacks.Callback):
    """Stop at the end of the current batch once ``should_stop()`` returns True."""

    def __init__(self, should_stop: Optional[Callable[[], bool]]):
        super().__init__()
        self.should_stop = should_stop
        self.cancelled = False

    def on_train_batch_end(self, batch, logs=None):
        if self.should_stop is not None and not self.cancelled and self.should_stop():
            self.cancelled = True
            self.model.stop_training = True


STATE_DIR = "state"
_RESUME_FILE = "resume.json"


class ResumeState(keras.callbacks.Callback):
    """After every epoch: the full model (weights and optimizer state) and where training stands.

    ``state/resume.json`` names the model file of the last completed epoch; both are written
    atomically and the json last, so it always points at a complete file. ``train(resume=True)``
    reads it back through :func:`read_resume_state`.
    """

    def __init__(self, folder: Path):
        super().__init__()
        self.folder = Path(folder)
        self.stage, self.stage_start = "", 0
        self._model_file = ""

    def on_epoch_end(self, epoch, logs=None):
        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"epoch-{epoch + 1:04d}.keras"
        tmp = self.folder / f".tmp{os.getpid()}-{name}"
        self.model.save(tmp)
        os.replace(tmp, self.folder / name)
        self._model_file = name
        self._write(epoch + 1, complete=False)
        for old in self.folder.glob("epoch-*.keras"):
            if old.name != name:
                old.unlink(missing_ok=True)

    def mark_stage_complete(self, epochs_done: int) -> None:
        if self._model_file:
            self._write(epochs_done, complete=True)

    def _write(self, epochs_done: int, complete: bool) -> None:
        from ..runs import write_json
        write_json(self.folder / _RESUME_FILE, {"stage": self.stage, "stage_start": self.stage_start,
                                                "epochs_done": epochs_done, "stage_complete": complete,
                                                "model": self._model_file})


def read_resume_state(run) -> dict | None:
    """The last completed epoch's state of a run, or None when there is none to resume from."""
    import json

    path = Path(run.path) / STATE_DIR / _RESUME_FILE
    try:
        state = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return state if (path.parent / state.get("model", "")).is_file() and state.get("model") else None
