"""Shard files while a data set is being made: names, atomic writes, completion records, resumption.

Both runners (local processes and Apache Beam) follow the same protocol:

- a shard is written under `<name>.<attempt>.incomplete`, a temporary name unique to each attempt,
  and renamed to its final name when complete, so two attempts at one shard (a runner retrying a
  worker that is still writing) never share a file; the last rename replaces identical bytes;
- then its counts are recorded in `<prefix>.create_data_state/<shard>.json`, with the run's
  fingerprint. A shard is complete when both exist: a final name without a record (the writer
  died in between) is made again;
- `kbert_metadata.json` is written last, from the records, and the state directory is removed.
  A rerun keeps complete shards (from the records, or from the metadata of a finished set).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import re
import uuid
from collections.abc import Iterable

import tensorflow as tf

from kbert import features
from kbert.errors import SettingError
from tfrecords_tools import corpora
from tfrecords_tools.instances import InstanceConfig, ShardStats, generate_shard

INCOMPLETE = ".incomplete"
_OUTPUT_SUFFIXES = (".tfrecords", ".tfrecord", ".tf_record", ".tfrecord.gz")


def output_prefix(output_file: str) -> str:
    """Google's `--output_file` (e.g. /tmp/tf_examples.tfrecord) -> the shards' name prefix."""
    if "," in output_file:
        raise SettingError(
            f"--output_file {output_file}: give one path prefix; kbert names the shards itself "
            "(<prefix>-00000-of-000NN.tfrecord)"
        )
    if "://" not in output_file:
        # tf.io.gfile.glob finds nothing through "a//b", and shards are found by globbing.
        output_file = re.sub("/{2,}", "/", output_file)
    for suffix in _OUTPUT_SUFFIXES:
        if output_file.endswith(suffix):
            return output_file[: -len(suffix)]
    return output_file


def shard_name(prefix: str, index: int, num_shards: int, compression: str | None) -> str:
    """Path of shard `index` of `num_shards`."""
    suffix = ".tfrecord.gz" if compression == "GZIP" else ".tfrecord"
    return f"{prefix}-{index:05d}-of-{num_shards:05d}{suffix}"


class ShardWriter:
    """Writes one shard under a temporary name unique to this attempt; `publish` renames it."""

    def __init__(self, name: str, compression: str | None):
        self.name = name
        self.temporary = f"{name}.{uuid.uuid4().hex[:12]}{INCOMPLETE}"
        options = tf.io.TFRecordOptions(compression_type=compression or "")
        self._writer = tf.io.TFRecordWriter(self.temporary, options)

    def write(self, records: Iterable[bytes]) -> None:
        """Append serialized records."""
        for record in records:
            self._writer.write(record)

    def publish(self) -> None:
        """Close the file and give it its final name (atomically, replacing any earlier one)."""
        self._writer.close()
        tf.io.gfile.rename(self.temporary, self.name, overwrite=True)

    def abandon(self) -> None:
        """Close and delete the unfinished file."""
        self._writer.close()
        if tf.io.gfile.exists(self.temporary):
            tf.io.gfile.remove(self.temporary)


@dataclasses.dataclass(frozen=True)
class ShardLog:
    """The completion records of one run: `<directory>/<shard basename>.json` per complete shard,
    each holding the run's fingerprint and the shard's counts. Cheap to pickle to workers."""

    directory: str
    fingerprint: str

    def record(self, name: str, stats: ShardStats) -> None:
        """Record a shard that was just renamed to its final name (atomically)."""
        path = self._path(name)
        tmp = f"{path}.{uuid.uuid4().hex[:12]}{INCOMPLETE}"
        tf.io.gfile.makedirs(self.directory)
        with tf.io.gfile.GFile(tmp, "w") as f:
            f.write(json.dumps({"fingerprint": self.fingerprint, **dataclasses.asdict(stats)}))
        tf.io.gfile.rename(tmp, path, overwrite=True)

    def find(self, name: str) -> dict | None:
        """The counts recorded for shard `name` by this run's settings, or None."""
        path = self._path(name)
        if not tf.io.gfile.exists(path):
            return None
        record = _read_json(path)
        return record if record.pop("fingerprint", None) == self.fingerprint else None

    def read(self) -> tuple[dict[str, dict], set[str]]:
        """(counts of recorded shards by basename, fingerprints seen): read in parallel, since on
        object stores each small file is one request."""
        if not tf.io.gfile.isdir(self.directory):
            return {}, set()
        paths = tf.io.gfile.glob(tf.io.gfile.join(self.directory, "*.json"))
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            records = list(pool.map(_read_json, paths))
        fingerprints = {record.pop("fingerprint", None) for record in records}
        names = [os.path.basename(path)[: -len(".json")] for path in paths]
        return dict(zip(names, records)), fingerprints

    def remove(self) -> None:
        """Delete the records (the metadata now holds them)."""
        if tf.io.gfile.isdir(self.directory):
            tf.io.gfile.rmtree(self.directory)

    def _path(self, name: str) -> str:
        return tf.io.gfile.join(self.directory, os.path.basename(name) + ".json")


