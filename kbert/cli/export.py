"""`kbert export`: a run's model → a TF Serving SavedModel in `EXPORT_BASE/NAME/VERSION/`."""

from __future__ import annotations

import argparse
import logging
import os

from kbert.cli import add_flag, report_devices


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `kbert export`, named like `kbert.export.export_for_serving`'s arguments."""
    add_flag(
        parser, "model", required=True, help="a run directory (its model.keras) or a .keras file"
    )
    add_flag(parser, "vocab_file", required=True, help="the vocab.txt the model was trained with")
    add_flag(
        parser,
        "export_base",
        default="saved_models",
        help="TF Serving's model base directory (default: saved_models)",
    )
    add_flag(parser, "name", default="kbert", help="model name, a directory under EXPORT_BASE")
    add_flag(
        parser,
        "version",
        type=int,
        default=None,
        help="version directory (default: the next integer; an existing one is an error)",
    )
    add_flag(parser, "top_k", type=int, default=5, help="tokens reported per [MASK] (default 5)")
    add_flag(
        parser,
        "do_lower_case",
        type=bool,
        default=True,
        help="lower-case and strip accents in the text signatures (uncased vocab; default)",
    )


def run(args: argparse.Namespace) -> int:
    """Export and print the version directory."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from kbert.export import SIGNATURES, export_for_serving

    report_devices("export")
    path = export_for_serving(
        args.model,
        args.vocab_file,
        export_base=args.export_base,
        name=args.name,
        version=args.version,
        top_k=args.top_k,
        do_lower_case=args.do_lower_case,
    )
    print(path)
    print(f"signatures: {', '.join(SIGNATURES)}")
    model_base_path = os.path.dirname(path)
    if "://" not in model_base_path:
        model_base_path = os.path.abspath(model_base_path)
    print(
        f"serve with: tensorflow_model_server --rest_api_port=8501 --model_name={args.name} "
        f"--model_base_path={model_base_path}"
    )
    return 0
