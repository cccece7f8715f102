"""Two-stage training: frozen backbone, then the top layers fine-tuned at a lower learning rate.

:func:`train` is the whole job (data -> run directory). Its steps are separate
functions so other entry points (background jobs, recipes, cached-feature
training) can reuse them: :func:`prepare_data`, :func:`cxrcore.training.devices.configure_devices`,
:func:`compile_for_stage`, :func:`run_stage`, :func:`finish_run`. After every epoch the
full model (optimizer included) is kept in ``<run>/state/`` so a killed run can resume.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import keras
import pandas as pd
import tensorflow as tf

from .. import runs
from ..config import TrainConfig
from ..data.findings import is_findings
from ..data.index import build_index
from ..data.splits import (
    apply_label_scheme,
    assign_splits,
    check_trainable,
    describe_drop,
    drop_single_class_sources,
    leakage_report,
    positive_weights,
    source_groups,
    training_class_weights,
)
from ..errors import ConfigError, RunError
from ..evaluation.external import check_external
from ..lungs.segment import shipped_fingerprint
from ..runs import write_csv
from .backbones import get_backbone
from .callbacks import AtomicCheckpoint, Cancel, HistoryLog, Progress, ResumeState
from .devices import configure_devices
from .distributed import fit_distributed, is_multi_worker
from .features import plan_stage
from .losses import MaskedBinaryCrossentropy, MaskedMeanAUC
from .model import build_model, is_multi_label, resolve_weights, set_stage
from .pipeline import decode_error_from, make_dataset, max_steps_from_env

log = logging.getLogger("cxrcore.training.train")
ProgressFn = Callable[[dict], None] | None
#: batches per call into TensorFlow when training on cached activations (the same updates, less overhead;
#: progress and cancellation are then seen every this many batches)
STEPS_PER_EXECUTION = 8


def _lung_model_fingerprint(config: TrainConfig) -> str | None:
    """Which lung model the run's lung pixel rules use (a digest of the shipped file), or None without them."""
    if not (config.pixels.lung_crop or config.pixels.lung_mask):
        return None

    return shipped_fingerprint()


def prepare_data(config: TrainConfig, progress=None) -> tuple[pd.DataFrame, list[str]]:
    """Index, relabel, leave out single-class sources (``drop_single_class_sources``) and split the
    dataset; returns the frame (with ``split``) and the classes. What was left out is in
    ``frame.attrs["sources"]`` (:func:`cxrcore.data.splits.drop_single_class_sources`; the run records it
    in run.json). With ``balance`` "source", a training split whose images have no known source is refused
    here, before anything is written. A findings dataset (read under ``config.findings``) trains a multi-label
    model: its outputs are its findings (:func:`check_findings_options` says what it refuses)."""
    index = build_index(config.data, progress=progress, options=config.findings)
    if is_findings(index):
        check_findings_options(config)
    frame = apply_label_scheme(index, config.labels) if not config.labels.is_identity else index
    dropped = None
    if config.drop_single_class_sources:  # on the whole dataset, before splitting
        frame, dropped = drop_single_class_sources(frame)  # logged by the run, into its log
    frame = assign_splits(frame, val_fraction=config.val_fraction, test_fraction=config.test_fraction, seed=config.seed)
    classes = check_trainable(frame)
    if config.balance == "source":
        source_groups(frame[frame["split"] == "train"])  # DataError now when no source is known
    if dropped is not None:
        frame.attrs["sources"] = dropped
    return frame, classes


#: settings that apply to class-labelled runs only, and why a findings run refuses them
CLASS_ONLY = {
    "labels": "a label scheme relabels classes; keep findings with --findings",
    "balance": "batches are balanced over (source, class) groups, and a findings image has no one class",
    "drop_single_class_sources": "a source holds a class or not; findings images hold several",
    "focal_loss": "the focal loss here is categorical; a findings model trains on the masked binary cross-entropy",
    "label_smoothing": "label smoothing here is categorical",
}


