"""Subsidy records from other departments, end to end through the gateway (registry, funds, gateway).

Departments' systems (clients with ``inbound:subsidies``) send a quarter's payments as CSV or XLSX;
each accepted row becomes a department payment in funds: the household's funds and the village's
disclosure show it, the anomaly rules judge it, the same file twice is a 409, a bad row refuses the
whole file with its row number, and a client sees only its own jurisdiction's households.

The funds service here holds the registry's ID-number hashing key (``build_kwargs``), so rows can
name people by ID number; one test names them by household and member id instead.
"""

from __future__ import annotations

import csv
import io
import uuid
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

import httpx
import pytest_asyncio

from eventkit.testing import wait_until
from services.funds.domain import CHINA_TZ
from services.registry.identity import check_character

from .conftest import village_code
from .harness import TEST_HMAC_KEY, ActAs, client_principal, principal, running_platform
from .registry_helpers import household, seed_village

API = "/api/v1"
TODAY = datetime.now(CHINA_TZ).date()


def previous_quarter(today: date) -> tuple[str, list[date]]:
    """The last complete quarter, and the 5th of each of its months (all in the past)."""
    q = (today.month - 1) // 3 + 1
    year, q = (today.year, q - 1) if q > 1 else (today.year - 1, 4)
    return f"{year}-Q{q}", [date(year, 3 * q - 2 + i, 5) for i in range(3)]


QUARTER, DAYS = previous_quarter(TODAY)
YEAR = int(QUARTER[:4])


@pytest_asyncio.fixture(scope="module")
async def platform(infra, module_databases):
    async with running_platform(infra, module_databases, f"fs{uuid.uuid4().hex[:8]}",
                                services=("registry", "funds", "gateway"),
                                build_kwargs={"funds": {"id_number_key": TEST_HMAC_KEY.encode()}}) as p:
        yield p


@dataclass
class Town:
    p: dict[str, Any]
    v: str
    client: httpx.AsyncClient  # the usual post for each route's action over the village
    h: dict[str, Any]          # the household: ids and the members' ID numbers

    def as_(self, who) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.p["gateway"][0] + API, timeout=60, auth=ActAs(self.p, who=who))

    def department(self, *scopes: str, county: str | None = None) -> httpx.AsyncClient:
        """A department's system of the village's county (or ``county``) with ``inbound:subsidies``."""
        who = client_principal(f"dept-{uuid.uuid4().hex[:12]}", ("inbound:subsidies", *scopes),
                               county or self.v[:6].ljust(12, "0"))
        return self.as_(who)


@pytest_asyncio.fixture
async def town(platform) -> Any:
    v = village_code()
    async with platform["registry"][1].pool.acquire() as conn:
        await seed_village(conn, v)
    async with httpx.AsyncClient(base_url=platform["gateway"][0] + API, timeout=60,
                                 auth=ActAs(platform, village=v)) as client:
        body = household(v)
        r = await client.post("/households", json=body)
        assert r.status_code == 201, r.text
        hid = r.json()["household_id"]
        r = await client.post(f"/households/{hid}/status-decisions", json={
            "decision_event_id": str(uuid.uuid4()), "case_id": f"case-{hid[:8]}", "status_effect": "identified",
            "effective_on": "2024-04-01"})
        assert r.status_code == 200, r.text
        members = {m["relation"]: m["member_id"] for m in (await client.get(f"/households/{hid}")).json()["members"]}
        ids = {m["relation"]: m["id_number"] for m in body["members"]}
        pool = platform["funds"][1].pool

        async def known() -> bool:
            return await pool.fetchval(
                "SELECT count(*) FILTER (WHERE event_type = 'MemberAdded') = 3 AND"
                " count(*) FILTER (WHERE event_type = 'HouseholdStatusChanged') = 1"
                " FROM fd_household_events WHERE household_id = $1", hid)
        await wait_until(known, timeout=60, message=f"household {hid} in the funds service")
        h = {"household_id": hid, "head": members["head"], "spouse": members["10"], "child": members["20"],
             "head_id": ids["head"], "spouse_id": ids["10"], "child_id": ids["20"]}
        yield Town(platform, v, client, h)


ZH = ["身份证号", "姓名", "政策代码", "金额", "发放日期", "发放渠道", "业务流水号"]


