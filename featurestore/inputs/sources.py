"""Reading tweets from the files users bring: CSV/TSV, JSON Lines, JSON arrays, Parquet, plain text or stdin.

This module owns everything between the input bytes and a validated ``Table``: decompression
(gzip, bz2, xz, zstd, found by magic bytes), encoding detection (BOMs, UTF-16, a Windows-1252
hint), format and delimiter sniffing, row boundaries (quotes, field counts, escapes), column
matching, the spelling rules for ids and labels, duplicate rows, and one-line ``InputFileError``
messages naming the row and a fix that works when followed. JSON layouts are ``layouts.py``'s.

Nothing is changed without a word: a choice made by a rule is named in ``Table.column_rules``,
a value changed by a spelling rule is counted in ``Table.notes``, and anything that would need a
guess (two candidate columns, a row boundary that two readings put in different places, two
spellings of one label) is an error naming both. Nothing else escapes for any input bytes, and
nothing here touches the store: a bad file stops the ingest before anything is written.
"""

from __future__ import annotations

import bz2
import codecs
import csv
import gzip
import io
import lzma
import re
import shlex
import sys
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path
from typing import Any

import numpy as np

from featurestore.errors import InputFileError
from featurestore.inputs import layouts
from featurestore.inputs.layouts import MISSING, Nested
from featurestore.storage.keys import raw_digest

FORMATS = ("csv", "tsv", "json", "jsonl", "parquet", "txt")
DUPLICATES = ("error", "first", "last")
NO_LABEL = ""  # the label of a row that has none
# Cells that mean "no value" (pandas' own list, less its rarest): a label spelled so is no label,
# an id spelled so is an empty id. Compared after surrounding whitespace is stripped, case as written.
MISSING_VALUES = frozenset(
    {"", "NaN", "nan", "-NaN", "-nan", "NA", "N/A", "n/a", "#N/A", "#NA", "<NA>", "NULL", "null", "None"}
)

# Default column names, compared after _norm(); a file with two of a role's names must say which it means.
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
KNOWN_COLUMNS = frozenset(TEXT_COLUMNS + ID_COLUMNS + LABEL_COLUMNS)

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
# What a spreadsheet makes of a long number: 1.23457E+18 (or 1,23457E+18, 1E+18) has lost digits. A
# spreadsheet always writes the exponent's sign or a decimal point; 3e8 or 12e45 without either are
# hexadecimal-looking ids and stay as they are.
_SCIENTIFIC = r"\s*[+-]?\d+(?:(?:[.,]\d*)?[eE][+-]\d+|[.,]\d*[eE]\d+)\s*"
_DIGITS = re.compile(r"\d+")
_ID_TOKEN = re.compile(r"[\w.,:/#@+-]*\d[\w.,:/#@+-]*")  # one word with a digit, that may be an id: a1b2, 1.5e+18
_WHOLE = re.compile(r"[+-]?\d+(?:\.0*)?")  # a whole number, maybe written as a float (1.0)
_FLOAT_EXACT = 2.0**53  # floats at or beyond this cannot hold every integer id


@dataclass
class Table:
    """Validated input rows. Ids and labels are Python ``str`` in object arrays, as written but for
    the spelling rules (``read_table``), each of which says what it changed in ``notes``."""

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
    # role ("text", "id") -> the known format's rule that chose its column, e.g. for Twitter API objects
    # "each tweet's full_text, else its text (Twitter API)"; the column is then named "full_text > text"
    column_rules: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # one line per value a spelling rule changed, for the user

    @property
    def has_labels(self) -> bool:
        return self.label_column is not None


@dataclass
class _Frame:
    """Parsed records before validation: column names, and cells fetched per column on demand."""

    columns: list[str]
    cells: Callable[[str, str], np.ndarray]  # (column, role) -> object array of str, None or MISSING
    numbers: np.ndarray  # the human row/line number of each record, for messages
    unit: str  # "row" or "line"
    kind: str  # format for the description: "csv", "jsonl", "json array", "parquet", "txt"
    detail: list[str]  # separator, "no header", ...
    guessed: bool  # the format came from content, not from --format or the extension
    index: str | None = None  # a column holding a pandas index that may be the ids (layouts.Records.index)
    first: list[str] | None = None  # a CSV's first record as written, header or not
    notes: list[str] = field(default_factory=list)  # what reading changed, for Table.notes


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
                    f"fix: [[{role}_col]] NAME"
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
    """JSON Lines, or one JSON document holding records (layouts.py says which layouts are read)."""
    recs = layouts.read_json(text, source, guessed, TEXT_COLUMNS, KNOWN_COLUMNS)
    cols = layouts.columns(recs.records)
    return _Frame(
        [c for c in cols],
        lambda name, role: np.array(cols[name], dtype=object),
        recs.numbers,
        recs.unit,
        recs.kind,
        recs.detail,
        False,
        index=recs.index,
    )


def _read_txt(text: str) -> _Frame:
    lines = _split_lines(text)
    keep = [i for i, t in enumerate(lines) if t.strip()]
    texts = np.array([lines[i] for i in keep], dtype=object)
    return _Frame(["line"], lambda name, role: texts, np.array(keep, dtype=np.int64) + 1, "line", "txt", [], False)


# ---------------------------------------------------------------- delimited text (CSV, TSV)
#
# Row boundaries are never guessed. A file is read the RFC 4180 way (a field that starts with the quote
# runs to the matching quote, "" inside it is one quote) unless [[quote]] '' says quotes are text or
# [[escape]] names the character that escapes them. Whatever the reading, it must settle every row:
# a quote that does not close where a field ends, a row with more or fewer fields than the header, or a
# line that reads as the rest of the previous tweet is refused with its line and a fix. A fix that is a
# flag is offered only when the file, read with it, has none of these troubles (it is tried first).


@dataclass(frozen=True)
class _Dialect:
    """How a delimited file is read: the separator, the quote ("" = quotes are text), the escape ("" = none)."""

    sep: str
    quote: str = '"'
    escape: str = ""

    def reader(self, text: str) -> Any:
        return csv.reader(
            io.StringIO(text, newline=""),  # lines end at \n, \r\n and \r, as _NEWLINE counts them
            delimiter=self.sep,
            quotechar=self.quote or None,
            quoting=csv.QUOTE_MINIMAL if self.quote else csv.QUOTE_NONE,
            escapechar=self.escape or None,
            doublequote=True,
            strict=True,
        )


@dataclass
class _Scan:
    """The records of a delimited text and where each lies: its first and last line (1-based)."""

    records: list[list[str]] = field(default_factory=list)
    starts: list[int] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)  # the same list as starts when no record spans lines
    blank: list[int] = field(default_factory=list)  # blank lines skipped between two records

    @property
    def widths(self) -> list[int]:
        return list(map(len, self.records))

    @property
    def first(self) -> list[str]:
        return self.records[0] if self.records else []


