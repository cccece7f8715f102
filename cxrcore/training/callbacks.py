"""Keras callbacks for training side effects: checkpoint, history, progress, cancellation."""

from __future__ import annotations

import math
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import keras
import pandas as pd

from ..runs import BEST_FILE, RESUME_FILE, write_csv, write_json


def _clean(logs: dict | None) -> dict:
    return {k: float(v) for k, v in (logs or {}).items() if isinstance(v, (int, float)) or hasattr(v, "__float__")}


class Cancel(keras.callbacks.Callback):
    """Stop at the end of the current batch once ``should_stop()`` returns True.

    Keras still calls ``on_epoch_end`` for an epoch it stopped in the middle of;
    :attr:`epoch_complete` tells the callbacks that record epochs (checkpoint, history,
    resume state, progress) whether this one ran every batch, so a partial epoch is never
    counted as done. Put it first in the callback list.
    """

    def __init__(self, should_stop: Callable[[], bool] | None):
        super().__init__()
        self.should_stop = should_stop
        self.cancelled = False
        self.epoch_complete = True
        self._batches = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._batches = 0

    def on_train_batch_end(self, batch, logs=None):
        self._batches = batch + 1
        if self.should_stop is not None and not self.cancelled and self.should_stop():
            self.cancelled = True
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        steps = (self.params or {}).get("steps")
        self.epoch_complete = not self.cancelled or (steps is not None and self._batches >= steps)


class _EpochRecorder(keras.callbacks.Callback):
    """A callback that records only epochs that ran every batch (see :class:`Cancel`).

    ``target``, when set, is the model that is saved: the complete model, while the model being
    fitted is only its part above a cut (training on cached activations, :mod:`.features`)."""

    def __init__(self, cancel: Cancel | None = None):
        super().__init__()
        self.cancel = cancel
        self.target: keras.Model | None = None

    def complete(self) -> bool:
        return self.cancel is None or self.cancel.epoch_complete

    @property
    def saved_model(self) -> keras.Model:
        return self.target if self.target is not None else self.model


class AtomicCheckpoint(_EpochRecorder):
    """Save the best model (lowest ``monitor``) to ``path`` through a temp file + rename.

    One instance is shared by both stages, so "best" means best over the whole run.
    """

    def __init__(self, path: Path, monitor: str = "val_loss", cancel: Cancel | None = None):
        super().__init__(cancel)
        self.path, self.monitor = Path(path), monitor
        self.best = math.inf
        self.best_epoch: int | None = None

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if not self.complete() or value is None or not math.isfinite(float(value)) or float(value) >= self.best:
            return
        self.best, self.best_epoch = float(value), epoch + 1
        self.save()

    def save(self):
        tmp = self.path.with_name(f".tmp{os.getpid()}-{self.path.name}")
        self.saved_model.save(tmp)
        os.replace(tmp, self.path)


class HistoryLog(_EpochRecorder):
    """``history.csv``: one row per completed epoch over both stages, rewritten atomically each epoch."""

    def __init__(self, path: Path, cancel: Cancel | None = None):
        super().__init__(cancel)
        self.path = Path(path)
        self.rows: list[dict] = []
        self.stage = ""
        self._started = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._started = time.time()

    def on_epoch_end(self, epoch, logs=None):
        if not self.complete():
            return
        lr = self.model.optimizer.learning_rate
        self.rows.append(
            {
                "epoch": epoch + 1,
                "stage": self.stage,
                **_clean(logs),
                "learning_rate": float(keras.ops.convert_to_numpy(lr)),
                "seconds": round(time.time() - self._started, 3),
            }
        )
        write_csv(self.path, pd.DataFrame(self.rows))


