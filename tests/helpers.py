"""Small fixtures shared by the tests: a tiny BertConfig and one batch as the pipeline yields it."""


def tiny_config(vocab_size: int = 100, dropout: float = 0.0, **overrides):
    """A BertConfig small enough for a test to train in seconds."""
    from kbert.config import BertConfig

    fields = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )
    fields.update(overrides)
    return BertConfig(**fields)


def random_batch(batch_size=8, seq_len=16, num_predictions=4, vocab_size=100, seed=0):
    """One `(x, y, sample_weight)` batch as kbert's pipeline yields it, with ragged MLM weights."""
    import numpy as np

    rng = np.random.default_rng(seed)
    lengths = rng.integers(num_predictions + 2, seq_len + 1, batch_size)
    mask = (np.arange(seq_len)[None, :] < lengths[:, None]).astype("int32")
    ids = rng.integers(5, vocab_size, (batch_size, seq_len)).astype("int32") * mask
    segments = ((np.arange(seq_len)[None, :] >= lengths[:, None] // 2) * mask).astype("int32")
    # Sequence i has 1 + i % num_predictions real predictions; the rest are padding.
    real = 1 + np.arange(batch_size) % num_predictions
    weights = (np.arange(num_predictions)[None, :] < real[:, None]).astype("float32")
    positions = np.stack(
        [np.sort(rng.choice(np.arange(1, n), num_predictions, replace=False)) for n in lengths]
    ).astype("int32") * weights.astype("int32")
    labels = rng.integers(5, vocab_size, (batch_size, num_predictions)).astype("int32")
    labels = labels * weights.astype("int32")
    x = {"input_ids": ids, "segment_ids": segments, "input_mask": mask, "masked_lm_positions": positions}
    y = {"mlm": labels, "nsp": rng.integers(0, 2, batch_size).astype("int32")}
    sample_weight = {"mlm": weights, "nsp": np.ones(batch_size, "float32")}
    return x, y, sample_weight
