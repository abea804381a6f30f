"""Crash-safe file writes: the one home of temp-file + fsync + rename, and of the mode new files get.

Every file featurestore publishes (manifests, segments, index files, classifiers, predictions,
downloaded weights, caches) goes through here, so a process killed at any instant leaves the
old file or the new one, never a torn one, and a file is readable by whoever the user's umask
allows (``mkstemp`` alone would create it 0600, so a team could not share a store read-only).
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()


def fsync_dir(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "", mode: int | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync it, give it the usual mode (or ``mode``) and
    rename it over ``path``; on failure remove it. The caller writes the temporary file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, FILE_MODE if mode is None else mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash leaves the old file or the new one, never a torn one."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


STDOUT = "-"  # an output path meaning standard output


def check_output(path: str | os.PathLike, param: str = "out") -> None:
    """Refuse an output path that cannot be written as the user asked, before any work is done.

    ``-`` is standard output; a special file (a FIFO, a device such as /dev/null or /dev/stdout) is
    written as a stream; a regular file is replaced only when the user could write it (a read-only
    file is refused, never replaced and made writable) in a folder the user can write.
    """
    from featurestore.errors import UsageError

    if str(path) == STDOUT:
        return
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise UsageError(f"{{param}} {path} cannot be read ({exc.strerror}); fix: choose another path", param) from None
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise UsageError(f"{{param}} {path} is a directory; fix: give a file name inside it", param)
    if st is not None and not stat.S_ISREG(st.st_mode):
        if stat.S_ISSOCK(st.st_mode):
            raise UsageError(f"{{param}} {path} is a socket; fix: give a file, a FIFO or '-' (stdout)", param)
        if not os.access(path, os.W_OK):
            raise UsageError(f"{{param}} {path} is not writable; fix: choose a writable path", param)
        return
    if st is not None and (not os.access(path, os.W_OK) or not st.st_mode & 0o222):
        raise UsageError(
            f"{{param}} {path} is read-only, so it is left as it is; fix: choose another path, or make it "
            "writable (chmod u+w) if it should be replaced",
            param,
        )
    parent = path.resolve().parent
    existing = next((p for p in (parent, *parent.parents) if p.exists()), None)
    if existing is None or not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(
            f"{{param}} {path}: folder {existing or parent} is not writable; fix: choose another path", param
        )


def write_output(path: str | os.PathLike, data: bytes, param: str = "out") -> None:
    """Write ``data`` to a path the user named (``--out``), as :func:`check_output` says: ``-`` to standard
    output, a special file as a stream (no rename: a FIFO's reader gets the bytes, a device is not replaced),
    a regular file atomically (temp + fsync + rename, keeping an existing file's mode)."""
    with output_stream(path, param) as fh:
        fh.write(data)


@contextlib.contextmanager
def output_stream(path: str | os.PathLike, param: str = "out") -> Iterator[BinaryIO]:
    """A binary file to write, a part at a time, what :func:`write_output` would write at once (output too large
    to hold): ``-`` is standard output, a special file is written as a stream, a regular file atomically (its
    temp file renamed over it, keeping an existing file's mode, only when the block ends without an error)."""
    import sys

    check_output(path, param)
    if str(path) == STDOUT:
        sys.stdout.flush()
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    path = Path(path).resolve()
    try:
        st = os.stat(path)
    except FileNotFoundError:
        st = None
    if st is not None and not stat.S_ISREG(st.st_mode):
        with open(path, "wb") as fh:
            yield fh
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, mode=None if st is None else stat.S_IMODE(st.st_mode)) as tmp, open(tmp, "wb") as fh:
        yield fh
