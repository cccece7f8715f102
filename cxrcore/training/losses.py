"""The loss and the metric of a findings (multi-label) model: sigmoid outputs, labels that may be left out.

A findings model has one sigmoid output per finding. Its targets hold 1 (positive), 0 (negative) or NaN: a
label left out (CheXpert's uncertain or blank under ``ignore``) is out of the loss and the metric for that
finding only, never a negative.

- :class:`MaskedBinaryCrossentropy`: per image, the mean over the ``k`` findings of the binary cross-entropy,
  a left-out label counting zero, a positive label weighted by its finding's ``pos_weight`` (with
  ``class_weights`` "balanced", the finding's negatives / positives on the training split:
  :func:`cxrcore.data.splits.positive_weights`). With every label present and no weights it is Keras's
  ``binary_crossentropy``.
- :class:`MaskedMeanAUC`: the mean over findings of each finding's ROC-AUC on its labelled images (Keras's
  ``AUC`` with ``multi_label``, 200 thresholds), logged as ``auc`` and ``val_auc``.

Both are registered for loading (``cxrcore>...``): a resumed run's saved optimizer state comes back with its
loss.
"""

from __future__ import annotations

import keras
from keras import ops

EPSILON = 1e-7


def clean(y_true):
    """``(targets with NaN as 0, mask)``: the mask is 1 where a label is present, 0 where it is left out."""
    y_true = ops.cast(y_true, "float32")
    present = ops.logical_not(ops.isnan(y_true))
    return ops.where(present, y_true, ops.zeros_like(y_true)), ops.cast(present, "float32")


@keras.saving.register_keras_serializable(package="cxrcore")
class MaskedBinaryCrossentropy(keras.losses.Loss):
    """Binary cross-entropy over sigmoid probabilities, left-out (NaN) labels masked, positives weighted per
    finding (``pos_weight``: one float per finding, or None for 1). ``call`` gives one loss per image: the
    mean over findings of ``-(w y log p + (1 - y) log(1 - p))``, 0 where the label is left out."""

    def __init__(self, pos_weight=None, name="masked_binary_crossentropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.pos_weight = None if pos_weight is None else [float(w) for w in pos_weight]

    def call(self, y_true, y_pred):
        y, mask = clean(y_true)
        p = ops.clip(ops.cast(y_pred, "float32"), EPSILON, 1.0 - EPSILON)
        weight = 1.0 if self.pos_weight is None else ops.convert_to_tensor(self.pos_weight, dtype="float32")
        per_label = -(weight * y * ops.log(p) + (1.0 - y) * ops.log(1.0 - p))
        return ops.mean(per_label * mask, axis=-1)

    def get_config(self):
        return {**super().get_config(), "pos_weight": self.pos_weight}


@keras.saving.register_keras_serializable(package="cxrcore")
class MaskedMeanAUC(keras.metrics.AUC):
    """The mean over findings of each finding's ROC-AUC, on the images where that finding is labelled."""

    def __init__(self, num_labels=None, name="auc", **kwargs):
        kwargs.pop("multi_label", None)
        super().__init__(name=name, multi_label=True, num_labels=num_labels, **kwargs)

    def update_state(self, y_true, y_pred, sample_weight=None):
        y, mask = clean(y_true)
        return super().update_state(y, y_pred, sample_weight=mask)

    def get_config(self):
        config = super().get_config()
        config.pop("multi_label", None)
        return config
