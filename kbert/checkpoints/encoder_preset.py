"""`save_encoder_preset`: the encoder as a keras-hub preset that `BertTextClassifier` fine-tunes."""

from __future__ import annotations

import tempfile

import keras
import keras_hub
import tensorflow as tf

from kbert.checkpoints.parts import encoder_of
from kbert.checkpoints.report import logger
from kbert.errors import InputError, MissingFileError
from kbert.io import publish_directory


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
    >>> import os, kbert
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
    encoder = encoder_of(model)
    if not tf.io.gfile.exists(vocab_file):
        raise MissingFileError(f"{vocab_file}: vocabulary file not found")
    tokenizer = keras_hub.models.BertTokenizer(vocabulary=vocab_file, lowercase=lowercase)
    if tokenizer.vocabulary_size() != encoder.vocabulary_size:
        raise InputError(
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
