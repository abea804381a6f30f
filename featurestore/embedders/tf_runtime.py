"""The one place TensorFlow is imported for featurestore's embedders.

oneDNN is TensorFlow's CPU kernel library; TF 2.21 leaves it off on AMD CPUs, and its
default Eigen kernels are built without FMA. On this project's 2-core AMD EPYC, oneDNN
made ELMo's 512-row products 2-3x faster (README, ELMo benchmark). The switch is read once,
when TensorFlow is first imported, so it is set here, before that import, unless the user
already chose (``TF_ENABLE_ONEDNN_OPTS=0`` turns it off).
"""
from __future__ import annotations

import os
from types import ModuleType


def tensorflow() -> ModuleType:
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TF's start-up chatter off the user's terminal
    import tensorflow as tf

    return tf


def tensorflow_hub() -> ModuleType:
    import warnings

    tensorflow()
    # tensorflow_hub 0.16 imports pkg_resources, which warns on import; that is not the user's concern.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import tensorflow_hub as hub
    return hub
