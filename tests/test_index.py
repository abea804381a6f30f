"""The FAISS index against an exact numpy brute-force cosine search on the same seeded vectors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from featurestore.api import FeatureStore, SimilarResult
from featurestore.query import index as faiss_index
from featurestore.query import search
from tests.conftest import FAKE
from tests.fakes import CountingEmbedder, fake_vector

QUERIES = ["query one", "another query", "battery died", "my new phone", "zzz"]


def _texts(start: int, stop: int) -> list[str]:
    return [f"seeded tweet number {i}" for i in range(start, stop)]


def _ingest(fs: FeatureStore, tmp_path: Path, dataset: str, start: int, stop: int) -> None:
    p = tmp_path / f"{dataset}-{start}-{stop}.csv"
    p.write_text("id,text\n" + "".join(f"{i},{t}\n" for i, t in zip(range(start, stop), _texts(start, stop))))
    fs.ingest(str(p), dataset, FAKE, "raw-v1", embedder=CountingEmbedder())


def _brute(query: str, ids: list[int], k: int = 10) -> tuple[list[int], np.ndarray]:
    """Exact cosine top-k over the fake's vectors of ``seeded tweet number {id}``."""
    m = np.stack([fake_vector(f"seeded tweet number {i}") for i in ids]).astype(np.float64)
    m /= np.linalg.norm(m, axis=1, keepdims=True)
    q = fake_vector(query).astype(np.float64)
    q /= np.linalg.norm(q)
    s = m @ q
    top = np.argsort(-s, kind="stable")[:k]
    return [str(ids[j]) for j in top], s[top]


def _assert_matches_brute(fs: FeatureStore, ids: list[int], dataset: str | None = None) -> SimilarResult:
    """The last query's result, once every query's hits equal brute force's."""
    for q in QUERIES:
        res = fs.similar(q, k=10, model=FAKE, clean="raw-v1", dataset=dataset)
        hits = res.hits
        want_ids, want_scores = _brute(q, ids)
        assert [h.ids[0][1] for h in hits] == want_ids
        np.testing.assert_allclose([h.score for h in hits], want_scores, atol=1e-5)
        assert [h.rank for h in hits] == list(range(1, 11))
        assert all(h.text == f"seeded tweet number {h.ids[0][1]}" for h in hits)
        assert res.query == "embedded"
    return res


def test_exact_search_equals_brute_force(fs: FeatureStore, tmp_path: Path) -> None:
    _ingest(fs, tmp_path, "d", 0, 400)
    res = _assert_matches_brute(fs, list(range(400)))
    assert res.index == "in memory"  # built on the first query, reused (files unchanged) by the later ones
    assert (fs.path / "index" / f"{res.space}.faiss").is_file()


def test_index_module_directly(fs: FeatureStore, tmp_path: Path) -> None:
    _ingest(fs, tmp_path, "d", 0, 50)
    space = fs.space(FAKE, "raw-v1")
    opened = faiss_index.open_index(fs.store, space)
    assert opened.status == "built" and opened.rows == 50
    stored = np.concatenate([b for _, b in fs.store.iter_vectors(space)])
    q = np.stack([fake_vector(t) for t in QUERIES])
    scores, rows = faiss_index.search(opened, q, 10)
    want = faiss_index.normalize(q) @ faiss_index.normalize(stored).T
    for i in range(len(QUERIES)):
        order = np.argsort(-want[i], kind="stable")[:10]
        assert rows[i].tolist() == order.tolist()
        np.testing.assert_allclose(scores[i], want[i][order], atol=1e-5)
    # more neighbours asked than rows: k is capped
    s2, r2 = faiss_index.search(opened, q[:1], 500)
    assert r2.shape == (1, 50) and sorted(r2[0].tolist()) == list(range(50))


def test_normalize_keeps_zero_rows_zero() -> None:
    v = np.array([[3.0, 4.0], [0.0, 0.0]], np.float32)
    np.testing.assert_allclose(faiss_index.normalize(v), [[0.6, 0.8], [0.0, 0.0]])


