"""Failures the user can fix are one line naming the file or flag; bugs keep their traceback."""

import sys

import keras
import numpy as np
import pytest
from helpers import tiny_config

import kbert
from kbert import export
from kbert.cli import is_expected_failure, main
from kbert.errors import KbertError, ModelFileError
from kbert.model import load_pretraining_model
from kbert.pretrain_config import PretrainConfig


def raised(function):
    try:
        function()
    except Exception as e:
        return e
    raise AssertionError("nothing raised")


def test_a_value_error_raised_inside_a_library_is_a_bug_with_its_traceback():
    error = raised(lambda: np.zeros(2).reshape(3))
    assert isinstance(error, ValueError) and not is_expected_failure(error)


def test_a_value_error_kbert_raises_about_a_setting_is_one_line():
    error = raised(lambda: PretrainConfig("tiny", "data/", "run/", steps=0))
    assert isinstance(error, ValueError) and is_expected_failure(error)


class Unregistered(keras.layers.Layer):
    """A layer of some other package, unknown to Keras when the file is loaded."""

    def call(self, x):
        return x


def test_a_keras_file_with_an_unknown_class_is_one_clear_line(tmp_path, capsys):
    path = str(tmp_path / "other.keras")
    keras.Sequential([keras.Input((2,)), Unregistered()]).save(path)
    with pytest.raises(ModelFileError, match=r"other.keras: holds Unregistered, a class Keras"):
        load_pretraining_model(path)
    assert main(["evaluate", "--model", path, "--eval-files", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("kbert evaluate: error: ") and "Unregistered" in err[-1]
    assert not any("Traceback" in line for line in err)


@pytest.fixture
def saved_model(tmp_path):
    path = str(tmp_path / "model.keras")
    kbert.build_pretraining_model(tiny_config(), 16, 3).save(path)
    return path


def test_an_export_subprocess_that_runs_too_long_is_stopped_with_a_message(
    saved_model, tmp_path, monkeypatch
):
    monkeypatch.setattr(export, "EXPORT_SUBPROCESS_TIMEOUT_SECONDS", 0.01)
    with pytest.raises(KbertError, match=r"did not finish in 0.01 s and was stopped: .*export"):
        export._export_in_tensorflow_process(
            saved_model, "vocab.txt", str(tmp_path / "out"), "bert", None, 5, True
        )


def test_an_export_subprocess_that_exits_silently_is_a_message_not_an_index_error(
    saved_model, tmp_path, monkeypatch
):
    silent = tmp_path / "silent"
    silent.write_text("#!/bin/sh\nexit 0\n")
    silent.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(silent))  # a Python that prints nothing
    with pytest.raises(KbertError, match="exited without naming the version it wrote"):
        export._export_in_tensorflow_process(
            saved_model, "vocab.txt", str(tmp_path / "out"), "bert", None, 5, True
        )
