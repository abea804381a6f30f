"""A vector space: how it is named, how texts become its keys, how vectors enter it, how readers choose it.

The rule every writer of vectors follows lives here, once: **clean -> cut -> key -> embed only the
keys the space lacks -> drift check (a stored space) or canaries (a new one) -> commit**.
``key_texts`` does the first three steps; ``SpaceWriter`` the rest, through the store's one
``Writer``. ``fs ingest`` (local and Ray), ``StoreEmbedder`` and search's text path all go
through these functions, so they agree on keys, canaries and space ids.

A space is named by (model, cleaning recipe, dtype). Readers (xy, train, similar) find it by
that explicit lookup on one snapshot, without loading the model. Where more than one space
fits, the one that covers the dataset asked for is used (and the caller says which);
otherwise the choice is refused with the list, never answered from part of the data.

A vector that no dataset row owns (a ``StoreEmbedder`` write-back of texts no ingest named)
is a *cache entry*: it saves a later embedding, but it is never a search hit (``usage`` counts them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from featurestore.embedders import canonical_model, default_recipe
from featurestore.embedders.base import BatchProgressFn, Embedder
from featurestore.errors import DatasetError, DriftError, ModelError, SpaceError, UsageError
from featurestore.inputs.clean import Recipe
from featurestore.storage.keys import KEY_DTYPE, space_fields, space_id, text_keys
from featurestore.storage.manifest import Dataset, Snapshot, Space
from featurestore.storage.store import KeyBatch, LabelBatch, RowBatch, Store, VectorBatch, Writer, lookup

DTYPES = ("float32", "float16")
DEFAULT_MAX_CHARS = 2000  # cleaned text beyond this is cut before keying and embedding (a tweet is <= 280)
N_CANARIES = 3
CANARY_MAX_CHARS = 280  # canaries are re-embedded at every later write into the space: short texts only
# float16 storage rounds to ~1e-3 relative; float32 embedders are deterministic to ~1e-5.
DRIFT_ATOL = {"float32": 1e-4, "float16": 2e-3}


# ----------------------------------------------------------------------------- texts -> keys


@dataclass(frozen=True)
class KeyedTexts:
    """Texts cleaned by a recipe, cut to ``max_chars`` and keyed: ``keys[i]`` is the key of ``cleaned[i]``."""

    cleaned: list[str]
    keys: list[bytes]
    truncated: np.ndarray  # bool: the cleaned text was longer than max_chars
    empty: np.ndarray  # bool: nothing but whitespace after cleaning (its vector is all zeros)

    def __len__(self) -> int:
        return len(self.keys)

    def key_array(self) -> np.ndarray:
        return np.array(self.keys, dtype=KEY_DTYPE)

    def take(self, positions: Sequence[int] | np.ndarray) -> KeyedTexts:
        """The texts at ``positions``, in that order."""
        at = np.asarray(positions, dtype=np.int64)
        return KeyedTexts([self.cleaned[i] for i in at], [self.keys[i] for i in at], self.truncated[at], self.empty[at])


def cut_length(max_chars: int | None = None) -> int:
    """The one source of the cut length: ``max_chars`` when given (checked), else ``DEFAULT_MAX_CHARS``."""
    if max_chars is None:
        return DEFAULT_MAX_CHARS
    if max_chars < 1:
        raise UsageError(f"{{param}} must be at least 1, got {max_chars}", "max_chars")
    return max_chars


def key_texts(recipe: Recipe, texts: Sequence[str], max_chars: int | None = None) -> KeyedTexts:
    """Clean ``texts`` with ``recipe``, cut each to the cut length, and key them (recipe name + cleaned text)."""
    limit = cut_length(max_chars)
    cleaned = recipe.clean(list(texts))
    truncated = np.fromiter((len(c) > limit for c in cleaned), bool, len(cleaned))
    if truncated.any():
        cleaned = [c[:limit] for c in cleaned]
    empty = np.fromiter((not c.strip() for c in cleaned), bool, len(cleaned))
    return KeyedTexts(cleaned, text_keys(recipe.name, cleaned), truncated, empty)


# ----------------------------------------------------------------------------- naming a space


def make_space(embedder: Embedder, model: str, recipe: Recipe, dtype: str = "float32") -> Space:
    """The space an embedder + recipe + dtype write into (not yet stored)."""
    if dtype not in DTYPES:
        raise UsageError(f"unknown {{param}} {dtype!r}; use one of: {', '.join(DTYPES)}", "dtype")
    fields = space_fields(embedder.fingerprint, recipe.fingerprint(), dtype)
    return Space(space_id(fields), fields, model, recipe.name, embedder.dim, dtype)


def require_same_space(embedder: Embedder, space: Space, recipe: Recipe, where: str = "") -> None:
    """Refuse an embedder whose vectors would not belong to ``space`` (another model version, weights, recipe)."""
    probe = make_space(embedder, space.model, recipe, space.dtype)
    if probe.id != space.id:
        raise ModelError(
            f"model {space.model!r}{where} now writes space {probe.id}, not the stored {space.id}: its vectors cannot "
            "be compared with the stored ones; fix: restore the original model and library versions, or ingest "
            "into a new store"
        )


def pick_canaries(texts: dict[bytes, str]) -> tuple[str, ...]:
    """Canary texts for a space that has none, from ``texts`` (key -> cleaned text) being published into it:
    the non-empty ones short enough to re-embed cheaply, smallest keys first, so that every engine picks the
    same ones from the same texts whatever their order. ``check_drift`` re-embeds them at later writes."""
    out: list[str] = []
    for _, c in sorted(texts.items()):
        if c.strip() and len(c) <= CANARY_MAX_CHARS:
            out.append(c)
            if len(out) == N_CANARIES:
                break
    return tuple(out)


def check_drift(store: Store, space: Space, embedder: Embedder, recipe: Recipe) -> None:
    """Re-embed the space's canary texts; refuse to mix spaces if the model's output moved."""
    canaries = [c for c in space.canaries if len(c) <= CANARY_MAX_CHARS]  # older stores kept any length
    if not canaries:
        return
    keys = np.array(text_keys(recipe.name, canaries), dtype=KEY_DTYPE)
    pos = lookup(store.space_keys(space)).get_indexer(keys)
    if (pos < 0).any():
        return  # canaries of a space written by an older version; nothing to compare
    stored = store.read_vectors(space, pos)
    fresh = embedder.embed(canaries)
    diff = float(np.max(np.abs(fresh.astype(space.dtype).astype(np.float32) - stored)))
    if diff > DRIFT_ATOL[space.dtype]:
        raise DriftError(
            f"model {space.model!r} no longer reproduces the vectors of space {space.id} (max abs diff {diff:.2e} "
            f"on its canary texts, tolerance {DRIFT_ATOL[space.dtype]:.0e}); the weights or library changed under "
            "the same name; fix: restore the original model/library versions, or ingest into a new store"
        )


# ----------------------------------------------------------------------------- writing a space


class SpaceWriter:
    """Adds vectors to one space through a store ``Writer``: the space's write rule in one place.

    ``lacking`` picks, once each across calls, the keys the space does not hold; ``check`` runs the
    drift check before the first embedding into a stored space (a new space needs none); ``batch``
    names the vectors for a commit, giving a new space its canaries; ``committed`` follows the
    space after a commit. ``add`` does all of it for callers with no rows of their own to publish.
    """

    def __init__(
        self, w: Writer, space: Space, embedder: Embedder, recipe: Recipe, have: set[bytes] | None = None
    ) -> None:
        stored = w.snap.spaces.get(space.id)
        if stored is not None and stored.dim != space.dim:
            raise ModelError(
                f"model {space.model!r} now gives {space.dim}-d vectors, space {space.id} holds {stored.dim}-d"
            )
        self.w = w
        self.embedder = embedder
        self.recipe = recipe
        self.space = stored or space
        self.stored = stored is not None
        self._have = have  # keys the space holds, read on first use
        self.checked = False  # the drift check has run (or a new space needed none)

    def lacking(self, keyed: KeyedTexts) -> dict[bytes, str]:
        """The keys of ``keyed`` the space lacks (and no earlier call claimed), once each, with their texts."""
        if self._have is None:
            self._have = set(self.w.store.space_keys(self.space).tolist()) if self.stored else set()
        todo: dict[bytes, str] = {}
        for k, c in zip(keyed.keys, keyed.cleaned):
            if k not in self._have and k not in todo:
                todo[k] = c
        self._have.update(todo)
        return todo

    def check(self) -> None:
        """Before the first embedding: a stored space's canaries must come out as stored (``check_drift``)."""
        if not self.checked:
            if self.stored:
                check_drift(self.w.store, self.space, self.embedder, self.recipe)
            self.checked = True

    def embed(self, todo: dict[bytes, str], progress: BatchProgressFn | None = None) -> np.ndarray:
        """float32 vectors of ``todo``'s texts, in its order (the drift check first, once)."""
        if not todo:
            return np.zeros((0, self.space.dim), np.float32)
        self.check()
        return np.asarray(self.embedder.embed(list(todo.values()), progress=progress), np.float32)

    def _target(self, texts: dict[bytes, str]) -> Space:
        """The space as published with ``texts``: one without canaries takes them from these texts."""
        return self.space if self.space.canaries else replace(self.space, canaries=pick_canaries(texts))

    def batch(self, todo: dict[bytes, str], vectors: np.ndarray) -> VectorBatch:
        """``todo``'s vectors for ``Writer.commit``."""
        return VectorBatch(self._target(todo), np.array(list(todo), dtype=KEY_DTYPE), vectors)

    def commit(
        self,
        todo: dict[bytes, str],
        vectors: np.ndarray,
        dataset: str | None = None,
        *,
        rows: RowBatch | None = None,
        keys: KeyBatch | None = None,
        labels: LabelBatch | None = None,
    ) -> None:
        """Publish ``todo``'s vectors (and the dataset rows, keys and labels that need them) in one generation."""
        self.w.commit(dataset, vectors=self.batch(todo, vectors), rows=rows, keys=keys, labels=labels)
        self._published()

    def adopt(self, files: Sequence[str], texts: dict[bytes, str]) -> None:
        """Publish vector segments written elsewhere (Ray workers) holding ``texts`` (canary candidates)."""
        self.w.adopt(space=self._target(texts), vectors=list(files))
        self._published()

    def _published(self) -> None:
        self.space = self.w.snap.spaces[self.space.id]
        self.stored = True

    def add(self, keyed: KeyedTexts) -> np.ndarray:
        """Vectors of every text of ``keyed`` (float32, as a later read returns them): the ones the space
        lacks embedded and committed as cache entries (vectors no dataset row owns), the others read."""
        todo = self.lacking(keyed)
        vectors = self.embed(todo).astype(self.space.dtype).astype(np.float32)
        if todo or not self.stored:
            self.commit(todo, vectors)
        out = np.empty((len(keyed), self.space.dim), np.float32)
        fresh = {k: i for i, k in enumerate(todo)}
        where = np.array([fresh.get(k, -1) for k in keyed.keys], dtype=np.int64)
        out[where >= 0] = vectors[where[where >= 0]]
        held = where < 0
        if held.any():  # held before this call
            pos = lookup(self.w.store.space_keys(self.space)).get_indexer(keyed.key_array()[held])
            out[held] = self.w.store.read_vectors(self.space, pos)
        return out


