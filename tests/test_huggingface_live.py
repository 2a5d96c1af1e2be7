"""`kbert export --format huggingface` loaded by Hugging Face transformers itself (PyTorch, CPU).

Needs the `huggingface-test` extra (`pip install -e ".[huggingface-test]"`); CI runs these in a
stage of their own: `python -m pytest tests -m huggingface`. Without transformers and torch they
are skipped, and tests/test_huggingface.py checks against transformers' committed outputs.
"""

import json
import logging
import os

import keras
import numpy as np
import pytest
from make_huggingface_references import (
    INTERMEDIATE,
    reference_inputs,
    trained_kbert_run,
    transformers_log_probs,
)

import kbert
from kbert.checkpoints import init_from, read_source_config
from kbert.cli import main

pytestmark = pytest.mark.huggingface
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # local folders only: never the Hub
transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "huggingface")
VOCAB = os.path.join(DATA, "vocab.txt")
HEAD_TENSORS = {
    "cls.predictions.bias",
    "cls.predictions.transform.dense.weight",
    "cls.predictions.transform.dense.bias",
    "cls.predictions.transform.LayerNorm.weight",
    "cls.predictions.transform.LayerNorm.bias",
    "cls.seq_relationship.weight",
    "cls.seq_relationship.bias",
}


def read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def log_softmax(logits):
    logits = np.asarray(logits, "float64")
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def trained_model(run):
    """The run's model, built for the reference inputs' lengths."""
    model = kbert.build_pretraining_model(read_source_config(run), 24, 4)
    init_from(model, run)
    return model


def random_model():
    """A kbert model whose every weight is drawn at random (seeded), far from its initial value."""
    keras.utils.set_random_seed(0)
    config = kbert.BertConfig(
        vocab_size=sum(1 for _ in open(VOCAB, encoding="utf-8")),
        hidden_size=48,
        num_hidden_layers=2,
        num_attention_heads=3,
        intermediate_size=INTERMEDIATE,
        max_position_embeddings=40,
        type_vocab_size=3,
    )
    model = kbert.build_pretraining_model(config, 24, 4)
    rng = np.random.default_rng(0)
    for variable in model.weights:
        centre = 1.0 if variable.name == "gamma" else 0.0
        variable.assign(centre + rng.normal(0, 0.3, variable.shape).astype("float32"))
    return model


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """Hugging Face folders kbert exported: a random model, and a tiny trained run."""
    tmp = tmp_path_factory.mktemp("hf_live")
    texts = read_json(os.path.join(DATA, "texts.json"))
    texts_file = tmp / "texts.txt"
    texts_file.write_text("\n\n".join(t for t in texts if t.strip()) + "\n", encoding="utf-8")
    run = trained_kbert_run(str(tmp), str(texts_file), VOCAB)
    folders = {}
    folders["random"] = kbert.save_huggingface(random_model(), str(tmp / "random"), VOCAB, True)
    folders["trained"] = str(tmp / "trained")
    command = ["export", "--format", "huggingface", "--model", run, "--vocab_file", VOCAB]
    assert main([*command, "--output_dir", folders["trained"]]) == 0
    return folders, run


@pytest.mark.parametrize("name", ["random", "trained"])
def test_transformers_loads_every_weight_with_no_warning(exports, name, caplog, monkeypatch):
    folder = exports[0][name]
    monkeypatch.setattr(logging.getLogger("transformers"), "propagate", True)
    with caplog.at_level(logging.WARNING):
        model, info = transformers.BertForPreTraining.from_pretrained(
            folder, output_loading_info=True
        )
    assert {k: set(v) for k, v in info.items()} == {
        "missing_keys": set(),
        "unexpected_keys": set(),
        "mismatched_keys": set(),
        "error_msgs": set(),
    }
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    assert model.config.hidden_act == "gelu_new"


