"""The household ledger (户台账): fold, projection, query API and monitoring's people count."""

from __future__ import annotations

import itertools
import json
import random
import uuid
from datetime import date
from typing import Any

import httpx
import pytest

from contracts.registry import HOUSEHOLD_TOPIC
from eventkit import migrations as mig
from eventkit.projection import Message
from eventkit.testing import producer, read_topic, wait_until
from services.monitoring.projections import UnknownHousehold, VillageHouseholds
from services.registry import regions
from services.registry.ledger import HouseholdLedger, LedgerError, evolve, fold

from .harness import ActAs, internal_headers, principal, running_platform

HMAC_KEY = "ledger-test-key-" + "k" * 32
WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_sequence = itertools.count(11)


def id_number(birth: date, male: bool, address: str = "620102") -> str:
    """A valid resident ID number: GB 11643 check character over the first 17 digits."""
    seq = next(_sequence) % 1000
    if (seq % 2 == 1) != male:
        seq += 1
    first17 = f"{address}{birth:%Y%m%d}{seq % 1000:03d}"
    check = "10X98765432"[sum(int(d) * w for d, w in zip(first17, WEIGHTS)) % 11]
    return first17 + check


def test_the_id_number_helper_matches_the_published_example():
    first17 = "11010519491231002"
    assert "10X98765432"[sum(int(d) * w for d, w in zip(first17, WEIGHTS)) % 11] == "X"


# -- fold ------------------------------------------------------------------------------

HH = "6f1c1f0e-2c1a-4d7e-9a55-0c3a1d1e0001"
HEAD, SPOUSE, CHILD, BABY = (f"00000000-0000-4000-8000-00000000000{i}" for i in range(1, 5))
HMACS = {m: f"{i:064x}" for i, m in enumerate((HEAD, SPOUSE, CHILD, BABY), start=1)}


def member_added(member_id: str, relation: str, sex: str, birth: str, **profile: Any) -> tuple[str, dict]:
    return "MemberAdded", {
        "member_id": member_id, "relation": relation, "sex": sex, "birth_year": int(birth[:4]), "ethnicity": "han",
        "id_hmac": HMACS[member_id], "id_masked": "6201**********1234", "name_masked": "张*强",
        "reason": "initial", "joined_on": "2024-03-01",
        "profile": {"health": None, "education": None, "schooling_stage": None, "labour_skill": None,
                    "employment": None, "employment_months": None, "insurance": None, **profile}}


def envelopes(*events: tuple[str, dict]) -> list[dict[str, Any]]:
    return [{"event_type": t, "version": v, "data": {"household_id": HH, **d}}
            for v, (t, d) in enumerate(events, start=1)]


SEQUENCE = envelopes(
    ("HouseholdRegistered", {"village_code": "620102001001", "member_count": 3, "registered_on": "2024-03-01",
                             "address": "二组15号", "attribute": "general", "identification_standard": "national",
                             "head_member_id": HEAD, "status": "applicant"}),
    member_added(HEAD, "head", "male", "1972-05-01", health=["healthy"]),
    member_added(SPOUSE, "10", "female", "1975-08-09", health=["chronic_illness"]),
    member_added(CHILD, "20", "male", "2012-09-01", schooling_stage="primary"),
    ("IncomeAssessed", {"year": 2023, "wage": "6000.00", "business": "1200.00", "property": "0.00",
                        "transfer": "800.00", "business_expenses": "500.00", "resident_members": 3,
                        "net_income": "7500.00", "per_capita_net_income": "2500.00"}),
    ("LivingConditionsAssessed", {"assessed_on": "2024-03-05", "conditions": {"food": True, "safe_housing": False}}),
    ("PovertyCausesRecorded", {"primary": "illness", "others": ["lack_of_funds"]}),
    ("CadreAssigned", {"cadre_id": "cadre-1", "unit": "县农业局", "assigned_on": "2024-03-10"}),
    ("CadreAssigned", {"cadre_id": "cadre-2", "unit": "县教育局", "assigned_on": "2024-04-01"}),
    ("CadreReleased", {"cadre_id": "cadre-1", "released_on": "2024-06-30", "reason": "transferred"}),
    ("MemberUpdated", {"member_id": CHILD, "changes": {"schooling_stage": "junior", "health": None}}),
    member_added(BABY, "30", "female", "2024-05-02"),
    ("HeadChanged", {"head_member_id": SPOUSE, "previous_head_member_id": HEAD, "changed_on": "2024-07-01"}),
    ("MemberRemoved", {"member_id": HEAD, "reason": "death", "removed_on": "2024-06-20", "note": None}),
    ("HouseholdStatusChanged", {"from_status": "applicant", "to_status": "identified", "effective_on": "2024-08-01",
                                "basis": "decision", "case_id": "case-9", "decision_event_id": "evt-9"}),
    ("LivingConditionsAssessed", {"assessed_on": "2024-09-01", "conditions": {"safe_housing": True}}),
    ("AssistancePlanRecorded", {"year": 2024, "measures": [{"kind": "health", "description": "大病救助"}]}),
    ("CoordinatesSet", {"latitude": 36.06, "longitude": 103.83}),
    ("SomethingFromTheFuture", {"whatever": 1}),
    ("MemberPersonalDataErased", {"member_id": HEAD, "erased_on": "2024-10-01"}),
)


