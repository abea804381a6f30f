"""docs/ARCHITECTURE.md tells the truth: every module is listed, no import goes up a floor, and each heavy
library is imported only by the modules the doc names. The import graph is read from the source (every
``import`` statement, at the top of a file or inside a function), so a doc that drifts fails here."""

from __future__ import annotations

import ast
import fnmatch
import re

import pytest

from tests.conftest import ROOT

DOC = ROOT / "docs" / "ARCHITECTURE.md"
PACKAGES = ("featurestore", "cli")
# The one upward import the doc allows: the package imports its façade on attribute access.
ALLOWED_UPWARD = {("featurestore/__init__.py", "featurestore/api.py")}


def _modules() -> list[str]:
    return sorted(str(p.relative_to(ROOT)) for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def _table(section: str) -> list[list[str]]:
    """The rows (cells, stripped) of the first table under ``## section`` in the doc."""
    text = DOC.read_text("utf-8")
    body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in body.splitlines() if line.startswith("|")]
    return [[c.strip() for c in row.strip("|").split("|")] for row in rows[2:]]  # past the header and its rule


def _names(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def _file_of(module: str) -> str | None:
    """The source file of a dotted module name of this project, or None for another library's."""
    path = ROOT / module.replace(".", "/")
    if (path / "__init__.py").exists():
        return str((path / "__init__.py").relative_to(ROOT))
    if path.with_suffix(".py").exists():
        return str(path.with_suffix(".py").relative_to(ROOT))
    return None


def _imports(file: str) -> tuple[set[str], set[str]]:
    """(project files, other libraries' top-level names) that ``file`` imports anywhere in it."""
    tree = ast.parse((ROOT / file).read_text("utf-8"))
    project, libraries = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from featurestore.query import index`: the module imported is featurestore.query.index
            targets = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
        else:
            continue
        for target in targets:
            if target.split(".")[0] in PACKAGES:
                found = _file_of(target)
                if found is not None and found != file:
                    project.add(found)
            else:
                libraries.add(target.split(".")[0])
    return project, libraries


def _floors() -> dict[str, int]:
    floors = {}
    for floor, cell, *_ in _table("Layers"):
        for pattern in _names(cell):
            for module in _modules():
                if fnmatch.fnmatch(module, pattern):
                    floors[module] = int(floor)
    return floors


def test_every_module_is_on_a_floor_and_has_an_owner_row() -> None:
    modules = set(_modules())
    owners = {name for row in _table("Who owns what") for name in _names(row[0])}
    assert modules - owners == set(), "modules missing from 'Who owns what'"
    assert owners - modules == set(), "'Who owns what' names modules that do not exist"
    assert modules - set(_floors()) == set(), "modules on no floor of 'Layers'"


def test_no_import_goes_up_a_floor() -> None:
    floors = _floors()
    upward = []
    for module in _modules():
        for target in _imports(module)[0]:
            if floors[target] > floors[module] and (module, target) not in ALLOWED_UPWARD:
                upward.append(f"{module} (floor {floors[module]}) imports {target} (floor {floors[target]})")
    assert upward == []


def test_heavy_libraries_are_imported_only_where_the_doc_says() -> None:
    allowed: dict[str, set[str]] = {}
    for libs, where, *_ in _table("Heavy dependencies"):
        for lib in _names(libs):
            allowed[lib] = {m for pattern in _names(where) for m in _modules() if fnmatch.fnmatch(m, pattern)}
    assert allowed, "no heavy libraries listed"
    found: dict[str, set[str]] = {lib: set() for lib in allowed}
    for module in _modules():
        for lib in _imports(module)[1] & set(allowed):
            found[lib].add(module)
    for lib in allowed:
        assert found[lib] <= allowed[lib], f"{lib} imported by {sorted(found[lib] - allowed[lib])}, not in the doc"
        assert found[lib], f"the doc lists {lib}, which no module imports"


@pytest.mark.parametrize("bad", ["upward", "library"])
def test_the_checks_catch_a_violation(bad: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The graph reader sees imports inside functions: a planted one breaks each rule."""
    real = _imports

    def planted(file: str) -> tuple[set[str], set[str]]:
        project, libraries = real(file)
        if file == "featurestore/storage/keys.py":
            if bad == "upward":
                project = project | {"featurestore/query/search.py"}
            else:
                libraries = libraries | {"faiss"}
        return project, libraries

    monkeypatch.setattr(f"{__name__}._imports", planted)
    with pytest.raises(AssertionError):
        if bad == "upward":
            test_no_import_goes_up_a_floor()
        else:
            test_heavy_libraries_are_imported_only_where_the_doc_says()
