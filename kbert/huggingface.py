"""`save_huggingface`: a kbert pre-training model as a Hugging Face `BertForPreTraining` folder.

The folder is what `transformers`' own `save_pretrained` writes for BERT, so PyTorch users load it
with `BertForPreTraining.from_pretrained(folder)` (or any `Bert*`/`Auto*` class) and
`BertTokenizerFast.from_pretrained(folder)`:

    config.json              model_type "bert", the sizes, hidden_act "gelu_new" (keras-hub's
                             BertBackbone and kbert's MLM head use the tanh GELU), eps 1e-12
    model.safetensors        HF's tensor names and layouts; the MLM decoder is tied to the
                             word embeddings (not stored, as HF saves it)
    vocab.txt, tokenizer_config.json, special_tokens_map.json

The tensors come from Google's checkpoint layout (`kbert.checkpoints.google.google_slots`, the one
map from kbert's weights to BERT's names) through `kbert.checkpoints.hf_layout`, which
`kbert.checkpoints.presets` reads HF heads with: HF's names are Google's with `/` → `.`, HF's
Linear weights Google's kernels transposed (the NSP weight is [2, H] in both, index 0 = "B is
the next segment"). Reading such a folder back is keras-hub's converter plus those heads
(`kbert train --init_from FOLDER`).
"""

from __future__ import annotations

import json
import os
import posixpath
import tempfile

import keras
import numpy as np

from kbert import features
from kbert.checkpoints.detection import detect_source, read_source_config
from kbert.checkpoints.google import google_slots
from kbert.checkpoints.hf_layout import hf_is_transposed, hf_name
from kbert.checkpoints.kbert_model import load_kbert_model
from kbert.checkpoints.parts import config_from_encoder, encoder_of, head_of
from kbert.checkpoints.report import KBERT_RUN, KERAS_MODEL, logger
from kbert.errors import InputError, SettingError
from kbert.io import exists, publish_directory, read_json
from kbert.model import build_pretraining_model
from kbert.vocabulary import (
    CLS,
    MASK,
    PAD,
    SEP,
    UNK,
    VOCAB_FILENAME,
    read_vocab,
    resolve_vocab_file,
    vocab_sha256,
)

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
ARCHITECTURE = "BertForPreTraining"
# transformers' ACT2FN name of the tanh-approximated GELU (Google's "gelu", keras-hub's
# `gelu_approximate`); HF's "gelu" is the exact erf form.
HF_HIDDEN_ACT = "gelu_new"
# keras-hub's BertBackbone and kbert's MLM head normalise with this epsilon.
LAYER_NORM_EPS = 1e-12
# The run's settings file (kbert.train), to find the data the run was trained on.
RUN_CONFIG_FILE = "run_config.json"


def hf_tensors(model: keras.Model) -> dict[str, np.ndarray]:
    """Every weight of a kbert pre-training model under its Hugging Face name and layout.

    Args:
        model: a kbert pre-training model (encoder, MLM head and NSP head).

    Examples:
    >>> import kbert
    >>> config = kbert.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1,
    ...                           num_attention_heads=2, intermediate_size=64)
    >>> tensors = hf_tensors(kbert.build_pretraining_model(config, 16, 3))
    >>> tensors["bert.encoder.layer.0.intermediate.dense.weight"].shape
    (64, 32)
    """
    for name in ("mlm_head", "nsp"):
        if head_of(model, name) is None:
            raise SettingError(
                f"model {model.name!r} has no {name!r} layer: a Hugging Face BertForPreTraining "
                "needs kbert's pre-training model (encoder, MLM head and NSP head)"
            )
    tensors = {}
    for slot in google_slots(model):
        value = slot.to_google(np.asarray(keras.ops.convert_to_numpy(slot.variable)))
        if hf_is_transposed(slot.name):
            value = value.T
        tensors[hf_name(slot.name)] = np.ascontiguousarray(value, dtype=np.float32)
    return tensors


