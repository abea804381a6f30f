"""The on-disk store: immutable HDF5 segments named by an atomically published manifest.

This module owns the on-disk format: segment files (their columns and attributes), how
they are read, and the one write path (``Writer``). The manifest dataclasses live in
``featurestore.storage.manifest``.

Layout of a store directory::

    manifest/00000042.json   committed state, one file per generation (the highest wins)
    segments/seg-000123.h5   immutable HDF5 files: vectors of a space, rows of a dataset,
                             the keys of a dataset's rows under a cleaning recipe, or label updates
    index/<space>.faiss      derived FAISS index + its manifest (see featurestore.query.index)
    classifiers/             trained classifiers (see featurestore.learning.train)
    models/tuned/NAME/       models fine-tuned by fs tune (see featurestore.embedders.tuned)
    LOCK                     held by the one writer

Why segments: HDF5's own metadata is not crash-safe, so a file is never modified
after it is published. A commit writes new segment files under temporary names,
fsyncs them, renames them into place, then publishes a new manifest the same way.
A process killed at any instant leaves either the old manifest or the new one;
segments that no manifest names are orphans that the next writer removes. Readers
take one manifest as a snapshot and read only files it names, so they never see a
half-written batch and need no lock.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import logging
import mmap
import os
import re
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from filelock import FileLock, Timeout

from featurestore.errors import DatasetError, StoreError, StoreLockedError, UsageError
from featurestore.storage.atomic import atomic_path, atomic_write_bytes, fsync_dir
from featurestore.storage.keys import KEY_DTYPE
from featurestore.storage.manifest import EMPTY, Dataset, Segment, Snapshot, Space

log = logging.getLogger(__name__)

DEFAULT_STORE = "store"
MANIFESTS_KEPT = 3
# A segment that no kept manifest names any more is deleted by the writer this long after at the earliest, so that a
# reader that took an older generation (a cold ``fs similar`` during an ingest) can finish reading it.
SUPERSEDED_GRACE_S = 30.0
_DATASET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_MANIFEST_NAME = re.compile(r"^(\d{8})\.json$")
# The only names garbage collection and repair may delete: what this module, a distributed ingest
# (``ray-RUN-KIND-HASH.h5``) and ``atomic_path`` (``.tmp-*``) write. Anything else in the store's folders
# is a user's file: it is left in place and reported.
_OURS = {
    "segments": re.compile(r"^(seg-\d{6,}\.h5|ray-[A-Za-z0-9_]+-[A-Za-z0-9_]+-[0-9a-f]+\.h5|\.tmp-.+)$"),
    "manifest": re.compile(r"^(\d{8}\.json|\d{8}\.corrupt|\.tmp-.+)$"),  # .corrupt: set aside by repair
}


def not_ours(folder: Path, name: str) -> bool:
    """Whether ``name`` in the store folder ``folder`` (segments/, manifest/) is a file the store never writes."""
    return _OURS[folder.name].match(name) is None


_BYTES_DTYPE = h5py.vlen_dtype(np.uint8)  # raw texts as UTF-8 bytes: keeps NUL bytes and anything else intact
_STR_DTYPE = h5py.string_dtype("utf-8")  # ids and labels (schema 2)
TEXT_COLUMNS = ("ids", "labels")  # text in schema 2, int64 in schema 1


def default_store_path() -> Path:
    return Path(os.environ.get("FS_STORE") or DEFAULT_STORE)


def check_dataset_name(name: str) -> str:
    if not isinstance(name, str) or not _DATASET_NAME.match(name) or ".." in name:
        raise DatasetError(
            f"invalid dataset name {name!r}; use 1-64 letters, digits, '_', '-' or '.', "
            "starting with a letter or digit, without '/' or '..'"
        )
    return name


def _matrix_layout(rows: int, width: int, dtype: Any) -> dict[str, Any]:
    """Chunked (about 1 MiB a chunk) and resizable: the layout of every vector dataset."""
    per_chunk = max(1, min(rows, (1 << 20) // (width * np.dtype(dtype).itemsize)))
    return {"chunks": (per_chunk, width), "maxshape": (None, width)}


def segment_name(seq: int) -> str:
    return f"seg-{seq:06d}.h5"


def segment_seq(name: str) -> int:
    """The write-order number of a segment file (``seg-000123.h5`` -> 123)."""
    return int(name[4:].split(".", 1)[0])


def _reason(exc: BaseException) -> str:
    """A short, one-line cause for an I/O failure (h5py's messages span several lines)."""
    text = getattr(exc, "strerror", None) or str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return " ".join(str(text).split())[:160]


def as_text_column(values: np.ndarray, column: str) -> np.ndarray:
    """ids/labels as an object array of str; schema-1 int64 columns are converted (label -1 = none)."""
    if values.dtype.kind in "iu":
        out = values.astype(str).astype(object)
        if column == "labels":
            out[values < 0] = ""
        return out
    if values.dtype.kind == "O" or values.dtype.kind == "S":
        return np.array([v.decode("utf-8") if isinstance(v, bytes) else v for v in values.tolist()], dtype=object)
    return values.astype(object)


class Lookup:
    """A hash index over ids or keys for joins: the three methods of a pandas ``Index`` the code uses.

    A dict and a set rather than a pandas Index: importing pandas takes longer than a warm
    re-ingest of 10k rows. At a million rows the joins of an ingest's plan take 0.65x pandas'
    time, one ``get_indexer`` 1.1-1.4x (``bench/startup.py --joins`` measures both)."""

    def __init__(self, values: Iterable[Any]) -> None:
        self._values = _as_list(values)
        self._positions: dict[Any, int] | None = None

    def __len__(self) -> int:
        return len(self._values)

    def get_indexer(self, target: Iterable[Any]) -> np.ndarray:
        """Position of each target value, -1 where absent. The values must be unique (as pandas requires)."""
        if self._positions is None:
            positions = dict(zip(self._values, range(len(self._values))))
            if len(positions) != len(self._values):
                raise ValueError("get_indexer needs unique values")
            self._positions = positions
        wanted = _as_list(target)
        return np.fromiter(map(self._positions.get, wanted, itertools.repeat(-1)), np.intp, len(wanted))

    def isin(self, values: Iterable[Any]) -> np.ndarray:
        """Whether each value is one of ``values``."""
        members = set(_as_list(values))
        return np.fromiter(map(members.__contains__, self._values), bool, len(self._values))

    def duplicated(self, keep: str = "first") -> np.ndarray:
        """True for each repeat of an earlier value (``keep="first"``) or of a later one (``keep="last"``)."""
        n = len(self._values)
        # A dict keeps the last position written for a value: write back to front to keep the first.
        kept = dict(
            zip(self._values, range(n)) if keep == "last" else zip(reversed(self._values), range(n - 1, -1, -1))
        )
        out = np.ones(n, bool)
        out[np.fromiter(kept.values(), np.intp, len(kept))] = False
        return out


def _as_list(values: Iterable[Any]) -> list[Any]:
    return values.tolist() if isinstance(values, np.ndarray) else list(values)


def lookup(values: Iterable[Any]) -> Lookup:
    """A hash index over ``values`` (ids or keys) for joins (``get_indexer``, ``isin``, ``duplicated``)."""
    return Lookup(values)


def _object_array(items: Sequence[Any]) -> np.ndarray:
    """A 1-d object array of ``items`` (numpy would make equal-length byte arrays one 2-d array)."""
    out = np.empty(len(items), dtype=object)
    for i, item in enumerate(items):
        out[i] = item
    return out


def empty_text() -> np.ndarray:
    return np.zeros(0, dtype=object)


# ----------------------------------------------------------------------------- what one commit writes


@dataclass(frozen=True)
class VectorBatch:
    """New vectors of ``space`` (registered even when ``keys`` is empty)."""

    space: Space
    keys: np.ndarray  # KEY_DTYPE
    vectors: np.ndarray  # [len(keys), space.dim]


@dataclass(frozen=True)
class RowBatch:
    """New rows of a dataset; ids and labels are text, label "" = none."""

    ids: np.ndarray
    labels: np.ndarray
    digests: np.ndarray
    texts: Sequence[str]

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class KeyBatch:
    """The text keys, under ``recipe``, of dataset rows named by id."""

    recipe: str
    ids: np.ndarray
    keys: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class LabelBatch:
    """New labels of dataset rows already stored (later batches win)."""

    ids: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)


