"""WordPiece vocabularies: load and check a vocab.txt, or learn one from a corpus.

A vocab.txt holds one token per line, the line number being the id (Google's layout). kbert needs
`[PAD]` at id 0 (the padding id of the record format) and `[UNK] [CLS] [SEP] [MASK]` somewhere;
Google's bert-base 30522-token files qualify as they are.

Learning uses Hugging Face `tokenizers`' WordPiece trainer (Rust, multi-threaded): on the 2-core
benchmark machine it learned an 8k vocab from a 2 MB sample in 1.5 s where tensorflow-text's
`bert_vocab_from_dataset` took 34 s, and a 30k vocab from 10 MB in 3-4 s
(benchmarks/create_data.py).
Unlike the bare trainer, `learn_vocab` gives the same vocab.txt, byte for byte, for the same corpus.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import logging
import os
import re
import string
import tempfile
import time
import unicodedata
from collections.abc import Iterable, Iterator, Sequence

from kbert.io import write_atomically

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
    than requested (`VocabResult.vocab_size` says how many). The same sentences always give the
    same file; the sentences are spooled once to a temporary file in $TMPDIR (as much disk as
    the corpus).

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
    with tempfile.TemporaryDirectory(prefix="kbert-vocab-") as spool_dir:
        spool = os.path.join(spool_dir, "sentences.txt")
        alphabet, continuations = _spool_and_count_characters(
            counter, tokenizer.normalizer, do_lower_case, spool, limit_alphabet
        )
        if counter.count == 0 or not alphabet:
            raise ValueError("the corpus holds no text to learn a vocabulary from")
        # HF's trainer numbers the "##c" pieces in hash-map order, which breaks ties between merges
        # differently on every run (huggingface/tokenizers#1794); giving it the alphabet and those
        # pieces up front fixes their ids, so the same corpus always gives the same vocab.
        tokenizer.train_from_iterator(
            _batches(_spooled_lines(spool)),
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            limit_alphabet=len(alphabet),
            initial_alphabet=alphabet,
            special_tokens=[*SPECIAL_TOKENS, *continuations],
            show_progress=False,
            wordpieces_prefix=WORDPIECE_PREFIX,
        )
    seconds = time.perf_counter() - start
    learned = [
        token for token, _ in sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    ]
    first = [*SPECIAL_TOKENS, *alphabet, *continuations]
    placed = set(first)
    tokens = first + [token for token in learned if token not in placed]
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
    return write_atomically(vocab_file, "\n".join(tokens) + "\n")


class _Counter:
    """Counts what the trainer consumed (an empty corpus is reported, not a silent tiny vocab)."""

    def __init__(self, items: Iterable[str]):
        self._items = items
        self.count = 0

    def __iter__(self) -> Iterator[str]:
        for item in self._items:
            self.count += 1
            yield item


# Control and format characters: BertNormalizer removes them.
_REMOVED_CATEGORIES = ("Cc", "Cf", "Cn", "Co")


def _is_punctuation(char: str) -> bool:
    """BertPreTokenizer's punctuation: ASCII punctuation or any Unicode P* character."""
    return char in string.punctuation or unicodedata.category(char).startswith("P")


def _spool_and_count_characters(
    sentences: Iterable[str],
    normalizer,
    do_lower_case: bool,
    spool: str,
    limit_alphabet: int,
    batch_chars: int = 1 << 20,
) -> tuple[list[str], list[str]]:
    """Write the sentences one per line to `spool` and return (alphabet, "##" pieces).

    The alphabet is the `limit_alphabet` most frequent characters of the normalized text (ties by
    code point), the pieces are "##c" for each of them that occurs after the start of a word.
    """
    counts: collections.Counter = collections.Counter()
    inside_words: set[str] = set()
    punctuation: set[str] = set()
    seen: set[str] = set()

    def count(batch: list[str]) -> None:
        # ASCII needs only lower-casing (its control characters are dropped from the counts below);
        # the rest goes through the tokenizer's own normalizer, which is much slower.
        ascii_text = "\n".join(sentence for sentence in batch if sentence.isascii())
        text = (
            (ascii_text.lower() if do_lower_case else ascii_text)
            + "\n"
            + normalizer.normalize_str(
                "\n".join(sentence for sentence in batch if not sentence.isascii())
            )
        )
        counts.update(text)
        present = set(text)
        punctuation.update(char for char in present - seen if _is_punctuation(char))
        seen.update(present)
        pending = {char for char in present - inside_words - punctuation if not char.isspace()}
        if pending:
            # A character is inside a word when the one before it is neither space nor punctuation.
            word_char = "[^\\s" + "".join(map(re.escape, punctuation)) + "]"
            found = re.findall(f"[{''.join(map(re.escape, pending))}](?<={word_char}.)", text)
            inside_words.update(found)

    with open(spool, "w", encoding="utf-8", newline="\n") as f:
        batch: list[str] = []
        size = 0
        for sentence in sentences:
            sentence = sentence.replace("\n", " ")
            f.write(sentence + "\n")
            batch.append(sentence)
            size += len(sentence)
            if size >= batch_chars:
                count(batch)
                batch, size = [], 0
        if batch:
            count(batch)
    ranked = sorted(
        (
            char
            for char in counts
            if not char.isspace() and unicodedata.category(char) not in _REMOVED_CATEGORIES
        ),
        key=lambda c: (-counts[c], c),
    )
    alphabet = sorted(ranked[:limit_alphabet])
    continuations = [WORDPIECE_PREFIX + char for char in alphabet if char in inside_words]
    return alphabet, continuations


def _spooled_lines(spool: str) -> Iterator[str]:
    with open(spool, encoding="utf-8", newline="\n") as f:
        for line in f:
            yield line[:-1] if line.endswith("\n") else line


def _batches(items: Iterable[str], size: int = 1000) -> Iterator[list[str]]:
    batch: list[str] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
