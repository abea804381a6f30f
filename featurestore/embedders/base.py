"""The embedder interface and its fingerprint: subclasses implement ``embed_batch``; this class batches.

An embedder's :class:`Fingerprint` (typed, validated) names everything that changes its vectors;
every subclass's ``fingerprint`` property is checked to return one.

Batches are formed by length under a token budget, so a batch of short tweets is
large and a batch holding a long one is small, and few positions are padding. The budget and
the batch size may depend on where the model runs (``batch_limits``): CPUs are fastest with
small batches, GPUs with large ones.
Empty texts never reach the model: their vector is all zeros (documented; never NaN).
"""

from __future__ import annotations

import functools
import json
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from featurestore.errors import ModelError

#: Per-text progress of one :meth:`Embedder.embed` call: called with the number of texts just
#: finished (embedded, or skipped as empty); the calls of one ``embed`` sum to ``len(texts)``.
#: Not the ingest/index progress callbacks, which report rows against a total.
BatchProgressFn = Callable[[int], None]


def plan_batches(lengths: Sequence[int], max_tokens: int, max_size: int) -> list[np.ndarray]:
    """Group indices by length so that ``len(batch) * longest <= max_tokens``.

    Indices are sorted by length (stable), then cut greedily; a single text longer
    than the budget gets a batch of its own.
    """
    lens = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(lens, kind="stable")
    batches: list[np.ndarray] = []
    start = 0
    n = len(order)
    while start < n:
        end = start + 1
        while end < n and end - start < max_size and (end - start + 1) * lens[order[end]] <= max_tokens:
            end += 1
        batches.append(order[start:end])
        start = end
    return batches


#: the fields every fingerprint must carry, in the order ``Fingerprint.as_dict`` lists them
REQUIRED_FIELDS: tuple[str, ...] = ("model", "weights_sha256", "output", "pooling")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_FIX = (
    "fix: return featurestore.embedders.Fingerprint(model=..., weights_sha256=<sha256 of the weights>, "
    "output=..., pooling=..., extra={...}) from the embedder's fingerprint property"
)


@dataclass(frozen=True, eq=False)
class Fingerprint(Mapping[str, Any]):
    """Everything about an embedder that changes its vectors; hashed into the vector-space id.

    Required, non-empty: ``model`` (identity), ``weights_sha256`` (64 lowercase hex: the weights'
    checksum, or for a TF Hub module the checksum of all its files), ``output`` (which output or
    layer mix) and ``pooling``. Anything else that changes a vector (normalisation, tokenizer,
    dtype, an implementation version) goes in ``extra``. A missing or malformed field raises
    :class:`~featurestore.errors.ModelError` here, so two models cannot share vectors by leaving
    their weights out.

    Read as a Mapping it is :meth:`as_dict`, which ``keys.space_fields`` hashes. ``key_names``
    exists only so that embedders older than this class keep the dict, hence the space ids, hence
    the stores users already have: TF Hub stores its checksum under ``module_sha256``, for example.
    New embedders leave it empty.
    """

    model: str = ""
    weights_sha256: str = ""
    output: str = ""
    pooling: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)
    #: required field -> the key it is stored under, where that is not its own name
    key_names: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in REQUIRED_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ModelError(f"embedder fingerprint field {name!r} is missing or empty (got {value!r}); {_FIX}")
        if not _SHA256.fullmatch(self.weights_sha256):
            raise ModelError(
                f"embedder fingerprint field 'weights_sha256' must be 64 lowercase hex characters, "
                f"got {self.weights_sha256!r}; fix: put the sha256 hex digest of the model's weights there"
            )
        # Private copies: a caller mutating the dict it passed must not change a frozen fingerprint.
        object.__setattr__(self, "extra", dict(self.extra))
        object.__setattr__(self, "key_names", dict(self.key_names))
        unknown = sorted(set(self.key_names) - set(REQUIRED_FIELDS))
        if unknown:
            raise ModelError(
                f"Fingerprint key_names renames {', '.join(unknown)}, which are not required fields; "
                f"fix: rename only {', '.join(REQUIRED_FIELDS)}"
            )
        stored = [self.key_names.get(n, n) for n in REQUIRED_FIELDS]
        clash = sorted(set(stored) & set(self.extra)) or sorted({k for k in stored if stored.count(k) > 1})
        if clash:
            raise ModelError(
                f"embedder fingerprint key {clash[0]!r} is given twice (a required field and "
                "in extra, or renamed onto another); fix: drop it from extra"
            )
        try:
            json.dumps(self.as_dict(), sort_keys=True, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ModelError(
                f"embedder fingerprint is not JSON-able ({exc}); fix: use str, int, float, bool, "
                "lists and dicts in extra"
            ) from None

    @classmethod
    def from_dict(cls, fields: Mapping[str, Any]) -> Fingerprint:
        """The required fields taken from ``fields`` by name, everything else as ``extra``."""
        missing = [n for n in REQUIRED_FIELDS if n not in fields]
        if missing:
            raise ModelError(f"embedder fingerprint lacks {', '.join(map(repr, missing))}; {_FIX}")
        return cls(
            **{n: fields[n] for n in REQUIRED_FIELDS},
            extra={k: v for k, v in fields.items() if k not in REQUIRED_FIELDS},
        )

    def as_dict(self) -> dict[str, Any]:
        """The JSON-able fields hashed into space ids: required ones (under ``key_names``), then ``extra``."""
        out = {self.key_names.get(n, n): getattr(self, n) for n in REQUIRED_FIELDS}
        out.update(self.extra)
        return out

    def __getitem__(self, key: str) -> Any:
        return self.as_dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.as_dict())

    def __len__(self) -> int:
        return len(REQUIRED_FIELDS) + len(self.extra)


