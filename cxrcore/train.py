"""Two-stage training: frozen backbone, then the top layers fine-tuned at a lower learning rate.

:func:`train` is the whole job (data -> run directory). Its steps are separate
functions so other entry points (background jobs, recipes, cached-feature
training) can reuse them: :func:`prepare_data`, :func:`configure_devices`,
:func:`compile_for_stage`, :func:`run_stage`, :func:`finish_run`.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pandas as pd
import tensorflow as tf
import keras

from . import runs as R
from .backbones import get_backbone
from .callbacks import AtomicCheckpoint, Cancel, HistoryLog, Progress
from .config import TrainConfig
from .data import build_index
from .errors import DataError
from .evaluate import evaluate_frame
from .model import build_model, inference_function, resolve_weights, set_stage
from .pipeline import decode_error_from, make_dataset, max_steps_from_env
from .splits import apply_label_scheme, assign_splits, check_trainable, class_weights, leakage_report

log = logging.getLogger("cxrcore.train")
ProgressFn = Optional[Callable[[dict], None]]


def prepare_data(config: TrainConfig, progress=None) -> tuple[pd.DataFrame, list[str]]:
    """Index, relabel and split the dataset; returns the frame (with ``split``) and the classes."""
    index = build_index(config.data, progress=progress)
    frame = apply_label_scheme(index, config.labels) if not config.labels.is_identity else index
    frame = assign_splits(frame, val_fraction=config.val_fraction, test_fraction=config.test_fraction,
                          seed=config.seed)
    return frame, check_trainable(frame)


def configure_devices(mixed_precision: bool = False) -> dict:
    """Use the GPU(s) TensorFlow sees (memory growth on), else the CPU; returns what was used."""
    gpus = tf.config.list_physical_devices("GPU")
    names = []
    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:  # already initialised in this process
            pass
        details = tf.config.experimental.get_device_details(gpu)
        names.append(details.get("device_name", gpu.name))
    use_mixed = bool(mixed_precision and gpus)
    keras.mixed_precision.set_global_policy("mixed_float16" if use_mixed else "float32")
    return {"device": f"GPU ({', '.join(names)})" if gpus else "CPU", "gpus": names,
            "mixed_precision": use_mixed}


def make_optimizer(name: str, learning_rate: float) -> keras.optimizers.Optimizer:
    return {"adam": keras.optimizers.Adam, "rmsprop": keras.optimizers.RMSprop,
            "adamax": keras.optimizers.Adamax, "sgd": lambda learning_rate: keras.optimizers.SGD(
                learning_rate=learning_rate, momentum=0.9)}[name](learning_rate=learning_rate)


def make_loss(config: TrainConfig) -> keras.losses.Loss:
    if config.focal_loss:
        return keras.losses.CategoricalFocalCrossentropy(gamma=config.focal_gamma,
                                                         label_smoothing=config.label_smoothing)
    return keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing)


def compile_for_stage(model: keras.Model, config: TrainConfig, stage: str, pretrained: bool) -> int:
    """Freeze for ``stage`` and compile (required after changing ``trainable``)."""
    unfreeze = config.unfreeze if config.unfreeze is not None else get_backbone(config.backbone).unfreeze
    n = set_stage(model, stage, unfreeze=unfreeze, pretrained=pretrained)
    lr = config.learning_rate * (config.fine_tune_lr_factor if stage == "finetune" else 1.0)
    model.compile(optimizer=make_optimizer(config.optimizer, lr), loss=make_loss(config),
                  metrics=["accuracy", keras.metrics.AUC(name="auc")])
    return n


def run_stage(model, train_ds, val_ds, *, first_epoch: int, epochs: int, config: TrainConfig,
              callbacks: list, class_weight) -> int:
    """Fit one stage; returns the number of epochs completed overall."""
    stage_callbacks = list(callbacks)
    if config.patience:
        stage_callbacks.append(keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.patience))
    if config.reduce_lr_patience:
        stage_callbacks.append(keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5,
                                                                 patience=config.reduce_lr_patience, min_lr=1e-7))
    try:
        history = model.fit(train_ds, validation_data=val_ds, initial_epoch=first_epoch,
                            epochs=first_epoch + epochs, callbacks=stage_callbacks,
                            class_weight=class_weight, shuffle=False, verbose=0)
    except tf.errors.OpError as exc:
        raise (decode_error_from(exc) or exc) from None
    return first_epoch + len(history.epoch)


def _attach_log(run: R.RunDir) -> logging.Handler:
    handler = logging.FileHandler(run.file(R.LOG))
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logging.getLogger("cxrcore").addHandler(handler)
    logging.getLogger("cxrcore").setLevel(logging.INFO)
    return handler


def _inference_ms(model: keras.Model, image_size: int, repeats: int = 10) -> float:
    """Milliseconds per single image through the prediction path's compiled forward pass."""
    forward = inference_function(model, image_size)
    x = np.zeros((1, image_size, image_size, 3), dtype=np.float32)
    forward(x)
    started = time.perf_counter()
    for _ in range(repeats):
        forward(x)
    return round((time.perf_counter() - started) / repeats * 1000, 2)


