"""The workflow service end to end: registry -> workflow -> registry through the gateway,
every guard over HTTP, batch decisions, process managers, overdue steps, and the case
board equal to a replay of the event store.

One platform (registry, workflow, gateway) serves the whole module; the workflow's
clock is a FixedClock the tests move (notice periods, time limits). Each test uses
its own village, so tests do not see each other's cases.

Callers authenticate as the gateway requires: reviewers with the bearer token of
an account the gateway knows (``identity``), other calls as the usual post for the
route's action over the test's village (``Village.staff``); the notice board,
objections and the case types are called without a token (public routes).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from eventkit.principal import Principal
from eventkit.testing import producer, wait_until
from services.workflow import board
from eventkit.clock import FixedClock
from services.workflow.definitions import DefinitionError

from .conftest import village_code
from .harness import ActAs, bearer, client_principal, ensure_account, internal_headers, principal, running_platform
from .registry_helpers import household, seed_village

CLOCK = FixedClock(datetime(2025, 3, 3, 1, 0, tzinfo=timezone.utc))
API = "/api/v1"


@pytest_asyncio.fixture(scope="module")
async def platform(infra, module_databases):
    async with running_platform(infra, module_databases, f"wf{uuid.uuid4().hex[:8]}",
                                services=("registry", "workflow", "gateway"),
                                build_kwargs={"workflow": {"clock": CLOCK}}, overdue_scan_interval=0,
                                # The tests poll read models through the gateway; rate limits have their own tests.
                                rate_limit_per_minute=0) as p:
        async with httpx.AsyncClient(base_url=p["gateway"][0] + API, timeout=30) as client:
            yield p, client


class Identity(dict):
    """The headers authenticating ``principal`` through the gateway (the bearer token of its account)."""

    def __init__(self, who: Principal) -> None:
        super().__init__(bearer(who))
        self.principal = who


async def identity(platform, role: str, level: str, jurisdiction: str, actor: str | None = None) -> Identity:
    """A user holding ``role`` at ``level`` over ``jurisdiction`` (role ``department``: a department's
    client system sending comparison results), known to the gateway."""
    p, _ = platform
    if role == "department":
        who = client_principal(actor or f"dept-{jurisdiction}", ("inbound:comparison_results",), jurisdiction)
    else:
        who = principal(role, jurisdiction, actor)
    assert who.level == level, (who, level)
    await ensure_account(p["gateway"][1], who)
    return Identity(who)


class Village:
    """A village of its own, with reviewers at each level whose jurisdiction covers it, and ``staff``:
    the usual post for each route's action over the village (``tests.harness.STAFF``)."""

    def __init__(self, platform, code: str) -> None:
        p, _ = platform
        self.code = code
        self.staff = ActAs(p, village=code)

    async def sign_in(self, platform) -> Village:
        code = self.code
        self.committee = await identity(platform, "village_committee", "village", code)
        self.resident_team = await identity(platform, "resident_team", "village", code)
        self.cadre = await identity(platform, "cadre", "village", code)
        self.township = await identity(platform, "township_reviewer", "township", code[:9].ljust(12, "0"))
        self.county = await identity(platform, "county_office", "county", code[:6])
        self.information_officer = await identity(platform, "information_officer", "county", code[:6])
        self.department = await identity(platform, "department", "county", code[:6],
                                         actor=f"dept-vehicles-{code[:6]}")
        return self


async def new_village(platform, outside: Village | None = None) -> Village:
    """A new village (in another county than ``outside``, when given)."""
    p, _ = platform
    v = village_code()
    while outside is not None and v[:6] == outside.code[:6]:
        v = village_code()
    async with p["registry"][1].pool.acquire() as conn:
        await seed_village(conn, v)
    return await Village(platform, v).sign_in(platform)


async def known_to_workflow(platform, household_id: str, status: str | None = None) -> dict[str, Any]:
    p, _ = platform
    pool = p["workflow"][1].pool

    async def seen():
        row = await pool.fetchrow("SELECT * FROM wf_households WHERE household_id = $1", household_id)
        return dict(row) if row and (status is None or row["status"] == status) else None
    return await wait_until(seen, timeout=30, message=f"household {household_id} in the workflow's projection")


async def register(platform, village: Village, status: str | None = None) -> str:
    _, client = platform
    r = await client.post("/households", json=household(village.code), auth=village.staff)
    assert r.status_code == 201, r.text
    hid = r.json()["household_id"]
    if status == "identified":
        r = await client.post(f"/households/{hid}/status-decisions", auth=village.staff, json={
            "decision_event_id": str(uuid.uuid4()), "case_id": "import-1", "status_effect": "identified",
            "effective_on": "2024-01-01"})
        assert r.status_code == 200, r.text
    await known_to_workflow(platform, hid, status)
    return hid


async def open_case(platform, village: Village, hid: str, case_type: str = "identification", **extra) -> str:
    _, client = platform
    r = await client.post("/cases", json={"case_type": case_type, "household_id": hid, "reason": "本人书面申请",
                                          **extra}, headers=village.cadre)
    assert r.status_code == 201, r.text
    assert r.headers["location"] == f"{API}/cases/{r.json()['case_id']}"
    return r.json()["case_id"]


