"""The crash harness shared by ``tests/test_crash.py`` and ``bench/soak.py``.

A real ``fs ingest`` subprocess (slow, logging fake embedder) is killed with SIGKILL
at seeded random moments. After every kill the harness checks, from outside, what a
user relies on: the store opens, ``check`` passes, every row seen committed before the
kill is still there, and the next ingest embeds nothing that was already committed.
When an ingest runs to completion the store is compared with a clean single-run store.
"""

from __future__ import annotations

import contextlib
import csv
import itertools
import json
import os
import queue
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

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


class ForkServer:
    """``fs`` commands in processes forked from one parent that has already imported the CLI.

    A child is a real process running the same ``cli.main`` as ``fs``, with its own stdout,
    stderr and environment, and it can be killed at any moment like any process. What it skips
    is the interpreter start-up and the imports (about 0.5 s of CPU on a 2-core machine) that
    every ``python -m cli.main`` spends before it reads its first row: the part of a run a kill
    cannot damage, since nothing is written yet. Tests that start ``fs`` dozens of times use it;
    ``run_fs`` stays the plain subprocess, a cold start from nothing.

    The parent (``_fork_parent``) speaks JSON lines on its stdin and stdout: a request names the
    arguments, environment and output files of one command; the answers are the child's pid at
    once and its exit status when it ends. Several children may run at the same time.
    """

    def __init__(self, workdir: Path) -> None:
        self._dir = workdir
        self._dir.mkdir(parents=True, exist_ok=True)
        self._numbers = itertools.count()
        self._proc = subprocess.Popen(
            [sys.executable, "-c", "from tests.integrity_harness import _fork_parent; _fork_parent()"],
            cwd=ROOT,
            env=fs_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self._send = threading.Lock()  # one request and its pid answer at a time
        self._started: queue.Queue[int] = queue.Queue()
        self._ended: dict[int, int] = {}
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read_answers, daemon=True)
        self._reader.start()

    def ready(self) -> None:
        """Wait until the parent has done its imports (a first request waits for them anyway)."""
        r = self.run("--help")
        assert r.returncode == 0, r.stderr

    def _read_answers(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            msg = json.loads(line)
            if "started" in msg:
                self._started.put(msg["started"])
            else:
                with self._changed:
                    self._ended[msg["ended"]] = msg["returncode"]
                    self._changed.notify_all()
        with self._changed:  # the parent is gone: nothing more will end
            self._changed.notify_all()

    def popen(self, args: list[str], **env: str) -> Forked:
        """Start ``fs ARGS`` in a forked child; the environment is ``run_fs``'s for ``env``."""
        n = next(self._numbers)
        out, err = self._dir / f"{n}.out", self._dir / f"{n}.err"
        req = {
            "args": [str(a) for a in args],
            "env": fs_env(**env),
            "cwd": str(ROOT),
            "stdout": str(out),
            "stderr": str(err),
        }
        assert self._proc.stdin is not None
        with self._send:
            self._proc.stdin.write(json.dumps(req) + "\n")
            self._proc.stdin.flush()
            pid = self._started.get(timeout=120)
        return Forked(self, pid, out, err)

    def run(self, *args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
        """``run_fs``, in a forked child."""
        p = self.popen(list(args), **env)
        out, err = p.communicate(timeout=timeout)
        return subprocess.CompletedProcess(fs_cmd(*args), p.returncode, out, err)

    def _wait(self, pid: int, timeout: float | None) -> int | None:
        with self._changed:
            self._changed.wait_for(lambda: pid in self._ended or self._proc.poll() is not None, timeout)
            return self._ended.get(pid)

    def close(self) -> None:
        if self._proc.stdin is not None and not self._proc.stdin.closed:
            self._proc.stdin.close()  # end of requests: the parent waits for its children and exits
        try:
            self._proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._reader.join(timeout=10)

    def __enter__(self) -> ForkServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Forked:
    """One child of a ``ForkServer``: the part of ``subprocess.Popen`` the tests use."""

    def __init__(self, server: ForkServer, pid: int, out: Path, err: Path) -> None:
        self._server = server
        self.pid = pid
        self._out, self._err = out, err
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self._server._wait(self.pid, 0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            self.returncode = self._server._wait(self.pid, timeout)
        if self.returncode is None and self._server._proc.poll() is not None:
            raise RuntimeError(f"the fork server exited ({self._server._proc.returncode}) before its child {self.pid}")
        if self.returncode is None:
            raise subprocess.TimeoutExpired(f"forked fs (pid {self.pid})", timeout or 0)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:  # not reaped yet, so the pid is still this child's
            os.kill(self.pid, sig)

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        self.wait(timeout)
        return (
            self._out.read_text(encoding="utf-8", errors="replace"),
            self._err.read_text(encoding="utf-8", errors="replace"),
        )


def _fork_parent() -> None:
    """The parent process of a ``ForkServer``: import the CLI once, then fork a child per request."""
    import select

    import cli.main
    import featurestore.api  # noqa: F401 - what an ingest or a query imports on first use
    import featurestore.ingestion.ingest  # noqa: F401
    import tests.integrity_fakes  # noqa: F401 - the py: models the tests name

    answers = os.dup(1)  # the children get other files as their fd 1
    os.dup2(2, 1)  # and anything printed here goes to stderr, not into the answers
    running: set[int] = set()
    pending = b""
    more = True

    def answer(msg: dict) -> None:
        os.write(answers, (json.dumps(msg) + "\n").encode())

    while more or running:
        ready, _, _ = select.select([0] if more else [], [], [], 0.005)
        if ready:
            chunk = os.read(0, 1 << 16)
            more = bool(chunk)
            pending += chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                sys.stdout.flush()  # nothing buffered here is written again by a child
                sys.stderr.flush()
                pid = os.fork()
                if pid == 0:
                    os.close(answers)
                    _run_forked_child(cli.main.main, json.loads(line))  # never returns
                running.add(pid)
                answer({"started": pid})
        while running:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if not pid:
                break
            running.discard(pid)
            answer({"ended": pid, "returncode": os.waitstatus_to_exitcode(status)})


def _run_forked_child(main: Callable[[], None], req: dict) -> None:
    """In a fresh child: become ``fs ARGS`` with the request's files and environment, then exit."""
    code = 1
    try:
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        os.dup2(os.open(req["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), 1)
        os.dup2(os.open(req["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), 2)
        os.chdir(req["cwd"])
        os.environ.clear()
        os.environ.update(req["env"])
        sys.argv = ["fs", *req["args"]]
        try:
            main()
            code = 0
        except SystemExit as exc:  # what the interpreter would make of it at exit
            if exc.code is None or isinstance(exc.code, int):
                code = exc.code or 0
            else:
                print(exc.code, file=sys.stderr)
    except BaseException:  # noqa: BLE001 - as an uncaught exception ends a process: a traceback, status 1
        import traceback

        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


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
    return [
        "ingest",
        str(src),
        "--store",
        str(store),
        "--dataset",
        dataset,
        "--model",
        MODEL,
        "--clean",
        RECIPE,
        "--batch-rows",
        str(batch_rows),
        *more,
    ]


@dataclass
class StoreState:
    """What a committed generation holds, read the way a user would read it."""

    generation: int
    ids: set[int]
    keys: set[bytes]
    canaries: tuple[str, ...]


def read_state(store_path: Path, dataset: str = "train") -> StoreState:
    from featurestore.storage.store import Store

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
    from featurestore.storage.store import Store

    try:
        ds = Store(store_path).snapshot().datasets.get(dataset)
    except StoreError:
        return -1
    return ds.count if ds is not None else 0


def store_vectors(store_path: Path) -> dict[bytes, np.ndarray]:
    from featurestore.storage.store import Store

    store = Store(store_path)
    out: dict[bytes, np.ndarray] = {}
    for sp in store.snapshot().spaces.values():
        keys = store.space_keys(sp).tolist()
        vecs = np.concatenate([b for _, b in store.iter_vectors(sp)]) if keys else np.zeros((0, sp.dim))
        out.update(zip(keys, vecs))
    return out


def same_store(a: Path, b: Path, dataset: str = "train") -> list[str]:
    """Differences between two stores' rows and vectors (empty list: identical content)."""
    from featurestore.storage.store import Store

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
    from featurestore.storage.store import Store

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
    warm_start: bool = False,
) -> Figures:
    """Kill ``fs ingest`` ``kills`` times at seeded random moments; return the figures.

    ``reader`` (optional) is called in a loop from a thread while each ingest runs; each
    call is one reader query, counted as ok unless it raises. ``warm_start`` forks the ingests
    from a ``ForkServer`` instead of starting each interpreter afresh: the same kills in less
    time, since a kill during the interpreter's own start-up cannot touch the store.
    """
    with ForkServer(workdir / "forks") if warm_start else contextlib.nullcontext() as server:
        return _crash_harness(
            workdir, kills, seed, rows, batch_rows, sleep, cli_check_every, kills_per_cycle, reader, log, server
        )


def _crash_harness(
    workdir: Path,
    kills: int,
    seed: int,
    rows: int,
    batch_rows: int,
    sleep: float,
    cli_check_every: int,
    kills_per_cycle: int,
    reader: Callable[[Path], None] | None,
    log: Callable[[str], None],
    server: ForkServer | None,
) -> Figures:
    from featurestore.check import check
    from featurestore.spaces import N_CANARIES
    from featurestore.storage.keys import text_key
    from featurestore.storage.store import Store

    t_start = time.perf_counter()
    rng = random.Random(seed)
    fig = Figures()
    src = write_slice(workdir / "tweets.csv", rows)
    ref = workdir / "reference"
    r = run_cli(*ingest_args(src, ref, batch_rows))  # the clean single run: no process needed
    assert r.returncode == 0 and r.exception is None, r.stderr + r.traceback
    if server is not None:
        server.ready()  # its imports are not part of the first run's start-up
    store = workdir / "store"
    embed_log = workdir / "embedded.jsonl"
    n_batches = -(-rows // batch_rows)
    per_batch = sleep * -(-batch_rows // 32) + 0.05  # a first guess, then measured
    startup = 1.2 if server is None else 0.3  # a first guess of the time to the first batch, then measured
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
        proc: subprocess.Popen | Forked
        if server is not None:
            proc = server.popen(
                ingest_args(src, store, batch_rows), FS_FAKE_SLEEP=str(sleep), FS_FAKE_LOG=str(embed_log)
            )
        else:
            proc = subprocess.Popen(
                fs_cmd(*ingest_args(src, store, batch_rows)),
                cwd=ROOT,
                env=fs_env(FS_FAKE_SLEEP=str(sleep), FS_FAKE_LOG=str(embed_log)),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
        stop = threading.Event()
        reads = [0, 0]

        def read_loop(stop: threading.Event = stop, reads: list[int] = reads) -> None:
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
        if killed and cli_check_every and report is not None and fig.kills_tried % cli_check_every == 0:
            c = run_fs("check", "--store", str(store))  # (no store yet: the CLI says so, rightly; nothing to check)
            if c.returncode != 0:
                fig.failures.append(
                    f"after kill {fig.kills_tried}: fs check exited {c.returncode}: {c.stdout}{c.stderr}"
                )
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
        log(
            f"{'kill' if killed else 'done'} at {'startup' if in_startup else f'commit +{after_commits}'} "
            f"+{delay:.2f}s: rows {len(state.ids)} gen {state.generation}"
            f"{' FAIL' if not ok else ''}"
        )
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
