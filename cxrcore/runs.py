"""Run directories: what a training run writes, where, and the one place its facts are read.

``models/<run_id>/`` (``models/`` in the project; ``CXRCORE_MODELS`` moves it) holds::

    config.json       the TrainConfig            labels.json     class names, model output order
    split.csv         the index with the split   history.csv     one row per completed epoch
    model.keras       best checkpoint            metrics.json    test-split metrics
    predictions.csv   per-image test results     run.json        status, process, device, timings
    train.log         the training log           tensorboard/    TensorBoard logs
    calibration.json  the temperature fitted on the validation split (runs trained before it: none)
    operating_points.json  decision thresholds per class, chosen on the validation split
    ood.npz           the training split's feature statistics: how unlike the training data an image is
    MODEL_CARD.md     the model card: data, training, results with intervals, limitations
    audit.json        the data audit of the training data (cxrcore.data.audit), recorded when training ended
    state/            resume state (until the run succeeds)
    external/<name>/  evaluations on other labelled data, one folder per dataset

:class:`RunDir` is the only owner of a run's facts: its status (including whether the
process training it is still alive), epochs completed, history, metrics, image size and
external evaluations. The job queue (:mod:`cxrcore.jobs`) knows only what is queued and
which process holds it; pages and the CLI read everything else from here.

A run that succeeded is final: no training path writes into it again
(:meth:`RunDir.check_resumable` refuses), and evaluations and other additions go beside it.

Every JSON/CSV file and the checkpoint are written to a temporary file and renamed,
so a killed process never leaves a half-written file behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .config import TrainConfig
from .data.pixels import PixelRules
from .errors import CXRError, RunError
from .stats.ood import FeatureStats
from .training.backbones import get_backbone

CONFIG, LABELS, SPLIT, HISTORY = "config.json", "labels.json", "split.csv", "history.csv"
MODEL, METRICS, PREDICTIONS, INFO = "model.keras", "metrics.json", "predictions.csv", "run.json"
PER_CLASS, SOURCE, CALIBRATION = "per_class.csv", "source.json", "calibration.json"
OPERATING_POINTS, FEATURE_STATS, MODEL_CARD = "operating_points.json", "ood.npz", "MODEL_CARD.md"
LOG, TENSORBOARD, EXTERNAL, STATE_DIR = "train.log", "tensorboard", "external", "state"
RESUME_FILE, BEST_FILE = "resume.json", "best.keras"
ENSEMBLE = "ensemble.json"  # an ensemble's members (cxrcore.ensemble)
NOTES = "notes.json"  # the user's name and note for a run (the one file a finished run still takes edits in)
FAITHFULNESS = "faithfulness.json"  # explanations scored on a test sample (cxrcore.explain.faithfulness)
AUDIT = "audit.json"  # the training data's audit, recorded with the run (cxrcore.data.audit)
NAME_MAX = 60

#: statuses :meth:`RunDir.status` returns
STATUSES = ("new", "running", "interrupted", "succeeded", "failed", "cancelled")
PROJECT_ROOT = Path(__file__).resolve().parents[1]


def models_dir() -> Path:
    """The one models folder (absolute) shared by the CLI, the scheduler, the workers and the app:
    ``$CXRCORE_MODELS`` when set, else the project's ``models/``, whatever the working directory."""
    return Path(os.environ.get("CXRCORE_MODELS") or PROJECT_ROOT / "models").expanduser().resolve()


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
    """Letters, digits, ``_ . -`` only, never starting with a dot (no ``..``, no hidden names)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.") or "run"


def process_start_time(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot, from /proc), to tell a live process
    from a later one that reused its pid; None where /proc is not available or the pid is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[19]


def process_alive(pid: int | None, started: str | None = None) -> bool:
    """Whether ``pid`` runs on this machine (and, when ``started`` is known, is the same process)."""
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    if started is not None:
        now = process_start_time(int(pid))
        return now is None or now == started
    return True


def this_process() -> dict:
    """The fields that let :meth:`RunDir.status` check that a run's process is alive."""
    return {"pid": os.getpid(), "host": socket.gethostname(), "pid_started": process_start_time(os.getpid())}


