"""BertConfig: Google's bert_config.json, presets, validation."""

import json

import pytest

from kbert.config import BertConfig, resolve_config

# Google's published BERT-Base, Uncased bert_config.json.
GOOGLE_BERT_BASE = {
    "attention_probs_dropout_prob": 0.1,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "hidden_size": 768,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "max_position_embeddings": 512,
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "type_vocab_size": 2,
    "vocab_size": 30522,
}


def test_google_bert_base_config_loads_builds_and_has_bert_base_size(tmp_path):
    from kbert.model import build_pretraining_model

    path = tmp_path / "bert_config.json"
    path.write_text(json.dumps(GOOGLE_BERT_BASE, indent=2))
    config = BertConfig.from_json_file(str(path))
    model = build_pretraining_model(config, max_seq_length=128, max_predictions_per_seq=20)
    # bert-base-uncased's encoder (embeddings, 12 layers, pooler) has 109,482,240 parameters.
    assert model.get_layer("encoder").count_params() == 109_482_240


def test_json_file_round_trips_google_fields(tmp_path):
    source = tmp_path / "in.json"
    source.write_text(json.dumps(GOOGLE_BERT_BASE))
    config = BertConfig.from_json_file(str(source))
    out = tmp_path / "out.json"
    config.to_json_file(str(out))
    assert json.loads(out.read_text()) == GOOGLE_BERT_BASE
    assert BertConfig.from_json_file(str(out)) == config


@pytest.mark.parametrize(
    "name, layers, hidden, heads",
    [
        ("tiny", 2, 128, 2),
        ("mini", 4, 256, 4),
        ("small", 4, 512, 8),
        ("medium", 8, 512, 8),
        ("base", 12, 768, 12),
        ("large", 24, 1024, 16),
    ],
)
def test_presets_have_the_published_sizes(name, layers, hidden, heads):
    config = BertConfig.from_preset(name)
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads) == (
        layers,
        hidden,
        heads,
    )
    assert config.intermediate_size == 4 * hidden


def test_resolve_config_takes_preset_name_path_or_object(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps(GOOGLE_BERT_BASE))
    assert resolve_config("mini").hidden_size == 256
    assert resolve_config(str(path)).vocab_size == 30522
    assert resolve_config(BertConfig(), vocab_size=7).vocab_size == 7
    with pytest.raises(ValueError, match="neither a preset"):
        resolve_config("no-such-preset")


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("num_attention_heads", 5, "hidden_size .* divisible by num_attention_heads"),
        ("hidden_size", 0, "hidden_size must be a positive integer"),
        ("vocab_size", -3, "vocab_size must be a positive integer"),
        ("num_hidden_layers", 1.5, "num_hidden_layers must be a positive integer"),
        ("hidden_act", "swish", "hidden_act 'swish' is not supported"),
        ("hidden_dropout_prob", 1.5, "hidden_dropout_prob must be in"),
        ("initializer_range", 0.0, "initializer_range must be a positive number"),
    ],
)
def test_each_bad_value_is_a_value_error_naming_the_field(field, value, message):
    fields = dict(GOOGLE_BERT_BASE)
    fields[field] = value
    if field == "hidden_dropout_prob":
        fields["attention_probs_dropout_prob"] = value
    with pytest.raises(ValueError, match=message):
        BertConfig.from_dict(fields)


def test_unknown_field_is_named(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(dict(GOOGLE_BERT_BASE, hidden_sise=768)))
    with pytest.raises(ValueError, match=r"bad.json: Unknown BertConfig field\(s\): hidden_sise"):
        BertConfig.from_json_file(str(path))


def test_distinct_dropout_rates_are_refused_because_the_encoder_has_one():
    with pytest.raises(ValueError, match="attention_probs_dropout_prob"):
        BertConfig(hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.2)
