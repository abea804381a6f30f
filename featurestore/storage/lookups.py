"""Lookups over a list of immutable segments: values at positions, text keys, and ids.

This module owns, for ``search.SearchCache`` (which caches what it builds):

- ``read_at``: the values of a column (ids, labels, texts) at global positions of a list of segments, reading
  only those rows; ``PackedColumn``: a segment's column held in memory as one UTF-8 blob (a server);
- key lookups: ``SegmentKeys``, a segment's 32-byte text keys with their 8-byte prefixes (``key_prefixes``),
  sorted for binary search where many lookups follow; ``find_keys`` and ``rows_of_keys`` over several;
- id tables: ``IdTable``, the sorted 64-bit hashes (``id_hashes``) of the ids of a list of segments with their
  global positions, so that an id is found without reading every id (variable-length strings are the slow
  read); ``id_table`` builds, loads and extends one, ``save_tables`` writes it beside the index.

Id tables on disk (a derived file: deleting one costs a rebuild, never data)
-----------------------------------------------------------------------------
Each table ``NAME`` (``<dataset>-rows``: a dataset's row segments; ``<dataset>-keys-<recipe>``: its key
segments) is two files in the store's ``index/`` folder, each written by temp file, fsync and rename:

- ``ids-NAME.npy``: a NumPy ``.npy`` array of shape (rows, 2), dtype uint64. Column 0 holds the hash of each
  id, ascending; column 1 the global position of that id (int64 bits) in the covered segments taken in
  order; equal hashes keep storage order.
- ``ids-NAME.json``: ``{"format": 2, "hash": "fnv1a64-splitmix64", "segments": [[file, rows], ...]}``, the
  segments the array covers, in order.

A saved table is used for the longest list of segments it covers (its ``segments`` a prefix of those asked
for, the array's rows their sum) only when ``format`` is ``ID_TABLE_FORMAT`` and ``hash`` is ``ID_HASH``.
Anything else is rebuilt from the segments' ids and saved again. Format 1, the first (no ``hash`` field), held
pandas' ``hash_array`` values (SipHash-2-4 under a key private to pandas), which a pandas release could change
without notice; a table of another format or hash is never trusted.

The id hash (``ID_HASH`` = "fnv1a64-splitmix64")
--------------------------------------------------
FNV-1a 64 (offset basis 0xcbf29ce484222325, prime 0x100000001b3) over the id's UTF-8 bytes
(``str.encode("utf-8", "surrogatepass")``, as ``keys.py`` encodes texts), then splitmix64's finaliser
(``x ^= x >> 30; x *= 0xbf58476d1ce4e5b9; x ^= x >> 27; x *= 0x94d049bb133111eb; x ^= x >> 31``), all modulo
2**64. FNV-1a is a published, byte-by-byte function that NumPy computes a byte column at a time over many ids;
the finaliser spreads every input bit over the whole word (FNV's low bits depend only on the input's low
bits). Changing anything here changes every saved table: give it a new ``ID_HASH`` and ``ID_TABLE_FORMAT``.

Key tables on disk (same shape, for cold processes)
---------------------------------------------------
``keys-NAME.npy`` + ``.json`` (``spacekeys-<space id>``: a space's segments; ``<dataset>-<recipe>``: a dataset's
key segments) are the same layout with column 0 the 8-byte prefix of each 32-byte text key (``key_prefixes``)
and ``{"format": KEY_TABLE_FORMAT, "hash": KEY_HASH}``: a key's rows are found by binary search in the mapped
table and confirmed by reading the key at those rows only (``read_keys``), so a cold query reads O(k log n)
bytes of them, not the key columns. A key table's ``.json`` also holds ``digest`` (the ``.npy`` file's size and the
sha256 of its first and last 64 KiB): a key table without it, or whose file does not match it, is rebuilt.

Summaries (``usage-*.json``, ``labels-*.json``)
----------------------------------------------
Counts that need a scan of every row (a space's coverage by each dataset and its cache entries, a dataset's
labelled rows and classes) are recorded with the exact segment lists they were computed from
(``saved_summary``/``save_summary``, format ``SUMMARY_FORMAT``), and recomputed by a scan when any list differs.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from featurestore.storage.atomic import atomic_write_bytes
from featurestore.storage.keys import KEY_DTYPE
from featurestore.storage.manifest import Segment
from featurestore.storage.store import Store, as_text_column

log = logging.getLogger(__name__)

ID_TABLE_FORMAT = 2  # 1: pandas' hash_array (no "hash" field); 2: ID_HASH
ID_HASH = "fnv1a64-splitmix64"
KEY_TABLE_FORMAT = 1
KEY_HASH = "key-prefix-8"  # the first 8 bytes of a 32-byte key as a native uint64 (key_prefixes)
SUMMARY_FORMAT = 1
DIGEST_BYTES = 1 << 16  # a saved table's file is checked by its size and the sha256 of its first and last 64 KiB
MAX_ID_PARTS = 32  # appended segments' id hashes kept as separate sorted parts before one merge (and save)
SAVE_ID_ROWS = 20_000  # a call that hashed at least this many ids saves the merged table for later processes
SAVE_TAIL = 16  # a short-lived process merges and saves a table whose new tail is at least 1/16 of it

NO_POSITIONS = np.zeros(0, dtype=np.int64)


# ----------------------------------------------------------------------------- values at positions


def segment_bounds(segs: Sequence[Segment]) -> np.ndarray:
    """Global position of each segment's first row, and the total rows last."""
    return np.cumsum([0] + [s.rows for s in segs])


