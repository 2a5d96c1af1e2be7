"""`evaluate` of a saved model (`.keras` file or run directory) reports its training step."""

import json
import logging

import pytest
from helpers import tiny_config, write_pretraining_records

import kbert
from kbert.cli import main
from kbert.train import evaluate, pretrain


def train(data, output_dir, steps, **kwargs):
    """A short run of the tiny config; returns its run directory."""
    pretrain(
        config=tiny_config(),
        train_files=data,
        output_dir=str(output_dir),
        steps=steps,
        batch_size=8,
        seed=3,
        strategy="cpu",
        verbose=0,
        **kwargs,
    )
    return output_dir


# fp16 matmuls run on TensorFlow's CPU kernels; JAX's CPU dot_general has no F16_F16_F32.
@pytest.mark.parametrize(
    "mixed_precision", ["none", pytest.param("fp16", marks=pytest.mark.tensorflow_only)]
)
def test_evaluating_a_keras_file_reports_the_updates_it_was_trained_for(tmp_path, mixed_precision):
    data = write_pretraining_records(str(tmp_path / "data"), num_records=16)
    # 2 updates of 2 accumulated batches: Keras' batch counter reaches 4; under fp16 the
    # LossScaleOptimizer's own counters are saved beside its inner optimizer's.
    run = train(
        data,
        tmp_path / "run",
        steps=2,
        gradient_accumulation_steps=2,
        mixed_precision=mixed_precision,
    )
    output = tmp_path / "eval_results.json"

    evaluate(
        str(run / "model.keras"),
        data,
        batch_size=16,
        output_path=str(output),
        strategy="cpu",
        verbose=0,
    )

    assert json.loads(output.read_text())["step"] == 2


def test_kbert_evaluate_on_a_run_directory_writes_the_trained_step(tmp_path, capsys):
    data = write_pretraining_records(str(tmp_path / "data"), num_records=16)
    run = train(data, tmp_path / "run", steps=3)

    assert (
        main(
            [
                "evaluate",
                "--model",
                str(run),
                "--eval-files",
                data,
                "--batch-size",
                "16",
                "--strategy",
                "cpu",
                "--verbose",
                "0",
            ]
        )
        == 0
    )

    assert json.loads((run / "eval_results.json").read_text())["step"] == 3
    assert json.loads(capsys.readouterr().out)["step"] == 3


def test_a_model_saved_without_optimizer_gives_a_null_step_and_says_why(tmp_path, caplog):
    data = write_pretraining_records(str(tmp_path / "data"), num_records=16)
    path = str(tmp_path / "uncompiled.keras")
    kbert.build_pretraining_model(tiny_config(), 16, 3).save(path)
    output = tmp_path / "eval_results.json"

    with caplog.at_level(logging.WARNING, logger="kbert"):
        evaluate(path, data, batch_size=16, output_path=str(output), strategy="cpu", verbose=0)

    assert json.loads(output.read_text())["step"] is None
    assert f"{path}: saved without an optimizer" in caplog.text
