"""Google's pre-training instance algorithm for one shard, streaming, without TensorFlow.

`generate_shard` turns the documents of one slice of the corpus into serialized
`tf.train.Example` records (written by `example_encoder`). It runs in worker processes, so it
imports neither TensorFlow nor `kbert.features`: the orchestrator (`create_pretraining_data`)
hands it the record `Layout` from `kbert.features`.

Everything random is drawn from generators seeded by (random_seed, shard index), and a shard's
documents depend only on the data and the number of shards, so a shard's bytes do not depend on
which process made it or how many there were.
"""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import itertools
import os
import queue
import random
import threading
from collections.abc import Iterator, Sequence

import numpy as np

from kbert.errors import InputError, SettingError
from tfrecords_tools import corpora
from tfrecords_tools.example_encoder import ExampleEncoder, Layout
from tfrecords_tools.tokenization import WordPieceEncoder
from tfrecords_tools.vocab import CLS, MASK, SEP, WORDPIECE_PREFIX, is_special_token

# A block of documents is tokenized together and is, with the block before it, the pool that
# negatives ("B is random") are drawn from; this bounds memory whatever the corpus size.
BLOCK_CHARS = 1_000_000
_RECORDS_PER_MESSAGE = 2048


@dataclasses.dataclass(frozen=True)
class InstanceConfig:
    """Everything that decides a shard's bytes (besides the data); checks itself when made.

    The fields after `layout` are Google's flags plus kbert's (named as the flags, `masked` for
    `--no_mask`): `settings()` records them in the run's fingerprint and metadata.
    """

    vocab: tuple[str, ...]
    layout: Layout
    do_lower_case: bool = True
    max_seq_length: int = 128
    max_predictions_per_seq: int = 20
    random_seed: int = 12345
    dupe_factor: int = 10
    masked_lm_prob: float = 0.15
    short_seq_prob: float = 0.1
    do_whole_word_mask: bool = False
    masked: bool = True
    negative_pool_size: int = 1000

    def __post_init__(self):
        if self.max_seq_length < 5:
            raise SettingError(
                f"--max_seq_length must be >= 5 ([CLS] A [SEP] B [SEP]), got {self.max_seq_length}"
            )
        if self.masked and self.max_predictions_per_seq < 1:
            raise SettingError(
                f"--max_predictions_per_seq must be >= 1, got {self.max_predictions_per_seq}"
            )
        if self.dupe_factor < 1:
            raise SettingError(f"--dupe_factor must be >= 1, got {self.dupe_factor}")
        if self.masked and not 0.0 < self.masked_lm_prob <= 1.0:
            raise SettingError(f"--masked_lm_prob must be in (0, 1], got {self.masked_lm_prob}")
        if not 0.0 <= self.short_seq_prob <= 1.0:
            raise SettingError(f"--short_seq_prob must be in [0, 1], got {self.short_seq_prob}")
        if self.negative_pool_size < 2:
            raise SettingError(f"--negative_pool_size must be >= 2, got {self.negative_pool_size}")

    def settings(self) -> dict:
        """The algorithm's settings by name: every field but the vocab and the record layout."""
        return {
            field.name: getattr(self, field.name)
            for field in dataclasses.fields(self)
            if field.name not in ("vocab", "layout")
        }


@dataclasses.dataclass
class ShardStats:
    """What one shard holds and what reading its slice found."""

    num_instances: int = 0
    num_is_next: int = 0
    num_is_random: int = 0
    num_masked_predictions: int = 0
    num_tokens: int = 0
    num_documents: int = 0
    num_single_sentence_documents: int = 0
    bytes_read: int = 0
    invalid_utf8_replaced: int = 0

    def add(self, other: ShardStats) -> None:
        """Accumulate another shard's counts."""
        for field in dataclasses.fields(self):
            setattr(self, field.name, getattr(self, field.name) + getattr(other, field.name))