class _Trouble(Exception):
    """A row boundary the file does not settle: where, what, and the fix by hand."""

    def __init__(self, what: str, by_hand: str, fixes: Sequence[str] = ()) -> None:
        super().__init__(what)
        self.what, self.by_hand, self.fixes = what, by_hand, fixes


class _Lines:
    """The physical lines of a text (1-based), split on first use: most reads never need them."""

    def __init__(self, text: str) -> None:
        self.text = text
        self._lines: list[str] | None = None

    def __getitem__(self, n: int) -> str:
        if self._lines is None:
            self._lines = _NEWLINE.split(self.text)
        return self._lines[n - 1] if 0 < n <= len(self._lines) else ""


@contextmanager
def _field_limit(n: int) -> Iterator[None]:
    """Let the CSV reader take a field of ``n`` characters (its default stops at 131072: a long tweet file)."""
    old = csv.field_size_limit()
    if n < old:
        yield
        return
    csv.field_size_limit(n + 1)
    try:
        yield
    finally:
        csv.field_size_limit(old)


def _scan(text: str, d: _Dialect, lines: _Lines | None = None) -> _Scan:
    """Every record and its place; raises _Trouble where a quote does not close where a field ends.

    A line that is empty or holds only spaces and tabs is skipped (as pandas does; ``blank`` lists those
    between records); a quoted blank field is a record. Most files have one record a line: one pass at the
    reader's C speed shows it, and the pass that counts lines record by record runs only for the others.
    """
    lines = lines or _Lines(text)
    with _field_limit(len(text)):
        reader = d.reader(text)
        try:
            records = list(reader)
        except csv.Error:
            records = []
        if not records or reader.line_num != len(records):
            return _scan_by_record(text, d, lines)
    if min(map(len, records)) > 1:
        starts = list(range(1, len(records) + 1))
        return _Scan(records, starts, starts)
    kept = [n for n, r in enumerate(records, 1) if not _blank_record(r, n, n, lines)]
    inside = range(kept[0], kept[-1]) if kept else range(0)
    blank = [n for n in inside if _blank_record(records[n - 1], n, n, lines)]
    return _Scan([records[n - 1] for n in kept], kept, kept, blank)


def _blank_record(rec: list[str], start: int, end: int, lines: _Lines) -> bool:
    return not rec or (len(rec) == 1 and start == end and not rec[0].strip(" \t") and not lines[start].strip(" \t"))


def _scan_by_record(text: str, d: _Dialect, lines: _Lines) -> _Scan:
    scan, blank = _Scan(), list[int]()
    reader = d.reader(text)
    prev = 0
    with _field_limit(len(text)):
        try:
            for rec in reader:
                start, prev = prev + 1, reader.line_num
                if _blank_record(rec, start, prev, lines):
                    blank.extend(range(start, prev + 1))
                    continue
                scan.records.append(rec)
                scan.starts.append(start)
                scan.ends.append(prev)
        except csv.Error as exc:
            raise _quote_trouble(d, lines, prev + 1, reader.line_num, str(exc)) from None
    if scan.starts:
        scan.blank = [n for n in blank if scan.starts[0] < n < scan.starts[-1]]
    return scan


def _quote_trouble(d: _Dialect, lines: _Lines, start: int, line: int, reason: str) -> _Trouble:
    q = d.quote
    record = "\n".join(lines[n] for n in range(start, line + 1))
    if not d.escape and "\\" + q in record:
        return _Trouble(
            f"line {start} has backslash-escaped quotes (\\{q}), which a CSV quote does not undo: read as written, "
            + (f"the field would swallow lines {start + 1}-{line}" if line > start else "the field ends early"),
            f"write each quote inside a quoted field doubled ({q}{q}) instead of \\{q}",
        )
    by_hand = f"close the quote on line {start}, or double each quote inside the field ({q}{q})"
    if "end of data" in reason:
        return _Trouble(
            f"line {start} opens a quoted field ({q}) that never closes: it would swallow every line after it", by_hand
        )
    if line > start:
        return _Trouble(
            f"line {start} opens a quoted field ({q}) that does not close on its line: it would swallow lines "
            f"{start + 1}-{line} and then end in the middle of a field",
            by_hand,
        )
    return _Trouble(f"line {start} has a quoted field ({q}) followed by more text before the next separator", by_hand)


def _row_trouble(scan: _Scan, d: _Dialect, header: bool, lines: _Lines) -> _Trouble | None:
    """The first row whose boundaries are in doubt: a wrong field count, a line that reads as the rest of the
    previous tweet, a row swallowed by a quoted field. None when every row is settled."""
    if not scan.records:
        return None
    widths = np.array(scan.widths)
    width = int(widths[0])
    of = "the header" if header else f"line {scan.starts[0]}"
    if (bad := np.flatnonzero(widths != width)).size:
        i = int(bad[0])
        line, w = scan.starts[i], int(widths[i])
        if w < width:
            rest = ""
            if i > (1 if header else 0):
                rest = f": it looks like the rest of the tweet on line {scan.ends[i - 1]} (a line break outside quotes)"
            return _Trouble(
                f"line {line} has {w} field{'s' * (w != 1)} where {of} has {width}{rest}",
                f"{_keep_line_break(d, line)}, or give line {line} its {width} fields",
            )
        sep = _SEP_NAMES.get(d.sep, repr(d.sep))
        return _Trouble(
            f"line {line} has {w} fields where {of} has {width}: the separator {sep} occurs in a field"
            + (" that is not quoted" if d.quote else ""),
            'put that field in quotes ("...")' if d.quote else f"take the {sep} out of that field",
        )
    return _continuation(scan, d, header, lines)


def _continuation(scan: _Scan, d: _Dialect, header: bool, lines: _Lines) -> _Trouble | None:
    """Columns of numbers (ids, numeric labels) tell a row from the rest of a tweet: a row with words in the first
    column where every other row has a number there, or a line inside a quoted field that reads as a row of its
    own (a number in each such column, the header's count of fields), is a boundary in doubt."""
    skip = 1 if header else 0
    rows = scan.records[skip:]
    multi = scan.starts is not scan.ends and any(e > s for s, e in zip(scan.starts, scan.ends))
    if not rows or not (multi or not _all_match([r[0] for r in rows], _A_NUMBER)):
        return None  # the common case: the first column is all numbers and no row spans lines
    numbers: list[int] = []  # the columns of numbers only
    for j in range(len(rows[0])):
        column = [r[j] for r in rows]
        if _all_match(column, _A_NUMBER):
            numbers.append(j)
        elif j == 0 and (trouble := _words_among_numbers(scan, d, skip, j, column, lines)):
            # the rest of a tweet after a line break starts a physical row: its words land in the first column.
            # Words among numbers elsewhere (labels 0, 1 and "changed") are data, not a boundary in doubt.
            return trouble
    if not (multi and d.quote and numbers):
        return None
    return _swallowed(scan, d, skip, numbers, lines) or _rows_without_quotes(scan, d, header, numbers, lines)


