"""featurestore: embed each short text once, keep the vectors in HDF5, train and search from there."""
from __future__ import annotations

__version__ = "0.1.0"

from featurestore.errors import FeatureStoreError  # noqa: E402

__all__ = ["FeatureStoreError", "__version__"]
