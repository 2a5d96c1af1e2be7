"""Pre-training runs: `pretrain` (strategy, data, model, callbacks, fit, evaluation).

A run directory holds everything a run writes:

    bert_config.json        the encoder's config (Google's layout)
    vocab.txt               the vocabulary, kept from the data (`kbert create-data` leaves it
                            beside the shards) or the dynamic-masking vocab; absent otherwise
    run_config.json         the run's `PretrainConfig` (checked again on resume), and under "run"
                            what it resolved: backend, strategy, replicas, sequence length
    backup/                 the resume state: weights, optimizer, interval (`kbert.backup`)
    checkpoints/            ckpt-<step>.weights.h5, the last `keep_checkpoints` intervals
    history.csv             a row every `log_interval` updates and at every interval's end:
                            step, the means of the losses and accuracies since the previous row,
                            learning_rate, (with eval_interval) val_* held-out losses and
                            accuracies, (with skip_corrupt_records) skipped_records
    logs/                   TensorBoard scalars (train/, validation/), the same points
    model.keras             the final pre-training model (reloads with `keras.saving.load_model`)
    encoder.weights.h5      the final encoder's weights (keras-hub `BertBackbone`)
    eval_results.json       held-out MLM/NSP loss and accuracy, MLM perplexity
    workers/                TensorFlow workers other than the chief: a run directory each;
                            JAX processes other than 0: process-<id>/ with their checkpoints/
                            and backup/ only (`Placement.worker_directory`, `writes_run_files`)

Training runs in "epochs" of `checkpoint_interval` optimizer steps (the last one shorter when the
interval does not divide `steps`): every epoch end writes a
weight checkpoint and the resume backup; history rows come every `log_interval` updates
(`kbert.callbacks`). The backup restores the weights, the optimizer (its step, hence the learning
rate) and the interval; the training dataset starts where the restored step left off (`skip` over
a seeded, deterministic pipeline), and the rows and TensorBoard events past it are dropped.

Every file is written under a temporary name and renamed when complete; a rerun first checks that
the run can resume (same settings, a usable backup) and writes nothing if not, then removes the
temporaries a killed run left. On several workers each writes its own directory, and all resume
from the newest interval every worker's backup holds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import posixpath
from collections.abc import Iterator, Sequence
from typing import Any

import keras
import tensorflow as tf

from kbert import checkpoints
from kbert import records as on_disk
from kbert.backup import State, find_state
from kbert.callbacks import (
    BACKUP_DIR,
    CHECKPOINT_DIR,
    TENSORBOARD_DIR,
    TrainingDivergedError,
    checkpoint_files,
    training_callbacks,
)
from kbert.config import PRESET_SIZES, BertConfig, resolve_config
from kbert.data import SkippedRecords, describe, pretraining_dataset
from kbert.device_defaults import resolve_settings
from kbert.distribute import Placement, as_placement, build_optimizer, initialize_distribution
from kbert.errors import DamagedRecordsError, InputError, KbertError, SettingError
from kbert.evaluation import evaluate, evaluation_dataset, load_model
from kbert.io import MODEL_FILE, atomic_path, read_json, sweep_temporaries
from kbert.losses import compile_for_pretraining
from kbert.masking import DynamicMasking
from kbert.model import BertPretrainingModel, build_pretraining_model
from kbert.optimization import create_optimizer, optimizer_step
from kbert.pretrain_config import PretrainConfig
from kbert.vocabulary import keep_vocab

__all__ = [
    "PretrainConfig",
    "PretrainResult",
    "TrainingDivergedError",
    "evaluate",
    "load_model",
    "pretrain",
    "training_input",
]

logger = logging.getLogger(__name__)

MIXED_PRECISION_POLICIES = {
    "none": "float32",
    "bf16": "mixed_bfloat16",
    "fp16": "mixed_float16",
}
BERT_CONFIG_FILE = "bert_config.json"
RUN_CONFIG_FILE = "run_config.json"
ENCODER_WEIGHTS_FILE = "encoder.weights.h5"
EVAL_RESULTS_FILE = "eval_results.json"


@dataclasses.dataclass
class PretrainResult:
    """What `pretrain` returns.

    Args:
        model: the trained `BertPretrainingModel` (compiled).
        history: the logs at each interval's end in this call (`keras.callbacks.History`);
            the metrics there are the means since the interval's last history row.
        eval_results: the evaluation on `eval_files`, or None without them.
        output_dir: the run directory.
    """

    model: BertPretrainingModel
    history: dict[str, list[float]]
    eval_results: dict[str, Any] | None
    output_dir: str


def pretrain(
    config: PretrainConfig | BertConfig | str,
    train_files: str | Sequence[str] | None = None,
    output_dir: str | None = None,
    steps: int | None = None,
    *,
    strategy: str | tf.distribute.Strategy | Placement | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    verbose: int | str = "auto",
    **settings: Any,
) -> PretrainResult:
    """Pre-train BERT with the joint MLM + NSP objective; resumes a run found in `output_dir`.

    Builds the model, optimizer and metrics inside the placement's scope (a `tf.distribute`
    strategy, or `keras.distribution` under KERAS_BACKEND=jax), trains `steps`
    optimizer updates on `train_files` in intervals of `checkpoint_interval` steps (each ends with
    a weight checkpoint and a resume backup; history.csv gets a row every `log_interval`
    updates), then evaluates on `eval_files` and
    saves the final model and encoder weights. Running the same call again after an interruption
    continues exactly where the last backup left off (weights, optimizer, learning rate and data
    position); after a finished run it only re-evaluates and re-saves.

    Args:
        config: a `PretrainConfig` holding every setting; or the model's config for the
            keyword form: a `BertConfig`, a preset name (`tiny` … `large`; its vocab_size is
            taken from the data's metadata) or a `bert_config.json` path.
        train_files: TFRecord glob(s) or directory (any `tf.io.gfile` path, e.g. `gs://`).
        output_dir: the run directory (see the module docstring for its contents).
        steps: optimizer updates to train.
        strategy: a `PretrainConfig.strategy` name, or where to run: a `tf.distribute.Strategy`
            (TensorFlow backend) or a `kbert.distribute.Placement` (either backend).
        callbacks: extra Keras callbacks, run after kbert's own.
        verbose: Keras' progress bar: 0, 1 (bar), 2 (one line per interval) or "auto".
        **settings: any other `PretrainConfig` field (batch_size, learning_rate, eval_files,
            init_from, ...; `PretrainConfig.help(name)` explains each). With a `PretrainConfig`,
            these and the three above override its fields.

    Returns:
        A `PretrainResult` with the model, the history and the evaluation.

    Raises:
        TrainingDivergedError: the loss became NaN or infinite; the checkpoints and the backup
            of the last finished interval are kept.
        DamagedRecordsError: a training or evaluation shard cannot be read (without
            `skip_corrupt_records`); names it, and the intact checkpoint to resume from.

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
    >>> len(open(os.path.join(result.output_dir, "history.csv")).readlines())  # header, 4 rows
    5
    """
    run, placement = _as_pretrain_config(config, train_files, output_dir, steps, strategy, settings)
    # First: a multi-worker strategy must exist before TensorFlow runs anything (reading the data),
    # and JAX processes join their run before JAX runs anything.
    where = _distribution(run, placement)
    run, train_info = _resolve_run(run, where)
    max_seq_length = train_info["max_seq_length"]
    bert_config = _resolve_bert_config(run.config, train_info, run.dropout)
    vocab_file = train_info.get("vocab_file") or run.dynamic_masking_vocab
    resume_state = _prepare_run_directory(where, run, bert_config, max_seq_length, vocab_file)
    initial_epoch = resume_state.epoch if resume_state else 0

    keras.utils.set_random_seed(run.seed)
    with _dtype_policy(MIXED_PRECISION_POLICIES[run.mixed_precision]), where.scope():
        model = build_pretraining_model(bert_config, max_seq_length, run.max_predictions_per_seq)
        if run.init_from and not initial_epoch:
            logger.info("init from %s", checkpoints.init_from(model, run.init_from))
        _compile(model, run)

    batches_per_epoch = run.checkpoint_interval * run.gradient_accumulation_steps
    skipped = SkippedRecords() if run.skip_corrupt_records else None
    kbert_callbacks = training_callbacks(
        where.output_dir,
        run.keep_checkpoints,
        log_interval=run.log_interval,
        updates_per_interval=run.checkpoint_interval,
        batches_per_update=run.gradient_accumulation_steps,
        skipped_records=skipped,
        history=where.placement.writes_run_files,
        resume_state=resume_state,
        total_steps=run.steps,
    )
    # Keras' JAX trainer places each batch by the distribution in scope: fit and evaluate in it.
    with where.scope():
        try:
            history = model.fit(
                _training_data(
                    run, where, initial_epoch * batches_per_epoch, max_seq_length, skipped
                ),
                epochs=-(-run.steps // run.checkpoint_interval),  # the last may be shorter
                initial_epoch=initial_epoch,
                steps_per_epoch=batches_per_epoch,
                **_validation(run, model, where.placement),
                callbacks=kbert_callbacks + list(callbacks),
                verbose=verbose,
                shuffle=False,
            )
        except tf.errors.DataLossError as e:
            raise _damaged_training_data(run, where.output_dir, model, e) from None
        finally:
            for callback in kbert_callbacks:
                if hasattr(callback, "close"):
                    callback.close()  # a stop by an error skips Keras' on_train_end
        if skipped is not None:
            logger.info("%d unreadable record(s) skipped in this run", skipped.total())
        eval_results = _finish(model, run, where, verbose)
    return PretrainResult(model, history.history, eval_results, where.output_dir)


def _as_pretrain_config(
    config: PretrainConfig | BertConfig | str,
    train_files: str | Sequence[str] | None,
    output_dir: str | None,
    steps: int | None,
    strategy: str | tf.distribute.Strategy | Placement | None,
    settings: dict[str, Any],
) -> tuple[PretrainConfig, Placement | None]:
    """`pretrain`'s arguments as one validated PretrainConfig with its derived defaults, and the
    placement when a strategy object was passed (it is no setting: it cannot be saved)."""
    named = dict(train_files=train_files, output_dir=output_dir, steps=steps)
    settings = {**{k: v for k, v in named.items() if v is not None}, **settings}
    placement = None
    if isinstance(strategy, str):
        settings["strategy"] = strategy
    elif strategy is not None:
        placement = as_placement(strategy)
    if isinstance(config, PretrainConfig):
        run = dataclasses.replace(config, **settings)
    else:
        run = PretrainConfig(config, **settings)
    return run.with_defaults(), placement


@dataclasses.dataclass(frozen=True)
class _Run:
    """Where a run executes (`placement`: its scope builds the variables and runs fit) and this
    worker's run directory (on several workers only the chief writes the run's own)."""

    placement: Placement
    output_dir: str

    def scope(self) -> contextlib.AbstractContextManager:
        return self.placement.scope()


def _distribution(run: PretrainConfig, placement: Placement | None) -> _Run:
    """The placement `run.strategy` names (or the one given) and this worker's run directory."""
    initialize_distribution(run.job_addresses, run.num_processes, run.process_id)
    placement = placement or as_placement(run.strategy, tpu=run.tpu)
    return _Run(placement, placement.worker_directory(run.output_dir))


