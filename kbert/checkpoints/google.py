"""Google's TF1 BERT checkpoints (google-research/bert, NVIDIA, ...): their variable layout maps one
to one onto kbert's weights, both ways (`load_google_checkpoint`, `save_google_checkpoint`)."""

from __future__ import annotations

import dataclasses
import os
import re

import keras
import keras_hub
import numpy as np
import tensorflow as tf

from kbert.checkpoints.parts import (
    BACKBONE_FIELDS,
    BERT_CONFIG_FILENAME,
    config_from_encoder,
    encoder_of,
    head_of,
)
from kbert.checkpoints.report import GOOGLE_CHECKPOINT, LoadReport, few, log_report, logger
from kbert.errors import InputError, MissingFileError
from kbert.io import atomic_path, read_json
from kbert.vocabulary import VOCAB_FILENAME

_POSITION_EMBEDDINGS = "bert/embeddings/position_embeddings"
_LAYER_NAME = re.compile(r"^bert/encoder/layer_(\d+)/")
# Training state that Google's (Adam), NVIDIA's (LAMB, loss scaling) and TF1's optimizers save
# beside the weights; none of it is a model weight.
_OPTIMIZER_STATE = re.compile(
    r"(^|/)(adam_m|adam_v|Adam|Adam_1|LAMB|LAMB_1|Momentum)$"
    r"|^(global_step|beta1_power|beta2_power|current_loss_scale|good_steps)$"
)


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


def google_slots(model: keras.Model) -> list[_Slot]:
    """Every variable of Google's layout, in Google's order, with the kbert weight it maps to."""
    encoder = encoder_of(model)
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

    mlm = head_of(model, "mlm_head")
    if mlm is not None:
        part = "MLM head"
        dense("cls/predictions/transform/dense", mlm._intermediate_dense, part)
        layer_norm("cls/predictions/transform/LayerNorm", mlm._intermediate_layer_norm, part)
        add("cls/predictions/output_bias", mlm._bias, part)
    nsp = head_of(model, "nsp")
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
    return ", ".join(f"{BACKBONE_FIELDS[f]}={getattr(encoder, f)}" for f in fields)


def resolve_google_checkpoint(path: str) -> str:
    """The checkpoint prefix for `path`: a prefix itself, or a directory holding one checkpoint.

    Args:
        path: a prefix such as `uncased_L-12_H-768_A-12/bert_model.ckpt`, or its directory.

    Examples:
    >>> resolve_google_checkpoint("no_such_dir/bert_model.ckpt")
    Traceback (most recent call last):
    ...
    kbert.errors.MissingFileError: no_such_dir/bert_model.ckpt: no TF checkpoint here ...
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
            raise InputError(
                f"{path}: holds {len(prefixes)} checkpoints ({few(prefixes)}) and no 'checkpoint' "
                "file naming the latest; pass the prefix of the one to use"
            )
    raise MissingFileError(
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
        raise InputError(f"{ckpt_prefix}: not a readable TF checkpoint ({e.message})") from None
    shapes = reader.get_variable_to_shape_map()
    encoder = encoder_of(model)
    _check_google_config(ckpt_prefix, encoder)
    slots = google_slots(model)
    report = LoadReport(GOOGLE_CHECKPOINT, ckpt_prefix)

    expected = {slot.name for slot in slots}
    for name in sorted(shapes):
        match = _LAYER_NAME.match(name)
        if _OPTIMIZER_STATE.search(name) or not match:
            continue
        if int(match.group(1)) >= encoder.num_layers:
            raise InputError(
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
            raise InputError(
                f"{ckpt_prefix}: damaged TF checkpoint, variable {slot.name} unreadable ({e})"
            ) from None
        rows, width = slot.google_shape[0], slot.google_shape[1:]
        if slot.name == _POSITION_EMBEDDINGS and shape[0] > rows and shape[1:] == width:
            report.notes.append(f"position table cut from {shape[0]} to the model's {rows} rows")
            value, shape = value[:rows], slot.google_shape
        if shape != slot.google_shape:
            raise InputError(
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
        raise InputError(
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
    log_report(report)
    return report


def _check_google_config(ckpt_prefix: str, encoder: keras_hub.models.BertBackbone) -> None:
    """Compare the head count in the checkpoint's bert_config.json, which no shape reveals."""
    path = os.path.join(os.path.dirname(ckpt_prefix), BERT_CONFIG_FILENAME)
    if not tf.io.gfile.exists(path):
        return
    heads = read_json(path, BERT_CONFIG_FILENAME).get("num_attention_heads")
    if heads is not None and heads != encoder.num_heads:
        raise InputError(
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
        slot.name: slot.to_google(np.asarray(slot.variable.numpy())) for slot in google_slots(model)
    }
    directory = os.path.dirname(ckpt_prefix)
    if directory:
        tf.io.gfile.makedirs(directory)
    prefix = _write_tf1_checkpoint(values, ckpt_prefix)
    config = getattr(model, "bert_config", None) or config_from_encoder(encoder_of(model))
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
