"""The TFRecord input pipeline: pre-training records -> `tf.data` of `(x, y, sample_weight)`.

Reads Google's pre-training `tf.train.Example`s (`kbert.features`), whoever wrote them, and
yields exactly what `model.fit` / `model.evaluate` of kbert's compiled model take:

- `x`: `input_ids`, `segment_ids`, `input_mask` int32 [B, L], `masked_lm_positions` int32 [B, P];
- `y`: `{'mlm': masked_lm_ids int32 [B, P], 'nsp': next_sentence_labels int32 [B]}`;
- `sample_weight`: `{'mlm': masked_lm_weights float32 [B, P]` (raw 0/1, the losses normalise),
  `'nsp': float32 [B]` (1.0 for a record, 0.0 for an evaluation padding row)}.

Every shape is static (TPUs need it). Evaluation pads the last batch with zero-weight rows, so
every record is evaluated, and the dataset carries its true cardinality (Keras runs one extra,
empty step on datasets of unknown cardinality, which skews the reported losses).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import random
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import tensorflow as tf

from kbert import features
from kbert import records as on_disk
from kbert.errors import InputError, SettingError
from kbert.io import check_positive_int
from kbert.masking import DynamicMasking, unmask

__all__ = [
    "DynamicMasking",
    "SkippedRecords",
    "describe",
    "name_damaged_shards",
    "pretraining_dataset",
]

logger = logging.getLogger(__name__)

# Files read at once by the interleave; each holds `kbert.records.READ_BUFFER_BYTES`.
_MAX_PARALLEL_READS = 16


def pretraining_dataset(
    file_pattern: str | Sequence[str],
    global_batch_size: int,
    max_seq_length: int | None = None,
    max_predictions_per_seq: int | None = None,
    is_training: bool = True,
    seed: int | None = None,
    input_context: tf.distribute.InputContext | None = None,
    dynamic_masking: DynamicMasking | None = None,
    num_epochs: int | None = None,
    shuffle_buffer_size: int = 10_000,
    compression_type: str | None = None,
    skip_corrupt_records: bool = False,
    skipped_records: SkippedRecords | None = None,
) -> tf.data.Dataset:
    """A `tf.data.Dataset` of `(x, y, sample_weight)` batches from pre-training TFRecords.

    Training: the shards are sharded per input pipeline (`input_context`), shuffled by `seed`
    each epoch, read interleaved in parallel, records shuffled, repeated, batched with
    `drop_remainder=True` and parsed a whole batch at a time. Evaluation: one deterministic pass
    over every record; the last batch is padded with zero-weight rows and the dataset's
    cardinality is the true number of batches. GZIP shards are recognised by their first bytes.

    Args:
        file_pattern: glob(s), comma-separated globs or a directory of shards (any
            `tf.io.gfile` path, e.g. `gs://`). `*.json`, `*.txt`, `*.tmp`, `*.incomplete`
            and hidden files are skipped.
        global_batch_size: sequences per step over all replicas.
        max_seq_length: L. Default: `kbert_metadata.json` beside the shards, else the first
            record. A value that disagrees with either is an error.
        max_predictions_per_seq: P, same rules; for unmasked records (dynamic masking) the
            length masks are padded to (default: the metadata's).
        is_training: training pipeline (shuffled, repeated) or evaluation pipeline.
        seed: seeds file order, record shuffling and dynamic masks; None draws one.
        input_context: `tf.distribute.InputContext` from
            `strategy.distribute_datasets_from_function`: a training pipeline opens and reads
            only its own shards (all of them, keeping its own records, when there are fewer
            shards than pipelines); an evaluation pipeline keeps its own records; batches of
            `input_context.get_per_replica_batch_size(global_batch_size)`.
        dynamic_masking: draw masks in the pipeline (RoBERTa-style, new every epoch). Needed
            for unmasked records; on masked records their masks are undone and drawn anew.
        num_epochs: training passes over the data; None repeats forever. A finite count
            gives the dataset its true cardinality (counting records once when the metadata
            does not); with several input pipelines each counts its own shards, so prefer
            None with `steps_per_epoch` there.
        shuffle_buffer_size: records in the training shuffle buffer.
        compression_type: "", "GZIP" or "ZLIB" for every shard; None detects GZIP per shard.
        skip_corrupt_records: read past damaged shards (truncated or corrupted: the rest of such
            a shard is skipped) instead of failing. Training counts what it skipped in
            `skipped_records`; evaluation reads every shard first to count its readable records.
            Without it a damaged shard fails the read with TensorFlow's `DataLossError`, which
            names no file: run `fit` inside `name_damaged_shards(file_pattern)` to get a
            `kbert.errors.DamagedRecordsError` naming the shard (`kbert.pretrain` and
            `kbert.evaluate` do).
        skipped_records: where a training pipeline counts the records it skipped (default: a
            new `SkippedRecords`, which logs each damaged shard it meets).

    Returns:
        A dataset whose element_spec is fully defined.

    Examples:
    >>> import os, tempfile
    >>> from kbert import features
    >>> path = os.path.join(tempfile.mkdtemp(), "train.tfrecord")
    >>> with tf.io.TFRecordWriter(path) as writer:
    ...     for i in range(8):
    ...         writer.write(features.to_example({
    ...             "input_ids": [101, 7, 103, 102], "input_mask": [1, 1, 1, 1],
    ...             "segment_ids": [0, 0, 0, 0], "masked_lm_positions": [2, 0],
    ...             "masked_lm_ids": [9, 0], "masked_lm_weights": [1.0, 0.0],
    ...             "next_sentence_labels": [i % 2]}).SerializeToString())
    >>> dataset = pretraining_dataset(path, global_batch_size=4, seed=1)
    >>> x, y, weights = next(iter(dataset))
    >>> x["input_ids"].shape, y["nsp"].shape, weights["mlm"].dtype.name
    (TensorShape([4, 4]), TensorShape([4]), 'float32')
    """
    check_positive_int("global_batch_size", global_batch_size)
    check_positive_int("shuffle_buffer_size", shuffle_buffer_size)
    for name, value in (
        ("num_epochs", num_epochs),
        ("max_seq_length", max_seq_length),
        ("max_predictions_per_seq", max_predictions_per_seq),
    ):
        if value is not None:
            check_positive_int(name, value)
    num_pipelines = input_context.num_input_pipelines if input_context else 1
    pipeline_id = input_context.input_pipeline_id if input_context else 0
    # Training opens only this pipeline's shards; evaluation splits records, so that every
    # pipeline runs the same number of batches.
    records = on_disk.find_records(
        file_pattern,
        max_seq_length,
        max_predictions_per_seq,
        compression_type,
        share=(pipeline_id, num_pipelines) if is_training else (0, 1),
    )
    _check_masking(records, dynamic_masking)
    # Evaluation is deterministic, its dynamic masks included.
    deterministic = seed is not None or not is_training
    if seed is None:
        seed = random.SystemRandom().randrange(2**31) if is_training else 0

    batch_size = (
        input_context.get_per_replica_batch_size(global_batch_size)
        if input_context
        else global_batch_size
    )
    if is_training:
        if skip_corrupt_records and skipped_records is None:
            skipped_records = SkippedRecords()
        dataset, num_records = _training_records(
            records,
            seed,
            num_pipelines,
            pipeline_id,
            shuffle_buffer_size,
            num_epochs,
            skipped_records if skip_corrupt_records else None,
        )
        dataset = dataset.map(lambda serialized: (serialized, tf.constant(1.0)))
        num_batches = None
        if num_records is not None:
            num_batches = num_records * num_epochs // batch_size
            if num_batches == 0:
                raise SettingError(
                    f"{file_pattern}: {num_records} record(s) x {num_epochs} epoch(s) do not "
                    f"fill one batch of {batch_size}"
                )
    else:
        # A pipeline feeding several replicas (one worker, many devices) yields one batch for
        # each of them per global step.
        replicas_per_pipeline = (
            max(1, input_context.num_replicas_in_sync // num_pipelines) if input_context else 1
        )
        dataset, num_batches = _evaluation_records(
            records,
            global_batch_size,
            batch_size * replicas_per_pipeline,
            num_pipelines,
            pipeline_id,
            skip_corrupt_records,
        )
        num_batches *= replicas_per_pipeline

    parse = _batch_parser(records, dynamic_masking, seed, pipeline_id)
    dataset = dataset.batch(batch_size, drop_remainder=True)
    dataset = dataset.enumerate().map(parse, num_parallel_calls=tf.data.AUTOTUNE)
    if num_batches is not None:
        dataset = dataset.apply(tf.data.experimental.assert_cardinality(num_batches))
    dataset = dataset.prefetch(tf.data.AUTOTUNE)

    options = tf.data.Options()
    options.deterministic = deterministic
    if input_context is not None:
        # This pipeline already reads only its share; the strategy must not shard it again.
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return dataset.with_options(options)


@contextlib.contextmanager
def name_damaged_shards(file_pattern: str | Sequence[str]) -> Iterator[None]:
    """Turn a `DataLossError` raised in the block (e.g. by `model.fit` on a `pretraining_dataset`
    of `file_pattern`) into a `kbert.errors.DamagedRecordsError` naming the damaged shard and the
    byte offset where it broke (TensorFlow's error names no file; the shards are read again).

    Args:
        file_pattern: the shards the block reads, as for `pretraining_dataset`.

    Examples:
    >>> import os, tempfile
    >>> from kbert import features
    >>> path = os.path.join(tempfile.mkdtemp(), "train.tfrecord")
    >>> with tf.io.TFRecordWriter(path) as writer:
    ...     for i in range(8):
    ...         writer.write(features.to_example({
    ...             "input_ids": [101, 7, 103, 102], "input_mask": [1, 1, 1, 1],
    ...             "segment_ids": [0, 0, 0, 0], "masked_lm_positions": [2],
    ...             "masked_lm_ids": [9], "masked_lm_weights": [1.0],
    ...             "next_sentence_labels": [i % 2]}).SerializeToString())
    >>> _ = open(path, "r+b").truncate(os.path.getsize(path) // 2 + 50)  # mid-record
    >>> try:
    ...     with name_damaged_shards(path):
    ...         batches = list(pretraining_dataset(path, 2, seed=0).take(8))
    ... except Exception as e:
    ...     print(type(e).__name__, path in str(e))
    DamagedRecordsError True
    """
    try:
        yield
    except tf.errors.DataLossError as e:
        raise on_disk.damaged_records_error(
            on_disk.find_records(file_pattern),
            e,
            "reading stopped",
            "Find the damaged files with `kbert inspect-data` and replace them, or pass "
            "skip_corrupt_records=True to skip what cannot be read",
        ) from None


def describe(
    file_pattern: str | Sequence[str],
    count_records: bool = True,
    input_context: tf.distribute.InputContext | None = None,
) -> dict[str, Any]:
    """Counts and lengths of a set of pre-training shards, from their metadata and records.

    Per-shard counts come from `kbert_metadata.json`; shards it does not list are counted by
    reading them when `count_records` (else their count is None).

    Args:
        file_pattern: as for `pretraining_dataset`.
        count_records: read shards whose count the metadata does not give.
        input_context: describe (and open) only the shards this training input pipeline reads.

    Returns:
        A JSON-able dict: `files`, `num_files`, `compression`, `masked`, `max_seq_length`,
        `max_predictions_per_seq`, `records_per_file`, `num_records` (None when unknown),
        `metadata_files` and, from the metadata when there is one, `num_instances` (all the
        shards it describes), `vocab_size`, `vocab_file` (the vocab.txt kept beside the shards,
        or None), `do_lower_case`, `nsp_label_counts`,
        `num_masked_predictions`, `seed`, `tool_version` (several metadata files: summed counts,
        the list of vocab sizes).

    Examples:
    >>> import os, tempfile
    >>> from kbert import features
    >>> path = os.path.join(tempfile.mkdtemp(), "eval.tfrecord")
    >>> with tf.io.TFRecordWriter(path) as writer:
    ...     for _ in range(3):
    ...         writer.write(features.to_example({
    ...             "input_ids": [101, 7, 102], "input_mask": [1, 1, 1], "segment_ids": [0, 0, 0],
    ...             "next_sentence_labels": [0]}).SerializeToString())
    >>> info = describe(path)
    >>> info["num_records"], info["max_seq_length"], info["masked"]
    (3, 3, False)
    """
    share = (
        (input_context.input_pipeline_id, input_context.num_input_pipelines)
        if input_context
        else (0, 1)
    )
    records = on_disk.find_records(file_pattern, share=share)
    counts = (
        on_disk.count_records(records)
        if count_records
        else {f: records.known_counts.get(f) for f in records.files}
    )
    info: dict[str, Any] = {
        "files": list(records.files),
        "num_files": len(records.files),
        "compression": sorted(set(c or "none" for c in records.compression)),
        "masked": records.masked,
        "max_seq_length": records.max_seq_length,
        "max_predictions_per_seq": records.max_predictions_per_seq,
        "records_per_file": counts,
        "num_records": None if None in counts.values() else sum(counts.values()),
        "metadata_files": [features.metadata_path(d) for d in sorted(records.metadata)],
    }
    metas = list(records.metadata.values())
    if len(metas) == 1:
        ((directory, meta),) = records.metadata.items()
        info.update(
            vocab_file=features.data_vocab(directory, meta),
            num_instances=meta.num_instances,
            vocab_size=meta.vocab_size,
            do_lower_case=meta.do_lower_case,
            nsp_label_counts=dict(meta.nsp_label_counts),
            num_masked_predictions=meta.num_masked_predictions,
            seed=meta.seed,
            tool_version=meta.tool_version,
        )
    elif metas:
        nsp: collections.Counter[str] = collections.Counter()
        for meta in metas:
            nsp.update(meta.nsp_label_counts)
        info.update(
            num_instances=sum(m.num_instances for m in metas),
            vocab_size=sorted({m.vocab_size for m in metas}),
            nsp_label_counts=dict(nsp),
            num_masked_predictions=sum(m.num_masked_predictions for m in metas),
        )
    return info


def _training_records(
    records: on_disk.RecordSet,
    seed: int,
    num_pipelines: int,
    pipeline_id: int,
    shuffle_buffer_size: int,
    num_epochs: int | None,
    skipped_records: SkippedRecords | None,
) -> tuple[tf.data.Dataset, int | None]:
    """Serialized records of this pipeline (`records` holds its shards), shuffled and repeated;
    their count when needed. With `skipped_records`, damaged shards are read up to their damage
    and counted there."""
    files, compression = list(records.files), list(records.compression)
    shard_files = not records.split_records
    if num_pipelines > 1 and shard_files:
        logger.info(
            "input pipeline %d of %d reads %d shard(s): %s%s",
            pipeline_id,
            num_pipelines,
            len(files),
            ", ".join(files[:3]),
            ", ..." if len(files) > 3 else "",
        )

    # -1: the metadata does not count the shard.
    expected = [records.known_counts.get(f, -1) for f in files]
    if skipped_records is None:

        def read(path: tf.Tensor, compression: tf.Tensor, expected: tf.Tensor) -> tf.data.Dataset:
            return on_disk.read_records(path, compression)

    else:
        read = skipped_records.read_records
    if skipped_records is not None and -1 in expected:
        logger.warning(
            "skip_corrupt_records: %s and %d other shard(s) have no count in kbert_metadata.json, "
            "so records skipped there are not counted",
            files[expected.index(-1)],
            expected.count(-1) - 1,
        )

    def shuffled_records() -> tf.data.Dataset:
        dataset = tf.data.Dataset.from_tensor_slices((files, compression, expected))
        if shard_files:
            dataset = dataset.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
        dataset = dataset.interleave(
            read,
            cycle_length=min(len(files), _MAX_PARALLEL_READS),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
        if not shard_files:
            dataset = dataset.shard(num_pipelines, pipeline_id)
        dataset = dataset.shuffle(shuffle_buffer_size, seed=seed, reshuffle_each_iteration=True)
        return dataset.repeat(num_epochs)

    # Built inside a dataset function, every iterator gets its own shuffle state. Built outside,
    # the shuffles' seed generators advance with each iterator made from the dataset: Keras makes
    # a different number of them on one device and under a strategy, which changed the order,
    # and a resumed run could not find its position.
    dataset = tf.data.Dataset.range(1).flat_map(lambda _: shuffled_records())
    num_records = None
    if num_epochs is not None:
        counts = on_disk.count_records(records, files)
        num_records = sum(counts.values())
        if not shard_files:
            num_records = len(range(pipeline_id, num_records, num_pipelines))
    return dataset, num_records


def _evaluation_records(
    records: on_disk.RecordSet,
    global_batch_size: int,
    step_size: int,
    num_pipelines: int,
    pipeline_id: int,
    skip_corrupt_records: bool,
) -> tuple[tf.data.Dataset, int]:
    """(serialized, is_real) of one deterministic pass, padded to whole global steps; the count
    of global steps. `step_size`: this pipeline's records per global step."""
    read = on_disk.read_records
    if skip_corrupt_records:
        # The padding and the cardinality need the true count: the readable records.
        total = sum(on_disk.readable_counts(records)[0].values())

        def read(path: tf.Tensor, compression: tf.Tensor) -> tf.data.Dataset:
            return on_disk.read_records(path, compression).ignore_errors()

    else:
        total = sum(on_disk.count_records(records).values())
    if total == 0:
        raise InputError(f"{records.files[0]}: no records to evaluate")
    dataset = tf.data.Dataset.from_tensor_slices((list(records.files), list(records.compression)))
    dataset = dataset.interleave(
        read,
        cycle_length=min(len(records.files), _MAX_PARALLEL_READS),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    # Records, not files, are sharded so that every pipeline runs the same number of batches.
    dataset = dataset.shard(num_pipelines, pipeline_id)
    mine = len(range(pipeline_id, total, num_pipelines))
    num_batches = math.ceil(total / global_batch_size)
    padding = _padding_record(records)
    dataset = dataset.map(lambda serialized: (serialized, tf.constant(1.0))).concatenate(
        tf.data.Dataset.from_tensors((padding, tf.constant(0.0))).repeat(
            num_batches * step_size - mine
        )
    )
    logger.info(
        "evaluation: %d records in %d batches of %d (%d zero-weight padding rows)",
        total,
        num_batches,
        global_batch_size,
        num_batches * global_batch_size - total,
    )
    return dataset, num_batches


def _batch_parser(
    records: on_disk.RecordSet, dynamic_masking: DynamicMasking | None, seed: int, pipeline_id: int
):
    """The map function: (batch index, (serialized [B], is_real [B])) -> (x, y, sample_weight)."""
    spec = features.feature_spec(
        records.max_seq_length, records.max_predictions_per_seq, masked=records.masked
    )
    base_seed = tf.constant([seed, pipeline_id], tf.int64)

    def parse(index, batch):
        serialized, is_real = batch
        parsed = tf.io.parse_example(serialized, spec)
        example = {
            name: tf.cast(value, tf.int32) if value.dtype == tf.int64 else value
            for name, value in parsed.items()
        }
        if dynamic_masking is not None:
            input_ids = example[features.INPUT_IDS]
            if records.masked:
                input_ids = unmask(
                    input_ids,
                    example[features.MASKED_LM_POSITIONS],
                    example[features.MASKED_LM_IDS],
                    example[features.MASKED_LM_WEIGHTS],
                )
            example.update(
                dynamic_masking.mask(
                    input_ids,
                    example[features.INPUT_MASK],
                    records.max_predictions_per_seq,
                    tf.random.fold_in(base_seed, index),
                )
            )
        x = {name: example[name] for name in features.MODEL_INPUTS}
        y = {
            "mlm": example[features.MASKED_LM_IDS],
            "nsp": example[features.NEXT_SENTENCE_LABELS][:, 0],
        }
        sample_weight = {"mlm": example[features.MASKED_LM_WEIGHTS], "nsp": is_real}
        return x, y, sample_weight

    return parse


def _padding_record(records: on_disk.RecordSet) -> bytes:
    """A serialized all-zero record: no real tokens, no predictions (weights 0)."""
    spec = features.feature_spec(
        records.max_seq_length, records.max_predictions_per_seq, masked=records.masked
    )
    return features.to_example(
        {name: [0] * feature.shape[0] for name, feature in spec.items()}
    ).SerializeToString()


def _check_masking(records: on_disk.RecordSet, dynamic_masking: DynamicMasking | None) -> None:
    """Unmasked records need dynamic masking, and it needs P and the records' vocabulary size."""
    if dynamic_masking is None:
        if not records.masked:
            raise SettingError(
                f"{records.files[0]}: records carry no masks (written for dynamic masking); pass "
                "dynamic_masking=kbert.masking.DynamicMasking.from_vocab_file(<vocab.txt>)"
            )
        return
    if not records.max_predictions_per_seq:
        raise SettingError(
            f"{records.files[0]}: max_predictions_per_seq is needed for dynamic masking "
            "(neither given nor in the metadata)"
        )
    for directory, meta in records.metadata.items():
        if meta.vocab_size and meta.vocab_size != dynamic_masking.vocab_size:
            raise InputError(
                f"vocab_size mismatch: dynamic masking uses {dynamic_masking.vocab_size} ids but "
                f"{features.metadata_path(directory)} says {meta.vocab_size}"
            )


class SkippedRecords:
    """Counts the records a training pipeline with `skip_corrupt_records` could not read.

    Each shard is read to its damage (a TFRecord reader stops there), then an end marker carries
    how many records it gave; the shortfall against the shard's count in `kbert_metadata.json`
    is what was skipped in that pass over the shard. Shards the metadata does not count are read
    the same way but add nothing. Thread-safe: tf.data calls it from its threads.

    Examples:
    >>> skipped = SkippedRecords()
    >>> skipped.total()
    0
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._total = 0

    def total(self) -> int:
        """Records skipped so far."""
        with self._lock:
            return self._total

    def read_records(
        self, path: tf.Tensor, compression: tf.Tensor, expected: tf.Tensor
    ) -> tf.data.Dataset:
        """The readable records of one shard; at its end, the shortfall against `expected`
        (-1: unknown) is counted."""
        records = on_disk.read_records(path, compression).ignore_errors()
        marked = records.map(lambda r: (r, False)).concatenate(
            tf.data.Dataset.from_tensors((tf.constant(b""), True))
        )
        numbered = marked.scan(
            tf.constant(0, tf.int64), lambda n, item: (n + 1, (item[0], item[1], n))
        )

        def keep(record: tf.Tensor, is_end: tf.Tensor, read: tf.Tensor) -> tf.Tensor:
            return tf.cond(
                is_end,
                lambda: tf.py_function(self._count, [path, read, expected], tf.bool),
                lambda: tf.constant(True),
            )

        return numbered.filter(keep).map(lambda record, is_end, read: record)

    def _count(self, path: tf.Tensor, read: tf.Tensor, expected: tf.Tensor) -> bool:
        """Counts one finished pass over a shard; False drops its end marker."""
        missing = int(expected) - int(read)
        if int(expected) >= 0 and missing > 0:
            name = path.numpy().decode()
            with self._lock:
                self._total += missing
            logger.warning(
                "skipped %d unreadable record(s) of damaged shard %s (read %d of %d)",
                missing,
                name,
                int(read),
                int(expected),
            )
        return False
