"""FAISS indexes of a space: derived artifacts, named by ``index_factory`` strings, never served stale.

An index is named in one place, its FAISS factory string (``factory``):

    flat    "Flat"                          exact cosine (inner product on unit vectors)
    ivf     "IVF{nlist},Flat"               clustered lists; ``nprobe`` lists scanned a query; from
            "IVF{nlist}_HNSW32,Flat"        HNSW_QUANTIZER_LISTS lists on, found through a graph of centroids
    hnsw    "HNSW{m}"                       a graph; ``efSearch`` candidates a query
    ivfpq   "IVF{nlist},PQ{m}x{bits},Refine(SQ8)"   compressed codes, re-ranked on 8-bit vectors

``auto`` picks exact below ``AUTO_EXACT_BELOW`` vectors and IVF above (see bench/index.py).

The index file ``index/<space>.faiss`` is written atomically beside a manifest (``.json``)
holding the space fingerprint, the rows covered and the space segments that held them, a hash
of their keys, the keys' sample (``key_samples``: a hash of the keys at ``KEY_SAMPLES`` seeded positions
spread over the covered rows, the last one included), the file's sha256 and a cheap identity (size,
mtime_ns, inode, sha256 of its first and last 64 KiB). A query trusts the file by that identity and opens
it memory-mapped (``IO_FLAG_MMAP_IFC``): a cold process neither reads nor hashes the whole file. ``fs check``
(``load_checked``) still hashes all of it, and all the keys. When the identity does not match (the file was
copied or touched) the file is hashed once and the manifest refreshed. When the segments do not match
(compaction merged them: same rows in the same order, new names) the keys at the sampled positions are
read (``lookups.read_keys``: only the segments holding them) and compared; if they match, the segment list
is refreshed, else (or for a manifest without a sample) every key of the covered rows is hashed, so that a
repair that dropped a segment is still caught (and, if they match, the sample is recorded). A grown store
is added to (flat, HNSW always; IVF while the store is at most twice what the centroids were trained on);
anything else is rebuilt.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from filelock import FileLock

from featurestore.errors import UsageError
from featurestore.progress import ProgressFn
from featurestore.storage.atomic import atomic_path, atomic_write_bytes
from featurestore.storage.keys import fingerprint_hash
from featurestore.storage.lookups import read_keys
from featurestore.storage.manifest import Space
from featurestore.storage.store import Store

log = logging.getLogger(__name__)

INDEX_FORMAT = 2
KINDS = ("flat", "ivf", "hnsw", "ivfpq")
AUTO_EXACT_BELOW = 200_000  # exact search answers in well under 100 ms below this (bench/index.py)
AUTO_APPROXIMATE = "ivf"  # above it: best recall at 10x exact speed in bench/index.py, and extendable
DEFAULT_NPROBE = 32  # per query, IVF lists scanned: recall@10 >= 0.95 at 1M in bench/index.py
DEFAULT_EF = 96  # per query, HNSW candidates
DEFAULT_HNSW_M = 32
DEFAULT_PQ_M = 48  # 384-d -> 48 sub-vectors of 8 dims, 48 bytes a vector before refinement
REFINE_K_FACTOR = 4  # ivfpq: candidates re-ranked = 4 * k
TRAIN_PER_LIST = 40  # training vectors per IVF list (FAISS warns below 39)
TRAIN_MAX = 40 * 4096  # at most this many training vectors (the sample of a 1M store), however many lists
TRAIN_SLICES = 256  # the sample is read as this many contiguous runs of rows spread over the space, not a scan
KMEANS_ITER = 10  # the lists need not be optimal, only balanced enough; 10 halves the build against 25
# From this many lists on, an IVF index finds a vector's lists through an HNSW graph of its centroids
# (``IVF{nlist}_HNSW32``) instead of comparing it with every centroid: adding n vectors then costs about
# n x log(nlist) comparisons, not n x nlist, which at 10M vectors (12,649 lists) was two thirds of a 17 min
# build (docs/SCALE.md). Below it the flat quantizer is exact and cheap enough (bench/index.py).
HNSW_QUANTIZER_LISTS = 4096
QUANTIZER_M = 32  # links a centroid in the quantizer's graph
# Candidates the quantizer's graph explores to find a vector's list when training and adding (saved in the file):
# 12,649 centroids, 384-d, here: 70 CPU us a vector at 16 (the nearest centroid 95% of the time, else a near one),
# 261 at 64, 349 for the flat quantizer. A query explores at least QUERY_EF, and twice its nprobe.
QUANTIZER_EF = 16
QUERY_EF = 64
ADD_ROWS = 16384  # vectors added to an index per call: a progress report each (HNSW adds ~10k a second)
# The search knob each kind of index takes (a flat index, exact, takes none).
KNOBS = {"ivf": "nprobe", "ivfpq": "nprobe", "hnsw": "ef"}
KIND_NAMES = {"flat": "flat (exact)", "ivf": "IVF", "ivfpq": "IVF-PQ", "hnsw": "HNSW"}
MMAP_FLAGS = faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY
_EDGE = 1 << 16  # bytes hashed at each end of the file for the cheap identity
# Covered rows whose keys a cold process compares after a compaction renamed the index's segments: one in each of
# KEY_SAMPLES even strata at a seeded offset, the first and the last row. 66 reads of 32 bytes instead of hashing
# every key (at 10M rows 1.5-2.0 s of a 2.7-2.9 s cold `fs similar --id`, docs/SCALE.md).
KEY_SAMPLES = 64
KEY_SAMPLE_SEED = 24


# ----------------------------------------------------------------------------- naming an index


def set_threads(n: int) -> None:
    """Run FAISS's native code (OpenMP) in ``n`` threads, process-wide."""
    faiss.omp_set_num_threads(n)


