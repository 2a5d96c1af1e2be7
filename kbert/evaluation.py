"""Held-out evaluation of a pre-training model (`evaluate`), and loading one to evaluate.

`evaluate` reports Google's numbers: the MLM loss is the mean cross-entropy over every real masked
prediction of the whole set, the NSP loss the mean over every sequence, perplexity `exp(mlm_loss)`.
"""

from __future__ import annotations

import json
import logging
import math
import zipfile
from collections.abc import Sequence
from typing import Any

import h5py
import keras
import tensorflow as tf

from kbert import records as on_disk
from kbert.data import pretraining_dataset
from kbert.distribute import Placement, as_placement
from kbert.errors import ModelFileError, SettingError
from kbert.io import check_positive_int, resolve_model_file, write_json
from kbert.losses import compile_for_pretraining
from kbert.masking import DynamicMasking
from kbert.model import BertPretrainingModel, load_pretraining_model
from kbert.optimization import optimizer_step

logger = logging.getLogger(__name__)

# What compile_for_pretraining logs, and evaluate reports.
METRICS = ("loss", "mlm_loss", "nsp_loss", "mlm_accuracy", "nsp_accuracy")


def evaluate(
    model: keras.Model | str,
    eval_files: str | Sequence[str],
    batch_size: int = 256,
    output_path: str | None = None,
    strategy: str | tf.distribute.Strategy | Placement | None = None,
    tpu: str = "local",
    jit_compile: bool | str = "auto",
    dynamic_masking_vocab: str | None = None,
    verbose: int | str = "auto",
    skip_corrupt_records: bool = False,
) -> dict[str, Any]:
    """Held-out MLM and NSP loss and accuracy over every record of `eval_files`, and MLM perplexity.

    The losses are Google's: the MLM loss is the mean cross-entropy over every real masked
    prediction of the whole set, the NSP loss the mean over every sequence; perplexity is
    `exp(mlm_loss)`.

    Args:
        model: a compiled kbert model, a run directory (its `model.keras`) or a `.keras` file.
        eval_files: TFRecord glob(s) or directory.
        batch_size: global batch size (the last batch is padded with zero-weight rows; under
            JAX a multiple of the number of devices).
        output_path: write the results there as JSON, atomically (None: do not write).
        strategy: where to evaluate: "auto", "cpu", "mirrored", "tpu", a strategy or a
            `Placement`; default: the current one (see `kbert.distribute.as_placement`). A model
            object must have been built there.
        tpu: the TPU for strategy "tpu".
        jit_compile: XLA for a model loaded from a path.
        dynamic_masking_vocab: a `vocab.txt` to draw (deterministic) masks for unmasked records.
        verbose: Keras' progress bar.
        skip_corrupt_records: evaluate the readable records of damaged shards (the rest of such
            a shard is skipped) instead of raising `DamagedRecordsError`.

    Returns:
        A dict: `mlm_loss`, `mlm_accuracy`, `mlm_perplexity`, `nsp_loss`, `nsp_accuracy`,
        `loss`, `num_sequences` (evaluated), `eval_files`, `step` (the model's optimizer step,
        if known); with `skip_corrupt_records`, `skipped_records`: the records of damaged shards
        that `kbert_metadata.json` counts but could not be read (None when it counts none of them).

    Raises:
        DamagedRecordsError: a shard is damaged (without `skip_corrupt_records`).

    Examples:
    >>> import os, tempfile
    >>> from kbert import features
    >>> data = os.path.join(tempfile.mkdtemp(), "eval.tfrecord")
    >>> with tf.io.TFRecordWriter(data) as writer:
    ...     for i in range(5):
    ...         writer.write(features.to_example({
    ...             "input_ids": [2, 7, 4, 3], "input_mask": [1, 1, 1, 1],
    ...             "segment_ids": [0, 0, 1, 1], "masked_lm_positions": [2],
    ...             "masked_lm_ids": [9], "masked_lm_weights": [1.0],
    ...             "next_sentence_labels": [i % 2]}).SerializeToString())
    >>> import kbert
    >>> config = kbert.BertConfig.from_preset("tiny", vocab_size=32)
    >>> model = kbert.build_pretraining_model(config, 4, 1)
    >>> _ = kbert.compile_for_pretraining(model)
    >>> results = evaluate(model, data, batch_size=2, verbose=0)
    >>> results["num_sequences"]
    5
    """
    check_positive_int("batch_size", batch_size)
    placement = as_placement(strategy, tpu=tpu)
    placement.check_evaluation_batch_size(batch_size)
    model_file = None
    if not isinstance(model, keras.Model):
        model_file = resolve_model_file(model)
        model = load_model(model, strategy=placement, jit_compile=jit_compile)
    if not isinstance(model, BertPretrainingModel):
        raise SettingError(
            f"evaluate needs a kbert BertPretrainingModel, got {type(model).__name__}"
        )
    records = on_disk.find_records(eval_files)
    if skip_corrupt_records:
        counts, skipped = on_disk.readable_counts(records)
    else:
        counts = on_disk.count_records(records)
    dataset = evaluation_dataset(
        eval_files,
        batch_size,
        model,
        dynamic_masking_vocab,
        skip_corrupt_records,
        input_context=placement.input_context(),
    )
    try:
        # Keras' JAX trainer places each batch by the distribution in scope.
        with placement.scope():
            logs = model.evaluate(dataset, return_dict=True, verbose=verbose)
    except tf.errors.DataLossError as e:
        raise on_disk.damaged_records_error(
            records,
            e,
            "the evaluation stopped",
            "Find the damaged files with `kbert inspect-data --input_file "
            f"{eval_files if isinstance(eval_files, str) else ','.join(eval_files)}`, then "
            "replace them, or evaluate the rest with --skip_corrupt_records "
            "(skip_corrupt_records=True)",
        ) from None
    results: dict[str, Any] = {name: float(logs[name]) for name in METRICS}
    results["mlm_perplexity"] = _safe_exp(results["mlm_loss"])
    results["num_sequences"] = sum(counts.values())
    if skip_corrupt_records:
        results["skipped_records"] = skipped
    results["eval_files"] = eval_files if isinstance(eval_files, str) else list(eval_files)
    if model_file is not None:
        # load_model compiled a fresh optimizer: the trained one's step is read from the file.
        results["step"] = saved_optimizer_step(model_file)
    else:
        optimizer = getattr(model, "optimizer", None)
        results["step"] = (
            optimizer_step(model) if optimizer is not None and optimizer.built else None
        )
    if output_path:
        write_json(output_path, results)
        logger.info("evaluation written to %s", output_path)
    return results


