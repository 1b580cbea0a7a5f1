"""The authorisation matrix of the whole external API, through the real gateway and services.

* Every route × every role (and every client scope, and an anonymous caller): the gateway lets
  exactly the principals whose role or scopes allow the route's action through, refuses the
  others with 403 ``forbidden`` (recorded in the access log), and asks anonymous callers of
  non-public routes to authenticate (401).
* Every route naming a region in its path × a caller with the right role in another county:
  403 ``outside_jurisdiction``.
* The records of one county × a user of another county: a household by id, by search (also by
  ID number), by bulk comparison and by its card, its change requests and commands.
"""

from __future__ import annotations

import re
import uuid
from datetime import date

import httpx
import pytest_asyncio

from contracts.gateway import ROLES, SCOPES
from eventkit.principal import DEPARTMENT_SCOPES, ROLE_LEVELS, allowed
from eventkit.testing import wait_until
from services.gateway.api import ROUTE_ACTIONS

from .conftest import village_code
from .harness import ActAs, bearer, client_principal, ensure_account, principal, running_platform, staff
from .registry_helpers import household, member, seed_village

API = "/api/v1"
CUT = {"village": 12, "township": 9, "county": 6}
EXTRA_ROUTES = {("GET", "/api/v1/alerts/stream"): ("alerts:read",)}


def principals(village: str) -> list:
    out = []
    for role in ROLES:
        level = next(lv for lv in ("village", "township", "county") if lv in ROLE_LEVELS[role])
        out.append(principal(role, village[:CUT[level]].ljust(12, "0"), f"m-{role}-{village[:CUT[level]]}"))
    for scope in SCOPES:
        out.append(client_principal(f"m-{scope.replace(':', '-')}-{village[:6]}", (scope,), village[:6]))
    return out


def concrete(path: str, village: str) -> str:
    values = {"village_code": village, "region": village[:6], "code": village[:6], "year": "2024",
              "cadre_id": "cadre-x", "quarter": "2025-Q1", "objection_id": "obj-1", "token": "A" * 22}
    return re.sub(r"{(\w+)}", lambda m: values.get(m.group(1), str(uuid.uuid4())), path)


async def call(http: httpx.AsyncClient, method: str, path: str, headers: dict[str, str]) -> httpx.Response:
    if method == "GET" and path.endswith("/alerts/stream"):
        async with http.stream("GET", path, headers=headers) as r:
            if r.status_code != 200:
                await r.aread()
            return r
    kwargs = {"json": {}} if method in ("POST", "PUT", "PATCH") else {}
    return await http.request(method, path, headers=headers, **kwargs)


@pytest_asyncio.fixture(scope="module")
async def world(infra, module_databases):
    village, other = village_code(), village_code()
    async with running_platform(infra, module_databases, f"m{uuid.uuid4().hex[:8]}",
                                services=("registry", "workflow", "funds", "monitoring", "gateway")) as p:
        async with p["registry"][1].pool.acquire() as conn:
            await seed_village(conn, village)
            await seed_village(conn, other)
        async with httpx.AsyncClient(base_url=p["gateway"][0], timeout=30) as http:
            yield {"p": p, "http": http, "village": village, "other": other}


async def test_every_route_lets_through_exactly_the_roles_and_scopes_allowed(world):
    w = world
    gateway = w["p"]["gateway"][1]
    who_all = principals(w["village"])
    headers = {}
    for who in who_all:
        await ensure_account(gateway, who)
        headers[who.subject] = bearer(who)
    routes = {**ROUTE_ACTIONS, **EXTRA_ROUTES}
    assert len(routes) > 80
    wrong: list[str] = []
    checked = 0
    for (method, template), actions in sorted(routes.items()):
        path = concrete(template, w["village"])
        anonymous = await call(w["http"], method, path, {})
        if actions is None:
            if anonymous.status_code in (401, 403):
                wrong.append(f"{method} {template}: public, but anonymous got {anonymous.status_code}")
        elif anonymous.status_code != 401 or not anonymous.headers.get("www-authenticate", "").startswith("Bearer"):
            wrong.append(f"{method} {template}: anonymous got {anonymous.status_code}, not a 401 challenge")
        for who in who_all:
            r = await call(w["http"], method, path, headers[who.subject])
            checked += 1
            may = actions is None or any(allowed(who, a) for a in actions)
            code = r.json().get("code") if r.headers.get("content-type", "").startswith("application/") \
                and r.status_code >= 400 and "json" in r.headers.get("content-type", "") else None
            if may and (r.status_code == 401 or (r.status_code == 403 and code == "forbidden")):
                wrong.append(f"{method} {template}: {who.subject} may, got {r.status_code} {code}")
            if not may and not (r.status_code == 403 and code == "forbidden"):
                wrong.append(f"{method} {template}: {who.subject} may not, got {r.status_code} {code}")
    assert not wrong, "\n".join(wrong[:50])
    assert checked > 80 * len(who_all) * 0.9
    auditor = next(p for p in who_all if p.roles == ("auditor",))
    log = (await w["http"].get(f"{API}/access-log", params={"kind": "denied", "limit": 1000},
                               headers=headers[auditor.subject])).json()
    assert log["total"] > 500  # every refusal was recorded


