"""inspect: decode records as text and name the first record that breaks the contract."""

import random

import pytest
import tensorflow as tf
from helpers import write_records

from kbert import features
from kbert.cli import main as kbert_main
from kbert.data import describe
from tfrecords_tools.create_pretraining_data import create_pretraining_data
from tfrecords_tools.inspect import inspect_records
from tfrecords_tools.vocab import SPECIAL_TOKENS, write_vocab

SEQ, PRED = 24, 3


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    work = tmp_path_factory.mktemp("inspect")
    rng = random.Random(0)
    words = [f"w{i}" for i in range(40)]
    documents = [
        [" ".join(rng.choice(words) for _ in range(5)) for _ in range(6)] for _ in range(20)
    ]
    vocab_file = str(work / "vocab.txt")
    write_vocab(list(SPECIAL_TOKENS) + words, vocab_file)
    summary = create_pretraining_data(
        documents,
        str(work / "data" / "train"),
        vocab_file,
        max_seq_length=SEQ,
        max_predictions_per_seq=PRED,
        dupe_factor=2,
        num_shards=2,
    )
    return work, vocab_file, summary


def good_record(**changes):
    values = {
        "input_ids": [2, 5, 6, 3, 7, 8, 3] + [0] * (SEQ - 7),
        "input_mask": [1] * 7 + [0] * (SEQ - 7),
        "segment_ids": [0, 0, 0, 0, 1, 1, 1] + [0] * (SEQ - 7),
        "masked_lm_positions": [1, 5, 0],
        "masked_lm_ids": [5, 8, 0],
        "masked_lm_weights": [1.0, 1.0, 0.0],
        "next_sentence_labels": [0],
    }
    values.update(changes)
    return features.to_example(values).SerializeToString()


def test_valid_set_decodes_as_text_with_masks_and_labels(dataset):
    work, vocab_file, summary = dataset
    report = inspect_records(str(work / "data" / "train-*"), num_records=2, vocab_file=vocab_file)
    assert report.validated and report.num_records == summary.num_instances
    assert report.nsp_label_counts == summary.nsp_label_counts
    assert len(report.examples) == 2
    assert report.examples[0].startswith("[CLS] ") and "[SEP]" in report.examples[0]
    assert "{w" in report.examples[0] and "next_sentence_label=" in report.examples[0]


def test_records_without_metadata_infer_their_lengths(tmp_path):
    path = write_records(tmp_path / "google.tfrecord", [good_record()] * 3)
    report = inspect_records(path)
    assert (report.max_seq_length, report.max_predictions_per_seq, report.num_records) == (
        SEQ,
        PRED,
        3,
    )
    assert report.metadata is None


@pytest.mark.parametrize(
    "changes, message",
    [
        (
            {"masked_lm_positions": [5, 1, 0], "masked_lm_ids": [8, 5, 0]},
            "masked_lm_positions: positions not sorted",
        ),
        (
            {"masked_lm_positions": [1, 9, 0]},
            "masked_lm_positions: position outside the real tokens",
        ),
        ({"masked_lm_weights": [1.0, 0.0, 1.0]}, "masked_lm_weights: not ones followed by zeros"),
        (
            {"input_mask": [1, 1, 0, 1, 1, 1, 1] + [0] * (SEQ - 7)},
            "input_mask: not ones followed by zeros",
        ),
        ({"segment_ids": [0, 1, 0, 0, 1, 1, 1] + [0] * (SEQ - 7)}, "segment_ids: not 0s then 1s"),
        ({"next_sentence_labels": [2]}, "next_sentence_labels: not 0 or 1"),
        (
            {"input_ids": [2, 5, 6, 3, 7, 8, 3, 4] + [0] * (SEQ - 8)},
            "input_ids: non-zero id on padding",
        ),
        ({"masked_lm_positions": [1, 5]}, "record 3: does not match the contract"),
    ],
)
def test_first_violation_is_named(tmp_path, changes, message):
    path = write_records(
        tmp_path / "bad.tfrecord", [good_record()] * 3 + [good_record(**changes)] + [good_record()]
    )
    with pytest.raises(ValueError) as error:
        inspect_records(path, max_seq_length=SEQ, max_predictions_per_seq=PRED)
    assert "bad.tfrecord: record 3" in str(error.value) and message in str(error.value)


def test_ids_beyond_the_vocab_are_violations(dataset, tmp_path):
    _, vocab_file, _ = dataset
    path = write_records(tmp_path / "v.tfrecord", [good_record(masked_lm_ids=[5, 999, 0])])
    with pytest.raises(ValueError, match="record 0: masked_lm_ids: id >= vocab size 45"):
        inspect_records(path, vocab_file=vocab_file)