def _resolve_run(run: PretrainConfig, where: _Run) -> tuple[PretrainConfig, dict[str, Any]]:
    """`run` with the values the data and the device decide, and the data's description."""
    # Before anything is built or written: batches the devices cannot share are an error.
    where.placement.check_global_batch_size(run.batch_size)
    if run.eval_files:
        where.placement.check_evaluation_batch_size(run.eval_batch_size or run.batch_size)
    # Only this process's shards: under JAX each host may hold only its own.
    train_info = describe(
        run.train_files, count_records=False, input_context=where.placement.input_context()
    )
    max_predictions_per_seq = run.max_predictions_per_seq or train_info["max_predictions_per_seq"]
    if not max_predictions_per_seq:
        raise SettingError(
            f"{train_info['files'][0]}: max_predictions_per_seq is needed for records without "
            "masks and no metadata gives it; pass max_predictions_per_seq"
        )
    mixed_precision, jit_compile, settings = resolve_settings(
        run.mixed_precision, run.jit_compile, where.placement
    )
    logger.info(settings)
    run = dataclasses.replace(
        run,
        max_predictions_per_seq=max_predictions_per_seq,
        mixed_precision=mixed_precision,
        jit_compile=jit_compile,
    )
    return run, train_info


def _prepare_run_directory(
    where: _Run,
    run: PretrainConfig,
    bert_config: BertConfig,
    max_seq_length: int,
    vocab_file: str | None,
) -> State | None:
    """Check the run directory (nothing is written unless the run can start or resume), clear
    what a killed run left, write the configs and keep the data's vocabulary (export and
    fine-tuning find it there); returns the backup to resume from, if any."""
    output_dir = where.output_dir
    backup_dir = posixpath.join(output_dir, BACKUP_DIR)
    if tf.io.gfile.exists(posixpath.join(backup_dir, "training_metadata.json")):
        raise ResumeMismatchError(
            f"{backup_dir} holds a Keras BackupAndRestore backup of an older kbert, which this "
            "one cannot resume; resume it with the kbert that started it, or use a new output_dir"
        )
    state = find_state(backup_dir)
    agreed = where.placement.agree_on_minimum(state.epoch if state else 0)
    if state and agreed != state.epoch:
        state = find_state(backup_dir, epoch=agreed) if agreed else None
        if agreed and state is None:
            raise ResumeMismatchError(
                f"{backup_dir} holds no backup of interval {agreed}, the newest every worker "
                "finished; remove every worker's backup to start again"
            )
    if state:
        _check_resumable(
            output_dir if where.placement.writes_run_files else run.output_dir, run, bert_config
        )
        logger.info("resuming %s from step %d (backup %s)", output_dir, state.step, state.path)
    tf.io.gfile.makedirs(output_dir)
    for directory in ("", CHECKPOINT_DIR, BACKUP_DIR, *_TENSORBOARD_SUBDIRS):
        for path in sweep_temporaries(posixpath.join(output_dir, directory)):
            logger.info("removed %s, left by an interrupted write", path)
    if not where.placement.writes_run_files:
        return state
    bert_config.to_json_file(posixpath.join(output_dir, BERT_CONFIG_FILE))
    facts = dict(
        backend=where.placement.backend,
        strategy=where.placement.description,
        num_replicas=where.placement.num_replicas,
        max_seq_length=max_seq_length,
    )
    run.to_json(posixpath.join(output_dir, RUN_CONFIG_FILE), run=facts)
    if vocab_file:
        keep_vocab(output_dir, vocab_file)
    return state


