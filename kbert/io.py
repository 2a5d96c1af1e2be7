"""File I/O shared by every kbert module: atomic writes, atomic directory publishing, JSON reading,
positive-integer checks and resolving a model file.

Every output is written under a temporary sibling name, `.tmp-<random>-<name>`, then renamed into
place, so a reader never sees half a file and an interrupted write leaves no file under the final
name. The name keeps its extension (Keras checks `.keras` and `.weights.h5`) and a leading dot, and
the random part keeps two concurrent writers apart. On local disk the data is flushed (`fsync`)
before the rename and the rename before the write returns, so a power cut cannot publish an empty
file either. A killed writer leaves its `.tmp-*` sibling behind: `sweep_temporaries` removes them
when the next run starts. Local paths use Python's file I/O (writing a
vocabulary starts no TensorFlow); any other path (`gs://...`) goes through `tf.io.gfile`.

Like `kbert.features`, this module sits at the bottom: it imports no other kbert module but
`kbert.errors`, and `tfrecords_tools` may import it. A local write that fails (no permission, a
full disk, no such folder) is a `FileAccessError` naming the file.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import json
import os
import posixpath
import re
import shutil
import sys
import uuid
from collections.abc import Iterator
from typing import Any

from kbert.errors import FileAccessError, InputError, MissingFileError, SettingError

# A run directory's final pre-training model (`kbert.train`), found by `resolve_model_file`.
MODEL_FILE = "model.keras"
TEMPORARY_PREFIX = ".tmp-"
# An existing directory moved aside while `publish_directory` replaces it.
OLD_PREFIX = ".old-"


def _is_remote(path: str) -> bool:
    return "://" in path


def _gfile():
    import tensorflow as tf  # only remote paths need TensorFlow's file systems

    return tf.io.gfile


def exists(path: str) -> bool:
    """Whether `path` exists (local or any `tf.io.gfile` file system)."""
    return _gfile().exists(path) if _is_remote(path) else os.path.exists(path)


def isdir(path: str) -> bool:
    """Whether `path` is a directory (local or any `tf.io.gfile` file system)."""
    return _gfile().isdir(path) if _is_remote(path) else os.path.isdir(path)


def _open(path: str, mode: str):
    return _gfile().GFile(path, mode) if _is_remote(path) else open(path, mode)


def _rename(source: str, destination: str) -> None:
    if _is_remote(destination):
        _gfile().rename(source, destination, overwrite=True)
    else:
        os.replace(source, destination)


def _remove(path: str) -> None:
    if _is_remote(path):
        _gfile().remove(path)
    else:
        os.remove(path)


def _listdir(path: str) -> list[str]:
    return [e.rstrip("/") for e in _gfile().listdir(path)] if _is_remote(path) else os.listdir(path)


def _rename_directory(source: str, destination: str) -> None:
    """Rename a directory to an absent `destination` (on gs:// object by object, not atomic)."""
    if _is_remote(destination):
        _gfile().rename(source, destination)
    else:
        os.rename(source, destination)


def _rmtree(path: str) -> None:
    if _is_remote(path):
        _gfile().rmtree(path)
    else:
        shutil.rmtree(path)


def fsync(path: str) -> None:
    """Flush a local file or directory to the disk (object stores such as gs:// need nothing).

    Args:
        path: the file or directory.

    Examples:
    >>> fsync(write_atomically("synced.txt", "kept"))
    """
    if _is_remote(path):
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temporary_path(path: str) -> str:
    """The temporary sibling a write to `path` goes through: `<dir>/.tmp-<random>-<name>`.

    Args:
        path: the final path.

    Examples:
    >>> temporary_path("run/model.keras").startswith("run/.tmp-")
    True
    >>> temporary_path("run/model.keras").endswith("-model.keras")
    True
    """
    directory, name = posixpath.split(path.rstrip("/"))
    return posixpath.join(directory, f"{TEMPORARY_PREFIX}{uuid.uuid4().hex[:8]}-{name}")


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """A temporary path to write; renamed to `path` when the block ends without an error.

    On an error the temporary file is removed and `path` is left as it was.

    Args:
        path: the final path (any `tf.io.gfile` path).

    Examples:
    >>> with atomic_path("notes.txt") as tmp:
    ...     _ = open(tmp, "w").write("done\\n")
    >>> open("notes.txt").read()
    'done\\n'
    """
    tmp = temporary_path(path)
    try:
        yield tmp
        try:
            if not isdir(tmp):
                fsync(tmp)
            _rename(tmp, path)
            fsync(posixpath.dirname(path) or ".")
        except OSError as e:
            raise _cannot_write(path, e) from None
    finally:
        if exists(tmp):
            _remove(tmp)


def write_atomically(path: str, data: str | bytes) -> str:
    """Write text (UTF-8) or bytes to `path` atomically; returns `path`.

    Args:
        path: the file to write (any `tf.io.gfile` path); its directory must exist.
        data: the whole content.

    Examples:
    >>> write_atomically("hello.txt", "hello\\n")
    'hello.txt'
    >>> open("hello.txt").read()
    'hello\\n'
    """
    try:
        with atomic_path(path) as tmp, _open(tmp, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
    except FileAccessError:
        raise
    except OSError as e:
        raise _cannot_write(path, e) from None
    return path


def _cannot_write(path: str, error: OSError) -> FileAccessError:
    # The temporary name in the OSError would mislead: name the file being written.
    return FileAccessError(f"{path}: cannot write it ({error.strerror or error})")


def write_json(path: str, data: Any, sort_keys: bool = True) -> str:
    """Write `data` as indented JSON (one trailing newline) to `path` atomically; returns `path`.

    Args:
        path: the file to write (any `tf.io.gfile` path).
        data: anything `json.dumps` takes.
        sort_keys: sort object keys (False keeps the dict's order, e.g. Google's config layout).

    Examples:
    >>> _ = write_json("results.json", {"b": 1, "a": 2})
    >>> read_json("results.json")
    {'a': 2, 'b': 1}
    """
    return write_atomically(path, json.dumps(data, indent=2, sort_keys=sort_keys) + "\n")


def read_json(path: str, what: str = "JSON file") -> Any:
    """The parsed content of a JSON file, with an error naming the file when it is absent or bad.

    Args:
        path: the file to read (any `tf.io.gfile` path).
        what: what the file is, for the error messages (e.g. "bert_config.json").

    Raises:
        FileNotFoundError: `path` does not exist.
        ValueError: `path` is not valid JSON.

    Examples:
    >>> read_json("absent.json", "run configuration")
    Traceback (most recent call last):
    ...
    kbert.errors.MissingFileError: absent.json: no such run configuration
    """
    if not exists(path):
        raise MissingFileError(f"{path}: no such {what}")
    with _open(path, "rb") as f:
        text = f.read()
    try:
        return json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not valid JSON ({e})") from None


def check_positive_int(name: str, value: Any) -> int:
    """`value` if it is a positive integer (not a bool), else a SettingError naming `name`.

    Args:
        name: the argument's name, for the message.
        value: the value to check.

    Examples:
    >>> check_positive_int("steps", 0)
    Traceback (most recent call last):
    ...
    kbert.errors.SettingError: steps must be a positive integer, got 0
    """
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise SettingError(f"{name} must be a positive integer, got {value!r}")
    return value


def resolve_model_file(path: str, action: str = "load") -> str:
    """The `.keras` file `path` names: a run directory's `model.keras`, or the file itself.

    Args:
        path: a run directory or a `.keras` file (any `tf.io.gfile` path).
        action: what the model is for, for the error message ("load", "export", ...).

    Raises:
        FileNotFoundError: naming the file looked for and what was expected.

    Examples:
    >>> resolve_model_file("no_run", action="export")
    Traceback (most recent call last):
    ...
    kbert.errors.MissingFileError: no_run: no model to export (expected a run directory holding ...)
    """
    model_file = posixpath.join(path, MODEL_FILE) if isdir(path) else path
    if not exists(model_file):
        raise MissingFileError(
            f"{model_file}: no model to {action} (expected a run directory holding "
            f"{MODEL_FILE}, or a .keras file)"
        )
    return model_file


def sweep_temporaries(directory: str) -> list[str]:
    """Remove the temporaries (`.tmp-*`, `.old-*`) killed writers left in `directory`; returns them.

    Only for a directory no other process is writing to (a run's own directory at its start).

    Args:
        directory: the directory to clean (any `tf.io.gfile` path; absent is fine).

    Examples:
    >>> os.makedirs("swept", exist_ok=True)
    >>> _ = open(temporary_path("swept/model.keras"), "w").write("half")
    >>> [p.split("-")[-1] for p in sweep_temporaries("swept")], os.listdir("swept")
    (['model.keras'], [])
    """
    if not isdir(directory):
        return []
    gfile = _gfile()
    swept = []
    for name in sorted(gfile.listdir(directory)):
        name = name.rstrip("/")
        if name.startswith((TEMPORARY_PREFIX, OLD_PREFIX)):
            path = posixpath.join(directory, name)
            if gfile.isdir(path):
                gfile.rmtree(path)
            else:
                gfile.remove(path)
            swept.append(path)
    return swept


def publish_directory(local_dir: str, destination: str) -> None:
    """Copy a local directory to `destination`, replacing it without a moment where it is absent.

    The copy is written to a temporary sibling (flushed on local disk), then swapped with an
    existing `destination` in one atomic step (Linux's `renameat2` with `RENAME_EXCHANGE`), so a
    reader finds the old version or the new one, whole, at every instant; the old one, now under
    the temporary name, is then deleted. Where no such swap exists (gs://, another OS or file
    system) the old version is moved aside, the copy renamed into place and the old one deleted
    (or put back on failure): a short moment without `destination`. What a killed publish of the
    same destination left is cleared first (its old version put back if the kill came between
    the two renames), so one publisher per destination at a time.

    Args:
        local_dir: a complete local directory.
        destination: where it goes (any `tf.io.gfile` path; replaced if it exists).

    Examples:
    >>> os.makedirs("staging/sub")
    >>> _ = write_atomically("staging/sub/a.txt", "a")
    >>> publish_directory("staging", "published")
    >>> sorted(os.listdir("published/sub"))
    ['a.txt']
    """
    destination = destination.rstrip("/")
    parent, name = posixpath.split(destination)
    # What a killed publish left: its copy (or, after a swap, the old version under the copy's
    # name), and the previous version moved aside (put back when the kill came between the two
    # renames of the fallback).
    own = re.compile(rf"({re.escape(TEMPORARY_PREFIX)}|{re.escape(OLD_PREFIX)})[0-9a-f]{{8}}-")
    entries = _listdir(parent or ".") if isdir(parent or ".") else []
    for entry in sorted(entries, key=lambda e: not e.startswith(OLD_PREFIX)):
        match = own.match(entry)
        if not match or entry[match.end() :] != name:
            continue
        leftover = posixpath.join(parent, entry)
        if match.group(1) == OLD_PREFIX and not exists(destination):
            _rename_directory(leftover, destination)
        else:
            _rmtree(leftover)
    new = temporary_path(destination)
    try:
        _copy_tree(local_dir, new)
        if not exists(destination):
            _rename_directory(new, destination)
        elif not _exchange(new, destination):
            _replace_by_two_renames(new, destination)
        # After a swap `new` holds the previous version: removed below like an unused copy.
        fsync(parent or ".")
    finally:
        if exists(new):
            _rmtree(new)


def _copy_tree(local_dir: str, target: str) -> None:
    """Copy a local directory tree to `target` (any `tf.io.gfile` path), flushed on local disk."""
    for root, _, files in os.walk(local_dir):
        directory = posixpath.join(target, os.path.relpath(root, local_dir))
        if _is_remote(target):
            _gfile().makedirs(directory)
        else:
            os.makedirs(directory, exist_ok=True)
        for name in files:
            source, copy = os.path.join(root, name), posixpath.join(directory, name)
            if _is_remote(target):
                _gfile().copy(source, copy)
            else:
                shutil.copyfile(source, copy)
                fsync(copy)
        fsync(directory)


# renameat2's flag that swaps two paths, and "relative to the working directory" (<linux/fs.h>).
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


@functools.lru_cache(maxsize=1)
def _renameat2():
    """glibc's `renameat2` (2.28 and later), or None on other systems."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return None
    function.argtypes = (
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint,
    )
    function.restype = ctypes.c_int
    return function


def _exchange(a: str, b: str) -> bool:
    """Swap two existing local paths in one atomic step; False where the system cannot (then
    nothing moved)."""
    # Hand-written: Python's `os` has no renameat2, and no library offers the exchange.
    renameat2 = None if _is_remote(a) else _renameat2()
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    error = ctypes.get_errno()
    if error in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):  # not this kernel's/file system's
        return False
    raise FileAccessError(f"{b}: cannot replace it ({os.strerror(error)})")


def _replace_by_two_renames(new: str, destination: str) -> None:
    """Move `destination` aside, rename `new` into place, delete the old one (put it back if the
    second rename fails)."""
    old = posixpath.join(
        posixpath.dirname(new), OLD_PREFIX + posixpath.basename(new)[len(TEMPORARY_PREFIX) :]
    )
    _rename_directory(destination, old)
    try:
        _rename_directory(new, destination)
    except BaseException:
        # A directory rename copies object by object on gs://: clear a partial one first.
        if exists(destination):
            _rmtree(destination)
        _rename_directory(old, destination)
        raise
    _rmtree(old)
