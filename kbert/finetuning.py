"""`finetune` (`kbert.finetune`): sentence(-pair) classification and regression on top of any
encoder kbert loads: "did pre-training work?" answered the way BERT's papers answer it.

The encoder comes from `kbert.checkpoints.init_from` (a kbert run or `.keras` file, a Google TF1
checkpoint, a keras-hub preset, a Hugging Face BERT folder) or from random init (`config`, the
baseline). On it sits keras-hub's `BertTextClassifier` head (dropout, then a dense layer on the
pooled `[CLS]` output; `kbert.heads.TextClassifier`), trained with Google's run_classifier
recipe: AdamWeightDecay (`create_optimizer`), 10 % warmup then linear decay, 3 epochs, lr 2e-5,
batch 32, 128 tokens.
Every cell of the grid (learning rates × batch sizes × epochs × seeds) is trained and scored on
the dev set; the best is kept. Outputs (each written atomically) in `output_dir`:
`finetune_results.json`, `finetune_results.txt` (a table), `best_model.keras`, and
`test_predictions.tsv` when a test file is given; with `export_base`, the best model as a raw-text
TF Serving SavedModel (`kbert.classifier_export`).
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import logging
import math
import posixpath
import time
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from kbert import features, glue_metrics
from kbert.checkpoints import (
    GOOGLE_CHECKPOINT,
    HF_FOLDER,
    KBERT_RUN,
    KERAS_HUB_PRESET,
    KERAS_MODEL,
    VOCAB_FILENAME,
    detect_source,
    init_from,
    read_source_config,
)
from kbert.checkpoints.parts import encoder_of
from kbert.classifier_export import RESULTS_FILE, export_classifier
from kbert.config import BertConfig, resolve_config
from kbert.device_defaults import resolve_settings
from kbert.distribute import Placement, as_placement, build_optimizer, initialize_distribution
from kbert.errors import InputError, MissingFileError, SettingError
from kbert.finetune_data import (
    Examples,
    TextPairEncoder,
    label_ids,
    label_values,
    read_examples,
    read_tfds_examples,
    tfds_splits,
)
from kbert.heads import TextClassifier
from kbert.io import atomic_path, check_positive_int, read_json, write_atomically, write_json
from kbert.losses import GlobalMeanSquaredError, WeightedSparseCrossEntropy
from kbert.model import build_pretraining_model
from kbert.optimization import create_optimizer
from kbert.records import match_files
from kbert.vocabulary import read_vocab, vocab_sha256

TABLE_FILE = "finetune_results.txt"
BEST_MODEL_FILE = "best_model.keras"
PREDICTIONS_FILE = "test_predictions.tsv"
GRID_SETTINGS = ("learning_rate", "batch_size", "epochs", "seed")

logger = logging.getLogger("kbert.finetune")


@dataclasses.dataclass
class FinetuneResult:
    """What `finetune` wrote and found.

    Attributes:
        output_dir: where the results are.
        results: the content of `finetune_results.json`.
        table: the readable table (`finetune_results.txt`).
        warnings: e.g. a best score within noise of the majority-class baseline.
        written: whether this process wrote `output_dir` (the chief of several processes).
    """

    output_dir: str
    results: dict[str, Any]
    table: str
    warnings: list[str]
    written: bool = True


def parse_grid(value: Any, parse: type, name: str) -> list[Any]:
    """One value or a comma-separated list (or a sequence) → the list of values to try.

    Examples:
    >>> parse_grid("2e-5,3e-5", float, "learning_rate"), parse_grid(32, int, "batch_size")
    ([2e-05, 3e-05], [32])
    """
    items = value.split(",") if isinstance(value, str) else value
    items = list(items) if isinstance(items, (list, tuple)) else [items]
    try:
        values = [parse(item.strip()) if isinstance(item, str) else parse(item) for item in items]
    except ValueError:
        raise SettingError(
            f"{name}: expected a {parse.__name__} or a comma-separated list of them, got {value!r}"
        ) from None
    if not values or any(v <= 0 for v in values if name != "seed"):
        raise SettingError(f"{name}: expected positive values, got {value!r}")
    return values


def finetune(
    train_file: str | None,
    eval_file: str | None,
    output_dir: str,
    init_from: str | None = None,
    config: BertConfig | str | None = None,
    vocab_file: str | None = None,
    do_lower_case: bool | None = None,
    test_file: str | None = None,
    text_column: str | None = None,
    text_pair_column: str | None = None,
    label_column: str | None = None,
    regression: bool | None = None,
    max_seq_length: int = 128,
    learning_rate: float | str | Sequence[float] = 2e-5,
    batch_size: int | str | Sequence[int] = 32,
    epochs: int | str | Sequence[int] = 3,
    seed: int | str | Sequence[int] = 0,
    warmup_proportion: float = 0.1,
    dropout: float | None = None,
    strategy: str | Placement = "auto",
    tpu: str = "local",
    export_base: str | None = None,
    export_name: str = "classifier",
    verbose: int = 0,
    tfds_name: str | None = None,
    tfds_data_dir: str | None = None,
    job_addresses: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> FinetuneResult:
    """Fine-tune an encoder on a labelled train file, score it on the dev file, keep the best.

    Args:
        train_file: training rows (GLUE TSV, or TSV/CSV/JSONL with a header); None with
            `tfds_name`.
        eval_file: dev rows: scored for every grid cell, and the best cell chosen on them; None
            with `tfds_name`.
        output_dir: where the results go (created).
        init_from: a pre-trained encoder (anything `kbert.checkpoints.detect_source` accepts).
        config: without `init_from`, the architecture to train from random init (a preset name,
            a bert_config.json or a BertConfig; its vocab_size is the vocabulary's).
        vocab_file: the vocab.txt; default the one beside or inside `init_from`.
        do_lower_case: strip accents and lower-case; default the source's tokenizer setting
            (Hugging Face folder, keras-hub preset), else True.
        test_file: rows to predict with the best model (labels not needed).
        text_column, text_pair_column, label_column: column names (see `read_examples`).
        regression: predict a number (mean squared error; Pearson/Spearman); default: when a
            training label is a number that is not an integer.
        max_seq_length: tokens per sequence, [CLS] and [SEP]s included.
        learning_rate, batch_size, epochs, seed: one value or a comma-separated list each.
        warmup_proportion: the fraction of updates with linear warmup.
        dropout: overrides the encoder's and the head's dropout rate.
        strategy: where to train: a `kbert.distribute.resolve_distribution` kind, or a
            `Placement` (e.g. `Placement.from_strategy(tf.distribute.MirroredStrategy(...))`).
        tpu: the TPU for strategy "tpu" (TensorFlow: "local", a TPU name or a grpc address).
        export_base: also export the best model as a TF Serving SavedModel that takes raw text
            (`kbert.classifier_export`) to `<export_base>/<export_name>/<next version>/`.
        export_name: the exported model's name.
        verbose: Keras' progress display (0 silent).
        tfds_name: a TFDS dataset instead of the files (e.g. "glue/mrpc"): its train, validation
            and test splits (`kbert.finetune_data.tfds_splits`) are read as the three files.
        tfds_data_dir: TFDS' data directory.
        job_addresses, num_processes, process_id: a JAX run of several processes, as
            `kbert.distribute.initialize_distribution` takes them (default: Keras'
            KERAS_DISTRIBUTION_* variables). Every process (every TensorFlow worker of
            strategy "multi_worker") runs the same call and trains on its share of each batch;
            all score the whole dev set and choose the same cell; only the chief writes.

    Returns:
        A `FinetuneResult`; `results["best"]` holds the chosen settings and dev metrics.

    Raises:
        KbertError: a bad file (unknown label, missing column, empty file), naming file and row.

    Examples:
    >>> import kbert
    >>> words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "bad", "film"]
    >>> _ = open("vocab.txt", "w").write("\\n".join(words) + "\\n")
    >>> rows = "sentence\\tlabel\\n" + "good film\\t1\\nbad film\\t0\\n" * 4
    >>> _ = open("train.tsv", "w").write(rows)
    >>> config = kbert.BertConfig(vocab_size=8, hidden_size=16, num_hidden_layers=1,
    ...                           num_attention_heads=2, intermediate_size=32)
    >>> result = finetune("train.tsv", "train.tsv", "out", config=config, vocab_file="vocab.txt",
    ...                   max_seq_length=8, learning_rate=1e-3, batch_size=4, epochs=1)
    >>> sorted(result.results["best"])
    ['accuracy', 'batch_size', 'epochs', 'f1', 'learning_rate', 'mcc', 'seed']
    """
    check_positive_int("max_seq_length", max_seq_length)
    # First: JAX processes join before JAX starts, a multi-worker strategy is created before
    # TensorFlow runs anything.
    initialize_distribution(job_addresses, num_processes, process_id)
    placement = as_placement(strategy, tpu=tpu)
    grid = {
        "learning_rate": parse_grid(learning_rate, float, "learning_rate"),
        "batch_size": parse_grid(batch_size, int, "batch_size"),
        "epochs": parse_grid(epochs, int, "epochs"),
        "seed": parse_grid(seed, int, "seed"),
    }
    if not 0 <= warmup_proportion < 1:
        raise SettingError(f"warmup_proportion must be in [0, 1), got {warmup_proportion}")
    columns = dict(
        text_column=text_column, text_pair_column=text_pair_column, label_column=label_column
    )
    if tfds_name is not None:
        if train_file or eval_file or test_file:
            raise SettingError("pass either tfds_name or train_file/eval_file/test_file, not both")
        splits = tfds_splits(tfds_name)
        train, dev, test = (
            read_tfds_examples(
                tfds_name, splits[part], tfds_data_dir, **columns, require_labels=labelled
            )
            for part, labelled in (("train", True), ("eval", True), ("test", False))
        )
        train_file, eval_file = train.path, dev.path
    elif train_file and eval_file:
        train = read_examples(train_file, **columns)
        dev = read_examples(eval_file, **columns)
        test = read_examples(test_file, **columns, require_labels=False) if test_file else None
    else:
        raise SettingError(
            "fine-tuning needs a train_file and an eval_file (--train_file, --eval_file) or a "
            "TFDS dataset (--tfds_name)"
        )
    task = _Task.of(train, dev, regression)

    encoder_source = _EncoderSource.resolve(init_from, config, vocab_file, do_lower_case)
    if dropout is not None:
        encoder_source.config = dataclasses.replace(
            encoder_source.config, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout
        )
    text_encoder = TextPairEncoder(
        encoder_source.vocab_file, max_seq_length, encoder_source.do_lower_case
    )
    if len(text_encoder.tokens) != encoder_source.config.vocab_size:
        raise InputError(
            f"{encoder_source.vocab_file}: {len(text_encoder.tokens)} tokens, but the encoder's "
            f"vocab_size is {encoder_source.config.vocab_size} (pass its vocab.txt: --vocab_file)"
        )
    # Every process trains and predicts (collectives); only the chief writes.
    writes = placement.is_chief
    if writes:
        tf.io.gfile.makedirs(output_dir)

    baseline = task.baseline(train, dev)
    cells: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    test_predictions: list[str] | None = None
    for values in itertools.product(*grid.values()):
        settings = dict(zip(grid, values))
        logger.info("fine-tuning %s", settings)
        started = time.monotonic()
        model = _train_cell(
            encoder_source,
            task,
            text_encoder,
            train,
            settings,
            warmup_proportion,
            placement,
            verbose,
        )
        outputs = _predict(model, text_encoder, dev, settings["batch_size"], placement)
        metrics = task.metrics(dev, outputs)
        cell = {**settings, **metrics, "train_seconds": round(time.monotonic() - started, 1)}
        cells.append(cell)
        logger.info("dev: %s", metrics)
        if best is None or cell[task.metric] > best[task.metric]:
            best = cell
            if writes:
                with (
                    placement.this_process_only(),
                    atomic_path(posixpath.join(output_dir, BEST_MODEL_FILE)) as tmp,
                ):
                    model.save(tmp)
            if test is not None:
                outputs = _predict(model, text_encoder, test, settings["batch_size"], placement)
                test_predictions = task.prediction_strings(outputs)
        keras.backend.clear_session()

    assert best is not None  # the grid has at least one cell
    warnings = []
    if glue_metrics.within_noise(best[task.metric], baseline[task.metric], len(dev), task.metric):
        warnings.append(
            f"the best dev {task.metric} ({best[task.metric]:.4f}) is within noise of the "
            f"majority-class baseline ({baseline[task.metric]:.4f}, {len(dev)} dev examples): "
            "the encoder may not have loaded, or the vocabulary may not match it"
        )
    results = {
        "task": task.kind,
        "labels": task.labels,
        "metric": task.metric,
        "encoder": encoder_source.description,
        "vocab_file": encoder_source.vocab_file,
        "do_lower_case": encoder_source.do_lower_case,
        "max_seq_length": max_seq_length,
        "warmup_proportion": warmup_proportion,
        "train_file": train_file,
        "eval_file": eval_file,
        "train_examples": len(train),
        "eval_examples": len(dev),
        "baseline": baseline,
        "cells": cells,
        "best": {key: best[key] for key in (*GRID_SETTINGS, *task.metric_names)},
        "warnings": warnings,
    }
    table = format_table(results)
    if not writes:
        return FinetuneResult(output_dir, results, table, warnings, written=False)
    if test is not None and test_predictions is not None:
        rows = "".join(f"{i}\t{p}\n" for i, p in enumerate(test_predictions))
        write_atomically(posixpath.join(output_dir, PREDICTIONS_FILE), "index\tprediction\n" + rows)
        results["test_predictions"] = PREDICTIONS_FILE
    write_json(posixpath.join(output_dir, RESULTS_FILE), results)
    if export_base is not None:
        results["export"] = export_classifier(
            posixpath.join(output_dir, BEST_MODEL_FILE),
            encoder_source.vocab_file,
            export_base,
            max_seq_length,
            task.labels,
            name=export_name,
            do_lower_case=encoder_source.do_lower_case,
        )
        write_json(posixpath.join(output_dir, RESULTS_FILE), results)
    write_atomically(posixpath.join(output_dir, TABLE_FILE), table)
    for warning in warnings:
        logger.warning(warning)
    return FinetuneResult(output_dir, results, table, warnings)


def format_table(results: dict[str, Any]) -> str:
    """The grid's cells and the baseline as a fixed-width table, the best cell marked with *.

    Examples:
    >>> print(format_table({"metric": "accuracy", "baseline": {"accuracy": 0.5},
    ...     "cells": [{"learning_rate": 2e-5, "batch_size": 32, "epochs": 3, "seed": 0,
    ...                "accuracy": 0.75}],
    ...     "best": {"learning_rate": 2e-5, "batch_size": 32, "epochs": 3, "seed": 0}}))
      learning_rate  batch_size  epochs  seed  accuracy
    *       2e-05          32       3     0    0.7500
      majority-class baseline                  0.5000
    """
    names = [n for n in results["baseline"] if n in results["cells"][0]]
    header = "  learning_rate  batch_size  epochs  seed" + "".join(f"  {n:>8}" for n in names)
    lines = [header]
    for cell in results["cells"]:
        chosen = all(cell[k] == results["best"][k] for k in GRID_SETTINGS)
        lines.append(
            f"{'*' if chosen else ' '} {cell['learning_rate']:>13g}  {cell['batch_size']:>10}"
            f"  {cell['epochs']:>6}  {cell['seed']:>4}"
            + "".join(f"  {cell[n]:>8.4f}" for n in names)
        )
    lines.append(
        f"  {'majority-class baseline':<39}"
        + "".join(f"  {results['baseline'][n]:>8.4f}" for n in names)
    )
    return "\n".join(lines) + "\n"


@dataclasses.dataclass
class _Task:
    """Classification (labels as strings, in sorted order) or regression (numbers)."""

    kind: str
    labels: list[str] | None

    @classmethod
    def of(cls, train: Examples, dev: Examples, regression: bool | None) -> _Task:
        if regression is None:
            regression = any(not _is_integer(label) for label in train.labels or [])
        if regression:
            label_values(train), label_values(dev)  # a clear error for a non-number
            return cls("regression", None)
        labels = sorted(set(train.labels or []), key=_label_order)
        if len(labels) < 2:
            raise InputError(
                f"{train.path}: a single label ({', '.join(map(repr, labels))}); classification "
                "needs at least two"
            )
        label_ids(dev, labels)  # a clear error for an unknown label
        return cls("classification", labels)

    @property
    def metric(self) -> str:
        """The metric the best cell is chosen on."""
        return "accuracy" if self.kind == "classification" else "pearson"

    @property
    def metric_names(self) -> tuple[str, ...]:
        if self.kind == "regression":
            return glue_metrics.REGRESSION_METRICS
        names = glue_metrics.CLASSIFICATION_METRICS
        return names if len(self.labels) == 2 else tuple(n for n in names if n != "f1")

    @property
    def num_outputs(self) -> int:
        return 1 if self.labels is None else len(self.labels)

    def targets(self, examples: Examples) -> list:
        if self.labels is None:
            return [[value] for value in label_values(examples)]
        return label_ids(examples, self.labels)

    def metrics(self, examples: Examples, outputs: np.ndarray) -> dict[str, float]:
        if self.labels is None:
            return glue_metrics.regression_metrics(label_values(examples), outputs[:, 0])
        return glue_metrics.classification_metrics(
            label_ids(examples, self.labels), np.argmax(outputs, axis=-1), len(self.labels)
        )

    def baseline(self, train: Examples, dev: Examples) -> dict[str, float]:
        """Dev metrics of predicting the training set's majority class (or mean value)."""
        if self.labels is None:
            mean = float(np.mean(label_values(train)))
            return glue_metrics.regression_metrics(label_values(dev), [mean] * len(dev))
        ids = label_ids(train, self.labels)
        majority = collections.Counter(ids).most_common(1)[0][0]
        return glue_metrics.classification_metrics(
            label_ids(dev, self.labels), [majority] * len(dev), len(self.labels)
        )

    def prediction_strings(self, outputs: np.ndarray) -> list[str]:
        if self.labels is None:
            return [f"{value:.6g}" for value in outputs[:, 0]]
        return [self.labels[i] for i in np.argmax(outputs, axis=-1)]

    def compile(
        self, model: keras.Model, optimizer: keras.optimizers.Optimizer, jit_compile: bool
    ) -> None:
        # kbert's losses divide by the global batch: the same gradients on any number of
        # replicas (Keras' mean per replica, summed by the strategy, would scale them).
        if self.labels is None:
            model.compile(
                optimizer=optimizer, loss=GlobalMeanSquaredError(), jit_compile=jit_compile
            )
        else:
            model.compile(
                optimizer=optimizer,
                loss=WeightedSparseCrossEntropy(),
                metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
                jit_compile=jit_compile,
            )