def csv_file(header: list[str], rows: list[list[Any]]) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue().encode("utf-8-sig")


def xlsx_file(header: list[str], rows: list[list[Any]]) -> bytes:
    from openpyxl import Workbook

    wb = Workbook()
    ws = wb.active
    ws.title = "补贴发放"
    ws.append(header)
    for row in rows:
        ws.append(row)
    out = io.BytesIO()
    wb.save(out)
    return out.getvalue()


async def send(client: httpx.AsyncClient, data: bytes, department: str, expect: int, **params: Any) -> dict[str, Any]:
    r = await client.post("/subsidy-records", params={"quarter": QUARTER, "department": department, **params},
                          content=data, headers={"content-type": "text/csv"})
    assert r.status_code == expect, r.text
    return r.json()


def fake_id() -> str:
    """A valid ID number nobody is registered with."""
    first17 = f"110101{date(1950, 1, 1) + timedelta(days=uuid.uuid4().int % 20000):%Y%m%d}{uuid.uuid4().int % 900 + 100}"
    return first17 + check_character(first17)


async def funds_of(t: Town, policy_code: str, paid: str) -> dict[str, Any]:
    """The household's funds once the ledger shows ``paid`` for ``policy_code``."""
    async def shown():
        body = (await t.client.get(f"/households/{t.h['household_id']}/funds", params={"year": YEAR})).json()
        rows = [r for r in body.get("rows", []) if r["policy_code"] == policy_code and r["paid"] == paid]
        return body if rows else None
    return await wait_until(shown, timeout=60, message=f"{policy_code} {paid} in the household's funds")


async def disbursements(t: Town) -> int:
    return await t.p["funds"][1].pool.fetchval("SELECT count(*) FROM fd_disbursements WHERE household_id = $1",
                                              t.h["household_id"])


# -- a quarter imported -------------------------------------------------------------------------

async def test_a_department_imports_a_quarter_and_the_household_funds_and_disclosure_show_it(town):
    t, h = town, town.h
    tag = uuid.uuid4().hex[:6]
    data = csv_file(ZH, [[h["head_id"], "张国强", "minimum_living_tier1", "310.00", d.strftime("%Y/%-m/%-d"),
                          "一卡通", f"MZ-{tag}-{i}"] for i, d in enumerate(DAYS)])
    async with t.department("comparison:civil_affairs") as civil:
        report = await send(civil, data, "civil_affairs", 201)
        assert report["counts"] == {"recorded": 3, "already_recorded": 0, "skipped": 0}
        assert [r["row"] for r in report["recorded"]] == [2, 3, 4]
        assert report["total_amount"] == "930.00" and report["anomalies_detected"] == 0
        # The report names no household, member or ID number.
        text = str(report)
        assert h["household_id"] not in text and h["head"] not in text and h["head_id"] not in text

        # The same file again: 409, nothing more recorded.
        again = await send(civil, data, "civil_affairs", 409)
        assert again["code"] == "already_imported" and again["import_id"] == report["import_id"]

    body = await funds_of(t, "minimum_living_tier1", "930.00")
    [row] = [r for r in body["rows"] if r["policy_code"] == "minimum_living_tier1"]
    assert (row["basis"], row["year"], row["payments"]) == ("policy", YEAR, 3)

    # An education system names the pupil by the register's ids, in a workbook sent as a multipart upload.
    workbook = xlsx_file(["household_id", "member_id", "policy_code", "amount", "paid_on", "channel", "reference",
                          "period"],
                         [[h["household_id"], h["child"], "edu_boarding_junior", 625, DAYS[1], "student_aid_card",
                           f"JY-{tag}", f"{YEAR}-S{1 if DAYS[1].month <= 6 else 2}"]])
    async with t.department() as education:
        r = await education.post("/subsidy-records", params={"quarter": QUARTER, "department": "education"},
                                 files={"file": ("资助发放.xlsx", workbook)})
        assert r.status_code == 201, r.text
        assert r.json()["counts"]["recorded"] == 1
        did = r.json()["recorded"][0]["disbursement_id"]
    await funds_of(t, "edu_boarding_junior", "625.00")

    # The payment is a department's: the platform does not reverse it.
    r = await t.client.post(f"/disbursements/{did}/reversal", json={"reason": "test"})
    assert r.status_code == 409 and r.json()["code"] == "department_payment", r.text
    d = (await t.client.get(f"/disbursements/{did}")).json()
    assert (d["status"], d["policy_code"], d["amount"], d["allocation_id"]) == ("paid", "edu_boarding_junior",
                                                                                "625.00", None)

    # The village's public disclosure counts them; the county's allocation totals are untouched and balance.
    async with httpx.AsyncClient(base_url=t.p["gateway"][0] + API, timeout=30) as anonymous:
        disclosure = (await anonymous.get(f"/villages/{t.v}/disclosure", params={"year": YEAR})).json()
    paid = {p["policy_code"]: (p["paid"], p["households"]) for p in disclosure["payments"]}
    assert paid["minimum_living_tier1"] == ("930.00", 1) and paid["edu_boarding_junior"] == ("625.00", 1)
    assert disclosure["total_paid"] == "1555.00"
    assert h["household_id"] not in str(disclosure) and h["head"] not in str(disclosure)
    totals = (await t.client.get("/ledger/totals")).json()
    assert totals["balanced"] is True and totals["spent"] == "0.00"


