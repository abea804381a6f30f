"""A dataset read a block of rows at a time, with the storage row of each row's vector in a space.

What ``fs train --classifier sgd`` and ``fs export`` read at 10M rows: the dataset's rows in insertion order
(ids, current labels, texts when asked), ``block_rows`` at a time, never a Python object per row of the whole
dataset. Where each row's vector is stored is found without the dicts of ``spaces.key_rows``:

- ids to keys: a dataset's key segments of a recipe list the ids of its rows in row order when the rows were
  ingested under that recipe (the usual case), so each block's keys are the next rows of the key segments,
  confirmed id by id; from the first block that differs on, a join on 64-bit id hashes (``lookups.column_hashes``)
  over every key row (48 B a key row), a hash shared by several key rows settled by reading their ids.
- keys to storage rows: ``SpaceRows``, the space's 128-bit keys (hex decoded) sorted by their first 64 bits,
  with the row of each (24 B a stored vector).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from featurestore.errors import DatasetError, StoreError
from featurestore.storage.keys import KEY_DTYPE
from featurestore.storage.lookups import column_hashes, id_hashes, read_at
from featurestore.storage.manifest import Dataset, Segment, Space
from featurestore.storage.store import Store, as_text_column

BLOCK_ROWS = 65536  # rows a block: ids, labels and texts of 64k tweets are a few MB
_KEY_READ_ROWS = 1 << 20  # keys decoded at a time while a space's table is built (32 MB of hex)

_NIBBLE = np.full(256, 255, dtype=np.uint8)
_NIBBLE[np.frombuffer(b"0123456789", np.uint8)] = np.arange(10, dtype=np.uint8)
_NIBBLE[np.frombuffer(b"abcdef", np.uint8)] = np.arange(10, 16, dtype=np.uint8)
_NIBBLE[np.frombuffer(b"ABCDEF", np.uint8)] = np.arange(10, 16, dtype=np.uint8)


def key_words(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The 128 bits of each hex key as two uint64 (first half, second half), and whether it is a key (an empty
    or malformed entry is not)."""
    k = np.ascontiguousarray(np.asarray(keys, dtype=KEY_DTYPE))
    nib = _NIBBLE[k.view(np.uint8).reshape(len(k), 32)]
    valid = (nib != 255).all(axis=1)
    digest = np.ascontiguousarray((nib[:, 0::2] << 4) | nib[:, 1::2])  # (n, 16) bytes
    words = digest.view(">u8").reshape(len(k), 2).astype(np.uint64)
    return words[:, 0].copy(), words[:, 1].copy(), valid


class SpaceRows:
    """Storage row of any key of a space: its keys as 128-bit words sorted by the first word (binary search)."""

    def __init__(self, store: Store, space: Space) -> None:
        n = sum(seg.rows for seg in space.segments)
        hi, lo = np.empty(n, np.uint64), np.empty(n, np.uint64)  # filled in place: 32 B a vector at the peak
        at = 0
        for seg in space.segments:
            with store.open_segment(seg.file) as f:
                dset = f["keys"]
                for a in range(0, len(dset), _KEY_READ_ROWS):
                    h, lw, valid = key_words(dset[a : a + _KEY_READ_ROWS])
                    if not valid.all():
                        raise StoreError(
                            f"segment {seg.file} of space {space.id} holds keys that are not hex digests; "
                            f"fix: run 'fs check --store {store.path}'"
                        )
                    hi[at : at + len(h)], lo[at : at + len(h)] = h, lw
                    at += len(h)
        order = np.argsort(hi, kind="stable")
        self.hi = hi[order]
        del hi
        self.lo, self.rows = lo[order], order

    def rows_of(self, keys: np.ndarray) -> np.ndarray:
        """The storage row of each key, -1 where the space has none (or the entry is empty)."""
        hi, lo, valid = key_words(keys)
        a = np.searchsorted(self.hi, hi, side="left")
        b = np.searchsorted(self.hi, hi, side="right")
        out = np.full(len(hi), -1, dtype=np.int64)
        one = np.flatnonzero(valid & (b - a == 1))
        ok = self.lo[a[one]] == lo[one]
        out[one[ok]] = self.rows[a[one[ok]]]
        for j in np.flatnonzero(valid & (b - a > 1)).tolist():  # a first word shared by several keys: rare
            for c in range(int(a[j]), int(b[j])):
                if self.lo[c] == lo[j]:
                    out[j] = self.rows[c]
                    break
        return out


class _Cursor:
    """Columns of a list of segments, read in order any number of rows at a time (ids and labels as str)."""

    def __init__(self, store: Store, segs: Sequence[Segment], columns: Sequence[str]) -> None:
        self.store, self.segs, self.columns = store, list(segs), list(columns)
        self.seg, self.at = 0, 0

    def take(self, n: int) -> dict[str, np.ndarray]:
        parts: dict[str, list[np.ndarray]] = {c: [] for c in self.columns}
        while n > 0 and self.seg < len(self.segs):
            seg = self.segs[self.seg]
            m = min(n, seg.rows - self.at)
            with self.store.open_segment(seg.file) as f:
                for c in self.columns:
                    part = f[c][self.at : self.at + m]
                    parts[c].append(as_text_column(part, c) if c in ("ids", "labels") else part)
            self.at += m
            n -= m
            if self.at >= seg.rows:
                self.seg, self.at = self.seg + 1, 0
        return {c: np.concatenate(p) if p else np.zeros(0, dtype=object) for c, p in parts.items()}