def hf_config(model: keras.Model) -> dict:
    """The `config.json` of transformers' `BertConfig` for a kbert pre-training model.

    Args:
        model: a kbert pre-training model.

    Examples:
    >>> import kbert
    >>> model = kbert.build_pretraining_model(kbert.BertConfig.from_preset("tiny", vocab_size=64),
    ...                                       16, 3)
    >>> config = hf_config(model)
    >>> config["model_type"], config["hidden_act"], config["hidden_size"]
    ('bert', 'gelu_new', 128)
    """
    encoder = encoder_of(model)
    config = getattr(model, "bert_config", None) or config_from_encoder(encoder)
    return {
        "architectures": [ARCHITECTURE],
        "model_type": "bert",
        "vocab_size": encoder.vocabulary_size,
        "hidden_size": encoder.hidden_dim,
        "num_hidden_layers": encoder.num_layers,
        "num_attention_heads": encoder.num_heads,
        "intermediate_size": encoder.intermediate_dim,
        "hidden_act": HF_HIDDEN_ACT,
        "hidden_dropout_prob": encoder.dropout,
        "attention_probs_dropout_prob": encoder.dropout,
        "max_position_embeddings": encoder.max_sequence_length,
        "type_vocab_size": encoder.num_segments,
        "initializer_range": config.initializer_range,
        "layer_norm_eps": LAYER_NORM_EPS,
        "pad_token_id": 0,
        "tie_word_embeddings": True,
    }


def save_huggingface(
    model_or_run: keras.Model | str,
    output_dir: str,
    vocab_file: str | None = None,
    do_lower_case: bool | None = None,
) -> str:
    """Write a kbert pre-training model as a Hugging Face BERT folder that `transformers` loads.

    `BertForPreTraining.from_pretrained(output_dir)` gets every weight (encoder, pooler, MLM head,
    NSP head) and computes kbert's logits; `BertTokenizerFast.from_pretrained(output_dir)`
    tokenizes as kbert's data did. Written to a temporary sibling and renamed into place: an
    existing folder is replaced only by a complete one. Works under either Keras backend.

    Args:
        model_or_run: a kbert pre-training model, a run directory (its `model.keras`, else its
            newest weight checkpoint) or a `.keras` file.
        output_dir: the folder to write (any `tf.io.gfile` path; replaced if it exists).
        vocab_file: the vocab.txt the model was trained with; default the one a run directory
            keeps (or beside a `.keras` file).
        do_lower_case: whether the tokenizer lower-cases and strips accents. Default: what the
            run's training data recorded (`kbert_metadata.json`); required for a model object or
            a `.keras` file outside a run directory.

    Returns:
        `output_dir`.

    Raises:
        ValueError: the vocabulary does not fit the model, or `do_lower_case` is unknown.

    Examples:
    >>> import os, kbert
    >>> config = kbert.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1,
    ...                           num_attention_heads=2, intermediate_size=64)
    >>> model = kbert.build_pretraining_model(config, 16, 3)
    >>> words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(95)]
    >>> _ = open("vocab.txt", "w").write("\\n".join(words) + "\\n")
    >>> sorted(os.listdir(kbert.save_huggingface(model, "hf", "vocab.txt", do_lower_case=True)))
    ['config.json', 'model.safetensors', 'special_tokens_map.json', 'tokenizer_config.json',
     'vocab.txt']
    """
    from safetensors.numpy import save_file

    run_dir = None
    if isinstance(model_or_run, keras.Model):
        model = model_or_run
    else:
        source = os.fspath(model_or_run)
        kind, location = detect_source(source)
        if kind not in (KBERT_RUN, KERAS_MODEL):
            raise InputError(f"{source}: not a kbert run directory or .keras file (found a {kind})")
        run_dir = location if kind == KBERT_RUN else posixpath.dirname(location)
        # The weights do not depend on the sequence lengths: the smallest model holds them all.
        model = build_pretraining_model(read_source_config(location), 2, 1)
        load_kbert_model(model, location)
    vocab_file = resolve_vocab_file(vocab_file, model_or_run)
    tokens = read_vocab(vocab_file)
    vocab_size = encoder_of(model).vocabulary_size
    if len(tokens) != vocab_size:
        raise InputError(
            f"{vocab_file}: {len(tokens)} tokens, but the model's vocab_size is {vocab_size}"
        )
    if tokens[0] != PAD:
        raise InputError(f"{vocab_file}: token 0 is {tokens[0]!r}; kbert's padding id 0 is {PAD}")
    if do_lower_case is None:
        do_lower_case = _run_do_lower_case(run_dir, vocab_file)
    tensors = hf_tensors(model)

    special = {
        "unk_token": UNK,
        "sep_token": SEP,
        "pad_token": PAD,
        "cls_token": CLS,
        "mask_token": MASK,
    }
    tokenizer_config = {
        "tokenizer_class": "BertTokenizer",
        "do_lower_case": bool(do_lower_case),
        # None: strip accents exactly when lower-casing (Google's uncased / cased rule).
        "strip_accents": None,
        "tokenize_chinese_chars": True,
        "model_max_length": encoder_of(model).max_sequence_length,
        **special,
    }
    # transformers' loader reads local files: stage locally, then publish through tf.io.gfile.
    with tempfile.TemporaryDirectory() as staging:
        save_file(tensors, os.path.join(staging, WEIGHTS_FILE), metadata={"format": "pt"})
        for name, data in (
            (CONFIG_FILE, hf_config(model)),
            (TOKENIZER_CONFIG_FILE, tokenizer_config),
            (SPECIAL_TOKENS_MAP_FILE, special),
        ):
            with open(os.path.join(staging, name), "w", encoding="utf-8") as f:
                f.write(json.dumps(data, indent=2, sort_keys=True) + "\n")
        with open(os.path.join(staging, VOCAB_FILENAME), "w", encoding="utf-8") as f:
            f.write("".join(token + "\n" for token in tokens))
        publish_directory(staging, output_dir)
    logger.info("wrote Hugging Face BERT folder %s (%d tensors)", output_dir, len(tensors))
    return output_dir


