"""Tokenization: Google's / Hugging Face's BertTokenizer semantics, fast path included."""

import unicodedata

import pytest
from tokenizers.implementations import BertWordPieceTokenizer

from tfrecords_tools.tokenization import FullTokenizer, WordPieceEncoder, build_tokenizer
from tfrecords_tools.vocab import SPECIAL_TOKENS, write_vocab

WORD_150 = "super" + "cali" * 36 + "x"  # 150 characters: over HF's default limit, under Google's
WORD_250 = "ab" * 125  # over both limits

TEXTS = [
    "Héllo Wörld! Café naïve façade, ÉCOLE résumé.",
    "Mixed CJK: 中文字符和日本語の漢字 with Latin words.",
    "Punctuation runs!!! ... ?!?! --- (((nested))) \"quotes\" 'single' [brackets] {braces}",
    "Emoji 😀🎉 and symbols ©®™ € £ ¥ § ¶",
    "Control\x00chars\x07here\x1b and\ttabs\nnew\rlines \u200b zero-width \ufeff bom",
    "ascii only line with under_score, hy-phen, e-mail@example.com and $3.50 #tag",
    f"Long words {WORD_150} and {WORD_250} end.",
    f"ascii long words {WORD_150} and {WORD_250} end",
    "UPPER lower MiXeD Straße Ἀθῆναι İstanbul",
    "   leading and trailing spaces   ",
    "",
]


def _vocab_tokens():
    words = set()
    pieces = set()
    for text in TEXTS:
        for word in text.replace("\x00", " ").split():
            for variant in (word, word.lower(), _strip_accents(word.lower())):
                words.add(variant.strip("!?.,()[]{}'\"-"))
    words = {w for w in words if 0 < len(w) <= 50}  # long words must be split into pieces
    for w in ("cali", "x", "b", "ab", "ch", "ars"):
        pieces.add("##" + w)
    base = [
        "super",
        "a",
        "punctuation",
        "runs",
        "long",
        "words",
        "end",
        "and",
        "ascii",
        "line",
        "with",
    ]
    chars = set("".join(TEXTS).lower()) | set("".join(TEXTS))
    tokens = list(SPECIAL_TOKENS) + sorted(words) + sorted(pieces) + base
    tokens += sorted(c for c in chars if c.strip() and c not in tokens)
    tokens += sorted("##" + c for c in chars if c.strip())
    return list(dict.fromkeys(tokens))


def _strip_accents(text):
    return "".join(c for c in unicodedata.normalize("NFD", text) if unicodedata.category(c) != "Mn")


# ---- Google's tokenization.py (google-research/bert), restated as the reference -----------------


def _is_whitespace(char):
    return char in " \t\n\r" or unicodedata.category(char) == "Zs"


def _is_control(char):
    if char in "\t\n\r":
        return False
    return unicodedata.category(char) in ("Cc", "Cf")


def _is_punctuation(char):
    cp = ord(char)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(char).startswith("P")


def _is_chinese_char(cp):
    return any(
        lo <= cp <= hi
        for lo, hi in [
            (0x4E00, 0x9FFF),
            (0x3400, 0x4DBF),
            (0x20000, 0x2A6DF),
            (0x2A700, 0x2B73F),
            (0x2B740, 0x2B81F),
            (0x2B820, 0x2CEAF),
            (0xF900, 0xFAFF),
            (0x2F800, 0x2FA1F),
        ]
    )


def google_tokenize(text, vocab, do_lower_case, max_chars=200):
    cleaned = []
    for char in text:
        cp = ord(char)
        if cp == 0 or cp == 0xFFFD or _is_control(char):
            continue
        cleaned.append(" " if _is_whitespace(char) else char)
    text = "".join(cleaned)
    text = "".join(f" {c} " if _is_chinese_char(ord(c)) else c for c in text)
    basic = []
    for token in text.strip().split():
        if do_lower_case:
            token = _strip_accents(token.lower())
        word = []
        for char in token:
            if _is_punctuation(char):
                if word:
                    basic.append("".join(word))
                basic.append(char)
                word = []
            else:
                word.append(char)
        if word:
            basic.append("".join(word))
    pieces = []
    for token in basic:
        if len(token) > max_chars:
            pieces.append("[UNK]")
            continue
        start, sub = 0, []
        while start < len(token):
            end, found = len(token), None
            while start < end:
                candidate = ("##" if start > 0 else "") + token[start:end]
                if candidate in vocab:
                    found = candidate
                    break
                end -= 1
            if found is None:
                sub = None
                break
            sub.append(found)
            start = end
        pieces.extend(["[UNK]"] if sub is None else sub)
    return pieces


# -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vocab_file(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("vocab") / "vocab.txt")
    write_vocab(_vocab_tokens(), path)
    return path


def _hf(vocab_file, lower, max_chars=None):
    tokens = open(vocab_file, encoding="utf-8").read().split("\n")[:-1]
    hf = BertWordPieceTokenizer(
        {t: i for i, t in enumerate(tokens)}, lowercase=lower, strip_accents=lower
    )
    if max_chars is not None:
        hf._tokenizer.model.max_input_chars_per_word = max_chars
    return hf


