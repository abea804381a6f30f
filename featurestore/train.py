"""Classifiers trained on vectors read from the store, saved without pickle.

Models are written with skops (a format that loads only allow-listed types, never
arbitrary code) beside a JSON manifest recording the space, the dataset, a hash of the
row ids used, the parameters and the metrics.
"""
from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from featurestore import __version__
from featurestore.errors import FeatureStoreError, LabelError
from featurestore.store import Store, atomic_write_bytes

CLASSIFIERS = ("logreg", "sgd")
ReadFn = Callable[[np.ndarray], np.ndarray]  # positions -> float32 vectors


@dataclass
class TrainResult:
    name: str
    path: str
    classifier: str
    dataset: str
    space: str
    model: str
    recipe: str
    n_train: int
    n_valid: int
    f1: float
    precision: float
    recall: float
    accuracy: float
    seconds_read: float
    seconds_fit: float


def make_classifier(kind: str, seed: int) -> Any:
    from sklearn.linear_model import LogisticRegression, SGDClassifier

    if kind == "logreg":
        return LogisticRegression(max_iter=2000, random_state=seed)
    if kind == "sgd":
        return SGDClassifier(loss="log_loss", alpha=1e-4, random_state=seed)
    raise FeatureStoreError(f"unknown classifier {kind!r}; use one of: {', '.join(CLASSIFIERS)}")


def check_labels(labels: np.ndarray, dataset: str) -> None:
    if len(labels) == 0:
        raise LabelError(
            f"dataset {dataset!r} has no labelled rows; ingest it with a label column (--label-col NAME)"
        )
    bad = sorted(set(np.unique(labels).tolist()) - {0, 1})
    if bad:
        raise LabelError(
            f"dataset {dataset!r} has labels {bad[:5]} besides 0/1; training is binary (positive = 1): "
            "map the labels to 0/1 and ingest into a new dataset"
        )
    if len(np.unique(labels)) < 2:
        raise LabelError(f"dataset {dataset!r} has only label {int(labels[0])}; training needs both 0 and 1")


def ids_hash(ids: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(ids, dtype=np.int64).tobytes()).hexdigest()


def fit_and_evaluate(
    kind: str, read: ReadFn, n: int, y: np.ndarray, test_size: float, seed: int, chunk_rows: int = 16384
) -> tuple[Any, dict[str, float], int, int, float, float]:
    """Split positions like the tutorial (``train_test_split(..., random_state=seed)``), fit, score."""
    from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score
    from sklearn.model_selection import train_test_split

    if not 0.0 < test_size < 1.0:
        raise FeatureStoreError(f"--test-size {test_size} must be between 0 and 1 (e.g. 0.2)")
    # Splitting positions gives the same partition as splitting the matrix itself.
    tr, va = train_test_split(np.arange(n), random_state=seed, test_size=test_size)
    if len(np.unique(y[tr])) < 2:  # a tiny dataset can split so that one class is all in validation
        raise LabelError(
            f"the training split ({len(tr)} rows) holds only label {int(y[tr][0])}; training needs both 0 and 1: "
            "add labelled rows of both classes, or change --test-size / --seed"
        )
    clf = make_classifier(kind, seed)
    t_read = t_fit = 0.0
    if kind == "sgd":  # out of core: never more than chunk_rows vectors in memory
        rng = np.random.default_rng(seed)
        for _epoch in range(5):
            order = rng.permutation(tr)
            for s in range(0, len(order), chunk_rows):
                part = np.sort(order[s : s + chunk_rows])
                t = time.perf_counter()
                X = read(part)
                t_read += time.perf_counter() - t
                t = time.perf_counter()
                clf.partial_fit(X, y[part], classes=np.array([0, 1]))
                t_fit += time.perf_counter() - t
        preds = []
        for s in range(0, len(va), chunk_rows):
            t = time.perf_counter()
            X = read(va[s : s + chunk_rows])
            t_read += time.perf_counter() - t
            preds.append(clf.predict(X))
        pred = np.concatenate(preds)
    else:  # in memory, like the tutorial: one read of every row, then the split
        t = time.perf_counter()
        X = read(np.arange(n))
        t_read += time.perf_counter() - t
        t = time.perf_counter()
        clf.fit(X[tr], y[tr])
        t_fit += time.perf_counter() - t
        pred = clf.predict(X[va])
    yv = y[va]
    metrics = {
        "f1": float(f1_score(yv, pred, pos_label=1, zero_division=0)),
        "precision": float(precision_score(yv, pred, pos_label=1, zero_division=0)),
        "recall": float(recall_score(yv, pred, pos_label=1, zero_division=0)),
        "accuracy": float(accuracy_score(yv, pred)),
    }
    return clf, metrics, len(tr), len(va), t_read, t_fit


_CLASSIFIER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def classifier_paths(store: Store, name: str) -> tuple[Path, Path]:
    # The name becomes a file name: no '/' or '..' that would write outside the store.
    if not _CLASSIFIER_NAME.match(name) or ".." in name:
        raise FeatureStoreError(
            f"invalid classifier name {name!r}; use 1-128 letters, digits, '_', '-' or '.', "
            "starting with a letter or digit, without '/' or '..'"
        )
    return store.classifier_dir / f"{name}.skops", store.classifier_dir / f"{name}.json"


def save_classifier(store: Store, name: str, clf: Any, manifest: dict[str, Any]) -> Path:
    import skops.io as sio

    store.classifier_dir.mkdir(parents=True, exist_ok=True)
    model_path, meta_path = classifier_paths(store, name)
    data = sio.dumps(clf)
    atomic_write_bytes(model_path, data)
    manifest = {**manifest, "file_sha256": hashlib.sha256(data).hexdigest(), "featurestore": __version__}
    atomic_write_bytes(meta_path, json.dumps(manifest, indent=1, sort_keys=True).encode())
    return model_path


def load_classifier(store: Store, name: str) -> tuple[Any, dict[str, Any]]:
    """Load a saved classifier; only scikit-learn's default-trusted types are accepted."""
    import skops.io as sio

    model_path, meta_path = classifier_paths(store, name)
    if not meta_path.is_file() or not model_path.is_file():
        known = sorted(p.stem for p in store.classifier_dir.glob("*.json")) if store.classifier_dir.is_dir() else []
        raise FeatureStoreError(
            f"no trained classifier {name!r} in {store.path}; trained: {', '.join(known) or 'none'}; "
            "fix: run 'fs train --dataset NAME' first, or pass --classifier-name"
        )
    manifest = json.loads(meta_path.read_text())
    data = model_path.read_bytes()
    if hashlib.sha256(data).hexdigest() != manifest.get("file_sha256"):
        raise FeatureStoreError(f"classifier file {model_path} does not match its manifest; retrain with 'fs train'")
    try:
        untrusted = sio.get_untrusted_types(data=data)
        if untrusted:
            raise FeatureStoreError(
                f"classifier file {model_path} contains types that are not trusted ({', '.join(untrusted[:3])}); "
                "refusing to load it"
            )
        return sio.loads(data), manifest
    except FeatureStoreError:
        raise
    except Exception as exc:  # not a skops file (a pickle, a zip bomb, garbage): never unpickled
        raise FeatureStoreError(
            f"classifier file {model_path} is not a valid skops file ({type(exc).__name__}); refusing to load it; "
            "retrain with 'fs train'"
        ) from None


def result_dict(r: TrainResult) -> dict[str, Any]:
    return asdict(r)
