"""The `kbert` command: one sub-command per stage, each a thin face over the Python API.

This package is the only place that parses flags or prints. Sub-command modules are imported
only when their command runs, so `kbert --help` answers without starting TensorFlow.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

# command: (module, one-line help). Each module defines `add_arguments(parser)` and `run(args)`.
COMMANDS = {
    "vocab": ("kbert.cli.vocab", "learn a WordPiece vocabulary from a corpus"),
    "create-data": ("kbert.cli.create_data", "corpus -> masked pre-training TFRecords"),
    "inspect-data": ("kbert.cli.inspect_data", "decode and validate pre-training TFRecords"),
    "train": ("kbert.cli.train", "pre-train with the joint MLM + NSP objective"),
    "evaluate": ("kbert.cli.evaluate", "evaluate a run or model on held-out TFRecords"),
    "export": ("kbert.cli.export", "export a SavedModel for TF Serving"),
    "predict": ("kbert.cli.predict", "fill [MASK]s and score NSP with an exported SavedModel"),
    "plot": ("kbert.cli.plot", "draw a run's loss curves"),
    "demo": ("kbert.cli.demo", "the whole pipeline on the built-in corpus"),
}


def add_flag(parser: argparse.ArgumentParser, name: str, **kwargs) -> None:
    """Add `--name` spelled both with underscores (the Python argument) and with hyphens."""
    spellings = [f"--{name}"]
    if "_" in name:
        spellings.append("--" + name.replace("_", "-"))
    parser.add_argument(*spellings, dest=name, **kwargs)


def _available_commands() -> dict[str, tuple[str, str]]:
    return {
        name: spec
        for name, spec in COMMANDS.items()
        if importlib.util.find_spec(spec[0]) is not None
    }


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The top-level parser; only `command`'s sub-parser is filled in (the others stay cheap)."""
    parser = argparse.ArgumentParser(
        prog="kbert", description="BERT pre-training with the joint MLM + NSP objective."
    )
    from kbert import __version__

    parser.add_argument("--version", action="version", version=f"kbert {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in _available_commands().items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `kbert` console script."""
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    from kbert.versions import IncompatibleVersionsError, check_installed_versions

    # Every command reads or writes through TensorFlow; refuse a broken pair before it loads.
    try:
        check_installed_versions()
    except IncompatibleVersionsError as e:
        print(f"kbert: error: {e}", file=sys.stderr)
        return 1
    module = importlib.import_module(COMMANDS[args.command][0])
    try:
        return int(module.run(args) or 0)
    except (ValueError, FileNotFoundError, PermissionError) as e:
        print(f"kbert {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"kbert {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
