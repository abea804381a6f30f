"""Real files as users bring them, end to end through ``fs``: ids kept exactly, labels that change,
spaces chosen explicitly, long texts, shared and read-only stores, mistyped paths."""

from __future__ import annotations

import csv
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cli.main import app
from featurestore.api import FeatureStore
from featurestore.check import check
from tests.conftest import FAKE, ROOT, train_rows

M = ("--model", FAKE, "--clean", "raw-v1")
runner = CliRunner()


def fs(*args: str, input: str | None = None):
    r = runner.invoke(app, list(args), input=input)
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    assert "Traceback" not in r.output
    return r


def error_of(r) -> str:
    assert r.exit_code != 0, r.output
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1 and err.startswith("Error: "), err
    return err


def write(path: Path, header: list[str], rows: list[list[str]], delimiter: str = ",") -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter=delimiter)
        w.writerow(header)
        w.writerows(rows)
    return path


def test_text_ids_and_string_labels_go_through_ingest_train_predict(tmp_path: Path) -> None:
    """The issue's acceptance file: ids 000123, a1b2, 12345678901234567890123 and labels pos/neg come
    back from ``fs predict --out`` exactly as they went in."""
    real = train_rows(120)
    special = ["000123", "a1b2", "12345678901234567890123", "123", "id,with comma", 'quote"d']
    ids = special + [f"x{i:04d}" for i in range(len(real) - len(special))]
    rows = [[i, "pos" if r["label"] == "1" else "neg", r["tweet"]] for i, r in zip(ids, real)]
    src = write(tmp_path / "tweets.csv", ["ID", "Sentiment", "Tweet"], rows)
    store = str(tmp_path / "store")
    r = fs("ingest", str(src), "--store", store, "--dataset", "d", *M)
    assert r.exit_code == 0, r.output
    assert "ids: column 'ID'" in r.stdout and "labels: column 'Sentiment'" in r.stdout
    assert FeatureStore(store).rows("d")["ids"].tolist() == ids
    r = fs("train", "--store", store, "--dataset", "d", "--name", "pn", *M)
    assert r.exit_code == 0, r.output
    assert "classes 'neg', 'pos'" in r.stdout and "positive 'pos'" in r.stdout
    out = tmp_path / "pred.csv"
    r = fs("predict", "--store", store, "--dataset", "d", "--classifier-name", "pn", "--out", str(out))
    assert r.exit_code == 0, r.output
    with open(out, newline="", encoding="utf-8") as f:
        written = list(csv.reader(f))
    assert written[0] == ["id", "label"]
    assert [row[0] for row in written[1:]] == ids
    assert {row[1] for row in written[1:]} <= {"pos", "neg"}


def test_ids_without_an_id_column_are_row_numbers_and_the_summary_says_so(tmp_path: Path) -> None:
    src = write(tmp_path / "t.csv", ["tweet"], [["one"], ["two"]])
    r = fs("ingest", str(src), "--store", str(tmp_path / "s"), "--dataset", "d", *M)
    assert r.exit_code == 0 and "ids: row numbers" in r.stdout and "no labels" in r.stdout
    assert FeatureStore(tmp_path / "s").rows("d")["ids"].tolist() == ["1", "2"]


def test_in_file_duplicate_ids_follow_the_duplicates_option(tmp_path: Path) -> None:
    src = write(
        tmp_path / "a.csv",
        ["tweet_id", "airline_sentiment", "text"],
        [["1", "negative", "late again"], ["2", "positive", "great crew"], ["1", "neutral", "late again"]],
    )
    store = str(tmp_path / "s")
    err = error_of(fs("ingest", str(src), "--store", store, "--dataset", "d", *M))
    assert "--duplicates" in err and not (tmp_path / "s" / "segments").exists() or check(FeatureStore(store).store).ok
    r = fs("ingest", str(src), "--store", store, "--dataset", "d", "--duplicates", "last", *M)
    assert r.exit_code == 0, r.output
    rows = FeatureStore(store).rows("d")
    assert dict(zip(rows["ids"].tolist(), rows["labels"].tolist())) == {"1": "neutral", "2": "positive"}


