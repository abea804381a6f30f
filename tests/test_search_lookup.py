"""Naming a query's hits from per-segment lookups: a long-lived process that holds segments open and
packs ids/labels/texts in memory answers exactly as a cold process reading HDF5, across new
generations, label changes and ids stored in two datasets; id tables grow by parts and are saved."""

from __future__ import annotations

import os
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from featurestore.api import FeatureStore
from featurestore.query import search
from featurestore.storage import lookups
from featurestore.storage.keys import KEY_DTYPE
from featurestore.storage.store import Store
from tests.conftest import FAKE, train_rows, write_csv

RECIPE = "basic-v1"


def named(fs: FeatureStore, texts: list[str], ids: list[str]) -> list:
    """Every hit of some text and id queries, as plain tuples (owners, text, label, score)."""
    results = fs.similar(texts=texts, k=4, model=FAKE, clean=RECIPE)
    results += [fs.similar(id=i, dataset="train", k=4, model=FAKE, clean=RECIPE) for i in ids]
    return [[(h.ids, h.text, h.label, h.score) for h in r.hits] for r in results]


def same_hits(a: list, b: list) -> None:
    """The same hits named the same way; scores equal to float32 rounding (rows newer than a held index are
    scored beside it by another kernel than a fresh index's)."""
    assert [[h[:3] for h in per] for per in a] == [[h[:3] for h in per] for per in b]
    assert np.allclose([h[3] for per in a for h in per], [h[3] for per in b for h in per], atol=1e-5)


def _written_then_held(
    tmp_path: Path, rows: list[dict[str, str]], commit_rows: int
) -> tuple[FeatureStore, FeatureStore]:
    """(a writer that ingested ``rows`` into dataset train of store ``tmp_path/s``, a reader of that store warmed
    as ``fs serve`` warms it: segments held open, columns packed, lookups built before any query)."""
    writer = FeatureStore(tmp_path / "s")
    writer.ingest(str(write_csv(tmp_path / "a.csv", rows)), "train", FAKE, RECIPE, commit_rows=commit_rows)
    held = FeatureStore(tmp_path / "s")
    held.warm(FAKE, RECIPE)
    return writer, held


def test_a_held_process_names_hits_like_a_cold_one_across_generations(tmp_path: Path) -> None:
    rows = train_rows(500)
    path = tmp_path / "s"
    writer, held = _written_then_held(tmp_path, rows[:300], commit_rows=64)  # held: segments open, columns packed
    assert held._search.packed and held.store._held
    texts = [r["tweet"] for r in rows[::25]]
    ids = [r["id"] for r in rows[:300:37]]
    first = named(held, texts, ids)
    same_hits(first, named(FeatureStore(path), texts, ids))

    # new rows, changed labels, and the same texts under other ids in a second dataset
    relabelled = [dict(r, label=str(1 - int(r["label"]))) for r in rows[:300:7]]
    writer.ingest(str(write_csv(tmp_path / "b.csv", relabelled + rows[300:])), "train", FAKE, RECIPE, commit_rows=64)
    other = [dict(r, id=f"o{r['id']}") for r in rows[:50]]
    writer.ingest(str(write_csv(tmp_path / "c.csv", other)), "other", FAKE, RECIPE)
    again = named(held, texts, ids)
    same_hits(again, named(FeatureStore(path), texts, ids))
    labels = {h[0][0]: h[2] for per in again for h in per if h[0][0][0] == "train"}
    changed = {("train", r["id"]): r["label"] for r in relabelled}
    assert any(k in changed for k in labels)  # some hit is a relabelled row ...
    assert all(labels[k] == changed[k] for k in labels if k in changed)  # ... named with its new label
    assert any(len(h[0]) == 2 for per in again for h in per)  # a text stored under two datasets' ids
    with pytest.raises(search.UnknownIdError, match="'nope' is not in dataset 'train'"):
        held.similar(id="nope", dataset="train", model=FAKE, clean=RECIPE)