def test_incremental_update_after_the_store_grows(
    fs: FeatureStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _ingest(fs, tmp_path, "d", 0, 300)
    assert fs.similar("query one", model=FAKE, clean="raw-v1").index == "built"
    _ingest(fs, tmp_path, "d", 300, 450)
    res = fs.similar("query one", model=FAKE, clean="raw-v1")  # this process holds the index: brute-force tail
    assert res.index == "in memory, 150 newer rows searched by brute force"
    _assert_matches_brute(fs, list(range(450)))
    fresh = FeatureStore(fs.path)  # a new process maps the saved file and scores the newer rows beside it
    res = fresh.similar("query one", model=FAKE, clean="raw-v1")
    assert res.index == "loaded, 150 newer rows searched by brute force" and res.index_mmap
    assert _assert_matches_brute(fresh, list(range(450))).index == "in memory"
    monkeypatch.setattr(search, "TAIL_MAX_ROWS", 100)  # a tail larger than that: the file is extended on disk
    res = FeatureStore(fs.path).similar("query one", model=FAKE, clean="raw-v1")
    assert res.index.startswith("extended") and "150 rows" in res.index
    assert FeatureStore(fs.path).similar("query one", model=FAKE, clean="raw-v1").index == "loaded"


@pytest.mark.parametrize("damage", ["corrupt", "truncate", "manifest"])
def test_damaged_index_is_rebuilt(fs: FeatureStore, tmp_path: Path, damage: str) -> None:
    _ingest(fs, tmp_path, "d", 0, 300)
    path = fs.path / "index" / f"{fs.similar('query one', model=FAKE, clean='raw-v1').space}.faiss"
    data = bytearray(path.read_bytes())
    if damage == "corrupt":
        data[len(data) // 2 : len(data) // 2 + 64] = b"\xff" * 64
        path.write_bytes(bytes(data))
    elif damage == "truncate":
        path.write_bytes(bytes(data[: len(data) // 3]))
    else:
        path.with_suffix(".json").write_bytes(b"{not json")
    assert fs.similar("query one", model=FAKE, clean="raw-v1").index.startswith("rebuilt")
    assert _assert_matches_brute(fs, list(range(300))).index == "in memory"
    assert FeatureStore(fs.path).similar("query one", model=FAKE, clean="raw-v1").index == "loaded"  # saved


def test_dataset_restriction(fs: FeatureStore, tmp_path: Path) -> None:
    _ingest(fs, tmp_path, "a", 0, 200)
    _ingest(fs, tmp_path, "b", 200, 500)
    _assert_matches_brute(fs, list(range(200, 500)), dataset="b")
    _assert_matches_brute(fs, list(range(0, 200)), dataset="a")
    hits = fs.similar("query one", k=500, model=FAKE, clean="raw-v1", dataset="a").hits
    assert len(hits) == 200 and {h.ids[0][0] for h in hits} == {"a"}
    _assert_matches_brute(fs, list(range(0, 500)))  # no restriction: both


def test_similar_by_id_and_by_stored_text(fs: FeatureStore, tmp_path: Path) -> None:
    _ingest(fs, tmp_path, "d", 0, 100)
    res = fs.similar(id="42", k=3, model=FAKE, clean="raw-v1")
    hits = res.hits
    assert res.query == "stored vector"
    assert hits[0].ids == [("d", "42")] and hits[0].score == pytest.approx(1.0, abs=1e-5)
    CountingEmbedder.log.clear()
    res = fs.similar("seeded tweet number 7", k=3, model=FAKE, clean="raw-v1")
    hits = res.hits
    assert res.query == "stored vector (model not loaded)" and CountingEmbedder.log == []
    assert hits[0].ids == [("d", "7")] and hits[0].text == "seeded tweet number 7"
    want, _ = _brute("seeded tweet number 7", list(range(100)), 3)
    assert [h.ids[0][1] for h in hits] == want


def test_new_query_texts_load_the_model_once_per_process(fs: FeatureStore, tmp_path: Path, monkeypatch) -> None:
    from featurestore.query import search

    _ingest(fs, tmp_path, "d", 0, 50)
    loads = []
    real = search.load_embedder
    monkeypatch.setattr(search, "load_embedder", lambda spec, **kw: loads.append(spec) or real(spec, **kw))
    for q in ("first unseen query", "second unseen query", "third one"):
        res = fs.similar(q, k=2, model=FAKE, clean="raw-v1")
        assert res.query == "embedded" and len(res.hits) == 2
    assert loads == [FAKE]


def test_a_mapped_flat_index_is_scanned_from_its_file_only_while_it_is_the_mapped_one(tmp_path: Path) -> None:
    fs = FeatureStore(tmp_path / "s")
    _ingest(fs, tmp_path, "a", 0, 300)
    fs.similar("warm up", model=FAKE, clean="raw-v1")  # builds and saves the flat index
    cold = FeatureStore(tmp_path / "s")  # a new process: the index is mapped, its vectors read by blocks
    opened = cold._search.indexes.held(cold.similar("x", model=FAKE, clean="raw-v1").space)
    assert opened.mmap and opened.vectors is not None
    _assert_matches_brute(cold, list(range(300)))
    filtered = {h.ids[0][1] for h in cold.similar("battery died", k=300, dataset="a", model=FAKE, clean="raw-v1").hits}
    assert filtered == {str(i) for i in range(300)}  # the restricted scan reads the same blocks

    path = faiss_index.index_paths(cold.store, cold.space(FAKE, "raw-v1"))[0]
    data = bytearray(Path(path).read_bytes())
    data[-4:] = np.float32(123.0).tobytes()  # the last vector's last value: not the mapped file any more
    other = tmp_path / "other.faiss"
    other.write_bytes(bytes(data))
    assert faiss_index.VectorFile.of(str(other), opened.index) is None
    assert faiss_index.VectorFile.of(path, opened.index) is not None


def test_top_k_equals_a_full_sort_over_blocks() -> None:
    """The merge skips rows that beat no query's k-th best so far; what it returns is still the full sort's top k."""
    from featurestore.query.index import top_k

    rng = np.random.default_rng(0)
    for _ in range(300):
        nq, k, start, blocks = int(rng.integers(1, 6)), int(rng.integers(1, 12)), 0, []
        for _ in range(int(rng.integers(1, 6))):
            m = int(rng.integers(0, 40))
            s = rng.standard_normal((nq, m)).astype(np.float32)
            if rng.random() < 0.3:
                s[:, : m // 2] = -np.inf  # rows a restriction masked out
            blocks.append((s, np.arange(start, start + m)))
            start += m
        scores = np.concatenate([s for s, _ in blocks], axis=1)
        got_s, got_r = top_k(iter(blocks), nq, k)
        assert got_s.shape == got_r.shape == (nq, k)
        for i in range(nq):
            order = np.argsort(-scores[i], kind="stable")[:k]
            np.testing.assert_array_equal(got_s[i, : len(order)], scores[i, order])
            real = np.isfinite(got_s[i])
            np.testing.assert_array_equal(scores[i, got_r[i, real]], got_s[i, real])  # each row has its score
            assert (got_r[i, len(order) :] == -1).all()