def _rows_without_quotes(scan: _Scan, d: _Dialect, header: bool, numbers: list[int], lines: _Lines) -> _Trouble | None:
    """Rows spanning lines that, with quotes read as text, are settled rows of their own, with a number in each
    column of numbers: a quote that opens a tweet (or ends one) may have joined them. Which reading the file
    means cannot be told."""
    other = _settled(lines.text, _Dialect(d.sep, "", d.escape), header)
    if other is None or len(other.records) == len(scan.records) or not _keeps_numbers(other, numbers, header):
        return None
    i = next(i for i, (s, e) in enumerate(zip(scan.starts, scan.ends)) if e > s)
    start, end = scan.starts[i], scan.ends[i]
    return _Trouble(
        f"lines {start}-{end} are one row when {d.quote} quotes a field, and {end - start + 1} rows when it is text: "
        f"a quote on line {start} may belong to the tweet",
        f"if the file quotes fields, double each quote inside the tweet ({d.quote}{d.quote})",
    )


def _words_among_numbers(
    scan: _Scan, d: _Dialect, skip: int, j: int, column: list[str], lines: _Lines
) -> _Trouble | None:
    """A column mostly of numbers (more numbers than words, two at least) with words in some rows."""
    if sum(bool(_DIGITS.fullmatch(v.strip())) for v in column[:20]) < min(2, len(column)):
        return None  # text, or labels spelled as words: not a column of numbers
    values = [v.strip() for v in column]
    numbers = sum(bool(_DIGITS.fullmatch(v)) for v in values)
    # Words, not an id: blanks, NaN and 1.5e18 are for the id checks; a1b2 or 2024-01-01 may well be ids.
    odd = [
        i
        for i, v in enumerate(values)
        if not _DIGITS.fullmatch(v) and v not in MISSING_VALUES and not _ID_TOKEN.fullmatch(v)
    ]
    if not odd or len(odd) > numbers or numbers < 2 or 2 * numbers < len(values):
        return None  # not mostly numbers: ids that are words or tokens (a1b2) tell nothing
    for i in odd:
        line, value = scan.starts[i + skip], values[i]
        record = "\n".join(lines[n] for n in range(line, scan.ends[i + skip] + 1))
        q = d.quote or '"'
        if (i + skip == 0) or (d.quote and q + column[i].replace(q, q + q) + q in record):
            continue  # without a header the first row may be one; a quoted value was written on purpose
        shown = value if len(value) <= 40 else value[:37] + "..."
        where = (
            f"the rest of the tweet on line {scan.ends[i + skip - 1]}"
            if i
            else "a tweet cut by the line break after it"
        )
        right = f"; or, if {shown!r} is right there, quote it ({q}{shown}{q})" if d.quote else ""
        return _Trouble(
            f"line {line} has {shown!r} in column {j + 1}, where every other row has a number: it looks like "
            f"{where} (a line break outside quotes)",
            _keep_line_break(d, line) + right,
        )
    return None


def _keep_line_break(d: _Dialect, line: int) -> str:
    """The fix by hand for a line break outside quotes before ``line``."""
    if d.quote:
        return f"put that tweet in quotes ({d.quote}...{d.quote}) so its line break stays inside it"
    return f"join line {line} to the line before it (with quotes read as text, a line break cannot be quoted)"


def _swallowed(scan: _Scan, d: _Dialect, skip: int, numbers: list[int], lines: _Lines) -> _Trouble | None:
    rows = scan.records[skip:]
    sizes = {j: [len(r[j].strip()) for r in rows] for j in numbers}
    width = len(rows[0])
    for i in range(skip, len(scan.records)):
        start, end = scan.starts[i], scan.ends[i]
        for line in range(start + 1, end + 1):
            raw = lines[line]
            if line == end:  # the rest of the record follows its closing quote, unless that ends the line
                if not raw.rstrip(" \t").endswith(d.quote):
                    continue
                raw = raw.rstrip(" \t")[:-1]
            parts = [p.strip() for p in raw.split(d.sep)]
            if len(parts) >= width and all(  # more: the swallowed row's own tweet held a separator
                _DIGITS.fullmatch(parts[j]) and min(sizes[j]) <= len(parts[j]) <= max(sizes[j]) for j in numbers
            ):
                return _Trouble(
                    f"line {line} reads as a row of its own but lies inside the quoted field ({d.quote}) that opens "
                    f"on line {start}: that quote does not close where it should (lines {start}-{end} would be one "
                    "row)",
                    f"close the quote on line {start}, or double each quote inside the tweet ({d.quote}{d.quote})",
                )
    return None


def _numbers(scan: _Scan, header: bool) -> list[int]:
    """The columns whose every row holds a number (ids, numeric labels)."""
    rows = scan.records[1 if header else 0 :]
    return [j for j in range(len(rows[0]) if rows else 0) if _all_match([r[j] for r in rows], _A_NUMBER)]


def _keeps_numbers(scan: _Scan, numbers: list[int], header: bool) -> bool:
    """Whether another reading still has a number in every row of those columns."""
    rows = scan.records[1 if header else 0 :]
    return all(j < len(r) for r in rows for j in numbers) and all(
        _all_match([r[j] for r in rows], _A_NUMBER) for j in numbers
    )


_A_NUMBER = r"[ \t]*\d+[ \t]*"


def _all_match(values: Sequence[str], pattern: str) -> bool:
    """Whether ``pattern`` matches each of ``values`` in full: one regex pass over them joined by line breaks
    (value by value where a value holds a line break itself)."""
    joined = "\n".join(values)
    if joined.count("\n") != len(values) - 1:
        full = re.compile(pattern)
        return all(full.fullmatch(v) for v in values)
    return re.fullmatch(f"(?:{pattern})(?:\n(?:{pattern}))*", joined) is not None if values else True


