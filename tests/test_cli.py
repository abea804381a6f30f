"""The ``fs`` commands through CliRunner: outputs, exit codes, help texts, one-line errors."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from cli.main import app
from featurestore.storage.store import Store
from tests.conftest import FAKE, ROOT, TEST_CSV, train_rows, write_csv
from tests.fakes import CountingEmbedder

runner = CliRunner()


def fs(*args: str, input: str | None = None):
    return runner.invoke(app, [str(a) for a in args], input=input)


def assert_error(result, *fragments: str) -> None:
    """A one-line ``Error: ...`` message, a non-zero exit code, no traceback."""
    assert result.exit_code != 0, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, result.output
    for f in fragments:
        assert f in errors[0], errors[0]


@pytest.fixture
def st(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def train_csv(tmp_path: Path) -> Path:
    return write_csv(tmp_path / "train.csv", train_rows(120))


@pytest.fixture
def test_csv(tmp_path: Path) -> Path:
    with open(TEST_CSV, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))[:30]
    return write_csv(tmp_path / "test.csv", rows, ("id", "tweet"))


@pytest.fixture
def loaded(st: Path, train_csv: Path, test_csv: Path) -> Path:
    for path, name in ((train_csv, "train"), (test_csv, "test")):
        r = fs("ingest", path, "--dataset", name, "--model", FAKE, "--store", st)
        assert r.exit_code == 0, r.output
    return st


# ---------------------------------------------------------------- commands


def test_ingest_prints_a_summary_and_reingest_embeds_nothing(st: Path, train_csv: Path) -> None:
    r = fs("ingest", train_csv, "--dataset", "train", "--model", FAKE, "--store", st)
    assert r.exit_code == 0, r.output
    assert f"dataset train  model {FAKE}  recipe tweet-v1" in r.output
    assert "rows read 120  new ids 120  duplicates 0" in r.output
    assert "batches committed 1" in r.output
    assert CountingEmbedder.log  # the plugin embedder was loaded through the registry and used
    CountingEmbedder.log.clear()
    r = fs("ingest", train_csv, "--dataset", "train", "--model", FAKE, "--store", st)
    assert r.exit_code == 0, r.output
    assert "new ids 0  duplicates 120" in r.output and "cache hits 0  texts embedded 0" in r.output
    assert CountingEmbedder.log == []


def test_ingest_options(st: Path, tmp_path: Path) -> None:
    p = tmp_path / "x.tsv"
    p.write_text("key\tbody\n10\tHello World\n11\thello world!\n", encoding="utf-8")
    r = fs(
        "ingest",
        p,
        "-d",
        "x",
        "--text-col",
        "body",
        "--id-col",
        "key",
        "--model",
        FAKE,
        "--clean",
        "basic-v1",
        "--dtype",
        "float16",
        "--batch-rows",
        "1",
        "--store",
        st,
    )
    assert r.exit_code == 0, r.output
    assert "recipe basic-v1" in r.output and "cache hits 1  texts embedded 1" in r.output
    assert "batches committed 2" in r.output
    data = json.loads(fs("info", "--json", "--store", st).output)
    assert data["datasets"][0]["name"] == "x" and data["datasets"][0]["rows"] == 2
    assert data["spaces"][0]["dtype"] == "float16" and data["spaces"][0]["recipe"] == "basic-v1"


def test_info(loaded: Path) -> None:
    r = fs("info", "--store", loaded)
    assert r.exit_code == 0, r.output
    assert f"store {loaded}  generation 2" in r.output
    assert "train" in r.output and "120 rows" in r.output and "keyed: tweet-v1 120" in r.output
    assert "test" in r.output and "30 rows" in r.output
    assert "16-d float32" in r.output and "coverage: test 30, train 120" in r.output
    data = json.loads(fs("info", "--json", "--store", loaded).output)
    assert data["generation"] == 2
    assert {d["name"]: d["rows"] for d in data["datasets"]} == {"train": 120, "test": 30}
    (space,) = data["spaces"]
    assert space["model"] == FAKE and space["dim"] == 16 and space["coverage"] == {"train": 120, "test": 30}


def test_info_on_an_empty_store(st: Path) -> None:
    assert_error(fs("info", "--store", st), "does not exist", "--store")  # a mistyped path is not an empty store
    with Store(st).writer():
        pass  # an empty store: generation 0
    r = fs("info", "--store", st)
    assert r.exit_code == 0 and "datasets: none" in r.output and "spaces: none" in r.output


def test_train_and_predict(loaded: Path, tmp_path: Path) -> None:
    r = fs("train", "--model", FAKE, "--name", "clf", "--store", loaded)
    assert r.exit_code == 0, r.output
    assert "logreg on train" in r.output and "96 train / 24 validation rows" in r.output and "F1 " in r.output
    r = fs("train", "--model", FAKE, "--name", "clf2", "--classifier", "sgd", "--json", "--store", loaded)
    assert r.exit_code == 0, r.output
    res = json.loads(r.output)
    assert res["classifier"] == "sgd" and res["n_train"] == 96 and 0.0 <= res["f1"] <= 1.0
    out = tmp_path / "sub.csv"
    r = fs("predict", "--dataset", "test", "--classifier-name", "clf", "--out", out, "--store", loaded)
    assert r.exit_code == 0, r.output
    assert "wrote 30 predictions" in r.output
    lines = out.read_text().splitlines()
    assert lines[0] == "id,label" and len(lines) == 31
    with open(TEST_CSV, newline="", encoding="utf-8") as f:
        want_ids = [row["id"] for row in list(csv.DictReader(f))[:30]]
    assert [ln.split(",")[0] for ln in lines[1:]] == want_ids
    assert {ln.split(",")[1] for ln in lines[1:]} <= {"0", "1"}


def test_similar_text_id_and_json(loaded: Path) -> None:
    tweet = train_rows(5)[4]["tweet"]
    r = fs("similar", tweet, "--k", "3", "--model", FAKE, "--store", loaded)
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0].split()[:3] == ["1", "1.0000", "train:5"]
    assert len([ln for ln in lines if ln.strip() and ln.split()[0].isdigit()]) == 3
    assert "(stored vector (model not loaded); index built, Flat)" in r.output
    r = fs("similar", "--id", "5", "-k", "2", "-d", "train", "--model", FAKE, "--json", "--store", loaded)
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert data["info"]["query"] == "stored vector" and data["info"]["index"] == "loaded"
    assert data["hits"][0]["ids"] == [["train", "5"]] and data["hits"][0]["text"] == tweet
    assert len(data["hits"]) == 2
    r = fs("similar", "an unseen query text", "--dataset", "test", "--json", "--model", FAKE, "--store", loaded)
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert data["info"]["query"] == "embedded" and len(data["hits"]) == 10
    assert {h["ids"][0][0] for h in data["hits"]} == {"test"}


def test_installed_fs_console_script(tmp_path: Path) -> None:
    """The one real ``fs`` process of the suite (everything else runs in-process): the console
    script starts, loads a ``py:`` model from the working directory, and exits non-zero with one
    ``Error:`` line on stderr and no traceback."""
    exe = shutil.which("fs", path=str(Path(sys.executable).parent))
    assert exe, f"no fs console script next to {sys.executable}: pip install -e ."
    src = write_csv(tmp_path / "t.csv", train_rows(20))
    st = tmp_path / "store"
    ok = subprocess.run(
        [exe, "ingest", str(src), "--model", FAKE, "--store", str(st)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ok.returncode == 0, ok.stderr
    assert "rows read 20  new ids 20" in ok.stdout
    bad = subprocess.run(
        [exe, "train", "--dataset", "nope", "--model", FAKE, "--store", str(st)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode != 0 and "Traceback" not in bad.stderr, bad.stderr
    err = bad.stderr.strip()
    assert len(err.splitlines()) == 1 and err.startswith("Error: ") and "'nope' does not exist" in err, err


def test_models_list_runs() -> None:
    r = fs("models", "list")
    assert r.exit_code == 0 and r.output.startswith("NAME")


# ---------------------------------------------------------------- help


def _walk(cmd, path: str = "fs"):
    yield path, cmd
    if getattr(cmd, "commands", None):  # a group (typer vendors its own click: duck-type it)
        for name, sub in cmd.commands.items():
            yield from _walk(sub, f"{path} {name}")


def test_every_command_and_option_has_help() -> None:
    root = typer.main.get_command(app)
    seen = []
    for path, cmd in _walk(root):
        seen.append(path)
        assert (cmd.help or "").strip(), f"{path} has no help text"
        for p in cmd.params:
            assert (getattr(p, "help", None) or "").strip(), f"{path} {p.name} has no help text"
    assert {"fs ingest", "fs train", "fs predict", "fs similar", "fs info", "fs models", "fs models list"} <= set(seen)
    for path in seen:
        r = fs(*path.split()[1:], "--help")
        assert r.exit_code == 0 and "Usage:" in r.output, path


def test_no_args_shows_help() -> None:
    r = fs()
    assert "Usage:" in r.output and "ingest" in r.output


# ---------------------------------------------------------------- errors


def test_missing_file(st: Path, tmp_path: Path) -> None:
    assert_error(fs("ingest", tmp_path / "nope.csv", "--model", FAKE, "--store", st), "does not exist")


def test_empty_file(st: Path, tmp_path: Path) -> None:
    p = tmp_path / "empty.csv"
    p.write_bytes(b"")
    assert_error(fs("ingest", p, "--model", FAKE, "--store", st), "is empty")


def test_missing_column(st: Path, tmp_path: Path) -> None:
    p = tmp_path / "c.csv"
    p.write_text("id,note\n1,x\n")
    assert_error(fs("ingest", p, "--model", FAKE, "--store", st), "columns found: id, note", "--text-col NAME")
    assert_error(
        fs("ingest", p, "--text-col", "note", "--id-col", "tid", "--model", FAKE, "--store", st), "no id column 'tid'"
    )


def test_undecodable_bytes(st: Path, tmp_path: Path) -> None:
    p = tmp_path / "c.csv"
    p.write_bytes(b"id,tweet\n1,ok\n2,caf\xe9\n")
    assert_error(fs("ingest", p, "--model", FAKE, "--store", st), "line 3", "--encoding")
    r = fs("ingest", p, "--encoding", "latin-1", "--model", FAKE, "--store", st)
    assert r.exit_code == 0, r.output


def test_three_classes_train_with_macro_f1_and_a_per_class_table(st: Path, tmp_path: Path) -> None:
    p = write_csv(tmp_path / "l.csv", [{"id": i, "label": i % 3, "tweet": f"tweet {i}"} for i in range(60)])
    assert fs("ingest", p, "--model", FAKE, "--store", st).exit_code == 0
    r = fs("train", "--model", FAKE, "--store", st)
    assert r.exit_code == 0, r.output
    assert "classes '0', '1', '2'" in r.stdout and "(macro average)" in r.stdout
    assert sum(1 for ln in r.stdout.splitlines() if ln.strip().startswith("'") and "support" in ln) == 3
    assert "only 12 validation rows" in r.stderr


def test_tiny_split_with_one_class_is_an_error_not_a_traceback(st: Path, tmp_path: Path) -> None:
    p = write_csv(tmp_path / "l.csv", [{"id": i, "label": int(i == 3), "tweet": f"tweet {i}"} for i in range(4)])
    assert fs("ingest", p, "--model", FAKE, "--store", st).exit_code == 0
    assert_error(fs("train", "--model", FAKE, "--test-size", "0.5", "--store", st), "training split", "only label '0'")


def test_unknown_dataset(loaded: Path) -> None:
    assert_error(
        fs("train", "--dataset", "nope", "--model", FAKE, "--store", loaded),
        "'nope' does not exist",
        "datasets: test, train",
    )
    assert_error(fs("similar", "x", "--dataset", "nope", "--model", FAKE, "--store", loaded), "'nope' does not exist")
    assert_error(
        fs("ingest", TEST_CSV, "--dataset", "../evil", "--model", FAKE, "--store", loaded), "invalid dataset name"
    )


def test_unknown_id_and_bad_query(loaded: Path) -> None:
    assert_error(fs("similar", "--id", "999999", "--model", FAKE, "--store", loaded), "id '999999' is not in")
    assert_error(fs("similar", "x", "--id", "1", "--model", FAKE, "--store", loaded), "not both")
    assert_error(fs("similar", "x", "--k", "0", "--model", FAKE, "--store", loaded), "--k must be at least 1")


def test_unknown_model_lists_known_models(st: Path, train_csv: Path) -> None:
    assert_error(
        fs("ingest", train_csv, "--model", "nope", "--store", st), "unknown model 'nope'", "minilm", "py:MODULE:ATTR"
    )
    assert_error(fs("ingest", train_csv, "--model", "py:tests.fakes:Missing", "--store", st), "cannot load embedder")


def test_model_without_vectors_in_the_store(loaded: Path) -> None:
    assert_error(
        fs("train", "--model", "minilm", "--store", loaded),
        "no vectors for model 'minilm'",
        f"({FAKE}, tweet-v1, float32, 150 vectors)",
    )


def test_unknown_recipe(st: Path, train_csv: Path) -> None:
    assert_error(
        fs("ingest", train_csv, "--clean", "tweet-v9", "--model", FAKE, "--store", st),
        "unknown cleaning recipe 'tweet-v9'",
        "raw-v1",
    )


def test_unknown_dtype(st: Path, train_csv: Path) -> None:
    assert_error(fs("ingest", train_csv, "--dtype", "int8", "--model", FAKE, "--store", st), "unknown --dtype")


def test_store_not_writable(tmp_path: Path, train_csv: Path) -> None:
    # Root ignores permission bits, so use a path under a regular file: mkdir fails for everyone.
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert_error(fs("ingest", train_csv, "--model", FAKE, "--store", blocker / "store"), "is not writable")
    assert_error(fs("ingest", train_csv, "--model", FAKE, "--store", blocker), "is a file, not a directory")
    assert_error(fs("info", "--store", blocker), "is a file")


def test_store_from_environment(tmp_path: Path, train_csv: Path) -> None:
    st = tmp_path / "env-store"
    r = runner.invoke(app, ["ingest", str(train_csv), "--model", FAKE], env={"FS_STORE": str(st)})
    assert r.exit_code == 0, r.output
    assert (st / "manifest").is_dir()


def test_conflicting_text_for_a_stored_id(loaded: Path, tmp_path: Path) -> None:
    rows = train_rows(2)
    rows[1] = {**rows[1], "tweet": "a different text"}
    p = write_csv(tmp_path / "conflict.csv", rows)
    assert_error(
        fs("ingest", p, "--dataset", "train", "--model", FAKE, "--store", loaded),
        "id '2' is already in dataset 'train'",
    )


def test_predict_with_unknown_classifier(loaded: Path, tmp_path: Path) -> None:
    assert_error(
        fs("predict", "--classifier-name", "nope", "--out", tmp_path / "o.csv", "--store", loaded),
        "no trained classifier 'nope'",
    )


def test_predict_creates_a_missing_folder_and_refuses_a_directory(loaded: Path, tmp_path: Path) -> None:
    assert fs("train", "--model", FAKE, "--name", "clf", "--store", loaded).exit_code == 0
    out = tmp_path / "no" / "o.csv"
    assert fs("predict", "--classifier-name", "clf", "--out", out, "--store", loaded).exit_code == 0
    assert out.read_text().startswith("id,label\n")
    assert_error(fs("predict", "--classifier-name", "clf", "--out", tmp_path, "--store", loaded), "is a directory")


@pytest.mark.parametrize("rows", ["0", "-5"])
def test_batch_rows_below_one_is_refused(st: Path, train_csv: Path, rows: str) -> None:
    """Regression: 0 crashed with a traceback; a negative value reported new ids but committed nothing."""
    assert_error(
        fs("ingest", train_csv, "--batch-rows", rows, "--model", FAKE, "--store", st),
        f"--batch-rows must be at least 1, got {rows}",
    )
    assert not (st / "manifest").exists() or not list((st / "manifest").iterdir())


def test_query_empty_after_cleaning_is_refused(loaded: Path) -> None:
    """Regression: '!!!' cleaned to '' and returned arbitrary neighbours, all scoring 0."""
    assert_error(
        fs("similar", "!!! http://x.com", "--model", FAKE, "--store", loaded), "empty after cleaning", "tweet-v1"
    )
