"""Drift guard: the same model name and fingerprint with one weight changed must not
silently mix its vectors into the space; the ingest stops before writing anything.

``fs`` runs in-process (CliRunner); ``FS_FAKE_TWEAK`` is set for that one command, and
the CLI builds a fresh ``LinearEmbedder`` per command, which reads it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from featurestore.api import FeatureStore
from featurestore.errors import DriftError
from featurestore.spaces import N_CANARIES
from tests.integrity_fakes import LinearEmbedder
from tests.integrity_harness import read_state, run_cli, write_slice

LINEAR = "py:tests.integrity_fakes:LinearEmbedder"


def _files(store: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(store)): p.read_bytes() for p in sorted(store.rglob("*")) if p.is_file() and p.name != "LOCK"
    }


@pytest.fixture(scope="module")
def seeded_once(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    d = tmp_path_factory.mktemp("drift")
    store = d / "store"
    first = write_slice(d / "first.csv", 200)
    more = write_slice(d / "more.csv", 100, start=200)
    r = run_cli(
        "ingest", str(first), "--store", str(store), "--model", LINEAR, "--clean", "raw-v1", "--batch-rows", "50"
    )
    assert r.returncode == 0 and r.exception is None, r.stderr + r.traceback
    return store, first, more


@pytest.fixture
def seeded(seeded_once: tuple[Path, Path, Path], tmp_path: Path) -> tuple[Path, Path, Path]:
    """A private copy of the seeded store: tests write to it."""
    store, first, more = seeded_once
    shutil.copytree(store, tmp_path / "store")
    return tmp_path / "store", first, more


def test_space_records_canaries(seeded) -> None:
    store, _, _ = seeded
    canaries = read_state(store).canaries
    assert len(canaries) == N_CANARIES and all(c.strip() for c in canaries)


def test_cli_one_changed_weight_stops_ingest(seeded) -> None:
    store, _, more = seeded
    assert LinearEmbedder().fingerprint == LinearEmbedder(tweak=0.01).fingerprint
    before, gen = _files(store), read_state(store).generation
    r = run_cli(
        "ingest", str(more), "--store", str(store), "--model", LINEAR, "--clean", "raw-v1", FS_FAKE_TWEAK="0.01"
    )
    assert r.returncode != 0 and r.exception is None, r.traceback
    err = r.stderr.strip()
    assert err.startswith("Error: ") and len(err.splitlines()) == 1 and "Traceback" not in r.stderr, err
    assert "no longer reproduces" in err and "canary" in err and "fix:" in err, err
    assert read_state(store).generation == gen
    assert _files(store) == before
    # The untouched model still ingests the same file.
    ok = run_cli("ingest", str(more), "--store", str(store), "--model", LINEAR, "--clean", "raw-v1")
    assert ok.returncode == 0 and ok.exception is None, ok.stderr + ok.traceback
    assert len(read_state(store).ids) == 300


def test_api_drift_error_and_tolerance(seeded) -> None:
    store, first, more = seeded
    fs = FeatureStore(store)
    gen = read_state(store).generation
    with pytest.raises(DriftError):
        fs.ingest(str(more), "train", LINEAR, "raw-v1", embedder=LinearEmbedder(tweak=1e-3))
    assert read_state(store).generation == gen
    # Nothing to embed: the model is not consulted, so nothing can drift.
    s = fs.ingest(str(first), "train", LINEAR, "raw-v1", embedder=LinearEmbedder(tweak=1.0))
    assert s.embedded == 0 and read_state(store).generation == gen
    # Below float32 noise (tolerance 1e-4) is not drift.
    s = fs.ingest(str(more), "train", LINEAR, "raw-v1", embedder=LinearEmbedder(tweak=1e-6))
    assert s.embedded == 100
