"""Kill it anywhere: `kbert train` (TensorFlow; JAX over 2 devices), `kbert create-data` and
`kbert export` SIGKILLed at seeded random instants and at each write of the resume state, then run
again with the same command, end as an uninterrupted run does.

Each train chain kills one run directory several times in a row (every rerun resumes from what the
previous kill left), then lets it finish, and compares it with one uninterrupted reference run of
the same backend: history.csv holds every step once with the same numbers, TensorBoard every step
once, and the final weights are the same.
"""

import csv
import glob
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import tiny_config

import kbert
import kbert.train  # noqa: F401  (registers kbert's classes for keras.saving.load_model)
from kbert.callbacks import checkpoint_files
from kbert.cli import main
from kbert.serving_tokenizer import SPECIAL_TOKENS, write_vocab

pytestmark = pytest.mark.tensorflow_only  # every backend runs in the subprocesses

STEPS, INTERVAL = 16, 4
TIMEOUT_SECONDS = 300
SEED = 22  # every random kill instant comes from this seed
METRICS = ("loss", "mlm_loss", "nsp_loss", "mlm_accuracy", "nsp_accuracy", "learning_rate")
BACKENDS = {
    "tensorflow": {"KERAS_BACKEND": "tensorflow"},
    "jax": {
        "KERAS_BACKEND": "jax",
        "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
        "JAX_PLATFORMS": "cpu",
    },
}


def kbert_command(*args):
    return [sys.executable, "-m", "kbert", *map(str, args)]


def environment(backend="tensorflow"):
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **BACKENDS[backend])


def run_until(command, env, kill_when=None, poll=0.0005):
    """Run `command` until it exits, or SIGKILL it as soon as `kill_when()` is true: the return
    code (-9 when killed) and the output."""
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.monotonic() + TIMEOUT_SECONDS
    while process.poll() is None and time.monotonic() < deadline:
        if kill_when is not None and kill_when():
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(poll)
    try:
        output, _ = process.communicate(timeout=TIMEOUT_SECONDS)
    finally:
        process.kill()
    return process.returncode, output


def listdir(path):
    try:
        return set(os.listdir(path))
    except FileNotFoundError:
        return set()