_TENSORBOARD_SUBDIRS = (
    posixpath.join(TENSORBOARD_DIR, "train"),
    posixpath.join(TENSORBOARD_DIR, "validation"),
)


class ResumeMismatchError(KbertError, ValueError):
    """A run directory cannot be resumed with these settings (a changed model or schedule)."""


def _compile(model: BertPretrainingModel, run: PretrainConfig) -> None:
    """The run's optimizer (with loss scaling under fp16), compiled for pre-training and built."""
    optimizer = create_optimizer(
        run.learning_rate,
        num_train_steps=run.steps,
        num_warmup_steps=run.warmup_steps,
        optimizer=run.optimizer,
        weight_decay=run.weight_decay,
        clip_global_norm=run.clip_norm or None,
        gradient_accumulation_steps=run.gradient_accumulation_steps,
    )
    if run.mixed_precision == "fp16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    compile_for_pretraining(
        model, optimizer, jit_compile=run.jit_compile, steps_per_execution=run.steps_per_execution
    )
    build_optimizer(model)


def _damaged_training_data(
    run: PretrainConfig, output_dir: str, model: BertPretrainingModel, error: Exception
) -> DamagedRecordsError:
    """The `DamagedRecordsError` of a read that failed during `fit`: names the damaged shard
    (the reader's error does not) and the intact checkpoint to resume from."""
    saved = checkpoint_files(posixpath.join(output_dir, CHECKPOINT_DIR))
    kept = (
        f"the checkpoint of the last finished interval, {saved[-1]}, and the resume backup in "
        f"{posixpath.join(output_dir, BACKUP_DIR)} are intact"
        if saved
        else "no interval had finished, so no checkpoint was written"
    )
    # The evaluation during training may have failed too.
    read = [run.train_files] + ([run.eval_files] if run.eval_interval else [])
    patterns = ",".join(p if isinstance(p, str) else ",".join(p) for p in read)
    return on_disk.damaged_records_error(
        [on_disk.find_records(files) for files in read],
        error,
        f"training stopped at step {optimizer_step(model)}; {kept}",
        f"To go on: find the bad files with `kbert inspect-data --input_file {patterns}`, "
        "replace or remove them, then run the same `kbert train` command (it resumes from the "
        "backup); or add --skip_corrupt_records to skip what cannot be read",
    )


