"""The funds service end to end through the gateway: allocations, policy and project payments with
every command-time rule, no overdraft under concurrent approvals, anomalies, reconciliation.

One platform (registry, funds, gateway) serves the module; each test uses its own village and
households, registered in the registry and seen by funds through the registry's topic. Every call is
authenticated: by the usual post for the route's action over the test's village (``ActAs``), or by
the principal a test is about.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest_asyncio

from eventkit.testing import wait_until
from services.funds.domain import CHINA_TZ

from .conftest import village_code
from .harness import ActAs, internal_headers, principal, running_platform
from .registry_helpers import household, seed_village

API = "/api/v1"
TODAY = datetime.now(CHINA_TZ).date()  # the service dates payments in China time
YEAR = str(TODAY.year)


@pytest_asyncio.fixture(scope="module")
async def platform(infra, module_databases):
    async with running_platform(infra, module_databases, f"fd{uuid.uuid4().hex[:8]}",
                                services=("registry", "funds", "gateway")) as p:
        yield p


@dataclass
class Town:
    """A test's village, and a gateway client acting as the usual post for each route's action there
    (village committee, township reviewer, county office, information officer)."""

    p: dict[str, Any]
    v: str
    client: httpx.AsyncClient


@pytest_asyncio.fixture
async def town(platform) -> AsyncIterator[Town]:
    v = village_code()
    async with platform["registry"][1].pool.acquire() as conn:
        await seed_village(conn, v)
    async with httpx.AsyncClient(base_url=platform["gateway"][0] + API, timeout=30,
                                 auth=ActAs(platform, village=v)) as client:
        yield Town(platform, v, client)


def as_(platform, who) -> httpx.AsyncClient:
    """A gateway client acting as ``who`` (None: anonymous, no token)."""
    return httpx.AsyncClient(base_url=platform["gateway"][0] + API, timeout=30,
                             **({"auth": ActAs(platform, who=who)} if who is not None else {}))


def province_of(code: str) -> str:
    return code[:2] + "0" * 10


def another_county(village: str) -> str:
    """A county of the same city as ``village``, not the village's own."""
    county = "11" if village[4:6] != "11" else "12"
    return f"{village[:4]}{county}000000"


async def identified_household(t: Town, identified: bool = True) -> dict[str, Any]:
    """Register a household (head, spouse, a junior-school child), identify it, wait until funds knows it."""
    p, client = t.p, t.client
    r = await client.post("/households", json=household(t.v))
    assert r.status_code == 201, r.text
    hid = r.json()["household_id"]
    if identified:
        r = await client.post(f"/households/{hid}/status-decisions", json={
            "decision_event_id": str(uuid.uuid4()), "case_id": f"case-{hid[:8]}", "status_effect": "identified",
            "effective_on": "2024-04-01"})
        assert r.status_code == 200, r.text
    ledger = (await client.get(f"/households/{hid}")).json()
    members = {m["relation"]: m["member_id"] for m in ledger["members"]}
    wanted = 2 if identified else 1
    pool = p["funds"][1].pool

    async def seen():
        return await pool.fetchval("SELECT count(*) FROM fd_household_events WHERE household_id = $1 AND"
                                   " event_type IN ('HouseholdRegistered', 'HouseholdStatusChanged')", hid) >= wanted
    await wait_until(seen, timeout=30, message=f"household {hid} in the funds projection")
    await wait_until(lambda: _members_seen(pool, hid, 3), timeout=30, message="the members in funds")
    return {"household_id": hid, "head": members["head"], "child": members["20"], "spouse": members["10"]}


async def _members_seen(pool, hid: str, n: int) -> bool:
    return await pool.fetchval("SELECT count(*) FROM fd_household_events WHERE household_id = $1 AND"
                               " event_type = 'MemberAdded'", hid) >= n


async def allocation(t: Town, region: str | None = None, amount: str = "100000.00") -> str:
    """An allocation of the town's county (or ``region``), created by its county office."""
    region = region or t.v[:6]
    r = await t.client.post("/allocations", json={"source": "central", "year": TODAY.year,
                                                  "purpose": "教育扶贫资金", "region_code": region, "amount": amount})
    assert r.status_code == 201, r.text
    assert r.headers["location"] == f"{API}/allocations/{r.json()['id']}"
    return r.json()["id"]


