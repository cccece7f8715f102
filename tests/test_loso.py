"""Leave one source out: folds by hand, and a tiny three-source study end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import conftest
from conftest import cli, once_per_session, tiny_config
from cxrcore import runs
from cxrcore.data.sources import fold_split, loso_folds
from cxrcore.errors import DataError

TRAINING_FIXTURES = ("three_sources",)  # the end-to-end study trains: sorted with the slow tests


def frame_of(rows):
    return pd.DataFrame(rows, columns=["path", "label", "patient_id", "source", "split"])


def test_folds_are_the_sources_that_hold_both_classes():
    rows = [
        (f"{s}{i}.png", label, f"{s}{i}", s, "")
        for s in ("north", "south")
        for i, label in enumerate(["A"] * 6 + ["B"] * 6)
    ]
    rows += [(f"east{i}.png", "A", f"east{i}", "east", "") for i in range(8)]  # one class only
    rows += [(f"tiny{i}.png", label, f"tiny{i}", "tiny", "") for i, label in enumerate("AB")]  # too few
    rows += [(f"x{i}.png", "B", "", "", "") for i in range(3)]  # no source: always trains
    folds, skipped = loso_folds(frame_of(rows), ["A", "B"])
    assert folds == ["north", "south"]
    assert skipped == {"east": "holds one class only (A, 8 images)", "tiny": "2 images (a fold needs 10)"}
    split = fold_split(frame_of(rows), "south", val_fraction=0.25, seed=0)
    assert set(split.loc[split["split"] == "test", "source"]) == {"south"}
    assert (split["split"] == "test").sum() == 12
    assert set(split.loc[split["source"] != "south", "split"]) == {"train", "val"}
    with pytest.raises(DataError, match="no image has a source"):
        loso_folds(frame_of([("a.png", "A", "", "", "")]), ["A"])
    with pytest.raises(DataError, match="no source can be held out .*east: holds one class only"):
        loso_folds(frame_of([r for r in rows if r[3] in ("east", "")]), ["A", "B"])


@pytest.fixture(scope="module")
def three_sources(tmp_path_factory):
    """Sources north and south hold both classes (B brighter than A), east holds A only: the study's folder
    and what the command wrote to stderr. Made once per session (conftest.once_per_session: under xdist this
    module's tests may run on two workers); the tests only read it."""
    return once_per_session(tmp_path_factory, "test_loso.three_sources", lambda: _study(tmp_path_factory))


def _study(tmp_path_factory):
    root = tmp_path_factory.mktemp("three-sources")
    rng = np.random.default_rng(0)
    lines = ["path,label,patient_id,source"]
    for source, labels in (("north", "AB"), ("south", "AB"), ("east", "A")):
        for label in labels:
            for i in range(12):
                value = 60 if label == "A" else 190
                pixels = np.clip(rng.normal(value, 20, (32, 32)), 0, 255).astype(np.uint8)
                name = f"{source}-{label}-{i}.png"
                Image.fromarray(pixels).save(root / name)
                lines.append(f"{name},{label},{source}-{label}-{i},{source}")
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    config = tiny_config(root, epochs=1, val_fraction=0.2)
    out = root / "models"
    ran = cli("train", "--config", _save(config, root), "--loso", "--out", out)
    return Path(ran.stdout.strip().splitlines()[-1]), ran.stderr


def _save(config, root):
    path = root / "config.json"
    config.save(path)
    return path


def test_a_study_holds_one_run_per_fold_and_its_summary(three_sources):
    folder, stderr = three_sources
    study = json.loads((folder / runs.LOSO).read_text())
    assert study["status"] == "complete" and study["classes"] == ["A", "B"]
    assert [f["source"] for f in study["folds"]] == ["north", "south"]
    assert study["skipped"] == {"east": "holds one class only (A, 12 images)"}
    for fold in study["folds"]:
        run = runs.RunDir(folder / fold["run"])
        assert run.status() == "succeeded"
        test = run.split()
        test = test[test["split"] == "test"]
        assert set(test["source"]) == {fold["source"]} and fold["n"] == len(test) == 24
        assert fold["prevalence"] == {"A": 0.5, "B": 0.5}
        assert fold["auc"] == run.metrics()["macro_auc"]
        assert run.loso()["held_out"] == fold["source"]
        assert f"trained without `{fold['source']}`" in run.model_card()
    aucs = [f["auc"] for f in study["folds"]]
    assert study["mean_auc"] == pytest.approx(np.mean(aucs))
    assert study["worst"] == study["folds"][int(np.argmin(aucs))]["source"]
    assert "mean AUC" in stderr and "not held out: east (holds one class only" in stderr
    assert [s["folder"] for s in runs.list_loso(folder.parent)] == [str(folder)]


def test_evaluate_and_compare_show_the_study(three_sources, monkeypatch):
    from streamlit.testing.v1 import AppTest

    folder, _ = three_sources
    monkeypatch.setenv("CXRCORE_MODELS", str(folder.parent))
    monkeypatch.setenv("CXRCORE_SCHEDULER_IDLE_EXIT", "2")
    at = AppTest.from_file(str(conftest.REPO / "app.py"), default_timeout=120)
    # straight to the Evaluate page: the app's root (the Data page) would audit the built-in demo data first
    for page in ("pages/evaluate.py", "pages/compare.py"):
        at.switch_page(page)
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        shown = [d.value for d in at.dataframe]
        study = [t for t in shown if "held-out source" in t.columns]
        assert study and list(study[0]["held-out source"])[:2] == ["north", "south"], page
        assert "mean" in list(study[0]["held-out source"])
    at.switch_page("pages/evaluate.py")
    at.run()
    assert any("This run is one fold" in m.value for m in at.markdown)


def test_a_study_queued_as_jobs_is_one_group_into_its_folder(three_sources, tmp_path, monkeypatch):
    from cxrcore import workflows
    from cxrcore.jobs import queue
    from cxrcore.jobs.store import JobStore

    monkeypatch.setattr(queue, "ensure_scheduler", lambda store: None)  # queued, not run
    monkeypatch.setenv("CXRCORE_MODELS", str(tmp_path / "models"))
    data = three_sources[0].parent.parent / "manifest.csv"
    store = JobStore(tmp_path / "jobs.sqlite")
    folder, group, ids = workflows.submit_loso(tiny_config(data.parent, epochs=1), store=store)
    jobs = store.list(group=group)
    assert len(ids) == len(jobs) == 2 and {j["out_dir"] for j in jobs} == {str(folder)}
    assert sorted(Path(j["config"]["data"]).name for j in jobs) == ["fold-1.csv", "fold-2.csv"]
    study = runs.read_loso(folder)
    assert study["status"] == "planned" and [f["status"] for f in study["folds"]] == ["queued", "queued"]
    assert study["mean_auc"] is None and study["skipped"] == {"east": "holds one class only (A, 12 images)"}
