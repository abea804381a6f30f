"""Input files as users bring them: every format, ids and labels kept as text, and one clear
``InputFileError`` for every bad input (never a traceback), before the store is touched."""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from featurestore.errors import InputFileError
from featurestore.inputs.sources import NO_LABEL, Table, read_table
from featurestore.storage.keys import raw_digest

EXPECTED_TEXTS = ["I love my #iphone", "battery died, again", "ok \U0001f600"]
# Characters str.splitlines() breaks on but a tweet may contain: U+2028, U+2029, NEL, VT, FF.
ODD_BREAKS = "a\u2028b\u2029c\x85d\x0be\x0cf"


def _check(table: Table, ids=("1", "2", "3"), labels=("0", "1", "0"), texts=EXPECTED_TEXTS) -> None:
    assert table.ids.dtype == object and table.labels.dtype == object
    assert all(type(i) is str for i in table.ids) and all(type(lab) is str for lab in table.labels)
    assert table.ids.tolist() == list(ids)
    assert table.labels.tolist() == list(labels)
    assert table.texts == list(texts)
    assert table.digests.tolist() == [raw_digest(t) for t in texts]
    assert table.rows_read == len(ids) and table.duplicate_rows == 0


def _write(path: Path, content: str | bytes) -> Path:
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8", newline="")
    else:
        path.write_bytes(content)
    return path


def _err(path: Path | str, **kw) -> str:
    with pytest.raises(InputFileError) as err:
        read_table(str(path), **kw)
    msg = str(err.value)
    assert "\n" not in msg, "messages are one line"
    return msg


def _stdin(monkeypatch: pytest.MonkeyPatch, data: bytes) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))


CSV = 'id,label,tweet\n1,0,I love my #iphone\n2,1,"battery died, again"\n3,0,ok \U0001f600\n'


# ---------------------------------------------------------------- formats


def test_csv(tmp_path: Path) -> None:
    p = tmp_path / "in.csv"
    pd.DataFrame({"id": [1, 2, 3], "label": [0, 1, 0], "tweet": EXPECTED_TEXTS}).to_csv(p, index=False)
    t = read_table(str(p))
    _check(t)
    assert t.has_labels and t.source == str(p)
    assert (t.id_column, t.label_column, t.text_column) == ("id", "label", "tweet")
    assert t.format == "csv (','-separated)" and t.replaced_chars == 0


def test_tsv(tmp_path: Path) -> None:
    p = tmp_path / "in.tsv"
    pd.DataFrame({"id": [1, 2, 3], "label": [0, 1, 0], "text": EXPECTED_TEXTS}).to_csv(p, sep="\t", index=False)
    _check(read_table(str(p)))


@pytest.mark.parametrize("sep, name", [(";", "';'"), ("\t", "tab"), ("|", "'|'")])
def test_separator_is_sniffed(tmp_path: Path, sep: str, name: str) -> None:
    p = tmp_path / "in.csv"  # the extension says csv; the content says otherwise
    rows = [
        ["id", "label", "tweet"],
        ["1", "0", EXPECTED_TEXTS[0]],
        ["2", "1", EXPECTED_TEXTS[1]],
        ["3", "0", EXPECTED_TEXTS[2]],
    ]
    _write(p, "".join(sep.join(r) + "\n" for r in rows))
    t = read_table(str(p))
    _check(t)
    assert t.format == f"csv ({name}-separated)"


def test_semicolons_inside_a_comma_file_and_explicit_sep(tmp_path: Path) -> None:
    p = _write(tmp_path / "in.csv", 'id;label;tweet\n1;0;hello, world\n2;1;"a;b"\n')
    t = read_table(str(p))
    assert t.texts == ["hello, world", "a;b"] and t.labels.tolist() == ["0", "1"]
    q = _write(tmp_path / "c.csv", "id,label,tweet\n1,0,hello; world\n")
    assert read_table(str(q)).texts == ["hello; world"]
    # sep overrides the guess; "tab" and "\t" spell a tab
    r = _write(tmp_path / "r.dat", "tweet|id\nx,y|7\n")
    assert read_table(str(r), sep="|").ids.tolist() == ["7"]
    assert read_table(str(_write(tmp_path / "t.dat", "tweet\tid\nx\t8\n")), sep="tab").ids.tolist() == ["8"]
    assert "sep must be one character" in _err(r, sep="||")
    # Excel's "sep=;" first line names the separator and is not the header
    e = _write(tmp_path / "excel.csv", "sep=;\r\nid;tweet\r\n1;a,b\r\n")
    assert read_table(str(e)).texts == ["a,b"]


