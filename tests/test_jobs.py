"""Background jobs: real worker processes, a real scheduler, a real SQLite store."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

import conftest
from conftest import REPO, cli, make_class_folders, once_per_session, python_m_cxrcore
from cxrcore import runs
from cxrcore.config import TrainConfig
from cxrcore.errors import RunError
from cxrcore.jobs import queue as job_queue
from cxrcore.jobs import scheduler as scheduler_module
from cxrcore.jobs.scheduler import Scheduler
from cxrcore.jobs.store import JOB_LOG, JobError, JobStore
from cxrcore.training.model import load_model

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _quick_scheduler(monkeypatch):
    monkeypatch.setenv("CXRCORE_SCHEDULER_IDLE_EXIT", "3")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")


@pytest.fixture
def data(tmp_path):
    return make_class_folders(tmp_path / "data", per_class=16, size=24)


@pytest.fixture
def store(tmp_path):
    return JobStore(tmp_path / "models" / "jobs.sqlite")


def config(data, **changes) -> TrainConfig:
    """conftest's tiny run with a one-epoch fine-tune stage, at TrainConfig's default seed."""
    return conftest.tiny_config(data, **{"fine_tune_epochs": 1, "seed": TrainConfig.seed, **changes})


def wait_for(predicate, timeout=120, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def epochs_done(store, job_id) -> int:
    run_dir = store.get(job_id)["run_dir"]
    return len(runs.RunDir(run_dir).history()) if run_dir else 0


def fingerprint(run: runs.RunDir) -> dict:
    """Content hashes of the files a finished run must never change."""
    return {
        name: hashlib.sha256(run.file(name).read_bytes()).hexdigest()
        for name in (runs.MODEL, runs.HISTORY, runs.METRICS, runs.PREDICTIONS, runs.INFO)
    }


@pytest.fixture(scope="module")
def two_jobs(tmp_path_factory):
    """Two jobs submitted at once to one store and run to the end by the scheduler's worker processes,
    eight threads reading the queue and the runs' histories while the first one trains: what was seen on
    the way and at the end. Made once per session (conftest.once_per_session: under xdist this module's tests
    may run on two workers).
    Tests read it; one that changes the queue works on a copy of its database."""

    def make():
        root = tmp_path_factory.mktemp("two-jobs")
        data = make_class_folders(root / "data", per_class=16, size=24)
        store = JobStore(root / "models" / "jobs.sqlite")
        seen = {}
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("CXRCORE_SCHEDULER_IDLE_EXIT", "3")
            first = job_queue.submit(config(data), store=store, out_dir=root / "models")
            seen["first_at_submission"] = job_queue.get(first, store=store)["status"]
            # the second job's own training is not under test here: one stage
            second = job_queue.submit(config(data, seed=2, fine_tune_epochs=0), store=store, out_dir=root / "models")
            errors, reads = [], [0]

            def reader():
                mine = JobStore(store.path)
                while store.get(first)["state"] in ("queued", "running"):  # while the first job writes
                    try:
                        job_queue.list_jobs(store=mine)
                        for job_id in (first, second):
                            job = job_queue.get(job_id, store=mine)
                            if job["run_dir"]:
                                runs.RunDir(job["run_dir"]).history()
                        reads[0] += 1
                    except Exception as exc:  # noqa: BLE001 - any error is a failure here
                        errors.append(repr(exc))

            threads = [threading.Thread(target=reader) for _ in range(8)]
            for t in threads:
                t.start()
            wait_for(lambda: store.get(first)["state"] == "running", what="the first job to start")
            seen["second_while_first_runs"] = store.get(second)["state"]
            done = {job_id: job_queue.wait(job_id, store=store, timeout=240) for job_id in (first, second)}
            for t in threads:
                t.join(timeout=240)
        seen.update(jobs=done, errors=errors, reads=reads[0])
        return SimpleNamespace(store=store, first=first, second=second, **seen)

    return once_per_session(tmp_path_factory, "test_jobs.two_jobs", make)


def test_a_submitted_job_runs_to_succeeded_in_its_own_process(two_jobs):
    job_id, store = two_jobs.first, two_jobs.store
    assert two_jobs.first_at_submission in ("queued", "running")
    job = two_jobs.jobs[job_id]
    assert job["status"] == "succeeded", job["error"]
    assert job["pid"] != os.getpid() and job["device"] == "CPU" and job["state"] == "ended"
    run = runs.RunDir(job["run_dir"])
    for name in (runs.MODEL, runs.METRICS, runs.PREDICTIONS, runs.HISTORY, runs.INFO, JOB_LOG):
        assert run.file(name).is_file(), name
    assert not (run.path / "state").exists()  # resume state is dropped after success
    assert f"job {job_id}: succeeded" in run.file(JOB_LOG).read_text()
    history = run.history()  # the run owns its history; the queue keeps none
    assert history["epoch"].tolist() == [1, 2, 3] and "val_loss" in history
    assert (job["stage"], job["epoch"], job["epochs"]) == ("finetune", 3, 3)
    assert job["epochs_completed"] == 3 and run.status() == "succeeded"
    assert job_queue.get(job_id, store=store)["status"] == "succeeded"


@pytest.fixture(scope="module")
def cancelled_job(tmp_path_factory):
    """A 300-epoch job cancelled gracefully once its first epoch is done: the store, the job's id and
    what the cancel returned. Made once per session (conftest.once_per_session)."""

    def make():
        root = tmp_path_factory.mktemp("cancelled")
        data = make_class_folders(root / "data", per_class=16, size=24)
        store = JobStore(root / "models" / "jobs.sqlite")
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("CXRCORE_SCHEDULER_IDLE_EXIT", "3")
            job_id = job_queue.submit(config(data, epochs=300, batch_size=2), store=store, out_dir=root / "models")
            wait_for(lambda: epochs_done(store, job_id) >= 1, what="a first epoch")
            job = job_queue.cancel(job_id, store=store, wait=60)
        return SimpleNamespace(store=store, job_id=job_id, job=job, root=root)

    return once_per_session(tmp_path_factory, "test_jobs.cancelled_job", make)


def test_graceful_cancel_keeps_a_loadable_checkpoint_and_counts_only_whole_epochs(cancelled_job):
    job = cancelled_job.job
    assert job["status"] == "cancelled"
    run = runs.RunDir(job["run_dir"])
    assert run.status() == "cancelled"
    done = run.epochs_completed()
    assert 1 <= done < 300
    # the epoch the cancel cut short is not counted anywhere: history, resume state, the record
    assert run.history()["epoch"].tolist() == list(range(1, done + 1))
    assert run.resume_state()["epochs_done"] == done
    model = load_model(run.file(runs.MODEL))
    assert model.output.shape == (None, 2)


def test_cancelling_a_queued_job_never_starts_it(store, data, tmp_path):
    job_id = job_queue.submit(config(data), store=store, out_dir=tmp_path / "models", start_scheduler=False)
    job = job_queue.cancel(job_id, store=store)
    assert job["status"] == "cancelled" and job["run_dir"] is None and job["error"] == "cancelled before it started"
    with pytest.raises(JobError, match="already cancelled"):
        job_queue.cancel(job_id, store=store)
    Scheduler(store, idle_exit=0).start_jobs()  # nothing left to claim: no worker, no folder
    assert not list((tmp_path / "models").glob("*-simple_cnn"))


def test_kill_9_is_recorded_in_the_run_and_resume_carries_the_epochs_over(store, data, tmp_path):
    job_id = job_queue.submit(
        config(data, epochs=25, fine_tune_epochs=2, batch_size=4), store=store, out_dir=tmp_path / "models"
    )
    wait_for(
        lambda: (
            (runs.RunDir(store.get(job_id)["run_dir"]).resume_state() or {}).get("epochs_done", 0) >= 3
            if store.get(job_id)["run_dir"]
            else False
        ),
        what="three epochs",
    )
    os.kill(store.get(job_id)["pid"], signal.SIGKILL)
    job = wait_for(
        lambda: (j := job_queue.get(job_id, store=store))["state"] == "ended" and j, what="the crash to be noticed"
    )
    run = runs.RunDir(job["run_dir"])
    assert job["status"] == "failed" == run.status()  # one owner: the run says so, the job shows it
    assert "SIGKILL" in job["error"] and "SIGKILL" in run.error()
    assert run.resume_state()["epochs_done"] >= 3

    job_queue.resume(job_id, store=store)
    job = job_queue.wait(job_id, store=store, timeout=240)
    assert job["status"] == "succeeded", job["error"]
    assert job["resumed_from_epoch"] >= 3 and job["attempts"] == 2
    history = run.history()
    assert history["epoch"].tolist() == list(range(1, 28))  # no epoch lost or repeated
    assert history["stage"].tolist() == ["frozen"] * 25 + ["finetune"] * 2
    assert run.info()["resumed_from_epoch"] == job["resumed_from_epoch"]
    assert "resuming" in run.file(JOB_LOG).read_text()
    assert not [p for p in run.path.rglob("*") if ".tmp" in p.name], "half-written files left behind"


def test_a_finished_run_is_final_whatever_its_job_row_says(two_jobs, tmp_path):
    """Failure 1: resuming through the job path a job whose run had finished (its row said failed or
    cancelled, e.g. after a late forced cancel) retrained it from epoch 1 and overwrote model.keras."""
    store = JobStore(tmp_path / "jobs.sqlite")  # a copy of the queue: this test rewrites its rows
    shutil.copy(two_jobs.store.path, store.path)
    job_id = two_jobs.first
    run = runs.RunDir(two_jobs.jobs[job_id]["run_dir"])
    before = fingerprint(run)
    with pytest.raises(JobError, match="already succeeded"):
        job_queue.cancel(job_id, store=store, force=True)  # a cancel that arrives late changes nothing
    with sqlite3.connect(store.path) as con:  # the row as the old design could leave it
        con.execute("UPDATE queue SET outcome = 'cancelled', error = 'killed on request' WHERE id = ?", (job_id,))
    assert job_queue.get(job_id, store=store)["status"] == "succeeded"  # the run's word wins
    with pytest.raises(RunError, match="already finished"):
        job_queue.resume(job_id, store=store)
    with pytest.raises(RunError, match="already finished"):
        job_queue.resume_run(run.path, store=store)
    # even a worker handed the job behind the queue's back refuses to write into the run
    assert store.requeue(job_id, resume=True, run_dir=str(run.path))
    scheduler_module.ensure_scheduler(store)
    wait_for(lambda: (j := store.get(job_id))["state"] == "ended" and j["attempts"] == 2, what="the second attempt")
    assert "already finished" in run.file(JOB_LOG).read_text()
    assert fingerprint(run) == before


def _claimed(store, job_id, tmp_path, *, resume_run_dir=None):
    """What the scheduler does before the worker starts: claim, make the run folder, record it."""
    token = store.claim(job_id)
    run = runs.RunDir(resume_run_dir) if resume_run_dir else runs.new_run_dir("simple_cnn", tmp_path / "models")
    store.set_owned(job_id, token, run_dir=str(run.path))
    return token, run


def _worker(store, job_id, token):
    return subprocess.run(
        [sys.executable, "-m", "cxrcore.jobs.worker", job_id, "--db", str(store.path), "--token", token],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_cancel_between_the_claim_and_the_worker_start_wins(store, data, tmp_path):
    """Failure 2, new job: the worker crashed on a missing run directory and left an orphan folder."""
    job_id = store.add(config(data), out_dir=tmp_path / "models")
    token, run = _claimed(store, job_id, tmp_path)
    job_queue.cancel(job_id, store=store)  # lands before the worker starts work
    proc = _worker(store, job_id, token)
    assert proc.returncode == 0, proc.stderr[-2000:]
    job = job_queue.get(job_id, store=store)
    assert job["status"] == "cancelled" and job["error"] == "cancelled before it started"
    assert not run.path.exists()  # no orphan run folder

    # a forced cancel before the worker starts: the worker finds the job is no longer its own
    job_id = store.add(config(data), out_dir=tmp_path / "models")
    token, run = _claimed(store, job_id, tmp_path)
    assert job_queue.cancel(job_id, store=store, force=True)["status"] == "cancelled"
    proc = _worker(store, job_id, token)
    assert proc.returncode == 0 and "nothing was trained" in proc.stdout
    assert not run.path.exists()


def test_a_cancelled_resume_never_trains_its_run(cancelled_job, tmp_path):
    """Failure 2, resumed job: the job stayed cancelled while its run trained on to succeeded."""
    store, job_id = cancelled_job.store, cancelled_job.job_id
    run = runs.RunDir(cancelled_job.job["run_dir"])
    done = run.epochs_completed()
    assert store.requeue(job_id, resume=True, run_dir=str(run.path))
    token, _ = _claimed(store, job_id, tmp_path, resume_run_dir=run.path)
    job_queue.cancel(job_id, store=store)
    proc = _worker(store, job_id, token)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert run.status() == "cancelled" and run.epochs_completed() == done
    assert job_queue.get(job_id, store=store)["status"] == "cancelled"
    assert run.path.is_dir()  # a resumed run's folder is never removed


class _FakeProcess:
    pid = 2**22 + 11

    def poll(self):
        return None


def test_a_job_whose_run_directory_was_deleted_fails_and_the_queue_goes_on(store, data, tmp_path, monkeypatch):
    """Failure 8: the scheduler crashed on job.log and every later scheduler picked the same job first."""
    started = []

    def fake_spawn(args, log, env):
        log.close()
        started.append(args)
        return _FakeProcess()

    monkeypatch.setattr(scheduler_module, "spawn", fake_spawn)
    gone = tmp_path / "models" / "20260101-000000-simple_cnn"
    broken = store.add(config(data), out_dir=tmp_path / "models", run_dir=gone)
    fine = store.add(config(data), out_dir=tmp_path / "models")
    Scheduler(store, idle_exit=0).step()
    job = job_queue.get(broken, store=store)
    assert job["status"] == "failed" and "no longer exists" in job["error"]
    assert store.get(fine)["state"] == "running" and started and started[0][1] == fine


def test_a_running_job_whose_process_is_gone_is_marked_failed(store, data, tmp_path):
    job_id = store.add(config(data))
    token = store.claim(job_id)
    run = runs.new_run_dir("simple_cnn", tmp_path / "models")
    run.update_info(status="running", pid=2**22 + 7, host=__import__("socket").gethostname())
    store.set_owned(job_id, token, pid=2**22 + 7, run_dir=str(run.path))  # no such process
    assert job_queue.get(job_id, store=store)["status"] == "interrupted"  # the run's view, before reaping
    Scheduler(store, idle_exit=0).reap()
    job = job_queue.get(job_id, store=store)
    assert job["status"] == "failed" and "is gone" in job["error"]
    assert run.status() == "failed" and "is gone" in run.error()


def test_two_submissions_queue_and_both_finish(two_jobs):
    first, second, store = two_jobs.first, two_jobs.second, two_jobs.store
    assert two_jobs.second_while_first_runs == "queued"  # one at a time on a CPU
    assert two_jobs.jobs[second]["status"] == "succeeded"
    a, b = job_queue.get(first, store=store), job_queue.get(second, store=store)
    assert a["status"] == "succeeded"
    assert a["finished"] <= b["started"]
    assert a["run_dir"] != b["run_dir"]


def test_many_readers_while_a_job_writes_see_no_errors(two_jobs):
    assert two_jobs.errors == []
    assert two_jobs.reads > 50
    assert all(job["status"] == "succeeded" for job in two_jobs.jobs.values())


def test_a_comparison_is_one_job_per_backbone_in_one_group(store, data, tmp_path):
    group, ids = job_queue.submit_comparison(
        config(data, weights="imagenet"), ["mobilenetv2_0.35", "simple_cnn"], store=store, start_scheduler=False
    )
    jobs = store.list(group=group)
    assert sorted(j["id"] for j in jobs) == sorted(ids)
    by_backbone = {j["config"]["backbone"]: j["config"] for j in jobs}
    assert by_backbone["mobilenetv2_0.35"]["weights"] == "imagenet"
    assert by_backbone["simple_cnn"]["weights"] == "none"  # no ImageNet weights exist for it
    assert by_backbone["simple_cnn"]["data"] == by_backbone["mobilenetv2_0.35"]["data"]


def test_submit_checks_the_data_before_queueing(store, tmp_path):
    with pytest.raises(Exception, match="dataset not found"):
        job_queue.submit(config(tmp_path / "nowhere"), store=store, start_scheduler=False)
    assert store.list() == []


def test_job_id_prefixes_are_matched_literally(store, data):
    """Failure 11: `cancel _` cancelled a job (LIKE without escaping)."""
    job_id = store.add(config(data))
    for pattern in ("_", "%", job_id[:3] + "%"):
        with pytest.raises(JobError, match="no job"):
            job_queue.cancel(pattern, store=store)
    assert store.get(job_id)["state"] == "queued"
    assert store.get(job_id[:4])["id"] == job_id


def test_a_locked_database_says_so(store, data):
    """Failure 11: a failed lock acquisition hid `database is locked` behind `cannot rollback`."""
    holder = sqlite3.connect(store.path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(JobError, match="database is locked"):
            JobStore(store.path, timeout=0.2).add(config(data))
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert store.list() == []


def test_every_entry_point_uses_one_absolute_models_folder(tmp_path, monkeypatch):
    """Failure 10: `jobs submit` from another folder wrote a database no scheduler read."""
    monkeypatch.delenv("CXRCORE_MODELS", raising=False)
    monkeypatch.chdir(tmp_path)
    assert runs.models_dir() == REPO / "models"
    from cxrcore.jobs.store import default_db

    assert default_db() == REPO / "models" / "jobs.sqlite"
    monkeypatch.setenv("CXRCORE_MODELS", "relative/models")
    assert runs.models_dir() == tmp_path / "relative" / "models"  # made absolute where it is read
    # `python -m cxrcore jobs` as a user runs it, from another folder, in its own process (the file's one
    # run of the jobs commands that way; the others go through cxrcore.cli.main)
    proc = python_m_cxrcore(
        "jobs",
        "list",
        "--json",
        cwd=tmp_path / "..",
        check=False,
        timeout=120,
        env={"CXRCORE_MODELS": str(tmp_path / "m"), "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "m" / "jobs.sqlite").is_file()


def test_an_old_job_database_is_carried_over(tmp_path, data):
    """jobs.sqlite from before the queue/run split: its jobs stay listed, with their outcome."""
    path = tmp_path / "old" / "jobs.sqlite"
    path.parent.mkdir()
    with sqlite3.connect(path) as con:
        con.executescript("""
            CREATE TABLE jobs (id TEXT PRIMARY KEY, group_id TEXT, status TEXT NOT NULL, config TEXT NOT NULL,
                out_dir TEXT NOT NULL, run_dir TEXT, created REAL NOT NULL, started REAL, finished REAL, updated REAL,
                pid INTEGER, gpu TEXT, device TEXT, stage TEXT, epoch INTEGER, epochs INTEGER, batch INTEGER,
                batches INTEGER, metrics TEXT, error TEXT, cancel_requested INTEGER NOT NULL DEFAULT 0,
                resume INTEGER NOT NULL DEFAULT 0, attempts INTEGER NOT NULL DEFAULT 0, resumed_from_epoch INTEGER);
            CREATE TABLE epochs (job_id TEXT, epoch INTEGER, stage TEXT, metrics TEXT, time REAL);""")
        con.execute(
            "INSERT INTO jobs (id, status, config, out_dir, created, error) VALUES (?, ?, ?, ?, ?, ?)",
            (
                "abc123",
                "cancelled",
                json.dumps(config(data).to_dict()),
                str(tmp_path),
                1.0,
                "cancelled before it started",
            ),
        )
    store = JobStore(path)
    job = job_queue.get("abc123", store=store)
    assert job["state"] == "ended" and job["status"] == "cancelled"
    with sqlite3.connect(path) as con:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert tables == {"queue"}


def test_cli_submit_show_list_and_errors(data, tmp_path):
    """The jobs commands through cxrcore.cli.main; the job itself runs in the scheduler's worker process."""
    db = tmp_path / "m" / "jobs.sqlite"
    proc = cli(
        "jobs",
        "--db",
        db,
        "submit",
        "--data",
        data,
        "--backbone",
        "simple_cnn",
        "--image-size",
        32,
        "--epochs",
        1,
        "--fine-tune-epochs",
        0,
        "--out",
        tmp_path / "m",
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    job_id = proc.stdout.strip().splitlines()[-1]
    # at most 300 s, as when this ran in a process the test stopped after 300 s
    assert cli("jobs", "--db", db, "wait", job_id, "--timeout", 300, check=False).stdout.strip() == "succeeded"
    shown = json.loads(cli("jobs", "--db", db, "show", job_id, "--history", check=False).stdout)
    assert {"id", "status", "pid", "device", "stage", "epoch", "run_dir", "error"} <= set(shown)
    assert shown["status"] == "succeeded" and len(shown["history"]) == 1
    listing = cli("jobs", "--db", db, "list", check=False).stdout
    assert job_id in listing and "succeeded" in listing
    bad = cli("jobs", "--db", db, "show", "nosuchjob", check=False)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1] == "error: no job nosuchjob"
    again = cli("jobs", "--db", db, "resume", job_id, check=False)
    assert again.returncode == 2 and "already finished" in again.stderr


