"""The native ELMo exported as a TF Hub-style SavedModel, loaded back by tensorflow_hub."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
from elmo_fixture import elmo_fixture_dir

from featurestore.embedders import elmo_export
from featurestore.embedders.elmo import ElmoEmbedder, char_ids
from featurestore.embedders.elmo_export import export_savedmodel
from featurestore.embedders.hub import HubEmbedder
from featurestore.errors import ModelError
from tests.conftest import run_python

pytestmark = [pytest.mark.slow, pytest.mark.framework("tensorflow")]  # the tiny ELMo saved, then loaded by TF Hub

ATOL = 1e-5
HANDLE = "https://tfhub.dev/google/elmo/3"
TEXTS = [
    "hello world",
    "i love my new phone 😀 so much",
    "a",
    "naïve café  double  spaces",
    "x" * 70 + " end",
    "<S> literal markers </S>",
    "the u.s. centers for disease control and prevention initially advised school systems to close "
    "if outbreaks occurred , then reversed itself",
]
OUTPUT_KEYS = {"elmo", "default", "word_emb", "lstm_outputs1", "lstm_outputs2", "sequence_len"}


@pytest.fixture(scope="module")
def tf():
    """TensorFlow, imported by the tests that use it, the way the library imports it (not at collection:
    that cost every pytest-xdist worker 7 s)."""
    from featurestore.embedders.tf_runtime import tensorflow

    return tensorflow()


@pytest.fixture(scope="module")
def hub(tf):
    from featurestore.embedders.tf_runtime import tensorflow_hub

    return tensorflow_hub()


@pytest.fixture(scope="module")
def native() -> ElmoEmbedder:
    d = elmo_fixture_dir()
    return ElmoEmbedder.from_path(f"{d / 'options.json'},{d / 'lm_weights.hdf5'}")


@pytest.fixture(scope="module")
def exported(native: ElmoEmbedder, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_savedmodel(native, tmp_path_factory.mktemp("export") / "elmo")


def test_char_ids_in_graph_match_python(tf) -> None:
    tokens = ["a", "<S>", "</S>", "é😀", "x" * 70, "", "héllo" * 20, "$&@*#"]
    got = elmo_export.tf_char_ids(tf.constant(tokens)).numpy()
    assert (got == np.stack([char_ids(t) for t in tokens])).all()


def test_signatures_mirror_google_elmo(exported: Path, native: ElmoEmbedder, tf, hub) -> None:
    module = hub.load(str(exported))
    assert set(module.signatures) == {"default", "tokens"}
    out = module.signatures["default"](tokens=tf.constant(TEXTS))
    assert set(out) == OUTPUT_KEYS
    n = [len(t.split()) for t in TEXTS]
    T = max(n)
    assert out["sequence_len"].numpy().tolist() == n
    assert out["elmo"].shape == (len(TEXTS), T, 32) and out["word_emb"].shape == (len(TEXTS), T, 16)
    assert out["lstm_outputs2"].shape == (len(TEXTS), T, 32) and out["default"].shape == (len(TEXTS), 32)
    # padding positions are zero
    assert not out["elmo"].numpy()[2, 1:].any()
    np.testing.assert_allclose(out["default"].numpy(), native.embed(TEXTS), atol=ATOL)

    tokens = [t.split() for t in TEXTS]
    padded = [t + [""] * (T - len(t)) for t in tokens]
    by_tokens = module.signatures["tokens"](tokens=tf.constant(padded), sequence_len=tf.constant(n, tf.int32))
    assert set(by_tokens) == OUTPUT_KEYS
    for key in OUTPUT_KEYS:
        np.testing.assert_allclose(by_tokens[key].numpy(), out[key].numpy(), atol=ATOL)


def test_hub_embedder_reads_the_export_from_a_seeded_cache(
    exported: Path, native: ElmoEmbedder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "tfhub"
    shutil.copytree(exported, cache / hashlib.sha1(HANDLE.encode("utf8")).hexdigest())
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(cache))
    for output in ("elmo", "top"):
        via_hub = HubEmbedder(HANDLE, output=output).embed(TEXTS)
        mine = ElmoEmbedder(native.bilm, output).embed(TEXTS)
        assert via_hub.shape == mine.shape == (len(TEXTS), 32)
        assert np.abs(via_hub - mine).max() <= ATOL
        assert np.abs(mine[0] - mine[1]).max() > 1e-2


def test_export_refuses_a_non_empty_folder(native: ElmoEmbedder, tmp_path: Path) -> None:
    (tmp_path / "x").write_text("keep me")
    with pytest.raises(ModelError, match="not empty"):
        export_savedmodel(native, tmp_path)


def test_importing_the_exporter_does_not_import_tensorflow() -> None:
    code = "import sys, featurestore.embedders.elmo_export; assert 'tensorflow' not in sys.modules"
    run_python(code, timeout=120)
