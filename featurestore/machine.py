"""What this process may use of the machine and load: the one place that counts its cores, and the
one way to import a library while a heavy module it would pull in needlessly stays out."""

from __future__ import annotations

import contextlib
import importlib.abc
import os
import sys
from collections.abc import Iterator


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity (a container's or ``taskset``'s limit),
    not the machine's count, which thread pools otherwise oversubscribe."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


class _Absent(importlib.abc.MetaPathFinder):
    """An import finder, first on ``sys.meta_path``, for which ``name`` and its submodules are not installed."""

    def __init__(self, name: str) -> None:
        self.name = name

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> None:
        if fullname == self.name or fullname.startswith(self.name + "."):
            raise ModuleNotFoundError(f"No module named {fullname!r}", name=fullname)
        return None


@contextlib.contextmanager
def hidden_module(name: str, hide: bool = True) -> Iterator[bool]:
    """Inside the block ``import name`` raises ImportError, as if it were not installed (when ``hide`` and the
    process has not imported it already); afterwards it imports as usual. Yields whether it was hidden.

    A finder, not ``sys.modules[name] = None``: libraries that look ``name`` up in ``sys.modules`` to test
    their arguments' types (scipy's array-API helpers do) would find None there and fail."""
    hide = hide and name not in sys.modules
    finder = _Absent(name)
    if hide:
        sys.meta_path.insert(0, finder)
    try:
        yield hide
    finally:
        if hide:
            sys.meta_path.remove(finder)
