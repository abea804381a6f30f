"""Shared fixtures: a store on tmp_path, the counting fake embedder, real tweets."""
from __future__ import annotations

import os


def _share_cores_between_workers() -> None:
    """Under pytest-xdist, size each worker's BLAS/OpenMP pools to its share of the cores.

    Every worker (and every ``fs`` subprocess it starts) would otherwise size its pools for all
    the cores, and OpenBLAS's spinning threads then fight the other worker's: one grid search
    of tests/test_features.py took 88-145 s that way and 28-32 s with one thread per worker,
    on a busy 2-core machine. A value the user set is kept. This must run before numpy is
    imported (OpenBLAS reads the variables when it loads), hence its place above the imports.
    """
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 1)
    if workers < 2:
        return
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(max(1, cores // workers)))


_share_cores_between_workers()

import contextlib  # noqa: E402 -- below the thread settings, which must precede numpy
import csv  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path
from typing import Iterator

import pytest

from featurestore.api import FeatureStore
from featurestore.store import Store
from tests.fakes import CountingEmbedder

ROOT = Path(__file__).resolve().parents[1]


def run_python(code: str, env: dict[str, str] | None = None, timeout: float = 300) -> str:
    """``python -c code`` in a new process at the repository root (what a fresh process imports or sets);
    its stdout, once it has exited 0 (else the test fails with the tail of its stderr)."""
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout
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


# Spreading the files over the pytest-xdist workers of ``make test`` (``--dist=loadfile``). A file
# stays on one worker, so its module fixtures are built once; files that load the same heavy
# framework go together, so one worker imports it once (MiniLM's two files also share one
# embedding of the tweets, the session fixture ``minilm_store``). test_distributed.py runs MiniLM
# in-process too (its real-model test's local ingest: 4-5 s of CPU importing torch and transformers
# on a worker of its own).
SHARED_GROUPS = {
    "test_minilm.py": "minilm", "test_minilm_int8.py": "minilm",  # torch, transformers, sentence-transformers
    "test_minilm_tokenize.py": "minilm", "test_distributed.py": "minilm",
    "test_elmo.py": "tensorflow", "test_elmo_export.py": "tensorflow", "test_elmo_store.py": "tensorflow",
    "test_hub.py": "tensorflow",
}
# The files that run on their worker's share of the cores (_model_frameworks_on_this_workers_cores): not
# test_distributed.py, whose Ray cluster (started in the module) must have every core it was given.
PINNED = frozenset(SHARED_GROUPS) - {"test_distributed.py"}
# The groups handed out first, the longest first (measured on the 2-core machine: from ~100 s for the
# minilm group down to ~3 s); the other files, each under ~2 s, follow in file order. xdist's own order
# sends the files with the most tests first, which leaves one-test files such as test_concurrency.py for
# the end, where one of them alone keeps a worker busy while the other idles.
LONGEST_FIRST = ("minilm", "tensorflow", "test_concurrency.py", "test_crash.py", "test_features.py", "test_cli.py",
                 "test_bad_input.py", "test_train.py", "test_real_files.py", "test_index_scale.py", "test_fuzz_cli.py",
                 "test_startup.py", "test_plots.py", "test_search_lookup.py", "test_serve.py")


def _group(path: str | Path) -> str:
    name = Path(path).name
    return SHARED_GROUPS.get(name, name)


@pytest.hookimpl(tryfirst=True, optionalhook=True)  # before xdist's own loadfile scheduler; a hook only with xdist
def pytest_xdist_make_scheduler(config: pytest.Config, log):  # noqa: ANN001, ANN201 - xdist's types
    """``--dist=loadfile``, with SHARED_GROUPS kept together and the groups handed out in collection order."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class GroupedFiles(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _group(super()._split_scope(nodeid))

    config.option.loadscopereorder = False  # collection order: LONGEST_FIRST (pytest_collection_modifyitems)
    return GroupedFiles(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.name in REAL_MODEL_MODULES:
            item.add_marker(pytest.mark.slow)
    if os.environ.get("PYTEST_XDIST_WORKER"):  # a plain run keeps the file order
        first: dict[str, int] = {}
        for i, item in enumerate(items):
            first.setdefault(_group(item.path), i)
        rank = {g: i for i, g in enumerate(LONGEST_FIRST)}
        # stable: a group's tests keep their order
        items.sort(key=lambda item: (rank.get(_group(item.path), len(rank)), first[_group(item.path)]))


@contextlib.contextmanager
def this_workers_cores() -> Iterator[None]:
    """Under pytest-xdist, run the block on this worker's share of the cores (threads started in it keep it).

    torch, ONNX Runtime and TensorFlow size their thread pools by the cores the process may use, and two
    workers' pools spinning on the same 2 cores waste much of them (one MiniLM embedding of 300 tweets:
    14.9 s of CPU with 2 threads, 8.4 s with 1, on a busy 2-core machine).
    """
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 1)
    if workers < 2 or not hasattr(os, "sched_setaffinity"):
        yield
        return
    before = os.sched_getaffinity(0)
    cores = sorted(before)
    index = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0")[2:] or 0)
    os.sched_setaffinity(0, cores[index::workers] or {cores[index % len(cores)]})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


@pytest.fixture(scope="module", autouse=True)
def _model_frameworks_on_this_workers_cores(request: pytest.FixtureRequest) -> Iterator[None]:
    """The files that load a model framework (PINNED) run on this worker's share of the cores."""
    if request.path.name not in PINNED:
        yield
        return
    with this_workers_cores():
        yield


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


MINILM_TWEETS = 300


@pytest.fixture(scope="session")
def minilm_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, str]]]:
    """The first 300 real tweets ingested through ``fs ingest`` with the real MiniLM, once a session.

    tests/test_minilm.py checks this store; tests/test_minilm_int8.py compares its int8 vectors
    with the fp32 ones stored here, so the model is loaded and the tweets embedded once for both
    (they share a worker under ``make test``: SHARED_GROUPS).
    """
    from typer.testing import CliRunner

    from cli.main import app

    tmp = tmp_path_factory.mktemp("minilm")
    rows = train_rows(MINILM_TWEETS)
    csv_path = write_csv(tmp / "tweets.csv", rows)
    st = tmp / "store"
    with this_workers_cores():  # a session fixture is set up before the module's own pinning
        r = CliRunner().invoke(app, ["ingest", str(csv_path), "--dataset", "train", "--store", str(st)])
    assert r.exit_code == 0, r.output
    assert "dataset train  model minilm  recipe raw-v1" in r.output
    n = MINILM_TWEETS
    assert f"rows read {n}  new ids {n}  duplicates 0" in r.output and f"cache hits 0  texts embedded {n}" in r.output
    return st, rows
