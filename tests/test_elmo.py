"""Native ELMo against bilm-tf's reference outputs (the tiny model of the allennlp 0.9.0 wheel).

The reference files were made by bilm-tf: ``elmo_token_embeddings.hdf5`` holds the
character-CNN embedding of every word of ``vocab_test.txt``; ``lm_embeddings_k.hdf5`` holds,
for batch i of 3 sentences (sentence k of batch i is ``sentences[k][i]``), the top layer as
[direction, token, dim], computed by a stateful biLM that carries each row's LSTM state from
one batch to the next.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
from elmo_fixture import elmo_fixture_dir, tiny_release

from featurestore.embedders import ELMO_OUTPUTS, load_embedder
from featurestore.embedders.elmo import (
    ElmoBiLM,
    ElmoEmbedder,
    StatefulBiLM,
    char_ids,
    resolve_model_files,
    tokenize,
)
from featurestore.embedders.tf_runtime import TF_IMPORT_ENV
from featurestore.errors import ModelError
from featurestore.storage.keys import space_fields, space_id
from tests.conftest import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.framework("tensorflow")]  # the real tiny ELMo on TensorFlow

ATOL = 1e-5
#: against bilm-tf's own outputs, and between our fast path and our reference path
EXACT = 1e-6
#: bilm-tf's top layer after 10 stateful batches: 9.5e-07 on AVX-512 machines, 1.19e-06 on an AVX2
#: Zen 3 (oneDNN picks other kernels; AllenNLP's own check of this fixture also gives 1.19e-06)
TOP_LAYER_ATOL = 1.5e-6


@pytest.fixture(scope="module")
def fixture_dir() -> Path:
    return elmo_fixture_dir()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny release laid out as users have it: options.json + one weights file."""
    return tiny_release(tmp_path_factory.mktemp("tiny_elmo"))


@pytest.fixture(scope="module")
def bilm(fixture_dir: Path) -> ElmoBiLM:
    return ElmoBiLM.from_files(fixture_dir / "options.json", fixture_dir / "lm_weights.hdf5")


@pytest.fixture(scope="module")
def embedder(model_dir: Path) -> ElmoEmbedder:
    return ElmoEmbedder.from_path(str(model_dir))


def _reference_top_layers(fixture_dir: Path) -> tuple[list[list[str]], list[list[np.ndarray]]]:
    sentences = json.loads((fixture_dir / "sentences.json").read_text())
    expected = []
    for k in range(len(sentences)):
        with h5py.File(fixture_dir / f"lm_embeddings_{k}.hdf5", "r") as f:
            expected.append([np.concatenate([f[str(i)][0], f[str(i)][1]], axis=-1) for i in range(len(sentences[k]))])
    return sentences, expected


def test_char_ids_golden() -> None:
    ids = char_ids("a")
    assert ids.dtype == np.int32 and ids.shape == (50,)
    assert ids[:4].tolist() == [259, 98, 260, 261] and (ids[4:] == 261).all()
    # UTF-8 bytes of a non-ASCII character and an emoji, +1
    assert char_ids("é😀")[:8].tolist() == [259, 0xC3 + 1, 0xA9 + 1, 0xF0 + 1, 0x9F + 1, 0x98 + 1, 0x80 + 1, 260]
    # words longer than 48 bytes keep their first 48, then end-of-word
    long = char_ids("x" * 70)
    assert (long[1:49] == ord("x") + 1).all() and long[49] == 260
    assert char_ids("<S>")[:4].tolist() == [259, 257, 260, 261]
    assert char_ids("</S>")[:4].tolist() == [259, 258, 260, 261]
    assert tokenize(" two  words\t") == ["two", "words"]


def test_token_embeddings_match_bilm_tf(bilm: ElmoBiLM, fixture_dir: Path) -> None:
    words = (fixture_dir / "vocab_test.txt").read_text().strip().split("\n")
    with h5py.File(fixture_dir / "elmo_token_embeddings.hdf5", "r") as f:
        expected = f["embedding"][...]
    assert len(words) == expected.shape[0] == 458
    got = bilm.embed_tokens(words)
    diff = float(np.abs(got - expected).max())
    print(f"char-CNN token embeddings: max abs diff {diff:.2e}")
    assert diff <= EXACT


