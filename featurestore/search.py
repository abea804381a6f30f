"""Nearest-neighbour queries: resolve the query to a vector, search the space's index, name the hits.

A query is a stored row (``id``), a text whose key is already stored (its vector is read,
the model is not loaded), or a new text (embedded). Naming the hits reads only what they
need, so that a cold process answers in about a second at a million rows:

- the space's keys (fixed-width, 32 bytes a row) map index rows to text keys and back;
- a dataset's key list (fixed-width) is scanned for the hits' keys, and only the ids at the
  matching positions are read;
- id -> position tables (``IdTable``: sorted 64-bit hashes of the ids of a list of immutable
  segments, saved beside the index and extended when segments are appended) find a query id's
  key and a hit's raw text without reading every id (variable-length strings are the slow read).

``SearchCache`` keeps, per process, the opened index and these arrays while nothing on disk
changed, so repeated queries in a notebook or a server skip that work. A query restricted to
one dataset (``dataset=``) joins the dataset's keys with the space's (``View``), cached the same way.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from featurestore.atomic import atomic_write_bytes
from featurestore.clean import get_recipe
from featurestore.embedders import load_embedder
from featurestore.errors import DatasetError, ModelError, UsageError
from featurestore.ingest import DEFAULT_MAX_CHARS, make_space
from featurestore.keys import KEY_DTYPE, text_key
from featurestore.manifest import Dataset, Segment, Snapshot, Space
from featurestore.progress import ProgressFn
from featurestore.store import Lookup, Store, as_text_column, lookup

if TYPE_CHECKING:
    from featurestore import index as faiss_index

log = logging.getLogger(__name__)
ID_TABLE_FORMAT = 1


@dataclass
class Hit:
    rank: int
    score: float
    ids: list[tuple[str, str]]  # (dataset, id) of every row with this text
    text: str


# ----------------------------------------------------------------------------- reading only what is needed


def _bounds(segs: Sequence[Segment]) -> np.ndarray:
    return np.cumsum([0] + [s.rows for s in segs])


def read_at(store: Store, segs: Sequence[Segment], column: str, positions: np.ndarray) -> np.ndarray:
    """Values of ``column`` at global ``positions`` of the concatenated segments (any order, repeats allowed)."""
    positions = np.asarray(positions, dtype=np.int64)
    out = np.empty(len(positions), dtype=object)
    if not len(positions):
        return out
    bounds = _bounds(segs)
    which = np.searchsorted(bounds, positions, side="right") - 1
    for si in np.unique(which):
        sel = np.flatnonzero(which == si)
        uniq, inverse = np.unique(positions[sel] - bounds[si], return_inverse=True)
        with store.open_segment(segs[si].file) as f:
            values = f[column][uniq]
        if column in ("ids", "labels"):
            values = as_text_column(values, column)
        elif column == "texts":
            values = np.array([bytes(t).decode("utf-8", "surrogatepass") for t in values], dtype=object)
        out[sel] = np.asarray(values, dtype=object)[inverse]
    return out


def read_keys(store: Store, segs: Sequence[Segment]) -> np.ndarray:
    """The whole fixed-width key column of some segments (32 bytes a row: fast to read and compare)."""
    parts = []
    for seg in segs:
        with store.open_segment(seg.file) as f:
            parts.append(f["keys"][()])
    return np.concatenate(parts) if parts else np.zeros(0, dtype=KEY_DTYPE)


def _prefix(keys: np.ndarray) -> np.ndarray:
    """The first 8 bytes of each key as an integer: a vectorised pre-filter, confirmed on the full key."""
    k = np.ascontiguousarray(np.asarray(keys, dtype=KEY_DTYPE))
    return k.view(np.uint64).reshape(len(k), -1)[:, 0] if len(k) else np.zeros(0, np.uint64)


def find_keys(keys: np.ndarray, wanted: np.ndarray, prefixes: np.ndarray | None = None) -> list[np.ndarray]:
    """Positions in ``keys`` of each wanted key."""
    wanted = np.asarray(wanted, dtype=KEY_DTYPE)
    prefixes = _prefix(keys) if prefixes is None else prefixes
    cand = np.flatnonzero(np.isin(prefixes, _prefix(wanted)))
    return [cand[keys[cand] == w] for w in wanted]


def _id_hash(ids: np.ndarray) -> np.ndarray:
    import pandas as pd  # here, not at the top: a warm ingest imports this module and needs no pandas

    return pd.util.hash_array(np.asarray(ids, dtype=object)) if len(ids) else np.zeros(0, np.uint64)


@dataclass(frozen=True)
class IdTable:
    """Sorted 64-bit hashes of the ids of a list of segments, with their global positions."""

    segments: tuple[Segment, ...]
    hashes: np.ndarray  # uint64, sorted
    positions: np.ndarray  # int64

    def candidates(self, id: str) -> np.ndarray:
        h = _id_hash(np.array([id], dtype=object))[0]
        lo, hi = np.searchsorted(self.hashes, [h, h], side="left")[0], np.searchsorted(self.hashes, h, side="right")
        return np.asarray(self.positions[lo:hi], dtype=np.int64)


def _table_paths(store: Store, name: str) -> tuple[Path, Path]:
    return store.index_dir / f"ids-{name}.npy", store.index_dir / f"ids-{name}.json"


def id_table(store: Store, segs: Sequence[Segment], name: str, pending: list[Any] | None = None) -> IdTable:
    """The id table of ``segs``: loaded (memory-mapped) when its manifest names the same segments,
    extended when segments were appended, rebuilt otherwise. A new table is saved beside the index
    (by ``save_tables``, once the query succeeded: a failed command leaves the store as it was)."""
    segs = tuple(segs)
    data_path, meta_path = _table_paths(store, name)
    want = [[s.file, s.rows] for s in segs]
    have: list[list[Any]] = []
    table = np.zeros((0, 2), dtype=np.uint64)
    with contextlib.suppress(OSError, ValueError):
        meta = json.loads(meta_path.read_bytes())
        if meta.get("format") == ID_TABLE_FORMAT and want[: len(meta["segments"])] == meta["segments"]:
            loaded = np.load(data_path, mmap_mode="r")
            if loaded.shape == (sum(r for _, r in meta["segments"]), 2):
                have, table = meta["segments"], loaded
    if have == want:
        return IdTable(segs, table[:, 0], table[:, 1].view(np.int64))
    # appended segments: hash their ids and merge (a compaction's new names mean a full rebuild, once)
    first = sum(r for _, r in have)
    parts = [np.asarray(table)]
    offset = first
    for seg in segs[len(have):]:
        with store.open_segment(seg.file) as f:
            h = _id_hash(as_text_column(f["ids"][()], "ids"))
        parts.append(np.stack([h, np.arange(offset, offset + len(h), dtype=np.uint64)], axis=1))
        offset += len(h)
    table = np.concatenate(parts)
    table = table[np.argsort(table[:, 0], kind="stable")]
    if pending is not None:
        pending.append((data_path, meta_path, table, want))
    return IdTable(segs, table[:, 0], table[:, 1].view(np.int64))


def save_tables(pending: list[Any]) -> None:
    """Write the id tables built by this process's queries (best effort: a read-only store keeps them in memory)."""
    while pending:
        data_path, meta_path, table, segments = pending.pop()
        with contextlib.suppress(OSError):
            os.makedirs(data_path.parent, exist_ok=True)
            atomic_write_bytes(data_path, _npy_bytes(table))
            atomic_write_bytes(meta_path, json.dumps({"format": ID_TABLE_FORMAT, "segments": segments}).encode())