def _training_data(
    run: PretrainConfig,
    where: _Run,
    start_batch: int,
    max_seq_length: int,
    skipped: SkippedRecords | None,
) -> Any:
    """The distributed training batches from `start_batch` on."""
    return training_input(
        where.placement,
        run.train_files,
        run.batch_size,
        seed=run.seed,
        start_batch=start_batch,
        max_seq_length=max_seq_length,
        max_predictions_per_seq=run.max_predictions_per_seq,
        dynamic_masking=_dynamic_masking(run.dynamic_masking_vocab),
        skip_corrupt_records=run.skip_corrupt_records,
        skipped_records=skipped,
    )


def _validation(
    run: PretrainConfig, model: BertPretrainingModel, placement: Placement
) -> dict[str, Any]:
    """`fit`'s validation arguments: the held-out set every `eval_interval` updates, if any."""
    if not run.eval_interval:
        return {}
    return dict(
        validation_data=evaluation_dataset(
            run.eval_files,
            run.eval_batch_size or run.batch_size,
            model,
            run.dynamic_masking_vocab,
            run.skip_corrupt_records,
            input_context=placement.input_context(),
        ),
        validation_freq=run.eval_interval // run.checkpoint_interval,
    )


def _finish(
    model: BertPretrainingModel, run: PretrainConfig, where: _Run, verbose: int | str
) -> dict[str, Any] | None:
    """Save the final model and encoder, then evaluate on `eval_files` (None without them);
    every process evaluates, the one that writes the run's files saves."""
    writes = where.placement.writes_run_files
    if writes:
        with where.placement.this_process_only():
            _save_model(model, where.output_dir)
    if not run.eval_files:
        return None
    return evaluate(
        model,
        run.eval_files,
        batch_size=run.eval_batch_size or run.batch_size,
        output_path=posixpath.join(where.output_dir, EVAL_RESULTS_FILE) if writes else None,
        dynamic_masking_vocab=run.dynamic_masking_vocab,
        verbose=verbose,
        skip_corrupt_records=run.skip_corrupt_records,
    )


