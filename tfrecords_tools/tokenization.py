"""BERT tokenization with exactly Google's / Hugging Face's BertTokenizer semantics, in Rust.

Google's `FullTokenizer` = BasicTokenizer (control characters removed, whitespace normalised,
CJK characters split out, lower-case + NFD accent stripping when uncased, punctuation split) then
greedy longest-match-first WordPiece with `##` continuations, where a word longer than
`max_input_chars_per_word` (Google: 200) or not coverable by the vocab becomes `[UNK]`.
Hugging Face `tokenizers` implements the same pipeline (BertNormalizer + BertPreTokenizer +
WordPiece) in Rust; this module configures it with Google's word limit (HF's default is 100) and
without added special tokens, so literal text such as "[MASK]" is split like Google does.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence

import numpy as np

from tfrecords_tools.vocab import UNK, WORDPIECE_PREFIX, load_vocab

GOOGLE_MAX_INPUT_CHARS_PER_WORD = 200

# For ASCII text Google's BasicTokenizer reduces to: drop control characters, split on whitespace,
# lower-case, split off each punctuation character (ASCII 33-47, 58-64, 91-96, 123-126). The ASCII
# texts of a batch are joined by NUL (itself a control character, so no text keeps one) and split
# into words by one regex over the whole batch.
_SEPARATOR = b"\x00"
_ASCII_CONTROL = bytes([*range(1, 9), 11, 12, *range(14, 32), 127])
_ASCII_WORD = re.compile(rb"[A-Za-z0-9]+|[!-/:-@\[-`{-~]|\x00")
_WORD_CACHE_SIZE = 1_000_000


def build_tokenizer(
    tokens: Sequence[str],
    do_lower_case: bool = True,
    max_input_chars_per_word: int = GOOGLE_MAX_INPUT_CHARS_PER_WORD,
):
    """A `tokenizers.Tokenizer` with Google's BERT tokenization for this vocab (no special tokens).

    Args:
        tokens: the vocabulary in id order.
        do_lower_case: lower-case and strip accents (uncased models).
        max_input_chars_per_word: longer words become `[UNK]` (Google: 200).

    Examples:
    >>> tok = build_tokenizer(["[PAD]", "[UNK]", "un", "##aff", "##able", ","], do_lower_case=True)
    >>> tok.encode("Unaffable,", add_special_tokens=False).tokens
    ['un', '##aff', '##able', ',']
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

    model = models.WordPiece(
        {token: i for i, token in enumerate(tokens)},
        unk_token=UNK,
        max_input_chars_per_word=max_input_chars_per_word,
        continuing_subword_prefix=WORDPIECE_PREFIX,
    )
    tokenizer = Tokenizer(model)
    tokenizer.normalizer = normalizers.BertNormalizer(
        clean_text=True,
        handle_chinese_chars=True,
        strip_accents=do_lower_case,
        lowercase=do_lower_case,
    )
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix=WORDPIECE_PREFIX)
    return tokenizer


