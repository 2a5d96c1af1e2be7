"""The pre-training losses and `compile_for_pretraining`: MLM + NSP summed, one update per step."""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

LOSS_WEIGHTS = {"mlm": 1.0, "nsp": 1.0}


def per_example_cross_entropy(y_true: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """Sparse softmax cross-entropy from logits, one value per label (shape of `logits[..., 0]`)."""
    logits = tf.cast(logits, tf.float32)
    labels = tf.reshape(tf.cast(y_true, tf.int32), tf.shape(logits)[:-1])
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)


def _sum_over_replicas(value: tf.Tensor) -> tf.Tensor:
    """Sum of `value` over all replicas in sync (identity on one device)."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return value
    return context.all_reduce(tf.distribute.ReduceOp.SUM, value)


@keras.saving.register_keras_serializable(package="kbert")
class WeightedSparseCrossEntropy(keras.losses.Loss):
    """Σ w·ce / Σ w over the **global** batch: Google's MLM loss, and the NSP mean.

    Keras' reductions divide by the number of elements (wrong for padded MLM predictions) or
    average per-replica ratios (`mean_with_sample_weight`, which depends on how the batch is split).
    This loss sums the weights over all replicas, so each replica returns its share
    Σ_local w·ce / Σ_global w; the replicas' gradients, summed by the strategy, are the gradient of
    the global ratio, for any number of replicas. With no sample weight every label counts 1.

    Examples:
    >>> loss = WeightedSparseCrossEntropy()
    >>> float(loss([[1, 0]], [[[0.0, 9.0], [0.0, 0.0]]], sample_weight=[[1.0, 0.0]])) < 1e-3
    True
    """

    def __init__(self, name: str = "weighted_sparse_cross_entropy", **kwargs: Any):
        super().__init__(name=name, reduction="sum", **kwargs)

    def call(self, y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
        return per_example_cross_entropy(y_true, y_pred)

    def get_config(self) -> dict[str, Any]:
        return {"name": self.name}

    def __call__(self, y_true, y_pred, sample_weight=None):
        with tf.name_scope(self.name):
            ce = self.call(y_true, y_pred)
            if sample_weight is None:
                weights = tf.ones_like(ce)
            else:
                weights = tf.reshape(tf.cast(sample_weight, ce.dtype), tf.shape(ce))
            local_sum = tf.reduce_sum(weights * ce)
            total_weight = tf.stop_gradient(_sum_over_replicas(tf.reduce_sum(weights)))
            return tf.math.divide_no_nan(local_sum, total_weight)


def compile_for_pretraining(
    model: keras.Model,
    optimizer: keras.optimizers.Optimizer | str = "adamw",
    jit_compile: bool | str = "auto",
    steps_per_execution: int = 1,
    **compile_kwargs: Any,
) -> keras.Model:
    """Compile a kbert pre-training model: MLM + NSP losses summed with weights 1 and 1.

    Keras computes both losses from one forward pass, adds them and takes one optimizer step on the
    sum; it logs `loss`, `mlm_loss`, `nsp_loss`, `mlm_accuracy` and `nsp_accuracy`. Feed `fit` with
    `(x, y, sample_weight)` as `kbert.pretraining_dataset` yields it: `sample_weight['mlm']` is
    the records' raw `masked_lm_weights`. Nothing else is needed for Google's normalisation — the
    MLM loss divides by the sum of weights over the global batch (see
    `WeightedSparseCrossEntropy`), and `BertPretrainingModel` reports the loss metrics as weighted
    means over all real predictions seen (exactly Google's evaluation), not means of batch means.

    Args:
        model: the model from `build_pretraining_model`.
        optimizer: a Keras optimizer (see `create_optimizer`) or its name.
        jit_compile: XLA; pass True to compile for TPU-like execution on CPU/GPU
            (Keras' "auto" turns it off on CPU and under distribution strategies).
        steps_per_execution: training steps run per `tf.function` call.
        **compile_kwargs: passed to `model.compile`.

    Examples:
    >>> import kbert
    >>> config = kbert.BertConfig.from_preset("tiny", vocab_size=100)
    >>> model = kbert.build_pretraining_model(config, max_seq_length=16, max_predictions_per_seq=3)
    >>> _ = kbert.compile_for_pretraining(model, keras.optimizers.SGD(0.1))
    """
    model.compile(
        optimizer=optimizer,
        loss={"mlm": WeightedSparseCrossEntropy(), "nsp": WeightedSparseCrossEntropy()},
        loss_weights=dict(LOSS_WEIGHTS),
        # Weighted: padded MLM predictions and padded evaluation rows (weight 0) do not count.
        weighted_metrics={
            "mlm": [keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
            "nsp": [keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        },
        jit_compile=jit_compile,
        steps_per_execution=steps_per_execution,
        **compile_kwargs,
    )
    return model
