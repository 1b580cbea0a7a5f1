"""The funds double-entry ledger: postings, running balances, the projection under redelivery and
cross-topic order, and its query API (called as the gateway would: with an internal identity token
naming the caller, whose jurisdiction scopes what the queries answer)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request

from contracts import funds as ev
from contracts.base import topic_name
from eventkit import migrations as mig
from eventkit.aggregate import Aggregate
from eventkit.events import RecordedEvent
from eventkit.kafka import ensure_topics
from eventkit.metrics import Metrics
from eventkit.projection import Message, ProjectionRunner
from eventkit.runtime import problem
from eventkit.testing import background, producer, wait_until
from eventkit.tokens import INTERNAL_IDENTITY_HEADER, verify_internal_token
from services.funds.commands import may_read_allocation, region12, require_within
from services.funds.domain import Allocation, Disbursement, HouseholdFacts, Project, fold_household_facts
from services.funds.ledger import (
    POSTING_EVENT_TYPES,
    Funding,
    FundsLedger,
    LedgerError,
    Posting,
    UnbalancedPosting,
    available_account,
    paid_account,
    parse_account,
    postings_of,
    reserved_account,
    source_account,
    trial_balance,
    verify_balanced,
)
from services.funds.ledger_queries import router

from .harness import INTERNAL_KEYRING, ActAs, internal_headers, principal

NOW = datetime(2025, 3, 10, 2, 0, tzinfo=timezone.utc)  # 2025-03-10 in China
TODAY = date(2025, 3, 10)
VILLAGE = "620102001001"
COUNTY = principal("county_office", "620102")             # the village's county
NEIGHBOUR_COUNTY = principal("county_office", "620103")   # another county of the same city
PROVINCE = principal("operator", "620000")                # province-level reader
HOUSEHOLD = "3f2b8c1e-9d4a-4e6b-8f7a-1c2d3e4f5a6b"
NEIGHBOUR = "4a3b2c1d-0e9f-4a8b-9c7d-6e5f4a3b2c1d"
STUDENT = "7c9e6679-7425-40de-944b-e07fc1f90ae7"
PARENT = "9b8a7f6e-5d4c-4b3a-8f2e-1d0c9b8a7f6e"
NEIGHBOUR_HEAD = "1e2d3c4b-5a69-4788-97a6-b5c4d3e2f1a0"
HASH = "5d41402abc4b2a76b9719d911017c5925d41402abc4b2a76b9719d911017c592"
ZERO = Decimal("0.00")
MIGRATION = Path(__file__).parent.parent / "services" / "funds" / "migrations" / "0002_ledger.sql"


def uid() -> str:
    return str(uuid.uuid4())


def facts_of(household_id: str, members: Iterable[tuple[str, str | None]]) -> HouseholdFacts:
    h = {"household_id": household_id}
    events: list[tuple[str, dict[str, Any]]] = [
        ("HouseholdRegistered", {**h, "village_code": VILLAGE, "registered_on": "2024-01-05", "status": "identified"})]
    for member_id, stage in members:
        events.append(("MemberAdded", {**h, "member_id": member_id, "relation": "head", "joined_on": "2024-01-05",
                                       "profile": {"schooling_stage": stage}}))
    return fold_household_facts(events)


FACTS = facts_of(HOUSEHOLD, [(PARENT, None), (STUDENT, "junior")])
NEIGHBOUR_FACTS = facts_of(NEIGHBOUR, [(NEIGHBOUR_HEAD, None)])


# -- a realistic history, recorded with the domain aggregates -------------------------------------


@dataclass
class History:
    """Events of several aggregates in the order the commands recorded them, as published envelopes."""

    envelopes: list[dict[str, Any]] = field(default_factory=list)
    emitted: dict[str, int] = field(default_factory=dict)

    def save(self, *aggregates: Aggregate) -> None:
        """What a command handler does: append each touched aggregate's new events (one transaction)."""
        for agg in aggregates:
            done = self.emitted.get(agg.id, 0)
            for version, e in enumerate(agg.pending[done:], start=done + 1):
                self.envelopes.append({
                    "event_id": str(e.event_id), "event_type": e.event_type, "schema_version": e.schema_version,
                    "source": "/tpa/funds", "stream_id": agg.id, "stream_type": agg.stream_type,
                    "version": version, "global_position": len(self.envelopes) + 1,
                    "data": json.loads(json.dumps(e.data)),
                    "metadata": {"actor": "user:test", "correlation_id": None, "causation_id": None,
                                 "traceparent": None, "recorded_at": NOW.isoformat()}})
            self.emitted[agg.id] = len(agg.pending)

    def of(self, stream_type: str) -> list[dict[str, Any]]:
        return [e for e in self.envelopes if e["stream_type"] == stream_type]


@dataclass
class Scenario:
    history: History
    allocations: dict[str, Allocation]
    project: Project
    disbursements: dict[str, Disbursement]


def allocation(history: History, source: str, year: int, amount: str, region: str = "620102") -> Allocation:
    a = Allocation(uid())
    a.create(source=source, year=year, purpose=f"{source} {year}", region_code=region, amount=amount,
             created_by="u-county", now=NOW)
    history.save(a)
    return a


