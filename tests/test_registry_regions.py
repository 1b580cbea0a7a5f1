"""Administrative division codes, reference data and the regions table."""

from __future__ import annotations

import random
import re

import asyncpg
import pytest

from services.registry import regions as R
from services.registry.regions import Region, RegionError



def _sql() -> str:
    return (R.MIGRATIONS / "0001_regions.sql").read_text()


# -- pure code functions -------------------------------------------------------------

@pytest.mark.parametrize(("code", "level", "parent"), [
    ("620000000000", "province", None),
    ("620100000000", "city", "620000000000"),
    ("620102000000", "county", "620100000000"),
    ("620102001000", "township", "620102000000"),
    ("620102001001", "village", "620102001000"),
    ("110105001001", "village", "110105001000"),
    ("620102100000", "township", "620102000000"),
    ("620102001999", "village", "620102001000"),
    ("441900003000", "township", "441900000000"),  # Dongguan: townships directly under the city
    ("441900003001", "village", "441900003000"),
    ("419001000000", "county", "419000000000"),  # county administered by the province
    ("460001000000", "county", "460000000000"),  # Hainan before 2002: no city part
])
def test_level_and_parent(code: str, level: str, parent: str | None) -> None:
    assert R.level_of(code) == level
    assert R.parent_of(code) == parent


@pytest.mark.parametrize(("short", "full", "level"), [
    ("620000", "620000000000", "province"),
    ("620100", "620100000000", "city"),
    ("620102", "620102000000", "county"),
    (" 110105 ", "110105000000", "county"),
    ("620102001001", "620102001001", "village"),
])
def test_normalise(short: str, full: str, level: str) -> None:
    assert R.normalise(short) == full
    assert R.level_of(short) == level


@pytest.mark.parametrize("bad", [
    "", "62", "6201", "62010", "6201020", "62010200100", "6201020010010", "62010200100A",
    "６２０１０２", "000000", "000000000000", "001020001001",  # province 00
    "620102000001",  # village without township
    "620000001000",  # township directly under a province
    "620102-01001", "620102001001 x",
])
def test_malformed_codes(bad: str) -> None:
    for fn in (R.normalise, R.level_of, R.parent_of, R.code_prefix):
        with pytest.raises(RegionError) as info:
            fn(bad)
        assert info.value.code == "region_code_format"
        assert isinstance(info.value, ValueError)


def test_non_string_code() -> None:
    with pytest.raises(RegionError):
        R.normalise(620102)  # type: ignore[arg-type]


@pytest.mark.parametrize(("code", "prefix"), [
    ("620000000000", "62"),
    ("620100000000", "6201"),
    ("620102", "620102"),
    ("620102001000", "620102001"),
    ("620102001001", "620102001001"),
    ("441900000000", "4419"),
])
async def test_descendants_prefix(code: str, prefix: str) -> None:
    assert R.code_prefix(code) == prefix
    assert await R.descendants_prefix(code) == prefix


def test_region_is_checked_on_construction() -> None:
    r = Region.of("620102001001", "红旗村", "import")
    assert (r.level, r.parent_code) == ("village", "620102001000")
    with pytest.raises(RegionError):
        Region("620102001001", "township", "620102001000", "x", "import")
    with pytest.raises(RegionError):
        Region("620102001001", "village", "620102000000", "x", "import")
    with pytest.raises(RegionError):
        Region.of("620102001001", "x", "somewhere")
    with pytest.raises(RegionError):
        Region.of("620102001001", "  ", "import")
    assert Region.of("620102", "城关区", "gb2260:201904").code == "620102000000"


# -- reference data ------------------------------------------------------------------

