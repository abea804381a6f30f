"""What this process may use of the machine and load: the one place that counts its cores, and the
one way to import a library while a heavy module it would pull in needlessly stays out."""

from __future__ import annotations

import contextlib
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


@contextlib.contextmanager
def hidden_module(name: str, hide: bool = True) -> Iterator[bool]:
    """Inside the block ``import name`` raises ImportError, as if it were not installed (when ``hide`` and the
    process has not imported it already); afterwards it imports as usual. Yields whether it was hidden."""
    hide = hide and name not in sys.modules
    if hide:
        sys.modules[name] = None  # type: ignore[assignment]  # makes `import name` raise ImportError
    try:
        yield hide
    finally:
        if hide and sys.modules.get(name, 0) is None:  # nothing imported the real one meanwhile
            del sys.modules[name]
