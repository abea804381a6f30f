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


_HEX = np.full(256, 255, np.uint8)
_HEX[np.frombuffer(b"0123456789abcdef", np.uint8)] = np.arange(16, dtype=np.uint8)
_HEX[np.frombuffer(b"ABCDEF", np.uint8)] = np.arange(10, 16, dtype=np.uint8)


class KeySet:
    """A set of text keys held as sorted 128-bit integers: 16 B a key, where a Python ``set`` of the
    keys' ``bytes`` costs about 100 B (1 GB at 10M keys, the space of a 10M-row ingest).

    Keys are the hex digests of ``storage.keys`` (``KEY_DTYPE``); each becomes two ``uint64`` (``hi``,
    ``lo``). Added keys go in a new sorted part; parts merge while the newer one is at least half
    the size of the one before, so there are O(log n) parts and a key is merged O(log n) times, each
    merge a stable sort of two sorted runs (linear). ``contains`` binary-searches ``hi`` in each part."""

    def __init__(self, keys: np.ndarray | None = None) -> None:
        self._parts: list[tuple[np.ndarray, np.ndarray]] = []  # (hi sorted, lo in the same order)
        if keys is not None and len(keys):
            self.add(keys)

    def __len__(self) -> int:
        return sum(len(hi) for hi, _ in self._parts)

    def copy(self) -> KeySet:
        out = KeySet()
        out._parts = list(self._parts)  # the arrays are never changed in place
        return out

    @staticmethod
    def _words(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raw = np.ascontiguousarray(np.asarray(keys, dtype=KEY_DTYPE)).view(np.uint8).reshape(len(keys), -1)
        nibbles = _HEX[raw]
        if (nibbles == 255).any():
            raise ValueError("text keys are 32 hex digits")
        packed = (nibbles[:, 0::2] << 4) | nibbles[:, 1::2]
        words = np.ascontiguousarray(packed).view(">u8").astype(np.uint64)
        return words[:, 0].copy(), words[:, 1].copy()

    def contains(self, keys: np.ndarray) -> np.ndarray:
        """Whether each of ``keys`` (``KEY_DTYPE``) is in the set."""
        found = np.zeros(len(keys), bool)
        if not len(keys) or not self._parts:
            return found
        qhi, qlo = self._words(keys)
        order = np.argsort(qhi)  # sorted needles: each binary search starts where the last one ended (3x faster)
        qhi, qlo = qhi[order], qlo[order]
        hit = np.zeros(len(keys), bool)
        for hi, lo in self._parts:
            left = np.searchsorted(hi, qhi, "left")
            span = np.searchsorted(hi, qhi, "right") - left
            at = np.minimum(left, len(hi) - 1)
            hit |= (span > 0) & (lo[at] == qlo)
            for i in np.flatnonzero((span > 1) & ~hit):  # another key with the same first 64 bits: ~never
                hit[i] = bool((lo[left[i] : left[i] + span[i]] == qlo[i]).any())
        found[order] = hit
        return found

    def add(self, keys: np.ndarray) -> None:
        """Add ``keys`` (``KEY_DTYPE``); the caller adds a key once (``contains`` first)."""
        if not len(keys):
            return
        hi, lo = self._words(keys)
        order = np.argsort(hi, kind="stable")
        self._parts.append((hi[order], lo[order]))
        while len(self._parts) > 1 and 2 * len(self._parts[-1][0]) >= len(self._parts[-2][0]):
            (h1, l1), (h2, l2) = self._parts[-2], self._parts.pop()
            hi, lo = np.concatenate([h1, h2]), np.concatenate([l1, l2])
            order = np.argsort(hi, kind="stable")  # two sorted runs: timsort merges them in linear time
            self._parts[-1] = (hi[order], lo[order])


class SpaceWriter:
    """Adds vectors to one space through a store ``Writer``: the space's write rule in one place.

    ``lacking`` picks, once each across calls, the keys the space does not hold; ``check`` runs the
    drift check before the first embedding into a stored space (a new space needs none); ``batch``
    names the vectors for a commit, giving a new space its canaries; ``committed`` follows the
    space after a commit. ``add`` does all of it for callers with no rows of their own to publish.
    """

    def __init__(self, w: Writer, space: Space, embedder: Embedder, recipe: Recipe, have: KeySet | None = None) -> None:
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
            self._have = KeySet(self.w.store.space_keys(self.space)) if self.stored else KeySet()
        keys = keyed.key_array()
        first = np.zeros(len(keys), bool)
        first[np.unique(keys, return_index=True)[1]] = True  # a key repeated in ``keyed``: its first place
        pick = np.flatnonzero(first & ~self._have.contains(keys))
        self._have.add(keys[pick])
        return {keyed.keys[i]: keyed.cleaned[i] for i in pick.tolist()}

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

    def compact(self, max_segments: int, *, merge_full: bool = True) -> bool:
        """Compact the store (``Writer.compact``) and follow the space's merged segments; True if it merged."""
        merged = self.w.compact(max_segments, merge_full=merge_full)
        if merged and self.stored:
            self._published()
        return merged

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
    entries, the vectors no dataset row owns (``StoreEmbedder`` write-backs: kept, never search hits). Exact
    counts need each key column read once (the space's held, sorted by 8-byte prefix, 56 B a row; each dataset
    key segment looked up in it, one at a time): they are recorded beside the index with the segments they were counted
    from (``lookups.save_summary``), so that a later call over the same segments reads no rows."""
    from featurestore.storage.lookups import SegmentKeys, key_prefixes, rows_of_keys, save_summary, saved_summary

    sources = {
        "space": [[s.file, s.rows] for s in space.segments],
        "datasets": {d.name: [[s.file, s.rows] for s in d.keys.get(space.recipe, ())] for d in snap.datasets.values()},
    }
    saved = saved_summary(store, f"usage-{space.id}", sources) or {}
    try:  # a summary that does not read as one is counted again
        return {str(k): int(v) for k, v in saved["coverage"].items()}, int(saved["cache_entries"])
    except (KeyError, TypeError, ValueError, AttributeError):
        pass
    columns = []
    for seg in space.segments:
        with store.open_segment(seg.file) as f:
            columns.append(f["keys"][()])
    parts = [SegmentKeys(np.concatenate(columns) if columns else np.zeros(0, KEY_DTYPE), sort=True)]  # one sort
    del columns
    owned = np.zeros(space.rows, dtype=bool)
    cover = {}
    for d in snap.datasets.values():
        cover[d.name] = 0
        for seg in d.keys.get(space.recipe, ()):
            with store.open_segment(seg.file) as f:
                keys = f["keys"][()]
            # in prefix order (only counts are wanted): a binary search of sorted needles stays in cache
            rows = rows_of_keys(parts, keys[np.argsort(key_prefixes(keys), kind="stable")])
            cover[d.name] += int((rows >= 0).sum())
            owned[rows[rows >= 0]] = True
    cached = int((~owned).sum())
    save_summary(store, f"usage-{space.id}", sources, {"coverage": cover, "cache_entries": cached})
    return cover, cached
