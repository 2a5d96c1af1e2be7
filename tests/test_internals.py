"""The private Keras, keras-hub and TensorFlow internals kbert reaches into still exist.

setup.py bounds keras and keras-hub at the minor versions tested; when an upgrade moves one of
these, this test names it, where kbert uses it, and what to do.
"""

import functools
import importlib.metadata

import pytest
from helpers import tiny_config

pytestmark = pytest.mark.tf_compat


def _minor(distribution: str) -> str:
    return ".".join(importlib.metadata.version(distribution).split(".")[:2])


@functools.cache
def _model():
    import kbert

    return kbert.build_pretraining_model(
        tiny_config(), max_seq_length=16, max_predictions_per_seq=4
    )


def _transformer_layer():
    return _model().get_layer("encoder").transformer_layers[0]


def _keras_model():
    import keras

    return keras.Model


def _keras_hub_utils():
    from keras_hub.src.utils import keras_utils, preset_utils

    return {"keras_utils": keras_utils, "preset_utils": preset_utils}


def _keras_optimizer():
    import keras

    return keras.optimizers.Optimizer


def _model_checkpoint():
    import keras

    return keras.callbacks.ModelCheckpoint


def _keras_object_registration():
    from keras.src.saving import object_registration

    return object_registration


def _mirrored_strategy():
    import tensorflow as tf

    return tf.distribute.MirroredStrategy


# (what kbert relies on, its owner distribution, where kbert uses it and why, the object that
# holds it, the attribute path from that object)
INTERNALS = [
    (
        "keras.Model._maybe_symbolic_build",
        "keras",
        "kbert/distribute.py (TrainerFixes), to build from one local batch under "
        "MultiWorkerMirroredStrategy (keras#20585)",
        _keras_model,
        "_maybe_symbolic_build",
    ),
    (
        "keras.Model._aggregate_additional_loss",
        "keras",
        "kbert/model.py (compute_loss), to add the layers' own losses as Keras' compute_loss does",
        _keras_model,
        "_aggregate_additional_loss",
    ),
    *(
        (
            f"keras.optimizers.Optimizer.{name}",
            "keras",
            f"kbert/optimization.py and kbert/distribute.py (OptimizerFixes): {why}",
            _keras_optimizer,
            name,
        )
        for name, why in (
            ("_backend_apply_gradients", "the global gradient, and the update as one XLA call"),
            ("_all_reduce_sum_gradients", "no second sum of the summed gradient"),
            ("_apply_weight_decay", "the decay as a term of the update (Google's, LAMB's)"),
            ("_use_weight_decay", "the decay exclusions"),
        )
    ),
    (
        "keras.callbacks.ModelCheckpoint._save_model",
        "keras",
        "kbert/callbacks.py, to keep only the newest weight checkpoints",
        _model_checkpoint,
        "_save_model",
    ),
    (
        "keras_hub.src.utils.keras_utils.gelu_approximate",
        "keras-hub",
        "kbert/model.py, Google's tanh GELU in the MLM head",
        _keras_hub_utils,
        "keras_utils.gelu_approximate",
    ),
    *(
        (
            f"keras_hub.src.utils.preset_utils.{name}",
            "keras-hub",
            "kbert/checkpoints.py, to read keras-hub presets and Hugging Face folders",
            _keras_hub_utils,
            f"preset_utils.{name}",
        )
        for name in (
            "CONFIG_FILE",
            "TASK_CONFIG_FILE",
            "SAFETENSOR_FILE",
            "SAFETENSOR_CONFIG_FILE",
            "load_json",
            "check_file_exists",
            "get_file",
        )
    ),
    *(
        (
            f"keras_hub.layers.TransformerEncoder.{path}",
            "keras-hub",
            "kbert/checkpoints.py, to map Google's encoder variables onto BertBackbone's",
            _transformer_layer,
            path,
        )
        for path in (
            "_self_attention_layer.query_dense.kernel",
            "_self_attention_layer.key_dense.kernel",
            "_self_attention_layer.value_dense.kernel",
            "_self_attention_layer.output_dense.kernel",
            "_self_attention_layer_norm.gamma",
            "_feedforward_intermediate_dense.kernel",
            "_feedforward_output_dense.kernel",
            "_feedforward_layer_norm.gamma",
        )
    ),
    *(
        (
            f"keras_hub.layers.MaskedLMHead.{path}",
            "keras-hub",
            "kbert/heads.py (TiedMaskedLMHead.call) and kbert/checkpoints/, to map Google's and "
            "Hugging Face's MLM head onto kbert's",
            lambda: _model().get_layer("mlm_head"),
            path,
        )
        for path in ("_intermediate_dense.kernel", "_intermediate_layer_norm.gamma", "_bias")
    ),
    (
        "keras.src.saving.object_registration.GLOBAL_CUSTOM_OBJECTS",
        "keras",
        "kbert/saving.py (register_on_keras_import), to register kbert's classes on the first "
        "look-up of a kbert> name, so load_model works after `import kbert` alone",
        _keras_object_registration,
        "GLOBAL_CUSTOM_OBJECTS",
    ),
    (
        "tf.distribute.MirroredStrategy._collective_key_base",
        "tensorflow",
        "kbert/distribute.py, to give each MirroredStrategy its own collective keys",
        _mirrored_strategy,
        "_collective_key_base",
    ),
]


@pytest.mark.parametrize(
    "what, distribution, where, holder, path", INTERNALS, ids=[entry[0] for entry in INTERNALS]
)
def test_private_internal_still_exists(what, distribution, where, holder, path):
    try:
        target = holder()
    except (ImportError, AttributeError):
        target = None
    for part in path.split(".") if target is not None else ():
        target = target[part] if isinstance(target, dict) else getattr(target, part, None)
        if target is None:
            break
    minor = _minor(distribution)
    assert target is not None, (
        f"kbert relies on {what} (used in {where}); it moved in {distribution} {minor} — "
        f"update kbert or pin {distribution}<{minor}"
    )
