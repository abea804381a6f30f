"""A long-lived process (``fs serve``) following ingests: rows committed after its index was opened are
searched by brute force beside it, with answers equal to a fresh process's, until the tail is large."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from featurestore.api import FeatureStore
from featurestore.query import search
from tests.conftest import FAKE, train_rows, write_csv

RECIPE = "basic-v1"


def answers(fs: FeatureStore, texts: list[str], **kw) -> tuple[list[list[str]], np.ndarray]:
    results = fs.similar(texts=texts, k=5, model=FAKE, clean=RECIPE, **kw)
    return [[h.ids[0][1] for h in r.hits] for r in results], np.array([[h.score for h in r.hits] for r in results])


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_newer_rows_are_found_beside_the_held_index(tmp_path: Path, kind: str) -> None:
    rows = train_rows(600)
    served = FeatureStore(tmp_path / "s")
    served.ingest(str(write_csv(tmp_path / "a.csv", rows[:400])), "train", FAKE, RECIPE)
    served.index_build(kind, nlist=8 if kind == "ivf" else None, model=FAKE, clean=RECIPE)
    queries = [r["tweet"] for r in rows[390:410]]  # ten stored before the index, ten after it
    res = served.similar(queries[0], k=5, model=FAKE, clean=RECIPE)
    held = served._search.indexes.held(res.space)

    FeatureStore(tmp_path / "s").ingest(str(write_csv(tmp_path / "b.csv", rows[400:])), "train", FAKE, RECIPE)
    got = answers(served, queries, nprobe=8 if kind == "ivf" else None)
    res = served.similar(queries[-1], k=5, model=FAKE, clean=RECIPE)
    newer = served.space(FAKE, RECIPE).rows - held.rows
    assert 190 <= newer <= 200  # texts equal after cleaning share a vector
    assert res.index == f"in memory, {newer} newer rows searched by brute force"
    assert served._search.indexes.held(res.space) is held  # not reopened, not extended on disk
    assert [per[0] for per in got[0]] == [q["id"] for q in rows[390:410]]  # its own row first, old or new
    assert np.allclose(got[1][:, 0], 1.0, atol=1e-5)
    fresh = FeatureStore(tmp_path / "s")  # a new process: the index as saved, the newer rows beside it
    ids, scores = answers(fresh, queries, nprobe=8 if kind == "ivf" else None)
    assert ids == got[0] and np.allclose(scores, got[1], atol=1e-5)  # FAISS and numpy round apart ~1e-6


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_a_new_process_after_a_small_ingest_maps_the_index_and_leaves_its_file_alone(tmp_path: Path, kind: str) -> None:
    """The first `fs similar` after an `fs ingest`: the saved index is mapped, not read whole, extended and
    written back (15 GB each way at 10M vectors); the newer rows are scored exactly beside it."""
    rows = train_rows(600)
    fs = FeatureStore(tmp_path / "s")
    fs.ingest(str(write_csv(tmp_path / "a.csv", rows[:400])), "train", FAKE, RECIPE)
    fs.index_build(kind, nlist=8 if kind == "ivf" else None, model=FAKE, clean=RECIPE)
    indexed = fs.space(FAKE, RECIPE).rows
    files = sorted((tmp_path / "s" / "index").glob("*.faiss"))
    before = [(p.stat().st_size, p.stat().st_mtime_ns, p.stat().st_ino) for p in files]
    FeatureStore(tmp_path / "s").ingest(str(write_csv(tmp_path / "b.csv", rows[400:])), "train", FAKE, RECIPE)
    queries = [r["tweet"] for r in rows[390:410]]
    cold = FeatureStore(tmp_path / "s")
    res = cold.similar(queries[-1], k=5, model=FAKE, clean=RECIPE)
    newer = cold.space(FAKE, RECIPE).rows - indexed
    assert newer > 150 and res.index == f"loaded, {newer} newer rows searched by brute force"
    assert res.index_mmap and res.hits[0].ids[0][1] == rows[409]["id"]
    assert [(p.stat().st_size, p.stat().st_mtime_ns, p.stat().st_ino) for p in files] == before  # untouched
    ids, scores = answers(FeatureStore(tmp_path / "s"), queries, nprobe=8 if kind == "ivf" else None)
    exact_ids, exact_scores = answers(FeatureStore(tmp_path / "s"), queries, exact=True)
    assert ids == exact_ids and np.allclose(scores, exact_scores, atol=1e-5)


def test_a_large_tail_brings_the_index_up_to_date(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(search, "TAIL_MAX_ROWS", 50)
    rows = train_rows(300)
    served = FeatureStore(tmp_path / "s")
    served.ingest(str(write_csv(tmp_path / "a.csv", rows[:200])), "train", FAKE, RECIPE)
    served.similar(rows[0]["tweet"], k=3, model=FAKE, clean=RECIPE)
    FeatureStore(tmp_path / "s").ingest(str(write_csv(tmp_path / "b.csv", rows[200:])), "train", FAKE, RECIPE)
    res = served.similar(rows[250]["tweet"], k=3, model=FAKE, clean=RECIPE)
    assert res.index.startswith("extended by")
    assert res.hits[0].ids[0][1] == rows[250]["id"]


def _same_ranking(got: list[tuple], want: list[tuple], atol: float = 1e-5) -> None:
    """Equal hits, best first, up to the order of near-ties: a batch's matrix product rounds apart from one
    query's (other BLAS kernels), so two hits whose scores differ by less than that may swap."""
    assert len(got) == len(want)
    for (ids, score), (want_ids, want_score) in zip(got, want):
        assert abs(score - want_score) <= atol
        if ids != want_ids:  # only a near-tie may swap: the wanted hit is elsewhere in got, at that score
            assert any(i == want_ids and abs(s - want_score) <= atol for i, s in got), (want_ids, want_score)


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_a_server_scores_the_tail_in_its_shared_search_for_every_restriction(tmp_path: Path, kind: str) -> None:
    from concurrent.futures import ThreadPoolExecutor

    rows = train_rows(500)
    path = tmp_path / "s"
    FeatureStore(path).ingest(str(write_csv(tmp_path / "a.csv", rows[:400])), "train", FAKE, RECIPE)
    served = FeatureStore(path)
    served.index_build(kind, nlist=8 if kind == "ivf" else None, model=FAKE, clean=RECIPE)
    served.warm(FAKE, RECIPE)  # a server: held segments, shared searches
    assert served._search.batcher is not None
    other = [dict(r, id=f"o{r['id']}") for r in rows[400:440]]  # a second dataset, all of it in the tail
    FeatureStore(path).ingest(str(write_csv(tmp_path / "b.csv", other + rows[440:])), "train2", FAKE, RECIPE)
    texts = [r["tweet"] for r in rows[380:460:4]]
    asks = [(t, ds, k) for t in texts for ds, k in ((None, 5), ("train", 450), ("train2", 200))]
    opts = {"nprobe": 8} if kind == "ivf" else {}

    def ask(a: tuple) -> list[tuple]:
        text, ds, k = a
        res = served.similar(text, k=k, dataset=ds, model=FAKE, clean=RECIPE, **opts)
        assert "newer rows searched by brute force" in res.index
        return [(h.ids, h.score) for h in res.hits]

    before = served._search.batcher.scans
    with ThreadPoolExecutor(12) as pool:
        got = list(pool.map(ask, asks))
    assert served._search.batcher.scans - before < len(asks)  # some searches were shared
    fresh = FeatureStore(path)
    for (text, ds, k), mine in zip(asks, got):
        hits = fresh.similar(text, k=k, dataset=ds, model=FAKE, clean=RECIPE, **opts).hits
        _same_ranking(mine, [(h.ids, h.score) for h in hits])
        if ds is not None:
            assert all(any(d == ds for d, _ in ids) for ids, _ in mine)  # no other dataset's row, however few
    # fewer rows than k: each dataset's own, not padding nor the other's (the tail is all train2's)
    assert len(got[1]) == 400 and len(got[2]) == 100