async def request(t: Town, expect: int = 201, **body) -> dict[str, Any]:
    r = await t.client.post("/disbursements", json=body)
    assert r.status_code == expect, r.text
    return r.json()


async def paid(t: Town, body: dict[str, Any], alloc: str | None, paid_on: date = TODAY,
               reference: str | None = None) -> str:
    client = t.client
    body = dict(body)
    channel = body.pop("_channel", "student_aid_card")
    did = (await request(t, **body))["id"]
    r = await client.post(f"/disbursements/{did}/approval", json={"allocation_id": alloc} if alloc else {})
    assert r.status_code == 200, r.text
    r = await client.post(f"/disbursements/{did}/payment", json={
        "channel": channel, "channel_reference": reference or f"ref-{did[:12]}",
        "paid_on": paid_on.isoformat()})
    assert r.status_code == 200, r.text
    return did


def junior_boarding(h: dict[str, Any], **extra) -> dict[str, Any]:
    return {"household_id": h["household_id"], "member_id": h["child"], "basis": "policy",
            "policy_code": "edu_boarding_junior", "period": YEAR, "amount": "1250.00", **extra}


# -- policy payments and their rules ----------------------------------------------------------

async def test_a_policy_payment_is_checked_against_eligibility_standard_and_duplicates(town):
    client = town.client
    h = await identified_household(town)
    alloc = await allocation(town)

    did = await paid(town, junior_boarding(h), alloc)
    d = (await client.get(f"/disbursements/{did}")).json()
    assert d["status"] == "paid" and d["standard_amount"] == "1250.00" and d["policy_version"] == 1
    a = (await client.get(f"/allocations/{alloc}")).json()
    assert (a["spent"], a["reserved"], a["available"]) == ("1250.00", "0.00", "98750.00")

    # The same member, policy and period cannot be paid twice.
    dup = await request(town, 409, **junior_boarding(h))
    assert dup["code"] == "duplicate_payment" and dup["existing_disbursement_id"] == did
    # Above the standard for the period.
    above = await request(town, 422, **junior_boarding(h, amount="1300.00", period=str(TODAY.year - 1)))
    assert above["code"] == "amount_above_standard" and above["standard_amount"] == "1250.00"
    # The head is not at junior school.
    stage = await request(town, 409, **junior_boarding(h, member_id=h["head"]))
    assert stage["code"] == "not_eligible" and stage["rule"] == "schooling_stage"
    # An applicant household is not entitled.
    applicant = await identified_household(town, identified=False)
    status = await request(town, 409, **junior_boarding(applicant))
    assert status["code"] == "not_eligible" and status["rule"] == "household_status"
    # Nothing is written by a refused request.
    r = await client.get(f"/allocations/{alloc}")
    assert r.json()["version"] == a["version"]


async def test_a_deceased_member_is_refused_and_a_late_death_raises_an_anomaly(town):
    client, v = town.client, town.v
    h = await identified_household(town)
    alloc = await allocation(town)
    did = await paid(town, junior_boarding(h), alloc, paid_on=TODAY)
    # The death (before the payment date) is recorded in the registry after the payment.
    r = await client.post(f"/households/{h['household_id']}/members/{h['child']}/removal",
                          json={"reason": "death", "removed_on": (TODAY - timedelta(days=3)).isoformat()})
    assert r.status_code == 200, r.text

    async def anomaly():
        body = (await client.get("/anomalies", params={"household_id": h["household_id"]})).json()
        return body["items"] if body["total"] else None
    [found] = await wait_until(anomaly, timeout=30, message="the paid_to_deceased anomaly")
    assert found["rule"] == "paid_to_deceased" and found["subject_id"] == did
    assert found["evidence"]["died_on"] == (TODAY - timedelta(days=3)).isoformat()
    # The list shows it within the jurisdictions covering the village, and nowhere else.
    async with as_(town.p, principal("operator", province_of(v))) as province, \
            as_(town.p, principal("county_office", another_county(v))) as stranger:
        mine = (await province.get("/anomalies", params={"household_id": h["household_id"]})).json()
        assert [a["anomaly_id"] for a in mine["items"]] == [found["anomaly_id"]]
        theirs = (await stranger.get("/anomalies", params={"household_id": h["household_id"]})).json()
        assert theirs == {"total": 0, "items": []}
        theirs = (await stranger.get("/anomalies", params={"rule": "paid_to_deceased", "limit": 1000})).json()
        assert found["anomaly_id"] not in {a["anomaly_id"] for a in theirs["items"]}
    # A new request for the deceased member is refused, naming the rule.
    refused = await request(town, 409, **junior_boarding(h, period=str(TODAY.year - 1)))
    assert refused["rule"] in ("member_deceased", "member_not_active")


