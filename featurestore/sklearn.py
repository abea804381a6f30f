"""scikit-learn native: ``StoreEmbedder``, a transformer from raw texts to the store's vectors.

    >>> from sklearn.pipeline import make_pipeline
    >>> from sklearn.linear_model import LogisticRegression
    >>> from featurestore.sklearn import StoreEmbedder
    >>> clf = make_pipeline(StoreEmbedder("store", model="minilm"), LogisticRegression(C=10))
    >>> clf.fit(texts, labels).predict(["my phone died again"])

Texts are cleaned by the space's recipe and looked up by key (the same keys ``fs ingest``
writes), so a tweet embedded once is never embedded again; texts the store lacks are embedded
by the model and written back into the space (one atomic commit a call) unless ``write=False``.
The estimator contract: nothing happens in ``__init__``; ``fit`` finds the space (and checks
the input); ``transform`` maps; ``get_feature_names_out`` names the dimensions.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from featurestore.embedders import DEFAULT_MODEL, canonical_model, default_recipe, load_embedder
from featurestore.errors import SpaceError
from featurestore.inputs.clean import get_recipe
from featurestore.spaces import DEFAULT_MAX_CHARS, KeyedTexts, SpaceWriter, key_texts, make_space, require_same_space
from featurestore.storage.store import Store, lookup


class StoreEmbedder(TransformerMixin, BaseEstimator):
    """Map raw texts to vectors of the ``model`` space of ``store`` (a path or a ``FeatureStore``).

    Parameters: ``recipe`` (default: the model's), ``dtype`` (the stored precision; default float32
    for a new space, else the one stored), ``write`` (store the vectors of new texts), ``embedder``
    (an ``Embedder`` instance to use instead of loading ``model``), ``max_chars`` (cleaned texts are cut
    to this before keying and embedding, as ``fs ingest`` does).
    """

    def __init__(
        self,
        store: Any = None,
        model: str = DEFAULT_MODEL,
        recipe: str | None = None,
        dtype: str | None = None,
        write: bool = True,
        embedder: Any = None,
        max_chars: int = DEFAULT_MAX_CHARS,
    ) -> None:
        self.store = store
        self.model = model
        self.recipe = recipe
        self.dtype = dtype
        self.write = write
        self.embedder = embedder
        self.max_chars = max_chars

    # ---- helpers

    def _store(self) -> Store:
        path = getattr(self.store, "path", self.store)
        return Store(os.fspath(path) if path is not None else None)

    @staticmethod
    def _texts(X: Any) -> list[str]:
        """A 1-D sequence of texts (a list, a 1-D array, a Series, or one column of a frame)."""
        if isinstance(X, str):
            raise ValueError("StoreEmbedder takes an iterable of texts, not one string; wrap it in a list")
        if hasattr(X, "shape") and len(X.shape) == 2:
            if X.shape[1] != 1:
                raise ValueError(f"StoreEmbedder takes one column of texts; got an array of shape {X.shape}")
            X = X.iloc[:, 0] if hasattr(X, "iloc") else np.asarray(X)[:, 0]
        texts = list(X)
        bad = next((t for t in texts if not isinstance(t, str)), None)
        if bad is not None:
            raise ValueError(f"StoreEmbedder takes texts (str); got {type(bad).__name__} {bad!r:.40}")
        return texts

    def _space(self, store: Store) -> Any:
        """The stored space, or None when the model has not written one yet."""
        from featurestore.spaces import choose_space

        if not store.manifest_generations():
            return None
        try:
            return choose_space(store, store.snapshot(), self.model, self.recipe, self.dtype)[0]
        except SpaceError:
            return None

    def _keys(self, texts: list[str]) -> KeyedTexts:
        return key_texts(get_recipe(self.recipe_), texts, self.max_chars)

    # ---- the estimator

    def fit(self, X: Any, y: Any = None) -> StoreEmbedder:
        """Find the space (embedding nothing yet); the texts are only checked."""
        self._texts(X)
        store = self._store()
        space = self._space(store)
        model = canonical_model(self.model)
        if space is None:  # a space this model has not written yet: its size comes from the model
            embedder = self.embedder or load_embedder(self.model, store=store.path)
            self.dim_ = int(embedder.dim)
            self.space_id_ = None
        else:
            self.dim_ = int(space.dim)
            self.space_id_ = space.id
        self.model_ = model
        self.recipe_ = self.recipe or default_recipe(model)
        return self

    def transform(self, X: Any) -> np.ndarray:
        """float32 vectors, one row per text, in order: stored ones read, the others embedded (and written)."""
        check_is_fitted(self, "dim_")
        texts = self._texts(X)
        out = np.zeros((len(texts), self.dim_), np.float32)
        if not texts:
            return out
        store = self._store()
        space = self._space(store)
        keyed = self._keys(texts)
        pos = (
            lookup(store.space_keys(space)).get_indexer(keyed.key_array())
            if space is not None
            else np.full(len(texts), -1)
        )
        found = pos >= 0
        if found.any():
            out[found] = store.read_vectors(space, pos[found])
        if not found.all():
            out[~found] = self._embed_missing(store, space, keyed.take(np.flatnonzero(~found)))
        return out

    def _embed_missing(self, store: Store, space: Any, keyed: KeyedTexts) -> np.ndarray:
        """Vectors of texts the space lacked: embedded, and (``write``) added to it as cache entries."""
        embedder = self.embedder or load_embedder(self.model, store=store.path)
        recipe = get_recipe(self.recipe_)
        target = make_space(
            embedder, self.model_, recipe, space.dtype if space is not None else self.dtype or "float32"
        )
        if space is not None:
            require_same_space(embedder, space, recipe)
        if self.write:
            with store.writer(wait=True) as w:
                return SpaceWriter(w, target, embedder, recipe).add(keyed)
        todo = dict(zip(keyed.keys, keyed.cleaned))  # each text once
        vectors = np.asarray(embedder.embed(list(todo.values())), np.float32)
        vectors = vectors.astype(target.dtype).astype(np.float32)  # what a read of the store would return
        at = {k: i for i, k in enumerate(todo)}
        return vectors[[at[k] for k in keyed.keys]]

    def get_feature_names_out(self, input_features: Sequence[str] | None = None) -> np.ndarray:
        check_is_fitted(self, "dim_")
        prefix = "".join(c if c.isalnum() else "_" for c in self.model_)
        return np.array([f"{prefix}_{i}" for i in range(self.dim_)], dtype=object)

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False  # like CountVectorizer: a 1-D sequence of texts
        tags.input_tags.string = True
        tags.requires_fit = True
        tags.non_deterministic = False
        return tags
