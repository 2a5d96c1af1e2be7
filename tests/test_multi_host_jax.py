"""A JAX run of several processes: two `kbert train` processes on 127.0.0.1 (the multi-host proxy).

Each process runs the same command with Keras' `KERAS_DISTRIBUTION_*` variables (its own process
id) in its own working directory, where the training shard of the other process is not a TFRecord
file: a process that opened it would fail. The reference is one process over two CPU devices
reading both real shards. Every shard holds half a global batch, so every global step of either
run is the same 8 records (in some order; the losses are sums over the batch). After training,
the same two processes run `kbert finetune` of tests/finetune_task.py's task (a process start
costs more than the fine-tuning), compared with one TensorFlow device.
"""

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time

import h5py
import numpy as np
import pytest
import tensorflow as tf
from finetune_task import assert_same_predictions, flags, read_results
from helpers import tiny_config, write_metadata, write_pretraining_records, write_records

from kbert import cli
from kbert.backup import find_state
from kbert.data import pretraining_dataset
from kbert.distribute import initialize_distribution

pytest.importorskip("jax")

STEPS, INTERVAL, GLOBAL_BATCH, SEED = 4, 2, 8, 3
SHARDS = ("shard-00000.tfrecord", "shard-00001.tfrecord")
NOT_A_SHARD = "not this process's shard: it must never open this file\n"
TIMEOUT_SECONDS = 300
VARIABLES = (
    "KERAS_DISTRIBUTION_JOB_ADDRESSES",
    "KERAS_DISTRIBUTION_NUM_PROCESSES",
    "KERAS_DISTRIBUTION_PROCESS_ID",
)
METRICS = ("loss", "mlm_loss", "nsp_loss", "mlm_accuracy", "nsp_accuracy")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_data(work):
    """`full/data` (both shards), `process-<p>/data` (shard p real, the other not a TFRecord
    file), the held-out set `eval` (5 records: padding, and one record more on process 0)."""
    source = write_pretraining_records(str(work / "source"), num_records=GLOBAL_BATCH)
    records = list(tf.data.TFRecordDataset(os.path.join(source, SHARDS[0])).as_numpy_iterator())
    half = GLOBAL_BATCH // 2
    for view, real in (("full", (0, 1)), ("process-0", (0,)), ("process-1", (1,))):
        data = work / view / "data"
        data.mkdir(parents=True)
        for index, name in enumerate(SHARDS):
            if index in real:
                write_records(data / name, records[index * half : (index + 1) * half])
            else:
                (data / name).write_text(NOT_A_SHARD)
        write_metadata(
            data,
            {name: half for name in SHARDS},
            16,
            3,
            nsp_label_counts={"0": half, "1": half},
            num_masked_predictions=GLOBAL_BATCH * 3,
        )
    write_pretraining_records(str(work / "eval"), num_records=5, seed=1)
    tiny_config().to_json_file(str(work / "bert_config.json"))


def train_args(work, output_dir):
    return [
        "--config",
        str(work / "bert_config.json"),
        "--train_files",
        "data",  # relative: each process's own view of the shards
        "--output_dir",
        str(output_dir),
        "--steps",
        str(STEPS),
        "--checkpoint_interval",
        str(INTERVAL),
        "--log_interval",
        "1",
        "--batch_size",
        str(GLOBAL_BATCH),
        "--seed",
        str(SEED),
        "--learning_rate",
        "0.01",
        "--warmup_steps",
        "0",
        "--eval_files",
        str(work / "eval"),
        "--verbose",
        "0",
    ]


def environment(devices, process=None, port=None):
    env = {k: v for k, v in os.environ.items() if k not in VARIABLES}
    env.update(
        KERAS_BACKEND="jax",
        JAX_PLATFORMS="cpu",
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
        TF_CPP_MIN_LOG_LEVEL="2",
    )
    if process is not None:
        env.update(
            KERAS_DISTRIBUTION_JOB_ADDRESSES=f"127.0.0.1:{port}",
            KERAS_DISTRIBUTION_NUM_PROCESSES="2",
            KERAS_DISTRIBUTION_PROCESS_ID=str(process),
        )
    return env