def check_findings_options(config: TrainConfig) -> None:
    """:class:`ConfigError` naming the setting when ``config`` asks a findings run for a class-only one."""
    asked = {
        "labels": not config.labels.is_identity,
        "balance": config.balance != "none",
        "drop_single_class_sources": config.drop_single_class_sources,
        "focal_loss": config.focal_loss,
        "label_smoothing": config.label_smoothing > 0,
    }
    for name, on in asked.items():
        if on:
            raise ConfigError(f"{name} does not apply to a findings dataset: {CLASS_ONLY[name]}")


def make_optimizer(name: str, learning_rate: float) -> keras.optimizers.Optimizer:
    return {
        "adam": keras.optimizers.Adam,
        "rmsprop": keras.optimizers.RMSprop,
        "adamax": keras.optimizers.Adamax,
        "sgd": lambda learning_rate: keras.optimizers.SGD(learning_rate=learning_rate, momentum=0.9),
    }[name](learning_rate=learning_rate)


def make_loss(config: TrainConfig, pos_weight: list[float] | None = None, multi_label: bool = False):
    """The training loss: for a findings model (``multi_label``) the masked binary cross-entropy with
    ``pos_weight`` per finding; otherwise categorical cross-entropy (focal with ``focal_loss``)."""
    if multi_label:
        return MaskedBinaryCrossentropy(pos_weight=pos_weight)
    if config.focal_loss:
        return keras.losses.CategoricalFocalCrossentropy(
            gamma=config.focal_gamma, label_smoothing=config.label_smoothing
        )
    return keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing)


def compile_for_stage(model: keras.Model, config: TrainConfig, stage: str, pretrained: bool, loss=None) -> int:
    """Freeze for ``stage`` and compile (required after changing ``trainable``) with ``loss`` (default:
    :func:`make_loss` of ``config``)."""
    unfreeze = config.unfreeze if config.unfreeze is not None else get_backbone(config.backbone).unfreeze
    n = set_stage(model, stage, unfreeze=unfreeze, pretrained=pretrained)
    lr = config.learning_rate * (config.fine_tune_lr_factor if stage == "finetune" else 1.0)
    model.compile(
        optimizer=make_optimizer(config.optimizer, lr),
        loss=loss or make_loss(config),
        metrics=compile_metrics(model),
        jit_compile=jit_compile(config),
    )
    return n


def jit_compile(config: TrainConfig) -> bool | str:
    """``compile``'s ``jit_compile`` for ``config.xla``."""
    return {"auto": "auto", "on": True, "off": False}[config.xla]


def compile_metrics(model: keras.Model) -> list:
    """What the curves and ``history.csv`` show: accuracy and AUC of a classifier; for a findings model the
    mean AUC over findings (``auc``, :class:`MaskedMeanAUC`)."""
    if is_multi_label(model):
        return [MaskedMeanAUC(num_labels=int(model.outputs[0].shape[-1]), name="auc")]
    return ["accuracy", keras.metrics.AUC(name="auc")]


def run_stage(
    model, train_ds, val_ds, *, initial_epoch: int, final_epoch: int, config: TrainConfig, callbacks: list, class_weight
) -> int:
    """Fit one stage from ``initial_epoch`` up to ``final_epoch``; returns epochs completed overall."""
    stage_callbacks = list(callbacks)
    if config.patience:
        stage_callbacks.append(keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.patience))
    if config.reduce_lr_patience:
        stage_callbacks.append(
            keras.callbacks.ReduceLROnPlateau(
                monitor="val_loss", factor=config.reduce_lr_factor, patience=config.reduce_lr_patience, min_lr=1e-7
            )
        )
    strategy = tf.distribute.get_strategy()
    try:
        if is_multi_worker(strategy):  # model.fit cannot drive it
            ran = fit_distributed(
                model,
                train_ds,
                val_ds,
                strategy=strategy,
                initial_epoch=initial_epoch,
                epochs=final_epoch,
                callbacks=stage_callbacks,
                class_weight=class_weight,
            )
        else:
            ran = model.fit(
                train_ds,
                validation_data=val_ds,
                initial_epoch=initial_epoch,
                epochs=final_epoch,
                callbacks=stage_callbacks,
                class_weight=class_weight,
                shuffle=False,
                verbose=0,
            ).epoch
    except tf.errors.OpError as exc:
        raise (decode_error_from(exc) or exc) from None
    return initial_epoch + len(ran)