def policy_payment(history: History, a: Allocation, *, policy_code: str, member_id: str, period: str, amount: str,
                   channel: str | None) -> Disbursement:
    d = Disbursement(uid())
    d.request(household_id=HOUSEHOLD, basis="policy", policy_code=policy_code, member_id=member_id, period=period,
              amount=amount, requested_by="u-village", now=NOW, facts=FACTS, account_masked="6217****1234",
              account_hash=HASH)
    history.save(d)
    d.approve(approved_by="u-county", now=NOW, facts=FACTS, allocation=a)
    history.save(a, d)
    if channel is not None:
        d.pay(channel=channel, channel_reference=f"REF-{d.id[:8]}", paid_on=TODAY, now=NOW, allocation=a)
        history.save(a, d)
    return d


def project_payment(history: History, p: Project, a: Allocation, household: str, facts: HouseholdFacts,
                    amount: str, *, pay: bool = True) -> Disbursement:
    d = Disbursement(uid())
    d.request(household_id=household, basis="project", project=p, period="2025-03", amount=amount,
              requested_by="u-village", now=NOW, facts=facts)
    history.save(d)
    d.approve(approved_by="u-county", now=NOW, facts=facts, allocation=a, project=p)
    history.save(p, d)
    if pay:
        d.pay(channel="bank_transfer", channel_reference=f"B-{d.id[:8]}", paid_on=TODAY, now=NOW, allocation=a,
              project=p)
        history.save(a, p, d)
    return d


def scenario() -> Scenario:
    h = History()
    central = allocation(h, "central", 2025, "100000.00")
    provincial = allocation(h, "provincial", 2025, "300000.00", region="62")
    county = allocation(h, "county", 2025, "60000.00")
    older = allocation(h, "central", 2024, "8000.00")
    central.adjust(amount_delta="20000.00", reason="supplementary budget", adjusted_by="u-county", now=NOW)
    provincial.adjust(amount_delta="-50000.00", reason="budget cut", adjusted_by="u-province", now=NOW)
    h.save(central, provincial)

    # policy payments: paid, paid and reconciled, paid and reversed, failed after approval
    boarding = policy_payment(h, central, policy_code="edu_boarding_junior", member_id=STUDENT, period="2025",
                              amount="1250.00", channel="student_aid_card")
    boarding.reconcile(statement_id="stmt-1", statement_line="7", now=NOW)
    h.save(boarding)
    boarding_2024 = policy_payment(h, older, policy_code="edu_boarding_junior", member_id=STUDENT, period="2024",
                                   amount="1250.00", channel="student_aid_card")
    nutrition = policy_payment(h, central, policy_code="edu_nutrition", member_id=STUDENT, period="2025",
                               amount="800.00", channel="student_aid_card")
    nutrition.reverse(reason="recovered after audit", now=NOW, allocation=central)
    h.save(central, nutrition)
    living = policy_payment(h, central, policy_code="minimum_living_tier2", member_id=PARENT, period="2025-02",
                            amount="290.00", channel="one_card")
    refused = policy_payment(h, central, policy_code="minimum_living_tier2", member_id=PARENT, period="2025-01",
                             amount="290.00", channel=None)
    refused.fail(reason="card closed", now=NOW, allocation=central)
    h.save(central, refused)

    # a village project funded by two allocations
    p = Project(uid())
    p.declare(name="Cattle cooperative", kind="industry", region_code=VILLAGE, budget="250000.00", plan_year=2025,
              beneficiary_household_ids=[HOUSEHOLD, NEIGHBOUR], declared_by="u-village", now=NOW)
    h.save(p)
    p.review(reviewer="u-township", now=NOW, comment="complete")
    h.save(p)
    p.approve(approved_budget="200000.00", approved_by="u-county", now=NOW,
              funding=[{"allocation_id": provincial.id, "amount": "150000.00"},
                       {"allocation_id": county.id, "amount": "50000.00"}],
              allocations={provincial.id: provincial, county.id: county})
    h.save(provincial, county, p)
    p.start(started_on=date(2025, 3, 1), started_by="u-village", now=NOW)
    p.record_milestone(name="shed built", reached_on=date(2025, 3, 5), recorded_by="u-village", now=NOW)
    h.save(p)
    cattle = project_payment(h, p, provincial, NEIGHBOUR, NEIGHBOUR_FACTS, "5000.00")
    returned = project_payment(h, p, county, HOUSEHOLD, FACTS, "3000.00")
    returned.reverse(reason="returned by the household", now=NOW, allocation=county, project=p)
    h.save(county, p, returned)
    bounced = project_payment(h, p, provincial, HOUSEHOLD, FACTS, "2000.00", pay=False)
    bounced.fail(reason="bank rejected", now=NOW, project=p)
    h.save(p, bounced)
    p.complete(completed_on=TODAY, completed_by="u-village", now=NOW)
    p.accept(accepted_by="u-county", now=NOW, allocations={provincial.id: provincial, county.id: county})
    h.save(p, provincial, county)
    return Scenario(h, {a.id: a for a in (central, provincial, county, older)}, p, {
        "boarding": boarding, "boarding_2024": boarding_2024, "nutrition": nutrition, "living": living,
        "refused": refused, "cattle": cattle, "returned": returned, "bounced": bounced})


SCENARIO = scenario()


