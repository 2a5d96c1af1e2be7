"""`kbert train`: pre-train with the joint MLM + NSP objective (wraps `kbert.train.pretrain`)."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from kbert.cli import add_flag

# kbert.distribute.STRATEGY_KINDS, repeated so that parsing flags needs no TensorFlow import.
STRATEGIES = ("auto", "cpu", "mirrored", "multi_worker", "tpu")
MIXED_PRECISION = ("auto", "none", "bf16", "fp16")


def _jit_compile(value: str) -> bool | str:
    choices = {"auto": "auto", "true": True, "on": True, "false": False, "off": False}
    if value.lower() not in choices:
        raise argparse.ArgumentTypeError(f"expected auto, true or false, got {value!r}")
    return choices[value.lower()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `kbert train`, named like `kbert.train.pretrain`'s arguments."""
    parser.epilog = (
        "Re-running the same command resumes an interrupted run exactly (weights, optimizer, "
        "learning rate, data position) from OUTPUT_DIR/backup. Example: kbert train --config mini "
        "--train-files 'data/train/*.tfrecord' --eval-files data/eval --output-dir runs/x "
        "--steps 10000 --batch-size 256"
    )
    data = parser.add_argument_group("model and data")
    add_flag(
        data,
        "config",
        required=True,
        help="preset (tiny, mini, small, medium, base, large; vocab size from the data's "
        "metadata) or a bert_config.json path",
    )
    add_flag(
        data,
        "train_files",
        required=True,
        help="training TFRecords: glob(s), comma-separated, or a directory (gs:// works)",
    )
    add_flag(
        data,
        "eval_files",
        default=None,
        help="held-out TFRecords evaluated at the end (and every --eval-interval steps)",
    )
    add_flag(
        data,
        "output_dir",
        required=True,
        help="run directory: checkpoints, backup, history.csv, TensorBoard logs, model",
    )
    add_flag(
        data,
        "init_from",
        default=None,
        help="continue from pre-trained weights: a Google TF1 checkpoint (bert_model.ckpt), "
        "a keras-hub preset or a Hugging Face BERT folder",
    )
    add_flag(data, "dropout", type=float, default=None, help="override the config's dropout rate")
    add_flag(
        data,
        "max_predictions_per_seq",
        type=int,
        default=None,
        help="masked positions per sequence for records without masks (default: metadata)",
    )
    add_flag(
        data,
        "dynamic_masking_vocab",
        default=None,
        metavar="VOCAB_TXT",
        help="draw masks in the input pipeline with this vocab.txt, new every epoch "
        "(needed for records written without masks)",
    )

    opt = parser.add_argument_group("optimisation")
    add_flag(opt, "steps", type=int, required=True, help="optimizer updates to train")
    add_flag(
        opt,
        "batch_size",
        type=int,
        default=256,
        help="global batch size, over all replicas (default: 256)",
    )
    add_flag(opt, "learning_rate", type=float, default=1e-4, help="peak learning rate (1e-4)")
    add_flag(
        opt,
        "warmup_steps",
        type=int,
        default=None,
        help="linear warmup updates before linear decay to 0 (default: 10%% of --steps)",
    )
    add_flag(opt, "weight_decay", type=float, default=0.01, help="AdamW weight decay (0.01)")
    add_flag(
        opt,
        "optimizer",
        choices=("adamw", "sgd"),
        default="adamw",
        help="adamw (Google's recipe, default) or sgd (plain SGD on the same schedule: no "
        "momentum, clipping or weight decay)",
    )
    add_flag(
        opt,
        "gradient_accumulation_steps",
        type=int,
        default=1,
        help="batches averaged per update (effective batch = batch size x this)",
    )
    add_flag(
        opt,
        "seed",
        type=int,
        default=0,
        help="seeds initial weights, data order and dynamic masks (default: 0)",
    )

    run = parser.add_argument_group("execution")
    add_flag(
        run,
        "strategy",
        choices=STRATEGIES,
        default="auto",
        help="auto (multi_worker if TF_CONFIG names a cluster, else TPU if attached, else "
        "Mirrored over >1 GPU, else one device), cpu, mirrored, multi_worker (every "
        "worker runs this command with its own TF_CONFIG), tpu",
    )
    add_flag(
        run,
        "tpu",
        default="local",
        help="TPU for --strategy tpu: 'local' (Colab / Cloud TPU VM), a name or grpc:// address",
    )
    add_flag(
        run,
        "steps_per_execution",
        type=int,
        default=1,
        help="batches per tf.function call (e.g. 100 on TPU; default: 1)",
    )
    add_flag(
        run,
        "jit_compile",
        type=_jit_compile,
        default="auto",
        metavar="{auto,true,false}",
        help="XLA compilation (Keras' auto: off on CPU and under strategies)",
    )
    add_flag(
        run,
        "mixed_precision",
        choices=MIXED_PRECISION,
        default="auto",
        help="auto (bf16 on TPU, else none), none, bf16, fp16 (loss scaling, for GPUs)",
    )

    logs = parser.add_argument_group("checkpoints and logs")
    add_flag(
        logs,
        "checkpoint_interval",
        type=int,
        default=None,
        help="updates between history rows, weight checkpoints and resume backups; must "
        "divide --steps (default: the largest divisor of --steps up to 1000)",
    )
    add_flag(
        logs,
        "keep_checkpoints",
        type=int,
        default=3,
        help="weight checkpoints kept in OUTPUT_DIR/checkpoints (default: 3)",
    )
    add_flag(
        logs,
        "eval_interval",
        type=int,
        default=None,
        help="updates between evaluations during training (a multiple of "
        "--checkpoint-interval; default: only at the end)",
    )
    add_flag(
        logs,
        "eval_batch_size",
        type=int,
        default=None,
        help="global batch size of the evaluation (default: --batch-size)",
    )
    add_flag(
        logs,
        "verbose",
        type=int,
        choices=(0, 1, 2),
        default=1,
        help="0 silent, 1 progress bar (default), 2 one line per interval",
    )


def run(args: argparse.Namespace) -> int:
    """Train, then print the evaluation."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from kbert.train import TrainingDivergedError, pretrain

    arguments = {k: v for k, v in vars(args).items() if k != "command"}
    try:
        result = pretrain(**arguments)
    except TrainingDivergedError as e:
        print(f"kbert train: error: {e}", file=sys.stderr)
        return 1
    print(f"run directory: {result.output_dir}")
    if result.eval_results is not None:
        print(json.dumps(result.eval_results, indent=2, sort_keys=True))
    return 0
