"""The Python API: a thin façade over the store, ingest, search and train modules.

    >>> from featurestore import FeatureStore
    >>> fs = FeatureStore("store")
    >>> fs.ingest("train.csv", dataset="train")
    >>> X, y, ids = fs.xy("train")
    >>> fs.similar("my phone died again", k=5)

Each method opens one snapshot, picks the vector space by an explicit (model, recipe,
dtype) lookup (``featurestore.spaces``) and makes one call into the module that owns the
work. Ids and labels are text, exactly as the input file gave them; label "" = none.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

import numpy as np

from featurestore import spaces
from featurestore.embedders import DEFAULT_MODEL, canonical_model, default_recipe, load_embedder
from featurestore.embedders.base import Embedder
from featurestore.errors import DatasetError, FeatureStoreError, StoreError, UsageError
from featurestore.ingestion.ingest import IngestSummary, ingest
from featurestore.inputs.clean import get_recipe
from featurestore.inputs.sources import NO_LABEL, read_table
from featurestore.learning import train as training
from featurestore.learning.train import ClassifierChoice, TrainResult
from featurestore.progress import ProgressFn
from featurestore.query import search
from featurestore.query.search import Hit, SimilarResult
from featurestore.storage.manifest import Dataset, Snapshot, Space
from featurestore.storage.store import Store, check_dataset_name

if TYPE_CHECKING:
    import pandas as pd

    from featurestore.check import CheckPlan, Report
    from featurestore.learning.finetune import TuneResult


@dataclass(frozen=True)
class GcResult:
    """What ``FeatureStore.gc`` deleted."""

    removed: int  # files: superseded segments and older manifest generations
    freed: int  # bytes
    generations: list[int]  # the manifest generations kept
    left: list[str] = field(default_factory=list)  # files in the store's folders it never writes: not deleted


@dataclass(frozen=True)
class MapResult:
    """The map ``FeatureStore.map`` drew."""

    path: Path
    points: int  # rows drawn: all of the dataset's, or a sample of ``max_points``
    method: str  # the projection to 2-D: "UMAP" or "PCA"


_NPY_FILES = ("vectors", "ids", "labels", "texts")  # what an npy export writes into its folder
READ_ROWS = 65536  # vectors read at a time when progress is reported
EXPORT_ROWS = 65536  # rows an export holds at a time: a Parquet row group (~100 MB of 384-d vectors)


class FeatureStore:
    """A store directory plus the operations on it."""

    def __init__(self, path: str | os.PathLike | None = None) -> None:
        self.store = Store(path)
        self._search = search.SearchCache()  # reused by repeated queries in a long-lived process

    @property
    def path(self) -> Path:
        return self.store.path

    def _snapshot(self) -> Snapshot:
        return self.store.require_existing().snapshot()

    def space(
        self,
        model: str | None = None,
        clean: str | None = None,
        dtype: str | None = None,
        dataset: str | None = None,
    ) -> Space:
        """The stored space of ``model`` + recipe (+ ``dtype``), found without loading the model; ``model`` None:
        the store's only space, else the default model's (``spaces.choose_space``)."""
        snap = self._snapshot()
        ds = self.store.dataset(dataset, snap) if dataset else None
        return spaces.choose_space(self.store, snap, model, clean, dtype, ds)[0]

    # ---- writing

    def ingest(
        self,
        file: str | Sequence[str],
        dataset: str,
        model: str = DEFAULT_MODEL,
        clean: str | None = None,
        *,
        text_col: str | None = None,
        id_col: str | None = None,
        label_col: str | None = None,
        fmt: str | None = None,
        encoding: str | None = None,
        sep: str | None = None,
        quote: str | None = None,
        escape: str | None = None,
        header: bool = True,
        duplicates: str = "error",
        dtype: str = "float32",
        commit_rows: int | None = None,
        max_chars: int | None = None,
        wait: bool = False,
        progress: ProgressFn | None = None,
        embedder: Embedder | None = None,
        engine: str = "local",
        address: str | None = None,
        workers: int | None = None,
        gpus_per_worker: float = 0.0,
    ) -> IngestSummary:
        """Read ``file`` into ``dataset``; embed only texts the model's space lacks; update changed labels.

        ``engine="ray"`` runs the ingest on a Ray cluster (``address``; a local one if None) with
        ``workers`` embedding actors of ``gpus_per_worker`` GPUs each; ``file`` may then be a list of
        files, globs or directories (CSV/TSV, JSON Lines, Parquet), read by Ray Data. See
        ``featurestore.ingestion.distributed``.
        """
        t0 = time.perf_counter()
        model = canonical_model(model)
        check_dataset_name(dataset)
        recipe = get_recipe(clean or default_recipe(model))
        if engine not in ("local", "ray"):
            raise UsageError(f"unknown {{param}} {engine!r}; use local or ray", "engine")
        if engine == "ray":
            from featurestore.ingestion.distributed import check_options, ingest_ray  # Ray itself is imported on use

            check_options(fmt=fmt, encoding=encoding, header=header, duplicates=duplicates, quote=quote, escape=escape)
            return ingest_ray(
                self.store,
                [file] if isinstance(file, (str, os.PathLike)) else list(file),
                dataset,
                model,
                recipe,
                embedder=embedder,
                text_col=text_col,
                id_col=id_col,
                label_col=label_col,
                sep=sep,
                dtype=dtype,
                commit_rows=commit_rows,
                max_chars=max_chars,
                workers=workers,
                gpus_per_worker=gpus_per_worker,
                address=address,
                wait=wait,
                progress=progress,
            )
        if not isinstance(file, (str, os.PathLike)):
            raise UsageError(
                "the local engine reads one file per call; fix: call ingest once per file, "
                "or use {param} ray for many files",
                "engine",
            )
        table = read_table(
            file,
            text_col=text_col,
            id_col=id_col,
            label_col=label_col,
            fmt=fmt,
            encoding=encoding,
            sep=sep,
            header=header,
            duplicates=duplicates,
            quote=quote,
            escape=escape,
        )
        embedder = embedder or load_embedder(model, store=self.path)
        summary = ingest(
            self.store,
            table,
            dataset,
            embedder,
            model,
            recipe,
            dtype=dtype,
            commit_rows=commit_rows,
            max_chars=max_chars,
            wait=wait,
            progress=progress,
        )
        summary.seconds = time.perf_counter() - t0  # reading the file and opening the model included
        return summary

    # ---- reading

    def rows(self, dataset: str) -> dict[str, np.ndarray]:
        """ids, current labels ("" = none) and raw texts of a dataset, in insertion order."""
        return self.store.dataset_rows(self.store.dataset(dataset, self._snapshot()))

    def _labelled(
        self, dataset: str, model: str, clean: str | None, dtype: str | None, labelled: bool
    ) -> tuple[Space, str | None, np.ndarray, np.ndarray, np.ndarray]:
        """The space, how it was chosen, and the (labelled) rows' ids, labels and storage rows in it."""
        snap = self._snapshot()
        ds = self.store.dataset(dataset, snap)
        space, note = spaces.choose_space(self.store, snap, model, clean, dtype, ds)
        if labelled:
            ids, labels, _ = training.labelled_ids(self.store, ds)
        else:
            ids = self.store.dataset_ids(ds)
            labels = self.store.dataset_labels(ds, ids)
        return space, note, ids, labels, spaces.require_rows(self.store, ds, space, ids)

    def xy(
        self,
        dataset: str,
        model: str = DEFAULT_MODEL,
        clean: str | None = None,
        labelled: bool = True,
        dtype: str | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``X`` (float32 vectors), ``y`` (labels, str) and ids (str) of a dataset, in insertion order."""
        space, _, ids, labels, rows = self._labelled(dataset, model, clean, dtype, labelled)
        return self.store.read_vectors(space, rows), labels, ids

    def train(
        self,
        dataset: str,
        model: str = DEFAULT_MODEL,
        clean: str | None = None,
        classifier: str = "logreg",
        test_size: float = 0.2,
        seed: int = 42,
        name: str | None = None,
        *,
        dtype: str | None = None,
        positive: str | None = None,
        features: str | None = None,
        search: str | None = None,
        folds: int = 5,
        time_limit: float | None = None,
        plots: bool = True,
        progress: ProgressFn | None = None,
    ) -> TrainResult:
        """Fit on the dataset's labelled rows, report validation metrics, save classifier + manifest.

        Without ``features`` and ``search``: logistic regression (or sgd) on the vectors of ``model``.
        With either: a pipeline over the feature spec (``featurestore.learning.features``; default: ``model``),
        its settings chosen by stratified ``folds``-fold CV on the training split only (``search``
        none, quick or full; no candidate started after ``time_limit`` seconds), then scored once on the
        validation split. ``progress(advanced, total)`` counts the candidate settings of the search."""
        if features is None and search is None:
            snap = self._snapshot()
            ds = self.store.dataset(dataset, snap)
            space, note = spaces.choose_space(self.store, snap, canonical_model(model), clean, dtype, ds)
            result = training.train(
                self.store,
                space,
                dataset,
                training.labelled_rows(self.store, ds, space),  # read a block at a time: 12 B a row held
                classifier=classifier,
                test_size=test_size,
                seed=seed,
                name=name,
                positive=positive,
                plots=plots,
            )
            if note:
                result.warnings.insert(0, note)
            result.warnings += self._seen_by_tuning(ds, [space.model], test_size, seed)
            return result
        if classifier != "logreg":
            raise UsageError(
                "{param} " + repr(classifier) + " cannot be used with --features or --search (the "
                "pipeline fits TF-IDF in memory); fix: use logreg",
                "classifier",
            )
        from featurestore.learning import features as feats  # imports pandas: only the feature pipeline needs it

        snap = self._snapshot()
        ds = self.store.dataset(dataset, snap)
        alternatives = feats.parse_spec(features or model, clean)
        inputs_of, notes = {}, []
        for parts in alternatives:
            inputs_of[parts], n = feats.resolve(self.store, snap, ds, parts, dtype)
            notes += n
        ids, labels, keep = training.labelled_ids(self.store, ds)
        merged = feats.Inputs(
            tuple(p for ps in inputs_of for p in ps), tuple(s for i in inputs_of.values() for s in i.spaces)
        )
        # One frame with the columns of every alternative (shared columns once).
        uniq = {(p, s.id if s else None): (p, s) for p, s in zip(merged.parts, merged.spaces)}
        merged = feats.Inputs(tuple(p for p, _ in uniq.values()), tuple(s for _, s in uniq.values()))
        texts = self.store.dataset_texts(ds)[keep] if merged.recipes else None
        X = feats.frame(self.store, ds, merged, ids, texts)
        result = training.train_features(
            self.store,
            dataset,
            inputs_of,
            X,
            ids,
            labels,
            search=search or "none",
            folds=folds,
            time_limit=time_limit,
            test_size=test_size,
            seed=seed,
            name=name,
            positive=positive,
            plots=plots,
            progress=progress,
        )
        result.warnings[:0] = list(dict.fromkeys(notes))
        used = [p.model for p in merged.parts if p.kind == "space"]
        result.warnings += self._seen_by_tuning(ds, used, test_size, seed)
        tuned_used = [m for m in dict.fromkeys(used) if m.startswith(("tuned:", "tuned-int8:"))]
        if tuned_used and result.cv:
            result.notes.append(
                f"the CV scores are optimistic: {', '.join(tuned_used)} was tuned on these training rows, so "
                "cross-validation inside them scores vectors fitted to their labels; the validation score is the "
                "honest one"
            )
        return result

    def _seen_by_tuning(self, ds: Dataset, models: list[str], test_size: float, seed: int) -> list[str]:
        """A warning for each tuned model whose tuning trained on rows of this training's validation split."""
        from featurestore.embedders.tuned import is_tuned

        tuned = [m for m in dict.fromkeys(models) if is_tuned(m)]
        if not tuned:
            return []
        from featurestore.learning.finetune import seen_by_tuning

        ids, labels, _ = training.labelled_ids(self.store, ds)
        _, va, _ = training.split(labels, sorted(set(labels.tolist())), test_size, seed)
        out = []
        for model in tuned:
            seen = seen_by_tuning(self.path, model, ids[va])
            if seen:
                out.append(
                    f"{seen[1]:,} of the {len(va):,} validation rows were training rows of tuned model {seen[0]!r}: "
                    "the held-out scores are optimistic; fix: train with the dataset, --test-size and --seed it was "
                    "tuned with (fs info lists them), or tune on this split"
                )
        return out

    def tune(
        self,
        dataset: str,
        name: str,
        model: str = DEFAULT_MODEL,
        clean: str | None = None,
        *,
        test_size: float = 0.2,
        seed: int = 42,
        method: str | None = None,
        epochs: float | None = None,
        time_limit: float | None = None,
        embed: bool = True,
        progress: ProgressFn | None = None,
        engine: Callable[..., Any] | None = None,
    ) -> TuneResult:
        """Fine-tune ``model`` on ``dataset``'s training split (the one ``train`` makes with ``test_size`` and
        ``seed``: its validation rows are never seen) and keep it in the store as ``tuned:NAME``
        (``featurestore.learning.finetune``); ``embed``: then embed the dataset's stored texts into its space
        (``embed``), so that ``train(dataset, "tuned:NAME")`` works at once. ``progress`` counts training steps."""
        from featurestore.learning import finetune

        result = finetune.tune(
            self.store,
            dataset,
            name,
            model=canonical_model(model),
            clean=clean,
            test_size=test_size,
            seed=seed,
            method=method,
            epochs=epochs,
            time_limit=time_limit,
            progress=progress,
            engine=engine,
        )
        if embed:
            result.embedded = self.embed(dataset, result.model, result.recipe)
        return result

    def embed(
        self, dataset: str, model: str, clean: str | None = None, progress: ProgressFn | None = None
    ) -> IngestSummary:
        """Give every row of ``dataset`` a vector in ``model``'s space from the texts already stored (no file
        needed): an ingest of the rows as stored, so only the texts that space lacks are embedded and nothing
        else changes. ``progress`` counts rows."""
        model = canonical_model(model)
        recipe = clean or default_recipe(model)
        from featurestore.inputs.sources import Table
        from featurestore.storage.keys import raw_digest

        ds = self.store.dataset(dataset, self._snapshot())
        ids = self.store.dataset_ids(ds)
        labels = self.store.dataset_labels(ds, ids)
        texts = [str(t) for t in self.store.dataset_texts(ds).tolist()]
        table = Table(
            source=f"dataset {dataset!r} as stored",
            ids=ids,
            texts=texts,
            labels=labels,
            digests=np.array([raw_digest(t) for t in texts], dtype="S32"),
            rows_read=len(texts),
            duplicate_rows=0,
            id_column="id",
            label_column="label",
            text_column="text",
        )
        return ingest(
            self.store,
            table,
            dataset,
            load_embedder(model, store=self.path),
            model,
            get_recipe(recipe),
            progress=progress,
        )

    def classifier(self, name: str | None = None) -> ClassifierChoice:
        """The saved classifier ``predict`` and ``eval`` use: ``name``, or when None the one trained most recently
        in this store (its manifest's ``trained_at``), with a ``note`` saying so and naming the others."""
        return training.choose_classifier(self.store.require_existing(), name)

    def predict(self, dataset: str, name: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Predicted labels (in the training labels' form) for every row of ``dataset``, and the row ids;
        ``name`` None: the classifier trained most recently (``classifier``)."""
        ids, labels, _, _ = self._predict(dataset, name, proba=False)
        return ids, labels

    def predict_proba(
        self, dataset: str, name: str | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
        """Row ids, predicted labels, class probabilities (one column a class) and the classes, in order."""
        ids, labels, proba, classes = self._predict(dataset, name, proba=True)
        assert proba is not None
        return ids, labels, proba, classes

    def _predict(
        self, dataset: str, name: str | None, proba: bool
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, list[str]]:
        clf, manifest = training.load_classifier(self.store, self.classifier(name).name)
        snap = self._snapshot()
        ds = self.store.dataset(dataset, snap)
        ids = self.store.dataset_ids(ds)
        labels, p = training.predict_rows(self.store, snap, ds, clf, manifest, ids, proba=proba)
        return ids, labels, p, [str(c) for c in manifest["classes"]]

    def eval(self, dataset: str, name: str | None = None, positive: str | None = None) -> dict[str, Any]:
        """Scores of a saved classifier on the labelled rows of any dataset, without retraining: F1 (binary
        for the classifier's positive class, else macro), precision, recall, accuracy, per-class table.
        ``name`` None: the classifier trained most recently (``classifier``; ``note`` says so). ``warnings``
        include one when the rows scored include rows the classifier was fitted on."""
        choice = self.classifier(name)
        clf, manifest = training.load_classifier(self.store, choice.name)
        snap = self._snapshot()
        ds = self.store.dataset(dataset, snap)
        ids, y, _ = training.labelled_ids(self.store, ds)
        if not len(ids):
            return training.evaluate(y, y, manifest, dataset, positive)
        pred, _ = training.predict_rows(self.store, snap, ds, clf, manifest, ids)
        m = training.evaluate(y, pred, manifest, dataset, positive, ids=ids)
        m["note"] = choice.note
        return m

    def frame(
        self,
        dataset: str,
        model: str = DEFAULT_MODEL,
        clean: str | None = None,
        dtype: str | None = None,
        *,
        progress: ProgressFn | None = None,
    ) -> pd.DataFrame:
        """Every row of ``dataset`` as a pandas DataFrame: ``id``, ``label`` ("" = none), ``text`` (raw) and
        ``vector`` (a float32 array of the ``model`` space), in insertion order. ``progress`` counts the rows
        whose vectors were read."""
        import pandas as pd

        snap = self._snapshot()
        ds = self.store.dataset(dataset, snap)
        space, _ = spaces.choose_space(self.store, snap, canonical_model(model), clean, dtype, ds)
        rows = self.store.dataset_rows(ds)
        X = self._read_vectors(space, spaces.require_rows(self.store, ds, space, rows["ids"]), progress)
        out = pd.DataFrame({"id": rows["ids"], "label": rows["labels"], "text": rows["texts"]})
        out["vector"] = list(X)
        out.attrs.update({"space": space.id, "model": space.model, "recipe": space.recipe, "dim": space.dim})
        return out

    def _read_vectors(self, space: Space, rows: np.ndarray, progress: ProgressFn | None) -> np.ndarray:
        """``store.read_vectors`` a block of rows at a time, each block reported to ``progress``."""
        if progress is None:
            return self.store.read_vectors(space, rows)
        out = np.empty((len(rows), space.dim), np.float32)
        progress(0, len(rows))
        for at in range(0, len(rows), READ_ROWS):
            part = rows[at : at + READ_ROWS]
            out[at : at + len(part)] = self.store.read_vectors(space, part)
            progress(len(part), len(rows))
        return out

    def export(
        self,
        dataset: str,
        out: str | os.PathLike,
        fmt: str = "parquet",
        model: str = DEFAULT_MODEL,
        clean: str | None = None,
        dtype: str | None = None,
        *,
        progress: ProgressFn | None = None,
    ) -> list[Path]:
        """Write a dataset for use outside featurestore: ``parquet`` (one file: id, label, text, vector as a
        list of floats) or ``npy`` (a folder: vectors.npy, ids.npy, labels.npy, texts.npy; no pickles).
        ``progress`` counts the rows whose vectors were read."""
        import contextlib
        from collections.abc import Iterator

        from featurestore.storage import scan
        from featurestore.storage.atomic import STDOUT, check_output, output_stream

        if fmt not in ("parquet", "npy"):
            raise UsageError(f"unknown {{param}} {fmt!r}; use parquet or npy", "fmt")
        out = Path(out)
        if fmt == "parquet":
            check_output(out)  # before reading anything
        elif str(out) == STDOUT:
            raise UsageError("{param} - (stdout) cannot hold npy files; fix: give a folder, or --format parquet", "out")
        elif out.exists() and not out.is_dir():
            raise UsageError(f"{{param}} {out} is a file; npy export writes a folder of .npy files", "out")
        else:
            for key in _NPY_FILES:
                if (out / f"{key}.npy").exists():
                    check_output(out / f"{key}.npy")
        # Streamed (EXPORT_ROWS rows at a time): first where every vector is (8 B a row; a missing one is refused
        # before anything is written) and, for npy, the widths of the text columns; then the rows a block at a
        # time, each written as it is read (a Parquet row group, or the next rows of each .npy file).
        snap = self._snapshot()
        ds = self.store.dataset(dataset, snap)
        space, _ = spaces.choose_space(self.store, snap, canonical_model(model), clean, dtype, ds)
        attrs = {"space": space.id, "model": space.model, "recipe": space.recipe, "dim": space.dim}
        parts, widths = [np.zeros(0, np.int64)], dict.fromkeys(_NPY_FILES[1:], 1)  # np.array([], dtype=str): <U1
        for b in scan.row_blocks(self.store, ds, space, texts=fmt == "npy", block_rows=EXPORT_ROWS):
            assert b.rows is not None
            parts.append(b.rows)
            if fmt == "npy":
                assert b.texts is not None
                for key, col in (("ids", b.ids), ("labels", b.labels), ("texts", b.texts)):
                    widths[key] = max(widths[key], max(map(len, col.tolist()), default=1))
        rows = np.concatenate(parts)
        if (rows < 0).any():
            raise scan.missing_vectors(ds, space, int((rows < 0).sum()), len(rows))

        def blocks() -> Iterator[tuple[scan.RowBlock, np.ndarray]]:
            if progress:
                progress(0, len(rows))
            for b in scan.row_blocks(self.store, ds, texts=True, block_rows=EXPORT_ROWS):
                X = self.store.read_vectors(space, rows[b.start : b.start + len(b.ids)])
                if progress:
                    progress(len(b.ids), len(rows))
                yield b, X

        if fmt == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            schema = pa.schema(
                [("id", pa.string()), ("label", pa.string()), ("text", pa.string())]
                + [("vector", pa.list_(pa.float32(), space.dim))],
                metadata={k: str(v) for k, v in attrs.items()},
            )
            with output_stream(out) as fh, pq.ParquetWriter(fh, schema) as writer:
                empty = True
                for b, X in blocks():
                    columns = [pa.array(b.ids.tolist(), pa.string()), pa.array(b.labels.tolist(), pa.string())]
                    assert b.texts is not None
                    columns.append(pa.array(b.texts.tolist(), pa.string()))
                    columns.append(pa.FixedSizeListArray.from_arrays(pa.array(X.reshape(-1), pa.float32()), space.dim))
                    writer.write_table(pa.Table.from_arrays(columns, schema=schema), row_group_size=EXPORT_ROWS)
                    empty = False
                if empty:  # as pyarrow's write_table writes an empty table
                    writer.write_table(schema.empty_table())
            return [out]
        out.mkdir(parents=True, exist_ok=True)
        dtypes = {"vectors": np.dtype(np.float32), **{k: np.dtype(f"<U{w}") for k, w in widths.items()}}
        shapes = {"vectors": (len(rows), space.dim), **dict.fromkeys(widths, (len(rows),))}
        with contextlib.ExitStack() as stack:  # each file renamed into place only when every file is complete
            files = {key: stack.enter_context(output_stream(out / f"{key}.npy")) for key in _NPY_FILES}
            for key, fh in files.items():  # the header np.save writes (format 1.0 for these shapes)
                header = {"descr": np.lib.format.dtype_to_descr(dtypes[key]), "fortran_order": False}
                np.lib.format.write_array_header_1_0(fh, {**header, "shape": shapes[key]})
            for b, X in blocks():
                assert b.texts is not None
                files["vectors"].write(np.ascontiguousarray(X, np.float32).tobytes())
                for key, col in (("ids", b.ids), ("labels", b.labels), ("texts", b.texts)):
                    files[key].write(np.array(col.tolist(), dtype=dtypes[key]).tobytes())
        return [out / f"{key}.npy" for key in _NPY_FILES]

    @overload
    def similar(
        self,
        text: str | None = None,
        *,
        id: str | None = None,
        k: int = 10,
        dataset: str | None = None,
        model: str | None = None,
        clean: str | None = None,
        dtype: str | None = None,
        progress: ProgressFn | None = None,
        exact: bool = False,
        nprobe: int | None = None,
        ef: int | None = None,
        texts: None = None,
        snapshot: Snapshot | None = None,
    ) -> SimilarResult: ...

    @overload
    def similar(
        self,
        text: None = None,
        *,
        id: None = None,
        k: int = 10,
        dataset: str | None = None,
        model: str | None = None,
        clean: str | None = None,
        dtype: str | None = None,
        progress: ProgressFn | None = None,
        exact: bool = False,
        nprobe: int | None = None,
        ef: int | None = None,
        texts: Sequence[str],
        snapshot: Snapshot | None = None,
    ) -> list[SimilarResult]: ...

    def similar(
        self,
        text: str | None = None,
        *,
        id: str | None = None,
        k: int = 10,
        dataset: str | None = None,
        model: str | None = None,
        clean: str | None = None,
        dtype: str | None = None,
        progress: ProgressFn | None = None,
        exact: bool = False,
        nprobe: int | None = None,
        ef: int | None = None,
        texts: Sequence[str] | None = None,
        snapshot: Snapshot | None = None,
    ) -> SimilarResult | list[SimilarResult]:
        """Nearest stored tweets by cosine similarity, through the space's index (``fs index build``).

        Returns a ``SimilarResult``: the hits (``rank``, ``score``, ``ids``, ``text``, ``label``) and how they
        were found (``query``, ``space``, ``index``, ``index_kind``, timings, ``note``). With ``texts`` (many
        queries, one search): a list of them, one a query, in order. ``exact`` forces brute force; ``nprobe``
        (IVF) and ``ef`` (HNSW) trade speed for recall (a knob the index does not take is refused). ``model``
        None: the store's only space, else the default model's (``note`` says when that needed saying).
        ``snapshot``: answer from this committed state (a server's, read once per request) instead of the latest."""
        snap = snapshot if snapshot is not None else self._snapshot()
        ds = self.store.dataset(dataset, snap) if dataset else None
        space, note = spaces.choose_space(self.store, snap, model, clean, dtype, ds)
        opts: dict[str, Any] = dict(k=k, dataset=dataset, progress=progress, exact=exact, nprobe=nprobe, ef=ef)
        if texts is not None:
            if text is not None or id is not None:
                raise UsageError("give a query text, an {param} or a list of texts, only one of them", "id")
            results = search.similar_batch(self.store, self._search, snap, space, texts=list(texts), **opts)
        else:
            results = [search.similar(self.store, self._search, snap, space, text=text, id=id, **opts)]
        if note:
            results = [replace(r, note=note) for r in results]
        return results if texts is not None else results[0]

    def hold(self) -> None:
        """Keep segment files open and ids, labels and texts of the rows queries touch in memory, and
        answer concurrent brute-force searches with one scan: for a long-lived process that answers many
        queries from several threads (``fs serve``)."""
        self.store.hold_segments()
        self._search.hold()

    def warm(
        self, model: str | None = None, clean: str | None = None, dtype: str | None = None, hold: bool = True
    ) -> None:
        """Open the space's index and build the lookups queries read, ahead of the first query; with
        ``hold``, segment files stay open and ids, labels and texts are kept in memory (about their
        UTF-8 size plus 24 bytes a row) so that naming a query's hits reads no file (``fs serve``)."""
        if hold:
            self.hold()
        snap = self._snapshot()
        space, _ = spaces.choose_space(self.store, snap, model, clean, dtype)
        self._search.warm(self.store, snap, space)

    def vector(
        self, dataset: str, id: str, *, model: str | None = None, clean: str | None = None, dtype: str | None = None
    ) -> tuple[Space, np.ndarray]:
        """The stored vector of row ``id`` of ``dataset`` and the space it is in (read, never embedded)."""
        snap = self._snapshot()
        ds = self.store.dataset(dataset, snap)
        space, _ = spaces.choose_space(self.store, snap, model, clean, dtype, ds)
        vec = search.id_vector(self._search, self.store, space, [ds], str(id), f"dataset {dataset!r}")
        return space, vec[0]

    def index_build(
        self,
        kind: str = "auto",
        *,
        nlist: int | None = None,
        m: int | None = None,
        model: str | None = None,
        clean: str | None = None,
        dtype: str | None = None,
        progress: ProgressFn | None = None,
    ) -> dict[str, Any]:
        """Build the space's search index as ``kind`` (auto, flat, ivf, hnsw, ivfpq); queries use it from then on.
        ``model`` None: the store's only space, else the default model's. ``progress`` counts vectors added."""
        from featurestore.query import index as faiss_index

        snap = self._snapshot()
        space, note = spaces.choose_space(self.store, snap, model, clean, dtype)
        faiss_index.factory_string(kind, space.rows, space.dim, nlist, m)  # options refused before the work
        folder = next(p for p in (self.store.index_dir, self.store.path) if p.exists())
        if not os.access(folder, os.W_OK | os.X_OK):  # was: "built", and nothing saved
            raise StoreError(
                f"cannot save an index in {folder} (not writable), so building one would be lost; fix: build it "
                "where you can write (a copy of the store), or ask its owner to run 'fs index build'"
            )
        per_list = faiss_index.TRAIN_MIN_PER_LIST
        if nlist is not None and nlist > max(1, space.rows // per_list):  # said in words, not FAISS's raw warning
            few = (
                f"nlist {nlist} trains each list on fewer than {per_list} of the {space.rows:,} vectors, so recall "
                f"may drop; at most {max(1, space.rows // per_list):,} lists get {per_list} each"
            )
            note = f"{note}; {few}" if note else few
        t = time.perf_counter()
        opened = faiss_index.build_index(self.store, space, kind, nlist=nlist, m=m, progress=progress)
        if not opened.meta:
            raise StoreError(
                f"the index of space {space.id} was built but could not be saved in {self.store.index_dir}; fix: "
                "check that folder's permissions"
            )
        path = faiss_index.index_paths(self.store, space)[0]
        out = {
            "space": space.id,
            "kind": opened.kind,
            "factory": opened.factory,
            "vectors": opened.rows,
            "seconds": time.perf_counter() - t,
            "path": path,
            "bytes": os.path.getsize(path) if os.path.exists(path) else 0,
        }
        if note:
            out["note"] = note
        return out

    def map(
        self,
        dataset: str,
        out: str | os.PathLike,
        model: str = DEFAULT_MODEL,
        clean: str | None = None,
        dtype: str | None = None,
        *,
        method: str = "auto",
        max_points: int = 5000,
        seed: int = 42,
        progress: ProgressFn | None = None,
    ) -> MapResult:
        """Draw ``dataset``'s vectors in 2-D, coloured by label, to ``out``: a .png picture, or a .html page (one
        self-contained file; hover a point for its id, label and text). At most ``max_points`` rows, a random
        sample by ``seed``; ``method`` auto (UMAP when umap-learn is installed, else PCA), umap or pca.
        ``progress`` counts steps: reading the vectors, each UMAP epoch (or the PCA), drawing."""
        try:
            from featurestore.learning import plots  # matplotlib: the plots extra
        except ImportError:
            raise FeatureStoreError("a map needs matplotlib; fix: pip install 'featurestore[plots]'") from None
        from featurestore.storage.atomic import STDOUT, check_output

        path = Path(out)
        suffix = path.suffix.lower()
        if str(path) == STDOUT:
            raise UsageError(
                "{param} - (stdout) has no file type; fix: give a file name ending in .png or .html", "out"
            )
        if suffix not in (".png", ".html", ".htm"):
            raise UsageError(f"{{param}} {path} must end in .png or .html", "out")
        check_output(path)
        if max_points < 1:
            raise UsageError(f"{{param}} {max_points} must be at least 1", "max_points")
        snap = self._snapshot()
        ds = self.store.dataset(dataset, snap)
        space, _ = spaces.choose_space(self.store, snap, canonical_model(model), clean, dtype, ds)
        rows = self.store.dataset_rows(ds)
        if len(rows["ids"]) == 0:
            raise DatasetError(f"dataset {dataset!r} has no rows to draw")
        storage_rows = spaces.require_rows(self.store, ds, space, rows["ids"])  # every row has a vector, or refused
        pick = np.arange(len(storage_rows))
        if len(pick) > max_points:  # only the sample's vectors are read
            pick = np.sort(np.random.default_rng(seed).choice(len(pick), max_points, replace=False))
        ids, labels, texts = (rows[c][pick] for c in ("ids", "labels", "texts"))
        labels = labels.astype(object)
        X = self.store.read_vectors(space, storage_rows[pick])
        # steps: 1 (read) + the projection's (UMAP epochs, or 1) + 1 (draw); the epochs' total is learnt as they run
        steps = 3

        def projected(n: float, total: int) -> None:
            nonlocal steps
            steps = total + 2
            if progress:
                progress(n, steps)

        if progress:
            progress(1, steps)
        xy, how = plots.project(X, method, seed, progress=projected)
        title = f"{dataset}: {len(pick):,} rows, {space.model} ({space.recipe}), {how}"
        if suffix == ".png":
            plots.map_png(path, xy, labels, title)
        else:
            hover = [f"{i} [{lab or 'no label'}] {t[:280]}" for i, lab, t in zip(ids, labels, texts)]
            plots.map_html(path, xy, labels, hover, title)
        if progress:
            progress(1, steps)
        return MapResult(path, len(pick), how)

    # ---- maintenance

    def check(
        self,
        progress: ProgressFn | None = None,
        *,
        quick: bool = False,
        plan: Callable[[CheckPlan], None] | None = None,
    ) -> Report:
        """Verify the store end to end: schema, counts, unique keys, finite vectors, dims, keys that resolve to
        vectors, index files, orphans. ``errors`` lists problems (``ok`` is then False; ``repair`` mends what
        can be mended), ``warnings`` what needs no repair, ``stats`` what was counted. ``progress`` counts the
        bytes of segment and index files read; ``plan`` is told, before any is read, how many bytes and about
        how long. ``quick``: headers, index identities and a random sample of segments (seconds at any size);
        ``not_verified`` says what it left out."""
        from featurestore.check import check as verify  # FAISS and h5py: imported for maintenance only

        return verify(self.store.require_existing(), progress, quick=quick, plan=plan)

    def repair(self) -> Report:
        """Roll a corrupt manifest back, re-adopt the complete segments written after it, drop references to
        unreadable segments, remove orphans and stale indexes; a committed vector that can still be read is
        never dropped. ``actions`` says what was done (nothing on a healthy store, which is left as it was),
        ``errors`` what a check of the result still finds."""
        from featurestore.check import repair as mend

        return mend(self.store)

    def gc(self, keep: int = 1) -> GcResult:
        """Free disk: delete the manifest generations older than the newest ``keep`` and every segment none of the
        kept ones names (what compaction superseded). Only files the store writes are deleted: any other file in
        its folders is left in place and named in ``left``.

        Ingests keep 3 generations so that a query reading an older one can finish; a reader still on a deleted
        generation fails, so run this when none is."""
        from featurestore.learning.finetune import remove_interrupted

        store = self.store.require_existing()
        with store.writer() as w:
            removed, freed = w.collect_garbage(keep)
            removed += len(remove_interrupted(store.path))  # folders of interrupted fs tune runs
        return GcResult(removed, freed, store.manifest_generations(), w.foreign)

    # ---- overview

    def _label_summary(self, d: Dataset) -> tuple[int, list[str]]:
        """Labelled rows of a dataset and its first 20 classes: one scan of its labels, recorded beside the index
        with the segments it read (``lookups.save_summary``), so that ``info`` reads no rows while they hold."""
        from featurestore.storage.lookups import save_summary, saved_summary

        sources = {"rows": [[s.file, s.rows] for s in d.rows], "labels": [[s.file, s.rows] for s in d.labels]}
        saved = saved_summary(self.store, f"labels-{d.name}", sources) or {}
        try:  # a summary that does not read as one is counted again
            return int(saved["labelled"]), [str(c) for c in saved["classes"]]
        except (KeyError, TypeError, ValueError):
            pass
        labels = self.store.dataset_labels(d)
        labelled, classes = int((labels != NO_LABEL).sum()), sorted(set(labels.tolist()) - {NO_LABEL})[:20]
        save_summary(self.store, f"labels-{d.name}", sources, {"labelled": labelled, "classes": classes})
        return labelled, classes

    def info(self) -> dict[str, Any]:
        """Datasets, spaces, counts, coverage and sizes."""
        snap = self._snapshot()
        seg_bytes = {}
        for name in snap.files():
            p = self.store.segment_path(name)
            seg_bytes[name] = p.stat().st_size if p.exists() else 0
        out_spaces = []
        for s in snap.spaces.values():
            cover, cached = spaces.usage(self.store, snap, s)
            out_spaces.append(
                {
                    "id": s.id,
                    "model": s.model,
                    "recipe": s.recipe,
                    "dim": s.dim,
                    "dtype": s.dtype,
                    "vectors": s.rows,
                    "segments": len(s.segments),
                    "bytes": sum(seg_bytes.get(g.file, 0) for g in s.segments),
                    "coverage": cover,
                    "cache_entries": cached,
                }
            )
        datasets = []
        for d in snap.datasets.values():
            labelled, classes = self._label_summary(d)
            datasets.append(
                {
                    "name": d.name,
                    "rows": d.count,
                    "labelled": labelled,
                    "classes": classes,
                    "segments": len(d.rows),
                    "recipes": {r: d.keyed(r) for r in d.keys},
                    "bytes": sum(seg_bytes.get(g.file, 0) for g in d.segments()),
                }
            )
        return {
            "path": str(self.path),
            "generation": snap.generation,
            "datasets": datasets,
            "spaces": out_spaces,
            "tuned_models": self._tuned_models(),
            "bytes": sum(seg_bytes.values()),
        }

    def _tuned_models(self) -> list[dict[str, Any]]:
        from featurestore.embedders.tuned import PREFIX, list_tuned

        return [
            {
                "model": PREFIX + m.name,
                **m.meta["split"],
                "method": m.identity["params"].get("method"),
                "steps": m.meta["report"]["steps"],
                "stopped_early": m.meta["stopped_early"],
                "created_at": m.meta["created_at"],
            }
            for m in list_tuned(self.path)
        ]


def open_store(path: str | os.PathLike | None = None) -> FeatureStore:
    return FeatureStore(path)


__all__: Sequence[str] = ["FeatureStore", "GcResult", "Hit", "MapResult", "SimilarResult", "open_store"]
