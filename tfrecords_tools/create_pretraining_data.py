"""Corpus -> masked pre-training TFRecords: Google's algorithm, streaming, parallel, resumable.

Google's `create_pretraining_data.py` with its flags and defaults, and beyond it:

- streaming with bounded memory: documents flow through in blocks; a "random next" segment B
  comes from another document of the current or previous block (`negative_pool_size` documents);
- byte-identical output for any number of workers: the corpus is cut into `num_shards` byte
  ranges at document boundaries (`corpora.Slices`, found by whoever makes the shard), shard i
  holds exactly the instances of range i, and its random generators are seeded by
  (random_seed, i);
- two runners of the same shards: `num_workers` local processes, or an Apache Beam pipeline
  (`runner="beam"`, `tfrecords_tools.beam`: Dataflow, Flink, Spark) that writes the same bytes;
- sharded, atomic, resumable output `<prefix>-00000-of-000NN.tfrecord[.gz]` (`shard_files`): a
  rerun of the same command keeps complete shards and makes the rest; `kbert_metadata.json` is
  written last.

Records follow `kbert.features` (Google's layout). With `mask=False` (`--no_mask`) they hold only
input_ids, input_mask, segment_ids and next_sentence_labels, for dynamic masking in kbert.data.
"""

from __future__ import annotations

import contextlib
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
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import tensorflow as tf

from kbert import features
from kbert.errors import IncompleteRunError, InputError, MissingDependencyError, SettingError
from kbert.vocabulary import keep_vocab
from tfrecords_tools import corpora
from tfrecords_tools.example_encoder import Layout
from tfrecords_tools.instances import InstanceConfig, ShardStats, generate_shard, worker_main
from tfrecords_tools.shard_files import (
    RunState,
    ShardJob,
    ShardWriter,
    output_prefix,
    shard_name,
)
from tfrecords_tools.vocab import load_vocab, vocab_sha256

logger = logging.getLogger(__name__)

MAX_AUTO_SHARDS = 4096
BYTES_PER_AUTO_SHARD = 1 << 20
RUNNERS = ("local", "beam")
BEAM_EXTRA_MISSING = '--runner beam needs Apache Beam, an optional extra: pip install "kbert[beam]"'
LAYOUT = Layout(
    sequence_features=features.SEQUENCE_FEATURES,
    prediction_features=features.PREDICTION_FEATURES,
    label_feature=features.NEXT_SENTENCE_LABELS,
    pad_id=features.PAD_ID,
)


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
    beam_counters: dict[str, int] = dataclasses.field(default_factory=dict)

    @property
    def is_random_share(self) -> float:
        """Share of instances whose B segment is random (label 1)."""
        return self.nsp_label_counts.get(str(features.IS_RANDOM), 0) / max(1, self.num_instances)

    @property
    def mean_masked_positions(self) -> float:
        """Mean number of masked positions per instance."""
        return self.num_masked_predictions / max(1, self.num_instances)


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
    progress: Callable[..., Any] | bool | None = None,
    runner: str = "local",
    beam_pipeline_options: str | None = None,
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
        num_workers: processes making shards (local runner); the output does not depend on it.
        num_shards: output files; default one per MiB of input (at most 4096).
        negative_pool_size: documents per block; random B segments come from the current and
            previous block, so memory stays bounded.
        compression: None or "gzip".
        mask: False writes unmasked records for dynamic masking (`--no_mask`).
        overwrite: replace a dataset made with other settings under the same prefix.
        progress: reports the corpus spooled and the input bytes made into shards (local
            runner), called like `tqdm.tqdm` (e.g. that, or `kbert.progress.progress`); True
            means `tqdm.tqdm`.
        runner: "local" (processes on this machine) or "beam" (an Apache Beam pipeline; needs
            the `kbert[beam]` extra); both write the same bytes.
        beam_pipeline_options: Beam's flags as one string, e.g. "--runner=DataflowRunner
            --project=... --region=... --temp_location=gs://..."; Beam's defaults when None.

    Returns:
        A `CreateDataSummary` of the whole set.

    Examples:
    >>> import tempfile, os
    >>> from tfrecords_tools import corpora, vocab
    >>> work = tempfile.mkdtemp()
    >>> documents = [[f"Document {d} sentence {s} is here." for s in range(6)] for d in range(8)]
    >>> _ = vocab.learn_vocab(corpora.sentences_of(documents), f"{work}/vocab.txt", vocab_size=200)
    >>> summary = create_pretraining_data(
    ...     documents, f"{work}/data/train", f"{work}/vocab.txt",
    ...     max_seq_length=32, max_predictions_per_seq=5, dupe_factor=2)
    >>> summary.num_instances > 0, os.path.basename(summary.output_files[0])
    (True, 'train-00000-of-00001.tfrecord')
    """
    start_time = time.perf_counter()
    compression = _check_run_arguments(
        num_workers, num_shards, compression, runner, beam_pipeline_options
    )
    tokens = load_vocab(vocab_file)
    config = InstanceConfig(
        vocab=tuple(tokens),
        layout=LAYOUT,
        do_lower_case=do_lower_case,
        max_seq_length=max_seq_length,
        max_predictions_per_seq=max_predictions_per_seq,
        random_seed=random_seed,
        dupe_factor=dupe_factor,
        masked_lm_prob=masked_lm_prob,
        short_seq_prob=short_seq_prob,
        do_whole_word_mask=do_whole_word_mask,
        masked=mask,
        negative_pool_size=negative_pool_size,
    )
    if progress is True:  # the bool this argument was before it took a tqdm-like factory
        from tqdm import tqdm as progress
    progress = progress or None
    beam = _beam_runner(beam_pipeline_options) if runner == "beam" else None
    prefix = output_prefix(output_file)
    directory = _prepare_directory(prefix)
    with _text_corpus(input_file, input_format, progress) as spooled:
        corpus, corpus_fingerprint, spool_invalid = spooled
        if beam is not None:
            beam.check_paths(corpus, prefix)
        num_shards = num_shards or _auto_shards(corpus.total_bytes)
        settings = {
            "corpus": corpus_fingerprint,
            "input_format": corpus.input_format,
            "vocab_sha256": vocab_sha256(vocab_file),
            **config.settings(),
            "num_shards": num_shards,
            "compression": compression,
            "tool_version": tool_version(),
        }
        fingerprint = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
        names = [shard_name(prefix, i, num_shards, compression) for i in range(num_shards)]
        state = RunState(prefix, fingerprint, directory, names, overwrite)
        job = ShardJob(corpus, corpus.slices(num_shards), config, names, compression, state.log)
        todo = state.todo()
        counters: dict[str, int] = {}
        if todo:
            _prescan(corpus, job.plan)
            if beam is not None:
                counters = beam.make_shards(job, todo)
                state.refresh()
            else:
                _run_local(job, todo, state, num_workers, progress)
        totals = _totals(state, spool_invalid)
        metadata = _metadata(config, settings, fingerprint, corpus.description, state, totals)
        # The vocabulary travels with the shards (metadata last: it marks the set complete).
        keep_vocab(directory, vocab_file)
        metadata_file = features.write_metadata(directory, metadata)
        state.finish()
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
        beam_counters=counters,
    )


def _check_run_arguments(
    num_workers, num_shards, compression, runner, beam_pipeline_options
) -> str | None:
    """Check the settings that are not the algorithm's; returns the compression type."""
    if num_workers < 1:
        raise SettingError(f"--num_workers must be >= 1, got {num_workers}")
    if num_shards is not None and num_shards < 1:
        raise SettingError(f"--num_shards must be >= 1, got {num_shards}")
    if runner not in RUNNERS:
        raise SettingError(f"--runner must be one of {', '.join(RUNNERS)}, got {runner!r}")
    if beam_pipeline_options and runner != "beam":
        raise SettingError("--beam_pipeline_options is for --runner beam only")
    if compression in (None, "", "none", "NONE"):
        return None
    if compression.upper() == "GZIP":
        return "GZIP"
    raise SettingError(f"--compression must be 'gzip' or none, got {compression!r}")


