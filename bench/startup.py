"""Start-up benchmark: a warm re-ingest as a new ``fs`` process (nothing to embed), and import times.

    .venv/bin/python bench/startup.py               # 10k Sentiment140 tweets, median of 5 runs
    .venv/bin/python bench/startup.py --runs 9
    .venv/bin/python bench/startup.py --joins       # also: the dict joins and the stdlib CSV reader vs pandas
                                                    # at 1M rows

The store is built in this process with ``MiniLMStandIn``: MiniLM's fingerprint and width, vectors from a
seeded generator, so building takes seconds and the space is the one the default model reads and writes.
Then ``fs ingest FILE --dataset s140`` runs as a user types it (default model, minilm): every text is
stored already, so it only reads the file, plans and commits nothing. Every figure is a new process's
wall time (and its CPU time, user + system, from ``os.wait4``); the load average is printed with them,
since a neighbour's work on a shared machine moves wall times more than CPU times.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.ingest import make_input  # noqa: E402
from bench.store_scale import machine  # noqa: E402
from featurestore.embedders.base import Embedder, Fingerprint  # noqa: E402

FS = [sys.executable, "-m", "cli.main"]
HEAVY = ("pandas", "pyarrow", "faiss", "sklearn", "torch", "tensorflow", "sentence_transformers", "urllib.request")


class MiniLMStandIn(Embedder):
    """MiniLM's fingerprint and width, seeded random vectors: the default model's space in seconds."""

    name = "minilm"

    def __init__(self) -> None:
        from featurestore.embedders.minilm import MiniLMEmbedder

        self._fingerprint = MiniLMEmbedder().fingerprint  # the weights' checksum only; loads no model

    @property
    def dim(self) -> int:
        return 384

    @property
    def fingerprint(self) -> Fingerprint:
        return self._fingerprint

    def embed_batch(self, texts: list[str]) -> np.ndarray:
        return np.random.default_rng(len(texts)).standard_normal((len(texts), 384)).astype(np.float32)


def load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def timed_process(args: list[str], env: dict[str, str] | None = None) -> tuple[float, float, str]:
    """Wall and CPU (user + system) seconds of one new process, and its stdout; fails loudly."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    p = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # children run one at a time: the difference is this one
    if p.returncode:
        sys.exit(f"{' '.join(args)} failed:\n{p.stderr}")
    return wall, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime, p.stdout


def median_process(args: list[str], runs: int, env: dict[str, str] | None = None) -> tuple[float, float, str]:
    walls, cpus, out = [], [], ""
    for _ in range(runs):
        wall, cpu, out = timed_process(args, env)
        walls.append(wall)
        cpus.append(cpu)
    return statistics.median(walls), statistics.median(cpus), out


