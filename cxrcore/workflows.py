"""Use cases from start to end, and the one place their side effects are written.

Each function here is something a user does, as the CLI, the dashboard's pages and the jobs worker call
it. The stages below compute and return (:mod:`cxrcore.training.train` trains,
:mod:`cxrcore.evaluation.evaluate` scores a model on images, :mod:`cxrcore.explain.faithfulness` scores
explanations, :mod:`cxrcore.ensemble` averages runs); this module runs them in order and writes what the
run keeps from them, the model card (``MODEL_CARD.md``) last. No other module writes the card.

- :func:`train` / :func:`resume`: train -> finish (the temperature, operating points and feature statistics
  fitted on the validation split, the test results, the external sets) -> the data audit recorded -> card;
- :func:`evaluate`: a run on its test split or on a labelled folder -> card; :func:`evaluate_many` for a
  common external set;
- :func:`score_explanations`: faithfulness of the explanation methods on a test sample -> card;
- :func:`make_ensemble`: average finished runs into a new run -> card;
- :func:`export`: a run as a SavedModel or TFLite file with its input spec;
- :func:`analyse`: what the Predict page shows for one image.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import numpy as np

from . import runs
from .config import LabelScheme, TrainConfig
from .data.audit import audit
from .data.sources import fold_split, loso_folds
from .ensemble import create
from .errors import CXRError
from .evaluation import model_card
from .evaluation.evaluate import CompiledModel, evaluate_frame, evaluate_run, evaluate_runs, fit_on_validation
from .explain import sampled
from .explain.cam import overlay
from .export import export as export_run
from .jobs.queue import submit_group
from .training.model import load_model
from .training.train import prepare_data, resume_run
from .training.train import train as train_stage

log = logging.getLogger("cxrcore.workflows")


def write_card(run: runs.RunDir) -> Path | None:
    """Write the run's model card (:mod:`cxrcore.evaluation.model_card`, from the run's recorded facts)."""
    return model_card.write(run)


def _inference_ms(forward, image_size: int, repeats: int = 5) -> float:
    """Milliseconds per single image through ``forward``, the prediction path's compiled forward pass."""
    x = np.zeros((1, image_size, image_size, 3), dtype=np.float32)
    forward(x)
    started = time.perf_counter()
    for _ in range(repeats):
        forward(x)
    return round((time.perf_counter() - started) / repeats * 1000, 2)


def finish_training(run: runs.RunDir, model, frame) -> dict:
    """What a trained model is made into, once, with its forward pass compiled once: the temperature,
    operating points and feature statistics fitted on the validation split
    (:func:`cxrcore.evaluation.evaluate.fit_on_validation`), then the test split's results. Returns the
    fields ``run.json`` records (the inference time per image)."""
    best = CompiledModel(model, run.image_size())
    fields = {"inference_ms_per_image": _inference_ms(best.forward, best.image_size)}
    if (frame["split"] == "val").any():
        calibration = fit_on_validation(run, best, frame)
        temperatures = calibration.get("temperatures")
        log.info(
            "calibration: %s fitted on %d validation image(s), mean ECE %.4f -> %.4f",
            f"temperature {calibration['temperature']:.3f}"
            if not temperatures
            else f"temperatures {min(temperatures.values()):.3f}-{max(temperatures.values()):.3f} (one per finding)",
            calibration["n"],
            calibration["ece_mean_before"],
            calibration["ece_mean_after"],
        )
    test = frame[frame["split"] == "test"]
    if len(test):
        result = evaluate_frame(run, best, test.reset_index(drop=True), run.path)
        log.info("test: %s", headline(result))
    return fields


def headline(result: dict) -> str:
    """An evaluation in one line for the log: accuracy, macro F1 and macro AUC, or for a findings run the mean
    AUC over the findings evaluated and how many were not."""
    if result.get("task") == "findings":
        left = len(result.get("not_evaluated") or {})
        auc = "n/a" if result.get("mean_auc") is None else f"{result['mean_auc']:.4f}"
        return f"mean AUC {auc} over {len(result.get('evaluated') or [])} finding(s), {left} not evaluated"
    return f"accuracy {result['accuracy']:.4f}, macro F1 {result['macro_f1']:.4f}, macro AUC {result['macro_auc']}"


