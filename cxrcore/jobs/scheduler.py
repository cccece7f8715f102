"""The scheduler: starts queued jobs as worker processes and watches them.

``python -m cxrcore jobs worker`` (started for you by :func:`ensure_scheduler`) takes the
store's lock, so one scheduler runs per job database. Each job is claimed (queued ->
running, atomically, with a token) before anything is made for it, then runs as
``python -m cxrcore.jobs.worker JOB_ID --token T`` in its own session. A worker that dies
(kill -9, out of memory, a restart) is noticed, and the reason is recorded in its run
directory, the owner of the run's outcome. A job that cannot start (its run directory was
deleted, a folder cannot be written) ends with the reason, and the queue goes on.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from .. import runs
from ..errors import CXRError
from .hardware import gpu_count
from .processes import describe_exit, spawn, try_lock, worker_alive
from .store import JOB_LOG, JobError, JobStore

#: a claimed job with no worker process after this many seconds lost its scheduler
_CLAIM_GRACE = 60.0


def lock_path(store: JobStore) -> Path:
    return store.path.with_name(store.path.name + ".scheduler.lock")


class Scheduler:
    """Starts queued jobs as worker processes and watches them.

    ``max_jobs``: jobs at once (default: one per GPU, one on a CPU-only machine; or
    ``CXRCORE_MAX_JOBS``). Each job gets its own GPU through ``CUDA_VISIBLE_DEVICES``;
    ``gpus_per_job="all"`` gives every job all GPUs instead (MirroredStrategy), one at a time.
    """

    def __init__(
        self,
        store: JobStore,
        *,
        max_jobs: int | None = None,
        gpus_per_job: str = "1",
        idle_exit: float | None = 60.0,
        poll: float = 0.5,
    ):
        self.store = store
        self.gpus = gpu_count()
        self.gpus_per_job = gpus_per_job
        env_max = os.environ.get("CXRCORE_MAX_JOBS")
        default = 1 if (gpus_per_job == "all" or self.gpus == 0) else self.gpus
        self.max_jobs = max_jobs or (int(env_max) if env_max else default)
        self.idle_exit, self.poll = idle_exit, poll
        self.children: dict[str, tuple[subprocess.Popen, str | None, str]] = {}
        self._lock_fh = None

    def acquire(self) -> bool:
        """Take the store's scheduler lock (False when another scheduler holds it)."""
        fh = try_lock(lock_path(self.store))
        if fh is None:
            return False
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        self._lock_fh = fh
        return True

    def release(self) -> None:
        if self._lock_fh is not None:
            self._lock_fh.close()
            self._lock_fh = None

    def _died(self, job: dict, token: str | None, reason: str) -> None:
        """End a job whose worker is gone, and record why in its run (unless the run ended itself)."""
        if self.store.end(job["id"], token, outcome="failed", error=reason) and job.get("run_dir"):
            runs.RunDir(job["run_dir"]).record_end("failed", reason)

    def reap(self) -> None:
        """End the jobs whose worker process has died, with the reason."""
        for job_id, (proc, _, token) in list(self.children.items()):
            code = proc.poll()
            if code is None:
                continue
            del self.children[job_id]
            job = self.store.get(job_id)
            if job["state"] == "running" and job["token"] == token:
                self._died(job, token, describe_exit(code))
        for job in self.store.list(state="running", limit=10_000):
            if job["id"] in self.children:
                continue
            if job["pid"] is None:
                if time.time() - (job["updated"] or 0) > _CLAIM_GRACE:
                    self._died(job, job["token"], "its scheduler stopped before starting the worker process")
            elif not worker_alive(job["pid"], job["id"]):
                self._died(
                    job,
                    job["token"],
                    f"worker process {job['pid']} is gone (machine restarted, or its scheduler was killed)",
                )

    def _free_gpu(self) -> str | None:
        if self.gpus == 0:
            return None
        if self.gpus_per_job == "all":
            return ",".join(str(i) for i in range(self.gpus))
        used = {gpu for _, gpu, _ in self.children.values()}
        return next((str(i) for i in range(self.gpus) if str(i) not in used), None)

    def start_jobs(self) -> None:
        while len(self.children) < self.max_jobs:
            job = self.store.next_queued()
            if job is None:
                return
            self.launch(job, self._free_gpu())

    def _run_dir(self, job: dict) -> runs.RunDir:
        if job["resume"] and job["run_dir"]:
            run = runs.RunDir(job["run_dir"])
            if not run.path.is_dir():
                raise JobError(f"its run directory {run.path} no longer exists")
            return run
        return runs.new_run_dir(job["config"]["backbone"], job["out_dir"])

    def launch(self, job: dict, gpu: str | None) -> None:
        """Claim ``job`` and start its worker; a job that cannot start ends with the reason."""
        token = self.store.claim(job["id"], gpu=gpu)
        if token is None:
            return  # cancelled between the query and the claim
        try:
            run = self._run_dir(job)
            self.store.set_owned(job["id"], token, run_dir=str(run.path))
            log = open(run.file(JOB_LOG), "ab")
        except (OSError, CXRError) as exc:
            self.store.end(job["id"], token, outcome="failed", error=f"could not start: {exc}")
            return
        env = dict(os.environ)
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        log.write(
            f"\n==== job {job['id']} attempt {job['attempts'] + 1} at {time.strftime('%Y-%m-%d %H:%M:%S')}"
            f" ====\n".encode()
        )
        log.flush()
        proc = spawn(["cxrcore.jobs.worker", job["id"], "--db", str(self.store.path), "--token", token], log, env)
        self.children[job["id"]] = (proc, gpu, token)
        self.store.set_owned(job["id"], token, pid=proc.pid)

    def step(self) -> bool:
        """One round of reaping and starting; True while there is work."""
        self.reap()
        self.start_jobs()
        return bool(self.children) or self.store.count("queued") > 0

    def run(self) -> None:
        """Loop until idle for ``idle_exit`` seconds (forever when None)."""
        if not self.acquire():
            raise JobError(f"another scheduler already runs for {self.store.path}")
        idle_since = None
        try:
            while True:
                busy = self.step()
                if busy:
                    idle_since = None
                else:
                    idle_since = idle_since or time.time()
                    if self.idle_exit is not None and time.time() - idle_since >= self.idle_exit:
                        # hand over cleanly: a job queued while we let go is picked up
                        self.release()
                        if self.store.count("queued") == 0 or not self.acquire():
                            return
                        idle_since = None
                time.sleep(self.poll)
        finally:
            self.release()


def scheduler_running(store: JobStore) -> bool:
    fh = try_lock(lock_path(store))
    if fh is None:
        return True
    fh.close()
    return False


def ensure_scheduler(store: JobStore) -> bool:
    """Start a detached scheduler for ``store`` unless one runs; True when one was started."""
    if scheduler_running(store):
        return False
    idle = os.environ.get("CXRCORE_SCHEDULER_IDLE_EXIT", "60")
    spawn(
        ["cxrcore", "jobs", "--db", str(store.path), "worker", "--idle-exit", idle],
        open(store.path.with_name("jobs-scheduler.log"), "ab"),
        dict(os.environ),
    )
    return True
