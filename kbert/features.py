"""The pre-training TFRecord contract, defined once.

Google's `tf.train.Example` layout from google-research/bert, unchanged, so records written by
google-research/bert, TF Model Garden or NVIDIA's scripts are read as they are, and ours are
readable by them. The writer (`tfrecords_tools`) and the reader (`kbert.data`) both use this
module and nothing else to know names, dtypes and shapes. Beside the shards `kbert create-data`
writes `kbert_metadata.json` (`Metadata`, last: it marks the set complete) and a copy of the
vocabulary, `vocab.txt` (`kbert.vocabulary.keep_vocab`), which runs trained on them keep.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import tensorflow as tf

from kbert.errors import InputError
from kbert.io import read_json, write_json
from kbert.vocabulary import VOCAB_FILENAME, vocab_sha256

INPUT_IDS = "input_ids"
INPUT_MASK = "input_mask"
SEGMENT_IDS = "segment_ids"
MASKED_LM_POSITIONS = "masked_lm_positions"
MASKED_LM_IDS = "masked_lm_ids"
MASKED_LM_WEIGHTS = "masked_lm_weights"
NEXT_SENTENCE_LABELS = "next_sentence_labels"

# Features whose length is max_seq_length / max_predictions_per_seq / 1.
SEQUENCE_FEATURES = (INPUT_IDS, INPUT_MASK, SEGMENT_IDS)
PREDICTION_FEATURES = (MASKED_LM_POSITIONS, MASKED_LM_IDS, MASKED_LM_WEIGHTS)
LABEL_FEATURES = (NEXT_SENTENCE_LABELS,)
# Records written for dynamic masking (`--no_mask`) carry only these.
UNMASKED_FEATURES = SEQUENCE_FEATURES + LABEL_FEATURES
ALL_FEATURES = SEQUENCE_FEATURES + PREDICTION_FEATURES + LABEL_FEATURES

FLOAT_FEATURES = frozenset({MASKED_LM_WEIGHTS})

# The model's inputs, in Google's names (int32).
MODEL_INPUTS = (INPUT_IDS, SEGMENT_IDS, INPUT_MASK, MASKED_LM_POSITIONS)

PAD_ID = 0
# next_sentence_labels, Google's meaning.
IS_NEXT = 0  # segment B is the actual continuation of segment A
IS_RANDOM = 1  # segment B was drawn from another document

METADATA_FILENAME = "kbert_metadata.json"


def feature_lengths(max_seq_length: int, max_predictions_per_seq: int) -> dict[str, int]:
    """Length of every feature of a masked record for the given sizes."""
    lengths = {name: max_seq_length for name in SEQUENCE_FEATURES}
    lengths.update({name: max_predictions_per_seq for name in PREDICTION_FEATURES})
    lengths[NEXT_SENTENCE_LABELS] = 1
    return lengths


def feature_spec(
    max_seq_length: int, max_predictions_per_seq: int | None, masked: bool = True
) -> dict[str, tf.io.FixedLenFeature]:
    """`tf.io.parse_example` spec for records of these sizes.

    `masked=False` gives the spec of records written for dynamic masking (no MLM features).
    """
    names = ALL_FEATURES if masked else UNMASKED_FEATURES
    lengths = feature_lengths(max_seq_length, max_predictions_per_seq or 0)
    return {
        name: tf.io.FixedLenFeature(
            [lengths[name]], tf.float32 if name in FLOAT_FEATURES else tf.int64
        )
        for name in names
    }


def to_example(features: dict[str, Any]) -> tf.train.Example:
    """Build a `tf.train.Example` from a dict of python/numpy sequences (Google's writer layout)."""
    feature = {}
    for name, values in features.items():
        if name in FLOAT_FEATURES:
            feature[name] = tf.train.Feature(float_list=tf.train.FloatList(value=list(values)))
        else:
            feature[name] = tf.train.Feature(
                int64_list=tf.train.Int64List(value=[int(v) for v in values])
            )
    return tf.train.Example(features=tf.train.Features(feature=feature))


@dataclasses.dataclass
class Metadata:
    """What `kbert_metadata.json` beside a set of shards records about them."""

    max_seq_length: int
    max_predictions_per_seq: int
    vocab_size: int
    vocab_sha256: str
    do_lower_case: bool
    num_instances: int
    nsp_label_counts: dict[str, int]
    seed: int
    tool_version: str
    masked: bool = True
    num_masked_predictions: int = 0
    shards: dict[str, int] = dataclasses.field(default_factory=dict)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Metadata:
        """Read a metadata dict; unknown keys go to `extra`, missing required keys raise."""
        names = {f.name for f in dataclasses.fields(cls)}
        known = {k: v for k, v in data.items() if k in names}
        extra = dict(known.pop("extra", {}) or {})
        extra.update({k: v for k, v in data.items() if k not in names})
        missing = [
            f.name
            for f in dataclasses.fields(cls)
            if f.name not in known
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        ]
        if missing:
            raise InputError(f"{METADATA_FILENAME} lacks required field(s): {', '.join(missing)}")
        return cls(**known, extra=extra)


def metadata_path(directory: str) -> str:
    """Path of the metadata file that sits beside the shards in `directory`."""
    return tf.io.gfile.join(directory, METADATA_FILENAME)


def data_vocab(directory: str, metadata: Metadata) -> str | None:
    """The vocab.txt beside the shards in `directory` if it is the one their metadata's
    `vocab_sha256` names, else None."""
    path = tf.io.gfile.join(directory, VOCAB_FILENAME)
    if tf.io.gfile.exists(path) and vocab_sha256(path) == metadata.vocab_sha256:
        return path
    return None


def write_metadata(directory: str, metadata: Metadata) -> str:
    """Write `kbert_metadata.json` atomically (temporary name, then rename); returns its path."""

    return write_json(metadata_path(directory), metadata.to_dict())


def read_metadata(directory: str) -> Metadata | None:
    """The metadata beside the shards in `directory`, or None when there is none (Google's data)."""

    path = metadata_path(directory)
    if not tf.io.gfile.exists(path):
        return None
    data = read_json(path, METADATA_FILENAME)
    try:
        return Metadata.from_dict(data)
    except (ValueError, TypeError) as e:
        raise InputError(f"{path}: not a valid kbert metadata file ({e})") from None
