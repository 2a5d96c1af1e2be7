"""Google's pre-training instance algorithm for one shard, streaming, without TensorFlow.

`generate_shard` turns the documents of one slice of the corpus into serialized
`tf.train.Example` records. It runs in worker processes, so it imports neither TensorFlow nor
`kbert.features`: the orchestrator (`create_pretraining_data`) hands it the feature names and
padding id from `kbert.features`, and a test checks that the bytes parse to exactly
`kbert.features.to_example` of the same values.

Everything random is drawn from generators seeded by (random_seed, shard index), and a shard's
documents depend only on the data and the number of shards, so a shard's bytes do not depend on
which process made it or how many there were.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import os
import queue
import random
import struct
import threading
from typing import Iterator, Sequence

import numpy as np

from tfrecords_tools import corpora
from tfrecords_tools.tokenization import WordPieceEncoder
from tfrecords_tools.vocab import CLS, MASK, SEP, WORDPIECE_PREFIX, is_special_token

# A block of documents is tokenized together and is, with the block before it, the pool that
# negatives ("B is random") are drawn from; this bounds memory whatever the corpus size.
BLOCK_CHARS = 1_000_000
_RECORDS_PER_MESSAGE = 2048


@dataclasses.dataclass(frozen=True)
class Layout:
    """The record format as `kbert.features` defines it, passed in so workers need no TensorFlow."""

    sequence_features: tuple[str, ...]  # input_ids, input_mask, segment_ids (in this order)
    prediction_features: tuple[str, ...]  # masked_lm_positions, masked_lm_ids, masked_lm_weights
    label_feature: str
    pad_id: int


@dataclasses.dataclass(frozen=True)
class InstanceConfig:
    """Everything that decides a shard's bytes (besides the data)."""

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
    mask: bool = True
    negative_pool_size: int = 1000


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

    def add(self, other: "ShardStats") -> None:
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
    """Yield (records, bytes_read_so_far, documents_so_far) chunks for one shard, then its ShardStats.

    Args:
        corpus: the text files.
        plan: the slices of `corpus.slices(num_shards)`; this shard reads `plan[shard_index]`.
        shard_index: which shard.
        config: algorithm settings, vocab and record layout.
    """
    maker = _InstanceMaker(config, shard_index)
    read_stats = corpora.ReadStats()
    documents = corpus.read(plan[shard_index], read_stats)
    previous: list | None = None
    for block in _blocks(maker.tokenized(documents), config.negative_pool_size):
        pool = (previous or []) + block
        if len(pool) < 2:
            pool = block + maker.donors(corpus, plan, shard_index)
        records = maker.block_records(block, pool, len(previous or []))
        for start in range(0, len(records), _RECORDS_PER_MESSAGE):
            yield records[start : start + _RECORDS_PER_MESSAGE], read_stats.bytes_read, maker.stats.num_documents
        previous = block
    maker.stats.bytes_read = read_stats.bytes_read
    maker.stats.invalid_utf8_replaced = read_stats.invalid_utf8_replaced
    yield maker.stats


_ENCODERS: dict = {}


def _word_piece_encoder(vocab: tuple[str, ...], do_lower_case: bool) -> WordPieceEncoder:
    """One encoder per process and vocab, so its word cache stays warm from shard to shard."""
    key = (hashlib.sha256("\n".join(vocab).encode("utf-8")).hexdigest(), do_lower_case)
    if key not in _ENCODERS:
        _ENCODERS.clear()
        _ENCODERS[key] = WordPieceEncoder(vocab, do_lower_case)
    return _ENCODERS[key]


def _blocks(documents: Iterator[tuple[list, int]], pool_size: int) -> Iterator[list]:
    block: list = []
    chars = 0
    for document, size in documents:
        block.append(document)
        chars += size
        if len(block) >= pool_size or chars >= BLOCK_CHARS:
            yield block
            block, chars = [], 0
    if block:
        yield block


