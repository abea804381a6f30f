"""The one place TensorFlow (and tensorflow_hub) is imported for featurestore's embedders.

Two environment variables are set for TensorFlow's own import only, and only where the user
has not set them; they are removed again once the import is done, so the rest of the process
(a notebook's own TensorFlow settings, subprocesses it starts) sees the environment it had:

- ``TF_ENABLE_ONEDNN_OPTS=1``: oneDNN is TensorFlow's CPU kernel library; TF 2.21 leaves it off
  on AMD CPUs, and its default Eigen kernels are built without FMA. On this project's 2-core AMD
  EPYC, oneDNN made ELMo's 512-row products 2-3x faster (README, ELMo benchmark). TensorFlow reads
  the switch once, while it is imported, so it must be set before that import and not after
  (``TF_ENABLE_ONEDNN_OPTS=0`` in the user's environment turns it off).
- ``TF_CPP_MIN_LOG_LEVEL=2``: keeps TensorFlow's start-up chatter off the user's terminal.

If the user's code imported TensorFlow first, nothing is set: its import already happened.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from types import ModuleType
from typing import Any

#: a TensorFlow tensor (or a value TF converts to one) in annotations: TensorFlow is imported on use, so
#: its own types cannot be named where it is not yet loaded
Tensor = Any

#: set for TensorFlow's import unless the user chose otherwise (see the module docstring)
TF_IMPORT_ENV = {"TF_ENABLE_ONEDNN_OPTS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}


@contextlib.contextmanager
def _env_defaults(defaults: dict[str, str]) -> Iterator[None]:
    """Set each variable the user has not set; on exit, remove those again (and only those)."""
    added = [k for k in defaults if k not in os.environ]
    for k in added:
        os.environ[k] = defaults[k]
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


def tensorflow() -> ModuleType:
    """The ``tensorflow`` module, imported on first use with :data:`TF_IMPORT_ENV`."""
    # Fast path without the context manager: this is called inside traced tf.functions,
    # where autograph would try to convert anything more.
    imported = sys.modules.get("tensorflow")
    if imported is not None:
        return imported
    with _env_defaults(TF_IMPORT_ENV):
        import tensorflow as tf
    return tf


def tensorflow_hub() -> ModuleType:
    """The ``tensorflow_hub`` module, TensorFlow imported first as :func:`tensorflow` does."""
    import warnings

    tensorflow()
    # tensorflow_hub 0.16 imports pkg_resources, which warns on import; that is not the user's concern.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import tensorflow_hub as hub
    return hub


__all__ = ["TF_IMPORT_ENV", "tensorflow", "tensorflow_hub"]