def _run_do_lower_case(run_dir: str | None, vocab_file: str) -> bool:
    """`do_lower_case` of the data a run trained on (its metadata must name `vocab_file`)."""
    hint = "pass do_lower_case (kbert export --do_lower_case=true|false)"
    run_config = posixpath.join(run_dir, RUN_CONFIG_FILE) if run_dir else None
    if run_config is None or not exists(run_config):
        raise InputError(
            f"do_lower_case is unknown: no {RUN_CONFIG_FILE} to find the training data by; {hint}"
        )
    from kbert.records import match_files

    train_files = read_json(run_config, RUN_CONFIG_FILE).get("train_files")
    try:
        directories = sorted({posixpath.dirname(f) for f in match_files(train_files)})
    except (FileNotFoundError, ValueError) as e:
        raise InputError(f"{run_config}: its training data is not readable ({e}); {hint}") from None
    found = {}
    for directory in directories:
        meta = features.read_metadata(directory)
        if meta is not None:
            found[features.metadata_path(directory)] = meta
    if not found:
        raise InputError(
            f"{run_config}: its training data has no {features.METADATA_FILENAME}; {hint}"
        )
    cases = {meta.do_lower_case for meta in found.values()}
    if len(cases) > 1:
        raise InputError(f"{', '.join(found)}: disagree on do_lower_case; {hint}")
    digest = vocab_sha256(vocab_file)
    for path, meta in found.items():
        if meta.vocab_sha256 != digest:
            raise InputError(
                f"{vocab_file}: not the vocabulary of the run's data ({path} records vocab "
                f"sha256 {meta.vocab_sha256[:12]}..., this file has {digest[:12]}...)"
            )
    return cases.pop()