def test_top_layer_matches_bilm_tf_stateful(bilm: ElmoBiLM, fixture_dir: Path) -> None:
    sentences, expected = _reference_top_layers(fixture_dir)
    reference = StatefulBiLM(bilm, max_batch_size=3)
    worst = 0.0
    stateless_gap = 0.0
    for i in range(10):
        batch = [tokenize(sentences[k][i]) for k in range(3)]
        layers, lengths = reference(batch)
        fresh, _, _ = bilm.sentence_layers(batch)
        assert lengths.tolist() == [len(s) for s in batch]
        for k in range(3):
            n = lengths[k]
            assert expected[k][i].shape == (n, 2 * bilm.options.projection_dim)
            worst = max(worst, float(np.abs(layers[2, k, :n] - expected[k][i]).max()))
            if i > 0:
                stateless_gap = max(stateless_gap, float(np.abs(fresh[2, k, :n] - expected[k][i]).max()))
    print(f"top biLM layer (stateful reference mode): max abs diff {worst:.2e}")
    assert worst <= TOP_LAYER_ATOL
    # The carried state matters: starting each batch from zero does not reproduce the files.
    assert stateless_gap > 1e-3


def test_packed_loop_matches_padded_loop(bilm: ElmoBiLM) -> None:
    """The packed LSTM (only running rows computed) gives the padded loop's layers and states."""
    o = bilm.options
    rng = np.random.default_rng(1)
    lengths = np.array([11, 3, 5, 11, 2, 8, 5], np.int32)  # unsorted, with ties
    B, T = len(lengths), 12
    emb = rng.standard_normal((B, T, o.projection_dim), dtype=np.float32)
    c0 = rng.standard_normal((o.n_layers, 2, B, o.lstm_dim), dtype=np.float32)
    m0 = rng.standard_normal((o.n_layers, 2, B, o.projection_dim), dtype=np.float32)
    padded = bilm.layers(emb, lengths, c0, m0, packed=False)
    packed = bilm.layers(emb, lengths, c0, m0)
    for a, b in zip(padded, packed):
        assert np.abs(a.numpy() - b.numpy()).max() <= ATOL
    layers = padded[0].numpy()
    assert not layers[:, 1, 3:].any() and layers[:, 1, :3].any()  # zero past each length only
    # Skipping the LSTM steps at the markers changes no word position.
    z = bilm.zero_state(B)
    full = bilm.layers(emb, lengths, *z)[0].numpy()
    words = bilm.layers(emb, lengths, *z, drop_markers=True)[0].numpy()
    for b, n in enumerate(lengths):
        if n <= 2:
            continue  # markers only: no word
        assert np.abs(full[:, b, 1 : n - 1] - words[:, b, 1 : n - 1]).max() <= ATOL


def test_first_layer_inputs_per_distinct_token(bilm: ElmoBiLM) -> None:
    """A table of distinct tokens + ids (the first layer's input products once per distinct token) gives the
    layers and states of the gathered embeddings, packed or padded, markers dropped or not."""
    o = bilm.options
    rng = np.random.default_rng(2)
    table = rng.standard_normal((6, o.projection_dim), dtype=np.float32)
    table[0] = 0.0  # padding
    lengths = np.array([9, 3, 5, 9, 2, 7], np.int32)  # unsorted, with ties
    ids = np.zeros((len(lengths), 10), np.int32)
    for b, n in enumerate(lengths):
        ids[b, :n] = rng.integers(1, len(table), n)  # tokens repeat within and across rows
    c0 = rng.standard_normal((o.n_layers, 2, len(lengths), o.lstm_dim), dtype=np.float32)
    m0 = rng.standard_normal((o.n_layers, 2, len(lengths), o.projection_dim), dtype=np.float32)
    for kwargs in ({}, {"packed": False}, {"drop_markers": True}):
        gathered = bilm.layers(table[ids], lengths, c0, m0, **kwargs)
        by_token = bilm.layers(table, lengths, c0, m0, ids=ids, **kwargs)
        for a, b in zip(gathered, by_token):
            assert a.shape == b.shape
            assert np.abs(a.numpy() - b.numpy()).max() <= ATOL


def _tweets(fixture_dir: Path) -> list[str]:
    sentences = json.loads((fixture_dir / "sentences.json").read_text())
    short = ["hello world", "i love my new phone 😀", "a", "naïve café", "x" * 70 + " end", "<S> literal </S>"]
    return short + [s for row in sentences for s in row]


def test_vectors_do_not_depend_on_batching(embedder: ElmoEmbedder, model_dir: Path, fixture_dir: Path) -> None:
    texts = _tweets(fixture_dir)
    together = embedder.embed(texts)
    alone = np.stack([embedder.embed([t])[0] for t in texts])
    assert np.abs(together - alone).max() <= ATOL
    # another instance (cold token cache), a small token budget (many batches), shuffled order,
    # next to much longer texts
    other = ElmoEmbedder.from_path(str(model_dir), max_batch_tokens=120)
    order = list(range(len(texts)))
    random.Random(7).shuffle(order)
    longest = max(texts, key=len)
    mixed = other.embed([texts[i] for i in order] + [longest + " " + longest])
    assert np.abs(mixed[: len(texts)] - together[order]).max() <= ATOL
    # and the vectors are not all alike: the check above can fail
    assert np.abs(together[0] - together[1]).max() > 1e-2