def read_at(store: Store, segs: Sequence[Segment], column: str, positions: np.ndarray) -> np.ndarray:
    """Values of ``column`` at global ``positions`` of the concatenated segments (any order, repeats allowed)."""
    positions = np.asarray(positions, dtype=np.int64)
    out = np.empty(len(positions), dtype=object)
    if not len(positions):
        return out
    bounds = segment_bounds(segs)
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
                    values[j] = dset[p : p + 1][0]
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
    def read(cls, store: Store, seg: Segment, column: str) -> PackedColumn:
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
        return [self.blob[o[p] : o[p + 1]].decode("utf-8", "surrogatepass") for p in positions]


# ----------------------------------------------------------------------------- text keys


def key_prefixes(keys: np.ndarray) -> np.ndarray:
    """The first 8 bytes of each key as an integer: a sorted pre-filter, confirmed on the full key."""
    k = np.ascontiguousarray(np.asarray(keys, dtype=KEY_DTYPE))
    return k.view(np.uint64).reshape(len(k), -1)[:, 0] if len(k) else np.zeros(0, np.uint64)


class SegmentKeys:
    """One segment's key column and its 8-byte prefixes. Sorted on first need of many lookups (binary
    search: a server, a restriction); a few lookups in a short-lived process scan them unsorted."""

    def __init__(self, keys: np.ndarray, sort: bool = False) -> None:
        self.keys = keys  # KEY_DTYPE, in storage order
        self.prefixes = key_prefixes(keys)
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
            match = [c for c in order[lo[j] : hi[j]].tolist() if self.keys[c] == keys[j]]
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
            cand = np.sort(order[a:b]) if b > a else NO_POSITIONS
            out.append(cand[self.keys[cand] == w] if len(cand) else NO_POSITIONS)
        return out


def find_keys(parts: Sequence[tuple[SegmentKeys, int]], wanted: np.ndarray) -> list[np.ndarray]:
    """Global positions of each wanted key in ``parts`` ((lookup, global position of its first row)), ascending."""
    wanted = np.asarray(wanted, dtype=KEY_DTYPE)
    prefixes = key_prefixes(wanted)
    found: list[list[np.ndarray]] = [[] for _ in wanted]
    for keys, offset in parts:
        for n, local in enumerate(keys.find(wanted, prefixes)):
            if len(local):
                found[n].append(local + offset)
    return [np.concatenate(f) if f else NO_POSITIONS for f in found]


