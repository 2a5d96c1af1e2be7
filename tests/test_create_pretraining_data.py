"""create_pretraining_data: Google's algorithm and format, determinism, resumption, errors."""

import dataclasses
import glob
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from kbert import features
from kbert.cli import main as kbert_main
from kbert.progress import progress
from tfrecords_tools.create_pretraining_data import create_pretraining_data
from tfrecords_tools.instances import InstanceConfig
from tfrecords_tools.vocab import SPECIAL_TOKENS, write_vocab

SEQ = 32
PRED = 4
SENTENCE_TOKENS = 6

# Google's reader spec (run_pretraining.py input_fn_builder), written out as it is.
GOOGLE_SPEC = {
    "input_ids": tf.io.FixedLenFeature([SEQ], tf.int64),
    "input_mask": tf.io.FixedLenFeature([SEQ], tf.int64),
    "segment_ids": tf.io.FixedLenFeature([SEQ], tf.int64),
    "masked_lm_positions": tf.io.FixedLenFeature([PRED], tf.int64),
    "masked_lm_ids": tf.io.FixedLenFeature([PRED], tf.int64),
    "masked_lm_weights": tf.io.FixedLenFeature([PRED], tf.float32),
    "next_sentence_labels": tf.io.FixedLenFeature([1], tf.int64),
}


def provenance_corpus(num_documents=200, seed=0):
    """Documents whose every token says where it comes from: word "d<doc>s<sentence>"."""
    rng = random.Random(seed)
    documents = []
    for d in range(num_documents):
        # Every 10th document has one sentence (its instances must all be "random next").
        num_sentences = 1 if d % 10 == 0 else rng.randint(2, 12)
        documents.append([" ".join([f"d{d}s{s}"] * SENTENCE_TOKENS) for s in range(num_sentences)])
    return documents


def write_google_layout(documents, path):
    with open(path, "w", encoding="utf-8") as f:
        for document in documents:
            f.write("\n".join(document) + "\n\n")
    return str(path)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """(corpus file, vocab file, documents) of the provenance corpus."""
    work = tmp_path_factory.mktemp("corpus")
    documents = provenance_corpus()
    words = sorted({w for document in documents for sentence in document for w in sentence.split()})
    vocab_file = str(work / "vocab.txt")
    write_vocab(list(SPECIAL_TOKENS) + words, vocab_file)
    return write_google_layout(documents, work / "corpus.txt"), vocab_file, documents


def read_records(pattern, spec=None, compression=""):
    files = sorted(glob.glob(pattern))
    dataset = tf.data.TFRecordDataset(files, compression_type=compression).batch(4096)
    parts = [tf.io.parse_example(batch, spec or GOOGLE_SPEC) for batch in dataset]
    return {name: np.concatenate([p[name].numpy() for p in parts]) for name in parts[0]}


def shard_bytes(directory):
    """Shards under their final names (unfinished ones are `*.incomplete`)."""
    files = sorted(
        f for f in glob.glob(f"{directory}/*.tfrecord*") if not f.endswith(".incomplete")
    )
    return {os.path.basename(f): open(f, "rb").read() for f in files}


@pytest.fixture(scope="module")
def big_set(corpus, tmp_path_factory):
    """>= 5,000 instances of the provenance corpus, with the run's summary."""
    corpus_file, vocab_file, _ = corpus
    out = tmp_path_factory.mktemp("big")
    summary = create_pretraining_data(
        corpus_file,
        str(out / "train.tfrecord"),
        vocab_file,
        max_seq_length=SEQ,
        max_predictions_per_seq=PRED,
        dupe_factor=20,
        random_seed=7,
        num_shards=3,
    )
    tokens = open(vocab_file).read().split("\n")[:-1]
    return summary, read_records(f"{out}/train-*"), tokens, out


def origin(tokens, ids):
    """(document, sentence) of each token id."""
    word = [tokens[i] for i in ids]
    return [(int(w[1:].split("s")[0]), int(w.split("s")[1])) for w in word]


