"""Dynamic (RoBERTa-style) masking: BERT's masked-LM choices drawn in the input pipeline.

The rules are Google's `create_pretraining_data.py`, so a model cannot tell dynamically masked
batches from records masked offline: min(P, max(1, round(n * 0.15))) positions per sequence
(n = real tokens, [CLS] and [SEP] included, as Google counts them), never a special token but
[UNK] (it stands for a word, and Google masks it like one); of the chosen positions 80 % become
[MASK], 10 % a random non-special token, 10 % stay unchanged; positions ascending, padded with
position 0, id 0, weight 0. tfrecords_tools masks offline by the same rules.
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf
import tensorflow_text as tf_text

from kbert import features
from kbert.errors import SettingError
from kbert.vocabulary import MASK, UNK, is_special_token, read_vocab


@dataclasses.dataclass(frozen=True)
class DynamicMasking:
    """What dynamic masking needs to know about the vocabulary, and its rates.

    Args:
        vocab_size: number of WordPiece ids.
        mask_token_id: id of `[MASK]`.
        special_token_ids: ids never drawn as a random replacement and never masked, except
            `unk_token_id` (at least `[PAD]`, `[CLS]`, `[SEP]`, `[MASK]`).
        masked_lm_prob: share of a sequence's tokens to predict (Google: 0.15).
        mask_token_rate: share of chosen positions replaced by `[MASK]` (0.8).
        random_token_rate: share replaced by a random non-special token (0.1); the rest keep
            their token.
        unk_token_id: id of `[UNK]`, maskable although special; None if not in
            `special_token_ids`.

    Examples:
    >>> masking = DynamicMasking(vocab_size=100, mask_token_id=4, special_token_ids=(0, 1, 2, 3, 4))
    >>> ids = tf.constant([[2] + list(range(10, 40)) + [3] + [0] * 8])
    >>> out = masking.mask(ids, tf.cast(ids > 0, tf.int32), 8, seed=(1, 2))
    >>> int(tf.reduce_sum(out["masked_lm_weights"]))  # round(32 * 0.15)
    5
    """

    vocab_size: int
    mask_token_id: int
    special_token_ids: tuple[int, ...]
    masked_lm_prob: float = 0.15
    mask_token_rate: float = 0.8
    random_token_rate: float = 0.1
    unk_token_id: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "special_token_ids", tuple(sorted(set(self.special_token_ids))))
        if self.vocab_size <= 0:
            raise SettingError(f"DynamicMasking.vocab_size must be positive, got {self.vocab_size}")
        ids = self.special_token_ids + (self.mask_token_id,)
        unk = () if self.unk_token_id is None else (self.unk_token_id,)
        bad = [i for i in ids + unk if not 0 <= i < self.vocab_size]
        if bad:
            raise SettingError(
                f"DynamicMasking: token id(s) {bad} outside the vocabulary [0, {self.vocab_size})"
            )
        if self.mask_token_id not in self.special_token_ids:
            object.__setattr__(self, "special_token_ids", tuple(sorted(ids)))
        if len(self.special_token_ids) >= self.vocab_size:
            raise SettingError(
                "DynamicMasking: every vocabulary id is special; nothing to draw from"
            )
        if not 0 < self.masked_lm_prob <= 1:
            raise SettingError(
                f"DynamicMasking.masked_lm_prob must be in (0, 1], got {self.masked_lm_prob}"
            )
        if min(self.mask_token_rate, self.random_token_rate) < 0 or (
            self.mask_token_rate + self.random_token_rate > 1
        ):
            raise SettingError(
                "DynamicMasking: mask_token_rate and random_token_rate must be >= 0 with a sum "
                f"<= 1, got {self.mask_token_rate} and {self.random_token_rate}"
            )

    @classmethod
    def from_vocab_file(cls, vocab_file: str, **rates: float) -> DynamicMasking:
        """Read a vocab.txt by `kbert.vocabulary`'s rules; every `[...]` token is special.

        Bracketed tokens are `[PAD] [UNK] [CLS] [SEP] [MASK]` and Google's `[unused0]`...; of them
        only `[UNK]` is ever masked (tfrecords_tools uses the same rule).

        Args:
            vocab_file: path of the vocabulary (any `tf.io.gfile` path).
            **rates: `masked_lm_prob`, `mask_token_rate`, `random_token_rate` overrides.

        Examples:
        >>> import tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "vocab.txt")
        >>> tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a"]
        >>> _ = open(path, "w").write("\\n".join(tokens))
        >>> DynamicMasking.from_vocab_file(path).mask_token_id
        4
        """
        tokens = read_vocab(vocab_file)
        special = tuple(i for i, token in enumerate(tokens) if is_special_token(token))
        return cls(
            vocab_size=len(tokens),
            mask_token_id=tokens.index(MASK),
            special_token_ids=special,
            unk_token_id=tokens.index(UNK),
            **rates,
        )

    def mask(
        self,
        input_ids: tf.Tensor,
        input_mask: tf.Tensor,
        max_predictions_per_seq: int,
        seed: tf.Tensor | tuple[int, int],
    ) -> dict[str, tf.Tensor]:
        """Mask a batch; returns Google's four masked-record features for it.

        Args:
            input_ids: int [B, L] unmasked token ids, real tokens first, then padding.
            input_mask: int [B, L], 1 for real tokens.
            max_predictions_per_seq: P, the padded length of the prediction features.
            seed: shape-[2] integer seed of the stateless random ops (same seed, same masks).

        Returns:
            `input_ids` (masked, dtype of the input), `masked_lm_positions`, `masked_lm_ids`
            [B, P] of the input's dtype and `masked_lm_weights` [B, P] float32.
        """
        seeds = tf.random.split(tf.convert_to_tensor(seed, tf.int64), 3)
        lengths = tf.reduce_sum(tf.cast(input_mask, tf.int64), axis=1)
        ragged = tf.RaggedTensor.from_tensor(input_ids, lengths=lengths)
        unmaskable = [i for i in self.special_token_ids if i != self.unk_token_id]
        is_unmaskable = tf.scatter_nd(
            tf.constant(unmaskable, tf.int64)[:, None],
            tf.ones([len(unmaskable)], tf.bool),
            [self.vocab_size],
        )
        replacements = tf.constant(
            sorted(set(range(self.vocab_size)) - set(self.special_token_ids)), input_ids.dtype
        )
        selector = _GoogleCountSelector(
            is_unmaskable, max_predictions_per_seq, self.masked_lm_prob, seeds[0]
        )
        chooser = _SeededMaskValuesChooser(
            self.vocab_size,
            self.mask_token_id,
            self.mask_token_rate,
            self.random_token_rate,
            replacements,
            seeds[1],
            seeds[2],
        )
        masked, positions, ids = tf_text.mask_language_model(ragged, selector, chooser)
        shape = tf.shape(input_ids, out_type=tf.int64)
        masked = tf.where(input_mask > 0, masked.to_tensor(shape=shape), input_ids)
        prediction_shape = tf.stack([shape[0], max_predictions_per_seq])
        return {
            features.INPUT_IDS: masked,
            features.MASKED_LM_POSITIONS: tf.cast(
                positions.to_tensor(shape=prediction_shape), input_ids.dtype
            ),
            features.MASKED_LM_IDS: ids.to_tensor(shape=prediction_shape),
            features.MASKED_LM_WEIGHTS: tf.ones_like(positions, tf.float32).to_tensor(
                shape=prediction_shape
            ),
        }


def unmask(
    input_ids: tf.Tensor,
    masked_lm_positions: tf.Tensor,
    masked_lm_ids: tf.Tensor,
    masked_lm_weights: tf.Tensor,
) -> tf.Tensor:
    """The original token ids of masked records: each real prediction's id put back in place.

    Args:
        input_ids: int [B, L] masked token ids.
        masked_lm_positions: int [B, P] positions of the predictions.
        masked_lm_ids: int [B, P] original ids at those positions (input_ids' dtype).
        masked_lm_weights: float [B, P]; positions of weight 0 are padding and left alone.

    Examples:
    >>> unmask(tf.constant([[2, 4, 8, 3]]), tf.constant([[1, 0]]), tf.constant([[7, 0]]),
    ...        tf.constant([[1.0, 0.0]])).numpy().tolist()
    [[2, 7, 8, 3]]
    """
    length = tf.shape(input_ids)[1]
    hits = tf.one_hot(masked_lm_positions, length, dtype=input_ids.dtype) * tf.cast(
        masked_lm_weights[:, :, None] > 0, input_ids.dtype
    )
    restored = tf.reduce_sum(hits * masked_lm_ids[:, :, None], axis=1)
    return tf.where(tf.reduce_sum(hits, axis=1) > 0, restored, input_ids)


class _GoogleCountSelector(tf_text.RandomItemSelector):
    """Chooses min(P, max(1, round(n * rate))) maskable items per row, uniformly.

    tf_text's RandomItemSelector takes ceil(selectable * rate) and draws from the global
    stateful generator; Google's count and a per-batch seed need these two overrides.
    """

    def __init__(self, is_unmaskable: tf.Tensor, max_selections: int, rate: float, seed: tf.Tensor):
        super().__init__(max_selections_per_batch=max_selections, selection_rate=rate)
        self._is_unmaskable = is_unmaskable
        self._seed = seed

    def get_selectable(self, input_ids: tf.RaggedTensor, axis: int) -> tf.RaggedTensor:
        vocab_size = tf.shape(self._is_unmaskable, out_type=input_ids.dtype)[0]
        ids = input_ids.flat_values
        in_vocab = (ids >= 0) & (ids < vocab_size)
        unmaskable = tf.gather(self._is_unmaskable, tf.clip_by_value(ids, 0, vocab_size - 1))
        return input_ids.with_flat_values(in_vocab & ~unmaskable)

    def get_selection_mask(self, input_ids: tf.RaggedTensor, axis: int = 1) -> tf.RaggedTensor:
        selectable = self.get_selectable(input_ids, axis)
        lengths = input_ids.row_lengths()
        # Python's round() rounds half to even, as tf.round does; float64 keeps n * 0.15 exact
        # enough to agree with Google's float64 arithmetic.
        wanted = tf.maximum(tf.round(tf.cast(lengths, tf.float64) * self.selection_rate), 1.0)
        available = tf.reduce_sum(tf.cast(selectable, tf.int64), axis=1)
        count = tf.minimum(
            tf.minimum(tf.cast(wanted, tf.int64), self.max_selections_per_batch), available
        )
        scores = tf.random.stateless_uniform(tf.shape(selectable.flat_values), self._seed)
        scores = tf.where(selectable.flat_values, scores, 2.0)
        dense_scores = selectable.with_flat_values(scores).to_tensor(default_value=3.0)
        k = tf.minimum(self.max_selections_per_batch, tf.shape(dense_scores)[1])
        _, lowest = tf.math.top_k(-dense_scores, k=k)
        keep = tf.range(k, dtype=tf.int64)[None, :] < count[:, None]
        chosen = tf.reduce_any(
            tf.one_hot(lowest, tf.shape(dense_scores)[1], on_value=True, off_value=False)
            & keep[:, :, None],
            axis=1,
        )
        return tf.RaggedTensor.from_tensor(chosen, lengths=lengths)


class _SeededMaskValuesChooser(tf_text.MaskValuesChooser):
    """80 % [MASK] / 10 % random / 10 % unchanged with stateless seeds.

    tf_text's chooser draws random tokens from the whole vocabulary (special ones included)
    with the global stateful generator; Google's rules and reproducibility need this override.
    """

    def __init__(
        self,
        vocab_size: int,
        mask_token: int,
        mask_token_rate: float,
        random_token_rate: float,
        replacements: tf.Tensor,
        seed: tf.Tensor,
        replacement_seed: tf.Tensor,
    ):
        super().__init__(vocab_size, mask_token, mask_token_rate, random_token_rate)
        self._rates = (mask_token_rate, random_token_rate)
        self._replacements = replacements
        self._seed = seed
        self._replacement_seed = replacement_seed

    def get_mask_values(self, masked_lm_ids: tf.RaggedTensor) -> tf.RaggedTensor:
        ids = masked_lm_ids.flat_values
        draw = tf.random.stateless_uniform(tf.shape(ids), self._seed)
        pick = tf.random.stateless_uniform(
            tf.shape(ids),
            self._replacement_seed,
            maxval=tf.shape(self._replacements)[0],
            dtype=tf.int32,
        )
        random_ids = tf.cast(tf.gather(self._replacements, pick), ids.dtype)
        mask_rate, random_rate = self._rates
        values = tf.where(
            draw < mask_rate,
            tf.cast(self.mask_token, ids.dtype),
            tf.where(draw < mask_rate + random_rate, random_ids, ids),
        )
        return masked_lm_ids.with_flat_values(values)