async def test_no_allocation_is_overdrawn_under_concurrent_approvals(town):
    client = town.client
    h = await identified_household(town)
    alloc = await allocation(town, amount="1000.00")
    months = [f"{TODAY.year - 1}-{m:02d}" for m in range(1, 11)]
    ids = [(await request(town, household_id=h["household_id"], member_id=h["spouse"], basis="policy",
                          policy_code="minimum_living_tier1", period=m, amount="310.00"))["id"] for m in months]

    async def approve(did: str) -> httpx.Response:
        return await client.post(f"/disbursements/{did}/approval", json={"allocation_id": alloc})
    results = await asyncio.gather(*(approve(d) for d in ids))
    ok = [r for r in results if r.status_code == 200]
    refused = [r for r in results if r.status_code != 200]
    assert len(ok) == 3, [r.text for r in results]  # 3 x 310 fit in 1,000; a fourth would not
    assert {r.status_code for r in refused} == {409}
    assert {r.json()["code"] for r in refused} <= {"insufficient_funds", "concurrency_conflict"}
    assert any(r.json()["code"] == "insufficient_funds" for r in refused)
    a = (await client.get(f"/allocations/{alloc}")).json()
    assert Decimal(a["reserved"]) == Decimal("930.00") and Decimal(a["available"]) == Decimal("70.00")


async def test_concurrent_and_retried_requests_never_pay_an_entitlement_twice(town):
    client = town.client
    h = await identified_household(town)
    body = junior_boarding(h, period=str(TODAY.year - 1))
    results = await asyncio.gather(*(client.post("/disbursements", json=body) for _ in range(6)))
    assert sorted(r.status_code for r in results) == [201] + [409] * 5
    assert {r.json()["code"] for r in results if r.status_code == 409} == {"duplicate_payment"}
    # A retry with the same Idempotency-Key gets the first answer, not a duplicate refusal.
    key = {"Idempotency-Key": str(uuid.uuid4())}
    other = junior_boarding(h, period=str(TODAY.year - 2))
    first = await client.post("/disbursements", json=other, headers=key)
    again = await client.post("/disbursements", json=other, headers=key)
    assert first.status_code == again.status_code == 201 and first.json() == again.json()
    assert again.headers["idempotent-replayed"] == "true"


# -- projects ---------------------------------------------------------------------------------

