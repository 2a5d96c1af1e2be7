"""The parts of a kbert model that a pre-trained source fills (encoder, MLM head, NSP head), and
the keras-hub BertBackbone config fields a source must match."""

from __future__ import annotations

from typing import Any

import keras
import keras_hub

from kbert.config import BertConfig
from kbert.errors import InputError, SettingError

BERT_CONFIG_FILENAME = "bert_config.json"
# keras-hub BertBackbone config key -> BertConfig field, for messages and `read_source_config`.
BACKBONE_FIELDS = {
    "vocabulary_size": "vocab_size",
    "num_layers": "num_hidden_layers",
    "num_heads": "num_attention_heads",
    "hidden_dim": "hidden_size",
    "intermediate_dim": "intermediate_size",
    "num_segments": "type_vocab_size",
    "max_sequence_length": "max_position_embeddings",
}


def encoder_of(model: keras.Model) -> keras_hub.models.BertBackbone:
    """The BertBackbone of a kbert pre-training model (or the backbone itself)."""
    if isinstance(model, keras_hub.models.BertBackbone):
        return model
    try:
        encoder = model.get_layer("encoder")
    except ValueError:
        encoder = None
    if not isinstance(encoder, keras_hub.models.BertBackbone):
        raise SettingError(
            f"model {model.name!r} has no 'encoder' BertBackbone layer: expected a kbert "
            "pre-training model (kbert.build_pretraining_model) or a keras_hub BertBackbone"
        )
    return encoder


def head_of(model: keras.Model, name: str) -> keras.layers.Layer | None:
    if isinstance(model, keras_hub.models.BertBackbone):
        return None
    try:
        return model.get_layer(name)
    except ValueError:
        return None


def config_from_encoder(encoder: keras_hub.models.BertBackbone) -> BertConfig:
    """The BertConfig of a keras-hub BertBackbone (Google's defaults where it has no field)."""
    return BertConfig(
        **{field: getattr(encoder, key) for key, field in BACKBONE_FIELDS.items()},
        hidden_dropout_prob=encoder.dropout,
        attention_probs_dropout_prob=encoder.dropout,
    )


def check_backbone_fits(
    source: str, source_fields: dict[str, Any], encoder: keras_hub.models.BertBackbone
) -> None:
    """A ValueError naming the first config field of the source that the model cannot take."""
    for key, field in BACKBONE_FIELDS.items():
        theirs, ours = source_fields.get(key), getattr(encoder, key)
        # A longer position table is cut to the model's rows; everything else must be equal.
        longer_ok = key == "max_sequence_length"
        fits = theirs is not None and (theirs >= ours if longer_ok else theirs == ours)
        if not fits:
            raise InputError(
                f"{source}: {field}={theirs} does not fit the model's {field}={ours}; build the "
                "model with the source's config (kbert.checkpoints.read_source_config)"
            )