def restored(records, k):
    ids = records["input_ids"][k].copy()
    used = records["masked_lm_weights"][k] == 1.0
    ids[records["masked_lm_positions"][k][used]] = records["masked_lm_ids"][k][used]
    return ids


def test_records_parse_with_googles_spec_and_kbert_features(big_set):
    summary, records, _, out = big_set
    ours = read_records(f"{out}/train-*", features.feature_spec(SEQ, PRED))
    assert summary.num_instances >= 5000
    assert len(records["input_ids"]) == summary.num_instances
    for name in GOOGLE_SPEC:
        np.testing.assert_array_equal(records[name], ours[name])


def test_serialized_records_equal_kbert_features_to_example(big_set):
    _, _, _, out = big_set
    for raw in tf.data.TFRecordDataset(sorted(glob.glob(f"{out}/train-*"))).take(50):
        example = tf.train.Example.FromString(raw.numpy())
        values = {}
        for name in features.ALL_FEATURES:
            feature = example.features.feature[name]
            values[name] = (
                feature.float_list.value
                if name in features.FLOAT_FEATURES
                else feature.int64_list.value
            )
        # Equal as messages (protobuf does not fix the byte order of map entries).
        assert example == features.to_example(values)


def test_nsp_labels_follow_googles_rule_and_provenance(big_set):
    summary, records, tokens, _ = big_set
    n_random = n_next = 0
    for k in range(len(records["input_ids"])):
        ids = restored(records, k)
        n = records["input_mask"][k].sum()
        segments = records["segment_ids"][k][:n]
        sep_a = int(np.flatnonzero(segments == 1)[0]) - 1
        a = origin(tokens, ids[1:sep_a])
        b = origin(tokens, ids[sep_a + 1 : n - 1])
        assert len({d for d, _ in a}) == 1 and len({d for d, _ in b}) == 1
        doc_a, doc_b = a[0][0], b[0][0]
        label = records["next_sentence_labels"][k][0]
        if label == features.IS_NEXT:
            n_next += 1
            assert doc_a == doc_b, k
            sentences = [s for _, s in a + b]
            assert sentences == sorted(sentences), k
            assert min(s for _, s in b) == max(s for _, s in a) + 1, k
        else:
            n_random += 1
            assert doc_a != doc_b, k
        if doc_a % 10 == 0:  # one-sentence documents: B is always random
            assert label == features.IS_RANDOM, k
    share = n_random / (n_random + n_next)
    assert share >= 0.5
    assert summary.is_random_share == pytest.approx(share)
    assert summary.nsp_label_counts == {"0": n_next, "1": n_random}


def test_masked_count_is_googles_rule(big_set):
    _, records, _, _ = big_set
    lengths = records["input_mask"].sum(axis=1)
    expected = [min(PRED, max(1, int(round(n * 0.15)))) for n in lengths.tolist()]
    np.testing.assert_array_equal(records["masked_lm_weights"].sum(axis=1), expected)


def test_masking_is_80_10_10_and_never_touches_special_tokens(big_set):
    _, records, tokens, _ = big_set
    special_ids = {tokens.index(t) for t in SPECIAL_TOKENS}
    mask_id = tokens.index("[MASK]")
    kinds = {"mask": 0, "same": 0, "random": 0}
    for k in range(len(records["input_ids"])):
        used = records["masked_lm_weights"][k] == 1.0
        positions = records["masked_lm_positions"][k][used]
        assert list(positions) == sorted(set(positions))
        original = restored(records, k)
        assert not set(original[positions].tolist()) & special_ids  # never [CLS]/[SEP]/...
        for position, label in zip(positions, records["masked_lm_ids"][k][used]):
            shown = records["input_ids"][k][position]
            if shown == mask_id:
                kinds["mask"] += 1
            elif shown == label:
                kinds["same"] += 1
            else:
                kinds["random"] += 1
                assert shown not in special_ids
    total = sum(kinds.values())
    assert total > 15000
    assert kinds["mask"] / total == pytest.approx(0.8, abs=0.03)
    assert kinds["same"] / total == pytest.approx(0.1, abs=0.03)
    assert kinds["random"] / total == pytest.approx(0.1, abs=0.03)


