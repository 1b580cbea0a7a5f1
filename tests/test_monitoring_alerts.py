"""Return-risk alerts end to end: rules over the registry's events and cadres' reports, an alert
not raised twice while open, the lifecycle through the gateway with the workflow's verification
case, and escalation when overdue; an operator of another county is refused every alert of this one."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import httpx

from eventkit.clock import FixedClock
from eventkit.testing import wait_until

from .conftest import village_code
from .harness import ActAs, bearer, ensure_account, principal, running_platform
from .registry_helpers import household, seed_village

API = "/api/v1"


async def test_alerts_are_raised_by_the_rules_once_and_follow_their_lifecycle(infra, databases, unique):
    clock = FixedClock(datetime.now(timezone.utc))
    services = ("registry", "workflow", "monitoring", "gateway")
    async with running_platform(infra, databases, unique("alr"), services=services, overdue_scan_interval=0,
                                build_kwargs={"workflow": {"clock": clock}, "monitoring": {"clock": clock}}) as p:
        v = village_code()
        async with p["registry"][1].pool.acquire() as conn:
            await seed_village(conn, v)
        gateway = p["gateway"][1]
        async with httpx.AsyncClient(base_url=p["gateway"][0] + API, timeout=30,
                                     auth=ActAs(p, village=v)) as client:
            hid = (await client.post("/households", json=household(v))).json()["household_id"]
            year = clock.now().year - 1
            r = await client.put(f"/households/{hid}/incomes/{year}", json={"wage": "1200.00"})
            assert r.status_code == 200, r.text

            async def alerts(total: int):
                async def listed():
                    body = (await client.get("/alerts", params={"region": v})).json()
                    return body["items"] if body["total"] >= total else None
                return await wait_until(listed, timeout=30, message=f"{total} alert(s)")
            [income] = await alerts(1)
            assert income["rule"] == "income_below_threshold" and income["state"] == "raised"
            assert income["severity"] == "high"
            detail = (await client.get(f"/alerts/{income['alert_id']}")).json()
            assert detail["household_id"] == hid and detail["object_type"] == "marginal"
            timeline = await p["monitoring"][1].store.read_stream(income["alert_id"])
            raised_event = timeline[0].data
            assert raised_event["evidence_event_ids"] and raised_event["evidence"]["year"] == year

            # More facts about the same household: the open income risk is not raised again.
            assert (await client.put(f"/households/{hid}/causes", json={"primary": "illness"})).status_code == 200
            r = await client.post(f"/households/{hid}/risk-reports", json={"kind": "disaster", "risk": "0201",
                                                                           "note": "洪水冲毁农田"})
            assert r.status_code == 201, r.text
            assert len(r.json()["raised_alert_ids"]) == 1
            items = await alerts(2)
            assert sorted(a["risk"] for a in items) == sorted(["income", "0201"])
            assert (await client.get("/alerts", params={"region": v, "rule": "income_below_threshold"})
                    ).json()["total"] == 1
            r = await client.post(f"/households/{uuid.uuid4()}/risk-reports", json={"kind": "other"})
            assert r.status_code == 404

            # An operator of another county sees none of these alerts, and may act on none.
            other = principal("operator", _other_county(v), user_id="op-elsewhere")
            await ensure_account(gateway, other)
            elsewhere = bearer(other)
            assert (await client.get("/alerts", params={"region": v}, headers=elsewhere)).json() == \
                {"total": 0, "items": []}
            listed = (await client.get("/alerts", params={"limit": 1000}, headers=elsewhere)).json()["items"]
            assert not {a["alert_id"] for a in listed} & {a["alert_id"] for a in items}
            for a in items:
                r = await client.get(f"/alerts/{a['alert_id']}", headers=elsewhere)
                assert r.status_code == 403 and r.json()["code"] == "outside_jurisdiction", r.text
            r = await client.post(f"/alerts/{income['alert_id']}/acknowledgement", json={}, headers=elsewhere)
            assert r.status_code == 403 and r.json()["code"] == "outside_jurisdiction"
            r = await client.post(f"/alerts/{income['alert_id']}/resolution", headers={**elsewhere, "If-Match": "99"},
                                  json={"resolution": "not_confirmed"})
            assert r.status_code == 403  # not 412: a refused caller learns nothing of the alert's version
            r = await client.post(f"/households/{hid}/risk-reports", json={"kind": "other"}, headers=elsewhere)
            assert r.status_code == 403 and r.json()["code"] == "outside_jurisdiction"
            assert (await client.get(f"/alerts/{income['alert_id']}")).json()["state"] == "raised"  # untouched

            # A compulsory-age child leaves school; safe housing, secured last year, is lost.
            child = [m["member_id"] for m in (await client.get(f"/households/{hid}")).json()["members"]
                     if m["relation"] == "20"][0]
            r = await client.patch(f"/households/{hid}/members/{child}", json={"schooling_stage": "not_in_school"})
            assert r.status_code == 200, r.text
            for on, secured in ((f"{year}-06-01", True), (f"{year + 1}-01-15", False)):
                r = await client.put(f"/households/{hid}/conditions", json={"assessed_on": on, "conditions": {
                    "safe_housing": secured, "food": True}})
                assert r.status_code == 200, r.text
            items = await alerts(4)
            assert {a["rule"]: a["risk"] for a in items} == {
                "income_below_threshold": "income", "disaster_reported": "0201",
                "child_out_of_school": "child_out_of_school", "housing_or_water_lost": "unsafe_housing"}

            # Lifecycle: acknowledge, request verification (the workflow opens a case), the case is
            # rejected and the alert resolves as not confirmed.
            aid = income["alert_id"]
            r = await client.post(f"/alerts/{aid}/verification-request")
            assert r.status_code == 409 and r.json()["code"] == "invalid_transition"
            assert (await client.post(f"/alerts/{aid}/acknowledgement", json={"note": "已联系村委"})
                    ).json()["state"] == "acknowledged"
            assert (await client.post(f"/alerts/{aid}/verification-request")).json()["state"] == \
                "verification_requested"

            async def case_opened():
                body = (await client.get("/cases", params={"household_id": hid, "case_type": "return_risk"})).json()
                return body["items"] if body["total"] else None
            [case] = await wait_until(case_opened, timeout=30, message="the verification case")
            assert case["subject"] == "income"
            reviewer = principal("township_reviewer", v[:9].ljust(12, "0"), user_id="tw-1")
            await ensure_account(gateway, reviewer)
            township = bearer(reviewer)
            r = await client.post(f"/cases/{case['case_id']}/decisions", headers=township, json={
                "step_id": "township_verification", "decision": "reject", "comment": "入户核实收入已恢复"})
            assert r.status_code == 200, r.text

            async def resolved():
                body = (await client.get(f"/alerts/{aid}")).json()
                return body if body["state"] == "resolved" else None
            body = await wait_until(resolved, timeout=30, message="the alert resolved by the case")
            assert body["resolution"] == "not_confirmed" and body["case_id"] == case["case_id"]
            r = await client.post(f"/alerts/{aid}/resolution", json={"resolution": "not_confirmed"})
            assert r.status_code == 409 and r.json()["code"] == "alert_closed"

            # The disaster alert, never acknowledged, is escalated once it is overdue.
            disaster = [a for a in items if a["risk"] == "0201"][0]["alert_id"]
            alerts_app = p["monitoring"][1].state["alerts"]
            async def levels() -> dict[str, str]:  # (the platform also sees other tests' households)
                return {a["alert_id"]: a["level"] for a in (await client.get(
                    "/alerts", params={"region": v, "state": "raised"})).json()["items"]}
            await alerts_app.escalate_overdue(p["monitoring"][1].pool)
            assert set((await levels()).values()) == {"village"}  # not overdue yet
            clock.advance(timedelta(hours=49))
            await alerts_app.escalate_overdue(p["monitoring"][1].pool)
            await alerts_app.escalate_overdue(p["monitoring"][1].pool)  # not again at once
            escalated = await levels()
            assert len(escalated) == 3 and set(escalated.values()) == {"township"}
            assert disaster in escalated
            timeline = await p["monitoring"][1].store.read_stream(disaster)
            assert [e.event_type for e in timeline].count("AlertEscalated") == 1
            dash = (await client.get(f"/dashboards/{v}")).json()
            assert dash["alerts_by_rule"] == {"income_below_threshold": {"resolved": 1},
                                              "disaster_reported": {"raised": 1},
                                              "child_out_of_school": {"raised": 1},
                                              "housing_or_water_lost": {"raised": 1}}


def _other_county(village: str) -> str:
    """A county (12-digit code) that is not the village's."""
    county = "10" if village[4:6] != "10" else "11"
    return village[:4] + county + "000000"
