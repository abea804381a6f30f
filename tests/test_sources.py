"""Input files: every format, and a clear message for every bad input, before the store is touched."""
from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from cli.main import app
from featurestore.api import FeatureStore
from featurestore.errors import InputFileError
from featurestore.sources import read_table
from tests.conftest import FAKE

EXPECTED_TEXTS = ["I love my #iphone", "battery died, again", "ok \U0001F600"]


def _check(table, ids=(1, 2, 3), labels=(0, 1, 0), texts=EXPECTED_TEXTS) -> None:
    assert table.ids.tolist() == list(ids)
    assert table.labels.tolist() == list(labels)
    assert table.texts == list(texts)
    assert table.rows_read == len(ids) and table.duplicate_rows == 0


def test_csv(tmp_path: Path) -> None:
    p = tmp_path / "in.csv"
    pd.DataFrame({"id": [1, 2, 3], "label": [0, 1, 0], "tweet": EXPECTED_TEXTS}).to_csv(p, index=False)
    t = read_table(str(p))
    _check(t)
    assert t.has_labels and t.source == str(p)


def test_tsv(tmp_path: Path) -> None:
    p = tmp_path / "in.tsv"
    pd.DataFrame({"id": [1, 2, 3], "label": [0, 1, 0], "text": EXPECTED_TEXTS}).to_csv(p, sep="\t", index=False)
    _check(read_table(str(p)))


def test_jsonl(tmp_path: Path) -> None:
    p = tmp_path / "in.jsonl"
    recs = [{"id": i, "label": lab, "text": t} for i, lab, t in zip([1, 2, 3], [0, 1, 0], EXPECTED_TEXTS)]
    p.write_text("\n".join(json.dumps(r) for r in recs) + "\n\n", encoding="utf-8")
    _check(read_table(str(p)))


def test_parquet(tmp_path: Path) -> None:
    p = tmp_path / "in.parquet"
    pd.DataFrame({"id": [1, 2, 3], "label": [0, 1, 0], "tweet": EXPECTED_TEXTS}).to_parquet(p, engine="pyarrow")
    _check(read_table(str(p)))
    # detected from the bytes when the extension says nothing
    q = tmp_path / "noext"
    q.write_bytes(p.read_bytes())
    _check(read_table(str(q)))


def test_txt_numbers_lines_and_skips_blank_ones(tmp_path: Path) -> None:
    p = tmp_path / "in.txt"
    p.write_text("first tweet\n\nsecond, with a comma\n", encoding="utf-8")
    t = read_table(str(p))
    assert t.ids.tolist() == [1, 3] and t.texts == ["first tweet", "second, with a comma"]
    assert t.labels.tolist() == [-1, -1] and not t.has_labels


def test_stdin_read_table(monkeypatch: pytest.MonkeyPatch) -> None:
    data = "id,tweet\n5,from a pipe\n6,another\n".encode()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    t = read_table("-")
    assert t.source == "standard input" and t.ids.tolist() == [5, 6] and t.texts == ["from a pipe", "another"]


def test_stdin_through_the_cli(tmp_path: Path) -> None:
    r = CliRunner().invoke(
        app, ["ingest", "-", "--dataset", "piped", "--model", FAKE, "--clean", "raw-v1", "--store", str(tmp_path / "s")],
        input='{"text": "one from stdin"}\n{"text": "two from stdin"}\n',
    )
    assert r.exit_code == 0, r.output
    assert "rows read 2  new ids 2" in r.output
    rows = FeatureStore(tmp_path / "s").rows("piped")
    assert rows["ids"].tolist() == [1, 2] and rows["texts"].tolist() == ["one from stdin", "two from stdin"]


