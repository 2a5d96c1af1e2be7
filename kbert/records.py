"""Pre-training records on disk: which files a pattern names, how each is compressed, how many
records they hold, and whether they and their `kbert_metadata.json` agree with the lengths asked.

The one shard reader: `kbert.data` (the input pipeline) and `tfrecords_tools.inspect` (validation)
both find and check their shards here. Feature names, dtypes and the metadata's fields are
`kbert.features`' (the data contract); this module only reads files against it.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import posixpath
import re
from collections.abc import Sequence

import tensorflow as tf
from google.protobuf.message import DecodeError

from kbert import features
from kbert.errors import (
    DamagedRecordsError,
    FileAccessError,
    InputError,
    MissingFileError,
    SettingError,
)

logger = logging.getLogger(__name__)

GZIP_MAGIC = b"\x1f\x8b\x08"
READ_BUFFER_BYTES = 8 << 20
# Names a glob may match beside the shards that are not records (metadata, vocab, state files,
# shards still being written by tfrecords_tools).
NOT_RECORDS = (".json", ".tmp", ".txt", ".incomplete")
# Files opened at once to check their first record (matters on gs://, harmless locally).
_PARALLEL_FILE_CHECKS = 16


@dataclasses.dataclass(frozen=True)
class RecordSet:
    """The matched shards and what they hold, checked against each other and the metadata.

    Args:
        files: sorted shard paths.
        compression: `""` or `"GZIP"` (or the requested type) for each file.
        max_seq_length: L of every record.
        max_predictions_per_seq: P of masked records, or of dynamic masking for unmasked ones
            (None when neither the request nor the metadata says).
        masked: the records carry Google's masked-LM features.
        known_counts: records per file, for the files the metadata lists.
        metadata: `kbert_metadata.json` per directory that has one.
        split_records: `files` are every matched shard although `find_records` was asked for a
            share of them (fewer shards than shares): each share must keep its own records.
    """

    files: tuple[str, ...]
    compression: tuple[str, ...]
    max_seq_length: int
    max_predictions_per_seq: int | None
    masked: bool
    known_counts: dict[str, int]
    metadata: dict[str, features.Metadata]
    split_records: bool = False

    def metadata_of(self, path: str) -> features.Metadata | None:
        """The metadata beside shard `path`, or None."""
        return self.metadata.get(posixpath.dirname(path))


def find_records(
    file_pattern: str | Sequence[str],
    max_seq_length: int | None = None,
    max_predictions_per_seq: int | None = None,
    compression_type: str | None = None,
    share: tuple[int, int] = (0, 1),
) -> RecordSet:
    """Match the shards, read their metadata and first records, and settle the lengths.

    Args:
        file_pattern: glob(s), comma-separated globs or a directory of shards (any
            `tf.io.gfile` path, e.g. `gs://`). `*.json`, `*.txt`, `*.tmp`, `*.incomplete`,
            hidden files and directories are skipped.
        max_seq_length: L. Default: `kbert_metadata.json` beside the shards, else the first
            record. A value that disagrees with either is an error.
        max_predictions_per_seq: P, same rules; for unmasked records only checked against the
            metadata (it is the length dynamic masking pads to).
        compression_type: "", "GZIP" or "ZLIB" for every shard; None detects GZIP per shard by
            its first bytes.
        share: `(index, count)`: open and keep only this share of the matched shards, every
            `count`-th from `index` (one input pipeline's, e.g. one JAX process's); with fewer
            shards than `count`, every shard (`RecordSet.split_records`).

    Raises:
        FileNotFoundError: nothing matches.
        ValueError: a shard is unreadable, empty or breaks the contract in its first record,
            masked and unmasked shards are mixed, or the lengths disagree (naming both sources).

    Examples:
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "train.tfrecord")
    >>> with tf.io.TFRecordWriter(path) as writer:
    ...     writer.write(features.to_example({
    ...         "input_ids": [101, 7, 102], "input_mask": [1, 1, 1], "segment_ids": [0, 0, 0],
    ...         "next_sentence_labels": [0]}).SerializeToString())
    >>> records = find_records(os.path.dirname(path))
    >>> records.max_seq_length, records.masked, records.compression
    (3, False, ('',))
    """
    if compression_type not in (None, "", "GZIP", "ZLIB"):
        raise SettingError(
            f'compression_type must be "", "GZIP" or "ZLIB", got {compression_type!r}'
        )
    files, split_records = _share_of(match_files(file_pattern), *share)
    with concurrent.futures.ThreadPoolExecutor(min(len(files), _PARALLEL_FILE_CHECKS)) as pool:
        inspected = list(pool.map(lambda f: _first_record_lengths(f, compression_type), files))
    compression = tuple(c for c, _ in inspected)
    first_lengths = {f: lengths for f, (_, lengths) in zip(files, inspected)}

    metadata = {}
    for directory in sorted({posixpath.dirname(f) for f in files}):
        meta = features.read_metadata(directory)
        if meta is not None:
            metadata[directory] = meta

    masked = _masked(files, first_lengths, metadata)
    max_seq_length = _settle_length(
        "max_seq_length", max_seq_length, metadata, features.INPUT_IDS, first_lengths, True
    )
    max_predictions_per_seq = _settle_length(
        "max_predictions_per_seq",
        max_predictions_per_seq,
        metadata,
        features.MASKED_LM_POSITIONS,
        first_lengths,
        masked,
    )
    known_counts = {}
    for f in files:
        meta = metadata.get(posixpath.dirname(f))
        if meta is not None and posixpath.basename(f) in meta.shards:
            known_counts[f] = int(meta.shards[posixpath.basename(f)])
    return RecordSet(
        files=tuple(files),
        compression=compression,
        max_seq_length=max_seq_length,
        max_predictions_per_seq=max_predictions_per_seq,
        masked=masked,
        known_counts=known_counts,
        metadata=metadata,
        split_records=split_records,
    )


def _share_of(files: list[str], index: int, count: int) -> tuple[list[str], bool]:
    """Share `index` of `count` of `files`, and whether it had to be all of them."""
    if not 0 <= index < count:
        raise SettingError(
            f"share must be (index, count) with 0 <= index < count, got {index, count}"
        )
    if count == 1:
        return files, False
    if len(files) < count:
        logger.warning(
            "%d shard(s) for %d input pipelines: every pipeline reads all shards and keeps "
            "every %d-th record (with at least %d shards each reads only its own)",
            len(files),
            count,
            count,
            count,
        )
        return files, True
    if len(files) % count:
        logger.warning(
            "%d shards for %d input pipelines: some read %d shards, the others %d, so their "
            "records come round at different rates (a multiple of %d shards shares them evenly)",
            len(files),
            count,
            len(files) // count + 1,
            len(files) // count,
            count,
        )
    return files[index::count], False


def match_files(file_pattern: str | Sequence[str]) -> list[str]:
    """Sorted shard paths for glob(s) / comma-separated globs / directories (see `find_records`).

    Args:
        file_pattern: the pattern(s).

    Examples:
    >>> import os, tempfile
    >>> directory = tempfile.mkdtemp()
    >>> for name in ("b.tfrecord", "a.tfrecord.gz", "kbert_metadata.json", ".hidden"):
    ...     _ = open(os.path.join(directory, name), "w").write("")
    >>> [os.path.basename(f) for f in match_files(directory)]
    ['a.tfrecord.gz', 'b.tfrecord']
    """
    patterns = file_pattern.split(",") if isinstance(file_pattern, str) else list(file_pattern)
    patterns = [p.strip() for p in patterns if p and p.strip()]
    if not patterns:
        raise MissingFileError(f"no file pattern given ({file_pattern!r})")
    files = set()
    for pattern in patterns:
        if tf.io.gfile.isdir(pattern):
            pattern = tf.io.gfile.join(pattern, "*")
        for path in tf.io.gfile.glob(pattern):
            name = posixpath.basename(path)
            if name.startswith(".") or name.endswith(NOT_RECORDS) or tf.io.gfile.isdir(path):
                continue
            files.add(path)
    if not files:
        raise MissingFileError(f"no TFRecord files match {','.join(patterns)!r}")
    return sorted(files)


def detect_compression(path: str) -> str:
    """ "GZIP" when the file starts with GZIP's magic bytes, else "" (whatever its name says).

    Args:
        path: a TFRecord file.

    Examples:
    >>> import gzip, os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "no-suffix")
    >>> with gzip.open(path, "wb") as f:
    ...     _ = f.write(b"")
    >>> detect_compression(path)
    'GZIP'
    """
    with tf.io.gfile.GFile(path, "rb") as f:
        return "GZIP" if f.read(len(GZIP_MAGIC)) == GZIP_MAGIC else ""


def read_records(path: str | tf.Tensor, compression: str | tf.Tensor) -> tf.data.Dataset:
    """The serialized records of one shard (also inside `Dataset.interleave`).

    Args:
        path: the shard.
        compression: its compression type, e.g. from `RecordSet.compression`.

    Examples:
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "x.tfrecord")
    >>> with tf.io.TFRecordWriter(path) as writer:
    ...     writer.write(b"record")
    >>> list(read_records(path, "").as_numpy_iterator())
    [b'record']
    """
    return tf.data.TFRecordDataset(
        path, compression_type=compression, buffer_size=READ_BUFFER_BYTES
    )


def count_records(records: RecordSet, files: Sequence[str] | None = None) -> dict[str, int]:
    """Records per shard: from the metadata, else by reading (a damaged shard raises
    `DamagedRecordsError` naming it).

    Args:
        records: the set `files` belong to.
        files: the shards to count; default all of them.

    Examples:
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "x.tfrecord")
    >>> with tf.io.TFRecordWriter(path) as writer:
    ...     for label in (0, 1):
    ...         writer.write(features.to_example({
    ...             "input_ids": [101, 102], "input_mask": [1, 1], "segment_ids": [0, 0],
    ...             "next_sentence_labels": [label]}).SerializeToString())
    >>> list(count_records(find_records(path)).values())
    [2]
    """
    files = records.files if files is None else files
    compression = dict(zip(records.files, records.compression))

    def count(path: str) -> int:
        if path in records.known_counts:
            return records.known_counts[path]
        try:
            return int(
                read_records(path, compression[path]).reduce(
                    tf.constant(0, tf.int64), lambda n, _: n + 1
                )
            )
        except tf.errors.OpError as e:
            raise DamagedRecordsError(
                f"{path}: damaged TFRecord file ({data_loss_reason(e)})", [path]
            ) from None

    with concurrent.futures.ThreadPoolExecutor(
        max(1, min(len(files), _PARALLEL_FILE_CHECKS))
    ) as pool:
        return dict(zip(files, pool.map(count, files)))


def _masked(
    files: list[str],
    first_lengths: dict[str, dict[str, int]],
    metadata: dict[str, features.Metadata],
) -> bool:
    """Whether the records are masked; mixed sets and metadata saying otherwise are errors."""
    masked_files = [f for f in files if features.MASKED_LM_POSITIONS in first_lengths[f]]
    unmasked_files = [f for f in files if features.MASKED_LM_POSITIONS not in first_lengths[f]]
    if masked_files and unmasked_files:
        raise InputError(
            f"{masked_files[0]} holds masked records but {unmasked_files[0]} unmasked ones: "
            "one dataset reads one kind"
        )
    masked = bool(masked_files)
    for directory, meta in metadata.items():
        if meta.masked != masked:
            raise InputError(
                f"{features.metadata_path(directory)} says masked={meta.masked} but the records "
                f"beside it are {'masked' if masked else 'unmasked'}"
            )
    return masked


def _settle_length(
    name: str,
    requested: int | None,
    metadata: dict[str, features.Metadata],
    feature: str,
    first_lengths: dict[str, dict[str, int]],
    in_records: bool,
) -> int | None:
    """One length from the request, the metadata and the records; disagreement is an error."""
    value, source = requested, f"{name}={requested}"
    for directory, meta in metadata.items():
        meta_value = getattr(meta, name) or None
        if meta_value is None or (not in_records and requested is not None):
            continue
        meta_source = f"{features.metadata_path(directory)} ({name} {meta_value})"
        if value is not None and meta_value != value:
            raise InputError(f"{name} mismatch: {source} but {meta_source}")
        value, source = meta_value, meta_source
    if not in_records:
        return value
    for path, lengths in first_lengths.items():
        if value is None:
            value = lengths[feature]
            source = f"the first record of {path} ({name} {value})"
        elif lengths[feature] != value:
            raise InputError(
                f"{path}: records have {feature} of length {lengths[feature]}, expected {value} "
                f"from {source}"
            )
    return value


def _first_record_lengths(path: str, compression_type: str | None) -> tuple[str, dict[str, int]]:
    """(compression, {feature: length}) from a shard's first bytes and first record."""
    try:
        if compression_type is None:
            compression_type = detect_compression(path)
        first = list(tf.data.TFRecordDataset(path, compression_type).take(1).as_numpy_iterator())
    except tf.errors.PermissionDeniedError:
        raise FileAccessError(f"{path}: permission denied") from None
    except tf.errors.NotFoundError:
        raise MissingFileError(f"{path}: not found") from None
    except tf.errors.OpError as e:
        raise InputError(f"{path}: not a readable TFRecord file ({e.message.strip()})") from None
    if not first:
        raise InputError(f"{path}: holds no records")
    try:
        example = tf.train.Example.FromString(first[0])
    except DecodeError:
        raise InputError(f"{path}: its first record is not a tf.train.Example") from None
    lengths = {}
    for name, feature in example.features.feature.items():
        if name not in features.ALL_FEATURES:
            continue
        expected_kind = "float_list" if name in features.FLOAT_FEATURES else "int64_list"
        kind = feature.WhichOneof("kind")
        if kind != expected_kind:
            raise InputError(f"{path}: feature {name} is a {kind}, expected {expected_kind}")
        lengths[name] = len(getattr(feature, kind).value)
    predictions = [n for n in features.PREDICTION_FEATURES if n in lengths]
    expected = features.ALL_FEATURES if predictions else features.UNMASKED_FEATURES
    missing = [n for n in expected if n not in lengths]
    if missing:
        raise InputError(f"{path}: records lack feature(s) {', '.join(missing)}")
    for group in (features.SEQUENCE_FEATURES, predictions):
        if len({lengths[n] for n in group}) > 1:
            raise InputError(
                f"{path}: features {', '.join(group)} differ in length "
                f"({', '.join(str(lengths[n]) for n in group)})"
            )
    if lengths[features.NEXT_SENTENCE_LABELS] != 1:
        raise InputError(
            f"{path}: next_sentence_labels has {lengths[features.NEXT_SENTENCE_LABELS]} values, "
            "expected 1"
        )
    return compression_type, lengths


