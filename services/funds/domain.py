"""Allocations, projects and disbursements. Pure domain code: no I/O, no frameworks.

Money moves only through allocations (budget lines). ``available = amount -
reserved - spent`` never goes below zero: a project's approval reserves its
funding lines, a policy disbursement's approval reserves its amount, a payment
turns reservation into spending, a failure or reversal gives it back.

A payment draws on an allocation like this (save every aggregate a command
touched in one transaction, with optimistic concurrency on each stream):

- policy basis: ``Disbursement.approve`` reserves the amount on the allocation
  (``FundsReserved`` ref disbursement); ``pay`` spends it (``FundsSpent``);
  ``fail`` releases it; ``reverse`` puts the spending back and releases it.
- project basis: ``Project.approve`` reserved each funding line (``FundsReserved``
  ref project). ``Disbursement.approve`` commits the amount on one funding line
  of the project (``ProjectPaymentCommitted``; over the line or the approved
  budget: ``over_budget``); ``pay`` spends it from the project's reservation and
  records it on the project; ``fail``/``reverse`` release the commitment or payment.
  Acceptance or cancellation releases what is left of each funding line.

A payment another department's system made (quarterly subsidy records,
``services/funds/subsidies.py``) is a disbursement too, recorded at once as paid
(``Disbursement.record_department_payment``, ``DepartmentPaymentRecorded``): it
draws on no allocation, is not checked for eligibility (it is a fact; the anomaly
rules judge it) and cannot be approved, paid, reconciled, failed or reversed on the
platform (409 ``department_payment``).

Eligibility is decided on ``HouseholdFacts``, which the application layer folds
from the registry's household events (``fold_household_facts``). Commands take
``now`` (timezone-aware); dates of effect are China dates. They raise
``DomainError`` (404 unknown, 409 state or rule conflict, 422 invalid input) or
record events; a refused rule is named in ``details["rule"]``. Event handlers
(``when_*``) use only event data.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from typing import Any

from contracts import funds as ev
from contracts.base import EventModel
from eventkit.aggregate import Aggregate
from eventkit.errors import DomainError

from .policies import (
    CLOSED_STATUSES,
    MONITORING_OBJECT,
    Catalogue,
    Period,
    Policy,
    cents,
    default_catalogue,
    parse_period,
)

CHINA_TZ = timezone(timedelta(hours=8))
ZERO = Decimal("0.00")
MAX_TEXT = 2000
_UUID = re.compile(ev.UUID_PATTERN)
_VILLAGE = re.compile(ev.VILLAGE_CODE_PATTERN)
_BUDGET_REGION = re.compile(ev.BUDGET_REGION_PATTERN)
_PROJECT_REGION = re.compile(ev.PROJECT_REGION_PATTERN)
_HMAC = re.compile(ev.HMAC_PATTERN)
_ACCOUNT_MASKED = re.compile(ev.ACCOUNT_MASKED_PATTERN)


# --- small helpers -----------------------------------------------------------------------


def _conflict(code: str, message: str, **details: Any) -> DomainError:
    return DomainError(code, message, 409, **details)


def money(value: Any, field_name: str, *, signed: bool = False) -> Decimal:
    """A positive amount of yuan with at most 2 decimals (``signed``: any non-zero amount)."""
    if isinstance(value, (bool, float)) or not isinstance(value, (str, int, Decimal)):
        raise DomainError("invalid_amount", f"{field_name} must be a decimal string such as '1250.00'",
                          field=field_name)
    try:
        amount = Decimal(str(value).strip())
    except InvalidOperation as exc:
        raise DomainError("invalid_amount", f"{field_name} is not a number", field=field_name) from exc
    if not amount.is_finite() or amount != amount.quantize(Decimal("0.01")):
        raise DomainError("invalid_amount", f"{field_name} must have at most 2 decimals", field=field_name)
    if amount == 0 or (amount < 0 and not signed):
        raise DomainError("invalid_amount", f"{field_name} must be {'non-zero' if signed else 'positive'}",
                          field=field_name)
    return cents(amount)


def fmt(amount: Decimal) -> str:
    """Money as the events carry it: '1250.00'."""
    return f"{cents(amount):.2f}"


def _aware(now: datetime) -> datetime:
    if not isinstance(now, datetime) or now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be a timezone-aware datetime")
    return now.astimezone(timezone.utc)


def china_date(now: datetime) -> date:
    return _aware(now).astimezone(CHINA_TZ).date()


def _day(value: Any) -> date:
    return value if isinstance(value, date) and not isinstance(value, datetime) else date.fromisoformat(value)


def _at(value: Any) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)


def _text(value: Any, field_name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise DomainError("missing_field", f"{field_name} is required", field=field_name)
    if len(value.strip()) > MAX_TEXT:
        raise DomainError("too_long", f"{field_name} is longer than {MAX_TEXT} characters", field=field_name)
    return value.strip()


def _optional_text(value: Any, field_name: str) -> str | None:
    return None if value is None or (isinstance(value, str) and not value.strip()) else _text(value, field_name)


def _uuid(value: Any, field_name: str) -> str:
    if not isinstance(value, str) or not _UUID.match(value):
        raise DomainError("invalid_id", f"{field_name} must be a lower-case UUID", field=field_name)
    return value


def _date_arg(value: Any, field_name: str, today: date, *, not_before: date | None = None) -> date:
    if not isinstance(value, date) or isinstance(value, datetime):
        raise DomainError("invalid_date", f"{field_name} must be a date", field=field_name)
    if value > today:
        raise DomainError("invalid_date", f"{field_name} {value} is in the future", field=field_name)
    if not_before is not None and value < not_before:
        raise DomainError("invalid_date", f"{field_name} {value} is before {not_before}", field=field_name)
    return value


# --- household facts -----------------------------------------------------------------------


@dataclass(frozen=True)
class MemberFacts:
    member_id: str
    joined_on: date | None = None
    removed_on: date | None = None
    removal_reason: str | None = None   # registry member_removal_reason code (death, moved_out, ...)
    schooling_stage: str | None = None  # registry schooling_stage code (current)

    def active_on(self, on: date) -> bool:
        return (self.joined_on is None or self.joined_on <= on) and (self.removed_on is None or on < self.removed_on)

    @property
    def deceased(self) -> bool:
        return self.removal_reason == "death"


@dataclass(frozen=True)
class HouseholdFacts:
    """What eligibility needs to know about a household, dated.

    ``status_history``: (effective_on, status) in the order recorded; the first is
    the status at registration (effective from ``registered_on``, or always).
    ``monitoring``: (designated_on, eliminated_on or None, object_type)."""

    household_id: str
    village_code: str
    status_history: tuple[tuple[date, str], ...]
    members: Mapping[str, MemberFacts] = field(default_factory=dict)
    monitoring: tuple[tuple[date, date | None, str], ...] = ()

    def _status_entry(self, on: date) -> tuple[date, str] | None:
        found = None
        for entry in sorted(self.status_history, key=lambda e: e[0]):  # stable: a later record wins a tie
            if entry[0] <= on:
                found = entry
        return found

    def status_on(self, on: date) -> str | None:
        """The register status in force on ``on`` (None before registration)."""
        entry = self._status_entry(on)
        return entry[1] if entry else None

    def status_since(self, on: date) -> date | None:
        entry = self._status_entry(on)
        return entry[0] if entry else None

    def monitoring_on(self, on: date) -> str | None:
        """The monitoring object type in force on ``on``, if the household is a monitoring object then."""
        for start, end, object_type in self.monitoring:
            if start <= on and (end is None or on < end):
                return object_type
        return None


def fold_household_facts(events: Iterable[tuple[str, Mapping[str, Any]]]) -> HouseholdFacts:
    """Build ``HouseholdFacts`` from a household's registry events, oldest first: (event_type, data)
    pairs with the data as published (dates as ISO strings or ``date``). Other event types are ignored."""
    household_id = village = None
    history: list[tuple[date, str]] = []
    members: dict[str, MemberFacts] = {}
    monitoring: list[tuple[date, date | None, str]] = []
    for event_type, d in events:
        if event_type == "HouseholdRegistered":
            household_id, village = d["household_id"], d["village_code"]
            since = _day(d["registered_on"]) if d.get("registered_on") else date.min
            history = [(since, d.get("status") or "applicant")]
        elif household_id is None:
            raise ValueError(f"{event_type} before HouseholdRegistered: the events do not start with the household")
        elif event_type == "MemberAdded":
            members[d["member_id"]] = MemberFacts(
                d["member_id"], _day(d["joined_on"]) if d.get("joined_on") else None,
                schooling_stage=(d.get("profile") or {}).get("schooling_stage"))
        elif event_type == "MemberUpdated":
            stage = (d.get("changes") or {}).get("schooling_stage")
            if stage is not None and d["member_id"] in members:
                m = members[d["member_id"]]
                members[m.member_id] = MemberFacts(m.member_id, m.joined_on, m.removed_on, m.removal_reason, stage)
        elif event_type == "MemberRemoved":
            m = members.get(d["member_id"]) or MemberFacts(d["member_id"])
            members[m.member_id] = MemberFacts(m.member_id, m.joined_on, _day(d["removed_on"]), d["reason"],
                                               m.schooling_stage)
        elif event_type == "HouseholdStatusChanged":
            history.append((_day(d["effective_on"]), d["to_status"]))
        elif event_type == "MonitoringDesignated":
            monitoring.append((_day(d["effective_on"]), None, d["object_type"]))
        elif event_type == "MonitoringRiskEliminated" and monitoring and monitoring[-1][1] is None:
            start, _, object_type = monitoring[-1]
            monitoring[-1] = (start, _day(d["effective_on"]), object_type)
    if household_id is None or village is None:
        raise ValueError("no HouseholdRegistered event: cannot build household facts")
    return HouseholdFacts(household_id, village, tuple(history), members, tuple(monitoring))


# --- eligibility ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RuleFailure:
    """One eligibility rule that failed: ``rule`` is its code, ``details`` the facts."""

    rule: str
    message: str
    details: Mapping[str, Any] = field(default_factory=dict)


def _member_failures(facts: HouseholdFacts, member_id: str, on: date) -> list[RuleFailure]:
    m = facts.members.get(member_id)
    if m is None:
        return [RuleFailure("member_not_in_household", f"member {member_id} is not a member of household "
                            f"{facts.household_id}", {"member_id": member_id})]
    if m.deceased and m.removed_on is not None and m.removed_on <= on:
        return [RuleFailure("member_deceased", f"member {member_id} died on {m.removed_on}",
                            {"member_id": member_id, "died_on": m.removed_on.isoformat()})]
    if not m.active_on(on):
        if m.removed_on is not None and m.removed_on <= on:
            return [RuleFailure("member_not_active", f"member {member_id} left the household on {m.removed_on} "
                                f"({m.removal_reason})", {"member_id": member_id,
                                                          "removed_on": m.removed_on.isoformat(),
                                                          "removal_reason": m.removal_reason})]
        return [RuleFailure("member_not_active", f"member {member_id} joined the household only on {m.joined_on}",
                            {"member_id": member_id, "joined_on": str(m.joined_on)})]
    return []


def policy_eligibility(policy: Policy, facts: HouseholdFacts, member_id: str | None, on: date) -> list[RuleFailure]:
    """Every rule of ``policy`` the household (and member) fails on ``on``; [] when eligible."""
    failures: list[RuleFailure] = []
    status = facts.status_on(on)
    monitoring = facts.monitoring_on(on)
    allowed = status in policy.statuses or (monitoring is not None and MONITORING_OBJECT in policy.statuses
                                             and status not in CLOSED_STATUSES)
    if not allowed:
        failures.append(RuleFailure(
            "household_status", f"policy {policy.code} is not paid to a household that is {status or 'unregistered'}"
            f"{' (monitoring object)' if monitoring else ''} on {on}",
            {"household_status": status, "monitoring_object_type": monitoring, "on": on.isoformat(),
             "allowed": sorted(policy.statuses)}))
    if member_id is not None:
        member_failures = _member_failures(facts, member_id, on)
        failures += member_failures
        if policy.stages is not None and not member_failures:
            stage = facts.members[member_id].schooling_stage
            if stage not in policy.stages:
                failures.append(RuleFailure(
                    "schooling_stage", f"policy {policy.code} needs a member in {', '.join(sorted(policy.stages))}; "
                    f"member {member_id} is {stage or 'of unknown schooling stage'}",
                    {"member_id": member_id, "schooling_stage": stage, "required": sorted(policy.stages)}))
    return failures


def project_eligibility(project: Project, facts: HouseholdFacts, member_id: str | None,
                        on: date) -> list[RuleFailure]:
    """Rules for a payment under ``project`` to the household (and member) on ``on``."""
    failures: list[RuleFailure] = []
    if facts.household_id not in project.beneficiaries:
        failures.append(RuleFailure("not_beneficiary", f"household {facts.household_id} is not covered by "
                                    f"project {project.id}", {"project_id": project.id}))
    status = facts.status_on(on)
    if status is None or status in CLOSED_STATUSES:
        failures.append(RuleFailure("household_status", f"household {facts.household_id} is "
                                    f"{status or 'unregistered'} on {on}",
                                    {"household_status": status, "on": on.isoformat()}))
    if member_id is not None:
        failures += _member_failures(facts, member_id, on)
    return failures


def _refuse(failures: Sequence[RuleFailure]) -> None:
    if failures:
        first = failures[0]
        raise _conflict("not_eligible", first.message, rule=first.rule, failed_rules=[f.rule for f in failures],
                        **first.details)


# --- allocation --------------------------------------------------------------------------


class Allocation(Aggregate):
    """A budget line: money of one source, year and purpose for a region. ``available`` never goes below zero."""

    stream_type = ev.ALLOCATION

    def __init__(self, aggregate_id: str) -> None:
        super().__init__(aggregate_id)
        self.source: str | None = None
        self.year: int | None = None
        self.purpose: str | None = None
        self.region_code: str | None = None
        self.amount = ZERO
        self.reservations: dict[tuple[str, str], Decimal] = {}       # (ref_type, ref_id) -> still reserved
        self.spending: dict[str, tuple[str, str, Decimal]] = {}     # disbursement id -> (ref_type, ref_id, amount)

    @property
    def reserved(self) -> Decimal:
        return sum(self.reservations.values(), ZERO)

    @property
    def spent(self) -> Decimal:
        return sum((a for _, _, a in self.spending.values()), ZERO)

    @property
    def available(self) -> Decimal:
        return self.amount - self.reserved - self.spent

    def reservation(self, ref_type: str, ref_id: str) -> Decimal:
        return self.reservations.get((ref_type, ref_id), ZERO)

    def covers(self, region_code: str) -> bool:
        return self.region_code is not None and region_code.startswith(self.region_code)

    def _record(self, model: type[EventModel], **data: Any) -> None:
        event = model(allocation_id=self.id, **data)
        self.record(event.event_type, event.model_dump(mode="json"), event.schema_version)

    def _require(self) -> None:
        if not self.exists:
            raise DomainError("allocation_not_found", f"allocation {self.id} does not exist", 404)

    def create(self, *, source: str, year: int, purpose: str, region_code: str, amount: Any, created_by: str,
               now: datetime) -> None:
        now = _aware(now)
        if self.exists:
            raise _conflict("allocation_exists", f"allocation {self.id} already exists")
        if source not in ev.FUND_SOURCES:
            raise DomainError("invalid_source", f"source must be one of {', '.join(ev.FUND_SOURCES)}", field="source")
        if isinstance(year, bool) or not isinstance(year, int) or not 2000 <= year <= china_date(now).year + 1:
            raise DomainError("invalid_year", f"year must be 2000 to {china_date(now).year + 1}", field="year")
        if not isinstance(region_code, str) or not _BUDGET_REGION.match(region_code):
            raise DomainError("invalid_region", "region_code must be a province (2 digits), city (4) or county (6) "
                              "code", field="region_code")
        self._record(ev.AllocationCreated, source=source, year=year, purpose=_text(purpose, "purpose"),
                     region_code=region_code, amount=fmt(money(amount, "amount")),
                     created_by=_text(created_by, "created_by"), created_at=now)

    def adjust(self, *, amount_delta: Any, reason: str, adjusted_by: str, now: datetime) -> None:
        """Change the amount by a signed delta; it cannot go below what is reserved and spent."""
        now = _aware(now)
        self._require()
        delta = money(amount_delta, "amount_delta", signed=True)
        new_amount = self.amount + delta
        committed = self.reserved + self.spent
        if new_amount < committed:
            raise _conflict("below_committed", f"allocation {self.id} would have {fmt(new_amount)} but "
                            f"{fmt(committed)} is reserved or spent", rule="allocation_balance",
                            new_amount=fmt(new_amount), reserved=fmt(self.reserved), spent=fmt(self.spent))
        self._record(ev.AllocationAdjusted, amount_delta=fmt(delta), new_amount=fmt(new_amount),
                     reason=_text(reason, "reason"), adjusted_by=_text(adjusted_by, "adjusted_by"), adjusted_at=now)

    def reserve(self, *, ref_type: str, ref_id: str, amount: Any, now: datetime,
                region_code: str | None = None) -> None:
        """Hold ``amount`` for a project or a disbursement; ``region_code`` (where the money goes) must be
        inside the allocation's region."""
        now = _aware(now)
        self._require()
        if ref_type not in ("project", "disbursement"):
            raise DomainError("invalid_ref_type", "ref_type must be project or disbursement", field="ref_type")
        ref_id = _uuid(ref_id, "ref_id")
        requested = money(amount, "amount")
        if (ref_type, ref_id) in self.reservations:
            raise _conflict("already_reserved", f"allocation {self.id} already holds a reservation for {ref_type} "
                            f"{ref_id}", ref_type=ref_type, ref_id=ref_id)
        if region_code is not None and not self.covers(region_code):
            raise _conflict("outside_region", f"allocation {self.id} is for region {self.region_code}, not "
                            f"{region_code}", rule="allocation_region", allocation_region=self.region_code,
                            region_code=region_code)
        if requested > self.available:
            raise _conflict("insufficient_funds", f"allocation {self.id} has {fmt(self.available)} available, "
                            f"{fmt(requested)} requested", rule="allocation_balance", allocation_id=self.id,
                            available=fmt(self.available), requested=fmt(requested))
        self._record(ev.FundsReserved, ref_type=ref_type, ref_id=ref_id, amount=fmt(requested), reserved_at=now)

    def release(self, *, ref_type: str, ref_id: str, reason: str, now: datetime, amount: Any = None) -> Decimal:
        """Return what is left of a reservation (or ``amount`` of it) to ``available``; returns the amount."""
        now = _aware(now)
        self._require()
        if (ref_type, ref_id) not in self.reservations:
            raise _conflict("no_reservation", f"allocation {self.id} holds no reservation for {ref_type} {ref_id}",
                            ref_type=ref_type, ref_id=ref_id)
        held = self.reservations[(ref_type, ref_id)]
        released = held if amount is None else money(amount, "amount")
        if released > held:
            raise _conflict("insufficient_reservation", f"only {fmt(held)} is reserved for {ref_type} {ref_id}",
                            reserved=fmt(held), requested=fmt(released))
        if released > 0:
            self._record(ev.ReservationReleased, ref_type=ref_type, ref_id=ref_id, amount=fmt(released),
                         reason=_text(reason, "reason"), released_at=now)
        return released

    def spend(self, *, ref_type: str, ref_id: str, disbursement_id: str, amount: Any, spent_on: date) -> None:
        """A disbursement was paid from the reservation ``(ref_type, ref_id)``."""
        self._require()
        requested = money(amount, "amount")
        if disbursement_id in self.spending:
            raise _conflict("already_spent", f"disbursement {disbursement_id} was already paid from allocation "
                            f"{self.id}", disbursement_id=disbursement_id)
        held = self.reservation(ref_type, ref_id)
        if requested > held:
            raise _conflict("insufficient_reservation", f"{fmt(held)} is reserved for {ref_type} {ref_id} on "
                            f"allocation {self.id}, {fmt(requested)} is to be paid", rule="allocation_balance",
                            reserved=fmt(held), requested=fmt(requested))
        self._record(ev.FundsSpent, ref_type=ref_type, ref_id=ref_id, disbursement_id=disbursement_id,
                     amount=fmt(requested), spent_on=spent_on)

    def reverse_spending(self, *, disbursement_id: str, reason: str, now: datetime, release: bool) -> None:
        """A paid disbursement was reversed: its amount goes back into its reservation, and to ``available``
        as well when ``release`` (the reservation is no longer needed)."""
        now = _aware(now)
        self._require()
        if disbursement_id not in self.spending:
            raise _conflict("not_spent", f"disbursement {disbursement_id} was not paid from allocation {self.id}")
        ref_type, ref_id, amount = self.spending[disbursement_id]
        reason = _text(reason, "reason")
        self._record(ev.SpendingReversed, ref_type=ref_type, ref_id=ref_id, disbursement_id=disbursement_id,
                     amount=fmt(amount), reason=reason, reversed_at=now)
        if release:
            self.release(ref_type=ref_type, ref_id=ref_id, reason=reason, now=now, amount=fmt(amount))

    def when_AllocationCreated(self, d: dict[str, Any]) -> None:
        self.source, self.year, self.purpose = d["source"], d["year"], d["purpose"]
        self.region_code = d["region_code"]
        self.amount = Decimal(d["amount"])

    def when_AllocationAdjusted(self, d: dict[str, Any]) -> None:
        self.amount = Decimal(d["new_amount"])

    def when_FundsReserved(self, d: dict[str, Any]) -> None:
        self.reservations[(d["ref_type"], d["ref_id"])] = Decimal(d["amount"])

    def when_ReservationReleased(self, d: dict[str, Any]) -> None:
        key = (d["ref_type"], d["ref_id"])
        self.reservations[key] -= Decimal(d["amount"])

    def when_FundsSpent(self, d: dict[str, Any]) -> None:
        self.reservations[(d["ref_type"], d["ref_id"])] -= Decimal(d["amount"])
        self.spending[d["disbursement_id"]] = (d["ref_type"], d["ref_id"], Decimal(d["amount"]))

    def when_SpendingReversed(self, d: dict[str, Any]) -> None:
        key = (d["ref_type"], d["ref_id"])
        self.reservations[key] = self.reservations.get(key, ZERO) + Decimal(d["amount"])
        del self.spending[d["disbursement_id"]]


