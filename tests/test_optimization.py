"""The update: kbert's optimisers against the published algorithms, written here in numpy.

`google_bert_reference` is google-research/bert's `optimization.py` (`create_optimizer` +
`AdamWeightDecayOptimizer`) on TF1 variable names; `lamb_reference` is You et al. 2019's
Algorithm 2 with NVIDIA's exclusions. Both run on the tiny pre-training model's variables under
their Google names (kbert's checkpoint map), so the decay exclusions are checked by name too.
"""

import re

import keras
import numpy as np
import pytest
from helpers import compiled_tiny, function_op_types, is_xla_call, random_batch, tiny_config

import kbert
from kbert.checkpoints.google import google_slots
from kbert.optimization import (
    AdamWeightDecay,
    BiasCorrectedAdamW,
    Lamb,
    WarmupPolynomialDecay,
    create_optimizer,
)

# google-research/bert optimization.py: its AdamWeightDecayOptimizer(exclude_from_weight_decay=...)
GOOGLE_NO_DECAY = ["LayerNorm", "layer_norm", "bias"]
UPDATES, WARMUP, TOTAL, PEAK = 12, 3, 20, 0.01


def google_learning_rate(t, peak=PEAK, warmup=WARMUP, total=TOTAL):
    """`create_optimizer`'s rate at global step t: polynomial_decay(power 1) unless warming up."""
    if warmup and t < warmup:
        return peak * t / warmup
    return peak * (1 - min(t, total) / total)


def google_decays(name):
    return not any(re.search(pattern, name) for pattern in GOOGLE_NO_DECAY)


def clip_by_global_norm(grads, clip):
    norm = np.sqrt(sum((g**2).sum() for g in grads.values()))
    return {k: g * clip / max(norm, clip) for k, g in grads.items()}, norm


def google_bert_reference(params, steps, clip=1.0, decay=0.01, b1=0.9, b2=0.999, eps=1e-6):
    """google-research/bert's update, float64: clip, then Adam without bias correction, decay."""
    params = {k: v.astype("float64") for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in params.items()}
    v = {k: np.zeros_like(p) for k, p in params.items()}
    for t, grads in enumerate(steps):
        grads, _ = clip_by_global_norm(grads, clip)
        for name, g in grads.items():
            m[name] = b1 * m[name] + (1 - b1) * g
            v[name] = b2 * v[name] + (1 - b2) * g**2
            update = m[name] / (np.sqrt(v[name]) + eps)
            if google_decays(name):
                update += decay * params[name]
            params[name] = params[name] - google_learning_rate(t) * update
    return params


def lamb_reference(params, steps, clip=1.0, decay=0.01, b1=0.9, b2=0.999, eps=1e-6):
    """LAMB (You et al. 2019, Algorithm 2), float64; LayerNorm and biases take neither decay nor
    trust ratio (NVIDIA's BERT)."""
    params = {k: v.astype("float64") for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in params.items()}
    v = {k: np.zeros_like(p) for k, p in params.items()}
    for t, grads in enumerate(steps):
        grads, _ = clip_by_global_norm(grads, clip)
        for name, g in grads.items():
            m[name] = b1 * m[name] + (1 - b1) * g
            v[name] = b2 * v[name] + (1 - b2) * g**2
            m_hat, v_hat = m[name] / (1 - b1 ** (t + 1)), v[name] / (1 - b2 ** (t + 1))
            r = m_hat / (np.sqrt(v_hat) + eps)
            ratio = 1.0
            if google_decays(name):
                r = r + decay * params[name]
                w_norm, r_norm = np.linalg.norm(params[name]), np.linalg.norm(r)
                ratio = w_norm / r_norm if w_norm > 0 and r_norm > 0 else 1.0
            params[name] = params[name] - google_learning_rate(t) * ratio * r
    return params


