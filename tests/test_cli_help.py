"""``--help`` of every ``fs`` command shows its help text as written: ``[...]`` is text, not rich markup
(``pip install 'featurestore[ray]'`` had lost its ``[ray]``)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
import typer
import typer.main
from typer.testing import CliRunner

from cli.common import OneLineErrors, literal_help
from cli.main import app

runner = CliRunner()
BRACKETED = re.compile(r"\[[^\[\]\n]*\]")


def _walk(cmd: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    yield path, cmd
    for name, sub in (getattr(cmd, "commands", None) or {}).items():  # a group (typer vendors click: duck-typed)
        yield from _walk(sub, (*path, name))


def _help_texts(cmd: Any) -> list[str]:
    """The texts ``--help`` shows as written: the command's docstring or help, and each parameter's help."""
    return [t for t in (cmd.help, *(getattr(p, "help", None) for p in cmd.params)) if t]


COMMANDS = list(_walk(typer.main.get_command(app)))


def test_the_tree_is_walked() -> None:
    paths = {" ".join(("fs", *p)) for p, _ in COMMANDS}
    assert {"fs", "fs ingest", "fs similar", "fs models", "fs models list", "fs index", "fs index build"} <= paths
    bracketed = {b for _, cmd in COMMANDS for t in _help_texts(cmd) for b in BRACKETED.findall(t)}
    assert {"[ray]", "[default 32]"} <= bracketed  # what the markup ate


@pytest.mark.parametrize("path", [p for p, _ in COMMANDS], ids=lambda p: " ".join(("fs", *p)))
def test_help_shows_brackets_as_written(path: tuple[str, ...]) -> None:
    cmd = dict(COMMANDS)[path]
    r = runner.invoke(app, [*path, "--help"], prog_name="fs", catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert r.output.startswith(f"Usage: {' '.join(('fs', *path))} ") and "╭" not in r.output, r.output
    shown = " ".join(r.output.split())  # help is wrapped to the terminal: compare words, not lines
    assert len(_help_texts(cmd)) == len(cmd.params) + 1  # every command and parameter has help (test_cli.py)
    for text in _help_texts(cmd):
        assert " ".join(text.split()[:3]) in shown, (path, text, r.output)
        for bracketed in BRACKETED.findall(text):
            assert " ".join(bracketed.split()) in shown, (path, bracketed, r.output)


def test_ingest_help_names_the_ray_extra() -> None:
    r = runner.invoke(app, ["ingest", "--help"], prog_name="fs")
    assert r.exit_code == 0 and "pip install 'featurestore[ray]'" in " ".join(r.output.split()), r.output


def test_literal_help_covers_a_mounted_sub_app() -> None:
    """Typer gives every command the root app's markup mode; the group class sets literal help on all of them."""
    root = typer.Typer(cls=OneLineErrors)
    sub = typer.Typer(help="Sub-commands [x].")
    root.add_typer(sub, name="sub")

    @root.command()
    def top() -> None:
        """Top [a]."""

    @sub.command()
    def leaf(flag: bool = typer.Option(False, help="Needs 'pkg[extra]'.")) -> None:
        """Leaf [b]."""

    built = typer.main.get_command(root)
    assert {getattr(c, "rich_markup_mode", "none") for _, c in _walk(built)} == {None}
    for args, expected in (
        (["--help"], "Sub-commands [x]."),
        (["top", "--help"], "Top [a]."),
        (["sub", "leaf", "--help"], "'pkg[extra]'"),
    ):
        r = runner.invoke(root, args)
        assert r.exit_code == 0 and expected in r.output, r.output
    literal_help(built)  # idempotent
