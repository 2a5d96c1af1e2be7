"""Checkpoint interop: Google's TF1 BERT checkpoints, keras-hub presets and Hugging Face folders.

Google's variable layout maps one to one onto kbert's weights, both ways
(`load_google_checkpoint`, `save_google_checkpoint`). The encoder also initialises from a
keras-hub preset or a Hugging Face BERT folder (`init_encoder`) and saves as a keras-hub preset
that `keras_hub.models.BertTextClassifier.from_preset` fine-tunes (`save_encoder_preset`).
`init_from` tells these sources apart, so `kbert train --init-from` needs one call.
`saved_optimizer_step` reads how many updates a `.keras` model file was trained for.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import tempfile
import zipfile
from typing import Any

import h5py
import keras
import keras_hub
import numpy as np
import tensorflow as tf

# keras-hub's own preset file access: it reads local, gs://, hf:// and Kaggle presets alike.
from keras_hub.src.utils import preset_utils

from kbert.config import BertConfig
from kbert.io import atomic_path, publish_directory, read_json

logger = logging.getLogger(__name__)

GOOGLE_CHECKPOINT = "google-checkpoint"
HF_FOLDER = "hf-folder"
KERAS_HUB_PRESET = "keras-hub-preset"
_KIND_TITLES = {
    GOOGLE_CHECKPOINT: "Google TF1 checkpoint",
    HF_FOLDER: "Hugging Face BERT folder",
    KERAS_HUB_PRESET: "keras-hub preset",
}

BERT_CONFIG_FILENAME = "bert_config.json"
VOCAB_FILENAME = "vocab.txt"
_POSITION_EMBEDDINGS = "bert/embeddings/position_embeddings"
_LAYER_NAME = re.compile(r"^bert/encoder/layer_(\d+)/")
# Training state that Google's (Adam), NVIDIA's (LAMB, loss scaling) and TF1's optimizers save
# beside the weights; none of it is a model weight.
_OPTIMIZER_STATE = re.compile(
    r"(^|/)(adam_m|adam_v|Adam|Adam_1|LAMB|LAMB_1|Momentum)$"
    r"|^(global_step|beta1_power|beta2_power|current_loss_scale|good_steps)$"
)
# keras-hub BertBackbone config key -> BertConfig field, for messages and `read_source_config`.
_BACKBONE_FIELDS = {
    "vocabulary_size": "vocab_size",
    "num_layers": "num_hidden_layers",
    "num_heads": "num_attention_heads",
    "hidden_dim": "hidden_size",
    "intermediate_dim": "intermediate_size",
    "num_segments": "type_vocab_size",
    "max_sequence_length": "max_position_embeddings",
}


@dataclasses.dataclass
class LoadReport:
    """What a load took from its source and what it left.

    Args:
        kind: `"google-checkpoint"`, `"hf-folder"` or `"keras-hub-preset"`.
        source: the checkpoint prefix, folder or preset that was read.
        parts: the parts of the model that received weights ("encoder", "MLM head", "NSP head").
        loaded: names of the source variables copied into the model.
        missing: weights the model has but the source lacks; they keep their initial values.
        unused: source variables that match no weight of the model.
        ignored: optimizer state in the source, skipped on purpose.
        notes: anything else worth knowing (a position table cut to the model's length, ...).

    Examples:
    >>> LoadReport("google-checkpoint", "bert_model.ckpt", parts=["encoder"],
    ...            loaded=["bert/pooler/dense/kernel"], ignored=["global_step"]).describe()
    'Google TF1 checkpoint bert_model.ckpt: 1 variables loaded (encoder); 1 optimizer variables ignored'
    """

    kind: str
    source: str
    parts: list[str] = dataclasses.field(default_factory=list)
    loaded: list[str] = dataclasses.field(default_factory=list)
    missing: list[str] = dataclasses.field(default_factory=list)
    unused: list[str] = dataclasses.field(default_factory=list)
    ignored: list[str] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)

    def describe(self) -> str:
        """One line for a log or a terminal: the source kind, what was loaded and what was not."""
        text = (
            f"{_KIND_TITLES.get(self.kind, self.kind)} {self.source}: "
            f"{len(self.loaded)} variables loaded ({', '.join(self.parts) or 'nothing'})"
        )
        if self.missing:
            text += (
                f"; {len(self.missing)} not in the source, left as initialised "
                f"({_few(self.missing)})"
            )
        if self.unused:
            text += f"; {len(self.unused)} unused ({_few(self.unused)})"
        if self.ignored:
            text += f"; {len(self.ignored)} optimizer variables ignored"
        for note in self.notes:
            text += f"; {note}"
        return text


def _few(names: list[str], limit: int = 3) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... (+{len(names) - limit})" if len(names) > limit else "")


@dataclasses.dataclass(frozen=True)
class _Slot:
    """One Google checkpoint variable and the kbert weight it fills."""

    name: str
    variable: keras.Variable
    part: str
    google_shape: tuple[int, ...]
    transpose: bool = False

    def to_kbert(self, value: np.ndarray) -> np.ndarray:
        value = value.T if self.transpose else value.reshape(self.variable.shape)
        return value.astype(self.variable.dtype)

    def to_google(self, value: np.ndarray) -> np.ndarray:
        return value.T if self.transpose else value.reshape(self.google_shape)


def _encoder(model: keras.Model) -> keras_hub.models.BertBackbone:
    """The BertBackbone of a kbert pre-training model (or the backbone itself)."""
    if isinstance(model, keras_hub.models.BertBackbone):
        return model
    try:
        encoder = model.get_layer("encoder")
    except ValueError:
        encoder = None
    if not isinstance(encoder, keras_hub.models.BertBackbone):
        raise ValueError(
            f"model {model.name!r} has no 'encoder' BertBackbone layer: expected a kbert "
            "pre-training model (kbert.build_pretraining_model) or a keras_hub BertBackbone"
        )
    return encoder


def _head(model: keras.Model, name: str) -> keras.layers.Layer | None:
    if isinstance(model, keras_hub.models.BertBackbone):
        return None
    try:
        return model.get_layer(name)
    except ValueError:
        return None


def _google_slots(model: keras.Model) -> list[_Slot]:
    """Every variable of Google's layout, in Google's order, with the kbert weight it maps to."""
    encoder = _encoder(model)
    hidden = encoder.hidden_dim
    slots: list[_Slot] = []

    def add(name, variable, part, google_shape=None, transpose=False):
        shape = tuple(variable.shape)
        if google_shape is None:
            google_shape = shape[::-1] if transpose else shape
        slots.append(_Slot(name, variable, part, tuple(google_shape), transpose))

    def dense(name, layer, part):
        add(f"{name}/kernel", layer.kernel, part)
        add(f"{name}/bias", layer.bias, part)

    def layer_norm(name, layer, part):
        add(f"{name}/gamma", layer.gamma, part)
        add(f"{name}/beta", layer.beta, part)

    part = "encoder"
    add("bert/embeddings/word_embeddings", encoder.token_embedding.embeddings, part)
    add("bert/embeddings/token_type_embeddings", encoder.segment_embedding.embeddings, part)
    add(_POSITION_EMBEDDINGS, encoder.position_embedding.position_embeddings, part)
    layer_norm("bert/embeddings/LayerNorm", encoder.embeddings_layer_norm, part)
    # keras-hub's own HF converter reaches the same private sub-layers of TransformerEncoder.
    for i, layer in enumerate(encoder.transformer_layers):
        prefix = f"bert/encoder/layer_{i}"
        attention = layer._self_attention_layer
        for projection, sublayer in (
            ("query", attention.query_dense),
            ("key", attention.key_dense),
            ("value", attention.value_dense),
        ):
            # Google keeps [H, H] and [H]; keras' EinsumDense splits the heads: [H, A, H/A].
            name = f"{prefix}/attention/self/{projection}"
            add(f"{name}/kernel", sublayer.kernel, part, (hidden, hidden))
            add(f"{name}/bias", sublayer.bias, part, (hidden,))
        name = f"{prefix}/attention/output/dense"
        add(f"{name}/kernel", attention.output_dense.kernel, part, (hidden, hidden))
        add(f"{name}/bias", attention.output_dense.bias, part)
        layer_norm(f"{prefix}/attention/output/LayerNorm", layer._self_attention_layer_norm, part)
        dense(f"{prefix}/intermediate/dense", layer._feedforward_intermediate_dense, part)
        dense(f"{prefix}/output/dense", layer._feedforward_output_dense, part)
        layer_norm(f"{prefix}/output/LayerNorm", layer._feedforward_layer_norm, part)
    dense("bert/pooler/dense", encoder.pooled_dense, part)

    mlm = _head(model, "mlm_head")
    if mlm is not None:
        part = "MLM head"
        dense("cls/predictions/transform/dense", mlm._intermediate_dense, part)
        layer_norm("cls/predictions/transform/LayerNorm", mlm._intermediate_layer_norm, part)
        add("cls/predictions/output_bias", mlm._bias, part)
    nsp = _head(model, "nsp")
    if nsp is not None:
        part = "NSP head"
        # Google's NSP weight is [2, H] (used as x @ W^T); Keras' Dense kernel is [H, 2].
        add("cls/seq_relationship/output_weights", nsp.kernel, part, transpose=True)
        add("cls/seq_relationship/output_bias", nsp.bias, part)
    return slots


def _config_hint(name: str, encoder: keras_hub.models.BertBackbone) -> str:
    """The config fields a Google variable's shape depends on, with the model's values."""
    if name == "cls/predictions/output_bias":
        fields = ("vocabulary_size",)
    elif name.endswith("word_embeddings"):
        fields = ("vocabulary_size", "hidden_dim")
    elif name.endswith("token_type_embeddings"):
        fields = ("num_segments", "hidden_dim")
    elif name == _POSITION_EMBEDDINGS:
        fields = ("max_sequence_length", "hidden_dim")
    elif re.search(r"/(intermediate|output)/dense/", name) and "attention" not in name:
        fields = ("hidden_dim", "intermediate_dim")
    else:
        fields = ("hidden_dim",)
    return ", ".join(f"{_BACKBONE_FIELDS[f]}={getattr(encoder, f)}" for f in fields)


def resolve_google_checkpoint(path: str) -> str:
    """The checkpoint prefix for `path`: a prefix itself, or a directory holding one checkpoint.

    Args:
        path: a prefix such as `uncased_L-12_H-768_A-12/bert_model.ckpt`, or its directory.

    Examples:
    >>> resolve_google_checkpoint("no_such_dir/bert_model.ckpt")
    Traceback (most recent call last):
    ...
    FileNotFoundError: no_such_dir/bert_model.ckpt: no TF checkpoint here ...
    """
    if tf.io.gfile.exists(path + ".index"):
        return path
    if tf.io.gfile.isdir(path):
        latest = tf.train.latest_checkpoint(path)
        if latest:
            return latest
        indexes = tf.io.gfile.glob(os.path.join(path, "*.index"))
        prefixes = sorted(index[: -len(".index")] for index in indexes)
        if len(prefixes) == 1:
            return prefixes[0]
        if prefixes:
            raise ValueError(
                f"{path}: holds {len(prefixes)} checkpoints ({_few(prefixes)}) and no 'checkpoint' "
                "file naming the latest; pass the prefix of the one to use"
            )
    raise FileNotFoundError(
        f"{path}: no TF checkpoint here (expected PREFIX.index and PREFIX.data-*, "
        "or a directory holding them)"
    )


def load_google_checkpoint(model: keras.Model, ckpt_prefix: str) -> LoadReport:
    """Load a Google TF1 BERT checkpoint (google-research/bert, NVIDIA, ...) into a kbert model.

    Every variable of Google's layout lands in the matching kbert weight: embeddings, encoder
    layers, pooler, the MLM head (`cls/predictions/*`) and the NSP head
    (`cls/seq_relationship/*`, its [2, H] weight transposed). Google's position table may be
    longer than the model's `max_position_embeddings`: its first rows are taken (Google slices
    it the same way for shorter sequences). Optimizer state (`adam_m`, `adam_v`, `global_step`,
    ...) is ignored. Head variables the checkpoint lacks (a fine-tuned checkpoint) keep their
    initial values and are reported; so are checkpoint variables that match nothing. Nothing is
    assigned unless every variable fits.

    Args:
        model: a kbert pre-training model (or a keras-hub BertBackbone: encoder only).
        ckpt_prefix: the checkpoint prefix (`.../bert_model.ckpt`) or its directory.

    Returns:
        A `LoadReport`; its one-line `describe()` is also logged.

    Raises:
        ValueError: naming the first variable whose shape does not fit the model's config (or
            the encoder layer the model does not have).
        FileNotFoundError: when there is no checkpoint at `ckpt_prefix`.
        ValueError: naming the checkpoint when its files are damaged.

    Examples:
    >>> import kbert
    >>> config = kbert.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1,
    ...                           num_attention_heads=2, intermediate_size=64)
    >>> model = kbert.build_pretraining_model(config, 16, 3)
    >>> prefix = kbert.save_google_checkpoint(model, "google/bert_model.ckpt")
    >>> report = kbert.load_google_checkpoint(model, prefix)
    >>> report.parts, report.missing, report.unused
    (['encoder', 'MLM head', 'NSP head'], [], [])
    """
    ckpt_prefix = resolve_google_checkpoint(ckpt_prefix)
    try:
        reader = tf.train.load_checkpoint(ckpt_prefix)
    except tf.errors.OpError as e:
        raise ValueError(f"{ckpt_prefix}: not a readable TF checkpoint ({e.message})") from None
    shapes = reader.get_variable_to_shape_map()
    encoder = _encoder(model)
    _check_google_config(ckpt_prefix, encoder)
    slots = _google_slots(model)
    report = LoadReport(GOOGLE_CHECKPOINT, ckpt_prefix)

    expected = {slot.name for slot in slots}
    for name in sorted(shapes):
        match = _LAYER_NAME.match(name)
        if _OPTIMIZER_STATE.search(name) or not match:
            continue
        if int(match.group(1)) >= encoder.num_layers:
            raise ValueError(
                f"{ckpt_prefix}: variable {name} belongs to encoder layer {match.group(1)}, but "
                f"the model has num_hidden_layers={encoder.num_layers}; build the model with the "
                f"checkpoint's {BERT_CONFIG_FILENAME}"
            )

    values: list[tuple[_Slot, np.ndarray]] = []
    for slot in slots:
        if slot.name not in shapes:
            report.missing.append(slot.name)
            continue
        shape = tuple(shapes[slot.name])
        try:
            value = reader.get_tensor(slot.name)
        # A truncated data file surfaces as IndexError ("Read less bytes than requested").
        except (tf.errors.OpError, IndexError) as e:
            raise ValueError(
                f"{ckpt_prefix}: damaged TF checkpoint, variable {slot.name} unreadable ({e})"
            ) from None
        rows, width = slot.google_shape[0], slot.google_shape[1:]
        if slot.name == _POSITION_EMBEDDINGS and shape[0] > rows and shape[1:] == width:
            report.notes.append(f"position table cut from {shape[0]} to the model's {rows} rows")
            value, shape = value[:rows], slot.google_shape
        if shape != slot.google_shape:
            raise ValueError(
                f"{ckpt_prefix}: variable {slot.name} has shape {list(shape)}, but the model "
                f"expects {list(slot.google_shape)} ({_config_hint(slot.name, encoder)}); build "
                f"the model with the checkpoint's {BERT_CONFIG_FILENAME}"
            )
        values.append((slot, slot.to_kbert(value)))

    missing_encoder = [
        name
        for name in report.missing
        if name.startswith("bert/") and not name.startswith("bert/pooler/")
    ]
    if missing_encoder:
        raise ValueError(
            f"{ckpt_prefix}: has no variable {missing_encoder[0]} (and {len(missing_encoder) - 1} "
            "more encoder variables); this is not a BERT checkpoint of the model's config"
        )

    for slot, value in values:
        slot.variable.assign(value)
        report.loaded.append(slot.name)
        if slot.part not in report.parts:
            report.parts.append(slot.part)
    for name in sorted(shapes):
        if name in expected:
            continue
        (report.ignored if _OPTIMIZER_STATE.search(name) else report.unused).append(name)
    _log(report)
    return report


def _check_google_config(ckpt_prefix: str, encoder: keras_hub.models.BertBackbone) -> None:
    """Compare the head count in the checkpoint's bert_config.json, which no shape reveals."""
    path = os.path.join(os.path.dirname(ckpt_prefix), BERT_CONFIG_FILENAME)
    if not tf.io.gfile.exists(path):
        return
    heads = read_json(path, BERT_CONFIG_FILENAME).get("num_attention_heads")
    if heads is not None and heads != encoder.num_heads:
        raise ValueError(
            f"{path}: num_attention_heads={heads}, but the model has num_attention_heads="
            f"{encoder.num_heads}; build the model with this {BERT_CONFIG_FILENAME}"
        )


