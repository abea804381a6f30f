"""Issue 23, "nothing changed without a word": internal errors, silent clamps, leaked warnings, and
arguments checked before the first commit. Each case ends in success or one line ``Error: ... fix: ...``."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from featurestore.api import FeatureStore
from tests.conftest import FAKE, train_rows, write_csv

runner = CliRunner()
M = ["--model", FAKE, "--clean", "raw-v1"]


def ok(r) -> None:  # noqa: ANN001 - click's Result
    assert r.exit_code == 0, r.output
    assert "Warning" not in r.stderr and "warnings.warn" not in r.stderr, r.stderr  # no third-party warning


def one_line_error(r, *words: str) -> str:  # noqa: ANN001
    err = r.stderr.strip()
    assert r.exit_code == 1, (r.exit_code, r.output)
    assert err.startswith("Error: ") and len(err.splitlines()) == 1 and "fix:" in err, err
    assert "internal error" not in err, err
    for w in words:
        assert w in err, err
    return err


def rows(labels: list[str], texts: list[str] | None = None) -> list[dict[str, str]]:
    texts = texts or [r["tweet"] for r in train_rows(len(labels))]
    return [{"id": str(i), "label": lab, "tweet": t} for i, (lab, t) in enumerate(zip(labels, texts))]


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return tmp_path / "store"


def ingest(store: Path, tmp_path: Path, dataset: str, data: list[dict[str, str]]) -> None:
    FeatureStore(store).ingest(str(write_csv(tmp_path / f"{dataset}.csv", data)), dataset, FAKE, "raw-v1")


# ---- internal errors


@pytest.mark.parametrize("suffix", [".png", ".html"])
def test_map_of_one_row_draws_one_point(store: Path, tmp_path: Path, suffix: str) -> None:
    ingest(store, tmp_path, "one", rows(["pos"]))
    out = tmp_path / f"m{suffix}"
    r = runner.invoke(app, ["map", "-d", "one", "--out", str(out), "--store", str(store), *M])
    ok(r)
    assert "(1 point, PCA)" in r.stdout and out.stat().st_size > 0


def test_map_of_identical_rows_prints_no_warning(store: Path, tmp_path: Path) -> None:
    ingest(store, tmp_path, "same", rows(["a", "b", "a"], ["same text"] * 3))
    ok(runner.invoke(app, ["map", "-d", "same", "--out", str(tmp_path / "m.png"), "--store", str(store), *M]))


def test_eval_on_a_dataset_with_none_of_the_classes(store: Path, tmp_path: Path) -> None:
    ingest(store, tmp_path, "pn", rows(["pos", "neg"] * 6))
    ingest(store, tmp_path, "zo", rows(["1", "0"] * 3))
    FeatureStore(store).train("pn", FAKE, "raw-v1", name="pn", plots=False)
    r = runner.invoke(app, ["eval", "-d", "zo", "--store", str(store)])
    one_line_error(r, "'zo'", "'0', '1'", "'neg', 'pos'")


def test_eval_with_some_unknown_labels_scores_the_positive_class(store: Path, tmp_path: Path) -> None:
    ingest(store, tmp_path, "pn", rows(["pos", "neg"] * 6))
    ingest(store, tmp_path, "mixed", rows(["pos", "neg", "neutral"] * 2))
    FeatureStore(store).train("pn", FAKE, "raw-v1", name="pn", plots=False)
    r = runner.invoke(app, ["eval", "-d", "mixed", "--store", str(store)])
    assert r.exit_code == 0, r.output
    assert "(positive 'pos')" in r.stdout and "'neutral'" in r.stderr  # said: those rows count as errors


# ---- silent clamps


@pytest.mark.parametrize("folds", ["1", "0", "-3"])
def test_folds_below_two_is_refused(store: Path, tmp_path: Path, folds: str) -> None:
    ingest(store, tmp_path, "train", rows(["pos", "neg"] * 10))
    r = runner.invoke(app, ["train", "--search", "quick", "--folds", folds, "--no-plots", "--store", str(store), *M])
    one_line_error(r, f"--folds must be at least 2, got {folds}")


def test_folds_above_the_smallest_class_is_refused(store: Path, tmp_path: Path) -> None:
    ingest(store, tmp_path, "train", rows(["pos", "neg"] * 10))
    r = runner.invoke(app, ["train", "--search", "quick", "--folds", "9", "--no-plots", "--store", str(store), *M])
    one_line_error(r, "--folds 9", "between 2 and")


def test_nlist_above_the_vectors_is_refused(store: Path, tmp_path: Path) -> None:
    ingest(store, tmp_path, "train", rows(["a"] * 50))
    r = runner.invoke(app, ["index", "build", "--kind", "ivf", "--nlist", "100000", "--store", str(store), *M])
    one_line_error(r, "--nlist 100000", "between 1 and 50")


def test_nlist_with_few_vectors_a_list_is_a_note_not_faiss_output(
    store: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    ingest(store, tmp_path, "train", rows(["a"] * 50))
    capfd.readouterr()
    r = runner.invoke(app, ["index", "build", "--kind", "ivf", "--nlist", "10", "--store", str(store), *M])
    assert r.exit_code == 0, r.output
    assert "note: nlist 10 trains each list on fewer than 39" in r.stderr
    assert "WARNING clustering" not in capfd.readouterr().err  # FAISS's own C++ warning


def test_nlist_for_a_flat_index_is_refused(store: Path, tmp_path: Path) -> None:
    ingest(store, tmp_path, "train", rows(["a"] * 5))
    r = runner.invoke(app, ["index", "build", "--kind", "flat", "--nlist", "4", "--store", str(store), *M])
    one_line_error(r, "--nlist 4 applies to an IVF index")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes a read-only folder")
def test_index_build_on_a_read_only_store_says_it_was_not_saved(store: Path, tmp_path: Path) -> None:
    ingest(store, tmp_path, "train", rows(["a"] * 5))
    mode = stat.S_IMODE(store.stat().st_mode)
    store.chmod(0o555)
    try:
        r = runner.invoke(app, ["index", "build", "--store", str(store), *M])
    finally:
        store.chmod(mode)
    one_line_error(r, "cannot save an index")
    assert "built" not in r.stdout


def test_index_build_that_cannot_save_is_an_error(store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As root a read-only folder is writable: the lock cannot be taken is simulated the way a read-only
    store shows it (``_update_lock`` yields False and nothing is saved)."""
    import contextlib

    from featurestore.query import index as faiss_index

    ingest(store, tmp_path, "train", rows(["a"] * 5))

    @contextlib.contextmanager
    def no_lock(*_: object):  # noqa: ANN202
        yield False

    monkeypatch.setattr(faiss_index, "_update_lock", no_lock)
    r = runner.invoke(app, ["index", "build", "--store", str(store), *M])
    one_line_error(r, "could not be saved")


# ---- arguments checked before the first commit


def test_ingest_checks_every_file_before_the_first_commit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write_csv(tmp_path / "a.csv", train_rows(3))
    r = runner.invoke(app, ["ingest", "--model", FAKE, "--", "a.csv", "--dataset", "t"])
    one_line_error(r, "--dataset does not exist", "put options before '--'")
    assert not (tmp_path / "store").exists()


@pytest.mark.parametrize("second", ["missing.csv", "folder", "-,-"])
def test_ingest_refuses_a_bad_later_input_before_writing(tmp_path: Path, second: str) -> None:
    write_csv(tmp_path / "a.csv", train_rows(3))
    (tmp_path / "folder").mkdir()
    extra = [str(tmp_path / s) if s != "-" else s for s in second.split(",")]
    r = runner.invoke(app, ["ingest", str(tmp_path / "a.csv"), *extra, "--model", FAKE, "--store", str(tmp_path / "s")])
    one_line_error(r)
    assert not (tmp_path / "s").exists()