def replayed(stream_type: type[Aggregate], envelopes: list[dict[str, Any]], stream_id: str) -> Aggregate:
    """The aggregate as the event store would load it from the published events."""
    agg = stream_type(stream_id)
    for e in envelopes:
        if e["stream_id"] == stream_id:
            agg.replay(RecordedEvent(e["global_position"], uuid.UUID(e["event_id"]), stream_id, e["stream_type"],
                                     e["version"], e["event_type"], e["schema_version"], e["data"], e["metadata"],
                                     None, NOW))
    return agg


def all_postings(envelopes: list[dict[str, Any]]) -> dict[str, list[Posting]]:
    """Postings of every event by event id, with the source and year each allocation was created with."""
    funding: dict[str, Funding] = {}
    out: dict[str, list[Posting]] = {}
    for e in envelopes:
        d = e["data"]
        if e["event_type"] == "AllocationCreated":
            funding[d["allocation_id"]] = Funding(d["source"], d["year"])
        out[e["event_id"]] = postings_of(e["event_type"], d, funding=funding.get(d.get("allocation_id", "")))
    return out


def payment_total(envelopes: list[dict[str, Any]]) -> Decimal:
    """What was paid according to the event store: FundsSpent minus SpendingReversed."""
    sign = {"FundsSpent": 1, "SpendingReversed": -1}
    return sum((sign[e["event_type"]] * Decimal(e["data"]["amount"]) for e in envelopes
                if e["event_type"] in sign), ZERO)


# -- pure: postings ----------------------------------------------------------------------------------


def test_the_history_is_what_the_contracts_allow():
    models = {m.event_type: m for m in (*ev.ALLOCATION_EVENTS, *ev.PROJECT_EVENTS, *ev.DISBURSEMENT_EVENTS)}
    envelopes = SCENARIO.history.envelopes
    for e in envelopes:
        assert models[e["event_type"]].model_validate(e["data"]).model_dump(mode="json") == e["data"]
    assert {e["event_type"] for e in envelopes} >= POSTING_EVENT_TYPES
    # versions are gapless per stream, as the store assigns them
    for stream in {e["stream_id"] for e in envelopes}:
        assert [e["version"] for e in envelopes if e["stream_id"] == stream] == list(
            range(1, 1 + sum(1 for e in envelopes if e["stream_id"] == stream)))


def test_every_event_posts_balanced_lines():
    by_event = all_postings(SCENARIO.history.envelopes)
    for e in SCENARIO.history.envelopes:
        lines = by_event[e["event_id"]]
        if e["event_type"] not in POSTING_EVENT_TYPES:
            assert lines == [], e["event_type"]
            continue
        assert len(lines) == 2, e["event_type"]
        assert sum(p.debit for p in lines) == sum(p.credit for p in lines) == verify_balanced(lines) > 0
        assert all((p.debit == 0) != (p.credit == 0) for p in lines)
        assert all(isinstance(p.debit, Decimal) and isinstance(p.credit, Decimal) for p in lines)
        assert {p.allocation_id for p in lines} == {e["stream_id"]}


def test_accounts_of_each_event_type():
    a, p, d = uid(), uid(), uid()
    moves = {
        ("AllocationCreated", "created_at"): {"source": "county", "year": 2025, "amount": "10.00",
                                              "purpose": "x", "region_code": "620102", "created_by": "u"},
        ("FundsReserved", "reserved_at"): {"ref_type": "project", "ref_id": p, "amount": "10.00"},
        ("ReservationReleased", "released_at"): {"ref_type": "disbursement", "ref_id": d, "amount": "10.00",
                                                 "reason": "x"},
        ("FundsSpent", "spent_on"): {"ref_type": "project", "ref_id": p, "disbursement_id": d, "amount": "10.00"},
        ("SpendingReversed", "reversed_at"): {"ref_type": "disbursement", "ref_id": d, "disbursement_id": d,
                                              "amount": "10.00", "reason": "x"},
    }
    got = {}
    for (event_type, at), data in moves.items():
        lines = postings_of(event_type, {"allocation_id": a, at: "2025-03-09T17:30:00+00:00", **data})
        got[event_type] = (lines[0].account, lines[1].account, lines[0].project_id, lines[0].disbursement_id,
                           lines[0].occurred)
    avail, held, paid = available_account(a), reserved_account(a), paid_account(a)
    tomorrow = date(2025, 3, 10)  # 17:30 UTC is the next day in China
    assert got == {
        "AllocationCreated": (avail, "source:county:2025", None, None, tomorrow),
        "FundsReserved": (held, avail, p, None, tomorrow),
        "ReservationReleased": (avail, held, None, d, tomorrow),
        "FundsSpent": (paid, held, p, d, tomorrow),
        "SpendingReversed": (held, paid, None, d, tomorrow),  # back into the reservation it was spent from
    }
    assert postings_of("FundsSpent", {"allocation_id": a, "spent_on": "2025-03-09", "ref_type": "disbursement",
                                      "ref_id": d, "disbursement_id": d, "amount": "1.00"})[0].occurred == date(
        2025, 3, 9)


