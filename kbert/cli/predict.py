"""`kbert predict`: fill the `[MASK]`s of a text (and score a pair) with an exported SavedModel."""

from __future__ import annotations

import argparse

from kbert.cli import add_flag, report_devices


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `kbert predict`, named like `kbert.export.fill_mask`'s arguments."""
    add_flag(
        parser,
        "model",
        required=True,
        help="an export directory, EXPORT_BASE/NAME/VERSION (from kbert export)",
    )
    parser.add_argument("text", help='text with [MASK]s, e.g. "Paris is the [MASK] of France."')
    add_flag(
        parser,
        "text_b",
        default="",
        help="second segment: also print the probability that it follows TEXT",
    )


def run(args: argparse.Namespace) -> int:
    """Print the top-k fillings of every [MASK], then P(B follows A) for a pair."""
    from kbert.export import fill_mask

    report_devices("predict")
    result = fill_mask(args.model, args.text, args.text_b)
    if not result["masks"]:
        print("no [MASK] in the text (or none within the model's max_seq_length)")
    for number, mask in enumerate(result["masks"], 1):
        fillings = "  ".join(
            f"{token} {prob:.4f}" for token, prob in zip(mask["tokens"], mask["probs"])
        )
        print(f"[MASK] {number} (token {mask['position']}): {fillings}")
    if args.text_b:
        print(f"P(text_b follows text) = {result['is_next_prob']:.4f}")
    return 0