def test_extra_field_is_an_error_not_silently_dropped(tmp_path: Path) -> None:
    p = _write(tmp_path / "in.csv", "id;label;tweet\n1;0;hello; world\n")
    msg = _err(p)
    assert "line 2 has 4 fields where the header has 3" in msg and "';' occurs in a field that is not quoted" in msg
    assert read_table(str(_write(p, 'id;label;tweet\n1;0;"hello; world"\n'))).texts == ["hello; world"]


def test_jsonl(tmp_path: Path) -> None:
    p = tmp_path / "in.jsonl"
    recs = [{"id": i, "label": lab, "text": t} for i, lab, t in zip([1, 2, 3], [0, 1, 0], EXPECTED_TEXTS)]
    p.write_text("\n".join(json.dumps(r) for r in recs) + "\n\n", encoding="utf-8")
    t = read_table(str(p))
    _check(t)
    assert t.format == "jsonl"


def test_json_array_file(tmp_path: Path) -> None:
    recs = [{"id": i, "label": lab, "text": t} for i, lab, t in zip([1, 2, 3], [0, 1, 0], EXPECTED_TEXTS)]
    p = _write(tmp_path / "in.json", json.dumps(recs, indent=2))
    t = read_table(str(p))
    _check(t)
    assert t.format == "json array"
    # the same bytes without an extension are recognised by the leading '['
    _check(read_table(str(_write(tmp_path / "noext", p.read_bytes()))))
    # an API-style wrapper, pretty-printed: the records under its one list
    q = _write(tmp_path / "api.json", json.dumps({"data": recs, "meta": {"result_count": 3}}, indent=2))
    _check(read_table(str(q)))
    assert "item 2 of the JSON array is not an object" in _err(_write(tmp_path / "bad.json", '[{"text": "a"}, 3]'))
    assert "is not valid JSON" in _err(_write(tmp_path / "broken.json", '[{"text": "a"},'))


def test_parquet(tmp_path: Path) -> None:
    p = tmp_path / "in.parquet"
    pd.DataFrame({"id": [1, 2, 3], "label": [0, 1, 0], "tweet": EXPECTED_TEXTS}).to_parquet(p, engine="pyarrow")
    _check(read_table(str(p)))
    # detected from the bytes when the extension says nothing, or says something else
    _check(read_table(str(_write(tmp_path / "noext", p.read_bytes()))))
    _check(read_table(str(_write(tmp_path / "wrong.csv", p.read_bytes()))))


def test_txt_numbers_lines_and_skips_blank_ones(tmp_path: Path) -> None:
    p = _write(tmp_path / "in.txt", "first tweet\n\nsecond, with a comma\n")
    t = read_table(str(p))
    assert t.ids.tolist() == ["1", "3"] and t.texts == ["first tweet", "second, with a comma"]
    assert t.labels.tolist() == [NO_LABEL, NO_LABEL] and NO_LABEL == "" and not t.has_labels
    assert t.id_column is None and t.label_column is None and t.format == "txt"
    assert "no columns for label_col" in _err(p, label_col="label")


def test_stdin_read_table(monkeypatch: pytest.MonkeyPatch) -> None:
    _stdin(monkeypatch, b"id,tweet\n5,from a pipe\n6,another\n")
    t = read_table("-")
    assert t.source == "standard input" and t.ids.tolist() == ["5", "6"] and t.texts == ["from a pipe", "another"]
    _stdin(monkeypatch, b'{"text": "one"}\n{"text": "two"}\n')
    t = read_table("-")
    assert t.ids.tolist() == ["1", "2"] and t.id_column is None and t.format == "jsonl"


def test_stdin_plain_tweets_suggest_format_txt(monkeypatch: pytest.MonkeyPatch) -> None:
    _stdin(monkeypatch, "I love my #iphone, really\nbattery died again\nok \U0001f600\n".encode())
    with pytest.raises(InputFileError) as err:
        read_table("-")
    assert "fmt txt" in str(err.value)
    _stdin(monkeypatch, b"I love my #iphone, really\nbattery died again\n")
    assert read_table("-", fmt="txt").texts == ["I love my #iphone, really", "battery died again"]


# ---------------------------------------------------------------- compression


