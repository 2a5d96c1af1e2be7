"""Input-pipeline throughput against what training consumes, on the `mini` shape.

Writes synthetic shards in Google's layout (seq 128, 20 predictions, vocab 30522, 90 % of
sequences full length as Google's `short_seq_prob` 0.1 gives), then measures sequences/s that
`kbert.pretraining_dataset` delivers at batch 32 for: masked records, GZIP masked records, and
unmasked records with dynamic masking (bert-base-uncased's special-token layout). In the same
run it measures the `mini` training step with `benchmarks/train_step.py`'s `run_variant` (XLA
off and on) and prints each pipeline's ratio to the faster one. Goal: >= 20x.

    python benchmarks/input_pipeline.py [--batches 300] [--train_steps 10]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from train_step import PREDICTIONS, SEQ, SHAPES, VOCAB, run_variant  # noqa: E402

import kbert  # noqa: E402,F401  (first: kbert's TensorFlow defaults apply before TF starts)
from kbert import features  # noqa: E402
from kbert.data import pretraining_dataset  # noqa: E402
from kbert.masking import DynamicMasking  # noqa: E402

MINI = SHAPES["mini"]
BATCH = MINI.batch

SHARDS, RECORDS_PER_SHARD = 4, 2_500


def bert_base_vocab(path: str) -> str:
    """A vocab.txt with bert-base-uncased's layout of special tokens and its size."""
    tokens = ["[PAD]"] + [f"[unused{i}]" for i in range(99)]
    tokens += ["[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"[unused{i}]" for i in range(99, 994)]
    tokens += [f"word{i}" for i in range(VOCAB - len(tokens))]
    with open(path, "w") as f:
        f.write("\n".join(tokens) + "\n")
    return path


def write_shards(directory: str, masked: bool, gzip: bool, seed: int = 0) -> str:
    """Google-layout shards of random sequences; returns their glob."""
    rng = np.random.default_rng(seed)
    for shard in range(SHARDS):
        path = os.path.join(directory, f"part-{shard:05d}-of-{SHARDS:05d}.tfrecord")
        with tf.io.TFRecordWriter(path, options="GZIP" if gzip else None) as writer:
            for _ in range(RECORDS_PER_SHARD):
                real = SEQ if rng.random() < 0.9 else int(rng.integers(10, SEQ))
                ids = np.zeros(SEQ, np.int64)
                ids[:real] = rng.integers(999, VOCAB, real)
                ids[0], ids[real // 2], ids[real - 1] = 101, 102, 102
                record = {
                    "input_ids": ids,
                    "input_mask": (np.arange(SEQ) < real).astype(np.int64),
                    "segment_ids": ((np.arange(SEQ) > real // 2) & (np.arange(SEQ) < real)).astype(
                        np.int64
                    ),
                    "next_sentence_labels": [int(rng.integers(0, 2))],
                }
                if masked:
                    k = min(PREDICTIONS, max(1, round(real * 0.15)))
                    positions = np.sort(rng.choice(np.arange(1, real - 1), k, replace=False))
                    record["masked_lm_positions"] = np.pad(positions, (0, PREDICTIONS - k))
                    record["masked_lm_ids"] = np.pad(ids[positions], (0, PREDICTIONS - k))
                    record["masked_lm_weights"] = np.pad(np.ones(k), (0, PREDICTIONS - k))
                    ids[positions] = 103
                writer.write(features.to_example(record).SerializeToString())
    return os.path.join(directory, "part-*")


def pipeline_rate(dataset: tf.data.Dataset, batches: int, warmup: int) -> float:
    """Sequences per second the dataset's iterator delivers after `warmup` batches."""
    iterator = iter(dataset)
    for _ in range(warmup):
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * BATCH / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--train_steps", type=int, default=10)
    args = parser.parse_args()

    work = tempfile.mkdtemp(prefix="kbert-input-bench-")
    masking = DynamicMasking.from_vocab_file(bert_base_vocab(os.path.join(work, "vocab.txt")))
    cases = {}
    for name, masked, gzip in (
        ("masked records", True, False),
        ("masked records, GZIP", True, True),
        ("unmasked + dynamic masking", False, False),
    ):
        directory = os.path.join(work, name.replace(" ", "_").replace(",", "").replace("+", ""))
        os.makedirs(directory)
        pattern = write_shards(directory, masked, gzip)
        dataset = pretraining_dataset(
            pattern,
            BATCH,
            max_predictions_per_seq=PREDICTIONS,
            seed=0,
            dynamic_masking=None if masked else masking,
        )
        cases[name] = pipeline_rate(dataset, args.batches, args.warmup)

    training = {
        label: run_variant(variant, MINI, args.train_steps, 3)["sequences_per_second"]
        for label, variant in (("XLA off", "kbert"), ("XLA on", "kbert_xla"))
    }
    consumed = max(training.values())

    print(
        f"shape: seq {SEQ}, P {PREDICTIONS}, vocab {VOCAB}, batch {BATCH}; "
        f"{os.cpu_count()} CPU cores; {SHARDS} shards x {RECORDS_PER_SHARD} records; "
        f"{args.batches} timed batches"
    )
    for label, rate in training.items():
        print(f"{'mini training step, ' + label:40s} {rate:10.1f} seq/s")
    print(f"{'input pipeline':40s} {'seq/s':>10s} {'x training':>12s}  (goal >= 20x)")
    for name, rate in cases.items():
        print(f"{name:40s} {rate:10.0f} {rate / consumed:11.0f}x")


if __name__ == "__main__":
    main()
