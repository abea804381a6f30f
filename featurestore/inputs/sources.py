"""Reading tweets from the files users bring: CSV/TSV, JSON Lines, JSON arrays, Parquet, plain text or stdin.

This module owns everything between the input bytes and a validated ``Table``: decompression
(gzip, bz2, xz, zstd, found by magic bytes), encoding detection (BOMs, UTF-16, a Windows-1252
hint), format and delimiter sniffing, column matching, ids and labels kept as text exactly as
written, duplicate rows, and one-line ``InputFileError`` messages naming the row and the fix.
Nothing else escapes for any input bytes, and nothing here touches the store: a bad file
stops the ingest before anything is written.
"""

from __future__ import annotations

import bz2
import codecs
import csv
import gzip
import io
import json
import lzma
import re
import shlex
import sys
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path
from typing import Any

import numpy as np

from featurestore.errors import InputFileError
from featurestore.storage.keys import raw_digest

FORMATS = ("csv", "tsv", "json", "jsonl", "parquet", "txt")
DUPLICATES = ("error", "first", "last")
NO_LABEL = ""  # the label of a row that has none

# Default column names, compared after _norm(); the first match wins.
ID_COLUMNS = ("id", "tweet_id", "tweetid", "status_id", "ids", "uid", "doc_id", "row_id")
LABEL_COLUMNS = (
    "label",
    "labels",
    "sentiment",
    "airline_sentiment",
    "target",
    "class",
    "category",
    "polarity",
    "y",
)
TEXT_COLUMNS = (
    "tweet",
    "text",
    "tweet_text",
    "content",
    "body",
    "message",
    "sentence",
    "full_text",
    "comment",
    "review",
    "tweets",
    "texts",
    "messages",
    "sentences",
    "comments",
    "reviews",
    "post",
    "posts",
    "status",
    "document",
)

_EXTENSIONS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".txt": "txt",
}
_COMPRESSED_SUFFIXES = (".gz", ".gzip", ".bz2", ".xz", ".zst", ".zstd")
_SEPARATORS = (",", "\t", ";", "|")  # tie-break order for the sniffer
_SEP_NAMES = {",": "','", "\t": "tab", ";": "';'", "|": "'|'"}
_LONE_CR = re.compile("\r(?!\n)")
STDLIB_CSV_MAX_CHARS = 10_000_000  # CSV text up to this size (~100k tweets) is read without pandas (_csv_stdlib)
_BINARY_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "PNG image"),
    (b"\xff\xd8\xff", "JPEG image"),
    (b"GIF87a", "GIF image"),
    (b"GIF89a", "GIF image"),
    (b"%PDF-", "PDF document"),
    (b"PK\x03\x04", "ZIP archive or Excel .xlsx workbook; unzip it, or save the sheet as CSV"),
    (b"PK\x05\x06", "empty ZIP archive"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "Excel .xls or other Office document; save it as CSV"),
    (b"\x7fELF", "ELF executable"),
    (b"MZ\x90\x00", "Windows executable"),
    (b"SQLite format 3\x00", "SQLite database"),
    (b"\x89HDF\r\n\x1a\n", "HDF5 file"),
    (b"\x93NUMPY", "NumPy array"),
    (b"7z\xbc\xaf\x27\x1c", "7-Zip archive"),
    (b"Rar!\x1a\x07", "RAR archive"),
)
# Only \n, \r\n and \r end a line: str.splitlines() also breaks on U+2028, U+2029, NEL,
# VT and FF, which occur inside real tweets and would shift every later row.
_NEWLINE = re.compile(r"\r\n|\r|\n")
_SURROGATE = re.compile("[\ud800-\udfff]")
# What a spreadsheet makes of a long number: 1.23457E+18 (or 1,23457E+18) has lost digits.
_SCIENTIFIC = r"\s*[+-]?\d+(?:[.,]\d*)?[eE][+-]?\d+\s*"
_BLANK = r"\s*"
_FLOAT_EXACT = 2.0**53  # floats at or beyond this cannot hold every integer id


@dataclass
class Table:
    """Validated input rows. Ids and labels are Python ``str`` in object arrays, exactly as written."""

    source: str  # file name or "standard input"
    ids: np.ndarray  # dtype=object, str
    texts: list[str]
    labels: np.ndarray  # dtype=object, str; NO_LABEL ("") where a row has none
    digests: np.ndarray  # raw_digest of each text, dtype "S32"
    rows_read: int
    duplicate_rows: int  # rows dropped as duplicates of another row of the same input
    id_column: str | None  # None: ids are row numbers ("1", "2", ...; line numbers for txt)
    label_column: str | None  # None: no labels
    text_column: str
    replaced_chars: int = 0  # unencodable characters (lone surrogates) replaced by U+FFFD
    format: str = ""  # what was detected, e.g. "csv (';'-separated, gzip, cp1252)"

    @property
    def has_labels(self) -> bool:
        return self.label_column is not None