def shard_rngs(random_seed: int, shard_index: int) -> tuple[random.Random, np.random.Generator]:
    """The two generators of a shard: Python's for the instance algorithm, numpy's for masking."""
    key = hashlib.sha256(f"kbert/{random_seed}/{shard_index}".encode()).digest()
    return random.Random(key), np.random.default_rng(int.from_bytes(key[:16], "little"))


# ---------------------------------------------------------------------------------------------
# The shard generator


def generate_shard(
    corpus: corpora.TextFiles,
    plan: Sequence[Sequence[corpora.Segment]],
    shard_index: int,
    config: InstanceConfig,
) -> Iterator[tuple[list[bytes], int, int] | ShardStats]:
    """Yield (records, bytes_read_so_far, documents_so_far) chunks for one shard, then its
    ShardStats.

    Args:
        corpus: the text files.
        plan: the slices of `corpus.slices(num_shards)`; this shard reads `plan[shard_index]`.
        shard_index: which shard.
        config: algorithm settings, vocab and record layout.
    """
    maker = _InstanceMaker(config, shard_index)
    read_stats = corpora.ReadStats()
    documents = corpus.read(plan[shard_index], read_stats)
    previous: _Documents | None = None
    for block in _blocks(maker.tokenized(documents), config.negative_pool_size):
        if previous is not None:
            pool, first = previous + block, len(previous)
        elif len(block) < 2:
            pool, first = block + maker.donors(corpus, plan, shard_index), 0
        else:
            pool, first = block, 0
        records = maker.block_records(pool, first, len(block))
        for start in range(0, len(records), _RECORDS_PER_MESSAGE):
            yield (
                records[start : start + _RECORDS_PER_MESSAGE],
                read_stats.bytes_read,
                maker.stats.num_documents,
            )
        previous = block
    maker.stats.bytes_read = read_stats.bytes_read
    maker.stats.invalid_utf8_replaced = read_stats.invalid_utf8_replaced
    yield maker.stats


class _Documents:
    """Tokenized documents as one flat id array: document d's sentence k is
    `ids[offsets[d][k]:offsets[d][k + 1]]`. Instances are then ranges of it, and their tokens are
    gathered by numpy instead of copied list by list in Python."""

    def __init__(self, ids: np.ndarray, offsets: list[list[int]]):
        self.ids = ids
        self.offsets = offsets

    @classmethod
    def join(cls, documents: list[tuple[np.ndarray, list[int]]]) -> _Documents:
        """From documents as (ids, lengths of its sentences)."""
        offsets = []
        total = 0
        for _, lengths in documents:
            offsets.append(list(itertools.accumulate(lengths, initial=total)))
            total = offsets[-1][-1]
        return cls(np.concatenate([ids for ids, _ in documents]), offsets)

    def __len__(self) -> int:
        return len(self.offsets)

    def __add__(self, other: _Documents) -> _Documents:
        shift = len(self.ids)
        shifted = [[offset + shift for offset in document] for document in other.offsets]
        return _Documents(np.concatenate([self.ids, other.ids]), self.offsets + shifted)


@dataclasses.dataclass(frozen=True)
class _VocabTables:
    """What the instance maker needs of a vocab, built once per process and vocab: the encoder's
    word cache then stays warm from shard to shard."""

    encoder: WordPieceEncoder
    cls_id: int
    sep_id: int
    mask_id: int
    replacement_ids: np.ndarray  # ids a masked token may be replaced by (no special tokens)
    is_continuation: list[bool]  # "##" pieces, by id


_VOCAB_TABLES: dict = {}


