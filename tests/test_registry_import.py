"""Bulk household import: templates, validation report, all-or-nothing, skip_invalid, re-runs, CLI."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import subprocess
import sys
from datetime import date
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import openpyxl
import pytest

from eventkit import migrations as mig
from eventkit.events import Metadata
from eventkit.store import EventStore
from services.registry import importer
from services.registry.commands import MemberInput, Registry
from services.registry.domain import DomainError

from .conftest import village_code
from .harness import TEST_HMAC_KEY, ActAs, running_platform
from .registry_helpers import id_number, seed_village

ROOT = Path(__file__).resolve().parent.parent
def household_row(no: str, village: str, **extra: Any) -> dict[str, Any]:
    return {"household_no": no, "village_code": village, "address": f"二组{no}号", "attribute": "general",
            "identification_standard": "national", "registered_on": "2015-03-01", **extra}


def member_row(no: str, village: str, name: str, birth: date, relation: str, male: bool = True,
               **extra: Any) -> dict[str, Any]:
    return {"household_no": no, "village_code": village, "name": name, "id_number": id_number(birth, male),
            "relation": relation, **extra}


def two_households(village: str) -> tuple[list[dict], list[dict]]:
    households = [household_row("001", village, primary_cause="illness", other_causes="lack_of_funds;缺技术",
                                income_year=2023, wage_income=6000, business_income=5000, transfer_income=1200,
                                business_expenses=1000, cadre_id="cadre-7", cadre_unit="县农业农村局",
                                latitude=36.06, longitude=103.83),
                  household_row("002", village, attribute="低保贫困户", status="identified")]
    members = [
        member_row("001", village, "张国强", date(1972, 5, 1), "head", phone="139 1234 5678",
                   health="chronic_illness", labour_skill="weak", employment="local", employment_months=6,
                   insurance="basic_medical;serious_illness"),
        member_row("001", village, "李秀英", date(1975, 8, 9), "10", male=False, ethnicity="汉族"),
        member_row("001", village, "张小明", date(2012, 9, 1), "20", schooling_stage="junior", education="primary"),
        member_row("002", village, "王桂兰", date(1950, 1, 2), "户主", male=False, health="disabled",
                   birth_date="1950-01-02", sex="female"),
    ]
    return households, members


def fill_template(template: bytes, fmt: str, households: list[dict], members: list[dict]) -> bytes:
    """Fill the downloaded template the way a village officer does (in Excel)."""
    if fmt == "xlsx":
        wb = openpyxl.load_workbook(io.BytesIO(template))
        for sheet, rows in (("households", households), ("members", members)):
            ws = wb[sheet]
            keys = [importer.column_key(c.value) for c in ws[1]]
            for r in rows:
                ws.append([r.get(k) for k in keys])
        out = io.BytesIO()
        wb.save(out)
        return out.getvalue()
    text = template.decode("utf-8-sig")
    keys = [importer.column_key(h) for h in next(csv.reader(io.StringIO(text)))]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")
    for kind, rows in (("household", households), ("member", members)):
        for r in rows:
            w.writerow([kind if k == "record" else r.get(k, "") for k in keys])
    return (text + buf.getvalue()).encode("utf-8-sig")


@pytest.fixture(params=["direct", "gateway"])
async def registry(request, infra, databases, unique):
    """The registry's import API, called directly and through the gateway."""
    async with running_platform(infra, databases, unique("g"), services=("registry", "gateway")) as platform:
        url, runtime = platform["registry"]
        if request.param == "gateway":
            url = platform["gateway"][0] + "/api/v1"
        village = village_code()
        async with runtime.pool.acquire() as conn:
            await seed_village(conn, village)
        async with httpx.AsyncClient(base_url=url, timeout=60, auth=ActAs(platform, village=village)) as client:
            yield client, runtime, village


async def event_count(runtime) -> int:
    return await runtime.pool.fetchval("SELECT count(*) FROM events WHERE stream_type = 'household'")