# ----------------------------------------------------------------------------- segment attributes


@dataclass(frozen=True)
class SegmentInfo:
    """What a segment file says about itself: enough for repair to re-adopt it without a manifest."""

    kind: str  # "vectors", "rows", "keys" or "labels"
    rows: int
    space: Space | None = None  # vectors: the space (without segments)
    dataset: str = ""
    recipe: str = ""
    merged_from: tuple[str, ...] = ()  # a compaction's segment: the segments it holds, in order; () if unknown


MERGED_FROM = "merged_from"  # attribute of a compaction's segment: JSON list of the segments it holds


def segment_attrs(kind: str, *, space: Space | None = None, dataset: str = "", recipe: str = "") -> dict[str, str]:
    attrs = {"kind": kind}
    if space is not None:
        attrs["space"] = space.id
        attrs["space_json"] = json.dumps({**space.to_json(), "segments": []}, sort_keys=True)
    if dataset:
        attrs["dataset"] = dataset
    if recipe:
        attrs["recipe"] = recipe
    return attrs


def read_segment_info(path: Path) -> SegmentInfo | None:
    """The self-description of a segment file, or None if it cannot be read or makes no sense."""
    try:
        with h5py.File(path, "r", locking=False) as f:
            a = {k: str(v) for k, v in f.attrs.items()}
            rows = len(f["ids" if "ids" in f else "keys"])
            space = Space.from_json(a["space"], json.loads(a["space_json"])) if "space_json" in a else None
    except (OSError, KeyError, ValueError, TypeError):
        return None
    merged_from = _merged_from(a.get(MERGED_FROM))
    kind = a.get("kind", "")
    if (kind == "vectors" and space is None) or (kind in ("rows", "keys", "labels") and not a.get("dataset")):
        return None
    if kind == "keys" and not a.get("recipe"):
        return None
    if kind not in ("vectors", "rows", "keys", "labels"):
        return None
    return SegmentInfo(kind, rows, space, a.get("dataset", ""), a.get("recipe", ""), merged_from)


def _merged_from(value: str | None) -> tuple[str, ...]:
    """The sources a compaction recorded; () when absent (a commit's segment, or a merge written before
    merges recorded them) or unreadable: repair then compares the segments' contents instead."""
    try:
        names = json.loads(value) if value else []
    except ValueError:
        return ()
    ok = isinstance(names, list) and all(isinstance(n, str) and n for n in names)
    return tuple(names) if ok else ()


@contextlib.contextmanager
def _segment_file(path: Path, attrs: Mapping[str, Any]) -> Iterator[h5py.File]:
    """Write a segment under a temporary name; on success fsync it and rename it into place."""
    with atomic_path(path, suffix=".h5") as tmp:
        with h5py.File(tmp, "w", locking=False) as f:
            for k, v in attrs.items():
                f.attrs[k] = v
            yield f


def write_segment(path: Path, attrs: Mapping[str, Any], columns: Mapping[str, Any]) -> Segment:
    """One immutable segment file at ``path``, whole or not at all. The writer of a store calls this
    for its commits; distributed workers call it for segments the writer adopts later."""
    with _segment_file(path, attrs) as f:
        n = 0
        for col, data in columns.items():
            n = len(data)
            if col == "texts":
                encoded = _object_array([np.frombuffer(t.encode("utf-8", "surrogatepass"), np.uint8) for t in data])
                f.create_dataset(col, data=encoded, dtype=_BYTES_DTYPE)
            elif col in TEXT_COLUMNS:
                f.create_dataset(col, data=np.asarray(data, dtype=object), dtype=_STR_DTYPE)
            elif col == "vectors":
                f.create_dataset(col, data=data, **_matrix_layout(len(data), data.shape[1], data.dtype))
            else:
                f.create_dataset(col, data=np.asarray(data, dtype=KEY_DTYPE))
    return Segment(path.name, n)