def _beam_runner(beam_pipeline_options: str | None):
    """`tfrecords_tools.beam.BeamRunner` of the options; Beam is imported only here."""
    try:
        from tfrecords_tools import beam
    except ImportError as e:
        if (e.name or "").split(".")[0] == "apache_beam":
            raise MissingDependencyError(BEAM_EXTRA_MISSING) from None
        raise
    return beam.BeamRunner(beam_pipeline_options)


def _totals(state: RunState, spool_invalid: int) -> ShardStats:
    """Counts of the whole set, summed over the shards' records (every shard must be complete)."""
    missing = [name for name in state.names if name not in state.shards]
    if missing:
        raise IncompleteRunError(
            f"the run ended with {len(missing)} shard(s) missing (first: {missing[0]}); complete "
            "shards are kept, rerun the same command to finish the set"
        )
    totals = ShardStats()
    for name in state.names:
        totals.add(state.stats(name))
    totals.invalid_utf8_replaced += spool_invalid  # bytes decoded before spooling (e.g. TFDS)
    if totals.num_documents and totals.num_single_sentence_documents == totals.num_documents:
        logger.warning(
            "every document has a single sentence, so every NSP label is 1 (random): "
            "separate documents with blank lines (Google's layout) or use --input_format blocks"
        )
    return totals