async def decide(platform, case_id: str, step: str, reviewer: dict[str, str], decision: str = "approve",
                 expect: int = 200, **extra) -> dict[str, Any]:
    _, client = platform
    r = await client.post(f"/cases/{case_id}/decisions", json={"step_id": step, "decision": decision, **extra},
                          headers=reviewer)
    assert r.status_code == expect, r.text
    return r.json()


async def ledger_status(platform, village: Village, hid: str, wanted: str) -> dict[str, Any]:
    _, client = platform

    async def applied():
        r = await client.get(f"/households/{hid}", auth=village.staff)
        return r.json() if r.status_code == 200 and r.json()["status"] == wanted else None
    return await wait_until(applied, timeout=30, message=f"household {hid} {wanted} in the registry")


async def members_of(platform, village: Village, hid: str) -> list[str]:
    _, client = platform
    return [m["member_id"] for m in (await client.get(f"/households/{hid}", auth=village.staff)).json()["members"]]


# -- the three flows ------------------------------------------------------------------

async def test_identification_runs_its_eight_steps_and_the_registry_applies_it(platform):
    _, client = platform
    v = await new_village(platform)
    hid = await register(platform, v)
    case_id = await open_case(platform, v, hid)

    await decide(platform, case_id, "group_appraisal", v.committee)
    # First public notice: on the village board (masked name only), not decidable before 7 days.
    async def posted():
        body = (await client.get(f"/villages/{v.code}/notices")).json()
        return body if any(n["case_id"] == case_id for n in body["notices"]) else None
    board_ = await wait_until(posted, timeout=30, message="the notice on the village board")
    [notice] = [n for n in board_["notices"] if n["case_id"] == case_id]
    assert notice["running"] and notice["step_id"] == "first_notice" and notice["case_type_label_zh"] == "贫困户识别"
    assert "*" in notice["head_name_masked"]
    raw = json.dumps(board_, ensure_ascii=False)
    assert "张" not in raw.replace(notice["head_name_masked"], "")  # no plain name anywhere
    problem = await decide(platform, case_id, "first_notice", v.committee, expect=409)
    assert problem["code"] == "notice_period_running"

    # Anyone may object while it runs; the name is kept masked only.
    r = await client.post(f"/cases/{case_id}/objections", json={"content": "该户家中有轿车", "name": "李四海"})
    assert r.status_code == 201, r.text
    objection = r.json()["objection_id"]
    CLOCK.advance(timedelta(days=7, minutes=1))
    r = await client.post(f"/cases/{case_id}/objections", json={"content": "late"})
    assert r.status_code == 409 and r.json()["code"] == "no_open_notice"
    assert (await decide(platform, case_id, "first_notice", v.committee, expect=409))["code"] == "objection_unresolved"
    r = await client.post(f"/cases/{case_id}/objections/{objection}/resolution",
                          json={"finding": "车辆已于2023年过户", "upheld": False}, headers=v.committee)
    assert r.status_code == 200, r.text
    await decide(platform, case_id, "first_notice", v.committee)

    await decide(platform, case_id, "household_survey", v.resident_team)
    await decide(platform, case_id, "village_appraisal", v.committee)
    CLOCK.advance(timedelta(days=7, minutes=1))
    await decide(platform, case_id, "second_notice", v.committee)
    await decide(platform, case_id, "township_review", v.township)

    # County data comparison: results required; a hit needs an override reason or a rejection.
    assert (await decide(platform, case_id, "data_comparison", v.county, expect=409))["code"] == "comparison_missing"
    members = await members_of(platform, v, hid)
    r = await client.post(f"/cases/{case_id}/comparisons", headers=v.department, json={"results": [
        {"member_id": members[0], "source": "vehicles", "hit": True, "detail": "名下农用三轮车"},
        {"member_id": members[1], "source": "vehicles", "hit": False}]})
    assert r.status_code == 200, r.text
    r = await client.post(f"/cases/{case_id}/comparisons", headers=v.department, json={"results": [
        {"member_id": str(uuid.uuid4()), "source": "payroll", "hit": False}]})
    assert r.status_code == 422 and r.json()["code"] == "unknown_member"
    hit = await decide(platform, case_id, "data_comparison", v.county, expect=409)
    assert hit["code"] == "comparison_hit" and hit["hits"] == [{"member_id": members[0], "source": "vehicles"}]
    await decide(platform, case_id, "data_comparison", v.county, override_reason="农用车辆不属于排除情形")

    await decide(platform, case_id, "data_entry", v.information_officer)
    CLOCK.advance(timedelta(days=7, minutes=1))
    done = await decide(platform, case_id, "county_announcement", v.county)
    assert done["closed"] and done["current_step"] is None

    ledger = await ledger_status(platform, v, hid, "identified")
    assert ledger["status_history"][-1]["case_id"] == case_id
    case = (await client.get(f"/cases/{case_id}", auth=v.staff)).json()
    assert case["closed"] and case["outcome"] == "approved" and case["status_effect"] == "identified"
    timeline = (await client.get(f"/cases/{case_id}/timeline", auth=v.staff)).json()
    types = [e["event_type"] for e in timeline["events"]]
    assert types[0] == "CaseOpened" and types[-1] == "CaseConcluded"
    assert types.count("NoticePosted") == 3 and types.count("StepDecided") == 9
    assert "李四海" not in json.dumps(timeline, ensure_ascii=False)


