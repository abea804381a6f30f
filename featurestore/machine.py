"""What this process may use of the machine and load: the one place that counts its cores, the one way
to import a library while a heavy module it would pull in needlessly stays out, and the one way to keep a
native library's log lines (TensorFlow's, Ray's C++) off the user's terminal unless ``FS_DEBUG=1``."""

from __future__ import annotations

import contextlib
import importlib.abc
import os
import sys
import tempfile
from collections.abc import Callable, Iterator


def debug() -> bool:
    """``FS_DEBUG=1``: native libraries' logs are shown as they print them."""
    return os.environ.get("FS_DEBUG") == "1"


@contextlib.contextmanager
def native_stderr_without(drop: Callable[[bytes], object]) -> Iterator[None]:
    """Inside the block, file descriptor 2 (where C++ libraries write, below Python's ``sys.stderr``) goes to a
    temporary file; on exit, every line written there but those ``drop`` is true of is written back to stderr
    as it came. Where fd 2 cannot be duplicated, nothing is hidden."""
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.flush()  # what Python buffered before the block goes out first
    try:
        saved = os.dup(2)
    except OSError:  # no fd 2 (a windowed process)
        yield
        return
    try:
        with tempfile.TemporaryFile() as captured:
            os.dup2(captured.fileno(), 2)
            try:
                yield
            finally:
                with contextlib.suppress(OSError, ValueError):
                    sys.stderr.flush()
                os.dup2(saved, 2)
                captured.seek(0)
                kept = b"".join(line for line in captured.read().splitlines(keepends=True) if not drop(line))
                rest = memoryview(kept)
                while rest:
                    rest = rest[os.write(2, rest) :]
    finally:
        os.close(saved)


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