# -- refusals -------------------------------------------------------------------------------------

async def test_a_bad_row_refuses_the_file_with_its_row_number_and_nothing_is_written(town):
    t, h = town, town.h
    tag = uuid.uuid4().hex[:6]
    pool = t.p["funds"][1].pool
    imports = await pool.fetchval("SELECT count(*) FROM fd_subsidy_imports")
    wrong_check = h["head_id"][:17] + ("0" if h["head_id"][17] != "0" else "1")
    data = csv_file(ZH, [
        [h["head_id"], "张国强", "minimum_living_tier1", "310.00", DAYS[0].isoformat(), "一卡通", f"A-{tag}-1"],
        [h["head_id"], "张国强", "minimum_living_tier1", "12.345", DAYS[1].isoformat(), "一卡通", f"A-{tag}-2"],
        [h["head_id"], "张国强", "no_such_policy", "310.00", DAYS[1].isoformat(), "一卡通", f"A-{tag}-3"],
        [h["head_id"], "张国强", "minimum_living_tier1", "310.00", (DAYS[0] - timedelta(days=10)).isoformat(),
         "一卡通", f"A-{tag}-4"],
        [wrong_check, "张国强", "minimum_living_tier1", "310.00", DAYS[2].isoformat(), "一卡通", f"A-{tag}-5"],
        [h["head_id"], "张国强", "minimum_living_tier1", "310.00", DAYS[2].isoformat(), "一卡通", f"A-{tag}-1"],
    ])
    async with t.department() as civil:
        refused = await send(civil, data, "civil_affairs", 422)
        assert refused["code"] == "file_rejected"
        found = {(e["row"], e["column"], e["code"]) for e in refused["errors"]}
        assert found == {(3, "amount", "invalid_amount"), (4, "policy_code", "unknown_policy"),
                         (5, "paid_on", "paid_outside_quarter"), (6, "id_number", "id_check_digit"),
                         (7, "reference", "duplicate_reference")}
        assert h["head_id"] not in str(refused) and wrong_check not in str(refused)
        assert await disbursements(t) == 0
        assert await pool.fetchval("SELECT count(*) FROM fd_subsidy_imports") == imports

        # A person not in the register: the file is refused, naming the row ...
        stranger = fake_id()
        data = csv_file(ZH, [
            [h["head_id"], "张国强", "minimum_living_tier2", "290.00", DAYS[0].isoformat(), "一卡通", f"B-{tag}-1"],
            [stranger, "王五", "minimum_living_tier2", "290.00", DAYS[0].isoformat(), "一卡通", f"B-{tag}-2"]])
        refused = await send(civil, data, "civil_affairs", 422)
        assert [(e["row"], e["column"], e["code"]) for e in refused["errors"]] == [(3, "id_number",
                                                                                     "person_not_found")]
        assert "skip_unmatched" in refused["detail"] and stranger not in str(refused)
        assert await disbursements(t) == 0
        # ... or, asked to, the others are recorded and that row is reported.
        report = await send(civil, data, "civil_affairs", 201, skip_unmatched="true")
        assert [r["row"] for r in report["recorded"]] == [2]
        assert [(s["row"], s["code"]) for s in report["skipped"]] == [(3, "person_not_found")]
        assert await disbursements(t) == 1

        # A reference names one payment: the same again (in another file) is recognised, another is refused.
        resent = csv_file(ZH, [
            [h["head_id"], "张国强", "minimum_living_tier2", "290.00", DAYS[0].isoformat(), "一卡通", f"B-{tag}-1"],
            [h["head_id"], "张国强", "minimum_living_tier2", "290.00", DAYS[1].isoformat(), "一卡通", f"B-{tag}-3"]])
        report2 = await send(civil, resent, "civil_affairs", 201)
        assert [a["row"] for a in report2["already_recorded"]] == [2]
        assert report2["already_recorded"][0]["disbursement_id"] == report["recorded"][0]["disbursement_id"]
        assert [r["row"] for r in report2["recorded"]] == [3]
        conflicting = csv_file(ZH, [
            [h["head_id"], "张国强", "minimum_living_tier2", "280.00", DAYS[0].isoformat(), "一卡通", f"B-{tag}-1"]])
        refused = await send(civil, conflicting, "civil_affairs", 422)
        assert [(e["row"], e["code"]) for e in refused["errors"]] == [(2, "reference_conflict")]
        assert await disbursements(t) == 2


