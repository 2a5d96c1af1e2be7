"""Choosing where to train: one device, Mirrored over given devices, JAX data parallel, and fast
clear failures (no TPU, a TensorFlow strategy under JAX, a batch that does not split).

Runs under both Keras backends (tests/test_jax_backend.py runs it under JAX).
"""

import logging
import time

import numpy as np
import pytest
import tensorflow as tf

from kbert.distribute import resolve_distribution, resolve_strategy


@pytest.mark.tensorflow_only
def test_cpu_is_the_default_one_device_strategy_and_says_so(caplog):
    with caplog.at_level(logging.INFO, logger="kbert.distribute"):
        strategy = resolve_strategy("cpu")
    assert strategy is tf.distribute.get_strategy()
    assert strategy.num_replicas_in_sync == 1
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "default" in lines[0] and "requested" in lines[0]


@pytest.mark.tensorflow_only
def test_auto_without_tpu_or_gpus_uses_one_device(caplog):
    with caplog.at_level(logging.INFO, logger="kbert.distribute"):
        strategy = resolve_strategy("auto")
    assert strategy.num_replicas_in_sync == 1
    assert "auto: no GPU or TPU visible" in caplog.records[-1].getMessage()


@pytest.mark.tensorflow_only
def test_mirrored_over_given_devices_has_one_replica_each(two_cpus, caplog):
    with caplog.at_level(logging.INFO, logger="kbert.distribute"):
        strategy = resolve_strategy("mirrored", devices=two_cpus)
    assert isinstance(strategy, tf.distribute.MirroredStrategy)
    assert strategy.num_replicas_in_sync == 2
    assert "MirroredStrategy over 2 replica(s)" in caplog.records[-1].getMessage()


@pytest.mark.tensorflow_only
def test_tpu_without_a_tpu_fails_fast_with_a_clear_message():
    start = time.monotonic()
    with pytest.raises(ValueError, match="no TPU is attached"):
        resolve_strategy("tpu")
    assert time.monotonic() - start < 30


@pytest.mark.tensorflow_only
def test_unknown_kind_and_misplaced_devices_are_named():
    with pytest.raises(ValueError, match="strategy must be one of"):
        resolve_strategy("gpu")
    with pytest.raises(ValueError, match="only used with strategy 'mirrored'"):
        resolve_strategy("cpu", devices=["/cpu:0"])


@pytest.mark.tensorflow_only
def test_a_second_mirrored_strategy_in_the_same_process_trains_after_the_first_evaluated(two_cpus):
    # Without fresh collective keys per strategy, the second strategy's all-reduces reuse the
    # first's instance keys and TensorFlow aborts with "Shape mismatch in the collective instance".
    import keras
    from helpers import random_batch, tiny_config

    import kbert

    data = tf.data.Dataset.from_tensors(random_batch(batch_size=4)).repeat(2)
    results = []
    for step in ("evaluate", "fit"):
        strategy = kbert.resolve_strategy("mirrored", devices=two_cpus)
        with strategy.scope():
            model = kbert.build_pretraining_model(tiny_config(), 16, 4)
            kbert.compile_for_pretraining(model, keras.optimizers.SGD(0.01))
        if step == "evaluate":
            results.append(model.evaluate(data, verbose=0, return_dict=True)["loss"])
        else:
            results.append(model.fit(data, epochs=1, verbose=0).history["loss"][0])
    assert all(np.isfinite(results))


def recording_dataset_fn(contexts):
    """A dataset function that records its input context and batches per replica."""

    def dataset_fn(context):
        contexts.append(context)
        batch = context.get_per_replica_batch_size(8)
        return tf.data.Dataset.range(64).batch(batch, drop_remainder=True)

    return dataset_fn


@pytest.mark.tensorflow_only
def test_tensorflow_placement_wraps_the_strategy_and_its_input_distribution(two_cpus):
    placement = resolve_distribution("mirrored", devices=two_cpus)
    assert isinstance(placement.strategy, tf.distribute.MirroredStrategy)
    assert (placement.backend, placement.num_replicas, placement.is_chief) == (
        "tensorflow",
        2,
        True,
    )
    contexts = []
    dataset = placement.distribute_dataset(recording_dataset_fn(contexts), global_batch_size=8)
    assert isinstance(dataset, tf.distribute.DistributedDataset)
    assert contexts[0].get_per_replica_batch_size(8) == 4


@pytest.mark.tensorflow_only
def test_a_global_batch_that_does_not_split_across_the_replicas_is_a_clear_error(two_cpus):
    placement = resolve_distribution("mirrored", devices=two_cpus)
    with pytest.raises(
        ValueError, match=r"global batch size \(7\) must be a multiple .* \(2: Mirr"
    ):
        placement.distribute_dataset(recording_dataset_fn([]), global_batch_size=7)


@pytest.mark.jax_only
def test_jax_auto_is_data_parallel_over_every_device_and_says_so(caplog):
    import jax
    import keras

    with caplog.at_level(logging.INFO, logger="kbert.distribute"):
        placement = resolve_distribution("auto")
    assert len(jax.devices()) == 2, "run with XLA_FLAGS=--xla_force_host_platform_device_count=2"
    assert isinstance(placement.distribution, keras.distribution.DataParallel)
    assert placement.distribution.device_mesh.devices.size == 2
    assert (placement.backend, placement.num_replicas, placement.strategy) == ("jax", 2, None)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "distribution: DataParallel over 2 devices (cpu:0, cpu:1) — "
        "auto: 2 CPU device(s) visible to JAX"
    ]
    with placement.scope():
        assert keras.distribution.distribution() is placement.distribution
    assert keras.distribution.distribution() is None


@pytest.mark.jax_only
def test_jax_cpu_is_one_device_without_a_distribution(caplog):
    import jax
    import keras

    with caplog.at_level(logging.INFO, logger="kbert.distribute"):
        placement = resolve_distribution("cpu")
    assert (placement.num_replicas, placement.distribution) == (1, None)
    assert "one device (cpu:0) — requested" in caplog.records[-1].getMessage()
    with placement.scope():
        variable = keras.Variable(np.zeros(3, "float32"))
    assert variable.value.devices() == {jax.devices("cpu")[0]}


@pytest.mark.jax_only
def test_jax_input_is_one_pipeline_of_global_batches_on_one_host():
    placement = resolve_distribution("auto")
    contexts = []
    dataset = placement.distribute_dataset(recording_dataset_fn(contexts), global_batch_size=8)
    assert isinstance(dataset, tf.data.Dataset)
    assert next(iter(dataset)).shape == (8,)
    assert (contexts[0].num_input_pipelines, contexts[0].input_pipeline_id) == (1, 0)
    with pytest.raises(
        ValueError, match=r"global batch size \(7\) must be a multiple .* \(2: Data"
    ):
        placement.distribute_dataset(recording_dataset_fn([]), global_batch_size=7)


@pytest.mark.jax_only
def test_jax_tpu_without_a_tpu_fails_fast_with_a_clear_message():
    start = time.monotonic()
    with pytest.raises(ValueError, match="JAX sees no TPU"):
        resolve_distribution("tpu")
    assert time.monotonic() - start < 30


@pytest.mark.jax_only
@pytest.mark.parametrize("kind", ["mirrored", "multi_worker"])
def test_tensorflow_strategies_under_jax_are_named_errors_saying_what_to_use(kind):
    with pytest.raises(ValueError, match=f"{kind!r} is a TensorFlow strategy; .* use 'auto'"):
        resolve_distribution(kind)
    with pytest.raises(ValueError, match="strategy must be one of auto, cpu, tpu"):
        resolve_distribution("gpu")
