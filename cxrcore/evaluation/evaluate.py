"""Evaluation of a trained model: on its own test split, or on any other labelled folder.

Results of external data are kept apart from the test split's, one folder per dataset in
``<run>/external/`` (:meth:`cxrcore.runs.RunDir.external_dir`), because a model that scores well inside one
dataset can fall to chance on another hospital's images and the two must not mix.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from .. import runs
from ..data.findings import targets
from ..data.splits import shared_patients
from ..errors import CXRError, DataError
from ..stats import ood
from ..stats.intervals import bootstrap_intervals
from . import calibration as calib
from . import metrics, multilabel, operating_points
from .external import external_findings_frame, external_frame, external_options


class CompiledModel:
    """A model's forward pass compiled once for its input size (:func:`cxrcore.training.model.inference_function`):
    its probabilities and, when it has one backbone, the pooled features the unlike-the-training-data check
    compares. A finished run scores its validation, training and test images through one of these, so the
    model is traced once, not once per set of images."""

    def __init__(self, model, image_size: int):
        from ..training.model import feature_model, has_features, inference_function  # lazy: TensorFlow

        self.model, self.image_size = model, int(image_size)
        self.has_features = has_features(model)
        self.forward = inference_function(feature_model(model) if self.has_features else model, self.image_size)

    def __call__(self, images) -> tuple[np.ndarray, np.ndarray | None]:
        """``(probabilities, features or None)`` of a batch of float32 images."""
        out = self.forward(images)
        if self.has_features:
            return np.asarray(out[0], dtype=float), np.asarray(out[1], dtype=float)
        return np.asarray(out, dtype=float), None


def compiled(model, image_size: int) -> CompiledModel:
    """``model`` as a :class:`CompiledModel` (itself when it already is one)."""
    return model if isinstance(model, CompiledModel) else CompiledModel(model, image_size)


def predict_frame(
    model,
    frame: pd.DataFrame,
    classes: list[str],
    image_size: int,
    batch_size: int = 32,
    pixels=None,
    features: bool = False,
):
    """Raw probabilities (n, k) for every image of ``frame``, in row order, prepared with the run's
    ``pixels`` rules; with ``features``, ``(probabilities, pooled backbone features (n, d))``. ``model`` is a
    Keras model or a :class:`CompiledModel` of it (compiled once for several frames)."""
    import tensorflow as tf

    from ..training.pipeline import decode_error_from, make_dataset  # lazy: TensorFlow

    network = compiled(model, image_size)
    if features and not network.has_features:
        raise ValueError("this model has no one backbone's features (an ensemble?)")
    ds = make_dataset(frame, classes, image_size, batch_size=batch_size, cache=False, pixels=pixels)
    probs, pooled = [], []
    try:
        for images, _ in ds:
            p, f = network(images)
            probs.append(p)
            pooled.append(f)
    except tf.errors.OpError as exc:
        raise (decode_error_from(exc) or exc) from None
    probs = np.concatenate(probs)
    return (probs, np.concatenate(pooled)) if features else probs


def predictions_table(frame: pd.DataFrame, probs: np.ndarray, classes: list[str]) -> pd.DataFrame:
    """``path, true_label, pred_label, confidence, correct, prob_<class>...`` per image."""
    pred = probs.argmax(axis=1)
    table = pd.DataFrame(
        {
            "path": frame["path"].to_numpy(),
            "true_label": frame["label"].to_numpy(),
            "pred_label": [classes[i] for i in pred],
            "confidence": probs.max(axis=1),
        }
    )
    table["correct"] = table["true_label"] == table["pred_label"]
    for i, name in enumerate(classes):
        table[f"prob_{name}"] = probs[:, i]
    return table


def labels_of(frame: pd.DataFrame, classes: list[str]) -> np.ndarray:
    return frame["label"].map({c: i for i, c in enumerate(classes)}).to_numpy()


def fit_on_validation(run: runs.RunDir, model, frame: pd.DataFrame) -> dict:
    """What a finished run learns from its validation split (``frame`` holds its split column), once,
    with at most one pass over the validation images and one over the training images:

    - the temperature (``calibration.json``);
    - the operating points on calibrated probabilities (``operating_points.json``);
    - the training split's feature statistics (from at most :data:`cxrcore.stats.ood.MAX_TRAIN_IMAGES`
      of its images) and the unlike-the-training-data threshold (``ood.npz``).

    Where the run's last stage trained on cached activations, the validation and training images are
    scored from them (:func:`cxrcore.training.features.cached_outputs`: only the layers above the cut run).
    Returns the calibration dict (for the log). ``model``: a Keras model or a :class:`CompiledModel` of it."""
    from ..training.features import cached_outputs  # lazy: TensorFlow

    classes, config, size = run.labels(), run.config(), run.image_size()
    model = compiled(model, size)
    val = frame[frame["split"] == "val"].reset_index(drop=True)
    train = frame[frame["split"] == "train"].reset_index(drop=True)
    with_features = model.has_features  # an ensemble has no one backbone's features: no unlike-training check
    cut = _last_cut(run) if with_features else None
    found, cached = cached_outputs(model.model, cut, [val, train], size, config) if cut else (None, None)
    if found is None:
        found = predict_frame(model, val, classes, size, config.batch_size, config.pixels, features=with_features)
    raw, val_features = found if with_features else (found, None)
    findings = run.task() == multilabel.TASK
    fit = _fit_findings if findings else _fit_classes
    calibration, points = fit(raw, val, classes, config.target_sensitivity)
    run.write_calibration(calibration)
    run.write_operating_points(points)
    if len(train) >= 2 and with_features:
        cached = None if cached is None else cached[1]  # the training images' features
        if len(train) > ood.MAX_TRAIN_IMAGES:  # enough for the statistics; a large set would cost a whole epoch
            train = train.sample(ood.MAX_TRAIN_IMAGES, random_state=config.seed)
        if cached is not None:
            train_features = cached[train.index.to_numpy()]
        else:
            train = train.reset_index(drop=True)
            _, train_features = predict_frame(
                model, train, classes, size, config.batch_size, config.pixels, features=True
            )
        # a findings image holds several findings: its features are measured against the training images' one
        # mean (one Gaussian), not against class means
        centres = np.zeros(len(train), dtype=int) if findings else labels_of(train, classes)
        run.write_feature_stats(ood.fit(train_features, centres, val_features))
    return calibration


def _fit_classes(raw: np.ndarray, val: pd.DataFrame, classes: list[str], target: float) -> tuple[dict, dict]:
    """One temperature over the classes, then the operating points on the calibrated probabilities."""
    y = labels_of(val, classes)
    temperature = calib.fit_temperature(raw, y)
    scaled = calib.apply_temperature(raw, temperature)
    calibration = {
        "temperature": temperature,
        "fitted_on": "val",
        "n": int(len(y)),
        "nll_before": calib.nll(raw, y),
        "nll_after": calib.nll(scaled, y),
        "ece_mean_before": float(np.nanmean(calib.expected_calibration_error(raw, y))),
        "ece_mean_after": float(np.nanmean(calib.expected_calibration_error(scaled, y))),
    }
    return calibration, operating_points.choose(scaled, y, classes, target)


def _fit_findings(raw: np.ndarray, val: pd.DataFrame, findings: list[str], target: float) -> tuple[dict, dict]:
    """One temperature per finding, then each finding's operating points on its calibrated probabilities."""
    y = targets(val, findings)
    temperatures = multilabel.fit_temperatures(raw, y)
    scaled = multilabel.apply_temperatures(raw, temperatures)
    report = multilabel.calibration_report(raw, y, findings, temperatures)
    calibration = {
        "task": multilabel.TASK,
        "temperatures": dict(zip(findings, temperatures)),
        "not_fitted": multilabel.unfitted(y, findings),
        "fitted_on": "val",
        "n": int(len(y)),
        "nll_before": multilabel.binary_nll(raw, y),
        "nll_after": multilabel.binary_nll(scaled, y),
        "ece_mean_before": report["ece"]["before"]["mean"],
        "ece_mean_after": report["ece"]["after"]["mean"],
    }
    return calibration, multilabel.choose_points(scaled, y, findings, target)


