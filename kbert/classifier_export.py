"""Export a fine-tuned classifier (`kbert finetune`'s best model) as a TF Serving SavedModel that
takes raw text, tokenized in the graph by the ops of kbert's pre-training export.

Layout: `<export_base>/<name>/<version>/` (saved_model.pb, variables/, assets/vocab.txt, and
TF Serving's warm-up file `assets.extra/tf_serving_warmup_requests`: a request of every signature
at each of `kbert.export.WARMUP_BATCH_SIZES`, written by the pre-training export's writer), written
as `kbert.export.write_version` writes every export. Signatures (batch dimension None):

    serving_default  text, text_pair string [b] (empty text_pair: a single sentence)
                     → classification: probabilities float32 [b, C], label string [b]
                       (the most probable of the training labels, in the classifier's order)
                     → regression: prediction float32 [b]
    single_text      text string [b] → the same outputs

Pairs are truncated longest-first to `max_seq_length` as `kbert finetune` trained on them. Loading
the SavedModel in Python needs `import tensorflow_text` first (the tokenizer ops). Under another
Keras backend (JAX) the export runs in a TensorFlow-backend subprocess, `kbert export --model
<output_dir>/best_model.keras`, which reads the labels and sequence length from the
`finetune_results.json` beside it.
"""

from __future__ import annotations

import logging
import os
import posixpath
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf

from kbert.errors import SettingError
from kbert.export import (
    WARMUP_FILE,
    export_in_tensorflow_process,
    text_batch,
    write_version,
    write_warmup_requests,
)
from kbert.finetune_data import TextPairEncoder
from kbert.io import read_json
from kbert.serving_tokenizer import read_vocab, write_vocab

logger = logging.getLogger(__name__)

SERVING_DEFAULT = "serving_default"
SINGLE_TEXT = "single_text"
RESULTS_FILE = "finetune_results.json"


def export_classifier(
    model: keras.Model | str,
    vocab_file: str,
    export_base: str,
    max_seq_length: int,
    labels: Sequence[str] | None,
    name: str = "classifier",
    version: int | None = None,
    do_lower_case: bool = True,
) -> str:
    """Write the classifier as a raw-text TF Serving SavedModel; returns `<base>/<name>/<version>`.

    Args:
        model: a fine-tuned keras-hub `BertTextClassifier` (no preprocessor) or its `.keras` file.
        vocab_file: the vocab.txt it was fine-tuned with (copied into the SavedModel).
        export_base: TF Serving's model base directory.
        max_seq_length: tokens per sequence, as in fine-tuning.
        labels: the class names in output order; None for a regression model.
        name: the model's name (a directory under `export_base`).
        version: the version directory; default the next integer after the existing ones.
        do_lower_case: lower-case and strip accents, as in fine-tuning.
    """
    if keras.backend.backend() != "tensorflow":
        if not isinstance(model, (str, os.PathLike)):
            raise SettingError(
                "the classifier's SavedModel is a TensorFlow graph: under another Keras backend "
                "pass the saved .keras file (exported by a TensorFlow-backend subprocess)"
            )
        return _export_in_tensorflow_process(
            os.fspath(model), vocab_file, export_base, name, version, do_lower_case
        )
    if isinstance(model, (str, os.PathLike)):
        model = keras.saving.load_model(os.fspath(model))
    tokens = read_vocab(vocab_file)

    def write(tmp_dir: str, local: str) -> None:
        # A clean copy (stripped lines): the tables read it whole-line, the SavedModel keeps it.
        vocab_copy = os.path.join(local, "vocab.txt")
        write_vocab(tokens, vocab_copy)
        text_encoder = TextPairEncoder(vocab_copy, max_seq_length, do_lower_case)
        module, signatures = _signatures(model, text_encoder, labels)
        tf.saved_model.save(module, tmp_dir, signatures=signatures)
        write_warmup_requests(posixpath.join(tmp_dir, WARMUP_FILE), name, _warmup_inputs)

    export_dir = write_version(export_base, name, version, write)
    logger.info("exported the classifier to %s", export_dir)
    return export_dir


def _warmup_inputs(pairs: list[tuple[str, str]]) -> dict[str, dict[str, np.ndarray]]:
    """The warm-up requests' inputs of both signatures for a batch of (text, text pair)s."""
    text = text_batch([a for a, _ in pairs])
    return {
        SERVING_DEFAULT: {"text": text, "text_pair": text_batch([b for _, b in pairs])},
        SINGLE_TEXT: {"text": text},
    }


def _signatures(
    model: keras.Model, text_encoder: TextPairEncoder, labels: Sequence[str] | None
) -> tuple[tf.Module, dict[str, tf.types.experimental.ConcreteFunction]]:
    """The signatures of the module docstring and the module holding their variables and tables."""
    text = tf.TensorSpec([None], tf.string, name="text")
    text_pair = tf.TensorSpec([None], tf.string, name="text_pair")
    label_names = tf.constant(list(labels)) if labels is not None else None

    def classify(text, text_pair):
        outputs = tf.cast(model(text_encoder(text, text_pair), training=False), tf.float32)
        if label_names is None:
            return {"prediction": outputs[:, 0]}
        probabilities = tf.nn.softmax(outputs, axis=-1)
        return {
            "probabilities": probabilities,
            "label": tf.gather(label_names, tf.argmax(probabilities, axis=-1)),
        }

    def single_text(text):
        return classify(text, tf.fill(tf.shape(text), ""))

    signatures = {
        SERVING_DEFAULT: tf.function(
            classify, input_signature=[text, text_pair], autograph=False
        ).get_concrete_function(),
        SINGLE_TEXT: tf.function(
            single_text, input_signature=[text], autograph=False
        ).get_concrete_function(),
    }
    module = tf.Module()
    module.text_encoder = text_encoder.serving_encoder
    # The tf.Variables the graphs read (see kbert.export._serving_signatures).
    captured = {id(v): v for fn in signatures.values() for v in fn.variables}
    module.model_variables = list(captured.values())
    return module, signatures


def finetune_results_of(model_file: str) -> dict | None:
    """`finetune_results.json` beside a `.keras` file (`kbert finetune`'s output), or None."""
    if posixpath.splitext(model_file.rstrip("/"))[1] != ".keras":
        return None
    results = posixpath.join(posixpath.dirname(model_file), RESULTS_FILE)
    return read_json(results, RESULTS_FILE) if tf.io.gfile.exists(results) else None


def _export_in_tensorflow_process(
    model_file: str,
    vocab_file: str,
    export_base: str,
    name: str,
    version: int | None,
    do_lower_case: bool,
) -> str:
    """`kbert export` of a fine-tuned model file under KERAS_BACKEND=tensorflow (it reads the
    labels and sequence length from the `finetune_results.json` beside it)."""
    return export_in_tensorflow_process(
        [
            f"--model={model_file}",
            f"--vocab_file={vocab_file}",
            f"--export_base={export_base}",
            f"--name={name}",
            "--do_lower_case" if do_lower_case else "--nodo_lower_case",
            *([f"--version={version}"] if version is not None else []),
        ]
    )
