"""Corpus -> masked pre-training TFRecords: Google's algorithm, streaming, parallel, resumable.

Google's `create_pretraining_data.py` with its flags and defaults, and beyond it:

- streaming with bounded memory: documents flow through in blocks; a "random next" segment B
  comes from another document of the current or previous block (`negative_pool_size` documents);
- `num_workers` processes, byte-identical output for any number of them: the corpus is cut into
  `num_shards` byte ranges at document boundaries, shard i holds exactly the instances of range i,
  and its random generators are seeded by (random_seed, i);
- sharded, atomic, resumable output `<prefix>-00000-of-000NN.tfrecord[.gz]`: each shard is
  written under `<name>.incomplete` and renamed when complete; a rerun of the same command keeps
  complete shards and makes the rest; `kbert_metadata.json` is written last.

Records follow `kbert.features` (Google's layout). With `mask=False` (`--no_mask`) they hold only
input_ids, input_mask, segment_ids and next_sentence_labels, for dynamic masking in kbert.data.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import logging
import math
import multiprocessing
import multiprocessing.connection
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Sequence

import tensorflow as tf

from kbert import features
from tfrecords_tools import corpora
from tfrecords_tools.instances import (
    InstanceConfig,
    Layout,
    ShardStats,
    generate_shard,
    worker_main,
)
from tfrecords_tools.vocab import load_vocab, vocab_sha256

logger = logging.getLogger(__name__)

MAX_AUTO_SHARDS = 4096
BYTES_PER_AUTO_SHARD = 1 << 20
_OUTPUT_SUFFIXES = (".tfrecords", ".tfrecord", ".tf_record", ".tfrecord.gz")


def tool_version() -> str:
    """Version string recorded in the metadata."""
    try:
        version = importlib.metadata.version("kbert")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return f"kbert-tfrecords_tools {version}"


@dataclasses.dataclass
class CreateDataSummary:
    """What a run wrote (totals over all shards, including ones kept from an earlier run)."""

    output_files: list[str]
    metadata_file: str
    num_instances: int
    num_tokens: int
    nsp_label_counts: dict[str, int]
    num_masked_predictions: int
    num_documents: int
    num_single_sentence_documents: int
    input_bytes: int
    invalid_utf8_replaced: int
    shards_written: int
    shards_kept: int
    seconds: float
    masked: bool

    @property
    def is_random_share(self) -> float:
        """Share of instances whose B segment is random (label 1)."""
        return self.nsp_label_counts.get(str(features.IS_RANDOM), 0) / max(1, self.num_instances)

    @property
    def mean_masked_positions(self) -> float:
        """Mean number of masked positions per instance."""
        return self.num_masked_predictions / max(1, self.num_instances)


def output_prefix(output_file: str) -> str:
    """Google's `--output_file` (e.g. /tmp/tf_examples.tfrecord) -> the shards' name prefix."""
    if "," in output_file:
        raise ValueError(
            f"--output_file {output_file}: give one path prefix; kbert names the shards itself "
            "(<prefix>-00000-of-000NN.tfrecord)"
        )
    for suffix in _OUTPUT_SUFFIXES:
        if output_file.endswith(suffix):
            return output_file[: -len(suffix)]
    return output_file


def shard_name(prefix: str, index: int, num_shards: int, compression: str | None) -> str:
    """Path of shard `index` of `num_shards`."""
    suffix = ".tfrecord.gz" if compression == "GZIP" else ".tfrecord"
    return f"{prefix}-{index:05d}-of-{num_shards:05d}{suffix}"


def create_pretraining_data(
    input_file: str | Sequence[str] | Iterable | None,
    output_file: str,
    vocab_file: str,
    do_lower_case: bool = True,
    max_seq_length: int = 128,
    max_predictions_per_seq: int = 20,
    random_seed: int = 12345,
    dupe_factor: int = 10,
    masked_lm_prob: float = 0.15,
    short_seq_prob: float = 0.1,
    do_whole_word_mask: bool = False,
    *,
    input_format: str = "google",
    num_workers: int = 1,
    num_shards: int | None = None,
    negative_pool_size: int = 1000,
    compression: str | None = None,
    mask: bool = True,
    overwrite: bool = False,
    progress: bool = False,
) -> CreateDataSummary:
    """Write pre-training TFRecords from a corpus (Google's algorithm and defaults).

    Args:
        input_file: text file(s)/glob(s) (comma-separated like Google's flag, or a list), a corpus
            object from `tfrecords_tools.corpora` (text files, TFDS, built-in), any iterable of
            documents (lists of sentences), or None for the built-in corpus.
        output_file: shard path prefix; shards are `<prefix>-00000-of-000NN.tfrecord` (a trailing
            ".tfrecord" is dropped first), with `kbert_metadata.json` in the same directory.
        vocab_file: vocab.txt (`[PAD]` at id 0, `[UNK] [CLS] [SEP] [MASK]` present).
        do_lower_case: lower-case and strip accents (uncased vocab).
        max_seq_length: tokens per instance, [CLS] and [SEP]s included (>= 5).
        max_predictions_per_seq: masked positions per instance at most (>= 1).
        random_seed: seed of every random choice.
        dupe_factor: differently-masked passes over the corpus.
        masked_lm_prob: share of tokens to mask.
        short_seq_prob: probability that a document aims at a shorter random length.
        do_whole_word_mask: mask all pieces of a word together.
        input_format: layout of text files: "google", "lines" or "blocks" (see `corpora`).
        num_workers: processes making shards; the output does not depend on it.
        num_shards: output files; default one per MiB of input (at most 4096).
        negative_pool_size: documents per block; random B segments come from the current and
            previous block, so memory stays bounded.
        compression: None or "gzip".
        mask: False writes unmasked records for dynamic masking (`--no_mask`).
        overwrite: replace a dataset made with other settings under the same prefix.
        progress: show a progress bar on stderr.

    Returns:
        A `CreateDataSummary` of the whole set.

    Examples:
    >>> import tempfile, os
    >>> from tfrecords_tools import corpora, vocab
    >>> work = tempfile.mkdtemp()
    >>> documents = [[f"Document {d} sentence {s} is here." for s in range(6)] for d in range(8)]
    >>> _ = vocab.learn_vocab(corpora.sentences_of(documents), f"{work}/vocab.txt", vocab_size=200)
    >>> summary = create_pretraining_data(documents, f"{work}/data/train", f"{work}/vocab.txt",
    ...                                   max_seq_length=32, max_predictions_per_seq=5, dupe_factor=2)
    >>> summary.num_instances > 0, os.path.basename(summary.output_files[0])
    (True, 'train-00000-of-00001.tfrecord')
    """
    start_time = time.perf_counter()
    compression = _check_arguments(
        max_seq_length,
        max_predictions_per_seq,
        dupe_factor,
        masked_lm_prob,
        short_seq_prob,
        num_workers,
        num_shards,
        negative_pool_size,
        compression,
        mask,
    )
    tokens = load_vocab(vocab_file)
    prefix = output_prefix(output_file)
    directory = _prepare_directory(prefix)
    spool_dir = None
    try:
        corpus, corpus_fingerprint, spool_dir, spool_invalid = _text_corpus(
            input_file, input_format
        )
        num_shards = num_shards or _auto_shards(corpus.total_bytes)
        config = InstanceConfig(
            vocab=tuple(tokens),
            layout=Layout(
                sequence_features=features.SEQUENCE_FEATURES,
                prediction_features=features.PREDICTION_FEATURES,
                label_feature=features.NEXT_SENTENCE_LABELS,
                pad_id=features.PAD_ID,
            ),
            do_lower_case=do_lower_case,
            max_seq_length=max_seq_length,
            max_predictions_per_seq=max_predictions_per_seq,
            random_seed=random_seed,
            dupe_factor=dupe_factor,
            masked_lm_prob=masked_lm_prob,
            short_seq_prob=short_seq_prob,
            do_whole_word_mask=do_whole_word_mask,
            mask=mask,
            negative_pool_size=negative_pool_size,
        )
        settings = {
            "corpus": corpus_fingerprint,
            "input_format": corpus.input_format,
            "vocab_sha256": vocab_sha256(vocab_file),
            "do_lower_case": do_lower_case,
            "max_seq_length": max_seq_length,
            "max_predictions_per_seq": max_predictions_per_seq,
            "random_seed": random_seed,
            "dupe_factor": dupe_factor,
            "masked_lm_prob": masked_lm_prob,
            "short_seq_prob": short_seq_prob,
            "do_whole_word_mask": do_whole_word_mask,
            "masked": mask,
            "negative_pool_size": negative_pool_size,
            "num_shards": num_shards,
            "compression": compression,
            "tool_version": tool_version(),
        }
        fingerprint = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
        names = [shard_name(prefix, i, num_shards, compression) for i in range(num_shards)]
        state = _RunState(prefix, fingerprint, directory, names, overwrite)
        todo = [i for i, name in enumerate(names) if not state.is_complete(name)]
        if todo:
            plan = corpus.slices(num_shards)
            _prescan(corpus, plan)
            _run_shards(
                corpus, plan, config, todo, names, compression, state, num_workers, progress
            )
        totals = ShardStats()
        for name in names:
            totals.add(state.stats(name))
        totals.invalid_utf8_replaced += spool_invalid  # bytes decoded before spooling (e.g. TFDS)
        if totals.num_documents and totals.num_single_sentence_documents == totals.num_documents:
            logger.warning(
                "every document has a single sentence, so every NSP label is 1 (random): "
                "separate documents with blank lines (Google's layout) or use --input_format blocks"
            )
        metadata = features.Metadata(
            max_seq_length=max_seq_length,
            max_predictions_per_seq=max_predictions_per_seq,
            vocab_size=len(tokens),
            vocab_sha256=settings["vocab_sha256"],
            do_lower_case=do_lower_case,
            num_instances=totals.num_instances,
            nsp_label_counts={
                str(features.IS_NEXT): totals.num_is_next,
                str(features.IS_RANDOM): totals.num_is_random,
            },
            seed=random_seed,
            tool_version=settings["tool_version"],
            masked=mask,
            num_masked_predictions=totals.num_masked_predictions,
            shards={os.path.basename(name): state.stats(name).num_instances for name in names},
            extra={
                "compression": compression or "",
                "corpus": corpus.description,
                "fingerprint": fingerprint,
                "dupe_factor": dupe_factor,
                "masked_lm_prob": masked_lm_prob,
                "short_seq_prob": short_seq_prob,
                "do_whole_word_mask": do_whole_word_mask,
                "negative_pool_size": negative_pool_size,
                "num_documents": totals.num_documents,
                "num_tokens": totals.num_tokens,
                "input_bytes": totals.bytes_read,
                "invalid_utf8_replaced": totals.invalid_utf8_replaced,
                "shard_stats": {os.path.basename(name): state.shards[name] for name in names},
            },
        )
        metadata_file = features.write_metadata(directory, metadata)
        state.finish()
    finally:
        if spool_dir:
            shutil.rmtree(spool_dir, ignore_errors=True)
    return CreateDataSummary(
        output_files=names,
        metadata_file=metadata_file,
        num_instances=totals.num_instances,
        num_tokens=totals.num_tokens,
        nsp_label_counts=metadata.nsp_label_counts,
        num_masked_predictions=totals.num_masked_predictions,
        num_documents=totals.num_documents,
        num_single_sentence_documents=totals.num_single_sentence_documents,
        input_bytes=totals.bytes_read,
        invalid_utf8_replaced=totals.invalid_utf8_replaced,
        shards_written=len(todo),
        shards_kept=num_shards - len(todo),
        seconds=time.perf_counter() - start_time,
        masked=mask,
    )


def _check_arguments(
    max_seq_length,
    max_predictions_per_seq,
    dupe_factor,
    masked_lm_prob,
    short_seq_prob,
    num_workers,
    num_shards,
    negative_pool_size,
    compression,
    mask,
) -> str | None:
    if max_seq_length < 5:
        raise ValueError(
            f"--max_seq_length must be >= 5 ([CLS] A [SEP] B [SEP]), got {max_seq_length}"
        )
    if mask and max_predictions_per_seq < 1:
        raise ValueError(f"--max_predictions_per_seq must be >= 1, got {max_predictions_per_seq}")
    if dupe_factor < 1:
        raise ValueError(f"--dupe_factor must be >= 1, got {dupe_factor}")
    if mask and not 0.0 < masked_lm_prob <= 1.0:
        raise ValueError(f"--masked_lm_prob must be in (0, 1], got {masked_lm_prob}")
    if not 0.0 <= short_seq_prob <= 1.0:
        raise ValueError(f"--short_seq_prob must be in [0, 1], got {short_seq_prob}")
    if num_workers < 1:
        raise ValueError(f"--num_workers must be >= 1, got {num_workers}")
    if num_shards is not None and num_shards < 1:
        raise ValueError(f"--num_shards must be >= 1, got {num_shards}")
    if negative_pool_size < 2:
        raise ValueError(f"--negative_pool_size must be >= 2, got {negative_pool_size}")
    if compression in (None, "", "none", "NONE"):
        return None
    if compression.upper() == "GZIP":
        return "GZIP"
    raise ValueError(f"--compression must be 'gzip' or none, got {compression!r}")


def _auto_shards(total_bytes: int) -> int:
    return max(1, min(MAX_AUTO_SHARDS, math.ceil(total_bytes / BYTES_PER_AUTO_SHARD)))


def _prepare_directory(prefix: str) -> str:
    directory = os.path.dirname(prefix) or "."
    try:
        tf.io.gfile.makedirs(directory)
        probe = tf.io.gfile.join(directory, f".kbert-write-probe-{os.getpid()}")
        with tf.io.gfile.GFile(probe, "w") as f:
            f.write("")
        tf.io.gfile.remove(probe)
    except (tf.errors.OpError, OSError) as e:
        reason = getattr(e, "message", None) or getattr(e, "strerror", None) or str(e)
        raise ValueError(
            f"--output_file {prefix}: cannot write to directory {directory} ({reason})"
        ) from None
    return directory


def _text_corpus(input_file, input_format: str):
    """(TextFiles, fingerprint, spool directory or None, invalid UTF-8 replaced while spooling):
    other sources are first written to a local temporary file in Google's layout, so every source
    is cut into shards the same way."""
    if isinstance(input_file, corpora.TextFiles):
        return input_file, input_file.fingerprint(), None, 0
    names_files = (
        input_file is None
        or isinstance(input_file, str)
        or (
            isinstance(input_file, (list, tuple))
            and bool(input_file)
            and all(isinstance(x, str) for x in input_file)
        )
    )
    source = corpora.resolve_corpus(input_file, input_format) if names_files else input_file
    if isinstance(source, corpora.TextFiles):
        return source, source.fingerprint(), None, 0
    spool_dir = tempfile.mkdtemp(prefix="kbert-corpus-")
    path = os.path.join(spool_dir, "corpus.txt")
    try:
        count, digest = corpora.write_google_layout(source, path)
        if count == 0:
            raise ValueError(
                f"{getattr(source, 'description', 'input corpus')}: the corpus holds no documents"
            )
    except BaseException:
        shutil.rmtree(spool_dir, ignore_errors=True)
        raise
    text_files = corpora.TextFiles(path, "google")
    text_files.description = getattr(source, "description", "Python iterable of documents")
    text_files.source = text_files.description
    stats = getattr(source, "stats", None)
    return text_files, digest, spool_dir, stats.invalid_utf8_replaced if stats is not None else 0


def _prescan(corpus: corpora.TextFiles, plan) -> None:
    """Catch corpora that cannot make NSP data before starting: reads documents only until two of
    them, one with several sentences, are seen (usually the first two)."""
    documents = multi = 0
    for segments in plan:
        for document in corpus.read(segments):
            documents += 1
            multi += len(document) > 1
            if documents >= 2 and multi:
                return
    name = corpus.source
    if documents == 0:
        raise ValueError(
            f"--input_file {name}: the corpus holds no documents (empty or blank input)"
        )
    if documents == 1:
        raise ValueError(
            f"--input_file {name}: the corpus holds a single document, so no random next segment "
            "(NSP label 1) can be drawn; separate documents with a blank line (Google's layout)"
        )
    if multi == 0:
        raise ValueError(
            f"--input_file {name}: all {documents} documents have a single sentence, so every NSP "
            "label would be 'random'; put one sentence per line with a blank line between documents "
            "(Google's layout) or use --input_format blocks"
        )


class _RunState:
    """Which shards are complete, with their counts, kept in `<prefix>.create_data_state.json`
    until the metadata is written; a run with other settings is refused unless `overwrite`."""

    def __init__(
        self, prefix: str, fingerprint: str, directory: str, names: list[str], overwrite: bool
    ):
        self.path = prefix + ".create_data_state.json"
        self.fingerprint = fingerprint
        self.names = names
        self.shards: dict[str, dict] = {}
        metadata = (
            features.read_metadata(directory)
            if tf.io.gfile.exists(features.metadata_path(directory))
            else None
        )
        previous = None
        if tf.io.gfile.exists(self.path):
            with tf.io.gfile.GFile(self.path) as f:
                previous = json.loads(f.read())
        elif metadata is not None and metadata.extra.get("fingerprint"):
            previous = {
                "fingerprint": metadata.extra["fingerprint"],
                "shards": None,
                "metadata": metadata,
            }
        if previous is not None and previous["fingerprint"] != fingerprint:
            if not overwrite:
                raise ValueError(
                    f"--output_file {prefix}: {directory} already holds pre-training data made with other "
                    "settings or input; use another directory or pass --overwrite"
                )
            previous = None
        if overwrite:
            for old in tf.io.gfile.glob(f"{prefix}-*-of-*.tfrecord*"):
                if old not in names:
                    tf.io.gfile.remove(old)
        if previous is not None and previous.get("shards") is not None:
            self.shards = {k: v for k, v in previous["shards"].items() if tf.io.gfile.exists(k)}
        elif previous is not None:
            self._from_metadata(previous["metadata"])
        if tf.io.gfile.exists(features.metadata_path(directory)) and not self.shards:
            tf.io.gfile.remove(features.metadata_path(directory))

    def _from_metadata(self, metadata: features.Metadata) -> None:
        """A finished run: its metadata holds per-shard counts only, so keep them when all shards are there."""
        extra = metadata.extra.get("shard_stats", {})
        for name in self.names:
            base = os.path.basename(name)
            if base in extra and tf.io.gfile.exists(name):
                self.shards[name] = extra[base]

    def is_complete(self, name: str) -> bool:
        """The shard exists under its final name and its counts are known."""
        return name in self.shards

    def stats(self, name: str) -> ShardStats:
        """Counts of a complete shard."""
        return ShardStats(**self.shards[name])

    def complete(self, name: str, stats: ShardStats) -> None:
        """Record a shard that was just renamed to its final name."""
        self.shards[name] = dataclasses.asdict(stats)
        self._save()

    def _save(self) -> None:
        tmp = self.path + ".incomplete"
        with tf.io.gfile.GFile(tmp, "w") as f:
            f.write(json.dumps({"fingerprint": self.fingerprint, "shards": self.shards}, indent=1))
        tf.io.gfile.rename(tmp, self.path, overwrite=True)

    def finish(self) -> None:
        """The metadata is written: the state file is no longer needed."""
        if tf.io.gfile.exists(self.path):
            tf.io.gfile.remove(self.path)


def _run_shards(
    corpus, plan, config, todo, names, compression, state, num_workers, progress
) -> None:
    options = tf.io.TFRecordOptions(compression_type=compression or "")
    writers: dict[int, tf.io.TFRecordWriter] = {}
    bar = _Progress(sum(sum(s.end - s.start for s in plan[i]) for i in todo), len(todo), progress)
    seen: dict[int, tuple[int, int]] = {}

    def on_records(shard, records, bytes_read, documents):
        writer = writers.get(shard)
        if writer is None:
            writer = writers[shard] = tf.io.TFRecordWriter(names[shard] + ".incomplete", options)
        for record in records:
            writer.write(record)
        before = seen.get(shard, (0, 0))
        seen[shard] = (bytes_read, documents)
        bar.update(bytes_read - before[0], documents - before[1], len(records))

    def on_done(shard, stats: ShardStats):
        writer = writers.pop(shard, None) or tf.io.TFRecordWriter(
            names[shard] + ".incomplete", options
        )
        writer.close()
        tf.io.gfile.rename(names[shard] + ".incomplete", names[shard], overwrite=True)
        state.complete(names[shard], stats)
        before = seen.pop(shard, (0, 0))
        bar.update(
            stats.bytes_read - before[0], stats.num_documents - before[1], 0, shard_done=True
        )

    try:
        if num_workers == 1 or len(todo) == 1:
            for shard in todo:
                for item in generate_shard(corpus, plan, shard, config):
                    if isinstance(item, ShardStats):
                        on_done(shard, item)
                    else:
                        on_records(shard, *item)
        else:
            _run_parallel(
                corpus, plan, config, todo, min(num_workers, len(todo)), on_records, on_done
            )
    finally:
        for writer in writers.values():
            writer.close()
        bar.close()


def _run_parallel(corpus, plan, config, todo, num_workers, on_records, on_done) -> None:
    context = multiprocessing.get_context("spawn")
    tasks = context.Queue()
    for shard in todo:
        tasks.put(shard)
    for _ in range(num_workers):
        tasks.put(None)
    # One pipe per worker, written only by it: if it dies mid-message, reading gets EOF instead of
    # waiting forever for the rest (a shared Queue stays open through the other workers).
    pipes = {}
    workers = []
    for _ in range(num_workers):
        reader, writer = context.Pipe(duplex=False)
        worker = context.Process(
            target=worker_main, args=(tasks, writer, corpus, plan, config), daemon=True
        )
        worker.start()
        writer.close()
        pipes[reader] = worker
        workers.append(worker)
    remaining = set(todo)
    try:
        while remaining:
            if not pipes:
                raise RuntimeError(
                    f"the workers ended with shard(s) {sorted(remaining)} unfinished"
                )
            for reader in multiprocessing.connection.wait(list(pipes), timeout=1.0):
                try:
                    message = reader.recv()
                except (EOFError, OSError):  # closed, or cut mid-message by the writer's death
                    worker = pipes.pop(reader)
                    worker.join(timeout=10)
                    if worker.exitcode != 0:
                        raise RuntimeError(
                            f"a worker process died (exit code {worker.exitcode}) with shard(s) "
                            f"{sorted(remaining)} unfinished; complete shards are kept, rerun the "
                            "same command to finish the set"
                        ) from None
                    continue
                kind, shard = message[0], message[1]
                if kind == "records":
                    on_records(shard, *message[2:])
                elif kind == "done":
                    on_done(shard, message[2])
                    remaining.discard(shard)
                else:
                    error = {"ValueError": ValueError, "FileNotFoundError": FileNotFoundError}.get(
                        message[2], OSError
                    )
                    raise error(message[3])
    finally:
        for worker in workers:
            if worker.is_alive():
                worker.terminate()
        for worker in workers:
            worker.join(timeout=5)


class _Progress:
    """tqdm bar over input bytes, with documents, instances and rate; silent when disabled."""

    def __init__(self, total_bytes: int, num_shards: int, enabled: bool):
        self.bar = None
        self.documents = self.instances = self.shards = 0
        self.num_shards = num_shards
        self.start = time.perf_counter()
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(
                total=total_bytes, unit="B", unit_scale=True, desc="create-data", smoothing=0.1
            )

    def update(
        self, bytes_read: int, documents: int, instances: int, shard_done: bool = False
    ) -> None:
        """Advance by what a worker reported."""
        self.documents += documents
        self.instances += instances
        self.shards += shard_done
        if self.bar is not None:
            rate = self.instances / max(1e-9, time.perf_counter() - self.start)
            self.bar.set_postfix_str(
                f"shards {self.shards}/{self.num_shards} docs {self.documents} "
                f"instances {self.instances} ({rate:,.0f}/s)",
                refresh=False,
            )
            self.bar.update(bytes_read)

    def close(self) -> None:
        """Close the bar."""
        if self.bar is not None:
            self.bar.close()
