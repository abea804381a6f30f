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
one dataset (``dataset=``) searches the space rows holding that dataset's texts (``Restriction``),
extended as the dataset and the space grow.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from featurestore.atomic import atomic_write_bytes
from featurestore.clean import get_recipe
from featurestore.embedders import load_embedder
from featurestore.errors import DatasetError, ModelError, UnknownIdError, UsageError
from featurestore.ingest import DEFAULT_MAX_CHARS, make_space
from featurestore.keys import KEY_DTYPE, text_key
from featurestore.manifest import Dataset, Segment, Snapshot, Space
from featurestore.progress import ProgressFn
from featurestore.sources import NO_LABEL
from featurestore.store import Store, as_text_column

if TYPE_CHECKING:
    from featurestore import index as faiss_index

log = logging.getLogger(__name__)
ID_TABLE_FORMAT = 1


@dataclass
class Hit:
    rank: int
    score: float
    ids: list[tuple[str, str]]  # (dataset, id) of every row with this text
    text: str  # the raw text of the first of them
    label: str = ""  # the current label of the first of them ("": none)


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
            dset = f[column]
            # a few rows: one slice each (h5py's point selection costs more than a few slices)
            if len(uniq) <= 4:
                values = np.empty(len(uniq), dtype=object)
                for j, p in enumerate(uniq.tolist()):
                    values[j] = dset[p:p + 1][0]
            else:
                values = dset[uniq]
        if column in ("ids", "labels"):
            values = as_text_column(values, column)
        elif column == "texts":
            values = np.array([bytes(t).decode("utf-8", "surrogatepass") for t in values], dtype=object)
        out[sel] = np.asarray(values, dtype=object)[inverse]
    return out


@dataclass(frozen=True)
class PackedColumn:
    """A segment's ids, labels or texts in memory as one UTF-8 blob and offsets: no Python object per row
    (about the column's UTF-8 size plus 8 bytes a row), read back at any positions without HDF5."""

    blob: bytes
    offsets: np.ndarray  # int64, rows + 1

    @classmethod
    def read(cls, store: Store, seg: Segment, column: str) -> "PackedColumn":
        with store.open_segment(seg.file) as f:
            values = f[column][()]
        if values.dtype.kind in "iu":  # schema-1 integer ids/labels
            values = np.array([v.encode("utf-8") for v in as_text_column(values, column).tolist()], dtype=object)
        items = values.tolist()  # UTF-8 bytes (vlen str) or uint8 arrays (vlen bytes: texts)
        offsets = np.zeros(len(items) + 1, dtype=np.int64)
        np.cumsum(np.fromiter(map(len, items), dtype=np.int64, count=len(items)), out=offsets[1:])
        if items and not isinstance(items[0], bytes):
            return cls(np.concatenate(items).tobytes(), offsets)
        return cls(b"".join(items), offsets)

    def at(self, positions: Sequence[int]) -> list[str]:
        o = self.offsets
        return [self.blob[o[p]:o[p + 1]].decode("utf-8", "surrogatepass") for p in positions]


def _prefix(keys: np.ndarray) -> np.ndarray:
    """The first 8 bytes of each key as an integer: a sorted pre-filter, confirmed on the full key."""
    k = np.ascontiguousarray(np.asarray(keys, dtype=KEY_DTYPE))
    return k.view(np.uint64).reshape(len(k), -1)[:, 0] if len(k) else np.zeros(0, np.uint64)


_NONE = np.zeros(0, dtype=np.int64)


class SegmentKeys:
    """One segment's key column and its 8-byte prefixes. Sorted on first need of many lookups (binary
    search: a server, a restriction); a few lookups in a short-lived process scan them unsorted."""

    def __init__(self, keys: np.ndarray, sort: bool = False) -> None:
        self.keys = keys  # KEY_DTYPE, in storage order
        self.prefixes = _prefix(keys)
        self._sorted: tuple[np.ndarray, np.ndarray] | None = None
        if sort:
            self.sorted()

    def sorted(self) -> tuple[np.ndarray, np.ndarray]:
        """(sorted prefixes, the local row of each)."""
        if self._sorted is None:
            order = np.argsort(self.prefixes, kind="stable")
            self._sorted = (self.prefixes[order], order)
        return self._sorted

    def rows_of(self, keys: np.ndarray, prefixes: np.ndarray) -> np.ndarray:
        """Local row of each key (keys are unique within a space's segment), or -1."""
        sorted_prefixes, order = self.sorted()
        lo = np.searchsorted(sorted_prefixes, prefixes, side="left")
        hi = np.searchsorted(sorted_prefixes, prefixes, side="right")
        out = np.full(len(keys), -1, dtype=np.int64)
        one = np.flatnonzero(hi - lo == 1)
        cand = order[lo[one]]
        ok = self.keys[cand] == keys[one]
        out[one[ok]] = cand[ok]
        for j in np.flatnonzero(hi - lo > 1).tolist():  # an 8-byte prefix shared by several stored keys
            match = [c for c in order[lo[j]:hi[j]].tolist() if self.keys[c] == keys[j]]
            out[j] = match[0] if match else -1
        return out

    def find(self, wanted: np.ndarray, prefixes: np.ndarray) -> list[np.ndarray]:
        """Local rows of each wanted key, ascending."""
        if self._sorted is None and len(wanted) <= 16:  # a scan costs less than a sort
            cand = np.flatnonzero(np.isin(self.prefixes, prefixes))
            return [cand[self.keys[cand] == w] for w in wanted]
        sorted_prefixes, order = self.sorted()
        lo = np.searchsorted(sorted_prefixes, prefixes, side="left")
        hi = np.searchsorted(sorted_prefixes, prefixes, side="right")
        out = []
        for w, a, b in zip(wanted, lo.tolist(), hi.tolist()):
            cand = np.sort(order[a:b]) if b > a else _NONE
            out.append(cand[self.keys[cand] == w] if len(cand) else _NONE)
        return out


