"""Registry commands and rules through the HTTP API (directly and through the gateway)."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import date

import httpx
import pytest


from .conftest import village_code
from .harness import ActAs, bearer, ensure_account, principal, running_platform
from .registry_helpers import household, member, seed_village, unknown_village


@pytest.fixture
async def registry(infra, databases, unique):
    async with running_platform(infra, databases, unique("g"), services=("registry", "gateway")) as platform:
        url, runtime = platform["registry"]
        village = village_code()
        async with runtime.pool.acquire() as conn:
            await seed_village(conn, village)
        auth = ActAs(platform, village=village)
        async with httpx.AsyncClient(base_url=url, timeout=10, auth=auth) as direct, \
                httpx.AsyncClient(base_url=platform["gateway"][0] + "/api/v1", timeout=10, auth=auth) as gateway:
            yield direct, gateway, runtime, village


async def events_of(runtime, stream_id: str) -> list[dict]:
    rows = await runtime.pool.fetch(
        "SELECT event_type, data, metadata FROM events WHERE stream_id = $1 ORDER BY version", stream_id)
    return [{"type": r["event_type"], "data": json.loads(r["data"]), "meta": json.loads(r["metadata"])} for r in rows]


async def test_register_household_through_the_gateway_keeps_personal_data_in_the_vault(registry):
    direct, gateway, runtime, village = registry
    body = household(village)
    r = await gateway.post("/households", json=body)
    assert r.status_code == 201, r.text
    hid = r.json()["household_id"]
    assert r.json()["events"] == ["HouseholdRegistered", "MemberAdded", "MemberAdded", "MemberAdded"]
    assert r.headers["etag"] == '"4"'
    events = await events_of(runtime, hid)
    raw = json.dumps(events, ensure_ascii=False)
    for m in body["members"]:
        assert m["id_number"] not in raw and m["name"] not in raw  # personal data never in events
    head = events[1]["data"]
    assert head["name_masked"] == "张*强" and head["id_masked"].startswith("6201") and "*" in head["id_masked"]
    assert len(head["id_hmac"]) == 64 and head["sex"] == "male" and head["birth_year"] == 1972 and "birth_date" not in head
    vault = await runtime.pool.fetch("SELECT name, id_number FROM person_vault WHERE household_id = $1",
                                     uuid.UUID(hid))
    assert {v["name"] for v in vault} == {m["name"] for m in body["members"]}
    assert events[0]["data"]["status"] == "applicant" and events[0]["data"]["member_count"] == 3


async def test_bad_registrations_are_rejected_with_the_failing_rule_and_nothing_is_written(registry):
    direct, gateway, runtime, village = registry
    good = household(village)
    bad_check = dict(good["members"][0], id_number=good["members"][0]["id_number"][:-1] + (
        "0" if good["members"][0]["id_number"][-1] != "0" else "1"))
    cases = {
        "unknown_village": household(unknown_village(village)),  # in the caller's county, not registered
        "id_check_digit": household(village, [bad_check]),
        "id_birth_date_mismatch": household(village, [dict(good["members"][0], birth_date="1980-01-01")]),
        "one_head": household(village, [member("王五", date(1980, 1, 1), "20")]),
        "validation_error": household(village, attribute="rich"),
        "duplicate_member": household(village, [good["members"][0], dict(good["members"][0], relation="20")]),
    }
    for code, body in cases.items():
        r = await direct.post("/households", json=body)
        assert r.status_code == 422, (code, r.text)
        assert r.json()["code"] == code, (code, r.json())
        assert r.json()["detail"]
        assert r.headers["content-type"].startswith("application/problem+json")
    r = await direct.post("/households", json={**good, "village_code": "12"})
    assert r.status_code == 422  # schema validation
    assert await runtime.pool.fetchval("SELECT count(*) FROM events") == 0
    assert await runtime.pool.fetchval("SELECT count(*) FROM person_vault") == 0


async def test_one_person_belongs_to_one_active_household_even_under_concurrent_registration(registry):
    direct, gateway, runtime, village = registry
    person = member("赵六", date(1960, 2, 3), "head")
    first = await direct.post("/households", json=household(village, [person]))
    assert first.status_code == 201
    again = await direct.post("/households", json=household(village, [dict(person, name="赵六")]))
    assert again.status_code == 409 and again.json()["code"] == "duplicate_person"
    assert again.json()["household_id"] == first.json()["household_id"]
    # Many concurrent registrations of one new person: exactly one wins.
    newcomer = member("钱七", date(1990, 3, 4), "head")
    results = await asyncio.gather(*(direct.post("/households", json=household(village, [newcomer]))
                                     for _ in range(6)))
    assert sorted(r.status_code for r in results) == [201] + [409] * 5
    # After the person is removed (moved out), another household may take them in.
    hid = first.json()["household_id"]
    mid = (await events_of(runtime, hid))[1]["data"]["member_id"]
    r = await direct.post(f"/households/{hid}/members/{mid}/removal",
                          json={"reason": "moved_out", "removed_on": "2025-01-02"})
    assert r.status_code == 200, r.text
    assert r.json()["events"] == ["MemberRemoved", "HouseholdStatusChanged"]  # the last member: natural decrease
    r = await direct.post("/households", json=household(village, [person]))
    assert r.status_code == 201, r.text


async def test_member_lifecycle_and_state_rules(registry):
    direct, gateway, runtime, village = registry
    hid = (await gateway.post("/households", json=household(village))).json()["household_id"]
    evs = await events_of(runtime, hid)
    head, spouse, child = (e["data"]["member_id"] for e in evs[1:4])
    baby = member("张小花", date(2024, 5, 6), "30", male=False)
    r = await gateway.post(f"/households/{hid}/members", json={"member": baby, "reason": "birth",
                                                               "joined_on": "2024-05-06"})
    assert r.status_code == 200 and r.json()["member_id"]
    r = await gateway.patch(f"/households/{hid}/members/{child}", json={"health": ["serious_illness"],
                                                                       "schooling_stage": "senior"})
    assert r.status_code == 200 and r.json()["events"] == ["MemberUpdated"]
    r = await gateway.patch(f"/households/{hid}/members/{child}", json={"health": ["healthy", "disabled"]})
    assert r.status_code == 422 and r.json()["code"] == "invalid_code"
    r = await gateway.post(f"/households/{hid}/members/{head}/removal",
                           json={"reason": "death", "removed_on": "2025-01-01"})
    assert r.status_code == 409 and r.json()["code"] == "head_removal"
    r = await gateway.post(f"/households/{hid}/head", json={"member_id": spouse, "changed_on": "2025-01-01"})
    assert r.status_code == 200
    r = await gateway.post(f"/households/{hid}/members/{head}/removal",
                           json={"reason": "death", "removed_on": "2025-01-01"})
    assert r.status_code == 200
    r = await gateway.patch(f"/households/{hid}/members/{head}", json={"education": "primary"})
    assert r.status_code == 409 and r.json()["code"] == "member_removed"
    r = await gateway.post(f"/households/{hid}/members/{head}/removal",
                           json={"reason": "death", "removed_on": "2025-01-01"})
    assert r.status_code == 409 and r.json()["code"] == "member_removed"
    r = await gateway.post(f"/households/{hid}/members/{uuid.uuid4()}/removal",
                           json={"reason": "death", "removed_on": "2025-01-01"})
    assert r.status_code == 404 and r.json()["code"] == "member_not_found"
    r = await gateway.post(f"/households/{hid}/members/{child}/removal",
                           json={"reason": "eloped", "removed_on": "2025-01-01"})
    assert r.status_code == 422 and r.json()["code"] == "validation_error"
    assert r.json()["errors"][0]["loc"] == ["body", "reason"]


async def test_income_is_computed_by_the_service_per_resident_member(registry):
    direct, gateway, runtime, village = registry
    hid = (await direct.post("/households", json=household(village))).json()["household_id"]
    r = await direct.put(f"/households/{hid}/incomes/2024", json={
        "wage": "9000", "business": "2500.50", "property": "0", "transfer": "1200", "business_expenses": "700.50"})
    assert r.status_code == 200, r.text
    income = (await events_of(runtime, hid))[-1]["data"]
    assert income["net_income"] == "12000.00" and income["resident_members"] == 3
    assert income["per_capita_net_income"] == "4000.00"
    r = await direct.put(f"/households/{hid}/incomes/2024", json={"wage": "100", "per_capita_net_income": "9999"})
    assert r.status_code == 422  # the client never sends the computed figure
    r = await direct.put(f"/households/{hid}/incomes/2024", json={"wage": "-5"})
    assert r.status_code == 422
    r = await direct.put(f"/households/{hid}/incomes/1999", json={"wage": "5"})
    assert r.status_code == 422 and r.json()["code"] == "validation_error"  # the path bounds the year
    r = await direct.put(f"/households/{hid}/incomes/2099", json={"wage": "5"})
    assert r.status_code == 422 and r.json()["code"] == "invalid_year"  # no assessment of future years


async def test_conditions_causes_cadres_plans_coordinates(registry):
    direct, gateway, runtime, village = registry
    hid = (await direct.post("/households", json=household(village))).json()["household_id"]
    ok = [
        ("PUT", "/conditions", {"assessed_on": "2024-06-01", "conditions": {"food": True, "safe_housing": False}}),
        ("PUT", "/causes", {"primary": "lack_of_funds", "others": ["illness", "lack_of_funds"]}),
        ("POST", "/cadres", {"cadre_id": "c-1", "unit": "县农业农村局", "assigned_on": "2024-03-05"}),
        ("PUT", "/plans/2024", {"measures": [{"kind": "industry", "description": "养殖肉牛2头"}]}),
        ("PUT", "/coordinates", {"latitude": 36.06, "longitude": 103.83}),
        ("POST", "/cadres/c-1/release", {"released_on": "2025-01-01", "reason": "rotation"}),
    ]
    for method, path, body in ok:
        r = await gateway.request(method, f"/households/{hid}{path}", json=body)
        assert r.status_code == 200, (path, r.text)
    causes = [e for e in await events_of(runtime, hid) if e["type"] == "PovertyCausesRecorded"][0]["data"]
    assert causes["others"] == ["illness"]
    bad = [
        ("PUT", "/conditions", {"assessed_on": "2024-06-01", "conditions": {"wifi": True}}, "validation_error"),
        ("PUT", "/causes", {"primary": "laziness"}, "validation_error"),
        ("POST", "/cadres/c-1/release", {"released_on": "2025-01-01"}, "cadre_not_assigned"),
        ("PUT", "/plans/2024", {"measures": [{"kind": "magic", "description": "x"}]}, "validation_error"),
        ("PUT", "/coordinates", {"latitude": 0.0, "longitude": 0.0}, "invalid_coordinates"),
    ]
    for method, path, body, code in bad:
        r = await direct.request(method, f"/households/{hid}{path}", json=body)
        assert r.status_code in (409, 422) and r.json()["code"] == code, (path, r.text)


async def test_concurrent_writers_get_409_or_412_never_a_lost_update(registry):
    direct, gateway, runtime, village = registry
    hid = (await direct.post("/households", json=household(village))).json()["household_id"]
    r = await direct.put(f"/households/{hid}/causes", json={"primary": "illness"}, headers={"If-Match": '"1"'})
    assert r.status_code == 412 and r.json()["code"] == "version_mismatch"
    r = await direct.put(f"/households/{hid}/causes", json={"primary": "illness"}, headers={"If-Match": '"4"'})
    assert r.status_code == 200 and r.headers["etag"] == '"5"'
    results = await asyncio.gather(*(direct.put(f"/households/{hid}/incomes/2024", json={"wage": str(1000 + i)})
                                     for i in range(8)))
    statuses = [r.status_code for r in results]
    assert set(statuses) <= {200, 409} and 200 in statuses
    versions = [r.json()["version"] for r in results if r.status_code == 200]
    assert len(versions) == len(set(versions))  # every success is its own version: none overwritten
    assert len(await events_of(runtime, hid)) == 5 + statuses.count(200)


async def test_status_changes_only_by_decision_idempotently_with_causation(registry):
    direct, gateway, runtime, village = registry
    hid = (await direct.post("/households", json=household(village))).json()["household_id"]
    decision = {"decision_event_id": str(uuid.uuid4()), "case_id": "case-9", "status_effect": "lifted_out",
                "effective_on": "2024-12-01"}
    r = await direct.post(f"/households/{hid}/status-decisions", json=decision)
    assert r.status_code == 409 and r.json()["code"] == "invalid_transition"
    identify = dict(decision, status_effect="identified")
    r = await gateway.post(f"/households/{hid}/status-decisions", json=identify)
    assert r.status_code == 200 and r.json()["events"] == ["HouseholdStatusChanged"]
    again = await gateway.post(f"/households/{hid}/status-decisions", json=identify)
    assert again.status_code == 200 and again.json()["events"] == []  # applied once
    exit_ = {"decision_event_id": str(uuid.uuid4()), "case_id": "case-10", "status_effect": "lifted_out",
             "effective_on": "2025-12-01"}
    assert (await direct.post(f"/households/{hid}/status-decisions", json=exit_)).status_code == 200
    r = await direct.post(f"/households/{hid}/status-decisions", json=dict(exit_, decision_event_id="other"))
    assert r.status_code == 409  # a lifted-out household cannot be lifted out again
    status = [e for e in await events_of(runtime, hid) if e["type"] == "HouseholdStatusChanged"]
    assert [(s["data"]["from_status"], s["data"]["to_status"]) for s in status] == [
        ("applicant", "identified"), ("identified", "lifted_out")]
    assert status[0]["meta"]["causation_id"] == identify["decision_event_id"]
    monitor = {"decision_event_id": str(uuid.uuid4()), "case_id": "case-11", "status_effect":
               "monitoring_designated", "monitoring_object_type": "unstable_lifted_out", "effective_on": "2026-01-01"}
    assert (await direct.post(f"/households/{hid}/status-decisions", json=monitor)).status_code == 200
    r = await direct.post(f"/households/{hid}/status-decisions", json=dict(monitor, decision_event_id="x2"))
    assert r.status_code == 409 and r.json()["code"] == "already_monitoring"


async def test_workflow_decision_events_are_applied_once_from_the_topic(registry, infra):
    from eventkit.testing import producer, wait_until

    direct, gateway, runtime, village = registry
    hid = (await direct.post("/households", json=household(village))).json()["household_id"]
    decision_id = str(uuid.uuid4())
    envelope = {
        "event_id": decision_id, "event_type": "CaseConcluded", "schema_version": 1, "source": "/tpa/workflow",
        "stream_id": "case-77", "stream_type": "case", "version": 3, "global_position": 3,
        "data": {"case_id": "case-77", "case_type": "identification", "household_id": hid, "outcome": "approved",
                 "status_effect": "identified", "effective_on": "2024-05-01"},
        "metadata": {"correlation_id": "corr-77", "recorded_at": "2024-05-01T00:00:00+00:00"}}
    # The workflow stream's earlier events (v1, v2) concern no status; deliver them and the decision twice.
    earlier = [dict(envelope, event_id=str(uuid.uuid4()), version=v, event_type="CaseOpened", data={})
               for v in (1, 2)]
    async with producer(infra.bootstrap_servers, infra.idempotence) as p:
        for env in earlier + [envelope, envelope]:
            await p.send_and_wait("tpa.workflow.case.v1", key=b"case-77", value=json.dumps(env).encode())

    async def changed():
        return [e for e in await events_of(runtime, hid) if e["type"] == "HouseholdStatusChanged"]
    status = await wait_until(changed, timeout=30)
    await asyncio.sleep(1)
    status = await changed()
    assert len(status) == 1
    assert status[0]["meta"]["causation_id"] == decision_id
    assert status[0]["data"]["case_id"] == "case-77" and status[0]["data"]["to_status"] == "identified"


async def test_erasure_removes_personal_data_and_keeps_history(registry):
    direct, gateway, runtime, village = registry
    hid = (await direct.post("/households", json=household(village))).json()["household_id"]
    child = (await events_of(runtime, hid))[3]["data"]["member_id"]
    r = await gateway.post(f"/households/{hid}/members/{child}/erasure")
    assert r.status_code == 200 and r.json()["events"] == ["MemberPersonalDataErased"]
    row = await runtime.pool.fetchrow("SELECT name, id_number, erased_at FROM person_vault WHERE member_id = $1",
                                      uuid.UUID(child))
    assert row["name"] is None and row["id_number"] is None and row["erased_at"] is not None
    r = await gateway.post(f"/households/{hid}/members/{child}/erasure")
    assert r.status_code == 409 and r.json()["code"] == "already_erased"
    r = await direct.patch(f"/households/{hid}/members/{child}", json={"education": "junior"})
    assert r.status_code == 200  # the member's non-personal history goes on


async def test_village_profile_is_dated(registry):
    direct, gateway, runtime, village = registry
    body = {"effective_on": "2024-01-01", "rural_population": 1200, "registered_population": 300,
            "poor_village": True, "hardened_road": True, "collective_income": "52000"}
    r = await gateway.put(f"/villages/{village}/profile", json=body)
    assert r.status_code == 200, r.text
    r = await gateway.put(f"/villages/{village}/profile", json=dict(body, effective_on="2023-01-01"))
    assert r.status_code == 409 and r.json()["code"] == "stale_profile"
    r = await gateway.put(f"/villages/{village}/profile", json=dict(body, registered_population=5000))
    assert r.status_code == 422
    r = await gateway.put(f"/villages/{unknown_village(village)}/profile", json=body)
    assert r.status_code == 422 and r.json()["code"] == "unknown_village"
    lists = (await gateway.get("/code-lists")).json()
    assert lists["poverty_cause"]["lack_of_funds"]["zh"] == "缺资金"


async def test_ledger_queries_through_the_gateway(registry):
    from eventkit.testing import wait_until

    direct, gateway, runtime, village = registry
    body = household(village)
    hid = (await gateway.post("/households", json=body)).json()["household_id"]
    await gateway.put(f"/households/{hid}/causes", json={"primary": "lack_of_funds"})

    async def ledger_at(version: int):
        r = await gateway.get(f"/households/{hid}")
        return r.json() if r.status_code == 200 and r.json().get("version") == version else None
    doc = await wait_until(lambda: ledger_at(5), timeout=30)
    raw = json.dumps(doc, ensure_ascii=False)
    assert body["members"][0]["id_number"] not in raw and body["members"][0]["name"] not in raw
    # Personal data: only with household:read_personal, and through the gateway only for a stated
    # purpose, which the access log records.
    r = await gateway.get(f"/households/{hid}", params={"personal": "true"})
    assert r.status_code == 422, r.text  # no purpose
    r = await gateway.get(f"/households/{hid}", params={"personal": "true", "purpose": " "})
    assert r.status_code == 422, r.text
    accounts = gateway.auth.gateway  # the gateway's runtime (ActAs keeps it)
    operator = principal("operator", village[:6].ljust(12, "0"))  # household:read, not household:read_personal
    await ensure_account(accounts, operator)
    r = await gateway.get(f"/households/{hid}", params={"personal": "true", "purpose": "入户核实"},
                          headers=bearer(operator))
    assert r.status_code == 403 and r.json()["code"] == "personal_data_not_allowed", r.text
    assert body["members"][0]["name"] not in r.text
    r = await gateway.get(f"/households/{hid}", params={"personal": "true", "purpose": "入户核实"})
    assert r.status_code == 200, r.text
    assert r.headers["cache-control"] == "no-store"
    names = {(m.get("personal") or {}).get("name") for m in r.json()["members"]}
    assert {m["name"] for m in body["members"]} <= names
    officer = ActAs(village=village).pick("GET", f"/api/v1/households/{hid}")
    logged = await accounts.pool.fetch(
        "SELECT principal_id, purpose FROM access_log WHERE kind = 'personal_data' AND $1 = ANY(records)", hid)
    assert [(x["principal_id"], x["purpose"]) for x in logged] == [(officer.id, "入户核实")]
    denied = await accounts.pool.fetch("SELECT reason FROM access_log WHERE kind = 'denied' AND principal_id = $1",
                                       operator.id)
    assert [x["reason"] for x in denied] == ["personal_data_not_allowed"]

    async def listed():
        page = (await gateway.get("/households", params={"village_code": village, "cause": "lack_of_funds"})).json()
        return [i["household_id"] for i in page["items"]] == [hid]
    await wait_until(listed, timeout=30, message="the household in the ledger's search")
    found = (await gateway.post("/households/search", json={"id_number": body["members"][1]["id_number"]})).json()
    assert [i["household_id"] for i in found["items"]] == [hid]
    r = await gateway.get("/households", params={"id_number": body["members"][1]["id_number"]})
    assert r.status_code == 422  # never in a URL through the gateway
    stats = await gateway.get(f"/villages/{village}/statistics")
    assert stats.status_code == 200 and stats.json()["households"] == 1 and stats.json()["people"] == 3
    assert (await gateway.get(f"/regions/{village[:6]}/statistics")).status_code == 200


async def test_text_postgresql_cannot_store_is_refused_cleanly(registry):
    direct, gateway, runtime, village = registry
    hid = (await direct.post("/households", json=household(village))).json()["household_id"]
    for text in ('"a\\u0000b"', '"\\ud800x"'):
        raw = '{"measures": [{"kind": "housing", "description": %s}]}' % text
        r = await gateway.put(f"/households/{hid}/plans/2024", content=raw,
                              headers={"content-type": "application/json"})
        assert r.status_code == 422 and r.json()["code"] == "invalid_text", r.text
    r = await direct.get("/households", params={"village_code": village, "cause": "a\x00b"})
    assert r.status_code == 422 and r.json()["code"] == "invalid_text", r.text
    r = await gateway.put(f"/households/{hid}/plans/1541039", json={"measures": [{"kind": "housing",
                                                                                  "description": "x"}]})
    assert r.status_code == 422
    r = await gateway.post(f"/households/{hid}/cadres/a%0Db/release", json={"released_on": "2025-01-01"})
    assert r.status_code == 422
    assert (await gateway.get("/households/search")).status_code == 405
