"""Registry HTTP API: household commands, village profiles, personal-data erasure."""

from __future__ import annotations

import json
import uuid
from typing import Annotated, Any, Awaitable, Callable

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import JSONResponse

from eventkit.events import Metadata, RecordedEvent
from eventkit.idempotency import CommandResult
from eventkit.runtime import (domain_problem, idempotent, principal_of, problem, require_covers, required_actor,
                              runtime_of)
from eventkit.telemetry import correlation_id

from . import changes, codes
from .commands import MemberInput, Registry
from .queries import household_village
from .domain import DomainError, Household
from .schemas import (
    AddMember, AssignCadre, AssistancePlan, ChangeHead, ChangeRequestAccepted, ChangeRequestBody, ChangeRequestList,
    ChangeRequestSummary, ChangeRequestView, ChangeStatus, CommandAccepted, Coordinates, IncomeAssessment,
    LivingConditions, MemberFacts, PovertyCauses, Problem, RegisterHousehold, ReleaseCadre, RemoveMember,
    StatusDecision, VillageProfile, facts,
)

router = APIRouter(tags=["households"])

Year = Annotated[int, Path(ge=2000, le=2100)]
CadreId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:-]+$")]

ERRORS = {404: {"model": Problem}, 409: {"model": Problem}, 412: {"model": Problem}, 422: {"model": Problem}}


def registry_of(request: Request) -> Registry:
    return runtime_of(request).state["registry"]


def metadata(request: Request) -> Metadata:
    principal = principal_of(request)
    return Metadata(actor=principal.id if principal else None, correlation_id=correlation_id.get())


def if_match(request: Request) -> int | None:
    raw = request.headers.get("if-match")
    if raw is None or raw.strip() == "*":
        return None
    try:
        return int(raw.strip().strip('"').removeprefix("W/").strip('"'))
    except ValueError:
        raise DomainError("invalid_if_match", "If-Match must be the household version (an ETag)", 400) from None


def _member(m) -> MemberInput:
    return MemberInput(name=m.name, id_number=m.id_number, relation=m.relation, birth_date=m.birth_date,
                       sex=m.sex, phone=m.phone, ethnicity=m.ethnicity, profile=facts(m.facts))


def _accepted(status: int, household: Household, recorded: list[RecordedEvent], **ids: str) -> CommandResult:
    body = {"household_id": household.id, "version": household.version,
            "events": [e.event_type for e in recorded], **ids}
    return CommandResult(status, body)


async def _command(request: Request, household_id: uuid.UUID, body: Any,
                   action: Callable[[Registry, Any, Household, Metadata], Awaitable[Any]],
                   status: int = 200) -> JSONResponse:
    """Load the household (checking If-Match), run the action, save, remember the result.

    The action returns the recorded events, or ``({name: id}, events)`` to add ids to the answer.
    """
    reg = registry_of(request)
    try:
        expected = if_match(request)

        async def handle(conn) -> CommandResult:
            household = await reg.load(conn, str(household_id), expected)
            require_covers(request, household.village_code, f"household {household_id}")
            out = await action(reg, conn, household, metadata(request))
            ids, recorded = out if isinstance(out, tuple) else ({}, out)
            return _accepted(status, household, recorded, **ids)

        response = await idempotent(request, body.model_dump(mode="json") if body is not None else None, handle)
    except DomainError as exc:
        return domain_problem(await _redacted(request, exc))
    if response.status_code == status:
        response.headers["ETag"] = f'"{_version(response)}"'
    return response


def _version(response: JSONResponse) -> int:
    return json.loads(response.body)["version"]


@router.post("/households", status_code=201, response_model=CommandAccepted, responses=ERRORS,
             summary="Register a household with its members")
async def register_household(body: RegisterHousehold, request: Request):
    reg = registry_of(request)
    try:
        require_covers(request, body.village_code, f"village {body.village_code}")
    except DomainError as exc:
        return domain_problem(exc)

    async def handle(conn) -> CommandResult:
        household, recorded = await reg.register_household(
            conn, village_code=body.village_code, address=body.address, attribute=body.attribute,
            identification_standard=body.identification_standard, registered_on=body.registered_on,
            members=[_member(m) for m in body.members], meta=metadata(request))
        return _accepted(201, household, recorded)

    try:
        response = await idempotent(request, body.model_dump(mode="json"), handle)
    except DomainError as exc:
        return domain_problem(await _redacted(request, exc))
    if response.status_code == 201:
        response.headers["ETag"] = f'"{_version(response)}"'
    return response