class _KeyJoin:
    """Keys of ids by their 64-bit hash among every key row of a recipe (for key segments not in row order)."""

    def __init__(self, store: Store, segs: Sequence[Segment]) -> None:
        self.store, self.segs = store, list(segs)
        hashes, keys = [], []
        for seg in segs:
            with store.open_segment(seg.file) as f:
                hashes.append(column_hashes(f["ids"][()]))
                keys.append(np.asarray(f["keys"][()], dtype=KEY_DTYPE))
        h = np.concatenate(hashes) if hashes else np.zeros(0, np.uint64)
        self.keys = np.concatenate(keys) if keys else np.zeros(0, KEY_DTYPE)
        self.order = np.argsort(h, kind="stable")
        self.hashes = h[self.order]

    def keys_of(self, ids: np.ndarray) -> np.ndarray:
        """The key of each id (str), empty where it has none."""
        h = id_hashes(ids)
        a = np.searchsorted(self.hashes, h, side="left")
        b = np.searchsorted(self.hashes, h, side="right")
        pos = np.full(len(h), -1, dtype=np.int64)
        one = b - a == 1  # the id's own key row, if it has one (another id of the same hash would make two)
        pos[one] = self.order[a[one]]
        for j in np.flatnonzero(b - a > 1).tolist():
            cand = self.order[a[j] : b[j]]
            same = np.flatnonzero(read_at(self.store, self.segs, "ids", cand) == ids[j])
            pos[j] = cand[same[0]] if len(same) else -1
        out = np.zeros(len(h), dtype=KEY_DTYPE)
        out[pos >= 0] = self.keys[pos[pos >= 0]]
        return out


@dataclass(frozen=True)
class RowBlock:
    """Rows ``start .. start + len(ids)`` of a dataset, in insertion order."""

    start: int
    ids: np.ndarray  # str (object array)
    labels: np.ndarray  # current labels, "" = none (object array)
    texts: np.ndarray | None  # raw texts (object array), when asked
    rows: np.ndarray | None  # storage row of each row's vector in the space asked, -1 where it has none


def _label_updates(store: Store, ds: Dataset) -> dict[str, str]:
    """The last label written for each id of the dataset's label updates (held: one entry an updated id)."""
    ids, labels = store.label_updates(ds)
    return dict(zip(ids.tolist(), labels.tolist()))


def row_blocks(
    store: Store,
    ds: Dataset,
    space: Space | None = None,
    *,
    texts: bool = False,
    block_rows: int = BLOCK_ROWS,
) -> Iterator[RowBlock]:
    """The rows of ``ds`` in insertion order, at most ``block_rows`` at a time: ids, current labels (label
    updates applied, as ``Store.dataset_labels``), raw texts when ``texts``, and with a ``space`` the storage row
    of each row's vector (as ``spaces.key_rows``). Held besides a block: the space's ``SpaceRows`` (24 B a stored
    vector), the label updates, and key rows only when the recipe's key segments are not in row order."""
    updates = _label_updates(store, ds) if ds.labels else {}
    space_rows = SpaceRows(store, space) if space is not None else None
    key_segs = ds.keys.get(space.recipe, ()) if space is not None else ()
    keys = _Cursor(store, key_segs, ("ids", "keys"))
    join: _KeyJoin | None = None
    row_cursor = _Cursor(store, ds.rows, ("ids", "labels", "texts") if texts else ("ids", "labels"))
    total = sum(seg.rows for seg in ds.rows)
    for start in range(0, total, max(1, block_rows)):
        raw = row_cursor.take(block_rows)
        ids, labels = raw["ids"], raw["labels"]
        if updates:
            labels = np.array([updates.get(i, v) for i, v in zip(ids.tolist(), labels.tolist())], dtype=object)
        rows = None
        if space_rows is not None:
            if join is None:
                nxt = keys.take(len(ids))
                if len(nxt["ids"]) == len(ids) and bool((nxt["ids"] == ids).all()):
                    block_keys = nxt["keys"]
                else:  # key rows not in row order from here on
                    join = _KeyJoin(store, key_segs)
            if join is not None:
                block_keys = join.keys_of(ids)
            rows = space_rows.rows_of(block_keys)
        text = None
        if texts:
            text = np.empty(len(ids), dtype=object)
            text[:] = [bytes(t).decode("utf-8", "surrogatepass") for t in raw["texts"]]
        yield RowBlock(start, ids, labels, text, rows)


def missing_vectors(ds: Dataset, space: Space, missing: int, n: int) -> DatasetError:
    """The error of ``spaces.require_rows`` when ``missing`` of ``n`` rows have no vector in ``space``."""
    return DatasetError(
        f"{missing} of {n} rows of dataset {ds.name!r} have no vector in space {space.describe()}; "
        f"fix: run 'fs ingest FILE --dataset {ds.name} --model {space.model} --clean {space.recipe} "
        f"--dtype {space.dtype}' with the dataset's file"
    )
