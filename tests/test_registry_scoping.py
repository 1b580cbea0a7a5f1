"""The registry answers each caller within its jurisdiction only, directly and through the gateway.

A county's user reads, searches, counts and changes nothing of another county's households;
personal data needs the action household:read_personal; an import refuses rows of villages
outside the importer's jurisdiction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any

import httpx
import pytest

from eventkit.principal import Principal
from eventkit.testing import wait_until
from services.registry import importer

from .conftest import village_code
from .harness import ActAs, internal_headers, principal, running_platform
from .registry_helpers import household, member, other_county, seed_village


def county_of(village: str) -> str:
    return village[:6].ljust(12, "0")


@dataclass
class Scene:
    mode: str  # direct or gateway
    platform: dict[str, Any]
    url: str  # the registry's, or the gateway's /api/v1
    runtime: Any  # the registry's
    village: str
    elsewhere: str  # a village of another county
    household: dict[str, Any]  # the registered body (with the members' ID numbers)
    hid: str
    change_request_id: str
    other_hid: str  # a household of the other county

    def client(self, who: Principal | None = None, timeout: float = 20) -> httpx.AsyncClient:
        """As ``who``, or as the usual post of the household's village for each route."""
        auth = ActAs(self.platform, who=who) if who is not None else ActAs(self.platform, village=self.village)
        return httpx.AsyncClient(base_url=self.url, timeout=timeout, auth=auth)

    async def events(self) -> int:
        return await self.runtime.pool.fetchval("SELECT count(*) FROM events")


async def _in_ledger(client: httpx.AsyncClient, hid: str) -> bool:
    r = await client.get(f"/households/{hid}")
    return r.status_code == 200 and r.headers.get("x-tpa-read-model") == "ledger"


@pytest.fixture(params=["direct", "gateway"])
async def scene(request, infra, databases, unique):
    async with running_platform(infra, databases, unique("g"), services=("registry", "gateway")) as platform:
        registry_url, runtime = platform["registry"]
        village = village_code()
        elsewhere = other_county(village)
        async with runtime.pool.acquire() as conn:
            await seed_village(conn, village)
            await seed_village(conn, elsewhere)
        body = household(village)
        async with httpx.AsyncClient(base_url=registry_url, timeout=20,
                                     auth=ActAs(platform, village=village)) as setup:
            r = await setup.post("/households", json=body)
            assert r.status_code == 201, r.text
            hid = r.json()["household_id"]
            cadre = internal_headers(principal("cadre", village, user_id="cadre-9"))
            r = await setup.post(f"/households/{hid}/change-requests", headers=cadre, json={
                "kind": "causes", "reason": "主因应为缺技术", "changes": {"primary": "lack_of_skills"}})
            assert r.status_code == 201, r.text
            change_request_id = r.json()["change_request_id"]
            r = await setup.post("/households", json=household(elsewhere),
                                 auth=ActAs(platform, village=elsewhere))
            assert r.status_code == 201, r.text
            other_hid = r.json()["household_id"]
            for h, v in ((hid, village), (other_hid, elsewhere)):
                async with httpx.AsyncClient(base_url=registry_url, timeout=20,
                                             auth=ActAs(platform, village=v)) as reader:
                    await wait_until(lambda h=h, reader=reader: _in_ledger(reader, h), timeout=30,
                                     message=f"{h} in the ledger")
        url = registry_url if request.param == "direct" else platform["gateway"][0] + "/api/v1"
        yield Scene(request.param, platform, url, runtime, village, elsewhere, body, hid, change_request_id,
                    other_hid)


