"""Data exchanges through the gateway, end to end: bulk comparison (100 000 IDs, synchronous and as
a file job with progress), the single status check, household cards, the national reconciliation
and inbound death records; every disclosure lands in the access log, every refusal too."""

from __future__ import annotations

import asyncio
from datetime import date, timedelta

import httpx
import pytest_asyncio

from eventkit.testing import wait_until
from services.registry.identity import check_character

from .conftest import village_code
from .harness import ActAs, bearer, client_principal, ensure_account, principal, running_platform
from .registry_helpers import household, member, seed_village

API = "/api/v1"



def fake_ids(n: int, address: str = "110101") -> list[str]:
    """n distinct valid ID numbers nobody in the tests is registered with."""
    out = []
    start = date(1950, 1, 1)
    for i in range(n):
        first17 = f"{address}{start + timedelta(days=i // 900):%Y%m%d}{i % 900 + 100:03d}"
        out.append(first17 + check_character(first17))
    return out


@pytest_asyncio.fixture(scope="module")
async def world(infra, module_databases):
    import uuid
    village = village_code()
    other_village = village_code()
    async with running_platform(infra, module_databases, f"x{uuid.uuid4().hex[:8]}") as p:
        async with p["registry"][1].pool.acquire() as conn:
            await seed_village(conn, village)
            await seed_village(conn, other_village)
        body = household(village, members=[
            member("张国强", date(1972, 5, 1), "head"),
            member("张小明", date(2012, 9, 1), "20", facts={"schooling_stage": "junior"})])
        other = household(other_village)
        async with httpx.AsyncClient(base_url=p["gateway"][0] + API, timeout=60) as http:
            r = await http.post("/households", json=body, auth=ActAs(p, village=village))
            assert r.status_code == 201, r.text
            hid = r.json()["household_id"]
            r = await http.post("/households", json=other, auth=ActAs(p, village=other_village))
            assert r.status_code == 201, r.text
            other_hid = r.json()["household_id"]
            officer = ActAs(p, village=village)

            async def projected():
                ok = (await http.get(f"/households/{hid}", auth=officer)).headers.get("x-tpa-read-model") == "ledger"
                ok2 = (await http.get(f"/households/{other_hid}", auth=ActAs(p, village=other_village))
                       ).headers.get("x-tpa-read-model") == "ledger"
                return ok and ok2
            await wait_until(projected, timeout=60, message="both households in the ledger")
            yield {"p": p, "http": http, "village": village, "other_village": other_village, "hid": hid,
                   "other_hid": other_hid, "body": body, "other": other}


async def as_client(p, scopes, jurisdiction, cid=None):
    who = client_principal(cid or f"client-{'-'.join(s.split(':')[-1] for s in scopes)}-{jurisdiction[:6]}",
                           tuple(scopes), jurisdiction)
    await ensure_account(p["gateway"][1], who)
    return bearer(who)


async def access_log(w, **params):
    auditor = principal("auditor", w["village"][:6])
    await ensure_account(w["p"]["gateway"][1], auditor)
    r = await w["http"].get("/access-log", params=params, headers=bearer(auditor))
    assert r.status_code == 200, r.text
    return r.json()["items"]


async def test_bulk_comparison_answers_per_id_with_the_purposes_facts_and_is_audited(world):
    w = world
    headers = await as_client(w["p"], ["comparison:education"], w["village"][:6])
    child, head = w["body"]["members"][1]["id_number"], w["body"]["members"][0]["id_number"]
    outsider = w["other"]["members"][0]["id_number"]
    ids = [child, head, fake_ids(1)[0], "12345", outsider]
    r = await w["http"].post("/comparisons", json={"purpose": "education", "id_numbers": ids}, headers=headers)
    assert r.status_code == 200, r.text
    body = r.json()
    assert "_disclosed" not in body and "x-tpa-disclosed" not in r.headers
    res = body["results"]
    assert res[0] == {"index": 0, "id_masked": res[0]["id_masked"], "in_register": True,
                      "household_status": "applicant", "schooling_stage": "junior"}
    assert res[1]["in_register"] is True and "attribute" not in res[1]  # not an education fact
    assert res[2]["in_register"] is False and res[2]["household_status"] is None
    assert res[3]["error"] == "id_format"
    assert res[4]["in_register"] is False  # registered, but in another county: not this client's business
    assert child not in r.text and head not in r.text
    log = await access_log(w, record=w["hid"])
    mine = [e for e in log if e["principal_type"] == "client" and e["route"] == "POST /api/v1/comparisons"]
    assert mine and mine[0]["purpose"] == "comparison:education" and mine[0]["count"] == 2
    assert w["other_hid"] not in mine[0]["records"]


