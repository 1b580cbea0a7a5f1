"""``apply_batch`` of the projections has the effect of ``apply`` event by event.

The same realistic history (households registered in several villages, members added, updated,
removed and erased, heads, statuses, incomes, living conditions, cadres, coordinates, monitoring,
village profiles updated out of order and twice, payments and review cases, all interleaved) goes
once through ``apply`` per message and once through ``apply_batch`` in chunks into two fresh
databases, and the read models must be equal row for row. Risk facts are equal too; their alerts
follow the documented batch semantics (evaluated on the facts after each batch).
"""

from __future__ import annotations

import dataclasses
import json
import random
import uuid
from contextlib import asynccontextmanager
from datetime import date, datetime, timedelta, timezone
from typing import Any, AsyncIterator, Callable

import asyncpg
import pytest

from eventkit import migrations as mig
from eventkit.clock import FixedClock
from eventkit.projection import Message
from eventkit.store import EventStore
from services.monitoring.alert_service import Alerts, RiskFacts
from services.monitoring.alerts import OverdueLimits
from services.monitoring.attendance_api import HouseholdGeo
from services.monitoring.dashboard import Dashboard, DashboardError
from services.monitoring.projections import UnknownHousehold, VillageHouseholds
from services.monitoring.rules import default_thresholds, evaluate, most_severe
from services.registry.ledger import HouseholdLedger, LedgerError

from .test_registry_ledger import _migrated, message

VILLAGES = ("620102001001", "620102001002", "620103002001")
NOW = datetime(2024, 6, 1, 2, 0, tzinfo=timezone.utc)
MEDICAL_POLICY = "health_extra_reimbursement"


# -- a realistic, interleaved history ------------------------------------------------------------

