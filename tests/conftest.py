"""Shared fixtures: a store on tmp_path, the counting fake embedder, real tweets."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest

from featurestore.api import FeatureStore
from featurestore.store import Store
from tests.fakes import CountingEmbedder

ROOT = Path(__file__).resolve().parents[1]
TRAIN_CSV = ROOT / "data" / "av-twitter-sentiment" / "train_2kmZucJ.csv"
TEST_CSV = ROOT / "data" / "av-twitter-sentiment" / "test_oJQbWVvk.csv"
FAKE = "py:tests.fakes:CountingEmbedder"


def train_rows(n: int | None = None) -> list[dict[str, str]]:
    """The first ``n`` rows of the bundled train CSV as dicts (id, label, tweet)."""
    with open(TRAIN_CSV, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return rows if n is None else rows[:n]


def write_csv(path: Path, rows: list[dict[str, str]], fields: tuple[str, ...] = ("id", "label", "tweet")) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(fields), extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return path


# Modules that load real models (MiniLM through sentence-transformers, the tiny real ELMo,
# TF Hub modules) are ``slow``. They are marked here, by file name, rather than with
# ``pytestmark`` in each module, because those files belong to the embedder work and change
# with it; one list here keeps ``make test-fast`` (``-m "not slow"``) skipping all of them.
REAL_MODEL_MODULES = frozenset({"test_minilm.py", "test_hub.py", "test_elmo.py", "test_elmo_export.py", "test_elmo_store.py"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.name in REAL_MODEL_MODULES:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _clear_fake_log() -> None:
    CountingEmbedder.log.clear()


@pytest.fixture
def embedder() -> CountingEmbedder:
    return CountingEmbedder()


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "store")


@pytest.fixture
def fs(store: Store) -> FeatureStore:
    return FeatureStore(store.path)


@pytest.fixture
def tweets_csv(tmp_path: Path) -> Path:
    """The first 200 real tweets of the train CSV (both labels present)."""
    return write_csv(tmp_path / "tweets.csv", train_rows(200))