@pytest.mark.parametrize("pack, kind", [(gzip.compress, "gzip"), (bz2.compress, "bz2"), (lzma.compress, "xz")])
def test_compressed_csv_found_by_magic_bytes(tmp_path: Path, pack, kind: str) -> None:
    data = pack(CSV.encode())
    t = read_table(str(_write(tmp_path / f"in.csv.{kind}", data)))
    _check(t)
    assert t.format == f"csv (','-separated, {kind})"
    # named like a plain CSV: the magic bytes still tell
    _check(read_table(str(_write(tmp_path / "plain.csv", data))))


def test_gzipped_jsonl_by_inner_extension(tmp_path: Path) -> None:
    lines = "\n".join(
        json.dumps({"id": i, "label": lab, "text": t}) for i, lab, t in zip([1, 2, 3], [0, 1, 0], EXPECTED_TEXTS)
    )
    t = read_table(str(_write(tmp_path / "in.jsonl.gz", gzip.compress(lines.encode()))))
    _check(t)
    assert t.format == "jsonl (gzip)"


def test_corrupt_gzip(tmp_path: Path) -> None:
    msg = _err(_write(tmp_path / "in.csv.gz", gzip.compress(CSV.encode())[:25]))
    assert "looks gzip-compressed but cannot be decompressed" in msg


def test_zstd_without_the_package_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "zstandard", None)  # import fails as if not installed
    msg = _err(_write(tmp_path / "in.csv.zst", b"\x28\xb5\x2f\xfd" + b"\x00" * 20))
    assert "zstd-compressed" in msg and "pip install zstandard" in msg


def test_zstd(tmp_path: Path) -> None:
    zstandard = pytest.importorskip("zstandard")
    _check(read_table(str(_write(tmp_path / "in.csv.zst", zstandard.ZstdCompressor().compress(CSV.encode())))))


# ---------------------------------------------------------------- ids and labels are text


def test_ids_are_kept_exactly_as_text(tmp_path: Path) -> None:
    p = _write(
        tmp_path / "in.csv", "id,tweet\n000123,a\n123,b\na1b2,c\n12345678901234567890123,d\n99999999999999999999,e\n"
    )
    t = read_table(str(p))
    assert t.ids.tolist() == ["000123", "123", "a1b2", "12345678901234567890123", "99999999999999999999"]
    assert t.duplicate_rows == 0  # 000123 and 123 are two ids


def test_json_numbers_keep_their_literal_text(tmp_path: Path) -> None:
    p = _write(
        tmp_path / "in.jsonl",
        '{"id": 1234567890123459999.5, "label": 1, "text": "a"}\n'
        '{"id": 99999999999999999999, "label": 2, "text": "b"}\n'
        '{"id": "000123", "label": null, "text": "c"}\n',
    )
    t = read_table(str(p))
    assert t.ids.tolist() == ["1234567890123459999.5", "99999999999999999999", "000123"]
    assert t.labels.tolist() == ["1", "2", ""]
    # a JSON boolean label is "true"/"false"; beside the number 1 it would be a second spelling of one class
    q = _write(tmp_path / "b.jsonl", '{"label": true, "text": "a"}\n{"label": false, "text": "b"}\n')
    assert read_table(str(q)).labels.tolist() == ["true", "false"]


@pytest.mark.parametrize("rounded", ["1.23457E+18", "1.2e18", "1,23457E+18"])
def test_spreadsheet_rounded_ids_are_refused(tmp_path: Path, rounded: str) -> None:
    p = _write(tmp_path / "in.csv", f'id,tweet\n1,a\n"{rounded}",b\n')
    msg = _err(p)
    assert "row 2" in msg and "scientific notation" in msg and "spreadsheet" in msg and "Text" in msg


def test_empty_id_names_the_row(tmp_path: Path) -> None:
    msg = _err(_write(tmp_path / "in.csv", "id,tweet\n1,a\n  ,b\n"))
    assert "row 2: the id is empty" in msg and "id_col ''" in msg
    msg = _err(_write(tmp_path / "in.jsonl", '{"id": 1, "text": "a"}\n\n{"text": "b"}\n'))
    assert "line 3 has no 'id' key" in msg and "id_col ''" in msg
    assert "line 2: the id is empty" in _err(
        _write(tmp_path / "n.jsonl", '{"id": 1, "text": "a"}\n{"id": null, "text": "b"}\n')
    )
    assert "line 1: the id is a JSON list" in _err(_write(tmp_path / "l.jsonl", '{"id": [1], "text": "a"}\n'))


