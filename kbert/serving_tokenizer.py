"""In-graph BERT tokenization and input packing built only from ops stock TF Serving links.

`tf_text.FastBertTokenizer` would be one line, but its `FastBertNormalize` /
`FastWordpieceTokenizeWithOffsets` ops are missing from TF Serving builds (tensorflow/serving#2064).
`ServingTextEncoder` composes TensorFlow core string ops with tensorflow-text's
`RegexSplitWithOffsets`, `NormalizeUTF8` and `WordpieceTokenizeWithOffsets` (the `BertTokenizer`
family, linked by the model server) and gives the tokens of Hugging Face's `BertWordPieceTokenizer`,
the tokenizer `tfrecords_tools.tokenization` builds the training data with: Google's BERT rules
(control characters removed, Unicode whitespace, CJK characters and punctuation split, NFD accent
stripping then lower-casing when uncased, greedy longest-match WordPiece). Like Hugging Face's and
unlike Google's, special tokens written in the text (`[MASK]`, `[SEP]`, ...) stay whole, so
`"Paris is the [MASK] of France."` has one `[MASK]` to fill.
"""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf
import tensorflow_text as tf_text

from kbert import features
from kbert.io import write_atomically
from kbert.vocabulary import CLS, MASK, PAD, SEP, SPECIAL_TOKENS, UNK, read_vocab

# The vocab.txt names (defined in kbert.vocabulary) stay importable from here.
__all__ = [
    "CLS",
    "MASK",
    "MAX_BYTES_PER_WORD",
    "PAD",
    "SEP",
    "SPECIAL_TOKENS",
    "UNK",
    "ServingTextEncoder",
    "read_vocab",
    "truncated_pair_lengths",
    "write_vocab",
]
# Google's FullTokenizer turns words longer than 200 characters into [UNK]; tf-text counts bytes.
MAX_BYTES_PER_WORD = 200

# Google's `_is_control` plus Hugging Face's private-use (Co) characters, keeping \t \n \r (which
# are whitespace), and the NUL / U+FFFD that both tokenizers drop.
_CONTROL = r"[\x{0}-\x{8}\x{B}\x{C}\x{E}-\x{1F}\x{7F}-\x{9F}\x{FFFD}]|\p{Cf}|\p{Co}"
# RE2's \s is ASCII only; Google and Hugging Face split on every Unicode space separator.
_WHITESPACE = r"[\s\p{Z}]+"
# Google's `_is_punctuation`: the ASCII symbols and every Unicode P* character.
_PUNCTUATION = r"[!-/]|[:-@]|[\[-`]|[{-~]|\p{P}"
# Google's `_is_chinese_char` blocks: each such character is a word of its own.
_CJK = (
    r"[\x{4E00}-\x{9FFF}]|[\x{3400}-\x{4DBF}]|[\x{20000}-\x{2A6DF}]|[\x{2A700}-\x{2B73F}]"
    r"|[\x{2B740}-\x{2B81F}]|[\x{2B820}-\x{2CEAF}]|[\x{F900}-\x{FAFF}]|[\x{2F800}-\x{2FA1F}]"
)


def write_vocab(tokens: Sequence[str], path: str) -> None:
    """Write tokens one per line (the vocab.txt format), atomically (temporary name, rename)."""
    write_atomically(path, "".join(token + "\n" for token in tokens))


def truncated_pair_lengths(
    len_a: tf.Tensor, len_b: tf.Tensor, budget: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor]:
    """Lengths Google's `truncate_seq_pair` keeps: it drops the last token of the longer segment
    (of B on a tie) until the pair fits in `budget`. Closed form, so it runs on a whole batch.

    Args:
        len_a: int [batch] token counts of segment A.
        len_b: int [batch] token counts of segment B.
        budget: the tokens A and B may hold together (L minus the special tokens).

    Examples:
    >>> keep_a, keep_b = truncated_pair_lengths(
    ...     tf.constant([10, 3, 1]), tf.constant([10, 20, 2]), tf.constant(5))
    >>> keep_a.numpy().tolist(), keep_b.numpy().tolist()
    ([3, 3, 1], [2, 2, 2])
    """
    half_low = budget // 2
    half_high = budget - half_low
    fits = len_a + len_b <= budget
    keep_a = tf.minimum(len_a, tf.maximum(half_high, budget - len_b))
    keep_b = tf.minimum(len_b, tf.maximum(half_low, budget - len_a))
    return tf.where(fits, len_a, keep_a), tf.where(fits, len_b, keep_b)


