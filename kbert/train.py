"""Pre-training runs: `pretrain` (strategy, data, model, callbacks, fit, evaluation) and `evaluate`.

A run directory holds everything a run writes:

    bert_config.json        the encoder's config (Google's layout)
    run_config.json         the arguments of the run (checked again on resume)
    backup/                 keras BackupAndRestore state: weights, optimizer, epoch (exact resume)
    checkpoints/            ckpt-<step>.weights.h5, the last `keep_checkpoints` intervals
    history.csv             one row per interval: step, losses, accuracies, learning_rate and
                            (with eval_interval) val_* held-out losses and accuracies
    logs/                   TensorBoard scalars
    model.keras             the final pre-training model (reloads with `keras.saving.load_model`)
    encoder.weights.h5      the final encoder's weights (keras-hub `BertBackbone`)
    eval_results.json       held-out MLM/NSP loss and accuracy, MLM perplexity

Training runs in "epochs" of `checkpoint_interval` optimizer steps: every epoch end writes a
history row, a weight checkpoint and the resume backup. Keras' BackupAndRestore restores the
weights, the optimizer (its step, hence the learning rate) and the epoch, but not the position in
an infinite dataset, so the training dataset starts where the restored step left off (`skip`
over a seeded, deterministic pipeline).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import posixpath
from collections.abc import Iterator, Sequence
from typing import Any

import keras
import tensorflow as tf

from kbert import checkpoints
from kbert.config import PRESET_SIZES, BertConfig, resolve_config
from kbert.data import describe, pretraining_dataset
from kbert.distribute import resolve_strategy, worker_directory
from kbert.io import (
    MODEL_FILE,
    atomic_path,
    check_positive_int,
    read_json,
    resolve_model_file,
    write_json,
)
from kbert.losses import compile_for_pretraining
from kbert.masking import DynamicMasking
from kbert.model import BertPretrainingModel, build_pretraining_model, load_pretraining_model
from kbert.optimization import WarmupLinearDecay, create_optimizer

logger = logging.getLogger(__name__)

MIXED_PRECISION_POLICIES = {
    "none": "float32",
    "bf16": "mixed_bfloat16",
    "fp16": "mixed_float16",
}
OPTIMIZERS = ("adamw", "sgd")
DEFAULT_MAX_CHECKPOINT_INTERVAL = 1000

BERT_CONFIG_FILE = "bert_config.json"
RUN_CONFIG_FILE = "run_config.json"
BACKUP_DIR = "backup"
CHECKPOINT_DIR = "checkpoints"
HISTORY_FILE = "history.csv"
TENSORBOARD_DIR = "logs"
ENCODER_WEIGHTS_FILE = "encoder.weights.h5"
EVAL_RESULTS_FILE = "eval_results.json"
_METRICS = ("loss", "mlm_loss", "nsp_loss", "mlm_accuracy", "nsp_accuracy")
# history.csv: "epoch" (Keras' interval index), then these.
HISTORY_COLUMNS = ("step", *_METRICS, "learning_rate", *(f"val_{m}" for m in _METRICS))
# Arguments that must not change when a run is resumed: they fix the data order and the schedule.
_RESUME_INVARIANTS = (
    "train_files",
    "batch_size",
    "steps",
    "warmup_steps",
    "learning_rate",
    "checkpoint_interval",
    "gradient_accumulation_steps",
    "seed",
    "optimizer",
)


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; training stopped before the next checkpoint."""


@dataclasses.dataclass
class PretrainResult:
    """What `pretrain` returns.

    Args:
        model: the trained `BertPretrainingModel` (compiled).
        history: per-interval logs of this call (`keras.callbacks.History.history`).
        eval_results: the evaluation on `eval_files`, or None without them.
        output_dir: the run directory.
    """

    model: BertPretrainingModel
    history: dict[str, list[float]]
    eval_results: dict[str, Any] | None
    output_dir: str