def test_parquet_ids_and_labels(tmp_path: Path) -> None:
    p = tmp_path / "in.parquet"
    # pandas stores an int column with a gap as float: labels 1.0 / NaN become "1" / ""
    pd.DataFrame({"id": [7, 12345678901234567], "label": [1.0, np.nan], "text": ["a", None]}).to_parquet(p)
    t = read_table(str(p))
    assert t.ids.tolist() == ["7", "12345678901234567"] and t.labels.tolist() == ["1", ""]
    assert t.texts == ["a", ""]  # a missing text is an empty text
    pd.DataFrame({"id": [1.0, 2.0], "label": ["pos", "neg"], "text": ["a", "b"]}).to_parquet(p)
    t = read_table(str(p))
    assert t.ids.tolist() == ["1", "2"] and t.labels.tolist() == ["pos", "neg"]
    pd.DataFrame({"id": [1.0, 2.0**60], "text": ["a", "b"]}).to_parquet(p)
    msg = _err(p)
    assert "row 2" in msg and "floating-point" in msg and "rounds ids" in msg
    pd.DataFrame({"id": [1, 2], "text": [3, 4]}).to_parquet(p)
    assert "holds int64 values, not text" in _err(p)


def test_labels_are_text_and_may_be_missing(tmp_path: Path) -> None:
    p = _write(tmp_path / "in.csv", "id,label,tweet\n1,pos,a\n2,,b\n3,2,c\n4,neg,d\n")
    t = read_table(str(p))
    assert t.labels.tolist() == ["pos", "", "2", "neg"] and t.has_labels
    j = _write(tmp_path / "in.jsonl", '{"label": 1, "text": "a"}\n{"label": null, "text": "b"}\n{"text": "c"}\n')
    assert read_table(str(j)).labels.tolist() == ["1", "", ""]


# ---------------------------------------------------------------- columns


def test_columns_match_case_insensitively(tmp_path: Path) -> None:
    p = _write(tmp_path / "in.csv", "ID,Label,Tweet\n1,0,a\n")
    t = read_table(str(p))
    assert (t.id_column, t.label_column, t.text_column) == ("ID", "Label", "Tweet")
    q = _write(tmp_path / "q.csv", "Tweet_ID,Sentiment,Body\n9,neg,a\n")
    t = read_table(str(q), text_col="Body")  # one column given: the others are still detected
    assert (t.id_column, t.label_column, t.text_column) == ("Tweet_ID", "Sentiment", "Body")
    assert t.ids.tolist() == ["9"] and t.labels.tolist() == ["neg"]
    t = read_table(str(q), text_col="body", label_col="SENTIMENT")  # explicit names too
    assert (t.label_column, t.text_column) == ("Sentiment", "Body")
    r = _write(tmp_path / "r.csv", " Tweet Id ,airline-sentiment,Full Text\n5,positive,hi\n")
    t = read_table(str(r))
    assert (t.id_column, t.label_column, t.text_column) == (" Tweet Id ", "airline-sentiment", "Full Text")


def test_explicit_columns_and_format(tmp_path: Path) -> None:
    p = _write(tmp_path / "data.dat", "key\tbody\ty\n10\thello\t1\n11\tworld\t0\n")
    t = read_table(str(p), text_col="body", id_col="key", label_col="y", fmt="tsv")
    assert t.ids.tolist() == ["10", "11"] and t.texts == ["hello", "world"] and t.labels.tolist() == ["1", "0"]
    # '' ignores a column: ids become row numbers, labels absent
    t2 = read_table(str(p), text_col="body", id_col="", label_col="", fmt="tsv")
    assert t2.ids.tolist() == ["1", "2"] and t2.labels.tolist() == ["", ""] and not t2.has_labels
    assert t2.id_column is None and t2.label_column is None


def test_single_column_is_the_text(tmp_path: Path) -> None:
    t = read_table(str(_write(tmp_path / "in.csv", "Tweets\nhello, world\nsecond\n")))
    assert t.texts == ["hello, world", "second"] and t.text_column == "Tweets" and t.format == "csv (one column)"