def _npy_bytes(array: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array))
    return buf.getvalue()


def find_id(store: Store, segs: Sequence[Segment], table: IdTable, id: str) -> int:
    """Global position of ``id`` in ``segs`` (confirmed by reading it), or -1."""
    cand = table.candidates(id)
    if not len(cand):
        return -1
    found = read_at(store, segs, "ids", cand)
    match = [int(p) for p, v in zip(cand, found) if v == id]
    return match[0] if match else -1


# ----------------------------------------------------------------------------- the per-process cache


@dataclass(frozen=True)
class View:
    """Key lookups of one space over some datasets, in one snapshot (queries restricted to a dataset)."""

    space_keys: np.ndarray
    row_of: Lookup  # key -> storage row (get_indexer)
    owners: dict[bytes, list[tuple[str, str]]]  # key -> (dataset, id) of the rows with that key
    allowed: np.ndarray | None  # storage rows a restricted query may return


TAIL_MAX_ROWS = 65536  # newer rows searched by brute force beside a held index (~0.1 GB at 384-d)


@dataclass
class SearchCache:
    """The opened index and the key arrays of the latest snapshot, reused while files are unchanged."""

    views: dict[tuple[Any, ...], View] = field(default_factory=dict)
    indexes: dict[str, tuple[tuple[Any, ...], faiss_index.OpenedIndex]] = field(default_factory=dict)
    arrays: dict[tuple[Any, ...], Any] = field(default_factory=dict)
    pending: list[Any] = field(default_factory=list)  # id tables to save once a query succeeds
    embedders: dict[str, Any] = field(default_factory=dict)  # loaded once per process (a server's new texts)
    last_keys: dict[str, bytes] = field(default_factory=dict)  # space id -> key of the held index's last row
    tails: dict[tuple[Any, ...], np.ndarray] = field(default_factory=dict)  # the newest rows' unit vectors

    def embedder(self, model: str) -> Any:
        if model not in self.embedders:
            self.embedders[model] = load_embedder(model)
        return self.embedders[model]

    def _memo(self, key: tuple[Any, ...], make: Any) -> Any:
        if key not in self.arrays:
            if len(self.arrays) > 64:
                self.arrays.clear()
            self.arrays[key] = make()
        return self.arrays[key]

    def keys_of(self, store: Store, segs: Sequence[Segment]) -> tuple[np.ndarray, np.ndarray]:
        """Key column of ``segs`` and its 8-byte prefixes (segments are immutable: their names are the cache key)."""
        return self._memo(("keys", tuple(segs)), lambda: (lambda k: (k, _prefix(k)))(read_keys(store, segs)))

    def ids_table(self, store: Store, segs: Sequence[Segment], name: str) -> IdTable:
        return self._memo(("ids", name, tuple(segs)), lambda: id_table(store, segs, name, self.pending))

    def view(self, store: Store, snap: Snapshot, space: Space, datasets: list[Dataset], restrict: bool) -> View:
        key = (snap.generation, space.id, tuple(d.name for d in datasets), restrict)
        if key not in self.views:
            space_keys = store.space_keys(space)
            row_of = lookup(space_keys)
            owners: dict[bytes, list[tuple[str, str]]] = {}
            for d in datasets:
                kid, kkeys = store.dataset_keys(d, space.recipe)
                for i, kk in zip(kid.tolist(), kkeys.tolist()):
                    owners.setdefault(kk, []).append((d.name, i))
            allowed = None
            if restrict:
                rows = row_of.get_indexer(np.array(list(owners), dtype=space_keys.dtype)) if owners else np.zeros(0, int)
                allowed = np.unique(rows[rows >= 0]).astype(np.int64)
            self.views = {k: v for k, v in self.views.items() if k[0] == snap.generation}
            self.views[key] = View(space_keys, row_of, owners, allowed)
        return self.views[key]

    def index(self, store: Store, space: Space, progress: ProgressFn | None) -> tuple[faiss_index.OpenedIndex, str]:
        """The space's index: from memory while its files on disk are untouched, else opened and checked.

        Rows committed after the held index was opened (a server following an ingest) are searched by
        brute force beside it (``tail``) up to TAIL_MAX_ROWS, rather than extending and rewriting a
        large index file at every generation; beyond that the index is brought up to date on disk.
        """
        from featurestore import index as faiss_index  # FAISS is loaded only when a query needs the index

        signature = (space.segments, faiss_index.files_signature(store, space))
        cached = self.indexes.get(space.id)
        if cached is not None and cached[0] == signature:
            return cached[1], "in memory"
        # The index files unchanged (a held index may be memory-mapped from them), only the space grown:
        if cached is not None and cached[0][1] == signature[1] and self._still_prefix(store, space, cached[1]):
            newer = space.rows - cached[1].rows
            if newer <= TAIL_MAX_ROWS:
                return cached[1], f"in memory, {newer:,} newer rows searched by brute force" if newer else "in memory"
        opened = faiss_index.open_index(store, space, progress)
        self.indexes[space.id] = ((space.segments, faiss_index.files_signature(store, space)), opened)
        if opened.rows:
            self.last_keys[space.id] = read_keys_at(store, space.segments, opened.rows - 1)
        return opened, opened.status

    def _still_prefix(self, store: Store, space: Space, opened: faiss_index.OpenedIndex) -> bool:
        """Rows 0..opened.rows-1 of ``space`` are still the indexed ones: a space only grows (appends, and
        compactions that keep order), and the key of the last indexed row is where it was."""
        if not 0 < opened.rows <= space.rows or space.id not in self.last_keys:
            return False
        return read_keys_at(store, space.segments, opened.rows - 1) == self.last_keys[space.id]

    def tail(self, store: Store, space: Space, start: int) -> np.ndarray:
        """Unit vectors of storage rows ``start:`` of ``space`` (rows newer than the held index)."""
        from featurestore import index as faiss_index

        key = ("tail", space.id, start, space.rows)
        if key not in self.tails:
            self.tails = {key: faiss_index.normalize(store.read_range(space, start, space.rows))}
        return self.tails[key]


