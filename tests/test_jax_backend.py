"""The JAX pass: the backend-neutral test modules, run again under `KERAS_BACKEND=jax`.

JAX reads its backend and device flags when it starts, so the modules run in one fresh
`python -m pytest` with two forced CPU devices (the data-parallel proxy for a TPU's chips): one
process for all of them, since each start imports TensorFlow, JAX and Keras again. Each module's
outcome is its own test here, read from that run's JUnit XML report.
"""

import os
import subprocess
import sys
import xml.etree.ElementTree as ElementTree

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
TIMEOUT_SECONDS = 2700
OUTCOMES = ("failure", "error", "skipped")  # a JUnit test case's child elements; none: passed


def selection():
    """One `-k` expression for the whole run: every module's own selection, all of the rest."""
    parts = [
        f"(not {module.removesuffix('.py')} or ({expression}))"
        for module, expression in JAX_MODULES.items()
        if expression
    ]
    return " and ".join(parts)


def outcomes_of(report):
    """{module: [(test, outcome, details)]} of a JUnit XML report of JAX_MODULES' tests."""
    outcomes = {module: [] for module in JAX_MODULES}
    for case in ElementTree.parse(report).iter("testcase"):
        # "tests.test_model" (or "tests.test_model.Class"), "test_x"; a collection error: "",
        # "tests.test_model".
        parts = f"{case.get('classname')}.{case.get('name')}".split(".")
        [module] = [m for m in JAX_MODULES if m.removesuffix(".py") in parts][:1]
        outcome = [(c.tag, f"{c.get('message')}\n{c.text}") for c in case if c.tag in OUTCOMES]
        outcomes[module].append((case.get("name"), *(outcome or [("passed", "")])[0]))
    return outcomes


@pytest.fixture(scope="module")
def jax_pass(tmp_path_factory):
    """Every module of JAX_MODULES in one JAX pytest run: {module: [(test, outcome, details)]},
    and the run's output."""
    report = str(tmp_path_factory.mktemp("jax_pass") / "report.xml")
    env = dict(
        os.environ,
        KERAS_BACKEND="jax",
        XLA_FLAGS="--xla_force_host_platform_device_count=2",
        JAX_PLATFORMS="cpu",
    )
    modules = [os.path.join(TESTS, module) for module in JAX_MODULES]
    expression = ["-k", selection()] if selection() else []
    result = subprocess.run(
        [sys.executable, "-m", "pytest", *modules, "-q", "-p", "no:cacheprovider"]
        + ["--continue-on-collection-errors", f"--junitxml={report}", *expression],
        cwd=os.path.dirname(TESTS),
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_SECONDS,
    )
    output = f"{result.stdout[-6000:]}\n{result.stderr[-3000:]}"
    assert os.path.exists(report), f"the JAX pass wrote no report:\n{output}"
    assert result.returncode in (0, 1), f"the JAX pass did not run its tests:\n{output}"
    return outcomes_of(report), output


@pytest.mark.tensorflow_only
@pytest.mark.parametrize("module", JAX_MODULES)
def test_module_passes_under_the_jax_backend_on_two_devices(jax_pass, module):
    outcomes, output = jax_pass
    broken = [
        f"{name}: {details[-3000:]}"
        for name, outcome, details in outcomes[module]
        if outcome in ("failure", "error")
    ]
    assert not broken, f"{module} under KERAS_BACKEND=jax failed:\n" + "\n".join(broken)
    assert any(outcome == "passed" for _, outcome, _ in outcomes[module]), (
        f"no test of {module} passed under KERAS_BACKEND=jax:\n{output}"
    )