def _metadata(
    config: InstanceConfig,
    settings: dict,
    fingerprint: str,
    corpus_description: str,
    state: RunState,
    totals: ShardStats,
) -> features.Metadata:
    """The metadata of a complete set: the algorithm's settings that `features.Metadata` names
    go to its fields (`random_seed` as `seed`), the others to its `extra`."""
    algorithm = config.settings()
    seed = algorithm.pop("random_seed")
    fields = {field.name for field in dataclasses.fields(features.Metadata)}
    return features.Metadata(
        **{name: value for name, value in algorithm.items() if name in fields},
        seed=seed,
        vocab_size=len(config.vocab),
        vocab_sha256=settings["vocab_sha256"],
        num_instances=totals.num_instances,
        nsp_label_counts={
            str(features.IS_NEXT): totals.num_is_next,
            str(features.IS_RANDOM): totals.num_is_random,
        },
        tool_version=settings["tool_version"],
        num_masked_predictions=totals.num_masked_predictions,
        shards={os.path.basename(name): state.stats(name).num_instances for name in state.names},
        extra={
            **{name: value for name, value in algorithm.items() if name not in fields},
            "compression": settings["compression"] or "",
            "corpus": corpus_description,
            "fingerprint": fingerprint,
            "num_documents": totals.num_documents,
            "num_tokens": totals.num_tokens,
            "input_bytes": totals.bytes_read,
            "invalid_utf8_replaced": totals.invalid_utf8_replaced,
            "shard_stats": {os.path.basename(name): state.shards[name] for name in state.names},
        },
    )


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
        raise SettingError(
            f"--output_file {prefix}: cannot write to directory {directory} ({reason})"
        ) from None
    return directory


@contextlib.contextmanager
def _text_corpus(
    input_file, input_format: str, progress: Callable[..., Any] | None
) -> Iterator[tuple[corpora.TextFiles, str, int]]:
    """(TextFiles, fingerprint, invalid UTF-8 replaced while spooling): other sources are first
    written to a local temporary file in Google's layout (removed on exit), so every source is cut
    into shards the same way."""
    if isinstance(input_file, corpora.TextFiles):
        yield input_file, input_file.fingerprint(), 0
        return
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
        yield source, source.fingerprint(), 0
        return
    spool_dir = tempfile.mkdtemp(prefix="kbert-corpus-")
    try:
        path = os.path.join(spool_dir, "corpus.txt")
        count, digest = corpora.write_google_layout(source, path, progress)
        if count == 0:
            raise InputError(
                f"{getattr(source, 'description', 'input corpus')}: the corpus holds no documents"
            )
        text_files = corpora.TextFiles(path, "google")
        text_files.description = getattr(source, "description", "Python iterable of documents")
        text_files.source = text_files.description
        stats = getattr(source, "stats", None)
        yield text_files, digest, stats.invalid_utf8_replaced if stats is not None else 0
    finally:
        shutil.rmtree(spool_dir, ignore_errors=True)


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
        raise InputError(
            f"--input_file {name}: the corpus holds no documents (empty or blank input)"
        )
    if documents == 1:
        raise InputError(
            f"--input_file {name}: the corpus holds a single document, so no random next segment "
            "(NSP label 1) can be drawn; separate documents with a blank line (Google's layout)"
        )
    if multi == 0:
        raise InputError(
            f"--input_file {name}: all {documents} documents have a single sentence, so every "
            "NSP label would be 'random'; put one sentence per line with a blank line between "
            "documents (Google's layout) or use --input_format blocks"
        )


def _run_local(
    job: ShardJob,
    todo: list[int],
    state: RunState,
    num_workers: int,
    progress: Callable[..., Any] | None,
) -> None:
    """Make the shards `todo` in this process or `num_workers` processes; this process writes."""
    writers: dict[int, ShardWriter] = {}
    bar = None
    if progress is not None:
        total = sum(job.plan.nominal_bytes(i) for i in todo)
        bar = progress(total=total, desc="making shards", unit="bytes")
    seen: dict[int, int] = {}  # input bytes reported so far, per unfinished shard

    def on_records(shard, records, bytes_read, documents):
        if shard not in writers:
            writers[shard] = ShardWriter(job.names[shard], job.compression)
        writers[shard].write(records)
        if bar is not None:
            bar.update(bytes_read - seen.get(shard, 0))
        seen[shard] = bytes_read

    def on_done(shard, stats: ShardStats):
        writer = writers.pop(shard, None) or ShardWriter(job.names[shard], job.compression)
        writer.publish()
        state.complete(job.names[shard], stats)
        if bar is not None:
            bar.update(stats.bytes_read - seen.pop(shard, 0))

    try:
        if num_workers == 1 or len(todo) == 1:
            for shard in todo:
                for item in generate_shard(job.corpus, job.plan, shard, job.config):
                    if isinstance(item, ShardStats):
                        on_done(shard, item)
                    else:
                        on_records(shard, *item)
        else:
            workers = min(num_workers, len(todo))
            _run_parallel(job.corpus, job.plan, job.config, todo, workers, on_records, on_done)
    finally:
        for writer in writers.values():
            writer.abandon()
        if bar is not None:
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
                raise IncompleteRunError(
                    f"the workers ended with shard(s) {sorted(remaining)} unfinished"
                )
            for reader in multiprocessing.connection.wait(list(pipes), timeout=1.0):
                try:
                    message = reader.recv()
                except (EOFError, OSError):  # closed, or cut mid-message by the writer's death
                    worker = pipes.pop(reader)
                    worker.join(timeout=10)
                    if worker.exitcode != 0:
                        raise IncompleteRunError(
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


if __name__ == "__main__":
    # Google's entry point, `python -m tfrecords_tools.create_pretraining_data --flag=value ...`,
    # is `kbert create-data` with the same flags.
    from kbert.cli import main

    sys.exit(main(["create-data", *sys.argv[1:]]))