async def test_a_user_of_another_county_reads_searches_counts_and_changes_nothing_there(scene):
    outsider = principal("information_officer", county_of(scene.elsewhere))  # may read, write, read personal
    hid, village = scene.hid, scene.village
    id_number = scene.household["members"][1]["id_number"]
    names = [m["name"] for m in scene.household["members"]]

    async with scene.client() as insider:  # the village's county officer sees it all
        assert (await insider.get(f"/households/{hid}")).status_code == 200
        assert (await insider.get(f"/households/{hid}/change-requests")).json()["items"]
        found = (await insider.post("/households/search", json={"id_number": id_number})).json()
        assert [i["household_id"] for i in found["items"]] == [hid]
        assert (await insider.get(f"/villages/{village}/statistics")).json()["households"] == 1

    async with scene.client(outsider) as client:
        # Reading the household and its change requests: 403.
        for path, params in ((f"/households/{hid}", {}),
                             (f"/households/{hid}", {"personal": "true", "purpose": "入户核实"}),
                             (f"/households/{hid}/change-requests", {}),
                             (f"/households/{hid}/change-requests/{scene.change_request_id}", {})):
            r = await client.get(path, params=params)
            assert r.status_code == 403 and r.json()["code"] == "outside_jurisdiction", (path, params, r.text)
            assert r.headers["content-type"].startswith("application/problem+json")
            assert not any(n in r.text for n in names) and scene.change_request_id not in r.text
        # Its own county's household, for comparison.
        assert (await client.get(f"/households/{scene.other_hid}")).status_code == 200

        # Searching finds nothing of the other county, whatever the filter; its own county it finds.
        async def search(**params: Any) -> list[str]:
            r = await client.get("/households", params=params)
            assert r.status_code == 200, (params, r.text)
            return [i["household_id"] for i in r.json()["items"]]

        assert await search() == [scene.other_hid]
        assert await search(village_code=village) == []
        assert await search(region=village[:6]) == []
        assert await search(region=village[:9]) == []
        assert await search(region=village[:2]) == [scene.other_hid]  # the province: only its own county
        for body in ({"id_number": id_number}, {"village_code": village}, {"region": village[:6]},
                     {"id_number": id_number, "region": village[:6]}):
            r = await client.post("/households/search", json=body)
            assert r.status_code == 200 and r.json() == {"items": [], "next": None}, (body, r.text)
        if scene.mode == "direct":  # (the gateway refuses an ID number in a URL)
            assert await search(id_number=id_number) == []

        # Statistics of the other county's village and regions: 403; of its own: 200.
        for path in (f"/villages/{village}/statistics", f"/regions/{village[:6]}/statistics",
                     f"/regions/{village[:9]}000/statistics", f"/regions/{village}/statistics"):
            r = await client.get(path)
            assert r.status_code == 403 and r.json()["code"] == "outside_jurisdiction", (path, r.text)
        r = await client.get(f"/villages/{scene.elsewhere}/statistics")
        assert r.status_code == 200 and r.json()["households"] == 1, r.text

        # Commands on the household (and registering in its village): 403, nothing written.
        before = await scene.events()
        rows = await scene.runtime.pool.fetchval("SELECT count(*) FROM change_requests")
        for method, path, body in (
                ("PUT", f"/households/{hid}/causes", {"primary": "illness"}),
                ("PUT", f"/households/{hid}/coordinates", {"latitude": 36.06, "longitude": 103.83}),
                ("POST", f"/households/{hid}/members", {
                    "member": member("张小花", date(2024, 5, 6), "30", male=False), "reason": "birth",
                    "joined_on": "2024-05-06"}),
                ("POST", f"/households/{hid}/change-requests", {"kind": "causes", "reason": "x",
                                                               "changes": {"primary": "illness"}}),
                ("POST", "/households", household(village)),
                ("PUT", f"/villages/{village}/profile", {"effective_on": "2024-01-01", "rural_population": 10,
                                                         "registered_population": 3, "poor_village": True})):
            r = await client.request(method, path, json=body)
            assert r.status_code == 403 and r.json()["code"] == "outside_jurisdiction", (method, path, r.text)
            assert r.headers["content-type"].startswith("application/problem+json")
        assert await scene.events() == before
        assert await scene.runtime.pool.fetchval("SELECT count(*) FROM change_requests") == rows

    if scene.mode == "gateway":  # every refusal is in the access log
        gateway = scene.platform["gateway"][1]
        denied = await gateway.pool.fetch("SELECT route, reason FROM access_log WHERE kind = 'denied'"
                                          " AND principal_id = $1", outsider.id)
        assert len(denied) == 4 + 4 + 6
        assert {d["reason"] for d in denied} == {"outside_jurisdiction"}
        assert await gateway.pool.fetchval("SELECT count(*) FROM access_log WHERE kind = 'personal_data'") == 0


