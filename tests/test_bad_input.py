"""The bad-input catalogue: every row is one ``fs`` command on a copy of a small store.

Errors exit non-zero with one line ``Error: ...`` that names the problem and the fix,
never a traceback, and leave the store byte for byte as it was; inputs that should
work do, and what they stored reads back exactly. docs/integrity.md has the table.

Commands run in-process (CliRunner: an exception escaping a command is the in-process
traceback); a real ``fs`` process is started only where a signal or a resource limit
needs one. ``tests/test_cli.py`` runs the installed ``fs`` console script once.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import pickle
import resource
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from featurestore.api import FeatureStore
from featurestore.check import check
from featurestore.storage.store import Store
from tests.integrity_fakes import Payload, SlowHashEmbedder
from tests.integrity_harness import (
    MODEL,
    RECIPE,
    ROOT,
    Ran,
    committed_generation,
    fs_cmd,
    fs_env,
    run_cli,
    store_vectors,
    write_slice,
)

M = ("--model", MODEL, "--clean", RECIPE)
HEADER = "id,label,tweet\n"


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """200 real tweets, committed in batches of 100, plus a trained classifier."""
    d = tmp_path_factory.mktemp("base")
    fs = FeatureStore(d / "store")
    fs.ingest(str(write_slice(d / "t.csv", 200)), "train", MODEL, RECIPE, embedder=SlowHashEmbedder(), commit_rows=100)
    fs.train("train", MODEL, RECIPE, name="clf")
    return d / "store"


@pytest.fixture
def store(base: Path, tmp_path: Path) -> Path:
    shutil.copytree(base, tmp_path / "store")
    return tmp_path / "store"


def files(store: Path) -> dict[str, str]:
    """Every file of the store with its hash (LOCK aside: it is the lock, not data)."""
    return {
        str(p.relative_to(store)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(store.rglob("*"))
        if p.is_file() and p.name != "LOCK"
    }


def assert_error(r: Ran | subprocess.CompletedProcess, *fragments: str) -> str:
    assert r.returncode != 0, f"exit 0 for an error case: {r.stdout}"
    assert getattr(r, "exception", None) is None, getattr(r, "traceback", "")
    assert "Traceback" not in r.stdout + r.stderr, r.stderr
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1 and err.startswith("Error: "), err
    for f in fragments:
        assert f in err, f"{f!r} not in {err!r}"
    return err


def assert_ok(r: Ran) -> Ran:
    assert r.returncode == 0 and r.exception is None, r.stdout + r.stderr + r.traceback
    return r


def assert_consistent(store: Path) -> None:
    report = check(Store(store))
    assert report.ok, report.errors


def rows_of(store: Path, dataset: str) -> dict[str, tuple[str, str]]:
    """id -> (label, text) as stored: ids and labels are text ("" = no label)."""
    r = FeatureStore(store).rows(dataset)
    return {i: (lab, t) for i, lab, t in zip(r["ids"], r["labels"], r["texts"])}


def as_stored(rows: dict) -> dict[str, tuple[str, str]]:
    """An expected-rows dict written with int ids and labels, in the stored (text) form."""
    return {str(i): ("" if lab is None else str(lab), t) for i, (lab, t) in rows.items()}


def write(tmp: Path, name: str, content: str | bytes) -> Path:
    p = tmp / name
    p.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return p


# ----------------------------------------------------------------------------- the catalogue


@dataclass
class Case:
    """``make(tmp, store)`` writes inputs and returns the ``fs`` arguments."""

    id: str
    make: Callable[[Path, Path], list[str]]
    error: tuple[str, ...] | None = None  # fragments of the one-line error; None: it must work
    verify: Callable[[Path, Ran], None] | None = None
    stdin: str | None = None


def ingest(path: Path | str, store: Path, *more: str, dataset: str = "extra") -> list[str]:
    return ["ingest", str(path), "--store", str(store), "--dataset", dataset, *M, *more]


def _round_trip(expected: dict[int, tuple[int, str]]) -> Callable[[Path, Ran], None]:
    def verify(store: Path, r: Ran) -> None:
        assert rows_of(store, "extra") == as_stored(expected)
        X, _, ids = FeatureStore(store).xy("extra", MODEL, RECIPE, labelled=False)
        assert len(X) == len(expected) and np.isfinite(X).all()

    return verify


BIG = " ".join(f"w{i % 9973}" for i in range(170_000))[:1_000_000]
UNICODE = {
    1: (0, "emoji 😀🔥👍🏽 family 👨‍👩‍👧"),
    2: (1, "עברית מימין לשמאל مرحبا بالعالم"),
    3: (0, "中文 日本語 한국어 テスト"),
    4: (1, "mixed \u200f RTL mark and e\u0301 combining"),
}


def _csv(rows: dict[int, tuple[int, str]]) -> str:
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["id", "label", "tweet"])
    for i, (lab, t) in rows.items():
        w.writerow([i, lab, t])
    return buf.getvalue()


def _similar_finds_unicode(store: Path, r: Ran) -> None:
    _round_trip(UNICODE)(store, r)
    s = run_cli("similar", UNICODE[2][1], "--k", "1", "--json", "--dataset", "extra", *M, "--store", str(store))
    assert_ok(s)
    hit = json.loads(s.stdout)["hits"][0]
    assert hit["text"] == UNICODE[2][1] and hit["score"] > 0.999


def _dup_kept_once(store: Path, r: Ran) -> None:
    assert rows_of(store, "extra") == as_stored({7: (0, "same text"), 8: (1, "other")})
    assert "duplicates 1" in r.stdout


def _three_classes(store: Path, r: Ran) -> None:
    assert rows_of(store, "extra")["3"] == ("2", "three")
    t = assert_ok(run_cli("train", "--dataset", "extra", "--test-size", "0.5", *M, "--store", str(store)))
    assert "classes '0', '1', '2'" in t.stdout and "(macro average)" in t.stdout
    assert "warning: only" in t.stderr  # a handful of validation rows is said to be unreliable


def _columns_reported(id_col: str, label_col: str, text_col: str, rows: dict) -> Callable[[Path, Ran], None]:
    def verify(store: Path, r: Ran) -> None:
        assert f"ids: column {id_col}" in r.stdout and f"labels: column {label_col}" in r.stdout
        assert f"text: column {text_col}" in r.stdout
        _round_trip(rows)(store, r)

    return verify


def _replaced_one(store: Path, r: Ran) -> None:
    assert rows_of(store, "extra") == {"1": ("", "bad \ufffd here")}
    assert "characters replaced 1" in r.stdout


def _relabelled(store: Path) -> str:
    """The base store's first rows again, one label changed and the others as stored."""
    rows = rows_of(store, "train")
    first = list(rows.items())[:3]
    lines = [
        f'{i},{"1" if n == 0 and lab == "0" else "0" if n == 0 else lab},"{t.replace(chr(34), chr(34) * 2)}"'
        for n, (i, (lab, t)) in enumerate(first)
    ]
    return HEADER + "\n".join(lines) + "\n"


