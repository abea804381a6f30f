"""``fs check`` and ``fs repair``: verify a store end to end, and mend what can be mended
without ever dropping a committed vector that is still readable."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

import h5py
import numpy as np

from featurestore.errors import StoreError
from featurestore.query import index as faiss_index
from featurestore.storage.manifest import EMPTY, Dataset, Segment, Snapshot, Space
from featurestore.storage.store import Store, Writer


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


def check(store: Store) -> Report:
    """Schema, counts, unique keys, finite vectors, dims, resolvable keys, index manifests, orphans."""
    r = Report()
    try:
        store.require_existing()
        snap = store.snapshot()
    except StoreError as exc:
        r.errors.append(str(exc))
        return r
    r.stats = {"generation": snap.generation, "spaces": len(snap.spaces), "datasets": len(snap.datasets)}
    keys_by_recipe: dict[str, set[bytes]] = {}
    for sp in snap.spaces.values():
        bad = [
            p for s in sp.segments if (p := _segment_problem(store, s, "vectors", {"keys": (), "vectors": (sp.dim,)}))
        ]
        r.errors.extend(bad)
        if bad:
            continue
        keys = store.space_keys(sp)
        if len(np.unique(keys)) != len(keys):
            r.errors.append(f"space {sp.id} has {len(keys) - len(np.unique(keys))} duplicate keys")
        nonfinite = 0
        for _, block in store.iter_vectors(sp):
            nonfinite += int((~np.isfinite(block)).any(axis=1).sum())
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
        extra = [n for n in os.listdir(store.segment_dir) if n not in live]
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


def repair(store: Store) -> Report:
    """Roll a corrupt manifest back, re-adopt complete segments it named, drop unreadable
    references, remove orphans and bad index files. Returns what was done; a healthy store
    is left exactly as it was (no new generation)."""
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
        # Re-adopt complete segments written after the last readable manifest (in write order).
        named = Snapshot(0, 0, spaces, datasets).files()
        if (corrupt or not gens) and store.segment_dir.is_dir():
            for name in sorted(os.listdir(store.segment_dir)):
                if name in named or name.startswith(".tmp-"):
                    continue
                info = store.segment_info(name)
                if info is None:
                    continue
                seg = Segment(name, info.rows)
                if info.kind == "vectors":
                    assert info.space is not None  # read_segment_info gives every vectors segment its space
                    sp = spaces.get(info.space.id) or info.space
                    spaces[sp.id] = dataclasses.replace(sp, segments=sp.segments + (seg,))
                else:
                    ds = datasets.get(info.dataset) or Dataset(info.dataset)
                    if info.kind == "rows":
                        ds = dataclasses.replace(ds, rows=ds.rows + (seg,))
                    elif info.kind == "keys":
                        ds = dataclasses.replace(
                            ds, keys={**ds.keys, info.recipe: ds.keys.get(info.recipe, ()) + (seg,)}
                        )
                    else:
                        ds = dataclasses.replace(ds, labels=ds.labels + (seg,))
                    datasets[ds.name] = ds
                r.actions.append(f"re-adopted complete segment {name} ({info.kind})")
        fixed = dataclasses.replace(snap, spaces=spaces, datasets=datasets)
        changed = bool(corrupt) or not gens or spaces != snap.spaces or datasets != snap.datasets
        w.recover(fixed, publish=changed)
    # Derived files that do not match are simply removed; the next query rebuilds them.
    for sp in store.snapshot().spaces.values():
        index, status = faiss_index.load_checked(store, sp, store.space_keys(sp))
        if index is None and status != "built":
            faiss_index.remove(store, sp)
            r.actions.append(f"removed the stale index of space {sp.id} ({status.split(': ', 1)[1]})")
    r.errors = check(store).errors
    return r


__all__ = ["Report", "check", "repair"]