def _last_cut(run: runs.RunDir) -> str | None:
    """Where the run's last stage trained on cached activations (``finetune_cut`` or ``frozen_cut``): the
    layers below it did not change since those activations were computed. None when that stage made full
    passes."""
    info, history = run.info(), run.history()
    stages = set(history["stage"]) if "stage" in history else set()
    return info.get("finetune_cut") if "finetune" in stages else info.get("frozen_cut")


def evaluate_frame(run: runs.RunDir, model, frame: pd.DataFrame, out_dir: Path) -> dict:
    """Predict ``frame`` with the run's model, compute metrics (with 95% intervals by bootstrap over the
    frame's patients) and write metrics.json, per_class.csv and predictions.csv to ``out_dir``.

    Everything the run learned from its validation split is applied: every metric and ``prob_<class>``
    column is of calibrated probabilities (``metrics["calibration"]`` holds ECE and Brier before and
    after, with the reliability diagram's points), ``metrics["operating_points"]`` what the
    validation-chosen thresholds give on these images, and ``metrics["ood"]`` how many images are
    unlike the training data (per image in predictions.csv: ``ood_score``, ``unlike_training``)."""
    classes, config = run.labels(), run.config()
    calibration, points, stats = run.calibration(), run.operating_points(), run.feature_stats()
    model = compiled(model, run.image_size())
    if not model.has_features:
        stats = None  # statistics of another model's features cannot score these
    found = predict_frame(
        model, frame, classes, run.image_size(), config.batch_size, config.pixels, features=stats is not None
    )
    raw, features = found if stats is not None else (found, None)
    patients = frame["patient_id"].tolist() if "patient_id" in frame else None
    if run.task() == multilabel.TASK:
        result, table, rows = _findings_results(run, raw, frame, patients)
    else:
        y = labels_of(frame, classes)
        probs = calib.apply_temperature(raw, float(calibration["temperature"])) if calibration else raw
        result = metrics.classification_metrics(y, probs, classes, patient_ids=patients)
        if calibration:
            result["calibration"] = calib.calibration_report(
                raw, y, classes, float(calibration["temperature"]), fitted_on=calibration.get("fitted_on", "val")
            )
        if points:
            result["operating_points"] = operating_points.evaluate(probs, y, classes, points, patients)
        table, rows = predictions_table(frame, probs, classes), metrics.per_class_table(result)
    if stats is not None:
        scores = stats.scores(features)
        result["ood"] = ood.summary(stats, scores)
        table["ood_score"] = scores
        table["unlike_training"] = scores > stats.threshold
    out_dir.mkdir(parents=True, exist_ok=True)
    runs.write_json(out_dir / runs.METRICS, result)
    runs.write_csv(out_dir / runs.PER_CLASS, pd.DataFrame(rows))
    runs.write_csv(out_dir / runs.PREDICTIONS, table)
    return result


