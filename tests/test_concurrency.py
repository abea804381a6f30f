"""One writer, many readers: while a real ``fs ingest`` commits batch after batch,
a second writer is refused (or queues with ``--wait``) and readers - the Python API in
threads plus the CLI - always see one consistent committed generation.

Real processes throughout (the lock is between processes; CliRunner swaps ``sys.stdout``
and cannot run in reader threads), so the test is marked ``slow``."""

from __future__ import annotations

import csv
import faulthandler
import json
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tests.integrity_fakes import hash_vector
from tests.integrity_harness import (
    MODEL,
    RECIPE,
    ROOT,
    committed_generation,
    fs_cmd,
    fs_env,
    ingest_args,
    run_fs,
    write_slice,
)

BATCH = 100
FIRST = 300  # committed before the background ingest starts
TOTAL = 1500


@pytest.mark.slow  # a ~15 s soak: one writer process, reader threads and CLI processes
def test_one_writer_many_readers(tmp_path: Path) -> None:
    faulthandler.dump_traceback_later(240, exit=True)  # a deadlock shows its stacks instead of hanging CI
    try:
        _one_writer_many_readers(tmp_path)
    finally:
        faulthandler.cancel_dump_traceback_later()


def _one_writer_many_readers(tmp_path: Path) -> None:
    from featurestore.api import FeatureStore

    store = tmp_path / "store"
    src = write_slice(tmp_path / "all.csv", TOTAL)
    with open(src, newline="", encoding="utf-8") as f:
        rows = {r["id"]: (r["label"], r["tweet"]) for r in csv.DictReader(f)}  # ids and labels are text
    expected = {i: hash_vector(t) for i, (_, t) in rows.items()}
    r = run_fs(*ingest_args(write_slice(tmp_path / "first.csv", FIRST), store, BATCH))
    assert r.returncode == 0, r.stderr
    other = write_slice(tmp_path / "other.csv", 50, start=5000)

    bg = subprocess.Popen(
        fs_cmd(*ingest_args(src, store, BATCH)),
        cwd=ROOT,
        env=fs_env(FS_FAKE_SLEEP="0.2"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    gen0 = committed_generation(store)
    while committed_generation(store) == gen0:  # the writer holds the lock and is committing
        assert bg.poll() is None, bg.communicate()
        time.sleep(0.02)

    stop = threading.Event()
    failures: list[str] = []
    counts = {"xy": 0, "similar": 0, "info": 0, "cli": 0, "tried": 0}
    lock = threading.Lock()

    def query(kind: str, fn) -> None:
        with lock:
            counts["tried"] += 1
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - every failure is a finding
            failures.append(f"{kind}: {type(exc).__name__}: {exc}")
            return
        with lock:
            counts[kind] += 1

    def xy_loop() -> None:
        fs = FeatureStore(store)
        last = 0

        def one() -> None:
            nonlocal last
            X, y, ids = fs.xy("train", MODEL, RECIPE)
            n = len(ids)
            assert X.shape == (n, 16) and len(y) == n, (X.shape, len(y), n)
            assert n % BATCH == 0 and FIRST <= n <= TOTAL, f"{n} rows is not a committed batch boundary"
            assert n >= last, f"rows went back from {last} to {n}"
            assert len(set(ids.tolist())) == n
            assert all(y[j] == rows[i][0] for j, i in enumerate(ids.tolist()))
            want = np.stack([expected[i] for i in ids.tolist()])
            assert np.array_equal(X, want), "a vector does not belong to its id"
            last = n

        while not stop.is_set():
            query("xy", one)

    def similar_info_loop() -> None:
        fs = FeatureStore(store)
        probe = [i for i in list(rows)[:FIRST:7]]
        last = (0, 0)
        j = 0
        while not stop.is_set():
            i = probe[j % len(probe)]
            j += 1

            def sim(i: int = i) -> None:  # called at once, by query()
                res = fs.similar(rows[i][1], k=5, model=MODEL, clean=RECIPE)
                hits = res.hits
                assert hits and hits[0].score > 0.999, (hits[:1], res.index, res.query)
                assert any(rows[dsid][1] == rows[i][1] for _, dsid in hits[0].ids), hits[0]

            def inf() -> None:
                nonlocal last
                d = fs.info()
                n = next(x["rows"] for x in d["datasets"] if x["name"] == "train")
                cov = d["spaces"][0]["coverage"]["train"]
                assert n % BATCH == 0 and cov == n, (n, cov)
                assert (d["generation"], n) >= last, (last, d["generation"], n)
                last = (d["generation"], n)

            query("similar", sim)
            query("info", inf)

    def cli_loop() -> None:
        calls = [
            ("info", "--json", "--store", str(store)),
            ("similar", rows["1"][1], "--k", "3", "--json", "--model", MODEL, "--clean", RECIPE, "--store", str(store)),
            ("train", "--model", MODEL, "--clean", RECIPE, "--json", "--store", str(store)),
        ]
        j = 0
        while not stop.is_set():
            args = calls[j % len(calls)]
            j += 1

            def one(args: tuple[str, ...] = args) -> None:  # called at once
                c = run_fs(*args)
                assert c.returncode == 0, f"fs {args[0]} exited {c.returncode}: {c.stderr.strip()[-300:]}"
                json.loads(c.stdout)

            query("cli", one)

    threads = [threading.Thread(target=t, daemon=True) for t in (xy_loop, similar_info_loop, cli_loop)]
    for t in threads:
        t.start()

    # A second writer without --wait: refused at once, one line, naming the fix.
    second = run_fs(*ingest_args(other, store, BATCH, "other"))
    assert bg.poll() is None, "the background ingest ended too early for this test"
    assert second.returncode != 0
    err = second.stderr.strip()
    assert len(err.splitlines()) == 1 and err.startswith("Error: "), err
    assert "another process is writing" in err and "--wait" in err and str(store) in err, err
    assert "Traceback" not in second.stderr
    # With --wait it queues behind the writer and then succeeds.
    waiter = subprocess.Popen(
        fs_cmd(*ingest_args(other, store, BATCH, "other", "--wait")),
        cwd=ROOT,
        env=fs_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    t_bg = time.monotonic()
    out, err = bg.communicate(timeout=120)
    bg_done = time.monotonic()
    print(f"background ingest ran {bg_done - t_bg:.1f} s more after the second writers")
    assert bg.returncode == 0, err
    w_out, w_err = waiter.communicate(timeout=120)
    waiter_done = time.monotonic()
    stop.set()
    for t in threads:
        t.join(timeout=60)

    assert waiter.returncode == 0, w_err
    assert waiter_done >= bg_done - 0.5
    snap = FeatureStore(store).info()
    assert {d["name"]: d["rows"] for d in snap["datasets"]} == {"train": TOTAL, "other": 50}
    c = run_fs("check", "--store", str(store))
    assert c.returncode == 0, c.stdout
    print(
        f"reader queries succeeded / tried during ingest: {counts['tried'] - len(failures)} / {counts['tried']} "
        f"({counts})"
    )
    assert not failures, failures[:5]
    assert counts["tried"] >= 100
    assert counts["cli"] >= 3
