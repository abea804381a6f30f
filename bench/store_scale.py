"""The store at 1M and 10M rows, side by side: every command a user waits on (issue 24's table).

    .venv/bin/python bench/store_scale.py --n 1000000 10000000     # the issue's table, one run (about an hour)
    .venv/bin/python bench/store_scale.py --n 200000 1000000       # quicker
    .venv/bin/python bench/store_scale.py --n 1000000 --reuse      # reuse the stores of an earlier run

For each size: a cold `fs ingest` (default `--batch-rows`), `fs index build --kind auto`, recall@10
of the index at its default settings against exact search on held-out queries, cold `fs similar --id`
and `fs info` as new processes, `fs train --classifier sgd`, `fs check --quick` and `fs check`,
`fs serve --workers 2` under 16 clients while `fs ingest` adds rows, `fs gc`, and the disk the store
then takes against its vectors + index. The stores live in /tmp/fs-scale-N (removed after the run
unless --keep; a 10M store takes ~35 GB).

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
from typing import Any

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


def row_text(j: int, prefix: str = "scale") -> str:
    return f"{prefix} tweet {_word(j)} about topic {_word(j % 997)}"


def make_input(n: int, path: Path, start: int = 0, prefix: str = "scale") -> None:
    """``n`` rows, id,label,text; about 0.6% repeat an earlier text (as retweets do)."""
    with path.open("w", encoding="utf-8") as f:
        f.write("id,label,text\n")
        for i in range(start, start + n):
            j = i - 7 if i % 160 == 159 else i
            row_id = str(i) if prefix == "scale" else f"{prefix}{i}"
            f.write(f"{row_id},{i % 2},{row_text(j, prefix)}\n")


class Failed(Exception):
    """An ``fs`` command exited non-zero: its row stays empty, the run goes on."""


def run_measured(args: list[str], env: dict[str, str]) -> tuple[float, float, str, str]:
    """Run ``fs ARGS``; its wall time, its own peak RSS (MiB, from ``os.wait4``), stdout, stderr."""
    t = time.perf_counter()
    p = subprocess.Popen(FS + args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    # communicate() would reap the child; read the pipes, then reap it ourselves to get its rusage
    chunks: dict[str, bytes] = {}

    def pump(name: str, stream: Any) -> None:
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
        raise Failed(f"fs {' '.join(args)} failed ({p.returncode}):\n{err.decode()[-2000:]}")
    return wall, usage.ru_maxrss / 1024, out.decode(), err.decode()


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def recall_at_10(store: Path, n_queries: int = 200) -> tuple[float, float, float]:
    """recall@10 of the space's index at its default settings against exact search, on held-out texts (texts
    no row holds), both in this process; and the two searches' seconds."""
    from featurestore.api import FeatureStore

    fs = FeatureStore(store)
    texts = [row_text(j, "heldout") for j in range(n_queries)]
    t = time.perf_counter()
    approx = fs.similar(texts=texts, k=10, model=MODEL)
    t_approx = time.perf_counter() - t
    t = time.perf_counter()
    exact = fs.similar(texts=texts, k=10, model=MODEL, exact=True)
    t_exact = time.perf_counter() - t
    found = total = 0
    for a, e in zip(approx, exact):
        want = {tuple(h.ids[0]) for h in e.hits}
        found += len(want & {tuple(h.ids[0]) for h in a.hits})
        total += len(want)
    return found / max(total, 1), t_approx, t_exact