def test_mirrored_strategy_over_logical_cpus(data, tmp_path):
    """The multi-GPU code path (MirroredStrategy), run on a CPU split into two logical devices.

    In a process of its own: TensorFlow takes a logical device configuration only before its runtime starts,
    and in the test process it has long started."""
    proc = python_m_cxrcore(
        "train",
        "--data",
        data,
        "--backbone",
        "simple_cnn",
        "--image-size",
        32,
        "--epochs",
        1,
        "--fine-tune-epochs",
        1,
        "--batch-size",
        8,
        "--out",
        tmp_path / "m",
        env={"CXRCORE_CPU_REPLICAS": "2"},
        check=False,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads((runs.RunDir(proc.stdout.strip().splitlines()[-1]).file(runs.INFO)).read_text())
    assert info["replicas"] == 2 and info["strategy"] == "mirrored (logical CPUs)"
    assert info["status"] == "succeeded" and info["epochs_completed"] == 2


def _free_ports(n: int) -> list[int]:
    import socket

    sockets = [socket.socket() for _ in range(n)]
    for sock in sockets:
        sock.bind(("localhost", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def test_two_worker_processes_train_one_model_under_multi_worker_mirrored_strategy(data, tmp_path):
    """TF_CONFIG names two workers on this machine (localhost ports, CPU): both train in step, with the
    batch shared between them and the gradients averaged over both, and end with the same model."""
    cluster = {"worker": [f"localhost:{port}" for port in _free_ports(2)]}
    command = [sys.executable, "-m", "cxrcore", "train", "--data", str(data), "--backbone", "simple_cnn"]
    command += ["--image-size", "32", "--epochs", "3", "--fine-tune-epochs", "1", "--batch-size", "8"]
    command += ["--class-weights", "balanced"]
    workers = [
        subprocess.Popen(
            [*command, "--out", str(tmp_path / f"worker{index}")],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={
                **os.environ,
                "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}),
            },
        )
        for index in range(2)
    ]
    try:
        outputs = [worker.communicate(timeout=300) for worker in workers]
    finally:
        for worker in workers:
            worker.kill()
    for worker, (_, err) in zip(workers, outputs):
        assert worker.returncode == 0, err[-3000:]
    chief, other = (runs.RunDir(out.strip().splitlines()[-1]) for out, _ in outputs)
    for index, run in enumerate((chief, other)):
        info = run.info()
        assert info["status"] == "succeeded" and info["epochs_completed"] == 4
        assert info["strategy"] == "multi-worker mirrored" and info["replicas"] == 2
        assert (info["workers"], info["worker"], info["chief"]) == (2, index, index == 0)
        assert run.history()["stage"].tolist() == ["frozen"] * 3 + ["finetune"]
    models = [load_model(run.file(runs.MODEL)) for run in (chief, other)]
    for mine, theirs in zip(models[0].weights, models[1].weights):
        np.testing.assert_allclose(mine.numpy(), theirs.numpy(), rtol=0, atol=1e-6, err_msg=mine.path)
    # both saw the same validation results each epoch: the checkpoints and early stopping stay in step
    pd.testing.assert_frame_equal(
        chief.history().drop(columns=["seconds"]), other.history().drop(columns=["seconds"]), atol=1e-5
    )


def test_a_tf_config_that_names_no_cluster_is_refused_with_the_reason(data, tmp_path, monkeypatch):
    monkeypatch.setenv("TF_CONFIG", json.dumps({"task": {"type": "worker", "index": 0}}))
    proc = cli(
        "train",
        "--data",
        data,
        "--backbone",
        "simple_cnn",
        "--image-size",
        32,
        "--out",
        tmp_path / "m",
        check=False,
    )
    assert proc.returncode == 2
    assert "error: TF_CONFIG must be JSON like" in proc.stderr and "KeyError" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "m").exists() or not any((tmp_path / "m").iterdir())
