"""Subsidy records from other departments (quarterly import): reading and checking a file.

Departments pay poor households through their own systems (education: student
aid; civil affairs: minimum-living allowance, temporary assistance; health
insurance: premium subsidies, medical assistance; ...) and send the platform, each
quarter, what they paid. Each accepted row becomes a department payment in the
funds service (``DepartmentPaymentRecorded``, see ``services/funds/subsidy_api.py``)
so that the household's funds, the village disclosure and the anomaly rules
(deceased or departed member, removed household, duplicate period, above the
standard) see everything the household received.

Pure functions, no I/O: :func:`parse_subsidy_file` reads the file and checks every
row on its own; matching rows to the register, the jurisdiction, references already
recorded and writing are the API's (``subsidy_api``).

File format
-----------
CSV or XLSX, one row per payment, a header in row 1. A header is the English key,
the Chinese label or an alias, or both as ``key label``; unknown columns (a name
column, for instance) are ignored and never read.

* ``id_number`` 身份证号: the beneficiary's 18-character resident ID number; or
* ``household_id`` 户编号 and/or ``member_id`` 成员编号: the register's ids (a
  household id alone for a policy paid per household). A row names its person
  one way, not both;
* ``policy_code`` 政策代码 (required): a policy of the catalogue (``GET /policies``)
  the department pays, or a department policy (``DEPARTMENT_POLICIES``);
* ``amount`` 金额 (required): yuan, at most 2 decimals, positive (``1,250.00``,
  ``¥310`` and ``310元`` are read too);
* ``paid_on`` 发放日期 (required): within the quarter and not in the future
  (``2025-03-05``, ``2025/3/5``, ``2025年3月5日``, ``20250305`` or a date cell);
* ``channel`` 发放渠道 (required): ``one_card`` 一卡通, ``student_aid_card``
  学生资助卡 or ``bank_transfer`` 银行转账 (one a catalogue policy allows);
* ``reference`` 业务流水号 (required): the department's own payment id, up to 64
  characters, unique per department (once in the file);
* ``period`` 所属期间 (optional): the period the payment is for, ``YYYY``,
  ``YYYY-S1``/``YYYY-S2`` (per-year policies) or ``YYYY-MM`` (per-month); by default
  the period of ``paid_on`` in the policy's form (its month, its year).

CSV is UTF-8 (with or without BOM), UTF-16 with a BOM or GB 18030, comma- or
tab-separated; in a workbook the sheet named ``subsidies`` (or 补贴, 发放明细) is read, else the first.
Blank rows are skipped; rows are numbered as a spreadsheet shows them (the header
is row 1). Every problem is reported with its row, column, code and message.

Departments and their policies
------------------------------
A department sends only the policies it pays (``DEPARTMENTS``): catalogue
policies by code prefix (education ``edu_``, civil affairs ``minimum_living_``,
health insurance ``health_``, housing ``house_``, development and reform
``relocation_``; a province adding catalogue policies keeps these prefixes), and
the department policies below, which are not platform entitlements and have no
platform standard (the amount is the department's):

* ``insurance_premium_subsidy`` 城乡居民医保参保资助 (per person and year; health
  insurance and civil affairs both fund it, which is where double payments happen);
* ``medical_assistance`` 医疗救助 (per case; health insurance, civil affairs);
* ``extreme_poverty_support`` 特困人员救助供养金 (per person and month; civil affairs);
* ``temporary_assistance`` 临时救助 (per household, per case; civil affairs);
* ``public_welfare_job`` 公益性岗位补贴 (per person and month; human resources);
* ``migrant_transport_subsidy`` 外出务工交通补助 (per person and year; human resources).

Assistance paid per case has no entitlement group and is not checked for
duplicate periods (two hospital stays in one month are two payments).

Personal data
-------------
ID numbers are never kept: a row's number is checked (shape, check character,
birth date) and replaced at once by its keyed hash (``hasher``, the registry's
HMAC-SHA256 of the normalised number, which ``MemberAdded.id_hmac`` carries) and
its masked form; messages show masked numbers only. Names are not read.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal, InvalidOperation
from types import MappingProxyType
from typing import Any

from contracts.funds import DEPARTMENT_PATTERN, PAYMENT_CHANNELS, QUARTER_PATTERN
from contracts.masking import mask_id_number
from eventkit import sheets
from eventkit.errors import DomainError

from .policies import UNIT_PERIODS, Catalogue, Period, Policy, parse_period

MAX_ROWS = 100_000
MAX_FILE_BYTES = 20 * 1024 * 1024
MAX_REFERENCE_LENGTH = 64
MAX_AMOUNT = Decimal("9999999999.99")
SHEET_NAMES = ("subsidies", "subsidy", "补贴", "补贴发放", "发放明细", "补贴明细")

Hasher = Callable[[str], str]


# -- departments and their policies ------------------------------------------------------

@dataclass(frozen=True)
class DepartmentPolicy:
    """A subsidy a department pays that is not an entitlement of the catalogue (no platform standard)."""

    code: str
    name: str
    label_zh: str
    paid_to: str                  # member | household
    unit: str | None              # per_year | per_month; None: per case
    departments: frozenset[str]

    @property
    def group(self) -> str | None:
        return None if self.unit is None else self.code


DEPARTMENT_POLICIES: Mapping[str, DepartmentPolicy] = MappingProxyType({p.code: p for p in (
    DepartmentPolicy("insurance_premium_subsidy", "Basic medical insurance premium subsidy", "城乡居民医保参保资助",
                     "member", "per_year", frozenset({"health_insurance", "civil_affairs"})),
    DepartmentPolicy("medical_assistance", "Medical assistance", "医疗救助", "member", None,
                     frozenset({"health_insurance", "civil_affairs"})),
    DepartmentPolicy("extreme_poverty_support", "Extreme-poverty support", "特困人员救助供养金", "member",
                     "per_month", frozenset({"civil_affairs"})),
    DepartmentPolicy("temporary_assistance", "Temporary assistance", "临时救助", "household", None,
                     frozenset({"civil_affairs"})),
    DepartmentPolicy("public_welfare_job", "Public-welfare job subsidy", "公益性岗位补贴", "member", "per_month",
                     frozenset({"human_resources"})),
    DepartmentPolicy("migrant_transport_subsidy", "Transport subsidy for migrant work", "外出务工交通补助",
                     "member", "per_year", frozenset({"human_resources"})),
)})
"""Department policies by code (see the module docstring)."""


@dataclass(frozen=True)
class Department:
    code: str
    label_zh: str
    catalogue_prefixes: tuple[str, ...]


DEPARTMENTS: Mapping[str, Department] = MappingProxyType({d.code: d for d in (
    Department("education", "教育部门", ("edu_",)),
    Department("civil_affairs", "民政部门", ("minimum_living_",)),
    Department("health_insurance", "医疗保障部门", ("health_",)),
    Department("human_resources", "人力资源和社会保障部门", ()),
    Department("housing", "住房和城乡建设部门", ("house_",)),
    Department("development_reform", "发展和改革部门", ("relocation_",)),
)})
"""The departments that send subsidy records, with the catalogue policies they pay (by code prefix)."""

for _d in DEPARTMENTS:  # the contract's pattern is the namespace of the ledger's department accounts
    assert re.fullmatch(DEPARTMENT_PATTERN, _d), _d
for _p in DEPARTMENT_POLICIES.values():
    assert _p.departments <= set(DEPARTMENTS), _p.code


def check_department(department: object) -> Department:
    if isinstance(department, str) and department in DEPARTMENTS:
        return DEPARTMENTS[department]
    raise DomainError("unknown_department", f"department must be one of {', '.join(DEPARTMENTS)}",
                      field="department", allowed=list(DEPARTMENTS))


@dataclass(frozen=True)
class Terms:
    """How a policy is paid, as a record needs it: from the catalogue or a department policy."""

    code: str
    paid_to: str                        # member | household
    unit: str | None                    # per_year | per_month | once; None: per case
    group: str | None                   # None: per case (no duplicate rule)
    default_form: str                   # year | semester | month
    forms: tuple[str, ...]              # period forms a record may name
    channels: tuple[str, ...] | None    # None: any channel
    policy: Policy | None = None        # the catalogue policy (standard, versions)

    def period_of(self, paid_on: date) -> str:
        if self.default_form == "month":
            return f"{paid_on:%Y-%m}"
        if self.default_form == "semester":
            return f"{paid_on.year}-S{1 if paid_on.month <= 6 else 2}"
        return str(paid_on.year)


def policy_terms(catalogue: Catalogue, department: str, code: str) -> Terms:
    """The terms of ``code`` for ``department``: ``unknown_policy`` when it is neither in the catalogue nor a
    department policy, ``policy_not_for_department`` when the department does not pay it."""
    dept = check_department(department)
    if code in catalogue:
        policy = catalogue[code]
        if not dept.catalogue_prefixes or not code.startswith(dept.catalogue_prefixes):
            raise DomainError("policy_not_for_department", f"policy {code} is not paid by the {department} "
                              "department", field="policy_code")
        form = "year" if policy.period == "once" else policy.period
        forms = ("year",) if policy.unit == "once" else UNIT_PERIODS[policy.unit]
        return Terms(code, policy.paid_to, policy.unit, policy.group, form, forms, policy.channels, policy)
    if code in DEPARTMENT_POLICIES:
        dp = DEPARTMENT_POLICIES[code]
        if department not in dp.departments:
            raise DomainError("policy_not_for_department", f"policy {code} is not paid by the {department} "
                              "department", field="policy_code")
        if dp.unit is None:
            return Terms(code, dp.paid_to, None, None, "month", ("month",), None)
        forms = UNIT_PERIODS[dp.unit]
        return Terms(code, dp.paid_to, dp.unit, dp.group, forms[0], forms, None)
    raise DomainError("unknown_policy", f"unknown policy {code!r}: not in the catalogue (GET /policies) nor a "
                      "department policy", field="policy_code")


# -- quarters ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Quarter:
    text: str
    start: date
    end: date  # inclusive


def parse_quarter(text: object) -> Quarter:
    """``2025-Q1`` -> 2025-01-01 .. 2025-03-31; ``invalid_quarter`` (422) otherwise."""
    if not isinstance(text, str) or not re.fullmatch(QUARTER_PATTERN, text) or not 2000 <= int(text[:4]) <= 2100:
        raise DomainError("invalid_quarter", f"quarter must look like 2025-Q1, not {str(text)[:20]!r}",
                          field="quarter")
    year, q = int(text[:4]), int(text[-1])
    start = date(year, 3 * q - 2, 1)
    end = (date(year + 1, 1, 1) if q == 4 else date(year, 3 * q + 1, 1)) - timedelta(days=1)
    return Quarter(text, start, end)


# -- the parsed file ---------------------------------------------------------------------

@dataclass(frozen=True)
class SubsidyRow:
    """One valid row: the person as a keyed hash (``id_hmac``) or the register's ids, never an ID number."""

    row: int
    policy_code: str
    terms: Terms
    period: str
    amount: Decimal
    paid_on: date
    channel: str
    reference: str
    id_hmac: str | None = None
    id_masked: str | None = None
    household_id: str | None = None
    member_id: str | None = None

    @property
    def person_column(self) -> str:
        return "id_number" if self.id_hmac else "member_id" if self.member_id else "household_id"