# ----------------------------------------------------------------------------- the store


_MAPPED_READ_ROWS = 256  # a held segment's rows read from its memory map up to this many a call


class _RowMap:
    """A segment's vectors read in place: the file memory-mapped read-only and the byte offset of each
    HDF5 chunk, so a row costs a slice of the map instead of h5py decoding its whole 1 MiB chunk (1.8 ms
    a row in a server at 1M vectors). Only for what HDF5 stores plainly: unfiltered little-endian floats."""

    def __init__(self, f: h5py.File) -> None:
        dset = f["vectors"]
        if (
            dset.chunks is None
            or dset.id.get_create_plist().get_nfilters()
            or dset.dtype.kind != "f"
            or dset.dtype.byteorder == ">"
            or len(dset.shape) != 2
        ):
            raise ValueError("not plainly stored")
        self.per_chunk, self.dim = dset.chunks[0], dset.shape[1]
        if dset.chunks[1] != self.dim:
            raise ValueError("chunks split rows")
        self.dtype = dset.dtype.newbyteorder("<")
        n_chunks = -(-dset.shape[0] // self.per_chunk)
        offsets = np.empty(n_chunks, dtype=np.int64)
        for i in range(n_chunks):
            info = dset.id.get_chunk_info_by_coord((i * self.per_chunk, 0))
            if info.byte_offset is None or info.size != self.per_chunk * self.dim * self.dtype.itemsize:
                raise ValueError("chunk not allocated or not plain")
            offsets[i] = info.byte_offset
        with open(f.filename, "rb") as fh:
            self._map = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        self.offsets = offsets
        self._rows = len(dset)

    def read(self, local: np.ndarray) -> np.ndarray:
        if len(local) and (local.min() < 0 or local.max() >= self._rows):
            raise IndexError(f"rows outside 0..{self._rows - 1}")
        row_bytes = self.dim * self.dtype.itemsize
        starts = self.offsets[local // self.per_chunk] + (local % self.per_chunk) * row_bytes
        return (
            np.stack([np.frombuffer(self._map, self.dtype, self.dim, int(o)) for o in starts]).astype(
                np.float32, copy=False
            )
            if len(local)
            else np.empty((0, self.dim), np.float32)
        )


@dataclass
class _HeldSegment:
    """An open segment file kept between reads (``Store.hold_segments``), valid while ``ident`` holds."""

    ident: tuple[int, int, int]  # inode, size, mtime of the file when opened
    file: h5py.File
    _map: _RowMap | None | bool = False  # False: not tried yet; None: not mappable (read through h5py)

    def row_map(self) -> _RowMap | None:
        if self._map is False:
            try:
                self._map = _RowMap(self.file)
            except (ValueError, OSError, KeyError, AttributeError):
                self._map = None
        return self._map  # type: ignore[return-value]


MAX_SEGMENTS = 32  # of one kind (a space's vectors, a dataset's rows, ...): past it, full segments merge too
MERGE_FANOUT = 4  # this many trailing segments of one size tier are merged into one of the next
FULL_ROWS = 1 << 15  # a segment this large merges only to stay under MAX_SEGMENTS (a bulk load's commits)


def merge_plan(
    rows: Sequence[int],
    max_segments: int = MAX_SEGMENTS,
    fanout: int = MERGE_FANOUT,
    full_rows: int = FULL_ROWS,
    merge_full: bool = True,
) -> list[tuple[int, int]]:
    """The merges, in order, that compaction makes of segments of ``rows`` rows: ``(start, end)`` merges
    segments ``start:end`` of the list as it stands after the merges before it.

    Size tiers, as a log-structured merge: a segment's tier is ``floor(log_fanout(rows))``; whenever the
    newest ``fanout`` segments share a tier (and are not full) they become one segment of the next, and so
    on, so a row is rewritten about ``log_fanout(full_rows / commit)`` times. Past ``max_segments``, the
    newest ``fanout`` neighbours of one tier merge (full ones too, unless ``merge_full`` is False: an ingest
    compacting as it goes leaves them to its last compaction), else those with the fewest rows.
    Merging everything whenever a kind passed 16 segments rewrote a million-row store (1.5 GB of vectors)
    every 16th commit: a 2,000-row ``fs ingest`` beside ``fs serve`` took 16 s instead of 3.4-4.4 s.
    """

    def tier(n: int) -> int:
        t = 0
        while n >= fanout:
            n //= fanout
            t += 1
        return t

    sizes, plan = list(rows), []

    def merge(start: int, end: int) -> None:
        plan.append((start, end))
        sizes[start:end] = [sum(sizes[start:end])]

    while len(sizes) > 1:
        tail = sizes[-fanout:]
        if len(tail) == fanout > 1 and len({tier(n) for n in tail}) == 1 and max(tail) < full_rows:
            merge(len(sizes) - fanout, len(sizes))
        elif len(sizes) > max_segments:  # the newest run of one tier, full ones too; else the fewest rows
            width = max(2, min(fanout, len(sizes)))
            starts = [
                i for i in range(len(sizes) - width, -1, -1) if merge_full or max(sizes[i : i + width]) < full_rows
            ]
            if not starts:
                break
            start = next(
                (i for i in starts if len({tier(n) for n in sizes[i : i + width]}) == 1),
                min(starts, key=lambda i: sum(sizes[i : i + width])),
            )
            merge(start, start + width)
        else:
            break
    return plan


class Store:
    """A store directory. Reading needs no lock; writing goes through ``writer()``."""

    def __init__(self, path: str | os.PathLike | None = None) -> None:
        self.path = Path(path) if path is not None else default_store_path()
        if self.path.exists() and not self.path.is_dir():
            raise StoreError(f"store path {self.path} is a file, not a directory; fix: point [[store]] at a directory")
        self.manifest_dir = self.path / "manifest"
        self.segment_dir = self.path / "segments"
        self.index_dir = self.path / "index"
        self.classifier_dir = self.path / "classifiers"
        self._held: dict[str, _HeldSegment] | None = None  # see hold_segments
        self._held_max = 0
        self._held_lock = threading.Lock()
        self._manifest_held: tuple[tuple[int, int, int, int], Snapshot] | None = None  # see read_manifest

    def hold_segments(self, limit: int = 256) -> Store:
        """Keep up to ``limit`` segment files open between reads (a long-lived reader: ``fs serve``, a
        notebook's repeated queries). Segments are immutable, so a held handle stays valid; it is
        checked against the file's inode, size and mtime at each use, and dropped when the file changed
        or is evicted (a superseded segment's disk space is freed once no handle holds it)."""
        with self._held_lock:
            self._held = {} if self._held is None else self._held
            self._held_max = limit
        return self

    def release_segments(self, keep: set[str]) -> None:
        """Close held segment files not in ``keep`` (superseded by a compaction: their disk space is freed)."""
        with self._held_lock:
            if self._held:
                self._held = {name: entry for name, entry in self._held.items() if name in keep}

    def require_existing(self) -> Store:
        """For reading commands: a path that holds no store is a mistake, not an empty store."""
        if not self.manifest_dir.is_dir():
            what = "does not exist" if not self.path.exists() else "is not a featurestore store (no manifest/)"
            raise StoreError(
                f"store {self.path} {what}; fix: point [[store]] at an existing store (or set FS_STORE), or create "
                "one with 'fs ingest FILE'"
            )
        return self

    # ---- snapshots

    def manifest_generations(self) -> list[int]:
        try:  # one system call: a server asks on every query
            names = os.listdir(self.manifest_dir)
        except (FileNotFoundError, NotADirectoryError):
            return []
        return sorted(int(m.group(1)) for p in names if (m := _MANIFEST_NAME.match(p)))

    def manifest_path(self, generation: int) -> Path:
        return self.manifest_dir / f"{generation:08d}.json"

    def read_manifest(self, generation: int) -> Snapshot:
        path = self.manifest_path(generation)
        try:
            # A long-lived reader (fs serve) asks for the latest snapshot on every query: the last one read is
            # reused while its file is the same one (a generation's file is replaced only by a repair).
            st = os.stat(path)
            same = (generation, st.st_ino, st.st_mtime_ns, st.st_size)
            held = self._manifest_held
            if held is not None and held[0] == same:
                return held[1]
            data = json.loads(path.read_bytes())
            snap = Snapshot.from_json(data, self.path)
            self._manifest_held = (same, snap)
            return snap
        except StoreError:
            raise
        except PermissionError:
            raise StoreError(
                f"store manifest {path} is not readable (permission denied); fix its permissions"
            ) from None
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise StoreError(
                f"store manifest {path} is corrupt ({exc}); fix: run 'fs repair --store {self.path}'"
            ) from None

    def snapshot(self) -> Snapshot:
        """The latest committed state (an empty one for a store not yet written)."""
        for attempt in range(5):
            gens = self.manifest_generations()
            if not gens:
                return EMPTY
            try:
                return self.read_manifest(gens[-1])
            except StoreError:
                # A writer may have pruned it between listdir and open: look again.
                if attempt < 4 and not self.manifest_path(gens[-1]).exists():
                    continue
                raise
        raise StoreError(f"store {self.path} keeps changing under the reader; try again")

    def kept_files(self, current: Snapshot) -> set[str]:
        """Segments named by ``current`` or by an older kept generation (superseded, still readable)."""
        live = current.files()
        for gen in self.manifest_generations()[:-1]:
            with contextlib.suppress(StoreError):
                live |= self.read_manifest(gen).files()
        return live

    # ---- segment reading

    def segment_path(self, name: str) -> Path:
        return self.segment_dir / name

    def segment_info(self, name: str) -> SegmentInfo | None:
        return read_segment_info(self.segment_path(name))

    @contextlib.contextmanager
    def open_segment(self, name: str) -> Iterator[h5py.File]:
        if self._held is not None:
            yield self._held_segment(name).file
            return
        f = self._open_segment(name)
        try:
            yield f
        finally:
            f.close()

    def _held_segment(self, name: str) -> _HeldSegment:
        held = self._held
        assert held is not None
        try:
            st = os.stat(self.segment_path(name))
            ident = (st.st_ino, st.st_size, st.st_mtime_ns)
        except OSError:
            ident = (-1, -1, -1)  # missing: _open_segment says so
        with self._held_lock:
            entry = held.pop(name, None)  # popped and put back: the dict's order is the LRU order
            if entry is None or entry.ident != ident:
                entry = _HeldSegment(ident, self._open_segment(name))
            held[name] = entry
            while len(held) > self._held_max:
                held.pop(next(iter(held)))  # closed when the last reader lets go of it
            return entry

    def _open_segment(self, name: str) -> h5py.File:
        path = self.segment_path(name)
        try:
            return h5py.File(path, "r", locking=False)  # immutable file: no HDF5 lock needed to read
        except FileNotFoundError:
            raise StoreError(
                f"store segment {name} named by the manifest is missing; fix: run 'fs repair --store {self.path}'"
            ) from None
        except OSError as exc:
            raise StoreError(
                f"store segment {name} cannot be read ({_reason(exc)}); fix: run 'fs check --store {self.path}'"
            ) from None

    @staticmethod
    def _column(f: h5py.File, column: str) -> np.ndarray:
        data = f[column][()]
        return as_text_column(data, column) if column in TEXT_COLUMNS else data

    def _read_column(self, segments: Sequence[Segment], column: str) -> np.ndarray:
        parts = []
        for seg in segments:
            with self.open_segment(seg.file) as f:
                parts.append(self._column(f, column))
        if not parts:
            return empty_text() if column in TEXT_COLUMNS else np.zeros(0, dtype=KEY_DTYPE)
        return np.concatenate(parts)

    def space_keys(self, space: Space) -> np.ndarray:
        """Every key of a space, in storage order (row i of the space has key i)."""
        return self._read_column(space.segments, "keys")

    def iter_vectors(self, space: Space, chunk_rows: int = 65536) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(first_row, float32 vectors)`` chunks in storage order, never all at once."""
        offset = 0
        for seg in space.segments:
            with self.open_segment(seg.file) as f:
                dset = f["vectors"]
                for start in range(0, seg.rows, chunk_rows):
                    block = dset[start : start + chunk_rows].astype(np.float32, copy=False)
                    yield offset + start, block
            offset += seg.rows

    def read_vectors(self, space: Space, rows: np.ndarray) -> np.ndarray:
        """Vectors at the given storage rows (any order, repeats allowed), read segment by segment.

        Reads whole HDF5 chunks in contiguous runs and picks the rows from them: h5py's point
        selection costs a hyperslab per row, which made reading 20k scattered rows take seconds."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), space.dim), dtype=np.float32)
        if len(rows) == 0:
            return out
        bounds = np.cumsum([0] + [s.rows for s in space.segments])
        which = np.searchsorted(bounds, rows, side="right") - 1
        for si in np.unique(which):
            sel = np.flatnonzero(which == si)
            local = rows[sel] - bounds[si]
            if self._held is not None and len(local) <= _MAPPED_READ_ROWS:  # a server's query: a few rows
                in_place = self._held_segment(space.segments[si].file).row_map()
                if in_place is not None:
                    out[sel] = in_place.read(local)
                    continue
            uniq, inverse = np.unique(local, return_inverse=True)
            with self.open_segment(space.segments[si].file) as f:
                dset = f["vectors"]
                per_chunk = dset.chunks[0] if dset.chunks else len(dset)
                chunk_of = uniq // per_chunk
                # Runs of consecutive chunk numbers are read as one slice each.
                starts = np.flatnonzero(np.r_[True, np.diff(np.unique(chunk_of)) > 1])
                touched = np.unique(chunk_of)
                block = np.empty((len(uniq), space.dim), dtype=np.float32)
                for a, b in zip(starts, np.r_[starts[1:], len(touched)]):
                    lo, hi = touched[a] * per_chunk, (touched[b - 1] + 1) * per_chunk
                    inside = (uniq >= lo) & (uniq < hi)
                    block[inside] = dset[lo:hi][uniq[inside] - lo]
            out[sel] = block[inverse]
        return out

    def read_range(self, space: Space, start: int, stop: int) -> np.ndarray:
        """Storage rows ``start:stop`` of a space as float32, read as contiguous slices (one per segment)."""
        parts = []
        first = 0
        for seg in space.segments:
            lo, hi = max(start, first), min(stop, first + seg.rows)
            if lo < hi:
                with self.open_segment(seg.file) as f:
                    parts.append(f["vectors"][lo - first : hi - first].astype(np.float32, copy=False))
            first += seg.rows
            if first >= stop:
                break
        return np.concatenate(parts) if parts else np.zeros((0, space.dim), np.float32)

    def dataset(self, name: str, snap: Snapshot | None = None) -> Dataset:
        snap = snap or self.snapshot()
        check_dataset_name(name)
        try:
            return snap.datasets[name]
        except KeyError:
            known = ", ".join(sorted(snap.datasets)) or "none yet; run 'fs ingest FILE --dataset NAME'"
            raise DatasetError(f"dataset {name!r} does not exist in {self.path}; datasets: {known}") from None

    def dataset_column(self, ds: Dataset, column: str) -> np.ndarray:
        """One column of every row (``ids``, ``digests``; ``labels`` without updates), in insertion order."""
        return self._read_column(ds.rows, column)

    def dataset_ids(self, ds: Dataset) -> np.ndarray:
        return self.dataset_column(ds, "ids")

    def dataset_labels(self, ds: Dataset, ids: np.ndarray | None = None) -> np.ndarray:
        """Current labels of every row ("" = none): the rows' own labels with the updates applied in order."""
        labels = self.dataset_column(ds, "labels")
        if ds.labels:
            ids = self.dataset_ids(ds) if ids is None else ids
            upd_ids, upd_labels = self.label_updates(ds)
            last = ~lookup(upd_ids).duplicated(keep="last")
            pos = lookup(ids).get_indexer(upd_ids[last])
            found = pos >= 0
            labels[pos[found]] = upd_labels[last][found]
        return labels

    def label_updates(self, ds: Dataset) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, labels)`` of the dataset's label updates, in the order they were written."""
        return self._read_column(ds.labels, "ids"), self._read_column(ds.labels, "labels")

    def dataset_texts(self, ds: Dataset) -> np.ndarray:
        """Raw texts of every row, in insertion order (object array of str)."""
        texts: list[str] = []
        for seg in ds.rows:
            with self.open_segment(seg.file) as f:
                texts.extend(bytes(t).decode("utf-8", "surrogatepass") for t in f["texts"][()])
        return _object_array(texts)

    def dataset_rows(self, ds: Dataset) -> dict[str, np.ndarray]:
        """ids, current labels ("" = none), digests and texts of every row, in insertion order."""
        ids = self.dataset_ids(ds)
        return {
            "ids": ids,
            "labels": self.dataset_labels(ds, ids),
            "digests": self.dataset_column(ds, "digests"),
            "texts": self.dataset_texts(ds),
        }

    def texts_for(self, ds: Dataset, ids: Sequence[str]) -> dict[str, str]:
        """Raw texts of the given ids, reading only the segments and rows that hold them."""
        wanted = set(ids)
        out: dict[str, str] = {}
        for seg in ds.rows:
            if len(out) == len(wanted):
                break
            with self.open_segment(seg.file) as f:
                seg_ids = self._column(f, "ids")
                hit = [j for j, i in enumerate(seg_ids.tolist()) if i in wanted]
                for j in hit:
                    out[seg_ids[j]] = bytes(f["texts"][j]).decode("utf-8", "surrogatepass")
        return out

    def dataset_keys(self, ds: Dataset, recipe: str) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, keys)`` of the dataset's rows that have a key under ``recipe``."""
        segs = ds.keys.get(recipe, ())
        return self._read_column(segs, "ids"), self._read_column(segs, "keys")

    # ---- writing

    def writer(self, wait: bool = False, timeout: float | None = None) -> Writer:
        """The write path: holds the store's lock while open."""
        return Writer(self, wait=wait, timeout=timeout)


