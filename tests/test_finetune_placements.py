"""`kbert finetune` on every placement, and its raw-text SavedModel.

One fine-tuning cell (same encoder, seed, dropout 0) on one device, on a 2-replica
MirroredStrategy and (a `kbert finetune` subprocess) on JAX's DataParallel over 2 devices gives
the same dev predictions; the exported SavedModel, fed raw text, gives the best Keras model's,
and TF Serving's warm-up requests written with it run on its signatures.

The task and the reference are tests/finetune_task.py's (shared with the multi-worker cluster
of tests/test_multi_worker.py). Two things made the placements differ, both fixed: Keras draws a
batch before training under a strategy and under JAX, which advanced a reshuffling dataset
(another data order); and TensorFlow clipped the embedding's IndexedSlices gradient by a norm
over its duplicate rows (7e-5 off JAX's dense norm). Left is float noise (see finetune_task.py).
"""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from finetune_task import (
    SEQ_LEN,
    SETTINGS,
    TOPICS,
    assert_same_predictions,
    flags,
    read_results,
)
from helpers import JAX_ENV

from kbert.cli import main
from kbert.distribute import Placement, resolve_strategy
from kbert.export import WARMUP_FILE
from kbert.finetune_data import TextPairEncoder, read_examples
from kbert.finetuning import BEST_MODEL_FILE, finetune
from kbert.optimization import AdamWeightDecay

pytestmark = pytest.mark.tensorflow_only

TIMEOUT_SECONDS = 600


@pytest.fixture
def task(finetune_task):
    """The shared task: train and dev CSVs, vocabulary, an encoder that knows the task."""
    return finetune_task


@pytest.fixture
def one_device(one_device_finetuning):
    """The shared one-device reference: (output directory, results, dev logits)."""
    return one_device_finetuning


@pytest.fixture(scope="module", autouse=True)
def jax_run(finetune_task):
    """`kbert finetune` under JAX over 2 devices, started with the module's first test (it runs
    beside the TensorFlow runs); the test waits for it."""
    task = finetune_task
    output_dir = str(task["root"] / "jax")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kbert",
            "finetune",
            *flags(task, output_dir),
            "--strategy=auto",
            f"--export_base={task['root']}/served-by-jax",
        ],
        env=JAX_ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    yield process, output_dir
    if process.poll() is None:
        process.kill()
        process.communicate()


def test_the_training_order_is_the_same_on_every_pass(task):
    # Keras takes a first batch before training under a strategy and under JAX: a dataset that
    # reshuffles on every pass would train on its second order there, its first on one device.
    encoder = TextPairEncoder(task["vocab"], SEQ_LEN)
    train = read_examples(task["train"], text_column="text", label_column="topic")
    labels = [TOPICS.index(topic) for topic in train.labels]
    rows = encoder.rows(train, labels)
    batches = encoder.batches(rows, len(train), 32, shuffle_seed=5, pad=True)
    first, second = ([b[1].numpy().tolist() for b in batches] for _ in range(2))
    assert first == second
    assert sum(first, []) != sorted(sum(first, [])), "shuffled"
    other = [b[1].numpy().tolist() for b in encoder.batches(rows, len(train), 32, shuffle_seed=6)]
    assert other != first
    # Padded to whole batches with zero-weight rows: every real row once.
    weights = np.concatenate([b[2].numpy() for b in batches])
    assert len(weights) % 32 == 0 and weights.sum() == len(train)


def test_the_clip_takes_the_true_norm_of_an_embedding_gradient_with_repeated_rows():
    # Row 1 looked up twice: TensorFlow's gradient is IndexedSlices holding row 1 twice.
    embedding = keras.layers.Embedding(4, 3)
    embedding.build()
    weights = tf.constant(np.random.default_rng(0).normal(size=(3, 3)), tf.float32)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(embedding(tf.constant([1, 1, 2])) * weights)
    gradient = tape.gradient(loss, embedding.embeddings)
    assert isinstance(gradient, tf.IndexedSlices)
    dense = tf.convert_to_tensor(gradient).numpy()
    optimizer = AdamWeightDecay(0.0, weight_decay=0.0, global_clipnorm=0.5)
    optimizer.apply_gradients([(gradient, embedding.embeddings)])
    # Adam's first moment after one step: (1 - β1) · the gradient clipped by its own norm.
    clipped = dense * 0.5 / np.linalg.norm(dense)
    np.testing.assert_allclose(optimizer._m[0].numpy(), 0.1 * clipped, rtol=1e-5)


def test_mirrored_over_two_cpus_predicts_as_one_device(two_cpus, task, one_device):
    output_dir = str(task["root"] / "mirrored")
    finetune(
        task["train"],
        task["dev"],
        output_dir,
        init_from=task["encoder"],
        vocab_file=task["vocab"],
        test_file=task["dev"],
        text_column="text",
        label_column="topic",
        strategy=Placement.from_strategy(resolve_strategy("mirrored", devices=two_cpus)),
        **SETTINGS,
    )
    difference = assert_same_predictions(output_dir, one_device, task)
    print(f"largest dev logit difference, Mirrored against one device: {difference:.2e}")


