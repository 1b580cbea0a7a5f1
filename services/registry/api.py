"""Registry HTTP API (walking skeleton: household registration)."""

from __future__ import annotations

import uuid
from datetime import date

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from contracts.registry import VILLAGE_CODE_PATTERN
from eventkit.aggregate import Repository
from eventkit.events import Metadata
from eventkit.idempotency import CommandResult
from eventkit.runtime import idempotent, problem, runtime_of
from eventkit.telemetry import correlation_id

from .domain import DomainError, Household

router = APIRouter(tags=["households"])


class RegisterHousehold(BaseModel):
    model_config = ConfigDict(extra="forbid")

    village_code: str = Field(pattern=VILLAGE_CODE_PATTERN, examples=["620102001001"])
    member_count: int = Field(ge=1, le=50)
    registered_on: date | None = None


class HouseholdCreated(BaseModel):
    household_id: str
    version: int
    event_id: str


class Problem(BaseModel):
    type: str
    title: str
    status: int
    code: str
    detail: str | None = None


@router.post(
    "/households", status_code=201, response_model=HouseholdCreated,
    summary="Register a household",
    responses={409: {"model": Problem}, 422: {"description": "Invalid input"}},
)
async def register_household(body: RegisterHousehold, request: Request):
    runtime = runtime_of(request)
    repo = Repository(runtime.store, Household)

    async def handle(conn) -> CommandResult:
        household = Household(str(uuid.uuid4()))
        household.register(body.village_code, body.member_count, body.registered_on)
        recorded = await repo.save(
            household,
            Metadata(actor=request.headers.get("x-tpa-actor"), correlation_id=correlation_id.get()),
            conn=conn)
        return CommandResult(201, {"household_id": household.id, "version": household.version,
                                   "event_id": str(recorded[-1].event_id)})

    try:
        return await idempotent(request, body.model_dump(mode="json"), handle)
    except DomainError as exc:
        return problem(exc.status, exc.code, str(exc))


@router.get("/households/{household_id}", summary="A household's current state",
            responses={404: {"model": Problem}})
async def get_household(household_id: uuid.UUID, request: Request):
    runtime = runtime_of(request)
    household = await Repository(runtime.store, Household).load(str(household_id))
    if not household.exists:
        return problem(404, "not_found", f"household {household_id} not found")
    return {"household_id": household.id, "village_code": household.village_code,
            "member_count": household.member_count, "version": household.version}