async def test_a_region_in_the_path_outside_the_callers_county_is_refused(world):
    w = world
    gateway = w["p"]["gateway"][1]
    wrong = []
    regional = [(k, v) for k, v in ROUTE_ACTIONS.items()
                if v is not None and re.search(r"{(village_code|region|code)}", k[1])]
    assert len(regional) >= 5
    for (method, template), actions in regional:
        outsider = staff(actions[0], w["other"])  # the right post, in another county
        await ensure_account(gateway, outsider)
        r = await call(w["http"], method, concrete(template, w["village"]), bearer(outsider))
        if r.status_code != 403 or r.json()["code"] != "outside_jurisdiction":
            wrong.append(f"{method} {template}: {outsider.subject} got {r.status_code}")
        insider = staff(actions[0], w["village"])
        await ensure_account(gateway, insider)
        r = await call(w["http"], method, concrete(template, w["village"]), bearer(insider))
        if r.status_code in (401, 403):
            wrong.append(f"{method} {template}: {insider.subject} got {r.status_code}")
    assert not wrong, "\n".join(wrong)


async def test_another_countys_user_cannot_reach_a_household_by_any_way(world):
    w = world
    http, p = w["http"], w["p"]
    head = member("赵大山", date(1966, 6, 6), "head")
    r = await http.post(f"{API}/households", json=household(w["village"], members=[head]),
                        auth=ActAs(p, village=w["village"]))
    assert r.status_code == 201, r.text
    hid = r.json()["household_id"]
    mine = ActAs(p, village=w["village"])
    theirs = ActAs(p, village=w["other"])

    async def projected():  # searches read the ledger, which follows the registry's topic
        own = await http.post(f"{API}/households/search", json={"id_number": head["id_number"]}, auth=mine)
        return [h["household_id"] for h in own.json()["items"]] == [hid]
    await wait_until(projected, timeout=30, message="the household in the ledger")
    assert (await http.get(f"{API}/households/{hid}", auth=mine)).status_code == 200
    # by id (also with personal data), change requests, card, commands
    for path in (f"/households/{hid}", f"/households/{hid}/change-requests", f"/households/{hid}/card"):
        r = await http.get(API + path, auth=theirs)
        assert r.status_code == 403 and r.json()["code"] == "outside_jurisdiction", (path, r.text)
    officer = principal("information_officer", w["other"][:6])
    r = await http.get(f"{API}/households/{hid}", params={"personal": "true", "purpose": "x"},
                       auth=ActAs(p, who=officer))
    assert r.status_code == 403
    r = await http.put(f"{API}/households/{hid}/causes", json={"primary": "illness"}, auth=theirs)
    assert r.status_code == 403
    # by search: the region filter, no filter, and the ID number
    for params in ({"region": w["village"][:6]}, {}, {"village_code": w["village"]}):
        found = (await http.get(f"{API}/households", params=params, auth=theirs)).json()["items"]
        assert hid not in [h["household_id"] for h in found], params
    by_id = await http.post(f"{API}/households/search", json={"id_number": head["id_number"]}, auth=theirs)
    assert by_id.status_code == 200 and by_id.json()["items"] == []
    # by comparison: a department of the other county learns nothing
    for county, expected in ((w["other"][:6], False), (w["village"][:6], True)):
        dept = client_principal(f"edu-{county}", ("comparison:education",), county)
        await ensure_account(p["gateway"][1], dept)
        r = await http.post(f"{API}/comparisons", json={"purpose": "education", "id_numbers": [head["id_number"]]},
                            headers=bearer(dept))
        assert r.status_code == 200 and r.json()["results"][0]["in_register"] is expected
    # by card: the signed-in link is refused; the public view shows masked data only
    link = (await http.get(f"{API}/households/{hid}/card", auth=mine)).json()["url"]
    page = await http.get(API + link.split(API, 1)[1])
    assert page.status_code == 200 and head["name"] not in page.text and head["id_number"] not in page.text


def test_the_matrix_covers_every_department_scope():
    assert set(DEPARTMENT_SCOPES) <= set(SCOPES)
    assert all(isinstance(k, tuple) for k in ROUTE_ACTIONS)