@pytest.fixture(scope="module")
def tiny_model_variables():
    """The tiny pre-training model's variables by Google name, and seeded gradients for
    UPDATES steps whose global norm alternates above and below 1 (clipping on and off)."""
    keras.utils.set_random_seed(0)
    model = kbert.build_pretraining_model(tiny_config(), 16, 4)
    slots = {slot.name: slot.variable for slot in google_slots(model)}
    assert {id(v) for v in slots.values()} == {id(v) for v in model.trainable_variables}
    rng = np.random.default_rng(0)
    steps = []
    for t in range(UPDATES):
        grads = {k: rng.normal(size=v.shape).astype("float32") for k, v in slots.items()}
        norm = np.sqrt(sum((g**2).sum() for g in grads.values()))
        target = 3.0 if t % 3 == 1 else 0.3  # clipped at steps 1, 4, 7, 10
        steps.append({k: g * np.float32(target / norm) for k, g in grads.items()})
    return slots, steps


def train_on(optimizer, slots, steps):
    """Apply `steps` to fresh copies of the variables; the final values and the rate used at
    each step."""
    variables = {
        k: keras.Variable(keras.ops.convert_to_numpy(v), name=v.name) for k, v in slots.items()
    }
    initial = {k: keras.ops.convert_to_numpy(v) for k, v in variables.items()}
    rates = []
    for grads in steps:
        rates.append(float(optimizer.learning_rate))
        optimizer.apply_gradients([(grads[k], variables[k]) for k in variables])
    return initial, {k: keras.ops.convert_to_numpy(v) for k, v in variables.items()}, rates


def assert_close_to(reference, trained, initial, rtol=1e-6):
    """Each variable within `rtol` of the reference's, relative to its largest entry (float32's
    rounding: entries near 0 carry their neighbours' absolute error), and every change within
    1e-4 of the largest reference change (a wrong step cannot hide in the weights' size)."""
    largest = max(np.abs(reference[k] - initial[k]).max() for k in reference)
    assert largest > 1e-3
    for name in reference:
        error = np.abs(trained[name] - reference[name]).max()
        assert error <= rtol * np.abs(reference[name]).max(), (name, error)
        assert error <= 1e-4 * largest, (name, error)


def test_default_optimizer_is_google_bert_number_for_number(tiny_model_variables):
    slots, steps = tiny_model_variables
    optimizer = create_optimizer(PEAK, num_train_steps=TOTAL, num_warmup_steps=WARMUP)
    assert isinstance(optimizer, AdamWeightDecay)
    initial, trained, rates = train_on(optimizer, slots, steps)
    np.testing.assert_allclose(rates, [google_learning_rate(t) for t in range(UPDATES)], rtol=1e-6)
    assert_close_to(google_bert_reference(initial, steps), trained, initial)


def test_keras_bias_corrected_adamw_is_not_google_bert(tiny_model_variables):
    slots, steps = tiny_model_variables
    optimizer = create_optimizer(PEAK, TOTAL, WARMUP, optimizer="adamw_bias_corrected")
    assert isinstance(optimizer, BiasCorrectedAdamW)
    initial, trained, _ = train_on(optimizer, slots, steps)
    with pytest.raises(AssertionError):
        assert_close_to(google_bert_reference(initial, steps), trained, initial)


def test_lamb_is_the_papers_algorithm_with_nvidias_exclusions(tiny_model_variables):
    slots, steps = tiny_model_variables
    optimizer = create_optimizer(PEAK, TOTAL, WARMUP, optimizer="lamb")
    assert isinstance(optimizer, Lamb)
    initial, trained, _ = train_on(optimizer, slots, steps)
    assert_close_to(lamb_reference(initial, steps), trained, initial)
    # The trust ratio is at work: Adam's own step (ratio 1) ends elsewhere.
    with pytest.raises(AssertionError):
        assert_close_to(google_bert_reference(initial, steps), trained, initial, rtol=1e-3)


@pytest.mark.parametrize("name", ["adamw", "lamb", "adamw_bias_corrected"])
def test_decay_exclusions_are_googles_name_patterns(tiny_model_variables, name):
    slots, _ = tiny_model_variables
    optimizer = create_optimizer(PEAK, TOTAL, WARMUP, optimizer=name)
    decided = {k: optimizer._use_weight_decay(v) for k, v in slots.items()}
    assert decided == {k: google_decays(k) for k in slots}
    assert 0 < sum(decided.values()) < len(decided)


