"""The documentation's examples run, and its links resolve (as sqlite-utils tests its docs).

Every ```bash and ```python block of README.md and docs/*.md runs, in page order (README first), in one
folder that holds the first rows of the bundled tweet files at their usual paths, so a later example sees
the store an earlier one made. Blocks of plain commands run ``fs`` in this process (Typer's CliRunner, as
sqlite-utils does) and other commands as processes; blocks that need a shell run in bash with ``fs`` from the
virtual environment; Python blocks run here, by exec. A block that must not run (a download, a server, a
cluster, the whole test suite) says why in a ``<!-- not run: REASON -->`` line just above it:
tests/doc_examples.py.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import shlex
import subprocess
import sys
import traceback
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from tests import doc_examples as docs
from tests.conftest import ROOT

# Only the test that runs the examples is slow: the checks of markers and links run in `make test-fast` too. No
# framework group: the examples run in processes of their own (MiniLM included), so sharing the MiniLM worker's
# import buys nothing, and that worker (Ray, MiniLM) is the longest already.

DATA = Path("data") / "av-twitter-sentiment"
FILES = ("train_2kmZucJ.csv", "test_oJQbWVvk.csv")
ROWS = 200  # of each file: both labels among the train rows, and the ids the examples name (12, 42)
BIN = Path(sys.executable).parent  # the virtual environment's bin: fs and python
README_MAX_LINES = 250
RUN = [b for b in docs.examples() if b.runs]


def test_readme_is_a_guide_not_a_reference() -> None:
    n = len((ROOT / "README.md").read_text("utf-8").splitlines())
    assert n <= README_MAX_LINES, f"README.md has {n} lines (at most {README_MAX_LINES}): move details into docs/"


@pytest.mark.parametrize("page", docs.pages(), ids=docs.rel)
def test_fences_and_markers(page: Path) -> None:
    assert docs.check_fences(page) == []


def test_examples_not_run_say_why() -> None:
    """The examples left out of the run are listed (pytest -rA shows them), each with its reason."""
    skipped = [b for b in docs.examples() if not b.runs]
    for b in skipped:
        assert b.not_run, b.where
        print(f"{b.where}: not run: {b.not_run}")
    assert RUN, "no example runs"
    assert any(b.path.name == "README.md" for b in RUN), "README.md's tour must run"


@pytest.mark.parametrize("page", docs.pages(), ids=docs.rel)
def test_relative_links_resolve(page: Path) -> None:
    assert docs.broken_links(page) == []


def test_slugs_are_githubs() -> None:
    assert docs.slug("Scaling out: `--engine ray`") == "scaling-out---engine-ray"
    assert (
        docs.slug("`fs serve` at a million vectors (`bench/serve.py`)") == "fs-serve-at-a-million-vectors-benchservepy"
    )
    assert docs.slug("Exact scans in bfloat16, still exact") == "exact-scans-in-bfloat16-still-exact"


def test_the_checks_catch_mistakes(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Other\n\n## A heading\n", "utf-8")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](other.md#a-heading) [gone](nowhere.md) [bad anchor](other.md#nope) `[code](skipped.md)`\n"
        "<!-- not run: -->\n```bash\nfs serve\n```\n"
        "<!-- not run: a marker above output -->\n```\noutput\n```\n"
        "```sh\nfs info\n```\n```\nfs info\n```\n",
        "utf-8",
    )
    links = docs.broken_links(page)
    assert len(links) == 2 and "nowhere.md" in links[0] and "#nope" in links[1]
    fences = "\n".join(docs.check_fences(page))
    assert "say why" in fences and "must be the line just above" in fences
    assert "```sh is never run" in fences and "a plain fence holding a command" in fences


def test_a_failing_example_says_its_page_line(tmp_path: Path) -> None:
    block = docs.Block(tmp_path / "page.md", 10, "bash", "true\nfalse\ntrue\n", None)
    proc = subprocess.run(_command(block), capture_output=True, text=True)
    assert proc.returncode == 1 and "failed: page line 12" in proc.stderr  # the fence is line 10, `false` line 12


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder laid out like the repository's root for the examples: the first ``ROWS`` rows of each bundled
    file at data/av-twitter-sentiment/, and no store yet (the README's first example makes ./store)."""
    root = tmp_path_factory.mktemp("docs")
    (root / DATA).mkdir(parents=True)
    for name in FILES:
        with open(ROOT / DATA / name, newline="", encoding="utf-8") as src:
            rows = list(csv.reader(src))[: ROWS + 1]
        with open(root / DATA / name, "w", newline="", encoding="utf-8") as dst:
            csv.writer(dst, lineterminator="\n").writerows(rows)
    return root


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("FS_STORE", "FS_TOKEN")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["NO_COLOR"] = "1"
    env["COLUMNS"] = "120"
    return env