async def test_project_payments_follow_the_approved_budget(town):
    client, v = town.client, town.v
    h = await identified_household(town)
    other = await identified_household(town)
    alloc = await allocation(town, amount="50000.00")
    r = await client.post("/projects", json={"name": "肉牛养殖", "kind": "industry", "region_code": v, "budget":
                                             "30000.00", "plan_year": TODAY.year,
                                             "beneficiary_household_ids": [h["household_id"]]})
    assert r.status_code == 201, r.text
    pid = r.json()["id"]
    assert (await client.post(f"/projects/{pid}/review", json={"comment": "材料齐全"})).status_code == 200
    wrong_kind = await client.get(f"/allocations/{pid}")  # a project id is no allocation
    assert wrong_kind.status_code == 404 and wrong_kind.json()["code"] == "allocation_not_found"
    r = await client.post(f"/projects/{pid}/approval", json={"approved_budget": "20000.00", "funding": [
        {"allocation_id": alloc, "amount": "20000.00"}]})
    assert r.status_code == 200, r.text
    assert (await client.get(f"/allocations/{alloc}")).json()["reserved"] == "20000.00"
    assert (await client.post(f"/projects/{pid}/start", json={"started_on": TODAY.isoformat()})).status_code == 200

    project_payment = {"household_id": h["household_id"], "basis": "project", "project_id": pid, "period": YEAR}
    await paid(town, {**project_payment, "amount": "15000.00", "_channel": "bank_transfer"}, None)
    project = (await client.get(f"/projects/{pid}")).json()
    assert project["paid"] == "15000.00"
    # Not a beneficiary; and above what is left of the budget.
    refused = await request(town, 409, **{**project_payment, "household_id": other["household_id"],
                                              "amount": "100.00"})
    assert refused["rule"] == "not_beneficiary"
    big = (await request(town, **{**project_payment, "amount": "6000.00"}))["id"]
    r = await client.post(f"/disbursements/{big}/approval", json={})
    assert r.status_code == 409 and r.json()["code"] == "over_budget", r.text
    # Completion and acceptance release what is left of the reservation.
    assert (await client.post(f"/disbursements/{big}/failure", json={"reason": "超出预算"})).status_code == 200
    assert (await client.post(f"/projects/{pid}/completion", json={"completed_on": TODAY.isoformat()})
            ).status_code == 200
    assert (await client.post(f"/projects/{pid}/acceptance")).status_code == 200
    a = (await client.get(f"/allocations/{alloc}")).json()
    assert (a["spent"], a["reserved"], a["available"]) == ("15000.00", "0.00", "35000.00")

    # The village's public disclosure shows the project and its payments, and no one's identity.
    async def disclosed():
        body = (await client.get(f"/villages/{v}/disclosure")).json()
        return body if any(x["paid"] == "15000.00" for x in body.get("projects", [])) else None
    disclosure = await wait_until(disclosed, timeout=30, message="the project in the village disclosure")
    assert h["household_id"] not in str(disclosure) and h["head"] not in str(disclosure)


# -- anomalies and reconciliation ------------------------------------------------------------------

async def test_one_account_for_many_households_is_an_anomaly(town):
    client, v = town.client, town.v
    alloc = await allocation(town)
    households = [await identified_household(town) for _ in range(4)]
    for h in households:
        await paid(town, junior_boarding(h, account_number="6217000011112222333"), alloc)
    body = (await client.get("/anomalies", params={"rule": "shared_account"})).json()
    ours = {h["household_id"] for h in households}
    found = [a for a in body["items"] if ours <= set(a["evidence"]["household_ids"])]
    assert len(found) == 1, body
    assert found[0]["subject_type"] == "account" and found[0]["severity"] == "medium"
    d = (await client.get(f"/disbursements/{found[0]['evidence']['disbursement_ids'][0]}")).json()
    assert d["account_masked"] == "621700*********2333"
    assert "6217000011112222333" not in str(body)
    # Another county's office is not shown the account's anomaly.
    async with as_(town.p, principal("county_office", another_county(v))) as stranger:
        theirs = (await stranger.get("/anomalies", params={"rule": "shared_account", "limit": 1000})).json()
    assert found[0]["anomaly_id"] not in {a["anomaly_id"] for a in theirs["items"]}


