"""`init_from`: detect what a pre-trained source is and load it with the matching converter."""

from __future__ import annotations

import keras

from kbert.checkpoints.detection import detect_source
from kbert.checkpoints.google import load_google_checkpoint
from kbert.checkpoints.kbert_model import load_kbert_model
from kbert.checkpoints.presets import init_encoder
from kbert.checkpoints.report import GOOGLE_CHECKPOINT, KBERT_RUN, KERAS_MODEL


def init_from(model: keras.Model, source: str) -> str:
    """Load whatever pre-trained `source` is into `model`; return what was detected and loaded.

    The one call behind `kbert train --init-from`: a Google TF1 checkpoint (prefix or
    directory) goes through `load_google_checkpoint`; a keras-hub preset (directory, name or
    handle) or a Hugging Face BERT folder through `init_encoder`; a kbert run directory or
    `.keras` file through `load_kbert_model` (every weight, encoder and both heads).

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
    elif kind in (KBERT_RUN, KERAS_MODEL):
        report = load_kbert_model(model, location)
    else:
        report = init_encoder(model, location)
    return report.describe()
