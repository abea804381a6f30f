"""An ingest at 10M rows (issue 24): what grows with the input must not be the cost of a commit or the disk.

Compaction runs during the ingest once a kind passes MAX_SEGMENTS, so every manifest it publishes names a bounded
number of segments; superseded segments go as soon as no kept manifest names them; a fast model's chunks grow
after the first GROW_AFTER_ROWS rows (a slow one's never do); the keys a space holds are a ``KeySet`` of 16 B a key.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

from featurestore import FeatureStore
from featurestore.ingestion import ingest as ingest_module
from featurestore.spaces import KeySet
from featurestore.storage import store as store_module
from featurestore.storage.keys import KEY_DTYPE
from featurestore.storage.store import RowBatch, Store, Writer
from tests.conftest import write_csv
from tests.fakes import CountingEmbedder


def _csv(path: Path, n: int) -> Path:
    return write_csv(path, [{"id": str(i), "label": str(i % 2), "tweet": f"tweet number {i}"} for i in range(n)])


def _keys(n: int, salt: str = "") -> np.ndarray:
    return np.array([hashlib.blake2b(f"{salt}{i}".encode(), digest_size=16).hexdigest() for i in range(n)], KEY_DTYPE)


def test_keyset_answers_as_a_set_does() -> None:
    keys = _keys(5000)
    held, ref = KeySet(), set()
    for start in range(0, 4200, 300):  # parts of many sizes, merged as they come
        chunk = keys[start : start + 300]
        assert held.contains(chunk).tolist() == [k in ref for k in chunk.tolist()]
        held.add(chunk)
        ref.update(chunk.tolist())
    probe = np.concatenate([keys, _keys(500, "other")])
    assert held.contains(probe).tolist() == [k in ref for k in probe.tolist()] and len(held) == len(ref) == 4200
    # Keys that share their first 64 bits are told apart by the rest.
    twins = np.array([b"0" * 16 + b"a" * 16, b"0" * 16 + b"b" * 16, b"0" * 16 + b"c" * 16], KEY_DTYPE)
    copy = held.copy()
    copy.add(twins[:2])
    assert copy.contains(twins).tolist() == [True, True, False] and not held.contains(twins).any()


def _published(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The longest segment list of every generation the writers publish."""
    longest: list[int] = []
    publish = Writer._publish

    def record(self: Writer, new) -> None:  # type: ignore[no-untyped-def]
        longest.append(new.longest_list())
        publish(self, new)

    monkeypatch.setattr(Writer, "_publish", record)
    return longest


def test_the_manifest_and_the_disk_stay_bounded_during_an_ingest(tmp_path: Path, monkeypatch) -> None:
    longest = _published(monkeypatch)
    monkeypatch.setattr(store_module, "SUPERSEDED_GRACE_S", 0.0)
    monkeypatch.setattr(ingest_module, "MAX_SEGMENTS", 8)  # MAX_SEGMENTS of one kind, as 32 would do at 150 rows
    fs = FeatureStore(tmp_path / "store")
    csv = _csv(tmp_path / "in.csv", 40)
    s = fs.ingest(str(csv), "d", "fake", "raw-v1", embedder=CountingEmbedder(), commit_rows=1)
    assert s.batches_committed == 40 and s.timings["compact"] > 0
    # Compacting only at the end, the last commit's manifest named 40 segments of each kind.
    assert max(longest) == 8 + 1
    store = Store(fs.path)
    snap = store.snapshot()
    on_disk = set(os.listdir(store.segment_dir))
    assert on_disk == store.kept_files(snap)  # nothing superseded beyond what the kept manifests name
    assert len(on_disk) < 40  # 3 x 40 commit segments, and their merges, were written
    rows = store.dataset_rows(snap.datasets["d"])
    assert rows["ids"].tolist() == [str(i) for i in range(40)]
    assert rows["texts"].tolist() == [f"tweet number {i}" for i in range(40)]
    X, _, ids = fs.xy("d", "fake", "raw-v1")
    assert ids.tolist() == [str(i) for i in range(40)] and np.isfinite(X).all()