async def _redacted(request: Request, exc: DomainError) -> DomainError:
    """A ``duplicate_person`` refusal names the other household only to a caller who may see it:
    the person is refused either way (one active household per person, register-wide)."""
    holder = exc.details.get("household_id") if exc.code == "duplicate_person" else None
    if holder is None:
        return exc
    village = await household_village(runtime_of(request).pool, uuid.UUID(str(holder)))
    principal = principal_of(request)
    if village is not None and principal is not None and principal.covers(village):
        return exc
    return DomainError("duplicate_person", f"{exc.details.get('id_masked')} already belongs to a household "
                       "outside your jurisdiction", 409, id_masked=exc.details.get("id_masked"))


@router.post("/households/{household_id}/members", response_model=CommandAccepted, responses=ERRORS,
             summary="Add a member (birth, marriage, moving in)")
async def add_member(household_id: uuid.UUID, body: AddMember, request: Request):
    async def action(reg: Registry, conn, household: Household, meta: Metadata):
        member_id, recorded = await reg.add_member(conn, household, _member(body.member), body.reason,
                                                   body.joined_on, meta)
        return {"member_id": member_id}, recorded
    return await _command(request, household_id, body, action)


@router.post("/households/{household_id}/members/{member_id}/removal", response_model=CommandAccepted,
             responses=ERRORS, summary="Remove a member (death, marriage out, moving out, ...)")
async def remove_member(household_id: uuid.UUID, member_id: uuid.UUID, body: RemoveMember, request: Request):
    return await _command(request, household_id, body, lambda reg, conn, h, meta: reg.remove_member(
        conn, h, str(member_id), body.reason, body.removed_on, body.note, meta))


async def _save(reg: Registry, conn, household: Household, meta: Metadata) -> list[RecordedEvent]:
    return await reg.households.save(household, meta, conn=conn)


def _then_save(change: Callable[[Household], Any]):
    async def action(reg: Registry, conn, household: Household, meta: Metadata):
        change(household)
        return await _save(reg, conn, household, meta)
    return action


@router.patch("/households/{household_id}/members/{member_id}", response_model=CommandAccepted,
              responses=ERRORS, summary="Update a member's health, education, schooling, skills, work, insurance")
async def update_member(household_id: uuid.UUID, member_id: uuid.UUID, body: MemberFacts, request: Request):
    return await _command(request, household_id, body,
                          _then_save(lambda h: changes.update_member(h, str(member_id), body)))


@router.post("/households/{household_id}/head", response_model=CommandAccepted, responses=ERRORS,
             summary="Change the household head")
async def change_head(household_id: uuid.UUID, body: ChangeHead, request: Request):
    return await _command(request, household_id, body,
                          _then_save(lambda h: h.change_head(body.member_id, body.changed_on)))


@router.put("/households/{household_id}/incomes/{year}", response_model=CommandAccepted, responses=ERRORS,
            summary="Record the income assessment of a year (per-capita net income is computed)")
async def assess_income(household_id: uuid.UUID, year: Year, body: IncomeAssessment, request: Request):
    return await _command(request, household_id, body,
                          _then_save(lambda h: changes.assess_income(h, year, body)))


@router.put("/households/{household_id}/conditions", response_model=CommandAccepted, responses=ERRORS,
            summary="Assess living conditions (food, clothing, water, schooling, medical care, housing, ...)")
async def assess_conditions(household_id: uuid.UUID, body: LivingConditions, request: Request):
    return await _command(request, household_id, body,
                          _then_save(lambda h: changes.assess_conditions(h, None, body)))


@router.put("/households/{household_id}/causes", response_model=CommandAccepted, responses=ERRORS,
            summary="Record poverty causes (one primary, others)")
async def record_causes(household_id: uuid.UUID, body: PovertyCauses, request: Request):
    return await _command(request, household_id, body,
                          _then_save(lambda h: changes.record_causes(h, None, body)))


