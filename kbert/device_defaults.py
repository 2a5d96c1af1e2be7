"""What `mixed_precision="auto"` and `jit_compile="auto"` mean on the device at hand.

The fastest correct settings differ by device and were measured, not guessed (issue 16,
`benchmarks/train_step.py`): TPUs run bf16 under XLA; GPUs gain from XLA, and from bf16 from
compute capability 8.0 (Ampere) on; on CPUs TensorFlow's XLA is no faster than its oneDNN
kernels, and bf16 pays only where the CPU multiplies bf16 in hardware (AVX512-BF16, AMX) — some
CPUs that list the instructions still run bf16 slower than fp32, so a short matmul timing decides.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time

import keras
import tensorflow as tf

from kbert.distribute import Placement, is_multi_worker
from kbert.errors import SettingError

# bf16 must multiply this much faster than fp32 to pay for its casts outside the matmuls
# (a training step in bf16 gains about half the matmul speed-up; measured on a Zen 5 CPU).
MIN_BF16_MATMUL_SPEEDUP = 1.3
# The CPU instruction sets (/proc/cpuinfo flags) that multiply bf16 in hardware.
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")
# Overrides what mixed_precision "auto" resolves to ("none", "bf16" or "fp16").
MIXED_PRECISION_ENV = "KBERT_MIXED_PRECISION"
MIXED_PRECISIONS = ("none", "bf16", "fp16")


@dataclasses.dataclass(frozen=True)
class DeviceFacts:
    """What the choice of settings depends on.

    Args:
        platform: "cpu", "gpu" or "tpu".
        backend: the Keras backend, "tensorflow" or "jax".
        tf_distributed: whether a multi-device `tf.distribute` strategy runs the steps (Keras
            compiles no step with XLA under one).
        several_workers: whether several processes train together (they must agree, and a
            timing of each one's CPU could differ).
        cpu_flags: the CPU's instruction-set flags (Linux /proc/cpuinfo).
        gpu_compute_capability: the GPU's (major, minor), or None.
        bf16_matmul_speedup: measured fp32 / bf16 matmul time on this CPU, or None if not measured.
    """

    platform: str
    backend: str = "tensorflow"
    tf_distributed: bool = False
    several_workers: bool = False
    cpu_flags: frozenset[str] = frozenset()
    gpu_compute_capability: tuple[int, int] | None = None
    bf16_matmul_speedup: float | None = None


@dataclasses.dataclass(frozen=True)
class Settings:
    """The resolved settings and why, as `describe()` logs them in one line."""

    mixed_precision: str
    jit_compile: bool
    mixed_precision_why: str
    jit_compile_why: str

    def describe(self) -> str:
        """One line: `settings: mixed_precision bf16 (why), jit_compile off (why)`."""
        jit = "on" if self.jit_compile else "off"
        return (
            f"settings: mixed_precision {self.mixed_precision} ({self.mixed_precision_why}), "
            f"jit_compile {jit} ({self.jit_compile_why})"
        )


def choose_settings(facts: DeviceFacts) -> Settings:
    """The fastest correct `mixed_precision` and `jit_compile` for a device with these facts.

    Args:
        facts: the device's facts (`device_facts()` gathers them for this machine).

    Examples:
    >>> choose_settings(DeviceFacts("tpu", backend="jax")).mixed_precision
    'bf16'
    >>> cpu = DeviceFacts("cpu", cpu_flags=frozenset({"avx512_bf16"}), bf16_matmul_speedup=2.0)
    >>> choose_settings(cpu).describe()
    'settings: mixed_precision bf16 (CPU with fast bf16 matmul: 2.0x fp32 measured), jit_compile off (CPU: oneDNN kernels are as fast as XLA)'
    """  # noqa: E501
    if facts.platform == "tpu":
        precision, precision_why = "bf16", "TPU"
    elif facts.platform == "gpu":
        capability = facts.gpu_compute_capability or (0, 0)
        fast = capability >= (8, 0)
        precision = "bf16" if fast else "none"
        precision_why = f"GPU compute capability {capability[0]}.{capability[1]} " + (
            ">= 8.0" if fast else "< 8.0: no fast bf16"
        )
    else:
        precision, precision_why = _cpu_precision(facts)
    if facts.backend == "jax":
        jit, jit_why = True, "JAX always compiles"
    elif facts.platform == "tpu":
        # Keras' own setting under TPUStrategy: the flag only adds a nested XLA scope.
        jit, jit_why = False, "TPUStrategy compiles every step with XLA itself"
    elif facts.tf_distributed:
        jit, jit_why = False, "Keras compiles no step under a tf.distribute strategy"
    elif facts.platform == "cpu":
        jit, jit_why = False, "CPU: oneDNN kernels are as fast as XLA"
    else:
        jit, jit_why = True, facts.platform.upper()
    return Settings(precision, jit, precision_why, jit_why)


def _cpu_precision(facts: DeviceFacts) -> tuple[str, str]:
    if facts.several_workers:
        return "none", "CPUs of several workers: their timings could disagree"
    if not set(BF16_CPU_FLAGS) & facts.cpu_flags:
        return "none", "CPU without bf16 matmul instructions"
    speedup = facts.bf16_matmul_speedup
    if speedup is None:
        return "none", "CPU: bf16 matmul speed not measured"
    if speedup < MIN_BF16_MATMUL_SPEEDUP:
        return "none", f"CPU bf16 matmul only {speedup:.1f}x fp32 measured"
    return "bf16", f"CPU with fast bf16 matmul: {speedup:.1f}x fp32 measured"


def cpu_flags() -> frozenset[str]:
    """The CPU's instruction-set flags from /proc/cpuinfo (empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


@functools.cache
def bf16_matmul_speedup(size: int = 1024, repeats: int = 5) -> float:
    """fp32 / bf16 time of a warmed-up `size`² matmul on the default device, best of `repeats`
    (about 0.2 s on a CPU); measured once per process.

    Examples:
    >>> bf16_matmul_speedup(64, 2) > 0
    True
    """
    timings = {}
    for dtype in ("float32", "bfloat16"):
        a = keras.random.normal((size, size), seed=1, dtype=dtype)
        keras.ops.convert_to_numpy(keras.ops.matmul(a, a))
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            keras.ops.convert_to_numpy(keras.ops.matmul(a, a))
            best = min(best, time.perf_counter() - start)
        timings[dtype] = best
    return timings["float32"] / timings["bfloat16"]


def device_facts(placement: Placement, measure_bf16: bool = True) -> DeviceFacts:
    """The facts of the devices `placement` trains on; times a bf16 matmul only on a CPU with
    bf16 instructions and when `measure_bf16`."""
    if placement.on_tpu:
        platform = "tpu"
    elif placement.backend == "jax":
        platform = _jax_devices(placement)[0].platform
    else:
        platform = "gpu" if tf.config.list_physical_devices("GPU") else "cpu"
    flags = cpu_flags()
    if placement.strategy is not None:
        several_workers = is_multi_worker(placement.strategy)
    else:
        several_workers = _jax_process_count() > 1
    speedup = None
    if platform == "cpu" and measure_bf16 and not several_workers and set(BF16_CPU_FLAGS) & flags:
        speedup = bf16_matmul_speedup()
    return DeviceFacts(
        platform,
        backend=placement.backend,
        tf_distributed=placement.strategy is not None
        and placement.strategy is not tf.distribute.get_strategy(),
        several_workers=several_workers,
        cpu_flags=flags,
        gpu_compute_capability=_gpu_compute_capability(placement) if platform == "gpu" else None,
        bf16_matmul_speedup=speedup,
    )


def _jax_process_count() -> int:
    import jax

    return jax.process_count()


def _jax_devices(placement: Placement) -> list:
    if placement.distribution is not None:
        return list(placement.distribution.device_mesh.devices.flat)
    return [placement.device]


def _gpu_compute_capability(placement: Placement) -> tuple[int, int] | None:
    if placement.backend == "jax":
        major, minor = str(_jax_devices(placement)[0].compute_capability).split(".")[:2]
        return int(major), int(minor)
    details = tf.config.experimental.get_device_details(tf.config.list_physical_devices("GPU")[0])
    return details.get("compute_capability")


def resolve_settings(
    mixed_precision: str, jit_compile: bool | str, placement: Placement
) -> tuple[str, bool, str]:
    """`mixed_precision` and `jit_compile` with "auto" resolved for the devices of `placement`,
    and the line to log. An explicit value always wins; the environment variable
    KBERT_MIXED_PRECISION (none, bf16, fp16), when set, is what "auto" means for mixed precision.

    Args:
        mixed_precision: "auto", "none", "bf16" or "fp16".
        jit_compile: "auto", True or False.
        placement: where the run trains (`kbert.distribute.resolve_distribution`).

    Examples:
    >>> from kbert.distribute import resolve_distribution
    >>> resolve_settings("none", False, resolve_distribution("cpu"))[2]
    'settings: mixed_precision none (requested), jit_compile off (requested)'
    """
    from_env = os.environ.get(MIXED_PRECISION_ENV, "")
    if from_env and from_env not in MIXED_PRECISIONS:
        raise SettingError(
            f"{MIXED_PRECISION_ENV} must be one of {', '.join(MIXED_PRECISIONS)}, got {from_env!r}"
        )
    auto_precision = mixed_precision == "auto" and not from_env
    chosen = choose_settings(device_facts(placement, measure_bf16=auto_precision))
    precision, precision_why = chosen.mixed_precision, chosen.mixed_precision_why
    if mixed_precision != "auto":
        precision, precision_why = mixed_precision, "requested"
    elif from_env:
        precision, precision_why = from_env, f"{MIXED_PRECISION_ENV}={from_env}"
    jit, jit_why = chosen.jit_compile, chosen.jit_compile_why
    if jit_compile != "auto":
        jit, jit_why = bool(jit_compile), "requested"
    return precision, jit, Settings(precision, jit, precision_why, jit_why).describe()
