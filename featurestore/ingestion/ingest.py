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
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from featurestore.embedders.base import Embedder
from featurestore.errors import DatasetError, IngestInterrupted, UsageError
from featurestore.inputs.clean import Recipe
from featurestore.inputs.sources import Table
from featurestore.progress import ProgressFn
from featurestore.spaces import KeyedTexts, KeySet, SpaceWriter, cut_length, key_texts, make_space
from featurestore.storage.manifest import Snapshot, Space
from featurestore.storage.store import (
    MAX_SEGMENTS,
    KeyBatch,
    LabelBatch,
    RowBatch,
    Store,
    Writer,
    empty_text,
    lookup,
)

log = logging.getLogger(__name__)

DEFAULT_COMMIT_ROWS = 1024  # rows a commit, unless a GPU wants more or the model is fast (_Run.chunk_rows)
GROW_AFTER_ROWS = 1 << 16  # rows committed in DEFAULT_COMMIT_ROWS chunks before a fast model's chunks may grow
MAX_GROWN_ROWS = 1 << 14  # a grown chunk's rows at most: 3 chunks in flight hold 3 x 24 MiB of 384-d float32
FAST_CYCLE_S = 0.5  # a chunk committed this soon after the one before: the next chunks double
SLOW_CYCLE_S = 2.0  # this late: they halve (to DEFAULT_COMMIT_ROWS at least)
LOOKAHEAD = 2  # chunks prepared beyond the one being committed: one embedding, one queued


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
    notes: list[str] = field(default_factory=list)  # what reading the input changed or chose (Table.notes), in words
    batches_committed: int = 0
    seconds: float = 0.0
    interrupted: bool = False
    device: str = "cpu"
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def texts_per_second(self) -> float:
        return self.rows_read / self.seconds if self.seconds else float("inf")


