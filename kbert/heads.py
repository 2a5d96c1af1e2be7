"""The MLM head: keras-hub's MaskedLMHead with its tied vocabulary projection done more cheaply;
the fine-tuning classifier: keras-hub's BertTextClassifier with kbert's trainer fixes."""

from __future__ import annotations

from typing import Any

import keras
import keras_hub
from keras import ops

from kbert.distribute import TrainerFixes


@keras.saving.register_keras_serializable(package="kbert")
class TiedMaskedLMHead(keras_hub.layers.MaskedLMHead):
    """keras-hub's `MaskedLMHead` (same weights, same logits) with a cheaper tied projection.

    The projection onto the embedding table is one 2-D matmul in the encoder's compute dtype:
    bf16 under mixed precision (the vocab projection is about a sixth of the step's FLOPs), with
    the logits returned in float32 for the losses. keras' `ReversibleEmbedding(reverse=True)`
    runs it in the head's dtype (float32) and, on TensorFlow, transposes the table's gradient.
    """

    def __init__(self, vocabulary_size: int | None = None, token_embedding=None, **kwargs: Any):
        if token_embedding is None:
            raise ValueError("TiedMaskedLMHead needs the encoder's `token_embedding` to tie to")
        super().__init__(vocabulary_size, token_embedding=token_embedding, **kwargs)

    def call(self, inputs: Any, mask_positions: Any) -> Any:
        x = ops.take_along_axis(inputs, ops.expand_dims(mask_positions, axis=-1), axis=1)
        x = self._intermediate_layer_norm(self._intermediate_dense(x))
        batch, predictions, hidden = ops.shape(x)
        projection_dtype = self.token_embedding.compute_dtype
        logits = project_onto_table(
            ops.cast(ops.reshape(x, (-1, hidden)), projection_dtype),
            ops.cast(self.token_embedding.embeddings, projection_dtype),
        )
        logits = ops.reshape(logits, (batch, predictions, -1))
        outputs = ops.cast(logits, self.compute_dtype) + self._bias
        return outputs if self.activation is None else self.activation(outputs)


# Written by hand: the gradient of keras' `matmul(x, transpose(table))` transposes the table's
# gradient back on TensorFlow; this one is computed in the table's own layout.
@ops.custom_gradient
def project_onto_table(x: Any, table: Any) -> Any:
    """`x @ tableᵀ` for `x` of shape (n, hidden) and `table` of shape (vocab, hidden)."""

    def grad(*args: Any, upstream: Any = None) -> tuple[Any, Any]:
        if upstream is None:
            (upstream,) = args
        with keras.name_scope("vocab_projection_gradient"):
            return ops.matmul(upstream, table), ops.matmul(ops.transpose(upstream), x)

    return ops.matmul(x, ops.transpose(table)), grad


@keras.saving.register_keras_serializable(package="kbert")
class TextClassifier(TrainerFixes, keras_hub.models.BertTextClassifier):
    """keras-hub's `BertTextClassifier` (same layers, same outputs) that also trains under
    MultiWorkerMirroredStrategy (`kbert.distribute.TrainerFixes`)."""
