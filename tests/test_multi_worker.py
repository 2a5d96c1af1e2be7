"""MultiWorkerMirroredStrategy: two `kbert train` worker processes on 127.0.0.1 (the multi-host proxy)."""

import json
import os
import socket
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import kbert
from helpers import tiny_config, write_pretraining_records
from kbert.data import pretraining_dataset
from kbert.distribute import resolve_strategy
from kbert.train import _build_optimizer, _without_global_tf_seed

STEPS, GLOBAL_BATCH, SEED, LEARNING_RATE = 3, 8, 3, 0.5


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.fixture(scope="module")
def multi_worker_run(tmp_path_factory):
    """Two workers of one cluster train the tiny config for 3 SGD steps of global batch 8."""
    work = tmp_path_factory.mktemp("multi_worker")
    data = write_pretraining_records(str(work / "data"))
    config_file = str(work / "bert_config.json")
    tiny_config().to_json_file(config_file)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
    command = [
        sys.executable, "-m", "kbert", "train", "--config", config_file, "--train_files", data,
        "--output_dir", str(work / "run"), "--steps", str(STEPS), "--batch_size", str(GLOBAL_BATCH),
        "--seed", str(SEED), "--optimizer", "sgd", "--learning_rate", str(LEARNING_RATE),
        "--warmup_steps", "0", "--strategy", "multi_worker", "--eval_files", data, "--verbose", "0",
    ]
    workers = []
    for index in range(2):
        env = dict(os.environ, TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}))
        workers.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    try:
        outputs = [worker.communicate(timeout=300)[0] for worker in workers]
    finally:
        for worker in workers:
            worker.kill()
    for worker, output in zip(workers, outputs):
        assert worker.returncode == 0, output[-3000:]
    return work, data


def test_two_workers_train_the_weights_of_one_device_on_their_joint_batches(multi_worker_run):
    work, data = multi_worker_run
    chief = keras.saving.load_model(str(work / "run" / "model.keras"))
    assert int(chief.optimizer.iterations.numpy()) == STEPS
    # The other worker holds the same weights and wrote to its own directory.
    other = keras.saving.load_model(str(work / "run" / "workers" / "worker-1" / "model.keras"))
    for a, b in zip(chief.weights, other.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())

    # One device on the same global batches: each step, worker 0's batch of 4 then worker 1's.
    with _without_global_tf_seed():
        pipelines = [
            pretraining_dataset(
                data, GLOBAL_BATCH, is_training=True, seed=SEED,
                input_context=tf.distribute.InputContext(2, index, 2),
            )
            for index in range(2)
        ]
    joint = tf.data.Dataset.zip(tuple(pipelines)).map(
        lambda a, b: tf.nest.map_structure(lambda x, y: tf.concat([x, y], 0), a, b)
    )
    keras.utils.set_random_seed(SEED)
    reference = kbert.build_pretraining_model(tiny_config(), chief.max_seq_length, chief.max_predictions_per_seq)
    kbert.compile_for_pretraining(reference, _build_optimizer("sgd", LEARNING_RATE, STEPS, 0, 0.01, 1))
    before = [w.numpy() for w in reference.weights]
    reference.fit(joint, epochs=1, steps_per_epoch=STEPS, verbose=0, shuffle=False)
    for a, b in zip(chief.weights, reference.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5, err_msg=a.path)
    moved = max(np.abs(w.numpy() - w0).max() for w, w0 in zip(reference.weights, before))
    assert moved > 1e-3  # the updates moved the weights: the match is not vacuous


def test_multi_worker_evaluation_equals_one_device(multi_worker_run):
    work, data = multi_worker_run
    with open(work / "run" / "eval_results.json") as f:
        distributed = json.load(f)
    single = kbert.evaluate(str(work / "run" / "model.keras"), data, batch_size=GLOBAL_BATCH, strategy="cpu", verbose=0)
    assert distributed["num_sequences"] == single["num_sequences"] == 64
    for name in ("loss", "mlm_loss", "nsp_loss", "mlm_accuracy", "nsp_accuracy"):
        assert distributed[name] == pytest.approx(single[name], abs=1e-5), name


@pytest.mark.parametrize("tf_config, message", [(None, "needs the TF_CONFIG"), ("{not json", "not a JSON object")])
def test_multi_worker_without_a_usable_tf_config_is_a_named_error(monkeypatch, tf_config, message):
    if tf_config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", tf_config)
    with pytest.raises(ValueError, match=message):
        resolve_strategy("multi_worker")
