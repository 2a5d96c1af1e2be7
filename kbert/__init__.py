"""kbert: pre-train BERT encoders with the joint MLM + NSP objective in Keras 3.

Keras' TensorFlow backend is the default; `KERAS_BACKEND=jax`, set before kbert or Keras is
imported, selects the JAX backend (the TPU route). The public API is imported lazily, so
`import kbert` (and `kbert --help`) does not start TensorFlow until something that needs it is used;
it does make kbert's Keras classes known to `keras.saving.load_model` whenever Keras is imported
(`kbert.saving`), so the `.keras` files kbert writes load in a fresh process.

Direction between the packages: `tfrecords_tools` (the record writer) depends on kbert, never the
reverse. It may import kbert's shared definitions of the data on disk: `kbert.features` (the
record format), `kbert.records` (finding and checking shards), `kbert.vocabulary` (the vocab.txt
rules), `kbert.io` (atomic writes) and `kbert.errors`; no kbert module below `kbert.cli` imports
`tfrecords_tools`.
"""

import importlib
import os

from kbert import saving as _saving

# TensorFlow leaves oneDNN off on AMD CPUs; on this class of machine it roughly doubles fp32
# matmul throughput. Set TF_ENABLE_ONEDNN_OPTS=0 before importing kbert to keep it off.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
# TensorFlow unless the user chose a backend (KERAS_BACKEND=jax wins); Keras reads it on import.
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

__version__ = "0.1.0"

_saving.register_on_keras_import()

_EXPORTS = {
    "BertConfig": "kbert.config",
    "build_pretraining_model": "kbert.model",
    "BertPretrainingModel": "kbert.model",
    "TiedMaskedLMHead": "kbert.heads",
    "compile_for_pretraining": "kbert.losses",
    "WeightedSparseCrossEntropy": "kbert.losses",
    "create_optimizer": "kbert.optimization",
    "WarmupPolynomialDecay": "kbert.optimization",
    "AdamWeightDecay": "kbert.optimization",
    "Lamb": "kbert.optimization",
    "pretraining_dataset": "kbert.data",
    "describe": "kbert.data",
    "name_damaged_shards": "kbert.data",
    "resolve_strategy": "kbert.distribute",
    "resolve_distribution": "kbert.distribute",
    "pretrain": "kbert.train",
    "PretrainConfig": "kbert.pretrain_config",
    "evaluate": "kbert.evaluation",
    "export_for_serving": "kbert.export",
    "load_google_checkpoint": "kbert.checkpoints",
    "save_google_checkpoint": "kbert.checkpoints",
    "init_encoder": "kbert.checkpoints",
    "save_encoder_preset": "kbert.checkpoints",
    "init_from": "kbert.checkpoints",
    "load_model": "kbert.saving",
    "custom_objects": "kbert.saving",
    "save_huggingface": "kbert.huggingface",
    "finetune": "kbert.finetuning",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name):
    if name in _EXPORTS:
        from kbert.versions import check_installed_versions

        check_installed_versions()  # a clear error here, not a failed op load inside TensorFlow
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'kbert' has no attribute {name!r}")


def __dir__():
    return __all__
