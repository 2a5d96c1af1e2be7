"""Exact resume: a run SIGKILLed mid-interval (step 25, its last backup at step 20) and restarted
equals a straight run, and its history.csv holds every step once."""

import csv
import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
from helpers import tiny_config, write_pretraining_records

from kbert.train import pretrain

# The same run, straight or resumed: dropout 0, AdamW with warmup then decay (the learning rate
# changes every step, so a wrong restored step shows), 40 steps in intervals of 10, a history row
# every step (the default log_interval for 40 steps).
RUN = dict(
    steps=40,
    batch_size=8,
    checkpoint_interval=10,
    learning_rate=1e-3,
    warmup_steps=5,
    seed=5,
    verbose=0,
)

CHILD = textwrap.dedent("""
    import json, os, signal, sys
    import keras
    sys.path.insert(0, {tests!r})
    from helpers import tiny_config
    from kbert.train import pretrain

    data, run_dir, losses = sys.argv[1:4]

    class RecordLosses(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            step = int(self.model.optimizer.iterations.numpy())
            row = [step, logs["loss"], logs["mlm_loss"], logs["nsp_loss"]]
            with open(losses, "a") as f:
                f.write(json.dumps(row) + "\\n")

    class KillOnceAtStep25(keras.callbacks.Callback):
        # Runs after kbert's callbacks: the step-20 backup and the history rows up to step 25
        # are on disk.
        def on_train_batch_end(self, batch, logs=None):
            marker = os.path.join(run_dir, "killed")
            if int(self.model.optimizer.iterations.numpy()) == 25 and not os.path.exists(marker):
                open(marker, "w").close()
                os.kill(os.getpid(), signal.SIGKILL)

    pretrain(tiny_config(), data, run_dir, callbacks=[RecordLosses(), KillOnceAtStep25()],
             **{run!r})
""")


class _RecordLosses(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.rows = []

    def on_train_batch_end(self, batch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        self.rows.append([step, logs["loss"], logs["mlm_loss"], logs["nsp_loss"]])


def read_history(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_run_killed_mid_interval_resumes_with_the_losses_and_history_of_a_straight_run(tmp_path):
    data = write_pretraining_records(str(tmp_path / "data"), num_records=40)
    straight = _RecordLosses()
    reference = pretrain(
        tiny_config(), data, str(tmp_path / "straight"), callbacks=[straight], **RUN
    )

    child = tmp_path / "child.py"
    child.write_text(CHILD.format(tests=os.path.dirname(__file__), run=RUN))
    run_dir, losses = tmp_path / "resumed", tmp_path / "losses.jsonl"
    command = [sys.executable, str(child), data, str(run_dir), str(losses)]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    first = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == -9, first.stderr[-3000:]  # killed by SIGKILL
    killed_at = [json.loads(line)[0] for line in losses.read_text().splitlines()]
    assert killed_at[-1] == 25
    assert [int(r["step"]) for r in read_history(run_dir / "history.csv")] == list(range(1, 26))
    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]

    rows = [json.loads(line) for line in losses.read_text().splitlines()]
    resumed = rows[len(killed_at) :]
    # Restarted at step 20 (the backup): optimizer step restored, then steps 21-40.
    assert [r[0] for r in resumed] == list(range(21, 41))
    # Same losses as the straight run (so the same weights, learning rates and batches).
    np.testing.assert_allclose(
        np.array(resumed)[:, 1:], np.array(straight.rows[20:])[:, 1:], atol=1e-4
    )
    np.testing.assert_allclose(
        np.array(rows[:25])[:, 1:], np.array(straight.rows[:25])[:, 1:], atol=1e-4
    )
    final = keras.saving.load_model(str(run_dir / "model.keras"))
    for a, b in zip(final.weights, reference.model.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-4, err_msg=a.path)
    # Every step once (rows 21-25 of the killed run dropped, written again), with the values of
    # the straight run's history.
    history = read_history(run_dir / "history.csv")
    reference_history = read_history(tmp_path / "straight" / "history.csv")
    assert [int(r["step"]) for r in history] == list(range(1, 41))
    for name in ("loss", "mlm_loss", "nsp_loss", "mlm_accuracy", "nsp_accuracy", "learning_rate"):
        np.testing.assert_allclose(
            [float(r[name]) for r in history],
            [float(r[name]) for r in reference_history],
            atol=1e-4,
            err_msg=name,
        )


def test_a_torn_last_history_row_and_rows_past_the_backup_are_dropped_on_resume(tmp_path):
    data = write_pretraining_records(str(tmp_path / "data"), num_records=40)
    settings = dict(RUN, steps=8, checkpoint_interval=4)
    run = tmp_path / "run"
    pretrain(tiny_config(), data, str(run), **settings)
    straight = read_history(run / "history.csv")
    # What a kill can leave: the step-8 state written but not yet current (the pointer still
    # names step 4's), and a row cut short by the kill: "1,1" of a step-1x row reads as step 1.
    backup = run / "backup"
    current = json.loads((backup / "current.json").read_text())
    [previous] = [p.name for p in backup.glob("interval-*") if p.name != current["state"]]
    pointer = {"format": 1, "state": previous, "epoch": 1, "step": 4}
    (backup / "current.json").write_text(json.dumps(pointer))
    with open(run / "history.csv", "a") as f:
        f.write("1,1")
    pretrain(tiny_config(), data, str(run), **settings)
    history = read_history(run / "history.csv")
    assert [int(r["step"]) for r in history] == list(range(1, 9))
    for name in ("loss", "mlm_loss", "nsp_loss", "learning_rate"):
        np.testing.assert_allclose(
            [float(r[name]) for r in history], [float(r[name]) for r in straight], atol=1e-4
        )
