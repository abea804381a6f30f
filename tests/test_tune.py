"""`fs tune`, the store's side (featurestore/learning/finetune.py, embedders/tuned.py), with a fake engine that
records what it is given: the rows a tuning sees, the identity that names its space, publishing, a kill."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from featurestore.api import FeatureStore
from featurestore.embedders import tuned
from featurestore.errors import ModelError, UsageError
from featurestore.learning import finetune
from featurestore.learning import train as training
from tests.conftest import FAKE, ROOT, train_rows, write_csv


class Engine:
    """A fake ``tune.fine_tune``: records texts and labels, writes a small weights file named by its inputs."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], list[str]]] = []

    def __call__(self, base_dir: Path, texts: Any, labels: Any, out_dir: Path, params: Any, **kw: Any) -> Any:
        self.calls.append((list(texts), list(labels)))
        digest = hashlib.sha256(json.dumps([list(texts), list(labels), params.as_dict()]).encode()).digest()
        (out_dir / "model.safetensors").write_bytes(digest * 8)
        (out_dir / "config.json").write_text("{}")
        if kw.get("progress"):
            kw["progress"](3, 3)
        done = {"steps": 3, "steps_planned": 3, "seconds": 0.01, "stopped_early": False}
        return SimpleNamespace(**done, loss_first=1.0, loss_last=0.5)


def _store(tmp_path: Path, rows: list[dict[str, str]], name: str = "store") -> FeatureStore:
    fs = FeatureStore(tmp_path / name)
    fs.ingest(str(write_csv(tmp_path / f"{name}.csv", rows)), "train", model=FAKE)
    return fs


@pytest.fixture
def rows() -> list[dict[str, str]]:
    return train_rows(120)


def test_tuning_is_given_the_training_split_of_fs_train_and_nothing_of_its_validation_rows(
    tmp_path: Path, rows: list[dict[str, str]]
) -> None:
    rows[5]["label"] = ""  # an unlabelled row is neither trained on nor split
    fs = _store(tmp_path, rows)
    engine = Engine()
    r = fs.tune("train", "t1", engine=engine, embed=False)
    labelled = [row for row in rows if row["label"]]
    labels = np.array([row["label"] for row in labelled], dtype=object)
    tr, va, _ = training.split(labels, sorted(set(labels)), 0.2, 42)
    ((texts, got_labels),) = engine.calls
    assert texts == [labelled[i]["tweet"].strip() for i in tr]  # raw-v1: the text as given
    assert got_labels == [labelled[i]["label"] for i in tr]
    seen = set(texts)
    assert not seen & {labelled[i]["tweet"].strip() for i in va} - {labelled[i]["tweet"].strip() for i in tr}
    assert (r.n_train, r.n_valid) == (len(tr), len(va))
    assert tuned.open_tuned(fs.path, "t1").train_ids() == [labelled[i]["id"] for i in tr]


def test_same_inputs_name_the_same_space_and_each_input_changes_it(tmp_path: Path, rows: list[dict[str, str]]) -> None:
    a = _store(tmp_path, rows, "a").tune("train", "m", engine=Engine(), embed=False)
    b = _store(tmp_path, rows, "b").tune("train", "m", engine=Engine(), embed=False)
    assert a.space == b.space
    assert _store(tmp_path, rows, "c").tune("train", "m", seed=7, engine=Engine(), embed=False).space != a.space
    labels = np.array([row["label"] for row in rows], dtype=object)
    tr, va, _ = training.split(labels, sorted(set(labels)), 0.2, 42)
    flipped = [dict(row) for row in rows]
    flipped[int(tr[0])]["label"] = "1" if rows[int(tr[0])]["label"] == "0" else "0"
    assert _store(tmp_path, flipped, "d").tune("train", "m", engine=Engine(), embed=False).space != a.space
    fewer = [row for i, row in enumerate(rows) if i != int(tr[1])]  # another training row set (and split)
    assert _store(tmp_path, fewer, "e").tune("train", "m", engine=Engine(), embed=False).space != a.space
    # a validation row's label is not an input of the tuning
    valid_flipped = [dict(row) for row in rows]
    valid_flipped[int(va[0])]["label"] = "1" if rows[int(va[0])]["label"] == "0" else "0"
    assert _store(tmp_path, valid_flipped, "f").tune("train", "m", engine=Engine(), embed=False).space == a.space


