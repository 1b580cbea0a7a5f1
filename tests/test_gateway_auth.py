"""Identity and access through the gateway, end to end: logins, lockout, refresh-token rotation
and reuse detection, client credentials with rotation and revocation, immediate effect of
deactivation and role changes, services refusing calls that do not come from the gateway, and
the access log (topic and query)."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from datetime import date, datetime, timedelta, timezone

import httpx
import pytest_asyncio
from aiokafka import AIOKafkaConsumer

from contracts.gateway import ACCESS_TOPIC
from eventkit import tokens
from eventkit.principal import region_code
from eventkit.regioncodes import level_of
from eventkit.testing import wait_until

from .conftest import village_code
from .harness import ActAs, internal_headers, principal, running_platform
from .registry_helpers import household, member, seed_village

API = "/api/v1"
ADMIN_PASSWORD = "Grassland-Wind-7319"


@pytest_asyncio.fixture(scope="module")
async def world(infra, module_databases):
    village = village_code()
    county = village[:6]
    async with running_platform(infra, module_databases, f"a{uuid.uuid4().hex[:8]}") as p:
        async with p["registry"][1].pool.acquire() as conn:
            await seed_village(conn, village)
        accounts = p["gateway"][1].state["accounts"]
        admin = await accounts.create_user(None, username=f"admin-{county}", roles=["administrator"],
                                           level="county", jurisdiction=county, password=ADMIN_PASSWORD)
        async with httpx.AsyncClient(base_url=p["gateway"][0] + API, timeout=30) as http:
            r = await http.post("/households", json=household(village, members=[
                member("王建国", date(1970, 1, 2), "head")]), auth=ActAs(p, village=village))
            assert r.status_code == 201, r.text
            yield {"p": p, "http": http, "village": village, "county": county, "admin": admin,
                   "hid": r.json()["household_id"]}


async def login(http, username, password):
    return await http.post("/auth/token", data={"grant_type": "password", "username": username,
                                                "password": password})


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def admin_token(w) -> dict[str, str]:
    r = await login(w["http"], f"admin-{w['county']}", ADMIN_PASSWORD)
    assert r.status_code == 200, r.text
    assert r.headers["cache-control"] == "no-store"
    return auth(r.json()["access_token"])


async def new_user(w, roles, jurisdiction, password="Temporary-Pass-4821"):
    name = f"u{uuid.uuid4().hex[:10]}"
    r = await w["http"].post("/users", json={"username": name, "roles": roles, "level": level(jurisdiction),
                                             "jurisdiction": jurisdiction, "password": password},
                             headers=await admin_token(w))
    assert r.status_code == 201, r.text
    return name, r.json()["user_id"]


def level(code: str) -> str:
    return level_of(region_code(code))


async def test_a_new_users_temporary_password_must_be_changed_first(world):
    w = world
    name, _ = await new_user(w, ["cadre"], w["village"])
    r = await login(w["http"], name, "Temporary-Pass-4821")
    assert r.status_code == 200 and r.json()["password_change_required"] is True
    token = auth(r.json()["access_token"])
    blocked = await w["http"].get(f"/households/{w['hid']}", headers=token)
    assert blocked.status_code == 403 and blocked.json()["code"] == "password_change_required"
    weak = await w["http"].put("/me/password", json={"current_password": "Temporary-Pass-4821",
                                                     "new_password": "password123"}, headers=token)
    assert weak.status_code == 422 and weak.json()["code"].startswith("password_")
    ok = await w["http"].put("/me/password", json={"current_password": "Temporary-Pass-4821",
                                                   "new_password": "Loess-Plateau-Apple-62"}, headers=token)
    assert ok.status_code == 200, ok.text
    assert (await w["http"].get(f"/households/{w['hid']}", headers=token)).status_code == 200
    me = (await w["http"].get("/me", headers=token)).json()
    assert me["roles"] == ["cadre"] and "household:write" in me["actions"] and "funds:pay" not in me["actions"]


async def test_unknown_users_and_wrong_passwords_look_alike_and_five_failures_lock(world):
    w = world
    unknown = await login(w["http"], "nobody-here", "Whatever-Pass-1234")
    name, user_id = await new_user(w, ["information_officer"], w["county"])
    wrong = await login(w["http"], name, "Wrong-Password-000")
    assert unknown.status_code == wrong.status_code == 400
    assert unknown.json()["code"] == wrong.json()["code"] == "invalid_grant"
    assert unknown.json()["detail"] == wrong.json()["detail"]
    for _ in range(4):
        await login(w["http"], name, "Wrong-Password-000")
    locked = await login(w["http"], name, "Temporary-Pass-4821")
    assert locked.status_code == 429 and locked.json()["code"] == "account_locked"
    assert int(locked.headers["retry-after"]) > 0
    r = await w["http"].post(f"/users/{user_id}/unlock", headers=await admin_token(w))
    assert r.status_code == 200, r.text
    assert (await login(w["http"], name, "Temporary-Pass-4821")).status_code == 200


async def test_refresh_tokens_rotate_and_a_reused_one_ends_the_session(world):
    w = world
    name, _ = await new_user(w, ["information_officer"], w["county"])
    first = (await login(w["http"], name, "Temporary-Pass-4821")).json()
    r = await w["http"].post("/auth/token", data={"grant_type": "refresh_token",
                                                  "refresh_token": first["refresh_token"]})
    assert r.status_code == 200, r.text
    second = r.json()
    assert second["refresh_token"] != first["refresh_token"]
    assert (await w["http"].get("/me", headers=auth(second["access_token"]))).status_code == 200
    stolen = await w["http"].post("/auth/token", data={"grant_type": "refresh_token",
                                                       "refresh_token": first["refresh_token"]})
    assert stolen.status_code == 400 and stolen.json()["code"] == "invalid_grant"
    after = await w["http"].post("/auth/token", data={"grant_type": "refresh_token",
                                                      "refresh_token": second["refresh_token"]})
    assert after.status_code == 400  # the whole session ended
    ended = await w["http"].get("/me", headers=auth(second["access_token"]))
    assert ended.status_code == 401 and ended.headers["www-authenticate"].startswith("Bearer")


async def test_logout_ends_the_session_and_bad_tokens_get_401(world):
    w = world
    name, _ = await new_user(w, ["information_officer"], w["county"])
    token = (await login(w["http"], name, "Temporary-Pass-4821")).json()["access_token"]
    assert (await w["http"].post("/auth/logout", headers=auth(token))).status_code == 204
    assert (await w["http"].get("/me", headers=auth(token))).status_code == 401
    header, payload, _ = token.split(".")
    unsigned = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=").decode() + f".{payload}."
    for bad in (unsigned, token[:-2] + "xx", "garbage"):
        r = await w["http"].get(f"/households/{w['hid']}", headers=auth(bad))
        assert r.status_code == 401 and r.json()["code"] in ("invalid_token", "token_revoked")
    missing = await w["http"].get(f"/households/{w['hid']}")
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == 'Bearer realm="tpa"'


async def test_deactivation_and_role_changes_take_effect_at_once(world):
    w = world
    name, user_id = await new_user(w, ["information_officer"], w["county"])
    token = auth((await login(w["http"], name, "Temporary-Pass-4821")).json()["access_token"])
    await w["http"].put("/me/password", json={"current_password": "Temporary-Pass-4821",
                                              "new_password": "Yellow-River-Bend-88"}, headers=token)
    assert (await w["http"].get(f"/households/{w['hid']}", headers=token)).status_code == 200
    r = await w["http"].put(f"/users/{user_id}/roles", json={"roles": ["operator"]}, headers=await admin_token(w))
    assert r.status_code == 200, r.text
    assert (await w["http"].post("/households", json=household(w["village"]), headers=token)).status_code == 403
    r = await w["http"].post(f"/users/{user_id}/deactivation", json={"reason": "left the post"},
                             headers=await admin_token(w))
    assert r.status_code == 200
    assert (await w["http"].get("/me", headers=token)).status_code == 401


async def test_client_systems_secrets_are_shown_once_rotated_and_revoked(world):
    w = world
    admin = await admin_token(w)
    r = await w["http"].post("/clients", json={"name": "Education bureau", "department": "education",
                                               "scopes": ["comparison:education"], "jurisdiction": w["county"]},
                             headers=admin)
    assert r.status_code == 201, r.text
    client_id, secret = r.json()["client_id"], r.json()["client_secret"]
    again = await w["http"].post("/clients", json={"name": "Education bureau", "department": "education",
                                                   "scopes": ["comparison:education"], "jurisdiction": w["county"]},
                                 headers=admin)
    assert again.status_code == 409 and again.json()["code"] == "client_name_taken"  # a retry is no second client
    shown = await w["http"].get(f"/clients/{client_id}", headers=admin)
    assert "client_secret" not in shown.json() and secret not in shown.text
    basic = httpx.BasicAuth(client_id, secret)
    r = await w["http"].post("/auth/token", data={"grant_type": "client_credentials"}, auth=basic)
    assert r.status_code == 200, r.text
    assert "refresh_token" not in r.json() and r.json()["scope"] == "comparison:education"
    token = auth(r.json()["access_token"])
    ok = await w["http"].post("/comparisons", json={"purpose": "education", "id_numbers": ["110101195001011004"]},
                              headers=token)
    assert ok.status_code == 200, ok.text
    assert (await w["http"].get(f"/households/{w['hid']}", headers=token)).status_code == 403  # not its scope
    wrong_scope = await w["http"].post("/auth/token", data={"grant_type": "client_credentials",
                                                            "scope": "inbound:deaths"}, auth=basic)
    assert wrong_scope.status_code == 400 and wrong_scope.json()["code"] == "invalid_scope"
    rotated = await w["http"].post(f"/clients/{client_id}/secret", json={"grace_hours": 0}, headers=admin)
    assert rotated.status_code == 200
    old = await w["http"].post("/auth/token", data={"grant_type": "client_credentials"}, auth=basic)
    assert old.status_code == 401 and old.json()["code"] == "invalid_client"
    new = await w["http"].post("/auth/token", data={"grant_type": "client_credentials", "client_id": client_id,
                                                    "client_secret": rotated.json()["client_secret"]})
    assert new.status_code == 200
    await w["http"].post(f"/clients/{client_id}/revocation", json={"reason": "contract ended"}, headers=admin)
    assert (await w["http"].post("/comparisons", json={"purpose": "education", "id_numbers": ["1"]},
                                 headers=auth(new.json()["access_token"]))).status_code == 401


async def test_an_administrator_manages_only_their_jurisdiction(world):
    w = world
    other = "110101000000" if not w["county"].startswith("11") else "120101000000"
    r = await w["http"].post("/users", json={"username": f"x{uuid.uuid4().hex[:8]}", "roles": ["cadre"],
                                             "level": "county", "jurisdiction": other[:6],
                                             "password": "Temporary-Pass-4821"}, headers=await admin_token(w))
    assert r.status_code in (403, 422)
    r = await w["http"].post("/users", json={"username": f"x{uuid.uuid4().hex[:8]}", "roles": ["information_officer"],
                                             "level": "county", "jurisdiction": other[:6],
                                             "password": "Temporary-Pass-4821"}, headers=await admin_token(w))
    assert r.status_code == 403 and r.json()["code"] == "outside_jurisdiction"
    assert (await w["http"].get(f"/households/{w['hid']}", headers=await admin_token(w))).status_code == 403


async def test_services_refuse_calls_that_do_not_come_from_the_gateway(world):
    w = world
    registry = w["p"]["registry"][0]
    async with httpx.AsyncClient(base_url=registry) as direct:
        r = await direct.get(f"/households/{w['hid']}")
        assert r.status_code == 401 and r.json()["code"] == "gateway_identity_required"
        who = principal("information_officer", w["county"])
        forged_ring = tokens.parse_keyring(tokens.keyring_text("test-internal"))  # same kid, another key
        forged = tokens.internal_token_for(who, forged_ring, now=datetime.now(timezone.utc))
        assert (await direct.get(f"/households/{w['hid']}",
                                 headers={"X-TPA-Identity": forged})).status_code == 401
        api_token = tokens.issue_access_token(who, tokens.parse_keyring(tokens.keyring_text("test-api")),
                                              now=datetime.now(timezone.utc)).token
        assert (await direct.get(f"/households/{w['hid']}", headers={"X-TPA-Identity": api_token})).status_code == 401
        stale = tokens.internal_token_for(who, tokens.parse_keyring(
            "test-internal=" + tokens.b64url_encode(b"test-only-internal-token-key-0123456789ab")),
            now=datetime.now(timezone.utc) - timedelta(minutes=5))
        assert (await direct.get(f"/households/{w['hid']}", headers={"X-TPA-Identity": stale})).status_code == 401
        good = await direct.get(f"/households/{w['hid']}", headers=internal_headers(who))
        assert good.status_code == 200
        assert (await direct.get("/healthz")).status_code == 200


async def test_personal_data_reads_are_recorded_and_published_and_only_auditors_read_the_log(world):
    w = world
    officer = ActAs(w["p"], who=principal("information_officer", w["county"], "officer-audit"))
    no_purpose = await w["http"].get(f"/households/{w['hid']}", params={"personal": "true"}, auth=officer)
    assert no_purpose.status_code == 422
    r = await w["http"].get(f"/households/{w['hid']}", params={"personal": "true", "purpose": "annual verification"},
                            auth=officer)
    assert r.status_code == 200, r.text
    assert r.json()["members"][0]["personal"]["name"] == "王建国"
    member_id = r.json()["members"][0]["member_id"]
    operator = ActAs(w["p"], who=principal("operator", w["county"]))
    refused = await w["http"].get(f"/households/{w['hid']}", params={"personal": "true", "purpose": "curious"},
                                  auth=operator)
    assert refused.status_code == 403
    assert (await w["http"].get("/access-log", auth=officer)).status_code == 403
    auditor = ActAs(w["p"], who=principal("auditor", w["county"], "auditor-1"))
    log = (await w["http"].get("/access-log", params={"record": member_id}, auth=auditor)).json()["items"]
    entry = next(e for e in log if e["principal_id"] == "officer-audit")
    assert entry["kind"] == "personal_data" and entry["purpose"] == "annual verification"
    assert set(entry["records"]) == {w["hid"], member_id} and entry["count"] == 1
    denied = (await w["http"].get("/access-log", params={"kind": "denied"}, auth=auditor)).json()["items"]
    assert any(e["principal_id"] == f"operator-{w['county']}000000" for e in denied)
    consumer = AIOKafkaConsumer(ACCESS_TOPIC, bootstrap_servers=w["p"]["gateway"][1].settings.kafka_bootstrap_servers,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    try:
        async def published():
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                for record in records:
                    envelope = json.loads(record.value)
                    if envelope["data"].get("access_id") == entry["access_id"]:
                        return envelope, dict(record.headers)
            return None
        envelope, headers = await wait_until(published, timeout=30, message="the access event on its topic")
    finally:
        await consumer.stop()
    assert envelope["event_type"] == "PersonalDataAccessed" and "PersonalDataAccessed" in headers["ce_type"].decode()
    assert envelope["data"]["principal_id"] == "officer-audit"
    assert "王建国" not in json.dumps(envelope, ensure_ascii=False)


async def test_concurrent_logins_do_not_lose_failure_counts(world):
    w = world
    name, _ = await new_user(w, ["information_officer"], w["county"])
    results = await asyncio.gather(*(login(w["http"], name, "Wrong-Password-000") for _ in range(7)))
    assert {r.status_code for r in results} <= {400, 429}, [(r.status_code, r.text[:200]) for r in results]
    final = await login(w["http"], name, "Temporary-Pass-4821")
    assert final.status_code == 429, ([(r.status_code, r.text[:100]) for r in results], final.text)
