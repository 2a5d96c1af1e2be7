"""Labelled text for fine-tuning: GLUE's TSVs and TSV/CSV/JSONL files with a header, read into
`Examples`, and the `tf.data` input that tokenizes them in the graph (kbert's `ServingTextEncoder`:
Hugging Face's BERT tokenization, Google `run_classifier`'s longest-first truncation, static
shapes).

Every malformed file is a `KbertError` naming the file and the row (1 is the header).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import posixpath
from collections.abc import Sequence

import tensorflow as tf

from kbert import features
from kbert.errors import InputError, MissingFileError, SettingError
from kbert.serving_tokenizer import ServingTextEncoder
from kbert.vocabulary import read_vocab

FORMATS = ("tsv", "csv", "jsonl")
# GLUE's own column names, tried when the default columns are absent (MRPC, QQP, QNLI, MNLI,
# STS-B; TFDS' MNLI): `text`, `text_pair`, `label` (TFDS' GLUE names every label `label`).
GLUE_COLUMNS = (
    ("#1 String", "#2 String", "Quality"),
    ("question1", "question2", "is_duplicate"),
    ("question", "sentence", "label"),
    ("sentence1", "sentence2", "gold_label"),
    ("sentence1", "sentence2", "score"),
    ("premise", "hypothesis", "label"),
)
DEFAULT_TEXT_COLUMN = "sentence"
DEFAULT_TEXT_PAIR_COLUMN = "sentence2"
DEFAULT_PAIR_TEXT_COLUMN = "sentence1"
DEFAULT_LABEL_COLUMN = "label"
_TOKENIZE_BATCH = 256


@dataclasses.dataclass
class Examples:
    """The rows of one file: texts, optional second texts, raw labels (None: unlabelled).

    Attributes:
        path: the file read.
        text: first segment of each row.
        text_pair: second segment of each row, or None for single sentences.
        labels: the label column's strings, or None when the file has no labels (a test set).
    """

    path: str
    text: list[str]
    text_pair: list[str] | None
    labels: list[str] | None

    def __len__(self) -> int:
        return len(self.text)


def file_format(path: str) -> str:
    """The format of `path` by its extension: "tsv", "csv" or "jsonl" (`.json` too).

    Examples:
    >>> file_format("glue/MRPC/dev.tsv"), file_format("data.json")
    ('tsv', 'jsonl')
    """
    extension = posixpath.splitext(path)[1].lower().lstrip(".")
    if extension in ("json", "jsonl", "ndjson"):
        return "jsonl"
    if extension in ("tsv", "csv"):
        return extension
    raise InputError(f"{path}: unknown file type {extension!r}; expected .tsv, .csv or .jsonl")


def read_examples(
    path: str,
    text_column: str | None = None,
    text_pair_column: str | None = None,
    label_column: str | None = None,
    require_labels: bool = True,
) -> Examples:
    """Read a TSV (GLUE's layout: tab-separated, no quoting), CSV or JSONL file with named columns.

    Without column names: `sentence` (single sentences) or `sentence1`/`sentence2` (pairs) and
    `label`, else GLUE's names (`#1 String`/`#2 String`/`Quality` of MRPC, QQP's, QNLI's, ...).

    Args:
        path: the file (any `tf.io.gfile` path).
        text_column: the first text's column.
        text_pair_column: the second text's column (pairs only).
        label_column: the label's column.
        require_labels: a missing label column is an error (False: a test set, labels None).

    Raises:
        KbertError: the file is empty, a column is missing, or a row lacks a value; the message
            names the file and the row.

    Examples:
    >>> _ = open("dev.tsv", "w").write("sentence\\tlabel\\nIt works .\\t1\\nIt fails .\\t0\\n")
    >>> examples = read_examples("dev.tsv")
    >>> examples.text, examples.labels
    (['It works .', 'It fails .'], ['1', '0'])
    """
    if not tf.io.gfile.exists(path):
        raise MissingFileError(f"{path}: no such file")
    with tf.io.gfile.GFile(path, "rb") as f:
        try:
            content = f.read().decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise InputError(f"{path}: not UTF-8 text ({e})") from None
    rows = list(_rows(path, content))
    if not rows:
        raise InputError(f"{path}: empty file (expected a header row naming the columns)")
    return _examples_of_rows(
        path, rows, text_column, text_pair_column, label_column, require_labels
    )


def tfds_splits(name: str) -> dict[str, str]:
    """The TFDS splits fine-tuning reads as its train, eval and test files: GLUE's `train`,
    `validation` and `test` (MNLI's matched ones).

    Examples:
    >>> tfds_splits("glue/mnli")["eval"], tfds_splits("glue/mrpc")["eval"]
    ('validation_matched', 'validation')
    """
    matched = "_matched" if name.split(":")[0].rstrip("/").endswith("/mnli") else ""
    return {"train": "train", "eval": f"validation{matched}", "test": f"test{matched}"}


def read_tfds_examples(
    name: str,
    split: str,
    data_dir: str | None = None,
    text_column: str | None = None,
    text_pair_column: str | None = None,
    label_column: str | None = None,
    require_labels: bool = True,
) -> Examples:
    """One split of a TFDS dataset (e.g. "glue/mrpc", "validation") read as `read_examples` reads
    a file: its features are the columns, a class label is its index ("0", "1", as GLUE's TSVs).

    Args:
        name: the TFDS name (downloaded and prepared by TFDS on first use).
        split: the TFDS split.
        data_dir: TFDS' data directory.
        text_column, text_pair_column, label_column, require_labels: as `read_examples`; without
            labels (a test split) the label feature is not read (GLUE's test labels are -1).

    Examples:
    >>> import tensorflow_datasets as tfds
    >>> with tfds.testing.mock_data(num_examples=3):
    ...     examples = read_tfds_examples("glue/mrpc", "validation")
    >>> len(examples), examples.text_pair is not None, examples.path
    (3, True, 'glue/mrpc[validation]')
    """
    import tensorflow_datasets as tfds

    path = f"{name}[{split}]"
    try:
        dataset = tfds.load(name, split=split, data_dir=data_dir, shuffle_files=False)
    except Exception as e:  # TFDS raises many types for an unknown name or split
        raise SettingError(f"--tfds_name {name} (split {split}): cannot load it ({e})") from None
    skip = () if require_labels else (label_column or DEFAULT_LABEL_COLUMN,)
    header = [key for key in dataset.element_spec if key not in skip]
    rows: list[tuple[int, list[str] | dict[str, str]]] = [(1, header)]
    for number, example in enumerate(tfds.as_numpy(dataset), start=2):
        rows.append((number, {key: _feature_text(example[key]) for key in header}))
    return _examples_of_rows(
        path, rows, text_column, text_pair_column, label_column, require_labels
    )


def _feature_text(value) -> str:
    """A TFDS feature's value as a file would hold it: text decoded, numbers written out."""
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _examples_of_rows(
    path: str,
    rows: list,
    text_column: str | None,
    text_pair_column: str | None,
    label_column: str | None,
    require_labels: bool,
) -> Examples:
    """`Examples` from (row number, header or row dict) pairs, the header first."""
    header = list(rows[0][1])
    if len(rows) == 1:
        raise InputError(f"{path}: no rows after the header")
    text, pair, label = _columns(path, header, text_column, text_pair_column, label_column)
    if label is None and require_labels:
        raise InputError(
            f"{path}: row 1 (header): no label column {label_column or DEFAULT_LABEL_COLUMN!r}; "
            f"the columns are {', '.join(map(repr, header))} (choose one with --label_column)"
        )
    columns = {"text": text, "text_pair": pair, "label": label}
    values: dict[str, list[str]] = {name: [] for name, column in columns.items() if column}
    for row_number, row in rows[1:]:
        for name, column in columns.items():
            if column is None:
                continue
            value = row.get(column) if isinstance(row, dict) else None
            if value is None or (name == "label" and str(value).strip() == ""):
                raise InputError(f"{path}: row {row_number}: no value in column {column!r}")
            values[name].append(str(value))
    return Examples(path, values["text"], values.get("text_pair"), values.get("label"))


def _rows(path: str, content: str):
    """(row number, header list or row dict) pairs; the header is row 1."""
    kind = file_format(path)
    if kind == "jsonl":
        header: list[str] = []
        number = 1
        for number, line in enumerate(content.split("\n"), start=2):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{path}: row {number - 1}: not a JSON object ({e})") from None
            if not isinstance(row, dict):
                raise InputError(f"{path}: row {number - 1}: not a JSON object")
            if not header:
                header = list(row)
                yield 1, header
            yield number, {k: None if v is None else str(v) for k, v in row.items()}
        return
    # GLUE's TSVs are read as Google's run_classifier reads them: no quoting.
    dialect = dict(delimiter="\t", quoting=csv.QUOTE_NONE) if kind == "tsv" else {}
    reader = csv.reader(io.StringIO(content, newline=""), **dialect)
    header = None
    for number, row in enumerate(reader, start=1):
        if not row or not any(cell.strip() for cell in row):
            continue
        if header is None:
            header = [cell.strip() for cell in row]
            yield number, header
            continue
        yield number, dict(zip(header, row))


def _columns(
    path: str,
    header: Sequence[str],
    text_column: str | None,
    text_pair_column: str | None,
    label_column: str | None,
) -> tuple[str, str | None, str | None]:
    """The (text, text pair, label) column names to read; None where absent."""

    def check(column: str, flag: str) -> str:
        if column not in header:
            raise InputError(
                f"{path}: row 1 (header): no column {column!r} ({flag}); the columns are "
                f"{', '.join(map(repr, header))}"
            )
        return column

    # A missing label column is the caller's to judge (a test set has none).
    label = label_column or DEFAULT_LABEL_COLUMN
    if text_column or text_pair_column:
        text = check(text_column or DEFAULT_TEXT_COLUMN, "--text_column")
        pair = check(text_pair_column, "--text_pair_column") if text_pair_column else None
        return text, pair, label if label in header else None
    if DEFAULT_TEXT_COLUMN in header and DEFAULT_TEXT_PAIR_COLUMN not in header:
        return DEFAULT_TEXT_COLUMN, None, label if label in header else None
    if DEFAULT_PAIR_TEXT_COLUMN in header and DEFAULT_TEXT_PAIR_COLUMN in header:
        glue_label = label
        if not label_column and label not in header:
            glue_label = next((c for c in ("gold_label", "score") if c in header), label)
        return (
            DEFAULT_PAIR_TEXT_COLUMN,
            DEFAULT_TEXT_PAIR_COLUMN,
            glue_label if glue_label in header else None,
        )
    for text, pair, glue_label in GLUE_COLUMNS:
        if text in header and pair in header:
            chosen = label if label_column or glue_label not in header else glue_label
            return text, pair, chosen if chosen in header else None
    raise InputError(
        f"{path}: row 1 (header): no text column: expected {DEFAULT_TEXT_COLUMN!r}, "
        f"{DEFAULT_PAIR_TEXT_COLUMN!r} and {DEFAULT_TEXT_PAIR_COLUMN!r}, or GLUE's names; the "
        f"columns are {', '.join(map(repr, header))} (choose with --text_column, "
        "--text_pair_column)"
    )


def label_ids(examples: Examples, label_list: Sequence[str]) -> list[int]:
    """Each row's index in `label_list`; an unknown label is an error naming the file and row.

    Args:
        examples: labelled examples.
        label_list: the labels, in the classifier's output order.

    Examples:
    >>> label_ids(Examples("dev.tsv", ["a", "b"], None, ["no", "yes"]), ["no", "yes"])
    [0, 1]
    """
    index = {label: i for i, label in enumerate(label_list)}
    ids = []
    for row, label in enumerate(examples.labels or [], start=2):
        if label not in index:
            raise InputError(
                f"{examples.path}: row {row}: unknown label {label!r}; the training labels are "
                f"{', '.join(map(repr, label_list))}"
            )
        ids.append(index[label])
    return ids


def label_values(examples: Examples) -> list[float]:
    """Each row's label as a number (regression); a non-number is an error naming the row.

    Examples:
    >>> label_values(Examples("dev.tsv", ["a", "b"], None, ["3.8", "1"]))
    [3.8, 1.0]
    """
    values = []
    for row, label in enumerate(examples.labels or [], start=2):
        try:
            value = float(label)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise InputError(f"{examples.path}: row {row}: label {label!r} is not a number")
        values.append(value)
    return values


class TextPairEncoder:
    """Texts → `token_ids`, `segment_ids`, `padding_mask` [batch, max_seq_length] for a
    keras-hub BertBackbone, with kbert's tokenizer (`ServingTextEncoder`).

    Args:
        vocab_file: the encoder's vocab.txt.
        max_seq_length: L; pairs are truncated longest-first as Google's run_classifier.
        do_lower_case: strip accents and lower-case (uncased vocabularies).

    Examples:
    >>> words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "it", "works", "."]
    >>> _ = open("vocab.txt", "w").write("\\n".join(words) + "\\n")
    >>> encoder = TextPairEncoder("vocab.txt", 6)
    >>> encoder(tf.constant(["It works ."]), tf.constant([""]))["token_ids"].numpy()
    array([[2, 5, 6, 7, 3, 0]], dtype=int32)
    """

    def __init__(self, vocab_file: str, max_seq_length: int, do_lower_case: bool = True):
        self.tokens = read_vocab(vocab_file)
        self.max_seq_length = max_seq_length
        self.serving_encoder = ServingTextEncoder(
            vocab_file, self.tokens, max_seq_length, 1, do_lower_case=do_lower_case
        )

    def __call__(self, text: tf.Tensor, text_pair: tf.Tensor) -> dict[str, tf.Tensor]:
        """string [batch] twice (an empty second text: a single sentence) → the model inputs."""
        packed = self.serving_encoder(text, text_pair)
        return {
            "token_ids": packed[features.INPUT_IDS],
            "segment_ids": packed[features.SEGMENT_IDS],
            "padding_mask": packed[features.INPUT_MASK],
        }

    def rows(self, examples: Examples, labels: Sequence[float] | None = None) -> tf.data.Dataset:
        """The rows tokenized, in file order: inputs, or (inputs, label, weight 1) with labels.

        Tokenized once, in large batches (the in-graph tokenizer's cost is per call), then
        cached: every pass (epoch) reads the same ids.
        """
        pair = examples.text_pair if examples.text_pair is not None else [""] * len(examples)
        inputs = (
            tf.data.Dataset.from_tensor_slices((examples.text, pair))
            .batch(_TOKENIZE_BATCH)
            .map(self, num_parallel_calls=tf.data.AUTOTUNE)
            .unbatch()
        )
        if labels is not None:
            targets = tf.data.Dataset.from_tensor_slices(list(labels))
            inputs = tf.data.Dataset.zip(inputs, targets).map(lambda x, y: (x, y, 1.0))
        return inputs.cache()

    def batches(
        self,
        rows: tf.data.Dataset,
        count: int,
        batch_size: int,
        shuffle_seed: int | None = None,
        pad: bool = False,
    ) -> tf.data.Dataset:
        """`rows` (from `rows()`, `count` of them) in batches: in file order, or in the order
        `shuffle_seed` fixes — the same order on every pass, since Keras takes a first batch
        before training under a strategy and under JAX (a reshuffling dataset would then train
        on its second order there). `pad` fills the last batch with zero-weight rows (JAX
        shards whole batches evenly); unpadded, the last batch may be smaller.
        """
        if shuffle_seed is not None:
            rows = rows.shuffle(count, seed=shuffle_seed, reshuffle_each_iteration=False)
        missing = -count % batch_size if pad else 0
        if missing:
            # All zeros, the weight too.
            padding = tf.nest.map_structure(
                lambda spec: tf.zeros(spec.shape, spec.dtype), rows.element_spec
            )
            rows = rows.concatenate(tf.data.Dataset.from_tensors(padding).repeat(missing))
        batches = math.ceil(count / batch_size)
        dataset = rows.batch(batch_size).prefetch(2)
        return dataset.apply(tf.data.experimental.assert_cardinality(batches))

    def dataset(
        self,
        examples: Examples,
        batch_size: int,
        labels: Sequence[float] | None = None,
        shuffle_seed: int | None = None,
        pad: bool = False,
    ) -> tf.data.Dataset:
        """Batches of inputs — with labels, (inputs, labels, weights) — in file order, or in the
        fixed order of `shuffle_seed` (see `batches`).

        Args:
            examples: the rows.
            batch_size: sequences per batch.
            labels: one label id or value per row.
            shuffle_seed: shuffle the rows with this seed (training).
            pad: fill the last batch with zero-weight rows (otherwise it may be smaller).
        """
        return self.batches(
            self.rows(examples, labels), len(examples), batch_size, shuffle_seed, pad
        )