def test_id_tables_grow_by_parts_and_are_saved_when_merged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lookups, "MAX_ID_PARTS", 3)
    monkeypatch.setattr(lookups, "SAVE_ID_ROWS", 10**9)  # only the part count triggers a merge here
    rows = train_rows(240)
    path = tmp_path / "s"
    fs = FeatureStore(path)
    fs.ingest(str(write_csv(tmp_path / "a.csv", rows[:40])), "train", FAKE, RECIPE)
    cache, store = search.SearchCache(packed=True), Store(path)  # a server's: saves only merged tables

    def check(n: int) -> lookups.IdTable:
        ds = store.snapshot().datasets["train"]
        got = cache.find_ids(store, ds.rows, "train-rows", [r["id"] for r in rows[:n]] + ["missing"])
        all_ids = store.dataset_ids(ds).tolist()
        assert got.tolist() == [all_ids.index(r["id"]) for r in rows[:n]] + [-1]
        cache.save_tables()
        return cache.ids_table(store, ds.rows, "train-rows")  # the table find_ids used: held, not rebuilt

    assert len(check(40).parts) == 1  # built from nothing: one sorted part, saved
    saved = Path(path) / "index" / "ids-train-rows.npy"
    assert saved.exists()
    stamp = os.stat(saved).st_mtime_ns
    for n in (80, 120):  # each ingest appends one segment: one more part, nothing written
        fs.ingest(str(write_csv(tmp_path / f"{n}.csv", rows[n - 40 : n])), "train", FAKE, RECIPE)
        assert len(check(n).parts) == n // 40
    assert os.stat(saved).st_mtime_ns == stamp
    fs.ingest(str(write_csv(tmp_path / "160.csv", rows[120:160])), "train", FAKE, RECIPE)
    assert len(check(160).parts) == 1 and os.stat(saved).st_mtime_ns != stamp  # 4 parts > 3: merged, saved
    cold = search.SearchCache()  # a new process starts from the saved table
    ds = store.snapshot().datasets["train"]
    assert len(cold.ids_table(store, ds.rows, "train-rows").parts) == 1 and not cold.id_tables.pending
    fs.ingest(str(write_csv(tmp_path / "200.csv", rows[160:200])), "train", FAKE, RECIPE)
    ds = store.snapshot().datasets["train"]
    table = cold.ids_table(store, ds.rows, "train-rows")
    assert len(table.parts) == 1 and cold.id_tables.pending  # a CLI process: saved
    cold.save_tables()
    assert len(search.SearchCache().ids_table(store, ds.rows, "train-rows").parts) == 1


def test_held_segment_handles_are_reused_and_reopened_when_the_file_changes(tmp_path: Path) -> None:
    FeatureStore(tmp_path / "s").ingest(str(write_csv(tmp_path / "a.csv", train_rows(50))), "train", FAKE, RECIPE)
    store = Store(tmp_path / "s").hold_segments(limit=2)
    names = sorted(store.snapshot().files())
    assert len(names) >= 3
    with store.open_segment(names[0]) as f:
        first = f
    with store.open_segment(names[0]) as f:
        assert f is first and f.id.valid  # held, not closed after use
    path = store.segment_path(names[0])
    copy = path.with_suffix(".copy")
    copy.write_bytes(path.read_bytes())
    os.replace(copy, path)  # same name, another inode: never answered from the old handle
    with store.open_segment(names[0]) as f:
        assert f is not first
    for name in names[1:3]:
        with store.open_segment(name):
            pass
    assert list(store._held) == names[1:3]  # least recently used dropped at the limit
    store.release_segments({names[2]})  # a compaction superseded the others: closed, their space freed
    assert list(store._held) == names[2:3]
    np.testing.assert_array_equal(
        Store(tmp_path / "s").space_keys(next(iter(store.snapshot().spaces.values()))),
        store.space_keys(next(iter(store.snapshot().spaces.values()))),
    )


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_a_held_store_reads_vectors_in_place_as_h5py_does(tmp_path: Path, dtype: str) -> None:
    """A few rows from a held segment come from its memory map (chunk offsets): the same values as h5py
    gives, rows from every chunk and segment, and from the new file once one is replaced."""
    from featurestore.storage.store import _RowMap

    fs = FeatureStore(tmp_path / "s")
    fs.ingest(str(write_csv(tmp_path / "a.csv", train_rows(700))), "train", FAKE, RECIPE, dtype=dtype, commit_rows=300)
    cold = Store(tmp_path / "s")
    held = Store(tmp_path / "s").hold_segments()
    space = next(iter(cold.snapshot().spaces.values()))
    assert len(space.segments) >= 3
    by_row = cold.read_vectors(space, np.arange(space.rows))
    rows = np.random.default_rng(7).permutation(space.rows)
    got = np.concatenate([held.read_vectors(space, rows[i : i + 5]) for i in range(0, len(rows), 5)])
    np.testing.assert_array_equal(got, by_row[rows])
    maps = [held._held[seg.file]._map for seg in space.segments]
    assert all(isinstance(m, _RowMap) for m in maps)
    with pytest.raises(IndexError):
        maps[0].read(np.array([space.segments[0].rows]))
    # another file under the same name (a repair, a restore): read from the new one, never the old map
    path = held.segment_path(space.segments[0].file)
    other = tmp_path / "other.h5"
    with h5py.File(path, "r", locking=False) as src, h5py.File(other, "w", locking=False) as dst:
        for name, value in src.attrs.items():
            dst.attrs[name] = value
        for name in src:
            data = src[name][()]
            dst.create_dataset(name, data=-data if name == "vectors" else data, chunks=src[name].chunks)
    os.replace(other, path)
    first = rows[rows < space.segments[0].rows][:5]
    np.testing.assert_array_equal(held.read_vectors(space, first), -by_row[first])