def test_jax_over_two_devices_predicts_as_one_tensorflow_device(task, jax_run, one_device):
    process, output_dir = jax_run
    _, stderr = process.communicate(timeout=TIMEOUT_SECONDS)
    assert process.returncode == 0, stderr[-4000:]
    assert "DataParallel over 2 devices" in stderr
    difference = assert_same_predictions(output_dir, one_device, task)
    print(f"largest dev logit difference, JAX over 2 devices against TensorFlow: {difference:.2e}")
    # Its export (a TensorFlow-backend `kbert export` subprocess) serves as the one-device one.
    import tensorflow_text  # noqa: F401  (the tokenizer ops of the SavedModel)

    texts = tf.constant(read_examples(task["dev"], text_column="text", label_column="topic").text)
    served = [
        tf.saved_model.load(read_results(run)["export"]).signatures["single_text"](text=texts)
        for run in (output_dir, one_device[0])
    ]
    assert read_results(output_dir)["export"] == f"{task['root']}/served-by-jax/classifier/1"
    np.testing.assert_allclose(
        served[0]["probabilities"].numpy(), served[1]["probabilities"].numpy(), atol=1e-5
    )


PAIRS = [
    ("Return the message as a string.", ""),
    ("Coroutines and tasks.", "Wait for the future to complete."),
    # Longer than SEQ_LEN together: truncated longest-first, both segments kept.
    (" ".join(["the event loop runs the callbacks"] * 6), "and the header is parsed"),
    ("", "an empty first text"),
]


def assert_tf_serving_replays_the_warmup_requests(export_dir, signatures):
    """Each request of the warm-up file, read as TF Serving reads it (PredictionLog records of
    PredictRequests), runs on its signature and returns that signature's outputs."""
    from tensorflow_serving.apis import prediction_log_pb2

    records = tf.data.TFRecordDataset(os.path.join(export_dir, WARMUP_FILE))
    requests = [
        prediction_log_pb2.PredictionLog.FromString(r.numpy()).predict_log.request for r in records
    ]
    names = [r.model_spec.signature_name for r in requests]
    assert sorted(set(names)) == sorted(signatures) == ["serving_default", "single_text"]
    assert {r.model_spec.name for r in requests} == {"classifier"}
    batch_sizes = set()
    for request in requests:
        signature = signatures[request.model_spec.signature_name]
        inputs = {key: tf.make_ndarray(value) for key, value in request.inputs.items()}
        assert set(inputs) == set(signature.structured_input_signature[1])
        [batch_size] = {len(value) for value in inputs.values()}
        outputs = signature(**{key: tf.constant(value) for key, value in inputs.items()})
        assert set(outputs) == set(signature.structured_outputs) == {"probabilities", "label"}
        assert outputs["probabilities"].shape == (batch_size, len(TOPICS))
        batch_sizes.add(batch_size)
    assert batch_sizes == {1, 8}


def test_the_saved_model_serves_raw_text_as_the_keras_model_predicts(task, one_device):
    import tensorflow_text  # noqa: F401  (the tokenizer ops of the SavedModel)

    output_dir, results, _ = one_device
    export_dir = results["export"]
    assert export_dir == f"{task['root']}/served/classifier/1"
    signatures = tf.saved_model.load(export_dir).signatures
    dev = read_examples(task["dev"], text_column="text", label_column="topic")
    texts = dev.text[:16] + [a for a, _ in PAIRS]
    pairs = [""] * 16 + [b for _, b in PAIRS]
    served = signatures["serving_default"](text=tf.constant(texts), text_pair=tf.constant(pairs))

    model = keras.saving.load_model(os.path.join(output_dir, BEST_MODEL_FILE))
    encoder = TextPairEncoder(task["vocab"], SEQ_LEN)
    inputs = encoder(tf.constant(texts), tf.constant(pairs))
    assert int(inputs["padding_mask"].numpy()[-2].sum()) == SEQ_LEN  # the long pair: truncated
    probabilities = tf.nn.softmax(model.predict(inputs, verbose=0)).numpy()
    np.testing.assert_allclose(served["probabilities"].numpy(), probabilities, atol=1e-5)
    labels = [results["labels"][i] for i in probabilities.argmax(-1)]
    assert [label.decode() for label in served["label"].numpy()] == labels
    assert set(labels) == set(TOPICS), "a constant prediction would prove little"

    single = signatures["single_text"](text=tf.constant(dev.text[:16]))
    np.testing.assert_allclose(
        single["probabilities"].numpy(), served["probabilities"].numpy()[:16], atol=1e-6
    )
    assert_tf_serving_replays_the_warmup_requests(export_dir, signatures)


@pytest.mark.parametrize("strategy", ["mirrored", "cpu"])
def test_a_bad_file_is_one_line_and_exit_1_on_any_placement(task, tmp_path, capsys, strategy):
    (tmp_path / "dev.csv").write_text("text,topic\nA sentence.,email\nAnother.,http\n")
    command = flags(task, tmp_path / "out")
    command = [
        f"--eval_file={tmp_path / 'dev.csv'}" if f.startswith("--eval_file") else f for f in command
    ]
    status = main(["finetune", *command, f"--strategy={strategy}"])
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert status == 1
    assert len(errors) == 1 and "dev.csv: row 3: unknown label 'http'" in errors[0], errors
    assert not (tmp_path / "out").exists()