# -- anomalies ------------------------------------------------------------------------------------

async def test_a_duplicate_across_two_departments_and_a_payment_to_a_deceased_member_raise_anomalies(town):
    t, h = town, town.h
    tag = uuid.uuid4().hex[:6]

    def premium_file(ref: str, paid_on: date) -> bytes:  # the year's insurance premium subsidy for the head
        return csv_file(["身份证号", "政策代码", "金额", "发放日期", "发放渠道", "业务流水号"],
                        [[h["head_id"], "insurance_premium_subsidy", "320.00", paid_on.isoformat(), "bank_transfer",
                          ref]])
    async with t.department("comparison:civil_affairs") as civil, \
            t.department("comparison:health_insurance") as insurance:
        first = await send(civil, premium_file(f"MZ-{tag}", DAYS[0]), "civil_affairs", 201)
        assert first["anomalies_detected"] == 0
        second = await send(insurance, premium_file(f"YB-{tag}", DAYS[1]), "health_insurance", 201)
        assert second["anomalies_detected"] == 1
    earlier = first["recorded"][0]["disbursement_id"]
    later = second["recorded"][0]["disbursement_id"]
    found = (await t.client.get("/anomalies", params={"household_id": h["household_id"],
                                                      "rule": "duplicate_period"})).json()
    [dup] = found["items"]
    assert dup["subject_id"] == later and dup["evidence"]["earlier_disbursement_id"] == earlier
    assert dup["evidence"]["policy_group"] == "insurance_premium_subsidy"

    # The spouse died in the quarter; civil affairs still paid her allowance afterwards.
    died_on = DAYS[0] + timedelta(days=3)
    r = await t.client.post(f"/households/{h['household_id']}/members/{h['spouse']}/removal",
                            json={"reason": "death", "removed_on": died_on.isoformat()})
    assert r.status_code == 200, r.text
    pool = t.p["funds"][1].pool

    async def removal_known() -> bool:
        return await pool.fetchval("SELECT count(*) FROM fd_household_events WHERE household_id = $1"
                                   " AND event_type = 'MemberRemoved'", h["household_id"]) == 1
    await wait_until(removal_known, timeout=60, message="the death in the funds service")
    data = csv_file(ZH, [[h["spouse_id"], "李秀英", "minimum_living_tier2", "290.00", DAYS[1].isoformat(), "一卡通",
                          f"MZ-{tag}-dead"]])
    async with t.department() as civil:
        report = await send(civil, data, "civil_affairs", 201)
    assert report["anomalies_detected"] == 1
    did = report["recorded"][0]["disbursement_id"]
    found = (await t.client.get("/anomalies", params={"household_id": h["household_id"],
                                                      "rule": "paid_to_deceased"})).json()
    [dead] = found["items"]
    assert dead["subject_id"] == did and dead["evidence"]["died_on"] == died_on.isoformat()
    assert dead["evidence"]["member_id"] == h["spouse"]