def save_google_checkpoint(
    model: keras.Model, ckpt_prefix: str, vocab_file: str | None = None
) -> str:
    """Write the model in Google's TF1 checkpoint layout, with `bert_config.json` beside it.

    The result reads like a google-research/bert release: `tf.compat.v1.train.Saver`,
    `tf.train.init_from_checkpoint` and `tf.train.load_checkpoint` see Google's variable names and
    shapes (NSP weight [2, H]), so Google's and NVIDIA's fine-tuning scripts can start from it.

    Args:
        model: a kbert pre-training model (or a keras-hub BertBackbone: encoder only).
        ckpt_prefix: where to write, e.g. `out/bert_model.ckpt` (any `tf.io.gfile` path).
        vocab_file: if given, copied beside the checkpoint as `vocab.txt`.

    Returns:
        The checkpoint prefix written.

    Examples:
    >>> import kbert, tensorflow as tf
    >>> config = kbert.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1,
    ...                           num_attention_heads=2, intermediate_size=64)
    >>> model = kbert.build_pretraining_model(config, 16, 3)
    >>> prefix = kbert.save_google_checkpoint(model, "out/bert_model.ckpt")
    >>> shapes = tf.train.load_checkpoint(prefix).get_variable_to_shape_map()
    >>> shapes["cls/seq_relationship/output_weights"]
    [2, 32]
    """
    values = {
        slot.name: slot.to_google(np.asarray(slot.variable.numpy()))
        for slot in _google_slots(model)
    }
    directory = os.path.dirname(ckpt_prefix)
    if directory:
        tf.io.gfile.makedirs(directory)
    prefix = _write_tf1_checkpoint(values, ckpt_prefix)
    config = getattr(model, "bert_config", None) or _config_from_encoder(_encoder(model))
    config.to_json_file(os.path.join(directory, BERT_CONFIG_FILENAME))
    if vocab_file is not None:
        with atomic_path(os.path.join(directory, VOCAB_FILENAME)) as tmp:
            tf.io.gfile.copy(vocab_file, tmp, overwrite=True)
    logger.info("wrote Google TF1 checkpoint %s (%d variables)", prefix, len(values))
    return prefix


