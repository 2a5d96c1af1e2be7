"""kbert's training callbacks and the run-directory files they write.

At every interval's end (a Keras epoch of `checkpoint_interval` updates), in this order: stop on a
non-finite loss, add the step and learning rate to the logs, write the resume backup, a weight
checkpoint (the newest `keep_checkpoints` are kept), a history.csv row and TensorBoard scalars.
"""

from __future__ import annotations

import math
import posixpath

import keras
import tensorflow as tf

from kbert.evaluation import METRICS
from kbert.optimization import optimizer_step

BACKUP_DIR = "backup"
CHECKPOINT_DIR = "checkpoints"
HISTORY_FILE = "history.csv"
TENSORBOARD_DIR = "logs"
# history.csv: "epoch" (Keras' interval index), then these.
HISTORY_COLUMNS = ("step", *METRICS, "learning_rate", *(f"val_{m}" for m in METRICS))


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; training stopped before the next checkpoint."""


class _StepLogs(keras.callbacks.Callback):
    """Adds `step` (optimizer updates so far) and `learning_rate` to each interval's logs."""

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if logs is not None:
            logs["step"] = optimizer_step(self.model)
            logs["learning_rate"] = float(self.model.optimizer.learning_rate)


class _StopOnNonFiniteLoss(keras.callbacks.TerminateOnNaN):
    """Raises `TrainingDivergedError` at the first non-finite loss, before anything is saved.

    Raising (rather than Keras' stop flag) keeps the interval's end from running, so neither the
    backup nor a weight checkpoint is overwritten with the diverged state.
    """

    def __init__(self, output_dir: str):
        super().__init__(raise_error=False)
        self.output_dir = output_dir

    def on_batch_end(self, batch: int, logs: dict | None = None) -> None:
        loss = (logs or {}).get("loss")
        if loss is None or math.isfinite(float(loss)):
            return
        step = optimizer_step(self.model)
        checkpoints = checkpoint_files(posixpath.join(self.output_dir, CHECKPOINT_DIR))
        last_good = checkpoints[-1] if checkpoints else "none yet"
        raise TrainingDivergedError(
            f"training stopped: the loss became {float(loss)} by step {step}. "
            f"Last good checkpoint: {last_good}; re-running the same command resumes from "
            f"the backup in {posixpath.join(self.output_dir, BACKUP_DIR)} (lower the learning "
            "rate or check the data first)"
        )


class _LastCheckpoints(keras.callbacks.ModelCheckpoint):
    """ModelCheckpoint of weights that keeps only the newest `keep` files."""

    def __init__(self, directory: str, keep: int):
        super().__init__(
            posixpath.join(directory, "ckpt-{step:07d}.weights.h5"),
            save_weights_only=True,
            save_freq="epoch",
        )
        self.directory = directory
        self.keep = keep

    def _save_model(self, epoch, batch, logs):
        super()._save_model(epoch, batch, logs)
        for stale in checkpoint_files(self.directory)[: -self.keep]:
            tf.io.gfile.remove(stale)


class _History(keras.callbacks.CSVLogger):
    """CSVLogger with fixed columns (HISTORY_COLUMNS); intervals without evaluation leave the
    `val_*` cells empty (Keras writes "NA", which is not a number)."""

    def __init__(self, path: str):
        super().__init__(path, append=True)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        self.keys = list(HISTORY_COLUMNS)
        super().on_epoch_end(epoch, {key: logs.get(key, "") for key in HISTORY_COLUMNS})


class _TensorBoard(keras.callbacks.TensorBoard):
    """TensorBoard scalars against the optimizer step (Keras plots them against the interval)."""

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        super().on_epoch_end(int(logs["step"]) if logs and "step" in logs else epoch, logs)


def checkpoint_files(directory: str) -> list[str]:
    """Weight checkpoints in `directory`, oldest first (the step is zero-padded in the name).

    Args:
        directory: a run's `checkpoints/` directory.

    Examples:
    >>> checkpoint_files("no_run/checkpoints")
    []
    """
    return sorted(tf.io.gfile.glob(posixpath.join(directory, "ckpt-*.weights.h5")))


def training_callbacks(output_dir: str, keep_checkpoints: int) -> list[keras.callbacks.Callback]:
    """kbert's callbacks, in the order they must run at each interval's end.

    Args:
        output_dir: the run directory.
        keep_checkpoints: weight checkpoints kept in `checkpoints/`.

    Examples:
    >>> [type(c).__name__ for c in training_callbacks("run", 3)][:3]
    ['_StopOnNonFiniteLoss', '_StepLogs', 'BackupAndRestore']
    """
    return [
        _StopOnNonFiniteLoss(output_dir),
        _StepLogs(),
        # Epoch ends only: a mid-epoch backup restores to the epoch's start (Keras ignores the
        # saved batch), which would replay batches; intervals are epochs for that reason.
        keras.callbacks.BackupAndRestore(
            posixpath.join(output_dir, BACKUP_DIR),
            save_freq="epoch",
            double_checkpoint=True,
            delete_checkpoint=False,
        ),
        _LastCheckpoints(posixpath.join(output_dir, CHECKPOINT_DIR), keep_checkpoints),
        _History(posixpath.join(output_dir, HISTORY_FILE)),
        _TensorBoard(posixpath.join(output_dir, TENSORBOARD_DIR)),
    ]