def test_single_unknown_column_is_never_guessed(tmp_path: Path) -> None:
    """Its first line may be a header or the first tweet: either guess could lose or invent a tweet."""
    p = _write(tmp_path / "in.csv", "just a tweet\nand another one\n")
    msg = _err(p)
    assert "has one column, headed just a tweet" in msg and "text_col 'just a tweet'" in msg and "fmt txt" in msg
    assert read_table(str(p), text_col="just a tweet").texts == ["and another one"]
    assert read_table(str(p), fmt="txt").texts == ["just a tweet", "and another one"]


def test_no_header(tmp_path: Path) -> None:
    p = _write(tmp_path / "in.csv", '1,0,I love my #iphone\n2,1,"battery died, again"\n3,0,ok \U0001f600\n')
    msg = _err(p)  # the first row is not dropped as a header: it is refused
    assert "header=False" in msg and "looks like data" in msg
    assert "has 3 columns and no header" in _err(p, header=False)
    t = read_table(str(p), header=False, text_col="3", id_col="1", label_col="2")
    _check(t)
    assert t.format == "csv (','-separated, no header)" and t.text_column == "3"
    t = read_table(str(_write(tmp_path / "one.csv", "just one tweet\nand another\n")), header=False)
    assert t.texts == ["just one tweet", "and another"] and t.ids.tolist() == ["1", "2"]


def test_missing_text_column_names_the_columns_found(tmp_path: Path) -> None:
    p = _write(tmp_path / "c.csv", "id,label,note\n1,0,hi\n")
    msg = _err(p)
    assert "no text column" in msg and "columns found: id, label, note" in msg and "text_col" in msg


def test_missing_requested_columns(tmp_path: Path) -> None:
    p = _write(tmp_path / "c.csv", "id,label,tweet\n1,0,hi\n")
    msg = _err(p, id_col="status")
    assert "no id column 'status'" in msg and "columns found: id, label, tweet" in msg and "id_col" in msg
    assert "no label column 'y'" in _err(p, label_col="y")
    assert "no text column 'body'" in _err(p, text_col="body")


# ---------------------------------------------------------------- duplicates


def test_exact_repeats_are_kept_once(tmp_path: Path) -> None:
    p = _write(tmp_path / "c.csv", "id,tweet\n4,a\n5,b\n4,a\n4,a\n")
    t = read_table(str(p))
    assert t.ids.tolist() == ["4", "5"] and t.duplicate_rows == 2 and t.rows_read == 4


def test_duplicate_ids_with_different_texts_or_labels(tmp_path: Path) -> None:
    p = _write(tmp_path / "c.csv", "id,tweet\n4,a\n5,b\n4,a\n4,c\n")
    msg = _err(p)
    assert "rows 1 and 4 share id '4' with different texts" in msg and "duplicates first|last" in msg
    q = _write(tmp_path / "l.csv", "id,label,tweet\n1,0,same\n1,1,same\n")
    assert "rows 1 and 2 share id '1' with different labels" in _err(q)


def test_duplicates_first_and_last(tmp_path: Path) -> None:
    p = _write(tmp_path / "c.csv", "id,label,tweet\n4,pos,a\n5,neg,b\n4,neg,c\n4,pos,a\n6,pos,d\n")
    t = read_table(str(p), duplicates="first")
    assert (
        t.ids.tolist() == ["4", "5", "6"] and t.texts == ["a", "b", "d"] and t.labels.tolist() == ["pos", "neg", "pos"]
    )
    assert t.duplicate_rows == 2 and t.rows_read == 5
    t = read_table(str(p), duplicates="last")  # the last row wins, at its own position
    assert (
        t.ids.tolist() == ["5", "4", "6"] and t.texts == ["b", "a", "d"] and t.labels.tolist() == ["neg", "pos", "pos"]
    )
    assert t.duplicate_rows == 2
    assert "unknown duplicates 'keep'; use one of: error, first, last" in _err(p, duplicates="keep")


def test_duplicates_in_a_large_file(tmp_path: Path) -> None:
    """100k rows, 10k of them repeats (the pandas path of read_table); its speed is bench/startup.py's to show."""
    n = 100_000
    ids = np.arange(n) % 90_000
    texts = [f"tweet number {i}, with #tag" for i in ids]
    p = tmp_path / "big.csv"
    pd.DataFrame({"id": ids, "label": ids % 2, "tweet": texts}).to_csv(p, index=False)
    t = read_table(str(p))
    assert len(t.ids) == 90_000 and t.duplicate_rows == 10_000


