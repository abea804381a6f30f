"""Issue 23, class 3: every ``fix:`` works when followed.

Each row is an input that is refused, the part of the message that names the fix, and the fix applied
(a parameter, or the file edited as the message says); the result must be right (every row, whole
texts, the ids and labels written) or the next message must be the right one. Flags are named as the
Python caller sees them (``quote ''``); the CLI shows the same message with ``--quote ''``.
Also here: the pandas ``to_json`` layouts, read where unambiguous and otherwise refused with the exact
pandas call, and ids that only look like numbers.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from featurestore.errors import InputFileError
from featurestore.inputs.sources import read_table

Rows = list[tuple[str, str, str]]  # (id, label, text) as read


@dataclass
class Fix:
    id: str
    name: str  # the file's name (its extension picks the format)
    content: str
    said: tuple[str, ...]  # fragments of the refusal, the fix among them
    params: dict[str, Any] = field(default_factory=dict)  # what the refused read passed
    follow: dict[str, Any] = field(default_factory=dict)  # the fix as parameters...
    edit: Callable[[str], str] | None = None  # ...or as an edit of the file
    then: Rows | str = ""  # the rows read after the fix, or a fragment of the next message


def _quoted_tweet(content: str) -> str:
    return content.replace("first line\ncontinued here", '"first line\ncontinued here"')


def _t(*texts: str, labels: tuple[str, ...] = (), ids: tuple[str, ...] = ()) -> Rows:
    n = len(texts)
    return list(zip(ids or tuple(str(i + 1) for i in range(n)), labels or ("",) * n, texts))


PLAIN = "I love it, really\nbattery died, again\nwhat a day, huh\n"
PLAIN_UNEVEN = "I love it, really\nbattery died\nwhat a day, huh, wow\n"

FIXES = [
    # -- advice that lost data when followed
    Fix(
        "plain-tweets-with-commas",
        "t.csv",
        PLAIN,
        ("fmt txt",),
        follow={"fmt": "txt"},
        then=_t("I love it, really", "battery died, again", "what a day, huh"),
    ),
    Fix(
        "plain-tweets-no-header",
        "t.csv",
        PLAIN,
        ("has 2 columns and no header", "fmt txt"),
        params={"header": False},
        follow={"fmt": "txt"},
        then=_t("I love it, really", "battery died, again", "what a day, huh"),
    ),
    Fix(
        "plain-tweets-uneven-commas",
        "t.csv",
        PLAIN_UNEVEN,
        ("line 2 has 1 field", "fmt txt"),
        follow={"fmt": "txt"},
        then=_t("I love it, really", "battery died", "what a day, huh, wow"),
    ),
    Fix(
        "plain-tweets-on-stdin-like",
        "tweets",
        "just a tweet\nand, another one\n",
        ("fmt txt",),
        follow={"fmt": "txt"},
        then=_t("just a tweet", "and, another one"),
    ),
    Fix(
        "header-less-columns",
        "t.csv",
        "1,0,first tweet\n2,1,second tweet here\n",
        ("first row looks like data", "header=False text_col 3"),
        follow={"header": False, "text_col": "3"},
        then=_t("first tweet", "second tweet here"),
    ),
    Fix(
        "header-less-columns-no-header",
        "t.csv",
        "11,0,first tweet\n12,1,second one\n",
        ("has 3 columns and no header", "text_col 3", "id_col N"),
        params={"header": False},
        follow={"header": False, "text_col": "3", "id_col": "1", "label_col": "2"},
        then=_t("first tweet", "second one", ids=("11", "12"), labels=("0", "1")),
    ),
    Fix(
        "unknown-text-column-name",
        "t.csv",
        "id,words\n1,hello there\n2,bye now\n",
        ("text_col words",),
        follow={"text_col": "words"},
        then=_t("hello there", "bye now"),
    ),
    # -- a column chosen among candidates
    Fix(
        "text-and-tweet",
        "t.csv",
        "id,Text,tweet\n1,long text one,short\n",
        ("text_col NAME, one of them",),
        follow={"text_col": "Text"},
        then=_t("long text one"),
    ),
    Fix(
        "label-and-sentiment",
        "t.csv",
        "id,label,sentiment,tweet\n1,1,pos,a\n",
        ("label_col NAME",),
        follow={"label_col": "sentiment"},
        then=_t("a", labels=("pos",)),
    ),
    Fix(
        "columns-alike",
        "t.csv",
        "id,Text,text\n1,a,b\n",
        ("exact name",),
        params={"text_col": "TEXT"},
        follow={"text_col": "text"},
        then=_t("b"),
    ),
    Fix(
        "header-names-a-column-twice",
        "t.csv",
        "id,text,text\n1,a,b\n",
        ("text_col text.1",),
        follow={"text_col": "text.1"},
        then=_t("b"),
    ),
    Fix(
        "jsonl-keys-spelled-two-ways",
        "t.jsonl",
        '{"id": 1, "text": "a"}\n{"id": 2, "tweet": "b"}\n',
        ("use one key for the text on every line",),
        edit=lambda c: c.replace('"tweet"', '"text"'),
        then=_t("a", "b"),
    ),
    Fix(
        "jsonl-lacks-the-named-key",
        "t.jsonl",
        '{"id": 1, "tweet": "a"}\n{"id": 2, "text": "b"}\n',
        ("line 2 has no 'tweet' key", "use one key for the text"),
        params={"text_col": "tweet"},
        edit=lambda c: c.replace('"text"', '"tweet"'),
        follow={"text_col": "tweet"},
        then=_t("a", "b"),
    ),
    Fix(
        "jsonl-lacks-a-text",
        "t.jsonl",
        '{"id": 1, "text": "a"}\n{"id": 2}\n',
        ('"text": "" for an empty tweet',),
        edit=lambda c: c.replace('{"id": 2}', '{"id": 2, "text": ""}'),
        then=_t("a", ""),
    ),
    Fix(
        "jsonl-lacks-an-id",
        "t.jsonl",
        '{"id": 7, "text": "a"}\n{"text": "b"}\n',
        ("id_col ''",),
        follow={"id_col": ""},
        then=_t("a", "b"),
    ),
    Fix(
        "jsonl-nested-text",
        "t.jsonl",
        '{"id": 1, "text": ["a"], "msg": "a"}\n',
        ("text is a JSON list", "text_col NAME"),
        follow={"text_col": "msg"},
        then=_t("a"),
    ),
    Fix(
        "pandas-index-as-ids",
        "t.json",
        json.dumps({"text": {"a7": "x", "b8": "y"}}),
        ("pandas index", "id_col index"),
        follow={"id_col": "index"},
        then=_t("x", "y", ids=("a7", "b8")),
    ),
    Fix(
        "pandas-index-ignored",
        "t.json",
        json.dumps({"text": {"a7": "x", "b8": "y"}}),
        ("id_col ''",),
        follow={"id_col": ""},
        then=_t("x", "y"),
    ),
    # -- row boundaries
    Fix(
        "tsv-opening-quote",
        "t.tsv",
        'id\tlabel\ttweet\n1\t0\t"so tired\n2\t1\tok fine\n3\t0\tyes "really"\n',
        ("line 2 opens a quoted field", "quote ''"),
        follow={"quote": ""},
        then=_t('"so tired', "ok fine", 'yes "really"', labels=("0", "1", "0")),
    ),
    Fix(
        "tsv-swallowed-row",
        "t.tsv",
        'id\tlabel\ttweet\n1\t0\t"so tired\n2\t1\tthat is it"\n3\t0\tbye\n',
        ("line 3 reads as a row of its own", "quote ''"),
        follow={"quote": ""},
        then=_t('"so tired', 'that is it"', "bye", labels=("0", "1", "0")),
    ),
    Fix(
        "line-break-outside-quotes",
        "t.csv",
        "id,label,tweet\n1,0,first line\ncontinued here\n2,1,x\n",
        ('put that tweet in quotes ("...")',),
        edit=_quoted_tweet,
        then=_t("first line\ncontinued here", "x", labels=("0", "1")),
    ),
    Fix(
        "continuation-with-the-fields-of-a-row",
        "t.csv",
        "id,label,tweet\n1,0,first line\nand then, he said, no\n2,1,x\n3,0,y\n",
        ("put that tweet in quotes",),
        edit=lambda c: c.replace("first line\nand then, he said, no", '"first line\nand then, he said, no"'),
        then=_t("first line\nand then, he said, no", "x", "y", labels=("0", "1", "0")),
    ),
    Fix(
        "a-word-id-meant",
        "t.csv",
        "id,tweet\n1,a\n2,b\nnew one,c\n",
        ("quote it",),
        edit=lambda c: c.replace("new one,", '"new one",'),
        then=_t("a", "b", "c", ids=("1", "2", "new one")),
    ),
    Fix(
        "line-break-with-quotes-as-text",
        "t.tsv",
        'id\ttweet\n1\t"a\nb"\n2\tc\n',
        ("line 3 has 1 field", "join line 3 to the line before it"),
        params={"quote": ""},
        edit=lambda c: c.replace('"a\nb"', '"a b"'),
        then=_t('"a b"', "c"),
    ),
    Fix(
        "backslash-escapes",
        "t.csv",
        'id,label,tweet\n1,0,"he said \\"hi\\""\n2,1,x\n',
        ("escape '\\'",),
        follow={"escape": "\\"},
        then=_t('he said "hi"', "x", labels=("0", "1")),
    ),
    Fix(
        "backslash-two-readings-escape",
        "t.tsv",
        'id\ttweet\n1\the typed \\"ok\\"\n2\tx\n',
        ("escape '\\'",),
        follow={"escape": "\\"},
        then=_t('he typed "ok"', "x"),
    ),
    Fix(
        "backslash-two-readings-text",
        "t.tsv",
        'id\ttweet\n1\the typed \\"ok\\"\n2\tx\n',
        ("escape ''",),
        follow={"escape": ""},
        then=_t('he typed \\"ok\\"', "x"),
    ),
    Fix(
        "quote-then-more-text",
        "t.csv",
        'id,tweet\n1,"hi" there\n2,x\n',
        ("double each quote",),
        edit=lambda c: c.replace('"hi" there', '"""hi"" there"'),
        then=_t('"hi" there', "x"),
    ),
    Fix(
        "separator-inside-a-field",
        "t.csv",
        "id,label,tweet\n1,0,hello, world\n",
        ("put that field in quotes",),
        edit=lambda c: c.replace("hello, world", '"hello, world"'),
        then=_t("hello, world", labels=("0",)),
    ),
    Fix(
        "another-separator",
        "t.csv",
        "id;label;tweet\n1;0;hi, you\n",
        ("sep ';'",),
        params={"sep": ","},
        follow={"sep": ";"},
        then=_t("hi, you", labels=("0",)),
    ),
    # -- spellings
    Fix(
        "one-class-two-spellings",
        "t.csv",
        "id,label,tweet\n1,1,a\n2,true,b\n",
        ("write that class one way",),
        edit=lambda c: c.replace("true", "1"),
        then=_t("a", "b", labels=("1", "1")),
    ),
    Fix(
        "missing-value-id", "t.csv", "id,tweet\n1,a\nNaN,b\n", ("id_col ''",), follow={"id_col": ""}, then=_t("a", "b")
    ),
    Fix(
        "spreadsheet-rounded-id",
        "t.csv",
        "id,tweet\n1,a\n1.23457E+18,b\n",
        ("format the id column as Text",),
        edit=lambda c: c.replace("1.23457E+18", "1234567890123456789"),
        then=_t("a", "b", ids=("1", "1234567890123456789")),
    ),
    Fix(
        "duplicate-ids",
        "t.csv",
        "id,tweet\n1,a\n1,b\n",
        ("duplicates first|last",),
        follow={"duplicates": "last"},
        then=_t("b"),
    ),
    Fix(
        "one-unknown-column",
        "t.csv",
        "just a tweet\nand another one\n",
        ("fmt txt",),
        follow={"fmt": "txt"},
        then=_t("just a tweet", "and another one"),
    ),
    Fix(
        "one-unknown-column-header",
        "t.csv",
        "just a tweet\nand another one\n",
        ("text_col 'just a tweet'",),
        follow={"text_col": "just a tweet"},
        then=_t("and another one"),
    ),
    Fix(
        "txt-with-column-options",
        "t.txt",
        "id,tweet\n1,a\n",
        ("fmt csv",),
        params={"text_col": "tweet"},
        follow={"fmt": "csv"},
        then=_t("a"),
    ),
    Fix(
        "cp1252",
        "t.csv",
        "id,tweet\n1,wait\u2026\n",
        ("encoding cp1252",),
        follow={"encoding": "cp1252"},
        then=_t("wait\u2026"),
    ),
]