def test_automodel_loads_the_encoder_and_leaves_only_the_pretraining_heads(
    exports, caplog, monkeypatch
):
    """As for Google's bert-base-uncased on the Hub: BertModel has no cls.* heads to fill, and
    transformers' load report lists them as UNEXPECTED ("can be ignored when loading from
    different task/architecture"); nothing is missing."""
    monkeypatch.setattr(logging.getLogger("transformers"), "propagate", True)
    with caplog.at_level(logging.WARNING):
        encoder, info = transformers.AutoModel.from_pretrained(
            exports[0]["trained"], output_loading_info=True
        )
    assert type(encoder).__name__ == "BertModel"
    assert set(info["missing_keys"]) == set() and set(info["mismatched_keys"]) == set()
    assert set(info["unexpected_keys"]) == HEAD_TENSORS
    rows = [[cell.strip() for cell in line.split("|")] for line in caplog.text.splitlines()]
    reported = {row[0]: row[1] for row in rows if row[0].startswith(("bert.", "cls."))}
    assert set(reported) == HEAD_TENSORS
    assert all("UNEXPECTED" in status for status in reported.values()), reported


@pytest.mark.parametrize("name", ["random", "trained"])
def test_transformers_computes_kbert_log_probabilities(exports, name):
    folders, run = exports
    model = random_model() if name == "random" else trained_model(run)
    inputs = reference_inputs(model.bert_config.vocab_size)
    if name == "random":  # its three segment types: ids 0, 1 and 2
        inputs["segment_ids"] = inputs["segment_ids"] * (1 + np.arange(24) % 2)[None, :]
    ours = model.predict(inputs, verbose=0)
    theirs = transformers_log_probs(folders[name], inputs)
    np.testing.assert_allclose(log_softmax(ours["mlm"]), theirs["mlm"], atol=1e-4)
    np.testing.assert_allclose(log_softmax(ours["nsp"]), theirs["nsp"], atol=1e-4)


def test_automodel_gives_kbert_encoder_outputs(exports):
    folders, run = exports
    model = trained_model(run)
    inputs = reference_inputs(model.bert_config.vocab_size)
    ours = model.get_layer("encoder")(
        {
            "token_ids": inputs["input_ids"],
            "segment_ids": inputs["segment_ids"],
            "padding_mask": inputs["input_mask"],
        }
    )
    encoder = transformers.AutoModel.from_pretrained(folders["trained"]).eval()
    with torch.no_grad():
        theirs = encoder(
            input_ids=torch.from_numpy(inputs["input_ids"]).long(),
            token_type_ids=torch.from_numpy(inputs["segment_ids"]).long(),
            attention_mask=torch.from_numpy(inputs["input_mask"]).long(),
        )
    real = inputs["input_mask"].astype(bool)  # padded positions' outputs are meaningless
    sequence = keras.ops.convert_to_numpy(ours["sequence_output"])
    np.testing.assert_allclose(
        sequence[real], theirs.last_hidden_state.numpy()[real], atol=1e-4, rtol=1e-4
    )
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(ours["pooled_output"]),
        theirs.pooler_output.numpy(),
        atol=1e-4,
        rtol=1e-4,
    )


@pytest.mark.parametrize("lower", [True, False], ids=["uncased", "cased"])
def test_bert_tokenizer_fast_from_the_folder_tokenizes_as_kbert(tmp_path, lower):
    from tfrecords_tools.tokenization import FullTokenizer

    folder = kbert.save_huggingface(random_model(), str(tmp_path / "hf"), VOCAB, lower)
    tokenizer = transformers.BertTokenizerFast.from_pretrained(folder)
    kbert_tokenizer = FullTokenizer(VOCAB, do_lower_case=lower)
    texts = read_json(os.path.join(DATA, "texts.json"))
    assert len(texts) >= 100
    theirs = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    ours = kbert_tokenizer.encode(texts)
    mismatches = [(t, a, b) for t, a, b in zip(texts, ours, theirs) if a != b]
    assert not mismatches, mismatches[:3]
    # A pair as kbert's records hold it: [CLS] A [SEP] B [SEP], segments 0 then 1.
    a, b = texts[1], texts[16]
    pair = tokenizer(a, b)
    ids_a, ids_b = kbert_tokenizer.encode([a, b])
    assert pair["input_ids"] == [2, *ids_a, 3, *ids_b, 3]
    assert pair["token_type_ids"] == [0] * (len(ids_a) + 2) + [1] * (len(ids_b) + 1)
