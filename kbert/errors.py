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