async def upload(client: httpx.AsyncClient, data: bytes, name: str, **params: Any) -> httpx.Response:
    ctype = importer.CONTENT_TYPES["xlsx" if name.endswith(".xlsx") else "csv"]
    return await client.post("/imports/households", files={"file": (name, data, ctype)},
                             params={k: str(v).lower() for k, v in params.items()})


# -- template round trip ---------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["xlsx", "csv"])
async def test_template_round_trip_imports_two_households_and_a_rerun_imports_nothing_twice(registry, fmt):
    client, runtime, village = registry
    r = await client.get("/imports/template", params={"format": fmt})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith(importer.CONTENT_TYPES[fmt].split(";")[0])
    assert r.headers["content-disposition"].startswith("attachment;")
    assert f'filename="households-import-template.{fmt}"' in r.headers["content-disposition"]
    households, members = two_households(village)
    data = fill_template(r.content, fmt, households, members)

    r = await upload(client, data, f"村上报.{fmt}")
    assert r.status_code == 200, r.text
    report = r.json()
    assert report["status"] == "imported" and report["format"] == fmt
    assert report["counts"]["households_imported"] == 2 and report["counts"]["members_imported"] == 4
    assert report["errors"] == []
    hid = importer.household_id_for(village, "001")
    rows = await runtime.pool.fetch("SELECT event_type, data, metadata FROM events WHERE stream_id = $1"
                                    " ORDER BY version", hid)
    types = [x["event_type"] for x in rows]
    assert types[:4] == ["HouseholdRegistered", "MemberAdded", "MemberAdded", "MemberAdded"]
    assert {"PovertyCausesRecorded", "IncomeAssessed", "CadreAssigned", "CoordinatesSet"} <= set(types)
    causes = next(json.loads(x["data"]) for x in rows if x["event_type"] == "PovertyCausesRecorded")
    assert causes["primary"] == "illness" and causes["others"] == ["lack_of_funds", "lack_of_skills"]
    income = next(json.loads(x["data"]) for x in rows if x["event_type"] == "IncomeAssessed")
    assert income["per_capita_net_income"] == "3733.33"
    second = await runtime.pool.fetchrow("SELECT data FROM events WHERE stream_id = $1 AND version = 1",
                                         importer.household_id_for(village, "002"))
    assert json.loads(second["data"])["attribute"] == "minimum_living"
    assert json.loads(second["data"])["status"] == "identified"
    assert json.loads(rows[0]["metadata"])["correlation_id"]
    assert await runtime.pool.fetchval("SELECT count(*) FROM person_vault") == 4

    got = await client.get(f"/imports/{report['import_id']}")
    assert got.status_code == 200 and got.json()["counts"]["households_imported"] == 2
    assert got.json()["sha256"] == report["sha256"]

    before = await event_count(runtime)
    again = await upload(client, data, f"村上报.{fmt}")
    assert again.status_code == 200, again.text
    counts = again.json()["counts"]
    assert counts["households_imported"] == 0 and counts["households_already_imported"] == 2
    assert {a["household_no"] for a in again.json()["already_imported"]} == {"001", "002"}
    assert await event_count(runtime) == before
    stored = await runtime.pool.fetch("SELECT status, file_sha256 FROM imports ORDER BY started_at")
    assert [s["status"] for s in stored] == ["imported", "imported"]
    assert stored[0]["file_sha256"] == stored[1]["file_sha256"]


# -- errors ---------------------------------------------------------------------------

