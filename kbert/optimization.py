"""BERT's optimisers in Keras 3: Google's AdamW, LAMB, Keras' bias-corrected AdamW, and the
warmup + polynomial-decay schedule they share.

`AdamWeightDecay` is google-research/bert's `AdamWeightDecayOptimizer` + `create_optimizer`,
number for number; `Lamb` is You et al. 2019's layer-wise adaptive optimiser as NVIDIA's BERT
trains with it; `BiasCorrectedAdamW` is Keras' own `AdamW`. All three clip the global gradient
(over every replica: `kbert.distribute.OptimizerFixes`) before they update, and take their
weight-decay exclusions as a setting that saves with the optimizer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import keras
from keras import ops

from kbert.distribute import OptimizerFixes
from kbert.errors import SettingError
from kbert.pretrain_config import OPTIMIZERS

# keras-hub's short variable names that Google's exclusion patterns ("LayerNorm", "layer_norm",
# "bias") match in its TF1 names: LayerNorm gamma and beta, every bias (tests/test_optimization.py).
NO_DECAY_VARIABLE_NAMES = ("gamma", "beta", "bias")


@keras.saving.register_keras_serializable(package="kbert")
class WarmupPolynomialDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Google's BERT schedule: linear warmup, then polynomial decay over the whole run.

    lr(t) = peak · t / warmup_steps for t < warmup_steps, else
    (peak − end) · (1 − min(t, total_steps) / total_steps)^power + end, with t the optimizer update
    counted from 0 (google-research/bert `create_optimizer`: `tf.train.polynomial_decay` over all
    `total_steps`, overridden by the warmup while it lasts; power 1 is linear). Under gradient
    accumulation Keras calls a schedule with the batch counter: `batches_per_update=k` maps batch b
    to update b // k (k batches of B follow the schedule of one batch of kB).

    Args:
        peak_learning_rate: the learning rate that warmup reaches (Google's `init_lr`).
        total_steps: optimizer updates of the whole run; the rate reaches `end_learning_rate`.
        warmup_steps: updates of linear warmup (0: none).
        power: the decay's exponent (1: linear, Google's; NVIDIA's LAMB runs use 0.5).
        end_learning_rate: the rate at and after `total_steps`.
        batches_per_update: batches per optimizer update (gradient accumulation).

    Examples:
    >>> schedule = WarmupPolynomialDecay(1e-4, total_steps=100, warmup_steps=10)
    >>> [round(float(schedule(s)), 7) for s in (0, 5, 10, 50, 100)]
    [0.0, 5e-05, 9e-05, 5e-05, 0.0]
    """

    def __init__(
        self,
        peak_learning_rate: float,
        total_steps: int,
        warmup_steps: int = 0,
        power: float = 1.0,
        end_learning_rate: float = 0.0,
        batches_per_update: int = 1,
    ):
        if total_steps < 1:
            raise SettingError(f"total_steps must be >= 1, got {total_steps}")
        if not 0 <= warmup_steps <= total_steps:
            raise SettingError(
                f"warmup_steps must be between 0 and total_steps ({total_steps}), "
                f"got {warmup_steps}"
            )
        if power <= 0:
            raise SettingError(f"power must be > 0, got {power}")
        self.peak_learning_rate = float(peak_learning_rate)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.power = float(power)
        self.end_learning_rate = float(end_learning_rate)
        self.batches_per_update = int(batches_per_update)

    def __call__(self, step):
        step = ops.cast(ops.floor_divide(step, self.batches_per_update), "float32")
        # 1 − t/N as (N − t)/N: exact for whole steps, where 1 − t/N cancels in float32.
        total = float(self.total_steps)
        remaining = (total - ops.minimum(step, total)) / total
        span = self.peak_learning_rate - self.end_learning_rate
        decayed = span * ops.power(remaining, self.power) + self.end_learning_rate
        warming = self.peak_learning_rate * step / float(max(self.warmup_steps, 1))
        return ops.where(step < self.warmup_steps, warming, decayed)

    def get_config(self) -> dict[str, Any]:
        return {
            "peak_learning_rate": self.peak_learning_rate,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "power": self.power,
            "end_learning_rate": self.end_learning_rate,
            "batches_per_update": self.batches_per_update,
        }


class _ExcludedNames:
    """Mixin: `no_decay_names` (regular expressions searched in a variable's short name) exclude
    variables from weight decay, and are saved in the optimizer's config (Keras'
    `exclude_from_weight_decay` is not)."""

    def __init__(self, *args: Any, no_decay_names: Sequence[str] = (), **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.no_decay_names = tuple(no_decay_names)
        if self.no_decay_names:
            self.exclude_from_weight_decay(var_names=list(self.no_decay_names))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "no_decay_names": list(self.no_decay_names)}