def test_fold_builds_the_household_ledger():
    doc = fold(SEQUENCE)
    assert doc["household_id"] == HH and doc["version"] == len(SEQUENCE)
    assert (doc["village_code"], doc["county_code"], doc["township_code"]) == (
        "620102001001", "620102", "620102001")
    assert doc["status"] == "identified"
    assert doc["status_history"] == [
        {"from": None, "to": "applicant", "effective_on": "2024-03-01", "basis": "registration", "case_id": None,
         "decision_event_id": None},
        {"from": "applicant", "to": "identified", "effective_on": "2024-08-01", "basis": "decision",
         "case_id": "case-9", "decision_event_id": "evt-9"}]
    members = {m["member_id"]: m for m in doc["members"]}
    assert list(members) == [HEAD, SPOUSE, CHILD, BABY]
    assert doc["member_count"] == 3 and doc["unlisted_members"] == 0
    assert [m["active"] for m in members.values()] == [False, True, True, True]
    assert members[HEAD]["removed"] == {"reason": "death", "on": "2024-06-20", "note": None}
    assert members[HEAD]["personal_data_erased"] and members[HEAD]["erased_on"] == "2024-10-01"
    assert members[HEAD]["name_masked"] is None and members[HEAD]["id_masked"] is None
    assert members[HEAD]["id_hmac"] is None
    assert members[SPOUSE]["name_masked"] == "张*强" and members[SPOUSE]["id_hmac"] == HMACS[SPOUSE]
    assert members[CHILD]["facts"] == {"schooling_stage": "junior"}
    assert members[SPOUSE]["facts"] == {"health": ["chronic_illness"]}
    assert doc["head_member_id"] == SPOUSE
    assert doc["head_history"] == [{"from": HEAD, "to": SPOUSE, "changed_on": "2024-07-01"}]
    assert doc["incomes"]["2023"]["per_capita_net_income"] == "2500.00"
    assert doc["conditions"] == {"assessed_on": "2024-09-01", "items": {
        "food": {"secured": True, "assessed_on": "2024-03-05"},
        "safe_housing": {"secured": True, "assessed_on": "2024-09-01"}}}
    assert doc["causes"] == {"primary": "illness", "others": ["lack_of_funds"]}
    assert doc["cadres"] == {
        "current": [{"cadre_id": "cadre-2", "unit": "县教育局", "assigned_on": "2024-04-01"}],
        "history": [{"cadre_id": "cadre-1", "unit": "县农业局", "assigned_on": "2024-03-10",
                     "released_on": "2024-06-30", "reason": "transferred"}]}
    assert doc["plans"] == {"2024": {"measures": [{"kind": "health", "description": "大病救助"}]}}
    assert doc["coordinates"] == {"latitude": 36.06, "longitude": 103.83}
    # The document is plain JSON: storing it changes nothing.
    assert json.loads(json.dumps(doc)) == doc


def test_fold_is_incremental_and_does_not_modify_its_input():
    before = json.dumps(SEQUENCE, sort_keys=True)
    whole = fold(SEQUENCE)
    partial = fold(SEQUENCE[:7])
    doc = partial
    for event in SEQUENCE[7:]:
        doc = evolve(json.loads(json.dumps(doc)), event)
    assert doc == whole
    assert json.dumps(SEQUENCE, sort_keys=True) == before
    # Event-store rows carry data as JSON text.
    assert fold([{**e, "data": json.dumps(e["data"])} for e in SEQUENCE]) == whole


