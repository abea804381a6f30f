"""Cold `fs similar --id`, `fs similar TEXT` and `fs info`, each a new process, on a store of the scale
bench's kind (issue 24): wall time, CPU time and the child's own peak RSS (``os.wait4``); or, with
``--in-process``, each call alone (imports excluded) with the bytes it read.

    # a store of ClusterEmbedder vectors in dataset "scale", ids 0..n-1, with an IVF index:
    .venv/bin/python bench/store_scale.py --n 1000000 --keep          # leaves /tmp/fs-scale-1000000
    .venv/bin/fs index build --kind ivf --model py:bench.store_scale:ClusterEmbedder --store /tmp/fs-scale-1000000/store
    .venv/bin/python bench/cold_lookups.py --store /tmp/fs-scale-1000000/store --n 1000000
    .venv/bin/python bench/cold_lookups.py --store ... --n 1000000 --in-process
    .venv/bin/python bench/cold_lookups.py --store ... --code /path/to/other/checkout   # the same, other code

The first run of each command after a change of the segments builds the derived tables (key tables, summaries)
and saves them; the median over ``--runs`` is what a cold process costs once they are saved.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODEL = "py:bench.store_scale:ClusterEmbedder"


def run(code: Path, args: list[str], store: Path) -> tuple[float, float, float]:
    """(wall seconds, peak RSS MiB, CPU seconds: user + system) of ``fs ARGS`` as a new process running ``code``
    (CPU time as well: on a shared machine the wall time says as much about the neighbours)."""
    env = {**os.environ, "FS_STORE": str(store), "PYTHONPATH": str(code), "OMP_NUM_THREADS": "2"}
    t = time.perf_counter()
    p = subprocess.Popen(
        [sys.executable, "-m", "cli.main", *args], cwd=code, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out: dict[str, bytes] = {}
    pumps = [
        threading.Thread(target=lambda n=n, s=s: out.__setitem__(n, s.read()))
        for n, s in (("out", p.stdout), ("err", p.stderr))
    ]
    for th in pumps:
        th.start()
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t
    for th in pumps:
        th.join()
    if os.waitstatus_to_exitcode(status):
        sys.exit(f"fs {' '.join(args)} failed:\n{out['err'].decode()[-2000:]}")
    return wall, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime


PROBE = """
import json, sys, time
import numpy as np
from featurestore.api import FeatureStore
from featurestore.inputs.clean import get_recipe
from featurestore.query import index

def rchar():
    return int(next(l for l in open("/proc/self/io") if l.startswith("rchar")).split()[1])

store, model, n, kind = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
get_recipe("tweet-v1").clean(["warm"])  # spaCy's tables: an import cost, not a lookup
out = []
for q in np.random.default_rng(5).integers(n, size=5).tolist():
    fs = FeatureStore(store)  # a fresh cache each time: what a new process has
    before, t = rchar(), time.perf_counter()
    if kind == "info":
        fs.info()
    elif kind == "id":
        fs.similar(id=str(q), k=10, model=model)
    else:
        fs.similar(f"scale tweet about topic {q % 997}", k=10, model=model)
    out.append((time.perf_counter() - t, rchar() - before))
print(json.dumps(out))
"""


def in_process(code: Path, store: Path, n: int, kind: str) -> list[tuple[float, int]]:
    """(seconds, bytes read by read calls) of each of 5 queries with a fresh ``FeatureStore``, imports excluded."""
    env = {**os.environ, "PYTHONPATH": str(code), "OMP_NUM_THREADS": "2"}
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(store), MODEL, str(n), kind],
        cwd=code,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [tuple(x) for x in json.loads(out.splitlines()[-1])]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", type=Path, required=True)
    ap.add_argument("--n", type=int, required=True, help="rows of the store (ids are 0..n-1)")
    ap.add_argument("--code", type=Path, default=ROOT, help="the checkout to run [default: this one]")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--only", default="id,text,info")
    ap.add_argument(
        "--in-process", action="store_true", help="time the calls alone (imports excluded) and count bytes read"
    )
    args = ap.parse_args()
    if args.in_process:
        for kind in args.only.split(","):
            probes = in_process(args.code, args.store, args.n, kind)
            print(
                f"{kind} (in process, fresh FeatureStore): "
                f"median {statistics.median(r[0] for r in probes) * 1e3:.0f} ms, "
                f"read() bytes median {statistics.median(r[1] for r in probes) / 1e6:.2f} MB "
                f"(runs: {', '.join(f'{r[0] * 1e3:.0f} ms/{r[1] / 1e6:.2f} MB' for r in probes)})",
                flush=True,
            )
        return
    rng = np.random.default_rng(11)
    commands = {
        "id": lambda: ["similar", "--id", str(int(rng.integers(args.n))), "--k", "10", "--model", MODEL, "--json"],
        "text": lambda: [
            "similar",
            f"scale tweet about topic {'abcdefghij'[int(rng.integers(10))]}",
            "--k",
            "10",
            "--model",
            MODEL,
            "--json",
        ],
        "info": lambda: ["info", "--json"],
    }
    res = {}
    for name in args.only.split(","):
        runs = [run(args.code, commands[name](), args.store) for _ in range(args.runs + 1)]
        walls, rsses, cpus = [r[0] for r in runs], [r[1] for r in runs], [r[2] for r in runs]
        res[name] = {
            "first_s": walls[0],
            "median_s": statistics.median(walls[1:]),
            "median_cpu_s": statistics.median(cpus[1:]),
            "peak_rss_mib": max(rsses),
        }
        print(
            f"{name}: first {walls[0]:.2f} s, then median {statistics.median(walls[1:]):.2f} s "
            f"(runs {', '.join(f'{w:.2f}' for w in walls[1:])}), CPU median {statistics.median(cpus[1:]):.2f} s, "
            f"peak RSS {max(rsses):,.0f} MiB",
            flush=True,
        )
    print("RESULT " + json.dumps(res))


if __name__ == "__main__":
    main()
