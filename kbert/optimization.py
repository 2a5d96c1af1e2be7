"""Google's BERT optimiser recipe in Keras 3: AdamW, warmup + linear decay, global-norm clip."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from kbert.distribute import OptimizerFixes

# Variable names (Keras' short names) that take no weight decay: LayerNorm gamma/beta and biases.
NO_DECAY_VARIABLE_NAMES = ["gamma", "beta", "bias"]


@keras.saving.register_keras_serializable(package="kbert")
class WarmupLinearDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup from 0 to `peak_learning_rate`, then linear decay to 0 at `total_steps`.

    lr(step) = peak · step / warmup_steps for step < warmup_steps, then
    peak · (total_steps − step) / (total_steps − warmup_steps), and 0 from `total_steps` on
    (TF Model Garden's form of Google's schedule: continuous at the end of warmup). Steps count
    optimizer updates: under gradient accumulation Keras calls the schedule with the batch counter,
    so `batches_per_update=k` maps batch b to update b // k (k batches of B follow the schedule of
    one batch of kB).

    Examples:
    >>> schedule = WarmupLinearDecay(1e-4, total_steps=100, warmup_steps=10)
    >>> [round(float(schedule(s)), 7) for s in (0, 5, 10, 55, 100)]
    [0.0, 5e-05, 0.0001, 5e-05, 0.0]
    """

    def __init__(
        self,
        peak_learning_rate: float,
        total_steps: int,
        warmup_steps: int = 0,
        batches_per_update: int = 1,
    ):
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        if not 0 <= warmup_steps <= total_steps:
            raise ValueError(
                f"warmup_steps must be between 0 and total_steps ({total_steps}), "
                f"got {warmup_steps}"
            )
        self.peak_learning_rate = float(peak_learning_rate)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.batches_per_update = int(batches_per_update)

    def __call__(self, step):
        step = ops.cast(ops.floor_divide(step, self.batches_per_update), "float32")
        peak = ops.cast(self.peak_learning_rate, "float32")
        warmup = float(max(self.warmup_steps, 1))
        decay_span = float(max(self.total_steps - self.warmup_steps, 1))
        warming = peak * step / warmup
        decaying = peak * ops.clip((self.total_steps - step) / decay_span, 0.0, 1.0)
        return ops.where(step < self.warmup_steps, warming, decaying)

    def get_config(self) -> dict[str, Any]:
        return {
            "peak_learning_rate": self.peak_learning_rate,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "batches_per_update": self.batches_per_update,
        }


@keras.saving.register_keras_serializable(package="kbert")
class BertAdamW(OptimizerFixes, keras.optimizers.AdamW):
    """Keras' AdamW, its update compiled with XLA on one TensorFlow device (`OptimizerFixes`)."""


def create_optimizer(
    learning_rate: float,
    num_train_steps: int,
    num_warmup_steps: int = 0,
    weight_decay: float = 0.01,
    beta_1: float = 0.9,
    beta_2: float = 0.999,
    epsilon: float = 1e-6,
    clip_global_norm: float | None = 1.0,
    gradient_accumulation_steps: int | None = None,
) -> BertAdamW:
    """Keras AdamW set up as Google's BERT pre-training optimiser.

    LayerNorm and bias variables take no weight decay; gradients are clipped to a global norm;
    the learning rate warms up linearly for `num_warmup_steps` and decays linearly to 0 at
    `num_train_steps`. With `gradient_accumulation_steps=k` the weights move once every k batches
    on the mean of their gradients; steps are counted in updates.

    Args:
        learning_rate: peak learning rate.
        num_train_steps: optimizer updates of the whole run.
        num_warmup_steps: updates of linear warmup.
        weight_decay: decoupled weight decay rate.
        beta_1, beta_2, epsilon: Adam's constants (Google: 0.9, 0.999, 1e-6).
        clip_global_norm: clip the gradients' global norm to this (None: no clipping).
        gradient_accumulation_steps: batches per update (None or 1: every batch).

    Examples:
    >>> optimizer = create_optimizer(1e-4, num_train_steps=1000, num_warmup_steps=100)
    >>> round(float(optimizer.learning_rate), 6)
    0.0
    """
    accumulation = 1 if gradient_accumulation_steps is None else gradient_accumulation_steps
    if accumulation < 1:
        raise ValueError(
            f"gradient_accumulation_steps must be >= 1, got {gradient_accumulation_steps}"
        )
    schedule = WarmupLinearDecay(
        learning_rate, num_train_steps, num_warmup_steps, batches_per_update=accumulation
    )
    optimizer = BertAdamW(
        learning_rate=schedule,
        weight_decay=weight_decay,
        beta_1=beta_1,
        beta_2=beta_2,
        epsilon=epsilon,
        global_clipnorm=clip_global_norm,
        gradient_accumulation_steps=accumulation if accumulation > 1 else None,
    )
    optimizer.exclude_from_weight_decay(var_names=NO_DECAY_VARIABLE_NAMES)
    return optimizer


def optimizer_step(model: keras.Model) -> int:
    """Optimizer updates `model` has taken so far (a mirrored variable under a strategy).

    Args:
        model: a compiled model whose optimizer is built.

    Examples:
    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    >>> model.compile(optimizer="sgd", loss="mse")
    >>> model.optimizer.build(model.trainable_variables)
    >>> optimizer_step(model)
    0
    """
    return int(keras.ops.convert_to_numpy(model.optimizer.iterations))
