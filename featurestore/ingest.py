"""Ingest: clean, hash, embed only the keys a space lacks, commit batch by batch.

Every commit publishes the vectors of a batch together with the dataset rows and
keys that need them, so a row's key always resolves to a stored vector, and an
ingest stopped at any point resumes by embedding only what was never committed.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from featurestore.clean import Recipe
from featurestore.embedders.base import Embedder
from featurestore.errors import DatasetError, DriftError, FeatureStoreError, ModelError
from featurestore.keys import space_fields, space_id, text_keys
from featurestore.sources import Table
from featurestore.store import Space, Store, Writer

log = logging.getLogger(__name__)

DTYPES = ("float32", "float16")
N_CANARIES = 3
# float16 storage rounds to ~1e-3 relative; float32 embedders are deterministic to ~1e-5.
DRIFT_ATOL = {"float32": 1e-4, "float16": 2e-3}

ProgressFn = Callable[[float, int], None]  # (rows advanced, total rows)


@dataclass
class IngestSummary:
    dataset: str
    space: str
    model: str
    recipe: str
    rows_read: int = 0
    new_ids: int = 0
    duplicates: int = 0  # input rows already stored (same id and text) or repeated in the input
    rows_keyed: int = 0  # rows whose key under this recipe was computed in this run
    cache_hits: int = 0  # keyed rows whose vector was already in the space (or embedded earlier in this run)
    embedded: int = 0  # distinct texts sent to the model
    empty_after_cleaning: int = 0
    batches_committed: int = 0
    seconds: float = 0.0
    interrupted: bool = False
    device: str = "cpu"
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def texts_per_second(self) -> float:
        return self.rows_read / self.seconds if self.seconds else float("inf")


class IngestInterrupted(FeatureStoreError):
    """Ctrl-C during an ingest: what was committed stays; the summary says how much."""

    exit_code = 130

    def __init__(self, summary: IngestSummary) -> None:
        self.summary = summary
        super().__init__(
            f"interrupted: {summary.batches_committed} batch(es) committed ({summary.embedded} texts embedded, "
            f"{summary.new_ids} new ids); run the same command again to continue where it stopped"
        )


def make_space(embedder: Embedder, model: str, recipe: Recipe, dtype: str = "float32") -> Space:
    """The space an embedder + recipe + dtype write into (not yet stored)."""
    if dtype not in DTYPES:
        raise FeatureStoreError(f"unknown --dtype {dtype!r}; use one of: {', '.join(DTYPES)}")
    fields = space_fields(embedder.fingerprint, recipe.fingerprint(), dtype)
    return Space(space_id(fields), fields, model, recipe.name, embedder.dim, dtype)


def check_drift(store: Store, space: Space, embedder: Embedder, recipe: Recipe) -> None:
    """Re-embed the space's canary texts; refuse to mix spaces if the model's output moved."""
    if not space.canaries:
        return
    keys = np.array(text_keys(recipe.name, space.canaries), dtype="S32")
    stored_keys = store.space_keys(space)
    pos = {k: i for i, k in enumerate(stored_keys)}
    rows = np.array([pos[k] for k in keys if k in pos], dtype=np.int64)
    if len(rows) != len(keys):
        return  # canaries of a space written by an older version; nothing to compare
    stored = store.read_vectors(space, rows)
    fresh = embedder.embed(list(space.canaries))
    diff = float(np.max(np.abs(fresh.astype(space.dtype).astype(np.float32) - stored)))
    if diff > DRIFT_ATOL[space.dtype]:
        raise DriftError(
            f"model {space.model!r} no longer reproduces the vectors of space {space.id} (max abs diff {diff:.2e} "
            f"on its canary texts, tolerance {DRIFT_ATOL[space.dtype]:.0e}); the weights or library changed under "
            "the same name; fix: restore the original model/library versions, or ingest into a new store"
        )


def ingest(
    store: Store,
    table: Table,
    dataset: str,
    embedder: Embedder,
    model: str,
    recipe: Recipe,
    *,
    dtype: str = "float32",
    commit_rows: int = 1024,
    wait: bool = False,
    progress: ProgressFn | None = None,
) -> IngestSummary:
    """Add ``table`` to ``dataset`` and make sure every row has a vector in the model's space."""
    t0 = time.perf_counter()
    if commit_rows < 1:  # 0 would crash range(); a negative step would silently commit nothing
        raise FeatureStoreError(f"--batch-rows must be at least 1, got {commit_rows}")
    space = make_space(embedder, model, recipe, dtype)
    summary = IngestSummary(dataset, space.id, model, recipe.name, rows_read=table.rows_read)
    summary.duplicates = table.duplicate_rows
    with store.writer(wait=wait) as w:
        try:
            _ingest_locked(store, w, table, dataset, embedder, recipe, space, summary, commit_rows, progress)
            if summary.batches_committed:
                w.compact()
        except KeyboardInterrupt:
            summary.interrupted = True
            summary.seconds = time.perf_counter() - t0
            raise IngestInterrupted(summary) from None
    summary.seconds = time.perf_counter() - t0
    return summary


