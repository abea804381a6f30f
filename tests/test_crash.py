"""Crash safety: SIGKILL a real ``fs ingest`` at 20+ seeded random moments.

After every kill the store opens, ``check`` passes, no committed row is lost, and the
next ingest embeds only what was never committed; the finished store equals a clean
single run, key for key and vector for vector. Figures are printed (``pytest -s``) and
written to ``crash_figures.txt`` under the test's tmp dir.

The kill test needs real processes and is marked ``slow``. Its ingests are forked from a
parent that has already imported the CLI (``ForkServer``): real processes killed mid-run,
without a Python start-up each; the checks between kills and the last resume run ``fs`` as
a plain new process. The two simulated crashes (a monkeypatched publish) resume through the
CLI in-process.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integrity_harness import crash_harness

KILLS = 20


@pytest.mark.slow  # ~20 real processes killed with SIGKILL
def test_sigkill_at_random_moments_loses_nothing_and_resumes(tmp_path: Path) -> None:
    fig = crash_harness(
        tmp_path,
        kills=KILLS,
        seed=20240531,
        rows=1000,
        batch_rows=100,
        sleep=0.01,
        kills_per_cycle=6,
        cli_check_every=10,
        log=print,
        warm_start=True,
    )
    report = "\n".join(fig.lines())
    print(report)
    (tmp_path / "crash_figures.txt").write_text(report + "\n")
    assert not fig.failures, fig.failures
    assert fig.kills_tried >= KILLS
    assert fig.kills_survived == fig.kills_tried
    assert fig.committed_rows_lost == 0
    assert fig.reembedded_beyond_uncommitted == 0
    assert fig.completed_runs >= 1


def _crash_before_publish(tmp_path: Path, monkeypatch, generations_before: int) -> Path:
    """Simulate SIGKILL between a commit's segment renames and its manifest publish."""
    from featurestore.api import FeatureStore
    from featurestore.storage.store import Writer
    from tests.integrity_fakes import SlowHashEmbedder
    from tests.integrity_harness import write_slice

    src = write_slice(tmp_path / "t.csv", 300)
    store = tmp_path / "store"
    fs = FeatureStore(store)
    if generations_before:
        fs.ingest(
            str(write_slice(tmp_path / "first.csv", 100 * generations_before)),
            "train",
            "py:x:y",
            "raw-v1",
            embedder=SlowHashEmbedder(),
            commit_rows=100,
        )

    class Killed(BaseException):
        pass

    real_publish = Writer._publish

    def die(self, new):  # the process is gone: nothing after this point runs
        if new.generation == 0:  # a new store's empty generation 0 is published before any segment
            return real_publish(self, new)
        raise Killed

    with monkeypatch.context() as m:
        m.setattr(Writer, "_publish", die)
        with pytest.raises(Killed):
            fs.ingest(str(src), "train", "py:x:y", "raw-v1", embedder=SlowHashEmbedder(), commit_rows=100)
    assert any(p.name.startswith("seg-") for p in (store / "segments").iterdir())
    return src


def test_crash_before_the_first_manifest_then_resume(tmp_path: Path, monkeypatch) -> None:
    """The very first commit of a store is killed after its segments were renamed into
    place: the next ``fs ingest`` must sweep them like any other orphans and resume."""
    from tests.integrity_harness import ingest_args, read_state, run_cli

    src = _crash_before_publish(tmp_path, monkeypatch, generations_before=0)
    c = run_cli("check", "--store", str(tmp_path / "store"))
    assert c.returncode == 0 and c.exception is None, c.stdout + c.stderr + c.traceback
    r = run_cli(*ingest_args(src, tmp_path / "store", 100))
    assert r.returncode == 0 and r.exception is None, (
        f"resume after a crash in the first commit failed: {r.stderr.strip()}{r.traceback}"
    )
    assert len(read_state(tmp_path / "store").ids) == 300


def test_crash_before_a_later_manifest_then_resume(tmp_path: Path, monkeypatch) -> None:
    from tests.integrity_harness import ingest_args, read_state, run_cli

    src = _crash_before_publish(tmp_path, monkeypatch, generations_before=1)
    assert read_state(tmp_path / "store").generation == 1
    r = run_cli(*ingest_args(src, tmp_path / "store", 100))
    assert r.returncode == 0 and r.exception is None, r.stderr + r.traceback
    assert len(read_state(tmp_path / "store").ids) == 300
    c = run_cli("check", "--store", str(tmp_path / "store"))
    assert c.returncode == 0 and c.exception is None and "warning" not in c.stdout, c.stdout + c.traceback
