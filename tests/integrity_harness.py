"""The crash harness shared by ``tests/test_crash.py`` and ``bench/soak.py``.

A real ``fs ingest`` subprocess (slow, logging fake embedder) is killed with SIGKILL
at seeded random moments. After every kill the harness checks, from outside, what a
user relies on: the store opens, ``check`` passes, every row seen committed before the
kill is still there, and the next ingest embeds nothing that was already committed.
When an ingest runs to completion the store is compared with a clean single-run store.
"""
from __future__ import annotations

import csv
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from tests.integrity_fakes import read_log

ROOT = Path(__file__).resolve().parents[1]
TRAIN_CSV = ROOT / "data" / "av-twitter-sentiment" / "train_2kmZucJ.csv"
MODEL = "py:tests.integrity_fakes:SlowHashEmbedder"
RECIPE = "raw-v1"  # the text as given: a row's text is its cleaned text, so logs compare directly


def write_slice(path: Path, n: int, start: int = 0) -> Path:
    """Rows ``start .. start+n`` of the real train CSV (id, label, tweet)."""
    with open(TRAIN_CSV, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(rows[0])
        w.writerows(rows[1 + start : 1 + start + n])
    return path


def fs_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "cli.main", *args]


def fs_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FS_FAKE_", "FS_STORE"))}
    env.update(extra)
    return env


