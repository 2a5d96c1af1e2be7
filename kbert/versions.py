"""The version guard: refuse early a TensorFlow / tensorflow-text pair known to break kbert.

Versions come from the installed packages' metadata, so the check imports no TensorFlow.
"""

from __future__ import annotations

import functools
import importlib.metadata
import re

TENSORFLOW_TEXT = "tensorflow-text"
# Every distribution that ships the `tensorflow` module. The Colab TPU route installs
# tensorflow-tpu over the plain wheel, so both can be installed; the TPU one is named first.
TENSORFLOW_DISTRIBUTIONS = ("tensorflow-tpu", "tensorflow", "tensorflow-cpu")
# tensorflow-text releases kbert refuses, and why.
BROKEN_TENSORFLOW_TEXT = {(2, 21, 0): "it breaks keras-hub's tokenizers (keras-hub#2979)"}


class IncompatibleVersionsError(ImportError):
    """Installed TensorFlow and tensorflow-text versions that kbert refuses to run with."""


def installed_versions() -> dict[str, str]:
    """The installed versions of TensorFlow's distributions and of tensorflow-text, by name."""
    versions = {}
    for name in (*TENSORFLOW_DISTRIBUTIONS, TENSORFLOW_TEXT):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def _release(version: str) -> tuple[int, ...]:
    match = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", version)
    if match is None:
        raise ValueError(f"cannot read the version number {version!r}")
    return tuple(int(part or 0) for part in match.groups())


def _fix(tensorflow_name: str, tensorflow_version: str) -> str:
    major, minor, _ = _release(tensorflow_version)
    refused = "".join(
        f",!={'.'.join(map(str, release))}"
        for release in BROKEN_TENSORFLOW_TEXT
        if release[:2] == (major, minor)
    )
    command = f'pip install "tensorflow-text=={major}.{minor}.*{refused}"'
    if tensorflow_name == "tensorflow-tpu":
        # tensorflow-text pulls the plain wheel by name; the TPU build must go in last again.
        command += f" && pip install --no-deps tensorflow-tpu=={tensorflow_version}"
    return command


def check_versions(versions: dict[str, str] | None = None) -> None:
    """Raise `IncompatibleVersionsError` (one line, with the pip command that fixes it) for a
    TensorFlow / tensorflow-text minor-version mismatch or a tensorflow-text release kbert refuses.

    Args:
        versions: distribution name -> version, e.g. `{"tensorflow": "2.21.0",
            "tensorflow-text": "2.21.1"}`; by default the installed ones. Missing names are
            not checked (a guard, not an installer: a missing package fails at its import).

    Examples:
    >>> check_versions({"tensorflow": "2.20.0", "tensorflow-text": "2.20.1"})
    >>> check_versions({"tensorflow": "2.21.0", "tensorflow-text": "2.20.1"})
    Traceback (most recent call last):
    ...
    kbert.versions.IncompatibleVersionsError: tensorflow 2.21.0 with tensorflow-text 2.20.1: ...
    """
    versions = installed_versions() if versions is None else versions
    text_version = versions.get(TENSORFLOW_TEXT)
    tensorflows = [(name, versions[name]) for name in TENSORFLOW_DISTRIBUTIONS if name in versions]
    if text_version is None or not tensorflows:
        return
    text_release = _release(text_version)
    for name, tf_version in tensorflows:
        if _release(tf_version)[:2] != text_release[:2]:
            raise IncompatibleVersionsError(
                f"{name} {tf_version} with tensorflow-text {text_version}: tensorflow-text's ops "
                "are built for one TensorFlow minor version and fail to load or misbehave with "
                f"another; fix: {_fix(name, tf_version)}"
            )
    if text_release in BROKEN_TENSORFLOW_TEXT:
        name, tf_version = tensorflows[0]
        raise IncompatibleVersionsError(
            f"{name} {tf_version} with tensorflow-text {text_version}: kbert refuses "
            f"tensorflow-text {text_version}, {BROKEN_TENSORFLOW_TEXT[text_release]}; "
            f"fix: {_fix(name, tf_version)}"
        )


@functools.cache
def check_installed_versions() -> None:
    """`check_versions()` on the installed packages, once per process (a failure re-raises)."""
    check_versions()
