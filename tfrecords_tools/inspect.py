"""Decode pre-training TFRecords as text and validate every record against the contract.

Checks, per record: it parses with `kbert.features.feature_spec` at the set's lengths; input_mask
is ones then zeros; ids are < vocab size and 0 on padding; segment_ids are 0s then 1s on the real
tokens and 0 on padding; masked positions lie inside the real tokens (never [CLS]), sorted, with
weights 1 then 0 and padded predictions (0, 0, 0.0); next_sentence_labels is 0 or 1. With
metadata: record counts per shard, NSP label counts and masked counts agree with it. The first
violation raises ValueError naming the file, record and feature.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import tensorflow as tf

from kbert import features
from tfrecords_tools.vocab import CLS, MASK, SEP, load_vocab, vocab_sha256

_BATCH = 1024


@dataclasses.dataclass
class InspectReport:
    """What `inspect_records` found."""

    files: list[str]
    num_records: int
    max_seq_length: int
    max_predictions_per_seq: int
    masked: bool
    nsp_label_counts: dict[str, int]
    num_masked_predictions: int
    examples: list[str]
    metadata: features.Metadata | None
    validated: bool


def inspect_records(
    file_pattern: str,
    num_records: int = 3,
    vocab_file: str | None = None,
    max_seq_length: int | None = None,
    max_predictions_per_seq: int | None = None,
    validate: bool = True,
    progress: Callable[..., Any] | None = None,
) -> InspectReport:
    """Decode the first `num_records` records as text and validate all of them.

    Args:
        file_pattern: shard glob (or the directory holding the shards).
        num_records: records to decode as text.
        vocab_file: vocab.txt to show tokens as text (ids are shown without it).
        max_seq_length: needed only for records without metadata; else inferred from the first record.
        max_predictions_per_seq: as `max_seq_length`.
        validate: check every record (False decodes only).
        progress: reports the records validated, called like `tqdm.tqdm(total=..., desc=...,
            unit=...)` (e.g. that, or `kbert.progress.progress`).

    Raises:
        FileNotFoundError: nothing matches `file_pattern`.
        ValueError: the first violation found, naming file, record and feature.

    Examples:
    >>> import tempfile
    >>> from tfrecords_tools import corpora, vocab, create_pretraining_data as cpd
    >>> work = tempfile.mkdtemp()
    >>> docs = [[f"Document {d} sentence {s} is here." for s in range(6)] for d in range(8)]
    >>> _ = vocab.learn_vocab(corpora.sentences_of(docs), f"{work}/vocab.txt", vocab_size=200)
    >>> _ = cpd.create_pretraining_data(docs, f"{work}/data/train", f"{work}/vocab.txt",
    ...                                 max_seq_length=32, max_predictions_per_seq=5, dupe_factor=1)
    >>> report = inspect_records(f"{work}/data/train-*", vocab_file=f"{work}/vocab.txt")
    >>> report.validated and report.examples[0].startswith("[CLS]")
    True
    """
    files = _files(file_pattern)
    metadata = features.read_metadata(os.path.dirname(files[0]) or ".")
    masked, seq, p = _lengths(files[0], metadata, max_seq_length, max_predictions_per_seq)
    tokens = load_vocab(vocab_file) if vocab_file else None
    if (
        tokens is not None
        and metadata is not None
        and metadata.vocab_sha256 != vocab_sha256(vocab_file)
    ):
        raise ValueError(
            f"--vocab_file {vocab_file}: not the vocabulary these records were made with "
            f"(sha256 differs from {features.METADATA_FILENAME})"
        )
    vocab_size = metadata.vocab_size if metadata is not None else (len(tokens) if tokens else None)
    checker = _Checker(seq, p, masked, vocab_size, tokens)
    spec = features.feature_spec(seq, p, masked=masked)
    examples: list[str] = []
    total = 0
    labels = np.zeros(2, np.int64)
    predictions = 0
    bar = None
    if progress is not None and validate:
        bar = progress(total=_expected_records(files, metadata), desc="validating", unit="records")
    for path in files:
        count = 0
        for batch in _batches(path, spec, validate):
            if len(examples) < num_records:
                examples.extend(
                    _decode(batch, i, tokens, masked)
                    for i in range(min(num_records - len(examples), len(batch[features.INPUT_IDS])))
                )
            if not validate:
                if len(examples) >= num_records:
                    break
                continue
            checker.check(batch, path, count)
            n = len(batch[features.INPUT_IDS])
            count += n
            if bar is not None:
                bar.update(n)
            labels += np.bincount(batch[features.NEXT_SENTENCE_LABELS][:, 0], minlength=2)[:2]
            if masked:
                predictions += int(batch[features.MASKED_LM_WEIGHTS].sum())
        total += count
        if validate and metadata is not None and metadata.shards:
            expected = metadata.shards.get(os.path.basename(path))
            if expected is not None and expected != count:
                raise ValueError(
                    f"{path}: holds {count} records, {features.METADATA_FILENAME} says {expected}"
                )
    if bar is not None:
        bar.close()
    nsp = {str(features.IS_NEXT): int(labels[0]), str(features.IS_RANDOM): int(labels[1])}
    if validate and metadata is not None:
        _check_totals(metadata, files, total, nsp, predictions, masked)
    return InspectReport(
        files=files,
        num_records=total,
        max_seq_length=seq,
        max_predictions_per_seq=p,
        masked=masked,
        nsp_label_counts=nsp,
        num_masked_predictions=predictions,
        examples=examples,
        metadata=metadata,
        validated=validate,
    )


def _expected_records(files: list[str], metadata: features.Metadata | None) -> int | None:
    """How many records the metadata says `files` hold (None unless it says it for each)."""
    counts = [metadata.shards.get(os.path.basename(f)) for f in files] if metadata else [None]
    return None if None in counts else sum(counts)


def _files(file_pattern: str) -> list[str]:
    if tf.io.gfile.isdir(file_pattern):
        file_pattern = os.path.join(file_pattern, "*.tfrecord*")
    files = sorted(
        f
        for f in tf.io.gfile.glob(file_pattern)
        if not f.endswith((".json", ".incomplete")) and not tf.io.gfile.isdir(f)
    )
    if not files:
        raise FileNotFoundError(f"--input_file {file_pattern}: no TFRecord file matches")
    return files


def _compression(path: str) -> str:
    return "GZIP" if path.endswith(".gz") else ""


def _lengths(
    first: str, metadata, max_seq_length, max_predictions_per_seq
) -> tuple[bool, int, int]:
    if metadata is not None:
        for name, given, recorded in (
            ("max_seq_length", max_seq_length, metadata.max_seq_length),
            ("max_predictions_per_seq", max_predictions_per_seq, metadata.max_predictions_per_seq),
        ):
            if given is not None and given != recorded:
                raise ValueError(
                    f"--{name} {given} disagrees with {features.METADATA_FILENAME} ({recorded})"
                )
        return metadata.masked, metadata.max_seq_length, metadata.max_predictions_per_seq
    try:
        raw = next(
            iter(tf.data.TFRecordDataset(first, compression_type=_compression(first)).take(1))
        )
    except StopIteration:
        raise ValueError(
            f"{first}: empty file and no {features.METADATA_FILENAME} to say the lengths"
        ) from None
    except tf.errors.OpError as e:
        raise ValueError(
            f"{first}: not a readable TFRecord file ({e.message.splitlines()[0]})"
        ) from None
    example = tf.train.Example.FromString(raw.numpy()).features.feature
    if features.INPUT_IDS not in example:
        raise ValueError(f"{first}: record 0 has no {features.INPUT_IDS} feature")
    masked = features.MASKED_LM_POSITIONS in example
    seq = max_seq_length or len(example[features.INPUT_IDS].int64_list.value)
    p = max_predictions_per_seq or (
        len(example[features.MASKED_LM_POSITIONS].int64_list.value) if masked else 0
    )
    return masked, seq, p


def _batches(path: str, spec, validate: bool):
    dataset = tf.data.TFRecordDataset(path, compression_type=_compression(path)).batch(_BATCH)
    start = 0
    iterator = iter(dataset)
    while True:
        try:
            raw = next(iterator)
        except StopIteration:
            return
        except tf.errors.OpError as e:
            raise ValueError(
                f"{path}: truncated or corrupt TFRecord file after record {start} ({e.message.splitlines()[0]})"
            ) from None
        try:
            parsed = tf.io.parse_example(raw, spec)
        except tf.errors.InvalidArgumentError:
            _raise_parse_error(path, raw.numpy(), spec, start)
        yield {name: value.numpy() for name, value in parsed.items()}
        start += len(raw)


def _raise_parse_error(path: str, raw: np.ndarray, spec, start: int) -> None:
    for i, record in enumerate(raw):
        try:
            tf.io.parse_single_example(record, spec)
        except tf.errors.InvalidArgumentError as e:
            reason = e.message.splitlines()[0]
            raise ValueError(
                f"{path}: record {start + i}: does not match the contract ({reason})"
            ) from None
    raise ValueError(f"{path}: records {start}..{start + len(raw) - 1} do not match the contract")


class _Checker:
    def __init__(
        self, seq: int, p: int, masked: bool, vocab_size: int | None, tokens: list[str] | None
    ):
        self.seq, self.p, self.masked, self.vocab_size = seq, p, masked, vocab_size
        ids = {t: i for i, t in enumerate(tokens)} if tokens else {}
        self.cls_id, self.sep_id, self.mask_id = ids.get(CLS), ids.get(SEP), ids.get(MASK)

    def check(self, batch: dict, path: str, offset: int) -> None:
        """Raise ValueError on the first violating record of the batch."""
        ids = batch[features.INPUT_IDS]
        mask = batch[features.INPUT_MASK]
        segments = batch[features.SEGMENT_IDS]
        labels = batch[features.NEXT_SENTENCE_LABELS][:, 0]
        lengths = mask.sum(axis=1)
        real = np.arange(self.seq)[None, :] < lengths[:, None]
        rules = [
            (
                features.INPUT_MASK,
                ~np.all((mask == 0) | (mask == 1), axis=1),
                "values other than 0/1",
            ),
            (features.INPUT_MASK, np.any(mask != real, axis=1), "not ones followed by zeros"),
            (features.INPUT_MASK, lengths < 5, "fewer than 5 real tokens ([CLS] A [SEP] B [SEP])"),
            (features.INPUT_IDS, np.any(ids < 0, axis=1), "negative id"),
            (features.INPUT_IDS, np.any((ids != 0) & ~real, axis=1), "non-zero id on padding"),
            (
                features.SEGMENT_IDS,
                ~np.all((segments == 0) | (segments == 1), axis=1),
                "values other than 0/1",
            ),
            (
                features.SEGMENT_IDS,
                np.any((segments[:, 1:] < segments[:, :-1]) & real[:, 1:], axis=1),
                "not 0s then 1s over the real tokens",
            ),
            (features.SEGMENT_IDS, np.any((segments != 0) & ~real, axis=1), "non-zero on padding"),
            (features.SEGMENT_IDS, segments[:, 0] != 0, "first token not in segment 0"),
            (features.NEXT_SENTENCE_LABELS, (labels != 0) & (labels != 1), "not 0 or 1"),
        ]
        if self.vocab_size is not None:
            rules.append(
                (
                    features.INPUT_IDS,
                    np.any(ids >= self.vocab_size, axis=1),
                    f"id >= vocab size {self.vocab_size}",
                )
            )
        if self.cls_id is not None:
            last = ids[np.arange(len(ids)), np.maximum(lengths - 1, 0)]
            rules += [
                (features.INPUT_IDS, ids[:, 0] != self.cls_id, "first token is not [CLS]"),
                (features.INPUT_IDS, last != self.sep_id, "last real token is not [SEP]"),
            ]
        if self.masked:
            rules += self._prediction_rules(batch, ids, lengths)
        for name, bad, problem in rules:
            if np.any(bad):
                index = int(np.flatnonzero(bad)[0])
                raise ValueError(f"{path}: record {offset + index}: {name}: {problem}")

    def _prediction_rules(self, batch: dict, ids: np.ndarray, lengths: np.ndarray) -> list:
        positions = batch[features.MASKED_LM_POSITIONS]
        masked_ids = batch[features.MASKED_LM_IDS]
        weights = batch[features.MASKED_LM_WEIGHTS]
        count = (weights == 1.0).sum(axis=1)
        used = np.arange(self.p)[None, :] < count[:, None]
        rules = [
            (
                features.MASKED_LM_WEIGHTS,
                ~np.all((weights == 0.0) | (weights == 1.0), axis=1),
                "values other than 0.0/1.0",
            ),
            (
                features.MASKED_LM_WEIGHTS,
                np.any((weights == 1.0) != used, axis=1),
                "not ones followed by zeros",
            ),
            (features.MASKED_LM_WEIGHTS, count < 1, "no masked position"),
            (
                features.MASKED_LM_POSITIONS,
                np.any(used & ((positions <= 0) | (positions >= lengths[:, None])), axis=1),
                "position outside the real tokens (or on [CLS])",
            ),
            (
                features.MASKED_LM_POSITIONS,
                np.any(used[:, 1:] & (positions[:, 1:] <= positions[:, :-1]), axis=1),
                "positions not sorted (strictly increasing)",
            ),
            (
                features.MASKED_LM_POSITIONS,
                np.any(~used & (positions != 0), axis=1),
                "padded position not 0",
            ),
            (features.MASKED_LM_IDS, np.any(~used & (masked_ids != 0), axis=1), "padded id not 0"),
            (features.MASKED_LM_IDS, np.any(masked_ids < 0, axis=1), "negative id"),
        ]
        if self.vocab_size is not None:
            rules.append(
                (
                    features.MASKED_LM_IDS,
                    np.any(masked_ids >= self.vocab_size, axis=1),
                    f"id >= vocab size {self.vocab_size}",
                )
            )
        if self.cls_id is not None:
            at = np.take_along_axis(ids, positions, axis=1)
            rules.append(
                (
                    features.MASKED_LM_POSITIONS,
                    np.any(used & ((at == self.cls_id) | (at == self.sep_id)), axis=1),
                    "a [CLS]/[SEP] position is masked",
                )
            )
            specials = (
                (masked_ids == self.cls_id)
                | (masked_ids == self.sep_id)
                | (masked_ids == self.mask_id)
            )
            rules.append(
                (
                    features.MASKED_LM_IDS,
                    np.any(used & specials, axis=1),
                    "a special token is a masked label",
                )
            )
        return rules


def _check_totals(
    metadata: features.Metadata,
    files: list[str],
    total: int,
    nsp: dict,
    predictions: int,
    masked: bool,
) -> None:
    where = f"{os.path.dirname(files[0]) or '.'}/{features.METADATA_FILENAME}"
    if metadata.shards and len(files) != len(metadata.shards):
        raise ValueError(
            f"{where}: lists {len(metadata.shards)} shards, the pattern matched {len(files)} files"
        )
    if total != metadata.num_instances:
        raise ValueError(
            f"{where}: says {metadata.num_instances} instances, the files hold {total}"
        )
    if {k: int(v) for k, v in metadata.nsp_label_counts.items()} != nsp:
        raise ValueError(
            f"{where}: NSP label counts {metadata.nsp_label_counts} disagree with the records {nsp}"
        )
    if (
        masked
        and metadata.num_masked_predictions
        and metadata.num_masked_predictions != predictions
    ):
        raise ValueError(
            f"{where}: says {metadata.num_masked_predictions} masked predictions, the records hold {predictions}"
        )


def _decode(batch: dict, i: int, tokens: list[str] | None, masked: bool) -> str:
    """One record as text: `[MASK]{orig}` / `other{orig}` at masked positions, then the NSP label."""
    n = int(batch[features.INPUT_MASK][i].sum())
    ids = batch[features.INPUT_IDS][i][:n].tolist()
    words = [tokens[t] if tokens and 0 <= t < len(tokens) else str(t) for t in ids]
    if masked:
        weights = batch[features.MASKED_LM_WEIGHTS][i]
        for position, label, weight in zip(
            batch[features.MASKED_LM_POSITIONS][i], batch[features.MASKED_LM_IDS][i], weights
        ):
            if weight and 0 <= position < n:
                original = tokens[label] if tokens and 0 <= label < len(tokens) else str(label)
                words[position] = f"{words[position]}{{{original}}}"
    label = int(batch[features.NEXT_SENTENCE_LABELS][i][0])
    meaning = {features.IS_NEXT: "B follows A", features.IS_RANDOM: "B is random"}.get(
        label, "invalid"
    )
    return f"{' '.join(words)}\n  next_sentence_label={label} ({meaning})"
