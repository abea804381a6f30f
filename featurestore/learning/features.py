"""Feature sets: stored vector spaces and text features, combined in one scikit-learn pipeline.

A feature spec names what a classifier sees, joined by ``+``; alternatives for the search to
choose among are separated by ``,``::

    minilm                          the stored MiniLM space (recipe from --clean or the model's default)
    minilm+tfidf-char               MiniLM vectors beside character n-gram TF-IDF
    minilm+elmo:PATH#top            two stored spaces, concatenated
    tfidf-word@raw-v1               word n-gram TF-IDF of the raw text (default recipe basic-v1)
    minilm+tfidf-char,minilm+tfidf-word   two alternatives; cross-validation picks one

Text features are computed from the stored raw text cleaned by a recipe of ``featurestore.inputs.clean``
(deterministic), and fitted on the rows they are trained on only. The input of the pipeline is
a DataFrame: one float column per dimension of each space, one text column per recipe; a
``ColumnTransformer`` passes the vectors through and turns the texts into sparse TF-IDF columns.
Only scikit-learn classes are in the fitted pipeline, so skops loads it without trusting
anything else. Model selection (``select``) is stratified K-fold cross-validation on the rows
it is given: the caller gives it the training split only. Its fits run in worker processes; a candidate
"with class offsets" adds per-class offsets to the log-probabilities (``fit_offsets``), fitted on out-of-fold
predictions and saved in the classifier's manifest, since the pipeline holds scikit-learn classes only.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from featurestore.embedders import canonical_model, default_recipe
from featurestore.errors import UsageError
from featurestore.inputs.clean import RECIPES, get_recipe
from featurestore.progress import ProgressFn
from featurestore.spaces import choose_space, require_rows
from featurestore.storage.manifest import Dataset, Snapshot, Space
from featurestore.storage.store import Store, lookup

TEXT_KINDS = ("tfidf-word", "tfidf-char")
TEXT_RECIPE = "basic-v1"  # URLs, punctuation, case and digits removed; no lemmas (spaCy is slow)
SEARCHES = ("none", "quick", "full")
# Default limits in seconds: the search stops starting new fits after this. Full: so that `fs train --search full`
# ends within 10 minutes (the fits in flight and the refit finish after it); its whole grid takes longer.
TIME_LIMITS = {"none": 0.0, "quick": 90.0, "full": 540.0}


@dataclass(frozen=True)
class Part:
    """One named block of features: a stored space (``kind == "space"``) or a text feature."""

    kind: str
    model: str = ""  # canonical model of a space
    recipe: str = ""  # the space's cleaning recipe, or the recipe the text feature reads

    @property
    def label(self) -> str:
        return f"{self.model if self.kind == 'space' else self.kind}@{self.recipe}"

    @property
    def text_column(self) -> str:
        return f"text@{self.recipe}"


def _split_recipe(token: str) -> tuple[str, str | None]:
    head, sep, tail = token.rpartition("@")
    if sep and tail in RECIPES:
        return head, tail
    return token, None


def parse_spec(spec: str, clean: str | None = None) -> list[tuple[Part, ...]]:
    """The alternatives of a feature spec, each a tuple of parts in the order given."""
    alternatives: list[tuple[Part, ...]] = []
    for alt in spec.split(","):
        parts: list[Part] = []
        for token in (t.strip() for t in alt.split("+")):
            if not token:
                raise UsageError(
                    f"empty part in {{param}} {spec!r}; join parts with '+', e.g. minilm+tfidf-char", "features"
                )
            name, recipe = _split_recipe(token)
            if name in TEXT_KINDS:
                parts.append(Part(name, "", recipe or TEXT_RECIPE))
            elif name.startswith("tfidf"):
                raise UsageError(
                    f"unknown text feature {name!r} in {{param}}; use one of: {', '.join(TEXT_KINDS)}", "features"
                )
            else:
                model = canonical_model(name)
                parts.append(Part("space", model, recipe or clean or default_recipe(model)))
        if len(set(parts)) != len(parts):
            raise UsageError(f"{{param}} {alt!r} names the same part twice", "features")
        alternatives.append(tuple(parts))
    return alternatives


def spec_of(parts: Sequence[Part]) -> str:
    return "+".join(p.label for p in parts)


# ---- reading the inputs of a pipeline from the store


@dataclass(frozen=True)
class Inputs:
    """Where the columns of a pipeline's input come from: the spaces of the space parts
    (resolved once, by explicit lookup) and the text recipes."""

    parts: tuple[Part, ...]
    spaces: tuple[Space | None, ...]  # None for text parts

    @property
    def recipes(self) -> list[str]:
        return sorted({p.recipe for p in self.parts if p.kind != "space"})

    def columns(self, k: int) -> list[str]:
        space = self.spaces[k]
        assert space is not None
        return [f"{space.id}_{j}" for j in range(space.dim)]  # by space id: alternatives share columns

    @property
    def dense_dim(self) -> int:
        return sum(s.dim for s in self.spaces if s is not None)

    def describe(self) -> list[dict[str, Any]]:
        return [
            {
                "kind": p.kind,
                "model": p.model,
                "recipe": p.recipe,
                **({"space": s.id, "dim": s.dim, "dtype": s.dtype} if s is not None else {}),
            }
            for p, s in zip(self.parts, self.spaces)
        ]


def resolve(
    store: Store, snap: Snapshot, ds: Dataset, parts: Sequence[Part], dtype: str | None = None
) -> tuple[Inputs, list[str]]:
    """The stored space of every space part (``choose_space``), and the notes of choices made."""
    spaces: list[Space | None] = []
    notes: list[str] = []
    for p in parts:
        if p.kind == "space":
            space, note = choose_space(store, snap, p.model, p.recipe, dtype, ds)
            spaces.append(space)
            if note:
                notes.append(note)
        else:
            get_recipe(p.recipe)
            spaces.append(None)
    return Inputs(tuple(parts), tuple(spaces)), notes


def inputs_from_manifest(snap: Snapshot, described: list[dict[str, Any]]) -> Inputs:
    """The inputs a saved pipeline was trained on; every space must still be in the store."""
    from featurestore.errors import ClassifierError

    parts: list[Part] = []
    spaces: list[Space | None] = []
    for d in described:
        parts.append(Part(d["kind"], d.get("model", ""), d["recipe"]))
        if d["kind"] == "space":
            space = snap.spaces.get(d["space"])
            if space is None:
                raise ClassifierError(
                    f"the classifier reads space {d['space']} ({d['model']}, {d['recipe']}), which "
                    "is not in the store; retrain it with 'fs train'"
                )
            spaces.append(space)
        else:
            spaces.append(None)
    return Inputs(tuple(parts), tuple(spaces))


def frame(store: Store, ds: Dataset, inputs: Inputs, ids: np.ndarray, texts: np.ndarray | None = None) -> pd.DataFrame:
    """The pipeline input for the rows ``ids`` of ``ds``: every vector must be stored (else refused).

    ``texts`` are the raw texts of ``ids`` when the caller has them already."""
    blocks: dict[str, Any] = {}
    for k, space in enumerate(inputs.spaces):
        if space is not None:
            rows = require_rows(store, ds, space, ids)
            X = store.read_vectors(space, rows).astype(np.float32, copy=False)
            blocks.update(zip(inputs.columns(k), X.T))
    if inputs.recipes:
        if texts is None:
            all_ids = store.dataset_ids(ds)
            texts = store.dataset_texts(ds)[lookup(all_ids).get_indexer(ids)]
        for r in inputs.recipes:
            blocks[f"text@{r}"] = np.array(get_recipe(r).clean(texts.tolist()), dtype=object)
    return pd.DataFrame(blocks, index=pd.RangeIndex(len(ids)))


# ---- the pipeline and its hyper-parameters


@dataclass(frozen=True)
class FeatureParams:
    """What changes the features (fitted once per fold and shared by every classifier setting)."""

    word_ngram: tuple[int, int] = (1, 2)
    char_ngram: tuple[int, int] = (2, 5)
    space_weight: float = 1.0


@dataclass(frozen=True)
class ClassifierParams:
    C: float = 1.0
    class_weight: str | None = None
    # Per-class offsets added to the log-probabilities before the argmax (two classes: a threshold), fitted to
    # the metric on out-of-fold predictions of the training split (``fit_offsets``); no change to the fit.
    offsets: bool = False


def make_features(inputs: Inputs, fp: FeatureParams) -> Any:
    from sklearn.compose import ColumnTransformer
    from sklearn.feature_extraction.text import TfidfVectorizer

    steps: list[tuple[str, Any, str | list[str]]] = []  # (name, transformer, its column or columns)
    weights: dict[str, float] = {}
    for k, p in enumerate(inputs.parts):
        name = f"p{k}_{p.kind.replace('-', '_')}"
        if p.kind == "space":
            steps.append((name, "passthrough", inputs.columns(k)))
            weights[name] = fp.space_weight
        elif p.kind == "tfidf-word":
            steps.append(
                (
                    name,
                    TfidfVectorizer(ngram_range=fp.word_ngram, sublinear_tf=True, min_df=1, dtype=np.float32),
                    p.text_column,
                )
            )
        else:
            steps.append(
                (
                    name,
                    TfidfVectorizer(
                        analyzer="char_wb", ngram_range=fp.char_ngram, sublinear_tf=True, min_df=2, dtype=np.float32
                    ),
                    p.text_column,
                )
            )
    # Vectors and TF-IDF rows are both about unit length; the weight scales the vectors against the n-grams.
    return ColumnTransformer(steps, transformer_weights=weights or None, sparse_threshold=0.3)


def make_classifier(cp: ClassifierParams, seed: int) -> Any:
    from sklearn.linear_model import LogisticRegression

    # lbfgs: measured 3x faster than liblinear on MiniLM + char n-grams (6k tweets), and multinomial for 3+.
    return LogisticRegression(C=cp.C, class_weight=cp.class_weight, solver="lbfgs", max_iter=3000, random_state=seed)


def make_pipeline(inputs: Inputs, fp: FeatureParams, cp: ClassifierParams, seed: int) -> Any:
    from sklearn.pipeline import Pipeline

    return Pipeline([("features", make_features(inputs, fp)), ("classifier", make_classifier(cp, seed))])


def grid(search: str, parts: Sequence[Part]) -> tuple[list[FeatureParams], list[ClassifierParams]]:
    """The candidates of a search, most promising first (a time limit cuts the tail)."""
    kinds = {p.kind for p in parts}
    has_space = "space" in kinds
    if search == "none":
        return [FeatureParams()], [ClassifierParams()]
    if search == "quick":
        feats = [FeatureParams()]
        Cs = [1.0, 3.0, 10.0, 0.3] if kinds & set(TEXT_KINDS) else [1.0, 3.0, 10.0, 30.0]
        cws: list[str | None] = [None, "balanced"]
    elif search == "full":
        words = [(1, 2), (1, 1), (1, 3)] if "tfidf-word" in kinds else [(1, 2)]
        chars = [(2, 5), (1, 4), (2, 6), (3, 5)] if "tfidf-char" in kinds else [(2, 5)]
        weights = [1.0, 2.0, 0.5] if has_space and len(parts) > 1 else [1.0]
        feats = [FeatureParams(w, c, s) for s, w, c in itertools.product(weights, words, chars)]
        Cs = [1.0, 3.0, 10.0, 0.3, 30.0, 0.1]
        cws = [None, "balanced"]
    else:
        raise UsageError(f"unknown {{param}} {search!r}; use one of: {', '.join(SEARCHES)}", "search")
    # Each classifier setting, then the same with offsets (scored from its out-of-fold predictions: no fit).
    return feats, [ClassifierParams(C, cw, off) for C in Cs for cw in cws for off in (False, True)]


# ---- honest selection: K-fold cross-validation inside the rows given


def _grams(what: str, ngram: tuple[int, int]) -> str:
    lo, hi = ngram
    return f"{what} {lo}-grams" if lo == hi else f"{what} {lo}-{hi}-grams"


def describe_features(parts: Sequence[Part], fp: FeatureParams) -> str:
    """A feature setting in words, e.g. ``minilm vectors + char 2-5-grams``."""
    names = []
    for p in parts:
        if p.kind == "space":
            name = f"{p.model} vectors" + (f" ({p.recipe})" if p.recipe != default_recipe(p.model) else "")
            if len(parts) > 1 and fp.space_weight != 1.0:
                name += f" x{fp.space_weight:g}"
        else:
            word = p.kind == "tfidf-word"
            name = _grams("word", fp.word_ngram) if word else _grams("char", fp.char_ngram)
            if p.recipe != TEXT_RECIPE:
                name += f" of {p.recipe} text"
        names.append(name)
    return " + ".join(names)


def describe_classifier(cp: ClassifierParams) -> str:
    """``C=3 balanced with class offsets``: balanced class weights; offsets on the log-probabilities tuned by CV."""
    return (
        f"C={cp.C:g}"
        + (" balanced" if cp.class_weight == "balanced" else "")
        + (" with class offsets" if cp.offsets else "")
    )


def describe(parts: Sequence[Part], fp: FeatureParams, cp: ClassifierParams) -> str:
    """A candidate in words, e.g. ``minilm vectors + char 2-5-grams, C=10 balanced`` (balanced: class weights
    inversely proportional to the class sizes)."""
    return f"{describe_features(parts, fp)}, {describe_classifier(cp)}"


def describe_many(candidates: Sequence[Scored]) -> str:
    """Candidates in words, grouped by feature setting: ``minilm vectors: C=1 balanced, C=3; tfidf ...: C=1``."""
    grouped: dict[str, list[str]] = {}
    for c in candidates:
        grouped.setdefault(describe_features(c.parts, c.features), []).append(describe_classifier(c.classifier))
    return "; ".join(f"{feats}: {', '.join(cls)}" for feats, cls in grouped.items())


@dataclass
class Scored:
    parts: tuple[Part, ...]
    features: FeatureParams
    classifier: ClassifierParams
    scores: list[float] = field(default_factory=list)

    @property
    def mean(self) -> float:
        return float(np.mean(self.scores)) if self.scores else float("nan")

    @property
    def sd(self) -> float:
        return float(np.std(self.scores, ddof=1)) if len(self.scores) > 1 else 0.0

    @property
    def words(self) -> str:
        return describe(self.parts, self.features, self.classifier)

    def as_dict(self) -> dict[str, Any]:
        return {
            "features": spec_of(self.parts),
            "words": self.words,
            "word_ngram": list(self.features.word_ngram),
            "char_ngram": list(self.features.char_ngram),
            "space_weight": self.features.space_weight,
            "C": self.classifier.C,
            "class_weight": self.classifier.class_weight,
            "offsets": self.classifier.offsets,
            "cv_mean": self.mean,
            "cv_sd": self.sd,
            "cv_scores": self.scores,
        }


@dataclass
class Selection:
    best: Scored
    tried: list[Scored]  # candidates scored on every fold, best first
    folds: int
    metric: str
    seconds: float
    untried: list[Scored] = field(default_factory=list)  # candidates the time limit left unscored, in search order
    time_limit: float = 0.0  # seconds after which no candidate was started (0: none)
    # The best candidate's offsets (one a class, in the order of the classes; None: it has none), fitted on the
    # out-of-fold scores of every training row.
    offsets: list[float] | None = None
    jobs: int = 1  # processes the fits ran in

    @property
    def skipped(self) -> int:
        return len(self.untried)


def _relevant(fp: FeatureParams, parts: Sequence[Part]) -> FeatureParams:
    """Settings of absent parts collapse to the defaults, so they are not tried twice."""
    kinds = {p.kind for p in parts}
    d = FeatureParams()
    return FeatureParams(
        fp.word_ngram if "tfidf-word" in kinds else d.word_ngram,
        fp.char_ngram if "tfidf-char" in kinds else d.char_ngram,
        fp.space_weight if "space" in kinds and len(parts) > 1 else d.space_weight,
    )


# ---- prior / threshold adjustment: per-class offsets on the log-probabilities


def class_scores(clf: Any, X: Any, classes: Sequence[str]) -> np.ndarray:
    """Rows x classes (in ``classes`` order) scores whose per-row differences are those of the log-probabilities:
    the decision function of a multinomial model (log-probabilities less a per-row constant), and ``[0, d]`` for a
    binary one (``d`` = log-odds of the second class). ``argmax`` is the model's own prediction."""
    d = np.asarray(clf.decision_function(X), dtype=np.float64)
    fitted = [str(c) for c in clf.classes_]
    if d.ndim == 1:
        d = np.column_stack([np.zeros_like(d), d])
    out = np.full((d.shape[0], len(classes)), -np.inf)  # a class the model never saw is never predicted
    for j, c in enumerate(fitted):
        out[:, list(classes).index(c)] = d[:, j]
    return out