def test_explicit_columns_and_format(tmp_path: Path) -> None:
    p = tmp_path / "data.dat"
    p.write_text("key\tbody\ty\n10\thello\t1\n11\tworld\t0\n", encoding="utf-8")
    t = read_table(str(p), text_col="body", id_col="key", label_col="y", fmt="tsv")
    assert t.ids.tolist() == [10, 11] and t.texts == ["hello", "world"] and t.labels.tolist() == [1, 0]
    # '' ignores a column: ids become row numbers, labels absent
    t2 = read_table(str(p), text_col="body", id_col="", label_col="", fmt="tsv")
    assert t2.ids.tolist() == [1, 2] and t2.labels.tolist() == [-1, -1] and not t2.has_labels


def test_float_ids_that_are_integers_are_accepted(tmp_path: Path) -> None:
    p = tmp_path / "in.csv"
    p.write_text("id,tweet\n1.0,a\n 2 ,b\n", encoding="utf-8")
    assert read_table(str(p)).ids.tolist() == [1, 2]


# ---------------------------------------------------------------- errors


def _err(path: Path | str, **kw) -> str:
    with pytest.raises(InputFileError) as err:
        read_table(str(path), **kw)
    return str(err.value)


def test_missing_file(tmp_path: Path) -> None:
    assert "does not exist" in _err(tmp_path / "nope.csv")


def test_directory(tmp_path: Path) -> None:
    assert "is a directory" in _err(tmp_path)


def test_empty_file(tmp_path: Path) -> None:
    p = tmp_path / "empty.csv"
    p.write_bytes(b"")
    assert "is empty" in _err(p)
    p.write_bytes(b" \n\n")
    assert "is empty" in _err(p)


def test_header_only(tmp_path: Path) -> None:
    p = tmp_path / "h.csv"
    p.write_text("id,label,tweet\n")
    assert "has a header but no rows" in _err(p)


def test_missing_text_column_names_the_columns_found(tmp_path: Path) -> None:
    p = tmp_path / "c.csv"
    p.write_text("id,label,message\n1,0,hi\n")
    msg = _err(p)
    assert "no text column" in msg and "columns found: id, label, message" in msg and "--text-col" in msg


def test_missing_requested_columns(tmp_path: Path) -> None:
    p = tmp_path / "c.csv"
    p.write_text("id,label,tweet\n1,0,hi\n")
    msg = _err(p, id_col="tweet_id")
    assert "no id column 'tweet_id'" in msg and "columns found: id, label, tweet" in msg and "--id-col" in msg
    assert "no label column 'y'" in _err(p, label_col="y")
    assert "no text column 'body'" in _err(p, text_col="body")


def test_non_integer_id(tmp_path: Path) -> None:
    p = tmp_path / "c.csv"
    p.write_text("id,tweet\n1,a\nabc,b\n")
    msg = _err(p)
    assert "row 2: id 'abc' is not an integer" in msg and "--id-col ''" in msg
    p.write_text("id,tweet\n1.5,a\n")
    assert "id '1.5' is not an integer" in _err(p)


def test_empty_label(tmp_path: Path) -> None:
    p = tmp_path / "c.csv"
    p.write_text("id,label,tweet\n1,0,a\n2,,b\n")
    msg = _err(p)
    assert "row 2: label is empty" in msg and "--label-col ''" in msg


def test_nan_label_in_parquet_and_jsonl(tmp_path: Path) -> None:
    p = tmp_path / "c.parquet"
    pd.DataFrame({"id": [1, 2], "label": [0.0, np.nan], "text": ["a", "b"]}).to_parquet(p)
    assert "row 2: label is empty" in _err(p)
    j = tmp_path / "c.jsonl"
    j.write_text('{"id": 1, "label": 1, "text": "a"}\n{"id": 2, "label": null, "text": "b"}\n')
    assert "row 2: label is empty" in _err(j)


def test_negative_and_text_labels(tmp_path: Path) -> None:
    p = tmp_path / "c.csv"
    p.write_text("id,label,tweet\n1,-1,a\n")
    assert "label is '-1'" in _err(p)
    p.write_text("id,label,tweet\n1,pos,a\n")
    assert "label is 'pos'" in _err(p)


