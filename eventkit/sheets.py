"""Spreadsheet plumbing: reading uploaded CSV and XLSX tables, writing CSV for Excel.

The services take tables from villages and other departments (household imports,
ID lists for bulk comparison, the national system's extract, death records,
subsidy records) and hand tables back (results, reports, templates). They read
and write them the same way, with these helpers:

* :func:`detect_format`: ``"csv"`` or ``"xlsx"`` from the first bytes (a workbook
  is a ZIP; an old OLE2 ``.xls`` workbook is refused) and otherwise the file name
  or content type (:func:`hinted_format`). Browsers on Windows send
  ``application/vnd.ms-excel`` for ``.csv`` files, so that type means CSV.
* :func:`decode_text`: CSV text is UTF-16 with a BOM (Excel's "Unicode text"),
  UTF-8 with or without a BOM, or else GB 18030 (Excel's CSV on Chinese Windows).
* :func:`csv_rows` and :func:`xlsx_rows`: rows numbered as a spreadsheet shows
  them (1-based; a blank row keeps its number, a quoted multi-line CSV cell is one
  row). CSV is comma- or tab-separated; a workbook is read in read-only mode, its
  first sheet or the first one named in ``sheet_names`` (:func:`find_sheet`).
* :func:`cell_text`, :func:`plain_text`, :func:`blank`, :func:`blank_row`,
  :func:`cell_date`: cell values as text, or as a date.
* :func:`header_text`, :func:`header_key`, :class:`Column`, :func:`label_index`:
  a header cell names a column by its English key, its Chinese label (or an
  alias), or both as ``"key label"``; letter case, full-width characters, a
  trailing ``*`` (required) and notes in brackets (``金额（元）``) do not matter;
  :func:`header_index` reads a header row, :func:`records` the rows under it.
* :func:`csv_cell` and :func:`write_csv`: CSV for Excel (UTF-8 with a BOM, CRLF)
  in which no text can start a formula (``=``, ``+``, ``-``, ``@``, tab, CR get
  a leading apostrophe unless the text is a number).

A file that cannot be read at all is reported through ``error``, a factory
``(code, message) -> Exception`` (default :func:`file_error`, a 422
``DomainError``; :func:`file_field_error` gives 413/415 statuses and names the
field), so that each service keeps its own statuses and details. The codes are
``invalid_file`` and ``unsupported_format``.

Pure: no web framework, no database; openpyxl is imported only when a workbook is read.
"""

from __future__ import annotations

import csv
import io
import re
import unicodedata
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from .errors import DomainError

__all__ = [
    "CSV_CONTENT_TYPE",
    "FORMULA_PREFIXES",
    "XLSX_CONTENT_TYPE",
    "Column",
    "ErrorFactory",
    "blank",
    "blank_row",
    "cell_date",
    "cell_text",
    "csv_cell",
    "csv_rows",
    "decode_text",
    "detect_format",
    "file_error",
    "file_field_error",
    "find_sheet",
    "header_index",
    "header_key",
    "header_text",
    "hinted_format",
    "label_index",
    "plain_text",
    "records",
    "workbook",
    "write_csv",
    "xlsx_rows",
]

CSV_CONTENT_TYPE = "text/csv; charset=utf-8"
XLSX_CONTENT_TYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"

ErrorFactory = Callable[[str, str], Exception]
"""Makes the exception for a file that cannot be read: ``error(code, message)``."""


def file_error(code: str, message: str, status: int = 422, **details: Any) -> DomainError:
    """The default :data:`ErrorFactory`: a ``DomainError`` (422 unless told)."""
    return DomainError(code, message, status, **details)


_FIELD_STATUSES = {"unsupported_format": 415, "file_too_large": 413, "too_many_rows": 413}


def file_field_error(code: str, message: str, **details: Any) -> DomainError:
    """An :data:`ErrorFactory` for an upload in the field ``file``: a ``DomainError`` with
    ``field="file"`` and the HTTP status of the code (415 ``unsupported_format``, 413
    ``file_too_large`` and ``too_many_rows``, else 422)."""
    return DomainError(code, message, _FIELD_STATUSES.get(code, 422), field="file", **details)


# -- the format ----------------------------------------------------------------------------

_ZIP = b"PK\x03\x04"
_OLE2 = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_XLSX_TYPES = frozenset({XLSX_CONTENT_TYPE, "application/vnd.ms-excel.sheet.macroenabled.12"})
_CSV_TYPES = frozenset({"text/csv", "text/plain", "application/csv", "text/comma-separated-values",
                        "text/x-csv", "application/x-csv", "text/tab-separated-values",
                        "application/vnd.ms-excel"})
_NEUTRAL_TYPES = frozenset({"application/octet-stream", "binary/octet-stream", "application/zip",
                            "application/x-zip-compressed"})