def _coarse_prefix(keys: np.ndarray) -> np.ndarray:
    """Four distinct prefixes in all: every lookup goes through the shared-prefix paths."""
    k = np.ascontiguousarray(np.asarray(keys, dtype=KEY_DTYPE))
    return k.view(np.uint8).reshape(len(k), -1)[:, 0].astype(np.uint64) % 4 if len(k) else np.zeros(0, np.uint64)


@pytest.mark.parametrize("coarse", [False, True], ids=["prefixes", "shared-prefixes"])
def test_restricted_queries_follow_the_dataset_and_the_space(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, coarse: bool
) -> None:
    if coarse:
        monkeypatch.setattr(lookups, "key_prefixes", _coarse_prefix)
    rows = train_rows(400)
    path = tmp_path / "s"
    writer = FeatureStore(path)
    held = FeatureStore(path)
    store = Store(path)

    def check() -> None:
        snap = store.snapshot()
        (space,) = snap.spaces.values()
        space_keys = store.space_keys(space).tolist()
        for ds in snap.datasets.values():
            _, keys = store.dataset_keys(ds, RECIPE)
            want = sorted({space_keys.index(k) for k in keys.tolist()})
            assert held._search.restriction(store, space, ds).tolist() == want
            assert search.SearchCache().restriction(store, space, ds).tolist() == want
            hits = held.similar(rows[150]["tweet"], k=50, dataset=ds.name, model=FAKE, clean=RECIPE).hits
            assert {h.ids[0][0] for h in hits} == {ds.name} and all(h.ids for h in hits)

    writer.ingest(str(write_csv(tmp_path / "a.csv", rows[:200])), "a", FAKE, RECIPE)
    writer.ingest(
        str(write_csv(tmp_path / "b.csv", [dict(r, id=f"b{r['id']}") for r in rows[100:300]])), "b", FAKE, RECIPE
    )  # half its texts are a's: rows of b are not contiguous in the space
    check()
    writer.ingest(str(write_csv(tmp_path / "a2.csv", rows[300:])), "a", FAKE, RECIPE)  # both grow
    check()
    writer.ingest(
        str(write_csv(tmp_path / "b2.csv", [dict(r, id=f"c{r['id']}") for r in rows[:50]])), "b", FAKE, RECIPE
    )  # texts stored long ago, new to b
    check()


