"""Out-of-core training at scale: `fs train --classifier sgd` on a store of N labelled vectors.

Builds (once, under --dir) a store of N synthetic 384-d vectors with two linearly separable-ish classes
(written straight through the store's Writer: the store's own costs, no model), then runs
`fs train --classifier sgd` and `fs train` (logreg) as new processes and reports wall time, peak RSS
and scores. Usage: python bench/train_scale.py --n 1000000
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from featurestore.storage.keys import KEY_DTYPE, raw_digest, space_fields, space_id  # noqa: E402
from featurestore.storage.manifest import Space  # noqa: E402
from featurestore.storage.store import KeyBatch, RowBatch, Store, VectorBatch  # noqa: E402

MODEL = "py:bench.train_scale:Synthetic"  # never loaded: training reads the store only
DIM = 384


def build(path: Path, n: int, seed: int = 0, batch: int = 100_000) -> None:
    rng = np.random.default_rng(seed)
    direction = rng.standard_normal(DIM).astype(np.float32)
    fields = space_fields(
        {"model": "synthetic", "weights_sha256": "0" * 64, "output": "x", "pooling": "none"},
        {"name": "raw-v1"},
        "float32",
    )
    space = Space(space_id(fields), fields, MODEL, "raw-v1", DIM, "float32")
    store = Store(path)
    with store.writer() as w:
        for start in range(0, n, batch):
            m = min(batch, n - start)
            X = rng.standard_normal((m, DIM)).astype(np.float32)
            margin = X @ direction / np.sqrt(DIM) + 0.3 * rng.standard_normal(m).astype(np.float32)
            labels = np.where(margin > 0, "pos", "neg").astype(object)
            ids = np.array([str(i) for i in range(start, start + m)], dtype=object)
            texts = [f"synthetic {i}" for i in range(start, start + m)]
            keys = np.array([raw_digest(t) for t in texts], dtype=KEY_DTYPE)
            w.commit(
                "big",
                vectors=VectorBatch(space, keys, X),
                rows=RowBatch(ids, labels, keys, texts),
                keys=KeyBatch("raw-v1", ids, keys),
            )
        w.compact()


def run(args: list[str]) -> tuple[float, float, str]:
    """Wall seconds, peak RSS (MiB) and output of `fs ARGS` as a new process."""
    t = time.perf_counter()
    r = subprocess.run(
        ["/usr/bin/time", "-v", sys.executable, "-m", "cli.main", *args], cwd=ROOT, capture_output=True, text=True
    )
    wall = time.perf_counter() - t
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", r.stderr).group(1)) / 1024
    out = r.stdout + "\n".join(ln for ln in r.stderr.splitlines() if ln.startswith(("note:", "warning:", "Error:")))
    return wall, rss, out.strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dir", default="/tmp/fs-train-scale")
    a = ap.parse_args()
    path = Path(a.dir) / f"store-{a.n}"
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    if not (path / "manifest").is_dir():
        t = time.perf_counter()
        build(path, a.n)
        print(f"built {a.n:,} x {DIM} labelled vectors in {time.perf_counter() - t:.1f} s at {path}")
    common = ["--dataset", "big", "--model", MODEL, "--clean", "raw-v1", "--store", str(path)]
    for kind in ("sgd", "logreg"):
        wall, rss, out = run(["train", "--classifier", kind, "--name", f"bench-{kind}", *common])
        print(f"\nfs train --classifier {kind}: {wall:.1f} s wall, peak RSS {rss:,.0f} MiB")
        print(out)


if __name__ == "__main__":
    main()
