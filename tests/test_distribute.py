"""Choosing the strategy: one device, Mirrored over given devices, and a fast clear TPU failure."""

import logging
import time

import numpy as np
import pytest
import tensorflow as tf

from kbert.distribute import resolve_strategy


def test_cpu_is_the_default_one_device_strategy_and_says_so(caplog):
    with caplog.at_level(logging.INFO, logger="kbert.distribute"):
        strategy = resolve_strategy("cpu")
    assert strategy is tf.distribute.get_strategy()
    assert strategy.num_replicas_in_sync == 1
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "default" in lines[0] and "requested" in lines[0]


def test_auto_without_tpu_or_gpus_uses_one_device(caplog):
    with caplog.at_level(logging.INFO, logger="kbert.distribute"):
        strategy = resolve_strategy("auto")
    assert strategy.num_replicas_in_sync == 1
    assert "auto: no GPU or TPU visible" in caplog.records[-1].getMessage()


def test_mirrored_over_given_devices_has_one_replica_each(two_cpus, caplog):
    with caplog.at_level(logging.INFO, logger="kbert.distribute"):
        strategy = resolve_strategy("mirrored", devices=two_cpus)
    assert isinstance(strategy, tf.distribute.MirroredStrategy)
    assert strategy.num_replicas_in_sync == 2
    assert "MirroredStrategy over 2 replica(s)" in caplog.records[-1].getMessage()


def test_tpu_without_a_tpu_fails_fast_with_a_clear_message():
    start = time.monotonic()
    with pytest.raises(ValueError, match="no TPU is attached"):
        resolve_strategy("tpu")
    assert time.monotonic() - start < 30


def test_unknown_kind_and_misplaced_devices_are_named():
    with pytest.raises(ValueError, match="strategy must be one of"):
        resolve_strategy("gpu")
    with pytest.raises(ValueError, match="only used with strategy 'mirrored'"):
        resolve_strategy("cpu", devices=["/cpu:0"])


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