def _is_integer(label: str) -> bool:
    try:
        value = float(label)
    except ValueError:
        return True  # a word: a class name
    return math.isfinite(value) and value == int(value)


def _label_order(label: str) -> tuple:
    """Numbers in numeric order (GLUE's 0 before 1), then words alphabetically."""
    try:
        return (0, float(label), label)
    except ValueError:
        return (1, 0.0, label)


@dataclasses.dataclass
class _EncoderSource:
    """The encoder to start from: its config, weights (None: random init) and vocabulary."""

    config: BertConfig
    source: str | None
    vocab_file: str
    do_lower_case: bool
    description: str

    @classmethod
    def resolve(
        cls,
        source: str | None,
        config: BertConfig | str | None,
        vocab_file: str | None,
        do_lower_case: bool | None,
    ) -> _EncoderSource:
        if source is None:
            if config is None or vocab_file is None:
                raise SettingError(
                    "fine-tuning needs an encoder to start from (init_from, --init_from) or, for "
                    "random init, a config and a vocab_file (--config, --vocab_file)"
                )
            size = len(read_vocab(vocab_file))
            resolved = resolve_config(config, vocab_size=size)
            lower = True if do_lower_case is None else do_lower_case
            return cls(resolved, None, vocab_file, lower, "random init")
        if config is not None:
            raise SettingError("pass either init_from or config (random init), not both")
        kind, location = detect_source(source)
        found_vocab, found_lower = _source_vocab(kind, location)
        vocab_file = vocab_file or found_vocab
        if vocab_file is None:
            raise MissingFileError(
                f"{source}: no {VOCAB_FILENAME} found with this {kind} (kbert runs trained on "
                "`kbert create-data` output keep one); pass the vocabulary it was trained with "
                "(--vocab_file)"
            )
        if kind == KBERT_RUN:
            found_lower = _run_do_lower_case(location, vocab_file, found_lower)
        lower = do_lower_case if do_lower_case is not None else found_lower
        return cls(read_source_config(source), source, vocab_file, lower, kind)