def bad_file(village: str, fmt: str) -> tuple[bytes, str]:
    households = [household_row("001", village),
                  household_row("002", village, attribute="poor"),            # households row 3
                  household_row("003", "620102999999"),                       # row 4: unknown village
                  household_row("004", village)]
    ok = id_number(date(1980, 1, 1))
    wrong = ok[:-1] + ("0" if ok[-1] != "0" else "1")
    members = [
        member_row("001", village, "甲", date(1970, 1, 1), "head"),           # members row 2
        {**member_row("001", village, "乙", date(1971, 1, 1), "10", male=False), "id_number": wrong},  # row 3
        member_row("002", village, "丙", date(1960, 1, 1), "head"),           # row 4
        member_row("003", "620102999999", "丁", date(1961, 1, 1), "head"),    # row 5
        member_row("004", village, "戊", date(1962, 1, 1), "head"),           # row 6
        member_row("004", village, "己", date(1963, 1, 1), "head"),           # row 7: second head
        member_row("009", village, "庚", date(1990, 1, 1), "head"),           # row 8: no such household
        member_row("004", village, "辛", date(1990, 1, 1), "99", health="healthy;disabled"),  # row 9
        member_row("004", village, "壬", date(1991, 2, 3), "30", male=False, birth_date="1991-02-04"),  # row 10
    ]
    members.append({**member_row("004", village, "癸", date(1992, 1, 1), "20"),
                    "id_number": members[0]["id_number"]})                     # row 11: same ID as row 2
    template = importer.build_template(fmt)
    return fill_template(template, fmt, households, members), f"bad.{fmt}"


def where(e: dict) -> tuple:
    return e["sheet"], e["row"], e["column"], e["code"]


@pytest.mark.parametrize("fmt", ["xlsx", "csv"])
async def test_a_bad_file_is_rejected_with_row_numbered_errors_and_nothing_is_written(registry, fmt):
    client, runtime, village = registry
    data, name = bad_file(village, fmt)
    r = await upload(client, data, name)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert body["code"] == "import_rejected" and body["status"] == 422
    errors = body["errors"]
    found = {where(e) for e in errors}
    if fmt == "xlsx":
        m = {2: 2, 3: 3, 4: 4, 5: 5, 6: 6, 7: 7, 8: 8, 9: 9, 10: 10, 11: 11}
        h = {3: 3, 4: 4}
    else:  # one CSV: the 4 household records first, then the members
        h = {3: 3, 4: 4}
        m = {n: n + 4 for n in range(2, 12)}
    expected = {
        ("households", h[3], "attribute", "invalid_code"),
        ("households", h[4], "village_code", "unknown_village"),
        ("members", m[3], "id_number", "id_check_digit"),
        ("members", m[7], "relation", "one_head"),
        ("members", m[8], "household_no", "unknown_household"),
        ("members", m[9], "health", "invalid_code"),
        ("members", m[10], "id_number", "id_birth_date_mismatch"),
        ("members", m[11], "id_number", "duplicate_id_in_file"),
    }
    assert expected <= found, sorted(found)
    attribute = next(e for e in errors if e["column"] == "attribute")
    assert "general" in attribute["reason"] and "extreme_poverty" in attribute["reason"]  # names the allowed codes
    assert body["counts"]["households_imported"] == 0
    assert await event_count(runtime) == 0
    assert await runtime.pool.fetchval("SELECT count(*) FROM person_vault") == 0
    status = await runtime.pool.fetchval("SELECT status FROM imports WHERE import_id = $1::uuid", body["import_id"])
    assert status == "rejected"
    csv_errors = await client.get(f"/imports/{body['import_id']}/errors.csv")
    assert csv_errors.status_code == 200 and "sheet,row,column,reason,code" in csv_errors.text


