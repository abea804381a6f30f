"""``fs repair`` on compacted stores: rolling a corrupt manifest back never counts a row twice.

A compaction writes merged copies of segments that an older generation still names. When repair
falls back to an older manifest it must adopt either the merged copy or the segments it was made
from, never both (a merged copy of what is named adds nothing; the sources of a named merge are
not new rows), and never drop a readable committed vector. Each scenario also runs on a store whose
segments carry only the attributes written before merges recorded their sources ("legacy").
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest

from featurestore.api import FeatureStore
from featurestore.check import check, repair
from featurestore.storage.store import Store
from tests.conftest import FAKE, train_rows, write_csv

DATASET = "tw"
# What a segment said about itself before compaction recorded the segments it merged.
OLD_ATTRS = {"kind", "space", "space_json", "dataset", "recipe"}


def _ingest(fs: FeatureStore, tmp: Path, rows: list[dict[str, str]], commit_rows: int | None = None) -> None:
    csv = write_csv(tmp / f"in-{len(fs.store.manifest_generations())}.csv", rows)
    fs.ingest(str(csv), DATASET, FAKE, commit_rows=commit_rows)


def _segments(store: Store, generation: int) -> int:
    """How many segment files a generation names."""
    return len(store.read_manifest(generation).files())


def _flipped(rows: list[dict[str, str]], which: range) -> list[dict[str, str]]:
    return [{**r, "label": str(1 - int(r["label"]))} if i in which else r for i, r in enumerate(rows)]


def _base(tmp: Path) -> FeatureStore:
    """200 tweets committed 20 at a time: 10 commits, then a compaction merges the newest four."""
    fs = FeatureStore(tmp / "store")
    _ingest(fs, tmp, train_rows(200), commit_rows=20)
    gens = fs.store.manifest_generations()
    assert _segments(fs.store, gens[-1]) < _segments(fs.store, gens[-2])  # the last generation merged
    return fs


def _longer(tmp: Path) -> FeatureStore:
    """Two compacting ingests, then a compaction (32 segments at most -> 4 here) that merges segments in the
    middle of each list: a merged segment is followed by one merged earlier."""
    fs = _base(tmp)
    _ingest(fs, tmp, train_rows(300), commit_rows=20)
    before = fs.store.snapshot()
    with fs.store.writer() as w:
        assert w.compact(max_segments=4)
    sp = next(iter(fs.store.snapshot().spaces.values()))
    old = next(iter(before.spaces.values())).segments
    assert sp.segments[-1] in old and sp.segments[0] in old and len(sp.segments) < len(old)  # a merge in the middle
    return fs


def _after(tmp: Path) -> FeatureStore:
    """A commit after the compaction: new rows and a changed label. Falling back to the compaction's
    generation finds both its new segments and the segments the compaction merged as orphans."""
    fs = _base(tmp)
    _ingest(fs, tmp, _flipped(train_rows(220), range(3)))
    return fs


def _labels(tmp: Path) -> FeatureStore:
    """Four ingests that only change labels (the first row's, flipped and back, twice); the fourth's compaction
    merges their four label updates."""
    fs = _base(tmp)
    for n in range(4):
        _ingest(fs, tmp, _flipped(train_rows(200), range(1)) if n % 2 == 0 else train_rows(200))
    gens = fs.store.manifest_generations()
    assert len(fs.store.read_manifest(gens[-1]).datasets[DATASET].labels) == 1  # merged
    assert len(fs.store.read_manifest(gens[-2]).datasets[DATASET].labels) == 4
    return fs


def _labels_after(tmp: Path) -> FeatureStore:
    """The label updates merged, then one more label update on top of them."""
    fs = _labels(tmp)
    _ingest(fs, tmp, _flipped(train_rows(200), range(5)))
    return fs


SCENARIOS: dict[str, Callable[[Path], FeatureStore]] = {
    "base": _base,
    "longer": _longer,
    "after": _after,
    "labels": _labels,
    "labels_after": _labels_after,
}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each scenario's store, built once; every test damages a copy."""
    out = {}
    for name, build in SCENARIOS.items():
        tmp = tmp_path_factory.mktemp(name)
        out[name] = build(tmp).path
    return out


def _copy(built: dict[str, Path], name: str, tmp_path: Path, legacy: bool) -> FeatureStore:
    path = tmp_path / "store"
    shutil.copytree(built[name], path)
    if legacy:
        for seg in (path / "segments").iterdir():
            with h5py.File(seg, "r+") as f:
                for attr in set(f.attrs) - OLD_ATTRS:
                    del f.attrs[attr]
    return FeatureStore(path)


def _state(fs: FeatureStore) -> dict[str, tuple[str, np.ndarray]]:
    """Every row's label and vector by id; each id must occur once."""
    X, y, ids = fs.xy(DATASET, FAKE, labelled=False)
    assert len(set(ids.tolist())) == len(ids), "repeated ids"
    return {i: (label, x) for i, label, x in zip(ids.tolist(), y.tolist(), X)}


def _label_updates(fs: FeatureStore) -> list[tuple[str, str]]:
    ids, labels = fs.store.label_updates(fs.store.snapshot().datasets[DATASET])
    return list(zip(ids.tolist(), labels.tolist()))


def _damage_and_repair(fs: FeatureStore, corrupt: int) -> None:
    """Overwrite the newest ``corrupt`` manifests with garbage, then repair; the store must be healthy."""
    assert not check(fs.store).errors
    for gen in fs.store.manifest_generations()[-corrupt:]:
        fs.store.manifest_path(gen).write_bytes(b"\x00garbage{{{")
    assert not fs.check().ok
    report = repair(Store(fs.path))
    assert report.errors == [], report.errors
    assert report.actions, "repair had nothing to do"
    again = fs.check()
    assert again.ok, again.errors
    sp = fs.space(FAKE)
    keys = fs.store.space_keys(sp)
    assert len(np.unique(keys)) == len(keys) == sp.rows, "duplicate keys"


def _assert_same(before: dict[str, tuple[str, np.ndarray]], after: dict[str, tuple[str, np.ndarray]]) -> None:
    assert list(after) == list(before)  # the same ids, in the same (insertion) order
    for i, (label, x) in before.items():
        assert after[i][0] == label, i
        np.testing.assert_array_equal(after[i][1], x)


@pytest.mark.parametrize("legacy", [False, True], ids=["sources-recorded", "legacy"])
def test_repair_of_a_corrupt_compaction_keeps_every_row_once(
    built: dict[str, Path], tmp_path: Path, legacy: bool
) -> None:
    """The bug found in review: the older generation's segments and the merged copy were both adopted
    (80 duplicate keys, repeated ids)."""
    fs = _copy(built, "base", tmp_path, legacy)
    before = _state(fs)
    assert len(before) == 200
    _damage_and_repair(fs, corrupt=1)
    _assert_same(before, _state(fs))
    assert {r["id"] for r in train_rows(200)} == set(_state(fs))


@pytest.mark.parametrize("legacy", [False, True], ids=["sources-recorded", "legacy"])
@pytest.mark.parametrize("damaged", [0, 1, 3])
def test_a_merged_copy_brings_back_the_rows_of_unreadable_segments_it_merged(
    built: dict[str, Path], tmp_path: Path, damaged: int, legacy: bool
) -> None:
    """The older generation names segments that can no longer be read; the merged copy still holds their
    rows: it takes the place of the segments it merged, so every committed vector stays (and once)."""
    fs = _copy(built, "base", tmp_path, legacy)
    before = _state(fs)
    gens = fs.store.manifest_generations()
    merged_away = sorted(fs.store.read_manifest(gens[-2]).files() - fs.store.read_manifest(gens[-1]).files())
    assert len(merged_away) == 12  # four commits' vectors, rows and keys
    for name in merged_away[3 * damaged : 3 * damaged + 3]:  # one commit's three segments
        fs.store.segment_path(name).write_bytes(b"not an HDF5 file")
    _damage_and_repair(fs, corrupt=1)
    _assert_same(before, _state(fs))


@pytest.mark.parametrize("legacy", [False, True], ids=["sources-recorded", "legacy"])
@pytest.mark.parametrize("corrupt", [1, 2, 3])
def test_repair_of_merges_in_the_middle_of_a_longer_history(
    built: dict[str, Path], tmp_path: Path, corrupt: int, legacy: bool
) -> None:
    """1: back to before the middle merge; 2: before two compactions; 3: every kept manifest is corrupt
    and the store is rebuilt from the segment files alone (merges of merges included)."""
    fs = _copy(built, "longer", tmp_path, legacy)
    before = _state(fs)
    assert len(before) == 300
    _damage_and_repair(fs, corrupt)
    _assert_same(before, _state(fs))


@pytest.mark.parametrize("legacy", [False, True], ids=["sources-recorded", "legacy"])
def test_repair_after_the_commit_that_followed_a_compaction(
    built: dict[str, Path], tmp_path: Path, legacy: bool
) -> None:
    """The other way round: the readable generation names the merged segment, and the segments it was
    made from (named by an older kept manifest) are orphans beside the lost commit's new ones."""
    fs = _copy(built, "after", tmp_path, legacy)
    before = _state(fs)
    assert len(before) == 220
    updates = _label_updates(fs)
    _damage_and_repair(fs, corrupt=1)
    _assert_same(before, _state(fs))  # the lost commit's rows and label changes re-adopted
    assert _label_updates(fs) == updates


@pytest.mark.parametrize("legacy", [False, True], ids=["sources-recorded", "legacy"])
@pytest.mark.parametrize("scenario", ["labels", "labels_after"])
def test_merged_label_updates_are_applied_once(
    built: dict[str, Path], tmp_path: Path, scenario: str, legacy: bool
) -> None:
    """Label updates may repeat an id, so duplicates pass ``check``: repair must still not apply a merged
    copy of updates a second time (a later update to the same row would silently be undone)."""
    fs = _copy(built, scenario, tmp_path, legacy)
    before, updates = _state(fs), _label_updates(fs)
    _damage_and_repair(fs, corrupt=1)
    _assert_same(before, _state(fs))
    assert _label_updates(fs) == updates
