"""Progress of long operations: a tqdm bar on a terminal, periodic plain lines in a log file.

`progress` takes tqdm's arguments and returns an object with tqdm's everyday interface
(iterate over it, or `update(n)` then `close()`, or use it as a context manager), so functions
that report progress take any tqdm-like factory: `tqdm.tqdm` itself, or this one.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterable, Iterator
from typing import IO, Any

# Without a total a line is printed every DEFAULT_INTERVAL seconds; with one, also at every tenth.
DEFAULT_INTERVAL = 10.0
_STEPS = 10


def progress(
    iterable: Iterable | None = None,
    *,
    desc: str,
    total: int | None = None,
    unit: str = "it",
    file: IO[str] | None = None,
    interval: float = DEFAULT_INTERVAL,
    disable: bool = False,
) -> Any:
    """A tqdm bar when `file` (default stderr) is a terminal, else a `LineProgress`.

    Args:
        iterable: what to iterate over (None: count with `update`).
        desc: what is being done, e.g. "validating records".
        total: expected count, if known (else taken from `len(iterable)` when it has one).
        unit: what is counted, e.g. "records".
        file: where to report (default: sys.stderr).
        interval: seconds between plain lines.
        disable: report nothing (iteration still works).

    Examples:
    >>> import io
    >>> log = io.StringIO()
    >>> sum(progress(range(5), desc="adding", unit="numbers", file=log))
    10
    >>> log.getvalue().splitlines()[-1].startswith("adding: 5/5 numbers (100%, ")
    True
    """
    file = sys.stderr if file is None else file
    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(iterable)
    if not disable and _is_terminal(file):
        from tqdm import tqdm

        return tqdm(
            iterable, desc=desc, total=total, unit=f" {unit}", file=file, dynamic_ncols=True
        )
    return LineProgress(
        iterable, desc=desc, total=total, unit=unit, file=file, interval=interval, disable=disable
    )


def _is_terminal(file: IO[str]) -> bool:
    try:
        return file.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class LineProgress:
    """tqdm's everyday interface printing whole lines (no carriage returns), for log files.

    A line goes out every `interval` seconds and, when `total` is known, at every tenth of it;
    `close()` prints the last one with the elapsed time.

    Args:
        iterable: what to iterate over (None: count with `update`).
        desc: what is being done.
        total: expected count, if known.
        unit: what is counted.
        file: where the lines go.
        interval: seconds between lines.
        disable: print nothing.

    Examples:
    >>> import io
    >>> log = io.StringIO()
    >>> with LineProgress(desc="reading", total=4, unit="files", file=log) as bar:
    ...     bar.update(2)
    ...     bar.update(2)
    >>> [line.split(" (")[0] for line in log.getvalue().splitlines()]
    ['reading: 2/4 files', 'reading: 4/4 files']
    """

    def __init__(
        self,
        iterable: Iterable | None = None,
        *,
        desc: str,
        total: int | None = None,
        unit: str = "it",
        file: IO[str] | None = None,
        interval: float = DEFAULT_INTERVAL,
        disable: bool = False,
    ):
        self.iterable = iterable
        self.desc = desc
        self.total = total
        self.unit = unit
        self.file = sys.stderr if file is None else file
        self.interval = interval
        self.disable = disable
        self.n = 0
        self._start = self._last = time.monotonic()
        self._printed = -1  # the count of the last line printed
        self._closed = False
        self._next_step = self._step_after(0)

    def __iter__(self) -> Iterator:
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        """Count `n` more; print a line if a tenth of the total or `interval` seconds passed."""
        self.n += n
        if self.disable:
            return
        now = time.monotonic()
        if self.n >= self._next_step or now - self._last >= self.interval:
            self._print(now)

    def close(self) -> None:
        """Print the final line (once)."""
        if self._closed:
            return
        self._closed = True
        if not self.disable and self.n != self._printed:
            self._print(time.monotonic())

    def _step_after(self, n: int) -> float:
        if not self.total:
            return math.inf
        step = self.total / _STEPS
        return math.floor(n / step + 1) * step

    def _print(self, now: float) -> None:
        elapsed = now - self._start
        count = f"{self.n:,}/{self.total:,}" if self.total else f"{self.n:,}"
        share = f"{min(self.n / self.total, 1):.0%}, " if self.total else ""
        rate = f", {self.n / elapsed:,.0f} {self.unit}/s" if elapsed > 0 else ""
        print(
            f"{self.desc}: {count} {self.unit} ({share}{elapsed:.1f}s{rate})",
            file=self.file,
            flush=True,
        )
        self._last = now
        self._printed = self.n
        self._next_step = self._step_after(self.n)
