"""kbert's own error types: failures that are the input's or the setting's fault, not a bug.

The `kbert` command prints a `KbertError` as one line; anything else keeps its traceback. Each
subclass is also the builtin the Python API raised before (`ValueError`, `FileNotFoundError`,
`OSError`), so `except ValueError` in a caller's code keeps working.
"""


class KbertError(Exception):
    """An expected failure (damaged data, a wrong setting, an interrupted run): the `kbert`
    command reports its message on one line, without a traceback.

    Examples:
    >>> try:
    ...     raise KbertError("data/train-00003: truncated record at byte 999555")
    ... except KbertError as e:
    ...     print(e)
    data/train-00003: truncated record at byte 999555
    """


class SettingError(KbertError, ValueError):
    """A flag, setting, environment variable or argument whose value cannot be used; the message
    names it, the value, and what was expected.

    Examples:
    >>> isinstance(SettingError("steps must be a positive integer, got 0"), ValueError)
    True
    """


class InputError(KbertError, ValueError):
    """An input file whose content cannot be used (malformed, of another kind, or disagreeing with
    its metadata or with the model); the message names the file and what was expected.

    Examples:
    >>> str(InputError("vocab.txt: empty vocabulary"))
    'vocab.txt: empty vocabulary'
    """


class MissingFileError(KbertError, FileNotFoundError):
    """A file, folder or file pattern that a command needs does not exist; the message names it.

    Examples:
    >>> isinstance(MissingFileError("data/train-*: no TFRecord files match"), FileNotFoundError)
    True
    """


class FileAccessError(KbertError, OSError):
    """A file that exists, or is to be written, cannot be read or written (permission denied,
    disk full, a folder where a file should be); the message names the file and the cause.

    Examples:
    >>> str(FileAccessError("run/history.csv: cannot write it (No space left on device)"))
    'run/history.csv: cannot write it (No space left on device)'
    """


class IncompleteRunError(KbertError, RuntimeError):
    """A run that stopped before its end (a worker process died, a pipeline failed) and kept
    what it completed; the message says how to finish it (usually: rerun the same command).

    Examples:
    >>> isinstance(IncompleteRunError("a worker died; rerun to finish"), RuntimeError)
    True
    """


class MissingDependencyError(KbertError, ImportError):
    """An optional package that a chosen setting needs is not installed; the message gives the
    pip command that installs it.

    Examples:
    >>> str(MissingDependencyError('--runner beam needs Apache Beam: pip install "kbert[beam]"'))
    '--runner beam needs Apache Beam: pip install "kbert[beam]"'
    """


class DamagedRecordsError(InputError):
    """A TFRecord shard cannot be read to its end (truncated or corrupted); the message names it,
    the byte offset where it broke, and how to go on.

    Args:
        message: the one-line explanation.
        damaged: the damaged shards' paths.

    Examples:
    >>> DamagedRecordsError("data/b.tfrecord: truncated record at 640", ["data/b.tfrecord"]).damaged
    ['data/b.tfrecord']
    """

    def __init__(self, message: str, damaged: list[str]):
        super().__init__(message)
        self.damaged = list(damaged)


class ModelFileError(InputError):
    """A model file that cannot be loaded as a kbert model (not a `.keras` archive, an unknown
    class, another kind of model); the message names the file.

    Examples:
    >>> str(ModelFileError("run/model.keras: not a loadable .keras model"))
    'run/model.keras: not a loadable .keras model'
    """
