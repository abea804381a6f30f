"""Reading tweets from CSV, TSV, JSON Lines, Parquet, plain text or stdin, with row-level errors.

Everything is validated before the store is touched: a bad row stops the ingest with a
message naming the row, and nothing is written.
"""
from __future__ import annotations

import io
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from featurestore.errors import InputFileError
from featurestore.keys import raw_digest

FORMATS = ("csv", "tsv", "jsonl", "parquet", "txt")
_EXTENSIONS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".txt": "txt",
}
TEXT_COLUMNS = ("tweet", "text")
NO_LABEL = -1


@dataclass
class Table:
    """Validated input rows; ``labels`` is -1 where a row has none."""

    source: str
    ids: np.ndarray
    texts: list[str]
    labels: np.ndarray
    digests: np.ndarray
    rows_read: int
    duplicate_rows: int  # rows repeating an earlier (id, text) pair of the same input
    has_labels: bool


def _detect_format(path: str, fmt: str | None, head: bytes) -> str:
    if fmt:
        if fmt not in FORMATS:
            raise InputFileError(f"unknown input format {fmt!r}; use one of: {', '.join(FORMATS)}")
        return fmt
    if path != "-":
        ext = Path(path).suffix.lower()
        if ext in _EXTENSIONS:
            return _EXTENSIONS[ext]
    if head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"{"):
        return "jsonl"
    if head.startswith(b"PAR1"):
        return "parquet"
    return "csv"


def _read_bytes(path: str) -> bytes:
    if path == "-":
        return sys.stdin.buffer.read()
    p = Path(path)
    if p.is_dir():
        raise InputFileError(f"{path} is a directory; give a CSV, JSON Lines, Parquet or text file")
    try:
        return p.read_bytes()
    except FileNotFoundError:
        raise InputFileError(f"input file {path} does not exist; check the path") from None
    except PermissionError:
        raise InputFileError(f"input file {path} is not readable (permission denied); fix its permissions") from None


def _decode(data: bytes, source: str, encoding: str) -> str:
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise InputFileError(
            f"{source}: bytes on line {line} are not valid {encoding} ({exc.reason} at byte {exc.start}); "
            f"fix: re-save the file as UTF-8, or pass --encoding (e.g. --encoding latin-1)"
        ) from None
    except LookupError:
        raise InputFileError(f"unknown --encoding {encoding!r}; use e.g. utf-8 or latin-1") from None
    return text.removeprefix("\ufeff")  # a UTF-8 byte-order mark is not part of the header


def _frame(data: bytes, fmt: str, source: str, encoding: str) -> tuple[dict[str, list[Any]], list[int]]:
    """Columns as lists, plus the human line/row number of each record for messages."""
    if fmt == "parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(io.BytesIO(data))
        except Exception as exc:  # pyarrow raises several types for a bad file
            raise InputFileError(f"{source} is not a readable Parquet file ({exc}); check the file") from None
        cols = table.to_pydict()
        n = table.num_rows
        return cols, list(range(1, n + 1))
    text = _decode(data, source, encoding)
    if fmt == "txt":
        lines = text.splitlines()
        keep = [i for i, t in enumerate(lines) if t.strip()]
        return {"text": [lines[i] for i in keep], "id": [i + 1 for i in keep]}, [i + 1 for i in keep]
    if fmt == "jsonl":
        records, numbers = [], []
        for i, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputFileError(f"{source} line {i} is not valid JSON ({exc.msg}); fix that line") from None
            if not isinstance(rec, dict):
                raise InputFileError(f"{source} line {i} is not a JSON object; each line must be {{\"text\": ...}}")
            records.append(rec)
            numbers.append(i)
        names: dict[str, None] = {}
        for rec in records:
            names.update(dict.fromkeys(rec))
        return {c: [r.get(c) for r in records] for c in names}, numbers
    import csv

    import pandas as pd

    if "\x00" in text:
        # The C parser stops at NUL; the python engine keeps it, so no text is cut short.
        engine = "python"
    else:
        engine = "c"
    try:
        df = pd.read_csv(
            io.StringIO(text),
            sep="\t" if fmt == "tsv" else ",",
            dtype=str,
            keep_default_na=False,
            na_filter=False,
            engine=engine,
            quoting=csv.QUOTE_MINIMAL,
        )
    except pd.errors.EmptyDataError:
        raise InputFileError(f"{source} is empty; give a file with a header row and at least one tweet") from None
    except pd.errors.ParserError as exc:
        raise InputFileError(f"{source} is not valid CSV ({str(exc).strip()}); fix the quoting on that line") from None
    # Data rows start on line 2; quoted newlines make this approximate, so messages say "row".
    return {c: df[c].tolist() for c in df.columns}, list(range(1, len(df) + 1))