def test_a_second_dtype_never_shadows_the_first(tmp_path: Path) -> None:
    store = str(tmp_path / "s")
    a = write(
        tmp_path / "a.csv", ["id", "label", "tweet"], [[str(i), str(i % 2), f"tweet a{i} w{i % 3}"] for i in range(40)]
    )
    b = write(tmp_path / "b.csv", ["id", "label", "tweet"], [[str(i), str(i % 2), f"tweet b{i}"] for i in range(30)])
    assert fs("ingest", str(a), "--store", store, "--dataset", "a", *M).exit_code == 0
    assert fs("ingest", str(b), "--store", store, "--dataset", "b", "--dtype", "float16", *M).exit_code == 0
    r = fs("train", "--store", store, "--dataset", "a", *M)  # only the float32 space covers 'a'
    assert r.exit_code == 0, r.output
    assert "the one covering 'a'" in r.stderr and "float32" in r.stderr
    err = error_of(fs("similar", "tweet", "--store", store, *M))  # both spaces fit: no silent half answer
    assert "2 stored spaces fit" in err and "--dtype" in err and "float16" in err
    r = fs("similar", "tweet b1", "--store", store, "--dtype", "float16", "--json", *M)
    assert r.exit_code == 0 and {tuple(h["ids"][0])[0] for h in json.loads(r.stdout)["hits"]} == {"b"}
    r = fs("similar", "tweet a1", "--store", store, "--dtype", "float32", "--json", "--k", "50", *M)
    assert r.exit_code == 0 and len(json.loads(r.stdout)["hits"]) == 40


def test_one_huge_tweet_is_cut_for_embedding_never_a_canary_and_shown_short(tmp_path: Path) -> None:
    huge = "word " * 2_000_000  # 10 MB
    src = write(tmp_path / "big.csv", ["id", "tweet"], [["1", "a short tweet"], ["2", huge], ["3", "another one"]])
    store = tmp_path / "s"
    r = fs("ingest", str(src), "--store", str(store), "--dataset", "d", *M)
    assert r.exit_code == 0 and "truncated 1" in r.stdout
    f = FeatureStore(store)
    space = f.space(FAKE, "raw-v1")
    assert all(len(c) <= 280 for c in space.canaries) and len(space.canaries) == 2
    assert max(p.stat().st_size for p in (store / "manifest").iterdir()) < 10_000
    assert f.rows("d")["texts"].tolist()[1] == huge  # the raw text is kept whole
    r = fs("similar", "--id", "2", "--store", str(store), "--k", "1", *M)
    assert r.exit_code == 0 and len(r.stdout) < 400 and "chars)" in r.stdout


def test_read_commands_on_a_mistyped_store_path_fail_clearly(tmp_path: Path) -> None:
    for cmd in (["check"], ["info"], ["repair"], ["similar", "x", *M], ["train", *M]):
        err = error_of(fs(*cmd, "--store", str(tmp_path / "nope")))
        assert "does not exist" in err and "--store" in err, cmd
    assert not (tmp_path / "nope").exists()


def test_repair_of_a_healthy_store_publishes_nothing(tmp_path: Path) -> None:
    store = tmp_path / "s"
    src = write(tmp_path / "t.csv", ["id", "tweet"], [["1", "one"], ["2", "two"]])
    assert fs("ingest", str(src), "--store", str(store), *M).exit_code == 0
    before = sorted(p.name for p in (store / "manifest").iterdir())
    r = fs("repair", "--store", str(store))
    assert r.exit_code == 0 and "nothing to repair" in r.stdout
    assert sorted(p.name for p in (store / "manifest").iterdir()) == before


def test_store_files_are_readable_by_the_group_and_others(tmp_path: Path) -> None:
    store = tmp_path / "s"
    src = write(tmp_path / "t.csv", ["id", "label", "tweet"], [[str(i), str(i % 2), f"t {i}"] for i in range(20)])
    assert fs("ingest", str(src), "--store", str(store), *M).exit_code == 0
    assert fs("similar", "t 1", "--store", str(store), *M).exit_code == 0
    umask = os.umask(0)
    os.umask(umask)
    files = [p for p in store.rglob("*") if p.is_file() and p.name not in ("LOCK",) and not p.name.endswith(".lock")]
    assert files
    for p in files:
        assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~umask, p