async def test_a_purpose_outside_the_clients_scopes_is_refused_and_recorded(world):
    w = world
    headers = await as_client(w["p"], ["comparison:health_insurance"], w["village"][:6], "hi-system-1")
    r = await w["http"].post("/comparisons", json={"purpose": "education", "id_numbers": fake_ids(2)},
                             headers=headers)
    assert r.status_code == 403 and r.json()["code"] == "purpose_not_allowed"
    denied = [e for e in await access_log(w, principal_id="hi-system-1", kind="denied")]
    assert denied and denied[0]["reason"] == "purpose_not_allowed"
    ok = await w["http"].post("/comparisons", json={"purpose": "health_insurance",
                                                    "id_numbers": [w["body"]["members"][0]["id_number"]]},
                              headers=headers)
    assert ok.status_code == 200
    assert set(ok.json()["results"][0]) == {"index", "id_masked", "in_register", "household_status", "attribute",
                                            "monitoring_object_type"}


async def test_one_hundred_thousand_ids_in_one_request(world):
    w = world
    headers = await as_client(w["p"], ["comparison:civil_affairs"], w["village"][:6])
    ids = fake_ids(99_999) + [w["body"]["members"][0]["id_number"]]
    r = await w["http"].post("/comparisons", json={"purpose": "civil_affairs", "id_numbers": ids}, headers=headers)
    assert r.status_code == 200, r.text[:500]
    body = r.json()
    assert body["summary"]["count"] == 100_000 and body["summary"]["matched"] == 1
    assert body["results"][-1]["in_register"] is True and body["results"][-1]["attribute"] == "general"
    too_many = await w["http"].post("/comparisons", json={"purpose": "civil_affairs",
                                                          "id_numbers": ids + fake_ids(1, "110102")},
                                    headers=headers)
    assert too_many.status_code == 422


async def test_a_file_of_one_hundred_thousand_ids_is_a_job_with_progress(world):
    w = world
    headers = await as_client(w["p"], ["comparison:education"], w["village"][:6])
    child = w["body"]["members"][1]["id_number"]
    ids = fake_ids(99_998, "110105") + [child, "not-an-id"]
    csv = ("身份证号\n" + "\n".join(ids) + "\n").encode("utf-8")
    r = await w["http"].post("/comparison-jobs", params={"purpose": "education"}, content=csv,
                             headers={**headers, "Content-Type": "text/csv"})
    assert r.status_code == 202, r.text
    job = r.json()
    assert r.headers["location"] == f"{API}/comparison-jobs/{job['job_id']}"
    assert job["total"] == 100_000
    seen = []

    async def finished():
        s = (await w["http"].get(f"/comparison-jobs/{job['job_id']}", headers=headers)).json()
        seen.append(s["processed"])
        return s if s["status"] == "done" else None
    done = await wait_until(finished, timeout=120, interval=0.2, message="the comparison job")
    assert done["processed"] == 100_000 and done["progress"] == 1.0 and done["matched"] == 1
    assert done["invalid"] == 1
    assert seen == sorted(seen)  # progress only goes forward
    results = await w["http"].get(f"/comparison-jobs/{job['job_id']}/results",
                                  params={"offset": 99_990, "limit": 100}, headers=headers)
    assert results.status_code == 200
    tail = results.json()["results"]
    assert tail[-2]["row"] == 100_000 and tail[-2]["in_register"] is True and tail[-2]["schooling_stage"] == "junior"
    assert tail[-1]["row"] == 100_001 and tail[-1]["error"] == "id_format"
    assert "_disclosed" not in results.json()
    as_csv = await w["http"].get(f"/comparison-jobs/{job['job_id']}/results", params={"format": "csv"},
                                 headers=headers)
    assert as_csv.status_code == 200 and "x-tpa-disclosed" not in as_csv.headers
    assert as_csv.text.count("\n") == 100_001 and child not in as_csv.text
    log = await access_log(w, record=w["hid"])
    assert any(e["route"].endswith("/results") and e["purpose"] == "comparison:education" for e in log)
    # another caller's job is unknown to them
    stranger = await as_client(w["p"], ["comparison:education"], w["village"][:6], "edu-other")
    assert (await w["http"].get(f"/comparison-jobs/{job['job_id']}", headers=stranger)).status_code == 404