def _findings_results(run: runs.RunDir, raw: np.ndarray, frame: pd.DataFrame, patients) -> tuple:
    """A findings run's results on ``frame``: metrics.json's dict (per finding, :mod:`.multilabel`), the
    per-image table and the per-finding rows (per_class.csv). Probabilities are calibrated per finding; the
    findings with too few positives in the run's training split, or absent from ``frame``'s dataset
    (``frame.attrs["absent_findings"]``: an external set), are listed as not evaluated with the reason."""
    findings, calibration, points = run.labels(), run.calibration(), run.operating_points()
    y = targets(frame, findings)
    probs = multilabel.apply_temperatures(raw, run.temperatures())
    trained = run.split()
    trained_y = targets(trained[trained["split"] == "train"], findings)
    train_positives = dict(zip(findings, np.nansum(trained_y > 0.5, axis=0).astype(int).tolist()))
    result = multilabel.findings_metrics(
        y, probs, findings, patient_ids=patients, train_positives=train_positives, points=points
    )
    for name, why in (frame.attrs.get("absent_findings") or {}).items():
        result["not_evaluated"][name] = why
    if calibration:
        result["calibration"] = multilabel.calibration_report(
            raw, y, findings, run.temperatures(), fitted_on=calibration.get("fitted_on", "val")
        )
        result["calibration"]["not_fitted"] = calibration.get("not_fitted") or {}
    decisions = operating_points.decide(probs, points, findings, operating_points.KINDS[0]) if points else None
    table = multilabel.predictions_table(frame["path"].tolist(), y, probs, findings, decisions)
    return result, table, multilabel.per_finding_table(result)


