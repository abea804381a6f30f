"""The real default model end to end through the CLI: 300 real tweets, MiniLM on CPU."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cli.main import app
from featurestore.api import FeatureStore
from tests.conftest import train_rows, write_csv

runner = CliRunner()
N = 300


@pytest.fixture(scope="module")
def minilm_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, str]]]:
    tmp = tmp_path_factory.mktemp("minilm")
    rows = train_rows(N)
    csv_path = write_csv(tmp / "tweets.csv", rows)
    st = tmp / "store"
    r = runner.invoke(app, ["ingest", str(csv_path), "--dataset", "train", "--store", str(st)])
    assert r.exit_code == 0, r.output
    assert "dataset train  model minilm  recipe raw-v1" in r.output
    assert f"rows read {N}  new ids {N}  duplicates 0  cache hits 0  texts embedded {N}" in r.output
    return st, rows


def test_vectors_are_384d_unit_norm_finite(minilm_store) -> None:
    st, rows = minilm_store
    X, _, ids = FeatureStore(st).xy("train", "minilm", labelled=False)
    assert X.shape == (N, 384) and X.dtype == np.float32
    assert np.isfinite(X).all()
    np.testing.assert_allclose(np.linalg.norm(X, axis=1), 1.0, atol=1e-4)
    assert ids.tolist() == [int(r["id"]) for r in rows]
    assert len({v.tobytes() for v in X}) == N  # 300 distinct tweets, 300 distinct vectors


def test_similar_stored_text_uses_the_stored_vector(minilm_store) -> None:
    st, rows = minilm_store
    tweet = rows[41]["tweet"]
    r = runner.invoke(app, ["similar", tweet, "--k", "5", "--json", "--store", str(st)])
    assert r.exit_code == 0, r.output
    data = json.loads(r.output[r.output.index("{"):])
    assert data["info"]["query"] == "stored vector (model not loaded)"
    top = data["hits"][0]
    assert top["ids"] == [["train", int(rows[41]["id"])]] and top["text"] == tweet
    assert top["score"] == pytest.approx(1.0, abs=1e-4)
    assert all(h["score"] < top["score"] for h in data["hits"][1:])


def test_new_query_is_embedded_by_the_model(minilm_store) -> None:
    st, rows = minilm_store
    tweet = rows[7]["tweet"]
    # MiniLM's tokenizer is uncased: the upper-cased tweet is a new key but the same tokens.
    r = runner.invoke(app, ["similar", tweet.upper(), "--k", "3", "--json", "--store", str(st)])
    assert r.exit_code == 0, r.output
    data = json.loads(r.output[r.output.index("{"):])
    assert data["info"]["query"] == "embedded"
    assert data["hits"][0]["ids"] == [["train", int(rows[7]["id"])]]
    assert data["hits"][0]["score"] == pytest.approx(1.0, abs=1e-3)


def test_reingest_embeds_nothing(minilm_store, tmp_path: Path) -> None:
    st, rows = minilm_store
    csv_path = write_csv(tmp_path / "again.csv", rows)
    r = runner.invoke(app, ["ingest", str(csv_path), "--dataset", "train", "--store", str(st)])
    assert r.exit_code == 0, r.output
    assert f"new ids 0  duplicates {N}  cache hits 0  texts embedded 0" in r.output
    assert "batches committed 0" in r.output
