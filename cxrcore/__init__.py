"""cxrcore: train, evaluate and explain chest X-ray classifiers (the library; no UI).

Folders group the modules by stage (``data``, ``training``, ``evaluation``, ``explain``, ``lungs``, ``jobs``;
``stats`` for numbers several stages need, ``cli`` for ``python -m cxrcore``); :mod:`cxrcore.workflows` owns
each use case from start to end. Which module may import which is the list of layers in
:mod:`cxrcore.architecture`, held by ``tests/test_architecture.py``; ``docs/layout.md`` maps the modules.

This file re-exports the public names below, imported lazily, so ``import cxrcore`` does not load TensorFlow.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "CXRError": "errors",
    "DataError": "errors",
    "ConfigError": "errors",
    "WeightsError": "errors",
    "RunError": "errors",
    "ImageDecodeError": "errors",
    "TrainConfig": "config",
    "AugmentConfig": "config",
    "HeadConfig": "config",
    "LabelScheme": "config",
    "decode_image": "data.io",
    "prepare_image": "data.io",
    "read_header": "data.io",
    "is_dicom": "data.formats",
    "build_index": "data.index",
    "scan_layout": "data.index",
    "summarize": "data.index",
    "apply_label_scheme": "data.splits",
    "assign_splits": "data.splits",
    "class_weights": "data.splits",
    "leakage_report": "data.splits",
    "make_demo_dataset": "data.demo",
    "is_synthetic": "data.demo",
    "REGISTRY": "training.backbones",
    "get_backbone": "training.backbones",
    "list_backbones": "training.backbones",
    "build_model": "training.model",
    "load_model": "training.model",
    "set_stage": "training.model",
    "make_dataset": "training.pipeline",
    "get_segmenter": "lungs.segment",
    "LungSegmenter": "lungs.segment",
    "train": "workflows",
    "classification_metrics": "evaluation.metrics",
    "evaluate_run": "evaluation.evaluate",
    "compare_runs": "evaluation.evaluate",
    "submit": "jobs.queue",
    "submit_comparison": "jobs.queue",
    "JobStore": "jobs.store",
    "Explainer": "explain.cam",
    "overlay": "explain.cam",
    "Predictor": "predict",
    "list_runs": "runs",
    "RunDir": "runs",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'cxrcore' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
