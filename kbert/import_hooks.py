"""One hook on one module's import: work that must happen as a library loads (silence its
start-up output, adjust what it creates) without kbert importing it first."""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any


# By hand: importlib has no post-import hooks (PEP 369 was withdrawn), so a finder wraps the loader.
class OnImport(importlib.abc.MetaPathFinder):
    """Finds module `name` through the other finders and runs its import inside `around()`, then
    calls `then(module)`; leaves `sys.meta_path` at its first lookup of `name`.

    Examples:
    >>> import sys
    >>> seen = []
    >>> sys.modules.pop("colorsys", None) and None
    >>> sys.meta_path.insert(0, OnImport("colorsys", then=lambda m: seen.append(m.__name__)))
    >>> import colorsys
    >>> seen, any(isinstance(f, OnImport) for f in sys.meta_path)
    (['colorsys'], False)
    """

    def __init__(
        self,
        name: str,
        around: Callable[[], AbstractContextManager[Any]] = contextlib.nullcontext,
        then: Callable[[Any], None] | None = None,
    ):
        self.name = name
        self.around = around
        self.then = then

    def find_spec(self, fullname, path=None, target=None):
        """The usual spec of `name` with its loader wrapped; None for every other module."""
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = _WrappedLoader(spec.loader, self.around, self.then)
        return spec


class _WrappedLoader(importlib.abc.Loader):
    def __init__(self, loader: importlib.abc.Loader, around, then):
        self._loader = loader
        self._around = around
        self._then = then

    def __getattr__(self, name):
        return getattr(self._loader, name)

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        with self._around():
            self._loader.exec_module(module)
        if self._then is not None:
            self._then(module)