class Writer:
    """The one write path. Holds the store's lock; each ``commit`` publishes one generation."""

    def __init__(self, store: Store, wait: bool = False, timeout: float | None = None) -> None:
        self.store = store
        self.wait = wait
        self.timeout = timeout
        self._lock: FileLock | None = None
        self._recovering = False
        self.snap: Snapshot = EMPTY
        self.foreign: list[str] = []  # files in the store's folders it did not write, left in place
        self._named: dict[int, frozenset[str]] = {}  # generation -> the segments it names (see _publish)
        self._doomed: dict[str, float] = {}  # superseded segment -> when it may be deleted (see _publish)

    def __enter__(self) -> Writer:
        self._acquire()
        try:
            store = self.store
            if not store.manifest_generations() and not any(
                n.startswith("seg-") for n in os.listdir(store.segment_dir)
            ):
                # A new store gets an empty generation 0 first, so a kill during its first commit
                # leaves orphans beside a manifest (swept as usual), not segments without one.
                self._publish(EMPTY)
            self.snap = store.snapshot()
            self._sweep()
        except BaseException:
            self.__exit__()
            raise
        return self

    @classmethod
    @contextlib.contextmanager
    def recovering(cls, store: Store) -> Iterator[Writer]:
        """The write path for repair: the lock without trusting (or even reading) the current manifest.
        The caller decides the snapshot to continue from and calls ``recover(snap)``."""
        w = cls(store)
        w._acquire()
        w._recovering = True
        try:
            yield w
        finally:
            w.__exit__()

    def recover(self, snap: Snapshot, publish: bool) -> Snapshot:
        """Continue from ``snap`` (repair's reconstruction): publish it as a new generation if asked,
        then remove what no kept manifest names."""
        assert self._recovering, "recover() is for Writer.recovering()"
        if publish:
            new = dataclasses.replace(
                snap,
                generation=self.snap_generation() + 1,
                next_segment=max(snap.next_segment, self._next_free_segment()),
            )
            self._publish(new)
            snap = new
        self.snap = snap
        self._sweep()
        return snap

    def snap_generation(self) -> int:
        gens = self.store.manifest_generations()
        return gens[-1] if gens else 0

    def _next_free_segment(self) -> int:
        used = [segment_seq(n) + 1 for n in os.listdir(self.store.segment_dir) if n.startswith("seg-")]
        return max(used, default=1)

    def _acquire(self) -> None:
        store = self.store
        try:
            for d in (store.path, store.manifest_dir, store.segment_dir):
                d.mkdir(parents=True, exist_ok=True)
            probe = store.path / f".write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise StoreError(
                f"store path {store.path} is not writable ({exc.strerror}); fix: choose a writable store directory "
                "(--store DIR or FS_STORE)"
            ) from None
        self._lock = FileLock(str(store.path / "LOCK"))
        try:
            self._lock.acquire(timeout=-1 if self.wait and self.timeout is None else (self.timeout or 0))
        except Timeout:
            self._lock = None
            raise StoreLockedError(
                f"another process is writing to {store.path} (it holds {store.path / 'LOCK'}); fix: wait for it to "
                "finish, or let this one queue (--wait)"
            ) from None

    def __exit__(self, *exc: Any) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _sweep(self) -> None:
        """Remove what a killed writer left: temporary files and segments no manifest names. Only names
        the store writes are removed; another file is left in place and listed in ``foreign``."""
        if not self.store.manifest_generations() and any(
            n.startswith("seg-") for n in os.listdir(self.store.segment_dir)
        ):
            raise StoreError(
                f"store {self.store.path} has segment files but no manifest; fix: run 'fs repair --store "
                f"{self.store.path}' to re-adopt them"
            )
        live = self.store.kept_files(self.snap)
        removed = 0
        for d in (self.store.segment_dir, self.store.manifest_dir):
            for name in sorted(os.listdir(d)):
                if not self._ours(d, name):
                    continue
                if not (name.startswith(".tmp-") or (d == self.store.segment_dir and name not in live)):
                    continue
                os.unlink(d / name)
                removed += 1
        if removed:
            log.info("removed %d uncommitted file(s) left by an interrupted writer", removed)

    def _ours(self, folder: Path, name: str) -> bool:
        """Whether the store may delete ``folder/name``; a file it never writes is noted in ``foreign``."""
        if not not_ours(folder, name) and (folder / name).is_file():
            return True
        where = str((folder / name).relative_to(self.store.path))
        if where not in self.foreign:
            self.foreign.append(where)
            log.info("%s is not a file featurestore writes: not ours, left in place", folder / name)
        return False

    def _new_segment(self, seq: int, attrs: Mapping[str, Any], columns: Mapping[str, Any]) -> Segment:
        return write_segment(self.store.segment_path(segment_name(seq)), attrs, columns)

    def commit(
        self,
        dataset: str | None = None,
        *,
        vectors: VectorBatch | None = None,
        rows: RowBatch | None = None,
        keys: KeyBatch | None = None,
        labels: LabelBatch | None = None,
    ) -> Snapshot:
        """Publish, in one generation: new vectors of a space, and new rows, row keys and label
        updates of ``dataset``. Any part may be absent or empty."""
        seq = self.snap.next_segment
        written: list[str] = []

        def add(attrs: dict[str, str], columns: Mapping[str, Any]) -> tuple[Segment, ...]:
            nonlocal seq
            seg = self._new_segment(seq, attrs, columns)
            written.append(seg.file)
            seq += 1
            return (seg,)

        try:
            vector_segs: tuple[Segment, ...] = ()
            row_segs: tuple[Segment, ...] = ()
            label_segs: tuple[Segment, ...] = ()
            key_segs: dict[str, tuple[Segment, ...]] = {}
            if vectors is not None and len(vectors.keys):
                space = vectors.space
                assert vectors.vectors.shape == (len(vectors.keys), space.dim)
                # Self-describing, so that repair can re-adopt it without any manifest.
                vector_segs = add(
                    segment_attrs("vectors", space=space),
                    {"keys": vectors.keys, "vectors": vectors.vectors.astype(space.dtype)},
                )
            if dataset is not None:
                check_dataset_name(dataset)
                if rows is not None and len(rows):
                    row_segs = add(
                        segment_attrs("rows", dataset=dataset),
                        {"ids": rows.ids, "labels": rows.labels, "digests": rows.digests, "texts": rows.texts},
                    )
                if keys is not None and len(keys):
                    key_segs[keys.recipe] = add(
                        segment_attrs("keys", dataset=dataset, recipe=keys.recipe), {"ids": keys.ids, "keys": keys.keys}
                    )
                if labels is not None and len(labels):
                    label_segs = add(
                        segment_attrs("labels", dataset=dataset), {"ids": labels.ids, "labels": labels.labels}
                    )
            new = self._extended(
                vectors.space if vectors is not None else None,
                vector_segs,
                dataset,
                row_segs,
                key_segs,
                label_segs,
                next_segment=seq,
            )
            fsync_dir(self.store.segment_dir)
            self._publish(new)
        except (OSError, RuntimeError) as exc:  # h5py reports a failed write at close as RuntimeError
            for name in written:
                with contextlib.suppress(OSError):
                    os.unlink(self.store.segment_path(name))
            raise StoreError(
                f"could not write to store {self.store.path} ({_reason(exc)}); nothing from this batch was "
                "committed; fix: free disk space or choose another store directory, then run the same command again"
            ) from None
        self.snap = new
        return new

    def adopt(
        self,
        *,
        space: Space | None = None,
        vectors: Sequence[str] = (),
        dataset: str | None = None,
        rows: Sequence[str] = (),
        keys: Mapping[str, Sequence[str]] | None = None,
        labels: Sequence[str] = (),
    ) -> Snapshot:
        """Publish, in one generation, segment files that other processes wrote into the segment
        directory with ``write_segment`` (distributed ingest): many writers of segments, one writer
        of the manifest. Each file is checked to say what it is adopted as."""

        def segs(names: Sequence[str], kind: str, recipe: str = "") -> tuple[Segment, ...]:
            out = []
            for name in names:
                info = read_segment_info(self.store.segment_path(name))
                ok = (
                    info is not None
                    and info.kind == kind
                    and (
                        info.space is not None and space is not None and info.space.id == space.id
                        if kind == "vectors"
                        else info.dataset == dataset and info.recipe == recipe
                    )
                )
                if info is None or not ok:
                    raise StoreError(
                        f"segment {name} in {self.store.segment_dir} is not a complete {kind} segment "
                        "of this ingest; nothing was adopted"
                    )
                out.append(Segment(name, info.rows))
            return tuple(out)

        if dataset is not None:
            check_dataset_name(dataset)
        new = self._extended(
            space,
            segs(vectors, "vectors"),
            dataset,
            segs(rows, "rows"),
            {r: segs(names, "keys", r) for r, names in (keys or {}).items()},
            segs(labels, "labels"),
            next_segment=self.snap.next_segment,
        )
        fsync_dir(self.store.segment_dir)
        self._publish(new)
        self.snap = new
        return new

    def _extended(
        self,
        space: Space | None,
        vector_segs: tuple[Segment, ...],
        dataset: str | None,
        row_segs: tuple[Segment, ...],
        key_segs: Mapping[str, tuple[Segment, ...]],
        label_segs: tuple[Segment, ...],
        next_segment: int,
    ) -> Snapshot:
        """The next generation: this one plus new segments of a space (registered even with none) and
        of a dataset (created even with none)."""
        snap = self.snap
        spaces = dict(snap.spaces)
        datasets = dict(snap.datasets)
        if space is not None:
            current = spaces.get(space.id, space)
            spaces[space.id] = dataclasses.replace(
                space, canaries=current.canaries or space.canaries, segments=current.segments + vector_segs
            )
        if dataset is not None:
            ds = datasets.get(dataset, Dataset(dataset))
            new_keys = dict(ds.keys)
            for recipe, segs in key_segs.items():
                if segs:
                    new_keys[recipe] = new_keys.get(recipe, ()) + segs
            datasets[dataset] = Dataset(dataset, ds.rows + row_segs, new_keys, ds.labels + label_segs)
        return Snapshot(snap.generation + 1, next_segment, spaces, datasets)

    def _merge(self, seq: int, segs: Sequence[Segment], attrs: Mapping[str, Any]) -> Segment:
        """One new segment holding ``segs`` concatenated in order, copied in bounded chunks (memory is
        one chunk, not the merge: merges of a 10M-row ingest reach millions of rows).

        Raw texts (variable-length bytes) are copied with ``write_direct`` from an array of h5py's
        vlen type: a plain slice assignment fails when every text in the chunk has the same length."""
        total = sum(s.rows for s in segs)
        # Its sources recorded: a repair that falls back to a generation naming them adopts one or the other.
        attrs = {**attrs, MERGED_FROM: json.dumps([s.file for s in segs])}
        with _segment_file(self.store.segment_path(segment_name(seq)), attrs) as out:
            offset = 0
            for seg in segs:
                with self.store.open_segment(seg.file) as f:
                    for col in f:
                        src = f[col]
                        if col == "texts":
                            if col not in out:
                                out.create_dataset(col, (total,), dtype=_BYTES_DTYPE)
                            for start in range(0, seg.rows, 65536):
                                block = np.empty(min(65536, seg.rows - start), dtype=_BYTES_DTYPE)
                                block[:] = src[start : start + len(block)]
                                stop = offset + start + len(block)
                                out[col].write_direct(block, dest_sel=np.s_[offset + start : stop])
                            continue
                        if col not in out:
                            if col in TEXT_COLUMNS:  # written as text whatever schema the parts had
                                out.create_dataset(col, (total,), dtype=_STR_DTYPE)
                            else:
                                layout = _matrix_layout(total, src.shape[1], src.dtype) if src.ndim == 2 else {}
                                out.create_dataset(col, (total, *src.shape[1:]), dtype=src.dtype, **layout)
                        for start in range(0, seg.rows, 65536):
                            block = src[start : start + 65536]
                            if col in TEXT_COLUMNS:
                                block = as_text_column(block, col)
                            out[col][offset + start : offset + start + len(block)] = block
                offset += seg.rows
        return Segment(segment_name(seq), total)

    def compact(self, max_segments: int = MAX_SEGMENTS, fanout: int = MERGE_FANOUT, merge_full: bool = True) -> bool:
        """Merge segments of every space, dataset, key list and label list, by size tiers (``merge_plan``).

        Order is kept, so row numbers (and FAISS indexes built on them) stay valid, and label
        updates still apply in order. The old files stay until no kept manifest names them, so
        readers of older snapshots are safe.
        """
        snap = self.snap
        seq = snap.next_segment
        spaces = dict(snap.spaces)
        datasets = dict(snap.datasets)

        def merged(segs: tuple[Segment, ...], attrs: dict[str, str]) -> tuple[Segment, ...]:
            nonlocal seq
            for start, end in merge_plan([s.rows for s in segs], max_segments, fanout, merge_full=merge_full):
                seq += 1
                segs = (*segs[:start], self._merge(seq - 1, segs[start:end], attrs), *segs[end:])
            return segs

        try:
            for sid, sp in snap.spaces.items():
                spaces[sid] = dataclasses.replace(sp, segments=merged(sp.segments, segment_attrs("vectors", space=sp)))
            for name, ds in snap.datasets.items():
                datasets[name] = Dataset(
                    name,
                    merged(ds.rows, segment_attrs("rows", dataset=name)),
                    {r: merged(segs, segment_attrs("keys", dataset=name, recipe=r)) for r, segs in ds.keys.items()},
                    merged(ds.labels, segment_attrs("labels", dataset=name)),
                )
            changed = seq != snap.next_segment
            if changed:
                fsync_dir(self.store.segment_dir)
                new = Snapshot(snap.generation + 1, seq, spaces, datasets)
                self._publish(new)
                self.snap = new
                # A merge of merges leaves the first one unnamed by any generation: no reader can hold it.
                live = new.files()
                for name in map(segment_name, range(snap.next_segment, seq)):
                    if name not in live:
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(self.store.segment_path(name))
        except (OSError, RuntimeError) as exc:
            raise StoreError(
                f"could not compact store {self.store.path} ({_reason(exc)}); "
                "the store is unchanged; fix: free disk space"
            ) from None
        return changed

    def collect_garbage(self, keep: int = 1) -> tuple[int, int]:
        """Prune manifests older than the newest ``keep`` and delete every segment none of those names
        (what compaction superseded). Returns (files removed, bytes freed). A reader still working on a
        pruned generation would then fail, so this is a separate, explicit step (``fs gc``). Only names the
        store writes are deleted; others are left in place and listed in ``foreign``."""
        if keep < 1:
            raise UsageError(f"{{param}} must be at least 1, got {keep}", "keep")
        removed = freed = 0
        for gen in self.store.manifest_generations()[:-keep]:
            path = self.store.manifest_path(gen)
            with contextlib.suppress(FileNotFoundError):
                freed += path.stat().st_size
                os.unlink(path)
                removed += 1
        live = self.store.kept_files(self.snap)
        for name in os.listdir(self.store.segment_dir):
            if name not in live and self._ours(self.store.segment_dir, name):
                path = self.store.segment_dir / name
                freed += path.stat().st_size
                os.unlink(path)
                removed += 1
        return removed, freed

    def _publish(self, new: Snapshot) -> None:
        """Publish ``new``, prune generations beyond the newest ``MANIFESTS_KEPT``, and delete the segments
        that only pruned generations named (what a compaction superseded) once ``SUPERSEDED_GRACE_S`` has
        passed, so that a long ingest that compacts as it goes keeps about the live data on disk, not every
        superseded copy until ``fs gc`` (those still in their grace period are left to it, or the next writer)."""
        data = json.dumps(new.to_json(), indent=1, sort_keys=True).encode()
        atomic_write_bytes(self.store.manifest_path(new.generation), data)
        self._named[new.generation] = frozenset(new.files())
        gens = self.store.manifest_generations()
        dropped: set[str] = set()
        for gen in gens[:-MANIFESTS_KEPT]:
            dropped |= self._files_of(gen)
            self._named.pop(gen, None)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.store.manifest_path(gen))
        if self._recovering:  # repair sweeps by its own rules
            return
        now = time.monotonic()
        for name in dropped:
            self._doomed.setdefault(name, now + SUPERSEDED_GRACE_S)
        due = {name for name, at in self._doomed.items() if at <= now}
        if due:
            for gen in gens[-MANIFESTS_KEPT:]:
                due -= self._files_of(gen)
            for name in sorted(due):
                del self._doomed[name]
                if not not_ours(self.store.segment_dir, name):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self.store.segment_path(name))

    def _files_of(self, generation: int) -> frozenset[str]:
        """The segments ``generation`` names (remembered from its publication or read once); none if its
        manifest cannot be read: its files are then left to ``fs gc`` or the next writer's sweep."""
        if generation not in self._named:
            try:
                self._named[generation] = frozenset(self.store.read_manifest(generation).files())
            except (StoreError, FileNotFoundError):
                return frozenset()
        return self._named[generation]


__all__ = [
    "Dataset",
    "KeyBatch",
    "LabelBatch",
    "RowBatch",
    "Segment",
    "SegmentInfo",
    "Snapshot",
    "Space",
    "Store",
    "VectorBatch",
    "Writer",
    "check_dataset_name",
    "default_store_path",
]
