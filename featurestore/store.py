"""The on-disk store: immutable HDF5 segments named by an atomically published manifest.

Layout of a store directory::

    manifest/00000042.json   committed state, one file per generation (the highest wins)
    segments/seg-000123.h5   immutable HDF5 files: vectors of a space, rows of a dataset,
                             or the keys of a dataset's rows under a cleaning recipe
    index/<space>.faiss      derived FAISS index + its manifest (see featurestore.index)
    classifiers/             trained classifiers (see featurestore.train)
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
import hashlib
import json
import logging
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import h5py
import numpy as np
from filelock import FileLock, Timeout

from featurestore.errors import DatasetError, StoreError, StoreLockedError
from featurestore.keys import KEY_DTYPE, canonical_json

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
DEFAULT_STORE = "store"
MANIFESTS_KEPT = 3
_DATASET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_MANIFEST_NAME = re.compile(r"^(\d{8})\.json$")
_TEXT_DTYPE = h5py.vlen_dtype(np.uint8)  # raw UTF-8 bytes: keeps NUL bytes and anything else intact


def default_store_path() -> Path:
    return Path(os.environ.get("FS_STORE") or DEFAULT_STORE)


def check_dataset_name(name: str) -> str:
    if not _DATASET_NAME.match(name) or ".." in name:
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


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _reason(exc: BaseException) -> str:
    """A short, one-line cause for an I/O failure (h5py's messages span several lines)."""
    text = getattr(exc, "strerror", None) or str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return " ".join(str(text).split())[:160]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash leaves the old file or the new one, never a torn one."""
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


# ----------------------------------------------------------------------------- manifest model


@dataclass(frozen=True)
class Segment:
    file: str
    rows: int


@dataclass(frozen=True)
class Space:
    """A vector space: one embedder fingerprint plus one cleaning recipe plus a dtype."""

    id: str
    fields: Mapping[str, Any]
    model: str
    recipe: str
    dim: int
    dtype: str
    canaries: tuple[str, ...] = ()
    segments: tuple[Segment, ...] = ()

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.segments)

    def to_json(self) -> dict[str, Any]:
        return {
            "fields": self.fields,
            "model": self.model,
            "recipe": self.recipe,
            "dim": self.dim,
            "dtype": self.dtype,
            "canaries": list(self.canaries),
            "segments": [[s.file, s.rows] for s in self.segments],
        }

    @classmethod
    def from_json(cls, sid: str, d: Mapping[str, Any]) -> "Space":
        return cls(
            id=sid,
            fields=d["fields"],
            model=d["model"],
            recipe=d["recipe"],
            dim=int(d["dim"]),
            dtype=d["dtype"],
            canaries=tuple(d.get("canaries", ())),
            segments=tuple(Segment(f, int(n)) for f, n in d["segments"]),
        )


@dataclass(frozen=True)
class Dataset:
    """Rows (id, label, raw text) plus, per cleaning recipe, the key of each row."""

    name: str
    rows: tuple[Segment, ...] = ()
    keys: Mapping[str, tuple[Segment, ...]] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return sum(s.rows for s in self.rows)

    def keyed(self, recipe: str) -> int:
        return sum(s.rows for s in self.keys.get(recipe, ()))

    def to_json(self) -> dict[str, Any]:
        return {
            "rows": [[s.file, s.rows] for s in self.rows],
            "keys": {r: [[s.file, s.rows] for s in segs] for r, segs in sorted(self.keys.items())},
        }

    @classmethod
    def from_json(cls, name: str, d: Mapping[str, Any]) -> "Dataset":
        return cls(
            name=name,
            rows=tuple(Segment(f, int(n)) for f, n in d["rows"]),
            keys={r: tuple(Segment(f, int(n)) for f, n in segs) for r, segs in d["keys"].items()},
        )


@dataclass(frozen=True)
class Snapshot:
    """One committed generation of the store."""

    generation: int
    next_segment: int
    spaces: Mapping[str, Space]
    datasets: Mapping[str, Dataset]

    def files(self) -> set[str]:
        names = {s.file for sp in self.spaces.values() for s in sp.segments}
        for ds in self.datasets.values():
            names.update(s.file for s in ds.rows)
            names.update(s.file for segs in ds.keys.values() for s in segs)
        return names

    def to_json(self) -> dict[str, Any]:
        body = {
            "schema": SCHEMA_VERSION,
            "generation": self.generation,
            "next_segment": self.next_segment,
            "spaces": {k: v.to_json() for k, v in sorted(self.spaces.items())},
            "datasets": {k: v.to_json() for k, v in sorted(self.datasets.items())},
        }
        body["checksum"] = hashlib.sha256(canonical_json(body).encode()).hexdigest()
        return body

    @classmethod
    def from_json(cls, d: Mapping[str, Any], where: Path) -> "Snapshot":
        schema = d.get("schema")
        if not isinstance(schema, int) or schema > SCHEMA_VERSION:
            raise StoreError(
                f"store {where} was written by a newer featurestore (schema {schema}); this version reads "
                f"schema {SCHEMA_VERSION}; fix: upgrade featurestore (pip install -U featurestore)"
            )
        body = {k: v for k, v in d.items() if k != "checksum"}
        if hashlib.sha256(canonical_json(body).encode()).hexdigest() != d.get("checksum"):
            raise ValueError("checksum mismatch")
        return cls(
            generation=int(d["generation"]),
            next_segment=int(d["next_segment"]),
            spaces={k: Space.from_json(k, v) for k, v in d["spaces"].items()},
            datasets={k: Dataset.from_json(k, v) for k, v in d["datasets"].items()},
        )


EMPTY = Snapshot(generation=0, next_segment=1, spaces={}, datasets={})


# ----------------------------------------------------------------------------- the store


class Store:
    """A store directory. Reading needs no lock; writing goes through ``writer()``."""

    def __init__(self, path: str | os.PathLike | None = None) -> None:
        self.path = Path(path) if path is not None else default_store_path()
        if self.path.exists() and not self.path.is_dir():
            raise StoreError(f"store path {self.path} is a file, not a directory; fix: --store DIR or FS_STORE=DIR")
        self.manifest_dir = self.path / "manifest"
        self.segment_dir = self.path / "segments"
        self.index_dir = self.path / "index"
        self.classifier_dir = self.path / "classifiers"

    # ---- snapshots

    def manifest_generations(self) -> list[int]:
        if not self.manifest_dir.is_dir():
            return []
        gens = [int(m.group(1)) for p in os.listdir(self.manifest_dir) if (m := _MANIFEST_NAME.match(p))]
        return sorted(gens)

    def manifest_path(self, generation: int) -> Path:
        return self.manifest_dir / f"{generation:08d}.json"

    def read_manifest(self, generation: int) -> Snapshot:
        path = self.manifest_path(generation)
        try:
            data = json.loads(path.read_bytes())
            return Snapshot.from_json(data, self.path)
        except StoreError:
            raise
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

    @contextlib.contextmanager
    def open_segment(self, name: str) -> Iterator[h5py.File]:
        path = self.segment_path(name)
        try:
            f = h5py.File(path, "r", locking=False)  # immutable file: no HDF5 lock needed to read
        except FileNotFoundError:
            raise StoreError(
                f"store segment {name} named by the manifest is missing; fix: run 'fs repair --store {self.path}'"
            ) from None
        except OSError as exc:
            raise StoreError(
                f"store segment {name} cannot be read ({exc}); fix: run 'fs check --store {self.path}'"
            ) from None
        try:
            yield f
        finally:
            f.close()

    def _read_column(self, segments: Sequence[Segment], column: str) -> np.ndarray:
        parts = []
        for seg in segments:
            with self.open_segment(seg.file) as f:
                parts.append(f[column][()])
        if not parts:
            return np.zeros(0, dtype=np.int64 if column in ("ids", "labels") else KEY_DTYPE)
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
        """Vectors at the given storage rows (any order, repeats allowed), read segment by segment."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), space.dim), dtype=np.float32)
        if len(rows) == 0:
            return out
        bounds = np.cumsum([0] + [s.rows for s in space.segments])
        which = np.searchsorted(bounds, rows, side="right") - 1
        for si in np.unique(which):
            sel = np.flatnonzero(which == si)
            local = rows[sel] - bounds[si]
            uniq, inverse = np.unique(local, return_inverse=True)
            with self.open_segment(space.segments[si].file) as f:
                dset = f["vectors"]
                if len(uniq) > space.segments[si].rows // 4:
                    block = dset[()][uniq]  # reading the whole segment beats scattered reads
                else:
                    block = dset[uniq]
            out[sel] = block.astype(np.float32, copy=False)[inverse]
        return out

    def dataset(self, name: str, snap: Snapshot | None = None) -> Dataset:
        snap = snap or self.snapshot()
        check_dataset_name(name)
        try:
            return snap.datasets[name]
        except KeyError:
            known = ", ".join(sorted(snap.datasets)) or "none yet; run 'fs ingest FILE --dataset NAME'"
            raise DatasetError(f"dataset {name!r} does not exist in {self.path}; datasets: {known}") from None

    def dataset_column(self, ds: Dataset, column: str) -> np.ndarray:
        """One fixed-width column of every row (``ids``, ``labels`` or ``digests``), in insertion order."""
        return self._read_column(ds.rows, column)

    def dataset_ids(self, ds: Dataset) -> np.ndarray:
        return self.dataset_column(ds, "ids")

    def dataset_rows(self, ds: Dataset) -> dict[str, np.ndarray]:
        """ids, labels (-1 = none), digests and texts of every row, in insertion order."""
        cols: dict[str, list[Any]] = {"ids": [], "labels": [], "digests": [], "texts": []}
        for seg in ds.rows:
            with self.open_segment(seg.file) as f:
                for c in ("ids", "labels", "digests"):
                    cols[c].append(f[c][()])
                cols["texts"].extend(bytes(t).decode("utf-8", "surrogatepass") for t in f["texts"][()])
        if not ds.rows:
            return {
                "ids": np.zeros(0, np.int64),
                "labels": np.zeros(0, np.int64),
                "digests": np.zeros(0, KEY_DTYPE),
                "texts": np.zeros(0, object),
            }
        return {
            "ids": np.concatenate(cols["ids"]),
            "labels": np.concatenate(cols["labels"]),
            "digests": np.concatenate(cols["digests"]),
            "texts": np.array(cols["texts"], dtype=object),
        }

    def texts_for(self, ds: Dataset, ids: Sequence[int]) -> dict[int, str]:
        """Raw texts of the given ids, reading only the segments and rows that hold them."""
        wanted = np.asarray(sorted(set(int(i) for i in ids)), dtype=np.int64)
        out: dict[int, str] = {}
        for seg in ds.rows:
            if len(out) == len(wanted):
                break
            with self.open_segment(seg.file) as f:
                seg_ids = f["ids"][()]
                hit = np.flatnonzero(np.isin(seg_ids, wanted))
                if len(hit):
                    texts = f["texts"][hit] if len(hit) > 1 else [f["texts"][int(hit[0])]]
                    for j, t in zip(hit, texts):
                        out[int(seg_ids[j])] = bytes(t).decode("utf-8", "surrogatepass")
        return out

    def dataset_keys(self, ds: Dataset, recipe: str) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, keys)`` of the dataset's rows that have a key under ``recipe``."""
        segs = ds.keys.get(recipe, ())
        return self._read_column(segs, "ids"), self._read_column(segs, "keys")

    # ---- writing

    def writer(self, wait: bool = False, timeout: float | None = None, recover: bool = False) -> "Writer":
        """The write path; ``recover`` (for repair) skips reading the current manifest."""
        return Writer(self, wait=wait, timeout=timeout, recover=recover)


