"""Bulk comparison (大数据比对): other departments check resident ID numbers against the register.

A department's system (education, health insurance, civil affairs) sends a list
of resident ID numbers and a *purpose*; for every ID it learns whether the
person is in the poverty register, the household status and only the facts its
purpose allows (``PURPOSES``). Each purpose needs its own client scope
(``PURPOSE_SCOPES``, ``comparison:<purpose>``).

Pure domain code: no web framework, no database, no broker, no logging. The
application layer

1. checks the purpose against the caller's scopes (``check_purpose``,
   ``scope_for_purpose``);
2. calls :func:`prepare_ids` (a request body) or :func:`parse_id_file` and then
   :func:`prepare_ids` (an uploaded file for an asynchronous job) - at this point
   the plain ID numbers are hashed with the registry's key and dropped;
3. looks up ``Prepared.distinct_hmacs`` in ``ledger_members`` joined with
   ``ledger_households`` (in batches, see :func:`chunks`), building :class:`Match`
   objects;
4. calls :func:`answer`, which applies the purpose and the caller's jurisdiction,
   and records ``Answer.disclosed_household_ids`` in the access audit;
5. for a job, renders :func:`results_csv`.

Privacy rules applied here
--------------------------
* ID numbers are never kept: :class:`Prepared` holds only keyed hashes
  (``identity.id_hmac``) and masked forms, and neither its repr nor its attributes
  contain a full ID number. Results refer to inputs by position (``index``) and
  masked ID.
* A match outside the caller's jurisdiction is answered exactly like no match, so
  a county's department learns nothing about another county's residents.
* A member who is no longer active (removed, deceased) and a household that has
  left the register (status in ``LEFT_REGISTER_STATUSES``: wrongly identified and
  removed, natural decrease) count as "not in the register"; they too are answered
  exactly like no match.
* Facts the purpose does not allow are absent from the results (not ``null``).
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from datetime import date
from operator import mul
from types import MappingProxyType
from typing import Any, TypeVar

from contracts.gateway import SCOPES
from eventkit import sheets
from eventkit.errors import DomainError

from .domain import CLOSED
from .identity import (
    IdNumberError,
    mask_id_number,
    normalise_id_number,
    validate_id_number,
)

__all__ = [
    "FACTS",
    "LEFT_REGISTER_STATUSES",
    "LOOKUP_BATCH_SIZE",
    "MAX_FILE_BYTES",
    "MAX_IDS_PER_FILE",
    "MAX_IDS_PER_REQUEST",
    "PURPOSES",
    "PURPOSE_SCOPES",
    "Answer",
    "Match",
    "ParsedFile",
    "Prepared",
    "answer",
    "check_purpose",
    "chunks",
    "group_matches",
    "parse_id_file",
    "prepare_ids",
    "purpose_for_scope",
    "purposes_for_scopes",
    "result_columns",
    "results_csv",
    "scope_for_purpose",
]

# -- purposes --------------------------------------------------------------------------

FACTS: tuple[str, ...] = (
    "in_register", "household_status", "schooling_stage", "attribute", "monitoring_object_type",
    "minimum_living_tier",
)
"""Every fact a comparison can disclose, in output order."""

PURPOSES: Mapping[str, tuple[str, ...]] = MappingProxyType({
    # Education: tuition waivers and living allowances for pupils of registered households.
    "education": ("in_register", "household_status", "schooling_stage"),
    # Health insurance: premium subsidies and reimbursement rates depend on the household attribute.
    "health_insurance": ("in_register", "household_status", "attribute", "monitoring_object_type"),
    # Civil affairs: minimum-living allowance and extreme-poverty support.
    "civil_affairs": ("in_register", "household_status", "attribute", "minimum_living_tier"),
})
"""Purpose -> the facts it may learn (always starting with in_register and household_status)."""

PURPOSE_SCOPES: Mapping[str, str] = MappingProxyType({p: f"comparison:{p}" for p in PURPOSES})
"""Purpose -> the client scope a caller needs to compare for that purpose."""

_SCOPE_PURPOSES: Mapping[str, str] = MappingProxyType({s: p for p, s in PURPOSE_SCOPES.items()})

LEFT_REGISTER_STATUSES: frozenset[str] = frozenset(CLOSED)
"""Household statuses that mean the household has left the register: its members are
answered as "not in the register" (and nothing about them is disclosed)."""

MAX_IDS_PER_REQUEST = 100_000
"""ID numbers in one synchronous request (a JSON body of about 2.5 MB)."""
MAX_IDS_PER_FILE = 1_000_000
"""Data rows in one uploaded file for an asynchronous job (a county's whole school roll
or insured population fits; larger sets are split into several jobs)."""
MAX_FILE_BYTES = 64 * 1024 * 1024
"""Largest uploaded ID file (a 1 000 000-row CSV with a few extra columns is ~30 MB)."""
LOOKUP_BATCH_SIZE = 5_000
"""Suggested number of hashes per database look-up (see :func:`chunks`)."""

for _purpose, _facts in PURPOSES.items():  # guards against edits that break the contract
    assert PURPOSE_SCOPES[_purpose] in SCOPES, _purpose
    assert _facts[:2] == ("in_register", "household_status"), _purpose
    assert set(_facts) <= set(FACTS), _purpose


def check_purpose(purpose: object) -> str:
    """Return ``purpose`` if it is known; otherwise raise ``DomainError('invalid_purpose')`` (422)."""
    if isinstance(purpose, str) and purpose in PURPOSES:
        return purpose
    shown = purpose if isinstance(purpose, str) and len(purpose) <= 64 else type(purpose).__name__
    raise DomainError("invalid_purpose", f"unknown comparison purpose {shown!r}; "
                      f"allowed: {', '.join(PURPOSES)}", 422, allowed=list(PURPOSES))


def scope_for_purpose(purpose: str) -> str:
    """The scope a caller needs for ``purpose`` (raises ``invalid_purpose`` for an unknown one)."""
    return PURPOSE_SCOPES[check_purpose(purpose)]


def purpose_for_scope(scope: str) -> str | None:
    """The purpose a scope grants, or None when it is not a comparison scope."""
    return _SCOPE_PURPOSES.get(scope)


def purposes_for_scopes(scopes: Iterable[str]) -> list[str]:
    """The purposes a set of scopes grants, in ``PURPOSES`` order."""
    granted = {_SCOPE_PURPOSES[s] for s in scopes if s in _SCOPE_PURPOSES}
    return [p for p in PURPOSES if p in granted]


# -- preparing ID numbers --------------------------------------------------------------

_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ASCII_ZERO_SUM = ord("0") * sum(_WEIGHTS)  # weights applied to ASCII codes instead of digits
_CHECK_CHARS = "10X98765432"
_SHAPE = re.compile(r"[0-9]{17}[0-9X]")
_EARLIEST_BIRTH = date(1900, 1, 1)
_MIN_KEY_BYTES = 16


@dataclass(frozen=True, repr=False, eq=False)
class Prepared:
    """ID numbers validated and hashed, per input position (0-based).

    ``hmacs[i]`` is the keyed hash of input ``i`` (None when it is invalid),
    ``masked[i]`` its masked form and ``errors`` maps the positions of invalid inputs
    to their error code (``id_format``, ``id_check_digit``, ``id_birth_date``).
    ``distinct_hmacs`` lists every valid hash once, in first-seen order: the values to
    look up. No plain ID number is kept.
    """

    hmacs: tuple[str | None, ...]
    masked: tuple[str | None, ...]
    errors: Mapping[int, str]
    distinct_hmacs: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.hmacs)

    @property
    def count(self) -> int:
        return len(self.hmacs)

    @property
    def invalid_count(self) -> int:
        return len(self.errors)

    @property
    def valid_count(self) -> int:
        return len(self.hmacs) - len(self.errors)

    @property
    def duplicate_count(self) -> int:
        """Valid inputs that repeat an earlier input (answered again, looked up once)."""
        return self.valid_count - len(self.distinct_hmacs)

    def error_counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for code in self.errors.values():
            out[code] = out.get(code, 0) + 1
        return out

    def __repr__(self) -> str:  # counts only: a repr must stay small and say nothing about people
        return (f"Prepared(count={self.count}, valid={self.valid_count}, invalid={self.invalid_count}, "
                f"distinct={len(self.distinct_hmacs)})")


def _error_code(raw: object, today: date) -> str | None:
    """The authoritative error code of an input the fast path refused (None if it is valid after all)."""
    try:
        validate_id_number(raw, today=today)  # type: ignore[arg-type]
    except IdNumberError as exc:
        return exc.code
    return None


def _masked(raw: object) -> str | None:
    if not isinstance(raw, str):
        return None
    return mask_id_number(raw)


def _as_list(values: object, what: str) -> list[Any]:
    if isinstance(values, (str, bytes, bytearray, Mapping)) or not isinstance(values, Iterable):
        raise DomainError("invalid_ids", f"{what} must be a list of ID numbers", 422)
    return values if isinstance(values, list) else list(values)


def prepare_ids(values: Sequence[str], key: bytes, *, today: date | None = None,
                limit: int = MAX_IDS_PER_REQUEST) -> Prepared:
    """Validate and hash a list of raw resident ID numbers.

    ``values`` is a list (or another non-string iterable) of strings; each is
    normalised like :func:`identity.normalise_id_number` (surrounding whitespace
    stripped, a final ``x`` upper-cased) and validated like
    :func:`identity.validate_id_number` with ``today`` (default: the local date).
    Invalid inputs (including non-strings) do not fail the request: they get an
    error code at their position. The hash of a valid input equals
    ``identity.id_hmac(key, value)``.

    Raises ``DomainError('too_many_ids', 422)`` for more than ``limit`` values
    (``MAX_IDS_PER_REQUEST`` by default; jobs pass ``MAX_IDS_PER_FILE``) and
    ``DomainError('invalid_ids', 422)`` when ``values`` is not a list at all.
    ``ValueError`` for a key shorter than 16 bytes (a configuration error).
    """
    if not isinstance(key, (bytes, bytearray)) or len(key) < _MIN_KEY_BYTES:
        raise ValueError(f"the ID hashing key must be at least {_MIN_KEY_BYTES} bytes")
    items = _as_list(values, "ids")
    if len(items) > limit:
        raise DomainError("too_many_ids", f"at most {limit} ID numbers per request, not {len(items)}; "
                          "split the list or submit a file as a job", 422, max=limit, count=len(items))
    today = today or date.today()
    base = hmac.new(bytes(key), digestmod=hashlib.sha256)
    born_ok: dict[str, bool] = {}  # YYYYMMDD -> plausible birth date (dates repeat a lot)
    shape = _SHAPE.fullmatch
    hmacs: list[str | None] = []
    masked: list[str | None] = []
    errors: dict[int, str] = {}
    seen: dict[str, None] = {}
    for i, raw in enumerate(items):
        # Fast path: a well-formed number. Anything it refuses is re-checked by the
        # reference validator, which gives the error code (and has the last word).
        number = raw.strip().upper() if isinstance(raw, str) else None
        ok = False
        if number is not None and len(number) == 18 and shape(number):
            encoded = number.encode("ascii")
            total = sum(map(mul, encoded[:17], _WEIGHTS)) - _ASCII_ZERO_SUM
            if _CHECK_CHARS[total % 11] == number[17]:
                digits = number[6:14]
                ok = born_ok.get(digits)  # type: ignore[assignment]
                if ok is None:
                    try:
                        born = date(int(digits[:4]), int(digits[4:6]), int(digits[6:8]))
                    except ValueError:
                        ok = False
                    else:
                        ok = _EARLIEST_BIRTH <= born <= today
                    born_ok[digits] = ok
        if ok:
            h = base.copy()
            h.update(encoded)
            digest = h.hexdigest()
            hmacs.append(digest)
            masked.append(number[:4] + "**********" + number[14:])
            seen[digest] = None
            continue
        code = _error_code(raw, today)
        if code is None:  # not expected: the fast path mirrors the validator
            number = normalise_id_number(raw)
            h = base.copy()
            h.update(number.encode("ascii"))
            digest = h.hexdigest()
            hmacs.append(digest)
            masked.append(mask_id_number(number))
            seen[digest] = None
            continue
        hmacs.append(None)
        masked.append(_masked(raw))
        errors[i] = code
    return Prepared(tuple(hmacs), tuple(masked), MappingProxyType(errors), list(seen))


# -- answering -------------------------------------------------------------------------

@dataclass(frozen=True)
class Match:
    """One ledger row found for a hash: a member and their household."""

    household_id: str
    member_id: str
    village_code: str
    household_status: str
    member_active: bool
    schooling_stage: str | None = None
    attribute: str | None = None
    monitoring_object_type: str | None = None
    minimum_living_tier: str | None = None


@dataclass(frozen=True)
class Answer:
    """The per-position results and what they disclosed (for the access audit)."""

    purpose: str
    results: list[dict[str, Any]]
    disclosed_household_ids: list[str]  # sorted, distinct: households of people answered in_register
    disclosed_member_ids: list[str]     # sorted, distinct
    matched_count: int                  # positions answered in_register = true (duplicates count each time)
    invalid_count: int                  # positions with an error

    @property
    def count(self) -> int:
        return len(self.results)

    def summary(self) -> dict[str, int]:
        return {"count": self.count, "matched": self.matched_count, "invalid": self.invalid_count,
                "not_matched": self.count - self.matched_count - self.invalid_count,
                "households_disclosed": len(self.disclosed_household_ids)}


def group_matches(rows: Iterable[tuple[str, Match]]) -> dict[str, list[Match]]:
    """Group (id_hmac, Match) rows by hash: a person may have several memberships over time
    (a removed one in an old household and an active one in a new household)."""
    out: dict[str, list[Match]] = {}
    for digest, match in rows:
        out.setdefault(digest, []).append(match)
    return out


def _counts(m: Match, covers: Callable[[str], bool]) -> bool:
    return m.member_active and m.household_status not in LEFT_REGISTER_STATUSES and bool(covers(m.village_code))


def pick(found: Match | Sequence[Match] | None, covers: Callable[[str], bool]) -> Match | None:
    """The membership to answer with: one that is active, in the register and in the caller's
    jurisdiction; None when there is none (answered like no match). Several (a data error)
    resolve deterministically."""
    if found is None:
        return None
    if isinstance(found, Match):
        return found if _counts(found, covers) else None
    usable = [m for m in found if _counts(m, covers)]
    if not usable:
        return None
    return min(usable, key=lambda m: (m.household_id, m.member_id))


def answer(prepared: Prepared, matches: Mapping[str, Match | Sequence[Match]], purpose: str, *,
           covers: Callable[[str], bool]) -> Answer:
    """Answer every input position for ``purpose``.

    ``matches`` maps a hash from ``prepared.distinct_hmacs`` to its ledger row (or to
    several rows, see :func:`group_matches`); hashes without a row may be absent.
    ``covers(village_code)`` says whether the village is in the caller's jurisdiction.

    A valid position gets ``{"index", "id_masked", "in_register", <the purpose's other
    facts>}``; facts are null when the person is not in the register, and facts the
    purpose does not allow are absent. An invalid position gets
    ``{"index", "id_masked", "error"}``. A match outside the jurisdiction, an inactive
    member and a household that left the register are all answered exactly like no match.
    """
    check_purpose(purpose)
    facts = PURPOSES[purpose][1:]  # in_register is computed, the rest are Match attributes
    empty = dict.fromkeys(facts)
    per_hash: dict[str, dict[str, Any]] = {}  # the answer for each distinct hash
    disclosed: dict[str, Match] = {}
    for digest in prepared.distinct_hmacs:
        m = pick(matches.get(digest), covers)
        if m is None:
            per_hash[digest] = {"in_register": False, **empty}
        else:
            per_hash[digest] = {"in_register": True, **{f: getattr(m, f) for f in facts}}
            disclosed[digest] = m
    results: list[dict[str, Any]] = []
    matched = 0
    errors = prepared.errors
    for i, (digest, masked) in enumerate(zip(prepared.hmacs, prepared.masked)):
        if digest is None:
            results.append({"index": i, "id_masked": masked, "error": errors[i]})
            continue
        found = per_hash.get(digest)
        if found is None:  # a Prepared built by hand with an incomplete distinct list
            m = pick(matches.get(digest), covers)
            found = {"in_register": m is not None, **({f: getattr(m, f) for f in facts} if m else empty)}
            per_hash[digest] = found
            if m is not None:
                disclosed[digest] = m
        if found["in_register"]:
            matched += 1
        results.append({"index": i, "id_masked": masked, **found})
    return Answer(
        purpose=purpose,
        results=results,
        disclosed_household_ids=sorted({m.household_id for m in disclosed.values()}),
        disclosed_member_ids=sorted({m.member_id for m in disclosed.values()}),
        matched_count=matched,
        invalid_count=len(errors),
    )


# -- ID files (asynchronous jobs) ------------------------------------------------------

_ID_COLUMN_NAMES = frozenset({
    "idnumber", "idno", "idcard", "idcardnumber", "idcardno", "residentid", "residentidnumber",
    "身份证号", "身份证号码", "身份证", "公民身份号码", "公民身份证号", "公民身份证号码", "证件号码", "证件号",
})
_HEADER_NOISE = re.compile(r"[\s_\-.:：()（）*]+")


@dataclass(repr=False, eq=False)
class ParsedFile:
    """The ID numbers of an uploaded file, as (row number, raw text) in file order.

    Row numbers are what a spreadsheet user sees (1-based, header included; blank rows
    are skipped but keep their numbers). Raw values are plain ID numbers: keep this object
    only until :func:`prepare_ids` has hashed them. Its repr shows counts only.
    """

    format: str                    # "csv" or "xlsx"
    rows: list[tuple[int, str]]
    header_row: int | None = None  # the header's row number, None when the file has none
    column: int = 0                # 0-based index of the ID column

    @property
    def values(self) -> list[str]:
        return [v for _, v in self.rows]

    @property
    def row_numbers(self) -> list[int]:
        return [n for n, _ in self.rows]

    def __len__(self) -> int:
        return len(self.rows)

    def __repr__(self) -> str:
        return (f"ParsedFile(format={self.format!r}, rows={len(self.rows)}, header_row={self.header_row}, "
                f"column={self.column})")


_file_error = sheets.file_error


def _cell_text(value: Any) -> str:
    """A cell as text (``sheets.cell_text``) without an Excel text marker (a leading
    apostrophe, ="...")."""
    s = sheets.cell_text(value)
    if s.startswith("'"):
        s = s[1:].strip()
    elif s.startswith('="') and s.endswith('"') and len(s) >= 3:
        s = s[2:-1].strip()
    return s


def _header_key(value: Any) -> str:
    return _HEADER_NOISE.sub("", sheets.header_text(_cell_text(value))).lower()


def _id_like(text: str) -> bool:
    """Could this be (a mistyped) ID number rather than a column title? Any digit will do:
    titles have none, and a mistyped first ID must be reported, not skipped as a header."""
    return any(ch.isdigit() for ch in text)


class _Collector:
    """Applies the header and column rules to rows as they are read."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.rows: list[tuple[int, str]] = []
        self.header_row: int | None = None
        self.column = 0
        self.started = False

    def add(self, number: int, cells: Sequence[Any]) -> None:
        texts = [_cell_text(c) for c in cells]
        if not any(texts):
            return
        if not self.started:
            self.started = True
            if not _id_like(texts[0]):
                self.header_row = number
                named = [i for i, t in enumerate(cells) if _header_key(t) in _ID_COLUMN_NAMES]
                if len(named) > 1:
                    raise _file_error("duplicate_column", "more than one column is titled as the ID number",
                                      row=number)
                self.column = named[0] if named else 0
                return
        value = texts[self.column] if self.column < len(texts) else ""
        if not value:
            return  # the ID cell is blank: nothing to compare (the row holds other data only)
        if len(self.rows) >= self.limit:
            raise _file_error("too_many_rows", f"the file has more than {self.limit} ID numbers; "
                              "split it into several jobs", row=number, max=self.limit)
        self.rows.append((number, value))