# --- project -----------------------------------------------------------------------------

PROJECT_TRANSITIONS: dict[str, frozenset[str]] = {  # command -> statuses it may start from
    "review": frozenset({"declared"}),
    "approve": frozenset({"reviewed"}),
    "reject": frozenset({"declared", "reviewed"}),
    "start": frozenset({"approved"}),
    "record_milestone": frozenset({"in_progress"}),
    "complete": frozenset({"in_progress"}),
    "accept": frozenset({"completed"}),
    "cancel": frozenset({"declared", "reviewed", "approved", "in_progress"}),
    "commit_payment": frozenset({"approved", "in_progress", "completed"}),
}


class Project(Aggregate):
    """declared -> reviewed -> approved -> in_progress -> completed -> accepted; rejected; cancelled."""

    stream_type = ev.PROJECT

    def __init__(self, aggregate_id: str) -> None:
        super().__init__(aggregate_id)
        self.name: str | None = None
        self.kind: str | None = None
        self.region_code: str | None = None
        self.budget = ZERO
        self.plan_year: int | None = None
        self.beneficiaries: frozenset[str] = frozenset()
        self.status: str | None = None
        self.approved_budget: Decimal | None = None
        self.funding: dict[str, Decimal] = {}                       # allocation id -> amount
        self.commitments: dict[str, tuple[str, Decimal]] = {}       # disbursement id -> (allocation id, amount)
        self.payments: dict[str, tuple[str, Decimal]] = {}          # disbursement id -> (allocation id, amount)
        self.milestones: list[dict[str, Any]] = []
        self.started_on: date | None = None

    @property
    def closed(self) -> bool:
        return self.status in ("accepted", "cancelled", "rejected")

    @property
    def paid(self) -> Decimal:
        return sum((a for _, a in self.payments.values()), ZERO)

    @property
    def committed(self) -> Decimal:
        return sum((a for _, a in self.commitments.values()), ZERO)

    def line_used(self, allocation_id: str) -> Decimal:
        return sum((a for alloc, a in (*self.commitments.values(), *self.payments.values()) if alloc == allocation_id),
                   ZERO)

    def unspent_by_allocation(self) -> dict[str, Decimal]:
        """What is left of each funding line after payments and commitments."""
        return {alloc: amount - self.line_used(alloc) for alloc, amount in self.funding.items()}

    def _record(self, model: type[EventModel], **data: Any) -> None:
        event = model(project_id=self.id, **data)
        self.record(event.event_type, event.model_dump(mode="json"), event.schema_version)

    def _require(self, command: str) -> None:
        if not self.exists:
            raise DomainError("project_not_found", f"project {self.id} does not exist", 404)
        allowed = PROJECT_TRANSITIONS[command]
        if self.status not in allowed:
            raise _conflict("invalid_transition", f"a project that is {self.status} cannot {command.replace('_', ' ')}"
                            f" (needs {', '.join(sorted(allowed))})", current_status=self.status, command=command,
                            allowed=sorted(allowed))

    def _release_lines(self, allocations: Mapping[str, Allocation], reason: str,
                       now: datetime) -> list[ev.FundingLine]:
        if self.commitments:
            raise _conflict("payments_pending", f"{len(self.commitments)} approved payment(s) of project {self.id} "
                            "are neither paid nor failed", disbursement_ids=sorted(self.commitments))
        lines = {a: amount for a, amount in self.unspent_by_allocation().items() if amount > 0}
        missing = sorted(set(lines) - set(allocations))
        if missing:
            raise ValueError(f"allocations {missing} of project {self.id} were not passed in")
        for alloc_id, amount in lines.items():
            allocations[alloc_id].release(ref_type="project", ref_id=self.id, reason=reason, now=now,
                                          amount=fmt(amount))
        return [ev.FundingLine(allocation_id=a, amount=fmt(x)) for a, x in sorted(lines.items())]

    def declare(self, *, name: str, kind: str, region_code: str, budget: Any, plan_year: int,
                beneficiary_household_ids: Sequence[str], declared_by: str, now: datetime) -> None:
        now = _aware(now)
        if self.exists:
            raise _conflict("project_exists", f"project {self.id} already exists")
        if kind not in ev.PROJECT_KINDS:
            raise DomainError("invalid_kind", f"kind must be one of {', '.join(ev.PROJECT_KINDS)}", field="kind")
        if not isinstance(region_code, str) or not _PROJECT_REGION.match(region_code):
            raise DomainError("invalid_region", "region_code must be a village (12 digits) or township (9 digits) "
                              "code", field="region_code")
        this_year = china_date(now).year
        if isinstance(plan_year, bool) or not isinstance(plan_year, int) or not 2000 <= plan_year <= this_year + 1:
            raise DomainError("invalid_year", f"plan_year must be 2000 to {this_year + 1}", field="plan_year")
        if isinstance(beneficiary_household_ids, str) or not beneficiary_household_ids:
            raise DomainError("beneficiaries_required", "a project covers at least one household",
                              field="beneficiary_household_ids")
        ids = [_uuid(h, "beneficiary_household_ids") for h in beneficiary_household_ids]
        if len(set(ids)) != len(ids):
            raise DomainError("duplicate_beneficiary", "a household is listed twice", field="beneficiary_household_ids")
        self._record(ev.ProjectDeclared, name=_text(name, "name"), kind=kind, region_code=region_code,
                     budget=fmt(money(budget, "budget")), plan_year=plan_year, beneficiary_household_ids=ids,
                     declared_by=_text(declared_by, "declared_by"), declared_at=now)

    def review(self, *, reviewer: str, now: datetime, comment: str | None = None) -> None:
        now = _aware(now)
        self._require("review")
        self._record(ev.ProjectReviewed, reviewer=_text(reviewer, "reviewer"),
                     comment=_optional_text(comment, "comment"), reviewed_at=now)

    def approve(self, *, approved_budget: Any, funding: Sequence[Mapping[str, Any]], approved_by: str,
                now: datetime, allocations: Mapping[str, Allocation]) -> None:
        """Approve with ``funding`` lines ({allocation_id, amount}) summing to ``approved_budget``, and reserve
        each line on its allocation (all lines are checked before any is reserved)."""
        now = _aware(now)
        self._require("approve")
        approved = money(approved_budget, "approved_budget")
        if approved > self.budget:
            raise DomainError("approved_above_declared", f"approved budget {fmt(approved)} is above the declared "
                              f"{fmt(self.budget)}", field="approved_budget", budget=fmt(self.budget))
        if isinstance(funding, (str, Mapping)) or not funding:
            raise DomainError("funding_required", "funding lines are required", field="funding")
        lines: dict[str, Decimal] = {}
        for i, line in enumerate(funding):
            alloc_id = _uuid(line.get("allocation_id") if isinstance(line, Mapping) else None,
                             f"funding[{i}].allocation_id")
            if alloc_id in lines:
                raise DomainError("duplicate_funding_line", f"allocation {alloc_id} is listed twice", field="funding")
            lines[alloc_id] = money(line.get("amount"), f"funding[{i}].amount")
        total = sum(lines.values(), ZERO)
        if total != approved:
            raise DomainError("funding_mismatch", f"funding lines sum to {fmt(total)}, the approved budget is "
                              f"{fmt(approved)}", field="funding", funding_total=fmt(total))
        for alloc_id, amount in lines.items():
            alloc = allocations.get(alloc_id)
            if alloc is None or not alloc.exists:
                raise DomainError("allocation_not_found", f"allocation {alloc_id} does not exist", 404,
                                  allocation_id=alloc_id)
            assert self.region_code is not None
            if not alloc.covers(self.region_code):
                raise _conflict("outside_region", f"allocation {alloc_id} is for region {alloc.region_code}, the "
                                f"project is in {self.region_code}", rule="allocation_region", allocation_id=alloc_id)
            if amount > alloc.available:
                raise _conflict("insufficient_funds", f"allocation {alloc_id} has {fmt(alloc.available)} available, "
                                f"{fmt(amount)} requested", rule="allocation_balance", allocation_id=alloc_id,
                                available=fmt(alloc.available), requested=fmt(amount))
        for alloc_id, amount in lines.items():
            allocations[alloc_id].reserve(ref_type="project", ref_id=self.id, amount=fmt(amount), now=now)
        self._record(ev.ProjectApproved, approved_budget=fmt(approved),
                     funding=[ev.FundingLine(allocation_id=a, amount=fmt(x)) for a, x in lines.items()],
                     approved_by=_text(approved_by, "approved_by"), approved_at=now)

    def reject(self, *, reason: str, rejected_by: str, now: datetime) -> None:
        now = _aware(now)
        self._require("reject")
        self._record(ev.ProjectRejected, reason=_text(reason, "reason"), rejected_by=_text(rejected_by, "rejected_by"),
                     rejected_at=now)

    def start(self, *, started_on: date, started_by: str, now: datetime) -> None:
        now = _aware(now)
        self._require("start")
        self._record(ev.ProjectStarted, started_on=_date_arg(started_on, "started_on", china_date(now)),
                     started_by=_text(started_by, "started_by"))

    def record_milestone(self, *, name: str, reached_on: date, recorded_by: str, now: datetime,
                         note: str | None = None) -> None:
        now = _aware(now)
        self._require("record_milestone")
        self._record(ev.MilestoneRecorded, name=_text(name, "name"),
                     reached_on=_date_arg(reached_on, "reached_on", china_date(now), not_before=self.started_on),
                     note=_optional_text(note, "note"), recorded_by=_text(recorded_by, "recorded_by"))

    def complete(self, *, completed_on: date, completed_by: str, now: datetime) -> None:
        now = _aware(now)
        self._require("complete")
        self._record(ev.ProjectCompleted,
                     completed_on=_date_arg(completed_on, "completed_on", china_date(now), not_before=self.started_on),
                     completed_by=_text(completed_by, "completed_by"))

    def accept(self, *, accepted_by: str, now: datetime, allocations: Mapping[str, Allocation]) -> None:
        """Acceptance; what is left of each funding line is released on its allocation."""
        now = _aware(now)
        self._require("accept")
        accepted_by = _text(accepted_by, "accepted_by")
        released = self._release_lines(allocations, f"project {self.id} accepted", now)
        self._record(ev.ProjectAccepted, accepted_by=accepted_by, accepted_at=now, released=released)

    def cancel(self, *, reason: str, cancelled_by: str, now: datetime,
               allocations: Mapping[str, Allocation] | None = None) -> None:
        """Stop the project; a reservation (approved and later) is released, what was paid stays paid."""
        now = _aware(now)
        self._require("cancel")
        reason, cancelled_by = _text(reason, "reason"), _text(cancelled_by, "cancelled_by")
        released = self._release_lines(allocations or {}, f"project {self.id} cancelled: {reason}", now)
        self._record(ev.ProjectCancelled, reason=reason, cancelled_by=cancelled_by, cancelled_at=now,
                     released=released)

    def commit_payment(self, *, disbursement_id: str, allocation_id: str, amount: Any, now: datetime) -> None:
        """Hold ``amount`` of the funding line ``allocation_id`` for an approved disbursement."""
        now = _aware(now)
        self._require("commit_payment")
        requested = money(amount, "amount")
        if disbursement_id in self.commitments or disbursement_id in self.payments:
            raise _conflict("payment_exists", f"disbursement {disbursement_id} is already on project {self.id}")
        if allocation_id not in self.funding:
            raise _conflict("not_a_funding_line", f"allocation {allocation_id} does not fund project {self.id}",
                            allocation_id=allocation_id, funding=sorted(self.funding))
        assert self.approved_budget is not None
        left = self.funding[allocation_id] - self.line_used(allocation_id)
        if requested > left:
            raise _conflict("over_budget", f"project {self.id} has {fmt(left)} left on allocation {allocation_id} "
                            f"(approved budget {fmt(self.approved_budget)}, paid {fmt(self.paid)}, committed "
                            f"{fmt(self.committed)}), {fmt(requested)} requested", rule="project_budget",
                            approved_budget=fmt(self.approved_budget), paid=fmt(self.paid),
                            committed=fmt(self.committed), remaining=fmt(left), requested=fmt(requested))
        self._record(ev.ProjectPaymentCommitted, disbursement_id=disbursement_id, allocation_id=allocation_id,
                     amount=fmt(requested), committed_at=now)

    def record_payment(self, *, disbursement_id: str, paid_on: date) -> None:
        if disbursement_id not in self.commitments:
            raise _conflict("payment_not_committed", f"disbursement {disbursement_id} has no commitment on project "
                            f"{self.id}", disbursement_id=disbursement_id)
        alloc_id, amount = self.commitments[disbursement_id]
        self._record(ev.ProjectPaymentRecorded, disbursement_id=disbursement_id, allocation_id=alloc_id,
                     amount=fmt(amount), paid_on=paid_on)

    def release_payment(self, *, disbursement_id: str, reason: str, now: datetime) -> None:
        now = _aware(now)
        was_paid = disbursement_id in self.payments
        if not was_paid and disbursement_id not in self.commitments:
            raise _conflict("payment_unknown", f"disbursement {disbursement_id} is not on project {self.id}")
        alloc_id, amount = (self.payments if was_paid else self.commitments)[disbursement_id]
        self._record(ev.ProjectPaymentReleased, disbursement_id=disbursement_id, allocation_id=alloc_id,
                     amount=fmt(amount), was_paid=was_paid, reason=_text(reason, "reason"), released_at=now)

    def when_ProjectDeclared(self, d: dict[str, Any]) -> None:
        self.name, self.kind, self.region_code = d["name"], d["kind"], d["region_code"]
        self.budget, self.plan_year = Decimal(d["budget"]), d["plan_year"]
        self.beneficiaries = frozenset(d["beneficiary_household_ids"])
        self.status = "declared"

    def when_ProjectReviewed(self, d: dict[str, Any]) -> None:
        self.status = "reviewed"

    def when_ProjectApproved(self, d: dict[str, Any]) -> None:
        self.status = "approved"
        self.approved_budget = Decimal(d["approved_budget"])
        self.funding = {line["allocation_id"]: Decimal(line["amount"]) for line in d["funding"]}

    def when_ProjectRejected(self, d: dict[str, Any]) -> None:
        self.status = "rejected"

    def when_ProjectStarted(self, d: dict[str, Any]) -> None:
        self.status, self.started_on = "in_progress", _day(d["started_on"])

    def when_MilestoneRecorded(self, d: dict[str, Any]) -> None:
        self.milestones.append(dict(d))

    def when_ProjectCompleted(self, d: dict[str, Any]) -> None:
        self.status = "completed"

    def when_ProjectAccepted(self, d: dict[str, Any]) -> None:
        self.status = "accepted"

    def when_ProjectCancelled(self, d: dict[str, Any]) -> None:
        self.status = "cancelled"

    def when_ProjectPaymentCommitted(self, d: dict[str, Any]) -> None:
        self.commitments[d["disbursement_id"]] = (d["allocation_id"], Decimal(d["amount"]))

    def when_ProjectPaymentRecorded(self, d: dict[str, Any]) -> None:
        del self.commitments[d["disbursement_id"]]
        self.payments[d["disbursement_id"]] = (d["allocation_id"], Decimal(d["amount"]))

    def when_ProjectPaymentReleased(self, d: dict[str, Any]) -> None:
        (self.payments if d["was_paid"] else self.commitments).pop(d["disbursement_id"], None)