def evaluate_run(
    run_dir: str | Path,
    data: str | Path | None = None,
    *,
    drop_unknown: bool = False,
    label_map: dict[str, str] | None = None,
    labels_column: str = "",
    progress=None,
) -> dict:
    """Evaluate a run's best model on its test split (``data=None``) or on a labelled folder.

    A findings run is evaluated on a findings dataset (NIH, CheXpert, a ``path,labels`` manifest) or on a
    manifest whose ``labels_column`` holds the findings; its findings are matched by name and by the alias table
    (:func:`cxrcore.data.findings.match_finding`), and those the dataset lacks are reported as not evaluated.

    A finished run's test metrics are read back, never recomputed or rewritten.
    The folder is read with the same layouts, the run's own label scheme and its external class
    mapping (``config.external_map``, plus ``label_map``). Labels the model does not know raise
    :class:`DataError` unless ``drop_unknown``. Returns the metrics dict, with ``out_dir`` added.
    """
    from ..training.model import load_model  # lazy: TensorFlow

    run = runs.RunDir(run_dir)
    model_path = run.require_model()
    classes, config = run.labels(), run.config()
    if data is None and run.is_final and run.metrics() is not None:
        stored = run.metrics()  # a finished run's test results never change; intervals may be added beside them
        stored = stored if "ci" in stored else _add_intervals(run, stored)
        return {**stored, "out_dir": str(run.path)}
    if data is None:
        frame = run.split()
        frame = frame[frame["split"] == "test"].reset_index(drop=True)
        if frame.empty:
            raise DataError(f"{run.path} has no test split to evaluate; pass --data FOLDER")
        out_dir = run.path
    elif run.task() == multilabel.TASK:
        options = replace(external_options(config), labels_column=labels_column or config.external_labels_column)
        frame = external_findings_frame(data, classes, options, progress=progress)
        out_dir = run.external_dir(data)
    else:
        if labels_column:
            raise DataError("--labels-column reads findings: this run is class-labelled (use --map for its classes)")
        label_map = {**config.external_map, **(label_map or {})}
        frame = external_frame(
            data, classes, config.labels, label_map=label_map, skip_unknown=drop_unknown, progress=progress
        )
        out_dir = run.external_dir(data)
    model = load_model(model_path)
    started = time.time()
    result = evaluate_frame(run, model, frame, out_dir)
    if data is not None:
        trained_on = run.split()
        shared = shared_patients(frame, trained_on[trained_on["split"] != "test"])
        result["shared_patients"] = {"patients": len(shared), "examples": shared[:5]}
        runs.write_json(
            out_dir / runs.SOURCE,
            {
                "data": str(Path(data).resolve()),
                "labels_column": labels_column or None,
                "n": result["n"],
                "shared_patients": result["shared_patients"],
                "dropped_unknown": bool(drop_unknown),
                "evaluated_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "seconds": round(time.time() - started, 2),
            },
        )
    return {**result, "out_dir": str(out_dir)}


def _add_intervals(run: runs.RunDir, stored: dict) -> dict:
    """Intervals (and PPV, NPV) for test metrics written before they existed, from the run's own
    per-image predictions: the stored values are kept as they are, the new ones added beside them."""
    table = run.test_evaluation().predictions()
    classes = stored["classes"]
    if table.empty or any(f"prob_{c}" not in table for c in classes):
        return stored
    split = run.split().set_index("path")["patient_id"]
    found = bootstrap_intervals(
        table["true_label"].map({c: i for i, c in enumerate(classes)}).to_numpy(),
        table[[f"prob_{c}" for c in classes]].to_numpy(float),
        classes,
        table["path"].map(split).fillna("").tolist(),
    )
    ppv, npv = metrics.predictive_values(stored["confusion_matrix"])
    added = {**stored, "ci": found["ci"], "bootstrap": found["bootstrap"]}
    added["per_class"] = {
        name: {**values, "ppv": ppv[i], "npv": npv[i], "ci": found["per_class"][name]}
        for i, (name, values) in enumerate(stored["per_class"].items())
    }
    runs.write_json(run.file(runs.METRICS), added)
    return added


# For comparisons: which way is better, per row of :func:`compare_runs`.
BETTER = {
    "accuracy": "max",
    "macro F1": "max",
    "macro AUC": "max",
    "parameters": "min",
    "training time (s)": "min",
    "inference (ms / image)": "min",
}
#: the external rows of a comparison, per dataset: row suffix -> metrics.json key
EXTERNAL_ROWS = {"accuracy": "accuracy", "macro AUC": "macro_auc"}


