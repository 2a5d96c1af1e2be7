"""kbert's training callbacks and the run-directory files they write.

Training runs in intervals (a Keras epoch of `checkpoint_interval` updates). After each batch, a
non-finite loss stops training; every `log_interval` updates a history.csv row and TensorBoard
scalars are written. At every interval's end, in this order: add the step and learning rate to
the logs, write the interval's last row (with the `val_*` of an evaluation), the resume backup
and a weight checkpoint (the newest `keep_checkpoints` are kept).

A history row holds the means over the updates since the previous row: Keras' logged metrics
are running means since their last reset, so the metrics are reset after every row (the
progress bar shows the same window means). Rows are written before the backup: a run resumed from
the backup drops the rows past its step, and the TensorBoard events past it, so none is written
twice (a torn last row of a killed run is dropped too). Checkpoints are written under a temporary
name and renamed when complete (`kbert.io.atomic_path`), so a listed checkpoint is never torn.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import posixpath

import keras
import tensorflow as tf

from kbert.backup import ResumeBackup, State
from kbert.data import SkippedRecords
from kbert.errors import KbertError
from kbert.evaluation import METRICS
from kbert.io import atomic_path, write_atomically
from kbert.optimization import optimizer_step

logger = logging.getLogger(__name__)

BACKUP_DIR = "backup"
CHECKPOINT_DIR = "checkpoints"
HISTORY_FILE = "history.csv"
TENSORBOARD_DIR = "logs"
# history.csv: "epoch" (Keras' interval index), then these.
HISTORY_COLUMNS = (
    "step",
    *METRICS,
    "learning_rate",
    *(f"val_{m}" for m in METRICS),
    "skipped_records",
)


class TrainingDivergedError(KbertError):
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


class _StopAtLastStep(keras.callbacks.Callback):
    """Ends training after `total_steps` updates: the last interval is shorter when the
    checkpoint interval does not divide the steps (Keras' epochs are all the same length)."""

    def __init__(self, total_steps: int, updates_per_interval: int, batches_per_update: int):
        super().__init__()
        self.total_steps = total_steps
        self.batches_per_interval = updates_per_interval * batches_per_update
        self.batches_per_update = batches_per_update

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._first_batch = epoch * self.batches_per_interval

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if (self._first_batch + batch + 1) // self.batches_per_update >= self.total_steps:
            self.model.stop_training = True


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
        # Keras' ModelCheckpoint writes the final name in place: a kill would leave a torn file.
        tf.io.gfile.makedirs(self.directory)
        with atomic_path(self._get_file_path(epoch, batch, logs)) as tmp:
            self.model.save_weights(tmp, overwrite=True)
        for stale in checkpoint_files(self.directory)[: -self.keep]:
            tf.io.gfile.remove(stale)


class _MetricRows(keras.callbacks.Callback):
    """history.csv rows and TensorBoard scalars every `log_interval` updates and at every
    interval's end (see the module docstring for what a row means).

    The step is counted from the batch index, so the model (on JAX: its state) is only read when
    a row is written. Without `output_dir` nothing is written, but the metrics are reset at the
    same steps (every JAX process must hold the same metric state).
    """

    def __init__(
        self,
        output_dir: str | None,
        log_interval: int,
        updates_per_interval: int,
        batches_per_update: int,
        skipped_records: SkippedRecords | None,
        total_steps: int | None = None,
    ):
        super().__init__()
        self.total_steps = total_steps
        self.path = posixpath.join(output_dir, HISTORY_FILE) if output_dir else None
        self.logs_dir = posixpath.join(output_dir, TENSORBOARD_DIR) if output_dir else None
        self.log_interval = log_interval
        self.updates_per_interval = updates_per_interval
        self.batches_per_update = batches_per_update
        self.skipped_records = skipped_records
        self._file = None
        self._opened = False
        self._writers: dict[str, tf.summary.SummaryWriter] = {}

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._interval_start = epoch * self.updates_per_interval
        self._last_row = self._interval_start
        if not self._opened:  # the first interval of this call: resumed at its start
            self._open(self._interval_start)

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if (batch + 1) % self.batches_per_update:
            return
        step = self._interval_start + (batch + 1) // self.batches_per_update
        if step // self.log_interval == self._last_row // self.log_interval:
            return
        if step == self._interval_end(self._interval_start // self.updates_per_interval):
            return  # the interval's end writes this row, with its evaluation
        self._write(step, logs or {})
        self.model.reset_metrics()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self._write(self._interval_end(epoch), logs or {})
        if self.skipped_records is not None:
            logger.info(
                "step %d: %d unreadable record(s) skipped in this interval, %d in total",
                self._interval_end(epoch),
                self._skipped_at_row - self._skipped_at_interval,
                self._skipped_at_row,
            )
        self._skipped_at_interval = self._skipped_at_row
        for writer in self._writers.values():
            writer.flush()

    def on_train_end(self, logs: dict | None = None) -> None:
        self.close()

    def _interval_end(self, epoch: int) -> int:
        """The step interval `epoch` ends at (the last interval may be shorter)."""
        end = (epoch + 1) * self.updates_per_interval
        return min(end, self.total_steps) if self.total_steps else end

    def close(self) -> None:
        """Close history.csv and the TensorBoard writers (also when training stopped by an error,
        where Keras calls no `on_train_end`), so every row and scalar written is readable."""
        self._opened = False
        if self._file is not None:
            self._file.close()
            self._file = None
        for writer in self._writers.values():
            writer.close()
        self._writers = {}

    def _open(self, restored_step: int) -> None:
        """Keep the rows up to `restored_step` (a killed run may have written later ones), then
        append."""
        self._opened = True
        self._skipped_at_row = self._skipped_at_interval = self._skipped_now
        if self.path is None:
            return
        kept = []
        if tf.io.gfile.exists(self.path):
            with tf.io.gfile.GFile(self.path, "r") as f:
                lines = f.read().splitlines(keepends=True)
            if lines and not lines[-1].endswith("\n"):
                lines.pop()  # a row torn by a kill
            kept = [
                row
                for row in csv.DictReader(lines)
                if None not in row.values()
                and row.get("step")
                and float(row["step"]) <= restored_step
            ]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, ("epoch", *HISTORY_COLUMNS), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(kept)
        write_atomically(self.path, buffer.getvalue())
        self._file = tf.io.gfile.GFile(self.path, "a")
        self._csv = csv.DictWriter(self._file, ("epoch", *HISTORY_COLUMNS), extrasaction="ignore")
        for name in ("train", "validation"):
            _drop_events_after(posixpath.join(self.logs_dir, name), restored_step)
            self._writers[name] = tf.summary.create_file_writer(posixpath.join(self.logs_dir, name))

    @property
    def _skipped_now(self) -> int:
        return self.skipped_records.total() if self.skipped_records is not None else 0

    def _write(self, step: int, logs: dict) -> None:
        now = self._skipped_now
        skipped, self._skipped_at_row = now - self._skipped_at_row, now
        self._last_row = step
        if self.path is None:
            return
        row = {name: float(logs[name]) for name in HISTORY_COLUMNS if name in logs}
        row["learning_rate"] = float(self.model.optimizer.learning_rate)
        if self.skipped_records is not None:
            row["skipped_records"] = skipped
        self._csv.writerow(
            {
                "epoch": (step - 1) // self.updates_per_interval,
                "step": step,
                **{k: v for k, v in row.items() if k != "step"},
            }
        )
        # Flushed row by row: a killed run keeps its rows (a resume drops those past its backup).
        self._file.flush()
        for name, value in row.items():
            if name == "step":
                continue
            writer = self._writers["validation" if name.startswith("val_") else "train"]
            with writer.as_default():
                tf.summary.scalar(name.removeprefix("val_"), value, step=step)


def _drop_events_after(directory: str, step: int) -> None:
    """Rewrite the TensorBoard event files in `directory` without the events past `step`: a
    resumed run writes those steps again. A record torn by a kill is dropped too."""
    for path in tf.io.gfile.glob(posixpath.join(directory, "events.out.tfevents.*")):
        events, torn = [], False
        try:
            for record in tf.data.TFRecordDataset(path):
                events.append(record.numpy())
        except tf.errors.DataLossError:
            torn = True
        kept = [e for e in events if tf.compat.v1.Event.FromString(e).step <= step]
        if torn or len(kept) < len(events):
            with atomic_path(path) as tmp, tf.io.TFRecordWriter(tmp) as writer:
                for event in kept:
                    writer.write(event)


def checkpoint_files(directory: str) -> list[str]:
    """Weight checkpoints in `directory`, oldest first (the step is zero-padded in the name).

    Args:
        directory: a run's `checkpoints/` directory.

    Examples:
    >>> checkpoint_files("no_run/checkpoints")
    []
    """
    return sorted(tf.io.gfile.glob(posixpath.join(directory, "ckpt-*.weights.h5")))


def training_callbacks(
    output_dir: str,
    keep_checkpoints: int,
    log_interval: int = 1,
    updates_per_interval: int = 1,
    batches_per_update: int = 1,
    skipped_records: SkippedRecords | None = None,
    history: bool = True,
    resume_state: State | None = None,
    total_steps: int | None = None,
) -> list[keras.callbacks.Callback]:
    """kbert's callbacks, in the order they must run at each interval's end.

    Args:
        output_dir: the run directory.
        keep_checkpoints: weight checkpoints kept in `checkpoints/`.
        log_interval: updates between history rows.
        updates_per_interval: optimizer updates per Keras epoch (`checkpoint_interval`).
        batches_per_update: batches per optimizer update (gradient accumulation).
        skipped_records: the training pipeline's count of unreadable records, if it skips them.
        history: write history.csv and TensorBoard scalars (False: a process that does not
            write the run's files resets the metrics at the same steps, and writes nothing).
        resume_state: the backup to restore when training begins (`kbert.backup.find_state`).
        total_steps: the run's updates, when the last interval is shorter than the others.

    Examples:
    >>> [type(c).__name__ for c in training_callbacks("run", 3)][:4]
    ['_StopOnNonFiniteLoss', '_StepLogs', '_MetricRows', 'ResumeBackup']
    """
    return [
        _StopOnNonFiniteLoss(output_dir),
        _StepLogs(),
        _MetricRows(
            output_dir if history else None,
            log_interval,
            updates_per_interval,
            batches_per_update,
            skipped_records,
            total_steps,
        ),
        # Backups at interval (epoch) ends only: fit resumes at an epoch's start.
        ResumeBackup(posixpath.join(output_dir, BACKUP_DIR), resume_state),
        _LastCheckpoints(posixpath.join(output_dir, CHECKPOINT_DIR), keep_checkpoints),
    ] + (
        [_StopAtLastStep(total_steps, updates_per_interval, batches_per_update)]
        if total_steps and total_steps % updates_per_interval
        else []
    )