def _read_json(path: str) -> dict:
    with tf.io.gfile.GFile(path) as f:
        return json.loads(f.read())


@dataclasses.dataclass(frozen=True)
class ShardJob:
    """What making any shard of a run needs; pickled to the worker processes of either runner."""

    corpus: corpora.TextFiles
    plan: corpora.Slices
    config: InstanceConfig
    names: list[str]
    compression: str | None
    log: ShardLog

    def completed(self, index: int) -> ShardStats | None:
        """Counts of shard `index` if an earlier attempt completed it: a runner that retries a
        failed bundle of several shards runs the completed ones again."""
        record = self.log.find(self.names[index])
        if record is None or not tf.io.gfile.exists(self.names[index]):
            return None
        return ShardStats(**record)

    def make_shard(self, index: int) -> ShardStats:
        """Generate shard `index`, write it atomically, record it; returns its counts."""
        writer = ShardWriter(self.names[index], self.compression)
        try:
            for item in generate_shard(self.corpus, self.plan, index, self.config):
                if isinstance(item, ShardStats):
                    stats = item
                else:
                    writer.write(item[0])
            writer.publish()
        except BaseException:
            writer.abandon()
            raise
        self.log.record(self.names[index], stats)
        return stats


class RunState:
    """Which shards of a run are complete, with their counts (the driver's view).

    A data set under the same prefix made with other settings is refused unless `overwrite`,
    which deletes it first. Unfinished files of earlier attempts are deleted.
    """

    def __init__(
        self, prefix: str, fingerprint: str, directory: str, names: list[str], overwrite: bool
    ):
        self.prefix = prefix
        self.directory = directory
        self.names = names
        self.log = ShardLog(prefix + ".create_data_state", fingerprint)
        self.shards: dict[str, dict] = {}
        metadata = features.read_metadata(directory)
        records, fingerprints = self.log.read()
        if metadata is not None and metadata.extra.get("fingerprint"):
            fingerprints.add(metadata.extra["fingerprint"])
        if fingerprints - {fingerprint}:
            if not overwrite:
                raise SettingError(
                    f"--output_file {prefix}: {directory} already holds pre-training data made "
                    "with other settings or input; use another directory or pass --overwrite"
                )
            self.log.remove()
            if metadata is not None:
                tf.io.gfile.remove(features.metadata_path(directory))
            metadata, records = None, {}
        if overwrite:
            for old in tf.io.gfile.glob(f"{prefix}-*-of-*.tfrecord*"):
                if old not in names:
                    tf.io.gfile.remove(old)
        self.remove_temporaries()
        kept = dict(metadata.extra.get("shard_stats", {})) if metadata is not None else {}
        kept.update(records)
        existing = self._existing()
        for name in names:
            base = os.path.basename(name)
            if base in kept and name in existing:
                self.shards[name] = kept[base]
        if metadata is not None and not self.shards:
            tf.io.gfile.remove(features.metadata_path(directory))

    def todo(self) -> list[int]:
        """Indices of the shards still to make."""
        return [i for i, name in enumerate(self.names) if name not in self.shards]

    def stats(self, name: str) -> ShardStats:
        """Counts of a complete shard."""
        return ShardStats(**self.shards[name])

    def complete(self, name: str, stats: ShardStats) -> None:
        """Record a shard that was just renamed to its final name."""
        self.log.record(name, stats)
        self.shards[name] = dataclasses.asdict(stats)

    def refresh(self) -> None:
        """Take in the shards that other processes (Beam workers) recorded."""
        records, _ = self.log.read()
        existing = self._existing()
        for name in self.names:
            base = os.path.basename(name)
            if base in records and name not in self.shards and name in existing:
                self.shards[name] = records[base]

    def _existing(self) -> set[str]:
        """Shard files under their final names: one listing, not one request per shard."""
        return set(tf.io.gfile.glob(f"{self.prefix}-*-of-*.tfrecord*")) & set(self.names)

    def remove_temporaries(self) -> None:
        """Delete the unfinished files of attempts that did not complete."""
        for path in tf.io.gfile.glob(f"{self.prefix}-*-of-*.tfrecord*{INCOMPLETE}"):
            tf.io.gfile.remove(path)

    def finish(self) -> None:
        """The metadata is written: the records are no longer needed."""
        self.remove_temporaries()
        self.log.remove()
