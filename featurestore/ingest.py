"""Ingest: decide what is missing (``plan``), then embed and commit it batch by batch (``execute``).

``plan`` is pure bookkeeping over one snapshot and a validated input table: which rows are
new, which stored rows still lack a key or a vector in the target space, which labels are
added or changed. It loads no model. ``execute`` cleans, hashes and embeds only the keys
the space lacks, and publishes every batch's vectors together with the dataset rows and
keys that need them, so a row's key always resolves to a stored vector, and an ingest
stopped at any point resumes by embedding only what was never committed.
"""
from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Iterator

import numpy as np

from featurestore.clean import Recipe
from featurestore.embedders.base import Embedder
from featurestore.errors import DatasetError, DriftError, IngestInterrupted, ModelError, UsageError
from featurestore.keys import KEY_DTYPE, space_fields, space_id, text_keys
from featurestore.manifest import Snapshot, Space
from featurestore.progress import ProgressFn
from featurestore.sources import Table
from featurestore.store import KeyBatch, LabelBatch, RowBatch, Store, VectorBatch, Writer, empty_text, lookup

log = logging.getLogger(__name__)

DTYPES = ("float32", "float16")
N_CANARIES = 3
CANARY_MAX_CHARS = 280  # canaries are re-embedded at every later ingest: short texts only
DEFAULT_MAX_CHARS = 2000  # cleaned text beyond this is cut before embedding (a tweet is <= 280)
DEFAULT_COMMIT_ROWS = 1024  # rows a commit, unless a GPU wants more (execute)
# float16 storage rounds to ~1e-3 relative; float32 embedders are deterministic to ~1e-5.
DRIFT_ATOL = {"float32": 1e-4, "float16": 2e-3}


@dataclass
class IngestSummary:
    dataset: str
    space: str
    model: str
    recipe: str
    rows_read: int = 0
    new_ids: int = 0  # rows added to the dataset (committed)
    duplicates: int = 0  # input rows already stored (same id and text) or repeated in the input
    labels_added: int = 0  # stored rows that had no label and got one
    labels_changed: int = 0  # stored rows whose label changed
    rows_keyed: int = 0  # rows whose key under this recipe was computed in this run
    cache_hits: int = 0  # keyed rows whose vector was already in the space (or embedded earlier in this run)
    embedded: int = 0  # distinct texts sent to the model (committed)
    empty_after_cleaning: int = 0
    truncated: int = 0  # texts cut to max_chars before embedding
    replaced_chars: int = 0  # unencodable characters in the input replaced by U+FFFD
    columns: dict[str, str | None] = field(default_factory=dict)  # id/label/text -> input column (None: none)
    source_format: str = ""
    batches_committed: int = 0
    seconds: float = 0.0
    interrupted: bool = False
    device: str = "cpu"
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def texts_per_second(self) -> float:
        return self.rows_read / self.seconds if self.seconds else float("inf")


def make_space(embedder: Embedder, model: str, recipe: Recipe, dtype: str = "float32") -> Space:
    """The space an embedder + recipe + dtype write into (not yet stored)."""
    if dtype not in DTYPES:
        raise UsageError(f"unknown {{param}} {dtype!r}; use one of: {', '.join(DTYPES)}", "dtype")
    fields = space_fields(embedder.fingerprint, recipe.fingerprint(), dtype)
    return Space(space_id(fields), fields, model, recipe.name, embedder.dim, dtype)


def check_drift(store: Store, space: Space, embedder: Embedder, recipe: Recipe) -> None:
    """Re-embed the space's canary texts; refuse to mix spaces if the model's output moved."""
    canaries = [c for c in space.canaries if len(c) <= CANARY_MAX_CHARS]  # older stores kept any length
    if not canaries:
        return
    keys = np.array(text_keys(recipe.name, canaries), dtype=KEY_DTYPE)
    pos = lookup(store.space_keys(space)).get_indexer(keys)
    if (pos < 0).any():
        return  # canaries of a space written by an older version; nothing to compare
    stored = store.read_vectors(space, pos)
    fresh = embedder.embed(canaries)
    diff = float(np.max(np.abs(fresh.astype(space.dtype).astype(np.float32) - stored)))
    if diff > DRIFT_ATOL[space.dtype]:
        raise DriftError(
            f"model {space.model!r} no longer reproduces the vectors of space {space.id} (max abs diff {diff:.2e} "
            f"on its canary texts, tolerance {DRIFT_ATOL[space.dtype]:.0e}); the weights or library changed under "
            "the same name; fix: restore the original model/library versions, or ingest into a new store"
        )


