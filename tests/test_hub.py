"""HubEmbedder against real SavedModels loaded by real tensorflow_hub.

The fake ELMo mirrors google/elmo/3's interface: ``default`` (string[B] sentences) and
``tokens`` (string[B,T] + int32[B]) signatures returning ``word_emb``, ``lstm_outputs1``,
``lstm_outputs2``, ``elmo`` ([B,T,D]), ``default`` ([B,D]) and ``sequence_len``. Padded
positions get non-zero vectors (the padding token "" is hashed like any other), so a
missing mask would show.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from featurestore.embedders import ELMO_HUB_HANDLE, Fingerprint, load_embedder
from featurestore.embedders.checksums import module_sha256
from featurestore.embedders.hub import HubEmbedder, hub_module_cache_path
from featurestore.embedders.tf_runtime import tensorflow as tf  # called: imported on first use (see hub_fakes)
from featurestore.errors import ModelError

pytestmark = [pytest.mark.slow, pytest.mark.framework("tensorflow")]  # real SavedModels loaded by real tensorflow_hub

WORD, LSTM = 4, 6  # tests/hub_fakes.py's FakeElmo layer widths


@pytest.fixture(scope="session")
def modules(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from tests.hub_fakes import FakeElmo, SentenceEncoder, StringsToStrings

    root = tmp_path_factory.mktemp("hub_modules")
    elmo = FakeElmo()
    tf().saved_model.save(
        elmo, str(root / "elmo"), signatures={"default": elmo.default, "tokens": elmo.tokens.get_concrete_function()}
    )
    s2s = StringsToStrings()
    tf().saved_model.save(s2s, str(root / "s2s"), signatures={"default": s2s.default})
    enc = SentenceEncoder()
    tf().saved_model.save(enc, str(root / "encoder"), signatures={"serving_default": enc.encode})
    return {"elmo": root / "elmo", "s2s": root / "s2s", "encoder": root / "encoder"}


SHORT = "good morning"
LONG = " ".join(f"word{i}" for i in range(40))


def masked_mean_reference(module_dir: Path, texts: list[str], key: str = "elmo") -> np.ndarray:
    """Mean over real tokens, computed in numpy from the module's own token outputs."""
    out = tf().saved_model.load(str(module_dir)).signatures["default"](text=tf().constant(texts))
    layer, lengths = out[key].numpy(), out["sequence_len"].numpy()
    return np.stack([layer[i, : lengths[i]].mean(axis=0) for i in range(len(texts))])


def test_directory_module_pools_mean_over_real_tokens(modules: dict[str, Path]) -> None:
    emb = HubEmbedder(str(modules["elmo"]))
    assert emb.dim == LSTM
    together = emb.embed_batch([SHORT, LONG])
    alone = emb.embed_batch([SHORT])
    assert together.dtype == np.float32 and together.shape == (2, LSTM)
    # Padding to LONG's length must not move SHORT's vector.
    np.testing.assert_allclose(together[0], alone[0], atol=1e-5)
    np.testing.assert_allclose(together, masked_mean_reference(modules["elmo"], [SHORT, LONG]), atol=1e-5)
    # Unmasked mean over the padded batch would differ: the check above is not vacuous.
    padded = tf().saved_model.load(str(modules["elmo"])).signatures["default"](text=tf().constant([SHORT, LONG]))
    assert np.abs(padded["elmo"].numpy()[0].mean(axis=0) - together[0]).max() > 1e-3


