"""JSON as users bring it, turned into records: JSON Lines, arrays of objects, API wrappers
(``{"data": [...], "meta": ...}``), the layouts pandas' ``to_json`` writes, and the Twitter API's
tweet objects (which of their keys holds the full text and the exact id).

A layout is read only when it is unambiguous; otherwise the message gives the exact pandas call
that re-saves the file as JSON Lines. Numbers keep their literal text (``000123`` and
``12345678901234567890123`` stay exact). No I/O and no pandas here: ``sources.py`` reads the bytes
and builds the ``Table``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from featurestore.errors import InputFileError

# The call that turns any DataFrame into the one layout every reader agrees on.
RESAVE = "df.to_json(path, orient='records', lines=True)"
# Keys only the Twitter API's tweet objects have (v1.1: id_str, truncated...; v2: edit_history_tweet_ids...).
_TWITTER_MARKERS = frozenset(
    {"id_str", "truncated", "extended_tweet", "display_text_range", "note_tweet", "edit_history_tweet_ids"}
)
# Where a tweet object keeps its text, best first: v1.1 streaming puts a long tweet's text in
# extended_tweet.full_text (``text`` is cut to 140 characters and ends in "…"), tweet_mode=extended
# puts it in full_text, v2 puts a long ("note") tweet's text in note_tweet.text.
TWITTER_TEXT = ("extended_tweet.full_text", "note_tweet.text", "full_text", "text")
TWITTER_ID = ("id_str", "id")  # v1.1 ``id`` is a number that JavaScript and spreadsheets round
_NESTED_TEXT = {"extended_tweet": "full_text", "note_tweet": "text"}


class Missing:
    """The value of a key a record does not have (unlike ``null``, which it has)."""

    def __repr__(self) -> str:
        return "MISSING"


MISSING = Missing()


class Nested:
    """A JSON list or object where a value was expected; kept so the message can name the row."""

    def __init__(self, value: Any) -> None:
        self.what = "a JSON list" if isinstance(value, list) else "a JSON object"


@dataclass
class Records:
    """JSON records with the human number of each (line of a JSON Lines file, else item)."""

    records: list[dict[str, Any]]
    numbers: np.ndarray
    unit: str  # "line" or "row"
    kind: str  # "jsonl", "json array" or "json"
    detail: list[str] = field(default_factory=list)  # e.g. "pandas orient='columns'"
    index: str | None = None  # a column holding a pandas index other than 0, 1, 2... (maybe the ids)


def loads(s: str) -> Any:
    # Numbers keep their literal text: ids like 000123 or 12345678901234567890123 stay exact.
    return json.loads(s, parse_int=str, parse_float=str, parse_constant=str, object_pairs_hook=_one_value_a_key)


class DuplicateKey(ValueError):
    """An object naming one key twice with different values (json.loads would keep the last, silently)."""

    def __init__(self, key: str) -> None:
        super().__init__(f"the key {key!r} twice")
        self.key = key


def _one_value_a_key(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out and out[key] != value:
            raise DuplicateKey(key)
        out[key] = value
    return out


def _duplicate(source: str, where: str, exc: DuplicateKey) -> InputFileError:
    return InputFileError(
        f"{source}{where} has the key {exc.key!r} twice in one object, with different values; which one is meant "
        "cannot be told; fix: keep one of them"
    )


def read_json(text: str, source: str, guessed: bool, text_names: Collection[str], names: Collection[str]) -> Records:
    """JSON Lines (one object a line), or one JSON document holding records.

    ``text_names`` are the known text column names, ``names`` all known column names (normalised):
    an object with a text name is a record, not a wrapper; the side with known names tells a pandas
    ``orient='columns'`` file (names outside) from an ``orient='index'`` one (names inside).
    """
    if text.lstrip().startswith("["):
        return _document(_doc(text, source, guessed), source, text_names, names)
    records: list[dict[str, Any]] = []
    numbers: list[int] = []
    for i, line in enumerate(_NEWLINE.split(text), start=1):
        if not line.strip():
            continue
        try:
            rec = loads(line)
        except DuplicateKey as exc:
            raise _duplicate(source, f" line {i}", exc) from None
        except (ValueError, RecursionError) as exc:
            if not records:
                # Maybe one pretty-printed document, e.g. {"data": [...]} over many lines.
                try:
                    return _document(loads(text), source, text_names, names)
                except DuplicateKey as dup:
                    raise _duplicate(source, "", dup) from None
                except (ValueError, RecursionError):
                    pass
            raise InputFileError(
                f"{source} line {i} is not valid JSON ({reason(exc)}); fix: correct that line (JSON Lines need "
                "one whole object a line)"
                + ("; if the file is not JSON, pass [[fmt]] csv or [[fmt]] txt" if guessed else "")
            ) from None
        if not isinstance(rec, dict):
            raise InputFileError(f'{source} line {i} is not a JSON object; each line must be {{"text": ...}}')
        records.append(rec)
        numbers.append(i)
    if len(records) == 1:
        doc = _document(records[0], source, text_names, names)
        if doc.records != [records[0]]:
            return doc  # a wrapper or a pandas layout written on one line
    return Records(records, np.array(numbers, dtype=np.int64), "line", "jsonl")


_NEWLINE = re.compile(r"\r\n|\r|\n")


def _doc(text: str, source: str, guessed: bool) -> Any:
    try:
        return loads(text)
    except DuplicateKey as exc:
        raise _duplicate(source, "", exc) from None
    except (ValueError, RecursionError) as exc:
        line = getattr(exc, "lineno", None)
        where = f" line {line}" if line else ""
        raise InputFileError(
            f"{source}{where} is not valid JSON ({reason(exc)}); fix the file there"
            + ("; if it is not JSON, pass [[fmt]] csv or [[fmt]] txt" if guessed else "")
        ) from None


def reason(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    text = getattr(exc, "msg", None) or " ".join(str(exc).split()) or type(exc).__name__
    return text[:200]


def _numbered(records: list[dict[str, Any]], kind: str, detail: list[str], index: str | None = None) -> Records:
    return Records(records, np.arange(1, len(records) + 1), "row", kind, detail, index)


def _document(doc: Any, source: str, text_names: Collection[str], names: Collection[str]) -> Records:
    """The records of one JSON document: an array of objects, an API wrapper, a pandas layout, or one object."""
    if isinstance(doc, list):
        for i, rec in enumerate(doc):
            if isinstance(rec, list) and all(isinstance(r, list) for r in doc):
                raise InputFileError(
                    f"{source} is a JSON array of arrays (pandas' orient='values'), which has no column names; "
                    f"fix: re-save the DataFrame with {RESAVE}"
                )
            if not isinstance(rec, dict):
                raise InputFileError(
                    f'{source} item {i + 1} of the JSON array is not an object; each must be {{"text": ...}}'
                )
        return _numbered(doc, "json array", [])
    if not isinstance(doc, dict):
        raise InputFileError(f'{source} is a single JSON value, not objects; give [{{"text": ...}}, ...] or JSON Lines')
    if (split := _pandas_split(doc, source)) is not None:
        return split
    if (table := _pandas_table(doc)) is not None:
        return table
    if doc and all(isinstance(v, dict) for v in doc.values()):
        return _pandas_nested(doc, source, names)
    if any(_norm(k) in text_names for k in doc):
        return _numbered([doc], "json", [])  # one record
    lists = [v for v in doc.values() if isinstance(v, list) and v and all(isinstance(r, dict) for r in v)]
    if len(lists) == 1:
        return _numbered(lists[0], "json", [])  # an API wrapper: {"data": [...], "meta": {...}}
    if doc and all(re.fullmatch(r"\d+", k) for k in doc) and not any(isinstance(v, (dict, list)) for v in doc.values()):
        raise InputFileError(
            f"{source} looks like a pandas Series saved with to_json() (keys 0, 1, 2...), which has no column names; "
            "fix: re-save it with series.to_frame('text').to_json(path, orient='records', lines=True)"
        )
    return _numbered([doc], "json", [])


def _pandas_split(doc: dict, source: str) -> Records | None:
    """``to_json(orient='split')``: {"columns": [...], "index": [...], "data": [[...], ...]}."""
    if not ({"columns", "data"} <= doc.keys() <= {"columns", "index", "data", "name"}):
        return None
    columns, data = doc["columns"], doc["data"]
    if not (isinstance(columns, list) and isinstance(data, list) and all(isinstance(c, str) for c in columns)):
        return None
    if not all(isinstance(row, list) and len(row) == len(columns) for row in data):
        raise InputFileError(
            f"{source} looks like pandas' orient='split' but its rows do not match its {len(columns)} columns; "
            f"fix: re-save the DataFrame with {RESAVE}"
        )
    records = [dict(zip(columns, row)) for row in data]
    index = doc.get("index")
    where = None
    if isinstance(index, list) and len(index) == len(data) and not _default_index(index):
        where = "index" if "index" not in columns else None
        if where:
            for rec, value in zip(records, index):
                rec["index"] = value
    return _numbered(records, "json", ["pandas orient='split'"], where)


def _pandas_table(doc: dict) -> Records | None:
    """``to_json(orient='table')``: {"schema": {"fields": [...], "primaryKey": [...]}, "data": [{...}, ...]}."""
    schema, data = doc.get("schema"), doc.get("data")
    if not (doc.keys() == {"schema", "data"} and isinstance(schema, dict) and "fields" in schema):
        return None
    if not (isinstance(data, list) and all(isinstance(r, dict) for r in data)):
        return None
    keys = schema.get("primaryKey") or []
    where = None
    if len(keys) == 1 and isinstance(keys[0], str) and not _default_index([r.get(keys[0]) for r in data]):
        where = keys[0]
    return _numbered(data, "json", ["pandas orient='table'"], where)


def _pandas_nested(doc: dict, source: str, names: Collection[str]) -> Records:
    """``orient='columns'`` ({column: {index: value}}) or ``orient='index'`` ({index: {column: value}}):
    the same shape; the side holding known column names tells which."""
    inner = list(doc.values())
    keys = list(inner[0])
    same = all(list(d) == keys for d in inner) or all(set(d) == set(keys) for d in inner)
    outer_named = any(_norm(k) in names for k in doc)
    inner_named = any(_norm(k) in names for k in keys)
    scalar = all(not isinstance(v, (dict, list)) for d in inner for v in d.values())
    if not (same and scalar and outer_named != inner_named):
        raise InputFileError(
            f"{source} is one JSON object of objects; it may be a pandas to_json() layout (orient='columns' or "
            f"'index'), but which side holds the columns cannot be told; fix: re-save the DataFrame with {RESAVE}"
        )
    if outer_named:  # columns outside: one record per index key
        records = [{c: doc[c][k] for c in doc} for k in keys]
        index, orient = keys, "columns"
    else:
        records = [dict(v) for v in inner]
        index, orient = list(doc), "index"
    where = None
    if records and not _default_index(index) and not any(_norm(c) == "index" for c in records[0]):
        where = "index"
        for rec, value in zip(records, index):
            rec["index"] = value
    return _numbered(records, "json", [f"pandas orient='{orient}'"], where)


def _default_index(index: Sequence[Any]) -> bool:
    """A RangeIndex 0, 1, 2...: pandas' row numbers, not data."""
    return all(str(v) == str(i) for i, v in enumerate(index))


