"""Test setup for either Keras backend (`KERAS_BACKEND`, default tensorflow).

TensorFlow: two logical CPU devices (the multi-replica proxy) before any TensorFlow op runs.
JAX: the devices come from `XLA_FLAGS=--xla_force_host_platform_device_count=N`, set before
JAX starts (tests/test_jax_backend.py runs the JAX pass that way). Tests marked
`tensorflow_only` or `jax_only` are skipped on the other backend.
"""

import os
import shutil
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# mixed_precision "auto" picks bf16 on CPUs with fast bf16 matmul (kbert.device_defaults): the
# tests compare numbers at fp32 tolerances, so "auto" means fp32 here (also in subprocesses).
os.environ.setdefault("KBERT_MIXED_PRECISION", "none")
# JAX's persistent compilation cache, one for the session and every process it starts (the JAX
# pass, `kbert` subprocesses): the tests build the same small models again and again, and each
# new model's train step is a new compilation (~10 s on CI's CPU) unless XLA finds it here.
_OWN_JAX_CACHE = "JAX_COMPILATION_CACHE_DIR" not in os.environ
if _OWN_JAX_CACHE:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="kbert-tests-jax-cache-")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import keras  # noqa: E402
import pytest  # noqa: E402

# Session fixtures of the fine-tuning placement tests (shared by two modules).
from finetune_task import finetune_task, one_device_finetuning  # noqa: E402,F401

import kbert  # noqa: E402,F401  (sets kbert's environment defaults before TensorFlow starts)

BACKEND = keras.backend.backend()


def pytest_configure(config):
    if BACKEND == "tensorflow":
        import tensorflow as tf

        cpus = tf.config.list_physical_devices("CPU")
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2
        )
    config.addinivalue_line("markers", "slow: long test, run with `python -m pytest tests -m slow`")
    config.addinivalue_line(
        "markers",
        "tf_compat: smoke subset (build, fit, export) CI also runs under TensorFlow 2.20 (.ci/run)",
    )
    config.addinivalue_line(
        "markers", "tensorflow_only: needs Keras' TensorFlow backend (tf.distribute, TF graphs)"
    )
    config.addinivalue_line("markers", "jax_only: needs Keras' JAX backend (keras.distribution)")
    config.addinivalue_line(
        "markers",
        "huggingface: checks against transformers itself, needs the huggingface-test extra "
        "(a stage of its own in .ci/run)",
    )
    # Keras 3.15 converting tensors for numpy 2: harmless, and thousands of lines of noise.
    config.addinivalue_line(
        "filterwarnings", "ignore:__array__ implementation doesn't accept a copy keyword"
    )


def pytest_unconfigure(config):
    if _OWN_JAX_CACHE:
        shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)


@pytest.fixture
def two_cpus():
    """The two logical CPU devices the conftest created."""
    import tensorflow as tf

    devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    assert len(devices) == 2, devices
    return devices


@pytest.fixture(autouse=True)
def fresh_collective_keys():
    """Give each test's MirroredStrategy its own collective keys.

    Every MirroredStrategy in a process starts its collective group/instance keys at the same
    numbers; a second strategy whose all-reduces differ in shape from the first's then aborts
    with "Shape mismatch in the collective instance". kbert.distribute does the same per strategy.
    """
    if BACKEND == "tensorflow":
        import tensorflow as tf

        tf.distribute.MirroredStrategy._collective_key_base += 1000
    yield


def pytest_collection_modifyitems(config, items):
    """Skip tests of the other backend, and `slow` tests unless a marker expression asks for
    them (`-m slow`)."""
    other = "jax_only" if BACKEND == "tensorflow" else "tensorflow_only"
    skip_backend = pytest.mark.skip(reason=f"{other}: not run under KERAS_BACKEND={BACKEND}")
    for item in items:
        if other in item.keywords:
            item.add_marker(skip_backend)
    if config.option.markexpr:
        return
    skip = pytest.mark.skip(reason="slow: run with `python -m pytest tests -m slow`")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
