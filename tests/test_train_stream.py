"""Training read a block at a time (issue 24): the labelled rows, their labels and where their vectors are, as the
whole-dataset reads found them, on a store whose key segments are out of row order and whose labels were updated."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import f1_score
from sklearn.model_selection import train_test_split

from featurestore import spaces
from featurestore.api import FeatureStore
from featurestore.errors import DatasetError
from featurestore.learning import train as training
from featurestore.storage import scan
from tests.conftest import train_rows, write_csv
from tests.fakes import BagOfWordsEmbedder


def mixed_store(tmp_path: Path) -> FeatureStore:
    """90 rows in 16-row commits: ingested under basic-v1 (60 rows), then raw-v1 (90: keys of the 30 new rows first,
    then the 60 old ones: out of row order), then basic-v1 again (30 new keys, in row order); 10 rows unlabelled,
    15 relabelled by a later ingest; an id with quotes and non-ASCII text."""
    rows = train_rows(90)
    rows[3]["id"] = 'q"uote\\d é'
    for r in rows[80:]:
        r["label"] = ""
    fs = FeatureStore(tmp_path / "store")

    def ingest(part: list[dict[str, str]], recipe: str, name: str) -> None:
        fs.ingest(
            str(write_csv(tmp_path / name, part)), "mix", "fake", recipe, embedder=BagOfWordsEmbedder(), commit_rows=16
        )

    ingest(rows[:60], "basic-v1", "a.csv")
    ingest(rows, "raw-v1", "b.csv")
    ingest(rows, "basic-v1", "c.csv")
    relabelled = [{**r, "label": "1" if r["label"] == "0" else "0"} for r in rows[20:35]]
    ingest(relabelled, "raw-v1", "d.csv")
    return fs


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> FeatureStore:
    return mixed_store(tmp_path_factory.mktemp("mixed"))


def _space(fs: FeatureStore, recipe: str):  # noqa: ANN202
    snap = fs.store.snapshot()
    ds = fs.store.dataset("mix", snap)
    return ds, spaces.choose_space(fs.store, snap, "fake", recipe, None, ds)[0]


@pytest.mark.parametrize("recipe", ["raw-v1", "basic-v1"])
@pytest.mark.parametrize("block_rows", [7, 64, 65536])
def test_labelled_rows_equal_the_whole_dataset_reads(mixed: FeatureStore, recipe: str, block_rows: int) -> None:
    ds, space = _space(mixed, recipe)
    assert ds.labels  # label updates to apply
    ids = mixed.store.dataset_ids(ds)
    labels = mixed.store.dataset_labels(ds, ids)
    keep = labels != ""
    expect = training.Labelled.of(ids[keep], labels[keep], spaces.require_rows(mixed.store, ds, space, ids[keep]))
    got = training.labelled_rows(mixed.store, ds, space, block_rows=block_rows)
    assert len(got.rows) == 80 and got.classes == ["0", "1"]
    np.testing.assert_array_equal(got.rows, expect.rows)
    np.testing.assert_array_equal(got.codes, expect.codes)
    assert got.ids_sha256 == expect.ids_sha256 == training.ids_hash(ids[keep])
    assert got.y.tolist() == labels[keep].tolist()  # the relabelled rows included


def test_raw_keys_are_out_of_row_order_so_the_join_is_used(mixed: FeatureStore, monkeypatch) -> None:
    ds, space = _space(mixed, "raw-v1")
    joins: list[int] = []
    real = scan._KeyJoin.__init__
    monkeypatch.setattr(scan._KeyJoin, "__init__", lambda self, *a: joins.append(1) or real(self, *a))
    list(scan.row_blocks(mixed.store, ds, space, block_rows=16))
    assert joins == [1]  # built once, at the first block that differs
    ds, space = _space(mixed, "basic-v1")
    list(scan.row_blocks(mixed.store, ds, space, block_rows=16))
    assert joins == [1]  # basic-v1's keys are in row order: no join


def test_ids_hash_a_block_at_a_time_is_the_hash_of_the_whole_list() -> None:
    ids = np.array(["1", 'q"uote', "é\u2028", "x\\y", "", "12"], dtype=object)
    for cut in ([], [1], [2, 3], [0, 6]):
        h = training._IdsHash()
        for part in np.split(ids, cut):
            h.update(part)
        assert h.hexdigest() == training.ids_hash(ids)
    assert training._IdsHash().hexdigest() == training.ids_hash(ids[:0])


def test_sgd_scores_are_those_of_its_own_predictions(mixed: FeatureStore, monkeypatch) -> None:
    """The validation rows are predicted a block at a time in storage order and put back in place: the scores
    saved are scikit-learn's on the tutorial's validation split, predicted by the saved classifier."""
    real = training.fit_and_evaluate
    monkeypatch.setattr(training, "fit_and_evaluate", lambda *a, **k: real(*a, **{**k, "block_rows": 5}))
    r = mixed.train("mix", "fake", "raw-v1", classifier="sgd", name="s", plots=False)
    X, y, ids = mixed.xy("mix", "fake", "raw-v1")
    _, xva, _, yva = train_test_split(X, y, random_state=42, test_size=0.2)
    clf, manifest = training.load_classifier(mixed.store, "s")
    assert (r.n_train, r.n_valid) == (64, 16)
    assert r.f1 == f1_score(yva, clf.predict(xva), pos_label="1", zero_division=0)
    assert manifest["row_ids_sha256"] == training.ids_hash(ids)
    assert json.loads(Path(r.path).with_suffix(".json").read_text())["classes"] == ["0", "1"]


def test_codes_and_labels_give_the_same_fit_and_scores(mixed: FeatureStore) -> None:
    ds, space = _space(mixed, "basic-v1")
    lab = training.labelled_rows(mixed.store, ds, space)
    vectors = training.Vectors(mixed.store, space, lab.rows)
    for kind in ("sgd", "logreg"):
        by_code = training.fit_and_evaluate(kind, vectors, lab.codes, lab.classes, "1", 0.2, 42, block_rows=8)
        by_label = training.fit_and_evaluate(kind, vectors, lab.y, lab.classes, "1", 0.2, 42, block_rows=8)
        assert by_code[1] == by_label[1]  # metrics, per class included
        np.testing.assert_array_equal(by_code[8].pred, by_label[8].pred)
        np.testing.assert_array_equal(by_code[8].proba, by_label[8].proba)


def test_a_labelled_row_without_a_vector_is_refused_as_before(tmp_path: Path) -> None:
    fs = FeatureStore(tmp_path / "store")
    rows = train_rows(40)
    fs.ingest(str(write_csv(tmp_path / "a.csv", rows[:30])), "mix", "fake", "raw-v1", embedder=BagOfWordsEmbedder())
    fs.ingest(str(write_csv(tmp_path / "b.csv", rows)), "mix", "fake", "basic-v1", embedder=BagOfWordsEmbedder())
    ds, space = _space(fs, "raw-v1")
    ids = fs.store.dataset_ids(ds)
    with pytest.raises(DatasetError) as before:
        spaces.require_rows(fs.store, ds, space, ids)
    with pytest.raises(DatasetError) as now:
        training.labelled_rows(fs.store, ds, space)
    assert str(now.value) == str(before.value) and "10 of 40 rows" in str(now.value)