def train(config: TrainConfig, *, out_dir: str | Path | None = None, run: R.RunDir | None = None,
          progress: ProgressFn = None, should_stop: Optional[Callable[[], bool]] = None,
          data_progress=None) -> R.RunDir:
    """Train ``config`` end to end and return its run directory.

    ``progress(event)`` receives batch and epoch events (see :class:`Progress`);
    ``should_stop()`` is polled after every batch and cancels gracefully (the best
    checkpoint is kept, status ``cancelled``). Bad data raises before the run directory
    is created; a failure during training marks the run ``failed`` with the reason.
    """
    config.validate()
    spec = get_backbone(config.backbone)
    image_size = config.image_size or spec.input_size
    resolve_weights(spec, config.weights)  # a missing weights file fails before anything is written
    frame, classes = prepare_data(config, progress=data_progress)
    run = run or R.new_run_dir(config.backbone, out_dir)
    handler = _attach_log(run)
    started = time.time()
    try:
        return _train(config, spec, image_size, frame, classes, run, progress, should_stop, started)
    except BaseException as exc:
        cancelled = isinstance(exc, KeyboardInterrupt)
        run.update_info(status="cancelled" if cancelled else "failed",
                        error=None if cancelled else (str(exc).splitlines() or [type(exc).__name__])[0],
                        finished=time.strftime("%Y-%m-%dT%H:%M:%S"), train_seconds=round(time.time() - started, 1))
        log.error("training %s: %s", "cancelled" if cancelled else "failed", exc)
        raise
    finally:
        logging.getLogger("cxrcore").removeHandler(handler)
        handler.close()
        keras.mixed_precision.set_global_policy("float32")