@router.post("/households/{household_id}/cadres", response_model=CommandAccepted, responses=ERRORS,
             summary="Assign an assistance cadre and unit")
async def assign_cadre(household_id: uuid.UUID, body: AssignCadre, request: Request):
    return await _command(request, household_id, body,
                          _then_save(lambda h: h.assign_cadre(body.cadre_id, body.unit, body.assigned_on)))


@router.post("/households/{household_id}/cadres/{cadre_id}/release", response_model=CommandAccepted,
             responses=ERRORS, summary="Release an assistance cadre")
async def release_cadre(household_id: uuid.UUID, cadre_id: CadreId, body: ReleaseCadre, request: Request):
    return await _command(request, household_id, body,
                          _then_save(lambda h: h.release_cadre(cadre_id, body.released_on, body.reason)))


@router.put("/households/{household_id}/plans/{year}", response_model=CommandAccepted, responses=ERRORS,
            summary="Record the assistance plan and measures of a year")
async def record_plan(household_id: uuid.UUID, year: Year, body: AssistancePlan, request: Request):
    return await _command(request, household_id, body, _then_save(lambda h: changes.record_plan(h, year, body)))


@router.put("/households/{household_id}/coordinates", response_model=CommandAccepted, responses=ERRORS,
            summary="Set the household's coordinates (attendance geofence)")
async def set_coordinates(household_id: uuid.UUID, body: Coordinates, request: Request):
    return await _command(request, household_id, body,
                          _then_save(lambda h: changes.set_coordinates(h, None, body)))


@router.post("/households/{household_id}/status-decisions", response_model=CommandAccepted, responses=ERRORS,
             summary="Apply a review decision's effect on status (idempotent by decision event id)")
async def apply_status_decision(household_id: uuid.UUID, body: StatusDecision, request: Request):
    async def action(reg: Registry, conn, household: Household, meta: Metadata):
        meta = Metadata(actor=meta.actor, correlation_id=meta.correlation_id, causation_id=body.decision_event_id)
        recorded = await reg.apply_decision(
            conn, household_id=household.id, decision_event_id=body.decision_event_id, case_id=body.case_id,
            status_effect=body.status_effect, effective_on=body.effective_on,
            monitoring_object_type=body.monitoring_object_type, meta=meta)
        if recorded:
            household.version = recorded[-1].version
        return recorded
    return await _command(request, household_id, body, action)


@router.post("/households/{household_id}/members/{member_id}/erasure", response_model=CommandAccepted,
             responses=ERRORS, summary="Erase a member's personal data from the vault (history stays consistent)")
async def erase_member(household_id: uuid.UUID, member_id: uuid.UUID, request: Request):
    return await _command(request, household_id, None, lambda reg, conn, h, meta: reg.erase_personal_data(
        conn, h, str(member_id), meta))


# -- change requests -------------------------------------------------------------------

def _change_request_path(household_id: str, change_request_id: str) -> str:
    return f"/households/{household_id}/change-requests/{change_request_id}"


@router.post("/households/{household_id}/change-requests", status_code=201, response_model=ChangeRequestAccepted,
             responses={**ERRORS, 401: {"model": Problem}},
             summary="Propose a change to household data (counts once a data_change case approves it)")
async def request_change(household_id: uuid.UUID, body: ChangeRequestBody, request: Request):
    try:
        cadre = required_actor(request, "a change request")
    except DomainError as exc:
        return domain_problem(exc)
    change = body.root
    target = str(change.target) if change.target is not None else None
    proposed = changes.stored(change.changes)

    async def action(reg: Registry, conn, household: Household, meta: Metadata):
        change_request_id, recorded = await reg.request_change(
            conn, household, kind=change.kind, target=target, proposed=proposed, reason=change.reason.strip(),
            requested_by=cadre, meta=Metadata(actor=cadre, correlation_id=meta.correlation_id))
        return {"change_request_id": change_request_id}, recorded

    response = await _command(request, household_id, body, action, status=201)
    if response.status_code == 201:
        response.headers["Location"] = _change_request_path(
            str(household_id), json.loads(response.body)["change_request_id"])
    return response


