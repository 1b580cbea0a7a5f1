"""Bulk import of households from the spreadsheets villages fill in.

No web framework here: the HTTP API (``import_api``) and the command line
(``tpa import households``) both call :func:`import_file`.

File formats
------------
**XLSX**: a sheet ``households`` (one row per household) and a sheet ``members``
(one row per person). Other sheets (``codes``, ``readme`` in the template) are
ignored. **CSV**: *one* file with a first column ``record`` whose value is
``household`` or ``member`` (their Chinese labels are also accepted); the other columns are the
union of both sheets' columns, a household record fills the household columns
and a member record the member columns. One file keeps a village's upload
atomic and lets the same error report (sheet = ``households``/``members`` by
record kind, row = the CSV line as a spreadsheet shows it) serve both formats.
CSV is read as UTF-8 (with or without BOM), UTF-16 with a BOM or, failing that,
GB 18030, the encoding Excel uses for CSV on Chinese Windows (``eventkit.sheets``);
the template is written as UTF-8 with a BOM so that Excel shows the Chinese labels.

Headers carry bilingual labels (the key, a space, the Chinese label): a column is identified
by the English key before the first space, or by its Chinese label alone.
Unknown columns are ignored; a missing required column is a file error.

Rows are numbered as a spreadsheet shows them: the header is row 1.

Identity of a household: ``uuid5(HOUSEHOLD_NAMESPACE, f"{village_code}/{household_no}")``,
so re-running a file imports nothing twice (households whose stream exists are
reported as already imported).

Procedure: parse -> validate the whole file (every error with sheet, row,
column, reason, code) -> unless ``skip_invalid``, write nothing when there is
any error -> write the valid households in batches, in bulk (one transaction per
batch: one statement for the persons' index rows, one for their vault rows and
one store append for the events of all the batch's households, one stream each)
-> record the import in the ``imports`` table. A batch whose bulk write fails
(a person or household registered since the validation, ...) is rolled back and
written one household at a time (one savepoint per household: a household that
fails at write time is rolled back alone and reported); both ways write the
same events.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import json
import logging
import re
import uuid
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, Callable, Sequence

from eventkit import sheets
from eventkit.errors import ConcurrencyError
from eventkit.events import Metadata

from . import codes, identity, regions
from .commands import MemberInput, Registry
from .domain import DomainError, Household, money

log = logging.getLogger("tpa.registry.import")

HOUSEHOLD_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://tpa.example/registry/imported-household")

FORMATS = ("xlsx", "csv")
CONTENT_TYPES = {
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "csv": "text/csv; charset=utf-8",
}
MAX_FILE_BYTES = 20 * 1024 * 1024
MAX_MEMBERS_PER_HOUSEHOLD = 30
HOUSEHOLDS = "households"
MEMBERS = "members"
FILE = "file"
STORED_ERRORS = 10_000  # errors kept in the imports table (the full list is in the response)
BATCH_SIZE = 500  # households per bulk transaction (measured: 200 is ~10% and 50 ~35% slower)
ONE_BY_ONE_BATCH_SIZE = 50  # households per transaction when a batch is written one by one

MULTI_SEPARATORS = re.compile(r"[;；]")


def household_id_for(village_code: str, household_no: str) -> str:
    """The deterministic id of an imported household."""
    return str(uuid.uuid5(HOUSEHOLD_NAMESPACE, f"{village_code}/{household_no}"))


# -- columns ------------------------------------------------------------------------

@dataclass(frozen=True)
class Column:
    key: str
    label: str  # Chinese label shown in the template header
    required: bool = False
    code_list: str | None = None  # single-valued code list (template drop-down)
    text: bool = False  # formatted as text in the template (IDs, numbers with leading zeros)

    @property
    def header(self) -> str:
        return f"{self.key} {self.label}"


HOUSEHOLD_COLUMNS: tuple[Column, ...] = (
    Column("household_no", "户编号", True, text=True),
    Column("village_code", "村代码", True, text=True),
    Column("address", "详细地址"),
    Column("attribute", "贫困户属性", True, "household_attribute"),
    Column("identification_standard", "识别标准", True, "identification_standard"),
    Column("registered_on", "建档立卡日期"),
    # Optional facts, recorded with the registration when given.
    Column("status", "户状态(applicant/identified)"),
    Column("primary_cause", "主要致贫原因", code_list="poverty_cause"),
    Column("other_causes", "其他致贫原因"),
    Column("income_year", "收入年度"),
    Column("wage_income", "工资性收入"),
    Column("business_income", "生产经营性收入"),
    Column("property_income", "财产性收入"),
    Column("transfer_income", "转移性收入"),
    Column("business_expenses", "生产经营性支出"),
    Column("cadre_id", "帮扶责任人编号", text=True),
    Column("cadre_unit", "帮扶单位"),
    Column("cadre_assigned_on", "结对日期"),
    Column("latitude", "纬度"),
    Column("longitude", "经度"),
)

MEMBER_COLUMNS: tuple[Column, ...] = (
    Column("household_no", "户编号", True, text=True),
    Column("village_code", "村代码", True, text=True),
    Column("name", "姓名", True),
    Column("id_number", "身份证号", True, text=True),
    Column("relation", "与户主关系", True, "relation_to_head"),
    Column("sex", "性别"),
    Column("birth_date", "出生日期"),
    Column("phone", "联系电话", text=True),
    Column("ethnicity", "民族"),
    Column("health", "健康状况"),
    Column("education", "文化程度", code_list="education_level"),
    Column("schooling_stage", "在校生状况", code_list="schooling_stage"),
    Column("labour_skill", "劳动技能", code_list="labour_skill"),
    Column("employment", "务工状况", code_list="employment"),
    Column("employment_months", "务工时间(月)"),
    Column("insurance", "参保情况"),
)

RECORD_COLUMN = Column("record", "记录类型(household/member)", True)
CSV_COLUMNS: tuple[Column, ...] = (RECORD_COLUMN, *HOUSEHOLD_COLUMNS,
                                   *(c for c in MEMBER_COLUMNS if c.key not in ("household_no", "village_code")))
COLUMNS = {HOUSEHOLDS: HOUSEHOLD_COLUMNS, MEMBERS: MEMBER_COLUMNS}

# Member fields validated against a code list: column -> list name.
MEMBER_CODES = {"education": "education_level", "schooling_stage": "schooling_stage",
                "labour_skill": "labour_skill", "employment": "employment"}
MEMBER_MULTI = {"health": "health_condition", "insurance": "insurance_kind"}
INCOME_COLUMNS = {"wage_income": "wage", "business_income": "business", "property_income": "property",
                  "transfer_income": "transfer", "business_expenses": "business_expenses"}
IMPORT_STATUSES = ("applicant", "identified")


# -- errors and the parsed file -----------------------------------------------------

@dataclass(frozen=True)
class RowError:
    sheet: str
    row: int  # as a spreadsheet shows it: header = 1; 0 for the file as a whole
    column: str | None
    reason: str
    code: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class ImportFileError(ValueError):
    """A file that cannot be read at all (not an XLSX/CSV, corrupt, too large)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Row:
    sheet: str
    row: int
    values: dict[str, Any]

    def get(self, key: str) -> Any:
        return self.values.get(key)


