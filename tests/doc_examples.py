"""What tests/test_docs.py reads from the documentation: fenced examples, their "not run" markers, links.

The pages are README.md and docs/*.md. A fenced block is an example when its language is ``bash`` or
``python``; it runs unless the line just above its fence is a marker saying why not::

    <!-- not run: starts a server that runs until Ctrl-C -->
    ```bash
    fs serve
    ```

A fence without a language holds output or a diagram, never a command to type (``check_fences`` says so).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import ROOT

RUN_LANGUAGES = ("bash", "python")
# Languages that would hide a command from the run: write ```bash or ```python instead.
UNRUN_LANGUAGES = ("sh", "shell", "console", "zsh", "py", "python3", "pycon", "ipython")
NOT_RUN = re.compile(r"^<!--\s*not run:\s*(?P<reason>.*?)\s*-->\s*$")
FENCE = re.compile(r"^(?P<ticks>```+)\s*(?P<lang>[\w+-]*)\s*$")
# A plain fence whose first line looks like a command to type (``fs ...``, ``.venv/bin/...``, ``make ...``).
COMMAND_LINE = re.compile(r"^(fs|make|python|\.venv/bin/\S+|pip|curl)\s")
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1")


def pages() -> list[Path]:
    """README.md first, then docs/*.md by name: the order the examples run in (a page may use what the README made)."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # of the opening fence, 1-based
    lang: str  # "" for a plain fence
    code: str
    not_run: str | None  # the marker's reason; None: the block runs (bash or python)

    @property
    def where(self) -> str:
        return f"{rel(self.path)}:{self.line}"

    @property
    def runs(self) -> bool:
        return self.lang in RUN_LANGUAGES and self.not_run is None


def blocks(path: Path) -> list[Block]:
    """Every fenced block of a page, in order, with the marker above it if any."""
    lines = path.read_text("utf-8").splitlines()
    out: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start, ticks = i, m["ticks"]
        i += 1
        while i < len(lines) and lines[i].strip() != ticks:
            i += 1
        if i == len(lines):
            raise AssertionError(f"{rel(path)}:{start + 1}: a fence that is never closed")
        marker = NOT_RUN.match(lines[start - 1].strip()) if start else None
        code = "\n".join(lines[start + 1 : i]) + "\n"
        out.append(Block(path, start + 1, m["lang"], code, marker["reason"] if marker else None))
        i += 1
    return out


def examples() -> list[Block]:
    """Every ```bash and ```python block, in run order (marked or not)."""
    return [b for p in pages() for b in blocks(p) if b.lang in RUN_LANGUAGES]


def check_fences(path: Path) -> list[str]:
    """Problems with a page's fences and markers: a marker that marks no example, a marker without a reason,
    a language that would escape the run, a plain fence that holds a command."""
    problems: list[str] = []
    lines = path.read_text("utf-8").splitlines()
    found = blocks(path)
    for n, line in enumerate(lines, 1):
        m = NOT_RUN.match(line.strip())
        if m is None:
            prose = CODE_SPAN.sub("", line)  # a marker quoted in a code span is prose
            if "not run" in prose and "<!--" in prose:
                problems.append(f"{rel(path)}:{n}: write the marker as <!-- not run: REASON -->")
            continue
        if len(m["reason"].split()) < 3:
            problems.append(f"{rel(path)}:{n}: say why the example is not run (a few words), got {m['reason']!r}")
        marked = next((b for b in found if b.line == n + 1), None)
        if marked is None or marked.lang not in RUN_LANGUAGES:
            problems.append(f"{rel(path)}:{n}: a 'not run' marker must be the line just above a ```bash or ```python")
    for b in found:
        if b.lang in UNRUN_LANGUAGES:
            problems.append(f"{b.where}: ```{b.lang} is never run; write ```bash or ```python (or mark it not run)")
        first = next((ln.strip() for ln in b.code.splitlines() if ln.strip()), "")
        if b.lang == "" and COMMAND_LINE.match(first):
            problems.append(f"{b.where}: a plain fence holding a command ({first[:40]!r}); make it ```bash")
    return problems


# ---- links

LINK = re.compile(r"(?<!\\)!?\[(?:[^\]\\]|\\.)*\]\(\s*<?(?P<target>[^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^(#{1,6})\s+(?P<title>.*?)\s*#*\s*$")
HTML_ANCHOR = re.compile(r"<a\s+(?:name|id)=\"(?P<id>[^\"]+)\"")


def prose_lines_raw(path: Path) -> list[tuple[int, str]]:
    """The page's lines outside fenced blocks, as written (headings keep their code spans)."""
    fenced: set[int] = set()
    for b in blocks(path):
        fenced.update(range(b.line, b.line + b.code.count("\n") + 2))
    return [(n, line) for n, line in enumerate(path.read_text("utf-8").splitlines(), 1) if n not in fenced]


def prose_lines(path: Path) -> list[tuple[int, str]]:
    """The page's lines outside fenced blocks, with code spans blanked (a link in code is not a link)."""
    return [(n, CODE_SPAN.sub(lambda m: " " * len(m[0]), line)) for n, line in prose_lines_raw(path)]


def slug(title: str) -> str:
    """GitHub's anchor for a heading: the text as rendered, lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", title)  # a link shows its text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").lower()
    kept = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LNM")
    return kept.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out: set[str] = set()
    for _, line in prose_lines_raw(path):
        m = HEADING.match(line)
        if m:
            base = slug(m["title"])
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")
        out.update(a["id"] for a in HTML_ANCHOR.finditer(line))
    return out


def broken_links(path: Path) -> list[str]:
    """Relative links of a page whose file, or heading anchor in a Markdown file, does not exist."""
    problems: list[str] = []
    for n, line in prose_lines(path):
        for m in LINK.finditer(line):
            target = m["target"]
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:
                continue
            file_part, _, anchor = target.partition("#")
            dest = (path.parent / file_part).resolve() if file_part else path
            where = f"{rel(path)}:{n}: link {target!r}"
            if not dest.exists():
                problems.append(f"{where}: no file {dest}")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                problems.append(f"{where}: {rel(dest)} has no heading with anchor #{anchor}")
    return problems