class ServingTextEncoder(tf.Module):
    """Text → BERT model inputs, in the graph, with ops stock TF Serving links.

    Tokenizes like Hugging Face's `BertWordPieceTokenizer` (Google's BERT tokenization, special
    tokens kept whole) and packs `[CLS] A [SEP] B [SEP]` (or `[CLS] A [SEP]` for an empty B),
    truncating the longer segment first as Google's `truncate_seq_pair`.

    Args:
        vocab_file: a vocab.txt whose tokens are `tokens`; a SavedModel stores it as an asset.
        tokens: the vocabulary in id order (from `read_vocab`).
        max_seq_length: L, the length of the packed inputs.
        max_predictions_per_seq: P, how many `[MASK]` positions are reported (the first P).
        do_lower_case: strip accents and lower-case (uncased vocabularies).

    Examples:
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "vocab.txt")
    >>> tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "cafe", "is", "open", "."]
    >>> write_vocab(tokens, path)
    >>> encoder = ServingTextEncoder(path, tokens, max_seq_length=8, max_predictions_per_seq=2)
    >>> encoder.tokenize(tf.constant(["Café is [MASK]."])).to_list()
    [[b'cafe', b'is', b'[MASK]', b'.']]
    >>> encoder(tf.constant(["Café is [MASK]."]), tf.constant([""]))["masked_lm_positions"].numpy()
    array([[3, 0]], dtype=int32)
    """

    def __init__(
        self,
        vocab_file: str,
        tokens: Sequence[str],
        max_seq_length: int,
        max_predictions_per_seq: int,
        do_lower_case: bool = True,
    ):
        super().__init__(name="serving_text_encoder")
        self.max_seq_length = max_seq_length
        self.max_predictions_per_seq = max_predictions_per_seq
        self.do_lower_case = do_lower_case
        self._cls_id, self._sep_id, self._mask_id = (tokens.index(t) for t in (CLS, SEP, MASK))
        self.token_to_id = tf.lookup.StaticHashTable(
            tf.lookup.TextFileInitializer(
                vocab_file,
                tf.string,
                tf.lookup.TextFileIndex.WHOLE_LINE,
                tf.int64,
                tf.lookup.TextFileIndex.LINE_NUMBER,
            ),
            default_value=-1,
        )
        self.id_to_token = tf.lookup.StaticHashTable(
            tf.lookup.TextFileInitializer(
                vocab_file,
                tf.int64,
                tf.lookup.TextFileIndex.LINE_NUMBER,
                tf.string,
                tf.lookup.TextFileIndex.WHOLE_LINE,
            ),
            default_value="",
        )
        self._wordpiece = tf_text.WordpieceTokenizer(
            self.token_to_id,
            token_out_type=tf.int64,
            unknown_token=UNK,
            max_bytes_per_word=MAX_BYTES_PER_WORD,
        )
        special = "|".join(r"\[" + token[1:-1] + r"\]" for token in SPECIAL_TOKENS)
        self._special_pattern = special
        self._keep_pattern = "|".join([special, _PUNCTUATION, _CJK])
        self._split_pattern = "|".join([special, _WHITESPACE, _PUNCTUATION, _CJK])

    def split_words(self, text: tf.Tensor) -> tf.RaggedTensor:
        """Google's BasicTokenizer: string [batch] → normalized words [batch, (words)]."""
        text = tf.strings.regex_replace(text, _CONTROL, "")
        if self.do_lower_case:
            # Hugging Face's order: strip accents (NFD, drop Mn) on the whole text, then lower-case.
            text = tf.strings.regex_replace(tf_text.normalize_utf8(text, "NFD"), r"\p{Mn}", "")
        words = tf_text.regex_split(text, self._split_pattern, self._keep_pattern)
        if self.do_lower_case:
            # Lower-casing after the split keeps "[MASK]" whole. `lower` (not tf-text's case
            # folding, which maps "ß" to "ss") is Python's and Rust's str lower-casing.
            words = tf.ragged.map_flat_values(self._lower_except_special, words)
        return words

    def _lower_except_special(self, words: tf.Tensor) -> tf.Tensor:
        special = tf.strings.regex_full_match(words, self._special_pattern)
        # ICU maps a word-final capital sigma to "ς"; Hugging Face lower-cases each character
        # on its own, to "σ".
        lowered = tf.strings.lower(tf.strings.regex_replace(words, "Σ", "σ"), encoding="utf-8")
        return tf.where(special, words, lowered)

    def tokenize(self, text: tf.Tensor) -> tf.RaggedTensor:
        """string [batch] → WordPiece tokens [batch, (tokens)] as strings."""
        ids = self.tokenize_ids(text)
        return tf.ragged.map_flat_values(self.id_to_token.lookup, ids)

    def tokenize_ids(self, text: tf.Tensor) -> tf.RaggedTensor:
        """string [batch] → WordPiece ids [batch, (tokens)] int64."""
        return self._wordpiece.tokenize(self.split_words(text)).merge_dims(1, 2)

    def __call__(self, text_a: tf.Tensor, text_b: tf.Tensor) -> dict[str, tf.Tensor]:
        """Texts [batch] → `input_ids`, `segment_ids`, `input_mask` [batch, L] and
        `masked_lm_positions` [batch, P] (the first P `[MASK]`s; 0 pads), all int32."""
        length = self.max_seq_length
        ids_a = self.tokenize_ids(text_a)
        ids_b = self.tokenize_ids(text_b)
        has_b = tf.cast(ids_b.row_lengths() > 0, tf.int64)
        keep_a, keep_b = truncated_pair_lengths(
            ids_a.row_lengths(), ids_b.row_lengths(), length - 2 - has_b
        )
        # Dense gathers instead of ragged concatenation: a far smaller graph, traced faster.
        # Each segment fits in L once truncated, so [b, L] copies of the tokens suffice.
        dense_a = ids_a.to_tensor(0, shape=[None, length])
        dense_b = ids_b.to_tensor(0, shape=[None, length])
        keep_a, keep_b, has_b = keep_a[:, None], keep_b[:, None], has_b[:, None]
        j = tf.range(length, dtype=tf.int64)[None, :] + tf.zeros_like(keep_a)  # [b, L]
        start_b = keep_a + 2
        end_b = start_b + keep_b
        total = end_b + has_b

        def take(tokens: tf.Tensor, start: tf.Tensor) -> tf.Tensor:
            return tf.gather(tokens, tf.clip_by_value(j - start, 0, length - 1), batch_dims=1)

        ids = tf.where(
            j == 0,
            tf.constant(self._cls_id, tf.int64),
            tf.where(
                j <= keep_a,
                take(dense_a, 1),
                tf.where(j < start_b, tf.constant(self._sep_id, tf.int64), take(dense_b, start_b)),
            ),
        )
        is_sep_b = (j == end_b) & (has_b > 0)
        ids = tf.where(is_sep_b, tf.constant(self._sep_id, tf.int64), ids)
        real = j < total
        ids = tf.where(real, ids, 0)
        segments = tf.cast(real & (j >= start_b), tf.int64)

        # The first P [MASK] positions, ascending: positions of non-masks sort past them as L.
        predictions = self.max_predictions_per_seq
        candidates = tf.where(real & tf.equal(ids, self._mask_id), j, length)
        first = -tf.math.top_k(-candidates, k=predictions).values
        outputs = {
            features.INPUT_IDS: ids,
            features.SEGMENT_IDS: segments,
            features.INPUT_MASK: tf.cast(real, tf.int64),
            features.MASKED_LM_POSITIONS: tf.where(first < length, first, 0),
        }
        return {name: tf.cast(value, tf.int32) for name, value in outputs.items()}