@dataclass
class _Frame:
    """Parsed records before validation: column names, and cells fetched per column on demand."""

    columns: list[str]
    cells: Callable[[str, str], np.ndarray]  # (column, role) -> object array of str or None
    numbers: np.ndarray  # the human row/line number of each record, for messages
    unit: str  # "row" or "line"
    kind: str  # format for the description: "csv", "jsonl", "json array", "parquet", "txt"
    detail: list[str]  # separator, "no header", ...
    guessed: bool  # the format came from content, not from --format or the extension


# ---------------------------------------------------------------- bytes


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
    except OSError as exc:
        raise InputFileError(f"input file {path} cannot be read ({exc.strerror or exc}); check the path") from None


def _decompress(data: bytes, source: str) -> tuple[bytes, str | None]:
    """Undo gzip, bz2, xz or zstd, recognised by magic bytes whatever the file is called."""
    unpack: Callable[[bytes], bytes]
    if data.startswith(b"\x1f\x8b"):
        kind, unpack = "gzip", gzip.decompress
    elif data.startswith(b"BZh") and data[3:4].isdigit():
        kind, unpack = "bz2", bz2.decompress
    elif data.startswith(b"\xfd7zXZ\x00"):
        kind, unpack = "xz", lzma.decompress
    elif data.startswith(b"\x28\xb5\x2f\xfd"):
        kind = "zstd"
        try:
            import zstandard
        except ImportError:
            raise InputFileError(
                f"{source} is zstd-compressed and the zstandard package is not installed; "
                "fix: pip install zstandard, or decompress it first (zstd -d)"
            ) from None

        def unpack(b: bytes) -> bytes:
            # stream_reader also handles frames that do not record their decompressed size
            with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(b)) as reader:
                return reader.read()
    else:
        return data, None
    try:
        return unpack(data), kind
    except MemoryError:
        raise InputFileError(
            f"{source} is {kind}-compressed and too large to decompress in memory; decompress it first and split it"
        ) from None
    except Exception as exc:  # each codec raises its own types (OSError, EOFError, LZMAError, ZstdError...)
        raise InputFileError(
            f"{source} looks {kind}-compressed but cannot be decompressed ({_short(exc)}); check the file"
        ) from None


def _binary_kind(data: bytes) -> str | None:
    """What a non-text file is, from its first bytes; None when it may be text."""
    for magic, what in _BINARY_MAGIC:
        if data.startswith(magic):
            return what
    if data[257:262] == b"ustar":
        return "tar archive"
    if len(data) > 1 and data[0] == 0x80 and 2 <= data[1] <= 5:
        return "Python pickle"
    sample = data[:8192]
    if _utf16_order(sample) or sample.startswith((b"\xff\xfe", b"\xfe\xff", b"\x00\x00\xfe\xff")):
        return None
    # A stray NUL is kept (tweets do contain them); text is never 10% NUL unless it is UTF-16.
    if sample.count(0) > len(sample) // 10:
        return "binary data"
    return None


def _utf16_order(sample: bytes) -> str | None:
    """UTF-16 without a BOM: mostly-ASCII text has a NUL in every other byte."""
    even, odd = sample[0::2], sample[1::2]
    if len(odd) < 2:
        return None
    if odd.count(0) >= 0.9 * len(odd) and even.count(0) <= 0.1 * len(even):
        return "utf-16-le"
    if even.count(0) >= 0.9 * len(even) and odd.count(0) <= 0.1 * len(odd):
        return "utf-16-be"
    return None


def _decode(data: bytes, source: str, encoding: str | None) -> tuple[str, str]:
    """The text and the encoding used: as given, else from a BOM, a UTF-16 NUL pattern, or UTF-8."""
    if encoding:
        try:
            codecs.lookup(encoding)
        except LookupError:
            raise InputFileError(f"unknown [[encoding]] {encoding!r}; use e.g. utf-8, cp1252 or utf-16") from None
        try:
            text = data.decode(encoding)
        except UnicodeDecodeError as exc:
            line = data[: exc.start].decode(encoding, "replace").count("\n") + 1
            raise InputFileError(
                f"{source}: line {line} is not valid {encoding} (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
                "fix: pass the encoding the file was saved in with [[encoding]], or leave [[encoding]] out to detect it"
            ) from None
        except Exception as exc:  # some codecs (e.g. rot13, idna) raise other types
            raise InputFileError(
                f"{source} cannot be decoded as {encoding} ({_short(exc)}); "
                "fix: [[encoding]] utf-8 or the file's real encoding"
            ) from None
        return text.removeprefix("\ufeff"), encoding  # a byte-order mark is not part of the header
    for bom, name in (
        (b"\xef\xbb\xbf", "utf-8"),
        (b"\xff\xfe\x00\x00", "utf-32-le"),
        (b"\x00\x00\xfe\xff", "utf-32-be"),
        (b"\xff\xfe", "utf-16-le"),
        (b"\xfe\xff", "utf-16-be"),
    ):
        if data.startswith(bom):
            return _decode_auto(data[len(bom) :], source, name), name
    name = _utf16_order(data[:8192]) or "utf-8"
    return _decode_auto(data, source, name), name