@dataclasses.dataclass(frozen=True)
class Damage:
    """A shard that cannot be read to its end.

    Args:
        path: the shard.
        readable_records: records read before the damage (TFRecord readers stop there).
        problem: TensorFlow's reason, e.g. "truncated record at 999555" (a byte offset).
    """

    path: str
    readable_records: int
    problem: str


def find_damage(records: RecordSet, files: Sequence[str] | None = None) -> list[Damage]:
    """Read shards to their ends and return the damaged ones (in file order), each with its
    reason and the records readable before it. Intact shards are read once, damaged ones twice.

    Args:
        records: the set `files` belong to.
        files: the shards to read; default all of them.

    Examples:
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "x.tfrecord")
    >>> with tf.io.TFRecordWriter(path) as writer:
    ...     for label in (0, 1):
    ...         writer.write(features.to_example({
    ...             "input_ids": [101, 102], "input_mask": [1, 1], "segment_ids": [0, 0],
    ...             "next_sentence_labels": [label]}).SerializeToString())
    >>> records = find_records(path)
    >>> _ = open(path, "r+b").truncate(os.path.getsize(path) - 4)
    >>> damage = find_damage(records)[0]
    >>> damage.readable_records, damage.problem.startswith("truncated record at")
    (1, True)
    """
    files = records.files if files is None else files
    compression = dict(zip(records.files, records.compression))

    def count(dataset: tf.data.Dataset) -> int:
        return int(dataset.reduce(tf.constant(0, tf.int64), lambda n, _: n + 1))

    def check(path: str) -> Damage | None:
        try:
            count(read_records(path, compression[path]))
            return None
        except tf.errors.DataLossError as e:
            problem = data_loss_reason(e)
        # A TFRecord reader ends the file at its first damaged record.
        readable = count(read_records(path, compression[path]).ignore_errors())
        return Damage(path, readable, problem)

    with concurrent.futures.ThreadPoolExecutor(
        max(1, min(len(files), _PARALLEL_FILE_CHECKS))
    ) as pool:
        return [d for d in pool.map(check, files) if d is not None]


