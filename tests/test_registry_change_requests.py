"""Change requests: a cadre's data change counts only once a data_change case approves it."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import httpx
import pytest

from contracts.registry import ChangeRequestApplied, ChangeRequestClosed, ChangeRequested
from contracts.topics import dlq_topic
from contracts.workflow import CASE_TOPIC
from eventkit.errors import DomainError
from eventkit.events import RecordedEvent
from eventkit.projection import Message
from eventkit.testing import producer, read_topic, wait_until
from services.monitoring.projections import VillageHouseholds
from services.registry.decisions import WorkflowDecisions
from services.registry.domain import Household
from services.registry.ledger import fold

from .conftest import village_code
from .harness import ActAs, internal_headers, principal, running_platform
from .registry_helpers import household, seed_village


def cadre(village: str) -> dict[str, str]:
    """The signed identity of cadre-7, a cadre of the village (minted per request: tokens are short-lived)."""
    return internal_headers(principal("cadre", village, user_id="cadre-7"))


@pytest.fixture
async def registry(infra, databases, unique):
    async with running_platform(infra, databases, unique("g"), services=("registry",)) as platform:
        url, runtime = platform["registry"]
        village = village_code()
        async with runtime.pool.acquire() as conn:
            await seed_village(conn, village)
        async with httpx.AsyncClient(base_url=url, timeout=10, auth=ActAs(platform, village=village)) as client:
            yield client, runtime, village


async def events_of(runtime, stream_id: str) -> list[dict[str, Any]]:
    rows = await runtime.pool.fetch(
        "SELECT event_id, event_type, version, data, metadata FROM events WHERE stream_id = $1 ORDER BY version",
        stream_id)
    return [{"id": str(r["event_id"]), "type": r["event_type"], "version": r["version"],
             "data": json.loads(r["data"]), "meta": json.loads(r["metadata"])} for r in rows]


async def new_household(client, runtime, village: str) -> tuple[str, list[str]]:
    """A registered household and its member ids (head, spouse, child)."""
    r = await client.post("/households", json=household(village))
    assert r.status_code == 201, r.text
    hid = r.json()["household_id"]
    return hid, [e["data"]["member_id"] for e in await events_of(runtime, hid) if e["type"] == "MemberAdded"]


def conclusion(household_id: str, change_request_id: str | None, outcome: str) -> dict[str, Any]:
    """The envelope of a data_change case's CaseConcluded, first event of its own case stream."""
    case_id = f"case-{uuid.uuid4().hex[:8]}"
    return {
        "event_id": str(uuid.uuid4()), "event_type": "CaseConcluded", "schema_version": 1,
        "source": "/tpa/workflow", "stream_id": case_id, "stream_type": "case", "version": 1, "global_position": 1,
        "data": {"case_id": case_id, "case_type": "data_change", "household_id": household_id, "outcome": outcome,
                 "status_effect": None, "effective_on": "2025-03-01", "subject": change_request_id},
        "metadata": {"correlation_id": f"corr-{case_id}", "recorded_at": "2025-03-01T00:00:00+00:00"}}


async def publish(infra, *envelopes: dict[str, Any]) -> None:
    async with producer(infra.bootstrap_servers, infra.idempotence) as p:
        for env in envelopes:
            await p.send_and_wait(CASE_TOPIC, key=env["stream_id"].encode(), value=json.dumps(env).encode())


async def concluded(runtime, hid: str, change_request_id: str) -> list[dict[str, Any]]:
    async def done():
        return [e for e in await events_of(runtime, hid)
                if e["type"] in ("ChangeRequestApplied", "ChangeRequestClosed")
                and e["data"]["change_request_id"] == change_request_id]
    return await wait_until(done, timeout=30, message=f"change request {change_request_id} concluded")


async def row_of(runtime, change_request_id: str) -> dict[str, Any]:
    return dict(await runtime.pool.fetchrow("SELECT * FROM change_requests WHERE id = $1",
                                            uuid.UUID(change_request_id)))


# -- pure parts ----------------------------------------------------------------------------