def _decode_auto(data: bytes, source: str, name: str) -> str:
    # surrogatepass keeps a lone UTF-16 surrogate so that _scrub can replace and count it
    errors = "strict" if name == "utf-8" else "surrogatepass"
    try:
        return data.decode(name, errors)
    except UnicodeDecodeError as exc:
        line = data[: exc.start].decode(name, "replace").count("\n") + 1
        byte = f"byte 0x{data[exc.start]:02x} at offset {exc.start}"
        where = f"{source}: line {line} is not valid {name.upper()} ({byte})"
    if name != "utf-8":
        raise InputFileError(f"{where}; fix: re-save the file as UTF-8, or pass its encoding with [[encoding]]")
    bad = {ord(c) - 0xDC00 for c in _SURROGATE.findall(data.decode("utf-8", "surrogateescape"))}
    if bad <= set(range(0xA0, 0x100)):
        # Latin-1 and Windows-1252 agree on these bytes.
        hint = "it looks like Latin-1 (ISO-8859-1); fix: [[encoding]] latin-1 (or re-save the file as UTF-8)"
    elif not bad & {0x81, 0x8D, 0x8F, 0x90, 0x9D}:
        # 0x80-0x9f are printable in Windows-1252 (0x85 '…', 0x92 '’', 0x93/0x94 '“”') but
        # control characters in Latin-1, so latin-1 would silently corrupt them.
        hint = (
            "it looks like Windows-1252 (cp1252), as Excel saves it; "
            "fix: [[encoding]] cp1252 (or re-save the file as UTF-8)"
        )
    else:
        hint = "fix: re-save the file as UTF-8, or pass the encoding it was saved in with [[encoding]]"
    raise InputFileError(f"{where}; {hint}")


def _split_lines(text: str) -> list[str]:
    lines = _NEWLINE.split(text)
    if lines and lines[-1] == "":
        lines.pop()
    return lines


# ---------------------------------------------------------------- formats


def _inner_suffix(path: str) -> str:
    """The extension that names the format: ``x.csv.gz`` -> ``.csv``."""
    name = Path(path).name.lower()
    for ext in _COMPRESSED_SUFFIXES:
        if name.endswith(ext):
            name = name[: -len(ext)]
            break
    return Path(name).suffix


