"""`kbert vocab`: learn a WordPiece vocabulary from a corpus (wraps `tfrecords_tools.vocab`)."""

from __future__ import annotations

import argparse

from kbert.cli import add_flag
from kbert.cli.create_data import add_corpus_arguments, corpus_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `kbert vocab`."""
    parser.epilog = (
        "Example: kbert vocab --input_file 'corpus/*.txt' --output_file vocab.txt "
        "--vocab_size 30522"
    )
    add_corpus_arguments(parser)
    add_flag(parser, "output_file", required=True, help="where to write vocab.txt")
    add_flag(
        parser, "vocab_size", type=int, default=30522, help="tokens, special ones included (30522)"
    )
    add_flag(
        parser,
        "do_lower_case",
        type=bool,
        default=True,
        help="learn an uncased vocabulary (default true)",
    )
    add_flag(parser, "min_frequency", type=int, default=2, help="minimum count of a merge (2)")


def run(args: argparse.Namespace) -> int:
    """Learn the vocabulary and print what was written."""
    from kbert.progress import progress
    from tfrecords_tools import corpora
    from tfrecords_tools.vocab import learn_vocab

    result = learn_vocab(
        corpora.sentences_of(corpus_from_args(args)),
        args.output_file,
        vocab_size=args.vocab_size,
        do_lower_case=args.do_lower_case,
        min_frequency=args.min_frequency,
        progress=progress,
    )
    print(
        f"wrote {result.vocab_file}: {result.vocab_size:,} tokens "
        f"({'uncased' if result.do_lower_case else 'cased'}; requested {result.requested_size:,}) "
        f"learned from {result.num_sentences:,} sentences in {result.seconds:.1f}s "
        f"with {result.learner}"
    )
    return 0