def run_fs(*args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
    """``fs ARGS`` as a subprocess from the repository root (so ``py:tests...`` models load)."""
    return subprocess.run(fs_cmd(*args), cwd=ROOT, env=fs_env(**env), capture_output=True, text=True, timeout=timeout)


@dataclass
class Ran:
    """One ``fs`` command's outcome, the same shape in a subprocess and in-process."""

    returncode: int
    stdout: str
    stderr: str
    exception: BaseException | None = None  # escaped the command (in-process only): a traceback in a real run
    traceback: str = ""


def run_cli(*args: str, input: str | None = None, **env: str) -> Ran:
    """``fs ARGS`` in this process through CliRunner: what ``run_fs`` does, without a Python start-up.

    The environment is ``run_fs``'s (no ``FS_FAKE_*``/``FS_STORE`` unless given), set for the
    command only. ``py:tests...`` models import because the repository root is on ``sys.path``.
    """
    import traceback

    from typer.testing import CliRunner

    from cli.main import app

    scrub: dict[str, str | None] = {k: None for k in os.environ if k.startswith(("FS_FAKE_", "FS_STORE"))}
    scrub.update(env)
    try:
        runner = CliRunner(mix_stderr=False)  # click < 8.2 keeps stderr apart only when asked
    except TypeError:
        runner = CliRunner()  # click >= 8.2 always does (result.stderr)
    r = runner.invoke(app, [str(a) for a in args], input=input, env=scrub)
    exc = None if r.exception is None or isinstance(r.exception, SystemExit) else r.exception
    tb = "".join(traceback.format_exception(*r.exc_info)) if exc is not None and r.exc_info else ""
    return Ran(r.exit_code, r.stdout, r.stderr, exc, tb)


def ingest_args(src: Path, store: Path, batch_rows: int, dataset: str = "train", *more: str) -> list[str]:
    return ["ingest", str(src), "--store", str(store), "--dataset", dataset, "--model", MODEL, "--clean", RECIPE,
            "--batch-rows", str(batch_rows), *more]


@dataclass
class StoreState:
    """What a committed generation holds, read the way a user would read it."""

    generation: int
    ids: set[int]
    keys: set[bytes]
    canaries: tuple[str, ...]


def read_state(store_path: Path, dataset: str = "train") -> StoreState:
    from featurestore.store import Store

    store = Store(store_path)
    snap = store.snapshot()
    ids: set[int] = set()
    keys: set[bytes] = set()
    canaries: tuple[str, ...] = ()
    if dataset in snap.datasets:
        ids = set(store.dataset_ids(snap.datasets[dataset]).tolist())
    for sp in snap.spaces.values():
        keys |= set(store.space_keys(sp).tolist())
        canaries = sp.canaries
    return StoreState(snap.generation, ids, keys, canaries)


def committed_generation(store_path: Path) -> int:
    """The newest manifest generation on disk, from the file names alone."""
    try:
        names = os.listdir(store_path / "manifest")
    except FileNotFoundError:
        return 0
    return max((int(n[:8]) for n in names if len(n) == 13 and n.endswith(".json") and n[:8].isdigit()), default=0)


def committed_rows_fast(store_path: Path, dataset: str = "train") -> int:
    """Rows of ``dataset`` in the latest manifest (JSON only: cheap enough to poll)."""
    from featurestore.errors import StoreError
    from featurestore.store import Store

    try:
        ds = Store(store_path).snapshot().datasets.get(dataset)
    except StoreError:
        return -1
    return ds.count if ds is not None else 0


def store_vectors(store_path: Path) -> dict[bytes, np.ndarray]:
    from featurestore.store import Store

    store = Store(store_path)
    out: dict[bytes, np.ndarray] = {}
    for sp in store.snapshot().spaces.values():
        keys = store.space_keys(sp).tolist()
        vecs = np.concatenate([b for _, b in store.iter_vectors(sp)]) if keys else np.zeros((0, sp.dim))
        out.update(zip(keys, vecs))
    return out


def same_store(a: Path, b: Path, dataset: str = "train") -> list[str]:
    """Differences between two stores' rows and vectors (empty list: identical content)."""
    from featurestore.store import Store

    problems = []
    rows = []
    for p in (a, b):
        s = Store(p)
        r = s.dataset_rows(s.dataset(dataset))
        rows.append({int(i): (int(lab), t) for i, lab, t in zip(r["ids"], r["labels"], r["texts"])})
    if rows[0] != rows[1]:
        problems.append(f"dataset rows differ ({len(rows[0])} vs {len(rows[1])})")
    va, vb = store_vectors(a), store_vectors(b)
    if set(va) != set(vb):
        problems.append(f"keys differ: {len(set(va) - set(vb))} extra, {len(set(vb) - set(va))} missing")
    else:
        bad = sum(1 for k in va if not np.array_equal(va[k], vb[k]))
        if bad:
            problems.append(f"{bad} vectors differ")
    return problems


@dataclass
class Figures:
    kills_tried: int = 0
    kills_survived: int = 0
    kills_mid_write: int = 0  # kills after which uncommitted files were left behind
    completed_runs: int = 0
    committed_rows_lost: int = 0
    reembedded_beyond_uncommitted: int = 0
    reader_ok: int = 0
    reader_tried: int = 0
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def lines(self) -> list[str]:
        out = [
            f"kills survived / tried: {self.kills_survived} / {self.kills_tried} "
            f"({self.kills_mid_write} landed mid-write, {self.completed_runs} ingests ran to completion)",
            f"committed rows lost: {self.committed_rows_lost}",
            f"re-embedded beyond uncommitted: {self.reembedded_beyond_uncommitted}",
        ]
        if self.reader_tried:
            out.append(f"reader queries succeeded / tried during ingest: {self.reader_ok} / {self.reader_tried}")
        out.append(f"{self.seconds:.1f} s")
        return out


def _uncommitted_files(store_path: Path) -> int:
    from featurestore.store import Store

    seg = store_path / "segments"
    if not seg.is_dir():
        return 0
    live = Store(store_path).snapshot().files()
    return sum(1 for n in os.listdir(seg) if n not in live)


def crash_harness(
    workdir: Path,
    kills: int,
    seed: int = 0,
    rows: int = 1500,
    batch_rows: int = 100,
    sleep: float = 0.01,
    cli_check_every: int = 5,
    kills_per_cycle: int = 4,
    reader: Callable[[Path], None] | None = None,
    log: Callable[[str], None] = lambda s: None,
) -> Figures:
    """Kill ``fs ingest`` ``kills`` times at seeded random moments; return the figures.

    ``reader`` (optional) is called in a loop from a thread while each ingest runs; each
    call is one reader query, counted as ok unless it raises.
    """
    from featurestore.check import check
    from featurestore.ingest import N_CANARIES
    from featurestore.keys import text_key
    from featurestore.store import Store

    t_start = time.perf_counter()
    rng = random.Random(seed)
    fig = Figures()
    src = write_slice(workdir / "tweets.csv", rows)
    ref = workdir / "reference"
    r = run_cli(*ingest_args(src, ref, batch_rows))  # the clean single run: no process needed
    assert r.returncode == 0 and r.exception is None, r.stderr + r.traceback
    store = workdir / "store"
    embed_log = workdir / "embedded.jsonl"
    n_batches = -(-rows // batch_rows)
    per_batch = sleep * -(-batch_rows // 32) + 0.05  # a first guess, then measured
    startup = 1.2
    prev = read_state(store)
    cycle_kills = 0
    last_survived = False

    while fig.kills_tried < kills:
        # After a few kills let one run finish, so the next cycle's kills land early in a run again.
        finish = cycle_kills >= kills_per_cycle
        remaining = n_batches - len(prev.ids) // batch_rows
        in_startup = rng.random() < 0.15  # some kills while it starts, reads and validates
        # A work-phase kill lands after a random number of this run's commits, at a random
        # point of the next batch (embedding or writing), whatever the machine's speed.
        after_commits = rng.randrange(max(1, remaining))
        delay = rng.uniform(0.05, startup) if in_startup else rng.uniform(0.0, per_batch)
        log_size = embed_log.stat().st_size if embed_log.exists() else 0
        t0 = time.monotonic()
        proc = subprocess.Popen(
            fs_cmd(*ingest_args(src, store, batch_rows)), cwd=ROOT,
            env=fs_env(FS_FAKE_SLEEP=str(sleep), FS_FAKE_LOG=str(embed_log)),
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        stop = threading.Event()
        reads = [0, 0]

        def read_loop() -> None:
            while not stop.is_set():
                reads[1] += 1
                try:
                    reader(store)
                    reads[0] += 1
                except Exception as exc:  # noqa: BLE001 - every failure is a finding
                    fig.failures.append(f"reader: {type(exc).__name__}: {exc}")
                time.sleep(0.01)

        thread = threading.Thread(target=read_loop, daemon=True) if reader else None
        if thread:
            thread.start()
        # Poll the committed row count while waiting: whatever a reader saw committed must survive.
        seen_committed = len(prev.ids)
        if not in_startup:
            # The clock of a work-phase kill starts when the model gets its first batch.
            while proc.poll() is None and (embed_log.stat().st_size if embed_log.exists() else 0) == log_size:
                time.sleep(0.01)
            startup = 0.8 * startup + 0.2 * (time.monotonic() - t0)
        gen0 = prev.generation
        if not in_startup:
            last, t_last = gen0, time.monotonic()
            while proc.poll() is None and (finish or last < gen0 + after_commits):
                gen = committed_generation(store)
                if gen > last:
                    now = time.monotonic()
                    if last > gen0:  # learn the time between commits
                        per_batch = 0.7 * per_batch + 0.3 * (now - t_last) / (gen - last)
                    last, t_last = gen, now
                    seen_committed = max(seen_committed, committed_rows_fast(store))
                time.sleep(0.01)
        deadline = time.monotonic() + delay
        while proc.poll() is None and (finish or time.monotonic() < deadline):
            seen_committed = max(seen_committed, committed_rows_fast(store))
            time.sleep(0.02)
        killed = proc.poll() is None
        if killed:
            proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate()
        stop.set()
        if thread:
            thread.join()
        fig.reader_ok += reads[0]
        fig.reader_tried += reads[1]
        if killed:
            fig.kills_tried += 1
            cycle_kills += 1
        elif proc.returncode != 0:
            # The previous kill left a store that the next ingest refuses: that kill was not survived.
            fig.failures.append(f"resume after kill {fig.kills_tried} exited {proc.returncode}: {err.strip()[-300:]}")
            if fig.kills_survived and last_survived:
                fig.kills_survived -= 1
            log(f"resume FAILED: {err.strip()[-200:]}; running fs repair to go on")
            run_fs("repair", "--store", str(store))
            prev = read_state(store)
            last_survived = False
            continue

        # 1. The store opens and passes check (orphans are only warnings).
        ok = True
        try:
            state = read_state(store)
            # A kill before the first manifest was published leaves no store at all: nothing was committed.
            report = check(Store(store)) if (store / "manifest").is_dir() or state.generation else None
        except Exception as exc:  # noqa: BLE001
            fig.failures.append(f"after kill {fig.kills_tried}: store does not open: {exc}")
            break
        if report is not None and not report.ok:
            fig.failures.append(f"after kill {fig.kills_tried}: check failed: {report.errors}")
            ok = False
        if killed and cli_check_every and fig.kills_tried % cli_check_every == 0:
            c = run_fs("check", "--store", str(store))
            if c.returncode != 0:
                fig.failures.append(f"after kill {fig.kills_tried}: fs check exited {c.returncode}: {c.stdout}")
                ok = False
        if killed and _uncommitted_files(store):
            fig.kills_mid_write += 1
        # 2. Nothing committed is lost: every earlier row is still there, and no fewer rows than seen.
        lost = len(prev.ids - state.ids) + max(0, seen_committed - len(state.ids))
        if lost:
            fig.failures.append(f"after kill {fig.kills_tried}: {lost} committed rows lost")
            fig.committed_rows_lost += lost
            ok = False
        # 3. This run embedded nothing committed before it started (the canary re-check aside).
        embedded = Counter(t for pid, texts in read_log(embed_log) if pid == proc.pid for t in texts)
        if prev.keys:
            for c in prev.canaries[:N_CANARIES]:
                embedded[c] -= 1
        again = sum(n for t, n in embedded.items() if n > 0 and text_key(RECIPE, t) in prev.keys)
        if again:
            fig.failures.append(f"run {proc.pid} re-embedded {again} texts committed before it started")
            fig.reembedded_beyond_uncommitted += again
            ok = False
        if killed and ok:
            fig.kills_survived += 1
        last_survived = killed and ok
        log(f"{'kill' if killed else 'done'} at {'startup' if in_startup else f'commit +{after_commits}'} +{delay:.2f}s: rows {len(state.ids)} gen {state.generation}"
            f"{' FAIL' if not ok else ''}")
        prev = state
        if not killed:
            # 4. Complete: the same content as a clean single run. Start the next cycle afresh.
            fig.completed_runs += 1
            problems = same_store(store, ref)
            if problems:
                fig.failures.append(f"completed store differs from a clean run: {problems}")
            shutil.rmtree(store)
            prev = read_state(store)
            cycle_kills = 0

    # Finish what the last kill interrupted, then compare with the clean run.
    if prev.ids or prev.keys:
        r = run_fs(*ingest_args(src, store, batch_rows), FS_FAKE_LOG=str(embed_log))
        if r.returncode != 0:
            fig.failures.append(f"final ingest exited {r.returncode}: {r.stderr.strip()[-500:]}")
        else:
            fig.completed_runs += 1
            problems = same_store(store, ref)
            if problems:
                fig.failures.append(f"final store differs from a clean run: {problems}")
    fig.seconds = time.perf_counter() - t_start
    return fig