async def test_exit_runs_to_filing_and_the_household_is_lifted_out(platform):
    v = await new_village(platform)
    hid = await register(platform, v, status="identified")
    # An exit is only for a household in poverty; an identification is not.
    _, client = platform
    r = await client.post("/cases", json={"case_type": "identification", "household_id": hid, "reason": "x"},
                          headers=v.cadre)
    assert r.status_code == 409 and r.json()["code"] == "household_status"
    case_id = await open_case(platform, v, hid, "exit")
    await decide(platform, case_id, "group_nomination", v.committee)
    CLOCK.advance(timedelta(days=7, minutes=1))
    await decide(platform, case_id, "first_notice", v.committee)
    await decide(platform, case_id, "household_survey", v.resident_team)
    # The step's role at another level (a township cadre, whose jurisdiction covers the village) may not decide.
    township_cadre = await identity(platform, "cadre", "township", v.code[:9].ljust(12, "0"))
    assert (await decide(platform, case_id, "household_agreement", township_cadre, expect=403))["code"] == \
        "wrong_level"
    await decide(platform, case_id, "household_agreement", v.cadre)
    await decide(platform, case_id, "village_appraisal", v.committee)
    CLOCK.advance(timedelta(days=7, minutes=1))
    await decide(platform, case_id, "second_notice", v.committee)
    await decide(platform, case_id, "township_confirmation", v.township)
    await decide(platform, case_id, "county_spot_check", v.county)
    CLOCK.advance(timedelta(days=7, minutes=1))
    assert (await decide(platform, case_id, "county_announcement", v.county))["closed"]
    ledger = await ledger_status(platform, v, hid, "lifted_out")
    assert ledger["status_history"][-1]["case_id"] == case_id
    # The workflow's projection follows the registry: the household is now lifted out.
    await known_to_workflow(platform, hid, "lifted_out")


async def test_a_rejected_identification_changes_nothing_in_the_register(platform):
    v = await new_village(platform)
    hid = await register(platform, v)
    case_id = await open_case(platform, v, hid)
    problem = await decide(platform, case_id, "group_appraisal", v.committee, "reject", expect=422)
    assert problem["code"] == "reason_required"
    out = await decide(platform, case_id, "group_appraisal", v.committee, "reject", comment="人均收入高于标准")
    assert out["closed"]
    assert (await decide(platform, case_id, "group_appraisal", v.committee, expect=409))["code"] == "case_closed"
    # A new case may be opened once the first is closed; the register still says applicant.
    await open_case(platform, v, hid)
    _, client = platform
    assert (await client.get(f"/households/{hid}", auth=v.staff)).json()["status"] == "applicant"


async def test_an_approved_data_change_request_is_applied_by_the_registry(platform):
    _, client = platform
    v = await new_village(platform)
    hid = await register(platform, v)
    change = {"kind": "income", "target": 2024, "reason": "务工收入核实有误",
              "changes": {"wage": "5200.00", "transfer": "800.00"}}
    r = await client.post(f"/households/{hid}/change-requests", json=change, headers=v.cadre)
    assert r.status_code == 201, r.text
    request_id = r.json()["change_request_id"]
    rejected = await client.post(f"/households/{hid}/change-requests", headers=v.cadre,
                                 json=dict(change, changes={"wage": "5200.00"}, reason="第二次"))
    assert rejected.status_code == 201

    async def cases_opened():
        body = (await client.get("/cases", params={"household_id": hid, "case_type": "data_change"},
                                 auth=v.staff)).json()
        return {c["subject"]: c for c in body["items"]} if body["total"] == 2 else None
    cases = await wait_until(cases_opened, timeout=30, message="the data change cases")
    case = cases[request_id]
    assert case["opened_by"] == v.cadre.principal.id and case["step_role"] == "resident_team"
    # The proposed values stay in the registry; the reviewer reads them there.
    view = (await client.get(f"/households/{hid}/change-requests/{request_id}", auth=v.staff)).json()
    assert view["status"] == "pending" and view["changes"]["wage"] in ("5200.00", "5200")
    await decide(platform, case["case_id"], "resident_team_review", v.resident_team)
    other = cases[rejected.json()["change_request_id"]]
    await decide(platform, other["case_id"], "resident_team_review", v.resident_team, "reject",
                 comment="与入户核实不符")

    async def applied():
        ledger = (await client.get(f"/households/{hid}", auth=v.staff)).json()
        return ledger if "2024" in (ledger.get("incomes") or {}) else None
    ledger = await wait_until(applied, timeout=30, message="the change applied to the ledger")
    income = ledger["incomes"]["2024"]
    assert income["wage"] == "5200.00" and income["transfer"] == "800.00"

    async def closed():
        items = (await client.get(f"/households/{hid}/change-requests", auth=v.staff)).json()["items"]
        return {i["change_request_id"]: i["status"] for i in items} if all(
            i["status"] != "pending" for i in items) else None
    statuses = await wait_until(closed, timeout=30, message="both change requests decided")
    assert statuses == {request_id: "applied", rejected.json()["change_request_id"]: "rejected"}