def check_fingerprint(value: object, embedder: str) -> Fingerprint:
    """``value`` if it is a :class:`Fingerprint`; ModelError naming what is wrong otherwise."""
    if isinstance(value, Fingerprint):
        return value
    if isinstance(value, Mapping):
        missing = [n for n in REQUIRED_FIELDS if not value.get(n)]
        lacks = f" that lacks {', '.join(map(repr, missing))}" if missing else ""
        raise ModelError(
            f"embedder {embedder} returned its fingerprint as a plain {type(value).__name__}{lacks}; "
            f"{_FIX} (Fingerprint.from_dict(d) converts a dict)"
        )
    raise ModelError(f"embedder {embedder} returned a fingerprint of type {type(value).__name__}; {_FIX}")


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
    def fingerprint(self) -> Fingerprint:
        """Model identity (incl. a weights checksum), output, pooling and whatever else changes a vector."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        prop = cls.__dict__.get("fingerprint")
        if isinstance(prop, property) and prop.fget is not None and not getattr(prop.fget, "_checked", False):
            # Every caller (ingest, the drift check, plugins' own code) reads ``embedder.fingerprint``
            # and hashes it into the space id; checking it here, on the one road all of them take,
            # means a subclass cannot hand out a free dict without its weights checksum.
            getter = prop.fget

            @functools.wraps(getter)
            def checked(self: Embedder) -> Fingerprint:
                return check_fingerprint(getter(self), f"{self.name!r} ({type(self).__qualname__})")

            checked._checked = True  # type: ignore[attr-defined]
            cls.fingerprint = property(checked, doc=prop.__doc__)  # type: ignore[assignment]  # the property, wrapped

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

    def batch_limits(self) -> tuple[int, int]:
        """``(max_batch_tokens, max_batch_size)`` for the next :meth:`embed`; override to depend on the device."""
        return self.max_batch_tokens, self.max_batch_size

    def embed(self, texts: Sequence[str], progress: BatchProgressFn | None = None) -> np.ndarray:
        """Embed any number of texts in length-bucketed batches; order is preserved."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        todo = [i for i, t in enumerate(texts) if t.strip()]
        if progress and len(todo) < len(texts):
            progress(len(texts) - len(todo))
        lengths = [self.count_tokens(texts[i]) for i in todo]
        max_tokens, max_size = self.batch_limits()
        for batch in plan_batches(lengths, max_tokens, max_size):
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


__all__ = ["BatchProgressFn", "Embedder", "Fingerprint", "REQUIRED_FIELDS", "check_fingerprint", "plan_batches"]
