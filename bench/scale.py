"""Scale-out benchmark: the same tweets ingested by the local engine and by Ray Data with 1 and 2 workers.

    .venv/bin/python bench/scale.py                       # 20k Sentiment140 tweets, minilm-int8
    .venv/bin/python bench/scale.py --n 5000 --model minilm
    .venv/bin/python bench/scale.py --json out.json

Each configuration is a new ``fs ingest`` process into a new store (imports, model loads, and for
Ray the cluster's start included), one after another on the same input; then the stores are
compared (same keys, rows and vectors within 1e-6). A 2-core machine shows Ray's overhead, not its
reach: the figures to carry to a cluster are the per-worker rate and the fixed cost, from which
the last lines extrapolate (the arithmetic is printed).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ingest import ROOT, machine, make_input, run_cli  # noqa: E402  (bench/ingest.py)

TIMINGS = re.compile(r"\[(.*)\]\s*$", re.M)


def timings(stdout: str) -> dict[str, float]:
    """The ``[stage 1.2 s, ...]`` part of an ingest summary."""
    m = TIMINGS.search(stdout)
    out = {}
    for part in m.group(1).split(", ") if m else []:
        name, value, _unit = part.rsplit(" ", 2)
        out[name] = float(value)
    return out


def same_store(a: Path, b: Path) -> float:
    """Max abs difference of vectors by key; raises if keys or rows differ."""
    import numpy as np

    from featurestore.api import FeatureStore
    from featurestore.storage.store import Store

    out = []
    for path in (a, b):
        store = Store(path)
        (space,) = store.snapshot().spaces.values()
        keys = store.space_keys(space)
        vec = store.read_vectors(space, np.arange(len(keys)))
        rows = FeatureStore(path).rows("s140")
        out.append((dict(zip(keys.tolist(), vec)), sorted(zip(rows["ids"].tolist(), rows["labels"].tolist()))))
    (va, ra), (vb, rb) = out
    if ra != rb or va.keys() != vb.keys():
        raise SystemExit(f"stores differ: {a} vs {b}")
    return max(float(np.abs(va[k] - vb[k]).max()) for k in va)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--model", default="minilm-int8")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    print(f"machine: {machine()}; load average at start {os.getloadavg()[0]:.2f}")
    res: dict = {"n": args.n, "model": args.model, "machine": machine()}
    with tempfile.TemporaryDirectory(prefix="fs-scale-") as tmp:
        tmp_path = Path(tmp)
        src = tmp_path / "s140.csv"
        make_input(args.n, src)
        base = ["ingest", str(src), "--dataset", "s140", "--model", args.model]
        runs = {
            "local": [],
            "ray-1": ["--engine", "ray", "--workers", "1"],
            "ray-2": ["--engine", "ray", "--workers", "2"],
        }
        for name, extra in runs.items():
            wall, _, out = run_cli(base + extra + ["--store", str(tmp_path / name)], env)
            embedded = int(re.search(r"texts embedded ([\d,]+)", out).group(1).replace(",", ""))
            res[name] = {
                "wall_s": wall,
                "tweets_per_s": args.n / wall,
                "embedded": embedded,
                "timings": timings(out),
                "load": os.getloadavg()[0],
            }
            print(
                f"{name:6s} {wall:7.1f} s  {args.n / wall:8,.1f} tweets/s  ({embedded:,} embedded, "
                f"load {os.getloadavg()[0]:.1f})  {res[name]['timings']}"
            )
        for name in ("ray-1", "ray-2"):
            res[name]["max_abs_diff_vs_local"] = same_store(tmp_path / "local", tmp_path / name)
            res[name]["over_local"] = res["local"]["wall_s"] / res[name]["wall_s"]
            print(
                f"{name} vs local: {res[name]['over_local']:.2f}x the local rate; same keys and rows; vectors max abs "
                f"diff {res[name]['max_abs_diff_vs_local']:.1e}"
            )
        r2 = res["ray-2"]
        embed = r2["timings"].get("embed", 0.0)  # seconds the actors spent inside the model, summed
        fixed = r2["wall_s"] - r2["timings"].get("embed stage", 0.0)
        per_worker = r2["embedded"] / embed if embed else float("nan")
        res["per_worker_texts_per_s"] = per_worker
        res["fixed_s"] = fixed
        print(
            f"per worker: {per_worker:,.0f} texts/s inside the model (1 CPU each); fixed cost outside the embed "
            f"stage {fixed:.0f} s (cluster start, plan shuffles, dataset segments)"
        )
        for workers in (8, 64):
            n = 10_000_000
            print(
                f"extrapolated, {n:,} new tweets on {workers} such workers: {n:,} / ({workers} x {per_worker:,.0f}/s) "
                f"= {n / (workers * per_worker) / 60:,.0f} min of embedding, plus the plan's shuffles (measured "
                "above at this size; they grow with the input, not the model)"
            )
        print(
            "GPU workers: no GPU was available to this run; bench/gpu.sh measures the per-GPU rate to put in "
            "place of the per-worker figure above."
        )
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