class Progress(_EpochRecorder):
    """Report ``{"event", "stage", "epoch", "epochs", "batch", "batches", "logs"}`` to a function."""

    def __init__(
        self, report: Callable[[dict], None], batches: int, epochs: int, every: int = 1, cancel: Cancel | None = None
    ):
        super().__init__(cancel)
        self.report, self.batches, self.epochs, self.every = report, batches, epochs, max(1, every)
        self.stage, self.epoch = "", 0

    def _send(self, event: str, batch: int, logs):
        self.report(
            {
                "event": event,
                "stage": self.stage,
                "epoch": self.epoch,
                "epochs": self.epochs,
                "batch": batch,
                "batches": self.batches,
                "logs": _clean(logs),
            }
        )

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch + 1

    def on_train_batch_end(self, batch, logs=None):
        if (batch + 1) % self.every == 0 or batch + 1 == self.batches:
            self._send("batch", batch + 1, logs)

    def on_epoch_end(self, epoch, logs=None):
        if self.complete():
            self._send("epoch", self.batches, logs)


def _link_or_copy(source: Path, target: Path) -> None:
    """``target`` := ``source``'s file, as a hard link (no space, no time) or, where links fail, a copy.
    Safe because every writer of these files writes a new file and renames it, never in place."""
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


class ResumeState(_EpochRecorder):
    """After every completed epoch: the full model (weights and optimizer state), the best
    checkpoint as it stands, and where training stands. When the checkpoint has just saved this
    epoch, the epoch's model file is a hard link to it (the same state; one save instead of two).

    ``state/resume.json`` names the model file of the last completed epoch and the best
    epoch so far; ``state/best.keras`` is that epoch's checkpoint (a hard link to
    ``model.keras``'s file, so it costs no space: every writer of ``model.keras`` writes a new
    file and renames it over the old one, never in place). Files are written atomically and the json
    last, so it always points at complete files. On resume, ``model.keras`` is put back
    from ``state/best.keras``: a process killed after writing a better ``model.keras`` but
    before its resume state cannot leave a best epoch that disagrees with the saved model.
    """

    def __init__(self, folder: Path, checkpoint: AtomicCheckpoint, cancel: Cancel | None = None):
        super().__init__(cancel)
        self.folder, self.checkpoint = Path(folder), checkpoint
        self.stage, self.stage_start = "", 0
        self._model_file = ""
        self._linked_best: int | None = None

    def on_epoch_end(self, epoch, logs=None):
        if not self.complete():
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"epoch-{epoch + 1:04d}.keras"
        tmp = self.folder / f".tmp{os.getpid()}-{name}"
        if self.checkpoint.best_epoch == epoch + 1 and self.checkpoint.saved_model is self.saved_model:
            _link_or_copy(self.checkpoint.path, tmp)  # the checkpoint has just saved this very state
        else:
            self.saved_model.save(tmp)
        os.replace(tmp, self.folder / name)
        self._model_file = name
        if self.checkpoint.best_epoch is not None and self.checkpoint.best_epoch != self._linked_best:
            self.keep_best()
        self._write(epoch + 1, complete=False)
        for old in self.folder.glob("epoch-*.keras"):
            if old.name != name:
                old.unlink(missing_ok=True)

    def keep_best(self) -> None:
        """``state/best.keras`` := the current ``model.keras`` (a hard link, or a copy)."""
        tmp = self.folder / f".tmp{os.getpid()}-{BEST_FILE}"
        _link_or_copy(self.checkpoint.path, tmp)
        os.replace(tmp, self.folder / BEST_FILE)
        self._linked_best = self.checkpoint.best_epoch

    def mark_stage_complete(self, epochs_done: int) -> None:
        if self._model_file:
            self._write(epochs_done, complete=True)

    def _write(self, epochs_done: int, complete: bool) -> None:
        best = self.checkpoint.best_epoch
        write_json(
            self.folder / RESUME_FILE,
            {
                "stage": self.stage,
                "stage_start": self.stage_start,
                "epochs_done": epochs_done,
                "stage_complete": complete,
                "model": self._model_file,
                "best_epoch": best,
                "best_val_loss": self.checkpoint.best if best is not None else None,
            },
        )
