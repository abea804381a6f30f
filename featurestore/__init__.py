"""featurestore: embed each short text once, keep the vectors in HDF5, train and search from there."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

from featurestore.errors import FeatureStoreError  # noqa: E402


def __getattr__(name: str) -> Any:  # lazy: importing featurestore must not import FAISS or h5py
    if name in ("FeatureStore", "open_store"):
        from featurestore import api

        return getattr(api, name)
    raise AttributeError(name)


__all__ = ["FeatureStore", "FeatureStoreError", "__version__", "open_store"]
