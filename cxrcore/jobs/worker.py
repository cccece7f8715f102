"""One training job in its own process: ``python -m cxrcore.jobs.worker JOB_ID --db PATH --token T``.

Started by the scheduler (:mod:`cxrcore.jobs.scheduler`) after it claimed the job. The
worker first checks that the claim is still its own (a job cancelled in between is not
started, and a run folder made for it is removed), then trains into the job's run
directory, writes live progress to the queue, polls for a cancel request after every
batch, and ends its claim. How the run went is recorded by training in the run directory.
SIGTERM (a shutdown, ``kill``) is a graceful cancel: the job stops at the next batch,
keeps its best checkpoint and can be resumed.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import sys
import time
import traceback

from ..config import TrainConfig
from ..errors import CXRError
from ..runs import RunDir
from .store import JobStore

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


class JobReporter:
    """Training progress events -> the job's live progress, batch updates at most every ``interval`` s."""

    def __init__(self, store, job_id: str, token: str, interval: float = 0.5):
        self.store, self.job_id, self.token, self.interval = store, job_id, token, interval
        self._last = 0.0

    def __call__(self, event: dict) -> None:
        kind = event["event"]
        if kind == "start":
            return
        now = time.time()
        if kind == "batch" and now - self._last < self.interval and event["batch"] != event["batches"]:
            return
        self._last = now
        fields = dict(
            stage=event["stage"],
            epoch=event["epoch"],
            epochs=event["epochs"],
            batch=event["batch"],
            batches=event["batches"],
        )
        if kind == "epoch":
            fields["metrics"] = event["logs"]
        self.store.set_owned(self.job_id, self.token, **fields)


class CancelCheck:
    """``should_stop`` for training: a cancel request in the store, or SIGTERM, at most every ``interval`` s."""

    def __init__(self, store, job_id: str, interval: float = 0.5):
        self.store, self.job_id, self.interval = store, job_id, interval
        self.signalled = False
        self._last, self._answer = 0.0, False

    def on_signal(self, signum, frame) -> None:
        self.signalled = True

    def __call__(self) -> bool:
        if self.signalled or self._answer:
            return True
        now = time.time()
        if now - self._last >= self.interval:
            self._last = now
            self._answer = self.store.cancel_requested(self.job_id)
        return self._answer


def _drop_unstarted_run(job: dict) -> None:
    """Remove the folder the scheduler made for a new job that never started (only job.log in it)."""
    if job["run_dir"] and not job["resume"]:
        run = RunDir(job["run_dir"])
        if run.path.is_dir() and not run.exists() and not run.file("run.json").exists():
            shutil.rmtree(run.path, ignore_errors=True)


def run_job(job_id: str, db: str, token: str) -> int:

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    store = JobStore(db)
    check = CancelCheck(store, job_id)
    signal.signal(signal.SIGTERM, check.on_signal)
    owned = store.set_owned(job_id, token, pid=os.getpid())
    job = store.get(job_id)
    if not owned or store.cancel_requested(job_id):
        if owned:
            store.end(job_id, token, outcome="cancelled", error="cancelled before it started")
        _drop_unstarted_run(job)
        print(f"job {job_id}: cancelled before it started; nothing was trained", flush=True)
        return 0
    run = RunDir(job["run_dir"])
    print(f"job {job_id}: {'resuming' if job['resume'] else 'starting'} in {run.path}", flush=True)
    reporter = JobReporter(store, job_id, token)
    try:
        if job["resume"]:
            from ..workflows import resume  # lazy: TensorFlow

            resume(run.path, progress=reporter, should_stop=check)
        else:
            from ..workflows import train  # lazy: TensorFlow

            train(TrainConfig.from_dict(job["config"]), run=run, progress=reporter, should_stop=check)
    except CXRError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        _end_failed(store, job_id, token, run, str(exc))
        return 2
    except BaseException as exc:
        traceback.print_exc()
        _end_failed(store, job_id, token, run, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        return 1
    store.end(job_id, token)
    print(f"job {job_id}: {run.status()}", flush=True)
    return 0


def _end_failed(store, job_id: str, token: str, run, reason: str) -> None:
    """End the claim; the reason is kept by the queue only when the run has no record of its own."""
    has_record = run.file("run.json").exists()
    store.end(job_id, token, outcome=None if has_record else "failed", error=None if has_record else reason)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cxrcore.jobs.worker")
    parser.add_argument("job_id")
    parser.add_argument("--db", required=True)
    parser.add_argument("--token", required=True, help="the scheduler's claim on this attempt")
    args = parser.parse_args(argv)
    return run_job(args.job_id, args.db, args.token)


if __name__ == "__main__":
    sys.exit(main())
