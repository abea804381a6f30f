"""Commit batches follow the device: 1,024 rows on a CPU, the embedder's whole batch once the model is on a GPU."""

from __future__ import annotations

import time
from pathlib import Path

from featurestore import FeatureStore
from tests.conftest import write_csv
from tests.fakes import CountingEmbedder


class GpuEmbedder(CountingEmbedder):
    """Reports a GPU once loaded (first ``device`` read); its batch is 3,000 texts."""

    def __init__(self) -> None:
        super().__init__(max_batch_size=3000, max_batch_tokens=1 << 20)

    @property
    def device(self) -> str:
        return "cuda:0"


def _csv(path: Path, n: int) -> Path:
    return write_csv(path, [{"id": str(i), "label": str(i % 2), "tweet": f"tweet number {i}"} for i in range(n)])


def test_cpu_commits_1024_rows(tmp_path: Path) -> None:
    fs = FeatureStore(tmp_path / "store")
    emb = CountingEmbedder(max_batch_size=3000, max_batch_tokens=1 << 20)
    s = fs.ingest(str(_csv(tmp_path / "in.csv", 5000)), "d", "fake", "raw-v1", embedder=emb)
    assert s.batches_committed == 5 and [len(b) for b in emb.batches] == [1024] * 4 + [904]
    assert list(s.timings)[:2] == ["clean", "load model"]


class SlowLoadingEmbedder(CountingEmbedder):
    """Loads its model (0.3 s) on first use, by whichever call comes first: as MiniLM does."""

    def __init__(self) -> None:
        super().__init__()
        self._loaded = False

    def _load(self) -> None:
        if not self._loaded:
            time.sleep(0.3)
            self._loaded = True

    @property
    def device(self) -> str:
        self._load()
        return "cpu"

    def batch_limits(self) -> tuple[int, int]:
        self._load()
        return super().batch_limits()


def test_the_model_load_is_timed_where_it_happens(tmp_path: Path) -> None:
    fs = FeatureStore(tmp_path / "store")
    first = fs.ingest(str(_csv(tmp_path / "in.csv", 300)), "d", "fake", "raw-v1", embedder=SlowLoadingEmbedder())
    assert first.timings["load model"] >= 0.3
    # a stored space: the drift check embeds its canaries first, and that is where the model loads
    more = fs.ingest(str(_csv(tmp_path / "more.csv", 400)), "d", "fake", "raw-v1", embedder=SlowLoadingEmbedder())
    assert more.embedded == 100 and more.timings["load model"] >= 0.3 and more.timings["embed"] < 0.3


def test_gpu_commits_the_embedders_batch_once_loaded(tmp_path: Path) -> None:
    fs = FeatureStore(tmp_path / "store")
    emb = GpuEmbedder()
    s = fs.ingest(str(_csv(tmp_path / "in.csv", 10000)), "d", "fake", "raw-v1", embedder=emb)
    sizes = [len(b) for b in emb.batches]
    assert sum(sizes) == s.embedded == 10000
    # chunks prepared while the model was loading keep 1,024 rows; every later one is the GPU batch
    assert sizes[0] == 1024 and 3000 in sizes and max(sizes) == 3000
    first_big = sizes.index(3000)
    assert first_big <= 3 and all(n == 3000 for n in sizes[first_big:-1])
    assert fs.store.snapshot().datasets["d"].count == 10000


def test_batch_rows_given_wins_on_a_gpu(tmp_path: Path) -> None:
    fs = FeatureStore(tmp_path / "store")
    emb = GpuEmbedder()
    s = fs.ingest(str(_csv(tmp_path / "in.csv", 2000)), "d", "fake", "raw-v1", embedder=emb, commit_rows=500)
    assert s.batches_committed == 4 and [len(b) for b in emb.batches] == [500] * 4