def test_adjustments_are_signed_and_need_the_allocations_source():
    a = uid()
    funding = Funding("provincial", 2025)
    base = {"allocation_id": a, "new_amount": "0.00", "reason": "x", "adjusted_by": "u",
            "adjusted_at": "2025-03-10T02:00:00+00:00"}
    up = postings_of("AllocationAdjusted", {**base, "amount_delta": "250.00"}, funding=funding)
    down = postings_of("AllocationAdjusted", {**base, "amount_delta": "-250.00"}, funding=funding)
    assert [(p.account, p.debit, p.credit) for p in up] == [
        (available_account(a), Decimal("250.00"), ZERO), ("source:provincial:2025", ZERO, Decimal("250.00"))]
    assert [(p.account, p.debit, p.credit) for p in down] == [
        ("source:provincial:2025", Decimal("250.00"), ZERO), (available_account(a), ZERO, Decimal("250.00"))]
    assert trial_balance([*up, *down]) == {available_account(a): ZERO, "source:provincial:2025": ZERO}
    with pytest.raises(LedgerError, match="source and year are unknown"):
        postings_of("AllocationAdjusted", {**base, "amount_delta": "1.00"})


def test_what_posts_nothing_and_what_is_refused():
    a = uid()
    assert postings_of("ProjectApproved", {"project_id": uid()}) == []
    assert postings_of("SomethingFromTheFuture", {"allocation_id": a}) == []
    assert postings_of("FundsReserved", {"allocation_id": a, "ref_type": "project", "ref_id": uid(),
                                         "amount": "0.00", "reserved_at": "2025-03-10T02:00:00+00:00"}) == []
    good = {"allocation_id": a, "ref_type": "project", "ref_id": uid(), "amount": "5.00",
            "reserved_at": "2025-03-10T02:00:00+00:00"}
    for bad in ({"amount": "5.001"}, {"amount": "-5.00"}, {"amount": 5.0}, {"amount": "NaN"},
                {"ref_type": "household"}, {"reserved_at": None}):
        with pytest.raises(LedgerError):
            postings_of("FundsReserved", {**good, **bad})
    with pytest.raises(LedgerError):
        postings_of("AllocationCreated", {"allocation_id": a, "source": "lottery", "year": 2025, "amount": "1.00",
                                          "created_at": "2025-03-10T02:00:00+00:00"})

    lines = postings_of("FundsReserved", good)
    one_sided = [lines[0], Posting(2, lines[1].account, ZERO, Decimal("4.00"), TODAY, a)]
    with pytest.raises(UnbalancedPosting, match="debits 5.00 != credits 4.00"):
        verify_balanced(one_sided)
    with pytest.raises(UnbalancedPosting, match="exactly one"):
        verify_balanced([Posting(1, lines[0].account, Decimal("5.00"), Decimal("5.00"), TODAY, a)])
    with pytest.raises(UnbalancedPosting, match="in cents"):
        verify_balanced([Posting(1, lines[0].account, Decimal("5.005"), ZERO, TODAY, a),
                         Posting(2, lines[1].account, ZERO, Decimal("5.005"), TODAY, a)])
    with pytest.raises(UnbalancedPosting, match="out of order"):
        verify_balanced([lines[1], lines[0]])
    with pytest.raises(LedgerError, match="not an account"):
        verify_balanced([Posting(1, "cash", Decimal("5.00"), ZERO, TODAY, a), lines[1]])
    assert parse_account("source:social_donation:2025").source == "social_donation"
    assert parse_account(paid_account(a)).allocation_id == a
    assert parse_account(reserved_account(a)).kind == "reserved"


def test_balances_after_the_history_equal_the_aggregates():
    envelopes = SCENARIO.history.envelopes
    balances = trial_balance(p for lines in all_postings(envelopes).values() for p in lines)
    assert sum(balances.values(), ZERO) == ZERO
    allocated: dict[str, Decimal] = {}
    for a in SCENARIO.allocations.values():
        again = replayed(Allocation, envelopes, a.id)
        assert (again.reserved, again.spent, again.available) == (a.reserved, a.spent, a.available)
        assert balances.get(available_account(a.id), ZERO) == a.available
        assert balances.get(reserved_account(a.id), ZERO) == a.reserved
        assert balances.get(paid_account(a.id), ZERO) == a.spent
        account = source_account(a.source, a.year)
        allocated[account] = allocated.get(account, ZERO) + a.amount
    for account, amount in allocated.items():
        assert balances[account] == -amount
    # paid: 1250 + 1250 + 290 (policy) + 5000 (project); the nutrition payment and 3000 were reversed
    assert sum((b for acc, b in balances.items() if acc.startswith("paid:")), ZERO) == Decimal("7790.00")
    assert payment_total(envelopes) == Decimal("7790.00")


# -- the projection, applied directly ----------------------------------------------------------------


async def migrated(pool: Any) -> None:
    """Only the ledger's own migration: 0001 belongs to the funds service's commands."""
    async with pool.acquire() as conn:
        await mig.apply(conn, [mig.Migration("funds", 2, MIGRATION.name, MIGRATION.read_text())])


def message(env: dict[str, Any]) -> Message:
    return Message.from_envelope(json.loads(json.dumps(env)))


