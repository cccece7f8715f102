"""The actions on background jobs (submit, cancel, resume, wait) and the job as a user sees it.

A job's status is the queue's while it waits or runs (``queued``, ``running``) and its run's
once it has one (:meth:`cxrcore.runs.RunDir.status`: ``succeeded``, ``failed``, ``cancelled``,
``interrupted``), so the Train page, the Evaluate page and the CLI always agree. Resuming
goes through one check (:meth:`cxrcore.runs.RunDir.check_resumable`) whoever asks: a
finished run is never trained again.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pandas as pd

from .. import runs
from ..config import TrainConfig
from ..data.index import build_index, scan_layout
from ..data.splits import (
    BALANCE_OPTION,
    apply_label_scheme,
    check_trainable,
    drop_single_class_sources,
    require_sources,
)
from ..evaluation.external import check_external
from ..training.backbones import get_backbone
from .processes import kill_group, worker_alive
from .scheduler import ensure_scheduler
from .store import JobError, JobStore

#: statuses a job can show; all but the first two are its run's
STATUSES = ("queued", "running", "succeeded", "failed", "cancelled", "interrupted")


def job_view(job: dict) -> dict:
    """A job row with ``status`` and ``error`` (from its run once it has one), and the run's
    ``device``, ``epochs_completed`` and ``resumed_from_epoch``."""
    run = runs.RunDir(job["run_dir"]) if job.get("run_dir") else None
    info = run.info() if run is not None and run.file(runs.INFO).exists() else None
    view = {
        **job,
        "backbone": job["config"]["backbone"],
        "device": None,
        "epochs_completed": None,
        "resumed_from_epoch": None,
    }
    if info is not None:
        view.update(
            device=info.get("device"),
            resumed_from_epoch=info.get("resumed_from_epoch"),
            epochs_completed=run.epochs_completed(),
        )
    if job["state"] == "queued":
        status, error = "queued", None
    elif job["state"] == "running" and (job["pid"] is None or worker_alive(job["pid"], job["id"])):
        status, error = "running", None
    elif info is not None:
        status, error = run.status(), run.error()
    else:
        status, error = job["outcome"] or "failed", job["error"]
    view.update(status=status, error=error)
    return view


def get(job_id: str, *, store: JobStore | None = None) -> dict:
    """One job (by id or unique prefix) as :func:`job_view` shows it."""
    return job_view((store or JobStore()).get(job_id))


def list_jobs(
    *, store: JobStore | None = None, status: str | None = None, group: str | None = None, limit: int = 200
) -> list[dict]:
    """Jobs, newest first, as :func:`job_view` shows them (optionally only one ``status``)."""
    views = [job_view(j) for j in (store or JobStore()).list(group=group, limit=limit)]
    return [v for v in views if status is None or v["status"] == status]


def submit(
    config: TrainConfig,
    *,
    store: JobStore | None = None,
    group: str | None = None,
    out_dir: str | Path | None = None,
    start_scheduler: bool = True,
) -> str:
    """Queue one training job; returns its id. A scheduler is started if none runs."""
    store = store or JobStore()
    _check_data(config)
    job_id = store.add(config, group=group, out_dir=out_dir)
    if start_scheduler:
        ensure_scheduler(store)
    return job_id


def submit_comparison(
    config: TrainConfig,
    backbones: list[str],
    *,
    store: JobStore | None = None,
    out_dir: str | Path | None = None,
    start_scheduler: bool = True,
) -> tuple[str, list[str]]:
    """One job per backbone with the same data and settings, grouped; returns (group, job ids).
    Settings ``config`` leaves open (weights, image size, unfreeze depth) follow each backbone
    (:meth:`TrainConfig.for_backbone`)."""
    specs = [get_backbone(name) for name in backbones]
    if len(specs) < 1:
        raise JobError("a comparison needs at least one backbone")
    configs = [config.for_backbone(spec.name) for spec in specs]
    return submit_group(configs, store=store, out_dir=out_dir, start_scheduler=start_scheduler)


def submit_group(
    configs: list[TrainConfig],
    *,
    store: JobStore | None = None,
    out_dir: str | Path | None = None,
    start_scheduler: bool = True,
) -> tuple[str, list[str]]:
    """One job per configuration (several backbones, several recipes), queued as one comparison group;
    returns (group, job ids). Every configuration's data is checked before any job is queued."""
    store = store or JobStore()
    if not configs:
        raise JobError("a comparison needs at least one configuration")
    for config in configs:
        _check_data(config)
    group = "cmp-" + uuid.uuid4().hex[:8]
    ids = [store.add(config, group=group, out_dir=out_dir) for config in configs]
    if start_scheduler:
        ensure_scheduler(store)
    return group, ids


