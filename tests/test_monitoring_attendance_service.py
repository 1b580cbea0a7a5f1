"""Attendance through the gateway: offline batches of the signed-in cadre (re-sent, with a
check-in outside the geofence), the registry's coordinates and pairings, duty compliance
published once, and the jurisdiction: items about households outside it (unless paired)
are refused one by one, and a cadre's findings are for callers covering the cadre's households."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

import httpx

from eventkit.clock import FixedClock
from eventkit.testing import wait_until

from .conftest import village_code
from .harness import ActAs, bearer, ensure_account, principal, running_platform
from .registry_helpers import household, seed_village

API = "/api/v1"
LAT, LON = 36.0611, 103.8343


def item(kind: str, cid: str, at: str, **fields) -> dict:
    return {"client_event_id": cid, "kind": kind, "occurred_at": at, **fields}


async def test_offline_batches_geofence_and_quarterly_compliance(infra, databases, unique):
    clock = FixedClock(datetime(2026, 10, 1, 2, 0, tzinfo=timezone.utc))  # Q3 2026 has just ended
    cadre = f"cadre-{uuid.uuid4().hex[:8]}"
    async with running_platform(infra, databases, unique("att"), services=("registry", "monitoring", "gateway"),
                                build_kwargs={"monitoring": {"clock": clock}}) as p:
        v = village_code()
        w = v[:4] + ("10" if v[4:6] != "10" else "11") + v[6:]  # a village of another county
        async with p["registry"][1].pool.acquire() as conn:
            await seed_village(conn, v)
            await seed_village(conn, w)
        me = principal("cadre", v, user_id=cadre)
        base = p["gateway"][0] + API
        async with httpx.AsyncClient(base_url=base, timeout=30, auth=ActAs(p, village=v)) as client, \
                httpx.AsyncClient(base_url=base, timeout=30, auth=ActAs(p, who=me)) as as_cadre, \
                httpx.AsyncClient(base_url=base, timeout=30, auth=ActAs(p, village=w)) as elsewhere:
            hid = (await client.post("/households", json=household(v))).json()["household_id"]
            assert (await client.put(f"/households/{hid}/coordinates",
                                     json={"latitude": LAT, "longitude": LON})).status_code == 200
            r = await client.post(f"/households/{hid}/cadres", json={"cadre_id": cadre, "unit": "县农业农村局",
                                                                      "assigned_on": "2026-07-01"})
            assert r.status_code == 200, r.text
            pool = p["monitoring"][1].pool

            async def known():
                return await pool.fetchval("SELECT count(*) FROM mon_pairings p JOIN mon_households h USING"
                                           " (household_id) WHERE p.cadre_id = $1 AND h.latitude IS NOT NULL", cadre)
            await wait_until(known, timeout=30, message="the pairing and coordinates in monitoring")

            batch = {"items": [
                item("check_out", "d1:3", "2026-09-10T09:45:00+08:00", visit_id="v1", household_id=hid,
                     latitude=LAT, longitude=LON),  # out of order on purpose
                item("check_in", "d1:1", "2026-09-10T09:00:00+08:00", visit_id="v1", household_id=hid,
                     latitude=LAT + 0.0002, longitude=LON, accuracy_m=10),
                item("visit_log", "d1:2", "2026-09-10T09:30:00+08:00", visit_id="v1", household_id=hid,
                     notes="了解就业需求", needs=["job"]),
                item("contact", "d1:4", "2026-09-02T20:00:00+08:00", household_id=hid, channel="call",
                     duration_s=240),
                item("check_in", "d1:5", "2026-09-20T10:00:00+08:00", visit_id="v2", household_id=hid,
                     latitude=LAT + 0.05, longitude=LON, accuracy_m=20),  # about 5.6 km away
                item("check_out", "d1:6", "2026-09-20T09:00:00+08:00", visit_id="v2", household_id=hid,
                     latitude=LAT, longitude=LON),  # before its check-in
            ]}
            r = await as_cadre.post("/attendance/batches", json=batch)
            assert r.status_code == 200, r.text
            result = r.json()
            assert (result["accepted"], result["duplicates"], result["rejected"]) == (5, 0, 1), result
            by_id = {i["client_event_id"]: i for i in result["items"]}
            assert by_id["d1:6"]["code"] == "check_out_before_check_in"
            assert "outside_geofence" in by_id["d1:5"].get("flags", [])
            assert not by_id["d1:1"].get("flags")
            again = (await as_cadre.post("/attendance/batches", json=batch)).json()  # the app re-sends it
            assert (again["accepted"], again["duplicates"], again["rejected"]) == (0, 5, 1)
            r = await as_cadre.post("/attendance/batches", json=batch, auth=None)  # no token
            assert r.status_code == 401 and r.json()["code"] == "missing_token"
            # The stream is the signed-in cadre's own (the principal's id).
            assert {e.stream_id for e in await p["monitoring"][1].store.read_all(0, 1_000_000)
                    if e.stream_type == "attendance" and e.data.get("household_id") == hid} == {cadre}

            # Q3: visited and called in September (offline items older than 30 days are refused),
            # nothing in July and August: the quarterly visit is done, two monthly contacts are missing.
            old = await as_cadre.post("/attendance/batches", json={"items": [
                item("contact", "d1:7", "2026-08-15T20:00:00+08:00", household_id=hid, channel="call")]})
            assert old.json()["items"][0]["code"] == "too_old"
            findings = (await client.get(f"/cadres/{cadre}/compliance/2026-Q3")).json()["findings"]
            assert [(f["duty"], f["period"]) for f in findings] == [("monthly_contact", "2026-07"),
                                                                    ("monthly_contact", "2026-08")]
            assert all(f["household_id"] == hid and f["expected"] == 1 and f["actual"] == 0 for f in findings)
            mine = await as_cadre.get(f"/cadres/{cadre}/compliance/2026-Q3")  # one's own findings
            assert mine.status_code == 200 and mine.json()["findings"] == findings
            for r in (await elsewhere.get(f"/cadres/{cadre}/compliance/2026-Q3"),
                      await elsewhere.post(f"/cadres/{cadre}/compliance/2026-Q3")):
                assert r.status_code == 403 and r.json()["code"] == "outside_jurisdiction", r.text
            first = (await client.post(f"/cadres/{cadre}/compliance/2026-Q3")).json()
            second = (await client.post(f"/cadres/{cadre}/compliance/2026-Q3")).json()
            assert len(first["published"]) == 2 and second["published"] == []
            from services.monitoring.attendance_api import publish_ended_quarter
            await publish_ended_quarter(p["monitoring"][1])  # the quarter-end run finds ours done
            ours = await pool.fetchval("SELECT count(*) FROM events WHERE stream_type = 'compliance'"
                                       " AND data->>'cadre_id' = $1", cadre)
            assert ours == 2
            dash = (await client.get(f"/dashboards/{v}")).json()
            assert dash["attendance"] == {"paired_households": 1, "visited_this_quarter": 0,  # Q4 just began
                                          "checkins_outside_geofence": 1, "checkins_impossible_travel": 0,
                                          "noncompliance_findings": 2}
            refused = await client.get(f"/cadres/{cadre}/compliance/2026-Q4")
            assert refused.status_code == 409 and refused.json()["code"] == "period_not_ended"

            # A household of another county: items about it are refused one by one (the rest is
            # recorded) until the cadre is paired with it; a team day there is refused.
            there = (await elsewhere.post("/households", json=household(w))).json()["household_id"]

            async def geo_known():
                return await pool.fetchval("SELECT 1 FROM mon_households WHERE household_id = $1", there)
            await wait_until(geo_known, timeout=30, message="the other county's household in monitoring")
            mixed = {"items": [
                item("contact", "d2:1", "2026-09-25T20:00:00+08:00", household_id=there, channel="call"),
                item("team_day", "d2:2", "2026-09-26T10:00:00+08:00", village_code=w, latitude=LAT, longitude=LON),
                item("contact", "d2:3", "2026-09-27T20:00:00+08:00", household_id=hid, channel="message")]}
            result = (await as_cadre.post("/attendance/batches", json=mixed)).json()
            assert [(i["index"], i["status"], i.get("code"), i.get("field")) for i in result["items"]] == [
                (0, "rejected", "outside_jurisdiction", "household_id"),
                (1, "rejected", "outside_jurisdiction", "village_code"),
                (2, "accepted", None, None)]
            assert (result["accepted"], result["duplicates"], result["rejected"]) == (1, 0, 2)
            r = await elsewhere.post(f"/households/{there}/cadres", json={"cadre_id": cadre, "unit": "县农业农村局",
                                                                         "assigned_on": "2026-09-01"})
            assert r.status_code == 200, r.text

            async def paired():
                return await pool.fetchval("SELECT 1 FROM mon_pairings WHERE cadre_id = $1 AND household_id = $2",
                                           cadre, there)
            await wait_until(paired, timeout=30, message="the pairing in monitoring")
            again = (await as_cadre.post("/attendance/batches", json=mixed)).json()
            assert [(i["status"], i.get("code")) for i in again["items"]] == [
                ("accepted", None), ("rejected", "outside_jurisdiction"), ("duplicate", "already_recorded")]
            # The cadre's households now lie in two counties: only a caller covering both may ask.
            r = await client.get(f"/cadres/{cadre}/compliance/2026-Q3")
            assert r.status_code == 403 and r.json()["code"] == "outside_jurisdiction"
            assert (await as_cadre.get(f"/cadres/{cadre}/compliance/2026-Q3")).status_code == 200
            province = principal("operator", v[:2].ljust(12, "0"), user_id="op-province")
            await ensure_account(p["gateway"][1], province)
            r = await client.get(f"/cadres/{cadre}/compliance/2026-Q3", headers=bearer(province))
            assert r.status_code == 200 and {f["household_id"] for f in r.json()["findings"]} >= {hid}