def _two_readings(scan: _Scan, text: str, d: _Dialect, header: bool) -> _Trouble | None:
    """A backslash before a quote that reads as an escape or as text, both readings settled: which one the file
    means cannot be told, so the user says (``escape`` given, even '', skips this). An RFC 4180 writer puts a
    backslash before a quote only as ``\\""`` (the quote doubled) or at the end of a quoted field (``\\"`` and
    the field's end), and the escape reading of those rarely settles."""
    if not d.quote or "\\" + d.quote not in text:
        return None
    runs = re.finditer(r"\\+" + re.escape(d.quote), text)  # an odd run of \ before a quote that is not doubled
    if not any(len(m.group()) % 2 == 0 and text[m.end() : m.end() + 1] != d.quote for m in runs):
        return None
    other = _settled(text, _Dialect(d.sep, d.quote, "\\"), header)
    if other is None or other.records == scan.records or not _keeps_numbers(other, _numbers(scan, header), header):
        return None  # the escape reading is no reading, or breaks a column of numbers (ids) that this one has
    pairs = enumerate(zip(scan.records, other.records))
    i = min(next((i for i, (a, b) in pairs if a != b), len(other.records)), len(scan.records) - 1)
    return _Trouble(
        f"line {scan.starts[i]} has a backslash before a quote (\\{d.quote}), which reads two ways: as an escape "
        "(the backslash goes) or as text (it stays)",
        "[[escape]] '' if its backslashes are text",
        ["[[escape]] '\\' if the file escapes quotes with a backslash"],
    )


def _settled(text: str, d: _Dialect, header: bool) -> _Scan | None:
    """The scan of ``text`` read with ``d`` when every row boundary is settled, else None."""
    lines = _Lines(text)
    try:
        scan = _scan(text, d, lines)
    except _Trouble:
        return None
    return None if _row_trouble(scan, d, header, lines) else scan


def _refusal(trouble: _Trouble, text: str, d: _Dialect, header: bool, source: str) -> InputFileError:
    """The error for a boundary in doubt. Flags come first, each offered only if the whole file, read with it,
    has no boundary in doubt: [[escape]] where quotes are backslash-escaped; [[quote]] '' where no field is
    wrapped in quotes (the file never quotes: its quotes are text); another [[sep]] that finds known columns."""
    fixes = list(trouble.fixes)
    if not fixes and not d.escape and "\\" in text and _settled(text, _Dialect(d.sep, d.quote, "\\"), header):
        fixes.append("[[escape]] '\\' (the file escapes quotes with a backslash)")
    if not fixes and d.quote != "'" and "'" in text and _settled(text, _Dialect(d.sep, "'", d.escape), header):
        fixes.append('[[quote]] "\'" (the file quotes fields with single quotes)')
    if not fixes and d.quote and d.quote in text:
        scan = _settled(text, _Dialect(d.sep, "", d.escape), header)
        q = d.quote
        if scan and not any(len(f) > 1 and f[0] == q and f[-1] == q for r in scan.records for f in r):
            fixes.append("[[quote]] '' (the file does not quote fields: its quotes are text)")
    for sep in _SEPARATORS:
        if sep != d.sep and sep in text and (scan := _settled(text, _Dialect(sep, d.quote, d.escape), header)):
            if _sep_fits(scan, header):
                fixes.append(f"[[sep]] {'tab' if sep == chr(9) else shlex.quote(sep)}")
    fixes.append(trouble.by_hand)
    if not any(_norm(c) in KNOWN_COLUMNS for c in _first_line(text, d)):
        fixes.append("if the file is plain tweets, one a line, [[fmt]] txt")
    return InputFileError(f"{source} {trouble.what}; fix: " + "; or ".join(fixes))


def _sep_fits(scan: _Scan, header: bool) -> bool:
    """Another separator is worth suggesting when it makes columns, and known ones where there is a header."""
    return scan.widths[0] > 1 and (not header or any(_norm(c) in KNOWN_COLUMNS for c in scan.first))


def _first_line(text: str, d: _Dialect) -> list[str]:
    line = next((s for s in _NEWLINE.split(text[:65536]) if s.strip()), "")
    return line.split(d.sep)


def _sniff_sep(text: str, header: bool, quote: str = '"') -> str | None:
    """The separator among , tab ; | that splits the first records into equally many fields.

    None means one column. Quoted fields are skipped, so separators and newlines inside
    quotes do not count. With a header, the separator must occur in the header row (a
    record with more fields is then an error naming it, not a reason to guess again).
    """
    sample = text[:65536]
    counts: list[dict[str, int]] = [{}]
    content = [False]
    # Odd parts of a split on '"' lie inside quotes; an escaped quote ("") toggles twice.
    for k, part in enumerate(sample.split(quote) if quote else [sample]):
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


def _read_csv(
    text: str, source: str, sep: str | None, header: bool, guessed: bool, quote: str = '"', escape: str | None = None
) -> _Frame:
    detail = []
    if excel := re.match(r"sep=([^\r\n])(?=\r\n|\r|\n)", text):  # Excel's "sep=;" first line names the separator
        text, sep = text[excel.end() :], sep or excel.group(1)  # its line end stays: an empty line 1
    if sep is None:
        sep = _sniff_sep(text, header, quote)
    if sep is None:
        # One column: split on a character the text lacks, so commas inside tweets stay text.
        sep = next((c for c in ("\x1f", "\x1e", "\x1d", "\x1c", "\ufdd0", "\ufdd1") if c not in text), "\x1f")
        detail.append("one column")
    else:
        detail.append(f"{_SEP_NAMES.get(sep, repr(sep))}-separated")
    if not header:
        detail.append("no header")
    if not quote:
        detail.append("quotes as text")
    if escape:
        detail.append(f"escape {escape!r}")
    d = _Dialect(sep, quote, escape or "")
    # The csv module of Python < 3.11 stops at NUL; a stand-in character keeps it, then goes back.
    nul = next((c for c in ("\ufdd2", "\ufdd3", "\ufdd4") if c not in text), None) if "\x00" in text else None
    body = text.replace("\x00", nul) if nul else text
    pandas = len(text) > STDLIB_CSV_MAX_CHARS and sep.isascii() and not _LONE_CR.search(text)
    lines = _Lines(body)
    try:
        scan = _scan(body, d, lines)
        trouble = _row_trouble(scan, d, header, lines)
    except _Trouble as exc:
        trouble = exc
    if trouble is None and escape is None:
        trouble = _two_readings(scan, body, d, header)
    if trouble is not None:
        raise _refusal(trouble, body, d, header, source)
    notes = []
    if scan.blank:
        shown = ", ".join(map(str, scan.blank[:5])) + (f" ({len(scan.blank)} in all)" if len(scan.blank) > 5 else "")
        notes.append(
            f"rows: blank line{'s' * (len(scan.blank) > 1)} {shown} skipped (if one is a line break inside a "
            "tweet, put that tweet in quotes)"
        )
    parsed = _csv_pandas(text, sep, source, guessed, quote, escape or "") if pandas else None
    stand_ins = False
    if parsed is None or parsed[1] != len(scan.records):  # two readers that disagree: the stdlib's is the rule
        parsed, stand_ins = _cells_of(scan), nul is not None
    del scan  # pandas' frame holds the cells of a large file
    first, rows, column = parsed
    restore = (lambda v: v.replace(nul, "\x00")) if nul and stand_ins else (lambda v: v)
    skip = 1 if header else 0
    raw = [restore(c) for c in first]
    columns = _unique_names(raw) if header else [str(i + 1) for i in range(len(first))]  # --text-col 3: the third

    position = {c: i for i, c in enumerate(columns)}

    def cells(name: str, role: str) -> np.ndarray:
        values = column(position[name])[skip:]
        return np.array([restore(v) for v in values], dtype=object) if stand_ins else values

    return _Frame(columns, cells, np.arange(1, rows - skip + 1), "row", "csv", detail, guessed, first=raw, notes=notes)


