"""Attendance through the gateway: offline batches (re-sent, with a check-in outside the
geofence), the registry's coordinates and pairings, and duty compliance published once."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

import httpx

from eventkit.clock import FixedClock
from eventkit.testing import wait_until

from .conftest import village_code
from .harness import running_platform
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
        async with p["registry"][1].pool.acquire() as conn:
            await seed_village(conn, v)
        async with httpx.AsyncClient(base_url=p["gateway"][0] + API, timeout=30,
                                     headers={"x-tpa-actor": cadre}) as client:
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
            r = await client.post("/attendance/batches", json=batch)
            assert r.status_code == 200, r.text
            result = r.json()
            assert (result["accepted"], result["duplicates"], result["rejected"]) == (5, 0, 1), result
            by_id = {i["client_event_id"]: i for i in result["items"]}
            assert by_id["d1:6"]["code"] == "check_out_before_check_in"
            assert "outside_geofence" in by_id["d1:5"].get("flags", [])
            assert not by_id["d1:1"].get("flags")
            again = (await client.post("/attendance/batches", json=batch)).json()  # the app re-sends it
            assert (again["accepted"], again["duplicates"], again["rejected"]) == (0, 5, 1)
            assert (await client.post("/attendance/batches", json=batch,
                                      headers={"x-tpa-actor": ""})).status_code == 401

            # Q3: visited and called in September (offline items older than 30 days are refused),
            # nothing in July and August: the quarterly visit is done, two monthly contacts are missing.
            old = await client.post("/attendance/batches", json={"items": [
                item("contact", "d1:7", "2026-08-15T20:00:00+08:00", household_id=hid, channel="call")]})
            assert old.json()["items"][0]["code"] == "too_old"
            findings = (await client.get(f"/cadres/{cadre}/compliance/2026-Q3")).json()["findings"]
            assert [(f["duty"], f["period"]) for f in findings] == [("monthly_contact", "2026-07"),
                                                                    ("monthly_contact", "2026-08")]
            assert all(f["household_id"] == hid and f["expected"] == 1 and f["actual"] == 0 for f in findings)
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
