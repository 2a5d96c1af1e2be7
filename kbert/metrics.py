"""The pre-training accuracy metric: sparse accuracy without an argmax over the vocabulary."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="kbert")
def label_logit_is_max(y_true: Any, y_pred: Any) -> Any:
    """1.0 where the label's logit is the largest, else 0.0 (shape of `y_pred[..., 0]`).

    Equal to `argmax(y_pred) == y_true` except on exact ties for the maximum, which count as
    correct here (argmax picks the first). One max over the vocabulary replaces the argmax:
    Keras' `ops.argmax` first rewrites -0.0 in all B·P×vocab logits on TensorFlow, and XLA's
    argmax on CPU is a slow variadic reduce (issue 16: 3.8 % of a `mini` step).

    Examples:
    >>> ops.convert_to_numpy(label_logit_is_max([2, 0], [[0.1, 0.5, 0.9], [0.1, 0.5, 0.9]]))
    array([1., 0.], dtype=float32)
    """
    y_pred = ops.convert_to_tensor(y_pred)
    labels = ops.reshape(ops.cast(y_true, "int32"), ops.shape(y_pred)[:-1])
    at_label = ops.take_along_axis(y_pred, ops.expand_dims(labels, -1), axis=-1)[..., 0]
    return ops.cast(at_label >= ops.max(y_pred, axis=-1), "float32")


@keras.saving.register_keras_serializable(package="kbert")
class SparseMaxLogitAccuracy(keras.metrics.MeanMetricWrapper):
    """How often the label's logit is the largest: `SparseCategoricalAccuracy` without its argmax.

    Labels are integer class ids, predictions logits (or probabilities) with one more axis. The
    result equals `keras.metrics.SparseCategoricalAccuracy`'s except where several classes tie
    exactly for the largest logit and the label is one of them (see `label_logit_is_max`).

    Args:
        name: the metric's name.
        dtype: the result's dtype.

    Examples:
    >>> metric = SparseMaxLogitAccuracy()
    >>> metric.update_state([[1], [0]], [[0.2, 0.8], [0.3, 0.7]], sample_weight=[1.0, 3.0])
    >>> float(metric.result())
    0.25
    """

    def __init__(self, name: str = "sparse_max_logit_accuracy", dtype: Any = None):
        super().__init__(fn=label_logit_is_max, name=name, dtype=dtype)
        self._direction = "up"

    def get_config(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype}
