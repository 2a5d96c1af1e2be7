"""One update on every placement: with clipping active and gradient accumulation, AdamW and LAMB
end with the same weights on one device, a 2-replica MirroredStrategy, two MultiWorkerMirrored
processes on 127.0.0.1 and JAX data parallel over 2 devices (a subprocess). Each subprocess trains
both optimizers' runs, from `kbert train`'s flags (a process start costs more than a run).

The clip norm is far below the tiny model's gradient norm, so every update is clipped: clipping
each replica's partial gradient (Keras' own order under a strategy) would end elsewhere.
"""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import (
    JAX_ENV,
    joint_worker_batches,
    run_cluster,
    tiny_config,
    write_pretraining_records,
)

import kbert
from kbert.distribute import resolve_strategy
from kbert.optimization import create_optimizer
from kbert.train import pretrain

pytestmark = pytest.mark.tensorflow_only

UPDATES, ACCUMULATION, GLOBAL_BATCH, CLIP, LEARNING_RATE, SEED = 5, 2, 8, 0.05, 0.01, 3
SEQ_LEN, PREDICTIONS = 16, 3
TIMEOUT_SECONDS = 300


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """Records, the tiny config (dropout 0) and one initial model every run starts from."""
    root = tmp_path_factory.mktemp("placements")
    data = write_pretraining_records(str(root / "data"), seq_len=SEQ_LEN)
    config_file = str(root / "bert_config.json")
    tiny_config().to_json_file(config_file)
    keras.utils.set_random_seed(0)
    init = str(root / "init.keras")
    kbert.build_pretraining_model(tiny_config(), SEQ_LEN, PREDICTIONS).save(init)
    return root, data, config_file, init


def settings(optimizer, clip=CLIP, accumulation=ACCUMULATION):
    return dict(
        optimizer=optimizer,
        clip_norm=clip,
        gradient_accumulation_steps=accumulation,
        learning_rate=LEARNING_RATE,
        warmup_steps=1,
        dropout=0.0,
        batch_size=GLOBAL_BATCH,
        seed=SEED,
        steps=UPDATES,
    )


def flags(optimizer, data, config_file, init, output_dir):
    return [
        *(f"--{k}={v}" for k, v in settings(optimizer).items()),
        f"--config={config_file}",
        f"--train_files={data}",
        f"--init_from={init}",
        f"--output_dir={output_dir}",
        "--verbose=0",
    ]


def in_process(shared, optimizer, name, strategy, clip=CLIP, accumulation=ACCUMULATION):
    root, data, config_file, init = shared
    run = dict(
        settings(optimizer, clip, accumulation), init_from=init, strategy=strategy, verbose=0
    )
    return pretrain(config_file, data, str(root / optimizer / name), **run).model


def weights_of(run_dir):
    return [
        w.numpy() for w in keras.saving.load_model(os.path.join(run_dir, "model.keras")).weights
    ]


def assert_same_weights(ours, reference, initial):
    moved = max(np.abs(r - i).max() for r, i in zip(reference, initial))
    assert moved > 1e-3  # the updates moved the weights: the match is not vacuous
    for a, b in zip(ours, reference):
        np.testing.assert_allclose(a, b, atol=1e-5)


# `kbert train FLAGS` for each list of flags in argv[1] (JSON), in this process; under TF_CONFIG,
# with one MultiWorkerMirroredStrategy made first (a process can make only one).
TRAIN_EACH = textwrap.dedent("""
    import json, os, sys
    from kbert.cli import build_parser
    from kbert.distribute import resolve_strategy
    from kbert.pretrain_config import PretrainConfig
    from kbert.train import pretrain

    strategy = resolve_strategy("multi_worker") if "TF_CONFIG" in os.environ else None
    for argv in json.loads(sys.argv[1]):
        args = vars(build_parser("train").parse_args(["train", *argv]))
        settings = {k: v for k, v in args.items() if k not in ("command", "verbose")}
        pretrain(PretrainConfig(**settings), strategy=strategy, verbose=0)
""")
OPTIMIZERS = ("adamw", "lamb")


def train_each_optimizer(shared, placement):
    """The command that trains every optimizer's run in one process, and {optimizer: its run
    directory}."""
    root, data, config_file, init = shared
    runs = {optimizer: str(root / optimizer / placement) for optimizer in OPTIMIZERS}
    argv = [flags(optimizer, data, config_file, init, runs[optimizer]) for optimizer in runs]
    return [sys.executable, "-c", TRAIN_EACH, json.dumps(argv)], runs


