"""`kbert train` and `kbert evaluate`: flags named like the Python API, errors as one line."""

import collections
import csv
import dataclasses
import glob
import json
import os
import re
import subprocess
import sys

import pytest
import tensorflow as tf
from helpers import tiny_config, write_pretraining_records

from kbert.cli import build_parser, main
from kbert.pretrain_config import PretrainConfig


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_every_flag_is_explained_in_help(command):
    parser = build_parser(command)
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    for action in sub._actions:
        if action.dest != "help":
            assert action.help and len(action.help) > 10, action.dest


def test_train_flags_are_pretrain_config_fields_in_both_spellings():
    parser = build_parser("train")
    args = parser.parse_args(
        [
            "train",
            "--config",
            "mini",
            "--train-files",
            "a",
            "--output_dir",
            "b",
            "--steps",
            "4",
            "--batch-size",
            "8",
            "--jit-compile",
            "true",
            "--mixed_precision",
            "bf16",
        ]
    )
    arguments = {k: v for k, v in vars(args).items() if k != "command"}
    assert arguments["batch_size"] == 8 and arguments["jit_compile"] is True
    fields = {f.name for f in dataclasses.fields(PretrainConfig)}
    assert set(arguments) == fields | {"verbose"}


def test_every_pretrain_config_field_is_a_train_flag_with_its_default_and_help():
    parser = build_parser("train")
    sub = next(a for a in parser._actions if a.dest == "command").choices["train"]
    actions = {}
    for action in sub._actions:  # a boolean flag's first action; its negations come after it
        actions.setdefault(action.dest, action)
    for field in dataclasses.fields(PretrainConfig):
        action = actions[field.name]
        assert f"--{field.name.replace('_', '-')}" in action.option_strings, field.name
        assert field.metadata["help"].replace("%", "%%") in action.help, field.name
        if field.default is dataclasses.MISSING:
            assert action.required, field.name
        else:
            assert action.default == field.default, field.name
        assert action.choices == field.metadata["choices"], field.name
    help_text = sub.format_help()
    for field in dataclasses.fields(PretrainConfig):
        assert f"--{field.name}" in help_text, field.name


def test_kbert_train_then_kbert_evaluate_on_the_run_directory(tmp_path, capsys):
    data = write_pretraining_records(str(tmp_path / "data"), num_records=24)
    config = tmp_path / "bert_config.json"
    tiny_config().to_json_file(str(config))
    run = tmp_path / "run"
    code = main(
        [
            "train",
            "--config",
            str(config),
            "--train-files",
            data,
            "--eval-files",
            data,
            "--output-dir",
            str(run),
            "--steps",
            "4",
            "--batch-size",
            "8",
            "--checkpoint-interval",
            "2",
            "--verbose",
            "0",
        ]
    )
    assert code == 0
    trained = json.loads((run / "eval_results.json").read_text())
    (run / "eval_results.json").unlink()
    assert (
        main(
            [
                "evaluate",
                "--model",
                str(run),
                "--eval-files",
                data,
                "--batch-size",
                "5",
                "--verbose",
                "0",
            ]
        )
        == 0
    )
    evaluated = json.loads((run / "eval_results.json").read_text())
    for name in ("mlm_loss", "mlm_accuracy", "nsp_loss", "nsp_accuracy"):
        assert evaluated[name] == pytest.approx(trained[name], abs=1e-5), name
    assert evaluated["mlm_perplexity"] == pytest.approx(trained["mlm_perplexity"], rel=1e-5)
    assert '"mlm_perplexity"' in capsys.readouterr().out


def test_bad_flag_values_end_in_one_error_line(tmp_path, capsys):
    code = main(
        [
            "train",
            "--config",
            "tiny",
            "--train-files",
            str(tmp_path),
            "--output-dir",
            str(tmp_path / "run"),
            "--steps",
            "10",
            "--checkpoint-interval",
            "30",
        ]
    )
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == ("kbert train: error: checkpoint_interval (30) must be at most steps (10)")
    assert (
        main(["evaluate", "--model", str(tmp_path / "nothing"), "--eval-files", str(tmp_path)]) == 1
    )
    assert "model.keras" in capsys.readouterr().err


def test_cli_strategies_are_resolve_strategy_kinds():
    # The CLI repeats the list so that parsing flags imports no TensorFlow: it must not drift.
    from kbert.distribute import STRATEGY_KINDS
    from kbert.pretrain_config import STRATEGIES

    assert STRATEGIES == STRATEGY_KINDS


def test_train_with_default_intervals_writes_a_history_row_per_step_of_a_short_run(
    tmp_path, capsys
):
    data = write_pretraining_records(str(tmp_path / "data"), num_records=24)
    config = tmp_path / "bert_config.json"
    tiny_config().to_json_file(str(config))
    run = tmp_path / "run"
    args = ["--config", str(config), "--train-files", data, "--output-dir", str(run)]
    code = main(["train", *args, "--steps", "120", "--batch-size", "8", "--verbose", "0"])
    assert code == 0
    with open(run / "history.csv") as f:
        rows = list(csv.DictReader(f))
    # One checkpoint interval of 120 updates, but ~100 rows per run (here: one per update).
    assert [int(r["step"]) for r in rows] == list(range(1, 121))
    assert len(list((run / "checkpoints").iterdir())) == 1
    assert main(["plot", str(run)]) == 0


def test_a_nan_stop_leaves_readable_tensorboard_scalars_up_to_the_failing_step(tmp_path):
    # A real `kbert train` process: plain SGD without clipping at learning rate 100 makes the
    # weights grow geometrically until the loss is NaN, a few updates in (step 7 here), inside
    # the first interval (so no interval end has written or flushed anything yet).
    data = write_pretraining_records(str(tmp_path / "data"), num_records=64)
    config, run = tmp_path / "bert_config.json", tmp_path / "run"
    tiny_config().to_json_file(str(config))
    flags = {
        "config": config, "train_files": data, "output_dir": run, "steps": 8, "batch_size": 8,
        "checkpoint_interval": 8, "warmup_steps": 0, "optimizer": "sgd", "clip_norm": 0,
        "learning_rate": 100, "verbose": 0,
    }  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "kbert", "train", *(f"--{k}={v}" for k, v in flags.items())],
        capture_output=True,
        text=True,
        env=dict(os.environ, KERAS_BACKEND="tensorflow"),
        timeout=300,
    )
    assert done.returncode == 1, done.stderr[-3000:]
    failed = int(
        re.search(r"error: training stopped: the loss became nan by step (\d+)", done.stderr)[1]
    )
    assert failed > 2, done.stderr[-3000:]
    with open(run / "history.csv") as f:
        rows = {int(row["step"]): row for row in csv.DictReader(f)}
    assert sorted(rows) == list(range(1, failed))
    scalars = collections.defaultdict(dict)
    for path in glob.glob(str(run / "logs" / "train" / "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                scalars[value.tag][event.step] = float(tf.make_ndarray(value.tensor))
    for tag in ("loss", "mlm_loss", "nsp_loss", "mlm_accuracy", "nsp_accuracy", "learning_rate"):
        assert scalars[tag] == pytest.approx(
            {step: float(row[tag]) for step, row in rows.items()}, rel=1e-6
        ), tag
