"""A cold query after a compaction trusts the index by a sample of its keys, not by hashing every key.

Compaction merges the segments an index covers (same rows in the same order, new names). The index manifest
records the keys at a seeded sample of positions (``key_samples``); a cold process reads those keys from only
the segments holding them and, when they match, refreshes the recorded segments instead of reading every key
of the space (at 10M rows, 1.5-2.0 s of a cold ``fs similar --id``). When they do not match, or the manifest
has no sample (an index saved before), every key is hashed as before, so that rows that changed under the
same count are still caught and the index rebuilt.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from featurestore.api import FeatureStore
from featurestore.query import index as faiss_index
from featurestore.storage.manifest import Space
from featurestore.storage.store import Store
from tests.conftest import FAKE, train_rows, write_csv

RECIPE = "basic-v1"
CHUNK = 150  # rows an ingest commits: one segment each, three of one size tier (compaction merges four)


def _store(tmp_path: Path, chunks: int, kind: str = "flat") -> tuple[FeatureStore, list[dict[str, str]]]:
    """``chunks`` ingests of ``CHUNK`` tweets (one segment each), then an index of them."""
    rows = train_rows(CHUNK * (chunks + 1))
    fs = FeatureStore(tmp_path / "s")
    for c in range(chunks):
        fs.ingest(str(write_csv(tmp_path / f"{c}.csv", rows[c * CHUNK : (c + 1) * CHUNK])), "d", FAKE, RECIPE)
    assert len(fs.space(FAKE, RECIPE).segments) == chunks
    fs.index_build(kind, nlist=8 if kind == "ivf" else None, model=FAKE, clean=RECIPE)
    return fs, rows


def _count_space_keys(monkeypatch: pytest.MonkeyPatch, refuse: bool = False) -> list[str]:
    """Record (or refuse) each read of every key of a space."""
    calls: list[str] = []
    real: Callable[[Store, Space], np.ndarray] = Store.space_keys

    def space_keys(self: Store, space: Space) -> np.ndarray:
        calls.append(space.id)
        if refuse:
            raise AssertionError("a cold query read every key of the space")
        return real(self, space)

    monkeypatch.setattr(Store, "space_keys", space_keys)
    return calls


def _answers(fs: FeatureStore, ids: list[str], **kw: object) -> tuple[list[list[str]], np.ndarray]:
    results = [fs.similar(id=i, k=5, model=FAKE, clean=RECIPE, **kw) for i in ids]  # type: ignore[call-overload]
    return [[h.ids[0][1] for h in r.hits] for r in results], np.array([[h.score for h in r.hits] for r in results])


def _meta(fs: FeatureStore) -> dict:
    return json.loads(Path(faiss_index.index_paths(fs.store, fs.space(FAKE, RECIPE))[1]).read_text())


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_a_cold_query_after_a_compaction_reads_only_sampled_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    fs, rows = _store(tmp_path, 3, kind)
    before = fs.space(FAKE, RECIPE)
    with fs.store.writer() as w:
        assert w.compact(max_segments=1)
    space = FeatureStore(fs.path).space(FAKE, RECIPE)
    assert len(space.segments) == 1 and space.rows == before.rows  # the same rows under a new name
    assert faiss_index.cheap_problem(fs.store, space) is not None  # the recorded segments are gone
    queries = [rows[i]["id"] for i in (0, 151, 449)]
    calls = _count_space_keys(monkeypatch, refuse=True)
    cold = FeatureStore(fs.path)
    res = cold.similar(id=queries[0], k=5, model=FAKE, clean=RECIPE)
    assert res.index == "loaded" and res.index_mmap and res.hits[0].ids == [("d", queries[0])]
    assert calls == []
    # The manifest now names the merged segment: the next cold process takes the cheap path outright.
    assert _meta(fs)["segments"] == [[space.segments[0].file, space.rows]]
    assert faiss_index.cheap_problem(fs.store, space) is None
    nprobe = {"nprobe": 8} if kind == "ivf" else {}
    got = _answers(FeatureStore(fs.path), queries, **nprobe)
    monkeypatch.undo()
    want = _answers(FeatureStore(fs.path), queries, exact=True)
    assert got[0] == want[0] and np.allclose(got[1], want[1], atol=1e-5)


def test_an_ingest_whose_compaction_merged_indexed_and_new_rows_reads_only_sampled_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rows no longer end on a segment boundary, so no segment list can be recorded: every cold query
    checks the sample again (66 keys), never all of them."""
    fs, rows = _store(tmp_path, 3)
    indexed = fs.space(FAKE, RECIPE).rows
    fs.ingest(str(write_csv(tmp_path / "more.csv", rows[450:600])), "d", FAKE, RECIPE)  # the fourth of its tier
    space = fs.space(FAKE, RECIPE)
    assert len(space.segments) == 1 and space.rows > indexed  # merged: indexed and new rows in one segment
    queries = [rows[i]["id"] for i in (3, 300, 599)]
    calls = _count_space_keys(monkeypatch, refuse=True)
    for _ in range(2):
        res = FeatureStore(fs.path).similar(id=queries[2], k=5, model=FAKE, clean=RECIPE)
        assert res.index == f"loaded, {space.rows - indexed} newer rows searched by brute force"
        assert res.hits[0].ids == [("d", queries[2])]
    got = _answers(FeatureStore(fs.path), queries)
    assert calls == []
    monkeypatch.undo()
    want = _answers(FeatureStore(fs.path), queries, exact=True)
    assert got[0] == want[0] and np.allclose(got[1], want[1], atol=1e-5)


