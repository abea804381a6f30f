"""Index kinds side by side: recall@10 against exact search beside every speed figure.

    .venv/bin/python bench/index.py                       # 1,000,000 vectors, every kind
    .venv/bin/python bench/index.py --n 200000 --kinds flat,ivf,hnsw,ivfpq
    .venv/bin/python bench/index.py --nprobe 8,16,32,64   # the recall/speed curve of IVF
    .venv/bin/python bench/index.py --n 2000000 --kinds flat,ivf-flatq,ivf --nprobe 16,32,64   # issue 24: quantizers

Vectors: ``ClusterEmbedder`` of bench/store_scale.py (a mixture of 4,096 gaussian clusters of
varying spread, 384-d, unit norm: neighbours are close together, as in real sentence embeddings,
unlike i.i.d. gaussian points). Queries are 200 new texts of the same mixture. Each index is
built exactly as ``fs index build`` builds it (``featurestore.query.index``: same factory strings and
training), searched with one batch of queries. Exact = FAISS ``Flat`` (the same search as
``fs similar --exact``); numpy brute force is timed beside it at 100k.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import faiss  # noqa: E402

from bench.store_scale import ClusterEmbedder, machine  # noqa: E402
from featurestore.query import index as fi  # noqa: E402


def vectors(n: int, queries: int) -> tuple[np.ndarray, np.ndarray]:
    e = ClusterEmbedder()
    x = np.concatenate(
        [e.embed_batch([f"bench vector {i}" for i in range(s, min(n, s + 100_000))]) for s in range(0, n, 100_000)]
    )
    q = e.embed_batch([f"bench query {i}" for i in range(queries)])
    return x, q


def recall(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.mean([len(set(g) & set(w)) / len(w) for g, w in zip(got.tolist(), want.tolist())]))


def timed_search(index: faiss.Index, q: np.ndarray, k: int, params=None, repeat: int = 3) -> tuple[float, np.ndarray]:
    best, rows = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        _, rows = index.search(q, k, params=params)
        best = min(best, time.perf_counter() - t)
    return len(q) / best, rows


class Exact:
    """``fs similar --exact`` over a flat index, with FAISS's ``search`` signature for timed_search."""

    def __init__(self, index: faiss.Index) -> None:
        self.opened = fi.OpenedIndex(index, index.ntotal, "built", "Flat")

    def search(self, q: np.ndarray, k: int, params=None) -> tuple[np.ndarray, np.ndarray]:  # noqa: ANN001
        return fi.search(self.opened, q, k, exact=True)