@pytest.mark.parametrize("case", FIXES, ids=[f.id for f in FIXES])
def test_every_fix_works_when_followed(case: Fix, tmp_path: Path) -> None:
    path = tmp_path / case.name
    data = case.content.encode("cp1252" if case.id == "cp1252" else "utf-8")
    path.write_bytes(data)
    with pytest.raises(InputFileError) as refused:
        read_table(str(path), **case.params)
    msg = str(refused.value)
    assert "\n" not in msg and "fix" in msg
    for fragment in case.said:
        assert fragment in msg, f"{fragment!r} not in {msg!r}"
    if case.edit is not None:
        path.write_bytes(case.edit(case.content).encode("utf-8"))
    params = {**case.params, **case.follow}
    if isinstance(case.then, str):
        with pytest.raises(InputFileError, match=case.then):
            read_table(str(path), **params)
        return
    t = read_table(str(path), **params)
    assert list(zip(t.ids.tolist(), t.labels.tolist(), t.texts)) == case.then
    assert t.rows_read == len(case.then) + t.duplicate_rows


def test_parquet_nested_ids_name_the_parameter(tmp_path: Path) -> None:
    p = tmp_path / "in.parquet"
    pd.DataFrame({"id": [[1], [2]], "key": ["7", "8"], "text": ["a", "b"]}).to_parquet(p)
    with pytest.raises(InputFileError) as err:
        read_table(str(p))
    assert "fix: id_col NAME" in str(err.value) and "--" not in str(err.value)
    assert read_table(str(p), id_col="key").ids.tolist() == ["7", "8"]