@dataclass
class SubsidyBatch:
    """A parsed file: the valid rows and the errors (``row``, ``column``, ``code``, ``message``)."""

    format: str
    sha256: str
    rows: int = 0  # non-blank data rows read
    records: list[SubsidyRow] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


Column = sheets.Column

COLUMNS: tuple[Column, ...] = (
    Column("id_number", "身份证号", False, ("身份证号码", "公民身份号码", "证件号码", "身份证")),
    Column("household_id", "户编号", False, ("户ID", "家庭编号")),
    Column("member_id", "成员编号", False, ("成员ID", "人员编号")),
    Column("policy_code", "政策代码", True, ("项目代码", "补贴项目代码", "政策编码")),
    Column("amount", "金额", True, ("发放金额", "补贴金额", "金额（元）", "金额(元)")),
    Column("paid_on", "发放日期", True, ("支付日期", "发放时间")),
    Column("channel", "发放渠道", True, ("发放方式", "支付渠道")),
    Column("reference", "业务流水号", True, ("流水号", "发放编号", "支付流水号")),
    Column("period", "所属期间", False, ("所属期", "补贴期间")),
)
_KEYS = {c.key for c in COLUMNS}
_LABELS = sheets.label_index(COLUMNS)
_ORDER = {c.key: i for i, c in enumerate(COLUMNS)}
PERSON_COLUMNS = ("id_number", "household_id", "member_id")

