"""Id-table hashing: ``lookups.id_hashes`` (FNV-1a 64 + splitmix64's finaliser) against what format-1 tables used,
pandas' ``hash_array`` on an object array, measured side by side in one run.

    .venv/bin/python bench/id_hash.py                # 1M ids, best of 5 runs each, runs interleaved
    .venv/bin/python bench/id_hash.py --rows 200000 --runs 9

The ids: half 19-digit tweet ids, half short alphanumeric ones (4-11 characters), 1% of all with non-ASCII
characters (accents, CJK, an emoji). Three bulk figures: pandas (str objects), ``id_hashes`` (str objects, as a
query's ids arrive), ``column_hashes`` (UTF-8 bytes, as an id table reads a segment's ids from HDF5); and the
few-ids case of a server's query (1, 10 and 50 ids) in microseconds. Wall times are the best of the runs, with
CPU times beside them: on a shared machine a neighbour's work moves wall times more than CPU times.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.store_scale import machine  # noqa: E402
from featurestore.storage import lookups  # noqa: E402


def make_ids(n: int, seed: int = 0) -> np.ndarray:
    """``n`` realistic ids as an object array of str (see the module docstring)."""
    rng = np.random.default_rng(seed)
    tweets = [str(x) for x in rng.integers(10**18, 2 * 10**18, n // 2)]
    alphabet = np.array(list("abcdefghijklmnopqrstuvwxyz0123456789"))
    codes = rng.choice(alphabet, (n - n // 2, 11))
    lengths = rng.integers(4, 12, n - n // 2)
    short = ["".join(c[:k]) for c, k in zip(codes.tolist(), lengths.tolist())]
    ids = np.array(tweets + short, dtype=object)
    rng.shuffle(ids)
    marks = ["é", "日本", "😀", "ß"]
    for j in rng.choice(n, n // 100, replace=False).tolist():
        ids[j] = f"{ids[j][:6]}{marks[j % len(marks)]}{ids[j][6:]}"
    return ids


def best(fn: Callable[[], object], runs: int) -> tuple[float, float]:
    """(best wall seconds, CPU seconds of that run)."""
    out = (float("inf"), 0.0)
    for _ in range(runs):
        w, c = time.perf_counter(), time.process_time()
        fn()
        out = min(out, (time.perf_counter() - w, time.process_time() - c))
    return out


def per_call_us(fn: Callable[[], object], calls: int) -> float:
    t = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t) / calls * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    import pandas as pd

    ids = make_ids(args.rows)
    utf8 = np.empty(len(ids), dtype=object)
    utf8[:] = [i.encode("utf-8") for i in ids.tolist()]
    print(machine())
    print(f"load average before: {os.getloadavg()[0]:.2f}; {len(ids):,} ids, best of {args.runs} runs")
    cases = {
        "pandas hash_array (str)": lambda: pd.util.hash_array(ids, categorize=False),
        "lookups.id_hashes (str)": lambda: lookups.id_hashes(ids),
        "lookups.column_hashes (UTF-8 bytes)": lambda: lookups.column_hashes(utf8),
    }
    times: dict[str, tuple[float, float]] = {k: (float("inf"), 0.0) for k in cases}
    for _ in range(args.runs):  # interleaved: a neighbour's burst hits every case alike
        for name, fn in cases.items():
            times[name] = min(times[name], best(fn, 1))
    base = times["pandas hash_array (str)"][0]
    for name, (wall, cpu) in times.items():
        print(f"  {name:38s} {wall * 1e3:7.0f} ms (CPU {cpu * 1e3:5.0f} ms)  {wall / base:5.2f}x pandas")
    print("few ids (a server's query), microseconds a call:")
    for k in (1, 10, 50):
        few, listed, calls = ids[:k], ids[:k].tolist(), 20_000 // k
        pandas_us = min(per_call_us(partial(pd.util.hash_array, few, categorize=False), calls) for _ in range(3))
        ours_us = min(per_call_us(partial(lookups.id_hashes, listed), calls) for _ in range(3))
        print(f"  {k:3d} ids: pandas {pandas_us:6.1f} us, id_hashes {ours_us:6.1f} us")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