def pretrain(
    config: BertConfig | str,
    train_files: str | Sequence[str],
    output_dir: str,
    steps: int,
    batch_size: int = 256,
    eval_files: str | Sequence[str] | None = None,
    learning_rate: float = 1e-4,
    warmup_steps: int | None = None,
    weight_decay: float = 0.01,
    optimizer: str = "adamw",
    strategy: str | tf.distribute.Strategy = "auto",
    tpu: str = "local",
    steps_per_execution: int = 1,
    jit_compile: bool | str = "auto",
    mixed_precision: str = "auto",
    gradient_accumulation_steps: int = 1,
    checkpoint_interval: int | None = None,
    keep_checkpoints: int = 3,
    eval_interval: int | None = None,
    seed: int = 0,
    dropout: float | None = None,
    max_predictions_per_seq: int | None = None,
    dynamic_masking_vocab: str | None = None,
    eval_batch_size: int | None = None,
    init_from: str | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    verbose: int | str = "auto",
) -> PretrainResult:
    """Pre-train BERT with the joint MLM + NSP objective; resumes a run found in `output_dir`.

    Builds the model, optimizer and metrics inside the strategy's scope, trains `steps`
    optimizer updates on `train_files` in intervals of `checkpoint_interval` steps (each ends with
    a history row, a weight checkpoint and a resume backup), then evaluates on `eval_files` and
    saves the final model and encoder weights. Running the same call again after an interruption
    continues exactly where the last backup left off (weights, optimizer, learning rate and data
    position); after a finished run it only re-evaluates and re-saves.

    Args:
        config: a `BertConfig`, a preset name (`tiny` … `large`; its vocab_size is taken from
            the data's metadata) or a `bert_config.json` path.
        train_files: TFRecord glob(s) or directory (any `tf.io.gfile` path, e.g. `gs://`).
        output_dir: the run directory (see the module docstring for its contents).
        steps: optimizer updates to train.
        batch_size: global batch size (sequences per update and per replica group; with
            gradient accumulation, per accumulated batch).
        eval_files: held-out TFRecords evaluated at the end (None: no evaluation).
        learning_rate: peak learning rate.
        warmup_steps: linear warmup updates (default: 10 % of `steps`).
        weight_decay: AdamW's decoupled weight decay.
        optimizer: "adamw" (Google's recipe) or "sgd" (plain SGD on the same schedule: no
            momentum, clipping or weight decay; a baseline whose updates are easy to check).
        strategy: "auto", "cpu", "mirrored", "multi_worker", "tpu" (see `resolve_strategy`) or a
            strategy. Under "multi_worker" every worker runs `pretrain` with the same arguments;
            the chief writes `output_dir`, the others `output_dir/workers/<task>-<id>`.
        tpu: the TPU for strategy "tpu"/"auto": "local" (TPU VM), a name or a grpc address.
        steps_per_execution: batches run per `tf.function` call (large values help TPUs).
        jit_compile: XLA compilation: True, False or "auto" (Keras: off on CPU and strategies).
        mixed_precision: "none", "bf16", "fp16" (with loss scaling, for GPUs) or "auto"
            (bf16 on TPU, none elsewhere).
        gradient_accumulation_steps: batches averaged per update.
        checkpoint_interval: updates between history rows, checkpoints and backups; must divide
            `steps` (default: the largest divisor of `steps` up to 1000).
        keep_checkpoints: weight checkpoints kept in `checkpoints/`.
        eval_interval: updates between evaluations on `eval_files` during training, logged as
            `val_*` in the history; a multiple of `checkpoint_interval` (None: at the end only).
        seed: seeds the initial weights, data order and dynamic masks.
        dropout: overrides the config's dropout rates.
        max_predictions_per_seq: P for records without masks (default: their metadata).
        dynamic_masking_vocab: a `vocab.txt`: draw masks in the pipeline, new each epoch
            (needed for records written without masks).
        eval_batch_size: global batch size of the evaluation (default: `batch_size`).
        init_from: pre-trained weights to continue from: a Google TF1 checkpoint, a keras-hub
            preset or a Hugging Face BERT folder (`kbert.checkpoints.init_from`; what it detected
            is logged). Ignored when resuming: the backup holds newer weights.
        callbacks: extra Keras callbacks, run after kbert's own.
        verbose: Keras' progress bar: 0, 1 (bar), 2 (one line per interval) or "auto".

    Returns:
        A `PretrainResult` with the model, the history and the evaluation.

    Raises:
        TrainingDivergedError: the loss became NaN or infinite; the checkpoints and the backup
            of the last finished interval are kept.

    Examples:
    >>> import os, tempfile
    >>> from kbert import features
    >>> data = tempfile.mkdtemp()
    >>> with tf.io.TFRecordWriter(os.path.join(data, "train.tfrecord")) as writer:
    ...     for i in range(16):
    ...         writer.write(features.to_example({
    ...             "input_ids": [2, 7 + i, 4, 3], "input_mask": [1, 1, 1, 1],
    ...             "segment_ids": [0, 0, 1, 1], "masked_lm_positions": [2],
    ...             "masked_lm_ids": [9], "masked_lm_weights": [1.0],
    ...             "next_sentence_labels": [i % 2]}).SerializeToString())
    >>> config = BertConfig(vocab_size=32, hidden_size=16, num_hidden_layers=1,
    ...                     num_attention_heads=2, intermediate_size=32)
    >>> result = pretrain(config, data, tempfile.mkdtemp(), steps=4, batch_size=8,
    ...                   eval_files=data, verbose=0)
    >>> result.eval_results["num_sequences"], result.history["step"]
    (16, [4])
    """
    check_positive_int("steps", steps)
    check_positive_int("batch_size", batch_size)
    check_positive_int("steps_per_execution", steps_per_execution)
    check_positive_int("gradient_accumulation_steps", gradient_accumulation_steps)
    check_positive_int("keep_checkpoints", keep_checkpoints)
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
    if mixed_precision not in (*MIXED_PRECISION_POLICIES, "auto"):
        raise ValueError(
            f"mixed_precision must be one of none, bf16, fp16, auto, got {mixed_precision!r}"
        )
    if warmup_steps is None:
        warmup_steps = steps // 10
    if not 0 <= warmup_steps <= steps:
        raise ValueError(f"warmup_steps must be between 0 and steps ({steps}), got {warmup_steps}")
    if checkpoint_interval is None:
        checkpoint_interval = _largest_divisor(steps, DEFAULT_MAX_CHECKPOINT_INTERVAL)
    check_positive_int("checkpoint_interval", checkpoint_interval)
    if steps % checkpoint_interval:
        raise ValueError(
            f"checkpoint_interval ({checkpoint_interval}) must divide steps ({steps}): training "
            "runs in whole intervals so that every one ends with a checkpoint"
        )
    if eval_interval is not None:
        check_positive_int("eval_interval", eval_interval)
        if not eval_files:
            raise ValueError("eval_interval needs eval_files")
        if eval_interval % checkpoint_interval:
            raise ValueError(
                f"eval_interval ({eval_interval}) must be a multiple of checkpoint_interval "
                f"({checkpoint_interval})"
            )

    # First: a multi-worker strategy must exist before TensorFlow runs anything (reading the data).
    if not isinstance(strategy, tf.distribute.Strategy):
        strategy = resolve_strategy(strategy, tpu=tpu)
    train_info = describe(train_files, count_records=False)
    max_seq_length = train_info["max_seq_length"]
    max_predictions_per_seq = max_predictions_per_seq or train_info["max_predictions_per_seq"]
    if not max_predictions_per_seq:
        raise ValueError(
            f"{train_info['files'][0]}: max_predictions_per_seq is needed for records without "
            "masks and no metadata gives it; pass max_predictions_per_seq"
        )
    bert_config = _resolve_bert_config(config, train_info, dropout)
    dynamic_masking = (
        DynamicMasking.from_vocab_file(dynamic_masking_vocab) if dynamic_masking_vocab else None
    )

    on_tpu = isinstance(strategy, tf.distribute.TPUStrategy)
    if mixed_precision == "auto":
        mixed_precision = "bf16" if on_tpu else "none"

    run_config = {
        "config": config if isinstance(config, str) else "BertConfig",
        "train_files": train_files if isinstance(train_files, str) else list(train_files),
        "eval_files": eval_files,
        "steps": steps,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "warmup_steps": warmup_steps,
        "weight_decay": weight_decay,
        "optimizer": optimizer,
        "strategy": type(strategy).__name__,
        "num_replicas": strategy.num_replicas_in_sync,
        "steps_per_execution": steps_per_execution,
        "jit_compile": jit_compile,
        "mixed_precision": mixed_precision,
        "gradient_accumulation_steps": gradient_accumulation_steps,
        "checkpoint_interval": checkpoint_interval,
        "keep_checkpoints": keep_checkpoints,
        "seed": seed,
        "max_seq_length": max_seq_length,
        "max_predictions_per_seq": max_predictions_per_seq,
        "dynamic_masking_vocab": dynamic_masking_vocab,
        "init_from": init_from,
    }
    output_dir = worker_directory(output_dir, strategy)
    tf.io.gfile.makedirs(output_dir)
    backup_dir = posixpath.join(output_dir, BACKUP_DIR)
    initial_epoch = _restored_epoch(backup_dir)
    if initial_epoch:
        _check_resumable(output_dir, run_config)
        logger.info(
            "resuming %s from step %d (backup in %s)",
            output_dir,
            initial_epoch * checkpoint_interval,
            backup_dir,
        )
    bert_config.to_json_file(posixpath.join(output_dir, BERT_CONFIG_FILE))
    write_json(posixpath.join(output_dir, RUN_CONFIG_FILE), run_config)

    keras.utils.set_random_seed(seed)
    with _dtype_policy(MIXED_PRECISION_POLICIES[mixed_precision]), strategy.scope():
        model = build_pretraining_model(bert_config, max_seq_length, max_predictions_per_seq)
        if init_from and not initial_epoch:
            logger.info("init from %s", checkpoints.init_from(model, init_from))
        keras_optimizer = _build_optimizer(
            optimizer,
            learning_rate,
            steps,
            warmup_steps,
            weight_decay,
            gradient_accumulation_steps,
        )
        if mixed_precision == "fp16":
            keras_optimizer = keras.optimizers.LossScaleOptimizer(keras_optimizer)
        compile_for_pretraining(
            model,
            keras_optimizer,
            jit_compile=jit_compile,
            steps_per_execution=steps_per_execution,
        )

    batches_per_epoch = checkpoint_interval * gradient_accumulation_steps
    dataset = training_input(
        strategy,
        train_files,
        batch_size,
        seed=seed,
        start_batch=initial_epoch * batches_per_epoch,
        max_seq_length=max_seq_length,
        max_predictions_per_seq=max_predictions_per_seq,
        dynamic_masking=dynamic_masking,
    )
    validation = {}
    if eval_interval:
        validation = dict(
            validation_data=_evaluation_dataset(
                eval_files,
                eval_batch_size or batch_size,
                model,
                dynamic_masking_vocab,
            ),
            validation_freq=eval_interval // checkpoint_interval,
        )
    history = model.fit(
        dataset,
        epochs=steps // checkpoint_interval,
        steps_per_epoch=batches_per_epoch,
        **validation,
        callbacks=_callbacks(output_dir, keep_checkpoints) + list(callbacks),
        verbose=verbose,
        shuffle=False,
    )

    _save_model(model, output_dir)
    eval_results = None
    if eval_files:
        eval_results = evaluate(
            model,
            eval_files,
            batch_size=eval_batch_size or batch_size,
            output_path=posixpath.join(output_dir, EVAL_RESULTS_FILE),
            dynamic_masking_vocab=dynamic_masking_vocab,
            verbose=verbose,
        )
    return PretrainResult(model, history.history, eval_results, output_dir)


