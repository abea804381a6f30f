"""Issue 23, class 4: spellings of one label or id never become two.

The rule, applied on read for every format (so that a re-ingest compares like with like):
labels lose surrounding whitespace; a missing-value spelling (``NaN``, ``NA``, ``N/A``, ``null``,
``None``, ``<NA>``, empty...) is no label; ``true``/``false`` in any case is ``true``/``false``; a whole
number written as a float (``1.0``) is that number (``1``). The rules are per value, so every file and
engine spells a value alike. Two spellings left that still name one class (``1`` and ``true``, ``pos``
and ``Pos``, ``01`` and ``1``) are an error naming both. Ids lose surrounding whitespace, a missing-value
spelling is an empty id (an error), and ``123.0`` is ``123``. Every change is counted in ``Table.notes``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from featurestore.api import FeatureStore
from featurestore.errors import InputFileError
from featurestore.inputs.sources import read_table
from tests.conftest import FAKE


def _csv(path: Path, labels: list[str], ids: list[str] | None = None) -> Path:
    ids = ids or [str(i + 1) for i in range(len(labels))]
    body = "".join(f'"{i}","{lab}",tweet {n}\n' for n, (i, lab) in enumerate(zip(ids, labels)))
    path.write_text("id,label,tweet\n" + body, encoding="utf-8")
    return path


def _err(path: Path, **kw) -> str:
    with pytest.raises(InputFileError) as err:
        read_table(str(path), **kw)
    return str(err.value)


@pytest.mark.parametrize(
    "written, read, note",
    [
        (["1", "0", " 1", "0 "], ["1", "0", "1", "0"], "labels: surrounding spaces removed from 2"),
        (["1.0", "0.0", "1"], ["1", "0", "1"], "labels: 2 whole numbers written with '.0' read without it"),
        (["-1.0", "2.00", "3."], ["-1", "2", "3"], "whole numbers written with '.0'"),
        (["0.5", "1.0", "1"], ["0.5", "1", "1"], "labels: 1 whole number written with '.0'"),  # per value
        (["1", "NaN", "NA", "null", "None", "", "N/A", "<NA>", "nan"], ["1"] + [""] * 8, "read as no label"),
        (["True", "FALSE", "true"], ["true", "false", "true"], "labels: 'FALSE', 'True' read as true/false"),
        (["pos", "neg", " neg"], ["pos", "neg", "neg"], "surrounding spaces"),
        (["pos", "none", "-3", "0.5"], ["pos", "none", "-3", "0.5"], None),  # kept as written
    ],
)
def test_label_spellings_are_normalised_and_said_so(
    tmp_path: Path, written: list, read: list, note: str | None
) -> None:
    t = read_table(str(_csv(tmp_path / "in.csv", written)))
    assert t.labels.tolist() == read
    if note is None:
        assert t.notes == []
    else:
        assert any(note in n for n in t.notes), t.notes


@pytest.mark.parametrize(
    "written, first, second, how",
    [
        (["1", "0", "true"], "1", "true", "type (a boolean and a number)"),
        (["0", "false"], "0", "false", "type (a boolean and a number)"),
        (["pos", "neg", "Pos"], "pos", "Pos", "case"),
        (["Positive", "positive"], "Positive", "positive", "case"),
        (["01", "1"], "01", "1", "how the number is written"),
        (["+1", "1"], "+1", "1", "how the number is written"),
    ],
)
def test_two_spellings_of_one_class_are_refused_naming_both(
    tmp_path: Path, written: list, first: str, second: str, how: str
) -> None:
    msg = _err(_csv(tmp_path / "in.csv", written))
    assert f"labels {first!r} (row " in msg and f"and {second!r} (row " in msg and f"differ only in {how}" in msg
    assert "fix: write that class one way in the file" in msg


def test_the_reviewers_seven_spellings_of_one_label(tmp_path: Path) -> None:
    """1, "1", 1.0, true, " 1", NaN/NA/null, empty: once 3-7 classes of a binary task."""
    lines = [
        {"text": "a", "label": 1},
        {"text": "b", "label": "1"},
        {"text": "c", "label": 1.0},
        {"text": "d", "label": " 1"},
        {"text": "e", "label": "NaN"},
        {"text": "f", "label": "NA"},
        {"text": "g", "label": None},
        {"text": "h", "label": ""},
        {"text": "i", "label": 0},
    ]
    p = tmp_path / "in.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in lines), encoding="utf-8")
    t = read_table(str(p))
    assert t.labels.tolist() == ["1", "1", "1", "1", "", "", "", "", "0"]
    assert sorted(set(t.labels.tolist()) - {""}) == ["0", "1"]  # binary, as written
    p.write_text(p.read_text() + json.dumps({"text": "j", "label": True}) + "\n", encoding="utf-8")
    assert "labels '1' (line 1) and 'true' (line 10)" in _err(p)


def test_parquet_labels_follow_the_same_rules(tmp_path: Path) -> None:
    p = tmp_path / "in.parquet"
    pd.DataFrame({"label": [True, False, None], "text": ["a", "b", "c"]}).to_parquet(p)
    assert read_table(str(p)).labels.tolist() == ["true", "false", ""]
    pd.DataFrame({"label": [" pos", "NaN", "pos"], "text": ["a", "b", "c"]}).to_parquet(p)
    assert read_table(str(p)).labels.tolist() == ["pos", "", "pos"]


# ---------------------------------------------------------------- ids


@pytest.mark.parametrize(
    "written, read, note",
    [
        ([" 123", "456 ", "789"], ["123", "456", "789"], "ids: surrounding spaces removed from 2 ids"),
        (["123.0", "456.0", "7"], ["123", "456", "7"], "ids: 2 whole numbers written with '.0'"),
        (["123.0", "1.5"], ["123", "1.5"], "ids: 1 whole number written with '.0'"),  # per value
        (["3e8", "ff0", "1e10"], ["3e8", "ff0", "1e10"], None),  # hexadecimal-looking, not spreadsheet-rounded
        (["000123", "123"], ["000123", "123"], None),  # two ids
    ],
)
def test_id_spellings(tmp_path: Path, written: list, read: list, note: str | None) -> None:
    t = read_table(str(_csv(tmp_path / "in.csv", ["0"] * len(written), written)))
    assert t.ids.tolist() == read
    assert (note is None and t.notes == []) or any(note in n for n in t.notes), t.notes


@pytest.mark.parametrize("missing", ["NaN", "NULL", "None", "  "])
def test_a_missing_value_id_is_an_empty_id(tmp_path: Path, missing: str) -> None:
    msg = _err(_csv(tmp_path / "in.csv", ["0", "1"], ["1", missing]))
    assert "row 2: the id is" in msg and "id_col ''" in msg


@pytest.mark.parametrize("rounded", ["1.23457E+18", "1E+18", "1,5e18", "7.1e-05"])
def test_spreadsheet_rounded_ids_are_still_refused(tmp_path: Path, rounded: str) -> None:
    assert "scientific notation" in _err(_csv(tmp_path / "in.csv", ["0", "1"], ["1", rounded]))


def test_a_later_clean_file_adds_no_duplicate_ids(tmp_path: Path) -> None:
    fs = FeatureStore(tmp_path / "store")
    _csv(tmp_path / "messy.csv", [" 1", "0.0", "NaN"], [" 10", "11 ", "12"])
    first = fs.ingest(str(tmp_path / "messy.csv"), "d", FAKE, "raw-v1")
    assert first.new_ids == 3
    again = fs.ingest(str(tmp_path / "messy.csv"), "d", FAKE, "raw-v1")
    assert (again.new_ids, again.labels_added, again.labels_changed) == (0, 0, 0)  # read alike each time
    _csv(tmp_path / "clean.csv", ["1", "0", ""], ["10", "11", "12"])
    clean = fs.ingest(str(tmp_path / "clean.csv"), "d", FAKE, "raw-v1")
    assert (clean.new_ids, clean.labels_added, clean.labels_changed) == (0, 0, 0)
    rows = fs.rows("d")
    assert rows["ids"].tolist() == ["10", "11", "12"] and rows["labels"].tolist() == ["1", "0", ""]
    assert isinstance(rows["ids"], np.ndarray)
