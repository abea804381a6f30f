"""Cold queries through the key tables beside the index (``index/keys-*.npy``): a new process names hits
exactly as full scans of the key columns do, reading no whole key column, across appends (the tables are
extended), compactions (rebuilt), label updates, repeated texts, cache entries and stale or corrupt table
files (rebuilt, never trusted); ``info`` answers from recorded summaries while the segments are unchanged."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from featurestore.api import FeatureStore
from featurestore.inputs.sources import NO_LABEL
from featurestore.query import search
from featurestore.sklearn import StoreEmbedder
from featurestore.storage import lookups
from featurestore.storage.store import Store
from tests.conftest import FAKE, train_rows, write_csv
from tests.fakes import CountingEmbedder

RECIPE = "raw-v1"
NEW = [f"a text no dataset holds, number {i}, about chargers" for i in range(12)]


def truth(store: Store, hit_ids: list[tuple[str, str]]) -> dict[str, Any]:
    """From full reads of every column: per (dataset, id) hit owner, every (dataset, id) with the same key in
    storage order, and the first one's raw text and current label; and the space's unowned keys."""
    snap = store.snapshot()
    (space,) = snap.spaces.values()
    owners: dict[bytes, list[tuple[str, str]]] = {}
    key_of: dict[tuple[str, str], bytes] = {}
    for d in snap.datasets.values():
        ids, keys = store.dataset_keys(d, RECIPE)
        for i, k in zip(ids.tolist(), keys.tolist()):
            owners.setdefault(k, []).append((d.name, i))
            key_of.setdefault((d.name, i), k)
    named: dict[tuple[str, str], tuple[str, str]] = {}
    for d in snap.datasets.values():
        rows = store.dataset_rows(d)
        for i, text, label in zip(rows["ids"].tolist(), rows["texts"].tolist(), rows["labels"].tolist()):
            named.setdefault((d.name, i), (text, label))
    unowned = {k for k in store.space_keys(space).tolist() if k not in owners}
    return {
        "hits": {o: (owners[key_of[o]], *named[owners[key_of[o]][0]]) for o in hit_ids},
        "unowned": unowned,
        "key_of": key_of,
    }


def queries(fs: FeatureStore, texts: list[str], ids: list[str]) -> list[list[tuple[Any, ...]]]:
    out = [fs.similar(texts=texts, k=6, model=FAKE, clean=RECIPE)]
    out += [[fs.similar(id=i, k=6, model=FAKE, clean=RECIPE)] for i in ids]
    return [[(h.ids, h.text, h.label, round(h.score, 5)) for h in r.hits] for res in out for r in res]


def check_cold(path: Path, texts: list[str], ids: list[str]) -> list[list[tuple[Any, ...]]]:
    """A new process's answers (key tables) equal a server's (whole key columns held) and full scans."""
    cold = queries(FeatureStore(path), texts, ids)
    held = FeatureStore(path)
    held._search.hold()
    assert cold == queries(held, texts, ids)
    store = Store(path)
    want = truth(store, [h[0][0] for per in cold for h in per])
    for per in cold:
        assert per, "every query has hits"
        for owners, text, label, _ in per:
            assert (owners, text, label) == want["hits"][owners[0]]
    again = queries(FeatureStore(path), texts, ids)  # from the saved tables this time
    assert again == cold
    return cold


def key_table_meta(path: Path, name: str) -> dict[str, Any]:
    return json.loads((path / "index" / f"keys-{name}.json").read_text())


def space_id(path: Path) -> str:
    (sid,) = Store(path).snapshot().spaces
    return sid


def test_key_tables_answer_like_full_scans_across_appends_compactions_and_labels(tmp_path: Path) -> None:
    rows = train_rows(240)
    path = tmp_path / "s"
    fs = FeatureStore(path)
    first = rows[:120] + [dict(r, id=f"dup-{r['id']}") for r in rows[:12]]  # 12 texts owned by two rows each
    fs.ingest(str(write_csv(tmp_path / "a.csv", first)), "train", FAKE, RECIPE, commit_rows=32)
    StoreEmbedder(fs, model=FAKE, recipe=RECIPE, embedder=CountingEmbedder()).fit(NEW).transform(NEW)
    texts = [rows[3]["tweet"], NEW[0], rows[60]["tweet"], "charging my phone"]
    ids = [rows[5]["id"], "dup-" + rows[7]["id"], rows[100]["id"]]
    cold = check_cold(path, texts, ids)
    assert any(len(h[0]) == 2 for per in cold for h in per)  # a repeated text names both its rows
    sid = space_id(path)
    snap = Store(path).snapshot()
    assert key_table_meta(path, f"spacekeys-{sid}")["segments"] == [[s.file, s.rows] for s in snap.spaces[sid].segments]

    # Appended segments: the saved tables cover a prefix and are extended (no rebuild of what they cover).
    before = key_table_meta(path, f"train-{RECIPE}")["segments"]
    fs.ingest(str(write_csv(tmp_path / "b.csv", rows[120:200])), "train", FAKE, RECIPE, commit_rows=32)
    fs.ingest(str(write_csv(tmp_path / "c.csv", rows[200:])), "other", FAKE, RECIPE)
    after = [[s.file, s.rows] for s in Store(path).snapshot().datasets["train"].keys[RECIPE]]
    common = next((n for n, (a, b) in enumerate(zip(before, after)) if a != b), min(len(before), len(after)))
    assert common > 0 and len(after) > common  # a prefix kept, newer segments (some merged) past it
    check_cold(path, texts + [rows[210]["tweet"]], ids + [rows[150]["id"], rows[230]["id"]])
    assert key_table_meta(path, f"train-{RECIPE}")["segments"] == after

    # Label updates: the latest label of each hit, found through the update segments' id table.
    relabel = [dict(r, label="7") for r in rows[:40]]
    fs.ingest(str(write_csv(tmp_path / "l1.csv", relabel)), "train", FAKE, RECIPE)
    fs.ingest(str(write_csv(tmp_path / "l2.csv", [dict(r, label="9") for r in rows[:10]])), "train", FAKE, RECIPE)
    labelled = check_cold(path, texts, ids)
    assert {h[2] for per in labelled for h in per} & {"7", "9"}

    # A full compaction renames every segment: the tables are rebuilt, not extended.
    with Store(path).writer() as w:
        assert w.compact(max_segments=1)
    check_cold(path, texts, ids)
    snap = Store(path).snapshot()
    assert key_table_meta(path, f"spacekeys-{sid}")["segments"] == [[s.file, s.rows] for s in snap.spaces[sid].segments]


def test_a_cold_query_reads_no_whole_key_column(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = train_rows(150)
    path = tmp_path / "s"
    FeatureStore(path).ingest(str(write_csv(tmp_path / "a.csv", rows)), "train", FAKE, RECIPE, commit_rows=40)
    want = queries(FeatureStore(path), [rows[1]["tweet"]], [rows[2]["id"]])  # builds and saves the tables

    def whole_column(*args: Any) -> Any:
        raise AssertionError("a whole key column was read")

    monkeypatch.setattr(search.SegmentLookups, "segment_keys", whole_column)
    monkeypatch.setattr(Store, "space_keys", whole_column)
    monkeypatch.setattr(Store, "dataset_keys", whole_column)
    saved: list[int] = []
    monkeypatch.setattr(search, "save_tables", lambda pending: saved.append(len(pending)))
    assert queries(FeatureStore(path), [rows[1]["tweet"]], [rows[2]["id"]]) == want
    assert saved and not any(saved)  # every table was the saved one, mapped: nothing built, nothing to save


@pytest.mark.parametrize("damage", ["truncated", "flipped", "stale", "no-digest", "other-format"])
def test_a_damaged_or_stale_key_table_is_rebuilt_not_trusted(tmp_path: Path, damage: str) -> None:
    rows = train_rows(120)
    path = tmp_path / "s"
    fs = FeatureStore(path)
    fs.ingest(str(write_csv(tmp_path / "a.csv", rows)), "train", FAKE, RECIPE, commit_rows=40)
    texts, ids = [rows[4]["tweet"], rows[90]["tweet"]], [rows[8]["id"], rows[70]["id"]]
    want = queries(FeatureStore(path), texts, ids)
    name = f"spacekeys-{space_id(path)}"
    data, meta_path = lookups.table_paths(Store(path), name, lookups.KEYS)
    good, good_meta = data.read_bytes(), meta_path.read_text()
    array = np.load(data)
    if damage == "truncated":
        data.write_bytes(good[: len(good) // 2])
    elif damage == "flipped":  # rows pointing elsewhere: the file's bytes no longer match its digest
        wrong = array.copy()
        wrong[:, 1] = wrong[::-1, 1]
        data.write_bytes(lookups._npy_bytes(wrong))
    else:
        meta = json.loads(meta_path.read_text())
        if damage == "stale":  # a table of other segments (another store's, or before a repair)
            meta["segments"] = [[f + "x", r] for f, r in meta["segments"]]
        elif damage == "no-digest":
            del meta["digest"]
        else:
            meta["format"] = lookups.KEY_TABLE_FORMAT + 1
        meta_path.write_text(json.dumps(meta))
    assert queries(FeatureStore(path), texts, ids) == want
    assert data.read_bytes() == good and meta_path.read_text() == good_meta  # rebuilt and saved again


def test_info_answers_from_recorded_summaries_while_the_segments_hold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = train_rows(100)
    path = tmp_path / "s"
    fs = FeatureStore(path)
    fs.ingest(str(write_csv(tmp_path / "a.csv", rows[:60])), "train", FAKE, RECIPE, commit_rows=25)
    StoreEmbedder(fs, model=FAKE, recipe=RECIPE, embedder=CountingEmbedder()).fit(NEW).transform(NEW)
    first = FeatureStore(path).info()  # counted by scans, recorded
    (space,) = first["spaces"]
    assert (space["coverage"], space["cache_entries"]) == ({"train": 60}, len(NEW))

    def per_row(*args: Any) -> Any:
        raise AssertionError("info read per-row data")

    with monkeypatch.context() as m:
        for method in ("space_keys", "dataset_keys", "dataset_labels", "dataset_column", "label_updates"):
            m.setattr(Store, method, per_row)
        assert FeatureStore(path).info() == first
    for name in (f"usage-{space['id']}", "labels-train"):  # a summary of the right segments that reads wrong
        summary = path / "index" / f"{name}.json"
        meta = json.loads(summary.read_text())
        summary.write_text(json.dumps(dict(meta, values={"coverage": 3})))
    assert FeatureStore(path).info() == first

    # New segments (rows owning a cache entry's text, label updates): counted again, equal to a scan's.
    more = [{"id": "m1", "label": "x", "tweet": NEW[0]}] + [dict(r, label="5") for r in rows[:30]]
    fs.ingest(str(write_csv(tmp_path / "b.csv", more + rows[60:])), "more", FAKE, RECIPE)
    fs.ingest(str(write_csv(tmp_path / "c.csv", [dict(r, label="8") for r in rows[:20]])), "train", FAKE, RECIPE)
    info = FeatureStore(path).info()
    (space,) = info["spaces"]
    assert space["coverage"] == {"train": 60, "more": 71} and space["cache_entries"] == len(NEW) - 1
    store = Store(path)
    for d in info["datasets"]:
        labels = store.dataset_labels(store.snapshot().datasets[d["name"]])
        assert d["labelled"] == int((labels != NO_LABEL).sum())
        assert d["classes"] == sorted(set(labels.tolist()) - {NO_LABEL})[:20]
    assert "8" in next(d for d in info["datasets"] if d["name"] == "train")["classes"]


def test_a_short_tail_is_looked_up_beside_the_saved_key_table_not_merged_into_it(tmp_path: Path) -> None:
    rows = train_rows(158)
    path = tmp_path / "s"
    fs = FeatureStore(path)
    fs.ingest(str(write_csv(tmp_path / "a.csv", rows[:150])), "train", FAKE, RECIPE)
    texts, ids = [rows[3]["tweet"], rows[152]["tweet"]], [rows[9]["id"], rows[155]["id"]]
    check_cold(path, texts[:1], ids[:1])  # builds and saves the tables
    name = f"spacekeys-{space_id(path)}"
    saved = key_table_meta(path, name)
    fs.ingest(str(write_csv(tmp_path / "b.csv", rows[150:])), "train", FAKE, RECIPE)  # 8 rows: under 1/16
    answers = check_cold(path, texts, ids)
    assert answers[-1][0][0] == [("train", rows[155]["id"])]  # a tail row, found by its id
    assert answers[0][0][0][0] == ("train", rows[3]["id"]) and answers[1][0][0][0] == ("train", rows[152]["id"])
    assert key_table_meta(path, name) == saved  # the tail is hashed by each process, the table not rewritten


def test_a_server_looks_many_keys_up_in_one_merged_table_of_the_full_segments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server's restriction of a dataset looks all its keys up at once: in one merged table of the space's
    full segments (and the newer ones beside it), with the rows a segment-by-segment lookup gives."""
    rows = train_rows(300)
    fs = FeatureStore(tmp_path / "s")
    fs.ingest(str(write_csv(tmp_path / "a.csv", rows)), "train", FAKE, "raw-v1", commit_rows=40)
    space = fs.space(FAKE, "raw-v1")
    assert len(space.segments) > 4
    keys = fs.store.space_keys(space)
    wanted = np.concatenate([keys[::-1], np.array([b"f" * 32], dtype=keys.dtype)])  # one key the space lacks
    want = search.SegmentLookups(packed=False).rows_of_keys(fs.store, space, wanted)
    assert want.tolist() == list(range(len(keys)))[::-1] + [-1]
    monkeypatch.setattr(search, "FULL_ROWS", 40)  # the first segments count as full
    monkeypatch.setattr(search, "MERGE_TAIL", 1)
    held = search.SegmentLookups(packed=True)
    assert held.rows_of_keys(fs.store, space, wanted).tolist() == want.tolist()
    merged = held.merged(space.segments[0].file)
    assert merged is not None and 1 < len(merged[0]) <= len(space.segments)
