"""kbert's own error type: failures that are the input's or the setting's fault, not a bug."""


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


class DamagedRecordsError(KbertError, ValueError):
    """A TFRecord shard cannot be read to its end (truncated or corrupted); the message names it,
    the byte offset where it broke, and how to go on. A ValueError too: bad input, as kbert's
    other data errors.

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


class ModelFileError(KbertError, ValueError):
    """A model file that cannot be loaded as a kbert model (not a `.keras` archive, an unknown
    class, another kind of model); the message names the file.

    Examples:
    >>> str(ModelFileError("run/model.keras: not a loadable .keras model"))
    'run/model.keras: not a loadable .keras model'
    """
