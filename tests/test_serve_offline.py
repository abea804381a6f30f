"""fs serve without internet: every page it serves (the search page, /docs) loads only what the server itself
answers, and the answers are the files with the right types. Checked twice: from the HTML with TestClient, and
in a real headless Chromium against a real ``fs serve`` that renders /docs with every other host unresolvable, so
the check does not depend on whether the machine running it could reach a CDN."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlsplit

import pytest

pytest.importorskip("fastapi", reason="the serve extra is installed by 'make setup'")
import httpx  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from featurestore.api import FeatureStore  # noqa: E402
from featurestore.serving import serve  # noqa: E402
from tests.conftest import FAKE, ROOT, free_port, train_rows, wait_up, write_csv  # noqa: E402
from tests.fakes import CountingEmbedder  # noqa: E402

N = 40
HOST = "fs-docs.test"  # the browser resolves this name, and only this one, to the server (--host-resolver-rules)
# Set by .ci/run once it has installed Chromium: from then on a missing browser fails the test instead of skipping it.
REQUIRE_BROWSER = "FS_REQUIRE_BROWSER"


@pytest.fixture(scope="module")
def offline_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("offline")
    src = write_csv(tmp / "train.csv", train_rows(N))
    FeatureStore(tmp / "store").ingest(str(src), "train", FAKE, "raw-v1", embedder=CountingEmbedder())
    return tmp / "store"


@pytest.fixture(scope="module")
def client(offline_store: Path) -> TestClient:
    return TestClient(serve.create_app(serve.Settings(store=str(offline_store), model=FAKE, clean="raw-v1")))


class _Urls(HTMLParser):
    """Every URL a page names in an attribute (``src``, ``href``) with its tag."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[tuple[str, str, str]] = []  # (tag, attribute, url)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href", "srcset", "poster", "data") and value:
                self.urls.append((tag, name, value.strip()))


def urls_of(html: str) -> list[tuple[str, str, str]]:
    parser = _Urls()
    parser.feed(html)
    return parser.urls


def foreign(urls: list[tuple[str, str, str]], origin: str) -> list[str]:
    """The URLs that name another origin (a scheme or a host of their own); fragments and data: are the page's."""
    out = []
    for _, _, url in urls:
        parts = urlsplit(url)
        if parts.scheme == "data" or url.startswith("#"):
            continue
        if parts.scheme or parts.netloc or url.startswith("//"):
            if f"{parts.scheme}://{parts.netloc}" != origin:
                out.append(url)
    return out


# what each kind of file the pages load must be answered as
TYPES = {".js": "javascript", ".css": "text/css", ".png": "image/png", ".json": "application/json"}


@pytest.mark.parametrize("page", ["/", "/docs"])
def test_every_url_of_a_page_is_this_servers_and_answers_with_its_type(client: TestClient, page: str) -> None:
    r = client.get(page)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    urls = urls_of(r.text)
    assert foreign(urls, "http://testserver") == []
    assets = [url for tag, _, url in urls if tag in ("script", "link", "img")]
    if page == "/docs":
        # FastAPI's page takes these three from a CDN; the API description comes from the inline script
        assert {Path(urlsplit(u).path).name for u in assets} == set(serve.DOCS_FILES)
        assert "url: '/openapi.json'" in r.text
        assets.append("/openapi.json")
    for url in assets:
        got = client.get(url)
        assert got.status_code == 200, (url, got.text[:200])
        assert TYPES[Path(urlsplit(url).path).suffix] in got.headers["content-type"], (url, got.headers)
        assert len(got.content) > 100, url
        if url.endswith(".css"):  # a stylesheet can load more (fonts, images): only data: URLs in this one
            assert [u for u in got.text.split("url(")[1:] if not u.lstrip("\"'").startswith("data:")] == []


def test_redoc_is_not_served_and_unknown_docs_files_are_404(client: TestClient) -> None:
    assert client.get("/redoc").status_code == 404  # its page loads a CDN script and Google's fonts
    r = client.get(serve.DOCS_ASSETS + "/__init__.py")  # only the named files of the package, not its folder
    assert r.status_code == 404 and "swagger-ui-bundle.js" in r.json()["error"]
    assert client.get("/docs/oauth2-redirect").status_code == 404  # bearer tokens only: no OAuth2 page


# ---- a real browser on a real server


@pytest.fixture(scope="module")
def browser() -> str:
    """Chromium's path; a skip where there is none (before the server starts), a failure where .ci/run put one."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get(REQUIRE_BROWSER):
            pytest.fail(f"{REQUIRE_BROWSER} is set and no chromium is on PATH")
        pytest.skip("no chromium on PATH (Debian: apt-get install chromium; .ci/run installs it)")
    return found


@pytest.fixture(scope="module")
def real_server(offline_store: Path) -> Iterator[int]:
    """``fs serve`` in a process of its own; its port."""
    port = free_port()
    command = ["serve", "--store", str(offline_store), "--port", str(port), "--model", FAKE, "--clean", "raw-v1"]
    proc = subprocess.Popen([sys.executable, "-m", "cli.main", *command], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        wait_up(f"http://127.0.0.1:{port}/", proc)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def rendered(browser: str, url: str, profile: Path) -> str:
    """The page's DOM once its scripts have run, as headless Chromium leaves it, with no host but ``HOST``."""
    proc = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",  # as root (CI)
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={profile}",
            f"--host-resolver-rules=MAP {HOST} 127.0.0.1, MAP * ~NOTFOUND",  # a CDN is unreachable, online or not
            "--virtual-time-budget=5000",  # the page's scripts and fetches run to completion first
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_docs_render_the_api_in_a_browser_without_internet(browser: str, real_server: int, tmp_path: Path) -> None:
    origin = f"http://{HOST}:{real_server}"
    dom = rendered(browser, origin + "/docs", tmp_path / "profile")
    # Swagger UI's rendered operations: markup its script builds from /openapi.json, absent from the served HTML
    for path in ("/similar", "/vectors/{dataset}/{id}", "/datasets", "/health"):
        assert f'data-path="{path}"' in dom, dom[:2000]
    assert 'class="opblock opblock-post' in dom and 'class="opblock opblock-get' in dom
    assert (
        foreign([u for u in urls_of(dom) if u[0] != "a"], origin) == []
    )  # nothing the page loaded came from elsewhere


def test_search_page_finds_a_stored_tweet_in_a_browser_without_internet(
    browser: str, real_server: int, tmp_path: Path
) -> None:
    origin = f"http://{HOST}:{real_server}"
    tweet = train_rows(N)[3]["tweet"]
    dom = rendered(browser, f"{origin}/?{httpx.QueryParams({'q': tweet, 'k': 5})}", tmp_path / "profile")
    assert "5 hits · generation" in dom, dom[-2000:]  # the page's script ran, called /similar and drew the hits
    assert 'option value="train"' in dom  # and /datasets
    assert foreign([u for u in urls_of(dom) if u[0] != "a"], origin) == []
