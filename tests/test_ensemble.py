"""Ensembles of finished runs: one run that averages its members' calibrated probabilities."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, copy_run, make_class_folders, once_per_session, tiny_config
from cxrcore import runs
from cxrcore.config import HeadConfig
from cxrcore.ensemble import check_members, create, report
from cxrcore.errors import ConfigError
from cxrcore.evaluation.calibration import apply_temperature
from cxrcore.explain.cam import EnsembleExplainer, Explainer
from cxrcore.predict import Predictor
from cxrcore.stats.intervals import paired_differences
from cxrcore.workflows import make_ensemble, train

#: this module's fixtures that train: tests that use them are slow (conftest)
TRAINING_FIXTURES = {"members"}


@pytest.fixture(scope="module")
def members(tmp_path_factory, shared_runs):
    """Trained once per session (conftest.once_per_session: under xdist this module's tests may run on two
    workers) and read-only: a test that writes into a member works on ``copy_run``."""

    def make():
        root = tmp_path_factory.mktemp("ens")
        data = make_class_folders(root / "d", per_class=20)
        out = root / "m"
        a = train(tiny_config(data), out_dir=out)
        b = train(tiny_config(data, head=HeadConfig(dense_units=[16], dropout=0.0)), out_dir=out)
        c = train(tiny_config(data, image_size=48), out_dir=out)  # another input size: resized inside the ensemble
        other_split = train(tiny_config(data, seed=4), out_dir=out)
        three = make_class_folders(root / "three", classes=("A", "B", "C"), per_class=10)
        other_classes = train(tiny_config(three), out_dir=out)
        return {"data": data, "out": out, "a": a, "b": b, "c": c, "split": other_split, "classes": other_classes}

    made = once_per_session(tmp_path_factory, "test_ensemble.members", make)
    shared_runs.freeze(made["out"])
    return made


def test_an_ensemble_averages_its_members_calibrated_probabilities_and_is_a_run_like_any_other(members, tmp_path):
    a, b = members["a"], members["b"]
    run = make_ensemble([a.path, b.path], out_dir=tmp_path)  # the use case: the ensemble, then its card
    assert run.status() == "succeeded" and run.ensemble()["members"] == [str(a.path), str(b.path)]
    assert [m.path for m in run.members()] == [a.path, b.path]
    for name in (runs.MODEL, runs.METRICS, runs.PREDICTIONS, runs.CALIBRATION, runs.OPERATING_POINTS, runs.MODEL_CARD):
        assert run.file(name).is_file(), name
    assert not run.file(runs.FEATURE_STATS).exists()  # no one backbone's features
    assert run.split().equals(a.split()) and run.labels() == a.labels()
    assert run.info()["backbone"] == "ensemble" and run.image_size() == 32
    image = next(members["data"].rglob("*.png"))
    ensemble, first, second = Predictor(run.path), Predictor(a.path), Predictor(b.path)
    prepared = ensemble.prepare(str(image))[None].astype(np.float32)
    raw = np.asarray(ensemble.model(prepared))  # before the ensemble's own temperature
    expected = (first.probabilities(prepared) + second.probabilities(prepared)) / 2  # each member calibrated
    np.testing.assert_allclose(raw, expected, atol=1e-5)
    result = ensemble.predict([str(image)])[0]
    assert result["decision"] is not None and result["unlike_training"] is None
    assert set(result["probabilities"]) == {"A", "B"}
    card = run.model_card()
    assert "## Ensemble" in card and a.run_id in card and b.run_id in card


def test_flip_test_time_augmentation_averages_each_member_over_the_image_and_its_mirror(members, tmp_path):
    a, b = members["a"], members["b"]
    run = create([a.path, b.path], tta="flip", out_dir=tmp_path)
    image = next(members["data"].rglob("*.png"))
    ensemble = Predictor(run.path)
    x = ensemble.prepare(str(image))[None].astype(np.float32)
    mirrored = x[:, :, ::-1, :]
    expected = np.mean(
        [
            apply_temperature((np.asarray(p.model(x)) + np.asarray(p.model(mirrored))) / 2, p.temperature)
            for p in (Predictor(a.path), Predictor(b.path))
        ],
        axis=0,
    )
    np.testing.assert_allclose(np.asarray(ensemble.model(x)), expected, atol=1e-5)


def test_members_of_other_input_sizes_are_resized_inside_and_maps_are_the_members_mean(members, tmp_path):
    a, c = members["a"], members["c"]
    run = create([a.path, c.path], out_dir=tmp_path)
    assert run.image_size() == 48  # the largest member's
    predictor = Predictor(run.path)
    explainer = Explainer.for_predictor(predictor)
    assert isinstance(explainer, EnsembleExplainer) and len(explainer.members) == 2
    image = predictor.prepare(str(next(members["data"].rglob("*.png"))))
    heat = explainer.heatmap(image, class_index=1)
    assert heat.shape == (48, 48) and 0 <= heat.min() and heat.max() <= 1
    maps = [Explainer.for_predictor(Predictor(m.path)).heatmap(image, class_index=1) for m in (a, c)]
    from PIL import Image as PILImage

    resized = [np.asarray(PILImage.fromarray(m, mode="F").resize((48, 48), PILImage.BILINEAR)) for m in maps]
    mean = np.mean(resized, axis=0)
    np.testing.assert_allclose(heat, mean / mean.max() if mean.max() > 0 else mean, atol=1e-4)


def test_members_that_cannot_be_averaged_fairly_are_refused_with_what_differs(members, tmp_path):
    a = members["a"]
    with pytest.raises(ConfigError, match="do not share one split of the same data"):
        check_members([a.path, members["split"].path])
    with pytest.raises(ConfigError, match="members predict different classes"):
        check_members([a.path, members["classes"].path])
    with pytest.raises(ConfigError, match="at least two runs"):
        check_members([a.path])
    with pytest.raises(ConfigError, match="listed twice"):
        check_members([a.path, a.path])
    with pytest.raises(ConfigError, match="tta must be one of none, flip"):
        create([a.path, members["b"].path], tta="rotate", out_dir=tmp_path)
    assert not list(tmp_path.iterdir())  # nothing written for a refused ensemble


def test_report_says_whether_the_ensemble_beats_its_best_member_with_a_paired_interval(members, tmp_path):
    run = create([members["a"].path, members["b"].path], out_dir=tmp_path)
    found = report(run, resamples=200)
    assert [r["role"] for r in found["rows"]] == ["ensemble", "member", "member"]
    assert found["best_member"] in (members["a"].run_id, members["b"].run_id)
    auc = found["difference"]["macro_auc"]
    assert found["verdict"] in ("better", "worse", "no clear difference")
    best = next(r for r in found["rows"] if r["run"] == found["best_member"])
    assert auc["difference"] == pytest.approx(run.metrics()["macro_auc"] - best["macro_auc"], abs=1e-9)
    assert found["n"] == run.metrics()["n"]
    assert report(members["a"]) is None  # not an ensemble


def test_paired_differences_by_hand():
    y = np.array([0, 1, 0, 1, 0, 1])
    right = np.eye(2)[y] * 0.8 + 0.1  # every image called right
    wrong = np.eye(2)[1 - y] * 0.8 + 0.1  # every image called wrong
    same = paired_differences(y, right, right, resamples=100)
    assert same["accuracy"] == {"difference": 0.0, "ci_low": 0.0, "ci_high": 0.0}
    apart = paired_differences(y, right, wrong, resamples=100)
    assert apart["accuracy"] == {"difference": 1.0, "ci_low": 1.0, "ci_high": 1.0}
    assert apart["macro_auc"]["difference"] == pytest.approx(1.0)  # AUC 1 against AUC 0


def test_ensemble_cli_prints_the_new_run_last(members, tmp_path, capsys):
    from cxrcore.cli import main

    proc = subprocess.run(  # the command's smoke test in its own process; the refusal below runs in this one
        [sys.executable, "-m", "cxrcore", "ensemble", str(members["a"].path), str(members["b"].path)]
        + ["--out", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    run = runs.RunDir(proc.stdout.strip().splitlines()[-1])
    assert run.ensemble() is not None and run.path.parent == tmp_path
    assert "ensemble vs its best member" in proc.stderr
    capsys.readouterr()
    refused = main(["ensemble", str(members["a"].path), str(members["split"].path)])
    assert refused == 2 and "do not share one split" in capsys.readouterr().err


def test_comparability_names_what_keeps_runs_apart_and_what_they_can_still_be_ranked_on(members, tmp_path):
    from cxrcore.evaluation.evaluate import comparability, compare_runs, evaluate_runs, rankable

    # copies: the common external set below is evaluated into each run
    a, b, split, three = (copy_run(members[k], tmp_path / "runs") for k in ("a", "b", "split", "classes"))
    same = comparability([a.path, b.path])
    assert same["comparable"] and same["differences"] == [] and rankable("accuracy", same)
    apart = comparability([a.path, split.path])
    assert not apart["comparable"] and apart["same_classes"]
    assert apart["differences"][0].startswith("different test splits of the same data")
    assert not rankable("accuracy", apart) and not rankable("AUC A", apart)
    assert rankable("parameters", apart) and not rankable("training time (s)", apart)
    other = comparability([a.path, three.path])
    assert other["differences"][0].startswith("classes differ") and other["shared_classes"] == ["A", "B"]
    assert any(d.startswith("trained on different data") for d in other["differences"])
    # a common external set: both evaluated on the same labelled folder
    external = make_class_folders(tmp_path / "elsewhere", per_class=6)
    assert evaluate_runs([a.path, split.path, three.path], external) == {
        a.run_id: None,
        split.run_id: None,
        three.run_id: None,
    }
    apart, other = comparability([a.path, split.path]), comparability([a.path, three.path])
    assert apart["common_external"] == other["common_external"] == ["elsewhere"]
    assert rankable("elsewhere: accuracy", apart) and rankable("elsewhere: macro AUC", apart)
    assert not rankable("elsewhere: accuracy", other)  # a two-class and a three-class accuracy
    assert rankable("elsewhere: AUC A", other) and not rankable("elsewhere: AUC C", other)
    table = compare_runs([a.path, three.path])
    assert {"elsewhere: AUC A", "elsewhere: AUC B"} <= set(table.index)
    assert "elsewhere: AUC A" not in compare_runs([a.path, split.path]).index  # same classes: not needed


def test_a_run_takes_a_name_and_a_note_without_touching_its_record(members, tmp_path):
    import hashlib

    run = copy_run(members["b"], tmp_path)  # a copy: the name and the note are written into the run
    before = {n: hashlib.sha256(run.file(n).read_bytes()).hexdigest() for n in (runs.INFO, runs.METRICS, runs.MODEL)}
    assert run.annotation() == {"name": "", "note": ""}
    run.annotate(name="  wider head ", note="16 units instead of 8")
    assert run.annotation() == {"name": "wider head", "note": "16 units instead of 8"}
    assert run.summary()["name"] == "wider head"
    run.annotate(note="")  # the name stays
    assert run.annotation() == {"name": "wider head", "note": ""}
    with pytest.raises(runs.RunError, match="one line of at most 60 characters"):
        run.annotate(name="x" * 61)
    after = {n: hashlib.sha256(run.file(n).read_bytes()).hexdigest() for n in before}
    assert after == before