def test_nan_text_is_an_empty_text(tmp_path: Path) -> None:
    p = tmp_path / "c.parquet"
    pd.DataFrame({"id": [1, 2], "text": ["a", None]}).to_parquet(p)
    assert read_table(str(p)).texts == ["a", ""]


def test_undecodable_bytes_name_the_line(tmp_path: Path) -> None:
    p = tmp_path / "latin.csv"
    p.write_bytes("id,tweet\n1,fine\n2,caf\u00e9 au lait\n".encode("latin-1"))
    msg = _err(p)
    assert "line 3" in msg and "not valid utf-8" in msg and "--encoding" in msg
    assert read_table(str(p), encoding="latin-1").texts == ["fine", "caf\u00e9 au lait"]
    assert "unknown --encoding" in _err(p, encoding="no-such-codec")


def test_bad_jsonl_line(tmp_path: Path) -> None:
    p = tmp_path / "c.jsonl"
    p.write_text('{"text": "a"}\n{"text": oops}\n')
    assert "line 2 is not valid JSON" in _err(p)
    p.write_text('{"text": "a"}\n[1, 2]\n')
    assert "line 2 is not a JSON object" in _err(p)


def test_corrupt_parquet(tmp_path: Path) -> None:
    p = tmp_path / "c.parquet"
    p.write_bytes(b"PAR1 this is not parquet")
    assert "not a readable Parquet file" in _err(p)


def test_unknown_format(tmp_path: Path) -> None:
    p = tmp_path / "c.csv"
    p.write_text("text\na\n")
    assert "unknown input format 'xml'" in _err(p, fmt="xml")


def test_bom_is_not_part_of_the_header(tmp_path: Path) -> None:
    p = tmp_path / "bom.csv"
    p.write_bytes("\ufeffid,label,tweet\n1,1,hello\n".encode("utf-8"))
    t = read_table(str(p))
    assert t.ids.tolist() == [1] and t.texts == ["hello"] and t.labels.tolist() == [1]


def test_quoted_newlines_stay_in_the_text(tmp_path: Path) -> None:
    p = tmp_path / "q.csv"
    p.write_text('id,tweet\n1,"line one\nline two, with ""quotes"""\n2,plain\n', encoding="utf-8")
    t = read_table(str(p))
    assert t.texts == ['line one\nline two, with "quotes"', "plain"] and t.ids.tolist() == [1, 2]


def test_nul_bytes_are_preserved_through_the_store(tmp_path: Path) -> None:
    p = tmp_path / "nul.csv"
    p.write_bytes(b"id,tweet\n1,before\x00after\n2,plain\n")
    t = read_table(str(p))
    assert t.texts == ["before\x00after", "plain"]
    from tests.fakes import CountingEmbedder

    fs = FeatureStore(tmp_path / "store")
    emb = CountingEmbedder()
    fs.ingest(str(p), "d", "fake", "raw-v1", embedder=emb)
    assert "before\x00after" in emb.inputs
    assert fs.rows("d")["texts"].tolist() == ["before\x00after", "plain"]


def test_duplicate_ids_with_different_labels(tmp_path: Path) -> None:
    p = tmp_path / "c.csv"
    p.write_text("id,label,tweet\n1,0,same\n1,1,same\n")
    assert "rows 1 and 2 repeat id 1 with different labels" in _err(p)


def test_three_rows_one_id(tmp_path: Path) -> None:
    p = tmp_path / "c.csv"
    p.write_text("id,tweet\n4,a\n5,b\n4,a\n4,a\n")
    t = read_table(str(p))
    assert t.ids.tolist() == [4, 5] and t.duplicate_rows == 2 and t.rows_read == 4
    p.write_text("id,tweet\n4,a\n5,b\n4,a\n4,c\n")
    assert "rows 1 and 4 share id 4 with different texts" in _err(p)
