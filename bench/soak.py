"""Soak test of crash safety: SIGKILL ``fs ingest`` many times while readers query.

    python bench/soak.py --kills 100

Prints: kills survived / tried, committed rows lost, re-embedded beyond uncommitted,
reader queries succeeded / tried during ingest. The longer sibling of tests/test_crash.py
(same harness, tests/integrity_harness.py), with a reader thread added.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.integrity_harness import MODEL, RECIPE, crash_harness  # noqa: E402


def make_reader(batch_rows: int):
    """One reader query: xy or info on the latest snapshot, checked for consistency."""
    from featurestore.api import FeatureStore

    turn = [0]

    def reader(store: Path) -> None:
        fs = FeatureStore(store)
        turn[0] += 1
        snap = fs.store.snapshot()
        if "train" not in snap.datasets:
            return
        if turn[0] % 2:
            X, y, ids = fs.xy("train", MODEL, RECIPE)
            assert X.shape[0] == len(y) == len(ids), "X, y and ids disagree"
            assert len(ids) % batch_rows == 0, f"{len(ids)} rows: not a committed batch boundary"
        else:
            d = fs.info()
            n = next(x["rows"] for x in d["datasets"] if x["name"] == "train")
            assert d["spaces"][0]["coverage"]["train"] == n, "rows without vectors"

    return reader


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=100)
    ap.add_argument("--rows", type=int, default=1500)
    ap.add_argument("--batch-rows", type=int, default=100)
    ap.add_argument("--sleep", type=float, default=0.01, help="fake embedder seconds per batch of 32 texts")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="fs-soak-") as d:
        fig = crash_harness(
            Path(d),
            kills=a.kills,
            seed=a.seed,
            rows=a.rows,
            batch_rows=a.batch_rows,
            sleep=a.sleep,
            cli_check_every=10,
            reader=make_reader(a.batch_rows),
            log=(lambda s: None) if a.quiet else print,
        )
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"soak: {a.kills} kills, {a.rows} rows in batches of {a.batch_rows}, seed {a.seed}")
    for line in fig.lines():
        print(line)
    for f in fig.failures[:20]:
        print("FAILURE:", f)
    sys.exit(1 if fig.failures else 0)


if __name__ == "__main__":
    main()