def test_fold_of_a_walking_skeleton_registration_counts_its_members():
    doc = fold([{"event_type": "HouseholdRegistered", "version": 1,
                 "data": {"household_id": HH, "village_code": "620102001001", "member_count": 4,
                          "registered_on": None}}])
    assert doc["member_count"] == 4 and doc["unlisted_members"] == 4 and doc["members"] == []
    assert doc["status"] == "applicant" and doc["attribute"] is None


def test_fold_refuses_events_that_do_not_fit():
    with pytest.raises(LedgerError):
        fold(SEQUENCE[1:2])  # a member before the registration
    with pytest.raises(LedgerError):
        fold([*SEQUENCE[:2], {"event_type": "MemberRemoved", "version": 3,
                              "data": {"household_id": HH, "member_id": BABY, "reason": "death",
                                       "removed_on": "2024-01-01"}}])
    with pytest.raises(LedgerError):
        fold([*SEQUENCE[:2], *SEQUENCE[:1]])  # registered twice
    assert fold([{"event_type": "SomethingFromTheFuture", "version": 1, "data": {}}]) is None


# -- projections applied directly -------------------------------------------------------

def message(stream_id: str, stream_type: str, event: dict[str, Any]) -> Message:
    return Message(event_id=str(uuid.uuid4()), event_type=event["event_type"], schema_version=1,
                   source="/tpa/registry", stream_id=stream_id, stream_type=stream_type,
                   version=event["version"], global_position=0, data=event["data"], metadata={})


async def _migrated(pool, component: str) -> None:
    from pathlib import Path

    folder = Path(__file__).parent.parent / "services" / component / "migrations"
    async with pool.acquire() as conn:
        await mig.apply(conn, mig.load(component, folder))


async def test_the_projection_stores_the_fold_and_its_search_columns(pool):
    await _migrated(pool, "registry")
    ledger = HouseholdLedger()
    for event in SEQUENCE:
        async with pool.acquire() as conn:
            async with conn.transaction():
                await ledger.apply(conn, message(HH, "household", event))
    row = await pool.fetchrow("SELECT * FROM ledger_households WHERE household_id = $1", uuid.UUID(HH))
    assert json.loads(row["doc"]) == fold(SEQUENCE)
    assert (row["county_code"], row["status"], row["primary_cause"], row["causes"], row["member_count"],
            row["version"], str(row["head_member_id"])) == (
        "620102", "identified", "illness", ["illness", "lack_of_funds"], 3, len(SEQUENCE), SPOUSE)
    members = {str(r["member_id"]): r for r in await pool.fetch("SELECT * FROM ledger_members")}
    assert set(members) == {HEAD, SPOUSE, CHILD, BABY}
    assert not members[HEAD]["active"] and members[HEAD]["id_hmac"] is None
    assert members[CHILD]["schooling_stage"] == "junior" and members[SPOUSE]["health"] == ["chronic_illness"]

    village = {"event_type": "VillageProfileUpdated", "version": 1, "data": {
        "village_code": "620102001001", "effective_on": "2024-01-01", "rural_population": 500,
        "registered_population": 40, "poor_village": True, "safe_water": False, "collective_income": None}}
    older = {**village, "version": 2, "data": {**village["data"], "effective_on": "2023-01-01",
                                                "rural_population": 1}}
    async with pool.acquire() as conn:
        await ledger.apply(conn, message("620102001001", "village", village))
        await ledger.apply(conn, message("620102001001", "village", older))
    v = await pool.fetchrow("SELECT * FROM ledger_villages")
    assert v["rural_population"] == 500 and json.loads(v["indicators"]) == {"safe_water": False,
                                                                            "collective_income": None}
    async with pool.acquire() as conn:
        await ledger.reset(conn)
    assert await pool.fetchval("SELECT (SELECT count(*) FROM ledger_households) + (SELECT count(*) FROM"
                               " ledger_members) + (SELECT count(*) FROM ledger_villages)") == 0


