"""Load bench of `fs serve`: concurrent HTTP clients against a real server while `fs ingest` writes.

    .venv/bin/python bench/serve.py                          # synthetic 100k x 384 store, 16 clients,
                                                             # 10 s quiet + 30 s under ingest
    .venv/bin/python bench/serve.py --n 20000 --seconds 10   # quicker
    .venv/bin/python bench/serve.py --n 1000000              # the issue's size (building it takes long here)
    .venv/bin/python bench/serve.py --store DIR --model M --clean R --dataset D   # an existing store (copied first)

The synthetic store holds real tweets (the bundled train CSV) made distinct with a row-number suffix,
embedded by ``FastEmbedder`` (``py:bench.serve:FastEmbedder``: seeded vectors from a hash of the
text, 384-d, no model), so only the store's and the server's own costs are measured. The server is
`fs serve` in its own process; the clients are threads of this one (one keep-alive ``http.client``
connection each). Phase 1 is warm and quiet; in phase 2 `fs ingest` subprocesses keep adding rows to dataset
``live`` (one after another, ``--ingest-rows`` each, committed every ``--batch-rows``).

Every answer is checked:
- a stored text must come back as its own top hit with score ~1 (else: torn);
- a query by id must come back as that row, score ~1 (else: torn);
- a text being ingested, once the generation that committed it is published and the answer says it
  was made from that generation or a later one, must be found (else: stale); a client never sees the
  generation go backwards (else: stale). A monitor thread reads each new manifest to learn which
  generation committed which row. After the load, every ingested row is queried once more.
"""

from __future__ import annotations

import argparse
import csv
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.ingest import machine  # noqa: E402
from tests.fakes import CountingEmbedder, fake_vector  # noqa: E402

TRAIN_CSV = ROOT / "data" / "av-twitter-sentiment" / "train_2kmZucJ.csv"
MODEL = "py:bench.serve:FastEmbedder"
FS = [sys.executable, "-m", "cli.main"]


class FastEmbedder(CountingEmbedder):
    """384-d seeded vectors from a hash of the text, without the counting fake's log of every input."""

    name = "bench-fast"

    def __init__(self) -> None:
        super().__init__(dim=384, model="bench-fast-384")

    def embed_batch(self, texts: list[str]) -> np.ndarray:
        return np.stack([fake_vector(t, self._dim) for t in texts])


def load_average() -> str:
    """Other work on the machine changes every figure: print it beside them."""
    try:
        return "load average " + " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "load average unknown"


def tweets() -> list[dict[str, str]]:
    with open(TRAIN_CSV, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def synthetic_rows(n: int, prefix: str, start: int = 0) -> list[tuple[str, str, str]]:
    """(id, label, text): real tweets made distinct by a suffix, so every row has its own vector."""
    base = tweets()
    return [
        (f"{prefix}{i}", base[i % len(base)]["label"], f"{base[i % len(base)]['tweet']} [{prefix}{i}]")
        for i in range(start, start + n)
    ]


def write_rows(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "label", "tweet"])
        w.writerows(rows)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    torn: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)
    live_found: int = 0
    live_pending: int = 0  # asked before the row was published: not found, as it should be

    def line(self, name: str, seconds: float) -> str:
        lat = np.array(self.latencies) * 1000 if self.latencies else np.zeros(1)
        return (
            f"{name:<18} {len(self.latencies):>7,} requests  {len(self.latencies) / seconds:>7.1f} req/s  "
            f"p50 {np.percentile(lat, 50):7.1f} ms  p99 {np.percentile(lat, 99):7.1f} ms  "
            f"max {lat.max():7.1f} ms  errors {len(self.errors)}  torn {len(self.torn)}  stale {len(self.stale)}"
        )


class Committed:
    """Which generation first published each live row, learnt by reading each new manifest."""

    def __init__(self, store: Path, dataset: str) -> None:
        from featurestore.storage.store import Store

        self.store = Store(store)
        self.dataset = dataset
        self.first_gen: dict[str, int] = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        seen = -1
        while not self.stop.is_set():
            try:
                gens = self.store.manifest_generations()
                if gens and gens[-1] != seen:
                    snap = self.store.snapshot()
                    ds = snap.datasets.get(self.dataset)
                    if ds is not None:
                        ids = self.store.dataset_ids(ds).tolist()
                        with self.lock:
                            for i in ids:
                                self.first_gen.setdefault(i, snap.generation)
                    seen = snap.generation
            except Exception:  # a manifest pruned between listing and reading: look again
                pass
            time.sleep(0.02)

    def generation_of(self, id: str) -> int | None:
        with self.lock:
            return self.first_gen.get(id)