async def test_a_statement_reconciles_matching_payments_and_reports_the_rest(town):
    client, v = town.client, town.v
    alloc = await allocation(town)
    h1, h2 = await identified_household(town), await identified_household(town)
    ref1, ref2 = f"R{uuid.uuid4().hex[:10]}", f"R{uuid.uuid4().hex[:10]}"
    d1 = await paid(town, junior_boarding(h1), alloc, reference=ref1)
    d2 = await paid(town, junior_boarding(h2), alloc, reference=ref2)
    statement = ("reference,account_masked,amount,date,status\n"
                 f"{ref1},,1250.00,{TODAY.isoformat()},paid\n"
                 f"{ref2},,1200.00,{TODAY.isoformat()},paid\n"
                 f"UNKNOWN-{uuid.uuid4().hex[:6]},,80.00,{TODAY.isoformat()},paid\n")
    headers = {"content-type": "text/csv"}
    bad = await client.post("/statements", params={"channel": "student_aid_card"}, headers=headers,
                            content="reference,amount\nx,abc\n")
    assert bad.status_code == 422 and bad.json()["code"] == "invalid_statement"
    assert {e["column"] for e in bad.json()["errors"]} == {"account_masked", "date", "status"}
    bad_line = statement + "R1,,-5,2025-13-01,lost\n"
    bad = await client.post("/statements", params={"channel": "student_aid_card"}, headers=headers,
                            content=bad_line)
    assert bad.status_code == 422 and {e["line"] for e in bad.json()["errors"]} == {5}
    r = await client.post("/statements", params={"channel": "student_aid_card"}, headers=headers, content=statement)
    assert r.status_code == 201, r.text
    report = r.json()
    assert report["reconciled"] == [d1]
    assert {(e["kind"], e["disbursement_id"]) for e in report["exceptions"]} == {
        ("amount_mismatch", d2), ("unmatched", None)}
    assert (await client.get(f"/disbursements/{d1}")).json()["status"] == "reconciled"
    assert (await client.get(f"/disbursements/{d2}")).json()["status"] == "paid"
    again = await client.post("/statements", params={"channel": "student_aid_card"}, headers=headers,
                              content=statement)
    assert again.status_code == 409 and again.json()["code"] == "statement_already_imported"
    stored = (await client.get(f"/statements/{report['statement_id']}")).json()
    assert stored["matched"] == 1 and len(stored["exception_list"]) == 2
    # The statement is the importing county's: the province reads it, another county does not, nor
    # learns which statement holds the file.
    assert stored["importer_jurisdiction"] == v[:6] + "000000"
    async with as_(town.p, principal("operator", province_of(v))) as province, \
            as_(town.p, principal("county_office", another_county(v))) as stranger:
        assert (await province.get(f"/statements/{report['statement_id']}")).json()["matched"] == 1
        r = await stranger.get(f"/statements/{report['statement_id']}")
        assert (r.status_code, r.json()["code"]) == (403, "outside_jurisdiction")
        again = await stranger.post("/statements", params={"channel": "student_aid_card"}, headers=headers,
                                    content=statement)
        assert again.status_code == 409 and again.json()["code"] == "statement_already_imported"
        assert report["statement_id"] not in again.text


# -- jurisdiction ---------------------------------------------------------------------------------------

