"""Index kinds against exact brute force on seeded clustered data; staleness, tampering, mmap, batch queries.

Small n (a few thousand 32-d vectors) keeps this fast; bench/index.py measures the same kinds at 1M.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cli.main import app
from featurestore.api import FeatureStore
from featurestore.check import check
from featurestore.embedders.base import Embedder, Fingerprint
from featurestore.query import index as faiss_index
from featurestore.query import search

MODEL = "py:tests.test_index_scale:ClusteredEmbedder"
N = 3000
RECALL = {"flat": 1.0, "ivf": 0.95, "hnsw": 0.95, "ivfpq": 0.8}  # ivfpq: PQ4 codes at this tiny n


class ClusteredEmbedder(Embedder):
    """text -> a seeded point of 60 gaussian clusters of varying spread (32-d): like real embeddings,
    neighbours are close together and far from the rest, which is what IVF and HNSW rely on."""

    name = "clustered"
    DIM = 32

    def __init__(self) -> None:
        rng = np.random.default_rng(5)
        self._centres = rng.standard_normal((60, self.DIM)).astype(np.float32) * 3
        self._spread = rng.uniform(0.3, 1.2, 60).astype(np.float32)

    @property
    def dim(self) -> int:
        return self.DIM

    @property
    def fingerprint(self) -> Fingerprint:
        return Fingerprint(model="test-clustered", weights_sha256="1" * 64, output="raw", pooling="none")

    def vector(self, text: str) -> np.ndarray:
        seed = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")
        rng = np.random.default_rng(seed)
        c = int(rng.integers(60))
        return (self._centres[c] + self._spread[c] * rng.standard_normal(self.DIM)).astype(np.float32)

    def embed_batch(self, texts: list[str]) -> np.ndarray:
        return np.stack([self.vector(t) for t in texts])


def _texts(start: int, stop: int) -> list[str]:
    return [f"clustered tweet {i}" for i in range(start, stop)]


def _ingest(fs: FeatureStore, tmp_path: Path, start: int, stop: int, dataset: str = "d") -> None:
    p = tmp_path / f"{dataset}-{start}-{stop}.csv"
    p.write_text("id,text\n" + "".join(f"{i},{t}\n" for i, t in zip(range(start, stop), _texts(start, stop))))
    fs.ingest(str(p), dataset, MODEL, "raw-v1", embedder=ClusteredEmbedder(), commit_rows=4096)


def _brute(queries: np.ndarray, stored: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
    s = faiss_index.normalize(queries) @ faiss_index.normalize(stored).T
    top = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return top, np.take_along_axis(s, top, 1)


def _recall(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.mean([len(set(g) & set(w)) / len(w) for g, w in zip(got.tolist(), want.tolist())]))


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[FeatureStore, np.ndarray, np.ndarray]:
    """One store of N clustered vectors, its stored matrix, and 60 queries (half stored texts, half new)."""
    tmp = tmp_path_factory.mktemp("scale")
    fs = FeatureStore(tmp / "store")
    _ingest(fs, tmp, 0, N)
    space = fs.space(MODEL, "raw-v1")
    stored = np.concatenate([b for _, b in fs.store.iter_vectors(space)])
    e = ClusteredEmbedder()
    queries = np.stack([e.vector(t) for t in _texts(0, 30) + [f"new query {i}" for i in range(30)]])
    return fs, stored, queries


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw", "ivfpq"])
def test_each_kind_against_brute_force(built: tuple[FeatureStore, np.ndarray, np.ndarray], kind: str) -> None:
    fs, stored, queries = built
    space = fs.space(MODEL, "raw-v1")
    opened = faiss_index.build_index(fs.store, space, kind, m=4 if kind == "ivfpq" else None)  # PQ4: quick to train
    assert opened.kind == kind and opened.rows == N
    want, want_scores = _brute(queries, stored)
    _, rows = faiss_index.search(opened, queries, 10)
    assert _recall(rows, want) >= RECALL[kind], kind
    # exact: brute force whatever the kind (flat view, every IVF list, or the stored vectors for PQ codes)
    scores, rows = faiss_index.search(opened, queries, 10, exact=True, store=fs.store, space=space)
    assert rows.tolist() == want.tolist()
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)
    if kind in ("ivf", "ivfpq"):  # the knob works: one list is worse than many, all lists exact for IVF-Flat
        _, few = faiss_index.search(opened, queries, 10, nprobe=1)
        assert _recall(few, want) <= _recall(rows, want)
    if kind == "hnsw":
        _, wide = faiss_index.search(opened, queries, 10, ef=400)
        assert _recall(wide, want) >= RECALL[kind]


def test_factory_strings_name_every_index() -> None:
    assert faiss_index.factory_string("auto", 1000, 384) == "Flat"
    assert faiss_index.factory_string("auto", 1_000_000, 384) == "IVF4000,Flat"
    assert faiss_index.factory_string("ivf", 1_000_000, 384, nlist=1024) == "IVF1024,Flat"
    assert faiss_index.factory_string("hnsw", 10, 384, m=16) == "HNSW16"
    assert faiss_index.factory_string("ivfpq", 1_000_000, 384) == "IVF4000,PQ48x8,Refine(SQ8)"
    assert faiss_index.default_nlist(390) == 10  # never fewer than 39 training vectors a list
    with pytest.raises(Exception, match="unknown index kind"):
        faiss_index.factory_string("lsh", 10, 384)


@pytest.mark.parametrize("kind", ["ivf", "hnsw", "flat"])
def test_built_index_is_extended_by_an_ingest_never_served_stale(
    tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(search, "TAIL_MAX_ROWS", 0)  # no newer rows searched beside the index: it is extended
    fs = FeatureStore(tmp_path / "store")
    _ingest(fs, tmp_path, 0, 2000)
    fs.index_build(kind, model=MODEL, clean="raw-v1")
    _ingest(fs, tmp_path, 2000, 2100)
    res = fs.similar("clustered tweet 2050", k=3, model=MODEL, clean="raw-v1")
    assert res.index == "extended by 100 rows" and faiss_index.kind_of(res.index_kind) == kind
    assert res.hits[0].ids == [("d", "2050")] and res.hits[0].text == "clustered tweet 2050"
    res = FeatureStore(fs.path).similar("clustered tweet 2099", k=3, model=MODEL, clean="raw-v1")
    assert res.index == "loaded" and res.index_mmap and res.hits[0].ids == [("d", "2099")]
    assert faiss_index.kind_of(res.index_kind) == kind  # the kind the user built is kept


def test_ivf_rebuilt_when_the_store_outgrows_its_lists(tmp_path: Path) -> None:
    fs = FeatureStore(tmp_path / "store")
    _ingest(fs, tmp_path, 0, 1000)
    fs.index_build("ivf", model=MODEL, clean="raw-v1")
    _ingest(fs, tmp_path, 1000, 2500)
    res = fs.similar("clustered tweet 2400", k=3, model=MODEL, clean="raw-v1")
    assert res.index.startswith("rebuilt") and res.index_kind.startswith("IVF")
    assert res.hits[0].ids == [("d", "2400")]


def test_tampered_index_is_not_served(tmp_path: Path) -> None:
    fs = FeatureStore(tmp_path / "store")
    _ingest(fs, tmp_path, 0, 2000)
    out = fs.index_build("ivf", model=MODEL, clean="raw-v1")
    path = Path(out["path"])
    data = bytearray(path.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 256] = b"\x7f" * 256
    path.write_bytes(bytes(data))  # same size, new mtime: the cheap identity no longer matches
    res = FeatureStore(fs.path).similar("clustered tweet 7", k=3, model=MODEL, clean="raw-v1")
    assert res.index == "rebuilt: index file is truncated or corrupt"
    assert res.hits[0].ids == [("d", "7")] and res.index_kind.startswith("IVF")  # rebuilt as the kind built

    # A tamper that also restores the size and mtime passes the cheap check; `fs check` hashes it all.
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 256] = b"\x00" * 256
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    report = check(fs.store)
    assert any("truncated or corrupt" in w for w in report.warnings)


def test_cold_open_is_memory_mapped_and_trusts_the_identity(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fs = FeatureStore(tmp_path / "store")
    _ingest(fs, tmp_path, 0, 1500)
    fs.index_build("flat", model=MODEL, clean="raw-v1")
    hashed: list[str] = []
    real = faiss_index._file_sha256
    monkeypatch.setattr(faiss_index, "_file_sha256", lambda p: hashed.append(p) or real(p))
    res = FeatureStore(fs.path).similar(id="12", k=5, model=MODEL, clean="raw-v1")
    assert res.index == "loaded" and res.index_mmap is True and hashed == []  # no whole-file hash
    assert res.hits[0].ids == [("d", "12")] and res.hits[0].text == "clustered tweet 12"
    # A copied store (new inode and mtime) is hashed once, then trusted cheaply again.
    (tmp_path / "copy").mkdir()
    os.system(f"cp -r {fs.path} {tmp_path / 'copy' / 'store'}")
    FeatureStore(tmp_path / "copy" / "store").similar(id="12", k=5, model=MODEL, clean="raw-v1")
    assert len(hashed) == 1
    res = FeatureStore(tmp_path / "copy" / "store").similar(id="12", k=5, model=MODEL, clean="raw-v1")
    assert len(hashed) == 1 and res.index == "loaded" and res.index_mmap


def test_compaction_keeps_the_index_valid(tmp_path: Path) -> None:
    fs = FeatureStore(tmp_path / "store")
    for start in range(0, 1800, 100):  # 18 commits: more segments than compaction keeps
        _ingest(fs, tmp_path, start, start + 100)
    fs.index_build("flat", model=MODEL, clean="raw-v1")
    with fs.store.writer() as w:
        assert w.compact(max_segments=1)
    res = FeatureStore(fs.path).similar(id="1777", k=3, model=MODEL, clean="raw-v1")
    assert res.index == "loaded" and res.hits[0].ids == [("d", "1777")]  # same rows, merged segment names


def test_cli_index_build_exact_and_batch_file(tmp_path: Path) -> None:
    fs = FeatureStore(tmp_path / "store")
    _ingest(fs, tmp_path, 0, 2000)
    runner = CliRunner()
    env = {"FS_STORE": str(fs.path)}
    r = runner.invoke(
        app, ["index", "build", "--kind", "hnsw", "--m", "16", "--model", MODEL, "--clean", "raw-v1"], env=env
    )
    assert r.exit_code == 0, r.output
    assert "built hnsw index 'HNSW16'" in r.output and "2,000 vectors" in r.output

    queries = ["clustered tweet 5", "something new", "", "clustered tweet 1999"]
    qfile = tmp_path / "queries.txt"
    qfile.write_text("\n".join(queries) + "\n")
    r = runner.invoke(
        app, ["similar", "--file", str(qfile), "--json", "-k", "4", "--model", MODEL, "--clean", "raw-v1"], env=env
    )
    assert r.exit_code == 0, r.output
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    assert [line["query"] for line in lines] == [q for q in queries if q]  # one JSON object a line, in order
    assert all(len(line["hits"]) == 4 for line in lines)
    assert lines[0]["hits"][0]["ids"] == [["d", "5"]] and lines[2]["hits"][0]["ids"] == [["d", "1999"]]

    # --exact equals brute force
    space = fs.space(MODEL, "raw-v1")
    stored = np.concatenate([b for _, b in fs.store.iter_vectors(space)])
    q = ClusteredEmbedder().vector("something new")[None]
    want, want_scores = _brute(q, stored)
    r = runner.invoke(
        app, ["similar", "something new", "--exact", "--json", "--model", MODEL, "--clean", "raw-v1"], env=env
    )
    assert r.exit_code == 0, r.output
    got = json.loads(r.stdout)
    assert [int(h["ids"][0][1]) for h in got["hits"]] == want[0].tolist()
    np.testing.assert_allclose([h["score"] for h in got["hits"]], want_scores[0], atol=1e-5)
    assert got["info"]["index_kind"] == "exact (brute force)"

    r = runner.invoke(app, ["similar", "something new", "--ef", "0", "--model", MODEL, "--clean", "raw-v1"], env=env)
    assert r.exit_code != 0 and "--ef must be at least 1" in r.output
    r = runner.invoke(app, ["index", "build", "--kind", "lsh", "--model", MODEL, "--clean", "raw-v1"], env=env)
    assert r.exit_code != 0 and "unknown index kind 'lsh'" in r.output and "--kind" in r.output
