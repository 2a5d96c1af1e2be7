"""`kbert plot RUN_DIR`: draw a run's loss curves from its CSV history."""

from __future__ import annotations

import argparse

from kbert.cli import add_flag


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `kbert plot`."""
    parser.add_argument("run_dir", help="a run directory (with its CSV history) or the CSV itself")
    add_flag(parser, "output", default=None, help="PNG to write (default: RUN_DIR/loss_curves.png)")


def run(args: argparse.Namespace) -> int:
    """Draw the PNG and say where it is."""
    from kbert.plot import plot_run

    print(plot_run(args.run_dir, args.output))
    return 0