def test_change_request_events_are_replayed_and_change_no_household_facts():
    hid, head, crid = (str(uuid.uuid4()) for _ in range(3))
    base = [("HouseholdRegistered", {"village_code": "620102001001", "member_count": 1, "head_member_id": head,
                                     "status": "applicant", "registered_on": "2024-03-01"}),
            ("MemberAdded", {"member_id": head, "relation": "head", "sex": "male", "birth_year": 1970,
                             "id_hmac": "a" * 64, "id_masked": "6201**********1234", "name_masked": "张*强",
                             "reason": "initial", "profile": {}})]
    change = ("ChangeRequested", {"change_request_id": crid, "kind": "causes", "target": None,
                                  "fields": ["primary"], "reason": "r", "requested_by": "cadre-7",
                                  "requested_at": "2025-01-01T00:00:00+00:00"})
    closed = ("ChangeRequestClosed", {"change_request_id": crid, "case_id": "k", "outcome": "rejected",
                                      "reason": None, "decision_event_id": "e"})
    events = [{"event_type": t, "version": v, "data": {"household_id": hid, **d}}
              for v, (t, d) in enumerate([*base, change, closed], start=1)]
    assert fold(events) == {**fold(events[:2]), "version": 4}
    assert fold(events[:3]) == {**fold(events[:2]), "version": 3}

    h = Household(hid)
    for e in events[:3]:
        h.replay(RecordedEvent(e["version"], uuid.uuid4(), hid, "household", e["version"], e["event_type"], 1,
                               e["data"], {}, None, None))  # type: ignore[arg-type]
    assert h.pending_changes == {crid} and h.version == 3
    h.close_change(crid, case_id="k", outcome="rejected", reason=None, decision_event_id="e")
    assert h.pending_changes == set() and [e.event_type for e in h.pending] == ["ChangeRequestClosed"]
    with pytest.raises(DomainError) as refused:
        h.close_change(crid, case_id="k", outcome="rejected", reason=None, decision_event_id="e")
    assert refused.value.code == "change_request_not_pending"


async def test_monitoring_ignores_change_request_events():
    counts = VillageHouseholds()
    for event_type in (ChangeRequested.event_type, ChangeRequestApplied.event_type, ChangeRequestClosed.event_type):
        msg = Message(event_id=str(uuid.uuid4()), event_type=event_type, schema_version=1, source="/tpa/registry",
                      stream_id=str(uuid.uuid4()), stream_type="household", version=5, global_position=0,
                      data={"change_request_id": str(uuid.uuid4())}, metadata={})
        await counts.apply(None, msg)  # touches no table (no connection needed)


# -- through the service ---------------------------------------------------------------------