def _run_do_lower_case(run_dir: str, vocab_file: str, default: bool) -> bool:
    """`do_lower_case` of the records a kbert run trained on, after checking that `vocab_file`
    is the vocabulary they were made with (their metadata holds its sha256)."""
    run_config = posixpath.join(run_dir, "run_config.json")
    if not tf.io.gfile.exists(run_config):
        return default
    try:
        shards = match_files(read_json(run_config, "run_config.json").get("train_files"))
    except (FileNotFoundError, ValueError, TypeError):
        return default  # the training data moved: nothing to check against
    for directory in sorted({posixpath.dirname(shard) for shard in shards}):
        meta = features.read_metadata(directory)
        if meta is None:
            continue
        if meta.vocab_sha256 != vocab_sha256(vocab_file):
            raise InputError(
                f"{vocab_file}: not the vocabulary {run_dir} was trained with (its records in "
                f"{directory} were made with a vocab.txt of sha256 {meta.vocab_sha256[:12]}...)"
            )
        return meta.do_lower_case
    return default


def _source_vocab(kind: str, location: str) -> tuple[str | None, bool]:
    """The vocab.txt that ships with a source, and whether its tokenizer lower-cases."""
    lower = True
    if kind == GOOGLE_CHECKPOINT or kind == KERAS_MODEL:
        candidates = [posixpath.join(posixpath.dirname(location), VOCAB_FILENAME)]
    elif kind == KERAS_HUB_PRESET:
        candidates = [posixpath.join(location, "assets", "tokenizer", "vocabulary.txt")]
        tokenizer = posixpath.join(location, "tokenizer.json")
        if tf.io.gfile.exists(tokenizer):
            lower = bool(read_json(tokenizer, "tokenizer.json")["config"].get("lowercase", True))
    else:
        candidates = [posixpath.join(location, VOCAB_FILENAME)]
        settings = posixpath.join(location, "tokenizer_config.json")
        if kind == HF_FOLDER and tf.io.gfile.exists(settings):
            lower = bool(read_json(settings, "tokenizer_config.json").get("do_lower_case", True))
        if kind == KBERT_RUN:
            run_config = posixpath.join(location, "run_config.json")
            if tf.io.gfile.exists(run_config):
                masking = read_json(run_config, "run_config.json").get("dynamic_masking_vocab")
                candidates += [masking] if masking else []
    return next((c for c in candidates if tf.io.gfile.exists(c)), None), lower