# ----------------------------------------------------------------------------- queries


def _key_row(cache: SearchCache, store: Store, space: Space, key: bytes) -> int:
    keys, prefixes = cache.keys_of(store, space.segments)
    pos = find_keys(keys, np.array([key], dtype=KEY_DTYPE), prefixes)[0]
    return int(pos[0]) if len(pos) else -1


def _id_vector(cache: SearchCache, store: Store, space: Space, datasets: list[Dataset], id: str, where: str) -> np.ndarray:
    owners = []
    for d in datasets:
        segs = d.keys.get(space.recipe, ())
        pos = find_id(store, segs, cache.ids_table(store, segs, f"{d.name}-keys-{space.recipe}"), id)
        if pos >= 0:
            owners.append((d, read_keys_at(store, segs, pos)))
    if not owners:
        raise DatasetError(f"id {id!r} is not in {where} with vectors for model {space.model!r}; check the id or [[dataset]]")
    if len(owners) > 1:
        raise DatasetError(f"id {id!r} is in datasets {', '.join(d.name for d, _ in owners)}; fix: pick one with [[dataset]]")
    row = _key_row(cache, store, space, owners[0][1])
    return store.read_vectors(space, np.array([row]))


def _with_tail(queries: np.ndarray, k: int, allowed: np.ndarray | None, scores: np.ndarray, rows: np.ndarray,
               start: int, tail: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The index's top-k merged with exact cosine scores of the rows from ``start`` on."""
    from featurestore import index as faiss_index

    tail_rows = np.arange(start, start + len(tail))
    s = faiss_index.normalize(np.atleast_2d(queries)) @ tail.T
    if allowed is not None:
        keep = np.isin(tail_rows, allowed)
        s, tail_rows = s[:, keep], tail_rows[keep]
    scores = np.where(rows >= 0, scores, -np.inf)  # FAISS pads missing results with row -1
    return faiss_index.top_k([(scores, rows), (s, tail_rows)], len(s), k)


def read_keys_at(store: Store, segs: Sequence[Segment], pos: int) -> bytes:
    bounds = _bounds(segs)
    si = int(np.searchsorted(bounds, pos, side="right") - 1)
    with store.open_segment(segs[si].file) as f:
        return bytes(f["keys"][pos - bounds[si]])


def _text_vector(cache: SearchCache, store: Store, space: Space, text: str) -> tuple[np.ndarray, str]:
    recipe = get_recipe(space.recipe)
    cleaned = recipe.clean([text])[0][:DEFAULT_MAX_CHARS]
    if not cleaned.strip():  # a zero vector scores 0 against everything: no meaningful neighbours
        raise UsageError(f"query {text[:80]!r} is empty after cleaning with {recipe.name}; give words to search for", "text")
    row = _key_row(cache, store, space, text_key(recipe.name, cleaned))
    if row >= 0:
        return store.read_vectors(space, np.array([row])), "stored vector (model not loaded)"
    embedder = cache.embedder(space.model)
    if make_space(embedder, space.model, recipe, space.dtype).id != space.id:
        raise ModelError(
            f"model {space.model!r} has changed since space {space.id} was built; its vectors cannot be "
            "compared; re-ingest into a new store"
        )
    return embedder.embed([cleaned]), "embedded"


def _name_hits(cache: SearchCache, store: Store, snap: Snapshot, space: Space, datasets: list[Dataset],
               found: list[tuple[float, int]]) -> list[Hit]:
    """(dataset, id) of every row holding each hit's text, and the first one's raw text."""
    space_keys, _ = cache.keys_of(store, space.segments)
    hit_keys = np.array([space_keys[r] for _, r in found], dtype=KEY_DTYPE)
    owners: list[list[tuple[str, str]]] = [[] for _ in found]
    for d in datasets:
        segs = d.keys.get(space.recipe, ())
        if not segs or not len(hit_keys):
            continue
        keys, prefixes = cache.keys_of(store, segs)
        where = find_keys(keys, hit_keys, prefixes)
        flat = np.concatenate(where)
        ids = read_at(store, segs, "ids", flat) if len(flat) else []
        i = 0
        for h, pos in enumerate(where):
            owners[h] += [(d.name, ids[i + j]) for j in range(len(pos))]
            i += len(pos)
    texts: dict[tuple[str, str], str] = {}
    for h, o in enumerate(owners):
        if not o:
            continue
        d = snap.datasets[o[0][0]]
        pos = find_id(store, d.rows, cache.ids_table(store, d.rows, f"{d.name}-rows"), o[0][1])
        if pos >= 0:
            texts[o[0]] = read_at(store, d.rows, "texts", np.array([pos]))[0]
    return [Hit(rank, s, o, texts.get(o[0], "") if o else "") for rank, ((s, _), o) in enumerate(zip(found, owners), 1)]


def similar(
    store: Store,
    cache: SearchCache,
    snap: Snapshot,
    space: Space,
    *,
    text: str | None = None,
    id: str | None = None,
    k: int = 10,
    dataset: str | None = None,
    progress: ProgressFn | None = None,
    exact: bool = False,
    nprobe: int | None = None,
    ef: int | None = None,
) -> tuple[list[Hit], dict[str, Any]]:
    """Top-``k`` stored tweets by cosine similarity to a text or a stored row, through the space's index
    (exact brute force when ``exact``; ``nprobe``/``ef`` tune an approximate index)."""
    hits, info = similar_batch(store, cache, snap, space, texts=None if text is None else [text],
                               id=id, k=k, dataset=dataset, progress=progress, exact=exact, nprobe=nprobe, ef=ef)
    return hits[0], info


def similar_batch(
    store: Store,
    cache: SearchCache,
    snap: Snapshot,
    space: Space,
    *,
    texts: Sequence[str] | None = None,
    id: str | None = None,
    k: int = 10,
    dataset: str | None = None,
    progress: ProgressFn | None = None,
    exact: bool = False,
    nprobe: int | None = None,
    ef: int | None = None,
) -> tuple[list[list[Hit]], dict[str, Any]]:
    """Like ``similar`` for many query texts at once (one FAISS search); ``info["queries"]`` says how
    each query was resolved."""
    if (texts is None) == (id is None):
        raise UsageError("give either a query text or an {param}, not both (and not neither)", "id")
    if k < 1:
        raise UsageError(f"{{param}} must be at least 1, got {k}", "k")
    for name, value in (("nprobe", nprobe), ("ef", ef)):
        if value is not None and value < 1:
            raise UsageError(f"{{param}} must be at least 1, got {value}", name)
    datasets = [store.dataset(dataset, snap)] if dataset else list(snap.datasets.values())
    where = f"dataset {dataset!r}" if dataset else "any dataset"
    info: dict[str, Any] = {"space": space.id, "model": space.model, "recipe": space.recipe, "dtype": space.dtype}
    allowed = cache.view(store, snap, space, datasets, True).allowed if dataset else None
    if id is not None:
        queries, how = _id_vector(cache, store, space, datasets, id, where), ["stored vector"]
    else:
        resolved = [_text_vector(cache, store, space, t) for t in texts or []]
        if not resolved:
            return [], info
        queries, how = np.concatenate([v for v, _ in resolved]), [h for _, h in resolved]
    info["query"] = how[0] if len(how) == 1 else f"{len(how)} queries"
    info["queries"] = how
    t = time.perf_counter()
    opened, info["index"] = cache.index(store, space, progress)
    info["index_seconds"] = time.perf_counter() - t
    info["index_kind"] = "exact (brute force)" if exact else opened.factory
    info["index_mmap"] = opened.mmap  # opened memory-mapped: a cold process did not read the whole file
    from featurestore import index as faiss_index  # loaded by cache.index above; not at the top (see there)

    t = time.perf_counter()
    scores, rows = faiss_index.search(opened, queries, k, allowed, exact=exact, nprobe=nprobe, ef=ef,
                                      store=store, space=space)
    if opened.rows < space.rows:  # rows committed after the held index was opened
        scores, rows = _with_tail(queries, k, allowed, scores, rows, opened.rows, cache.tail(store, space, opened.rows))
    info["search_seconds"] = time.perf_counter() - t
    out = []
    for qs, qr in zip(scores, rows):
        found = [(float(s), int(r)) for s, r in zip(qs, qr) if r >= 0]
        out.append(_name_hits(cache, store, snap, space, datasets, found))
    save_tables(cache.pending)
    return out, info
