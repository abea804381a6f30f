"""``fs check`` and ``fs repair``: verify a store end to end, and mend what can be mended
without ever dropping a committed vector that is still readable."""

from __future__ import annotations

import dataclasses
import os
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import h5py
import numpy as np

from featurestore.errors import ModelError, StoreError, UsageError
from featurestore.progress import ProgressFn
from featurestore.query import index as faiss_index
from featurestore.storage import lookups
from featurestore.storage.keys import KEY_DTYPE
from featurestore.storage.manifest import EMPTY, Dataset, Segment, Snapshot, Space
from featurestore.storage.store import TEXT_COLUMNS, Store, Writer, as_text_column, not_ours, segment_seq

_SEGMENT_NAME = re.compile(r"^seg-\d+\.h5$")
# What identifies a segment's rows: keys and ids are unique within a list; label updates are (id, label) pairs.
_CONTENT = {"vectors": ("keys",), "rows": ("ids",), "keys": ("ids",), "labels": ("ids", "labels")}


@dataclass
class Report:
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)
    stats: dict[str, int] = field(default_factory=dict)
    not_verified: list[str] = field(default_factory=list)  # what a quick check left out

    @property
    def ok(self) -> bool:
        return not self.errors


@dataclass(frozen=True)
class CheckPlan:
    """What a check is about to read, known before it reads it: the CLI says it up front."""

    quick: bool
    files: int  # segment and index files read in full
    bytes: int  # their size
    read_rate: float  # bytes a second, measured on a short read of the largest of them (0: nothing to read)

    @property
    def seconds(self) -> float:
        return self.bytes / self.read_rate if self.read_rate > 0 else 0.0


PlanFn = Callable[[CheckPlan], None]
QUICK_SAMPLE_BYTES = 128 << 20  # a quick check reads whole segments, chosen at random, up to about this much
_PROBE_BYTES = 32 << 20  # read, timed, to measure the read rate a plan states
_PROBE_PIECE = 4 << 20
_VECTOR_BLOCK = 65536  # rows of vectors checked at once (96 MB of 384-d float32)

# what a column must look like, by segment kind: its shape past the row count (the vectors' is the space's dim)
_COLUMNS: dict[str, dict[str, tuple[int, ...]]] = {
    "rows": {"ids": (), "labels": (), "texts": ()},
    "keys": {"ids": (), "keys": ()},
    "labels": {"ids": (), "labels": ()},
}


class _Sorted:
    """Values (fixed-width keys, or ids as UTF-8 bytes) with a 64-bit code each (a key's first 8 bytes, an id's
    hash), sorted by code: duplicates and membership in a few NumPy passes, every code match confirmed on the
    value itself. What ``np.unique``/``np.isin`` over a Python set of ten million values did in minutes."""

    def __init__(self, values: np.ndarray, codes: np.ndarray) -> None:
        self.values, self.raw_codes = values, codes  # in the values' order
        self.order = np.argsort(codes, kind="stable")
        self.codes = codes[self.order]

    def duplicates(self) -> int:
        """How many values repeat an earlier one (``len(values) - len(np.unique(values))``)."""
        same = np.flatnonzero(self.codes[1:] == self.codes[:-1])
        if not len(same):
            return 0
        rows = np.unique(np.concatenate([self.order[same], self.order[same + 1]]))
        shared = self.values[rows].tolist()  # values whose code another value shares: few
        return len(shared) - len(set(shared))

    def missing(self, values: np.ndarray, codes: np.ndarray) -> int:
        """How many of ``values`` (with their ``codes``) are not among these values."""
        if not len(values):
            return 0
        if not len(self.codes):
            return len(values)
        pos = np.searchsorted(self.codes, codes)
        at = np.minimum(pos, len(self.codes) - 1)
        coded = self.codes[at] == codes
        found = np.zeros(len(values), dtype=bool)
        found[coded] = self.values[self.order[at[coded]]] == values[coded]
        for i in np.flatnonzero(coded & ~found):  # a code shared by other values: look along its run
            j = int(pos[i])
            while j < len(self.codes) and self.codes[j] == codes[i] and not found[i]:
                found[i] = self.values[self.order[j]] == values[i]
                j += 1
        return int((~found).sum())