def _attach_log(run: runs.RunDir) -> logging.Handler:
    handler = logging.FileHandler(run.file(runs.LOG))
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logging.getLogger("cxrcore").addHandler(handler)
    logging.getLogger("cxrcore").setLevel(logging.INFO)
    return handler


def train(
    config: TrainConfig,
    *,
    out_dir: str | Path | None = None,
    run: runs.RunDir | None = None,
    progress: ProgressFn = None,
    should_stop: Callable[[], bool] | None = None,
    data_progress=None,
    resume: bool = False,
    prepared: Callable[[TrainConfig, pd.DataFrame], None] | None = None,
    finish: Callable[[runs.RunDir, pd.DataFrame], dict | None] | None = None,
    complete: Callable[[runs.RunDir], None] | None = None,
) -> runs.RunDir:
    """Train ``config`` and return its run directory: the stage of training alone. What a trained model is
    then made into (calibration, test results, the model card) is attached by the caller
    (:func:`cxrcore.workflows.train` attaches all of it):

    - ``prepared(config, frame)`` once the data is indexed, split and checked, before the first epoch;
    - ``finish(run, frame)``, unless the run was cancelled, as soon as the best model is saved (in the run's
      ``model.keras``) and the last epoch's time taken: its return value (fields for ``run.json``) is
      recorded with the run's outcome;
    - ``complete(run)`` once the run has succeeded.

    Both run inside the run's training log, and an exception in either marks the run failed.

    ``progress(event)`` receives batch and epoch events (see :class:`Progress`);
    ``should_stop()`` is polled after every batch and cancels gracefully (the best
    checkpoint is kept, status ``cancelled``). Bad data raises before the run directory
    is created; a failure during training marks the run ``failed`` with the reason.

    ``resume=True`` continues ``run`` (a run whose process died, failed or was cancelled) from
    its last completed epoch, with the model, optimizer state, split and history it had; a
    run that succeeded, or whose process is still alive, is refused
    (:meth:`cxrcore.runs.RunDir.check_resumable`). Use :func:`resume_run` for that.
    """
    config = config.resolved()  # weights, size and unfreeze depth left open follow the backbone
    spec = get_backbone(config.backbone)
    image_size = config.image_size or spec.input_size
    if resume:
        if run is None:
            raise RunError("nothing to resume: no run directory given")
        run.check_resumable()
        frame, classes = run.split(), run.labels()
        past = run.info()
        frame.attrs.update(root=past.get("data", config.data), layout=past.get("layout", ""))
    else:
        if run is not None and (run.exists() or run.file(runs.INFO).exists()):
            raise RunError(f"{run.path} already holds a run; train into a new directory or resume it")
        resolve_weights(spec, config.weights)  # a missing weights file fails before anything is written
        frame, classes = prepare_data(config, progress=data_progress)
        check_external(
            config, classes, is_findings(frame)
        )  # an external set that could not be evaluated fails now, not after
    if prepared is not None:
        prepared(config, frame)
    strategy, devices = configure_devices(config.mixed_precision)
    run = run or runs.new_run_dir(config.backbone, out_dir)
    handler = _attach_log(run)
    started = time.time()
    try:
        with strategy.scope():
            trained = _train(config, spec, image_size, frame, classes, run, progress, should_stop, devices, resume)
        # outside the strategy: evaluation predicts on this machine alone (model.predict cannot run
        # under a multi-worker strategy, and splitting inference over replicas gains nothing here)
        finish_run(run, *trained, frame, config, started, finish)
        if not trained[-1]:  # not cancelled: nothing is left to resume
            shutil.rmtree(run.path / runs.STATE_DIR, ignore_errors=True)
        if run.is_final and complete is not None:
            complete(run)
        return run
    except BaseException as exc:
        cancelled = isinstance(exc, KeyboardInterrupt)
        if run.is_final:  # stopped after it had finished: a finished run is never rewritten
            raise
        run.update_info(
            status="cancelled" if cancelled else "failed",
            error=None if cancelled else (str(exc).splitlines() or [type(exc).__name__])[0],
            finished=time.strftime("%Y-%m-%dT%H:%M:%S"),
            train_seconds=round(time.time() - started, 1),
        )
        log.error("training %s: %s", "cancelled" if cancelled else "failed", exc)
        raise
    finally:
        logging.getLogger("cxrcore").removeHandler(handler)
        handler.close()
        keras.mixed_precision.set_global_policy("float32")