@pytest.mark.parametrize("lower", [True, False], ids=["uncased", "cased"])
def test_matches_hf_bert_wordpiece_tokenizer_with_googles_word_limit(vocab_file, lower):
    ours = FullTokenizer(vocab_file, do_lower_case=lower)
    hf = _hf(vocab_file, lower, max_chars=200)
    for text in TEXTS:
        assert ours.tokenize(text) == hf.encode(text, add_special_tokens=False).tokens, text
        assert ours.encode([text])[0] == hf.encode(text, add_special_tokens=False).ids, text


@pytest.mark.parametrize("lower", [True, False], ids=["uncased", "cased"])
def test_matches_googles_reference_algorithm(vocab_file, lower):
    ours = FullTokenizer(vocab_file, do_lower_case=lower)
    for text in TEXTS:
        assert ours.tokenize(text) == google_tokenize(text, ours.vocab, lower), text


@pytest.mark.parametrize("lower", [True, False], ids=["uncased", "cased"])
def test_word_limit_is_googles_200_not_hfs_100(vocab_file, lower):
    ours = FullTokenizer(vocab_file, do_lower_case=lower)
    hf_default = _hf(vocab_file, lower)
    text = f"{WORD_150} {WORD_250}"
    tokens = ours.tokenize(text)
    assert tokens[0] == "super" and "##cali" in tokens  # 150 chars: word pieces (Google)
    assert tokens[-1] == "[UNK]" and tokens.count("[UNK]") == 1  # 250 chars: [UNK]
    assert hf_default.encode(text, add_special_tokens=False).tokens == ["[UNK]", "[UNK]"]


def test_batched_encode_equals_one_by_one_and_the_rust_pipeline(vocab_file):
    ours = FullTokenizer(vocab_file, do_lower_case=True)
    rust = build_tokenizer(ours.inv_vocab, True)
    texts = TEXTS * 3 + ["new ascii WORDS never seen: zyx!", "another Ünïcode one"]
    batched = ours.encode(texts)
    assert batched == [rust.encode(t, add_special_tokens=False).ids for t in texts]
    assert batched == [ours.encode([t])[0] for t in texts]


def test_ascii_fast_path_equals_full_pipeline_on_control_and_punctuation(vocab_file):
    tokens = FullTokenizer(vocab_file).inv_vocab
    encoder = WordPieceEncoder(tokens, do_lower_case=False)
    rust = build_tokenizer(tokens, do_lower_case=False)
    texts = [
        "a\x01b\x7fc\x0bd\x0ce_f`g~h|i\\j^k",
        "".join(chr(c) for c in range(128)),
        "Ab ab AB aB",
    ]
    assert encoder.encode(texts) == [rust.encode(t, add_special_tokens=False).ids for t in texts]


def test_google_api_names_round_trip(vocab_file):
    tokenizer = FullTokenizer(vocab_file, do_lower_case=True)
    pieces = tokenizer.tokenize("Héllo Wörld!")
    assert pieces == ["hello", "world", "!"]
    ids = tokenizer.convert_tokens_to_ids(pieces)
    assert tokenizer.convert_ids_to_tokens(ids) == pieces
    assert tokenizer.vocab_size == len(tokenizer.vocab)


def test_literal_special_token_text_is_split_like_google(vocab_file):
    tokenizer = FullTokenizer(vocab_file, do_lower_case=False)
    assert tokenizer.tokenize("[MASK]")[0] == "["


def test_greek_final_sigma_follows_hf_tokenizers_not_pythons_lower(vocab_file):
    # The one known difference between HF's Rust normalizer and Google's Python: HF lower-cases
    # character by character, so a word-final capital sigma becomes "σ" where Python gives "ς".
    tokens = FullTokenizer(vocab_file).inv_vocab + ["σισυφοσ", "σισυφος"]
    rust = build_tokenizer(tokens, do_lower_case=True)
    assert rust.encode("ΣΊΣΥΦΟΣ", add_special_tokens=False).tokens == ["σισυφοσ"]
    assert google_tokenize("ΣΊΣΥΦΟΣ", set(tokens), True) == ["σισυφος"]


def test_batched_ascii_texts_keep_their_boundaries_through_nul_newline_and_empty_texts(vocab_file):
    # The ASCII texts of a batch are tokenized together, joined by NUL: a NUL, newline or empty
    # text inside the batch must not move any id from one text to another.
    tokens = FullTokenizer(vocab_file).inv_vocab
    encoder = WordPieceEncoder(tokens, do_lower_case=True)
    rust = build_tokenizer(tokens, do_lower_case=True)
    texts = ["hello\x00world", "", "two\nlines here", "\x00", "Ünïcode between", "last one!", "  "]
    expected = [rust.encode(t, add_special_tokens=False).ids for t in texts]
    assert encoder.encode(texts) == expected
    ids, lengths = encoder.encode_flat(texts)
    assert lengths.tolist() == [len(e) for e in expected] and ids.tolist() == sum(expected, [])
    assert encoder.encode([]) == [] and encoder.encode_flat([])[0].size == 0
