"""Test doubles for pipeline logic, importable through the registry as ``py:tests.fakes:CountingEmbedder``.

Their fingerprints are typed like any embedder's; the space id of ``CountingEmbedder()`` is a
golden value in tests/test_models.py, so stores written by tests keep their keys.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from featurestore.embedders.base import REQUIRED_FIELDS, Embedder, Fingerprint

DIM = 16


def fake_vector(text: str, dim: int = DIM) -> np.ndarray:
    """The deterministic vector the fake gives ``text``: seeded normal noise from a hash of it."""
    seed = int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")
    return np.random.default_rng(seed).standard_normal(dim).astype(np.float32)


class CountingEmbedder(Embedder):
    """Counts ``embed_batch`` calls and records every input, per instance and across instances.

    The CLI builds a fresh instance per command, so the class-level ``log`` is what CLI
    tests read; the conftest clears it before every test.
    """

    name = "counting"
    log: list[list[str]] = []  # every batch of every instance, in call order

    def __init__(
        self, dim: int = DIM, max_batch_tokens: int = 8192, max_batch_size: int = 512, **fingerprint: Any
    ) -> None:
        """``fingerprint`` overrides ``model``, ``weights_sha256``, ``output`` or ``pooling``, or adds extra fields."""
        self._dim = dim
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_size = max_batch_size
        self._fingerprint = {
            "model": "counting-fake",
            "weights_sha256": "0" * 64,
            "output": "default",
            "pooling": "mean",
            **fingerprint,
        }
        self.batches: list[list[str]] = []

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def fingerprint(self) -> Fingerprint:
        fp = self._fingerprint
        return Fingerprint(
            **{k: fp[k] for k in REQUIRED_FIELDS}, extra={k: v for k, v in fp.items() if k not in REQUIRED_FIELDS}
        )

    @property
    def calls(self) -> int:
        return len(self.batches)

    @property
    def inputs(self) -> list[str]:
        return [t for b in self.batches for t in b]

    def embed_batch(self, texts: list[str]) -> np.ndarray:
        self.batches.append(list(texts))
        CountingEmbedder.log.append(list(texts))
        return np.stack([fake_vector(t, self._dim) for t in texts])


def other_embedder() -> CountingEmbedder:
    """A second 'model': same code, another weights checksum."""
    return CountingEmbedder(weights_sha256="1" * 64, model="other-fake")


class BagOfWordsEmbedder(CountingEmbedder):
    """Sum of per-word fake vectors: texts sharing words get similar vectors, so labels are learnable."""

    name = "bag-of-words"

    def __init__(self, dim: int = 64) -> None:
        super().__init__(dim=dim, model="bag-of-words-fake")

    def embed_batch(self, texts: list[str]) -> np.ndarray:
        self.batches.append(list(texts))
        CountingEmbedder.log.append(list(texts))
        return np.stack([sum(fake_vector(w.lower(), self._dim) for w in t.split()) for t in texts]).astype(np.float32)
