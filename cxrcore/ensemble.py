"""Ensembles: several finished runs averaged into one run that evaluates, predicts, explains and compares
like any other.

:func:`create` checks that the members can be averaged fairly (one task: all class runs or all findings runs;
the same classes, or findings, in the same order, the
same split of the same data, so no member was trained on an image the ensemble is tested on, and the
same pixel rules, since they see one prepared image), then writes a new run directory:

- ``model.keras``: one Keras model taking the prepared image; each member (resized to its own input size
  where they differ) followed by its own temperature (:class:`cxrcore.training.layers.Calibrate`; for
  findings runs, its temperature per finding, :class:`cxrcore.training.layers.CalibrateSigmoid`), so the
  members' *calibrated* probabilities are averaged (for findings runs, each finding's sigmoid probability on
  its own: the mean stays one probability per finding); with ``tta="flip"`` each member also sees the
  mirrored image and its two outputs are averaged first;
- ``ensemble.json``: the members, in order, with their temperatures (for findings runs, one
  ``{finding: T}`` per member) and image sizes (the one owner of what the ensemble is made of:
  :meth:`cxrcore.runs.RunDir.ensemble`);
- everything a trained run has after training: ``config.json`` (the members' shared settings, backbone
  ``ensemble``), ``labels.json``, ``split.csv``, ``run.json``, calibration and operating points fitted
  on the validation split (:func:`cxrcore.evaluation.evaluate.fit_on_validation`), the test evaluation,
  each external dataset every member was evaluated on, and a model card.

Explanations of an ensemble are the mean of its members' maps
(:class:`cxrcore.explain.cam.EnsembleExplainer`). The unlike-the-training-data check needs one
backbone's features, so an ensemble has none.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from . import runs
from .errors import ConfigError, CXRError, RunError
from .evaluation.evaluate import CompiledModel, evaluate_frame, evaluate_run, fit_on_validation
from .evaluation.multilabel import TASK as FINDINGS
from .stats.intervals import (
    DEFAULT_RESAMPLES,
    mean_over_defined,
    paired_differences,
    patient_groups,
    percentile_interval,
    resample_weights,
    weighted_auc_ap,
)

log = logging.getLogger("cxrcore.ensemble")

TTA_MODES = ("none", "flip")
BACKBONE = "ensemble"  # run.json's and config.json's backbone for an ensemble


def _split_key(run: runs.RunDir) -> pd.DataFrame:
    split = run.split()
    return split[["path", "split"]].sort_values("path").reset_index(drop=True)


def check_members(run_dirs) -> list[runs.RunDir]:
    """The members as :class:`cxrcore.runs.RunDir`, or :class:`ConfigError` saying what keeps them apart."""
    members = [runs.RunDir(Path(p).resolve()) for p in run_dirs]
    if len({m.path for m in members}) != len(members):
        raise ConfigError("an ensemble's members must be different runs (a run is listed twice)")
    if len(members) < 2:
        raise ConfigError("an ensemble needs at least two runs")
    for member in members:
        if not member.exists():
            raise RunError(f"{member.path} is not a run directory")
        if member.status() != "succeeded":
            raise ConfigError(f"{member.run_id} has not finished successfully (status {member.status()})")
        if member.ensemble() is not None:
            raise ConfigError(f"{member.run_id} is an ensemble itself: list its members instead")
        member.require_model()
    first = members[0]
    for other in members[1:]:
        if other.task() != first.task():
            findings, classes = (first, other) if first.task() == FINDINGS else (other, first)
            raise ConfigError(
                f"cannot average a findings run ({findings.run_id}: a sigmoid probability per finding) with a class "
                f"run ({classes.run_id}: softmax over its classes): ensemble runs of one kind"
            )
        if other.labels() != first.labels():
            raise ConfigError(
                "findings runs must predict the same findings in the same order to be averaged: "
                f"{first.run_id} {first.labels()}, {other.run_id} {other.labels()}"
                if first.task() == FINDINGS
                else f"members predict different classes: {first.run_id} {first.labels()}, "
                f"{other.run_id} {other.labels()}"
            )
        if not _split_key(other).equals(_split_key(first)):
            raise ConfigError(
                f"{other.run_id} and {first.run_id} do not share one split of the same data: the ensemble would "
                "be tested on images a member trained on. Ensemble runs trained on the same data with the same "
                "seed and split fractions (a comparison does that)"
            )
        if other.pixel_rules() != first.pixel_rules():
            raise ConfigError(
                f"members prepare pixels differently ({first.run_id}: {first.pixel_rules().describe()}; "
                f"{other.run_id}: {other.pixel_rules().describe()}): an ensemble feeds them one prepared image"
            )
    return members


def build_model(members: list[runs.RunDir], image_size: int, tta: str = "none"):
    """The ensemble as one Keras model: prepared image (0..255, ``image_size``) in, the mean of the
    members' calibrated probabilities out (findings runs: each member's per-finding calibrated sigmoid
    probabilities, averaged finding by finding)."""
    import keras

    from .training.layers import FlipLeftRight, calibration_of  # lazy: TensorFlow
    from .training.model import load_model  # lazy: TensorFlow

    if tta not in TTA_MODES:
        raise ConfigError(f"tta must be one of {', '.join(TTA_MODES)}, got {tta!r}")
    image = keras.Input((image_size, image_size, 3), name="image")
    outputs = []
    for i, member in enumerate(members):
        model = load_model(member.require_model())
        model.name = f"member{i}_{model.name}"  # unique names inside one model
        size = member.image_size()
        x = image if size == image_size else keras.layers.Resizing(size, size, name=f"member{i}_resize")(image)
        views = [x, FlipLeftRight(name=f"member{i}_flip")(x)] if tta == "flip" else [x]
        probs = [model(view) for view in views]
        probs = probs[0] if len(probs) == 1 else keras.layers.Average(name=f"member{i}_tta")(probs)
        outputs.append(calibration_of(member, f"member{i}_calibrated")(probs))
    mean = keras.layers.Average(name="ensemble_mean")(outputs)
    return keras.Model(image, mean, name="cxr_ensemble")


def create(run_dirs, *, tta: str = "none", out_dir: str | Path | None = None) -> runs.RunDir:
    """Average ``run_dirs`` into a new run directory (under ``out_dir``, default: beside the first
    member) and evaluate it like a trained run; returns it. Raises :class:`ConfigError` before writing
    anything when the members cannot be averaged."""
    if tta not in TTA_MODES:
        raise ConfigError(f"tta must be one of {', '.join(TTA_MODES)}, got {tta!r}")
    members = check_members(run_dirs)
    first = members[0]
    image_size = max(m.image_size() for m in members)
    run = runs.new_run_dir(BACKBONE, out_dir or first.path.parent)
    started = time.time()
    frame = first.split()
    config = dataclasses.replace(first.config(), backbone=BACKBONE, recipe="", image_size=image_size, external=[])
    config.save(run.file(runs.CONFIG))
    runs.write_json(run.file(runs.LABELS), first.labels())
    runs.write_csv(run.file(runs.SPLIT), frame)
    runs.write_json(
        run.file(runs.ENSEMBLE),
        {
            "members": [str(m.path) for m in members],
            "tta": tta,
            "temperatures": [
                dict(zip(m.labels(), m.temperatures())) if m.task() == FINDINGS else m.temperature() for m in members
            ],
            "image_sizes": [m.image_size() for m in members],
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        },
    )
    counts = frame["split"].value_counts().to_dict()
    run.update_info(
        run_id=run.run_id,
        status="running",
        backbone=BACKBONE,
        image_size=image_size,
        classes=first.labels(),
        task=first.task(),
        data=first.info().get("data", config.data),
        n_train=int(counts.get("train", 0)),
        n_val=int(counts.get("val", 0)),
        n_test=int(counts.get("test", 0)),
        started=time.strftime("%Y-%m-%dT%H:%M:%S"),
        **runs.this_process(),
    )
    try:
        model = build_model(members, image_size, tta)
        tmp = run.path / f".tmp-{runs.MODEL}"
        model.save(tmp)
        tmp.replace(run.file(runs.MODEL))
        network = CompiledModel(model, image_size)  # traced once for the validation and the test images
        if (frame["split"] == "val").any():
            fit_on_validation(run, network, frame)
        test = frame[frame["split"] == "test"].reset_index(drop=True)
        if len(test):
            evaluate_frame(run, network, test, run.path)
        run.update_info(
            status="succeeded",
            finished=time.strftime("%Y-%m-%dT%H:%M:%S"),
            params=int(model.count_params()),
            train_seconds=round(sum(float(m.info().get("train_seconds") or 0) for m in members), 1),
            finish_seconds=round(time.time() - started, 1),
            epochs_completed=0,
        )
    except BaseException as exc:
        run.update_info(status="failed", error=(str(exc).splitlines() or [type(exc).__name__])[0])
        raise
    for data, drop_unknown in _common_external(members):
        try:
            evaluate_run(run.path, data, drop_unknown=drop_unknown)
        except CXRError as exc:  # one external set failing (an image became unreadable) leaves the ensemble
            log.error("external validation of %s on %s failed: %s", run.run_id, data, exc)
    recorded = first.audit()  # the members share one split of the same data: the same audit
    if recorded is not None:
        run.write_audit(recorded)
    return run


def _common_external(members: list[runs.RunDir]) -> list[tuple[str, bool]]:
    """External datasets every member was evaluated on: (path, whether unknown classes were skipped)."""
    sources = [{e.source.get("data"): e.source for e in m.external_evaluations()} for m in members]
    common = set.intersection(*(set(found) - {None} for found in sources))
    return [(data, bool(sources[0][data].get("dropped_unknown"))) for data in sorted(common)]


def report(run: runs.RunDir, *, resamples: int = 1000, seed: int = 0) -> dict | None:
    """An ensemble against its members on the test split: each one's accuracy and macro AUC with their
    intervals, the best member (by macro AUC), and the paired bootstrap difference ensemble minus best
    member (the same resampled patients for both), with a verdict: ``better``, ``worse`` or ``no clear
    difference`` (the interval of the macro-AUC difference excludes 0, or not). None for a run that is
    not an ensemble or has no test results.

    An ensemble of findings runs has no accuracy (its rows' ``accuracy`` is None): its ``macro_auc`` is the
    mean AUC over the findings evaluated, and the difference is that of the mean AUC over the findings the
    ensemble's test results evaluate (``difference``: ``{"macro_auc", "mean_auc"}``, the same numbers).
    ``task`` says which kind it is."""
    found = run.ensemble()
    if found is None or run.metrics() is None:
        return None
    members = [runs.RunDir(p) for p in found["members"]]
    task = run.task()
    rows = []
    for who in [run, *members]:
        metrics = who.metrics() or {}
        ci = metrics.get("ci") or {}
        rows.append(
            {
                "run": who.run_id,
                "role": "ensemble" if who is run else "member",
                "backbone": who.info().get("backbone"),
                "accuracy": metrics.get("accuracy"),
                "accuracy_ci": ci.get("accuracy"),
                "macro_auc": metrics.get("macro_auc", metrics.get("mean_auc")),
                "macro_auc_ci": ci.get("macro_auc") or ci.get("mean_auc"),
            }
        )
    scored = [r for r in rows[1:] if r["macro_auc"] is not None]
    if not scored:
        return {
            "task": task,
            "rows": rows,
            "best_member": None,
            "difference": None,
            "verdict": "members have no test results",
        }
    best = max(scored, key=lambda r: r["macro_auc"])
    classes = run.labels()
    member = runs.RunDir(_path_of(best, members))
    if task == FINDINGS:
        evaluated = list((run.metrics() or {}).get("findings") or {})
        if not evaluated:
            return {
                "task": task,
                "rows": rows,
                "best_member": None,
                "difference": None,
                "verdict": "the ensemble's test results evaluate no finding",
            }
        table = _test_table(run).merge(_test_table(member), on=["path", "patient_id"], suffixes=("", "_member"))
        difference = _paired_mean_auc(table, evaluated, resamples=resamples, seed=seed)
    else:
        mine, theirs = _test_probabilities(run, classes), _test_probabilities(member, classes)
        table = mine.merge(theirs, on=["path", "y", "patient_id"], suffixes=("", "_member"))
        difference = paired_differences(
            table["y"].to_numpy(),
            table[[f"prob_{c}" for c in classes]].to_numpy(),
            table[[f"prob_{c}_member" for c in classes]].to_numpy(),
            table["patient_id"].tolist(),
            resamples=resamples,
            seed=seed,
        )
    auc = difference["macro_auc"]
    if auc["ci_low"] is not None and auc["ci_low"] > 0:
        verdict = "better"
    elif auc["ci_high"] is not None and auc["ci_high"] < 0:
        verdict = "worse"
    else:
        verdict = "no clear difference"
    return {
        "task": task,
        "rows": rows,
        "best_member": best["run"],
        "difference": difference,
        "verdict": verdict,
        "n": len(table),
    }


def _path_of(row: dict, members: list[runs.RunDir]) -> Path:
    return next(m.path for m in members if m.run_id == row["run"])


def _test_table(run: runs.RunDir) -> pd.DataFrame:
    """The run's test predictions (its predictions.csv: calibrated ``prob_<class>``, or a findings run's
    ``prob_<finding>`` and ``true_<finding>``), each image with its patient."""
    predictions = run.test_evaluation().predictions()
    table = predictions.merge(run.split()[["path", "patient_id"]], on="path", how="left")
    table["patient_id"] = table["patient_id"].fillna("").astype(str)
    return table


def _test_probabilities(run: runs.RunDir, classes: list[str]) -> pd.DataFrame:
    """The test split's calibrated probabilities of ``run``, with labels and patients."""
    table = _test_table(run)
    table["y"] = table["true_label"].map({c: i for i, c in enumerate(classes)})
    return table[["path", "y", "patient_id", *[f"prob_{c}" for c in classes]]]