# ----------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class WorkList:
    """What an ingest has to do, decided from one snapshot before any model is loaded.

    The rows to key are the new rows (first, in input order) followed by stored rows that
    have no key under the recipe yet or whose key has no vector in the space.
    """

    dataset: str
    space: Space  # the stored space, or a new one (no segments)
    have: KeySet  # keys the space already holds (16 B a key: a 10M-key space in 160 MB)
    ids: np.ndarray  # rows to key, object array of str
    texts: Sequence[str]
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
    have = KeySet(store.space_keys(stored)) if stored is not None else KeySet()
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
        unvectored = keyed_ids[~have.contains(keyed_keys)]
        lacking = ~old_index.isin(keyed_ids)
        redo = lacking | old_index.isin(unvectored)
        if redo.any():
            redo_ids, redo_texts, redo_needs_key = old_ids[redo], store.dataset_texts(ds)[redo].tolist(), lacking[redo]
    if found.any():
        new = np.flatnonzero(~found)
        new_rows = RowBatch(table.ids[new], table.labels[new], table.digests[new], [table.texts[i] for i in new])
    else:  # every row is new (a first ingest): the table's own columns, not copies of them (72 B a row)
        new_rows = RowBatch(table.ids, table.labels, table.digests, table.texts)
    return WorkList(
        dataset=dataset,
        space=stored or space,
        have=have,
        ids=np.concatenate([new_rows.ids, redo_ids]) if len(redo_ids) else new_rows.ids,
        texts=list(new_rows.texts) + redo_texts if redo_texts else new_rows.texts,
        needs_key=np.concatenate([np.ones(len(new_rows), bool), redo_needs_key]),
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


@dataclass
class _Chunk:
    """Rows ``sl`` of the work list, keyed; ``todo`` the keys among them the space lacks (once each)."""

    sl: slice
    keyed: KeyedTexts
    todo: dict[bytes, str]
    advanced: float = 0.0  # rows reported for this chunk; topped up to the exact count at its commit
    future: Future | None = None  # (vectors, seconds) from the model thread


class _Stopped(Exception):
    """Raised inside the model thread, between batches, once the ingest has given up."""


class _Run:
    """The steps of one ``execute``: key a chunk (this thread), embed it (the model thread), commit it
    (this thread, in input order) with the dataset rows, keys and label updates that need its vectors."""

    def __init__(
        self,
        w: Writer,
        work: WorkList,
        space: SpaceWriter,
        summary: IngestSummary,
        commit_rows: int | None,
        max_chars: int,
        progress: ProgressFn | None,
    ) -> None:
        self.w, self.work, self.space, self.summary = w, work, space, summary
        self.commit_rows, self.max_chars, self.progress = commit_rows, max_chars, progress
        self.labels = work.label_updates if len(work.label_updates) else None  # they go with the first commit
        self.rows = DEFAULT_COMMIT_ROWS  # a CPU chunk's rows now (see chunk_rows)
        self.committed_at = time.perf_counter()  # when the last commit (and compaction) ended
        self.stop = threading.Event()
        self.loaded = threading.Event()  # the model has been loaded (by the drift check or the model thread)

    def _time(self, name: str, since: float) -> None:
        self.summary.timings[name] = self.summary.timings.get(name, 0.0) + time.perf_counter() - since

    def load(self) -> None:
        """Load the model (models load on first use), timed apart from embedding."""
        if not self.loaded.is_set():
            t = time.perf_counter()
            _ = self.space.embedder.device  # loads it
            self._time("load model", t)
            self.loaded.set()

    def check(self) -> None:
        """Before the first embedding: load the model, and check a stored space's canaries."""
        if self.space.stored:
            self.load()
        self.space.check()

    def chunk_rows(self) -> int:
        """1,024 rows a commit, or more for a fast model (``adapt``); once the model is on a GPU, its whole
        batch (4,096 texts for MiniLM), so each call keeps the GPU's pipeline full (1,024 texts there ran at
        0.77x the embedder's rate, 4,096 at 0.97x; bench/gpu.sh)."""
        if self.commit_rows is not None:
            return self.commit_rows
        embedder = self.space.embedder
        if self.loaded.is_set() and not embedder.device.startswith("cpu"):
            return max(DEFAULT_COMMIT_ROWS, embedder.batch_limits()[1])
        return self.rows

    def adapt(self, rows: int) -> None:
        """After a commit of ``rows`` rows: a chunk of the current size that came FAST_CYCLE_S or less after
        the one before doubles the size (up to MAX_GROWN_ROWS), one that took SLOW_CYCLE_S halves it.

        A commit costs about the same whatever its rows (three segment files, a manifest, four fsyncs), so
        a fast model's chunks grow to spread it, while a slow model (MiniLM on a CPU takes seconds for 1,024
        texts) keeps 1,024-row chunks, so a crash loses little and progress moves; so does every ingest's
        first GROW_AFTER_ROWS rows, which keeps a small ingest's batches as they were."""
        cycle = time.perf_counter() - self.committed_at  # a compaction's time is not counted (``commit``)
        if self.commit_rows is not None or rows != self.rows or self.summary.rows_keyed < GROW_AFTER_ROWS:
            return
        if cycle <= FAST_CYCLE_S:
            self.rows = min(MAX_GROWN_ROWS, 2 * self.rows)
        elif cycle >= SLOW_CYCLE_S:
            self.rows = max(DEFAULT_COMMIT_ROWS, self.rows // 2)

    def prepare(self, start: int) -> _Chunk:
        sl = slice(start, min(start + self.chunk_rows(), self.work.total))
        t = time.perf_counter()
        keyed = key_texts(self.space.recipe, self.work.texts[sl], self.max_chars)
        self._time("clean", t)
        return _Chunk(sl, keyed, self.space.lacking(keyed))

    def advance(self, chunk: _Chunk, n: float) -> None:
        chunk.advanced += n
        if self.progress:
            self.progress(n, self.work.total)

    def embed(self, chunk: _Chunk) -> tuple[np.ndarray, float]:
        """In the model thread: the chunk's missing vectors, and the seconds they took."""
        per_text = (chunk.sl.stop - chunk.sl.start) / len(chunk.todo)

        def report(n: int) -> None:
            if self.stop.is_set():
                raise _Stopped
            self.advance(chunk, n * per_text)

        if self.stop.is_set():
            raise _Stopped
        self.load()
        t = time.perf_counter()
        vectors = self.space.embed(chunk.todo, progress=report)
        return vectors, time.perf_counter() - t

    def commit(self, chunk: _Chunk) -> None:
        sl, todo, keyed, s, work = chunk.sl, chunk.todo, chunk.keyed, self.summary, self.work
        s.rows_keyed += len(keyed)
        s.cache_hits += len(keyed) - len(todo)
        s.empty_after_cleaning += int(keyed.empty.sum())
        s.truncated += int(keyed.truncated.sum())
        vectors = np.zeros((0, self.space.space.dim), np.float32)
        if chunk.future is not None:
            vectors, seconds = chunk.future.result()
            s.timings["embed"] = s.timings.get("embed", 0.0) + seconds
        n_new = len(work.new_rows)
        rows = _slice_rows(work.new_rows, slice(sl.start, min(sl.stop, n_new))) if sl.start < n_new else None
        needs_key = work.needs_key[sl]
        keys = KeyBatch(self.space.recipe.name, work.ids[sl][needs_key], keyed.key_array()[needs_key])
        t = time.perf_counter()
        with _interrupt_after():  # a Ctrl-C here waits until the summary counts what was committed
            self.space.commit(todo, vectors, work.dataset, rows=rows, keys=keys, labels=self.labels)
            if self.labels is not None:
                s.labels_added, s.labels_changed = work.labels_added, work.labels_changed
                self.labels = None
            s.batches_committed += 1
            s.new_ids += max(0, min(sl.stop, n_new) - sl.start)
            s.embedded += len(todo)
        self._time("commit", t)
        self.adapt(sl.stop - sl.start)
        if self.w.snap.longest_list() > MAX_SEGMENTS:
            # Compacting as it goes keeps each commit's manifest small (compacting only at the end, a 5M-row ingest
            # spent 56% of its time publishing manifests that named every commit's segments); superseded segments
            # are deleted as manifests are pruned. Full segments (merge_plan) are not merged by an ingest (see
            # ``ingest``): a row is rewritten ~1 time at any size, and the manifest names a segment per 65,536 rows.
            t = time.perf_counter()
            self.space.compact(MAX_SEGMENTS, merge_full=False)
            self._time("compact", t)
        self.committed_at = time.perf_counter()
        self.advance(chunk, (sl.stop - sl.start) - chunk.advanced)
        if todo:
            s.device = self.space.embedder.device
        log.debug("committed batch %d: %d rows, %d embedded", s.batches_committed, sl.stop - sl.start, len(todo))

    def commit_labels(self) -> None:
        """A work list with no rows to key: only label updates (if any) to publish."""
        if self.labels is not None:
            with _interrupt_after():
                self.w.commit(self.work.dataset, labels=self.labels)
                self.summary.batches_committed += 1
                self.summary.labels_added = self.work.labels_added
                self.summary.labels_changed = self.work.labels_changed


def execute(
    w: Writer,
    work: WorkList,
    embedder: Embedder,
    recipe: Recipe,
    summary: IngestSummary,
    *,
    commit_rows: int | None = None,
    max_chars: int | None = None,
    progress: ProgressFn | None = None,
) -> None:
    """Embed what ``work`` lacks and commit it in batches of ``commit_rows`` rows through ``w``.

    The model runs in one background thread, a chunk or two ahead: while it embeds chunk k+1,
    this thread cleans and keys chunk k+2 and commits chunk k, so the model does not wait for
    the store. Commits stay in this thread, in input order, one per chunk, with the counts,
    drift check and canaries of a chunk-by-chunk loop; an error or Ctrl-C commits nothing after
    the chunk it hit, and the background thread stops at its next batch before this returns.
    """
    run = _Run(
        w,
        work,
        SpaceWriter(w, work.space, embedder, recipe, have=work.have.copy()),
        summary,
        commit_rows,
        cut_length(max_chars),
        progress,
    )
    if work.total == 0:
        run.commit_labels()
        return
    pending: deque[_Chunk] = deque()
    pool = ThreadPoolExecutor(1, thread_name_prefix="fs-embed")
    try:
        start = 0
        while start < work.total:
            try:
                chunk = run.prepare(start)
                start = chunk.sl.stop
                if chunk.todo and not run.space.checked:
                    while pending:  # the canaries are checked against the space as committed so far
                        run.commit(pending.popleft())
                    run.check()
            except Exception:
                while pending:  # a chunk-by-chunk loop would have committed these before failing here
                    run.commit(pending.popleft())
                raise
            if chunk.todo:
                chunk.future = pool.submit(run.embed, chunk)
            pending.append(chunk)
            while len(pending) > LOOKAHEAD:
                run.commit(pending.popleft())
        while pending:
            run.commit(pending.popleft())
    except BaseException:
        run.stop.set()
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
    max_chars = cut_length(max_chars)
    space = make_space(embedder, model, recipe, dtype)
    summary = IngestSummary(
        dataset,
        space.id,
        model,
        recipe.name,
        rows_read=table.rows_read,
        replaced_chars=table.replaced_chars,
        columns={"id": table.id_column, "label": table.label_column, "text": table.text_column},
        source_format=table.format,
        notes=list(table.notes),
    )
    with store.writer(wait=wait) as w:
        try:
            work = plan(store, w.snap, table, dataset, space)
            summary.duplicates = work.duplicates
            execute(w, work, embedder, recipe, summary, commit_rows=commit_rows, max_chars=max_chars, progress=progress)
            if summary.batches_committed:
                # Full segments (65,536 rows) are final here too: merging them to stay under MAX_SEGMENTS rewrote
                # each row 2.6 more times at 10M rows and 0 times at 1M (simulated with merge_plan), so the rate
                # fell with the store's size; left alone, a row is rewritten ~1 time at any size, and a 10M-row
                # space is ~160 segment files.
                w.compact(merge_full=False)
        except KeyboardInterrupt:
            summary.interrupted = True
            summary.seconds = time.perf_counter() - t0
            raise IngestInterrupted(summary) from None
    summary.seconds = time.perf_counter() - t0
    return summary