# -- who may send, for whom -----------------------------------------------------------------------

async def test_a_client_of_another_county_cannot_record_for_this_countys_households(town):
    t, h = town, town.h
    tag = uuid.uuid4().hex[:6]
    county = t.v[:4] + ("11" if t.v[4:6] != "11" else "12") + "000000"
    by_id = csv_file(ZH, [[h["head_id"], "张国强", "minimum_living_tier1", "310.00", DAYS[0].isoformat(), "一卡通",
                           f"X-{tag}-1"]])
    by_ids = csv_file(["household_id", "member_id", "policy_code", "amount", "paid_on", "channel", "reference"],
                      [[h["household_id"], h["head"], "minimum_living_tier1", "310.00", DAYS[0].isoformat(),
                        "one_card", f"X-{tag}-2"]])
    async with t.department(county=county) as stranger:
        for data, column in ((by_id, "id_number"), (by_ids, "member_id")):
            refused = await send(stranger, data, "civil_affairs", 422)
            assert [(e["row"], e["column"], e["code"]) for e in refused["errors"]] == [(2, column,
                                                                                         "person_not_found")]
        # Answered like an unknown person: it learns nothing, and records nothing even when skipping.
        report = await send(stranger, by_ids, "civil_affairs", 201, skip_unmatched="true")
        assert report["counts"] == {"recorded": 0, "already_recorded": 0, "skipped": 1}
    assert await disbursements(t) == 0


async def test_only_department_systems_with_the_scope_and_county_offices_may_send(town):
    t, h = town, town.h
    data = csv_file(ZH, [[h["head_id"], "张国强", "minimum_living_tier1", "310.00", DAYS[0].isoformat(), "一卡通",
                          f"Y-{uuid.uuid4().hex[:6]}"]])
    county = t.v[:6].ljust(12, "0")
    no_scope = client_principal(f"cmp-{uuid.uuid4().hex[:12]}", ("comparison:education",), county)
    officer = principal("information_officer", county)
    for who in (no_scope, officer):
        async with t.as_(who) as caller:
            refused = await send(caller, data, "civil_affairs", 403)
            assert refused["code"] == "forbidden"
    # An education system does not send civil affairs' records.
    async with t.department("comparison:education") as education:
        refused = await send(education, data, "civil_affairs", 403)
        assert refused["code"] == "department_mismatch"
        # Nor a policy its department does not pay.
        refused = await send(education, data, "education", 422)
        assert [(e["row"], e["code"]) for e in refused["errors"]] == [(2, "policy_not_for_department")]
    assert await disbursements(t) == 0
    # A county office may import a file a department handed over (for a quarter that has begun).
    async with t.as_(principal("county_office", county)) as office:
        early = await send(office, data, "civil_affairs", 422, quarter=f"{TODAY.year + 1}-Q1")
        assert early["code"] == "quarter_not_started"
        report = await send(office, data, "civil_affairs", 201)
        assert report["counts"]["recorded"] == 1
    assert await disbursements(t) == 1


# -- the file on its own (no platform) ------------------------------------------------------------

def _parse(data: bytes, department: str = "civil_affairs", hasher: Any = "keyed", quarter: str = "2025-Q1"):
    import hashlib
    import hmac

    from services.funds import subsidies
    from services.funds.policies import default_catalogue

    if hasher == "keyed":
        def hasher(number: str) -> str:
            return hmac.new(TEST_HMAC_KEY.encode(), number.encode(), hashlib.sha256).hexdigest()
    return subsidies.parse_subsidy_file(data, "upload.csv", quarter=subsidies.parse_quarter(quarter),
                                        department=department, catalogue=default_catalogue(),
                                        today=date(2025, 6, 1), hasher=hasher)


