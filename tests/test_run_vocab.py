"""The vocabulary travels with the data and the run: `kbert create-data` keeps it beside the
shards, a run trained on them keeps it, and export, the Hugging Face export and fine-tuning find it
without `--vocab_file`."""

import json
import os

import pytest
from helpers import tiny_config

import kbert
from kbert.cli import main
from kbert.data import describe
from kbert.vocabulary import vocab_sha256
from tfrecords_tools import vocab
from tfrecords_tools.create_pretraining_data import create_pretraining_data

pytestmark = pytest.mark.tensorflow_only

WORDS = "the runner ran quickly over a hill and back home again while birds sang".split()
DOCUMENTS = [
    [
        f"{WORDS[(d + i) % len(WORDS)]} {WORDS[(d * 3 + i) % len(WORDS)]} ran home ."
        for i in range(4)
    ]
    for d in range(12)
]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """create-data output and a two-step run trained on it; the vocab the data was made with."""
    root = tmp_path_factory.mktemp("vocab_travels")
    vocab_file = str(root / "my-vocab.txt")
    vocab.write_vocab(
        ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", *sorted(set(WORDS))], vocab_file
    )
    create_pretraining_data(
        DOCUMENTS,
        str(root / "data" / "train"),
        vocab_file,
        max_seq_length=16,
        max_predictions_per_seq=3,
        dupe_factor=2,
        random_seed=0,
    )
    size = len(open(vocab_file).read().splitlines())
    kbert.pretrain(
        tiny_config(vocab_size=size),
        str(root / "data" / "train*"),
        str(root / "run"),
        steps=2,
        batch_size=4,
        seed=0,
        verbose=0,
    )
    return root, vocab_file


def test_the_data_and_the_run_keep_the_vocabulary_they_were_made_with(run):
    root, vocab_file = run
    original = open(vocab_file, "rb").read()
    assert (root / "data" / "vocab.txt").read_bytes() == original
    assert (root / "run" / "vocab.txt").read_bytes() == original
    metadata = json.loads((root / "data" / "kbert_metadata.json").read_text())
    assert vocab_sha256(str(root / "run" / "vocab.txt")) == metadata["vocab_sha256"]


def test_a_users_other_vocab_txt_beside_the_shards_is_never_replaced(run, tmp_path):
    _, vocab_file = run
    (tmp_path / "data").mkdir()
    theirs = tmp_path / "data" / "vocab.txt"
    theirs.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nsomething\n")
    create_pretraining_data(
        DOCUMENTS, str(tmp_path / "data" / "train"), vocab_file, max_seq_length=16, random_seed=0
    )
    assert theirs.read_text().endswith("something\n")
    info = describe(str(tmp_path / "data" / "train*"))
    assert info["vocab_file"] is None, "a vocab.txt that is not the data's must not be used"


def test_export_and_huggingface_export_find_the_runs_vocabulary(run, tmp_path, capsys):
    root, vocab_file = run
    assert main(["export", "--model", str(root / "run"), "--export_base", str(tmp_path)]) == 0
    exported = tmp_path / "kbert" / "1" / "assets" / "vocab.txt"
    assert exported.read_text().split() == open(vocab_file).read().split()
    hf = tmp_path / "hf"
    args = ["export", "--format", "huggingface", "--model", str(root / "run")]
    assert main([*args, "--output_dir", str(hf)]) == 0
    assert (hf / "vocab.txt").read_text().split() == open(vocab_file).read().split()


def test_without_a_kept_vocabulary_export_asks_for_vocab_file(run, tmp_path, capsys):
    root, _ = run
    model = tmp_path / "elsewhere" / "model.keras"
    model.parent.mkdir()
    model.write_bytes((root / "run" / "model.keras").read_bytes())
    assert main(["export", "--model", str(model), "--export_base", str(tmp_path)]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1, errors
    (error,) = errors
    assert str(model) in error and "--vocab_file" in error
    assert not os.path.exists(tmp_path / "kbert")