async def test_the_single_status_check(world):
    w = world
    desk = await as_client(w["p"], ["status:read"], w["village"][:6], "hospital-desk")
    r = await w["http"].post("/status-checks", json={"id_number": w["body"]["members"][0]["id_number"]},
                             headers=desk)
    assert r.status_code == 200, r.text
    assert r.json() == {"id_masked": r.json()["id_masked"], "in_register": True, "household_status": "applicant",
                        "purpose": None}
    bad = await w["http"].post("/status-checks", json={"id_number": "620102197205011230"}, headers=desk)
    assert bad.status_code == 422 and bad.json()["code"] == "id_check_digit"
    assert any(e["principal_id"] == "hospital-desk" for e in await access_log(w, record=w["hid"]))


async def test_household_card_public_view_is_masked_and_the_link_needs_jurisdiction(world):
    w = world
    officer = ActAs(w["p"], village=w["village"])
    r = await w["http"].get(f"/households/{w['hid']}/card", auth=officer)
    assert r.status_code == 200, r.text
    url = r.json()["url"]
    assert r.json()["qr_svg"].startswith("<svg")
    path = url.split("/api/v1", 1)[1]
    async with httpx.AsyncClient(base_url=w["p"]["gateway"][0] + API) as anonymous:
        page = await anonymous.get(path)
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        head = w["body"]["members"][0]
        assert head["name"] not in page.text and head["id_number"] not in page.text
        assert "张*" in page.text or "*" in page.text
        forged = path[:-3] + ("AAA" if not path.endswith("AAA") else "BBB")
        assert (await anonymous.get(forged)).status_code == 404
    outsider = ActAs(w["p"], village=w["other_village"])
    assert (await w["http"].get(f"/households/{w['hid']}/card", auth=outsider)).status_code == 403


async def test_national_reconciliation_reports_differences_per_household_and_field(world):
    w = world
    m = w["body"]["members"]
    lines = ["household_ref,village_code,household_status,id_number,name,relation,per_capita_income,income_year",
             f"N-001,{w['village']},identified,{m[0]['id_number']},{m[0]['name']},head,,",
             f"N-002,{w['village']},identified,{fake_ids(1, '110108')[0]},王五,head,,"]
    officer = ActAs(w["p"], who=principal("information_officer", w["village"][:6]))
    r = await w["http"].post("/reconciliations/national", params={"year": 2024}, auth=officer,
                             content="\n".join(lines).encode(), headers={"Content-Type": "text/csv"})
    assert r.status_code == 200, r.text
    items = r.json()["items"]
    kinds = {(i["field"], i["kind"]) for i in items}
    assert ("status", "different") in kinds  # applicant in the register, identified nationally
    assert any(i["kind"] == "missing_in_registry" and i["household_ref"] == "N-002" for i in items)
    assert any(i["kind"] == "different" and i["field"] in ("member", "member_count") and i["household_id"] == w["hid"]
               for i in items)  # the child is missing nationally
    assert m[0]["id_number"] not in r.text and m[0]["name"] not in r.text
    bad = await w["http"].post("/reconciliations/national", params={"year": 2024}, auth=officer,
                               content=(lines[0] + f"\nN-9,{w['village']},identified,123,x,head,,").encode(),
                               headers={"Content-Type": "text/csv"})
    assert bad.status_code == 422 and bad.json()["errors"][0]["row"] == 2
    cadre = ActAs(w["p"], who=principal("cadre", w["village"]))
    refused = await w["http"].post("/reconciliations/national", params={"year": 2024}, auth=cadre,
                                   content="\n".join(lines).encode(), headers={"Content-Type": "text/csv"})
    assert refused.status_code == 403


async def test_death_records_open_reviewed_member_removals_once(world):
    w = world
    civil = await as_client(w["p"], ["inbound:deaths"], w["village"][:6], "civil-registration")
    child = w["body"]["members"][1]
    data = ("id_number,name,date_of_death,certificate_ref\n"
            f"{child['id_number']},{child['name']},2025-01-02,D-1\n"
            f"{fake_ids(1, '110109')[0]},某人,2025-01-03,D-2\n").encode()
    r = await w["http"].post("/inbound/deaths", content=data, headers={**civil, "Content-Type": "text/csv"})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["summary"]["requested"] == 1 and body["summary"]["not_found"] == 1
    cr = body["requested"][0]["change_request_id"]
    officer = ActAs(w["p"], village=w["village"])
    view = await w["http"].get(f"/households/{w['hid']}/change-requests/{cr}", auth=officer)
    assert view.status_code == 200 and view.json()["kind"] == "member_removal" and view.json()["status"] == "pending"
    again = await w["http"].post("/inbound/deaths", content=data, headers={**civil, "Content-Type": "text/csv"})
    assert again.status_code == 409
    broken = await w["http"].post("/inbound/deaths", content=b"id_number,name,date_of_death\n123,x,2025-01-01\n",
                                  headers={**civil, "Content-Type": "text/csv"})
    assert broken.status_code == 422 and broken.json()["errors"][0]["row"] == 2


