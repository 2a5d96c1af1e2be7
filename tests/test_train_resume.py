"""Exact resume: a run SIGKILLed after its step-20 checkpoint and restarted equals a straight run."""

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
# changes every step, so a wrong restored step shows), 40 steps in intervals of 10.
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
            with open(losses, "a") as f:
                f.write(json.dumps([step, logs["loss"], logs["mlm_loss"], logs["nsp_loss"]]) + "\\n")

    class KillOnceAfterStep20(keras.callbacks.Callback):
        # Runs after kbert's callbacks: the step-20 checkpoint and backup are on disk.
        def on_epoch_end(self, epoch, logs=None):
            marker = os.path.join(run_dir, "killed")
            if int(self.model.optimizer.iterations.numpy()) == 20 and not os.path.exists(marker):
                open(marker, "w").close()
                os.kill(os.getpid(), signal.SIGKILL)

    pretrain(tiny_config(), data, run_dir, callbacks=[RecordLosses(), KillOnceAfterStep20()],
             **{run!r})
""")


class _RecordLosses(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.rows = []

    def on_train_batch_end(self, batch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        self.rows.append([step, logs["loss"], logs["mlm_loss"], logs["nsp_loss"]])


def test_run_killed_after_step_20_resumes_with_the_losses_of_a_straight_run(tmp_path):
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
    assert killed_at[-1] == 20
    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]

    rows = [json.loads(line) for line in losses.read_text().splitlines()]
    resumed = rows[len(killed_at) :]
    # Restarted at step 20: optimizer step restored, then steps 21-40 exactly once.
    assert [r[0] for r in resumed] == list(range(21, 41))
    # Same losses as the straight run (so the same weights, learning rates and batches).
    np.testing.assert_allclose(
        np.array(resumed)[:, 1:], np.array(straight.rows[20:])[:, 1:], atol=1e-4
    )
    np.testing.assert_allclose(
        np.array(rows[:20])[:, 1:], np.array(straight.rows[:20])[:, 1:], atol=1e-4
    )
    final = keras.saving.load_model(str(run_dir / "model.keras"))
    for a, b in zip(final.weights, reference.model.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-4, err_msg=a.path)
    # One history row per interval, the rows of the resumed part appended.
    history = (run_dir / "history.csv").read_text().splitlines()
    assert [line.split(",")[1] for line in history[1:]] == ["10", "20", "30", "40"]
