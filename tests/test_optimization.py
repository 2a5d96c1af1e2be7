"""Google's optimiser recipe: AdamW with exclusions, warmup + linear decay, global-norm clipping."""

import keras
import numpy as np
import pytest
from helpers import compiled_tiny, function_op_types, is_xla_call, random_batch

import kbert
from kbert.optimization import (
    NO_DECAY_VARIABLE_NAMES,
    BertAdamW,
    WarmupLinearDecay,
    create_optimizer,
)


def test_layer_norm_gamma_and_bias_do_not_decay_but_a_kernel_does():
    model = kbert.build_pretraining_model(kbert.BertConfig.from_preset("tiny", vocab_size=50), 8, 2)
    optimizer = create_optimizer(0.1, num_train_steps=10, num_warmup_steps=0, weight_decay=0.5)
    gamma = model.get_layer("encoder").embeddings_layer_norm.gamma
    bias = model.get_layer("nsp").bias
    output_bias = model.get_layer("mlm_head").weights[0]
    kernel = model.get_layer("nsp").kernel
    bias.assign(np.ones(bias.shape))
    output_bias.assign(np.ones(output_bias.shape))
    watched = [gamma, bias, output_bias, kernel]
    before = [v.numpy() for v in watched]
    optimizer.apply_gradients([(np.zeros(v.shape, "float32"), v) for v in watched])
    for v, b in zip(watched[:3], before[:3]):
        np.testing.assert_array_equal(v.numpy(), b, err_msg=v.path)
    # Decoupled decay: kernel <- kernel * (1 - lr * weight_decay) with lr 0.1 at step 0.
    np.testing.assert_allclose(kernel.numpy(), before[3] * (1 - 0.1 * 0.5), rtol=1e-6)


def test_schedule_warms_up_linearly_then_decays_linearly_to_zero():
    schedule = WarmupLinearDecay(2e-4, total_steps=1000, warmup_steps=100)
    values = {s: float(schedule(s)) for s in (0, 50, 100, 550, 1000, 1200)}
    assert values[0] == 0.0
    assert values[50] == pytest.approx(1e-4)
    assert values[100] == pytest.approx(2e-4)
    assert values[550] == pytest.approx(1e-4)  # halfway through the decay
    assert values[1000] == 0.0 and values[1200] == 0.0


def test_schedule_round_trips_through_keras_serialization():
    schedule = WarmupLinearDecay(3e-4, total_steps=70, warmup_steps=7)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(schedule))
    assert [float(restored(s)) for s in (3, 7, 40)] == [float(schedule(s)) for s in (3, 7, 40)]


def adam_reference(grads, lr_at, beta_1=0.9, beta_2=0.999, epsilon=1e-6, clip=1.0):
    """Adam (no decay) on one variable starting at 0, with global-norm clipping, in numpy."""
    value = np.zeros_like(grads[0])
    m = np.zeros_like(value)
    v = np.zeros_like(value)
    for t, g in enumerate(grads, start=1):
        norm = np.sqrt((g**2).sum())
        g = g * min(1.0, clip / norm)
        m = beta_1 * m + (1 - beta_1) * g
        v = beta_2 * v + (1 - beta_2) * g**2
        alpha = lr_at(t - 1) * np.sqrt(1 - beta_2**t) / (1 - beta_1**t)
        value = value - alpha * m / (np.sqrt(v) + epsilon)
    return value


def test_gradients_are_clipped_to_global_norm_one():
    # A huge first gradient then a small one: Adam's second step depends on the first's size.
    grads = [np.array([300.0, -400.0], "float32"), np.array([0.3, 0.1], "float32")]
    optimizer = create_optimizer(0.01, num_train_steps=100, num_warmup_steps=0, weight_decay=0.0)
    variable = keras.Variable(np.zeros(2, "float32"), name="kernel")
    for g in grads:
        optimizer.apply_gradients([(g, variable)])

    def lr_at(step):
        return 0.01 * (100 - step) / 100

    np.testing.assert_allclose(variable.numpy(), adam_reference(grads, lr_at), rtol=1e-5)
    unclipped = adam_reference(grads, lr_at, clip=np.inf)
    assert not np.allclose(variable.numpy(), unclipped, rtol=1e-3)


