"""Hugging Face's names and layouts of BERT's tensors, derived from Google's checkpoint layout
(`google_slots`, the one map of kbert's weights to BERT's names): read by `presets` (the heads of
an HF folder; keras-hub's converter reads the encoder) and written by `kbert.huggingface`.

HF's name is Google's with `/` → `.` (`layer_3` → `layer.3`, `kernel`/`gamma`/`output_weights` →
`weight`, `beta`/`output_bias` → `bias`; embedding tables get `.weight`), as transformers'
TF-checkpoint converter maps them. HF's Linear weights are Google's kernels transposed ([out, in]);
Google's NSP weight is [2, H] already.
"""

from __future__ import annotations

import re


def hf_name(google_name: str) -> str:
    """The Hugging Face tensor name of a variable of Google's BERT checkpoint layout.

    Args:
        google_name: e.g. `bert/encoder/layer_0/attention/self/query/kernel`.

    Examples:
    >>> hf_name("bert/encoder/layer_3/attention/output/LayerNorm/gamma")
    'bert.encoder.layer.3.attention.output.LayerNorm.weight'
    >>> hf_name("cls/predictions/output_bias"), hf_name("cls/seq_relationship/output_weights")
    ('cls.predictions.bias', 'cls.seq_relationship.weight')
    """
    name = re.sub(r"/layer_(\d+)/", r"/layer.\1/", google_name)
    name = re.sub(r"/(kernel|gamma|output_weights)$", "/weight", name)
    name = re.sub(r"/(beta|output_bias)$", "/bias", name)
    # Google's embedding tables are bare variables; HF's are nn.Embedding weights.
    if name.startswith("bert/embeddings/") and name.endswith("_embeddings"):
        name += "/weight"
    return name.replace("/", ".")


def hf_spellings(google_name: str) -> tuple[str, ...]:
    """HF's name of a Google variable, then the older spellings HF checkpoints may use for it.

    Args:
        google_name: a variable of Google's layout.

    Examples:
    >>> hf_spellings("cls/predictions/transform/LayerNorm/beta")
    ('cls.predictions.transform.LayerNorm.bias', 'cls.predictions.transform.LayerNorm.beta')
    >>> hf_spellings("cls/predictions/output_bias")
    ('cls.predictions.bias', 'cls.predictions.decoder.bias')
    """
    name = hf_name(google_name)
    if "LayerNorm" in google_name:  # checkpoints converted from TF1 keep gamma/beta
        return name, name[: name.rindex(".") + 1] + google_name.rsplit("/", 1)[-1]
    if google_name == "cls/predictions/output_bias":  # the bias may sit on the decoder
        return name, "cls.predictions.decoder.bias"
    return (name,)


def hf_is_transposed(google_name: str) -> bool:
    """Whether HF stores a Google variable transposed: every kernel (torch's Linear is [out, in]).

    Examples:
    >>> hf_is_transposed("bert/pooler/dense/kernel"), hf_is_transposed("bert/pooler/dense/bias")
    (True, False)
    """
    return google_name.endswith("/kernel")
