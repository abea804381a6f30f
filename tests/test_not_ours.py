"""Issue 23: gc, repair and the writer's sweep delete only names the store writes; a user's file in the
store's folders is left in place and reported ("not ours, left in place")."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from featurestore.api import FeatureStore
from featurestore.storage.store import Store, not_ours
from tests.conftest import FAKE, train_rows, write_csv

runner = CliRunner()
USER_FILES = ("segments/notes.txt", "manifest/README", "segments/seg-000001.h5.bak", "segments/my.h5")


@pytest.fixture
def store_with_user_files(tmp_path: Path) -> Path:
    fs = FeatureStore(tmp_path / "store")
    fs.ingest(str(write_csv(tmp_path / "t.csv", train_rows(12))), "train", FAKE, "raw-v1")
    for name in USER_FILES:
        (tmp_path / "store" / name).write_text("mine\n")
    return tmp_path / "store"


def assert_left(store: Path) -> None:
    for name in USER_FILES:
        assert (store / name).read_text() == "mine\n", f"{name} was deleted"


@pytest.mark.parametrize("command", ["gc", "repair"])
def test_command_leaves_and_reports_a_users_file(store_with_user_files: Path, command: str) -> None:
    r = runner.invoke(app, [command, "--store", str(store_with_user_files)])
    assert r.exit_code == 0, r.output
    assert_left(store_with_user_files)
    for name in USER_FILES:
        assert f"warning: {name} is not a file featurestore writes: not ours, left in place" in r.stderr, r.stderr


def test_ingest_sweep_leaves_a_users_file(store_with_user_files: Path, tmp_path: Path) -> None:
    FeatureStore(store_with_user_files).ingest(
        str(write_csv(tmp_path / "u.csv", train_rows(20)[12:])), "train", FAKE, "raw-v1"
    )
    assert_left(store_with_user_files)


def test_gc_still_removes_what_the_store_wrote(store_with_user_files: Path) -> None:
    orphan = store_with_user_files / "segments" / "seg-999999.h5"
    tmp = store_with_user_files / "segments" / ".tmp-abc.h5"
    orphan.write_bytes(b"x")
    tmp.write_bytes(b"x")
    r = FeatureStore(store_with_user_files).gc()
    assert not orphan.exists() and not tmp.exists()
    assert sorted(r.left) == sorted(USER_FILES)
    assert_left(store_with_user_files)


def test_check_warns_and_stays_ok(store_with_user_files: Path) -> None:
    r = runner.invoke(app, ["check", "--store", str(store_with_user_files)])
    assert r.exit_code == 0, r.output
    assert "warning: segments/notes.txt is not a file featurestore writes" in r.output


def test_names_the_store_writes() -> None:
    seg, man = Path("s/segments"), Path("s/manifest")
    for name in ("seg-000001.h5", "seg-1000000.h5", "ray-1a2b3c4d-vectors-0123456789abcdef.h5", ".tmp-x.h5"):
        assert not not_ours(seg, name), name
    for name in ("notes.txt", "seg-1.h5", "seg-000001.h5~", "ray-x.h5", "README"):
        assert not_ours(seg, name), name
    for name in ("00000001.json", ".tmp-abc", "00000002.corrupt"):
        assert not not_ours(man, name), name
    assert not_ours(man, "README") and not_ours(man, "1.json")
    assert Store  # imported for the public seam only
