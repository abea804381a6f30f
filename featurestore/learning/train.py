"""Classifiers trained on vectors read from the store, and their bookkeeping; saved without pickle.

This module owns training: the split, the fit (in memory or out of core), the metrics,
and the classifier files. Labels are text as the user gave them; two classes give binary
F1 for the positive class, more give macro-F1 with a per-class table. Models are written
with skops (a format that loads only allow-listed types, never arbitrary code) beside a
JSON manifest recording the space, the dataset, a hash of the row ids used, the classes,
the parameters and the metrics.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from featurestore import __version__
from featurestore.errors import ClassifierError, LabelError, StoreError, UsageError
from featurestore.inputs.sources import NO_LABEL
from featurestore.progress import ProgressFn
from featurestore.storage import scan
from featurestore.storage.atomic import atomic_write_bytes
from featurestore.storage.manifest import Dataset, Space
from featurestore.storage.store import Store

CLASSIFIERS = ("logreg", "sgd")
POSITIVE_NAMES = ("1", "pos", "positive", "true", "yes")  # the default positive class, in this order
MIN_RELIABLE_VALID = 30  # fewer validation rows than this make F1 a coin toss: say so


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
    f1: float  # binary F1 of the positive class, or macro-F1 for more than two classes
    precision: float
    recall: float
    accuracy: float
    seconds_read: float
    seconds_fit: float
    classes: list[str] = field(default_factory=list)
    positive: str | None = None  # None: more than two classes (macro averages)
    per_class: dict[str, dict[str, float]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # how the fit went: memory held, epochs run
    features: str | None = None  # the feature spec chosen (None: the plain vectors of one space)
    cv: dict[str, Any] = field(default_factory=dict)  # folds, metric, mean, sd, candidates tried, best first
    plots: list[str] = field(default_factory=list)  # PNG files written beside the classifier


def make_classifier(kind: str, seed: int) -> Any:
    from sklearn.linear_model import LogisticRegression, SGDClassifier

    if kind == "logreg":
        return LogisticRegression(max_iter=2000, random_state=seed)
    if kind == "sgd":
        return SGDClassifier(loss="log_loss", alpha=1e-4, random_state=seed)
    raise UsageError(f"unknown {{param}} {kind!r}; use one of: {', '.join(CLASSIFIERS)}", "classifier")


def classes_of(labels: np.ndarray, dataset: str, positive: str | None = None) -> tuple[list[str], str | None]:
    """The sorted classes of labelled rows, and the positive class when there are two."""
    if len(labels) == 0:
        raise LabelError(
            f"dataset {dataset!r} has no labelled rows; add labels by ingesting the same file again with its "
            "label column (labels of stored rows are updated in place)"
        )
    classes = sorted(set(labels.tolist()))
    if len(classes) < 2:
        raise LabelError(f"dataset {dataset!r} has only label {classes[0]!r}; training needs at least two classes")
    if positive is not None and positive not in classes:
        raise UsageError(
            f"{{param}} {positive!r} is not a label of dataset {dataset!r}; labels: {', '.join(classes)}", "positive"
        )
    if len(classes) > 2:
        return classes, None
    if positive is None:
        lower = {c.lower(): c for c in classes}
        positive = next((lower[n] for n in POSITIVE_NAMES if n in lower), classes[-1])
    return classes, positive


def trained_now() -> str:
    """The time a manifest records as ``trained_at``: UTC, ISO 8601, to the microsecond."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def ids_hash(ids: np.ndarray) -> str:
    return hashlib.sha256(json.dumps([str(i) for i in ids.tolist()]).encode("utf-8", "surrogatepass")).hexdigest()


class _IdsHash:
    """``ids_hash`` of ids given a block at a time: the same bytes, ``json.dumps`` of the whole list, hashed
    as they come."""

    def __init__(self) -> None:
        self._h = hashlib.sha256(b"[")
        self._first = True

    def update(self, ids: np.ndarray) -> None:
        if len(ids):
            inner = json.dumps([str(i) for i in ids.tolist()])[1:-1]  # "[a, b]" -> "a, b"
            self._h.update((inner if self._first else ", " + inner).encode("utf-8", "surrogatepass"))
            self._first = False

    def hexdigest(self) -> str:
        h = self._h.copy()
        h.update(b"]")
        return h.hexdigest()


@dataclass(frozen=True)
class Labelled:
    """The labelled rows of a dataset in one space, in insertion order, at 12 B a row: the storage row of each
    row's vector, and its label as a code into ``classes`` (sorted); the ids only as their hash."""

    rows: np.ndarray  # int64
    codes: np.ndarray  # int32, index into classes
    classes: list[str]
    ids_sha256: str  # ids_hash of the labelled rows' ids

    @property
    def y(self) -> np.ndarray:
        """The labels as text (an object array: 8 B a row more)."""
        return np.array(self.classes, dtype=object)[self.codes]

    @classmethod
    def of(cls, ids: np.ndarray, y: np.ndarray, rows: np.ndarray) -> Labelled:
        classes, codes = np.unique(np.asarray(y, dtype=object).astype(str), return_inverse=True)
        return cls(np.asarray(rows, np.int64), codes.astype(np.int32), [str(c) for c in classes], ids_hash(ids))


