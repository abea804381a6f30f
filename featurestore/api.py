"""The Python API: what a notebook (and the ``fs`` command) uses.

    >>> from featurestore import FeatureStore
    >>> fs = FeatureStore("store")
    >>> fs.ingest("train.csv", dataset="train")
    >>> X, y, ids = fs.xy("train")
    >>> fs.similar("my phone died again", k=5)
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from featurestore import index as faiss_index
from featurestore.clean import get_recipe
from featurestore.embedders import DEFAULT_MODEL, canonical_model, default_recipe, load_embedder
from featurestore.errors import DatasetError, FeatureStoreError, ModelError
from featurestore.ingest import IngestSummary, ProgressFn, ingest, make_space
from featurestore.keys import text_key
from featurestore.sources import NO_LABEL, read_table
from featurestore.store import Dataset, Snapshot, Space, Store, segment_seq
from featurestore.train import (
    TrainResult,
    check_labels,
    fit_and_evaluate,
    ids_hash,
    load_classifier,
    save_classifier,
)


@dataclass
class Hit:
    rank: int
    score: float
    ids: list[tuple[str, int]]  # (dataset, id) of every row with this text
    text: str


class FeatureStore:
    """A store directory plus the operations on it."""

    def __init__(self, path: str | os.PathLike | None = None) -> None:
        self.store = Store(path)
        # Derived lookups of one committed snapshot, reused by repeated queries in a long-lived process.
        self._views: dict[tuple[Any, ...], Any] = {}

    @property
    def path(self) -> Path:
        return self.store.path

    # ---- spaces

    def space(self, model: str = DEFAULT_MODEL, clean: str | None = None, snap: Snapshot | None = None) -> Space:
        """The stored space of ``model`` + recipe, found by name without loading the model."""
        snap = snap or self.store.snapshot()
        model = canonical_model(model)
        recipe = clean or default_recipe(model)
        found = [s for s in snap.spaces.values() if s.model == model and s.recipe == recipe]
        if not found:
            have = ", ".join(f"{s.model} ({s.recipe})" for s in snap.spaces.values()) or "none"
            raise ModelError(
                f"store {self.path} has no vectors for model {model!r} with recipe {recipe}; spaces stored: {have}; "
                f"fix: run 'fs ingest FILE --model {model}' first, or pick --model/--clean from that list"
            )
        if len(found) > 1:
            # Same name, other weights or dtype: the most recently written space is the live one.
            found.sort(key=lambda s: max((segment_seq(seg.file) for seg in s.segments), default=0))
        return found[-1]

    def _key_rows(self, ds: Dataset, space: Space, ids: np.ndarray) -> np.ndarray:
        """Store rows (in ``space``) of the given dataset ids."""
        kid, kkeys = self.store.dataset_keys(ds, space.recipe)
        key_of = dict(zip(kid.tolist(), kkeys.tolist()))
        row_of = {k: i for i, k in enumerate(self.store.space_keys(space).tolist())}
        out = np.empty(len(ids), dtype=np.int64)
        missing = 0
        for j, i in enumerate(ids.tolist()):
            r = row_of.get(key_of.get(i, b""), -1)
            missing += r < 0
            out[j] = r
        if missing:
            raise DatasetError(
                f"{missing} of {len(ids)} rows of dataset {ds.name!r} have no vector for model {space.model!r} "
                f"({space.recipe}); fix: run 'fs ingest FILE --dataset {ds.name} --model {space.model} "
                f"--clean {space.recipe}' with the dataset's file"
            )
        return out

    # ---- writing

    def ingest(
        self,
        file: str,
        dataset: str,
        model: str = DEFAULT_MODEL,
        clean: str | None = None,
        *,
        text_col: str | None = None,
        id_col: str | None = None,
        label_col: str | None = None,
        fmt: str | None = None,
        encoding: str = "utf-8",
        dtype: str = "float32",
        commit_rows: int = 1024,
        wait: bool = False,
        progress: ProgressFn | None = None,
        embedder: Any = None,
    ) -> IngestSummary:
        """Read ``file`` into ``dataset``; embed only texts the model's space lacks."""
        from featurestore.store import check_dataset_name

        t0 = time.perf_counter()
        model = canonical_model(model)
        check_dataset_name(dataset)
        recipe = get_recipe(clean or default_recipe(model))
        table = read_table(file, text_col=text_col, id_col=id_col, label_col=label_col, fmt=fmt, encoding=encoding)
        embedder = embedder or load_embedder(model)
        summary = ingest(
            self.store, table, dataset, embedder, model, recipe,
            dtype=dtype, commit_rows=commit_rows, wait=wait, progress=progress,
        )
        summary.seconds = time.perf_counter() - t0  # reading the file and opening the model included
        return summary

    # ---- reading

    def rows(self, dataset: str) -> dict[str, np.ndarray]:
        """ids, labels (-1 = none) and raw texts of a dataset, in insertion order."""
        return self.store.dataset_rows(self.store.dataset(dataset))

    def xy(
        self, dataset: str, model: str = DEFAULT_MODEL, clean: str | None = None, labelled: bool = True
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``X`` (float32 vectors), ``y`` (labels) and ids of a dataset, in insertion order."""
        snap = self.store.snapshot()
        ds = self.store.dataset(dataset, snap)
        space = self.space(model, clean, snap)
        ids = self.store.dataset_ids(ds)
        labels = self.store.dataset_column(ds, "labels")
        if labelled:
            keep = labels != NO_LABEL
            ids, labels = ids[keep], labels[keep]
        return self.store.read_vectors(space, self._key_rows(ds, space, ids)), labels, ids

    def train(
        self,
        dataset: str,
        model: str = DEFAULT_MODEL,
        clean: str | None = None,
        classifier: str = "logreg",
        test_size: float = 0.2,
        seed: int = 42,
        name: str | None = None,
    ) -> TrainResult:
        """Fit on the dataset's labelled rows, report validation metrics, save classifier + manifest."""
        model = canonical_model(model)
        snap = self.store.snapshot()
        ds = self.store.dataset(dataset, snap)
        space = self.space(model, clean, snap)
        ids = self.store.dataset_ids(ds)
        labels = self.store.dataset_column(ds, "labels")
        keep = labels != NO_LABEL
        ids, y = ids[keep], labels[keep]
        check_labels(y, dataset)
        rows = self._key_rows(ds, space, ids)
        clf, metrics, n_tr, n_va, t_read, t_fit = fit_and_evaluate(
            classifier, lambda pos: self.store.read_vectors(space, rows[pos]), len(ids), y, test_size, seed
        )
        name = name or f"{dataset}-{model.replace(':', '_').replace('/', '_')}-{classifier}"
        manifest = {
            "name": name,
            "classifier": classifier,
            "dataset": dataset,
            "space": space.id,
            "model": model,
            "recipe": space.recipe,
            "row_ids_sha256": ids_hash(ids),
            "params": {"test_size": test_size, "seed": seed},
            "metrics": metrics,
            "n_train": n_tr,
            "n_valid": n_va,
            "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        path = save_classifier(self.store, name, clf, manifest)
        return TrainResult(
            name, str(path), classifier, dataset, space.id, model, space.recipe, n_tr, n_va,
            metrics["f1"], metrics["precision"], metrics["recall"], metrics["accuracy"], t_read, t_fit,
        )

    def predict(self, dataset: str, name: str) -> tuple[np.ndarray, np.ndarray]:
        """Predicted labels for every row of ``dataset`` with the saved classifier ``name``."""
        clf, manifest = load_classifier(self.store, name)
        snap = self.store.snapshot()
        ds = self.store.dataset(dataset, snap)
        space = snap.spaces.get(manifest["space"])
        if space is None:
            raise ModelError(
                f"classifier {name!r} was trained in space {manifest['space']} which is not in {self.path}; "
                "retrain it with 'fs train'"
            )
        ids = self.store.dataset_ids(ds)
        rows = self._key_rows(ds, space, ids)
        preds = [clf.predict(self.store.read_vectors(space, rows[s : s + 16384])) for s in range(0, len(rows), 16384)]
        return ids, np.concatenate(preds).astype(np.int64) if preds else np.zeros(0, np.int64)

    def similar(
        self,
        text: str | None = None,
        *,
        id: int | None = None,
        k: int = 10,
        dataset: str | None = None,
        model: str = DEFAULT_MODEL,
        clean: str | None = None,
        progress: ProgressFn | None = None,
    ) -> tuple[list[Hit], dict[str, Any]]:
        """Nearest stored tweets by cosine similarity, exact, through the FAISS index."""
        if (text is None) == (id is None):
            raise FeatureStoreError("give either a query text or --id ID, not both")
        if k < 1:
            raise FeatureStoreError(f"--k must be at least 1, got {k}")
        snap = self.store.snapshot()
        space = self.space(model, clean, snap)
        datasets = [self.store.dataset(dataset, snap)] if dataset else list(snap.datasets.values())
        space_keys, row_of, key_owners, allowed = self._similar_view(snap, space, datasets, bool(dataset))
        info: dict[str, Any] = {"space": space.id, "model": space.model, "recipe": space.recipe}
        if id is not None:
            owners = [d for d in datasets if id in set(self.store.dataset_keys(d, space.recipe)[0].tolist())]
            if not owners:
                raise DatasetError(f"id {id} is not in {'dataset ' + repr(dataset) if dataset else 'any dataset'} "
                                   f"with vectors for model {model!r}; check the id or --dataset")
            if len(owners) > 1:
                raise DatasetError(f"id {id} is in datasets {', '.join(d.name for d in owners)}; pick one with --dataset")
            kid, kkeys = self.store.dataset_keys(owners[0], space.recipe)
            qrow = row_of[kkeys[list(kid).index(id)]]
            query = self.store.read_vectors(space, np.array([qrow]))
            info["query"] = "stored vector"
        else:
            recipe = get_recipe(space.recipe)
            cleaned = recipe.clean([text])[0]
            if not cleaned.strip():  # a zero vector scores 0 against everything: no meaningful neighbours
                raise FeatureStoreError(f"query {text!r} is empty after cleaning with {recipe.name}; give words to search for")
            key = text_key(recipe.name, cleaned)
            if key in row_of:
                query = self.store.read_vectors(space, np.array([row_of[key]]))
                info["query"] = "stored vector (model not loaded)"
            else:
                embedder = load_embedder(space.model)
                if make_space(embedder, space.model, recipe, space.dtype).id != space.id:
                    raise ModelError(
                        f"model {space.model!r} has changed since space {space.id} was built; its vectors cannot be "
                        "compared; re-ingest into a new store"
                    )
                query = embedder.embed(recipe.clean([text]))
                info["query"] = "embedded"
        t = time.perf_counter()
        # Reuse the index already checked in this process while its files on disk are untouched;
        # any change to them (rewritten, truncated, corrupted) sends it through the full check again.
        index_key = ("index", space.id, space.segments, faiss_index.files_signature(self.store, space))
        opened = self._views.get(index_key)
        if opened is None:
            opened = faiss_index.open_index(self.store, space, progress)
            self._views = {k: v for k, v in self._views.items() if k[:2] != ("index", space.id)}
            index_key = index_key[:3] + (faiss_index.files_signature(self.store, space),)
            self._views[index_key] = opened
            info["index"] = opened.status
        else:
            info["index"] = "in memory"

        info["index_seconds"] = time.perf_counter() - t
        t = time.perf_counter()
        scores, rows = faiss_index.search(opened, query, k, allowed)
        info["search_seconds"] = time.perf_counter() - t
        hits = []
        wanted: dict[str, list[int]] = {}
        for r in rows[0]:
            if r >= 0:
                for dname, i in key_owners.get(space_keys[r], [])[:1]:
                    wanted.setdefault(dname, []).append(i)
        texts: dict[tuple[str, int], str] = {}
        for dname, idl in wanted.items():
            for i, t_ in self.store.texts_for(snap.datasets[dname], idl).items():
                texts[(dname, i)] = t_
        for rank, (s, r) in enumerate(zip(scores[0], rows[0]), start=1):
            if r < 0:
                break
            owners_ = key_owners.get(space_keys[r], [])
            hits.append(Hit(rank, float(s), owners_, texts.get(owners_[0], "") if owners_ else ""))
        return hits, info

    def _similar_view(
        self, snap: Snapshot, space: Space, datasets: list[Dataset], restrict: bool
    ) -> tuple[np.ndarray, dict[bytes, int], dict[bytes, list[tuple[str, int]]], np.ndarray | None]:
        """Space keys, key -> row, key -> (dataset, id)s, and the allowed rows, cached per snapshot."""
        cache_key = ("view", snap.generation, space.id, tuple(d.name for d in datasets), restrict)
        if cache_key not in self._views:
            space_keys = self.store.space_keys(space)
            row_of = {kk: i for i, kk in enumerate(space_keys.tolist())}
            key_owners: dict[bytes, list[tuple[str, int]]] = {}
            for d in datasets:
                kid, kkeys = self.store.dataset_keys(d, space.recipe)
                for i, kk in zip(kid.tolist(), kkeys.tolist()):
                    key_owners.setdefault(kk, []).append((d.name, i))
            allowed = None
            if restrict:
                allowed = np.array(sorted({row_of[kk] for kk in key_owners if kk in row_of}), dtype=np.int64)
            self._views = {k: v for k, v in self._views.items() if k[0] != "view" or k[1] == snap.generation}
            self._views[cache_key] = (space_keys, row_of, key_owners, allowed)
        return self._views[cache_key]

    # ---- overview

    def info(self) -> dict[str, Any]:
        """Datasets, spaces, counts, coverage and sizes."""
        snap = self.store.snapshot()
        seg_bytes = {}
        if self.store.segment_dir.is_dir():
            for name in snap.files():
                p = self.store.segment_path(name)
                seg_bytes[name] = p.stat().st_size if p.exists() else 0
        spaces = []
        for s in snap.spaces.values():
            have = set(self.store.space_keys(s).tolist())
            cover = {}
            for d in snap.datasets.values():
                _, dkeys = self.store.dataset_keys(d, s.recipe)
                cover[d.name] = int(sum(k in have for k in dkeys.tolist()))
            spaces.append({
                "id": s.id, "model": s.model, "recipe": s.recipe, "dim": s.dim, "dtype": s.dtype,
                "vectors": s.rows, "segments": len(s.segments),
                "bytes": sum(seg_bytes.get(g.file, 0) for g in s.segments), "coverage": cover,
            })
        datasets = []
        for d in snap.datasets.values():
            datasets.append({
                "name": d.name, "rows": d.count, "segments": len(d.rows),
                "recipes": {r: d.keyed(r) for r in d.keys},
                "bytes": sum(seg_bytes.get(g.file, 0) for g in d.rows)
                + sum(seg_bytes.get(g.file, 0) for segs in d.keys.values() for g in segs),
            })
        return {
            "path": str(self.path), "generation": snap.generation, "datasets": datasets, "spaces": spaces,
            "bytes": sum(seg_bytes.values()),
        }


def open_store(path: str | os.PathLike | None = None) -> FeatureStore:
    return FeatureStore(path)


__all__: Sequence[str] = ["FeatureStore", "Hit", "open_store"]
