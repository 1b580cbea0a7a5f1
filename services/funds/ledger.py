"""The funds double-entry ledger: every yuan of every allocation, posted twice.

The projection ``funds-ledger`` (class `FundsLedger`) follows the allocation,
project and disbursement topics. Allocation events move the platform's money, so
they post; so does ``DepartmentPaymentRecorded``, a payment another department's
own system made (quarterly subsidy records), which moves money that never was on
an allocation. Project and the other disbursement events keep the read-model rows
that the ledger's queries join the postings with
(``services/funds/ledger_queries.py``). Tables are in ``migrations/0002_ledger.sql``
(department accounts: ``0004_department_subsidies.sql``).

Chart of accounts
-----------------

=============================  ======  ================================================
account                        normal  meaning
=============================  ======  ================================================
``source:<source>:<year>``     credit  where money comes from: one account per fund
                                       source (central, provincial, city, county,
                                       social_donation) and budget year; its balance is
                                       minus everything allocated from it.
``allocation:<id>:available``  debit   money of the allocation not yet reserved or paid.
``allocation:<id>:reserved``   debit   money held for approved projects (funding lines)
                                       and approved policy disbursements.
``paid:<id>``                  debit   money paid out of the allocation (an expense
                                       account per allocation); each line names its
                                       disbursement, and its project for project
                                       payments, as dimensions.
``department:<dept>:<year>``   credit  money a department (education, civil_affairs,
                                       ...) paid through its own system for periods of
                                       the year: minus everything it paid.
``paid:department:<dept>:      debit   what that department paid (the expense account
<year>``                               of its payments); each line names its
                                       disbursement.
=============================  ======  ================================================

Balances are debit minus credit. For every allocation ``amount = available +
reserved + paid`` and the source account of its source and year holds minus the
sum of the amounts; for every department and year the two department accounts
are opposite; all balances together are zero. Department accounts have no
allocation (``allocation_id`` is null on their lines and balances), so the
allocation and source totals never include them, while the payments by household
and village (which read every ``paid:`` account) do.

Postings (Dr / Cr, amounts from the event):

- ``AllocationCreated``: Dr available / Cr source.
- ``AllocationAdjusted``: a positive delta as ``AllocationCreated``; a negative
  delta reverses it (Dr source / Cr available).
- ``FundsReserved``: Dr reserved / Cr available.
- ``ReservationReleased``: Dr available / Cr reserved.
- ``FundsSpent``: Dr paid / Cr reserved.
- ``DepartmentPaymentRecorded``: Dr ``paid:department:<dept>:<year>`` / Cr
  ``department:<dept>:<year>`` (the year of the payment's period, the business
  date its ``paid_on``).
- ``SpendingReversed``: Dr reserved / Cr paid: the contract puts a reversed payment
  back into the reservation it was spent from; the ``ReservationReleased`` that
  follows when the reservation is no longer needed moves it on to available.

Every posting line carries the allocation id, and as dimensions the project (a
project reservation, or a payment under a project) and the disbursement (a policy
reservation, every payment and reversal). Household, village, policy and year of
a payment are not copied onto the lines: they come from the disbursement's own
stream, on another topic, which is not ordered with the allocation topic, so a
``FundsSpent`` may well be posted before its disbursement is known. Queries join
``ledger_postings.disbursement_id`` with ``ledger_disbursements``.

Integrity: `postings_of` is pure and shared with the tests; `verify_balanced`
refuses an event whose lines do not balance. The projection is strict and
idempotent per event (``ledger_events``, and the primary key of the postings):
an event that would break an invariant (a release above its reservation, an
adjustment whose ``new_amount`` disagrees with the ledger, an update of an unknown
project or disbursement) raises `LedgerError`, and the runner holds its stream
rather than letting the ledger drift. Unknown event types are ignored.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

from contracts.funds import (
    ALLOCATION,
    ALLOCATION_TOPIC,
    DEPARTMENT_PATTERN,
    DISBURSEMENT,
    DISBURSEMENT_TOPIC,
    FUND_SOURCES,
    PROJECT,
    PROJECT_TOPIC,
)
from eventkit.projection import Message

CHINA_TZ = timezone(timedelta(hours=8))  # dates of effect are China dates (as in services.funds.domain)
ZERO = Decimal("0.00")
CENT = Decimal("0.01")

AccountKind = Literal["source", "available", "reserved", "paid", "department", "department_paid"]
_DEPARTMENT = re.compile(DEPARTMENT_PATTERN)

POSTING_EVENT_TYPES: frozenset[str] = frozenset({
    "AllocationCreated", "AllocationAdjusted", "FundsReserved", "ReservationReleased", "FundsSpent",
    "SpendingReversed"})


class LedgerError(Exception):
    """An event that does not fit the ledger (the strict projection holds its stream)."""


class UnbalancedPosting(LedgerError):
    """The lines of one event do not balance, or a line is malformed."""


# -- accounts ----------------------------------------------------------------------------


def source_account(source: str, year: int) -> str:
    return f"source:{source}:{year}"


def available_account(allocation_id: str) -> str:
    return f"allocation:{allocation_id}:available"


def reserved_account(allocation_id: str) -> str:
    return f"allocation:{allocation_id}:reserved"


def paid_account(allocation_id: str) -> str:
    return f"paid:{allocation_id}"


def department_account(department: str, year: int) -> str:
    return f"department:{department}:{year}"


def department_paid_account(department: str, year: int) -> str:
    return f"paid:department:{department}:{year}"


@dataclass(frozen=True)
class Account:
    """A parsed account name."""

    kind: AccountKind
    allocation_id: str | None = None  # allocation accounts
    source: str | None = None         # source accounts: the fund source; department accounts: the department
    year: int | None = None           # source and department accounts


def parse_account(account: str) -> Account:
    parts = account.split(":")
    if len(parts) == 3 and parts[0] == "source" and parts[1] in FUND_SOURCES and parts[2].isdigit():
        return Account("source", source=parts[1], year=int(parts[2]))
    if len(parts) == 3 and parts[0] == "allocation" and parts[2] in ("available", "reserved"):
        return Account(parts[2], allocation_id=parts[1])  # type: ignore[arg-type]
    if len(parts) == 2 and parts[0] == "paid" and parts[1]:
        return Account("paid", allocation_id=parts[1])
    if len(parts) == 3 and parts[0] == "department" and _DEPARTMENT.match(parts[1]) and parts[2].isdigit():
        return Account("department", source=parts[1], year=int(parts[2]))
    if (len(parts) == 4 and parts[:2] == ["paid", "department"] and _DEPARTMENT.match(parts[2])
            and parts[3].isdigit()):
        return Account("department_paid", source=parts[2], year=int(parts[3]))
    raise LedgerError(f"not an account of the chart: {account!r}")


@dataclass(frozen=True)
class Funding:
    """Source and budget year of an allocation: what its money is credited to."""

    source: str
    year: int

    @property
    def account(self) -> str:
        return source_account(self.source, self.year)


# -- postings ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Posting:
    """One line of an event's posting: exactly one of ``debit`` and ``credit`` is positive."""

    line_no: int
    account: str
    debit: Decimal
    credit: Decimal
    occurred: date
    allocation_id: str | None  # None on the department accounts
    project_id: str | None = None
    disbursement_id: str | None = None

    @property
    def amount(self) -> Decimal:
        """Signed: debit minus credit."""
        return self.debit - self.credit