def _vocab_tables(vocab: tuple[str, ...], do_lower_case: bool) -> _VocabTables:
    key = (hashlib.sha256("\n".join(vocab).encode("utf-8")).hexdigest(), do_lower_case)
    if key not in _VOCAB_TABLES:
        _VOCAB_TABLES.clear()
        ids = {token: i for i, token in enumerate(vocab)}
        _VOCAB_TABLES[key] = _VocabTables(
            encoder=WordPieceEncoder(vocab, do_lower_case),
            cls_id=ids[CLS],
            sep_id=ids[SEP],
            mask_id=ids[MASK],
            replacement_ids=np.array(
                [i for i, token in enumerate(vocab) if not is_special_token(token)], np.int32
            ),
            is_continuation=[token.startswith(WORDPIECE_PREFIX) for token in vocab],
        )
    return _VOCAB_TABLES[key]


def _blocks(documents: Iterator[tuple[tuple, int]], pool_size: int) -> Iterator[_Documents]:
    block: list = []
    chars = 0
    for document, size in documents:
        block.append(document)
        chars += size
        if len(block) >= pool_size or chars >= BLOCK_CHARS:
            yield _Documents.join(block)
            block, chars = [], 0
    if block:
        yield _Documents.join(block)


class _InstanceMaker:
    def __init__(self, config: InstanceConfig, shard_index: int):
        self.config = config
        self.shard_index = shard_index
        self.rng, self.np_rng = shard_rngs(config.random_seed, shard_index)
        tables = _vocab_tables(config.vocab, config.do_lower_case)
        self.encoder_ids = tables.encoder
        self.cls_id, self.sep_id, self.mask_id = tables.cls_id, tables.sep_id, tables.mask_id
        self.replacement_ids = tables.replacement_ids
        self.is_continuation = tables.is_continuation
        self.encoder = ExampleEncoder(
            config.layout,
            len(config.vocab),
            config.max_seq_length,
            config.max_predictions_per_seq,
            config.masked,
        )
        self.stats = ShardStats()

    # -- reading ------------------------------------------------------------------------------

    def tokenized(
        self, documents: Iterator[list[str]], batch_chars: int = 200_000
    ) -> Iterator[tuple[tuple, int]]:
        """((document's ids, its sentences' lengths), characters) for each non-empty document."""
        batch: list[list[str]] = []
        chars = 0
        for document in documents:
            batch.append(document)
            chars += sum(len(s) for s in document)
            if chars >= batch_chars:
                yield from self._tokenize_batch(batch)
                batch, chars = [], 0
        if batch:
            yield from self._tokenize_batch(batch)

    def _tokenize_batch(
        self, batch: list[list[str]]
    ) -> Iterator[tuple[tuple[np.ndarray, list[int]], int]]:
        ids, lengths = self.encoder_ids.encode_flat(
            [sentence for document in batch for sentence in document]
        )
        ends = np.cumsum(lengths).tolist()
        lengths = lengths.tolist()
        k = 0
        for document in batch:
            start, k = (ends[k - 1] if k else 0), k + len(document)
            # Google drops sentences and documents that tokenize to nothing.
            sentences = [n for n in lengths[k - len(document) : k] if n]
            if sentences:
                self.stats.num_documents += 1
                self.stats.num_single_sentence_documents += len(sentences) == 1
                yield (ids[start : ends[k - 1]], sentences), sum(len(s) for s in document)

    def donors(self, corpus: corpora.TextFiles, plan, shard_index: int) -> _Documents:
        """Documents from the following slices, for a shard whose slice has a single document."""
        found: list = []
        saved = self.stats
        self.stats = ShardStats()  # donors feed negatives only; they are not this shard's documents
        try:
            for step in range(1, len(plan)):
                other = plan[(shard_index + step) % len(plan)]
                for document, _ in self.tokenized(corpus.read(other)):
                    found.append(document)
                    if len(found) >= self.config.negative_pool_size:
                        return _Documents.join(found)
        finally:
            self.stats = saved
        if not found:
            raise InputError(
                "the corpus holds a single document: NSP needs at least two to draw random "
                "next segments from (separate documents with a blank line in Google's layout)"
            )
        return _Documents.join(found)

    # -- Google's algorithm -----------------------------------------------------------------------

    def block_records(self, pool: _Documents, first: int, count: int) -> list[bytes]:
        """All instances of documents first..first+count-1 of the pool (dupe_factor passes),
        masked, serialized and shuffled; B segments come from any other pool document."""
        records: list[bytes] = []
        for _ in range(self.config.dupe_factor):
            # One pass at a time: only the compact serialized records of earlier passes are kept.
            instances: list[tuple[int, int, int, int, int]] = []
            for d in range(first, first + count):
                self._document_instances(pool.offsets, d, instances)
            if instances:
                records += self.encoder.encode(self._arrays(pool.ids, instances))
        # Google shuffles all instances of a run; a stream shuffles within a block.
        return [records[i] for i in self.np_rng.permutation(len(records)).tolist()]

    def _document_instances(self, documents: list[list[int]], own: int, out: list) -> None:
        """Google's create_instances_from_document for document `own` of the pool (as sentence
        offsets): appends (A start, A end, B start, B end, label) ranges of the pool's ids."""
        random_float = self.rng.random
        max_num_tokens = self.config.max_seq_length - 3
        offsets = documents[own]
        # Usually fill the whole sequence, but sometimes (short_seq_prob) aim shorter, so the model
        # also sees the short inputs of fine-tuning. Drawn once per document, as Google does.
        target_seq_length = max_num_tokens
        if random_float() < self.config.short_seq_prob:
            target_seq_length = 2 + int(random_float() * (max_num_tokens - 1))
        chunk_start = 0  # the chunk is sentences chunk_start..i
        i = 0
        last = len(offsets) - 2
        while i <= last:
            if i == last or offsets[i + 1] - offsets[chunk_start] >= target_seq_length:
                chunk_length = i + 1 - chunk_start
                # (int(random() * n) is a uniform draw from range(n), cheaper than randrange.)
                a_end = chunk_start + (
                    1 if chunk_length < 2 else 1 + int(random_float() * (chunk_length - 1))
                )
                a_start, a_stop = offsets[chunk_start], offsets[a_end]
                if chunk_length == 1 or random_float() < 0.5:
                    label = 1
                    target_b_length = target_seq_length - (a_stop - a_start)
                    other = int(random_float() * (len(documents) - 1))
                    random_offsets = documents[other + (other >= own)]
                    j = int(random_float() * (len(random_offsets) - 1))
                    # Whole sentences from j on, until B reaches its target length or the
                    # document ends.
                    k = bisect.bisect_left(
                        random_offsets, random_offsets[j] + target_b_length, j + 1
                    )
                    b_start, b_stop = (
                        random_offsets[j],
                        random_offsets[min(k, len(random_offsets) - 1)],
                    )
                    # The segments of the chunk that B did not use are not wasted: start there next.
                    i = a_end - 1
                else:
                    label = 0
                    b_start, b_stop = offsets[a_end], offsets[i + 1]
                out.append(
                    (*self._truncate_pair(a_start, a_stop, b_start, b_stop, max_num_tokens), label)
                )
                chunk_start = i + 1
            i += 1

    def _truncate_pair(
        self, a_start: int, a_stop: int, b_start: int, b_stop: int, max_num_tokens: int
    ) -> tuple:
        """Google's truncate_seq_pair on two ranges: shorten the longer side one token at a time,
        each time from the front or the back at random (more noise than always cutting the end)."""
        la, lb = a_stop - a_start, b_stop - b_start
        excess = la + lb - max_num_tokens
        if excess <= 0:
            return a_start, a_stop, b_start, b_stop
        # Google's loop cuts the longer side each step, B on ties: first the difference, then
        # alternately (B first when they start equal or A is shorter).
        if la > lb:
            cut_a = min(excess, la - lb)
            rest = excess - cut_a
            cut_b, cut_a = (rest + 1) // 2, cut_a + rest // 2
        else:
            cut_b = min(excess, lb - la + 1)
            rest = excess - cut_b
            cut_a, cut_b = (rest + 1) // 2, cut_b + rest // 2
        return (*self._cut(a_start, a_stop, cut_a), *self._cut(b_start, b_stop, cut_b))

    def _cut(self, start: int, stop: int, count: int) -> tuple[int, int]:
        if count == 0:
            return start, stop
        # Each removed token comes off the front or the back with probability 1/2, as in Google's.
        front = self.rng.getrandbits(count).bit_count()
        return start + front, stop - (count - front)

    # -- arrays and masking -----------------------------------------------------------------------

    def _arrays(self, ids: np.ndarray, instances: list) -> dict:
        """[CLS] A [SEP] B [SEP] of each instance's ranges as padded arrays, masked unless
        `--no_mask`."""
        config = self.config
        n = len(instances)
        a_start, a_stop, b_start, b_stop, labels = np.array(instances, np.int64).T
        len_a, len_b = a_stop - a_start, b_stop - b_start
        lengths = len_a + len_b + 3
        columns = np.arange(config.max_seq_length)[None, :]
        b_column = (len_a + 2)[:, None]
        in_a = (columns >= 1) & (columns <= len_a[:, None])
        in_b = (columns >= b_column) & (columns < b_column + len_b[:, None])
        source = np.where(
            in_a, a_start[:, None] + columns - 1, b_start[:, None] + columns - b_column
        )
        input_ids = np.where(
            in_a | in_b, ids[np.where(in_a | in_b, source, 0)], config.layout.pad_id
        ).astype(np.int32)
        rows = np.arange(n)
        input_ids[:, 0] = self.cls_id
        input_ids[rows, len_a + 1] = self.sep_id
        input_ids[rows, lengths - 1] = self.sep_id
        real = columns < lengths[:, None]
        self.stats.num_instances += n
        self.stats.num_is_random += int(labels.sum())
        self.stats.num_is_next += n - int(labels.sum())
        self.stats.num_tokens += int(lengths.sum())
        arrays = {
            "input_ids": input_ids,
            "lengths": lengths,
            "len_a": len_a,
            "labels": labels,
        }
        if config.masked:
            arrays.update(self._mask(input_ids, lengths, len_a, real))
        return arrays

    def _mask(
        self, input_ids: np.ndarray, lengths: np.ndarray, len_a: np.ndarray, real: np.ndarray
    ) -> dict:
        """Google's create_masked_lm_predictions over a batch of instances."""
        config = self.config
        n, seq = input_ids.shape
        p = config.max_predictions_per_seq
        columns = np.arange(seq)[None, :]
        special = (
            (columns == 0) | (columns == (len_a + 1)[:, None]) | (columns == (lengths - 1)[:, None])
        )
        candidate = real & ~special
        # Google: num_to_predict = min(P, max(1, round(len(tokens) * masked_lm_prob))), where
        # len(tokens) counts [CLS] and [SEP]s; Python's round and numpy's rint both round half
        # to even.
        count = np.minimum(
            p, np.maximum(1, np.rint(lengths * config.masked_lm_prob).astype(np.int64))
        )
        count = np.minimum(count, candidate.sum(axis=1))
        if config.do_whole_word_mask:
            chosen = self._whole_word_positions(input_ids, candidate, count)
        else:
            keys = self.np_rng.random((n, seq))
            keys[~candidate] = 2.0
            if p < seq:
                # The p smallest keys (unordered), then ordered: the first `count` are the sample.
                smallest = np.argpartition(keys, p, axis=1)[:, :p]
                order = np.take_along_axis(
                    smallest, np.argsort(np.take_along_axis(keys, smallest, axis=1), axis=1), axis=1
                )
            else:
                order = np.pad(np.argsort(keys, axis=1), ((0, 0), (0, p - seq)))
            chosen = np.where(np.arange(p)[None, :] < count[:, None], order, seq)
        positions = np.sort(chosen, axis=1)
        valid = positions < seq
        positions = np.where(valid, positions, 0)
        rows = np.arange(n)[:, None]
        original = np.where(valid, input_ids[rows, positions], self.config.layout.pad_id).astype(
            np.int32
        )
        # 80% [MASK]; 10% a random token (so the model cannot assume the input at a masked position
        # is wrong); 10% unchanged (so it also learns to represent the real token there).
        r_mask = self.np_rng.random((n, p))
        r_keep = self.np_rng.random((n, p))
        random_ids = self.replacement_ids[
            self.np_rng.integers(0, len(self.replacement_ids), (n, p))
        ]
        replacement = np.where(
            r_mask < 0.8, self.mask_id, np.where(r_keep < 0.5, original, random_ids)
        )
        masked_ids = input_ids.copy()
        r_index, c_index = np.nonzero(valid)
        masked_ids[r_index, positions[r_index, c_index]] = replacement[r_index, c_index]
        self.stats.num_masked_predictions += int(valid.sum())
        return {
            "input_ids": masked_ids,
            "masked_lm_positions": positions.astype(np.int32),
            "masked_lm_ids": original,
            "num_predictions": valid.sum(axis=1),
        }

    def _whole_word_positions(
        self, input_ids: np.ndarray, candidate: np.ndarray, count: np.ndarray
    ) -> np.ndarray:
        """Whole-word masking: a word's pieces ("##" continuations) are masked together or not at
        all; words are taken in random order, skipping any that would overshoot the count."""
        n, seq = input_ids.shape
        p = self.config.max_predictions_per_seq
        chosen = np.full((n, p), seq, dtype=np.int64)
        continuation = self.is_continuation
        for k in range(n):
            words: list[list[int]] = []
            row = input_ids[k].tolist()
            for position in np.flatnonzero(candidate[k]).tolist():
                # A "##" piece joins the word right before it, never across [SEP].
                if words and words[-1][-1] == position - 1 and continuation[row[position]]:
                    words[-1].append(position)
                else:
                    words.append([position])
            self.rng.shuffle(words)
            picked: list[int] = []
            target = int(count[k])
            for word in words:
                if len(picked) >= target:
                    break
                if len(picked) + len(word) > target:
                    continue
                picked.extend(word)
            chosen[k, : len(picked)] = picked
        return chosen


