"""`fs export` streamed (issue 24): the same files as the whole-dataset export wrote, a bounded number of rows at a
time (Parquet row groups of EXPORT_ROWS rows; .npy files written a block at a time)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from featurestore import api
from featurestore.api import FeatureStore
from featurestore.errors import DatasetError
from tests.conftest import train_rows, write_csv
from tests.fakes import BagOfWordsEmbedder
from tests.test_train_stream import mixed_store


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> FeatureStore:
    return mixed_store(tmp_path_factory.mktemp("mixed"))


def _parquet_as_before(fs: FeatureStore, recipe: str) -> bytes:
    """What export wrote before it streamed: the whole frame as one table, one pq.write_table."""
    df = fs.frame("mix", "fake", recipe)
    table = pa.table(
        {
            "id": pa.array(df["id"].tolist(), pa.string()),
            "label": pa.array(df["label"].tolist(), pa.string()),
            "text": pa.array(df["text"].tolist(), pa.string()),
            "vector": pa.FixedSizeListArray.from_arrays(
                pa.array(np.stack(df["vector"].to_list()).reshape(-1), pa.float32()), df.attrs["dim"]
            ),
        }
    ).replace_schema_metadata({k: str(v) for k, v in df.attrs.items()})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


@pytest.mark.parametrize("recipe", ["raw-v1", "basic-v1"])
def test_parquet_is_the_file_the_whole_dataset_export_wrote(mixed: FeatureStore, tmp_path: Path, recipe: str) -> None:
    out = tmp_path / "t.parquet"
    seen: list[tuple[float, int]] = []
    assert mixed.export("mix", out, model="fake", clean=recipe, progress=lambda n, t: seen.append((n, t))) == [out]
    assert out.read_bytes() == _parquet_as_before(mixed, recipe)
    assert seen == [(0, 90), (90, 90)]


def test_many_row_groups_hold_the_same_table(mixed: FeatureStore, tmp_path: Path, monkeypatch) -> None:
    one = tmp_path / "one.parquet"
    mixed.export("mix", one, model="fake", clean="raw-v1")
    monkeypatch.setattr(api, "EXPORT_ROWS", 16)
    seen: list[tuple[float, int]] = []
    many = tmp_path / "many.parquet"
    mixed.export("mix", many, model="fake", clean="raw-v1", progress=lambda n, t: seen.append((n, t)))
    f = pq.ParquetFile(many)
    assert f.metadata.num_row_groups == 6 and [f.metadata.row_group(i).num_rows for i in range(6)] == [16] * 5 + [10]
    assert pq.ParquetFile(one).metadata.num_row_groups == 1
    a, b = pq.read_table(one), pq.read_table(many)
    assert a.equals(b) and a.schema.metadata == b.schema.metadata and a.num_rows == 90
    assert seen[0] == (0, 90) and [n for n, _ in seen[1:]] == [16] * 5 + [10]


@pytest.mark.parametrize("rows", [16, 65536])
def test_npy_files_hold_what_the_whole_dataset_export_wrote(
    mixed: FeatureStore, tmp_path: Path, monkeypatch, rows
) -> None:
    monkeypatch.setattr(api, "EXPORT_ROWS", rows)
    written = mixed.export("mix", tmp_path / "npy", "npy", model="fake", clean="raw-v1")
    assert [p.name for p in written] == ["vectors.npy", "ids.npy", "labels.npy", "texts.npy"]
    df = mixed.frame("mix", "fake", "raw-v1")
    expect = {
        "vectors": np.stack(df["vector"].to_list()),
        "ids": np.array(df["id"].tolist(), dtype=str),
        "labels": np.array(df["label"].tolist(), dtype=str),
        "texts": np.array(df["text"].tolist(), dtype=str),
    }
    for key, arr in expect.items():
        buf = io.BytesIO()
        np.save(buf, arr, allow_pickle=False)
        assert (tmp_path / "npy" / f"{key}.npy").read_bytes() == buf.getvalue(), key  # header and dtype included


def test_a_row_without_a_vector_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    fs = FeatureStore(tmp_path / "store")
    rows = train_rows(40)
    fs.ingest(str(write_csv(tmp_path / "a.csv", rows[:30])), "mix", "fake", "raw-v1", embedder=BagOfWordsEmbedder())
    fs.ingest(str(write_csv(tmp_path / "b.csv", rows)), "mix", "fake", "basic-v1", embedder=BagOfWordsEmbedder())
    out = tmp_path / "t.parquet"
    out.write_bytes(b"old")
    with pytest.raises(DatasetError, match="10 of 40 rows of dataset 'mix' have no vector"):
        fs.export("mix", out, model="fake", clean="raw-v1")
    assert out.read_bytes() == b"old"
    with pytest.raises(DatasetError):
        fs.export("mix", tmp_path / "npy", "npy", model="fake", clean="raw-v1")
    assert not (tmp_path / "npy" / "vectors.npy").exists()