async def test_skip_invalid_imports_only_the_valid_households_and_a_person_in_another_household_is_an_error(
        registry):
    client, runtime, village = registry
    data, name = bad_file(village, "xlsx")
    r = await upload(client, data, name, skip_invalid=True)
    assert r.status_code == 200, r.text
    report = r.json()
    assert report["status"] == "partial"
    assert report["counts"]["households_imported"] == 0  # 001 has a bad member, 002-004 are bad too
    households = [household_row("010", village), household_row("011", village, attribute="nope")]
    members = [member_row("010", village, "甲", date(1970, 1, 1), "head"),
               member_row("010", village, "乙", date(1972, 1, 1), "10", male=False),
               member_row("011", village, "丙", date(1960, 1, 1), "head")]
    data = fill_template(importer.build_template("xlsx"), "xlsx", households, members)
    r = await upload(client, data, "part.xlsx", skip_invalid=True)
    assert r.status_code == 200, r.text
    report = r.json()
    assert report["counts"]["households_imported"] == 1 and report["counts"]["members_imported"] == 2
    assert report["counts"]["households_skipped"] == 1
    assert [where(e) for e in report["errors"]] == [("households", 3, "attribute", "invalid_code")]
    assert await event_count(runtime) == 3
    # The same person (甲) listed in a new household of another file: duplicate_person.
    households = [household_row("020", village), household_row("021", village)]
    members = [{**members[0], "household_no": "020"}, member_row("021", village, "丁", date(1961, 1, 1), "head")]
    data = fill_template(importer.build_template("xlsx"), "xlsx", households, members)
    rejected = await upload(client, data, "dup.xlsx")
    assert rejected.status_code == 422
    assert [where(e) for e in rejected.json()["errors"]] == [("members", 2, "id_number", "duplicate_person")]
    partial = await upload(client, data, "dup.xlsx", skip_invalid=True)
    assert partial.status_code == 200
    assert partial.json()["counts"]["households_imported"] == 1
    assert partial.json()["counts"]["households_skipped"] == 1
    assert await event_count(runtime) == 5


async def test_upload_limits_and_formats(registry):
    client, _, _ = registry
    big = b"x" * (importer.MAX_FILE_BYTES + 1)
    r = await client.post("/imports/households", files={"file": ("big.csv", big, "text/csv")})
    assert r.status_code == 413 and r.json()["code"] == "file_too_large"
    r = await client.post("/imports/households", files={"other": ("a.csv", b"x", "text/csv")})
    assert r.status_code == 422 and r.json()["code"] == "missing_file"
    r = await client.post("/imports/households", files={"file": ("old.xls", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1",
                                                                 "application/vnd.ms-excel")})
    assert r.status_code == 415
    r = await client.post("/imports/households", files={"file": ("broken.xlsx", b"PK\x03\x04garbage",
                                                                 importer.CONTENT_TYPES["xlsx"])})
    assert r.status_code == 422 and r.json()["code"] == "invalid_file"
    r = await client.get("/imports/00000000-0000-0000-0000-000000000000")
    assert r.status_code == 404
    r = await client.get("/imports/template", params={"format": "pdf"})
    assert r.status_code == 422


# -- parsing details (no database) --------------------------------------------------------

def test_headers_are_found_by_key_or_chinese_label_and_excel_damage_is_explained():
    village = "620102001001"
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.title = "Households 户信息"
    ws.append(["户编号", "village_code\n村代码", "attribute 贫困户属性 *", "识别标准", "whatever"])
    ws.append(["1", village, "一般贫困户", "national", "ignored"])
    ws = wb.create_sheet("members")
    ws.append(["household_no 户编号", "village_code", "name", "身份证号", "relation 与户主关系"])
    ws.append([1, village, "张三", 620102197001011234, "02"])
    ws.append([1, village, "李四", "6.20102E+17", "12"])
    buf = io.BytesIO()
    wb.save(buf)
    parsed = importer.parse(buf.getvalue(), file_name="x.xlsx")
    assert parsed.errors == [] and len(parsed.households) == 1 and len(parsed.members) == 2
    result = importer.check(parsed)
    plan = result.plans[0]
    assert plan.attribute == "general" and plan.household_no == "1"
    assert [where(e.to_json()) for e in result.errors] == [("members", 2, "id_number", "id_format"),
                                                           ("members", 3, "id_number", "id_format")]
    assert "text" in result.errors[0].reason and "scientific" in result.errors[1].reason
    assert plan.relations == [(2, "head"), (3, "12")]