def cross_topic_order(envelopes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per stream in order (as Kafka keeps it), but the allocation topic first: every FundsSpent is
    consumed before the DisbursementRequested of the payment it spends for."""
    return ([e for e in envelopes if e["stream_type"] == ev.ALLOCATION]
            + [e for e in envelopes if e["stream_type"] != ev.ALLOCATION])


async def check_against_the_event_store(pool: Any, envelopes: list[dict[str, Any]]) -> None:
    unbalanced = await pool.fetch(
        "SELECT event_id FROM ledger_postings GROUP BY event_id HAVING sum(debit) <> sum(credit)")
    assert unbalanced == []
    by_event = all_postings(envelopes)
    expected = {(event_id, p.line_no): p for event_id, lines in by_event.items() for p in lines}
    rows = await pool.fetch("SELECT event_id::text AS event_id, line_no, account, debit, credit, occurred,"
                            " allocation_id::text AS a, project_id::text AS p, disbursement_id::text AS d"
                            " FROM ledger_postings")
    assert {(r["event_id"], r["line_no"]): Posting(r["line_no"], r["account"], r["debit"], r["credit"],
                                                   r["occurred"], r["a"], r["p"], r["d"]) for r in rows} == expected
    paid = await pool.fetchval("SELECT sum(debit - credit) FROM ledger_postings WHERE account LIKE 'paid:%'")
    assert paid == payment_total(envelopes)
    balances = {r["account"]: r["balance"] for r in await pool.fetch("SELECT account, balance FROM ledger_balances")}
    for allocation_id in {e["stream_id"] for e in envelopes if e["stream_type"] == ev.ALLOCATION}:
        a = replayed(Allocation, envelopes, allocation_id)
        assert (balances[available_account(a.id)], balances.get(reserved_account(a.id), ZERO),
                balances.get(paid_account(a.id), ZERO)) == (a.available, a.reserved, a.spent)
        row = await pool.fetchrow("SELECT amount, reserved, spent, available FROM ledger_allocations"
                                  " WHERE allocation_id = $1", uuid.UUID(a.id))
        assert tuple(row) == (a.amount, a.reserved, a.spent, a.available)
    project = replayed(Project, envelopes, SCENARIO.project.id)
    row = await pool.fetchrow("SELECT status, approved_budget, committed, paid FROM ledger_projects"
                              " WHERE project_id = $1", uuid.UUID(project.id))
    assert tuple(row) == (project.status, project.approved_budget, project.committed, project.paid)
    for d in SCENARIO.disbursements.values():
        status = await pool.fetchval("SELECT status FROM ledger_disbursements WHERE disbursement_id = $1",
                                     uuid.UUID(d.id))
        assert status == d.status


async def test_the_projection_posts_every_event_once_whatever_the_cross_topic_order(pool):
    await migrated(pool)
    ledger = FundsLedger()
    assert (ledger.name, ledger.strict, ledger.topics) == (
        "funds-ledger", True, (ev.ALLOCATION_TOPIC, ev.PROJECT_TOPIC, ev.DISBURSEMENT_TOPIC))
    envelopes = SCENARIO.history.envelopes
    ordered = cross_topic_order(envelopes)
    spent = next(e for e in ordered if e["event_type"] == "FundsSpent")
    requested = next(e for e in ordered if e["event_type"] == "DisbursementRequested"
                     and e["stream_id"] == spent["data"]["disbursement_id"])
    assert ordered.index(spent) < ordered.index(requested)
    future = {**envelopes[0], "event_id": uid(), "event_type": "AllocationSplit", "version": 99}
    for env in [*ordered, future]:
        for _ in range(2):  # redelivered: the second copy is a no-op even without the runner's tracking
            async with pool.acquire() as conn:
                async with conn.transaction():
                    await ledger.apply(conn, message(env))
    assert await pool.fetchval("SELECT count(*) FROM ledger_events") == len(envelopes)
    await check_against_the_event_store(pool, envelopes)

    async with pool.acquire() as conn:
        await ledger.reset(conn)
    assert await pool.fetchval("SELECT (SELECT count(*) FROM ledger_events) + (SELECT count(*) FROM ledger_postings)"
                               " + (SELECT count(*) FROM ledger_balances) + (SELECT count(*) FROM ledger_projects)"
                               " + (SELECT count(*) FROM ledger_disbursements)") == 0


async def test_events_that_break_the_ledger_are_refused(pool):
    await migrated(pool)
    ledger = FundsLedger()
    h = History()
    a = allocation(h, "county", 2025, "100.00")
    created = h.envelopes[0]
    d = created["data"]
    at = "2025-03-10T02:00:00+00:00"

    def event(event_type: str, version: int, **data: Any) -> Message:
        return message({**created, "event_id": uid(), "event_type": event_type, "version": version,
                        "data": {"allocation_id": a.id, **data}})

    async def apply(msg: Message) -> None:
        async with pool.acquire() as conn:
            async with conn.transaction():
                await ledger.apply(conn, msg)

    with pytest.raises(LedgerError, match="before its AllocationCreated"):
        await apply(event("FundsReserved", 2, ref_type="project", ref_id=uid(), amount="1.00", reserved_at=at))
    await apply(message(created))
    with pytest.raises(LedgerError, match="already created"):
        await apply(event("AllocationCreated", 1, **{k: v for k, v in d.items() if k != "allocation_id"}))
    with pytest.raises(LedgerError, match="the event says 150.00"):
        await apply(event("AllocationAdjusted", 2, amount_delta="40.00", new_amount="150.00", reason="x",
                          adjusted_by="u", adjusted_at=at))
    with pytest.raises(Exception, match="ledger_balances_sign|no_overdraft"):  # more than is available
        await apply(event("FundsReserved", 2, ref_type="project", ref_id=uid(), amount="100.01", reserved_at=at))
    project = uid()
    await apply(event("FundsReserved", 2, ref_type="project", ref_id=project, amount="60.00", reserved_at=at))
    with pytest.raises(LedgerError, match="no reservation"):
        await apply(event("ReservationReleased", 3, ref_type="project", ref_id=uid(), amount="1.00", reason="x",
                          released_at=at))
    with pytest.raises(Exception, match="ledger_balances_sign"):  # above what the reservation holds
        await apply(event("FundsSpent", 3, ref_type="project", ref_id=project, disbursement_id=uid(),
                          amount="60.01", spent_on="2025-03-10"))
    with pytest.raises(LedgerError, match="unknown, or not requested"):
        await apply(message({**created, "event_id": uid(), "event_type": "DisbursementApproved",
                             "stream_type": ev.DISBURSEMENT, "stream_id": uid(),
                             "data": {"approved_by": "u", "allocation_id": a.id, "approved_at": at}}))
    with pytest.raises(LedgerError, match="no such row"):
        await apply(message({**created, "event_id": uid(), "event_type": "ProjectStarted",
                             "stream_type": ev.PROJECT, "stream_id": uid(),
                             "data": {"started_on": "2025-03-10", "started_by": "u"}}))
    # nothing of the refused events stayed behind
    assert await pool.fetchval("SELECT count(*) FROM ledger_events") == 2
    assert await pool.fetchval("SELECT count(*) FROM ledger_postings") == 4
    assert tuple(await pool.fetchrow("SELECT amount, reserved, available FROM ledger_allocations")) == (
        Decimal("100.00"), Decimal("60.00"), Decimal("40.00"))


# -- end to end: Kafka, the projection runner and the query API ---------------------------------------


def query_app(pool: Any) -> FastAPI:
    app = FastAPI()
    app.include_router(router)
    app.state.runtime = SimpleNamespace(pool=pool)

    @app.middleware("http")
    async def internal_identity(request: Request, call_next):
        # What the service runtime does: the caller from the gateway's signed token, or a 401.
        try:
            request.state.principal = verify_internal_token(
                request.headers.get(INTERNAL_IDENTITY_HEADER), INTERNAL_KEYRING, now=datetime.now(timezone.utc),
                allow_anonymous=True)
        except Exception as exc:  # noqa: BLE001 - any invalid token is a 401
            return problem(401, "gateway_identity_required", "Unauthenticated", str(exc))
        return await call_next(request)
    return app


def test_the_region_of_each_funds_record_and_who_it_is_within():
    assert [region12(c) for c in ("62", "6201", "620102", "620102001", VILLAGE)] == [
        "620000000000", "620100000000", "620102000000", "620102001000", VILLAGE]
    for code in ("620102", "620102001", VILLAGE):  # a county's allocation, a township's project, a village
        require_within(COUNTY, code, "record")
        require_within(PROVINCE, code, "record")
        with pytest.raises(Exception) as refused:
            require_within(NEIGHBOUR_COUNTY, code, "record")
        assert (refused.value.code, refused.value.status) == ("outside_jurisdiction", 403)
    require_within(None, "530102", "record")  # the service itself (the anomaly rules)
    with pytest.raises(Exception, match="outside"):
        require_within(PROVINCE, None, "a record with no region")
    # A county creates and adjusts only its own budget lines, but reads those of its city and
    # province too: its projects may draw on them.
    with pytest.raises(Exception, match="outside"):
        require_within(COUNTY, "62", "allocation")
    assert may_read_allocation(COUNTY, "62") and may_read_allocation(COUNTY, "6201")
    assert may_read_allocation(COUNTY, "620102") and may_read_allocation(PROVINCE, "620102")
    assert not may_read_allocation(NEIGHBOUR_COUNTY, "620102") and not may_read_allocation(COUNTY, "53")


async def _applied(pool: Any, n: int) -> bool:
    return await pool.fetchval("SELECT count(*) FROM ledger_events") >= n


async def test_the_ledger_follows_the_topics_and_answers_its_queries(pool, infra, unique):
    await migrated(pool)
    topics = {st: topic_name("funds", unique(st)) for st in (ev.ALLOCATION, ev.PROJECT, ev.DISBURSEMENT)}
    await ensure_topics(infra.bootstrap_servers, list(topics.values()), partitions=3, replication_factor=1)
    ledger = FundsLedger(topics=tuple(topics.values()))
    runner = ProjectionRunner(ledger, service="funds", pool=pool, bootstrap_servers=infra.bootstrap_servers,
                              metrics=Metrics("funds"), enable_idempotence=infra.idempotence, max_retries=2,
                              retry_delay=0.01, group_prefix=unique("g"))
    envelopes = SCENARIO.history.envelopes
    allocation_events = SCENARIO.history.of(ev.ALLOCATION)
    others = [e for e in envelopes if e["stream_type"] != ev.ALLOCATION]

    async def publish(items: list[dict[str, Any]]) -> None:
        async with producer(infra.bootstrap_servers, infra.idempotence) as p:
            for env in items:
                for _ in range(2):  # every record twice: a producer retry, a relay republishing
                    await p.send_and_wait(topics[env["stream_type"]], key=env["stream_id"].encode(),
                                          value=json.dumps(env).encode())

    transport = httpx.ASGITransport(app=query_app(pool))
    # The county office of the scenario's village asks, unless a request names another caller.
    async with background(runner.run()), httpx.AsyncClient(transport=transport, base_url="http://funds",
                                                           auth=ActAs(who=COUNTY)) as http:
        province = ActAs(who=PROVINCE)
        # The allocation topic first: payments are posted before their disbursements are known.
        await publish(allocation_events)
        await wait_until(lambda: _applied(pool, len(allocation_events)), timeout=30, message="allocation events")
        totals = (await http.get("/ledger/totals", auth=province)).json()
        assert (totals["spent"], totals["balanced"]) == ("7790.00", True)
        early = (await http.get(f"/households/{HOUSEHOLD}/funds")).json()
        assert (early["rows"], early["total"]) == ([], "0.00")  # not attributable yet, and no error

        await publish(others)
        await wait_until(lambda: _applied(pool, len(envelopes)), timeout=30, message="all events")
        assert await runner.held_streams() == []
        assert await pool.fetchval("SELECT count(*) FROM ledger_events") == len(envelopes)
        await check_against_the_event_store(pool, envelopes)

        # allocations
        for a in SCENARIO.allocations.values():
            r = await http.get(f"/allocations/{a.id}/balance")
            assert r.status_code == 200
            body = r.json()
            assert (body["amount"], body["reserved"], body["spent"], body["available"]) == (
                f"{a.amount:.2f}", f"{a.reserved:.2f}", f"{a.spent:.2f}", f"{a.available:.2f}")
            assert body["accounts"] == {"available": body["available"], "reserved": body["reserved"],
                                        "paid": body["spent"]}
            assert body["consistent"] is True and (body["source"], body["year"]) == (a.source, a.year)
        central = next(a for a in SCENARIO.allocations.values() if (a.source, a.year) == ("central", 2025))
        assert (await http.get(f"/allocations/{central.id}/balance")).json()["spent"] == "1540.00"
        missing = await http.get(f"/allocations/{uid()}/balance")
        assert (missing.status_code, missing.headers["content-type"], missing.json()["code"]) == (
            404, "application/problem+json", "allocation_not_found")

        # the project
        p = SCENARIO.project
        budget = (await http.get(f"/projects/{p.id}/budget")).json()
        assert {k: budget[k] for k in ("status", "budget", "approved_budget", "committed", "paid", "remaining",
                                       "ledger_paid", "beneficiary_households")} == {
            "status": "accepted", "budget": "250000.00", "approved_budget": "200000.00", "committed": "0.00",
            "paid": "5000.00", "remaining": "195000.00", "ledger_paid": "5000.00", "beneficiary_households": 2}
        assert sorted((f["amount"], f["reserved"], f["released"]) for f in budget["funding"]) == [
            ("150000.00", "0.00", "145000.00"), ("50000.00", "0.00", "50000.00")]
        assert (await http.get(f"/projects/{uid()}/budget")).json()["code"] == "project_not_found"

        # a household's funds, by policy or project and year
        funds = (await http.get(f"/households/{HOUSEHOLD}/funds")).json()
        rows = {(r["basis"], r["policy_code"], r["project_id"], r["year"]): (r["paid"], r["reversed"], r["payments"])
                for r in funds["rows"]}
        assert rows == {
            ("policy", "edu_boarding_junior", None, 2024): ("1250.00", "0.00", 1),
            ("policy", "edu_boarding_junior", None, 2025): ("1250.00", "0.00", 1),
            ("policy", "edu_nutrition", None, 2025): ("0.00", "800.00", 0),
            ("policy", "minimum_living_tier2", None, 2025): ("290.00", "0.00", 1),
            ("project", None, p.id, 2025): ("0.00", "3000.00", 0),
        }
        assert funds["total"] == "2790.00"
        only_2024 = (await http.get(f"/households/{HOUSEHOLD}/funds", params={"year": 2024})).json()
        assert [(r["policy_code"], r["paid"]) for r in only_2024["rows"]] == [("edu_boarding_junior", "1250.00")]
        assert only_2024["total"] == "1250.00"
        neighbour = (await http.get(f"/households/{NEIGHBOUR}/funds")).json()
        assert [(r["project_id"], r["paid"]) for r in neighbour["rows"]] == [(p.id, "5000.00")]
        assert (await http.get(f"/households/{uid()}/funds")).json()["total"] == "0.00"
        assert (await http.get("/households/not-a-uuid/funds")).status_code == 422
        household_total = sum([Decimal((await http.get(f"/households/{h}/funds")).json()["total"])
                               for h in (HOUSEHOLD, NEIGHBOUR)], ZERO)
        assert household_total == payment_total(envelopes)  # every payment is attributed once all topics are in

        # the village's public disclosure
        r = await http.get(f"/villages/{VILLAGE}/disclosure", headers=internal_headers(None))  # anyone may read it
        disclosure = r.json()
        for secret in (HOUSEHOLD, NEIGHBOUR, STUDENT, PARENT, NEIGHBOUR_HEAD, "6217****", HASH,
                       *(d.id for d in SCENARIO.disbursements.values())):
            assert secret not in r.text
        assert disclosure["projects"] == [{
            "project_id": p.id, "name": "Cattle cooperative", "kind": "industry", "plan_year": 2025,
            "status": "accepted", "approved_budget": "200000.00", "paid": "5000.00", "beneficiary_households": 2}]
        payments = {(x["basis"], x["policy_code"] or x["project_id"], x["year"]): (x["paid"], x["payments"],
                                                                                  x["households"])
                    for x in disclosure["payments"]}
        assert payments == {
            ("policy", "edu_boarding_junior", 2024): ("1250.00", 1, 1),
            ("policy", "edu_boarding_junior", 2025): ("1250.00", 1, 1),
            ("policy", "edu_nutrition", 2025): ("0.00", 0, 0),
            ("policy", "minimum_living_tier2", 2025): ("290.00", 1, 1),
            ("project", p.id, 2025): ("5000.00", 1, 1),
        }
        names = {x["policy_code"]: x["policy_name"] for x in disclosure["payments"]}
        assert names["edu_boarding_junior"] == "初中寄宿生生活补助" and names[None] is None
        assert disclosure["total_paid"] == "7790.00"
        assert (await http.get(f"/villages/{VILLAGE}/disclosure", params={"year": 2024},
                               headers=internal_headers(None))).json()["projects"] == []
        assert (await http.get("/villages/6201/disclosure", headers=internal_headers(None))).status_code == 422
        empty = (await http.get("/villages/530102001001/disclosure", headers=internal_headers(None))).json()
        assert (empty["projects"], empty["payments"], empty["total_paid"]) == ([], [], "0.00")

        # totals by source and year: the province's budget lines, every one of them
        totals = (await http.get("/ledger/totals", auth=province)).json()
        by = {(t["source"], t["year"]): (t["allocated"], t["reserved"], t["spent"], t["available"], t["balanced"])
              for t in totals["rows"]}
        assert by == {
            ("central", 2024): ("8000.00", "0.00", "1250.00", "6750.00", True),
            ("central", 2025): ("120000.00", "0.00", "1540.00", "118460.00", True),
            ("county", 2025): ("60000.00", "0.00", "0.00", "60000.00", True),
            ("provincial", 2025): ("250000.00", "0.00", "5000.00", "245000.00", True),
        }
        assert (totals["allocated"], totals["spent"], totals["balanced"]) == ("438000.00", "7790.00", True)
        assert totals["debits"] == totals["credits"]
        debits = await pool.fetchval("SELECT sum(debit) FROM ledger_postings")
        assert Decimal(totals["debits"]) == debits
        filtered = (await http.get("/ledger/totals", params={"year": 2025, "source": "central"}, auth=province)).json()
        assert [(t["source"], t["year"]) for t in filtered["rows"]] == [("central", 2025)]
        assert filtered["spent"] == "1540.00"
        assert (await http.get("/ledger/totals", params={"source": "lottery"})).status_code == 422

        # The county's totals: its own budget lines (the provincial line is the province's), balanced.
        county = (await http.get("/ledger/totals")).json()
        by = {(t["source"], t["year"]): (t["allocated"], t["spent"], t["balanced"]) for t in county["rows"]}
        assert by == {("central", 2024): ("8000.00", "1250.00", True),
                      ("central", 2025): ("120000.00", "1540.00", True),
                      ("county", 2025): ("60000.00", "0.00", True)}
        assert (county["allocated"], county["spent"], county["balanced"]) == ("188000.00", "2790.00", True)
        assert county["debits"] == county["credits"] and Decimal(county["debits"]) < Decimal(totals["debits"])

        # Another county: every record of this one is refused, the lists are empty; the province's
        # budget line (which covers both counties) stays readable; the disclosure is public.
        neighbour_county = ActAs(who=NEIGHBOUR_COUNTY)
        provincial = next(a for a in SCENARIO.allocations.values() if a.source == "provincial")
        for path in [*(f"/allocations/{a.id}/balance" for a in SCENARIO.allocations.values() if a is not provincial),
                     f"/projects/{p.id}/budget", f"/households/{HOUSEHOLD}/funds", f"/households/{NEIGHBOUR}/funds"]:
            r = await http.get(path, auth=neighbour_county)
            assert (r.status_code, r.json()["code"]) == (403, "outside_jurisdiction"), path
        assert (await http.get(f"/allocations/{provincial.id}/balance", auth=neighbour_county)).status_code == 200
        theirs = (await http.get("/ledger/totals", auth=neighbour_county)).json()
        assert (theirs["rows"], theirs["allocated"], theirs["debits"], theirs["balanced"]) == ([], "0.00", "0.00", True)
        assert (await http.get(f"/villages/{VILLAGE}/disclosure", headers=internal_headers(None))).json() == disclosure
        # Not anonymously, though.
        anonymous = await http.get("/ledger/totals", headers=internal_headers(None))
        assert (anonymous.status_code, anonymous.json()["code"]) == (401, "unauthenticated")
