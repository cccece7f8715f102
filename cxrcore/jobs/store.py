"""Background training jobs: a SQLite job store, a queue, and a scheduler that runs each job
in its own OS process.

* :class:`JobStore` keeps jobs in ``<models>/jobs.sqlite`` (WAL mode, so the dashboard
  and the workers read and write at the same time; every write is one short
  ``BEGIN IMMEDIATE`` transaction with a generous busy timeout).
* :func:`submit` queues a job and makes sure a scheduler is running. The scheduler
  (``python -m cxrcore jobs worker``) starts queued jobs, one per GPU (or one on the CPU)
  unless told otherwise, each as ``python -m cxrcore.jobs.worker JOB_ID`` in its own session,
  so closing the browser, the terminal or the app does not stop it. It notices dead
  workers (kill -9, out of memory, a restart) and marks their jobs failed with the
  reason, and exits by itself after a while with nothing to do (60 s;
  ``CXRCORE_SCHEDULER_IDLE_EXIT`` changes it).
* A job's stdout/stderr go to ``job.log`` in its run directory.

Job states: queued -> running -> succeeded | failed | cancelled; ``resume`` puts a failed
or cancelled job back in the queue, to continue from its last completed epoch.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Iterator

from .. import runs as R
from ..config import TrainConfig
from ..errors import CXRError

STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
FINISHED = ("succeeded", "failed", "cancelled")
DB_NAME = "jobs.sqlite"
JOB_LOG = "job.log"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    group_id TEXT,
    status TEXT NOT NULL,
    config TEXT NOT NULL,
    out_dir TEXT NOT NULL,
    run_dir TEXT,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    updated REAL,
    pid INTEGER,
    gpu TEXT,
    device TEXT,
    stage TEXT,
    epoch INTEGER,
    epochs INTEGER,
    batch INTEGER,
    batches INTEGER,
    metrics TEXT,
    error TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    resume INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    resumed_from_epoch INTEGER
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs(status);
CREATE TABLE IF NOT EXISTS epochs (
    job_id TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    stage TEXT,
    metrics TEXT NOT NULL,
    time REAL NOT NULL,
    PRIMARY KEY (job_id, epoch)
);
"""


class JobError(CXRError):
    """An unknown job, or an action its state does not allow."""


def default_db() -> Path:
    return R.models_dir() / DB_NAME