# --- disbursement -----------------------------------------------------------------------

DISBURSEMENT_TRANSITIONS: dict[str, frozenset[str]] = {
    "approve": frozenset({"requested"}),
    "pay": frozenset({"approved"}),
    "reconcile": frozenset({"paid"}),
    "fail": frozenset({"requested", "approved"}),
    "reverse": frozenset({"paid", "reconciled"}),
}
_PARTICIPLES = {"approve": "approved", "pay": "paid", "reconcile": "reconciled", "fail": "failed",
                "reverse": "reversed"}


def payment_key(disbursement: Disbursement) -> tuple[str, str, str, str] | None:
    """The entitlement a policy payment uses up: (``member``|``household``, beneficiary id, policy group,
    period, or ``once`` for one-off entitlements). Two live disbursements (not failed or reversed) must
    never share a key; keep it under a unique constraint. None for project payments (instalments)."""
    if disbursement.basis != "policy":
        return None
    assert disbursement.policy_group is not None and disbursement.period is not None
    beneficiary = ("member", disbursement.member_id) if disbursement.member_id else (
        "household", disbursement.household_id)
    period = "once" if disbursement.policy_unit == "once" else disbursement.period
    return (beneficiary[0], str(beneficiary[1]), disbursement.policy_group, period)


def duplicate_payment(key: tuple[str, str, str, str], existing_disbursement_id: str) -> DomainError:
    """The error to raise when ``payment_key`` is already taken by a live disbursement."""
    kind, beneficiary, group, period = key
    return _conflict("duplicate_payment", f"{kind} {beneficiary} already has a payment of {group} for {period} "
                     f"(disbursement {existing_disbursement_id})", rule="duplicate_payment",
                     existing_disbursement_id=existing_disbursement_id, policy_group=group, period=period)