async def test_a_change_request_is_stored_and_its_event_names_only_the_fields(registry):
    client, runtime, village = registry
    hid, _ = await new_household(client, runtime, village)
    body = {"kind": "income", "target": "2024", "reason": "工资收入核实有误",
            "changes": {"wage": "9876.54", "transfer": "1234.56"}}
    r = await client.post(f"/households/{hid}/change-requests", json=body, headers=cadre(village))
    assert r.status_code == 201, r.text
    accepted = r.json()
    crid = accepted["change_request_id"]
    assert accepted == {"household_id": hid, "change_request_id": crid, "version": 5, "events": ["ChangeRequested"]}
    assert r.headers["location"] == f"/households/{hid}/change-requests/{crid}"
    assert r.headers["etag"] == '"5"'

    event = (await events_of(runtime, hid))[-1]
    assert event["type"] == "ChangeRequested" and event["version"] == 5
    data = event["data"]
    assert (data["change_request_id"], data["kind"], data["target"], data["requested_by"], data["reason"]) == (
        crid, "income", "2024", "cadre-7", "工资收入核实有误")
    assert data["fields"] == ["wage", "business", "property", "transfer", "business_expenses"]
    raw = json.dumps(data)
    assert "9876" not in raw and "1234.56" not in raw  # the proposed values stay in the registry
    assert event["meta"]["actor"] == "cadre-7"
    ChangeRequested.model_validate(data)

    row = await row_of(runtime, crid)
    assert (str(row["household_id"]), row["kind"], row["target"], row["status"], row["base_version"],
            row["requested_by"]) == (hid, "income", "2024", "pending", 4, "cadre-7")
    assert json.loads(row["changes"])["wage"] == "9876.54"
    assert row["case_id"] is None and row["decided_at"] is None
    # Nothing counts yet: no income was assessed.
    assert not [e for e in await events_of(runtime, hid) if e["type"] == "IncomeAssessed"]

    # One with its values, and the list, newest first.
    one = await client.get(f"/households/{hid}/change-requests/{crid}")
    assert one.status_code == 200, one.text
    view = one.json()
    assert view["status"] == "pending" and view["changes"]["wage"] == "9876.54" and view["changes"]["property"] == "0"
    assert view["fields"] == data["fields"] and view["requested_by"] == "cadre-7" and view["case_id"] is None
    second = await client.post(f"/households/{hid}/change-requests", headers=cadre(village), json={
        "kind": "coordinates", "reason": "定位偏差", "changes": {"latitude": 36.07, "longitude": 103.84}})
    assert second.status_code == 201, second.text
    listed = (await client.get(f"/households/{hid}/change-requests")).json()["items"]
    assert [i["change_request_id"] for i in listed] == [second.json()["change_request_id"], crid]
    assert "changes" not in listed[0]  # values only on the request itself
    assert (await client.get(f"/households/{hid}/change-requests", params={"status": "applied"})).json() == {
        "items": []}

    # Not found: unknown request, unknown household; a household without requests lists none.
    r = await client.get(f"/households/{hid}/change-requests/{uuid.uuid4()}")
    assert r.status_code == 404 and r.json()["code"] == "change_request_not_found"
    assert r.headers["content-type"].startswith("application/problem+json")
    r = await client.get(f"/households/{uuid.uuid4()}/change-requests")
    assert r.status_code == 404 and r.json()["code"] == "household_not_found"
    other, _ = await new_household(client, runtime, village)
    assert (await client.get(f"/households/{other}/change-requests")).json() == {"items": []}
    r = await client.get(f"/households/{other}/change-requests/{crid}")
    assert r.status_code == 404  # another household's request

    # Idempotency-Key and If-Match as for every command.
    key = {**cadre(village), "Idempotency-Key": "cr-1"}
    causes = {"kind": "causes", "reason": "主因应为缺技术", "changes": {"primary": "lack_of_skills"}}
    first = await client.post(f"/households/{hid}/change-requests", json=causes, headers=key)
    again = await client.post(f"/households/{hid}/change-requests", json=causes, headers=key)
    assert first.status_code == again.status_code == 201
    assert again.headers["idempotent-replayed"] == "true" and again.json() == first.json()
    assert again.headers["location"] == first.headers["location"]
    assert await runtime.pool.fetchval(
        "SELECT count(*) FROM change_requests WHERE household_id = $1", uuid.UUID(hid)) == 3
    r = await client.post(f"/households/{hid}/change-requests", json=causes,
                          headers={**cadre(village), "If-Match": '"1"'})
    assert r.status_code == 412 and r.json()["code"] == "version_mismatch"
    r = await client.post(f"/households/{hid}/change-requests", json=causes,
                          headers={**cadre(village), "If-Match": f'"{first.json()["version"]}"'})
    assert r.status_code == 201, r.text

    # A signed-in caller is required: the gateway's anonymous identity is refused, and so is a
    # call without the gateway's token; the old asserted X-TPA-Actor header names nobody.
    before = await runtime.pool.fetchval("SELECT count(*) FROM events")
    for headers in (internal_headers(None), {**internal_headers(None), "X-TPA-Actor": "cadre-7"}):
        r = await client.post(f"/households/{hid}/change-requests", json=causes, headers=headers)
        assert r.status_code == 401 and r.json()["code"] == "unauthenticated", r.text
        assert r.headers["content-type"].startswith("application/problem+json")
    for headers in ({}, {"X-TPA-Actor": "cadre-7"}):
        r = await client.post(f"/households/{hid}/change-requests", json=causes, headers=headers, auth=None)
        assert r.status_code == 401 and r.json()["code"] == "gateway_identity_required", r.text
        assert r.headers["content-type"].startswith("application/problem+json")
    assert await runtime.pool.fetchval("SELECT count(*) FROM events") == before


