"""Export a pre-trained model as a SavedModel that stock TF Serving loads and warms up.

Layout (TF Serving's `model_base_path/<name>/<version>/`):

    <export_base>/<name>/<version>/
        saved_model.pb, variables/    the signatures below
        assets/vocab.txt              the vocabulary the text signatures tokenize with
        assets.extra/tf_serving_warmup_requests
                                      PredictionLog records TF Serving replays at load

Signatures (batch dimension None, L = max_seq_length, P = max_predictions_per_seq, k = top_k):

    serving_default  input_ids, segment_ids, input_mask int32 [b, L],
                     masked_lm_positions int32 [b, P]
                     → mlm_top_ids int32 [b, P, k], mlm_top_probs float32 [b, P, k],
                       nsp_probs float32 [b, 2] (index 0 = "B follows A", Google's label 0)
    encode           input_ids, segment_ids, input_mask int32 [b, L]
                     → sequence_output float32 [b, L, H], pooled_output float32 [b, H]
    fill_mask        text_a, text_b string [b] (empty text_b = one segment)
                     → mlm_top_tokens string [b, P, k], mlm_top_probs float32 [b, P, k] for the
                       first P `[MASK]`s of the text (slots past the last `[MASK]`: "" and 0.0),
                       masked_lm_positions int32 [b, P] (0 = no `[MASK]`), nsp_probs float32 [b, 2]
    tokenize         text_a, text_b string [b] → the serving_default inputs, int32

The text signatures tokenize in the graph (`kbert.serving_tokenizer`) with TensorFlow core ops and
tensorflow-text's BertTokenizer-family ops, which the TF Serving model server links; loading the
SavedModel in Python therefore needs `import tensorflow_text` first.

A SavedModel is a TensorFlow graph: under another Keras backend (JAX) the export runs in a
TensorFlow-backend subprocess (`KERAS_BACKEND=tensorflow python -m kbert export`), which loads the
same weights (they are backend-independent) and writes the same SavedModel.
"""

from __future__ import annotations

import logging
import os
import posixpath
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from kbert import features
from kbert.errors import InputError, KbertError, MissingFileError, SettingError
from kbert.io import sweep_temporaries, temporary_path
from kbert.model import BertPretrainingModel, load_pretraining_model
from kbert.serving_tokenizer import MASK, ServingTextEncoder, read_vocab, write_vocab
from kbert.vocabulary import resolve_vocab_file

logger = logging.getLogger(__name__)

SERVING_DEFAULT = "serving_default"
ENCODE = "encode"
FILL_MASK = "fill_mask"
TOKENIZE = "tokenize"
SIGNATURES = (SERVING_DEFAULT, ENCODE, FILL_MASK, TOKENIZE)
TEXT_INPUTS = ("text_a", "text_b")
ENCODER_INPUTS = (features.INPUT_IDS, features.SEGMENT_IDS, features.INPUT_MASK)
WARMUP_FILE = posixpath.join("assets.extra", "tf_serving_warmup_requests")
# The file TF Serving loads a version by: written last where a version appears file by file.
SAVED_MODEL_FILE = "saved_model.pb"
# TF Serving replays each warm-up record once at load; two batch sizes cover the single-request
# path and a batched one.
WARMUP_BATCH_SIZES = (1, 8)
WARMUP_TEXTS = ((f"{MASK} {MASK} .", ""), (f"{MASK} .", f"{MASK} ."))


