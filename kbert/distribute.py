"""Where training runs, and everything that differs between Keras' TensorFlow and JAX backends.

TensorFlow: a `tf.distribute` strategy (one device, Mirrored, MultiWorkerMirrored or TPU).
JAX: a `keras.distribution.DataParallel` over the JAX devices (or one device). The rest of kbert
(model, losses, metrics, optimizer) is written with `keras.ops` and asks this module for the few
things that differ: `sum_over_replicas`, the fixes in `TrainerFixes` and `OptimizerFixes`, and
`resolve_distribution`, which gives a `Placement` (scope, replicas, input distribution).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import glob
import json
import logging
import os
import posixpath
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from kbert.errors import SettingError

logger = logging.getLogger(__name__)

STRATEGY_KINDS = ("auto", "cpu", "mirrored", "multi_worker", "tpu")
# Keras' own variables for `keras.distribution.initialize` (a JAX run of several processes).
JOB_ADDRESSES_ENV = "KERAS_DISTRIBUTION_JOB_ADDRESSES"
NUM_PROCESSES_ENV = "KERAS_DISTRIBUTION_NUM_PROCESSES"
PROCESS_ID_ENV = "KERAS_DISTRIBUTION_PROCESS_ID"
# Connecting to a remote TPU can block for minutes when the address is wrong; give up sooner.
TPU_CONNECT_TIMEOUT_SECONDS = 120


def resolve_strategy(
    kind: str = "auto",
    tpu: str = "local",
    devices: Sequence[str] | None = None,
) -> tf.distribute.Strategy:
    """The distribution strategy for `kind`, logging one line that says what and why.

    `tpu` connects through `TPUClusterResolver` (`tpu="local"` on Colab / Cloud TPU VMs, or a
    TPU name or `grpc://` address), initialises the TPU system and returns a `TPUStrategy`;
    `mirrored` returns a `MirroredStrategy` over `devices` (default: every visible GPU);
    `multi_worker` returns a `MultiWorkerMirroredStrategy` over the cluster in the `TF_CONFIG`
    environment variable (every worker runs the same program; it must be created before
    TensorFlow runs anything else in the process, and later calls return that one, e.g. a
    pre-training then a fine-tuning in one program); `cpu` returns the default one-device strategy;
    `auto` picks multi-worker when `TF_CONFIG` names more than one chief or worker task (and no
    parameter servers), else a TPU when one is attached to this machine, else Mirrored when there
    is more than one GPU, else one device. Asking for a local TPU where none is attached raises at
    once (no minutes-long hang).

    Args:
        kind: "auto", "cpu", "mirrored", "multi_worker" or "tpu".
        tpu: the TPU to use for `kind="tpu"`: "local", a TPU name or a grpc address.
        devices: devices for `kind="mirrored"`, e.g. `["/gpu:0", "/gpu:1"]`.

    Returns:
        A `tf.distribute.Strategy`; build the model and optimizer inside its `scope()`.

    Examples:
    >>> strategy = resolve_strategy("cpu")
    >>> strategy.num_replicas_in_sync
    1
    """
    if kind not in STRATEGY_KINDS:
        raise SettingError(f"strategy must be one of {', '.join(STRATEGY_KINDS)}, got {kind!r}")
    if devices is not None and kind != "mirrored":
        raise SettingError(
            f"devices={list(devices)} is only used with strategy 'mirrored', not {kind!r}"
        )
    # Before anything that starts TensorFlow's runtime: collectives are configured at its start.
    tasks = _tf_config_tasks() if kind == "auto" else []
    if kind == "multi_worker" or (
        len(tasks) > 1 and {task for task, _ in tasks} <= {"chief", "worker"}
    ):
        why = "requested" if kind == "multi_worker" else "auto: TF_CONFIG names a cluster"
        return _multi_worker_strategy(why)
    gpus = tf.config.list_logical_devices("GPU")
    if kind == "auto":
        if tpu != "local" or _local_tpu_attached():
            return _tpu_strategy(tpu, "auto: a TPU is attached")
        if len(gpus) > 1:
            return _mirrored_strategy(None, f"auto: {len(gpus)} GPUs visible")
        where = "one GPU" if gpus else "no GPU or TPU"
        return _default_strategy(f"auto: {where} visible")
    if kind == "tpu":
        return _tpu_strategy(tpu, "requested")
    if kind == "mirrored":
        return _mirrored_strategy(devices, "requested")
    return _default_strategy("requested")


def _default_strategy(why: str) -> tf.distribute.Strategy:
    strategy = tf.distribute.get_strategy()
    device = "/gpu:0" if tf.config.list_logical_devices("GPU") else "/cpu:0"
    logger.info("strategy: default (one device, %s) — %s", device, why)
    return strategy


_COLLECTIVE_KEY_STRIDE = 1000


def _mirrored_strategy(devices: Sequence[str] | None, why: str) -> tf.distribute.Strategy:
    if devices is not None and not devices:
        raise SettingError("devices for strategy 'mirrored' is empty")
    # Every MirroredStrategy of a process starts its collective keys at the same numbers, so a
    # second one's all-reduces (kbert's losses make one) can clash with the first's: move them on.
    tf.distribute.MirroredStrategy._collective_key_base += _COLLECTIVE_KEY_STRIDE
    strategy = tf.distribute.MirroredStrategy(list(devices) if devices else None)
    replicas = strategy.extended.worker_devices
    logger.info(
        "strategy: MirroredStrategy over %d replica(s) (%s) — %s",
        len(replicas),
        ", ".join(replicas),
        why,
    )
    return strategy


def is_multi_worker(strategy: tf.distribute.Strategy) -> bool:
    """Whether `strategy` is a MultiWorkerMirroredStrategy over a cluster of several tasks."""
    resolver = getattr(strategy, "cluster_resolver", None)
    return (
        isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
        and resolver is not None
        and len(tf.nest.flatten(list(resolver.cluster_spec().as_dict().values()))) > 1
    )


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the run's files: always, except on a multi-worker cluster's
    non-chief workers (the chief is task "chief", else worker 0)."""
    if not is_multi_worker(strategy):
        return True
    resolver = strategy.cluster_resolver
    if "chief" in resolver.cluster_spec().as_dict():
        return resolver.task_type == "chief"
    return resolver.task_type == "worker" and resolver.task_id == 0