def readable_counts(records: RecordSet) -> tuple[dict[str, int], int | None]:
    """Readable records per shard (a damaged shard's up to its damage, reading every shard), and
    how many records the metadata counts in the damaged shards beyond those (None when it counts
    none of them). Each damaged shard is logged as a warning.

    Args:
        records: the shards.

    Examples:
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "x.tfrecord")
    >>> with tf.io.TFRecordWriter(path) as writer:
    ...     writer.write(features.to_example({
    ...         "input_ids": [101, 102], "input_mask": [1, 1], "segment_ids": [0, 0],
    ...         "next_sentence_labels": [0]}).SerializeToString())
    >>> readable_counts(find_records(path))[1]
    0
    """
    damage = find_damage(records)
    damaged = {d.path: d.readable_records for d in damage}
    counts = count_records(records, [f for f in records.files if f not in damaged])
    counts.update(damaged)
    for d in damage:
        known = records.known_counts.get(d.path)
        logger.warning(
            "skipping the rest of damaged shard %s: %s after %d readable records (%s skipped)",
            d.path,
            d.problem,
            d.readable_records,
            "an unknown number of records" if known is None else known - d.readable_records,
        )
    lost = [records.known_counts[p] - n for p, n in damaged.items() if p in records.known_counts]
    return {f: counts[f] for f in records.files}, (sum(lost) if lost or not damage else None)