def export_for_serving(
    model_or_run_dir: keras.Model | str,
    vocab_file: str | None = None,
    export_base: str = "saved_models",
    name: str = "kbert",
    version: int | None = None,
    top_k: int = 5,
    do_lower_case: bool = True,
) -> str:
    """Write a TF Serving SavedModel to `<export_base>/<name>/<version>/` and return that path.

    On local disk it is built in a temporary directory beside the versions and renamed into
    place, so TF Serving never sees half an export. Elsewhere (gs://, where a folder rename
    copies object by object) it is built locally and copied into the version directory file by
    file, `saved_model.pb` last: the file TF Serving loads a version by comes when all the others
    are complete. An existing version is never overwritten.

    Args:
        model_or_run_dir: a kbert pre-training model, its `.keras` file, or a run directory
            (its `model.keras`).
        vocab_file: the vocab.txt the model was trained with (copied into the SavedModel);
            default the one a run directory keeps (or beside a `.keras` file).
        export_base: TF Serving's model base directory.
        name: the model's name (a directory under `export_base`).
        version: the version directory; default the next integer after the existing ones.
        top_k: how many tokens each masked position reports.
        do_lower_case: whether the text signatures lower-case and strip accents (uncased vocab).

    Examples:
    >>> import os, tempfile, kbert
    >>> from kbert.serving_tokenizer import write_vocab
    >>> workdir = tempfile.mkdtemp()
    >>> tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(27)]
    >>> write_vocab(tokens, os.path.join(workdir, "vocab.txt"))
    >>> config = kbert.BertConfig.from_preset("tiny", vocab_size=32, num_hidden_layers=1)
    >>> model = kbert.build_pretraining_model(config, 8, 2)
    >>> path = export_for_serving(
    ...     model, os.path.join(workdir, "vocab.txt"), os.path.join(workdir, "saved_models"))
    >>> os.path.relpath(path, workdir)
    'saved_models/kbert/1'
    """
    vocab_file = resolve_vocab_file(vocab_file, model_or_run_dir)
    if keras.backend.backend() != "tensorflow":
        return _export_in_tensorflow_process(
            model_or_run_dir, vocab_file, export_base, name, version, top_k, do_lower_case
        )
    tokens = read_vocab(vocab_file)
    model = _load_model(model_or_run_dir)
    vocab_size = model.bert_config.vocab_size
    if len(tokens) != vocab_size:
        raise InputError(
            f"{vocab_file}: {len(tokens)} tokens, but the model's vocab_size is {vocab_size}"
        )
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= vocab_size:
        raise SettingError(f"top_k must be an integer in [1, {vocab_size}], got {top_k!r}")

    def write(tmp_dir: str, local: str) -> None:
        # A clean copy (stripped lines): the tables read it whole-line, the SavedModel keeps it.
        vocab_copy = os.path.join(local, "vocab.txt")
        write_vocab(tokens, vocab_copy)
        text_encoder = ServingTextEncoder(
            vocab_copy,
            tokens,
            model.max_seq_length,
            model.max_predictions_per_seq,
            do_lower_case=do_lower_case,
        )
        module, signatures = _serving_signatures(model, text_encoder, top_k)
        tf.saved_model.save(module, tmp_dir, signatures=signatures)
        write_warmup_requests(
            posixpath.join(tmp_dir, WARMUP_FILE), name, _pretraining_warmup_inputs(text_encoder)
        )

    export_dir = write_version(export_base, name, version, write)
    logger.info("exported %s (signatures: %s)", export_dir, ", ".join(SIGNATURES))
    return export_dir


def write_version(
    export_base: str, name: str, version: int | None, write: Callable[[str, str], None]
) -> str:
    """`<export_base>/<name>/<version>/` written by `write(tmp_dir, local_scratch_dir)` into a
    temporary folder beside the versions and renamed into place, or on an object store copied
    with `saved_model.pb` last (TF Serving never loads half an export; an existing version is
    never overwritten). Returns the version directory.

    Args:
        export_base: TF Serving's model base directory.
        name: the model's name (a directory under `export_base`).
        version: the version directory; default the next integer after the existing ones.
        write: writes the SavedModel into its first argument.
    """
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise SettingError(f"name {name!r}: expected letters, digits, '.', '_' or '-'")
    model_dir = posixpath.join(export_base, name)
    if "://" in model_dir:
        for path in _remove_partial_versions(model_dir):
            logger.info("removed %s, left incomplete by an interrupted export", path)
    if version is None:
        version = next_version(model_dir)
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise SettingError(f"version must be a non-negative integer, got {version!r}")
    export_dir = posixpath.join(model_dir, str(version))
    _check_free(export_dir)

    tf.io.gfile.makedirs(model_dir)
    # A killed export's temporary folder (one export of a name at a time: it may be large).
    for path in sweep_temporaries(model_dir):
        logger.info("removed %s, left by an interrupted export", path)
    remote, tmp_dir = "://" in export_dir, None
    try:
        with tempfile.TemporaryDirectory() as local:
            # TF Serving only loads directories named by an integer, so it ignores this one.
            tmp_dir = os.path.join(local, "version") if remote else temporary_path(export_dir)
            write(tmp_dir, local)
            _check_free(export_dir)
            if remote:
                _copy_saved_model_last(tmp_dir, export_dir)
            else:
                tf.io.gfile.rename(tmp_dir, export_dir, overwrite=False)
    finally:
        if not remote and tmp_dir and tf.io.gfile.exists(tmp_dir):
            tf.io.gfile.rmtree(tmp_dir)
    return export_dir


# A TensorFlow-backend export of a pre-training model takes a minute at most; allow for slow disks.
EXPORT_SUBPROCESS_TIMEOUT_SECONDS = 1800


