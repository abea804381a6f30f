"""Feature sets (stored spaces + TF-IDF of the stored text), honest CV selection, multiclass, predict --proba,
eval, frame and export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import StratifiedKFold, train_test_split
from typer.testing import CliRunner

from cli.main import app
from featurestore.api import FeatureStore
from featurestore.errors import FeatureStoreError, UsageError
from featurestore.learning import features as feats
from featurestore.learning.features import Part
from featurestore.learning.train import classifier_paths, load_classifier
from tests.conftest import train_rows, write_csv
from tests.fakes import BagOfWordsEmbedder

runner = CliRunner()


def three_class_rows(n: int, seed: int = 0, start: int = 0) -> list[dict[str, str]]:
    """A small, realistic three-class airline-sentiment set, made here (no public 3-class file is on disk):
    tweets built from phrases people write, with shared filler words so no single word gives the label away."""
    rng = np.random.default_rng(seed)
    phrases = {
        "negative": [
            "flight delayed again",
            "lost my bag",
            "worst customer service",
            "cancelled my flight",
            "stuck on the tarmac for hours",
            "rude gate agent",
            "never flying with you again",
        ],
        "neutral": [
            "what time does boarding start",
            "is there wifi on the flight",
            "flying to boston tomorrow",
            "can i change my seat",
            "how many bags can i check",
            "which terminal for departures",
        ],
        "positive": [
            "thanks for the upgrade",
            "great crew today",
            "landed early love it",
            "best flight ever",
            "amazing service thank you",
            "smooth flight and friendly staff",
        ],
    }
    filler = ["@airline", "today", "#travel", "just now", "again", "the", "my", "on", "lol", "http://t.co/x"]
    rows = []
    for i in range(n):
        label = ("negative", "neutral", "positive")[i % 3]
        words = [rng.choice(phrases[label]), *rng.choice(filler, 3)]
        if rng.random() < 0.15:  # some noise: a phrase of another class
            words.append(rng.choice(phrases[("negative", "neutral", "positive")[(i + 1) % 3]]))
        rng.shuffle(words)
        rows.append({"id": f"t{start + i}", "label": label, "tweet": " ".join(words)})
    return rows


@pytest.fixture
def three(fs: FeatureStore, tmp_path: Path) -> FeatureStore:
    fs.ingest(
        str(write_csv(tmp_path / "a.csv", three_class_rows(150))),
        "air",
        "fake",
        "raw-v1",
        embedder=BagOfWordsEmbedder(),
    )
    fs.ingest(
        str(write_csv(tmp_path / "b.csv", three_class_rows(60, seed=1, start=1000))),
        "air2",
        "fake",
        "raw-v1",
        embedder=BagOfWordsEmbedder(),
    )
    return fs


def test_parse_spec() -> None:
    alts = feats.parse_spec("minilm+tfidf-char,minilm+tfidf-word@raw-v1")
    assert alts == [
        (Part("space", "minilm", "raw-v1"), Part("tfidf-char", "", "basic-v1")),
        (Part("space", "minilm", "raw-v1"), Part("tfidf-word", "", "raw-v1")),
    ]
    assert feats.parse_spec("minilm@basic-v1")[0][0].recipe == "basic-v1"
    assert feats.parse_spec("tfidf-word", clean="basic-v1")[0] == (Part("tfidf-word", "", "basic-v1"),)
    assert feats.spec_of(alts[0]) == "minilm@raw-v1+tfidf-char@basic-v1"
    with pytest.raises(UsageError, match="unknown text feature 'tfidf-bigram'"):
        feats.parse_spec("minilm+tfidf-bigram")
    with pytest.raises(UsageError, match="empty part"):
        feats.parse_spec("minilm++tfidf-char")
    with pytest.raises(UsageError, match="same part twice"):
        feats.parse_spec("tfidf-char+tfidf-char")


def test_features_train_uses_the_tutorial_split_and_saves_a_trusted_pipeline(av: FeatureStore) -> None:
    import skops.io as sio
    from sklearn.pipeline import Pipeline

    r = av.train("train", "fake", "raw-v1", features="fake+tfidf-word", name="h1")
    assert (r.n_train, r.n_valid) == (320, 80) and r.positive == "1"
    assert r.features == "fake@raw-v1+tfidf-word@basic-v1"
    assert r.cv["folds"] == 5 and len(r.cv["chosen"]["cv_scores"]) == 5 and 0 <= r.cv["mean"] <= 1
    assert r.cv["sd"] == pytest.approx(np.std(r.cv["chosen"]["cv_scores"], ddof=1))
    assert sio.get_untrusted_types(file=classifier_paths(av.store, "h1")[0]) == []
    clf, manifest = load_classifier(av.store, "h1")
    assert isinstance(clf, Pipeline) and manifest["features"]["spec"] == r.features
    assert manifest["features"]["inputs"][0]["space"] == r.space and manifest["cv"]["mean"] == r.cv["mean"]
    # The held-out score is the pipeline's own on the tutorial's validation rows.
    from sklearn.metrics import f1_score

    ids = av.rows("train")["ids"]
    _, va = train_test_split(np.arange(len(ids)), random_state=42, test_size=0.2)
    _, labels = av.predict("train", "h1")
    y = av.rows("train")["labels"]
    assert r.f1 == pytest.approx(f1_score(y[va], labels[va], pos_label="1"))


def test_selection_sees_the_training_split_only(av: FeatureStore, monkeypatch) -> None:
    """CV runs on the training split (never the validation rows), with the stratified folds of that split;
    TF-IDF is fitted on the training split only (a word only in validation rows is not in its vocabulary)."""
    seen = {}
    real = feats.select

    def spy(inputs_of, X, y, *a, **k):
        seen["n"], seen["y"] = len(X), y.copy()
        return real(inputs_of, X, y, *a, **k)

    monkeypatch.setattr(feats, "select", spy)
    rows = train_rows(400)
    _, va = train_test_split(np.arange(400), random_state=42, test_size=0.2)
    for i in va:
        rows[i] = {**rows[i], "tweet": rows[i]["tweet"] + " zyzzyvaonlyinvalidation"}
    tmp = av.path.parent / "v.csv"
    av.ingest(str(write_csv(tmp, rows)), "leak", "fake", "raw-v1", embedder=BagOfWordsEmbedder())
    r = av.train("leak", "fake", "raw-v1", features="tfidf-word", name="leak")
    y = np.array([row["label"] for row in rows], dtype=object)
    tr, _ = train_test_split(np.arange(400), random_state=42, test_size=0.2)
    assert seen["n"] == 320 and seen["y"].tolist() == y[tr].tolist()
    clf, _ = load_classifier(av.store, "leak")
    assert not any("zyzzyva" in f for f in feats.feature_names(clf))
    assert r.n_train == 320


def test_search_chooses_by_cv_and_respects_the_time_limit(av: FeatureStore) -> None:
    r = av.train(
        "train",
        "fake",
        "raw-v1",
        features="fake+tfidf-word,tfidf-char",
        search="quick",
        folds=2,
        time_limit=3600,
        name="q1",
    )
    tried = r.cv["top"]
    # 8 classifier settings a feature setting, each also with class offsets (scored without a fit of its own)
    assert r.cv["tried"] == 32 and r.cv["skipped"] == 0 and r.cv["folds"] == 2
    assert r.cv["mean"] == max(c["cv_mean"] for c in tried) and r.cv["chosen"] == tried[0]
    assert {c["features"] for c in tried} <= {"fake@raw-v1+tfidf-word@basic-v1", "tfidf-char@basic-v1"}
    # A limit already past: the first candidate of the first alternative is scored (with its twin with offsets,
    # which needs no fit), every other one skipped (the limit is looked at before each fit, not only before each
    # feature setting).
    r = av.train(
        "train", "fake", "raw-v1", features="fake+tfidf-word", search="full", folds=2, time_limit=1e-9, name="q2"
    )
    assert r.cv["tried"] == 2 and r.cv["skipped"] == 9 * 24 - 2 and len(r.cv["untried"]) == r.cv["skipped"]
    first = "fake vectors (raw-v1) + word 1-2-grams, C=1"  # a recipe not the default
    assert r.cv["chosen"]["words"].startswith(first) and {c["words"][: len(first) + 1] for c in r.cv["top"]} == {
        first,
        first + " ",
    }
    (note,) = [n for n in r.notes if "time limit" in n]
    assert (
        "left 214 of 216 candidate settings untried (fake vectors (raw-v1) + word 1-2-grams: C=1 balanced, "
        "C=1 balanced with class offsets, C=3, C=3 with class offsets" in note
    )
    assert "; and 202 more); raise --time-limit to try them" in note


def test_search_without_features_tunes_the_model_space(av: FeatureStore) -> None:
    r = av.train("train", "fake", "raw-v1", search="quick", folds=2, name="sp", plots=False)
    assert r.features == "fake@raw-v1" and r.cv["tried"] == 16


def test_sgd_with_features_is_refused(av: FeatureStore) -> None:
    with pytest.raises(FeatureStoreError, match="classifier 'sgd' cannot be used with --features"):
        av.train("train", "fake", "raw-v1", classifier="sgd", features="tfidf-word")


def test_three_classes_train_eval_predict_proba(three: FeatureStore) -> None:
    r = three.train("air", "fake", "raw-v1", features="fake+tfidf-word", name="air")
    assert r.classes == ["negative", "neutral", "positive"] and r.positive is None
    assert r.cv["metric"] == "macro-f1" and set(r.per_class) == set(r.classes)
    assert r.f1 > 0.6  # the phrases are learnable
    ids, labels, proba, classes = three.predict_proba("air2", "air")
    assert classes == r.classes and proba.shape == (60, 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-6)
    assert labels.tolist() == [classes[i] for i in proba.argmax(axis=1)]
    m = three.eval("air2", "air")
    truth = three.rows("air2")["labels"]
    assert m["n"] == 60 and m["accuracy"] == pytest.approx((labels == truth).mean())
    assert m["positive"] is None and set(m["per_class"]) == set(classes)


def test_cli_train_features_predict_proba_and_eval(three: FeatureStore, tmp_path: Path) -> None:
    store = str(three.path)
    res = runner.invoke(
        app,
        [
            "train",
            "-d",
            "air",
            "-m",
            "fake",
            "--clean",
            "raw-v1",
            "--features",
            "fake+tfidf-char",
            "--name",
            "air",
            "--no-plots",
            "--store",
            store,
        ],
    )
    assert res.exit_code == 0, res.output
    assert "chosen by 5-fold CV on the training split" in res.stdout and "CV macro-f1" in res.stdout
    assert "'negative'" in res.stdout and "support" in res.stdout
    out = tmp_path / "p.csv"
    res = runner.invoke(
        app, ["predict", "-d", "air2", "--classifier-name", "air", "--proba", "--out", str(out), "--store", store]
    )
    assert res.exit_code == 0, res.output
    df = pd.read_csv(out, dtype=str)
    assert list(df.columns) == ["id", "label", "proba_negative", "proba_neutral", "proba_positive"]
    assert len(df) == 60 and df["id"].tolist()[0] == "t1000"
    res = runner.invoke(app, ["eval", "-d", "air2", "--classifier-name", "air", "--json", "--store", store])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["n"] == 60
    res = runner.invoke(app, ["eval", "-d", "air2", "--classifier-name", "nope", "--store", store])
    assert res.exit_code == 1 and "trained: air" in res.output
    res = runner.invoke(
        app, ["train", "-d", "air", "-m", "fake", "--clean", "raw-v1", "--features", "tfidf-x", "--store", store]
    )
    assert res.exit_code != 0 and "Error: unknown text feature 'tfidf-x' in --features" in res.output


def test_predict_refuses_rows_without_vectors(three: FeatureStore, tmp_path: Path) -> None:
    three.train("air", "fake", "raw-v1", features="fake+tfidf-word", name="air", plots=False)
    three.ingest(
        str(write_csv(tmp_path / "c.csv", three_class_rows(10, seed=3, start=5000))),
        "other",
        "fake",
        "basic-v1",
        embedder=BagOfWordsEmbedder(),
    )
    with pytest.raises(FeatureStoreError, match="have no vector in space"):
        three.predict("other", "air")


def test_old_classifiers_predict_with_proba(av: FeatureStore) -> None:
    av.train("train", "fake", "raw-v1", name="plain", plots=False)
    ids, labels, proba, classes = av.predict_proba("train", "plain")
    assert classes == ["0", "1"] and proba.shape == (400, 2)
    assert labels.tolist() == [classes[i] for i in proba.argmax(axis=1)]


def test_frame_and_export(av: FeatureStore, tmp_path: Path) -> None:
    df = av.frame("train", "fake", "raw-v1")
    X, y, ids = av.xy("train", "fake", "raw-v1")
    assert list(df.columns) == ["id", "label", "text", "vector"] and len(df) == 400
    assert df["id"].tolist() == ids.tolist() and df["label"].tolist() == y.tolist()
    np.testing.assert_array_equal(np.stack(df["vector"].to_list()), X)
    assert df["text"].tolist()[0] == train_rows(1)[0]["tweet"]
    store = str(av.path)
    res = runner.invoke(
        app,
        [
            "export",
            "-d",
            "train",
            "-m",
            "fake",
            "--clean",
            "raw-v1",
            "--format",
            "parquet",
            "--out",
            str(tmp_path / "t.parquet"),
            "--store",
            store,
        ],
    )
    assert res.exit_code == 0, res.output
    back = pd.read_parquet(tmp_path / "t.parquet")
    assert back["id"].tolist() == ids.tolist()
    np.testing.assert_array_equal(np.stack(back["vector"].to_list()), X)
    res = runner.invoke(
        app,
        [
            "export",
            "-d",
            "train",
            "-m",
            "fake",
            "--clean",
            "raw-v1",
            "--format",
            "npy",
            "--out",
            str(tmp_path / "npy"),
            "--store",
            store,
        ],
    )
    assert res.exit_code == 0, res.output
    np.testing.assert_array_equal(np.load(tmp_path / "npy" / "vectors.npy", allow_pickle=False), X)
    assert np.load(tmp_path / "npy" / "ids.npy", allow_pickle=False).tolist() == ids.tolist()
    res = runner.invoke(
        app,
        [
            "export",
            "-d",
            "train",
            "-m",
            "fake",
            "--clean",
            "raw-v1",
            "--format",
            "csv",
            "--out",
            str(tmp_path / "x"),
            "--store",
            store,
        ],
    )
    assert res.exit_code == 1 and "unknown --format 'csv'" in res.output


def test_cv_folds_are_stratified_inside_the_training_split(av: FeatureStore) -> None:
    """The CV scores reported are those of StratifiedKFold(shuffle, seed) over the training rows."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score

    r = av.train("train", "fake", "raw-v1", features="fake", name="f1", plots=False)
    X, y, _ = av.xy("train", "fake", "raw-v1")
    tr, _ = train_test_split(np.arange(400), random_state=42, test_size=0.2)
    scores = []
    for a, b in StratifiedKFold(5, shuffle=True, random_state=42).split(X[tr], y[tr]):
        clf = LogisticRegression(C=1.0, solver="lbfgs", max_iter=3000, random_state=42)
        clf.fit(X[tr][a], y[tr][a])
        scores.append(f1_score(y[tr][b], clf.predict(X[tr][b]), pos_label="1", zero_division=0))
    np.testing.assert_allclose(r.cv["chosen"]["cv_scores"], scores, atol=1e-9)