def _labels_changed(store: Path, r: Ran) -> None:
    assert "labels added 0  changed 1" in r.stdout and "texts embedded 0" in r.stdout and "new ids 0" in r.stdout
    first = list(rows_of(store, "train").items())[0]
    assert first[1][0] in ("0", "1")


def _truncated_one(store: Path, r: Ran) -> None:
    assert "truncated 1" in r.stdout
    assert len(rows_of(store, "extra")["1"][1]) == 10_000_000  # the raw text is stored whole
    assert_error(
        run_cli("similar", "--id", "1", "--k", "1", *M, "--store", str(store)), "in datasets extra, train", "--dataset"
    )
    s = assert_ok(run_cli("similar", "--id", "1", "--dataset", "extra", "--k", "1", *M, "--store", str(store)))
    assert len(s.stdout) < 400  # shown cut, not 10 MB on the terminal


def _tweets() -> str:
    """Twitter API v1.1 objects: ``text`` cut to 140 characters, ``full_text`` whole, ``id`` a number."""
    cut, full = "a tweet the API cut…", "a tweet the API cut short, here whole"
    return "".join(
        json.dumps(
            {
                "id": 1050118621198921728 + i,
                "id_str": str(1050118621198921728 + i),
                "text": cut,
                "full_text": full + str(i),
                "truncated": False,
                "user": {"id": 1},
            }
        )
        + "\n"
        for i in range(2)
    )


def _twitter_stored(store: Path, r: Ran) -> None:
    assert rows_of(store, "extra") == {
        "1050118621198921728": ("", "a tweet the API cut short, here whole0"),
        "1050118621198921729": ("", "a tweet the API cut short, here whole1"),
    }
    assert "Twitter API objects" in r.stdout and "text: column 'full_text > text'" in r.stdout


def _empty_texts(store: Path, r: Ran) -> None:
    X, _, ids = FeatureStore(store).xy("extra", MODEL, RECIPE)
    assert len(ids) == 2 and not X[list(ids).index("1")].any() and X[list(ids).index("2")].any()
    assert "empty after cleaning 1" in r.stdout


