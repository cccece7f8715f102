"""Background jobs: real worker processes, a real scheduler, a real SQLite store."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from conftest import REPO, make_class_folders
from cxrcore.jobs import store as J
from cxrcore import runs
from cxrcore.config import HeadConfig, TrainConfig
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
    return J.JobStore(tmp_path / "models" / "jobs.sqlite")


def config(data, **changes) -> TrainConfig:
    base = dict(data=str(data), backbone="simple_cnn", weights="none", image_size=32, batch_size=8, epochs=2,
                fine_tune_epochs=1, patience=0, reduce_lr_patience=0, head=HeadConfig(dense_units=[8], dropout=0.0))
    return TrainConfig(**{**base, **changes})


def wait_for(predicate, timeout=120, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_submitted_job_runs_to_succeeded_in_its_own_process(store, data, tmp_path):
    job_id = J.submit(config(data), store=store, out_dir=tmp_path / "models")
    assert store.get(job_id)["status"] in ("queued", "running")
    job = J.wait(job_id, store=store, timeout=180)
    assert job["status"] == "succeeded", job["error"]
    assert job["pid"] != os.getpid() and job["device"] == "CPU"
    run = runs.RunDir(job["run_dir"])
    for name in (runs.MODEL, runs.METRICS, runs.PREDICTIONS, runs.HISTORY, runs.INFO, J.JOB_LOG):
        assert run.file(name).is_file(), name
    assert not (run.path / "state").exists()           # resume state is dropped after success
    assert f"job {job_id}: succeeded" in run.file(J.JOB_LOG).read_text()
    history = store.epochs(job_id)
    assert [h["epoch"] for h in history] == [1, 2, 3] and "val_loss" in history[0]
    assert (job["stage"], job["epoch"], job["epochs"]) == ("finetune", 3, 3)


def test_graceful_cancel_keeps_a_loadable_checkpoint(store, data, tmp_path):
    job_id = J.submit(config(data, epochs=300, batch_size=2), store=store, out_dir=tmp_path / "models")
    wait_for(lambda: len(store.epochs(job_id)) >= 1, what="a first epoch")
    job = J.cancel(job_id, store=store, wait=60)
    assert job["status"] == "cancelled" and job["error"] == "cancelled on request"
    run = runs.RunDir(job["run_dir"])
    assert run.info()["status"] == "cancelled"
    assert run.info()["epochs_completed"] < 300
    model = load_model(run.file(runs.MODEL))
    assert model.output.shape == (None, 2)


def test_cancelling_a_queued_job_never_starts_it(store, data, tmp_path):
    job_id = J.submit(config(data), store=store, out_dir=tmp_path / "models", start_scheduler=False)
    job = J.cancel(job_id, store=store)
    assert job["status"] == "cancelled" and job["run_dir"] is None
    with pytest.raises(J.JobError, match="already cancelled"):
        J.cancel(job_id, store=store)


def test_kill_9_is_detected_and_resume_carries_the_epochs_over(store, data, tmp_path):
    job_id = J.submit(config(data, epochs=25, fine_tune_epochs=2, batch_size=4), store=store,
                      out_dir=tmp_path / "models")
    wait_for(lambda: len(store.epochs(job_id)) >= 3, what="three epochs")
    os.kill(store.get(job_id)["pid"], signal.SIGKILL)
    job = wait_for(lambda: (j := store.get(job_id))["status"] != "running" and j, what="the crash to be noticed")
    assert job["status"] == "failed"
    assert "SIGKILL" in job["error"]
    state = json.loads((runs.RunDir(job["run_dir"]).path / "state" / "resume.json").read_text())
    assert state["epochs_done"] >= 3

    J.resume(job_id, store=store)
    job = J.wait(job_id, store=store, timeout=240)
    assert job["status"] == "succeeded", job["error"]
    assert job["resumed_from_epoch"] >= 3 and job["attempts"] == 2
    run = runs.RunDir(job["run_dir"])
    history = run.history()
    assert history["epoch"].tolist() == list(range(1, 28))      # no epoch lost or repeated
    assert history["stage"].tolist() == ["frozen"] * 25 + ["finetune"] * 2
    assert run.info()["resumed_from_epoch"] == job["resumed_from_epoch"]
    assert "resuming" in run.file(J.JOB_LOG).read_text()
    assert not [p for p in run.path.rglob("*") if ".tmp" in p.name], "half-written files left behind"


def test_two_submissions_queue_and_both_finish(store, data, tmp_path):
    first = J.submit(config(data), store=store, out_dir=tmp_path / "models")
    second = J.submit(config(data, seed=2), store=store, out_dir=tmp_path / "models")
    wait_for(lambda: store.get(first)["status"] == "running", what="the first job to start")
    assert store.get(second)["status"] == "queued"            # one at a time on a CPU
    assert J.wait(second, store=store, timeout=240)["status"] == "succeeded"
    a, b = store.get(first), store.get(second)
    assert a["status"] == "succeeded"
    assert a["finished"] <= b["started"]
    assert a["run_dir"] != b["run_dir"]


def test_many_readers_while_a_job_writes_see_no_errors(store, data, tmp_path):
    job_id = J.submit(config(data, epochs=6, batch_size=2), store=store, out_dir=tmp_path / "models")
    errors, reads = [], [0]

    def reader():
        mine = J.JobStore(store.path)
        while store.get(job_id)["status"] in ("queued", "running"):
            try:
                mine.list()
                mine.get(job_id)
                mine.epochs(job_id)
                reads[0] += 1
            except Exception as exc:  # noqa: BLE001 - any error is a failure here
                errors.append(repr(exc))

    threads = [threading.Thread(target=reader) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=240)
    assert errors == []
    assert reads[0] > 50
    assert store.get(job_id)["status"] == "succeeded"


def test_a_comparison_is_one_job_per_backbone_in_one_group(store, data, tmp_path):
    group, ids = J.submit_comparison(config(data, weights="imagenet"), ["mobilenetv2_0.35", "simple_cnn"],
                                     store=store, start_scheduler=False)
    jobs = store.list(group=group)
    assert sorted(j["id"] for j in jobs) == sorted(ids)
    by_backbone = {j["config"]["backbone"]: j["config"] for j in jobs}
    assert by_backbone["mobilenetv2_0.35"]["weights"] == "imagenet"
    assert by_backbone["simple_cnn"]["weights"] == "none"        # no ImageNet weights exist for it
    assert by_backbone["simple_cnn"]["data"] == by_backbone["mobilenetv2_0.35"]["data"]


def test_a_running_job_whose_process_is_gone_is_marked_failed(store, data):
    job_id = store.add(config(data))
    store.update(job_id, status="running", pid=2 ** 22 + 7)      # no such process
    J.Scheduler(store, idle_exit=0).reap()
    job = store.get(job_id)
    assert job["status"] == "failed" and "is gone" in job["error"]


def test_submit_checks_the_data_before_queueing(store, tmp_path):
    with pytest.raises(Exception, match="dataset not found"):
        J.submit(config(tmp_path / "nowhere"), store=store, start_scheduler=False)
    assert store.list() == []


def cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "cxrcore", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env={**os.environ, **(env or {})})


def test_cli_submit_show_list_and_errors(data, tmp_path):
    db = tmp_path / "m" / "jobs.sqlite"
    proc = cli("jobs", "--db", db, "submit", "--data", data, "--backbone", "simple_cnn", "--image-size", 32,
               "--epochs", 1, "--fine-tune-epochs", 0, "--out", tmp_path / "m")
    assert proc.returncode == 0, proc.stderr[-2000:]
    job_id = proc.stdout.strip().splitlines()[-1]
    assert cli("jobs", "--db", db, "wait", job_id).stdout.strip() == "succeeded"
    shown = json.loads(cli("jobs", "--db", db, "show", job_id, "--history").stdout)
    assert {"id", "status", "pid", "device", "stage", "epoch", "run_dir", "error"} <= set(shown)
    assert shown["status"] == "succeeded" and len(shown["history"]) == 1
    listing = cli("jobs", "--db", db, "list").stdout
    assert job_id in listing and "succeeded" in listing
    bad = cli("jobs", "--db", db, "show", "nosuchjob")
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1] == "error: no job nosuchjob"
    again = cli("jobs", "--db", db, "resume", job_id)
    assert again.returncode == 2 and "only failed or cancelled jobs can be resumed" in again.stderr


def test_mirrored_strategy_over_logical_cpus(data, tmp_path):
    """The multi-GPU code path (MirroredStrategy), run on a CPU split into two logical devices."""
    proc = cli("train", "--data", data, "--backbone", "simple_cnn", "--image-size", 32, "--epochs", 1,
               "--fine-tune-epochs", 1, "--batch-size", 8, "--out", tmp_path / "m",
               env={"CXRCORE_CPU_REPLICAS": "2"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads((runs.RunDir(proc.stdout.strip().splitlines()[-1]).file(runs.INFO)).read_text())
    assert info["replicas"] == 2 and info["strategy"] == "mirrored (logical CPUs)"
    assert info["status"] == "succeeded" and info["epochs_completed"] == 2