def test_csv_in_gb18030_and_missing_columns():
    text = "record,household_no,village_code,attribute,identification_standard,name,id_number,relation\r\n"
    text += "household,1,620102001001,general,national,,,\r\nmember,1,620102001001,,,王五,"
    text += id_number(date(1980, 5, 5)) + ",head\r\n"
    parsed = importer.parse(text.encode("gb18030"), "csv")
    assert parsed.errors == []
    result = importer.check(parsed)
    assert result.errors == [] and result.plans[0].members[0].member.name == "王五"
    parsed = importer.parse(b"record,household_no\r\nhousehold,1\r\n", "csv")
    assert {e.column for e in parsed.errors} >= {"village_code", "id_number", "attribute"}
    wb = openpyxl.Workbook()
    wb.active.title = "households"
    buf = io.BytesIO()
    wb.save(buf)
    parsed = importer.parse(buf.getvalue(), "xlsx")
    assert {(e.sheet, e.code) for e in parsed.errors} == {("households", "missing_header"),
                                                          ("members", "missing_sheet")}


# -- command line -----------------------------------------------------------------------

def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TPA_", "KAFKA_", "OTEL_"))}
    env.update(extra)
    return env


async def test_cli_import_against_the_registry_database(database, tmp_path):
    from services.registry.app import build
    from eventkit.settings import load_settings

    village = village_code()
    settings = load_settings("registry", database_url=database, id_hmac_key=TEST_HMAC_KEY)
    conn = await asyncpg.connect(database)
    try:
        await mig.apply(conn, build(settings).migrations())
        await seed_village(conn, village)
    finally:
        await conn.close()
    households, members = two_households(village)
    good = tmp_path / "good.xlsx"
    good.write_bytes(importer.write_file("xlsx", households, members))
    bad = tmp_path / "bad.csv"
    bad.write_bytes(bad_file(village, "csv")[0])
    env = clean_env(TPA_REGISTRY_DATABASE_URL=database, TPA_REGISTRY_ID_HMAC_KEY=TEST_HMAC_KEY,
                    TPA_STATE_DIR=str(tmp_path / "state"))

    def tpa(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "services.cli", *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=120)

    report = tmp_path / "errors.csv"
    failed = await asyncio.to_thread(tpa, "import", "households", str(bad), "--report", str(report))
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "rejected" in failed.stdout and "unknown_village" in failed.stderr
    lines = report.read_text(encoding="utf-8-sig").splitlines()
    assert lines[0] == "sheet,row,column,reason,code" and len(lines) > 5
    ok = await asyncio.to_thread(tpa, "import", "households", str(good))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "2 household(s) with 4 member(s) imported" in ok.stdout
    again = await asyncio.to_thread(tpa, "import", "households", str(good))
    assert again.returncode == 0 and "2 already imported" in again.stdout
    conn = await asyncpg.connect(database)
    try:
        assert await conn.fetchval("SELECT count(DISTINCT stream_id) FROM events") == 2
        assert await conn.fetchval("SELECT count(*) FROM imports") == 3
    finally:
        await conn.close()
    missing = await asyncio.to_thread(tpa, "import", "households", str(tmp_path / "nope.xlsx"))
    assert missing.returncode == 2


async def test_a_household_failing_at_write_time_is_rolled_back_alone(registry, monkeypatch):
    client, runtime, village = registry
    reg = runtime.state["registry"]
    original = reg.register_household
    failing = importer.household_id_for(village, "002")

    original_bulk = reg.register_households

    async def register(conn, **kwargs):
        out = await original(conn, **kwargs)  # written, then the household fails: its savepoint rolls back
        if kwargs["household_id"] == failing:
            raise DomainError("boom", "refused at write time", field="members[1].name")
        return out

    async def register_households(conn, registrations, meta, **kw):
        await original_bulk(conn, registrations, meta, **kw)  # written, then the batch fails: all of it rolls back
        if any(household.id == failing for household, _ in registrations):
            raise DomainError("boom", "refused at write time")

    monkeypatch.setattr(reg, "register_household", register)
    monkeypatch.setattr(reg, "register_households", register_households)
    households = [household_row(n, village) for n in ("001", "002", "003")]
    members = [member_row(n, village, f"户主{n}", date(1970, 1, int(n)), "head") for n in ("001", "002", "003")]
    members.insert(2, member_row("002", village, "配偶", date(1971, 1, 1), "10", male=False))
    data = fill_template(importer.build_template("xlsx"), "xlsx", households, members)
    r = await upload(client, data, "write.xlsx")
    assert r.status_code == 200, r.text
    report = r.json()
    assert report["status"] == "partial"
    assert report["counts"]["households_imported"] == 2 and report["counts"]["households_skipped"] == 1
    assert [where(e) for e in report["errors"]] == [("members", 4, "name", "boom")]
    streams = {x["stream_id"] for x in await runtime.pool.fetch("SELECT DISTINCT stream_id FROM events")}
    assert streams == {importer.household_id_for(village, "001"), importer.household_id_for(village, "003")}
    assert await runtime.pool.fetchval("SELECT count(*) FROM person_vault") == 2
    assert await runtime.pool.fetchval("SELECT count(*) FROM active_persons") == 2


