"""The manifest model: what one committed generation of a store names, and its JSON form.

Plain frozen dataclasses, no I/O: ``featurestore.storage.store`` reads and publishes them. A
generation names segment files; each segment is immutable once published.

Schema history:
- 1: dataset ids and labels were int64 (label -1 = none).
- 2: ids and labels are text, kept as the user's file gave them (label "" = none), and a
  dataset may carry label updates (later segments override earlier labels of the same id).
  Segments written under schema 1 stay readable: ``store`` converts their columns on read.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from featurestore.errors import StoreError
from featurestore.storage.keys import canonical_json

SCHEMA_VERSION = 2
READABLE_SCHEMAS = (1, 2)


@dataclass(frozen=True)
class Segment:
    file: str
    rows: int


def _segs(items: Any) -> tuple[Segment, ...]:
    return tuple(Segment(f, int(n)) for f, n in items)


def _segs_json(segs: tuple[Segment, ...]) -> list[list[Any]]:
    return [[s.file, s.rows] for s in segs]


@dataclass(frozen=True)
class Space:
    """A vector space: one embedder fingerprint plus one cleaning recipe plus a dtype."""

    id: str
    fields: Mapping[str, Any]
    model: str
    recipe: str
    dim: int
    dtype: str
    canaries: tuple[str, ...] = ()
    segments: tuple[Segment, ...] = ()

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.segments)

    def describe(self) -> str:
        """How a user tells spaces apart in a message."""
        return f"{self.id} ({self.model}, {self.recipe}, {self.dtype}, {self.rows:,} vectors)"

    def to_json(self) -> dict[str, Any]:
        return {
            "fields": self.fields,
            "model": self.model,
            "recipe": self.recipe,
            "dim": self.dim,
            "dtype": self.dtype,
            "canaries": list(self.canaries),
            "segments": _segs_json(self.segments),
        }

    @classmethod
    def from_json(cls, sid: str, d: Mapping[str, Any]) -> Space:
        return cls(
            id=sid,
            fields=d["fields"],
            model=d["model"],
            recipe=d["recipe"],
            dim=int(d["dim"]),
            dtype=d["dtype"],
            canaries=tuple(d.get("canaries", ())),
            segments=_segs(d["segments"]),
        )


@dataclass(frozen=True)
class Dataset:
    """Rows (id, label, raw text), per cleaning recipe the key of each row, and label updates."""

    name: str
    rows: tuple[Segment, ...] = ()
    keys: Mapping[str, tuple[Segment, ...]] = field(default_factory=dict)
    labels: tuple[Segment, ...] = ()  # (id, label) updates, applied in order over the rows' labels

    @property
    def count(self) -> int:
        return sum(s.rows for s in self.rows)

    def keyed(self, recipe: str) -> int:
        return sum(s.rows for s in self.keys.get(recipe, ()))

    def segments(self) -> list[Segment]:
        return [*self.rows, *(s for segs in self.keys.values() for s in segs), *self.labels]

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "rows": _segs_json(self.rows),
            "keys": {r: _segs_json(segs) for r, segs in sorted(self.keys.items())},
        }
        if self.labels:
            out["labels"] = _segs_json(self.labels)
        return out

    @classmethod
    def from_json(cls, name: str, d: Mapping[str, Any]) -> Dataset:
        return cls(
            name=name,
            rows=_segs(d["rows"]),
            keys={r: _segs(segs) for r, segs in d["keys"].items()},
            labels=_segs(d.get("labels", ())),
        )


@dataclass(frozen=True)
class Snapshot:
    """One committed generation of the store."""

    generation: int
    next_segment: int
    spaces: Mapping[str, Space]
    datasets: Mapping[str, Dataset]

    def files(self) -> set[str]:
        names = {s.file for sp in self.spaces.values() for s in sp.segments}
        for ds in self.datasets.values():
            names.update(s.file for s in ds.segments())
        return names

    def longest_list(self) -> int:
        """The most segments one kind holds (a space's vectors, a dataset's rows, keys under a recipe, labels)."""
        lists = [sp.segments for sp in self.spaces.values()]
        for ds in self.datasets.values():
            lists += [ds.rows, ds.labels, *ds.keys.values()]
        return max(map(len, lists), default=0)

    def find_spaces(self, model: str, recipe: str, dtype: str | None = None) -> list[Space]:
        """Spaces written by ``model`` under ``recipe`` (and ``dtype`` if given), oldest first."""
        found = [s for s in self.spaces.values() if s.model == model and s.recipe == recipe]
        if dtype is not None:
            found = [s for s in found if s.dtype == dtype]
        return sorted(found, key=lambda s: min((s_.file for s_ in s.segments), default=""))

    def to_json(self) -> dict[str, Any]:
        body = {
            "schema": SCHEMA_VERSION,
            "generation": self.generation,
            "next_segment": self.next_segment,
            "spaces": {k: v.to_json() for k, v in sorted(self.spaces.items())},
            "datasets": {k: v.to_json() for k, v in sorted(self.datasets.items())},
        }
        body["checksum"] = hashlib.sha256(canonical_json(body).encode()).hexdigest()
        return body

    @classmethod
    def from_json(cls, d: Mapping[str, Any], where: Path) -> Snapshot:
        schema = d.get("schema")
        if not isinstance(schema, int) or schema not in READABLE_SCHEMAS:
            raise StoreError(
                f"store {where} was written by a newer featurestore (schema {schema}); this version reads "
                f"schemas {', '.join(map(str, READABLE_SCHEMAS))}; "
                "fix: upgrade featurestore (pip install -U featurestore)"
            )
        body = {k: v for k, v in d.items() if k != "checksum"}
        if hashlib.sha256(canonical_json(body).encode()).hexdigest() != d.get("checksum"):
            raise ValueError("checksum mismatch")
        return cls(
            generation=int(d["generation"]),
            next_segment=int(d["next_segment"]),
            spaces={k: Space.from_json(k, v) for k, v in d["spaces"].items()},
            datasets={k: Dataset.from_json(k, v) for k, v in d["datasets"].items()},
        )


EMPTY = Snapshot(generation=0, next_segment=1, spaces={}, datasets={})