def _dynamic_masking(vocab_file: str | None) -> DynamicMasking | None:
    return DynamicMasking.from_vocab_file(vocab_file) if vocab_file else None


def training_input(
    placement: Placement | tf.distribute.Strategy | str,
    train_files: str | Sequence[str],
    global_batch_size: int,
    seed: int,
    start_batch: int = 0,
    **dataset_kwargs: Any,
) -> tf.data.Dataset | tf.distribute.DistributedDataset:
    """The training batches from batch `start_batch` on, distributed for `placement`.

    One `pretraining_dataset` pipeline per worker (`Placement.distribute_dataset`: TensorFlow's
    `distribute_datasets_from_function`, one batch per replica; JAX: one per process, its share
    of each global batch, which Keras shards across the devices). The
    pipeline is deterministic for a given seed (and only that seed: TensorFlow's global seed is
    left out), so skipping the batches already trained puts a resumed run exactly where the
    interrupted one was.

    Args:
        placement: where training runs: a `Placement`, a `tf.distribute.Strategy` or a
            strategy name (see `kbert.distribute.as_placement`).
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
    >>> dataset = training_input("cpu", path, 4, seed=1, start_batch=3)
    >>> x, y, sample_weight = next(iter(dataset))
    >>> x["input_ids"].shape
    TensorShape([4, 4])
    """
    placement = as_placement(placement)

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
        return placement.distribute_dataset(dataset_fn, global_batch_size)


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


def _check_resumable(output_dir: str, run: PretrainConfig, bert_config: BertConfig) -> None:
    """A ResumeMismatchError naming the resume-invariant settings, or the encoder's config, that
    differ from the run's last ones."""
    path = posixpath.join(output_dir, BERT_CONFIG_FILE)
    if tf.io.gfile.exists(path):
        previous, now = BertConfig.from_json_file(path).to_dict(), bert_config.to_dict()
        changed = [
            f"{k}: {previous.get(k)!r} -> {v!r}" for k, v in now.items() if previous.get(k) != v
        ]
        if changed:
            raise ResumeMismatchError(
                f"{output_dir} holds a run to resume, but the model's config changed "
                f"({', '.join(changed)}); use the same config or a new output_dir"
            )
    path = posixpath.join(output_dir, RUN_CONFIG_FILE)
    if not tf.io.gfile.exists(path):
        return
    previous, run_config = read_json(path, RUN_CONFIG_FILE), run.to_dict()
    changed = [k for k in run.resume_invariants() if k in previous and previous[k] != run_config[k]]
    if changed:
        raise ResumeMismatchError(
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
        raise InputError(f"train_files mix vocabularies of sizes {data_vocab}")
    if isinstance(config, str) and config in PRESET_SIZES and data_vocab:
        overrides["vocab_size"] = data_vocab
    bert_config = resolve_config(config, **overrides)
    if data_vocab and bert_config.vocab_size != data_vocab:
        raise SettingError(
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