def better(row: str) -> str | None:
    """``"max"`` or ``"min"``: which way is better for a row of :func:`compare_runs` (None: neither)."""
    if row in BETTER:
        return BETTER[row]
    metric = row.rsplit(": ", 1)[-1]
    if metric.startswith("AUC ") or metric in EXTERNAL_ROWS:
        return "max"
    return None


def external_results(run_dirs: list[str | Path]) -> dict[str, dict[str, dict]]:
    """``{run_id: {dataset: metrics}}``: each run's saved external evaluations, keyed by the dataset's
    folder name so that runs evaluated on the same data line up (the full path where two names clash)."""
    found = {runs.RunDir(p).run_id: runs.RunDir(p).external_evaluations() for p in run_dirs}
    paths = {e.source.get("data") or e.name for evaluations in found.values() for e in evaluations}
    names = [Path(p).name for p in paths]
    label = {p: (Path(p).name if names.count(Path(p).name) == 1 else p) for p in paths}
    return {
        run_id: {label[e.source.get("data") or e.name]: e.metrics for e in reversed(evaluations)}
        for run_id, evaluations in found.items()
    }


def _auc_of(metrics: dict, name: str) -> float | None:
    """The one-vs-rest AUC of class ``name`` (``per_class``), or a findings run's AUC of finding ``name``
    (``findings``; None where it was not evaluated)."""
    values = (metrics.get("per_class") or {}).get(name) or (metrics.get("findings") or {}).get(name) or {}
    return values.get("auc")


def compare_runs(run_dirs: list[str | Path]) -> pd.DataFrame:
    """Metrics of several runs side by side: one row per metric, one column per run.

    Rows: backbone, accuracy, macro F1, macro AUC, ``AUC <class>`` per class, parameters,
    training time, inference time per image and test images, then for every external dataset
    any of the runs was evaluated on, ``<dataset>: accuracy`` and ``<dataset>: macro AUC``;
    missing values where a run has no such result. :func:`better` says which rows are better
    high or low.

    A findings run's macro AUC is its mean AUC over the findings evaluated (``macro_auc`` holds it), its
    ``AUC <finding>`` rows are its findings' (None where one was not evaluated), and it has no accuracy nor
    macro F1 (None).
    """
    external = external_results(run_dirs)
    datasets = sorted({name for found in external.values() for name in found})
    found_runs = [runs.RunDir(p) for p in run_dirs]
    labels = [run.labels() for run in found_runs]
    tasks = {run.task() for run in found_runs}
    same = all(v == labels[0] for v in labels)
    # one-vs-rest AUC of a class (or a finding) every run has: comparable across label sets of one task
    shared = [] if same or len(tasks) > 1 else [c for c in labels[0] if all(c in v for v in labels)]
    columns = {}
    for run in found_runs:
        info = run.info()
        metrics = run.metrics() or {}
        column = {
            "backbone": info.get("backbone"),
            "accuracy": metrics.get("accuracy"),
            "macro F1": metrics.get("macro_f1"),
            "macro AUC": metrics.get("macro_auc"),
        }
        for name, values in metrics.get("per_class", {}).items():
            column[f"AUC {name}"] = values.get("auc")
        if run.task() == multilabel.TASK:
            for name in run.labels():
                column[f"AUC {name}"] = _auc_of(metrics, name)
        column.update(
            {
                "parameters": info.get("params"),
                "training time (s)": info.get("train_seconds"),
                "inference (ms / image)": info.get("inference_ms_per_image"),
                "test images": metrics.get("n"),
            }
        )
        for dataset in datasets:
            found = external[run.run_id].get(dataset) or {}
            for row, key in EXTERNAL_ROWS.items():
                column[f"{dataset}: {row}"] = found.get(key)
            for name in shared:
                column[f"{dataset}: AUC {name}"] = _auc_of(found, name)
        columns[run.run_id] = column
    return pd.DataFrame(columns)


def _task_difference(tasks: dict[str, str]) -> str:
    """Why runs of both tasks cannot be ranked, naming which run predicts what."""
    findings = [r for r, t in tasks.items() if t == multilabel.TASK]
    classes = [r for r, t in tasks.items() if t != multilabel.TASK]
    lead = (
        "one predicts findings, the other classes" if len(tasks) == 2 else "some predict findings, the others classes"
    )
    return f"{lead} (findings: {', '.join(findings)}; classes: {', '.join(classes)})"


