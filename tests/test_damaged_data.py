"""A damaged shard: `kbert train` / `kbert evaluate` stop with one line naming it, or skip what
cannot be read with --skip_corrupt_records and count it."""

import csv
import json
import os
import re
import subprocess
import sys

import pytest
import tensorflow as tf
from helpers import tiny_config, write_metadata

import kbert
from kbert import features
from kbert.cli import main
from kbert.errors import DamagedRecordsError

SEQ_LEN, PREDICTIONS = 8, 1
# Training fills a 10,000-record shuffle buffer before its first step; the reader reaches the
# damage after about 2 x 10,000 records (it alternates between the shards), so intervals finish
# first.
# Records are the same size: an odd count puts the middle of the file inside a record.
INTACT, DAMAGED = 12_000, 20_001


def _examples(seed):
    """Eight distinct serialized records."""
    rows = []
    for i in range(8):
        ids = [2] + [5 + (seed * 8 + i * 13 + j * 7) % 95 for j in range(SEQ_LEN - 2)] + [3]
        rows.append(
            features.to_example(
                {
                    "input_ids": ids,
                    "input_mask": [1] * SEQ_LEN,
                    "segment_ids": [0] * 4 + [1] * 4,
                    "masked_lm_positions": [2],
                    "masked_lm_ids": [ids[2]],
                    "masked_lm_weights": [1.0],
                    "next_sentence_labels": [i % 2],
                }
            ).SerializeToString()
        )
    return rows


def _readable(path):
    """Records TensorFlow's reader returns before the damage."""
    return sum(1 for _ in tf.data.TFRecordDataset(path).ignore_errors())


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Two shards and their kbert_metadata.json; the second is cut to half its bytes."""
    directory = tmp_path_factory.mktemp("data")
    paths = {}
    for name, count, seed in (("a.tfrecord", INTACT, 0), ("b.tfrecord", DAMAGED, 1)):
        paths[name] = str(directory / name)
        examples = _examples(seed)
        with tf.io.TFRecordWriter(paths[name]) as writer:
            for i in range(count):
                writer.write(examples[i % len(examples)])
    write_metadata(directory, {"a.tfrecord": INTACT, "b.tfrecord": DAMAGED}, SEQ_LEN, PREDICTIONS)
    damaged = paths["b.tfrecord"]
    with open(damaged, "r+b") as f:
        f.truncate(os.path.getsize(damaged) // 2)
    with pytest.raises(tf.errors.DataLossError):  # the cut is inside a record
        sum(1 for _ in tf.data.TFRecordDataset(damaged))
    return str(directory), damaged, _readable(damaged)


def kbert_command(*args):
    """`kbert ARGS` in a fresh process: (exit status, stdout, stderr)."""
    done = subprocess.run(
        [sys.executable, "-m", "kbert", *args],
        capture_output=True,
        text=True,
        timeout=600,
    )
    return done.returncode, done.stdout, done.stderr


def train_args(data, run_dir, config, *extra):
    return (
        "train",
        "--config",
        config,
        "--train_files",
        data,
        "--output_dir",
        run_dir,
        "--steps",
        "60",
        "--batch_size",
        "256",
        "--checkpoint_interval",
        "10",
        "--verbose",
        "0",
        *extra,
    )


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("config") / "bert_config.json")
    tiny_config().to_json_file(path)
    return path


def error_lines(stderr, command):
    return [line for line in stderr.splitlines() if line.startswith(f"kbert {command}: error:")]


def in_this_process(capsys, *args):
    """`kbert ARGS` in this process (its one-line error needs no fresh one): (exit status,
    stdout, stderr)."""
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_train_on_a_truncated_shard_stops_with_one_line_naming_it(
    shards, config_file, tmp_path, capsys
):
    data, damaged, readable = shards
    run_dir = str(tmp_path / "run")
    code, stdout, stderr = in_this_process(capsys, *train_args(data, run_dir, config_file))
    assert code == 1, stderr[-3000:]
    assert "Traceback" not in stdout + stderr
    [line] = error_lines(stderr, "train")
    assert f"damaged shard {damaged}: truncated record at " in line
    assert f"after {readable} readable records" in line
    assert "kbert inspect-data" in line and "the same `kbert train` command" in line
    # The checkpoint it names is the newest one, and it loads.
    checkpoint = re.search(r"last finished interval, (\S+\.weights\.h5), ", line).group(1)
    assert checkpoint == sorted(tf.io.gfile.glob(f"{run_dir}/checkpoints/*.weights.h5"))[-1]
    model = kbert.build_pretraining_model(tiny_config(), SEQ_LEN, PREDICTIONS)
    model.load_weights(checkpoint)


def test_train_with_skip_corrupt_records_finishes_and_counts_the_skipped_records(
    shards, config_file, tmp_path
):
    data, damaged, readable = shards
    run_dir = tmp_path / "run"
    code, stdout, stderr = kbert_command(
        *train_args(data, str(run_dir), config_file, "--skip_corrupt_records")
    )
    assert code == 0, stderr[-3000:]
    assert (run_dir / "model.keras").exists()
    # 60 steps x 256 read the damaged shard once (to its damage), the intact one once.
    skipped = DAMAGED - readable
    assert f"{skipped} unreadable record(s) skipped in this run" in stderr
    assert f"skipped {skipped} unreadable record(s) of damaged shard {damaged}" in stderr
    with open(run_dir / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert sum(int(r["skipped_records"]) for r in rows) == skipped


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    model = kbert.build_pretraining_model(tiny_config(), SEQ_LEN, PREDICTIONS)
    kbert.compile_for_pretraining(model)
    path = str(tmp_path_factory.mktemp("model") / "model.keras")
    model.save(path)
    return path


def test_evaluate_on_a_truncated_shard_stops_with_one_line_naming_it(shards, model_file, capsys):
    data, damaged, _ = shards
    code, stdout, stderr = in_this_process(
        capsys, "evaluate", "--model", model_file, "--eval_files", data, "--batch_size", "1024"
    )
    assert code == 1, stderr[-3000:]
    assert "Traceback" not in stdout + stderr
    [line] = error_lines(stderr, "evaluate")
    assert f"damaged shard {damaged}: truncated record at " in line
    assert "kbert inspect-data" in line and "--skip_corrupt_records" in line


def test_evaluate_with_skip_corrupt_records_evaluates_the_readable_records(shards, model_file):
    data, damaged, readable = shards
    code, stdout, stderr = kbert_command(
        "evaluate",
        "--model",
        model_file,
        "--eval_files",
        data,
        "--batch_size",
        "1024",
        "--verbose",
        "0",
        "--skip_corrupt_records",
    )
    assert code == 0, stderr[-3000:]
    results = json.loads(stdout)
    assert results["num_sequences"] == INTACT + readable
    assert results["skipped_records"] == DAMAGED - readable
    assert damaged in stderr  # the warning naming the shard


def test_fit_on_pretraining_dataset_raises_a_kbert_error_naming_the_shard(shards):
    data, damaged, _ = shards
    model = kbert.build_pretraining_model(tiny_config(), SEQ_LEN, PREDICTIONS)
    kbert.compile_for_pretraining(model)
    with pytest.raises(DamagedRecordsError, match=re.escape(damaged)) as raised:
        with kbert.name_damaged_shards(data):
            model.fit(kbert.pretraining_dataset(data, 256, seed=0), steps_per_epoch=100, verbose=0)
    assert raised.value.damaged == [damaged]
