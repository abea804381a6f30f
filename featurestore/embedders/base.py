"""The embedder interface: subclasses implement ``embed_batch``; this class batches.

Batches are formed by length under a token budget, so a batch of short tweets is
large and a batch holding a long one is small, and few positions are padding.
Empty texts never reach the model: their vector is all zeros (documented; never NaN).
"""
from __future__ import annotations

import hashlib
import json
import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from featurestore.errors import ModelError

ProgressFn = Callable[[int], None]


def plan_batches(lengths: Sequence[int], max_tokens: int, max_size: int) -> list[np.ndarray]:
    """Group indices by length so that ``len(batch) * longest <= max_tokens``.

    Indices are sorted by length (stable), then cut greedily; a single text longer
    than the budget gets a batch of its own.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(lengths, kind="stable")
    batches: list[np.ndarray] = []
    start = 0
    n = len(order)
    while start < n:
        end = start + 1
        while end < n and end - start < max_size and (end - start + 1) * lengths[order[end]] <= max_tokens:
            end += 1
        batches.append(order[start:end])
        start = end
    return batches


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def cached_file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a weights file, remembered per (path, size, mtime) so start-up stays fast.

    The cache lives in ``$FS_CACHE_DIR`` (default ``~/.cache/featurestore``); ``fs models verify``
    always recomputes. A file rewritten in place with its old mtime would fool it: don't do that.
    """
    p = Path(path).resolve()
    st = p.stat()
    tag = f"{p}|{st.st_size}|{st.st_mtime_ns}"
    cache_file = Path(os.environ.get("FS_CACHE_DIR") or Path.home() / ".cache" / "featurestore") / "sha256.json"
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cache = {}
    if tag in cache:
        return cache[tag]
    digest = file_sha256(p)
    cache[tag] = digest
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache))
        os.replace(tmp, cache_file)
    except OSError:
        pass  # a read-only home only costs the recomputation next time
    return digest


class Embedder(ABC):
    """Maps a batch of texts to float32 vectors of a fixed dimension."""

    #: registry name, as given to ``--model``
    name: str = "embedder"
    #: padded positions allowed in one batch (batch size x longest text in tokens)
    max_batch_tokens: int = 8192
    #: texts allowed in one batch whatever their length
    max_batch_size: int = 512

    @property
    @abstractmethod
    def dim(self) -> int:
        """Length of every vector."""

    @property
    @abstractmethod
    def fingerprint(self) -> dict[str, Any]:
        """Model identity (incl. a weights checksum), output and pooling: JSON-able fields."""

    @abstractmethod
    def embed_batch(self, texts: list[str]) -> np.ndarray:
        """Embed non-empty texts; return float32 ``[len(texts), dim]``."""

    def count_tokens(self, text: str) -> int:
        """Approximate length used for batching; subclasses may use their tokenizer."""
        return len(text.split()) + 2

    @property
    def device(self) -> str:
        """Where the model runs, for summaries."""
        return "cpu"

    def embed(self, texts: Sequence[str], progress: ProgressFn | None = None) -> np.ndarray:
        """Embed any number of texts in length-bucketed batches; order is preserved."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        todo = [i for i, t in enumerate(texts) if t.strip()]
        if progress and len(todo) < len(texts):
            progress(len(texts) - len(todo))
        lengths = [self.count_tokens(texts[i]) for i in todo]
        for batch in plan_batches(lengths, self.max_batch_tokens, self.max_batch_size):
            idx = [todo[j] for j in batch]
            vecs = np.asarray(self.embed_batch([texts[i] for i in idx]), dtype=np.float32)
            if vecs.shape != (len(idx), self.dim):
                raise ModelError(
                    f"model {self.name!r} returned shape {vecs.shape} for {len(idx)} texts, "
                    f"expected ({len(idx)}, {self.dim}); the model does not map strings to vectors"
                )
            if not np.isfinite(vecs).all():
                bad = texts[idx[int(np.argwhere(~np.isfinite(vecs))[0, 0])]]
                raise ModelError(f"model {self.name!r} returned NaN/Inf for text {bad[:80]!r}; refusing to store it")
            out[idx] = vecs
            if progress:
                progress(len(idx))
        return out