# -- bulk writes --------------------------------------------------------------------------

async def registry_database(databases, village: str) -> tuple[Any, Registry]:
    """A fresh registry database (migrations, the village): its pool and a Registry on it."""
    from eventkit.settings import load_settings
    from services.registry.app import build

    dsn = await databases()
    conn = await asyncpg.connect(dsn)
    try:
        await mig.apply(conn, build(load_settings("registry", database_url=dsn,
                                                  id_hmac_key=TEST_HMAC_KEY)).migrations())
        await seed_village(conn, village)
    finally:
        await conn.close()
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=4)
    return pool, Registry(EventStore(pool), TEST_HMAC_KEY.encode())


def varied_households(village: str) -> tuple[list[dict], list[dict]]:
    """Households with and without the optional facts (poverty causes, income, cadre, coordinates)."""
    households, members = two_households(village)
    households += [household_row("003", village, primary_cause="disability"),
                   household_row("004", village, income_year=2022, wage_income=1000),
                   household_row("005", village, cadre_id="cadre-9", cadre_unit="乡政府", latitude=35.5,
                                 longitude=104.1),
                   household_row("006", village)]
    members += [member_row("003", village, "赵一", date(1960, 3, 4), "head"),
                member_row("004", village, "钱二", date(1961, 4, 5), "head", male=False),
                member_row("004", village, "钱三", date(1990, 6, 7), "20"),
                member_row("005", village, "孙四", date(1955, 7, 8), "head", phone="0931-8123456"),
                member_row("006", village, "李五", date(1948, 9, 10), "head"),
                member_row("006", village, "李六", date(1950, 10, 11), "10", male=False)]
    return households, members


async def written(pool: Any) -> dict[str, Any]:
    """What an import wrote, with the random parts (event ids, member ids, times) left out: member
    ids become their order of appearance in the events."""
    events = await pool.fetch("SELECT stream_id, stream_type, version, event_type, schema_version, data::text,"
                              " metadata::text, occurred_at FROM events ORDER BY global_position")
    positions = await pool.fetch("SELECT global_position FROM events ORDER BY global_position")
    assert [r["global_position"] for r in positions] == list(range(1, len(positions) + 1))  # gap-free
    members: dict[str, str] = {}

    def name(member_id: str) -> str:
        return members.setdefault(member_id, f"member-{len(members)}")

    def scrub(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: name(v) if k.endswith("member_id") and v else scrub(v) for k, v in value.items()}
        if isinstance(value, list):
            return [scrub(v) for v in value]
        return value

    out: dict[str, Any] = {"events": [{**dict(r), "data": scrub(json.loads(r["data"])),
                                       "metadata": json.loads(r["metadata"])} for r in events]}
    vault = await pool.fetch("SELECT member_id::text, household_id::text, id_hmac, id_number, name, phone,"
                             " erased_at FROM person_vault")
    out["vault"] = sorted((name(r["member_id"]), *list(r.values())[1:]) for r in vault)
    active = await pool.fetch("SELECT id_hmac, household_id::text, member_id::text FROM active_persons")
    out["active_persons"] = sorted((r["id_hmac"], r["household_id"], name(r["member_id"])) for r in active)
    return out


def report_of(report: importer.ImportReport) -> dict[str, Any]:
    body = report.to_json()
    for key in ("started_at", "finished_at"):
        body.pop(key)
    return body


