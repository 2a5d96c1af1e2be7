"""The joint objective: MLM + NSP summed, one update, Google's MLM normalisation on any strategy.

Runs under both Keras backends (tests/test_jax_backend.py runs it under JAX).
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import (
    CALL_OPS,
    compiled_tiny,
    function_op_types,
    is_xla_call,
    random_batch,
    tiny_config,
)
from keras import ops

import kbert
from kbert.metrics import SparseMaxLogitAccuracy


def numpy_cross_entropy(labels, logits):
    logits = logits - logits.max(-1, keepdims=True)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    return -np.take_along_axis(log_probs, labels[..., None], axis=-1)[..., 0]


def reference_cross_entropy(labels, logits):
    """Cross-entropy written out in keras.ops (differentiable on either backend)."""
    log_probs = ops.log_softmax(logits, axis=-1)
    return -ops.take_along_axis(log_probs, ops.expand_dims(labels, -1), axis=-1)[..., 0]


def numpy_outputs(model, x):
    return {name: ops.convert_to_numpy(value) for name, value in model(x).items()}


def expected_losses(model, x, y, w):
    """Google's definitions computed in numpy from the model's logits."""
    out = numpy_outputs(model, x)
    mlm_ce = numpy_cross_entropy(y["mlm"], out["mlm"].astype("float64"))
    nsp_ce = numpy_cross_entropy(y["nsp"], out["nsp"].astype("float64"))
    mlm = (w["mlm"] * mlm_ce).sum() / w["mlm"].sum()
    nsp = (w["nsp"] * nsp_ce).sum() / w["nsp"].sum()
    return mlm, nsp


def gradients(model, x, loss_of_outputs):
    """∇ of `loss_of_outputs(model(x, training=True))` for every trainable weight, as numpy."""
    if keras.backend.backend() == "jax":
        import jax

        non_trainable = [v.value for v in model.non_trainable_variables]

        def loss(trainable):
            out, _ = model.stateless_call(trainable, non_trainable, x, training=True)
            return loss_of_outputs(out)

        grads = jax.grad(loss)([v.value for v in model.trainable_variables])
    else:
        with tf.GradientTape() as tape:
            total = loss_of_outputs(model(x, training=True))
        grads = tape.gradient(total, model.trainable_variables)
    return [
        np.zeros(v.shape, "float32") if g is None else ops.convert_to_numpy(g)
        for g, v in zip(grads, model.trainable_variables)
    ]


def test_total_loss_is_sum_of_mlm_and_nsp_in_the_logs():
    model = compiled_tiny()
    x, y, w = random_batch()
    logs = model.train_on_batch(x, y, sample_weight=w, return_dict=True)
    assert logs["loss"] == pytest.approx(logs["mlm_loss"] + logs["nsp_loss"], abs=1e-6)
    logs = model.evaluate(tf.data.Dataset.from_tensors((x, y, w)), return_dict=True, verbose=0)
    assert logs["loss"] == pytest.approx(logs["mlm_loss"] + logs["nsp_loss"], abs=1e-6)


def logits_with_loss(labels, num_classes, loss):
    """Logits whose softmax gives each label probability exp(-loss)."""
    p = np.exp(-loss)
    boost = np.log(p * (num_classes - 1) / (1 - p))
    logits = np.zeros(labels.shape + (num_classes,), "float32")
    np.put_along_axis(logits, labels[..., None], boost, axis=-1)
    return logits


def test_mlm_loss_1_8_and_nsp_loss_0_6_give_total_2_4():
    model = compiled_tiny()
    x, y, w = random_batch()
    mlm_logits = logits_with_loss(y["mlm"], 100, 1.8)
    # Padded predictions carry garbage logits: they must not count.
    mlm_logits[w["mlm"] == 0] = np.random.default_rng(1).normal(0, 9, (100,))
    y_pred = {
        "mlm": ops.convert_to_tensor(mlm_logits),
        "nsp": ops.convert_to_tensor(logits_with_loss(y["nsp"], 2, 0.6)),
    }
    total = model.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=w)
    assert float(total) == pytest.approx(2.4, abs=1e-5)


def joint_loss(y, w):
    def loss(out):
        mlm_ce = reference_cross_entropy(y["mlm"], out["mlm"])
        nsp_ce = reference_cross_entropy(y["nsp"], out["nsp"])
        return ops.sum(w["mlm"] * mlm_ce) / w["mlm"].sum() + ops.mean(nsp_ce)

    return loss


def test_one_step_moves_weights_by_minus_lr_times_gradient_of_the_sum():
    lr = 0.5
    model = compiled_tiny(keras.optimizers.SGD(lr))
    x, y, w = random_batch()
    before = [v.numpy() for v in model.trainable_variables]
    grads = gradients(model, x, joint_loss(y, w))

    model.train_on_batch(x, y, sample_weight=w)
    assert int(model.optimizer.iterations) == 1
    for v, b, g in zip(model.trainable_variables, before, grads):
        np.testing.assert_allclose(v.numpy(), b - lr * g, atol=1e-5, err_msg=v.path)

    model.train_on_batch(x, y, sample_weight=w)
    assert int(model.optimizer.iterations) == 2


def test_one_summed_update_differs_from_an_mlm_update_then_an_nsp_update():
    x, y, w = random_batch()
    joint = compiled_tiny(keras.optimizers.SGD(0.5))
    joint.train_on_batch(x, y, sample_weight=w)

    sequential = compiled_tiny(keras.optimizers.SGD(0.5))
    optimizer = keras.optimizers.SGD(0.5)
    for name in ("mlm", "nsp"):

        def loss(out, name=name):
            ce = reference_cross_entropy(y[name], out[name])
            return ops.sum(w[name] * ce) / w[name].sum()

        grads = gradients(sequential, x, loss)
        optimizer.apply_gradients(zip(grads, sequential.trainable_variables))
    differences = [
        np.abs(a.numpy() - b.numpy()).max()
        for a, b in zip(joint.trainable_variables, sequential.trainable_variables)
    ]
    assert max(differences) > 1e-4


def test_mlm_loss_is_weighted_sum_over_weight_sum_not_over_all_slots():
    model = compiled_tiny()
    x, y, w = random_batch()
    mlm, nsp = expected_losses(model, x, y, w)
    logs = model.test_on_batch(x, y, sample_weight=w, return_dict=True)
    assert logs["mlm_loss"] == pytest.approx(mlm, abs=1e-5)
    assert logs["nsp_loss"] == pytest.approx(nsp, abs=1e-5)
    # Keras' default reduction would divide by B * P: clearly different on this batch.
    keras_default = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(
        y["mlm"], model(x)["mlm"], sample_weight=w["mlm"]
    )
    assert abs(float(keras_default) - mlm) > 0.1


def test_mlm_accuracy_counts_only_real_predictions():
    model = compiled_tiny()
    x, y, w = random_batch()
    predicted = numpy_outputs(model, x)["mlm"].argmax(-1)
    # Make every padded slot "correct": it must still not count.
    y = dict(y, mlm=np.where(w["mlm"] > 0, y["mlm"], predicted).astype("int32"))
    y["mlm"][0, 0] = predicted[0, 0]  # one real prediction right
    expected = ((predicted == y["mlm"]) * w["mlm"]).sum() / w["mlm"].sum()
    logs = model.test_on_batch(x, y, sample_weight=w, return_dict=True)
    assert logs["mlm_accuracy"] == pytest.approx(expected, abs=1e-6)


def test_max_logit_accuracy_equals_keras_sparse_accuracy_with_weights():
    # Random logits have no exact ties, where the two would differ.
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 50, size=(4, 6))
    logits = rng.normal(size=(4, 6, 50)).astype("float32")
    logits[0, range(3), labels[0, :3]] += 10.0  # some predictions right, so neither side is 0
    weights = rng.integers(0, 2, size=(4, 6)).astype("float32")
    ours = SparseMaxLogitAccuracy()
    reference = keras.metrics.SparseCategoricalAccuracy()
    for metric in (ours, reference):
        metric.update_state(labels, logits, sample_weight=weights)
        metric.update_state(labels[:2], logits[:2])  # no weights: every label counts 1
    assert 0 < float(reference.result()) < 1
    assert float(ours.result()) == pytest.approx(float(reference.result()), abs=1e-7)


def unequal_halves_batch():
    """8 sequences whose halves hold different numbers of real predictions (10 and 4)."""
    x, y, w = random_batch(batch_size=8)
    # The first 4 sequences have 1-4 real predictions, the last 4 one each.
    w["mlm"][4:] = [1.0, 0.0, 0.0, 0.0]
    return x, y, w


def assert_same_as_one_device(build_distributed):
    """One `fit` step on the unequal-halves batch gives one device's losses and weights."""
    x, y, w = unequal_halves_batch()
    single = compiled_tiny(keras.optimizers.SGD(0.5))
    initial = [v.numpy() for v in single.weights]
    mlm, nsp = expected_losses(single, x, y, w)
    dataset = tf.data.Dataset.from_tensors((x, y, w))
    single_logs = single.fit(dataset, epochs=1, verbose=0).history

    distributed, distributed_logs = build_distributed(initial, dataset)

    for logs in (single_logs, distributed_logs):
        assert logs["mlm_loss"][0] == pytest.approx(mlm, abs=1e-5)
        assert logs["nsp_loss"][0] == pytest.approx(nsp, abs=1e-5)
        assert logs["loss"][0] == pytest.approx(mlm + nsp, abs=1e-5)
    # Same update, hence the same gradient of the global-batch loss.
    for a, b in zip(single.weights, distributed.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5, err_msg=a.path)


