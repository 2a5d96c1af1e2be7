"""The fine-tuning task and the one-device reference that the placement tests compare with
(tests/test_finetune_placements.py, the multi-worker cluster of tests/test_multi_worker.py):
session fixtures, made once however many modules use them.

The task: "which standard-library package is this docstring sentence from" (real text). Float
noise (~1e-7) between placements, which fine-tuning a tiny encoder from random init amplifies
where it starts to learn (to 1e-2 in the logits at 3e-3 on one backend, measured), is kept small
by an encoder that already knows the task, as a pre-trained one would: the encoder of a first
fine-tuning from random init. From it the placements' dev logits agree to 1.3e-7 (measured).
"""

import csv
import email
import json
import os
import random

import keras
import numpy as np
import pytest
from helpers import tiny_config

import kbert
from kbert.checkpoints.parts import encoder_of
from kbert.cli import main
from kbert.finetune_data import TextPairEncoder, read_examples
from kbert.finetuning import BEST_MODEL_FILE, PREDICTIONS_FILE, finetune
from tfrecords_tools import corpora, vocab

STDLIB = os.path.dirname(os.path.dirname(email.__file__))
TOPICS = ("email", "asyncio")
TRAIN_ROWS, DEV_ROWS, SEQ_LEN = 300, 64, 32
# The first fine-tuning, from random init: the tiny model learns the task (dev accuracy ~0.9).
FIRST = dict(max_seq_length=SEQ_LEN, batch_size=32, epochs=6, learning_rate=2e-3, dropout=0.0)
SETTINGS = dict(FIRST, epochs=2, learning_rate=3e-4)
# Measured: dev logits within 1.3e-7 of one TensorFlow device's (JAX over 2 devices, Mirrored,
# MultiWorkerMirrored over 2 workers).
LOGIT_TOLERANCE = 1e-5


@pytest.fixture(scope="session")
def finetune_task(tmp_path_factory):
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
    config = tiny_config(
        vocab_size=len(open(vocab_file).read().splitlines()),
        dropout=0.1,
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


@pytest.fixture(scope="session")
def one_device_finetuning(finetune_task):
    """The reference: `kbert finetune` on one TensorFlow device, exporting its best model:
    (output directory, results, dev logits)."""
    task = finetune_task
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