def _train_cell(
    source: _EncoderSource,
    task: _Task,
    text_encoder: TextPairEncoder,
    train: Examples,
    settings: dict[str, Any],
    warmup_proportion: float,
    placement: Placement,
    verbose: int,
) -> keras.Model:
    """One grid cell: a fresh classifier from the source, trained on `train`."""
    keras.utils.set_random_seed(settings["seed"])
    batch_size, epochs = settings["batch_size"], settings["epochs"]
    placement.check_global_batch_size(batch_size)
    steps = math.ceil(len(train) / batch_size) * epochs
    with placement.scope():
        pretraining = build_pretraining_model(source.config, text_encoder.max_seq_length, 1)
        if source.source is not None:
            source.description = init_from(pretraining, source.source)
            # Loaders draw random numbers (building models) as they please: seeding again makes
            # the dropout masks depend on the seed alone, whatever the source's kind.
            keras.utils.set_random_seed(settings["seed"])
        model = TextClassifier(
            encoder_of(pretraining),
            num_classes=task.num_outputs,
            preprocessor=None,
            dropout=source.config.dropout,
        )
        _initialize_head(model, settings["seed"])
        optimizer = create_optimizer(
            settings["learning_rate"], steps, int(steps * warmup_proportion)
        )
        # kbert's device defaults: XLA under JAX (several processes: one collective program per
        # step, not one per op), none on CPU or under a tf.distribute strategy.
        _, jit_compile, _ = resolve_settings("none", "auto", placement)
        task.compile(model, optimizer, jit_compile)
        build_optimizer(model)
    rows = text_encoder.rows(train, task.targets(train))
    for epoch in range(epochs):
        # One fit per epoch, each on an order fixed by (seed, epoch): see `batches`.
        data = text_encoder.batches(
            rows,
            len(train),
            batch_size,
            shuffle_seed=_epoch_seed(settings["seed"], epoch),
            pad=True,
        )
        with placement.scope():
            model.fit(
                placement.share_of_batches(data, batch_size),
                initial_epoch=epoch,
                epochs=epoch + 1,
                shuffle=False,
                verbose=verbose,
            )
    return model