def knn(queries: np.ndarray, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` inner products of ``queries`` against ``vectors`` (FAISS's own scan, no index): for a
    few queries its kernels beat numpy's small matrix product 2-6x (9,000 rows, 2 queries: 0.49 vs 1.06 ms
    as ``(vectors @ q.T).T``, 2.96 ms as ``q @ vectors.T``). Rows are positions in ``vectors``, -1 past the end."""
    return faiss.knn(queries, vectors, k, metric=faiss.METRIC_INNER_PRODUCT)


def normalize(vectors: np.ndarray) -> np.ndarray:
    """Unit rows for cosine similarity; all-zero rows (empty texts) stay zero."""
    v = np.ascontiguousarray(vectors, dtype=np.float32).copy()
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    np.divide(v, norms, out=v, where=norms > 0)
    return v


TRAIN_MIN_PER_LIST = 39  # FAISS's minimum of training points a list, below which it warns


def default_nlist(n: int) -> int:
    """About 4 * sqrt(n) lists, never fewer than 39 training vectors a list."""
    return max(1, min(int(round(4 * math.sqrt(max(n, 1)))), n // 39))


def choose_kind(n: int) -> str:
    return "flat" if n < AUTO_EXACT_BELOW else AUTO_APPROXIMATE


def factory_string(kind: str, n: int, dim: int, nlist: int | None = None, m: int | None = None) -> str:
    """The FAISS ``index_factory`` string of ``kind`` for ``n`` vectors of ``dim`` (``auto`` resolved)."""
    if kind == "auto":
        kind = choose_kind(n)
    if kind not in KINDS:
        raise UsageError(f"unknown index kind {kind!r}; fix: {{param}} auto, {', '.join(KINDS)}", "kind")
    if nlist is not None and nlist < 1:
        raise UsageError(f"{{param}} must be at least 1, got {nlist}", "nlist")
    if m is not None and m < 1:
        raise UsageError(f"{{param}} must be at least 1, got {m}", "m")
    if nlist is not None and kind not in ("ivf", "ivfpq"):  # was silently ignored
        raise UsageError(f"{{param}} {nlist} applies to an IVF index, not {kind}; fix: --kind ivf or ivfpq", "nlist")
    if nlist is not None and nlist > max(1, n):  # was silently lowered to the number of vectors
        raise UsageError(
            f"{{param}} {nlist} is more lists than the space's {n:,} vectors; fix: give {{param}} between 1 and "
            f"{max(1, n):,} (at most {max(1, n // TRAIN_MIN_PER_LIST):,} trains each list on "
            f"{TRAIN_MIN_PER_LIST}+ vectors)",
            "nlist",
        )
    lists = nlist or default_nlist(n)
    if kind == "flat":
        return "Flat"
    if kind == "hnsw":
        return f"HNSW{m or DEFAULT_HNSW_M}"
    # the coarse quantizer: every centroid compared (exact), or a graph of them from HNSW_QUANTIZER_LISTS on
    ivf = f"IVF{lists}" + (f"_HNSW{QUANTIZER_M}" if lists >= HNSW_QUANTIZER_LISTS else "")
    if kind == "ivf":
        return f"{ivf},Flat"
    m = m or next(s for s in (DEFAULT_PQ_M, 32, 24, 16, 12, 8, 6, 4, 3, 2, 1) if dim % s == 0)
    if dim % m:
        raise UsageError(f"{{param}} {m} does not divide the dimension {dim}; choose a divisor of {dim}", "m")
    bits = max(1, min(8, int(math.log2(max(2, n // 39)))))  # 2**bits centroids need 39 vectors each
    return f"{ivf},PQ{m}x{bits},Refine(SQ8)"


def kind_of(factory: str) -> str:
    if factory == "Flat":
        return "flat"
    if factory.startswith("HNSW"):
        return "hnsw"
    return "ivfpq" if ",PQ" in factory else "ivf"


# ----------------------------------------------------------------------------- files


@dataclass
class OpenedIndex:
    index: faiss.Index
    rows: int
    status: str  # "loaded", "extended by N rows", "built" or "rebuilt: <why>"
    factory: str = "Flat"
    mmap: bool = False  # served from a memory-mapped file (a cold process did not read it all)
    meta: dict[str, Any] = field(default_factory=dict)
    vectors: VectorFile | VectorArray | None = None  # where exact scans read a flat index's vectors

    @property
    def kind(self) -> str:
        return kind_of(self.factory)


def flat_vectors(index: faiss.IndexFlat) -> np.ndarray:
    """A flat index's vectors as an (n, d) float32 view of its own storage (mapped or in memory), no copy."""
    return faiss.rev_swig_ptr(index.get_xb(), index.ntotal * index.d).reshape(index.ntotal, index.d)


@dataclass
class VectorFile:
    """A memory-mapped flat index's file, open, read block by block for an exact scan: in a new process
    reading into one reused buffer beats the first pass over freshly mapped pages (0.6-0.8 vs 0.9-1.3 s
    over a million 384-d rows here). Opened right after the mapping and checked against it (first and
    last vector), so a file replaced since is never read in its place."""

    file: Any  # io.FileIO, closed with this object
    offset: int  # of the first vector: a flat index file ends with its vectors

    @classmethod
    def of(cls, path: str, index: faiss.Index) -> VectorFile | None:
        index = faiss.downcast_index(index)
        if not isinstance(index, faiss.IndexFlat) or index.ntotal == 0:
            return None
        try:
            f = open(path, "rb", buffering=0)
        except OSError:
            return None
        n, d = index.ntotal, index.d
        xb = flat_vectors(index)
        offset = os.fstat(f.fileno()).st_size - n * d * 4
        try:
            same = offset >= 0 and all(
                np.array_equal(np.frombuffer(os.pread(f.fileno(), d * 4, offset + row * d * 4), np.float32), xb[row])
                for row in (0, n - 1)
            )
        except (OSError, ValueError):
            same = False
        if not same:
            f.close()
            return None
        return cls(f, offset)

    def blocks(self, n: int, d: int, block: int) -> Iterator[tuple[int, np.ndarray]]:
        buf = np.empty((min(block, n), d), np.float32)
        raw = buf.reshape(-1).view(np.uint8).data  # a writable memoryview of bytes, for preadv
        for start in range(0, n, block):
            m = min(block, n - start)
            if os.preadv(self.file.fileno(), [raw[: m * d * 4]], self.offset + start * d * 4) != m * d * 4:
                raise OSError(f"index file {self.file.name} is shorter than its header says")
            yield start, buf[:m]


@dataclass
class VectorArray:
    """A flat index's vectors copied into this process's memory (a server, when they fit in half the free
    memory): anonymous memory gets huge pages, and a scan over it ran 2-3x faster here than over the
    mapped file's pages (0.16-0.2 vs 0.46-0.5 s for a million 384-d rows). ``bf16``: a bfloat16 copy that
    exact scans read first, where this CPU multiplies it faster (``with_bf16``, ``_flat_bf16``)."""

    array: np.ndarray
    bf16: Any = None  # torch.Tensor [n, d] bfloat16, or None

    def with_bf16(self) -> VectorArray:
        """Add the bfloat16 copy when torch is installed, half the copy fits in the free memory, and this CPU
        multiplies bfloat16 fast: it has AVX-512 BF16 or AMX (Zen 4 here: a 16-query scan of a million 384-d rows
        in 84 ms against float32's 179), or else a timed trial of one block says so (at most ``BF16_MIN_GAIN`` of
        numpy's float32 time, best of 5 interleaved runs). The trial alone was not enough: at a server's start it
        runs beside the other warm-up threads, and once in four starts it chose float32 on this Zen 4."""
        n, d = self.array.shape
        if n * d < BF16_MIN_VALUES:  # a small scan is fast either way: no torch import for it
            return self
        try:
            import torch
        except ImportError:
            return self
        with contextlib.suppress(ValueError, OSError, AttributeError):
            if n * d * 2 > os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2:
                return self
        torch.set_num_threads(max(1, faiss.omp_get_max_threads()))  # the server's limit for one search
        if not _cpu_multiplies_bf16():
            block = self.array[: min(n, BF16_BLOCK)]
            q = np.ascontiguousarray(block[:16])
            low, qb = torch.from_numpy(block).to(torch.bfloat16), torch.from_numpy(q).to(torch.bfloat16)
            bf16 = fp32 = float("inf")
            for _ in range(5):  # interleaved, bfloat16 first: OpenBLAS's threads spin for a while after a product
                t = time.perf_counter()
                low @ qb.T
                bf16 = min(bf16, time.perf_counter() - t)
                t = time.perf_counter()
                block @ q.T
                fp32 = min(fp32, time.perf_counter() - t)
            log.info(
                "exact scans: %d rows in bfloat16 %.1f ms, float32 %.1f ms (%d threads)",
                len(block),
                bf16 * 1e3,
                fp32 * 1e3,
                torch.get_num_threads(),
            )
            if bf16 > BF16_MIN_GAIN * fp32:
                return self
        log.info("exact scans read a bfloat16 copy of the %d vectors first", n)
        return VectorArray(self.array, torch.from_numpy(self.array).to(torch.bfloat16))

    @classmethod
    def of(cls, opened: OpenedIndex) -> VectorArray | None:
        index = faiss.downcast_index(opened.index)
        if not isinstance(index, faiss.IndexFlat) or index.ntotal == 0:
            return None
        n, d = index.ntotal, index.d
        with contextlib.suppress(ValueError, OSError, AttributeError):
            if n * d * 4 > os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2:
                return None
        return cls(np.array(flat_vectors(index)))

    def blocks(self, n: int, d: int, block: int) -> Iterator[tuple[int, np.ndarray]]:
        for start in range(0, n, block):
            yield start, self.array[start : start + block]


def index_paths(store: Store, space: Space) -> tuple[str, str]:
    """The index file and its manifest."""
    base = os.path.join(store.index_dir, space.id)
    return base + ".faiss", base + ".json"


_paths = index_paths


def remove(store: Store, space: Space) -> None:
    """Delete a space's index files; the next query rebuilds them."""
    for path in index_paths(store, space):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def files_signature(store: Store, space: Space) -> tuple[int, ...]:
    """Size, mtime and inode of the index file and its manifest: cheap evidence they did not change."""
    sig: list[int] = []
    for path in index_paths(store, space):
        try:
            st = os.stat(path)
            sig += [st.st_size, st.st_mtime_ns, st.st_ino]
        except FileNotFoundError:
            sig += [-1, -1, -1]
    return tuple(sig)


def _keys_hash(keys: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(keys).tobytes()).hexdigest()


def _file_sha256(path: str, hashed: Callable[[int], None] | None = None) -> str:
    """The file's sha256, read 4 MiB at a time; ``hashed`` is told the bytes of each read."""
    h = hashlib.sha256()
    buf = bytearray(1 << 22)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
            if hashed:
                hashed(n)
    return h.hexdigest()


def _identity(path: str) -> dict[str, Any]:
    """What a cold query compares: size, mtime_ns, inode, and a hash of the file's two ends (FAISS header)."""
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        head = f.read(_EDGE)
        f.seek(max(0, st.st_size - _EDGE))
        tail = f.read(_EDGE)
    return {
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "inode": st.st_ino,
        "edges_sha256": hashlib.sha256(head + tail).hexdigest(),
    }


def sample_positions(rows: int) -> np.ndarray:
    """The covered rows whose keys ``key_samples`` records: the first, the last, and one at a seeded offset in
    each of ``KEY_SAMPLES`` even strata of ``0..rows-1`` (ascending, distinct: fewer when the rows are few)."""
    if rows <= 0:
        return np.zeros(0, dtype=np.int64)
    edges = np.linspace(0, rows, KEY_SAMPLES + 1).astype(np.int64)
    rng = np.random.default_rng([KEY_SAMPLE_SEED, rows])
    inside = edges[:-1] + (rng.random(KEY_SAMPLES) * np.maximum(np.diff(edges), 1)).astype(np.int64)
    return np.unique(np.concatenate([[0, rows - 1], np.minimum(inside, rows - 1)])).astype(np.int64)


def _key_samples(keys: np.ndarray) -> dict[str, Any]:
    """What ``key_samples`` records of the covered rows' ``keys``: the positions and a hash of their keys."""
    positions = sample_positions(len(keys))
    return {"positions": positions.tolist(), "keys_sha256": _keys_hash(keys[positions])}


def _samples_match(store: Store, space: Space, meta: dict[str, Any]) -> bool:
    """The keys at the recorded positions are the ones recorded, read from only the segments that hold them.
    False when they differ, and for a manifest without a (well-formed) sample: the caller hashes every key."""
    sample = meta.get("key_samples")
    if not isinstance(sample, dict):
        return False
    positions, digest = sample.get("positions"), sample.get("keys_sha256")
    rows = meta["rows"]
    if (
        not isinstance(digest, str)
        or not isinstance(positions, list)
        or not positions
        or not all(isinstance(p, int) and 0 <= p < rows for p in positions)
        or positions[-1] != rows - 1  # the last indexed row is always among them
    ):
        return False
    return _keys_hash(read_keys(store, space.segments, np.asarray(positions, dtype=np.int64))) == digest


def _segments_json(space: Space) -> list[list[Any]]:
    return [[s.file, s.rows] for s in space.segments]


def _covers_same_rows(meta: dict[str, Any], space: Space) -> bool:
    """The index's rows come from segment files the space still names first, in order (files are immutable)."""
    recorded = meta.get("segments")
    if not isinstance(recorded, list) or sum(int(r) for _, r in recorded) != meta.get("rows"):
        return False
    return _segments_json(space)[: len(recorded)] == recorded


def _read_meta(meta_path: str) -> dict[str, Any]:
    with open(meta_path, "rb") as f:
        meta = json.load(f)
    if not isinstance(meta, dict):
        raise ValueError("not a JSON object")
    return meta


def _write_meta(meta_path: str, meta: dict[str, Any]) -> None:
    atomic_write_bytes(Path(meta_path), json.dumps(meta, indent=1).encode())


def _save(
    store: Store,
    space: Space,
    index: faiss.Index,
    factory: str,
    *,
    auto: bool,
    trained_rows: int,
    keys: np.ndarray | None = None,
) -> dict[str, Any]:
    faiss_path, meta_path = index_paths(store, space)
    os.makedirs(store.index_dir, exist_ok=True)
    with atomic_path(faiss_path, suffix=".faiss") as tmp:
        faiss.write_index(index, str(tmp))
    keys = store.space_keys(space) if keys is None else keys
    meta = {
        "format": INDEX_FORMAT,
        "space": space.id,
        "space_fingerprint": fingerprint_hash(space.fields),
        "factory": factory,
        "kind": kind_of(factory),
        "auto": auto,
        "rows": int(index.ntotal),
        "trained_rows": int(trained_rows),
        "segments": _segments_json(space),
        "keys_sha256": _keys_hash(keys[: index.ntotal]),
        "key_samples": _key_samples(keys[: index.ntotal]),
        "file_bytes": os.path.getsize(faiss_path),
        "file_sha256": _file_sha256(faiss_path),
        "identity": _identity(faiss_path),
        "search": {"nprobe": DEFAULT_NPROBE, "ef": DEFAULT_EF, "k_factor": REFINE_K_FACTOR},
        "faiss": faiss.__version__,
        "metric": "cosine",
    }
    _write_meta(meta_path, meta)
    return meta


# ----------------------------------------------------------------------------- checking


@dataclass
class _Verdict:
    meta: dict[str, Any] | None
    status: str  # "loaded", "built" (none yet) or "rebuilt: <why>"
    refreshed: dict[str, Any] | None = None  # a manifest to write back: the slow checks passed
    keys: np.ndarray | None = None  # every key of the space, when the checks had to read them


def _verify(
    store: Store,
    space: Space,
    keys: np.ndarray | None,
    full: bool,
    hashed: dict[str, Any] | None = None,
    on_bytes: Callable[[int], None] | None = None,
) -> _Verdict:
    """Check the index files against the space; ``full`` hashes the whole file and the keys whatever
    the cheap evidence says (``fs check``); ``hashed`` is an identity whose file this process just hashed;
    ``on_bytes`` is told the bytes of the file as they are hashed. The space's keys (``keys``, else read
    here only when the sampled keys do not settle it) come back in the verdict for a rebuild to reuse."""
    faiss_path, meta_path = index_paths(store, space)
    try:
        meta = _read_meta(meta_path)
        ident = _identity(faiss_path)
    except FileNotFoundError:
        return _Verdict(None, "built")
    except (OSError, ValueError) as exc:
        return _Verdict(None, f"rebuilt: unreadable index manifest ({exc})")
    if meta.get("format") != INDEX_FORMAT or meta.get("space_fingerprint") != fingerprint_hash(space.fields):
        return _Verdict(None, "rebuilt: index belongs to another space or format")
    if not isinstance(meta.get("factory"), str):
        return _Verdict(None, "rebuilt: index manifest names no factory string")
    refreshed = None
    if full or ident != meta.get("identity"):
        if ident != hashed and (
            ident["size"] != meta.get("file_bytes")
            or (_file_sha256(faiss_path, on_bytes) if on_bytes else _file_sha256(faiss_path)) != meta.get("file_sha256")
        ):
            return _Verdict(None, "rebuilt: index file is truncated or corrupt")
        refreshed = {**meta, "identity": ident}
    rows = meta.get("rows", -1)
    if not isinstance(rows, int) or not 0 <= rows <= space.rows:
        return _Verdict(None, "rebuilt: index rows no longer match the store")
    if full or not _covers_same_rows(meta, space):
        # Segments renamed (a compaction) but the sampled keys where they were: the same rows, nothing hashed.
        if full or not _samples_match(store, space, meta):
            keys = store.space_keys(space) if keys is None else keys
            if _keys_hash(keys[:rows]) != meta.get("keys_sha256"):
                return _Verdict(None, "rebuilt: index rows no longer match the store", keys=keys)
            if not full:  # no sample (an index saved before them) or a wrong one: the next process checks this one
                refreshed = {**(refreshed or meta), "key_samples": _key_samples(keys[:rows])}
        if not _covers_same_rows(meta, space):  # e.g. compaction merged the segments: same rows, new names
            covered, acc = [], 0
            for s in space.segments:
                if acc >= rows:
                    break
                covered.append([s.file, s.rows])
                acc += s.rows
            if acc == rows:  # recordable only when the rows end on a segment boundary
                refreshed = {**(refreshed or meta), "segments": covered}
    return _Verdict(meta, "loaded", refreshed, keys)


def _read(store: Store, space: Space, meta: dict[str, Any], mmap: bool) -> faiss.Index | None:
    faiss_path, _ = index_paths(store, space)
    try:
        index = faiss.read_index(faiss_path, MMAP_FLAGS if mmap else 0)
    except RuntimeError as exc:
        log.info("FAISS could not read %s: %s", faiss_path, exc)
        return None
    if index.ntotal != meta.get("rows") or index.d != space.dim:
        return None
    return index


def load_checked(
    store: Store, space: Space, keys: np.ndarray, on_bytes: Callable[[int], None] | None = None
) -> tuple[faiss.Index | None, str]:
    """The saved index if every check passes, whole-file sha256 and key hash included (status "loaded"),
    else None and why: "built" when there is none yet, "rebuilt: <reason>" when it does not match.
    ``on_bytes`` is told the bytes of the file as they are hashed (``fs check``'s progress)."""
    v = _verify(store, space, keys, full=True, on_bytes=on_bytes)
    if v.meta is None:
        return None, v.status
    index = _read(store, space, v.meta, mmap=True)
    if index is None:
        return None, "rebuilt: FAISS could not read the index, or its size does not match its manifest"
    return index, "loaded"


def cheap_problem(store: Store, space: Space) -> str | None:
    """What a query's cheap checks say of the saved index (``fs check --quick``), nothing hashed: None when there
    is none, or it is the file its manifest describes (the identity: size, mtime, inode, the ends' hash) and
    covers the rows of segments the space still names; else what a query will do about it."""
    faiss_path, meta_path = index_paths(store, space)
    try:
        meta = _read_meta(meta_path)
        ident = _identity(faiss_path)
    except FileNotFoundError:
        return None if not os.path.exists(meta_path) else "its file is missing; it is rebuilt before the next query"
    except (OSError, ValueError) as exc:
        return f"unreadable index manifest ({exc}); it is rebuilt before the next query"
    if meta.get("format") != INDEX_FORMAT or meta.get("space_fingerprint") != fingerprint_hash(space.fields):
        return "it belongs to another space or format; it is rebuilt before the next query"
    if ident["size"] != meta.get("file_bytes"):
        return (
            f"its file has {ident['size']:,} bytes, its manifest says {meta.get('file_bytes')}: truncated or "
            "replaced; it is rebuilt before the next query"
        )
    rows = meta.get("rows", -1)
    if not isinstance(rows, int) or not 0 <= rows <= space.rows:
        return "its rows no longer match the store; it is rebuilt before the next query"
    if ident != meta.get("identity"):
        return (
            "its file changed since it was saved (mtime, inode or the ends' hash differ); the next query hashes it "
            "and rebuilds it unless it matches ('fs check' without --quick hashes it now)"
        )
    if not _covers_same_rows(meta, space):
        return (
            "it covers segments the space no longer names (compacted since?); the next query compares their keys "
            "(a sample of them, all of them if that differs) and rebuilds it unless they match"
        )
    if rows < space.rows:
        return f"it covers {rows} of {space.rows} vectors; updated before the next query"
    return None


@contextlib.contextmanager
def _update_lock(store: Store, space: Space) -> Iterator[bool]:
    """One process updates a given index at a time; others wait and then find it current.
    A read-only store has no lock to take (yields False): the index is then built in memory."""
    try:
        os.makedirs(store.index_dir, exist_ok=True)
        lock = FileLock(os.path.join(store.index_dir, space.id + ".lock"))
        lock.acquire()
    except OSError:
        yield False
        return
    try:
        yield True
    finally:
        lock.release()


# ----------------------------------------------------------------------------- building


def _training_sample(store: Store, space: Space, count: int) -> np.ndarray:
    """About ``count`` rows spread evenly over the space: ``TRAIN_SLICES`` contiguous runs at even intervals, so
    that a 10M store reads its 0.5M-row sample (0.8 GB), not all 15 GB of its vectors."""
    count = min(count, space.rows)
    if count <= 0:
        return np.zeros((0, space.dim), np.float32)
    runs = min(TRAIN_SLICES, count)
    starts = np.linspace(0, space.rows, runs, endpoint=False).astype(np.int64)
    sizes = np.diff(np.linspace(0, count, runs + 1).astype(np.int64))
    return normalize(np.concatenate([store.read_range(space, int(a), int(a + b)) for a, b in zip(starts, sizes)]))


def training_rows(index: faiss.Index) -> int:
    """How many vectors ``train_index`` wants for ``index``: 40 a list, at most ``TRAIN_MAX`` (0: none)."""
    if index.is_trained:
        return 0
    ivf = faiss.try_extract_index_ivf(index)
    return min(TRAIN_PER_LIST * ivf.nlist, max(TRAIN_MAX, ivf.nlist)) if ivf is not None else 65536


def new_index(factory: str, dim: int) -> faiss.Index:
    """An empty index named by ``factory``, with an HNSW quantizer's search breadth set (saved with it)."""
    index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        quantizer = faiss.downcast_index(ivf.quantizer)
        if isinstance(quantizer, faiss.IndexHNSW):
            quantizer.hnsw.efSearch = QUANTIZER_EF
    return index


def train_index(index: faiss.Index, sample: np.ndarray) -> None:
    """Train ``index`` on ``sample`` (unit rows): IVF lists by ``KMEANS_ITER`` rounds of spherical k-means. With an
    HNSW quantizer, each round also assigns the sample to the centroids through a graph of them (rebuilt every
    round), not against all of them: training then costs about sample x log(nlist), like the adds."""
    ivf = faiss.try_extract_index_ivf(index)
    assigner = None
    if ivf is not None:
        ivf.cp.niter = KMEANS_ITER
        # FAISS prints its own warning (C++ stderr, not Python's warnings) below 39 points a list; the
        # CLI says it in words instead (FeatureStore.index_build's note).
        ivf.cp.min_points_per_centroid = 1
        if isinstance(faiss.downcast_index(ivf.quantizer), faiss.IndexHNSW):
            assigner = faiss.IndexHNSWFlat(index.d, QUANTIZER_M)  # L2 on unit rows: the same order as cosine
            assigner.hnsw.efSearch = QUANTIZER_EF
            ivf.clustering_index = assigner
    try:
        index.train(sample)
    finally:
        if assigner is not None:
            ivf.clustering_index = None  # FAISS does not own it, and it is not saved


def _add_rows(store: Store, space: Space, index: faiss.Index, start: int, progress: ProgressFn | None) -> None:
    total = space.rows - start
    for first, block in store.iter_vectors(space):
        end = first + len(block)
        if end <= start:
            continue
        block = block[max(0, start - first) :]
        for at in range(0, len(block), ADD_ROWS):
            part = block[at : at + ADD_ROWS]
            index.add(normalize(part))
            if progress:
                progress(len(part), total)


def _new_index(store: Store, space: Space, factory: str) -> tuple[faiss.Index, int]:
    index = new_index(factory, space.dim)
    trained = 0
    if not index.is_trained:
        train_index(index, _training_sample(store, space, training_rows(index)))
        trained = space.rows
    return index, trained


def _build(store: Store, space: Space, factory: str, progress: ProgressFn | None) -> tuple[faiss.Index, int]:
    if progress:
        progress(0, space.rows)  # the total, before training IVF lists (a while at a million vectors)
    index, trained = _new_index(store, space, factory)
    _add_rows(store, space, index, 0, progress)
    return index, trained


def _extendable(meta: dict[str, Any], rows: int) -> bool:
    kind = kind_of(meta["factory"])
    if kind in ("flat", "hnsw"):
        return True
    return rows <= 2 * int(meta.get("trained_rows", 0))  # centroids trained on at least half the rows


def _wanted_factory(space: Space, meta: dict[str, Any] | None) -> tuple[str, bool]:
    """What a rebuild makes: the kind the user built (same factory string), else the automatic choice."""
    if meta is not None and not meta.get("auto", True) and isinstance(meta.get("factory"), str):
        return meta["factory"], False
    return factory_string("auto", space.rows, space.dim), True


def served_kind(store: Store, space: Space) -> str:
    """The kind of index a query of ``space`` searches: the stored index's, else the one it would build."""
    meta = _prior_meta(store, space)
    if meta is not None and isinstance(meta.get("factory"), str):
        return kind_of(meta["factory"])
    return kind_of(_wanted_factory(space, None)[0])


def _prior_meta(store: Store, space: Space) -> dict[str, Any] | None:
    """The manifest of the index being replaced, trusted only for what kind the user asked for."""
    try:
        meta = _read_meta(index_paths(store, space)[1])
    except (OSError, ValueError):
        return None
    return meta if meta.get("space_fingerprint") == fingerprint_hash(space.fields) else None


def _stale_auto(meta: dict[str, Any], space: Space) -> bool:
    """An automatically chosen index whose kind the store's size no longer calls for."""
    return bool(meta.get("auto", True)) and kind_of(meta["factory"]) != choose_kind(space.rows)


def build_index(
    store: Store,
    space: Space,
    kind: str = "auto",
    *,
    nlist: int | None = None,
    m: int | None = None,
    progress: ProgressFn | None = None,
) -> OpenedIndex:
    """Build (or rebuild) the index of ``space`` as ``kind``; later queries and ingests keep that kind."""
    factory = factory_string(kind, space.rows, space.dim, nlist, m)
    with _update_lock(store, space) as locked:
        index, trained = _build(store, space, factory, progress)
        meta: dict[str, Any] = {}
        if locked:
            meta = _save(store, space, index, factory, auto=kind == "auto", trained_rows=trained)
    return OpenedIndex(index, space.rows, "built", factory, False, meta)


def _usable(meta: dict[str, Any], space: Space, tail_max: int) -> bool:
    """The saved index serves ``space`` as it is: it covers every row, or all but at most ``tail_max`` newer
    ones that extending it would add (not an IVF whose lists the grown store has outgrown: that is rebuilt)."""
    newer = space.rows - meta["rows"]
    return not _stale_auto(meta, space) and (newer == 0 or 0 < newer <= tail_max and _extendable(meta, space.rows))


def _loaded(covered: int, space: Space) -> str:
    newer = space.rows - covered
    return f"loaded, {newer:,} newer rows searched by brute force" if newer else "loaded"


def open_index(store: Store, space: Space, progress: ProgressFn | None = None, tail_max: int = 0) -> OpenedIndex:
    """An index of ``space`` as committed: mapped from disk, brought up to date, or rebuilt.

    With ``tail_max``, an index whose rows are the space's first rows and that lacks at most ``tail_max``
    newer ones is returned as it is (``OpenedIndex.rows`` < ``space.rows``), for the caller to search the
    newer rows by brute force: the first query after a small ingest then maps the file instead of reading
    it whole, adding the rows and writing it back (at 10M vectors, 15 GB read and written)."""
    v = _verify(store, space, None, full=False)
    if v.meta is not None and _usable(v.meta, space, tail_max):
        index = _read(store, space, v.meta, mmap=True)
        if index is not None and v.refreshed is None and _identity(index_paths(store, space)[0]) == v.meta["identity"]:
            return OpenedIndex(
                index,
                index.ntotal,
                _loaded(index.ntotal, space),
                v.meta["factory"],
                True,
                v.meta,
                VectorFile.of(index_paths(store, space)[0], index),
            )
    with _update_lock(store, space) as locked:
        # the keys the first check read, if it had to: the same snapshot, not read twice
        v = _verify(store, space, v.keys, full=False, hashed=v.refreshed and v.refreshed["identity"])
        meta, status, keys = v.meta, v.status, v.keys
        if meta is not None and _stale_auto(meta, space):
            meta, status = None, f"rebuilt: {space.rows:,} vectors call for a {choose_kind(space.rows)} index"
        if meta is not None and _usable(meta, space, tail_max):
            index = _read(store, space, meta, mmap=True)
            if index is not None:
                if v.refreshed is not None and locked:
                    with contextlib.suppress(OSError):
                        _write_meta(index_paths(store, space)[1], v.refreshed)
                return OpenedIndex(
                    index,
                    index.ntotal,
                    _loaded(index.ntotal, space),
                    meta["factory"],
                    True,
                    v.refreshed or meta,
                    VectorFile.of(index_paths(store, space)[0], index),
                )
            meta, status = None, "rebuilt: FAISS could not read the index, or its size does not match its manifest"
        index = None
        if meta is not None and _extendable(meta, space.rows):
            index = _read(store, space, meta, mmap=False)  # adding needs a private, writable copy
            if index is not None:
                start = index.ntotal
                _add_rows(store, space, index, start, progress)
                factory, auto, trained = meta["factory"], bool(meta.get("auto", True)), int(meta.get("trained_rows", 0))
                status = f"extended by {space.rows - start} rows"
        elif meta is not None:
            status = f"rebuilt: {space.rows:,} vectors, twice what its lists were trained on"
        if index is None:
            factory, auto = _wanted_factory(space, _prior_meta(store, space))
            log.info("index for space %s %s (%s)", space.id, status, factory)
            index, trained = _build(store, space, factory, progress)
        saved: dict[str, Any] = {}
        if locked:
            try:
                saved = _save(store, space, index, factory, auto=auto, trained_rows=trained, keys=keys)
            except OSError as exc:  # a read-only store still answers queries, from memory
                log.warning("could not save the index for space %s: %s", space.id, exc)
    return OpenedIndex(index, space.rows, status, factory, False, saved)


# ----------------------------------------------------------------------------- searching


def check_knobs(kind: str, exact: bool, nprobe: int | None, ef: int | None) -> None:
    """Refuse a search knob the index does not take (it would be ignored), naming the one it does take."""
    for knob, value in (("nprobe", nprobe), ("ef", ef)):
        if value is None:
            continue
        applies = "an HNSW" if knob == "ef" else "an IVF or IVF-PQ"
        if exact:
            raise UsageError(
                f"{{param}} tunes {applies} index, but [[exact]] scans every vector: {{param}} would be ignored; "
                "fix: leave out one of them",
                knob,
            )
        takes = KNOBS.get(kind)
        if takes != knob:
            fix = (
                f"tune it with [[{takes}]]"
                if takes
                else "leave it out (an exact index has nothing to tune), or build an approximate index with "
                f"'fs index build --kind {'hnsw' if knob == 'ef' else 'ivf'}'"
            )
            raise UsageError(
                f"{{param}} tunes {applies} index, but the index of this space is {KIND_NAMES.get(kind, kind)}: "
                f"{{param}} would be ignored; fix: {fix}",
                knob,
            )


def _check_nprobe(opened: OpenedIndex, nprobe: int | None) -> None:
    """Refuse an ``nprobe`` above the index's number of lists (it was lowered to it without a word); the default
    from the index manifest is still lowered to it, for a small index."""
    if nprobe is None or opened.kind not in ("ivf", "ivfpq"):
        return
    lists = faiss.extract_index_ivf(opened.index).nlist
    if nprobe > lists:
        raise UsageError(
            f"{{param}} {nprobe} is more lists than the index of this space has ({lists:,}); fix: give {{param}} "
            f"between 1 and {lists:,} ({lists:,} scans every list), or [[exact]] for brute force",
            "nprobe",
        )


def _params(opened: OpenedIndex, sel: Any, nprobe: int | None, ef: int | None) -> Any:
    defaults = opened.meta.get("search", {})
    kind = opened.kind
    if kind in ("ivf", "ivfpq"):
        ivf = faiss.extract_index_ivf(opened.index)
        probes = min(ivf.nlist, nprobe or defaults.get("nprobe", DEFAULT_NPROBE))
        p = faiss.SearchParametersIVF(sel=sel, nprobe=probes)
        if isinstance(faiss.downcast_index(ivf.quantizer), faiss.IndexHNSW):  # its lists: a wider graph search
            p = faiss.SearchParametersIVF(
                sel=sel, nprobe=probes, quantizer_params=faiss.SearchParametersHNSW(efSearch=max(QUERY_EF, 2 * probes))
            )
        if kind == "ivfpq":
            return faiss.IndexRefineSearchParameters(
                base_index_params=p, k_factor=float(defaults.get("k_factor", REFINE_K_FACTOR)), sel=sel
            )
        return p
    if kind == "hnsw":
        return faiss.SearchParametersHNSW(sel=sel, efSearch=ef or defaults.get("ef", DEFAULT_EF))
    return faiss.SearchParameters(sel=sel) if sel is not None else None


def _exact_index(opened: OpenedIndex) -> tuple[faiss.Index, Any] | None:
    """A flat view of the same vectors inside the index, or an IVF scan of every list; None for PQ codes."""
    index = faiss.downcast_index(opened.index)
    if isinstance(index, faiss.IndexFlat):
        return index, None
    if isinstance(index, faiss.IndexHNSW):
        storage = faiss.downcast_index(index.storage)
        return (storage, None) if isinstance(storage, faiss.IndexFlat) else None
    if isinstance(index, faiss.IndexIVFFlat):
        return index, index.nlist  # every list scanned with exact inner products = brute force
    return None


def top_k(blocks: Iterable[tuple[np.ndarray, np.ndarray]], n_queries: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Best ``k`` (score, row) per query over blocks of ``(scores [n_queries, m], rows [m])``, best first;
    padded with score -inf and row -1 when fewer than ``k`` candidates exist."""
    best_s = np.full((n_queries, 0), -np.inf, np.float32)
    best_r = np.zeros((n_queries, 0), np.int64)
    for s, rows in blocks:
        if best_s.shape[1] == k:  # only rows that beat some query's k-th best so far can enter: most blocks
            # of a large scan hold few of them, so the partition below sees tens of columns, not 65,536
            beats = np.flatnonzero((s > best_s.min(axis=1, keepdims=True)).any(axis=0))
            if not len(beats):
                continue
            if len(beats) < s.shape[1]:
                s, rows = s[:, beats], rows[beats]
        s_all = np.concatenate([best_s, s], axis=1)
        r_all = np.concatenate([best_r, np.broadcast_to(rows, s.shape)], axis=1)
        keep = min(k, s_all.shape[1])
        if keep:
            part = np.argpartition(-s_all, keep - 1, axis=1)[:, :keep]
            best_s, best_r = np.take_along_axis(s_all, part, 1), np.take_along_axis(r_all, part, 1)
    order = np.argsort(-best_s, axis=1, kind="stable")
    best_s, best_r = np.take_along_axis(best_s, order, 1), np.take_along_axis(best_r, order, 1)
    pad = k - best_s.shape[1]
    if pad > 0:
        best_s = np.pad(best_s, ((0, 0), (0, pad)), constant_values=-np.inf)
        best_r = np.pad(best_r, ((0, 0), (0, pad)), constant_values=-1)
    return best_s, best_r


def _exact_from_store(
    store: Store, space: Space, q: np.ndarray, k: int, allowed: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Brute force over the stored vectors, block by block (for indexes that keep only codes)."""

    def blocks() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for first, block in store.iter_vectors(space):
            s = q @ normalize(block).T
            rows = np.arange(first, first + len(block))
            if allowed is not None:
                keep = member(rows, allowed)
                s, rows = s[:, keep], rows[keep]
            yield s, rows

    return top_k(blocks(), len(q), k)


def search(
    opened: OpenedIndex,
    queries: np.ndarray,
    k: int,
    allowed_rows: np.ndarray | list[np.ndarray | None] | None = None,
    *,
    exact: bool = False,
    nprobe: int | None = None,
    ef: int | None = None,
    store: Store | None = None,
    space: Space | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` cosine scores and store rows per query; ``allowed_rows`` (sorted, unique) restricts the candidates,
    for every query, or per query as a list (None: any row).

    ``exact`` searches every vector (brute force) whatever the index kind; ``nprobe`` (IVF) and
    ``ef`` (HNSW) trade speed for recall, and a knob the index does not take is refused (``check_knobs``).
    Missing results (fewer candidates than k) have row -1.
    """
    check_knobs(opened.kind, exact, nprobe, ef)
    _check_nprobe(opened, nprobe)
    q = normalize(np.atleast_2d(queries))
    k = max(1, min(k, opened.rows))
    blas = _blas_index(opened, exact)
    if isinstance(allowed_rows, list):
        groups = restriction_groups(allowed_rows)
        if len(groups) > 1:
            if blas is not None:
                return _flat_blas(blas, q, k, groups, opened.vectors)  # one scan for every group
            scores, rows = np.full((len(q), k), -np.inf, np.float32), np.full((len(q), k), -1, np.int64)
            for a, qi in groups:
                scores[qi], rows[qi] = search(
                    opened, q[qi], k, a, exact=exact, nprobe=nprobe, ef=ef, store=store, space=space
                )
            return scores, rows
        allowed_rows = allowed_rows[0]
    if blas is not None:
        return _flat_blas(blas, q, k, allowed_rows, opened.vectors)
    sel = None
    if allowed_rows is not None:
        sel = _selector(np.ascontiguousarray(allowed_rows, dtype=np.int64))
    if not exact and opened.kind != "flat":
        return opened.index.search(q, k, params=_params(opened, sel, nprobe, ef))
    flat = _exact_index(opened)
    if flat is None:
        if store is None or space is None:
            raise ValueError("exact search of a PQ index needs the store and space")
        return _exact_from_store(store, space, q, k, allowed_rows)
    index, lists = flat
    if lists:
        return _every_list(index, q, k, sel)
    return index.search(q, k, params=faiss.SearchParameters(sel=sel) if sel is not None else None)


def _every_list(index: faiss.Index, q: np.ndarray, k: int, sel: Any) -> tuple[np.ndarray, np.ndarray]:
    """Brute force over an IVF-Flat index: every list scanned for every query, handed to FAISS as each query's
    lists, so that no quantizer search runs (an HNSW quantizer asked for all its centroids may miss some). FAISS's
    Python ``search_preassigned`` takes no search parameters (the row filter): its C++ function is called."""
    lists = index.nlist
    params = faiss.SearchParametersIVF(sel=sel, nprobe=lists)
    q = np.ascontiguousarray(q, dtype=np.float32)
    scores, rows = np.empty((len(q), k), np.float32), np.empty((len(q), k), np.int64)
    step = max(1, (1 << 21) // lists)  # queries a call: their list numbers stay under 16 MB
    for i in range(0, len(q), step):
        m = len(q[i : i + step])
        assign = np.ascontiguousarray(np.tile(np.arange(lists, dtype=np.int64), (m, 1)))
        dis = np.zeros((m, lists), np.float32)
        d, r = scores[i : i + m], rows[i : i + m]  # views: FAISS writes into them
        sp = faiss.swig_ptr
        index.search_preassigned_c(m, sp(q[i : i + m]), k, sp(assign), sp(dis), sp(d), sp(r), False, params)
    return scores, rows


def _blas_index(opened: OpenedIndex, exact: bool) -> faiss.IndexFlat | None:
    """The flat inner-product index a search scans with numpy's matrix product (``_flat_blas``), or None when
    FAISS (an approximate search, an IVF scan of every list) or the store (PQ codes) answers it."""
    if not exact and opened.kind != "flat":
        return None
    flat = _exact_index(opened)
    if flat is None or flat[1] or flat[0].metric_type != faiss.METRIC_INNER_PRODUCT:
        return None
    return flat[0]


def restriction_groups(allowed: list[np.ndarray | None]) -> list[tuple[np.ndarray | None, list[int]]]:
    """The queries of a per-query ``allowed`` list grouped by restriction object: (restriction, query numbers)."""
    groups: dict[int, tuple[np.ndarray | None, list[int]]] = {}
    for i, a in enumerate(allowed):
        groups.setdefault(id(a), (a, []))[1].append(i)
    return list(groups.values())


def mask_disallowed(scores: np.ndarray, rows: np.ndarray, groups: list[tuple[np.ndarray | None, list[int]]]) -> None:
    """Score -inf, in place, each group's queries (rows of ``scores``) against the ``rows`` (its columns) that
    the group's restriction leaves out."""
    for restriction, qi in groups:
        if restriction is not None:
            out = ~member(rows, restriction)
            if out.any():
                scores[np.ix_(np.asarray(qi), np.flatnonzero(out))] = -np.inf


def member(rows: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """``np.isin(rows, allowed)`` for sorted unique ``allowed``: binary search, no sort of a million allowed rows."""
    if not len(allowed):
        return np.zeros(len(rows), dtype=bool)
    pos = np.minimum(np.searchsorted(allowed, rows), len(allowed) - 1)
    return allowed[pos] == rows


def _selector(rows: np.ndarray) -> Any:
    """FAISS's filter for sorted unique ``rows``: a range when they are contiguous (a dataset ingested into its
    own space, or first: one comparison a candidate), else a set (built per query, in time linear in its size)."""
    if len(rows) and int(rows[-1]) - int(rows[0]) + 1 == len(rows):
        return faiss.IDSelectorRange(int(rows[0]), int(rows[-1]) + 1)
    return faiss.IDSelectorBatch(rows)


def _cpu_multiplies_bf16() -> bool:
    """The CPU has bfloat16 dot-product instructions (AVX-512 BF16 or AMX), by its flags (Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


FLAT_BLOCK = 65536  # stored rows scored per matrix product: 65,536 x 384 x 4 B = 96 MB of vectors a block
#: |bfloat16 score - float32 score| of unit vectors is at most this plus ``d * 2^-23`` (float32 sums over d
#: dimensions): each factor rounded (2u + u^2), the score rounded to bfloat16 on output (u(1 + 2u)), u = 2^-8
BF16_ERROR = 3 * 2.0**-8 + 4 * 2.0**-16
BF16_BLOCK = 262144  # rows a bfloat16 product takes at once (100 MB): torch's fixed cost a call is ~3 ms here
#: rows a query keeps from the bfloat16 pass, beyond its k, to re-score in float32. 1M clustered 384-d rows,
#: 256 stored rows as queries: 256 left 8 queries to a float32 rescan (185 ms a 16-query scan), 1,024 none
#: (113 ms), 4,096 none (181 ms: the selection and re-scoring grow)
BF16_CANDIDATES = 1024
BF16_MIN_VALUES = 1 << 22  # a bfloat16 copy is considered from 4M values on (11k rows of 384-d)
BF16_MIN_GAIN = 0.7  # use the bfloat16 pass where a block takes at most this share of float32's time


def _flat_blas(
    index: faiss.IndexFlat,
    q: np.ndarray,
    k: int,
    allowed: np.ndarray | list[tuple[np.ndarray | None, list[int]]] | None,
    vectors: VectorFile | VectorArray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k over a flat index's own vectors (a view, mapped or in memory, or read
    from its file) with numpy's matrix product: measured faster than FAISS's flat scan on these CPUs
    (bench/index.py). ``allowed`` restricts every query, or is a list of (restriction, query numbers):
    one scan for all, each group's disallowed rows scored -inf (a server's stored-text and per-dataset
    queries share it)."""
    n = index.ntotal
    source = vectors if vectors is not None else VectorArray(flat_vectors(index))  # the view itself, not a copy
    if (
        isinstance(source, VectorArray)
        and source.bf16 is not None
        and (not isinstance(allowed, np.ndarray) or 2 * len(allowed) > n)
    ):  # a few allowed rows: read only them
        return _flat_bf16(index, source, q, k, allowed)
    per_query = allowed if isinstance(allowed, list) else None
    # each group's restriction as a mask over all rows, once a scan (``_allowed_mask``)
    masks = [(_allowed_mask(a, n), qi) for a, qi in per_query if a is not None] if per_query is not None else []

    def blocks() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for start, block in source.blocks(n, index.d, FLAT_BLOCK):
            rows = np.arange(start, start + len(block))
            if isinstance(allowed, np.ndarray):  # one restriction for every query
                keep = member(rows, allowed)
                block, rows = block[keep], rows[keep]
            if not len(rows):
                continue
            # block @ q.T, not q @ block.T: over memory-mapped rows the transposed product re-reads the
            # block (3.1 vs 1.1 s for a query over a million mapped 384-d rows here)
            s = (block @ q.T).T
            for mask, qi in masks:
                out = np.flatnonzero(~mask[start : start + len(rows)])
                if len(out):
                    s[np.ix_(np.asarray(qi), out)] = -np.inf
            yield s, rows

    scores, rows = top_k(blocks(), len(q), k)
    if per_query is not None:
        rows[np.isneginf(scores)] = -1  # fewer allowed rows than k: missing, as FAISS pads
    return scores, rows


def _allowed_mask(allowed: np.ndarray, n: int) -> np.ndarray:
    """Sorted unique allowed rows as a boolean mask over rows 0..n-1: a block's disallowed rows are then a
    slice of it (binary searches of each block's rows in a million allowed rows took a tenth of a restricted
    float32 scan and a fifth of a bfloat16 one)."""
    mask = np.zeros(n, dtype=bool)
    mask[allowed[allowed < n]] = True
    return mask


def _flat_bf16(
    index: faiss.IndexFlat,
    source: VectorArray,
    q: np.ndarray,
    k: int,
    allowed: np.ndarray | list[tuple[np.ndarray | None, list[int]]] | None,
) -> tuple[np.ndarray, np.ndarray]:
    """``_flat_blas``'s answer (the exact float32 top-k) from a scan of the bfloat16 copy, half the bytes: each
    query keeps its best ``k + BF16_CANDIDATES`` rows by bfloat16 score; every row whose float32 score could
    be in the top k scores within twice the error bound of the k-th best bfloat16 score, so when the kept rows
    reach below that line they hold the whole top k, and their float32 scores give it. A query whose kept
    rows do not (more near-ties than kept) is scanned again in float32."""
    import torch

    n = index.ntotal
    keep = k + BF16_CANDIDATES
    margin = 2 * (BF16_ERROR + index.d * 2.0**-23)  # a row in the float32 top k scores at least kth - margin
    per_query = allowed if isinstance(allowed, list) else None
    qb = torch.from_numpy(np.ascontiguousarray(q)).to(torch.bfloat16)

    # each restriction as a mask over all rows, once a scan (``_allowed_mask``)
    groups = (
        per_query
        if per_query is not None
        else [(allowed, list(range(len(q))))]
        if isinstance(allowed, np.ndarray)
        else []
    )
    masks = [(_allowed_mask(a, n), torch.tensor(qi)) for a, qi in groups if a is not None]
    low_parts, cand_parts = [], []
    for start in range(0, n, BF16_BLOCK):
        block_rows = np.arange(start, min(n, start + BF16_BLOCK))
        s = source.bf16[start : start + BF16_BLOCK] @ qb.T  # [rows, queries], bfloat16
        for mask, qi in masks:
            out = np.flatnonzero(~mask[start : start + BF16_BLOCK])
            if len(out):
                s[torch.from_numpy(out)[:, None], qi[None, :]] = float("-inf")
        # torch's selection, on the product as it comes: numpy's argpartition took as long as the product
        best = torch.topk(s, min(keep, s.shape[0]), dim=0)
        low_parts.append(best.values.float().numpy().T)
        cand_parts.append(block_rows[best.indices.numpy().T])
    low_all, cand_all = np.concatenate(low_parts, axis=1), np.concatenate(cand_parts, axis=1)
    order = np.argsort(-low_all, axis=1, kind="stable")[:, :keep]
    low, cand = np.take_along_axis(low_all, order, 1), np.take_along_axis(cand_all, order, 1)
    if low.shape[1] < keep:  # fewer rows than kept: pad as top_k does
        pad = keep - low.shape[1]
        low = np.pad(low, ((0, 0), (0, pad)), constant_values=-np.inf)
        cand = np.pad(cand, ((0, 0), (0, pad)), constant_values=-1)
    scores = np.full((len(q), k), -np.inf, np.float32)
    rows = np.full((len(q), k), -1, np.int64)
    again = []
    for i in range(len(q)):
        valid = ~np.isneginf(low[i])
        kth = low[i][min(k, int(valid.sum())) - 1] if valid.any() else -np.inf
        if valid.all() and low[i][-1] >= kth - margin:
            again.append(i)  # rows beyond the kept ones might still belong to the top k
            continue
        near = cand[i][valid & (low[i] >= kth - margin)]
        if not len(near):
            continue
        exact = np.einsum("ij,j->i", source.array[near], q[i])  # not BLAS: its spinning threads would slow torch's
        best = np.argsort(-exact, kind="stable")[:k]
        scores[i, : len(best)], rows[i, : len(best)] = exact[best], near[best]
    if again:
        sub: Any = allowed
        if per_query is not None:
            sub = [(a, [again.index(j) for j in qi if j in again]) for a, qi in per_query]
            sub = [(a, qi) for a, qi in sub if qi]
        plain = VectorArray(source.array)
        scores[again], rows[again] = _flat_blas(index, q[again], k, sub, plain)
    return scores, rows
