"""cxrcore: train, evaluate and explain chest X-ray classifiers (the library; no UI).

Module map:
    errors     user-facing error types (CXRError and subclasses)
    config     TrainConfig: one typed run configuration, saved as config.json
    io         image headers, decoding (PNG/JPEG/DICOM) and the one pixel-normalisation function
    data       dataset layouts and the cached image index
    splits     label schemes, patient-grouped splits, class weights, leakage checks
    demo       synthetic demo dataset (clearly marked as synthetic)
    backbones  registry of CNN backbones as data (no TensorFlow import)
    layers     the Keras layers models are made of (in-graph preprocessing, the custom CNN)
    model      flat backbone+head models, stage freezing, loading
    pipeline   tf.data input pipeline and augmentation
    devices    GPUs/CPU, mixed precision, tf.distribute strategy
    callbacks  checkpoint, history, progress, cancellation and resume-state callbacks
    train      two-stage training (resumable); writes a run directory
    jobs       background jobs: SQLite store, queue, scheduler, cancel, resume
    worker     one job's process (python -m cxrcore.worker)
    metrics    evaluation metrics as pure functions
    evaluate   evaluation of a run on its test split or an external folder
    predict    the prediction path for files and uploaded bytes
    explain    Grad-CAM, Grad-CAM++, Score-CAM and overlays
    runs       run directories: layout, listing, loading
    plots      plotly figure builders (data in, go.Figure out)
    cli        ``python -m cxrcore ...``

Names below are imported lazily, so ``import cxrcore`` does not load TensorFlow.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "CXRError": "errors", "DataError": "errors", "ConfigError": "errors", "WeightsError": "errors",
    "RunError": "errors", "ImageDecodeError": "errors",
    "TrainConfig": "config", "AugmentConfig": "config", "HeadConfig": "config", "LabelScheme": "config",
    "decode_image": "io", "prepare_image": "io", "read_header": "io", "is_dicom": "io",
    "build_index": "data", "scan_layout": "data", "summarize": "data",
    "apply_label_scheme": "splits", "assign_splits": "splits", "class_weights": "splits",
    "leakage_report": "splits",
    "make_demo_dataset": "demo", "is_synthetic": "demo",
    "REGISTRY": "backbones", "get_backbone": "backbones", "list_backbones": "backbones",
    "build_model": "model", "load_model": "model", "set_stage": "model",
    "make_dataset": "pipeline",
    "train": "train",
    "classification_metrics": "metrics",
    "evaluate_run": "evaluate", "compare_runs": "evaluate",
    "submit": "jobs", "submit_comparison": "jobs", "JobStore": "jobs",
    "Explainer": "explain", "overlay": "explain",
    "Predictor": "predict",
    "list_runs": "runs", "RunDir": "runs",
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