class Writer:
    """The one write path. Holds the store's lock; each ``commit`` publishes one generation."""

    def __init__(self, store: Store, wait: bool = False, timeout: float | None = None, recover: bool = False) -> None:
        self.store = store
        self.recover = recover
        self.wait = wait
        self.timeout = timeout
        self._lock: FileLock | None = None
        self.snap: Snapshot = EMPTY

    def __enter__(self) -> "Writer":
        store = self.store
        try:
            for d in (store.path, store.manifest_dir, store.segment_dir):
                d.mkdir(parents=True, exist_ok=True)
            probe = store.path / f".write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise StoreError(
                f"store path {store.path} is not writable ({exc.strerror}); fix: choose a writable --store DIR "
                "or set FS_STORE"
            ) from None
        self._lock = FileLock(str(store.path / "LOCK"))
        try:
            self._lock.acquire(timeout=-1 if self.wait and self.timeout is None else (self.timeout or 0))
        except Timeout:
            raise StoreLockedError(
                f"another process is writing to {store.path} (it holds {store.path / 'LOCK'}); fix: wait for it to "
                "finish, or pass --wait to queue"
            ) from None
        if not self.recover:
            try:
                if not store.manifest_generations() and not any(
                    n.startswith("seg-") for n in os.listdir(store.segment_dir)
                ):
                    # A new store gets an empty generation 0 first, so a kill during its first commit
                    # leaves orphans beside a manifest (swept as usual), not segments without one.
                    self._publish(EMPTY)
                self.snap = store.snapshot()
                self._sweep()
            except BaseException:
                self._lock.release()
                raise
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._lock is not None:
            self._lock.release()

    def _sweep(self) -> None:
        """Remove what a killed writer left: temporary files and segments no manifest names."""
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
            for name in os.listdir(d):
                if name.startswith(".tmp-") or (d == self.store.segment_dir and name not in live):
                    os.unlink(d / name)
                    removed += 1
        if removed:
            log.info("removed %d uncommitted file(s) left by an interrupted writer", removed)

    @contextlib.contextmanager
    def _segment_file(self, seq: int, attrs: Mapping[str, Any]) -> Iterator[h5py.File]:
        """Write a segment under a temporary name; on success fsync it and rename it into place."""
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".h5", dir=self.store.segment_dir)
        os.close(fd)
        try:
            with h5py.File(tmp, "w", locking=False) as f:
                for k, v in attrs.items():
                    f.attrs[k] = v
                yield f
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, self.store.segment_path(segment_name(seq)))
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def _new_segment(self, seq: int, attrs: Mapping[str, Any], columns: Mapping[str, np.ndarray]) -> str:
        with self._segment_file(seq, attrs) as f:
            for col, data in columns.items():
                if col == "texts":
                    encoded = np.empty(len(data), dtype=object)
                    encoded[:] = [np.frombuffer(t.encode("utf-8", "surrogatepass"), np.uint8) for t in data]
                    f.create_dataset(col, data=encoded, dtype=_TEXT_DTYPE)
                elif data.ndim == 2:
                    f.create_dataset(col, data=data, **_matrix_layout(len(data), data.shape[1], data.dtype))
                else:
                    f.create_dataset(col, data=data)
        return segment_name(seq)

    def commit(
        self,
        *,
        space: Space | None = None,
        keys: np.ndarray | None = None,
        vectors: np.ndarray | None = None,
        dataset: str | None = None,
        rows: Mapping[str, Any] | None = None,
        recipe: str | None = None,
        row_keys: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> Snapshot:
        """Publish, in one generation: new vectors of ``space``, new rows of ``dataset``
        and the keys of dataset rows under ``recipe``. Any part may be empty."""
        snap = self.snap
        seq = snap.next_segment
        spaces = dict(snap.spaces)
        datasets = dict(snap.datasets)
        written: list[str] = []
        try:
            if space is not None:
                current = spaces.get(space.id, space)
                segs = current.segments
                if keys is not None and len(keys):
                    assert vectors is not None and vectors.shape == (len(keys), space.dim)
                    name = self._new_segment(
                        seq,
                        # Self-describing, so that repair can re-adopt it without any manifest.
                        {"kind": "vectors", "space": space.id,
                         "space_json": json.dumps({**space.to_json(), "segments": []}, sort_keys=True)},
                        {"keys": np.asarray(keys, dtype=KEY_DTYPE), "vectors": vectors.astype(space.dtype)},
                    )
                    written.append(name)
                    seq += 1
                    segs = segs + (Segment(name, len(keys)),)
                spaces[space.id] = Space(
                    space.id, space.fields, space.model, space.recipe, space.dim, space.dtype,
                    current.canaries or space.canaries, segs,
                )
            if dataset is not None:
                check_dataset_name(dataset)
                ds = datasets.get(dataset, Dataset(dataset))
                row_segs, key_segs = ds.rows, dict(ds.keys)
                if rows is not None and len(rows["ids"]):
                    name = self._new_segment(
                        seq,
                        {"kind": "rows", "dataset": dataset},
                        {
                            "ids": np.asarray(rows["ids"], dtype=np.int64),
                            "labels": np.asarray(rows["labels"], dtype=np.int64),
                            "digests": np.asarray(rows["digests"], dtype=KEY_DTYPE),
                            "texts": list(rows["texts"]),
                        },
                    )
                    written.append(name)
                    seq += 1
                    row_segs = row_segs + (Segment(name, len(rows["ids"])),)
                if recipe is not None and row_keys is not None and len(row_keys[0]):
                    name = self._new_segment(
                        seq,
                        {"kind": "keys", "dataset": dataset, "recipe": recipe},
                        {"ids": np.asarray(row_keys[0], np.int64), "keys": np.asarray(row_keys[1], KEY_DTYPE)},
                    )
                    written.append(name)
                    seq += 1
                    key_segs[recipe] = key_segs.get(recipe, ()) + (Segment(name, len(row_keys[0])),)
                datasets[dataset] = Dataset(dataset, row_segs, key_segs)
            new = Snapshot(snap.generation + 1, seq, spaces, datasets)
            _fsync_dir(self.store.segment_dir)
            self._publish(new)
        except (OSError, RuntimeError) as exc:  # h5py reports a failed write at close as RuntimeError
            for name in written:
                with contextlib.suppress(OSError):
                    os.unlink(self.store.segment_path(name))
            raise StoreError(
                f"could not write to store {self.store.path} ({_reason(exc)}); nothing from this batch was "
                "committed; fix: free disk space or choose another --store, then run the same command again"
            ) from None
        self.snap = new
        return new

    def _merge(self, seq: int, segs: Sequence[Segment], attrs: Mapping[str, Any]) -> Segment:
        """One new segment holding ``segs`` concatenated in order, copied in bounded chunks."""
        total = sum(s.rows for s in segs)
        with self._segment_file(seq, attrs) as out:
            offset = 0
            for seg in segs:
                with self.store.open_segment(seg.file) as f:
                    for col in f:
                        src = f[col]
                        if col not in out:
                            layout = _matrix_layout(total, src.shape[1], src.dtype) if src.ndim == 2 else {}
                            out.create_dataset(col, (total, *src.shape[1:]), dtype=src.dtype, **layout)
                        for start in range(0, seg.rows, 65536):
                            block = src[start : start + 65536]
                            out[col][offset + start : offset + start + len(block)] = block
                offset += seg.rows
        return Segment(segment_name(seq), total)

    def compact(self, max_segments: int = 16) -> bool:
        """Merge the segments of any space, dataset or key list that has more than ``max_segments``.

        Order is kept, so row numbers (and FAISS indexes built on them) stay valid. The old
        files stay until no kept manifest names them, so readers of older snapshots are safe.
        """
        snap = self.snap
        seq = snap.next_segment
        spaces = dict(snap.spaces)
        datasets = dict(snap.datasets)
        changed = False
        try:
            for sid, sp in snap.spaces.items():
                if len(sp.segments) > max_segments:
                    attrs = {"kind": "vectors", "space": sid,
                             "space_json": json.dumps({**sp.to_json(), "segments": []}, sort_keys=True)}
                    merged = self._merge(seq, sp.segments, attrs)
                    seq += 1
                    spaces[sid] = Space(sp.id, sp.fields, sp.model, sp.recipe, sp.dim, sp.dtype, sp.canaries, (merged,))
                    changed = True
            for name, ds in snap.datasets.items():
                rows, keys = ds.rows, dict(ds.keys)
                if len(rows) > max_segments:
                    rows = (self._merge(seq, rows, {"kind": "rows", "dataset": name}),)
                    seq += 1
                for recipe, segs in ds.keys.items():
                    if len(segs) > max_segments:
                        keys[recipe] = (self._merge(seq, segs, {"kind": "keys", "dataset": name, "recipe": recipe}),)
                        seq += 1
                if rows != ds.rows or keys != ds.keys:
                    datasets[name] = Dataset(name, rows, keys)
                    changed = True
            if changed:
                _fsync_dir(self.store.segment_dir)
                new = Snapshot(snap.generation + 1, seq, spaces, datasets)
                self._publish(new)
                self.snap = new
        except (OSError, RuntimeError) as exc:
            raise StoreError(f"could not compact store {self.store.path} ({_reason(exc)}); "
                             "the store is unchanged; fix: free disk space") from None
        return changed

    def replace(self, new: Snapshot) -> Snapshot:
        """Publish a snapshot built by a maintenance operation (compaction, repair)."""
        new = Snapshot(self.snap.generation + 1, max(new.next_segment, self.snap.next_segment), new.spaces, new.datasets)
        self._publish(new)
        self.snap = new
        return new

    def _publish(self, new: Snapshot) -> None:
        data = json.dumps(new.to_json(), indent=1, sort_keys=True).encode()
        atomic_write_bytes(self.store.manifest_path(new.generation), data)
        for gen in self.store.manifest_generations()[:-MANIFESTS_KEPT]:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.store.manifest_path(gen))