async def test_another_countys_office_is_refused_this_countys_records_and_lists_leave_them_out(town):
    client, v = town.client, town.v
    h = await identified_household(town)
    creation = {"source": "county", "year": TODAY.year, "purpose": "产业发展资金", "region_code": v[:6],
                "amount": "40000.00"}
    key = {"Idempotency-Key": str(uuid.uuid4())}
    r = await client.post("/allocations", json=creation, headers=key)
    assert r.status_code == 201, r.text
    alloc = r.json()["id"]
    r = await client.post("/projects", json={"name": "光伏电站", "kind": "infrastructure", "region_code": v,
                                             "budget": "20000.00", "plan_year": TODAY.year,
                                             "beneficiary_household_ids": [h["household_id"]]})
    assert r.status_code == 201, r.text
    pid = r.json()["id"]
    assert (await client.post(f"/projects/{pid}/review", json={})).status_code == 200
    r = await client.post(f"/projects/{pid}/approval", json={"approved_budget": "20000.00", "funding": [
        {"allocation_id": alloc, "amount": "20000.00"}]})
    assert r.status_code == 200, r.text
    ref = f"J{uuid.uuid4().hex[:10]}"
    did = await paid(town, junior_boarding(h), alloc, reference=ref)
    pending = (await request(town, **junior_boarding(h, period=str(TODAY.year - 1))))["id"]

    async def in_the_ledger():
        balance = await client.get(f"/allocations/{alloc}/balance")
        funds = await client.get(f"/households/{h['household_id']}/funds")
        return balance.status_code == 200 and balance.json()["spent"] == "1250.00" and \
            funds.json().get("total") == "1250.00" and (await client.get(f"/projects/{pid}/budget")).status_code == 200
    await wait_until(in_the_ledger, timeout=30, message="the allocation, project and payment in the ledger")
    own = (await client.get("/ledger/totals")).json()
    assert (own["allocated"], own["reserved"], own["spent"], own["balanced"]) == (
        "40000.00", "20000.00", "1250.00", True), own
    # The province sees the county's records.
    async with as_(town.p, principal("operator", province_of(v))) as province:
        for path in (f"/allocations/{alloc}", f"/projects/{pid}", f"/disbursements/{did}"):
            assert (await province.get(path)).status_code == 200, path

    stranger_post = principal("county_office", another_county(v))
    async with as_(town.p, stranger_post) as stranger, \
            as_(town.p, principal("information_officer", another_county(v))) as clerk:
        # One record: 403 from the service (the gateway cannot know where a record lies).
        for path in (f"/allocations/{alloc}", f"/allocations/{alloc}/balance", f"/projects/{pid}",
                     f"/projects/{pid}/budget", f"/disbursements/{did}", f"/households/{h['household_id']}/funds"):
            r = await stranger.get(path)
            assert (r.status_code, r.json()["code"]) == (403, "outside_jurisdiction"), (path, r.text)
        # Commands: 403, and nothing written.
        records = (f"/allocations/{alloc}", f"/projects/{pid}", f"/disbursements/{did}", f"/disbursements/{pending}")
        versions = {path: (await client.get(path)).json()["version"] for path in records}
        refusals = [
            await stranger.post(f"/allocations/{alloc}/adjustments", json={"amount_delta": "-100.00", "reason": "x"}),
            await stranger.post(f"/projects/{pid}/cancellation", json={"reason": "x"}),
            await stranger.post(f"/disbursements/{pending}/approval", json={"allocation_id": alloc}),
            await stranger.post(f"/disbursements/{did}/reversal", json={"reason": "x"}),
            await stranger.post("/allocations", json={**creation, "amount": "1.00"}),
            await clerk.post("/disbursements", json=junior_boarding(h, period=str(TODAY.year - 2))),
        ]
        assert [(r.status_code, r.json()["code"]) for r in refusals] == [(403, "outside_jurisdiction")] * 6, [
            r.text for r in refusals]
        assert {path: (await client.get(path)).json()["version"] for path in records} == versions
        # Reusing this county's Idempotency-Key replays nothing to another caller: it is their own key.
        reused = await stranger.post("/allocations", json=creation, headers=key)
        assert (reused.status_code, reused.json()["code"]) == (403, "outside_jurisdiction"), reused.text
        assert "idempotent-replayed" not in reused.headers
        # Lists leave this county's records out.
        theirs = (await stranger.get("/ledger/totals")).json()
        assert (theirs["rows"], theirs["allocated"], theirs["spent"], theirs["debits"]) == (
            [], "0.00", "0.00", "0.00"), theirs
        assert (await stranger.get("/anomalies", params={"village_code": v})).json() == {"total": 0, "items": []}
        # A statement naming this county's payment reconciles nothing of it, and says nothing about it.
        r = await stranger.post("/statements", params={"channel": "student_aid_card"},
                                headers={"content-type": "text/csv"},
                                content=f"reference,account_masked,amount,date,status\n{ref},,1250.00,"
                                        f"{TODAY.isoformat()},paid\n")
        assert r.status_code == 201, r.text
        assert r.json()["reconciled"] == [] and [(e["kind"], e["disbursement_id"]) for e in r.json()["exceptions"]] \
            == [("outside_jurisdiction", None)]
        assert did not in r.text and "1250" not in r.json()["exceptions"][0]["detail"]
        statement_id = r.json()["statement_id"]
    assert (await client.get(f"/disbursements/{did}")).json()["status"] == "paid"
    r = await client.get(f"/statements/{statement_id}")  # the other county's statement
    assert (r.status_code, r.json()["code"]) == (403, "outside_jurisdiction")

    # The village's public disclosure needs no one.
    async with as_(town.p, None) as anonymous:
        async def disclosed():
            body = (await anonymous.get(f"/villages/{v}/disclosure")).json()
            return body if any(x["project_id"] == pid for x in body.get("projects", [])) and \
                body["total_paid"] == "1250.00" else None
        disclosure = await wait_until(disclosed, timeout=30, message="the village's disclosure")
    assert h["household_id"] not in str(disclosure) and did not in str(disclosure)