# A parsed CSV: the first record, the number of records, and column i (first record included) as an
# object array of str. Every record has the first one's width (_row_trouble refuses others).
_Cells = tuple[list[str], int, Callable[[int], np.ndarray]]


def _cells_of(scan: _Scan) -> _Cells:
    records = scan.records
    return records[0], len(records), lambda i: np.fromiter(map(itemgetter(i), records), object, len(records))


def _csv_stdlib(text: str, sep: str, quote: str = '"', escape: str = "") -> _Cells | None:
    """``text`` read by the standard library's CSV reader, or None where a row boundary is in doubt (read_table
    refuses those) or where pandas' C parser might read it otherwise: a NUL, a lone carriage return (pandas may
    drop the empty field after one), a non-ASCII separator (pandas refuses it), no record.

    Why two parsers: importing pandas takes about 0.35 s, most of a warm re-ingest of a small file, and
    this reader is about twice as slow per row, so files over STDLIB_CSV_MAX_CHARS go to pandas."""
    if not sep.isascii() or "\x00" in text or _LONE_CR.search(text):
        return None
    d, lines = _Dialect(sep, quote, escape), _Lines(text)
    try:
        scan = _scan(text, d, lines)
    except _Trouble:
        return None
    if not scan.records or _row_trouble(scan, d, False, lines) is not None:
        return None
    return _cells_of(scan)


def _csv_pandas(text: str, sep: str, source: str, guessed: bool, quote: str = '"', escape: str = "") -> _Cells:
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
            quotechar=quote or '"',
            quoting=csv.QUOTE_MINIMAL if quote else csv.QUOTE_NONE,
            escapechar=escape or None,
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


# ---------------------------------------------------------------- columns


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


def _candidates(columns: Sequence[str], defaults: Collection[str], taken: Collection[str | None]) -> list[str]:
    return [c for c in columns if _norm(c) in defaults and c not in taken]


def pick_column(
    columns: list[str],
    wanted: str | None,
    defaults: Sequence[str],
    taken: Collection[str | None],
    what: str,
    flag: str,
    source: str,
) -> str | None:
    """The column for one role: the name given (exact, else the one case-insensitive match), else the one
    column with a default name. Never a guess: two columns that fit are an error naming both."""
    if wanted == "":
        return None
    if wanted is not None:
        if wanted in columns:
            return wanted
        alike = [c for c in columns if _norm(c) == _norm(wanted)]
        if len(alike) == 1:
            return alike[0]
        if alike:
            raise InputFileError(
                f"{source} has {len(alike)} columns named like {wanted!r}: {_show(alike)}; fix: {flag} with the "
                "exact name of one of them"
            )
        raise InputFileError(
            f"{source} has no {what} column {wanted!r}; columns found: {_show(columns)}; fix: {flag} NAME"
        )
    found = _candidates(columns, defaults, taken)
    if len(found) > 1:
        raise InputFileError(
            f"{source} has {len(found)} columns that could hold the {what}: {_show(found)}; featurestore does not "
            f"guess which; fix: {flag} NAME, one of them"
        )
    return found[0] if found else None


def _pick(
    frame: _Frame, wanted: str | None, defaults: Sequence[str], taken: set[str | None], role: str, source: str
) -> str | None:
    """pick_column, where two candidate keys of JSON records that never meet on one record are named as such:
    the records spell one role two ways, and the fix is in the file, not a flag."""
    if wanted is None and frame.kind in _JSON_KINDS and len(found := _candidates(frame.columns, defaults, taken)) > 1:
        present = [~_is_missing(frame.cells(c, role)) for c in found]
        if not (np.sum(present, axis=0) > 1).any():
            where = [f"{c!r} ({frame.unit} {frame.numbers[int(np.argmax(p))]})" for c, p in zip(found, present)]
            raise InputFileError(
                f"{source}: {frame.unit}s spell the {role} key differently: {' and '.join(where)}; featurestore does "
                f"not guess that they mean the same; fix: use one key for the {role} on every {frame.unit}"
            )
    return pick_column(frame.columns, wanted, defaults, taken, role, f"[[{role}_col]]", source)


_JSON_KINDS = ("jsonl", "json array", "json")


def _is_missing(values: np.ndarray) -> np.ndarray:
    return np.fromiter((v is MISSING for v in values), dtype=bool, count=len(values))


def _rule_column(frame: _Frame, role: str, keys: list[str]) -> tuple[str, str]:
    """A column read by the Twitter API rule: each record's first key in ``keys`` that holds a value.
    Returns its name (``"full_text > text"``) and the rule in words."""
    name = " > ".join(keys)
    if len(keys) == 1:
        return keys[0], f"{keys[0]} (Twitter API objects)"
    parts = [frame.cells(k, role) for k in keys]
    values = np.empty(len(frame.numbers), dtype=object)
    values[:] = [MISSING] * len(values)
    for part in reversed(parts):  # the best key written last
        has = np.fromiter((v is not None and v is not MISSING and v != "" for v in part), dtype=bool, count=len(part))
        values[has] = part[has]
        blank = ~has & _is_missing(values) & ~_is_missing(part)
        values[blank] = part[blank]  # null or "" where no key holds more
    base = frame.cells
    frame.cells = lambda c, r: values.copy() if c == name else base(c, r)
    frame.columns = [*frame.columns, name]
    what = "text" if role == "text" else "id"
    return name, f"each tweet's {what} from its " + ", else its ".join(keys) + " (Twitter API objects)"


