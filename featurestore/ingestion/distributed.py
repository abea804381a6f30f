"""Distributed ingest on Ray Data: many files, many workers, one store.

The same contract as a local ingest (``featurestore.ingestion.ingest``), run as Ray Data stages:

1. **read + key** (tasks): Ray Data reads the files (CSV/TSV, JSON Lines, Parquet; the driver
   never holds the input); workers clean and hash every row.
2. **plan by id** (hash shuffle on id): the input rows meet the dataset's stored rows, keys and
   label updates in the partition of their id, read from the segment files by the workers. Each
   partition drops repeated rows, finds id conflicts, new rows, rows lacking a key under the
   recipe and changed labels. No process holds every id.
3. **plan by key** (hash shuffle on key): the input keys meet the space's stored keys; what is
   left, once per key, is what must be embedded. No process holds every key.
4. **embed** (actors, ``concurrency`` = workers, ``num_gpus`` per worker): one model load per
   actor; each batch becomes one immutable vector segment file written by the actor into the
   store's segment directory. The driver adopts finished segments as they stream in, publishing
   a manifest generation every few segments: killed at any point, the store keeps what was
   published and a re-run embeds only the rest.
5. **dataset segments** (tasks): rows, keys and label updates, written by the workers and adopted
   by the driver once every vector they name is published.

The driver holds the store's writer lock throughout and is the only writer of manifests; files
a killed run wrote but never published are swept by the next writer, as after a local ingest.
Ray retries a task whose actor died (``max_restarts``/``max_task_retries``); a segment's name is
derived from its content, so a retried batch rewrites the same file rather than adding one.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import logging
import os
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from featurestore.embedders import load_embedder
from featurestore.embedders.base import Embedder
from featurestore.errors import DatasetError, FeatureStoreError, IngestInterrupted, InputFileError, UsageError
from featurestore.ingestion.ingest import DEFAULT_COMMIT_ROWS, IngestSummary
from featurestore.inputs.clean import Recipe, get_recipe
from featurestore.inputs.sources import ID_COLUMNS, LABEL_COLUMNS, TEXT_COLUMNS, pick_column
from featurestore.machine import debug, native_stderr_without
from featurestore.progress import ProgressFn
from featurestore.spaces import SpaceWriter, cut_length, key_texts, make_space, pick_canaries, require_same_space
from featurestore.storage.keys import KEY_DTYPE, raw_digest, text_keys
from featurestore.storage.manifest import Space
from featurestore.storage.store import Store, Writer, segment_attrs, write_segment

log = logging.getLogger(__name__)

# Where a row of the id shuffle came from.
INPUT, STORED_ROW, STORED_KEY, STORED_LABEL = 0, 1, 2, 3
SUFFIXES = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}
COMPRESSED = (".gz", ".bz2", ".zst", ".lz4")
PUBLISH_EVERY_S = 5.0  # the driver publishes adopted vector segments at least this often
DATASET_SEGMENT_ROWS = 65536
MAX_BLOCK_BYTES = 1 << 30


def _schema() -> Any:  # a pyarrow schema (pyarrow is imported on use)
    import pyarrow as pa

    return pa.schema(
        [
            ("id", pa.string()),
            ("src", pa.int8()),
            ("order", pa.int64()),
            ("label", pa.string()),
            ("text", pa.string()),
            ("digest", pa.binary()),
            ("key", pa.binary()),
            ("cleaned", pa.string()),
            ("truncated", pa.bool_()),
            ("empty", pa.bool_()),
        ]
    )


# ----------------------------------------------------------------------------- inputs


def expand_inputs(paths: Sequence[str]) -> list[str]:
    """Files named, globbed (``data/*.csv``) or inside named directories; sorted, each once."""
    files: list[str] = []
    for p in paths:
        if any(ch in p for ch in "*?["):
            found = sorted(glob.glob(p, recursive=True))
            if not found:
                raise InputFileError(
                    f"no file matches {p!r}; fix: check the pattern (quote it so the shell does not expand it)"
                )
            files += [f for f in found if os.path.isfile(f)]
        elif os.path.isdir(p):
            files += sorted(str(f) for f in Path(p).rglob("*") if f.is_file() and _format_by_suffix(str(f)))
        elif os.path.isfile(p):
            files.append(p)
        else:
            raise InputFileError(f"input file {p!r} does not exist; fix: check the path")
    files = list(dict.fromkeys(os.path.abspath(f) for f in files))
    if not files:
        raise InputFileError(f"no input files found in {', '.join(paths)}; give CSV, TSV, JSON Lines or Parquet files")
    return files


def _format_by_suffix(path: str) -> str | None:
    """The input format a file's name says (compression suffixes aside), or None."""
    name = path.lower()
    for c in COMPRESSED:
        name = name.removesuffix(c)
    return SUFFIXES.get(os.path.splitext(name)[1])


def _format_of(path: str) -> str:
    fmt = _format_by_suffix(path)
    if fmt is None:
        raise InputFileError(
            f"{path}: the Ray engine reads .csv, .tsv, .jsonl/.json (JSON Lines) and .parquet files, "
            "plain or compressed; fix: rename the file, or use [[engine]] local"
        )
    return fmt


def _columns(path: str, fmt: str, sep: str | None) -> list[str]:
    """The column names of one input file, read from its header or schema only."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    try:
        if fmt == "parquet":
            return list(pq.read_schema(path).names)
        if fmt == "jsonl":
            with pa.input_stream(path, compression="detect") as f:
                head = f.read(1 << 20).split(b"\n", 1)[0]
            record = json.loads(head)
            if not isinstance(record, dict):
                raise ValueError("the first line is not a JSON object")
            return list(record)
        opts = pacsv.ParseOptions(delimiter=sep or ("\t" if fmt == "tsv" else ","), newlines_in_values=True)
        with pa.input_stream(path, compression="detect") as f:
            reader = pacsv.open_csv(f, parse_options=opts, read_options=pacsv.ReadOptions(block_size=1 << 16))
            return list(reader.schema.names)
    except (pa.ArrowException, OSError, ValueError) as exc:  # json.JSONDecodeError is a ValueError
        raise InputFileError(
            f"{path} cannot be read as {fmt} ({' '.join(str(exc).split())[:200]}); "
            "fix: check the file, or ingest it with the local engine, which reads more formats"
        ) from None


def _read(
    files: list[str],
    fmt: str,
    sep: str | None,
    columns: list[str],
    text_col: str,
    id_col: str,
    label_col: str | None,
    ray_data: Any,
) -> Any:
    """A Ray Dataset of the input with columns text, id, label (all text), read by Ray Data itself."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    wanted = [c for c in (text_col, id_col, label_col) if c]
    if fmt == "parquet":
        ds = ray_data.read_parquet(files, columns=wanted)
    elif fmt == "jsonl":
        ds = ray_data.read_json(files, lines=True)
    else:
        ds = ray_data.read_csv(
            files,
            parse_options=pacsv.ParseOptions(delimiter=sep or ("\t" if fmt == "tsv" else ","), newlines_in_values=True),
            convert_options=pacsv.ConvertOptions(
                column_types={c: pa.string() for c in columns}, include_columns=wanted, strings_can_be_null=False
            ),
        )
    roles = {"text": text_col, "id": id_col, "label": label_col}
    return ds.map_batches(_select, fn_kwargs={"roles": roles}, batch_format="pyarrow")


@dataclass(frozen=True)
class _Inputs:
    """The files of one ingest and the columns that feed text, ids and labels."""

    files: list[str]
    fmt: str
    sep: str | None
    columns: list[str]
    text: str
    id: str
    label: str | None

    @property
    def source(self) -> str:
        """The input as the log names it: its one file, or how many files."""
        return self.files[0] if len(self.files) == 1 else f"{len(self.files)} files"

    def read(self, ray_data: Any) -> Any:
        return _read(self.files, self.fmt, self.sep, self.columns, self.text, self.id, self.label, ray_data)


def _find_inputs(
    paths: Sequence[str], sep: str | None, text_col: str | None, id_col: str | None, label_col: str | None
) -> _Inputs:
    """What the inputs are: the files ``paths`` name, their one format, and the columns of text, ids and
    labels (from the first file's header or schema); nothing else is read."""
    files = expand_inputs(paths)
    formats = {_format_of(f) for f in files}
    if len(formats) > 1:
        raise InputFileError(
            f"the inputs mix formats ({', '.join(sorted(formats))}); fix: ingest each format separately"
        )
    fmt = formats.pop()
    columns = _columns(files[0], fmt, sep)
    tcol = pick_column(columns, text_col, TEXT_COLUMNS, set(), "text", "[[text_col]]", files[0])
    if tcol is None:
        raise InputFileError(f"{files[0]} has no known text column among {', '.join(columns)}; fix: [[text_col]] NAME")
    icol = pick_column(columns, id_col, ID_COLUMNS, {tcol}, "id", "[[id_col]]", files[0])
    if icol is None:
        raise InputFileError(
            f"{files[0]} has no id column among {', '.join(columns)}; the Ray engine needs ids (rows of "
            "many files have no global number); fix: [[id_col]] NAME, or [[engine]] local"
        )
    lcol = pick_column(columns, label_col, LABEL_COLUMNS, {tcol, icol}, "label", "[[label_col]]", files[0])
    return _Inputs(files, fmt, sep, columns, tcol, icol, lcol)


def _as_text(column: Any, role: str) -> list[str]:
    out = []
    for v in column.to_pylist():
        if v is None:
            out.append("")
        elif isinstance(v, str):
            out.append(v)
        elif isinstance(v, float) and v.is_integer() and abs(v) < 2**53:
            out.append(str(int(v)))  # a JSON integer column with nulls arrives as float
        elif isinstance(v, (bool, float)):
            raise InputFileError(
                f"a {role} value {v!r} is not text or an exact whole number; fix: write the "
                f"{role}s as text (quoted) so they are kept as given"
            )
        else:
            out.append(str(v))
    return out


def _select(batch: Any, roles: dict[str, str | None]) -> Any:
    import pyarrow as pa

    n = batch.num_rows
    cols = {role: (_as_text(batch.column(name), role) if name else [""] * n) for role, name in roles.items()}
    return pa.table(cols)


# ----------------------------------------------------------------------------- one ingest


@dataclass(frozen=True)
class _Job:
    """What one ingest writes and how, fixed before the cluster is joined (the pool size is not: it may
    depend on the cluster's CPUs)."""

    dataset: str
    model: str
    recipe: Recipe
    space: Space
    embedder: Embedder
    commit_rows: int
    max_chars: int
    gpus_per_worker: float
    progress: ProgressFn | None


# ----------------------------------------------------------------------------- stage 1: clean and key


def _key_rows(batch: Any, recipe: str, max_chars: int) -> Any:
    import pyarrow as pa

    ids = batch.column("id").to_pylist()
    texts = batch.column("text").to_pylist()
    if any(i == "" for i in ids):
        raise InputFileError(
            "a row has an empty id; the Ray engine needs an id on every row; "
            "fix: fill the ids, or use [[engine]] local (which numbers rows)"
        )
    keyed = key_texts(get_recipe(recipe), texts, max_chars)
    n = len(ids)
    return pa.table(
        {
            "id": ids,
            "src": pa.array([INPUT] * n, pa.int8()),
            "order": pa.array([0] * n, pa.int64()),
            "label": batch.column("label"),
            "text": texts,
            "digest": pa.array([raw_digest(t) for t in texts], pa.binary()),
            "key": pa.array(keyed.keys, pa.binary()),
            "cleaned": keyed.cleaned,
            "truncated": keyed.truncated.tolist(),
            "empty": keyed.empty.tolist(),
        },
        schema=_schema(),
    )


def _read_and_key(ray_data: Any, inputs: _Inputs, job: _Job) -> Any:
    """Stage 1: the input rows in the shuffle schema, read, cleaned and keyed by the workers."""
    return inputs.read(ray_data).map_batches(
        _key_rows,
        fn_kwargs={"recipe": job.recipe.name, "max_chars": job.max_chars},
        batch_format="pyarrow",
        batch_size=4096,
    )


# ----------------------------------------------------------------------------- stored segments as datasets


def _segment_parts(store: Store, segs: Sequence[Any], kind: int, chunk: int = 262144) -> list[dict[str, Any]]:
    parts = []
    for i, seg in enumerate(segs):
        for start in range(0, seg.rows, chunk):
            parts.append(
                {
                    "path": str(store.segment_path(seg.file)),
                    "kind": kind,
                    "seg": i,
                    "start": start,
                    "stop": min(start + chunk, seg.rows),
                }
            )
    return parts


def _read_parts(batch: dict[str, np.ndarray]) -> Any:
    """Rows of stored segment slices, in the shuffle schema (workers read the files themselves)."""
    import h5py
    import pyarrow as pa

    from featurestore.storage.store import as_text_column

    tables = []
    for path, kind, seg, start, stop in zip(batch["path"], batch["kind"], batch["seg"], batch["start"], batch["stop"]):
        with h5py.File(path, "r", locking=False) as f:
            if kind == STORED_KEY and "vectors" in f:  # a space's keys
                ids = [""] * (stop - start)
                keys = f["keys"][start:stop].tolist()
            else:
                ids = as_text_column(f["ids"][start:stop], "ids").tolist()
                keys = [b""] * len(ids)
            labels = (
                as_text_column(f["labels"][start:stop], "labels").tolist()
                if "labels" in f and kind != STORED_KEY
                else [""] * len(ids)
            )
            digests = f["digests"][start:stop].tolist() if kind == STORED_ROW else [b""] * len(ids)
        n = len(ids)
        tables.append(
            pa.table(
                {
                    "id": ids,
                    "src": pa.array([kind] * n, pa.int8()),
                    "order": pa.array((int(seg) + 1) * (1 << 32) + np.arange(start, stop), pa.int64()),
                    "label": labels,
                    "text": [""] * n,
                    "digest": pa.array(digests, pa.binary()),
                    "key": pa.array(keys, pa.binary()),
                    "cleaned": [""] * n,
                    "truncated": [False] * n,
                    "empty": [False] * n,
                },
                schema=_schema(),
            )
        )
    return pa.concat_tables(tables)


def _stored(ray_data: Any, parts: list[dict[str, Any]]) -> Any | None:
    if not parts:
        return None
    return ray_data.from_items(parts, override_num_blocks=len(parts)).map_batches(
        _read_parts, batch_size=1, batch_format="numpy"
    )


# ----------------------------------------------------------------------------- stage 2: plan by id


def _plan_ids(df: Any) -> Any:
    """One id partition (all rows of its ids, input and stored): the input rows to keep, one per id, with
    what each needs (new row, key under the recipe, label update) and what is wrong (``error``). Partition
    facts ride on the first row: input rows dropped as repeats, and the partition's id range."""
    import pandas as pd

    inp = df[df["src"] == INPUT]
    kept = inp.drop_duplicates(["id", "digest", "label"])
    repeated = len(inp) - len(kept)
    clash = kept["id"].duplicated(keep=False)
    stored = df[df["src"] == STORED_ROW].set_index("id")
    current = stored["label"].copy()
    updates = df[df["src"] == STORED_LABEL].sort_values("order")
    if len(updates):
        last = updates.drop_duplicates("id", keep="last").set_index("id")["label"]
        current.loc[last.index] = last
    keyed = set(df.loc[df["src"] == STORED_KEY, "id"])
    ids = kept["id"]
    found = ids.isin(stored.index).to_numpy(bool)
    stored_digest = stored["digest"].reindex(ids).to_numpy(object)
    old_label = current.reindex(ids).to_numpy(object)
    old_label[~found] = ""
    new_label = kept["label"].to_numpy(object)
    error = np.full(len(kept), "", dtype=object)
    error[clash.to_numpy(bool)] = "input"
    differs = np.array([f and a != b for f, a, b in zip(found, stored_digest, kept["digest"])], dtype=bool)
    error[differs & (error == "")] = "stored"
    moved = found & (new_label != "") & (new_label != old_label)
    as_int = np.int64  # counts are summed by Ray, which does not sum booleans
    out = kept.drop(columns=["src", "order"]).assign(
        new=(~found).astype(as_int),
        needs_key=(~found | ~ids.isin(keyed).to_numpy(bool)).astype(as_int),
        label_update=moved.astype(as_int),
        label_added=(moved & (old_label == "")).astype(as_int),
        truncated=kept["truncated"].to_numpy(bool).astype(as_int),
        empty=kept["empty"].to_numpy(bool).astype(as_int),
        repeated=0,
        error=error,
        range_first="",
        range_last="",
    )
    if len(out):
        ids_seen = df["id"]
        out.iloc[0, out.columns.get_indexer(["repeated", "range_first", "range_last"])] = [
            repeated,
            ids_seen.min(),
            ids_seen.max(),
        ]
    return pd.DataFrame(out).reset_index(drop=True)


COUNTED = ("new", "label_update", "label_added", "repeated", "truncated", "empty")


def _tally(df: Any) -> Any:
    """One planned partition in one row: its counts, its first error, its id range."""
    import pandas as pd

    bad = df[df["error"] != ""]
    return pd.DataFrame(
        [
            {
                "rows": len(df),
                **{c: int(df[c].sum()) for c in COUNTED},
                "error": bad["error"].iloc[0] if len(bad) else "",
                "error_id": bad["id"].iloc[0] if len(bad) else "",
                "first": df["range_first"].iloc[0] if len(df) else "",
                "last": df["range_last"].iloc[0] if len(df) else "",
            }
        ]
    )


def _check_ranges(tally: Any) -> None:
    """Each id must have been planned in one partition: sorted partitions may not share an end id."""
    ranges = tally[tally["rows"] > 0].sort_values("first")
    shared = set(ranges["last"].iloc[:-1]) & set(ranges["first"].iloc[1:])
    if shared:
        raise FeatureStoreError(
            f"Ray Data split the rows of id {sorted(shared)[0]!r} over two blocks, so the plan cannot be trusted; "
            "nothing was written; fix: split the input into smaller files (each well under 1 GiB)"
        )


@dataclass(frozen=True)
class _Tally:
    """The id plan's counts summed over its partitions: the input rows kept (one per id) and ``COUNTED``."""

    rows: int
    new: int
    label_update: int
    label_added: int
    repeated: int
    truncated: int
    empty: int


def _plan_by_id(ray_data: Any, w: Writer, keyed: Any, job: _Job) -> tuple[Any, _Tally]:
    """Stage 2: the keyed input rows meet the dataset's stored rows, keys and label updates by id; the planned
    rows (materialized) and their tally. An id given two contents is refused here, before anything is written."""
    ds = w.snap.datasets.get(job.dataset)
    parts = []
    if ds is not None:
        parts = (
            _segment_parts(w.store, ds.rows, STORED_ROW)
            + _segment_parts(w.store, ds.labels, STORED_LABEL)
            + _segment_parts(w.store, ds.keys.get(job.recipe.name, ()), STORED_KEY)
        )
    stored_rows = _stored(ray_data, parts)
    by_id = keyed.union(stored_rows) if stored_rows is not None else keyed
    planned = by_id.sort("id").map_batches(_plan_ids, batch_size=None, batch_format="pandas").materialize()
    tally = planned.map_batches(_tally, batch_size=None, batch_format="pandas").to_pandas()
    _check_ranges(tally)
    totals = _Tally(rows=int(tally["rows"].sum()), **{c: int(tally[c].sum()) for c in COUNTED})
    errors = tally[tally["error"] != ""]
    if len(errors):
        bad = errors.iloc[0]
        if bad["error"] == "input":
            raise InputFileError(
                f"the input has rows sharing id {bad['error_id']!r} with different texts or labels; "
                "an id names one tweet: fix the ids ([[duplicates]] first|last needs file order: local engine only)"
            )
        raise DatasetError(
            f"id {bad['error_id']!r} is already in dataset {job.dataset!r} with a different text; an id "
            "names one tweet: give new ids, or ingest into another dataset"
        )
    return planned, totals


# ----------------------------------------------------------------------------- stage 3: plan by key


def _as_input_keys(batch: Any) -> Any:
    import pyarrow as pa

    return batch.append_column("src", pa.array([INPUT] * batch.num_rows, pa.int8()))


def _missing_keys(df: Any) -> Any:
    """One key partition: the input keys the space lacks, once each, with the text to embed."""
    stored = set(df.loc[df["src"] == STORED_KEY, "key"])
    inp = df[df["src"] == INPUT]
    missing = inp[~inp["key"].isin(stored)].drop_duplicates("key")
    return missing[["key", "cleaned"]].reset_index(drop=True)


def _plan_by_key(ray_data: Any, store: Store, stored_space: Space | None, planned: Any) -> tuple[Any, int]:
    """Stage 3: the planned rows' keys meet the space's stored keys by key; what the space lacks, once per key
    with its cleaned text (materialized), and how many keys that is."""
    space_keys = _stored(ray_data, _segment_parts(store, stored_space.segments, STORED_KEY) if stored_space else [])
    by_key = planned.select_columns(["key", "cleaned"]).map_batches(_as_input_keys, batch_format="pyarrow")
    if space_keys is not None:
        by_key = by_key.union(space_keys.select_columns(["key", "cleaned", "src"]))
    missing = by_key.sort("key").map_batches(_missing_keys, batch_size=None, batch_format="pandas").materialize()
    return missing, missing.count()


# ----------------------------------------------------------------------------- stage 4: embed


def _content_name(run: str, kind: str, first: bytes) -> str:
    return f"ray-{run}-{kind}-{hashlib.blake2b(first, digest_size=8).hexdigest()}.h5"


class _EmbedSegments:
    """A Ray actor: loads the model once, turns each batch of missing keys into one vector segment."""

    def __init__(self, model: str, store_path: str, space_json: dict[str, Any], space_id: str, run: str) -> None:
        self.embedder = load_embedder(model, store=store_path)
        self.space = Space.from_json(space_id, space_json)
        # another model version on this node would write another space
        require_same_space(
            self.embedder, self.space, get_recipe(self.space.recipe), where=f" on Ray worker {os.uname().nodename}"
        )
        self.store = Store(store_path)
        self.run = run

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        keys = np.asarray(batch["key"].tolist(), dtype=KEY_DTYPE)
        texts = [str(t) for t in batch["cleaned"]]
        t = time.perf_counter()
        vectors = self.embedder.embed(texts)
        seconds = time.perf_counter() - t
        name = _content_name(self.run, "v", keys[0].tobytes())
        write_segment(
            self.store.segment_path(name),
            segment_attrs("vectors", space=self.space),
            {"keys": keys, "vectors": vectors.astype(self.space.dtype)},
        )
        canaries = pick_canaries(dict(zip(keys.tolist(), texts)))
        return {
            "file": np.array([name]),
            "rows": np.array([len(keys)]),
            "seconds": np.array([seconds]),
            "device": np.array([self.embedder.device]),
            "canaries": np.array(["\x1f".join(canaries)], dtype=object),
        }


def _vector_segments(ray_data: Any, missing: Any, todo: int, job: _Job, store: Store, run: str, workers: int) -> Any:
    """The actor pool over the ``todo`` missing keys: a Ray Dataset with one row per vector segment written,
    streamed as the actors finish them."""
    settings: dict[str, Any] = {
        "model": job.model,
        "store_path": str(store.path),
        "space_json": job.space.to_json(),
        "space_id": job.space.id,
        "run": run,
    }

    class EmbedSegments(_EmbedSegments):  # settings travel with the class, not as object-store arguments
        def __init__(self) -> None:
            super().__init__(**settings)

    # Ray Data restarts a dead actor and retries its batch (max_restarts/max_task_retries default to -1).
    # One block per batch: the actors share the work, and each segment streams back as it is written.
    # Split before the actors start: they may take every CPU, and the split would wait for one.
    batches = missing.repartition(-(-todo // job.commit_rows)).materialize()
    return batches.map_batches(
        EmbedSegments,
        batch_size=job.commit_rows,
        batch_format="numpy",
        compute=ray_data.ActorPoolStrategy(size=workers),
        num_cpus=1,
        num_gpus=job.gpus_per_worker or None,
    )


def _embed(
    w: Writer,
    ray_data: Any,
    missing: Any,
    todo: int,
    job: _Job,
    *,
    stored_space: Space | None,
    workers: int,
    run: str,
    summary: IngestSummary,
) -> None:
    """Stage 4: embed the ``todo`` missing keys on the actors and adopt their segments as they finish
    (``SpaceWriter.adopt``): a generation once ``PUBLISH_EVERY_S`` have passed since the last, and one at the end.
    Counts and embed timings go to ``summary`` segment by segment, so an interrupted ingest reports them."""
    writer = SpaceWriter(w, job.space, job.embedder, job.recipe)
    if todo:
        writer.check()
    if stored_space is None:
        w.adopt(space=job.space)  # registered even when nothing needs embedding, like a local ingest
    if not todo:
        return
    embedded = _vector_segments(ray_data, missing, todo, job, w.store, run, workers)
    timings = summary.timings
    pending: list[str] = []
    candidates: dict[bytes, str] = {}  # canary candidates of the pending segments (SpaceWriter.adopt)
    last = time.monotonic()
    for rec in embedded.iter_rows():
        pending.append(rec["file"])
        summary.embedded += int(rec["rows"])
        timings["embed"] = timings.get("embed", 0.0) + float(rec["seconds"])
        summary.device = str(rec["device"])
        found = [c for c in str(rec["canaries"]).split("\x1f") if c]
        candidates.update(zip(text_keys(job.recipe.name, found), found))
        if job.progress:
            job.progress(int(rec["rows"]), todo)
        if time.monotonic() - last >= PUBLISH_EVERY_S:
            writer.adopt(pending, candidates)
            summary.batches_committed += 1
            pending, candidates, last = [], {}, time.monotonic()
    if pending:
        writer.adopt(pending, candidates)
        summary.batches_committed += 1


# ----------------------------------------------------------------------------- stage 5: dataset segments


def _dataset_segments(df: Any, store_path: str, dataset: str, recipe: str, run: str) -> Any:
    """Write one batch's new rows, row keys and label updates as segments; name them for the driver."""
    import pandas as pd

    store = Store(store_path)
    out = []
    first = df["id"].iloc[0].encode("utf-8", "surrogatepass")
    new, keyed, moved = (df[df[c].to_numpy() > 0] for c in ("new", "needs_key", "label_update"))
    if len(new):
        name = _content_name(run, "r", first)
        write_segment(
            store.segment_path(name),
            segment_attrs("rows", dataset=dataset),
            {
                "ids": new["id"].to_numpy(object),
                "labels": new["label"].to_numpy(object),
                "digests": np.asarray(new["digest"].tolist(), dtype=KEY_DTYPE),
                "texts": new["text"].tolist(),
            },
        )
        out.append(("rows", name))
    if len(keyed):
        name = _content_name(run, "k", first)
        write_segment(
            store.segment_path(name),
            segment_attrs("keys", dataset=dataset, recipe=recipe),
            {"ids": keyed["id"].to_numpy(object), "keys": np.asarray(keyed["key"].tolist(), dtype=KEY_DTYPE)},
        )
        out.append(("keys", name))
    if len(moved):
        name = _content_name(run, "l", first)
        write_segment(
            store.segment_path(name),
            segment_attrs("labels", dataset=dataset),
            {"ids": moved["id"].to_numpy(object), "labels": moved["label"].to_numpy(object)},
        )
        out.append(("labels", name))
    return pd.DataFrame(out, columns=["kind", "file"])


def _write_dataset_segments(w: Writer, planned: Any, kept: int, job: _Job, run: str) -> None:
    """Stage 5: the workers write the planned rows' new rows, keys and label updates as dataset segments (none
    when no input row was ``kept``); the driver adopts them in one generation."""
    written = (
        planned.map_batches(
            _dataset_segments,
            batch_size=DATASET_SEGMENT_ROWS,
            batch_format="pandas",
            fn_kwargs={"store_path": str(w.store.path), "dataset": job.dataset, "recipe": job.recipe.name, "run": run},
        ).to_pandas()
        if kept
        else None
    )
    names: dict[str, list[str]] = {k: [] for k in ("rows", "keys", "labels")}
    if written is not None and len(written):
        for kind, name in zip(written["kind"], written["file"]):
            names[kind].append(name)
    w.adopt(dataset=job.dataset, rows=names["rows"], keys={job.recipe.name: names["keys"]}, labels=names["labels"])


# ----------------------------------------------------------------------------- the driver


def _connect(address: str | None) -> bool:
    """Join the cluster at ``address`` (or start a local one); True if this call started Ray."""
    import ray

    if ray.is_initialized():
        return False
    quiet = not debug() and "RAY_BACKEND_LOG_LEVEL" not in os.environ
    if quiet:
        # Ray's C++ core worker logs to this process's stderr: an E line for every actor pool ("constructor arguments
        # in the object store and max_restarts > 0": Ray Data's own arguments), which is no error of the ingest.
        # Ours are raised as exceptions. FS_DEBUG=1, or the variable set by the user, shows Ray's log again.
        os.environ["RAY_BACKEND_LOG_LEVEL"] = "fatal"
    pythonpath = os.pathsep.join(p for p in (os.getcwd(), os.environ.get("PYTHONPATH", "")) if p)
    try:
        with native_stderr_without(lambda line: RAY_LEVEL_NOTE in line) if quiet else contextlib.nullcontext():
            ray.init(
                address=address,
                include_dashboard=False,
                log_to_driver=debug(),  # the workers' output, when debugging
                logging_level=logging.ERROR,
                # py: plugins load from the working directory; the user's log choices reach the workers too
                runtime_env={"env_vars": {"PYTHONPATH": pythonpath, **_passed_on(os.environ)}},
            )
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise UsageError(
            f"cannot connect to the Ray cluster at {address!r} ({' '.join(str(exc).split())[:200]}); "
            "fix: check {param} (ray start --head prints it), or leave it out to run a local cluster",
            "address",
        ) from None
    return True


def _passed_on(env: Mapping[str, str]) -> dict[str, str]:
    """The variables of ours (and TensorFlow's) that a Ray worker's process should see as the driver does."""
    return {k: env[k] for k in ("FS_DEBUG", "TF_CPP_MIN_LOG_LEVEL") if k in env}


RAY_LEVEL_NOTE = b"Set ray log level from environment variable RAY_BACKEND_LOG_LEVEL"  # Ray's C++ says it set the level


@contextlib.contextmanager
def _data_context(ray_data: Any) -> Iterator[None]:
    """Ray Data settings for this ingest, restored afterwards (a notebook's own pipelines keep theirs)."""
    ctx = ray_data.DataContext.get_current()
    settings = {
        "enable_progress_bars": False,  # ours reports rows, rate and ETA
        "print_on_execution_start": False,
        "enable_auto_log_stats": False,
        "raise_original_map_exception": True,  # our errors from the workers reach the user as themselves
        # A sorted partition is planned as one batch, so it must stay one block (see _plan_ids).
        "target_max_block_size": MAX_BLOCK_BYTES,
    }
    saved = {k: getattr(ctx, k) for k in settings}
    data_log = logging.getLogger("ray.data")
    level = data_log.level
    for k, v in settings.items():
        setattr(ctx, k, v)
    data_log.setLevel(logging.ERROR)  # our errors say what failed; Ray's log files keep the rest
    try:
        yield
    finally:
        for k, v in saved.items():
            setattr(ctx, k, v)
        data_log.setLevel(level)


def _unwrap(exc: BaseException) -> BaseException:
    """The featurestore error a Ray task raised (Ray wraps it, maybe twice), or ``exc`` itself."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, FeatureStoreError) and not type(seen).__module__.startswith("ray"):
            return seen
        seen = getattr(seen, "cause", None) or seen.__cause__
    return exc


def check_options(
    *,
    fmt: str | None = None,
    encoding: str | None = None,
    header: bool = True,
    duplicates: str = "error",
    quote: str | None = None,
    escape: str | None = None,
) -> None:
    """Refuse the local engine's reading options, before anything is read: Ray Data's readers take none of them
    (they read UTF-8 files with a header, the format by extension, and a repeated id with other content is an
    error), and ignoring one would ingest something other than what was asked."""
    unsupported = [
        p
        for p, given in (
            ("fmt", fmt),
            ("encoding", encoding),
            ("header", not header),
            ("duplicates", duplicates != "error"),
            ("quote", quote is not None),
            ("escape", escape is not None),
        )
        if given
    ]
    if unsupported:
        raise UsageError(
            f"{', '.join(f'[[{p}]]' for p in unsupported)} apply to the local engine only; "
            "Ray Data reads UTF-8 files with a header, by extension; fix: drop them, or use "
            "[[engine]] local",
            unsupported[0],
        )


def ingest_ray(
    store: Store,
    paths: Sequence[str],
    dataset: str,
    model: str,
    recipe: Recipe,
    *,
    embedder: Embedder | None = None,
    text_col: str | None = None,
    id_col: str | None = None,
    label_col: str | None = None,
    sep: str | None = None,
    dtype: str = "float32",
    commit_rows: int | None = None,
    max_chars: int | None = None,
    workers: int | None = None,
    gpus_per_worker: float = 0.0,
    address: str | None = None,
    wait: bool = False,
    progress: ProgressFn | None = None,
) -> IngestSummary:
    """Ingest ``paths`` into ``dataset`` on a Ray cluster; the result equals a local ingest's."""
    t0 = time.perf_counter()
    commit_rows = DEFAULT_COMMIT_ROWS if commit_rows is None else commit_rows
    if commit_rows < 1:
        raise UsageError(f"{{param}} must be at least 1, got {commit_rows}", "commit_rows")
    if workers is not None and workers < 1:
        raise UsageError(f"{{param}} must be at least 1, got {workers}", "workers")
    if gpus_per_worker < 0:
        raise UsageError(f"{{param}} must be 0 or more, got {gpus_per_worker}", "gpus_per_worker")
    _require_ray()
    inputs = _find_inputs(paths, sep, text_col, id_col, label_col)
    embedder = embedder or load_embedder(model, store=store.path)
    max_chars = cut_length(max_chars)
    space = make_space(embedder, model, recipe, dtype)
    job = _Job(dataset, model, recipe, space, embedder, commit_rows, max_chars, gpus_per_worker, progress)
    n_files = len(inputs.files)
    summary = IngestSummary(
        dataset,
        space.id,
        model,
        recipe.name,
        columns={"id": inputs.id, "label": inputs.label, "text": inputs.text},
        source_format=f"{inputs.fmt} (Ray Data, {n_files} file{'s' * (n_files > 1)})",
    )
    _run_on_cluster(store, inputs, job, summary, workers=workers, address=address, wait=wait, t0=t0)
    summary.seconds = time.perf_counter() - t0
    log.info("ray ingest of %s: %s", inputs.source, summary)
    return summary


def _require_ray() -> None:
    """Refuse the Ray engine without Ray Data installed, before any input is read."""
    try:
        import ray  # noqa: F401
        import ray.data  # noqa: F401
    except ImportError:
        raise UsageError(
            "{param} ray needs Ray Data; fix: pip install 'featurestore[ray]' (or pip install 'ray[data]')", "engine"
        ) from None


def _run_on_cluster(
    store: Store,
    inputs: _Inputs,
    job: _Job,
    summary: IngestSummary,
    *,
    workers: int | None,
    address: str | None,
    wait: bool,
    t0: float,
) -> None:
    """Join the cluster at ``address`` (or start a local one, shut down afterwards), size the actor pool, and
    run the stages under the store's writer lock; a Ray error becomes the featurestore error it wraps."""
    import ray
    import ray.data as ray_data

    started = _connect(address)
    try:
        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        gpus = int(ray.cluster_resources().get("GPU", 0))
        if job.gpus_per_worker > gpus:
            raise UsageError(
                f"{{param}} {job.gpus_per_worker:g}, but the Ray cluster has {gpus} GPU(s); fix: drop "
                "{param} to embed on CPUs, or join a cluster with GPUs ([[address]])",
                "gpus_per_worker",
            )
        if workers is None:
            workers = max(1, int(gpus // job.gpus_per_worker)) if job.gpus_per_worker else cpus
        with _data_context(ray_data), store.writer(wait=wait) as w:
            try:
                _run(w, ray_data, inputs, job, summary, workers=workers)
            except KeyboardInterrupt:
                summary.interrupted = True
                summary.seconds = time.perf_counter() - t0
                raise IngestInterrupted(summary) from None
            except ray.exceptions.RayError as exc:
                unwrapped = _unwrap(exc)
                if unwrapped is exc:
                    raise FeatureStoreError(
                        f"the Ray ingest failed ({' '.join(str(exc).split())[:300]}); what was "
                        "published stays; fix: see the Ray logs, then run the same command again "
                        "(only what was not published is embedded)"
                    ) from None
                raise unwrapped from None
    finally:
        if started:
            ray.shutdown()


def _run(w: Writer, ray_data: Any, inputs: _Inputs, job: _Job, summary: IngestSummary, *, workers: int) -> None:
    """The five stages (module docstring), under the writer ``w``; counts and timings go to ``summary``."""
    stored_space = w.snap.spaces.get(job.space.id)
    run = uuid.uuid4().hex[:8]
    timings = summary.timings

    # 1-2: read, clean, key; meet the dataset's stored rows by id.
    t = time.perf_counter()
    planned, tally = _plan_by_id(ray_data, w, _read_and_key(ray_data, inputs, job), job)
    summary.rows_read = tally.rows + tally.repeated
    summary.duplicates = tally.repeated + tally.rows - tally.new
    summary.rows_keyed = tally.rows
    summary.truncated = tally.truncated
    summary.empty_after_cleaning = tally.empty
    timings["plan ids"] = time.perf_counter() - t

    # 3: meet the space's stored keys by key; what is left is embedded once per key.
    t = time.perf_counter()
    missing, todo = _plan_by_key(ray_data, w.store, stored_space, planned)
    summary.cache_hits = tally.rows - todo
    timings["plan keys"] = time.perf_counter() - t

    # 4: embed on the actors; adopt their segments as they finish.
    t = time.perf_counter()
    _embed(w, ray_data, missing, todo, job, stored_space=stored_space, workers=workers, run=run, summary=summary)
    timings["embed stage"] = time.perf_counter() - t

    # 5: dataset rows, keys and labels: every key they name has its vector published now.
    t = time.perf_counter()
    _write_dataset_segments(w, planned, tally.rows, job, run)
    summary.batches_committed += 1
    summary.new_ids = tally.new
    summary.labels_added = tally.label_added
    summary.labels_changed = tally.label_update - tally.label_added
    timings["dataset segments"] = time.perf_counter() - t
    w.compact()