def _id(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _day(rng: random.Random, year: int = 2024) -> str:
    return (date(year, 1, 1) + timedelta(days=rng.randrange(360))).isoformat()


def _member(rng: random.Random, relation: str, birth_year: int) -> dict[str, Any]:
    child = 2024 - birth_year < 16
    return {"member_id": _id(rng), "relation": relation, "sex": rng.choice(("male", "female")),
            "birth_year": birth_year, "ethnicity": "han", "id_hmac": f"{rng.getrandbits(256):064x}",
            "id_masked": "6201**********1234", "name_masked": "张*强", "reason": "initial",
            "joined_on": _day(rng, 2023),
            "profile": {"health": [rng.choice(("healthy", "chronic_illness", "serious_illness"))],
                        "labour_skill": None if child else rng.choice(("ordinary", "skilled", "weak")),
                        "schooling_stage": rng.choice(("primary", "not_in_school")) if child else None,
                        "insurance": rng.choice((["basic_medical"], [], None)), "education": None}}


def household_events(rng: random.Random, hid: str, village: str, steps: int) -> list[tuple[str, dict[str, Any]]]:
    """One household's history, as (event_type, data) in stream order."""
    if rng.random() < 0.15:  # a walking-skeleton registration: a count, no member events
        return [("HouseholdRegistered", {"village_code": village, "member_count": rng.randint(1, 6),
                                         "registered_on": None}),
                ("HouseholdStatusChanged", {"from_status": "applicant", "to_status": "identified"})]
    head = _member(rng, "head", rng.randint(1955, 1990))
    members = [head, _member(rng, "10", rng.randint(1955, 1990)), _member(rng, "20", rng.randint(2010, 2016))]
    events: list[tuple[str, dict[str, Any]]] = [("HouseholdRegistered", {
        "village_code": village, "member_count": len(members), "registered_on": "2024-01-05", "address": "二组15号",
        "attribute": "general", "identification_standard": "national", "head_member_id": head["member_id"],
        "status": rng.choice(("applicant", "applicant", "lifted_out"))})]
    events += [("MemberAdded", m) for m in members]
    active = [m["member_id"] for m in members]
    removed: list[str] = []
    cadres: list[str] = []
    status = events[0][1]["status"]
    for _ in range(steps):
        kind = rng.choice(("member", "update", "remove", "head", "income", "income", "conditions", "causes",
                           "cadre", "release", "coordinates", "status", "monitoring", "erase", "other"))
        if kind == "member":
            m = _member(rng, rng.choice(("20", "30")), rng.randint(2008, 2023))
            active.append(m["member_id"])
            events.append(("MemberAdded", m))
        elif kind == "update" and active:
            changes = rng.choice(({"labour_skill": rng.choice(("lost", "ordinary"))}, {"health": ["serious_illness"]},
                                  {"schooling_stage": "not_in_school", "health": None}, {"insurance": []}))
            events.append(("MemberUpdated", {"member_id": rng.choice(active), "changes": changes}))
        elif kind == "remove" and len(active) > 1:
            gone = rng.choice(active[1:])
            active.remove(gone)
            removed.append(gone)
            events.append(("MemberRemoved", {"member_id": gone, "reason": rng.choice(("death", "moved_out")),
                                             "removed_on": _day(rng), "note": None}))
        elif kind == "head" and len(active) > 1:
            events.append(("HeadChanged", {"head_member_id": active[-1], "changed_on": _day(rng)}))
        elif kind == "income":
            per_capita = rng.randrange(2000, 12000)
            events.append(("IncomeAssessed", {
                "year": rng.choice((2022, 2023)), "wage": f"{per_capita * 3}.00", "business": "0.00",
                "property": "0.00", "transfer": "0.00", "business_expenses": "0.00", "resident_members": 3,
                "net_income": f"{per_capita * 3}.00", "per_capita_net_income": f"{per_capita}.00"}))
        elif kind == "conditions":
            events.append(("LivingConditionsAssessed", {"assessed_on": _day(rng), "conditions": {
                "safe_housing": rng.random() < 0.6, "drinking_water": rng.random() < 0.8, "food": True}}))
        elif kind == "causes":
            events.append(("PovertyCausesRecorded", {"primary": rng.choice(("illness", "disability")),
                                                     "others": ["lack_of_funds"]}))
        elif kind == "cadre" and len(cadres) < 3:
            cadre = rng.choice([c for c in ("cadre-1", "cadre-2", "cadre-3") if c not in cadres])
            cadres.append(cadre)
            events.append(("CadreAssigned", {"cadre_id": cadre, "unit": "县农业局", "assigned_on": _day(rng)}))
        elif kind == "release" and cadres:
            events.append(("CadreReleased", {"cadre_id": cadres.pop(0), "released_on": _day(rng),
                                             "reason": "transferred"}))
        elif kind == "coordinates":
            events.append(("CoordinatesSet", {"latitude": round(rng.uniform(35, 37), 5),
                                              "longitude": round(rng.uniform(103, 104), 5)}))
        elif kind == "status":
            to = rng.choice(("applicant", "identified", "lifted_out", "returned_to_poverty"))
            events.append(("HouseholdStatusChanged", {"from_status": status, "to_status": to,
                                                      "effective_on": _day(rng), "basis": "decision"}))
            status = to
        elif kind == "monitoring":
            events.append(rng.choice((("MonitoringDesignated", {"object_type": "marginal", "effective_on": _day(rng)}),
                                      ("MonitoringRiskEliminated", {"effective_on": _day(rng)}))))
        elif kind == "erase" and removed:
            events.append(("MemberPersonalDataErased", {"member_id": removed.pop(), "erased_on": _day(rng)}))
        elif kind == "other":
            events.append(rng.choice((("SomethingFromTheFuture", {"whatever": 1}),
                                      ("AssistancePlanRecorded", {"year": 2024, "measures": [{"kind": "health"}]}),
                                      ("ChangeRequested", {"request_id": _id(rng), "kind": "member_update"}))))
    return events


def village_events(rng: random.Random, village: str) -> list[tuple[str, dict[str, Any]]]:
    """Profiles out of order, one effective on the same day as the latest, one sent twice."""
    def profile(effective_on: str, rural: int) -> tuple[str, dict[str, Any]]:
        return "VillageProfileUpdated", {"village_code": village, "effective_on": effective_on,
                                         "rural_population": rural, "registered_population": rural // 10,
                                         "poor_village": rural % 2 == 0, "safe_water": rural % 3 == 0}
    latest = profile("2024-01-01", rng.randrange(300, 900))
    return [profile("2023-01-01", 100), latest, profile("2023-06-01", 200), latest,
            profile("2024-01-01", rng.randrange(300, 900))]


def funds_streams(rng: random.Random, households: dict[str, str]) -> list[tuple[str, str, list]]:
    allocation = _id(rng)
    streams = [(allocation, "allocation", [("AllocationCreated", {"source": "central", "year": 2024})])]
    for hid, village in households.items():
        if rng.random() < 0.5:
            continue
        medical = rng.random() < 0.7
        request = {"household_id": hid, "village_code": village, "basis": "policy", "amount": "800.00",
                   "policy_code": MEDICAL_POLICY if medical else "education_grant", "period": "2024",
                   "cost_basis": f"{rng.randrange(2000, 30000)}.00" if medical else None}
        events = [("DisbursementRequested", request), ("DisbursementApproved", {"allocation_id": allocation})]
        if rng.random() < 0.6:
            events.append(("DisbursementPaid", {"paid_on": "2024-05-01"}))
        streams.append((_id(rng), "disbursement", events))
    return streams


def case_streams(rng: random.Random) -> list[tuple[str, str, list]]:
    streams = []
    for village in VILLAGES:
        events = [("CaseOpened", {"case_type": "identification", "village_code": village, "first_step": "village"}),
                  ("StepOverdue", {"step_id": "village"}), ("StepDecided", {"next_step": "township"})]
        if rng.random() < 0.5:
            events.append(("CaseConcluded", {"outcome": "approved"}))
        streams.append((_id(rng), "case", events))
    return streams


def history(seed: int = 7, households: int = 20) -> list[Message]:
    """Every stream's events in order, the streams interleaved at random, as the runner gets them."""
    rng = random.Random(seed)
    homes = {_id(rng): VILLAGES[i % len(VILLAGES)] for i in range(households)}
    streams = [(hid, "household", [(t, {"household_id": hid, **d}) for t, d in household_events(rng, hid, v, 25)])
               for hid, v in homes.items()]
    streams += [(v, "village", village_events(rng, v)) for v in VILLAGES]
    streams += funds_streams(rng, homes) + case_streams(rng)
    positions = [0] * len(streams)
    out: list[Message] = []
    while len(out) < sum(len(s[2]) for s in streams):
        i = rng.choice([i for i, s in enumerate(streams) if positions[i] < len(s[2])])
        stream_id, stream_type, events = streams[i]
        event_type, data = events[positions[i]]
        positions[i] += 1
        out.append(dataclasses.replace(
            message(stream_id, stream_type, {"event_type": event_type, "version": positions[i], "data": data}),
            global_position=len(out) + 1, metadata={"correlation_id": f"corr-{len(out)}"}))
    return out


def chunks(messages: list[Message], rng: random.Random, largest: int) -> list[list[Message]]:
    out, i = [], 0
    while i < len(messages):
        size = rng.randint(1, largest)
        out.append(messages[i:i + size])
        i += size
    return out


# -- running a projection both ways ----------------------------------------------------------------

@asynccontextmanager
async def migrated_pool(dsn: str, component: str) -> AsyncIterator[Any]:
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    try:
        async with pool.acquire() as conn:
            await mig.apply(conn, mig.load("eventkit", mig.EVENTKIT_MIGRATIONS))
        await _migrated(pool, component)
        yield pool
    finally:
        await pool.close()


def risk_facts(pool: Any) -> RiskFacts:
    return RiskFacts(Alerts(EventStore(pool), FixedClock(NOW), default_thresholds(), OverdueLimits()))


# projection -> (component of its migrations, factory, {table: order by})
PROJECTIONS: dict[str, tuple[str, Callable[[Any], Any], dict[str, str]]] = {
    "household-ledger": ("registry", lambda pool: HouseholdLedger(), {
        "ledger_households": "household_id", "ledger_members": "member_id", "ledger_villages": "village_code"}),
    "village-households": ("monitoring", lambda pool: VillageHouseholds(), {
        "village_households": "village_code", "household_villages": "household_id"}),
    "dashboard": ("monitoring", lambda pool: Dashboard(), {
        "dash_households": "household_id", "dash_villages": "village_code", "dash_allocations": "allocation_id",
        "dash_payments": "disbursement_id", "dash_cases": "case_id"}),
    "household-geo": ("monitoring", lambda pool: HouseholdGeo(), {
        "mon_households": "household_id", "mon_pairings": "cadre_id, household_id, assigned_on"}),
    "risk-facts": ("monitoring", risk_facts, {
        "mon_risk_events": "household_id, version", "mon_medical_requests": "disbursement_id"}),
}


async def contents(pool: Any, tables: dict[str, str]) -> dict[str, list[dict[str, Any]]]:
    """Every row of the tables (``updated_at`` left out: it is the time of writing)."""
    return {table: [{k: v for k, v in r.items() if k != "updated_at"}
                    for r in await pool.fetch(f"SELECT * FROM {table} ORDER BY {order}")]
            for table, order in tables.items()}


async def one_by_one(projection: Any, pool: Any, messages: list[Message]) -> None:
    async with pool.acquire() as conn:
        for m in messages:
            async with conn.transaction():
                await projection.apply(conn, m)


async def in_batches(projection: Any, pool: Any, batches: list[list[Message]]) -> None:
    async with pool.acquire() as conn:
        for batch in batches:
            async with conn.transaction():
                await projection.apply_batch(conn, batch)


@pytest.mark.parametrize("name", list(PROJECTIONS))
@pytest.mark.parametrize("largest", [40, 500])
async def test_apply_batch_leaves_the_read_model_apply_leaves(databases, name, largest):
    component, make, tables = PROJECTIONS[name]
    messages = history()
    batches = chunks(messages, random.Random(largest), largest)
    async with migrated_pool(await databases(), component) as single, \
            migrated_pool(await databases(), component) as batched:
        await one_by_one(make(single), single, messages)
        await in_batches(make(batched), batched, batches)
        expected = await contents(single, tables)
        assert all(expected.values()), {t: len(rows) for t, rows in expected.items()}  # the history touches all
        assert await contents(batched, tables) == expected
        if name == "risk-facts":
            await _alerts_follow_the_batch_semantics(single, batched, batches)


async def _alerts_follow_the_batch_semantics(single: Any, batched: Any, batches: list[list[Message]]) -> None:
    """Each household's open risks after the last batch are among the batch's alerts, which are
    among the alerts raised event by event (every batch evaluates a state apply evaluated too)."""
    def risks(rows: list[Any]) -> set[tuple[str, str]]:
        return {(r["household_id"], r["risk"]) for r in rows}
    per_event = risks(await single.fetch("SELECT household_id, risk FROM mon_alerts"))
    per_batch = risks(await batched.fetch("SELECT household_id, risk FROM mon_alerts"))
    alerts = risk_facts(batched).alerts
    households = [r["household_id"] for r in await batched.fetch("SELECT DISTINCT household_id FROM mon_risk_events")]
    async with batched.acquire() as conn:
        facts = await alerts.facts_of(conn, households)
    current = {(hid, risk) for hid, f in facts.items()
               for risk in most_severe(evaluate(f, alerts.thresholds, NOW.date()))}
    assert current <= per_batch <= per_event
    if len(batches) < 10:  # a few large batches skip some findings that held only for a while
        assert per_batch < per_event
    triggers = {m.event_id for b in batches for m in b}
    for r in await batched.fetch("SELECT data, metadata FROM events WHERE event_type = 'ReturnRiskAlertRaised'"):
        evidence, metadata = _json(r["data"])["evidence_event_ids"], _json(r["metadata"])
        assert evidence == [metadata["causation_id"]] and evidence[0] in triggers


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


# -- RiskFacts: one evaluation per household and batch -------------------------------------------

HH = "2b0d7c1e-1a6f-4c61-9d3e-5f3c0f6a0b01"


def _income(per_capita: int, version: int) -> Message:
    return message(HH, "household", {"event_type": "IncomeAssessed", "version": version, "data": {
        "household_id": HH, "year": 2023, "net_income": f"{per_capita * 3}.00", "resident_members": 3,
        "per_capita_net_income": f"{per_capita}.00"}})


async def test_risk_facts_evaluates_a_household_once_on_its_facts_after_the_batch(databases):
    registered = message(HH, "household", {"event_type": "HouseholdRegistered", "version": 1, "data": {
        "household_id": HH, "village_code": VILLAGES[0], "status": "applicant"}})
    # The 2023 income is below the threshold, then corrected above it by a second assessment.
    messages = [registered, _income(2500, 2), _income(9000, 3)]
    async with migrated_pool(await databases(), "monitoring") as single, \
            migrated_pool(await databases(), "monitoring") as batched:
        await one_by_one(risk_facts(single), single, messages)
        await in_batches(risk_facts(batched), batched, [messages])
        assert [r["rule"] for r in await single.fetch("SELECT rule FROM mon_alerts")] == ["income_below_threshold"]
        assert await batched.fetchval("SELECT count(*) FROM mon_alerts") == 0  # not the household's facts now

        # Below the threshold at the end of the next batch: one alert, caused by the household's last event.
        low = _income(3000, 4)
        disbursement = dataclasses.replace(message(str(uuid.uuid4()), "disbursement", {
            "event_type": "DisbursementRequested", "version": 1, "data": {
                "household_id": HH, "village_code": VILLAGES[0], "basis": "policy", "policy_code": MEDICAL_POLICY,
                "period": "2024", "cost_basis": "500.00", "amount": "100.00"}}), global_position=9)
        await in_batches(risk_facts(batched), batched, [[low, disbursement]])
        [alert] = await batched.fetch("SELECT * FROM mon_alerts")
        assert (alert["rule"], alert["household_id"]) == ("income_below_threshold", HH)
        raised = await batched.fetchrow("SELECT data, metadata FROM events WHERE stream_id = $1", alert["alert_id"])
        assert _json(raised["data"])["evidence_event_ids"] == [disbursement.event_id]
        assert _json(raised["metadata"])["causation_id"] == disbursement.event_id
        assert await batched.fetchval("SELECT count(*) FROM mon_medical_requests") == 1


# -- errors: apply_batch raises where apply raises, and writes nothing --------------------------------

def _household_message(hid: str, version: int, event_type: str, **data: Any) -> Message:
    return message(hid, "household", {"event_type": event_type, "version": version,
                                      "data": {"household_id": hid, **data}})


def _failing_batches() -> list[tuple[str, list[Message], type[Exception]]]:
    known, unknown = str(uuid.uuid4()), str(uuid.uuid4())
    registered = _household_message(known, 1, "HouseholdRegistered", village_code=VILLAGES[0],
                                    head_member_id=str(uuid.uuid4()), member_count=1)
    member = _member(random.Random(1), "10", 1980)
    added = _household_message(unknown, 1, "MemberAdded", **member)
    return [
        ("village-households", [registered, added], UnknownHousehold),
        ("dashboard", [registered, _household_message(unknown, 2, "HouseholdStatusChanged", to_status="identified")],
         DashboardError),
        ("dashboard", [registered, added], DashboardError),
        ("household-geo", [registered, _household_message(unknown, 1, "CadreAssigned", cadre_id="c",
                                                          assigned_on="2024-01-01")], LookupError),
        ("household-ledger", [registered, added], LedgerError),
        ("household-ledger", [registered, _household_message(known, 2, "MemberRemoved", member_id=member["member_id"],
                                                             reason="death")], LedgerError),
    ]


@pytest.mark.parametrize("case", range(len(_failing_batches())))
async def test_apply_batch_raises_where_apply_raises_and_writes_nothing(databases, case):
    name, batch, error = _failing_batches()[case]
    component, make, tables = PROJECTIONS[name]
    async with migrated_pool(await databases(), component) as pool:
        projection = make(pool)
        async with pool.acquire() as conn:
            with pytest.raises(error):
                await projection.apply(conn, batch[-1])
            with pytest.raises(error):
                await projection.apply_batch(conn, batch)  # outside a transaction: nothing may be written
        assert not any((await contents(pool, tables)).values())
