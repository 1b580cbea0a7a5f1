"""Dashboard figures through the gateway equal those recomputed from the services' event stores;
the service itself refuses a region outside the caller's jurisdiction (defence in depth)."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import httpx

from eventkit.clock import FixedClock
from eventkit.testing import wait_until
from services.funds.domain import CHINA_TZ

from .conftest import village_code
from .harness import (
    ActAs,
    bearer,
    ensure_account,
    internal_headers,
    principal,
    running_platform,
)
from .registry_helpers import household, seed_village

API = "/api/v1"
POOR = ("identified", "returned_to_poverty")


async def _all_events(runtime) -> list:
    return await runtime.store.read_all(0, 1_000_000)


def expected_from_stores(prefix: str, registry: list, funds: list, workflow: list,
                         monitoring: list) -> dict[str, Any]:
    """The dashboard of a region recomputed by folding the event stores' events."""
    households: dict[str, dict[str, Any]] = {}
    profiles: dict[str, int] = {}
    for e in registry:
        d = e.data
        if e.event_type == "HouseholdRegistered":
            households[e.stream_id] = {"village": d["village_code"], "status": d.get("status") or "applicant",
                                       "people": 0, "cause": None}
        elif e.stream_id in households:
            h = households[e.stream_id]
            if e.event_type == "MemberAdded":
                h["people"] += 1
            elif e.event_type == "MemberRemoved":
                h["people"] -= 1
            elif e.event_type == "HouseholdStatusChanged":
                h["status"] = d["to_status"]
            elif e.event_type == "PovertyCausesRecorded":
                h["cause"] = d["primary"]
        if e.event_type == "VillageProfileUpdated":
            profiles[d["village_code"]] = d["rural_population"]
    mine = {k: h for k, h in households.items() if h["village"].startswith(prefix)}
    by_status: dict[str, int] = {}
    people: dict[str, int] = {}
    causes: dict[str, int] = {}
    poor: dict[str, int] = {}
    for h in mine.values():
        by_status[h["status"]] = by_status.get(h["status"], 0) + 1
        people[h["status"]] = people.get(h["status"], 0) + h["people"]
        if h["status"] in POOR:
            poor[h["village"]] = poor.get(h["village"], 0) + h["people"]
            if h["cause"]:
                causes[h["cause"]] = causes.get(h["cause"], 0) + 1
    sources = {e.stream_id: e.data["source"] for e in funds if e.event_type == "AllocationCreated"}
    payments: dict[str, dict[str, Any]] = {}
    for e in funds:
        if e.event_type == "DisbursementRequested":
            payments[e.stream_id] = {"village": e.data["village_code"], "policy": e.data.get("policy_code") or
                                     "project", "amount": Decimal(e.data["amount"]), "status": "requested"}
        elif e.event_type == "DisbursementApproved":
            payments[e.stream_id]["allocation"] = e.data["allocation_id"]
        elif e.event_type in ("DisbursementPaid", "DisbursementReconciled", "DisbursementReversed"):
            payments[e.stream_id]["status"] = e.event_type.removeprefix("Disbursement").lower()
    by_source: dict[str, Decimal] = {}
    by_policy: dict[str, Decimal] = {}
    for p in payments.values():
        if p["village"].startswith(prefix) and p["status"] in ("paid", "reconciled"):
            source = sources[p["allocation"]]
            by_source[source] = by_source.get(source, Decimal(0)) + p["amount"]
            by_policy[p["policy"]] = by_policy.get(p["policy"], Decimal(0)) + p["amount"]
    cases: dict[str, dict[str, Any]] = {}
    for e in workflow:
        if e.event_type == "CaseOpened":
            cases[e.stream_id] = {"type": e.data["case_type"], "village": e.data["village_code"], "open": True,
                                  "step": e.data["first_step"], "overdue": False}
        elif e.event_type in ("StepDecided", "CaseEscalated"):
            cases[e.stream_id].update(step=e.data.get("next_step", e.data.get("to_step")), overdue=False)
        elif e.event_type == "StepOverdue" and cases[e.stream_id]["step"] == e.data["step_id"]:
            cases[e.stream_id]["overdue"] = True
        elif e.event_type == "CaseConcluded":
            cases[e.stream_id].update(open=False, overdue=False)
    open_cases = [c for c in cases.values() if c["open"] and c["village"].startswith(prefix)]
    alerts: dict[str, tuple[str, str, str]] = {}  # alert -> (village, rule, state)
    states = {"ReturnRiskAlertRaised": None, "AlertAcknowledged": "acknowledged",
              "AlertVerificationRequested": "verification_requested", "AlertResolved": "resolved"}
    for e in monitoring:
        if e.event_type == "ReturnRiskAlertRaised":
            alerts[e.stream_id] = (e.data["village_code"], e.data["rule_id"],
                                   "verification_requested" if e.data["requires_verification"] else "raised")
        elif e.event_type in states:
            village, rule, _ = alerts[e.stream_id]
            alerts[e.stream_id] = (village, rule, states[e.event_type])
    alerts_by_rule: dict[str, dict[str, int]] = {}
    for village, rule, state in alerts.values():
        if village.startswith(prefix):
            alerts_by_rule.setdefault(rule, {})[state] = alerts_by_rule.get(rule, {}).get(state, 0) + 1
    return {
        "households_by_status": by_status, "people_by_status": people, "primary_causes": causes,
        "incidence": {v: poor.get(v, 0) / r for v, r in profiles.items() if v.startswith(prefix) and r},
        "funds_paid_by_source": {k: f"{v:.2f}" for k, v in by_source.items()},
        "funds_paid_by_policy": {k: f"{v:.2f}" for k, v in by_policy.items()},
        "open_cases_by_type": {t: sum(1 for c in open_cases if c["type"] == t) for t in {c["type"] for c in open_cases}},
        "overdue_steps_by_type": {t: n for t in {c["type"] for c in open_cases}
                                  if (n := sum(1 for c in open_cases if c["type"] == t and c["overdue"]))},
        "alerts_by_rule": alerts_by_rule,
    }