# ---------------------------------------------------------------- pandas to_json layouts

FRAME = pd.DataFrame({"id": ["0012", "0013"], "label": ["pos", None], "text": ["a, b", 'say "hi"\nbye']})


@pytest.mark.parametrize(
    "orient, lines",  # pandas writes JSON Lines only from records
    [("records", False), ("records", True), ("index", False), ("columns", False), ("split", False), ("table", False)],
)
def test_pandas_to_json_layouts_are_read(tmp_path: Path, orient: str, lines: bool) -> None:
    p = tmp_path / ("in.jsonl" if lines else "in.json")
    FRAME.to_json(p, orient=orient, lines=lines)
    t = read_table(str(p))
    assert t.ids.tolist() == ["0012", "0013"] and t.labels.tolist() == ["pos", ""]
    assert t.texts == ["a, b", 'say "hi"\nbye']
    if orient not in ("records", "table"):
        assert f"pandas orient='{orient}'" in t.format


def test_a_pandas_index_that_is_not_row_numbers_is_offered_as_the_ids(tmp_path: Path) -> None:
    p = tmp_path / "in.json"
    frame = pd.DataFrame({"text": ["a", "b"]}, index=["t1", "t2"])
    for orient in ("columns", "index", "split", "table"):
        frame.to_json(p, orient=orient)
        with pytest.raises(InputFileError, match="id_col index"):
            read_table(str(p))
        assert read_table(str(p), id_col="index").ids.tolist() == ["t1", "t2"]
    frame.reset_index(drop=True).to_json(p)  # row numbers 0, 1: not data
    assert read_table(str(p)).ids.tolist() == ["1", "2"]


