"""The `kbert` command: one sub-command per stage, each a thin face over the Python API.

This package is the only place that parses flags or prints. Sub-command modules are imported
only when their command runs, so `kbert --help` answers without starting TensorFlow.

Rules every command follows (they live here, so each sub-command gets them by using `add_flag`):
- a flag `--x_y` is also `--x-y`; a boolean flag also takes `--x_y=true|false`, `--nox_y` (absl)
  and `--no-x-y`; `--flagfile FILE` reads flags from a file as absl does;
- an expected failure (bad input, missing file, damaged data, interrupted run) is one line on
  stderr and exit status 1 (130 for Ctrl-C); `--debug` or `KBERT_DEBUG=1` shows the traceback;
- TensorFlow's C++ start-up logs stay off unless `--debug` or `TF_CPP_MIN_LOG_LEVEL` is set.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import importlib
import importlib.abc
import importlib.util
import os
import sys
import traceback
from collections.abc import Iterator, Sequence
from typing import IO, Any

from kbert.errors import KbertError, SettingError
from kbert.import_hooks import OnImport

# command: (module, one-line help). Each module defines `add_arguments(parser)` and `run(args)`.
COMMANDS = {
    "vocab": ("kbert.cli.vocab", "learn a WordPiece vocabulary from a corpus"),
    "create-data": ("kbert.cli.create_data", "corpus -> masked pre-training TFRecords"),
    "inspect-data": ("kbert.cli.inspect_data", "decode and validate pre-training TFRecords"),
    "train": ("kbert.cli.train", "pre-train with the joint MLM + NSP objective"),
    "evaluate": ("kbert.cli.evaluate", "evaluate a run or model on held-out TFRecords"),
    "export": ("kbert.cli.export", "export a SavedModel for TF Serving"),
    "predict": ("kbert.cli.predict", "fill [MASK]s and score NSP with an exported SavedModel"),
    "finetune": ("kbert.cli.finetune", "fine-tune and score an encoder on labelled text"),
    "plot": ("kbert.cli.plot", "draw a run's loss curves"),
    "demo": ("kbert.cli.demo", "the whole pipeline on the built-in corpus"),
}

FLAG_RULES = (
    "Boolean flags: --x, --x=true|false (also 1/0, yes/no), --nox or --no-x. "
    "--flagfile FILE reads flags from FILE, one per line (# comments), as absl does; flags "
    "after it override it. --debug (or KBERT_DEBUG=1) shows tracebacks and TensorFlow's logs."
)
# absl's spellings (true/t/1, false/f/0) and the usual others.
_TRUE = ("true", "t", "1", "yes", "on")
_FALSE = ("false", "f", "0", "no", "off")
_NEGATIONS = ("no", "no_", "no-")
_FLAGFILE = "--flagfile"
# TensorFlow errors that mean unreadable or missing data, or a full device, rather than a bug.
_EXPECTED_TF_ERRORS = (
    "DataLossError",
    "NotFoundError",
    "PermissionDeniedError",
    "UnauthenticatedError",
    "AlreadyExistsError",
    "ResourceExhaustedError",
)


def parse_bool(value: str) -> bool:
    """A boolean flag's value: true/false, t/f, 1/0, yes/no, on/off, in any case.

    Args:
        value: the text after `--flag=`.

    Examples:
    >>> parse_bool("True"), parse_bool("no")
    (True, False)
    """
    if value.strip().lower() in _TRUE:
        return True
    if value.strip().lower() in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false (or 1/0, yes/no), got {value!r}")


def add_flag(parser: argparse.ArgumentParser | Any, name: str, **kwargs: Any) -> None:
    """Add `--name`, also spelled with hyphens; a boolean flag gets every boolean spelling.

    A flag is boolean when it has `type=bool`, `action="store_true"` or
    `action=argparse.BooleanOptionalAction`: it then takes `--name`, `--name=BOOL` (see
    `parse_bool`), and `--noname`, `--no_name`, `--no-name` (hyphens or underscores) for false.

    Args:
        parser: an argument parser or argument group.
        name: the flag's name with underscores (the Python argument it fills).
        **kwargs: `add_argument`'s keyword arguments.

    Examples:
    >>> parser = argparse.ArgumentParser()
    >>> add_flag(parser, "do_lower_case", type=bool, default=True, help="lower-case the text")
    >>> [parser.parse_args([f]).do_lower_case for f in ("--nodo_lower_case", "--do-lower-case")]
    [False, True]
    """
    action = kwargs.get("action")
    if kwargs.get("type") is bool or action in ("store_true", argparse.BooleanOptionalAction):
        kwargs = {k: v for k, v in kwargs.items() if k not in ("action", "type", "metavar")}
        kwargs.setdefault("default", False)
        parser.add_argument(*_spellings(name), dest=name, action=_BoolFlag, value=True, **kwargs)
        negations = [f"--{no}{spelling[2:]}" for no in _NEGATIONS for spelling in _spellings(name)]
        parser.add_argument(
            *dict.fromkeys(negations),
            dest=name,
            action=_BoolFlag,
            value=False,
            default=argparse.SUPPRESS,
            help=argparse.SUPPRESS,
        )
        return
    parser.add_argument(*_spellings(name), dest=name, **kwargs)


class _BoolFlag(argparse.Action):
    """`--x` (value True) or `--nox` (False); `ArgumentParser` turns `--x=BOOL` into one of them."""

    def __init__(self, option_strings: list[str], dest: str, value: bool, **kwargs: Any):
        super().__init__(option_strings, dest, nargs=0, **kwargs)
        self.value = value

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, self.value)


def _spellings(name: str) -> list[str]:
    return list(dict.fromkeys([f"--{name}", "--" + name.replace("_", "-")]))


def expand_flagfiles(argv: Sequence[str]) -> list[str]:
    """`argv` with every `--flagfile FILE` / `--flagfile=FILE` replaced by the flags in FILE.

    As absl reads them: one flag per line (`--name=value`), blank lines and lines starting with
    `#` or `//` skipped, `--flagfile` lines inside expanded in place; nothing after `--`.

    Args:
        argv: command-line arguments.

    Raises:
        ValueError: a flagfile cannot be read or includes itself.

    Examples:
    >>> import tempfile
    >>> path = tempfile.mkstemp()[1]
    >>> _ = open(path, "w").write("# defaults\\n--max_seq_length=128\\n--nodo_lower_case\\n")
    >>> expand_flagfiles(["create-data", f"--flagfile={path}", "--max_seq_length=64"])
    ['create-data', '--max_seq_length=128', '--nodo_lower_case', '--max_seq_length=64']
    """
    return _expand(list(argv), reading=())


def _expand(argv: list[str], reading: tuple[str, ...]) -> list[str]:
    expanded: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            return expanded + argv[i:]
        if arg == _FLAGFILE or arg.startswith(_FLAGFILE + "="):
            if arg == _FLAGFILE:
                if i + 1 == len(argv):
                    raise SettingError("--flagfile: expected a file name")
                path, i = argv[i + 1], i + 2
            else:
                path, i = arg[len(_FLAGFILE) + 1 :], i + 1
            expanded.extend(_expand(_flagfile_lines(path, reading), (*reading, path)))
            continue
        expanded.append(arg)
        i += 1
    return expanded


def _flagfile_lines(path: str, reading: tuple[str, ...]) -> list[str]:
    if os.path.abspath(path) in map(os.path.abspath, reading):
        raise SettingError(f"--flagfile {path}: includes itself (via {' -> '.join(reading)})")
    try:
        # Plain open, not tf.io.gfile: flags are read before TensorFlow is loaded (or needed).
        with open(path, encoding="utf-8") as f:
            lines = [line.strip() for line in f]
    except OSError as e:
        raise SettingError(f"--flagfile {path}: cannot read it ({e.strerror})") from None
    return [line for line in lines if line and not line.startswith(("#", "//"))]


class ArgumentParser(argparse.ArgumentParser):
    """argparse with `--flagfile` expanded and `--x=BOOL` understood (the `kbert` parser)."""

    def parse_known_args(self, args=None, namespace=None):
        """argparse's, after `expand_flagfiles`; an unreadable flagfile is a usage error."""
        try:
            args = expand_flagfiles(sys.argv[1:] if args is None else args)
        except ValueError as e:
            self.error(str(e))
        end = args.index("--") if "--" in args else len(args)
        args = [self._bool_value(arg) for arg in args[:end]] + args[end:]
        return super().parse_known_args(args, namespace)

    def _bool_value(self, arg: str) -> str:
        # A boolean flag takes no separate value (as in absl, so `--debug train` stays unambiguous);
        # its `--x=BOOL` form is rewritten to `--x` or `--nox`.
        name, equals, value = arg.partition("=")
        action = self._option_string_actions.get(name) if equals else None
        if not isinstance(action, _BoolFlag):
            return arg
        if not action.value:
            self.error(f"argument {name}: takes no value (use --{action.dest}=true|false)")
        try:
            return name if parse_bool(value) else f"--no{name[2:]}"
        except argparse.ArgumentTypeError as e:
            self.error(f"argument {name}: {e}")


