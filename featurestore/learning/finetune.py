"""``fs tune``, the store's side: which rows a tuning sees, what names its model, how the model is published.

The rows are a labelled dataset's training split, exactly the one ``fs train`` makes with the same test size
and seed (``train.split``), so ``fs train`` on the tuned space scores the validation rows the tuning never
saw; the texts are those rows' stored texts cleaned by the space's recipe and cut as an ingest cuts them (what
the model is later given). The engine (``featurestore.learning.tune``) trains into a temporary folder beside
the published ones; ``tuned.json`` (identity and the sha256 of every file) and ``train-ids.jsonl`` are written,
every file is synced, and one rename publishes the folder: a kill at any point leaves either the complete model
or a ``.tmp-*`` folder, which the next ``fs tune`` and ``fs gc`` remove.

The model's vector space is named by its identity (``embedders.tuned``), so a name is refused for a different
identity, and an identity already published under another name is pointed at, not tuned twice.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from featurestore.embedders import canonical_model, default_recipe
from featurestore.embedders.checksums import cached_file_sha256, file_sha256
from featurestore.embedders.minilm import _model_dir as minilm_dir
from featurestore.embedders.minilm import minilm_fingerprint
from featurestore.embedders.tuned import (
    BASES,
    FORMAT,
    META,
    PREFIX,
    TRAIN_IDS,
    TunedModel,
    check_name,
    is_tuned,
    list_tuned,
    open_tuned,
    tuned_root,
)
from featurestore.errors import ModelError, StoreError, UsageError
from featurestore.inputs.clean import get_recipe
from featurestore.learning import train as training
from featurestore.progress import ProgressFn
from featurestore.spaces import cut_length, key_texts
from featurestore.storage.atomic import atomic_write_bytes, fsync_dir
from featurestore.storage.keys import space_fields, space_id
from featurestore.storage.store import Store

TMP_PREFIX = ".tmp-"
#: an interrupted tuning's folder older than this is removed even when its process id is alive again
STALE_S = 24 * 3600


@dataclass
class TuneResult:
    name: str  # tuned:NAME is its model name
    path: str
    dataset: str
    base_model: str
    recipe: str
    space: str  # the id of the vector space its vectors go into
    classes: list[str]
    n_train: int
    n_valid: int
    method: str
    params: dict[str, Any]
    steps: int
    steps_planned: int
    stopped_early: bool  # by the time limit
    seconds: float
    loss_first: float
    loss_last: float
    reused: bool = False  # already tuned with these inputs: nothing was trained
    warnings: list[str] = field(default_factory=list)
    embedded: Any = None  # the IngestSummary of embedding the dataset into its space (FeatureStore.tune)

    @property
    def model(self) -> str:
        return PREFIX + self.name


def _labels_sha256(labels: np.ndarray) -> str:
    return hashlib.sha256(json.dumps([str(v) for v in labels.tolist()]).encode("utf-8", "surrogatepass")).hexdigest()


def _same_inputs(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Two identities naming the same tuning, before it ran (steps run and early stops aside)."""
    drop = ("steps",)
    return {k: v for k, v in a.items() if k not in drop} == {k: v for k, v in b.items() if k not in drop}


def remove_interrupted(store_path: Path) -> list[str]:
    """Folders of tunings that did not finish (their process is gone, or a day old): removed, names returned."""
    root = tuned_root(store_path)
    removed = []
    for p in sorted(root.iterdir()) if root.is_dir() else []:
        if not (p.name.startswith(TMP_PREFIX) and p.is_dir()):
            continue
        try:
            pid = int(p.name.rsplit("-", 2)[-2])
        except (ValueError, IndexError):
            pid = -1
        alive = pid > 0 and Path(f"/proc/{pid}").exists() and pid != os.getpid()
        if alive and time.time() - p.stat().st_mtime < STALE_S:
            continue
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p.name)
    return removed