def _pick(columns: Sequence[str], wanted: str | None, defaults: Sequence[str], what: str, flag: str, source: str) -> str | None:
    if wanted is not None:
        if wanted == "":
            return None
        if wanted not in columns:
            raise InputFileError(
                f"{source} has no {what} column {wanted!r}; columns found: {', '.join(map(str, columns)) or 'none'}; "
                f"fix: {flag} NAME"
            )
        return wanted
    for d in defaults:
        if d in columns:
            return d
    return None


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, float):
        return int(value) if math.isfinite(value) and value.is_integer() else None
    if isinstance(value, str):
        s = value.strip()
        try:
            return int(s)
        except ValueError:
            try:
                f = float(s)
            except ValueError:
                return None
            return int(f) if math.isfinite(f) and f.is_integer() else None
    return None


def _fast_ints(values: Sequence[Any]) -> np.ndarray | None:
    """The common case in one numpy call: all plain ints, or all decimal-integer strings.

    Anything else (floats, bools, blanks, junk) returns None and takes the row-by-row path,
    which names the offending row.
    """
    try:
        if all(type(v) is str for v in values) or all(type(v) is int for v in values):
            return np.array(values).astype(np.int64)
    except (ValueError, OverflowError):
        pass
    return None


def read_table(
    path: str,
    *,
    text_col: str | None = None,
    id_col: str | None = None,
    label_col: str | None = None,
    fmt: str | None = None,
    encoding: str = "utf-8",
) -> Table:
    """Read and validate an input file. ``"-"`` reads standard input.

    Defaults: text column ``tweet`` or ``text``; id column ``id`` if present, else the
    row number (1-based); label column ``label`` if present. Pass ``""`` to ignore a column.
    """
    source = "standard input" if path == "-" else str(path)
    data = _read_bytes(path)
    if not data.strip():
        raise InputFileError(f"{source} is empty; give a file with at least one tweet")
    fmt = _detect_format(path, fmt, data[:64])
    cols, numbers = _frame(data, fmt, source, encoding)
    columns = list(cols)
    tcol = _pick(columns, text_col, TEXT_COLUMNS, "text", "--text-col", source)
    if tcol is None:
        raise InputFileError(
            f"{source} has no text column (looked for {', '.join(TEXT_COLUMNS)}); columns found: "
            f"{', '.join(map(str, columns)) or 'none'}; fix: --text-col NAME"
        )
    icol = _pick(columns, id_col, ("id",), "id", "--id-col", source)
    lcol = _pick(columns, label_col, ("label",), "label", "--label-col", source)
    n = len(cols[tcol])
    if n == 0:
        raise InputFileError(f"{source} has a header but no rows; add tweets or check the file")

    texts: list[str] = []
    for i, t in enumerate(cols[tcol]):
        if t is None or (isinstance(t, float) and math.isnan(t)):
            t = ""
        if not isinstance(t, str):
            raise InputFileError(f"{source} row {numbers[i]}: text is {type(t).__name__}, not a string; fix that row")
        texts.append(t)
    if icol is None:
        ids = np.asarray(numbers, dtype=np.int64)
    elif (fast := _fast_ints(cols[icol])) is not None:
        ids = fast
    else:
        ids = np.empty(n, dtype=np.int64)
        for i, v in enumerate(cols[icol]):
            iv = _as_int(v)
            if iv is None:
                raise InputFileError(
                    f"{source} row {numbers[i]}: id {v!r} is not an integer; ids must be integers "
                    "(fix the column, or pass --id-col '' to number rows instead)"
                )
            ids[i] = iv
    labels = np.full(n, NO_LABEL, dtype=np.int64)
    fast_labels = _fast_ints(cols[lcol]) if lcol is not None else None
    if fast_labels is not None and (fast_labels >= 0).all():
        labels = fast_labels
    elif lcol is not None:
        for i, v in enumerate(cols[lcol]):
            iv = _as_int(v)
            if iv is None or iv < 0:
                shown = "empty" if v in (None, "") or (isinstance(v, float) and math.isnan(v)) else repr(v)
                raise InputFileError(
                    f"{source} row {numbers[i]}: label is {shown}; labels must be integers >= 0 "
                    "(fix that row, or pass --label-col '' to ingest without labels)"
                )
            labels[i] = iv

    digests = np.array([raw_digest(t) for t in texts], dtype="S32")
    # Duplicate ids inside the input: same text is a repeat (kept once); different text is an error.
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    same = np.flatnonzero(sorted_ids[1:] == sorted_ids[:-1])
    drop = np.zeros(n, dtype=bool)
    for j in same:
        first, later = order[j], order[j + 1]
        while j > 0 and sorted_ids[j - 1] == sorted_ids[j]:
            j -= 1
            first = order[j]
        if digests[first] != digests[later]:
            raise InputFileError(
                f"{source} rows {numbers[first]} and {numbers[later]} share id {ids[first]} with different texts; "
                "an id names one tweet: fix the ids (or pass --id-col '' to number rows)"
            )
        if labels[first] != labels[later]:
            raise InputFileError(
                f"{source} rows {numbers[first]} and {numbers[later]} repeat id {ids[first]} with different labels; "
                "fix the labels"
            )
        drop[later] = True
    keep = np.flatnonzero(~drop)
    return Table(
        source=source,
        ids=ids[keep],
        texts=[texts[i] for i in keep],
        labels=labels[keep],
        digests=digests[keep],
        rows_read=n,
        duplicate_rows=int(drop.sum()),
        has_labels=lcol is not None,
    )
