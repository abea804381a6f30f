"""The façade is the API: what ``fs check``, ``fs repair``, ``fs gc``, ``fs map`` and ``fs similar`` print comes
from one ``FeatureStore`` call each, returning a typed result a Python caller reads the same way."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import pytest

from featurestore.api import FeatureStore, GcResult, MapResult, SimilarResult
from featurestore.errors import StoreError, UsageError
from featurestore.ingestion.distributed import check_options
from tests.conftest import FAKE, train_rows

RECIPE = "raw-v1"


@pytest.fixture
def loaded(fs: FeatureStore, tweets_csv: Path) -> FeatureStore:
    """200 tweets committed 20 at a time: compaction leaves superseded segments behind for gc."""
    fs.ingest(str(tweets_csv), "train", FAKE, RECIPE, commit_rows=20)
    return fs


def test_check_passes_a_healthy_store_and_names_a_corrupted_segment(loaded: FeatureStore) -> None:
    report = loaded.check()
    assert report.ok and report.errors == [] and report.stats["rows:train"] == 200
    seg = loaded.space(FAKE, RECIPE).segments[0].file
    loaded.store.segment_path(seg).write_bytes(b"not an HDF5 file")
    report = loaded.check()
    assert not report.ok
    assert any(e.startswith(f"segment {seg} cannot be read") for e in report.errors), report.errors


def test_check_of_a_missing_store_says_so(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        FeatureStore(tmp_path / "nowhere").check()


def test_repair_leaves_a_healthy_store_alone_and_sets_a_corrupt_manifest_aside(
    fs: FeatureStore, tweets_csv: Path
) -> None:
    fs.ingest(str(tweets_csv), "train", FAKE, RECIPE)  # one commit: its segments are re-adopted from the files
    gens = fs.store.manifest_generations()
    report = fs.repair()
    assert report.actions == [] and report.errors == []
    assert fs.store.manifest_generations() == gens  # no new generation for a healthy store
    latest = gens[-1]
    fs.store.manifest_path(latest).write_bytes(b"{torn")
    assert not fs.check().ok
    report = fs.repair()
    assert f"set aside corrupt manifest generation {latest}" in report.actions
    assert report.errors == [] and fs.check().ok
    assert len(fs.rows("train")["ids"]) == 200  # nothing committed was lost


def test_gc_deletes_the_superseded_segments_and_old_manifests_and_reports_them(loaded: FeatureStore) -> None:
    segs = loaded.store.segment_dir
    live = loaded.store.snapshot().files()
    superseded = sorted(set(os.listdir(segs)) - live)
    old = loaded.store.manifest_generations()[:-1]
    assert superseded and old  # what there is to collect
    size = sum((segs / n).stat().st_size for n in superseded)
    size += sum(loaded.store.manifest_path(g).stat().st_size for g in old)
    X_before = loaded.xy("train", FAKE, RECIPE)[0]
    r = loaded.gc()
    assert isinstance(r, GcResult)
    assert r.removed == len(superseded) + len(old) and r.freed == size
    assert sorted(os.listdir(segs)) == sorted(live) and not any((segs / n).exists() for n in superseded)
    assert r.generations == loaded.store.manifest_generations() and len(r.generations) == 1
    assert (loaded.xy("train", FAKE, RECIPE)[0] == X_before).all() and loaded.check().ok
    assert loaded.gc() == GcResult(0, 0, r.generations)  # nothing left to collect
    with pytest.raises(UsageError, match="keep must be at least 1"):
        loaded.gc(keep=0)


def test_map_draws_a_point_for_every_row_or_for_the_sample(loaded: FeatureStore, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    out = tmp_path / "maps" / "map.html"
    r = loaded.map("train", out, FAKE, RECIPE, method="pca")
    assert r == MapResult(out, 200, "PCA")
    page = out.read_text(encoding="utf-8")
    titles = re.findall(r"<circle [^>]*><title>(.*?)</title></circle>", page)
    assert len(titles) == 200
    first = train_rows(1)[0]
    assert any(t.startswith(f"{first['id']} [{first['label']}]") for t in titles)
    r = loaded.map("train", out, FAKE, RECIPE, method="pca", max_points=50)
    assert r.points == 50 and len(re.findall(r"<circle ", out.read_text(encoding="utf-8"))) == 50
    with pytest.raises(UsageError, match="must end in .png or .html") as err:
        loaded.map("train", tmp_path / "map.jpg", FAKE, RECIPE)
    assert err.value.param == "out"
    with pytest.raises(UsageError, match="max_points 0 must be at least 1"):
        loaded.map("train", out, FAKE, RECIPE, max_points=0)


def test_similar_returns_a_typed_result_with_what_the_cli_prints(loaded: FeatureStore) -> None:
    tweet = train_rows(5)[4]["tweet"]
    r = loaded.similar(tweet, k=3, model=FAKE, clean=RECIPE)
    assert isinstance(r, SimilarResult)
    assert [h.rank for h in r.hits] == [1, 2, 3] and r.hits[0].ids[0] == ("train", "5") and r.hits[0].text == tweet
    assert r.query == "stored vector (model not loaded)" and r.index == "built" and r.index_kind == "Flat"
    space = loaded.space(FAKE, RECIPE)
    assert (r.space, r.model, r.recipe, r.dtype) == (space.id, space.model, space.recipe, space.dtype)
    assert r.note is None and r.index_seconds >= 0 and r.search_seconds >= 0
    by_id = loaded.similar(id="5", k=2, dataset="train", model=FAKE, clean=RECIPE)
    assert by_id.query == "stored vector" and by_id.index == "in memory" and len(by_id.hits) == 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.query = "changed"  # type: ignore[misc]


def test_a_batch_of_similar_queries_is_one_result_a_query_in_order(loaded: FeatureStore) -> None:
    tweets = [row["tweet"] for row in train_rows(3)]
    results = loaded.similar(texts=[tweets[2], "a text no tweet ever had", tweets[0]], k=2, model=FAKE, clean=RECIPE)
    assert [type(r) for r in results] == [SimilarResult] * 3
    assert [r.query for r in results] == [
        "stored vector (model not loaded)",
        "embedded",
        "stored vector (model not loaded)",
    ]
    assert results[0].hits[0].text == tweets[2] and results[2].hits[0].text == tweets[0]
    assert len({(r.index, r.index_kind, r.search_seconds) for r in results}) == 1  # one shared search
    assert loaded.similar(texts=[], model=FAKE, clean=RECIPE) == []


def test_the_ray_engine_refuses_the_local_reading_options() -> None:
    check_options()  # the defaults are what Ray Data reads
    with pytest.raises(UsageError, match=r"fmt, encoding apply to the local engine only") as err:
        check_options(fmt="csv", encoding="utf-8")
    assert err.value.param == "fmt"
    with pytest.raises(UsageError, match="header=False, duplicates apply"):
        check_options(header=False, duplicates="last")