class JobStore:
    """The job table. Safe to use from many processes and threads at once."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path else default_db()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.closing(self._connect()) as con:
            con.execute("PRAGMA journal_mode=WAL")
            con.executescript(_SCHEMA)

    # -- plumbing ---------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False)
        con.row_factory = sqlite3.Row
        con.execute("PRAGMA busy_timeout=60000")
        con.execute("PRAGMA synchronous=NORMAL")
        return con

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        con = self._connect()
        try:
            con.execute("BEGIN IMMEDIATE")
            yield con
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        finally:
            con.close()

    def _read(self, sql: str, args: tuple = ()) -> list[dict]:
        with contextlib.closing(self._connect()) as con:
            return [dict(r) for r in con.execute(sql, args).fetchall()]

    # -- queries ----------------------------------------------------------------------------
    def get(self, job_id: str) -> dict:
        """A job by id or unique id prefix."""
        rows = self._read("SELECT * FROM jobs WHERE id = ? OR id LIKE ? ORDER BY id = ? DESC",
                          (job_id, f"{job_id}%", job_id))
        if not rows:
            raise JobError(f"no job {job_id}")
        if len(rows) > 1 and rows[0]["id"] != job_id:
            raise JobError(f"job id {job_id} is ambiguous: {', '.join(r['id'] for r in rows[:5])}")
        return _decode(rows[0])

    def list(self, status: str | None = None, group: str | None = None, limit: int = 200) -> list[dict]:
        """Jobs, newest first."""
        where, args = [], []
        if status:
            where.append("status = ?")
            args.append(status)
        if group:
            where.append("group_id = ?")
            args.append(group)
        sql = "SELECT * FROM jobs" + (" WHERE " + " AND ".join(where) if where else "")
        return [_decode(r) for r in self._read(sql + " ORDER BY created DESC, id LIMIT ?", (*args, limit))]

    def epochs(self, job_id: str) -> list[dict]:
        """Per-epoch metrics of a job (all attempts), in epoch order."""
        rows = self._read("SELECT epoch, stage, metrics, time FROM epochs WHERE job_id = ? ORDER BY epoch",
                          (job_id,))
        return [{"epoch": r["epoch"], "stage": r["stage"], "time": r["time"], **json.loads(r["metrics"])}
                for r in rows]

    def count(self, *statuses: str) -> int:
        marks = ",".join("?" * len(statuses))
        return self._read(f"SELECT COUNT(*) AS n FROM jobs WHERE status IN ({marks})", statuses)[0]["n"]

    # -- changes ----------------------------------------------------------------------------
    def add(self, config: TrainConfig, *, group: str | None = None, out_dir: str | Path | None = None) -> str:
        config.validate()
        job_id = uuid.uuid4().hex[:10]
        with self._write() as con:
            con.execute("INSERT INTO jobs (id, group_id, status, config, out_dir, created, updated) "
                        "VALUES (?, ?, 'queued', ?, ?, ?, ?)",
                        (job_id, group, json.dumps(config.to_dict()), str(Path(out_dir or R.models_dir()).resolve()),
                         time.time(), time.time()))
        return job_id

    def update(self, job_id: str, **fields) -> None:
        if not fields:
            return
        fields["updated"] = time.time()
        sets = ", ".join(f"{k} = ?" for k in fields)
        with self._write() as con:
            con.execute(f"UPDATE jobs SET {sets} WHERE id = ?", (*fields.values(), job_id))

    def transition(self, job_id: str, from_statuses: tuple[str, ...], **fields) -> bool:
        """Update only if the job is in one of ``from_statuses``; True when it was."""
        fields["updated"] = time.time()
        sets = ", ".join(f"{k} = ?" for k in fields)
        marks = ",".join("?" * len(from_statuses))
        with self._write() as con:
            cur = con.execute(f"UPDATE jobs SET {sets} WHERE id = ? AND status IN ({marks})",
                              (*fields.values(), job_id, *from_statuses))
            return cur.rowcount == 1

    def record_epoch(self, job_id: str, epoch: int, stage: str, metrics: dict) -> None:
        with self._write() as con:
            con.execute("INSERT OR REPLACE INTO epochs (job_id, epoch, stage, metrics, time) VALUES (?, ?, ?, ?, ?)",
                        (job_id, epoch, stage, json.dumps(metrics), time.time()))
            con.execute("UPDATE jobs SET metrics = ?, updated = ? WHERE id = ?",
                        (json.dumps(metrics), time.time(), job_id))

    def next_queued(self) -> dict | None:
        rows = self._read("SELECT * FROM jobs WHERE status = 'queued' ORDER BY created, id LIMIT 1")
        return _decode(rows[0]) if rows else None

    def cancel_requested(self, job_id: str) -> bool:
        rows = self._read("SELECT cancel_requested FROM jobs WHERE id = ?", (job_id,))
        return bool(rows and rows[0]["cancel_requested"])


def _decode(row: dict) -> dict:
    row = dict(row)
    row["config"] = json.loads(row["config"])
    row["metrics"] = json.loads(row["metrics"]) if row.get("metrics") else None
    return row


# -- the public actions ---------------------------------------------------------------------

def submit(config: TrainConfig, *, store: JobStore | None = None, group: str | None = None,
           out_dir: str | Path | None = None, start_scheduler: bool = True) -> str:
    """Queue one training job; returns its id. A scheduler is started if none runs."""
    store = store or JobStore()
    _check_data(config)
    job_id = store.add(config, group=group, out_dir=out_dir)
    if start_scheduler:
        ensure_scheduler(store)
    return job_id


def submit_comparison(config: TrainConfig, backbones: list[str], *, store: JobStore | None = None,
                      out_dir: str | Path | None = None, start_scheduler: bool = True) -> tuple[str, list[str]]:
    """One job per backbone with the same data and settings, grouped; returns (group, job ids)."""
    from dataclasses import replace

    from ..training.backbones import get_backbone

    store = store or JobStore()
    specs = [get_backbone(name) for name in backbones]
    if len(specs) < 1:
        raise JobError("a comparison needs at least one backbone")
    _check_data(config)
    group = "cmp-" + uuid.uuid4().hex[:8]
    ids = []
    for spec in specs:
        weights = config.weights if spec.pretrained or config.weights not in ("imagenet",) else "none"
        ids.append(store.add(replace(config, backbone=spec.name, weights=weights), group=group, out_dir=out_dir))
    if start_scheduler:
        ensure_scheduler(store)
    return group, ids


def _check_data(config: TrainConfig) -> None:
    """Fail at submission, not an hour later, when the data cannot be read at all."""
    from ..data.index import scan_layout

    if not config.data:
        raise JobError("the job has no dataset (config.data is empty)")
    scan_layout(config.data)


def cancel(job_id: str, *, store: JobStore | None = None, force: bool = False, wait: float = 0.0) -> dict:
    """Cancel a job: a queued one at once; a running one at its next batch (graceful).

    ``force`` kills the worker's process group instead. ``wait`` > 0 waits that many
    seconds for a graceful stop and then kills it (the fallback).
    """
    store = store or JobStore()
    job = store.get(job_id)
    if job["status"] in FINISHED:
        raise JobError(f"job {job['id']} already {job['status']}")
    if store.transition(job["id"], ("queued",), status="cancelled", finished=time.time(),
                        error="cancelled before it started"):
        return store.get(job["id"])
    store.update(job["id"], cancel_requested=1)
    deadline = time.time() + wait
    while not force and time.time() < deadline:
        if store.get(job["id"])["status"] in FINISHED:
            return store.get(job["id"])
        time.sleep(0.5)
    if force or wait > 0:
        pid = store.get(job["id"])["pid"]
        if store.transition(job["id"], ("running",), status="cancelled", finished=time.time(),
                            error="killed on request (forced cancel)"):
            _kill_group(pid)
    return store.get(job["id"])


def resume(job_id: str, *, store: JobStore | None = None, start_scheduler: bool = True) -> dict:
    """Queue a failed or cancelled job again; it continues from its last completed epoch."""
    store = store or JobStore()
    job = store.get(job_id)
    if job["status"] not in ("failed", "cancelled"):
        raise JobError(f"job {job['id']} is {job['status']}; only failed or cancelled jobs can be resumed")
    store.transition(job["id"], ("failed", "cancelled"), status="queued", resume=1 if job["run_dir"] else 0,
                     cancel_requested=0, error=None, finished=None, pid=None)
    if start_scheduler:
        ensure_scheduler(store)
    return store.get(job["id"])


def _kill_group(pid: int | None) -> None:
    if not pid:
        return
    for kill in (lambda: os.killpg(pid, signal.SIGKILL), lambda: os.kill(pid, signal.SIGKILL)):
        try:
            kill()
            return
        except (ProcessLookupError, PermissionError):
            continue


def _process_alive(pid: int | None, job_id: str) -> bool:
    """Whether ``pid`` is still this job's worker (not a recycled pid)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except OSError as exc:
        return exc.errno == errno.EPERM
    cmdline = Path(f"/proc/{pid}/cmdline")
    if cmdline.exists():
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            return True
        return job_id in text and "cxrcore.jobs.worker" in text
    return True


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        sig = -returncode
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else f"signal {sig}"
        hint = " (out of memory, or killed by hand)" if sig == signal.SIGKILL else ""
        return f"worker process killed by {name}{hint}"
    return f"worker process exited with status {returncode} without recording a result"