def test_metadata_disagreeing_with_the_records_is_a_violation(dataset, tmp_path):
    work, _, summary = dataset
    metadata = features.read_metadata(str(work / "data"))
    metadata.num_instances += 1
    for name in metadata.shards:
        tf.io.gfile.copy(str(work / "data" / name), str(tmp_path / name))
    metadata.shards[next(iter(metadata.shards))] += 1
    features.write_metadata(str(tmp_path), metadata)
    with pytest.raises(ValueError, match="holds .* records, kbert_metadata.json says"):
        inspect_records(str(tmp_path / "train-*"))


def test_cli_exits_1_naming_the_violation_and_0_when_valid(dataset, tmp_path, capsys):
    work, vocab_file, _ = dataset
    assert (
        kbert_main(["inspect-data", "--input_file", str(work / "data"), "--vocab_file", vocab_file])
        == 0
    )
    assert "OK: all" in capsys.readouterr().out
    path = write_records(tmp_path / "bad.tfrecord", [good_record(next_sentence_labels=[3])])
    assert kbert_main(["inspect-data", "--input_file", path]) == 1
    err = capsys.readouterr().err.strip()
    assert (
        err.startswith("kbert inspect-data: error: ")
        and "next_sentence_labels" in err
        and "\n" not in err
    )


def test_gzip_shards_are_recognised_by_their_first_bytes_not_their_name(tmp_path):
    plain = write_records(tmp_path / "plain.tfrecord.gz", [good_record()] * 2)
    write_records(tmp_path / "packed.tfrecord", [good_record()], compression="GZIP")

    report = inspect_records(str(tmp_path / "*.tfrecord*"))

    assert report.files == [str(tmp_path / "packed.tfrecord"), plain]
    assert report.num_records == 3


def test_a_directory_is_read_like_kbert_data_reads_it(dataset, tmp_path):
    work, _, _ = dataset
    directory = tmp_path / "copy"
    directory.mkdir()
    for path in tf.io.gfile.glob(str(work / "data" / "*")):
        name = path.rsplit("/", 1)[1]
        # Shards named without .tfrecord are shards all the same; the vocab beside them is not.
        tf.io.gfile.copy(path, str(directory / name.replace(".tfrecord", "")))
    (directory / "vocab.txt").write_text("[PAD]\n")

    report = inspect_records(str(directory))

    assert report.files == describe(str(directory))["files"] and len(report.files) == 2
    assert report.validated and report.metadata is not None


def test_comma_separated_patterns_are_read_together(tmp_path):
    first = write_records(tmp_path / "a.tfrecord", [good_record()] * 2)
    second = write_records(tmp_path / "b.tfrecord", [good_record()])

    report = inspect_records(f"{first},{second}")

    assert report.files == [first, second] and report.num_records == 3


def test_a_requested_length_that_disagrees_with_the_records_is_named(tmp_path):
    path = write_records(tmp_path / "google.tfrecord", [good_record()])

    with pytest.raises(ValueError, match=f"records have input_ids of length {SEQ}, expected 16"):
        inspect_records(path, max_seq_length=16)


def test_every_shard_is_checked_not_only_the_first(tmp_path):
    write_records(tmp_path / "a.tfrecord", [good_record()])
    short = features.to_example(
        {
            "input_ids": [2, 5, 3, 6, 3, 0],
            "input_mask": [1, 1, 1, 1, 1, 0],
            "segment_ids": [0, 0, 0, 1, 1, 0],
            "masked_lm_positions": [1, 0, 0],
            "masked_lm_ids": [5, 0, 0],
            "masked_lm_weights": [1.0, 0.0, 0.0],
            "next_sentence_labels": [0],
        }
    ).SerializeToString()
    write_records(tmp_path / "b.tfrecord", [short])

    with pytest.raises(ValueError, match="b.tfrecord: records have input_ids of length 6"):
        inspect_records(str(tmp_path))


def test_shards_in_two_directories_are_each_checked_against_their_own_metadata(dataset, tmp_path):
    work, _, summary = dataset
    for copy in ("one", "two"):
        for path in tf.io.gfile.glob(str(work / "data" / "*")):
            (tmp_path / copy).mkdir(exist_ok=True)
            tf.io.gfile.copy(path, str(tmp_path / copy / path.rsplit("/", 1)[1]))

    report = inspect_records(f"{tmp_path / 'one'},{tmp_path / 'two'}")

    assert report.validated and report.num_records == 2 * summary.num_instances