def _detect_format(path: str, fmt: str | None, data: bytes) -> tuple[str, bool]:
    """The format, and whether it was guessed from the content."""
    if fmt:
        return fmt, False
    if data.startswith(b"PAR1"):
        return "parquet", True
    if path != "-" and (ext := _inner_suffix(path)) in _EXTENSIONS:
        return _EXTENSIONS[ext], False
    head = data[:4096]
    for bom in (b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff"):
        head = head.removeprefix(bom)
    head = head.replace(b"\x00", b"").lstrip()  # UTF-16 text has NULs between the ASCII bytes
    if head.startswith((b"{", b"[")):
        return "json", True
    return "csv", True


def _read_parquet(data: bytes, source: str) -> _Frame:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(io.BytesIO(data))
    except Exception as exc:  # pyarrow raises several types for a bad file
        raise InputFileError(f"{source} is not a readable Parquet file ({_short(exc)}); check the file") from None
    numbers = np.arange(1, table.num_rows + 1)

    def cells(name: str, role: str) -> np.ndarray:
        col = table.column(name)
        typ = col.type.value_type if pa.types.is_dictionary(col.type) else col.type
        try:
            if pa.types.is_string(typ) or pa.types.is_large_string(typ) or pa.types.is_null(typ):
                return np.array(col.to_pylist(), dtype=object)
            if role == "text":
                raise InputFileError(f"{source}: column {name!r} holds {typ} values, not text; fix: [[text_col]] NAME")
            if pa.types.is_integer(typ):
                return np.array(col.cast(pa.string()).to_pylist(), dtype=object)
            if pa.types.is_floating(typ):
                return _float_cells(col.to_numpy(zero_copy_only=False).astype(np.float64), role, name, source)
            if pa.types.is_boolean(typ):
                return np.array([None if v is None else str(v).lower() for v in col.to_pylist()], dtype=object)
            if pa.types.is_nested(typ) or pa.types.is_binary(typ) or pa.types.is_large_binary(typ):
                raise InputFileError(
                    f"{source}: column {name!r} holds {typ} values; ids and labels must be text or numbers; "
                    f"fix: --{role}-col NAME"
                )
            return np.array([None if v is None else str(v) for v in col.to_pylist()], dtype=object)
        except InputFileError:
            raise
        except Exception as exc:  # odd arrow types (extension, temporal overflow) fail to convert in many ways
            raise InputFileError(f"{source}: column {name!r} cannot be read ({_short(exc)}); check the file") from None

    return _Frame(list(table.column_names), cells, numbers, "row", "parquet", [], False)


def _float_cells(values: np.ndarray, role: str, name: str, source: str) -> np.ndarray:
    """Floats as text: integral ones as integers (pandas stores an int column with gaps as float)."""
    missing = np.isnan(values)
    integral = ~missing & np.isfinite(values) & (np.floor(values) == values) & (np.abs(values) < _FLOAT_EXACT)
    if role == "id" and (bad := np.flatnonzero(~missing & ~integral)).size:
        raise InputFileError(
            f"{source} row {bad[0] + 1}: id {float(values[bad[0]])!r} is stored as a floating-point number, which "
            f"rounds ids; fix: store column {name!r} as text or integers, or pass [[id_col]] '' to number rows"
        )
    out = np.empty(len(values), dtype=object)
    out[missing] = None
    out[integral] = values[integral].astype(np.int64).astype(str).astype(object)
    rest = ~missing & ~integral
    out[rest] = [repr(float(v)) for v in values[rest]]
    return out


def _read_json(text: str, source: str, guessed: bool) -> _Frame:
    """JSON Lines (one object a line), or one JSON document: an array of objects, or an object holding one."""
    if text.lstrip().startswith("["):
        return _document_frame(_json_doc(text, source, guessed), source)
    records: list[dict[str, Any]] = []
    numbers: list[int] = []
    for i, line in enumerate(_split_lines(text), start=1):
        if not line.strip():
            continue
        try:
            rec = _json_loads(line)
        except (ValueError, RecursionError) as exc:
            if not records:
                # Maybe one pretty-printed document, e.g. {"data": [...]} over many lines.
                try:
                    return _document_frame(_json_loads(text), source)
                except (ValueError, RecursionError, InputFileError):
                    pass
            raise InputFileError(
                f"{source} line {i} is not valid JSON ({_json_reason(exc)}); fix that line"
                + ("; if the file is not JSON, pass [[fmt]] csv or [[fmt]] txt" if guessed else "")
            ) from None
        if not isinstance(rec, dict):
            raise InputFileError(f'{source} line {i} is not a JSON object; each line must be {{"text": ...}}')
        records.append(rec)
        numbers.append(i)
    if len(records) == 1 and (inner := _inner_records(records[0])) is not None:
        return _json_frame(inner, np.arange(1, len(inner) + 1), "row", "json")
    return _json_frame(records, np.array(numbers, dtype=np.int64), "line", "jsonl")


def _json_loads(s: str) -> Any:
    # Numbers keep their literal text: ids like 000123 or 12345678901234567890123 stay exact.
    return json.loads(s, parse_int=str, parse_float=str, parse_constant=str)


def _json_doc(text: str, source: str, guessed: bool) -> Any:
    try:
        return _json_loads(text)
    except (ValueError, RecursionError) as exc:
        line = getattr(exc, "lineno", None)
        where = f" line {line}" if line else ""
        raise InputFileError(
            f"{source}{where} is not valid JSON ({_json_reason(exc)}); fix the file"
            + ("; if it is not JSON, pass [[fmt]] csv or [[fmt]] txt" if guessed else "")
        ) from None


def _json_reason(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    return getattr(exc, "msg", None) or _short(exc)


def _document_frame(doc: Any, source: str) -> _Frame:
    if isinstance(doc, dict):
        inner = _inner_records(doc)
        records = inner if inner is not None else [doc]
    elif isinstance(doc, list):
        records = doc
    else:
        raise InputFileError(f'{source} is a single JSON value, not objects; give [{{"text": ...}}, ...] or JSON Lines')
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise InputFileError(
                f'{source} item {i + 1} of the JSON array is not an object; each must be {{"text": ...}}'
            )
    return _json_frame(records, np.arange(1, len(records) + 1), "row", "json array")


def _inner_records(doc: dict) -> list[dict] | None:
    """The records of an API-style wrapper, {"data": [{...}, ...], "meta": {...}}; None if ``doc`` is a record."""
    if any(_norm(k) in TEXT_COLUMNS for k in doc):
        return None
    lists = [v for v in doc.values() if isinstance(v, list) and v and all(isinstance(r, dict) for r in v)]
    return lists[0] if len(lists) == 1 else None


def _json_frame(records: list[dict], numbers: np.ndarray, unit: str, kind: str) -> _Frame:
    names: dict[str, None] = {}
    for rec in records:
        names.update(dict.fromkeys(rec))
    cols = {c: [_json_scalar(r.get(c)) for r in records] for c in names}
    return _Frame(list(names), lambda name, role: np.array(cols[name], dtype=object), numbers, unit, kind, [], False)


class _Nested:
    """A JSON list or object where a value was expected; kept so the message can name the row."""

    def __init__(self, value: Any) -> None:
        self.what = "a JSON list" if isinstance(value, list) else "a JSON object"


def _json_scalar(v: Any) -> Any:
    if v is None or type(v) is str:
        return v
    if v is True or v is False:
        return "true" if v else "false"
    return _Nested(v)


def _read_txt(text: str) -> _Frame:
    lines = _split_lines(text)
    keep = [i for i, t in enumerate(lines) if t.strip()]
    texts = np.array([lines[i] for i in keep], dtype=object)
    return _Frame(["line"], lambda name, role: texts, np.array(keep, dtype=np.int64) + 1, "line", "txt", [], False)


def _sniff_sep(text: str, header: bool) -> str | None:
    """The separator among , tab ; | that splits the first records into equally many fields.

    None means one column. Quoted fields are skipped, so separators and newlines inside
    quotes do not count. With a header, the separator must occur in the header row (a
    record with more fields is then a parse error naming it, not a reason to guess again).
    """
    sample = text[:65536]
    counts: list[dict[str, int]] = [{}]
    content = [False]
    # Odd parts of a split on '"' lie inside quotes; an escaped quote ("") toggles twice.
    for k, part in enumerate(sample.split('"')):
        if len(counts) > 100:
            break
        if k % 2:
            content[-1] = True  # a quoted field
            continue
        for j, piece in enumerate(_NEWLINE.split(part)):
            if j:
                counts.append({})
                content.append(False)
            if piece.strip():
                content[-1] = True
            for d in _SEPARATORS:
                if d in piece:
                    counts[-1][d] = counts[-1].get(d, 0) + piece.count(d)
    records = [c for c, has in zip(counts, content) if has]
    if len(sample) < len(text) and len(records) > 1:
        records.pop()  # cut short by the sample
    if not records:
        return None
    best, best_key = None, (0.0, 0)
    for d in _SEPARATORS:
        per = [r.get(d, 0) for r in records]
        ref = per[0] if header else max(set(per), key=per.count)
        if ref == 0:
            continue
        key = (sum(c == ref for c in per) / len(per), ref)
        # A header names the separator; without one it must split most records alike.
        if (header or key[0] >= 0.6) and key > best_key:
            best, best_key = d, key
    return best


def _read_csv(text: str, source: str, sep: str | None, header: bool, guessed: bool) -> _Frame:
    detail = []
    if excel := re.match(r"sep=([^\r\n])(?:\r\n|\r|\n)", text):  # Excel's "sep=;" first line names the separator
        text, sep = text[excel.end() :], sep or excel.group(1)
    if sep is None:
        sep = _sniff_sep(text, header)
    if sep is None:
        # One column: split on a character the text lacks, so commas inside tweets stay text.
        sep = next((c for c in ("\x1f", "\x1e", "\x1d", "\x1c", "\ufdd0", "\ufdd1") if c not in text), "\x1f")
        detail.append("one column")
    else:
        detail.append(f"{_SEP_NAMES.get(sep, repr(sep))}-separated")
    if not header:
        detail.append("no header")
    parsed = _csv_stdlib(text, sep) if len(text) <= STDLIB_CSV_MAX_CHARS else None
    first, rows, column = parsed or _csv_pandas(text, sep, source, guessed)
    skip = 1 if header else 0
    if header:
        columns = _unique_names(first)
    else:
        columns = [str(i + 1) for i in range(len(first))]  # --text-col 3 names the third column
    position = {c: i for i, c in enumerate(columns)}

    def cells(name: str, role: str) -> np.ndarray:
        return column(position[name])[skip:]

    return _Frame(columns, cells, np.arange(1, rows - skip + 1), "row", "csv", detail, guessed)


# A parsed CSV: the first record, the number of records, and column i (first record included) as an
# object array of str; a record shorter than the first has "" in the cells it lacks, as pandas reads it.
_Cells = tuple[list[str], int, Callable[[int], np.ndarray]]


def _csv_stdlib(text: str, sep: str) -> _Cells | None:
    """``text`` read by the standard library's CSV reader, or None where it might read it otherwise than
    pandas' C parser does: a quote out of place, a record wider than the first (pandas refuses it), a
    record of blanks (pandas skips a line of spaces), a NUL, a lone carriage return (pandas may drop the
    empty field after one), a non-ASCII separator (pandas refuses it), a field over the reader's size
    limit, no record. pandas then reads it (or says why not).

    Why two parsers: importing pandas takes about 0.35 s, most of a warm re-ingest of a small file, and
    this reader is about twice as slow per row, so files over STDLIB_CSV_MAX_CHARS go to pandas."""
    if not sep.isascii() or "\x00" in text or _LONE_CR.search(text):
        return None
    try:
        records = list(filter(None, csv.reader(io.StringIO(text, newline=""), delimiter=sep, strict=True)))
    except csv.Error:
        return None
    if not records:
        return None
    width = len(records[0])
    if max(map(len, records)) > width or any(not "".join(r).strip() for r in records):
        return None
    if min(map(len, records)) < width:
        records = [r + [""] * (width - len(r)) for r in records]
    return records[0], len(records), lambda i: np.fromiter(map(itemgetter(i), records), object, len(records))


def _csv_pandas(text: str, sep: str, source: str, guessed: bool) -> _Cells:
    """``text`` read by pandas' C parser; its errors become one-line InputFileErrors."""
    import pandas as pd

    # Older pandas C parsers end a field at NUL; a stand-in character keeps it, then goes back.
    nul = next((c for c in ("\ufdd2", "\ufdd3", "\ufdd4") if c not in text), None) if "\x00" in text else None
    body = text.replace("\x00", nul) if nul else text
    try:
        # header=None even with a header: pandas then refuses a row with more fields than the
        # first one, where header=0 would silently drop the extra field or make it the index.
        df = pd.read_csv(
            io.StringIO(body),
            sep=sep,
            header=None,
            dtype=str,
            keep_default_na=False,
            na_filter=False,
            index_col=False,
            engine="c" if nul or "\x00" not in text else "python",
        )
    except pd.errors.EmptyDataError:
        raise InputFileError(f"{source} is empty; give a file with a header row and at least one tweet") from None
    except pd.errors.ParserError as exc:
        msg = str(exc).replace("Error tokenizing data. C error: ", "")
        shown = _SEP_NAMES.get(sep, "none")
        raise InputFileError(
            f"{source} is not valid CSV ({_short(msg)}); fix the quoting on that line, or give the separator "
            f"with [[sep]] (read with: {shown})"
            + ("; for plain tweets, one a line, pass [[fmt]] txt" if guessed else "")
        ) from None
    except Exception as exc:  # pandas also raises ValueError, UnicodeError, OverflowError... on odd input
        raise InputFileError(
            f"{source} cannot be read as CSV ({_short(exc)}); check the file, or pass [[fmt]]"
        ) from None

    def column(i: int) -> np.ndarray:
        values = df.iloc[:, i].fillna("").to_numpy(dtype=object)
        if nul:
            values = np.array([v.replace(nul, "\x00") for v in values], dtype=object)
        return values

    first = df.iloc[0].fillna("").astype(str).tolist() if len(df) else []
    if nul:
        first = [v.replace(nul, "\x00") for v in first]
    return first, len(df), column


# ---------------------------------------------------------------- columns and values


def _unique_names(names: list[str]) -> list[str]:
    """Header names made unique as pandas does (``a``, ``a.1``); a blank one becomes ``column N``."""
    out: list[str] = []
    seen: set[str] = set()
    for i, name in enumerate(names):
        base = name if name.strip() else f"column {i + 1}"
        cand, k = base, 0
        while cand in seen:
            k += 1
            cand = f"{base}.{k}"
        seen.add(cand)
        out.append(cand)
    return out


def _norm(name: str) -> str:
    return re.sub(r"[\s\-]+", "_", str(name).strip().lower())


def _show(columns: Sequence[str]) -> str:
    shown = [_printable(c if len(c) <= 40 else c[:37] + "...") for c in columns[:20]]
    more = f" ... ({len(columns)} in all)" if len(columns) > 20 else ""
    return (", ".join(shown) or "none") + more


def _printable(s: str) -> str:
    """``s`` fit for a one-line message: quoted if blank or holding control characters or lone surrogates."""
    return s if s and s.isprintable() and s.strip() == s else repr(s)  # lone surrogates are not printable


def pick_column(
    columns: list[str],
    wanted: str | None,
    defaults: Sequence[str],
    taken: Collection[str | None],
    what: str,
    flag: str,
    source: str,
) -> str | None:
    """The column for one role: the name given (exact, else case-insensitive), else the first default found."""
    if wanted == "":
        return None
    if wanted is not None:
        if wanted in columns:
            return wanted
        for c in columns:
            if _norm(c) == _norm(wanted):
                return c
        raise InputFileError(
            f"{source} has no {what} column {wanted!r}; columns found: {_show(columns)}; fix: {flag} NAME"
        )
    normed: dict[str, str] = {}
    for c in columns:
        normed.setdefault(_norm(c), c)
    for d in defaults:
        if d in normed and normed[d] not in taken:
            return normed[d]
    return None


def _looks_like_data(columns: list[str]) -> bool:
    """A header row that is really a record: numbers, blanks or sentences where names should be."""
    return not all(_name_like(c) for c in columns)


def _name_like(name: str) -> bool:
    name = name.strip()
    return (
        0 < len(name) <= 40
        and len(name.split()) <= 3
        and not re.fullmatch(r"[+-]?[\d.,]+", name)
        and re.fullmatch(r"[\w .()/#-]+", name) is not None
    )


def _no_text_column(frame: _Frame, header: bool, path: str, source: str) -> InputFileError:
    cols = frame.columns
    if frame.kind == "csv" and not header:
        return InputFileError(
            f"{source} has {len(cols)} columns and no header; fix: [[text_col]] N (the text column's number, from 1; "
            "likewise [[id_col]] N and [[label_col]] N)"
        )
    msg = (
        f"{source} has no text column (looked for {', '.join(TEXT_COLUMNS)}); columns found: {_show(cols)}; "
        "fix: [[text_col]] NAME"
    )
    if frame.kind == "csv" and _looks_like_data(cols):
        msg += (
            "; the first row looks like data, not a header: if the file has none, pass [[header]] "
            "(and [[text_col]] N, N from 1, if it has several columns)"
        )
    if frame.kind == "csv" and (path == "-" or frame.guessed):
        msg += "; if these are plain tweets, one a line, pass [[fmt]] txt"
    return InputFileError(msg)


def _check_cells(values: np.ndarray, frame: _Frame, what: str, source: str) -> None:
    nested = [i for i, v in enumerate(values) if isinstance(v, _Nested)] if frame.kind.startswith("json") else []
    if nested:
        i = nested[0]
        raise InputFileError(
            f"{source} {frame.unit} {frame.numbers[i]}: {what} is {values[i].what}, not a value; fix that {frame.unit}"
        )


def _ids(frame: _Frame, col: str, source: str) -> np.ndarray:
    ids = frame.cells(col, "id")
    _check_cells(ids, frame, "the id", source)
    missing = np.flatnonzero(_is_none(ids))
    blank = int(missing[0]) if missing.size else _first_match(ids, _BLANK)
    if blank is not None:
        raise InputFileError(
            f"{source} {frame.unit} {frame.numbers[blank]}: the id is empty; fix: fill it in, "
            "or pass [[id_col]] '' to number rows instead"
        )
    if (i := _first_match(ids, _SCIENTIFIC)) is not None:
        raise InputFileError(
            f"{source} {frame.unit} {frame.numbers[i]}: id {ids[i]!r} is in scientific notation, so a spreadsheet "
            "has rounded it and lost digits; fix: format the id column as Text in the spreadsheet before saving, "
            "or export the file from its source again"
        )
    return ids


def _first_match(values: np.ndarray, pattern: str) -> int | None:
    """Index of the first value that ``pattern`` matches in full, or None.

    One regex pass over the joined column rules out the common case; only a hit (which an
    id containing a newline can fake) is confirmed value by value.
    """
    if re.search(f"^(?:{pattern})$", "\n".join(values), re.MULTILINE) is None:
        return None
    full = re.compile(pattern)
    return next((i for i, v in enumerate(values) if full.fullmatch(v)), None)


def _labels(frame: _Frame, col: str, source: str) -> np.ndarray:
    labels = frame.cells(col, "label")
    _check_cells(labels, frame, "the label", source)
    labels[_is_none(labels)] = NO_LABEL
    return labels


def _texts(frame: _Frame, col: str, source: str) -> np.ndarray:
    texts = frame.cells(col, "text")
    _check_cells(texts, frame, "the text", source)
    texts[_is_none(texts)] = ""  # an empty cell is an empty tweet
    return texts


def _is_none(values: np.ndarray) -> np.ndarray:
    return np.fromiter((v is None for v in values), dtype=bool, count=len(values))


def _scrub(values: np.ndarray) -> tuple[np.ndarray, int]:
    """Replace what UTF-8 cannot encode (lone surrogates, e.g. from JSON "\\ud83d") by U+FFFD."""
    try:
        "".join(values).encode("utf-8")  # the common case: one check for the whole column
        return values, 0
    except UnicodeEncodeError:
        pass
    out, count = np.empty(len(values), dtype=object), 0
    for i, v in enumerate(values):
        out[i], k = _SURROGATE.subn("\ufffd", v)
        count += k
    return out, count


def _dedupe(
    ids: np.ndarray, texts: np.ndarray, labels: np.ndarray, frame: _Frame, mode: str, source: str
) -> np.ndarray:
    """Positions of the rows to keep, in file order.

    A row repeating another's id, text and label is dropped. Rows sharing an id with a
    different text or label are an error, unless ``mode`` keeps the first or the last of them.
    """
    rows = list(zip(ids.tolist(), texts.tolist(), labels.tolist()))
    rest = _kept(rows, last=mode == "last")
    rest_ids = ids[rest].tolist()
    if len(set(rest_ids)) == len(rest_ids):
        return rest
    if mode == "error":
        shared = Counter(rest_ids)
        j = next(j for j, i in enumerate(rest_ids) if shared[i] > 1)
        a, b = rest[j], next(rest[k] for k in range(j + 1, len(rest)) if rest_ids[k] == rest_ids[j])
        differs = "texts" if rows[a][1] != rows[b][1] else "labels"
        raise InputFileError(
            f"{source} {frame.unit}s {frame.numbers[a]} and {frame.numbers[b]} share id {rest_ids[j]!r} "
            f"with different {differs}; an id names one tweet: fix the ids, or pass [[duplicates]] first|last to keep "
            "one of them (or [[id_col]] '' to number rows)"
        )
    return rest[_kept(rest_ids, last=mode == "last")]


def _kept(values: list[Any], last: bool) -> np.ndarray:
    """Positions of the first (or ``last``) occurrence of each distinct value, in order."""
    n = len(values)
    # A dict keeps the last position written for a value: write back to front to keep the first.
    kept = dict(zip(values, range(n)) if last else zip(reversed(values), range(n - 1, -1, -1)))
    return np.sort(np.fromiter(kept.values(), np.intp, len(kept)))


def _short(exc: BaseException | str) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    text = text if len(text) <= 200 else text[:197] + "..."
    return text if text.isprintable() else repr(text)


def _check_sep(sep: str | None) -> str | None:
    if sep is None:
        return None
    if sep.lower() in ("\\t", "tab"):
        return "\t"
    if len(sep) != 1 or sep in '"\r\n\x00':
        raise InputFileError(
            "[[sep]] must be one character other than a quote or newline (e.g. [[sep]] ';' or [[sep]] tab), "
            f"not {sep!r}"
        )
    return sep


# ---------------------------------------------------------------- entry point


def read_table(
    path: str,
    *,
    text_col: str | None = None,
    id_col: str | None = None,
    label_col: str | None = None,
    fmt: str | None = None,
    encoding: str | None = None,
    sep: str | None = None,
    header: bool = True,
    duplicates: str = "error",
) -> Table:
    """Read and validate an input file; ``"-"`` reads standard input.

    Columns are matched case-insensitively (``-`` and spaces count as ``_``): text from the
    first of TEXT_COLUMNS (or the only column), id from ID_COLUMNS (else row numbers), label
    from LABEL_COLUMNS (else none). Each ``*_col`` overrides its own role only; ``""``
    ignores that column. ``header=False`` names CSV columns "1", "2", ... ``duplicates``
    says what to do with rows that share an id but differ: "error", or keep the "first" or
    the "last" (at its own position; rows keep their file order).
    Raises InputFileError, and nothing else, for any bad input.
    """
    source = "standard input" if path == "-" else str(path)
    source = source if source.isprintable() else repr(source)  # messages stay one line
    if duplicates not in DUPLICATES:
        raise InputFileError(f"unknown [[duplicates]] {duplicates!r}; use one of: {', '.join(DUPLICATES)}")
    if fmt is not None and fmt not in FORMATS:
        raise InputFileError(f"unknown input format {fmt!r}; use one of: {', '.join(FORMATS)}")
    sep = _check_sep(sep)
    data, compression = _decompress(_read_bytes(path), source)
    if not data.strip():
        raise InputFileError(f"{source} is empty; give a file with at least one tweet")
    fmt, guessed = _detect_format(path, fmt, data)
    used = None
    if fmt == "parquet":
        frame = _read_parquet(data, source)
    else:
        if (what := _binary_kind(data)) is not None:
            raise InputFileError(
                f"{source} looks like a binary file ({what}), not text; give a CSV, JSON Lines, Parquet or text file"
            )
        text, used = _decode(data, source, encoding)
        if not text.strip():
            raise InputFileError(f"{source} is empty; give a file with at least one tweet")
        if fmt in ("json", "jsonl"):
            frame = _read_json(text, source, guessed)
        elif fmt == "txt":
            frame = _read_txt(text)
        else:
            frame = _read_csv(text, source, sep or ("\t" if fmt == "tsv" else None), header, guessed)
    n = len(frame.numbers)
    if n == 0:
        what = "a header but no rows" if frame.kind == "csv" else "no rows"
        raise InputFileError(f"{source} has {what}; add tweets or check the file")
    if frame.kind == "txt":
        if id_col or label_col or text_col:
            flag = "[[id_col]]" if id_col else "[[label_col]]" if label_col else "[[text_col]]"
            raise InputFileError(
                f"{source} is read as plain text (one tweet a line) and has no columns for {flag}; "
                "fix: drop the column options, or pass [[fmt]] csv (or jsonl) if the file has columns"
            )
        tcol, icol, lcol = "line", None, None
    else:
        cols = frame.columns
        named = header or frame.kind != "csv"  # without a header, columns are only numbers
        picked = pick_column(cols, text_col, TEXT_COLUMNS if named else (), set(), "text", "[[text_col]]", source)
        icol = pick_column(cols, id_col, ID_COLUMNS if named else (), {picked}, "id", "[[id_col]]", source)
        lcol = pick_column(
            cols, label_col, LABEL_COLUMNS if named else (), {picked, icol}, "label", "[[label_col]]", source
        )
        if picked is not None:
            tcol = picked
        else:
            taken = {icol, lcol}
            rest = [c for c in cols if c not in taken]
            if text_col is None and len(cols) == 1 and frame.kind != "csv":
                tcol = cols[0]
            elif text_col is None and len(cols) == 1 and header:
                # One unknown column: its first line may be a header or the first tweet. Guessing either
                # way could drop a tweet or store a header as one, so the user says which.
                raise InputFileError(
                    f"{source} has one column, headed {_show(cols)}, which is not a known text column name; fix: if "
                    f"that line is a header, pass [[text_col]] {shlex.quote(cols[0])}; if the file is plain tweets, "
                    "one a line, pass [[fmt]] txt"
                )
            elif text_col is None and len(rest) == 1 and not header:
                tcol = rest[0]
            else:
                raise _no_text_column(frame, header, path, source)

    texts, replaced = _scrub(_texts(frame, tcol, source))
    if icol is None:
        ids = frame.numbers.astype(str).astype(object)
    else:
        ids, k = _scrub(_ids(frame, icol, source))
        replaced += k
    if lcol is None:
        labels = np.full(n, NO_LABEL, dtype=object)
    else:
        labels, k = _scrub(_labels(frame, lcol, source))
        replaced += k
    keep = _dedupe(ids, texts, labels, frame, duplicates, source) if icol is not None else np.arange(n)
    texts_kept = texts[keep].tolist()
    detail = frame.detail + [c for c in (compression,) if c] + [e for e in (used,) if e and e != "utf-8"]
    return Table(
        source="standard input" if path == "-" else str(path),
        ids=ids[keep],
        texts=texts_kept,
        labels=labels[keep],
        digests=np.array([raw_digest(t) for t in texts_kept], dtype="S32"),
        rows_read=n,
        duplicate_rows=n - len(keep),
        id_column=icol,
        label_column=lcol,
        text_column=tcol,
        replaced_chars=replaced,
        format=frame.kind + (f" ({', '.join(detail)})" if detail else ""),
    )
