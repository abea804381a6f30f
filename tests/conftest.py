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

# The imports below the thread settings, which must precede numpy's (E402 is off for this file).
import ast
import contextlib
import csv
import functools
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from featurestore.api import FeatureStore
from featurestore.storage.store import Store
from tests.fakes import CountingEmbedder

ROOT = Path(__file__).resolve().parents[1]


def run_python(code: str, env: dict[str, str] | None = None, timeout: float = 300) -> str:
    """``python -c code`` in a new process at the repository root (what a fresh process imports or sets);
    its stdout, once it has exited 0 (else the test fails with the tail of its stderr)."""
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def free_port() -> int:
    """A TCP port on the loopback that nothing listens on (for a server a test starts)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_up(url: str, proc: subprocess.Popen | None = None, timeout: float = 60) -> None:
    """Wait until the ``fs serve`` at ``url`` (ending in /) answers /health (200, or 401 behind a token); fail at
    once with its stderr if ``proc``, its process, exits first."""
    import time

    import httpx

    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url + "health", timeout=2).status_code in (200, 401):
                return
        except httpx.HTTPError:
            pass
        if proc is not None and proc.poll() is not None:
            raise AssertionError(proc.stderr.read() if proc.stderr else "server exited")
        assert time.monotonic() < deadline, f"the server at {url} did not answer within {timeout:.0f} s"
        time.sleep(0.1)


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


# -- Slow tests and the pytest-xdist schedule, from what each test file declares ----------------------------------
#
# A test file that loads a heavy model framework says so in its module-level ``pytestmark``:
#
#     pytestmark = [pytest.mark.slow, pytest.mark.framework("minilm")]
#
# ``slow``: ``make test-fast`` (``-m "not slow"``) skips it. ``framework``: under ``make test`` (pytest-xdist,
# ``--dist=loadfile``) the files naming one framework run on one worker, which imports it once (MiniLM's files also
# share one embedding of the tweets, the session fixture ``minilm_store``), and on that worker's share of the cores
# (``this_workers_cores``) unless they declare ``pin_cores=False``. Nothing here names a test file: a new one needs
# no registration.


@functools.cache
def declared_framework(path: Path) -> str | None:
    """The name in ``pytest.mark.framework("name")`` of a test file's module-level ``pytestmark``, read from its source.

    The xdist controller, which hands files to workers, never imports a test module (its workers collect them), so
    the scheduler reads the declaration here; ``pytest_collection_modifyitems`` checks that it is the marker pytest
    sees, so a name it cannot read (not a literal) fails the run instead of splitting a framework's files.
    """
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError):
        return None  # pytest reports it when it collects the file
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "pytestmark" for t in node.targets):
            for call in ast.walk(node.value):
                if (
                    isinstance(call, ast.Call)
                    and isinstance(call.func, ast.Attribute)
                    and call.func.attr == "framework"
                    and call.args
                    and isinstance(call.args[0], ast.Constant)
                    and isinstance(call.args[0].value, str)
                ):
                    return call.args[0].value
    return None


def _scope(path: Path) -> str:
    """What xdist hands to one worker: a framework's files together, any other file alone."""
    framework = declared_framework(path)
    return f"framework {framework}" if framework else str(path)


def _heaviest_first(items: list[pytest.Item]) -> list[pytest.Item]:
    """The tests regrouped by scope, the scopes in the order the workers should take them.

    The longest go first, so that what is left at the end is short files that fill in while the other worker
    finishes (xdist's own order, most tests first, left one-test soaks such as test_concurrency.py for the end,
    one of them alone keeping a worker busy while the other idled). The weight is read from the marks: framework
    groups first (the minilm group, test_distributed.py's Ray cluster included, is the longest scope at ~100 s),
    then files by their number of slow tests (process kills, soaks), then by their number of tests. Ties keep the
    file order, and a scope's tests keep theirs.
    """
    scopes: dict[str, list[pytest.Item]] = {}
    for item in items:
        scopes.setdefault(_scope(item.path), []).append(item)

    def weight(scope: str) -> tuple[bool, int, int]:
        tests = scopes[scope]
        slow = sum(1 for item in tests if item.get_closest_marker("slow"))
        return not scope.startswith("framework "), -slow, -len(tests)

    return [item for scope in sorted(scopes, key=weight) for item in scopes[scope]]


@pytest.hookimpl(tryfirst=True, optionalhook=True)  # before xdist's own loadfile scheduler; a hook only with xdist
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:  # xdist's Producer and scheduler
    """``--dist=loadfile``, with a framework's files kept together and the scopes handed out in collection order."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class FrameworkFiles(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _scope(config.rootpath / super()._split_scope(nodeid))

    config.option.loadscopereorder = False  # collection order: _heaviest_first (pytest_collection_modifyitems)
    return FrameworkFiles(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for module in dict.fromkeys(item.getparent(pytest.Module) for item in items):
        if module is None:
            continue
        mark = module.get_closest_marker("framework")
        if (mark.args[0] if mark and mark.args else None) != declared_framework(module.path):
            raise pytest.UsageError(
                f"{module.path.name}: declare pytest.mark.framework with its name as a string literal in the module's "
                'own pytestmark (pytestmark = [pytest.mark.slow, pytest.mark.framework("minilm")]): the xdist '
                "scheduler reads it from the source"
            )
    if os.environ.get("PYTEST_XDIST_WORKER"):  # a plain run keeps the file order
        items[:] = _heaviest_first(items)


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
    """The files that declare a framework run on this worker's share of the cores (unless ``pin_cores=False``)."""
    mark = request.node.get_closest_marker("framework")
    if mark is None or not mark.kwargs.get("pin_cores", True):
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
def av(fs: FeatureStore, tmp_path: Path) -> FeatureStore:
    """The first 400 tutorial tweets on the bag-of-words fake (space ``fake``, ``raw-v1``): for training tests."""
    from tests.fakes import BagOfWordsEmbedder

    fs.ingest(
        str(write_csv(tmp_path / "train.csv", train_rows(400))),
        "train",
        "fake",
        "raw-v1",
        embedder=BagOfWordsEmbedder(),
    )
    return fs


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
    (they share a worker under ``make test``: both declare ``pytest.mark.framework("minilm")``).
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