def _export_in_tensorflow_process(
    model_or_run_dir: keras.Model | str,
    vocab_file: str,
    export_base: str,
    name: str,
    version: int | None,
    top_k: int,
    do_lower_case: bool,
) -> str:
    """`export_for_serving` run by `kbert export` under KERAS_BACKEND=tensorflow; a model object
    is handed over as a `.keras` file. Returns the version directory the subprocess printed."""
    with tempfile.TemporaryDirectory() as local:
        if isinstance(model_or_run_dir, keras.Model):
            _load_model(model_or_run_dir)  # the same error for a model that is not kbert's
            path = os.path.join(local, "model.keras")
            model_or_run_dir.save(path)
            model_or_run_dir = path
        flags = [
            f"--model={os.fspath(model_or_run_dir)}",
            f"--vocab_file={vocab_file}",
            f"--export_base={export_base}",
            f"--name={name}",
            f"--top_k={top_k}",
            "--do_lower_case" if do_lower_case else "--nodo_lower_case",
            *([f"--version={version}"] if version is not None else []),
        ]
        return export_in_tensorflow_process(flags)


def export_in_tensorflow_process(flags: list[str]) -> str:
    """Run `kbert export FLAGS` under KERAS_BACKEND=tensorflow (SavedModels are TensorFlow
    graphs) and return the version directory it printed; its failure, a stall or silence is
    one `ExportError`."""
    command = [sys.executable, "-m", "kbert", "export", *flags]
    logger.info("exporting with the TensorFlow backend in a subprocess: %s", " ".join(command))
    try:
        result = subprocess.run(
            command,
            env=dict(os.environ, KERAS_BACKEND="tensorflow"),
            capture_output=True,
            text=True,
            timeout=EXPORT_SUBPROCESS_TIMEOUT_SECONDS,
        )
    except subprocess.TimeoutExpired:
        raise ExportError(
            f"the export (KERAS_BACKEND=tensorflow in a subprocess) did not finish in "
            f"{EXPORT_SUBPROCESS_TIMEOUT_SECONDS} s and was stopped: {' '.join(command)}"
        ) from None
    if result.returncode != 0:
        errors = [
            line.split("error: ", 1)[1] for line in result.stderr.splitlines() if "error: " in line
        ]
        raise ExportError(
            (errors[-1] if errors else result.stderr.strip()[-2000:])
            + " (export ran with KERAS_BACKEND=tensorflow in a subprocess)"
        )
    if not result.stdout.strip():
        raise ExportError(
            "the export (KERAS_BACKEND=tensorflow in a subprocess) exited without naming the "
            f"version it wrote; its stderr: {result.stderr.strip()[-2000:] or '(empty)'}"
        )
    return result.stdout.splitlines()[0]


class ExportError(KbertError, ValueError):
    """The export in a TensorFlow-backend subprocess failed, stalled or said nothing."""


def next_version(model_dir: str) -> int:
    """One more than the largest integer-named version in `model_dir` (1 when there is none)."""
    if not tf.io.gfile.isdir(model_dir):
        return 1
    versions = [
        int(entry.rstrip("/"))
        for entry in tf.io.gfile.listdir(model_dir)
        if entry.rstrip("/").isdigit()
    ]
    return max(versions, default=0) + 1