def _run_as_reader(store: Path, *args: str) -> subprocess.CompletedProcess:
    """``fs ARGS`` by a user who may read the store but not write it (root ignores permissions, so a
    root test run drops to 'nobody' for this one command)."""
    cmd = [sys.executable, "-m", "cli.main", *args]
    if os.geteuid() == 0:
        cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *cmd]
    env = {**os.environ, "HOME": str(store.parent), "FS_CACHE_DIR": str(store.parent / "cache")}
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_read_only_store_answers_reads_and_refuses_writes_clearly(tmp_path: Path) -> None:
    top = Path(tempfile.mkdtemp(dir="/tmp"))  # not under pytest's 0700 tmp dir: 'nobody' must reach it
    try:
        os.chmod(top, 0o755)
        store = top / "store"
        rows = [[str(i), str(i % 2), r["tweet"]] for i, r in enumerate(train_rows(60))]
        src = write(top / "t.csv", ["id", "label", "tweet"], rows)
        assert fs("ingest", str(src), "--store", str(store), "--dataset", "d", *M).exit_code == 0
        for p in [store, *store.rglob("*")]:
            os.chmod(p, 0o555 if p.is_dir() else 0o444)
        r = _run_as_reader(store, "similar", rows[3][2], "--store", str(store), "--k", "2", *M)
        assert r.returncode == 0, r.stderr
        assert rows[3][2].split()[0] in r.stdout
        for args in (["info"], ["check"]):
            r = _run_as_reader(store, *args, "--store", str(store))
            assert r.returncode == 0, r.stderr
        r = _run_as_reader(store, "train", "--store", str(store), "--dataset", "d", *M)
        assert r.returncode == 1 and "Traceback" not in r.stderr
        assert r.stderr.startswith("Error: ") and "read-only" in r.stderr, r.stderr
        r = _run_as_reader(store, "ingest", str(src), "--store", str(store), "--dataset", "e", *M)
        assert r.returncode == 1 and "not writable" in r.stderr and "Traceback" not in r.stderr
    finally:
        for p in [top, *top.rglob("*")]:
            os.chmod(p, 0o755 if p.is_dir() else 0o644)
        shutil.rmtree(top)


def test_plain_text_on_stdin(tmp_path: Path) -> None:
    store = str(tmp_path / "s")
    r = fs(
        "ingest",
        "-",
        "--format",
        "txt",
        "--store",
        store,
        "--dataset",
        "d",
        *M,
        input="first tweet\nsecond\u2028same\n",
    )
    assert r.exit_code == 0, r.output
    assert FeatureStore(store).rows("d")["texts"].tolist() == ["first tweet", "second\u2028same"]


def test_xy_ids_are_numpy_text(tmp_path: Path) -> None:
    src = write(tmp_path / "t.csv", ["id", "label", "tweet"], [["007", "a", "x y"], ["7", "b", "y z"]])
    assert fs("ingest", str(src), "--store", str(tmp_path / "s"), "--dataset", "d", *M).exit_code == 0
    X, y, ids = FeatureStore(tmp_path / "s").xy("d", FAKE, "raw-v1")
    assert ids.tolist() == ["007", "7"] and y.tolist() == ["a", "b"] and X.shape == (2, 16)
    assert np.isfinite(X).all()


def test_messages_name_flags_on_the_command_line_and_parameters_in_python(tmp_path: Path) -> None:
    from featurestore.errors import InputFileError

    src = tmp_path / "excel.csv"
    src.write_bytes("id,label,tweet\n1,0,wait\u2026 what\n".encode("cp1252"))
    err = error_of(fs("ingest", str(src), "--store", str(tmp_path / "s"), *M))
    assert "fix: --encoding cp1252" in err
    with pytest.raises(InputFileError) as exc:
        FeatureStore(tmp_path / "s").ingest(str(src), "d", FAKE, "raw-v1")
    assert "fix: encoding cp1252" in str(exc.value) and "--" not in str(exc.value)
    assert "--batch-rows must be at least 1" in error_of(
        fs("ingest", str(src), "--batch-rows", "0", "--encoding", "cp1252", "--store", str(tmp_path / "s"), *M)
    )
