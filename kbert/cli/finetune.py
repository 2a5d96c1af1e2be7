"""`kbert finetune`: classification / regression on top of a pre-trained encoder, or from random
init (wraps `kbert.finetuning.finetune`)."""

from __future__ import annotations

import argparse
import json
import logging

from kbert.cli import add_flag, report_devices
from kbert.cli.train import add_verbose_flag


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `kbert finetune`, named like `kbert.finetune`'s arguments."""
    parser.epilog = (
        "Example: kbert finetune --init_from runs/x --train_file glue/MRPC/train.tsv "
        "--eval_file glue/MRPC/dev.tsv --output_dir runs/x/mrpc --learning_rate 2e-5,3e-5,5e-5; "
        "or --tfds_name glue/mrpc instead of the three files"
    )
    data = parser.add_argument_group("data")
    add_flag(data, "train_file", help="training rows (.tsv, .csv or .jsonl; or --tfds_name)")
    add_flag(data, "eval_file", help="dev rows: scored, and the best cell chosen")
    add_flag(data, "test_file", help="rows to predict with the best model (labels not needed)")
    add_flag(
        data,
        "tfds_name",
        help="a TFDS dataset instead of the files, e.g. glue/mrpc (train, validation, test splits)",
    )
    add_flag(data, "tfds_data_dir", help="TFDS' data directory")
    add_flag(data, "output_dir", required=True, help="where results and the best model go")
    add_flag(data, "text_column", help="the first text's column (default: sentence, sentence1)")
    add_flag(data, "text_pair_column", help="the second text's column (default: sentence2)")
    add_flag(data, "label_column", help="the label's column (default: label)")
    add_flag(
        data,
        "regression",
        type=bool,
        default=None,
        help="predict a number (default: when a training label is a non-integer number)",
    )
    add_flag(data, "max_seq_length", type=int, default=128, help="tokens per sequence")
    model = parser.add_argument_group("encoder")
    add_flag(
        model,
        "init_from",
        help="pre-trained encoder: kbert run or .keras, Google "
        "checkpoint, keras-hub preset, Hugging Face folder",
    )
    add_flag(model, "config", help="random init (the baseline): preset name or bert_config.json")
    add_flag(model, "vocab_file", help="vocab.txt (default: the one with --init_from)")
    add_flag(
        model,
        "do_lower_case",
        type=bool,
        default=None,
        help="lower-case and strip accents (default: the source's tokenizer, else true)",
    )
    add_flag(model, "dropout", type=float, help="override the encoder's and head's dropout")
    grid = parser.add_argument_group("protocol (each grid flag: one value or a comma list)")
    add_flag(grid, "learning_rate", default="2e-5", help="peak learning rate(s) (default: 2e-5)")
    add_flag(grid, "batch_size", default="32", help="batch size(s) (default: 32)")
    add_flag(grid, "epochs", default="3", help="epoch count(s) (default: 3)")
    add_flag(grid, "seed", default="0", help="seed(s) of the head and the data order")
    add_flag(grid, "warmup_proportion", type=float, default=0.1, help="warmup share of the updates")
    add_flag(
        grid,
        "strategy",
        default="auto",
        choices=("auto", "cpu", "mirrored", "multi_worker", "tpu"),
        help="where to train (as kbert train)",
    )
    add_flag(grid, "tpu", default="local", help="TPU for --strategy tpu")
    add_flag(
        grid,
        "job_addresses",
        help="JAX run of several processes: host:port of process 0 (as kbert train; default: "
        "KERAS_DISTRIBUTION_JOB_ADDRESSES); process 0 writes output_dir, the others nothing",
    )
    add_flag(
        grid,
        "num_processes",
        type=int,
        help="JAX run of several processes: how many (default: KERAS_DISTRIBUTION_NUM_PROCESSES)",
    )
    add_flag(
        grid,
        "process_id",
        type=int,
        help="JAX run of several processes: this one's id (default: KERAS_DISTRIBUTION_PROCESS_ID)",
    )
    export = parser.add_argument_group("export")
    add_flag(
        export,
        "export_base",
        help="also export the best model as a TF Serving SavedModel taking raw text, to "
        "EXPORT_BASE/EXPORT_NAME/<next version>/ (as kbert export --export_base)",
    )
    add_flag(export, "export_name", default="classifier", help="the exported model's name")
    add_verbose_flag(grid)


def run(args: argparse.Namespace) -> int:
    """Fine-tune every grid cell, print the table and where the results are (a score within
    noise of the majority-class baseline is logged as a warning)."""
    from kbert.distribute import initialize_distribution

    # Before anything (the device report) starts JAX: a run of several processes joins first.
    initialize_distribution(args.job_addresses, args.num_processes, args.process_id)
    report_devices("finetune")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from kbert.finetuning import RESULTS_FILE, finetune

    settings = {k: v for k, v in vars(args).items() if k != "command"}
    result = finetune(**settings)
    print(result.table, end="")
    print(json.dumps({"best": result.results["best"]}, sort_keys=True))
    if result.written:
        print(f"results: {result.output_dir}/{RESULTS_FILE}")
    return 0