@pytest.mark.parametrize("grace", [0.0, 3600.0])
def test_superseded_segments_go_once_no_kept_manifest_names_them(tmp_path: Path, monkeypatch, grace: float) -> None:
    monkeypatch.setattr(store_module, "SUPERSEDED_GRACE_S", grace)
    store = Store(tmp_path / "store")
    with store.writer() as w:
        for i in range(6):
            w.commit("d", rows=RowBatch(np.array([str(i)], object), np.array([""], object), _keys(1, str(i)), ["x"]))
        sources = w.snap.files()
        assert w.compact(max_segments=1)
        for i in range(6, 7):  # the compaction, then this: the generation before it is still kept
            w.commit("d", rows=RowBatch(np.array([str(i)], object), np.array([""], object), _keys(1, str(i)), ["x"]))
        assert sources <= set(os.listdir(store.segment_dir))  # a kept manifest still names them
        w.commit("d", rows=RowBatch(np.array(["7"], object), np.array([""], object), _keys(1, "7"), ["x"]))
        # gone, unless a reader may still be reading the generation it took before the compaction
        assert sources & set(os.listdir(store.segment_dir)) == (sources if grace else set())
    assert store.dataset_ids(store.snapshot().datasets["d"]).tolist() == [str(i) for i in range(8)]


def test_a_merge_copies_texts_of_one_length_in_chunks(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    with store.writer() as w:
        for part in range(3):  # every text 7 characters long: h5py refuses a plain slice assignment of them
            ids = np.array([f"{part}-{i}" for i in range(5)], object)
            texts = [f"text {part}{i}" for i in range(5)]
            w.commit("d", rows=RowBatch(ids, np.full(5, "", object), _keys(5, str(part)), texts))
        assert w.compact(max_segments=1)
    ds = store.snapshot().datasets["d"]
    assert len(ds.rows) == 1
    assert store.dataset_texts(ds).tolist() == [f"text {p}{i}" for p in range(3) for i in range(5)]


def _sizes(tmp_path: Path, monkeypatch, fast: bool) -> list[int]:
    monkeypatch.setattr(ingest_module, "GROW_AFTER_ROWS", 2048)
    monkeypatch.setattr(ingest_module, "MAX_GROWN_ROWS", 4096)
    # Every cycle counts as fast, or as slow: the sizes then do not depend on this machine's speed.
    monkeypatch.setattr(ingest_module, "FAST_CYCLE_S", float("inf") if fast else -1.0)
    monkeypatch.setattr(ingest_module, "SLOW_CYCLE_S", float("inf") if fast else 0.0)
    emb = CountingEmbedder(max_batch_size=1 << 16, max_batch_tokens=1 << 20)
    fs = FeatureStore(tmp_path / "store")
    s = fs.ingest(str(_csv(tmp_path / "in.csv", 16000)), "d", "fake", "raw-v1", embedder=emb)
    sizes = [len(b) for b in emb.batches]
    assert sum(sizes) == s.embedded == 16000
    return sizes


def test_a_fast_models_chunks_grow_after_the_first_rows(tmp_path: Path, monkeypatch) -> None:
    sizes = _sizes(tmp_path, monkeypatch, fast=True)
    # Two chunks are prepared ahead of each commit, so a size shows three chunks after the commit that chose it.
    assert sizes[:7] == [1024] * 4 + [2048] * 3 and sizes[7:-1] == [4096] * (len(sizes) - 8)


def test_a_slow_models_chunks_stay_at_1024_rows(tmp_path: Path, monkeypatch) -> None:
    sizes = _sizes(tmp_path, monkeypatch, fast=False)
    assert sizes == [1024] * 15 + [640]


def test_merge_plan_can_leave_full_segments_alone() -> None:
    from featurestore.storage.store import FULL_ROWS, merge_plan

    rows = [FULL_ROWS * 2] * 40 + [1] * 3
    assert merge_plan(rows, max_segments=32, merge_full=False) == []
    assert merge_plan(rows, max_segments=32)  # the store's own policy merges them to stay under 32
    assert merge_plan([FULL_ROWS * 2] * 40 + [1] * 6, max_segments=32, merge_full=False) == [(42, 46)]
