"""A long-lived process (``fs serve``) following ingests: rows committed after its index was opened are
searched by brute force beside it, with answers equal to a fresh process's, until the tail is large."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from featurestore import search
from featurestore.api import FeatureStore
from tests.conftest import FAKE, train_rows, write_csv

RECIPE = "basic-v1"


def answers(fs: FeatureStore, texts: list[str], **kw) -> tuple[list[list[str]], np.ndarray]:
    hits, _ = fs.similar(texts=texts, k=5, model=FAKE, clean=RECIPE, **kw)
    return [[h.ids[0][1] for h in per] for per in hits], np.array([[h.score for h in per] for per in hits])


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_newer_rows_are_found_beside_the_held_index(tmp_path: Path, kind: str) -> None:
    rows = train_rows(600)
    served = FeatureStore(tmp_path / "s")
    served.ingest(str(write_csv(tmp_path / "a.csv", rows[:400])), "train", FAKE, RECIPE)
    served.index_build(kind, nlist=8 if kind == "ivf" else None, model=FAKE, clean=RECIPE)
    queries = [r["tweet"] for r in rows[390:410]]  # ten stored before the index, ten after it
    _, info = served.similar(queries[0], k=5, model=FAKE, clean=RECIPE)
    held = served._search.indexes[info["space"]][1]

    FeatureStore(tmp_path / "s").ingest(str(write_csv(tmp_path / "b.csv", rows[400:])), "train", FAKE, RECIPE)
    got = answers(served, queries, nprobe=8 if kind == "ivf" else None)
    _, info = served.similar(queries[-1], k=5, model=FAKE, clean=RECIPE)
    newer = served.space(FAKE, RECIPE).rows - held.rows
    assert 190 <= newer <= 200  # texts equal after cleaning share a vector
    assert info["index"] == f"in memory, {newer} newer rows searched by brute force"
    assert served._search.indexes[info["space"]][1] is held  # not reopened, not extended on disk
    assert [per[0] for per in got[0]] == [q["id"] for q in rows[390:410]]  # its own row first, old or new
    assert np.allclose(got[1][:, 0], 1.0, atol=1e-5)
    fresh = FeatureStore(tmp_path / "s")  # a new process: the index is extended, then searched
    ids, scores = answers(fresh, queries, nprobe=8 if kind == "ivf" else None)
    assert ids == got[0] and np.allclose(scores, got[1], atol=1e-5)  # FAISS and numpy round apart ~1e-6


def test_a_large_tail_brings_the_index_up_to_date(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(search, "TAIL_MAX_ROWS", 50)
    rows = train_rows(300)
    served = FeatureStore(tmp_path / "s")
    served.ingest(str(write_csv(tmp_path / "a.csv", rows[:200])), "train", FAKE, RECIPE)
    served.similar(rows[0]["tweet"], k=3, model=FAKE, clean=RECIPE)
    FeatureStore(tmp_path / "s").ingest(str(write_csv(tmp_path / "b.csv", rows[200:])), "train", FAKE, RECIPE)
    hits, info = served.similar(rows[250]["tweet"], k=3, model=FAKE, clean=RECIPE)
    assert info["index"].startswith("extended by")
    assert hits[0].ids[0][1] == rows[250]["id"]
