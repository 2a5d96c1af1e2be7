"""The vocab.txt rules, defined once: BERT's special tokens, reading and checking a file, its hash.

A vocab.txt holds one token per line, the line number being the id (Google's layout). kbert needs
`[PAD]` at id 0 (the padding id of the records) and `[UNK] [CLS] [SEP] [MASK]` somewhere; Google's
bert-base 30522-token files qualify as they are. `kbert` (dynamic masking, serving) and
`tfrecords_tools` (tokenization, record writing, inspection) read vocabularies only through here.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
from collections.abc import Sequence
from typing import Any

from kbert.errors import InputError, MissingFileError, SettingError

PAD = "[PAD]"
UNK = "[UNK]"
CLS = "[CLS]"
SEP = "[SEP]"
MASK = "[MASK]"
SPECIAL_TOKENS = (PAD, UNK, CLS, SEP, MASK)
# The vocabulary's file name wherever kbert keeps a copy: beside the shards `kbert create-data`
# wrote, in a run directory, in checkpoint and Hugging Face folders.
VOCAB_FILENAME = "vocab.txt"


def is_special_token(token: str) -> bool:
    """True for bracketed tokens such as `[CLS]`, `[MASK]`, `[unused7]` (never masked or sampled).

    Examples:
    >>> is_special_token("[unused7]"), is_special_token("paris"), is_special_token("[]")
    (True, False, False)
    """
    return len(token) > 2 and token.startswith("[") and token.endswith("]")


def read_vocab(vocab_file: str) -> list[str]:
    """Read and check a vocab.txt; returns its tokens in id order.

    Lines end at "\\n" only (as for TensorFlow's lookup tables; `str.splitlines` also breaks at
    U+2028, U+0085, ..., which would shift every later id) and are stripped as Google's
    `load_vocab` does, so CRLF files read the same. A UTF-8 byte-order mark is no part of `[PAD]`.

    Args:
        vocab_file: path of a vocab.txt (any `tf.io.gfile` path, e.g. `gs://`).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is unreadable, not UTF-8, empty, has a blank line or a duplicate
            token, lacks `[PAD]` at id 0 or one of `[UNK] [CLS] [SEP] [MASK]`.

    Examples:
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "vocab.txt")
    >>> _ = open(path, "w").write("[PAD]\\n[UNK]\\n[CLS]\\n[SEP]\\n[MASK]\\nhello\\n")
    >>> read_vocab(path)[5]
    'hello'
    """
    try:
        text = _read_bytes(vocab_file).decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise InputError(f"{vocab_file}: not UTF-8 text ({e})") from None
    lines = text.split("\n")
    # The newline that ends the last line does not start another token.
    if lines[-1] == "":
        lines.pop()
    tokens = [line.strip() for line in lines]
    check_vocab(tokens, vocab_file)
    return tokens


def check_vocab(tokens: Sequence[str], source: str = "vocab") -> None:
    """Raise ValueError, naming `source` and the line, unless `tokens` is a usable BERT vocabulary.

    Args:
        tokens: the vocabulary in id order.
        source: what to name in the error (the file's path).

    Examples:
    >>> check_vocab(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a"])
    """
    if not tokens:
        raise InputError(f"{source}: empty vocabulary")
    if tokens[0] != PAD:
        raise InputError(
            f"{source}: id 0 must be {PAD} (the padding id of the records), found {tokens[0]!r}"
        )
    seen: dict[str, int] = {}
    for i, token in enumerate(tokens):
        # TensorFlow's lookup tables (the serving signature) refuse empty lines.
        if not token:
            raise InputError(
                f"{source}: line {i + 1} is blank (one token per line, no blank lines)"
            )
        if token in seen:
            raise InputError(
                f"{source}: token {token!r} appears twice (ids {seen[token]} and {i}) on lines "
                f"{seen[token] + 1} and {i + 1}"
            )
        seen[token] = i
    missing = [t for t in SPECIAL_TOKENS if t not in seen]
    if missing:
        raise InputError(
            f"{source}: vocabulary lacks required token(s) {' '.join(missing)} (BERT's special "
            f"tokens are {' '.join(SPECIAL_TOKENS)})"
        )


def vocab_sha256(vocab_file: str) -> str:
    """sha256 of the vocab file's bytes (what the metadata records to tie records to a vocab).

    Args:
        vocab_file: path of a vocab.txt (any `tf.io.gfile` path).

    Examples:
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "vocab.txt")
    >>> _ = open(path, "wb").write(b"")
    >>> vocab_sha256(path)[:12]
    'e3b0c44298fc'
    """
    return hashlib.sha256(_read_bytes(vocab_file)).hexdigest()


def _read_bytes(path: str) -> bytes:
    """The file's bytes; local files through Python's I/O so that the TensorFlow-free tools
    (`kbert learn-vocab`) do not start TensorFlow, anything else (gs://...) through tf.io.gfile."""
    try:
        if "://" not in path:
            with open(path, "rb") as f:
                return f.read()
        import tensorflow as tf

        if not tf.io.gfile.exists(path):
            raise FileNotFoundError(path)
        with tf.io.gfile.GFile(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise MissingFileError(f"{path}: no such vocabulary file (expected a vocab.txt)") from None
    except OSError as e:
        raise InputError(f"{path}: cannot read it ({e})") from None


def kept_vocab(model_or_run: str) -> str | None:
    """The vocab.txt a kbert run keeps: inside a run directory, or beside a `.keras` file or
    weight checkpoint; None when there is none.

    Examples:
    >>> import os, tempfile
    >>> run = tempfile.mkdtemp()
    >>> kept_vocab(run) is None
    True
    >>> _ = open(os.path.join(run, VOCAB_FILENAME), "w").write("[PAD]\\n")
    >>> kept_vocab(os.path.join(run, "model.keras")) == os.path.join(run, VOCAB_FILENAME)
    True
    """
    from kbert.io import exists, isdir

    model_or_run = model_or_run.rstrip("/")
    directory = model_or_run if isdir(model_or_run) else posixpath.dirname(model_or_run)
    path = posixpath.join(directory, VOCAB_FILENAME)
    return path if exists(path) else None


def keep_vocab(directory: str, vocab_file: str) -> str | None:
    """Copy `vocab_file` into `directory` as vocab.txt (atomically) unless one is there; returns
    the copy, or None when a different vocab.txt is there (a user's own file is never replaced).

    Examples:
    >>> import os, tempfile
    >>> source, kept = tempfile.mkdtemp(), tempfile.mkdtemp()
    >>> _ = open(os.path.join(source, "my-vocab.txt"), "w").write("[PAD]\\n")
    >>> keep_vocab(kept, os.path.join(source, "my-vocab.txt")) == os.path.join(kept, VOCAB_FILENAME)
    True
    """
    from kbert.io import exists, write_atomically

    destination = posixpath.join(directory, VOCAB_FILENAME)
    if exists(destination):
        return destination if vocab_sha256(destination) == vocab_sha256(vocab_file) else None
    return write_atomically(destination, _read_bytes(vocab_file))


def resolve_vocab_file(vocab_file: str | None, model_or_run: Any) -> str:
    """`vocab_file` when given, else the vocab.txt the run keeps (`kept_vocab`); an error naming
    the model and `vocab_file` when there is none.

    Examples:
    >>> resolve_vocab_file("my/vocab.txt", "runs/x")
    'my/vocab.txt'
    """
    if vocab_file:
        return vocab_file
    kept = (
        kept_vocab(os.fspath(model_or_run))
        if isinstance(model_or_run, (str, os.PathLike))
        else None
    )
    if kept is None:
        raise SettingError(
            f"{model_or_run}: no {VOCAB_FILENAME} kept with this model (runs trained on "
            f"`kbert create-data` output keep one); pass the vocabulary it was trained with "
            "(vocab_file, --vocab_file)"
        )
    return kept
