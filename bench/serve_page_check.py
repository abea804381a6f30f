"""The search page of `fs serve` in a real headless Chromium: a search, an error, and a token prompt.

Builds a small store of real tweets (the bundled train CSV, counting fake embedder, raw-v1), starts
`fs serve` on it as a subprocess, loads ``/?q=...`` (the page fills the box and searches on load)
in Chromium, checks the rendered DOM (hits with score, dataset:id, label and text; the JSON error
shown; the token box on 401) and writes PNG screenshots to look at:

    apt-get install -y chromium          # once (Debian's package)
    .venv/bin/python bench/serve_page_check.py --out /tmp/fs-page

Exits non-zero when a check fails. Not part of `make test`: CI has no browser.
"""

from __future__ import annotations

import argparse
import csv
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TRAIN_CSV = ROOT / "data" / "av-twitter-sentiment" / "train_2kmZucJ.csv"
FAKE = "py:tests.fakes:CountingEmbedder"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--window-size=1100,900",
    "--virtual-time-budget=8000",
]


def build_store(tmp: Path, n: int) -> tuple[Path, list[dict[str, str]]]:
    from featurestore.api import FeatureStore
    from tests.fakes import CountingEmbedder

    with open(TRAIN_CSV, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))[:n]
    src = tmp / "tweets.csv"
    with open(src, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["id", "label", "tweet"], extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    FeatureStore(tmp / "store").ingest(str(src), "train", FAKE, "raw-v1", embedder=CountingEmbedder())
    return tmp / "store", rows


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(store: Path, port: int, token: str | None) -> subprocess.Popen:
    cmd = [
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
        *(["--token", token] if token else []),
    ]
    proc = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    for _ in range(200):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).read()
            return proc
        except OSError:
            if proc.poll() is not None:
                raise SystemExit(f"fs serve exited: {proc.stderr.read() if proc.stderr else ''}") from None
            time.sleep(0.1)
    raise SystemExit("fs serve did not start")


def chromium(url: str, *, screenshot: Path | None, profile: Path) -> str:
    """The DOM after the page's scripts ran (and a screenshot when asked)."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if exe is None:
        raise SystemExit("no chromium on PATH; fix: apt-get install -y chromium")
    base = [exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}"]
    dom = subprocess.run([*base, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
    if screenshot is not None:
        subprocess.run([*base, f"--screenshot={screenshot}", url], capture_output=True, timeout=120, check=True)
    return dom


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("/tmp/fs-page"), help="folder for the screenshots")
    ap.add_argument("--rows", type=int, default=400, help="tweets in the test store")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="fs-page-"))
    failures: list[str] = []

    def check(ok: bool, what: str) -> None:
        print(("ok    " if ok else "FAIL  ") + what)
        if not ok:
            failures.append(what)

    try:
        store, rows = build_store(tmp, args.rows)
        query = rows[3]["tweet"]
        port = free_port()
        proc = start_server(store, port, None)
        try:
            url = f"http://127.0.0.1:{port}/?" + urllib.parse.urlencode({"q": query, "k": 5})
            png = args.out / "search.png"
            dom = chromium(url, screenshot=png, profile=tmp / "profile1")
            check(dom.count('class="score"') == 5, "5 hits rendered")
            check('class="score">1.0000<' in dom, "the stored tweet itself is the top hit, score 1.0000")
            check(f"train:{rows[3]['id']}" in dom, f"its dataset:id train:{rows[3]['id']} is shown")
            check("label 0" in dom or "label 1" in dom, "labels are shown")
            check("generation" in dom, "status line shows the generation")
            print(f"screenshot {png}")
            png = args.out / "error.png"
            dom = chromium(f"http://127.0.0.1:{port}/?q=%20%20%20", screenshot=png, profile=tmp / "profile2")
            check("empty after cleaning" in dom and 'role="alert"' in dom, "a JSON error's message is shown")
            print(f"screenshot {png}")
        finally:
            proc.terminate()
            proc.wait(10)
        port = free_port()
        proc = start_server(store, port, "s3cret")
        try:
            png = args.out / "token.png"
            dom = chromium(f"http://127.0.0.1:{port}/?q=hello", screenshot=png, profile=tmp / "profile3")
            check(
                "bearer token missing" in dom and 'id="auth" style="display: block;"' in dom,
                "401: the token box appears with the message",
            )
            print(f"screenshot {png}")
        finally:
            proc.terminate()
            proc.wait(10)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("all checks passed" if not failures else f"{len(failures)} check(s) failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