def evaluate(
    model: keras.Model | str,
    eval_files: str | Sequence[str],
    batch_size: int = 256,
    output_path: str | None = None,
    strategy: str | tf.distribute.Strategy | None = None,
    tpu: str = "local",
    jit_compile: bool | str = "auto",
    dynamic_masking_vocab: str | None = None,
    verbose: int | str = "auto",
) -> dict[str, Any]:
    """Held-out MLM and NSP loss and accuracy over every record of `eval_files`, and MLM perplexity.

    The losses are Google's: the MLM loss is the mean cross-entropy over every real masked
    prediction of the whole set, the NSP loss the mean over every sequence; perplexity is
    `exp(mlm_loss)`.

    Args:
        model: a compiled kbert model, a run directory (its `model.keras`) or a `.keras` file.
        eval_files: TFRecord glob(s) or directory.
        batch_size: global batch size (the last batch is padded with zero-weight rows).
        output_path: write the results there as JSON, atomically (None: do not write).
        strategy: for a model loaded from a path: "auto", "cpu", "mirrored", "tpu" or a
            strategy (default: the current one).
        tpu: the TPU for strategy "tpu".
        jit_compile: XLA for a model loaded from a path.
        dynamic_masking_vocab: a `vocab.txt` to draw (deterministic) masks for unmasked records.
        verbose: Keras' progress bar.

    Returns:
        A dict: `mlm_loss`, `mlm_accuracy`, `mlm_perplexity`, `nsp_loss`, `nsp_accuracy`,
        `loss`, `num_sequences`, `eval_files`, `step` (the model's optimizer step, if known).

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
    model_file = None
    if not isinstance(model, keras.Model):
        model_file = resolve_model_file(model)
        model = load_model(model, strategy=strategy, tpu=tpu, jit_compile=jit_compile)
    if not isinstance(model, BertPretrainingModel):
        raise ValueError(f"evaluate needs a kbert BertPretrainingModel, got {type(model).__name__}")
    dataset = _evaluation_dataset(eval_files, batch_size, model, dynamic_masking_vocab)
    logs = model.evaluate(dataset, return_dict=True, verbose=verbose)
    num_sequences = describe(eval_files)["num_records"]
    results: dict[str, Any] = {name: float(logs[name]) for name in _METRICS}
    results["mlm_perplexity"] = _safe_exp(results["mlm_loss"])
    results["num_sequences"] = num_sequences
    results["eval_files"] = eval_files if isinstance(eval_files, str) else list(eval_files)
    if model_file is not None:
        # load_model compiled a fresh optimizer: the trained one's step is read from the file.
        results["step"] = checkpoints.saved_optimizer_step(model_file)
    else:
        optimizer = getattr(model, "optimizer", None)
        results["step"] = _step(model) if optimizer is not None and optimizer.built else None
    if output_path:
        write_json(output_path, results)
        logger.info("evaluation written to %s", output_path)
    return results


def _evaluation_dataset(
    eval_files: str | Sequence[str],
    batch_size: int,
    model: BertPretrainingModel,
    dynamic_masking_vocab: str | None,
) -> tf.data.Dataset:
    """One deterministic pass over every record of `eval_files`, at the model's lengths."""
    return pretraining_dataset(
        eval_files,
        batch_size,
        max_seq_length=model.max_seq_length,
        max_predictions_per_seq=model.max_predictions_per_seq,
        is_training=False,
        dynamic_masking=(
            DynamicMasking.from_vocab_file(dynamic_masking_vocab) if dynamic_masking_vocab else None
        ),
    )