def test_the_space_id_is_the_one_the_loaded_model_writes(tmp_path: Path, rows: list[dict[str, str]]) -> None:
    fs = _store(tmp_path, rows)
    r = fs.tune("train", "m", engine=Engine(), embed=False)
    model = tuned.open_tuned(fs.path, "m")
    from featurestore.inputs.clean import get_recipe
    from featurestore.storage.keys import space_fields, space_id

    assert space_id(space_fields(model.fingerprint(), get_recipe("raw-v1").fingerprint(), "float32")) == r.space
    assert model.fingerprint()["tuning"]["rows_sha256"] == model.identity["rows_sha256"]


def test_a_name_keeps_one_identity(tmp_path: Path, rows: list[dict[str, str]]) -> None:
    fs = _store(tmp_path, rows)
    engine = Engine()
    first = fs.tune("train", "m", engine=engine, embed=False)
    again = fs.tune("train", "m", engine=engine, embed=False)
    assert again.reused and again.space == first.space and len(engine.calls) == 1  # nothing trained twice
    with pytest.raises(UsageError, match="already exists.*choose another"):
        fs.tune("train", "m", seed=1, engine=engine, embed=False)
    seeded = fs.tune("train", "m-seed1", seed=1, engine=engine, embed=False)  # the fix: another name
    assert seeded.space != first.space and len(engine.calls) == 2
    with pytest.raises(UsageError, match="'m' .*tuned on these rows.*--model tuned:m, or tune with another --seed"):
        fs.tune("train", "other", engine=engine, embed=False)
    from featurestore.embedders import load_embedder

    assert (
        dict(load_embedder("tuned:m", store=fs.path).fingerprint)["tuning"] == tuned.open_tuned(fs.path, "m").identity
    )
    assert fs.tune("train", "other", seed=2, engine=engine, embed=False).space not in (first.space, seeded.space)
    with pytest.raises(UsageError, match="cannot name a tuned model"):
        fs.tune("train", "../x", engine=engine, embed=False)
    with pytest.raises(UsageError, match="starts from minilm.*fix: --model minilm"):
        fs.tune("train", "x", model="elmo", engine=engine, embed=False)
    assert fs.tune("train", "x", model="minilm", seed=3, engine=engine, embed=False).name == "x"
    with pytest.raises(UsageError, match=r"epochs must be a positive number, not 0.0; fix: e.g. 2.5"):
        fs.tune("train", "y", epochs=0, engine=engine, embed=False)
    assert fs.tune("train", "y", epochs=2.5, seed=4, engine=engine, embed=False).params["epochs"] == 2.5  # the fix
    assert len(engine.calls) == 5


def test_check_verifies_the_files_and_a_changed_one_is_an_error(tmp_path: Path, rows: list[dict[str, str]]) -> None:
    fs = _store(tmp_path, rows)
    first = fs.tune("train", "m", engine=Engine(), embed=False)
    report = fs.check()
    assert report.ok, report.errors
    assert report.stats["tuned_models"] == 1
    assert any("tuned model 'm'" in n for n in fs.check(quick=True).not_verified)
    weights = tuned.tuned_root(fs.path) / "m" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[::-1])
    assert any("model.safetensors changed" in e for e in fs.check().errors)
    with pytest.raises(ModelError, match="changed since it was tuned; fix: delete the folder .* run fs tune --name m"):
        tuned.load_tuned("tuned:m", fs.path)
    import shutil

    shutil.rmtree(tuned.tuned_root(fs.path) / "m")  # the fix: the same rows and seed, the same space
    again = fs.tune("train", "m", engine=Engine(), embed=False)
    assert again.space == first.space and not again.reused
    assert fs.check().ok