CASES = [
    Case("missing-file", lambda t, s: ingest(t / "nope.csv", s), ("does not exist", "check the path")),
    Case("directory", lambda t, s: ingest(t, s), ("is a directory",)),
    Case("empty-file", lambda t, s: ingest(write(t, "e.csv", ""), s), ("is empty",)),
    Case("whitespace-only", lambda t, s: ingest(write(t, "w.csv", "\n  \n"), s), ("is empty",)),
    Case("empty-stdin", lambda t, s: ingest("-", s), ("standard input is empty",), stdin=""),
    Case("header-only", lambda t, s: ingest(write(t, "h.csv", HEADER), s), ("header but no rows",)),
    Case(
        "missing-columns",
        lambda t, s: ingest(write(t, "c.csv", "id,label,note\n1,0,hi\n"), s),
        ("no text column", "columns found: id, label, note", "--text-col"),
    ),
    Case(
        "named-label-column-missing",
        lambda t, s: ingest(write(t, "l.csv", HEADER + "1,0,hi\n"), s, "--label-col", "y"),
        ("no label column 'y'", "columns found: id, label, tweet", "--label-col"),
    ),
    Case(
        "bom",
        lambda t, s: ingest(write(t, "b.csv", "\ufeff" + HEADER + "1,0,hello bom\n"), s),
        verify=_round_trip({1: (0, "hello bom")}),
    ),
    Case(
        "quoted-newlines",
        lambda t, s: ingest(write(t, "q.csv", HEADER + '1,0,"line one\nline two, ""quoted"""\n2,1,x\n'), s),
        verify=_round_trip({1: (0, 'line one\nline two, "quoted"'), 2: (1, "x")}),
    ),
    Case(
        "crlf-line-ends",
        lambda t, s: ingest(write(t, "r.csv", "id,label,tweet\r\n1,0,windows\r\n"), s),
        verify=_round_trip({1: (0, "windows")}),
    ),
    Case(
        "nul-bytes",
        lambda t, s: ingest(write(t, "n.csv", HEADER + "1,0,a\x00b\n2,1,c\n"), s),
        verify=_round_trip({1: (0, "a\x00b"), 2: (1, "c")}),
    ),
    Case(
        "undecodable-bytes",
        lambda t, s: ingest(write(t, "u.csv", b"id,label,tweet\n1,0,ok\n2,0,bad \xff\xfe\n"), s),
        ("line 3", "not valid UTF-8", "--encoding"),
    ),
    Case(
        "latin-1-with-encoding",
        lambda t, s: ingest(
            write(t, "u.csv", "id,label,tweet\n1,0,caf\xe9\n".encode("latin-1")), s, "--encoding", "latin-1"
        ),
        verify=_round_trip({1: (0, "café")}),
    ),
    Case(
        "unknown-encoding",
        lambda t, s: ingest(write(t, "x.csv", HEADER + "1,0,a\n"), s, "--encoding", "klingon"),
        ("unknown --encoding 'klingon'",),
    ),
    Case(
        "one-mb-text",
        lambda t, s: ingest(write(t, "big.csv", HEADER + f"1,0,{BIG}\n2,1,small\n"), s),
        verify=_round_trip({1: (0, BIG), 2: (1, "small")}),
    ),
    Case("emoji-rtl-cjk", lambda t, s: ingest(write(t, "uni.csv", _csv(UNICODE)), s), verify=_similar_finds_unicode),
    Case("empty-text", lambda t, s: ingest(write(t, "et.csv", HEADER + '1,0,""\n2,1,text\n'), s), verify=_empty_texts),
    Case(
        "duplicate-id-same-text",
        lambda t, s: ingest(write(t, "d.csv", HEADER + "7,0,same text\n8,1,other\n7,0,same text\n"), s),
        verify=_dup_kept_once,
    ),
    Case(
        "duplicate-id-different-text",
        lambda t, s: ingest(write(t, "d.csv", HEADER + "7,0,one\n8,1,x\n7,0,two\n"), s),
        ("rows 1 and 3 share id '7' with different texts", "--duplicates first|last"),
    ),
    Case(
        "id-conflicts-with-stored-row",
        lambda t, s: ingest(write(t, "c.csv", HEADER + "1,0,not the stored text\n"), s, dataset="train"),
        ("id '1' is already in dataset 'train' with a different text",),
    ),
    Case(
        "three-classes",
        lambda t, s: ingest(write(t, "l.csv", HEADER + "1,0,one\n2,1,two\n3,2,three\n4,0,four\n"), s),
        verify=_three_classes,
    ),
    Case(
        "label-text-kept-as-given-missing-spellings-none",
        lambda t, s: ingest(write(t, "n.csv", HEADER + "1,pos,a\n2,NaN,b\n3,-3,c\n4,,d\n5, neg ,e\n"), s),
        verify=_round_trip({1: ("pos", "a"), 2: (None, "b"), 3: ("-3", "c"), 4: (None, "d"), 5: ("neg", "e")}),
    ),
    Case(
        "ids-as-text",
        lambda t, s: ingest(
            write(
                t,
                "i.csv",
                HEADER + "000123,0,a\n123,1,b\na1b2,0,c\n1.5,1,d\n"
                "12345678901234567890123,0,e\n99999999999999999999,1,f\n",
            ),
            s,
        ),
        verify=_round_trip(
            {
                "000123": (0, "a"),
                123: (1, "b"),
                "a1b2": (0, "c"),
                "1.5": (1, "d"),
                "12345678901234567890123": (0, "e"),
                "99999999999999999999": (1, "f"),
            }
        ),
    ),
    Case(
        "spreadsheet-rounded-id",
        lambda t, s: ingest(write(t, "x.csv", HEADER + "1,0,a\n1.23457E+18,1,b\n"), s),
        ("row 2", "scientific notation", "format the id column as Text"),
    ),
    Case(
        "columns-any-case-and-usual-names",
        lambda t, s: ingest(write(t, "c.csv", "Tweet_ID,Sentiment,TEXT\n5,pos,hi\n"), s),
        verify=_columns_reported("'Tweet_ID'", "'Sentiment'", "'TEXT'", {5: ("pos", "hi")}),
    ),
    Case(
        "text-col-given-others-found",
        lambda t, s: ingest(write(t, "c.csv", "ID,Label,body\n5,1,hi\n"), s, "--text-col", "body"),
        verify=_columns_reported("'ID'", "'Label'", "'body'", {5: (1, "hi")}),
    ),
    Case(
        "semicolon-separated",
        lambda t, s: ingest(write(t, "s.csv", "id;label;tweet\n1;0;a, b\n2;1;c\n"), s),
        verify=_round_trip({1: (0, "a, b"), 2: (1, "c")}),
    ),
    Case(
        "tab-separated-csv",
        lambda t, s: ingest(write(t, "s.csv", "id\tlabel\ttweet\n1\t0\ta\n"), s),
        verify=_round_trip({1: (0, "a")}),
    ),
    Case(
        "pipe-separated",
        lambda t, s: ingest(write(t, "s.txt", "id|label|tweet\n1|0|a\n"), s, "--format", "csv"),
        verify=_round_trip({1: (0, "a")}),
    ),
    Case(
        "gzip-named-csv",
        lambda t, s: ingest(write(t, "g.csv", gzip.compress((HEADER + "1,0,zipped\n").encode())), s),
        verify=_round_trip({1: (0, "zipped")}),
    ),
    Case(
        "jsonl-gz",
        lambda t, s: ingest(write(t, "g.jsonl.gz", gzip.compress(b'{"id": 1, "label": 0, "text": "z"}\n')), s),
        verify=_round_trip({1: (0, "z")}),
    ),
    Case(
        "json-array",
        lambda t, s: ingest(write(t, "a.json", '[{"id": "7", "text": "x"}, {"id": 8, "text": "y"}]'), s),
        verify=_round_trip({7: (None, "x"), 8: (None, "y")}),
    ),
    Case(
        "header-less-csv",
        lambda t, s: ingest(write(t, "n.csv", "1,0,first tweet\n2,1,second\n"), s),
        ("looks like data, not a header", "--no-header"),
    ),
    Case(
        "header-less-with-no-header",
        lambda t, s: ingest(
            write(t, "n.csv", "1,0,first tweet\n2,1,second\n"),
            s,
            "--no-header",
            "--id-col",
            "1",
            "--label-col",
            "2",
            "--text-col",
            "3",
        ),
        verify=_round_trip({1: (0, "first tweet"), 2: (1, "second")}),
    ),
    Case(
        "utf-16",
        lambda t, s: ingest(write(t, "u.csv", (HEADER + "1,0,caf\u00e9 \U0001f600\n").encode("utf-16")), s),
        verify=_round_trip({1: (0, "caf\u00e9 \U0001f600")}),
    ),
    Case(
        "cp1252-suggested",
        lambda t, s: ingest(write(t, "w.csv", (HEADER + "1,0,wait\u2026 \u201cok\u201d\n").encode("cp1252")), s),
        ("looks like Windows-1252", "--encoding cp1252"),
    ),
    Case(
        "cp1252-with-encoding",
        lambda t, s: ingest(
            write(t, "w.csv", (HEADER + "1,0,wait\u2026\n").encode("cp1252")), s, "--encoding", "cp1252"
        ),
        verify=_round_trip({1: (0, "wait\u2026")}),
    ),
    Case(
        "binary-file",
        lambda t, s: ingest(write(t, "p.csv", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4), s),
        ("looks like a binary file", "PNG"),
    ),
    Case(
        "plain-text-on-stdin", lambda t, s: ingest("-", s), ("--format txt",), stdin="just a tweet\nand another one\n"
    ),
    Case(
        "plain-text-on-stdin-as-txt",
        lambda t, s: ingest("-", s, "--format", "txt"),
        verify=_round_trip({1: (None, "just a tweet"), 2: (None, "and another one")}),
        stdin="just a tweet\nand another one\n",
    ),
    Case(
        "unicode-line-separators-in-a-tweet",
        lambda t, s: ingest(write(t, "l.txt", "a\u2028b\x85c\x0bd\x0ce\nnext\n"), s),
        verify=_round_trip({1: (None, "a\u2028b\x85c\x0bd\x0ce"), 2: (None, "next")}),
    ),
    Case(
        "jsonl-with-raw-u2028",
        lambda t, s: ingest(write(t, "l.jsonl", '{"id": 1, "text": "a\u2028b"}\n{"id": 2, "text": "c"}\n'), s),
        verify=_round_trip({1: (None, "a\u2028b"), 2: (None, "c")}),
    ),
    Case(
        "lone-surrogate-in-json",
        lambda t, s: ingest(write(t, "l.jsonl", '{"id": 1, "text": "bad \\ud83d here"}\n'), s),
        verify=_replaced_one,
    ),
    Case(
        "duplicate-id-different-label",
        lambda t, s: ingest(write(t, "d.csv", HEADER + "7,neg,late\n8,pos,ok\n7,neutral,late\n"), s),
        ("rows 1 and 3 share id '7' with different labels", "--duplicates first|last"),
    ),
    Case(
        "duplicate-id-keep-last",
        lambda t, s: ingest(
            write(t, "d.csv", HEADER + "7,neg,late\n8,pos,ok\n7,neutral,late\n"), s, "--duplicates", "last"
        ),
        verify=_round_trip({7: ("neutral", "late"), 8: ("pos", "ok")}),
    ),
    Case(
        "labels-change-on-re-ingest",
        lambda t, s: ingest(write(t, "r.csv", _relabelled(s)), s, dataset="train"),
        verify=_labels_changed,
    ),
    Case(
        "ten-mb-tweet",
        lambda t, s: ingest(write(t, "big.csv", HEADER + "1,0," + "word " * 2_000_000 + "\n2,1,small\n"), s),
        verify=_truncated_one,
    ),
    Case("mistyped-store-path", lambda t, s: ["info", "--store", str(s) + "-typo"], ("does not exist", "--store")),
    Case("check-on-mistyped-store-path", lambda t, s: ["check", "--store", str(s) + "-typo"], ("does not exist",)),
    Case(
        "mistyped-option",
        lambda t, s: ["ingest", "x.csv", "--datset", "y", "--store", str(s)],
        ("No such option: --datset", "--help"),
    ),
    Case(
        "bad-option-value",
        lambda t, s: ["similar", "x", "--k", "many", "--store", str(s)],
        ("Invalid value for '--k'",),
    ),
    Case(
        "plugin-that-is-not-an-embedder",
        lambda t, s: (
            ingest(write(t, "x.csv", HEADER + "1,0,a\n"), s)[:4] + ["--model", "py:os:path", "--clean", RECIPE]
        ),
        ("cannot load embedder 'py:os:path'", "fix:"),
    ),
    Case(
        "bad-jsonl-line",
        lambda t, s: ingest(write(t, "j.jsonl", '{"text": "ok"}\n{"text": oops}\n'), s),
        ("line 2 is not valid JSON",),
    ),
    Case(
        "unknown-format",
        lambda t, s: ingest(write(t, "x.csv", HEADER), s, "--format", "xml"),
        ("unknown input format 'xml'",),
    ),
    Case(
        "unknown-dataset",
        lambda t, s: ["train", "--dataset", "nope", *M, "--store", str(s)],
        ("dataset 'nope' does not exist", "datasets: train"),
    ),
    Case(
        "unknown-model",
        lambda t, s: ["ingest", str(write(t, "x.csv", HEADER + "1,0,a\n")), "--store", str(s), "--model", "bogus"],
        ("unknown model 'bogus'", "known models: minilm, minilm-int8, elmo"),
    ),
    Case(
        "unimportable-plugin-model",
        lambda t, s: (
            ingest(write(t, "x.csv", HEADER + "1,0,a\n"), s)[:4] + ["--model", "py:no_such_module:X", "--clean", RECIPE]
        ),
        ("cannot load embedder", "fix:"),
    ),
    Case(
        "unknown-recipe",
        lambda t, s: [
            "ingest",
            str(write(t, "x.csv", HEADER + "1,0,a\n")),
            "--store",
            str(s),
            "--model",
            MODEL,
            "--clean",
            "nope",
        ],
        ("unknown cleaning recipe 'nope'", "raw-v1"),
    ),
    Case(
        "no-space-for-model",
        lambda t, s: ["similar", "hi", "--store", str(s), "--model", MODEL, "--clean", "basic-v1"],
        ("has no vectors for model", "ingest with that model first"),
    ),
    Case(
        "dataset-with-slash",
        lambda t, s: ingest(write(t, "x.csv", HEADER + "1,0,a\n"), s, dataset="a/b"),
        ("invalid dataset name 'a/b'", "without '/' or '..'"),
    ),
    Case(
        "dataset-dotdot",
        lambda t, s: ingest(write(t, "x.csv", HEADER + "1,0,a\n"), s, dataset=".."),
        ("invalid dataset name '..'",),
    ),
    Case(
        "dataset-traversal",
        lambda t, s: ingest(write(t, "x.csv", HEADER + "1,0,a\n"), s, dataset="../../etc"),
        ("invalid dataset name",),
    ),
    Case(
        "k-zero", lambda t, s: ["similar", "hi", "--k", "0", *M, "--store", str(s)], ("--k must be at least 1, got 0",)
    ),
    Case(
        "similar-neither-text-nor-id",
        lambda t, s: ["similar", *M, "--store", str(s)],
        ("give either a query text or an --id",),
    ),
    Case(
        "similar-unknown-id",
        lambda t, s: ["similar", "--id", "999999", *M, "--store", str(s)],
        ("id '999999' is not in",),
    ),
    Case(
        "unknown-classifier-kind",
        lambda t, s: ["train", "--classifier", "xgb", *M, "--store", str(s)],
        ("unknown --classifier 'xgb'", "logreg"),
    ),
    Case(
        "test-size-out-of-range",
        lambda t, s: ["train", "--test-size", "1.5", *M, "--store", str(s)],
        ("--test-size 1.5",),
    ),
    Case(
        "predict-unknown-classifier",
        lambda t, s: [
            "predict",
            "--dataset",
            "train",
            "--classifier-name",
            "nope",
            "--out",
            str(t / "o.csv"),
            "--store",
            str(s),
        ],
        ("no trained classifier 'nope'", "trained: clf"),
    ),
    Case(
        "store-parent-is-a-file",
        lambda t, s: ingest(write(t, "x.csv", HEADER + "1,0,a\n"), write(t, "afile", "x") / "store"),
        ("is not writable", "--store"),
    ),
    Case(
        "store-is-a-file",
        lambda t, s: ingest(write(t, "x.csv", HEADER + "1,0,a\n"), write(t, "afile", "x")),
        ("is a file, not a directory", "--store"),
    ),
    # -- issue 23: nothing changed without a word (tests/test_input_*.py hold the rules; these go through fs)
    Case(
        "two-text-columns",
        lambda t, s: ingest(write(t, "c.csv", "id,Text,tweet\n1,a long one,short\n"), s),
        ("2 columns that could hold the text: Text, tweet", "fix: --text-col NAME, one of them"),
    ),
    Case(
        "two-text-columns-chosen",
        lambda t, s: ingest(write(t, "c.csv", "id,Text,tweet\n1,a long one,short\n"), s, "--text-col", "Text"),
        verify=_round_trip({1: (None, "a long one")}),
    ),
    Case(
        "jsonl-text-keys-spelled-two-ways",
        lambda t, s: ingest(write(t, "j.jsonl", '{"id": 1, "text": "a"}\n{"id": 2, "tweet": "b"}\n'), s),
        ("lines spell the text key differently", "use one key for the text on every line"),
    ),
    Case(
        "twitter-full-text-over-text",
        lambda t, s: ingest(write(t, "tw.jsonl", _tweets()), s),
        verify=_twitter_stored,
    ),
    Case(
        "tsv-tweet-opening-with-a-quote",
        lambda t, s: ingest(write(t, "q.tsv", 'id\tlabel\ttweet\n1\t0\t"so tired\n2\t1\tok\n3\t0\tfine\n'), s),
        ("line 2 opens a quoted field", "--quote ''"),
    ),
    Case(
        "line-break-outside-quotes",
        lambda t, s: ingest(write(t, "n.csv", HEADER + "1,0,first line\ncontinued\n2,1,x\n"), s),
        ("line 3 has 1 field where the header has 3", "rest of the tweet on line 2", "put that tweet in quotes"),
    ),
    Case(
        "backslash-escaped-quotes",
        lambda t, s: ingest(write(t, "b.csv", HEADER + '1,0,"he said \\"hi\\""\n'), s),
        ("backslash-escaped quotes", "--escape '\\'"),
    ),
    Case(
        "plain-tweets-with-commas",
        lambda t, s: ingest(write(t, "p.csv", "I love it, really\nbattery died, again\n"), s),
        ("--format txt",),
    ),
    Case(
        "plain-tweets-with-commas-as-txt",
        lambda t, s: ingest(write(t, "p.csv", "I love it, really\nbattery died, again\n"), s, "--format", "txt"),
        verify=_round_trip({1: (None, "I love it, really"), 2: (None, "battery died, again")}),
    ),
    Case(
        "pandas-to-json-columns",
        lambda t, s: ingest(
            write(t, "p.json", '{"id":{"0":7,"1":8},"label":{"0":1.0,"1":null},"text":{"0":"a","1":"b"}}'), s
        ),
        verify=_round_trip({7: (1, "a"), 8: (None, "b")}),
    ),
    Case(
        "label-and-id-spellings",
        lambda t, s: ingest(write(t, "l.csv", HEADER + " 1,1.0,a\n2 ,0.0,b\n3, 1,c\n4,NaN,d\n5,,e\n"), s),
        verify=_round_trip({1: (1, "a"), 2: (0, "b"), 3: (1, "c"), 4: (None, "d"), 5: (None, "e")}),
    ),
    Case(
        "one-class-two-spellings",
        lambda t, s: ingest(write(t, "l.csv", HEADER + "1,1,a\n2,true,b\n"), s),
        ("labels '1' (row 1) and 'true' (row 2)", "write that class one way"),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_catalogue(case: Case, store: Path, tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    args = case.make(inputs, store)
    before = files(store)
    r = run_cli(*args, input=case.stdin or "")
    if case.error is not None:
        assert_error(r, *case.error)
        assert files(store) == before, "an error changed the store"
    else:
        assert_ok(r)
        assert "Traceback" not in r.stderr
        case.verify(store, r)
    assert_consistent(store)


# ----------------------------------------------------------------------------- faults during a run


def _no_big_writes(limit: int) -> Callable[[], None]:
    def pre() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return pre


def test_disk_full_during_a_commit(store: Path, tmp_path: Path) -> None:
    rows = {i: (i % 2, f"tweet number {i}") for i in range(1001, 1301)}
    rows[1250] = (0, "x" * 600_000)  # the third batch's row segment outgrows the file size limit
    src = write(tmp_path, "full.csv", _csv(rows))
    gen = committed_generation(store)
    args = ingest(src, store, "--batch-rows", "100")
    r = subprocess.run(
        fs_cmd(*args),
        cwd=ROOT,
        env=fs_env(),
        capture_output=True,
        text=True,
        preexec_fn=_no_big_writes(300_000),
        timeout=120,
    )
    assert r.returncode != 0
    assert committed_generation(store) == gen + 2  # the two batches before it are committed
    assert len(rows_of(store, "extra")) == 200
    assert_ok(run_cli("check", "--store", str(store)))
    assert_ok(run_cli(*args))
    assert rows_of(store, "extra") == as_stored(rows)
    assert_consistent(store)
    assert "Traceback" not in r.stderr
    assert_error(r, "nothing from this batch was committed", "free disk space")


@pytest.mark.slow  # a real process, interrupted with SIGINT mid-ingest
def test_ctrl_c_during_ingest(store: Path, tmp_path: Path) -> None:
    src = write_slice(tmp_path / "more.csv", 600, start=1000)
    args = ingest(src, store, "--batch-rows", "100")
    # 0.15 s a model call: ~2.4 s of work left after the second commit, so on a loaded machine
    # the interrupt still lands mid-run (0.05 left ~0.8 s, and the run sometimes finished first).
    p = subprocess.Popen(
        fs_cmd(*args),
        cwd=ROOT,
        env=fs_env(FS_FAKE_SLEEP="0.15"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    gen = committed_generation(store)
    while committed_generation(store) < gen + 2:
        assert p.poll() is None, p.communicate()
        time.sleep(0.02)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert "Traceback" not in err
    error_lines = [line for line in err.splitlines() if line.startswith("Error: ")]
    assert (
        len(error_lines) == 1
        and "batch(es) committed" in error_lines[0]
        and "run the same command again" in error_lines[0]
    )
    n = int(error_lines[0].split("interrupted: ")[1].split()[0])
    assert n >= 2 and committed_generation(store) == gen + n
    assert_ok(run_cli("check", "--store", str(store)))
    assert_ok(run_cli(*args))
    assert len(rows_of(store, "extra")) == 600
    assert_consistent(store)


# ----------------------------------------------------------------------------- damaged stores


def _latest_manifest(store: Path) -> Path:
    return max((store / "manifest").glob("*.json"))


def test_corrupt_manifest_then_repair_recovers_every_vector(store: Path) -> None:
    vectors, rows = store_vectors(store), rows_of(store, "train")
    _latest_manifest(store).write_bytes(b"\x00garbage{{{")
    r = run_cli("info", "--store", str(store))
    assert_error(r, "is corrupt", "fs repair --store")
    c = run_cli("check", "--store", str(store))
    assert c.returncode != 0 and c.exception is None and "fs repair" in c.stdout, c.stdout + c.traceback
    rep = assert_ok(run_cli("repair", "--store", str(store)))
    assert "store is consistent" in rep.stdout
    after = store_vectors(store)
    assert set(after) == set(vectors) and all(np.array_equal(after[k], vectors[k]) for k in vectors)
    assert rows_of(store, "train") == rows
    assert_ok(run_cli("check", "--store", str(store)))


def test_store_from_a_newer_schema(store: Path) -> None:
    m = _latest_manifest(store)
    data = json.loads(m.read_text())
    data["schema"] = 99  # checksum left stale on purpose: the schema is judged first
    m.write_text(json.dumps(data))
    before = files(store)
    r = run_cli("info", "--store", str(store))
    assert_error(r, "newer featurestore (schema 99)", "upgrade featurestore")
    w = run_cli(*ingest(write(store.parent, "x.csv", HEADER + "1,0,a\n"), store))
    assert_error(w, "newer featurestore (schema 99)")
    assert files(store) == before


def test_truncated_index_is_rebuilt(store: Path) -> None:
    query = rows_of(store, "train")["5"][1]
    args = ["similar", query, "--k", "5", "--json", *M, "--store", str(store)]
    first = assert_ok(run_cli(*args))
    faiss_file = next((store / "index").glob("*.faiss"))
    faiss_file.write_bytes(faiss_file.read_bytes()[: faiss_file.stat().st_size // 2])
    second = assert_ok(run_cli(*args))
    a, b = json.loads(first.stdout), json.loads(second.stdout)
    assert b["info"]["index"].startswith("rebuilt"), b["info"]
    assert [(h["ids"], round(h["score"], 5)) for h in a["hits"]] == [
        (h["ids"], round(h["score"], 5)) for h in b["hits"]
    ]
    assert_ok(run_cli("check", "--store", str(store)))


# ----------------------------------------------------------------------------- no code from data files


def _predict(store: Path, tmp_path: Path) -> Ran:
    return run_cli(
        "predict",
        "--dataset",
        "train",
        "--classifier-name",
        "clf",
        "--out",
        str(tmp_path / "o.csv"),
        "--store",
        str(store),
    )


def _swap_classifier(store: Path, payload: bytes, fix_manifest: bool) -> None:
    (store / "classifiers" / "clf.skops").write_bytes(payload)
    if fix_manifest:  # an attacker who can write the file can write its manifest too
        meta = store / "classifiers" / "clf.json"
        m = json.loads(meta.read_text())
        m["file_sha256"] = hashlib.sha256(payload).hexdigest()
        meta.write_text(json.dumps(m))


def test_predict_works_before_tampering(store: Path, tmp_path: Path) -> None:
    assert_ok(_predict(store, tmp_path))
    assert (tmp_path / "o.csv").read_text().count("\n") == 201


@pytest.mark.parametrize("fix_manifest", [False, True], ids=["manifest-hash-stale", "manifest-hash-forged"])
def test_pickle_classifier_is_refused_and_never_run(store: Path, tmp_path: Path, fix_manifest: bool) -> None:
    marker = tmp_path / "pwned"
    _swap_classifier(store, pickle.dumps(Payload(str(marker))), fix_manifest)
    r = _predict(store, tmp_path)
    assert r.returncode != 0
    assert not marker.exists(), "code in a classifier file ran"
    assert not (tmp_path / "o.csv").exists()
    assert_error(r, "classifier file", "retrain" if not fix_manifest else "not")


def test_skops_file_with_untrusted_type_is_refused(store: Path, tmp_path: Path) -> None:
    import skops.io as sio

    marker = tmp_path / "pwned"
    _swap_classifier(store, sio.dumps(Payload(str(marker))), fix_manifest=True)
    r = _predict(store, tmp_path)
    assert_error(r, "not trusted", "Payload")
    assert not marker.exists(), "code in a classifier file ran"


def test_rlimit_helper_is_effective(tmp_path: Path) -> None:
    """Guards the disk-full test itself: the limit really turns big writes into EFBIG."""
    code = f"open({str(tmp_path / 'f')!r}, 'wb').write(b'x' * 10_000)"
    r = subprocess.run(["python3", "-c", code], capture_output=True, text=True, preexec_fn=_no_big_writes(1000))
    assert r.returncode != 0 and "File too large" in r.stderr
    assert os.path.getsize(tmp_path / "f") <= 1000