def _train(config, spec, image_size, frame, classes, run, progress, should_stop, started) -> R.RunDir:
    keras.utils.set_random_seed(config.seed)
    devices = configure_devices(config.mixed_precision)
    pretrained = config.weights not in ("none", "")
    config.save(run.file(R.CONFIG))
    R.write_json(run.file(R.LABELS), classes)
    R.write_csv(run.file(R.SPLIT), frame)
    counts = frame["split"].value_counts().to_dict()
    info = run.update_info(
        run_id=run.run_id, status="running", backbone=spec.name, image_size=image_size, classes=classes,
        data=frame.attrs.get("root", config.data), layout=frame.attrs.get("layout", ""),
        n_train=int(counts.get("train", 0)), n_val=int(counts.get("val", 0)), n_test=int(counts.get("test", 0)),
        tensorflow=tf.__version__, keras=keras.__version__, started=time.strftime("%Y-%m-%dT%H:%M:%S"),
        **devices)
    log.info("run %s: %s at %d px on %s; classes %s; train/val/test %d/%d/%d", run.run_id, spec.name, image_size,
             devices["device"], classes, info["n_train"], info["n_val"], info["n_test"])
    leaked = leakage_report(frame)
    if len(leaked):
        log.warning("%d patient(s) have images in more than one split (the layout's own split)", len(leaked))

    max_steps = config.max_steps or max_steps_from_env()
    make = dict(classes=classes, image_size=image_size, batch_size=config.batch_size, seed=config.seed,
                cache=config.cache, max_steps=max_steps)
    train_ds = make_dataset(frame[frame["split"] == "train"], training=True, augment=config.augment, **make)
    val_ds = make_dataset(frame[frame["split"] == "val"], **make)
    weights = class_weights(frame.loc[frame["split"] == "train", "label"], classes, config.class_weights)
    model = build_model(spec.name, len(classes), image_size=image_size, weights=config.weights, head=config.head)
    total_epochs = config.epochs + config.fine_tune_epochs
    checkpoint = AtomicCheckpoint(run.file(R.MODEL))
    history = HistoryLog(run.file(R.HISTORY))
    cancel = Cancel(should_stop)
    callbacks = [checkpoint, history, cancel,
                 keras.callbacks.TensorBoard(str(run.file(R.TENSORBOARD)), write_graph=False)]
    reporter = None
    if progress is not None:
        reporter = Progress(progress, int(train_ds.cardinality().numpy()), total_epochs)
        callbacks.append(reporter)
    run.update_info(params=int(model.count_params()))

    done = 0
    stages = [("frozen", config.epochs), ("finetune", config.fine_tune_epochs)]
    for stage, epochs in stages:
        if epochs <= 0 or cancel.cancelled:
            continue
        trainable = compile_for_stage(model, config, stage, pretrained)
        history.stage = stage
        if reporter is not None:
            reporter.stage = stage
        if pretrained:
            log.info("stage %s: %d epoch(s), %d trainable backbone layer(s)", stage, epochs, trainable)
        else:
            log.info("stage %s: %d epoch(s); no pretrained weights, so the whole network trains", stage, epochs)
        done = run_stage(model, train_ds, val_ds, first_epoch=done, epochs=epochs, config=config,
                         callbacks=callbacks, class_weight=weights)
    return finish_run(run, model, checkpoint, frame, classes, image_size, config, done, cancel.cancelled, started)


def finish_run(run, model, checkpoint, frame, classes, image_size, config, epochs_done, cancelled, started):
    """Make sure a best model exists, evaluate it on the test split, record the outcome."""
    if checkpoint.best_epoch is None:
        log.warning("no finite val_loss was seen; saving the last weights as the model")
        checkpoint.set_model(model)
        checkpoint.save()
    train_seconds = round(time.time() - started, 1)
    best = keras.saving.load_model(str(run.file(R.MODEL)), compile=False)
    fields = dict(epochs_completed=epochs_done, best_epoch=checkpoint.best_epoch,
                  best_val_loss=checkpoint.best if checkpoint.best_epoch else None,
                  train_seconds=train_seconds, inference_ms_per_image=_inference_ms(best, image_size))
    test = frame[frame["split"] == "test"]
    if not cancelled and len(test):
        result = evaluate_frame(best, test.reset_index(drop=True), classes, image_size, run.path,
                                batch_size=config.batch_size)
        log.info("test: accuracy %.4f, macro F1 %.4f, macro AUC %s", result["accuracy"], result["macro_f1"],
                 result["macro_auc"])
    run.update_info(status="cancelled" if cancelled else "succeeded", error=None,
                    finished=time.strftime("%Y-%m-%dT%H:%M:%S"), **fields)
    log.info("run %s %s after %d epoch(s), %.1f s", run.run_id, "cancelled" if cancelled else "finished",
             epochs_done, train_seconds)
    return run
