"""No traceback and no "internal error" from the commands that read datasets and classifiers: random small
datasets (1-12 rows; one class or several; labels as numbers, words, booleans or missing-value spellings)
go through ``fs train``, ``fs eval``, ``fs predict``, ``fs export`` and ``fs map`` with random options, in
process. Every run ends in success or one line ``Error: ...`` (the fix in it), and ``fs check`` passes after.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from cli.main import app
from featurestore.check import check
from featurestore.storage.store import Store
from tests.conftest import FAKE, train_rows, write_csv

M = ["--model", FAKE, "--clean", "raw-v1"]
runner = CliRunner()
FUZZ = settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
LABELS = ["0", "1", "pos", "neg", "true", "1.0", "NaN", "", " 1", "n/a", "2"]
counter = itertools.count()


def invoke(args: list[str]) -> int:
    r = runner.invoke(app, args)
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    if r.exit_code != 0:
        err = r.stderr.strip().splitlines()
        assert err and err[-1].startswith("Error: ") and "internal error" not in err[-1], r.stderr
        assert "Traceback" not in r.output, r.output
    return r.exit_code


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzzcmds")


TRAINABLE = ["pos", "neg"] * 5


@FUZZ
# a classifier trains in these, so eval and predict meet one: labels the classifier saw, and ones it did not
@example(TRAINABLE, ["pos", "neg", "1"], "logreg", None, None, "-", "npy")
@example(TRAINABLE, ["0", "1"], "logreg", "2", "0.25", "p.csv", "parquet")
@given(
    labels=st.one_of(  # odd label sets, and plain two-class ones that train, so eval and predict meet a classifier
        st.lists(st.sampled_from(LABELS), min_size=1, max_size=6),
        st.lists(st.sampled_from(["pos", "neg"]), min_size=8, max_size=12).filter(lambda x: len(set(x)) == 2),
    ),
    eval_labels=st.lists(st.sampled_from(LABELS), min_size=1, max_size=4),
    classifier=st.sampled_from(["logreg", "logreg", "sgd"]),
    folds=st.sampled_from([None, None, None, "1", "2", "5"]),
    test_size=st.sampled_from([None, None, "0.25", "0.99"]),
    out=st.sampled_from(["p.csv", "-", "p.parquet"]),
    fmt=st.sampled_from(["parquet", "npy"]),
)
def test_train_eval_predict_export_map_on_random_small_datasets(
    work: Path,
    labels: list[str],
    eval_labels: list[str],
    classifier: str,
    folds: str | None,
    test_size: str | None,
    out: str,
    fmt: str,
) -> None:
    d = work / f"run{next(counter)}"
    d.mkdir()
    store = str(d / "store")
    rows = train_rows(len(labels) + len(eval_labels))
    train = [dict(r, label=label) for r, label in zip(rows, labels)]
    other = [dict(r, label=label) for r, label in zip(rows[len(labels) :], eval_labels)]
    for name, part in (("train", train), ("other", other)):
        code = invoke(["ingest", str(write_csv(d / f"{name}.csv", part)), "--dataset", name, *M, "--store", store])
        if code != 0:
            return  # a refused file (two spellings of one class): said in one line, nothing else to try
    options = ["--classifier", classifier]
    options += ["--folds", folds, "--features", "tfidf-word"] if folds else []  # text features: any store has them
    options += ["--test-size", test_size] if test_size else []
    invoke(["train", "--dataset", "train", *M, *options, "--store", store])
    invoke(["eval", "--dataset", "other", "--store", store])
    invoke(["predict", "--dataset", "other", "--out", str(d / out) if out != "-" else "-", "--store", store])
    invoke(["export", "--dataset", "train", *M, "--format", fmt, "--out", str(d / f"x.{fmt}"), "--store", store])
    invoke(["map", "--dataset", "train", *M, "--out", str(d / "m.png"), "--store", store])
    assert check(Store(store)).ok
