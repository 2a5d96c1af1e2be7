"""`kbert train`: pre-train with the joint MLM + NSP objective (wraps `kbert.train.pretrain`).

Its flags are generated from `kbert.pretrain_config.PretrainConfig`'s fields: a new setting is a
new field there, with its help, default, type and choices; nothing is repeated here.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Callable
from typing import Any

from kbert.cli import add_flag, report_devices
from kbert.pretrain_config import GROUPS, PretrainConfig


def flag_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """`parse` for argparse: its ValueError becomes argparse's one-line usage error."""
    if parse in (str, int, float, bool):
        return parse

    def parse_flag(value: str) -> Any:
        try:
            return parse(value)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return parse_flag


def add_verbose_flag(parser: argparse.ArgumentParser | Any) -> None:
    """`--verbose`, Keras' progress display, as `kbert train` and `kbert evaluate` take it.

    Args:
        parser: an argument parser or argument group.

    Examples:
    >>> parser = argparse.ArgumentParser()
    >>> add_verbose_flag(parser)
    >>> parser.parse_args(["--verbose", "2"]).verbose
    2
    """
    add_flag(
        parser,
        "verbose",
        type=int,
        choices=(0, 1, 2),
        # A bar's carriage returns and colour codes do not belong in a log file.
        default=1 if sys.stdout.isatty() else 2,
        help="0 silent, 1 progress bar (default on a terminal), 2 one line per interval "
        "(default otherwise)",
    )


def _help(field: dataclasses.Field) -> str:
    text = field.metadata["help"]
    if field.default not in (dataclasses.MISSING, None):
        text += f" (default: {field.default})"
    return text.replace("%", "%%")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `kbert train`: one per `PretrainConfig` field, named like it, plus --verbose."""
    parser.epilog = (
        "Re-running the same command resumes an interrupted run exactly (weights, optimizer, "
        "learning rate, data position) from OUTPUT_DIR/backup. Example: kbert train --config mini "
        "--train-files 'data/train/*.tfrecord' --eval-files data/eval --output-dir runs/x "
        "--steps 10000 --batch-size 256"
    )
    groups = {name: parser.add_argument_group(name) for name in GROUPS}
    for field in dataclasses.fields(PretrainConfig):
        meta = field.metadata
        kwargs: dict[str, Any] = dict(type=flag_type(meta["parse"]), help=_help(field))
        if field.default is dataclasses.MISSING:
            kwargs["required"] = True
        else:
            kwargs["default"] = field.default
        for key in ("choices", "metavar"):
            if meta[key] is not None:
                kwargs[key] = meta[key]
        add_flag(groups[meta["group"]], field.name, **kwargs)
    add_verbose_flag(groups["checkpoints and logs"])


def run(args: argparse.Namespace) -> int:
    """Train, then print the evaluation. A diverged run or damaged data raises a
    `KbertError`, which `kbert.cli.main` reports on one line."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from kbert.distribute import initialize_distribution

    # Before anything (the device report) starts JAX: a run of several processes joins first.
    initialize_distribution(args.job_addresses, args.num_processes, args.process_id)
    report_devices("train")
    from kbert.train import pretrain

    settings = {k: v for k, v in vars(args).items() if k not in ("command", "verbose")}
    result = pretrain(PretrainConfig(**settings), verbose=args.verbose)
    print(f"run directory: {result.output_dir}")
    if result.eval_results is not None:
        print(json.dumps(result.eval_results, indent=2, sort_keys=True))
    return 0