class Disbursement(Aggregate):
    """requested -> approved -> paid -> reconciled; failed (before payment); reversed (after). A department's
    own payment is recorded paid at once (``record_department_payment``) and stays so."""

    stream_type = ev.DISBURSEMENT

    def __init__(self, aggregate_id: str) -> None:
        super().__init__(aggregate_id)
        self.status: str | None = None
        self.household_id: str | None = None
        self.member_id: str | None = None
        self.village_code: str | None = None
        self.basis: str | None = None
        self.policy_code: str | None = None
        self.policy_version: int | None = None
        self.policy_group: str | None = None
        self.policy_unit: str | None = None
        self.project_id: str | None = None
        self.period: str | None = None
        self.amount = ZERO
        self.standard_amount: Decimal | None = None
        self.cost_basis: Decimal | None = None
        self.account_hash: str | None = None
        self.allocation_id: str | None = None
        self.approved_on: date | None = None
        self.paid_on: date | None = None
        self.channel: str | None = None
        self.channel_reference: str | None = None
        self.department: str | None = None  # paid by this department's own system (subsidy records)
        self.department_reference: str | None = None

    def _record(self, model: type[EventModel], **data: Any) -> None:
        event = model(disbursement_id=self.id, **data)
        self.record(event.event_type, event.model_dump(mode="json"), event.schema_version)

    def _require(self, command: str) -> None:
        if not self.exists:
            raise DomainError("disbursement_not_found", f"disbursement {self.id} does not exist", 404)
        self.require_platform(command)
        allowed = DISBURSEMENT_TRANSITIONS[command]
        if self.status not in allowed:
            raise _conflict("invalid_transition", f"a disbursement that is {self.status} cannot be "
                            f"{_PARTICIPLES[command]} (needs {', '.join(sorted(allowed))})",
                            current_status=self.status, command=command, allowed=sorted(allowed))

    def require_platform(self, command: str) -> None:
        """409 ``department_payment`` when the disbursement records a department's own payment."""
        if self.department is not None:
            raise _conflict("department_payment", f"disbursement {self.id} records a payment made by the "
                            f"{self.department} department's own system: it cannot be {_PARTICIPLES[command]} "
                            "on the platform", department=self.department, command=command)

    def _check_facts(self, facts: HouseholdFacts, household_id: str | None = None) -> None:
        household_id = household_id or self.household_id
        if not isinstance(facts, HouseholdFacts) or facts.household_id != household_id:
            raise ValueError(f"facts of household {getattr(facts, 'household_id', None)} passed for {household_id}")

    def _check_project(self, project: Project | None) -> Project:
        if project is None or project.id != self.project_id:
            raise ValueError(f"project {self.project_id} must be passed in")
        return project

    def _eligibility(self, facts: HouseholdFacts, on: date, catalogue: Catalogue | None,
                     project: Project | None) -> None:
        if self.basis == "policy":
            assert self.policy_code is not None
            policy = (catalogue or default_catalogue()).policy(self.policy_code)
            _refuse(policy_eligibility(policy, facts, self.member_id, on))
        else:
            _refuse(project_eligibility(self._check_project(project), facts, self.member_id, on))

    def request(self, *, household_id: str, basis: str, period: str, amount: Any, requested_by: str, now: datetime,
                facts: HouseholdFacts, member_id: str | None = None, policy_code: str | None = None,
                project: Project | None = None, cost_basis: Any = None, account_masked: str | None = None,
                account_hash: str | None = None, catalogue: Catalogue | None = None) -> None:
        """Request a payment. Policy basis: the amount is at most the policy standard for the period and
        the household (member) is eligible today; project basis: the household is covered by the project."""
        now = _aware(now)
        today = china_date(now)
        if self.exists:
            raise _conflict("disbursement_exists", f"disbursement {self.id} already exists")
        household_id = _uuid(household_id, "household_id")
        self._check_facts(facts, household_id)
        if member_id is not None:
            member_id = _uuid(member_id, "member_id")
        requested = money(amount, "amount")
        if account_hash is not None and (not isinstance(account_hash, str) or not _HMAC.match(account_hash)):
            raise DomainError("invalid_account_hash", "account_hash must be 64 lower-case hex characters",
                              field="account_hash")
        if account_masked is not None and (not isinstance(account_masked, str)
                                           or not _ACCOUNT_MASKED.match(account_masked)):
            raise DomainError("invalid_account_masked", "account_masked must be masked: at most the first 6 and the "
                              "last 4 digits shown, e.g. 6217****1234", field="account_masked")
        data: dict[str, Any] = {}
        if basis == "policy":
            if policy_code is None:
                raise DomainError("missing_field", "a policy payment names its policy_code", field="policy_code")
            if project is not None:
                raise DomainError("unexpected_field", "a policy payment has no project", field="project_id")
            policy = (catalogue or default_catalogue()).policy(policy_code)
            parsed: Period = policy.check_period(period)
            if policy.paid_to == "member" and member_id is None:
                raise DomainError("missing_field", f"policy {policy.code} is paid per person: member_id is required",
                                  field="member_id")
            if policy.paid_to == "household" and member_id is not None:
                raise DomainError("unexpected_field", f"policy {policy.code} is paid per household: no member_id",
                                  field="member_id")
            if policy.kind == "banded":
                if cost_basis is None:
                    raise DomainError("missing_field", f"policy {policy.code} reimburses a cost: cost_basis is "
                                      "required", field="cost_basis")
                cost = money(cost_basis, "cost_basis")
            elif cost_basis is not None:
                raise DomainError("unexpected_field", f"policy {policy.code} has a fixed standard: no cost_basis",
                                  field="cost_basis")
            else:
                cost = None
            if parsed.start > today:
                raise DomainError("period_in_future", f"period {parsed.text} has not started", field="period")
            standard = policy.standard_for(parsed, cost)
            if requested > standard.amount:
                raise DomainError("amount_above_standard", f"{fmt(requested)} is above the standard "
                                  f"{fmt(standard.amount)} of {policy.code} for {parsed.text}",
                                  rule="amount_above_standard", field="amount", standard_amount=fmt(standard.amount),
                                  requested=fmt(requested), policy_version=standard.version)
            _refuse(policy_eligibility(policy, facts, member_id, today))
            data = {"policy_code": policy.code, "policy_version": standard.version, "policy_group": policy.group,
                    "policy_unit": policy.unit, "standard_amount": fmt(standard.amount),
                    "cost_basis": fmt(cost) if cost is not None else None}
        elif basis == "project":
            if project is None:
                raise DomainError("missing_field", "a project payment names its project", field="project_id")
            if policy_code is not None or cost_basis is not None:
                raise DomainError("unexpected_field", "a project payment has no policy_code or cost_basis",
                                  field="policy_code" if policy_code is not None else "cost_basis")
            if not project.exists:
                raise DomainError("project_not_found", f"project {project.id} does not exist", 404)
            if project.status not in PROJECT_TRANSITIONS["commit_payment"]:
                raise _conflict("project_not_payable", f"project {project.id} is {project.status}: no payments",
                                rule="project_status", project_status=project.status)
            if parse_period(period).start > today:
                raise DomainError("period_in_future", f"period {period} has not started", field="period")
            _refuse(project_eligibility(project, facts, member_id, today))
            data = {"project_id": project.id}
        else:
            raise DomainError("invalid_basis", "basis must be policy or project", field="basis")
        self._record(ev.DisbursementRequested, household_id=household_id, member_id=member_id,
                     village_code=facts.village_code, basis=basis, period=period, amount=fmt(requested),
                     account_masked=account_masked, account_hash=account_hash,
                     requested_by=_text(requested_by, "requested_by"), requested_at=now, **data)

    def approve(self, *, approved_by: str, now: datetime, facts: HouseholdFacts, allocation: Allocation,
                project: Project | None = None, catalogue: Catalogue | None = None) -> None:
        """Re-check eligibility on today's facts, then reserve the amount on ``allocation`` (policy) or commit
        it on the project's funding line ``allocation`` (project)."""
        now = _aware(now)
        self._require("approve")
        self._check_facts(facts)
        approved_by = _text(approved_by, "approved_by")
        self._eligibility(facts, china_date(now), catalogue, project)
        if not allocation.exists:
            raise DomainError("allocation_not_found", f"allocation {allocation.id} does not exist", 404)
        if self.basis == "policy":
            allocation.reserve(ref_type="disbursement", ref_id=self.id, amount=fmt(self.amount), now=now,
                               region_code=self.village_code)
        else:
            self._check_project(project).commit_payment(disbursement_id=self.id, allocation_id=allocation.id,
                                                        amount=fmt(self.amount), now=now)
        self._record(ev.DisbursementApproved, approved_by=approved_by, allocation_id=allocation.id, approved_at=now)

    def pay(self, *, channel: str, channel_reference: str, paid_on: date, now: datetime, allocation: Allocation,
            project: Project | None = None, catalogue: Catalogue | None = None) -> None:
        """The channel paid: spend the reservation and record the payment on the project."""
        now = _aware(now)
        self._require("pay")
        if allocation.id != self.allocation_id:
            raise ValueError(f"allocation {self.allocation_id} must be passed in, not {allocation.id}")
        if channel not in ev.PAYMENT_CHANNELS:
            raise DomainError("invalid_channel", f"channel must be one of {', '.join(ev.PAYMENT_CHANNELS)}",
                              field="channel")
        if self.basis == "policy":
            assert self.policy_code is not None
            allowed = (catalogue or default_catalogue()).policy(self.policy_code).channels
            if allowed is not None and channel not in allowed:
                raise DomainError("invalid_channel", f"policy {self.policy_code} is paid through "
                                  f"{', '.join(allowed)}, not {channel}", rule="payment_channel", field="channel")
        paid_on = _date_arg(paid_on, "paid_on", china_date(now), not_before=self.approved_on)
        reference = _text(channel_reference, "channel_reference")
        if self.basis == "policy":
            allocation.spend(ref_type="disbursement", ref_id=self.id, disbursement_id=self.id,
                             amount=fmt(self.amount), spent_on=paid_on)
        else:
            proj = self._check_project(project)
            if self.id not in proj.commitments:
                raise _conflict("payment_not_committed", f"disbursement {self.id} has no commitment on project "
                                f"{proj.id}")
            assert self.project_id is not None
            allocation.spend(ref_type="project", ref_id=self.project_id, disbursement_id=self.id,
                             amount=fmt(self.amount), spent_on=paid_on)
            proj.record_payment(disbursement_id=self.id, paid_on=paid_on)
        self._record(ev.DisbursementPaid, channel=channel, channel_reference=reference, paid_on=paid_on,
                     recorded_at=now)

    def reconcile(self, *, statement_id: str, statement_line: str, now: datetime) -> None:
        now = _aware(now)
        self._require("reconcile")
        self._record(ev.DisbursementReconciled, statement_id=_text(statement_id, "statement_id"),
                     statement_line=_text(statement_line, "statement_line"), reconciled_at=now)

    def fail(self, *, reason: str, now: datetime, allocation: Allocation | None = None,
             project: Project | None = None) -> None:
        """Refused, or the payment attempt failed: an approved amount is released."""
        now = _aware(now)
        self._require("fail")
        reason = _text(reason, "reason")
        if self.status == "approved":
            if self.basis == "policy":
                if allocation is None or allocation.id != self.allocation_id:
                    raise ValueError(f"allocation {self.allocation_id} must be passed in")
                allocation.release(ref_type="disbursement", ref_id=self.id, reason=reason, now=now)
            else:
                self._check_project(project).release_payment(disbursement_id=self.id, reason=reason, now=now)
        self._record(ev.DisbursementFailed, reason=reason, failed_at=now)

    def reverse(self, *, reason: str, now: datetime, allocation: Allocation, project: Project | None = None) -> None:
        """The paid amount came back: it returns to the allocation (to the project's reservation while the
        project is open) and no longer counts as paid."""
        now = _aware(now)
        self._require("reverse")
        if allocation.id != self.allocation_id:
            raise ValueError(f"allocation {self.allocation_id} must be passed in, not {allocation.id}")
        reason = _text(reason, "reason")
        if self.basis == "policy":
            allocation.reverse_spending(disbursement_id=self.id, reason=reason, now=now, release=True)
        else:
            proj = self._check_project(project)
            allocation.reverse_spending(disbursement_id=self.id, reason=reason, now=now, release=proj.closed)
            proj.release_payment(disbursement_id=self.id, reason=reason, now=now)
        self._record(ev.DisbursementReversed, reason=reason, reversed_at=now)

    def record_department_payment(self, *, facts: HouseholdFacts, member_id: str | None, policy_code: str,
                                  policy_group: str | None, policy_unit: str | None, period: str, amount: Any,
                                  paid_on: date, channel: str, department: str, payer_jurisdiction: str,
                                  reference: str, quarter: str, import_id: str, recorded_by: str, now: datetime,
                                  policy_version: int | None = None, standard_amount: Any = None) -> None:
        """Record a payment another department's system made (its quarterly subsidy records): a fact, so no
        eligibility rule refuses it (a payment to a member who had died is recorded, and the anomaly rules
        flag it); only what makes the record meaningless is refused. Draws on no allocation."""
        now = _aware(now)
        if self.exists:
            raise _conflict("disbursement_exists", f"disbursement {self.id} already exists")
        if not isinstance(facts, HouseholdFacts):
            raise TypeError("facts must be the household's HouseholdFacts")
        if member_id is not None:
            member_id = _uuid(member_id, "member_id")
            if member_id not in facts.members:
                raise DomainError("member_not_in_household", f"member {member_id} is not a member of household "
                                  f"{facts.household_id}", field="member_id")
        if channel not in ev.PAYMENT_CHANNELS:
            raise DomainError("invalid_channel", f"channel must be one of {', '.join(ev.PAYMENT_CHANNELS)}",
                              field="channel")
        parse_period(period)
        paid_on = _date_arg(paid_on, "paid_on", china_date(now))
        self._record(ev.DepartmentPaymentRecorded, household_id=_uuid(facts.household_id, "household_id"),
                     member_id=member_id, village_code=facts.village_code, policy_code=_text(policy_code, "policy_code"),
                     policy_version=policy_version, policy_group=policy_group, policy_unit=policy_unit,
                     period=period, amount=fmt(money(amount, "amount")),
                     standard_amount=fmt(money(standard_amount, "standard_amount"))
                     if standard_amount is not None else None,
                     channel=channel, paid_on=paid_on, department=department, payer_jurisdiction=payer_jurisdiction,
                     department_reference=_text(reference, "reference"), quarter=quarter,
                     import_id=_uuid(import_id, "import_id"), recorded_by=_text(recorded_by, "recorded_by"),
                     recorded_at=now)

    @property
    def payment_key(self) -> tuple[str, str, str, str] | None:
        return payment_key(self)

    def when_DisbursementRequested(self, d: dict[str, Any]) -> None:
        self.status = "requested"
        for name in ("household_id", "member_id", "village_code", "basis", "policy_code", "policy_version",
                     "policy_group", "policy_unit", "project_id", "period", "account_hash"):
            setattr(self, name, d.get(name))
        self.amount = Decimal(d["amount"])
        self.standard_amount = Decimal(d["standard_amount"]) if d.get("standard_amount") else None
        self.cost_basis = Decimal(d["cost_basis"]) if d.get("cost_basis") else None

    def when_DisbursementApproved(self, d: dict[str, Any]) -> None:
        self.status = "approved"
        self.allocation_id = d["allocation_id"]
        self.approved_on = _at(d["approved_at"]).astimezone(CHINA_TZ).date()

    def when_DisbursementPaid(self, d: dict[str, Any]) -> None:
        self.status = "paid"
        self.paid_on = _day(d["paid_on"])
        self.channel, self.channel_reference = d["channel"], d["channel_reference"]

    def when_DisbursementReconciled(self, d: dict[str, Any]) -> None:
        self.status = "reconciled"

    def when_DisbursementFailed(self, d: dict[str, Any]) -> None:
        self.status = "failed"

    def when_DisbursementReversed(self, d: dict[str, Any]) -> None:
        self.status = "reversed"

    def when_DepartmentPaymentRecorded(self, d: dict[str, Any]) -> None:
        self.status = "paid"
        self.basis = "policy"
        for name in ("household_id", "member_id", "village_code", "policy_code", "policy_version", "policy_group",
                     "policy_unit", "period", "channel", "department"):
            setattr(self, name, d.get(name))
        self.department_reference = d["department_reference"]
        self.amount = Decimal(d["amount"])
        self.standard_amount = Decimal(d["standard_amount"]) if d.get("standard_amount") else None
        self.paid_on = _day(d["paid_on"])
