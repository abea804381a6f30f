"""The segment store: atomic commits, snapshots, chunked reads, dtype, names."""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import pytest

from featurestore.api import FeatureStore
from featurestore.errors import DatasetError, StoreError, StoreLockedError
from featurestore.storage.keys import raw_digest, text_key
from featurestore.storage.store import KeyBatch, RowBatch, Space, Store, VectorBatch, check_dataset_name
from tests.conftest import TRAIN_CSV
from tests.fakes import CountingEmbedder


def _space(dim: int = 4, dtype: str = "float32") -> Space:
    return Space("s" * 16, {"x": 1}, "fake", "raw-v1", dim, dtype)


def _keys(n: int, start: int = 0) -> np.ndarray:
    return np.array([text_key("raw-v1", f"t{i}") for i in range(start, start + n)], dtype="S32")


def _rows(ids: list[str]) -> RowBatch:
    texts = [f"text {i}" for i in ids]
    return RowBatch(
        np.array(ids, dtype=object),
        np.array([str(len(i) % 2) for i in ids], dtype=object),
        np.array([raw_digest(t) for t in texts], dtype="S32"),
        texts,
    )


def test_empty_store_snapshot(store: Store) -> None:
    snap = store.snapshot()
    assert snap.generation == 0 and not snap.spaces and not snap.datasets
    assert not store.path.exists()  # reading never creates the store


def test_commit_and_snapshot_round_trip(store: Store) -> None:
    rng = np.random.default_rng(0)
    vecs = rng.standard_normal((5, 4)).astype(np.float32)
    keys = _keys(5)
    with store.writer() as w:
        ids = np.array(["10", "011", "012", "abc", "99999999999999999999"], dtype=object)
        snap = w.commit(
            "d", vectors=VectorBatch(_space(), keys, vecs), rows=_rows(ids.tolist()), keys=KeyBatch("raw-v1", ids, keys)
        )
    assert snap.generation == 1
    again = Store(store.path).snapshot()  # a fresh reader
    assert again == snap
    space = again.spaces["s" * 16]
    assert space.rows == 5 and space.dim == 4
    np.testing.assert_array_equal(store.space_keys(space), keys)
    np.testing.assert_array_equal(store.read_vectors(space, np.array([4, 0, 4])), vecs[[4, 0, 4]])
    rows = store.dataset_rows(again.datasets["d"])
    assert rows["ids"].tolist() == ids.tolist()  # text, byte for byte: leading zeros, letters, any length
    assert rows["labels"].tolist() == ["0", "1", "1", "1", "0"]
    assert rows["texts"].tolist() == [f"text {i}" for i in ids]
    assert store.texts_for(again.datasets["d"], ["012", "10"]) == {"10": "text 10", "012": "text 012"}
    kid, k = store.dataset_keys(again.datasets["d"], "raw-v1")
    assert kid.tolist() == ids.tolist() and k.tolist() == keys.tolist()


def test_generations_grow_and_old_manifests_are_pruned(store: Store) -> None:
    with store.writer() as w:
        for g in range(5):
            w.commit(vectors=VectorBatch(_space(), _keys(2, 2 * g), np.ones((2, 4), np.float32)))
    assert store.manifest_generations() == [3, 4, 5]
    snap = store.snapshot()
    assert snap.generation == 5 and snap.spaces["s" * 16].rows == 10
    assert len(snap.spaces["s" * 16].segments) == 5


def test_reader_snapshot_is_frozen_while_writer_commits(store: Store) -> None:
    with store.writer() as w:
        w.commit(vectors=VectorBatch(_space(), _keys(2), np.zeros((2, 4), np.float32)))
    before = store.snapshot()
    with store.writer() as w:
        w.commit(vectors=VectorBatch(_space(), _keys(3, 2), np.ones((3, 4), np.float32)))
    # the old snapshot still reads exactly what it named
    assert before.spaces["s" * 16].rows == 2
    blocks = [b for _, b in store.iter_vectors(before.spaces["s" * 16])]
    np.testing.assert_array_equal(np.concatenate(blocks), np.zeros((2, 4)))
    assert store.snapshot().spaces["s" * 16].rows == 5