# ----------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class WorkList:
    """What an ingest has to do, decided from one snapshot before any model is loaded.

    The rows to key are the new rows (first, in input order) followed by stored rows that
    have no key under the recipe yet or whose key has no vector in the space.
    """

    dataset: str
    space: Space  # the stored space, or a new one (no segments)
    have: set[bytes]  # keys the space already holds
    ids: np.ndarray  # rows to key, object array of str
    texts: list[str]
    needs_key: np.ndarray  # bool: the row has no key under the recipe yet
    new_rows: RowBatch  # rows to add to the dataset: the first len(new_rows) entries of ``ids``
    label_updates: LabelBatch
    labels_added: int
    labels_changed: int
    duplicates: int

    @property
    def total(self) -> int:
        return len(self.ids)


def plan(store: Store, snap: Snapshot, table: Table, dataset: str, space: Space) -> WorkList:
    """Which rows, keys and labels an ingest of ``table`` into ``dataset`` and ``space`` must write."""
    stored = snap.spaces.get(space.id)
    if stored is not None and stored.dim != space.dim:
        raise ModelError(f"model {space.model!r} now gives {space.dim}-d vectors, space {space.id} holds {stored.dim}-d")
    have = set(store.space_keys(stored).tolist()) if stored is not None else set()
    ds = snap.datasets.get(dataset)
    found = np.zeros(len(table.ids), dtype=bool)
    redo_ids, redo_texts, redo_needs_key = empty_text(), [], np.zeros(0, bool)
    label_ids, label_values = empty_text(), empty_text()
    added = changed = 0
    if ds is not None and ds.count:
        old_ids = store.dataset_ids(ds)
        old_index = lookup(old_ids)
        pos = old_index.get_indexer(table.ids)
        found = pos >= 0
        hit = pos[found]
        conflict = store.dataset_column(ds, "digests")[hit] != table.digests[found]
        if conflict.any():
            i = np.flatnonzero(found)[np.flatnonzero(conflict)[0]]
            raise DatasetError(
                f"{table.source}: id {table.ids[i]!r} is already in dataset {dataset!r} with a different text; "
                "an id names one tweet: give new ids, or ingest into another dataset"
            )
        if table.has_labels and found.any():
            # Labels are data that can change: a non-empty label that differs from the stored one wins.
            new_label = table.labels[found]
            old_label = store.dataset_labels(ds, old_ids)[hit]
            moved = (new_label != "") & (new_label != old_label)
            label_ids, label_values = table.ids[found][moved], new_label[moved]
            added = int((old_label[moved] == "").sum())
            changed = int(moved.sum()) - added
        # Stored rows keyed under this recipe by another model (or dtype) may still lack a vector here.
        keyed_ids, keyed_keys = store.dataset_keys(ds, space.recipe)
        unvectored = keyed_ids[~lookup(keyed_keys).isin(list(have))] if len(keyed_ids) else keyed_ids
        lacking = ~old_index.isin(keyed_ids)
        redo = lacking | old_index.isin(unvectored)
        if redo.any():
            redo_ids, redo_texts, redo_needs_key = old_ids[redo], store.dataset_texts(ds)[redo].tolist(), lacking[redo]
    new = np.flatnonzero(~found)
    new_rows = RowBatch(table.ids[new], table.labels[new], table.digests[new], [table.texts[i] for i in new])
    return WorkList(
        dataset=dataset,
        space=stored or space,
        have=have,
        ids=np.concatenate([new_rows.ids, redo_ids]),
        texts=list(new_rows.texts) + redo_texts,
        needs_key=np.concatenate([np.ones(len(new), bool), redo_needs_key]),
        new_rows=new_rows,
        label_updates=LabelBatch(label_ids, label_values),
        labels_added=added,
        labels_changed=changed,
        duplicates=table.duplicate_rows + int(found.sum()),
    )


# ----------------------------------------------------------------------------- execute


def _slice_rows(rows: RowBatch, sl: slice) -> RowBatch:
    return RowBatch(rows.ids[sl], rows.labels[sl], rows.digests[sl], rows.texts[sl])