def _publish(tmp: Path, final: Path, meta: dict[str, Any], train_ids: np.ndarray) -> None:
    """Write the record files into ``tmp``, sync everything, and rename it to ``final`` (one step)."""
    files = {
        p.relative_to(tmp).as_posix(): file_sha256(p)
        for p in sorted(tmp.rglob("*"))
        if p.is_file() and p.name not in (META, TRAIN_IDS)
    }
    if "model.safetensors" not in files:
        raise ModelError(f"the tuning wrote no model.safetensors into {tmp}; fix: report this as a bug")
    meta = {**meta, "files": files}
    ids_text = "".join(json.dumps(str(i), ensure_ascii=False) + "\n" for i in train_ids.tolist())
    atomic_write_bytes(tmp / TRAIN_IDS, ids_text.encode("utf-8", "surrogatepass"))
    atomic_write_bytes(tmp / META, json.dumps(meta, indent=1, sort_keys=True).encode())
    for p in tmp.rglob("*"):
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    for d in sorted({p.parent for p in tmp.rglob("*")} | {tmp}, key=lambda d: -len(d.parts)):
        fsync_dir(d)
    try:
        os.rename(tmp, final)
    except OSError as exc:
        raise StoreError(
            f"cannot publish tuned model {final.name!r} at {final} ({exc.strerror}): another fs tune published "
            "that name meanwhile; fix: use another [[name]]"
        ) from None
    fsync_dir(final.parent)


def tune(
    store: Store,
    dataset: str,
    name: str,
    *,
    model: str = "minilm",
    clean: str | None = None,
    test_size: float = 0.2,
    seed: int = 42,
    method: str | None = None,
    epochs: float | None = None,
    time_limit: float | None = None,
    max_chars: int | None = None,
    progress: ProgressFn | None = None,
    engine: Callable[..., Any] | None = None,
) -> TuneResult:
    """Fine-tune ``model`` on ``dataset``'s training split (``test_size``, ``seed`` as ``fs train``) and publish it
    as ``tuned:NAME`` in the store. ``engine``: the training function (default ``tune.fine_tune``; tests pass a
    fake that counts what it is given)."""
    from featurestore.learning import tune as tuning  # torch and sentence-transformers, on use

    t0 = time.perf_counter()
    check_name(name)
    model = canonical_model(model)
    if model not in BASES:
        raise UsageError(
            f"fs tune starts from {', '.join(BASES)}, not {{param}} {model!r} (its weights are what the tuning "
            "changes); fix: --model minilm",
            "model",
        )
    changed: dict[str, Any] = {"seed": seed}
    if method is not None:
        changed["method"] = method
    if epochs is not None:
        changed["epochs"] = float(epochs)
    params = dataclasses.replace(tuning.TuneParams(), **changed)
    params.check()
    recipe = get_recipe(clean or default_recipe(model))
    store.require_existing()
    training._require_writable(store)
    snap = store.snapshot()
    ds = store.dataset(dataset, snap)
    ids, labels, keep = training.labelled_ids(store, ds)
    classes, _ = training.classes_of(labels, dataset)
    tr, va, warnings = training.split(labels, classes, test_size, seed)
    cut = cut_length(max_chars)
    base_dir = minilm_dir()
    base_fp = minilm_fingerprint(cached_file_sha256(base_dir / "model.safetensors")).as_dict()
    identity: dict[str, Any] = {
        "format": FORMAT,
        "base_model": model,
        "rows_sha256": training.ids_hash(ids[tr]),
        "labels_sha256": _labels_sha256(labels[tr]),
        "classes": classes,
        "seed": seed,
        "recipe": recipe.name,
        "max_chars": cut,
        "engine": tuning.TUNE_VERSION,
        "params": params.as_dict(),
    }
    root = tuned_root(store.path)
    final = root / name
    if (final / META).is_file():
        existing = open_tuned(store.path, name)
        if _same_inputs(existing.identity, identity):
            return _result_of(existing, time.perf_counter() - t0, reused=True, warnings=warnings)
        raise UsageError(
            f"tuned model {name!r} already exists in store {store.path}, tuned on other rows, labels or settings "
            f"(its dataset {existing.meta.get('split', {}).get('dataset')!r}); a name keeps one vector space; "
            "fix: choose another {param}",
            "name",
        )
    for other in list_tuned(store.path):
        if _same_inputs(other.identity, identity) and not other.meta.get("stopped_early"):
            raise UsageError(
                f"tuned model {other.name!r} in store {store.path} was tuned on these rows with these settings; "
                f"fix: use --model tuned:{other.name}, or tune with another --seed",
                "name",
            )
    texts = store.dataset_texts(ds)[keep][tr]
    keyed = key_texts(recipe, [str(t) for t in texts.tolist()], cut)
    root.mkdir(parents=True, exist_ok=True)
    remove_interrupted(store.path)
    tmp = root / f"{TMP_PREFIX}{name}-{os.getpid()}-{os.urandom(4).hex()}"
    tmp.mkdir()
    try:
        report = (engine or tuning.fine_tune)(
            base_dir,
            keyed.cleaned,
            [str(v) for v in labels[tr].tolist()],
            tmp,
            params,
            time_limit=time_limit,
            progress=progress,
        )
        identity["steps"] = int(report.steps)
        meta = {
            "format": FORMAT,
            "name": name,
            "base_model": model,
            "base_fingerprint": base_fp,
            "recipe": recipe.name,
            "recipe_fingerprint": recipe.fingerprint(),
            "identity": identity,
            "split": {
                "dataset": dataset,
                "test_size": test_size,
                "seed": seed,
                "n_train": len(tr),
                "n_valid": len(va),
            },
            "report": {
                "steps": int(report.steps),
                "steps_planned": int(report.steps_planned),
                "seconds": float(report.seconds),
                "loss_first": float(report.loss_first),
                "loss_last": float(report.loss_last),
            },
            "stopped_early": bool(report.stopped_early),
            "created_at": training.trained_now(),
        }
        _publish(tmp, final, meta, ids[tr])
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _result_of(open_tuned(store.path, name), time.perf_counter() - t0, warnings=warnings)