def _serving_signatures(
    model: BertPretrainingModel, text_encoder: ServingTextEncoder, top_k: int
) -> tuple[tf.Module, dict[str, tf.types.experimental.ConcreteFunction]]:
    """The four serving signatures (see the module docstring) and the module that holds their
    variables and vocabulary tables, ready for `tf.saved_model.save(module, path, signatures)`."""
    encoder = model.get_layer("encoder")
    length, predictions = model.max_seq_length, model.max_predictions_per_seq

    def ids_spec(feature: str, width: int) -> tf.TensorSpec:
        return tf.TensorSpec([None, width], tf.int32, name=feature)

    encoder_specs = [ids_spec(feature, length) for feature in ENCODER_INPUTS]
    model_specs = encoder_specs + [ids_spec(features.MASKED_LM_POSITIONS, predictions)]
    text_specs = [tf.TensorSpec([None], tf.string, name=text) for text in TEXT_INPUTS]

    def predict(inputs: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        outputs = model(inputs, training=False)
        top = tf.math.top_k(tf.nn.softmax(outputs["mlm"], axis=-1), k=top_k)
        return {
            "mlm_top_ids": top.indices,
            "mlm_top_probs": top.values,
            "nsp_probs": tf.nn.softmax(outputs["nsp"], axis=-1),
        }

    def predict_ids(input_ids, segment_ids, input_mask, masked_lm_positions):
        return predict(
            {
                features.INPUT_IDS: input_ids,
                features.SEGMENT_IDS: segment_ids,
                features.INPUT_MASK: input_mask,
                features.MASKED_LM_POSITIONS: masked_lm_positions,
            }
        )

    def encode_ids(input_ids, segment_ids, input_mask):
        outputs = encoder(
            {"token_ids": input_ids, "segment_ids": segment_ids, "padding_mask": input_mask},
            training=False,
        )
        return {
            "sequence_output": tf.cast(outputs["sequence_output"], tf.float32),
            "pooled_output": tf.cast(outputs["pooled_output"], tf.float32),
        }

    def fill_mask_text(text_a, text_b):
        inputs = text_encoder(text_a, text_b)
        outputs = predict(inputs)
        positions = inputs[features.MASKED_LM_POSITIONS]
        # Position 0 holds [CLS], so 0 marks a slot past the text's last [MASK].
        real = (positions > 0)[:, :, None]
        tokens = text_encoder.id_to_token.lookup(tf.cast(outputs["mlm_top_ids"], tf.int64))
        return {
            "mlm_top_tokens": tf.where(real, tokens, ""),
            "mlm_top_probs": tf.where(real, outputs["mlm_top_probs"], 0.0),
            "masked_lm_positions": positions,
            "nsp_probs": outputs["nsp_probs"],
        }

    def tokenize_text(text_a, text_b):
        return text_encoder(text_a, text_b)

    endpoints: tuple[tuple[str, Callable, list[tf.TensorSpec]], ...] = (
        (SERVING_DEFAULT, predict_ids, model_specs),
        (ENCODE, encode_ids, encoder_specs),
        (FILL_MASK, fill_mask_text, text_specs),
        (TOKENIZE, tokenize_text, text_specs),
    )
    signatures = {
        name: tf.function(fn, input_signature=specs, autograph=False).get_concrete_function()
        for name, fn, specs in endpoints
    }
    # Keras' ExportArchive would do this too, but it also saves each endpoint as a restorable
    # tf.function, tracing everything twice more (a 5x slower export); serving needs signatures.
    module = tf.Module()
    module.text_encoder = text_encoder
    # The tf.Variables the signatures read, not the Keras variables wrapping them: tracked as
    # Keras variables they are saved under other nodes than the ones the graphs read, and a
    # session-based loader (TF Serving's C++ one) restores the wrong ones.
    captured = {id(v): v for fn in signatures.values() for v in fn.variables}
    module.model_variables = list(captured.values())
    return module, signatures


def write_warmup_requests(
    path: str,
    model_name: str,
    inputs_for: Callable[[list[tuple[str, str]]], dict[str, dict[str, np.ndarray]]],
) -> int:
    """Write TF Serving's warm-up file: a PredictionLog record of a PredictRequest for every
    signature and every batch size in WARMUP_BATCH_SIZES. `inputs_for(pairs)` maps the batch's
    (text, text pair)s to each signature's inputs. Returns the number of records."""
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    count = 0
    tf.io.gfile.makedirs(posixpath.dirname(path))
    with tf.io.TFRecordWriter(path) as writer:
        for batch_size in WARMUP_BATCH_SIZES:
            pairs = [WARMUP_TEXTS[i % len(WARMUP_TEXTS)] for i in range(batch_size)]
            for signature, inputs in inputs_for(pairs).items():
                request = predict_pb2.PredictRequest(
                    model_spec=model_pb2.ModelSpec(name=model_name, signature_name=signature)
                )
                for key, value in inputs.items():
                    request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
                log = prediction_log_pb2.PredictionLog(
                    predict_log=prediction_log_pb2.PredictLog(request=request)
                )
                writer.write(log.SerializeToString())
                count += 1
    return count


def text_batch(texts: Sequence[str]) -> np.ndarray:
    """Strings as the object array of UTF-8 bytes that `tf.make_tensor_proto` takes."""
    return np.array([text.encode() for text in texts], dtype=object)


def _pretraining_warmup_inputs(
    text_encoder: ServingTextEncoder,
) -> Callable[[list[tuple[str, str]]], dict[str, dict[str, np.ndarray]]]:
    """The pre-training export's warm-up inputs of every signature for a batch of pairs."""

    def inputs_for(pairs: list[tuple[str, str]]) -> dict[str, dict[str, np.ndarray]]:
        texts = {
            TEXT_INPUTS[0]: text_batch([a for a, _ in pairs]),
            TEXT_INPUTS[1]: text_batch([b for _, b in pairs]),
        }
        ids = {
            feature: value.numpy()
            for feature, value in text_encoder(
                tf.constant(texts[TEXT_INPUTS[0]]), tf.constant(texts[TEXT_INPUTS[1]])
            ).items()
        }
        return {
            SERVING_DEFAULT: ids,
            ENCODE: {feature: ids[feature] for feature in ENCODER_INPUTS},
            FILL_MASK: texts,
            TOKENIZE: texts,
        }

    return inputs_for


def fill_mask(saved_model_dir: str, text_a: str, text_b: str = "") -> dict[str, Any]:
    """Run an exported SavedModel's `fill_mask` signature on one text (or pair), using only the
    SavedModel: its top-k tokens and probabilities for each `[MASK]`, and P(B follows A).

    Args:
        saved_model_dir: an export, `<export_base>/<name>/<version>`.
        text_a: the text, with `[MASK]` where tokens are to be predicted.
        text_b: the second segment of a pair ("" for none).

    Returns:
        `{"masks": [{"position": int, "tokens": [str], "probs": [float]}, ...],
        "is_next_prob": float}`; `is_next_prob` only means something for a pair.

    Examples:
    >>> fill_mask("saved_models/kbert/1", "Paris is the [MASK] of France.")  # doctest: +SKIP
    {'masks': [{'position': 4, 'tokens': ['capital', ...], 'probs': [0.61, ...]}], ...}
    """
    saved_model_path = posixpath.join(saved_model_dir, SAVED_MODEL_FILE)
    if not tf.io.gfile.exists(saved_model_path):
        raise MissingFileError(
            f"{saved_model_dir}: not a SavedModel (expected an export "
            "<export_base>/<name>/<version> holding saved_model.pb)"
        )
    import tensorflow_text  # noqa: F401  (registers the tokenizer ops the text signatures use)

    signatures = tf.saved_model.load(saved_model_dir).signatures
    if FILL_MASK not in signatures:
        raise InputError(f"{saved_model_dir}: no {FILL_MASK!r} signature (not a kbert export)")
    outputs = signatures[FILL_MASK](text_a=tf.constant([text_a]), text_b=tf.constant([text_b]))
    masks = []
    for slot, position in enumerate(outputs["masked_lm_positions"][0].numpy()):
        if position > 0:
            masks.append(
                {
                    "position": int(position),
                    "tokens": [t.decode() for t in outputs["mlm_top_tokens"][0, slot].numpy()],
                    "probs": [float(p) for p in outputs["mlm_top_probs"][0, slot].numpy()],
                }
            )
    return {"masks": masks, "is_next_prob": float(outputs["nsp_probs"][0, 0])}


def _load_model(model_or_run_dir: keras.Model | str) -> BertPretrainingModel:
    """The model itself, or loaded from a `.keras` file or a run directory's `model.keras`."""
    if isinstance(model_or_run_dir, (str, os.PathLike)):
        return load_pretraining_model(os.fspath(model_or_run_dir), action="export")
    if not isinstance(model_or_run_dir, BertPretrainingModel):
        raise SettingError(
            f"{model_or_run_dir}: not a kbert pre-training model "
            f"({type(model_or_run_dir).__name__}); expected kbert.build_pretraining_model's model"
        )
    return model_or_run_dir


def _copy_saved_model_last(local_dir: str, export_dir: str) -> None:
    """Copy a local SavedModel folder to `export_dir` file by file, `saved_model.pb` last."""
    files = [
        os.path.relpath(os.path.join(root, name), local_dir)
        for root, _, names in os.walk(local_dir)
        for name in names
    ]
    for relative in sorted(files, key=lambda f: f == SAVED_MODEL_FILE):
        target = posixpath.join(export_dir, *relative.split(os.sep))
        tf.io.gfile.makedirs(posixpath.dirname(target))
        tf.io.gfile.copy(os.path.join(local_dir, relative), target)


def _remove_partial_versions(model_dir: str) -> list[str]:
    """Remove the version directories without `saved_model.pb` (a killed copy's); returns them."""
    if not tf.io.gfile.isdir(model_dir):
        return []
    partial = [
        posixpath.join(model_dir, entry.rstrip("/"))
        for entry in tf.io.gfile.listdir(model_dir)
        if entry.rstrip("/").isdigit()
        and not tf.io.gfile.exists(posixpath.join(model_dir, entry.rstrip("/"), SAVED_MODEL_FILE))
    ]
    for path in partial:
        tf.io.gfile.rmtree(path)
    return partial


def _check_free(export_dir: str) -> None:
    if tf.io.gfile.exists(export_dir):
        raise SettingError(
            f"{export_dir}: this version already exists; pass another version "
            "(or none for the next one) instead of overwriting it"
        )