# ---------------------------------------------------------------- encodings


def test_bom_is_not_part_of_the_header(tmp_path: Path) -> None:
    t = read_table(str(_write(tmp_path / "bom.csv", "\ufeffid,label,tweet\n1,1,hello\n".encode("utf-8"))))
    assert t.ids.tolist() == ["1"] and t.texts == ["hello"] and t.labels.tolist() == ["1"]


@pytest.mark.parametrize("codec, bom", [("utf-16-le", b"\xff\xfe"), ("utf-16-be", b"\xfe\xff"), ("utf-16-le", b"")])
def test_utf16(tmp_path: Path, codec: str, bom: bytes) -> None:
    t = read_table(str(_write(tmp_path / "in.csv", bom + CSV.encode(codec))))
    _check(t)
    assert codec in t.format


def test_cp1252_is_recognised_and_never_latin1(tmp_path: Path) -> None:
    p = _write(tmp_path / "excel.csv", "id,tweet\n1,fine\n2,wait\u2026 \u201cwhat\u201d\n".encode("cp1252"))
    msg = _err(p)
    assert "line 3" in msg and "0x85" in msg and "Windows-1252" in msg and "encoding cp1252" in msg
    assert "latin-1" not in msg
    t = read_table(str(p), encoding="cp1252")
    assert t.texts == ["fine", "wait\u2026 \u201cwhat\u201d"]


def test_latin1_bytes(tmp_path: Path) -> None:
    p = _write(tmp_path / "latin.csv", "id,tweet\n1,fine\n2,caf\u00e9 au lait\n".encode("latin-1"))
    msg = _err(p)
    assert "line 3" in msg and "not valid UTF-8" in msg and "encoding latin-1" in msg
    assert read_table(str(p), encoding="latin-1").texts == ["fine", "caf\u00e9 au lait"]
    assert "unknown encoding" in _err(p, encoding="no-such-codec")
    assert "line 3 is not valid utf-8" in _err(p, encoding="utf-8")


def test_binary_files_are_refused(tmp_path: Path) -> None:
    png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256))
    msg = _err(_write(tmp_path / "pic.csv", png))
    assert "looks like a binary file (PNG image)" in msg and "CSV, JSON Lines, Parquet or text" in msg
    assert "binary file (ZIP archive" in _err(_write(tmp_path / "book.xlsx", b"PK\x03\x04" + b"\x00" * 100))
    assert "binary file (binary data)" in _err(_write(tmp_path / "x.txt", b"\x00\x01\x02\x00" * 50))


# ---------------------------------------------------------------- odd characters


def test_odd_line_breaks_stay_inside_the_tweet(tmp_path: Path) -> None:
    want = [ODD_BREAKS, "next", "crlf", "cr"]
    t = read_table(str(_write(tmp_path / "in.txt", f"{ODD_BREAKS}\nnext\r\ncrlf\rcr\n")))
    assert t.texts == want and t.ids.tolist() == ["1", "2", "3", "4"]
    j = "".join(json.dumps({"id": i, "text": s}, ensure_ascii=False) + "\n" for i, s in enumerate(want, 1))
    assert "\u2028" in j  # raw U+2028 inside a JSON string is valid JSON
    t = read_table(str(_write(tmp_path / "in.jsonl", j)))
    assert t.texts == want and t.ids.tolist() == ["1", "2", "3", "4"]
    c = f"id,tweet\n1,{ODD_BREAKS}\n2,next\r\n3,crlf\r4,cr\n"
    t = read_table(str(_write(tmp_path / "in.csv", c)))
    assert t.texts == want and t.ids.tolist() == ["1", "2", "3", "4"]


def test_quoted_newlines_stay_in_the_text(tmp_path: Path) -> None:
    p = _write(tmp_path / "q.csv", 'id,tweet\n1,"line one\nline two, with ""quotes"""\n2,plain\n')
    t = read_table(str(p))
    assert t.texts == ['line one\nline two, with "quotes"', "plain"] and t.ids.tolist() == ["1", "2"]


def test_nul_bytes_are_preserved(tmp_path: Path) -> None:
    t = read_table(str(_write(tmp_path / "nul.csv", b"id,tweet\n1,before\x00after\n2,plain\n")))
    assert t.texts == ["before\x00after", "plain"] and t.ids.tolist() == ["1", "2"]