@pytest.mark.parametrize(
    "write, said",
    [
        (lambda p: FRAME.to_json(p, orient="values"), "array of arrays"),
        (lambda p: FRAME["text"].to_json(p), "pandas Series"),
        (lambda p: p.write_text(json.dumps({"a": {"p": 1, "q": 2}, "b": {"p": 3, "q": 4}})), "cannot be told"),
    ],
    ids=["values", "series", "unknown-object-of-objects"],
)
def test_ambiguous_pandas_layouts_are_refused_with_the_call_that_resaves_them(
    tmp_path: Path, write: Callable[[Path], Any], said: str
) -> None:
    p = tmp_path / "in.json"
    write(p)
    with pytest.raises(InputFileError) as err:
        read_table(str(p))
    msg = str(err.value)
    assert said in msg and "to_json(path, orient='records', lines=True)" in msg
    # following the call: the frame re-saved as the message says reads back whole
    call = msg.split("fix: re-save ")[1]
    q = tmp_path / "again.jsonl"
    if "series." in call:
        FRAME["text"].to_frame("text").to_json(q, orient="records", lines=True)
    else:
        FRAME.to_json(q, orient="records", lines=True)
    assert read_table(str(q)).texts == FRAME["text"].tolist()


def test_the_cli_follows_a_quote_fix_and_prints_what_reading_changed(tmp_path: Path) -> None:
    """Through `fs ingest`: the refusal names `--quote ''`, the flag exists and reads every row whole, and what a
    spelling rule changed is a `note:` line, not silent."""
    from typer.testing import CliRunner

    from cli.main import app
    from tests.conftest import FAKE

    src = tmp_path / "q.tsv"
    src.write_text('id\tlabel\ttweet\n1\t1.0\t"so good\n2\t0\tfine\n3\tNaN\tok then\n', encoding="utf-8")
    run = CliRunner()
    args = ["ingest", str(src), "--dataset", "d", "--model", FAKE, "--store", str(tmp_path / "store")]
    refused = run.invoke(app, args)
    assert refused.exit_code == 1 and "--quote ''" in refused.output, refused.output
    r = run.invoke(app, [*args, "--quote", ""])
    assert r.exit_code == 0, r.output
    assert "rows read 3" in r.output and "new ids 3" in r.output
    assert "note: labels:" in r.output and "1.0 -> 1" in r.output  # the spelling rules said what they changed