def audit_data(data: str) -> dict | None:
    """The data audit of a training set (:func:`cxrcore.data.audit.audit`, cached per dataset content);
    None, logged, for data that cannot be audited (the run goes on without it)."""
    try:
        return audit(data)
    except (CXRError, OSError, ValueError) as exc:
        log.error("data audit of %s not made: %s", data, exc)
        return None


def evaluate_external(run: runs.RunDir, config: TrainConfig) -> None:
    """Evaluate the finished model on each of ``config.external``, each kept apart in the run's
    ``external/``. A set that fails now (an image became unreadable) is logged; the run stands."""
    for data in config.external:
        try:
            result = evaluate_run(run.path, data, drop_unknown=config.external_skip_unknown)
        except CXRError as exc:
            log.error("external validation on %s failed: %s", data, exc)
            continue
        log.info("external %s: %s (%d images)", data, headline(result), result["n"])


def training_hooks() -> dict:
    """The hooks of :func:`cxrcore.training.train.train`: the data audit once the data is checked (a check of
    the data, not of the model: made before the first epoch, once per dataset content, cached after), finish,
    then (a run that succeeded) the external sets, the audit recorded and the card, with ``finish_seconds``
    from the end of the last epoch to the complete run."""
    found, ended = {}, {}

    def prepared(config, frame):
        found["audit"] = audit_data(config.data)

    def finish(run, frame):
        ended["at"] = time.time()  # the end of the last epoch: loading the best model counts as finishing
        return finish_training(run, load_model(run.file(runs.MODEL)), frame)

    def complete(run):
        evaluate_external(run, run.config())
        if found.get("audit") is not None:
            run.write_audit(found["audit"])
        write_card(run)
        if "at" in ended:
            run.update_info(finish_seconds=round(time.time() - ended["at"], 1))

    return {"prepared": prepared, "finish": finish, "complete": complete}


def train(config: TrainConfig, **options) -> runs.RunDir:
    """Train ``config`` into a complete run: :func:`cxrcore.training.train.train` (``options``: ``out_dir``,
    ``run``, ``progress``, ``should_stop``, ``data_progress``, ``resume``), then finish, external sets, audit
    and card."""
    return train_stage(config, **options, **training_hooks())


def resume(run_dir: str | Path, **options) -> runs.RunDir:
    """Continue an interrupted, failed or cancelled run from its last completed epoch to a complete run:
    the one resume path (``train --resume``, a resumed background job, the dashboard's Resume button).
    ``options``: ``progress``, ``should_stop``."""
    return resume_run(run_dir, **options, **training_hooks())


def plan_loso(config: TrainConfig, out_dir: str | Path | None = None) -> tuple[Path, list[TrainConfig]]:
    """A leave-one-source-out study planned: its folder (``out_dir`` or the models folder), one manifest per
    source that can be held out (:func:`cxrcore.data.sources.loso_folds`: that source the test split, every
    other image split into train and validation) and ``loso.json`` listing the folds and the sources not
    held out with why; returns the folder and one training configuration per fold (``config`` on the
    fold's manifest; the labels are already the run's classes there)."""
    frame, classes = prepare_data(config)
    folds, skipped = loso_folds(frame, classes)
    folder = runs.new_study_dir("loso", config.backbone, out_dir)
    planned, configs = [], []
    for i, source in enumerate(folds, 1):
        split = fold_split(frame, source, val_fraction=config.val_fraction, seed=config.seed)
        manifest = folder / f"fold-{i}.csv"
        split[["path", "label", "patient_id", "source", "split"]].to_csv(manifest, index=False)
        held = split[split["split"] == "test"]
        planned.append(
            {
                "source": source,
                "n": int(len(held)),
                "prevalence": {c: float((held["label"] == c).mean()) for c in classes},
                "manifest": manifest.name,
            }
        )
        configs.append(dataclasses.replace(config, data=str(manifest), labels=LabelScheme()).validate())
    study = {
        "data": config.data,
        "classes": classes,
        "backbone": config.backbone,
        "config": config.to_dict(),
        "folds": planned,
        "skipped": skipped,
        "status": "planned",
    }
    runs.write_loso(folder, study)
    log.info("leave one source out: %d fold(s) (%s) into %s", len(folds), ", ".join(folds), folder)
    return folder, configs


