"""The exceptions featurestore raises for problems a user can fix.

Every message names the bad value and says how to fix it. Messages speak of parameters: a
``[[name]]`` marker in a message is the parameter ``name``, shown as ``name`` to Python callers
(``str(exc)``) and as its flag (``--name``) by the CLI (``exc.render(flag_of)``). The CLI
prints ``Error: <message>`` and exits non-zero, without a traceback.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

_PARAM = re.compile(r"\[\[(\w+)\]\]")
_PYTHON_FORM = {
    "header": "header=False",
    "classifier_name": "name",
    "store": "the store path",
}  # parameters whose Python spelling is not their name


class FeatureStoreError(Exception):
    """Base class: a problem with the user's input, data or environment."""

    exit_code = 1

    def __init__(self, message: str = "", *args: Any) -> None:
        self.template = message
        super().__init__(_PARAM.sub(lambda m: _PYTHON_FORM.get(m.group(1), m.group(1)), message), *args)

    def render(self, flag_of: Callable[[str], str]) -> str:
        """The message with each parameter shown as ``flag_of(name)``."""
        return _PARAM.sub(lambda m: flag_of(m.group(1)), self.template)

    def __reduce__(self) -> tuple:
        # Pickled whole (a Ray worker raises it in another process), template included, so the CLI
        # still shows flags; subclasses' own __init__ arguments live in __dict__.
        return _restore, (type(self), self.template, self.__dict__)


def _restore(cls: type[FeatureStoreError], template: str, state: dict) -> FeatureStoreError:
    err = cls.__new__(cls)
    FeatureStoreError.__init__(err, template)
    err.__dict__.update(state)
    return err


class UsageError(FeatureStoreError):
    """A parameter value that cannot work; ``{param}`` in the message names it (see the module doc)."""

    def __init__(self, message: str, param: str) -> None:
        self.param = param
        super().__init__(message.replace("{param}", f"[[{param}]]"))  # not str.format: values may hold braces


class InputFileError(FeatureStoreError):
    """An input file is missing, empty, undecodable or has the wrong columns."""


class DatasetError(FeatureStoreError):
    """A dataset name is invalid or does not exist, or its rows conflict."""


class UnknownIdError(DatasetError):
    """An id asked for by name is not stored (a query by id, a vector lookup)."""


class LabelError(FeatureStoreError):
    """Labels are missing or not usable for training."""


class ClassifierError(FeatureStoreError):
    """A trained classifier is missing, unreadable or does not fit the store."""


class ModelError(FeatureStoreError):
    """An embedder cannot be found, loaded or trusted."""


class SpaceError(ModelError):
    """No stored vector space fits the request, or several do and the choice is ambiguous."""


class StoreError(FeatureStoreError):
    """The store cannot be opened, written or trusted."""


class StoreLockedError(StoreError):
    """Another process is writing to the store."""


class DriftError(ModelError):
    """The embedder no longer reproduces the vectors already stored in its space."""


class IngestInterrupted(FeatureStoreError):
    """Ctrl-C during an ingest: what was committed stays; ``summary`` says how much."""

    exit_code = 130

    def __init__(self, summary: Any) -> None:
        self.summary = summary
        super().__init__(
            f"interrupted: {summary.batches_committed} batch(es) committed ({summary.embedded} texts embedded, "
            f"{summary.new_ids} new ids committed); run the same command again to continue where it stopped"
        )
