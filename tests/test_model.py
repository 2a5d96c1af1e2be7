"""The functional pre-training model: inputs, outputs, tied embedding, precision, XLA, saving.

Runs under both Keras backends (tests/test_jax_backend.py runs it under JAX).
"""

import keras
import keras_hub
import numpy as np
import pytest
from helpers import random_batch, tiny_config
from keras import ops

import kbert


@pytest.mark.tf_compat
def test_model_has_google_inputs_and_named_mlm_and_nsp_logits():
    model = kbert.build_pretraining_model(
        tiny_config(), max_seq_length=16, max_predictions_per_seq=4
    )
    assert {t.name for t in model.inputs} == {
        "input_ids",
        "segment_ids",
        "input_mask",
        "masked_lm_positions",
    }
    assert all(t.dtype == "int32" for t in model.inputs)
    x, _, _ = random_batch()
    out = model(x)
    assert set(out) == {"mlm", "nsp"}
    assert tuple(out["mlm"].shape) == (8, 4, 100)
    assert tuple(out["nsp"].shape) == (8, 2)


def test_encoder_is_a_keras_hub_bert_backbone():
    model = kbert.build_pretraining_model(tiny_config(), 16, 4)
    assert isinstance(model.get_layer("encoder"), keras_hub.models.BertBackbone)


def test_mlm_output_embedding_is_the_input_token_embedding():
    model = kbert.build_pretraining_model(tiny_config(), 16, 4)
    head = model.get_layer("mlm_head")
    table = model.get_layer("encoder").token_embedding.embeddings
    assert head.token_embedding.embeddings is table
    # One variable, counted once among the trainable weights.
    assert sum(w is table for w in model.trainable_weights) == 1
    # Changing the input table changes the MLM logits through the projection.
    x, _, _ = random_batch()
    before = ops.convert_to_numpy(model(x)["mlm"])
    table.assign(table.numpy() * 2.0)
    assert not np.allclose(before, ops.convert_to_numpy(model(x)["mlm"]))


def test_mlm_logits_depend_only_on_the_masked_positions():
    model = kbert.build_pretraining_model(tiny_config(), 16, 4)
    x, _, _ = random_batch()
    full = model.get_layer("encoder")(
        {
            "token_ids": x["input_ids"],
            "segment_ids": x["segment_ids"],
            "padding_mask": x["input_mask"],
        }
    )["sequence_output"]
    gathered = np.take_along_axis(
        ops.convert_to_numpy(full), x["masked_lm_positions"][..., None], axis=1
    )
    head = model.get_layer("mlm_head")
    positions = np.broadcast_to(np.arange(4), (8, 4)).astype("int32")
    expected = ops.convert_to_numpy(
        head(ops.convert_to_tensor(gathered), ops.convert_to_tensor(positions))
    )
    np.testing.assert_allclose(ops.convert_to_numpy(model(x)["mlm"]), expected, atol=1e-5)


def test_outputs_are_float32_under_bfloat16_policy():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = kbert.build_pretraining_model(tiny_config(), 16, 4)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    out = model(random_batch()[0])
    assert [keras.backend.standardize_dtype(out[k].dtype) for k in ("mlm", "nsp")] == [
        "float32",
        "float32",
    ]
    assert model.get_layer("encoder").compute_dtype == "bfloat16"


def _heads_on_one_table(vocab_size=50, hidden=16, predictions=3, seq=8):
    """kbert's TiedMaskedLMHead and keras-hub's MaskedLMHead, equal weights, each a small model."""
    table = keras.layers.ReversibleEmbedding(
        vocab_size, hidden, embeddings_initializer=keras.initializers.RandomNormal(seed=1)
    )
    table.build((None,))
    models = []
    for head_class in (kbert.TiedMaskedLMHead, keras_hub.layers.MaskedLMHead):
        head = head_class(
            vocab_size, token_embedding=table, intermediate_activation="gelu", dtype="float32"
        )
        sequence = keras.Input((seq, hidden))
        positions = keras.Input((predictions,), dtype="int32")
        models.append(keras.Model([sequence, positions], head(sequence, positions)))
    ours, theirs = models
    for mine, other in zip(ours.layers[-1].weights, theirs.layers[-1].weights):
        mine.assign(other.numpy() + np.random.default_rng(len(mine.path)).normal(size=mine.shape))
        other.assign(mine.numpy())
    rng = np.random.default_rng(0)
    inputs = [
        rng.normal(size=(4, seq, hidden)).astype("float32"),
        rng.integers(0, seq, (4, predictions)).astype("int32"),
    ]
    labels = rng.integers(0, vocab_size, (4, predictions)).astype("int32")
    return ours, theirs, table, inputs, labels