def _money(data: Mapping[str, Any], name: str, *, signed: bool = False) -> Decimal:
    raw = data.get(name)
    if not isinstance(raw, str):
        raise LedgerError(f"{name} must be a decimal string, got {raw!r}")
    try:
        value = Decimal(raw)
    except InvalidOperation as exc:
        raise LedgerError(f"{name} is not a decimal: {raw!r}") from exc
    if not value.is_finite() or value != value.quantize(CENT) or (value < 0 and not signed):
        raise LedgerError(f"{name} must be {'a signed' if signed else 'a non-negative'} amount with 2 decimals, "
                          f"got {raw!r}")
    return value.quantize(CENT)


def _china_date(value: Any) -> date:
    """The China date of an event timestamp (ISO text or datetime); a plain date is taken as it is."""
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, date):
        return value
    elif isinstance(value, str) and len(value) == 10:
        return date.fromisoformat(value)
    elif isinstance(value, str):
        moment = datetime.fromisoformat(value)
    else:
        raise LedgerError(f"not a date or timestamp: {value!r}")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(CHINA_TZ).date()


# The field holding each allocation event's business date.
_OCCURRED = {
    "AllocationCreated": "created_at", "AllocationAdjusted": "adjusted_at", "FundsReserved": "reserved_at",
    "ReservationReleased": "released_at", "FundsSpent": "spent_on", "SpendingReversed": "reversed_at",
}


