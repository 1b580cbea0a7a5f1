"""Test data for the registry: valid resident ID numbers, regions, household bodies."""

from __future__ import annotations

import itertools
from datetime import date
from typing import Any

from services.registry import regions
from services.registry.identity import check_character

_seq = itertools.count(101)


def id_number(birth: date, male: bool = True, address: str = "620102") -> str:
    """A valid 18-digit resident ID number (GB 11643 check character)."""
    seq = next(_seq) % 1000
    if (seq % 2 == 1) != male:
        seq = (seq + 1) % 1000
    first17 = f"{address}{birth:%Y%m%d}{seq:03d}"
    return first17 + check_character(first17)


async def seed_village(conn: Any, village_code: str) -> None:
    """Insert the village and its ancestors into the registry's region table."""
    chain = []
    code: str | None = village_code
    while code is not None:
        chain.append(regions.Region.of(code, f"测试{regions.level_of(code)}{code[-3:]}", "import"))
        code = regions.parent_of(code)
    await regions.load_regions(conn, chain)


def member(name: str, birth: date, relation: str, male: bool = True, **extra: Any) -> dict[str, Any]:
    return {"name": name, "id_number": id_number(birth, male), "relation": relation, **extra}


def household(village_code: str, members: list[dict[str, Any]] | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "village_code": village_code,
        "address": "二组15号",
        "attribute": "general",
        "identification_standard": "national",
        "registered_on": "2024-03-01",
        "members": members or [
            member("张国强", date(1972, 5, 1), "head"),
            member("李秀英", date(1975, 8, 9), "10", male=False),
            member("张小明", date(2012, 9, 1), "20", facts={"schooling_stage": "junior"}),
        ],
        **extra,
    }


def unknown_village(village_code: str) -> str:
    """Another village of the same township (so within the same jurisdiction), not in the region table."""
    return village_code[:9] + ("998" if village_code.endswith("999") else "999")


def other_county(village_code: str) -> str:
    """A village of another county (a jurisdiction that does not cover ``village_code``)."""
    county = int(village_code[4:6])
    return f"{village_code[:4]}{(county - 9) % 90 + 10:02d}{village_code[6:]}"  # the next county, 10-99