# -- guards -----------------------------------------------------------------------------

async def test_only_the_steps_role_level_and_jurisdiction_decide_in_order(platform):
    p, client = platform
    v = await new_village(platform)
    other = await new_village(platform)
    hid = await register(platform, v)
    case_id = await open_case(platform, v, hid)

    # Without a token the gateway refuses (a Bearer challenge); the service itself refuses a call
    # without the gateway's identity token, and an anonymous one for a command that needs a reviewer.
    r = await client.post(f"/cases/{case_id}/decisions", json={"step_id": "group_appraisal", "decision": "approve"})
    assert r.status_code == 401 and r.json()["code"] == "missing_token"
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.headers["www-authenticate"].startswith("Bearer")
    async with httpx.AsyncClient(base_url=p["workflow"][0], timeout=30) as direct:
        r = await direct.post(f"/cases/{case_id}/decisions", json={"step_id": "group_appraisal",
                                                                   "decision": "approve"})
        assert r.status_code == 401 and r.json()["code"] == "gateway_identity_required"
        assert r.headers["www-authenticate"].startswith("TPA-Identity")
        r = await direct.post(f"/cases/{case_id}/decisions", json={"step_id": "group_appraisal",
                                                                   "decision": "approve"},
                              headers=internal_headers(None))
        assert r.status_code == 401 and r.json()["code"] == "unauthenticated"
    assert (await decide(platform, case_id, "group_appraisal", v.resident_team, expect=403))["code"] == "wrong_role"
    # A committee member exists only at village level (the gateway keeps no such account at a township):
    # wrong_level is shown with a township cadre in the exit flow.
    with pytest.raises(ValueError):
        principal("village_committee", v.code[:9].ljust(12, "0"))
    assert (await decide(platform, case_id, "group_appraisal", other.committee, expect=403))["code"] == \
        "outside_jurisdiction"
    assert (await decide(platform, case_id, "household_survey", v.resident_team, expect=409))["code"] == "wrong_step"
    assert (await decide(platform, case_id, "no_such_step", v.committee, expect=422))["code"] == "unknown_step"

    r = await client.post(f"/cases/{case_id}/decisions", json={"step_id": "group_appraisal", "decision": "approve"},
                          headers={**v.committee, "If-Match": '"7"'})
    assert r.status_code == 412 and r.json()["code"] == "version_mismatch"
    r = await client.post(f"/cases/{case_id}/decisions", json={"step_id": "group_appraisal", "decision": "approve"},
                          headers={**v.committee, "If-Match": '"1"'})
    assert r.status_code == 200 and r.headers["etag"] == f'"{r.json()["version"]}"'
    assert (await decide(platform, case_id, "group_appraisal", v.committee, expect=409))["code"] == "already_decided"

    # A return goes back to an allowed earlier step, with a reason.
    CLOCK.advance(timedelta(days=7, minutes=1))
    await decide(platform, case_id, "first_notice", v.committee)
    bad = await decide(platform, case_id, "household_survey", v.resident_team, "return", comment="补充材料",
                       return_to="data_entry", expect=422)
    assert bad["code"] == "invalid_return_target"
    back = await decide(platform, case_id, "household_survey", v.resident_team, "return", comment="补充材料",
                        return_to="group_appraisal")
    assert back["current_step"] == "group_appraisal"

    # One open case per household and type.
    r = await client.post("/cases", json={"case_type": "identification", "household_id": hid, "reason": "again"},
                          headers=v.cadre)
    assert r.status_code == 409 and r.json()["code"] == "case_already_open" and r.json()["open_case_id"] == case_id
    r = await client.post("/cases", json={"case_type": "identification", "household_id": str(uuid.uuid4()),
                                          "reason": "x"}, headers=v.cadre)
    assert r.status_code == 404 and r.json()["code"] == "household_unknown"


async def test_an_upheld_objection_blocks_approval_until_the_case_is_returned(platform):
    _, client = platform
    v = await new_village(platform)
    hid = await register(platform, v)
    case_id = await open_case(platform, v, hid)
    await decide(platform, case_id, "group_appraisal", v.committee)
    r = await client.post(f"/cases/{case_id}/objections", json={"content": "该户在城里有商品房"})
    objection = r.json()["objection_id"]
    r = await client.post(f"/cases/{case_id}/objections/{objection}/resolution",
                          json={"finding": "x", "upheld": True}, headers=v.resident_team)
    assert r.status_code == 403  # only the notice step's reviewer records findings
    r = await client.post(f"/cases/{case_id}/objections/{objection}/resolution",
                          json={"finding": "核实属实", "upheld": True}, headers=v.committee)
    assert r.status_code == 200
    r = await client.post(f"/cases/{case_id}/objections/{objection}/resolution",
                          json={"finding": "again", "upheld": True}, headers=v.committee)
    assert r.status_code == 409 and r.json()["code"] == "objection_already_resolved"
    CLOCK.advance(timedelta(days=7, minutes=1))
    assert (await decide(platform, case_id, "first_notice", v.committee, expect=409))["code"] == "objection_upheld"
    out = await decide(platform, case_id, "first_notice", v.committee, "return", comment="异议属实,重新评议",
                       return_to="group_appraisal")
    assert out["current_step"] == "group_appraisal"