def parse_id_file(data: bytes, filename_or_content_type: str | None = None, *,
                  limit: int = MAX_IDS_PER_FILE, max_bytes: int = MAX_FILE_BYTES) -> ParsedFile:
    """Read the ID numbers of an uploaded CSV or XLSX file.

    The format comes from the content (an XLSX is a ZIP) and otherwise from the
    file name or content type; an old ``.xls`` workbook or another type is refused.
    CSV is read as UTF-8 (with or without BOM), UTF-16 with BOM, or else GB 18030;
    comma- or tab-separated. XLSX: the first worksheet.

    The first non-blank row is a header when its first cell is not ID-like (has no
    digit); the ID column is then the one titled ``id_number``/``身份证号`` (and a few
    variants), else the first column. Without a header the IDs are in the first column.
    Blank rows and rows whose ID cell is blank are skipped. Values are not validated
    here: :func:`prepare_ids` reports invalid ones per row.

    Raises ``DomainError`` (422) with ``code`` ``file_too_large``, ``unsupported_format``,
    ``invalid_file``, ``empty_file``, ``duplicate_column`` (``row``) or ``too_many_rows``
    (``row``, ``max``).
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError("data must be bytes")
    data = bytes(data)
    if len(data) > max_bytes:
        raise _file_error("file_too_large", f"the file is larger than {max_bytes // (1024 * 1024)} MB",
                          max_bytes=max_bytes)
    if not data.strip():
        raise _file_error("empty_file", "the file is empty")
    fmt = sheets.detect_format(data, filename_or_content_type)
    out = _Collector(limit)
    with closing(sheets.xlsx_rows(data) if fmt == "xlsx" else sheets.csv_rows(data)) as rows:
        for number, cells in rows:
            if cells:
                out.add(number, cells)
    if not out.rows:
        raise _file_error("empty_file", "the file has no ID numbers", row=out.header_row)
    return ParsedFile(fmt, out.rows, out.header_row, out.column)


# -- results file ----------------------------------------------------------------------

def result_columns(purpose: str) -> list[str]:
    """The columns of :func:`results_csv` for ``purpose``."""
    return ["row", "id_masked", *PURPOSES[check_purpose(purpose)], "error"]


def results_csv(rows: Iterable[Mapping[str, Any]], purpose: str, *,
                row_numbers: Sequence[int] | None = None) -> bytes:
    """Render results (from :func:`answer`) as CSV, UTF-8 with BOM so that Excel opens it.

    Columns: ``row, id_masked, in_register, household_status, <the purpose's other facts>,
    error``. ``row`` is the result's own ``row`` if it has one, else
    ``row_numbers[index]`` (the file's row numbers, ``ParsedFile.row_numbers``), else
    ``index + 1``. Booleans are ``true``/``false``; missing values are empty cells.
    """
    columns = result_columns(purpose)

    def line(r: Mapping[str, Any]) -> list[Any]:
        if "row" in r:
            number = r["row"]
        elif row_numbers is not None:
            number = row_numbers[r["index"]]
        else:
            number = r["index"] + 1
        return [number, *(r.get(c) for c in columns[1:])]

    return sheets.write_csv(columns, map(line, rows))


# -- batches ---------------------------------------------------------------------------

T = TypeVar("T")


def chunks(seq: Iterable[T], size: int) -> Iterator[Sequence[T]]:
    """Consecutive batches of at most ``size`` items (slices of a sequence, lists otherwise)."""
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ValueError("the batch size must be a positive integer")
    if isinstance(seq, Sequence) and not isinstance(seq, (str, bytes, bytearray)):
        for start in range(0, len(seq), size):
            yield seq[start:start + size]
        return
    it = iter(seq)
    while batch := list(itertools.islice(it, size)):
        yield batch