async def test_dashboard_figures_equal_a_recomputation_from_the_event_stores(infra, databases, unique):
    clock = FixedClock(datetime.now(timezone.utc))
    services = ("registry", "workflow", "funds", "monitoring", "gateway")
    async with running_platform(infra, databases, unique("dash"), services=services,
                                build_kwargs={"workflow": {"clock": clock}}, overdue_scan_interval=0) as p:
        v1 = village_code()
        v2 = v1[:9] + ("101" if v1[9:] != "101" else "102")
        async with p["registry"][1].pool.acquire() as conn:
            await seed_village(conn, v1)
            await seed_village(conn, v2)
        async with httpx.AsyncClient(base_url=p["gateway"][0] + API, timeout=30,
                                     auth=ActAs(p, village=v1)) as client:
            ids = {}
            for name, village, identified in (("a", v1, True), ("b", v1, True), ("c", v1, False), ("d", v2, True)):
                r = await client.post("/households", json=household(village))
                assert r.status_code == 201, r.text
                ids[name] = r.json()["household_id"]
                if identified:
                    r = await client.post(f"/households/{ids[name]}/status-decisions", json={
                        "decision_event_id": str(uuid.uuid4()), "case_id": f"c-{name}", "status_effect": "identified",
                        "effective_on": "2024-04-01"})
                    assert r.status_code == 200, r.text
            assert (await client.put(f"/households/{ids['a']}/causes", json={"primary": "illness"})).status_code == 200
            r = await client.put(f"/villages/{v1}/profile", json={"effective_on": "2025-01-01", "rural_population": 120,
                                                                 "registered_population": 40, "poor_village": True})
            assert r.status_code == 200, r.text
            child = [m["member_id"] for m in (await client.get(f"/households/{ids['a']}")).json()["members"]
                     if m["relation"] == "20"][0]

            # Funds: one payment paid, one only requested.
            r = await client.post("/allocations", json={"source": "provincial", "year": 2025, "purpose": "教育",
                                                        "region_code": v1[:6], "amount": "10000.00"})
            alloc = r.json()["id"]
            today = datetime.now(CHINA_TZ).date()

            async def request():
                return await client.post("/disbursements", json={
                    "household_id": ids["a"], "member_id": child, "basis": "policy",
                    "policy_code": "edu_boarding_junior", "period": str(today.year), "amount": "1250.00"})
            r = await wait_until(lambda: _created(request), timeout=30, message="funds knowing the household")
            did = r.json()["id"]
            assert (await client.post(f"/disbursements/{did}/approval", json={"allocation_id": alloc})).status_code == 200
            r = await client.post(f"/disbursements/{did}/payment", json={
                "channel": "student_aid_card", "channel_reference": f"R-{did[:8]}", "paid_on": today.isoformat()})
            assert r.status_code == 200, r.text

            # Workflow: an identification case for the applicant, overdue at its first step.
            cadre_principal = principal("cadre", v1, user_id="cadre-1")
            await ensure_account(p["gateway"][1], cadre_principal)
            cadre = bearer(cadre_principal)

            async def open_case():
                return await client.post("/cases", json={"case_type": "identification", "household_id": ids["c"],
                                                         "reason": "申请"}, headers=cadre)
            await wait_until(lambda: _created(open_case), timeout=30, message="workflow knowing the household")
            wf_runtime = p["workflow"][1]

            async def on_board():
                return await wf_runtime.pool.fetchval("SELECT count(*) FROM wf_cases WHERE village_code = $1", v1)
            await wait_until(on_board, timeout=30, message="the case on the workflow board")
            clock.advance(timedelta(days=16))
            assert await wf_runtime.state["workflow"].flag_overdue(wf_runtime.pool) >= 1

            stores = [await _all_events(p[s][1]) for s in ("registry", "funds", "workflow", "monitoring")]
            # (the township by its 12-digit code: the gateway checks path regions of 6 or 12 digits)
            for prefix, region in ((v1[:9], v1[:9] + "000"), (v1, v1)):
                expected = expected_from_stores(prefix, *stores)

                async def matches():
                    got = (await client.get(f"/dashboards/{region}")).json()
                    return got if all(got[k] == expected[k] for k in expected if k != "incidence") else None
                got = await wait_until(matches, timeout=30, message=f"the dashboard of {region} to catch up")
                incidence = {v["village_code"]: v["incidence"] for v in got["villages"] if v["incidence"] is not None}
                assert incidence == expected["incidence"]
            township = (await client.get(f"/dashboards/{v1[:9]}000")).json()
            assert township["households_by_status"] == {"identified": 3, "applicant": 1}
            assert township["funds_paid_by_source"] == {"provincial": "1250.00"}
            assert township["overdue_steps_by_type"] == {"identification": 1}
            [village] = [x for x in township["villages"] if x["village_code"] == v1]
            assert village["poor_people"] == 6 and village["below_exit_threshold"] is False

            # The service checks the region too (defence in depth), whoever calls it directly.
            monitoring = p["monitoring"][0]
            other_county = principal("operator", v1[:4] + ("10" if v1[4:6] != "10" else "11") + "000000")
            own_county = principal("operator", v1[:6] + "000000")
            for path in (f"/dashboards/{v1}", f"/dashboards/{v1[:9]}", f"/dashboards/{v1[:6]}",
                         f"/villages/{v1}/households"):
                r = await client.get(monitoring + path, headers=internal_headers(other_county))
                assert r.status_code == 403 and r.json()["code"] == "outside_jurisdiction", (path, r.text)
                assert (await client.get(monitoring + path, headers=internal_headers(own_county))).status_code == 200
            r = await client.get(monitoring + f"/dashboards/{v1[:4]}", headers=internal_headers(own_county))
            assert r.status_code == 403  # the county does not cover its city
            r = await client.get(monitoring + f"/dashboards/{v1}", headers=internal_headers(None))
            assert r.status_code == 401  # anonymous


async def _created(call) -> Any:
    r = await call()
    if r.status_code == 201:
        return r
    assert r.status_code == 404 and r.json()["code"] == "household_unknown", r.text
    return None