def _epoch_seed(seed: int, epoch: int) -> int:
    """The shuffle seed of one epoch of a cell: a function of the cell's seed and the epoch."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def _initialize_head(model: keras.Model, seed: int) -> None:
    """The classifier's output layer as keras-hub initialises it (truncated normal, stddev
    0.02; zero bias), drawn from `seed` alone with numpy: Keras' random numbers differ between
    its backends and depend on what a loader drew before."""
    layer = model.output_dense
    shape = tuple(layer.kernel.shape)
    rng = np.random.default_rng(seed)
    kernel = rng.standard_normal(shape)
    outside = np.abs(kernel) > 2
    while outside.any():
        kernel[outside] = rng.standard_normal(int(outside.sum()))
        outside = np.abs(kernel) > 2
    layer.kernel.assign(0.02 * kernel)
    layer.bias.assign(np.zeros(layer.bias.shape))


def _predict(
    model: keras.Model,
    text_encoder: TextPairEncoder,
    examples: Examples,
    batch_size: int,
    placement: Placement,
) -> np.ndarray:
    """The model's outputs for `examples`, in batches padded to whole ones (JAX shards them),
    all of them on every worker or process."""
    data = text_encoder.dataset(examples, batch_size, pad=True)
    outputs = placement.predict(model, data, batch_size)
    return np.asarray(outputs, dtype=np.float64)[: len(examples)]