_CHANGE_REQUEST_COLUMNS = (
    "id::text AS change_request_id, household_id::text AS household_id, kind, target, changes, reason,"
    " requested_by, requested_at, base_version, status, case_id, decision_event_id, decided_at, closed_reason")


def _change_request(row: Any) -> dict[str, Any]:
    out = dict(row)
    out["changes"] = json.loads(out["changes"]) if isinstance(out["changes"], str) else out["changes"]
    out["fields"] = changes.fields_of(out["kind"], out["changes"])
    return out


async def _household_missing(conn: Any, household_id: uuid.UUID) -> JSONResponse | None:
    found = await conn.fetchval(
        "SELECT 1 FROM events WHERE stream_id = $1 AND stream_type = 'household' LIMIT 1", str(household_id))
    if found:
        return None
    return problem(404, "household_not_found", "Not found", f"household {household_id} is not registered",
                   household_id=str(household_id))


async def _outside(request: Request, household_id: uuid.UUID) -> JSONResponse | None:
    """A 403 problem when the household lies outside the caller's jurisdiction (None otherwise, also
    for a household not registered: the query answers that)."""
    village = await household_village(runtime_of(request).pool, household_id)
    if village is None:
        return None
    try:
        require_covers(request, village, f"household {household_id}")
    except DomainError as exc:
        return domain_problem(exc)
    return None


@router.get("/households/{household_id}/change-requests", response_model=ChangeRequestList,
            responses={404: {"model": Problem}}, summary="The household's change requests, newest first")
async def list_change_requests(request: Request, household_id: uuid.UUID,
                               status: ChangeStatus | None = Query(None, description="Only requests in this status.")):
    if (refused := await _outside(request, household_id)) is not None:
        return refused
    async with runtime_of(request).pool.acquire() as conn:
        rows = await conn.fetch(
            f"SELECT {_CHANGE_REQUEST_COLUMNS} FROM change_requests WHERE household_id = $1"
            " AND ($2::text IS NULL OR status = $2) ORDER BY requested_at DESC, id DESC", household_id, status)
        if not rows:
            missing = await _household_missing(conn, household_id)
            if missing is not None:
                return missing
    return ChangeRequestList(items=[ChangeRequestSummary.model_validate(_change_request(r)) for r in rows])


@router.get("/households/{household_id}/change-requests/{change_request_id}", response_model=ChangeRequestView,
            responses={404: {"model": Problem}}, summary="One change request with its proposed values")
async def get_change_request(request: Request, household_id: uuid.UUID, change_request_id: uuid.UUID):
    if (refused := await _outside(request, household_id)) is not None:
        return refused
    row = await runtime_of(request).pool.fetchrow(
        f"SELECT {_CHANGE_REQUEST_COLUMNS} FROM change_requests WHERE household_id = $1 AND id = $2",
        household_id, change_request_id)
    if row is None:
        return problem(404, "change_request_not_found", "Not found",
                       f"household {household_id} has no change request {change_request_id}",
                       household_id=str(household_id))
    return ChangeRequestView.model_validate(_change_request(row))


@router.put("/villages/{village_code}/profile", tags=["villages"], responses=ERRORS,
            summary="Record a dated village profile (populations, exit indicators)")
async def update_village_profile(village_code: str, body: VillageProfile, request: Request):
    from . import regions

    reg = registry_of(request)
    try:
        require_covers(request, village_code, f"village {village_code}")
    except DomainError as exc:
        return domain_problem(exc)

    async def handle(conn) -> CommandResult:
        try:
            await regions.require_village(conn, village_code)
        except regions.RegionError as exc:
            raise DomainError("unknown_village", str(exc), field="village_code") from exc
        village = await reg.villages.load(village_code, conn=conn)
        village.update_profile(**body.model_dump(exclude_none=True))
        recorded = await reg.villages.save(village, metadata(request), conn=conn)
        return CommandResult(200, {"village_code": village_code, "version": village.version,
                                   "events": [e.event_type for e in recorded]})

    try:
        return await idempotent(request, body.model_dump(mode="json"), handle)
    except DomainError as exc:
        return domain_problem(exc)


@router.get("/code-lists", tags=["reference"], summary="The registry's code lists with Chinese labels")
async def code_lists() -> dict[str, Any]:
    return codes.CODE_LISTS