def _duplicate_header(frame: _Frame, header: bool, col: str | None, role: str, source: str) -> None:
    """A CSV header naming two columns alike: which one is meant cannot be told from the name."""
    if not header or frame.kind != "csv" or frame.first is None or col not in frame.columns[: len(frame.first)]:
        return  # no CSV header, or a column a rule made
    raw = frame.first[frame.columns.index(col)]
    same = [i + 1 for i, c in enumerate(frame.first) if c == raw]
    if len(same) > 1 and col == raw:
        raise InputFileError(
            f"{source} has {len(same)} columns headed {raw!r} (columns {', '.join(map(str, same))}); fix: rename "
            f"them in the header, or pass [[{role}_col]] {shlex.quote(raw + '.1')} for the second"
        )


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
    """No column to read the text from. For a CSV, the fix is worked out from the cells: plain tweets whose
    separators made columns get --format txt (a column of them would keep only a piece of each tweet), one
    column that alone reads as text gets its name or number."""
    cols = frame.columns
    looked = f"has no text column (looked for {', '.join(TEXT_COLUMNS)}); columns found: {_show(cols)}"
    if frame.kind != "csv":
        return InputFileError(f"{source} {looked}; fix: [[text_col]] NAME")
    no_header = not header or _looks_like_data(frame.first or cols)
    texts, spaced = _text_columns(frame, header and no_header)
    what = f"{source} {looked}" if header else f"{source} has {len(cols)} columns and no header"
    plain = "if the file is plain tweets, one a line, pass [[fmt]] txt"
    number = "[[header]] [[text_col]] N" if header else "[[text_col]] N"
    if spaced or (no_header and len(texts) > 1):
        fix = f"{plain} (the separators inside the tweets made columns); if it has columns, " + (
            f"{number} (N, from 1, the column that holds the text)" if no_header else "[[text_col]] NAME"
        )
    elif not no_header:
        fix = f"[[text_col]] {shlex.quote(cols[texts[0]])}" if len(texts) == 1 else "[[text_col]] NAME"
        if path == "-" or frame.guessed:
            fix += f"; {plain}"
    elif len(texts) == 1:
        fix = (
            ("the first row looks like data, not a header: pass " if header else "")
            + number.replace(" N", f" {texts[0] + 1}")
            + " (columns are numbered from 1; add [[id_col]] N and [[label_col]] N for the ids and labels)"
        )
    else:
        fix = (
            ("the first row looks like data, not a header: " if header else "")
            + f"pass {number} (N, from 1, the column that holds the text; likewise [[id_col]] N and [[label_col]] N)"
            + f"; or, {plain}"
        )
    return InputFileError(f"{what}; fix: {fix}")


def _text_columns(frame: _Frame, first: bool) -> tuple[list[int], bool]:
    """The positions of the columns that read as text (not ids: numbers; not labels: a few short words), the
    ``first`` row (a header that is data) included; and whether the fields after the first begin with a space,
    as prose after a comma does."""
    columns = []
    for i, c in enumerate(frame.columns):
        values = [str(v) for v in frame.cells(c, "text").tolist()]
        columns.append(([frame.first[i]] if first and frame.first else []) + values)
    texts = [k for k, v in enumerate(columns) if not _id_like(v) and not _label_like(v)]
    spaced = any(2 * sum(s[:1] == " " for s in v) >= len(v) for v in columns[1:])
    return texts, spaced


def _id_like(values: list[str]) -> bool:
    return all(_DIGITS.fullmatch(v.strip()) for v in values) and len(set(values)) == len(values)


def _label_like(values: list[str]) -> bool:
    few = len(set(values)) < len(values) or len(values) <= 2
    return few and all(len(v.strip()) <= 20 and not any(ch.isspace() for ch in v.strip()) for v in values)


# ---------------------------------------------------------------- values and their spellings
#
# The rules are per value, so that every file and every engine spells a value alike (a later file, or a
# re-ingest, compares like with like). Ids: surrounding whitespace is removed, a missing-value spelling
# (MISSING_VALUES) is an empty id (refused), a whole number written as a float (123.0) loses its ".0".
# Labels: surrounding whitespace is removed, a missing-value spelling is no label, true/false in any case
# is "true"/"false", a whole number written as a float (1.0) loses its ".0". Every change is counted in
# Table.notes. Two spellings left that still name one class in a file (1 and true, pos and Pos, 01 and 1)
# are an error naming both.


def spell_label(value: str | None) -> str:
    """A label as stored: the per-value spelling rules above (NO_LABEL for a missing value)."""
    if value is None:
        return NO_LABEL
    label = value.strip()
    if label in MISSING_VALUES:
        return NO_LABEL
    if label.lower() in ("true", "false"):
        return label.lower()
    return _whole_number(label)


def spell_id(value: str) -> str:
    """An id as stored (a missing-value spelling is for the caller to refuse): stripped, 123.0 -> 123."""
    return _whole_number(value.strip())


def _whole_number(value: str) -> str:
    return value.split(".")[0] if "." in value and _WHOLE.fullmatch(value) else value


def _check_cells(values: np.ndarray, frame: _Frame, col: str, role: str, source: str, others: Sequence[str]) -> None:
    """A JSON value that is a list or object, or a record without the chosen key: the row and the fix."""
    if frame.kind not in _JSON_KINDS:
        return
    if nested := [i for i, v in enumerate(values) if isinstance(v, Nested)]:
        i = nested[0]
        raise InputFileError(
            f"{source} {frame.unit} {frame.numbers[i]}: the {role} is {values[i].what}, not a value (key {col!r}); "
            f"fix: write it as a string on that {frame.unit}, or name another key with [[{role}_col]] NAME"
        )
    if (lacking := np.flatnonzero(_is_missing(values))).size:
        # A record that spells the role with another key is named first: the records disagree on the key.
        spelled = []
        for c in others:
            if c != col and (hit := lacking[~_is_missing(frame.cells(c, role)[lacking])]).size:
                spelled.append((int(hit[0]), c))
        i, other = min(spelled) if spelled else (int(lacking[0]), None)
        has = [other] if other else []
        more = f" (and {lacking.size - 1} more {frame.unit}s)" if lacking.size > 1 else ""
        where = f"{source} {frame.unit} {frame.numbers[i]}{more} has no {col!r} key"
        if role == "text":
            fix = f'give every {frame.unit} a {col!r} key ("{col}": "" for an empty tweet)'
            if has:
                fix = f"use one key for the text on every {frame.unit} (that {frame.unit} has {has[0]!r} instead)"
        elif role == "id":
            fix = f"give every {frame.unit} an {col!r} key, or pass [[id_col]] '' to number rows instead"
        elif has:
            fix = f"use one key for the label on every {frame.unit} (that {frame.unit} has {has[0]!r} instead)"
        else:
            return  # a label key left out is a null label, as many JSON writers leave nulls out (noted by _labels)
        raise InputFileError(f"{where}; fix: {fix}")


def _stripped(values: np.ndarray) -> tuple[np.ndarray, int, int | None]:
    """Values without surrounding whitespace (None stays None), how many changed, and the first that did."""
    out = np.array([v if v is None else v.strip() for v in values], dtype=object)
    changed = np.flatnonzero(out != values)
    return out, changed.size, (int(changed[0]) if changed.size else None)