def _id_hash(ids: np.ndarray) -> np.ndarray:
    """pandas' ``hash_array`` of the ids (the hashes saved in id tables). A few ids, as a cold query
    looks up, are hashed here without importing pandas (0.4 s of a one-second cold query); a process that has
    pandas already (a server) hashes them with it (10 ids: 9 us against 100 us)."""
    if len(ids) <= 64 and "pandas" not in sys.modules:
        with contextlib.suppress(UnicodeEncodeError):  # pandas raises on lone surrogates: let it
            return _few_id_hashes(ids)
    import pandas as pd  # here, not at the top: a warm ingest imports this module and needs no pandas

    # categorize=False: the same hashes (pandas' categorize only skips repeated values), 6-14x faster here
    return pd.util.hash_array(np.asarray(ids, dtype=object), categorize=False) if len(ids) else np.zeros(0, np.uint64)


def _few_id_hashes(ids: np.ndarray) -> np.ndarray:
    """``_id_hash`` in pure Python."""
    return np.array([_mix(_siphash24(str(i).encode("utf-8"))) for i in ids], dtype=np.uint64)


_M64 = 0xFFFFFFFFFFFFFFFF
_PANDAS_HASH_KEY = b"0123456789123456"  # pandas.core.util.hashing._default_hash_key


def _rotl(x: int, b: int) -> int:
    return ((x << b) | (x >> (64 - b))) & _M64


def _siphash24(data: bytes, key: bytes = _PANDAS_HASH_KEY) -> int:
    """SipHash-2-4 (Aumasson and Bernstein), as pandas' ``hash_object_array`` computes it per string."""
    k0, k1 = int.from_bytes(key[:8], "little"), int.from_bytes(key[8:16], "little")
    v = [k0 ^ 0x736F6D6570736575, k1 ^ 0x646F72616E646F6D, k0 ^ 0x6C7967656E657261, k1 ^ 0x7465646279746573]

    def rounds(n: int) -> None:
        v0, v1, v2, v3 = v
        for _ in range(n):
            v0 = (v0 + v1) & _M64
            v1 = _rotl(v1, 13) ^ v0
            v0 = _rotl(v0, 32)
            v2 = (v2 + v3) & _M64
            v3 = _rotl(v3, 16) ^ v2
            v0 = (v0 + v3) & _M64
            v3 = _rotl(v3, 21) ^ v0
            v2 = (v2 + v1) & _M64
            v1 = _rotl(v1, 17) ^ v2
            v2 = _rotl(v2, 32)
        v[:] = v0, v1, v2, v3

    n = len(data)
    end = n - n % 8
    for block in [int.from_bytes(data[i:i + 8], "little") for i in range(0, end, 8)] + [
            ((n & 0xFF) << 56) | int.from_bytes(data[end:], "little")]:
        v[3] ^= block
        rounds(2)
        v[0] ^= block
    v[2] ^= 0xFF
    rounds(4)
    return v[0] ^ v[1] ^ v[2] ^ v[3]


def _mix(h: int) -> int:
    """The bit mixing ``pandas.util.hash_array`` applies after hashing each object."""
    h ^= h >> 30
    h = (h * 0xBF58476D1CE4E5B9) & _M64
    h ^= h >> 27
    h = (h * 0x94D049BB133111EB) & _M64
    return h ^ (h >> 31)


MAX_ID_PARTS = 32  # appended segments' id hashes kept as separate sorted parts before one merge (and save)
SAVE_ID_ROWS = 20_000  # a call that hashed at least this many ids saves the merged table for later processes


@dataclass(frozen=True)
class IdTable:
    """Sorted 64-bit hashes of the ids of a list of segments with their global positions, in sorted
    parts: the saved table of the first segments, then one part per segment appended since."""

    segments: tuple[Segment, ...]
    parts: tuple[tuple[np.ndarray, np.ndarray], ...]  # (uint64 hashes sorted, int64 positions)

    def candidates(self, ids: Sequence[str]) -> list[np.ndarray]:
        """Global positions whose id hash matches, per id (confirmed by reading the id)."""
        h = _id_hash(np.array(list(ids), dtype=object))
        found: list[list[np.ndarray]] = [[] for _ in h]
        for hashes, positions in self.parts:
            lo = np.searchsorted(hashes, h, side="left")
            hi = np.searchsorted(hashes, h, side="right")
            for n in np.flatnonzero(hi > lo).tolist():
                found[n].append(np.asarray(positions[lo[n]:hi[n]], dtype=np.int64))
        return [np.concatenate(f) if f else _NONE for f in found]

    def merged(self) -> "IdTable":
        if len(self.parts) == 1:
            return self
        hashes = np.concatenate([h for h, _ in self.parts])
        positions = np.concatenate([np.asarray(p, dtype=np.int64) for _, p in self.parts])
        order = np.argsort(hashes, kind="stable")  # sorted runs: a merge, not a full sort
        return IdTable(self.segments, ((hashes[order], positions[order]),))


