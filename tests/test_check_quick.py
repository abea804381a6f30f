"""``fs check`` at disk speed and ``fs check --quick`` (issue 24): a full check reads every segment once and finds
what it always found; a quick one finds a missing or truncated segment and a stale index from headers and
identities alone, and says what it did not verify. Both say up front what they will read."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from featurestore.api import FeatureStore
from featurestore.check import CheckPlan, _Sorted
from featurestore.storage.store import write_segment
from tests.conftest import FAKE, train_rows, write_csv

RECIPE = "raw-v1"


@pytest.fixture
def loaded(fs: FeatureStore, tweets_csv: Path) -> FeatureStore:
    """200 tweets committed 20 at a time (several segments of each kind), with a flat index."""
    fs.ingest(str(tweets_csv), "train", FAKE, RECIPE, commit_rows=20)
    fs.index_build("flat", model=FAKE, clean=RECIPE)
    return fs


def _rewrite(fs: FeatureStore, name: str, change) -> None:  # noqa: ANN001
    """Write segment ``name`` again with ``change(columns)`` applied: a damaged file that still opens."""
    path = fs.store.segment_path(name)
    with h5py.File(path, "r") as f:
        attrs = dict(f.attrs)
        cols = {c: f[c][()] for c in f}
    if "texts" in cols:
        cols["texts"] = [bytes(t).decode() for t in cols["texts"]]
    for c in ("ids", "labels"):
        if c in cols and cols[c].dtype.kind == "O":
            cols[c] = [v.decode() for v in cols[c]]
    change(cols)
    path.unlink()
    write_segment(path, attrs, cols)


def test_quick_check_passes_a_healthy_store_says_what_it_read_and_what_it_left_out(loaded: FeatureStore) -> None:
    plans: list[CheckPlan] = []
    seen: list[tuple[float, int]] = []
    quick = loaded.check(quick=True, plan=plans.append, progress=lambda n, t: seen.append((n, t)))
    assert quick.ok and quick.warnings == [], quick.warnings
    assert quick.stats["rows:train"] == 200
    assert len(plans) == 1 and plans[0].quick
    assert sum(n for n, _ in seen) == plans[0].bytes  # the sample read, whole
    left_out = " ".join(quick.not_verified)
    assert "sha256" in left_out and "resolving to stored vectors" in left_out

    plans.clear()
    seen.clear()
    full = loaded.check(plan=plans.append, progress=lambda n, t: seen.append((n, t)))
    assert full.ok and full.not_verified == []
    segments = sum(p.stat().st_size for p in loaded.store.segment_dir.iterdir())
    index = sum(p.stat().st_size for p in loaded.store.index_dir.glob("*.faiss"))
    assert not plans[0].quick and plans[0].bytes <= segments + index and plans[0].bytes > index
    assert plans[0].read_rate > 0 and plans[0].seconds > 0
    assert seen[0] == (0, plans[0].bytes) and sum(n for n, _ in seen) == plans[0].bytes  # every byte, once


@pytest.mark.parametrize("kind", ["vectors", "rows"])
def test_quick_check_finds_a_missing_segment(loaded: FeatureStore, kind: str) -> None:
    segs = loaded.space(FAKE, RECIPE).segments if kind == "vectors" else loaded.store.dataset("train").rows
    gone = segs[-1].file
    loaded.store.segment_path(gone).unlink()
    report = loaded.check(quick=True)
    assert not report.ok and f"segment {gone} is missing" in report.errors


def test_quick_check_finds_a_truncated_segment(loaded: FeatureStore) -> None:
    seg = loaded.space(FAKE, RECIPE).segments[0].file
    path = loaded.store.segment_path(seg)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    report = loaded.check(quick=True)
    assert not report.ok
    assert any(e.startswith(f"segment {seg} cannot be read") for e in report.errors), report.errors


def test_quick_check_finds_a_stale_or_replaced_index(loaded: FeatureStore, tmp_path: Path) -> None:
    more = write_csv(tmp_path / "more.csv", train_rows(230)[200:])
    loaded.ingest(str(more), "train", FAKE, RECIPE)
    report = loaded.check(quick=True)
    assert report.ok and any("covers 200 of 230 vectors" in w for w in report.warnings), report.warnings
    loaded.index_build("flat", model=FAKE, clean=RECIPE)
    assert loaded.check(quick=True).warnings == []
    index = next(loaded.store.index_dir.glob("*.faiss"))
    index.write_bytes(index.read_bytes()[:-100])
    report = loaded.check(quick=True)
    assert any("truncated or replaced" in w for w in report.warnings), report.warnings


def test_full_check_still_finds_bad_values_duplicate_keys_and_ids_and_unresolved_keys(loaded: FeatureStore) -> None:
    space = loaded.space(FAKE, RECIPE)
    first, second = space.segments[0].file, space.segments[1].file
    with loaded.store.open_segment(first) as f:
        taken = f["keys"][0]

    def nan_and_a_repeated_key(cols: dict) -> None:  # noqa: ANN001
        cols["vectors"] = cols["vectors"].copy()
        cols["vectors"][3, 0] = np.nan
        cols["keys"] = cols["keys"].copy()
        cols["keys"][0] = taken  # a key of the first segment: now twice in the space, and row 0's key is gone

    _rewrite(loaded, second, nan_and_a_repeated_key)
    ds = loaded.store.dataset("train")
    _rewrite(loaded, ds.rows[1].file, lambda cols: cols["ids"].__setitem__(0, cols["ids"][1]))
    report = loaded.check()
    assert f"space {space.id} has 1 duplicate keys" in report.errors
    assert f"space {space.id} has 1 vectors with NaN/Inf" in report.errors
    assert "dataset 'train' has duplicate ids" in report.errors
    assert "dataset 'train': 1 keys under raw-v1 resolve to no stored vector" in report.errors, report.errors
    quick = loaded.check(quick=True)  # this small store fits the sample: every segment read, the NaN found
    assert f"space {space.id} has 1 vectors with NaN/Inf" in quick.errors
    assert any("keys unique across segments" in n for n in quick.not_verified)  # and what it cannot see, said


def test_sorted_codes_agree_with_numpy_even_when_codes_collide() -> None:
    rng = np.random.default_rng(3)
    values = np.array([f"{v:04d}".encode() for v in rng.integers(0, 300, 500)], dtype="S4")
    for codes_of in (lambda v: _code(v, 7), lambda v: _code(v, 10**6)):
        index = _Sorted(values, codes_of(values))
        assert index.duplicates() == len(values) - len(np.unique(values))
        wanted = np.array([f"{v:04d}".encode() for v in rng.integers(0, 600, 400)], dtype="S4")
        assert index.missing(wanted, codes_of(wanted)) == int((~np.isin(wanted, values)).sum())


def _code(values: np.ndarray, modulo: int) -> np.ndarray:
    """A code that many values share (modulo 7) or few do: every match must be confirmed on the value."""
    return (np.array([int(v) for v in values], dtype=np.uint64) % np.uint64(modulo)).astype(np.uint64)