CHANNEL_NAMES: Mapping[str, str] = MappingProxyType({
    **{c: c for c in PAYMENT_CHANNELS},
    "一卡通": "one_card", "惠民惠农一卡通": "one_card", "惠民惠农财政补贴资金一卡通": "one_card", "社会保障卡": "one_card",
    "学生资助卡": "student_aid_card", "资助卡": "student_aid_card",
    "银行转账": "bank_transfer", "银行代发": "bank_transfer", "转账": "bank_transfer",
})
"""Channel codes and the Chinese names read for them."""


def _error(row: int | None, column: str | None, code: str, message: str) -> dict[str, Any]:
    return {"row": row, "column": column, "code": code, "message": message}


_file_error = sheets.file_field_error


# -- reading the file --------------------------------------------------------------------

def detect_format(data: bytes, hint: str | None) -> str:
    """``csv`` or ``xlsx``, from the first bytes (a workbook is a ZIP) and else the name or content type
    (anything but a workbook is read as CSV, unless its content type is plainly no table: an image, a
    PDF, JSON)."""
    return sheets.detect_format(data, hint, error=_file_error, strict=False, xls_is_csv=True)


# -- cell values -------------------------------------------------------------------------

_blank = sheets.blank
_text = sheets.plain_text
parse_date = sheets.cell_date


