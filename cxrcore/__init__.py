"""cxrcore: train, evaluate and explain chest X-ray classifiers (the library; no UI).

Module map (sub-packages by stage, the way MONAI groups its code):
    errors               user-facing error types (CXRError and subclasses)
    config               TrainConfig: one typed run configuration, saved as config.json
    runs                 run directories: the one owner of a run's facts (status, history, results)
    predict              the prediction path for files and uploaded bytes
    cli                  ``python -m cxrcore ...``
    data/io              image headers, decoding (PNG/JPEG/DICOM), the one pixel-normalisation function
    data/dicom           DICOM reading, validated values and the non-identifying dicom_summary
    data/dicom_pixels    DICOM decoders and the size checks before them (first frame only)
    data/index           dataset layouts and the cached image index
    data/splits          label schemes, patient-grouped splits, class weights, leakage checks
    data/demo            synthetic demo dataset (clearly marked as synthetic)
    training/backbones   registry of CNN backbones as data (no TensorFlow import)
    training/layers      the Keras layers models are made of (in-graph preprocessing, the custom CNN)
    training/model       flat backbone+head models, stage freezing, loading
    training/pipeline    tf.data input pipeline and augmentation
    training/devices     GPUs/CPU, mixed precision, tf.distribute strategy (several machines: TF_CONFIG)
    training/distributed the training loop for several workers (model.fit cannot drive that strategy)
    training/features    training on cached activations: the frozen part runs once per image
    training/activation_store  the on-disk activation cache (size limit, oldest first out)
    training/callbacks   checkpoint, history, progress, cancellation and resume-state callbacks
    training/train       two-stage training (resumable) into a run directory; finishing hooks attached by workflows
    evaluation/metrics   evaluation metrics as pure functions
    evaluation/evaluate  evaluation of a run on its test split or an external folder
    evaluation/plots     plotly figure builders (data in, go.Figure out)
    evaluation/commands  ``python -m cxrcore evaluate``
    explain/cam          Grad-CAM, Grad-CAM++, Score-CAM and overlays
    explain/faithfulness deletion, insertion and border share of a map; scores over a test sample
    explain/commands     ``python -m cxrcore explain`` and ``faithfulness``
    lungs/geometry       two lungs from a mask: boxes, lung fraction, crop box, a map's share inside the lungs
    lungs/model          the lung segmentation network (U-Net, plain or on a MobileNetV2 encoder)
    lungs/augment        augmentation for foreign films (borders, markers, opacities, inversion, small chests)
    lungs/train          ``lungs train``: mask sets, held-out split, the model's record
    lungs/segment        LungSegmenter and the model shipped in lungs/shipped/
    lungs/commands       ``python -m cxrcore lungs train`` and ``lungs segment``
    jobs/store           the job queue in SQLite (queued, who holds a job, cancel requests, progress)
    jobs/queue           submit, cancel, resume and wait: the actions on jobs
    jobs/scheduler       starts queued jobs as worker processes and watches them
    jobs/worker          one job's process (python -m cxrcore.jobs.worker)
    jobs/commands        ``python -m cxrcore jobs ...``
    jobs/processes       detached processes, liveness, kills and file locks
    jobs/hardware        GPUs and CPUs, without importing TensorFlow
    workflows            the use cases from start to end (train -> finish -> card, evaluate -> card,
                         faithfulness -> card, ensemble -> card, export, one image on Predict); the
                         one writer of the model card

Names below are imported lazily, so ``import cxrcore`` does not load TensorFlow.
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
    "is_dicom": "data.io",
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
    "submit": "jobs.store",
    "submit_comparison": "jobs.store",
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
