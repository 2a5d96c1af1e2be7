"""Vocabularies: learned with a library learner, checked on load, Google's layout accepted."""

import random
import unicodedata

import pytest
from tokenizers.implementations import BertWordPieceTokenizer

from tfrecords_tools import vocab
from tfrecords_tools.create_pretraining_data import create_pretraining_data
from tfrecords_tools.tokenization import FullTokenizer

SENTENCES = [
    "The Café serves naïve Crème brûlée to Zoë and Ångström.",
    "Tokenizers learn frequent words and WordPiece continuations.",
    "Running runners run; the runner ran quickly, running again.",
] * 40


def test_learned_vocab_has_pad_at_0_and_the_special_tokens(tmp_path):
    result = vocab.learn_vocab(SENTENCES, str(tmp_path / "vocab.txt"), vocab_size=150)
    tokens = vocab.load_vocab(str(tmp_path / "vocab.txt"))
    assert tokens[0] == "[PAD]"
    assert {"[UNK]", "[CLS]", "[SEP]", "[MASK]"} <= set(tokens)
    assert len(tokens) == result.vocab_size <= 150
    assert any(t.startswith("##") for t in tokens)
    assert "huggingface tokenizers" in result.learner


def test_uncased_vocab_is_lower_case_without_accents_and_cased_keeps_both(tmp_path):
    vocab.learn_vocab(SENTENCES, str(tmp_path / "uncased.txt"), vocab_size=300, do_lower_case=True)
    vocab.learn_vocab(SENTENCES, str(tmp_path / "cased.txt"), vocab_size=300, do_lower_case=False)
    uncased = [
        t for t in vocab.load_vocab(str(tmp_path / "uncased.txt")) if not vocab.is_special_token(t)
    ]
    cased = [
        t for t in vocab.load_vocab(str(tmp_path / "cased.txt")) if not vocab.is_special_token(t)
    ]
    assert all(t == t.lower() for t in uncased)
    assert not any(
        unicodedata.category(c) == "Mn" for t in uncased for c in unicodedata.normalize("NFD", t)
    )
    assert "é" not in "".join(uncased) and "é" in "".join(cased)
    assert any(t != t.lower() for t in cased)


def test_learned_vocab_tokenizes_its_corpus_without_unknowns(tmp_path):
    vocab.learn_vocab(SENTENCES, str(tmp_path / "vocab.txt"), vocab_size=300)
    tokenizer = FullTokenizer(str(tmp_path / "vocab.txt"))
    assert "[UNK]" not in tokenizer.tokenize(" ".join(SENTENCES[:3]))


def test_googles_bert_base_layout_works(tmp_path):
    # google-research/bert's uncased vocab.txt: [PAD], [unused0..98], [UNK], [CLS], [SEP], [MASK]
    tokens = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = sorted({w.strip(".,;").lower() for s in SENTENCES for w in s.split()})
    tokens += [c for c in "abcdefghijklmnopqrstuvwxyz.,;"] + words
    path = str(tmp_path / "vocab.txt")
    vocab.write_vocab(tokens, path)
    tokenizer = FullTokenizer(path)
    assert tokenizer.convert_tokens_to_ids(["[UNK]", "[CLS]", "[SEP]", "[MASK]"]) == [
        100,
        101,
        102,
        103,
    ]
    documents = [[f"the runner ran {w}." for w in words[i : i + 4]] for i in range(0, 20, 2)]
    summary = create_pretraining_data(
        documents,
        str(tmp_path / "data" / "t"),
        path,
        max_seq_length=16,
        max_predictions_per_seq=3,
        dupe_factor=2,
    )
    assert summary.num_instances > 0


@pytest.mark.parametrize(
    "content, message",
    [
        ("", "empty vocabulary"),
        ("[UNK]\n[PAD]\n[CLS]\n[SEP]\n[MASK]\n", "id 0 must be [PAD]"),
        ("[PAD]\n[UNK]\n[SEP]\n[MASK]\n", "lacks required token(s) [CLS]"),
        ("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nword\nword\n", "'word' appears twice (ids 5 and 6)"),
    ],
)
def test_bad_vocab_is_a_named_error(tmp_path, content, message):
    path = tmp_path / "vocab.txt"
    path.write_text(content)
    with pytest.raises(ValueError) as error:
        vocab.load_vocab(str(path))
    assert message in str(error.value) and str(path) in str(error.value)


def test_missing_vocab_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        vocab.load_vocab(str(tmp_path / "nope.txt"))


def test_empty_corpus_cannot_learn_a_vocab(tmp_path):
    with pytest.raises(ValueError, match="no text"):
        vocab.learn_vocab([], str(tmp_path / "vocab.txt"), vocab_size=100)


def _tie_prone_sentences() -> list[str]:
    """Words built from ten syllables: many merges tie on count, where HF's own trainer picks
    differently from run to run (huggingface/tokenizers#1794)."""
    rng = random.Random(7)
    syllables = ["ka", "lo", "mi", "ne", "ru", "to", "sa", "vi", "de", "po"]
    words = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(400)]
    return [" ".join(rng.choice(words) for _ in range(12)) + "." for _ in range(1500)]


def test_the_same_corpus_always_gives_the_same_vocab(tmp_path):
    sentences = _tie_prone_sentences()
    contents = set()
    for i in range(3):
        vocab.learn_vocab(iter(sentences), str(tmp_path / f"vocab{i}.txt"), vocab_size=300)
        contents.add((tmp_path / f"vocab{i}.txt").read_bytes())
    assert len(contents) == 1


def test_learned_single_characters_and_pieces_are_those_of_hf_trainer(tmp_path):
    # Punctuation and CJK characters are words of their own (no "##" piece); "x" is only ever a
    # whole word here; "é" only occurs cased.
    sentences = SENTENCES + ["中文 字符, x marks: the spot!", "A x; B x.", "Été", "Ωmega ωmega"] * 5
    for lower in (True, False):
        path = tmp_path / f"vocab-{lower}.txt"
        vocab.learn_vocab(
            sentences, str(path), vocab_size=400, do_lower_case=lower, min_frequency=1
        )
        ours = vocab.load_vocab(str(path))
        reference = BertWordPieceTokenizer(strip_accents=lower, lowercase=lower)
        reference.train_from_iterator(
            sentences,
            vocab_size=400,
            min_frequency=1,
            special_tokens=list(vocab.SPECIAL_TOKENS),
            show_progress=False,
        )

        def singles(tokens):
            return {t for t in tokens if len(t) == 1 or (t.startswith("##") and len(t) == 3)}

        assert singles(ours) == singles(reference.get_vocab())
        assert "##x" not in ours and "##," not in ours and "##中" not in ours
