"""`kbert evaluate`: held-out MLM / NSP loss, accuracy and MLM perplexity of a run or model."""

from __future__ import annotations

import argparse
import json
import logging

from kbert.cli import add_flag, report_devices
from kbert.cli.train import add_verbose_flag, flag_type
from kbert.pretrain_config import STRATEGIES, parse_jit_compile


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `kbert evaluate`, named like `kbert.train.evaluate`'s arguments."""
    parser.epilog = "Example: kbert evaluate --model runs/mini --eval_files data/heldout"
    add_flag(
        parser, "model", required=True, help="a run directory (its model.keras) or a .keras file"
    )
    add_flag(
        parser,
        "eval_files",
        required=True,
        help="held-out TFRecords: glob(s), comma-separated, or a directory",
    )
    add_flag(
        parser,
        "batch_size",
        type=int,
        default=256,
        help="global batch size (the last batch is padded with zero-weight rows)",
    )
    add_flag(
        parser,
        "output_path",
        default=None,
        help="JSON to write (default: eval_results.json in --model when it is a run directory, "
        "else none)",
    )
    add_flag(
        parser,
        "strategy",
        choices=STRATEGIES,
        default="auto",
        help="auto, cpu, mirrored, multi_worker or tpu (as for kbert train)",
    )
    add_flag(parser, "tpu", default="local", help="TPU for --strategy tpu")
    add_flag(
        parser,
        "jit_compile",
        type=flag_type(parse_jit_compile),
        default="auto",
        metavar="{auto,true,false}",
        help="XLA compilation",
    )
    add_flag(
        parser,
        "dynamic_masking_vocab",
        default=None,
        metavar="VOCAB_TXT",
        help="draw deterministic masks with this vocab.txt (records without masks)",
    )
    add_flag(
        parser,
        "skip_corrupt_records",
        type=bool,
        default=False,
        help="evaluate what can be read of damaged (truncated or corrupted) shards and report "
        "the skipped records, instead of stopping",
    )
    add_verbose_flag(parser)


def run(args: argparse.Namespace) -> int:
    """Evaluate and print the results as JSON."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    import tensorflow as tf

    from kbert.train import EVAL_RESULTS_FILE, evaluate

    report_devices("evaluate")
    output_path = args.output_path
    if output_path is None and tf.io.gfile.isdir(args.model):
        output_path = tf.io.gfile.join(args.model, EVAL_RESULTS_FILE)
    results = evaluate(
        args.model,
        args.eval_files,
        batch_size=args.batch_size,
        output_path=output_path,
        strategy=args.strategy,
        tpu=args.tpu,
        jit_compile=args.jit_compile,
        dynamic_masking_vocab=args.dynamic_masking_vocab,
        verbose=args.verbose,
        skip_corrupt_records=args.skip_corrupt_records,
    )
    print(json.dumps(results, indent=2, sort_keys=True))
    return 0
