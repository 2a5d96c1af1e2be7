"""`kbert inspect-data`: decode records as text and validate every one (wraps
`tfrecords_tools.inspect.inspect_records`); exits 1 naming the first violation."""

from __future__ import annotations

import argparse

from kbert.cli import add_flag


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `kbert inspect-data`."""
    parser.epilog = (
        "Example: kbert inspect-data --input_file 'data/train/*.tfrecord' --vocab_file vocab.txt"
    )
    add_flag(parser, "input_file", required=True, help="shard glob or the directory of the shards")
    add_flag(parser, "vocab_file", default=None, help="vocab.txt to show tokens as text")
    add_flag(parser, "num_records", type=int, default=3, help="records to print (3)")
    add_flag(parser, "max_seq_length", type=int, default=None, help="for records without metadata")
    add_flag(
        parser,
        "max_predictions_per_seq",
        type=int,
        default=None,
        help="for records without metadata",
    )
    add_flag(
        parser,
        "validate",
        type=bool,
        default=True,
        help="check every record (default true; --no_validate only decodes)",
    )


def run(args: argparse.Namespace) -> int:
    """Print the set's description, the decoded records and the validation verdict."""
    from kbert.progress import progress
    from tfrecords_tools.inspect import inspect_records

    report = inspect_records(
        args.input_file,
        num_records=args.num_records,
        vocab_file=args.vocab_file,
        max_seq_length=args.max_seq_length,
        max_predictions_per_seq=args.max_predictions_per_seq,
        validate=args.validate,
        progress=progress,
    )
    source = "kbert_metadata.json" if report.metadata is not None else "first record (no metadata)"
    print(
        f"{len(report.files)} file(s); max_seq_length {report.max_seq_length}, "
        f"max_predictions_per_seq {report.max_predictions_per_seq}, "
        f"{'masked' if report.masked else 'unmasked (dynamic masking)'} (from {source})"
    )
    for i, text in enumerate(report.examples):
        print(f"--- record {i}\n{text}")
    if report.validated:
        counts = report.nsp_label_counts
        print(
            f"OK: all {report.num_records:,} records valid; "
            f"NSP labels 0: {counts['0']:,} 1: {counts['1']:,}; "
            f"masked predictions {report.num_masked_predictions:,}"
        )
    return 0
