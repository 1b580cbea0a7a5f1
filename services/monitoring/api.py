"""Monitoring query API (walking skeleton: household counts per village).

The gateway checks the village in the path against the caller's jurisdiction; the service
checks it again (defence in depth): 403 ``outside_jurisdiction`` otherwise."""

from __future__ import annotations

from fastapi import APIRouter, Path, Request
from pydantic import BaseModel

from contracts.registry import VILLAGE_CODE_PATTERN
from eventkit.runtime import Problem, require_covers, runtime_of

router = APIRouter(tags=["dashboards"])


class VillageCount(BaseModel):
    village_code: str
    households: int
    people: int


@router.get("/villages/{village_code}/households", response_model=VillageCount,
            responses={code: {"model": Problem} for code in (401, 403, 422)},
            summary="Registered households and people in a village")
async def village_households(request: Request,
                             village_code: str = Path(pattern=VILLAGE_CODE_PATTERN)) -> VillageCount:
    require_covers(request, village_code, f"village {village_code}")
    row = await runtime_of(request).pool.fetchrow(
        "SELECT households, people FROM village_households WHERE village_code = $1", village_code)
    return VillageCount(village_code=village_code, households=row["households"] if row else 0,
                        people=row["people"] if row else 0)
