"""WordPiece vocabularies: load and check a vocab.txt, or learn one from a corpus.

A vocab.txt holds one token per line, the line number being the id (Google's layout). kbert needs
`[PAD]` at id 0 (the padding id of the record format) and `[UNK] [CLS] [SEP] [MASK]` somewhere;
Google's bert-base 30522-token files qualify as they are.

Learning uses Hugging Face `tokenizers`' WordPiece trainer (Rust, multi-threaded): on the 2-core
benchmark machine it learned an 8k vocab from a 2 MB sample in 1.5 s where tensorflow-text's
`bert_vocab_from_dataset` took 34 s, and a 30k vocab from 10 MB in ~9 s (benchmarks/create_data.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import time
from typing import Iterable, Iterator, Sequence

PAD = "[PAD]"
UNK = "[UNK]"
CLS = "[CLS]"
SEP = "[SEP]"
MASK = "[MASK]"
SPECIAL_TOKENS = (PAD, UNK, CLS, SEP, MASK)
REQUIRED_TOKENS = (UNK, CLS, SEP, MASK)
WORDPIECE_PREFIX = "##"

logger = logging.getLogger(__name__)


def _open_binary(path: str, mode: str = "rb"):
    """A local file through Python's fast I/O, anything else (gs://...) through tf.io.gfile."""
    if "://" not in path:
        return open(path, mode)
    import tensorflow as tf  # only remote paths need TensorFlow's file systems

    return tf.io.gfile.GFile(path, mode)


def is_special_token(token: str) -> bool:
    """True for bracketed tokens such as `[CLS]`, `[MASK]`, `[unused7]` (never masked or sampled)."""
    return len(token) > 2 and token.startswith("[") and token.endswith("]")


def load_vocab(vocab_file: str) -> list[str]:
    """Read and check a vocab.txt; returns its tokens in id order.

    Args:
        vocab_file: path of a vocab.txt (one token per line, Google's layout).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is unreadable, empty, has duplicates, lacks `[PAD]` at id 0 or one of
            `[UNK] [CLS] [SEP] [MASK]`.

    Examples:
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "vocab.txt")
    >>> _ = open(path, "w").write("[PAD]\\n[UNK]\\n[CLS]\\n[SEP]\\n[MASK]\\nhello\\n")
    >>> load_vocab(path)[5]
    'hello'
    """
    tokens = _read_vocab_lines(vocab_file)
    check_vocab(tokens, vocab_file)
    return tokens


def _read_vocab_lines(vocab_file: str) -> list[str]:
    try:
        with _open_binary(vocab_file) as f:
            data = f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"--vocab_file {vocab_file}: no such file") from None
    except (OSError, IsADirectoryError) as e:
        raise ValueError(f"--vocab_file {vocab_file}: cannot read it ({e})") from None
    if "://" in vocab_file and not isinstance(data, bytes):
        data = data.encode("utf-8")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(f"--vocab_file {vocab_file}: not UTF-8 text ({e})") from None
    # Google's load_vocab strips each line; a trailing newline does not make an extra token.
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.strip() for line in lines]


def check_vocab(tokens: Sequence[str], source: str = "vocab") -> None:
    """Raise ValueError unless `tokens` is a usable BERT vocabulary (see `load_vocab`)."""
    if not tokens:
        raise ValueError(f"--vocab_file {source}: empty vocabulary")
    if tokens[0] != PAD:
        raise ValueError(
            f"--vocab_file {source}: id 0 must be {PAD} (the padding id of the records), "
            f"found {tokens[0]!r}"
        )
    present = set(tokens)
    missing = [t for t in REQUIRED_TOKENS if t not in present]
    if missing:
        raise ValueError(f"--vocab_file {source}: lacks required token(s) {' '.join(missing)}")
    if len(present) != len(tokens):
        seen: dict[str, int] = {}
        for i, token in enumerate(tokens):
            if token in seen:
                raise ValueError(
                    f"--vocab_file {source}: token {token!r} appears twice (ids {seen[token]} and {i})"
                )
            seen[token] = i


def vocab_sha256(vocab_file: str) -> str:
    """sha256 of the vocab file's bytes (what the metadata records to tie records to a vocab)."""
    digest = hashlib.sha256()
    with _open_binary(vocab_file) as f:
        data = f.read()
    digest.update(data if isinstance(data, bytes) else data.encode("utf-8"))
    return digest.hexdigest()