async def test_monitoring_counts_active_members_and_old_registrations(pool):
    await _migrated(pool, "monitoring")
    counts = VillageHouseholds()
    old = {"event_type": "HouseholdRegistered", "version": 1,
           "data": {"household_id": HH, "village_code": "620102001002", "member_count": 4}}
    async with pool.acquire() as conn:
        for event in SEQUENCE:
            await counts.apply(conn, message(HH, "household", event))
        await counts.apply(conn, message("other", "household", old))
        with pytest.raises(UnknownHousehold):
            await counts.apply(conn, message("never-registered", "household", SEQUENCE[1]))
    rows = {r["village_code"]: (r["households"], r["people"])
            for r in await pool.fetch("SELECT * FROM village_households")}
    assert rows == {"620102001001": (1, 3), "620102001002": (1, 4)}


# -- the registry service end to end -----------------------------------------------------

@pytest.fixture
def registry_key(monkeypatch):
    monkeypatch.setenv("TPA_REGISTRY_ID_HMAC_KEY", HMAC_KEY)


async def _seed_regions(pool, *villages: str) -> None:
    chain: dict[str, regions.Region] = {}
    for v in villages:
        code: str | None = v
        while code is not None:
            chain[code] = regions.Region.of(code, f"测试{regions.level_of(code)}{code[-3:]}", "import")
            code = regions.parent_of(code)
    async with pool.acquire() as conn:
        await regions.load_regions(conn, chain.values())


async def _store_events(pool, household_id: str) -> list[dict[str, Any]]:
    rows = await pool.fetch("SELECT event_type, version, data FROM events WHERE stream_id = $1 ORDER BY version",
                            household_id)
    return [dict(r) for r in rows]


async def _ledger_doc(pool, household_id: str) -> dict[str, Any] | None:
    raw = await pool.fetchval("SELECT doc FROM ledger_households WHERE household_id = $1", uuid.UUID(household_id))
    return json.loads(raw) if raw is not None else None


async def _caught_up(pool, household_id: str) -> dict[str, Any]:
    head = await pool.fetchval("SELECT max(version) FROM events WHERE stream_id = $1", household_id)

    async def done():
        doc = await _ledger_doc(pool, household_id)
        return doc if doc is not None and doc["version"] == head else None
    return await wait_until(done, timeout=30, message=f"the ledger of {household_id} at version {head}")


def _person(name: str, birth: date, relation: str, male: bool, **extra: Any) -> dict[str, Any]:
    return {"name": name, "id_number": id_number(birth, male), "relation": relation, **extra}


