"""Dynamic (RoBERTa-style) masking in kbert.data: Google's rules, new masks each epoch, seeded."""

import numpy as np
import pytest
from helpers import write_metadata, write_records

from kbert.data import pretraining_dataset
from kbert.masking import DynamicMasking

SEQ = 32
PRED = 4
WORDS = [f"w{i}" for i in range(93)]
VOCAB_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[unused0]", "[unused1]"] + WORDS
VOCAB = len(VOCAB_TOKENS)
PAD, UNK, CLS, SEP, MASK = 0, 1, 2, 3, 4
SPECIAL = set(range(7))
UNMASKABLE = SPECIAL - {UNK}  # Google masks [UNK] like the word it stands for


@pytest.fixture
def vocab_file(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(VOCAB_TOKENS) + "\n")
    return str(path)


def make_sequences(n, seed=0):
    """Unmasked sequences [CLS] A [SEP] B [SEP] of random length, with a few [UNK]s."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        real = int(rng.integers(5, SEQ + 1))
        ids = np.zeros(SEQ, np.int64)
        ids[:real] = rng.integers(7, VOCAB, real)
        ids[:real][rng.random(real) < 0.05] = UNK
        split = int(rng.integers(2, real - 1))
        ids[0], ids[split], ids[real - 1] = CLS, SEP, SEP
        rows.append(
            {
                "input_ids": ids,
                "input_mask": (np.arange(SEQ) < real).astype(np.int64),
                "segment_ids": ((np.arange(SEQ) > split) & (np.arange(SEQ) < real)).astype(
                    np.int64
                ),
                "next_sentence_labels": [int(rng.integers(0, 2))],
            }
        )
    return rows


def collect(dataset):
    keys = ("input_ids", "input_mask", "masked_lm_positions", "mlm", "weights")
    parts = {key: [] for key in keys}
    for x, y, w in dataset:
        for key, value in zip(
            keys,
            (x["input_ids"], x["input_mask"], x["masked_lm_positions"], y["mlm"], w["mlm"]),
        ):
            parts[key].append(value.numpy())
    return {key: np.concatenate(value) for key, value in parts.items()}


def originals(batch):
    """Each row's unmasked ids: the labels put back at their positions (numpy)."""
    ids = batch["input_ids"].copy()
    for row, positions, labels, weights in zip(
        ids, batch["masked_lm_positions"], batch["mlm"], batch["weights"]
    ):
        real = weights > 0
        row[positions[real]] = labels[real]
    return ids


def test_masking_statistics_follow_googles_rules(tmp_path, vocab_file):
    rows = make_sequences(2100, seed=1)
    path = write_records(tmp_path / "unmasked.tfrecord", rows)
    masking = DynamicMasking.from_vocab_file(vocab_file)

    got = collect(
        pretraining_dataset(
            path,
            64,
            max_predictions_per_seq=PRED,
            is_training=False,
            dynamic_masking=masking,
        )
    )

    outcomes = {"mask": 0, "random": 0, "same": 0}
    for i, row in enumerate(rows):
        original, masked = row["input_ids"], got["input_ids"][i]
        n = int(row["input_mask"].sum())
        candidates = [p for p in range(n) if original[p] not in UNMASKABLE]
        k = int(got["weights"][i].sum())
        assert k == min(PRED, max(1, round(n * 0.15)), len(candidates))
        np.testing.assert_array_equal(got["weights"][i], [1.0] * k + [0.0] * (PRED - k))
        positions = got["masked_lm_positions"][i]
        assert list(positions[:k]) == sorted(set(positions[:k])) and not positions[k:].any()
        assert set(positions[:k]) <= set(candidates)
        np.testing.assert_array_equal(got["mlm"][i][:k], original[positions[:k]])
        assert not got["mlm"][i][k:].any()
        untouched = np.setdiff1d(np.arange(SEQ), positions[:k])
        np.testing.assert_array_equal(masked[untouched], original[untouched])
        for p in positions[:k]:
            if masked[p] == MASK:
                outcomes["mask"] += 1
            elif masked[p] == original[p]:
                outcomes["same"] += 1
            else:
                assert masked[p] not in SPECIAL
                outcomes["random"] += 1

    total = sum(outcomes.values())
    assert total > 5000
    assert abs(outcomes["mask"] / total - 0.8) < 0.03
    assert abs(outcomes["random"] / total - 0.1) < 0.03
    assert abs(outcomes["same"] / total - 0.1) < 0.03