def _paired_mean_auc(
    table: pd.DataFrame, findings: list[str], *, resamples: int = DEFAULT_RESAMPLES, seed: int = 0
) -> dict:
    """Mean AUC over ``findings`` of the ensemble (``prob_<f>``) minus that of a member (``prob_<f>_member``)
    on the same images: ``{"macro_auc": {"difference", "ci_low", "ci_high"}}`` (and the same as ``mean_auc``).
    Each finding is measured on its labelled images (``true_<f>`` 1 or 0; NaN left out); each resample draws
    the same patients for both, and its mean is over the findings that resample defines."""
    groups, _ = patient_groups(table["patient_id"].tolist(), len(table))
    spread = resample_weights(groups, resamples, seed)
    ones = np.ones((1, len(table)))
    per = {"ensemble": ([], []), "member": ([], [])}  # (point, spread) per finding
    for name in findings:
        truth = table[f"true_{name}"].to_numpy(dtype=float)
        mask = ~np.isnan(truth)
        positive = truth[mask] == 1.0
        for who, column in (("ensemble", f"prob_{name}"), ("member", f"prob_{name}_member")):
            scores = table[column].to_numpy(dtype=float)[mask]
            per[who][0].append(weighted_auc_ap(ones[:, mask], positive, scores)[0])
            per[who][1].append(weighted_auc_ap(spread[:, mask], positive, scores)[0])

    def mean(values: list[np.ndarray]) -> np.ndarray:
        return mean_over_defined(np.stack(values, axis=1))

    point = mean(per["ensemble"][0]) - mean(per["member"][0])
    entry = {
        "difference": float(point[0]) if np.isfinite(point[0]) else None,
        **percentile_interval(mean(per["ensemble"][1]) - mean(per["member"][1]), enough=resamples // 2),
    }
    return {"macro_auc": entry, "mean_auc": dict(entry)}