def data_loss_reason(error: tf.errors.OpError) -> str:
    """The reason in a TFRecord reader's error, without TensorFlow's graph-node context.

    Args:
        error: e.g. the `DataLossError` of a truncated shard.

    Examples:
    >>> data_loss_reason(tf.errors.DataLossError(None, None,
    ...     "{{function_node x}} truncated record at 640 [Op:IteratorGetNext] name: "))
    'truncated record at 640'
    """
    message = error.message.strip()
    found = re.search(r"(truncated|corrupted) record at \d+", message)
    if found:
        return found.group(0)
    message = re.sub(r"\{\{[^}]*\}\}|\[\[.*?\]\]|\[Op:[^]]*\].*", "", message)
    return " ".join(message.split()) or type(error).__name__


def damaged_records_error(
    records: RecordSet | Sequence[RecordSet], error: tf.errors.OpError, stopped: str, resume: str
) -> DamagedRecordsError:
    """The `DamagedRecordsError` for a read that failed with `error`: names the damaged shards
    found by reading them all again (the reader's error names none), or says none is now.

    Args:
        records: the shards that were being read (one set or several).
        error: the reader's `DataLossError`.
        stopped: what stopped and what is intact, e.g. "training stopped at step 40; ...".
        resume: how to go on once the shards are repaired.

    Examples:
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "x.tfrecord")
    >>> with tf.io.TFRecordWriter(path) as writer:
    ...     writer.write(features.to_example({
    ...         "input_ids": [101, 102], "input_mask": [1, 1], "segment_ids": [0, 0],
    ...         "next_sentence_labels": [0]}).SerializeToString())
    >>> records = find_records(path)
    >>> _ = open(path, "r+b").truncate(os.path.getsize(path) - 4)
    >>> error = tf.errors.DataLossError(None, None, "truncated record at 0")
    >>> damaged_records_error(records, error, "stopped", "rerun").damaged == [path]
    True
    """
    sets = [records] if isinstance(records, RecordSet) else list(records)
    damaged = [d for record_set in sets for d in find_damage(record_set)]
    if not damaged:
        where = (
            f"reading {sum(len(r.files) for r in sets)} shard(s) failed "
            f"({data_loss_reason(error)}) but all read to their ends now (a transient read error?)"
        )
    else:
        first = damaged[0]
        where = (
            f"damaged shard {first.path}: {first.problem} (after {first.readable_records} "
            "readable records)"
        )
        if len(damaged) > 1:
            others = ", ".join(d.path for d in damaged[1:])
            where += f"; also damaged: {others}"
    return DamagedRecordsError(f"{where}; {stopped}. {resume}", [d.path for d in damaged])