def parse_amount(value: Any) -> Decimal:
    """Yuan: a number cell, or text with at most 2 decimals (thousands separators, ¥ and 元 allowed).
    ValueError unless positive, at most 2 decimals and at most 9 999 999 999.99."""
    if isinstance(value, bool) or value is None:
        raise ValueError("not an amount")
    if isinstance(value, float):
        text = repr(value)
    else:
        text = unicodedata.normalize("NFKC", str(value)).strip()
        text = text.replace(",", "").replace("¥", "").replace("￥", "").removesuffix("元").strip()
    if not re.fullmatch(r"[0-9]+(?:\.[0-9]+)?", text):
        raise ValueError("not an amount")
    amount = Decimal(text)
    if amount != amount.quantize(Decimal("0.01")):
        raise ValueError("more than 2 decimals")
    if amount <= 0 or amount > MAX_AMOUNT:
        raise ValueError("not positive, or too large")
    return amount.quantize(Decimal("0.01"))


_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_CHECK = "10X98765432"


def check_id_number(raw: Any, today: date) -> tuple[str | None, str | None, str]:
    """(normalised number, None, "") for a valid resident ID number (GB 11643: shape, check character,
    birth date from 1900 to ``today``), else (None, error code, message). Messages never repeat the
    number."""
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        return None, "id_format", ("the ID number is stored as a number, which loses digits in Excel: format the "
                                   "column as text and enter the 18 characters again")
    number = unicodedata.normalize("NFKC", str(raw)).strip().upper()
    if re.fullmatch(r"\d(\.\d+)?E\+?\d+", number):
        return None, "id_format", ("the ID number was turned into scientific notation by Excel: format the "
                                   "column as text and enter the 18 characters again")
    if not re.fullmatch(r"[0-9]{17}[0-9X]", number):
        return None, "id_format", "an ID number is 17 digits followed by a digit or X"
    if _CHECK[sum(int(c) * w for c, w in zip(number[:17], _WEIGHTS)) % 11] != number[17]:
        return None, "id_check_digit", "the ID number's check character is wrong (a digit may be mistyped)"
    try:
        born = date(int(number[6:10]), int(number[10:12]), int(number[12:14]))
    except ValueError:
        return None, "id_birth_date", "the birth date in the ID number is not a real date"
    if not date(1900, 1, 1) <= born <= today:
        return None, "id_birth_date", "the birth date in the ID number is not between 1900 and today"
    return number, None, ""


def _uuid_text(raw: Any) -> str | None:
    try:
        return str(uuid.UUID(str(raw).strip()))
    except ValueError:
        return None


# -- checking rows -----------------------------------------------------------------------

