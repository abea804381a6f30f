"""The CV search (issue 26): class offsets chosen on training folds only and scored honestly, the parallel search
equal to a plain sequential one, fold features equal to the pipeline's own, offsets saved and applied by
predict/eval, progress that adds up."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.model_selection import StratifiedKFold, train_test_split
from threadpoolctl import threadpool_limits

from featurestore.api import FeatureStore
from featurestore.learning import features as feats
from featurestore.learning.features import ClassifierParams, FeatureParams, Part
from featurestore.learning.train import classifier_paths, load_classifier
from tests.conftest import train_rows, write_csv
from tests.fakes import BagOfWordsEmbedder


def _noisy_scores(n: int = 300, k: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Class scores of a biased model: class 0 is under-predicted, so offsets help."""
    rng = np.random.default_rng(seed)
    y = rng.choice(k, size=n, p=[0.2, 0.5, 0.3][:k] if k == 3 else [0.3, 0.7])
    S = rng.normal(size=(n, k))
    S[np.arange(n), y] += 1.5
    S[:, 0] -= 1.0
    return S, y


def test_binary_offset_is_the_best_threshold() -> None:
    """Two classes: the offset is the threshold on the log-odds with the best F1 of the positive class (an exact
    scan of every cut), and never worse than none."""
    S, y = _noisy_scores(200, k=2, seed=1)
    b = feats.fit_offsets(S, y, positive=0)
    got = feats._metric_codes(y, np.argmax(S + b, axis=1), 2, 0)
    d = S[:, 0] - S[:, 1]  # class 0 wins when d + b0 - b1 > 0
    best = max(feats._metric_codes(y, np.where(d > t, 0, 1), 2, 0) for t in np.concatenate([[-1e9], d]))
    assert got == pytest.approx(best) and got > feats._metric_codes(y, np.argmax(S, axis=1), 2, 0)
    assert b[0] == 0.0 and b[1] != 0.0


def test_multiclass_offsets_raise_macro_f1_and_apply_as_shifted_priors() -> None:
    S, y = _noisy_scores()
    b = feats.fit_offsets(S, y)
    before = feats._metric_codes(y, np.argmax(S, axis=1), 3, None)
    after = feats._metric_codes(y, np.argmax(S + b, axis=1), 3, None)
    assert b[0] == 0.0 and after > before + 0.005
    # a coordinate-wise optimum: no single class's offset moved along a fine grid does better
    for c in (1, 2):
        for v in np.linspace(-4, 4, 801):
            bb = b.copy()
            bb[c] = v
            assert feats._metric_codes(y, np.argmax(S + bb, axis=1), 3, None) <= after + 1e-12
    pred, p = feats.apply_offsets(S, b)
    assert pred.tolist() == np.argmax(S + b, axis=1).tolist() and p.argmax(axis=1).tolist() == pred.tolist()
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    # softmax(S + b) is the model's probabilities with class c's prior multiplied by exp(b[c]), renormalised
    q = np.exp(S - S.max(axis=1, keepdims=True))
    q /= q.sum(axis=1, keepdims=True)
    shifted = q * np.exp(b)
    np.testing.assert_allclose(p, shifted / shifted.sum(axis=1, keepdims=True), rtol=1e-9)


def test_offset_cv_score_fits_each_fold_on_the_other_folds_only() -> None:
    """Fold f's score uses offsets fitted without fold f's rows: changing the labels of fold f changes its score
    only through its own rows, never the offsets applied to it."""
    S, y = _noisy_scores()
    splits = list(StratifiedKFold(3, shuffle=True, random_state=0).split(S, y))
    scores = feats.honest_offset_scores(S, y, splits, None)
    y2 = y.copy()
    _, va0 = splits[0]
    y2[va0[:20]] = (y2[va0[:20]] + 1) % 3  # fold 0's labels changed
    scores2 = feats.honest_offset_scores(S, y2, splits, None)
    tr0 = splits[0][0]
    b0 = feats.fit_offsets(S[tr0], y[tr0])  # the same offsets whichever labels fold 0 has
    assert scores2[0] == pytest.approx(feats._metric_codes(y2[va0], np.argmax(S[va0] + b0, axis=1), 3, None))
    assert scores2[0] != pytest.approx(scores[0])
    # and the other folds' offsets did see fold 0's labels: their scores may move, their rows' labels did not
    for f in (1, 2):
        tr, va = splits[f]
        assert scores2[f] == pytest.approx(
            feats._metric_codes(y[va], np.argmax(S[va] + feats.fit_offsets(S[tr], y2[tr]), axis=1), 3, None)
        )
    # offsets fitted on all rows score at least as well in-sample as the honest estimate: the gap is optimism
    b = feats.fit_offsets(S, y)
    assert feats._metric_codes(y, np.argmax(S + b, axis=1), 3, None) >= np.mean(scores) - 1e-12