@pytest.mark.tensorflow_only
def test_loss_and_gradients_are_the_same_on_one_device_and_two_mirrored_replicas(two_cpus):
    def build_distributed(initial, dataset):
        strategy = tf.distribute.MirroredStrategy(two_cpus)
        with strategy.scope():
            mirrored = kbert.build_pretraining_model(tiny_config(), 16, 4)
            kbert.compile_for_pretraining(mirrored, keras.optimizers.SGD(0.5))
        for v, value in zip(mirrored.weights, initial):
            v.assign(value)
        return mirrored, mirrored.fit(dataset, epochs=1, verbose=0).history

    assert_same_as_one_device(build_distributed)


@pytest.mark.jax_only
def test_loss_and_weights_are_the_same_on_one_device_and_two_data_parallel_devices():
    from kbert.distribute import resolve_distribution

    def build_distributed(initial, dataset):
        placement = resolve_distribution("auto")
        assert placement.num_replicas == 2, "run with --xla_force_host_platform_device_count=2"
        with placement.scope():
            parallel = kbert.build_pretraining_model(tiny_config(), 16, 4)
            kbert.compile_for_pretraining(parallel, keras.optimizers.SGD(0.5))
            for v, value in zip(parallel.weights, initial):
                v.assign(value)
            logs = parallel.fit(dataset, epochs=1, verbose=0).history
        # The weights live on both devices (replicated), so the step ran on both halves.
        assert all(len(v.value.sharding.device_set) == 2 for v in parallel.trainable_variables)
        return parallel, logs

    assert_same_as_one_device(build_distributed)