def _check_row(n: int, values: dict[str, Any], *, quarter: Quarter, department: str, catalogue: Catalogue,
               today: date, hasher: Hasher | None, errors: list[dict[str, Any]]) -> SubsidyRow | None:
    bad = False

    def add(column: str | None, code: str, message: str) -> None:
        nonlocal bad
        bad = True
        errors.append(_error(n, column, code, message))

    # The person: an ID number, or the register's ids.
    id_hmac = id_masked = household_id = member_id = None
    raw_id = values.get("id_number")
    has_ids = not _blank(values.get("household_id")) or not _blank(values.get("member_id"))
    if not _blank(raw_id) and has_ids:
        add("id_number", "ambiguous_person", "name the person by id_number or by household_id/member_id, not both")
    elif not _blank(raw_id):
        number, code, message = check_id_number(raw_id, today)
        if number is None:
            add("id_number", code or "id_format", message)
        else:
            if hasher is None:
                raise DomainError("id_matching_unavailable", "this funds service cannot match ID numbers (it does "
                                  "not hold the registry's ID hashing key): name people by household_id and "
                                  "member_id", 503, field="id_number")
            id_hmac, id_masked = hasher(number), mask_id_number(number)
            if not isinstance(id_hmac, str):
                raise TypeError("the hasher must return a hex string")
            if number in id_hmac:
                raise ValueError("the hasher must return a keyed hash of its input, not the input")
    elif has_ids:
        for column in ("household_id", "member_id"):
            if not _blank(values.get(column)):
                value = _uuid_text(values[column])
                if value is None:
                    add(column, "invalid_id", f"{column} is not a register id (a UUID)")
                elif column == "household_id":
                    household_id = value
                else:
                    member_id = value
    else:
        add("id_number", "missing_field", "id_number (身份证号), or household_id (户编号) and member_id (成员编号), "
                                          "is required")

    # The policy, and who it is paid to.
    terms: Terms | None = None
    code = _text(values.get("policy_code"))
    if code is None:
        add("policy_code", "missing_field", "policy_code (政策代码) is required")
    else:
        try:
            terms = policy_terms(catalogue, department, code)
        except DomainError as exc:
            add("policy_code", exc.code, str(exc))
    if terms is not None and terms.paid_to == "member" and household_id is not None and member_id is None \
            and id_hmac is None:
        add("member_id", "member_required", f"policy {terms.code} is paid per person: give member_id or id_number")

    amount: Decimal | None = None
    if _blank(values.get("amount")):
        add("amount", "missing_field", "amount (金额) is required")
    else:
        try:
            amount = parse_amount(values["amount"])
        except (ValueError, InvalidOperation):
            add("amount", "invalid_amount", f"{(_text(values['amount']) or '')[:30]!r} is not a positive amount in "
                                            "yuan with at most 2 decimals")

    paid_on: date | None = None
    if _blank(values.get("paid_on")):
        add("paid_on", "missing_field", "paid_on (发放日期) is required")
    else:
        try:
            paid_on = parse_date(values["paid_on"])
        except ValueError:
            add("paid_on", "invalid_date", f"{(_text(values['paid_on']) or '')[:30]!r} is not a date (use "
                                           "YYYY-MM-DD, YYYY/M/D or YYYY年M月D日)")
        else:
            if paid_on > today:
                add("paid_on", "date_in_future", f"{paid_on} is in the future (today is {today})")
                paid_on = None
            elif not quarter.start <= paid_on <= quarter.end:
                add("paid_on", "paid_outside_quarter", f"{paid_on} is not in quarter {quarter.text} "
                                                       f"({quarter.start} to {quarter.end})")
                paid_on = None

    channel: str | None = None
    raw_channel = _text(values.get("channel"))
    if raw_channel is None:
        add("channel", "missing_field", "channel (发放渠道) is required")
    else:
        channel = CHANNEL_NAMES.get(raw_channel) or CHANNEL_NAMES.get(raw_channel.lower())
        if channel is None:
            add("channel", "invalid_channel", f"{raw_channel[:30]!r} is not a channel: one_card (一卡通), "
                                              "student_aid_card (学生资助卡) or bank_transfer (银行转账)")
        elif terms is not None and terms.channels is not None and channel not in terms.channels:
            add("channel", "channel_not_allowed", f"policy {terms.code} is paid through "
                                                  f"{', '.join(terms.channels)}, not {channel}")

    reference = _text(values.get("reference"))
    if reference is None:
        add("reference", "missing_field", "reference (业务流水号) is required")
    elif len(reference) > MAX_REFERENCE_LENGTH or not reference.isprintable():
        add("reference", "invalid_reference", f"a reference is at most {MAX_REFERENCE_LENGTH} printable characters")

    period: str | None = None
    raw_period = _text(values.get("period"))
    if terms is not None:
        if raw_period is None:
            period = terms.period_of(paid_on) if paid_on is not None else None
        else:
            try:
                parsed: Period = parse_period(raw_period.upper() if "s" in raw_period else raw_period)
            except DomainError:
                add("period", "invalid_period", f"{raw_period[:20]!r} is not a period (YYYY, YYYY-S1, YYYY-S2 "
                                                "or YYYY-MM)")
            else:
                if parsed.form not in terms.forms:
                    add("period", "invalid_period", f"policy {terms.code} is paid per "
                                                    f"{' or '.join(terms.forms)}, not per {parsed.form}")
                elif parsed.start > quarter.end:
                    add("period", "invalid_period", f"period {parsed.text} starts after quarter {quarter.text}")
                else:
                    period = parsed.text

    if bad or terms is None or amount is None or paid_on is None or channel is None or reference is None \
            or period is None:
        return None
    return SubsidyRow(row=n, policy_code=terms.code, terms=terms, period=period, amount=amount, paid_on=paid_on,
                      channel=channel, reference=reference, id_hmac=id_hmac, id_masked=id_masked,
                      household_id=household_id, member_id=member_id)


