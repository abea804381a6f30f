"""sha256 checksums of model files: one file, a cached file, a whole module folder.

Embedders put these in their fingerprints (so two sets of weights never share a vector
space); ``fs models verify`` recomputes them. Standard library and ``featurestore.storage.atomic`` only.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from featurestore.storage.atomic import atomic_write_bytes


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """sha256 hex of the file's bytes, read in ``chunk``-byte blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def cached_file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a weights file, remembered per (path, size, mtime) so start-up stays fast.

    The cache lives in ``$FS_CACHE_DIR`` (default ``~/.cache/featurestore``); ``fs models verify``
    always recomputes. A file rewritten in place with its old mtime would fool it: don't do that.
    """
    p = Path(path).resolve()
    st = p.stat()
    tag = f"{p}|{st.st_size}|{st.st_mtime_ns}"
    cache_file = Path(os.environ.get("FS_CACHE_DIR") or Path.home() / ".cache" / "featurestore") / "sha256.json"
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cache = {}
    if tag in cache:
        return cache[tag]
    digest = file_sha256(p)
    cache[tag] = digest
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(cache_file, json.dumps(cache).encode())
    except OSError:
        pass  # a read-only home only costs the recomputation next time
    return digest


def module_sha256(path: Path) -> str:
    """sha256 over the sorted relative paths, sizes and contents of every file of a module."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        rel = f.relative_to(path).as_posix()
        # Path and size delimit each file so that moving bytes between files changes the sum.
        digest.update(f"{rel}\0{f.stat().st_size}\0".encode())
        with open(f, "rb") as fh:
            while block := fh.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()


__all__ = ["cached_file_sha256", "file_sha256", "module_sha256"]
