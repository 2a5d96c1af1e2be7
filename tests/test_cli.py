"""The rules every `kbert` command shares: boolean flags, --flagfile, one-line errors, quiet
TensorFlow logs, progress in log files."""

import io
import os
import re
import subprocess
import sys

import pytest
import tensorflow as tf
import tqdm
from helpers import tiny_config, write_pretraining_records

from kbert.cli import COMMANDS, build_parser, describe_devices, main
from kbert.cli import plot as plot_command
from kbert.progress import LineProgress, progress

# What each command requires, so that every command can be parsed.
REQUIRED = {
    "vocab": ["--output_file", "vocab.txt"],
    "create-data": ["--output_file", "data/train", "--vocab_file", "vocab.txt"],
    "inspect-data": ["--input_file", "data"],
    "train": ["--config", "tiny", "--train_files", "data", "--output_dir", "run", "--steps", "4"],
    "evaluate": ["--model", "run", "--eval_files", "data"],
    "export": ["--model", "run", "--vocab_file", "vocab.txt"],
    "predict": ["--model", "saved_models/kbert/1", "Paris is the [MASK] of France."],
    "plot": ["run"],
    "demo": [],
    "finetune": ["--train_file", "train.tsv", "--eval_file", "dev.tsv", "--output_dir", "out"],
}
# Lines TensorFlow's C++ logger prints at start-up on a machine without GPU.
TF_LOG_LINE = re.compile(
    r"^[IWEF]\d{4} |oneDNN custom operations|absl::InitializeLog|Could not find cuda drivers"
    r"|cuInit"
)


def parse(command, *flags):
    return build_parser(command).parse_args([command, *REQUIRED[command], *flags])


def boolean_flags(command):
    """The flags of `command` that take no value (switches), however they were added."""
    parser = build_parser(command)
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    return sorted({a.dest for a in sub._actions if a.nargs == 0 and a.dest != "help"})


def run_kbert(*args, env=None):
    """Run the real `kbert` command as a user would, without the test suite's log settings."""
    environment = {
        k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "KBERT_DEBUG")
    }
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "kbert", *args],
        capture_output=True,
        text=True,
        env=environment,
        timeout=300,
    )


def test_every_command_is_covered():
    assert set(REQUIRED) == set(COMMANDS)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_accepts_each_boolean_spelling(command):
    flags = boolean_flags(command)
    assert "debug" in flags
    for flag in flags:
        hyphens = flag.replace("_", "-")
        spellings = {
            f"--{flag}": True,
            f"--{hyphens}": True,
            f"--no{flag}": False,
            f"--no-{hyphens}": False,
            f"--no-{flag}": False,
            f"--{flag}=false": False,
            f"--{hyphens}=True": True,
            f"--{flag}=0": False,
            f"--{flag}=1": True,
            f"--{flag}=YES": True,
            f"--{flag}=no": False,
            f"--{flag}=t": True,
            f"--{flag}=F": False,
        }
        for spelling, value in spellings.items():
            assert getattr(parse(command, spelling), flag) is value, spelling


def test_a_boolean_flag_rejects_a_value_it_cannot_read(capsys):
    with pytest.raises(SystemExit):
        parse("export", "--do_lower_case=maybe")
    assert "expected true or false" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse("export", "--nodo_lower_case=true")
    assert "takes no value" in capsys.readouterr().err


def test_a_boolean_flag_before_the_command_takes_no_value_from_it():
    args = build_parser("inspect-data").parse_args(["--debug", "inspect-data", "--input_file", "x"])
    assert args.command == "inspect-data" and args.debug is True


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_reads_a_flagfile(command, tmp_path):
    flagfile = tmp_path / "flags.txt"
    flagfile.write_text("# what to show\n--debug\n")
    assert parse(command, "--flagfile", str(flagfile)).debug is True
    assert parse(command, f"--flagfile={flagfile}", "--nodebug").debug is False


def test_flagfile_is_read_as_absl_reads_it(tmp_path):
    inner = tmp_path / "inner.txt"
    inner.write_text("--top_k=7\n--nodo_lower_case\n")
    outer = tmp_path / "outer.txt"
    outer.write_text(
        f"# Google-style flags\n\n// also a comment\n--name=first\n--flagfile={inner}\n"
        "--export_base=/tmp/models\n"
    )
    args = parse("export", "--flagfile", str(outer), "--name=second")
    assert (args.name, args.top_k, args.do_lower_case) == ("second", 7, False)
    assert args.export_base == "/tmp/models"
    args = parse("export", "--top_k=3", "--flagfile", str(outer))
    assert args.top_k == 7  # the file comes later, so it wins


def test_a_missing_or_circular_flagfile_is_a_usage_error(tmp_path, capsys):
    missing = tmp_path / "missing.txt"
    assert main(["export", *REQUIRED["export"], "--flagfile", str(missing)]) == 2
    assert f"--flagfile {missing}: cannot read it" in capsys.readouterr().err
    loop = tmp_path / "loop.txt"
    loop.write_text(f"--flagfile={loop}\n")
    assert main(["export", *REQUIRED["export"], "--flagfile", str(loop)]) == 2
    assert "includes itself" in capsys.readouterr().err