def worker_directory(output_dir: str, strategy: tf.distribute.Strategy) -> str:
    """`output_dir` on the chief; `output_dir/workers/<task>-<id>` on other workers, which must
    write their own checkpoints (every worker saves) without overwriting the chief's."""
    if is_chief(strategy):
        return output_dir
    resolver = strategy.cluster_resolver
    return posixpath.join(output_dir, "workers", f"{resolver.task_type}-{resolver.task_id}")


def _tf_config_tasks() -> list[tuple[str, int]]:
    """(task type, index) of every task of the cluster in TF_CONFIG; empty when it is not set."""
    raw = os.environ.get("TF_CONFIG", "")
    if not raw.strip():
        return []
    try:
        cluster = json.loads(raw)["cluster"]
        return [(kind, i) for kind, addresses in cluster.items() for i in range(len(addresses))]
    except (ValueError, KeyError, TypeError, AttributeError):
        raise SettingError(
            "TF_CONFIG is not a JSON object with a 'cluster' of task lists, e.g. "
            '{"cluster": {"worker": ["host1:port", "host2:port"]}, '
            '"task": {"type": "worker", "index": 0}}'
        ) from None


# The multi-worker strategy of this process, by its TF_CONFIG: collectives are configured once,
# at TensorFlow's start, so a second strategy cannot be created.
_MULTI_WORKER_STRATEGIES: dict[str, tf.distribute.Strategy] = {}


def _multi_worker_strategy(why: str) -> tf.distribute.Strategy:
    created = _MULTI_WORKER_STRATEGIES.get(os.environ.get("TF_CONFIG", ""))
    if created is not None:
        return created
    if not _tf_config_tasks():
        raise SettingError(
            "strategy 'multi_worker' needs the TF_CONFIG environment variable: the cluster's "
            "workers and this process's task, e.g. "
            '{"cluster": {"worker": ["host1:port", "host2:port"]}, '
            '"task": {"type": "worker", "index": 0}}'
        )
    try:
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    except RuntimeError as e:
        raise SettingError(
            "strategy 'multi_worker' must be created before TensorFlow runs anything in the "
            f"process (resolve it first thing in the program): {e}"
        ) from None
    _MULTI_WORKER_STRATEGIES[os.environ["TF_CONFIG"]] = strategy
    resolver = strategy.cluster_resolver
    logger.info(
        "strategy: MultiWorkerMirroredStrategy, %d replica(s) in sync; this is %s %d — %s",
        strategy.num_replicas_in_sync,
        resolver.task_type,
        resolver.task_id,
        why,
    )
    return strategy


def _local_tpu_attached() -> bool:
    """Whether this machine has a TPU chip (a TPU VM), without initialising anything."""
    if tf.config.list_physical_devices("TPU"):
        return True
    # TPU VMs expose their chips as /dev/accel* (v2-v4) or VFIO devices (v5e and later).
    return bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"))