def test_a_tuned_model_needs_its_store_and_an_unknown_one_lists_what_there_is(
    tmp_path: Path, rows: list[dict[str, str]]
) -> None:
    from featurestore.embedders import load_embedder

    fs = _store(tmp_path, rows)
    fs.tune("train", "m", engine=Engine(), embed=False)
    with pytest.raises(ModelError, match="lives in a store; fix: name the store"):
        load_embedder("tuned:m")
    assert load_embedder("tuned:m", store=fs.path).name == "tuned:m"  # the fix
    with pytest.raises(ModelError, match=r"no tuned model 'n' \(tuned models there: m\).*fs tune .*--name n"):
        load_embedder("tuned:n", store=fs.path)
    fs.tune("train", "n", seed=5, engine=Engine(), embed=False)  # the fix
    assert load_embedder("tuned:n", store=fs.path).name == "tuned:n"


def test_training_on_a_split_the_tuning_saw_warns(tmp_path: Path, rows: list[dict[str, str]]) -> None:
    """`fs train` on a tuned space with another seed scores rows the tuning trained on: said, with the fix."""
    fs = _store(tmp_path, rows)
    fs.tune("train", "m", engine=Engine(), embed=False)
    ds = fs.store.dataset("train", fs.store.snapshot())
    assert fs._seen_by_tuning(ds, ["tuned:m"], 0.2, 42) == []
    (warning,) = fs._seen_by_tuning(ds, ["tuned:m"], 0.2, 7)
    assert "validation rows were training rows of tuned model 'm'" in warning and "--seed" in warning
    assert fs._seen_by_tuning(ds, [FAKE], 0.2, 7) == []


_SLOW_TUNE = """
import sys, time
from pathlib import Path
from types import SimpleNamespace
from featurestore.api import FeatureStore

def engine(base_dir, texts, labels, out_dir, params, **kw):
    (out_dir / "model.safetensors").write_bytes(b"partial")
    print("training", flush=True)
    time.sleep(60)
    return SimpleNamespace(steps=1, steps_planned=1, seconds=1, stopped_early=False, loss_first=1, loss_last=1)

FeatureStore(sys.argv[1]).tune("train", "m", engine=engine, embed=False)
"""


def test_a_kill_during_tuning_leaves_no_model_and_a_sound_store(tmp_path: Path, rows: list[dict[str, str]]) -> None:
    fs = _store(tmp_path, rows)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", _SLOW_TUNE, str(fs.path)], stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "training"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert tuned.list_tuned(fs.path) == []
    left = [p.name for p in tuned.tuned_root(fs.path).iterdir()]
    assert len(left) == 1 and left[0].startswith(".tmp-m-")
    report = fs.check()
    assert report.ok, report.errors
    assert any("interrupted fs tune" in w for w in report.warnings)
    with pytest.raises(ModelError, match="no tuned model 'm'"):
        tuned.load_tuned("tuned:m", fs.path)
    fs.gc()
    assert list(tuned.tuned_root(fs.path).iterdir()) == []
    r = fs.tune("train", "m", engine=Engine(), embed=False)  # and tuning again works
    assert not r.reused and tuned.list_tuned(fs.path)[0].name == "m"


def test_a_failing_engine_leaves_nothing(tmp_path: Path, rows: list[dict[str, str]]) -> None:
    fs = _store(tmp_path, rows)

    def broken(*a: Any, **kw: Any) -> Any:
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError):
        fs.tune("train", "m", engine=broken, embed=False)
    assert list(tuned.tuned_root(fs.path).iterdir()) == []


def test_interrupted_folders_of_live_tunings_are_kept(tmp_path: Path) -> None:
    root = tuned.tuned_root(tmp_path)
    root.mkdir(parents=True)
    live = root / f".tmp-a-{os.getppid()}-0000"  # a live process that is not this one
    dead = root / ".tmp-b-999999999-0000"
    live.mkdir()
    dead.mkdir()
    assert finetune.remove_interrupted(tmp_path) == [dead.name]
    os.utime(live, (time.time() - 2 * finetune.STALE_S,) * 2)
    assert finetune.remove_interrupted(tmp_path) == [live.name]
