"""`kbert create-data`: corpus -> pre-training TFRecords (wraps
`tfrecords_tools.create_pretraining_data.create_pretraining_data`).

Google's flags and defaults work unchanged (`--input_file --output_file --vocab_file
--do_lower_case --max_seq_length --max_predictions_per_seq --random_seed --dupe_factor
--masked_lm_prob --short_seq_prob --do_whole_word_mask`, also in absl's `--noflag` form).
`--runner beam --beam_pipeline_options "..."` makes the same shards with Apache Beam.
"""

from __future__ import annotations

import argparse
import logging

from kbert.cli import add_flag


def add_corpus_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags choosing the corpus (shared by `kbert vocab`)."""
    group = parser.add_argument_group(
        "corpus (default: the built-in corpus, Python's own documentation)"
    )
    add_flag(
        group,
        "input_file",
        default=None,
        help="text file(s): a path, glob, or comma-separated list; 'builtin' for the built-in "
        "corpus",
    )
    add_flag(
        group,
        "input_format",
        choices=("google", "lines", "blocks"),
        default="google",
        help="google: one sentence per line, blank line between documents (default); "
        "lines: one document per line; blocks: blank-line-separated documents of free text",
    )
    add_flag(
        group,
        "tfds_name",
        default=None,
        help="read a TFDS dataset instead, e.g. wikipedia/20230601.en",
    )
    add_flag(group, "tfds_split", default="train", help="TFDS split (default: train)")
    add_flag(
        group,
        "tfds_text_field",
        default="text",
        help="TFDS feature holding the text (default: text)",
    )
    add_flag(group, "tfds_data_dir", default=None, help="TFDS data directory")


def corpus_from_args(args):
    """The corpus object the corpus flags name."""
    from tfrecords_tools import corpora

    return corpora.resolve_corpus(
        args.input_file,
        args.input_format,
        args.tfds_name,
        args.tfds_text_field,
        args.tfds_split,
        args.tfds_data_dir,
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `kbert create-data` (Google's names and defaults, plus kbert's)."""
    parser.epilog = (
        "Writes <prefix>-00000-of-000NN.tfrecord shards and kbert_metadata.json beside them; "
        "re-running the same command keeps complete shards and finishes the rest. Example: "
        "kbert create-data --input_file 'corpus/*.txt' --output_file data/train/train "
        "--vocab_file vocab.txt --num_workers 2"
    )
    add_corpus_arguments(parser)
    out = parser.add_argument_group("output")
    add_flag(
        out,
        "output_file",
        required=True,
        help="shard path prefix (a trailing .tfrecord is dropped); the directory holds one data "
        "set",
    )
    add_flag(
        out,
        "vocab_file",
        required=True,
        help="vocab.txt ([PAD] at id 0; learn one with `kbert vocab`)",
    )
    add_flag(
        out,
        "num_shards",
        type=int,
        default=None,
        help="output files (default: one per MiB of input, at most 4096)",
    )
    add_flag(out, "compression", choices=("none", "gzip"), default="none", help="shard compression")
    add_flag(
        out,
        "overwrite",
        action="store_true",
        help="replace a data set made with other settings under the same prefix",
    )

    _add_algorithm_arguments(parser)
    _add_run_arguments(parser)


