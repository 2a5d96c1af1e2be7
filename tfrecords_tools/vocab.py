"""WordPiece vocabularies: learn a vocab.txt from a corpus, write one, load and check one.

Loading and checking are `kbert.vocabulary`'s (the one definition of the vocab.txt rules, shared
with kbert's dynamic masking and serving signature); their names are importable from here too.

Learning uses Hugging Face `tokenizers`' WordPiece trainer (Rust, multi-threaded): on the 2-core
benchmark machine it learned an 8k vocab from a 2 MB sample in 1.5 s where tensorflow-text's
`bert_vocab_from_dataset` took 34 s, and a 30k vocab from 10 MB in 3-4 s
(benchmarks/create_data.py).
Unlike the bare trainer, `learn_vocab` gives the same vocab.txt, byte for byte, for the same corpus.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import re
import string
import sys
import tempfile
import time
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from kbert.errors import InputError, SettingError
from kbert.io import write_atomically

# The vocab.txt rules live in kbert.vocabulary; these names stay importable from here.
from kbert.vocabulary import (
    CLS,
    MASK,
    PAD,
    SEP,
    SPECIAL_TOKENS,
    UNK,
    check_vocab,
    is_special_token,
    vocab_sha256,
)
from kbert.vocabulary import read_vocab as load_vocab

WORDPIECE_PREFIX = "##"

__all__ = [
    "CLS",
    "MASK",
    "PAD",
    "SEP",
    "SPECIAL_TOKENS",
    "UNK",
    "WORDPIECE_PREFIX",
    "VocabResult",
    "check_vocab",
    "is_special_token",
    "learn_vocab",
    "load_vocab",
    "vocab_sha256",
    "write_vocab",
]

logger = logging.getLogger(__name__)


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
    progress: Callable[..., Any] | None = None,
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
        progress: reports the passes over the sentences, called like `tqdm.tqdm` (e.g. that, or
            `kbert.progress.progress`); on a terminal the trainer also shows its own bars.

    Examples:
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "vocab.txt")
    >>> text = ["The cat sat on the mat.", "A dog sat on the log."] * 50
    >>> result = learn_vocab(text, path, vocab_size=60)
    >>> open(path).read().split("\\n")[:2]
    ['[PAD]', '[UNK]']
    """
    if vocab_size < len(SPECIAL_TOKENS) + 1:
        raise SettingError(f"--vocab_size must be > {len(SPECIAL_TOKENS)}, got {vocab_size}")
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
        spooled = (
            counter if progress is None else progress(counter, desc="reading", unit="sentences")
        )
        alphabet, continuations = _spool_and_count_characters(
            spooled, tokenizer.normalizer, do_lower_case, spool, limit_alphabet
        )
        if counter.count == 0 or not alphabet:
            raise InputError("the corpus holds no text to learn a vocabulary from")
        # HF's trainer numbers the "##c" pieces in hash-map order, which breaks ties between merges
        # differently on every run (huggingface/tokenizers#1794); giving it the alphabet and those
        # pieces up front fixes their ids, so the same corpus always gives the same vocab.
        # The trainer's bars draw only on a terminal (and add blank lines to stdout), so a log
        # file gets the progress of feeding it instead.
        trainer_bars = progress is not None and sys.stderr.isatty() and sys.stdout.isatty()
        lines = _spooled_lines(spool)
        if progress is not None and not trainer_bars:
            lines = progress(lines, desc="counting words", total=counter.count, unit="sentences")
        tokenizer.train_from_iterator(
            _batches(lines),
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            limit_alphabet=len(alphabet),
            initial_alphabet=alphabet,
            special_tokens=[*SPECIAL_TOKENS, *continuations],
            show_progress=trainer_bars,
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


if __name__ == "__main__":
    # `python -m tfrecords_tools.vocab ...` is `kbert vocab` with the same flags.
    from kbert.cli import main

    sys.exit(main(["vocab", *sys.argv[1:]]))
