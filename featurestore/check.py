"""``fs check`` and ``fs repair``: verify a store end to end, and mend what can be mended
without ever dropping a committed vector that is still readable."""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import h5py
import numpy as np

from featurestore.errors import StoreError
from featurestore.progress import ProgressFn
from featurestore.query import index as faiss_index
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

    @property
    def ok(self) -> bool:
        return not self.errors


def _segment_problem(store: Store, seg: Segment, kind: str, columns: dict[str, tuple]) -> str | None:
    """None if the segment opens and has the expected kind, columns and row count."""
    path = store.segment_path(seg.file)
    if not path.exists():
        return f"segment {seg.file} is missing"
    try:
        with h5py.File(path, "r", locking=False) as f:
            if f.attrs.get("kind") != kind:
                return f"segment {seg.file} is a {f.attrs.get('kind')!r} segment, expected {kind!r}"
            for col, shape_tail in columns.items():
                if col not in f:
                    return f"segment {seg.file} lacks column {col!r}"
                if f[col].shape[0] != seg.rows or tuple(f[col].shape[1:]) != shape_tail:
                    return f"segment {seg.file} column {col!r} has shape {f[col].shape}, expected ({seg.rows}, ...)"
    except OSError as exc:
        return f"segment {seg.file} cannot be read ({exc})"
    return None


def check(store: Store, progress: ProgressFn | None = None) -> Report:
    """Schema, counts, unique keys, finite vectors, dims, resolvable keys, index manifests, orphans.
    ``progress`` counts the vectors read, space by space (the bulk of a check's time)."""
    r = Report()
    try:
        store.require_existing()
        snap = store.snapshot()
    except StoreError as exc:
        r.errors.append(str(exc))
        return r
    r.stats = {"generation": snap.generation, "spaces": len(snap.spaces), "datasets": len(snap.datasets)}
    keys_by_recipe: dict[str, set[bytes]] = {}
    total = sum(sp.rows for sp in snap.spaces.values())
    if progress:
        progress(0, total)
    for sp in snap.spaces.values():
        bad = [
            p for s in sp.segments if (p := _segment_problem(store, s, "vectors", {"keys": (), "vectors": (sp.dim,)}))
        ]
        r.errors.extend(bad)
        if bad:
            if progress:
                progress(sp.rows, total)
            continue
        keys = store.space_keys(sp)
        if len(np.unique(keys)) != len(keys):
            r.errors.append(f"space {sp.id} has {len(keys) - len(np.unique(keys))} duplicate keys")
        nonfinite = 0
        for _, block in store.iter_vectors(sp):
            nonfinite += int((~np.isfinite(block)).any(axis=1).sum())
            if progress:
                progress(len(block), total)
        if nonfinite:
            r.errors.append(f"space {sp.id} has {nonfinite} vectors with NaN/Inf")
        keys_by_recipe.setdefault(sp.recipe, set()).update(keys.tolist())
        r.stats[f"vectors:{sp.id}"] = sp.rows
        _check_index(store, sp, keys, r)
    for ds in snap.datasets.values():
        bad = [p for s in ds.rows if (p := _segment_problem(store, s, "rows", {"ids": (), "labels": (), "texts": ()}))]
        for segs in ds.keys.values():
            bad += [p for s in segs if (p := _segment_problem(store, s, "keys", {"ids": (), "keys": ()}))]
        bad += [p for s in ds.labels if (p := _segment_problem(store, s, "labels", {"ids": (), "labels": ()}))]
        r.errors.extend(bad)
        if bad:
            continue
        ids = store.dataset_ids(ds)
        if len(np.unique(ids)) != len(ids):
            r.errors.append(f"dataset {ds.name!r} has duplicate ids")
        if ds.labels:
            upd_ids, _ = store.label_updates(ds)
            if not np.isin(upd_ids, ids).all():
                r.errors.append(f"dataset {ds.name!r} has label updates for unknown ids")
        for recipe in ds.keys:
            kid, kkeys = store.dataset_keys(ds, recipe)
            if len(np.unique(kid)) != len(kid) or not np.isin(kid, ids).all():
                r.errors.append(f"dataset {ds.name!r} keys under {recipe} name unknown or repeated ids")
            known = keys_by_recipe.get(recipe, set())
            unresolved = sum(1 for k in kkeys.tolist() if k not in known)
            if unresolved:
                r.errors.append(f"dataset {ds.name!r}: {unresolved} keys under {recipe} resolve to no stored vector")
        r.stats[f"rows:{ds.name}"] = ds.count
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
    return r


def _check_index(store: Store, sp: Space, keys: np.ndarray, r: Report) -> None:
    """The same checks a query runs before it trusts an index file (file hash included)."""
    index, status = faiss_index.load_checked(store, sp, keys)
    if index is None and status != "built":
        r.warnings.append(f"index of space {sp.id}: {status.split(': ', 1)[1]}; it is rebuilt before the next query")
    elif index is not None and index.ntotal < len(keys):
        r.warnings.append(
            f"index of space {sp.id} covers {index.ntotal} of {len(keys)} vectors; updated before the next query"
        )


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


__all__ = ["Report", "check", "repair"]
