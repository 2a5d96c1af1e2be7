"""The JAX pass: the backend-neutral test modules, run again under `KERAS_BACKEND=jax`.

JAX reads its backend and device flags when it starts, so each module runs in a fresh
`python -m pytest` with two forced CPU devices (the data-parallel proxy for a TPU's chips).
"""

import os
import subprocess
import sys

import pytest

TESTS = os.path.dirname(os.path.abspath(__file__))
# Module: the tests of it to run (a `-k` expression), or None for all of them.
JAX_MODULES = {
    "test_model.py": None,
    "test_losses.py": None,
    "test_optimization.py": None,
    "test_distribute.py": None,
    "test_evaluate.py": None,
    "test_train_resume.py": None,
    "test_backend_parity.py": None,
    "test_damaged_data.py": None,
    # Google TF1 checkpoints and kbert runs as --init_from, read and written from a JAX session.
    "test_checkpoints.py": "google or init_from",
}
TIMEOUT_SECONDS = 300


@pytest.mark.tensorflow_only
@pytest.mark.parametrize("module", JAX_MODULES)
def test_module_passes_under_the_jax_backend_on_two_devices(module):
    selection = ["-k", JAX_MODULES[module]] if JAX_MODULES[module] else []
    env = dict(
        os.environ,
        KERAS_BACKEND="jax",
        XLA_FLAGS="--xla_force_host_platform_device_count=2",
        JAX_PLATFORMS="cpu",
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            os.path.join(TESTS, module),
            "-q",
            "-p",
            "no:cacheprovider",
            *selection,
        ],
        cwd=os.path.dirname(TESTS),
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_SECONDS,
    )
    assert result.returncode == 0, (
        f"{module} under KERAS_BACKEND=jax failed:\n"
        f"{result.stdout[-6000:]}\n{result.stderr[-3000:]}"
    )
    assert " passed" in result.stdout.splitlines()[-1], result.stdout[-2000:]