async def test_the_ledger_equals_a_replay_of_the_event_store_and_answers_queries(
        infra, databases, unique, registry_key):
    rng = random.Random()
    county = f"6201{rng.randint(11, 99):02d}"
    township = f"{county}{rng.randint(100, 999):03d}"
    v1, v2 = f"{township}001", f"{township}002"
    async with running_platform(infra, databases, unique("g"), services=("registry",)) as platform:
        url, runtime = platform["registry"]
        pool = runtime.pool
        await _seed_regions(pool, v1, v2)
        # An information officer of the county (household:read_personal included).
        async with httpx.AsyncClient(base_url=url, timeout=10, auth=ActAs(platform, village=v1)) as client:
            async def ok(method: str, path: str, status: int = 200, **kw) -> dict[str, Any]:
                r = await client.request(method, path, **kw)
                assert r.status_code == status, r.text
                return r.json()

            head = _person("张国强", date(1968, 5, 1), "head", True, phone="13912345678")
            spouse = _person("李秀英", date(1970, 8, 9), "10", False)
            child = _person("张小明", date(2011, 9, 1), "20", True, facts={"schooling_stage": "primary"})
            body = {"village_code": v1, "address": "二组15号", "attribute": "general",
                    "identification_standard": "national", "registered_on": "2024-03-01",
                    "members": [head, spouse, child]}
            hh1 = (await ok("POST", "/households", 201, json=body))["household_id"]
            events = await _store_events(pool, hh1)
            ids = {json.loads(e["data"])["relation"]: json.loads(e["data"])["member_id"]
                   for e in events if e["event_type"] == "MemberAdded"}
            h = f"/households/{hh1}"
            await ok("PUT", f"{h}/incomes/2023", json={"wage": "6000", "business": "1200", "transfer": "800",
                                                        "business_expenses": "500"})
            await ok("PUT", f"{h}/conditions", json={"assessed_on": "2024-03-05",
                                                     "conditions": {"food": True, "safe_housing": False}})
            await ok("PUT", f"{h}/causes", json={"primary": "illness", "others": ["lack_of_funds"]})
            for cadre, unit, on in (("cadre-1", "县农业局", "2024-03-10"), ("cadre-2", "县教育局", "2024-04-01")):
                await ok("POST", f"{h}/cadres", json={"cadre_id": cadre, "unit": unit, "assigned_on": on})
            await ok("POST", f"{h}/cadres/cadre-1/release", json={"released_on": "2024-06-30", "reason": "调岗"})
            await ok("PUT", f"{h}/plans/2024", json={"measures": [{"kind": "health", "description": "大病救助"}]})
            await ok("PUT", f"{h}/coordinates", json={"latitude": 36.06, "longitude": 103.83})
            await ok("PATCH", f"{h}/members/{ids['20']}", json={"schooling_stage": "junior"})
            baby = _person("张小花", date(2024, 5, 2), "30", False)
            await ok("POST", f"{h}/members", json={"member": baby, "reason": "birth", "joined_on": "2024-05-02"})
            await ok("POST", f"{h}/head", json={"member_id": ids["10"], "changed_on": "2024-07-01"})
            await ok("POST", f"{h}/members/{ids['head']}/removal", json={"reason": "death", "removed_on": "2024-06-20"})
            await ok("POST", f"{h}/status-decisions", json={
                "decision_event_id": str(uuid.uuid4()), "case_id": "case-1", "status_effect": "identified",
                "effective_on": "2024-08-01"})
            await ok("POST", f"{h}/members/{ids['head']}/erasure")

            # The household projection equals a replay of the event store.
            doc = await _caught_up(pool, hh1)
            events = await _store_events(pool, hh1)
            assert len(events) >= 16
            assert doc == fold(events)
            assert doc["status"] == "identified" and doc["member_count"] == 3
            assert doc["head_member_id"] == ids["10"]

            # The API: masked by default, personal data only for a caller allowed household:read_personal.
            masked = await client.get(h)
            assert masked.status_code == 200 and masked.headers["etag"] == f'"{doc["version"]}"'
            assert masked.headers["x-tpa-read-model"] == "ledger"
            expected = json.loads(json.dumps(doc))
            for m in expected["members"]:
                del m["id_hmac"]
            assert masked.json() == expected  # the ledger document, without the keyed hashes
            text = masked.text
            for person in (spouse, child, baby):
                assert person["id_number"] not in text and person["name"] not in text
            assert "id_hmac" not in text and "personal" not in masked.json()["members"][0]
            view = masked.json()
            assert view["status_history"][-1]["from"] == "applicant"
            assert {m["member_id"]: m["active"] for m in view["members"]}[ids["head"]] is False
            operator = principal("operator", county)  # household:read only
            for headers in ({}, {"x-tpa-personal-data": "allowed"}):  # the gateway's old header grants nothing
                forbidden = await client.get(h, params={"personal": "true"},
                                             headers={**internal_headers(operator), **headers})
                assert forbidden.status_code == 403 and forbidden.json()["code"] == "personal_data_not_allowed"
                assert spouse["name"] not in forbidden.text
            assert (await client.get(h, headers=internal_headers(operator))).status_code == 200  # masked: fine
            personal = await client.get(h, params={"personal": "true"})
            assert personal.status_code == 200 and personal.headers["cache-control"] == "no-store"
            by_id = {m["member_id"]: m["personal"] for m in personal.json()["members"]}
            assert by_id[ids["10"]] == {"name": "李秀英", "id_number": spouse["id_number"], "phone": None,
                                        "erased": False}
            assert by_id[ids["head"]] == {"name": None, "id_number": None, "phone": None, "erased": True}
            missing = await client.get(f"/households/{uuid.uuid4()}")
            assert missing.status_code == 404 and missing.json()["code"] == "household_not_found"

            # Redelivery changes nothing.
            records = [r for r in await read_topic(infra.bootstrap_servers, HOUSEHOLD_TOPIC)
                       if r.key == hh1.encode()]
            assert len(records) >= len(events)
            metric = ("tpa_projection_duplicate_events_total", {"projection": "household-ledger"})
            before = runtime.metrics.registry.get_sample_value(*metric) or 0
            async with producer(infra.bootstrap_servers, infra.idempotence) as p:
                for r in records[::2] + records[-1:]:
                    await p.send_and_wait(HOUSEHOLD_TOPIC, value=r.value, key=r.key, headers=list(r.headers or ()))
            resent = len(records[::2]) + 1
            await wait_until(lambda: _at_least(runtime, metric, before + resent), timeout=30,
                             message="the redelivered events seen by the ledger")
            assert await _ledger_doc(pool, hh1) == doc == fold(await _store_events(pool, hh1))

            # Two more households for searches and statistics.
            hh2 = (await ok("POST", "/households", 201, json={
                "village_code": v1, "attribute": "minimum_living", "identification_standard": "provincial",
                "members": [_person("王五", date(1980, 1, 2), "head", True),
                            _person("赵六", date(1982, 3, 4), "10", False)]}))["household_id"]
            await ok("PUT", f"/households/{hh2}/causes", json={"primary": "lack_of_skills"})
            hh3 = (await ok("POST", "/households", 201, json={
                "village_code": v2, "members": [_person("孙七", date(1950, 6, 7), "head", True)]}))["household_id"]
            await ok("POST", f"/households/{hh3}/status-decisions", json={
                "decision_event_id": str(uuid.uuid4()), "case_id": "case-3", "status_effect": "identified",
                "effective_on": "2024-08-01"})
            for household in (hh2, hh3):
                assert await _caught_up(pool, household) == fold(await _store_events(pool, household))

            async def search(**params) -> list[str]:
                page = await ok("GET", "/households", params=params)
                return [i["household_id"] for i in page["items"]]

            everything = sorted([hh1, hh2, hh3])
            assert await search(village_code=v1) == sorted([hh1, hh2])
            assert await search(region=township) == everything
            assert await search(region=county) == everything
            assert await search(region=v2) == [hh3]
            assert await search(region=township, status="identified") == sorted([hh1, hh3])
            assert await search(region=township, attribute="minimum_living") == [hh2]
            assert await search(region=township, cause="lack_of_funds") == [hh1]
            assert await search(region=township, cause="lack_of_skills") == [hh2]
            assert await search(region=township, primary_cause="lack_of_funds") == []
            assert await search(id_number=spouse["id_number"]) == [hh1]
            assert await search(id_number=head["id_number"]) == []  # removed and erased
            bad = head["id_number"][:17] + ("0" if head["id_number"][17] != "0" else "1")
            r = await client.get("/households", params={"id_number": bad})
            assert r.status_code == 422 and r.json()["code"] == "id_check_digit"
            assert head["id_number"][:17] not in r.text
            summary = (await ok("GET", "/households", params={"village_code": v1}))["items"][0]
            assert set(summary) == {"household_id", "village_code", "status", "attribute", "identification_standard",
                                    "primary_cause", "causes", "monitoring_object_type", "member_count",
                                    "registered_on", "version"}
            pages, after = [], None
            while True:
                params = {"region": township, "limit": 1, **({"after": after} if after else {})}
                page = await ok("GET", "/households", params=params)
                pages += [i["household_id"] for i in page["items"]]
                after = page["next"]
                if after is None:
                    break
            assert pages == everything
            assert await search(region=township, limit=2, offset=1) == everything[1:]
            r = await client.get("/households", params={"after": hh1, "offset": 1})
            assert r.status_code == 422
            r = await client.get("/households", params={"limit": 501})
            assert r.status_code == 422

            # Statistics: poverty incidence needs every village's rural population.
            stats = await ok("GET", f"/regions/{township}/statistics")
            assert (stats["households"], stats["people"], stats["poor_people"]) == (3, 6, 4)
            assert stats["poverty_incidence"] is None and stats["villages_without_profile"] == 2
            assert "no village profile" in stats["poverty_incidence_unknown_reason"]
            await ok("PUT", f"/villages/{v1}/profile", json={"effective_on": "2024-01-01", "rural_population": 200,
                                                            "registered_population": 5, "poor_village": True,
                                                            "safe_water": True})

            async def profiled():
                s = await ok("GET", f"/villages/{v1}/statistics")
                return s if s["profile"] else None
            village = await wait_until(profiled, timeout=30, message="the village profile in the ledger")
            assert (village["households"], village["people"], village["poor_people"]) == (2, 5, 3)
            assert village["rural_population"] == 200 and village["poverty_incidence"] == 0.015
            assert village["profile"]["indicators"]["safe_water"] is True
            assert {s["status"]: (s["households"], s["people"]) for s in village["by_status"]} == {
                "applicant": (1, 2), "identified": (1, 3)}
            assert village["causes"] == [{"code": "illness", "households": 1, "share": 0.5},
                                         {"code": "lack_of_skills", "households": 1, "share": 0.5}]
            assert village["attributes"] == [{"code": "general", "households": 1, "share": 0.5},
                                             {"code": "minimum_living", "households": 1, "share": 0.5}]
            stats = await ok("GET", f"/regions/{township}/statistics")
            assert stats["poverty_incidence"] is None and stats["villages_without_profile"] == 1
            assert "1 village(s)" in stats["poverty_incidence_unknown_reason"]
            await ok("PUT", f"/villages/{v2}/profile", json={"effective_on": "2024-01-01", "rural_population": 100,
                                                            "registered_population": 1, "poor_village": False})

            async def complete():
                s = await ok("GET", f"/regions/{county}/statistics")
                return s if s["villages_with_profile"] == 2 else None
            stats = await wait_until(complete, timeout=30, message="both village profiles in the ledger")
            assert stats["level"] == "county" and stats["rural_population"] == 300
            assert stats["poverty_incidence"] == round(4 / 300, 6)
            assert (await ok("GET", f"/regions/{township}/statistics"))["level"] == "township"
            r = await client.get("/regions/12345/statistics")
            assert r.status_code == 422
            empty = await ok("GET", f"/villages/{township}999/statistics")
            assert empty["households"] == 0 and empty["poverty_incidence"] is None

            # A household the ledger has not caught up with yet is folded from the event store.
            ledger_doc = await _ledger_doc(pool, hh3)
            await pool.execute("DELETE FROM ledger_households WHERE household_id = $1", uuid.UUID(hh3))
            r = await client.get(f"/households/{hh3}")
            assert r.status_code == 200 and r.headers["x-tpa-read-model"] == "event-store"
            assert r.json()["version"] == ledger_doc["version"] and r.json()["status"] == "identified"


