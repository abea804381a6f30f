"""Deterministic embedders for the integrity tests, loadable by the CLI.

``--model py:tests.integrity_fakes:SlowHashEmbedder`` (run from the repository root):
vectors come from a hash of the text, so two runs give identical vectors. Two
environment variables make a subprocess observable and killable:

- ``FS_FAKE_SLEEP``: seconds to sleep per ``embed_batch`` call (a kill window);
- ``FS_FAKE_LOG``: a file to which every batch of texts is appended as one JSON line
  ``{"pid": ..., "texts": [...]}``, before the vectors are returned.

``LinearEmbedder`` maps hashed character features through a fixed weight matrix;
``FS_FAKE_TWEAK=<delta>`` adds ``delta`` to one weight while its fingerprint stays the
same, which is exactly the silent drift that the canary check must catch.
"""

from __future__ import annotations

import hashlib
import json
import os
import time

import numpy as np

from featurestore.embedders.base import Embedder, Fingerprint

DIM = 16


def hash_vector(text: str, dim: int = DIM) -> np.ndarray:
    """The vector ``SlowHashEmbedder`` gives ``text``."""
    seed = int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")
    return np.random.default_rng(seed).standard_normal(dim).astype(np.float32)


def _log_batch(texts: list[str]) -> None:
    path = os.environ.get("FS_FAKE_LOG")
    if not path:
        return
    line = (json.dumps({"pid": os.getpid(), "texts": texts}, ensure_ascii=True) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)  # one O_APPEND write: lines of concurrent writers never interleave
    finally:
        os.close(fd)


def read_log(path: str | os.PathLike) -> list[tuple[int, list[str]]]:
    """``(pid, texts)`` per logged batch; a torn last line (killed writer) is skipped."""
    out = []
    try:
        data = open(path, "rb").read().decode()
    except FileNotFoundError:
        return out
    for line in data.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        out.append((int(rec["pid"]), list(rec["texts"])))
    return out


class SlowHashEmbedder(Embedder):
    """Hash-seeded vectors; optionally slow and logging (see the module docstring)."""

    name = "slow-hash"
    max_batch_size = 32

    def __init__(self, dim: int = DIM) -> None:
        self._dim = dim

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def fingerprint(self) -> Fingerprint:
        return Fingerprint(model="slow-hash-fake", weights_sha256="0" * 64, output="default", pooling="none")

    def embed_batch(self, texts: list[str]) -> np.ndarray:
        _log_batch(texts)
        delay = float(os.environ.get("FS_FAKE_SLEEP") or 0)
        if delay:
            time.sleep(delay)
        return np.stack([hash_vector(t, self._dim) for t in texts])


class LinearEmbedder(Embedder):
    """``W @ features(text)``: features are a bias plus hashed character-trigram counts.

    ``tweak`` (or ``FS_FAKE_TWEAK``) is added to ``W[0, 0]``, the weight of the bias,
    so every vector moves by exactly ``tweak`` in its first component. The fingerprint
    does not mention the tweak: same name, same "checksum", different weights.
    """

    name = "linear"
    n_features = 64

    def __init__(self, tweak: float | None = None, dim: int = DIM) -> None:
        self._dim = dim
        self.W = np.random.default_rng(1234).standard_normal((dim, self.n_features)).astype(np.float32)
        tweak = float(os.environ.get("FS_FAKE_TWEAK") or 0) if tweak is None else tweak
        self.W[0, 0] += np.float32(tweak)

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def fingerprint(self) -> Fingerprint:
        return Fingerprint(model="linear-fake", weights_sha256="1" * 64, output="default", pooling="sum")

    def _features(self, text: str) -> np.ndarray:
        f = np.zeros(self.n_features, np.float32)
        f[0] = 1.0
        padded = f"  {text}  "
        for i in range(len(padded) - 2):
            h = hashlib.blake2b(padded[i : i + 3].encode("utf-8", "surrogatepass"), digest_size=4).digest()
            f[1 + int.from_bytes(h, "little") % (self.n_features - 1)] += 1.0
        f[1:] /= max(1.0, float(np.linalg.norm(f[1:])))  # the bias stays 1: a tweak moves every vector
        return f

    def embed_batch(self, texts: list[str]) -> np.ndarray:
        _log_batch(texts)
        return np.stack([self.W @ self._features(t) for t in texts]).astype(np.float32)


class Payload:
    """Stands for a hostile object in a classifier file: unpickling it touches ``marker``."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):  # pickle calls Path(marker).touch() on load: code from a data file
        from pathlib import Path

        return (Path.touch, (Path(self.marker),))

    def __setstate__(self, state: dict) -> None:  # skops would call this on load
        from pathlib import Path

        Path(state["marker"]).touch()
        self.__dict__.update(state)
