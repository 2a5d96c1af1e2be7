"""kbert.vocabulary: the one vocab.txt reader, used by kbert and tfrecords_tools alike."""

import pytest

from kbert.masking import DynamicMasking
from kbert.vocabulary import SPECIAL_TOKENS, is_special_token, read_vocab, vocab_sha256
from tfrecords_tools.tokenization import FullTokenizer
from tfrecords_tools.vocab import load_vocab


def write(tmp_path, data: bytes) -> str:
    path = tmp_path / "vocab.txt"
    path.write_bytes(data)
    return str(path)


def test_lines_are_stripped_like_googles_load_vocab(tmp_path):
    path = write(tmp_path, b"\r\n".join(t.encode() for t in SPECIAL_TOKENS) + b"\r\n  paris \r\n")

    assert read_vocab(path) == [*SPECIAL_TOKENS, "paris"]


def test_lines_end_at_newlines_only_not_at_unicode_line_separators(tmp_path):
    tokens = [*SPECIAL_TOKENS, "a\u2028b", "c\x85d", "e\x1cf"]
    path = write(tmp_path, "\n".join(tokens).encode("utf-8"))

    assert read_vocab(path) == tokens


def test_a_byte_order_mark_is_not_part_of_the_first_token(tmp_path):
    path = write(tmp_path, "\n".join(SPECIAL_TOKENS).encode("utf-8-sig"))

    assert read_vocab(path)[0] == "[PAD]"


def test_a_duplicate_token_is_an_error_naming_the_file_and_lines(tmp_path):
    path = write(tmp_path, "\n".join([*SPECIAL_TOKENS, "word", "x", "word"]).encode())

    with pytest.raises(ValueError) as error:
        read_vocab(path)
    assert str(error.value).startswith(path) and "'word'" in str(error.value)
    assert "lines 6 and 8" in str(error.value)


def test_an_empty_vocab_is_an_error_naming_the_file(tmp_path):
    path = write(tmp_path, b"")

    with pytest.raises(ValueError, match="vocab.txt: empty vocabulary"):
        read_vocab(path)


def test_a_blank_line_is_an_error_naming_the_line(tmp_path):
    path = write(tmp_path, "\n".join([*SPECIAL_TOKENS, "a", " ", "b"]).encode())

    with pytest.raises(ValueError, match="vocab.txt: line 7 is blank"):
        read_vocab(path)


def test_a_trailing_blank_line_is_an_error_not_a_token(tmp_path):
    path = write(tmp_path, "\n".join(SPECIAL_TOKENS).encode() + b"\n\n")

    with pytest.raises(ValueError, match="line 6 is blank"):
        read_vocab(path)


def test_text_that_is_not_utf8_is_an_error_naming_the_file(tmp_path):
    path = write(tmp_path, "\n".join(SPECIAL_TOKENS).encode() + b"\ncaf\xe9\n")

    with pytest.raises(ValueError, match="vocab.txt: not UTF-8"):
        read_vocab(path)


def test_a_missing_file_is_file_not_found_naming_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt: no such vocabulary file"):
        read_vocab(str(tmp_path / "nope.txt"))


def test_bracketed_tokens_are_special_and_plain_words_are_not():
    assert [is_special_token(t) for t in ["[MASK]", "[unused0]", "[x", "[]", "word"]] == [
        True,
        True,
        False,
        False,
        False,
    ]


def test_masking_and_the_record_tools_read_the_same_vocabulary(tmp_path):
    tokens = [*SPECIAL_TOKENS, "[unused0]", "paris", "##s"]
    path = write(tmp_path, "\ufeff".encode() + "\r\n".join(tokens).encode() + b"\r\n")

    masking = DynamicMasking.from_vocab_file(path)

    assert load_vocab(path) == tokens == FullTokenizer(path).inv_vocab
    assert masking.vocab_size == len(tokens) and masking.special_token_ids == (0, 1, 2, 3, 4, 5)


def test_the_hash_is_of_the_files_bytes(tmp_path):
    path = write(tmp_path, b"[PAD]\n")

    # sha256 of b"[PAD]\n", computed independently with `printf '[PAD]\n' | sha256sum`.
    assert vocab_sha256(path) == (
        "cd66c3d348c719ac791d8a6bd5c74cce2e1966c7b4a1fe00c1ef4c30b8d30ce7"
    )
