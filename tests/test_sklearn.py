"""featurestore.sklearn.StoreEmbedder: texts -> stored vectors inside scikit-learn."""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError, SkipTestWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import Pipeline
from sklearn.utils import estimator_checks as ec

from featurestore.api import FeatureStore
from featurestore.sklearn import StoreEmbedder
from tests.conftest import train_rows, write_csv
from tests.fakes import BagOfWordsEmbedder, CountingEmbedder, fake_vector

BOW = "py:tests.fakes:BagOfWordsEmbedder"


@pytest.fixture
def stored(fs: FeatureStore, tmp_path: Path) -> tuple[FeatureStore, list[str], list[str]]:
    rows = train_rows(300)
    fs.ingest(str(write_csv(tmp_path / "t.csv", rows)), "train", BOW, "raw-v1")
    return fs, [r["tweet"] for r in rows], [r["label"] for r in rows]


def test_reads_stored_vectors_without_embedding(stored, monkeypatch) -> None:
    fs, texts, _ = stored
    X, _, _ = fs.xy("train", BOW, "raw-v1")
    emb = CountingEmbedder()
    est = StoreEmbedder(fs.path, model=BOW, recipe="raw-v1", embedder=emb)
    assert est.fit(texts) is est and est.dim_ == 64
    np.testing.assert_array_equal(est.transform(texts), X)
    assert emb.calls == 0
    np.testing.assert_array_equal(est.transform(np.array(texts[:5], dtype=object).reshape(-1, 1)), X[:5])
    names = est.get_feature_names_out()
    assert len(names) == 64 and names[0] == "py_tests_fakes_BagOfWordsEmbedder_0"


def test_missing_texts_are_embedded_once_and_written_back(stored) -> None:
    fs, texts, _ = stored
    est = StoreEmbedder(str(fs.path), model=BOW, recipe="raw-v1").fit(texts)
    gen = fs.store.snapshot().generation
    new = ["a brand new tweet", "another new one", "a brand new tweet"]
    V = est.transform(texts[:2] + new)
    expected = BagOfWordsEmbedder().embed_batch(new[:2])
    np.testing.assert_allclose(V[2:4], expected, rtol=1e-6)
    np.testing.assert_array_equal(V[2], V[4])
    assert fs.store.snapshot().generation == gen + 1  # one commit
    before = len(CountingEmbedder.log)
    np.testing.assert_array_equal(est.transform(new), V[2:])  # now stored: nothing embedded
    assert len(CountingEmbedder.log) == before
    ro = StoreEmbedder(fs.path, model=BOW, recipe="raw-v1", write=False).fit(["x"])
    ro.transform(["only in memory"])
    assert fs.store.snapshot().generation == gen + 1


def test_a_new_space_is_created_in_an_empty_store(tmp_path: Path) -> None:
    est = StoreEmbedder(tmp_path / "s", model=BOW, recipe="raw-v1").fit(["hello world"])
    v = est.transform(["hello world"])
    np.testing.assert_allclose(v[0], fake_vector("hello", 64) + fake_vector("world", 64), rtol=1e-6)
    fs = FeatureStore(tmp_path / "s")
    assert [s.model for s in fs.store.snapshot().spaces.values()] == [BOW]


def test_pipeline_grid_search_and_cross_val_score(stored) -> None:
    fs, texts, y = stored
    before = len(CountingEmbedder.log)
    pipe = Pipeline(
        [("embed", StoreEmbedder(fs.path, model=BOW, recipe="raw-v1")), ("clf", LogisticRegression(max_iter=2000))]
    )
    scores = cross_val_score(pipe, texts, y, cv=3, scoring="accuracy")
    assert scores.shape == (3,) and (scores > 0.5).all()
    grid = GridSearchCV(pipe, {"clf__C": [0.1, 1.0, 10.0]}, cv=3, scoring="f1_macro").fit(texts, y)
    assert grid.best_params_["clf__C"] in (0.1, 1.0, 10.0)
    assert set(grid.predict(texts[:10])) <= {"0", "1"}
    assert len(pipe.fit(texts, y)[:-1].get_feature_names_out()) == 64
    assert len(CountingEmbedder.log) == before  # all from the store: nothing embedded


def test_estimator_contract(stored) -> None:
    """check_estimator feeds numeric 2-D arrays; a text transformer declares (like CountVectorizer) that it
    takes 1-D text, and check_estimator then skips the estimator as a whole. The checks that only exercise
    the estimator object run here one by one; the data checks are replaced by their text equivalents."""
    fs, texts, _ = stored
    est = StoreEmbedder(fs.path, model=BOW, recipe="raw-v1")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ec.check_estimator(est)
    assert any(issubclass(w.category, SkipTestWarning) for w in caught)
    name = type(est).__name__
    for check in (
        ec.check_no_attributes_set_in_init,
        ec.check_parameters_default_constructible,
        ec.check_get_params_invariance,
        ec.check_set_params,
        ec.check_estimator_cloneable,
        ec.check_estimator_repr,
        ec.check_valid_tag_types,
        ec.check_estimator_tags_renamed,
        ec.check_estimators_unfitted,
    ):
        check(name, clone(est))
    # The text versions of the data checks.
    with pytest.raises(NotFittedError):
        clone(est).transform(texts[:2])
    fitted = clone(est).fit(texts)
    np.testing.assert_array_equal(clone(est).fit_transform(texts), fitted.transform(texts))  # fit_transform
    np.testing.assert_array_equal(fitted.transform(texts[:7]), fitted.transform(texts[:7]))  # deterministic
    assert clone(est).get_params() == est.get_params()  # fit does not change the parameters
    back = pickle.loads(pickle.dumps(fitted))
    np.testing.assert_array_equal(back.transform(texts[:3]), fitted.transform(texts[:3]))
    assert fitted.transform([]).shape == (0, 64)
    with pytest.raises(ValueError, match="not one string"):
        fitted.transform("one tweet")
    with pytest.raises(ValueError, match="takes texts"):
        fitted.transform([1.0, 2.0])
    with pytest.raises(ValueError, match="one column"):
        fitted.transform(np.zeros((3, 2)))
