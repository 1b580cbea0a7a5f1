"""The synthetic county generator: valid people, plausible rates, deterministic, importable."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import asyncpg
import httpx
import pytest

from services.registry import codes, demo_data, identity, importer

from .harness import TEST_HMAC_KEY, ActAs, running_platform

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def county() -> demo_data.GeneratedCounty:
    return demo_data.generate_county("620102", 2000, seed=1)


def test_every_generated_person_has_a_valid_unique_id_number_of_the_county(county):
    members = county.members
    assert len({m.id_number for m in members}) == len(members)
    for m in members:
        rid = identity.validate_id_number(m.id_number, m.birth_date)
        assert rid.address_code == "620102" and rid.sex == m.sex
        assert 1 <= len(m.name) <= 4 and m.name[0] in demo_data._SURNAMES
        if m.phone:
            assert identity.validate_phone(m.phone) == m.phone


def test_households_are_consistent_and_use_only_valid_codes(county):
    village_codes = {v.code for v in county.villages}
    keys = set()
    for h in county.households:
        assert 1 <= len(h.members) <= 7
        assert [m.relation for m in h.members].count("head") == 1 and h.members[0].relation == "head"
        assert h.village_code in village_codes and h.village_code.startswith("620102")
        assert (h.village_code, h.household_no) not in keys
        keys.add((h.village_code, h.household_no))
        codes.validate("household_attribute", h.attribute)
        codes.validate("poverty_cause", h.primary_cause)
        assert h.primary_cause not in h.other_causes
        assert min(h.wage_income, h.business_income, h.property_income, h.transfer_income,
                   h.business_expenses) >= 0 and h.net_income > 0
        assert 35.0 < h.latitude < 37.5 and 102.5 < h.longitude < 105.0
        for m in h.members:
            if m.relation != "head":
                codes.validate("relation_to_head", m.relation)
            age = m.age(county.as_of)
            assert 0 <= age <= 100
            codes.validate_many("health_condition", m.health)
            stage = m.schooling_stage
            if stage == "primary":
                assert 6 <= age <= 12
            elif stage == "junior":
                assert 12 <= age <= 15
            elif stage in ("senior", "secondary_vocational"):
                assert 15 <= age <= 18
            elif stage == "preschool":
                assert 3 <= age <= 6
            if age < 16:
                assert m.labour_skill == "none" and m.employment == "none"
            if m.employment == "none":
                assert m.employment_months == 0
        if h.primary_cause == "illness":
            assert any({"chronic_illness", "serious_illness"} & set(m.health) for m in h.members)
        if h.primary_cause == "disability":
            assert any("disabled" in m.health for m in h.members)
        if h.primary_cause == "schooling":
            assert any(m.schooling_stage not in ("not_in_school", "preschool") for m in h.members)
    regions = {r.code: r for r in county.regions}
    assert [r.level for r in county.regions[:3]] == ["province", "city", "county"]
    for v in county.villages:
        assert regions[v.code].level == "village" and regions[regions[v.code].parent_code].level == "township"
        assert v.rural_population >= v.registered_population


def test_rates_roughly_match_the_documents(county):
    n = len(county.households)
    attributes = Counter(h.attribute for h in county.households)
    assert abs(attributes["general"] / n - 0.75) < 0.04
    assert abs(attributes["minimum_living"] / n - 0.20) < 0.04
    assert abs(attributes["extreme_poverty"] / n - 0.05) < 0.02
    causes = Counter(h.primary_cause for h in county.households)
    assert [c for c, _ in causes.most_common(3)] == ["lack_of_funds", "lack_of_skills", "schooling"] or \
        abs(causes["schooling"] / n - 0.147) < 0.03
    assert abs(causes["lack_of_funds"] / n - 0.30) < 0.04
    assert abs(causes["lack_of_skills"] / n - 0.172) < 0.035
    incomes = sorted(h.per_capita_income for h in county.households)
    assert 3300 < incomes[n // 2] < 4700  # around the poverty line
    sizes = Counter(len(h.members) for h in county.households)
    assert set(sizes) <= set(range(1, 8)) and 2.8 < sum(k * v for k, v in sizes.items()) / n < 4.0
    members = county.members
    healthy = sum(1 for m in members if m.health == ["healthy"]) / len(members)
    assert 0.6 < healthy < 0.9
    insured = sum(1 for m in members if "basic_medical" in m.insurance) / len(members)
    assert insured > 0.95
    stats = county.stats()
    assert stats["households"] == 2000 and stats["villages"] == len(county.villages)


def test_generation_is_deterministic_by_seed():
    a = demo_data.generate_county("620102", 200, seed=7)
    b = demo_data.generate_county("620102", 200, seed=7)
    c = demo_data.generate_county("620102", 200, seed=8)
    assert a.household_rows() == b.household_rows() and a.member_rows() == b.member_rows()
    assert a.to_file("csv") == b.to_file("csv")
    assert a.member_rows() != c.member_rows()
    other = demo_data.generate_county("621102", 50, seed=7)
    assert all(m.id_number.startswith("621102") for m in other.members)


async def test_a_generated_file_imports_through_the_api(infra, databases, unique):
    small = demo_data.generate_county("620102", 50, seed=3)
    async with running_platform(infra, databases, unique("g"), services=("registry",)) as platform:
        url, runtime = platform["registry"]
        async with runtime.pool.acquire() as conn:
            assert await demo_data.load_regions(conn, small) == len(small.regions)
        auth = ActAs(platform, village=small.villages[0].code)  # an officer of the county
        async with httpx.AsyncClient(base_url=url, timeout=120, auth=auth) as client:
            r = await client.post("/imports/households", files={
                "file": ("demo.xlsx", small.to_file("xlsx"), importer.CONTENT_TYPES["xlsx"])})
            assert r.status_code == 200, r.text[:3000]
            counts = r.json()["counts"]
            assert counts["households_imported"] == 50 and counts["members_imported"] == len(small.members)
        types = Counter(r["event_type"] for r in await runtime.pool.fetch("SELECT event_type FROM events"))
        assert types["HouseholdRegistered"] == 50 and types["MemberAdded"] == len(small.members)
        for t in ("PovertyCausesRecorded", "IncomeAssessed", "CadreAssigned", "CoordinatesSet"):
            assert types[t] == 50
        registered = await runtime.pool.fetch("SELECT data FROM events WHERE event_type = 'HouseholdRegistered'")
        assert {json.loads(x["data"])["status"] for x in registered} == {"identified"}
        profiles = await demo_data.record_village_profiles(runtime.state["registry"], runtime.pool, small)
        assert profiles == len(small.villages)
        assert await demo_data.record_village_profiles(runtime.state["registry"], runtime.pool, small) == 0


async def test_cli_writes_the_file_and_loads_it(database, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TPA_", "KAFKA_", "OTEL_"))}
    env.update(TPA_STATE_DIR=str(tmp_path / "state"))
    out = tmp_path / "demo.csv"
    cmd = [sys.executable, "-m", "services.cli", "demo-data", "--county", "620102", "--households", "30",
           "--seed", "2", "--out", str(out)]
    offline = await asyncio.to_thread(subprocess.run, cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                                      timeout=120)
    assert offline.returncode == 0, offline.stderr
    assert out.is_file() and (tmp_path / "demo.regions.csv").is_file()
    assert "region rows not loaded" in offline.stdout
    parsed = importer.parse(out.read_bytes(), file_name=out.name)
    assert len(parsed.households) == 30 and importer.check(parsed).errors == []
    env.update(TPA_REGISTRY_DATABASE_URL=database, TPA_REGISTRY_ID_HMAC_KEY=TEST_HMAC_KEY)
    loaded = await asyncio.to_thread(subprocess.run, cmd + ["--load"], cwd=ROOT, env=env, capture_output=True,
                                     text=True, timeout=180)
    assert loaded.returncode == 0, loaded.stdout + loaded.stderr
    assert "30 household(s)" in loaded.stdout and "village profile" in loaded.stdout

    conn = await asyncpg.connect(database)
    try:
        assert await conn.fetchval("SELECT count(*) FROM events WHERE event_type = 'HouseholdRegistered'") == 30
        assert await conn.fetchval("SELECT count(*) FROM regions WHERE level = 'village'") == len(
            demo_data.generate_county("620102", 30, seed=2).villages)
    finally:
        await conn.close()


def test_a_province_is_named_by_its_two_digit_code_as_the_cli_says():
    counties = demo_data.province_counties("62")
    assert len(counties) > 50 and all(c.code.startswith("62") for c in counties)
    assert demo_data.province_counties("620000") == counties  # or by any code within it
