"""kbert installs where the README says: pip's resolver on the Colab TPU runtime, and the guard.

There is no TPU here, so the Colab install is checked by proxy: pip resolves (`--dry-run
--report`) kbert's wheel for the runtime's Python and platform together with the packages the
runtime ships and must keep. These tests need PyPI and skip, saying so, only when it is
unreachable; a resolution that fails is a failure.
"""

import functools
import json
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from kbert.versions import IncompatibleVersionsError, check_versions, installed_versions

ROOT = Path(__file__).resolve().parent.parent

# The Colab TPU runtime (googlecolab/backend-info, pip-freeze.tpu.txt and os-info-tpu.txt at
# a724079, 2026-08-19): Python 3.13 on Ubuntu 22.04 (glibc 2.35), x86_64. kbert must leave
# these three as they are; the runtime's keras==3.13.2 may be upgraded.
RUNTIME_PYTHON = "3.13"
RUNTIME_KEEPS = {"jax": "0.7.2", "jaxlib": "0.7.2", "libtpu": "0.0.21.1"}
RUNTIME_PLATFORMS = [f"manylinux_2_{minor}_x86_64" for minor in range(5, 36)] + [
    "manylinux2014_x86_64",
    "manylinux2010_x86_64",
    "manylinux1_x86_64",
    "linux_x86_64",
]
# The README's TensorFlow TPUStrategy cell: these pins, then tensorflow-tpu without its deps.
TF_TPU_PINS = ["tensorflow==2.20.*", "tensorflow-text==2.20.*", "tensorflow-serving-api==2.20.*"]
TENSORFLOW_TPU = "tensorflow-tpu==2.20.0"
PIP_TIMEOUT = 240