def test_gradient_accumulation_updates_once_per_k_batches_on_the_per_update_schedule():
    optimizer = create_optimizer(
        0.01, num_train_steps=10, num_warmup_steps=0, gradient_accumulation_steps=2
    )
    variable = keras.Variable(np.zeros(2, "float32"), name="kernel")
    optimizer.apply_gradients([(np.ones(2, "float32"), variable)])
    np.testing.assert_array_equal(variable.numpy(), 0.0)
    optimizer.apply_gradients([(np.ones(2, "float32"), variable)])
    assert int(optimizer.iterations) == 1
    assert not np.allclose(variable.numpy(), 0.0)
    # The schedule counts updates, not batches: after 2 and after 3 batches (1 update) the decay
    # over 10 updates is at 9/10 of the peak; a schedule over 20 batches would be at 17/20 after 3.
    assert float(optimizer.learning_rate) == pytest.approx(0.009)
    optimizer.apply_gradients([(np.ones(2, "float32"), variable)])
    assert float(optimizer.learning_rate) == pytest.approx(0.009)


def test_bad_schedule_arguments_are_named():
    with pytest.raises(ValueError, match="warmup_steps"):
        create_optimizer(1e-4, num_train_steps=10, num_warmup_steps=11)
    with pytest.raises(ValueError, match="gradient_accumulation_steps"):
        create_optimizer(1e-4, 10, gradient_accumulation_steps=0)


def _train_tiny(optimizer, steps=4):
    """The tiny model trained `steps` batches with `optimizer`, and its weights as arrays."""
    model = compiled_tiny(optimizer)
    for seed in range(steps):
        x, y, w = random_batch(seed=seed)
        model.train_on_batch(x, y, sample_weight=w)
    return model, [keras.ops.convert_to_numpy(v) for v in model.weights]


def _adamw(cls, accumulation=None):
    """`cls` (kbert's or Keras' AdamW) with kbert's recipe: schedule, decay exclusions, clipping."""
    settings = dict(
        learning_rate=WarmupLinearDecay(0.01, 10, 2), weight_decay=0.1, global_clipnorm=0.5
    )
    optimizer = cls(**settings, gradient_accumulation_steps=accumulation)
    optimizer.exclude_from_weight_decay(var_names=NO_DECAY_VARIABLE_NAMES)
    return optimizer


@pytest.mark.parametrize("accumulation", [None, 2])
def test_kbert_adamw_trains_exactly_as_keras_adamw(accumulation):
    _, ours = _train_tiny(_adamw(BertAdamW, accumulation))
    _, keras_own = _train_tiny(_adamw(keras.optimizers.AdamW, accumulation))
    for mine, other in zip(ours, keras_own):
        np.testing.assert_allclose(mine, other, rtol=1e-5, atol=1e-6)
    assert isinstance(create_optimizer(1e-4, 10), BertAdamW)


@pytest.mark.tensorflow_only
def test_kbert_adamw_under_mirrored_strategy_trains_as_keras_adamw(two_cpus):
    import tensorflow as tf

    trained = []
    for cls in (BertAdamW, keras.optimizers.AdamW):
        with tf.distribute.MirroredStrategy(two_cpus).scope():
            trained.append(_train_tiny(_adamw(cls))[1])
    for mine, other in zip(*trained):
        np.testing.assert_allclose(mine, other, rtol=1e-5, atol=1e-6)


@pytest.mark.tensorflow_only
def test_kbert_adamw_update_is_one_xla_computation_in_a_non_xla_train_step():
    import tensorflow as tf

    model, _ = _train_tiny(create_optimizer(1e-3, 10), steps=1)
    assert not model.jit_compile
    graph = tf.function(model.train_step).get_concrete_function(random_batch()).graph
    graph_def = graph.as_graph_def()
    writes = [
        [t for t in function_op_types(graph_def, op.get_attr("f").name) if t.startswith("Assign")]
        for op in graph.get_operations()
        if is_xla_call(op)
    ]
    updates = [assigns for assigns in writes if assigns]
    # One compiled call writes every trainable variable and its two AdamW moments.
    assert len(updates) == 1
    assert len(updates[0]) >= 3 * len(model.trainable_variables)