def resume_run(run_dir: str | Path, **hooks) -> runs.RunDir:
    """Continue a run from its last completed epoch with its own configuration (``hooks``: ``progress``,
    ``should_stop``, ``prepared``, ``finish``, ``complete`` as for :func:`train`). A finished run, or one whose
    process is alive, is refused with the reason. :func:`cxrcore.workflows.resume` is the one resume path (``train
    --resume``, a resumed background job, the dashboard's Resume button)."""
    run = runs.RunDir(run_dir)
    run.check_resumable()
    return train(run.config(), run=run, resume=True, **hooks)


def _restore(
    run: runs.RunDir, history: HistoryLog, checkpoint: AtomicCheckpoint, resume_state: ResumeState, state: dict
) -> keras.Model:
    """Model (with optimizer state), history rows and best checkpoint of an interrupted run, as
    they were at its last completed epoch (later writes of a killed epoch are undone)."""
    folder = run.path / runs.STATE_DIR
    model = keras.saving.load_model(str(folder / state["model"]), compile=True)
    done = int(state["epochs_done"])
    past = run.history()
    past = past[past["epoch"] <= done] if len(past) else past
    history.rows = past.to_dict("records")
    write_csv(run.file(runs.HISTORY), past)
    best = folder / runs.BEST_FILE
    if state.get("best_epoch") is not None and best.is_file():
        tmp = run.path / f".tmp{os.getpid()}-{runs.MODEL}"
        shutil.copyfile(best, tmp)
        os.replace(tmp, run.file(runs.MODEL))
        checkpoint.best, checkpoint.best_epoch = float(state["best_val_loss"]), int(state["best_epoch"])
        resume_state.keep_best()
    elif "best_epoch" not in state and len(past) and "val_loss" in past and run.file(runs.MODEL).exists():
        best_row = past.loc[past["val_loss"].idxmin()]  # resume state written before best.keras existed
        checkpoint.best, checkpoint.best_epoch = float(best_row["val_loss"]), int(best_row["epoch"])
    elif run.file(runs.MODEL).exists():  # written during the killed epoch: not a completed one
        run.file(runs.MODEL).unlink()
    log.info("resuming %s after epoch %d (stage %s)", run.run_id, done, state["stage"])
    return model


