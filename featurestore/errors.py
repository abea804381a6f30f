"""The exceptions featurestore raises for problems a user can fix.

Every message names the bad value and says how to fix it; the CLI prints
``Error: <message>`` and exits non-zero, without a traceback.
"""
from __future__ import annotations


class FeatureStoreError(Exception):
    """Base class: a problem with the user's input, data or environment."""

    exit_code = 1


class InputFileError(FeatureStoreError):
    """An input file is missing, empty, undecodable or has the wrong columns."""


class DatasetError(FeatureStoreError):
    """A dataset name is invalid or does not exist, or its rows conflict."""


class LabelError(FeatureStoreError):
    """Labels are missing or not usable for training."""


class ModelError(FeatureStoreError):
    """An embedder cannot be found, loaded or trusted."""


class StoreError(FeatureStoreError):
    """The store cannot be opened, written or trusted."""


class StoreLockedError(StoreError):
    """Another process is writing to the store."""


class DriftError(ModelError):
    """The embedder no longer reproduces the vectors already stored in its space."""
