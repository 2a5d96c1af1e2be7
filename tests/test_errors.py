"""Failures the user can fix are one line naming the file or flag; bugs keep their traceback."""

import ast
import builtins
import pathlib
import sys

import keras
import numpy as np
import pytest
from helpers import tiny_config

import kbert
import kbert.plot
from kbert import export
from kbert.cli import is_expected_failure, main
from kbert.errors import InputError, KbertError, ModelFileError
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


@pytest.fixture
def run_dir(tmp_path):
    (tmp_path / "history.csv").write_text("step,loss\n1,2.5\n2,2.25\n")
    return str(tmp_path)


def raising_inside_kbert_plot(exception):
    """A `kbert.plot.read_history` with a bug: the error is raised in kbert/plot.py's own code,
    as an internal bug's would be (compiled under that file's name, so its frame is kbert's)."""
    namespace = {"exception": exception}
    source = "def read_history(path):\n    raise exception\n"
    exec(compile(source, kbert.plot.__file__, "exec"), namespace)
    return namespace["read_history"]


@pytest.mark.parametrize(
    "bug", [ValueError("bad shape"), KeyError("loss"), OSError("no such attribute"), TypeError()]
)
def test_an_internal_bug_under_the_cli_keeps_its_traceback(bug, run_dir, monkeypatch, capsys):
    monkeypatch.setattr(kbert.plot, "read_history", raising_inside_kbert_plot(bug))
    with pytest.raises(type(bug)) as caught:
        main(["plot", run_dir])
    assert caught.value is bug
    assert caught.traceback[-1].path == pathlib.Path(kbert.plot.__file__)
    assert "error:" not in capsys.readouterr().err


def test_a_kbert_error_from_the_same_place_is_one_line(run_dir, monkeypatch, capsys):
    error = InputError(f"{run_dir}/history.csv: line 2 holds a value that is not a number")
    monkeypatch.setattr(kbert.plot, "read_history", raising_inside_kbert_plot(error))
    assert main(["plot", run_dir]) == 1
    assert capsys.readouterr().err == f"kbert plot: error: {error}\n"


def test_a_history_with_a_non_number_is_one_line_naming_the_file(tmp_path, capsys):
    (tmp_path / "history.csv").write_text("step,loss\n1,2.5\n2,nan?\n")
    assert main(["plot", str(tmp_path)]) == 1
    assert capsys.readouterr().err == (
        f"kbert plot: error: {tmp_path}/history.csv: line 3 holds a value that is not a number\n"
    )


# Raises of Python's own exception types left in kbert/ and tfrecords_tools/, by module and
# function: internal invariants (a bug if they fire) or ones another package still has to convert.
# An expected failure raises a KbertError subclass instead (kbert/errors.py).
BUILTIN_RAISES = {
    ("kbert/__init__.py", "__getattr__", "AttributeError"),  # the module protocol
    ("kbert/heads.py", "TiedMaskedLMHead.__init__", "ValueError"),
    ("kbert/versions.py", "_release", "ValueError"),
    ("kbert/vocabulary.py", "_read_bytes", "FileNotFoundError"),  # caught in the same function
    ("tfrecords_tools/corpora.py", "Slices.__getitem__", "IndexError"),  # the sequence protocol
    # To be converted with fine-tuning's other errors.
}


def builtin_raises(path):
    """(path, qualified function, exception name) of each `raise` of a builtin exception."""
    found = []

    def visit(node, scope):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                visit(child, (*scope, child.name))
                continue
            if isinstance(child, ast.Raise) and child.exc is not None:
                exc = child.exc.func if isinstance(child.exc, ast.Call) else child.exc
                kind = getattr(builtins, getattr(exc, "id", ""), None)
                if isinstance(kind, type) and issubclass(kind, BaseException):
                    found.append((path, ".".join(scope), exc.id))
            visit(child, scope)

    root = pathlib.Path(kbert.__file__).parent.parent
    visit(ast.parse((root / path).read_text()), ())
    return found


def test_every_expected_failure_raises_a_kbert_error_type():
    root = pathlib.Path(kbert.__file__).parent.parent
    sources = sorted(
        str(p.relative_to(root))
        for d in ("kbert", "tfrecords_tools")
        for p in (root / d).rglob("*.py")
    )
    found = {raise_ for path in sources for raise_ in builtin_raises(path)}
    assert found <= BUILTIN_RAISES, (
        f"raise a kbert.errors type instead: {sorted(found - BUILTIN_RAISES)}"
    )


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