@dataclass(frozen=True)
class Evaluation:
    """One saved evaluation: the test split's (``name`` "test") or an external dataset's."""

    name: str
    folder: Path
    metrics: dict
    source: dict

    def predictions(self) -> pd.DataFrame:
        path = self.folder / PREDICTIONS
        return pd.read_csv(path) if path.exists() else pd.DataFrame()


@dataclass
class RunDir:
    """A run directory on disk, and the one reader of its facts."""

    path: Path

    def __post_init__(self):
        self.path = Path(self.path)

    @property
    def run_id(self) -> str:
        return self.path.name

    def file(self, name: str) -> Path:
        return self.path / name

    def exists(self) -> bool:
        return self.file(CONFIG).is_file()

    def read_json(self, name: str) -> dict | list:
        path = self.file(name)
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            raise RunError(f"{self.path} has no {name}; is it a cxrcore run directory?") from None
        except json.JSONDecodeError as exc:
            raise RunError(f"{path} is corrupt: {exc}") from None

    # -- what it was trained on --------------------------------------------------------------
    def labels(self) -> list[str]:
        return list(self.read_json(LABELS))

    def config(self):
        return TrainConfig.from_dict(self.read_json(CONFIG))

    def info(self) -> dict:
        """``run.json`` as written (status there is not checked for liveness: use :meth:`status`)."""
        return self.read_json(INFO) if self.file(INFO).exists() else {}

    def task(self) -> str:
        """``"findings"`` for a multi-label run (one sigmoid output per finding, ``labels.json`` its findings),
        ``"classes"`` otherwise (runs from before findings existed included)."""
        return self.info().get("task") or "classes"

    def update_info(self, **fields) -> dict:
        info = {**self.info(), **fields}
        write_json(self.file(INFO), info)
        return info

    def split(self) -> pd.DataFrame:
        path = self.file(SPLIT)
        if not path.exists():
            raise RunError(f"{self.path} has no {SPLIT}")
        return pd.read_csv(path, dtype={"patient_id": str, "split": str, "label": str}, keep_default_na=False)

    def image_size(self) -> int:
        """The square input size the run's model was trained at."""
        info = self.info()
        if info.get("image_size"):
            return int(info["image_size"])
        config = self.config()
        if config.image_size:
            return int(config.image_size)
        return get_backbone(config.backbone).input_size

    def annotation(self) -> dict:
        """``{"name", "note"}`` the user gave the run (empty strings when none)."""
        found = self.read_json(NOTES) if self.file(NOTES).exists() else {}
        return {"name": str(found.get("name") or ""), "note": str(found.get("note") or "")}

    def annotate(self, name: str | None = None, note: str | None = None) -> dict:
        """Set the run's name (one line, at most :data:`NAME_MAX` characters) and/or note; None keeps the
        current one. Kept in ``notes.json``, apart from the run's own record, so naming a finished run
        changes none of its results."""
        if not self.exists():
            raise RunError(f"{self.path} is not a run directory")
        found = self.annotation()
        if name is not None:
            name = name.strip()
            if "\n" in name or len(name) > NAME_MAX:
                raise RunError(f"a run's name is one line of at most {NAME_MAX} characters")
            found["name"] = name
        if note is not None:
            found["note"] = note.strip()
        write_json(self.file(NOTES), found)
        return found

    def ensemble(self) -> dict | None:
        """What an ensemble run is made of (``members``: run paths, ``tta``, ...); None for a trained run."""
        return self.read_json(ENSEMBLE) if self.file(ENSEMBLE).exists() else None

    def members(self) -> list[RunDir]:
        """An ensemble's member runs, in order; empty for a trained run."""
        found = self.ensemble()
        return [RunDir(p) for p in found["members"]] if found else []

    def loso(self) -> dict | None:
        """The leave-one-source-out study this run belongs to (``loso.json`` in the folder above it), with
        ``held_out``: the source the run was tested on; else the newest study on the same data in the same
        folder as the run, with ``held_out`` None; else None."""
        study = read_loso(self.path.parent)
        if study:
            mine = [f for f in study.get("folds", []) if f.get("run") == self.path.name]
            return {**study, "held_out": mine[0]["source"] if mine else None}
        try:
            data = str(self.config().data)
        except CXRError:
            return None
        beside = [s for s in list_loso(self.path.parent) if str(s.get("data")) == data]
        return {**beside[0], "held_out": None} if beside else None

    def pixel_rules(self):
        """The pixel rules (:class:`cxrcore.data.pixels.PixelRules`) every image this run's model sees goes
        through; the defaults for runs trained before they existed, or without a config.json."""
        if not self.file(CONFIG).exists():
            return PixelRules()
        return self.config().pixels

    # -- outcome -----------------------------------------------------------------------------
    def status(self) -> str:
        """``new`` (nothing started yet), ``running``, ``interrupted`` (its process is gone
        without recording an end: killed, or the machine restarted), ``succeeded``, ``failed``
        or ``cancelled``."""
        info = self.info()
        status = info.get("status") or "new"
        if (
            status == "running"
            and info.get("host") == socket.gethostname()
            and not process_alive(info.get("pid"), info.get("pid_started"))
        ):
            return "interrupted"
        return status

    def error(self) -> str | None:
        """Why the run failed (None unless it did)."""
        return self.info().get("error") if self.status() == "failed" else None

    @property
    def is_final(self) -> bool:
        """A run that succeeded: its model, history and test results never change again."""
        return self.info().get("status") == "succeeded"

    def record_end(self, status: str, reason: str) -> bool:
        """Record how a run ended when its own process could not (it was killed): only for a run
        whose process is gone without a record (status ``interrupted``); True when recorded. A
        run that ended by itself, finished ones above all, is never touched."""
        if self.status() != "interrupted":
            return False
        self.update_info(
            status=status,
            error=reason if status == "failed" else None,
            stopped_by=reason,
            finished=time.strftime("%Y-%m-%dT%H:%M:%S"),
        )
        return True

    def resume_state(self) -> dict | None:
        """The last completed epoch's state, or None when there is none to resume from."""
        path = self.path / STATE_DIR / RESUME_FILE
        try:
            state = json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        model = state.get("model")
        return state if model and (path.parent / model).is_file() else None

    def epochs_completed(self) -> int:
        """Epochs that ran every batch: from the run's record once it ended, else its resume state."""
        info = self.info()
        if info.get("status") in ("succeeded", "cancelled", "failed") and info.get("epochs_completed") is not None:
            return int(info["epochs_completed"])
        state = self.resume_state()
        return int(state["epochs_done"]) if state else 0

    def check_resumable(self) -> dict | None:
        """Raise :class:`RunError` saying why this run cannot be resumed; else its resume state
        (None: no epoch completed, so it starts again from epoch 1). The one check every resume
        path (``train --resume``, ``jobs resume``, the dashboard) goes through."""
        if not self.path.is_dir():
            raise RunError(f"nothing to resume: the run directory {self.path} does not exist")
        if not self.exists() or not self.file(SPLIT).exists():
            raise RunError(f"nothing to resume: {self.path} is not a run directory ({CONFIG} or {SPLIT} missing)")
        status = self.status()
        if status == "succeeded":
            raise RunError(
                f"{self.path} already finished (succeeded); a finished run is final and is never "
                f"trained again. Start a new run with its settings: "
                f"python -m cxrcore train --config {self.file(CONFIG)}"
            )
        if status == "running":
            info = self.info()
            raise RunError(
                f"{self.path} is still training (process {info.get('pid')} on {info.get('host')}); "
                "cancel or stop it before resuming"
            )
        return self.resume_state()

    # -- results -----------------------------------------------------------------------------
    def has_model(self) -> bool:
        return self.file(MODEL).is_file()

    def require_model(self) -> Path:
        if not self.path.is_dir():
            raise RunError(f"run directory not found: {self.path}")
        if not self.has_model():
            raise RunError(f"{self.path} has no trained model ({MODEL}); did its training finish?")
        return self.file(MODEL)

    def calibration(self) -> dict | None:
        """``calibration.json``: ``{"temperature", "fitted_on", ...}``, or for a findings run
        ``{"temperatures": {finding: T}, "fitted_on", ...}`` (one per finding); None for a run without one
        (trained before calibration existed, or with no validation images) or with a temperature that is not a
        positive number."""
        try:
            found = json.loads(self.file(CALIBRATION).read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(found, dict):
            return None
        many = found.get("temperatures")
        values = list(many.values()) if isinstance(many, dict) else [found.get("temperature")]
        if not values or not all(isinstance(t, (int, float)) and 0 < t < float("inf") for t in values):
            return None
        return found

    def temperature(self) -> float:
        """The temperature its probabilities are divided by (in log space); 1.0 when it has none (and for a
        findings run, whose temperatures are per finding: :meth:`temperatures`)."""
        found = self.calibration()
        return float(found["temperature"]) if found and "temperature" in found else 1.0

    def temperatures(self) -> list[float]:
        """A findings run's temperature per finding, in the order of :meth:`labels` (each finding's logit is
        divided by its own); 1.0 for each when it has none."""
        found = (self.calibration() or {}).get("temperatures") or {}
        return [float(found.get(name, 1.0)) for name in self.labels()]

    def write_calibration(self, calibration: dict) -> None:
        write_json(self.file(CALIBRATION), calibration)

    def operating_points(self) -> dict | None:
        """``operating_points.json`` (:mod:`cxrcore.evaluation.operating_points`): thresholds per class
        chosen on the validation split; None for a run without them."""
        try:
            found = json.loads(self.file(OPERATING_POINTS).read_text())
        except (OSError, ValueError):
            return None
        return found if isinstance(found, dict) and isinstance(found.get("thresholds"), dict) else None

    def write_operating_points(self, points: dict) -> None:
        write_json(self.file(OPERATING_POINTS), points)

    def feature_stats(self):
        """The training split's feature statistics (:class:`cxrcore.stats.ood.FeatureStats`) that
        say how unlike the training data an image is; None for a run without them."""
        try:
            return FeatureStats.load(self.file(FEATURE_STATS))
        except (OSError, ValueError, KeyError):
            return None

    def write_feature_stats(self, stats) -> None:
        stats.save(self.file(FEATURE_STATS))

    def faithfulness(self) -> dict | None:
        """``faithfulness.json`` (:func:`cxrcore.explain.faithfulness.evaluate_run`): each explanation
        method's scores on a sample of the test split; None before they are computed."""
        try:
            found = json.loads(self.file(FAITHFULNESS).read_text())
        except (OSError, ValueError):
            return None
        return found if isinstance(found, dict) and isinstance(found.get("methods"), dict) else None

    def write_faithfulness(self, result: dict) -> None:
        write_json(self.file(FAITHFULNESS), result)

    def audit(self) -> dict | None:
        """``audit.json``: the data audit of the training data (:func:`cxrcore.data.audit.audit`) as it was
        when the run was made; None for a run without one (made before runs recorded it)."""
        try:
            found = json.loads(self.file(AUDIT).read_text())
        except (OSError, ValueError):
            return None
        return found if isinstance(found, dict) else None

    def write_audit(self, result: dict) -> None:
        write_json(self.file(AUDIT), result)

    def model_card(self) -> str | None:
        """``MODEL_CARD.md`` as written by :mod:`cxrcore.evaluation.model_card`; None before it exists."""
        try:
            return self.file(MODEL_CARD).read_text()
        except OSError:
            return None

    def history(self) -> pd.DataFrame:
        """One row per completed epoch over both stages (empty before the first)."""
        path = self.file(HISTORY)
        try:
            return pd.read_csv(path) if path.exists() and path.stat().st_size else pd.DataFrame()
        except (pd.errors.ParserError, pd.errors.EmptyDataError):
            return pd.DataFrame()

    def _evaluation(self, name: str, folder: Path) -> Evaluation | None:
        try:
            metrics = json.loads((folder / METRICS).read_text())
        except (OSError, ValueError):
            return None
        try:
            source = json.loads((folder / SOURCE).read_text())
        except (OSError, ValueError):
            source = {}
        return Evaluation(name, folder, metrics, source)

    def metrics(self) -> dict | None:
        """The test split's metrics (None until the run has them)."""
        evaluation = self.test_evaluation()
        return evaluation.metrics if evaluation else None

    def test_evaluation(self) -> Evaluation | None:
        return self._evaluation("test", self.path)

    def external_dir(self, data: str | Path) -> Path:
        """The folder holding the evaluation on ``data``: ``external/<parent>-<name>-<hash>``, one
        per dataset (the hash is of its absolute path), always inside ``external/``."""
        data = Path(data).expanduser().resolve()
        stem = data.stem if data.suffix.lower() == ".csv" else data.name
        digest = hashlib.sha1(str(data).encode()).hexdigest()[:8]
        name = f"{_slug(data.parent.name)[:40]}-{_slug(stem)[:40]}-{digest}"
        folder = (self.path / EXTERNAL / name).resolve()
        if folder.parent != (self.path / EXTERNAL).resolve():
            raise RunError(f"cannot place the evaluation of {data} inside {self.path / EXTERNAL}")
        return folder

    def external_evaluations(self) -> list[Evaluation]:
        """Saved evaluations on other labelled data, newest first."""
        root = self.path / EXTERNAL
        found = [self._evaluation(p.name, p) for p in sorted(root.iterdir())] if root.is_dir() else []
        found = [e for e in found if e is not None]
        return sorted(found, key=lambda e: e.source.get("evaluated_at", ""), reverse=True)

    def summary(self) -> dict:
        """What run pickers and lists show: id, path, backbone, status, task and headline metrics. A findings
        run (``task`` ``"findings"``) has no accuracy nor macro F1 (None): its headline is ``mean_auc`` (with
        ``mean_auc_ci``), the mean AUC over the findings evaluated, which ``macro_auc`` holds too."""
        info, metrics = self.info(), self.metrics() or {}
        ci = metrics.get("ci") or {}
        return {
            "run_id": self.run_id,
            "name": self.annotation()["name"],
            "path": str(self.path),
            "backbone": self.read_json(CONFIG).get("backbone"),
            "status": self.status(),
            "has_model": self.has_model(),
            "error": self.error(),
            "epochs_completed": self.epochs_completed(),
            "image_size": info.get("image_size"),
            "task": self.task(),
            "accuracy": metrics.get("accuracy"),
            "accuracy_ci": ci.get("accuracy"),
            "macro_f1": metrics.get("macro_f1"),
            "macro_auc": metrics.get("macro_auc"),
            "mean_auc": metrics.get("mean_auc"),
            "mean_auc_ci": ci.get("mean_auc"),
        }


#: the summary of a leave-one-source-out study, in its folder beside the study's runs
LOSO = "loso.json"


def _new_folder(parent: str | Path | None, name: str) -> Path:
    """Create ``<parent>/<YYYYmmdd-HHMMSS>-<name>`` (``parent``: the models folder by default), with a suffix
    when that exists already."""
    parent = Path(parent) if parent else models_dir()
    parent.mkdir(parents=True, exist_ok=True)
    stem = f"{time.strftime('%Y%m%d-%H%M%S')}-{name}"
    for n in range(1000):
        path = parent / (stem if n == 0 else f"{stem}-{n}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise RunError(f"cannot create a folder for {stem} under {parent}")


def new_study_dir(kind: str, backbone: str, parent: str | Path | None = None) -> Path:
    """Create ``<parent>/<YYYYmmdd-HHMMSS>-<kind>-<backbone>``, a folder that holds a study's runs."""
    return _new_folder(parent, f"{_slug(kind)}-{_slug(backbone)}")


def write_loso(folder: str | Path, result: dict) -> None:
    """Write a leave-one-source-out study's summary (``loso.json``) into its folder."""
    write_atomic(Path(folder) / LOSO, json.dumps(result, indent=2))


def read_loso(folder: str | Path) -> dict | None:
    """A study folder's ``loso.json`` with each fold's result read from its run (found by the fold's
    manifest): ``run``, ``status``, ``auc`` (the macro AUC) with ``ci_low``/``ci_high``, ``external``
    (each external set's AUC); then ``mean_auc`` and ``worst`` over the folds scored, and ``status``
    ``complete`` once every fold's run has ended (written back then). None when there is no study."""
    folder = Path(folder)
    try:
        study = json.loads((folder / LOSO).read_text())
    except (OSError, ValueError):
        return None
    if study.get("status") == "complete":
        return study
    found = {}
    for path in folder.iterdir():
        run = RunDir(path)
        if path.is_dir() and run.exists():
            try:
                found[Path(run.config().data).name] = run
            except CXRError:
                continue
    folds = []
    for fold in study.get("folds", []):
        run = found.get(fold.get("manifest"))
        metrics = (run.metrics() if run else None) or {}
        ci = (metrics.get("ci") or {}).get("macro_auc") or {}
        folds.append(
            {
                **fold,
                "run": run.path.name if run else None,
                "status": run.status() if run else "queued",
                "auc": metrics.get("macro_auc"),
                "ci_low": ci.get("ci_low"),
                "ci_high": ci.get("ci_high"),
                "external": {
                    e.source.get("data", e.name): e.metrics.get("macro_auc")
                    for e in (run.external_evaluations() if run else [])
                },
            }
        )
    scored = [f for f in folds if f["auc"] is not None]
    ended = all(f["status"] in ("succeeded", "failed", "cancelled", "interrupted") for f in folds)
    study = {
        **study,
        "folds": folds,
        "mean_auc": sum(f["auc"] for f in scored) / len(scored) if scored else None,
        "worst": min(scored, key=lambda f: f["auc"])["source"] if scored else None,
        "status": "complete" if folds and ended else "running" if any(f["run"] for f in folds) else "planned",
    }
    if study["status"] == "complete":
        write_loso(folder, study)
    return study


def list_loso(parent: str | Path | None = None) -> list[dict]:
    """The leave-one-source-out studies under ``parent`` (newest first), each its ``loso.json`` with
    ``folder`` added."""
    parent = Path(parent) if parent else models_dir()
    if not parent.is_dir():
        return []
    found = []
    for path in sorted(parent.iterdir(), reverse=True):
        study = read_loso(path) if (path / LOSO).is_file() else None
        if study is not None:
            found.append({**study, "folder": str(path)})
    return found


def new_run_dir(backbone: str, parent: str | Path | None = None) -> RunDir:
    """Create ``<parent>/<YYYYmmdd-HHMMSS>-<backbone>`` (a suffix keeps it unique)."""
    return RunDir(_new_folder(parent, _slug(backbone)))


def list_runs(parent: str | Path | None = None) -> list[dict]:
    """Runs under ``parent`` (newest first), as :meth:`RunDir.summary` rows, the runs of a study folder
    (one with ``loso.json``) included after it; unreadable ones skipped."""
    parent = Path(parent) if parent else models_dir()
    if not parent.is_dir():
        return []
    rows = []
    for path in sorted(parent.iterdir(), reverse=True):
        if (path / LOSO).is_file():
            rows += list_runs(path)
            continue
        run = RunDir(path)
        if not run.exists():
            continue
        try:
            rows.append(run.summary())
        except RunError:
            continue
    return rows
