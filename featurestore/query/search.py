"""Nearest-neighbour queries: resolve the query to a vector, search the space's index, name the hits.

A query is a stored row (``id``), a text whose key is already stored (its vector is read,
the model is not loaded), or a new text (embedded). A new process resolves the query and names
the hits reading O(k log n) bytes, not whole columns (issue 24: a cold query at 10M rows):

- row -> key: the key at an index row (or a dataset position) is read alone from its segment
  (keys are fixed-width, stored contiguously);
- key -> rows: key tables (``index/keys-spacekeys-<space>.npy``, ``keys-<dataset>-<recipe>.npy``:
  sorted 8-byte key prefixes and their rows, memory-mapped) give a query text's space row and a
  hit's owning dataset positions by binary search, each confirmed by reading the key there;
- id -> position: id tables (``index/ids-*.npy``, the same layout over 64-bit id hashes) find a
  query id's key, a hit's raw text and its latest label update without reading every id
  (variable-length strings are the slow read).

A server (``hold``) keeps the key columns in memory, sorted, instead of the key tables. Every table
covers a list of immutable segments, is extended by one part per segment appended, and is rebuilt
when its segments were renamed (a compaction) or its file does not match (``lookups.py`` owns the
tables' files: format, hash, digest, rebuild). ``SearchCache``
keeps, per process, the opened index and these arrays while nothing on disk changed, so repeated
queries in a notebook or a server skip that work. A query restricted to one dataset (``dataset=``)
searches the space rows holding that dataset's texts (``Restriction``), extended as the dataset and
the space grow.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np

from featurestore.embedders import load_embedder
from featurestore.errors import DatasetError, UnknownIdError, UsageError
from featurestore.inputs.clean import get_recipe
from featurestore.inputs.sources import NO_LABEL
from featurestore.progress import ProgressFn
from featurestore.spaces import key_texts, require_same_space
from featurestore.storage.keys import KEY_DTYPE
from featurestore.storage.lookups import (
    IDS,
    KEYS,
    NO_POSITIONS,
    IdTable,
    PackedColumn,
    PendingTable,
    SegmentKeys,
    TableKind,
    find_keys,
    id_table,
    read_at,
    read_keys,
    rows_of_keys,
    save_tables,
    segment_bounds,
)
from featurestore.storage.manifest import Dataset, Segment, Snapshot, Space
from featurestore.storage.store import FULL_ROWS, Store

if TYPE_CHECKING:
    from featurestore.query import index as faiss_index

log = logging.getLogger(__name__)


@dataclass
class Hit:
    rank: int
    score: float
    ids: list[tuple[str, str]]  # (dataset, id) of every row with this text
    text: str  # the raw text of the first of them
    label: str = ""  # the current label of the first of them ("": none)


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

    def search(
        self,
        key: tuple[Any, ...],
        run: Callable[[np.ndarray, int, list[Any]], tuple[np.ndarray, np.ndarray]],
        queries: np.ndarray,
        k: int,
        allowed: Any = None,
    ) -> tuple[np.ndarray, np.ndarray]:
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
            scores, rows = group[0].run(
                np.concatenate([w.queries for w in group]),
                max(w.k for w in group),
                [w.allowed for w in group for _ in range(len(w.queries))],
            )
            start = 0
            for w in group:
                n = len(w.queries)
                w.result = (scores[start : start + n, : w.k], rows[start : start + n, : w.k])
                start += n
        except BaseException as exc:  # each waiting query gets the error its own search would have raised
            for w in group:
                w.error = exc
        for w in group:
            w.done = True


TAIL_MAX_ROWS = 65536  # newer rows searched by brute force beside a held index (~0.1 GB at 384-d)
MERGE_TAIL = 4  # segments looked up one by one past a server's merged key table before it is rebuilt
MERGED_TABLES = 8  # merged key tables a server holds (a space's, each dataset's)


class _Builds:
    """A lock for each thing being built, so that one thread builds it while the others needing it wait."""

    def __init__(self) -> None:
        self._locks: dict[Hashable, threading.Lock] = {}
        self._guard = threading.Lock()  # the dict of locks

    def lock(self, key: Hashable) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())

    def forget(self, key: Hashable) -> None:
        with self._guard:
            self._locks.pop(key, None)


class SegmentLookups:
    """What queries look up in immutable segment files (key tables, ids/labels/texts held in memory, label
    updates), built once a segment, and a server's merged key tables; forgotten when a compaction merges
    the segments away (``retain``).

    ``packed`` (a server): key tables are sorted as they are built and merged across segments, and ids,
    labels and texts are held in memory (``PackedColumn``) instead of read per query.
    """

    def __init__(self, packed: bool = False) -> None:
        self.packed = packed
        self._built: dict[tuple[str, str], Any] = {}  # (what, segment file) -> its lookup
        self._builds = _Builds()  # see _once
        self._merged: dict[str, tuple[tuple[str, ...], SegmentKeys]] = {}  # first file -> (files, table): key_parts
        self._merge_lock = threading.Lock()  # _merged and _merging
        self._merging = False  # a background merge is running (one at a time)
        self._generation = -2  # of the snapshot the lookups were last pruned to

    def retain(self, store: Store, snap: Snapshot) -> None:
        """Forget the lookups, and close the held files, of segments the snapshot no longer names (merged
        by a compaction)."""
        if snap.generation == self._generation:
            return
        files = snap.files()
        self._built = {k: v for k, v in list(self._built.items()) if k[1] in files}
        with self._merge_lock:
            self._merged = {k: v for k, v in self._merged.items() if files.issuperset(v[0])}
        store.release_segments(files)
        self._generation = snap.generation

    def _once(self, key: tuple[str, str], make: Callable[[], Any], wait: bool = True) -> Any:
        """The per-segment lookup ``key``, built by one thread while others needing it wait (at a million
        rows a build takes seconds: sixteen requests building it at once would take a minute); without
        ``wait``, None while another thread builds it."""
        found = self._built.get(key)
        if found is not None:
            return found
        building = self._builds.lock(key)
        if not building.acquire(blocking=wait):
            return None
        try:
            found = self._built.get(key)
            if found is None:
                found = self._built[key] = make()
        finally:
            building.release()
        self._builds.forget(key)
        return found

    def segment_keys(self, store: Store, seg: Segment) -> SegmentKeys:
        def make() -> SegmentKeys:
            with store.open_segment(seg.file) as f:
                return SegmentKeys(f["keys"][()], sort=self.packed)

        return self._once(("keys", seg.file), make)

    def find_keys(self, store: Store, segs: Sequence[Segment], wanted: np.ndarray) -> list[np.ndarray]:
        """Global positions in ``segs`` of each wanted key, ascending."""
        return find_keys(self.key_parts(store, segs), wanted)

    def key_parts(self, store: Store, segs: Sequence[Segment]) -> list[tuple[SegmentKeys, int]]:
        """(key lookup, global offset of its first row) covering ``segs``: in a server, one merged table for
        as many leading segments as one holds, then the newer segments one by one.

        A million-row dataset spans tens of segments, and a lookup of each hit's key in each of them was a
        fifth of a server's CPU (bench/serve.py); ingests append segments, so a merged table is rebuilt in a
        background thread once more than ``MERGE_TAIL`` segments trail it, and queries never wait for it."""
        files = tuple(seg.file for seg in segs)
        held = self._merged.get(files[0]) if self.packed and len(files) > 1 else None
        done = len(held[0]) if held is not None and files[: len(held[0])] == held[0] else 0
        parts = [(held[1], 0)] if done and held is not None else []
        offset = sum(seg.rows for seg in segs[:done])
        for seg in segs[done:]:
            parts.append((self.segment_keys(store, seg), offset))
            offset += seg.rows
        if self.packed and len(segs) - done > (MERGE_TAIL if done else 1):
            self._merge_later(store, tuple(segs))
        return parts

    def _merge_later(self, store: Store, segs: tuple[Segment, ...]) -> None:
        """Build the merged key table of ``segs`` in a background thread (one build at a time)."""
        with self._merge_lock:
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
        """Hold one sorted key table for all of ``segs`` (a server's lookups across them: ``key_parts``)."""
        keys = SegmentKeys(np.concatenate([self.segment_keys(store, seg).keys for seg in segs]), sort=True)
        files = tuple(seg.file for seg in segs)
        with self._merge_lock:
            self._merged.pop(files[0], None)
            self._merged[files[0]] = (files, keys)
            while len(self._merged) > MERGED_TABLES:  # the oldest first: superseded by compactions
                del self._merged[next(iter(self._merged))]

    def merged(self, first: str) -> tuple[tuple[str, ...], SegmentKeys] | None:
        """The merged key table held for the segments that start with file ``first``: (their files, the table)."""
        return self._merged.get(first)

    def keys_at(self, store: Store, segs: Sequence[Segment], positions: Sequence[int]) -> np.ndarray:
        """Keys at global positions of ``segs``: from the held key tables in a server, else only those rows read."""
        where = np.asarray(positions, dtype=np.int64)
        if not self.packed:  # a cold process reads O(k) keys, never a whole key column
            return read_keys(store, segs, where)
        out = np.zeros(len(where), dtype=KEY_DTYPE)
        bounds = segment_bounds(segs)
        which = np.searchsorted(bounds, where, side="right") - 1
        for n, (si, pos) in enumerate(zip(which.tolist(), where.tolist())):
            out[n] = self.segment_keys(store, segs[si]).keys[pos - bounds[si]]
        return out

    def rows_of_keys(self, store: Store, space: Space, keys: np.ndarray) -> np.ndarray:
        """Storage row of each key in ``space`` (-1 where absent), for many keys at once.

        In a server, against one merged table of the space's leading full segments (built here when more
        than ``MERGE_TAIL`` of them are not in the held one), then the few newer ones: a dataset's keys looked
        up segment by segment in each of a 10M-row space's ~150 segments took most of a 6-minute warm-up."""
        segs = space.segments
        if self.packed and len(segs) > MERGE_TAIL:
            # the leading full segments, which no ingest rewrites: the table outlives the compactions of the tail
            full = next((i for i, seg in enumerate(segs) if seg.rows < FULL_ROWS), len(segs))
            files = tuple(seg.file for seg in segs)
            held = self._merged.get(files[0])
            covered = len(held[0]) if held is not None and files[: len(held[0])] == held[0] else 0
            if covered < full - MERGE_TAIL:
                self.merge_keys(store, segs[:full])
        return rows_of_keys([keys_ for keys_, _ in self.key_parts(store, segs)], keys)

    def column(self, store: Store, seg: Segment, column: str, wait: bool = True) -> PackedColumn | None:
        return self._once((column, seg.file), lambda: PackedColumn.read(store, seg, column), wait)

    def read_at(self, store: Store, segs: Sequence[Segment], column: str, positions: np.ndarray) -> np.ndarray:
        """``read_at``, from columns held in memory (``PackedColumn``) when ``packed`` is set."""
        if not self.packed:
            return read_at(store, segs, column, positions)
        positions = np.asarray(positions, dtype=np.int64)
        out = np.empty(len(positions), dtype=object)
        bounds = segment_bounds(segs)
        which = np.searchsorted(bounds, positions, side="right") - 1
        if len(positions) <= 32:  # a query's few hits: one value at a time costs less than grouping by segment
            packs: dict[int, PackedColumn | None] = {}
            for n, (si, p) in enumerate(zip(which.tolist(), positions.tolist())):
                if si not in packs:
                    packs[si] = self.column(store, segs[si], column, wait=False)
                packed, local = packs[si], p - int(bounds[si])
                # while another thread packs this segment, the row is read from HDF5 (as below)
                out[n] = (
                    packed.at([local])[0]
                    if packed is not None
                    else read_at(store, segs[si : si + 1], column, np.array([local]))[0]
                )
            return out
        for si in np.unique(which).tolist():
            sel = np.flatnonzero(which == si)
            local = positions[sel] - bounds[si]
            packed = self.column(store, segs[si], column, wait=False)
            # while another thread packs this segment (seconds at a million rows), read the few rows from HDF5
            out[sel] = (
                packed.at(local.tolist()) if packed is not None else read_at(store, segs[si : si + 1], column, local)
            )
        return out

    def label_updates(self, store: Store, ds: Dataset) -> dict[str, str]:
        """id -> latest label of the dataset's label updates."""
        if not ds.labels:
            return {}

        def make() -> dict[str, str]:
            ids, labels = store.label_updates(ds)
            return dict(zip(ids.tolist(), labels.tolist()))  # later updates win

        # keyed by the last segment: updates are appended, and a compaction that merges them keeps their order
        return self._once(("label-updates", ds.labels[-1].file), make)


class IdTables:
    """Id and key tables (``lookups.IdTable``) by name: the latest built of each, extended as its segments are
    appended, and those to save once the query that built them succeeded (``save``)."""

    def __init__(self, lookups: SegmentLookups) -> None:
        self._lookups = lookups  # reads the ids of candidate rows; packed: a server saves only merged tables
        self._latest: dict[tuple[str, str], IdTable] = {}  # (kind, table name) -> the latest built
        self.pending: list[PendingTable] = []  # tables to save once a query succeeds
        self._builds = _Builds()

    def table(self, store: Store, segs: Sequence[Segment], name: str, kind: TableKind = IDS) -> IdTable:
        segs = tuple(segs)
        key = (kind.prefix, name)
        held = self._latest.get(key)
        if held is not None and held.segments == segs:
            return held
        with self._builds.lock(key):  # one thread extends a table; the others wait and take its result
            held = self._latest.get(key)
            if held is None or held.segments != segs:
                held = self._latest[key] = id_table(
                    store, segs, name, self.pending, held, save_any=not self._lookups.packed, kind=kind
                )
        return held

    def find_keys(self, store: Store, segs: Sequence[Segment], name: str, wanted: np.ndarray) -> list[np.ndarray]:
        """Global positions in ``segs`` of each wanted key, ascending, through the key table ``name`` (mapped
        from ``index/keys-NAME.npy``): a binary search per key, then the candidate rows' keys read to confirm."""
        wanted = np.asarray(wanted, dtype=KEY_DTYPE)
        cands = self.table(store, segs, name, KEYS).candidates_of(KEYS.hashes(wanted))
        flat = np.concatenate(cands) if cands else NO_POSITIONS
        if not len(flat):
            return [NO_POSITIONS for _ in cands]
        found = read_keys(store, segs, flat)
        out, i = [], 0
        for want, cand in zip(wanted, cands):
            out.append(cand[found[i : i + len(cand)] == want])
            i += len(cand)
        return out

    def find(self, store: Store, segs: Sequence[Segment], name: str, ids: Sequence[str]) -> np.ndarray:
        """Global position in ``segs`` of each id (the first, confirmed by reading it), or -1;
        ``name`` names the segments' id table."""
        cands = self.table(store, segs, name).candidates(ids)
        out = np.full(len(cands), -1, dtype=np.int64)
        flat = np.concatenate(cands) if cands else NO_POSITIONS
        if not len(flat):
            return out
        found = self._lookups.read_at(store, segs, "ids", flat).tolist()
        i = 0
        for n, (want, cand) in enumerate(zip(ids, cands)):
            match = [int(p) for p, v in zip(cand.tolist(), found[i : i + len(cand)]) if v == want]
            out[n] = min(match) if match else -1
            i += len(cand)
        return out

    def latest_labels(self, store: Store, ds: Dataset, ids: Sequence[str]) -> dict[str, str]:
        """id -> latest label of the dataset's label updates, for ``ids`` only (found through the id table of
        the update segments: no full read of them)."""
        if not ds.labels or not len(ids):
            return {}
        segs = tuple(ds.labels)
        cands = self.table(store, segs, f"{ds.name}-labels").candidates(ids)
        flat = np.concatenate(cands) if cands else NO_POSITIONS
        if not len(flat):
            return {}
        found = self._lookups.read_at(store, segs, "ids", flat).tolist()
        last: dict[str, int] = {}
        i = 0
        for want, cand in zip(ids, cands):
            match = [int(p) for p, v in zip(cand.tolist(), found[i : i + len(cand)]) if v == want]
            if match:
                last[want] = max(match)  # later updates win
            i += len(cand)
        labels = self._lookups.read_at(store, segs, "labels", np.array(list(last.values()), dtype=np.int64))
        return dict(zip(last, labels.tolist()))

    def save(self) -> None:
        """Write the tables built so far (``lookups.save_tables``): call once a query succeeded."""
        save_tables(self.pending)


class Restrictions:
    """Per (space, dataset), the space's storage rows holding the dataset's texts (``Restriction``)."""

    def __init__(self, lookups: SegmentLookups) -> None:
        self._lookups = lookups
        self._held: dict[tuple[str, str], Restriction] = {}  # (space id, dataset)
        self._builds = _Builds()

    def rows(self, store: Store, space: Space, ds: Dataset) -> np.ndarray:
        """Sorted storage rows of ``space`` holding the texts of dataset ``ds``, extended as both grow."""
        lookups = self._lookups
        segs = tuple(ds.keys.get(space.recipe, ()))
        key = (space.id, ds.name)
        held = self._held.get(key)
        if held is not None and held.key_segments == segs and held.space_rows == space.rows:
            return held.rows
        with self._builds.lock(key):
            held = self._held.get(key)
            still = (
                held is not None
                and 0 < held.space_rows <= space.rows
                and segs[: len(held.key_segments)] == held.key_segments
                and bytes(lookups.keys_at(store, space.segments, [held.space_rows - 1])[0]) == held.last_key
            )
            done, rows = (len(held.key_segments), held.rows) if still and held is not None else (0, NO_POSITIONS)
            parts = [rows]
            for seg in segs[done:]:
                found = lookups.rows_of_keys(store, space, lookups.segment_keys(store, seg).keys)
                parts.append(found[found >= 0])
            rows = np.unique(np.concatenate(parts)).astype(np.int64) if len(parts) > 1 else rows
            last = bytes(lookups.keys_at(store, space.segments, [space.rows - 1])[0]) if space.rows else b""
            self._held[key] = Restriction(segs, space.rows, last, rows)
            return rows


class HeldIndexes:
    """Each space's opened index, reused while its files are unchanged, and the unit vectors of the rows
    committed since it was opened (its tail)."""

    def __init__(self, lookups: SegmentLookups, lock: threading.RLock) -> None:
        self._lookups = lookups  # the keys of indexed rows; packed: a server holds a flat index in memory
        self._lock = lock  # opening or building an index (``SearchCache.lock``)
        self._held: dict[str, tuple[tuple[Any, ...], faiss_index.OpenedIndex]] = {}  # space id -> (files, index)
        self._last_keys: dict[str, bytes] = {}  # space id -> key of the held index's last row
        self._tails: dict[tuple[str, int], np.ndarray] = {}  # the newest rows' unit vectors

    def held(self, space_id: str) -> faiss_index.OpenedIndex | None:
        """The index held for a space, if one is."""
        cached = self._held.get(space_id)
        return cached[1] if cached is not None else None

    def open(self, store: Store, space: Space, progress: ProgressFn | None) -> tuple[faiss_index.OpenedIndex, str]:
        """The space's index: from memory while its files on disk are untouched, else opened and checked.

        Rows committed after the held index was opened (a server following an ingest) are searched by
        brute force beside it (``tail``) up to TAIL_MAX_ROWS, rather than extending and rewriting a
        large index file at every generation; beyond that the index is brought up to date on disk.
        """
        from featurestore.query import index as faiss_index  # FAISS is loaded only when a query needs the index

        signature = (space.segments, faiss_index.files_signature(store, space))
        with self._lock:
            cached = self._held.get(space.id)
            if cached is not None and cached[0] == signature:
                return cached[1], "in memory"
            # The index files unchanged (a held index may be memory-mapped from them), only the space grown:
            if cached is not None and cached[0][1] == signature[1] and self._still_prefix(store, space, cached[1]):
                newer = space.rows - cached[1].rows
                if newer <= TAIL_MAX_ROWS:
                    return cached[
                        1
                    ], f"in memory, {newer:,} newer rows searched by brute force" if newer else "in memory"
            opened = faiss_index.open_index(store, space, progress, tail_max=TAIL_MAX_ROWS)
            if self._lookups.packed and opened.kind == "flat":  # a server scans it again and again: from memory
                held = faiss_index.VectorArray.of(opened)
                opened.vectors = held.with_bf16() if held is not None else opened.vectors
            self._held[space.id] = ((space.segments, faiss_index.files_signature(store, space)), opened)
            if opened.rows:
                self._last_keys[space.id] = bytes(self._lookups.keys_at(store, space.segments, [opened.rows - 1])[0])
            return opened, opened.status

    def _still_prefix(self, store: Store, space: Space, opened: faiss_index.OpenedIndex) -> bool:
        """Rows 0..opened.rows-1 of ``space`` are still the indexed ones: a space only grows (appends, and
        compactions that keep order), and the key of the last indexed row is where it was."""
        if not 0 < opened.rows <= space.rows or space.id not in self._last_keys:
            return False
        return bytes(self._lookups.keys_at(store, space.segments, [opened.rows - 1])[0]) == self._last_keys[space.id]

    def tail(self, store: Store, space: Space, start: int) -> np.ndarray:
        """Unit vectors of storage rows ``start:`` of ``space`` (rows newer than the held index)."""
        from featurestore.query import index as faiss_index

        held = self._tails.get((space.id, start))
        if held is None or len(held) > space.rows - start:
            held = np.zeros((0, space.dim), np.float32)
        if len(held) < space.rows - start:  # extended by the rows published since (a space only grows)
            held = np.concatenate([held, faiss_index.normalize(store.read_range(space, start + len(held), space.rows))])
            self._tails = {(space.id, start): held}
        return held


class Models:
    """Embedders, loaded once per process (a server's new texts), under ``SearchCache.lock``."""

    def __init__(self, lock: threading.RLock) -> None:
        self._lock = lock
        self._loaded: dict[str, Any] = {}  # model -> its embedder

    def get(self, model: str, store: Store) -> Any:
        """``model``'s embedder (a ``tuned:NAME`` one from ``store``, where it lives)."""
        with self._lock:
            if model not in self._loaded:
                self._loaded[model] = load_embedder(model, store=store.path)
            return self._loaded[model]


class SearchCache:
    """The opened indexes and per-segment lookups of the latest snapshot, reused while files are unchanged:
    what queries call. Its state is in parts, each owning its fields: ``lookups`` (per segment, and the
    ``packed`` setting), ``indexes``, ``id_tables``, ``restrictions`` and ``models``.

    Safe to share between threads (``fs serve`` answers requests in parallel): each lookup, id table and
    restriction is built from immutable segments by one thread while others needing it wait (``_Builds``);
    opening or building an index, and loading a model, happen under ``lock``.
    """

    def __init__(self, packed: bool = False) -> None:
        self.lock = threading.RLock()  # opening or building an index, loading a model
        self.batcher: SearchBatcher | None = None  # concurrent searches answered together (a server)
        self.lookups = SegmentLookups(packed)
        self.indexes = HeldIndexes(self.lookups, self.lock)
        self.id_tables = IdTables(self.lookups)
        self.restrictions = Restrictions(self.lookups)
        self.models = Models(self.lock)

    @property
    def packed(self) -> bool:
        """Ids, labels and texts held in memory (a server), instead of read per query."""
        return self.lookups.packed

    def hold(self) -> None:
        """Hold ids, labels and texts in memory, and answer concurrent searches together (a server)."""
        self.lookups.packed = True
        self.batcher = self.batcher or SearchBatcher()

    def retain(self, store: Store, snap: Snapshot) -> None:
        """Forget what was built from segments the snapshot no longer names (``SegmentLookups.retain``)."""
        self.lookups.retain(store, snap)

    def embedder(self, model: str, store: Store) -> Any:
        return self.models.get(model, store)

    def index(self, store: Store, space: Space, progress: ProgressFn | None) -> tuple[faiss_index.OpenedIndex, str]:
        """The space's index and how it was opened (``HeldIndexes.open``)."""
        return self.indexes.open(store, space, progress)

    def tail(self, store: Store, space: Space, start: int) -> np.ndarray:
        """Unit vectors of storage rows ``start:`` of ``space`` (rows newer than the held index)."""
        return self.indexes.tail(store, space, start)

    def find_keys(
        self, store: Store, segs: Sequence[Segment], wanted: np.ndarray, name: str | None = None
    ) -> list[np.ndarray]:
        """Global positions in ``segs`` of each wanted key, ascending: through the key table ``name`` (saved
        beside the index) in a short-lived process, through key columns held in memory in a server."""
        if name is None or self.packed:
            return self.lookups.find_keys(store, segs, wanted)
        return self.id_tables.find_keys(store, segs, name, wanted)

    def keys_at(self, store: Store, segs: Sequence[Segment], positions: Sequence[int]) -> np.ndarray:
        """Keys at global positions of ``segs``."""
        return self.lookups.keys_at(store, segs, positions)

    def read_at(self, store: Store, segs: Sequence[Segment], column: str, positions: np.ndarray) -> np.ndarray:
        """Values of ``column`` at global positions of ``segs`` (``SegmentLookups.read_at``)."""
        return self.lookups.read_at(store, segs, column, positions)

    def label_updates(self, store: Store, ds: Dataset) -> dict[str, str]:
        """id -> latest label of the dataset's label updates."""
        return self.lookups.label_updates(store, ds)

    def latest_labels(self, store: Store, ds: Dataset, ids: Sequence[str]) -> dict[str, str]:
        """id -> latest label of the dataset's label updates, for ``ids`` (a server holds them all)."""
        if self.packed:
            return self.lookups.label_updates(store, ds)
        return self.id_tables.latest_labels(store, ds, ids)

    def ids_table(self, store: Store, segs: Sequence[Segment], name: str) -> IdTable:
        return self.id_tables.table(store, segs, name)

    def find_ids(self, store: Store, segs: Sequence[Segment], name: str, ids: Sequence[str]) -> np.ndarray:
        """Global position in ``segs`` of each id (the first, confirmed by reading it), or -1;
        ``name`` names the segments' id table."""
        return self.id_tables.find(store, segs, name, ids)

    def save_tables(self) -> None:
        """Save the id tables queries built: call once a query succeeded (a failed one leaves the store as it was)."""
        self.id_tables.save()

    def restriction(self, store: Store, space: Space, ds: Dataset) -> np.ndarray:
        """Sorted storage rows of ``space`` holding the texts of dataset ``ds``, extended as both grow."""
        return self.restrictions.rows(store, space, ds)

    def warm(self, store: Store, snap: Snapshot, space: Space) -> None:
        """Open the space's index and build every lookup a query over ``snap`` reads, ahead of the first query."""
        lookups = self.lookups
        self.retain(store, snap)
        get_recipe(space.recipe).clean(["warm"])  # tweet-v1 loads spaCy's tables: seconds, once
        self.index(store, space, None)
        for seg in space.segments:
            lookups.segment_keys(store, seg)
        if self.packed and len(space.segments) > 1:
            lookups.merge_keys(store, space.segments)
        for d in snap.datasets.values():
            segs = d.keys.get(space.recipe, ())
            self.ids_table(store, segs, f"{d.name}-keys-{space.recipe}")
            self.ids_table(store, d.rows, f"{d.name}-rows")
            for seg in segs:
                lookups.segment_keys(store, seg)
                if self.packed:
                    lookups.column(store, seg, "ids")
            if self.packed and len(segs) > 1:
                lookups.merge_keys(store, segs)
            for seg in d.rows if self.packed else ():
                for column in ("ids", "texts", "labels"):
                    lookups.column(store, seg, column)
            self.label_updates(store, d)
            self.restriction(store, space, d)  # queries with dataset=
        self.save_tables()


# ----------------------------------------------------------------------------- queries


def space_table(space: Space) -> str:
    """The name of a space's key table (``index/keys-spacekeys-<space id>.npy``)."""
    return f"spacekeys-{space.id}"


def dataset_table(ds: Dataset, recipe: str) -> str:
    """The name of a dataset's key table under ``recipe`` (``index/keys-<dataset>-<recipe>.npy``)."""
    return f"{ds.name}-{recipe}"


def _key_row(cache: SearchCache, store: Store, space: Space, key: bytes) -> int:
    pos = cache.find_keys(store, space.segments, np.array([key], dtype=KEY_DTYPE), space_table(space))[0]
    return int(pos[0]) if len(pos) else -1


def id_vector(
    cache: SearchCache, store: Store, space: Space, datasets: list[Dataset], id: str, where: str = "any dataset"
) -> np.ndarray:
    """The stored vector (1 x dim) of row ``id`` of one of ``datasets`` (``where`` names them in errors)."""
    owners = []
    for d in datasets:
        segs = d.keys.get(space.recipe, ())
        pos = int(cache.find_ids(store, segs, f"{d.name}-keys-{space.recipe}", [id])[0])
        if pos >= 0:
            owners.append((d, bytes(cache.keys_at(store, segs, [pos])[0])))
    if not owners:
        raise UnknownIdError(
            f"id {id!r} is not in {where} with vectors for model {space.model!r}; check the id or [[dataset]]"
        )
    if len(owners) > 1:
        raise DatasetError(
            f"id {id!r} is in datasets {', '.join(d.name for d, _ in owners)}; fix: pick one with [[dataset]]"
        )
    row = _key_row(cache, store, space, owners[0][1])
    return store.read_vectors(space, np.array([row]))


def _with_tail(
    queries: np.ndarray,
    k: int,
    allowed: np.ndarray | list[np.ndarray | None] | None,
    scores: np.ndarray,
    rows: np.ndarray,
    start: int,
    tail: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """The index's top-k merged with exact cosine scores of the rows from ``start`` on; ``allowed`` restricts
    every query, or (a list) each query its own, as in ``index.search``."""
    from featurestore.query import index as faiss_index

    q = faiss_index.normalize(np.atleast_2d(queries))
    scores = np.where(rows >= 0, scores, -np.inf)  # FAISS pads missing results with row -1
    if not len(tail):
        return scores, np.where(np.isneginf(scores), -1, rows)
    if allowed is None or (isinstance(allowed, list) and all(a is None for a in allowed)):
        s, local = faiss_index.knn(q, tail, min(k, len(tail)))  # FAISS's scan: faster than numpy's for a few queries
        scores, rows = faiss_index.top_k(
            [
                (
                    np.concatenate([scores, s], axis=1),
                    np.concatenate([rows, np.where(local >= 0, local + start, -1)], axis=1),
                )
            ],
            len(q),
            k,
        )
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
    keyed = key_texts(recipe, [text])
    if keyed.empty[0]:  # a zero vector scores 0 against everything: no meaningful neighbours
        raise UsageError(
            f"query {text[:80]!r} is empty after cleaning with {recipe.name}; give words to search for", "text"
        )
    row = _key_row(cache, store, space, keyed.keys[0])
    if row >= 0:
        return store.read_vectors(space, np.array([row])), "stored vector (model not loaded)"
    embedder = cache.embedder(space.model, store)
    require_same_space(embedder, space, recipe)
    return embedder.embed(keyed.cleaned), "embedded"


def _name_hits(
    cache: SearchCache,
    store: Store,
    snap: Snapshot,
    space: Space,
    datasets: list[Dataset],
    found: list[tuple[float, int]],
) -> list[Hit]:
    """(dataset, id) of every row holding each hit's text, and the first one's raw text and current label."""
    hit_keys = cache.keys_at(store, space.segments, [r for _, r in found])
    owners: list[list[tuple[str, str]]] = [[] for _ in found]
    for d in datasets:
        segs = d.keys.get(space.recipe, ())
        if not segs or not len(hit_keys):
            continue
        where = cache.find_keys(store, segs, hit_keys, dataset_table(d, space.recipe))
        flat = np.concatenate(where)
        ids: Any = cache.read_at(store, segs, "ids", flat) if len(flat) else []
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
        updates = cache.latest_labels(store, d, np.asarray(ids, dtype=object)[ok].tolist())
        for i, text, label in zip(np.asarray(ids, dtype=object)[ok].tolist(), texts, labels):
            named[(name, i)] = (text, updates.get(i, label))
    hits: list[Hit] = []
    for (score, _), o in zip(found, owners):
        if o:  # a vector no row owns is a cache entry (a StoreEmbedder write-back), never an answer
            text, label = named.get(o[0], ("", NO_LABEL))
            hits.append(Hit(len(hits) + 1, score, o, text, label))
    return hits


def _batch_key(opened: Any, allowed: np.ndarray | None, *settings: Any) -> tuple[Any, ...]:
    """Searches that can share a scan: the same opened index, the same restriction object, the same settings."""
    return (id(opened), None if allowed is None else id(allowed), *settings)


@dataclass(frozen=True)
class SimilarResult:
    """One query's hits, and how they were found: what ``fs similar`` and the server's ``/similar`` report."""

    hits: list[Hit]
    query: str  # how the query became a vector: "stored vector", "stored vector (model not loaded)" or "embedded"
    space: str  # the id of the space searched
    model: str
    recipe: str
    dtype: str
    index: str  # how the index was opened: "loaded", "built", "in memory", "extended by ...", "rebuilt ..."
    index_kind: str  # its FAISS factory string, or "exact (brute force)"
    index_mmap: bool  # opened memory-mapped: a cold process did not read the whole file
    index_seconds: float  # opening the index (for a batch: once, for all its queries)
    search_seconds: float  # the search (for a batch: the one search of all its queries)
    note: str | None = None  # how the space was chosen, when that needed saying (``spaces.choose_space``)


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
) -> SimilarResult:
    """Top-``k`` stored tweets by cosine similarity to a text or a stored row, through the space's index
    (exact brute force when ``exact``; ``nprobe``/``ef`` tune an approximate index)."""
    return similar_batch(
        store,
        cache,
        snap,
        space,
        texts=None if text is None else [text],
        id=id,
        k=k,
        dataset=dataset,
        progress=progress,
        exact=exact,
        nprobe=nprobe,
        ef=ef,
    )[0]


def _check_query(texts: Sequence[str] | None, id: str | None, k: int, nprobe: int | None, ef: int | None) -> None:
    if (texts is None) == (id is None):
        raise UsageError("give either a query text or an {param}, not both (and not neither)", "id")
    if k < 1:
        raise UsageError(f"{{param}} must be at least 1, got {k}", "k")
    for name, value in (("nprobe", nprobe), ("ef", ef)):
        if value is not None and value < 1:
            raise UsageError(f"{{param}} must be at least 1, got {value}", name)


def _owned_hits(
    cache: SearchCache,
    store: Store,
    snap: Snapshot,
    space: Space,
    datasets: list[Dataset],
    k: int,
    scores: np.ndarray,
    rows: np.ndarray,
    again: Callable[[int], tuple[np.ndarray, np.ndarray]],
) -> list[Hit]:
    """One query's top ``k`` hits that some dataset row owns. Cache entries (vectors no row owns) that took
    places among the ``k`` are skipped, and ``again(kk)`` searches further, doubling ``kk``, until ``k`` owned
    rows are found or the space has no more rows."""
    kk = k
    while True:
        found = [(float(s), int(r)) for s, r in zip(scores, rows) if r >= 0]
        hits = _name_hits(cache, store, snap, space, datasets, found)
        if len(hits) >= k or len(found) < kk or kk >= space.rows:
            return hits[:k]
        kk = min(2 * kk, space.rows)
        more_scores, more_rows = again(kk)
        scores, rows = more_scores[0], more_rows[0]


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
) -> list[SimilarResult]:
    """Like ``similar`` for many query texts at once (one FAISS search): one result a query, in order, each
    saying how its query was resolved; the index and the timings are the shared search's."""
    _check_query(texts, id, k, nprobe, ef)
    datasets = [store.dataset(dataset, snap)] if dataset else list(snap.datasets.values())
    cache.retain(store, snap)
    where = f"dataset {dataset!r}" if dataset else "any dataset"
    allowed = cache.restriction(store, space, datasets[0]) if dataset else None
    if id is not None:
        queries, how = id_vector(cache, store, space, datasets, id, where), ["stored vector"]
    else:
        resolved = [_text_vector(cache, store, space, t) for t in texts or []]
        if not resolved:
            return []
        queries, how = np.concatenate([v for v, _ in resolved]), [h for _, h in resolved]
    t = time.perf_counter()
    opened, index_status = cache.index(store, space, progress)
    index_seconds = time.perf_counter() - t
    from featurestore.query import index as faiss_index  # loaded by cache.index above; not at the top (see there)

    faiss_index.check_knobs(opened.kind, exact, nprobe, ef)  # before a server's batcher shares the search
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
    search_seconds = time.perf_counter() - t
    out = [
        _owned_hits(cache, store, snap, space, datasets, k, qs, qr, partial(run, queries[i : i + 1]))
        for i, (qs, qr) in enumerate(zip(scores, rows))
    ]
    cache.save_tables()
    return [
        SimilarResult(
            hits,
            query=how[q],
            space=space.id,
            model=space.model,
            recipe=space.recipe,
            dtype=space.dtype,
            index=index_status,
            index_kind="exact (brute force)" if exact else opened.factory,
            index_mmap=opened.mmap,
            index_seconds=index_seconds,
            search_seconds=search_seconds,
        )
        for q, hits in enumerate(out)
    ]
