"""The JAX pass: the backend-neutral test modules, run again under `KERAS_BACKEND=jax`.

JAX reads its backend and device flags when it starts, so each module runs in a fresh
`python -m pytest` with two forced CPU devices (the data-parallel proxy for a TPU's chips).
"""

import os
import subprocess
import sys

import pytest

TESTS = os.path.dirname(os.path.abspath(__file__))
JAX_MODULES = ["test_model.py", "test_losses.py", "test_optimization.py", "test_distribute.py"]
TIMEOUT_SECONDS = 300


@pytest.mark.tensorflow_only
@pytest.mark.parametrize("module", JAX_MODULES)
def test_module_passes_under_the_jax_backend_on_two_devices(module):
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