def test_seeded_tfhub_cache_loads_elmo_handle_without_network(
    modules: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path / "cache"))
    cached = tmp_path / "cache" / hashlib.sha1(ELMO_HUB_HANDLE.encode()).hexdigest()
    assert hub_module_cache_path(ELMO_HUB_HANDLE) == cached
    shutil.copytree(modules["elmo"], cached)
    emb = load_embedder("elmo")
    assert isinstance(emb, HubEmbedder) and emb.name == "elmo"
    assert emb.module_path == cached
    vecs = emb.embed([SHORT, "", LONG])
    np.testing.assert_allclose(vecs[[0, 2]], masked_mean_reference(modules["elmo"], [SHORT, LONG]), atol=1e-5)
    assert not vecs[1].any()  # empty text: zeros, never sent to the model
    fp = emb.fingerprint
    assert fp["handle"] == ELMO_HUB_HANDLE and fp["module_sha256"] == module_sha256(modules["elmo"])
    assert (fp["signature"], fp["output"], fp["pooling"], fp["dtype"]) == ("default", "elmo", "mean", "float32")
    # the first release's keys, which space ids hash (golden ids: test_models.py)
    assert isinstance(fp, Fingerprint) and fp.weights_sha256 == fp["module_sha256"] and fp.model == ELMO_HUB_HANDLE
    assert set(fp) == {
        "embedder",
        "handle",
        "module_path",
        "module_sha256",
        "signature",
        "outputs",
        "output",
        "pooling",
        "dtype",
    }


def test_outputs_top_and_all(modules: dict[str, Path]) -> None:
    top = HubEmbedder(str(modules["elmo"]), output="top")
    np.testing.assert_allclose(
        top.embed_batch([SHORT, LONG]),
        masked_mean_reference(modules["elmo"], [SHORT, LONG], "lstm_outputs2"),
        atol=1e-5,
    )
    every = HubEmbedder(str(modules["elmo"]), output="all")
    assert every.dim == WORD + 2 * LSTM
    vecs = every.embed_batch([SHORT, LONG])
    np.testing.assert_allclose(
        vecs[:, :WORD], masked_mean_reference(modules["elmo"], [SHORT, LONG], "word_emb"), atol=1e-5
    )
    assert top.fingerprint["module_sha256"] == every.fingerprint["module_sha256"]
    assert top.fingerprint != every.fingerprint


def test_tokens_signature_matches_default(modules: dict[str, Path], tmp_path: Path) -> None:
    """A module offering only ``tokens`` is fed whitespace tokens plus their lengths."""
    from tests.hub_fakes import FakeElmo

    elmo = FakeElmo()
    tf().saved_model.save(elmo, str(tmp_path / "tok"), signatures={"tokens": elmo.tokens.get_concrete_function()})
    emb = HubEmbedder(str(tmp_path / "tok"))
    assert emb.signature == "tokens"
    expected = HubEmbedder(str(modules["elmo"])).embed_batch([SHORT, LONG])
    np.testing.assert_allclose(emb.embed_batch([SHORT, LONG]), expected, atol=1e-5)


def test_generic_sentence_encoder(modules: dict[str, Path]) -> None:
    emb = load_embedder(f"hub:{modules['encoder']}")
    assert emb.dim == 3
    np.testing.assert_allclose(emb.embed_batch(["ab", "abcd"]), [[2, 4, 1], [4, 8, 1]])
    assert emb.fingerprint["outputs"] == ["vec"]
    with pytest.raises(ModelError, match="--output top needs token outputs lstm_outputs2"):
        HubEmbedder(str(modules["encoder"]), output="top")


def test_strings_to_strings_module_is_refused(modules: dict[str, Path]) -> None:
    with pytest.raises(ModelError) as err:
        HubEmbedder(str(modules["s2s"]))
    msg = str(err.value)
    assert str(modules["s2s"]) in msg and "default(text:string" in msg and "upper:string" in msg
    assert "needs a module mapping strings to vectors" in msg


def test_not_a_module(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no saved_model.pb"):
        HubEmbedder(str(tmp_path))
    with pytest.raises(ModelError, match="not a directory or an http"):
        HubEmbedder(str(tmp_path / "missing"))


@pytest.mark.parametrize(
    "handle",
    [
        "https://tfhub.dev/google/made-up-module/1",
        "https://no-such-host.featurestore.invalid/modules/elmo.tar.gz",
    ],
)
def test_unreachable_handle_fails_fast(handle: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path / "cache"))
    start = time.monotonic()
    with pytest.raises(ModelError) as err:
        HubEmbedder(handle)
    assert time.monotonic() - start < 10
    msg = str(err.value)
    assert "\n" not in msg and handle in msg
    assert "--model hub:/path/to/elmo3" in msg and "--model elmo:PATH" in msg
    assert str(tmp_path / "cache" / hashlib.sha1(handle.encode()).hexdigest()) in msg