def test_county_divisions_from_the_data_package() -> None:
    divisions = R.county_divisions()
    by_code = {r.code: r for r in divisions}
    assert len(by_code) == len(divisions) > 3000
    assert by_code["620102000000"].name == "城关区"
    assert by_code["620102000000"].parent_code == "620100000000"
    assert by_code["620100000000"].name == "兰州市"
    assert by_code["620000000000"].name == "甘肃省"
    assert by_code["110105000000"].name == "朝阳区"
    assert by_code["110000000000"].name == "北京市"
    assert by_code["110100000000"].name == "市辖区"  # summary code the source omits
    assert {r.level for r in divisions} == {"province", "city", "county"}
    sources = {r.source for r in divisions}
    assert len(sources) == 1 and re.match(r"^gb2260:\d{6}$", sources.pop())
    # Parents first, and every parent present.
    seen: set[str] = set()
    for r in divisions:
        assert r.parent_code is None or r.parent_code in seen, r
        seen.add(r.code)


def test_county_divisions_of_an_older_revision() -> None:
    revisions = R.gb2260_revisions()
    assert "201412" in revisions and revisions[0] >= "201904"
    old = {r.code: r for r in R.county_divisions("201412")}
    assert old["620102000000"].source == "gb2260:201412"
    assert old["620102000000"].name == "城关区"


# -- generated townships and villages ------------------------------------------------

def test_generation_is_deterministic_and_well_formed() -> None:
    a = R.generate_townships_and_villages("620102", 3, 4, random.Random(7))
    b = R.generate_townships_and_villages("620102000000", 3, 4, random.Random(7))
    c = R.generate_townships_and_villages("620102", 3, 4, random.Random(8))
    assert a == b
    assert [r.name for r in a] != [r.name for r in c]
    assert [r.code for r in a] == [r.code for r in c]
    townships = [r for r in a if r.level == "township"]
    villages = [r for r in a if r.level == "village"]
    assert [t.code for t in townships] == ["620102001000", "620102002000", "620102003000"]
    assert len(villages) == 12
    assert villages[0].code == "620102001001" and villages[-1].code == "620102003004"
    for r in a:
        assert r.source == "generated"
        assert R.level_of(r.code) == r.level and R.parent_of(r.code) == r.parent_code
        assert r.code.startswith("620102")
        assert re.fullmatch(r"[\u4e00-\u9fff0-9]+", r.name), r.name
    for t in townships:
        assert t.name.endswith(("乡", "镇"))
    for v in villages:
        assert v.name.endswith("村")
    # Parents first.
    assert a.index(townships[-1]) < a.index(villages[0])


def test_generated_names_are_unique_within_a_parent() -> None:
    regions = R.generate_townships_and_villages("620102", 60, 300, 42)
    townships = [r.name for r in regions if r.level == "township"]
    assert len(set(townships)) == 60
    for t in (r for r in regions if r.level == "township"):
        names = [v.name for v in regions if v.parent_code == t.code]
        assert len(names) == 300 == len(set(names))


def test_generation_rejects_bad_input() -> None:
    with pytest.raises(RegionError):
        R.generate_townships_and_villages("620100", 1, 1, 1)  # a city
    with pytest.raises(ValueError):
        R.generate_townships_and_villages("620102", 0, 1, 1)
    with pytest.raises(ValueError):
        R.generate_townships_and_villages("620102", 1, 1000, 1)


# -- database ------------------------------------------------------------------------

async def _connect(database: str) -> asyncpg.Connection:
    conn = await asyncpg.connect(database)
    await conn.execute(_sql())
    return conn


async def test_load_and_query(database: str) -> None:
    conn = await _connect(database)
    try:
        counties = R.county_divisions()
        generated = R.generate_townships_and_villages("620102", 2, 3, random.Random(1))
        # Children before parents in the input: the loader orders them.
        assert len(generated) == 8
        assert await R.load_regions(conn, list(reversed(generated)) + counties) == len(counties) + 8
        assert await conn.fetchval("SELECT count(*) FROM regions") == len(counties) + 8

        village = await R.require_village(conn, "620102001001")
        assert village == generated[2]
        assert await R.region(conn, "620102") == next(r for r in counties if r.code == "620102000000")
        assert await R.region(conn, "620102009000") is None
        kids = await R.children(conn, "620102001000")
        assert [k.code for k in kids] == ["620102001001", "620102001002", "620102001003"]

        prefix = await R.descendants_prefix("620102")
        n = await conn.fetchval("SELECT count(*) FROM regions WHERE code LIKE $1 || '%' AND code <> $2",
                                prefix, "620102000000")
        assert n == 8
    finally:
        await conn.close()