@dataclasses.dataclass
class VocabResult:
    """What `learn_vocab` produced."""

    vocab_file: str
    vocab_size: int
    requested_size: int
    do_lower_case: bool
    num_sentences: int
    seconds: float
    learner: str = "huggingface tokenizers WordPieceTrainer"


def learn_vocab(
    sentences: Iterable[str],
    vocab_file: str,
    vocab_size: int = 30522,
    do_lower_case: bool = True,
    min_frequency: int = 2,
    limit_alphabet: int = 1000,
) -> VocabResult:
    """Learn a WordPiece vocabulary from sentences and write it as vocab.txt (atomically).

    Normalisation matches the tokenizer that will use the vocab: with `do_lower_case` text is
    lower-cased and accents stripped (Google's uncased models), otherwise kept as is.
    `[PAD]` gets id 0, then `[UNK] [CLS] [SEP] [MASK]`. A small corpus may give fewer tokens
    than requested (`VocabResult.vocab_size` says how many).

    Args:
        sentences: iterable of text (sentences or whole documents).
        vocab_file: where to write vocab.txt.
        vocab_size: requested number of tokens, special tokens included.
        do_lower_case: learn an uncased vocabulary.
        min_frequency: a merge must occur at least this often.
        limit_alphabet: at most this many single characters are kept.

    Examples:
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "vocab.txt")
    >>> text = ["The cat sat on the mat.", "A dog sat on the log."] * 50
    >>> result = learn_vocab(text, path, vocab_size=60)
    >>> open(path).read().split("\\n")[:2]
    ['[PAD]', '[UNK]']
    """
    if vocab_size < len(SPECIAL_TOKENS) + 1:
        raise ValueError(f"--vocab_size must be > {len(SPECIAL_TOKENS)}, got {vocab_size}")
    from tokenizers.implementations import BertWordPieceTokenizer

    counter = _Counter(sentences)
    tokenizer = BertWordPieceTokenizer(
        clean_text=True,
        handle_chinese_chars=True,
        strip_accents=do_lower_case,
        lowercase=do_lower_case,
        wordpieces_prefix=WORDPIECE_PREFIX,
    )
    start = time.perf_counter()
    tokenizer.train_from_iterator(
        _batches(counter),
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        limit_alphabet=limit_alphabet,
        special_tokens=list(SPECIAL_TOKENS),
        show_progress=False,
        wordpieces_prefix=WORDPIECE_PREFIX,
    )
    seconds = time.perf_counter() - start
    if counter.count == 0:
        raise ValueError("the corpus holds no text to learn a vocabulary from")
    vocab = tokenizer.get_vocab()
    tokens = [token for token, _ in sorted(vocab.items(), key=lambda item: item[1])]
    check_vocab(tokens, "learned vocabulary")
    write_vocab(tokens, vocab_file)
    logger.info("learned %d tokens from %d sentences in %.1fs", len(tokens), counter.count, seconds)
    return VocabResult(
        vocab_file=vocab_file,
        vocab_size=len(tokens),
        requested_size=vocab_size,
        do_lower_case=do_lower_case,
        num_sentences=counter.count,
        seconds=seconds,
    )


def write_vocab(tokens: Sequence[str], vocab_file: str) -> str:
    """Write tokens one per line (id = line number) atomically; returns the path."""
    directory = os.path.dirname(vocab_file)
    if directory and "://" not in vocab_file:
        os.makedirs(directory, exist_ok=True)
    tmp = vocab_file + ".incomplete"
    with _open_binary(tmp, "wb") as f:
        f.write(("\n".join(tokens) + "\n").encode("utf-8"))
    if "://" in vocab_file:
        import tensorflow as tf

        tf.io.gfile.rename(tmp, vocab_file, overwrite=True)
    else:
        os.replace(tmp, vocab_file)
    return vocab_file


class _Counter:
    """Counts what the trainer consumed (so an empty corpus is reported, not a silent tiny vocab)."""

    def __init__(self, items: Iterable[str]):
        self._items = items
        self.count = 0

    def __iter__(self) -> Iterator[str]:
        for item in self._items:
            self.count += 1
            yield item


def _batches(items: Iterable[str], size: int = 1000) -> Iterator[list[str]]:
    batch: list[str] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
