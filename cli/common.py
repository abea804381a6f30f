"""What every command shares: turning library errors into one-line messages that name the flags, and help
text shown as written."""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import typer
from typer.core import TyperGroup

try:  # typer >= 0.22 carries its own copy of click
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover - older typer uses click itself
    from click import exceptions as click_errors  # type: ignore[no-redef]  # the same module, another home

from featurestore.errors import FeatureStoreError

F = TypeVar("F", bound=Callable[..., Any])
log = logging.getLogger("featurestore.cli")

# Library parameter -> the flag a CLI user types (the rest are --name-with-dashes).
_FLAGS = {"commit_rows": "--batch-rows", "fmt": "--format", "text": "the query text", "header": "--no-header"}


def flag_of(param: str) -> str:
    return _FLAGS.get(param, "--" + param.replace("_", "-"))


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print ``Error: message`` on stderr (always one line); return the Exit to raise."""
    typer.echo("Error: " + " ".join(message.split()), err=True)
    return typer.Exit(code)


def handle_errors(func: F) -> F:
    """Run a command; any failure becomes ``Error: ...`` and a non-zero exit, never a traceback.

    A FeatureStoreError is a user mistake with its fix in the message. An OSError is the
    machine refusing (permissions, disk): its reason is shown. Anything else is a bug of
    ours: it is reported as an internal error in one line (FS_DEBUG=1 shows the traceback).
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except FeatureStoreError as exc:
            raise fail(exc.render(flag_of), exc.exit_code) from None
        except KeyboardInterrupt:
            typer.echo("Interrupted.", err=True)
            raise typer.Exit(130) from None
        except BrokenPipeError:
            sys.stderr.close()
            raise typer.Exit(1) from None
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except OSError as exc:
            where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
            raise fail(f"{exc.strerror or exc}{where}; fix: check the path and its permissions", 1) from None
        except Exception as exc:
            if os.environ.get("FS_DEBUG"):
                raise
            log.debug("internal error", exc_info=True)
            raise fail(
                f"internal error ({type(exc).__name__}: {str(exc)[:200]}); this is a featurestore bug: "
                "please report it with the command (FS_DEBUG=1 shows the traceback)",
                70,
            ) from None

    return wrapper  # type: ignore[return-value]


def literal_help(command: Any) -> None:
    """Show the help of ``command`` and of every command under it as written, in click's plain layout.

    Typer's default reads help text as rich markup, where ``[...]`` is a style tag: ``pip install
    'featurestore[ray]'`` lost its ``[ray]`` and ``[default 32]`` vanished. Help texts here are plain text.
    Typer gives every command of an app the root's mode; this sets it on the built commands instead, so
    that one group class (below) covers the whole tree.
    """
    command.rich_markup_mode = None
    for sub in getattr(command, "commands", {}).values():  # a group (typer vendors its own click: duck-typed)
        literal_help(sub)


class OneLineErrors(TyperGroup):
    """The ``fs`` group: a mistyped option or value is one line ``Error: ...`` with where to look, like
    every other user mistake, instead of click's boxed usage message; help text is shown as written
    (:func:`literal_help`)."""

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        literal_help(self)

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        try:
            rv = super().main(
                args=args,
                prog_name=prog_name,
                complete_var=complete_var,
                standalone_mode=False,
                windows_expand_args=windows_expand_args,
                **extra,
            )
        except click_errors.NoArgsIsHelpError as exc:  # plain `fs` or `fs models`: the help is the answer
            exc.show()
            rv = 0
        except click_errors.ClickException as exc:
            if not standalone_mode:
                raise
            ctx = getattr(exc, "ctx", None)
            where = f"; fix: see '{ctx.command_path} --help'" if ctx is not None else ""
            raise SystemExit(fail(exc.format_message().rstrip(".") + where, exc.exit_code).exit_code) from None
        except typer.Abort:
            if not standalone_mode:
                raise
            typer.echo("Aborted.", err=True)
            raise SystemExit(1) from None
        if not standalone_mode:
            return rv
        raise SystemExit(rv if isinstance(rv, int) else 0)