def _ids(frame: _Frame, col: str, source: str, notes: list[str], others: Sequence[str]) -> np.ndarray:
    raw = frame.cells(col, "id")
    _check_cells(raw, frame, col, "id", source, others)
    ids, spaced, first = _stripped(raw)
    missing = np.zeros(len(ids), dtype=bool)
    if None in (seen := set(ids.tolist())) or seen & MISSING_VALUES:
        missing = np.fromiter((v is None or v in MISSING_VALUES for v in ids), dtype=bool, count=len(ids))
        i = int(np.argmax(missing))
        value = "" if raw[i] is None else raw[i]
        said = "empty" if not value.strip() else f"{value!r}, a missing value"
        raise InputFileError(
            f"{source} {frame.unit} {frame.numbers[i]}: the id is {said}; fix: fill it in, "
            "or pass [[id_col]] '' to number rows instead"
        )
    if first is not None:
        notes.append(
            f"ids: surrounding spaces removed from {spaced} id{'s' * (spaced > 1)} "
            f"(e.g. {frame.unit} {frame.numbers[first]}: {raw[first]!r} -> {ids[first]!r}), so that the same id "
            "read from a cleaner file is the same row"
        )
    if (rounded := _first_match(ids, _SCIENTIFIC)) is not None:
        i = rounded
        raise InputFileError(
            f"{source} {frame.unit} {frame.numbers[i]}: id {ids[i]!r} is in scientific notation, so a spreadsheet "
            "has rounded it and lost digits; fix: format the id column as Text in the spreadsheet before saving, "
            "or export the file from its source again"
        )
    if "." in "".join(ids.tolist()):
        whole = np.array([_whole_number(v) for v in ids], dtype=object)
        if dotted := int((whole != ids).sum()):
            notes.append(f"ids: {dotted} whole number{'s' * (dotted > 1)} written with '.0' read without it")
        ids = whole
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


def _labels(frame: _Frame, col: str, source: str, notes: list[str], others: Sequence[str]) -> np.ndarray:
    raw = frame.cells(col, "label")
    _check_cells(raw, frame, col, "label", source, others)
    if (lacking := _is_missing(raw)).any():
        notes.append(f"labels: {int(lacking.sum())} {frame.unit}s without a {col!r} key read as no label")
        raw[lacking] = None
    counts = Counter(raw.tolist())  # the rules run once per distinct spelling
    spelled = {v: spell_label(v) for v in counts}
    changed: dict[str, list[str]] = {"spaces": [], "missing": [], "boolean": [], "whole": []}
    for v, label in spelled.items():
        if v is None or v == label:
            continue
        kept = v.strip()
        if kept != v:
            changed["spaces"].append(v)
        if kept in MISSING_VALUES and kept:
            changed["missing"].append(v)
        elif kept.lower() in ("true", "false") and kept != label:
            changed["boolean"].append(v)
        elif kept != label and label:
            changed["whole"].append(v)

    def rows(values: list[str]) -> int:
        return sum(counts[v] for v in values)

    if spaced := changed["spaces"]:
        i = raw.tolist().index(spaced[0])
        notes.append(
            f"labels: surrounding spaces removed from {rows(spaced)} (e.g. {frame.unit} {frame.numbers[i]}: "
            f"{raw[i]!r} -> {spelled[raw[i]]!r})"
        )
    if gone := changed["missing"]:
        said = ", ".join(map(repr, sorted({v.strip() for v in gone})))
        notes.append(f"labels: {rows(gone)} written {said} read as no label")
    if booleans := changed["boolean"]:
        said = ", ".join(map(repr, sorted({v.strip() for v in booleans})))
        notes.append(f"labels: {said} read as true/false ({rows(booleans)} rows)")
    if whole := changed["whole"]:
        n = rows(whole)
        notes.append(f"labels: {n} whole number{'s' * (n > 1)} written with '.0' read without it (1.0 -> 1)")
    labels = np.array([spelled[v] for v in raw.tolist()], dtype=object)
    _one_spelling(labels, frame, source)
    return labels


def _one_spelling(labels: np.ndarray, frame: _Frame, source: str) -> None:
    """Refuse two spellings left that still name one class: they differ only in case, or are equal numbers,
    or a boolean and its number (true and 1)."""
    seen: dict[Any, str] = {}
    for v in dict.fromkeys(labels.tolist()):  # distinct labels, in file order
        if v == NO_LABEL:
            continue
        a = seen.setdefault(_class_key(v), v)
        if a != v:
            rows = labels.tolist()
            j, i = rows.index(a), rows.index(v)
            how = "case" if a.casefold() == v.casefold() else "how the number is written"
            if {a.lower(), v.lower()} & {"true", "false"}:
                how = "type (a boolean and a number)"
            raise InputFileError(
                f"{source} labels {a!r} ({frame.unit} {frame.numbers[j]}) and {v!r} ({frame.unit} "
                f"{frame.numbers[i]}) look like one class spelled two ways (they differ only in {how}), which would "
                "make two classes of it; fix: write that class one way in the file"
            )


_LABEL_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


def _class_key(label: str) -> Any:
    low = label.casefold()
    if low in ("true", "false"):
        return ("number", 1.0 if low == "true" else 0.0)
    if _LABEL_NUMBER.fullmatch(label):
        return ("number", float(label))
    return ("text", low)


def _texts(frame: _Frame, col: str, source: str, others: Sequence[str]) -> np.ndarray:
    texts = frame.cells(col, "text")
    _check_cells(texts, frame, col, "text", source, others)
    texts[_is_none(texts)] = ""  # an empty cell (JSON null) is an empty tweet
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