def _ingest_locked(
    store: Store,
    w: Writer,
    table: Table,
    dataset: str,
    embedder: Embedder,
    recipe: Recipe,
    space: Space,
    summary: IngestSummary,
    commit_rows: int,
    progress: ProgressFn | None,
) -> None:
    snap = w.snap
    stored = snap.spaces.get(space.id)
    if stored is not None and stored.dim != space.dim:
        raise ModelError(f"model {space.model!r} now gives {space.dim}-d vectors, space {space.id} holds {stored.dim}-d")
    ds = snap.datasets.get(dataset)

    # 1. Which input rows are new; conflicting texts for a stored id stop everything before any write.
    new_mask = np.ones(len(table.ids), dtype=bool)
    keyed_ids = np.zeros(0, np.int64)
    unvectored_ids = np.zeros(0, np.int64)
    old_rows: dict[str, np.ndarray] | None = None
    # Keys the space already holds; the model is loaded only if something is missing.
    have = set(store.space_keys(stored).tolist()) if stored is not None else set()
    if ds is not None and ds.count:
        # Rows keyed under this recipe by another model (or dtype) may still lack a vector in this space.
        keyed_ids, keyed_keys = store.dataset_keys(ds, recipe.name)
        unvectored_ids = keyed_ids[np.fromiter((k not in have for k in keyed_keys.tolist()), bool, len(keyed_keys))]
        need_old = ds.keyed(recipe.name) < ds.count or len(unvectored_ids) > 0
        old_rows = store.dataset_rows(ds) if need_old else None
        old_ids = old_rows["ids"] if old_rows is not None else store.dataset_ids(ds)
        old_digests = old_rows["digests"] if old_rows is not None else store.dataset_column(ds, "digests")
        order = np.argsort(old_ids)
        pos = np.searchsorted(old_ids[order], table.ids)
        pos = np.minimum(pos, len(order) - 1)
        found = old_ids[order][pos] == table.ids
        hit = order[pos[found]]
        conflict = old_digests[hit] != table.digests[found]
        if conflict.any():
            i = np.flatnonzero(found)[np.flatnonzero(conflict)[0]]
            raise DatasetError(
                f"{table.source}: id {table.ids[i]} is already in dataset {dataset!r} with a different text; "
                "an id names one tweet: give new ids, or ingest into another --dataset"
            )
        new_mask = ~found
        summary.duplicates += int(found.sum())

    # 2. Work list: new rows, plus stored rows that have no key under this recipe yet.
    new_idx = np.flatnonzero(new_mask)
    work_ids = [table.ids[new_idx]]
    work_texts = [table.texts[i] for i in new_idx]
    work_new = [np.ones(len(new_idx), bool)]
    work_needs_key = [np.ones(len(new_idx), bool)]
    if old_rows is not None:
        lacking = ~np.isin(old_rows["ids"], keyed_ids)
        redo = lacking | np.isin(old_rows["ids"], unvectored_ids)
        work_ids.append(old_rows["ids"][redo])
        work_texts.extend(old_rows["texts"][redo].tolist())
        work_new.append(np.zeros(int(redo.sum()), bool))
        work_needs_key.append(lacking[redo])
    ids = np.concatenate(work_ids)
    is_new = np.concatenate(work_new)
    needs_key = np.concatenate(work_needs_key)
    summary.new_ids = int(is_new.sum())
    total = len(ids)
    if total == 0:
        return
    label_of = dict(zip(table.ids[new_idx].tolist(), table.labels[new_idx].tolist()))
    digest_of = dict(zip(table.ids[new_idx].tolist(), table.digests[new_idx].tolist()))

    # 3. Embed what the space lacks, batch by batch.
    drift_checked = False
    for start in range(0, total, commit_rows):
        sl = slice(start, min(start + commit_rows, total))
        chunk_ids = ids[sl]
        chunk_texts = work_texts[sl]
        t = time.perf_counter()
        cleaned = recipe.clean(chunk_texts)
        summary.timings["clean"] = summary.timings.get("clean", 0.0) + time.perf_counter() - t
        keys = text_keys(recipe.name, cleaned)
        summary.empty_after_cleaning += sum(1 for c in cleaned if not c.strip())
        todo: dict[bytes, str] = {}
        for k, c in zip(keys, cleaned):
            if k not in have and k not in todo:
                todo[k] = c
        summary.rows_keyed += len(keys)
        summary.cache_hits += len(keys) - len(todo)
        vectors = None
        advanced = [0.0]  # rows reported for this chunk; topped up to the exact count at its commit

        def advance(n: float) -> None:
            advanced[0] += n
            if progress:
                progress(n, total)

        if todo:
            if not drift_checked and stored is not None:
                check_drift(store, stored, embedder, recipe)
            drift_checked = True
            per_text = len(chunk_ids) / len(todo)
            t = time.perf_counter()
            vectors = embedder.embed(list(todo.values()), progress=lambda n: advance(n * per_text))
            summary.timings["embed"] = summary.timings.get("embed", 0.0) + time.perf_counter() - t
            summary.embedded += len(todo)
        chunk_new = is_new[sl]
        new_ids = chunk_ids[chunk_new]
        rows = {
            "ids": new_ids,
            "labels": [label_of[i] for i in new_ids.tolist()],
            "digests": [digest_of[i] for i in new_ids.tolist()],
            "texts": [chunk_texts[j] for j in np.flatnonzero(chunk_new)],
        }
        canaries = tuple(c for c in todo.values() if c.strip())[:N_CANARIES] if stored is None else ()
        target = stored or Space(space.id, space.fields, space.model, space.recipe, space.dim, space.dtype, canaries)
        t = time.perf_counter()
        w.commit(
            space=target,
            keys=np.array(list(todo), dtype="S32") if todo else None,
            vectors=vectors,
            dataset=dataset,
            rows=rows,
            recipe=recipe.name,
            row_keys=(chunk_ids[needs_key[sl]], np.array(keys, dtype="S32")[needs_key[sl]]),
        )
        summary.timings["commit"] = summary.timings.get("commit", 0.0) + time.perf_counter() - t
        advance(len(chunk_ids) - advanced[0])
        stored = w.snap.spaces[space.id]
        have.update(todo)
        summary.batches_committed += 1
        summary.device = embedder.device if todo else summary.device
        log.debug("committed batch %d: %d rows, %d embedded", summary.batches_committed, len(chunk_ids), len(todo))