_EXTENSIONS = {"xlsx": "xlsx", "xlsm": "xlsx", "csv": "csv", "txt": "csv", "tsv": "csv", "xls": "xls"}
_CONTENT_TYPE = re.compile(r"[a-z0-9.+-]+/[a-z0-9.+-]+(?:\s*;.*)?")
_NOT_TABLES = ("image/", "audio/", "video/", "application/pdf", "application/json")


def hinted_format(hint: str | None) -> str | None:
    """What a file name or content type says: ``"xlsx"``, ``"csv"``, ``"xls"`` (an old
    workbook's name), ``"other"`` (another format) or None (nothing usable)."""
    h = (hint or "").strip().lower()
    if not h:
        return None
    name = h.split(";")[0].strip().replace("\\", "/").rsplit("/", 1)[-1]
    extension = name.rsplit(".", 1)[-1] if "." in name else ""
    if extension in _EXTENSIONS:  # a file name (checked first: "exports/ids.csv" has a slash too)
        return _EXTENSIONS[extension]
    if _CONTENT_TYPE.fullmatch(h):
        ctype = h.split(";")[0].strip()
        if ctype in _XLSX_TYPES:
            return "xlsx"
        if ctype in _CSV_TYPES:
            return "csv"
        return None if ctype in _NEUTRAL_TYPES else "other"
    return "other" if extension else None


def detect_format(data: bytes, hint: str | None, *, error: ErrorFactory = file_error, strict: bool = True,
                  xls_is_csv: bool = False) -> str:
    """``"xlsx"`` or ``"csv"``: the content decides when it can (a ZIP is a workbook, an OLE2
    file an old ``.xls`` workbook: ``unsupported_format``), then ``hint`` (a file name or a
    content type): one naming XLSX for content that is not a ZIP is ``invalid_file``.

    ``strict``: a hint naming another format (``ids.pdf``, ``application/json``) is
    ``unsupported_format``; otherwise only content types that are plainly no table (images,
    audio, video, PDF, JSON) are, and anything else is read as CSV. ``xls_is_csv``: a file
    named ``.xls`` that is not an old workbook is read as CSV (some systems export CSV under
    that name) instead of being refused."""
    hinted = hinted_format(hint)
    if data[:4] == _ZIP:
        return "xlsx"
    if data[:8] == _OLE2 or (hinted == "xls" and not xls_is_csv):
        raise error("unsupported_format", "old .xls workbooks are not supported: save as .xlsx or CSV")
    if hinted == "xlsx":
        raise error("invalid_file", "the file is not a readable XLSX workbook")
    if hinted == "other" and (strict or (hint or "").strip().lower().startswith(_NOT_TABLES)):
        shown = (hint or "").strip()
        raise error("unsupported_format", f"{shown[:100]!r} is not a CSV or XLSX file; send a CSV or XLSX file")
    return "csv"


# -- reading -------------------------------------------------------------------------------

def decode_text(data: bytes, *, error: ErrorFactory = file_error) -> str:
    """CSV bytes as text: UTF-16 with a BOM, UTF-8 (a BOM is dropped), or else GB 18030."""
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):  # Excel's "Unicode text"
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError:
            raise error("invalid_file", "the file is not valid UTF-16 text") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    try:
        return data.decode("gb18030")
    except UnicodeDecodeError:
        raise error("invalid_file", "the CSV file is neither UTF-8 nor GB 18030 text") from None


def csv_rows(data: bytes, *, error: ErrorFactory = file_error) -> Iterator[tuple[int, list[str]]]:
    """(row number, cells) of a CSV file, from row 1 (blank rows included, as ``[]``).

    Tab-separated when the first non-blank line has a tab and no comma, else comma-separated.
    ``invalid_file`` for text that cannot be decoded, holds NUL characters (a binary file) or
    is not CSV."""
    text = decode_text(data, error=error)
    if "\x00" in text:
        raise error("invalid_file", "the file is not a text (CSV) file")
    first = next((line for line in text.splitlines() if line.strip()), "")
    delimiter = "\t" if "\t" in first and "," not in first else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        yield from enumerate(reader, 1)
    except csv.Error as exc:
        raise error("invalid_file", f"the CSV file cannot be read: {exc}") from None


