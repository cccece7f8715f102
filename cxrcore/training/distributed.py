"""Training over several machines: ``model.fit``'s contract, for the strategy ``model.fit`` cannot drive.

Keras 3's ``model.fit`` fails under ``MultiWorkerMirroredStrategy`` (batches reach the model as
``PerReplica`` values: keras-team/keras#20585, tensorflow/tensorflow#72388). :func:`fit_distributed`
is the loop TensorFlow's own multi-worker guide describes, written for this project's training:

- each worker reads its share of every global batch (``AutoShardPolicy.DATA``: the same shuffled
  order everywhere, every worker keeping its own elements), so the batch size stays the global one;
- gradients are averaged over all workers' examples (the optimizer's all-reduce), class weights
  weigh each example as ``model.fit`` weighs it, and a partial last batch is averaged over the
  examples it has;
- BatchNormalization's moving statistics, which each worker moves by its own share of a batch, are
  averaged over the workers after every step, so the workers' models stay the same model;
- validation runs on each worker on the whole validation split with the same weights, so every
  worker sees the same ``val_loss`` and early stopping, learning-rate changes and the best
  checkpoint stay in step;
- a cancel on any worker stops all of them after the same batch (a worker that stopped alone
  would leave the others waiting for it forever);
- the callbacks are the ones ``model.fit`` gets, called with the same logs (``loss``,
  ``accuracy``, ``auc`` and their ``val_`` forms), so history, checkpoints, resume state and
  progress work as on one machine.

``auc`` here is the exact area over all one-hot outputs (what Keras's ``AUC`` estimates with 200
thresholds), so the two differ in the third decimal; for a findings model it is the mean over findings of
each one's exact AUC on its labelled images (:func:`mean_auc`), and there is no ``accuracy``.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from sklearn.metrics import roc_auc_score

from .callbacks import Cancel
from .losses import MaskedBinaryCrossentropy


def is_multi_worker(strategy: tf.distribute.Strategy) -> bool:
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def mean_auc(y: np.ndarray, p: np.ndarray) -> float:
    """A findings model's ``auc``: the mean over findings of each one's exact ROC-AUC on the images where it is
    labelled (NaN targets left out); findings with one label value only are skipped (NaN when all are)."""
    found = []
    for j in range(y.shape[1]):
        labelled = ~np.isnan(y[:, j])
        truth = y[labelled, j] > 0.5
        if 0 < truth.sum() < truth.size:
            found.append(roc_auc_score(truth, p[labelled, j]))
    return float(np.mean(found)) if found else float("nan")


def _epoch_logs(
    loss_sum: float,
    n: int,
    labels: list[np.ndarray],
    probs: list[np.ndarray],
    prefix: str = "",
    multi_label: bool = False,
) -> dict:
    y = np.concatenate(labels) if labels else np.zeros((0, 1))
    p = np.concatenate(probs) if probs else np.zeros((0, 1))
    logs = {f"{prefix}loss": loss_sum / max(n, 1)}
    if multi_label:  # no accuracy: an image holds several findings
        logs[f"{prefix}auc"] = mean_auc(y, p) if len(y) else float("nan")
        return logs
    logs[f"{prefix}accuracy"] = float(np.mean(y.argmax(1) == p.argmax(1))) if len(y) else float("nan")
    try:
        logs[f"{prefix}auc"] = float(roc_auc_score(y.ravel(), p.ravel()))
    except ValueError:  # one label value only
        logs[f"{prefix}auc"] = float("nan")
    return logs


def _class_weight_table(class_weight: dict | None, k: int) -> tf.Tensor:
    return tf.constant([float((class_weight or {}).get(i, 1.0)) for i in range(k)], dtype=tf.float32)


def _moving_statistics(layer) -> list:
    """The moving mean and variance of every BatchNormalization layer that updates them in training
    (a frozen one runs in inference mode and keeps them)."""
    found = []
    for inner in getattr(layer, "layers", []):
        if isinstance(inner, keras.layers.BatchNormalization) and inner.trainable:
            found += [inner.moving_mean, inner.moving_variance]
        found += _moving_statistics(inner)
    return found


def _sharded(dataset: tf.data.Dataset) -> tf.data.Dataset:
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def fit_distributed(
    model: keras.Model,
    train_ds: tf.data.Dataset,
    val_ds: tf.data.Dataset,
    *,
    strategy: tf.distribute.Strategy,
    initial_epoch: int,
    epochs: int,
    callbacks: list,
    class_weight: dict | None = None,
) -> list[int]:
    """Train ``model`` (compiled: optimizer and loss) from ``initial_epoch`` up to ``epochs`` under
    ``strategy``; returns the epochs run, as ``model.fit``'s ``history.epoch``."""
    k = int(model.outputs[0].shape[-1])
    weights = _class_weight_table(class_weight, k)
    per_example = (keras.losses.get(model.loss) if isinstance(model.loss, str) else model.loss).call  # unreduced
    multi_label = isinstance(model.loss, MaskedBinaryCrossentropy)  # positives weighted in the loss itself
    optimizer = model.optimizer
    moving = _moving_statistics(model)
    dist = strategy.experimental_distribute_dataset(_sharded(train_ds))

    @tf.function
    def train_step(x, y):
        def replica_step(xb, yb):
            context = tf.distribute.get_replica_context()
            global_n = context.all_reduce(tf.distribute.ReduceOp.SUM, tf.cast(tf.shape(yb)[0], tf.float32))
            with tf.GradientTape() as tape:
                probs = model(xb, training=True)
                losses = per_example(yb, probs) * tf.gather(weights, tf.argmax(yb, axis=-1))
                loss = tf.reduce_sum(losses) / tf.maximum(global_n, 1.0)
                if model.losses:
                    loss += tf.add_n(model.losses) / strategy.num_replicas_in_sync
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables))
            statistics = [tf.identity(tf.convert_to_tensor(variable)) for variable in moving]
            return tf.reduce_sum(losses), tf.cast(tf.shape(yb)[0], tf.float32), yb, probs, statistics

        loss_sum, n, yb, probs, statistics = strategy.run(replica_step, args=(x, y))
        for variable, local in zip(moving, statistics):  # each worker moved them by its share of the batch
            variable.assign(strategy.reduce(tf.distribute.ReduceOp.MEAN, local, axis=None))
        return (
            strategy.reduce(tf.distribute.ReduceOp.SUM, loss_sum, axis=None),
            strategy.reduce(tf.distribute.ReduceOp.SUM, n, axis=None),
            strategy.gather(yb, axis=0),
            strategy.gather(probs, axis=0),
        )

    @tf.function
    def anyone_stops(flag):
        return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(lambda: tf.identity(flag)), axis=None) > 0

    @tf.function
    def predict_step(x):
        return model(x, training=False)

    cancel = next((c for c in callbacks if isinstance(c, Cancel)), None)
    steps = int(train_ds.cardinality().numpy())
    callback_list = keras.callbacks.CallbackList(
        callbacks, model=model, add_history=False, add_progbar=False, epochs=epochs, steps=steps, verbose=0
    )
    model.stop_training = False
    ran: list[int] = []
    callback_list.on_train_begin()
    for epoch in range(initial_epoch, epochs):
        callback_list.on_epoch_begin(epoch)
        loss_sum, n, labels, probs = 0.0, 0, [], []
        for batch, (x, y) in enumerate(dist):
            callback_list.on_train_batch_begin(batch)
            batch_loss, batch_n, batch_y, batch_p = train_step(x, y)
            loss_sum, n = loss_sum + float(batch_loss), n + int(batch_n)
            labels.append(batch_y.numpy())
            probs.append(batch_p.numpy())
            callback_list.on_train_batch_end(batch, {"loss": float(batch_loss) / max(float(batch_n), 1.0)})
            stop = bool(anyone_stops(tf.constant(1 if model.stop_training else 0)).numpy())
            if stop:
                if cancel is not None and not cancel.cancelled:  # another worker was told to stop
                    cancel.cancelled = True
                model.stop_training = True
                break
        logs = _epoch_logs(loss_sum, n, labels, probs, multi_label=multi_label)
        val_loss, val_n, val_labels, val_probs = 0.0, 0, [], []
        for x, y in val_ds:
            p = predict_step(x)
            val_loss += float(tf.reduce_sum(per_example(y, p)))
            val_n += int(y.shape[0])
            val_labels.append(y.numpy())
            val_probs.append(p.numpy())
        if val_n:
            logs.update(_epoch_logs(val_loss, val_n, val_labels, val_probs, prefix="val_", multi_label=multi_label))
        callback_list.on_epoch_end(epoch, logs)
        ran.append(epoch)
        if model.stop_training:
            break
    callback_list.on_train_end()
    return ran