def test_metadata_describes_the_records(big_set, corpus):
    summary, records, tokens, out = big_set
    metadata = features.read_metadata(str(out))
    assert metadata.max_seq_length == SEQ and metadata.max_predictions_per_seq == PRED
    assert metadata.vocab_size == len(tokens) and metadata.do_lower_case is True
    assert metadata.num_instances == len(records["input_ids"]) and metadata.seed == 7
    assert metadata.masked is True
    assert metadata.num_masked_predictions == int(records["masked_lm_weights"].sum())
    labels = records["next_sentence_labels"][:, 0]
    assert metadata.nsp_label_counts == {
        "0": int((labels == 0).sum()),
        "1": int((labels == 1).sum()),
    }
    assert sorted(metadata.shards) == [f"train-0000{i}-of-00003.tfrecord" for i in range(3)]
    assert sum(metadata.shards.values()) == metadata.num_instances
    assert not glob.glob(f"{out}/*.incomplete") and not glob.glob(f"{out}/*state*")


def test_metadata_records_every_setting_of_the_algorithm(big_set):
    _, _, _, out = big_set
    metadata = features.read_metadata(str(out)).to_dict()
    recorded = {**metadata, **metadata["extra"], "random_seed": metadata["seed"]}
    names = [
        f.name for f in dataclasses.fields(InstanceConfig) if f.name not in ("vocab", "layout")
    ]
    assert {name: recorded[name] for name in names} == {
        "do_lower_case": True,
        "max_seq_length": SEQ,
        "max_predictions_per_seq": PRED,
        "random_seed": 7,
        "dupe_factor": 20,
        "masked_lm_prob": 0.15,
        "short_seq_prob": 0.1,
        "do_whole_word_mask": False,
        "masked": True,
        "negative_pool_size": 1000,
    }


def _small(corpus_file, vocab_file, out, **kwargs):
    settings = dict(max_seq_length=SEQ, max_predictions_per_seq=PRED, dupe_factor=2, num_shards=3)
    settings.update(kwargs)
    return create_pretraining_data(corpus_file, str(out / "train"), vocab_file, **settings)


def test_output_is_byte_identical_for_1_and_2_workers_and_seeded(corpus, tmp_path):
    corpus_file, vocab_file, _ = corpus
    _small(corpus_file, vocab_file, tmp_path / "w1", num_workers=1)
    _small(corpus_file, vocab_file, tmp_path / "w2", num_workers=2)
    _small(corpus_file, vocab_file, tmp_path / "again", num_workers=1, progress=True)  # tqdm
    _small(corpus_file, vocab_file, tmp_path / "seed", num_workers=1, random_seed=99)
    one = shard_bytes(tmp_path / "w1")
    assert len(one) == 3
    assert shard_bytes(tmp_path / "w2") == one
    assert shard_bytes(tmp_path / "again") == one
    assert shard_bytes(tmp_path / "seed") != one


def test_progress_off_a_terminal_is_lines_for_spooling_and_making_shards(corpus, tmp_path, capsys):
    _, vocab_file, documents = corpus
    _small(documents, vocab_file, tmp_path, num_workers=2, progress=progress)
    err = capsys.readouterr().err
    spooling = [line for line in err.splitlines() if line.startswith("spooling: ")]
    assert spooling and spooling[-1].startswith(
        f"spooling: {len(documents)}/{len(documents)} documents (100%"
    )
    shards = [line for line in err.splitlines() if line.startswith("making shards: ")]
    assert len(shards) >= 3 and "bytes (100%" in shards[-1] and "\r" not in err