@dataclass
class ParsedFile:
    format: str
    sha256: str
    size: int
    households: list[Row] = field(default_factory=list)
    members: list[Row] = field(default_factory=list)
    errors: list[RowError] = field(default_factory=list)  # file-level (structure) errors


# -- template -----------------------------------------------------------------------

def build_template(fmt: str) -> bytes:
    """An empty import template (headers, code lists, instructions)."""
    return write_file(fmt, [], [])


def write_file(fmt: str, households: Sequence[dict[str, Any]], members: Sequence[dict[str, Any]]) -> bytes:
    """Write an importable file from rows keyed by column key (used by the template and the
    demo-data generator)."""
    fmt = _check_format(fmt)
    if fmt == "csv":
        return _write_csv(households, members)
    return _write_xlsx(households, members)


def _check_format(fmt: str | None) -> str:
    f = (fmt or "").lower().lstrip(".")
    if f not in FORMATS:
        raise ImportFileError("unsupported_format", f"format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    return f


def _cell_text(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return ";".join(str(v) for v in value)
    if isinstance(value, (date, datetime)):
        return value.isoformat()
    return value


def _write_csv(households: Sequence[dict[str, Any]], members: Sequence[dict[str, Any]]) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")
    w.writerow([c.header for c in CSV_COLUMNS])
    keys = [c.key for c in CSV_COLUMNS]
    by_household: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for m in members:
        by_household.setdefault((str(m.get("village_code")), str(m.get("household_no"))), []).append(m)
    written: set[tuple[str, str]] = set()
    for h in households:
        k = (str(h.get("village_code")), str(h.get("household_no")))
        w.writerow([_cell_text({**h, "record": "household"}.get(key)) for key in keys])
        for m in by_household.get(k, []):
            w.writerow([_cell_text({**m, "record": "member"}.get(key)) for key in keys])
        written.add(k)
    for k, ms in by_household.items():  # members of households not in the list (kept, reported on import)
        if k not in written:
            for m in ms:
                w.writerow([_cell_text({**m, "record": "member"}.get(key)) for key in keys])
    return buf.getvalue().encode("utf-8-sig")


_README = (
    ("TPA household import template 建档立卡户批量导入模板", None),
    ("", None),
    ("Fill one row per household in 'households' and one row per person in 'members'.", None),
    ("在 households 表每户填一行, 在 members 表每人填一行; 成员通过 村代码 + 户编号 对应到户.", None),
    ("Codes: see the 'codes' sheet (code or its Chinese label). Multiple codes (health, insurance, "
     "other_causes) are separated by ';'.", None),
    ("代码见 codes 表, 可填代码或中文名称; 多个代码(健康状况、参保情况、其他致贫原因)用分号 ; 分隔.", None),
    ("Each household has exactly one member whose relation is 'head' (户主). ID numbers: 18 characters, "
     "entered as text.", None),
    ("每户有且只有一名户主(relation 填 head 或 户主); 身份证号为18位, 请以文本格式填写.", None),
    ("Columns marked * are required; dates as YYYY-MM-DD.", None),
    ("带 * 的列为必填; 日期格式 YYYY-MM-DD.", None),
)


def _template_lists() -> dict[str, list[str]]:
    lists: dict[str, list[str]] = {}
    for c in (*HOUSEHOLD_COLUMNS, *MEMBER_COLUMNS):
        if c.code_list:
            lists.setdefault(c.code_list, list(codes.codes(c.code_list)))
    for name in ("health_condition", "insurance_kind", "sex"):
        lists.setdefault(name, list(codes.codes(name)))
    return lists


def _write_xlsx(households: Sequence[dict[str, Any]], members: Sequence[dict[str, Any]]) -> bytes:
    from openpyxl import Workbook
    from openpyxl.cell import WriteOnlyCell
    from openpyxl.styles import Alignment, Font, PatternFill
    from openpyxl.utils import get_column_letter
    from openpyxl.worksheet.datavalidation import DataValidation

    template = not households and not members
    wb = Workbook(write_only=True)
    lists = _template_lists()
    list_columns = {name: 2 * i + 1 for i, name in enumerate(lists)}
    bold = Font(bold=True)
    required_fill = PatternFill("solid", fgColor="FFF2CC")
    wrap = Alignment(wrap_text=True, vertical="top")

    for sheet, columns, rows in ((HOUSEHOLDS, HOUSEHOLD_COLUMNS, households), (MEMBERS, MEMBER_COLUMNS, members)):
        ws = wb.create_sheet(sheet)
        for i, c in enumerate(columns, 1):
            dim = ws.column_dimensions[get_column_letter(i)]
            dim.width = max(14, min(30, len(c.header) + 6))
            if c.text:
                dim.number_format = "@"
        ws.freeze_panes = "A2"
        if template:
            for i, c in enumerate(columns, 1):
                if c.code_list:
                    col = get_column_letter(list_columns[c.code_list])
                    n = len(lists[c.code_list])
                    dv = DataValidation(type="list", formula1=f"codes!${col}$2:${col}${n + 1}", allow_blank=True,
                                        errorStyle="warning", showErrorMessage=True,
                                        error="Not a code of the list (a Chinese label is accepted too)")
                    dv.add(f"{get_column_letter(i)}2:{get_column_letter(i)}5000")
                    ws.data_validations.append(dv)
        header = []
        for c in columns:
            cell = WriteOnlyCell(ws, value=c.header + (" *" if c.required else ""))
            cell.font = bold
            cell.alignment = wrap
            if c.required:
                cell.fill = required_fill
            header.append(cell)
        ws.append(header)
        keys = [c.key for c in columns]
        for r in rows:
            ws.append([_xlsx_value(r.get(k)) for k in keys])

    ws = wb.create_sheet("codes")  # per list two columns: code, Chinese label
    for i in range(2 * len(lists)):
        ws.column_dimensions[get_column_letter(i + 1)].width = 16 if i % 2 == 0 else 22
    head = []
    for name in lists:
        cell = WriteOnlyCell(ws, value=name)
        cell.font = bold
        head += [cell, "中文"]
    ws.append(head)
    depth = max(len(v) for v in lists.values())
    for i in range(depth):
        line: list[Any] = []
        for name, values in lists.items():
            line += [values[i], codes.label(name, values[i])] if i < len(values) else [None, None]
        ws.append(line)

    ws = wb.create_sheet("readme")
    ws.column_dimensions["A"].width = 120
    for text, _ in _README:
        ws.append([text])

    buf = io.BytesIO()
    wb.save(buf)
    return buf.getvalue()


def _xlsx_value(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return ";".join(str(v) for v in value)
    if isinstance(value, Decimal):
        return float(value)
    return value


# -- parsing ------------------------------------------------------------------------

def _labels() -> dict[str, str]:
    out: dict[str, str] = {}
    for c in (*CSV_COLUMNS, *MEMBER_COLUMNS):
        out[c.label] = c.key
        out[re.split(r"[(（]", c.label)[0]] = c.key
    return out


def column_key(header: Any) -> str | None:
    """The column key of a header cell: the English key before the first space
    (the key before the space), or the key of a Chinese label."""
    if header is None:
        return None
    text = str(header).replace("\u3000", " ").strip().rstrip("*").strip()
    if not text:
        return None
    first = text.split()[0].strip().rstrip("*").lower()
    known = {c.key for c in CSV_COLUMNS} | {c.key for c in MEMBER_COLUMNS}
    if first in known:
        return first
    labels = _labels()
    for candidate in (text, text.split()[0], re.split(r"[(（]", text)[0].strip()):
        if candidate in labels:
            return labels[candidate]
    return first


def detect_format(data: bytes, file_name: str | None = None) -> str:
    """``xlsx`` (a ZIP) or ``csv``; an old ``.xls`` workbook (by content or name) is refused, a
    name or type saying XLSX for what is not a ZIP is an unreadable workbook."""
    return sheets.detect_format(data, file_name, error=ImportFileError, strict=False)


def parse(data: bytes, fmt: str | None = None, *, file_name: str | None = None,
          max_bytes: int | None = MAX_FILE_BYTES) -> ParsedFile:
    """Read a file into rows; structural problems (missing sheets or columns) are in ``errors``.
    Raises ImportFileError when the file cannot be read at all (or is larger than ``max_bytes``)."""
    if max_bytes is not None and len(data) > max_bytes:
        raise ImportFileError("file_too_large", f"the file is larger than {max_bytes // (1024 * 1024)} MB")
    fmt = _check_format(fmt) if fmt else detect_format(data, file_name)
    parsed = ParsedFile(fmt, hashlib.sha256(data).hexdigest(), len(data))
    if fmt == "xlsx":
        _parse_xlsx(data, parsed)
    else:
        _parse_csv(data, parsed)
    return parsed


def _header(sheet: str, cells: Sequence[Any], columns: Sequence[Column], parsed: ParsedFile
            ) -> dict[int, str] | None:
    index: dict[int, str] = {}
    seen: dict[str, int] = {}
    for i, cell in enumerate(cells):
        key = column_key(cell)
        if key is None:
            continue
        if key in seen:
            parsed.errors.append(RowError(sheet, 1, key, f"column {key} appears twice", "duplicate_column"))
            continue
        seen[key] = i
        index[i] = key
    missing = [c.key for c in columns if c.required and c.key not in seen]
    for key in missing:
        parsed.errors.append(RowError(sheet, 1, key, f"required column {key} is missing", "missing_column"))
    return None if missing else index


_is_blank = sheets.blank_row


def _parse_xlsx(data: bytes, parsed: ParsedFile) -> None:
    with sheets.workbook(data, error=ImportFileError) as wb:
        for sheet in (HOUSEHOLDS, MEMBERS):
            ws = sheets.find_sheet(wb, [sheet])
            if ws is None:
                parsed.errors.append(RowError(sheet, 0, None, f"the workbook has no sheet named {sheet!r}",
                                              "missing_sheet"))
                continue
            rows = ws.iter_rows(values_only=True)
            header = next(rows, None)
            if header is None:
                parsed.errors.append(RowError(sheet, 1, None, "the sheet is empty (no header row)", "missing_header"))
                continue
            index = _header(sheet, header, COLUMNS[sheet], parsed)
            if index is None:
                continue
            target = parsed.households if sheet == HOUSEHOLDS else parsed.members
            for n, values in sheets.records(enumerate(rows, 2), index):
                target.append(Row(sheet, n, values))


_RECORD_KINDS = {"household": HOUSEHOLDS, "households": HOUSEHOLDS, "户": HOUSEHOLDS, "h": HOUSEHOLDS,
                 "member": MEMBERS, "members": MEMBERS, "成员": MEMBERS, "m": MEMBERS}


def _parse_csv(data: bytes, parsed: ParsedFile) -> None:
    reader = sheets.csv_rows(data, error=ImportFileError)
    _, header = next(reader, (1, None))
    if _is_blank(header):
        parsed.errors.append(RowError(FILE, 1, None, "the CSV file is empty (no header row)", "missing_header"))
        return
    index = _header(FILE, header, (RECORD_COLUMN,), parsed)
    if index is None:
        return
    keys = set(index.values())
    for sheet, columns in COLUMNS.items():
        for c in columns:
            if c.required and c.key not in keys:
                parsed.errors.append(RowError(FILE, 1, c.key, f"required column {c.key} is missing",
                                              "missing_column"))
    if parsed.errors:
        return
    for n, cells in reader:
        if _is_blank(cells):
            continue
        values = {key: (cells[i] if i < len(cells) else None) for i, key in index.items()}
        kind = _RECORD_KINDS.get(str(values.get("record") or "").strip().lower())
        if kind is None:
            parsed.errors.append(RowError(FILE, n, "record",
                                          f"record must be household or member, not {values.get('record')!r}",
                                          "invalid_record"))
            continue
        (parsed.households if kind == HOUSEHOLDS else parsed.members).append(Row(kind, n, values))


# -- cell values --------------------------------------------------------------------

class CellError(ValueError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def _text(value: Any) -> str | None:
    return sheets.cell_text(value) or None


_EXCEL_EPOCH = date(1899, 12, 30)
_DATE_FORMATS = ("%Y-%m-%d", "%Y/%m/%d", "%Y.%m.%d", "%Y%m%d", "%Y年%m月%d日")


def _date(value: Any) -> date | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if 1 <= value < 200_000 and float(value).is_integer():  # an Excel serial date
            return _EXCEL_EPOCH + timedelta(days=int(value))
        if 19000101 <= value <= 21001231:
            value = str(int(value))
        else:
            raise CellError("invalid_date", f"{value!r} is not a date (use YYYY-MM-DD)")
    s = str(value).strip()
    s = s.split(" ")[0] if re.match(r"^\d{4}-\d{2}-\d{2} \d", s) else s
    for f in _DATE_FORMATS:
        try:
            return datetime.strptime(s, f).date()
        except ValueError:
            continue
    raise CellError("invalid_date", f"{s!r} is not a date (use YYYY-MM-DD)")


def _int(value: Any, low: int, high: int, what: str) -> int | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        number = Decimal(str(value).strip())
        if number != number.to_integral_value():
            raise ValueError
        out = int(number)
    except (ValueError, ArithmeticError):
        raise CellError("invalid_value", f"{what} must be a whole number, not {value!r}") from None
    if not low <= out <= high:
        raise CellError("invalid_value", f"{what} must be {low} to {high}, not {out}")
    return out


def _float(value: Any, what: str) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        return float(str(value).strip())
    except ValueError:
        raise CellError("invalid_value", f"{what} must be a number, not {value!r}") from None


def _label_index(list_name: str) -> dict[str, str]:
    """Chinese and English labels -> code (labels shared by two codes are left out)."""
    seen: dict[str, str | None] = {}
    for code, labels in codes.CODE_LISTS[list_name].items():
        for lab in labels.values():
            for key in (lab, lab.lower()):
                seen[key] = code if seen.get(key, code) == code else None
    return {k: v for k, v in seen.items() if v is not None}


_LABEL_CACHE: dict[str, dict[str, str]] = {}


def code_of(list_name: str, value: Any) -> str | None:
    """Validate a single code (a code or one of its labels); None when blank."""
    s = _text(value)
    if s is None:
        return None
    if codes.is_valid(list_name, s):
        return s
    if list_name not in _LABEL_CACHE:
        _LABEL_CACHE[list_name] = _label_index(list_name)
    found = _LABEL_CACHE[list_name].get(s) or _LABEL_CACHE[list_name].get(s.lower())
    if found is not None:
        return found
    return codes.validate(list_name, s)  # raises CodeError naming the allowed codes


def codes_of(list_name: str, value: Any) -> list[str] | None:
    s = _text(value)
    if s is None:
        return None
    parts = [p.strip() for p in MULTI_SEPARATORS.split(s) if p.strip()]
    return codes.validate_many(list_name, [code_of(list_name, p) for p in parts])


def relation_of(value: Any) -> str | None:
    s = _text(value)
    if s is None:
        return None
    if s.isdigit() and len(s) == 1:  # Excel dropped the leading zero of 02
        s = "0" + s
    if s in (codes.HEAD_RELATION, codes.GBT4761_HEAD, "户主", "Head"):
        return codes.HEAD_RELATION
    return code_of("relation_to_head", s)


# -- validation ---------------------------------------------------------------------

@dataclass
class MemberPlan:
    row: int
    member: MemberInput


@dataclass
class HouseholdPlan:
    row: int
    household_no: str
    village_code: str
    household_id: str
    address: str | None = None
    attribute: str | None = None
    identification_standard: str | None = None
    registered_on: date | None = None
    status: str = "applicant"
    causes: tuple[str, list[str]] | None = None
    income: tuple[int, dict[str, Decimal]] | None = None
    cadre: tuple[str, str, date] | None = None
    coordinates: tuple[float, float] | None = None
    members: list[MemberPlan] = field(default_factory=list)
    relations: list[tuple[int, str | None]] = field(default_factory=list)  # (row, relation) of every member row
    invalid: bool = False

    @property
    def label(self) -> str:
        return f"{self.village_code}/{self.household_no}"


@dataclass
class Validation:
    plans: list[HouseholdPlan]
    errors: list[RowError]
    file_errors: bool  # structural errors: nothing can be imported
    members_in_file: int
    already_imported: set[str] = field(default_factory=set)  # household ids

    @property
    def valid(self) -> list[HouseholdPlan]:
        return [p for p in self.plans if not p.invalid]


class _Collector:
    def __init__(self) -> None:
        self.errors: list[RowError] = []

    def add(self, sheet: str, row: int, column: str | None, reason: str, code: str,
            plan: HouseholdPlan | None = None) -> None:
        self.errors.append(RowError(sheet, row, column, reason, code))
        if plan is not None:
            plan.invalid = True


def _check_household(row: Row, plan: HouseholdPlan, err: _Collector, today: date) -> None:
    def add(column: str, reason: str, code: str) -> None:
        err.add(HOUSEHOLDS, row.row, column, reason, code, plan)

    def cell(column: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except codes.CodeError as exc:
            add(column, str(exc), "invalid_code")
        except CellError as exc:
            add(column, str(exc), exc.code)
        except DomainError as exc:
            add(column, str(exc), exc.code)
        return None

    address = _text(row.get("address"))
    if address is not None and len(address) > 200:
        add("address", "address is longer than 200 characters", "invalid_value")
    plan.address = address
    for column, list_name in (("attribute", "household_attribute"),
                              ("identification_standard", "identification_standard")):
        if _text(row.get(column)) is None:
            add(column, f"{column} is required; allowed: {', '.join(codes.codes(list_name))}", "missing_field")
        else:
            setattr(plan, column, cell(column, lambda c=column, n=list_name: code_of(n, row.get(c))))
    plan.registered_on = cell("registered_on", lambda: _date(row.get("registered_on")))
    if plan.registered_on and plan.registered_on > today:
        add("registered_on", "registered_on is in the future", "invalid_date")
    status = _text(row.get("status"))
    if status is not None:
        found = cell("status", lambda: code_of("household_status", status))
        if found is not None and found not in IMPORT_STATUSES:
            add("status", f"a household is imported as {' or '.join(IMPORT_STATUSES)}, not {found}",
                "invalid_status")
        elif found is not None:
            plan.status = found
    # poverty causes
    primary = cell("primary_cause", lambda: code_of("poverty_cause", row.get("primary_cause")))
    others = cell("other_causes", lambda: codes_of("poverty_cause", row.get("other_causes")))
    if others and primary is None and _text(row.get("primary_cause")) is None:
        add("primary_cause", "other_causes need a primary_cause", "missing_field")
    if primary is not None:
        plan.causes = (primary, [c for c in (others or []) if c != primary])
    # income
    given = {col: row.get(col) for col in INCOME_COLUMNS if _text(row.get(col)) is not None}
    year = cell("income_year", lambda: _int(row.get("income_year"), 2000, today.year, "income_year"))
    if given:  # a year alone (no amounts) records nothing
        if year is None and _text(row.get("income_year")) is None:
            add("income_year", "income_year is required with income amounts", "missing_field")
        amounts = {}
        for col, part in INCOME_COLUMNS.items():
            value = given.get(col, 0)
            amount = cell(col, lambda v=value, c=col: money(_text(v) if v is not None else 0, c))
            if amount is not None:
                amounts[part] = amount
        if year is not None and len(amounts) == len(INCOME_COLUMNS):
            plan.income = (year, amounts)
    # cadre
    cadre_id, unit = _text(row.get("cadre_id")), _text(row.get("cadre_unit"))
    assigned_on = cell("cadre_assigned_on", lambda: _date(row.get("cadre_assigned_on")))
    if cadre_id or unit:
        if not cadre_id:
            add("cadre_id", "cadre_id is required with cadre_unit", "missing_field")
        elif len(cadre_id) > 64:
            add("cadre_id", "cadre_id is longer than 64 characters", "invalid_value")
        if not unit:
            add("cadre_unit", "cadre_unit is required with cadre_id", "missing_field")
        elif len(unit) > 200:
            add("cadre_unit", "cadre_unit is longer than 200 characters", "invalid_value")
        if assigned_on and assigned_on > today:
            add("cadre_assigned_on", "cadre_assigned_on is in the future", "invalid_date")
        if cadre_id and unit:
            plan.cadre = (cadre_id, unit, assigned_on or plan.registered_on or today)
    # coordinates
    lat_given, lon_given = _text(row.get("latitude")) is not None, _text(row.get("longitude")) is not None
    lat = cell("latitude", lambda: _float(row.get("latitude"), "latitude"))
    lon = cell("longitude", lambda: _float(row.get("longitude"), "longitude"))
    if lat_given != lon_given:
        add("longitude" if lat_given else "latitude", "give both latitude and longitude", "missing_field")
    elif lat is not None and lon is not None:
        if not (3.0 <= lat <= 54.0 and 73.0 <= lon <= 136.0):
            add("latitude", "coordinates are outside China (latitude 3-54, longitude 73-136; swapped?)",
                "invalid_coordinates")
        else:
            plan.coordinates = (lat, lon)


def _check_member(row: Row, err: _Collector, today: date) -> tuple[MemberInput | None, str | None, str | None]:
    """Validate one member row; returns the member (None if invalid), its normalised ID number
    and its relation (when those are valid)."""
    bad = False

    def add(column: str, reason: str, code: str) -> None:
        nonlocal bad
        bad = True
        err.add(MEMBERS, row.row, column, reason, code)

    def cell(column: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except codes.CodeError as exc:
            add(column, str(exc), "invalid_code")
        except (CellError, identity.IdNumberError) as exc:
            add(column, str(exc), exc.code)
        except DomainError as exc:
            add(column, str(exc), exc.code)
        return None

    name = _text(row.get("name"))
    if name is None:
        add("name", "name is required", "missing_field")
    elif len(name) > 50:
        add("name", "name must be 1 to 50 characters", "invalid_name")
    relation = None
    if _text(row.get("relation")) is None:
        add("relation", "relation is required ('head' for the head of household, else a relation code)",
            "missing_field")
    else:
        relation = cell("relation", lambda: relation_of(row.get("relation")))
    birth_date = cell("birth_date", lambda: _date(row.get("birth_date")))
    sex = cell("sex", lambda: code_of("sex", row.get("sex")))
    raw_id = row.get("id_number")
    number = None
    if raw_id is None or (isinstance(raw_id, str) and not raw_id.strip()):
        add("id_number", "id_number is required", "missing_field")
    elif isinstance(raw_id, (int, float)) and not isinstance(raw_id, bool):
        add("id_number", "the ID number is stored as a number, which loses digits in Excel: "
                         "format the column as text and enter the 18 characters again", "id_format")
    elif re.match(r"^\d(\.\d+)?[eE]\+?\d+$", str(raw_id).strip()):
        add("id_number", f"{str(raw_id).strip()!r} is an ID number Excel turned into scientific notation: "
                         "format the column as text and enter the 18 characters again", "id_format")
    else:
        rid = cell("id_number", lambda: identity.validate_id_number(str(raw_id), birth_date, today=today))
        if rid is not None:
            number = rid.number
            if sex is not None and sex != rid.sex:
                add("sex", f"sex {sex} does not match the ID number ({rid.sex})", "id_sex_mismatch")
    phone = _text(row.get("phone"))
    if phone is not None:
        phone = cell("phone", lambda: identity.validate_phone(phone))
    ethnicity = _text(row.get("ethnicity"))
    if ethnicity is not None and len(ethnicity) > 20:
        add("ethnicity", "ethnicity is longer than 20 characters", "invalid_value")
    profile: dict[str, Any] = {}
    for column, list_name in MEMBER_CODES.items():
        value = cell(column, lambda c=column, n=list_name: code_of(n, row.get(c)))
        if value is not None:
            profile[column] = value
    for column, list_name in MEMBER_MULTI.items():
        value = cell(column, lambda c=column, n=list_name: codes_of(n, row.get(c)))
        if value:
            profile[column] = value
    months = cell("employment_months", lambda: _int(row.get("employment_months"), 0, 12, "employment_months"))
    if months is not None:
        profile["employment_months"] = months
    if bad:
        return None, number, relation
    return MemberInput(name=name, id_number=number, relation=relation, birth_date=birth_date, sex=sex,
                       phone=phone, ethnicity=ethnicity, profile=profile), number, relation


def check(parsed: ParsedFile, *, today: date | None = None) -> Validation:
    """Everything that can be checked without the database."""
    today = today or date.today()
    err = _Collector()
    err.errors.extend(parsed.errors)
    file_errors = bool(parsed.errors) and any(e.code in ("missing_sheet", "missing_column", "missing_header",
                                                        "duplicate_column") for e in parsed.errors)
    plans: list[HouseholdPlan] = []
    by_key: dict[tuple[str, str], HouseholdPlan] = {}
    by_no: dict[str, list[HouseholdPlan]] = {}
    for row in parsed.households:
        no = _text(row.get("household_no"))
        village = _text(row.get("village_code"))
        plan = HouseholdPlan(row.row, no or "", village or "", "")
        plans.append(plan)
        if no is None:
            err.add(HOUSEHOLDS, row.row, "household_no", "household_no is required", "missing_field", plan)
        elif len(no) > 40:
            err.add(HOUSEHOLDS, row.row, "household_no", "household_no is longer than 40 characters",
                    "invalid_value", plan)
        if village is None:
            err.add(HOUSEHOLDS, row.row, "village_code", "village_code is required", "missing_field", plan)
        elif not re.match(r"^[0-9]{12}$", village):
            err.add(HOUSEHOLDS, row.row, "village_code", f"{village!r} is not a 12-digit village code",
                    "invalid_village_code", plan)
        _check_household(row, plan, err, today)
        if no is not None and village is not None:
            plan.household_id = household_id_for(village, no)
            first = by_key.get((village, no))
            if first is not None:
                err.add(HOUSEHOLDS, row.row, "household_no",
                        f"household {no} of village {village} is already in row {first.row}",
                        "duplicate_household", plan)
                first.invalid = True
            else:
                by_key[(village, no)] = plan
                by_no.setdefault(no, []).append(plan)

    seen_ids: dict[str, tuple[int, HouseholdPlan | None]] = {}
    for row in parsed.members:
        member, number, relation = _check_member(row, err, today)
        no = _text(row.get("household_no"))
        village = _text(row.get("village_code"))
        plan = None
        if no is None:
            err.add(MEMBERS, row.row, "household_no", "household_no is required", "missing_field")
        else:
            if village is None and len(by_no.get(no, [])) == 1:
                plan = by_no[no][0]
            elif village is None:
                err.add(MEMBERS, row.row, "village_code", "village_code is required", "missing_field")
            else:
                plan = by_key.get((village, no))
            if plan is None and village is not None:
                err.add(MEMBERS, row.row, "household_no",
                        f"household {no} of village {village} is not in the households sheet", "unknown_household")
        if plan is not None:
            plan.relations.append((row.row, relation))
            if member is None:
                plan.invalid = True
            else:
                plan.members.append(MemberPlan(row.row, member))
        if number is not None:
            prior = seen_ids.get(number)
            if prior is not None:
                err.add(MEMBERS, row.row, "id_number",
                        f"the same ID number {identity.mask_id_number(number)} is already in members row {prior[0]}",
                        "duplicate_id_in_file", plan)
                if prior[1] is not None:
                    prior[1].invalid = True
            else:
                seen_ids[number] = (row.row, plan)

    for plan in plans:
        if not plan.household_id:
            continue
        if not plan.relations:
            err.add(HOUSEHOLDS, plan.row, None, "the household has no members in the members sheet",
                    "no_members", plan)
            continue
        heads = [r for r, relation in plan.relations if relation == codes.HEAD_RELATION]
        unknown = any(relation is None for _, relation in plan.relations)
        if not heads and not unknown:
            err.add(HOUSEHOLDS, plan.row, "household_no",
                    "the household has no head (one member needs relation 'head' / 户主)", "one_head", plan)
        for extra in heads[1:]:
            err.add(MEMBERS, extra, "relation",
                    f"a second head for household {plan.household_no} (the head is in members row {heads[0]})",
                    "one_head", plan)
        if len(plan.relations) > MAX_MEMBERS_PER_HOUSEHOLD:
            err.add(HOUSEHOLDS, plan.row, None, f"a household has at most {MAX_MEMBERS_PER_HOUSEHOLD} members",
                    "too_many_members", plan)
    if file_errors:
        for plan in plans:
            plan.invalid = True
    return Validation(plans, _sorted(err.errors), file_errors, len(parsed.members))


def _sorted(errors: list[RowError]) -> list[RowError]:
    order = {FILE: 0, HOUSEHOLDS: 1, MEMBERS: 2}
    return sorted(errors, key=lambda e: (order.get(e.sheet, 3), e.row))


async def validate(parsed: ParsedFile, conn: Any = None, *, hmac_key: bytes | None = None,
                   today: date | None = None, covers: Callable[[str], bool] | None = None) -> Validation:
    """Validate the whole file. With a connection, also: unknown villages, villages the importer's
    jurisdiction does not ``covers``, households already imported, and persons already active in
    another household (needs ``hmac_key``)."""
    result = check(parsed, today=today)
    if conn is None:
        return result
    err = _Collector()
    # villages
    known: dict[str, str | None] = {}
    for plan in result.plans:
        code = plan.village_code
        if not code or not re.match(r"^[0-9]{12}$", code):
            continue
        if code not in known:
            try:
                await regions.require_village(conn, code)
                known[code] = None
            except regions.RegionError as exc:
                known[code] = str(exc)
        if known[code] is not None:
            err.add(HOUSEHOLDS, plan.row, "village_code", known[code], "unknown_village", plan)
        elif covers is not None and not covers(code):
            err.add(HOUSEHOLDS, plan.row, "village_code", f"village {code} is outside the importer's jurisdiction",
                    "outside_jurisdiction", plan)
    # already imported
    ids = [p.household_id for p in result.plans if p.household_id]
    if ids:
        rows = await conn.fetch("SELECT stream_id FROM events WHERE stream_id = ANY($1::text[]) AND version = 1",
                                ids)
        result.already_imported = {r["stream_id"] for r in rows}
    # persons active in another household
    if hmac_key is not None:
        by_hmac: dict[str, tuple[HouseholdPlan, MemberPlan]] = {}
        for plan in result.plans:
            if plan.household_id in result.already_imported:
                continue
            for m in plan.members:
                by_hmac[identity.id_hmac(hmac_key, m.member.id_number)] = (plan, m)
        keys = list(by_hmac)
        for start in range(0, len(keys), 5000):
            rows = await conn.fetch(
                "SELECT p.id_hmac, p.household_id::text AS household_id, h.village_code::text AS village_code"
                " FROM active_persons p LEFT JOIN ledger_households h USING (household_id)"
                " WHERE p.id_hmac = ANY($1::bpchar[])", keys[start:start + 5000])
            for r in rows:
                plan, m = by_hmac[r["id_hmac"].strip()]
                if r["household_id"] != plan.household_id:
                    # the other household is named only to an importer who may see it
                    where = (f"household {r['household_id']}" if covers is None or
                             (r["village_code"] is not None and covers(r["village_code"]))
                             else "a household outside your jurisdiction")
                    err.add(MEMBERS, m.row, "id_number",
                            f"{identity.mask_id_number(m.member.id_number)} already belongs to {where}",
                            "duplicate_person", plan)
    result.errors = _sorted(result.errors + err.errors)
    return result


# -- report -------------------------------------------------------------------------

def _now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class ImportReport:
    import_id: str
    file_name: str | None
    format: str | None
    sha256: str | None
    skip_invalid: bool
    status: str = "running"  # imported | partial | rejected | failed
    households_in_file: int = 0
    members_in_file: int = 0
    households_imported: int = 0
    members_imported: int = 0
    households_skipped: int = 0
    members_skipped: int = 0
    households_already_imported: int = 0
    errors: list[RowError] = field(default_factory=list)
    already_imported: list[dict[str, Any]] = field(default_factory=list)
    started_at: datetime = field(default_factory=_now)
    finished_at: datetime | None = None

    @property
    def rejected(self) -> bool:
        return self.status == "rejected"

    def to_json(self, max_errors: int | None = None) -> dict[str, Any]:
        errors = self.errors if max_errors is None else self.errors[:max_errors]
        return {
            "import_id": self.import_id, "file_name": self.file_name, "format": self.format,
            "sha256": self.sha256, "skip_invalid": self.skip_invalid, "status": self.status,
            "counts": {
                "households_in_file": self.households_in_file, "members_in_file": self.members_in_file,
                "households_imported": self.households_imported, "members_imported": self.members_imported,
                "households_skipped": self.households_skipped, "members_skipped": self.members_skipped,
                "households_already_imported": self.households_already_imported,
                "errors": len(self.errors),
            },
            "errors": [e.to_json() for e in errors],
            "errors_truncated": len(errors) < len(self.errors),
            "already_imported": self.already_imported,
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
        }

    def errors_csv(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\r\n")
        w.writerow(["sheet", "row", "column", "reason", "code"])
        for e in self.errors:
            w.writerow([e.sheet, e.row, e.column or "", e.reason, e.code])
        for a in self.already_imported:
            w.writerow([HOUSEHOLDS, a["row"], "household_no", "already imported", "already_imported"])
        return buf.getvalue()

    def summary(self) -> str:
        return (f"{self.status}: {self.households_imported} household(s) with {self.members_imported} member(s) "
                f"imported, {self.households_already_imported} already imported, {self.households_skipped} "
                f"skipped, {len(self.errors)} error(s) (file: {self.households_in_file} households, "
                f"{self.members_in_file} members)")


# -- import -------------------------------------------------------------------------

Progress = Callable[[str, int, int], None]


async def _record_start(pool: Any, report: ImportReport, actor: str | None, size: int) -> None:
    await pool.execute(
        "INSERT INTO imports (import_id, file_name, file_format, file_sha256, file_size, skip_invalid, actor,"
        " status, started_at) VALUES ($1, $2, $3, $4, $5, $6, $7, 'running', $8)",
        uuid.UUID(report.import_id), report.file_name, report.format, report.sha256, size, report.skip_invalid,
        actor, report.started_at)


async def _record_finish(pool: Any, report: ImportReport) -> None:
    await pool.execute(
        "UPDATE imports SET status = $2, file_format = $3, file_sha256 = $4, households_in_file = $5,"
        " members_in_file = $6, households_imported = $7, members_imported = $8, households_skipped = $9,"
        " households_already_imported = $10, error_count = $11, report = $12::jsonb, finished_at = $13"
        " WHERE import_id = $1",
        uuid.UUID(report.import_id), report.status, report.format, report.sha256, report.households_in_file,
        report.members_in_file, report.households_imported, report.members_imported, report.households_skipped,
        report.households_already_imported, len(report.errors),
        json.dumps(report.to_json(max_errors=STORED_ERRORS), ensure_ascii=False), report.finished_at)


async def get_import(pool: Any, import_id: str) -> dict[str, Any] | None:
    row = await pool.fetchrow(
        "SELECT import_id::text, file_name, file_format, file_sha256, file_size, skip_invalid, actor, status,"
        " report, started_at, finished_at FROM imports WHERE import_id = $1", uuid.UUID(import_id))
    if row is None:
        return None
    report = row["report"]
    if isinstance(report, str):
        report = json.loads(report)
    if report is None:  # still running (or the process died)
        report = {"import_id": row["import_id"], "file_name": row["file_name"], "format": row["file_format"],
                  "sha256": row["file_sha256"], "skip_invalid": row["skip_invalid"], "status": row["status"],
                  "started_at": row["started_at"].isoformat(), "finished_at": None}
    report["actor"] = row["actor"]
    report["file_size"] = row["file_size"]
    return report


def _member_row(plan: HouseholdPlan, field_name: str | None) -> tuple[str, int, str | None]:
    """Map a DomainError's field (``members[2].id_number``) back to the sheet cell."""
    if field_name:
        m = re.match(r"^members\[(\d+)\]\.(\w+)$", field_name)
        if m and int(m.group(1)) < len(plan.members):
            return MEMBERS, plan.members[int(m.group(1))].row, m.group(2)
        if field_name == "members":
            return HOUSEHOLDS, plan.row, None
        return HOUSEHOLDS, plan.row, field_name
    return HOUSEHOLDS, plan.row, None


def _registration(plan: HouseholdPlan) -> dict[str, Any]:
    """The registration command's arguments for a household of the file."""
    return {"village_code": plan.village_code, "address": plan.address, "attribute": plan.attribute,
            "identification_standard": plan.identification_standard, "registered_on": plan.registered_on,
            "members": [m.member for m in plan.members], "status": plan.status,
            "household_id": plan.household_id}


def _record_facts(household: Household, plan: HouseholdPlan) -> bool:
    """Raise the events of the optional facts recorded with the registration; False when there are none."""
    if plan.causes is not None:
        household.record_causes(*plan.causes)
    if plan.income is not None:
        household.assess_income(plan.income[0], {k: str(v) for k, v in plan.income[1].items()})
    if plan.cadre is not None:
        household.assign_cadre(*plan.cadre)
    if plan.coordinates is not None:
        household.set_coordinates(*plan.coordinates)
    return any(x is not None for x in (plan.causes, plan.income, plan.cadre, plan.coordinates))


async def _write_household(registry: Registry, conn: Any, plan: HouseholdPlan, meta: Metadata) -> None:
    """One household the way the API registers one: registration, then its facts (two appends)."""
    household, _ = await registry.register_household(conn, meta=meta, **_registration(plan))
    if _record_facts(household, plan):
        await registry.households.save(household, meta, conn=conn)


def _build_batch(registry: Registry, batch: list[HouseholdPlan]) -> list[tuple[Household, list[dict[str, Any]]]]:
    """The households of a batch with the events ``_write_household`` writes, pending (no I/O)."""
    registrations = []
    for plan in batch:
        household, persons = registry.new_household(**_registration(plan))
        _record_facts(household, plan)
        registrations.append((household, persons))
    return registrations


async def import_file(
    registry: Registry, pool: Any, data: bytes, *, file_name: str | None = None, fmt: str | None = None,
    skip_invalid: bool = False, actor: str | None = None, batch_size: int = BATCH_SIZE,
    progress: Progress | None = None, today: date | None = None, import_id: str | None = None,
    correlation_id: str | None = None, max_bytes: int | None = MAX_FILE_BYTES,
    covers: Callable[[str], bool] | None = None, bulk: bool = True,
) -> ImportReport:
    """Parse, validate and import a file; the report says what happened.

    ``batch_size`` households are written per transaction; ``bulk=False`` writes them one by one
    (as a batch that fails is written), for comparison.
    Raises ImportFileError when the file cannot be read at all (nothing is recorded then).
    """
    report = ImportReport(import_id or str(uuid.uuid4()), file_name, None, hashlib.sha256(data).hexdigest(),
                          skip_invalid)
    parsed = await asyncio.to_thread(parse, data, fmt, file_name=file_name, max_bytes=max_bytes)
    report.format = parsed.format
    await _record_start(pool, report, actor, len(data))
    try:
        if progress:
            progress("validating", 0, len(parsed.households))
        async with pool.acquire() as conn:
            result = await validate(parsed, conn, hmac_key=registry.hmac_key, today=today, covers=covers)
        report.households_in_file = len(result.plans)
        report.members_in_file = result.members_in_file
        report.errors = list(result.errors)
        already = [p for p in result.plans if p.household_id in result.already_imported]
        report.already_imported = [{"row": p.row, "household_no": p.household_no, "village_code": p.village_code,
                                    "household_id": p.household_id} for p in already]
        report.households_already_imported = len(already)
        todo = [p for p in result.valid if p.household_id not in result.already_imported]
        skipped = [p for p in result.plans if p.invalid and p.household_id not in result.already_imported]
        if result.file_errors or (report.errors and not skip_invalid):
            report.status = "rejected"
            report.households_skipped = len(todo) + len(skipped)
            report.members_skipped = sum(len(p.relations) for p in todo + skipped)
            return report
        report.households_skipped = len(skipped)
        report.members_skipped = sum(len(p.relations) for p in skipped)
        meta = Metadata(actor=actor, correlation_id=correlation_id or report.import_id)
        done = 0
        if progress:
            progress("importing", 0, len(todo))
        villages: set[str] = set()  # found by a batch of this import: not looked up again
        for start in range(0, len(todo), max(1, batch_size)):
            batch = todo[start:start + max(1, batch_size)]
            await _import_batch(registry, pool, batch, meta, report, bulk=bulk, villages=villages)
            done += len(batch)
            if progress:
                progress("importing", done, len(todo))
        if report.errors:
            report.status = "partial"
        else:
            report.status = "imported"
        return report
    except BaseException:
        report.status = "failed"
        raise
    finally:
        report.finished_at = _now()
        await asyncio.shield(_record_finish(pool, report))


Outcome = tuple[HouseholdPlan, str, Any]  # (plan, imported | already | error, RowError of an error)


async def _import_batch(registry: Registry, pool: Any, batch: list[HouseholdPlan], meta: Metadata,
                        report: ImportReport, *, bulk: bool = True, villages: set[str] | None = None) -> None:
    """Write the batch in bulk (one transaction, a few statements). When that fails for any reason
    (a person or household registered since the validation, ...), nothing of it is written and its
    households are written one by one, which finds and reports the failing ones."""
    outcomes = await _try_bulk(registry, pool, batch, meta, villages) if bulk else None
    if outcomes is None:
        outcomes = []
        for start in range(0, len(batch), ONE_BY_ONE_BATCH_SIZE):
            outcomes += await _import_one_by_one(registry, pool, batch[start:start + ONE_BY_ONE_BATCH_SIZE],
                                                 meta)
    for plan, outcome, detail in outcomes:
        if outcome == "imported":
            report.households_imported += 1
            report.members_imported += len(plan.members)
        elif outcome == "already":
            report.households_already_imported += 1
            report.already_imported.append({"row": plan.row, "household_no": plan.household_no,
                                            "village_code": plan.village_code, "household_id": plan.household_id})
        else:
            report.households_skipped += 1
            report.members_skipped += len(plan.members)
            report.errors.append(detail)


async def _try_bulk(registry: Registry, pool: Any, batch: list[HouseholdPlan], meta: Metadata,
                    villages: set[str] | None = None) -> list[Outcome] | None:
    """The batch in one transaction; None (and nothing written) when it fails."""
    try:
        registrations = _build_batch(registry, batch)
        async with pool.acquire() as conn:
            async with conn.transaction():
                await registry.register_households(conn, registrations, meta, villages=villages)
    except Exception as exc:  # noqa: BLE001 - written one by one, which reports the failing households
        log.info("a batch of %d households is written one by one after %s", len(batch), type(exc).__name__)
        return None
    return [(plan, "imported", None) for plan in batch]


async def _import_one_by_one(registry: Registry, pool: Any, batch: list[HouseholdPlan], meta: Metadata
                             ) -> list[Outcome]:
    """One transaction for the batch, one savepoint per household (a failing household is rolled
    back alone and reported). An unexpected error aborts the batch, which is retried one household
    per transaction."""
    outcomes: list[Outcome] = []
    try:
        async with pool.acquire() as conn:
            async with conn.transaction():
                for plan in batch:
                    outcomes.append(await _try_household(registry, conn, plan, meta))
    except Exception:
        outcomes = []
        for plan in batch:
            try:
                async with pool.acquire() as conn:
                    async with conn.transaction():
                        outcomes.append(await _try_household(registry, conn, plan, meta))
            except Exception as exc:  # noqa: BLE001 - reported per household
                outcomes.append((plan, "error", RowError(HOUSEHOLDS, plan.row, None,
                                                         f"import failed: {type(exc).__name__}: {exc}",
                                                         "import_failed")))
    return outcomes


async def _try_household(registry: Registry, conn: Any, plan: HouseholdPlan, meta: Metadata) -> Outcome:
    import asyncpg

    try:
        async with conn.transaction():  # savepoint
            await _write_household(registry, conn, plan, meta)
        return plan, "imported", None
    except ConcurrencyError:
        return plan, "already", None  # imported concurrently (same deterministic id)
    except asyncpg.UniqueViolationError:
        return plan, "already", None  # its persons were claimed concurrently by the same household id
    except DomainError as exc:
        if exc.code == "duplicate_person" and exc.details.get("household_id") == plan.household_id:
            return plan, "already", None
        sheet, row, column = _member_row(plan, exc.details.get("field"))
        return plan, "error", RowError(sheet, row, column, str(exc), exc.code)

