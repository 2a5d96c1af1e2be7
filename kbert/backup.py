"""The resume backup: a run's whole training state, written as a unit and verified on restore.

Layout of a run's `backup/` directory (format 1):

    current.json                  the pointer: {"format": 1, "state": FOLDER, "epoch": E, "step": S}
    interval-<E:07d>-<random>/    the state at the end of interval E (step S = E × interval)
        model.weights.h5          `Model.save_weights` of the compiled model: every weight and the
                                  optimizer's variables, whatever the optimizer (its step, moments,
                                  accumulators, a LossScaleOptimizer's scale)
        manifest.json             {"format": 1, "epoch": E, "step": S,
                                   "files": {"model.weights.h5": {"size": N, "sha256": HEX}}}

Writing one (`save_state`), each step complete before the next, so that a kill at any instant
leaves the previous state usable:

1. a folder with a fresh random name (never one a killed run may have half written);
2. the weights, flushed to disk (`fsync`) on local disk;
3. `manifest.json`, written atomically: the folder is complete;
4. `current.json`, written atomically (one file: atomic on gs:// too, where renaming a folder
   copies it object by object): the folder is current;
5. every other folder removed except the state restored or saved before, kept as a fallback.

Restoring (`find_state`): the folder `current.json` names, if its manifest, sizes and checksums
check out; otherwise the newest other folder that does, with one log line. Folders newer than
the pointer were never made current (a kill between steps 3 and 4) and are not used. After the
weights are loaded, the optimizer's step must equal the manifest's (`ResumeBackup`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import posixpath
import re
import uuid

import keras
import tensorflow as tf

from kbert.errors import KbertError
from kbert.io import fsync, read_json, write_json
from kbert.optimization import optimizer_step

logger = logging.getLogger(__name__)

FORMAT = 1
POINTER_FILE = "current.json"
MANIFEST_FILE = "manifest.json"
WEIGHTS_FILE = "model.weights.h5"
_FOLDER = re.compile(r"interval-(\d+)-[0-9a-f]+")


class DamagedBackupError(KbertError):
    """A resume backup cannot be used (incomplete, corrupted, or from another run)."""


@dataclasses.dataclass(frozen=True)
class State:
    """One complete resume state.

    Args:
        path: its folder.
        epoch: the intervals finished.
        step: the optimizer updates taken (epoch × checkpoint_interval).
    """

    path: str
    epoch: int
    step: int

    @property
    def weights(self) -> str:
        """The weights file to load into the compiled model."""
        return posixpath.join(self.path, WEIGHTS_FILE)


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with tf.io.gfile.GFile(path, "rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def save_state(
    backup_dir: str, model: keras.Model, epoch: int, previous: State | None = None
) -> State:
    """Write the state of `model` (weights and optimizer) after `epoch` intervals and make it
    current (see the module docstring for the protocol).

    Args:
        backup_dir: the run's `backup/` directory.
        model: the compiled, built model.
        epoch: the intervals finished.
        previous: the state kept as the fallback (the one restored or saved before); every
            other folder is removed.

    Examples:
    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    >>> model.compile(optimizer="sgd", loss="mse")
    >>> model.optimizer.build(model.trainable_variables)
    >>> save_state("backup", model, epoch=0).step
    0
    """
    name = f"interval-{epoch:07d}-{uuid.uuid4().hex[:8]}"
    path = posixpath.join(backup_dir, name)
    tf.io.gfile.makedirs(path)
    weights = posixpath.join(path, WEIGHTS_FILE)
    model.save_weights(weights)
    fsync(weights)
    state = State(path, epoch, optimizer_step(model))
    files = {WEIGHTS_FILE: {"size": tf.io.gfile.stat(weights).length, "sha256": _sha256(weights)}}
    write_json(
        posixpath.join(path, MANIFEST_FILE),
        {"format": FORMAT, "epoch": epoch, "step": state.step, "files": files},
    )
    write_json(
        posixpath.join(backup_dir, POINTER_FILE),
        {"format": FORMAT, "state": name, "epoch": epoch, "step": state.step},
    )
    keep = {name, posixpath.basename(previous.path) if previous else None}
    for folder in _folders(backup_dir):
        if folder not in keep:
            tf.io.gfile.rmtree(posixpath.join(backup_dir, folder))
    return state


def find_state(backup_dir: str, epoch: int | None = None) -> State | None:
    """The newest complete state in `backup_dir` (at `epoch` exactly, if given); None if none.

    The current one is used unless it fails its checks; then the newest other complete one, and
    one warning says why. Folders newer than the current one were never completed.

    Args:
        backup_dir: the run's `backup/` directory (absent: no state).
        epoch: the interval to restore (a cluster resumes from the one every worker finished).

    Examples:
    >>> find_state("no_run/backup") is None
    True
    """
    if not tf.io.gfile.isdir(backup_dir):
        return None
    pointer = _pointer(backup_dir)
    current = pointer.get("state")
    newest = pointer.get("epoch", -1) if current else -1
    candidates = [current] if current else []
    candidates += sorted(
        (f for f in _folders(backup_dir) if f != current and _epoch_of(f) <= newest),
        key=_epoch_of,
        reverse=True,
    )
    if epoch is not None:
        candidates = [f for f in candidates if _epoch_of(f) == epoch]
    failures = []
    for folder in candidates:
        try:
            state = _verified(posixpath.join(backup_dir, folder))
        except DamagedBackupError as e:
            failures.append(str(e))
            continue
        if failures:
            logger.warning(
                "resume backup: %s; falling back to %s (step %d)",
                "; ".join(failures),
                state.path,
                state.step,
            )
        return state
    if failures:
        raise DamagedBackupError(
            f"no usable resume backup in {backup_dir}: {'; '.join(failures)}. Remove {backup_dir} "
            "to train again from the start"
        )
    return None


def _pointer(backup_dir: str) -> dict:
    path = posixpath.join(backup_dir, POINTER_FILE)
    if not tf.io.gfile.exists(path):
        return {}
    try:
        pointer = read_json(path, "resume backup pointer")
    except ValueError:
        pointer = None
    if not isinstance(pointer, dict) or not _FOLDER.fullmatch(str(pointer.get("state"))):
        # Written atomically, so only outside damage gets here: fall back to the folders.
        logger.warning("resume backup: %s is damaged; using the newest complete state", path)
        return {"state": None, "epoch": max(map(_epoch_of, _folders(backup_dir)), default=-1)}
    return pointer


def _folders(backup_dir: str) -> list[str]:
    if not tf.io.gfile.isdir(backup_dir):
        return []
    names = (name.rstrip("/") for name in tf.io.gfile.listdir(backup_dir))
    return sorted(name for name in names if _FOLDER.fullmatch(name))


def _epoch_of(folder: str) -> int:
    return int(_FOLDER.fullmatch(folder).group(1))


def _verified(path: str) -> State:
    """The state in folder `path`, or a DamagedBackupError saying what is wrong with it."""
    try:
        manifest = read_json(posixpath.join(path, MANIFEST_FILE), "backup manifest")
        epoch, step, files = manifest["epoch"], manifest["step"], manifest["files"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DamagedBackupError(f"{path} is incomplete ({e})") from None
    if manifest.get("format") != FORMAT or epoch != _epoch_of(posixpath.basename(path)):
        raise DamagedBackupError(f"{path}: manifest of another format or interval")
    for name, expected in files.items():
        file = posixpath.join(path, name)
        if not tf.io.gfile.exists(file):
            raise DamagedBackupError(f"{file} is missing")
        size = tf.io.gfile.stat(file).length
        if size != expected["size"]:
            raise DamagedBackupError(f"{file} has {size} bytes, {expected['size']} expected")
        if _sha256(file) != expected["sha256"]:
            raise DamagedBackupError(f"{file} is corrupted (its sha256 differs)")
    return State(path, epoch, step)


class ResumeBackup(keras.callbacks.Callback):
    """Restores `state` when training begins; saves a new state at every interval's end.

    Args:
        backup_dir: the run's `backup/` directory.
        state: the state to resume from (`find_state`), or None to start afresh.
    """

    def __init__(self, backup_dir: str, state: State | None = None):
        super().__init__()
        self.backup_dir = backup_dir
        self.state = state

    def on_train_begin(self, logs: dict | None = None) -> None:
        if self.state is None:
            return
        optimizer = self.model.optimizer
        if optimizer is not None and not optimizer.built:
            # As Keras' BackupAndRestore does: its variables must exist to be loaded.
            optimizer.build(self.model.trainable_variables)
        self.model.load_weights(self.state.weights)
        if optimizer_step(self.model) != self.state.step:
            raise DamagedBackupError(
                f"{self.state.weights}: the optimizer's step is {optimizer_step(self.model)}, "
                f"the backup's manifest says {self.state.step}"
            )

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.state = save_state(self.backup_dir, self.model, epoch + 1, previous=self.state)