def test_lone_surrogates_are_replaced_and_counted(tmp_path: Path) -> None:
    p = _write(
        tmp_path / "in.jsonl",
        '{"id": "a\\udc00", "label": "\\ud83d", "text": "half \\ud83d emoji"}\n'
        '{"id": "b", "text": "whole \\ud83d\\ude00 emoji"}\n',
    )
    t = read_table(str(p))
    assert t.texts == ["half \ufffd emoji", "whole \U0001f600 emoji"]
    assert t.ids.tolist() == ["a\ufffd", "b"] and t.labels.tolist() == ["\ufffd", ""]
    assert t.replaced_chars == 3
    for s in [*t.texts, *t.ids, *t.labels]:
        s.encode("utf-8")


# ---------------------------------------------------------------- other errors


def test_missing_file(tmp_path: Path) -> None:
    assert "does not exist" in _err(tmp_path / "nope.csv")


def test_directory(tmp_path: Path) -> None:
    assert "is a directory" in _err(tmp_path)


def test_empty_file(tmp_path: Path) -> None:
    p = tmp_path / "empty.csv"
    assert "is empty" in _err(_write(p, b""))
    assert "is empty" in _err(_write(p, b" \n\n"))
    assert "is empty" in _err(_write(p, gzip.compress(b"")))
    assert "is empty" in _err(_write(p, b"\xff\xfe"))


def test_header_only(tmp_path: Path) -> None:
    assert "has a header but no rows" in _err(_write(tmp_path / "h.csv", "id,label,tweet\n"))
    assert "has no rows" in _err(_write(tmp_path / "h.json", "[]"))


def test_bad_jsonl_line(tmp_path: Path) -> None:
    p = _write(tmp_path / "c.jsonl", '{"text": "a"}\n{"text": oops}\n')
    assert "line 2 is not valid JSON" in _err(p)
    assert "line 2 is not a JSON object" in _err(_write(p, '{"text": "a"}\n[1, 2]\n'))
    assert "nested too deeply" in _err(_write(p, '{"text": ' + "[" * 100_000 + "\n"))


def test_corrupt_parquet(tmp_path: Path) -> None:
    assert "not a readable Parquet file" in _err(_write(tmp_path / "c.parquet", b"PAR1 this is not parquet"))


def test_unknown_format(tmp_path: Path) -> None:
    assert "unknown input format 'xml'" in _err(_write(tmp_path / "c.csv", "text\na\n"), fmt="xml")


# ---------------------------------------------------------------- any bytes: a Table or an InputFileError

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _table_or_input_error(path: Path, **kw) -> None:
    try:
        t = read_table(str(path), **kw)
    except InputFileError as exc:
        assert "\n" not in str(exc)
        return
    n = len(t.texts)
    assert len(t.ids) == len(t.labels) == len(t.digests) == n and n + t.duplicate_rows == t.rows_read
    assert all(type(v) is str for v in [*t.ids, *t.labels, *t.texts])


@_SETTINGS
@given(data=st.binary(max_size=400), name=st.sampled_from(["x.csv", "x.jsonl", "x.json", "x.txt", "x.parquet", "x"]))
def test_any_bytes_give_a_table_or_an_input_error(tmp_path: Path, data: bytes, name: str) -> None:
    _table_or_input_error(_write(tmp_path / name, data))


_CELL = st.text(alphabet=st.sampled_from(list('ab1 ,;|\t"\n\r\x00\x85\u2028\ud83d\xe9')), max_size=8)


@_SETTINGS
@given(
    rows=st.lists(st.lists(_CELL, min_size=1, max_size=4), min_size=1, max_size=6),
    sep=st.sampled_from([",", ";", "\t", "|"]),
    quote=st.booleans(),
    header=st.booleans(),
    codec=st.sampled_from(["utf-8", "utf-16", "cp1252"]),
    compress=st.booleans(),
)
def test_any_csv_dialect_gives_a_table_or_an_input_error(
    tmp_path: Path, rows: list[list[str]], sep: str, quote: bool, header: bool, codec: str, compress: bool
) -> None:
    def cell(c: str) -> str:
        return '"' + c.replace('"', '""') + '"' if quote else c

    text = "".join(sep.join(cell(c) for c in r) + "\n" for r in [["id", "label", "tweet"], *rows])
    data = text.encode(codec, "replace")
    _table_or_input_error(_write(tmp_path / "x.csv", gzip.compress(data) if compress else data), header=header)
