"""`kbert.save_huggingface` / `kbert export --format huggingface`, checked against what Hugging Face
`transformers` wrote and computed (tests/data/huggingface/, made by
tests/make_huggingface_references.py): the same tensors and config as transformers' own
`save_pretrained`, the same log-probabilities, the same token ids. These tests need neither torch
nor transformers; tests/test_huggingface_live.py checks the same against transformers itself."""

import dataclasses
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from helpers import tiny_config, write_pretraining_records
from safetensors.numpy import load_file

import kbert
from kbert.checkpoints import init_from, read_source_config
from kbert.cli import main
from kbert.vocabulary import vocab_sha256

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "huggingface")
VOCAB = os.path.join(DATA, "vocab.txt")
SEQ_LEN, PREDICTIONS = 24, 4
# What transformers' BertConfig must read as kbert's model (the rest are its own defaults).
CONFIG_KEYS = (
    "architectures",
    "model_type",
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "hidden_act",
    "max_position_embeddings",
    "type_vocab_size",
    "layer_norm_eps",
    "pad_token_id",
    "tie_word_embeddings",
)


def model_from(folder):
    """A kbert pre-training model initialised from a Hugging Face folder (`--init_from`)."""
    model = kbert.build_pretraining_model(read_source_config(folder), SEQ_LEN, PREDICTIONS)
    init_from(model, folder)
    return model


def log_softmax(logits):
    logits = np.asarray(logits, "float64")
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


@pytest.fixture(scope="module")
def references():
    with np.load(os.path.join(DATA, "references.npz")) as arrays:
        return dict(arrays)


@pytest.mark.parametrize("name", ["random", "trained"])
def test_kbert_computes_transformers_log_probabilities(name, references):
    """random/ is transformers' own random BertForPreTraining; trained/ a tiny trained kbert run."""
    model = model_from(os.path.join(DATA, name))
    inputs = {
        key: references[key]
        for key in ("input_ids", "segment_ids", "input_mask", "masked_lm_positions")
    }
    outputs = model.predict(inputs, verbose=0)
    np.testing.assert_allclose(log_softmax(outputs["mlm"]), references[f"{name}_mlm"], atol=1e-4)
    np.testing.assert_allclose(log_softmax(outputs["nsp"]), references[f"{name}_nsp"], atol=1e-4)


@pytest.mark.parametrize("name", ["random", "trained"])
def test_export_writes_the_tensors_and_config_of_the_reference_folder(name, tmp_path):
    """random/ was written by transformers' save_pretrained: kbert writes the same file."""
    folder = os.path.join(DATA, name)
    out = kbert.save_huggingface(model_from(folder), str(tmp_path / "hf"), VOCAB, False)
    ours, theirs = (load_file(os.path.join(d, "model.safetensors")) for d in (out, folder))
    assert sorted(ours) == sorted(theirs)
    for key, value in theirs.items():
        assert ours[key].dtype == value.dtype and ours[key].shape == value.shape, key
        np.testing.assert_array_equal(ours[key], value, err_msg=key)
    config, reference = (read_json(os.path.join(d, "config.json")) for d in (out, folder))
    assert {k: config[k] for k in CONFIG_KEYS} == {k: reference[k] for k in CONFIG_KEYS}


def test_the_exported_tokenizer_files_are_those_transformers_read(tmp_path):
    """tokenization.json holds BertTokenizerFast's ids from folders kbert exported alike."""
    model = model_from(os.path.join(DATA, "trained"))
    out = kbert.save_huggingface(model, str(tmp_path / "hf"), VOCAB, do_lower_case=False)
    for name in ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        with open(os.path.join(out, name), "rb") as ours:
            with open(os.path.join(DATA, "trained", name), "rb") as theirs:
                assert ours.read() == theirs.read(), name


@pytest.mark.parametrize("case", ["uncased", "cased"])
def test_kbert_tokenizes_the_texts_as_transformers_did(case):
    from tfrecords_tools.tokenization import FullTokenizer

    texts = read_json(os.path.join(DATA, "texts.json"))
    expected = read_json(os.path.join(DATA, "tokenization.json"))[case]
    assert len(texts) >= 100
    ours = FullTokenizer(VOCAB, do_lower_case=case == "uncased").encode(texts)
    mismatches = [(t, a, b) for t, a, b in zip(texts, ours, expected) if a != b]
    assert not mismatches, mismatches[:3]