def comparability(run_dirs: list[str | Path]) -> dict:
    """Whether runs' results can be ranked against each other, and on what.

    Test-split metrics rank fairly only between runs with the same classes, trained on the same data
    with the same test split. Returns ``comparable`` (bool), ``differences`` (what keeps them apart, in
    words), ``shared_classes`` (classes every run has, in the first run's order), ``same_classes``, and
    ``common_external`` (external datasets, as :func:`external_results` names them, every run was
    evaluated on). :func:`rankable` says which rows of :func:`compare_runs` may name a best.

    Findings runs rank only against findings runs with the same findings (``"findings differ: ..."``
    otherwise; ``shared_classes`` then holds the findings they share); a findings run and a class run never
    rank against each other (``"one predicts findings, the other classes"``: no shared class, not on
    external data either). ``tasks`` holds each run's task (:meth:`cxrcore.runs.RunDir.task`)."""
    found = [runs.RunDir(p) for p in run_dirs]
    labels = {run.run_id: run.labels() for run in found}
    tasks = {run.run_id: run.task() for run in found}
    mixed = len(set(tasks.values())) > 1
    differences = []
    if mixed:
        differences.append(_task_difference(tasks))
    elif len({tuple(sorted(v)) for v in labels.values()}) > 1:
        what = "findings" if multilabel.TASK in tasks.values() else "classes"
        differences.append(f"{what} differ: " + "; ".join(f"{r}: {', '.join(v)}" for r, v in labels.items()))
    data = {run.run_id: str(run.info().get("data") or run.config().data) for run in found}
    if len(set(data.values())) > 1:
        differences.append("trained on different data: " + "; ".join(f"{r}: {d}" for r, d in data.items()))
    else:
        tests = {}
        for run in found:
            split = run.split()
            tests[run.run_id] = frozenset(split.loc[split["split"] == "test", "path"])
        if len(set(tests.values())) > 1:
            differences.append(
                "different test splits of the same data (another seed or split fractions): "
                + "; ".join(f"{r}: {len(t)} test images" for r, t in tests.items())
            )
    first = next(iter(labels.values()), [])
    shared = [] if mixed else [c for c in first if all(c in v for v in labels.values())]
    external = external_results(run_dirs)
    names = [set(found_sets) for found_sets in external.values()]
    common = sorted(set.intersection(*names)) if names else []
    return {
        "comparable": not differences,
        "differences": differences,
        "shared_classes": shared,
        "same_classes": not mixed and len({tuple(sorted(v)) for v in labels.values()}) <= 1,
        "common_external": common,
        "tasks": tasks,
    }


def rankable(row: str, found: dict) -> bool:
    """Whether row ``row`` of :func:`compare_runs` may name a best among runs of :func:`comparability`
    ``found``: test-split rows only between comparable runs; external rows on a dataset every run was
    evaluated on, and, where the classes (or findings) differ, only a class's one-vs-rest AUC (a finding's
    AUC) that every run has; never between findings runs and class runs but for the model's own properties."""
    if better(row) is None:
        return False
    if row in ("parameters", "inference (ms / image)"):
        return True  # properties of the model, whatever its data
    dataset, sep, metric = row.rpartition(": ")
    if not sep:
        return found["comparable"]
    if dataset not in found["common_external"] or len(set((found.get("tasks") or {}).values())) > 1:
        return False
    if metric.startswith("AUC "):
        return metric[4:] in found["shared_classes"]
    return found["same_classes"]


def evaluate_runs(
    run_dirs: list[str | Path], data: str | Path, *, drop_unknown: bool = False, labels_column: str = ""
) -> dict[str, str | None]:
    """Evaluate each run on the labelled folder ``data`` (:func:`evaluate_run`, each with its own label
    scheme and class map), so runs can be compared on one external set: ``{run_id: None when done, or
    why it could not be}``. One run's failure (a class it cannot name) does not stop the others.
    ``labels_column`` (a manifest's column of findings) is passed to the findings runs only."""
    outcome: dict[str, str | None] = {}
    for path in run_dirs:
        run = runs.RunDir(path)
        options = {"labels_column": labels_column} if run.task() == multilabel.TASK else {}
        try:
            evaluate_run(run.path, data, drop_unknown=drop_unknown, **options)
            outcome[run.run_id] = None
        except CXRError as exc:
            outcome[run.run_id] = str(exc)
    return outcome