@pytest.mark.parametrize("change", ["swapped", "dropped"])
def test_rows_that_changed_under_the_same_count_are_caught_and_the_index_rebuilt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    """``swapped``: two covered segments in the other order; ``dropped``: a repair left the second segment out
    and the rows after it took its place. Either way the segments were renamed, a sampled key differs, every
    key is then hashed, and the index is rebuilt over the rows as they are."""
    fs, rows = _store(tmp_path, 3 if change == "swapped" else 2)
    if change == "dropped":
        fs.ingest(str(write_csv(tmp_path / "more.csv", rows[300:450])), "d", FAKE, RECIPE)
    space = fs.space(FAKE, RECIPE)
    s = space.segments
    changed = dataclasses.replace(space, segments=(s[1], s[0], s[2]) if change == "swapped" else (s[0], s[2]))
    assert changed.rows >= _meta(fs)["rows"]  # nothing a row count would catch
    calls = _count_space_keys(monkeypatch)
    opened = faiss_index.open_index(fs.store, changed, tail_max=1000)
    assert opened.status == "rebuilt: index rows no longer match the store"
    assert calls  # the sample differed: every key was read
    assert opened.rows == changed.rows and faiss_index.cheap_problem(fs.store, changed) is None
    probe = [0, changed.rows // 2, changed.rows - 1]
    _, found = opened.index.search(faiss_index.normalize(fs.store.read_vectors(changed, np.array(probe))), 1)
    assert found[:, 0].tolist() == probe  # each row found where the changed space holds it


@pytest.mark.parametrize("manifest", ["without a sample", "with a sample that differs"])
def test_a_manifest_without_a_usable_sample_takes_the_full_key_hash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, manifest: str
) -> None:
    """An index saved before ``key_samples`` existed (or one whose sample does not match while every key does)
    is trusted by the hash of every key, once: the refreshed manifest then names the merged segment and holds
    the right sample."""
    fs, rows = _store(tmp_path, 3)
    with fs.store.writer() as w:
        assert w.compact(max_segments=1)
    meta_path = Path(faiss_index.index_paths(fs.store, fs.space(FAKE, RECIPE))[1])
    meta = json.loads(meta_path.read_text())
    if manifest == "without a sample":
        del meta["key_samples"]
    else:
        meta["key_samples"]["keys_sha256"] = "0" * 64
    meta_path.write_text(json.dumps(meta))
    positions = faiss_index.sample_positions(meta["rows"])
    keys = fs.store.space_keys(fs.space(FAKE, RECIPE))[positions]
    right = {"positions": positions.tolist(), "keys_sha256": hashlib.sha256(keys.tobytes()).hexdigest()}
    calls = _count_space_keys(monkeypatch)
    res = FeatureStore(fs.path).similar(id=rows[10]["id"], k=5, model=FAKE, clean=RECIPE)
    assert res.index == "loaded" and res.hits[0].ids == [("d", rows[10]["id"])]
    assert len(calls) == 1  # the full hash, once (not again to save the refreshed manifest)
    assert _meta(fs)["key_samples"] == right
    res = FeatureStore(fs.path).similar(id=rows[20]["id"], k=5, model=FAKE, clean=RECIPE)
    assert res.index == "loaded" and len(calls) == 1  # the segments refreshed: trusted without any key read


def test_fs_check_still_hashes_every_key(tmp_path: Path) -> None:
    """``load_checked`` (``fs check``) hashes all the keys: a key that differs outside the sample is caught."""
    fs, _ = _store(tmp_path, 3)
    space = fs.space(FAKE, RECIPE)
    keys = fs.store.space_keys(space)
    assert faiss_index.load_checked(fs.store, space, keys)[1] == "loaded"
    unsampled = sorted(set(range(space.rows)) - set(faiss_index.sample_positions(space.rows).tolist()))
    assert len(unsampled) > space.rows // 2
    keys = keys.copy()
    keys[unsampled[len(unsampled) // 2]] = keys[0]
    assert faiss_index.load_checked(fs.store, space, keys) == (None, "rebuilt: index rows no longer match the store")


def test_sample_positions_are_spread_seeded_and_end_on_the_last_row() -> None:
    for rows in (1, 2, 65, 66, 1000, 1_000_000):
        p = faiss_index.sample_positions(rows)
        assert p[0] == 0 and p[-1] == rows - 1 and np.all(np.diff(p) > 0)
        assert len(p) <= min(rows, faiss_index.KEY_SAMPLES + 2) and (rows < 1000 or len(p) > faiss_index.KEY_SAMPLES)
        assert np.array_equal(p, faiss_index.sample_positions(rows))  # what a later process recomputes
    p = faiss_index.sample_positions(1_000_000)
    assert np.diff(p).max() < 2 * 1_000_000 // faiss_index.KEY_SAMPLES  # one in each stratum: no wide gap
    assert not np.array_equal(p[1:-1] % (1_000_000 // faiss_index.KEY_SAMPLES), np.zeros(len(p) - 2))  # jittered
