"""Corpora: where documents (lists of sentences) come from.

Sources:
- text files or globs in Google's layout (`input_format="google"`: one sentence per line, a blank
  line between documents) or plain text (`"lines"`: one document per line, `"blocks"`: one
  document per blank-line-separated block), split into sentences by `split_sentences`;
- a TFDS dataset and its text field (`tfds_corpus`);
- the built-in corpus (`builtin_corpus`): the English prose that ships inside Python itself.

Files are read as bytes: invalid UTF-8 is replaced and counted, `\\r\\n` and a leading BOM are
handled, empty documents are skipped. `TextFiles` can also be cut into byte ranges that start and
end at document boundaries, which is how `create_pretraining_data` shares work among processes
without reading everything in one place.
"""

from __future__ import annotations

import ast
import concurrent.futures
import dataclasses
import glob as _glob
import hashlib
import os
import re
import sys
import sysconfig
import textwrap
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from kbert.errors import InputError, MissingFileError, SettingError

Document = list  # a document is a list of sentences (str)

INPUT_FORMATS = ("google", "lines", "blocks")
BUILTIN = "builtin"

_BOM = b"\xef\xbb\xbf"
_READ_BLOCK = 4 << 20
_REPLACEMENT = "\ufffd"
_REPLACEMENT_BYTES = _REPLACEMENT.encode("utf-8")


@dataclasses.dataclass
class ReadStats:
    """Counters filled while reading a corpus."""

    bytes_read: int = 0
    invalid_utf8_replaced: int = 0

    def add(self, other: ReadStats) -> None:
        """Accumulate another reader's counts."""
        self.bytes_read += other.bytes_read
        self.invalid_utf8_replaced += other.invalid_utf8_replaced


