"""The pre-training losses and `compile_for_pretraining`: MLM + NSP summed, one update per step."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from kbert.distribute import sparse_cross_entropy, sum_over_replicas
from kbert.metrics import SparseMaxLogitAccuracy

LOSS_WEIGHTS = {"mlm": 1.0, "nsp": 1.0}


def per_example_cross_entropy(y_true: Any, logits: Any) -> Any:
    """Sparse softmax cross-entropy from logits, one value per label (shape of `logits[..., 0]`).

    Examples:
    >>> ce = per_example_cross_entropy([1, 0], [[0.0, 0.0], [0.0, 0.0]])
    >>> [round(float(v), 4) for v in ce]
    [0.6931, 0.6931]
    """
    labels = ops.reshape(ops.cast(y_true, "int32"), ops.shape(logits)[:-1])
    return sparse_cross_entropy(labels, logits)


def example_weights(sample_weight: Any, ce: Any) -> Any:
    """`sample_weight` as float weights shaped like `ce` (every label counts 1 when None).

    Examples:
    >>> ops.convert_to_numpy(example_weights(None, ops.zeros((2, 3)))).tolist()
    [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]
    """
    if sample_weight is None:
        return ops.ones_like(ce)
    return ops.reshape(ops.cast(sample_weight, ce.dtype), ops.shape(ce))


def global_weighted_mean(ce: Any, weights: Any) -> Any:
    """This replica's share of Σ w·ce / Σ w over the global batch (0 when Σ w is 0).

    Examples:
    >>> float(global_weighted_mean(ops.array([1.0, 3.0]), ops.array([1.0, 0.0])))
    1.0
    """
    total_weight = ops.stop_gradient(sum_over_replicas(ops.sum(weights)))
    return ops.divide_no_nan(ops.sum(weights * ce), total_weight)


@keras.saving.register_keras_serializable(package="kbert")
class WeightedSparseCrossEntropy(keras.losses.Loss):
    """Σ w·ce / Σ w over the **global** batch: Google's MLM loss, and the NSP mean.

    Keras' reductions divide by the number of elements (wrong for padded MLM predictions) or
    average per-replica ratios (`mean_with_sample_weight`, which depends on how the batch is split).
    This loss sums the weights over all replicas, so each replica returns its share
    Σ_local w·ce / Σ_global w; the replicas' gradients, summed by the strategy, are the gradient of
    the global ratio, for any number of replicas. Under JAX's data parallelism a step sees the
    global batch as one sharded array and the sums are global already. With no sample weight
    every label counts 1.

    Examples:
    >>> loss = WeightedSparseCrossEntropy()
    >>> float(loss([[1, 0]], [[[0.0, 9.0], [0.0, 0.0]]], sample_weight=[[1.0, 0.0]])) < 1e-3
    True
    """

    def __init__(self, name: str = "weighted_sparse_cross_entropy", **kwargs: Any):
        super().__init__(name=name, reduction="sum", **kwargs)

    def call(self, y_true: Any, y_pred: Any) -> Any:
        return per_example_cross_entropy(y_true, y_pred)

    def get_config(self) -> dict[str, Any]:
        return {"name": self.name}

    def __call__(self, y_true, y_pred, sample_weight=None):
        with keras.name_scope(self.name):
            ce = self.call(y_true, y_pred)
            return global_weighted_mean(ce, example_weights(sample_weight, ce))


def compile_for_pretraining(
    model: keras.Model,
    optimizer: keras.optimizers.Optimizer | str = "adamw",
    jit_compile: bool | str = "auto",
    steps_per_execution: int = 1,
    **compile_kwargs: Any,
) -> keras.Model:
    """Compile a kbert pre-training model: MLM + NSP losses summed with weights 1 and 1.

    Keras computes both losses from one forward pass, adds them and takes one optimizer step on the
    sum; it logs `loss`, `mlm_loss`, `nsp_loss`, `mlm_accuracy` and `nsp_accuracy` (accuracies
    as `SparseMaxLogitAccuracy`: argmax accuracy but on exact ties, without the argmax). Feed
    `fit` with `(x, y, sample_weight)` as `kbert.pretraining_dataset` yields it:
    `sample_weight['mlm']` is the records' raw `masked_lm_weights`. Nothing else is needed for
    Google's normalisation — the MLM loss divides by the sum of weights over the global batch (see
    `WeightedSparseCrossEntropy`), and `BertPretrainingModel` reports the loss metrics as weighted
    means over all real predictions seen (exactly Google's evaluation), not means of batch means.

    Args:
        model: the model from `build_pretraining_model`.
        optimizer: a Keras optimizer (see `create_optimizer`) or its name.
        jit_compile: XLA; pass True to compile for TPU-like execution on CPU/GPU
            (Keras' "auto" turns it off on CPU and under distribution strategies on the
            TensorFlow backend; the JAX backend always compiles).
        steps_per_execution: training steps run per compiled call.
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
        # Accuracy without an argmax over the vocabulary: equal to it but on exact ties.
        weighted_metrics={
            "mlm": [SparseMaxLogitAccuracy(name="accuracy")],
            "nsp": [SparseMaxLogitAccuracy(name="accuracy")],
        },
        jit_compile=jit_compile,
        steps_per_execution=steps_per_execution,
        **compile_kwargs,
    )
    return model


@keras.saving.register_keras_serializable(package="kbert")
class GlobalMeanSquaredError(keras.losses.Loss):
    """Mean squared error over the **global** batch (regression fine-tuning): each replica returns
    Σ_local (y − ŷ)² / n_global, so the gradients the strategy sums are the global mean's, for
    any number of replicas (Keras' own reduction averages per replica, and the sum over replicas
    then doubles the gradient on two).

    Examples:
    >>> float(GlobalMeanSquaredError()([[1.0], [3.0]], [[0.0], [3.0]]))
    0.5
    """

    def __init__(self, name: str = "global_mean_squared_error", **kwargs: Any):
        super().__init__(name=name, reduction="sum", **kwargs)

    def get_config(self) -> dict[str, Any]:
        return {"name": self.name}

    def __call__(self, y_true, y_pred, sample_weight=None):
        with keras.name_scope(self.name):
            y_pred = ops.cast(y_pred, "float32")
            error = ops.square(ops.cast(y_true, "float32") - y_pred)
            error = ops.reshape(error, ops.shape(error)[:1])
            return global_weighted_mean(error, example_weights(sample_weight, error))