class Processes:
    """Subprocesses started together, each logging to its own file; all killed on the way out."""

    def __init__(self, work, name, launches):
        self.logs = [work / f"{name}-{i}.log" for i in range(len(launches))]
        self.processes = []
        for (command, cwd, env), log in zip(launches, self.logs):
            with open(log, "w") as out:
                self.processes.append(
                    subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=out)
                )

    def wait(self, deadline):
        for process in self.processes:
            process.wait(timeout=max(1, deadline - time.monotonic()))
        return [p.returncode for p in self.processes]

    def output(self):
        return "\n".join(f"--- {log.name}\n{log.read_text()[-3000:]}" for log in self.logs)

    def kill(self):
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait()


def two_processes(work, name, command, output_dir, devices=2):
    port = free_port()
    return Processes(
        work,
        name,
        [
            (
                command + train_args(work, output_dir),
                work / f"process-{p}",
                environment(devices, p, port),
            )
            for p in (0, 1)
        ],
    )


def run_to_the_end(*groups):
    deadline = time.monotonic() + TIMEOUT_SECONDS
    try:
        for group in groups:
            assert group.wait(deadline) == [0] * len(group.processes), group.output()
    finally:
        for group in groups:
            group.kill()


# The killed run: `kbert train`'s own flags, parked (SIGSTOP) once this process's step-2
# checkpoint and backup are written; the test then kills both processes with SIGKILL.
PARKED_CHILD = textwrap.dedent("""
    import os, signal, sys
    import keras
    from kbert.cli import build_parser
    from kbert.pretrain_config import PretrainConfig
    from kbert.train import pretrain

    marker, argv = sys.argv[1], sys.argv[2:]

    class ParkAfterTheFirstInterval(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):  # after kbert's callbacks
            if epoch == 0:
                open(marker, "w").close()
                os.kill(os.getpid(), signal.SIGSTOP)

    args = vars(build_parser("train").parse_args(["train", *argv]))
    settings = {k: v for k, v in args.items() if k not in ("command", "verbose")}
    pretrain(PretrainConfig(**settings), callbacks=[ParkAfterTheFirstInterval()], verbose=0)
""")


def kill_both_after_the_first_interval(work, output_dir):
    child = work / "parked_child.py"
    child.write_text(PARKED_CHILD)
    markers = [work / f"parked-{p}" for p in (0, 1)]
    port = free_port()
    group = Processes(
        work,
        "killed",
        [
            (
                [sys.executable, str(child), str(markers[p])] + train_args(work, output_dir),
                work / f"process-{p}",
                environment(2, p, port),
            )
            for p in (0, 1)
        ],
    )
    deadline = time.monotonic() + TIMEOUT_SECONDS
    try:
        while not all(m.exists() for m in markers):
            exited = [p.poll() for p in group.processes]
            assert exited == [None, None] and time.monotonic() < deadline, group.output()
            time.sleep(0.2)
        for process in group.processes:
            os.kill(process.pid, signal.SIGKILL)
        assert group.wait(deadline) == [-signal.SIGKILL] * 2, group.output()
    finally:
        group.kill()


