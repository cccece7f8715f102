"""One training job in its own process: ``python -m cxrcore.jobs.worker JOB_ID --db PATH``.

Started by the scheduler (cxrcore.jobs.store); reads its configuration from the job store,
trains into the job's run directory, writes progress and per-epoch metrics back, polls
for a cancel request after every batch, and records how it ended. SIGTERM (a shutdown,
``kill``) is treated as a graceful cancel: the job stops at the next batch, keeps its best
checkpoint and can be resumed.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
import traceback

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


class JobReporter:
    """Progress events -> job store rows, batch updates at most every ``interval`` seconds."""

    def __init__(self, store, job_id: str, interval: float = 0.5):
        self.store, self.job_id, self.interval = store, job_id, interval
        self._last = 0.0

    def __call__(self, event: dict) -> None:
        kind = event["event"]
        if kind == "start":
            self.store.update(self.job_id, device=event["device"], run_dir=event["run_dir"],
                              resumed_from_epoch=event["resumed_from_epoch"])
            return
        now = time.time()
        if kind == "batch" and now - self._last < self.interval and event["batch"] != event["batches"]:
            return
        self._last = now
        self.store.update(self.job_id, stage=event["stage"], epoch=event["epoch"], epochs=event["epochs"],
                          batch=event["batch"], batches=event["batches"])
        if kind == "epoch":
            self.store.record_epoch(self.job_id, event["epoch"], event["stage"], event["logs"])


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


def run_job(job_id: str, db: str) -> int:
    from ..config import TrainConfig
    from ..errors import CXRError
    from .store import JobStore
    from ..runs import RunDir
    from ..training.train import train

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    store = JobStore(db)
    job = store.get(job_id)
    run = RunDir(job["run_dir"])
    check = CancelCheck(store, job_id)
    signal.signal(signal.SIGTERM, check.on_signal)
    print(f"job {job_id}: {'resuming' if job['resume'] else 'starting'} in {run.path}", flush=True)
    try:
        config = TrainConfig.from_dict(job["config"])
        train(config, run=run, progress=JobReporter(store, job_id), should_stop=check, resume=bool(job["resume"]))
    except CXRError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        store.transition(job_id, ("running",), status="failed", finished=time.time(), error=str(exc))
        return 2
    except BaseException as exc:
        traceback.print_exc()
        store.transition(job_id, ("running",), status="failed", finished=time.time(),
                         error=f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        return 1
    status = run.info().get("status", "succeeded")
    store.transition(job_id, ("running",), status=status, finished=time.time(),
                     error="cancelled on request" if status == "cancelled" else None)
    print(f"job {job_id}: {status}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cxrcore.jobs.worker")
    parser.add_argument("job_id")
    parser.add_argument("--db", required=True)
    args = parser.parse_args(argv)
    return run_job(args.job_id, args.db)


if __name__ == "__main__":
    sys.exit(main())