class _InstanceMaker:
    def __init__(self, config: InstanceConfig, shard_index: int):
        self.config = config
        self.shard_index = shard_index
        self.rng, self.np_rng = shard_rngs(config.random_seed, shard_index)
        self.encoder_ids = _word_piece_encoder(config.vocab, config.do_lower_case)
        ids = {token: i for i, token in enumerate(config.vocab)}
        self.cls_id, self.sep_id, self.mask_id = ids[CLS], ids[SEP], ids[MASK]
        self.replacement_ids = np.array(
            [i for i, token in enumerate(config.vocab) if not is_special_token(token)], dtype=np.int32
        )
        self.is_continuation = [token.startswith(WORDPIECE_PREFIX) for token in config.vocab]
        self.encoder = _ExampleEncoder(config)
        self.stats = ShardStats()

    # -- reading ------------------------------------------------------------------------------

    def tokenized(self, documents: Iterator[list[str]], batch_chars: int = 200_000) -> Iterator[tuple[list, int]]:
        """(document as lists of ids per sentence, characters) for each non-empty document."""
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

    def _tokenize_batch(self, batch: list[list[str]]) -> Iterator[tuple[list, int]]:
        flat = [sentence for document in batch for sentence in document]
        encoded = self.encoder_ids.encode(flat)
        k = 0
        for document in batch:
            # Google drops sentences and documents that tokenize to nothing.
            sentences = [ids for ids in encoded[k : k + len(document)] if ids]
            k += len(document)
            if sentences:
                self.stats.num_documents += 1
                self.stats.num_single_sentence_documents += len(sentences) == 1
                yield sentences, sum(len(s) for s in document)

    def donors(self, corpus: corpora.TextFiles, plan, shard_index: int) -> list:
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
                        return found
        finally:
            self.stats = saved
        if not found:
            raise ValueError(
                "the corpus holds a single document: NSP needs at least two to draw random "
                "next segments from (separate documents with a blank line in Google's layout)"
            )
        return found

    # -- Google's algorithm -----------------------------------------------------------------------

    def block_records(self, block: list, pool: list, offset: int) -> list[bytes]:
        """All instances of a block (dupe_factor passes), masked, serialized and shuffled."""
        records: list[bytes] = []
        for _ in range(self.config.dupe_factor):
            # One pass at a time: only the compact serialized records of earlier passes are kept.
            instances: list[tuple[list[int], int, int]] = []
            for i, document in enumerate(block):
                self._document_instances(document, pool, offset + i, instances)
            if instances:
                records += self.encoder.encode(self._arrays(instances))
        # Google shuffles all instances of a run; a stream shuffles within a block.
        return [records[i] for i in self.np_rng.permutation(len(records)).tolist()]

    def _document_instances(self, document: list, pool: list, own: int, out: list) -> None:
        """Google's create_instances_from_document: (tokens, len(A), label) tuples appended to `out`."""
        random_float = self.rng.random
        max_num_tokens = self.config.max_seq_length - 3
        # Usually fill the whole sequence, but sometimes (short_seq_prob) aim shorter, so the model
        # also sees the short inputs of fine-tuning. Drawn once per document, as Google does.
        target_seq_length = max_num_tokens
        if random_float() < self.config.short_seq_prob:
            target_seq_length = 2 + int(random_float() * (max_num_tokens - 1))
        chunk: list = []
        current_length = 0
        i = 0
        last = len(document) - 1
        while i <= last:
            segment = document[i]
            chunk.append(segment)
            current_length += len(segment)
            if i == last or current_length >= target_seq_length:
                # (int(random() * n) is a uniform draw from range(n), cheaper than randrange.)
                a_end = 1 if len(chunk) < 2 else 1 + int(random_float() * (len(chunk) - 1))
                tokens_a = list(itertools.chain.from_iterable(chunk[:a_end]))
                if len(chunk) == 1 or random_float() < 0.5:
                    label = 1
                    target_b_length = target_seq_length - len(tokens_a)
                    other = int(random_float() * (len(pool) - 1))
                    random_document = pool[other + (other >= own)]
                    tokens_b = []
                    for j in range(int(random_float() * len(random_document)), len(random_document)):
                        tokens_b.extend(random_document[j])
                        if len(tokens_b) >= target_b_length:
                            break
                    # The segments of the chunk that B did not use are not wasted: start there next.
                    i -= len(chunk) - a_end
                else:
                    label = 0
                    tokens_b = list(itertools.chain.from_iterable(chunk[a_end:]))
                tokens_a, tokens_b = self._truncate_pair(tokens_a, tokens_b, max_num_tokens)
                out.append(([self.cls_id, *tokens_a, self.sep_id, *tokens_b, self.sep_id], len(tokens_a), label))
                chunk = []
                current_length = 0
            i += 1

    def _truncate_pair(self, a: list[int], b: list[int], max_num_tokens: int) -> tuple[list[int], list[int]]:
        """Google's truncate_seq_pair: shorten the longer side one token at a time, each time from
        the front or the back at random (more noise than always cutting the end)."""
        excess = len(a) + len(b) - max_num_tokens
        if excess <= 0:
            return a, b
        # Google's loop cuts the longer side each step, B on ties: first the difference, then
        # alternately (B first when they start equal or A is shorter).
        la, lb = len(a), len(b)
        if la > lb:
            cut_a = min(excess, la - lb)
            rest = excess - cut_a
            cut_b, cut_a = (rest + 1) // 2, cut_a + rest // 2
        else:
            cut_b = min(excess, lb - la + 1)
            rest = excess - cut_b
            cut_a, cut_b = (rest + 1) // 2, cut_b + rest // 2
        return self._cut(a, cut_a), self._cut(b, cut_b)

    def _cut(self, tokens: list[int], count: int) -> list[int]:
        if count == 0:
            return tokens
        # Each removed token comes off the front or the back with probability 1/2, as in Google's.
        front = bin(self.rng.getrandbits(count)).count("1")
        return tokens[front : len(tokens) - (count - front)]

    # -- arrays and masking -------------------------------------------------------------------------

    def _arrays(self, instances: list) -> dict:
        config = self.config
        n = len(instances)
        seq = config.max_seq_length
        token_lists, a_lengths, label_list = zip(*instances)
        lengths = np.fromiter(map(len, token_lists), np.int64, n)
        len_a = np.array(a_lengths, np.int64)
        labels = np.array(label_list, np.int64)
        flat = np.fromiter(itertools.chain.from_iterable(token_lists), np.int32, int(lengths.sum()))
        starts = np.cumsum(lengths) - lengths
        rows = np.repeat(np.arange(n), lengths)
        input_ids = np.full((n, seq), config.layout.pad_id, np.int32)
        input_ids[rows, np.arange(len(flat)) - np.repeat(starts, lengths)] = flat
        real = np.arange(seq)[None, :] < lengths[:, None]
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
        if config.mask:
            arrays.update(self._mask(input_ids, lengths, len_a, real))
        return arrays

    def _mask(self, input_ids: np.ndarray, lengths: np.ndarray, len_a: np.ndarray, real: np.ndarray) -> dict:
        """Google's create_masked_lm_predictions over a batch of instances."""
        config = self.config
        n, seq = input_ids.shape
        p = config.max_predictions_per_seq
        columns = np.arange(seq)[None, :]
        special = (columns == 0) | (columns == (len_a + 1)[:, None]) | (columns == (lengths - 1)[:, None])
        candidate = real & ~special
        # Google: num_to_predict = min(P, max(1, round(len(tokens) * masked_lm_prob))), where
        # len(tokens) counts [CLS] and [SEP]s; Python's round and numpy's rint both round half to even.
        count = np.minimum(p, np.maximum(1, np.rint(lengths * config.masked_lm_prob).astype(np.int64)))
        count = np.minimum(count, candidate.sum(axis=1))
        if config.do_whole_word_mask:
            chosen = self._whole_word_positions(input_ids, candidate, count)
        else:
            keys = self.np_rng.random((n, seq))
            keys[~candidate] = 2.0
            if p < seq:
                # The p smallest keys (unordered), then ordered: the first `count` are the sample.
                smallest = np.argpartition(keys, p, axis=1)[:, :p]
                order = np.take_along_axis(smallest, np.argsort(np.take_along_axis(keys, smallest, axis=1), axis=1), axis=1)
            else:
                order = np.pad(np.argsort(keys, axis=1), ((0, 0), (0, p - seq)))
            chosen = np.where(np.arange(p)[None, :] < count[:, None], order, seq)
        positions = np.sort(chosen, axis=1)
        valid = positions < seq
        positions = np.where(valid, positions, 0)
        rows = np.arange(n)[:, None]
        original = np.where(valid, input_ids[rows, positions], self.config.layout.pad_id).astype(np.int32)
        # 80% [MASK]; 10% a random token (so the model cannot assume the input at a masked position
        # is wrong); 10% unchanged (so it also learns to represent the real token there).
        r_mask = self.np_rng.random((n, p))
        r_keep = self.np_rng.random((n, p))
        random_ids = self.replacement_ids[self.np_rng.integers(0, len(self.replacement_ids), (n, p))]
        replacement = np.where(r_mask < 0.8, self.mask_id, np.where(r_keep < 0.5, original, random_ids))
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

    def _whole_word_positions(self, input_ids: np.ndarray, candidate: np.ndarray, count: np.ndarray) -> np.ndarray:
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
# Serialization


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _varint_rows(matrix: np.ndarray) -> list[bytes]:
    """Protobuf varint encoding of each row (values < 2**21), vectorized over the matrix."""
    m = matrix.astype(np.uint32)
    two, three = m >= 0x80, m >= 0x4000
    stacked = np.stack(
        [(m & 0x7F) | (two << 7), ((m >> 7) & 0x7F) | (three << 7), m >> 14], axis=-1
    ).astype(np.uint8)
    keep = np.stack([np.ones_like(two), two, three], axis=-1)
    data = stacked[keep].tobytes()
    ends = np.cumsum(keep.sum(axis=(1, 2))).tolist()
    starts = [0] + ends[:-1]
    return [data[s:e] for s, e in zip(starts, ends)]