async def test_batch_decisions_are_all_or_nothing_with_a_report_per_case(platform):
    p, client = platform
    v = await new_village(platform)
    other = await new_village(platform)
    cases = [await open_case(platform, v, await register(platform, v)) for _ in range(3)]
    elsewhere = await open_case(platform, other, await register(platform, other))
    await decide(platform, cases[2], "group_appraisal", v.committee)  # now at first_notice

    batch = {"village_code": v.code, "step_id": "group_appraisal", "decision": "approve",
             "case_ids": cases + [elsewhere]}
    r = await client.post("/batch-decisions", json=batch, headers=v.committee)
    assert r.status_code == 409 and r.json()["code"] == "batch_refused", r.text
    errors = {e["case_id"]: e["code"] for e in r.json()["errors"]}
    assert errors == {cases[2]: "already_decided", elsewhere: "wrong_village"}
    for case_id in cases[:2]:  # nothing was written for the cases that were fine
        assert (await client.get(f"/cases/{case_id}", auth=v.staff)).json()["version"] == 1

    r = await client.post("/batch-decisions", json=dict(batch, case_ids=cases[:2]), headers=other.committee)
    assert r.status_code == 403 and {e["code"] for e in r.json()["errors"]} == {"outside_jurisdiction"}
    r = await client.post("/batch-decisions", json=dict(batch, case_ids=cases[:2] + cases[:1]),
                          headers=v.committee)
    assert r.status_code == 422 and r.json()["code"] == "duplicate_case"

    r = await client.post("/batch-decisions", json=dict(batch, case_ids=cases[:2]), headers=v.committee)
    assert r.status_code == 200, r.text
    assert [d["current_step"] for d in r.json()["decided"]] == ["first_notice", "first_notice"]
    # A repeated request with the same Idempotency-Key decides nothing twice.
    key = {"Idempotency-Key": str(uuid.uuid4())}
    CLOCK.advance(timedelta(days=7, minutes=1))
    body = dict(batch, step_id="first_notice", case_ids=cases)
    first = await client.post("/batch-decisions", json=body, headers={**v.committee, **key})
    again = await client.post("/batch-decisions", json=body, headers={**v.committee, **key})
    assert first.status_code == again.status_code == 200 and again.headers["idempotent-replayed"] == "true"
    assert first.json() == again.json()
    assert all(d["current_step"] == "household_survey" for d in first.json()["decided"])


async def test_the_inbox_lists_cases_waiting_for_my_role_in_my_jurisdiction(platform):
    p, client = platform
    v = await new_village(platform)
    other = await new_village(platform)
    mine = await open_case(platform, v, await register(platform, v))
    theirs = await open_case(platform, other, await register(platform, other))

    async def inbox(headers):
        return {c["case_id"] for c in (await client.get("/inbox", headers=headers)).json()["items"]}

    async def listed():
        return mine in await inbox(v.committee) and theirs in await inbox(other.committee)
    await wait_until(listed, timeout=30, message="both cases in their committees' inboxes")

    assert theirs not in await inbox(v.committee)
    assert mine not in await inbox(v.resident_team)
    r = await client.get("/inbox")
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
    assert r.json()["code"] == "missing_token"
    async with httpx.AsyncClient(base_url=p["workflow"][0], timeout=30) as direct:
        r = await direct.get("/inbox")
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("TPA-Identity")
        r = await direct.get("/inbox", headers=internal_headers(None))
        assert r.status_code == 401 and r.json()["code"] == "unauthenticated"
    county_wide = await identity(platform, "county_office", "county", v.code[:6])
    r = await client.get("/cases", params={"region": v.code[:6], "case_type": "identification", "status": "open"},
                         headers=county_wide)
    assert mine in {c["case_id"] for c in r.json()["items"]}
    assert mine not in await inbox(county_wide)  # the village decides this step


# -- process managers, overdue steps ------------------------------------------------------

def _alert(alert_id: str, hid: str, village: str, risk: str = "medical_expense") -> dict[str, Any]:
    return {"event_id": str(uuid.uuid4()), "event_type": "ReturnRiskAlertRaised", "schema_version": 1,
            "source": "/tpa/monitoring", "stream_id": alert_id, "stream_type": "alert", "version": 1,
            "global_position": 1, "metadata": {"correlation_id": f"corr-{alert_id}",
                                                "recorded_at": "2025-03-01T00:00:00+00:00"},
            "data": {"alert_id": alert_id, "household_id": hid, "village_code": village, "risk": risk,
                     "rule_id": "medical-expense-over-half-income", "severity": "high",
                     "requires_verification": True, "raised_at": "2025-03-01T00:00:00+00:00"}}