def _f1s(tp: np.ndarray, predicted: np.ndarray, true: np.ndarray) -> np.ndarray:
    """F1 of each class from counts (0 where a class is neither true nor predicted, as zero_division=0)."""
    den = predicted + true
    return np.divide(2.0 * tp, den, out=np.zeros(np.broadcast(tp, den).shape), where=den > 0)


def _metric_codes(y: np.ndarray, pred: np.ndarray, k: int, positive: int | None) -> float:
    """The selection metric of predictions ``pred`` of class codes ``y`` (``k`` classes): the F1 of class
    ``positive``, or macro-F1 over all ``k`` (scikit-learn's ``f1_score`` with ``zero_division=0``, from counts)."""
    tp = np.bincount(y[pred == y], minlength=k)
    f = _f1s(tp, np.bincount(pred, minlength=k), np.bincount(y, minlength=k))
    return float(f[positive] if positive is not None else f.mean())


def fit_offsets(S: np.ndarray, y: np.ndarray, positive: int | None = None, rounds: int = 10) -> np.ndarray:
    """Per-class offsets ``b`` (``b[0] = 0``) maximising the metric of ``argmax(S + b)`` against codes ``y``: macro-F1,
    or with ``positive`` (a class code) that class's F1 (two classes: a threshold on the log-odds). Coordinate
    ascent, each class's offset set exactly: as it grows, rows move to that class one at a time in the order of
    the offset at which each does, so one sort and cumulative counts give the metric at every cut. Ties keep
    the offset nearest its current value (0 first: no change unless it scores better)."""
    n, k = S.shape
    b = np.zeros(k)
    true = np.bincount(y, minlength=k).astype(np.float64)
    best = _metric_codes(y, np.argmax(S + b, axis=1), k, positive)
    rows = np.arange(n)
    for _ in range(rounds):
        moved = False
        for c in range(1, k):
            T = S + b
            T[:, c] = -np.inf
            other = np.argmax(T, axis=1)
            t = T[rows, other] - S[:, c]  # row i goes to c once b[c] > t[i]
            order = np.argsort(t, kind="stable")
            ts, os_, ys = t[order], other[order], y[order]
            step_p = np.zeros((n + 1, k))
            step_t = np.zeros((n + 1, k))
            np.add.at(step_p, (rows + 1, os_), -1.0)
            step_p[1:, c] += 1.0
            np.add.at(step_t, (rows + 1, os_), -(ys == os_).astype(np.float64))
            step_t[1:, c] += (ys == c).astype(np.float64)
            pred0 = np.bincount(other, minlength=k).astype(np.float64)
            tp0 = np.bincount(y[other == y], minlength=k).astype(np.float64)
            f = _f1s(tp0 + np.cumsum(step_t, axis=0), pred0 + np.cumsum(step_p, axis=0), true)
            score = f[:, positive] if positive is not None else f.mean(axis=1)
            # Cut j (j rows moved) is reachable only between distinct thresholds; its offset is their midpoint.
            finite = np.isfinite(ts)
            ok = np.ones(n + 1, bool)
            ok[1:n] = ts[1:] > ts[:-1]
            ok[1:] &= finite
            lo = np.concatenate([[-np.inf], ts])
            hi = np.concatenate([ts, [np.inf]])
            value = np.where(
                np.isfinite(lo) & np.isfinite(hi),
                (lo + hi) / 2,
                np.where(np.isfinite(hi), hi - 1.0, lo + 1.0),
            )
            value[~np.isfinite(value)] = 0.0
            score = np.where(ok, score, -1.0)
            top = score.max()
            if top <= best + 1e-12:
                continue
            ties = np.flatnonzero(score >= top - 1e-12)
            b[c] = float(value[ties[np.argmin(np.abs(value[ties] - b[c]))]])
            best, moved = _metric_codes(y, np.argmax(S + b, axis=1), k, positive), True
        if not moved:
            break
    return b