def test_whole_word_masking_masks_every_piece_of_a_word(tmp_path):
    rng = random.Random(1)
    stems = [f"w{i}" for i in range(10, 60)]
    suffixes = [f"q{j}" for j in range(10)]
    documents = [
        [
            " ".join(
                rng.choice(stems) + (rng.choice(suffixes) if rng.random() < 0.6 else "")
                for _ in range(8)
            )
            for _ in range(6)
        ]
        for _ in range(60)
    ]
    vocab_file = str(tmp_path / "vocab.txt")
    write_vocab(list(SPECIAL_TOKENS) + stems + ["##" + s for s in suffixes], vocab_file)
    corpus_file = write_google_layout(documents, tmp_path / "corpus.txt")
    tokens = open(vocab_file).read().split("\n")[:-1]

    def partially_masked_words(records):
        partial = 0
        for k in range(len(records["input_ids"])):
            ids = restored(records, k)
            masked = set(
                records["masked_lm_positions"][k][records["masked_lm_weights"][k] == 1.0].tolist()
            )
            for p in masked:
                start = p  # a "##" piece belongs to the word before it, never across [CLS]/[SEP]
                while (
                    tokens[ids[start]].startswith("##")
                    and tokens[ids[start - 1]] not in SPECIAL_TOKENS
                ):
                    start -= 1
                end = p + 1
                while end < SEQ and tokens[ids[end]].startswith("##"):
                    end += 1
                partial += not set(range(start, end)) <= masked
        return partial

    _small(corpus_file, vocab_file, tmp_path / "wwm", do_whole_word_mask=True, dupe_factor=5)
    _small(corpus_file, vocab_file, tmp_path / "plain", dupe_factor=5)
    assert partially_masked_words(read_records(f"{tmp_path}/wwm/train-*")) == 0
    assert partially_masked_words(read_records(f"{tmp_path}/plain/train-*")) > 0


def test_no_mask_writes_only_the_unmasked_features(corpus, tmp_path):
    corpus_file, vocab_file, _ = corpus
    summary = _small(corpus_file, vocab_file, tmp_path, mask=False)
    raw = next(iter(tf.data.TFRecordDataset(summary.output_files[0])))
    assert set(tf.train.Example.FromString(raw.numpy()).features.feature) == set(
        features.UNMASKED_FEATURES
    )
    records = read_records(f"{tmp_path}/train-*", features.feature_spec(SEQ, None, masked=False))
    assert len(records["input_ids"]) == summary.num_instances
    metadata = features.read_metadata(str(tmp_path))
    assert metadata.masked is False and metadata.num_masked_predictions == 0


def test_gzip_shards_are_readable(corpus, tmp_path):
    corpus_file, vocab_file, _ = corpus
    summary = _small(corpus_file, vocab_file, tmp_path, compression="gzip")
    assert all(f.endswith(".tfrecord.gz") for f in summary.output_files)
    records = read_records(f"{tmp_path}/train-*", compression="GZIP")
    assert len(records["input_ids"]) == summary.num_instances


def test_rerun_keeps_complete_shards_and_other_settings_are_refused(corpus, tmp_path):
    corpus_file, vocab_file, _ = corpus
    first = _small(corpus_file, vocab_file, tmp_path)
    before = shard_bytes(tmp_path)
    again = _small(corpus_file, vocab_file, tmp_path)
    assert (again.shards_kept, again.shards_written) == (3, 0)
    assert again.num_instances == first.num_instances and shard_bytes(tmp_path) == before
    with pytest.raises(ValueError, match="other settings"):
        _small(corpus_file, vocab_file, tmp_path, random_seed=5)
    replaced = _small(
        corpus_file, vocab_file, tmp_path, random_seed=5, num_shards=2, overwrite=True
    )
    assert sorted(shard_bytes(tmp_path)) == sorted(
        os.path.basename(f) for f in replaced.output_files
    )


def test_rerun_with_a_doubled_slash_in_the_prefix_keeps_complete_shards(corpus, tmp_path):
    corpus_file, vocab_file, _ = corpus
    settings = dict(max_seq_length=SEQ, max_predictions_per_seq=PRED, dupe_factor=2, num_shards=2)
    create_pretraining_data(corpus_file, f"{tmp_path}//train", vocab_file, **settings)
    again = create_pretraining_data(corpus_file, f"{tmp_path}//train", vocab_file, **settings)
    assert (again.shards_kept, again.shards_written) == (2, 0)