def read_text(path):
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        return None


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A corpus, its vocab (100 tokens: the tiny config's), and the encoder's config file."""
    work = tmp_path_factory.mktemp("kill")
    rng = random.Random(SEED)
    words = [f"w{i}" for i in range(100 - len(SPECIAL_TOKENS))]
    write_vocab(list(SPECIAL_TOKENS) + words, str(work / "vocab.txt"))
    with open(work / "corpus.txt", "w") as f:
        for _ in range(60):
            for _ in range(rng.randint(2, 8)):
                f.write(" ".join(rng.choices(words, k=rng.randint(4, 12))) + "\n")
            f.write("\n")
    tiny_config().to_json_file(str(work / "bert_config.json"))
    return work


def create_data_command(work, out):
    return kbert_command(
        "create-data",
        "--input_file", work / "corpus.txt",
        "--output_file", out / "train",
        "--vocab_file", work / "vocab.txt",
        "--max_seq_length", 16,
        "--max_predictions_per_seq", 3,
        "--dupe_factor", 20,
        "--num_shards", 4,
        "--random_seed", 7,
    )  # fmt: skip


def tree_bytes(directory):
    return {
        os.path.relpath(path, directory): open(path, "rb").read()
        for path in glob.glob(f"{directory}/**", recursive=True)
        if os.path.isfile(path)
    }


@pytest.fixture(scope="module")
def data(work):
    """The training records, made by an uninterrupted `kbert create-data`."""
    code, output = run_until(create_data_command(work, work / "data"), environment())
    assert code == 0, output[-3000:]
    return work / "data"


def train_command(work, data, run, backend):
    return kbert_command(
        "train",
        "--config", work / "bert_config.json",
        "--train_files", data,
        "--output_dir", run,
        "--steps", STEPS,
        "--checkpoint_interval", INTERVAL,
        "--batch_size", 8,
        "--learning_rate", 1e-3,
        "--warmup_steps", 3,
        "--seed", 5,
        "--strategy", "auto" if backend == "jax" else "cpu",
        "--verbose", 0,
    )  # fmt: skip


_references = {}


def reference(work, data, backend):
    """The uninterrupted run of `backend` (one per module)."""
    if backend not in _references:
        run = work / f"reference-{backend}"
        code, output = run_until(train_command(work, data, run, backend), environment(backend))
        assert code == 0, output[-3000:]
        _references[backend] = run
    return _references[backend]


def read_history(run):
    with open(run / "history.csv") as f:
        return list(csv.DictReader(f))


def tensorboard_points(run):
    """[(tag, step)] of every scalar event in logs/train."""
    points = []
    for path in sorted(glob.glob(str(run / "logs" / "train" / "events.out.tfevents.*"))):
        for record in tf.data.TFRecordDataset(path):
            event = tf.compat.v1.Event.FromString(record.numpy())
            points += [(value.tag, event.step) for value in event.summary.value]
    return points


def assert_same_as_reference(run, reference_run):
    history, expected = read_history(run), read_history(reference_run)
    assert [int(r["step"]) for r in history] == list(range(1, STEPS + 1))
    for name in METRICS:
        np.testing.assert_allclose(
            [float(r[name]) for r in history],
            [float(r[name]) for r in expected],
            rtol=1e-4,
            atol=1e-6,
            err_msg=name,
        )
    points = tensorboard_points(run)
    assert sorted(step for tag, step in points if tag == "loss") == list(range(1, STEPS + 1))
    assert len(points) == len(set(points))
    final = keras.saving.load_model(str(run / "model.keras"))
    straight = keras.saving.load_model(str(reference_run / "model.keras"))
    for a, b in zip(final.weights, straight.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-6, err_msg=a.path)
    leftovers = [p for p in glob.glob(f"{run}/**/.tmp-*", recursive=True)]
    assert not leftovers


def new_state_folder(run):
    """True once a backup folder appears that was not there at launch (its weights being
    written)."""
    before = listdir(run / "backup")
    return lambda: any(n.startswith("interval-") for n in listdir(run / "backup") - before)


def new_manifest(run):
    """True once a new backup folder holds its manifest (the pointer is written next)."""
    before = listdir(run / "backup")

    def written():
        new = [n for n in listdir(run / "backup") - before if n.startswith("interval-")]
        return any(os.path.exists(run / "backup" / n / "manifest.json") for n in new)

    return written


def pointer_moved(run):
    """True once current.json names another state (the older folders are deleted next)."""
    before = read_text(run / "backup" / "current.json")
    return lambda: read_text(run / "backup" / "current.json") not in (before, None)


def checkpoint_being_written(run):
    """True once a checkpoint's temporary file appears."""
    before = listdir(run / "checkpoints")
    return lambda: any(n.startswith(".tmp-") for n in listdir(run / "checkpoints") - before)


def at_random_instant(run, rng):
    """True at a random instant of this process's training: a random time (up to 50 ms) after
    it wrote the history row of a random step past the one it resumed from."""
    launched = time.time()
    pointer = read_text(run / "backup" / "current.json")
    target = rng.randint((json.loads(pointer)["step"] if pointer else 0) + 1, STEPS - 1)
    delay = rng.uniform(0.0, 0.05)
    state = {}

    def due():
        if "t" not in state:
            try:
                if os.path.getmtime(run / "history.csv") < launched:
                    return False  # not yet reopened by this process
            except FileNotFoundError:
                return False
            rows = (read_text(run / "history.csv") or "").splitlines()[1:-1]  # last: maybe torn
            if rows and int(rows[-1].split(",")[1]) >= target:
                state["t"] = time.monotonic()
            return False
        return time.monotonic() - state["t"] >= delay

    return due


def kill(command, env, trigger):
    """Run `command` in a fresh process and SIGKILL it once `trigger()` is true."""
    code, output = run_until(command, env, trigger)
    assert code == -signal.SIGKILL, output[-3000:]


def finish(command, env):
    """Run `command` to its end: its output."""
    code, output = run_until(command, env)
    assert code == 0, output[-3000:]
    return output


def kill_then_finish(command, env, triggers, after_kill=lambda: None):
    """Kill `command` once at each trigger (a fresh process each time), then let it finish."""
    for make_trigger in triggers:
        kill(command, env, make_trigger())
        after_kill()
    finish(command, env)


def test_train_killed_at_each_write_of_the_resume_state_ends_as_an_uninterrupted_run(work, data):
    reference_run = reference(work, data, "tensorflow")
    run = work / "writes"
    triggers = [
        lambda: new_state_folder(run),  # the first backup, half written: a fresh start
        lambda: checkpoint_being_written(run),
        lambda: new_manifest(run),
        lambda: pointer_moved(run),  # before the older states are deleted
    ]
    model = kbert.build_pretraining_model(tiny_config(), 16, 3)

    def listed_checkpoints_are_whole():
        # What `--init_from RUN` and the "last good checkpoint" message pick from.
        for path in checkpoint_files(str(run / "checkpoints")):
            model.load_weights(path)

    kill_then_finish(
        train_command(work, data, run, "tensorflow"),
        environment(),
        triggers,
        listed_checkpoints_are_whole,
    )
    assert_same_as_reference(run, reference_run)


def test_train_killed_at_random_instants_then_on_a_rotten_backup_ends_as_an_uninterrupted_run(
    work, data
):
    reference_run = reference(work, data, "tensorflow")
    run = work / "random"
    command, env = train_command(work, data, run, "tensorflow"), environment()
    rng = random.Random(SEED)
    for _ in range(2):
        kill(command, env, at_random_instant(run, rng))
    # Killed once a newer state is current (its predecessor is kept); then its weights rot on disk.
    kill(command, env, pointer_moved(run))
    current = json.loads(read_text(run / "backup" / "current.json"))["state"]
    with open(run / "backup" / current / "model.weights.h5", "r+b") as f:
        f.truncate(100)
    output = finish(command, env)
    assert "falling back to" in output and current in output
    assert_same_as_reference(run, reference_run)


def test_jax_train_on_two_devices_killed_at_writes_and_at_random_ends_as_an_uninterrupted_run(
    work, data
):
    reference_run = reference(work, data, "jax")
    run = work / "jax"
    rng = random.Random(f"{SEED}-jax")
    triggers = [
        lambda: new_manifest(run),
        lambda: at_random_instant(run, rng),
    ]
    kill_then_finish(train_command(work, data, run, "jax"), environment("jax"), triggers)
    assert_same_as_reference(run, reference_run)


def tree_state(directory):
    """Every file's path, bytes' sha256 and modification time."""
    return {
        path: (hashlib.sha256(open(path, "rb").read()).hexdigest(), os.stat(path).st_mtime_ns)
        for path in glob.glob(f"{directory}/**", recursive=True)
        if os.path.isfile(path)
    }


@pytest.mark.parametrize(
    "change, message",
    [
        (("--weight_decay", "0.02"), r"weight_decay: 0.01 -> 0.02"),
        (("--config", "CONFIG"), r"the model's config changed \(hidden_size: 32 -> 48"),
    ],
)
def test_resuming_with_a_changed_setting_fails_in_one_line_and_touches_nothing(
    work, data, tmp_path, capsys, change, message
):
    reference_run = reference(work, data, "tensorflow")
    run = tmp_path / "run"
    shutil.copytree(reference_run, run)
    tiny_config(hidden_size=48).to_json_file(str(tmp_path / "wider.json"))
    argv = train_command(work, data, run, "tensorflow")[3:]  # after `python -m kbert`
    flag, value = change
    value = str(tmp_path / "wider.json") if value == "CONFIG" else value
    if flag in argv:
        argv[argv.index(flag) + 1] = value
    else:
        argv += [flag, value]
    before = tree_state(run)
    # In this process: the check runs before anything starts, a fresh process adds nothing.
    assert main(argv) == 1
    stderr = capsys.readouterr().err
    assert "Traceback" not in stderr
    [line] = [x for x in stderr.splitlines() if x.startswith("kbert train: error: ")]
    assert str(run) in line
    assert re.search(message, line), line
    assert tree_state(run) == before


def test_create_data_killed_while_writing_shards_reruns_to_the_same_bytes(work, data, tmp_path):
    out = tmp_path / "data"
    command = create_data_command(work, out)

    def writing_shards():
        return any(n.startswith("train-") or n.startswith(".") for n in listdir(out))

    code, output = run_until(command, environment(), writing_shards)
    assert code == -signal.SIGKILL, output[-3000:]
    code, output = run_until(command, environment())
    assert code == 0, output[-3000:]
    assert tree_bytes(out) == tree_bytes(data)


def test_export_killed_while_writing_leaves_the_version_complete_or_absent(work, data):
    reference_run = reference(work, data, "tensorflow")
    base = work / "saved_models"
    command = kbert_command(
        "export", "--model", reference_run, "--vocab_file", work / "vocab.txt",
        "--export_base", base, "--name", "bert",
    )  # fmt: skip
    rng = random.Random(SEED)
    delay = rng.uniform(0.0, 1.0)
    seen = {}

    def exporting():
        if "t" not in seen and listdir(base / "bert"):
            seen["t"] = time.monotonic()  # the temporary version folder exists
        return "t" in seen and time.monotonic() - seen["t"] >= delay

    code, output = run_until(command, environment(), exporting)
    assert code == -signal.SIGKILL, output[-3000:]
    versions = [n for n in listdir(base / "bert") if n.isdigit()]
    for version in versions:  # TF Serving only looks at integer-named folders
        tf.saved_model.load(str(base / "bert" / version))
    code, output = run_until(command, environment())
    assert code == 0, output[-3000:]
    # The rerun adds the next version and removes the killed export's temporary folder.
    assert sorted(listdir(base / "bert")) == sorted(versions + [str(len(versions) + 1)])
    tf.saved_model.load(str(base / "bert" / str(len(versions) + 1)))
