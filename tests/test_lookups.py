"""Id tables' hash and format: golden hash values of ``lookups.ID_HASH``, the same in every process and on every
path (few ids, many ids, the UTF-8 bytes a segment stores), and tables of the previous format rebuilt, not trusted."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from featurestore.query import search
from featurestore.storage import lookups
from featurestore.storage.store import Store
from tests.conftest import run_python

# id -> ID_HASH ("fnv1a64-splitmix64"). A change of any of these values changes every saved id table: it needs a
# new ID_HASH and ID_TABLE_FORMAT, so that older tables are rebuilt (see the next tests).
GOLDEN = {
    "": 0xF52A15E9A9B5E89B,
    "0": 0x8BD66332999B4192,
    "a": 0x02C0BDBF481420F8,
    "foobar": 0x404DA9E3B74078C2,
    "1234567890123456789": 0x26E9830E0C4D1B82,  # a tweet id
    "000123": 0xC1478B51BA1A9B2A,  # not the same id as "123"
    "u1f4z": 0xB276A9A8CA2FBEE2,
    "café": 0xE0C13FFC340B758F,
    "日本": 0xB7F4CA9E3B0A2F06,
    "😀": 0xBDBDDAF83DFF6570,
    "a\x00": 0xD0137A57D0EF408F,  # a trailing NUL is part of the id
    "\ud83d": 0x9545381F15E5BBD2,  # a lone surrogate, hashed from its surrogatepass bytes as keys.py encodes
}


def reference_hash(text: str) -> int:
    """ID_HASH written from its definition (lookups' docstring), one byte at a time."""
    h = 0xCBF29CE484222325  # FNV-1a 64
    for byte in text.encode("utf-8", "surrogatepass"):
        h = ((h ^ byte) * 0x100000001B3) % 2**64
    h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) % 2**64  # splitmix64's finaliser
    h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) % 2**64
    return h ^ (h >> 31)


def test_fnv1a_reference_matches_the_published_vectors() -> None:
    def fnv1a64(data: bytes) -> int:
        h = 0xCBF29CE484222325
        for byte in data:
            h = ((h ^ byte) * 0x100000001B3) % 2**64
        return h

    # the FNV authors' test vectors (http://www.isthe.com/chongo/tech/comp/fnv/)
    assert [fnv1a64(b) for b in (b"", b"a", b"foobar")] == [0xCBF29CE484222325, 0xAF63DC4C8601EC8C, 0x85944171F73967E8]
    assert all(reference_hash(i) == h for i, h in GOLDEN.items())


def test_id_hashes_are_the_golden_values_on_every_path() -> None:
    ids = list(GOLDEN)
    want = list(GOLDEN.values())
    assert lookups.id_hashes(ids).dtype == np.uint64
    assert lookups.id_hashes(ids).tolist() == want  # a query's few ids: one at a time in Python
    many = lookups.FEW_IDS // len(ids) + 1  # more than FEW_IDS: the NumPy path
    assert lookups.id_hashes(ids * many).tolist() == want * many
    assert lookups.id_hashes(np.array(ids * many, dtype=object)).tolist() == want * many
    stored = np.empty(len(ids) * many, dtype=object)  # as h5py reads a segment's ids: UTF-8 bytes, hashed undecoded
    stored[:] = [i.encode("utf-8", "surrogatepass") for i in ids * many]
    assert lookups.column_hashes(stored).tolist() == want * many
    assert lookups.column_hashes(stored[: len(ids)]).tolist() == want
    assert lookups.column_hashes(np.array([123, 0], dtype=np.int64)).tolist() == [reference_hash("123"), want[1]]
    assert lookups.id_hashes([]).tolist() == [] and lookups.column_hashes(stored[:0]).tolist() == []