def _tpu_strategy(tpu: str, why: str) -> tf.distribute.Strategy:
    if tpu == "local" and not _local_tpu_attached():
        raise SettingError(
            "strategy 'tpu': no TPU is attached to this machine (tpu='local' looks for a TPU "
            "VM's chips: no TPU device, no /dev/accel*, no /dev/vfio). On Colab choose a TPU "
            "runtime and `pip install tensorflow-tpu`; for a remote TPU pass its name or "
            "grpc:// address as tpu=...; or use strategy 'cpu' / 'mirrored'"
        )

    def connect() -> tf.distribute.cluster_resolver.TPUClusterResolver:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
        if tpu != "local":
            tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return resolver

    pool = concurrent.futures.ThreadPoolExecutor(1)
    try:
        resolver = pool.submit(connect).result(timeout=TPU_CONNECT_TIMEOUT_SECONDS)
    except concurrent.futures.TimeoutError:
        raise SettingError(
            f"strategy 'tpu': no answer from TPU {tpu!r} within {TPU_CONNECT_TIMEOUT_SECONDS} s "
            "(check the TPU name / address and that it is running)"
        ) from None
    except (ValueError, RuntimeError, tf.errors.OpError) as e:
        raise SettingError(f"strategy 'tpu': cannot connect to TPU {tpu!r} ({e})") from None
    finally:
        # Do not wait for a connection attempt that hangs; its thread ends with the process.
        pool.shutdown(wait=False)
    strategy = tf.distribute.TPUStrategy(resolver)
    logger.info(
        "strategy: TPUStrategy on %r with %d core(s) — %s",
        tpu,
        strategy.num_replicas_in_sync,
        why,
    )
    return strategy


def sum_over_replicas(value: Any) -> Any:
    """Sum of `value` over the replicas training in sync (the value itself on one device).

    Under a `tf.distribute` strategy each replica sees its part of the batch: an all-reduce.
    Under JAX, `keras.distribution` runs one program on the global batch (sharded across the
    devices), so sums are global already.

    Examples:
    >>> float(sum_over_replicas(keras.ops.array(3.0)))
    3.0
    """
    if keras.backend.backend() != "tensorflow":
        return value
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return value
    return context.all_reduce(tf.distribute.ReduceOp.SUM, value)


def sparse_cross_entropy(labels: Any, logits: Any) -> Any:
    """Softmax cross-entropy of integer `labels` under `logits` (any float dtype, computed in
    float32), one value per label.

    On the TensorFlow backend, inside a traced step that no TPU compiles whole, the softmax, the
    loss and its gradient run as XLA computations: TensorFlow's own kernel takes 2.3x as long
    over the B·P×vocab MLM logits (17 against 40 ms a step on 2 CPU cores for `mini`).

    Examples:
    >>> [round(float(v), 4) for v in sparse_cross_entropy([1, 0], [[0.0, 0.0], [0.0, 2.0]])]
    [0.6931, 2.1269]
    """
    if keras.backend.backend() != "tensorflow" or not tf.inside_function() or _on_tpu():
        return _keras_sparse_cross_entropy(labels, logits)
    return _compiled_sparse_cross_entropy(labels, logits)


def _keras_sparse_cross_entropy(labels: Any, logits: Any) -> Any:
    return keras.ops.sparse_categorical_crossentropy(
        labels, keras.ops.cast(logits, "float32"), from_logits=True
    )