def serve_under_ingest(store: Path, env: dict[str, str], n: int, seconds: float, work: Path) -> dict[str, Any]:
    """`fs serve --workers 2`, 16 clients (ids and stored texts of the big dataset) while `fs ingest` adds
    rows of 2,000 to dataset ``live``, one run after another. p50/p99 and errors (bench/serve.py's checks)."""
    from bench.serve import free_port
    from bench.serve import load as load_clients

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    token = "bench-token"
    log = open(work / "server.log", "w")
    server = subprocess.Popen(
        [*FS, "serve", "--port", str(port), "--token", token, "--model", MODEL, "--workers", "2"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=log,
    )
    import httpx

    headers = {"Authorization": f"Bearer {token}"}
    try:
        t = time.perf_counter()
        while True:
            try:
                if httpx.get(url + "/health", headers=headers, timeout=5).json().get("warmed"):
                    break
            except httpx.HTTPError:
                if server.poll() is not None:
                    sys.exit(f"fs serve exited: {(work / 'server.log').read_text()[-2000:]}")
            time.sleep(0.2)
        up = time.perf_counter() - t
        rng = np.random.default_rng(11)
        picks = rng.integers(0, n, 2000)
        base = [(str(i), str(i % 2), row_text(int(i) - 7 if i % 160 == 159 else int(i))) for i in picks]
        stop = threading.Event()
        runs: list[tuple[int, float]] = []

        def ingest_loop() -> None:
            part = 0
            while not stop.is_set():
                src = work / f"live-{part}.csv"
                make_input(2000, src, start=part * 2000, prefix="live")
                t_ = time.perf_counter()
                r = subprocess.run(
                    [*FS, "ingest", str(src), "--dataset", "live", "--model", MODEL, "--wait"],
                    cwd=ROOT,
                    env=env,
                    capture_output=True,
                )
                runs.append((r.returncode, time.perf_counter() - t_))
                part += 1

        writer = threading.Thread(target=ingest_loop)
        writer.start()
        tally, took = load_clients(url, headers, seconds, 16, 10, base, [], None, 3, "scale")
        stop.set()
        writer.join()
        lat = np.array(tally.latencies) * 1000 if tally.latencies else np.zeros(1)
        return {
            "up_s": up,
            "requests": len(tally.latencies),
            "req_per_s": len(tally.latencies) / took,
            "p50_ms": float(np.percentile(lat, 50)),
            "p99_ms": float(np.percentile(lat, 99)),
            "errors": len(tally.errors) + len(tally.torn) + len(tally.stale),
            "ingests": len(runs),
            "ingest_failures": sum(1 for rc, _ in runs if rc),
            "ingest_s_median": statistics.median([s for _, s in runs]) if runs else float("nan"),
        }
    finally:
        server.terminate()
        server.wait(30)
        log.close()


def measure(n: int, args: argparse.Namespace) -> dict[str, Any]:
    """Every row of the table at ``n`` rows; a command that fails leaves its row empty, the others still run."""
    work = Path(f"/tmp/fs-scale-{n}")
    store = work / "store"
    src = work / "tweets.csv"
    env = {
        **os.environ,
        "FS_STORE": str(store),
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"),
    }
    res: dict[str, Any] = {"n": n}

    def say(line: str) -> None:
        print(f"[{n:,}] {line}", flush=True)

    def ingest() -> None:
        work.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(store, ignore_errors=True)
        if not src.exists() or sum(1 for _ in src.open("rb")) != n + 1:
            make_input(n, src)
        wall, rss, _, _ = run_measured(["ingest", str(src), "--dataset", "scale", "--model", MODEL], env)
        res.update(ingest_s=wall, ingest_rows_per_s=n / wall, ingest_rss_mib=rss, input_mib=src.stat().st_size / 2**20)
        say(
            f"cold fs ingest: {wall:.1f} s = {n / wall:,.0f} rows/s, peak RSS {rss:,.0f} MiB "
            f"({res['input_mib']:.0f} MiB file)"
        )
        res["segment_files_after_ingest"] = len(os.listdir(store / "segments"))
        res["disk_after_ingest_bytes"] = dir_bytes(store)
        files, size = res["segment_files_after_ingest"], res["disk_after_ingest_bytes"] / 1e9
        say(f"after the ingest: {files:,} segment files, {size:.2f} GB")

    def build() -> None:
        wall, rss, out, _ = run_measured(["index", "build", "--kind", "auto", "--model", MODEL], env)
        res.update(index_build_s=wall, index_build_rss_mib=rss)
        last = out.strip().splitlines()[-1] if out.strip() else ""
        say(f"fs index build --kind auto: {wall:.1f} s, peak RSS {rss:,.0f} MiB ({last})")

    def recall() -> None:
        # in a child of its own: a forked child inherits this process's peak RSS, so this one stays small
        out = subprocess.run(
            [sys.executable, __file__, "--recall-of", str(store)], env=env, capture_output=True, text=True, check=True
        ).stdout
        rec, t_a, t_e = json.loads(out.strip().splitlines()[-1])
        res.update(recall_at_10=rec)
        say(
            f"recall@10 at the default settings vs exact, 200 held-out queries: {rec:.3f} "
            f"({t_a:.1f} s; exact {t_e:.1f} s)"
        )

    def cold() -> None:
        q_ids = [str(i) for i in np.random.default_rng(7).integers(0, n, 5)]
        colds = [run_measured(["similar", "--id", q, "--k", "10", "--model", MODEL, "--json"], env) for q in q_ids]
        res.update(
            similar_cold_s=statistics.median(c[0] for c in colds),
            similar_cold_rss_mib=max(c[1] for c in colds),
            similar_index=json.loads(colds[-1][2])["info"].get("index_kind"),
        )
        say(
            f"cold fs similar --id: median {res['similar_cold_s']:.2f} s (runs "
            f"{', '.join(f'{c[0]:.2f}' for c in colds)}), peak RSS {res['similar_cold_rss_mib']:,.0f} MiB, "
            f"index {res['similar_index']}"
        )
        wall, rss, _, _ = run_measured(["similar", row_text(3, "heldout"), "--k", "10", "--model", MODEL], env)
        res.update(similar_text_cold_s=wall)
        say(f"cold fs similar TEXT: {wall:.2f} s, peak RSS {rss:,.0f} MiB")

    def info() -> None:
        wall, rss, _, _ = run_measured(["info"], env)
        res.update(info_s=wall, info_rss_mib=rss)
        say(f"cold fs info: {wall:.2f} s, peak RSS {rss:,.0f} MiB")

    def train() -> None:
        wall, rss, _, _ = run_measured(
            ["train", "--dataset", "scale", "--model", MODEL, "--classifier", "sgd", "--no-plots"], env
        )
        res.update(train_sgd_s=wall, train_sgd_rss_mib=rss)
        say(f"fs train --classifier sgd: {wall:.1f} s, peak RSS {rss:,.0f} MiB")

    def check() -> None:
        wall, rss, out, _ = run_measured(["check", "--quick"], env)
        res.update(check_quick_s=wall)
        say(f"fs check --quick: {wall:.2f} s")
        wall, rss, out, _ = run_measured(["check"], env)
        res.update(check_s=wall, check_rss_mib=rss)
        say(f"fs check: {wall:.1f} s, peak RSS {rss:,.0f} MiB")

    def serve() -> None:
        served = serve_under_ingest(store, env, n, args.serve_seconds, work)
        res.update({f"serve_{k}": v for k, v in served.items()})
        say(
            f"fs serve --workers 2, 16 clients, {args.serve_seconds:.0f} s under fs ingest: "
            f"{served['requests']:,} requests, p50 {served['p50_ms']:.1f} ms, p99 {served['p99_ms']:.1f} ms, "
            f"{served['errors']} errors; {served['ingests']} ingests of 2,000 rows "
            f"({served['ingest_failures']} failed, median {served['ingest_s_median']:.1f} s); "
            f"up and warm in {served['up_s']:.1f} s"
        )

    def gc() -> None:
        wall, rss, _, _ = run_measured(["gc"], env)
        from featurestore.api import FeatureStore
        from featurestore.query import index as faiss_index

        fs = FeatureStore(store)
        space = fs.space(MODEL)
        index_bytes = sum(os.path.getsize(p) for p in faiss_index.index_paths(fs.store, space) if os.path.exists(p))
        live = space.rows * space.dim * 4 + index_bytes
        res.update(disk_after_gc_bytes=dir_bytes(store), vectors_plus_index_bytes=live)
        res["disk_ratio"] = res["disk_after_gc_bytes"] / live
        say(
            f"fs gc {wall:.1f} s; disk {res['disk_after_gc_bytes'] / 1e9:.2f} GB = {res['disk_ratio']:.2f}x "
            f"(vectors {space.rows * space.dim * 4 / 1e9:.2f} GB + index {index_bytes / 1e9:.2f} GB)"
        )

    steps = [recall, cold, info, train, check, serve, gc]
    if not (args.reuse and store.is_dir()):
        steps = [ingest, build, *steps]
    for step in steps:
        try:
            step()
        except Failed as exc:
            say(f"{step.__name__}: {exc}")
    return res


ROWS: list[tuple[str, str, str, str]] = [
    # (label, result key, format, target)
    ("store-overhead ingest rate (rows/s)", "ingest_rows_per_s", "{:,.0f}", ">= 0.8x the 1M rate"),
    ("  ingest peak RSS (MiB)", "ingest_rss_mib", "{:,.0f}", "bounded by the batch"),
    ("cold `fs similar --id`, new process (s, median of 5)", "similar_cold_s", "{:.2f}", "<= 1.0 s"),
    ("  its peak RSS (MiB)", "similar_cold_rss_mib", "{:,.0f}", "<= 1,536"),
    ("cold `fs similar TEXT` (s)", "similar_text_cold_s", "{:.2f}", ""),
    ("cold `fs info` (s)", "info_s", "{:.2f}", ""),
    ("`fs index build --kind auto` (s)", "index_build_s", "{:,.0f}", "<= 900 s"),
    ("  recall@10 at default settings", "recall_at_10", "{:.3f}", ">= 0.95"),
    ("`fs train --classifier sgd` (s)", "train_sgd_s", "{:,.0f}", "<= 600 s"),
    ("  its peak RSS (MiB)", "train_sgd_rss_mib", "{:,.0f}", "<= 2,048"),
    ("`fs check` full (s)", "check_s", "{:,.0f}", "<= 600 s"),
    ("`fs check --quick` (s)", "check_quick_s", "{:.2f}", "<= 5 s"),
    ("`fs serve --workers 2` p99 under ingest (ms)", "serve_p99_ms", "{:.0f}", "<= 150 ms"),
    ("  errors (incl. torn/stale answers)", "serve_errors", "{:d}", "0"),
    ("disk after gc / (vectors + index)", "disk_ratio", "{:.2f}", "<= 1.15"),
]


def table(results: list[dict[str, Any]]) -> str:
    sizes = [f"{r['n']:,}" for r in results]
    lines = [
        "| operation | target | " + " | ".join(sizes) + (" | ratio |" if len(results) == 2 else " |"),
        "|---|---|" + "---|" * len(results) + ("---|" if len(results) == 2 else ""),
    ]
    for label, key, fmt, target in ROWS:
        cells = [fmt.format(r[key]) if key in r else "-" for r in results]
        ratio = ""
        if len(results) == 2 and key in results[0] and key in results[1] and results[0][key]:
            ratio = f" {results[1][key] / results[0][key]:.2f}x |"
        elif len(results) == 2:
            ratio = " |"
        lines.append(f"| {label} | {target} | " + " | ".join(cells) + " |" + ratio)
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--reuse", action="store_true", help="reuse the stores of an earlier run (no ingest, no build)")
    ap.add_argument("--serve-seconds", type=float, default=30)
    ap.add_argument("--keep", action="store_true", help="keep /tmp/fs-scale-N after the run")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--recall-of", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.recall_of:
        print(json.dumps(recall_at_10(args.recall_of)))
        return
    print(f"machine: {machine()}", flush=True)
    results = []
    for n in args.n:
        results.append(measure(n, args))
        if not args.keep:
            shutil.rmtree(f"/tmp/fs-scale-{n}/store", ignore_errors=True)
    print(table(results))
    print("RESULT " + json.dumps({"machine": machine(), "results": results}, default=str))
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "results": results}, indent=1, default=str))


if __name__ == "__main__":
    main()