async def test_bulk_writes_exactly_what_writing_one_household_at_a_time_writes(databases):
    village = village_code()
    households, members = varied_households(village)
    data = importer.write_file("csv", households, members)
    import_id = "7b0c1a52-6f55-4d7e-9a61-3f4b2a1c0d9e"
    results = []
    for bulk in (True, False):
        pool, registry = await registry_database(databases, village)
        bulk_writes: list[int] = []
        original_bulk = registry.register_households

        async def register_households(conn, registrations, meta, original_bulk=original_bulk,
                                      bulk_writes=bulk_writes, **kw):
            await original_bulk(conn, registrations, meta, **kw)
            bulk_writes.append(len(registrations))

        registry.register_households = register_households
        try:
            report = await importer.import_file(registry, pool, data, file_name="v.csv", actor="cli:test",
                                                batch_size=4, import_id=import_id, bulk=bulk)
            assert report.status == "imported" and report.households_imported == 6, report.summary()
            assert bulk_writes == ([4, 2] if bulk else [])
            results.append((report_of(report), await written(pool)))
        finally:
            await pool.close()
    (bulk_report, bulk_rows), (one_report, one_rows) = results
    assert bulk_report == one_report
    assert len(bulk_rows["events"]) == 24 and len(bulk_rows["vault"]) == 10 == len(bulk_rows["active_persons"])
    assert bulk_rows == one_rows


async def test_a_batch_with_a_household_that_fails_at_write_time_imports_its_other_households(
        databases, monkeypatch):
    village = village_code()
    households, members = varied_households(village)
    pool, registry = await registry_database(databases, village)
    original_validate = importer.validate
    claimed = members[3]  # 王桂兰, the only member of household 002 (households row 3)

    async def validate(parsed, conn=None, **kwargs):
        result = await original_validate(parsed, conn, **kwargs)  # the file is valid; then, before the write:
        async with pool.acquire() as other, other.transaction():
            # ... the person of household 002 is registered in another household ...
            await registry.register_household(
                other, village_code=village, address=None, attribute="general", identification_standard="national",
                registered_on=None, members=[MemberInput(claimed["name"], claimed["id_number"], "head")],
                meta=Metadata(actor="test"))
            # ... and household 006 is imported by someone else.
            await registry.register_household(
                other, village_code=village, address=None, attribute="general", identification_standard="national",
                registered_on=None, household_id=importer.household_id_for(village, "006"),
                members=[MemberInput(m["name"], m["id_number"], m["relation"]) for m in members[-2:]],
                meta=Metadata(actor="test"))
        return result

    bulk_writes: list[int] = []
    original_bulk = registry.register_households

    async def register_households(conn, registrations, meta, **kw):
        bulk_writes.append(len(registrations))
        await original_bulk(conn, registrations, meta, **kw)

    monkeypatch.setattr(importer, "validate", validate)
    monkeypatch.setattr(registry, "register_households", register_households)
    try:
        data = importer.write_file("xlsx", households, members)
        report = await importer.import_file(registry, pool, data, file_name="v.xlsx", batch_size=3)
        assert bulk_writes == [3, 3]  # both batches tried in bulk, both written one by one
        assert report.status == "partial", report.summary()
        assert report.households_imported == 4 and report.members_imported == 7
        assert report.households_skipped == 1 and report.members_skipped == 1
        assert [(e.sheet, e.row, e.column, e.code) for e in report.errors] == [
            ("households", 3, None, "duplicate_person")]
        assert report.households_already_imported == 1
        assert [a["household_no"] for a in report.already_imported] == ["006"]
        imported = {importer.household_id_for(village, n) for n in ("001", "003", "004", "005")}
        streams = {r["stream_id"] for r in await pool.fetch("SELECT DISTINCT stream_id FROM events")}
        assert imported <= streams and importer.household_id_for(village, "002") not in streams
        assert await pool.fetchval("SELECT count(*) FROM person_vault") == 7 + 1 + 2
        assert await pool.fetchval("SELECT count(*) FROM active_persons") == 7 + 1 + 2
    finally:
        await pool.close()
