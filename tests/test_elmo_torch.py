"""Native ELMo on PyTorch (``elmo_torch``) against the TensorFlow path and bilm-tf's own outputs.

The same files must give the same vectors (max abs diff <= 1e-5, fp32, CPU) and the same fingerprint on
either framework: on the tiny model of the allennlp 0.9.0 wheel, and on a mid-size random model whose
options exercise every layer (several filter widths, tanh, highway, the CNN projection, an LSTM with a
projection, cell and projection clipping that actually clip, residual connections). A store filled on
TensorFlow is extended on torch through the drift check. The backend choice (``FS_ELMO_BACKEND``) last.
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import h5py
import numpy as np
import pytest
from elmo_fixture import elmo_fixture_dir, tiny_release
from typer.testing import CliRunner

from cli.main import app
from featurestore.embedders import ELMO_OUTPUTS, load_embedder
from featurestore.embedders import elmo_torch as backend
from featurestore.embedders.elmo import ElmoEmbedder, ElmoOptions, _expected_shapes, model_source, tokenize
from featurestore.embedders.elmo_torch import ElmoTorchEmbedder, TorchBiLM, elmo_backend
from featurestore.errors import ModelError
from featurestore.storage.keys import space_fields, space_id

pytestmark = [pytest.mark.slow, pytest.mark.framework("tensorflow")]  # the TF path is the reference

ATOL = 1e-5
#: against bilm-tf's own outputs, as tests/test_elmo.py asserts for the TF path
EXACT = 1e-6
TOP_LAYER_ATOL = 1.5e-6
#: tests/test_elmo.py's space ids of the tiny ELMo (raw-v1, float32), first computed on TensorFlow
GOLDEN_SPACE_IDS = {"elmo": "8d4b41c3012dfc20", "top": "401b86524d152a14", "all": "2a7698fc265373f0"}
TRAIN = Path(__file__).resolve().parents[1] / "data" / "av-twitter-sentiment" / "train_2kmZucJ.csv"

#: every layer of the network, at a size a test can afford
MID_OPTIONS = {
    "lstm": {
        "use_skip_connections": True,
        "projection_dim": 24,
        "cell_clip": 1.0,
        "proj_clip": 0.25,
        "dim": 48,
        "n_layers": 2,
    },
    "char_cnn": {
        "activation": "tanh",
        "filters": [[1, 8], [2, 8], [3, 16], [5, 16]],
        "n_highway": 2,
        "embedding": {"dim": 8},
        "n_characters": 262,
        "max_characters_per_token": 50,
    },
}


@pytest.fixture(scope="module")
def fixture_dir() -> Path:
    return elmo_fixture_dir()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_release(tmp_path_factory.mktemp("tiny_elmo"))


@pytest.fixture(scope="module")
def mid_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("mid_elmo")
    (folder / "options.json").write_text(json.dumps(MID_OPTIONS))
    rng = np.random.default_rng(3)
    shapes = {"char_embed": (261, 8), **_expected_shapes(ElmoOptions.from_dict(MID_OPTIONS))}
    with h5py.File(folder / "weights.hdf5", "w") as f:
        for name, shape in shapes.items():
            scale = 1.0 if name == "char_embed" else 0.3  # large enough that both clips clip
            f.create_dataset(name, data=rng.standard_normal(shape, dtype=np.float32) * scale)
    return folder


def _tweets(fixture_dir: Path) -> list[str]:
    sentences = json.loads((fixture_dir / "sentences.json").read_text())
    return ["a", "b c", "x y z w"] + [s for row in sentences for s in row]


def test_token_embeddings_match_bilm_tf(fixture_dir: Path) -> None:
    bilm = TorchBiLM.from_files(fixture_dir / "options.json", fixture_dir / "lm_weights.hdf5")
    words = (fixture_dir / "vocab_test.txt").read_text().strip().split("\n")
    with h5py.File(fixture_dir / "elmo_token_embeddings.hdf5", "r") as f:
        expected = f["embedding"][...]
    assert np.abs(bilm.embed_tokens(words) - expected).max() <= EXACT


def test_top_layer_matches_bilm_tf_stateful(fixture_dir: Path) -> None:
    """bilm-tf's stateful outputs (row k of each batch starts from row k's last state): the reference
    path (``TorchBiLM.layers``, markers computed) with the state carried by hand."""
    bilm = TorchBiLM.from_files(fixture_dir / "options.json", fixture_dir / "lm_weights.hdf5")
    sentences = json.loads((fixture_dir / "sentences.json").read_text())
    c, m = bilm.zero_state(3)
    worst = 0.0
    for i in range(10):
        rows = [["<S>", *tokenize(sentences[k][i]), "</S>"] for k in range(3)]
        width = max(map(len, rows))
        emb = np.zeros((3, width, bilm.options.projection_dim), np.float32)
        for k, r in enumerate(rows):
            emb[k, : len(r)] = bilm.embed_tokens(r)
        layers, c, m = bilm.layers(emb, np.array([len(r) for r in rows]), c, m)
        for k in range(3):
            with h5py.File(fixture_dir / f"lm_embeddings_{k}.hdf5", "r") as f:
                want = np.concatenate([f[str(i)][0], f[str(i)][1]], axis=-1)
            worst = max(worst, float(np.abs(layers[2, k, 1 : len(rows[k]) - 1] - want).max()))
    assert worst <= TOP_LAYER_ATOL


@pytest.fixture(scope="module")
def torch_bilm(model_dir: Path) -> TorchBiLM:
    return TorchBiLM.from_files(model_dir / "options.json", model_dir / "weights.hdf5")


@pytest.fixture(scope="module")
def tf_layer_means(model_dir: Path, fixture_dir: Path) -> np.ndarray:
    """TensorFlow's ``all`` vectors of the fixture tweets: each layer's mean, [texts, 3, 32]."""
    emb = ElmoEmbedder.from_path(str(model_dir), output="all")
    return emb.embed(_tweets(fixture_dir)).reshape(-1, 3, 32)


@pytest.mark.parametrize("output", ELMO_OUTPUTS)
def test_same_vectors_and_fingerprint_as_tensorflow(
    model_dir: Path, fixture_dir: Path, torch_bilm: TorchBiLM, tf_layer_means: np.ndarray, output: str
) -> None:
    texts = _tweets(fixture_dir)
    source = model_source(model_dir / "options.json", model_dir / "weights.hdf5")
    torch_emb = ElmoTorchEmbedder(torch_bilm, output, source=source)
    want = {
        "elmo": tf_layer_means.mean(axis=1),
        "top": tf_layer_means[:, 2],
        "all": tf_layer_means.reshape(len(texts), -1),
    }
    got = torch_emb.embed(texts)
    assert got.shape == want[output].shape == (len(texts), torch_emb.dim) and got.dtype == np.float32
    assert np.abs(got - want[output]).max() <= ATOL
    assert np.abs(got[3] - got[4]).max() > 1e-2  # the vectors differ, so the check above can fail
    # one fingerprint, hence one space: the space ids stores were keyed by on TensorFlow (tests/test_elmo.py)
    fields = space_fields(dict(torch_emb.fingerprint), {"name": "raw-v1"}, "float32")
    assert space_id(fields) == GOLDEN_SPACE_IDS[output]
    # the reference path (every marker step computed, no caches) gives the embedder's vectors
    if output == "top":
        layers, n = torch_bilm.sentence_layers([tokenize(t) for t in texts])
        reference = np.stack([layers[2, b, : n[b]].mean(axis=0) for b in range(len(texts))])
        assert np.abs(got - reference).max() <= EXACT


def test_vectors_do_not_depend_on_batching(
    model_dir: Path, fixture_dir: Path, torch_bilm: TorchBiLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    texts = _tweets(fixture_dir)
    emb = ElmoTorchEmbedder(torch_bilm)
    together = emb.embed(texts)
    alone = np.stack([emb.embed([t])[0] for t in texts])
    assert np.abs(together - alone).max() <= ATOL
    # a new instance (cold word cache), many small batches, run in parts, shuffled, next to a longer text,
    # with the directions in two threads (on a CPU, for big steps only)
    other = ElmoTorchEmbedder.from_path(str(model_dir), max_batch_tokens=120, max_distinct_words=8)
    other.bilm.min_parallel_work = 0
    monkeypatch.setattr(backend, "usable_cores", lambda: 2)
    order = list(range(len(texts)))
    random.Random(7).shuffle(order)
    longest = max(texts, key=len)
    mixed = other.embed([texts[i] for i in order] + [longest + " " + longest])
    assert np.abs(mixed[: len(texts)] - together[order]).max() <= ATOL
    assert not emb.embed([""]).any()  # empty texts are zeros, never sent to the model


def test_every_layer_on_a_mid_size_random_model(mid_dir: Path, fixture_dir: Path) -> None:
    texts = _tweets(fixture_dir)
    tf_emb = ElmoEmbedder.from_path(str(mid_dir), output="all")
    torch_emb = ElmoTorchEmbedder.from_path(str(mid_dir), output="all")
    want = tf_emb.embed(texts)
    assert np.abs(torch_emb.embed(texts) - want).max() <= ATOL
    order = list(range(len(texts)))
    random.Random(3).shuffle(order)
    small = ElmoTorchEmbedder.from_path(str(mid_dir), output="all", max_batch_tokens=60)
    assert np.abs(small.embed([texts[i] for i in order]) - want[order]).max() <= ATOL
    assert np.abs(small.embed(texts[5:6])[0] - want[5]).max() <= ATOL
    # the clips clip: the first LSTM layer's outputs reach proj_clip, its cells cell_clip
    bilm = torch_emb.bilm
    layers, n = bilm.sentence_layers([tokenize(t) for t in texts])
    assert np.abs(layers[1]).max() == pytest.approx(0.25)
    _, c, _ = bilm.layers(np.ones((1, 30, 24), np.float32), np.array([30]), *bilm.zero_state(1))
    assert float(c.abs().max()) == pytest.approx(1.0)


def test_store_filled_on_tensorflow_is_extended_on_torch(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with TRAIN.open(encoding="utf-8") as f:
        rows = list(csv.reader(f))[:13]  # header + 12 tweets: 6 on TensorFlow (3 of them the canaries), 6 on torch
    first, both = tmp_path / "first.csv", tmp_path / "both.csv"
    with first.open("w", encoding="utf-8", newline="") as out:
        csv.writer(out).writerows(rows[:7])
    with both.open("w", encoding="utf-8", newline="") as out:
        csv.writer(out).writerows(rows)
    runner, store, model = CliRunner(), tmp_path / "store", f"elmo:{model_dir}"
    # raw-v1: the recipe plays no part in which framework embeds, and tweet-v1 would load spaCy's lemmas
    ingest = ["--model", model, "--clean", "raw-v1", "--store", str(store)]
    monkeypatch.setenv("FS_ELMO_BACKEND", "tf")
    r = runner.invoke(app, ["ingest", str(first), *ingest], catch_exceptions=False)
    assert r.exit_code == 0 and "texts embedded 6" in r.output, r.output
    monkeypatch.setenv("FS_ELMO_BACKEND", "torch")
    assert isinstance(load_embedder(model), ElmoTorchEmbedder)
    # the same space (a new one would embed all 12), its canaries re-embedded on torch within tolerance
    r = runner.invoke(app, ["ingest", str(both), *ingest], catch_exceptions=False)
    assert r.exit_code == 0 and "texts embedded 6" in r.output, r.output


def test_backend_choice(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backend, "_cuda", lambda: False)
    monkeypatch.delenv("FS_ELMO_BACKEND", raising=False)
    assert elmo_backend() == backend.CPU_DEFAULT
    monkeypatch.setattr(backend, "_cuda", lambda: True)
    assert elmo_backend() == "torch"  # a GPU runs torch
    monkeypatch.setattr(backend, "_cuda", lambda: False)
    real = backend._installed
    monkeypatch.setattr(backend, "_installed", lambda name: name != "tensorflow" and real(name))
    assert elmo_backend() == "torch"  # no TensorFlow
    monkeypatch.setattr(backend, "_installed", lambda name: name != "torch" and real(name))
    assert elmo_backend() == "tf"  # no torch
    monkeypatch.setattr(backend, "_installed", real)
    monkeypatch.setattr(backend, "_cuda", lambda: True)
    monkeypatch.setenv("FS_ELMO_BACKEND", " TF ")
    assert elmo_backend() == "tf"  # forced, whatever the device
    assert isinstance(load_embedder(f"elmo:{model_dir}#top"), ElmoEmbedder)
    monkeypatch.setattr(backend, "_cuda", lambda: False)
    monkeypatch.setenv("FS_ELMO_BACKEND", "torch")
    emb = load_embedder(f"elmo:{model_dir}#top")
    assert isinstance(emb, ElmoTorchEmbedder) and emb.output == "top" and emb.device == "cpu"
    monkeypatch.setenv("FS_ELMO_BACKEND", "jax")
    with pytest.raises(ModelError, match=r"FS_ELMO_BACKEND='jax' is not an ELMo backend; fix: set it to tf or torch"):
        load_embedder(f"elmo:{model_dir}")
    monkeypatch.setenv("FS_ELMO_BACKEND", "torch")
    monkeypatch.setattr(backend, "_installed", lambda name: name != "torch")
    with pytest.raises(ModelError, match="FS_ELMO_BACKEND=torch but torch is not installed"):
        elmo_backend()


def test_torch_embedder_without_checksums_cannot_be_keyed(fixture_dir: Path) -> None:
    emb = ElmoTorchEmbedder(TorchBiLM.from_files(fixture_dir / "options.json", fixture_dir / "lm_weights.hdf5"))
    assert emb.embed(["a b"]).shape == (1, 32)
    with pytest.raises(ModelError, match="this ElmoTorchEmbedder was built without the checksums.*ElmoTorchEmbedder"):
        _ = emb.fingerprint
