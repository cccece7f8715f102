"""The job queue in SQLite, and nothing else.

A job row holds what the queue needs: its configuration, whether it is queued, running or
ended, which attempt and process hold it (a claim token and a pid), whether a cancel was
asked, and live progress for the Train page (stage, epoch, batch, latest metrics). A run's
status, history, results and the reason it failed belong to its run directory
(:class:`cxrcore.runs.RunDir`); :func:`cxrcore.jobs.queue.job_view` joins the two for display.
Only a job that ended before it had a run keeps its outcome and reason here.

``<models>/jobs.sqlite`` is in WAL mode, so the dashboard, the CLI and the workers read and
write at once; every write is one short ``BEGIN IMMEDIATE`` transaction.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from .. import runs
from ..config import TrainConfig
from ..errors import CXRError

STATES = ("queued", "running", "ended")
DB_NAME = "jobs.sqlite"
JOB_LOG = "job.log"
_PROGRESS = ("stage", "epoch", "epochs", "batch", "batches", "metrics")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS queue (
    id TEXT PRIMARY KEY,
    group_id TEXT,
    state TEXT NOT NULL,                    -- queued | running | ended
    config TEXT NOT NULL,
    out_dir TEXT NOT NULL,
    run_dir TEXT,                           -- set when the scheduler makes (or reuses) the run directory
    resume INTEGER NOT NULL DEFAULT 0,      -- continue run_dir from its last completed epoch
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    updated REAL,
    token TEXT,                             -- the claim of the attempt that holds the job
    pid INTEGER,
    gpu TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    stage TEXT, epoch INTEGER, epochs INTEGER, batch INTEGER, batches INTEGER, metrics TEXT,
    outcome TEXT,                           -- failed | cancelled, only for a job that ended without a run
    error TEXT                              -- its reason
);
CREATE INDEX IF NOT EXISTS queue_state ON queue(state, created);
"""

# jobs.sqlite written before the queue/run split kept run facts in a `jobs` table (and an
# `epochs` table duplicating history.csv): carried over once, then dropped.
_MIGRATE = """
INSERT OR IGNORE INTO queue (id, group_id, state, config, out_dir, run_dir, resume, created, started, finished,
                             updated, pid, gpu, attempts, cancel_requested, stage, epoch, epochs, batch, batches,
                             metrics, outcome, error)
SELECT id, group_id, CASE WHEN status IN ('queued', 'running') THEN status ELSE 'ended' END, config, out_dir,
       run_dir, resume, created, started, finished, updated, pid, gpu, attempts, cancel_requested, stage, epoch,
       epochs, batch, batches, metrics, CASE WHEN status IN ('failed', 'cancelled') THEN status END, error
FROM jobs;
DROP TABLE jobs;
DROP TABLE IF EXISTS epochs;
"""


class JobError(CXRError):
    """An unknown job, or an action its state does not allow."""


def default_db() -> Path:
    """``<models>/jobs.sqlite``: one absolute path for the CLI, the scheduler, the workers and the app."""
    return runs.models_dir() / DB_NAME