def rows_of_keys(parts: Sequence[SegmentKeys], keys: np.ndarray) -> np.ndarray:
    """Global row of each key in the concatenated ``parts`` (a space's segments, where a key is stored once),
    -1 where absent; for many keys at once: per part, the smaller side is looked up in the other's sorted
    prefixes."""
    keys = np.asarray(keys, dtype=KEY_DTYPE)
    out = np.full(len(keys), -1, dtype=np.int64)
    wanted = key_prefixes(keys)
    by_prefix = np.argsort(wanted, kind="stable")
    sorted_wanted = wanted[by_prefix]
    offset = 0
    for sk in parts:
        rows = len(sk.keys)
        if len(keys) <= rows:  # fewer keys than rows: look each key up among the segment's
            local = sk.rows_of(keys, wanted)
            found = local >= 0
            out[found] = local[found] + offset
            offset += rows
            continue
        prefixes, order = sk.sorted()
        lo = np.searchsorted(sorted_wanted, prefixes, side="left")
        hi = np.searchsorted(sorted_wanted, prefixes, side="right")
        one = hi - lo == 1  # the usual case: one wanted key with this row's prefix
        w, local = by_prefix[lo[one]], order[one]
        ok = keys[w] == sk.keys[local]
        out[w[ok]] = local[ok] + offset
        for j in np.flatnonzero(hi - lo > 1).tolist():  # 8-byte prefixes shared by several wanted keys
            for i in by_prefix[lo[j] : hi[j]].tolist():
                if keys[i] == sk.keys[order[j]]:
                    out[i] = order[j] + offset
        offset += rows
    return out


def read_keys(store: Store, segs: Sequence[Segment], positions: np.ndarray) -> np.ndarray:
    """Keys at global ``positions`` of ``segs`` (any order, repeats allowed), reading only those rows: a key
    column is fixed-width and stored contiguously, so a row is one small read."""
    positions = np.asarray(positions, dtype=np.int64)
    out = np.zeros(len(positions), dtype=KEY_DTYPE)
    if not len(positions):
        return out
    bounds = segment_bounds(segs)
    which = np.searchsorted(bounds, positions, side="right") - 1
    for si in np.unique(which).tolist():
        sel = np.flatnonzero(which == si)
        uniq, inverse = np.unique(positions[sel] - bounds[si], return_inverse=True)
        with store.open_segment(segs[si].file) as f:
            dset = f["keys"]
            lo, hi = int(uniq[0]), int(uniq[-1]) + 1
            if len(uniq) <= 16:  # a few rows: one slice each
                values = np.array([dset[p : p + 1][0] for p in uniq.tolist()], dtype=KEY_DTYPE)
            elif hi - lo <= 64 * len(uniq):  # dense: one contiguous span beats a point selection
                values = np.asarray(dset[lo:hi], dtype=KEY_DTYPE)[uniq - lo]
            else:
                values = np.asarray(dset[uniq], dtype=KEY_DTYPE)
        out[sel] = values[inverse]
    return out


# ----------------------------------------------------------------------------- the id hash (ID_HASH)

_M64 = 0xFFFFFFFFFFFFFFFF
_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3
_MIX1, _MIX2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB  # splitmix64's finaliser
FEW_IDS = 32  # up to this many ids are hashed one by one in Python: ~2 us an id, a NumPy pass 55-90 us
_BLOCK = 1 << 16  # ids hashed per NumPy pass: their running hashes (512 KiB) stay in the CPU's cache
_CELLS = 1 << 22  # characters a pass holds at most (16 MiB as code points), however long the ids


def id_hashes(ids: Sequence[str] | np.ndarray) -> np.ndarray:
    """The ``ID_HASH`` of each id (str), as uint64: FNV-1a 64 of its UTF-8 bytes, then splitmix64's finaliser."""
    if len(ids) <= FEW_IDS:
        return np.array([_one_hash(i.encode("utf-8", "surrogatepass")) for i in ids], dtype=np.uint64)
    values = ids if isinstance(ids, np.ndarray) and ids.dtype == object and ids.ndim == 1 else _objects(list(ids))
    return _finalise(_fnv_texts(values, _lengths(values)))


def column_hashes(values: np.ndarray) -> np.ndarray:
    """``id_hashes`` of an ids column as a segment stores it: UTF-8 bytes (hashed as they are: no decoding, no
    Python object per id), str, or schema-1 integers."""
    if values.dtype.kind == "O" and len(values) and isinstance(values[0], bytes):
        if len(values) <= FEW_IDS:
            return np.array([_one_hash(v) for v in values.tolist()], dtype=np.uint64)
        return _finalise(_fnv_bytes(values, _lengths(values)))
    return id_hashes(as_text_column(values, "ids"))


def _one_hash(data: bytes) -> int:
    """``ID_HASH`` of one id's bytes, in plain Python."""
    h = _FNV_OFFSET
    for byte in data:
        h = ((h ^ byte) * _FNV_PRIME) & _M64
    h ^= h >> 30
    h = (h * _MIX1) & _M64
    h ^= h >> 27
    h = (h * _MIX2) & _M64
    return h ^ (h >> 31)


