"""Training from the store: the tutorial's split, label checks, skops round trip, sgd."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score
from sklearn.model_selection import train_test_split

from featurestore.api import FeatureStore
from featurestore.errors import FeatureStoreError, LabelError
from featurestore.learning.train import classifier_paths, load_classifier
from tests.conftest import train_rows, write_csv
from tests.fakes import BagOfWordsEmbedder, CountingEmbedder


@pytest.fixture
def trained_store(fs: FeatureStore, tmp_path: Path) -> FeatureStore:
    rows = train_rows(400)
    fs.ingest(str(write_csv(tmp_path / "train.csv", rows)), "train", "fake", "raw-v1", embedder=BagOfWordsEmbedder())
    return fs


def test_xy_reads_vectors_labels_ids(trained_store: FeatureStore) -> None:
    X, y, ids = trained_store.xy("train", "fake", "raw-v1")
    rows = train_rows(400)
    assert X.shape == (400, 64) and X.dtype == np.float32
    assert ids.tolist() == [r["id"] for r in rows]
    assert y.tolist() == [r["label"] for r in rows]


def test_train_split_equals_the_tutorial_split(trained_store: FeatureStore) -> None:
    X, y, _ = trained_store.xy("train", "fake", "raw-v1")
    xtr, xva, ytr, yva = train_test_split(X, y, random_state=42, test_size=0.2)
    pred = LogisticRegression(max_iter=2000, random_state=42).fit(xtr, ytr).predict(xva)
    r = trained_store.train("train", "fake", "raw-v1", name="t1")
    assert (r.n_train, r.n_valid) == (320, 80)
    assert r.positive == "1" and r.classes == ["0", "1"]
    assert r.f1 == f1_score(yva, pred, pos_label="1", zero_division=0)
    assert r.precision == precision_score(yva, pred, pos_label="1", zero_division=0)
    assert r.recall == recall_score(yva, pred, pos_label="1", zero_division=0)
    assert r.accuracy == accuracy_score(yva, pred)
    assert r.f1 > 0  # both classes are present in the validation rows and some are found


def test_saved_classifier_loads_back_and_predicts_the_same(trained_store: FeatureStore) -> None:
    r = trained_store.train("train", "fake", "raw-v1", name="t1")
    clf, manifest = load_classifier(trained_store.store, "t1")
    assert manifest["dataset"] == "train" and manifest["space"] == r.space and manifest["metrics"]["f1"] == r.f1
    assert manifest["params"] == {"test_size": 0.2, "seed": 42} and manifest["n_train"] == 320
    X, y, ids = trained_store.xy("train", "fake", "raw-v1")
    xtr, _, ytr, _ = train_test_split(X, y, random_state=42, test_size=0.2)
    direct = LogisticRegression(max_iter=2000, random_state=42).fit(xtr, ytr)
    np.testing.assert_array_equal(clf.predict(X), direct.predict(X))
    pid, plabels = trained_store.predict("train", "t1")
    assert pid.tolist() == ids.tolist()
    np.testing.assert_array_equal(plabels, direct.predict(X))


def test_tampered_classifier_is_refused(trained_store: FeatureStore) -> None:
    trained_store.train("train", "fake", "raw-v1", name="t1")
    model_path, _ = classifier_paths(trained_store.store, "t1")
    data = bytearray(model_path.read_bytes())
    data[-10] ^= 0xFF
    model_path.write_bytes(bytes(data))
    with pytest.raises(FeatureStoreError, match="does not match its manifest"):
        load_classifier(trained_store.store, "t1")
    with pytest.raises(FeatureStoreError, match="does not match its manifest"):
        trained_store.predict("train", "t1")


def test_unknown_classifier_name_lists_trained_ones(trained_store: FeatureStore) -> None:
    trained_store.train("train", "fake", "raw-v1", name="t1")
    with pytest.raises(FeatureStoreError, match="trained: t1"):
        trained_store.predict("train", "nope")


def test_sgd_out_of_core_runs(trained_store: FeatureStore) -> None:
    r = trained_store.train("train", "fake", "raw-v1", classifier="sgd", name="s1")
    assert r.classifier == "sgd" and (r.n_train, r.n_valid) == (320, 80)
    assert 0.0 <= r.f1 <= 1.0 and 0.0 < r.accuracy <= 1.0
    clf, _ = load_classifier(trained_store.store, "s1")
    assert type(clf).__name__ == "SGDClassifier"


def test_bad_classifier_and_test_size(trained_store: FeatureStore) -> None:
    with pytest.raises(FeatureStoreError, match="unknown classifier 'svm'"):
        trained_store.train("train", "fake", "raw-v1", classifier="svm")
    with pytest.raises(FeatureStoreError, match="test_size 1.5 must be between 0 and 1"):
        trained_store.train("train", "fake", "raw-v1", test_size=1.5)


def _labelled(fs: FeatureStore, tmp_path: Path, labels: list[int | str | None]) -> None:
    rows = [
        {"id": i, "label": "" if lab is None else lab, "tweet": f"tweet {i} " + "word " * (i % 3)}
        for i, lab in enumerate(labels)
    ]
    fields = ("id", "label", "tweet") if labels[0] is not None else ("id", "tweet")
    fs.ingest(str(write_csv(tmp_path / "l.csv", rows, fields)), "d", "fake", "raw-v1", embedder=CountingEmbedder())


def test_three_classes_give_macro_f1_and_a_per_class_table(fs: FeatureStore, tmp_path: Path) -> None:
    from sklearn.metrics import f1_score

    labels = ["negative", "neutral", "positive"] * 40
    _labelled(fs, tmp_path, labels)
    r = fs.train("d", "fake", "raw-v1", name="three")
    assert r.classes == ["negative", "neutral", "positive"] and r.positive is None
    X, y, _ = fs.xy("d", "fake", "raw-v1")
    xtr, xva, ytr, yva = train_test_split(X, y, random_state=42, test_size=0.2)
    pred = LogisticRegression(max_iter=2000, random_state=42).fit(xtr, ytr).predict(xva)
    assert r.f1 == pytest.approx(f1_score(yva, pred, average="macro", zero_division=0))
    assert set(r.per_class) == set(r.classes) and sum(m["support"] for m in r.per_class.values()) == r.n_valid
    ids, predicted = fs.predict("d", "three")
    assert set(predicted.tolist()) <= set(r.classes)


def test_string_labels_round_trip_and_pick_the_positive_class(fs: FeatureStore, tmp_path: Path) -> None:
    _labelled(fs, tmp_path, ["neg", "pos"] * 30)
    r = fs.train("d", "fake", "raw-v1", name="pn")
    assert r.classes == ["neg", "pos"] and r.positive == "pos"
    assert fs.train("d", "fake", "raw-v1", name="pn2", positive="neg").positive == "neg"
    with pytest.raises(FeatureStoreError, match="positive 'yes' is not a label of dataset 'd'; labels: neg, pos"):
        fs.train("d", "fake", "raw-v1", positive="yes")
    _, predicted = fs.predict("d", "pn")
    assert set(predicted.tolist()) <= {"neg", "pos"}


def test_small_validation_split_is_flagged(fs: FeatureStore, tmp_path: Path) -> None:
    _labelled(fs, tmp_path, [0, 1] * 6)
    r = fs.train("d", "fake", "raw-v1", test_size=0.2)
    assert r.n_valid == 3 and any("only 3 validation rows" in w for w in r.warnings)


def test_one_class_is_refused(fs: FeatureStore, tmp_path: Path) -> None:
    _labelled(fs, tmp_path, [1, 1, 1])
    with pytest.raises(LabelError, match="only label '1'"):
        fs.train("d", "fake", "raw-v1")


def test_dataset_without_labels_is_refused(fs: FeatureStore, tmp_path: Path) -> None:
    _labelled(fs, tmp_path, [None, None, None])
    with pytest.raises(LabelError, match="no labelled rows"):
        fs.train("d", "fake", "raw-v1")
    X, y, ids = fs.xy("d", "fake", "raw-v1", labelled=False)
    assert X.shape == (3, 16) and y.tolist() == ["", "", ""] and ids.tolist() == ["0", "1", "2"]


def test_labels_added_by_a_later_ingest_make_a_dataset_trainable(fs: FeatureStore, tmp_path: Path) -> None:
    """Labels are data that can change: the same file ingested again with labels adds them, a third time
    with one label changed changes it; the previous generation keeps the old labels; nothing is embedded."""
    rows = [{"id": f"{i:03d}", "tweet": f"tweet {i} " + "word " * (i % 3)} for i in range(40)]
    fs.ingest(
        str(write_csv(tmp_path / "u.csv", rows, ("id", "tweet"))), "d", "fake", "raw-v1", embedder=CountingEmbedder()
    )
    with pytest.raises(LabelError, match="no labelled rows"):
        fs.train("d", "fake", "raw-v1")
    labelled = [{**r, "label": "pos" if i % 2 else "neg"} for i, r in enumerate(rows)]
    emb = CountingEmbedder()
    s = fs.ingest(str(write_csv(tmp_path / "l.csv", labelled)), "d", "fake", "raw-v1", embedder=emb)
    assert (s.new_ids, s.duplicates, s.labels_added, s.labels_changed, s.embedded) == (0, 40, 40, 0, 0)
    assert emb.calls == 0
    gen_before = fs.store.snapshot().generation
    labelled[0]["label"] = "pos"
    s = fs.ingest(str(write_csv(tmp_path / "l2.csv", labelled[:1])), "d", "fake", "raw-v1", embedder=emb)
    assert (s.labels_added, s.labels_changed) == (0, 1)
    assert fs.rows("d")["labels"].tolist()[:3] == ["pos", "pos", "neg"]
    old = fs.store.read_manifest(gen_before)
    assert fs.store.dataset_labels(old.datasets["d"]).tolist()[:3] == ["neg", "pos", "neg"]
    assert fs.train("d", "fake", "raw-v1").classes == ["neg", "pos"]
    # Rows without a label in a later file never erase a stored label.
    s = fs.ingest(str(write_csv(tmp_path / "u.csv", rows, ("id", "tweet"))), "d", "fake", "raw-v1", embedder=emb)
    assert (s.labels_added, s.labels_changed) == (0, 0) and fs.rows("d")["labels"].tolist()[0] == "pos"


@pytest.mark.parametrize("name", ["../escape", "a/b", ".."])
def test_classifier_name_cannot_leave_the_store(trained_store: FeatureStore, name: str) -> None:
    with pytest.raises(FeatureStoreError, match="classifier name"):
        trained_store.train("train", "fake", "raw-v1", name=name)
    assert not (trained_store.path / "escape.skops").exists()
    assert not (trained_store.path.parent / "escape.skops").exists()


def test_sgd_reads_contiguous_blocks_and_stops_early(trained_store: FeatureStore, monkeypatch) -> None:
    """Out of core: the fit reads storage-contiguous ranges (never scattered point reads per row), in
    blocks, and stops when a held-out slice of the training split stops improving."""
    from featurestore.learning import train as training
    from featurestore.storage.store import Store

    ranges: list[tuple[int, int]] = []
    real = Store.read_range
    monkeypatch.setattr(Store, "read_range", lambda self, sp, a, b: ranges.append((a, b)) or real(self, sp, a, b))
    monkeypatch.setattr(
        training, "fit_and_evaluate", lambda *a, **k: _fit_and_evaluate(*a, **{**k, "block_rows": 64, "max_epochs": 30})
    )
    r = trained_store.train("train", "fake", "raw-v1", classifier="sgd", name="s2")
    assert len(ranges) >= 6 and all(b - a <= 4 * 64 + 1 for a, b in ranges)
    epochs = int(r.notes[0].split("sgd ran ")[1].split()[0])
    assert 2 <= epochs < 30
    lr = trained_store.train("train", "fake", "raw-v1", name="l2")
    assert r.accuracy >= lr.accuracy - 0.1  # learns about as well as the in-memory fit


_fit_and_evaluate = __import__("featurestore.learning.train", fromlist=["fit_and_evaluate"]).fit_and_evaluate


def test_logreg_that_would_not_fit_in_memory_is_refused_naming_sgd(trained_store: FeatureStore, monkeypatch) -> None:
    from featurestore.learning import train as training

    r = trained_store.train("train", "fake", "raw-v1", name="l3")
    assert r.notes and "logreg holds 400 x 64 vectors in memory" in r.notes[0]
    monkeypatch.setattr(training, "memory_available", lambda: 50_000)
    with pytest.raises(
        FeatureStoreError, match="more than the 0 MiB available; fix: classifier sgd trains out of core"
    ):
        trained_store.train("train", "fake", "raw-v1", name="l4")
    assert trained_store.train("train", "fake", "raw-v1", classifier="sgd", name="s4").n_train == 320


def test_loading_a_classifier_imports_no_torch(tmp_path: Path) -> None:
    """skops' list of trusted types walks every scikit-learn module, and scikit-learn's array-API shim imports
    torch when it is installed: seconds of every fs train/predict/eval process, for nothing a classifier needs."""
    from tests.conftest import run_python

    code = (
        "import sys\n"
        "from featurestore.errors import ClassifierError\n"
        "from featurestore.learning.train import load_classifier\n"
        "from featurestore.storage.store import Store\n"
        f"try:\n    load_classifier(Store({str(tmp_path / 'store')!r}), 'none')\n"
        "except ClassifierError:\n    pass\n"
        "import skops.io\n"
        "print('torch' in sys.modules, len(skops.io._trusted_types.SKLEARN_ESTIMATOR_TYPE_NAMES) > 100)\n"
    )
    assert run_python(code).split() == ["False", "True"]
