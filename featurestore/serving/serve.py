"""``fs serve``: a read-only HTTP API and a search page over a store, following new generations.

FastAPI and uvicorn are imported only here (the ``serve`` extra). The server holds one
``FeatureStore`` with its segment files held open, so its search cache (checked index, per-segment
key and id lookups) is reused across requests, which run in parallel; each request lists the
manifest directory (cheap) and, when an ingest has published a new generation, reads only the
segments that generation added. Nothing here writes to the store: no
``Writer`` is opened. (The library may save the derived FAISS index file beside a writable
store, as ``fs similar`` does; a read-only store is answered from an index built in memory.)

Errors are JSON ``{"error": "<one line>"}``: the library's own message with parameters named
as the HTTP parameters (``k``, ``q``, ``dataset``) and no path of the server's filesystem in it
(``public_message``), status 400 for a user mistake, 404 for an unknown dataset or id, 401 for a
missing or wrong token, 413/422 for the request limits, 503 when the store itself cannot be read
(a corrupt manifest: ``fs repair``). A parameter of the whole request (``k``), or a store that
cannot be read, is the request's error for ``GET`` and ``POST /similar`` alike; only a batch's
per-query errors (a query's text, id or dataset) are answered per query.

Every page loads only what the server itself serves, so that ``/docs`` works without internet:
Swagger UI's script and style come from the ``fastapi-swagger`` package, not from a CDN, and
ReDoc (another CDN bundle) is not served.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import importlib.util
import ipaddress
import json
import logging
import os
import re
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from importlib import resources
from typing import Any

import fastapi_swagger.resources as swagger_ui_files  # type: ignore[import-untyped]  # no py.typed; files only
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from featurestore.api import FeatureStore
from featurestore.errors import DatasetError, FeatureStoreError, StoreError, UnknownIdError
from featurestore.machine import usable_cores
from featurestore.query.search import Hit
from featurestore.storage.manifest import Dataset, Snapshot
from featurestore.storage.store import check_dataset_name

log = logging.getLogger(__name__)

MAX_K = 100
MAX_BATCH = 256
MAX_TEXT_CHARS = 2_000
MAX_BODY_BYTES = 4 * 1024 * 1024  # a full batch of maximal texts in UTF-8 fits with room to spare
MAX_HIT_TEXT_CHARS = 10_000  # a stored text can be megabytes; a hit carries its start and its length
MAX_HIT_IDS = 100  # a text stored under thousands of ids lists the first ones and the count

# Library parameter -> the HTTP parameter a client sends (the rest keep their names).
_PARAMS = {"text": "q"}

# Swagger UI's files as /docs loads them from this server (fastapi-swagger ships a current swagger-ui-dist build):
# FastAPI's default page takes them from a CDN, a blank page without internet.
DOCS_ASSETS = "/docs/static"
DOCS_FILES = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "favicon-32x32.png": "image/png",
}

# An absolute path left in a library message once the store's own path is replaced (a model file, a cache)
_ABSOLUTE_PATH = re.compile(r"""(?<![\w.~/:-])/[^\s'"/;,()]+(?:/[^\s'"/;,()]*)+""")


def param_of(name: str) -> str:
    return _PARAMS.get(name, name)


def public_message(message: str, store_paths: tuple[str, ...]) -> str:
    """``message`` in one line, without a path of the server's filesystem: the store is "the store" (a file in
    it is named from the store, as ``manifest/00000003.json``, and a command's ``--store`` shows ``STORE``), any
    other absolute path is ``<server path>``. A client has no business with the server's directories."""
    message = " ".join(message.split())
    for path in sorted(store_paths, key=len, reverse=True):  # a path before the shorter ones inside it
        p = re.escape(path.rstrip("/"))
        message = re.sub(rf"--store {p}(?![^\s'\"])", "--store STORE", message)
        message = re.sub(rf"{p}/", "", message)
        message = re.sub(rf"(?:\bstore )?{p}(?![^\s'\";,)])", "the store", message)
    return _ABSOLUTE_PATH.sub("<server path>", message)