class _AdamMoments(_ExcludedNames, OptimizerFixes, keras.optimizers.Optimizer):
    """Adam's first and second moments, with weight decay added to the update inside
    `update_step` (not Keras' separate decoupled pass) as Google's and NVIDIA's optimisers do."""

    def __init__(
        self,
        learning_rate: float | keras.optimizers.schedules.LearningRateSchedule = 1e-3,
        weight_decay: float = 0.01,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-6,
        no_decay_names: Sequence[str] = NO_DECAY_VARIABLE_NAMES,
        **kwargs: Any,
    ):
        super().__init__(learning_rate=learning_rate, no_decay_names=no_decay_names, **kwargs)
        self.weight_decay = float(weight_decay)
        self.beta_1 = float(beta_1)
        self.beta_2 = float(beta_2)
        self.epsilon = float(epsilon)

    def build(self, var_list: list[keras.Variable]) -> None:
        if self.built:
            return
        super().build(var_list)
        self._m, self._v = self.add_optimizer_variables(var_list, ["m", "v"])

    def _apply_weight_decay(self, variables: list[keras.Variable]) -> None:
        """Nothing: the decay is a term of each variable's update (`update_step`)."""

    def _moments(self, gradient: Any, variable: Any) -> tuple[Any, Any]:
        """The moments after this gradient (assigned), as tensors."""
        index = self._get_variable_index(variable)
        m, v = self._m[index], self._v[index]
        next_m = self.beta_1 * m + (1.0 - self.beta_1) * gradient
        next_v = self.beta_2 * v + (1.0 - self.beta_2) * ops.square(gradient)
        self.assign(m, next_m)
        self.assign(v, next_v)
        return next_m, next_v

    def _decayed(self, update: Any, variable: Any) -> Any:
        if self.weight_decay and self._use_weight_decay(variable):
            return update + self.weight_decay * variable
        return update

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "weight_decay": self.weight_decay,
            "beta_1": self.beta_1,
            "beta_2": self.beta_2,
            "epsilon": self.epsilon,
        }


@keras.saving.register_keras_serializable(package="kbert")
class AdamWeightDecay(_AdamMoments):
    """google-research/bert's `AdamWeightDecayOptimizer`: Adam without bias correction, with
    decoupled weight decay added to the update before the learning rate scales it.

    m ← β1·m + (1−β1)·g;  v ← β2·v + (1−β2)·g²;  u = m / (√v + ε) + λ·w (λ = 0 for LayerNorm and
    bias variables);  w ← w − lr·u. Pass `global_clipnorm=1.0` for Google's clip (the global
    gradient's norm, over every replica) and a `WarmupPolynomialDecay` for its schedule;
    `create_optimizer` does both.

    Args:
        learning_rate: a float or a schedule.
        weight_decay: the decay rate λ (Google: 0.01).
        beta_1, beta_2, epsilon: Adam's constants (Google: 0.9, 0.999, 1e-6).
        no_decay_names: patterns of the short variable names that take no decay.
        **kwargs: Keras optimizer arguments (`global_clipnorm`, `gradient_accumulation_steps`,
            `name`, ...).

    Examples:
    >>> optimizer = AdamWeightDecay(0.1, weight_decay=0.0)
    >>> w = keras.Variable([1.0, 1.0], name="kernel")
    >>> _ = optimizer.apply_gradients([(keras.ops.array([2.0, -0.5]), w)])
    >>> # w − 0.1 · 0.1g / (√(0.001g²) + ε): each weight moves 0.1 · √10 against its gradient
    >>> [round(float(x), 4) for x in keras.ops.convert_to_numpy(w)]
    [0.6838, 1.3162]
    """

    def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
        gradient = ops.cast(gradient, variable.dtype)
        m, v = self._moments(gradient, variable)
        update = self._decayed(m / (ops.sqrt(v) + self.epsilon), variable)
        self.assign_sub(variable, ops.cast(learning_rate, variable.dtype) * update)


@keras.saving.register_keras_serializable(package="kbert")
class Lamb(_AdamMoments):
    """LAMB (You et al. 2019, "Large Batch Optimization for Deep Learning: Training BERT in 76
    minutes", Algorithm 2) as NVIDIA's BERT pre-training applies it.

    Adam's bias-corrected step r = m̂ / (√v̂ + ε), weight decay inside the update u = r + λ·w, then a
    per-variable trust ratio ‖w‖ / ‖u‖ (1 where either norm is 0): w ← w − lr·(‖w‖/‖u‖)·u. Variables
    matching `no_decay_names` (LayerNorm, biases) take neither decay nor trust ratio.

    Args:
        learning_rate: a float or a schedule.
        weight_decay: the decay rate λ (NVIDIA: 0.01).
        beta_1, beta_2, epsilon: Adam's constants (0.9, 0.999, 1e-6).
        no_decay_names: patterns of the short variable names excluded from decay and trust ratio.
        **kwargs: Keras optimizer arguments (`global_clipnorm`, `gradient_accumulation_steps`,
            `name`, ...).

    Examples:
    >>> optimizer = Lamb(0.1, weight_decay=0.0)
    >>> w = keras.Variable([3.0, 4.0], name="kernel")
    >>> _ = optimizer.apply_gradients([(keras.ops.array([1.0, 1.0]), w)])
    >>> # The step is lr · ‖w‖ = 0.5 long, along Adam's direction (1, 1)
    >>> [round(float(x), 4) for x in keras.ops.convert_to_numpy(w)]
    [2.6464, 3.6464]
    """

    def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
        gradient = ops.cast(gradient, variable.dtype)
        m, v = self._moments(gradient, variable)
        t = ops.cast(self.iterations + 1, variable.dtype)
        # 1 − β^t as −expm1(t·ln β): 1 − 0.999 in float32 is 1.3e-5 off, and v̂ with it.
        m_hat = m / -ops.expm1(t * math.log(self.beta_1))
        v_hat = v / -ops.expm1(t * math.log(self.beta_2))
        update = self._decayed(m_hat / (ops.sqrt(v_hat) + self.epsilon), variable)
        if self._use_weight_decay(variable):
            w_norm = ops.sqrt(ops.sum(ops.square(variable)))
            u_norm = ops.sqrt(ops.sum(ops.square(update)))
            trusted = ops.logical_and(w_norm > 0, u_norm > 0)
            update = update * ops.where(trusted, w_norm / ops.where(trusted, u_norm, 1.0), 1.0)
        self.assign_sub(variable, ops.cast(learning_rate, variable.dtype) * update)