def load_model(
    path: str,
    strategy: str | tf.distribute.Strategy | None = None,
    tpu: str = "local",
    jit_compile: bool | str = "auto",
) -> BertPretrainingModel:
    """A kbert pre-training model from a run directory or `.keras` file, compiled for evaluation.

    Args:
        path: a run directory (its `model.keras`) or a `.keras` file.
        strategy: "auto", "cpu", "mirrored", "tpu", a strategy, or None (the current one).
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
    if isinstance(strategy, str):
        strategy = resolve_strategy(strategy, tpu=tpu)
    strategy = strategy or tf.distribute.get_strategy()
    with strategy.scope():
        model = load_pretraining_model(path)
        compile_for_pretraining(model, jit_compile=jit_compile)
    return model


def training_input(
    strategy: tf.distribute.Strategy,
    train_files: str | Sequence[str],
    global_batch_size: int,
    seed: int,
    start_batch: int = 0,
    **dataset_kwargs: Any,
) -> tf.distribute.DistributedDataset:
    """The training batches from batch `start_batch` on, distributed for `strategy`.

    One `pretraining_dataset` pipeline per worker via `distribute_datasets_from_function` (each
    reads its own shards and batches per replica; one device is the one-replica case). The
    pipeline is deterministic for a given seed (and only that seed: TensorFlow's global seed is
    left out), so skipping the batches already trained puts a resumed run exactly where the
    interrupted one was.

    Args:
        strategy: the strategy training runs under.
        train_files: TFRecord glob(s) or directory.
        global_batch_size: sequences per step over all replicas.
        seed: the data seed.
        start_batch: global batches already consumed.
        **dataset_kwargs: passed to `pretraining_dataset`.

    Examples:
    >>> import os, tempfile
    >>> from kbert import features
    >>> path = os.path.join(tempfile.mkdtemp(), "train.tfrecord")
    >>> with tf.io.TFRecordWriter(path) as writer:
    ...     for i in range(8):
    ...         writer.write(features.to_example({
    ...             "input_ids": [2, 7, 4, 3], "input_mask": [1, 1, 1, 1],
    ...             "segment_ids": [0, 0, 1, 1], "masked_lm_positions": [2],
    ...             "masked_lm_ids": [9], "masked_lm_weights": [1.0],
    ...             "next_sentence_labels": [i % 2]}).SerializeToString())
    >>> dataset = training_input(tf.distribute.get_strategy(), path, 4, seed=1, start_batch=3)
    >>> x, y, sample_weight = next(iter(dataset))
    >>> x["input_ids"].shape
    TensorShape([4, 4])
    """

    def dataset_fn(input_context: tf.distribute.InputContext) -> tf.data.Dataset:
        dataset = pretraining_dataset(
            train_files,
            global_batch_size,
            is_training=True,
            seed=seed,
            input_context=input_context,
            **dataset_kwargs,
        )
        # Each pipeline yields one per-replica batch for each of its replicas per global step.
        replicas_per_pipeline = (
            input_context.num_replicas_in_sync // input_context.num_input_pipelines
        )
        return dataset.skip(start_batch * replicas_per_pipeline)

    with _without_global_tf_seed():
        return strategy.distribute_datasets_from_function(dataset_fn)


@contextlib.contextmanager
def _without_global_tf_seed() -> Iterator[None]:
    """Builds datasets as if no TensorFlow global seed were set, then restores it.

    tf.data folds the global seed into every shuffle seed, and reads it from the eager context
    or from the graph a dataset function is traced in: the same `seed` would give one record
    order on one device and another under a strategy, or after any `tf.random.set_seed`.
    """
    global_seed, _ = tf.compat.v1.get_seed(None)
    tf.random.set_seed(None)
    try:
        yield
    finally:
        tf.random.set_seed(global_seed)


@keras.saving.register_keras_serializable(package="kbert")
def _build_optimizer(
    name: str,
    learning_rate: float,
    steps: int,
    warmup_steps: int,
    weight_decay: float,
    gradient_accumulation_steps: int,
) -> keras.optimizers.Optimizer:
    """Google's AdamW (or plain SGD) on warmup + linear decay counted in updates."""
    accumulation = gradient_accumulation_steps if gradient_accumulation_steps > 1 else None
    if name == "sgd":
        schedule = WarmupLinearDecay(learning_rate, steps, warmup_steps, accumulation or 1)
        return keras.optimizers.SGD(
            learning_rate=schedule, gradient_accumulation_steps=accumulation
        )
    return create_optimizer(
        learning_rate,
        num_train_steps=steps,
        num_warmup_steps=warmup_steps,
        weight_decay=weight_decay,
        gradient_accumulation_steps=accumulation,
    )


