"""Vectors no dataset row owns (``StoreEmbedder`` write-backs) are cache entries: they save a later
embedding, ``fs info`` counts them, and no search (CLI, API, HTTP; restricted or not) returns them."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from featurestore.api import FeatureStore
from featurestore.sklearn import StoreEmbedder
from tests.conftest import FAKE, train_rows, write_csv
from tests.fakes import CountingEmbedder

ROWS = 30
NEW = [f"a tweet no dataset holds, number {i}, about batteries and chargers" for i in range(20)]


@pytest.fixture
def cached(tmp_path: Path) -> FeatureStore:
    """30 ingested tweets, then 20 new texts written back by ``StoreEmbedder.transform``."""
    fs = FeatureStore(tmp_path / "store")
    fs.ingest(
        str(write_csv(tmp_path / "train.csv", train_rows(ROWS))), "train", FAKE, "raw-v1", embedder=CountingEmbedder()
    )
    StoreEmbedder(fs, model=FAKE, recipe="raw-v1", embedder=CountingEmbedder()).fit(NEW).transform(NEW)
    return fs


def test_info_counts_cache_entries_and_an_ingest_adopts_one(cached: FeatureStore, tmp_path: Path) -> None:
    (space,) = cached.info()["spaces"]
    assert (space["vectors"], space["cache_entries"]) == (ROWS + len(NEW), len(NEW))
    out = CliRunner().invoke(app, ["info", "--store", str(cached.path)]).output
    assert f"cache entries (no row owns them; never search hits): {len(NEW)}" in out
    # A dataset row with that text owns the vector now: no longer a cache entry, not embedded again.
    emb = CountingEmbedder()
    s = cached.ingest(
        str(write_csv(tmp_path / "more.csv", [{"id": "m1", "label": "1", "tweet": NEW[0]}])),
        "more",
        FAKE,
        "raw-v1",
        embedder=emb,
    )
    assert s.embedded == 0 and s.cache_hits == 1
    assert cached.info()["spaces"][0]["cache_entries"] == len(NEW) - 1
    hits = cached.similar(NEW[0], model=FAKE, clean="raw-v1", k=1).hits
    assert hits[0].ids == [("more", "m1")] and hits[0].score == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("exact", [False, True])
def test_the_api_never_returns_a_cache_entry(cached: FeatureStore, exact: bool) -> None:
    # The query is itself a cache entry: its stored vector is used, and its nearest rows (itself and the
    # other write-backs) are skipped until k owned rows are found.
    result = cached.similar(NEW[3], model=FAKE, clean="raw-v1", k=5, exact=exact)
    assert result.query.startswith("stored vector")
    assert [h.rank for h in result.hits] == [1, 2, 3, 4, 5]
    assert all(h.ids and h.text for h in result.hits)
    everything = cached.similar(NEW[3], model=FAKE, clean="raw-v1", k=ROWS + len(NEW), exact=exact).hits
    assert len(everything) == ROWS and all(h.ids for h in everything)
    restricted = cached.similar(NEW[3], model=FAKE, clean="raw-v1", k=ROWS + len(NEW), dataset="train").hits
    assert len(restricted) == ROWS and all(h.ids[0][0] == "train" for h in restricted)
    batch = cached.similar(texts=NEW[:4], model=FAKE, clean="raw-v1", k=ROWS)
    assert [len(r.hits) for r in batch] == [ROWS] * 4 and all(h.ids for r in batch for h in r.hits)


def test_fs_similar_prints_no_blank_hit(cached: FeatureStore) -> None:
    r = CliRunner().invoke(
        app,
        ["similar", NEW[0], "--model", FAKE, "--clean", "raw-v1", "--k", str(ROWS + 5), "--store", str(cached.path)],
    )
    assert r.exit_code == 0, r.output
    hit_lines = [line for line in r.output.splitlines() if line[:3].strip().isdigit()]
    assert len(hit_lines) == ROWS
    assert all("train:" in line for line in hit_lines), r.output


def test_http_similar_returns_only_owned_rows(cached: FeatureStore) -> None:
    pytest.importorskip("fastapi", reason="the serve extra is installed by 'make setup'")
    from fastapi.testclient import TestClient

    from featurestore.serving import serve

    client = TestClient(serve.create_app(serve.Settings(store=str(cached.path), model=FAKE, clean="raw-v1")))
    resp = client.get("/similar", params={"q": NEW[1], "k": ROWS + len(NEW)})
    assert resp.status_code == 200, resp.text
    hits = resp.json()["hits"]
    assert len(hits) == ROWS
    assert all(h["id"] and h["owners"] >= 1 and h["dataset"] == "train" for h in hits)
    assert [h["rank"] for h in hits] == list(range(1, ROWS + 1))