# ---------------------------------------------------------------------------------------------
# Worker process entry point


def worker_main(tasks, connection, corpus, plan, config: InstanceConfig) -> None:
    """Process shard indices from `tasks` (None = stop), sending on `connection` ("records",
    shard, records, bytes_read, documents), ("done", shard, ShardStats) or ("error", shard, type,
    message)."""
    # The workers already use every core: the Rust tokenizer's own thread pool would only contend.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    # A sender thread overlaps pickling and pipe writes with making the next records; the small
    # bound keeps memory flat when the writer falls behind.
    outbox: queue.Queue = queue.Queue(maxsize=4)
    sender = threading.Thread(target=_send_all, args=(outbox, connection), daemon=True)
    sender.start()
    try:
        while True:
            shard_index = tasks.get()
            if shard_index is None:
                return
            try:
                for item in generate_shard(corpus, plan, shard_index, config):
                    if isinstance(item, ShardStats):
                        outbox.put(("done", shard_index, item))
                    else:
                        records, bytes_read, documents = item
                        outbox.put(("records", shard_index, records, bytes_read, documents))
            except (ValueError, FileNotFoundError, OSError) as e:
                outbox.put(("error", shard_index, type(e).__name__, str(e)))
                return
    finally:
        outbox.put(None)
        sender.join()
        connection.close()


def _send_all(outbox: queue.Queue, connection) -> None:
    while True:
        message = outbox.get()
        if message is None:
            return
        try:
            connection.send(message)
        except OSError:
            # The writer process is gone: nobody will read this worker's records, stop now
            # rather than wait forever on a full outbox.
            os._exit(1)