def _table_paths(store: Store, name: str) -> tuple[Path, Path]:
    return store.index_dir / f"ids-{name}.npy", store.index_dir / f"ids-{name}.json"


def _saved_table(store: Store, segs: tuple[Segment, ...], name: str) -> IdTable:
    """The saved (memory-mapped) table of the longest prefix of ``segs`` it covers, else an empty one."""
    data_path, meta_path = _table_paths(store, name)
    want = [[s.file, s.rows] for s in segs]
    with contextlib.suppress(OSError, ValueError):
        meta = json.loads(meta_path.read_bytes())
        have = meta["segments"]
        if meta.get("format") == ID_TABLE_FORMAT and have and want[: len(have)] == have:
            loaded = np.load(data_path, mmap_mode="r")
            if loaded.shape == (sum(r for _, r in have), 2):
                return IdTable(segs[: len(have)], ((loaded[:, 0], loaded[:, 1].view(np.int64)),))
    return IdTable((), ())


def id_table(store: Store, segs: Sequence[Segment], name: str, pending: list[Any] | None = None,
             held: IdTable | None = None, save_any: bool = True) -> IdTable:
    """The id table of ``segs``: ``held`` (this process's) or the saved one, extended by the segments
    appended since (a compaction's new names mean a full rebuild, once). A table that needed many ids
    hashed, or many parts, is merged and queued in ``pending`` to be saved beside the index (by
    ``save_tables``, once the query succeeded: a failed command leaves the store as it was); with
    ``save_any`` (a short-lived process, not a server following ingests), any table that needed hashing is."""
    segs = tuple(segs)
    if held is not None and held.segments == segs:
        return held
    base = held if held is not None and segs[: len(held.segments)] == held.segments else _saved_table(store, segs, name)
    parts = list(base.parts)
    offset = sum(s.rows for s in base.segments)
    hashed = 0
    for seg in segs[len(base.segments):]:
        with store.open_segment(seg.file) as f:
            h = _id_hash(as_text_column(f["ids"][()], "ids"))
        order = np.argsort(h, kind="stable")
        parts.append((h[order], order.astype(np.int64) + offset))
        offset += len(h)
        hashed += len(h)
    table = IdTable(segs, tuple(parts))
    if hashed and (save_any or len(parts) == 1 or hashed >= SAVE_ID_ROWS) or len(parts) > MAX_ID_PARTS:
        table = table.merged()
        if pending is not None:
            (hashes, positions), = table.parts
            pending.append((*_table_paths(store, name), np.stack([hashes, positions.view(np.uint64)], axis=1),
                            [[s.file, s.rows] for s in segs]))
    return table


def save_tables(pending: list[Any]) -> None:
    """Write the id tables built by this process's queries (best effort: a read-only store keeps them in memory)."""
    while pending:
        try:
            data_path, meta_path, table, segments = pending.pop()
        except IndexError:  # another thread saved the last one
            return
        with contextlib.suppress(OSError):
            os.makedirs(data_path.parent, exist_ok=True)
            atomic_write_bytes(data_path, _npy_bytes(table))
            atomic_write_bytes(meta_path, json.dumps({"format": ID_TABLE_FORMAT, "segments": segments}).encode())


def _npy_bytes(array: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array))
    return buf.getvalue()


# ----------------------------------------------------------------------------- the per-process cache


@dataclass(frozen=True)
class Restriction:
    """The storage rows of a space that hold one dataset's texts (a query with ``dataset=``), and what
    they were computed from: still valid while the dataset's key segments only grew and the space's
    first ``space_rows`` rows are unchanged (a space only grows; a compaction keeps the order)."""

    key_segments: tuple[Segment, ...]
    space_rows: int
    last_key: bytes
    rows: np.ndarray  # int64, sorted, unique


@dataclass
class _Waiting:
    key: tuple[Any, ...]
    run: Callable[[np.ndarray, int, list[Any]], tuple[np.ndarray, np.ndarray]]
    queries: np.ndarray
    k: int
    allowed: Any  # this query's restriction, handed to ``run`` per query row (a key may leave it out)
    done: bool = False
    result: tuple[np.ndarray, np.ndarray] | None = None
    error: BaseException | None = None