def _inputs(fs: FeatureStore, spec: str) -> tuple[tuple[Part, ...], feats.Inputs, object, np.ndarray]:
    snap = fs._snapshot()
    ds = fs.store.dataset("train", snap)
    parts = feats.parse_spec(spec)[0]
    inputs, _ = feats.resolve(fs.store, snap, ds, parts)
    ids = fs.store.dataset_ids(ds)
    return parts, inputs, feats.frame(fs.store, ds, inputs, ids), fs.store.dataset_labels(ds, ids)


@pytest.mark.parametrize("spec", ["fake+tfidf-char", "tfidf-word", "fake"])
def test_fold_features_are_the_pipelines_own(av: FeatureStore, spec: str) -> None:
    """The fold matrices cut from one n-gram count are bit for bit what the pipeline's ColumnTransformer fitted on
    the fold gives (so the fits, and the choice, are the old search's)."""
    from scipy import sparse

    parts, inputs, X, y = _inputs(av, spec.replace("fake", "fake@raw-v1"))
    tr, va = next(StratifiedKFold(3, shuffle=True, random_state=42).split(np.zeros(len(y)), y))
    for fp in (FeatureParams(), FeatureParams((1, 1), (1, 4), 2.0)):
        ct = feats.make_features(inputs, fp)
        want = ct.fit_transform(X.iloc[tr]), ct.transform(X.iloc[va])
        got = feats._fold_blocks(inputs, fp, X, tr, va, {})
        for a, b in zip(want, got):
            assert type(a) is type(b) and a.shape == b.shape and a.dtype == b.dtype
            if sparse.issparse(a):
                a.sort_indices()
                b.sort_indices()
                assert (a.indptr == b.indptr).all() and (a.indices == b.indices).all() and (a.data == b.data).all()
            else:
                assert (a == b).all()


def test_parallel_search_equals_a_plain_sequential_one(av: FeatureStore) -> None:
    """Two worker processes and one give the same candidates and scores, and each candidate without offsets
    scores what a plain Pipeline fitted fold by fold scores (same folds, same F1)."""
    from sklearn.metrics import f1_score

    snap = av._snapshot()
    ds = av.store.dataset("train", snap)
    inputs_of = {
        parts: feats.resolve(av.store, snap, ds, parts)[0] for parts in feats.parse_spec("fake@raw-v1,tfidf-word")
    }
    merged = feats.Inputs(
        tuple(p for ps in inputs_of for p in ps), tuple(s for i in inputs_of.values() for s in i.spaces)
    )
    ids = av.store.dataset_ids(ds)
    X, y = feats.frame(av.store, ds, merged, ids), av.store.dataset_labels(ds, ids)
    tr, _ = train_test_split(np.arange(len(y)), random_state=42, test_size=0.2)
    X, y = X.iloc[tr].reset_index(drop=True), y[tr]
    seen: list[tuple[float, int]] = []
    # One BLAS thread here too, as in the workers: OpenBLAS's spinning threads make in-process fits crawl on a
    # busy machine (and the scores do not depend on it).
    limit = threadpool_limits(1)
    run = {
        jobs: feats.select(
            inputs_of,
            X,
            y,
            ["0", "1"],
            "1",
            "quick",
            folds=2,
            n_jobs=jobs,
            time_limit=0,
            progress=lambda a, t: seen.append((a, t)),
        )
        for jobs in (2, 1)
    }
    assert run[2].jobs == 2 and run[1].jobs == 1
    assert [c.words for c in run[1].tried] == [c.words for c in run[2].tried] and len(run[1].tried) == 32
    for a, b in zip(run[1].tried, run[2].tried):
        assert a.scores == b.scores
    assert run[1].offsets == run[2].offsets and run[1].best.words == run[2].best.words
    # progress: the total first, then advances that add up to it (each run)
    assert seen[0] == (0, 32) and sum(a for a, _ in seen) == pytest.approx(2 * 32) and {t for _, t in seen} == {32}
    splits = list(StratifiedKFold(2, shuffle=True, random_state=42).split(np.zeros(len(y)), y))
    for c in run[1].tried:
        if c.classifier.offsets:
            continue
        plain = []
        for a, b in splits:
            pipe = feats.make_pipeline(inputs_of[c.parts], c.features, c.classifier, 42).fit(X.iloc[a], y[a])
            plain.append(f1_score(y[b], pipe.predict(X.iloc[b]), pos_label="1", zero_division=0))
        np.testing.assert_allclose(c.scores, plain, atol=1e-9)
    limit.restore_original_limits()


