"""Decode pre-training TFRecords as text and validate every record against the contract.

Checks, per record: it parses with `kbert.features.feature_spec` at the set's lengths; input_mask
is ones then zeros; ids are < vocab size and 0 on padding; segment_ids are 0s then 1s on the real
tokens and 0 on padding; masked positions lie inside the real tokens (never [CLS]), sorted, with
weights 1 then 0 and padded predictions (0, 0, 0.0); next_sentence_labels is 0 or 1. With
metadata: record counts per shard, NSP label counts and masked counts agree with it. The first
violation raises ValueError naming the file, record and feature.

Shards are found, their compression detected and their lengths settled by `kbert.records`, the
reader `kbert.data` trains from, so the set checked here is the set training reads.
"""

from __future__ import annotations

import collections
import dataclasses
import posixpath
import sys
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import tensorflow as tf

from kbert import features
from kbert.errors import InputError, SettingError
from kbert.records import RecordSet, find_records, read_records
from kbert.vocabulary import CLS, MASK, SEP, read_vocab, vocab_sha256

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


@dataclasses.dataclass
class _Tally:
    """What the records of one directory hold, to check against its metadata."""

    files: list[str] = dataclasses.field(default_factory=list)
    num_records: int = 0
    labels: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(2, np.int64))
    predictions: int = 0


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

    The shards are found and their lengths settled as `kbert.data` does (`kbert.records`), so
    what passes here is what training reads.

    Args:
        file_pattern: glob(s), comma-separated globs or a directory of shards.
        num_records: records to decode as text.
        vocab_file: vocab.txt to show tokens as text (ids are shown without it).
        max_seq_length: needed only for records without metadata; else inferred from the first
            record.
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
    records = find_records(file_pattern, max_seq_length, max_predictions_per_seq)
    tokens = read_vocab(vocab_file) if vocab_file else None
    if tokens is not None:
        _check_vocab_file(records, vocab_file)
    seq, p, masked = records.max_seq_length, records.max_predictions_per_seq or 0, records.masked
    spec = features.feature_spec(seq, p, masked=masked)
    examples: list[str] = []
    tallies: dict[str, _Tally] = collections.defaultdict(_Tally)
    bar = None
    if progress is not None and validate:
        known = records.known_counts
        total = sum(known.values()) if len(known) == len(records.files) else None
        bar = progress(total=total, desc="validating", unit="records")
    for path, compression in zip(records.files, records.compression):
        if not validate and len(examples) >= num_records:
            break
        metadata = records.metadata_of(path)
        vocab_size = metadata.vocab_size if metadata is not None else len(tokens or []) or None
        checker = _Checker(seq, p, masked, vocab_size, tokens)
        tally = tallies[posixpath.dirname(path)]
        tally.files.append(path)
        count = 0
        for batch in _batches(path, compression, spec):
            wanted = min(num_records - len(examples), len(batch[features.INPUT_IDS]))
            examples.extend(_decode(batch, i, tokens, masked) for i in range(max(0, wanted)))
            if not validate:
                break
            checker.check(batch, path, count)
            count += len(batch[features.INPUT_IDS])
            if bar is not None:
                bar.update(len(batch[features.INPUT_IDS]))
            labels = batch[features.NEXT_SENTENCE_LABELS][:, 0]
            tally.labels += np.bincount(labels, minlength=2)[:2]
            if masked:
                tally.predictions += int(batch[features.MASKED_LM_WEIGHTS].sum())
        tally.num_records += count
        if validate and metadata is not None:
            expected = metadata.shards.get(posixpath.basename(path))
            if expected is not None and expected != count:
                raise InputError(
                    f"{path}: holds {count} records, {features.METADATA_FILENAME} says {expected}"
                )
    if bar is not None:
        bar.close()
    if validate:
        for directory, tally in tallies.items():
            if directory in records.metadata:
                _check_totals(records.metadata[directory], directory, tally, masked)
    labels = sum((t.labels for t in tallies.values()), np.zeros(2, np.int64))
    return InspectReport(
        files=list(records.files),
        num_records=sum(t.num_records for t in tallies.values()),
        max_seq_length=seq,
        max_predictions_per_seq=p,
        masked=masked,
        nsp_label_counts=_nsp_counts(labels),
        num_masked_predictions=sum(t.predictions for t in tallies.values()),
        examples=examples,
        metadata=next(iter(records.metadata.values()), None),
        validated=validate,
    )


def _check_vocab_file(records: RecordSet, vocab_file: str) -> None:
    """The vocab file must be the one the metadata says the records were made with."""
    digest = vocab_sha256(vocab_file)
    for directory, metadata in records.metadata.items():
        if metadata.vocab_sha256 != digest:
            raise SettingError(
                f"vocab_file {vocab_file}: not the vocabulary these records were made with "
                f"(sha256 differs from {features.metadata_path(directory)})"
            )


def _nsp_counts(labels: np.ndarray) -> dict[str, int]:
    return {str(features.IS_NEXT): int(labels[0]), str(features.IS_RANDOM): int(labels[1])}


def _batches(path: str, compression: str, spec: dict) -> Iterator[dict[str, np.ndarray]]:
    """Parsed batches of one shard; a damaged file or a record off the contract is named."""
    iterator = iter(read_records(path, compression).batch(_BATCH))
    start = 0
    while True:
        try:
            raw = next(iterator)
        except StopIteration:
            return
        except tf.errors.OpError as e:
            raise InputError(
                f"{path}: truncated or corrupt TFRecord file after record {start} "
                f"({e.message.splitlines()[0]})"
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
            raise InputError(
                f"{path}: record {start + i}: does not match the contract ({reason})"
            ) from None
    raise InputError(f"{path}: records {start}..{start + len(raw) - 1} do not match the contract")


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
                raise InputError(f"{path}: record {offset + index}: {name}: {problem}")

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


def _check_totals(metadata: features.Metadata, directory: str, tally: _Tally, masked: bool) -> None:
    """The records of `directory` agree with its metadata's shard list and counts."""
    where = features.metadata_path(directory)
    if metadata.shards and len(tally.files) != len(metadata.shards):
        raise InputError(
            f"{where}: lists {len(metadata.shards)} shards, the pattern matched "
            f"{len(tally.files)} files"
        )
    if tally.num_records != metadata.num_instances:
        raise InputError(
            f"{where}: says {metadata.num_instances} instances, the files hold {tally.num_records}"
        )
    nsp = _nsp_counts(tally.labels)
    if {k: int(v) for k, v in metadata.nsp_label_counts.items()} != nsp:
        raise InputError(
            f"{where}: NSP label counts {metadata.nsp_label_counts} disagree with the records {nsp}"
        )
    if (
        masked
        and metadata.num_masked_predictions
        and metadata.num_masked_predictions != tally.predictions
    ):
        raise InputError(
            f"{where}: says {metadata.num_masked_predictions} masked predictions, the records "
            f"hold {tally.predictions}"
        )


def _decode(batch: dict, i: int, tokens: list[str] | None, masked: bool) -> str:
    """One record as text: `[MASK]{orig}` / `other{orig}` at masked positions, then NSP's label."""
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


if __name__ == "__main__":
    # `python -m tfrecords_tools.inspect ...` is `kbert inspect-data` with the same flags.
    from kbert.cli import main

    sys.exit(main(["inspect-data", *sys.argv[1:]]))