def warm_modules(src: Path, env: dict[str, str]) -> list[str]:
    """The heavy modules a warm re-ingest imports (run in a fresh process, the CLI called in it)."""
    code = (
        "import json, sys\nfrom cli.main import app\n"
        f"sys.argv = ['fs', 'ingest', {str(src)!r}, '--dataset', 's140']\n"
        "try:\n    app()\nexcept SystemExit:\n    pass\n"
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def joins(n: int) -> None:
    """``store.Lookup`` against a pandas Index, and the stdlib CSV reader against pandas', at ``n`` rows."""
    import pandas as pd

    from featurestore.inputs import sources
    from featurestore.storage.store import lookup

    rng = np.random.default_rng(0)
    ids = np.array([str(i * 7 + 13) for i in range(n)], dtype=object)
    shuffled = ids[rng.permutation(n)]
    keys = np.array([os.urandom(16).hex().encode() for _ in range(n)], dtype="S32")
    have = set(keys.tolist())

    def plan_joins(index) -> None:  # noqa: ANN001 -- the joins of ingest.plan on a warm re-ingest
        old = index(ids)
        old.get_indexer(shuffled)
        unvectored = ids[~index(keys).isin(list(have))]
        ~old.isin(ids) | old.isin(unvectored)

    def best(fn, *args) -> float:  # noqa: ANN001
        times = []
        for _ in range(3):
            t = time.perf_counter()
            fn(*args)
            times.append(time.perf_counter() - t)
        return min(times)

    pandas_index = lambda v: pd.Index(v, dtype=object)  # noqa: E731 -- what lookup() returned before
    print(f"joins at {n:,} rows, best of 3 ({load()}):")
    for what, values in (("str ids", ids), ("32-byte keys", keys)):
        target = values[rng.permutation(n)]
        d = best(lambda v, t: lookup(v).get_indexer(t), values, target)
        p = best(lambda v, t: pandas_index(v).get_indexer(t), values, target)
        print(f"  get_indexer {what}: dict {d:.2f} s, pandas {p:.2f} s ({d / p:.2f}x)")
    d, p = best(plan_joins, lookup), best(plan_joins, pandas_index)
    print(f"  ingest plan's joins: dict {d:.2f} s, pandas {p:.2f} s ({d / p:.2f}x)")
    with tempfile.TemporaryDirectory() as tmp:
        make_input(100_000, Path(tmp) / "t.csv")
        header, _, body = (Path(tmp) / "t.csv").read_text(encoding="utf-8").partition("\n")
    for rows in (len(body) and sources.STDLIB_CSV_MAX_CHARS * 100_000 // len(body), n):
        text = header + "\n" + body * (rows // 100_000) + "".join(body.splitlines(True)[: rows % 100_000])
        s, p = best(sources._csv_stdlib, text, ","), best(sources._csv_pandas, text, ",", "bench", False)
        print(
            f"  CSV reader, {len(text) / 1e6:.1f} MB ({rows:,} rows): stdlib {s:.2f} s, pandas {p:.2f} s ({s / p:.2f}x)"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10_000, help="tweets in the file (max 100000)")
    ap.add_argument("--runs", type=int, default=5, help="new processes per figure; the median is shown")
    ap.add_argument(
        "--joins",
        type=int,
        nargs="?",
        const=1_000_000,
        default=0,
        metavar="N",
        help="also time the joins and the CSV reader at N rows (default 1,000,000)",
    )
    args = ap.parse_args()

    from featurestore.api import FeatureStore

    print(f"machine: {machine()}; {load()}")
    tmp = Path(tempfile.mkdtemp(prefix="fs-startup-"))
    try:
        src = tmp / "tweets.csv"
        make_input(args.n, src)
        store = tmp / "store"
        env = {**os.environ, "FS_STORE": str(store)}
        t = time.perf_counter()
        built = FeatureStore(store).ingest(str(src), "s140", "minilm", embedder=MiniLMStandIn())
        print(
            f"store: {built.rows_read:,} Sentiment140 tweets, {built.embedded:,} vectors in the minilm space "
            f"(stand-in vectors, built in {time.perf_counter() - t:.1f} s)"
        )

        wall, cpu, out = median_process(FS + ["ingest", str(src), "--dataset", "s140"], args.runs, env)
        assert "texts embedded 0" in out, out
        print(
            f"warm re-ingest as a new process (fs ingest {src.name} --dataset s140, default model): "
            f"{wall:.2f} s wall, {cpu:.2f} s CPU, median of {args.runs} ({load()})"
        )
        print(f"heavy modules it imports: {', '.join(warm_modules(src, env)) or 'none'} (of {', '.join(HEAVY)})")
        for what in ("pass", "import featurestore.api", "import cli.main"):
            wall, cpu, _ = median_process([sys.executable, "-c", what], args.runs)
            print(f"python -c {what!r}: {wall:.2f} s wall, {cpu:.2f} s CPU, median of {args.runs} ({load()})")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.joins:
        joins(args.joins)


if __name__ == "__main__":
    main()