async def test_an_invalid_change_is_refused_now_with_the_direct_commands_problem(registry):
    client, runtime, village = registry
    hid, (_, spouse, child) = await new_household(client, runtime, village)
    r = await client.post(f"/households/{hid}/members/{child}/removal",
                          json={"reason": "moved_out", "removed_on": "2025-01-02"})
    assert r.status_code == 200, r.text
    # (kind, target, changes, the direct command's method and path)
    cases = [
        ("member_update", child, {"education": "primary"}, "PATCH", f"/members/{child}"),
        ("member_update", str(uuid.uuid4()), {"education": "primary"}, "PATCH", f"/members/{uuid.uuid4()}"),
        ("member_update", spouse, {"health": ["healthy", "disabled"]}, "PATCH", f"/members/{spouse}"),
        ("member_update", spouse, {"health": ["flu"]}, "PATCH", f"/members/{spouse}"),
        ("member_update", spouse, {}, "PATCH", f"/members/{spouse}"),
        ("income", 2099, {"wage": "5"}, "PUT", "/incomes/2099"),
        ("income", 2024, {"wage": "-5"}, "PUT", "/incomes/2024"),
        ("income", 2024, {"wage": "1.234"}, "PUT", "/incomes/2024"),
        ("income", 2024, {"per_capita_net_income": "9999"}, "PUT", "/incomes/2024"),
        ("conditions", None, {"assessed_on": "2024-06-01", "conditions": {"wifi": True}}, "PUT", "/conditions"),
        ("causes", None, {"primary": "laziness"}, "PUT", "/causes"),
        ("coordinates", None, {"latitude": 0.0, "longitude": 0.0}, "PUT", "/coordinates"),
        ("plan", 2024, {"measures": [{"kind": "magic", "description": "x"}]}, "PUT", "/plans/2024"),
        ("plan", 2024, {"measures": [{"kind": "housing", "description": "   "}]}, "PUT", "/plans/2024"),
    ]
    for kind, target, changes, method, path in cases:
        direct = await client.request(method, f"/households/{hid}{path}", json=changes)
        assert 400 <= direct.status_code < 500, (kind, changes, direct.text)
        body = {"kind": kind, "reason": "更正", "changes": changes, **({"target": target} if target else {})}
        r = await client.post(f"/households/{hid}/change-requests", json=body, headers=cadre(village))
        assert (r.status_code, r.json()["code"]) == (direct.status_code, direct.json()["code"]), (kind, changes, r.text)
        assert r.headers["content-type"].startswith("application/problem+json")
    # Shapes of the request itself.
    for body in ({"kind": "income", "reason": "x", "changes": {"wage": "5"}},  # no year
                 {"kind": "causes", "target": "2024", "reason": "x", "changes": {"primary": "illness"}},
                 {"kind": "member_update", "target": "not-a-member-id", "reason": "x", "changes": {}},
                 {"kind": "rename", "reason": "x", "changes": {}},
                 {"kind": "causes", "reason": " ", "changes": {"primary": "illness"}}):
        r = await client.post(f"/households/{hid}/change-requests", json=body, headers=cadre(village))
        assert r.status_code == 422 and r.json()["code"] == "validation_error", (body, r.text)
    # A change that would change nothing is not worth a review.
    r = await client.post(f"/households/{hid}/change-requests", headers=cadre(village), json={
        "kind": "member_update", "target": spouse, "reason": "x",
        "changes": {"health": ["chronic_illness"]}})
    assert r.status_code == 201, r.text
    await client.patch(f"/households/{hid}/members/{spouse}", json={"education": "primary"})
    r = await client.post(f"/households/{hid}/change-requests", headers=cadre(village), json={
        "kind": "member_update", "target": spouse, "reason": "x", "changes": {"education": "primary"}})
    assert r.status_code == 422 and r.json()["code"] == "no_changes"
    r = await client.post(f"/households/{uuid.uuid4()}/change-requests", headers=cadre(village), json={
        "kind": "causes", "reason": "x", "changes": {"primary": "illness"}})
    assert r.status_code == 404 and r.json()["code"] == "household_not_found"
    requested = [e for e in await events_of(runtime, hid) if e["type"] == "ChangeRequested"]
    assert len(requested) == 1
    assert await runtime.pool.fetchval("SELECT count(*) FROM change_requests") == 1

    # A closed household refuses, like every command.
    decision = {"decision_event_id": str(uuid.uuid4()), "case_id": "case-x", "status_effect":
                "wrongly_identified_removed", "effective_on": "2025-02-01"}
    assert (await client.post(f"/households/{hid}/status-decisions", json=decision)).status_code == 200
    r = await client.post(f"/households/{hid}/change-requests", headers=cadre(village), json={
        "kind": "causes", "reason": "x", "changes": {"primary": "illness"}})
    assert r.status_code == 409 and r.json()["code"] == "household_closed"
    assert await runtime.pool.fetchval("SELECT count(*) FROM change_requests") == 1