def decode_utf8(data: bytes, stats: ReadStats | None = None) -> str:
    """UTF-8 bytes -> str; each invalid sequence becomes U+FFFD and is counted in `stats`."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("utf-8", "replace")
        if stats is not None:
            stats.invalid_utf8_replaced += text.count(_REPLACEMENT) - data.count(_REPLACEMENT_BYTES)
        return text


# ---------------------------------------------------------------------------------------------
# Sentence splitting

# Words that end with a period without ending a sentence (compared lower-cased, without the dot).
ABBREVIATIONS = frozenset(
    """mr mrs ms dr prof sr jr st mt vs etc e.g i.e cf al fig figs eq eqs no nos vol vols ed eds
    pp p approx dept est inc ltd co corp bros gen gov col lt sgt capt rev hon jan feb mar apr jun
    jul aug sep sept oct nov dec u.s u.k a.m p.m ph.d b.c a.d ca op viz resp incl min max""".split()
)
# Candidate boundary: terminator(s), optional closing quotes/brackets, whitespace, then something
# that can start a sentence (capital letter, digit, or an opening quote/bracket).
_BOUNDARY = re.compile(
    r"""([.!?\u2026]+)(["'\u201d\u2019)\]]*)\s+(?=["'\u201c\u2018(\[]?[^\W_a-z])"""
)
_CJK_BOUNDARY = re.compile(r"([\u3002\uff01\uff1f]+[\u300d\u300f\uff09]*)")
_WHITESPACE = re.compile(r"\s+")


def split_sentences(text: str) -> list[str]:
    """Rule-based sentence splitter for plain text.

    Splits after `.`, `!`, `?`, `…` (and the CJK full stops) when whitespace and a capital letter,
    digit or opening quote follow; keeps abbreviations ("Dr.", "e.g."), initials ("J. Smith"),
    dotted acronyms ("U.S.") and decimals ("3.14") inside their sentence; closing quotes stay with
    the sentence they close.

    Args:
        text: a paragraph or a whole document; newlines count as spaces.

    Examples:
    >>> split_sentences('Dr. Smith paid $3.50 for it. "Really?" he asked. "Yes." The U.S. agreed.')
    ['Dr. Smith paid $3.50 for it.', '"Really?" he asked.', '"Yes."', 'The U.S. agreed.']
    """
    text = _WHITESPACE.sub(" ", text).strip()
    if not text:
        return []
    sentences = []
    start = 0
    for match in _BOUNDARY.finditer(text):
        if match.group(1) == "." and not match.group(2) and _is_abbreviation(text, match.start()):
            continue
        end = match.end(2)
        sentences.extend(_split_cjk(text[start:end]))
        start = match.end()
    sentences.extend(_split_cjk(text[start:]))
    return [s for s in sentences if s]


def _is_abbreviation(text: str, dot: int) -> bool:
    word_start = text.rfind(" ", 0, dot) + 1
    word = text[word_start:dot].lstrip("\"'(\u201c\u2018[").lower()
    if not word:
        return False
    # Initials ("J. Smith") and dotted acronyms ("U.S.") keep their periods.
    if len(word) == 1 and word.isalpha():
        return True
    if "." in word and all(part.isalpha() and len(part) <= 2 for part in word.split(".")):
        return True
    return word in ABBREVIATIONS


def _split_cjk(sentence: str) -> list[str]:
    parts = _CJK_BOUNDARY.split(sentence)
    if len(parts) == 1:
        return [sentence.strip()]
    joined = ["".join(parts[i : i + 2]).strip() for i in range(0, len(parts), 2)]
    return [s for s in joined if s]


def text_to_document(text: str) -> list[str]:
    """Free text (paragraphs separated by newlines) -> a document: its sentences in order."""
    sentences: list[str] = []
    for paragraph in re.split(r"\n\s*\n", text):
        sentences.extend(split_sentences(paragraph))
    return sentences


# ---------------------------------------------------------------------------------------------
# Text files


@dataclasses.dataclass(frozen=True)
class Segment:
    """Bytes [start, end) of one file; both ends are document boundaries."""

    path: str
    start: int
    end: int


def _open(path: str):
    if "://" not in path:
        return open(path, "rb")
    import tensorflow as tf  # only remote paths need TensorFlow's file systems

    return tf.io.gfile.GFile(path, "rb")


def _expand(patterns: str | Sequence[str]) -> list[str]:
    if isinstance(patterns, str):
        patterns = [p for p in patterns.split(",") if p.strip()]
    files: list[str] = []
    for pattern in patterns:
        pattern = pattern.strip()
        if "://" in pattern:
            import tensorflow as tf

            matches = sorted(tf.io.gfile.glob(pattern))
        else:
            matches = sorted(
                p for p in _glob.glob(os.path.expanduser(pattern)) if not os.path.isdir(p)
            )
        if not matches:
            raise MissingFileError(f"--input_file {pattern}: no file matches")
        files.extend(matches)
    return files


def _size(path: str) -> int:
    if "://" not in path:
        try:
            return os.path.getsize(path)
        except OSError as e:
            raise InputError(f"--input_file {path}: cannot read it ({e.strerror})") from None
    import tensorflow as tf

    return tf.io.gfile.stat(path).length


class TextFiles:
    """Documents from text files (Google's layout or plain text), readable in byte-range slices.

    Args:
        patterns: a file, a glob, a comma-separated list of them, or a list.
        input_format: "google" (one sentence per line, blank line between documents), "lines"
            (one document per line) or "blocks" (blank-line-separated documents of free text).

    Examples:
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "corpus.txt")
    >>> _ = open(path, "w").write("First sentence.\\nSecond one.\\n\\nOther document.\\n")
    >>> list(TextFiles(path))
    [['First sentence.', 'Second one.'], ['Other document.']]
    """

    def __init__(self, patterns: str | Sequence[str], input_format: str = "google"):
        if input_format not in INPUT_FORMATS:
            raise SettingError(
                f"--input_format must be one of {', '.join(INPUT_FORMATS)}, got {input_format!r}"
            )
        self.input_format = input_format
        self.source = patterns if isinstance(patterns, str) else ",".join(patterns)
        self.files = _expand(patterns)
        if any("://" in path for path in self.files):
            # One request per remote file: in parallel, so thousands of files stay quick to plan.
            with concurrent.futures.ThreadPoolExecutor(32) as pool:
                self.sizes = list(pool.map(_size, self.files))
        else:
            self.sizes = [_size(path) for path in self.files]
        for path in self.files:
            if "://" not in path and not os.access(path, os.R_OK):
                raise InputError(f"--input_file {path}: file is not readable")
        self.description = f"{len(self.files)} file(s), {input_format} layout"

    @property
    def total_bytes(self) -> int:
        """Sum of the files' sizes."""
        return sum(self.sizes)

    def fingerprint(self) -> str:
        """Identity of the input (paths, sizes, modification times, layout) for resume checks."""
        parts = [self.input_format]
        for path, size in zip(self.files, self.sizes):
            mtime = os.path.getmtime(path) if "://" not in path else 0
            parts.append(f"{path}:{size}:{mtime}")
        return hashlib.sha256("\n".join(parts).encode("utf-8")).hexdigest()

    def __iter__(self) -> Iterator[Document]:
        return self.read(self.slices(1)[0])

    def slices(self, num_slices: int) -> Slices:
        """Cut the files into `num_slices` runs of about equal bytes, each starting and ending at a
        document boundary (file ends are boundaries too). A slice can be empty. Nothing is read
        here: see `Slices`."""
        return Slices(self, num_slices)

    def _boundary_at(self, offset: int) -> tuple[int, int]:
        index = 0
        while index < len(self.files) and offset >= self.sizes[index]:
            offset -= self.sizes[index]
            index += 1
        if index == len(self.files):
            return (index, 0)
        if offset == 0:
            return (index, 0)
        with _open(self.files[index]) as f:
            f.seek(offset - 1)
            position = offset - 1 + len(f.readline())
            if self.input_format == "lines":
                return (index, position) if position < self.sizes[index] else (index + 1, 0)
            while True:
                line = f.readline()
                if not line:
                    return (index + 1, 0)
                if not line.strip():
                    return (index, position)
                position += len(line)

    def _segments(self, begin: tuple[int, int], end: tuple[int, int]) -> list[Segment]:
        segments = []
        for index in range(begin[0], min(end[0], len(self.files) - 1) + 1):
            start = begin[1] if index == begin[0] else 0
            stop = end[1] if index == end[0] else self.sizes[index]
            if stop > start:
                segments.append(Segment(self.files[index], start, stop))
        return segments

    def read(
        self, segments: Sequence[Segment], stats: ReadStats | None = None
    ) -> Iterator[Document]:
        """Documents of a slice (from `slices`), in file order; counts go to `stats`."""
        stats = stats if stats is not None else ReadStats()
        for segment in segments:
            yield from self._read_segment(segment, stats)

    def _read_segment(self, segment: Segment, stats: ReadStats) -> Iterator[Document]:
        lines = _lines(segment, stats)
        if self.input_format == "google":
            document: list[str] = []
            for line in lines:
                line = line.strip()
                if line:
                    document.append(line)
                elif document:
                    yield document
                    document = []
            if document:
                yield document
        elif self.input_format == "lines":
            for line in lines:
                document = split_sentences(line)
                if document:
                    yield document
        else:
            block: list[str] = []
            for line in lines:
                if line.strip():
                    block.append(line)
                elif block:
                    document = split_sentences(" ".join(block))
                    if document:
                        yield document
                    block = []
            if block:
                document = split_sentences(" ".join(block))
                if document:
                    yield document


class Slices(Sequence):
    """The slices of `TextFiles.slices`: slice k holds the documents that start in bytes
    [total * k // n, total * (k + 1) // n) of the files laid end to end.

    Planning reads nothing but the file sizes: slice k's two document boundaries are found when
    it is first asked for, by reading from its nominal offsets to the next blank line, so a worker
    finds the boundaries of the slices it makes and the plan stays cheap for thousands of files.
    """

    def __init__(self, corpus: TextFiles, num_slices: int):
        self.corpus = corpus
        self.num_slices = num_slices
        self._cuts: dict[int, tuple[int, int]] = {}

    def __len__(self) -> int:
        return self.num_slices

    def __getitem__(self, k: int) -> list[Segment]:
        if not 0 <= k < self.num_slices:
            raise IndexError(f"slice {k} of {self.num_slices}")
        start = self._cut(k)
        return self.corpus._segments(start, max(start, self._cut(k + 1)))

    def nominal_bytes(self, k: int) -> int:
        """Bytes of slice k before its ends move to document boundaries."""
        total = self.corpus.total_bytes
        return total * (k + 1) // self.num_slices - total * k // self.num_slices

    def _cut(self, k: int) -> tuple[int, int]:
        if k not in self._cuts:
            if k == 0:
                self._cuts[k] = (0, 0)
            elif k == self.num_slices:
                self._cuts[k] = (len(self.corpus.files), 0)
            else:
                total = self.corpus.total_bytes
                self._cuts[k] = self.corpus._boundary_at(total * k // self.num_slices)
        return self._cuts[k]


def _lines(segment: Segment, stats: ReadStats) -> Iterator[str]:
    try:
        f = _open(segment.path)
    except OSError as e:
        raise InputError(f"--input_file {segment.path}: cannot read it ({e.strerror})") from None
    with f:
        f.seek(segment.start)
        remaining = segment.end - segment.start
        carry = b""
        first = segment.start == 0
        while remaining > 0:
            # Decoding blocks of whole lines is several times faster than line by line.
            block = f.read(min(remaining, _READ_BLOCK))
            if not block:
                break
            remaining -= len(block)
            stats.bytes_read += len(block)
            if first:
                block = block[len(_BOM) :] if block.startswith(_BOM) else block
                first = False
            block = carry + block
            cut = block.rfind(b"\n") + 1 if remaining > 0 else len(block)
            block, carry = block[:cut], block[cut:]
            lines = decode_utf8(block, stats).split("\n")
            if lines[-1] == "":  # the newline ending the block is no blank line
                lines.pop()
            yield from lines
        if carry:
            yield decode_utf8(carry, stats)


# ---------------------------------------------------------------------------------------------
# Documents from Python iterables, TFDS, the built-in corpus


class Documents:
    """A re-iterable corpus built by calling `factory()` for each pass.

    Args:
        factory: returns a fresh iterator of documents (lists of sentences).
        description: what the corpus is (shown in logs and metadata).
        stats: where the factory counts replaced invalid bytes, if it reads bytes.
    """

    def __init__(
        self,
        factory: Callable[[], Iterable[Document]],
        description: str,
        stats: ReadStats | None = None,
    ):
        self._factory = factory
        self.description = description
        self.stats = stats if stats is not None else ReadStats()

    def __iter__(self) -> Iterator[Document]:
        for document in self._factory():
            document = [s.strip() for s in document if s and s.strip()]
            if document:
                yield document


def tfds_corpus(
    name: str, text_field: str = "text", split: str = "train", data_dir: str | None = None
) -> Documents:
    """Documents from a TFDS dataset: one example = one document, its `text_field` split into
    sentences (each line a paragraph).

    Args:
        name: TFDS dataset name, e.g. "wikipedia/20230601.en".
        text_field: the feature holding the text.
        split: TFDS split expression.
        data_dir: TFDS data directory.

    Examples:
    >>> import tensorflow_datasets as tfds
    >>> with tfds.testing.mock_data(num_examples=2):
    ...     docs = list(tfds_corpus("imdb_reviews", text_field="text"))
    >>> len(docs)
    2
    """
    stats = ReadStats()

    def factory() -> Iterator[Document]:
        import tensorflow_datasets as tfds

        try:
            dataset = tfds.load(name, split=split, data_dir=data_dir, shuffle_files=False)
        except Exception as e:  # TFDS raises many types for an unknown name or split
            raise SettingError(
                f"--tfds_name {name} (split {split}): cannot load it ({e})"
            ) from None
        for example in tfds.as_numpy(dataset):
            if text_field not in example:
                raise SettingError(
                    f"--tfds_text_field {text_field!r}: dataset {name} has fields "
                    f"{', '.join(sorted(example))}"
                )
            value = example[text_field]
            text = decode_utf8(value, stats) if isinstance(value, bytes) else str(value)
            stats.bytes_read += len(value) if isinstance(value, bytes) else len(text)
            yield text_to_document(text)

    return Documents(factory, f"TFDS {name}[{split}].{text_field}", stats)


def python_docstring_documents(
    roots: Sequence[str], exclude_dirs: Iterable[str] = ()
) -> Iterator[Document]:
    """One document per Python source file under `roots`: the prose of its docstrings (module,
    classes, functions, in source order), read with `ast`, never imported. Code examples, doctest
    lines, indented blocks and parameter tables are left out."""
    excluded = set(exclude_dirs) | {"__pycache__"}
    for root in roots:
        for directory, subdirs, files in os.walk(root):
            subdirs[:] = sorted(d for d in subdirs if d not in excluded)
            for name in sorted(files):
                if name.endswith(".py"):
                    document = _docstring_document(os.path.join(directory, name))
                    if document:
                        yield document


def _docstring_document(path: str) -> list[str]:
    try:
        with open(path, "rb") as f:
            tree = ast.parse(f.read(), filename=path)
    except (SyntaxError, ValueError, OSError, RecursionError):
        return []
    sentences: list[str] = []
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            docstring = ast.get_docstring(node, clean=True)
            if docstring:
                sentences.extend(prose_sentences(docstring))
        children = [
            child
            for child in ast.iter_child_nodes(node)
            if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        ]
        stack.extend(reversed(children))
    return sentences


_NOT_PROSE_START = (">>>", "...", "..", ":", "$", "#", "|", "+-", "==", "--", "{", "}")


def prose_sentences(text: str) -> list[str]:
    """Sentences of the prose paragraphs of a docstring or reST-like text (code, tables, doctests,
    indented blocks and headings dropped)."""
    sentences: list[str] = []
    for paragraph in re.split(r"\n\s*\n", textwrap.dedent(text.expandtabs())):
        lines = [line.rstrip() for line in paragraph.split("\n") if line.strip()]
        if not lines or any(line[0].isspace() for line in lines):
            continue
        if any(line.lstrip().startswith(_NOT_PROSE_START) for line in lines):
            continue
        joined = " ".join(lines)
        words = joined.split()
        letters = sum(ch.isalpha() for ch in joined)
        if (
            len(words) < 4
            or letters < 0.7 * len(joined.replace(" ", ""))
            or joined[-1] not in ".!?:)\"'"
        ):
            continue
        sentences.extend(split_sentences(joined))
    return sentences


def builtin_corpus() -> Documents:
    """The English prose that ships inside Python: `pydoc_data.topics` (one document per topic)
    plus the docstrings of the standard library's modules (one document per module, read with
    `ast`). Extracted at run time; its size depends on the Python version (~150k words).

    Examples:
    >>> first = next(iter(builtin_corpus()))  # the first language-reference topic
    >>> len(first) > 1 and all(isinstance(sentence, str) and sentence for sentence in first)
    True
    """

    def factory() -> Iterator[Document]:
        from pydoc_data.topics import topics

        for name in sorted(topics):
            document = prose_sentences(topics[name])
            if document:
                yield document
        stdlib = sysconfig.get_paths()["stdlib"]
        yield from python_docstring_documents(
            [stdlib],
            exclude_dirs={
                "site-packages",
                "dist-packages",
                "test",
                "tests",
                "idle_test",
                "turtledemo",
            },
        )

    return Documents(factory, f"built-in corpus (Python {sys.version.split()[0]} documentation)")


def write_google_layout(
    documents: Iterable[Document], path: str, progress: Callable[..., Any] | None = None
) -> tuple[int, str]:
    """Write documents in Google's layout (one sentence per line, blank line between documents);
    returns (number of documents, sha256 of the bytes written).

    Args:
        documents: lists of sentences.
        path: the local file to write.
        progress: reports the documents written, called like `tqdm.tqdm` (e.g. that, or
            `kbert.progress.progress`).

    Examples:
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "corpus.txt")
    >>> write_google_layout([["One.", "Two."], ["Three."]], path)[0]
    2
    >>> open(path).read()
    'One.\\nTwo.\\n\\nThree.\\n\\n'
    """
    if progress is not None:
        documents = progress(documents, desc="spooling", unit="documents")
    digest = hashlib.sha256()
    count = 0
    with open(path, "wb") as f:
        for document in documents:
            lines = [_WHITESPACE.sub(" ", s).strip() for s in document]
            lines = [s for s in lines if s]
            if not lines:
                continue
            data = ("\n".join(lines) + "\n\n").encode("utf-8")
            digest.update(data)
            f.write(data)
            count += 1
    return count, digest.hexdigest()


def resolve_corpus(
    input_file: str | Sequence[str] | None = None,
    input_format: str = "google",
    tfds_name: str | None = None,
    tfds_text_field: str = "text",
    tfds_split: str = "train",
    tfds_data_dir: str | None = None,
):
    """The corpus the flags name: TFDS if `tfds_name`, the built-in corpus if `input_file` is None
    or "builtin", else text files."""
    if tfds_name:
        return tfds_corpus(tfds_name, tfds_text_field, tfds_split, tfds_data_dir)
    if (
        input_file is None
        or input_file == BUILTIN
        or (not isinstance(input_file, str) and list(input_file) == [BUILTIN])
    ):
        return builtin_corpus()
    return TextFiles(input_file, input_format)


def sentences_of(corpus: Iterable[Document]) -> Iterator[str]:
    """Every sentence of a corpus, in order (what a vocabulary learner reads)."""
    for document in corpus:
        yield from document