def test_init_from_the_export_gives_back_exactly_the_weights(tmp_path):
    keras.utils.set_random_seed(3)
    model = kbert.build_pretraining_model(tiny_config(num_hidden_layers=2), 16, 4)
    rng = np.random.default_rng(0)
    for variable in model.weights:  # every weight away from its initial value
        variable.assign(rng.normal(0, 0.5, variable.shape).astype("float32"))
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("".join(f"{t}\n" for t in ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]))
    with open(vocab, "a") as f:
        f.writelines(f"w{i}\n" for i in range(95))
    folder = kbert.save_huggingface(model, str(tmp_path / "hf"), str(vocab), do_lower_case=True)
    # HF's "gelu_new" is kbert's (Google's) "gelu": the tanh form.
    assert dataclasses.replace(read_source_config(folder), hidden_act="gelu") == model.bert_config
    again = kbert.build_pretraining_model(read_source_config(folder), 16, 4)
    assert "encoder, MLM head, NSP head" in init_from(again, folder)
    for ours, theirs in zip(model.weights, again.weights):
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy(), err_msg=ours.path)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A `kbert train` run of the tiny config on records whose metadata names vocab.txt."""
    tmp = tmp_path_factory.mktemp("hf_run")
    vocab = tmp / "vocab.txt"
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(95)]
    vocab.write_text("".join(f"{w}\n" for w in words))
    data = write_pretraining_records(str(tmp / "data"), num_records=16)
    metadata = os.path.join(data, "kbert_metadata.json")
    fields = dict(read_json(metadata), vocab_sha256=vocab_sha256(str(vocab)), do_lower_case=False)
    with open(metadata, "w") as f:
        json.dump(fields, f)
    config = tmp / "bert_config.json"
    tiny_config().to_json_file(str(config))
    run = str(tmp / "run")
    flags = ["--config", str(config), "--train_files", data, "--output_dir", run, "--steps", "2"]
    assert main(["train", *flags, "--batch_size", "8", "--verbose", "0"]) == 0
    return run, str(vocab)


def test_kbert_export_format_huggingface_writes_the_run_with_its_data_casing(run_dir, tmp_path):
    run, vocab = run_dir
    out = str(tmp_path / "hf")
    command = ["export", "--format", "huggingface", "--model", run, "--vocab_file", vocab]
    assert main([*command, "--output_dir", out]) == 0
    assert read_json(os.path.join(out, "tokenizer_config.json"))["do_lower_case"] is False
    tensors = load_file(os.path.join(out, "model.safetensors"))
    model = kbert.load_model(run, compile=False)
    # HF's Linear weight is the Keras kernel transposed.
    np.testing.assert_array_equal(
        tensors["cls.seq_relationship.weight"], model.get_layer("nsp").kernel.numpy().T
    )
    assert sorted(os.listdir(tmp_path)) == ["hf"]  # no temporary folder left beside it


def test_export_from_a_jax_session_equals_the_tensorflow_one(run_dir, tmp_path):
    run, vocab = run_dir
    outs = {}
    for backend in ("tensorflow", "jax"):
        outs[backend] = str(tmp_path / backend)
        code = f"import kbert; kbert.save_huggingface({run!r}, {outs[backend]!r}, {vocab!r})"
        done = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            env=dict(os.environ, KERAS_BACKEND=backend),
            timeout=600,
        )
        assert done.returncode == 0, done.stderr[-3000:]
    jax, tensorflow = (load_file(os.path.join(outs[b], "model.safetensors")) for b in outs)
    assert sorted(jax) == sorted(tensorflow)
    for key, value in tensorflow.items():
        np.testing.assert_array_equal(jax[key], value, err_msg=key)


def test_a_vocabulary_that_is_not_the_runs_is_refused(run_dir, tmp_path):
    run, _ = run_dir
    other = tmp_path / "vocab.txt"
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"x{i}" for i in range(95)]
    other.write_text("".join(f"{w}\n" for w in words))
    with pytest.raises(ValueError, match=r"vocab\.txt: not the vocabulary of the run's data"):
        kbert.save_huggingface(run, str(tmp_path / "hf"), str(other))
    assert not os.path.exists(tmp_path / "hf")


def test_casing_is_required_without_a_run_and_the_output_dir_without_a_default(
    run_dir, tmp_path, capsys
):
    _, vocab = run_dir
    model = kbert.build_pretraining_model(tiny_config(), 16, 4)
    with pytest.raises(ValueError, match="do_lower_case is unknown"):
        kbert.save_huggingface(model, str(tmp_path / "hf"), vocab)
    with pytest.raises(ValueError, match=r"vocab\.txt: 600 tokens, but the model's vocab_size"):
        kbert.save_huggingface(model, str(tmp_path / "hf"), VOCAB, do_lower_case=True)
    command = ["export", "--format", "huggingface", "--model", "run", "--vocab_file", VOCAB]
    assert main(command) == 1
    assert "needs --output_dir" in capsys.readouterr().err
    assert main([*command, "--output_dir", str(tmp_path / "hf"), "--version", "2"]) == 1
    assert "--version is for --format savedmodel" in capsys.readouterr().err
    savedmodel = ["export", "--model", "run", "--vocab_file", VOCAB, "--output_dir", "hf"]
    assert main(savedmodel) == 1
    assert "--output_dir is for --format huggingface" in capsys.readouterr().err