def _train(
    config, spec, image_size, frame, classes, run, progress, should_stop, devices, resume
) -> tuple[keras.Model, AtomicCheckpoint, int, bool]:
    """The two stages; returns ``(model, checkpoint, epochs done, cancelled)`` for :func:`finish_run`."""
    keras.utils.set_random_seed(config.seed)
    pretrained = config.weights not in ("none", "")
    state = run.resume_state() if resume else None
    if resume:  # a killed process may have left a temporary file mid-write: never a real one
        for stale in [*run.path.glob(".*tmp*"), *(run.path / runs.STATE_DIR).glob(".tmp*")]:
            stale.unlink(missing_ok=True)
    if not resume:
        config.save(run.file(runs.CONFIG))
        runs.write_json(run.file(runs.LABELS), classes)
        runs.write_csv(run.file(runs.SPLIT), frame)
    counts = frame["split"].value_counts().to_dict()
    info = run.update_info(
        run_id=run.run_id,
        status="running",
        error=None,
        backbone=spec.name,
        image_size=image_size,
        classes=classes,
        task="findings" if is_findings(frame) else "classes",
        data=frame.attrs.get("root", config.data),
        layout=frame.attrs.get("layout", ""),
        n_train=int(counts.get("train", 0)),
        n_val=int(counts.get("val", 0)),
        n_test=int(counts.get("test", 0)),
        tensorflow=tf.__version__,
        keras=keras.__version__,
        lung_model=_lung_model_fingerprint(config),
        started=time.strftime("%Y-%m-%dT%H:%M:%S"),
        finished=None,
        **runs.this_process(),
        resumed_from_epoch=int(state["epochs_done"]) if state else None,
        **devices,
    )
    log.info(
        "run %s: %s at %d px on %s (%s strategy, %d replica(s)); classes %s; train/val/test %d/%d/%d",
        run.run_id,
        spec.name,
        image_size,
        devices["device"],
        devices["strategy"],
        devices["replicas"],
        classes,
        info["n_train"],
        info["n_val"],
        info["n_test"],
    )
    leaked = leakage_report(frame)
    if len(leaked):
        log.warning("%d patient(s) have images in more than one split (the layout's own split)", len(leaked))
    dropped = frame.attrs.get("sources")
    if dropped is not None:  # a resumed run has it in run.json already
        log.info("sources: %s", describe_drop(dropped))
        run.update_info(dropped_sources=dropped)
    train_frame = frame[frame["split"] == "train"]
    groups = source_groups(train_frame) if config.balance == "source" else None
    if groups is not None:
        log.info("training batches balanced over (source, class): %s", groups.describe())
        unknown = int(sum(n for (source, _), n in zip(groups.names, groups.sizes) if source == ""))
        if unknown:
            log.warning("%d training image(s) have no source: they are drawn as one more source, (unknown)", unknown)
        run.update_info(balance_groups=groups.table())

    max_steps = config.max_steps or max_steps_from_env()
    make = dict(
        classes=classes,
        image_size=image_size,
        batch_size=config.batch_size,
        seed=config.seed,
        cache=config.cache,
        max_steps=max_steps,
        pixels=config.pixels,
    )
    train_ds = make_dataset(train_frame, training=True, augment=config.augment, balance=config.balance, **make)
    val_ds = make_dataset(frame[frame["split"] == "val"], **make)  # never rebalanced
    multi_label = is_findings(frame)
    pos_weight = positive_weights(train_frame, classes, config.class_weights) if multi_label else None
    weights = None if multi_label else training_class_weights(train_frame, classes, config.class_weights, groups)
    loss = make_loss(config, pos_weight, multi_label)
    if multi_label:
        run.update_info(positive_weights=dict(zip(classes, pos_weight)) if pos_weight else None)
        if pos_weight:
            log.info(
                "positive weights (negatives / positives): %s",
                ", ".join(f"{c} {w:.2f}" for c, w in zip(classes, pos_weight)),
            )
    if groups is not None and weights is not None:
        log.info(
            "class weights on the balanced draw: %s",
            ", ".join(f"{c} {weights[i]:.3f}" for i, c in enumerate(classes)),
        )
    cancel = Cancel(should_stop)
    checkpoint = AtomicCheckpoint(run.file(runs.MODEL), cancel=cancel)
    history = HistoryLog(run.file(runs.HISTORY), cancel=cancel)
    resume_state = ResumeState(run.path / runs.STATE_DIR, checkpoint, cancel=cancel)
    if state:
        model = _restore(run, history, checkpoint, resume_state, state)
    else:
        if resume:
            log.info("no completed epoch to resume from; starting %s again from epoch 1", run.run_id)
        model = build_model(
            spec.name,
            len(classes),
            image_size=image_size,
            weights=config.weights,
            head=config.head,
            multi_label=multi_label,
        )
    callbacks = [
        cancel,
        checkpoint,
        history,
        resume_state,
        keras.callbacks.TensorBoard(str(run.file(runs.TENSORBOARD)), write_graph=False),
    ]
    reporter = None
    if progress is not None:
        reporter = Progress(
            progress, int(train_ds.cardinality().numpy()), config.epochs + config.fine_tune_epochs, cancel=cancel
        )
        callbacks.append(reporter)
    run.update_info(params=int(model.count_params()))
    if progress is not None:
        progress(
            {
                "event": "start",
                "run_dir": str(run.path),
                "device": devices["device"],
                "replicas": devices["replicas"],
                "resumed_from_epoch": info["resumed_from_epoch"],
            }
        )

    done = int(state["epochs_done"]) if state else 0
    fast = config.feature_cache and pretrained and devices["replicas"] == 1
    if not fast:
        why = (
            "no pretrained weights: every layer trains"
            if not pretrained
            else "feature_cache off"
            if not config.feature_cache
            else f"{devices['replicas']} replicas: cached activations are used on one device only"
        )
        log.info("training on full passes (%s)", why)
    order = {"frozen": 0, "finetune": 1}
    for stage, epochs in (("frozen", config.epochs), ("finetune", config.fine_tune_epochs)):
        if epochs <= 0 or cancel.cancelled:
            continue
        if state and order[stage] < order[state["stage"]]:
            continue  # finished before the interruption
        if state and stage == state["stage"]:
            if state["stage_complete"]:
                continue
            start = int(state["stage_start"])  # continue this stage, optimizer state intact
        else:
            start = done
            trainable = compile_for_stage(model, config, stage, pretrained, loss)
            if pretrained:
                log.info("stage %s: %d epoch(s), %d trainable backbone layer(s)", stage, epochs, trainable)
            else:
                log.info("stage %s: %d epoch(s); no pretrained weights, so the whole network trains", stage, epochs)
        history.stage = resume_state.stage = stage
        resume_state.stage_start = start
        if reporter is not None:
            reporter.stage = stage
        stage_started = time.time()
        fitted, fit_train, fit_val = model, train_ds, val_ds
        unfreeze = config.unfreeze if config.unfreeze is not None else spec.unfreeze
        plan = plan_stage(model, stage, config, frame, classes, image_size, unfreeze, max_steps) if fast else None
        if plan is not None:  # the part above the cut trains, with the complete model's optimizer
            fitted, fit_train, fit_val = plan.model, plan.train, plan.val
            fitted.compile(
                optimizer=model.optimizer,
                loss=model.loss,
                metrics=compile_metrics(model),
                steps_per_execution=STEPS_PER_EXECUTION,  # small steps: the per-step overhead dominated
                jit_compile=jit_compile(config),
            )
            run.update_info(**{f"{stage}_cut": plan.cut})
        xla = bool(fitted.jit_compile) and not is_multi_worker(tf.distribute.get_strategy())  # its loop: no XLA
        run.update_info(**{f"{stage}_xla": xla})
        log.info("stage %s: XLA %s (xla=%s)", stage, "on" if xla else "off", config.xla)
        checkpoint.target = resume_state.target = model
        done = run_stage(
            fitted,
            fit_train,
            fit_val,
            initial_epoch=done,
            final_epoch=start + epochs,
            config=config,
            callbacks=callbacks,
            class_weight=weights,
        )
        if not cancel.epoch_complete:
            done -= 1  # Keras counts the epoch it was stopped in
        seconds = {**(run.info().get("stage_seconds") or {}), stage: round(time.time() - stage_started, 2)}
        run.update_info(stage_seconds=seconds)  # the stage's wall time, computing its activations included
        if not cancel.cancelled:
            resume_state.mark_stage_complete(done)
    return model, checkpoint, done, cancel.cancelled


def finish_run(run, model, checkpoint, epochs_done, cancelled, frame, config, started, finish=None):
    """Make sure a best model exists, hand it to ``finish`` (unless cancelled) and record the outcome."""
    if checkpoint.best_epoch is None:
        log.warning("no finite val_loss was seen; saving the last weights as the model")
        checkpoint.set_model(model)
        checkpoint.save()
    train_seconds = round(time.time() - started, 1)
    fields = dict(
        epochs_completed=epochs_done,
        best_epoch=checkpoint.best_epoch,
        best_val_loss=checkpoint.best if checkpoint.best_epoch else None,
        train_seconds=train_seconds,
    )
    if finish is not None and not cancelled:
        fields.update(finish(run, frame) or {})
    run.update_info(
        status="cancelled" if cancelled else "succeeded",
        error=None,
        finished=time.strftime("%Y-%m-%dT%H:%M:%S"),
        **fields,
    )
    log.info(
        "run %s %s after %d epoch(s), %.1f s",
        run.run_id,
        "cancelled" if cancelled else "finished",
        epochs_done,
        train_seconds,
    )
    return run