def test_offsets_are_saved_applied_by_predict_and_eval_and_blind_to_the_validation_split(
    av: FeatureStore, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A search whose only candidate has offsets: they are fitted on the training split's out-of-fold predictions
    (a validation row's label changed leaves them as they are), saved in the manifest, applied by predict (labels
    and probabilities) and eval; the skops file still loads with trusted types only."""
    import skops.io as sio

    real_grid = feats.grid
    monkeypatch.setattr(
        feats, "grid", lambda search, parts: (real_grid(search, parts)[0], [ClassifierParams(1.0, None, True)])
    )
    r = av.train("train", "fake", "raw-v1", search="quick", folds=3, name="off", plots=False)
    manifest = json.loads(classifier_paths(av.store, "off")[1].read_text())
    offsets = manifest["offsets"]
    assert set(offsets) == {"0", "1"} and offsets["0"] == 0.0 and offsets["1"] != 0.0
    assert r.cv["chosen"]["offsets"] is True and "with class offsets (0 0, 1 " in r.cv["chosen"]["words"]
    assert any("class offsets added to the log-probabilities" in n for n in r.notes)
    assert sio.get_untrusted_types(file=classifier_paths(av.store, "off")[0]) == []
    clf, _ = load_classifier(av.store, "off")
    X, y, _ = av.xy("train", "fake", "raw-v1")
    import pandas as pd

    frame = pd.DataFrame(X, columns=clf.named_steps["features"].transformers_[0][2])
    d = clf.decision_function(frame)
    want = np.where(d + offsets["1"] > 0, "1", "0")
    assert (want != clf.predict(frame)).any()  # the offset moves some rows: the test can see it applied
    ids, labels, proba, classes = av.predict_proba("train", "off")
    assert labels.tolist() == want.tolist() and proba.argmax(axis=1).tolist() == (want == "1").astype(int).tolist()
    m = av.eval("train", "off")
    assert m["accuracy"] == pytest.approx((want == y).mean())
    # The same rows with one validation row's label flipped: the same offsets (and CV scores).
    rows = train_rows(400)
    _, va = train_test_split(np.arange(400), random_state=42, test_size=0.2)
    rows[va[0]] = {**rows[va[0]], "label": "1" if rows[va[0]]["label"] == "0" else "0"}
    av.ingest(str(write_csv(tmp_path / "flip.csv", rows)), "flip", "fake", "raw-v1", embedder=BagOfWordsEmbedder())
    r2 = av.train("flip", "fake", "raw-v1", search="quick", folds=3, name="off2", plots=False)
    assert json.loads(classifier_paths(av.store, "off2")[1].read_text())["offsets"] == offsets
    assert r2.cv["chosen"]["cv_scores"] == r.cv["chosen"]["cv_scores"]
