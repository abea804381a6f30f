"""Nearest-neighbour queries: resolve the query to a vector, search the space's index, name the hits.

A query is a stored row (``id``), a text whose key is already stored (its vector is read,
the model is not loaded), or a new text (embedded). ``SearchCache`` keeps, per process,
the checked index and the key lookups of one snapshot, so repeated queries in a notebook
or a server skip that work while nothing on disk changed.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from featurestore import index as faiss_index
from featurestore.clean import get_recipe
from featurestore.embedders import load_embedder
from featurestore.errors import DatasetError, ModelError, UsageError
from featurestore.ingest import DEFAULT_MAX_CHARS, make_space
from featurestore.keys import text_key
from featurestore.manifest import Dataset, Snapshot, Space
from featurestore.progress import ProgressFn
from featurestore.store import Store, lookup


@dataclass
class Hit:
    rank: int
    score: float
    ids: list[tuple[str, str]]  # (dataset, id) of every row with this text
    text: str


@dataclass(frozen=True)
class View:
    """Key lookups of one space over some datasets, in one snapshot."""

    space_keys: np.ndarray
    row_of: pd.Index  # key -> storage row (get_indexer)
    owners: dict[bytes, list[tuple[str, str]]]  # key -> (dataset, id) of the rows with that key
    allowed: np.ndarray | None  # storage rows a restricted query may return


@dataclass
class SearchCache:
    """The checked index and the views of the latest snapshot, reused while files are unchanged."""

    views: dict[tuple[Any, ...], View] = field(default_factory=dict)
    indexes: dict[str, tuple[tuple[Any, ...], faiss_index.OpenedIndex]] = field(default_factory=dict)

    def view(self, store: Store, snap: Snapshot, space: Space, datasets: list[Dataset], restrict: bool) -> View:
        key = (snap.generation, space.id, tuple(d.name for d in datasets), restrict)
        if key not in self.views:
            space_keys = store.space_keys(space)
            row_of = lookup(space_keys)
            owners: dict[bytes, list[tuple[str, str]]] = {}
            for d in datasets:
                kid, kkeys = store.dataset_keys(d, space.recipe)
                for i, kk in zip(kid.tolist(), kkeys.tolist()):
                    owners.setdefault(kk, []).append((d.name, i))
            allowed = None
            if restrict:
                rows = row_of.get_indexer(np.array(list(owners), dtype=space_keys.dtype)) if owners else np.zeros(0, int)
                allowed = np.unique(rows[rows >= 0]).astype(np.int64)
            self.views = {k: v for k, v in self.views.items() if k[0] == snap.generation}
            self.views[key] = View(space_keys, row_of, owners, allowed)
        return self.views[key]

    def index(self, store: Store, space: Space, progress: ProgressFn | None) -> tuple[faiss_index.OpenedIndex, str]:
        """The space's index: from memory while its files on disk are untouched, else opened and checked."""
        signature = (space.segments, faiss_index.files_signature(store, space))
        cached = self.indexes.get(space.id)
        if cached is not None and cached[0] == signature:
            return cached[1], "in memory"
        opened = faiss_index.open_index(store, space, progress)
        self.indexes[space.id] = ((space.segments, faiss_index.files_signature(store, space)), opened)
        return opened, opened.status


def _query_vector(store: Store, space: Space, view: View, datasets: list[Dataset], text: str | None,
                  id: str | None, where: str) -> tuple[np.ndarray, str]:
    if id is not None:
        owners = []
        for d in datasets:
            kid, kkeys = store.dataset_keys(d, space.recipe)
            owners += [(d, kkeys[j]) for j in np.flatnonzero(kid == id)]
        if not owners:
            raise DatasetError(f"id {id!r} is not in {where} with vectors for model {space.model!r}; check the id or [[dataset]]")
        if len(owners) > 1:
            raise DatasetError(f"id {id!r} is in datasets {', '.join(d.name for d, _ in owners)}; fix: pick one with [[dataset]]")
        row = view.row_of.get_indexer([owners[0][1]])
        return store.read_vectors(space, row), "stored vector"
    recipe = get_recipe(space.recipe)
    cleaned = recipe.clean([text])[0][:DEFAULT_MAX_CHARS]
    if not cleaned.strip():  # a zero vector scores 0 against everything: no meaningful neighbours
        raise UsageError(f"query {text[:80]!r} is empty after cleaning with {recipe.name}; give words to search for", "text")
    row = view.row_of.get_indexer(np.array([text_key(recipe.name, cleaned)], dtype=view.space_keys.dtype))
    if row[0] >= 0:
        return store.read_vectors(space, row), "stored vector (model not loaded)"
    embedder = load_embedder(space.model)
    if make_space(embedder, space.model, recipe, space.dtype).id != space.id:
        raise ModelError(
            f"model {space.model!r} has changed since space {space.id} was built; its vectors cannot be "
            "compared; re-ingest into a new store"
        )
    return embedder.embed([cleaned]), "embedded"


def similar(
    store: Store,
    cache: SearchCache,
    snap: Snapshot,
    space: Space,
    *,
    text: str | None = None,
    id: str | None = None,
    k: int = 10,
    dataset: str | None = None,
    progress: ProgressFn | None = None,
) -> tuple[list[Hit], dict[str, Any]]:
    """Top-``k`` stored tweets by cosine similarity to a text or a stored row, exact, through FAISS."""
    if (text is None) == (id is None):
        raise UsageError("give either a query text or an {param}, not both (and not neither)", "id")
    if k < 1:
        raise UsageError(f"{{param}} must be at least 1, got {k}", "k")
    datasets = [store.dataset(dataset, snap)] if dataset else list(snap.datasets.values())
    where = f"dataset {dataset!r}" if dataset else "any dataset"
    view = cache.view(store, snap, space, datasets, bool(dataset))
    info: dict[str, Any] = {"space": space.id, "model": space.model, "recipe": space.recipe, "dtype": space.dtype}
    query, info["query"] = _query_vector(store, space, view, datasets, text, id, where)
    t = time.perf_counter()
    opened, info["index"] = cache.index(store, space, progress)
    info["index_seconds"] = time.perf_counter() - t
    t = time.perf_counter()
    scores, rows = faiss_index.search(opened, query, k, view.allowed)
    info["search_seconds"] = time.perf_counter() - t
    found = [(float(s), int(r)) for s, r in zip(scores[0], rows[0]) if r >= 0]
    owners = [view.owners.get(view.space_keys[r], []) for _, r in found]
    wanted: dict[str, list[str]] = {}
    for o in owners:
        if o:
            wanted.setdefault(o[0][0], []).append(o[0][1])
    texts = {(d, i): t_ for d, idl in wanted.items() for i, t_ in store.texts_for(snap.datasets[d], idl).items()}
    hits = [Hit(rank, s, o, texts.get(o[0], "") if o else "") for rank, ((s, _), o) in enumerate(zip(found, owners), 1)]
    return hits, info
