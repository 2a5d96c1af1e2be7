"""`kbert export`: a run's model → a TF Serving SavedModel in `EXPORT_BASE/NAME/VERSION/`, or
(`--format huggingface`) a Hugging Face BERT folder in `OUTPUT_DIR` that `transformers` loads."""

from __future__ import annotations

import argparse
import logging
import os

from kbert.cli import add_flag, report_devices
from kbert.errors import SettingError

SAVEDMODEL, HUGGINGFACE = "savedmodel", "huggingface"
FORMATS = (SAVEDMODEL, HUGGINGFACE)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `kbert export`, named like `kbert.export.export_for_serving`'s arguments."""
    add_flag(
        parser,
        "model",
        required=True,
        help="a run directory (its model.keras) or a .keras file; kbert finetune's "
        "best_model.keras exports a classifier taking raw text",
    )
    add_flag(
        parser,
        "format",
        choices=FORMATS,
        default=SAVEDMODEL,
        help="savedmodel: TF Serving (default); huggingface: a transformers BertForPreTraining "
        "folder in --output_dir",
    )
    add_flag(
        parser,
        "output_dir",
        default=None,
        help="--format huggingface: the folder to write (replaced if it exists)",
    )
    add_flag(
        parser,
        "vocab_file",
        default=None,
        help="the vocab.txt the model was trained with (default: the one the run keeps)",
    )
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
        default=None,
        help="lower-case and strip accents (uncased vocab); default: true for a SavedModel's "
        "text signatures, what the run's data recorded (kbert_metadata.json) for huggingface",
    )


def run(args: argparse.Namespace) -> int:
    """Export and print where: the version directory, or the Hugging Face folder."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.format == HUGGINGFACE:
        return _run_huggingface(args)
    if args.output_dir is not None:
        raise SettingError(
            "--output_dir is for --format huggingface; a SavedModel goes to "
            "--export_base/--name/--version"
        )
    from kbert.classifier_export import export_classifier, finetune_results_of
    from kbert.export import SIGNATURES, export_for_serving

    report_devices("export")
    fine_tuned = finetune_results_of(args.model)
    if fine_tuned is not None:
        path = export_classifier(
            args.model,
            args.vocab_file,
            args.export_base,
            fine_tuned["max_seq_length"],
            fine_tuned["labels"],
            name=args.name,
            version=args.version,
            do_lower_case=(
                fine_tuned["do_lower_case"] if args.do_lower_case is None else args.do_lower_case
            ),
        )
        print(path)
        return 0
    path = export_for_serving(
        args.model,
        args.vocab_file,
        export_base=args.export_base,
        name=args.name,
        version=args.version,
        top_k=args.top_k,
        do_lower_case=True if args.do_lower_case is None else args.do_lower_case,
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


def _run_huggingface(args: argparse.Namespace) -> int:
    """Write the Hugging Face folder and print it, with the lines that load it in PyTorch."""
    if args.output_dir is None:
        raise SettingError("--format huggingface needs --output_dir, the folder to write")
    if args.version is not None:
        raise SettingError("--version is for --format savedmodel; --output_dir is the folder")
    from kbert.huggingface import save_huggingface

    report_devices("export")
    path = save_huggingface(args.model, args.output_dir, args.vocab_file, args.do_lower_case)
    print(path)
    print(
        "load with: from transformers import BertForPreTraining, BertTokenizerFast; "
        f"model = BertForPreTraining.from_pretrained({path!r}); "
        f"tokenizer = BertTokenizerFast.from_pretrained({path!r})"
    )
    return 0