def apply_offsets(S: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Predicted class indices and class probabilities after the offsets: ``softmax(S + b)`` (for a multinomial
    or binary model, the probabilities with the class priors shifted by ``exp(b)``)."""
    T = S + np.asarray(offsets, dtype=np.float64)
    T = T - T.max(axis=1, keepdims=True)
    p = np.exp(T)
    p /= p.sum(axis=1, keepdims=True)
    return np.argmax(S + offsets, axis=1), p


def honest_offset_scores(
    S: np.ndarray, y: np.ndarray, splits: list[tuple[np.ndarray, np.ndarray]], positive: int | None
) -> list[float]:
    """The CV score of a candidate with offsets, from out-of-fold scores ``S`` of every row: for fold f, offsets
    fitted on the other folds' rows only, applied to fold f's."""
    k = S.shape[1]
    out = []
    for tr, va in splits:
        b = fit_offsets(S[tr], y[tr], positive)
        out.append(_metric_codes(y[va], np.argmax(S[va] + b, axis=1), k, positive))
    return out


# ---- the features of each CV fold


class _Counts:
    """The n-gram counts of one text feature over every row given to ``select``, made once: TF-IDF's analyzer is
    the slow part of it, and a fold's ``TfidfVectorizer`` is a cut of these counts (its vocabulary: the n-grams in
    at least ``min_df`` of the fold's training rows, in the same sorted order) reweighted by the fold's idf."""

    def __init__(self, vectorizer: Any, texts: Any) -> None:
        from sklearn.feature_extraction.text import CountVectorizer

        params = vectorizer.get_params()
        self.min_df = params["min_df"]
        self.sublinear = params["sublinear_tf"]
        keep = ("analyzer", "ngram_range", "lowercase", "token_pattern", "dtype", "strip_accents")
        cv = CountVectorizer(**{k: params[k] for k in keep}, min_df=1)
        self.counts = cv.fit_transform(texts).tocsr()

    def fold(self, tr: np.ndarray, va: np.ndarray) -> tuple[Any, Any]:
        from sklearn.feature_extraction.text import TfidfTransformer

        ctr = self.counts[tr]
        df = np.bincount(ctr.indices, minlength=ctr.shape[1])
        cols = np.flatnonzero(df >= max(1, self.min_df))
        ctr, cva = ctr[:, cols], self.counts[va][:, cols]
        ctr.sort_indices()
        cva.sort_indices()
        tf = TfidfTransformer(sublinear_tf=self.sublinear).fit(ctr)
        return tf.transform(ctr, copy=False), tf.transform(cva, copy=False)


def _fold_blocks(
    inputs: Inputs, fp: FeatureParams, X: pd.DataFrame, tr: np.ndarray, va: np.ndarray, counts: dict[Any, _Counts]
) -> tuple[Any, Any]:
    """What ``make_features(inputs, fp)`` fitted on rows ``tr`` of ``X`` gives for ``tr`` and ``va``, built as its
    ``ColumnTransformer`` builds it (blocks in part order, vectors times their weight, stacked sparse when the
    training rows' density is under its threshold), with the n-gram counts cut from ``counts`` (filled here)."""
    from scipy import sparse

    ct = make_features(inputs, fp)
    weights = ct.transformer_weights or {}
    blocks_tr: list[Any] = []
    blocks_va: list[Any] = []
    for name, tfm, cols in ct.transformers:
        if tfm == "passthrough":
            dense = X[cols].to_numpy()
            w = weights.get(name)
            a, b = dense[tr], dense[va]
            blocks_tr.append(a * w if w is not None else a)
            blocks_va.append(b * w if w is not None else b)
        else:
            key = (cols, repr(sorted(tfm.get_params().items())))
            if key not in counts:
                counts[key] = _Counts(tfm, X[cols].to_numpy())
            a, b = counts[key].fold(tr, va)
            blocks_tr.append(a)
            blocks_va.append(b)
    if any(sparse.issparse(m) for m in blocks_tr):
        nnz = sum(m.nnz if sparse.issparse(m) else m.size for m in blocks_tr)
        total = sum(m.shape[0] * m.shape[1] for m in blocks_tr)
        if nnz / total < ct.sparse_threshold:
            return sparse.hstack(blocks_tr).tocsr(), sparse.hstack(blocks_va).tocsr()
        dense_of = [m.toarray() if sparse.issparse(m) else m for m in blocks_tr]
        dense_va = [m.toarray() if sparse.issparse(m) else m for m in blocks_va]
        return np.hstack(dense_of), np.hstack(dense_va)
    return np.hstack(blocks_tr), np.hstack(blocks_va)


def _fold_scores(Xtr: Any, ytr: np.ndarray, Xva: Any, cp: ClassifierParams, seed: int, classes: list[str]) -> Any:
    """One fit of a CV fold (run in a worker process): the class scores of the fold's validation rows."""
    clf = make_classifier(cp, seed).fit(Xtr, ytr)
    return class_scores(clf, Xva, classes)


def jobs_for(tasks: int) -> int:
    """Processes for ``tasks`` fits: the usable cores (never more than the fits)."""
    from featurestore.machine import usable_cores

    return max(1, min(usable_cores(), tasks))


def select(
    inputs_of: dict[tuple[Part, ...], Inputs],
    X: pd.DataFrame,
    y: np.ndarray,
    classes: list[str],
    positive: str | None,
    search: str,
    *,
    folds: int = 5,
    seed: int = 42,
    time_limit: float | None = None,
    progress: ProgressFn | None = None,
    n_jobs: int | None = None,
) -> Selection:
    """Score every candidate by stratified K-fold CV on (X, y) and return the best (highest mean).

    Each fit (a feature setting, C and class weight, on one fold) runs in one of ``n_jobs`` worker processes
    (default: the usable cores; 1: in this process), each with one BLAS/OpenMP thread; the scores do not depend
    on ``n_jobs``. The n-gram counts of a text feature are made once and cut to each fold's vocabulary
    (``_Counts``); a feature setting's fold matrices are made when its first fit is dispatched and let go after
    its last. A candidate with offsets costs no fit: it is scored from the out-of-fold scores of its twin without
    (``honest_offset_scores``). No candidate is started after ``time_limit`` seconds (default: ``TIME_LIMITS`` of
    the search); the first always finishes (with its twin), and the rest are listed in ``untried``.
    ``progress(advanced, total)`` counts candidates: a fold of one is ``1 / folds``, a twin with offsets 1."""
    from joblib import Parallel, delayed, parallel_config
    from sklearn.model_selection import StratifiedKFold

    t0 = time.perf_counter()
    limit = TIME_LIMITS.get(search, 0.0) if time_limit is None else time_limit
    counts_of = pd.Series(y).value_counts()
    smallest = int(counts_of.min())
    if folds < 2:
        raise UsageError(
            f"{{param}} must be at least 2, got {folds}; fix: give {{param}} 2 or more (up to the training rows of "
            f"the smallest class, {smallest})",
            "folds",
        )
    if smallest < 2:
        raise UsageError(
            f"a class has {smallest} training row(s): cross-validation needs at least 2 a class; "
            "add labelled rows or use {param} none",
            "search",
        )
    if folds > smallest:  # was silently lowered to the smallest class's rows
        raise UsageError(
            f"{{param}} {folds} needs {folds} training rows of every class, and class {str(counts_of.idxmin())!r} has "
            f"{smallest}; fix: give {{param}} between 2 and {smallest}, or add labelled rows",
            "folds",
        )
    k = folds
    splits = list(StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(np.zeros(len(y)), y))
    codes = np.searchsorted(np.array(classes, dtype=object), np.asarray(y, dtype=object)).astype(np.int64)
    pos_code = None if positive is None else classes.index(positive)
    per_spec: list[list[tuple[tuple[Part, ...], FeatureParams, list[ClassifierParams]]]] = []
    for parts in inputs_of:
        feats, cls = grid(search, parts)
        settings = list(dict.fromkeys(_relevant(fp, parts) for fp in feats))
        per_spec.append([(parts, fp, cls) for fp in settings])
    # Feature settings of the alternatives interleaved, and each alternative's first candidate before any
    # other's second, so that a time limit still compares the alternatives.
    # (The first round of the interleaving is each alternative's first setting: groups 0 .. alternatives - 1.)
    groups = [g for rnd in itertools.zip_longest(*per_spec) for g in rnd if g is not None]
    order = [(g, 0) for g in range(len(per_spec))]
    order += [(g, c) for g in range(len(groups)) for c in range(len(groups[g][2])) if c or g >= len(per_spec)]
    # A candidate with offsets is fitted as its twin without: the fits are the distinct (feature setting,
    # C, class weight), in the order of their first candidate.
    cands = [Scored(groups[g][0], groups[g][1], groups[g][2][c]) for g, c in order]
    fit_of = [(g, _plain(cands[i].classifier)) for i, (g, _) in enumerate(order)]
    fits = list(dict.fromkeys(fit_of))
    last = {g: fit for fit in fits for g in [fit[0]]}  # each setting's last fit: then its fold matrices can go
    scores_of: dict[tuple[int, ClassifierParams], np.ndarray] = {}  # fit -> out-of-fold class scores of every row
    folds_left = dict.fromkeys(fits, k)
    started: set[tuple[int, ClassifierParams]] = set()
    total = len(order)
    if progress:
        progress(0, total)  # the total, before the first features are fitted
    counts: dict[Any, _Counts] = {}
    made: dict[int, list[tuple[Any, Any]]] = {}

    def tasks() -> Any:
        for fit in fits:
            if started and limit and time.perf_counter() - t0 > limit:
                return
            started.add(fit)
            g, cp = fit
            parts, fp, _ = groups[g]
            made.setdefault(g, [])
            for f, (tr, va) in enumerate(splits):
                if f == len(made[g]):  # made as the first fit needs it: the workers start on fold 0 meanwhile
                    made[g].append(_fold_blocks(inputs_of[parts], fp, X, tr, va, counts))
                Xtr, Xva = made[g][f]
                yield delayed(_tag)((fit, f), _fold_scores, Xtr, y[tr], Xva, cp, seed, classes)
            if last[g] == fit:
                made.pop(g)

    jobs = n_jobs if n_jobs is not None else jobs_for(len(fits) * k)
    with parallel_config(backend="loky", inner_max_num_threads=1):
        runner = Parallel(n_jobs=jobs, return_as="generator_unordered", pre_dispatch="2*n_jobs")
        for (fit, f), S in runner(tasks()):
            if fit not in scores_of:
                scores_of[fit] = np.zeros((len(y), len(classes)))
            scores_of[fit][splits[f][1]] = S
            folds_left[fit] -= 1
            if progress:
                progress(sum(fit_of[i] == fit and not c.classifier.offsets for i, c in enumerate(cands)) / k, total)
            if folds_left[fit] == 0:
                for i in (i for i in range(len(order)) if fit_of[i] == fit):
                    cands[i].scores = _cv_scores(scores_of[fit], codes, splits, pos_code, cands[i].classifier.offsets)
                    if progress and cands[i].classifier.offsets:
                        progress(1, total)
    done = [c for i, c in enumerate(cands) if fit_of[i] in started]
    untried = [c for i, c in enumerate(cands) if fit_of[i] not in started]
    best_i = max(range(len(done)), key=lambda j: (done[j].mean, -j))  # the first of equals, in search order
    best = done[best_i]
    offsets = None
    if best.classifier.offsets:
        fit = fit_of[next(i for i, c in enumerate(cands) if c is best)]
        offsets = fit_offsets(scores_of[fit], codes, pos_code).tolist()
    ranked = sorted(done, key=lambda c: -c.mean)  # stable: equals keep the search order
    return Selection(
        best,
        ranked,
        k,
        "f1" if positive is not None else "macro-f1",
        time.perf_counter() - t0,
        untried,
        limit,
        offsets,
        jobs,
    )


def fit_pipeline(pipe: Any, X: pd.DataFrame, y: np.ndarray, n_jobs: int | None = None) -> Any:
    """``pipe.fit(X, y)``, in a worker process with one BLAS/OpenMP thread when more than one core is usable (the
    search's workers, still running): measured 7x faster than this process's own BLAS threads on a loaded
    2-core machine (MiniLM vectors, 7,680 rows, 0.73 s against 5.2 s)."""
    from joblib import Parallel, delayed, parallel_config

    if (n_jobs if n_jobs is not None else jobs_for(2)) <= 1:
        return pipe.fit(X, y)
    with parallel_config(backend="loky", inner_max_num_threads=1):
        (fitted,) = Parallel(n_jobs=2)([delayed(pipe.fit)(X, y)])
    return fitted


def _plain(cp: ClassifierParams) -> ClassifierParams:
    return ClassifierParams(cp.C, cp.class_weight)


def _tag(tag: Any, fn: Any, *args: Any) -> tuple[Any, Any]:
    return tag, fn(*args)


def _cv_scores(
    S: np.ndarray, codes: np.ndarray, splits: list[tuple[np.ndarray, np.ndarray]], positive: int | None, offsets: bool
) -> list[float]:
    """A candidate's score on each fold from the out-of-fold class scores ``S`` of its fit: the argmax (the
    model's own prediction), or with ``offsets`` the argmax after offsets fitted on the other folds only
    (``honest_offset_scores``)."""
    if offsets:
        return honest_offset_scores(S, codes, splits, positive)
    return [_metric_codes(codes[va], np.argmax(S[va], axis=1), S.shape[1], positive) for _, va in splits]


def feature_names(pipeline: Any) -> list[str]:
    return list(pipeline.named_steps["features"].get_feature_names_out())
