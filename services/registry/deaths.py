"""Death records sent by the civil registration department (inbound data).

Pure functions, no I/O. The registry reads a file of deaths, keeps only keyed
hashes and masked forms of the people in it, and matches them (by ``id_hmac``)
against its active members; a reviewer then removes the members that died
(reason ``death``). Matching, review and removal are done elsewhere.

File format
-----------
CSV or XLSX, one row per death, a header in row 1. Columns (a header is the
English key, or the Chinese label, or both as ``key label`` like in
:func:`template_csv`; unknown columns are ignored):

* ``id_number`` 身份证号 (required): the 18-character resident ID number;
* ``name`` 姓名 (required): the person's name;
* ``date_of_death`` 死亡日期 (required): ``2024-03-05``, ``2024/3/5`` or
  ``2024年3月5日`` (also ``2024.3.5``, ``20240305`` or a date cell);
* ``certificate_ref`` 证明编号 (optional): the death certificate's number, up to
  64 characters;
* ``place`` 死亡地点 (optional): the place of death, up to 200 characters.

CSV is read as UTF-8 (with or without BOM), UTF-16 with a BOM, or else GB 18030;
comma- or tab-separated. In an XLSX workbook the sheet named ``deaths`` (or 死亡) is
read, else the first sheet. Blank rows are skipped. Rows are numbered as a
spreadsheet shows them: the header is row 1.

Every row is checked (ID shape and check character, birth date in the ID, date of
death present, real, not in the future and not before the birth date in the ID,
each ID number once in the file); problems are reported per row and column and
the row is left out. When an ID number appears more than once, the later rows are
errors, and the first row is kept only if all of them agree on the date of death
and the name.

The conventions (bilingual headers, encodings, row numbers) are those of every
file the services read: ``eventkit.sheets`` implements them.

Nothing in a :class:`DeathBatch` holds a plain ID number or name: records carry
``id_hmac`` (the keyed hash the registry's person index uses), ``name_hash`` and
masked forms, and error messages show masked ID numbers only.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import unicodedata
from dataclasses import asdict, dataclass, field
from datetime import date
from typing import Any, Callable

from contracts.masking import mask_id_number, mask_name
from eventkit import sheets

from . import identity

MAX_ROWS = 50_000
MAX_FILE_BYTES = 20 * 1024 * 1024
MAX_NAME_LENGTH = 50
MAX_CERTIFICATE_REF_LENGTH = 64
MAX_PLACE_LENGTH = 200
FORMATS = ("csv", "xlsx")
SHEET_NAMES = ("deaths", "death", "死亡", "死亡人员", "死亡名单")

Hasher = Callable[[str], str]


Column = sheets.Column

COLUMNS: tuple[Column, ...] = (
    Column("id_number", "身份证号", True, ("身份证号码", "公民身份号码", "身份证")),
    Column("name", "姓名", True),
    Column("date_of_death", "死亡日期", True, ("死亡时间",)),
    Column("certificate_ref", "证明编号", False, ("死亡证明编号", "死亡医学证明编号")),
    Column("place", "死亡地点", False, ("地点",)),
)
_KEYS = {c.key for c in COLUMNS}
_LABELS = sheets.label_index(COLUMNS)
_ORDER = {c.key: i for i, c in enumerate(COLUMNS)}


@dataclass(frozen=True)
class DeathRecord:
    """One valid death: no plain ID number or name, only hashes and masked forms."""

    row: int
    id_hmac: str
    id_masked: str
    name_masked: str
    name_hash: str
    date_of_death: date
    certificate_ref: str | None
    place: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "date_of_death": self.date_of_death.isoformat()}


@dataclass
class DeathBatch:
    """A parsed file: the valid records and the errors (``row``, ``column``, ``code``, ``message``)."""

    format: str
    sha256: str
    rows: int  # non-blank data rows read
    records: list[DeathRecord] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_json(self) -> dict[str, Any]:
        return {"format": self.format, "sha256": self.sha256, "rows": self.rows,
                "records": [r.to_json() for r in self.records], "errors": list(self.errors)}


# -- hashing and names ---------------------------------------------------------------

def keyed_hasher(key: bytes) -> Hasher:
    """A hasher for :func:`parse_death_records`: hex HMAC-SHA256 of the UTF-8 text.

    For a normalised ID number it gives the same value as ``identity.id_hmac``, so
    ``DeathRecord.id_hmac`` matches the registry's person index. ``key`` is the
    registry's ID-hashing key.
    """
    if not isinstance(key, (bytes, bytearray)) or len(key) < 16:
        raise ValueError("the hashing key must be at least 16 bytes")
    secret = bytes(key)

    def hasher(text: str) -> str:
        return hmac.new(secret, text.encode("utf-8"), hashlib.sha256).hexdigest()

    return hasher


_DOTS = re.compile(r"[\u00b7\u2022\u2027\u2219\u22c5\u30fb\uff65]")
_CJK = r"\u3400-\u9fff\uf900-\ufaff\U00020000-\U0003134f\u00b7"
_SPACE_NEAR_CJK = re.compile(rf"\s+(?=[{_CJK}])|(?<=[{_CJK}])\s+")


def normalise_name(name: str) -> str:
    """The form of a name that is hashed: Unicode NFKC (full-width letters become
    ASCII), the middle-dot variants of minority names written as ``·``, runs of
    whitespace as one space, and no spaces next to Chinese characters (``张　三``
    is ``张三``)."""
    s = unicodedata.normalize("NFKC", name or "")
    s = _DOTS.sub("\u00b7", s)
    s = " ".join(s.split())
    return _SPACE_NEAR_CJK.sub("", s)


def name_hash(hasher: Hasher, name: str) -> str:
    """``hasher("name:" + normalise_name(name))``: how the registry hashes a vault
    name to compare it with ``DeathRecord.name_hash``."""
    return _hash(hasher, "name:" + normalise_name(name))


def _hash(hasher: Hasher, text: str) -> str:
    out = hasher(text)
    # A hasher that returns its input (or embeds it) would put personal data in the batch.
    if not isinstance(out, str) or not out or text in out:
        raise ValueError("the hasher must return a keyed hash of its input, not the input")
    return out


# -- reading the file ----------------------------------------------------------------

_file_error = sheets.file_field_error


def detect_format(data: bytes, filename_or_content_type: str | None) -> str:
    """``csv`` or ``xlsx``, from the file's first bytes and its name or content type (a name or
    type of another format is refused; a ``.xls`` that is not an old workbook is a CSV some
    systems export under that name)."""
    return sheets.detect_format(data, filename_or_content_type, error=_file_error, xls_is_csv=True)


# -- cell values ---------------------------------------------------------------------

_text = sheets.plain_text
_blank = sheets.blank


parse_date = sheets.cell_date


# -- validation ----------------------------------------------------------------------

def _error(row: int, column: str | None, code: str, message: str) -> dict[str, Any]:
    return {"row": row, "column": column, "code": code, "message": message}


def _sorted(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(errors, key=lambda e: (e["row"], _ORDER.get(e["column"] or "", -1)))


@dataclass
class _Seen:
    row: int
    agreement: tuple[date | None, str | None]  # (date of death, name hash) of the first row
    record: DeathRecord | None
    conflict: bool = False


def _check_row(n: int, values: dict[str, Any], hasher: Hasher, today: date,
               errors: list[dict[str, Any]]) -> tuple[DeathRecord | None, str | None, tuple[Any, Any]]:
    """One row: its record (None when invalid), its normalised ID number (when valid)
    and its (date of death, name hash) for comparing duplicates."""
    bad = False

    def add(column: str, code: str, message: str) -> None:
        nonlocal bad
        bad = True
        errors.append(_error(n, column, code, message))

    rid: identity.ResidentId | None = None
    raw_id = values.get("id_number")
    if _blank(raw_id):
        add("id_number", "missing_field", "id_number (身份证号) is required")
    elif isinstance(raw_id, (int, float)) and not isinstance(raw_id, bool):
        add("id_number", "id_format", "the ID number is stored as a number, which loses digits in Excel: "
                                      "format the column as text and enter the 18 characters again")
    elif re.fullmatch(r"\d(\.\d+)?[eE]\+?\d+", str(raw_id).strip()):
        add("id_number", "id_format", "the ID number was turned into scientific notation by Excel: "
                                      "format the column as text and enter the 18 characters again")
    else:
        try:
            rid = identity.validate_id_number(unicodedata.normalize("NFKC", str(raw_id)), today=today)
        except identity.IdNumberError as exc:  # messages never repeat the number
            add("id_number", exc.code, exc.message)

    name = _text(values.get("name"))
    if name is not None:
        name = normalise_name(name)
    if not name:
        add("name", "missing_field", "name (姓名) is required")
        name = None
    elif len(name) > MAX_NAME_LENGTH:
        add("name", "invalid_name", f"a name has at most {MAX_NAME_LENGTH} characters")

    died: date | None = None
    raw_date = values.get("date_of_death")
    if _blank(raw_date):
        add("date_of_death", "missing_field", "date_of_death (死亡日期) is required")
    else:
        try:
            died = parse_date(raw_date)
        except ValueError:
            shown = _text(raw_date) or ""
            add("date_of_death", "invalid_date",
                f"{shown[:40]!r} is not a date (use YYYY-MM-DD, YYYY/MM/DD or YYYY年M月D日)")
        else:
            if died > today:
                add("date_of_death", "date_in_future",
                    f"the date of death {died.isoformat()} is in the future (today is {today.isoformat()})")
                died = None
            elif rid is not None and died < rid.birth_date:
                add("date_of_death", "death_before_birth",
                    f"the date of death {died.isoformat()} is before the birth date in the ID number")

    certificate = _text(values.get("certificate_ref"))
    if certificate is not None and len(certificate) > MAX_CERTIFICATE_REF_LENGTH:
        add("certificate_ref", "invalid_value",
            f"certificate_ref has at most {MAX_CERTIFICATE_REF_LENGTH} characters")
    place = _text(values.get("place"))
    if place is not None and len(place) > MAX_PLACE_LENGTH:
        add("place", "invalid_value", f"place has at most {MAX_PLACE_LENGTH} characters")

    hashed_name = name_hash(hasher, name) if name else None
    number = rid.number if rid is not None else None
    if bad or rid is None or name is None or died is None or hashed_name is None:
        return None, number, (died, hashed_name)
    record = DeathRecord(row=n, id_hmac=_hash(hasher, rid.number), id_masked=mask_id_number(rid.number),
                         name_masked=mask_name(name), name_hash=hashed_name, date_of_death=died,
                         certificate_ref=certificate, place=place)
    return record, number, (died, hashed_name)


def parse_death_records(data: bytes, filename_or_content_type: str, *, hasher: Hasher,
                        today: date) -> DeathBatch:
    """Parse and check a file of death records.

    ``filename_or_content_type``: the uploaded file's name (``deaths.xlsx``) or its
    content type (``text/csv``); the file's first bytes decide when they are
    unambiguous. ``hasher``: a keyed hash of text, normally ``keyed_hasher(key)``
    with the registry's ID-hashing key; ``id_hmac`` is ``hasher(id_number)`` and
    ``name_hash`` is ``hasher("name:" + normalised name)``. ``today``: the local
    date that dates of death may not be after.

    Row problems are in ``errors``; file problems raise DomainError:
    ``file_too_large`` (more than ``MAX_FILE_BYTES``), ``too_many_rows`` (more than
    ``MAX_ROWS`` data rows), ``unsupported_format``, ``invalid_file``.
    """
    if not isinstance(data, (bytes, bytearray)):
        raise TypeError("data must be bytes")
    data = bytes(data)
    if len(data) > MAX_FILE_BYTES:
        raise _file_error("file_too_large", f"the file is larger than {MAX_FILE_BYTES // (1024 * 1024)} MB",
                          max_bytes=MAX_FILE_BYTES)
    fmt = detect_format(data, filename_or_content_type)
    batch = DeathBatch(fmt, hashlib.sha256(data).hexdigest(), 0)
    rows = (sheets.csv_rows(data, error=_file_error) if fmt == "csv"
            else sheets.xlsx_rows(data, sheet_names=SHEET_NAMES, error=_file_error))

    _, header = next(rows, (1, None))
    if sheets.blank_row(header):
        batch.errors.append(_error(1, None, "missing_header", "the file is empty: row 1 must hold the column "
                                                              "headers"))
        return batch
    index, problems = sheets.header_index(header, COLUMNS, keys=_KEYS, labels=_LABELS)
    batch.errors.extend(_error(1, key, code, message) for key, code, message in problems)
    if batch.errors:
        batch.errors = _sorted(batch.errors)
        return batch

    limit = MAX_ROWS
    data_rows: list[tuple[int, dict[str, Any]]] = []
    for n, values in sheets.records(rows, index):
        if len(data_rows) >= limit:
            raise _file_error("too_many_rows", f"the file has more than {limit} rows of deaths: "
                                               f"split it into files of at most {limit} rows", max_rows=limit)
        data_rows.append((n, values))
    batch.rows = len(data_rows)

    errors: list[dict[str, Any]] = []
    seen: dict[str, _Seen] = {}
    for n, values in data_rows:
        record, number, agreement = _check_row(n, values, hasher, today, errors)
        if number is None:
            if record is not None:  # cannot happen: a record needs a valid ID number
                raise AssertionError("a record without an ID number")
            continue
        first = seen.get(number)
        if first is None:
            seen[number] = _Seen(n, agreement, record)
            if record is not None:
                batch.records.append(record)
            continue
        errors.append(_error(n, "id_number", "duplicate_id_in_file",
                             f"the same ID number {mask_id_number(number)} is already in row {first.row}"))
        if first.record is not None and not first.conflict and (record is None or agreement != first.agreement):
            first.conflict = True
            batch.records.remove(first.record)
            errors.append(_error(first.row, "id_number", "conflicting_duplicate",
                                 f"the ID number {mask_id_number(number)} appears again in row {n} with a "
                                 "different or invalid name or date of death: check which row is right"))
    batch.errors = _sorted(errors)
    return batch


def template_csv() -> bytes:
    """An empty CSV template: the header row, UTF-8 with a BOM so that Excel shows the Chinese labels."""
    return sheets.write_csv([c.header for c in COLUMNS])