async def test_an_approved_change_is_applied_once_and_a_rejected_one_is_closed(registry, infra):
    client, runtime, village = registry
    hid, (_, _, child) = await new_household(client, runtime, village)
    income = await client.post(f"/households/{hid}/change-requests", headers=cadre(village), json={
        "kind": "income", "target": 2024, "reason": "补录2024年收入",
        "changes": {"wage": "9000", "business": "2500.50", "transfer": "1200", "business_expenses": "700.50"}})
    facts = await client.post(f"/households/{hid}/change-requests", headers=cadre(village), json={
        "kind": "member_update", "target": child, "reason": "升入高中", "changes": {"schooling_stage": "senior"}})
    assert income.status_code == facts.status_code == 201, (income.text, facts.text)
    income_id, facts_id = income.json()["change_request_id"], facts.json()["change_request_id"]

    approved = conclusion(hid, income_id, "approved")
    rejected = conclusion(hid, facts_id, "rejected")
    unknown = conclusion(hid, str(uuid.uuid4()), "approved")  # e.g. a newer registry's request: ignored
    await publish(infra, unknown, approved, approved, rejected, rejected)
    applied = await concluded(runtime, hid, income_id)
    closed = await concluded(runtime, hid, facts_id)
    await asyncio.sleep(1)  # the redeliveries had their chance

    events = await events_of(runtime, hid)
    types = [e["type"] for e in events]
    assert types.count("IncomeAssessed") == 1 and types.count("ChangeRequestApplied") == 1
    assert types.count("ChangeRequestClosed") == 1 and "MemberUpdated" not in types
    # The change's own events precede ChangeRequestApplied, with the decision as cause.
    at = types.index("ChangeRequestApplied")
    assessed, marker = events[at - 1], events[at]
    assert assessed["type"] == "IncomeAssessed"
    assert assessed["data"]["net_income"] == "12000.00" and assessed["data"]["per_capita_net_income"] == "4000.00"
    for e in (assessed, marker):
        assert e["meta"]["causation_id"] == approved["event_id"]
        assert e["meta"]["actor"] == "workflow:data_change"
        assert e["meta"]["correlation_id"] == approved["metadata"]["correlation_id"]
    assert marker["data"] == ChangeRequestApplied(
        household_id=hid, change_request_id=income_id, case_id=approved["data"]["case_id"],
        decision_event_id=approved["event_id"]).model_dump(mode="json")
    assert applied == [marker]
    assert closed[0]["data"]["outcome"] == "rejected" and closed[0]["data"]["reason"] is None
    assert closed[0]["data"]["decision_event_id"] == rejected["event_id"]

    row = await row_of(runtime, income_id)
    assert (row["status"], row["case_id"], row["decision_event_id"]) == (
        "applied", approved["data"]["case_id"], approved["event_id"])
    assert row["decided_at"] is not None and row["closed_reason"] is None
    assert (await row_of(runtime, facts_id))["status"] == "rejected"
    view = (await client.get(f"/households/{hid}/change-requests/{income_id}")).json()
    assert view["status"] == "applied" and view["case_id"] == approved["data"]["case_id"]

    # Replayed (a rebuild of the consumer) or concluded again by another case: nothing more.
    decisions = WorkflowDecisions(runtime.state["registry"])
    later = conclusion(hid, facts_id, "approved")
    for env in (approved, rejected, later):
        async with runtime.pool.acquire() as conn:
            async with conn.transaction():
                await decisions.apply(conn, Message.from_envelope(env))
    assert len(await events_of(runtime, hid)) == len(events)
    assert (await row_of(runtime, facts_id))["status"] == "rejected"

    # The ledger follows: the income counts, and the document equals the fold of the stream.
    async def ledger():
        r = await client.get(f"/households/{hid}")
        return r.json() if r.json()["version"] == len(events) and r.headers["x-tpa-read-model"] == "ledger" else None
    doc = await wait_until(ledger, timeout=30, message="the ledger at the applied change")
    assert doc["incomes"]["2024"]["net_income"] == "12000.00"
    raw = await runtime.pool.fetchval("SELECT doc FROM ledger_households WHERE household_id = $1", uuid.UUID(hid))
    rows = await runtime.pool.fetch("SELECT event_type, version, data FROM events WHERE stream_id = $1"
                                    " ORDER BY version", hid)
    assert json.loads(raw) == fold(dict(r) for r in rows)