def _norm(name: str) -> str:
    return re.sub(r"[\s\-]+", "_", str(name).strip().lower())


# ---------------------------------------------------------------- records -> columns


def columns(records: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Each key's values (``MISSING`` where a record lacks it), in first-seen key order.

    A tweet object's nested long text (``extended_tweet.full_text``, ``note_tweet.text``) is also
    offered under its dotted name, so that the Twitter rule can prefer it.
    """
    names: dict[str, None] = {}
    for rec in records:
        names.update(dict.fromkeys(rec))
    cols = {c: [scalar(r.get(c, MISSING)) for r in records] for c in names}
    for outer, inner in _NESTED_TEXT.items():
        if outer in names:
            cols[f"{outer}.{inner}"] = [
                scalar(r[outer].get(inner, MISSING)) if isinstance(r.get(outer), dict) else MISSING for r in records
            ]
    return cols


def scalar(v: Any) -> Any:
    if v is None or v is MISSING or type(v) is str:
        return v
    if v is True or v is False:
        return "true" if v else "false"
    return Nested(v)


def twitter_sources(names: Sequence[str]) -> dict[str, list[str]]:
    """For the Twitter API's tweet objects, the keys a role is read from, best first (role -> keys), where
    the rule decides something: the text where two of TWITTER_TEXT are present, the id where ``id_str`` is
    (``id`` is no default id name). Empty for any other records."""
    present = set(names)
    if not present & _TWITTER_MARKERS:
        return {}
    text = [k for k in TWITTER_TEXT if k in present]
    ids = [k for k in TWITTER_ID if k in present]
    rules = {}
    if len(text) > 1:
        rules["text"] = text
    if "id_str" in present:
        rules["id"] = ids
    return rules