async def test_personal_data_needs_household_read_personal(scene):
    hid = scene.hid
    names = {m["name"] for m in scene.household["members"]}
    params = {"personal": "true", "purpose": "入户核实"}
    # Roles that read households but not personal data, at the household's county.
    for who in (principal("operator", county_of(scene.village)), principal("auditor", county_of(scene.village))):
        async with scene.client(who) as client:
            masked = await client.get(f"/households/{hid}")
            assert masked.status_code == 200, masked.text
            r = await client.get(f"/households/{hid}", params=params)
            assert r.status_code == 403 and r.json()["code"] == "personal_data_not_allowed", (who.roles, r.text)
            assert not any(n in r.text for n in names)
            r = await client.get(f"/households/{hid}", params=params, headers={"x-tpa-personal-data": "allowed"})
            assert r.status_code == 403, r.text  # the old header grants nothing
    # A township reviewer of the household's township may.
    reviewer = principal("township_reviewer", scene.village[:9].ljust(12, "0"))
    async with scene.client(reviewer) as client:
        r = await client.get(f"/households/{hid}", params=params)
        assert r.status_code == 200, r.text
        assert names <= {(m.get("personal") or {}).get("name") for m in r.json()["members"]}
        r = await client.get(f"/households/{hid}", params={"personal": "true"})
        if scene.mode == "gateway":
            assert r.status_code == 422, r.text  # the gateway wants the purpose
        else:
            assert r.status_code == 200, r.text  # (the service leaves the purpose to the gateway's access log)
    if scene.mode == "direct":
        async with scene.client() as client:  # an anonymous call through the gateway: not even masked
            r = await client.get(f"/households/{hid}", headers=internal_headers(None))
            assert r.status_code == 401 and r.json()["code"] == "unauthenticated", r.text
            r = await client.get(f"/households/{hid}", auth=None)
            assert r.status_code == 401 and r.json()["code"] == "gateway_identity_required", r.text


async def test_an_import_reports_rows_of_villages_outside_the_importers_jurisdiction(scene):
    households = [{"household_no": no, "village_code": v, "address": f"二组{no}号", "attribute": "general",
                   "identification_standard": "national", "registered_on": "2015-03-01"}
                  for no, v in (("001", scene.village), ("002", scene.elsewhere))]
    members = [{"household_no": "001", "village_code": scene.village, **member("王五", date(1980, 1, 2), "head")},
               {"household_no": "002", "village_code": scene.elsewhere, **member("赵六", date(1981, 3, 4), "head")}]
    data = importer.write_file("xlsx", households, members)
    files = {"file": ("村上报.xlsx", data, importer.CONTENT_TYPES["xlsx"])}
    before = await scene.events()
    async with scene.client(timeout=60) as client:
        r = await client.post("/imports/households", files=files)
        assert r.status_code == 422 and r.json()["code"] == "import_rejected", r.text
        errors = [(e["sheet"], e["row"], e["column"], e["code"]) for e in r.json()["errors"]]
        assert errors == [("households", 3, "village_code", "outside_jurisdiction")]
        assert await scene.events() == before
        r = await client.post("/imports/households", files=files, params={"skip_invalid": "true"})
        assert r.status_code == 200, r.text
        assert r.json()["counts"]["households_imported"] == 1 and r.json()["counts"]["households_skipped"] == 1
    imported = await scene.runtime.pool.fetch(
        "SELECT data->>'village_code' AS village FROM events WHERE event_type = 'HouseholdRegistered'"
        " AND stream_id = ANY($1::text[])",
        [importer.household_id_for(scene.village, "001"), importer.household_id_for(scene.elsewhere, "002")])
    assert [i["village"] for i in imported] == [scene.village]