@dataclass(frozen=True)
class Settings:
    store: str | None = None
    model: str | None = None  # None: the store's only space, else the default model (spaces.choose_space)
    clean: str | None = None
    dtype: str | None = None
    token: str | None = None
    threads: int | None = None  # queries answered at once (default: the cores; see Service.call)
    search_threads: int | None = None  # threads for one search's native code (see search_threads)


class HTTPError(Exception):
    """A request the server refuses with ``status`` and a one-line ``message``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Service:
    """The store as the server sees it: one ``FeatureStore``, its segments held open.

    Requests run in parallel (FastAPI's thread pool): the library's search cache is safe to share
    between threads, and what it caches is per immutable segment, so a new generation costs only
    its new segments. Only the ``/datasets`` summary is cached here, per generation.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.fs = FeatureStore(settings.store)
        self.fs.store.require_existing()
        path = self.fs.store.path
        # every spelling of the store's path a message may hold (as given, absolute, through symlinks)
        self.store_paths = tuple({str(path), os.path.abspath(path), os.path.realpath(path)})
        self.fs.hold()  # segments open, ids/labels/texts packed in memory as queries (or warm) touch them
        self._lock = threading.Lock()  # the cached summary
        self._info: tuple[int, dict[str, Any]] | None = None
        self.warmed = threading.Event()
        self.scans = False  # the served index is searched by brute force (a Flat index)
        self._pools: tuple[ThreadPoolExecutor, ThreadPoolExecutor] | None = None  # (queries, brute-force queries)

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` in a worker thread, as many at once as the served index does best.

        A query holds the GIL for most of its few milliseconds: with anyio's 40 threads, 16 clients'
        queries contended for it at 1.7x the CPU a query, so they run in as many threads as there are
        cores (1M vectors, IVF, 16 clients, 2 cores: 123-128 req/s, p99 233-409 ms with 40 threads;
        166-174 req/s, p99 116-130 ms with 2). A brute-force scan is the opposite: it releases the GIL and
        queries waiting together share one scan (``SearchBatcher``), so for a Flat index up to 32 run at once.
        """
        if self._pools is None:
            n = self.settings.threads or usable_cores()
            self._pools = (
                ThreadPoolExecutor(n, thread_name_prefix="fs-query"),
                ThreadPoolExecutor(max(n, 32), thread_name_prefix="fs-scan"),
            )
        # asyncio's own hand-off to a thread pool, not anyio's to_thread: anyio's limiter and cancel scopes were
        # a sixth of the event loop's time, and the event loop is the one thread every request passes through
        pool = self._pools[1] if self.scans else self._pools[0]
        return await asyncio.get_running_loop().run_in_executor(pool, functools.partial(fn, *args))

    def warm(self) -> None:
        """Build what queries read (index, key and id lookups, ids/labels/texts in memory) before the first
        one asks; run in the background at start. A store without the served space has nothing to warm."""
        s = self.settings
        t = time.perf_counter()
        try:
            self.fs.warm(s.model, s.clean, s.dtype)
            log.info("caches warm in %.1f s", time.perf_counter() - t)
        except FeatureStoreError as exc:
            log.info("nothing warmed: %s", exc)
        except Exception:  # a failure here is answered again by the first query that needs the same thing
            log.exception("warming the caches failed")
        finally:
            self.warmed.set()

    def message(self, exc: FeatureStoreError) -> str:
        """A library error as a client reads it: parameters named as HTTP parameters, no server path."""
        return public_message(exc.render(param_of), self.store_paths)

    def snapshot(self) -> Snapshot:
        """The latest snapshot: the store reuses the last one parsed while its manifest file is the same one
        (a manifest repaired in place is read again), so a request costs three system calls: a stat of the
        store's manifest directory, its listing, a stat of the latest manifest."""
        return self.fs.store.require_existing().snapshot()

    def _dataset(self, snap: Snapshot, name: str) -> Dataset:
        check_dataset_name(name)  # 400 for a name that cannot exist
        if name not in snap.datasets:
            try:
                self.fs.store.dataset(name, snap)
            except DatasetError as exc:
                raise HTTPError(404, self.message(exc)) from None
        return snap.datasets[name]

    # ---- queries

    def similar_json(self, *args: Any) -> JSONResponse:
        """``similar`` encoded in the worker thread: FastAPI would validate and encode the dict on the event
        loop, which every request shares."""
        return JSONResponse(self.similar(*args))

    def similar(self, q: str | None, id: str | None, k: int, dataset: str | None) -> dict[str, Any]:
        check_k(k)
        if q is not None:
            check_text(q, "q")
        s = self.settings
        snap = self.snapshot()
        if dataset is not None:
            self._dataset(snap, dataset)
        try:
            r = self.fs.similar(
                q, id=id, k=k, dataset=dataset, model=s.model, clean=s.clean, dtype=s.dtype, snapshot=snap
            )
        except UnknownIdError as exc:
            raise HTTPError(404, self.message(exc)) from None
        self.scans = r.index_kind == "Flat"
        # the answer is this generation's, read once for the request
        out = {
            "generation": snap.generation,
            "space": r.space,
            "model": r.model,
            "query": r.query,
            "index": public_message(r.index, self.store_paths),  # "rebuilt: <why>" may quote an OSError's path
            "hits": [self._hit(h) for h in r.hits],
        }
        if r.note:
            out["note"] = public_message(r.note, self.store_paths)
        return out

    @staticmethod
    def _hit(h: Hit) -> dict[str, Any]:
        dataset, id = h.ids[0]  # every hit has an owner (cache entries are never hits)
        return {
            "rank": h.rank,
            "score": round(float(h.score), 6),
            "dataset": dataset,
            "id": id,
            "label": h.label,  # of the first owner
            "text": h.text[:MAX_HIT_TEXT_CHARS],
            "text_chars": len(h.text),
            "ids": [{"dataset": d, "id": i} for d, i in h.ids[:MAX_HIT_IDS]],
            "owners": len(h.ids),
        }

    def vector(self, dataset: str, id: str) -> dict[str, Any]:
        snap = self.snapshot()
        ds = self._dataset(snap, dataset)
        try:
            space, vec = self.fs.vector(
                dataset, id, model=self.settings.model, clean=self.settings.clean, dtype=self.settings.dtype
            )
        except UnknownIdError as exc:
            raise HTTPError(404, self.message(exc)) from None
        return {
            "dataset": ds.name,
            "id": id,
            "space": space.id,
            "model": space.model,
            "recipe": space.recipe,
            "dtype": space.dtype,
            "dim": space.dim,
            "generation": snap.generation,
            "vector": [float(x) for x in vec.tolist()],
        }

    def datasets(self) -> dict[str, Any]:
        snap = self.snapshot()
        with self._lock:
            if self._info is None or self._info[0] != snap.generation:
                self._info = (snap.generation, self.fs.info())
            info = self._info[1]
        return {
            "generation": info["generation"],
            "datasets": [{k: d[k] for k in ("name", "rows", "labelled", "classes")} for d in info["datasets"]],
        }

    def health(self) -> dict[str, Any]:
        snap = self.snapshot()
        return {
            "status": "ok",
            "generation": snap.generation,
            "warmed": self.warmed.is_set(),  # the background warm-up at start has finished
            "spaces": [
                {
                    "id": sp.id,
                    "model": sp.model,
                    "recipe": sp.recipe,
                    "dim": sp.dim,
                    "dtype": sp.dtype,
                    "vectors": sp.rows,
                }
                for sp in snap.spaces.values()
            ],
        }


def check_k(k: int) -> None:
    """``k`` applies to every query of a request: a bad one is the request's error, before any query runs."""
    if k < 1:
        raise HTTPError(400, f"k must be at least 1, got {k}")
    if k > MAX_K:
        raise HTTPError(422, f"k must be at most {MAX_K}, got {k}; fix: ask for {MAX_K} neighbours or fewer")


def check_text(text: str, name: str) -> None:
    if len(text) > MAX_TEXT_CHARS:
        raise HTTPError(
            413, f"{name} is {len(text):,} characters; the limit is {MAX_TEXT_CHARS:,}; fix: send a shorter text"
        )


# ---- request and response bodies (they also document the API at /docs)


class QueryItem(BaseModel):
    q: str | None = Field(None, description=f"query text (at most {MAX_TEXT_CHARS:,} characters)")
    id: str | None = Field(None, description="or: the id of a stored row, used as the query")
    dataset: str | None = Field(None, description="only hits of this dataset; with id: the dataset holding it")


class BatchRequest(BaseModel):
    queries: list[QueryItem] = Field(..., description=f"at most {MAX_BATCH} queries")
    k: int = Field(10, description=f"neighbours per query, 1 to {MAX_K}")


class BodyLimit:
    """ASGI middleware: a request body over ``limit`` bytes is refused with 413 before it is parsed,
    whether it declares its length or streams it in chunks."""

    def __init__(self, app: Callable[..., Any], limit: int) -> None:
        self.app = app
        self.limit = limit
        self.message = f"request body is over {limit:,} bytes; fix: send fewer or shorter queries"

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                await JSONResponse({"error": self.message}, status_code=413)(scope, receive, send)
                return
        seen = 0

        async def limited() -> dict[str, Any]:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise HTTPError(413, self.message)  # answered by the HTTPError handler inside the app
            return message

        await self.app(scope, limited, send)


def _json_error(exc: RequestValidationError, error: dict[str, Any]) -> str:
    """Where a body that is not JSON went wrong, as Python's json module says it: line and column of the body."""
    loc = error.get("loc", ())
    pos = loc[1] if len(loc) > 1 and isinstance(loc[1], int) else None
    doc = exc.body.decode("utf-8", "replace") if isinstance(exc.body, bytes) else exc.body
    why = error.get("ctx", {}).get("error") or error.get("msg", "JSON decode error")
    if pos is None or not isinstance(doc, str):
        return f"invalid request: body is not valid JSON: {why}"
    line = doc.count("\n", 0, pos) + 1
    column = pos - doc.rfind("\n", 0, pos)  # 1-based; rfind is -1 on the first line
    return f"invalid request: body is not valid JSON: line {line}, column {column}: {why}"


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for e in exc.errors()[:3]:
        if e.get("type") == "json_invalid":
            return _json_error(exc, e)
        where = ".".join(str(p) for p in e.get("loc", ()) if p not in ("query", "body", "path"))
        got = f" (got {e['input']!r:.60})" if "input" in e and not isinstance(e["input"], (dict, list)) else ""
        parts.append(f"{where or 'request'}: {e.get('msg', 'invalid')}{got}")
    return "invalid request: " + "; ".join(parts)


def create_app(settings: Settings) -> FastAPI:
    """The FastAPI application over ``settings.store``; raises StoreError when no store is there."""
    service = Service(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        threading.Thread(target=service.warm, name="fs-serve-warm", daemon=True).start()
        yield

    app = FastAPI(
        lifespan=lifespan,
        docs_url=None,  # served below, from this server's own copy of Swagger UI
        redoc_url=None,  # ReDoc's page loads its script from a CDN and Google's fonts: one API page is enough
        title="featurestore",
        description="Nearest stored tweets by cosine similarity, stored vectors and datasets, read-only. "
        f"Limits: k <= {MAX_K}, batch <= {MAX_BATCH} queries, text <= {MAX_TEXT_CHARS:,} characters. "
        'Errors are JSON {"error": "..."}.',
        version=_version(),
    )
    app.state.service = service
    bearer = HTTPBearer(auto_error=False, description="the server's --token")

    async def authorize(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        assert settings.token is not None  # a dependency of the routes only when the server has a token
        given = credentials.credentials if credentials is not None else ""
        if credentials is None or not hmac.compare_digest(given.encode(), settings.token.encode()):
            what = "missing" if credentials is None else "wrong"
            raise HTTPError(
                401,
                f"bearer token {what}; fix: send the header 'Authorization: Bearer <token>' with the server's --token",
            )

    auth = [Depends(authorize)] if settings.token is not None else []  # no per-request dependency to solve

    @app.exception_handler(HTTPError)
    def _http_error(request: Request, exc: HTTPError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse({"error": exc.message}, status_code=exc.status, headers=headers)

    @app.exception_handler(FeatureStoreError)
    def _library_error(request: Request, exc: FeatureStoreError) -> JSONResponse:
        # a store that cannot be read (corrupt manifest, permissions) is the server's problem, not the request's
        status = 503 if isinstance(exc, StoreError) else 400
        return JSONResponse({"error": service.message(exc)}, status_code=status)

    @app.exception_handler(RequestValidationError)
    def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": _validation_message(exc)}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    def _starlette(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(
            {"error": f"{exc.detail}: {request.method} {request.url.path}"},
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(Exception)
    def _bug(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error on %s %s", request.method, request.url.path)
        return JSONResponse(
            {
                "error": f"internal error ({type(exc).__name__}); this is a featurestore bug: "
                "please report it with the request"
            },
            status_code=500,
        )

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse(resources.files("featurestore.serving").joinpath("static/index.html").read_text("utf-8"))

    @app.get("/docs", include_in_schema=False)
    def docs(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")  # behind a proxy that mounts the server on a path
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{root}{DOCS_ASSETS}/favicon-32x32.png",
        )

    @app.get(DOCS_ASSETS + "/{name}", include_in_schema=False)
    def docs_file(name: str) -> Response:
        if name not in DOCS_FILES:
            raise HTTPError(404, f"no such file of the API page: {name!r}; files: {', '.join(DOCS_FILES)}")
        # the same bytes until fastapi-swagger is upgraded; a day's cache spares a browser 1.7 MB a visit
        return Response(_docs_file(name), media_type=DOCS_FILES[name], headers={"Cache-Control": "max-age=86400"})

    @app.get("/similar", dependencies=auth, summary="Nearest stored tweets to a text or a stored row")
    async def similar_get(
        q: str | None = None, id: str | None = None, dataset: str | None = None, k: int = 10
    ) -> dict[str, Any]:
        """``q``: a text; or ``id`` (+ ``dataset`` when the id is in several) of a stored row. With ``q``,
        ``dataset`` keeps only that dataset's rows. ``k`` <= 100."""
        return await service.call(service.similar_json, q, id, k, dataset or None)  # an empty form field means "any"

    def similar_batch(body: BatchRequest) -> dict[str, Any]:
        if len(body.queries) > MAX_BATCH:
            raise HTTPError(
                413,
                f"batch has {len(body.queries):,} queries; the limit is {MAX_BATCH}; "
                "fix: split it into several requests",
            )
        if not body.queries:
            raise HTTPError(400, 'queries is empty; give at least one {"q": ...} or {"id": ...}')
        check_k(body.k)
        for n, item in enumerate(body.queries):
            if item.q is not None:
                check_text(item.q, f"queries[{n}].q")
        results = []
        for item in body.queries:
            try:
                results.append(service.similar(item.q, item.id, body.k, item.dataset))
            except HTTPError as exc:
                results.append({"error": exc.message, "status": exc.status})
            except StoreError:
                raise  # a store the server cannot read fails the whole request (503), as it does a GET
            except FeatureStoreError as exc:
                results.append({"error": service.message(exc), "status": 400})
        return {"k": body.k, "results": results}

    @app.post("/similar", dependencies=auth, summary="Several similarity queries in one request")
    async def similar_post(body: BatchRequest) -> dict[str, Any]:
        """Each query gets ``{"hits": [...]}`` or ``{"error": ..., "status": ...}``, in order."""
        return await service.call(similar_batch, body)

    @app.get("/vectors/{dataset}/{id}", dependencies=auth, summary="The stored vector of a row")
    def vector(dataset: str, id: str) -> dict[str, Any]:
        return service.vector(dataset, id)

    @app.get("/datasets", dependencies=auth, summary="Datasets: rows, labelled rows, classes")
    def datasets() -> dict[str, Any]:
        return service.datasets()

    @app.get("/health", dependencies=auth, summary="Latest generation and the stored vector spaces")
    def health() -> dict[str, Any]:
        return service.health()

    app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES)
    return app


@functools.cache
def _docs_file(name: str) -> bytes:
    return resources.files(swagger_ui_files).joinpath(name).read_bytes()


def _version() -> str:
    from featurestore import __version__

    return __version__


def search_threads(settings: Settings) -> int:
    """Threads for one search's native code: as asked, else one for an approximate index and the cores for
    a brute-force one (Flat).

    A server has its parallelism across queries (``Service.call``), and a parallel region inside one query
    is as slow as its slowest thread: on cores that other work shares (an ``fs ingest`` beside the server),
    that thread waits for a scheduler slice. A 2-thread product of 16 queries x 8,000 rows, one core busy
    elsewhere: p99 24 ms, against 1.8 ms in one thread (0.9 ms on an idle machine). ``bench/serve.py`` at 1M
    vectors, IVF, while ``fs ingest`` writes: p99 245 -> 165 ms, 169 -> 214 req/s, quiet unchanged. A scan of
    a million vectors is another matter: one thread halved the exact server's quiet rate (27.2 -> 14.4 req/s).
    """
    if settings.search_threads:
        return settings.search_threads
    try:
        fs = FeatureStore(settings.store)
        space = fs.space(settings.model, settings.clean, settings.dtype)
        from featurestore.query import index as faiss_index

        return usable_cores() if faiss_index.served_kind(fs.store, space) == "flat" else 1
    except FeatureStoreError:  # no store or no such space yet: the server says so to each query
        return 1


def limit_native_threads(n: int) -> None:
    """Run the native code of FAISS (OpenMP) and of numpy's and FAISS's OpenBLAS in ``n`` threads (process-wide)."""
    import numpy  # noqa: F401 -- its OpenBLAS is loaded, so that the limit reaches it
    from threadpoolctl import threadpool_limits

    from featurestore.query import index as faiss_index

    faiss_index.set_threads(n)
    threadpool_limits(limits=n)


def server_stack() -> tuple[str, str]:
    """uvicorn's (event loop, HTTP parser): uvloop and httptools, from the ``serve`` extra, when installed (a
    query's server CPU 3.5 -> 2.8 ms at 1M vectors); otherwise asyncio's loop and the pure-Python h11."""
    found = importlib.util.find_spec
    return ("uvloop" if found("uvloop") else "asyncio", "httptools" if found("httptools") else "h11")


#: how ``run`` hands the settings to its worker processes (``app_from_env``)
SETTINGS_ENV = "FS_SERVE_SETTINGS"


def app_from_env() -> FastAPI:
    """The app of one worker process of ``fs serve --workers N``: uvicorn imports it by name in each worker,
    with the settings ``run`` put in ``FS_SERVE_SETTINGS``."""
    from featurestore.inputs import clean

    clean.SPACY_WITHOUT_TORCH = True  # as in the fs process that started it
    settings = Settings(**json.loads(os.environ[SETTINGS_ENV]))
    limit_native_threads(search_threads(settings))
    return create_app(settings)


def run(
    settings: Settings,
    host: str = "127.0.0.1",
    port: int = 8080,
    log_level: str = "info",
    ready: Callable[[str], None] | None = None,
    workers: int = 1,
) -> None:
    """Serve until interrupted. ``ready`` gets the URL once the store has been opened.

    ``workers`` > 1: that many server processes share the port (uvicorn's supervisor starts and restarts them),
    each with its own caches and its own Python lock. The lock is what one process runs out of first: on 2
    cores, a million-vector IVF store answered 365-419 req/s from one process, 625-661 from two (p99 62-66 vs
    44 ms), for about 0.8 GB of memory more (the index file's pages are shared)."""
    import uvicorn

    loop, http = server_stack()
    if workers == 1:
        limit_native_threads(search_threads(settings))
        target: Any = create_app(settings)
        extra: dict[str, Any] = {}
    else:
        FeatureStore(settings.store).store.require_existing()  # the error once, here, not from every worker
        os.environ[SETTINGS_ENV] = json.dumps(asdict(settings))
        target, extra = f"{__name__}:app_from_env", {"factory": True, "workers": workers}
    if ready:
        ready(f"http://{host if ':' not in host else f'[{host}]'}:{port}/")
    log.info("event loop %s, HTTP parser %s, %d worker process(es)", loop, http, workers)
    uvicorn.run(target, host=host, port=port, log_level=log_level, access_log=False, loop=loop, http=http, **extra)