def test_failed_publish_leaves_readers_on_the_last_generation(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    with store.writer() as w:
        w.commit(vectors=VectorBatch(_space(), _keys(2), np.zeros((2, 4), np.float32)))
    files_before = set(os.listdir(store.segment_dir))

    from featurestore.storage import store as store_mod

    def boom(self, new):  # the process dies after writing segments, before the manifest
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store_mod.Writer, "_publish", boom)
    with pytest.raises(StoreError, match="nothing from this batch was committed"):
        with store.writer() as w:
            w.commit(vectors=VectorBatch(_space(), _keys(3, 2), np.ones((3, 4), np.float32)))
    monkeypatch.undo()
    snap = store.snapshot()
    assert snap.generation == 1 and snap.spaces["s" * 16].rows == 2
    assert set(os.listdir(store.segment_dir)) == files_before  # the batch's segment was removed


def test_orphan_segments_are_invisible_and_swept(store: Store) -> None:
    with store.writer() as w:
        w.commit(vectors=VectorBatch(_space(), _keys(2), np.zeros((2, 4), np.float32)))
    orphan = store.segment_dir / "seg-000099.h5"
    orphan.write_bytes(b"half written")
    (store.manifest_dir / ".tmp-abc").write_bytes(b"{")
    assert store.snapshot().generation == 1
    assert "seg-000099.h5" not in store.snapshot().files()
    with store.writer():
        pass
    assert not orphan.exists() and not (store.manifest_dir / ".tmp-abc").exists()


def test_corrupt_manifest_is_a_store_error(store: Store) -> None:
    with store.writer() as w:
        w.commit(vectors=VectorBatch(_space(), _keys(1), np.zeros((1, 4), np.float32)))
    path = store.manifest_path(1)
    path.write_bytes(path.read_bytes().replace(b'"generation": 1', b'"generation": 7'))
    with pytest.raises(StoreError, match="corrupt"):
        store.snapshot()


def test_second_writer_is_refused(store: Store) -> None:
    with store.writer():
        with pytest.raises(StoreLockedError, match="--wait"):
            with store.writer():
                pass


def test_iter_vectors_reads_in_chunks(store: Store) -> None:
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((7, 4)).astype(np.float32), rng.standard_normal((5, 4)).astype(np.float32)
    with store.writer() as w:
        w.commit(vectors=VectorBatch(_space(), _keys(7), a))
        w.commit(vectors=VectorBatch(_space(), _keys(5, 7), b))
    space = store.snapshot().spaces["s" * 16]
    chunks = list(store.iter_vectors(space, chunk_rows=3))
    assert [(first, len(block)) for first, block in chunks] == [(0, 3), (3, 3), (6, 1), (7, 3), (10, 2)]
    assert all(block.dtype == np.float32 for _, block in chunks)
    np.testing.assert_array_equal(np.concatenate([blk for _, blk in chunks]), np.concatenate([a, b]))


def test_float16_on_disk_float32_in_memory(store: Store) -> None:
    vecs = np.array([[0.1, 0.2, 0.3, 1.0], [1e-3, -2.5, 3.14159, 0.0]], np.float32)
    with store.writer() as w:
        w.commit(vectors=VectorBatch(_space(dtype="float16"), _keys(2), vecs))
    space = store.snapshot().spaces["s" * 16]
    with h5py.File(store.segment_path(space.segments[0].file), "r") as f:
        assert f["vectors"].dtype == np.float16
    out = store.read_vectors(space, np.array([0, 1]))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, vecs.astype(np.float16).astype(np.float32))
    block = next(store.iter_vectors(space))[1]
    assert block.dtype == np.float32


@pytest.mark.parametrize("name", ["../x", "a/b", "..", ".hidden", "", "a..b", "x" * 65, "a b", "a\\b"])
def test_invalid_dataset_names_are_rejected(store: Store, name: str) -> None:
    with pytest.raises(DatasetError, match="invalid dataset name"):
        check_dataset_name(name)
    with pytest.raises(DatasetError):
        with store.writer() as w:
            w.commit(dataset=name, rows=_rows(["1"]))
    assert store.snapshot().generation == 0