class WordPieceEncoder:
    """Batched text -> ids with exactly `build_tokenizer`'s result, several times faster on ASCII.

    Hugging Face's pipeline tracks character alignments we do not need and runs at ~1 MB/s per
    core here. The ASCII texts of a batch (most English sentences) are therefore split into words
    by one C-level regex pass implementing Google's BasicTokenizer rules for ASCII, and each
    distinct word is WordPiece-tokenized once by the Rust model and remembered; other texts take
    the full Rust pipeline. Tests check both paths against Hugging Face's BertWordPieceTokenizer
    and Google's rules.

    Args:
        tokens: the vocabulary in id order.
        do_lower_case: lower-case and strip accents (uncased models).
        max_input_chars_per_word: longer words become `[UNK]` (Google: 200).
    """

    def __init__(
        self,
        tokens: Sequence[str],
        do_lower_case: bool = True,
        max_input_chars_per_word: int = GOOGLE_MAX_INPUT_CHARS_PER_WORD,
    ):
        from tokenizers import Tokenizer, models

        self.do_lower_case = do_lower_case
        self.tokenizer = build_tokenizer(tokens, do_lower_case, max_input_chars_per_word)
        self._words = Tokenizer(
            models.WordPiece(
                {token: i for i, token in enumerate(tokens)},
                unk_token=UNK,
                max_input_chars_per_word=max_input_chars_per_word,
                continuing_subword_prefix=WORDPIECE_PREFIX,
            )
        )
        self._cache: dict[bytes, list[int]] = {}

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """WordPiece ids of each text (no [CLS]/[SEP] added)."""
        ids, lengths = self.encode_flat(texts)
        return (
            [piece.tolist() for piece in np.split(ids, np.cumsum(lengths)[:-1])]
            if len(texts)
            else []
        )

    def encode_flat(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """All texts' WordPiece ids back to back (int32) and the number of ids of each text."""
        fast = list(map(str.isascii, texts))
        parts: list[tuple[np.ndarray, np.ndarray]] = []
        if any(fast):
            parts.append(self._encode_ascii([text for text, ascii in zip(texts, fast) if ascii]))
        if not all(fast):
            encodings = self.tokenizer.encode_batch(
                [text for text, ascii in zip(texts, fast) if not ascii], add_special_tokens=False
            )
            ids = [encoding.ids for encoding in encodings]
            lengths = np.fromiter(map(len, ids), np.int64, len(ids))
            parts.append(
                (np.fromiter(itertools.chain.from_iterable(ids), np.int32, lengths.sum()), lengths)
            )
        if len(parts) < 2:
            return parts[0] if parts else (np.zeros(0, np.int32), np.zeros(0, np.int64))
        # Both kinds: put each text's ids back in the texts' order.
        order = np.flatnonzero(fast).tolist() + np.flatnonzero(np.logical_not(fast)).tolist()
        by_part = np.concatenate([parts[0][1], parts[1][1]])
        lengths = np.empty(len(texts), np.int64)
        lengths[order] = by_part
        starts = np.empty(len(texts), np.int64)
        starts[order] = np.cumsum(by_part) - by_part
        gather = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths) + np.arange(
            lengths.sum()
        )
        return np.concatenate([parts[0][0], parts[1][0]])[gather], lengths

    def _encode_ascii(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        joined = _SEPARATOR.join(text.encode("ascii") for text in texts)
        if joined.count(_SEPARATOR) != len(texts) - 1:  # a text holds NUL: drop it, as Google does
            joined = _SEPARATOR.join(text.replace("\x00", "").encode("ascii") for text in texts)
        data = joined.translate(None, _ASCII_CONTROL)
        words = _ASCII_WORD.findall(data.lower() if self.do_lower_case else data)
        cache = self._cache
        missing = set(words).difference(cache)
        if missing:
            if len(cache) + len(missing) > _WORD_CACHE_SIZE:
                cache.clear()
                missing = set(words)
            cache[_SEPARATOR] = []
            missing.discard(_SEPARATOR)
            new = sorted(missing)
            encodings = self._words.encode_batch(
                [word.decode("ascii") for word in new], add_special_tokens=False
            )
            cache.update(zip(new, (encoding.ids for encoding in encodings)))
        pieces = list(map(cache.__getitem__, words))
        ends = np.concatenate(
            [[0], np.cumsum(np.fromiter(map(len, pieces), np.int64, len(pieces)))]
        )
        separators = np.flatnonzero(np.fromiter(map(_SEPARATOR.__eq__, words), bool, len(words)))
        bounds = np.concatenate([[0], ends[separators], ends[-1:]])
        ids = np.fromiter(itertools.chain.from_iterable(pieces), np.int32, int(bounds[-1]))
        return ids, np.diff(bounds)


class FullTokenizer:
    """Google's `tokenization.FullTokenizer` API over the Rust tokenizer, plus batched `encode`.

    Args:
        vocab_file: a vocab.txt (checked: `[PAD]` at 0, `[UNK] [CLS] [SEP] [MASK]` present).
        do_lower_case: lower-case and strip accents (uncased models).
        max_input_chars_per_word: longer words become `[UNK]` (Google: 200).

    Examples:
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "vocab.txt")
    >>> words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world", "##s", "!"]
    >>> _ = open(path, "w").write("\\n".join(words) + "\\n")
    >>> tokenizer = FullTokenizer(path, do_lower_case=True)
    >>> tokenizer.tokenize("Héllo worlds!")
    ['hello', 'world', '##s', '!']
    >>> tokenizer.encode(["hello world", "worlds"])
    [[5, 6], [6, 7]]
    """

    def __init__(
        self,
        vocab_file: str,
        do_lower_case: bool = True,
        max_input_chars_per_word: int = GOOGLE_MAX_INPUT_CHARS_PER_WORD,
    ):
        self.vocab_file = vocab_file
        self.do_lower_case = do_lower_case
        self.inv_vocab = load_vocab(vocab_file)
        self.vocab = {token: i for i, token in enumerate(self.inv_vocab)}
        self._encoder = WordPieceEncoder(self.inv_vocab, do_lower_case, max_input_chars_per_word)
        self._tokenizer = self._encoder.tokenizer

    @property
    def vocab_size(self) -> int:
        """Number of tokens in the vocabulary."""
        return len(self.inv_vocab)

    def tokenize(self, text: str) -> list[str]:
        """Text -> word pieces (strings), as Google's `FullTokenizer.tokenize`."""
        return self._tokenizer.encode(text, add_special_tokens=False).tokens

    def convert_tokens_to_ids(self, tokens: Sequence[str]) -> list[int]:
        """Word pieces -> ids; an unknown piece raises KeyError as in Google's code."""
        return [self.vocab[token] for token in tokens]

    def convert_ids_to_tokens(self, ids: Sequence[int]) -> list[str]:
        """Ids -> word pieces."""
        return [self.inv_vocab[int(i)] for i in ids]

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Batched: each text -> its WordPiece ids (no [CLS]/[SEP] added)."""
        return self._encoder.encode(list(texts))