def test_each_epoch_draws_new_masks(tmp_path, vocab_file):
    rows = make_sequences(16, seed=2)
    path = write_records(tmp_path / "unmasked.tfrecord", rows)
    masking = DynamicMasking.from_vocab_file(vocab_file)

    got = collect(
        pretraining_dataset(
            path, 4, max_predictions_per_seq=PRED, seed=5, num_epochs=2, dynamic_masking=masking
        )
    )

    epochs = [{}, {}]
    for i, original in enumerate(originals(got)):
        epochs[i // 16][tuple(original)] = tuple(got["masked_lm_positions"][i])
    assert set(epochs[0]) == set(epochs[1]) == {tuple(r["input_ids"]) for r in rows}
    changed = sum(epochs[0][key] != epochs[1][key] for key in epochs[0])
    assert changed >= 12


def test_the_same_seed_reproduces_the_masks(tmp_path, vocab_file):
    path = write_records(tmp_path / "unmasked.tfrecord", make_sequences(24, seed=3))
    masking = DynamicMasking.from_vocab_file(vocab_file)

    def masks(seed):
        dataset = pretraining_dataset(
            path, 8, max_predictions_per_seq=PRED, seed=seed, dynamic_masking=masking
        )
        x, y, w = dataset.element_spec
        assert x["masked_lm_positions"].shape == y["mlm"].shape == w["mlm"].shape == (8, PRED)
        return collect(dataset.take(6))

    first, again, other = masks(11), masks(11), masks(12)

    for key in first:
        np.testing.assert_array_equal(first[key], again[key])
    assert not np.array_equal(first["input_ids"], other["input_ids"])


def test_masked_records_are_unmasked_and_masked_anew(tmp_path, vocab_file):
    rows = make_sequences(8, seed=4)
    stored = []
    for row in rows:
        ids = row["input_ids"].copy()
        stored.append(
            {
                **row,
                "input_ids": np.where(np.arange(SEQ) == 1, MASK, ids),
                "masked_lm_positions": [1, 0, 0, 0],
                "masked_lm_ids": [ids[1], 0, 0, 0],
                "masked_lm_weights": [1.0, 0.0, 0.0, 0.0],
            }
        )
    path = write_records(tmp_path / "masked.tfrecord", stored)

    got = collect(
        pretraining_dataset(
            path,
            4,
            is_training=False,
            dynamic_masking=DynamicMasking.from_vocab_file(vocab_file),
        )
    )

    np.testing.assert_array_equal(originals(got), np.stack([r["input_ids"] for r in rows]))
    assert (got["weights"].sum(axis=1) > 1).any()


def test_vocab_file_gives_the_mask_id_and_the_special_tokens(vocab_file):
    masking = DynamicMasking.from_vocab_file(vocab_file)

    assert masking.vocab_size == VOCAB and masking.mask_token_id == MASK
    assert set(masking.special_token_ids) == SPECIAL and masking.unk_token_id == UNK


def test_vocab_file_without_mask_token_is_an_error(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\nhello\n")

    with pytest.raises(
        ValueError, match=r"vocab\.txt: vocabulary lacks required token\(s\) \[MASK\]"
    ):
        DynamicMasking.from_vocab_file(str(path))


def test_a_vocabulary_of_another_size_than_the_metadata_is_an_error(tmp_path, vocab_file):
    write_records(tmp_path / "a.tfrecord", make_sequences(4))
    write_metadata(
        tmp_path, {"a.tfrecord": 4}, SEQ, PRED, 30522, masked=False, nsp_label_counts={}, seed=1
    )

    with pytest.raises(ValueError, match="vocab_size mismatch.*100 ids.*says 30522"):
        pretraining_dataset(
            str(tmp_path / "*.tfrecord"),
            2,
            dynamic_masking=DynamicMasking.from_vocab_file(vocab_file),
        )
