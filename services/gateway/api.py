"""Public API routes, forwarded to the owning services."""

from __future__ import annotations

import uuid
from datetime import date

import httpx
from fastapi import APIRouter, Path, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from contracts.registry import VILLAGE_CODE_PATTERN
from eventkit.runtime import problem, runtime_of

router = APIRouter(prefix="/api/v1")

_FORWARDED = ("idempotency-key", "x-correlation-id", "content-type", "accept")


class RegisterHousehold(BaseModel):
    model_config = ConfigDict(extra="forbid")

    village_code: str = Field(pattern=VILLAGE_CODE_PATTERN, examples=["620102001001"])
    member_count: int = Field(ge=1, le=50)
    registered_on: date | None = None


class HouseholdCreated(BaseModel):
    household_id: str
    version: int
    event_id: str


class VillageCount(BaseModel):
    village_code: str
    households: int
    people: int


class Problem(BaseModel):
    type: str
    title: str
    status: int
    code: str
    detail: str | None = None


async def _forward(request: Request, service: str, method: str, path: str, json: object = None) -> Response:
    runtime = runtime_of(request)
    client: httpx.AsyncClient = runtime.state["http"]
    base = getattr(runtime.settings, f"{service}_url")
    if not base:
        return problem(503, "upstream_not_configured", f"TPA_{service.upper()}_URL is not set")
    headers = {k: v for k, v in request.headers.items() if k.lower() in _FORWARDED}
    try:
        upstream = await client.request(method, base.rstrip("/") + path, json=json, headers=headers)
    except httpx.TransportError as exc:
        return problem(502, "upstream_unavailable", f"{service} is unreachable", type(exc).__name__)
    passed = {k: v for k, v in upstream.headers.items()
              if k.lower() in ("content-type", "x-correlation-id", "idempotent-replayed")}
    return Response(upstream.content, status_code=upstream.status_code, headers=passed)


@router.post("/households", status_code=201, response_model=HouseholdCreated, tags=["households"],
             summary="Register a household",
             responses={409: {"model": Problem}, 502: {"model": Problem}, 503: {"model": Problem}})
async def register_household(body: RegisterHousehold, request: Request):
    return await _forward(request, "registry", "POST", "/households", body.model_dump(mode="json"))


@router.get("/households/{household_id}", tags=["households"], summary="A household's current state",
            responses={404: {"model": Problem}, 502: {"model": Problem}, 503: {"model": Problem}})
async def get_household(household_id: uuid.UUID, request: Request):
    return await _forward(request, "registry", "GET", f"/households/{household_id}")


@router.get("/villages/{village_code}/households", response_model=VillageCount, tags=["dashboards"],
            summary="Registered households and people in a village",
            responses={502: {"model": Problem}, 503: {"model": Problem}})
async def village_households(request: Request, village_code: str = Path(pattern=VILLAGE_CODE_PATTERN)):
    return await _forward(request, "monitoring", "GET", f"/villages/{village_code}/households")