# `kbert train` with the arguments after "--then", then `kbert finetune` with those before.
TRAIN_THEN_FINETUNE = textwrap.dedent("""
    import sys
    from kbert.cli import main

    split = sys.argv.index("--then")
    status = main(["train", *sys.argv[split + 1 :]])
    sys.exit(status or main(["finetune", *sys.argv[1:split]]))
""")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, finetune_task):
    """One process over 2 devices ("reference"); 2 processes of 2 devices each ("two"), which
    then fine-tune (into "finetune"); the same 2 processes killed after step 2 ("killed": what
    was on disk then) and rerun ("resumed")."""
    work = tmp_path_factory.mktemp("multi_host_jax")
    write_data(work)
    train = [sys.executable, "-m", "kbert", "train"]
    reference = Processes(
        work,
        "reference",
        [(train + train_args(work, work / "reference"), work / "full", environment(2))],
    )
    child = work / "train_then_finetune.py"
    child.write_text(TRAIN_THEN_FINETUNE)
    finetune = [*flags(finetune_task, str(work / "finetune")), "--strategy=auto", "--then"]
    two = two_processes(work, "two", [sys.executable, str(child), *finetune], work / "two")
    run_to_the_end(reference, two)
    kill_both_after_the_first_interval(work, work / "resumed")
    killed = sorted(
        str(path.relative_to(work / "resumed")) for path in (work / "resumed").rglob("*")
    )
    shutil.copytree(work / "resumed" / "workers" / "process-1" / "backup", work / "backup-step-2")
    run_to_the_end(two_processes(work, "rerun", train, work / "resumed"))
    return work, killed


def history(run_dir):
    with open(run_dir / "history.csv") as f:
        return list(csv.DictReader(f))


def weights(path):
    """Every array of a Keras weights file, by its path inside the file."""
    arrays = {}
    with h5py.File(path, "r") as f:
        f.visititems(
            lambda name, item: (
                arrays.__setitem__(name, item[()]) if isinstance(item, h5py.Dataset) else None
            )
        )
    return arrays


def assert_same_weights(a, b, atol=0.0):
    a, b = weights(a), weights(b)
    assert a.keys() == b.keys() and a
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=0, atol=atol, err_msg=name)


def test_process_0_alone_writes_the_run_directory(runs):
    work, _ = runs
    run = work / "two"
    assert [row["step"] for row in history(run)] == ["1", "2", "3", "4"]  # each step once
    for name in (
        "bert_config.json",
        "run_config.json",
        "model.keras",
        "encoder.weights.h5",
        "eval_results.json",
        "logs",
    ):
        assert (run / name).exists(), name
    assert sorted(os.listdir(run / "workers")) == ["process-1"]
    assert sorted(os.listdir(run / "workers" / "process-1")) == ["backup", "checkpoints"]


def test_two_processes_fine_tune_as_one_tensorflow_device_and_process_0_alone_writes(
    runs, finetune_task, one_device_finetuning
):
    work, _ = runs
    output_dir = work / "finetune"
    difference = assert_same_predictions(str(output_dir), one_device_finetuning, finetune_task)
    print(f"largest dev logit difference, 2 JAX processes against one TF device: {difference:.2e}")
    assert sorted(os.listdir(output_dir)) == [
        "best_model.keras",
        "finetune_results.json",
        "finetune_results.txt",
        "test_predictions.tsv",
    ]
    # Both processes chose the same cell on the same dev scores, over the 4 devices of both.
    best = json.dumps({"best": read_results(str(output_dir))["best"]}, sort_keys=True)
    for log in (work / "two-0.log", work / "two-1.log"):
        lines = log.read_text().splitlines()
        assert [line for line in lines if line.startswith('{"best"')] == [best]
        assert any("DataParallel over 4 devices" in line for line in lines)


def test_every_process_keeps_the_same_checkpoints(runs):
    work, _ = runs
    run = work / "two"
    checkpoints = sorted(os.listdir(run / "checkpoints"))
    assert checkpoints == ["ckpt-0000002.weights.h5", "ckpt-0000004.weights.h5"]
    assert sorted(os.listdir(run / "workers" / "process-1" / "checkpoints")) == checkpoints
    for name in checkpoints:
        assert_same_weights(
            run / "checkpoints" / name, run / "workers" / "process-1" / "checkpoints" / name
        )
    assert_same_weights(
        find_state(str(run / "backup")).weights,
        find_state(str(run / "workers" / "process-1" / "backup")).weights,
    )