def test_the_reader_takes_chinese_headers_and_the_usual_forms_and_keeps_no_id_number():
    from services.registry.identity import id_hmac

    person = fake_id()
    header = ["身份证号码", "姓名", "政策编码", "发放金额", "支付日期", "发放方式", "流水号", "所属期间", "备注"]
    data = csv_file(header, [
        [person, "王五", "minimum_living_tier1", "¥310", "2025年1月5日", "一卡通", "R1", "2024-12", "补发"],
        [person, "王五", "insurance_premium_subsidy", "1,250.00", "20250305", "银行代发", "R2", "", ""],
        [person, "王五", "medical_assistance", "310元", "2025/3/31", "bank_transfer", "R3", "", ""],
    ]).decode("utf-8-sig").encode("gb18030")
    batch = _parse(data)
    assert batch.errors == [] and batch.rows == 3
    first, second, third = batch.records
    assert (first.amount, first.paid_on, first.channel, first.period) == (310, date(2025, 1, 5), "one_card", "2024-12")
    assert (second.amount, second.period, second.terms.group) == (1250, "2025", "insurance_premium_subsidy")
    assert (third.period, third.terms.group, third.terms.unit) == ("2025-03", None, None)  # assistance per case
    assert first.id_hmac == id_hmac(TEST_HMAC_KEY.encode(), person) and first.id_masked == person[:4] + "*" * 10 + person[-4:]
    assert person not in repr(batch.records) and "王五" not in repr(batch.records)


def test_a_service_without_the_registrys_key_takes_register_ids_but_not_id_numbers():
    import pytest

    from eventkit.errors import DomainError

    with pytest.raises(DomainError) as refused:
        _parse(csv_file(ZH, [[fake_id(), "王五", "minimum_living_tier1", "310", "2025-01-05", "一卡通", "R1"]]),
               hasher=None)
    assert (refused.value.code, refused.value.status) == ("id_matching_unavailable", 503)
    household, member = str(uuid.uuid4()), str(uuid.uuid4())
    batch = _parse(csv_file(["户编号", "成员编号", "政策代码", "金额", "发放日期", "发放渠道", "业务流水号"], [
        [household, member, "minimum_living_tier1", "310", "2025-01-05", "一卡通", "R1"],
        [household, "", "minimum_living_tier1", "310", "2025-02-05", "一卡通", "R2"],
        [household, "", "temporary_assistance", "500", "2025-02-05", "一卡通", "R3"]]), hasher=None)
    assert [(e["row"], e["code"]) for e in batch.errors] == [(3, "member_required")]
    assert [(r.household_id, r.member_id) for r in batch.records] == [(household, member), (household, None)]


def test_periods_channels_and_the_header_are_checked():
    batch = _parse(csv_file(ZH + ["所属期间"], [
        [fake_id(), "", "minimum_living_tier1", "310", "2025-01-05", "学生资助卡", "R1", ""],
        [fake_id(), "", "minimum_living_tier1", "310", "2025-01-05", "一卡通", "R2", "2025"],
        [fake_id(), "", "minimum_living_tier1", "310", "2025-01-05", "一卡通", "R3", "2025-07"],
        [fake_id(), "", "minimum_living_tier1", "0", "2025-01-05", "一卡通", "R4", ""]]))
    assert [(e["row"], e["column"], e["code"]) for e in batch.errors] == [
        (2, "channel", "channel_not_allowed"), (3, "period", "invalid_period"), (4, "period", "invalid_period"),
        (5, "amount", "invalid_amount")]
    missing = _parse(csv_file(["姓名", "政策代码", "金额"], [["王五", "minimum_living_tier1", "310"]]))
    assert {(e["row"], e["column"]) for e in missing.errors} == {
        (1, "paid_on"), (1, "channel"), (1, "reference"), (1, "id_number")}


def test_department_payments_post_on_the_departments_own_accounts():
    from services.funds.ledger import department_postings, parse_account, verify_balanced

    lines = department_postings({"disbursement_id": str(uuid.uuid4()), "department": "civil_affairs",
                                 "period": "2024-12", "amount": "310.00", "paid_on": "2025-01-05"})
    assert [(p.account, p.debit, p.credit, p.allocation_id) for p in lines] == [
        ("paid:department:civil_affairs:2024", 310, 0, None), ("department:civil_affairs:2024", 0, 310, None)]
    assert verify_balanced(lines) == 310 and lines[0].occurred == date(2025, 1, 5)
    assert parse_account(lines[0].account).kind == "department_paid"
    assert (parse_account(lines[1].account).kind, parse_account(lines[1].account).source) == ("department",
                                                                                               "civil_affairs")
