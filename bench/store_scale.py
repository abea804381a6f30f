"""The store at a million vectors: ingest, cold and warm `fs similar`, disk; the table of issue 12, re-measured.

    .venv/bin/python bench/store_scale.py                      # 1,000,000 rows, store kept in /tmp/fs-scale-1000000
    .venv/bin/python bench/store_scale.py --n 200000           # smaller, quicker
    .venv/bin/python bench/store_scale.py --reuse              # reuse the store built by an earlier run
    .venv/bin/python bench/store_scale.py --kind ivf           # also measure with the approximate index

Vectors come from ``ClusterEmbedder`` (``--model py:bench.store_scale:ClusterEmbedder``), a test
embedder that maps each text to a deterministic point of a clustered 384-d mixture at about a
million texts a second, so that only the store's own costs are measured. Every ``fs`` call is a new
process; wall time and peak RSS are that child's own (``os.wait4``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from featurestore.embedders.base import Embedder, Fingerprint  # noqa: E402

MODEL = "py:bench.store_scale:ClusterEmbedder"
FS = [sys.executable, "-m", "cli.main"]


class ClusterEmbedder(Embedder):
    """text -> a seeded point of a mixture of 4,096 gaussian clusters of varying spread, 384-d, unit norm.

    Deterministic per text (blake2b of the text picks the cluster and two rows of a fixed noise
    table), independent of batching, and vectorised: the store's costs dominate, not the model's."""

    name = "cluster"
    max_batch_tokens = 1 << 20
    max_batch_size = 1 << 16
    DIM = 384
    CLUSTERS = 4096
    TABLE = 8192

    def __init__(self) -> None:
        rng = np.random.default_rng(20240601)
        self._centroids = rng.standard_normal((self.CLUSTERS, self.DIM)).astype(np.float32)
        self._centroids /= np.linalg.norm(self._centroids, axis=1, keepdims=True)
        self._spread = rng.uniform(0.15, 0.6, self.CLUSTERS).astype(np.float32)  # tight and loose clusters
        self._noise = (rng.standard_normal((self.TABLE, self.DIM)) / np.sqrt(self.DIM)).astype(np.float32)

    @property
    def dim(self) -> int:
        return self.DIM

    @property
    def fingerprint(self) -> Fingerprint:
        return Fingerprint(
            model="bench-cluster-v1",
            weights_sha256=hashlib.sha256(b"bench-cluster-v1").hexdigest(),
            output="unit",
            pooling="none",
        )

    def count_tokens(self, text: str) -> int:
        return 1

    def embed_batch(self, texts: list[str]) -> np.ndarray:
        h = np.frombuffer(
            b"".join(hashlib.blake2b(t.encode("utf-8", "surrogatepass"), digest_size=8).digest() for t in texts),
            dtype=np.uint64,
        )
        c = (h % self.CLUSTERS).astype(np.int64)
        a = ((h >> np.uint64(16)) % self.TABLE).astype(np.int64)
        b = ((h >> np.uint64(32)) % self.TABLE).astype(np.int64)
        v = self._centroids[c] + self._spread[c, None] * (self._noise[a] + 0.7 * self._noise[b])
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        return v


def machine() -> str:
    cpu = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{cpu}, {os.cpu_count()} cores (shared), {mem:.0f} GiB RAM, Python {platform.python_version()}, no GPU"


def _word(j: int) -> str:
    """A distinct lowercase word per integer (numbers would all clean to the same token under tweet-v1)."""
    out = ""
    while True:
        j, r = divmod(j, 26)
        out += chr(97 + r)
        if not j:
            return out


def make_input(n: int, path: Path) -> None:
    """``n`` rows, id,label,text; about 0.6% repeat an earlier text (as retweets do)."""
    with path.open("w", encoding="utf-8") as f:
        f.write("id,label,text\n")
        for i in range(n):
            j = i - 7 if i % 160 == 159 else i
            f.write(f"{i},{i % 2},scale tweet {_word(j)} about topic {_word(j % 997)}\n")


def run_measured(args: list[str], env: dict[str, str]) -> tuple[float, float, str, str]:
    """Like ``run`` but with the child's own peak RSS from ``os.wait4`` (not the max over all children)."""
    t = time.perf_counter()
    p = subprocess.Popen(FS + args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    # communicate() would reap the child; read the pipes, then reap it ourselves to get its rusage
    chunks: dict[str, bytes] = {}

    def pump(name: str, stream) -> None:  # noqa: ANN001
        chunks[name] = stream.read()

    threads = [
        threading.Thread(target=pump, args=("out", p.stdout)),
        threading.Thread(target=pump, args=("err", p.stderr)),
    ]
    for th in threads:
        th.start()
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t
    for th in threads:
        th.join()
    p.returncode = os.waitstatus_to_exitcode(status)
    out, err = chunks.get("out", b""), chunks.get("err", b"")
    if p.returncode:
        sys.exit(f"fs {' '.join(args)} failed ({p.returncode}):\n{err.decode()[-2000:]}")
    return wall, usage.ru_maxrss / 1024, out.decode(), err.decode()


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dir", type=Path, help="work directory [default: /tmp/fs-scale-N]")
    ap.add_argument("--reuse", action="store_true", help="reuse the store of an earlier run (skip the ingests)")
    ap.add_argument("--kind", default="flat", help="index kind to measure besides exact: flat, ivf, hnsw, ivfpq")
    ap.add_argument("--queries", type=int, default=30)
    ap.add_argument("--cold", type=int, default=3, help="cold `fs similar` processes to time")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    work = args.dir or Path(f"/tmp/fs-scale-{args.n}")
    store = work / "store"
    src = work / "tweets.csv"
    env = {
        **os.environ,
        "FS_STORE": str(store),
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"),
    }
    res: dict[str, object] = {"machine": machine(), "n": args.n}
    print(f"machine: {machine()}")
    ingest = ["ingest", str(src), "--dataset", "scale", "--model", MODEL, "--batch-rows", "65536"]
    if not (args.reuse and store.is_dir()):
        work.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(store, ignore_errors=True)
        make_input(args.n, src)
        wall, rss, out, _ = run_measured(ingest, env)
        res.update(cold_ingest_s=wall, cold_ingest_rss_mib=rss)
        print(f"cold ingest: {wall:.1f} s, peak RSS {rss:,.0f} MiB")
        wall, rss, out, _ = run_measured(ingest, env)
        res.update(warm_ingest_s=wall, warm_ingest_rss_mib=rss)
        print(f"warm re-ingest: {wall:.1f} s, peak RSS {rss:,.0f} MiB")
    res["store_bytes"] = dir_bytes(store / "segments")
    print(f"disk (segments) after the ingests: {res['store_bytes'] / 1e9:.2f} GB")

    from featurestore.api import FeatureStore
    from featurestore.query import index as faiss_index

    fs = FeatureStore(store)
    q_ids = [str(i) for i in np.random.default_rng(7).integers(0, args.n, args.queries + args.cold + 1)]
    kinds = ["flat"] + ([args.kind] if args.kind != "flat" else [])
    for kind in kinds:
        wall, rss, out, _ = run_measured(["index", "build", "--kind", kind, "--model", MODEL], env)
        space = fs.space(MODEL)
        size = os.path.getsize(faiss_index.index_paths(fs.store, space)[0])
        print(
            f"[{kind}] fs index build: {wall:.1f} s, peak RSS {rss:,.0f} MiB, index file {size / 1e6:,.0f} MB "
            f"({out.strip().splitlines()[-1] if out.strip() else ''})"
        )
        res[f"{kind}_build_s"], res[f"{kind}_build_rss_mib"], res[f"{kind}_index_bytes"] = wall, rss, size
        colds = []
        for qid in q_ids[: args.cold]:
            wall, rss, out, err = run_measured(["similar", "--id", qid, "--k", "10", "--model", MODEL, "--json"], env)
            info = json.loads(out)["info"]
            colds.append((wall, rss, info))
        walls = [c[0] for c in colds]
        rsses = [c[1] for c in colds]
        res[f"{kind}_cold_s"], res[f"{kind}_cold_rss_mib"] = statistics.median(walls), max(rsses)
        print(
            f"[{kind}] fs similar --id, new process: median {statistics.median(walls):.2f} s (runs "
            f"{', '.join(f'{w:.2f}' for w in walls)}), peak RSS {max(rsses):,.0f} MiB = "
            f"{max(rsses) * 2**20 / size:.2f}x the index file; index {colds[-1][2]['index']}"
        )
        # the python process with only imports, for reference
        lat = []
        fs = FeatureStore(store)
        fs.similar(id=q_ids[0], k=10, model=MODEL)
        for qid in q_ids[args.cold :]:
            t = time.perf_counter()
            fs.similar(id=qid, k=10, model=MODEL)
            lat.append(time.perf_counter() - t)
        lat.sort()
        p50, p95 = statistics.median(lat) * 1e3, lat[max(0, int(0.95 * len(lat)) - 1)] * 1e3
        res[f"{kind}_warm_p50_ms"], res[f"{kind}_warm_p95_ms"] = p50, p95
        print(f"[{kind}] FeatureStore.similar warm, {len(lat)} queries by id: p50 {p50:.1f} ms, p95 {p95:.1f} ms")
    res["disk_bytes"] = dir_bytes(store)
    print(f"disk, whole store (segments, manifests, index): {res['disk_bytes'] / 1e9:.2f} GB")
    print("RESULT " + json.dumps(res, default=str))
    if args.json:
        args.json.write_text(json.dumps(res, indent=1, default=str))


if __name__ == "__main__":
    main()
