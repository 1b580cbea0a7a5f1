"""Reconciliation with the national poverty information system (国办系统).

Pure domain code: no web framework, no database, no I/O. An information officer
uploads the national system's household extract for a region; the API reads the
file with :func:`parse_extract`, loads the registry's households of the region
(and any other household that shares a member with the extract) from the ledger
into :class:`RegistryHousehold` snapshots, and calls :func:`reconcile`. The
:class:`Report` lists, household by household and field by field, where the two
systems disagree, so that officers can correct whichever side is wrong.

The extract
-----------
One sheet (XLSX: the first sheet of the workbook) or one CSV file; row 1 is the
header, every further row is one household member. Rows are numbered as a
spreadsheet shows them (header = row 1); blank rows are skipped. Columns, in
any order, identified by the English key, the Chinese label, or both as
``"key label"`` (the template's form); letter case, full-width characters, a
trailing ``*`` and a parenthesised suffix such as ``(元)`` are ignored; other
columns are ignored:

=================  ============  ========  =========================================
key                label         required  value
=================  ============  ========  =========================================
household_ref      户编号        yes       the national system's household number
                                           (text, at most 64 characters; also
                                           accepted: 户编码)
village_code       行政区划代码  yes       12-digit statistical code of the village
                                           (also: 村代码, 行政区划, 区划代码)
household_status   户状态        yes       a registry status code (``identified``,
                                           ``lifted_out``, ...), its Chinese or
                                           English label (贫困户, 已脱贫, 返贫, ...)
                                           or a national form: 未脱贫 -> identified,
                                           脱贫/已脱贫(享受政策)/已脱贫(不享受政策)/
                                           标注脱贫 -> lifted_out, and the numeric
                                           export codes 0 (not lifted out), 1 and 4
                                           (lifted out), 3 (returned to poverty)
id_number          证件号码      yes       18-character resident ID number (GB 11643,
                                           check character verified; also:
                                           身份证号, 身份证号码, 公民身份号码)
name               姓名          yes       the member's name
relation           与户主关系    yes       a ``relation_to_head`` code or label
                                           (户主/head, 10 配偶, 20 子, ...); also
                                           ``02``/``2``/本人/``01`` for the head and
                                           the national system's 之子, 之女, 之儿媳, ...
                                           (a leading 之 is dropped)
per_capita_income  人均纯收入    yes       per-capita net income in yuan (decimal;
                                           thousands separators allowed); the same
                                           value on every member row of the
                                           household, or blank on all but one row;
                                           blank on all rows = unknown
income_year        年度          no        the year of that income (also: 收入年度);
                                           blank = the year given to the comparison
=================  ============  ========  =========================================

Household-level values (village_code, household_status, per_capita_income,
income_year) must agree on all rows of one household_ref; an ID number may
appear only once in the file.

Personal data
-------------
ID numbers are validated and immediately replaced by a keyed hash (the
``hasher`` given to :func:`parse_extract`, normally ``lambda n: id_hmac(key, n)``,
which equals the registry's ``ledger_members.id_hmac``); only the masked form
(``6201**********1234``) is kept for display. Names are kept only masked
(``张*``); to compare names too, pass a ``name_hasher`` (normally
``lambda s: name_hmac(key, s)``) and give each :class:`RegistryMember` the same
hash of the vault's name. Neither the :class:`Extract`, nor the
:class:`Report`, nor any error message ever holds a plain ID number or name.

Matching and comparison
-----------------------
Households are matched by their members' ID hashes, never by household number
or village: see :func:`reconcile`.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import unicodedata
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from typing import Any, TypeVar

from eventkit import sheets
from eventkit.errors import DomainError

from . import codes
from .identity import IdNumberError, mask_id_number, mask_name, validate_id_number

_T = TypeVar("_T")

MAX_FILE_BYTES = 20 * 1024 * 1024
MAX_ERRORS = 10_000
MAX_REF_LENGTH = 64
INCOME_TOLERANCE = Decimal("0.01")
CSV_CONTENT_TYPE = sheets.CSV_CONTENT_TYPE
XLSX_CONTENT_TYPE = sheets.XLSX_CONTENT_TYPE

# Difference kinds.
MISSING_IN_REGISTRY = "missing_in_registry"
MISSING_IN_NATIONAL = "missing_in_national"
DIFFERENT = "different"
KINDS = (MISSING_IN_REGISTRY, MISSING_IN_NATIONAL, DIFFERENT)

# Compared fields, in report order. "household" and "member" are presence items.
FIELDS = ("household", "village_code", "status", "member_count", "per_capita_income",
          "member", "relation", "name")

KIND_LABELS = {MISSING_IN_REGISTRY: "本系统缺少", MISSING_IN_NATIONAL: "国办系统缺少", DIFFERENT: "不一致"}
FIELD_LABELS = {"household": "户", "village_code": "行政区划代码", "status": "户状态", "member_count": "家庭人口数",
                "per_capita_income": "人均纯收入", "member": "成员", "relation": "与户主关系", "name": "姓名"}


# -- columns --------------------------------------------------------------------------

@dataclass(frozen=True)
class ExtractColumn(sheets.Column):
    required: bool = True


COLUMNS: tuple[ExtractColumn, ...] = (
    ExtractColumn("household_ref", "户编号", aliases=("户编码",)),
    ExtractColumn("village_code", "行政区划代码", aliases=("村代码", "行政区划", "区划代码", "村级行政区划代码")),
    ExtractColumn("household_status", "户状态"),
    ExtractColumn("id_number", "证件号码", aliases=("身份证号", "身份证号码", "公民身份号码")),
    ExtractColumn("name", "姓名"),
    ExtractColumn("relation", "与户主关系"),
    ExtractColumn("per_capita_income", "人均纯收入"),
    ExtractColumn("income_year", "年度", required=False, aliases=("收入年度",)),
)
_KEYS = {c.key for c in COLUMNS}
_LABELS = sheets.label_index(COLUMNS)


def column_key(header: Any) -> str | None:
    """The column key of a header cell, or None for a column this module does not read."""
    return sheets.header_key(header, _KEYS, _LABELS)


def template_csv() -> bytes:
    """An empty extract (the header row), UTF-8 with a BOM so that Excel shows the labels."""
    return sheets.write_csv([c.header for c in COLUMNS])


# -- code values ----------------------------------------------------------------------

def _lookup(list_name: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for code, labels in codes.CODE_LISTS[list_name].items():
        out[code] = code
        out[labels["zh"]] = code
        out[labels["en"].lower()] = code
    return out


_STATUS = _lookup("household_status")
_STATUS.update({
    "未脱贫": "identified", "未脱贫户": "identified", "贫困人口": "identified",
    "脱贫": "lifted_out", "脱贫户": "lifted_out", "标注脱贫": "lifted_out",
    "已脱贫(享受政策)": "lifted_out", "已脱贫(不享受政策)": "lifted_out", "已脱贫(不再享受政策)": "lifted_out",
    "脱贫(享受政策)": "lifted_out", "脱贫(不享受政策)": "lifted_out", "脱贫(不再享受政策)": "lifted_out",
    "返贫户": "returned_to_poverty",
    # Numeric status codes seen in national exports.
    "0": "identified", "1": "lifted_out", "3": "returned_to_poverty", "4": "lifted_out",
})

_RELATION = _lookup("relation_to_head")
_RELATION.update({
    codes.GBT4761_HEAD: codes.HEAD_RELATION, "2": codes.HEAD_RELATION, "01": codes.HEAD_RELATION,
    "1": codes.HEAD_RELATION, "本人": codes.HEAD_RELATION,
    "儿子": "20", "女儿": "30", "父": "51", "母": "52", "孙子女": "40", "外孙子女": "40", "祖父母": "60",
    "兄弟": "70", "姐妹": "70",
})

# A general GB/T 4761 code (x0) and the specific codes it covers. In-law codes
# (28 女婿, 38 儿媳, 45/46, 53-56, 72/74/76/78) and great-grandchildren are not
# covered: "20 子" equals "22 长子", but not "28 女婿".
_COVERS: dict[str, frozenset[str]] = {
    "10": frozenset({"11", "12"}),
    "20": frozenset({"21", "22", "23", "24", "25", "26", "27", "29"}),
    "30": frozenset({"31", "32", "33", "34", "35", "36", "37", "39"}),
    "40": frozenset({"41", "42", "43", "44", "49"}),
    "50": frozenset({"51", "52", "57", "58", "59"}),
    "60": frozenset({"61", "62", "63", "64", "69"}),
    "70": frozenset({"71", "73", "75", "77", "79"}),
}


def _find(table: Mapping[str, str], value: str) -> str | None:
    spaced = re.sub(r"\s+", " ", unicodedata.normalize("NFKC", value)).strip()
    for key in (spaced, spaced.lower(), spaced.replace(" ", "")):
        if key in table:
            return table[key]
    return None


def status_of(value: str) -> str | None:
    """The registry status code of a national status value, or None if unknown."""
    return _find(_STATUS, value)


def relation_of(value: str) -> str | None:
    """The registry relation code (``head`` or a GB/T 4761 code) of a national value, or None."""
    found = _find(_RELATION, value)
    key = re.sub(r"\s+", "", unicodedata.normalize("NFKC", value))
    if found is None and key.startswith("之") and len(key) > 1:
        found = _find(_RELATION, key[1:])
    return found


def relations_equal(a: str, b: str) -> bool:
    """Same relation, allowing a general code to stand for a specific one (20 子 ~ 22 长子)."""
    return a == b or b in _COVERS.get(a, ()) or a in _COVERS.get(b, ())


def _code_label(list_name: str, code: str | None) -> str:
    if code is None:
        return ""
    entry = codes.CODE_LISTS[list_name].get(code)
    return f"{code} {entry['zh']}" if entry else code


# -- names ----------------------------------------------------------------------------

_DOTS = re.compile(r"[•・‧∙.．]")


def normalise_name(name: str) -> str:
    """The form of a name that is hashed: NFKC, single spaces, one kind of middle dot."""
    s = unicodedata.normalize("NFKC", name or "").strip()
    s = re.sub(r"\s+", " ", s)
    return _DOTS.sub("·", s)


def name_hmac(key: bytes, name: str) -> str:
    """Hex HMAC-SHA256 of ``"name:" + normalise_name(name)`` with the registry's key.

    Computed on both sides (the extract's names, the vault's names) it lets the
    comparison tell whether names agree without keeping either in clear.
    """
    if not isinstance(key, (bytes, bytearray)) or len(key) < 16:
        raise ValueError("the hashing key must be at least 16 bytes")
    return hmac.new(bytes(key), ("name:" + normalise_name(name)).encode("utf-8"), hashlib.sha256).hexdigest()


# -- the parsed extract ----------------------------------------------------------------

@dataclass(frozen=True)
class NationalMember:
    """One member row of the extract, without plain personal data."""

    row: int
    id_hmac: str
    id_masked: str
    name_masked: str
    relation: str
    name_hmac: str | None = None


@dataclass(frozen=True)
class NationalHousehold:
    household_ref: str
    village_code: str
    status: str  # registry status code
    status_raw: str  # the value as the national system wrote it
    per_capita_income: Decimal | None
    income_year: int | None  # None: the comparison year
    row: int  # first row of the household
    members: tuple[NationalMember, ...]

    @property
    def head(self) -> NationalMember | None:
        return next((m for m in self.members if m.relation == codes.HEAD_RELATION), None)


@dataclass
class Extract:
    """A parsed extract. ``errors`` holds row-numbered problems
    (``{"row", "column", "code", "message"}``, row 1 = the header); when there
    are any, ``households`` holds only what could be read (rows with errors are
    left out) and the caller should refuse the file."""

    format: str
    sha256: str
    rows: int  # data rows read (blank rows not counted)
    households: list[NationalHousehold] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def villages(self) -> list[str]:
        return sorted({h.village_code for h in self.households})

    @property
    def member_count(self) -> int:
        return sum(len(h.members) for h in self.households)


# -- reading the file -----------------------------------------------------------------

def detect_format(data: bytes, filename_or_content_type: str | None) -> str:
    """``"xlsx"`` or ``"csv"`` from a file name or content type, the content deciding
    when it is a ZIP (XLSX) or an old OLE workbook (refused). Browsers on Windows send
    application/vnd.ms-excel for CSV files: anything but an XLSX name or type, or a type
    that is plainly no table (an image, a PDF, JSON), is read as CSV."""
    return sheets.detect_format(data, filename_or_content_type, strict=False, xls_is_csv=True)


def _text(value: Any) -> str | None:
    return sheets.cell_text(value) or None


def _income(value: Any) -> Decimal:
    if isinstance(value, (int, float, Decimal)) and not isinstance(value, bool):
        amount = Decimal(str(value))
    else:
        s = unicodedata.normalize("NFKC", str(value)).strip()
        s = re.sub(r"[,\s]|元$|^¥", "", s)
        amount = Decimal(s)
    if not amount.is_finite():
        raise ValueError
    return amount


def _year(value: Any) -> int:
    s = _text(value) or ""
    s = s.removesuffix("年")
    if not re.fullmatch(r"[0-9]{4}", s) or not 2000 <= int(s) <= 2100:
        raise ValueError
    return int(s)


def _village_code_ok(code: str) -> bool:
    """12 digits with non-zero province, township and village groups."""
    return (re.fullmatch(r"[0-9]{12}", code) is not None and code[:2] != "00"
            and code[6:9] != "000" and code[9:] != "000")


class _Errors:
    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []
        self.full = False

    def add(self, row: int, column: str | None, code: str, message: str) -> None:
        if len(self.items) >= MAX_ERRORS:
            if not self.full:
                self.items.append({"row": row, "column": None, "code": "too_many_errors",
                                   "message": f"more than {MAX_ERRORS} errors; the rest are not listed"})
                self.full = True
            return
        self.items.append({"row": row, "column": column, "code": code, "message": message})


@dataclass
class _Building:
    ref: str
    row: int
    village_code: str
    status: str
    status_raw: str
    income: Decimal | None
    income_row: int | None
    year: int | None
    year_row: int | None
    members: list[NationalMember] = field(default_factory=list)


def parse_extract(data: bytes, filename_or_content_type: str, hasher: Callable[[str], str], *,
                  name_hasher: Callable[[str], str] | None = None, today: date | None = None,
                  max_bytes: int | None = MAX_FILE_BYTES) -> Extract:
    """Read and validate a national extract (see the module docstring for the format).

    ``filename_or_content_type`` is the uploaded file's name or content type; the
    content decides when it is unambiguous. ``hasher`` turns a validated,
    normalised ID number into its keyed hash; ``name_hasher`` (optional) a
    normalised name into its keyed hash. Raises ``DomainError`` (``file_too_large``,
    ``unsupported_format``, ``invalid_file``) for a file that cannot be read at
    all; everything else is reported in ``Extract.errors``.
    """
    if max_bytes is not None and len(data) > max_bytes:
        raise DomainError("file_too_large", f"the file is larger than {max_bytes // (1024 * 1024)} MB", 413)
    fmt = detect_format(data, filename_or_content_type)
    extract = Extract(fmt, hashlib.sha256(data).hexdigest(), 0)
    errors = _Errors()
    source = sheets.xlsx_rows(data) if fmt == "xlsx" else sheets.csv_rows(data)
    with closing(source) as rows:
        header = next(rows, None)
        if header is None or sheets.blank_row(header[1]):
            errors.add(1, None, "missing_header", "the file is empty (row 1 must hold the column headers)")
            extract.errors = errors.items
            return extract
        index = _read_header(header[1], errors)
        if index is None:
            extract.errors = errors.items
            return extract
        households = _read_rows(rows, index, extract, errors, hasher, name_hasher, today)
    if extract.rows == 0:
        errors.add(1, None, "no_data_rows", "the file has a header but no member rows")
    extract.households = [
        NationalHousehold(b.ref, b.village_code, b.status, b.status_raw, b.income, b.year, b.row, tuple(b.members))
        for b in households.values() if b.members]
    extract.errors = errors.items
    return extract


def _read_header(cells: Sequence[Any], errors: _Errors) -> dict[str, int] | None:
    index, problems = sheets.header_index(cells, COLUMNS, keys=_KEYS, labels=_LABELS)
    for key, code, message in problems:
        errors.add(1, key, code, message)
    return None if problems else {key: i for i, key in index.items()}


def _read_rows(rows: Iterable[tuple[int, Sequence[Any]]], index: Mapping[str, int], extract: Extract,
               errors: _Errors, hasher: Callable[[str], str], name_hasher: Callable[[str], str] | None,
               today: date | None) -> dict[str, _Building]:
    households: dict[str, _Building] = {}
    seen_ids: dict[str, tuple[int, str]] = {}  # id hash -> (row, household_ref)
    for n, cells in rows:
        if sheets.blank_row(cells):
            continue
        extract.rows += 1
        raw = {key: (cells[i] if i < len(cells) else None) for key, i in index.items()}
        before = len(errors.items)

        ref = _required(raw, "household_ref", n, errors)
        if ref is not None and len(ref) > MAX_REF_LENGTH:
            errors.add(n, "household_ref", "invalid_household_ref",
                       f"household_ref is longer than {MAX_REF_LENGTH} characters")
        village = _required(raw, "village_code", n, errors)
        if village is not None and not _village_code_ok(village):
            errors.add(n, "village_code", "invalid_village_code", f"{_shown(village)} is not a 12-digit village code")
            village = None
        status_raw = _required(raw, "household_status", n, errors)
        status = status_of(status_raw) if status_raw is not None else None
        if status_raw is not None and status is None:
            errors.add(n, "household_status", "invalid_household_status",
                       f"{_shown(status_raw)} is not a known household status; use a code or label of "
                       f"{', '.join(codes.codes('household_status'))}, or 未脱贫/已脱贫/返贫")
        relation_raw = _required(raw, "relation", n, errors)
        relation = relation_of(relation_raw) if relation_raw is not None else None
        if relation_raw is not None and relation is None:
            errors.add(n, "relation", "invalid_relation",
                       f"{_shown(relation_raw)} is not a relation to the head (户主, 配偶, 子, 女, ... or a GB/T 4761 code)")
        income = _optional(raw, "per_capita_income", _income, n, errors, "invalid_income", "an amount in yuan")
        year = _optional(raw, "income_year", _year, n, errors, "invalid_income_year", "a year such as 2024")
        # Personal data: validated, hashed and masked at once; the plain values stay in this frame.
        id_hash = id_masked = None
        id_cell = raw.get("id_number")
        raw["id_number"] = None
        if isinstance(id_cell, float):
            errors.add(n, "id_number", "id_format", "the ID number was stored as a number and lost digits; "
                                                  "format the column as text")
        elif _text(id_cell) is None:
            errors.add(n, "id_number", "missing_value", "id_number is required")
        else:
            try:
                rid = validate_id_number(_text(id_cell) or "", today=today)
            except IdNumberError as exc:  # its message never repeats the number
                errors.add(n, "id_number", exc.code, exc.message)
            else:
                id_hash, id_masked = hasher(rid.number), rid.masked
        del id_cell
        name_cell = _text(raw.get("name"))
        raw["name"] = None
        name_masked = name_hash = None
        if name_cell is None:
            errors.add(n, "name", "missing_value", "name is required")
        else:
            name_masked = mask_name(name_cell)
            name_hash = name_hasher(normalise_name(name_cell)) if name_hasher is not None else None
        del name_cell
        if id_hash is not None:
            first = seen_ids.get(id_hash)
            if first is not None:
                where = "the same household" if first[1] == ref else f"household {first[1]}"
                errors.add(n, "id_number", "duplicate_id_number",
                           f"the ID number {id_masked} already appears on row {first[0]} ({where})")
            else:
                seen_ids[id_hash] = (n, ref or "")
        if len(errors.items) > before or ref is None:
            continue
        assert village is not None and status is not None and relation is not None
        assert id_hash is not None and id_masked is not None and name_masked is not None
        b = households.get(ref)
        if b is None:
            b = households[ref] = _Building(ref, n, village, status, status_raw or "", income,
                                            n if income is not None else None, year,
                                            n if year is not None else None)
        elif not _consistent(b, n, village, status, income, year, errors):
            continue
        b.members.append(NationalMember(n, id_hash, id_masked, name_masked, relation, name_hash))
    return households


def _shown(value: str | None) -> str:
    """A cell value quoted in an error message: an ID number typed into the wrong
    column is masked, long values are cut."""
    s = value or ""
    if re.search(r"[0-9]{14,17}[0-9Xx]", s):
        s = re.sub(r"[0-9]{14,17}[0-9Xx]", lambda m: mask_id_number(m.group(0)), s)
    if len(s) > 40:
        s = s[:40] + "…"
    return repr(s)


def _required(raw: Mapping[str, Any], key: str, row: int, errors: _Errors) -> str | None:
    value = _text(raw.get(key))
    if value is None:
        errors.add(row, key, "missing_value", f"{key} is required")
    return value


def _optional(raw: Mapping[str, Any], key: str, parse: Callable[[Any], _T], row: int, errors: _Errors, code: str,
              expected: str) -> _T | None:
    """An optional cell read by ``parse``: None when it is blank, or (reported) when ``parse`` refuses it."""
    text = _text(raw.get(key))
    if text is None:
        return None
    try:
        return parse(raw[key])
    except (ValueError, ArithmeticError):
        errors.add(row, key, code, f"{key} must be {expected}, not {_shown(text)}")
        return None


def _consistent(b: _Building, n: int, village: str, status: str, income: Decimal | None, year: int | None,
                errors: _Errors) -> bool:
    ok = True

    def differs(column: str, mine: Any, theirs: Any, their_row: int | None) -> None:
        nonlocal ok
        ok = False
        errors.add(n, column, "inconsistent_household",
                   f"household {b.ref}: {column} is {mine} here but {theirs} on row {their_row}")

    if village != b.village_code:
        differs("village_code", village, b.village_code, b.row)
    if status != b.status:
        differs("household_status", status, b.status, b.row)
    if income is not None:
        if b.income is None:
            b.income, b.income_row = income, n
        elif income != b.income:
            differs("per_capita_income", income, b.income, b.income_row)
    if year is not None:
        if b.year is None:
            b.year, b.year_row = year, n
        elif year != b.year:
            differs("income_year", year, b.year, b.year_row)
    return ok


# -- registry snapshots ----------------------------------------------------------------

@dataclass(frozen=True)
class RegistryMember:
    member_id: str
    id_hmac: str | None  # None once the member's personal data is erased
    relation: str | None  # None: not known (not compared)
    active: bool
    name_masked: str | None = None
    id_masked: str | None = None
    name_hmac: str | None = None  # name_hmac(key, vault name), to compare names


@dataclass(frozen=True)
class RegistryHousehold:
    household_id: str
    village_code: str
    status: str
    per_capita_income: Decimal | None  # of the compared year
    members: tuple[RegistryMember, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "members", tuple(self.members))
        income = self.per_capita_income
        if income is not None and not isinstance(income, Decimal):
            object.__setattr__(self, "per_capita_income", Decimal(str(income)))

    @property
    def active_members(self) -> list[RegistryMember]:
        return [m for m in self.members if m.active]

    @classmethod
    def from_ledger(cls, doc: Mapping[str, Any], year: int,
                    name_hashes: Mapping[str, str] | None = None) -> RegistryHousehold:
        """A snapshot of a ledger document (``ledger_households.doc``).

        The per-capita income is that of ``year``'s assessment. The head is the
        document's ``head_member_id``; a member recorded as head who is no longer
        the head gets an unknown relation (relations are recorded as they were
        when the member joined). ``name_hashes`` maps member ids to ``name_hmac``
        of their vault names, when names are to be compared.
        """
        income = ((doc.get("incomes") or {}).get(str(year)) or {}).get("per_capita_net_income")
        head = doc.get("head_member_id")
        members = []
        for m in doc.get("members") or []:
            relation = m.get("relation")
            if head is not None:
                if m["member_id"] == head:
                    relation = codes.HEAD_RELATION
                elif relation == codes.HEAD_RELATION:
                    relation = None
            members.append(RegistryMember(
                member_id=str(m["member_id"]), id_hmac=m.get("id_hmac"), relation=relation,
                active=bool(m.get("active")), name_masked=m.get("name_masked"), id_masked=m.get("id_masked"),
                name_hmac=(name_hashes or {}).get(str(m["member_id"]))))
        return cls(str(doc["household_id"]), doc["village_code"], doc["status"],
                   Decimal(str(income)) if income is not None else None, tuple(members))


# -- the report ------------------------------------------------------------------------

@dataclass
class Report:
    """The differences. Each item is a dict with the keys ``household_id``
    (registry, or None), ``household_ref`` (national, or None), ``village_code``,
    ``field`` (one of ``FIELDS``), ``kind`` (one of ``KINDS``), ``national`` and
    ``registry`` (the values on each side, masked for personal data, None where
    the side has nothing), and for member-level items ``member`` (masked ID
    number), ``member_name`` (masked name) and ``member_id`` (registry member
    id); these three are None for household-level items except the household
    presence items, where they describe the head."""

    year: int
    region: str | None
    summary: dict[str, Any]
    items: list[dict[str, Any]]

    def to_json(self) -> dict[str, Any]:
        return {"year": self.year, "region": self.region, "summary": self.summary, "items": self.items}


def _region_prefix(region: str | None) -> str | None:
    if region is None:
        return None
    s = str(region).strip()
    if not re.fullmatch(r"[0-9]+", s) or len(s) not in (2, 4, 6, 9, 12) or s[:2] == "00":
        raise DomainError("invalid_region", f"{region!r} is not a region code or prefix (2, 4, 6, 9 or 12 digits)")
    if len(s) in (6, 12):  # a full code: cut its trailing zero groups
        for end in (9, 6, 4, 2):
            if len(s) > end and s[end:].strip("0") == "":
                s = s[:end]
    return s


def _money(value: Decimal | None) -> str | None:
    return None if value is None else f"{value:.2f}"


def _item(field_name: str, kind: str, *, village_code: str, household_id: str | None, household_ref: str | None,
          national: Any = None, registry: Any = None, member: str | None = None, member_name: str | None = None,
          member_id: str | None = None) -> dict[str, Any]:
    return {"household_id": household_id, "household_ref": household_ref, "village_code": village_code,
            "field": field_name, "kind": kind, "national": national, "registry": registry,
            "member": member, "member_name": member_name, "member_id": member_id}


def _registry_head(r: RegistryHousehold) -> RegistryMember | None:
    return next((m for m in r.members if m.active and m.relation == codes.HEAD_RELATION), None)


def _match(national: Sequence[NationalHousehold], registry: Sequence[RegistryHousehold]) -> dict[int, int]:
    """National index -> registry index, one to one (see ``reconcile``)."""
    by_hash: dict[str, list[tuple[int, RegistryMember]]] = defaultdict(list)
    heads: dict[int, str | None] = {}
    for j, r in enumerate(registry):
        for m in r.members:
            if m.id_hmac:
                by_hash[m.id_hmac].append((j, m))
        head = _registry_head(r)
        heads[j] = head.id_hmac if head else None
    candidates: list[tuple[tuple[int, int, int], int, int]] = []
    for i, n in enumerate(national):
        n_head = n.head.id_hmac if n.head else None
        active: dict[int, int] = defaultdict(int)
        anyway: dict[int, int] = defaultdict(int)
        for m in n.members:
            for j, rm in by_hash.get(m.id_hmac, ()):
                anyway[j] += 1
                if rm.active:
                    active[j] += 1
        for j, shared in anyway.items():
            same_head = int(n_head is not None and heads[j] == n_head)
            candidates.append(((same_head, active[j], shared), i, j))
    candidates.sort(key=lambda c: (-c[0][0], -c[0][1], -c[0][2], national[c[1]].household_ref,
                                   registry[c[2]].household_id))
    pairs: dict[int, int] = {}
    taken: set[int] = set()
    for _, i, j in candidates:
        if i not in pairs and j not in taken:
            pairs[i] = j
            taken.add(j)
    return pairs


def reconcile(extract: Extract, registry_households: Iterable[RegistryHousehold], *, year: int,
              region: str | None = None) -> Report:
    """Compare the extract with the registry's households.

    ``registry_households`` should hold the registry's households of the region
    and any other household that has an (active or former) member whose ID hash
    appears in the extract, so that households that moved are still matched.

    Matching: a national household is matched with the registry household that
    shares its head (same head on both sides) or, failing that, the most active
    members, then the most members at all (members who left count only here);
    each household is matched at most once, the strongest pairs first (ties by
    household_ref, then household_id). Unmatched national households are
    ``missing_in_registry``. Unmatched registry households are
    ``missing_in_national`` when they lie in the compared region: a village of
    the extract, or under the ``region`` code/prefix when given.

    Matched households are compared on village_code, status, member_count
    (active registry members vs member rows), per_capita_income (when the
    national income is of ``year``; equal within 0.01 yuan; one side unknown
    is a difference) and members: a member on one side only (inactive registry
    members count as absent), a different relation (a general code equals the
    specific ones it covers, unknown registry relations are not compared) and,
    when both sides carry name hashes, a different name.
    """
    if not isinstance(year, int) or isinstance(year, bool) or not 2000 <= year <= 2100:
        raise DomainError("invalid_year", f"year must be a year such as 2024, not {year!r}")
    prefix = _region_prefix(region)
    national = list(extract.households)
    registry = list(registry_households)
    ids = [r.household_id for r in registry]
    if len(set(ids)) != len(ids):
        raise ValueError("registry_households lists a household twice")
    villages = set(extract.villages)

    def in_scope(r: RegistryHousehold) -> bool:
        return r.village_code in villages or (prefix is not None and r.village_code.startswith(prefix))

    pairs = _match(national, registry)
    active_home: dict[str, str] = {}  # id hash -> registry household where the person is active
    for r in registry:
        for m in r.active_members:
            if m.id_hmac:
                active_home.setdefault(m.id_hmac, r.household_id)

    items: list[dict[str, Any]] = []
    income_not_compared = 0
    unhashed = 0
    with_differences = 0
    for i, n in enumerate(national):
        if i not in pairs:
            head = n.head or n.members[0]
            items.append(_item("household", MISSING_IN_REGISTRY, village_code=n.village_code, household_id=None,
                               household_ref=n.household_ref, national=n.household_ref,
                               member=head.id_masked, member_name=head.name_masked))
            continue
        r = registry[pairs[i]]
        found, skipped, not_hashed = _compare(n, r, year, active_home)
        items.extend(found)
        income_not_compared += skipped
        unhashed += not_hashed
        with_differences += bool(found)
    matched_registry = set(pairs.values())
    in_scope_count = 0
    for j, r in enumerate(registry):
        scoped = in_scope(r)
        in_scope_count += scoped
        if j in matched_registry or not scoped:
            continue
        head = _registry_head(r)
        items.append(_item("household", MISSING_IN_NATIONAL, village_code=r.village_code,
                           household_id=r.household_id, household_ref=None, registry=r.household_id,
                           member=head.id_masked if head else None, member_name=head.name_masked if head else None,
                           member_id=head.member_id if head else None))

    rank = {f: k for k, f in enumerate(FIELDS)}
    items.sort(key=lambda it: (it["village_code"], it["household_ref"] or it["household_id"] or "",
                               it["household_id"] or "", rank[it["field"]], it["member"] or "",
                               it["member_id"] or ""))
    missing_registry = sum(1 for it in items if it["field"] == "household" and it["kind"] == MISSING_IN_REGISTRY)
    missing_national = sum(1 for it in items if it["field"] == "household" and it["kind"] == MISSING_IN_NATIONAL)
    by_kind = {k: sum(1 for it in items if it["kind"] == k) for k in KINDS}
    by_field = {f: sum(1 for it in items if it["field"] == f) for f in FIELDS}
    summary = {
        "year": year,
        "region": prefix,
        "villages": sorted(villages),
        "national_households": len(national),
        "national_members": extract.member_count,
        "registry_households_in_scope": in_scope_count,
        "households_compared": len(pairs) + missing_registry + missing_national,
        "matched": len(pairs),
        "matched_with_differences": with_differences,
        "matched_without_differences": len(pairs) - with_differences,
        "missing_in_registry": missing_registry,
        "missing_in_national": missing_national,
        "income_not_compared": income_not_compared,
        "registry_members_without_id_hash": unhashed,
        "items": len(items),
        "by_kind": by_kind,
        "by_field": by_field,
    }
    return Report(year, prefix, summary, items)


def _compare(n: NationalHousehold, r: RegistryHousehold, year: int, active_home: Mapping[str, str]
             ) -> tuple[list[dict[str, Any]], int, int]:
    """Differences of a matched pair, households whose income was not compared (0/1), and
    active registry members without an ID hash (not comparable)."""
    out: list[dict[str, Any]] = []

    def add(field_name: str, kind: str, national: Any, registry: Any, **member: Any) -> None:
        out.append(_item(field_name, kind, village_code=r.village_code, household_id=r.household_id,
                         household_ref=n.household_ref, national=national, registry=registry, **member))

    if n.village_code != r.village_code:
        add("village_code", DIFFERENT, n.village_code, r.village_code)
    if n.status != r.status:
        add("status", DIFFERENT, n.status, r.status)
    active = r.active_members
    if len(n.members) != len(active):
        add("member_count", DIFFERENT, len(n.members), len(active))
    skipped = 0
    if n.income_year is not None and n.income_year != year:
        skipped = 1
    else:
        a, b = n.per_capita_income, r.per_capita_income
        if (a is None) != (b is None) or (a is not None and b is not None and abs(a - b) > INCOME_TOLERANCE):
            add("per_capita_income", DIFFERENT, _money(a), _money(b))

    registry_by_hash = {m.id_hmac: m for m in r.members if m.id_hmac}
    national_hashes = set()
    for m in n.members:
        national_hashes.add(m.id_hmac)
        rm = registry_by_hash.get(m.id_hmac)
        ids = {"member": m.id_masked, "member_name": m.name_masked}
        if rm is None or not rm.active:
            if rm is not None:
                where = "inactive"
            elif m.id_hmac in active_home:
                where = f"in household {active_home[m.id_hmac]}"
            else:
                where = None
            add("member", MISSING_IN_REGISTRY, m.id_masked, where, member_id=rm.member_id if rm else None, **ids)
            continue
        ids["member_id"] = rm.member_id
        if rm.relation is not None and not relations_equal(m.relation, rm.relation):
            add("relation", DIFFERENT, m.relation, rm.relation, **ids)
        if m.name_hmac is not None and rm.name_hmac is not None and m.name_hmac != rm.name_hmac:
            add("name", DIFFERENT, m.name_masked, rm.name_masked, **ids)
    unhashed = 0
    for rm in active:
        if not rm.id_hmac:
            unhashed += 1
        elif rm.id_hmac not in national_hashes:
            add("member", MISSING_IN_NATIONAL, None, rm.id_masked or rm.member_id, member=rm.id_masked,
                member_name=rm.name_masked, member_id=rm.member_id)
    return out, skipped, unhashed


# -- the report as CSV ----------------------------------------------------------------

_REPORT_COLUMNS = (
    ("village_code", "行政区划代码"), ("household_ref", "国办户编号"), ("household_id", "本系统户ID"),
    ("field", "字段"), ("field_label", "字段名称"), ("kind", "差异类型"), ("kind_label", "差异说明"),
    ("member", "成员证件号码(脱敏)"), ("member_name", "成员姓名(脱敏)"), ("member_id", "本系统成员ID"),
    ("national", "国办系统"), ("registry", "本系统"),
)


def _display(item: Mapping[str, Any], side: str) -> Any:
    value = item[side]
    if item["field"] == "status":
        return _code_label("household_status", value)
    if item["field"] == "relation":
        return _code_label("relation_to_head", value)
    return value


def report_csv(report: Report) -> bytes:
    """The report's items as CSV (UTF-8 with a BOM, bilingual headers, code values with labels)."""
    def line(item: Mapping[str, Any]) -> list[Any]:
        row = {**item, "field_label": FIELD_LABELS.get(item["field"], ""),
               "kind_label": KIND_LABELS.get(item["kind"], ""),
               "national": _display(item, "national"), "registry": _display(item, "registry")}
        return [row.get(key) for key, _ in _REPORT_COLUMNS]

    return sheets.write_csv([f"{key} {label}" for key, label in _REPORT_COLUMNS], map(line, report.items))