async def test_load_is_idempotent_and_updates_names(database: str) -> None:
    conn = await _connect(database)
    try:
        base = [r for r in R.county_divisions() if r.code.startswith("62")]
        generated = R.generate_townships_and_villages("620102", 1, 2, 3)
        await R.load_regions(conn, base + generated)
        before = await conn.fetch("SELECT * FROM regions ORDER BY code")
        await R.load_regions(conn, base + generated)
        assert await conn.fetch("SELECT * FROM regions ORDER BY code") == before
        renamed = Region.of("620102001001", "新名村", "import")
        assert await R.load_regions(conn, [renamed]) == 1
        assert (await R.region(conn, "620102001001")) == renamed
        assert await conn.fetchval("SELECT count(*) FROM regions") == len(before)
        assert await R.load_regions(conn, []) == 0
    finally:
        await conn.close()


async def test_real_village_codes_are_accepted_as_import(database: str) -> None:
    conn = await _connect(database)
    try:
        await R.load_regions(conn, [r for r in R.county_divisions() if r.code.startswith("11")])
        imported = [
            Region.of("110105001000", "建外街道", "import"),
            Region.of("110105001001", "建国门外大街社区居委会", "import"),
            Region.of("110105001002", "测试村民委员会", "import"),
        ]
        assert await R.load_regions(conn, imported) == 3
        v = await R.require_village(conn, "110105001001")
        assert (v.source, v.level, v.parent_code) == ("import", "village", "110105001000")
        row = await conn.fetchrow("SELECT code, parent_code, level FROM regions WHERE code = $1", "110105001001")
        assert dict(row) == {"code": "110105001001", "parent_code": "110105001000", "level": "village"}
    finally:
        await conn.close()


async def test_require_village_errors(database: str) -> None:
    conn = await _connect(database)
    try:
        await R.load_regions(conn, [r for r in R.county_divisions() if r.code.startswith("62")]
                             + R.generate_townships_and_villages("620102", 1, 1, 0))
        for code in ("620102001999", "620102001000", "620102", "620000000000", "abc", "620102000001"):
            with pytest.raises(RegionError) as info:
                await R.require_village(conn, code)
            assert info.value.code == "unknown_village", code
        assert (await R.require_village(conn, "620102001001")).level == "village"
    finally:
        await conn.close()


async def test_table_constraints(database: str) -> None:
    conn = await _connect(database)
    try:
        await R.load_regions(conn, [r for r in R.county_divisions() if r.code.startswith("62")])
        insert = ("INSERT INTO regions (code, level, parent_code, name, source) VALUES ($1, $2, $3, $4, $5)")
        with pytest.raises(asyncpg.ForeignKeyViolationError):  # parent unknown
            await conn.execute(insert, "620102009001", "village", "620102009000", "x", "import")
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute(insert, "620102009000", "hamlet", "620102000000", "x", "import")
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute(insert, "620102009000", "township", "620102000000", "x", "somewhere")
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute(insert, "62010200900", "township", "620102000000", "x", "import")
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute(insert, "630000000000", "province", "620000000000", "x", "import")
        # A child whose parent is missing from both the input and the table.
        with pytest.raises(asyncpg.ForeignKeyViolationError):
            await R.load_regions(conn, [Region.of("620102009001", "x", "import")])
        assert await conn.fetchval("SELECT count(*) FROM regions WHERE code LIKE '620102009%'") == 0
        # The migration can be applied again.
        await conn.execute(_sql())
    finally:
        await conn.close()