def labelled_ids(store: Store, ds: Dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ids and labels of ``ds``'s labelled rows in insertion order (what ``split`` splits), and the mask of
    those rows among all of the dataset's (to pick their texts)."""
    ids = store.dataset_ids(ds)
    labels = store.dataset_labels(ds, ids)
    keep = labels != NO_LABEL
    return ids[keep], labels[keep], keep


def labelled_rows(store: Store, ds: Dataset, space: Space, block_rows: int = scan.BLOCK_ROWS) -> Labelled:
    """The labelled rows of ``ds`` and where their vectors are in ``space``, read a block at a time
    (``scan.row_blocks``): no Python object per row; every labelled row must have a vector (else refused,
    as ``spaces.require_rows``)."""
    rows: list[np.ndarray] = []
    codes: list[np.ndarray] = []
    code_of: dict[str, int] = {}  # label -> code, in order of first appearance
    hasher, n, missing = _IdsHash(), 0, 0
    for b in scan.row_blocks(store, ds, space, block_rows=block_rows):
        keep = b.labels != ""  # "" = no label
        if not keep.any():
            continue
        labels, inverse = np.unique(b.labels[keep].astype(str), return_inverse=True)
        for label in labels.tolist():
            code_of.setdefault(label, len(code_of))
        codes.append(np.array([code_of[c] for c in labels.tolist()], np.int32)[inverse.reshape(-1)])
        assert b.rows is not None
        rows.append(b.rows[keep])
        missing += int((b.rows[keep] < 0).sum())
        hasher.update(b.ids[keep])
        n += int(keep.sum())
    if missing:
        raise scan.missing_vectors(ds, space, missing, n)
    classes = sorted(code_of)
    recode = np.zeros(len(code_of), np.int32)
    recode[[code_of[c] for c in classes]] = np.arange(len(classes), dtype=np.int32)
    return Labelled(
        np.concatenate(rows) if rows else np.zeros(0, np.int64),
        recode[np.concatenate(codes)] if codes else np.zeros(0, np.int32),
        classes,
        hasher.hexdigest(),
    )


def _metrics(yv: np.ndarray, pred: np.ndarray, classes: Sequence[Any], positive: Any) -> dict[str, Any]:
    """Scores of predictions ``pred`` of labels ``yv`` (``classes``: every label; ``positive``: None, or
    the positive class)."""
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    if positive is not None:  # the positive class's scores; labels outside the classes count as errors
        ps, rs, fs, _ = precision_recall_fscore_support(yv, pred, labels=[positive], average=None, zero_division=0)
        p, r, f = ps[0], rs[0], fs[0]
    else:
        p, r, f, _ = precision_recall_fscore_support(yv, pred, labels=classes, average="macro", zero_division=0)
    pc = precision_recall_fscore_support(yv, pred, labels=classes, average=None, zero_division=0)
    per_class = {
        c: {"precision": float(pc[0][i]), "recall": float(pc[1][i]), "f1": float(pc[2][i]), "support": int(pc[3][i])}
        for i, c in enumerate(classes)
    }
    return {
        "f1": float(f),
        "precision": float(p),
        "recall": float(r),
        "accuracy": float(accuracy_score(yv, pred)),
        "per_class": per_class,
    }


SPAN_PIECE = 8192  # rows read at a time into a reused span: 12 MiB of 384-d float32, which malloc reuses


@dataclass(frozen=True)
class Vectors:
    """The vectors of labelled rows: position i is storage row ``rows[i]`` of ``space``."""

    store: Store
    space: Space
    rows: np.ndarray

    def read(self, pos: np.ndarray) -> np.ndarray:
        return self.store.read_vectors(self.space, self.rows[pos])

    def blocks(self, pos: np.ndarray, block_rows: int) -> list[np.ndarray]:
        """``pos`` cut into groups of about ``block_rows`` positions that lie close together in storage,
        so that each group is one contiguous read (never scattered point reads)."""
        return np.array_split(pos[np.argsort(self.rows[pos], kind="stable")], max(1, -(-len(pos) // block_rows)))

    def read_block(self, group: np.ndarray) -> np.ndarray:
        """The vectors of one group, read as the contiguous storage range that holds them."""
        span, at = self.read_span(group)
        return span[at]

    def read_span(self, group: np.ndarray, buf: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The vectors that hold one group, and where each of the group's is among them (``span[at]`` is
        ``read_block``'s answer, without copying the block: the fit takes its batches from the span). With
        ``buf`` (rows x dim float32, reused from block to block), the span is read into it in pieces of
        ``SPAN_PIECE`` rows: a fresh 100 MB array a block costs a page fault per 4 KiB (measured: a third of
        the CPU time of an sgd fit went to them and to copying)."""
        r = self.rows[group]
        lo, hi = int(r.min()), int(r.max()) + 1
        if hi - lo > 4 * len(group):  # a sparse subset of a large space: point reads are cheaper
            return self.read(group), np.arange(len(group))
        if buf is None or hi - lo > len(buf):
            return self.store.read_range(self.space, lo, hi), r - lo
        for a in range(lo, hi, SPAN_PIECE):
            b = min(hi, a + SPAN_PIECE)
            buf[a - lo : b - lo] = self.store.read_range(self.space, a, b)
        return buf[: hi - lo], r - lo


def memory_available() -> int:
    """Bytes the system can give without swapping (MemAvailable), or 0 when unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def check_memory(kind: str, n: int, dim: int) -> str:
    """What an in-memory fit needs, said up front; refused (naming sgd) when it would not fit."""
    need = n * dim * 4 * 2  # the matrix, and the training split scikit-learn copies out of it
    note = f"{kind} holds {n:,} x {dim} vectors in memory (about {need / 2**20:,.0f} MiB)"
    free = memory_available()
    if kind == "logreg" and free and need > 0.8 * free:
        raise UsageError(
            f"{note}, more than the {free / 2**20:,.0f} MiB available; fix: {{param}} sgd trains out of core",
            "classifier",
        )
    return note


def _fit_sgd(
    clf: Any,
    vectors: Vectors,
    tr: np.ndarray,
    codes: np.ndarray,
    classes: list[str],
    seed: int,
    block_rows: int,
    batch_rows: int,
    max_epochs: int,
) -> tuple[int, float, float]:
    """Epochs of partial_fit over storage-contiguous blocks in a new random order each epoch (rows
    shuffled within each block), stopping early when a held-out slice of the training split stops
    improving. ``codes``: the label of each position, an index into ``classes``. Returns (epochs, read
    seconds, fit seconds)."""
    labels = np.array(classes, dtype=object)
    y = _Labels(codes, labels)
    rng = np.random.default_rng(seed)
    held = rng.permutation(tr)
    n_stop = min(max(1, len(tr) // 10), 20_000) if len(tr) >= 20 else 0
    stop_pos, fit_pos = held[:n_stop], held[n_stop:]
    stop_X = vectors.read(np.sort(stop_pos)) if n_stop else None
    stop_y = y[np.sort(stop_pos)] if n_stop else None
    groups = vectors.blocks(fit_pos, block_rows)
    widest = max((int(np.ptp(vectors.rows[g])) + 1 for g in groups if len(g)), default=0)
    buf = np.empty((min(widest, 4 * block_rows), vectors.space.dim), np.float32)  # one span, reused
    best, stale, t_read, t_fit, epoch = -1.0, 0, 0.0, 0.0, 0
    for epoch in range(1, max_epochs + 1):  # noqa: B007 -- returned after the loop: the epochs run
        for g in rng.permutation(len(groups)):
            t = time.perf_counter()
            span, at = vectors.read_span(groups[g], buf)
            t_read += time.perf_counter() - t
            t = time.perf_counter()
            order = rng.permutation(len(at))
            for s in range(0, len(order), batch_rows):
                part = order[s : s + batch_rows]
                clf.partial_fit(span[at[part]], y[groups[g][part]], classes=labels)
            t_fit += time.perf_counter() - t
        if stop_X is None:
            continue
        score = float((clf.predict(stop_X) == stop_y).mean())
        if score > best + 1e-4:
            best, stale = score, 0
        else:
            stale += 1
            if stale >= 2:
                break
    return epoch, t_read, t_fit


class _Labels:
    """Labels as text at positions of an array of codes into the classes (``y[pos]``, made only where read)."""

    def __init__(self, codes: np.ndarray, labels: np.ndarray) -> None:
        self.codes, self.labels = codes, labels

    def __getitem__(self, pos: Any) -> np.ndarray:
        return self.labels[self.codes[pos]]


def _codes_of(values: np.ndarray, classes: list[str]) -> np.ndarray:
    """The index in ``classes`` of each label (every one must be a class)."""
    code = {c: i for i, c in enumerate(classes)}
    items = [str(v) for v in np.asarray(values).tolist()]
    return np.fromiter(map(code.__getitem__, items), np.int32, len(items))


def _distinct(y: np.ndarray, classes: list[str], pos: np.ndarray) -> list[str]:
    """The labels at ``pos`` of ``y`` (labels, or codes into ``classes``), sorted."""
    if y.dtype.kind in "iu":
        return [classes[i] for i in np.unique(y[pos]).tolist()]
    return sorted(set(y[pos].tolist()))


def split(y: np.ndarray, classes: list[str], test_size: float, seed: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Training and validation positions, exactly the tutorial's ``train_test_split(..., random_state=seed)``.
    ``y``: the labels, or their codes into ``classes``."""
    from sklearn.model_selection import train_test_split

    if not 0.0 < test_size < 1.0:
        raise UsageError(f"{{param}} {test_size} must be between 0 and 1 (e.g. 0.2)", "test_size")
    n = len(y)
    if round(n * test_size) < 1 or n - round(n * test_size) < 2:
        raise LabelError(f"{n} labelled rows cannot be split with test size {test_size}; add labelled rows")
    # Splitting positions gives the same partition as splitting the matrix itself.
    tr, va = train_test_split(np.arange(n), random_state=seed, test_size=test_size)
    if len(_distinct(y, classes, tr)) < 2:  # a tiny dataset can split so that one class is all in validation
        raise LabelError(
            f"the training split ({len(tr)} rows) holds only label {_distinct(y, classes, tr)[0]!r}; "
            "training needs two classes: "
            "add labelled rows of each class, or change the test size or seed"
        )
    warnings = []
    if len(va) < MIN_RELIABLE_VALID:
        warnings.append(f"only {len(va)} validation rows: the scores are unreliable; add labelled rows")
    absent = sorted(set(classes) - set(_distinct(y, classes, va)))
    if absent:
        warnings.append(f"classes {', '.join(map(repr, absent))} have no validation rows: their scores are 0")
    return tr, va, warnings


@dataclass
class Validation:
    """What the validation rows got: for the pictures (labels, predictions, class probabilities)."""

    y: np.ndarray
    pred: np.ndarray
    proba: np.ndarray | None  # columns in the order of ``classes``


def _proba(clf: Any, X: Any, classes: list[str]) -> np.ndarray | None:
    if not hasattr(clf, "predict_proba"):
        return None
    p = clf.predict_proba(X)
    # A class with no training rows is unknown to the classifier: its probability is 0.
    fitted = {str(c): i for i, c in enumerate(clf.classes_)}
    out = np.zeros((p.shape[0], len(classes)), dtype=p.dtype)
    for j, c in enumerate(classes):
        if c in fitted:
            out[:, j] = p[:, fitted[c]]
    return out


def fit_and_evaluate(
    kind: str,
    vectors: Vectors,
    y: np.ndarray,
    classes: list[str],
    positive: str | None,
    test_size: float,
    seed: int,
    block_rows: int = 65536,
    batch_rows: int = 4096,
    max_epochs: int = 20,
) -> tuple[Any, dict[str, Any], int, int, float, float, list[str], list[str], Validation]:
    """Split positions like the tutorial (``train_test_split(..., random_state=seed)``), fit, score.
    ``y``: the labels, or their codes into ``classes`` (4 B a row instead of a str each)."""
    codes = y.astype(np.int32, copy=False) if y.dtype.kind in "iu" else _codes_of(y, classes)
    labels = np.array(classes, dtype=object)
    tr, va, warnings = split(codes, classes, test_size, seed)
    n = len(codes)
    clf = make_classifier(kind, seed)
    notes: list[str] = []
    if kind == "sgd":  # out of core: one block of block_rows vectors in memory at a time
        epochs, t_read, t_fit = _fit_sgd(clf, vectors, tr, codes, classes, seed, block_rows, batch_rows, max_epochs)
        # The validation rows a window of block_rows storage rows at a time (a read of at most a block, however
        # sparse the rows), each prediction put at its row's place.
        pred_codes = np.empty(len(va), np.int32)
        proba: np.ndarray | None = None
        order = np.argsort(vectors.rows[va], kind="stable")
        window = vectors.rows[va][order] // max(1, block_rows)
        for part in np.split(order, np.flatnonzero(np.diff(window)) + 1) if len(va) else []:
            t = time.perf_counter()
            X = vectors.read_block(va[part])
            t_read += time.perf_counter() - t
            pred_codes[part] = _codes_of(clf.predict(X), classes)
            p = _proba(clf, X, classes)
            if p is not None:
                proba = np.empty((len(va), len(classes)), p.dtype) if proba is None else proba
                proba[part] = p
        pred = labels[pred_codes]
        metrics = _metrics_of_codes(codes[va], pred_codes, classes, positive)
        notes.append(
            f"sgd ran {epochs} epoch(s) over storage-contiguous blocks (early stopping on a held-out "
            "slice of the training split)"
        )
    else:  # in memory, like the tutorial: one read of every row, then the split
        y = labels[codes]
        t = time.perf_counter()
        X = vectors.read(np.arange(n))
        t_read = time.perf_counter() - t
        t = time.perf_counter()
        clf.fit(X[tr], y[tr])
        t_fit = time.perf_counter() - t
        pred = clf.predict(X[va])
        proba = _proba(clf, X[va], classes)
        metrics = _metrics(y[va], pred, classes, positive)
    return (
        clf,
        metrics,
        len(tr),
        len(va),
        t_read,
        t_fit,
        warnings,
        notes,
        Validation(labels[codes[va]], pred, proba),
    )


def _metrics_of_codes(yv: np.ndarray, pred: np.ndarray, classes: list[str], positive: str | None) -> dict[str, Any]:
    """``_metrics`` of labels given as codes into ``classes``: the same counts, so the same scores, without
    scikit-learn sorting a str per validation row."""
    m = _metrics(yv, pred, list(range(len(classes))), None if positive is None else classes.index(positive))
    m["per_class"] = {classes[int(c)]: v for c, v in m["per_class"].items()}
    return m


def train(
    store: Store,
    space: Space,
    dataset: str,
    labelled: Labelled,
    *,
    classifier: str = "logreg",
    test_size: float = 0.2,
    seed: int = 42,
    name: str | None = None,
    positive: str | None = None,
    plots: bool = True,
) -> TrainResult:
    """Fit on the ``labelled`` rows (``labelled_rows``: storage rows in ``space``, label codes), score, save
    with a manifest."""
    classes, positive = classes_of(np.array(labelled.classes, dtype=object), dataset, positive)
    assert classes == labelled.classes  # sorted both ways: the codes index the classes
    name = name or f"{dataset}-{space.model.replace(':', '_').replace('/', '_').replace('#', '_')}-{classifier}"
    paths = classifier_paths(store, name)
    make_classifier(classifier, seed)  # an unknown kind fails before any work
    _require_writable(store)
    n = len(labelled.codes)
    memory_note = check_memory(classifier, n, space.dim) if classifier == "logreg" else None
    clf, metrics, n_tr, n_va, t_read, t_fit, warnings, notes, valid = fit_and_evaluate(
        classifier, Vectors(store, space, labelled.rows), labelled.codes, classes, positive, test_size, seed
    )
    if memory_note:
        notes.insert(0, memory_note)
    manifest = {
        "name": name,
        "classifier": classifier,
        "dataset": dataset,
        "space": space.id,
        "model": space.model,
        "recipe": space.recipe,
        "dtype": space.dtype,
        "row_ids_sha256": labelled.ids_sha256,
        "classes": classes,
        "positive": positive,
        "params": {"test_size": test_size, "seed": seed},
        "metrics": metrics,
        "n_train": n_tr,
        "n_valid": n_va,
        "trained_at": trained_now(),
    }
    path = save_classifier(store, name, clf, manifest, paths)
    pictures = draw_plots(store, name, valid, classes, positive, notes) if plots else []
    return TrainResult(
        name,
        str(path),
        classifier,
        dataset,
        space.id,
        space.model,
        space.recipe,
        n_tr,
        n_va,
        metrics["f1"],
        metrics["precision"],
        metrics["recall"],
        metrics["accuracy"],
        t_read,
        t_fit,
        classes,
        positive,
        metrics["per_class"],
        warnings,
        notes,
        plots=pictures,
    )


def _require_writable(store: Store) -> None:
    if not os.access(store.classifier_dir if store.classifier_dir.is_dir() else store.path, os.W_OK):
        raise StoreError(
            f"store {store.path} is read-only: the classifier cannot be saved in {store.classifier_dir}; "
            "fix: train in a writable copy of the store, or ask its owner for write access"
        )


def draw_plots(
    store: Store, name: str, valid: Validation, classes: list[str], positive: str | None, notes: list[str]
) -> list[str]:
    """A confusion matrix and a precision-recall curve of the validation rows, beside the classifier."""
    try:
        from featurestore.learning import plots
    except ImportError:
        notes.append("no pictures: matplotlib is not installed; fix: pip install 'featurestore[plots]'")
        return []
    title = f"{name}: {len(valid.y):,} validation rows"
    out = [plots.confusion_png(store.classifier_dir / f"{name}.confusion.png", valid.y, valid.pred, classes, title)]
    if valid.proba is not None:
        out.append(
            plots.precision_recall_png(
                store.classifier_dir / f"{name}.pr.png", valid.y, valid.proba, classes, positive, title
            )
        )
    return [str(p) for p in out]


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_.-")[:100] or "features"


def offset_words(offsets: dict[str, float]) -> str:
    """``negative +0.62, positive 0, tech -0.1``: the offsets of a classifier, in words."""
    return ", ".join(f"{c} {v:+.3g}" if v else f"{c} 0" for c, v in offsets.items())


def predict_offsets(
    clf: Any, X: Any, classes: list[str], offsets: dict[str, float] | None, proba: bool = True
) -> tuple[np.ndarray, np.ndarray | None]:
    """Labels and (with ``proba``) class probabilities, columns in ``classes`` order, of a classifier whose
    manifest may hold ``offsets`` (a class -> a number added to its log-probability): with them the label is the
    argmax of the shifted log-probabilities and the probabilities are renormalised (``features.apply_offsets``)."""
    from featurestore.learning import features as feats

    if offsets is None:
        pred = np.asarray(clf.predict(X))
        return pred, _proba(clf, X, classes) if proba else None
    S = feats.class_scores(clf, X, classes)
    at, p = feats.apply_offsets(S, np.array([float(offsets.get(c, 0.0)) for c in classes]))
    return np.array(classes, dtype=object)[at], p if proba else None


def train_features(
    store: Store,
    dataset: str,
    inputs_of: dict[tuple[Any, ...], Any],
    X: Any,
    ids: np.ndarray,
    y: np.ndarray,
    *,
    search: str = "none",
    folds: int = 5,
    time_limit: float | None = None,
    test_size: float = 0.2,
    seed: int = 42,
    name: str | None = None,
    positive: str | None = None,
    plots: bool = True,
    progress: ProgressFn | None = None,
) -> TrainResult:
    """Choose features and hyper-parameters by stratified K-fold CV on the training split only, fit the
    chosen pipeline on the training split, score it once on the validation split, save it with skops.
    ``progress(advanced, total)`` counts the candidate settings scored (``features.select``).

    ``inputs_of`` maps each alternative (a tuple of ``features.Part``) to its resolved inputs; ``X`` is the
    pipeline input (``features.frame``) of the labelled rows ``ids`` with labels ``y``, holding the columns
    of every alternative."""
    from featurestore.learning import features as feats

    classes, positive = classes_of(y, dataset, positive)
    first = next(iter(inputs_of))
    name = name or f"{dataset}-{_safe_name(feats.spec_of(first) if len(inputs_of) == 1 else 'features')}-logreg"
    paths = classifier_paths(store, name)
    _require_writable(store)
    dense = max(i.dense_dim for i in inputs_of.values())
    notes = [check_memory("logreg", len(y), dense)] if dense else []
    tr, va, warnings = split(y, classes, test_size, seed)
    t = time.perf_counter()
    sel = feats.select(
        inputs_of,
        X.iloc[tr],
        y[tr],
        classes,
        positive,
        search,
        folds=folds,
        seed=seed,
        time_limit=time_limit,
        progress=progress,
    )
    best = sel.best
    inputs = inputs_of[best.parts]
    pipe = feats.make_pipeline(inputs, best.features, best.classifier, seed)
    used = [c for k, s in enumerate(inputs.spaces) if s is not None for c in inputs.columns(k)]
    used += [f"text@{r}" for r in inputs.recipes]
    pipe = feats.fit_pipeline(pipe, X.iloc[tr][used], y[tr])
    t_fit = time.perf_counter() - t
    Xva = X.iloc[va][used]
    offsets = dict(zip(classes, sel.offsets)) if sel.offsets is not None else None
    pred, proba = predict_offsets(pipe, Xva, classes, offsets)
    valid = Validation(y[va], pred, proba)
    metrics = _metrics(y[va], pred, classes, positive)
    if offsets is not None:
        notes.append(
            f"class offsets added to the log-probabilities before the argmax ({offset_words(offsets)}), fitted to "
            f"{'F1' if positive is not None else 'macro-F1'} on the out-of-fold predictions of the training split; "
            "saved with the classifier, applied by predict and eval"
        )
    if sel.skipped:
        shown = feats.describe_many(sel.untried[:12]) + (f"; and {sel.skipped - 12} more" if sel.skipped > 12 else "")
        notes.append(
            f"the {sel.time_limit:g} s time limit left {sel.skipped} of {len(sel.tried) + sel.skipped} candidate "
            f"settings untried ({shown}); raise --time-limit to try them"
        )
    chosen = best.as_dict()
    if offsets is not None:
        chosen["words"] += f" ({offset_words(offsets)})"
    cv = {
        "folds": sel.folds,
        "metric": sel.metric,
        "search": search,
        "mean": best.mean,
        "sd": best.sd,
        "seconds": sel.seconds,
        "tried": len(sel.tried),
        "skipped": sel.skipped,
        "time_limit": sel.time_limit,
        "untried": [c.words for c in sel.untried],
        "chosen": chosen,
        "top": [chosen, *(c.as_dict() for c in sel.tried[1:10])],
        "jobs": sel.jobs,
    }
    spec = feats.spec_of(best.parts)
    space_ids = ",".join(s.id for s in inputs.spaces if s is not None)
    models = "+".join(p.model for p in best.parts if p.kind == "space")
    manifest: dict[str, Any] = {
        "name": name,
        "classifier": "logreg",
        "dataset": dataset,
        "space": space_ids or None,
        "model": models,
        "recipe": "+".join(sorted({p.recipe for p in best.parts})),
        "row_ids_sha256": ids_hash(ids),
        "classes": classes,
        "positive": positive,
        "metrics": metrics,
        "n_train": len(tr),
        "n_valid": len(va),
        "params": {"test_size": test_size, "seed": seed, "search": search, "folds": folds},
        "features": {
            "spec": spec,
            "inputs": inputs.describe(),
            "chosen": chosen,
            "n_features": len(feats.feature_names(pipe)),
        },
        "cv": cv,
        **({"offsets": offsets} if offsets is not None else {}),
        "trained_at": trained_now(),
    }
    path = save_classifier(store, name, pipe, manifest, paths)
    pictures = draw_plots(store, name, valid, classes, positive, notes) if plots else []
    return TrainResult(
        name,
        str(path),
        "logreg",
        dataset,
        space_ids,
        models,
        manifest["recipe"],
        len(tr),
        len(va),
        metrics["f1"],
        metrics["precision"],
        metrics["recall"],
        metrics["accuracy"],
        0.0,
        t_fit,
        classes,
        positive,
        metrics["per_class"],
        warnings,
        notes,
        features=spec,
        cv=cv,
        plots=pictures,
    )


_CLASSIFIER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def classifier_paths(store: Store, name: str) -> tuple[Path, Path]:
    # The name becomes a file name: no '/' or '..' that would write outside the store.
    if not _CLASSIFIER_NAME.match(name) or ".." in name:
        raise UsageError(
            f"invalid classifier {{param}} {name!r}; use 1-128 letters, digits, '_', '-' or '.', "
            "starting with a letter or digit, without '/' or '..'",
            "name",
        )
    return store.classifier_dir / f"{name}.skops", store.classifier_dir / f"{name}.json"


def _skops_io() -> Any:
    """``skops.io``, imported with torch hidden: its list of trusted types walks every scikit-learn module, and
    scikit-learn's array-API shim for torch imports torch when it is installed (``skops.io`` in 1.7 s instead of
    3.1 s, for each ``fs train``/``predict``/``eval`` process here); nothing a classifier file holds needs torch,
    and the list is the same (208 estimator types either way)."""
    from featurestore.machine import hidden_module

    with hidden_module("torch"):
        import skops.io as sio
    return sio


def save_classifier(store: Store, name: str, clf: Any, manifest: dict[str, Any], paths: tuple[Path, Path]) -> Path:
    sio = _skops_io()

    store.classifier_dir.mkdir(parents=True, exist_ok=True)
    model_path, meta_path = paths
    data = sio.dumps(clf)
    atomic_write_bytes(model_path, data)
    manifest = {**manifest, "file_sha256": hashlib.sha256(data).hexdigest(), "featurestore": __version__}
    atomic_write_bytes(meta_path, json.dumps(manifest, indent=1, sort_keys=True).encode())
    return model_path


@dataclass(frozen=True)
class ClassifierChoice:
    """The saved classifier a command uses, and, when the caller named none, why this one."""

    name: str
    chosen: str | None = None  # None: named by the caller; else "the only one" or "the most recently trained"
    trained_at: str | None = None  # when it was trained (UTC), from its manifest
    others: tuple[str, ...] = ()  # the other classifiers of the store

    @property
    def note(self) -> str | None:
        if self.chosen is None:
            return None
        when = f", trained {self.trained_at}" if self.trained_at else ""
        more = f" and {len(self.others) - 10} more" if len(self.others) > 10 else ""
        others = f"; others: {', '.join(self.others[:10])}{more}" if self.others else ""
        return f"using classifier {self.name!r}, {self.chosen} in this store{when}{others}"


def _trained_at(manifest: dict[str, Any]) -> datetime | None:
    text = manifest.get("trained_at")
    for fmt in ("%Y-%m-%dT%H:%M:%S.%fZ", "%Y-%m-%dT%H:%M:%SZ"):  # to the microsecond, or (older) the second
        try:
            return datetime.strptime(str(text), fmt).replace(tzinfo=timezone.utc)
        except ValueError:
            continue
    return None


def choose_classifier(store: Store, name: str | None = None) -> ClassifierChoice:
    """``name``, or when None the classifier trained most recently in the store (by its manifest's
    ``trained_at``, then the manifest file's modification time); refused when none, or when two are
    equally recent."""
    if name is not None:
        return ClassifierChoice(name)
    found: dict[str, tuple[datetime, int, str]] = {}
    folder = store.classifier_dir
    for meta_path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        if not meta_path.with_suffix(".skops").is_file():
            continue
        try:
            manifest = json.loads(meta_path.read_text())
            mtime = meta_path.stat().st_mtime_ns
        except (OSError, ValueError):
            continue  # unreadable: 'fs predict --classifier-name' on it says why
        when = _trained_at(manifest) if isinstance(manifest, dict) else None
        stamp = when.strftime("%Y-%m-%d %H:%M:%S UTC") if when else ""
        found[meta_path.stem] = (when or datetime.fromtimestamp(mtime / 1e9, timezone.utc), mtime, stamp)
    if not found:
        raise ClassifierError(
            f"no trained classifier in {store.path}; fix: run 'fs train --dataset NAME' first, "
            "or pass [[classifier_name]]"
        )
    order = sorted(found, key=lambda n: found[n][:2], reverse=True)
    newest = order[0]
    if len(order) > 1 and found[order[1]][:2] == found[newest][:2]:
        tied = [n for n in order if found[n][:2] == found[newest][:2]]
        raise ClassifierError(
            f"classifiers {', '.join(map(repr, tied))} of {store.path} were trained at the same time, so none is the "
            f"most recent; fix: pass [[classifier_name]] (trained: {', '.join(sorted(found))})"
        )
    why = "the only one" if len(order) == 1 else "the most recently trained"
    return ClassifierChoice(newest, why, found[newest][2] or None, tuple(order[1:]))


def load_classifier(store: Store, name: str) -> tuple[Any, dict[str, Any]]:
    """Load a saved classifier; only scikit-learn's default-trusted types are accepted."""
    sio = _skops_io()

    model_path, meta_path = classifier_paths(store, name)
    if not meta_path.is_file() or not model_path.is_file():
        known = sorted(p.stem for p in store.classifier_dir.glob("*.json")) if store.classifier_dir.is_dir() else []
        raise ClassifierError(
            f"no trained classifier {name!r} in {store.path}; trained: {', '.join(known) or 'none'}; "
            "fix: run 'fs train --dataset NAME' first, or pass [[classifier_name]]"
        )
    try:
        manifest = json.loads(meta_path.read_text())
    except (OSError, ValueError) as exc:
        raise ClassifierError(
            f"classifier manifest {meta_path} is unreadable ({exc}); retrain with 'fs train'"
        ) from None
    data = model_path.read_bytes()
    if hashlib.sha256(data).hexdigest() != manifest.get("file_sha256"):
        raise ClassifierError(f"classifier file {model_path} does not match its manifest; retrain with 'fs train'")
    try:
        untrusted = sio.get_untrusted_types(data=data)
        if untrusted:
            raise ClassifierError(
                f"classifier file {model_path} contains types that are not trusted ({', '.join(untrusted[:3])}); "
                "refusing to load it"
            )
        return sio.loads(data), manifest
    except ClassifierError:
        raise
    except Exception as exc:  # not a skops file (a pickle, a zip bomb, garbage): never unpickled
        raise ClassifierError(
            f"classifier file {model_path} is not a valid skops file ({type(exc).__name__}); refusing to load it; "
            "retrain with 'fs train'"
        ) from None


def result_dict(r: TrainResult) -> dict[str, Any]:
    return asdict(r)


PREDICT_ROWS = 16384  # rows read, featurized and predicted at a time


def predict_rows(
    store: Store, snap: Any, ds: Any, clf: Any, manifest: dict[str, Any], ids: np.ndarray, proba: bool = False
) -> tuple[np.ndarray, np.ndarray | None]:
    """Labels (as text) and, when asked, class probabilities (columns in ``manifest['classes']`` order) of
    the rows ``ids`` of ``ds``, read from the store exactly as the classifier was trained: the same space,
    or the same spaces and cleaned texts of a feature pipeline."""
    from featurestore.learning import features as feats
    from featurestore.spaces import require_rows

    classes = [str(c) for c in manifest["classes"]]
    if "features" in manifest:
        inputs = feats.inputs_from_manifest(snap, manifest["features"]["inputs"])
        texts = None
        if inputs.recipes:
            from featurestore.storage.store import lookup

            texts = store.dataset_texts(ds)[lookup(store.dataset_ids(ds)).get_indexer(ids)]

        def inputs_of(sl: slice) -> Any:
            return feats.frame(store, ds, inputs, ids[sl], None if texts is None else texts[sl])
    else:
        space = snap.spaces.get(manifest["space"])
        if space is None:
            raise ClassifierError(
                f"classifier {manifest['name']!r} was trained in space {manifest['space']} which is not in "
                f"{store.path}; retrain it with 'fs train'"
            )
        rows = require_rows(store, ds, space, ids)

        def inputs_of(sl: slice) -> Any:
            return store.read_vectors(space, rows[sl])

    offsets = manifest.get("offsets")  # chosen by the search: applied to every prediction
    labels, probs = [], []
    for s in range(0, len(ids), PREDICT_ROWS):
        X = inputs_of(slice(s, s + PREDICT_ROWS))
        pred, p = predict_offsets(clf, X, classes, offsets, proba)
        labels.append(np.array([str(v) for v in pred.tolist()], dtype=object))
        if proba:
            if p is None:
                raise ClassifierError(
                    f"classifier {manifest['name']!r} gives no probabilities; retrain with "
                    "'fs train' (logreg, or sgd with log loss)"
                )
            probs.append(p)
    out = np.concatenate(labels) if labels else np.zeros(0, dtype=object)
    if not proba:
        return out, None
    return out, np.concatenate(probs) if probs else np.zeros((0, len(classes)))


def fitted_rows(manifest: dict[str, Any], dataset: str, ids: np.ndarray) -> tuple[int, bool] | None:
    """How many of the labelled rows ``ids`` of ``dataset`` the classifier was fitted on, and whether that
    count is exact: None for another dataset. The manifest records the hash of the labelled ids it was
    trained on and the split (test size, seed), so while those rows are still the dataset's first labelled
    rows (later ingests only appended) the training split is recomputed; otherwise which rows were fitted
    cannot be told, and every row may have been (``n_train`` of them were)."""
    if manifest.get("dataset") != dataset:
        return None
    params = manifest.get("params", {})
    n = int(manifest.get("n_train", 0)) + int(manifest.get("n_valid", 0))
    if 0 < n <= len(ids) and ids_hash(ids[:n]) == manifest.get("row_ids_sha256") and "test_size" in params:
        from sklearn.model_selection import train_test_split

        tr, _ = train_test_split(np.arange(n), random_state=params.get("seed", 42), test_size=params["test_size"])
        return len(tr), True
    return int(manifest.get("n_train", 0)), False


def _fitted_warning(manifest: dict[str, Any], dataset: str, ids: np.ndarray) -> str | None:
    fitted = fitted_rows(manifest, dataset, ids)
    if fitted is None or not fitted[0]:
        return None
    n_fit, exact = fitted
    name, metric = manifest.get("name"), manifest.get("metrics", {}).get("f1")
    held = f" (its {manifest.get('n_valid', 0):,} validation rows scored F1 {metric:.4f} at training)" if metric else ""
    fix = f"fix: score another labelled dataset, or see the validation scores of 'fs train'{held}"
    if exact:
        return (
            f"{n_fit:,} of the {len(ids):,} rows scored were used to fit classifier {name!r} (the training split of "
            f"dataset {dataset!r}): these scores are optimistic; {fix}"
        )
    return (
        f"classifier {name!r} was fitted on {n_fit:,} rows of dataset {dataset!r}, which has changed since, so which "
        f"of the {len(ids):,} rows scored were fitted cannot be told: these scores are optimistic; {fix}"
    )


def evaluate(
    y: np.ndarray,
    pred: np.ndarray,
    manifest: dict[str, Any],
    dataset: str,
    positive: str | None = None,
    ids: np.ndarray | None = None,
) -> dict[str, Any]:
    """Scores of saved-classifier predictions against a dataset's labels, with the classifier's classes;
    ``ids`` (the rows scored) lets it warn when they include rows the classifier was fitted on."""
    classes = [str(c) for c in manifest["classes"]]
    if len(y) == 0:
        raise LabelError(f"dataset {dataset!r} has no labelled rows to score against; ingest it with its labels")
    positive = positive if positive is not None else manifest.get("positive")
    if positive is not None and positive not in classes:
        raise UsageError(
            f"{{param}} {positive!r} is not a class of the classifier; classes: {', '.join(classes)}", "positive"
        )
    unknown = sorted(set(y.tolist()) - set(classes))
    if len(unknown) == len(set(y.tolist())):
        shown = ", ".join(map(repr, unknown[:5])) + (", ..." if len(unknown) > 5 else "")
        raise LabelError(
            f"dataset {dataset!r} is labelled {shown}, none of them a class of classifier {manifest['name']!r} "
            f"({', '.join(map(repr, classes))}); fix: score a dataset labelled like the training data, or train "
            f"a classifier on {dataset!r}"
        )
    m = _metrics(y, pred, classes, positive)
    m.update(
        {
            "n": int(len(y)),
            "classes": classes,
            "positive": positive,
            "dataset": dataset,
            "classifier": manifest["name"],
            "warnings": [],
        }
    )
    fitted = _fitted_warning(manifest, dataset, ids) if ids is not None else None
    if fitted:
        m["warnings"].append(fitted)
    if unknown:
        m["warnings"].append(
            f"labels {', '.join(map(repr, unknown[:5]))} of dataset {dataset!r} are not classes "
            "of the classifier: those rows always count as errors"
        )
    return m