def test_tied_mlm_head_gives_keras_hub_logits_and_training_step():
    ours, theirs, table, inputs, labels = _heads_on_one_table()
    np.testing.assert_allclose(
        ops.convert_to_numpy(ours(inputs)),
        ops.convert_to_numpy(theirs(inputs)),
        rtol=1e-5,
        atol=1e-5,
    )
    # One SGD step from equal weights reaches equal weights: the gradients are the same,
    # the shared table's included.
    table_before = table.embeddings.numpy()
    after = []
    for model in (ours, theirs):
        table.embeddings.assign(table_before)
        model.compile(
            optimizer=keras.optimizers.SGD(1.0),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        model.train_on_batch(inputs, labels)
        after.append([table.embeddings.numpy()] + [w.numpy() for w in model.layers[-1].weights])
    assert not np.allclose(after[0][0], table_before)
    for mine, other in zip(*after):
        np.testing.assert_allclose(mine, other, rtol=1e-5, atol=1e-6)


def test_tied_mlm_head_needs_the_token_embedding():
    with pytest.raises(ValueError, match="token_embedding"):
        kbert.TiedMaskedLMHead(50)


@pytest.mark.tensorflow_only
def test_vocab_projection_runs_in_bfloat16_under_mixed_precision():
    import tensorflow as tf

    vocab_size = 100
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = kbert.build_pretraining_model(tiny_config(vocab_size), 16, 4)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    x, _, _ = random_batch(vocab_size=vocab_size)
    graph = tf.function(model.call).get_concrete_function(x).graph
    projections = [
        op
        for op in graph.get_operations()
        if op.type in ("MatMul", "BatchMatMulV2", "Einsum")
        and op.outputs[0].shape[-1] == vocab_size
    ]
    assert [op.outputs[0].dtype for op in projections] == [tf.bfloat16]
    logits = model(x)["mlm"]
    assert keras.backend.standardize_dtype(logits.dtype) == "float32"


@pytest.mark.parametrize(
    "args, message",
    [
        ((16, 0), "max_predictions_per_seq must be a positive integer"),
        ((128, 4), r"max_seq_length \(128\) exceeds the config's max_position_embeddings \(64\)"),
        ((8, 9), r"max_predictions_per_seq \(9\) exceeds max_seq_length \(8\)"),
    ],
)
def test_bad_lengths_are_clear_errors(args, message):
    with pytest.raises(ValueError, match=message):
        kbert.build_pretraining_model(tiny_config(), *args)


@pytest.mark.tf_compat
def test_xla_compiled_train_step_runs_on_cpu():
    model = kbert.build_pretraining_model(tiny_config(), 16, 4)
    kbert.compile_for_pretraining(model, keras.optimizers.SGD(0.1), jit_compile=True)
    assert model.jit_compile is True
    logs = model.train_on_batch(*random_batch(), return_dict=True)
    assert np.isfinite(logs["loss"])
    assert int(model.optimizer.iterations) == 1


def test_saved_keras_model_reloads_with_identical_outputs(tmp_path):
    model = kbert.build_pretraining_model(tiny_config(), 16, 4)
    kbert.compile_for_pretraining(model, kbert.create_optimizer(1e-3, 10, 2))
    x, y, w = random_batch()
    model.train_on_batch(x, y, sample_weight=w)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, kbert.BertPretrainingModel)
    for key in ("mlm", "nsp"):
        np.testing.assert_allclose(
            ops.convert_to_numpy(loaded(x)[key]), ops.convert_to_numpy(model(x)[key]), atol=1e-6
        )
    # The reloaded model keeps training with the same losses and exact logging.
    logs = loaded.test_on_batch(x, y, sample_weight=w, return_dict=True)
    assert logs["loss"] == pytest.approx(logs["mlm_loss"] + logs["nsp_loss"], abs=1e-6)
    expected = model.test_on_batch(x, y, sample_weight=w, return_dict=True)
    for name in ("mlm_accuracy", "nsp_accuracy"):
        assert logs[name] == pytest.approx(expected[name], abs=1e-6)