def occurred_on(event_type: str, data: Mapping[str, Any]) -> date:
    """The business date of an allocation event (China date of its timestamp, or its date)."""
    try:
        return _china_date(data[_OCCURRED[event_type]])
    except KeyError as exc:
        raise LedgerError(f"{event_type} has no business date ({exc})") from exc


def _ref_dimensions(data: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """(project_id, disbursement_id) of an event naming a reservation (and maybe a disbursement)."""
    ref_type, ref_id = data.get("ref_type"), data.get("ref_id")
    if ref_type not in ("project", "disbursement") or not isinstance(ref_id, str):
        raise LedgerError(f"bad reservation reference {ref_type!r} {ref_id!r}")
    project_id = ref_id if ref_type == "project" else None
    disbursement_id = data.get("disbursement_id") or (ref_id if ref_type == "disbursement" else None)
    return project_id, disbursement_id


def postings_of(event_type: str, data: Mapping[str, Any], *, funding: Funding | None = None) -> list[Posting]:
    """The posting lines of one event (``[]`` for events that move no money, and unknown types).

    ``funding`` names the allocation's source and year; ``AllocationCreated`` carries them
    itself, ``AllocationAdjusted`` needs them passed in (from the allocation's creation).
    A zero amount moves nothing and posts nothing.
    """
    if event_type not in POSTING_EVENT_TYPES:
        return []
    allocation_id = data.get("allocation_id")
    if not isinstance(allocation_id, str) or not allocation_id:
        raise LedgerError(f"{event_type} names no allocation")
    occurred = occurred_on(event_type, data)
    project_id = disbursement_id = None

    if event_type == "AllocationCreated":
        if data.get("source") not in FUND_SOURCES or not isinstance(data.get("year"), int):
            raise LedgerError(f"AllocationCreated of {allocation_id} has no valid source and year")
        amount = _money(data, "amount")
        debit, credit = available_account(allocation_id), source_account(data["source"], data["year"])
    elif event_type == "AllocationAdjusted":
        if funding is None:
            raise LedgerError(f"AllocationAdjusted of {allocation_id}: the allocation's source and year are unknown")
        delta = _money(data, "amount_delta", signed=True)
        amount = abs(delta)
        debit, credit = available_account(allocation_id), funding.account
        if delta < 0:
            debit, credit = credit, debit
    else:
        amount = _money(data, "amount")
        project_id, disbursement_id = _ref_dimensions(data)
        debit, credit = {
            "FundsReserved": (reserved_account(allocation_id), available_account(allocation_id)),
            "ReservationReleased": (available_account(allocation_id), reserved_account(allocation_id)),
            "FundsSpent": (paid_account(allocation_id), reserved_account(allocation_id)),
            "SpendingReversed": (reserved_account(allocation_id), paid_account(allocation_id)),
        }[event_type]
    if amount == 0:
        return []
    lines = [Posting(1, debit, amount, ZERO, occurred, allocation_id, project_id, disbursement_id),
             Posting(2, credit, ZERO, amount, occurred, allocation_id, project_id, disbursement_id)]
    verify_balanced(lines)
    return lines


def department_postings(data: Mapping[str, Any]) -> list[Posting]:
    """The lines of a ``DepartmentPaymentRecorded`` (its data, with ``disbursement_id``): Dr
    ``paid:department:<dept>:<year>`` / Cr ``department:<dept>:<year>``, the year of the period."""
    department, period = data.get("department"), data.get("period")
    if not isinstance(department, str) or not _DEPARTMENT.match(department):
        raise LedgerError(f"DepartmentPaymentRecorded names no valid department: {department!r}")
    if not isinstance(period, str) or len(period) < 4 or not period[:4].isdigit():
        raise LedgerError(f"DepartmentPaymentRecorded has a bad period {period!r}")
    disbursement_id = data.get("disbursement_id")
    if not isinstance(disbursement_id, str) or not disbursement_id:
        raise LedgerError("DepartmentPaymentRecorded names no disbursement")
    amount = _money(data, "amount")
    occurred = _china_date(data.get("paid_on"))
    year = int(period[:4])
    lines = [Posting(1, department_paid_account(department, year), amount, ZERO, occurred, None, None,
                     disbursement_id),
             Posting(2, department_account(department, year), ZERO, amount, occurred, None, None, disbursement_id)]
    verify_balanced(lines)
    return lines


def verify_balanced(postings: Sequence[Posting]) -> Decimal:
    """Check one event's lines: numbered 1..n, one side each, amounts in cents, sum of debits equal to
    sum of credits. Returns the total moved; raises `UnbalancedPosting`."""
    for i, p in enumerate(postings, start=1):
        if p.line_no != i:
            raise UnbalancedPosting(f"line {p.line_no} out of order (expected {i})")
        for side in (p.debit, p.credit):
            if not isinstance(side, Decimal) or not side.is_finite() or side < 0 or side != side.quantize(CENT):
                raise UnbalancedPosting(f"line {i} ({p.account}): amounts must be non-negative Decimals in cents")
        if (p.debit == 0) == (p.credit == 0):
            raise UnbalancedPosting(f"line {i} ({p.account}): exactly one of debit and credit must be positive")
        parse_account(p.account)
    debits = sum((p.debit for p in postings), ZERO)
    credits = sum((p.credit for p in postings), ZERO)
    if debits != credits:
        raise UnbalancedPosting(f"debits {debits} != credits {credits}")
    return debits


def trial_balance(postings: Iterable[Posting]) -> dict[str, Decimal]:
    """Balance (debit minus credit) of every account the postings touch."""
    balances: dict[str, Decimal] = {}
    for p in postings:
        balances[p.account] = balances.get(p.account, ZERO) + p.amount
    return balances


# -- the projection ------------------------------------------------------------------------

_INSERT_EVENT = """
INSERT INTO ledger_events (event_id, event_type, stream_type, stream_id, version, global_position)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (event_id) DO NOTHING
RETURNING true
"""

_INSERT_POSTING = """
INSERT INTO ledger_postings (event_id, line_no, account, debit, credit, event_type, occurred, allocation_id,
    project_id, disbursement_id)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
"""

# Opened at zero, then moved: a CHECK is evaluated on the row to insert even when it conflicts, so an
# account opened by a credit could not be inserted with its (negative) first balance.
_OPEN_ACCOUNT = """
INSERT INTO ledger_balances (account, kind, source, year, allocation_id) VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (account) DO NOTHING
"""

_MOVE_BALANCE = """
UPDATE ledger_balances SET debits = debits + $2, credits = credits + $3, balance = balance + $2 - $3,
    updated_at = now()
WHERE account = $1
"""

_UPDATE_DISBURSEMENT_STATUS = {
    # event type -> (status, the statuses it may follow)
    "DisbursementApproved": ("approved", ("requested",)),
    "DisbursementPaid": ("paid", ("approved",)),
    "DisbursementReconciled": ("reconciled", ("paid",)),
    "DisbursementFailed": ("failed", ("requested", "approved")),
    "DisbursementReversed": ("reversed", ("paid", "reconciled")),
}

_PROJECT_STATUS = {
    "ProjectReviewed": "reviewed", "ProjectApproved": "approved", "ProjectRejected": "rejected",
    "ProjectStarted": "in_progress", "ProjectCompleted": "completed", "ProjectAccepted": "accepted",
    "ProjectCancelled": "cancelled",
}


def _uuid(value: Any, name: str) -> uuid.UUID:
    try:
        return uuid.UUID(str(value))
    except (TypeError, ValueError) as exc:
        raise LedgerError(f"{name} is not a UUID: {value!r}") from exc


def _opt_uuid(value: Any, name: str) -> uuid.UUID | None:
    return None if value is None else _uuid(value, name)


def _expect_one(status: str, what: str) -> None:
    """``status`` is asyncpg's command tag ("UPDATE 1")."""
    if not status.endswith(" 1"):
        raise LedgerError(f"{what}: no such row (its earlier events were not applied)")


Handler = Callable[[Any, Message], Awaitable[None]]


class FundsLedger:
    """Projection ``funds-ledger``: postings, running balances and the read models they are joined with.

    ``topics`` defaults to the funds allocation, project and disbursement topics (tests
    pass their own); events are recognised by stream and event type, not by topic.
    """

    name = "funds-ledger"
    strict = True  # a ledger never skips an event

    def __init__(self, topics: Sequence[str] = (ALLOCATION_TOPIC, PROJECT_TOPIC, DISBURSEMENT_TOPIC)) -> None:
        self.topics = tuple(topics)
        self._handlers: dict[tuple[str, str], Handler] = {
            **{(ALLOCATION, t): self._allocation_event for t in POSTING_EVENT_TYPES},
            (PROJECT, "ProjectDeclared"): self._project_declared,
            **{(PROJECT, t): self._project_status for t in _PROJECT_STATUS},
            (PROJECT, "MilestoneRecorded"): self._milestone,
            (PROJECT, "ProjectPaymentCommitted"): self._project_payment,
            (PROJECT, "ProjectPaymentRecorded"): self._project_payment,
            (PROJECT, "ProjectPaymentReleased"): self._project_payment,
            (DISBURSEMENT, "DisbursementRequested"): self._disbursement_requested,
            (DISBURSEMENT, "DepartmentPaymentRecorded"): self._department_payment,
            **{(DISBURSEMENT, t): self._disbursement_status for t in _UPDATE_DISBURSEMENT_STATUS},
        }

    async def apply(self, conn: Any, message: Message) -> None:
        handler = self._handlers.get((message.stream_type, message.event_type))
        if handler is None:
            return  # an unknown (newer) event type, or another stream type on these topics
        first_time = await conn.fetchval(
            _INSERT_EVENT, _uuid(message.event_id, "event_id"), message.event_type, message.stream_type,
            message.stream_id, message.version, message.global_position)
        if not first_time:
            return  # already applied: a redelivery the tracking did not catch
        await handler(conn, message)

    async def reset(self, conn: Any) -> None:
        await conn.execute(
            "TRUNCATE ledger_events, ledger_postings, ledger_balances, ledger_allocations, ledger_reservations,"
            " ledger_projects, ledger_project_households, ledger_project_funding, ledger_disbursements")

    # -- allocations: the postings ---------------------------------------------------------

    async def _allocation_event(self, conn: Any, message: Message) -> None:
        d, event_type = message.data, message.event_type
        allocation_id = _uuid(d.get("allocation_id"), "allocation_id")
        if str(allocation_id) != message.stream_id:
            raise LedgerError(f"{event_type}: allocation {allocation_id} on stream {message.stream_id}")
        if event_type == "AllocationCreated":
            postings = postings_of(event_type, d)
            if await conn.fetchval("SELECT true FROM ledger_allocations WHERE allocation_id = $1", allocation_id):
                raise LedgerError(f"allocation {allocation_id} was already created")
            await conn.execute(
                "INSERT INTO ledger_allocations (allocation_id, source, year, purpose, region_code, amount,"
                " created_on, version) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                allocation_id, d["source"], d["year"], d["purpose"], d["region_code"], _money(d, "amount"),
                occurred_on(event_type, d), message.version)
            await self._post(conn, message, postings, Funding(d["source"], d["year"]))
            return
        row = await conn.fetchrow(
            "SELECT source, year, amount FROM ledger_allocations WHERE allocation_id = $1 FOR UPDATE", allocation_id)
        if row is None:
            raise LedgerError(f"{event_type} of allocation {allocation_id} before its AllocationCreated")
        funding = Funding(row["source"], row["year"])
        postings = postings_of(event_type, d, funding=funding)
        await self._post(conn, message, postings, funding)
        if event_type == "AllocationAdjusted":
            new_amount = row["amount"] + _money(d, "amount_delta", signed=True)
            if new_amount != _money(d, "new_amount"):
                raise LedgerError(f"allocation {allocation_id}: {row['amount']} adjusted by {d['amount_delta']} is "
                                  f"{new_amount}, the event says {d['new_amount']}")
            await self._allocation(conn, allocation_id, message.version, amount=new_amount - row["amount"])
            return
        amount = _money(d, "amount")
        ref = (allocation_id, d["ref_type"], _uuid(d["ref_id"], "ref_id"))
        if event_type == "FundsReserved":
            await self._reservation(conn, *ref, amount, new=True)
            await self._allocation(conn, allocation_id, message.version, reserved=amount)
        elif event_type == "ReservationReleased":
            await self._reservation(conn, *ref, -amount)
            await self._allocation(conn, allocation_id, message.version, reserved=-amount)
        elif event_type == "FundsSpent":
            await self._reservation(conn, *ref, -amount)
            await self._allocation(conn, allocation_id, message.version, reserved=-amount, spent=amount)
        else:  # SpendingReversed: back into the reservation it was spent from
            await self._reservation(conn, *ref, amount)
            await self._allocation(conn, allocation_id, message.version, reserved=amount, spent=-amount)

    async def _post(self, conn: Any, message: Message, postings: Sequence[Posting], funding: Funding) -> None:
        if not postings:
            return
        verify_balanced(postings)
        event_id = _uuid(message.event_id, "event_id")
        await conn.executemany(_INSERT_POSTING, [
            (event_id, p.line_no, p.account, p.debit, p.credit, message.event_type, p.occurred,
             _uuid(p.allocation_id, "allocation_id"), _opt_uuid(p.project_id, "project_id"),
             _opt_uuid(p.disbursement_id, "disbursement_id")) for p in postings])
        moved: dict[str, tuple[Decimal, Decimal]] = {}
        for p in postings:
            debits, credits = moved.get(p.account, (ZERO, ZERO))
            moved[p.account] = (debits + p.debit, credits + p.credit)
        accounts = sorted(moved)  # a fixed order: no deadlocks on the shared source accounts
        opened = []
        for account in accounts:
            parsed = parse_account(account)
            if parsed.kind == "source" and (parsed.source, parsed.year) != (funding.source, funding.year):
                raise LedgerError(f"{message.event_type} posts to {account}, the allocation is {funding.account}")
            opened.append((account, parsed.kind, funding.source, funding.year,
                           _opt_uuid(parsed.allocation_id, "allocation_id")))
        await conn.executemany(_OPEN_ACCOUNT, opened)
        await conn.executemany(_MOVE_BALANCE, [(account, *moved[account]) for account in accounts])

    @staticmethod
    async def _allocation(conn: Any, allocation_id: uuid.UUID, version: int, *, amount: Decimal = ZERO,
                          reserved: Decimal = ZERO, spent: Decimal = ZERO) -> None:
        await conn.execute(
            "UPDATE ledger_allocations SET amount = amount + $2, reserved = reserved + $3, spent = spent + $4,"
            " version = $5, updated_at = now() WHERE allocation_id = $1",
            allocation_id, amount, reserved, spent, version)

    @staticmethod
    async def _reservation(conn: Any, allocation_id: uuid.UUID, ref_type: str, ref_id: uuid.UUID, delta: Decimal,
                           *, new: bool = False) -> None:
        if new:
            status = await conn.execute(
                "INSERT INTO ledger_reservations (allocation_id, ref_type, ref_id, reserved) VALUES ($1, $2, $3, $4)"
                " ON CONFLICT DO NOTHING", allocation_id, ref_type, ref_id, delta)
            if not status.endswith(" 1"):
                raise LedgerError(f"allocation {allocation_id} already holds a reservation for {ref_type} {ref_id}")
            return
        held = await conn.fetchval(
            "UPDATE ledger_reservations SET reserved = reserved + $4"
            " WHERE allocation_id = $1 AND ref_type = $2 AND ref_id = $3 RETURNING reserved",
            allocation_id, ref_type, ref_id, delta)  # the CHECK refuses going below zero
        if held is None:
            raise LedgerError(f"allocation {allocation_id} holds no reservation for {ref_type} {ref_id}")

    # -- projects: read model only ------------------------------------------------------------

    async def _project_declared(self, conn: Any, message: Message) -> None:
        d = message.data
        project_id = _uuid(message.stream_id, "project_id")
        households = sorted({_uuid(h, "beneficiary_household_ids") for h in d["beneficiary_household_ids"]})
        await conn.execute(
            "INSERT INTO ledger_projects (project_id, name, kind, region_code, plan_year, status, budget,"
            " beneficiaries, declared_on, version) VALUES ($1, $2, $3, $4, $5, 'declared', $6, $7, $8, $9)",
            project_id, d["name"], d["kind"], d["region_code"], d["plan_year"], _money(d, "budget"),
            len(households), _china_date(d["declared_at"]), message.version)
        await conn.executemany(
            "INSERT INTO ledger_project_households (project_id, household_id) VALUES ($1, $2)",
            [(project_id, h) for h in households])

    async def _project_status(self, conn: Any, message: Message) -> None:
        d, event_type = message.data, message.event_type
        project_id = _uuid(message.stream_id, "project_id")
        sets = ["status = $2", "version = $3", "updated_at = now()"]
        args: list[Any] = [project_id, _PROJECT_STATUS[event_type], message.version]

        def put(column: str, value: Any) -> None:
            args.append(value)
            sets.append(f"{column} = ${len(args)}")

        if event_type == "ProjectApproved":
            put("approved_budget", _money(d, "approved_budget"))
            put("approved_on", _china_date(d["approved_at"]))
        elif event_type == "ProjectStarted":
            put("started_on", _china_date(d["started_on"]))
        elif event_type == "ProjectCompleted":
            put("completed_on", _china_date(d["completed_on"]))
        elif event_type in ("ProjectAccepted", "ProjectRejected", "ProjectCancelled"):
            at = {"ProjectAccepted": "accepted_at", "ProjectRejected": "rejected_at",
                  "ProjectCancelled": "cancelled_at"}[event_type]
            put("closed_on", _china_date(d[at]))
        _expect_one(await conn.execute(
            f"UPDATE ledger_projects SET {', '.join(sets)} WHERE project_id = $1", *args),
            f"{event_type} of project {project_id}")
        if event_type == "ProjectApproved":
            await conn.executemany(
                "INSERT INTO ledger_project_funding (project_id, allocation_id, amount) VALUES ($1, $2, $3)",
                [(project_id, _uuid(line["allocation_id"], "allocation_id"), _money(line, "amount"))
                 for line in d["funding"]])
        for line in d.get("released") or ():
            _expect_one(await conn.execute(
                "UPDATE ledger_project_funding SET released = released + $3 WHERE project_id = $1"
                " AND allocation_id = $2", project_id, _uuid(line["allocation_id"], "allocation_id"),
                _money(line, "amount")), f"{event_type}: funding line {line['allocation_id']} of project {project_id}")

    async def _milestone(self, conn: Any, message: Message) -> None:
        project_id = _uuid(message.stream_id, "project_id")
        _expect_one(await conn.execute(
            "UPDATE ledger_projects SET milestones = milestones + 1, version = $2, updated_at = now()"
            " WHERE project_id = $1", project_id, message.version), f"milestone of project {project_id}")

    async def _project_payment(self, conn: Any, message: Message) -> None:
        d, event_type = message.data, message.event_type
        project_id = _uuid(message.stream_id, "project_id")
        amount = _money(d, "amount")
        committed, paid = {
            "ProjectPaymentCommitted": (amount, ZERO),
            "ProjectPaymentRecorded": (-amount, amount),
            "ProjectPaymentReleased": (ZERO, -amount) if d.get("was_paid") else (-amount, ZERO),
        }[event_type]
        _expect_one(await conn.execute(
            "UPDATE ledger_projects SET committed = committed + $2, paid = paid + $3, version = $4,"
            " updated_at = now() WHERE project_id = $1", project_id, committed, paid, message.version),
            f"{event_type} of project {project_id}")

    # -- disbursements: read model only -------------------------------------------------------

    async def _disbursement_requested(self, conn: Any, message: Message) -> None:
        d = message.data
        period = d["period"]
        if not isinstance(period, str) or len(period) < 4 or not period[:4].isdigit():
            raise LedgerError(f"disbursement {message.stream_id}: bad period {period!r}")
        await conn.execute(
            "INSERT INTO ledger_disbursements (disbursement_id, household_id, member_id, village_code, basis,"
            " policy_code, policy_group, project_id, period, year, amount, status, requested_on, account_masked,"
            " version) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 'requested', $12, $13, $14)",
            _uuid(message.stream_id, "disbursement_id"), _uuid(d["household_id"], "household_id"),
            _opt_uuid(d.get("member_id"), "member_id"), d["village_code"], d["basis"], d.get("policy_code"),
            d.get("policy_group"), _opt_uuid(d.get("project_id"), "project_id"), period, int(period[:4]),
            _money(d, "amount"), _china_date(d["requested_at"]), d.get("account_masked"), message.version)

    async def _department_payment(self, conn: Any, message: Message) -> None:
        """A department's own payment: its read-model row (paid from the start) and its posting."""
        d = message.data
        disbursement_id = _uuid(message.stream_id, "disbursement_id")
        postings = department_postings({**d, "disbursement_id": str(disbursement_id)})
        period = d["period"]
        await conn.execute(
            "INSERT INTO ledger_disbursements (disbursement_id, household_id, member_id, village_code, basis,"
            " policy_code, policy_group, period, year, amount, status, requested_on, paid_on, channel, department,"
            " version) VALUES ($1, $2, $3, $4, 'policy', $5, $6, $7, $8, $9, 'paid', $10, $11, $12, $13, $14)",
            disbursement_id, _uuid(d["household_id"], "household_id"), _opt_uuid(d.get("member_id"), "member_id"),
            d["village_code"], d["policy_code"], d.get("policy_group"), period, int(period[:4]),
            _money(d, "amount"), _china_date(d["recorded_at"]), _china_date(d["paid_on"]), d["channel"],
            d["department"], message.version)
        event_id = _uuid(message.event_id, "event_id")
        await conn.executemany(_INSERT_POSTING, [
            (event_id, p.line_no, p.account, p.debit, p.credit, message.event_type, p.occurred, None, None,
             _uuid(p.disbursement_id, "disbursement_id")) for p in postings])
        accounts = sorted(p.account for p in postings)  # a fixed order, as in _post
        await conn.executemany(_OPEN_ACCOUNT, [
            (a, parse_account(a).kind, d["department"], int(period[:4]), None) for a in accounts])
        by_account = {p.account: p for p in postings}
        await conn.executemany(_MOVE_BALANCE, [(a, by_account[a].debit, by_account[a].credit) for a in accounts])

    async def _disbursement_status(self, conn: Any, message: Message) -> None:
        d, event_type = message.data, message.event_type
        disbursement_id = _uuid(message.stream_id, "disbursement_id")
        status, previous = _UPDATE_DISBURSEMENT_STATUS[event_type]
        sets = ["status = $2", "version = $3", "updated_at = now()"]
        args: list[Any] = [disbursement_id, status, message.version, list(previous)]
        if event_type == "DisbursementApproved":
            args.append(_uuid(d["allocation_id"], "allocation_id"))
            sets.append(f"allocation_id = ${len(args)}")
        elif event_type == "DisbursementPaid":
            args += [_china_date(d["paid_on"]), d["channel"]]
            sets += [f"paid_on = ${len(args) - 1}", f"channel = ${len(args)}"]
        elif event_type == "DisbursementReversed":
            args.append(_china_date(d["reversed_at"]))
            sets.append(f"reversed_on = ${len(args)}")
        _expect_one(await conn.execute(
            f"UPDATE ledger_disbursements SET {', '.join(sets)} WHERE disbursement_id = $1"
            " AND status = ANY($4::text[])", *args),
            f"{event_type} of disbursement {disbursement_id} (unknown, or not {' or '.join(previous)})")