@contextlib.contextmanager
def _interrupt_after() -> Iterator[None]:
    """Hold a Ctrl-C (SIGINT) that arrives inside the block until the block is done, then raise it: a
    commit and the summary's count of it happen together. Only the main thread can take signals;
    elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


def execute(
    w: Writer,
    work: WorkList,
    embedder: Embedder,
    recipe: Recipe,
    summary: IngestSummary,
    *,
    commit_rows: int | None = None,
    max_chars: int = DEFAULT_MAX_CHARS,
    progress: ProgressFn | None = None,
) -> None:
    """Embed what ``work`` lacks and commit it in batches of ``commit_rows`` rows through ``w``.

    Without ``commit_rows``, a batch is 1,024 rows; once the model is loaded on a GPU, the embedder's
    whole batch (4,096 texts for MiniLM), so each call keeps the GPU's pipeline full (one call of 1,024
    texts there ran at 0.77x the embedder's rate, 4,096 at 0.97x; bench/gpu.sh).

    The model runs in one background thread, a chunk or two ahead: while it embeds chunk k+1,
    this thread cleans and keys chunk k+2 and commits chunk k, so the model does not wait for
    the store. Commits stay in this thread, in input order, one per chunk, with the counts,
    drift check and canaries of a chunk-by-chunk loop; an error or Ctrl-C commits nothing after
    the chunk it hit, and the background thread stops at its next batch before this returns.
    """
    from collections import deque
    from concurrent.futures import Future, ThreadPoolExecutor

    space = work.space
    stored = space if space.segments or space.id in w.snap.spaces else None
    have = set(work.have)  # keys in the space, or in the todo of an earlier chunk (committed before this one)
    total = work.total
    labels = work.label_updates if len(work.label_updates) else None
    if total == 0:
        if labels is not None:
            with _interrupt_after():
                w.commit(work.dataset, labels=labels)
                summary.batches_committed += 1
                summary.labels_added, summary.labels_changed = work.labels_added, work.labels_changed
        return
    n_new = len(work.new_rows)
    lookahead = 2  # chunks prepared beyond the one being committed: one embedding, one queued
    stop = threading.Event()
    loaded = threading.Event()  # the model has been loaded (by the drift check or the model thread)

    def load() -> None:
        if not loaded.is_set():  # models load on first use: timed apart from embedding
            t = time.perf_counter()
            embedder.device
            summary.timings["load model"] = time.perf_counter() - t
            loaded.set()

    def chunk_rows() -> int:
        if commit_rows is not None:
            return commit_rows
        if loaded.is_set() and not embedder.device.startswith("cpu"):
            return max(DEFAULT_COMMIT_ROWS, embedder.batch_limits()[1])
        return DEFAULT_COMMIT_ROWS

    class Stopped(Exception):
        """Raised inside the model thread, between batches, once this thread has given up."""

    @dataclass
    class Chunk:
        sl: slice
        keys: list[bytes]
        todo: dict[bytes, str]
        counts: tuple[int, int, int, int]  # rows keyed, cache hits, empty after cleaning, truncated
        advanced: float = 0.0  # rows reported for this chunk; topped up to the exact count at its commit
        future: Future | None = None

    def advance(chunk: Chunk, n: float) -> None:
        chunk.advanced += n
        if progress:
            progress(n, total)

    def prepare(start: int) -> Chunk:
        sl = slice(start, min(start + chunk_rows(), total))
        t = time.perf_counter()
        cleaned = recipe.clean(work.texts[sl])
        summary.timings["clean"] = summary.timings.get("clean", 0.0) + time.perf_counter() - t
        long = [i for i, c in enumerate(cleaned) if len(c) > max_chars]
        for i in long:
            cleaned[i] = cleaned[i][:max_chars]
        keys = text_keys(recipe.name, cleaned)
        todo: dict[bytes, str] = {}
        for k, c in zip(keys, cleaned):
            if k not in have and k not in todo:
                todo[k] = c
        have.update(todo)
        empty = sum(1 for c in cleaned if not c.strip())
        return Chunk(sl, keys, todo, (len(keys), len(keys) - len(todo), empty, len(long)))

    def embed(chunk: Chunk) -> tuple[np.ndarray, float]:
        per_text = (chunk.sl.stop - chunk.sl.start) / len(chunk.todo)

        def report(n: int) -> None:
            if stop.is_set():
                raise Stopped
            advance(chunk, n * per_text)

        if stop.is_set():
            raise Stopped
        load()
        t = time.perf_counter()
        vectors = embedder.embed(list(chunk.todo.values()), progress=report)
        return vectors, time.perf_counter() - t

    def commit(chunk: Chunk) -> None:
        nonlocal stored, labels
        sl, todo = chunk.sl, chunk.todo
        keyed, hits, empty, truncated = chunk.counts
        summary.rows_keyed += keyed
        summary.cache_hits += hits
        summary.empty_after_cleaning += empty
        summary.truncated += truncated
        vectors = np.zeros((0, space.dim), np.float32)
        if chunk.future is not None:
            vectors, seconds = chunk.future.result()
            summary.timings["embed"] = summary.timings.get("embed", 0.0) + seconds
        if stored is None:
            canaries = tuple(c for c in todo.values() if c.strip() and len(c) <= CANARY_MAX_CHARS)[:N_CANARIES]
            target = replace(space, canaries=canaries)
        else:
            target = stored
        needs_key = work.needs_key[sl]
        t = time.perf_counter()
        with _interrupt_after():  # a Ctrl-C here waits until the summary counts what was committed
            w.commit(
                work.dataset,
                vectors=VectorBatch(target, np.array(list(todo), dtype=KEY_DTYPE), vectors),
                rows=_slice_rows(work.new_rows, slice(sl.start, min(sl.stop, n_new))) if sl.start < n_new else None,
                keys=KeyBatch(recipe.name, work.ids[sl][needs_key], np.array(chunk.keys, dtype=KEY_DTYPE)[needs_key]),
                labels=labels,
            )
            if labels is not None:  # label updates go with the first batch
                summary.labels_added, summary.labels_changed = work.labels_added, work.labels_changed
                labels = None
            stored = w.snap.spaces[space.id]
            summary.batches_committed += 1
            summary.new_ids += max(0, min(sl.stop, n_new) - sl.start)
            summary.embedded += len(todo)
        summary.timings["commit"] = summary.timings.get("commit", 0.0) + time.perf_counter() - t
        advance(chunk, (sl.stop - sl.start) - chunk.advanced)
        if todo:
            summary.device = embedder.device
        log.debug("committed batch %d: %d rows, %d embedded", summary.batches_committed, sl.stop - sl.start, len(todo))

    pending: deque[Chunk] = deque()
    drift_checked = False
    pool = ThreadPoolExecutor(1, thread_name_prefix="fs-embed")
    try:
        start = 0
        while start < total:
            try:
                chunk = prepare(start)
                start = chunk.sl.stop
                if chunk.todo and not drift_checked:
                    while pending:  # the canaries are checked against the space as committed so far
                        commit(pending.popleft())
                    if stored is not None:
                        load()
                        check_drift(w.store, stored, embedder, recipe)
                    drift_checked = True
            except Exception:
                while pending:  # a chunk-by-chunk loop would have committed these before failing here
                    commit(pending.popleft())
                raise
            if chunk.todo:
                chunk.future = pool.submit(embed, chunk)
            pending.append(chunk)
            while len(pending) > lookahead:
                commit(pending.popleft())
        while pending:
            commit(pending.popleft())
    except BaseException:
        stop.set()
        for chunk in pending:
            if chunk.future is not None:
                chunk.future.cancel()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def ingest(
    store: Store,
    table: Table,
    dataset: str,
    embedder: Embedder,
    model: str,
    recipe: Recipe,
    *,
    dtype: str = "float32",
    commit_rows: int | None = None,
    max_chars: int | None = None,
    wait: bool = False,
    progress: ProgressFn | None = None,
) -> IngestSummary:
    """Add ``table`` to ``dataset`` and make sure every row has a vector in the model's space."""
    t0 = time.perf_counter()
    if commit_rows is not None and commit_rows < 1:  # 0 would never advance through the rows, a negative size go back
        raise UsageError(f"{{param}} must be at least 1, got {commit_rows}", "commit_rows")
    max_chars = max_chars if max_chars is not None else getattr(embedder, "max_chars", DEFAULT_MAX_CHARS)
    if max_chars < 1:
        raise UsageError(f"{{param}} must be at least 1, got {max_chars}", "max_chars")
    space = make_space(embedder, model, recipe, dtype)
    summary = IngestSummary(
        dataset, space.id, model, recipe.name, rows_read=table.rows_read, replaced_chars=table.replaced_chars,
        columns={"id": table.id_column, "label": table.label_column, "text": table.text_column},
        source_format=table.format,
    )
    with store.writer(wait=wait) as w:
        try:
            work = plan(store, w.snap, table, dataset, space)
            summary.duplicates = work.duplicates
            execute(w, work, embedder, recipe, summary, commit_rows=commit_rows, max_chars=max_chars, progress=progress)
            if summary.batches_committed:
                w.compact()
        except KeyboardInterrupt:
            summary.interrupted = True
            summary.seconds = time.perf_counter() - t0
            raise IngestInterrupted(summary) from None
    summary.seconds = time.perf_counter() - t0
    return summary