def test_two_processes_log_the_losses_of_one_process_over_two_devices(runs):
    work, _ = runs
    two, reference = history(work / "two"), history(work / "reference")
    assert [row["step"] for row in two] == [row["step"] for row in reference]
    for a, b in zip(two, reference):
        for name in METRICS:
            assert float(a[name]) == pytest.approx(float(b[name]), rel=1e-4, abs=1e-6), (
                a["step"],
                name,
            )
    # The weights moved: equal losses at every step are not those of an untrained model.
    assert float(reference[-1]["loss"]) < float(reference[0]["loss"]) - 0.3
    assert_same_weights(
        work / "two" / "checkpoints" / "ckpt-0000004.weights.h5",
        work / "reference" / "checkpoints" / "ckpt-0000004.weights.h5",
        atol=1e-5,
    )


def test_two_processes_evaluate_the_whole_held_out_set_as_one_process(runs):
    work, _ = runs
    two = json.loads((work / "two" / "eval_results.json").read_text())
    reference = json.loads((work / "reference" / "eval_results.json").read_text())
    assert two["num_sequences"] == reference["num_sequences"] == 5
    assert two["step"] == reference["step"] == STEPS
    for name in METRICS:
        assert two[name] == pytest.approx(reference[name], rel=1e-4), name


def test_each_process_opens_only_its_own_shards(runs):
    work, _ = runs
    # The two processes trained (see above) with the other's shard unreadable in their view of
    # the data; reading all of a view's shards fails on that file.
    for process in (0, 1):
        data = str(work / f"process-{process}" / "data")
        with pytest.raises(ValueError, match=SHARDS[1 - process]):
            pretraining_dataset(data, GLOBAL_BATCH, seed=SEED)
        share = tf.distribute.InputContext(2, process, 2)
        x, _, _ = next(
            iter(pretraining_dataset(data, GLOBAL_BATCH, seed=SEED, input_context=share))
        )
        assert x["input_ids"].shape[0] == GLOBAL_BATCH // 2


def shard_rows(shard, count):
    """`count` records of shard `shard`, each with input ids of its own."""
    return [
        {
            "input_ids": [2, 5 + 10 * shard + i, 4, 3],
            "input_mask": [1, 1, 1, 1],
            "segment_ids": [0, 0, 1, 1],
            "masked_lm_positions": [2],
            "masked_lm_ids": [9],
            "masked_lm_weights": [1.0],
            "next_sentence_labels": [i % 2],
        }
        for i in range(count)
    ]


def rows_read(data, process, processes, batches):
    """The input ids of the rows pipeline `process` of `processes` yields in `batches` steps."""
    share = tf.distribute.InputContext(processes, process, processes)
    dataset = pretraining_dataset(str(data), GLOBAL_BATCH, seed=SEED, input_context=share)
    return {int(x["input_ids"][i, 1]) for x, _, _ in dataset.take(batches) for i in range(4)}


def test_three_shards_over_two_processes_are_read_two_and_one(tmp_path):
    # Each process's view holds its own shards; the others are not TFRecord files.
    for process, mine in ((0, (0, 2)), (1, (1,))):
        data = tmp_path / f"process-{process}"
        data.mkdir()
        for shard in range(3):
            path = data / f"shard-{shard}.tfrecord"
            if shard in mine:
                write_records(path, shard_rows(shard, 4))
            else:
                path.write_text(NOT_A_SHARD)
        expected = {5 + 10 * shard + i for shard in mine for i in range(4)}
        assert rows_read(data, process, 2, batches=8) == expected


def test_one_shard_over_two_processes_is_split_by_record(tmp_path):
    write_records(tmp_path / "shard-0.tfrecord", shard_rows(0, 8))
    read = [rows_read(tmp_path, process, 2, batches=1) for process in (0, 1)]
    assert read == [{5, 7, 9, 11}, {6, 8, 10, 12}]