@pytest.mark.tensorflow_only
def test_a_train_step_computes_one_softmax_cross_entropy_over_the_vocabulary_under_xla():
    vocab_size = 100
    model = compiled_tiny()
    x, y, w = random_batch(vocab_size=vocab_size)
    model.train_on_batch(x, y, sample_weight=w)
    # Traced as Keras traces it: the batch dimension unknown.
    specs = tf.nest.map_structure(lambda a: tf.TensorSpec((None, *a.shape[1:]), a.dtype), (x, y, w))
    graph = tf.function(model.train_step).get_concrete_function(specs).graph
    graph_def = graph.as_graph_def()
    softmaxes = ("SparseSoftmaxCrossEntropyWithLogits", "Softmax", "LogSoftmax")
    over_vocab, compiled = [], []
    for op in graph.get_operations():
        runs = function_op_types(graph_def, op.get_attr("f").name) if op.type in CALL_OPS else []
        if is_xla_call(op):
            compiled += runs
        if any(t.shape.rank and t.shape[-1] == vocab_size for t in op.inputs):
            runs = runs or [op.type]
            over_vocab += [(t, is_xla_call(op)) for t in runs if t in softmaxes]
    # The step itself is not XLA-compiled (kbert's CPU default); its vocabulary softmax is.
    assert not model.jit_compile
    assert over_vocab == [("SparseSoftmaxCrossEntropyWithLogits", True)]
    # XLA drops an Assert with a warning in the log at every compilation.
    assert "Assert" not in compiled


def test_evaluate_reports_whole_set_weighted_means_over_batches_of_unequal_predictions():
    model = compiled_tiny()
    batches = [random_batch(seed=s) for s in range(3)]
    # Batches with very different numbers of real predictions.
    batches[1][2]["mlm"][:] = 0.0
    batches[1][2]["mlm"][:, 0] = 1.0
    total = {"mlm": [0.0, 0.0], "nsp": [0.0, 0.0]}
    correct = 0.0
    for x, y, w in batches:
        out = numpy_outputs(model, x)
        for name in ("mlm", "nsp"):
            ce = numpy_cross_entropy(y[name], out[name].astype("float64"))
            total[name][0] += (w[name] * ce).sum()
            total[name][1] += w[name].sum()
        correct += ((out["mlm"].argmax(-1) == y["mlm"]) * w["mlm"]).sum()
    dataset = tf.data.Dataset.from_generator(
        lambda: iter(batches),
        output_signature=tf.nest.map_structure(
            lambda a: tf.TensorSpec(a.shape, a.dtype), batches[0]
        ),
    ).apply(tf.data.experimental.assert_cardinality(3))
    logs = model.evaluate(dataset, return_dict=True, verbose=0)
    mlm = total["mlm"][0] / total["mlm"][1]
    nsp = total["nsp"][0] / total["nsp"][1]
    assert logs["mlm_loss"] == pytest.approx(mlm, abs=1e-5)
    assert logs["nsp_loss"] == pytest.approx(nsp, abs=1e-5)
    assert logs["loss"] == pytest.approx(mlm + nsp, abs=1e-5)
    assert logs["mlm_accuracy"] == pytest.approx(correct / total["mlm"][1], abs=1e-6)


def test_the_loss_alone_is_the_weighted_mean_of_the_cross_entropies():
    labels = np.array([[3, 1], [0, 2]], "int32")
    logits = np.random.default_rng(0).normal(0, 2, (2, 2, 4)).astype("float32")
    weights = np.array([[1.0, 0.0], [1.0, 1.0]], "float32")
    ce = numpy_cross_entropy(labels, logits.astype("float64"))
    loss = kbert.WeightedSparseCrossEntropy()(labels, logits, sample_weight=weights)
    assert float(loss) == pytest.approx((ce * weights).sum() / 3, rel=1e-6)
    assert float(kbert.WeightedSparseCrossEntropy()(labels, logits)) == pytest.approx(ce.mean())
