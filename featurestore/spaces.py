"""Choosing a stored vector space, and finding the vectors of a dataset's rows in it.

A space is named by (model, cleaning recipe, dtype). Readers (xy, train, similar) find it
by that explicit lookup on one snapshot, without loading the model. Where more than one
space fits, the one that covers the dataset asked for is used (and the caller says which);
otherwise the choice is refused with the list, never answered from part of the data.
"""
from __future__ import annotations

import numpy as np

from featurestore.embedders import canonical_model, default_recipe
from featurestore.errors import DatasetError, SpaceError, UsageError
from featurestore.manifest import Dataset, Snapshot, Space
from featurestore.store import Store, lookup


def key_rows(store: Store, ds: Dataset, space: Space, ids: np.ndarray) -> np.ndarray:
    """Storage rows (in ``space``) of the given dataset ids; -1 where a row has no vector."""
    kid, kkeys = store.dataset_keys(ds, space.recipe)
    pos = lookup(kid).get_indexer(ids)
    rows = lookup(store.space_keys(space)).get_indexer(kkeys[np.maximum(pos, 0)]) if len(kid) else pos
    return np.where(pos >= 0, rows, -1).astype(np.int64)


def require_rows(store: Store, ds: Dataset, space: Space, ids: np.ndarray) -> np.ndarray:
    """Like ``key_rows``, but every id must have a vector: a partial answer is refused."""
    rows = key_rows(store, ds, space, ids)
    missing = int((rows < 0).sum())
    if missing:
        raise DatasetError(
            f"{missing} of {len(ids)} rows of dataset {ds.name!r} have no vector in space {space.describe()}; "
            f"fix: run 'fs ingest FILE --dataset {ds.name} --model {space.model} --clean {space.recipe} "
            f"--dtype {space.dtype}' with the dataset's file"
        )
    return rows


def covers(store: Store, space: Space, ds: Dataset) -> bool:
    ids = store.dataset_ids(ds)
    return bool(len(ids)) and bool((key_rows(store, ds, space, ids) >= 0).all())


def choose_space(
    store: Store,
    snap: Snapshot,
    model: str,
    clean: str | None = None,
    dtype: str | None = None,
    dataset: Dataset | None = None,
) -> tuple[Space, str | None]:
    """The space of ``model`` + recipe (+ ``dtype``), and a note when a choice among several was made."""
    model = canonical_model(model)
    recipe = clean or default_recipe(model)
    found = snap.find_spaces(model, recipe, dtype)
    if not found:
        have = "; ".join(s.describe() for s in snap.spaces.values()) or "none"
        want = f"model {model!r} with recipe {recipe}" + (f" and dtype {dtype}" if dtype else "")
        raise SpaceError(
            f"store {store.path} has no vectors for {want}; spaces stored: {have}; "
            f"fix: ingest with that model first, or pick model/recipe/dtype from that list"
        )
    if len(found) == 1:
        return found[0], None
    if dataset is not None:
        covering = [s for s in found if covers(store, s, dataset)]
        if len(covering) == 1:
            return covering[0], f"{len(found)} spaces fit; used {covering[0].describe()}, the one covering {dataset.name!r}"
    listed = "; ".join(s.describe() for s in found)
    dtypes = sorted({s.dtype for s in found})
    message = f"{len(found)} stored spaces fit model {model!r} with recipe {recipe}: {listed}; "
    if len(dtypes) > 1 and dtype is None:
        raise UsageError(message + f"fix: choose one with {{param}} ({' or '.join(dtypes)})", "dtype")
    raise SpaceError(message + "the model changed under the same name; fix: ingest into a new store, or rename the model")