def test_id_hashes_of_many_random_ids_match_the_reference() -> None:
    """Lengths 0-300 (the NumPy path pads a pass to its longest id), ASCII and not, NULs and surrogates."""
    rng = np.random.default_rng(3)
    alphabet = [chr(c) for c in [0, *range(32, 127), *range(160, 800), *range(0x3040, 0x30FF), 0x1F600, 0xDC80]]
    ids = ["".join(rng.choice(alphabet, int(n))) for n in rng.integers(0, 40, 3000)] + ["x" * 300, "9" * 19]
    want = [reference_hash(i) for i in ids]
    assert lookups.id_hashes(ids).tolist() == want
    assert np.concatenate([lookups.id_hashes(ids[i : i + 5]) for i in range(0, len(ids), 5)]).tolist() == want
    stored = np.empty(len(ids), dtype=object)
    stored[:] = [i.encode("utf-8", "surrogatepass") for i in ids]
    assert lookups.column_hashes(stored).tolist() == want


def test_id_hashes_are_the_same_in_another_process() -> None:
    """No per-process seed (Python's ``hash`` of str has one): a table saved by one process serves the next."""
    code = "from featurestore.storage.lookups import id_hashes; print(id_hashes({ids!r}).tolist())"
    env = dict(os.environ, PYTHONHASHSEED="12345")
    assert json.loads(run_python(code.format(ids=list(GOLDEN)), env=env)) == list(GOLDEN.values())


IDS_V1_STORE = Path(__file__).parent / "data" / "store-ids-v1"


@pytest.mark.parametrize("packed", [False, True], ids=["cli", "server"])
def test_id_tables_of_the_previous_format_are_rebuilt(tmp_path: Path, packed: bool) -> None:
    """tests/data/store-ids-v1 was written by the code before this format (git 0b3e0c5, id tables of format 1:
    pandas' ``hash_array``): from ``git archive 0b3e0c5 featurestore tests | tar -x`` run in that copy, a
    ``FeatureStore`` ingest of the first 200 rows of the bundled train CSV as dataset ``train`` (FAKE model,
    raw-v1), with ids of six kinds (19-digit numbers, short alphanumerics, accented, CJK, emoji, zero-padded
    numbers), then one query by id, which saved both id tables; the FAISS index files were removed.

    Its tables name the right segments and row counts, so only their format tells them apart: read as they
    are, their hashes would find no id. Each is rebuilt and saved as format 2, and every id is found."""
    shutil.copytree(IDS_V1_STORE, tmp_path / "s")
    index = tmp_path / "s" / "index"
    tables = ("train-rows", "train-keys-raw-v1")
    assert [json.loads((index / f"ids-{t}.json").read_text())["format"] for t in tables] == [1, 1]
    store = Store(tmp_path / "s")
    ds = store.snapshot().datasets["train"]
    ids = store.dataset_ids(ds).tolist()
    key_ids, _ = store.dataset_keys(ds, "raw-v1")
    assert len(ids) == 200 and any(not i.isascii() for i in ids)

    cache = search.SearchCache(packed=packed)
    found = cache.find_ids(store, ds.rows, "train-rows", [*ids, "missing"])
    assert found.tolist() == [*range(len(ids)), -1]
    found = cache.find_ids(store, ds.keys["raw-v1"], "train-keys-raw-v1", key_ids.tolist())
    assert found.tolist() == list(range(len(key_ids)))
    cache.save_tables()
    for t in tables:
        meta = json.loads((index / f"ids-{t}.json").read_text())
        assert meta == {"format": 2, "hash": "fnv1a64-splitmix64", "segments": meta["segments"]}
        assert (meta["format"], meta["hash"]) == (lookups.ID_TABLE_FORMAT, lookups.ID_HASH)
        saved = np.load(index / f"ids-{t}.npy")
        assert saved.dtype == np.uint64 and saved.shape == (200, 2) and np.all(np.diff(saved[:, 0]) >= 0)

    cold = search.SearchCache()  # the next process takes the rebuilt tables as they are: nothing to hash or save
    assert len(cold.ids_table(store, ds.rows, "train-rows").parts) == 1 and not cold.id_tables.pending
    assert cold.find_ids(store, ds.rows, "train-rows", ids[::-1]).tolist() == list(range(len(ids)))[::-1]
