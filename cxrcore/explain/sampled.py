"""The faithfulness of a run's explanations over a sample of its test split: each method's deletion,
insertion, border share and lung share (:mod:`cxrcore.explain.faithfulness` scores one map) averaged with
95% bootstrap intervals, beside a random map, and kept in the run (``faithfulness.json``).

Above :mod:`cxrcore.predict`: the images are prepared and explained by the run's :class:`~cxrcore.predict.Predictor`.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from functools import lru_cache

import numpy as np

from .. import runs
from ..errors import ConfigError, ImageDecodeError
from ..lungs.geometry import LUNG_SHARE_WARN
from ..lungs.segment import shipped_fingerprint
from ..predict import Predictor
from ..stats.intervals import percentile_interval, resample_weights
from . import faithfulness
from .cam import METHODS
from .faithfulness import BASELINE, RANDOM, SAMPLE_SIZE, STEPS

_VERSION = 2  # bump when the scores' definition changes: cached results are then recomputed (2: lung share)


def model_fingerprint(run) -> str:
    """Which model the scores belong to: a digest of the model file's content (so a copied or moved run
    keeps its scores), worked out once per file version (path, size, modification time)."""
    path = run.require_model()
    stat = path.stat()
    return _content_digest(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=64)
def _content_digest(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def _request(run, methods, sample_size: int, seed: int, steps: int, baseline: str) -> dict:
    return {
        "version": _VERSION,
        "methods": list(methods),
        "sample_size": int(sample_size),
        "seed": int(seed),
        "steps": int(steps),
        "baseline": baseline,
        "model": model_fingerprint(run),
        "lungs": shipped_fingerprint(),  # the lung model the lung shares belong to
        "split": hashlib.sha1(run.file(runs.SPLIT).read_bytes()).hexdigest()[:16],
    }


def _summary(values: np.ndarray, seed: int) -> dict:
    """Mean and a 95% bootstrap interval over images."""
    values = np.asarray(values, dtype=np.float64)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return {"mean": None, "ci_low": None, "ci_high": None, "n": 0}
    weights = resample_weights(np.arange(finite.size), 1000, seed)
    means = weights @ finite / weights.sum(axis=1)
    return {"mean": float(finite.mean()), **percentile_interval(means, enough=100), "n": int(finite.size)}


def evaluate_run(
    run_dir,
    methods: Sequence[str] | None = None,
    sample_size: int = SAMPLE_SIZE,
    *,
    seed: int = 0,
    steps: int = STEPS,
    baseline: str = BASELINE,
    progress: Callable[[int, int], None] | None = None,
    predictor=None,
) -> dict:
    """Each method's deletion, insertion, border share and lung share averaged over a random sample of the
    run's test split (the predicted class explained; for a findings run, the most probable finding), beside a
    random map; kept in the run
    (``faithfulness.json``) and returned from there when asked again with the same settings, model and lung
    model (the shipped one's fingerprint is part of the settings, so a result from before lung shares, or of
    another lung model, is computed again).

    Returns ``{"settings", "describe", "border_warn", "lung_warn", "methods": {name: {"deletion",
    "insertion", "border_share", "border_flagged", "lung_share", "lung_flagged", "seconds_per_image"}},
    "images": [...], "unreadable"}``, each score a ``{"mean", "ci_low", "ci_high", "n"}``; the ``*_flagged``
    entries are the share of the maps flagged (None when none had a share). The random map has deletion and
    insertion only. Raises RunError when the shipped lung model is missing."""
    run = runs.RunDir(run_dir)
    methods = list(methods or METHODS)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ConfigError(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    if isinstance(sample_size, bool) or not isinstance(sample_size, (int, np.integer)) or sample_size < 1:
        raise ConfigError(f"sample size must be a positive integer, got {sample_size!r}")
    faithfulness.check_settings(steps, baseline)
    request = _request(run, methods, sample_size, seed, steps, baseline)
    cached = run.faithfulness()
    if cached and cached.get("settings") == request:
        return cached
    split = run.split()
    test = split[split["split"] == "test"]
    if test.empty:
        raise ConfigError(f"{run.path} has no test split to score explanations on")
    sample = test.sample(n=min(sample_size, len(test)), random_state=seed)
    predictor = predictor or Predictor(run.path)
    rows, unreadable, seconds = [], [], {m: 0.0 for m in methods}
    total = len(sample) * (len(methods) + 1)
    done = 0
    for path, label in zip(sample["path"], sample["label"]):
        try:
            image = predictor.prepare(path)
        except ImageDecodeError as exc:
            unreadable.append({"image": str(path), "error": str(exc)})
            done += len(methods) + 1
            continue
        probs = predictor.probabilities(image[None])[0]
        target = int(np.argmax(probs))
        row = {"image": str(path), "label": label, "explained": predictor.labels[target]}
        lungs = predictor.lungs(image)
        noise = faithfulness.random_map(image.shape[:2], seed=[seed, len(rows)])
        for method in [*methods, RANDOM]:
            started = time.perf_counter()
            heat = noise if method == RANDOM else predictor.explanation_map(image, method, target)
            found = faithfulness.scores(image, heat, target, predictor.probabilities, steps=steps, baseline=baseline)
            if method != RANDOM:
                seconds[method] += time.perf_counter() - started
            row[method] = {
                "deletion": found["deletion"],
                "insertion": found["insertion"],
                "border_share": None if method == RANDOM else faithfulness.border_share(heat),
                "lung_share": None if method == RANDOM else faithfulness.map_lung_share(heat, lungs),
            }
            done += 1
            if progress:
                progress(done, total)
        rows.append(row)
    summary = {}
    for method in [*methods, RANDOM]:
        deletion = [r[method]["deletion"] for r in rows]
        insertion = [r[method]["insertion"] for r in rows]
        entry = {"deletion": _summary(deletion, seed), "insertion": _summary(insertion, seed)}
        if method != RANDOM:
            for name, flagged in (("border", faithfulness.border_flagged), ("lung", faithfulness.lung_flagged)):
                shares = [r[method][f"{name}_share"] for r in rows]
                known = [s for s in shares if s is not None]
                entry[f"{name}_share"] = _summary([np.nan if s is None else s for s in shares], seed)
                entry[f"{name}_flagged"] = (sum(flagged(s) for s in known) / len(known)) if known else None
            entry["seconds_per_image"] = seconds[method] / len(rows) if rows else None
        summary[method] = entry
    result = {
        "settings": request,
        "describe": faithfulness.describe(steps, baseline),
        "border_warn": faithfulness.BORDER_WARN,
        "lung_warn": LUNG_SHARE_WARN,
        "methods": summary,
        "images": rows,
        "unreadable": unreadable,
    }
    run.write_faithfulness(result)
    return result