@pytest.fixture(scope="module")
def jax_runs(shared):
    """{optimizer: run directory} of the runs of JAX over 2 devices (one subprocess)."""
    command, runs = train_each_optimizer(shared, "jax")
    jax = subprocess.run(
        command, env=JAX_ENV, capture_output=True, text=True, timeout=TIMEOUT_SECONDS
    )
    assert jax.returncode == 0, jax.stderr[-4000:]
    return runs


@pytest.fixture(scope="module")
def multi_worker_runs(shared):
    """{optimizer: chief's run directory} of the runs of two MultiWorkerMirrored processes."""
    command, runs = train_each_optimizer(shared, "multi_worker")
    for returncode, output in run_cluster(command, timeout=TIMEOUT_SECONDS):
        assert returncode == 0, output[-3000:]
    return runs


@pytest.fixture(scope="module", params=OPTIMIZERS)
def runs(request, shared, jax_runs):
    """The same run on one device, on 2 mirrored replicas and on JAX's 2 devices."""
    optimizer = request.param
    one = in_process(shared, optimizer, "one", "cpu")
    devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    mirrored = in_process(
        shared, optimizer, "mirrored", resolve_strategy("mirrored", devices=devices)
    )
    initial = [w.numpy() for w in keras.saving.load_model(shared[3]).weights]
    return optimizer, one, mirrored, jax_runs[optimizer], initial


def test_mirrored_replicas_take_the_one_device_update(runs):
    _, one, mirrored, _, initial = runs
    assert int(mirrored.optimizer.iterations.numpy()) == UPDATES
    assert_same_weights(
        [w.numpy() for w in mirrored.weights], [w.numpy() for w in one.weights], initial
    )


def test_mirrored_replicas_clip_the_global_gradient_without_accumulation(shared):
    one = in_process(shared, "adamw", "one-unaccumulated", "cpu", accumulation=1)
    devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    strategy = resolve_strategy("mirrored", devices=devices)
    mirrored = in_process(shared, "adamw", "mirrored-unaccumulated", strategy, accumulation=1)
    initial = [w.numpy() for w in keras.saving.load_model(shared[3]).weights]
    assert_same_weights(
        [w.numpy() for w in mirrored.weights], [w.numpy() for w in one.weights], initial
    )


def test_jax_over_two_devices_takes_the_one_device_update(runs):
    _, one, _, jax_dir, initial = runs
    assert_same_weights(weights_of(jax_dir), [w.numpy() for w in one.weights], initial)


def test_clipping_is_active_in_these_runs(runs, shared):
    optimizer, one, _, _, _ = runs
    unclipped = in_process(shared, optimizer, "unclipped", "cpu", clip=0.0)
    difference = max(
        np.abs(a.numpy() - b.numpy()).max() for a, b in zip(one.weights, unclipped.weights)
    )
    assert difference > 1e-3


def one_device_on_joint_batches(optimizer, data, init):
    """The initial model trained on one device on the global batches of a 2-worker cluster
    (worker 0's 4 sequences, then worker 1's), with the run's optimizer."""
    joint = joint_worker_batches(data, GLOBAL_BATCH, SEED)
    model = kbert.build_pretraining_model(tiny_config(), SEQ_LEN, PREDICTIONS)
    model.set_weights(keras.saving.load_model(init).get_weights())
    kbert.compile_for_pretraining(
        model,
        create_optimizer(
            LEARNING_RATE,
            UPDATES,
            1,
            optimizer=optimizer,
            clip_global_norm=CLIP,
            gradient_accumulation_steps=ACCUMULATION,
        ),
    )
    model.fit(joint, epochs=1, steps_per_epoch=UPDATES * ACCUMULATION, verbose=0, shuffle=False)
    return model


def test_two_multi_worker_processes_take_the_one_device_update(runs, shared, multi_worker_runs):
    optimizer, *_, initial = runs
    _, data, _, init = shared
    reference = one_device_on_joint_batches(optimizer, data, init)
    assert int(reference.optimizer.iterations.numpy()) == UPDATES
    assert_same_weights(
        weights_of(multi_worker_runs[optimizer]), [w.numpy() for w in reference.weights], initial
    )