def _add_algorithm_arguments(parser: argparse.ArgumentParser) -> None:
    algo = parser.add_argument_group("Google's algorithm")
    add_flag(
        algo,
        "do_lower_case",
        type=bool,
        default=True,
        help="lower-case and strip accents (uncased vocab; default true)",
    )
    add_flag(algo, "max_seq_length", type=int, default=128, help="tokens per instance (128)")
    add_flag(
        algo,
        "max_predictions_per_seq",
        type=int,
        default=20,
        help="masked positions per instance at most (20)",
    )
    add_flag(
        algo, "random_seed", type=int, default=12345, help="seed of every random choice (12345)"
    )
    add_flag(
        algo,
        "dupe_factor",
        type=int,
        default=10,
        help="differently-masked passes over the corpus (10)",
    )
    add_flag(algo, "masked_lm_prob", type=float, default=0.15, help="share of tokens masked (0.15)")
    add_flag(
        algo,
        "short_seq_prob",
        type=float,
        default=0.1,
        help="probability of a shorter target length (0.1)",
    )
    add_flag(
        algo,
        "do_whole_word_mask",
        type=bool,
        default=False,
        help="mask all word pieces of a word together (default false)",
    )


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    run = parser.add_argument_group("kbert")
    add_flag(
        run,
        "num_workers",
        type=int,
        default=1,
        help="processes (output is byte-identical for any number; default 1)",
    )
    add_flag(
        run,
        "negative_pool_size",
        type=int,
        default=1000,
        help="documents per block; random next segments come from this block and the one "
        "before, which bounds memory (default 1000)",
    )
    add_flag(
        run,
        "no_mask",
        action="store_true",
        help="write unmasked records (input_ids, input_mask, segment_ids, next_sentence_labels) "
        "for dynamic masking in kbert.data",
    )
    add_flag(run, "quiet", action="store_true", help="no progress reports")

    beam = parser.add_argument_group('Apache Beam (pip install "kbert[beam]")')
    add_flag(
        beam,
        "runner",
        choices=("local", "beam"),
        default="local",
        help="local: --num_workers processes on this machine (default); beam: an Apache Beam "
        "pipeline (Dataflow, Flink, Spark, or Beam's local runners) writing the same bytes",
    )
    add_flag(
        beam,
        "beam_pipeline_options",
        default=None,
        metavar="FLAGS",
        help="Beam's own flags in one quoted string, given after '=' (a value starting with -- "
        'would be read as a flag), e.g. --beam_pipeline_options="--runner=DataflowRunner '
        '--project=P --region=R --temp_location=gs://B/tmp --setup_file=./setup.py" or '
        '--beam_pipeline_options="--runner=FnApiRunner --direct_num_workers=2 '
        '--direct_running_mode=multi_processing"',
    )


def run(args: argparse.Namespace) -> int:
    """Create the records and print a summary."""
    from kbert.progress import progress
    from tfrecords_tools.create_pretraining_data import create_pretraining_data

    logging.basicConfig(
        level=logging.WARNING, format="kbert create-data: %(levelname)s: %(message)s"
    )
    summary = create_pretraining_data(
        corpus_from_args(args),
        args.output_file,
        args.vocab_file,
        do_lower_case=args.do_lower_case,
        max_seq_length=args.max_seq_length,
        max_predictions_per_seq=args.max_predictions_per_seq,
        random_seed=args.random_seed,
        dupe_factor=args.dupe_factor,
        masked_lm_prob=args.masked_lm_prob,
        short_seq_prob=args.short_seq_prob,
        do_whole_word_mask=args.do_whole_word_mask,
        input_format=args.input_format,
        num_workers=args.num_workers,
        num_shards=args.num_shards,
        negative_pool_size=args.negative_pool_size,
        compression=None if args.compression == "none" else args.compression,
        mask=not args.no_mask,
        overwrite=args.overwrite,
        progress=None if args.quiet else progress,
        runner=args.runner,
        beam_pipeline_options=args.beam_pipeline_options,
    )
    counts = summary.nsp_label_counts
    rate = summary.input_bytes / 1e6 / max(summary.seconds, 1e-9)
    print(
        f"wrote {summary.num_instances:,} instances in {len(summary.output_files)} shard(s) "
        f"({summary.shards_written} written, {summary.shards_kept} kept from an earlier run) "
        f"in {summary.seconds:.1f}s"
    )
    print(
        f"  documents {summary.num_documents:,}  tokens {summary.num_tokens:,}  "
        f"input {summary.input_bytes / 1e6:.2f} MB ({rate:.2f} MB/s)"
    )
    print(
        f"  NSP labels: 0 (B follows A) {counts.get('0', 0):,}  "
        f"1 (B random) {counts.get('1', 0):,}  -> {summary.is_random_share:.1%} random"
    )
    if summary.masked:
        print(f"  mean masked positions per instance {summary.mean_masked_positions:.2f}")
    else:
        print("  unmasked records (--no_mask): masks are drawn in the input pipeline")
    print(f"  invalid UTF-8 sequences replaced {summary.invalid_utf8_replaced:,}")
    print(f"  shards {summary.output_files[0]} ... ; metadata {summary.metadata_file}")
    return 0
