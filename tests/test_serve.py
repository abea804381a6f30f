"""fs serve: every endpoint through FastAPI's TestClient against the real app on a real store of
tweets (counting fake embedder), new generations without restart, a corrupt index never served,
tokens, limits and JSON errors; a real uvicorn under concurrent clients while an ingest writes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the serve extra is installed by 'make setup'")
import httpx  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from cli.main import app as cli_app  # noqa: E402
from featurestore.api import FeatureStore  # noqa: E402
from featurestore.serving import serve  # noqa: E402
from tests.conftest import FAKE, ROOT, free_port, run_python, train_rows, wait_up, write_csv  # noqa: E402
from tests.fakes import CountingEmbedder  # noqa: E402

N = 300


def _ingest(store: Path, rows: list[dict[str, str]], dataset: str, tmp: Path) -> None:
    src = write_csv(tmp / f"{dataset}-{len(rows)}-{time.monotonic_ns()}.csv", rows)
    FeatureStore(store).ingest(str(src), dataset, FAKE, "raw-v1", embedder=CountingEmbedder())


@pytest.fixture(scope="module")
def base_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("serve")
    _ingest(tmp / "store", train_rows(N), "train", tmp)
    return tmp / "store"


@pytest.fixture
def store(base_store: Path, tmp_path: Path) -> Path:
    """A private copy for tests that write or damage the store."""
    shutil.copytree(base_store, tmp_path / "store")
    return tmp_path / "store"


def client_for(store: Path, token: str | None = None) -> TestClient:
    return TestClient(serve.create_app(serve.Settings(store=str(store), model=FAKE, clean="raw-v1", token=token)))


@pytest.fixture(scope="module")
def client(base_store: Path) -> TestClient:
    return client_for(base_store)


def error_of(resp: httpx.Response, status: int) -> str:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"} and "\n" not in body["error"], body
    return body["error"]


# ---- endpoints


def test_similar_by_stored_text_finds_it_with_score_one_and_its_label(client: TestClient) -> None:
    row = train_rows(N)[7]
    r = client.get("/similar", params={"q": row["tweet"], "k": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    top = body["hits"][0]
    assert top["text"] == row["tweet"] and top["score"] == pytest.approx(1.0, abs=1e-5)
    assert {"dataset": "train", "id": row["id"]} in top["ids"]
    assert top["label"] == row["label"] and top["rank"] == 1 and len(body["hits"]) == 3
    assert body["query"] == "stored vector (model not loaded)" and body["generation"] >= 1
    assert [h["score"] for h in body["hits"]] == sorted((h["score"] for h in body["hits"]), reverse=True)


def test_similar_by_id_and_by_new_text(client: TestClient) -> None:
    row = train_rows(N)[11]
    r = client.get("/similar", params={"id": row["id"], "dataset": "train", "k": 5})
    assert r.status_code == 200, r.text
    assert r.json()["hits"][0]["text"] == row["tweet"] and r.json()["query"] == "stored vector"
    r = client.get("/similar", params={"q": "a tweet nobody ever wrote, embedded now", "k": 4})
    assert r.status_code == 200, r.text
    assert r.json()["query"] == "embedded" and len(r.json()["hits"]) == 4


def test_similar_agrees_with_the_library(client: TestClient, base_store: Path) -> None:
    text = train_rows(N)[20]["tweet"]
    hits = FeatureStore(base_store).similar(text, k=10, model=FAKE, clean="raw-v1").hits
    got = client.get("/similar", params={"q": text, "k": 10}).json()["hits"]
    assert [(h["dataset"], h["id"]) for h in got] == [h.ids[0] for h in hits]
    assert [h["score"] for h in got] == pytest.approx([h.score for h in hits], abs=1e-6)


def test_batch_answers_each_query_in_order_with_per_query_errors(client: TestClient) -> None:
    rows = train_rows(N)
    body = {
        "k": 2,
        "queries": [
            {"q": rows[1]["tweet"]},
            {"id": rows[2]["id"], "dataset": "train"},
            {"id": "no-such-id"},
            {"q": "x", "id": rows[2]["id"]},
        ],
    }
    r = client.post("/similar", json=body)
    assert r.status_code == 200, r.text
    res = r.json()["results"]
    assert res[0]["hits"][0]["text"] == rows[1]["tweet"]
    assert res[1]["hits"][0]["text"] == rows[2]["tweet"]
    assert res[2]["status"] == 404 and "no-such-id" in res[2]["error"]
    assert res[3]["status"] == 400 and "not both" in res[3]["error"]


def test_vectors_returns_the_stored_vector(client: TestClient, base_store: Path) -> None:
    X, _, ids = FeatureStore(base_store).xy("train", model=FAKE, clean="raw-v1", labelled=False)
    j = 42
    r = client.get(f"/vectors/train/{ids[j]}")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["dim"] == 16 and len(body["vector"]) == 16 and body["model"] == FAKE
    np.testing.assert_allclose(np.array(body["vector"], dtype=np.float32), X[j], rtol=0, atol=0)
    assert "'nope'" in error_of(client.get("/vectors/train/nope"), 404)
    assert "does not exist" in error_of(client.get("/vectors/other/1"), 404)
    assert "invalid dataset name" in error_of(client.get("/vectors/a..b/1"), 400)


def test_datasets_and_health(client: TestClient, base_store: Path) -> None:
    info = FeatureStore(base_store).info()
    d = client.get("/datasets").json()
    ds = info["datasets"][0]
    assert d["datasets"] == [{"name": "train", "rows": N, "labelled": ds["labelled"], "classes": ["0", "1"]}]
    h = client.get("/health").json()
    assert h["status"] == "ok" and h["generation"] == info["generation"]
    assert [s["id"] for s in h["spaces"]] == [s["id"] for s in info["spaces"]] and h["spaces"][0]["vectors"] > 0


def test_docs_and_openapi_are_served(client: TestClient) -> None:
    r = client.get("/docs")
    assert r.status_code == 200 and "swagger" in r.text.lower()
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/similar", "/vectors/{dataset}/{id}", "/datasets", "/health"} <= set(paths)
    assert {"get", "post"} <= set(paths["/similar"])


def test_search_page_is_plain_html_calling_similar(client: TestClient) -> None:
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    page = r.text
    for needle in (
        'id="q"',
        'id="k"',
        'id="results"',
        'id="error"',
        'api("similar?',
        "body.error",
        "textContent",
        "location.search",
        "Authorization",
    ):
        assert needle in page, needle
    assert "innerHTML" not in page  # stored tweets are text, never markup
    assert "<script src" not in page  # no build step, nothing fetched from elsewhere


# ---- errors and limits


@pytest.mark.parametrize(
    "params,status,needle",
    [
        ({"q": "x", "k": 101}, 422, "k must be at most 100, got 101"),
        ({"q": "x" * 2001}, 413, "the limit is 2,000"),
        ({"q": "x", "k": 0}, 400, "k must be at least 1, got 0"),
        ({"q": "x", "k": "ten"}, 422, "k: "),
        ({}, 400, "give either a query text or an id"),
        ({"q": "   "}, 400, "empty after cleaning"),
        ({"id": "no-such-id"}, 404, "'no-such-id' is not in any dataset"),
        ({"id": "1", "dataset": "nope"}, 404, "dataset 'nope' does not exist"),
        ({"q": "x", "dataset": "../etc"}, 400, "invalid dataset name"),
    ],
)
def test_errors_are_one_line_json(client: TestClient, params: dict, status: int, needle: str) -> None:
    assert needle in error_of(client.get("/similar", params=params), status)


def test_batch_limits(client: TestClient) -> None:
    assert "limit is 256" in error_of(client.post("/similar", json={"queries": [{"q": "a"}] * 257}), 413)
    assert "queries[1].q is 2,001 characters" in error_of(
        client.post("/similar", json={"queries": [{"q": "a"}, {"q": "b" * 2001}]}), 413
    )
    assert "at most 100" in error_of(client.post("/similar", json={"queries": [{"q": "a"}], "k": 500}), 422)
    assert "queries is empty" in error_of(client.post("/similar", json={"queries": []}), 400)
    assert "queries" in error_of(client.post("/similar", json={"k": 3}), 422)
    assert "over 4,194,304 bytes" in error_of(
        client.post("/similar", content=b"x" * (5 << 20), headers={"content-type": "application/json"}), 413
    )
    assert "Not Found" in error_of(client.get("/nope"), 404)


@pytest.mark.parametrize(
    "k,status,needle",
    [(-1, 400, "k must be at least 1, got -1"), (0, 400, "k must be at least 1, got 0"), (101, 422, "at most 100")],
)
def test_a_bad_k_is_the_requests_error_for_get_and_post_alike(
    client: TestClient, k: int, status: int, needle: str
) -> None:
    # k applies to every query of a batch: the whole request is refused, not each query answered with the error
    got = error_of(client.get("/similar", params={"q": "x", "k": k}), status)
    posted = error_of(client.post("/similar", json={"queries": [{"q": "x"}, {"id": "no-such-id"}], "k": k}), status)
    assert needle in got and posted == got


@pytest.mark.parametrize(
    "body",
    [
        '{"queries": [{"q": x}]}',
        '{"queries": [\n  {"q": "a"},\n  {"q": "b"}\n  {"q": "c"}\n]}',
        '{"queries": [{"q": "a"}], "k": 3',
        "queries=a",
    ],
)
def test_a_body_that_is_not_json_is_told_where_as_line_and_column(client: TestClient, body: str) -> None:
    with pytest.raises(json.JSONDecodeError) as parsed:
        json.loads(body)
    e = parsed.value
    r = client.post("/similar", content=body.encode(), headers={"content-type": "application/json"})
    assert error_of(r, 422) == f"invalid request: body is not valid JSON: line {e.lineno}, column {e.colno}: {e.msg}"


def test_no_answer_shows_a_path_of_the_servers_filesystem(store: Path, tmp_path: Path) -> None:
    link = tmp_path / "link"
    link.symlink_to(store)  # messages may name the store as given, or as its real path
    c = client_for(link)
    answers = [
        c.get("/similar", params={"q": "x", "dataset": "nope"}),
        c.get("/similar", params={"id": "1", "dataset": "nope"}),
        c.get("/vectors/nope/1"),
        c.post("/similar", json={"queries": [{"q": "x", "dataset": "nope"}]}),
    ]
    for r in answers[:3]:
        assert error_of(r, 404) == "dataset 'nope' does not exist in the store; datasets: train"
    assert answers[3].json()["results"][0] == {
        "error": "dataset 'nope' does not exist in the store; datasets: train",
        "status": 404,
    }
    latest = max((store / "manifest").glob("*.json"))
    latest.write_text("{not json")
    answers.append(c.post("/similar", json={"queries": [{"q": "hello"}, {"q": "again"}]}))  # the request's error
    answers.append(c.get("/similar", params={"q": "hello"}))
    assert error_of(answers[-2], 503) == error_of(answers[-1], 503)
    message = error_of(answers[-1], 503)
    assert f"store manifest manifest/{latest.name} is corrupt" in message
    assert message.endswith("fix: run 'fs repair --store STORE'")
    for r in answers:
        assert str(tmp_path) not in r.text and str(store.resolve()) not in r.text, r.text


def test_public_message_names_the_store_and_hides_every_other_server_path() -> None:
    stores = ("/srv/fs/store", "/data/store/")
    for message, public in [
        ("store /srv/fs/store does not exist; fix: ...", "the store does not exist; fix: ..."),
        (
            "store manifest /data/store/manifest/3.json is corrupt (x); fix: run 'fs repair --store /data/store'",
            "store manifest manifest/3.json is corrupt (x); fix: run 'fs repair --store STORE'",
        ),
        (
            "dataset 'x' does not exist in /srv/fs/store; datasets: a",
            "dataset 'x' does not exist in the store; datasets: a",
        ),
        (
            "rebuilt: unreadable index manifest ([Errno 13] Permission denied: '/srv/fs/store/index/a.json')",
            "rebuilt: unreadable index manifest ([Errno 13] Permission denied: 'index/a.json')",
        ),
        ("weights file /root/.cache/elmo/weights.hdf5 does not exist", "weights file <server path> does not exist"),
        ("/srv/fs/store2/x is\n another store", "<server path> is another store"),
        (
            "k must be at least 1, got -1; and/or 1/2 of http://host/a/b",
            "k must be at least 1, got -1; and/or 1/2 of http://host/a/b",
        ),
    ]:
        assert serve.public_message(message, stores) == public


def test_token_is_required_when_set(base_store: Path) -> None:
    c = client_for(base_store, token="s3cret")
    for path in ("/similar?q=hello", "/datasets", "/health", "/vectors/train/1"):
        r = c.get(path)
        assert "bearer token missing" in error_of(r, 401) and r.headers["www-authenticate"] == "Bearer"
        assert "bearer token wrong" in error_of(c.get(path, headers={"Authorization": "Bearer s3creT"}), 401)
    assert "bearer token" in error_of(c.post("/similar", json={"queries": [{"q": "a"}]}), 401)
    assert c.get("/health", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert c.get("/").status_code == 200 and c.get("/docs").status_code == 200  # no data in either
    assert c.get(serve.DOCS_ASSETS + "/swagger-ui-bundle.js").status_code == 200  # nor in Swagger UI's files


@pytest.mark.parametrize("threads", [None, 3])
def test_queries_run_in_as_many_threads_as_cores_or_as_asked_more_for_brute_force(
    base_store: Path, tmp_path: Path, threads: int | None
) -> None:
    from featurestore.machine import usable_cores

    n = threads or usable_cores()
    flat, ivf = tmp_path / "flat", tmp_path / "ivf"
    shutil.copytree(base_store, flat)
    shutil.copytree(base_store, ivf)
    FeatureStore(ivf).index_build("ivf", nlist=4, model=FAKE, clean="raw-v1")
    for path, scans in ((flat, True), (ivf, False)):
        app = serve.create_app(serve.Settings(store=str(path), model=FAKE, clean="raw-v1", threads=threads))
        with TestClient(app) as c:
            assert c.get("/similar", params={"q": "hello"}).status_code == 200
            service = app.state.service
            assert service.scans is scans
            queries, brute_force = service._pools
            assert queries._max_workers == n < 32
            assert brute_force._max_workers == max(n, 32)
            assert c.post("/similar", json={"queries": [{"q": "a"}, {"q": "b"}]}).status_code == 200
            # the first query runs before the server knows its index kind; later ones in the kind's own pool
            assert (brute_force if scans else queries)._threads
            assert scans or not brute_force._threads


def test_the_serve_extra_gives_uvicorn_its_c_event_loop_and_http_parser() -> None:
    assert serve.server_stack() == ("uvloop", "httptools")


def test_a_path_without_a_store_is_refused(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="does not exist"):
        serve.create_app(serve.Settings(store=str(tmp_path / "none"), model=FAKE, clean="raw-v1"))


# ---- generations and damaged files


def test_new_generation_appears_without_restart(store: Path, tmp_path: Path) -> None:
    c = client_for(store)
    before = c.get("/health").json()["generation"]
    new = [{"id": f"n{i}", "label": "1", "tweet": f"brand new tweet number {i} about #serving"} for i in range(5)]
    assert c.get("/similar", params={"q": new[3]["tweet"]}).json()["query"] == "embedded"
    _ingest(store, new, "live", tmp_path)
    assert c.get("/health").json()["generation"] > before
    top = c.get("/similar", params={"q": new[3]["tweet"], "k": 1}).json()
    assert top["query"] == "stored vector (model not loaded)"
    assert top["hits"][0]["id"] == "n3" and top["hits"][0]["dataset"] == "live" and top["hits"][0]["label"] == "1"
    assert top["hits"][0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert "live" in [d["name"] for d in c.get("/datasets").json()["datasets"]]
    assert c.get("/vectors/live/n3").status_code == 200


def test_a_truncated_index_is_never_served(store: Path) -> None:
    c = client_for(store)
    text = train_rows(N)[5]["tweet"]
    good = c.get("/similar", params={"q": text, "k": 10}).json()
    (faiss_file,) = (store / "index").glob("*.faiss")
    with open(faiss_file, "r+b") as f:
        f.truncate(faiss_file.stat().st_size // 2)
    again = c.get("/similar", params={"q": text, "k": 10}).json()
    assert again["index"].startswith("rebuilt") and "truncated or corrupt" in again["index"]
    assert [(h["id"], h["score"]) for h in again["hits"]] == [(h["id"], h["score"]) for h in good["hits"]]


def test_a_corrupt_manifest_is_a_503_naming_fs_repair(store: Path) -> None:
    c = client_for(store)
    assert c.get("/health").status_code == 200
    latest = max((store / "manifest").glob("*.json"))
    latest.write_text("{not json")
    assert "fs repair" in error_of(c.get("/similar", params={"q": "hello"}), 503)


# ---- the command


def test_serve_command_binds_loopback_by_default_and_warns_without_token_elsewhere(
    base_store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    def fake_run(settings: serve.Settings, host: str, port: int, **kw: object) -> None:  # all but uvicorn.run
        serve.create_app(settings)
        calls.append((settings, host, port))

    monkeypatch.setattr(serve, "run", fake_run)
    runner = CliRunner()
    r = runner.invoke(cli_app, ["serve", "--store", str(base_store), "--model", FAKE, "--clean", "raw-v1"])
    assert r.exit_code == 0, r.output
    assert calls[-1][1:] == ("127.0.0.1", 8080) and "warning" not in r.output
    r = runner.invoke(cli_app, ["serve", "--store", str(base_store), "--host", "0.0.0.0", "--port", "9000"])
    assert r.exit_code == 0 and calls[-1][1:] == ("0.0.0.0", 9000)
    assert "warning: serving on 0.0.0.0 without --token" in r.output
    r = runner.invoke(cli_app, ["serve", "--store", str(base_store), "--host", "0.0.0.0", "--token", "t"])
    assert "warning" not in r.output and calls[-1][0].token == "t" and calls[-1][0].threads is None
    assert calls[-1][0].search_threads is None  # decided by the served index (serve.search_threads)
    r = runner.invoke(cli_app, ["serve", "--store", str(base_store), "--threads", "6", "--search-threads", "2"])
    assert r.exit_code == 0 and calls[-1][0].threads == 6 and calls[-1][0].search_threads == 2
    r = runner.invoke(cli_app, ["serve", "--store", str(base_store), "--threads", "0"])
    assert r.exit_code == 2 and "--threads" in r.output
    r = runner.invoke(cli_app, ["serve", "--store", str(base_store / "nope")])
    assert r.exit_code == 1 and "Error: store" in r.output and "does not exist" in r.output


def test_search_threads_follow_the_served_index(store: Path, tmp_path: Path) -> None:
    from featurestore.machine import usable_cores

    settings = serve.Settings(store=str(store), model=FAKE, clean="raw-v1")
    assert serve.search_threads(settings) == usable_cores()  # a small store: exact scans (Flat), all cores
    FeatureStore(store).index_build("ivf", nlist=4, model=FAKE, clean="raw-v1")
    assert serve.search_threads(settings) == 1  # approximate: one thread a search, queries in parallel
    assert serve.search_threads(serve.Settings(store=str(store), model=FAKE, clean="raw-v1", search_threads=3)) == 3
    assert serve.search_threads(serve.Settings(store=str(tmp_path / "none"), model=FAKE)) == 1


def test_native_threads_are_limited_for_faiss_and_every_blas() -> None:
    # process-wide settings: in a process of its own
    code = (
        "import faiss, json, threadpoolctl\n"
        "from featurestore.serving.serve import limit_native_threads\n"
        "before = faiss.omp_get_max_threads()\n"
        "limit_native_threads(1)\n"
        "info = threadpoolctl.threadpool_info()\n"
        "print(json.dumps([before, faiss.omp_get_max_threads(), sorted({i['internal_api'] for i in info}),"
        " [i['num_threads'] for i in info]]))\n"
    )
    out = run_python(code, env={**os.environ, "OMP_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": "2"}, timeout=120)
    before, after, apis, counts = json.loads(out.strip().splitlines()[-1])
    assert before == 2 and after == 1
    assert {"openblas", "openmp"} <= set(apis) and set(counts) == {1}  # numpy's and FAISS's OpenBLAS, FAISS's OpenMP


# ---- a real server


@pytest.mark.slow
def test_real_server_under_concurrent_clients_while_an_ingest_writes(store: Path, tmp_path: Path) -> None:
    import uvicorn

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            serve.create_app(serve.Settings(store=str(store), model=FAKE, clean="raw-v1", token="tok")),
            host="127.0.0.1",
            port=port,
            log_level="warning",
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}/"
    wait_up(url)
    rows = train_rows(N)
    problems: list[str] = []
    done = threading.Event()

    def client(seed: int) -> None:
        rng = np.random.default_rng(seed)
        with httpx.Client(base_url=url, headers={"Authorization": "Bearer tok"}, timeout=30) as h:
            while not done.is_set():
                row = rows[int(rng.integers(N))]
                r = h.get("/similar", params={"q": row["tweet"], "k": 5})
                if r.status_code != 200:
                    problems.append(r.text)
                elif r.json()["hits"][0]["text"] != row["tweet"] or r.json()["hits"][0]["score"] < 0.9999:
                    problems.append(f"torn: {row['id']}")

    workers = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for w in workers:
        w.start()
    new = [{"id": f"w{i}", "label": "0", "tweet": f"written while serving {i}"} for i in range(40)]
    for part in range(4):
        _ingest(store, new[part * 10 : (part + 1) * 10], "live", tmp_path)
    time.sleep(0.5)
    done.set()
    for w in workers:
        w.join()
    with httpx.Client(base_url=url, headers={"Authorization": "Bearer tok"}) as h:
        top = h.get("/similar", params={"q": new[-1]["tweet"], "k": 1}).json()["hits"][0]
        assert top["id"] == "w39" and top["dataset"] == "live"
        assert h.get("/health").json()["generation"] >= 5
    server.should_exit = True
    thread.join(10)
    assert problems == []


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if (
                int(stat.rsplit(")", 1)[1].split()[1]) == pid
                and "spawn_main" in Path(f"/proc/{entry}/cmdline").read_text()
            ):
                found.append(int(entry))
    return found


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="counts worker processes in /proc")
def test_fs_serve_with_two_worker_processes_answers_and_follows_new_generations(store: Path, tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cli.main",
            "serve",
            "--store",
            str(store),
            "--port",
            str(port),
            "--model",
            FAKE,
            "--clean",
            "raw-v1",
            "--token",
            "tok",
            "--workers",
            "2",
        ],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_up(url, proc)
        deadline = time.monotonic() + 60
        while len(_children(proc.pid)) < 2:
            assert time.monotonic() < deadline, "two worker processes did not start"
            time.sleep(0.1)
        headers = {"Authorization": "Bearer tok"}
        text = train_rows(N)[9]["tweet"]
        assert httpx.get(url + "similar", params={"q": text}).status_code == 401
        assert httpx.get(url + "similar", params={"q": text}, headers=headers).json()["hits"][0]["text"] == text
        new = [{"id": "w1", "label": "1", "tweet": "a brand new tweet for every worker"}]
        _ingest(store, new, "live", tmp_path)
        answers = []
        for _ in range(24):  # a new connection each: the kernel hands them to either worker
            r = httpx.get(url + "similar", params={"q": new[0]["tweet"], "k": 1}, headers=headers)
            answers.append((r.status_code, r.json()["hits"][0]["id"], r.json()["hits"][0]["dataset"]))
        assert set(answers) == {(200, "w1", "live")}
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
    assert proc.returncode == 0 and _children(proc.pid) == []


def test_fs_serve_with_workers_refuses_a_missing_store_in_one_line(tmp_path: Path) -> None:
    r = CliRunner().invoke(cli_app, ["serve", "--store", str(tmp_path / "none"), "--workers", "2"])
    assert r.exit_code != 0 and "does not exist" in r.output and "Traceback" not in r.output


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="drops to 'nobody' with setpriv")
def test_fs_serve_as_another_user_on_a_read_only_store_writes_nothing(base_store: Path) -> None:
    top = Path(tempfile.mkdtemp(dir="/tmp"))  # not under pytest's 0700 tmp dir: 'nobody' must reach it
    proc = None
    try:
        os.chmod(top, 0o755)
        store = top / "store"
        shutil.copytree(base_store, store)
        shutil.rmtree(store / "index", ignore_errors=True)  # the index must be built, in memory
        for p in [store, *store.rglob("*")]:
            os.chmod(p, 0o555 if p.is_dir() else 0o444)
        before = sorted((str(p), p.stat().st_mtime_ns) for p in store.rglob("*"))
        port = free_port()
        proc = subprocess.Popen(
            [
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                sys.executable,
                "-m",
                "cli.main",
                "serve",
                "--store",
                str(store),
                "--port",
                str(port),
                "--model",
                FAKE,
                "--clean",
                "raw-v1",
            ],
            cwd=ROOT,
            env={**os.environ, "HOME": str(top)},
            stderr=subprocess.PIPE,
            text=True,
        )
        url = f"http://127.0.0.1:{port}/"
        wait_up(url, proc)
        text = train_rows(N)[9]["tweet"]
        deadline = time.monotonic() + 60
        while not httpx.get(url + "health").json()["warmed"]:  # the index is built in the background at start
            assert time.monotonic() < deadline, "the server did not warm its caches within 60 s"
            time.sleep(0.1)
        r = httpx.get(url + "similar", params={"q": text, "k": 3})
        assert r.status_code == 200, r.text
        assert r.json()["hits"][0]["text"] == text and r.json()["index"] == "in memory"
        assert sorted((str(p), p.stat().st_mtime_ns) for p in store.rglob("*")) == before
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(10)
        for p in [top, *top.rglob("*")]:
            os.chmod(p, 0o755 if p.is_dir() else 0o644)
        shutil.rmtree(top)


def test_a_store_with_one_space_is_served_without_a_model(base_store: Path) -> None:
    """The store's only space (here a ``py:`` plugin's) answers when the server is given no model, and each
    answer notes which space was used; it used to answer "no vectors for model 'minilm'"."""
    plain = TestClient(serve.create_app(serve.Settings(store=str(base_store))))
    r = plain.get("/similar", params={"q": train_rows(N)[7]["tweet"], "k": 2})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["hits"][0]["score"] == pytest.approx(1.0, abs=1e-5) and body["model"] == FAKE
    assert "only space" in body.get("note", ""), body