@keras.saving.register_keras_serializable(package="kbert")
class BiasCorrectedAdamW(_ExcludedNames, OptimizerFixes, keras.optimizers.AdamW):
    """Keras' `AdamW` (Loshchilov & Hutter; bias-corrected Adam, as PyTorch's and Hugging Face's
    AdamW): at update 12 of Google's recipe its step is ~0.15× `AdamWeightDecay`'s, so Google's
    hyperparameters do not carry over unchanged.

    Args:
        no_decay_names: patterns of the short variable names that take no decay.
        **kwargs: `keras.optimizers.AdamW`'s arguments.

    Examples:
    >>> BiasCorrectedAdamW(1e-4, weight_decay=0.01).no_decay_names
    ('gamma', 'beta', 'bias')
    """

    def __init__(self, *args: Any, no_decay_names: Sequence[str] = NO_DECAY_VARIABLE_NAMES, **kw):
        super().__init__(*args, no_decay_names=no_decay_names, **kw)


def create_optimizer(
    learning_rate: float,
    num_train_steps: int,
    num_warmup_steps: int = 0,
    optimizer: str = "adamw",
    weight_decay: float = 0.01,
    beta_1: float = 0.9,
    beta_2: float = 0.999,
    epsilon: float = 1e-6,
    clip_global_norm: float | None = 1.0,
    gradient_accumulation_steps: int | None = None,
    power: float = 1.0,
) -> keras.optimizers.Optimizer:
    """An optimiser on Google's schedule: warmup, then polynomial decay to 0 over the whole run.

    "adamw" is Google's BERT optimiser (`AdamWeightDecay`), "lamb" is LAMB (`Lamb`, for batches
    of thousands), "adamw_bias_corrected" is Keras' AdamW (`BiasCorrectedAdamW`), "sgd" is plain
    SGD (no momentum, decay or clipping: a baseline whose updates are easy to check). LayerNorm
    and bias variables take no weight decay; gradients are clipped to a global norm. With
    `gradient_accumulation_steps=k` the weights move once every k batches on the mean of their
    gradients; steps are counted in updates.

    Args:
        learning_rate: peak learning rate.
        num_train_steps: optimizer updates of the whole run.
        num_warmup_steps: updates of linear warmup.
        optimizer: "adamw", "lamb", "adamw_bias_corrected" or "sgd".
        weight_decay: decoupled weight decay rate.
        beta_1, beta_2, epsilon: Adam's constants (Google: 0.9, 0.999, 1e-6).
        clip_global_norm: clip the global gradient's norm to this (None: no clipping).
        gradient_accumulation_steps: batches per update (None or 1: every batch).
        power: the decay's exponent (1: linear, Google's).

    Examples:
    >>> optimizer = create_optimizer(1e-4, num_train_steps=1000, num_warmup_steps=100)
    >>> type(optimizer).__name__, round(float(optimizer.learning_rate), 6)
    ('AdamWeightDecay', 0.0)
    """
    if optimizer not in OPTIMIZERS:
        raise SettingError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
    accumulation = 1 if gradient_accumulation_steps is None else gradient_accumulation_steps
    if accumulation < 1:
        raise SettingError(
            f"gradient_accumulation_steps must be >= 1, got {gradient_accumulation_steps}"
        )
    schedule = WarmupPolynomialDecay(
        learning_rate, num_train_steps, num_warmup_steps, power, batches_per_update=accumulation
    )
    common = dict(
        learning_rate=schedule,
        gradient_accumulation_steps=accumulation if accumulation > 1 else None,
    )
    if optimizer == "sgd":
        return keras.optimizers.SGD(**common)
    adam = dict(
        weight_decay=weight_decay,
        beta_1=beta_1,
        beta_2=beta_2,
        epsilon=epsilon,
        global_clipnorm=clip_global_norm,
    )
    kind = {"adamw": AdamWeightDecay, "lamb": Lamb, "adamw_bias_corrected": BiasCorrectedAdamW}
    return kind[optimizer](**common, **adam)


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
