"""The FAISS index: a derived artifact of a space, never trusted without checking.

Exact cosine search: vectors are L2-normalised into an ``IndexFlatIP``. The index file
is written atomically beside a manifest holding the space fingerprint, the number of
store rows it covers, a hash of their keys and a hash of the file itself. Before a
query the manifest is checked against the store: a grown store is added to, anything
else that does not match (other space, rewritten keys, torn or corrupt file) is rebuilt.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from typing import Iterator
import faiss
import numpy as np
from filelock import FileLock

from featurestore.atomic import atomic_write_bytes
from featurestore.keys import fingerprint_hash
from featurestore.manifest import Space
from featurestore.progress import ProgressFn
from featurestore.store import Store

log = logging.getLogger(__name__)

INDEX_FORMAT = 1


def _keys_hash(keys: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(keys).tobytes()).hexdigest()


def normalize(vectors: np.ndarray) -> np.ndarray:
    """Unit rows for cosine similarity; all-zero rows (empty texts) stay zero."""
    v = np.ascontiguousarray(vectors, dtype=np.float32).copy()
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    np.divide(v, norms, out=v, where=norms > 0)
    return v


@dataclass
class OpenedIndex:
    index: faiss.Index
    rows: int
    status: str  # "loaded", "extended", "built" or "rebuilt: <why>"


def _paths(store: Store, space: Space) -> tuple[str, str]:
    base = os.path.join(store.index_dir, space.id)
    return base + ".faiss", base + ".json"


def remove(store: Store, space: Space) -> None:
    """Delete a space's index files; the next query rebuilds them."""
    for path in _paths(store, space):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def files_signature(store: Store, space: Space) -> tuple[int, ...]:
    """Size and mtime of the index file and its manifest: cheap evidence they did not change."""
    sig: list[int] = []
    for path in _paths(store, space):
        try:
            st = os.stat(path)
            sig += [st.st_size, st.st_mtime_ns, st.st_ino]
        except FileNotFoundError:
            sig += [-1, -1, -1]
    return tuple(sig)


def _add_rows(store: Store, space: Space, index: faiss.Index, start: int, progress: ProgressFn | None) -> None:
    total = space.rows - start
    for first, block in store.iter_vectors(space):
        end = first + len(block)
        if end <= start:
            continue
        block = block[max(0, start - first) :]
        index.add(normalize(block))
        if progress:
            progress(len(block), total)


def _save(store: Store, space: Space, index: faiss.Index, keys: np.ndarray) -> None:
    faiss_path, meta_path = _paths(store, space)
    data = faiss.serialize_index(index).tobytes()
    atomic_write_bytes(type(store.path)(faiss_path), data)
    meta = {
        "format": INDEX_FORMAT,
        "space": space.id,
        "space_fingerprint": fingerprint_hash(space.fields),
        "rows": int(index.ntotal),
        "keys_sha256": _keys_hash(keys[: index.ntotal]),
        "file_bytes": len(data),
        "file_sha256": hashlib.sha256(data).hexdigest(),
        "faiss": faiss.__version__,
        "metric": "cosine",
    }
    atomic_write_bytes(type(store.path)(meta_path), json.dumps(meta, indent=1).encode())


def load_checked(store: Store, space: Space, keys: np.ndarray) -> tuple[faiss.Index | None, str]:
    """The saved index if every check passes (status "loaded"), else None and why:
    "built" when there is none yet, "rebuilt: <reason>" when it does not match the store."""
    faiss_path, meta_path = _paths(store, space)
    try:
        with open(meta_path, "rb") as f:
            meta = json.load(f)
        with open(faiss_path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None, "built"
    except (OSError, ValueError) as exc:
        return None, f"rebuilt: unreadable index manifest ({exc})"
    if meta.get("format") != INDEX_FORMAT or meta.get("space_fingerprint") != fingerprint_hash(space.fields):
        return None, "rebuilt: index belongs to another space or format"
    if len(data) != meta.get("file_bytes") or hashlib.sha256(data).hexdigest() != meta.get("file_sha256"):
        return None, "rebuilt: index file is truncated or corrupt"
    rows = int(meta.get("rows", -1))
    if not 0 <= rows <= len(keys) or _keys_hash(keys[:rows]) != meta.get("keys_sha256"):
        return None, "rebuilt: index rows no longer match the store"
    try:
        index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
    except RuntimeError as exc:
        return None, f"rebuilt: FAISS could not read the index ({exc})"
    if index.ntotal != rows or index.d != space.dim:
        return None, "rebuilt: index size does not match its manifest"
    return index, "loaded"


@contextlib.contextmanager
def _update_lock(store: Store, space: Space) -> Iterator[None]:
    """One process updates a given index at a time; others wait and then find it current.
    A read-only store has no lock to take: the index is then built in memory, for this process."""
    try:
        os.makedirs(store.index_dir, exist_ok=True)
        lock = FileLock(os.path.join(store.index_dir, space.id + ".lock"))
        lock.acquire()
    except OSError:
        yield
        return
    try:
        yield
    finally:
        lock.release()


def open_index(store: Store, space: Space, progress: ProgressFn | None = None) -> OpenedIndex:
    """An index that matches ``space`` exactly as committed: loaded, brought up to date, or rebuilt."""
    keys = store.space_keys(space)
    index, status = load_checked(store, space, keys)
    if index is not None and index.ntotal == space.rows:
        return OpenedIndex(index, space.rows, status)
    with _update_lock(store, space):
        index, status = load_checked(store, space, keys)
        if index is not None and index.ntotal == space.rows:
            return OpenedIndex(index, space.rows, status)
        if index is None:
            log.info("index for space %s %s", space.id, status)
            index = faiss.IndexFlatIP(space.dim)
            _add_rows(store, space, index, 0, progress)
        else:
            start = index.ntotal
            _add_rows(store, space, index, start, progress)
            status = f"extended by {space.rows - start} rows"
        try:
            _save(store, space, index, keys)
        except OSError as exc:  # a read-only store still answers queries, from memory
            log.warning("could not save the index for space %s: %s", space.id, exc)
    return OpenedIndex(index, space.rows, status)


def search(
    opened: OpenedIndex, queries: np.ndarray, k: int, allowed_rows: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` cosine scores and store rows per query; ``allowed_rows`` restricts the candidates.

    Missing results (fewer candidates than k) have row -1.
    """
    q = normalize(np.atleast_2d(queries))
    k = max(1, min(k, opened.rows))
    params = None
    if allowed_rows is not None:
        sel = faiss.IDSelectorBatch(np.ascontiguousarray(allowed_rows, dtype=np.int64))
        params = faiss.SearchParameters(sel=sel)
    scores, rows = opened.index.search(q, k, params=params)
    return scores, rows
