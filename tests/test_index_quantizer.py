"""IVF indexes at 10M (issue 24): from ``HNSW_QUANTIZER_LISTS`` lists on, the lists are found through an HNSW graph
of the centroids (``IVF{nlist}_HNSW32``), trained on a bounded sample; such an index is still one factory string,
searched, searched exactly, mapped, extended and checked like any other. An ``nprobe`` above the lists is refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from featurestore.api import FeatureStore
from featurestore.errors import UsageError
from featurestore.query import index as faiss_index
from tests.test_index_scale import MODEL, ClusteredEmbedder, _brute, _ingest, _recall, _texts


def test_factory_strings_choose_the_quantizer_by_the_number_of_lists() -> None:
    assert faiss_index.factory_string("auto", 1_000_000, 384) == "IVF4000,Flat"  # 4,000 lists: flat
    assert faiss_index.factory_string("auto", 2_000_000, 384) == "IVF5657_HNSW32,Flat"
    assert faiss_index.factory_string("auto", 10_000_000, 384) == "IVF12649_HNSW32,Flat"
    assert faiss_index.factory_string("ivf", 300_000, 384, nlist=8192) == "IVF8192_HNSW32,Flat"
    assert faiss_index.factory_string("ivfpq", 10_000_000, 384) == "IVF12649_HNSW32,PQ48x8,Refine(SQ8)"
    for factory in ("IVF12649_HNSW32,Flat", "IVF12649_HNSW32,PQ48x8,Refine(SQ8)"):
        assert faiss_index.kind_of(factory) == ("ivfpq" if ",PQ" in factory else "ivf")
    # the training sample: 40 a list, capped (12,649 lists at 10M: 163,840, not 505,960)
    assert faiss_index.training_rows(faiss_index.new_index("IVF100,Flat", 8)) == 4000
    big = faiss_index.new_index("IVF12649_HNSW32,Flat", 8)
    assert faiss_index.training_rows(big) == faiss_index.TRAIN_MAX
    quantizer = faiss_index.faiss.downcast_index(faiss_index.faiss.extract_index_ivf(big).quantizer)
    assert quantizer.hnsw.efSearch == faiss_index.QUANTIZER_EF


@pytest.fixture
def hnsw_quantized(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(faiss_index, "HNSW_QUANTIZER_LISTS", 8)  # a small store gets the 10M quantizer


def test_an_hnsw_quantized_ivf_index_is_searched_mapped_extended_and_checked(
    tmp_path: Path, hnsw_quantized: None
) -> None:
    fs = FeatureStore(tmp_path / "store")
    _ingest(fs, tmp_path, 0, 2000)
    out = fs.index_build("ivf", model=MODEL, clean="raw-v1")
    assert out["factory"] == "IVF51_HNSW32,Flat"
    space = fs.space(MODEL, "raw-v1")
    stored = np.concatenate([b for _, b in fs.store.iter_vectors(space)])
    e = ClusteredEmbedder()
    queries = np.stack([e.vector(t) for t in _texts(0, 20) + [f"new query {i}" for i in range(20)]])
    opened = faiss_index.open_index(fs.store, space)
    assert opened.status == "loaded" and opened.mmap and opened.factory == "IVF51_HNSW32,Flat"
    want, want_scores = _brute(queries, stored)
    _, rows = faiss_index.search(opened, queries, 10)
    assert _recall(rows, want) >= 0.95
    scores, rows = faiss_index.search(opened, queries, 10, exact=True)  # every list, no quantizer search
    assert rows.tolist() == want.tolist()
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)
    allowed = np.arange(0, 2000, 3)
    _, rows = faiss_index.search(opened, queries, 5, allowed, exact=True)
    assert np.isin(rows, allowed).all()
    assert fs.check().ok and fs.check().warnings == []  # the file hash and keys verify
    assert fs.check(quick=True).warnings == []  # and its identity

    _ingest(fs, tmp_path, 2000, 2100)
    res = fs.similar("clustered tweet 2050", k=3, model=MODEL, clean="raw-v1")
    assert res.index == "loaded, 100 newer rows searched by brute force" and res.index_kind == "IVF51_HNSW32,Flat"
    assert res.hits[0].ids == [("d", "2050")]
    opened = faiss_index.open_index(fs.store, fs.space(MODEL, "raw-v1"))  # no tail allowed: extended
    assert opened.status == "extended by 100 rows" and opened.rows == 2100
    assert res.hits[0].ids == [("d", "2050")]
    assert fs.check().warnings == []


def test_nprobe_above_the_lists_is_refused_not_lowered(tmp_path: Path) -> None:
    fs = FeatureStore(tmp_path / "store")
    _ingest(fs, tmp_path, 0, 600)
    fs.index_build("ivf", nlist=8, model=MODEL, clean="raw-v1")
    # the default nprobe (32) is still lowered to the 8 lists: the user asked for nothing
    assert fs.similar("clustered tweet 5", k=3, model=MODEL, clean="raw-v1").hits[0].ids == [("d", "5")]
    assert fs.similar("clustered tweet 5", k=3, model=MODEL, clean="raw-v1", nprobe=8).hits
    with pytest.raises(UsageError, match=r"nprobe 9 is more lists than the index of this space has \(8\)") as err:
        fs.similar("clustered tweet 5", k=3, model=MODEL, clean="raw-v1", nprobe=9)
    assert err.value.param == "nprobe" and "fix:" in str(err.value)
    # following the fix: every list, exactly
    assert fs.similar("clustered tweet 5", k=3, model=MODEL, clean="raw-v1", exact=True).hits[0].ids == [("d", "5")]