class JobStore:
    """The job queue. Safe to use from many processes and threads at once.

    ``timeout``: seconds a write waits for another writer's lock before failing with a
    :class:`JobError` that says the database is locked.
    """

    def __init__(self, path: str | Path | None = None, *, timeout: float = 60.0):
        self.path = Path(path).expanduser().resolve() if path else default_db()
        self.timeout = timeout
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.closing(self._connect()) as con:
            con.execute("PRAGMA journal_mode=WAL")
            con.executescript(_SCHEMA)
            if con.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'jobs'").fetchone():
                with self._write() as tx:
                    for statement in filter(str.strip, _MIGRATE.split(";")):
                        tx.execute(statement)

    # -- plumbing ---------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False)
        con.row_factory = sqlite3.Row
        con.execute(f"PRAGMA busy_timeout={int(self.timeout * 1000)}")
        con.execute("PRAGMA synchronous=NORMAL")
        return con

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        con = self._connect()
        try:
            try:
                con.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:  # nothing to roll back: say what happened
                raise JobError(
                    f"the job database {self.path} is busy ({exc}; waited {self.timeout:g} s for "
                    "another process's write)"
                ) from None
            try:
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

    def _update(self, sql_where: str, args: tuple, fields: dict) -> bool:
        fields = {**fields, "updated": time.time()}
        sets = ", ".join(f"{k} = ?" for k in fields)
        with self._write() as con:
            return con.execute(f"UPDATE queue SET {sets} WHERE {sql_where}", (*fields.values(), *args)).rowcount == 1

    # -- queries ----------------------------------------------------------------------------
    def get(self, job_id: str) -> dict:
        """A job row by id or unique id prefix (the prefix matched literally: ``_`` and ``%`` are
        characters, not wildcards)."""
        rows = self._read(
            "SELECT * FROM queue WHERE id = ? OR substr(id, 1, ?) = ? ORDER BY id = ? DESC",
            (job_id, len(job_id), job_id, job_id),
        )
        if not rows or not job_id:
            raise JobError(f"no job {job_id}")
        if len(rows) > 1 and rows[0]["id"] != job_id:
            raise JobError(f"job id {job_id} is ambiguous: {', '.join(r['id'] for r in rows[:5])}")
        return _decode(rows[0])

    def list(self, state: str | None = None, group: str | None = None, limit: int = 200) -> list[dict]:
        """Job rows, newest first."""
        where, args = [], []
        if state:
            where.append("state = ?")
            args.append(state)
        if group:
            where.append("group_id = ?")
            args.append(group)
        sql = "SELECT * FROM queue" + (" WHERE " + " AND ".join(where) if where else "")
        return [_decode(r) for r in self._read(sql + " ORDER BY created DESC, id LIMIT ?", (*args, limit))]

    def count(self, *states: str) -> int:
        marks = ",".join("?" * len(states))
        return self._read(f"SELECT COUNT(*) AS n FROM queue WHERE state IN ({marks})", states)[0]["n"]

    def next_queued(self) -> dict | None:
        rows = self._read("SELECT * FROM queue WHERE state = 'queued' ORDER BY created, id LIMIT 1")
        return _decode(rows[0]) if rows else None

    def for_run(self, run_dir: str | Path) -> dict | None:
        """The newest job that trains ``run_dir``, if any."""
        rows = self._read(
            "SELECT * FROM queue WHERE run_dir = ? ORDER BY created DESC LIMIT 1", (str(Path(run_dir).resolve()),)
        )
        return _decode(rows[0]) if rows else None

    def cancel_requested(self, job_id: str) -> bool:
        rows = self._read("SELECT cancel_requested FROM queue WHERE id = ?", (job_id,))
        return bool(rows and rows[0]["cancel_requested"])

    # -- changes ----------------------------------------------------------------------------
    def add(
        self,
        config: TrainConfig,
        *,
        group: str | None = None,
        out_dir: str | Path | None = None,
        run_dir: str | Path | None = None,
    ) -> str:
        """Queue a job; with ``run_dir`` it resumes that run instead of starting a new one."""
        config.validate()
        job_id = uuid.uuid4().hex[:10]
        with self._write() as con:
            con.execute(
                "INSERT INTO queue (id, group_id, state, config, out_dir, run_dir, resume, created, updated) "
                "VALUES (?, ?, 'queued', ?, ?, ?, ?, ?, ?)",
                (
                    job_id,
                    group,
                    json.dumps(config.to_dict()),
                    str(Path(out_dir or runs.models_dir()).resolve()),
                    str(Path(run_dir).resolve()) if run_dir else None,
                    1 if run_dir else 0,
                    time.time(),
                    time.time(),
                ),
            )
        return job_id

    def claim(self, job_id: str, gpu: str | None = None) -> str | None:
        """queued -> running in one step; returns the claim token, or None when the job was no
        longer queued (cancelled in between). Every later write of this attempt names the token."""
        token = uuid.uuid4().hex
        with self._write() as con:
            claimed = (
                con.execute(
                    "UPDATE queue SET state = 'running', token = ?, pid = NULL, gpu = ?, started = ?, updated = ?, "
                    "finished = NULL, attempts = attempts + 1, stage = NULL, epoch = NULL, epochs = NULL, "
                    "batch = NULL, batches = NULL, metrics = NULL WHERE id = ? AND state = 'queued'",
                    (token, gpu, time.time(), time.time(), job_id),
                ).rowcount
                == 1
            )
        return token if claimed else None

    def set_owned(self, job_id: str, token: str, **fields) -> bool:
        """Update a running job only while ``token``'s attempt holds it; True when it does."""
        if "metrics" in fields and fields["metrics"] is not None:
            fields["metrics"] = json.dumps(fields["metrics"])
        return self._update("id = ? AND token = ? AND state = 'running'", (job_id, token), fields)

    def end(
        self, job_id: str, token: str | None = None, *, outcome: str | None = None, error: str | None = None
    ) -> bool:
        """running -> ended (only ``token``'s attempt, when given). ``outcome``/``error`` are kept
        for a job whose run has no record of its own; True when this call ended it."""
        where, args = ("id = ? AND state = 'running'", (job_id,))
        if token is not None:
            where, args = where + " AND token = ?", (job_id, token)
        return self._update(
            where, args, {"state": "ended", "finished": time.time(), "outcome": outcome, "error": error}
        )

    def cancel_queued(self, job_id: str) -> bool:
        """queued -> ended (cancelled before it started); True when it was still queued."""
        return self._update(
            "id = ? AND state = 'queued'",
            (job_id,),
            {"state": "ended", "finished": time.time(), "outcome": "cancelled", "error": "cancelled before it started"},
        )

    def request_cancel(self, job_id: str) -> bool:
        """Ask a running job to stop at its next batch; True when it is running."""
        return self._update("id = ? AND state = 'running'", (job_id,), {"cancel_requested": 1})

    def requeue(self, job_id: str, *, resume: bool, run_dir: str | None) -> bool:
        """ended -> queued for another attempt; True when it had ended."""
        return self._update(
            "id = ? AND state = 'ended'",
            (job_id,),
            {
                "state": "queued",
                "resume": 1 if resume else 0,
                "run_dir": run_dir,
                "cancel_requested": 0,
                "token": None,
                "pid": None,
                "finished": None,
                "outcome": None,
                "error": None,
                **{k: None for k in _PROGRESS},
            },
        )


def _decode(row: dict) -> dict:
    row = dict(row)
    row["config"] = json.loads(row["config"])
    row["metrics"] = json.loads(row["metrics"]) if row.get("metrics") else None
    return row
