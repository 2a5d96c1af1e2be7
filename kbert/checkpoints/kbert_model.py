"""kbert's own models as a source: a run directory or a `.keras` file.

Every weight of the pre-training model loads, encoder and both heads. The weights do not depend on
the sequence lengths (the position table is sized by `max_position_embeddings`), so a run with
another `max_seq_length` or `max_predictions_per_seq` starts from them: BERT's two-phase recipe
(128 tokens, then 512) is `kbert train --init-from PHASE1_RUN_DIR` on the longer records.
"""

from __future__ import annotations

import posixpath

import keras
import numpy as np

from kbert.callbacks import CHECKPOINT_DIR, checkpoint_files
from kbert.checkpoints.detection import detect_source
from kbert.checkpoints.parts import (
    BACKBONE_FIELDS,
    BERT_CONFIG_FILENAME,
    check_backbone_fits,
    encoder_of,
    head_of,
)
from kbert.checkpoints.report import KBERT_RUN, KERAS_MODEL, LoadReport, assign_all
from kbert.config import BertConfig
from kbert.errors import InputError, MissingFileError
from kbert.io import MODEL_FILE, exists
from kbert.model import build_pretraining_model, load_pretraining_model


def load_kbert_model(model: keras.Model, source: str) -> LoadReport:
    """Load a kbert run's pre-training weights (encoder, MLM head, NSP head) into `model`.

    A run directory gives its `model.keras`; a run without one yet (interrupted, or still
    training) gives its newest weight checkpoint (`checkpoints/ckpt-<step>.weights.h5`). The
    model's config must match the source's (a longer source position table is cut to the
    model's rows); its sequence lengths may differ. Nothing is assigned unless every weight fits.

    Args:
        model: a kbert pre-training model (or a keras-hub BertBackbone: encoder only).
        source: a kbert run directory or a `.keras` file.

    Returns:
        A `LoadReport` (logged as one line).

    Raises:
        ValueError: naming the config field whose value in the source does not fit the model.
        FileNotFoundError: a run directory with neither `model.keras` nor a weight checkpoint.

    Examples:
    >>> import kbert
    >>> config = kbert.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1,
    ...                           num_attention_heads=2, intermediate_size=64)
    >>> kbert.build_pretraining_model(config, 16, 3).save("phase1.keras")
    >>> longer = kbert.build_pretraining_model(config, 64, 10)
    >>> load_kbert_model(longer, "phase1.keras").parts
    ['encoder', 'MLM head', 'NSP head']
    """
    kind, location = detect_source(source)
    if kind not in (KBERT_RUN, KERAS_MODEL):
        raise InputError(f"{source}: not a kbert run directory or .keras file (found a {kind})")
    loaded, location = _source_model(kind, location)
    encoder, loaded_encoder = encoder_of(model), encoder_of(loaded)
    fields = {key: getattr(loaded_encoder, key) for key in BACKBONE_FIELDS}
    check_backbone_fits(location, fields, encoder)

    report = LoadReport(kind, location)
    positions = encoder.position_embedding.position_embeddings
    assignments = []
    for part, source_layer, layer in _parts(loaded, model):
        if layer is None:
            report.unused.extend(variable.path for variable in source_layer.weights)
            continue
        for variable, source_variable in zip(layer.weights, source_layer.weights):
            value = np.asarray(source_variable.numpy())
            if variable is positions and value.shape[0] > variable.shape[0]:
                rows = variable.shape[0]
                report.notes.append(
                    f"position table cut from {value.shape[0]} to the model's {rows} rows"
                )
                value = value[:rows]
            if tuple(value.shape) != tuple(variable.shape):
                raise InputError(
                    f"{location}: {source_variable.path} has shape {list(value.shape)}, but the "
                    f"model's {part} weight {variable.path} has {list(variable.shape)}"
                )
            assignments.append((source_variable.path, variable, value))
        report.parts.append(part)

    return assign_all(report, assignments)


def _parts(
    source: keras.Model, model: keras.Model
) -> list[tuple[str, keras.layers.Layer, keras.layers.Layer | None]]:
    """(part, the source's layer, the model's layer or None) for the encoder and both heads."""
    parts = [("encoder", encoder_of(source), encoder_of(model))]
    for part, name in (("MLM head", "mlm_head"), ("NSP head", "nsp")):
        parts.append((part, head_of(source, name), head_of(model, name)))
    return parts


def _source_model(kind: str, location: str) -> tuple[keras.Model, str]:
    """The source's pre-training model, and the file its weights came from."""
    if kind == KERAS_MODEL or exists(posixpath.join(location, MODEL_FILE)):
        model = load_pretraining_model(location, action="initialise from")
        return model, location if kind == KERAS_MODEL else posixpath.join(location, MODEL_FILE)
    checkpoints = checkpoint_files(posixpath.join(location, CHECKPOINT_DIR))
    if not checkpoints:
        raise MissingFileError(
            f"{location}: a kbert run directory with neither {MODEL_FILE} nor a weight "
            f"checkpoint in {CHECKPOINT_DIR}/ yet; nothing to initialise from"
        )
    config = BertConfig.from_json_file(posixpath.join(location, BERT_CONFIG_FILENAME))
    # The weights do not depend on the sequence lengths: the smallest model holds them all.
    model = build_pretraining_model(config, max_seq_length=2, max_predictions_per_seq=1)
    model.load_weights(checkpoints[-1])
    return model, checkpoints[-1]