def _available_commands() -> dict[str, tuple[str, str]]:
    return {
        name: spec
        for name, spec in COMMANDS.items()
        if importlib.util.find_spec(spec[0]) is not None
    }


def _add_common_flags(parser: argparse.ArgumentParser) -> None:
    # SUPPRESS: neither flag reaches the sub-command's arguments unless given.
    add_flag(
        parser,
        "debug",
        type=bool,
        default=argparse.SUPPRESS,
        help="show the traceback of an error and TensorFlow's C++ logs (also KBERT_DEBUG=1)",
    )
    parser.add_argument(
        _FLAGFILE,
        metavar="FILE",
        default=argparse.SUPPRESS,
        help="read flags from FILE, one per line, as absl does (later flags override them)",
    )


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The top-level parser; only `command`'s sub-parser is filled in (the others stay cheap).

    Args:
        command: the sub-command whose flags to add (None: only the list of commands).

    Examples:
    >>> args = build_parser("plot").parse_args(["plot", "runs/x", "--output=curves.png"])
    >>> args.run_dir, args.output
    ('runs/x', 'curves.png')
    """
    parser = ArgumentParser(
        prog="kbert",
        description="BERT pre-training with the joint MLM + NSP objective.",
        epilog=FLAG_RULES,
    )
    from kbert import __version__

    parser.add_argument("--version", action="version", version=f"kbert {__version__}")
    _add_common_flags(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in _available_commands().items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            importlib.import_module(module).add_arguments(p)
            _add_common_flags(p)
            p.epilog = f"{p.epilog} {FLAG_RULES}" if p.epilog else FLAG_RULES
    return parser


def _command_of(argv: Sequence[str]) -> str | None:
    for arg in argv:
        if arg == "--":
            return None
        if arg in COMMANDS:
            return arg
    return None


def _debug_from_environment() -> bool:
    return os.environ.get("KBERT_DEBUG", "").strip().lower() in _TRUE


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `kbert` console script: parse, run the command, report failures.

    Args:
        argv: the arguments after `kbert` (default: sys.argv[1:]).

    Returns:
        The exit status: 0, 1 for an expected failure, 130 when interrupted, 2 for bad usage.
    """
    try:
        argv = expand_flagfiles(sys.argv[1:] if argv is None else argv)
    except ValueError as e:
        print(f"kbert: error: {e}", file=sys.stderr)
        return 2
    parser = build_parser(_command_of(argv))
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    debug = vars(args).pop("debug", None)
    debug = _debug_from_environment() if debug is None else debug
    if not debug:
        quiet_tensorflow()
    from kbert.versions import IncompatibleVersionsError, check_installed_versions

    # Every command reads or writes through TensorFlow; refuse a broken pair before it loads.
    try:
        check_installed_versions()
    except IncompatibleVersionsError as e:
        print(f"kbert: error: {e}", file=sys.stderr)
        return 1
    try:
        module = importlib.import_module(COMMANDS[args.command][0])
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        print(f"kbert {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader of stdout went away (`kbert ... | head`): stop without a second error when
        # Python flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as e:
        if not is_expected_failure(e):
            raise
        if debug:
            traceback.print_exc()
        print(f"kbert {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 1


def is_expected_failure(error: BaseException) -> bool:
    """Whether `error` is the input's or the setting's fault (reported in one line), not a bug.

    Expected: kbert's own errors (`KbertError` and its subclasses), and TensorFlow's errors of
    missing or unreadable storage (a file gone, no permission or credentials, a full disk), which
    name the path. Anything else keeps its traceback, also a `ValueError` or `OSError` raised
    inside kbert: it may be a bug.

    Args:
        error: the exception a command raised.

    Examples:
    >>> from kbert.errors import KbertError
    >>> is_expected_failure(KbertError("vocab.txt: empty")), is_expected_failure(ValueError("x"))
    (True, False)
    """
    if isinstance(error, KbertError):
        return True
    tf = sys.modules.get("tensorflow")  # a TensorFlow error implies TensorFlow is loaded
    errors = getattr(tf, "errors", None)
    return errors is not None and isinstance(
        error, tuple(getattr(errors, name) for name in _EXPECTED_TF_ERRORS)
    )


def _one_line(error: BaseException) -> str:
    tf = sys.modules.get("tensorflow")
    if tf is not None and isinstance(error, tf.errors.OpError) and error.message.strip():
        # What follows the first line is graph-node context ("[[{{node IteratorGetNext}}]]").
        return error.message.strip().splitlines()[0]
    return " ".join(str(error).split()) or type(error).__name__


def quiet_tensorflow() -> None:
    """Keep TensorFlow's C++ logs off for this process, unless `TF_CPP_MIN_LOG_LEVEL` is set.

    TensorFlow 2.21 prints its start-up lines (oneDNN, CUDA, CPU features) through absl before it
    reads `TF_CPP_MIN_LOG_LEVEL`, so while `tensorflow` is imported stderr points to /dev/null;
    level 3 then hides the later ones (e.g. "failed call to cuInit" on a machine without GPU).
    """
    if "TF_CPP_MIN_LOG_LEVEL" in os.environ:
        return
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    if "tensorflow" not in sys.modules:
        sys.meta_path.insert(0, OnImport("tensorflow", around=_stderr_silenced))


@contextlib.contextmanager
def _stderr_silenced() -> Iterator[None]:
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no file descriptor 2: nothing to silence
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def describe_devices() -> str:
    """What computes: the Keras backend's devices, e.g. "1 CPU (2 cores, oneDNN on); TensorFlow
    2.21.0". Loads the backend (TensorFlow, or JAX when KERAS_BACKEND=jax).

    Examples:
    >>> "TensorFlow" in describe_devices() or "JAX" in describe_devices()
    True
    """
    if os.environ.get("KERAS_BACKEND", "tensorflow") == "jax":
        import jax

        kinds = collections.Counter(device.device_kind for device in jax.devices())
        devices = ", ".join(f"{count} {kind}" for kind, count in kinds.items())
        return f"{devices}; JAX {jax.__version__}"
    import tensorflow as tf

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    onednn = {"1": ", oneDNN on", "0": ", oneDNN off"}.get(
        os.environ.get("TF_ENABLE_ONEDNN_OPTS", ""), ""
    )
    parts = [f"CPU ({cores} cores{onednn})"]
    for kind in ("GPU", "TPU"):
        devices = tf.config.list_physical_devices(kind)
        if devices:
            names = sorted(
                {
                    tf.config.experimental.get_device_details(d).get("device_name", kind)
                    for d in devices
                }
            )
            parts.append(f"{len(devices)} {kind} ({', '.join(names)})")
    return f"{' + '.join(parts)}; TensorFlow {tf.__version__}"


def report_devices(command: str, file: IO[str] | None = None) -> str:
    """Print `kbert COMMAND: devices: ...` (see `describe_devices`) on stderr; returns the line.

    Args:
        command: the sub-command, e.g. "train".
        file: where to print (default: sys.stderr).
    """
    line = f"kbert {command}: devices: {describe_devices()}"
    print(line, file=sys.stderr if file is None else file, flush=True)
    return line


if __name__ == "__main__":
    sys.exit(main())