def leave_one_source_out(config: TrainConfig, out_dir: str | Path | None = None, progress=None) -> Path:
    """Train one model per source that can be held out (:func:`plan_loso`), each on every other source and
    tested on the held-out source (and on ``config.external``), each a complete run; returns the study's
    folder, which holds the runs and ``loso.json`` (:func:`cxrcore.runs.read_loso`: one row per held-out
    source with its AUC and 95% interval, then the mean and the worst). Each run's card shows the study."""
    folder, configs = plan_loso(config, out_dir)
    for fold in configs:
        train(fold, out_dir=folder, progress=progress)
    study = runs.read_loso(folder)
    for fold in study["folds"]:
        if fold.get("run"):
            write_card(runs.RunDir(folder / fold["run"]))
    return folder


def submit_loso(config: TrainConfig, *, store=None) -> tuple[Path, str, list[str]]:
    """A leave-one-source-out study as background jobs (:func:`plan_loso`, then one job per fold, queued as
    one group into the study's folder): ``(folder, group, job ids)``. ``loso.json`` fills in as the runs end."""
    folder, configs = plan_loso(config)
    group, ids = submit_group(configs, store=store, out_dir=folder)
    return folder, group, ids


def evaluate(run_dir: str | Path, data: str | Path | None = None, **options) -> dict:
    """Evaluate a run on its test split or on a labelled folder
    (:func:`cxrcore.evaluation.evaluate.evaluate_run`), then rewrite its card."""
    result = evaluate_run(run_dir, data, **options)
    write_card(runs.RunDir(run_dir))
    return result


def evaluate_many(
    run_dirs, data: str | Path, *, drop_unknown: bool = False, labels_column: str = ""
) -> dict[str, str | None]:
    """Evaluate each run on the labelled folder ``data``, each card rewritten: ``{run_id: None or the
    error}`` (:func:`cxrcore.evaluation.evaluate.evaluate_runs`; ``labels_column`` reaches the findings runs)."""
    outcome = evaluate_runs(run_dirs, data, drop_unknown=drop_unknown, labels_column=labels_column)
    for path in run_dirs:
        write_card(runs.RunDir(path))
    return outcome


def score_explanations(run_dir: str | Path, *args, **options) -> dict:
    """Score the explanation methods on a sample of the run's test split
    (:func:`cxrcore.explain.sampled.evaluate_run`), then rewrite its card (its Explanations section)."""
    result = sampled.evaluate_run(run_dir, *args, **options)
    write_card(runs.RunDir(run_dir))
    return result


def make_ensemble(run_dirs, **options) -> runs.RunDir:
    """Average finished runs into a new run (:func:`cxrcore.ensemble.create`: ``tta``, ``out_dir``), its card
    written."""
    run = create(run_dirs, **options)
    write_card(run)
    return run


def export(run_dir: str | Path, fmt: str, out_dir: str | Path | None = None) -> Path:
    """A run as a SavedModel or TFLite file with its input spec (:func:`cxrcore.export.export`)."""
    return export_run(run_dir, fmt, out_dir)


def analyse(
    predictor,
    data: bytes,
    *,
    name: str,
    method: str,
    operating_point: str,
    colormap: str,
    alpha: float,
    class_index: int | None = None,
) -> dict:
    """What the Predict page shows for one image: :meth:`cxrcore.predict.Predictor.explain` (prediction,
    decision, unlike-the-training-data check, map, its scores and the lungs; computed once per image,
    method and class) and the overlay in ``colormap`` at ``alpha`` (raises ImageDecodeError)."""
    found = predictor.explain(data, method, class_index, name=name, operating_point=operating_point)
    return {**found, "overlay": overlay(found["input"], found["heatmap"], colormap=colormap, alpha=alpha)}