def test_fast_path_matches_reference_path(embedder: ElmoEmbedder, fixture_dir: Path) -> None:
    """The embedder (word cache, marker steps as a precomputed state, packed words-only LSTM)
    gives the vectors of the reference path (every marker step computed, as bilm-tf)."""
    texts = _tweets(fixture_dir)
    layers, n, _ = embedder.bilm.sentence_layers([tokenize(t) for t in texts])
    reference = np.stack([layers[:, b, : n[b]].mean(axis=(0, 1)) for b in range(len(texts))])
    embedder.clear_token_cache()
    diff = float(np.abs(embedder.embed(texts) - reference).max())
    print(f"embedder vs reference path: max abs diff {diff:.2e}")
    assert diff <= EXACT


def test_a_batch_with_too_many_distinct_words_runs_in_parts_with_the_same_vectors(
    embedder: ElmoEmbedder, model_dir: Path, fixture_dir: Path
) -> None:
    texts = _tweets(fixture_dir)
    small = ElmoEmbedder.from_path(str(model_dir), max_distinct_words=8)
    runs: list[tuple[int, int]] = []  # (texts, distinct words) of each graph run
    pooled = small._pooled
    small._pooled = lambda table, ids, lengths: runs.append((len(ids), len(table) - 1)) or pooled(table, ids, lengths)
    got = small.embed(texts)
    assert len(texts) <= small.max_batch_size and len(runs) > 1  # one batch, run in parts
    assert all(distinct <= 8 or n == 1 for n, distinct in runs)  # within the bound, or one text (not split)
    assert any(n == 1 and distinct > 8 for n, distinct in runs)  # the fixture has such a sentence
    assert np.abs(got - embedder.embed(texts)).max() <= ATOL


def test_word_cache_is_a_bounded_lru_and_exact(model_dir: Path, fixture_dir: Path) -> None:
    texts = _tweets(fixture_dir)
    big = ElmoEmbedder.from_path(str(model_dir))
    small = ElmoEmbedder.from_path(str(model_dir), token_cache_size=5, max_batch_tokens=40)
    want = big.embed(texts)
    got = small.embed(texts)  # many batches, words evicted and recomputed
    assert len(small._cache) == 5 and len(big._cache) == len({w for t in texts for w in tokenize(t)})
    assert np.abs(got - want).max() <= EXACT
    assert np.abs(small.embed(texts) - want).max() <= EXACT  # warm, partly evicted cache
    # least recently used goes first: a word used again stays
    small.clear_token_cache()
    small.embed(["a b c d e"])
    small.embed(["a f"])  # a is used again, f evicts the oldest (b)
    assert list(small._cache) == ["c", "d", "e", "a", "f"]


def test_graph_is_traced_once(model_dir: Path, fixture_dir: Path) -> None:
    emb = ElmoEmbedder.from_path(str(model_dir), max_batch_tokens=64)
    texts = _tweets(fixture_dir)
    emb.embed(texts)
    emb.embed(texts[:3])
    assert emb.traces == 1


def test_empty_text_is_zero_and_not_sent(embedder: ElmoEmbedder) -> None:
    out = embedder.embed(["", "some words", "   "])
    assert out.shape == (3, 32) and out.dtype == np.float32
    assert not out[0].any() and not out[2].any() and out[1].any()


def test_pooling_and_outputs(bilm: ElmoBiLM, model_dir: Path) -> None:
    texts = ["the cat sat on the mat", "dogs bark"]
    layers, lengths, _ = bilm.sentence_layers([tokenize(t) for t in texts])
    means = np.stack([layers[:, b, : lengths[b]].mean(axis=1) for b in range(len(texts))], axis=1)  # [3, B, 32]
    vecs = {o: ElmoEmbedder.from_path(str(model_dir), output=o).embed(texts) for o in ("elmo", "top", "all")}
    assert vecs["elmo"].shape == (2, 32) and vecs["top"].shape == (2, 32) and vecs["all"].shape == (2, 96)
    np.testing.assert_allclose(vecs["elmo"], means.mean(axis=0), atol=ATOL)
    np.testing.assert_allclose(vecs["top"], means[2], atol=ATOL)
    np.testing.assert_allclose(vecs["all"], np.concatenate(list(means), axis=-1), atol=ATOL)
    # layer 0 is the token embedding repeated for both directions
    np.testing.assert_allclose(layers[0, :, :, :16], layers[0, :, :, 16:])