class _StepLogs(keras.callbacks.Callback):
    """Adds `step` (optimizer updates so far) and `learning_rate` to each interval's logs."""

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if logs is not None:
            logs["step"] = _step(self.model)
            logs["learning_rate"] = float(self.model.optimizer.learning_rate)


class _StopOnNonFiniteLoss(keras.callbacks.TerminateOnNaN):
    """Raises `TrainingDivergedError` at the first non-finite loss, before anything is saved.

    Raising (rather than Keras' stop flag) keeps the interval's end from running, so neither the
    backup nor a weight checkpoint is overwritten with the diverged state.
    """

    def __init__(self, output_dir: str):
        super().__init__(raise_error=False)
        self.output_dir = output_dir

    def on_batch_end(self, batch: int, logs: dict | None = None) -> None:
        loss = (logs or {}).get("loss")
        if loss is None or math.isfinite(float(loss)):
            return
        step = _step(self.model)
        checkpoints = _checkpoint_files(posixpath.join(self.output_dir, CHECKPOINT_DIR))
        last_good = checkpoints[-1] if checkpoints else "none yet"
        raise TrainingDivergedError(
            f"training stopped: the loss became {float(loss)} by step {step}. "
            f"Last good checkpoint: {last_good}; re-running the same command resumes from "
            f"the backup in {posixpath.join(self.output_dir, BACKUP_DIR)} (lower the learning "
            "rate or check the data first)"
        )