def test_expected_failure_is_one_line_without_traceback_unless_debug(tmp_path):
    missing = tmp_path / "missing.txt"
    flags = ["vocab", "--input_file", str(missing), "--output_file", str(tmp_path / "v.txt")]
    error = f"kbert vocab: error: --input_file {missing}: no file matches"
    done = run_kbert(*flags)
    assert (done.returncode, done.stderr) == (1, error + "\n")
    for debug in (run_kbert("--debug", *flags), run_kbert(*flags, env={"KBERT_DEBUG": "1"})):
        assert debug.returncode == 1
        assert "Traceback (most recent call last)" in debug.stderr
        assert debug.stderr.splitlines()[-1] == error


def test_damaged_data_from_tensorflow_is_one_line(monkeypatch, capsys):
    def damaged(args):
        raise tf.errors.DataLossError(
            None, None, "truncated record at 999555\n\t [[{{node IteratorGetNext}}]]"
        )

    monkeypatch.setattr(plot_command, "run", damaged)
    assert main(["plot", "run"]) == 1
    assert capsys.readouterr().err == "kbert plot: error: truncated record at 999555\n"


def test_interrupt_exits_130_and_a_bug_keeps_its_traceback(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(plot_command, "run", interrupted)
    assert main(["plot", "run"]) == 130
    assert capsys.readouterr().err == "kbert plot: interrupted\n"

    def bug(args):
        return {}["missing"]

    monkeypatch.setattr(plot_command, "run", bug)
    with pytest.raises(KeyError):
        main(["plot", "run"])


def test_help_and_inspect_data_are_quiet_and_report_progress_in_a_log(tmp_path):
    for command in ("evaluate", "create-data"):
        assert run_kbert(command, "--help").stderr == ""
    data = write_pretraining_records(str(tmp_path / "data"), num_records=5000)
    done = run_kbert("inspect-data", "--input_file", data, "--num_records", "0")
    assert done.returncode == 0, done.stderr
    assert "OK: all 5,000 records valid" in done.stdout
    assert not [line for line in done.stderr.splitlines() if TF_LOG_LINE.search(line)]
    progress = [line for line in done.stderr.splitlines() if line.startswith("validating: ")]
    assert len(progress) >= 3 and progress[-1].startswith("validating: 5,000/5,000 records (100%")
    assert "\r" not in done.stderr


def test_train_says_which_devices_it_uses_and_nothing_from_tensorflow(tmp_path):
    config = str(tmp_path / "bert_config.json")
    tiny_config().to_json_file(config)
    data = write_pretraining_records(str(tmp_path / "data"))
    flags = ["--config", config, "--train_files", data, "--output_dir", str(tmp_path / "run")]
    done = run_kbert("train", *flags, "--steps", "2", "--batch_size", "8", "--verbose", "0")
    assert done.returncode == 0, done.stderr
    assert done.stderr.startswith("kbert train: devices: ")
    assert not [line for line in done.stderr.splitlines() if TF_LOG_LINE.search(line)]


def test_debug_shows_tensorflow_logs(tmp_path):
    done = run_kbert("inspect-data", "--input_file", str(tmp_path / "none"), "--debug")
    assert done.returncode == 1
    assert [line for line in done.stderr.splitlines() if TF_LOG_LINE.search(line)]


def test_vocab_reports_progress_in_a_log(tmp_path):
    corpus = tmp_path / "corpus.txt"
    words = [f"w{i}" for i in range(50)]
    corpus.write_text(
        "".join(
            f"{words[d % 50]} {words[s]} {words[(d * s) % 50]}.\n"
            for d in range(200)
            for s in range(10)
        )
    )
    done = run_kbert(
        "vocab",
        "--input_file",
        str(corpus),
        "--output_file",
        str(tmp_path / "vocab.txt"),
        "--vocab_size",
        "100",
    )
    assert done.returncode == 0, done.stderr
    counting = [line for line in done.stderr.splitlines() if line.startswith("counting words: ")]
    assert len(counting) >= 3 and "2,000/2,000 sentences (100%" in counting[-1]
    assert "\r" not in done.stderr


def test_device_summary_names_the_backend_and_the_cpu():
    summary = describe_devices()
    assert summary.startswith("CPU (") and f"TensorFlow {tf.__version__}" in summary


def test_progress_is_a_bar_on_a_terminal_and_lines_elsewhere(tmp_path):
    leader, follower = os.openpty()
    with open(follower, "w") as terminal, open(tmp_path / "log.txt", "w") as log:
        assert isinstance(progress(range(3), desc="a", file=terminal), tqdm.tqdm)
        assert isinstance(progress(range(3), desc="a", file=log), LineProgress)
    os.close(leader)


def test_progress_without_a_total_prints_a_line_every_interval():
    log = io.StringIO()
    with LineProgress(desc="spooling", unit="documents", file=log, interval=0) as bar:
        for _ in range(3):
            bar.update(2)
    lines = [line.split(" (")[0] for line in log.getvalue().splitlines()]
    assert lines == ["spooling: 2 documents", "spooling: 4 documents", "spooling: 6 documents"]