async def test_monitoring_alerts_open_one_verification_case_per_household_and_risk(platform, infra):
    p, client = platform
    v = await new_village(platform)
    hid = await register(platform, v, status="identified")
    # The household is lifted out by a direct decision, then alerts arrive (one redelivered, one repeated).
    r = await client.post(f"/households/{hid}/status-decisions", auth=v.staff, json={
        "decision_event_id": str(uuid.uuid4()), "case_id": "exit-1", "status_effect": "lifted_out",
        "effective_on": "2024-12-01"})
    assert r.status_code == 200, r.text
    await known_to_workflow(platform, hid, "lifted_out")
    first, second = _alert(f"a-{uuid.uuid4().hex[:8]}", hid, v.code), _alert(f"a-{uuid.uuid4().hex[:8]}", hid, v.code)
    unknown_hid = str(uuid.uuid4())
    early = _alert(f"a-{uuid.uuid4().hex[:8]}", unknown_hid, v.code, "disaster")
    async with producer(infra.bootstrap_servers, infra.idempotence) as prod:
        for env in (first, first, second, early):
            await prod.send_and_wait("tpa.monitoring.alert.v1", key=env["stream_id"].encode(),
                                     value=json.dumps(env).encode())

    async def opened():
        body = (await client.get("/cases", params={"household_id": hid, "case_type": "return_risk"},
                                 auth=v.staff)).json()
        return body["items"] if body["total"] else None
    items = await wait_until(opened, timeout=30, message="the verification case")
    await asyncio.sleep(1.5)
    body = (await client.get("/cases", params={"household_id": hid, "case_type": "return_risk"},
                                 auth=v.staff)).json()
    assert body["total"] == 1
    [case] = body["items"]
    assert case["subject"] == "medical_expense" and case["opened_by"] == "system:monitoring"
    assert case["current_step"] == "township_verification" and case["step_role"] == "township_reviewer"
    detail = (await client.get(f"/cases/{case['case_id']}", auth=v.staff)).json()
    assert detail["monitoring_object_type"] == "unstable_lifted_out"
    timeline = (await client.get(f"/cases/{case['case_id']}/timeline", auth=v.staff)).json()
    assert timeline["events"][0]["actor"] == "system:monitoring"
    assert items
    # Verified, noticed and reviewed: the household becomes a monitoring object in the register.
    case_id = case["case_id"]
    await decide(platform, case_id, "township_verification", v.township)
    CLOCK.advance(timedelta(days=5, minutes=1))
    await decide(platform, case_id, "village_notice", v.committee)
    await decide(platform, case_id, "county_review", v.county)
    assert (await decide(platform, case_id, "intervention_plan", v.county))["closed"]

    async def designated():
        ledger = (await client.get(f"/households/{hid}", auth=v.staff)).json()
        return ledger["monitoring"] if ledger.get("monitoring") else None
    monitoring = await wait_until(designated, timeout=30, message="the monitoring designation in the registry")
    assert monitoring["object_type"] == "unstable_lifted_out" and monitoring["case_id"] == case_id
    # An alert raised without asking for verification opens nothing until an operator requests it.
    quiet = _alert(f"a-{uuid.uuid4().hex[:8]}", hid, v.code, "housing_lost")
    quiet["data"]["requires_verification"] = False
    requested = dict(quiet, event_id=str(uuid.uuid4()), event_type="AlertVerificationRequested", version=2, data={
        "alert_id": quiet["stream_id"], "household_id": hid, "village_code": v.code, "risk": "housing_lost",
        "object_type": None, "requested_by": "op-7", "requested_at": "2025-03-02T00:00:00+00:00"})
    async with producer(infra.bootstrap_servers, infra.idempotence) as prod:
        await prod.send_and_wait("tpa.monitoring.alert.v1", key=quiet["stream_id"].encode(),
                                 value=json.dumps(quiet).encode())
        await asyncio.sleep(1.0)
        body = (await client.get("/cases", params={"household_id": hid, "case_type": "return_risk"},
                                 auth=v.staff)).json()
        assert {c["subject"] for c in body["items"]} == {"medical_expense"}
        await prod.send_and_wait("tpa.monitoring.alert.v1", key=quiet["stream_id"].encode(),
                                 value=json.dumps(requested).encode())

    async def verification_opened():
        body = (await client.get("/cases", params={"household_id": hid, "case_type": "return_risk"},
                                 auth=v.staff)).json()
        return {c["subject"] for c in body["items"]} == {"medical_expense", "housing_lost"}
    await wait_until(verification_opened, timeout=30, message="the case opened by AlertVerificationRequested")
    # The alert for a household not yet known waits for its registration.
    pending = await p["workflow"][1].pool.fetchval(
        "SELECT count(*) FROM wf_pending_alerts WHERE household_id = $1", unknown_hid)
    assert pending == 1


async def test_overdue_steps_are_visible_and_published_once(platform):
    p, client = platform
    v = await new_village(platform)
    case_id = await open_case(platform, v, await register(platform, v))
    runtime = p["workflow"][1]
    wf = runtime.state["workflow"]

    async def on_board():
        row = await runtime.pool.fetchrow("SELECT due_at FROM wf_cases WHERE case_id = $1", case_id)
        return row
    row = await wait_until(on_board, timeout=30, message="the case on the board")
    CLOCK.set(row["due_at"] + timedelta(minutes=1))
    r = await client.get("/cases", params={"region": v.code, "overdue": "true"}, auth=v.staff)
    assert [c["case_id"] for c in r.json()["items"]] == [case_id] and r.json()["items"][0]["overdue"]
    assert await wf.flag_overdue(runtime.pool) >= 1

    async def flagged():
        return await runtime.pool.fetchval("SELECT overdue_flagged FROM wf_cases WHERE case_id = $1", case_id)
    await wait_until(flagged, timeout=30, message="StepOverdue on the board")
    await wf.flag_overdue(runtime.pool)
    types = [e["event_type"] for e in (await client.get(f"/cases/{case_id}/timeline",
                                                        auth=v.staff)).json()["events"]]
    assert types.count("StepOverdue") == 1
    # Deciding the step clears it; the next step has its own time limit.
    await decide(platform, case_id, "group_appraisal", v.committee)

    async def cleared():
        r = await client.get("/cases", params={"region": v.code, "overdue": "true"}, auth=v.staff)
        return r.json()["total"] == 0
    await wait_until(cleared, timeout=30, message="the decided step no longer overdue")