def test_single_document_shards_draw_negatives_from_other_documents(tmp_path):
    documents = [[" ".join([f"d{d}s{s}"] * 4) for s in range(5)] for d in range(2)]
    vocab_file = str(tmp_path / "vocab.txt")
    write_vocab(
        list(SPECIAL_TOKENS) + sorted({w for doc in documents for s in doc for w in s.split()}),
        vocab_file,
    )
    summary = _small(
        write_google_layout(documents, tmp_path / "c.txt"),
        vocab_file,
        tmp_path,
        num_shards=2,
        dupe_factor=20,
    )
    records = read_records(f"{tmp_path}/train-*")
    tokens = open(vocab_file).read().split("\n")[:-1]
    assert summary.nsp_label_counts["1"] > 0
    for k in np.flatnonzero(records["next_sentence_labels"][:, 0] == 1):
        ids = restored(records, k)
        segments = records["segment_ids"][k]
        a = {d for d, _ in origin(tokens, ids[1 : np.flatnonzero(segments == 1)[0] - 1])}
        b = {d for d, _ in origin(tokens, ids[segments == 1][:-1])}
        assert a != b


def test_python_documents_and_python_api_defaults(tmp_path):
    documents = [[f"Document {d} sentence {s} is here." for s in range(6)] for d in range(8)]
    vocab_file = str(tmp_path / "vocab.txt")
    from tfrecords_tools import corpora, vocab

    vocab.learn_vocab(corpora.sentences_of(documents), vocab_file, vocab_size=120)
    summary = create_pretraining_data(documents, str(tmp_path / "out" / "x.tfrecord"), vocab_file)
    assert os.path.basename(summary.output_files[0]) == "x-00000-of-00001.tfrecord"
    metadata = features.read_metadata(str(tmp_path / "out"))
    assert (metadata.max_seq_length, metadata.max_predictions_per_seq, metadata.seed) == (
        128,
        20,
        12345,
    )
    assert metadata.extra["dupe_factor"] == 10


def test_killed_worker_leaves_no_complete_looking_shard_and_rerun_finishes(corpus, tmp_path):
    psutil = pytest.importorskip("psutil")
    corpus_file, vocab_file, _ = corpus
    settings = dict(max_seq_length=SEQ, max_predictions_per_seq=PRED, dupe_factor=100, num_shards=6)
    create_pretraining_data(corpus_file, str(tmp_path / "reference" / "t"), vocab_file, **settings)
    reference = shard_bytes(tmp_path / "reference")
    out = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "kbert",
        "create-data",
        "--input_file",
        corpus_file,
        "--output_file",
        str(out / "t"),
        "--vocab_file",
        vocab_file,
        "--max_seq_length",
        str(SEQ),
        "--max_predictions_per_seq",
        str(PRED),
        "--dupe_factor",
        "100",
        "--num_shards",
        "6",
        "--num_workers",
        "2",
        "--quiet",
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed = None
    deadline = time.time() + 120
    while killed is None and process.poll() is None and time.time() < deadline:
        if glob.glob(f"{out}/t-*.tfrecord"):
            workers = [
                p
                for p in psutil.Process(process.pid).children(recursive=True)
                if "spawn_main" in " ".join(p.cmdline())
            ]
            if workers:
                killed = workers[0].pid
                os.kill(killed, signal.SIGKILL)
        time.sleep(0.01)
    _, stderr = process.communicate(timeout=120)
    assert killed is not None, "the run finished before a worker could be killed"
    assert process.returncode == 1 and "rerun the same command" in stderr
    partial = shard_bytes(out)
    assert 0 < len(partial) < 6 and not os.path.exists(features.metadata_path(str(out)))
    for name, data in partial.items():  # whatever carries a final name is complete
        assert data == reference[name]

    summary = create_pretraining_data(
        corpus_file, str(out / "t"), vocab_file, num_workers=2, **settings
    )
    assert summary.shards_kept == len(partial)
    assert shard_bytes(out) == reference
    assert features.read_metadata(str(out)).num_instances == summary.num_instances