async def test_size_and_rate_limits_answer_413_and_429(world):
    w = world
    headers = await as_client(w["p"], ["comparison:education"], w["village"][:6])
    huge = b'{"purpose":"education","id_numbers":["' + b"1" * (9 * 1024 * 1024) + b'"]}'
    r = await w["http"].post("/comparisons", content=huge, headers={**headers, "Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["code"] == "payload_too_large"
    limiter = w["p"]["gateway"][1].state["limiter"]
    saved = (limiter.per_minute, limiter.burst)
    desk = await as_client(w["p"], ["status:read"], w["village"][:6], "flood")
    limiter.per_minute, limiter.burst = 60, 3
    try:
        flood = await asyncio.gather(*(w["http"].post("/status-checks", json={"id_number": fake_ids(1)[0]},
                                                      headers=desk) for _ in range(6)))
    finally:
        limiter.per_minute, limiter.burst = saved
    codes = [f.status_code for f in flood]
    assert codes.count(429) >= 2 and 200 in codes
    limited = next(f for f in flood if f.status_code == 429)
    assert int(limited.headers["retry-after"]) >= 1 and limited.json()["code"] == "rate_limited"


async def test_a_reported_death_removes_the_member_once_the_resident_team_approves(infra, databases, unique):
    village = village_code()
    async with running_platform(infra, databases, unique("d"), services=("registry", "workflow", "gateway")) as p:
        async with p["registry"][1].pool.acquire() as conn:
            await seed_village(conn, village)
        async with httpx.AsyncClient(base_url=p["gateway"][0] + API, timeout=30) as http:
            body = household(village, members=[member("刘长青", date(1950, 3, 3), "head"),
                                               member("刘秀兰", date(1952, 4, 4), "10", male=False)])
            officer = ActAs(p, village=village)
            r = await http.post("/households", json=body, auth=officer)
            assert r.status_code == 201, r.text
            hid = r.json()["household_id"]

            async def projected():
                return (await http.get(f"/households/{hid}", auth=officer)).headers.get("x-tpa-read-model") == "ledger"
            await wait_until(projected, timeout=30, message="the household in the ledger")
            civil = await as_client(p, ["inbound:deaths"], village[:6], "civil-registration-e2e")
            spouse = body["members"][1]
            data = f"身份证号,姓名,死亡日期\n{spouse['id_number']},{spouse['name']},2025年1月2日\n".encode()
            r = await http.post("/inbound/deaths", content=data, headers={**civil, "Content-Type": "text/csv"})
            assert r.status_code == 201 and r.json()["summary"]["requested"] == 1, r.text
            member_id = r.json()["requested"][0]["member_id"]
            team = principal("resident_team", village, "team-e2e")
            await ensure_account(p["gateway"][1], team)

            async def opened():  # the workflow opens a data_change case from ChangeRequested
                page = (await http.get("/inbox", headers=bearer(team))).json()
                return next((c for c in page["items"] if c["case_type"] == "data_change"), None)
            case = await wait_until(opened, timeout=30, message="the data_change case in the team's inbox")
            ledger = (await http.get(f"/households/{hid}", auth=officer)).json()
            assert all(m["active"] for m in ledger["members"])  # nothing happens before the review
            r = await http.post(f"/cases/{case['case_id']}/decisions", headers=bearer(team),
                                json={"step_id": "resident_team_review", "decision": "approve"})
            assert r.status_code == 200, r.text

            async def removed():
                doc = (await http.get(f"/households/{hid}", auth=officer)).json()
                m = next(m for m in doc["members"] if m["member_id"] == member_id)
                return m if not m["active"] else None
            gone = await wait_until(removed, timeout=30, message="the member removed in the ledger")
            assert gone["removed"]["reason"] == "death" and gone["removed"]["on"] == "2025-01-02"