def parse_subsidy_file(data: bytes, hint: str | None, *, quarter: Quarter, department: str, catalogue: Catalogue,
                       today: date, hasher: Hasher | None) -> SubsidyBatch:
    """Read and check a file of subsidy records for ``department`` and ``quarter``.

    ``hint``: the uploaded file's name or content type (the first bytes decide when they can).
    ``hasher``: the keyed hash of a normalised ID number (None: this service cannot match ID
    numbers; a row with one raises ``id_matching_unavailable``, 503). ``today``: the China date.

    Row problems are in ``errors`` (and the row is left out); file problems raise DomainError:
    ``file_too_large`` (413), ``too_many_rows`` (413), ``unsupported_format`` (415), ``invalid_file``.
    """
    if not isinstance(data, (bytes, bytearray)):
        raise TypeError("data must be bytes")
    data = bytes(data)
    check_department(department)
    if len(data) > MAX_FILE_BYTES:
        raise _file_error("file_too_large", f"the file is larger than {MAX_FILE_BYTES // 2**20} MB",
                          max_bytes=MAX_FILE_BYTES)
    fmt = detect_format(data, hint)
    batch = SubsidyBatch(fmt, hashlib.sha256(data).hexdigest())
    rows = (sheets.csv_rows(data, error=_file_error) if fmt == "csv"
            else sheets.xlsx_rows(data, sheet_names=SHEET_NAMES, error=_file_error))

    _, header = next(rows, (1, None))
    if sheets.blank_row(header):
        batch.errors.append(_error(1, None, "missing_header", "the file is empty: row 1 must hold the column headers"))
        return batch
    index, problems = sheets.header_index(header, COLUMNS, keys=_KEYS, labels=_LABELS)
    batch.errors.extend(_error(1, key, code, message) for key, code, message in problems)
    if not set(PERSON_COLUMNS) & set(index.values()):
        batch.errors.append(_error(1, "id_number", "missing_column", "a column naming the person is required: "
                                   "id_number (身份证号), or household_id (户编号) and member_id (成员编号)"))
    if batch.errors:
        return batch

    data_rows: list[tuple[int, dict[str, Any]]] = []
    for n, values in sheets.records(rows, index):
        if len(data_rows) >= MAX_ROWS:
            raise _file_error("too_many_rows", f"the file has more than {MAX_ROWS} rows: split it",
                              max_rows=MAX_ROWS)
        data_rows.append((n, values))
    batch.rows = len(data_rows)
    if not data_rows:
        batch.errors.append(_error(None, None, "no_rows", "the file has no rows of payments"))
        return batch

    errors: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for n, values in data_rows:
        record = _check_row(n, values, quarter=quarter, department=department, catalogue=catalogue, today=today,
                            hasher=hasher, errors=errors)
        reference = _text(values.get("reference"))
        if reference is not None:
            if reference in seen:
                errors.append(_error(n, "reference", "duplicate_reference",
                                     f"reference {reference[:64]!r} is already in row {seen[reference]}"))
                continue
            seen[reference] = n
        if record is not None:
            batch.records.append(record)
    batch.errors = sorted(errors, key=lambda e: (e["row"] or 0, _ORDER.get(e["column"] or "", -1)))
    return batch


def fingerprint(household_id: str, member_id: str | None, row: SubsidyRow) -> str:
    """What a recorded payment says, to tell a re-sent record (same reference, same payment) from a
    conflicting one (same reference, another payment)."""
    text = "|".join((household_id, member_id or "", row.policy_code, row.period, f"{row.amount:.2f}",
                     row.paid_on.isoformat(), row.channel))
    return hashlib.sha256(text.encode()).hexdigest()


def template_csv() -> bytes:
    """An empty CSV template (UTF-8 with a BOM, so that Excel shows the Chinese labels)."""
    return sheets.write_csv([c.header for c in COLUMNS])