def _check_char(value: str | None, param: str) -> str | None:
    """A quote or escape character: one character, '' for none, or None for not said."""
    if value is None or value == "":
        return value
    if value.lower() == "none":
        return ""
    if len(value) > 1 or value in "\r\n\x00":
        raise InputFileError(
            f"[[{param}]] must be one character, or '' for none (e.g. [[{param}]] '\\'), not {value!r}"
        )
    return value


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
    quote: str | None = None,
    escape: str | None = None,
) -> Table:
    """Read and validate an input file; ``"-"`` reads standard input.

    Columns are matched case-insensitively (``-`` and spaces count as ``_``): text from the one
    column named like TEXT_COLUMNS (or the only column), id from ID_COLUMNS (else row numbers),
    label from LABEL_COLUMNS (else none); two columns that fit one role are an error, except
    where a known format has a rule (Twitter API objects: ``Table.column_rules``). Each ``*_col``
    overrides its own role only; ``""`` ignores that column. ``header=False`` names CSV columns
    "1", "2", ... ``quote`` is the CSV quote character (default ``"``; ``""``: quotes are text),
    ``escape`` the character that escapes a quote inside a field (e.g. ``"\\\\"``; ``""``: none; left
    out, a backslash before a quote that reads both ways is refused). A row boundary in doubt is
    refused, never guessed. Ids and labels follow the spelling rules (``spell_id``, ``spell_label``);
    what they changed is in ``Table.notes``. ``duplicates`` says what to do with rows that share an
    id but differ: "error", or keep the "first" or the "last" (at its own position; rows keep their
    file order). Raises InputFileError, and nothing else, for any bad input.
    """
    source = "standard input" if path == "-" else str(path)
    source = source if source.isprintable() else repr(source)  # messages stay one line
    if duplicates not in DUPLICATES:
        raise InputFileError(f"unknown [[duplicates]] {duplicates!r}; use one of: {', '.join(DUPLICATES)}")
    if fmt is not None and fmt not in FORMATS:
        raise InputFileError(f"unknown input format {fmt!r}; use one of: {', '.join(FORMATS)}")
    sep = _check_sep(sep)
    quote = _check_char(quote, "quote")
    quote = '"' if quote is None else quote
    escape = _check_char(escape, "escape")
    if sep is not None and sep in (quote, escape):
        raise InputFileError(f"[[sep]] {sep!r} is also the quote or escape character; fix: give [[sep]] another one")
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
            frame = _read_csv(text, source, sep or ("\t" if fmt == "tsv" else None), header, guessed, quote, escape)
    n = len(frame.numbers)
    if n == 0:
        what = "a header but no rows" if frame.kind == "csv" else "no rows"
        raise InputFileError(f"{source} has {what}; add tweets or check the file")
    rules: dict[str, str] = {}
    notes: list[str] = []
    if frame.kind == "txt":
        if id_col or label_col or text_col:
            flag = "[[id_col]]" if id_col else "[[label_col]]" if label_col else "[[text_col]]"
            raise InputFileError(
                f"{source} is read as plain text (one tweet a line) and has no columns for {flag}; "
                "fix: drop the column options, or pass [[fmt]] csv (or jsonl) if the file has columns"
            )
        tcol, icol, lcol = "line", None, None
    else:
        tcol, icol, lcol = _columns(frame, text_col, id_col, label_col, header, path, source, rules, notes)

    named = frame.kind != "csv" or header
    texts, replaced = _scrub(_texts(frame, tcol, source, _candidates(frame.columns, TEXT_COLUMNS, ()) if named else ()))
    if icol is None:
        ids = frame.numbers.astype(str).astype(object)
    else:
        ids, k = _scrub(_ids(frame, icol, source, notes, _candidates(frame.columns, ID_COLUMNS, ()) if named else ()))
        replaced += k
    if lcol is None:
        labels = np.full(n, NO_LABEL, dtype=object)
    else:
        others = _candidates(frame.columns, LABEL_COLUMNS, ()) if named else ()
        labels, k = _scrub(_labels(frame, lcol, source, notes, others))
        replaced += k
    keep = _dedupe(ids, texts, labels, frame, duplicates, source) if icol is not None else np.arange(n)
    texts_kept = texts[keep].tolist()
    detail = frame.detail + [c for c in (compression,) if c] + [e for e in (used,) if e and e != "utf-8"]
    if rules:
        detail.append("Twitter API objects")
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
        column_rules=rules,
        notes=[f"{role}: {rule}" for role, rule in rules.items()] + frame.notes + notes,
    )


def _columns(
    frame: _Frame,
    text_col: str | None,
    id_col: str | None,
    label_col: str | None,
    header: bool,
    path: str,
    source: str,
    rules: dict[str, str],
    notes: list[str],
) -> tuple[str, str | None, str | None]:
    """The text, id and label columns of a frame with columns; fills ``rules`` with any known format's rule."""
    named = header or frame.kind != "csv"  # without a header, columns are only numbers
    twitter = layouts.twitter_sources(frame.columns) if named else {}
    covered: set[str | None] = set()
    picked = icol = None
    if text_col is None and "text" in twitter:
        picked, rules["text"] = _rule_column(frame, "text", twitter["text"])
        covered |= set(twitter["text"])
    if twitter and text_col is None:
        _truncated_note(frame, twitter.get("text", []), notes)
    if id_col is None and "id" in twitter:
        icol, rules["id"] = _rule_column(frame, "id", twitter["id"])
        covered |= set(twitter["id"])
    if picked is None:
        picked = _pick(frame, text_col, TEXT_COLUMNS if named else (), covered | {icol}, "text", source)
    if icol is None:
        icol = _pick(frame, id_col, ID_COLUMNS if named else (), covered | {picked}, "id", source)
    lcol = _pick(frame, label_col, LABEL_COLUMNS if named else (), covered | {picked, icol}, "label", source)
    if picked is not None:
        tcol = picked
    else:
        rest = [c for c in frame.columns if c not in {icol, lcol}]
        cols = frame.columns
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
    for col, role in ((tcol, "text"), (icol, "id"), (lcol, "label")):
        _duplicate_header(frame, header, col, role, source)
    if icol is None and id_col is None and frame.index is not None:
        raise InputFileError(
            f"{source} keeps a pandas index other than 0, 1, 2... (column {frame.index!r}), which may be the ids, and "
            f"has no id column; fix: [[id_col]] {shlex.quote(frame.index)} to use it as the ids, or [[id_col]] '' to "
            "number rows"
        )
    return tcol, icol, lcol


def _truncated_note(frame: _Frame, keys: list[str], notes: list[str]) -> None:
    """Tweets the Twitter API cut that carry no longer text: stored as the file has them, and said so."""
    if "retweeted_status" in frame.columns:
        retweets = np.fromiter((isinstance(v, Nested) for v in frame.cells("retweeted_status", "text")), bool)
        if count := int(retweets.sum()):
            notes.append(
                f"text: {count} retweet{'s' * (count > 1)} keep the API's 'RT @user: ...' text, which may be cut "
                "short; the whole original is in each one's retweeted_status"
            )
    if "truncated" not in frame.columns or not keys or keys[-1] != "text":
        return
    cut = frame.cells("truncated", "text") == "true"
    for k in keys[:-1]:
        cut &= np.fromiter((v is None or v is MISSING or v == "" for v in frame.cells(k, "text")), bool, len(cut))
    if count := int(cut.sum()):
        notes.append(
            f"text: {count} tweet{'s' * (count > 1)} marked truncated carry only the cut text (no full_text or "
            "extended_tweet); stored as given: fetch them again with tweet_mode=extended for the whole text"
        )