class _ExampleEncoder:
    """Serializes records in `tf.train.Example` wire format from numpy arrays, ~10x faster than
    building protobuf messages one by one (which alone would cap a core at ~12k records/s)."""

    def __init__(self, config: InstanceConfig):
        layout = config.layout
        if len(config.vocab) >= 2**21 or config.max_seq_length >= 2**21:
            raise ValueError("vocabularies and sequence lengths must stay below 2**21")
        self.config = config
        self.seq = config.max_seq_length
        self.p = config.max_predictions_per_seq
        ids_name, mask_name, segment_name = layout.sequence_features
        self.names = {"ids": ids_name, "input_mask": mask_name, "segment_ids": segment_name, "label": layout.label_feature}
        if config.mask:
            positions_name, masked_ids_name, weights_name = layout.prediction_features
            self.names.update(positions=positions_name, masked_ids=masked_ids_name, weights=weights_name)
        self._headers: dict[tuple[str, int], bytes] = {}
        self.mask_payloads = [b"\x01" * k + b"\x00" * (self.seq - k) for k in range(self.seq + 1)]
        one, zero = struct.pack("<f", 1.0), struct.pack("<f", 0.0)
        self.weight_payloads = [one * k + zero * (self.p - k) for k in range(self.p + 1)]
        self.labels = [self._int_entry("label", b"\x00"), self._int_entry("label", b"\x01")]

    def _header(self, key: str, payload_length: int, is_float: bool = False) -> bytes:
        """Bytes of a features map entry up to its packed payload, for a payload of this length."""
        cached = self._headers.get((key, payload_length))
        if cached is None:
            name = self.names[key].encode("utf-8")
            values = b"\x0a" + _varint(payload_length)
            feature_body_length = len(values) + payload_length
            feature = (b"\x12" if is_float else b"\x1a") + _varint(feature_body_length)
            feature_length = len(feature) + feature_body_length
            entry = b"\x0a" + _varint(len(name)) + name + b"\x12" + _varint(feature_length)
            entry_length = len(entry) + feature_length
            cached = b"\x0a" + _varint(entry_length) + entry + feature + values
            self._headers[(key, payload_length)] = cached
        return cached

    def _int_entry(self, key: str, payload: bytes) -> bytes:
        return self._header(key, len(payload)) + payload

    def encode(self, arrays: dict) -> list[bytes]:
        """Serialized Examples, one per row of the arrays."""
        ids = _varint_rows(arrays["input_ids"])
        lengths = arrays["lengths"].tolist()
        len_a = arrays["len_a"].tolist()
        labels = arrays["labels"].tolist()
        seq = self.seq
        header = self._header
        masks = self.mask_payloads
        mask_entries = [header("input_mask", seq) + masks[k] for k in range(seq + 1)]
        masked = self.config.mask
        if masked:
            positions = _varint_rows(arrays["masked_lm_positions"])
            masked_ids = _varint_rows(arrays["masked_lm_ids"])
            counts = arrays["num_predictions"].tolist()
            weights_header = header("weights", 4 * self.p, is_float=True)
        records = []
        headers = self._headers
        segment_header = header("segment_ids", seq)
        for k in range(len(ids)):
            n, a = lengths[k], len_a[k]
            segment_payload = b"\x00" * (a + 2) + b"\x01" * (n - a - 2) + b"\x00" * (seq - n)
            row_ids = ids[k]
            parts = [
                headers.get(("ids", len(row_ids))) or header("ids", len(row_ids)),
                row_ids,
                mask_entries[n],
                segment_header,
                segment_payload,
            ]
            if masked:
                row_positions, row_masked = positions[k], masked_ids[k]
                parts += [
                    headers.get(("positions", len(row_positions))) or header("positions", len(row_positions)),
                    row_positions,
                    headers.get(("masked_ids", len(row_masked))) or header("masked_ids", len(row_masked)),
                    row_masked,
                    weights_header,
                    self.weight_payloads[counts[k]],
                ]
            parts.append(self.labels[labels[k]])
            body = b"".join(parts)
            records.append(b"\x0a" + _varint(len(body)) + body)
        return records


# ---------------------------------------------------------------------------------------------
# Worker process entry point


def worker_main(tasks, connection, corpus, plan, config: InstanceConfig) -> None:
    """Process shard indices from `tasks` (None = stop), sending on `connection` ("records", shard,
    records, bytes_read, documents), ("done", shard, ShardStats) or ("error", shard, type, message)."""
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
