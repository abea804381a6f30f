"""Stable hashes: text keys and vector-space ids.

Following the datasets-library idea of a fingerprint: a hash over a canonical,
sorted JSON encoding of every field that changes the output. Equal inputs hash
equal across processes and machines; any changed field changes the hash.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

KEY_DTYPE = "S32"  # hex digest of 16 bytes; hex avoids NUL bytes that numpy 'S' strips


def canonical_json(fields: Mapping[str, Any]) -> str:
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def fingerprint_hash(fields: Mapping[str, Any]) -> str:
    """SHA-256 hex of the canonical encoding of ``fields``."""
    return hashlib.sha256(canonical_json(fields).encode("utf-8")).hexdigest()


def text_key(recipe_name: str, cleaned: str) -> bytes:
    """The key of one cleaned text: the recipe's name and version are part of it."""
    h = hashlib.blake2b(digest_size=16)
    h.update(recipe_name.encode("utf-8"))
    h.update(b"\x00")
    h.update(cleaned.encode("utf-8", "surrogatepass"))
    return h.hexdigest().encode("ascii")


def text_keys(recipe_name: str, cleaned: Iterable[str]) -> list[bytes]:
    return [text_key(recipe_name, c) for c in cleaned]


def raw_digest(text: str) -> bytes:
    """Digest of a raw text, to tell cheaply whether a stored row's text changed."""
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest().encode("ascii")


def space_fields(embedder_fp: Mapping[str, Any], recipe_fp: Mapping[str, Any], dtype: str) -> dict[str, Any]:
    """Every field that identifies a vector space: model, output, pooling, recipe, storage dtype."""
    return {"embedder": dict(embedder_fp), "recipe": dict(recipe_fp), "dtype": dtype}


def space_id(fields: Mapping[str, Any]) -> str:
    """A short, filesystem-safe id of a vector space."""
    return fingerprint_hash(fields)[:16]
