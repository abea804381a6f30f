"""What every command shares: turning library errors into one-line messages."""
from __future__ import annotations

import functools
import sys
from typing import Any, Callable, TypeVar

import typer

from featurestore.errors import FeatureStoreError

F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print ``Error: message`` on stderr; return the Exit to raise."""
    typer.echo(f"Error: {message}", err=True)
    return typer.Exit(code)


def handle_errors(func: F) -> F:
    """Run a command; a FeatureStoreError becomes ``Error: ...`` and a non-zero exit, no traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except FeatureStoreError as exc:
            # One line, always: a wrapped library message must not spill over several.
            raise fail(" ".join(str(exc).split()), getattr(exc, "exit_code", 1)) from None
        except KeyboardInterrupt:
            typer.echo("Interrupted.", err=True)
            raise typer.Exit(130) from None
        except BrokenPipeError:
            sys.stderr.close()
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]