def _write_tf1_checkpoint(values: dict[str, np.ndarray], prefix: str) -> str:
    """A TF1 `Saver` checkpoint of named arrays: the format Google's scripts restore."""
    graph = tf.Graph()
    with graph.as_default():
        feeds, variables = {}, []
        for name, value in values.items():
            # Fed at initialisation, so the arrays never become constants inside the graph.
            placeholder = tf.compat.v1.placeholder(tf.as_dtype(value.dtype), value.shape)
            variables.append(tf.compat.v1.get_variable(name, initializer=placeholder))
            feeds[placeholder] = value
        saver = tf.compat.v1.train.Saver(variables)
        with tf.compat.v1.Session(graph=graph) as session:
            session.run(tf.compat.v1.global_variables_initializer(), feed_dict=feeds)
            return saver.save(session, prefix, write_meta_graph=False)


def _config_from_encoder(encoder: keras_hub.models.BertBackbone) -> BertConfig:
    """The BertConfig of a keras-hub BertBackbone (Google's defaults where it has no field)."""
    return BertConfig(
        **{field: getattr(encoder, key) for key, field in _BACKBONE_FIELDS.items()},
        hidden_dropout_prob=encoder.dropout,
        attention_probs_dropout_prob=encoder.dropout,
    )


def detect_source(source: str) -> tuple[str, str]:
    """Which kind of pre-trained source `source` is, and where exactly to read it.

    Args:
        source: a Google TF1 checkpoint (prefix or directory), a Hugging Face BERT folder
            (`config.json` + `model.safetensors`), a keras-hub preset directory, a keras-hub
            preset name (`bert_base_en_uncased`) or handle (`kaggle://...`, `hf://...`).

    Returns:
        `(kind, location)`: kind is `"google-checkpoint"`, `"hf-folder"` or
        `"keras-hub-preset"`; location is the checkpoint prefix or the preset.

    Examples:
    >>> detect_source("bert_tiny_en_uncased")
    ('keras-hub-preset', 'bert_tiny_en_uncased')
    """
    if tf.io.gfile.exists(source + ".index"):
        return GOOGLE_CHECKPOINT, source
    if tf.io.gfile.isdir(source):
        if not tf.io.gfile.exists(os.path.join(source, preset_utils.CONFIG_FILE)):
            return GOOGLE_CHECKPOINT, resolve_google_checkpoint(source)
    elif source in keras_hub.models.BertBackbone.presets:
        return KERAS_HUB_PRESET, source
    elif "://" not in source:
        raise FileNotFoundError(
            f"{source}: not found; expected a Google TF1 checkpoint (prefix or directory), a "
            "Hugging Face BERT folder, a keras-hub preset directory, or a keras-hub BERT preset "
            f"name ({_few(sorted(keras_hub.models.BertBackbone.presets))})"
        )
    config = preset_utils.load_json(source, preset_utils.CONFIG_FILE)
    if "registered_name" in config:
        if config.get("class_name") != "BertBackbone":
            raise ValueError(
                f"{source}: a keras-hub preset of {config.get('class_name')!r}, "
                "not of a BertBackbone"
            )
        return KERAS_HUB_PRESET, source
    if config.get("model_type") == "bert":
        return HF_FOLDER, source
    raise ValueError(
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
    if kind == GOOGLE_CHECKPOINT:
        path = os.path.join(os.path.dirname(location), BERT_CONFIG_FILENAME)
        if not tf.io.gfile.exists(path):
            raise FileNotFoundError(
                f"{path}: not found; a Google checkpoint's config sits beside it"
            )
        fields = read_json(path, BERT_CONFIG_FILENAME)
    else:
        config = preset_utils.load_json(location, preset_utils.CONFIG_FILE)
        if kind == HF_FOLDER:
            fields = config
        else:
            backbone = config["config"]
            fields = {f: backbone[key] for key, f in _BACKBONE_FIELDS.items() if key in backbone}
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
        raise ValueError(f"{source}: {e}") from None


def init_encoder(model: keras.Model, source: str) -> LoadReport:
    """Initialise the encoder from a keras-hub preset or a Hugging Face BERT folder.

    keras-hub's `BertBackbone.from_preset` reads the source (a Hugging Face folder needs
    `config.json` + `model.safetensors`); its weights are then copied into the model's encoder.
    Heads the source holds are loaded too: a Hugging Face `BertForPreTraining` /
    `BertForMaskedLM` checkpoint's `cls.predictions.*` and `cls.seq_relationship.*`, a keras-hub
    `BertMaskedLM` preset's MLM head; heads the source lacks start fresh (and are reported). A
    source position table longer than the model's is cut to its rows. Nothing is assigned
    unless every weight fits.

    Args:
        model: a kbert pre-training model (or a keras-hub BertBackbone).
        source: a keras-hub preset directory, name or handle, or a Hugging Face BERT folder.

    Returns:
        A `LoadReport` (logged as one line).

    Raises:
        ValueError: naming the config field whose value in the source does not fit the model.

    Examples:
    >>> import kbert, keras_hub
    >>> backbone = keras_hub.models.BertBackbone(vocabulary_size=100, num_layers=1, num_heads=2,
    ...                                          hidden_dim=32, intermediate_dim=64)
    >>> backbone.save_to_preset("preset")
    >>> config = kbert.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1,
    ...                           num_attention_heads=2, intermediate_size=64)
    >>> model = kbert.build_pretraining_model(config, 16, 3)
    >>> kbert.init_encoder(model, "preset").parts
    ['encoder']
    """
    kind, location = detect_source(source)
    if kind == GOOGLE_CHECKPOINT:
        raise ValueError(f"{source}: a Google TF1 checkpoint; load it with load_google_checkpoint")
    encoder = _encoder(model)
    config = preset_utils.load_json(location, preset_utils.CONFIG_FILE)
    if kind == HF_FOLDER:
        source_fields = {key: config.get(field) for key, field in _BACKBONE_FIELDS.items()}
        source_fields["num_segments"] = config.get("type_vocab_size", 2)
    else:
        source_fields = {key: config["config"].get(key) for key in _BACKBONE_FIELDS}
    _check_backbone_fits(location, source_fields, encoder)

    report = LoadReport(kind, location)
    heads: dict[str, list[tuple[str, keras.Variable, np.ndarray]]] = {}
    task = _masked_lm_task(location) if kind == KERAS_HUB_PRESET else None
    if task is not None:
        loaded = task.backbone
        heads = _keras_hub_heads(model, task)
        report.notes.append(
            "keras-hub's MLM head was trained with exact GELU and LayerNorm epsilon 1e-5; "
            "kbert's uses Google's tanh GELU and 1e-12"
        )
    else:
        kwargs = {}
        if kind == HF_FOLDER:
            heads = _hf_heads(model, location)
            # keras-hub's HF converter ignores type_vocab_size; without it any value but 2 fails.
            kwargs["num_segments"] = source_fields["num_segments"]
        loaded = keras_hub.models.BertBackbone.from_preset(location, **kwargs)
    sources = {variable.path: variable for variable in loaded.weights}
    assignments = []
    for variable in encoder.weights:
        value = np.asarray(sources[variable.path].numpy())
        rows = variable.shape[0]
        if variable is encoder.position_embedding.position_embeddings and value.shape[0] > rows:
            report.notes.append(
                f"position table cut from {value.shape[0]} to the model's {rows} rows"
            )
            value = value[:rows]
        assignments.append((variable.path, variable, value))
    report.parts.append("encoder")

    head_variables: dict[str, list[keras.Variable]] = {}
    for slot in _google_slots(model):
        if slot.part != "encoder":
            head_variables.setdefault(slot.part, []).append(slot.variable)
    for part, variables in head_variables.items():
        if part not in heads:
            report.missing.extend(variable.path for variable in variables)
            continue
        for name, variable, value in heads[part]:
            if tuple(value.shape) != tuple(variable.shape):
                raise ValueError(
                    f"{location}: {name} has shape {list(value.shape)} in kbert's layout, but the "
                    f"model's {part} weight {variable.path} has {list(variable.shape)}"
                )
        assignments.extend(heads[part])
        report.parts.append(part)

    for name, variable, value in assignments:
        variable.assign(value.astype(variable.dtype))
        report.loaded.append(name)
    _log(report)
    return report


def _check_backbone_fits(
    source: str, source_fields: dict[str, Any], encoder: keras_hub.models.BertBackbone
) -> None:
    """A ValueError naming the first config field of the source that the model cannot take."""
    for key, field in _BACKBONE_FIELDS.items():
        theirs, ours = source_fields.get(key), getattr(encoder, key)
        # A longer position table is cut to the model's rows; everything else must be equal.
        longer_ok = key == "max_sequence_length"
        fits = theirs is not None and (theirs >= ours if longer_ok else theirs == ours)
        if not fits:
            raise ValueError(
                f"{source}: {field}={theirs} does not fit the model's {field}={ours}; build the "
                "model with the source's config (kbert.checkpoints.read_source_config)"
            )


def _masked_lm_task(preset: str) -> keras_hub.models.BertMaskedLM | None:
    """The keras-hub BertMaskedLM saved in `preset` (task.json), if it holds one."""
    if not preset_utils.check_file_exists(preset, preset_utils.TASK_CONFIG_FILE):
        return None
    task_config = preset_utils.load_json(preset, preset_utils.TASK_CONFIG_FILE)
    if task_config.get("class_name") != "BertMaskedLM":
        return None
    return keras_hub.models.BertMaskedLM.from_preset(preset, preprocessor=None)


def _keras_hub_heads(
    model: keras.Model, task: keras_hub.models.BertMaskedLM
) -> dict[str, list[tuple[str, keras.Variable, np.ndarray]]]:
    """The MLM head of a keras-hub BertMaskedLM as (name, kbert variable, value)."""
    mlm = _head(model, "mlm_head")
    if mlm is None:
        return {}
    source = task.masked_lm_head
    pairs = (
        (source._intermediate_dense.kernel, mlm._intermediate_dense.kernel),
        (source._intermediate_dense.bias, mlm._intermediate_dense.bias),
        (source._intermediate_layer_norm.gamma, mlm._intermediate_layer_norm.gamma),
        (source._intermediate_layer_norm.beta, mlm._intermediate_layer_norm.beta),
        (source._bias, mlm._bias),
    )
    return {"MLM head": [(s.path, ours, np.asarray(s.numpy())) for s, ours in pairs]}


def _hf_heads(
    model: keras.Model, preset: str
) -> dict[str, list[tuple[str, keras.Variable, np.ndarray]]]:
    """The heads a Hugging Face checkpoint holds completely, as (name, kbert variable, value)."""
    tensors = _hf_head_tensors(preset)
    wanted = {}
    mlm = _head(model, "mlm_head")
    if mlm is not None:
        dense, norm = "cls.predictions.transform.dense", "cls.predictions.transform.LayerNorm"
        # Older HF checkpoints spell LayerNorm weights gamma/beta; the bias may sit on the decoder.
        wanted["MLM head"] = [
            ((f"{dense}.weight",), mlm._intermediate_dense.kernel, True),
            ((f"{dense}.bias",), mlm._intermediate_dense.bias, False),
            ((f"{norm}.weight", f"{norm}.gamma"), mlm._intermediate_layer_norm.gamma, False),
            ((f"{norm}.bias", f"{norm}.beta"), mlm._intermediate_layer_norm.beta, False),
            (("cls.predictions.bias", "cls.predictions.decoder.bias"), mlm._bias, False),
        ]
    nsp = _head(model, "nsp")
    if nsp is not None:
        # HF linear weights are [out, in]; Keras kernels are [in, out].
        wanted["NSP head"] = [
            (("cls.seq_relationship.weight",), nsp.kernel, True),
            (("cls.seq_relationship.bias",), nsp.bias, False),
        ]
    heads = {}
    for part, entries in wanted.items():
        names = [next((n for n in spellings if n in tensors), None) for spellings, _, _ in entries]
        if None not in names:
            heads[part] = [
                (name, variable, tensors[name].T if transpose else tensors[name])
                for name, (_, variable, transpose) in zip(names, entries)
            ]
    return heads


def _hf_head_tensors(preset: str) -> dict[str, np.ndarray]:
    """The `cls.*` tensors of a Hugging Face checkpoint (single or sharded safetensors)."""
    from safetensors import safe_open

    if preset_utils.check_file_exists(preset, preset_utils.SAFETENSOR_CONFIG_FILE):
        index = preset_utils.load_json(preset, preset_utils.SAFETENSOR_CONFIG_FILE)
        weight_map = index["weight_map"]
        files = sorted({file for name, file in weight_map.items() if name.startswith("cls.")})
    elif preset_utils.check_file_exists(preset, preset_utils.SAFETENSOR_FILE):
        files = [preset_utils.SAFETENSOR_FILE]
    else:
        raise FileNotFoundError(
            f"{preset}: no {preset_utils.SAFETENSOR_FILE}; keras-hub reads Hugging Face weights "
            "from safetensors only (re-save with save_pretrained(..., safe_serialization=True))"
        )
    tensors = {}
    for file in files:
        with safe_open(preset_utils.get_file(preset, file), framework="np") as f:
            for name in f.keys():
                if name.startswith("cls."):
                    tensors[name] = f.get_tensor(name)
    return tensors


def init_from(model: keras.Model, source: str) -> str:
    """Load whatever pre-trained `source` is into `model`; return what was detected and loaded.

    The one call behind `kbert train --init-from`: a Google TF1 checkpoint (prefix or
    directory) goes through `load_google_checkpoint`; a keras-hub preset (directory, name or
    handle) or a Hugging Face BERT folder through `init_encoder`.

    Args:
        model: a kbert pre-training model.
        source: see `detect_source`.

    Returns:
        One line: the kind of source detected, what was loaded, what was left as initialised.

    Examples:
    >>> import kbert
    >>> from kbert.checkpoints import init_from
    >>> config = kbert.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1,
    ...                           num_attention_heads=2, intermediate_size=64)
    >>> model = kbert.build_pretraining_model(config, 16, 3)
    >>> prefix = kbert.save_google_checkpoint(model, "google/bert_model.ckpt")
    >>> print(init_from(model, "google"))
    Google TF1 checkpoint google/bert_model.ckpt: 30 variables loaded (encoder, MLM head, NSP head)
    """
    kind, location = detect_source(source)
    if kind == GOOGLE_CHECKPOINT:
        report = load_google_checkpoint(model, location)
    else:
        report = init_encoder(model, location)
    return report.describe()


def save_encoder_preset(
    model: keras.Model,
    preset_dir: str,
    vocab_file: str,
    lowercase: bool = True,
    sequence_length: int | None = None,
) -> str:
    """Save the encoder as a keras-hub preset directory, ready to fine-tune.

    The directory holds the BertBackbone (`config.json`, `model.weights.h5`), a `BertTokenizer`
    over `vocab_file` and a `BertTextClassifierPreprocessor`, so
    `keras_hub.models.BertTextClassifier.from_preset(preset_dir, num_classes=...)` builds a
    classifier on the pre-trained encoder. Written beside `preset_dir` under a temporary name,
    then renamed; an existing preset is replaced only by a complete one, and kept if that fails.
    Note that keras-hub's `BertTokenizer` with `lowercase=True` does not strip accents as Google's
    and HF's uncased tokenizers do (accented words become [UNK]): strip them from the text
    beforehand.

    Args:
        model: a kbert pre-training model (or a keras-hub BertBackbone).
        preset_dir: the directory to create (any `tf.io.gfile` path; replaced if it exists).
        vocab_file: the WordPiece vocabulary the model was trained with.
        lowercase: whether the tokenizer lower-cases (the vocabulary's `do_lower_case`).
        sequence_length: the classifier preprocessor's length; default the model's position
            table length, at most 512.

    Returns:
        `preset_dir`.

    Examples:
    >>> import kbert
    >>> config = kbert.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1,
    ...                           num_attention_heads=2, intermediate_size=64)
    >>> model = kbert.build_pretraining_model(config, 16, 3)
    >>> words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(95)]
    >>> _ = open("vocab.txt", "w").write("\\n".join(words) + "\\n")
    >>> preset = kbert.save_encoder_preset(model, "preset", "vocab.txt")
    >>> sorted(os.listdir(preset))
    ['assets', 'config.json', 'metadata.json', 'model.weights.h5', 'preprocessor.json',
     'tokenizer.json']
    """
    encoder = _encoder(model)
    if not tf.io.gfile.exists(vocab_file):
        raise FileNotFoundError(f"{vocab_file}: vocabulary file not found")
    tokenizer = keras_hub.models.BertTokenizer(vocabulary=vocab_file, lowercase=lowercase)
    if tokenizer.vocabulary_size() != encoder.vocabulary_size:
        raise ValueError(
            f"{vocab_file}: holds {tokenizer.vocabulary_size()} tokens, but the model has "
            f"vocab_size={encoder.vocabulary_size}"
        )
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor(
        tokenizer, sequence_length=sequence_length or min(encoder.max_sequence_length, 512)
    )
    # keras-hub's preset saver writes with local file I/O: stage locally, then publish via gfile.
    with tempfile.TemporaryDirectory() as staging:
        encoder.save_to_preset(staging)
        preprocessor.save_to_preset(staging)
        publish_directory(staging, preset_dir)
    logger.info("wrote keras-hub preset %s", preset_dir)
    return preset_dir


def saved_optimizer_step(keras_file: str) -> int | None:
    """The optimizer updates a `.keras` model file had done when saved (its `iterations`).

    None, with a warning saying why, for a file saved without an optimizer (an uncompiled model).

    Args:
        keras_file: a `.keras` file (any `tf.io.gfile` path).

    Examples:
    >>> import kbert
    >>> config = kbert.BertConfig.from_preset("tiny", vocab_size=32)
    >>> model = kbert.build_pretraining_model(config, 8, 2)
    >>> _ = kbert.compile_for_pretraining(model)
    >>> model.save("model.keras")
    >>> saved_optimizer_step("model.keras")
    0
    """
    # Reads one scalar from the archive: rebuilding the saved optimizer would allocate its slot
    # variables, twice the model's size. Keras saves the optimizer's batch counter as its first
    # variable; under gradient accumulation `iterations` divides it by the batches per update.
    with tf.io.gfile.GFile(keras_file, "rb") as f:
        try:
            archive = zipfile.ZipFile(f)
        # A file shorter than a zip's end record fails gfile's seek back from its end.
        except (zipfile.BadZipFile, tf.errors.InvalidArgumentError):
            raise ValueError(f"{keras_file}: not a .keras file (expected a zip archive)") from None
        with archive:
            config = json.loads(archive.read("config.json"))
            optimizer = (config.get("compile_config") or {}).get("optimizer")
            counter = None
            if optimizer is not None and "model.weights.h5" in archive.namelist():
                with archive.open("model.weights.h5") as weights, h5py.File(weights, "r") as h5:
                    if "optimizer/vars/0" in h5:
                        counter = int(h5["optimizer/vars/0"][()])
    if counter is None:
        logger.warning(
            "%s: saved without an optimizer (the model was not compiled), so the number of "
            "updates it was trained for is unknown (step: null)",
            keras_file,
        )
        return None
    return counter // (optimizer["config"].get("gradient_accumulation_steps") or 1)


def _log(report: LoadReport) -> None:
    logger.info("%s", report.describe())
    if report.missing:
        missing = ", ".join(report.missing)
        logger.warning("%s: not in the source, left as initialised: %s", report.source, missing)
    if report.unused:
        logger.warning("%s: source variables not used: %s", report.source, ", ".join(report.unused))
