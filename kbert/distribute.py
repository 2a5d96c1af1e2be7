"""Which `tf.distribute` strategy to train under: one device, Mirrored, MultiWorkerMirrored or TPU."""

from __future__ import annotations

import concurrent.futures
import glob
import json
import logging
import os
import posixpath
from collections.abc import Sequence

import tensorflow as tf

logger = logging.getLogger(__name__)

STRATEGY_KINDS = ("auto", "cpu", "mirrored", "multi_worker", "tpu")
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
    TensorFlow runs anything else in the process); `cpu` returns the default one-device strategy;
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
        raise ValueError(f"strategy must be one of {', '.join(STRATEGY_KINDS)}, got {kind!r}")
    if devices is not None and kind != "mirrored":
        raise ValueError(
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
        raise ValueError("devices for strategy 'mirrored' is empty")
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
        raise ValueError(
            "TF_CONFIG is not a JSON object with a 'cluster' of task lists, e.g. "
            '{"cluster": {"worker": ["host1:port", "host2:port"]}, "task": {"type": "worker", "index": 0}}'
        ) from None


def _multi_worker_strategy(why: str) -> tf.distribute.Strategy:
    if not _tf_config_tasks():
        raise ValueError(
            "strategy 'multi_worker' needs the TF_CONFIG environment variable: the cluster's "
            "workers and this process's task, e.g. "
            '{"cluster": {"worker": ["host1:port", "host2:port"]}, "task": {"type": "worker", "index": 0}}'
        )
    try:
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    except RuntimeError as e:
        raise ValueError(
            "strategy 'multi_worker' must be created before TensorFlow runs anything in the "
            f"process (resolve it first thing in the program): {e}"
        ) from None
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
        raise ValueError(
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
        raise ValueError(
            f"strategy 'tpu': no answer from TPU {tpu!r} within {TPU_CONNECT_TIMEOUT_SECONDS} s "
            "(check the TPU name / address and that it is running)"
        ) from None
    except (ValueError, RuntimeError, tf.errors.OpError) as e:
        raise ValueError(f"strategy 'tpu': cannot connect to TPU {tpu!r} ({e})") from None
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
