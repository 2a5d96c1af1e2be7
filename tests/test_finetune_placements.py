"""`kbert finetune` on every placement, and its raw-text SavedModel.

One fine-tuning cell (same encoder, seed, dropout 0) on one device, on a 2-replica
MirroredStrategy and (a `kbert finetune` subprocess) on JAX's DataParallel over 2 devices gives
the same dev predictions; the exported SavedModel, fed raw text, gives the best Keras model's.

The task: "which standard-library package is this docstring sentence from" (real text). Two
things made the placements differ, both fixed: Keras draws a batch before training under a strategy
and under JAX, which advanced a reshuffling dataset (another data order); and TensorFlow clipped
the embedding's IndexedSlices gradient by a norm over its duplicate rows (7e-5 off JAX's dense
norm). Left is float noise (~1e-7), which fine-tuning a tiny encoder from random init amplifies
where it starts to learn (to 1e-2 in the logits at 3e-3 on one backend, measured), so the encoder
here already knows the task, as a pre-trained one would: the encoder of a first fine-tuning from
random init. From it the placements' dev logits agree to 1.3e-7 (measured).
"""

import csv
import email
import json
import os
import random
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import JAX_ENV

import kbert
from kbert.checkpoints.parts import encoder_of
from kbert.cli import main
from kbert.distribute import Placement, resolve_strategy
from kbert.finetune_data import TextPairEncoder, read_examples
from kbert.finetuning import BEST_MODEL_FILE, PREDICTIONS_FILE, finetune
from kbert.optimization import AdamWeightDecay
from tfrecords_tools import corpora, vocab

pytestmark = pytest.mark.tensorflow_only

STDLIB = os.path.dirname(os.path.dirname(email.__file__))
TOPICS = ("email", "asyncio")
TRAIN_ROWS, DEV_ROWS, SEQ_LEN = 300, 64, 32
# The first fine-tuning, from random init: the tiny model learns the task (dev accuracy ~0.9).
FIRST = dict(max_seq_length=SEQ_LEN, batch_size=32, epochs=6, learning_rate=2e-3, dropout=0.0)
SETTINGS = dict(FIRST, epochs=2, learning_rate=3e-4)
# Measured: dev logits within 1.3e-7 of one TensorFlow device's (JAX over 2 devices, Mirrored).
LOGIT_TOLERANCE = 1e-5
TIMEOUT_SECONDS = 600


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    """Train and dev CSVs of (text, topic), a vocabulary learned from them, and an encoder that
    knows the task (`.keras`): the encoder of a first fine-tuning from random init."""
    root = tmp_path_factory.mktemp("placements")
    rows = [
        (" ".join(sentence.split()), package)
        for package in TOPICS
        for document in corpora.python_docstring_documents([os.path.join(STDLIB, package)])
        for sentence in document
    ]
    random.Random(1).shuffle(rows)
    vocab_file = str(root / "vocab.txt")
    vocab.learn_vocab([text for text, _ in rows], vocab_file, 1000)
    files = {}
    for name, part in (
        ("train", rows[:TRAIN_ROWS]),
        ("dev", rows[TRAIN_ROWS : TRAIN_ROWS + DEV_ROWS]),
    ):
        files[name] = str(root / f"{name}.csv")
        with open(files[name], "w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows([("text", "topic"), *part])
    config = kbert.BertConfig(
        vocab_size=len(open(vocab_file).read().splitlines()),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=SEQ_LEN,
    )
    keras.utils.set_random_seed(0)
    random_init = kbert.build_pretraining_model(config, SEQ_LEN, 1)
    random_init.save(str(root / "random.keras"))
    first = str(root / "first")
    columns = dict(text_column="text", label_column="topic")
    finetune(
        files["train"],
        files["dev"],
        first,
        init_from=str(root / "random.keras"),
        vocab_file=vocab_file,
        strategy="cpu",
        **columns,
        **FIRST,
    )
    classifier = keras.saving.load_model(os.path.join(first, BEST_MODEL_FILE))
    encoder_of(random_init).set_weights(classifier.backbone.get_weights())
    encoder = str(root / "encoder.keras")
    random_init.save(encoder)
    return dict(root=root, vocab=vocab_file, encoder=encoder, **files)


def flags(task, output_dir):
    """`kbert finetune`'s flags for the task: dev rows scored and predicted."""
    return [
        f"--init_from={task['encoder']}",
        f"--vocab_file={task['vocab']}",
        f"--train_file={task['train']}",
        f"--eval_file={task['dev']}",
        f"--test_file={task['dev']}",
        "--text_column=text",
        "--label_column=topic",
        f"--output_dir={output_dir}",
        *(f"--{name}={value}" for name, value in SETTINGS.items()),
        "--verbose=0",
    ]


def dev_logits(task, output_dir):
    """The saved best model's dev logits, as TensorFlow-backend Keras reloads it."""
    model = keras.saving.load_model(os.path.join(output_dir, BEST_MODEL_FILE))
    dev = read_examples(task["dev"], text_column="text", label_column="topic")
    return model.predict(TextPairEncoder(task["vocab"], SEQ_LEN).dataset(dev, 16), verbose=0)


def read_results(output_dir):
    return json.load(open(os.path.join(output_dir, "finetune_results.json")))


@pytest.fixture(scope="module")
def jax_run(task):
    """`kbert finetune` under JAX over 2 devices, started at once (it runs beside the
    TensorFlow runs); the test waits for it."""
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


@pytest.fixture(scope="module")
def one_device(task, jax_run):
    """The reference: `kbert finetune` on one TensorFlow device, exporting its best model."""
    output_dir = str(task["root"] / "one")
    command = [*flags(task, output_dir), "--strategy=cpu", f"--export_base={task['root']}/served"]
    assert main(["finetune", *command]) == 0
    results = read_results(output_dir)
    # The model knows the task: predictions are not constant, none sits on the boundary.
    assert results["best"]["accuracy"] > results["baseline"]["accuracy"] + 0.25, results
    logits = dev_logits(task, output_dir)
    assert np.abs(logits[:, 0] - logits[:, 1]).min() > 2 * LOGIT_TOLERANCE
    return output_dir, results, logits


def assert_same_predictions(output_dir, reference, task):
    reference_dir, reference_results, reference_logits = reference
    assert read_results(output_dir)["best"] == reference_results["best"]
    predictions = open(os.path.join(output_dir, PREDICTIONS_FILE)).read()
    assert predictions == open(os.path.join(reference_dir, PREDICTIONS_FILE)).read()
    logits = dev_logits(task, output_dir)
    np.testing.assert_allclose(logits, reference_logits, atol=LOGIT_TOLERANCE)
    return np.abs(logits - reference_logits).max()


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