@pytest.fixture
def cli_inputs(tmp_path, corpus):
    corpus_file, vocab_file, _ = corpus
    (tmp_path / "empty.txt").write_text("\n\n")
    (tmp_path / "one_doc.txt").write_text("One sentence.\nAnother sentence.\n")
    (tmp_path / "single_sentences.txt").write_text("One.\n\nTwo.\n\nThree.\n")
    (tmp_path / "no_pad.txt").write_text("[UNK]\n[PAD]\n[CLS]\n[SEP]\n[MASK]\nword\n")
    (tmp_path / "no_mask.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\nword\n")
    (tmp_path / "a_file").write_text("x")
    return {"corpus": corpus_file, "vocab": vocab_file, "dir": str(tmp_path)}


BAD_INPUTS = {
    "missing_vocab": ({"vocab_file": "{dir}/nope.txt"}, "nope.txt: no such"),
    "vocab_without_pad_at_0": ({"vocab_file": "{dir}/no_pad.txt"}, "id 0 must be [PAD]"),
    "vocab_without_mask": ({"vocab_file": "{dir}/no_mask.txt"}, "lacks required token(s) [MASK]"),
    "empty_corpus": ({"input_file": "{dir}/empty.txt"}, "holds no documents"),
    "one_document_corpus": ({"input_file": "{dir}/one_doc.txt"}, "single document"),
    "single_sentence_documents": ({"input_file": "{dir}/single_sentences.txt"}, "single sentence"),
    "glob_matching_nothing": (
        {"input_file": "{dir}/missing*.txt"},
        "missing*.txt: no file matches",
    ),
    "short_max_seq_length": ({"max_seq_length": "4"}, "--max_seq_length must be >= 5"),
    "no_predictions": ({"max_predictions_per_seq": "0"}, "--max_predictions_per_seq must be >= 1"),
    "unwritable_output_directory": (
        {"output_file": "{dir}/a_file/sub/train"},
        "cannot write to directory",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_a_one_line_error(case, cli_inputs, capsys):
    changes, message = BAD_INPUTS[case]
    flags = {
        "input_file": cli_inputs["corpus"],
        "vocab_file": cli_inputs["vocab"],
        "output_file": "{dir}/out/train",
        "max_seq_length": str(SEQ),
        "dupe_factor": "1",
    }
    flags.update(changes)
    argv = ["create-data", "--quiet"]
    for name, value in flags.items():
        argv += [f"--{name}", value.format(**cli_inputs)]
    assert kbert_main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("kbert create-data: error: ") and "\n" not in err
    assert message in err


def test_googles_command_line_writes_what_kbert_create_data_writes(corpus, tmp_path, capsys):
    corpus_file, vocab_file, _ = corpus
    google_flags = [
        f"--input_file={corpus_file}",
        f"--vocab_file={vocab_file}",
        "--do_lower_case=True",
        f"--max_seq_length={SEQ}",
        f"--max_predictions_per_seq={PRED}",
        "--masked_lm_prob=0.15",
        "--random_seed=7",
        "--dupe_factor=2",
        "--short_seq_prob=0.1",
        "--nodo_whole_word_mask",
    ]
    google = subprocess.run(
        [
            sys.executable,
            "-m",
            "tfrecords_tools.create_pretraining_data",
            *google_flags,
            f"--output_file={tmp_path / 'google' / 'train'}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert google.returncode == 0, google.stderr
    # Not a terminal: progress comes as whole lines, not a carriage-return bar.
    progress = [line for line in google.stderr.splitlines() if line.startswith("making shards: ")]
    assert progress and "bytes (100%" in progress[-1] and "\r" not in google.stderr
    assert (
        kbert_main(
            [
                "create-data",
                "--quiet",
                *google_flags,
                f"--output_file={tmp_path / 'kbert' / 'train'}",
            ]
        )
        == 0
    )
    assert "making shards" not in capsys.readouterr().err  # --quiet
    written = shard_bytes(tmp_path / "google")
    assert written and written == shard_bytes(tmp_path / "kbert")


@pytest.mark.parametrize(
    "module, usage", [("vocab", "kbert vocab"), ("inspect", "kbert inspect-data")]
)
def test_runnable_looking_modules_run_their_kbert_command(module, usage):
    missing_flags = subprocess.run(
        [sys.executable, "-m", f"tfrecords_tools.{module}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert missing_flags.returncode != 0 and usage in missing_flags.stderr
