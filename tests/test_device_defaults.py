"""`mixed_precision="auto"` and `jit_compile="auto"`: the fastest correct settings per device."""

import pytest

from kbert.device_defaults import DeviceFacts, choose_settings

BF16_CPU = frozenset({"avx512f", "avx512_bf16"})


def choice(facts):
    settings = choose_settings(facts)
    return settings.mixed_precision, settings.jit_compile


def test_tpu_trains_in_bf16_under_xla():
    assert choice(DeviceFacts("tpu", backend="jax")) == ("bf16", True)
    # TPUStrategy compiles every step with XLA whatever Keras' flag says; Keras leaves it off.
    tf_tpu = choose_settings(DeviceFacts("tpu", tf_distributed=True))
    assert tf_tpu.mixed_precision == "bf16"
    assert "compiles every step with XLA" in tf_tpu.describe()


@pytest.mark.parametrize(
    "capability, precision", [((9, 0), "bf16"), ((8, 0), "bf16"), ((7, 5), "none")]
)
def test_gpu_compiles_with_xla_and_uses_bf16_from_compute_capability_8(capability, precision):
    assert choice(DeviceFacts("gpu", gpu_compute_capability=capability)) == (precision, True)


@pytest.mark.parametrize(
    "flags, speedup, precision",
    [
        (BF16_CPU, 2.0, "bf16"),
        (frozenset({"amx_bf16"}), 1.3, "bf16"),
        (BF16_CPU, 1.2, "none"),  # the instructions, but bf16 barely faster: not worth its casts
        (frozenset({"avx512f", "avx2"}), 2.0, "none"),  # no bf16 instructions
        (BF16_CPU, None, "none"),  # not measured
    ],
)
def test_cpu_uses_bf16_only_with_bf16_instructions_and_a_measured_speedup(
    flags, speedup, precision
):
    facts = DeviceFacts("cpu", cpu_flags=flags, bf16_matmul_speedup=speedup)
    assert choice(facts) == (precision, False)


def test_xla_is_off_under_tf_distribute_and_always_on_under_jax():
    gpu = dict(gpu_compute_capability=(8, 0))
    assert choice(DeviceFacts("gpu", tf_distributed=True, **gpu))[1] is False
    assert choice(DeviceFacts("cpu", backend="jax"))[1] is True


def test_the_choice_is_explained_in_one_line():
    facts = DeviceFacts("cpu", cpu_flags=BF16_CPU, bf16_matmul_speedup=1.1)
    line = choose_settings(facts).describe()
    assert "\n" not in line
    assert line.startswith("settings: mixed_precision none (CPU bf16 matmul only 1.1x fp32")
    assert line.endswith("jit_compile off (CPU: oneDNN kernels are as fast as XLA)")


def test_cpus_of_several_workers_train_in_fp32_so_that_the_workers_agree():
    facts = DeviceFacts("cpu", several_workers=True, cpu_flags=BF16_CPU, bf16_matmul_speedup=2.0)
    assert choice(facts) == ("none", False)