@contextmanager
def workbook(data: bytes, *, error: ErrorFactory = file_error) -> Iterator[Any]:
    """An XLSX workbook opened read-only (values, not formulas), closed afterwards.

    ``invalid_file`` when it cannot be opened, and for any failure while it is read inside
    the block (openpyxl raises many kinds for corrupt files), except a ``DomainError`` or an
    exception of the class ``error`` itself, which pass unchanged."""
    from openpyxl import load_workbook

    try:
        wb = load_workbook(io.BytesIO(data), read_only=True, data_only=True)
    except Exception as exc:  # noqa: BLE001 - openpyxl raises many kinds for corrupt files
        raise error("invalid_file", f"not a readable XLSX workbook ({type(exc).__name__})") from None
    try:
        yield wb
    except DomainError:
        raise
    except Exception as exc:  # noqa: BLE001
        if isinstance(error, type) and isinstance(exc, error):
            raise
        raise error("invalid_file", f"the workbook cannot be read ({type(exc).__name__})") from None
    finally:
        wb.close()


def _sheet_name_keys(name: str) -> tuple[str, str]:
    text = unicodedata.normalize("NFKC", name).lower()
    return "".join(text.split()), (text.split() or [""])[0]


def find_sheet(wb: Any, names: Iterable[str]) -> Any | None:
    """The first sheet (in the order of ``names``) whose name is one of ``names``, ignoring
    letter case, spaces and full-width forms, or whose first word is (``"households 户"``);
    None when there is none."""
    keys = [(ws, _sheet_name_keys(ws.title)) for ws in wb.worksheets]
    for wanted in names:
        target = _sheet_name_keys(wanted)[0]
        for ws, (whole, first) in keys:
            if target in (whole, first):
                return ws
    return None


def xlsx_rows(data: bytes, *, sheet_names: Iterable[str] = (), error: ErrorFactory = file_error
              ) -> Iterator[tuple[int, tuple[Any, ...]]]:
    """(row number, cell values) of a workbook's sheet, from row 1: the first sheet named in
    ``sheet_names`` (:func:`find_sheet`), else the first sheet. Read-only sheets yield every
    row from row 1 (blank ones as empty or all-None tuples), so the position is the row
    number the user sees. A workbook without sheets has no rows."""
    with workbook(data, error=error) as wb:
        if not wb.worksheets:
            return
        ws = find_sheet(wb, sheet_names) or wb.worksheets[0]
        yield from enumerate(ws.iter_rows(values_only=True), 1)


# -- cells ---------------------------------------------------------------------------------

def blank(value: Any) -> bool:
    """An empty cell: None or only whitespace."""
    return value is None or (isinstance(value, str) and not value.strip())


def blank_row(cells: Sequence[Any] | None) -> bool:
    """A row of empty cells (or no cells at all)."""
    return cells is None or all(blank(c) for c in cells)


def cell_text(value: Any) -> str:
    """A cell as text: ``""`` for an empty cell, booleans as ``true``/``false``, whole numbers
    without a spurious ``.0``, date cells as ``YYYY-MM-DD``, ideographic spaces as spaces,
    surrounding whitespace stripped."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, datetime):
        return value.date().isoformat()
    if isinstance(value, date):
        return value.isoformat()
    return str(value).replace("\u3000", " ").strip()


def plain_text(value: Any) -> str | None:
    """:func:`cell_text` in Unicode NFKC (full-width letters and digits become ASCII) with runs
    of whitespace as one space; None for an empty cell."""
    return " ".join(unicodedata.normalize("NFKC", cell_text(value)).split()) or None


_ISO_LIKE = re.compile(r"(\d{4})([-/.])(\d{1,2})\2(\d{1,2})")
_CHINESE_DATE = re.compile(r"(\d{4})年(\d{1,2})月(\d{1,2})[日号]?")
_COMPACT_DATE = re.compile(r"(\d{4})(\d{2})(\d{2})")
_TIME_OF_DAY = re.compile(r"(?:[ T]\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?)$")


def cell_date(value: Any) -> date:
    """A date from a cell: a date cell, ``YYYY-MM-DD``, ``YYYY/M/D``, ``YYYY.M.D``,
    ``YYYYMMDD`` (also typed as a number) or ``YYYY年M月D日``; a time of day after the
    date is ignored. Raises ValueError (also for a date that does not exist, 2024-02-30)."""
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    if isinstance(value, bool):
        raise ValueError("not a date")  # noqa: TRY004 - an unreadable cell, like any other
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # a date typed as a number: only YYYYMMDD is unambiguous
    s = unicodedata.normalize("NFKC", str(value)).strip()
    if "年" in s:
        s = "".join(s.split())
    s = _TIME_OF_DAY.sub("", s)
    m = _ISO_LIKE.fullmatch(s)
    groups = (m.group(1), m.group(3), m.group(4)) if m else None
    if groups is None:
        m = _CHINESE_DATE.fullmatch(s) or _COMPACT_DATE.fullmatch(s)
        groups = m.groups() if m else None
    if groups is None:
        raise ValueError("not a date")
    return date(int(groups[0]), int(groups[1]), int(groups[2]))


# -- headers -------------------------------------------------------------------------------

_NOTE = re.compile(r"\([^()]*\)")  # after NFKC, full-width brackets are ASCII ones


def header_text(value: Any) -> str:
    """A header cell as it is matched: :func:`cell_text` in NFKC, notes in brackets removed
    (``"身份证号（必填）"`` -> ``"身份证号"``, ``"金额(元)"`` -> ``"金额"``), a trailing ``*``
    (a required column) dropped, stripped."""
    text = _NOTE.sub("", unicodedata.normalize("NFKC", cell_text(value)))
    return text.strip().rstrip("*").strip()


@dataclass(frozen=True)
class Column:
    """A column of a file a service reads: its English key, Chinese label and other labels."""

    key: str
    label: str
    required: bool = False
    aliases: tuple[str, ...] = ()

    @property
    def header(self) -> str:
        """The column's header in templates: ``"key label"``."""
        return f"{self.key} {self.label}"