# -- the scheduler --------------------------------------------------------------------------

def gpu_count() -> int:
    """GPUs on this machine, without importing TensorFlow (``nvidia-smi -L``); 0 when none."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))


def hardware_summary() -> dict:
    """What training will run on, without importing TensorFlow: GPU names and memory, or the CPU."""
    gpus = []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10)
        for line in out.stdout.strip().splitlines():
            name, _, memory = line.rpartition(",")
            if name.strip():
                gpus.append({"name": name.strip(), "memory_mb": int(float(memory))})
    except (OSError, subprocess.TimeoutExpired, ValueError):
        pass
    cpus = os.cpu_count() or 1
    text = (", ".join(f"{g['name']} ({g['memory_mb'] / 1024:.0f} GB)" for g in gpus) if gpus
            else f"CPU only ({cpus} cores): small backbones and images train best")
    return {"gpus": gpus, "cpu_count": cpus, "text": text}


def eta_seconds(job: dict, epochs: list[dict]) -> float | None:
    """Seconds left for a running job, from its recent epoch durations and the current batch."""
    if job.get("status") != "running" or not job.get("epochs") or not job.get("started"):
        return None
    times = [e["time"] for e in epochs if e["time"] >= job["started"]]
    if times:
        marks = [job["started"], *times]
        per_epoch = sum(b - a for a, b in zip(marks[-4:], marks[-3:])) / len(marks[-3:])
    else:
        if not job.get("batch") or not job.get("batches"):
            return None
        per_epoch = (time.time() - job["started"]) * job["batches"] / job["batch"]
    done = (job.get("epoch") or 1) - 1 + (job.get("batch") or 0) / max(1, job.get("batches") or 1)
    return max(0.0, (job["epochs"] - done) * per_epoch)


def _lock_path(store: JobStore) -> Path:
    return store.path.with_name(store.path.name + ".scheduler.lock")


def _try_lock(path: Path):
    """An exclusive file lock the OS releases when this process dies; the open file, or None."""
    import fcntl

    fh = open(path, "a+")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.close()
        return None
    return fh


def _spawn(module_args: list[str], log, env: dict) -> subprocess.Popen:
    """``python -m <module_args>`` in its own session (closing a terminal or the app does not
    stop it), run from the project root, output appended to ``log`` (closed here)."""
    try:
        return subprocess.Popen([sys.executable, "-m", *module_args], stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, cwd=str(Path(__file__).resolve().parents[1]),
                                start_new_session=True)
    finally:
        log.close()


class Scheduler:
    """Starts queued jobs as worker processes and watches them.

    ``max_jobs``: jobs at once (default: one per GPU, one on a CPU-only machine; or
    ``CXRCORE_MAX_JOBS``). Each job gets its own GPU through ``CUDA_VISIBLE_DEVICES``;
    ``gpus_per_job="all"`` gives every job all GPUs instead (MirroredStrategy), one at a time.
    """

    def __init__(self, store: JobStore, *, max_jobs: int | None = None, gpus_per_job: str = "1",
                 idle_exit: float | None = 60.0, poll: float = 0.5):
        self.store = store
        self.gpus = gpu_count()
        self.gpus_per_job = gpus_per_job
        env_max = os.environ.get("CXRCORE_MAX_JOBS")
        default = 1 if (gpus_per_job == "all" or self.gpus == 0) else self.gpus
        self.max_jobs = max_jobs or (int(env_max) if env_max else default)
        self.idle_exit, self.poll = idle_exit, poll
        self.children: dict[str, tuple[subprocess.Popen, str | None]] = {}
        self.lock_path = _lock_path(store)
        self._lock_fh = None

    def acquire(self) -> bool:
        """Take the store's scheduler lock (False when another scheduler holds it)."""
        fh = _try_lock(self.lock_path)
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

    def reap(self) -> None:
        """Mark jobs whose worker process has died as failed, with the reason."""
        for job_id, (proc, _) in list(self.children.items()):
            code = proc.poll()
            if code is None:
                continue
            del self.children[job_id]
            if code != 0 or self.store.get(job_id)["status"] == "running":
                self.store.transition(job_id, ("running",), status="failed", finished=time.time(),
                                      error=describe_exit(code))
        for job in self.store.list(status="running", limit=10_000):
            if job["id"] not in self.children and not _process_alive(job["pid"], job["id"]):
                self.store.transition(job["id"], ("running",), status="failed", finished=time.time(),
                                      error=f"worker process {job['pid']} is gone (machine restarted, "
                                            "or its scheduler was killed)")

    def _free_gpu(self) -> str | None:
        if self.gpus == 0:
            return None
        if self.gpus_per_job == "all":
            return ",".join(str(i) for i in range(self.gpus))
        used = {gpu for _, gpu in self.children.values()}
        return next((str(i) for i in range(self.gpus) if str(i) not in used), None)

    def start_jobs(self) -> None:
        while len(self.children) < self.max_jobs:
            job = self.store.next_queued()
            if job is None:
                return
            self.launch(job, self._free_gpu())

    def launch(self, job: dict, gpu: str | None) -> None:
        try:
            if job["resume"] and job["run_dir"]:
                run = R.RunDir(job["run_dir"])
            else:
                run = R.new_run_dir(job["config"]["backbone"], job["out_dir"])
        except OSError as exc:
            self.store.transition(job["id"], ("queued",), status="failed", finished=time.time(),
                                  error=f"cannot create the run directory: {exc}")
            return
        env = dict(os.environ)
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        log = open(run.file(JOB_LOG), "ab")
        log.write(f"\n==== job {job['id']} attempt {job['attempts'] + 1} at {time.strftime('%Y-%m-%d %H:%M:%S')}"
                  f" ====\n".encode())
        log.flush()
        proc = _spawn(["cxrcore.jobs.worker", job["id"], "--db", str(self.store.path)], log, env)
        self.children[job["id"]] = (proc, gpu)
        self.store.transition(job["id"], ("queued",), status="running", pid=proc.pid, run_dir=str(run.path),
                              gpu=gpu, started=time.time(), attempts=job["attempts"] + 1, cancel_requested=0,
                              stage=None, batch=None, batches=None)

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
    fh = _try_lock(_lock_path(store))
    if fh is None:
        return True
    fh.close()
    return False


def ensure_scheduler(store: JobStore) -> bool:
    """Start a detached scheduler for ``store`` unless one runs; True when one was started."""
    if scheduler_running(store):
        return False
    idle = os.environ.get("CXRCORE_SCHEDULER_IDLE_EXIT", "60")
    _spawn(["cxrcore", "jobs", "--db", str(store.path), "worker", "--idle-exit", idle],
           open(store.path.with_name("jobs-scheduler.log"), "ab"), dict(os.environ))
    return True


def wait(job_id: str, *, store: JobStore | None = None, timeout: float = 600, poll: float = 0.5) -> dict:
    """Block until the job has finished (or ``timeout`` seconds); returns the job."""
    store = store or JobStore()
    deadline = time.time() + timeout
    while True:
        job = store.get(job_id)
        if job["status"] in FINISHED or time.time() >= deadline:
            return job
        time.sleep(poll)
