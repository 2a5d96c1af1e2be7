"""Telling pre-trained sources apart (`detect_source`) and reading their config
(`read_source_config`), so a model can be built that `init_from` fits."""

from __future__ import annotations

import dataclasses
import logging
import os
import posixpath

import keras_hub
import tensorflow as tf
from keras_hub.src.utils import preset_utils

from kbert.checkpoints.google import resolve_google_checkpoint
from kbert.checkpoints.parts import BACKBONE_FIELDS, BERT_CONFIG_FILENAME
from kbert.checkpoints.report import (
    GOOGLE_CHECKPOINT,
    HF_FOLDER,
    KBERT_RUN,
    KERAS_HUB_PRESET,
    KERAS_MODEL,
    few,
)
from kbert.config import BertConfig
from kbert.errors import InputError, MissingFileError
from kbert.io import MODEL_FILE, read_json
from kbert.model import load_pretraining_model

# Files only a kbert run directory holds: its run configuration, or its final model.
KBERT_RUN_MARKERS = ("run_config.json", MODEL_FILE)

logger = logging.getLogger("kbert.checkpoints")


def detect_source(source: str) -> tuple[str, str]:
    """Which kind of pre-trained source `source` is, and where exactly to read it.

    Args:
        source: a Google TF1 checkpoint (prefix or directory), a Hugging Face BERT folder
            (`config.json` + `model.safetensors`), a keras-hub preset directory, a keras-hub
            preset name (`bert_base_en_uncased`) or handle (`kaggle://...`, `hf://...`), a kbert
            run directory (it holds `run_config.json` or `model.keras`) or a `.keras` file.

    Returns:
        `(kind, location)`: kind is `"google-checkpoint"`, `"hf-folder"`,
        `"keras-hub-preset"`, `"kbert-run"` or `"keras-model"`; location is the checkpoint
        prefix, the preset, the run directory or the file.

    Examples:
    >>> detect_source("bert_tiny_en_uncased")
    ('keras-hub-preset', 'bert_tiny_en_uncased')
    """
    if tf.io.gfile.exists(source + ".index"):
        return GOOGLE_CHECKPOINT, source
    if source.endswith(".keras") and tf.io.gfile.exists(source):
        return KERAS_MODEL, source
    if tf.io.gfile.isdir(source) and any(
        tf.io.gfile.exists(posixpath.join(source, marker)) for marker in KBERT_RUN_MARKERS
    ):
        return KBERT_RUN, source
    if tf.io.gfile.isdir(source):
        if not tf.io.gfile.exists(os.path.join(source, preset_utils.CONFIG_FILE)):
            return GOOGLE_CHECKPOINT, resolve_google_checkpoint(source)
    elif source in keras_hub.models.BertBackbone.presets:
        return KERAS_HUB_PRESET, source
    elif "://" not in source:
        raise MissingFileError(
            f"{source}: not found; expected a Google TF1 checkpoint (prefix or directory), a "
            "Hugging Face BERT folder, a keras-hub preset directory, a keras-hub BERT preset "
            f"name ({few(sorted(keras_hub.models.BertBackbone.presets))}), a kbert run "
            "directory or a .keras file"
        )
    config = preset_utils.load_json(source, preset_utils.CONFIG_FILE)
    if "registered_name" in config:
        if config.get("class_name") != "BertBackbone":
            raise InputError(
                f"{source}: a keras-hub preset of {config.get('class_name')!r}, "
                "not of a BertBackbone"
            )
        return KERAS_HUB_PRESET, source
    if config.get("model_type") == "bert":
        return HF_FOLDER, source
    raise InputError(
        f"{source}: its config.json is neither a keras-hub BertBackbone preset nor a Hugging Face "
        f"BERT config (model_type={config.get('model_type')!r})"
    )


def read_source_config(source: str) -> BertConfig:
    """The BertConfig of a pre-trained source, to build a model that `init_from` fits.

    Args:
        source: anything `detect_source` accepts. A Google checkpoint needs its
            `bert_config.json` beside it (fields kbert has no use for are skipped).

    Examples:
    >>> import keras_hub
    >>> backbone = keras_hub.models.BertBackbone(vocabulary_size=100, num_layers=1, num_heads=2,
    ...                                          hidden_dim=32, intermediate_dim=64)
    >>> backbone.save_to_preset("preset")
    >>> read_source_config("preset").hidden_size
    32
    """
    kind, location = detect_source(source)
    if kind == KERAS_MODEL:
        return load_pretraining_model(location).bert_config
    if kind == KBERT_RUN:
        return BertConfig.from_json_file(posixpath.join(location, BERT_CONFIG_FILENAME))
    if kind == GOOGLE_CHECKPOINT:
        path = os.path.join(os.path.dirname(location), BERT_CONFIG_FILENAME)
        if not tf.io.gfile.exists(path):
            raise MissingFileError(
                f"{path}: not found; a Google checkpoint's config sits beside it"
            )
        fields = read_json(path, BERT_CONFIG_FILENAME)
    else:
        config = preset_utils.load_json(location, preset_utils.CONFIG_FILE)
        if kind == HF_FOLDER:
            fields = config
        else:
            backbone = config["config"]
            fields = {f: backbone[key] for key, f in BACKBONE_FIELDS.items() if key in backbone}
            dropout = backbone.get("dropout", 0.1)
            fields["hidden_dropout_prob"] = fields["attention_probs_dropout_prob"] = dropout
    known = {f.name for f in dataclasses.fields(BertConfig)}
    skipped = sorted(set(fields) - known)
    if skipped:
        logger.info("%s: config fields kbert does not use: %s", source, ", ".join(skipped))
    if fields.get("hidden_act") == "gelu" and kind == HF_FOLDER:
        logger.info("%s: HF's 'gelu' is the exact GELU; kbert's encoder uses the tanh form", source)
    try:
        return BertConfig.from_dict({k: v for k, v in fields.items() if k in known})
    except (ValueError, TypeError) as e:
        raise InputError(f"{source}: {e}") from None