@pytest.mark.parametrize("name", ["train", "test-2024", "a.b_c", "x" * 64, "0"])
def test_valid_dataset_names(name: str) -> None:
    assert check_dataset_name(name) == name


def test_unknown_dataset_lists_known(store: Store) -> None:
    with store.writer() as w:
        w.commit(dataset="train", rows=_rows(["1"]))
    with pytest.raises(DatasetError, match="datasets: train"):
        store.dataset("nope")


def test_store_path_that_is_a_file(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(StoreError, match="is a file"):
        Store(f)
    with pytest.raises(StoreError, match="not writable"):
        with Store(f / "store").writer():
            pass


def test_duplicate_tweets_of_the_train_csv_share_one_vector(tmp_path: Path) -> None:
    """The bundled train set repeats one tweet under ids 506, 1839 and 6769: three ids, one vector."""
    fs = FeatureStore(tmp_path / "store")
    emb = CountingEmbedder()
    s = fs.ingest(str(TRAIN_CSV), "train", "fake", "raw-v1", embedder=emb, commit_rows=4096)
    assert (s.rows_read, s.new_ids, s.duplicates) == (7920, 7920, 0)
    assert s.embedded == 7918 and s.cache_hits == 2
    assert len(emb.inputs) == len(set(emb.inputs)) == 7918
    assert s.batches_committed == 2
    snap = fs.store.snapshot()
    space = fs.space("fake", "raw-v1")
    assert space.rows == 7918
    ids, keys = fs.store.dataset_keys(snap.datasets["train"], "raw-v1")
    assert len(ids) == 7920
    key_of = dict(zip(ids.tolist(), keys.tolist()))
    assert key_of["506"] == key_of["1839"] == key_of["6769"]
    X, y, xid = fs.xy("train", "fake", "raw-v1")
    assert X.shape == (7920, 16) and xid.tolist() == [str(i) for i in range(1, 7921)]
    pos = {i: j for j, i in enumerate(xid.tolist())}
    np.testing.assert_array_equal(X[pos["506"]], X[pos["6769"]])
    assert (y == "1").sum() == 2026


V1_STORE = Path(__file__).parent / "data" / "store-v1"  # written by featurestore 0.1.0 (schema 1, int64 ids)


def test_schema_1_store_reads_as_text_and_takes_new_rows(tmp_path: Path) -> None:
    """A store written by the first release keeps working: int ids and labels read as text, label -1 as none;
    a new ingest adds schema-2 segments beside the old ones, and compaction merges both kinds."""
    import json
    import shutil

    from featurestore.check import check

    shutil.copytree(V1_STORE, tmp_path / "store")
    fs = FeatureStore(tmp_path / "store")
    gens = fs.store.manifest_generations()
    assert json.loads(fs.store.manifest_path(gens[-1]).read_text())["schema"] == 1
    rows = fs.rows("train")
    assert rows["ids"].tolist() == ["1", "123", "42"]  # 0.1.0 had parsed '000123' as 123
    assert rows["labels"].tolist() == ["0", "1", "0"]
    assert fs.rows("more")["labels"].tolist() == [""]
    X, y, ids = fs.xy("train", "py:tests.fakes:CountingEmbedder", "raw-v1")
    assert X.shape == (3, 16) and y.tolist() == ["0", "1", "0"]
    from tests.conftest import write_csv

    src = write_csv(
        tmp_path / "new.csv",
        [
            {"id": "000123", "label": "pos", "tweet": "a new tweet"},
            {"id": "42", "label": "1", "tweet": "another tweet about sony"},
        ],
    )
    s = fs.ingest(str(src), "train", "py:tests.fakes:CountingEmbedder", "raw-v1", embedder=CountingEmbedder())
    assert (s.new_ids, s.duplicates, s.labels_changed) == (1, 1, 1)
    assert json.loads(fs.store.manifest_path(fs.store.manifest_generations()[-1]).read_text())["schema"] == 2
    rows = fs.rows("train")
    assert rows["ids"].tolist() == ["1", "123", "42", "000123"]
    assert rows["labels"].tolist() == ["0", "1", "1", "pos"]
    with fs.store.writer() as w:
        assert w.compact(max_segments=1)
    assert fs.rows("train")["ids"].tolist() == ["1", "123", "42", "000123"]
    assert fs.rows("train")["labels"].tolist() == ["0", "1", "1", "pos"]
    assert check(fs.store).ok


def test_gc_frees_what_compaction_superseded_and_keeps_the_data(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cli.main import app
    from featurestore.check import check

    fs = FeatureStore(tmp_path / "store")
    rows = [f"{i},{i % 2},tweet {i}" for i in range(40)]
    (tmp_path / "t.csv").write_text("id,label,tweet\n" + "\n".join(rows) + "\n")
    fs.ingest(str(tmp_path / "t.csv"), "d", "fake", "raw-v1", embedder=CountingEmbedder(), commit_rows=2)
    segs = fs.store.segment_dir
    before = sorted(os.listdir(segs))
    live = fs.store.snapshot().files()
    assert len(before) > len(live)  # compaction's superseded segments are still on disk
    X_before, _, _ = fs.xy("d", "fake", "raw-v1")
    r = CliRunner().invoke(app, ["gc", "--store", str(fs.path)])
    assert r.exit_code == 0 and "removed" in r.stdout, r.output
    assert sorted(os.listdir(segs)) == sorted(live)
    assert len(fs.store.manifest_generations()) == 1
    X_after, _, _ = fs.xy("d", "fake", "raw-v1")
    np.testing.assert_array_equal(X_before, X_after)
    assert check(fs.store).ok
    r = CliRunner().invoke(app, ["gc", "--keep", "0", "--store", str(fs.path)])
    assert r.exit_code == 1 and "--keep must be at least 1" in r.stderr


def test_a_reader_reuses_the_latest_manifest_while_its_file_is_the_same(tmp_path: Path) -> None:
    import dataclasses
    import json

    fs = FeatureStore(tmp_path / "s")
    fs.ingest(str(TRAIN_CSV), "a", "py:tests.fakes:CountingEmbedder")
    reader = Store(tmp_path / "s")
    first = reader.snapshot()
    assert reader.snapshot() is first  # a server's every query: no re-read, no re-parse
    fs.ingest(str(TRAIN_CSV), "b", "py:tests.fakes:CountingEmbedder")
    newer = reader.snapshot()
    assert newer.generation > first.generation and set(newer.datasets) == {"a", "b"}
    # The same generation's file replaced (what a repair may do): read again.
    path = reader.manifest_path(newer.generation)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(dataclasses.replace(first, generation=newer.generation).to_json()))
    os.replace(tmp, path)
    assert set(reader.snapshot().datasets) == {"a"}


def test_compaction_merges_by_size_tiers_not_the_whole_store() -> None:
    from featurestore.storage.store import MAX_SEGMENTS, merge_plan

    assert merge_plan([500] * 3) == []  # too few of one tier
    assert merge_plan([500] * 4) == [(0, 4)]
    assert merge_plan([2000] * 3 + [500] * 4) == [(3, 7), (0, 4)]  # cascades: 4 x 500 -> 2000, then 4 x 2000
    big = [65_126] * 16 + [16_854]  # a million rows in 17 segments (a store compacted by the old policy)
    assert merge_plan(big + [500] * 4) == [(17, 21)]  # the new rows merge, the million is not rewritten
    assert merge_plan([7] * (MAX_SEGMENTS + 1), fanout=1000) == [(0, MAX_SEGMENTS + 1)]  # past the cap: merged
    assert merge_plan([65_536] * 16) == []  # a bulk load's full commits stay as they are ...
    assert merge_plan([65_126] * 15 + [16_854]) == []  # ... and the vectors of their distinct texts
    over = merge_plan([65_536] * MAX_SEGMENTS + [500])  # past the cap: the newest full ones of one tier merge
    assert over == [(MAX_SEGMENTS - 4, MAX_SEGMENTS)]
    segs, rewritten = [], 0
    for _ in range(2000):  # a million rows in commits of 500
        segs.append(500)
        for start, end in merge_plan(segs):
            rewritten += sum(segs[start:end])
            segs[start:end] = [sum(segs[start:end])]
    assert sum(segs) == 1_000_000 and len(segs) <= 16
    assert rewritten / 1_000_000 < 6  # each row rewritten a few times (merging all past 16: 62 times)