def _finalise(h: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, in place."""
    h ^= h >> np.uint64(30)
    h *= np.uint64(_MIX1)
    h ^= h >> np.uint64(27)
    h *= np.uint64(_MIX2)
    h ^= h >> np.uint64(31)
    return h


def _objects(items: list[Any]) -> np.ndarray:
    """A 1-d object array of ``items`` (``np.array`` would make a 2-d array of equal-length bytes or lists)."""
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out


def _lengths(values: np.ndarray | list[Any]) -> np.ndarray:
    lengths = np.fromiter(map(len, values), dtype=np.int64, count=len(values))
    # 16-bit lengths sort by radix: 1M ids in a few milliseconds, not tens
    return lengths.astype(np.int16) if len(lengths) and lengths.max() < 1 << 15 else lengths


def _blocks(lengths: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The rows in passes of similar lengths: (rows, ascending by length; their lengths). Each pass pads its
    rows to its longest, so a long id shares its pass with few others."""
    order = np.argsort(lengths, kind="stable")
    ordered = lengths[order]
    start = 0
    while start < len(order):
        end = min(start + _BLOCK, len(order))
        end = min(end, start + max(1, _CELLS // max(1, int(ordered[end - 1]))))
        yield order[start:end], ordered[start:end]
        start = end


def _fnv_padded(h: np.ndarray, units: np.ndarray, lengths: np.ndarray) -> None:
    """FNV-1a 64 steps of each row's running hash ``h`` over its first ``lengths`` units (bytes, or code points
    below 128, which are their UTF-8 bytes), in place; rows ascending by length: the rows still going at
    column j are the last ones."""
    prime = np.uint64(_FNV_PRIME)
    firsts = np.searchsorted(lengths, np.arange(units.shape[1]), side="right").tolist()
    for j, first in enumerate(firsts):
        going = h[first:]
        np.bitwise_xor(going, units[first:, j], out=going)
        np.multiply(going, prime, out=going)


def _fnv_bytes(values: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """FNV-1a 64 (not finalised) of each bytes object of ``values``, a byte column at a time."""
    out = np.empty(len(values), dtype=np.uint64)
    for rows, lens in _blocks(lengths):
        h = np.full(len(rows), _FNV_OFFSET, dtype=np.uint64)
        width = int(lens[-1])
        if width:  # an 'S' array holds every byte (trailing NULs too): the lengths say where each id ends
            _fnv_padded(h, values[rows].astype(f"S{width}").view(np.uint8).reshape(len(rows), width), lens)
        out[rows] = h
    return out


def _fnv_texts(values: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """FNV-1a 64 (not finalised) of the UTF-8 bytes of each str of ``values``. ASCII ids (most) are hashed from
    their code points (a 'U' array: no Python object made per id), the others from ``str.encode``."""
    out = np.empty(len(values), dtype=np.uint64)
    wide: list[np.ndarray] = []
    for rows, lens in _blocks(lengths):
        h = np.full(len(rows), _FNV_OFFSET, dtype=np.uint64)
        width = int(lens[-1])
        if width:
            units = values[rows].astype(f"U{width}").view(np.uint32).reshape(len(rows), width)
            if units.max() >= 128:
                other = (units >= 128).any(axis=1)
                wide.append(rows[other])
                rows, h, units, lens = rows[~other], h[~other], units[~other], lens[~other]
            _fnv_padded(h, units, lens)
        out[rows] = h
    if wide:
        rows = np.concatenate(wide)
        encoded = [v.encode("utf-8", "surrogatepass") for v in values[rows].tolist()]
        out[rows] = _fnv_bytes(_objects(encoded), _lengths(encoded))
    return out


# ----------------------------------------------------------------------------- id and key tables


def _key_hashes(values: np.ndarray) -> np.ndarray:
    return key_prefixes(values)  # looked up at call time: tests coarsen the prefixes


@dataclass(frozen=True)
class TableKind:
    """What a table hashes: its files' prefix, format, hash name, the column it hashes and how."""

    prefix: str  # index/<prefix>-NAME.npy
    format: int
    hash: str
    column: str
    hashes: Callable[[np.ndarray], np.ndarray]  # of the column as a segment stores it
    digest_required: bool  # saved with a ``digest``, and rebuilt without a matching one (id tables of format 2 are not)
    cheap: bool  # fixed-width values, quick to hash: not saved for ``SAVE_ID_ROWS`` alone (``id_table``)


IDS = TableKind("ids", ID_TABLE_FORMAT, ID_HASH, "ids", column_hashes, False, False)
KEYS = TableKind("keys", KEY_TABLE_FORMAT, KEY_HASH, "keys", _key_hashes, True, True)


@dataclass(frozen=True)
class IdTable:
    """Sorted 64-bit hashes of the ids (or key prefixes) of a list of segments with their global positions, in
    sorted parts: the saved table of the first segments, then one part per segment appended since."""

    segments: tuple[Segment, ...]
    parts: tuple[tuple[np.ndarray, np.ndarray], ...]  # (uint64 hashes sorted, int64 positions)

    def candidates(self, ids: Sequence[str]) -> list[np.ndarray]:
        """Global positions whose id hash matches, per id (to be confirmed by reading the id)."""
        return self.candidates_of(id_hashes(ids))

    def candidates_of(self, h: np.ndarray) -> list[np.ndarray]:
        """Global positions whose hash is each of ``h``, ascending (to be confirmed by reading the value)."""
        found: list[list[np.ndarray]] = [[] for _ in h]
        for hashes, positions in self.parts:
            lo = np.searchsorted(hashes, h, side="left")
            hi = np.searchsorted(hashes, h, side="right")
            for n in np.flatnonzero(hi > lo).tolist():
                found[n].append(np.asarray(positions[lo[n] : hi[n]], dtype=np.int64))
        return [np.sort(np.concatenate(f)) if f else NO_POSITIONS for f in found]

    def merged(self) -> IdTable:
        if len(self.parts) == 1:
            return self
        hashes = np.concatenate([h for h, _ in self.parts])
        positions = np.concatenate([np.asarray(p, dtype=np.int64) for _, p in self.parts])
        order = np.argsort(hashes, kind="stable")  # sorted runs: a merge, not a full sort
        return IdTable(self.segments, ((hashes[order], positions[order]),))


@dataclass(frozen=True)
class PendingTable:
    """An id or key table built by a query, to be saved (``save_tables``) once the query succeeded."""

    data_path: Path
    meta_path: Path
    array: np.ndarray  # (rows, 2) uint64: hashes, positions
    segments: list[list[Any]]  # [[file, rows], ...]
    kind: TableKind = IDS


def table_paths(store: Store, name: str, kind: TableKind = IDS) -> tuple[Path, Path]:
    """The files of table ``name``: (``ids-NAME.npy``, ``ids-NAME.json``) in the index folder (``keys-`` for
    key tables)."""
    return store.index_dir / f"{kind.prefix}-{name}.npy", store.index_dir / f"{kind.prefix}-{name}.json"


def _digest(head: bytes, tail: bytes, size: int) -> list[Any]:
    return [size, hashlib.sha256(head + tail).hexdigest()]


def _file_digest(path: Path) -> list[Any]:
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(DIGEST_BYTES)
        f.seek(max(0, size - DIGEST_BYTES))
        return _digest(head, f.read(DIGEST_BYTES), size)


def _saved_table(store: Store, segs: tuple[Segment, ...], name: str, kind: TableKind = IDS) -> IdTable:
    """The saved (memory-mapped) table of the longest prefix of ``segs`` it covers, else an empty one."""
    data_path, meta_path = table_paths(store, name, kind)
    want = [[s.file, s.rows] for s in segs]
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError, AttributeError):  # unreadable: rebuilt
        meta = json.loads(meta_path.read_bytes())
        if (meta.get("format"), meta.get("hash")) != (kind.format, kind.hash):
            log.info("table %s is format %s, not %s (%s): rebuilt", name, meta.get("format"), kind.format, kind.hash)
            return IdTable((), ())
        have = meta["segments"]
        if have and want[: len(have)] == have:
            digest = meta.get("digest")
            if (digest is not None or kind.digest_required) and digest != _file_digest(data_path):
                log.info("table %s does not match its recorded digest: rebuilt", name)
                return IdTable((), ())
            loaded = np.load(data_path, mmap_mode="r")
            if loaded.dtype == np.uint64 and loaded.shape == (sum(r for _, r in have), 2):
                return IdTable(segs[: len(have)], ((loaded[:, 0], loaded[:, 1].view(np.int64)),))
    return IdTable((), ())


def id_table(
    store: Store,
    segs: Sequence[Segment],
    name: str,
    pending: list[PendingTable] | None = None,
    held: IdTable | None = None,
    save_any: bool = True,
    kind: TableKind = IDS,
) -> IdTable:
    """The id table (or key table: ``kind``) of ``segs``: ``held`` (this process's) or the saved one, extended by
    the segments appended since (a compaction's new names, or a saved table of another format, mean a full
    rebuild, once). A table that needed many ids hashed, or many parts, is merged and queued in ``pending`` to be
    saved beside the index (by ``save_tables``, once the query succeeded: a failed command leaves the store as it
    was). A table built whole is saved; one extended by a tail is saved when the tail is at least
    1/``SAVE_TAIL`` of it (``save_any``: a short-lived process) or, for ids, at least ``SAVE_ID_ROWS`` rows:
    merging and rewriting a 10M-row table (160 MB) costs seconds, more than hashing a short tail again in
    each process, so the first query after a small ingest stays O(tail), not O(n)."""
    segs = tuple(segs)
    if held is not None and held.segments == segs:
        return held
    base = (
        held
        if held is not None and segs[: len(held.segments)] == held.segments
        else _saved_table(store, segs, name, kind)
    )
    parts = list(base.parts)
    offset = sum(s.rows for s in base.segments)
    hashed = 0
    for seg in segs[len(base.segments) :]:
        with store.open_segment(seg.file) as f:
            h = kind.hashes(f[kind.column][()])
        order = np.argsort(h, kind="stable")
        parts.append((h[order], order.astype(np.int64) + offset))
        offset += len(h)
        hashed += len(h)
    table = IdTable(segs, tuple(parts))
    enough = hashed >= SAVE_ID_ROWS and not kind.cheap or save_any and hashed * SAVE_TAIL >= offset
    if hashed and (len(parts) == 1 or enough) or len(parts) > MAX_ID_PARTS:
        table = table.merged()
        if pending is not None and table.parts:
            ((hashes, positions),) = table.parts
            array = np.stack([hashes, positions.view(np.uint64)], axis=1)
            pending.append(PendingTable(*table_paths(store, name, kind), array, [[s.file, s.rows] for s in segs], kind))
    return table


def save_tables(pending: list[PendingTable]) -> None:
    """Write the id and key tables built by this process's queries (best effort: a read-only store keeps them
    in memory)."""
    while pending:
        try:
            table = pending.pop()
        except IndexError:  # another thread saved the last one
            return
        with contextlib.suppress(OSError):
            os.makedirs(table.data_path.parent, exist_ok=True)
            data = _npy_bytes(table.array)
            atomic_write_bytes(table.data_path, data)
            meta: dict[str, Any] = {"format": table.kind.format, "hash": table.kind.hash, "segments": table.segments}
            if table.kind.digest_required:  # id tables of format 2 keep the layout they were documented with
                meta["digest"] = _digest(data[:DIGEST_BYTES], data[-DIGEST_BYTES:], len(data))
            atomic_write_bytes(table.meta_path, json.dumps(meta).encode())


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array))
    return buf.getvalue()


# ----------------------------------------------------------------------------- summaries


def _summary_path(store: Store, name: str) -> Path:
    return store.index_dir / f"{name}.json"


def saved_summary(store: Store, name: str, sources: Mapping[str, Any]) -> dict[str, Any] | None:
    """The values saved as summary ``name`` (``index/NAME.json``) if they were computed from exactly ``sources``
    (segment lists as ``[[file, rows], ...]``), else None."""
    with contextlib.suppress(OSError, ValueError, TypeError, AttributeError):
        meta = json.loads(_summary_path(store, name).read_bytes())
        if meta.get("format") == SUMMARY_FORMAT and meta.get("sources") == json.loads(json.dumps(sources)):
            values = meta.get("values")
            return values if isinstance(values, dict) else None
    return None


def save_summary(store: Store, name: str, sources: Mapping[str, Any], values: Mapping[str, Any]) -> None:
    """Record ``values``, computed from ``sources`` (best effort: a read-only store recomputes them next time)."""
    with contextlib.suppress(OSError):
        path = _summary_path(store, name)
        os.makedirs(path.parent, exist_ok=True)
        meta = {"format": SUMMARY_FORMAT, "sources": sources, "values": values}
        atomic_write_bytes(path, json.dumps(meta).encode())