def label_index(columns: Iterable[Any]) -> dict[str, str]:
    """Label -> key for the labels and aliases of ``columns`` (objects with ``key``, ``label``
    and optionally ``aliases``), in the form :func:`header_key` compares."""
    out: dict[str, str] = {}
    for c in columns:
        for name in (c.label, *getattr(c, "aliases", ())):
            out[header_text(name)] = c.key
    return out


def header_key(header: Any, keys: Collection[str], labels: Mapping[str, str]) -> str | None:
    """The key of the column a header cell names, or None (a column the reader ignores).

    The cell (see :func:`header_text`) is a label of ``labels`` (from :func:`label_index`), or
    its first word is a key of ``keys`` in any letter case (``"id_number 身份证号"``,
    ``"ID_Number *"``), or one of its words is a label (``"姓名 name"``)."""
    text = header_text(header)
    if not text:
        return None
    if text in labels:
        return labels[text]
    words = text.split()
    first = words[0].rstrip("*").lower()
    if first in keys:
        return first
    for word in words:
        found = labels.get(header_text(word))
        if found is not None:
            return found
    return None


def header_index(cells: Sequence[Any], columns: Sequence[Any], *, keys: Collection[str] | None = None,
                 labels: Mapping[str, str] | None = None) -> tuple[dict[int, str], list[tuple[str, str, str]]]:
    """A header row read with :func:`header_key`: column position -> key, and the problems
    as ``(column key, code, message)``: ``duplicate_column`` for a column named again (the
    first one counts) and ``missing_column`` for each required column that is absent.
    ``columns`` have ``key``, ``label`` and ``required``; ``keys`` and ``labels`` default to
    theirs."""
    keys = {c.key for c in columns} if keys is None else keys
    labels = label_index(columns) if labels is None else labels
    index: dict[int, str] = {}
    problems: list[tuple[str, str, str]] = []
    for i, cell in enumerate(cells):
        key = header_key(cell, keys, labels)
        if key is None:
            continue
        if key in index.values():
            problems.append((key, "duplicate_column", f"column {key} appears twice"))
            continue
        index[i] = key
    for c in columns:
        if c.required and c.key not in index.values():
            problems.append((c.key, "missing_column", f"required column {c.key} ({c.label}) is missing"))
    return index, problems


def records(rows: Iterable[tuple[int, Sequence[Any]]], index: Mapping[int, str]
            ) -> Iterator[tuple[int, dict[str, Any]]]:
    """(row number, {key: cell}) of the rows that are not blank, by a :func:`header_index`
    (a short row has no value for its missing cells)."""
    for n, cells in rows:
        if not blank_row(cells):
            yield n, {key: cells[i] for i, key in index.items() if i < len(cells)}


# -- writing -------------------------------------------------------------------------------

FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
"""Leading characters that make a spreadsheet evaluate a cell (CSV injection)."""


def _number(text: str) -> bool:
    try:
        Decimal(text)
    except InvalidOperation:
        return False
    return True


def csv_cell(value: Any) -> Any:
    """A value as a CSV cell that a spreadsheet shows as it is: ``""`` for None, booleans as
    ``true``/``false``, text that would start a formula behind an apostrophe (never let a
    spreadsheet evaluate uploaded text); numbers, also as text (``-5.50``), stay as they are."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES) and not _number(value):
        return "'" + value
    return value


def write_csv(header: Sequence[Any], rows: Iterable[Sequence[Any]] = ()) -> bytes:
    """A CSV file for Excel: UTF-8 with a BOM (so that Chinese text shows), CRLF line ends,
    every cell through :func:`csv_cell`."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")
    w.writerow([csv_cell(v) for v in header])
    for row in rows:
        w.writerow([csv_cell(v) for v in row])
    return buf.getvalue().encode("utf-8-sig")