@functools.cache
def _pypi_unreachable() -> str | None:
    try:
        urllib.request.urlopen("https://pypi.org/simple/pip/", timeout=20).close()
    except OSError as e:
        return f"PyPI is unreachable ({e}); the resolver tests need it"
    return None


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory) -> Path:
    """kbert's wheel, built from this checkout, and wheels of sdist-only dependencies."""
    if _pypi_unreachable():
        pytest.skip(_pypi_unreachable())
    source = tmp_path_factory.mktemp("source")
    # A copy: building in the checkout would leave build/ and *.egg-info behind.
    for name in ("setup.py", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    for package in ("kbert", "tfrecords_tools"):
        shutil.copytree(
            ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    wheels = tmp_path_factory.mktemp("wheels")
    # A target Python (--python-version) takes wheels only; tensorflow-datasets needs `promise`,
    # which PyPI has as an sdist only (the runtime has it installed, built).
    for target in (str(source), "promise"):
        _pip(["wheel", "--no-deps", "--wheel-dir", str(wheels), target])
    return wheels


def _pip(args: list[str]) -> subprocess.CompletedProcess:
    try:
        done = subprocess.run(
            [sys.executable, "-m", "pip", *args],
            capture_output=True,
            text=True,
            timeout=PIP_TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"pip {' '.join(args)} took more than {PIP_TIMEOUT} s")
    if done.returncode != 0:
        errors = [line for line in done.stderr.splitlines() if "is ignored" not in line]
        pytest.fail(f"pip {' '.join(args)} failed:\n" + "\n".join(errors[-40:]))
    return done


def resolve(wheelhouse: Path, requirements: list[str], *, no_deps: bool = False) -> dict:
    """What `pip install REQUIREMENTS` would install on the runtime: name -> report entry."""
    kbert_wheel = next(wheelhouse.glob("kbert-*.whl"))
    report = wheelhouse / "report.json"
    lines = [str(kbert_wheel) if r == "kbert" else r for r in requirements]
    platforms = [arg for platform in RUNTIME_PLATFORMS for arg in ("--platform", platform)]
    _pip(
        ["install", "--dry-run", "--quiet", "--ignore-installed", "--report", str(report)]
        + ["--python-version", RUNTIME_PYTHON, "--only-binary=:all:", *platforms]
        + ["--find-links", str(wheelhouse)]
        + (["--no-deps"] if no_deps else [])
        + lines
    )
    installs = json.loads(report.read_text())["install"]
    return {entry["metadata"]["name"].lower().replace("_", "-"): entry for entry in installs}


def _version(installs: dict, name: str) -> str | None:
    entry = installs.get(name)
    return None if entry is None else entry["metadata"]["version"]


def test_kbert_installs_beside_the_tpu_runtimes_jax_jaxlib_and_libtpu(wheelhouse):
    # The README's JAX cell: kbert into an environment that holds the runtime's packages.
    pinned = [f"{name}=={version}" for name, version in RUNTIME_KEEPS.items()]
    installs = resolve(wheelhouse, ["kbert", *pinned])
    changed = {
        name: _version(installs, name)
        for name, version in RUNTIME_KEEPS.items()
        if _version(installs, name) != version
    }
    assert not changed, f"kbert would replace the TPU runtime's {changed}"
    assert Version(_version(installs, "tensorflow")) >= Version("2.20")


def test_tensorflow_tpu_route_resolves_with_tensorflow_2_20(wheelhouse):
    pinned = [f"{name}=={version}" for name, version in RUNTIME_KEEPS.items()]
    installs = resolve(wheelhouse, ["kbert", *TF_TPU_PINS, *pinned])
    for requirement in map(Requirement, TF_TPU_PINS):
        assert requirement.specifier.contains(_version(installs, requirement.name)), requirement
    # tensorflow-tpu goes in last without its dependencies: what it needs must already be there.
    tpu = resolve(wheelhouse, [TENSORFLOW_TPU], no_deps=True)["tensorflow-tpu"]
    environment = {"python_version": RUNTIME_PYTHON, "sys_platform": "linux", "extra": ""}
    unmet = []
    for line in tpu["metadata"].get("requires_dist", []):
        requirement = Requirement(line)
        if requirement.marker is not None and not requirement.marker.evaluate(environment):
            continue
        name = requirement.name.lower().replace("_", "-")
        version = _version(installs, name) or RUNTIME_KEEPS.get(name)
        if version is None or not requirement.specifier.contains(version):
            unmet.append(f"{requirement} (have {version})")
    assert not unmet, f"{TENSORFLOW_TPU} --no-deps would leave unmet: {unmet}"


@pytest.mark.parametrize(
    "versions, named",
    [
        ({"tensorflow": "2.21.0", "tensorflow-text": "2.20.1"}, "tensorflow 2.21.0"),
        ({"tensorflow": "2.20.0", "tensorflow-text": "2.21.1"}, "tensorflow 2.20.0"),
        ({"tensorflow": "2.21.0", "tensorflow-text": "2.21.0"}, "tensorflow-text 2.21.0"),
        (
            {"tensorflow": "2.21.0", "tensorflow-tpu": "2.20.0", "tensorflow-text": "2.21.1"},
            "tensorflow-tpu 2.20.0",
        ),
    ],
    ids=["tf-2.21-text-2.20", "tf-2.20-text-2.21", "text-2.21.0", "tpu-2.20-text-2.21"],
)
def test_version_guard_refuses_in_one_line_with_the_fix(versions, named):
    with pytest.raises(IncompatibleVersionsError) as refused:
        check_versions(versions)
    message = str(refused.value)
    assert "\n" not in message
    assert named in message and f"tensorflow-text {versions['tensorflow-text']}" in message
    assert "fix: pip install" in message


def test_version_guard_tells_tpu_users_to_reinstall_the_tpu_build_last():
    with pytest.raises(IncompatibleVersionsError, match="--no-deps tensorflow-tpu==2.20.0"):
        check_versions({"tensorflow-tpu": "2.20.0", "tensorflow-text": "2.21.1"})


@pytest.mark.parametrize(
    "versions",
    [
        {"tensorflow": "2.20.0", "tensorflow-text": "2.20.1"},
        {"tensorflow": "2.21.0", "tensorflow-text": "2.21.1"},
        {"tensorflow": "2.20.0", "tensorflow-tpu": "2.20.0", "tensorflow-text": "2.20.1"},
    ],
)
def test_version_guard_accepts_matching_pairs(versions):
    check_versions(versions)


@pytest.mark.tf_compat
def test_installed_environment_passes_the_version_guard():
    assert "tensorflow-text" in installed_versions()
    check_versions()


def _run_with_tensorflow_cpu_2_19(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """Run `code` where the installed metadata also holds a tensorflow-cpu 2.19.0."""
    fake = tmp_path / "tensorflow_cpu-2.19.0.dist-info"
    fake.mkdir()
    (fake / "METADATA").write_text("Metadata-Version: 2.1\nName: tensorflow-cpu\nVersion: 2.19.0\n")
    prelude = f"import sys; sys.path.insert(0, {str(tmp_path)!r}); "
    return subprocess.run(
        [sys.executable, "-c", prelude + code], capture_output=True, text=True, timeout=120
    )


def test_cli_refuses_a_mismatch_in_one_line(tmp_path):
    done = _run_with_tensorflow_cpu_2_19(
        "from kbert.cli import main; sys.exit(main(['plot', 'nowhere']))", tmp_path
    )
    assert done.returncode == 1
    assert done.stderr.startswith("kbert: error: tensorflow-cpu 2.19.0 with tensorflow-text")
    assert len(done.stderr.strip().splitlines()) == 1


def test_library_refuses_a_mismatch_at_the_first_lazy_import(tmp_path):
    done = _run_with_tensorflow_cpu_2_19(
        "import kbert\n"
        "try:\n    kbert.pretrain\n"
        "except ImportError as e:\n    print(e)\n"
        "print('tensorflow' in sys.modules)",
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    refusal, tensorflow_imported = done.stdout.strip().splitlines()
    assert refusal.startswith("tensorflow-cpu 2.19.0 with tensorflow-text")
    assert 'fix: pip install "tensorflow-text==2.19.*"' in refusal
    assert tensorflow_imported == "False"