async def test_region_statistics_take_every_documented_code_form_within_the_jurisdiction(scene):
    """`/regions/{code}/statistics` takes 2 (province), 4 (city), 6 (county), 9 (township) and 12 digits;
    a caller whose jurisdiction covers the region gets its statistics whatever the form."""
    v = scene.village  # (the other county's village is in the same city, so in the same province)
    county, city, province = (principal("information_officer", county_of(v)),
                              principal("operator", v[:4].ljust(12, "0")), principal("operator", v[:2].ljust(12, "0")))
    cases = [(county, v[:9], v[:9], 1),          # a township, 9 digits
             (county, v[:9] + "000", v[:9], 1),  # the same, 12 digits
             (county, v[:6], v[:6], 1),          # the county, 6 digits
             (city, v[:4], v[:4], 2),            # the city, 4 digits (both of the scene's counties)
             (city, v[:6], v[:6], 1),
             (province, v[:2], v[:2], 2),        # the province, 2 digits
             (province, v[:6] + "000000", v[:6], 1)]
    answers, expected = {}, {}
    for who, code, prefix, at_least in cases:
        async with scene.client(who) as client:
            r = await client.get(f"/regions/{code}/statistics")
            answers[(who.jurisdiction, code)] = (r.status_code, r.json().get("households", r.json().get("code")))
        # The ledger also holds households of earlier tests whose random codes share a province or a
        # city (the broker's topics outlive a test's databases): the region's own count is the answer.
        in_region = await scene.runtime.pool.fetchval(
            "SELECT count(*) FROM ledger_households WHERE village_code LIKE $1", prefix + "%")
        assert in_region >= at_least
        expected[(who.jurisdiction, code)] = (200, in_region)
    assert answers == expected
    # And a county's officer still gets no statistics of another county's township, nor of its city or
    # province, in any form.
    async with scene.client(principal("information_officer", county_of(scene.elsewhere))) as client:
        for code in (v[:9], v[:9] + "000", v[:6], v[:4], v[:4] + "00", v[:2], v[:2] + "0000"):
            r = await client.get(f"/regions/{code}/statistics")
            assert r.status_code == 403 and r.json()["code"] == "outside_jurisdiction", (code, r.text)


async def test_another_countys_user_cannot_replay_a_command_by_its_idempotency_key(scene):
    """An Idempotency-Key replays a result to the caller who ran the command, not to a caller the
    household is outside the jurisdiction of."""
    body = {"primary": "illness", "others": ["lack_of_funds"]}
    key = {"Idempotency-Key": f"causes-{scene.hid}"}
    async with scene.client() as insider:
        first = await insider.put(f"/households/{scene.hid}/causes", json=body, headers=key)
        assert first.status_code == 200, first.text
    before = await scene.events()
    async with scene.client(principal("information_officer", county_of(scene.elsewhere))) as outsider:
        r = await outsider.put(f"/households/{scene.hid}/causes", json=body, headers=key)
        assert r.status_code == 403 and r.json()["code"] == "outside_jurisdiction", r.text
        assert "idempotent-replayed" not in r.headers
    assert await scene.events() == before


async def test_a_duplicate_person_refusal_names_the_other_household_only_within_the_jurisdiction(scene):
    s = scene
    head = s.household["members"][0]
    outsider = principal("information_officer", county_of(s.elsewhere))
    async with s.client(outsider) as theirs, s.client() as mine:
        before = await s.events()
        r = await theirs.post("/households", json=household(s.elsewhere, members=[
            member("某人", date(1960, 1, 1), "head") | {"id_number": head["id_number"]}]))
        assert r.status_code == 409 and r.json()["code"] == "duplicate_person", r.text
        assert s.hid not in r.text and "household_id" not in r.json()  # refused, without saying where
        own = await mine.post("/households", json=household(s.village, members=[
            member("某人", date(1960, 1, 1), "head") | {"id_number": head["id_number"]}]))
        assert own.status_code == 409 and own.json()["household_id"] == s.hid  # the county sees its own
        assert await s.events() == before
