"""Issue 23, output files: ``--out`` is written the one way (``storage.atomic.write_output``).

A regular file is replaced atomically only when the user could write it; a FIFO or a device is written as
a stream (its reader gets the bytes, the node is not replaced); ``-`` is stdout; a read-only file is
refused, unchanged and with its mode unchanged.
"""

from __future__ import annotations

import io
import os
import stat
import threading
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from cli.main import app
from featurestore.api import FeatureStore
from tests.conftest import FAKE, train_rows, write_csv

runner = CliRunner()
M = ["--model", FAKE, "--clean", "raw-v1"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("outputs")
    fs = FeatureStore(d / "store")
    fs.ingest(str(write_csv(d / "t.csv", train_rows(40))), "train", FAKE, "raw-v1")
    fs.train("train", FAKE, "raw-v1", plots=False)
    return d / "store"


def invoke(args: list[str]):  # noqa: ANN201 - click's Result
    return runner.invoke(app, args)


def one_line_error(r, *words: str) -> str:  # noqa: ANN001
    err = r.stderr.strip()
    assert r.exit_code == 1, (r.exit_code, r.output)
    assert err.startswith("Error: ") and len(err.splitlines()) == 1 and "fix:" in err, err
    assert "internal error" not in err
    for w in words:
        assert w in err, err
    return err


COMMANDS = {
    "predict": lambda store, out: ["predict", "-d", "train", "--out", str(out), "--store", str(store)],
    "export": lambda store, out: ["export", "-d", "train", "--out", str(out), "--store", str(store), *M],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_fifo_reader_gets_the_bytes(trained: Path, tmp_path: Path, command: str) -> None:
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)
    reader.start()
    r = invoke(COMMANDS[command](trained, fifo))
    reader.join(10)
    assert r.exit_code == 0, r.output
    assert stat.S_ISFIFO(os.stat(fifo).st_mode), "the FIFO was replaced by a regular file"
    assert got and got[0], "the FIFO's reader got nothing"
    if command == "predict":
        assert got[0].decode().startswith("id,label\n")
    else:
        assert pq.read_table(io.BytesIO(got[0])).num_rows == 40


def test_map_to_fifo(trained: Path, tmp_path: Path) -> None:
    fifo = tmp_path / "map.html"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)
    reader.start()
    r = invoke(["map", "-d", "train", "--out", str(fifo), "--method", "pca", "--store", str(trained), *M])
    reader.join(10)
    assert r.exit_code == 0, r.output
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    assert got and got[0].startswith(b"<!DOCTYPE html>")


def test_dash_is_stdout(trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    r = invoke(["predict", "-d", "train", "--out", "-", "--store", str(trained)])
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith("id,label\n") and len(r.stdout.splitlines()) == 41
    assert "wrote 40 predictions" in r.stderr and "to stdout" in r.stderr
    assert not (tmp_path / "-").exists(), "a file named '-' was created"


def test_export_dash_is_stdout(trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    r = invoke(["export", "-d", "train", "--out", "-", "--store", str(trained), *M])
    assert r.exit_code == 0, r.stderr
    assert pq.read_table(io.BytesIO(r.stdout_bytes)).num_rows == 40
    assert not (tmp_path / "-").exists()


def test_npy_and_map_refuse_dash(trained: Path) -> None:
    r = invoke(["export", "-d", "train", "--out", "-", "--format", "npy", "--store", str(trained), *M])
    one_line_error(r, "--out", "stdout")
    r = invoke(["map", "-d", "train", "--out", "-", "--store", str(trained), *M])
    one_line_error(r, "--out", ".png")


@pytest.mark.parametrize("command", [*sorted(COMMANDS), "map"])
def test_read_only_file_is_refused_unchanged(trained: Path, tmp_path: Path, command: str) -> None:
    out = tmp_path / ("out.png" if command == "map" else "out.csv")
    out.write_bytes(b"precious\n")
    out.chmod(0o444)
    args = (
        ["map", "-d", "train", "--out", str(out), "--method", "pca", "--store", str(trained), *M]
        if command == "map"
        else COMMANDS[command](trained, out)
    )
    one_line_error(invoke(args), "read-only", str(out))
    assert out.read_bytes() == b"precious\n"
    assert stat.S_IMODE(out.stat().st_mode) == 0o444


def test_npy_export_refuses_a_read_only_file_in_its_folder(trained: Path, tmp_path: Path) -> None:
    folder = tmp_path / "npy"
    folder.mkdir()
    (folder / "ids.npy").write_bytes(b"mine")
    (folder / "ids.npy").chmod(0o444)
    r = invoke(["export", "-d", "train", "--out", str(folder), "--format", "npy", "--store", str(trained), *M])
    one_line_error(r, "read-only")
    assert sorted(p.name for p in folder.iterdir()) == ["ids.npy"], "nothing is written before the refusal"


def test_dev_null_is_not_replaced(trained: Path) -> None:
    before = os.stat("/dev/null")
    r = invoke(["predict", "-d", "train", "--out", "/dev/null", "--store", str(trained)])
    assert r.exit_code == 0, r.output
    after = os.stat("/dev/null")
    assert stat.S_ISCHR(after.st_mode) and after.st_ino == before.st_ino


def test_writable_file_is_replaced_keeping_its_mode(trained: Path, tmp_path: Path) -> None:
    out = tmp_path / "sub.csv"
    out.write_text("old\n")
    out.chmod(0o600)
    r = invoke(["predict", "-d", "train", "--out", str(out), "--store", str(trained)])
    assert r.exit_code == 0, r.output
    assert out.read_text().startswith("id,label\n")
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["sub.csv"], "no temporary file left"


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_unwritable_folder_is_refused_before_work(trained: Path, tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        one_line_error(invoke(COMMANDS["predict"](trained, folder / "x.csv")), "not writable")
    finally:
        folder.chmod(0o755)


def test_folder_out_is_refused(trained: Path, tmp_path: Path) -> None:
    one_line_error(invoke(COMMANDS["predict"](trained, tmp_path)), "is a directory")
