"""``minilm-int8``: the ONNX export is the model, int8 stays close to fp32, the export is cached, its own space."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cli.main import app
from featurestore.embedders import load_embedder
from featurestore.errors import ModelError
from featurestore.storage.keys import space_fields, space_id
from tests.conftest import train_rows, write_csv

pytestmark = [pytest.mark.slow, pytest.mark.framework("minilm")]  # torch, transformers, ONNX Runtime
pytest.importorskip("onnxruntime")

runner = CliRunner()


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A private model cache for this module: the export happens once, here."""
    path = tmp_path_factory.mktemp("fs-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FS_CACHE_DIR", str(path))
        yield path


@pytest.fixture(scope="module")
def exported(cache: Path):
    """The int8 embedder after its one export, and the fp32 graph that export made and quantised
    (both stay in the cache: the fp32 one is ``--model minilm``'s CPU backend)."""
    from featurestore.embedders import onnx_minilm

    emb = onnx_minilm.MiniLMInt8Embedder()
    assert emb.device == "cpu"  # asking loads the model: export + quantise into the module's cache
    fp32 = onnx_minilm.MiniLMOnnxEmbedder().onnx_path  # minilm's CPU graph, the int8 one's source
    assert emb.exports == 1 and emb.onnx_path.is_file() and emb.onnx_path.is_relative_to(cache)
    assert fp32.is_file() and fp32.is_relative_to(cache)
    return emb, fp32


@pytest.fixture(scope="module")
def int8(exported):
    return exported[0]


@pytest.fixture(scope="module")
def tweets() -> list[str]:
    return [r["tweet"] for r in train_rows(200)]


@pytest.fixture(scope="module")
def fp32_vectors(minilm_store, tweets: list[str]) -> np.ndarray:
    """fp32 vectors of the tweets: those ``minilm_store`` (tests/conftest.py) embedded through ``fs ingest``
    (tested equal to sentence-transformers' in test_minilm.py), so the fp32 model embeds them once for both files."""
    from featurestore.api import FeatureStore

    st, rows = minilm_store
    X, _, ids = FeatureStore(st).xy("train", "minilm", labelled=False)
    assert [r["tweet"] for r in rows[: len(tweets)]] == tweets
    assert ids.tolist()[: len(tweets)] == [r["id"] for r in rows[: len(tweets)]]
    return X[: len(tweets)]


def test_fp32_export_is_the_model(exported, tweets: list[str], fp32_vectors: np.ndarray) -> None:
    from transformers import AutoTokenizer

    from featurestore.embedders.onnx_minilm import _run_fp32

    int8, fp32 = exported  # the fp32 graph export_int8 made, then quantised
    tok = AutoTokenizer.from_pretrained(str(int8.model_dir), local_files_only=True)
    enc = tok(tweets[:50], padding=True, truncation=True, max_length=256, return_tensors="np")
    got = _run_fp32(fp32, enc["input_ids"], enc["attention_mask"])
    assert float(np.max(np.abs(got - fp32_vectors[:50]))) <= 1e-5  # padded batch vs the stored vectors


def test_tokenizer_is_the_models_own(int8, tweets: list[str]) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(int8.model_dir), local_files_only=True)
    want = [tok(t, truncation=True, max_length=256)["input_ids"] for t in tweets]
    assert [e.ids for e in int8._tokenizer.encode_batch(tweets)] == want


def test_int8_is_close_to_fp32(int8, tweets: list[str], fp32_vectors: np.ndarray) -> None:
    q = int8.embed(tweets)
    assert q.shape == (200, 384) and q.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-4)
    cos = (q * fp32_vectors).sum(axis=1)
    assert cos.mean() >= 0.98 and cos.min() >= 0.93, (cos.mean(), cos.min())


def test_a_text_has_one_vector_whatever_its_batch(int8, tweets: list[str]) -> None:
    # Dynamic quantisation scales by the whole input tensor: batching would make neighbours matter.
    alone = int8.embed(tweets[:3])
    among = int8.embed(tweets[:40])[:3]
    assert np.array_equal(alone, among)


def test_second_load_reuses_the_cached_export(int8) -> None:
    from featurestore.embedders.onnx_minilm import MiniLMInt8Embedder

    before = int8.onnx_path.stat().st_mtime_ns
    again = MiniLMInt8Embedder()
    assert again.device == "cpu"  # asking loads the model
    assert again.exports == 0 and again.onnx_path == int8.onnx_path
    assert int8.onnx_path.stat().st_mtime_ns == before


def test_its_own_vector_space(int8) -> None:
    from featurestore.embedders.minilm import MiniLMEmbedder

    fp = int8.fingerprint
    fp32 = MiniLMEmbedder().fingerprint
    assert fp.weights_sha256 == fp32.weights_sha256  # same source weights...
    assert fp["backend"] == "onnxruntime" and fp["quantization"].startswith("dynamic-int8") and fp["export"] == "v1"
    recipe = {"name": "raw-v1"}
    assert space_id(space_fields(dict(fp), recipe, "float32")) != space_id(space_fields(dict(fp32), recipe, "float32"))


def test_registry_and_default_recipe() -> None:
    from featurestore.embedders import default_recipe, known_models

    assert "minilm-int8" in known_models() and default_recipe("minilm-int8") == "raw-v1"
    with pytest.raises(ModelError, match="no layer mix|has none"):
        load_embedder("minilm-int8#top")


def test_missing_onnxruntime_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    with pytest.raises(ModelError, match=r"pip install") as err:
        load_embedder("minilm-int8")
    assert "\n" not in str(err.value)


def test_cli_ingest_end_to_end(int8, tmp_path: Path) -> None:
    rows = train_rows(60)
    st = tmp_path / "store"
    first = write_csv(tmp_path / "a.csv", rows[:40])
    r = runner.invoke(app, ["ingest", str(first), "--dataset", "t", "--model", "minilm-int8", "--store", str(st)])
    assert r.exit_code == 0, r.output
    assert "model minilm-int8  recipe raw-v1" in r.output and "texts embedded 40" in r.output
    # More rows: the drift check re-embeds the canaries, which must give their stored vectors again.
    second = write_csv(tmp_path / "b.csv", rows)
    r = runner.invoke(app, ["ingest", str(second), "--dataset", "t", "--model", "minilm-int8", "--store", str(st)])
    assert r.exit_code == 0, r.output
    assert "new ids 20  duplicates 40" in r.output and "texts embedded 20" in r.output
    from featurestore.api import FeatureStore

    X, _, ids = FeatureStore(st).xy("t", "minilm-int8", labelled=False)
    assert X.shape == (60, 384) and ids.tolist() == [r["id"] for r in rows]
    np.testing.assert_array_equal(X[:5], int8.embed([r["tweet"] for r in rows[:5]]))