async def test_commands_need_an_authenticated_caller(platform):
    body = {"source": "central", "year": TODAY.year, "purpose": "x", "region_code": "620102", "amount": "1.00"}
    async with as_(platform, None) as anonymous:
        r = await anonymous.post("/allocations", json=body)
    assert r.status_code == 401 and r.json()["code"] == "missing_token"
    assert r.headers["www-authenticate"].startswith("Bearer")
    # The service itself takes no call without the gateway's identity token, nor a command from no one.
    async with httpx.AsyncClient(base_url=platform["funds"][0], timeout=10) as direct:
        r = await direct.post("/allocations", json=body)
        assert r.status_code == 401 and r.json()["code"] == "gateway_identity_required"
        r = await direct.post("/allocations", json=body, headers=internal_headers(None))
        assert r.status_code == 401 and r.json()["code"] == "unauthenticated"


async def test_the_ledger_equals_the_event_store_after_every_record_is_redelivered(platform, infra):
    """Runs last in this module: every payment the other tests made is counted."""
    from contracts.funds import ALLOCATION_TOPIC, DISBURSEMENT_TOPIC, PROJECT_TOPIC
    from eventkit.testing import producer, read_topic

    p = platform
    runtime = p["funds"][1]
    async with producer(infra.bootstrap_servers, infra.idempotence) as prod:
        for topic in (ALLOCATION_TOPIC, PROJECT_TOPIC, DISBURSEMENT_TOPIC):
            for record in await read_topic(infra.bootstrap_servers, topic):
                await prod.send_and_wait(topic, key=record.key, value=record.value, headers=list(record.headers))
    events = [e for e in await runtime.store.read_all(0, 1_000_000)
              if e.stream_type in ("allocation", "project", "disbursement")]
    spent = sum((Decimal(e.data["amount"]) for e in events if e.event_type == "FundsSpent"), Decimal(0))
    spent -= sum((Decimal(e.data["amount"]) for e in events if e.event_type == "SpendingReversed"), Decimal(0))
    assert spent > 0

    async def caught_up():
        return await runtime.pool.fetchval("SELECT count(*) FROM ledger_events") == len(events)
    await wait_until(caught_up, timeout=60, message="the ledger to apply every funds event")
    await asyncio.sleep(1.0)  # the redelivered records have been read too
    assert await runtime.pool.fetchval("SELECT count(*) FROM ledger_events") == len(events)
    # Each province's officers see the totals of its budget lines: together, every payment.
    created = {e.stream_id: e.data["region_code"] for e in events if e.event_type == "AllocationCreated"}
    seen = Decimal(0)
    for province in sorted({province_of(region) for region in created.values()}):
        async with as_(p, principal("operator", province)) as reader:
            totals = (await reader.get("/ledger/totals")).json()
            assert totals["balanced"] is True, totals
            assert totals["debits"] == totals["credits"], totals
            seen += Decimal(totals["spent"])
            for alloc_id in (a for a, region in created.items() if province_of(region) == province):
                folded = (await reader.get(f"/allocations/{alloc_id}")).json()
                ledger = (await reader.get(f"/allocations/{alloc_id}/balance")).json()
                assert (ledger["amount"], ledger["reserved"], ledger["spent"], ledger["available"]) == (
                    folded["amount"], folded["reserved"], folded["spent"], folded["available"]), alloc_id
    assert seen == spent