@pytest.mark.parametrize("kind", ["exact", "ivf"])
def test_concurrent_queries_share_one_search_and_get_their_own_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    import threading
    import time

    from featurestore.query import index as faiss_index

    rows = train_rows(400)
    path = tmp_path / "s"
    FeatureStore(path).ingest(str(write_csv(tmp_path / "a.csv", rows)), "train", FAKE, RECIPE)
    exact = kind == "exact"
    if not exact:
        FeatureStore(path).index_build(kind, model=FAKE, clean=RECIPE, nlist=8)
    queries = [(r["tweet"], k) for r, k in zip(rows[::20], [1, 3, 5, 10] * 5)]
    alone = FeatureStore(path)
    want = [
        [(h.ids, round(h.score, 5)) for h in alone.similar(q, k=k, exact=exact, model=FAKE, clean=RECIPE).hits]
        for q, k in queries
    ]
    served = FeatureStore(path)
    served.warm(FAKE, RECIPE)
    real = faiss_index.search

    def slow(*args, **kw):  # a scan long enough for every thread to be waiting behind the first
        time.sleep(0.3)
        return real(*args, **kw)

    monkeypatch.setattr(faiss_index, "search", slow)
    got: dict[int, list] = {}
    start = threading.Barrier(len(queries))

    def ask(n: int, q: str, k: int) -> None:
        start.wait()
        res = served.similar(q, k=k, exact=exact, model=FAKE, clean=RECIPE)
        assert res.index_kind.startswith("exact" if exact else "IVF")
        got[n] = [(h.ids, round(h.score, 5)) for h in res.hits]

    threads = [threading.Thread(target=ask, args=(n, q, k)) for n, (q, k) in enumerate(queries)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [got[n] for n in range(len(queries))] == want  # each its own hits, its own k
    assert 1 <= served._search.batcher.scans <= 3  # 20 queries: the first alone, the rest together (or nearly)


def test_one_scan_serves_queries_of_every_restriction(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Concurrent brute-force queries, some restricted to a dataset, some not, share one scan, and each gets
    what it gets alone; a restriction with fewer rows than k pads with missing hits, as FAISS does."""
    import threading
    import time

    from featurestore.query import index as faiss_index

    rows = train_rows(400)
    path = tmp_path / "s"
    fs = FeatureStore(path)
    fs.ingest(str(write_csv(tmp_path / "a.csv", rows[:300])), "a", FAKE, RECIPE)
    fs.ingest(str(write_csv(tmp_path / "b.csv", rows[300:303])), "b", FAKE, RECIPE)  # 3 rows: fewer than k
    asks = [(r["tweet"], d, k) for r, d, k in zip(rows[::25], [None, "a", "b"] * 6, [2, 5, 10] * 6)]
    alone = FeatureStore(path)
    want = [
        [(h.ids, round(h.score, 5)) for h in alone.similar(q, k=k, dataset=d, model=FAKE, clean=RECIPE).hits]
        for q, d, k in asks
    ]
    assert any(len(w) < k for w, (_, _, k) in zip(want, asks))  # the 3-row dataset runs out of hits
    served = FeatureStore(path)
    served.warm(FAKE, RECIPE)
    real = faiss_index.search
    groups: list[int] = []

    def slow(opened, q, k, allowed=None, **kw):  # a scan long enough for every thread to be waiting
        time.sleep(0.3)
        groups.append(len({id(a) for a in allowed}) if isinstance(allowed, list) else 1)
        return real(opened, q, k, allowed, **kw)

    monkeypatch.setattr(faiss_index, "search", slow)
    got: dict[int, list] = {}
    start = threading.Barrier(len(asks))

    def ask(n: int, q: str, d: str | None, k: int) -> None:
        start.wait()
        hits = served.similar(q, k=k, dataset=d, model=FAKE, clean=RECIPE).hits
        got[n] = [(h.ids, round(h.score, 5)) for h in hits]

    threads = [threading.Thread(target=ask, args=(n, *a)) for n, a in enumerate(asks)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [got[n] for n in range(len(asks))] == want
    assert 1 <= served._search.batcher.scans <= 3 and max(groups) == 3  # the three restrictions in one scan


def test_per_query_restrictions_equal_one_search_each(tmp_path: Path) -> None:
    from featurestore.query import index as faiss_index

    FeatureStore(tmp_path / "s").ingest(str(write_csv(tmp_path / "a.csv", train_rows(300))), "train", FAKE, RECIPE)
    store = Store(tmp_path / "s")
    space = next(iter(store.snapshot().spaces.values()))
    q = store.read_vectors(space, np.arange(0, 60, 10)) + 0.01
    few, half = np.array([3, 7, 250]), np.arange(0, space.rows, 2)
    each = [None, few, half, few, None, half]
    for kind in ("flat", "ivf"):
        opened = faiss_index.build_index(store, space, kind, nlist=4 if kind == "ivf" else None)
        for exact in (False, True):
            s, r = faiss_index.search(opened, q, 5, each, exact=exact, store=store, space=space)
            for i, a in enumerate(each):
                s1, r1 = faiss_index.search(opened, q[i : i + 1], 5, a, exact=exact, store=store, space=space)
                np.testing.assert_array_equal(r[i], r1[0])
                np.testing.assert_allclose(s[i], s1[0], rtol=1e-5)
            assert (r[1] == -1).sum() == 2 and set(r[1][r[1] >= 0]) <= set(few.tolist())


def test_a_servers_merged_key_tables_find_what_per_segment_lookups_find(tmp_path: Path) -> None:
    rows = train_rows(400)
    writer, held = _written_then_held(tmp_path, rows[:200], commit_rows=32)
    store, cache = held.store, held._search
    segs = store.snapshot().datasets["train"].keys[RECIPE]
    assert len(segs) > 2 and cache.lookups.merged(segs[0].file)[0] == tuple(s.file for s in segs)  # warm merged them
    # Later segments, holding the same texts under other ids too: a tail past the merged table.
    again = [dict(r, id=f"again-{r['id']}") for r in rows[:100]]
    writer.ingest(str(write_csv(tmp_path / "b.csv", again + rows[200:])), "train", FAKE, RECIPE, commit_rows=40)
    segs = store.snapshot().datasets["train"].keys[RECIPE]
    assert len(segs) > 7 + search.MERGE_TAIL  # a's 7 (merged by warm), b's 8 of which compaction merged the newest 4
    cold = search.SearchCache()  # a short-lived process's per-segment lookups
    stored = np.concatenate([cold.lookups.segment_keys(store, s).keys for s in segs])
    rng = np.random.default_rng(0)
    wanted = np.concatenate(
        [stored[rng.choice(len(stored), 60, replace=False)], np.array([b"0" * 32, b"f" * 32], dtype=KEY_DTYPE)]
    )  # two absent keys
    want = cold.find_keys(store, segs, wanted)
    assert sum(len(w) > 1 for w in want) >= 5  # texts stored twice: positions in two segments, ascending
    warmed = cache.lookups.merged(segs[0].file)[1]
    parts = cache.lookups.key_parts(store, segs)  # starts a background merge (the tail is long), which may end at once
    assert parts[0][1] == 0 and len(parts) > 1 + search.MERGE_TAIL and parts[0][0] is warmed
    got = cache.find_keys(store, segs, wanted)
    assert all(np.array_equal(g, w) for g, w in zip(got, want)) and len(got) == len(want)
    for _ in range(500):
        if cache.lookups.merged(segs[0].file)[0] == tuple(s.file for s in segs):
            break
        time.sleep(0.01)
    assert len(cache.lookups.key_parts(store, segs)) == 1  # one table for every segment now
    got = cache.find_keys(store, segs, wanted)
    assert all(np.array_equal(g, w) for g, w in zip(got, want))
    assert [int(p[0]) if len(p) else -1 for p in want[-2:]] == [-1, -1]


def test_a_query_answers_from_the_snapshot_it_is_given(tmp_path: Path) -> None:
    """``FeatureStore.similar(snapshot=)`` (a server reads the snapshot once a request): rows committed after
    that snapshot are not its answers; without it, the latest generation answers."""
    rows = train_rows(120)
    writer, held = _written_then_held(tmp_path, rows[:100], commit_rows=64)
    before = held.store.snapshot()
    writer.ingest(str(write_csv(tmp_path / "b.csv", rows[100:])), "train", FAKE, RECIPE)
    text = rows[110]["tweet"]
    old = held.similar(text, k=1, model=FAKE, clean=RECIPE, snapshot=before)
    new = held.similar(text, k=1, model=FAKE, clean=RECIPE)
    assert new.hits[0].ids == [("train", rows[110]["id"])] and new.hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert new.query == "stored vector (model not loaded)"
    assert ("train", rows[110]["id"]) not in old.hits[0].ids and old.hits[0].score < 0.999
    assert old.query == "embedded"  # the text is not in the older snapshot's keys