def test_fingerprint(embedder: ElmoEmbedder, model_dir: Path) -> None:
    fp = embedder.fingerprint
    json.dumps(fp.as_dict())
    assert fp["output"] == "elmo" and fp["pooling"] == "mean-real-tokens" and fp["dtype"] == "float32"
    assert len(fp["weights_sha256"]) == 64 and len(fp["options_sha256"]) == 64
    top = ElmoEmbedder.from_path(str(model_dir), output="top").fingerprint
    assert top != fp and {k for k in fp if fp[k] != top[k]} == {"output", "mix"}


# Space ids of the first release (before Fingerprint existed), for the tiny ELMo with raw-v1 and
# float32: stores are keyed by them, so these must never change for the same files.
GOLDEN_SPACE_IDS = {"elmo": "8d4b41c3012dfc20", "top": "401b86524d152a14", "all": "2a7698fc265373f0"}


@pytest.mark.parametrize("output", ELMO_OUTPUTS)
def test_space_ids_are_unchanged(model_dir: Path, output: str) -> None:
    emb = ElmoEmbedder.from_path(str(model_dir), output=output)
    fields = space_fields(dict(emb.fingerprint), {"name": "raw-v1"}, "float32")
    assert space_id(fields) == GOLDEN_SPACE_IDS[output]
    assert set(emb.fingerprint) == {
        "embedder",
        "implementation",
        "options_sha256",
        "weights_sha256",
        "output",
        "mix",
        "pooling",
        "tokenizer",
        "max_characters_per_token",
        "state",
        "dtype",
    }


def test_embedder_without_checksums_cannot_be_keyed(bilm: ElmoBiLM) -> None:
    emb = ElmoEmbedder(bilm)  # fine for embedding (the export tests do), not for a store
    assert emb.embed(["a b"]).shape == (1, 32)
    with pytest.raises(
        ModelError, match="without the checksums of its files.*fix: build it with ElmoEmbedder.from_path"
    ):
        _ = emb.fingerprint


#: a C++ log line of TensorFlow (absl's I0000/W0000/E0000 form, the older dated one) or absl's notice
CPP_LOG = re.compile(r"^([IWEF]0000 |\d{4}-\d\d-\d\d [\d:.]+: [IWEF] )|cuInit|absl::InitializeLog", re.M)


def test_tensorflow_env_is_set_for_its_import_only_and_its_cpp_logs_hidden() -> None:
    """An ELMo embed in a fresh process (the shipped elmo-tiny: nothing to fetch): the variables TensorFlow's
    import got are gone afterwards, oneDNN stays on, and no TensorFlow log line reaches stderr, neither while
    TensorFlow loads nor later (cuInit is called when it first looks for devices). With FS_DEBUG=1 the lines are
    shown again (tests/test_tf_runtime.py, with a stand-in import)."""
    code = textwrap.dedent("""
        import os, platform
        from featurestore.embedders import load_embedder
        from featurestore.embedders.tf_runtime import TF_IMPORT_ENV
        emb = load_embedder("elmo-tiny")
        print(emb.embed(["what a lovely day"]).round(5).tolist(), emb.device)
        assert not set(TF_IMPORT_ENV) & set(os.environ), sorted(set(TF_IMPORT_ENV) & set(os.environ))
        from tensorflow.python.util import _pywrap_util_port
        # TF read the switch while importing: oneDNN stays on after the variable is gone
        assert _pywrap_util_port.IsMklEnabled() or platform.machine() not in ("x86_64", "AMD64")
    """)
    env = {k: v for k, v in os.environ.items() if k not in (*TF_IMPORT_ENV, "FS_DEBUG")}
    # One fresh TensorFlow process (~12 s here): FS_DEBUG=1's run would only show this machine's own lines, which
    # the stand-in imports of tests/test_tf_runtime.py check without TensorFlow (the level is set before the import).
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not CPP_LOG.findall(proc.stderr), proc.stderr[-2000:]