def is_row(hit: dict, row: tuple[str, str, str], dataset: str) -> bool:
    """The hit is the row's own vector: score ~1 and the row among the ids holding that text. (Texts that
    clean to the same text share a key and a vector: the hit is named by the first of them, whose raw
    text may differ; tweet-v1 turns '[live12]' and '[live13]' both into 'live'.)"""
    return hit.get("score", 0) > 0.9999 and {"dataset": dataset, "id": row[0]} in hit.get("ids", [])


def load(
    url: str,
    headers: dict[str, str],
    seconds: float,
    clients: int,
    k: int,
    base: list[tuple[str, str, str]],
    live: list[tuple[str, str, str]],
    committed: Committed | None,
    seed: int,
    dataset: str,
) -> tuple[Tally, float]:
    tally = Tally()
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds
    where = urllib.parse.urlsplit(url)

    def get(conn: http.client.HTTPConnection, params: dict) -> tuple[int, bytes]:
        conn.request("GET", "/similar?" + urllib.parse.urlencode(params), headers=headers)
        r = conn.getresponse()
        return r.status, r.read()

    def client(n: int) -> None:
        rng = np.random.default_rng(seed + n)
        last_gen = -1
        mine = Tally()
        # The standard library's keep-alive connection: the clients share the server's 2 cores, and httpx
        # cost 0.9-1.1 ms of CPU a request here against 0.3 ms for http.client (measured side by side).
        conn = http.client.HTTPConnection(where.hostname, where.port, timeout=60)
        try:
            while time.perf_counter() < deadline:
                roll = rng.random()
                if live and committed is not None and roll < 0.2:
                    kind, row = "live", live[int(rng.integers(len(live)))]
                elif roll < 0.3:
                    kind, row = "id", base[int(rng.integers(len(base)))]
                else:
                    kind, row = "text", base[int(rng.integers(len(base)))]
                params = {"id": row[0], "dataset": dataset, "k": k} if kind == "id" else {"q": row[2], "k": k}
                t = time.perf_counter()
                try:
                    status, raw = get(conn, params)
                except (OSError, http.client.HTTPException) as exc:
                    mine.errors.append(f"{type(exc).__name__}: {exc}")
                    conn.close()  # reconnects on the next request
                    continue
                mine.latencies.append(time.perf_counter() - t)
                if status != 200:
                    mine.errors.append(f"{status} {raw[:200].decode(errors='replace')}")
                    continue
                body = json.loads(raw)
                gen = body["generation"]
                if gen < last_gen:
                    mine.stale.append(f"generation went back from {last_gen} to {gen}")
                last_gen = max(last_gen, gen)
                top = body["hits"][0] if body["hits"] else None
                found = top is not None and is_row(top, row, dataset if kind != "live" else "live")
                if kind != "live":
                    if not found:
                        mine.torn.append(f"{kind} {row[0]}: top hit {top and (top['id'], top['score'])}")
                elif found:
                    mine.live_found += 1
                else:
                    g = committed.generation_of(row[0]) if committed else None
                    if g is not None and gen >= g:
                        mine.stale.append(f"live {row[0]} committed in generation {g}, answer from {gen} misses it")
                    else:
                        mine.live_pending += 1
        finally:
            conn.close()
        with lock:
            for name in ("latencies", "errors", "torn", "stale"):
                getattr(tally, name).extend(getattr(mine, name))
            tally.live_found += mine.live_found
            tally.live_pending += mine.live_pending

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return tally, time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--store",
        type=Path,
        help="an existing store to serve (copied to a temp dir first; "
        "give --model/--clean/--dataset for it) [default: build a synthetic one]",
    )
    ap.add_argument("--n", type=int, default=100_000, help="rows of the synthetic store")
    ap.add_argument("--model", default=MODEL)
    ap.add_argument("--clean", default="raw-v1")
    ap.add_argument("--dataset", default="bench", help="dataset of --store whose rows are queried")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=30, help="phase 2: load while fs ingest writes")
    ap.add_argument("--quiet-seconds", type=float, default=10, help="phase 1: warm load, no writes")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--ingest-rows", type=int, default=2000, help="rows per fs ingest run in phase 2")
    ap.add_argument("--batch-rows", type=int, default=500, help="rows per committed batch of those runs")
    ap.add_argument(
        "--ingest-nice",
        type=int,
        default=0,
        help="run those fs ingest processes at this niceness "
        "(as a batch job beside a latency-sensitive server would be; 0 = the server's own priority)",
    )
    ap.add_argument(
        "--verify",
        type=int,
        default=256,
        help="ingested rows queried again after the load (spread evenly, the last one included; 0 = all)",
    )
    ap.add_argument("--token", default="bench-token")
    ap.add_argument("--workers", type=int, default=1, help="fs serve --workers: server processes sharing the port")
    ap.add_argument("--threads", type=int, help="fs serve --threads: requests answered at once by a server process")
    ap.add_argument("--search-threads", type=int, help="fs serve --search-threads: threads inside one search")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (store, server log)")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="fs-serve-bench-"))
    store = tmp / "store"
    print(f"machine: {machine()}; {load_average()}")
    proc = None
    try:
        from featurestore.api import FeatureStore

        t = time.perf_counter()
        if args.store:
            shutil.copytree(args.store, store)
            fs = FeatureStore(store)
            rows = fs.rows(args.dataset)
            base = list(zip(rows["ids"].tolist(), rows["labels"].tolist(), rows["texts"].tolist()))
            print(
                f"store: copy of {args.store}, dataset {args.dataset!r} {len(base):,} rows  "
                f"({time.perf_counter() - t:.1f} s)"
            )
        else:
            base = synthetic_rows(args.n, "b")
            src = write_rows(tmp / "base.csv", base)
            s = FeatureStore(store).ingest(
                str(src), "bench", args.model, args.clean, embedder=FastEmbedder(), commit_rows=50_000
            )
            print(
                f"store: synthetic, {args.n:,} rows x 384-d ({s.embedded:,} vectors) built in "
                f"{time.perf_counter() - t:.1f} s"
            )
            args.dataset = "bench"
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log = open(tmp / "server.log", "w")
        proc = subprocess.Popen(
            [
                *FS,
                "serve",
                "--store",
                str(store),
                "--port",
                str(port),
                "--token",
                args.token,
                "--model",
                args.model,
                "--clean",
                args.clean,
                "--workers",
                str(args.workers),
                *(["--threads", str(args.threads)] if args.threads else []),
                *(["--search-threads", str(args.search_threads)] if args.search_threads else []),
            ],
            cwd=ROOT,
            stdout=log,
            stderr=log,
        )
        headers = {"Authorization": f"Bearer {args.token}"}
        import httpx

        t = time.perf_counter()
        for _ in range(600):
            try:
                httpx.get(url + "/health", headers=headers, timeout=5).raise_for_status()
                break
            except httpx.HTTPError:
                if proc.poll() is not None:
                    raise SystemExit(f"fs serve exited: {(tmp / 'server.log').read_text()}") from None
                time.sleep(0.1)
        t_up = time.perf_counter() - t
        t = time.perf_counter()
        r = httpx.get(url + "/similar", params={"q": base[0][2], "k": args.k}, headers=headers, timeout=600)
        r.raise_for_status()
        t_first = time.perf_counter() - t
        # The server warms its caches in the background from the start: the phases are warm. Each request is a
        # new connection, which the kernel hands to any worker: enough warm answers in a row mean every worker.
        warm_in_a_row = 0
        while warm_in_a_row < 8 * args.workers:
            warm = httpx.get(url + "/health", headers=headers, timeout=600).json()["warmed"]
            warm_in_a_row = warm_in_a_row + 1 if warm else 0
            time.sleep(0 if warm else 0.1)
        print(
            f"server: up in {t_up:.1f} s; first query {t_first:.2f} s (index {r.json()['index']}); "
            f"caches warm {time.perf_counter() - t + t_up:.1f} s after start; {args.workers} worker process(es)"
        )
        print(f"load: {args.clients} clients, k={args.k}; 70% stored texts, 10% ids, 20% rows being ingested (phase 2)")

        quiet, quiet_s = load(url, headers, args.quiet_seconds, args.clients, args.k, base, [], None, 1, args.dataset)
        print(quiet.line("phase 1 (quiet)", quiet_s) + f"  ({load_average()})")

        committed = Committed(store, "live")
        committed.thread.start()
        stop_ingest = threading.Event()
        ingested: list[tuple[str, str, str]] = []
        ingest_log: list[str] = []

        def ingest_loop() -> None:
            part = 0
            while not stop_ingest.is_set():
                rows_ = synthetic_rows(args.ingest_rows, "live", part * args.ingest_rows)
                src = write_rows(tmp / f"live-{part}.csv", rows_)
                t_ = time.perf_counter()
                nice = ["nice", "-n", str(args.ingest_nice)] if args.ingest_nice else []
                r_ = subprocess.run(
                    [
                        *nice,
                        *FS,
                        "ingest",
                        str(src),
                        "--dataset",
                        "live",
                        "--store",
                        str(store),
                        "--model",
                        args.model,
                        "--clean",
                        args.clean,
                        "--batch-rows",
                        str(args.batch_rows),
                        "--wait",
                    ],
                    cwd=ROOT,
                    capture_output=True,
                    text=True,
                )
                ingest_log.append(
                    f"fs ingest {args.ingest_rows:,} rows: exit {r_.returncode}, "
                    f"{time.perf_counter() - t_:.1f} s" + (f" {r_.stderr.strip()[-300:]}" if r_.returncode else "")
                )
                if r_.returncode == 0:
                    ingested.extend(rows_)
                part += 1

        # the clients query rows of the ingest files, before and after they are committed
        live_rows = synthetic_rows(args.ingest_rows * 40, "live")
        gen0 = httpx.get(url + "/health", headers=headers, timeout=600).json()["generation"]
        writer = threading.Thread(target=ingest_loop)
        writer.start()
        busy, busy_s = load(
            url, headers, args.seconds, args.clients, args.k, base, live_rows, committed, 2, args.dataset
        )
        stop_ingest.set()
        writer.join()
        time.sleep(0.3)
        committed.stop.set()
        gen1 = httpx.get(url + "/health", headers=headers, timeout=600).json()["generation"]
        print(busy.line("phase 2 (ingest)", busy_s) + f"  ({load_average()})")
        print(
            f"  during phase 2: {len(ingest_log)} fs ingest run(s)"
            + (f" at niceness {args.ingest_nice}" if args.ingest_nice else "")
            + f", generations {gen0} -> {gen1}; live rows "
            f"found {busy.live_found:,}, asked before their commit was published {busy.live_pending:,}"
        )
        for line in ingest_log:
            print(f"  {line}")

        # every row the ingests committed must now be answered
        missing = []
        sample = ingested
        if args.verify and len(ingested) > args.verify:
            sample = [ingested[int(i)] for i in np.linspace(0, len(ingested) - 1, args.verify).round()]
        with httpx.Client(base_url=url, headers=headers, timeout=600) as h:
            for start in range(0, len(sample), 256):
                chunk = sample[start : start + 256]
                res = h.post("/similar", json={"k": 1, "queries": [{"q": row[2]} for row in chunk]}).json()["results"]
                for row, one in zip(chunk, res):
                    hits = one.get("hits") or [{}]
                    if not is_row(hits[0], row, "live"):
                        missing.append(row[0])
        print(
            f"after the load: {len(sample):,} of the {len(ingested):,} ingested rows queried again (POST /similar, "
            f"batches of 256): "
            f"{len(missing)} missing"
        )
        total_errors = len(quiet.errors) + len(busy.errors)
        total_bad = len(quiet.torn) + len(busy.torn) + len(quiet.stale) + len(busy.stale) + len(missing)
        for what in (quiet.errors + busy.errors)[:5] + (quiet.torn + busy.torn + busy.stale)[:5]:
            print(f"  example: {what}")
        print(f"result: {total_errors} errors, {total_bad} stale-or-torn answers")
        return 1 if total_errors or total_bad else 0
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(20)
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