async def test_an_assistance_need_is_passed_up_and_resolved(platform):
    _, client = platform
    v = await new_village(platform)
    hid = await register(platform, v)
    case_id = await open_case(platform, v, hid, "assistance_need", subject="housing_repair")
    r = await client.post(f"/cases/{case_id}/escalation", json={"reason": "村级无力解决"}, headers=v.committee)
    assert r.status_code == 200 and r.json()["current_step"] == "township_handling"
    r = await client.post(f"/cases/{case_id}/resolution", json={"what_was_done": "x"}, headers=v.committee)
    assert r.status_code == 403 and r.json()["code"] == "wrong_role"
    r = await client.post(f"/cases/{case_id}/resolution", json={"what_was_done": "纳入危房改造计划"},
                          headers=v.township)
    assert r.status_code == 200 and r.json()["closed"]


# -- jurisdiction ---------------------------------------------------------------------------

async def test_a_user_of_another_county_neither_sees_nor_acts_on_this_countys_cases(platform):
    _, client = platform
    v = await new_village(platform)
    elsewhere = await new_village(platform, outside=v)
    reader, decider = elsewhere.information_officer, elsewhere.county  # case:read and case:open; case:decide
    hid = await register(platform, v)
    case_id = await open_case(platform, v, hid)
    need = await open_case(platform, v, hid, "assistance_need", subject="housing_repair")
    unknown = str(uuid.uuid4())

    # One case and its timeline: 403 for a case outside the caller's jurisdiction, 404 stays 404.
    assert (await client.get(f"/cases/{case_id}", auth=v.staff)).status_code == 200
    assert (await client.get(f"/cases/{case_id}/timeline", auth=v.staff)).status_code == 200
    for path in (f"/cases/{case_id}", f"/cases/{case_id}/timeline"):
        r = await client.get(path, headers=reader)
        assert r.status_code == 403 and r.json()["code"] == "outside_jurisdiction", r.text
        assert r.headers["content-type"].startswith("application/problem+json")
    for path in (f"/cases/{unknown}", f"/cases/{unknown}/timeline"):
        assert (await client.get(path, headers=reader)).status_code == 404

    # Opening a case for a household of this county: refused before anything about the household's cases.
    for body in ({"case_type": "identification", "household_id": hid, "reason": "x"},  # one is open: not a 409
                 {"case_type": "assistance_need", "household_id": hid, "reason": "x", "subject": "schooling"}):
        r = await client.post("/cases", json=body, headers=reader)
        assert r.status_code == 403 and r.json()["code"] == "outside_jurisdiction", r.text

    # The case list shows only the caller's jurisdiction, whatever the filters say.
    async def listed():
        body = (await client.get("/cases", params={"household_id": hid}, auth=v.staff)).json()
        return body if body["total"] == 2 else None
    await wait_until(listed, timeout=30, message="both cases on the board")
    for params in ({}, {"household_id": hid}, {"region": v.code}, {"region": v.code[:6]}, {"status": "open"}):
        r = await client.get("/cases", params={**params, "limit": 500}, headers=reader)
        assert r.status_code == 200, r.text
        assert not {case_id, need} & {c["case_id"] for c in r.json()["items"]}, params
        assert all(c["village_code"].startswith(elsewhere.code[:6]) for c in r.json()["items"])
        if params.get("region") or params.get("household_id"):
            assert r.json()["total"] == 0
    r = await client.get("/cases", params={"region": v.code}, headers=v.information_officer)
    assert {case_id, need} <= {c["case_id"] for c in r.json()["items"]}
    r = await client.get("/cases")
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")

    # Commands on a case outside the caller's jurisdiction are refused before the step, the role or the
    # version is looked at (a county office deciding a committee's step, a stale If-Match).
    r = await client.post(f"/cases/{case_id}/decisions", json={"step_id": "group_appraisal", "decision": "approve"},
                          headers={**decider, "If-Match": '"7"'})
    assert r.status_code == 403 and r.json()["code"] == "outside_jurisdiction", r.text
    r = await client.post(f"/cases/{case_id}/comparisons", headers=decider, json={"results": [
        {"member_id": str(uuid.uuid4()), "source": "vehicles", "hit": False}]})
    assert r.status_code == 403 and r.json()["code"] == "outside_jurisdiction", r.text
    r = await client.post(f"/cases/{case_id}/comparisons", headers=elsewhere.department, json={"results": [
        {"member_id": str(uuid.uuid4()), "source": "vehicles", "hit": False}]})
    assert r.status_code == 403 and r.json()["code"] == "outside_jurisdiction", r.text
    r = await client.post(f"/cases/{need}/escalation", json={"reason": "x"}, headers=elsewhere.committee)
    assert r.status_code == 403 and r.json()["code"] == "outside_jurisdiction", r.text
    r = await client.post(f"/cases/{need}/resolution", json={"what_was_done": "x"}, headers=elsewhere.committee)
    assert r.status_code == 403 and r.json()["code"] == "outside_jurisdiction", r.text
    r = await client.post("/batch-decisions", headers=decider, json={
        "village_code": v.code, "step_id": "group_appraisal", "decision": "approve", "case_ids": [case_id]})
    assert r.status_code == 403 and [e["code"] for e in r.json()["errors"]] == ["outside_jurisdiction"], r.text

    # The notice board and objections stay public: anonymous callers read and object.
    await decide(platform, case_id, "group_appraisal", v.committee)

    async def posted():
        r = await client.get(f"/villages/{v.code}/notices")
        assert r.status_code == 200, r.text
        return r.json() if any(n["case_id"] == case_id for n in r.json()["notices"]) else None
    board_ = await wait_until(posted, timeout=30, message="the notice on the village board")
    assert [n["running"] for n in board_["notices"] if n["case_id"] == case_id] == [True]
    r = await client.post(f"/cases/{case_id}/objections", json={"content": "该户有经营性收入"})
    assert r.status_code == 201, r.text
    objection = r.json()["objection_id"]
    r = await client.get("/case-types")
    assert r.status_code == 200 and "identification" in r.json()["case_types"]
    # ... but the finding is recorded only within the jurisdiction.
    r = await client.post(f"/cases/{case_id}/objections/{objection}/resolution",
                          json={"finding": "x", "upheld": False}, headers=elsewhere.committee)
    assert r.status_code == 403 and r.json()["code"] == "outside_jurisdiction", r.text
    r = await client.post(f"/cases/{case_id}/objections/{objection}/resolution",
                          json={"finding": "经营收入已计入", "upheld": False}, headers=v.committee)
    assert r.status_code == 200, r.text
    # Nothing the outsiders tried was written; no other case was opened for the household.
    timeline = (await client.get(f"/cases/{case_id}/timeline", auth=v.staff)).json()
    assert [e["event_type"] for e in timeline["events"]][-2:] == ["ObjectionFiled", "ObjectionResolved"]
    assert all(e["actor"] != decider.principal.id for e in timeline["events"])
    r = await client.get("/cases", params={"household_id": hid}, auth=v.staff)
    assert {c["case_id"] for c in r.json()["items"]} == {case_id, need}


