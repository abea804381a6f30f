"""`fs tune` end to end with the real engine (sentence-transformers on the real MiniLM), on the session's MiniLM
store: tune, embed, train, search, check, the int8 export, and a second tuning of the same rows."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cli.main import app
from featurestore.api import FeatureStore
from featurestore.embedders import tuned
from tests.conftest import MINILM_TWEETS, write_csv

pytestmark = [pytest.mark.slow, pytest.mark.framework("minilm")]

TUNE = ["tune", "--dataset", "train", "--name", "t", "--epochs", "0.25"]  # a couple of steps: the plumbing, not F1


def _copy(minilm_store: tuple[Path, list[dict[str, str]]], to: Path) -> Path:
    return Path(shutil.copytree(minilm_store[0], to))


def _vectors(st: Path, model: str) -> np.ndarray:
    X, _, _ = FeatureStore(st).xy("train", model)
    return X


@pytest.fixture(scope="module")
def tuned_store(
    minilm_store: tuple[Path, list[dict[str, str]]], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, str]:
    st = _copy(minilm_store, tmp_path_factory.mktemp("tune") / "store")
    r = CliRunner().invoke(app, [*TUNE, "--store", str(st)])
    assert r.exit_code == 0, r.output
    return st, r.output


def test_tune_trains_on_the_training_split_and_embeds_the_dataset(tuned_store: tuple[Path, str]) -> None:
    st, output = tuned_store
    n_valid = round(MINILM_TWEETS * 0.2)
    assert f"({MINILM_TWEETS - n_valid} training rows; the {n_valid} validation rows unseen)" in output
    assert f"embedded dataset train into tuned:t: {MINILM_TWEETS} texts" in output
    assert "next: fs train --dataset train --model tuned:t" in output
    base, tuned_vectors = _vectors(st, "minilm"), _vectors(st, "tuned:t")
    assert np.allclose(np.linalg.norm(tuned_vectors, axis=1), 1.0, atol=1e-5)
    cosine = (base * tuned_vectors).sum(1)
    assert cosine.min() < 0.9999  # the weights moved
    assert cosine.mean() > 0.5  # from the base model, not from noise
    info = FeatureStore(st).info()
    (model,) = info["tuned_models"]
    assert model["model"] == "tuned:t" and model["n_train"] == MINILM_TWEETS - n_valid


def test_train_search_and_check_use_the_tuned_space(tuned_store: tuple[Path, str]) -> None:
    st, _ = tuned_store
    runner = CliRunner()
    r = runner.invoke(app, ["train", "--dataset", "train", "--model", "tuned:t", "--no-plots", "--store", str(st)])
    assert r.exit_code == 0, r.output
    assert "logreg on train (tuned:t, raw-v1)" in r.output and "optimistic" not in r.output
    r = runner.invoke(
        app,
        ["train", "--features", "tuned:t", "--folds", "2", "--no-plots", "--store", str(st)],
        catch_exceptions=False,
    )
    assert r.exit_code == 0, r.output
    assert "the CV scores are optimistic: tuned:t was tuned on these training rows" in r.output
    r = runner.invoke(app, ["similar", "my battery died again", "--model", "tuned:t", "--k", "3", "--store", str(st)])
    assert r.exit_code == 0, r.output
    assert "train:" in r.output and "embedded" in r.output
    r = runner.invoke(app, ["check", "--store", str(st)])
    assert r.exit_code == 0, r.output
    assert "tuned_models 1" in r.output


def test_the_int8_export_runs_a_tuned_model(
    tuned_store: tuple[Path, str], minilm_store: tuple[Path, list[dict[str, str]]], tmp_path: Path
) -> None:
    st, _ = tuned_store
    rows = minilm_store[1][:40]
    csv = write_csv(tmp_path / "few.csv", rows)
    r = CliRunner().invoke(app, ["ingest", str(csv), "--dataset", "few", "--model", "tuned-int8:t", "--store", str(st)])
    assert r.exit_code == 0, r.output
    fs = FeatureStore(st)
    int8 = fs.xy("few", "tuned-int8:t")[0]
    X, _, ids = fs.xy("train", "tuned:t")  # the same tweets' fp32 tuned vectors
    by_id = dict(zip(ids.tolist(), X))
    ref = np.stack([by_id[row["id"]] for row in rows])
    cosine = (int8 * ref).sum(1)
    assert cosine.min() > 0.97, cosine.min()  # int8 of the tuned weights, not of the base ones
    spaces = {s["model"]: s["id"] for s in fs.info()["spaces"]}
    assert spaces["tuned-int8:t"] != spaces["tuned:t"]


def test_the_same_rows_and_seed_give_the_same_space_and_vectors(
    tuned_store: tuple[Path, str], minilm_store: tuple[Path, list[dict[str, str]]], tmp_path: Path
) -> None:
    st, _ = tuned_store
    other = _copy(minilm_store, tmp_path / "again")
    r = CliRunner().invoke(app, [*TUNE, "--store", str(other)])
    assert r.exit_code == 0, r.output
    space = {s["model"]: s["id"] for s in FeatureStore(st).info()["spaces"]}["tuned:t"]
    assert f"space {space})" in r.output
    assert np.abs(_vectors(st, "tuned:t") - _vectors(other, "tuned:t")).max() < 1e-4
    assert tuned.open_tuned(st, "t").identity == tuned.open_tuned(other, "t").identity