class _LastCheckpoints(keras.callbacks.ModelCheckpoint):
    """ModelCheckpoint of weights that keeps only the newest `keep` files."""

    def __init__(self, directory: str, keep: int):
        super().__init__(
            posixpath.join(directory, "ckpt-{step:07d}.weights.h5"),
            save_weights_only=True,
            save_freq="epoch",
        )
        self.directory = directory
        self.keep = keep

    def _save_model(self, epoch, batch, logs):
        super()._save_model(epoch, batch, logs)
        for stale in _checkpoint_files(self.directory)[: -self.keep]:
            tf.io.gfile.remove(stale)


class _History(keras.callbacks.CSVLogger):
    """CSVLogger with fixed columns (HISTORY_COLUMNS); intervals without evaluation leave the
    `val_*` cells empty (Keras writes "NA", which is not a number)."""

    def __init__(self, path: str):
        super().__init__(path, append=True)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        self.keys = list(HISTORY_COLUMNS)
        super().on_epoch_end(epoch, {key: logs.get(key, "") for key in HISTORY_COLUMNS})


class _TensorBoard(keras.callbacks.TensorBoard):
    """TensorBoard scalars against the optimizer step (Keras plots them against the interval)."""

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        super().on_epoch_end(int(logs["step"]) if logs and "step" in logs else epoch, logs)