def _result_of(m: TunedModel, seconds: float, *, reused: bool = False, warnings: list[str] | None = None) -> TuneResult:
    meta = m.meta
    report, split = meta["report"], meta["split"]
    identity = m.identity
    return TuneResult(
        name=m.name,
        path=str(m.path),
        dataset=split["dataset"],
        base_model=meta["base_model"],
        recipe=meta["recipe"],
        # the space its float32 vectors go into: the loaded model's fingerprint, as an ingest names it
        space=space_id(space_fields(m.fingerprint(), meta["recipe_fingerprint"], "float32")),
        classes=list(identity["classes"]),
        n_train=int(split["n_train"]),
        n_valid=int(split["n_valid"]),
        method=str(identity["params"].get("method", "")),
        params=dict(identity["params"]),
        steps=int(report["steps"]),
        steps_planned=int(report["steps_planned"]),
        stopped_early=bool(meta["stopped_early"]),
        seconds=seconds if not reused else 0.0,
        loss_first=float(report["loss_first"]),
        loss_last=float(report["loss_last"]),
        reused=reused,
        warnings=list(warnings or []),
    )


def seen_by_tuning(store_path: Path, model: str, ids: np.ndarray) -> tuple[str, int] | None:
    """For a ``tuned:NAME`` space, how many of ``ids`` (validation rows) its tuning trained on: (name, count), or
    None when the model is not tuned or saw none of them."""
    if not is_tuned(model):
        return None
    try:
        m = open_tuned(store_path, model.split(":", 1)[1])
        seen = set(m.train_ids())
    except (ModelError, OSError, ValueError):
        return None
    count = sum(1 for i in ids.tolist() if str(i) in seen)
    return (m.name, count) if count else None


__all__ = ["TuneResult", "remove_interrupted", "seen_by_tuning", "tune"]