def _check_data(config: TrainConfig) -> None:
    """Fail at submission, not an hour later, when the data cannot be read at all."""
    if not config.data:
        raise JobError("the job has no dataset (config.data is empty)")
    scan_layout(config.data, config.findings)
    if config.balance == "source" or config.drop_single_class_sources:  # the sources they need are there
        frame = apply_label_scheme(build_index(config.data), config.labels)
        if config.drop_single_class_sources:
            frame, _ = drop_single_class_sources(frame)  # refuses when nothing, or one class, would be left
        if config.balance == "source":
            require_sources(frame, BALANCE_OPTION)
    if config.external:  # every external set must be labelled as the model's classes
        check_external(config, check_trainable(apply_label_scheme(build_index(config.data), config.labels)))


def cancel(job_id: str, *, store: JobStore | None = None, force: bool = False, wait: float = 0.0) -> dict:
    """Cancel a job: a queued one at once; a running one at its next batch (graceful).

    ``force`` kills the worker's process group instead. ``wait`` > 0 waits that many
    seconds for a graceful stop and then kills it (the fallback).
    """
    store = store or JobStore()
    job = store.get(job_id)
    if store.cancel_queued(job["id"]):
        return get(job["id"], store=store)
    if job["state"] == "ended":
        raise JobError(f"job {job['id']} already {job_view(job)['status']}")
    store.request_cancel(job["id"])
    deadline = time.time() + wait
    while not force and time.time() < deadline:
        if store.get(job["id"])["state"] == "ended":
            return get(job["id"], store=store)
        time.sleep(0.5)
    if force or wait > 0:
        job = store.get(job["id"])
        if store.end(job["id"], job["token"], outcome="cancelled", error="killed on request (forced cancel)"):
            kill_group(job["pid"])
            if job["run_dir"]:
                runs.RunDir(job["run_dir"]).record_end("cancelled", "killed on request (forced cancel)")
    return get(job["id"], store=store)


def resume(job_id: str, *, store: JobStore | None = None, start_scheduler: bool = True) -> dict:
    """Queue an ended job again. With a run, it continues from its last completed epoch (a
    finished run is refused: it is final); a job that ended before it had a run starts afresh."""
    store = store or JobStore()
    job = store.get(job_id)
    if job["state"] == "running" and job["pid"] and not worker_alive(job["pid"], job["id"]):
        reason = f"worker process {job['pid']} is gone (machine restarted, or its scheduler was killed)"
        if store.end(job["id"], job["token"], outcome="failed", error=reason) and job["run_dir"]:
            runs.RunDir(job["run_dir"]).record_end("failed", reason)
        job = store.get(job_id)
    if job["state"] != "ended":
        raise JobError(f"job {job['id']} is {job['state']}; only a job that has ended can be resumed")
    run = runs.RunDir(job["run_dir"]) if job["run_dir"] else None
    if run is not None and run.exists():
        run.check_resumable()
        store.requeue(job["id"], resume=True, run_dir=str(run.path))
    else:
        store.requeue(job["id"], resume=False, run_dir=None)
    if start_scheduler:
        ensure_scheduler(store)
    return get(job["id"], store=store)


def resume_run(run_dir: str | Path, *, store: JobStore | None = None, start_scheduler: bool = True) -> dict:
    """Continue a run in the background: its job's :func:`resume`, or a new job for a run that was
    trained in the foreground (``python -m cxrcore train``). Returns the job."""
    store = store or JobStore()
    run = runs.RunDir(Path(run_dir).resolve())
    job = store.for_run(run.path)
    if job is not None:
        return resume(job["id"], store=store, start_scheduler=start_scheduler)
    run.check_resumable()
    job_id = store.add(run.config(), out_dir=run.path.parent, run_dir=run.path)
    if start_scheduler:
        ensure_scheduler(store)
    return get(job_id, store=store)


def wait(job_id: str, *, store: JobStore | None = None, timeout: float = 600, poll: float = 0.5) -> dict:
    """Block until the job has ended (or ``timeout`` seconds); returns the job."""
    store = store or JobStore()
    deadline = time.time() + timeout
    while True:
        job = store.get(job_id)
        if job["state"] == "ended" or time.time() >= deadline:
            return job_view(job)
        time.sleep(poll)


def eta_seconds(job: dict, history: pd.DataFrame) -> float | None:
    """Seconds left for a running job, from its run's recent epoch durations (``seconds`` in
    history.csv) or, before its first epoch, from the batches done so far."""
    if job.get("status") != "running" or not job.get("epochs") or not job.get("started"):
        return None
    if len(history) and "seconds" in history:
        per_epoch = float(history["seconds"].tail(3).mean())
    else:
        if not job.get("batch") or not job.get("batches"):
            return None
        per_epoch = (time.time() - job["started"]) * job["batches"] / job["batch"]
    done = (job.get("epoch") or 1) - 1 + (job.get("batch") or 0) / max(1, job.get("batches") or 1)
    return max(0.0, (job["epochs"] - done) * per_epoch)