def test_schedule_is_googles_warmup_then_polynomial_decay_over_all_steps():
    schedule = WarmupPolynomialDecay(2e-4, total_steps=1000, warmup_steps=100)
    for t in (0, 50, 99, 100, 101, 550, 999, 1000, 1200):
        assert float(schedule(t)) == pytest.approx(
            google_learning_rate(t, 2e-4, 100, 1000), rel=1e-6, abs=1e-12
        ), t
    root = WarmupPolynomialDecay(1.0, total_steps=100, power=0.5, end_learning_rate=0.1)
    assert float(root(75)) == pytest.approx(0.9 * 0.25**0.5 + 0.1)


@pytest.mark.parametrize("name", ["adamw", "lamb", "adamw_bias_corrected"])
def test_optimizer_round_trips_through_keras_serialization(tiny_model_variables, name):
    slots, steps = tiny_model_variables
    optimizer = create_optimizer(PEAK, TOTAL, WARMUP, optimizer=name, weight_decay=0.3)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(optimizer))
    assert type(restored) is type(optimizer)
    assert restored.get_config() == optimizer.get_config()
    # The exclusions are part of the config: after the round trip, they still apply.
    _, ours, _ = train_on(optimizer, slots, steps[:3])
    _, theirs, _ = train_on(restored, slots, steps[:3])
    for k in ours:
        np.testing.assert_array_equal(ours[k], theirs[k], err_msg=k)


def test_gradient_accumulation_updates_once_per_k_batches_on_the_per_update_schedule():
    optimizer = create_optimizer(
        0.01, num_train_steps=10, num_warmup_steps=0, gradient_accumulation_steps=2
    )
    variable = keras.Variable(np.zeros(2, "float32"), name="kernel")
    optimizer.apply_gradients([(np.ones(2, "float32"), variable)])
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(variable), 0.0)
    optimizer.apply_gradients([(np.ones(2, "float32"), variable)])
    assert int(optimizer.iterations) == 1
    assert not np.allclose(keras.ops.convert_to_numpy(variable), 0.0)
    # The schedule counts updates, not batches: after 2 and after 3 batches (1 update) the decay
    # over 10 updates is at 9/10 of the peak; a schedule over 20 batches would be at 17/20 after 3.
    assert float(optimizer.learning_rate) == pytest.approx(0.009)
    optimizer.apply_gradients([(np.ones(2, "float32"), variable)])
    assert float(optimizer.learning_rate) == pytest.approx(0.009)


def test_accumulated_update_is_googles_update_of_the_mean_gradient(tiny_model_variables):
    slots, steps = tiny_model_variables
    optimizer = create_optimizer(PEAK, TOTAL, WARMUP, gradient_accumulation_steps=2)
    halves = []
    for grads in steps[:6]:  # each update's gradient as two batches' whose mean it is
        noise = {k: np.float32(0.5) * g[::-1].copy() for k, g in grads.items()}
        halves += [
            {k: g + noise[k] for k, g in grads.items()},
            {k: g - noise[k] for k, g in grads.items()},
        ]
    initial, trained, _ = train_on(optimizer, slots, halves)
    assert_close_to(google_bert_reference(initial, steps[:6]), trained, initial)


def test_bad_optimizer_arguments_are_named():
    with pytest.raises(ValueError, match="warmup_steps"):
        create_optimizer(1e-4, num_train_steps=10, num_warmup_steps=11)
    with pytest.raises(ValueError, match="gradient_accumulation_steps"):
        create_optimizer(1e-4, 10, gradient_accumulation_steps=0)
    with pytest.raises(ValueError, match="optimizer must be one of adamw, lamb"):
        create_optimizer(1e-4, 10, optimizer="adam")


@pytest.mark.tensorflow_only
def test_kbert_adamw_update_is_one_xla_computation_in_a_non_xla_train_step():
    import tensorflow as tf

    model = compiled_tiny(create_optimizer(1e-3, 10))
    model.train_on_batch(*random_batch()[:2], sample_weight=random_batch()[2])
    assert not model.jit_compile
    graph = tf.function(model.train_step).get_concrete_function(random_batch()).graph
    graph_def = graph.as_graph_def()
    writes = [
        [t for t in function_op_types(graph_def, op.get_attr("f").name) if t.startswith("Assign")]
        for op in graph.get_operations()
        if is_xla_call(op)
    ]
    updates = [assigns for assigns in writes if assigns]
    # One compiled call writes every trainable variable and its two Adam moments.
    assert len(updates) == 1
    assert len(updates[0]) >= 3 * len(model.trainable_variables)