def evaluation_dataset(
    eval_files: str | Sequence[str],
    batch_size: int,
    model: BertPretrainingModel,
    dynamic_masking_vocab: str | None,
    skip_corrupt_records: bool = False,
    input_context: tf.distribute.InputContext | None = None,
) -> tf.data.Dataset:
    """One deterministic pass over every (readable) record of `eval_files`, at the model's
    lengths; with an `input_context` (a JAX process), this pipeline's share of every batch."""
    return pretraining_dataset(
        eval_files,
        batch_size,
        max_seq_length=model.max_seq_length,
        max_predictions_per_seq=model.max_predictions_per_seq,
        is_training=False,
        dynamic_masking=(
            DynamicMasking.from_vocab_file(dynamic_masking_vocab) if dynamic_masking_vocab else None
        ),
        skip_corrupt_records=skip_corrupt_records,
        input_context=input_context,
    )


def load_model(
    path: str,
    strategy: str | tf.distribute.Strategy | Placement | None = None,
    tpu: str = "local",
    jit_compile: bool | str = "auto",
) -> BertPretrainingModel:
    """A kbert pre-training model from a run directory or `.keras` file, compiled for evaluation.

    Its variables are placed by `strategy`; under JAX call the model's `evaluate` / `predict`
    inside the same placement's scope (`kbert.evaluate` does).

    Args:
        path: a run directory (its `model.keras`) or a `.keras` file.
        strategy: "auto", "cpu", "mirrored", "tpu", a strategy, a `Placement`, or None (the
            current one).
        tpu: the TPU for strategy "tpu".
        jit_compile: XLA for evaluation.

    Examples:
    >>> import os, tempfile, kbert
    >>> config = kbert.BertConfig.from_preset("tiny", vocab_size=32)
    >>> model = kbert.build_pretraining_model(config, 8, 2)
    >>> path = os.path.join(tempfile.mkdtemp(), "model.keras")
    >>> model.save(path)
    >>> load_model(path, strategy="cpu").max_seq_length
    8
    """
    with as_placement(strategy, tpu=tpu).scope():
        model = load_pretraining_model(path)
        compile_for_pretraining(model, jit_compile=jit_compile)
    return model


def saved_optimizer_step(keras_file: str) -> int | None:
    """The optimizer updates a `.keras` model file had done when saved (its `iterations`).

    None, with a warning saying why, for a file saved without an optimizer (an uncompiled model).

    Args:
        keras_file: a `.keras` file (any `tf.io.gfile` path).

    Examples:
    >>> import kbert
    >>> config = kbert.BertConfig.from_preset("tiny", vocab_size=32)
    >>> model = kbert.build_pretraining_model(config, 8, 2)
    >>> _ = kbert.compile_for_pretraining(model)
    >>> model.save("model.keras")
    >>> saved_optimizer_step("model.keras")
    0
    """
    # Reads one scalar from the archive: rebuilding the saved optimizer would allocate its slot
    # variables, twice the model's size. Keras saves the optimizer's batch counter as its first
    # variable; under gradient accumulation `iterations` divides it by the batches per update.
    # A LossScaleOptimizer (fp16) counts in its inner optimizer, saved under `inner_optimizer`.
    with tf.io.gfile.GFile(keras_file, "rb") as f:
        try:
            archive = zipfile.ZipFile(f)
        # A file shorter than a zip's end record fails gfile's seek back from its end.
        except (zipfile.BadZipFile, tf.errors.InvalidArgumentError):
            raise ModelFileError(
                f"{keras_file}: not a .keras file (expected a zip archive)"
            ) from None
        with archive:
            config = json.loads(archive.read("config.json"))
            optimizer = (config.get("compile_config") or {}).get("optimizer")
            group = "optimizer"
            while optimizer is not None and "inner_optimizer" in optimizer["config"]:
                optimizer, group = (
                    optimizer["config"]["inner_optimizer"],
                    f"{group}/inner_optimizer",
                )
            counter = None
            if optimizer is not None and "model.weights.h5" in archive.namelist():
                with archive.open("model.weights.h5") as weights, h5py.File(weights, "r") as h5:
                    if f"{group}/vars/0" in h5:
                        counter = int(h5[f"{group}/vars/0"][()])
    if counter is None:
        logger.warning(
            "%s: saved without an optimizer (the model was not compiled), so the number of "
            "updates it was trained for is unknown (step: null)",
            keras_file,
        )
        return None
    return counter // (optimizer["config"].get("gradient_accumulation_steps") or 1)


def _safe_exp(value: float) -> float:
    try:
        return math.exp(value)
    except OverflowError:
        return math.inf
