"""The pre-training model: keras-hub's BertBackbone shared by an MLM head and an NSP head."""

from __future__ import annotations

import inspect
import re
import zipfile
from typing import Any

import keras
import keras_hub
from keras_hub.src.utils.keras_utils import gelu_approximate

from kbert import features
from kbert.config import BertConfig, resolve_config
from kbert.distribute import TrainerFixes
from kbert.errors import ModelFileError, SettingError
from kbert.heads import TiedMaskedLMHead
from kbert.io import check_positive_int, resolve_model_file
from kbert.losses import (
    WeightedSparseCrossEntropy,
    example_weights,
    global_weighted_mean,
    per_example_cross_entropy,
)

OUTPUTS = ("mlm", "nsp")
# keras-hub's BertBackbone initialises with a truncated normal of this stddev.
_BACKBONE_INITIALIZER_RANGE = 0.02


@keras.saving.register_keras_serializable(package="kbert")
class BertPretrainingModel(TrainerFixes, keras.Model):
    """The joint MLM + NSP pre-training model over one shared encoder (a functional Keras model).

    Built by `build_pretraining_model` (see there for inputs and outputs). Beyond any functional
    model: when compiled with kbert's losses (`compile_for_pretraining`), the logged `mlm_loss`,
    `nsp_loss` and `loss` are weighted means over every real prediction (and every real sequence)
    seen since the metrics were reset — Google's evaluation — instead of Keras' mean of per-batch
    means, which is wrong when batches hold different numbers of real predictions. `get_config`
    holds the BERT config and lengths, so `.keras` files reload with the embedding still tied.
    """

    def __init__(
        self,
        config: BertConfig | dict | str,
        max_seq_length: int,
        max_predictions_per_seq: int,
        **kwargs: Any,
    ):
        config = resolve_config(
            BertConfig.from_dict(config) if isinstance(config, dict) else config
        )
        inputs, outputs = _build_graph(config, max_seq_length, max_predictions_per_seq)
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)
        self.bert_config = config
        self.max_seq_length = max_seq_length
        self.max_predictions_per_seq = max_predictions_per_seq
        self._whole_set_loss_trackers = {
            name: keras.metrics.Mean(name=f"{name}_loss") for name in OUTPUTS
        }
        self._logged_loss_weights: dict[str, float] | None = None

    def get_config(self) -> dict[str, Any]:
        return {
            "config": self.bert_config.to_dict(),
            "max_seq_length": self.max_seq_length,
            "max_predictions_per_seq": self.max_predictions_per_seq,
            "name": self.name,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> BertPretrainingModel:
        return cls(**config)

    def compile(self, *args: Any, **kwargs: Any) -> None:
        bound = inspect.signature(keras.Model.compile).bind(self, *args, **kwargs).arguments
        super().compile(*args, **kwargs)
        loss, weights = bound.get("loss"), bound.get("loss_weights") or {}
        exact = isinstance(loss, dict) and all(
            isinstance(loss.get(name), WeightedSparseCrossEntropy) for name in OUTPUTS
        )
        self._logged_loss_weights = (
            {name: float(weights.get(name, 1.0)) for name in OUTPUTS} if exact else None
        )

    # Keras skips re-compiling a loaded model whose class overrides `compile`, unless it says how.
    def compile_from_config(self, config: dict[str, Any]) -> None:
        self.compile(**keras.saving.deserialize_keras_object(config))
        if self.built:
            self.optimizer.build(self.trainable_variables)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """Keras' weighted sum of the compiled losses; with kbert's losses, the per-example
        cross-entropy of each output is computed once and feeds both its loss and its whole-set
        loss tracker (the MLM softmax over the vocabulary is the costliest op after the encoder).
        """
        if self._logged_loss_weights is None:
            return super().compute_loss(x, y, y_pred, sample_weight, training=training)
        total = 0.0
        for name, tracker in self._whole_set_loss_trackers.items():
            ce = per_example_cross_entropy(y[name], y_pred[name])
            weights = example_weights(
                None if sample_weight is None else sample_weight.get(name), ce
            )
            tracker.update_state(ce, sample_weight=weights)
            total += self._logged_loss_weights[name] * global_weighted_mean(ce, weights)
        for loss in self.losses:
            total += self._aggregate_additional_loss(loss)
        return total

    def get_metrics_result(self):
        logs = super().get_metrics_result()
        if self._logged_loss_weights is not None:
            total = 0.0
            for name, tracker in self._whole_set_loss_trackers.items():
                logs[f"{name}_loss"] = tracker.result()
                total += self._logged_loss_weights[name] * logs[f"{name}_loss"]
            logs["loss"] = total
        return logs


def build_pretraining_model(
    config: BertConfig | str,
    max_seq_length: int,
    max_predictions_per_seq: int,
    name: str = "kbert_pretraining",
) -> BertPretrainingModel:
    """The joint MLM + NSP pre-training model over one shared encoder.

    Inputs (int32, Google's names): `input_ids`, `segment_ids`, `input_mask` [B, max_seq_length]
    and `masked_lm_positions` [B, max_predictions_per_seq]. Outputs: `{'mlm': [B, P, vocab],
    'nsp': [B, 2]}` float32 logits, also under a mixed-precision policy. NSP index 0 means
    "B follows A" (Google's label 0). The encoder is `model.get_layer('encoder')`, a keras-hub
    `BertBackbone`; the MLM head is keras-hub's `MaskedLMHead`, which gathers the masked positions
    before projecting onto the vocabulary through the token embedding (tied weights).

    Args:
        config: a `BertConfig`, a preset name (`tiny` … `large`) or a `bert_config.json` path.
        max_seq_length: L, tokens per sequence (<= config.max_position_embeddings).
        max_predictions_per_seq: P, masked positions per sequence.
        name: the model's name.

    Examples:
    >>> import kbert
    >>> config = kbert.BertConfig.from_preset("tiny", vocab_size=100)
    >>> model = kbert.build_pretraining_model(config, 16, 3)
    >>> sorted(model.output.keys())
    ['mlm', 'nsp']
    """
    return BertPretrainingModel(config, max_seq_length, max_predictions_per_seq, name=name)


def _build_graph(
    config: BertConfig, max_seq_length: int, max_predictions_per_seq: int
) -> tuple[dict[str, keras.KerasTensor], dict[str, keras.KerasTensor]]:
    """Inputs and outputs of the pre-training graph."""
    check_positive_int("max_seq_length", max_seq_length)
    check_positive_int("max_predictions_per_seq", max_predictions_per_seq)
    if max_seq_length > config.max_position_embeddings:
        raise SettingError(
            f"max_seq_length ({max_seq_length}) exceeds the config's max_position_embeddings "
            f"({config.max_position_embeddings})"
        )
    if max_predictions_per_seq > max_seq_length:
        raise SettingError(
            f"max_predictions_per_seq ({max_predictions_per_seq}) exceeds max_seq_length "
            f"({max_seq_length})"
        )
    initializer = keras.initializers.TruncatedNormal(stddev=config.initializer_range)

    inputs = {
        feature: keras.Input(shape=(max_seq_length,), dtype="int32", name=feature)
        for feature in (features.INPUT_IDS, features.SEGMENT_IDS, features.INPUT_MASK)
    }
    inputs[features.MASKED_LM_POSITIONS] = keras.Input(
        shape=(max_predictions_per_seq,), dtype="int32", name=features.MASKED_LM_POSITIONS
    )

    encoder = keras_hub.models.BertBackbone(
        vocabulary_size=config.vocab_size,
        num_layers=config.num_hidden_layers,
        num_heads=config.num_attention_heads,
        hidden_dim=config.hidden_size,
        intermediate_dim=config.intermediate_size,
        dropout=config.dropout,
        max_sequence_length=config.max_position_embeddings,
        num_segments=config.type_vocab_size,
        name="encoder",
    )
    if config.initializer_range != _BACKBONE_INITIALIZER_RANGE:
        _reinitialize(encoder, initializer)
    encoded = encoder(
        {
            "token_ids": inputs[features.INPUT_IDS],
            "segment_ids": inputs[features.SEGMENT_IDS],
            "padding_mask": inputs[features.INPUT_MASK],
        }
    )
    # The heads run in float32 under mixed precision (the losses need full-precision logits); the
    # MLM head's vocabulary projection runs in the encoder's compute dtype.
    mlm_head = TiedMaskedLMHead(
        token_embedding=encoder.token_embedding,
        intermediate_activation=gelu_approximate,
        kernel_initializer=initializer,
        layer_norm_epsilon=1e-12,
        dtype="float32",
        name="mlm_head",
    )
    mlm = mlm_head(encoded["sequence_output"], inputs[features.MASKED_LM_POSITIONS])
    mlm = keras.layers.Activation("linear", dtype="float32", name="mlm")(mlm)
    nsp = keras.layers.Dense(2, kernel_initializer=initializer, dtype="float32", name="nsp")(
        encoded["pooled_output"]
    )
    return inputs, {"mlm": mlm, "nsp": nsp}


def _reinitialize(encoder: keras.Model, initializer: keras.initializers.Initializer) -> None:
    """Redraw the encoder's kernels and embeddings with the config's initializer range."""
    for variable in encoder.weights:
        if variable.name in ("kernel", "embeddings"):
            variable.assign(initializer(variable.shape, dtype=variable.dtype))


def load_pretraining_model(
    path: str, action: str = "load", compile: bool = False
) -> BertPretrainingModel:
    """The kbert pre-training model saved in a run directory (its `model.keras`) or `.keras` file.

    Every loader of kbert goes through here, so the errors are the same.

    Args:
        path: a run directory or a `.keras` file (local, `gs://`, any file system gfile reads).
        action: what the model is for, named in the error when there is none ("export", ...).
        compile: restore the saved optimizer, losses and metrics (default: the model only).

    Raises:
        FileNotFoundError: no model at `path`.
        ValueError: the file is not a loadable `.keras` model, or not a kbert pre-training model.

    Examples:
    >>> model = build_pretraining_model(BertConfig.from_preset("tiny", vocab_size=32), 8, 2)
    >>> model.save("model.keras")
    >>> load_pretraining_model(".").max_seq_length
    8
    """
    model_file = resolve_model_file(path, action)
    try:
        model = keras.saving.load_model(model_file, compile=compile)
    # Keras says "File not found" for a file that exists but is not a .keras archive.
    except (ValueError, OSError, zipfile.BadZipFile) as e:
        raise ModelFileError(f"{model_file}: not a loadable .keras model ({e})") from None
    except TypeError as e:
        unknown = re.search(r"Could not locate \w+ '([^']+)'", str(e))
        if unknown is None:
            raise
        raise ModelFileError(
            f"{model_file}: holds {unknown.group(1)}, a class Keras cannot find (only Keras', "
            "keras-hub's and kbert's classes load; expected a model kbert saved)"
        ) from None
    if not isinstance(model, BertPretrainingModel):
        raise ModelFileError(
            f"{model_file}: not a kbert pre-training model ({type(model).__name__}); "
            "expected kbert.build_pretraining_model's model"
        )
    return model
