"""Distributed ingest on a real local Ray cluster (2 CPUs): same answers as a local ingest, faults survived.

One cluster serves the module (starting one takes seconds); the driver-kill test runs ``fs ingest
--engine ray --address`` as a separate driver process against it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from featurestore.api import FeatureStore
from featurestore.check import check
from featurestore.errors import DatasetError, InputFileError, UsageError
from featurestore.storage.store import Store
from tests.conftest import FAKE, ROOT, train_rows, write_csv
from tests.ray_fakes import embedded_count

ray = pytest.importorskip(
    "ray", reason="the ray extra is part of `make setup`; without it --engine ray says how to install"
)
# The real-model test runs MiniLM in-process too (its local ingest), so the file goes with MiniLM's: torch and
# transformers are imported once. Not pinned to the worker's share of the cores: the module's Ray cluster must
# have every core it was given.
pytestmark = pytest.mark.framework("minilm", pin_cores=False)

SCRIPTED = "py:tests.ray_fakes:ScriptedEmbedder"
RECIPE = "basic-v1"  # no spaCy in the workers: keeps the module fast; tweet-v1 runs in the real-model test


# Ray settings for this test cluster (a cluster that users start keeps Ray's defaults):
# - Ray Data runs sort's map and reduce tasks in worker pools of their own, and on a 2-CPU node Ray keeps
#   only 2 idle workers, so every sort and the task after it waited for a new worker process (~2 s and
#   ~2 CPU-seconds each; an ingest sorts twice): 8 keep the tasks', the shuffle maps' and the shuffle
#   reduces' workers alive. The module alone: 151 s before, 73 s with this.
# - Ray lowers its workers' priority (nice 15), so beside the other pytest-xdist worker (nice 0) they got
#   what CPU was left: 232 s against 135 s at nice 0, beside a busy loop on a busy 2-core machine.
# Under `make test` the module went from 228 s to 83 s on its worker (481 -> 335 CPU-seconds for the suite).
# - No worker processes started ahead of tasks (when a driver connects, or for a queue of tasks): the
#   module started 27 worker processes, 6 of which never ran a task or an actor; 24 without prestarting
#   (a worker's start costs ~1.5 CPU-seconds).
TEST_CLUSTER = {
    "num_workers_soft_limit": 8,
    "worker_niceness": 0,
    "prestart_worker_first_driver": False,
    "enable_worker_prestart": False,
}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    script = tmp_path_factory.mktemp("ray") / "script.json"
    script.write_text("{}")
    os.environ["FS_TEST_SCRIPT"] = str(script)  # inherited by the cluster's worker processes
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        logging_level="ERROR",
        runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}},
        _system_config=TEST_CLUSTER,
    )
    yield {"script": script, "address": ray.get_runtime_context().gcs_address}
    ray.shutdown()
    del os.environ["FS_TEST_SCRIPT"]


def set_script(cluster: dict, **script) -> None:
    cluster["script"].write_text(json.dumps(script))


def contents(path: Path, dataset: str = "train") -> tuple[dict, dict]:
    """{key: vector} of the one space and {id: (label, text)} of ``dataset``: order-free, comparable."""
    store = Store(path)
    snap = store.snapshot()
    (space,) = snap.spaces.values()
    keys = store.space_keys(space)
    vectors = store.read_vectors(space, np.arange(len(keys)))
    rows = FeatureStore(path).rows(dataset)
    return (
        {k: v for k, v in zip(keys.tolist(), vectors)},
        {i: (label, t) for i, label, t in zip(rows["ids"].tolist(), rows["labels"].tolist(), rows["texts"].tolist())},
    )


def assert_same_store(a: Path, b: Path) -> None:
    va, ra = contents(a)
    vb, rb = contents(b)
    assert ra == rb
    assert va.keys() == vb.keys()
    assert max(float(np.abs(va[k] - vb[k]).max()) for k in va) <= 1e-6
    assert check(Store(a)).ok and check(Store(b)).ok


def two_files(tmp_path: Path, rows: list[dict]) -> tuple[list[Path], Path]:
    """``rows`` split over two CSVs (for a glob) and the same rows in one CSV (for the local engine)."""
    half = len(rows) // 2
    parts = [write_csv(tmp_path / "in" / f"part-{i}.csv", r) for i, r in enumerate((rows[:half], rows[half:]))]
    return parts, write_csv(tmp_path / "all.csv", rows)


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    (tmp_path / "in").mkdir()
    return tmp_path


def test_ray_ingest_equals_local_and_updates_like_it(cluster, inputs: Path) -> None:
    rows = train_rows(300)
    rows += [dict(rows[3]), dict(rows[10])]  # exact repeats: dropped as duplicates
    rows.append({"id": "x-7", "label": "", "tweet": rows[5]["tweet"]})  # same text, new id: embedded once
    parts, whole = two_files(inputs, rows)
    ray_fs, local_fs = FeatureStore(inputs / "ray"), FeatureStore(inputs / "local")
    r = ray_fs.ingest(str(inputs / "in" / "*.csv"), "train", SCRIPTED, RECIPE, engine="ray", workers=2, commit_rows=64)
    loc = local_fs.ingest(str(whole), "train", FAKE, RECIPE)
    assert (r.rows_read, r.new_ids, r.duplicates, r.embedded) == (
        loc.rows_read,
        loc.new_ids,
        loc.duplicates,
        loc.embedded,
    )
    assert r.batches_committed >= 2  # vectors published before the dataset rows
    assert_same_store(inputs / "ray", inputs / "local")

    # A later file: changed and added labels, new rows, rows already stored.
    update = [dict(x) for x in rows[:40]]
    for x in update[:5]:
        x["label"] = "changed"
    update[39]["label"] = "1" if update[39]["label"] != "1" else "0"
    update += [
        {"id": f"new-{i}", "label": "1", "tweet": f"a brand new tweet about {w}"}
        for i, w in enumerate(
            "phones tablets laptops watches cameras chargers cables screens apps games cases mice".split()
        )
    ]
    up = write_csv(inputs / "update.csv", update)
    r2 = ray_fs.ingest(str(up), "train", SCRIPTED, RECIPE, engine="ray", workers=1)
    loc2 = local_fs.ingest(str(up), "train", FAKE, RECIPE)
    assert (r2.new_ids, r2.labels_added, r2.labels_changed, r2.embedded) == (
        loc2.new_ids,
        loc2.labels_added,
        loc2.labels_changed,
        loc2.embedded,
    )
    assert r2.new_ids == 12 and r2.labels_changed == 6 and r2.embedded == 12
    assert_same_store(inputs / "ray", inputs / "local")

    # Conflicts are refused before anything is written.
    generation = Store(inputs / "ray").snapshot().generation
    clash = [dict(rows[0], tweet="a different text under an existing id")]
    with pytest.raises(DatasetError, match=f"id '{rows[0]['id']}' is already in dataset 'train'"):
        ray_fs.ingest(str(write_csv(inputs / "b.csv", clash)), "train", SCRIPTED, RECIPE, engine="ray", workers=1)
    twice = [{"id": "q1", "label": "0", "tweet": "one text"}, {"id": "q1", "label": "0", "tweet": "another text"}]
    with pytest.raises(InputFileError, match="sharing id 'q1'"):
        ray_fs.ingest(str(write_csv(inputs / "c.csv", twice)), "train", SCRIPTED, RECIPE, engine="ray", workers=1)
    assert Store(inputs / "ray").snapshot().generation == generation
    assert check(Store(inputs / "ray")).ok


def test_killed_driver_then_killed_actor_nothing_lost_or_embedded_twice(cluster, inputs: Path) -> None:
    """A driver SIGKILLed mid-run leaves a store that passes check; the re-run, during which an actor's
    process is SIGKILLed (Ray restarts it and retries its batch), embeds exactly what was not committed."""
    log = inputs / "embedded.log"
    rows = train_rows(400)
    parts, whole = two_files(inputs, rows)
    path = inputs / "ray"
    set_script(cluster, delay=0.5, log=str(log))
    cmd = [
        sys.executable,
        "-m",
        "cli.main",
        "ingest",
        *map(str, parts),
        "--engine",
        "ray",
        "--address",
        cluster["address"],
        "--workers",
        "1",
        "--batch-rows",
        "20",
        "--model",
        SCRIPTED,
        "--clean",
        RECIPE,
        "--store",
        str(path),
    ]
    env = {k: v for k, v in os.environ.items() if k not in ("FS_DEBUG", "RAY_BACKEND_LOG_LEVEL")}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        published = 0
        while time.monotonic() < deadline and proc.poll() is None:
            if Store(path).manifest_generations():
                snap = Store(path).snapshot()
                published = sum(sp.rows for sp in snap.spaces.values())
                if published:
                    break
            time.sleep(0.2)
        assert published, proc.communicate()[0].decode()[-2000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        # Ray's C++ core worker logs an E line when the actor pool starts (before the first publish): a driver
        # started by fs ingest shows only its own output unless FS_DEBUG=1
        said = proc.stdout.read().decode() if proc.stdout else ""
        assert not [line for line in said.splitlines() if ".cc:" in line], said[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
        set_script(cluster)
    report = check(Store(path))
    assert report.ok, report.errors
    store = Store(path)
    committed = sum(sp.rows for sp in store.snapshot().spaces.values())
    FeatureStore(inputs / "local").ingest(str(whole), "train", FAKE, RECIPE)
    distinct = len(contents(inputs / "local")[0])
    assert 0 < committed < distinct, "the kill should land mid-run"
    before = embedded_count(str(log))
    marker = inputs / "killed"
    set_script(cluster, log=str(log), kill_once=str(marker), spare_pid=os.getpid())
    try:
        r = FeatureStore(path).ingest(
            [str(p) for p in parts], "train", SCRIPTED, RECIPE, engine="ray", workers=2, commit_rows=64
        )
    finally:
        set_script(cluster)
    assert marker.exists()  # an actor's process really died mid-run
    assert r.embedded == distinct - committed
    (space,) = Store(path).snapshot().spaces.values()
    drift_check = len(space.canaries)  # the driver re-embeds the space's canary texts before adding to it
    assert embedded_count(str(log)) - before == distinct - committed + drift_check  # nothing committed embedded again
    assert_same_store(path, inputs / "local")
    assert not [
        n
        for n in os.listdir(path / "segments")
        if n not in store.kept_files(Store(path).snapshot()) and n.startswith(".tmp-")
    ]


def test_inputs_the_ray_engine_cannot_take_are_named_before_any_work(tmp_path: Path) -> None:
    fs = FeatureStore(tmp_path / "s")
    no_ids = write_csv(tmp_path / "noid.csv", train_rows(3), fields=("label", "tweet"))
    with pytest.raises(InputFileError, match="needs ids"):
        fs.ingest(str(no_ids), "train", FAKE, RECIPE, engine="ray")
    with pytest.raises(UsageError, match="encoding, header=False apply to the local engine only"):
        fs.ingest(str(no_ids), "train", FAKE, RECIPE, engine="ray", encoding="cp1252", header=False)
    with pytest.raises(InputFileError, match="no file matches"):
        fs.ingest(str(tmp_path / "nothing-*.csv"), "train", FAKE, RECIPE, engine="ray")
    (tmp_path / "notes.txt").write_text("hello\n")
    with pytest.raises(InputFileError, match="reads .csv, .tsv"):
        fs.ingest(str(tmp_path / "notes.txt"), "train", FAKE, RECIPE, engine="ray")
    with pytest.raises(UsageError, match="reads one file per call"):
        fs.ingest([str(no_ids), str(no_ids)], "train", FAKE, RECIPE)
    assert not (tmp_path / "s").exists()


def test_cli_errors_are_one_line_with_flags(tmp_path: Path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "cli.main",
            "ingest",
            str(tmp_path / "x.csv"),
            "--engine",
            "ray",
            "--encoding",
            "latin-1",
            "--store",
            str(tmp_path / "s"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 1
    assert out.stderr.strip().count("\n") == 0, out.stderr
    assert "--encoding apply to the local engine only" in out.stderr and "--engine local" in out.stderr


@pytest.mark.slow
def test_real_model_on_ray_matches_local(cluster, inputs: Path) -> None:
    rows = train_rows(48)
    parts, whole = two_files(inputs, rows)
    r = FeatureStore(inputs / "ray").ingest([str(p) for p in parts], "train", "minilm", engine="ray", workers=1)
    FeatureStore(inputs / "local").ingest(str(whole), "train", "minilm")
    assert r.embedded == 48
    assert_same_store(inputs / "ray", inputs / "local")


def test_local_engine_ingests_several_files_in_turn(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cli.main import app

    rows = train_rows(20)
    a = write_csv(tmp_path / "a.csv", rows[:12])
    b = write_csv(tmp_path / "b.csv", rows[8:])  # 4 rows repeat a.csv's
    r = CliRunner().invoke(
        app, ["ingest", str(a), str(b), "--model", FAKE, "--clean", RECIPE, "--store", str(tmp_path / "s")]
    )
    assert r.exit_code == 0, r.output
    assert f"== {a}" in r.output and f"== {b}" in r.output
    assert "new ids 12" in r.output and "new ids 8  duplicates 4" in r.output
    assert len(FeatureStore(tmp_path / "s").rows("train")["ids"]) == 20


def test_ray_data_reads_jsonl_and_parquet_with_ids_as_text(cluster, tmp_path: Path) -> None:
    import pandas as pd
    import ray.data

    from featurestore.ingestion import distributed

    frame = pd.DataFrame(
        {
            "tweet_id": ["000123", "a1b2", "99999999999999999999"],
            "Sentiment": ["pos", "", "neg"],
            "Text": ["first tweet", "second, with a comma", 'third "quoted"'],
        }
    )
    frame.to_parquet(tmp_path / "t.parquet")
    (tmp_path / "t.jsonl").write_text(
        '{"id": 7, "label": 1, "text": "seven"}\n{"id": 8, "label": null, "text": "eight"}\n'
    )
    for path, expect in (
        (tmp_path / "t.parquet", list(zip(frame["tweet_id"], frame["Sentiment"], frame["Text"]))),
        (tmp_path / "t.jsonl", [("7", "1", "seven"), ("8", "", "eight")]),
    ):
        fmt = distributed._format_of(str(path))
        cols = distributed._columns(str(path), fmt, None)
        text = distributed.pick_column(cols, None, distributed.TEXT_COLUMNS, set(), "text", "", str(path))
        ident = distributed.pick_column(cols, None, distributed.ID_COLUMNS, {text}, "id", "", str(path))
        label = distributed.pick_column(cols, None, distributed.LABEL_COLUMNS, {text, ident}, "label", "", str(path))
        rows = distributed._read([str(path)], fmt, None, cols, text, ident, label, ray.data).take_all()
        assert sorted((r["id"], r["label"], r["text"]) for r in rows) == sorted(expect)


def test_an_error_raised_in_a_worker_reaches_the_user_as_itself(cluster, tmp_path: Path) -> None:
    rows = [{"id": "1", "label": "0", "tweet": "fine"}, {"id": "", "label": "0", "tweet": "no id here"}]
    fs = FeatureStore(tmp_path / "s")
    with pytest.raises(InputFileError, match="empty id; the Ray engine needs an id on every row"):
        fs.ingest(str(write_csv(tmp_path / "e.csv", rows)), "train", SCRIPTED, RECIPE, engine="ray", workers=1)
    assert not Store(tmp_path / "s").snapshot().datasets  # nothing written
    with pytest.raises(UsageError, match="gpus_per_worker 1, but the Ray cluster has 0 GPU"):
        fs.ingest(str(tmp_path / "e.csv"), "train", SCRIPTED, RECIPE, engine="ray", gpus_per_worker=1)


# ---- one rule for every writer and reader of a space (featurestore.spaces)

EDGE_TEXTS = [
    "the quick brown fox " * 150,  # 3,000 characters: cut to the cut length before keying
    "!!! ??? ...",  # empty after cleaning
    "Ünïcödé tweet wíth àccents",
]


def _expected(texts: list[str]) -> tuple[str, tuple[str, ...], dict[str, bytes]]:
    """What the one owner (featurestore.spaces) says: the space id, the canaries, the key of each text."""
    from featurestore.inputs.clean import get_recipe
    from featurestore.spaces import key_texts, make_space, pick_canaries
    from tests.fakes import CountingEmbedder

    recipe = get_recipe(RECIPE)
    keyed = key_texts(recipe, texts)
    return (
        make_space(CountingEmbedder(), FAKE, recipe).id,
        pick_canaries(dict(zip(keyed.keys, keyed.cleaned))),
        dict(zip(texts, keyed.keys)),
    )


@pytest.mark.parametrize("path", ["local", "ray", "store_embedder", "search"])
def test_every_path_keys_texts_and_names_the_space_as_the_one_owner_does(
    path: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """The local engine, the Ray engine, ``StoreEmbedder`` and a search by text give the same keys, canaries and
    space id for the same texts: each is compared with ``featurestore.spaces`` itself (a path that cleaned, cut or
    chose canaries its own way fails here)."""
    from featurestore.sklearn import StoreEmbedder
    from tests.fakes import CountingEmbedder

    rows = [dict(r) for r in train_rows(40)] + [
        {"id": f"e{i}", "label": "1", "tweet": t} for i, t in enumerate(EDGE_TEXTS)
    ]
    texts = [r["tweet"] for r in rows]
    want_space, want_canaries, want_keys = _expected(texts)
    fs = FeatureStore(tmp_path / "store")
    if path == "store_embedder":
        StoreEmbedder(fs, model=FAKE, recipe=RECIPE, embedder=CountingEmbedder()).fit(texts).transform(texts)
    else:
        if path == "ray":
            request.getfixturevalue("cluster")
        fs.ingest(
            str(write_csv(tmp_path / "in.csv", rows)),
            "train",
            FAKE,
            RECIPE,
            **({"engine": "ray", "workers": 1} if path == "ray" else {}),
        )
    store = Store(tmp_path / "store")
    (space,) = store.snapshot().spaces.values()
    assert space.id == want_space
    assert set(store.space_keys(space).tolist()) == set(want_keys.values())
    if path in ("local", "ray"):
        ids, keys = store.dataset_keys(store.snapshot().datasets["train"], RECIPE)
        by_id = dict(zip(ids.tolist(), keys.tolist()))
        assert {r["id"]: by_id[r["id"]] for r in rows} == {r["id"]: want_keys[r["tweet"]] for r in rows}
    if path == "search":  # every text with words finds its own stored vector: the same clean, cut and key
        for text in texts[:3] + EDGE_TEXTS[:1] + EDGE_TEXTS[2:]:
            result = fs.similar(text, model=FAKE, clean=RECIPE, k=1)
            assert result.query.startswith("stored vector") and result.space == want_space
            assert result.hits[0].score == pytest.approx(1.0, abs=1e-5)
    else:
        assert space.canaries == want_canaries