def build(kind: str, x: np.ndarray) -> tuple[faiss.Index, str, dict[str, float]]:
    """Built as ``fs index build`` builds it (``featurestore.query.index``: factory string, sample size, training);
    ``ivf-flatq``: the IVF index before issue 24 (a flat quantizer, 40 training vectors a list, uncapped), beside
    it; ``ivf-hnswq``: the HNSW quantizer at any size. Times: wall and CPU (both threads; what survives a loaded
    machine) seconds of training and of adding."""
    n = len(x)
    if kind == "ivf-flatq":
        factory = f"IVF{fi.default_nlist(n)},Flat"
        index = faiss.index_factory(x.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
        count = fi.TRAIN_PER_LIST * faiss.extract_index_ivf(index).nlist
    else:
        factory = fi.factory_string(kind, n, x.shape[1]) if kind != "ivf-hnswq" else ""
        if kind == "ivf-hnswq":  # the HNSW quantizer whatever the number of lists
            factory = f"IVF{fi.default_nlist(n)}_HNSW{fi.QUANTIZER_M},Flat"
        index = fi.new_index(factory, x.shape[1])
        count = fi.training_rows(index)
    t, c = time.perf_counter(), time.process_time()
    if count:
        sample = x[:: max(1, n // count)][:count]
        if kind == "ivf-flatq":
            ivf = faiss.extract_index_ivf(index)
            ivf.cp.niter, ivf.cp.min_points_per_centroid = 10, 1
            index.train(sample)
        else:
            fi.train_index(index, sample)
    times = {"train_s": time.perf_counter() - t, "train_cpu_s": time.process_time() - c, "train_rows": count}
    t, c = time.perf_counter(), time.process_time()
    for s in range(0, n, 65536):
        index.add(x[s : s + 65536])
    times.update(add_s=time.perf_counter() - t, add_cpu_s=time.process_time() - c)
    times["build_s"] = times["train_s"] + times["add_s"]
    times["build_cpu_s"] = times["train_cpu_s"] + times["add_cpu_s"]
    return index, factory, times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--kinds", default="flat,ivf,hnsw,ivfpq")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--nprobe", default="8,16,32,64")
    ap.add_argument("--ef", default="32,64,96,128")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    k = 10
    print(f"machine: {machine()}; faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads")
    t = time.perf_counter()
    x, q = vectors(args.n, args.queries)
    print(f"{args.n:,} clustered 384-d unit vectors made in {time.perf_counter() - t:.0f} s; {len(q)} queries, k={k}")
    rows_out: list[dict] = []

    # exact: our exact search (fs similar --exact: featurestore.query.index.search over a Flat index), FAISS's
    # own Flat scan, and numpy brute force at 100k (the bar exact search must clear)
    flat = faiss.IndexFlatIP(x.shape[1])
    flat.add(x)
    exact_qps, truth = timed_search(Exact(flat), q, k)
    sub = x[:100_000]
    f100 = faiss.IndexFlatIP(x.shape[1])
    f100.add(sub)
    ours_100k, _ = timed_search(Exact(f100), q, k)
    faiss_100k, _ = timed_search(f100, q, k)
    t = time.perf_counter()
    for _ in range(3):
        s = q @ sub.T
        np.argpartition(-s, k, axis=1)[:, :k]
    numpy_100k = 3 * len(q) / (time.perf_counter() - t)
    print(
        f"exact at 100k: ours (fs similar --exact) {ours_100k:,.0f} q/s, FAISS Flat scan {faiss_100k:,.0f} q/s, "
        f"numpy brute force {numpy_100k:,.0f} q/s (ours / numpy {ours_100k / numpy_100k:.2f})"
    )
    del f100, s

    print(
        f"\n{'index (factory string)':<32} {'knob':>10} {'recall@10':>9} {'q/s':>9} {'x exact':>8} "
        f"{'build s':>8} {'MB':>8}   (build: train + add, wall s; CPU s of both threads)"
    )
    for kind in args.kinds.split(","):
        times: dict[str, float] = {}
        if kind == "flat":
            index, factory, build_s = flat, "Flat", 0.0
        else:
            index, factory, times = build(kind, x)
            build_s = times["build_s"]
            print(
                f"{factory}: train {times['train_s']:.1f} s ({times['train_cpu_s']:.1f} CPU s, "
                f"{times['train_rows']:,} vectors), add {times['add_s']:.1f} s ({times['add_cpu_s']:.1f} CPU s)"
            )
        if kind in ("flat", "ivf", "ivf-flatq", "ivf-hnswq"):  # vectors (+ ids in lists): no 3 GB copy at 2M
            size = index.ntotal * (x.shape[1] * 4 + (8 if kind != "flat" else 0))
        else:
            size = faiss.serialize_index(index).nbytes
        knobs: list[tuple[str, object]] = [("-", None)]
        if kind in ("ivf", "ivf-flatq", "ivf-hnswq", "ivfpq"):
            # as fs similar searches: featurestore.query.index's parameters (an HNSW quantizer's breadth included)
            opened = fi.OpenedIndex(index, index.ntotal, "built", factory)
            knobs = [(f"nprobe {p}", fi._params(opened, None, int(p), None)) for p in args.nprobe.split(",")]
        elif kind == "hnsw":
            knobs = [(f"ef {e}", faiss.SearchParametersHNSW(efSearch=int(e))) for e in args.ef.split(",")]
        for name, params in knobs:
            qps, got = timed_search(index, q, k, params) if kind != "flat" else (exact_qps, truth)
            r = recall(got, truth)
            row = {
                "kind": kind,
                "factory": factory,
                "knob": name,
                "recall_at_10": r,
                "qps": qps,
                "speedup": qps / exact_qps,
                "build_s": build_s,
                **times,
                "bytes": size,
            }
            rows_out.append(row)
            print(
                f"{factory:<32} {name:>10} {r:>9.3f} {qps:>9,.0f} {qps / exact_qps:>7.1f}x {build_s:>8.1f} "
                f"{size / 1e6:>8,.0f}"
            )
        if kind != "flat":
            del index
    ok = [r for r in rows_out if r["recall_at_10"] >= 0.95 and r["speedup"] >= 10]
    best = max(ok, key=lambda r: r["speedup"], default=None)
    print(
        "\ntarget recall@10 >= 0.95 at >= 10x exact q/s: "
        + (
            f"met by {best['factory']} {best['knob']} ({best['recall_at_10']:.3f}, {best['speedup']:.1f}x)"
            if best
            else "not met"
        )
    )
    result = {
        "machine": machine(),
        "n": args.n,
        "queries": len(q),
        "exact_qps": exact_qps,
        "ours_exact_100k_qps": ours_100k,
        "faiss_flat_100k_qps": faiss_100k,
        "numpy_100k_qps": numpy_100k,
        "rows": rows_out,
    }
    print("RESULT " + json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