def _command(block: docs.Block) -> list[str]:
    if block.lang == "python":
        return [str(BIN / "python"), "-c", block.code]
    # Stop at the first failing command and say which line of the page it was.
    offset = block.line  # the block's first line is the page's line block.line + 1; the prelude is line 1
    prelude = f"set -eo pipefail; trap 'echo \"failed: page line $((LINENO + {offset - 1}))\" >&2' ERR\n"
    return ["bash", "-c", prelude + block.code]


SHELL_SYNTAX = {"|", "||", "&", "&&", ";", ">", ">>", "<", "(", ")"}


def _plain_commands(code: str) -> list[list[str]] | None:
    """A shell block as one argv a line, when every line is a plain command (no pipe, redirection, variable or
    list); None when the block needs a shell."""
    commands = []
    for line in code.splitlines():
        lex = shlex.shlex(line, posix=True, punctuation_chars=True)
        lex.whitespace_split = True
        tokens = list(lex)  # '#' starts a comment
        if "$" in line or "`" in line or SHELL_SYNTAX & set(tokens):
            return None
        if tokens:
            commands.append(tokens)
    return commands


def _run_in_process(block: docs.Block) -> str | None:
    """Run a block in this process (cwd: the workspace): ``fs`` lines through Typer's CliRunner, other plain
    commands (head, ls) as processes, Python blocks by exec. The failure's account, or None. Starting an ``fs``
    or ``python`` process for each line cost ~1-3 s of imports apiece: most of this file's time."""
    if block.lang == "python":
        out = io.StringIO()
        try:
            with contextlib.redirect_stdout(out):
                exec(compile(block.code, block.where, "exec"), {"__name__": "__main__"})
        except Exception:  # noqa: BLE001 - any failure of the example is the finding
            return f"{out.getvalue()[-2000:]}{traceback.format_exc()[-4000:]}"
        return None
    commands = _plain_commands(block.code)
    assert commands is not None
    runner = CliRunner()
    for n, argv in enumerate(commands):
        if argv[0] == "fs":
            r = runner.invoke(app, argv[1:], env={"NO_COLOR": "1", "COLUMNS": "120", "FS_STORE": None})
            if r.exit_code != 0:
                return f"command {n + 1} ({' '.join(argv)}) exited {r.exit_code}\n{r.output[-4000:]}"
        else:
            proc = subprocess.run(argv, env=_env(), capture_output=True, text=True, timeout=60)
            if proc.returncode != 0:
                return f"command {n + 1} ({' '.join(argv)}) exited {proc.returncode}\n{proc.stderr[-2000:]}"
    return None


@pytest.mark.slow
@pytest.mark.parametrize("block", RUN, ids=lambda b: b.where)
def test_example_runs(block: docs.Block, workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(workspace)
    if block.lang == "python" or _plain_commands(block.code) is not None:
        failure = _run_in_process(block)
        if failure is not None:
            pytest.fail(
                f"the example at {block.where} ({block.lang}) failed\n--- the example\n{block.code}"
                f"--- what it said\n{failure}",
                pytrace=False,
            )
        return
    assert (BIN / "fs").exists(), f"no fs beside {sys.executable}: pip install -e . first"
    proc = subprocess.run(
        _command(block),
        cwd=workspace,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    if proc.returncode != 0:
        pytest.fail(
            f"the example at {block.where} ({block.lang}) exited {proc.returncode}\n"
            f"--- the example\n{block.code}--- its output\n{proc.stdout[-4000:]}{proc.stderr[-4000:]}",
            pytrace=False,
        )


def test_plain_blocks_are_told_from_shell_ones() -> None:
    assert _plain_commands("fs info   # a comment\nhead -3 out.csv\n") == [["fs", "info"], ["head", "-3", "out.csv"]]
    assert _plain_commands('fs similar "a | b" --k 2\n') == [["fs", "similar", "a | b", "--k", "2"]]
    for shell in ("printf 'a' > q.txt\n", "fs info | head\n", "echo $HOME\n", "fs info && fs check\n"):
        assert _plain_commands(shell) is None, shell
