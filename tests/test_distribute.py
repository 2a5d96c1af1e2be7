"""Choosing the strategy: one device, Mirrored over given devices, and a fast clear TPU failure."""

import logging
import time

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