async def test_an_approved_change_that_no_longer_fits_is_closed_as_not_applicable(registry, infra):
    client, runtime, village = registry
    hid, (_, _, child) = await new_household(client, runtime, village)
    r = await client.post(f"/households/{hid}/change-requests", headers=cadre(village), json={
        "kind": "member_update", "target": child, "reason": "参加职业技能培训", "changes": {"labour_skill": "skilled"}})
    assert r.status_code == 201, r.text
    crid = r.json()["change_request_id"]
    # Meanwhile the member moved out.
    r = await client.post(f"/households/{hid}/members/{child}/removal",
                          json={"reason": "moved_out", "removed_on": "2025-01-02"})
    assert r.status_code == 200, r.text
    version = r.json()["version"]

    approved = conclusion(hid, crid, "approved")
    await publish(infra, approved)
    closed = await concluded(runtime, hid, crid)
    events = await events_of(runtime, hid)
    assert [e["type"] for e in events[version:]] == ["ChangeRequestClosed"]
    data = closed[0]["data"]
    assert data["outcome"] == "not_applicable" and data["case_id"] == approved["data"]["case_id"]
    assert data["reason"].startswith("member_removed: ") and child in data["reason"]
    assert closed[0]["meta"]["causation_id"] == approved["event_id"]
    ChangeRequestClosed.model_validate(data)
    row = await row_of(runtime, crid)
    assert row["status"] == "not_applicable" and row["closed_reason"] == data["reason"]
    listed = (await client.get(f"/households/{hid}/change-requests", params={"status": "not_applicable"})).json()
    assert [i["change_request_id"] for i in listed["items"]] == [crid]
    assert listed["items"][0]["closed_reason"] == data["reason"]

    # Approved after the household was closed: not applicable either, and still recorded.
    r = await client.post(f"/households/{hid}/change-requests", headers=cadre(village), json={
        "kind": "coordinates", "reason": "定位", "changes": {"latitude": 36.06, "longitude": 103.83}})
    assert r.status_code == 201, r.text
    late = r.json()["change_request_id"]
    decision = {"decision_event_id": str(uuid.uuid4()), "case_id": "case-y", "status_effect":
                "wrongly_identified_removed", "effective_on": "2025-02-01"}
    assert (await client.post(f"/households/{hid}/status-decisions", json=decision)).status_code == 200
    await publish(infra, conclusion(hid, late, "approved"))
    closed = await concluded(runtime, hid, late)
    assert closed[0]["data"]["outcome"] == "not_applicable"
    assert closed[0]["data"]["reason"].startswith("household_closed: ")
    assert not [e for e in await events_of(runtime, hid) if e["type"] == "CoordinatesSet"]

    # Not dead-lettered: the decisions were handled (the topic is shared by the session's tests).
    dead = [json.loads(r.value).get("event_id") for r in await read_topic(infra.bootstrap_servers,
                                                                          dlq_topic(CASE_TOPIC))]
    assert approved["event_id"] not in dead