class SearchBatcher:
    """Concurrent searches of one index answered together: a brute-force scan of a million vectors is
    bound by memory bandwidth, so sixteen queries in one matrix product cost about what one does; an IVF
    search of sixteen queries finds their lists with one matrix product against the centroids and pays
    FAISS's per-call cost once (1M vectors, nprobe 32, 2 cores: 250-322 queries/s one by one, 524-727 in
    sixteens). Each query's answer is what it would get alone. A thread that finds no search running runs
    every query waiting at that moment (grouped by the caller's key: index and settings, and for an
    approximate search the restriction; a scan takes each query's own), with the largest k, then hands
    over to one of the threads that arrived meanwhile."""

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._waiting: list[_Waiting] = []
        self._running = False
        self.scans = 0  # searches run (fewer than queries when batched)

    def search(self, key: tuple[Any, ...], run: Callable[[np.ndarray, int, list[Any]], tuple[np.ndarray, np.ndarray]],
               queries: np.ndarray, k: int, allowed: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """``run(queries, k, restriction of each query row)`` for this query and those waiting with the same key."""
        mine = _Waiting(key, run, np.atleast_2d(queries), k, allowed)
        with self._cv:
            self._waiting.append(mine)
            while self._running and not mine.done:
                self._cv.wait()
            lead = not mine.done  # nothing running and this query not answered: this thread runs the round
            if lead:
                self._running = True
        if lead:
            try:
                with self._cv:
                    batch, self._waiting = self._waiting, []  # this thread's query and all waiting now
                groups: dict[tuple[Any, ...], list[_Waiting]] = {}
                for w in batch:
                    groups.setdefault(w.key, []).append(w)
                for group in groups.values():
                    self._run(group)
            finally:
                with self._cv:
                    self._running = False  # one of the threads that arrived meanwhile leads the next round
                    self._cv.notify_all()
        if mine.error is not None:
            raise mine.error
        assert mine.result is not None
        return mine.result

    def _run(self, group: list[_Waiting]) -> None:
        try:
            self.scans += 1
            scores, rows = group[0].run(np.concatenate([w.queries for w in group]), max(w.k for w in group),
                                        [w.allowed for w in group for _ in range(len(w.queries))])
            start = 0
            for w in group:
                n = len(w.queries)
                w.result = (scores[start:start + n, : w.k], rows[start:start + n, : w.k])
                start += n
        except BaseException as exc:  # each waiting query gets the error its own search would have raised
            for w in group:
                w.error = exc
        for w in group:
            w.done = True


TAIL_MAX_ROWS = 65536  # newer rows searched by brute force beside a held index (~0.1 GB at 384-d)
MERGE_TAIL = 4  # segments looked up one by one past a server's merged key table before it is rebuilt
MERGED_TABLES = 8  # merged key tables a server holds (a space's, each dataset's)


@dataclass
class SearchCache:
    """The opened index and per-segment lookups of the latest snapshot, reused while files are unchanged.

    Safe to share between threads (``fs serve`` answers requests in parallel): each lookup is built
    from immutable segments by one thread while others needing it wait (``_once``); opening or building
    an index, and loading a model, happen under ``lock``.
    """

    restrictions: dict[tuple[str, str], Restriction] = field(default_factory=dict)  # (space id, dataset)
    indexes: dict[str, tuple[tuple[Any, ...], faiss_index.OpenedIndex]] = field(default_factory=dict)
    segments: dict[tuple[str, str], Any] = field(default_factory=dict)  # (what, segment file) -> its lookup
    id_tables: dict[str, IdTable] = field(default_factory=dict)  # table name -> the latest built
    pending: list[Any] = field(default_factory=list)  # id tables to save once a query succeeds
    embedders: dict[str, Any] = field(default_factory=dict)  # loaded once per process (a server's new texts)
    last_keys: dict[str, bytes] = field(default_factory=dict)  # space id -> key of the held index's last row
    tails: dict[tuple[Any, ...], np.ndarray] = field(default_factory=dict)  # the newest rows' unit vectors
    generation: int = -2  # of the snapshot the per-segment lookups were last pruned to
    packed: bool = False  # hold ids, labels and texts in memory (a server), instead of reading them per query
    lock: threading.RLock = field(default_factory=threading.RLock)
    batcher: SearchBatcher | None = None  # concurrent searches answered together (a server)
    merged: dict[str, tuple[tuple[str, ...], SegmentKeys]] = field(default_factory=dict)  # see _key_parts
    _building: dict[tuple[str, str], threading.Lock] = field(default_factory=dict)  # see _once
    _building_lock: threading.Lock = field(default_factory=threading.Lock)
    _merging: bool = False

    def embedder(self, model: str) -> Any:
        with self.lock:
            if model not in self.embedders:
                self.embedders[model] = load_embedder(model)
            return self.embedders[model]

    def retain(self, store: Store, snap: Snapshot) -> None:
        """Forget the lookups, and close the held files, of segments the snapshot no longer names (merged
        by a compaction)."""
        if snap.generation == self.generation:
            return
        files = snap.files()
        self.segments = {k: v for k, v in list(self.segments.items()) if k[1] in files}
        with self._building_lock:
            self.merged = {k: v for k, v in self.merged.items() if files.issuperset(v[0])}
        store.release_segments(files)
        self.generation = snap.generation

    def _once(self, key: tuple[str, str], make: Callable[[], Any], wait: bool = True) -> Any:
        """The per-segment lookup ``key``, built by one thread while others needing it wait (at a million
        rows a build takes seconds: sixteen requests building it at once would take a minute); without
        ``wait``, None while another thread builds it."""
        found = self.segments.get(key)
        if found is not None:
            return found
        with self._building_lock:
            building = self._building.setdefault(key, threading.Lock())
        if not building.acquire(blocking=wait):
            return None
        try:
            found = self.segments.get(key)
            if found is None:
                found = self.segments[key] = make()
        finally:
            building.release()
        with self._building_lock:
            self._building.pop(key, None)
        return found

    def segment_keys(self, store: Store, seg: Segment) -> SegmentKeys:
        def make() -> SegmentKeys:
            with store.open_segment(seg.file) as f:
                return SegmentKeys(f["keys"][()], sort=self.packed)

        return self._once(("keys", seg.file), make)

    def find_keys(self, store: Store, segs: Sequence[Segment], wanted: np.ndarray) -> list[np.ndarray]:
        """Global positions in ``segs`` of each wanted key, ascending."""
        wanted = np.asarray(wanted, dtype=KEY_DTYPE)
        prefixes = _prefix(wanted)
        found: list[list[np.ndarray]] = [[] for _ in wanted]
        for keys, offset in self._key_parts(store, segs):
            for n, local in enumerate(keys.find(wanted, prefixes)):
                if len(local):
                    found[n].append(local + offset)
        return [np.concatenate(f) if f else _NONE for f in found]

    def _key_parts(self, store: Store, segs: Sequence[Segment]) -> list[tuple[SegmentKeys, int]]:
        """(key lookup, global offset of its first row) covering ``segs``: in a server, one merged table for
        as many leading segments as one holds, then the newer segments one by one.

        A million-row dataset spans tens of segments, and a lookup of each hit's key in each of them was a
        fifth of a server's CPU (bench/serve.py); ingests append segments, so a merged table is rebuilt in a
        background thread once more than ``MERGE_TAIL`` segments trail it, and queries never wait for it."""
        files = tuple(seg.file for seg in segs)
        held = self.merged.get(files[0]) if self.packed and len(files) > 1 else None
        done = len(held[0]) if held is not None and files[:len(held[0])] == held[0] else 0
        parts = [(held[1], 0)] if done else []
        offset = sum(seg.rows for seg in segs[:done])
        for seg in segs[done:]:
            parts.append((self.segment_keys(store, seg), offset))
            offset += seg.rows
        if self.packed and len(segs) - done > (MERGE_TAIL if done else 1):
            self._merge_later(store, tuple(segs))
        return parts

    def _merge_later(self, store: Store, segs: tuple[Segment, ...]) -> None:
        """Build the merged key table of ``segs`` in a background thread (one build at a time)."""
        with self._building_lock:
            if self._merging:
                return
            self._merging = True

        def build() -> None:
            try:
                self.merge_keys(store, segs)
            except Exception:  # a segment gone with a compaction: the next query asks again
                log.debug("merging key tables failed", exc_info=True)
            finally:
                self._merging = False

        threading.Thread(target=build, name="fs-merge-keys", daemon=True).start()

    def merge_keys(self, store: Store, segs: Sequence[Segment]) -> None:
        """Hold one sorted key table for all of ``segs`` (a server's lookups across them: ``_key_parts``)."""
        keys = SegmentKeys(np.concatenate([self.segment_keys(store, seg).keys for seg in segs]), sort=True)
        files = tuple(seg.file for seg in segs)
        with self._building_lock:
            self.merged.pop(files[0], None)
            self.merged[files[0]] = (files, keys)
            while len(self.merged) > MERGED_TABLES:  # the oldest first: superseded by compactions
                del self.merged[next(iter(self.merged))]

    def keys_at(self, store: Store, segs: Sequence[Segment], positions: Sequence[int]) -> np.ndarray:
        """Keys at global positions of ``segs``."""
        positions = np.asarray(positions, dtype=np.int64)
        out = np.zeros(len(positions), dtype=KEY_DTYPE)
        bounds = _bounds(segs)
        which = np.searchsorted(bounds, positions, side="right") - 1
        for n, (si, pos) in enumerate(zip(which.tolist(), positions.tolist())):
            out[n] = self.segment_keys(store, segs[si]).keys[pos - bounds[si]]
        return out

    def ids_table(self, store: Store, segs: Sequence[Segment], name: str) -> IdTable:
        segs = tuple(segs)
        held = self.id_tables.get(name)
        if held is not None and held.segments == segs:
            return held
        with self._building_lock:
            building = self._building.setdefault(("ids", name), threading.Lock())
        with building:  # one thread extends a table; the others wait and take its result
            held = self.id_tables.get(name)
            if held is None or held.segments != segs:
                held = self.id_tables[name] = id_table(store, segs, name, self.pending, held, save_any=not self.packed)
        return held

    def read_at(self, store: Store, segs: Sequence[Segment], column: str, positions: np.ndarray) -> np.ndarray:
        """``read_at``, from columns held in memory (``PackedColumn``) when ``packed`` is set."""
        if not self.packed:
            return read_at(store, segs, column, positions)
        positions = np.asarray(positions, dtype=np.int64)
        out = np.empty(len(positions), dtype=object)
        bounds = _bounds(segs)
        which = np.searchsorted(bounds, positions, side="right") - 1
        if len(positions) <= 32:  # a query's few hits: one value at a time costs less than grouping by segment
            packs: dict[int, PackedColumn | None] = {}
            for n, (si, p) in enumerate(zip(which.tolist(), positions.tolist())):
                if si not in packs:
                    packs[si] = self.column(store, segs[si], column, wait=False)
                packed, local = packs[si], p - int(bounds[si])
                # while another thread packs this segment, the row is read from HDF5 (as below)
                out[n] = packed.at([local])[0] if packed is not None else \
                    read_at(store, segs[si:si + 1], column, np.array([local]))[0]
            return out
        for si in np.unique(which).tolist():
            sel = np.flatnonzero(which == si)
            local = positions[sel] - bounds[si]
            packed = self.column(store, segs[si], column, wait=False)
            # while another thread packs this segment (seconds at a million rows), read the few rows from HDF5
            out[sel] = packed.at(local.tolist()) if packed is not None else read_at(store, segs[si:si + 1], column, local)
        return out

    def column(self, store: Store, seg: Segment, column: str, wait: bool = True) -> PackedColumn | None:
        return self._once((column, seg.file), lambda: PackedColumn.read(store, seg, column), wait)

    def find_ids(self, store: Store, segs: Sequence[Segment], name: str, ids: Sequence[str]) -> np.ndarray:
        """Global position in ``segs`` of each id (the first, confirmed by reading it), or -1;
        ``name`` names the segments' id table."""
        cands = self.ids_table(store, segs, name).candidates(ids)
        out = np.full(len(cands), -1, dtype=np.int64)
        flat = np.concatenate(cands) if cands else _NONE
        if not len(flat):
            return out
        found = self.read_at(store, segs, "ids", flat).tolist()
        i = 0
        for n, (want, cand) in enumerate(zip(ids, cands)):
            match = [int(p) for p, v in zip(cand.tolist(), found[i:i + len(cand)]) if v == want]
            out[n] = min(match) if match else -1
            i += len(cand)
        return out

    def warm(self, store: Store, snap: Snapshot, space: Space) -> None:
        """Open the space's index and build every lookup a query over ``snap`` reads, ahead of the first query."""
        self.retain(store, snap)
        get_recipe(space.recipe).clean(["warm"])  # tweet-v1 loads spaCy's tables: seconds, once
        self.index(store, space, None)
        for seg in space.segments:
            self.segment_keys(store, seg)
        if self.packed and len(space.segments) > 1:
            self.merge_keys(store, space.segments)
        for d in snap.datasets.values():
            segs = d.keys.get(space.recipe, ())
            self.ids_table(store, segs, f"{d.name}-keys-{space.recipe}")
            self.ids_table(store, d.rows, f"{d.name}-rows")
            for seg in segs:
                self.segment_keys(store, seg)
                if self.packed:
                    self.column(store, seg, "ids")
            if self.packed and len(segs) > 1:
                self.merge_keys(store, segs)
            for seg in d.rows if self.packed else ():
                for column in ("ids", "texts", "labels"):
                    self.column(store, seg, column)
            self.label_updates(store, d)
            self.restriction(store, space, d)  # queries with dataset=
        save_tables(self.pending)

    def label_updates(self, store: Store, ds: Dataset) -> dict[str, str]:
        """id -> latest label of the dataset's label updates."""
        if not ds.labels:
            return {}

        def make() -> dict[str, str]:
            ids, labels = store.label_updates(ds)
            return dict(zip(ids.tolist(), labels.tolist()))  # later updates win

        # keyed by the last segment: updates are appended, and a compaction that merges them keeps their order
        return self._once(("label-updates", ds.labels[-1].file), make)

    def rows_of_keys(self, store: Store, space: Space, keys: np.ndarray) -> np.ndarray:
        """Storage row of each key in ``space`` (-1 where absent), for many keys at once: per space segment,
        the smaller side is looked up in the other's sorted prefixes."""
        keys = np.asarray(keys, dtype=KEY_DTYPE)
        out = np.full(len(keys), -1, dtype=np.int64)
        wanted = _prefix(keys)
        by_prefix = np.argsort(wanted, kind="stable")
        sorted_wanted = wanted[by_prefix]
        offset = 0
        for seg in space.segments:
            sk = self.segment_keys(store, seg)
            if len(keys) <= seg.rows:  # fewer keys than rows: look each key up among the segment's
                local = sk.rows_of(keys, wanted)
                found = local >= 0
                out[found] = local[found] + offset
                offset += seg.rows
                continue
            prefixes, order = sk.sorted()
            lo = np.searchsorted(sorted_wanted, prefixes, side="left")
            hi = np.searchsorted(sorted_wanted, prefixes, side="right")
            one = hi - lo == 1  # the usual case: one wanted key with this row's prefix
            w, local = by_prefix[lo[one]], order[one]
            ok = keys[w] == sk.keys[local]
            out[w[ok]] = local[ok] + offset
            for j in np.flatnonzero(hi - lo > 1).tolist():  # 8-byte prefixes shared by several wanted keys
                for w in by_prefix[lo[j]:hi[j]].tolist():
                    if keys[w] == sk.keys[order[j]]:
                        out[w] = order[j] + offset
            offset += seg.rows
        return out

    def restriction(self, store: Store, space: Space, ds: Dataset) -> np.ndarray:
        """Sorted storage rows of ``space`` holding the texts of dataset ``ds``, extended as both grow."""
        segs = tuple(ds.keys.get(space.recipe, ()))
        key = (space.id, ds.name)
        held = self.restrictions.get(key)
        if held is not None and held.key_segments == segs and held.space_rows == space.rows:
            return held.rows
        with self._building_lock:
            building = self._building.setdefault(("restriction", f"{space.id}/{ds.name}"), threading.Lock())
        with building:
            held = self.restrictions.get(key)
            still = (held is not None and 0 < held.space_rows <= space.rows
                     and segs[: len(held.key_segments)] == held.key_segments
                     and bytes(self.keys_at(store, space.segments, [held.space_rows - 1])[0]) == held.last_key)
            done, rows = (len(held.key_segments), held.rows) if still and held is not None else (0, _NONE)
            parts = [rows]
            for seg in segs[done:]:
                found = self.rows_of_keys(store, space, self.segment_keys(store, seg).keys)
                parts.append(found[found >= 0])
            rows = np.unique(np.concatenate(parts)).astype(np.int64) if len(parts) > 1 else rows
            last = bytes(self.keys_at(store, space.segments, [space.rows - 1])[0]) if space.rows else b""
            self.restrictions[key] = Restriction(segs, space.rows, last, rows)
            return rows

    def index(self, store: Store, space: Space, progress: ProgressFn | None) -> tuple[faiss_index.OpenedIndex, str]:
        """The space's index: from memory while its files on disk are untouched, else opened and checked.

        Rows committed after the held index was opened (a server following an ingest) are searched by
        brute force beside it (``tail``) up to TAIL_MAX_ROWS, rather than extending and rewriting a
        large index file at every generation; beyond that the index is brought up to date on disk.
        """
        from featurestore import index as faiss_index  # FAISS is loaded only when a query needs the index

        signature = (space.segments, faiss_index.files_signature(store, space))
        with self.lock:
            cached = self.indexes.get(space.id)
            if cached is not None and cached[0] == signature:
                return cached[1], "in memory"
            # The index files unchanged (a held index may be memory-mapped from them), only the space grown:
            if cached is not None and cached[0][1] == signature[1] and self._still_prefix(store, space, cached[1]):
                newer = space.rows - cached[1].rows
                if newer <= TAIL_MAX_ROWS:
                    return cached[1], f"in memory, {newer:,} newer rows searched by brute force" if newer else "in memory"
            opened = faiss_index.open_index(store, space, progress)
            if self.packed and opened.kind == "flat":  # a server scans it again and again: from memory
                held = faiss_index.VectorArray.of(opened)
                opened.vectors = held.with_bf16() if held is not None else opened.vectors
            self.indexes[space.id] = ((space.segments, faiss_index.files_signature(store, space)), opened)
            if opened.rows:
                self.last_keys[space.id] = bytes(self.keys_at(store, space.segments, [opened.rows - 1])[0])
            return opened, opened.status

    def _still_prefix(self, store: Store, space: Space, opened: faiss_index.OpenedIndex) -> bool:
        """Rows 0..opened.rows-1 of ``space`` are still the indexed ones: a space only grows (appends, and
        compactions that keep order), and the key of the last indexed row is where it was."""
        if not 0 < opened.rows <= space.rows or space.id not in self.last_keys:
            return False
        return bytes(self.keys_at(store, space.segments, [opened.rows - 1])[0]) == self.last_keys[space.id]

    def tail(self, store: Store, space: Space, start: int) -> np.ndarray:
        """Unit vectors of storage rows ``start:`` of ``space`` (rows newer than the held index)."""
        from featurestore import index as faiss_index

        held = self.tails.get((space.id, start))
        if held is None or len(held) > space.rows - start:
            held = np.zeros((0, space.dim), np.float32)
        if len(held) < space.rows - start:  # extended by the rows published since (a space only grows)
            held = np.concatenate([held, faiss_index.normalize(store.read_range(space, start + len(held), space.rows))])
            self.tails = {(space.id, start): held}
        return held


# ----------------------------------------------------------------------------- queries


def _key_row(cache: SearchCache, store: Store, space: Space, key: bytes) -> int:
    pos = cache.find_keys(store, space.segments, np.array([key], dtype=KEY_DTYPE))[0]
    return int(pos[0]) if len(pos) else -1


def id_vector(cache: SearchCache, store: Store, space: Space, datasets: list[Dataset], id: str,
              where: str = "any dataset") -> np.ndarray:
    """The stored vector (1 x dim) of row ``id`` of one of ``datasets`` (``where`` names them in errors)."""
    owners = []
    for d in datasets:
        segs = d.keys.get(space.recipe, ())
        pos = int(cache.find_ids(store, segs, f"{d.name}-keys-{space.recipe}", [id])[0])
        if pos >= 0:
            owners.append((d, bytes(cache.keys_at(store, segs, [pos])[0])))
    if not owners:
        raise UnknownIdError(f"id {id!r} is not in {where} with vectors for model {space.model!r}; "
                             "check the id or [[dataset]]")
    if len(owners) > 1:
        raise DatasetError(f"id {id!r} is in datasets {', '.join(d.name for d, _ in owners)}; fix: pick one with [[dataset]]")
    row = _key_row(cache, store, space, owners[0][1])
    return store.read_vectors(space, np.array([row]))


def _with_tail(queries: np.ndarray, k: int, allowed: np.ndarray | list[np.ndarray | None] | None, scores: np.ndarray,
               rows: np.ndarray, start: int, tail: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The index's top-k merged with exact cosine scores of the rows from ``start`` on; ``allowed`` restricts
    every query, or (a list) each query its own, as in ``index.search``."""
    import faiss

    from featurestore import index as faiss_index

    q = faiss_index.normalize(np.atleast_2d(queries))
    scores = np.where(rows >= 0, scores, -np.inf)  # FAISS pads missing results with row -1
    if not len(tail):
        return scores, np.where(np.isneginf(scores), -1, rows)
    if allowed is None or (isinstance(allowed, list) and all(a is None for a in allowed)):
        # FAISS's own scan of the tail: for a few queries its kernels beat numpy's small matrix product 2-6x
        # (9,000 tail rows, 2 queries: 0.49 vs 1.06 ms as (tail @ q.T).T, 2.96 ms as q @ tail.T)
        s, local = faiss.knn(q, tail, min(k, len(tail)), metric=faiss.METRIC_INNER_PRODUCT)
        scores, rows = faiss_index.top_k([(np.concatenate([scores, s], axis=1),
                                           np.concatenate([rows, np.where(local >= 0, local + start, -1)], axis=1))],
                                          len(q), k)
        return scores, np.where(np.isneginf(scores), -1, rows)
    tail_rows = np.arange(start, start + len(tail))
    s = (tail @ q.T).T  # not q @ tail.T: numpy's product of a few rows against the transposed tail is slow
    if isinstance(allowed, list):
        faiss_index.mask_disallowed(s, tail_rows, faiss_index.restriction_groups(allowed))
    elif allowed is not None:
        keep = faiss_index.member(tail_rows, allowed)
        s, tail_rows = s[:, keep], tail_rows[keep]
    scores, rows = faiss_index.top_k([(scores, rows), (s, tail_rows)], len(s), k)
    return scores, np.where(np.isneginf(scores), -1, rows)  # a disallowed row is no answer


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
    """(dataset, id) of every row holding each hit's text, and the first one's raw text and current label."""
    hit_keys = cache.keys_at(store, space.segments, [r for _, r in found])
    owners: list[list[tuple[str, str]]] = [[] for _ in found]
    for d in datasets:
        segs = d.keys.get(space.recipe, ())
        if not segs or not len(hit_keys):
            continue
        where = cache.find_keys(store, segs, hit_keys)
        flat = np.concatenate(where)
        ids = cache.read_at(store, segs, "ids", flat) if len(flat) else []
        i = 0
        for h, pos in enumerate(where):
            owners[h] += [(d.name, ids[i + j]) for j in range(len(pos))]
            i += len(pos)
    firsts: dict[str, list[str]] = {}  # dataset -> the ids that are some hit's first owner
    for o in owners:
        if o:
            firsts.setdefault(o[0][0], []).append(o[0][1])
    named: dict[tuple[str, str], tuple[str, str]] = {}  # (dataset, id) -> (text, label)
    for name, ids in firsts.items():
        d = snap.datasets[name]
        pos = cache.find_ids(store, d.rows, f"{d.name}-rows", ids)
        ok = pos >= 0
        texts = cache.read_at(store, d.rows, "texts", pos[ok]).tolist()
        labels = cache.read_at(store, d.rows, "labels", pos[ok]).tolist()
        updates = cache.label_updates(store, d)
        for i, text, label in zip(np.asarray(ids, dtype=object)[ok].tolist(), texts, labels):
            named[(name, i)] = (text, updates.get(i, label))
    hits = []
    for rank, ((score, _), o) in enumerate(zip(found, owners), 1):
        text, label = named.get(o[0], ("", NO_LABEL)) if o else ("", NO_LABEL)
        hits.append(Hit(rank, score, o, text, label))
    return hits


def _batch_key(opened: Any, allowed: np.ndarray | None, *settings: Any) -> tuple[Any, ...]:
    """Searches that can share a scan: the same opened index, the same restriction object, the same settings."""
    return (id(opened), None if allowed is None else id(allowed), *settings)


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
    cache.retain(store, snap)
    where = f"dataset {dataset!r}" if dataset else "any dataset"
    info: dict[str, Any] = {"space": space.id, "model": space.model, "recipe": space.recipe, "dtype": space.dtype}
    allowed = cache.restriction(store, space, datasets[0]) if dataset else None
    if id is not None:
        queries, how = id_vector(cache, store, space, datasets, id, where), ["stored vector"]
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
    # rows committed after the held index was opened, scored exactly beside it
    tail = cache.tail(store, space, opened.rows) if opened.rows < space.rows else None

    def run(q: np.ndarray, kk: int, each: list[Any] | None = None) -> tuple[np.ndarray, np.ndarray]:
        mine = allowed if each is None else each
        found = faiss_index.search(opened, q, kk, mine, exact=exact, nprobe=nprobe, ef=ef, store=store, space=space)
        return found if tail is None else _with_tail(q, kk, mine, *found, opened.rows, tail)

    if cache.batcher is not None:  # a server: concurrent queries share one search call, and one product with the tail
        # a brute-force scan serves every restriction at once (each query's disallowed rows masked); queries of
        # one snapshot share a tail (space.rows: a newer one's rows are not an older snapshot's answers)
        scan = exact or opened.kind == "flat"
        key = _batch_key(opened, None if scan else allowed, exact, nprobe, ef, space.rows)
        scores, rows = cache.batcher.search(key, run, queries, k, allowed)
    else:
        scores, rows = run(queries, k)
    info["search_seconds"] = time.perf_counter() - t
    out = []
    for qs, qr in zip(scores, rows):
        found = [(float(s), int(r)) for s, r in zip(qs, qr) if r >= 0]
        out.append(_name_hits(cache, store, snap, space, datasets, found))
    save_tables(cache.pending)
    return out, info