def test_tensorflow_import_leaves_the_users_own_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    """A variable the user set is what TensorFlow's import sees and stays afterwards; one they did not set
    is there for the import only. The import is a stand-in that records the environment it runs in: the
    real one is the test above (a second fresh TensorFlow process would only repeat it)."""
    import importlib.abc
    import importlib.util

    from featurestore.embedders.tf_runtime import tensorflow

    seen: dict[str, str | None] = {}

    class StandIn(importlib.abc.MetaPathFinder, importlib.abc.Loader):
        def find_spec(self, name, path, target=None):  # noqa: ANN001 - the finder protocol
            return importlib.util.spec_from_loader(name, self) if name == "tensorflow" else None

        def create_module(self, spec):  # noqa: ANN001
            return None

        def exec_module(self, module) -> None:  # noqa: ANN001
            seen.update({k: os.environ.get(k) for k in TF_IMPORT_ENV})

    real = sys.modules.pop("tensorflow", None)  # the real TensorFlow, if an earlier test imported it
    monkeypatch.setattr(sys, "meta_path", [StandIn(), *sys.meta_path])
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "0")
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    monkeypatch.delenv("FS_DEBUG", raising=False)
    try:
        tensorflow()
    finally:
        sys.modules.pop("tensorflow", None)
        if real is not None:
            sys.modules["tensorflow"] = real
    assert seen == {"TF_ENABLE_ONEDNN_OPTS": "0", "TF_CPP_MIN_LOG_LEVEL": "3"}, seen
    assert os.environ["TF_ENABLE_ONEDNN_OPTS"] == "0" and "TF_CPP_MIN_LOG_LEVEL" not in os.environ


def test_registry_loads_native_elmo(model_dir: Path, fixture_dir: Path) -> None:
    emb = load_embedder(f"elmo:{model_dir}", output="top")
    assert isinstance(emb, ElmoEmbedder) and emb.output == "top" and emb.dim == 32
    pair = load_embedder(f"elmo:{fixture_dir / 'options.json'},{fixture_dir / 'lm_weights.hdf5'}")
    assert pair.fingerprint["weights_sha256"] == emb.fingerprint["weights_sha256"]


# -- user mistakes -----------------------------------------------------------------------------


def _copy_model(model_dir: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "m"
    shutil.copytree(model_dir, folder)
    return folder


def test_missing_options(model_dir: Path, tmp_path: Path) -> None:
    folder = _copy_model(model_dir, tmp_path)
    (folder / "options.json").unlink()
    with pytest.raises(ModelError, match="no options.json"):
        ElmoEmbedder.from_path(str(folder))


def test_malformed_options(model_dir: Path, tmp_path: Path) -> None:
    folder = _copy_model(model_dir, tmp_path)
    (folder / "options.json").write_text("{not json")
    with pytest.raises(ModelError, match="not valid JSON"):
        ElmoEmbedder.from_path(str(folder))
    (folder / "options.json").write_text(json.dumps({"lstm": {"dim": 64}, "char_cnn": {}}))
    with pytest.raises(ModelError, match="char_cnn.filters"):
        ElmoEmbedder.from_path(str(folder))


def test_weights_file_count(model_dir: Path, tmp_path: Path) -> None:
    folder = _copy_model(model_dir, tmp_path)
    shutil.copy(folder / "weights.hdf5", folder / "other.hdf5")
    with pytest.raises(ModelError, match="exactly one weights"):
        resolve_model_files(folder)
    (folder / "other.hdf5").unlink()
    (folder / "weights.hdf5").unlink()
    with pytest.raises(ModelError, match="found: none"):
        resolve_model_files(folder)


def test_missing_dataset_is_named(model_dir: Path, tmp_path: Path) -> None:
    folder = _copy_model(model_dir, tmp_path)
    with h5py.File(folder / "weights.hdf5", "a") as f:
        del f["CNN_high_1/W_carry"]
    with pytest.raises(ModelError, match="lacks dataset 'CNN_high_1/W_carry'"):
        ElmoEmbedder.from_path(str(folder))


def test_weights_not_matching_options(model_dir: Path, tmp_path: Path) -> None:
    folder = _copy_model(model_dir, tmp_path)
    options = json.loads((folder / "options.json").read_text())
    options["lstm"]["projection_dim"] = 32
    (folder / "options.json").write_text(json.dumps(options))
    with pytest.raises(ModelError, match="do not belong to this options.json"):
        ElmoEmbedder.from_path(str(folder))


def test_not_hdf5(model_dir: Path, tmp_path: Path) -> None:
    folder = _copy_model(model_dir, tmp_path)
    (folder / "weights.hdf5").write_bytes(b"not an hdf5 file")
    with pytest.raises(ModelError, match="is not HDF5"):
        ElmoEmbedder.from_path(str(folder))


def test_unknown_output(model_dir: Path) -> None:
    with pytest.raises(ModelError, match="unknown ELMo output 'middle'"):
        ElmoEmbedder.from_path(str(model_dir), output="middle")
