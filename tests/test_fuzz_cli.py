"""No traceback from any command, whatever the input: random bytes, random CSV dialects, random Unicode
and random option values go to ``fs ingest`` and the read commands, in process.

Every run must end in success or one line ``Error: ...`` that is not an internal error, and a failed
command must leave the store byte for byte as it was (and ``fs check`` passing).
"""

from __future__ import annotations

import csv
import hashlib
import io
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from cli.main import app
from featurestore.api import FeatureStore
from featurestore.check import check
from featurestore.storage.store import Store
from tests.conftest import FAKE, train_rows, write_csv

M = ["--model", FAKE, "--clean", "raw-v1"]
runner = CliRunner()
FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("fuzzbase")
    FeatureStore(d / "store").ingest(str(write_csv(d / "t.csv", train_rows(30))), "train", FAKE, "raw-v1")
    return d / "store"


def files(store: Path) -> dict[str, str]:
    return {
        str(p.relative_to(store)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(store.rglob("*"))
        if p.is_file() and p.name != "LOCK" and p.parent.name != "index"
    }


def run(store: Path, args: list[str], input: bytes | None = None) -> None:
    before = files(store)
    r = runner.invoke(app, args, input=input)
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    if r.exit_code != 0:
        err = r.stderr.strip()
        assert err.startswith("Error: ") and len(err.splitlines()) == 1, err
        assert "internal error" not in err, err
        if args[0] == "ingest":
            assert files(store) == before
    assert check(Store(store)).ok


def _fresh(base: Path, tmp: Path) -> Path:
    target = tmp / "store"
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(base, target)
    return target


cells = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)


@st.composite
def csv_files(draw) -> bytes:
    delim = draw(st.sampled_from([",", ";", "\t", "|"]))
    header = draw(
        st.lists(st.sampled_from(["id", "ID", "label", "Sentiment", "tweet", "text", "x", ""]), min_size=1, max_size=4)
    )
    rows = draw(st.lists(st.lists(cells, min_size=len(header), max_size=len(header)), max_size=6))
    buf = io.StringIO()
    csv.writer(buf, delimiter=delim).writerows([header, *rows])
    encoding = draw(st.sampled_from(["utf-8", "utf-16", "utf-8-sig"]))
    data = buf.getvalue().encode(encoding, "surrogatepass")
    if draw(st.booleans()):
        import gzip

        data = gzip.compress(data)
    return data


@FUZZ
@given(
    data=st.one_of(
        st.binary(max_size=300), csv_files(), st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass"))
    ),
    name=st.sampled_from(["in.csv", "in.jsonl", "in.json", "in.txt", "in.tsv", "in.parquet", "in.csv.gz", "in"]),
)
def test_ingest_of_random_bytes(base: Path, tmp_path_factory, data: bytes, name: str) -> None:
    tmp = tmp_path_factory.mktemp("f")
    store = _fresh(base, tmp)
    src = tmp / name
    src.write_bytes(data)
    run(store, ["ingest", str(src), "--store", str(store), "--dataset", "train", *M])


options = st.fixed_dictionaries(
    {},
    optional={
        "--sep": st.sampled_from([",", ";", "", "ab", "\t", "\x00"]),
        "--encoding": st.sampled_from(["utf-8", "latin-1", "klingon", "utf-16", "cp1252", ""]),
        "--format": st.sampled_from(["csv", "jsonl", "txt", "parquet", "xml", ""]),
        "--duplicates": st.sampled_from(["error", "first", "last", "sometimes"]),
        "--id-col": cells,
        "--label-col": cells,
        "--text-col": cells,
        "--dtype": st.sampled_from(["float32", "float16", "int8"]),
        "--batch-rows": st.sampled_from(["0", "-1", "1", "7", "x"]),
        "--max-chars": st.sampled_from(["0", "5", "-3", "100000"]),
        "--dataset": st.sampled_from(["train", "new", "../x", "", "a" * 70]),
    },
)


@FUZZ
@given(opts=options, stdin=st.booleans())
def test_ingest_with_random_options(base: Path, tmp_path_factory, opts: dict[str, str], stdin: bool) -> None:
    tmp = tmp_path_factory.mktemp("o")
    store = _fresh(base, tmp)
    src = write_csv(tmp / "t.csv", train_rows(40)[25:])
    args = ["ingest", "-" if stdin else str(src), "--store", str(store), *M]
    for k, v in opts.items():
        args += [k, v]
    run(store, args, input=src.read_bytes() if stdin else None)


@FUZZ
@given(
    cmd=st.sampled_from(["similar", "train", "predict", "info", "check"]),
    text=cells,
    k=st.sampled_from(["0", "1", "-2", "100000", "x"]),
    dataset=st.sampled_from(["train", "nope", "", "../x"]),
    extra=st.sampled_from(
        [
            [],
            ["--dtype", "float16"],
            ["--id", "1"],
            ["--id", "nope"],
            ["--test-size", "2"],
            ["--classifier", "svm"],
            ["--positive", "x"],
            ["--classifier-name", "../x"],
        ]
    ),
)
def test_read_commands_with_random_values(
    base: Path, tmp_path_factory, cmd: str, text: str, k: str, dataset: str, extra: list[str]
) -> None:
    tmp = tmp_path_factory.mktemp("r")
    store = _fresh(base, tmp)
    args = {
        "similar": ["similar", text, "--k", k, "--dataset", dataset, *M],
        "train": ["train", "--dataset", dataset, *M],
        "predict": ["predict", "--dataset", dataset, "--out", str(tmp / "p.csv")],
        "info": ["info"],
        "check": ["check"],
    }[cmd]
    if cmd in ("similar", "train", "predict"):
        args += [e for e in extra if cmd != "similar" or e[0] in ("--dtype", "--id")]
    run(store, [*args, "--store", str(store)])
