"""The real tiny ELMo through the whole product: fs ingest / train / similar, and the TF Hub
export read back through --model hub:DIR giving the same stored vectors."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
from elmo_fixture import tiny_release
from typer.testing import CliRunner

from cli.main import app
from featurestore.api import FeatureStore

pytestmark = [pytest.mark.slow, pytest.mark.framework("tensorflow")]  # the real tiny ELMo through the CLI

TRAIN = Path(__file__).resolve().parents[1] / "data" / "av-twitter-sentiment" / "train_2kmZucJ.csv"
runner = CliRunner()


def fs(*args: object):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_release(tmp_path_factory.mktemp("tiny-elmo"))


@pytest.fixture(scope="module")
def tweets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "train.csv"
    with TRAIN.open(encoding="utf-8") as f, path.open("w", encoding="utf-8", newline="") as out:
        rows = list(csv.reader(f))[:241]  # header + 240 real tweets
        csv.writer(out).writerows(rows)
    return path


@pytest.fixture(scope="module")
def native_store(model_dir: Path, tweets: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 240 tweets ingested with the native ELMo into a new store; each test works on a copy."""
    store = tmp_path_factory.mktemp("native") / "store"
    r = fs("ingest", tweets, "--model", f"elmo:{model_dir}", "--store", store)
    assert r.exit_code == 0, r.output
    assert "texts embedded 240" in r.output and "recipe tweet-v1" in r.output
    return store


def test_native_elmo_end_to_end(model_dir: Path, tweets: Path, native_store: Path, tmp_path: Path) -> None:
    store = shutil.copytree(native_store, tmp_path / "store")
    model = f"elmo:{model_dir}"
    again = fs("ingest", tweets, "--model", model, "--store", store)
    assert again.exit_code == 0 and "texts embedded 0" in again.output

    X, y, ids = FeatureStore(store).xy("train", model)
    assert X.shape == (240, 32) and np.isfinite(X).all() and len(y) == 240  # tiny ELMo: 2 x 16 projection
    t = fs("train", "--model", model, "--store", store)
    assert t.exit_code == 0 and "F1 " in t.output, t.output
    s = fs("similar", "--id", 5, "--k", 3, "--model", model, "--store", store)
    assert s.exit_code == 0, s.output
    first = s.output.splitlines()[0].split()
    assert first[0] == "1" and abs(float(first[1]) - 1.0) < 1e-5 and "train:5" in first[2]

    # '#top' is another space: the same texts, other vectors, nothing shared with the default mix.
    top = fs("ingest", tweets, "--model", f"{model}#top", "--store", store)
    assert top.exit_code == 0 and "texts embedded 240" in top.output, top.output
    api = FeatureStore(store)
    assert len(api.info()["spaces"]) == 2
    same = fs("ingest", tweets, "--model", f"{model}#elmo", "--store", store)  # '#elmo' is the default mix
    assert same.exit_code == 0 and "texts embedded 0" in same.output and len(api.info()["spaces"]) == 2
    X_top, _, _ = api.xy("train", f"{model}#top")
    assert X_top.shape == X.shape and np.abs(X_top - X).max() > 1e-3


def test_export_read_back_through_hub_gives_the_same_stored_vectors(
    model_dir: Path, tweets: Path, native_store: Path, tmp_path: Path
) -> None:
    store = shutil.copytree(native_store, tmp_path / "store")  # the native ELMo's 240 vectors
    exported = tmp_path / "elmo-hub"
    r = fs("models", "export", exported, "--model", f"elmo:{model_dir}")
    assert r.exit_code == 0, r.output
    r = fs("ingest", tweets, "--model", f"hub:{exported}", "--store", store)
    assert r.exit_code == 0, r.output
    assert "texts embedded 240" in r.output  # two models: two spaces, nothing shared
    api = FeatureStore(store)
    native, _, ids_a = api.xy("train", f"elmo:{model_dir}")
    hub, _, ids_b = api.xy("train", f"hub:{exported}")
    np.testing.assert_array_equal(ids_a, ids_b)
    assert np.abs(native - hub).max() <= 1e-5
    assert {s["model"] for s in api.info()["spaces"]} == {f"elmo:{model_dir}", f"hub:{exported}"}


def test_elmo_tiny_ships_with_the_package_and_works_offline(
    model_dir: Path, tweets: Path, native_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--model elmo-tiny needs nothing but the package: a few tweets ingested and searched, by id and by a new
    text. Its files are the fixture's, so its vectors and its space are the native ELMo's on those files."""
    monkeypatch.setenv("FS_MODELS_DIR", str(tmp_path / "models"))  # nothing pulled: the model is not looked up there
    few = tmp_path / "few.csv"
    with tweets.open(encoding="utf-8") as f:
        few.write_text("".join(f.readlines()[:25]), encoding="utf-8")  # header + 24 tweets
    store = tmp_path / "store"
    r = fs("ingest", few, "--model", "elmo-tiny", "--store", store)
    assert r.exit_code == 0 and "texts embedded 24" in r.output, r.output
    s = fs("similar", "--id", 5, "--k", 3, "--model", "elmo-tiny", "--store", store)
    assert s.exit_code == 0, s.output
    first = s.output.splitlines()[0].split()
    assert first[0] == "1" and abs(float(first[1]) - 1.0) < 1e-5 and "train:5" in first[2]
    q = fs("similar", "what a lovely day", "--k", 2, "--model", "elmo-tiny#elmo", "--store", store)
    hits = [line.split() for line in q.output.splitlines() if line.startswith("  ")]
    assert q.exit_code == 0 and [h[0] for h in hits] == ["1", "2"] and "(embedded" in q.output, q.output
    assert not (tmp_path / "models").exists()

    tiny = FeatureStore(store)
    X, _, ids = tiny.xy("train", "elmo-tiny")
    native = FeatureStore(native_store)
    X_native, _, ids_native = native.xy("train", f"elmo:{model_dir}")
    assert list(ids) == list(ids_native[:24]) and X.shape == (24, 32)
    np.testing.assert_allclose(X, X_native[:24], rtol=0, atol=1e-6)  # batches of 24 and 240: float noise at most
    [space] = tiny.info()["spaces"]
    [native_space] = native.info()["spaces"]
    assert space["id"] == native_space["id"] and space["model"] == "elmo-tiny"

    # the other mixes are other spaces, as for any native ELMo
    top = fs("ingest", few, "--model", "elmo-tiny#top", "--store", store)
    assert top.exit_code == 0 and "texts embedded 24" in top.output, top.output
    assert len(tiny.info()["spaces"]) == 2
