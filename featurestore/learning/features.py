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
it is given: the caller gives it the training split only.
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
# Default limits in seconds: the search stops starting new candidates after this.
TIME_LIMITS = {"none": 0.0, "quick": 90.0, "full": 900.0}
# Fitted fold features kept for the next candidates of the same feature setting, at most this many bytes
# unless the caller gives its own budget (train.py: a quarter of the memory available).
FOLD_CACHE_BYTES = 1 << 30


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
    return feats, [ClassifierParams(C, cw) for C in Cs for cw in cws]


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
    return f"C={cp.C:g}" + (" balanced" if cp.class_weight == "balanced" else "")


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

    @property
    def skipped(self) -> int:
        return len(self.untried)


def _score(y: np.ndarray, pred: np.ndarray, classes: list[str], positive: str | None) -> float:
    from sklearn.metrics import f1_score

    if positive is not None:
        return float(f1_score(y, pred, pos_label=positive, average="binary", zero_division=0))
    return float(f1_score(y, pred, labels=classes, average="macro", zero_division=0))


def _relevant(fp: FeatureParams, parts: Sequence[Part]) -> FeatureParams:
    """Settings of absent parts collapse to the defaults, so they are not tried twice."""
    kinds = {p.kind for p in parts}
    d = FeatureParams()
    return FeatureParams(
        fp.word_ngram if "tfidf-word" in kinds else d.word_ngram,
        fp.char_ngram if "tfidf-char" in kinds else d.char_ngram,
        fp.space_weight if "space" in kinds and len(parts) > 1 else d.space_weight,
    )


def _nbytes(m: Any) -> int:
    if hasattr(m, "nbytes"):
        return int(m.nbytes)
    return sum(int(getattr(m, a).nbytes) for a in ("data", "indices", "indptr") if hasattr(m, a))


@dataclass
class _Budget:
    bytes_left: int  # what fitted fold features may still hold


class _FoldFeatures:
    """One feature setting's fitted features on each CV fold: fitted once and kept for the setting's next
    candidates while the kept matrices fit the shared byte budget, refitted for each candidate otherwise."""

    def __init__(
        self, features: Any, X: pd.DataFrame, splits: list[tuple[np.ndarray, np.ndarray]], budget: _Budget
    ) -> None:
        self.features, self.X, self.splits, self.budget = features, X, splits, budget
        self.kept: dict[int, tuple[Any, Any]] = {}

    def fold(self, i: int) -> tuple[Any, Any]:
        if i in self.kept:
            return self.kept[i]
        from sklearn.base import clone

        tr, va = self.splits[i]
        ft = clone(self.features)
        out = ft.fit_transform(self.X.iloc[tr]), ft.transform(self.X.iloc[va])
        size = _nbytes(out[0]) + _nbytes(out[1])
        if size <= self.budget.bytes_left:
            self.budget.bytes_left -= size
            self.kept[i] = out
        return out

    def release(self) -> None:
        self.budget.bytes_left += sum(_nbytes(a) + _nbytes(b) for a, b in self.kept.values())
        self.kept.clear()


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
    memory_budget: int = FOLD_CACHE_BYTES,
) -> Selection:
    """Score every candidate by stratified K-fold CV on (X, y) and return the best (highest mean).

    Features are fitted once per fold and feature setting, then shared by that setting's classifier settings
    (kept in memory up to ``memory_budget`` bytes). No candidate is started after ``time_limit`` seconds (default:
    ``TIME_LIMITS`` of the search); the first always finishes, and the rest are listed in ``untried``.
    ``progress(advanced, total)`` counts candidates: a fold of one is ``1 / folds``."""
    from sklearn.model_selection import StratifiedKFold

    t0 = time.perf_counter()
    limit = TIME_LIMITS.get(search, 0.0) if time_limit is None else time_limit
    counts = pd.Series(y).value_counts()
    smallest = int(counts.min())
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
            f"{{param}} {folds} needs {folds} training rows of every class, and class {str(counts.idxmin())!r} has "
            f"{smallest}; fix: give {{param}} between 2 and {smallest}, or add labelled rows",
            "folds",
        )
    k = folds
    splits = list(StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(np.zeros(len(y)), y))
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
    last = {g: i for i, (g, _) in enumerate(order)}  # where each setting's fold features can be let go
    budget = _Budget(max(0, memory_budget))
    fitted: dict[int, _FoldFeatures] = {}
    done: list[Scored] = []
    untried: list[Scored] = []
    if progress:
        progress(0, len(order))  # the total, before the first features are fitted
    for i, (g, c) in enumerate(order):
        parts, fp, cls = groups[g]
        cand = Scored(parts, fp, cls[c])
        if done and limit and time.perf_counter() - t0 > limit:
            untried.append(cand)
            continue
        if g not in fitted:
            fitted[g] = _FoldFeatures(make_features(inputs_of[parts], fp), X, splits, budget)
        for f, (tr, va) in enumerate(splits):
            Xtr, Xva = fitted[g].fold(f)
            clf = make_classifier(cand.classifier, seed).fit(Xtr, y[tr])
            cand.scores.append(_score(y[va], clf.predict(Xva), classes, positive))
            if progress:
                progress(1 / k, len(order))
        done.append(cand)
        if last[g] == i:
            fitted.pop(g).release()
    done.sort(key=lambda c: -c.mean)
    return Selection(
        done[0],
        done,
        k,
        "f1" if positive is not None else "macro-f1",
        time.perf_counter() - t0,
        untried,
        limit,
    )


def feature_names(pipeline: Any) -> list[str]:
    return list(pipeline.named_steps["features"].get_feature_names_out())