def _checkpoint_files(directory: str) -> list[str]:
    """Weight checkpoints in `directory`, oldest first (the step is zero-padded in the name)."""
    return sorted(tf.io.gfile.glob(posixpath.join(directory, "ckpt-*.weights.h5")))


def _callbacks(output_dir: str, keep_checkpoints: int) -> list[keras.callbacks.Callback]:
    """kbert's callbacks, in the order they must run at each interval's end."""
    return [
        _StopOnNonFiniteLoss(output_dir),
        _StepLogs(),
        # Epoch ends only: a mid-epoch backup restores to the epoch's start (Keras ignores the
        # saved batch), which would replay batches; intervals are epochs for that reason.
        keras.callbacks.BackupAndRestore(
            posixpath.join(output_dir, BACKUP_DIR),
            save_freq="epoch",
            double_checkpoint=True,
            delete_checkpoint=False,
        ),
        _LastCheckpoints(posixpath.join(output_dir, CHECKPOINT_DIR), keep_checkpoints),
        _History(posixpath.join(output_dir, HISTORY_FILE)),
        _TensorBoard(posixpath.join(output_dir, TENSORBOARD_DIR)),
    ]


def _restored_epoch(backup_dir: str) -> int:
    """The epoch BackupAndRestore will restore (its metadata file), 0 when there is no backup."""
    path = posixpath.join(backup_dir, "training_metadata.json")
    if not tf.io.gfile.exists(path):
        return 0
    return int(read_json(path, "backup metadata")["epoch"])