@tf.function(jit_compile=True)
def _compiled_sparse_cross_entropy(labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    # As rows: over higher ranks TensorFlow adds a shape Assert, which XLA drops with a warning.
    rows = tf.reshape(tf.cast(logits, tf.float32), [-1, tf.shape(logits)[-1]])
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(tf.reshape(labels, [-1]), rows)
    return tf.reshape(ce, tf.shape(labels))


def build_optimizer(model: keras.Model) -> None:
    """Creates the compiled `model`'s optimizer variables now (call it in the placement's scope).

    Keras' TensorFlow trainer without a strategy creates them in `fit`'s first step, and a
    `tf.function` whose first trace creates variables is traced a second time to run: twice the
    start-up. Built before, the train step is traced once (tests/test_train.py counts it).
    """
    model.optimizer.build(model.trainable_variables)


def _on_tpu() -> bool:
    return tf.distribute.has_strategy() and isinstance(
        tf.distribute.get_strategy(), tf.distribute.TPUStrategy
    )


# The trainer's methods differ by backend (TensorFlow's `train_step(data)`, JAX's
# `train_step(state, data)`), so the fixes exist only where they apply.
if keras.backend.backend() == "tensorflow":

    class TrainerFixes:
        """Keras trainer fixes for kbert's models on the TensorFlow backend (mix in before
        `keras.Model`).

        keras-team/keras#20585: Keras 3's fit and evaluate fail under MultiWorkerMirroredStrategy.
        Building from the first batch, it averages the batch across workers (an eager collective
        that fails); the first local batch gives the same shapes. Reducing each step's logs, it
        averages over axis 0, which scalars lack; as 1-element vectors they average as intended.
        """

        def _maybe_symbolic_build(self, iterator=None, data_batch=None):
            if iterator is not None and is_multi_worker(self.distribute_strategy):
                strategy = self.distribute_strategy
                for _, _, batches in iterator:
                    data_batch = tf.nest.map_structure(
                        lambda x: (
                            strategy.experimental_local_results(x)[0]
                            if isinstance(x, tf.distribute.DistributedValues)
                            else x
                        ),
                        next(batches),
                    )
                    break
                iterator = None
            return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

        def train_step(self, data):
            return self._reducible_logs(super().train_step(data))

        def test_step(self, data):
            return self._reducible_logs(super().test_step(data))

        def _reducible_logs(self, logs: dict) -> dict:
            if not is_multi_worker(self.distribute_strategy):
                return logs
            return {
                name: (
                    tf.reshape(value, [1])
                    if tf.is_tensor(value) and value.shape.rank == 0
                    else value
                )
                for name, value in logs.items()
            }

    class OptimizerFixes:
        """Keras optimizer fixes on the TensorFlow backend (mix in before the optimizer class).

        Under a strategy, Keras clips each replica's partial gradient before the all-reduce
        (`_backend_apply_gradients` clips, `_backend_update_step` then sums): with kbert's
        global-batch losses each replica holds ~1/R of the gradient, so a global-norm clip would
        be R times looser than on one device; and under gradient accumulation its sum sits in a
        `cond`, where MirroredStrategy cannot all-reduce. Here the gradients are summed over the
        replicas first (every batch), made dense (`_dense_gradients`), then accumulated, clipped,
        decayed and applied: the update of the global gradient on every placement.

        With no strategy, the whole update (clipping, weight decay and the optimizer's step over
        every variable: dozens of elementwise passes) runs as one XLA computation, even when the
        train step is not XLA-compiled (kbert's CPU default): 3–4 % of a CPU step.
        """

        def _backend_apply_gradients(self, grads, trainable_variables):
            apply = super()._backend_apply_gradients
            if tf.distribute.has_strategy():
                grads = _dense_gradients(_sum_gradients_over_replicas(grads))
                if not self.gradient_accumulation_steps:
                    return apply(grads, trainable_variables)
                return tf.distribute.get_replica_context().merge_call(
                    self._accumulate, args=(grads, trainable_variables)
                )
            grads = _dense_gradients(grads)
            if not tf.inside_function():
                return apply(grads, trainable_variables)
            key = tuple(id(v) for v in trainable_variables)
            cached = getattr(self, "_kbert_compiled_update", None)
            if cached is None or cached[0] != key:

                @tf.function(jit_compile=True)
                def update(grads):
                    # A function graph starts a new name scope: keep the optimizer's.
                    with tf.name_scope(self.name):
                        apply(grads, trainable_variables)

                # Not an attribute the optimizer tracks (or saves): a cache of this process.
                object.__setattr__(self, "_kbert_compiled_update", cached := (key, update))
            cached[1](grads)

        def _all_reduce_sum_gradients(self, grads_and_vars):
            return grads_and_vars  # summed before (`_backend_apply_gradients`)

        def _accumulate(self, strategy, grads, trainable_variables):
            """Keras' accumulation step with its `cond` taken in cross-replica context (as
            Keras' LossScaleOptimizer does): MirroredStrategy merges inside neither branch."""
            steps = self.gradient_accumulation_steps
            acc_grads = [
                self._accumulated_gradients[self._get_variable_index(v)]
                for v in trainable_variables
            ]

            def update(grads):
                grads = [(g + acc) / steps for g, acc in zip(grads, acc_grads)]
                grads = self._clip_gradients(grads)
                self._apply_weight_decay(trainable_variables)
                self._backend_update_step(grads, trainable_variables, self.learning_rate)
                self._backend_reset_gradient_accumulators()

            def increment(grads):
                self._backend_increment_gradient_accumulators(grads, acc_grads)

            tf.cond(
                (self._iterations + 1) % steps == 0,
                lambda: strategy.extended.call_for_each_replica(update, args=(grads,)),
                lambda: strategy.extended.call_for_each_replica(increment, args=(grads,)),
            )

    def _dense_gradients(grads: list) -> list:
        """`tf.IndexedSlices` gradients (an embedding's, when no tied head adds a dense part)
        as dense tensors, their duplicate rows summed. Keras' global norm squares the slices'
        values row by row, duplicates apart, so its clip would scale the update otherwise than
        the gradient's true norm does (as JAX's dense gradients and TPUs' one-hot lookups clip):
        measured 7e-5 off in fine-tuning."""
        return [tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g for g in grads]

    def _sum_gradients_over_replicas(grads: list) -> list:
        """`grads` summed over the replicas in sync (None entries kept), in replica context."""
        context = tf.distribute.get_replica_context()
        present = [g for g in grads if g is not None]
        if context is None or context.num_replicas_in_sync == 1 or not present:
            return grads
        summed = iter(context.all_reduce(tf.distribute.ReduceOp.SUM, present))
        return [None if g is None else next(summed) for g in grads]

else:

    class TrainerFixes:
        """Keras trainer fixes for kbert's models: none are needed on this backend."""

    class OptimizerFixes:
        """Keras optimizer fixes: none are needed on this backend (JAX compiles the update)."""


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where a run trains, for either Keras backend: build, compile and fit inside `scope()`.

    Attributes:
        backend: "tensorflow" or "jax".
        num_replicas: devices a global batch is split across (it must divide by this).
        strategy: the `tf.distribute.Strategy` (TensorFlow backend), else None.
        distribution: the `keras.distribution.DataParallel` (JAX, several devices), else None.
        device: the one JAX device used without a distribution, else None.
        description: the line `resolve_distribution` logged.
    """

    backend: str
    num_replicas: int
    description: str
    strategy: tf.distribute.Strategy | None = None
    distribution: Any = None
    device: Any = None

    @classmethod
    def from_strategy(cls, strategy: tf.distribute.Strategy) -> Placement:
        """The placement of a `tf.distribute` strategy (TensorFlow backend only)."""
        if keras.backend.backend() != "tensorflow":
            raise SettingError(
                f"a tf.distribute strategy ({type(strategy).__name__}) runs on Keras' TensorFlow "
                "backend; under KERAS_BACKEND=jax pass a strategy name ('auto', 'cpu', 'tpu')"
            )
        return cls(
            backend="tensorflow",
            num_replicas=strategy.num_replicas_in_sync,
            description=type(strategy).__name__,
            strategy=strategy,
        )

    @property
    def on_tpu(self) -> bool:
        """Whether the devices are TPU cores (mixed precision "auto" means bf16 there)."""
        if self.strategy is not None:
            return isinstance(self.strategy, tf.distribute.TPUStrategy)
        devices = self.distribution.device_mesh.devices.flat if self.distribution else [self.device]
        return next(iter(devices)).platform == "tpu"

    def worker_directory(self, output_dir: str) -> str:
        """Where this process writes: `output_dir` on the chief, a directory of its own under
        `output_dir/workers/` on the other workers (TensorFlow tasks, JAX processes)."""
        if self.strategy is not None:
            return worker_directory(output_dir, self.strategy)
        if self.is_chief:
            return output_dir
        import jax

        return posixpath.join(output_dir, "workers", f"process-{jax.process_index()}")

    @property
    def writes_run_files(self) -> bool:
        """Whether this process writes the run's own files (configs, history, TensorBoard, model,
        evaluation) in its `worker_directory`: every TensorFlow worker (each must save; the
        chief's go to `output_dir`); under JAX only process 0, the others keep just their
        checkpoints and resume backup."""
        return self.strategy is not None or self.is_chief

    def input_context(self) -> tf.distribute.InputContext | None:
        """This process's input pipeline under JAX: one per process, each building its share of
        every global batch (`distribute_dataset`); None under TensorFlow, whose strategy hands
        out input contexts itself.

        Examples:
        >>> resolve_distribution("cpu").input_context() is None  # TensorFlow: one device
        True
        """
        if self.strategy is not None:
            return None
        import jax

        processes = jax.process_count()
        # A "replica" of the input context is a process: each builds its own batches.
        return tf.distribute.InputContext(processes, jax.process_index(), processes)

    def check_evaluation_batch_size(self, batch_size: int) -> None:
        """Raise a clear error for an evaluation batch the devices cannot share: JAX shards
        every batch evenly (evaluation pads the last one to a whole batch); `tf.distribute`
        splits uneven batches itself."""
        if self.backend == "jax":
            self.check_global_batch_size(batch_size)

    @contextlib.contextmanager
    def scope(self) -> Iterator[None]:
        """Variables, compilation and training inside go to this placement's devices."""
        if self.strategy is not None:
            with self.strategy.scope():
                yield
        elif self.distribution is not None:
            with self.distribution.scope():
                yield
        else:
            import jax

            with jax.default_device(self.device):
                yield

    @contextlib.contextmanager
    def this_process_only(self) -> Iterator[None]:
        """Work that only this process does (saving the run's files). Under JAX no distribution
        is in scope: a variable placed across the processes' devices is first checked equal on
        every process (a collective), which would wait for processes that never make it."""
        if self.distribution is None:
            yield
            return
        previous = keras.distribution.distribution()
        keras.distribution.set_distribution(None)
        try:
            yield
        finally:
            keras.distribution.set_distribution(previous)

    @property
    def is_chief(self) -> bool:
        """Whether this process writes the run's files (see `is_chief`; JAX: process 0)."""
        if self.strategy is not None:
            return is_chief(self.strategy)
        import jax

        return jax.process_index() == 0

    def agree_on_minimum(self, value: int) -> int:
        """The smallest `value` any worker process passes (each its own), e.g. the newest interval
        every worker's backup holds; `value` itself in a single process."""
        if self.strategy is not None:
            if not is_multi_worker(self.strategy):
                return value
            values = self.strategy.experimental_distribute_values_from_function(
                lambda context: tf.constant([value], tf.int64)
            )
            return int(tf.reduce_min(self.strategy.gather(values, axis=0)))
        import jax

        if jax.process_count() == 1:
            return value
        from jax.experimental import multihost_utils

        return int(min(multihost_utils.process_allgather(value)))

    def check_global_batch_size(self, global_batch_size: int) -> None:
        """Raise a clear error unless `global_batch_size` splits evenly across the replicas."""
        if global_batch_size % self.num_replicas:
            raise SettingError(
                f"the global batch size ({global_batch_size}) must be a multiple of the number "
                f"of devices it is split across ({self.num_replicas}: {self.description})"
            )

    def share_of_batches(self, dataset: tf.data.Dataset, global_batch_size: int) -> tf.data.Dataset:
        """This process's part of `dataset`'s global batches: under JAX with several processes
        rows p·B/P to (p+1)·B/P of each (the global batch is the processes' slices in process
        order); `dataset` itself elsewhere (a `tf.distribute` strategy splits batches itself)."""
        self.check_global_batch_size(global_batch_size)
        context = self.input_context()
        if context is None or context.num_input_pipelines == 1:
            return dataset
        share = global_batch_size // context.num_input_pipelines
        start = context.input_pipeline_id * share
        return dataset.map(
            lambda *batch: tf.nest.map_structure(lambda t: t[start : start + share], batch)
        ).apply(tf.data.experimental.assert_cardinality(dataset.cardinality()))

    def predict(
        self, model: keras.Model, dataset: tf.data.Dataset, global_batch_size: int
    ) -> np.ndarray:
        """`model`'s outputs for every row of `dataset` (whole global batches), in order and the
        same on every process (TensorFlow workers, JAX processes); every process calls it."""
        data = self.share_of_batches(dataset, global_batch_size)
        with self.scope():
            if data is not dataset:
                # Keras' `predict` reads each batch's outputs as numpy, which a JAX process
                # holding only its slice of them cannot: gathered onto every device in the
                # compiled step, they are whole on every process.
                outputs = _Replicated(self.distribution.device_mesh)(model.outputs[0])
                model = keras.Model(model.inputs, outputs)
                model.jit_compile = True
            return np.asarray(model.predict(data, verbose=0))

    def distribute_dataset(
        self,
        dataset_fn: Callable[[tf.distribute.InputContext], tf.data.Dataset],
        global_batch_size: int,
    ) -> tf.data.Dataset | tf.distribute.DistributedDataset:
        """The input for `fit`/`evaluate` from `dataset_fn(input_context)`, which must batch
        `input_context.get_per_replica_batch_size(global_batch_size)` sequences.

        TensorFlow: `strategy.distribute_datasets_from_function`. JAX: one pipeline per process
        yielding that process's share of each global batch (the whole batch on one host); Keras
        shards it across the process's devices.
        """
        self.check_global_batch_size(global_batch_size)
        if self.strategy is not None:
            return self.strategy.distribute_datasets_from_function(dataset_fn)
        return dataset_fn(self.input_context())


class _Replicated(keras.layers.Layer):
    """Its input placed whole on every device of `mesh` (under JAX's jit: an all-gather)."""

    def __init__(self, mesh: keras.distribution.DeviceMesh, **kwargs: Any):
        super().__init__(**kwargs)
        self.mesh = mesh

    def call(self, inputs: Any) -> Any:
        layout = keras.distribution.TensorLayout([None] * len(inputs.shape), self.mesh)
        return keras.distribution.distribute_tensor(inputs, layout)


JAX_STRATEGY_KINDS = ("auto", "cpu", "tpu")


def resolve_distribution(
    kind: str = "auto",
    tpu: str = "local",
    devices: Sequence[str] | None = None,
) -> Placement:
    """Where to train for strategy `kind` on the current Keras backend, logging what and why.

    TensorFlow backend: the strategy of `resolve_strategy(kind, tpu, devices)` (see there).
    JAX backend: `auto` is data parallel (`keras.distribution.DataParallel`) over every JAX
    device — the TPU chips of a TPU VM, the GPUs, or the CPU devices that
    `XLA_FLAGS=--xla_force_host_platform_device_count=N` creates — and one device when there is
    only one; `tpu` is data parallel over `jax.devices("tpu")` (an error when there is none);
    `cpu` is one CPU device. `mirrored` and `multi_worker` are TensorFlow strategies: an error
    under JAX. On several hosts (a multi-host TPU slice) call `initialize_distribution` (Keras'
    `keras.distribution.initialize`) first thing on every host; `jax.devices()` then lists every
    chip of the slice, `auto` spans them all and each host feeds its share of each global batch
    from its share of the files (`Placement.distribute_dataset`).

    Args:
        kind: "auto", "cpu", "mirrored", "multi_worker" or "tpu" (JAX: "auto", "cpu", "tpu").
        tpu: TensorFlow only: "local", a TPU name or a grpc address (JAX uses the local chips).
        devices: TensorFlow only: devices for `kind="mirrored"`.

    Returns:
        A `Placement`: build the model and optimizer, compile and fit inside its `scope()`.

    Examples:
    >>> placement = resolve_distribution("cpu")
    >>> placement.num_replicas
    1
    """
    if keras.backend.backend() == "tensorflow":
        return Placement.from_strategy(resolve_strategy(kind, tpu=tpu, devices=devices))
    if keras.backend.backend() != "jax":
        raise SettingError(
            f"kbert trains on Keras' TensorFlow or JAX backend, not {keras.backend.backend()!r} "
            "(set KERAS_BACKEND=tensorflow or jax before importing kbert)"
        )
    return _jax_placement(kind, tpu, devices)


def as_placement(
    where: str | tf.distribute.Strategy | Placement | None = None, tpu: str = "local"
) -> Placement:
    """The `Placement` for a strategy name, a `tf.distribute` strategy, a placement, or None:
    the current one (TensorFlow: the strategy in scope; JAX: the `keras.distribution` set, else
    the default device).

    Args:
        where: what to place on; a name goes through `resolve_distribution(where, tpu)`.
        tpu: the TPU for the name "tpu" (TensorFlow: "local", a TPU name or a grpc address).

    Examples:
    >>> as_placement(None).num_replicas
    1
    """
    if isinstance(where, Placement):
        return where
    if isinstance(where, str):
        return resolve_distribution(where, tpu=tpu)
    if where is not None or keras.backend.backend() == "tensorflow":
        return Placement.from_strategy(where or tf.distribute.get_strategy())
    import jax

    distribution = keras.distribution.distribution()
    if distribution is None:
        device = jax.devices()[0]
        return Placement("jax", 1, f"one device ({device.platform}:{device.id})", device=device)
    devices = list(distribution.device_mesh.devices.flat)
    description = f"{type(distribution).__name__} over {len(devices)} devices"
    return Placement("jax", len(devices), description, distribution=distribution)


def initialize_distribution(
    job_addresses: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> bool:
    """Join a JAX run of several processes (`keras.distribution.initialize`) when the arguments
    or Keras' variables KERAS_DISTRIBUTION_JOB_ADDRESSES, _NUM_PROCESSES, _PROCESS_ID ask for one.

    Call it before anything uses a JAX device (`kbert.pretrain` and `kbert train` do). An argument
    wins over its variable; with neither, nothing happens. Every process runs the same program;
    process 0 serves the coordinator at the (first) job address. On a Cloud TPU VM slice
    `num_processes` alone is enough: JAX finds the coordinator and this host's id. Calling again
    with the same settings does nothing.

    Args:
        job_addresses: "host:port" of process 0, or of every process, comma-separated.
        num_processes: the processes of the run.
        process_id: this process, from 0 to num_processes - 1.

    Returns:
        Whether this process is one of a JAX run of several processes.

    Examples:
    >>> initialize_distribution()  # no arguments and no KERAS_DISTRIBUTION_* variables
    False
    """
    addresses = _setting("job_addresses", job_addresses, JOB_ADDRESSES_ENV, str)
    count = _setting("num_processes", num_processes, NUM_PROCESSES_ENV, int)
    index = _setting("process_id", process_id, PROCESS_ID_ENV, int)
    given = [setting for setting in (addresses, count, index) if setting.value is not None]
    if not given:
        return False
    names = ", ".join(setting.name for setting in given)
    if addresses.value is not None and not addresses.value.strip():
        raise SettingError(f"{addresses.name} is empty: expected host:port of process 0")
    if count.value is not None and count.value < 1:
        raise SettingError(f"{count.name} must be at least 1, got {count.value}")
    if index.value is not None and index.value < 0:
        raise SettingError(f"{index.name} must be 0 or more, got {index.value}")
    if count.value is not None and index.value is not None and index.value >= count.value:
        raise SettingError(
            f"{index.name} ({index.value}) must be below {count.name} ({count.value}): "
            f"processes are numbered 0 to {count.value - 1}"
        )
    listed = addresses.value.split(",") if addresses.value and "," in addresses.value else None
    if listed is not None and count.value is not None and len(listed) != count.value:
        raise SettingError(
            f"{addresses.name} lists {len(listed)} addresses but {count.name} is {count.value}"
        )
    if keras.backend.backend() != "jax":
        raise SettingError(
            f"{names} set up a JAX run of several processes, but Keras' backend is "
            f"{keras.backend.backend()!r}: set KERAS_BACKEND=jax (a TensorFlow cluster is "
            "--strategy multi_worker with TF_CONFIG)"
        )
    import jax

    if jax.distributed.is_initialized():
        if (count.value not in (None, jax.process_count())) or (
            index.value not in (None, jax.process_index())
        ):
            raise SettingError(
                f"{names} do not match this process, which already runs as process "
                f"{jax.process_index()} of {jax.process_count()}"
            )
        return True
    try:
        keras.distribution.initialize(addresses.value, count.value, index.value)
    except RuntimeError as e:
        raise SettingError(
            f"{names}: JAX already runs in this process, too late to join several processes "
            f"({e}); initialise first thing (kbert.distribute.initialize_distribution)"
        ) from None
    except ValueError as e:
        raise SettingError(
            f"{names}: JAX cannot join the run ({e}); give the job address, the number of "
            "processes and this process's id (only on a Cloud TPU VM does JAX find the address "
            "and the id itself)"
        ) from None
    logger.info(
        "distribution: JAX process %d of %d (%s), %d of %d devices on this host",
        jax.process_index(),
        jax.process_count(),
        f"coordinator {addresses.value.split(',')[0]}" if addresses.value else "found by JAX",
        jax.local_device_count(),
        jax.device_count(),
    )
    return True


@dataclasses.dataclass(frozen=True)
class _Setting:
    """A setting's value and the name the user gave it by (argument or environment variable)."""

    name: str
    value: Any


def _setting(name: str, value: Any, variable: str, parse: Callable[[str], Any]) -> _Setting:
    """The argument when given, else the environment variable (empty: unset), parsed."""
    if value is not None:
        return _Setting(name, value)
    raw = os.environ.get(variable, "").strip()
    if not raw:
        return _Setting(variable, None)
    try:
        return _Setting(variable, parse(raw))
    except ValueError:
        raise SettingError(f"{variable} must be an integer, got {raw!r}") from None


def _jax_placement(kind: str, tpu: str, devices: Sequence[str] | None) -> Placement:
    import jax

    if kind in ("mirrored", "multi_worker"):
        raise SettingError(
            f"strategy {kind!r} is a TensorFlow strategy; under KERAS_BACKEND=jax use 'auto' "
            "(data parallel over every JAX device; on several hosts after "
            "keras.distribution.initialize()), 'tpu' or 'cpu', or set KERAS_BACKEND=tensorflow"
        )
    if kind not in JAX_STRATEGY_KINDS:
        raise SettingError(
            f"strategy must be one of {', '.join(JAX_STRATEGY_KINDS)} under KERAS_BACKEND=jax, "
            f"got {kind!r}"
        )
    if devices is not None:
        raise SettingError(f"devices={list(devices)} is only used with TensorFlow's 'mirrored'")
    if tpu != "local":
        raise SettingError(
            f"tpu={tpu!r}: a remote TPU by name or address is TensorFlow's TPUStrategy; under "
            "KERAS_BACKEND=jax run on the TPU VM itself (tpu='local')"
        )
    if kind == "cpu" and jax.process_count() > 1:
        raise SettingError(
            f"strategy 'cpu' is one device, but this is process {jax.process_index()} of "
            f"{jax.process_count()} JAX processes: use 'auto' (every process's devices) or 'tpu'"
        )
    if kind == "cpu":
        chosen, why = jax.devices("cpu")[:1], "requested"
    elif kind == "tpu":
        try:
            chosen = jax.devices("tpu")
        except RuntimeError:
            raise SettingError(
                "strategy 'tpu': JAX sees no TPU on this machine (jax.devices('tpu') failed). "
                "On Colab choose a TPU runtime; elsewhere use strategy 'auto' or 'cpu'"
            ) from None
        why = "requested"
    else:
        chosen = jax.devices()
        why = f"auto: {len(chosen)} {chosen[0].platform.upper()} device(s) visible to JAX"
    names = ", ".join(f"{d.platform}:{d.id}" for d in chosen)
    if len(chosen) == 1:
        description = f"one device ({names})"
        placement = Placement("jax", 1, description, device=chosen[0])
    else:
        description = f"DataParallel over {len(chosen)} devices ({names})"
        # kbert's pipelines shard the input per process themselves (distribute_dataset).
        distribution = keras.distribution.DataParallel(devices=chosen, auto_shard_dataset=False)
        placement = Placement("jax", len(chosen), description, distribution=distribution)
    logger.info("distribution: %s — %s", description, why)
    return placement
