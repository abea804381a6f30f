"""The one place TensorFlow (and tensorflow_hub) is imported for featurestore's embedders.

Two environment variables are set for TensorFlow's own import only, and only where the user
has not set them; they are removed again once the import is done, so the rest of the process
(a notebook's own TensorFlow settings, subprocesses it starts) sees the environment it had:

- ``TF_ENABLE_ONEDNN_OPTS=1``: oneDNN is TensorFlow's CPU kernel library; TF 2.21 leaves it off
  on AMD CPUs, and its default Eigen kernels are built without FMA. On this project's 2-core AMD
  EPYC, oneDNN made ELMo's 512-row products 2-3x faster (README, ELMo benchmark). TensorFlow reads
  the switch once, while it is imported, so it must be set before that import and not after
  (``TF_ENABLE_ONEDNN_OPTS=0`` in the user's environment turns it off).
- ``TF_CPP_MIN_LOG_LEVEL=3``: keeps TensorFlow's C++ log lines off the user's terminal, ERROR ones
  included: on a machine without a GPU, TensorFlow logs ``E0000 ... failed call to cuInit`` when it
  first looks for devices, and on some CPUs oneDNN's ``E0000 ... Falling back to the default
  Eigen-based implementation``; neither is an error of the user's. TensorFlow reads the level once,
  during its import, so it keeps applying after the variable is removed. Real failures still reach the
  user, as the Python exceptions TensorFlow raises.

What the C++ side prints while its libraries load comes before that level applies (absl's ``WARNING: All
log messages before absl::InitializeLog() ...`` and ``I0000 ... port.cc] oneDNN custom operations are on``):
file descriptor 2 goes to a temporary file for the import, and everything in it but those log lines (a
Python warning, say) is written back to stderr afterwards.

``FS_DEBUG=1``, or ``TF_CPP_MIN_LOG_LEVEL`` set by the user, shows TensorFlow's logs as TensorFlow prints
them: no level is set and nothing is hidden. If the user's code imported TensorFlow first, nothing is set
either: its import already happened.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
from collections.abc import Iterator
from types import ModuleType
from typing import Any

from featurestore.machine import debug, native_stderr_without

#: a TensorFlow tensor (or a value TF converts to one) in annotations: TensorFlow is imported on use, so
#: its own types cannot be named where it is not yet loaded
Tensor = Any

#: set for TensorFlow's import unless the user chose otherwise (see the module docstring)
TF_IMPORT_ENV = {"TF_ENABLE_ONEDNN_OPTS": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}

#: a C++ log line of TensorFlow: absl's ``I0000 00:00:1796674913.025749    9022 port.cc:153] ...``, TensorFlow's
#: older ``2026-12-07 20:22:12.829331: E tensorflow/core/...cc:52] ...``, absl's notice, and the one known second
#: line of a message (cpu_feature_guard's). Only these are hidden: a line of any other form is written back.
_CPP_LOG_LINE = re.compile(
    rb"[IWEF]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [^ \]]+:\d+\] "  # absl writes 00:00:<epoch seconds> early on
    rb"|\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWEF] [^ \]]+:\d+\] "
    rb"|WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    rb"|To enable the following instructions: .*rebuild TensorFlow with the appropriate compiler flags"
)

#: one import at a time: the environment and file descriptor 2 are the process's, not a thread's
_import_lock = threading.Lock()


def without_cpp_logs(text: bytes) -> bytes:
    """``text`` less TensorFlow's C++ log lines; every other line is kept as it was."""
    return b"".join(line for line in text.splitlines(keepends=True) if not _CPP_LOG_LINE.match(line))


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
    with _import_lock:
        imported = sys.modules.get("tensorflow")  # another thread's import, while this one waited
        if imported is not None:
            return imported
        quiet = not debug() and "TF_CPP_MIN_LOG_LEVEL" not in os.environ
        env = TF_IMPORT_ENV if quiet else {k: v for k, v in TF_IMPORT_ENV.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
        hidden = native_stderr_without(_CPP_LOG_LINE.match) if quiet else contextlib.nullcontext()
        with _env_defaults(env), hidden:
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


__all__ = ["TF_IMPORT_ENV", "debug", "tensorflow", "tensorflow_hub", "without_cpp_logs"]