# -- configuration, projections -------------------------------------------------------------

def test_an_invalid_case_type_stops_the_service(tmp_path: Path):
    from eventkit.settings import load_settings
    from services.workflow.app import build

    (tmp_path / "broken.yaml").write_text("id: broken\nname: Broken\nversion: 1\nstatus_effect: null\nsteps:\n"
                                          "  - {id: a, name: A, kind: notice, role: mayor, level: village}\n")
    with pytest.raises(DefinitionError) as err:
        build(load_settings("workflow", case_types_dir=str(tmp_path)))
    assert "broken.yaml" in str(err.value) and "role" in str(err.value)


def test_tpa_serve_refuses_an_invalid_case_type_with_a_clear_message(tmp_path: Path):
    import os
    import subprocess
    import sys

    (tmp_path / "x.yaml").write_text("id: x\nname: X\nversion: 1\nstatus_effect: null\nsteps:\n"
                                     "  - {id: a, name: A, kind: notice, role: village_committee, level: village,"
                                     " min_days: 0}\n")
    env = {**os.environ, "TPA_WORKFLOW_CASE_TYPES_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "services.cli", "serve", "workflow"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "x.yaml: steps[a].min_days: must be a whole number >= 1, got 0" in done.stderr


async def test_the_case_board_equals_a_replay_of_the_event_store(platform):
    """Runs last in this module: every case the other tests made is compared."""
    p, _ = platform
    runtime = p["workflow"][1]
    wf = runtime.state["workflow"]
    events = await runtime.store.read_all(0, 1_000_000)
    streams: dict[str, list] = {}
    for e in events:
        if e.stream_type == "case":
            streams.setdefault(e.stream_id, []).append(e)
    assert len(streams) >= 10

    async def caught_up():
        rows = await runtime.pool.fetch("SELECT case_id, version FROM wf_cases")
        return {r["case_id"]: r["version"] for r in rows} == {k: v[-1].version for k, v in streams.items()}
    await wait_until(caught_up, timeout=30, message="the case board to catch up")
    async with runtime.pool.acquire() as conn:
        for case_id, stream in streams.items():
            expected = board.fold(stream, wf.case_types)
            stored = await board.load_doc(conn, case_id)
            assert stored == expected, case_id
            case = await wf.load(conn, case_id)  # the aggregate agrees on where the case stands
            assert stored["case"]["current_step"] == case.current_step
            assert (stored["case"]["status"] == "closed") == case.closed
            assert stored["case"]["open_objections"] == len(case.open_objections())