def _ids(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """An ids column as stored (UTF-8 bytes; schema-1 integers) -> (UTF-8 bytes objects, their id hashes)."""
    if values.dtype.kind != "O" or (len(values) and not isinstance(values[0], bytes)):
        values = lookups._objects([s.encode("utf-8", "surrogatepass") for s in as_text_column(values, "ids")])
    return values, lookups.column_hashes(values)


def _keys(values: np.ndarray) -> _Sorted:
    keys = np.ascontiguousarray(values, dtype=KEY_DTYPE)
    return _Sorted(keys, lookups.key_prefixes(keys))


def _id_set(parts: list[tuple[np.ndarray, np.ndarray]]) -> _Sorted:
    values = lookups._objects([]) if not parts else np.concatenate([v for v, _ in parts])
    codes = np.zeros(0, np.uint64) if not parts else np.concatenate([c for _, c in parts])
    return _Sorted(values, codes)


def _segment_problem(store: Store, seg: Segment, kind: str, columns: dict[str, tuple]) -> str | None:
    """None if the segment opens and has the expected kind, columns and row count."""
    problem, _ = _read_segment(store, seg, kind, columns, ())
    return problem


def _read_segment(
    store: Store,
    seg: Segment,
    kind: str,
    columns: dict[str, tuple],
    read: tuple[str, ...],
    on_vectors: Callable[[np.ndarray], None] | None = None,
) -> tuple[str | None, dict[str, np.ndarray]]:
    """Open a segment once: check its kind, columns and row count (what its header says), then read the columns
    ``read``, the vectors block by block through ``on_vectors``. A problem, or None and the columns read."""
    path = store.segment_path(seg.file)
    if not path.exists():
        return f"segment {seg.file} is missing", {}
    out: dict[str, np.ndarray] = {}
    try:
        with h5py.File(path, "r", locking=False) as f:  # HDF5 refuses a file shorter than its header says
            if f.attrs.get("kind") != kind:
                return f"segment {seg.file} is a {f.attrs.get('kind')!r} segment, expected {kind!r}", {}
            for col, shape_tail in columns.items():
                if col not in f:
                    return f"segment {seg.file} lacks column {col!r}", {}
                if f[col].shape[0] != seg.rows or tuple(f[col].shape[1:]) != shape_tail:
                    return f"segment {seg.file} column {col!r} has shape {f[col].shape}, expected ({seg.rows}, ...)", {}
            for col in read:
                out[col] = f[col][()]
            if on_vectors is not None:
                dset = f["vectors"]
                for start in range(0, seg.rows, _VECTOR_BLOCK):
                    on_vectors(dset[start : start + _VECTOR_BLOCK])
    except OSError as exc:
        return f"segment {seg.file} cannot be read ({exc})", {}
    return None, out


def _nonfinite(block: np.ndarray) -> int:
    """Rows of ``block`` holding a NaN or an infinity (one pass over a finite block, the usual case)."""
    ok = np.isfinite(block)
    return 0 if ok.all() else int((~ok.all(axis=1)).sum())


def _size(path: os.PathLike | str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _read_rate(paths: list[Any]) -> float:
    """Bytes a second this process reads the store's files at (cached or not, as the check will find them):
    ``_PROBE_BYTES`` in ``_PROBE_PIECE`` reads spread over the largest files, timed."""
    sized = sorted(((_size(p), p) for p in paths), key=lambda t: -t[0])
    pieces = [(p, max(0, size // 2 - _PROBE_PIECE // 2)) for size, p in sized[: _PROBE_BYTES // _PROBE_PIECE] if size]
    done, t = 0, time.perf_counter()
    for path, offset in pieces:
        try:
            with open(path, "rb", buffering=0) as f:
                done += len(os.pread(f.fileno(), _PROBE_PIECE, offset))
        except OSError:
            continue
    seconds = time.perf_counter() - t
    return done / seconds if done and seconds > 0 else 0.0


class _Progress:
    """Bytes of segment and index files checked: ``progress(bytes, total bytes)``, never past the total."""

    def __init__(self, progress: ProgressFn | None, total: int) -> None:
        self.progress, self.total, self.done = progress, total, 0
        if progress:
            progress(0, total)

    def __call__(self, n: int) -> None:
        n = max(0, min(int(n), self.total - self.done))
        self.done += n
        if self.progress and n:
            self.progress(n, self.total)


def check(
    store: Store, progress: ProgressFn | None = None, *, quick: bool = False, plan: PlanFn | None = None
) -> Report:
    """Schema, counts, unique keys, finite vectors, dims, resolvable keys, index files, orphans: every segment read
    once, as it streams from disk, and every index file hashed. ``quick``: the manifest, every segment's header
    (present, readable, its kind, columns and row counts), every index's cheap identity (as a query checks it),
    and whole segments chosen at random (``QUICK_SAMPLE_BYTES``); ``Report.not_verified`` says what it left out.
    ``plan`` is told what will be read before it is; ``progress`` counts the bytes read and hashed."""
    r = Report()
    try:
        store.require_existing()
        snap = store.snapshot()
    except StoreError as exc:
        r.errors.append(str(exc))
        return r
    r.stats = {"generation": snap.generation, "spaces": len(snap.spaces), "datasets": len(snap.datasets)}
    sample = _quick_sample(store, snap) if quick else None
    read_fully = [store.segment_path(s.file) for s in _all_segments(snap) if sample is None or s.file in sample] + (
        [] if quick else [faiss_index.index_paths(store, sp)[0] for sp in snap.spaces.values()]
    )
    sizes = {str(p): _size(p) for p in read_fully}
    total = sum(sizes.values())
    if plan:
        plan(CheckPlan(quick, sum(1 for s in sizes.values() if s), total, _read_rate(read_fully) if total else 0.0))
    advance = _Progress(progress, total)

    def seg_bytes(seg: Segment) -> int:
        return sizes.get(str(store.segment_path(seg.file)), 0)

    keys_by_recipe: dict[str, list[np.ndarray]] = {}
    for sp in snap.spaces.values():
        problems, parts, nonfinite = [], [], 0
        for seg in sp.segments:
            full = sample is None or seg.file in sample
            size = seg_bytes(seg)

            rows_done = 0

            def on_vectors(block: np.ndarray, seg: Segment = seg, size: int = size) -> None:
                nonlocal nonfinite, rows_done
                nonfinite += _nonfinite(block)
                before, rows_done = rows_done, rows_done + len(block)
                advance(size * rows_done // max(1, seg.rows) - size * before // max(1, seg.rows))  # sums to size

            problem, cols = _read_segment(
                store,
                seg,
                "vectors",
                {"keys": (), "vectors": (sp.dim,)},
                ("keys",) if full else (),
                on_vectors if full else None,
            )
            if problem:
                problems.append(problem)
            elif full:
                parts.append(cols["keys"])
        r.errors.extend(problems)
        if nonfinite:
            r.errors.append(f"space {sp.id} has {nonfinite} vectors with NaN/Inf")
        if problems:
            continue
        r.stats[f"vectors:{sp.id}"] = sp.rows
        if quick:
            keys = _keys(np.concatenate(parts) if parts else np.zeros(0, KEY_DTYPE))
            if (dup := keys.duplicates()) > 0:
                r.errors.append(f"space {sp.id} has {dup} duplicate keys within the segments read")
            _check_index_identity(store, sp, r)
            continue
        all_keys = np.concatenate(parts) if parts else np.zeros(0, KEY_DTYPE)
        keys = _keys(all_keys)
        if (dup := keys.duplicates()) > 0:
            r.errors.append(f"space {sp.id} has {dup} duplicate keys")
        keys_by_recipe.setdefault(sp.recipe, []).append(all_keys)
        _check_index(store, sp, all_keys, r, advance)
    known = {recipe: _keys(np.concatenate(parts)) for recipe, parts in keys_by_recipe.items()}
    for ds in snap.datasets.values():
        bad, read = _read_dataset(store, ds, sample, advance, seg_bytes)
        r.errors.extend(bad)
        if bad:
            continue
        r.stats[f"rows:{ds.name}"] = ds.count
        if quick:
            continue
        ids = _id_set(read["rows"])
        if ids.duplicates():
            r.errors.append(f"dataset {ds.name!r} has duplicate ids")
        if ds.labels:
            upd = _id_set(read["labels"])
            if ids.missing(upd.values, upd.raw_codes):
                r.errors.append(f"dataset {ds.name!r} has label updates for unknown ids")
        for recipe in ds.keys:
            kid = _id_set(read[f"keys:{recipe}"])
            if kid.duplicates() or ids.missing(kid.values, kid.raw_codes):
                r.errors.append(f"dataset {ds.name!r} keys under {recipe} name unknown or repeated ids")
            kkeys = np.concatenate(read[f"keykeys:{recipe}"]) if read[f"keykeys:{recipe}"] else np.zeros(0, KEY_DTYPE)
            kkeys = np.ascontiguousarray(kkeys, dtype=KEY_DTYPE)
            space_keys = known.get(recipe) or _keys(np.zeros(0, KEY_DTYPE))
            unresolved = space_keys.missing(kkeys, lookups.key_prefixes(kkeys))
            if unresolved:
                r.errors.append(f"dataset {ds.name!r}: {unresolved} keys under {recipe} resolve to no stored vector")
    if quick:
        r.not_verified = _not_verified(snap, sample or set())
    _check_files(store, snap, r)
    _check_tuned(store, r, quick)
    return r


def _check_tuned(store: Store, r: Report, quick: bool) -> None:
    """Tuned models (``fs tune``): each record readable and, in a full check, every file's sha256 as recorded;
    an interrupted tuning's folder is a warning (``fs gc`` removes it)."""
    from featurestore.embedders import tuned

    root = tuned.tuned_root(store.path)
    for p in sorted(root.iterdir()) if root.is_dir() else []:
        if p.name.startswith(".tmp-"):
            r.warnings.append(f"{p} is left by an interrupted fs tune (not a model); fs gc removes it")
            continue
        if not (p / tuned.META).is_file():
            r.warnings.append(f"{p} is not a tuned model (no {tuned.META}): not written by fs tune, left in place")
            continue
        try:
            model = tuned.open_tuned(store.path, p.name)
        except (ModelError, UsageError) as exc:
            r.errors.append(str(exc))
            continue
        r.stats["tuned_models"] = r.stats.get("tuned_models", 0) + 1
        if quick:
            r.not_verified.append(f"the files of tuned model {model.name!r} (sha256)")
        else:
            r.errors += tuned.verify_files(model)


def _all_segments(snap: Snapshot) -> list[Segment]:
    segs = [s for sp in snap.spaces.values() for s in sp.segments]
    return segs + [s for ds in snap.datasets.values() for s in ds.segments()]


def _quick_sample(store: Store, snap: Snapshot) -> set[str]:
    """Segment files a quick check reads in full: chosen at random, whole files while they fit in
    ``QUICK_SAMPLE_BYTES`` (so a store of a few large segments may have none read in full)."""
    segs = list({s.file: s for s in _all_segments(snap)})
    random.shuffle(segs)
    chosen, budget = set(), QUICK_SAMPLE_BYTES
    for name in segs:
        size = _size(store.segment_path(name))
        if 0 < size <= budget:
            chosen.add(name)
            budget -= size
    return chosen


def _read_dataset(
    store: Store,
    ds: Dataset,
    sample: set[str] | None,
    advance: _Progress,
    seg_bytes: Callable[[Segment], int],
) -> tuple[list[str], dict[str, list[Any]]]:
    """Check every segment of a dataset (headers; in full where ``sample`` is None or names it): the problems,
    and the columns read: ``rows`` and ``labels`` as (id bytes, id hashes) parts, ``keys:R`` likewise for the
    ids keyed under recipe R, ``keykeys:R`` their keys."""
    bad: list[str] = []
    read: dict[str, list[Any]] = {"rows": [], "labels": []}
    lists: list[tuple[str, str, tuple[Segment, ...]]] = [("rows", "rows", ds.rows), ("labels", "labels", ds.labels)]
    lists += [("keys", f"keys:{recipe}", segs) for recipe, segs in ds.keys.items()]
    for kind, name, segs in lists:
        read.setdefault(name, [])
        if kind == "keys":
            read["keykeys:" + name.split(":", 1)[1]] = []
        for seg in segs:
            full = sample is None or seg.file in sample
            cols_read = ("ids", "keys") if kind == "keys" else ("ids",)
            problem, cols = _read_segment(store, seg, kind, _COLUMNS[kind], cols_read if full else ())
            if problem:
                bad.append(problem)
            elif full:
                read[name].append(_ids(cols["ids"]))
                if kind == "keys":
                    read["keykeys:" + name.split(":", 1)[1]].append(cols["keys"])
            if full:
                advance(seg_bytes(seg))
    return bad, read


def _not_verified(snap: Snapshot, sample: set[str]) -> list[str]:
    segs = {s.file for s in _all_segments(snap)}
    unread = len(segs - sample)
    out = []
    if unread:
        out.append(
            f"{unread:,} of {len(segs):,} segment files were checked by their headers only (present, readable, "
            "kind, columns, row counts), not read in full: their vectors' values (NaN/Inf) and their keys and ids"
        )
    out.append(
        "keys unique across segments, dataset keys resolving to stored vectors, unique ids, label updates and "
        "keys naming known ids"
    )
    if snap.spaces:
        out.append("index files' sha256 and key hashes (their cheap identity was compared, as a query does)")
    return out


def _check_files(store: Store, snap: Snapshot, r: Report) -> None:
    """Files in the store's folders that no kept manifest names, or that featurestore did not write."""
    live = store.kept_files(snap)
    if store.segment_dir.is_dir():
        names = os.listdir(store.segment_dir)
        extra = [n for n in names if n not in live and not not_ours(store.segment_dir, n)]
        for d in (store.segment_dir, store.manifest_dir):
            for n in sorted(os.listdir(d)) if d.is_dir() else ():
                if not_ours(d, n):
                    r.warnings.append(f"{d.name}/{n} is not a file featurestore writes: not ours, left in place")
        if extra:
            r.warnings.append(
                f"{len(extra)} segment file(s) that no kept manifest names (superseded by compaction "
                "or left by an interrupted writer; removed by the next ingest or by 'fs repair')"
            )


def _check_index(
    store: Store, sp: Space, keys: np.ndarray, r: Report, on_bytes: Callable[[int], None] | None = None
) -> None:
    """The same checks a query runs before it trusts an index file (file hash included)."""
    index, status = faiss_index.load_checked(store, sp, keys, on_bytes)
    if index is None and status != "built":
        r.warnings.append(f"index of space {sp.id}: {status.split(': ', 1)[1]}; it is rebuilt before the next query")
    elif index is not None and index.ntotal < len(keys):
        r.warnings.append(
            f"index of space {sp.id} covers {index.ntotal} of {len(keys)} vectors; updated before the next query"
        )


def _check_index_identity(store: Store, sp: Space, r: Report) -> None:
    """A quick check's view of an index: what a query's cheap checks say, nothing hashed."""
    problem = faiss_index.cheap_problem(store, sp)
    if problem:
        r.warnings.append(f"index of space {sp.id}: {problem}")


def _orphans(store: Store, named: set[str]) -> list[str]:
    """Segment files no segment list names, in write order (a merge after the segments it was made from)."""

    def order(name: str) -> tuple[int, int, str]:
        # seg-NNNNNN by number (the width grows past a million); a distributed ingest's named files first
        return (1, segment_seq(name), name) if _SEGMENT_NAME.match(name) else (0, 0, name)

    names = [
        n
        for n in os.listdir(store.segment_dir)
        if n not in named and not n.startswith(".tmp-") and not not_ours(store.segment_dir, n)
    ]
    return sorted(names, key=order)


class _Readoption:
    """Repair's re-adoption into one segment list: a space's vectors, a dataset's rows, its keys under a
    recipe, or its label updates.

    A compaction's merged segment holds the same rows as the segments it was made from, and both may lie
    in the segment directory beside a manifest that names either: falling back to an older generation finds
    the merge as an orphan, falling back to the compaction's finds its sources (kept for older readers). An
    orphan is adopted only where it adds rows: left out when the list already holds all its rows, put in
    place of the segments it holds (sources the list lost as unreadable) when it holds more. Which segment
    holds which rows comes from the sources a compaction records (``merged_from``) and, for segments
    written before it did, from the contents: keys and ids are unique within their list, so any shared one
    is the same row. Label updates may repeat an id: without recorded sources, an orphan equal to a run of
    two or more listed updates (what a merge writes) or, written before the readable generation, part of
    one listed segment (what a merge was made from) is taken as already applied.
    """

    def __init__(self, store: Store, kind: str, segments: tuple[Segment, ...], next_segment: int) -> None:
        self.store, self.kind, self.next_segment = store, kind, next_segment
        self.segments = list(segments)
        self._leaves: dict[str, frozenset[str]] = {}
        self._contents: dict[str, Any] = {}

    def leaves(self, name: str) -> frozenset[str]:
        """The unmerged segments that ``name`` holds: itself, or those of the segments it was merged from."""
        if name not in self._leaves:
            self._leaves[name] = frozenset((name,))  # also ends a cycle that bad attributes could make
            info = self.store.segment_info(name)
            if info is not None and info.merged_from:
                self._leaves[name] = frozenset().union(*(self.leaves(src) for src in info.merged_from))
        return self._leaves[name]

    def contents(self, name: str) -> Any:
        """The set of keys (vectors) or ids (rows, keys) a segment holds, label updates as a tuple of
        (id, label) pairs; None if it cannot be read."""
        if name not in self._contents:
            try:
                with self.store.open_segment(name) as f:
                    cols = [as_text_column(f[c][()], c) if c in TEXT_COLUMNS else f[c][()] for c in _CONTENT[self.kind]]
            except (StoreError, OSError, KeyError):
                self._contents[name] = None
            else:
                values = cols[0].tolist() if len(cols) == 1 else list(zip(*(c.tolist() for c in cols)))
                self._contents[name] = tuple(values) if self.kind == "labels" else frozenset(values)
        return self._contents[name]

    def _holds(self, outer: Sequence[str], inner: str) -> bool:
        """Whether the segments ``outer`` together hold every row of ``inner``."""
        if self.leaves(inner) <= frozenset().union(*map(self.leaves, outer)):
            return True
        if self.kind == "labels":
            return False
        parts = [self.contents(n) for n in (inner, *outer)]
        return None not in parts and parts[0] <= frozenset().union(*parts[1:])

    def _shares(self, a: str, b: str) -> bool:
        if self.leaves(a) & self.leaves(b):
            return True
        ca, cb = (None, None) if self.kind == "labels" else (self.contents(a), self.contents(b))
        return ca is not None and cb is not None and not ca.isdisjoint(cb)

    def _applied_updates(self, name: str) -> bool:
        """Label updates without recorded sources that the list already applies (see the class docstring)."""
        mine = self.contents(name)
        if not mine:
            return False
        listed = [self.contents(s.file) for s in self.segments]
        for i in range(len(listed)):
            run: tuple[Any, ...] = ()
            for j in range(i, len(listed)):
                if listed[j] is None or mine[: len(run) + len(listed[j])] != run + listed[j]:
                    break
                run += listed[j]
                if j > i and run == mine:
                    return True
        if _SEGMENT_NAME.match(name) is None or segment_seq(name) >= self.next_segment:
            return False  # written after the readable generation: new updates, unless a merge of listed ones
        n = len(mine)
        return any(seg[k : k + n] == mine for seg in listed if seg for k, v in enumerate(seg) if v == mine[0])

    def _unreadable_beside(self, seg: Segment, shared: Sequence[str]) -> set[str]:
        """Listed segments beside ``shared`` that cannot be read, when with them the rows add up to the merge
        ``seg``: it holds those too (with recorded sources ``shared`` names them already)."""
        at = [i for i, s in enumerate(self.segments) if s.file in shared]
        lo, hi = at[0], at[-1] + 1

        def unreadable(i: int) -> bool:
            return self.contents(self.segments[i].file) is None

        rows = sum(s.rows for i, s in enumerate(self.segments[lo:hi], lo) if s.file in shared or unreadable(i))
        while rows < seg.rows and lo > 0 and unreadable(lo - 1):
            lo -= 1
            rows += self.segments[lo].rows
        while rows < seg.rows and hi < len(self.segments) and unreadable(hi):
            rows += self.segments[hi].rows
            hi += 1
        return {self.segments[i].file for i in range(lo, hi) if unreadable(i)} if rows == seg.rows else set()

    def add(self, seg: Segment) -> tuple[bool, str]:
        """Adopt ``seg`` where it belongs, or leave it out: whether it was adopted, and what was done."""
        what = f"segment {seg.file} ({self.kind})"
        shared = [s.file for s in self.segments if self._shares(seg.file, s.file)]
        if not shared and not (self.kind == "labels" and self.segments and self._applied_updates(seg.file)):
            self.segments.append(seg)
            return True, f"re-adopted complete {what}"
        if shared and all(self._holds([seg.file], s) for s in shared):  # a merge: it replaces what it holds
            replaced = set(shared) | self._unreadable_beside(seg, shared)
            first = next(i for i, s in enumerate(self.segments) if s.file in replaced)
            rest = [s for s in self.segments[first:] if s.file not in replaced]
            self.segments[first:] = [seg, *rest]
            return True, f"re-adopted complete {what} in place of the {len(replaced)} segment(s) it merged"
        if not shared or self._holds(shared, seg.file):
            return False, f"left out {what}: the segments named already hold its rows"
        return False, f"left out {what}: it shares rows with the segments named but does not hold all of theirs"


def repair(store: Store) -> Report:
    """Roll a corrupt manifest back, re-adopt complete segments it named, drop unreadable
    references, remove orphans and bad index files. Returns what was done; a healthy store
    is left exactly as it was (no new generation). A segment is re-adopted only where it adds
    rows: a compaction's merged copy and the segments it merged are never both named."""
    r = Report()
    store.require_existing()
    gens = store.manifest_generations()
    snap = EMPTY
    corrupt = []
    for gen in reversed(gens):
        try:
            snap = store.read_manifest(gen)
            break
        except StoreError:
            corrupt.append(gen)
    with Writer.recovering(store) as w:
        for gen in corrupt:
            os.replace(store.manifest_path(gen), store.manifest_path(gen).with_suffix(".corrupt"))
            r.actions.append(f"set aside corrupt manifest generation {gen}")
        spaces = dict(snap.spaces)
        datasets = dict(snap.datasets)
        # Drop references to segments that cannot be read: their data is already gone.
        for sid, sp in list(spaces.items()):
            keep = tuple(s for s in sp.segments if store.segment_info(s.file))
            if len(keep) != len(sp.segments):
                r.actions.append(f"space {sid}: dropped {len(sp.segments) - len(keep)} unreadable segment(s)")
                spaces[sid] = dataclasses.replace(sp, segments=keep)
        # Re-adopt complete segments that the readable manifest does not name (in write order), each into its
        # list only where it adds rows that no segment there holds: see _Readoption.
        named = Snapshot(0, 0, spaces, datasets).files()
        if (corrupt or not gens) and store.segment_dir.is_dir():
            lists: dict[tuple[str, str, str], _Readoption] = {}
            kept = store.kept_files(snap)  # what older readable generations name stays, adopted or not
            for name in _orphans(store, named):
                info = store.segment_info(name)
                if info is None:
                    continue
                if info.kind == "vectors":
                    assert info.space is not None  # read_segment_info gives every vectors segment its space
                    owner, current = info.space.id, spaces.setdefault(info.space.id, info.space).segments
                else:
                    ds = datasets.setdefault(info.dataset, Dataset(info.dataset))
                    owner = info.dataset
                    current = {"rows": ds.rows, "keys": ds.keys.get(info.recipe, ()), "labels": ds.labels}[info.kind]
                target = (info.kind, owner, info.recipe)
                if target not in lists:
                    lists[target] = _Readoption(store, info.kind, current, snap.next_segment)
                adopted, action = lists[target].add(Segment(name, info.rows))
                if adopted or name not in kept:  # a file left out is removed, unless an older generation names it
                    r.actions.append(action)
            for (kind, owner, recipe), readoption in lists.items():
                segs = tuple(readoption.segments)
                if kind == "vectors":
                    spaces[owner] = dataclasses.replace(spaces[owner], segments=segs)
                    continue
                ds = datasets[owner]
                if kind == "rows":
                    datasets[owner] = dataclasses.replace(ds, rows=segs)
                elif kind == "keys":
                    datasets[owner] = dataclasses.replace(ds, keys={**ds.keys, recipe: segs})
                else:
                    datasets[owner] = dataclasses.replace(ds, labels=segs)
        fixed = dataclasses.replace(snap, spaces=spaces, datasets=datasets)
        changed = bool(corrupt) or not gens or spaces != snap.spaces or datasets != snap.datasets
        w.recover(fixed, publish=changed)
        r.warnings += [f"{name} is not a file featurestore writes: not ours, left in place" for name in w.foreign]
    # Derived files that do not match are simply removed; the next query rebuilds them.
    for sp in store.snapshot().spaces.values():
        index, status = faiss_index.load_checked(store, sp, store.space_keys(sp))
        if index is None and status != "built":
            faiss_index.remove(store, sp)
            r.actions.append(f"removed the stale index of space {sp.id} ({status.split(': ', 1)[1]})")
    r.errors = check(store).errors
    return r


__all__ = ["CheckPlan", "Report", "check", "repair"]
