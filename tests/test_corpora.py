"""Corpora: Google's layout, plain text, sentence splitting, byte-range slices, TFDS, built-in."""

import sys

import pytest

from tfrecords_tools import corpora


def write(path, data: bytes):
    path.write_bytes(data)
    return str(path)


def test_google_layout_handles_crlf_bom_invalid_utf8_and_empty_documents(tmp_path):
    data = (
        b"\xef\xbb\xbfFirst sentence.\r\nSecond \xff\xfe sentence.\r\n\r\n"
        b"\r\n  \n\n"  # runs of blank lines are no empty documents
        b"Other document.\n\n"
    )
    corpus = corpora.TextFiles(write(tmp_path / "c.txt", data))
    stats = corpora.ReadStats()
    documents = list(corpus.read(corpus.slices(1)[0], stats))
    assert documents == [["First sentence.", "Second \ufffd\ufffd sentence."], ["Other document."]]
    assert stats.invalid_utf8_replaced == 2
    assert stats.bytes_read == len(data)


def test_a_genuine_replacement_character_is_not_counted_as_invalid(tmp_path):
    corpus = corpora.TextFiles(write(tmp_path / "c.txt", "A \ufffd b.\n".encode()))
    stats = corpora.ReadStats()
    assert list(corpus.read(corpus.slices(1)[0], stats)) == [["A \ufffd b."]]
    assert stats.invalid_utf8_replaced == 0


def test_file_ends_are_document_boundaries_and_globs_are_sorted(tmp_path):
    write(tmp_path / "b.txt", b"B one.\nB two.")
    write(tmp_path / "a.txt", b"A one.\nA two.\n")
    assert list(corpora.TextFiles(str(tmp_path / "*.txt"))) == [
        ["A one.", "A two."],
        ["B one.", "B two."],
    ]


@pytest.mark.parametrize("input_format", ["google", "lines", "blocks"])
@pytest.mark.parametrize("num_slices", [2, 3, 7, 40])
def test_slices_partition_the_documents_at_boundaries(tmp_path, input_format, num_slices):
    lines = []
    for d in range(23):
        if input_format == "lines":
            lines.append(" ".join(f"Doc {d} sentence {s}." for s in range(d % 4 + 1)))
        else:
            lines += [f"Doc {d} sentence {s}." for s in range(d % 4 + 1)] + [""]
    write(tmp_path / "a.txt", "\n".join(lines[:30]).encode() + b"\n")
    write(tmp_path / "b.txt", "\n".join(lines[30:]).encode() + b"\n")
    corpus = corpora.TextFiles([str(tmp_path / "a.txt"), str(tmp_path / "b.txt")], input_format)
    whole = list(corpus)
    sliced = [
        document for segments in corpus.slices(num_slices) for document in corpus.read(segments)
    ]
    assert sliced == whole
    assert len(whole) >= 23


def test_plain_text_formats_split_sentences(tmp_path):
    path = write(
        tmp_path / "c.txt", b"Mr. Smith came. He left at 3.30 p.m. today!\nSecond doc. Yes.\n"
    )
    assert list(corpora.TextFiles(path, "lines")) == [
        ["Mr. Smith came.", "He left at 3.30 p.m. today!"],
        ["Second doc.", "Yes."],
    ]
    path = write(tmp_path / "d.txt", b"Block one line\ncontinues here. Next one.\n\nBlock two.\n")
    assert list(corpora.TextFiles(path, "blocks")) == [
        ["Block one line continues here.", "Next one."],
        ["Block two."],
    ]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("It cost $3.50. Then it rose.", ["It cost $3.50.", "Then it rose."]),
        (
            "Dr. Who met Mrs. Smith, e.g. at St. Paul's. They talked.",
            ["Dr. Who met Mrs. Smith, e.g. at St. Paul's.", "They talked."],
        ),
        ('He said "Stop." Then he left.', ['He said "Stop."', "Then he left."]),
        (
            "J. R. R. Tolkien wrote it. The U.S. Army read it.",
            ["J. R. R. Tolkien wrote it.", "The U.S. Army read it."],
        ),
        ("What? Really! Yes... Indeed.", ["What?", "Really!", "Yes...", "Indeed."]),
        (
            "version 3.11 is out. see docs.python.org for more",
            ["version 3.11 is out. see docs.python.org for more"],
        ),
        ("第一句。第二句！", ["第一句。", "第二句！"]),
        ("   ", []),
    ],
)
def test_sentence_splitter(text, expected):
    assert corpora.split_sentences(text) == expected


def test_missing_glob_and_bad_format_are_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing"):
        corpora.TextFiles(str(tmp_path / "nothing*.txt"))
    write(tmp_path / "c.txt", b"x\n")
    with pytest.raises(ValueError, match="--input_format"):
        corpora.TextFiles(str(tmp_path / "c.txt"), "xml")


def test_tfds_corpus_reads_documents_from_a_dataset():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=7):
        documents = list(corpora.tfds_corpus("imdb_reviews", text_field="text", split="train"))
        with pytest.raises(ValueError, match="--tfds_text_field 'body'"):
            list(corpora.tfds_corpus("imdb_reviews", text_field="body"))
    assert len(documents) == 7
    assert all(isinstance(s, str) and s for d in documents for s in d)


def test_builtin_corpus_is_python_prose_read_without_importing(monkeypatch):
    before = set(sys.modules)
    documents = list(corpora.builtin_corpus())
    sentences = [s for d in documents for s in d]
    words = sum(len(s.split()) for s in sentences)
    assert len(documents) > 300 and words > 100_000
    assert not any(s.startswith((">>>", "...")) for s in sentences)
    assert {"turtle", "tkinter", "antigravity", "this"}.isdisjoint(set(sys.modules) - before)
    topics = corpora.builtin_corpus()
    assert any("statement" in s for s in next(iter(topics)))