def test_killed_processes_rerun_continue_exactly(runs):
    work, killed = runs
    # Both were killed after step 2: its checkpoint and backup were written, nothing after.
    assert "checkpoints/ckpt-0000002.weights.h5" in killed
    assert "workers/process-1/backup/current.json" in killed
    assert "checkpoints/ckpt-0000004.weights.h5" not in killed and "model.keras" not in killed
    assert history(work / "resumed") == history(work / "two")
    for name in ("checkpoints/ckpt-0000004.weights.h5", "encoder.weights.h5"):
        assert_same_weights(work / "resumed" / name, work / "two" / name)
    assert_same_weights(
        work / "resumed" / "workers" / "process-1" / "checkpoints" / "ckpt-0000004.weights.h5",
        work / "two" / "checkpoints" / "ckpt-0000004.weights.h5",
    )


def test_processes_whose_backups_are_at_different_steps_resume_together_from_the_older(runs):
    work, _ = runs
    # Process 1 stopped before writing its step-4 backup: process 0's is at step 4, its at 2.
    run = work / "disagree"
    shutil.copytree(work / "two", run)
    shutil.rmtree(run / "workers" / "process-1" / "backup")
    shutil.copytree(work / "backup-step-2", run / "workers" / "process-1" / "backup")
    group = two_processes(work, "disagree", [sys.executable, "-m", "kbert", "train"], run)
    try:
        assert group.wait(time.monotonic() + TIMEOUT_SECONDS) == [0, 0], group.output()
    finally:
        group.kill()
    # Steps 3 and 4 ran again on both, from process 0's kept step-2 state: as uninterrupted.
    assert history(run) == history(work / "two")
    assert_same_weights(run / "encoder.weights.h5", work / "two" / "encoder.weights.h5")


def test_one_device_strategy_over_two_processes_is_a_clear_error(runs):
    work, _ = runs
    command = [sys.executable, "-m", "kbert", "train", "--strategy", "cpu"]
    group = two_processes(work, "cpu", command, work / "cpu")
    try:
        assert group.wait(time.monotonic() + TIMEOUT_SECONDS) == [1, 1], group.output()
    finally:
        group.kill()
    for process, log in enumerate(group.logs):
        error = log.read_text().strip().splitlines()[-1]
        assert error.startswith(
            f"kbert train: error: strategy 'cpu' is one device, but this is process {process} of 2"
        ), error


def test_without_the_variables_nothing_is_initialised(monkeypatch):
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert initialize_distribution() is False


@pytest.mark.parametrize(
    "variables, flags, message",
    [
        (
            {"KERAS_DISTRIBUTION_NUM_PROCESSES": "2", "KERAS_DISTRIBUTION_PROCESS_ID": "2"},
            [],
            "KERAS_DISTRIBUTION_PROCESS_ID (2) must be below KERAS_DISTRIBUTION_NUM_PROCESSES (2)",
        ),
        ({}, ["--num_processes", "2", "--process_id", "3"], "process_id (3) must be below"),
        ({"KERAS_DISTRIBUTION_PROCESS_ID": "one"}, [], "KERAS_DISTRIBUTION_PROCESS_ID must be an"),
        (
            {"KERAS_DISTRIBUTION_JOB_ADDRESSES": "10.0.0.1:1234,10.0.0.2:1234"},
            ["--num_processes", "3", "--process_id", "0"],
            "lists 2 addresses but num_processes is 3",
        ),
    ],
)
def test_inconsistent_settings_are_one_line_errors(
    monkeypatch, capsys, tmp_path, variables, flags, message
):
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    argv = ["train", "--config", "tiny", "--train_files", str(tmp_path), "--output_dir"]
    argv += [str(tmp_path / "run"), "--steps", "2", *flags]
    assert cli.main(argv) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("kbert train: error: ") and message in error, error


@pytest.mark.tensorflow_only
def test_the_variables_under_the_tensorflow_backend_are_an_error(monkeypatch):
    monkeypatch.setenv("KERAS_DISTRIBUTION_JOB_ADDRESSES", "127.0.0.1:1234")
    monkeypatch.setenv("KERAS_DISTRIBUTION_NUM_PROCESSES", "2")
    monkeypatch.setenv("KERAS_DISTRIBUTION_PROCESS_ID", "0")
    with pytest.raises(ValueError, match="KERAS_BACKEND=jax"):
        initialize_distribution()