async def _at_least(runtime, metric, value) -> bool:
    return (runtime.metrics.registry.get_sample_value(*metric) or 0) >= value


async def test_bad_query_input_gets_problems_not_server_errors(infra, databases, unique, registry_key):
    async with running_platform(infra, databases, unique("g"), services=("registry",)) as platform:
        url, _ = platform["registry"]
        province = principal("operator", "620000000000")  # reads households, province-wide
        async with httpx.AsyncClient(base_url=url, timeout=10, auth=ActAs(platform, who=province)) as client:
            for path, params in [
                ("/households", {"region": "00"}), ("/households", {"region": "0000"}),
                ("/households", {"region": "000000000"}), ("/households", {"region": "12345"}),
                ("/households", {"id_number": "abc"}), ("/households", {"id_number": "1" * 18}),
                ("/households", {"limit": 0}), ("/households", {"after": "nope"}),
                ("/households", {"status": "rich"}), ("/households", {"village_code": "62010200100"}),
                ("/regions/000000/statistics", {}), ("/regions/6201020010/statistics", {}),
                ("/villages/abc/statistics", {}), ("/households/not-a-uuid", {}),
            ]:
                r = await client.get(path, params=params)
                assert r.status_code == 422, (path, params, r.text)
                assert r.headers["content-type"].startswith("application/problem+json"), (path, params)
            for path, params in [("/households", {"region": "62", "limit": 500}),
                                 ("/households", {"offset": 100000}), ("/regions/62/statistics", {}),
                                 ("/regions/6201/statistics", {})]:
                r = await client.get(path, params=params)
                assert r.status_code == 200, (path, params, r.text)
            # A well-formed code of no region is no server error either: no jurisdiction covers it.
            r = await client.get("/villages/000000000000/statistics")
            assert r.status_code == 403 and r.json()["code"] == "outside_jurisdiction", r.text
            assert r.headers["content-type"].startswith("application/problem+json")