def _check_resumable(output_dir: str, run_config: dict[str, Any]) -> None:
    path = posixpath.join(output_dir, RUN_CONFIG_FILE)
    if not tf.io.gfile.exists(path):
        return
    previous = read_json(path, RUN_CONFIG_FILE)
    changed = [k for k in _RESUME_INVARIANTS if k in previous and previous[k] != run_config[k]]
    if changed:
        raise ValueError(
            f"{output_dir} holds a run to resume, but {', '.join(changed)} changed "
            f"({', '.join(f'{k}: {previous[k]!r} -> {run_config[k]!r}' for k in changed)}); "
            "use the same arguments or a new output_dir"
        )


def _resolve_bert_config(
    config: BertConfig | str, train_info: dict[str, Any], dropout: float | None
) -> BertConfig:
    """The run's BertConfig; a preset takes its vocab_size from the data's metadata."""
    overrides: dict[str, Any] = {}
    if dropout is not None:
        overrides.update(hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    data_vocab = train_info.get("vocab_size")
    if isinstance(data_vocab, list):
        raise ValueError(f"train_files mix vocabularies of sizes {data_vocab}")
    if isinstance(config, str) and config in PRESET_SIZES and data_vocab:
        overrides["vocab_size"] = data_vocab
    bert_config = resolve_config(config, **overrides)
    if data_vocab and bert_config.vocab_size != data_vocab:
        raise ValueError(
            f"config vocab_size {bert_config.vocab_size} does not match the training data's "
            f"vocab_size {data_vocab} ({train_info['metadata_files'][0]})"
        )
    return bert_config


class _dtype_policy:
    """Sets Keras' global dtype policy for building the model, then restores the previous one."""

    def __init__(self, name: str):
        self.name = name

    def __enter__(self) -> None:
        self.previous = keras.config.dtype_policy()
        keras.config.set_dtype_policy(self.name)

    def __exit__(self, *exc: Any) -> None:
        keras.config.set_dtype_policy(self.previous)


def _save_model(model: keras.Model, output_dir: str) -> None:
    """The final model (`.keras`) and the encoder's weights, each written then renamed."""
    for filename, save in (
        (MODEL_FILE, model.save),
        (ENCODER_WEIGHTS_FILE, model.get_layer("encoder").save_weights),
    ):
        with atomic_path(posixpath.join(output_dir, filename)) as tmp:
            save(tmp)
    logger.info("saved %s and %s in %s", MODEL_FILE, ENCODER_WEIGHTS_FILE, output_dir)


def _step(model: keras.Model) -> int:
    """Optimizer updates so far (a mirrored variable under a strategy)."""
    return int(keras.ops.convert_to_numpy(model.optimizer.iterations))


def _safe_exp(value: float) -> float:
    try:
        return math.exp(value)
    except OverflowError:
        return math.inf


def _largest_divisor(n: int, limit: int) -> int:
    return max(d for d in range(1, min(n, limit) + 1) if n % d == 0)