# ----------------------------------------------------------------------------- reading a space


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
    model: str | None,
    clean: str | None = None,
    dtype: str | None = None,
    dataset: Dataset | None = None,
) -> tuple[Space, str | None]:
    """The space of ``model`` + recipe (+ ``dtype``), and a note when a choice among several was made.

    ``model`` None: the store's only space when it has one (matching ``clean`` and ``dtype`` when given), said
    in the note unless it is the default model's; otherwise the default model's, as if it had been named."""
    from featurestore.embedders import DEFAULT_MODEL

    unnamed = model is None
    if model is None:
        only = list(snap.spaces.values())
        if len(only) == 1 and clean in (None, only[0].recipe) and dtype in (None, only[0].dtype):
            space = only[0]
            usual = space.model == DEFAULT_MODEL and space.recipe == (clean or default_recipe(DEFAULT_MODEL))
            return space, None if usual else f"no model given: used the store's only space, {space.describe()}"
        model = DEFAULT_MODEL
    model = canonical_model(model)
    recipe = clean or default_recipe(model)
    found = snap.find_spaces(model, recipe, dtype)
    if not found:
        have = "; ".join(s.describe() for s in snap.spaces.values()) or "none"
        want = f"model {model!r} with recipe {recipe}" + (f" and dtype {dtype}" if dtype else "")
        if unnamed and len(snap.spaces) > 1:
            raise SpaceError(
                f"no [[model]] given, and store {store.path} has {len(snap.spaces)} spaces, none of them the default "
                f"{want}; spaces stored: {have}; fix: pick one with [[model]] (and [[clean]] or [[dtype]] if needed)"
            )
        raise SpaceError(
            f"store {store.path} has no vectors for {want}; spaces stored: {have}; "
            f"fix: ingest with that model first, or pick model/recipe/dtype from that list"
        )
    if len(found) == 1:
        return found[0], None
    if dataset is not None:
        covering = [s for s in found if covers(store, s, dataset)]
        if len(covering) == 1:
            return covering[
                0
            ], f"{len(found)} spaces fit; used {covering[0].describe()}, the one covering {dataset.name!r}"
    listed = "; ".join(s.describe() for s in found)
    dtypes = sorted({s.dtype for s in found})
    message = f"{len(found)} stored spaces fit model {model!r} with recipe {recipe}: {listed}; "
    if len(dtypes) > 1 and dtype is None:
        raise UsageError(message + f"fix: choose one with {{param}} ({' or '.join(dtypes)})", "dtype")
    raise SpaceError(
        message + "the model changed under the same name; fix: ingest into a new store, or rename the model"
    )


def usage(store: Store, snap: Snapshot, space: Space) -> tuple[dict[str, int], int]:
    """Per dataset, its rows with a vector in ``space`` (keyed under the space's recipe); and the space's cache
    entries, the vectors no dataset row owns (``StoreEmbedder`` write-backs: kept, never search hits). Each key
    column is read once."""
    held = lookup(store.space_keys(space))
    cover, owned = {}, []
    for d in snap.datasets.values():
        keys = store.dataset_keys(d, space.recipe)[1]
        cover[d.name] = int((held.get_indexer(keys) >= 0).sum())
        owned.append(keys)
    return cover, int((~held.isin(np.concatenate(owned) if owned else np.zeros(0, KEY_DTYPE))).sum())
