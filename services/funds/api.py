"""Funds HTTP API: allocations, projects, disbursements, statements, anomalies, policies.

Who calls: the principal the gateway vouches for in the internal identity token
(``X-TPA-Identity``, verified by the runtime); the gateway has already checked the
action (funds:manage, funds:declare, ...). Commands answer 401 for an anonymous
call and record the caller's id as the actor.

Jurisdiction (what only this service knows: the region of the record a request is
about; rules in ``services/funds/commands.py``): an allocation's region is its
``region_code``, a project's its ``region_code``, a disbursement's the beneficiary
household's village. A command on a record outside the caller's jurisdiction, or
creating one there, is refused with 403 ``outside_jurisdiction``; so is reading one
record; lists (anomalies) show only what the jurisdiction covers. Allocations are
readable also by the jurisdictions inside their region (the budget lines they may
draw on).

Commands honour ``Idempotency-Key`` (per caller: another caller's key with the same value
is another key, never a replay of the first caller's answer) and ``If-Match`` (the aggregate's version, also
its ``ETag``), and are retried a few times when a concurrent command changed one of
the same streams (a busy allocation): the retry re-reads the balance, so it
succeeds only if the money is still there. Every refusal is a problem document
naming the failed rule.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import date
from decimal import Decimal
from typing import Annotated, Any, Callable, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

from contracts import funds as ev
from eventkit.errors import ConcurrencyError
from eventkit.events import Metadata
from eventkit.idempotency import CommandResult
from eventkit.principal import Principal
from eventkit.runtime import (Problem, current_principal, idempotent, if_match_version, jurisdiction_prefix_of,
                              runtime_of)
from eventkit.telemetry import correlation_id

from .anomalies import AnomalyRecord
from .commands import Funds, may_read_allocation, outside_jurisdiction, require_within
from .domain import Allocation, Disbursement, Project, fmt

router = APIRouter()
ERRORS = {code: {"model": Problem} for code in (401, 403, 404, 409, 412, 422)}
CONFLICT_RETRIES = 5


_POSITIVE = r"(?:[1-9][0-9]{0,9}(?:\.[0-9]{1,2})?|0\.(?:[1-9][0-9]?|0[1-9]))"


def _money(signed: bool = False, description: str = "Amount in yuan with at most two decimals, e.g. \"1250.50\" "
                                                     "(a string is exact).") -> Any:
    """Up to 10 integer digits and 2 decimals; positive, or non-zero and signed (adjustments)."""
    # no multipleOf 0.01 for the number form: binary floating point makes validators refuse 19.99
    number: dict[str, Any] = {"type": "number", "maximum": 9999999999.99}
    if signed:
        number.update({"minimum": -9999999999.99, "not": {"const": 0}})
    else:
        number["exclusiveMinimum"] = 0
    pattern = rf"^{'-?' if signed else ''}{_POSITIVE}$"
    return Annotated[Decimal, Field(max_digits=12, decimal_places=2, **({} if signed else {"gt": 0})),
                     WithJsonSchema({"anyOf": [{"type": "string", "pattern": pattern}, number],
                                     "description": description})]


Money = _money()
SignedMoney = _money(True, "Signed change in yuan, e.g. \"-500.00\".")
Text = Field(min_length=1, max_length=2000)


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CreateAllocation(_In):
    source: Literal["central", "provincial", "city", "county", "social_donation"]
    year: int = Field(ge=2000, le=2100)
    purpose: str = Text
    region_code: str = Field(pattern=ev.BUDGET_REGION_PATTERN, description="Province, city or county code.")
    amount: Money


class AdjustAllocation(_In):
    amount_delta: SignedMoney
    reason: str = Text


class FundingLine(_In):
    allocation_id: uuid.UUID
    amount: Money


class DeclareProject(_In):
    name: str = Field(min_length=1, max_length=200)
    kind: Literal[ev.PROJECT_KINDS]  # type: ignore[valid-type]
    region_code: str = Field(pattern=ev.PROJECT_REGION_PATTERN, description="Village (12) or township (9 digits).")
    budget: Money
    plan_year: int = Field(ge=2000, le=2100)
    beneficiary_household_ids: list[uuid.UUID] = Field(min_length=1, max_length=5000,
                                                       json_schema_extra={"uniqueItems": True})


class Review(_In):
    comment: str | None = Field(default=None, max_length=2000)


class ApproveProject(_In):
    approved_budget: Money
    funding: list[FundingLine] = Field(min_length=1, max_length=20)


class Reason(_In):
    reason: str = Text


class StartProject(_In):
    started_on: date


class Milestone(_In):
    name: str = Field(min_length=1, max_length=200)
    reached_on: date
    note: str | None = Field(default=None, max_length=2000)


class CompleteProject(_In):
    completed_on: date


class RequestDisbursement(_In):
    household_id: uuid.UUID
    member_id: uuid.UUID | None = None
    basis: Literal["policy", "project"]
    policy_code: str | None = Field(default=None, min_length=1, max_length=64, description="GET /policies.")
    project_id: uuid.UUID | None = None
    period: str = Field(pattern=ev.PERIOD_PATTERN, description="YYYY, YYYY-S1, YYYY-S2 or YYYY-MM.")
    amount: Money
    cost_basis: Money | None = Field(default=None, description="Reimbursed cost (banded policies).")
    account_number: str | None = Field(default=None, pattern=r"^[0-9]{8,30}$", description=(
        "Receiving account or card number: only its masked form and a keyed hash are kept."))


class ApproveDisbursement(_In):
    allocation_id: uuid.UUID | None = Field(default=None, description=(
        "Allocation to pay from (required for a policy payment; a project payment uses its funding lines)."))


class PayDisbursement(_In):
    channel: Literal[ev.PAYMENT_CHANNELS]  # type: ignore[valid-type]
    channel_reference: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:/-]+$")
    paid_on: date


class Accepted(BaseModel):
    id: str
    version: int
    status: str | None
    events: list[str]


# -- helpers -----------------------------------------------------------------------------

def funds_of(request: Request) -> Funds:
    return runtime_of(request).state["funds"]


def caller(request: Request) -> Principal:
    """The signed-in caller (401 ``unauthenticated`` for an anonymous call)."""
    return current_principal(request, "this command")


async def command(request: Request, body: BaseModel | None, handle: Callable[[Any, str, Metadata], Any],
                  status: int = 200, location: str | None = None) -> JSONResponse:
    """Run ``handle(conn, actor, meta)`` -> (aggregate, recorded) once per Idempotency-Key and caller,
    retrying on a concurrent change of the same streams."""
    who = caller(request)
    actor = who.id
    meta = Metadata(actor=actor, correlation_id=correlation_id.get())

    async def run(conn) -> CommandResult:
        agg, recorded = await handle(conn, actor, meta)
        return CommandResult(status, {"id": agg.id, "version": agg.version, "status": getattr(agg, "status", None),
                                      "events": [e.event_type for e in recorded]})

    payload = body.model_dump(mode="json") if body is not None else None
    for attempt in range(CONFLICT_RETRIES):
        try:
            response = await idempotent(request, payload, run)
            break
        except ConcurrencyError:
            if attempt == CONFLICT_RETRIES - 1:
                raise
            await asyncio.sleep(0.01 * (attempt + 1))
    if 200 <= response.status_code < 300:
        out = json.loads(response.body)
        response.headers["ETag"] = f'"{out["version"]}"'
        if location:
            response.headers["Location"] = location.format(id=out["id"])
    return response


# -- allocations ---------------------------------------------------------------------------

@router.post("/allocations", status_code=201, response_model=Accepted, responses=ERRORS, tags=["allocations"],
             summary="Create an allocation (a budget line)")
async def create_allocation(body: CreateAllocation, request: Request):
    f = funds_of(request)
    new_id = str(uuid.uuid4())

    async def handle(conn, actor, meta):
        require_within(caller(request), body.region_code, f"region {body.region_code}")
        a = Allocation(new_id)
        a.create(source=body.source, year=body.year, purpose=body.purpose, region_code=body.region_code,
                 amount=fmt(body.amount), created_by=actor, now=f.clock.now())
        return a, await f.save(conn, [a], meta)
    return await command(request, body, handle, 201, "/allocations/{id}")


@router.post("/allocations/{allocation_id}/adjustments", response_model=Accepted, responses=ERRORS,
             tags=["allocations"], summary="Adjust an allocation's amount (never below what is reserved and spent)")
async def adjust_allocation(allocation_id: uuid.UUID, body: AdjustAllocation, request: Request):
    f = funds_of(request)
    return await command(request, body, lambda conn, actor, meta: f.act(
        conn, Allocation, str(allocation_id), if_match_version(request), meta, lambda a, _: a.adjust(
            amount_delta=fmt(body.amount_delta), reason=body.reason, adjusted_by=actor, now=f.clock.now()),
        principal=caller(request)))


@router.get("/allocations/{allocation_id}", responses=ERRORS, tags=["allocations"],
            summary="An allocation from the event store: amount, reserved, spent, available")
async def get_allocation(allocation_id: uuid.UUID, request: Request):
    f = funds_of(request)
    who = current_principal(request)
    async with runtime_of(request).pool.acquire() as conn:
        a = await f.load(conn, Allocation, str(allocation_id))
    if not may_read_allocation(who, a.region_code):
        raise outside_jurisdiction(who, f"allocation {a.id}", a.region_code)
    return JSONResponse({"allocation_id": a.id, "version": a.version, "source": a.source, "year": a.year,
                         "purpose": a.purpose, "region_code": a.region_code, "amount": fmt(a.amount),
                         "reserved": fmt(a.reserved), "spent": fmt(a.spent), "available": fmt(a.available)},
                        headers={"ETag": f'"{a.version}"'})


# -- projects ----------------------------------------------------------------------------------

@router.post("/projects", status_code=201, response_model=Accepted, responses=ERRORS, tags=["projects"],
             summary="Declare a project (village or township) with budget and beneficiary households")
async def declare_project(body: DeclareProject, request: Request):
    f = funds_of(request)
    new_id = str(uuid.uuid4())

    async def handle(conn, actor, meta):
        require_within(caller(request), body.region_code, f"region {body.region_code}")
        p = Project(new_id)
        p.declare(name=body.name, kind=body.kind, region_code=body.region_code, budget=fmt(body.budget),
                  plan_year=body.plan_year, beneficiary_household_ids=[str(h) for h in body.beneficiary_household_ids],
                  declared_by=actor, now=f.clock.now())
        return p, await f.save(conn, [p], meta)
    return await command(request, body, handle, 201, "/projects/{id}")


def _project_command(path: str, body_model: type[BaseModel] | None, summary: str,
                     run: Callable[[Project, dict, Any, str, Funds], None], needs_allocations: bool = False) -> None:
    async def endpoint(project_id: uuid.UUID, request: Request, body: Any = None):
        f = funds_of(request)

        def allocations_of(p: Project) -> list[str]:
            if not needs_allocations:
                return []
            if isinstance(body, ApproveProject):
                return [str(line.allocation_id) for line in body.funding]
            return list(p.funding)
        return await command(request, body, lambda conn, actor, meta: f.act(
            conn, Project, str(project_id), if_match_version(request), meta,
            lambda p, allocations: run(p, allocations, body, actor, f), principal=caller(request),
            allocations_of=allocations_of))

    if body_model is not None:
        async def with_body(project_id: uuid.UUID, body: Any, request: Request):
            return await endpoint(project_id, request, body)
        # Annotations are strings under `from __future__ import annotations`: give FastAPI the real model.
        with_body.__annotations__ = {"project_id": uuid.UUID, "body": body_model, "request": Request}
        handler = with_body
    else:
        async def without_body(project_id: uuid.UUID, request: Request):
            return await endpoint(project_id, request)
        handler = without_body
    handler.__name__ = "project_" + path.strip("/").replace("-", "_")
    router.add_api_route(f"/projects/{{project_id}}/{path}", handler, methods=["POST"], response_model=Accepted,
                         responses=ERRORS, tags=["projects"], summary=summary)


_project_command("review", Review, "Record the review of a declared project",
                 lambda p, _, b, actor, f: p.review(reviewer=actor, comment=b.comment, now=f.clock.now()))
_project_command("approval", ApproveProject, "Approve with funding lines: reserves each on its allocation",
                 lambda p, allocs, b, actor, f: p.approve(
                     approved_budget=fmt(b.approved_budget), approved_by=actor, now=f.clock.now(), allocations=allocs,
                     funding=[{"allocation_id": str(x.allocation_id), "amount": fmt(x.amount)} for x in b.funding]),
                 needs_allocations=True)
_project_command("rejection", Reason, "Reject a declared or reviewed project",
                 lambda p, _, b, actor, f: p.reject(reason=b.reason, rejected_by=actor, now=f.clock.now()))
_project_command("start", StartProject, "Start an approved project",
                 lambda p, _, b, actor, f: p.start(started_on=b.started_on, started_by=actor, now=f.clock.now()))
_project_command("milestones", Milestone, "Record a milestone of a project in progress",
                 lambda p, _, b, actor, f: p.record_milestone(name=b.name, reached_on=b.reached_on, note=b.note,
                                                              recorded_by=actor, now=f.clock.now()))
_project_command("completion", CompleteProject, "Complete a project in progress",
                 lambda p, _, b, actor, f: p.complete(completed_on=b.completed_on, completed_by=actor,
                                                      now=f.clock.now()))
_project_command("acceptance", None, "Accept a completed project (releases what is left of its funding)",
                 lambda p, allocs, b, actor, f: p.accept(accepted_by=actor, now=f.clock.now(), allocations=allocs),
                 needs_allocations=True)
_project_command("cancellation", Reason, "Cancel a project (releases its reservations)",
                 lambda p, allocs, b, actor, f: p.cancel(reason=b.reason, cancelled_by=actor, now=f.clock.now(),
                                                         allocations=allocs), needs_allocations=True)


@router.get("/projects/{project_id}", responses=ERRORS, tags=["projects"], summary="A project from the event store")
async def get_project(project_id: uuid.UUID, request: Request):
    f = funds_of(request)
    async with runtime_of(request).pool.acquire() as conn:
        p = await f.load_within(conn, Project, str(project_id), None, current_principal(request))
    return JSONResponse({
        "project_id": p.id, "version": p.version, "name": p.name, "kind": p.kind, "region_code": p.region_code,
        "status": p.status, "plan_year": p.plan_year, "budget": fmt(p.budget),
        "approved_budget": fmt(p.approved_budget) if p.approved_budget is not None else None,
        "funding": [{"allocation_id": a, "amount": fmt(x)} for a, x in p.funding.items()],
        "committed": fmt(p.committed), "paid": fmt(p.paid), "beneficiary_households": len(p.beneficiaries),
        "milestones": p.milestones}, headers={"ETag": f'"{p.version}"'})


# -- disbursements -----------------------------------------------------------------------------

@router.post("/disbursements", status_code=201, response_model=Accepted, responses=ERRORS, tags=["disbursements"],
             summary="Request a payment to a household or member, under a policy or a project")
async def request_disbursement(body: RequestDisbursement, request: Request):
    f = funds_of(request)
    new_id = str(uuid.uuid4())
    return await command(request, body, lambda conn, actor, meta: f.request(
        conn, new_id, household_id=str(body.household_id), basis=body.basis, period=body.period,
        amount=fmt(body.amount), requested_by=actor, meta=meta, principal=caller(request),
        member_id=str(body.member_id) if body.member_id else None, policy_code=body.policy_code,
        project_id=str(body.project_id) if body.project_id else None,
        cost_basis=fmt(body.cost_basis) if body.cost_basis is not None else None,
        account_number=body.account_number), 201, "/disbursements/{id}")


@router.post("/disbursements/{disbursement_id}/approval", response_model=Accepted, responses=ERRORS,
             tags=["disbursements"], summary="Approve: eligibility re-checked, the amount reserved")
async def approve_disbursement(disbursement_id: uuid.UUID, body: ApproveDisbursement, request: Request):
    f = funds_of(request)
    return await command(request, body, lambda conn, actor, meta: f.approve(
        conn, str(disbursement_id), if_match_version(request), approved_by=actor, meta=meta,
        principal=caller(request), allocation_id=str(body.allocation_id) if body.allocation_id else None))


@router.post("/disbursements/{disbursement_id}/payment", response_model=Accepted, responses=ERRORS,
             tags=["disbursements"], summary="Record the channel's payment (anomaly rules run)")
async def pay_disbursement(disbursement_id: uuid.UUID, body: PayDisbursement, request: Request):
    f = funds_of(request)
    return await command(request, body, lambda conn, actor, meta: f.pay(
        conn, str(disbursement_id), if_match_version(request), channel=body.channel,
        channel_reference=body.channel_reference, paid_on=body.paid_on, meta=meta, principal=caller(request)))


@router.post("/disbursements/{disbursement_id}/failure", response_model=Accepted, responses=ERRORS,
             tags=["disbursements"], summary="Refuse, or record a failed payment attempt (releases the amount)")
async def fail_disbursement(disbursement_id: uuid.UUID, body: Reason, request: Request):
    f = funds_of(request)
    return await command(request, body, lambda conn, actor, meta: f.fail_or_reverse(
        conn, str(disbursement_id), if_match_version(request), reverse=False, reason=body.reason, meta=meta,
        principal=caller(request)))


@router.post("/disbursements/{disbursement_id}/reversal", response_model=Accepted, responses=ERRORS,
             tags=["disbursements"], summary="The paid amount came back: reverse the payment")
async def reverse_disbursement(disbursement_id: uuid.UUID, body: Reason, request: Request):
    f = funds_of(request)
    return await command(request, body, lambda conn, actor, meta: f.fail_or_reverse(
        conn, str(disbursement_id), if_match_version(request), reverse=True, reason=body.reason, meta=meta,
        principal=caller(request)))


@router.get("/disbursements/{disbursement_id}", responses=ERRORS, tags=["disbursements"],
            summary="A disbursement from the event store")
async def get_disbursement(disbursement_id: uuid.UUID, request: Request):
    f = funds_of(request)
    async with runtime_of(request).pool.acquire() as conn:
        d = await f.load_within(conn, Disbursement, str(disbursement_id), None, current_principal(request))
        masked = await conn.fetchval("SELECT account_masked FROM fd_disbursements WHERE disbursement_id = $1", d.id)
    return JSONResponse({
        "disbursement_id": d.id, "version": d.version, "status": d.status, "household_id": d.household_id,
        "member_id": d.member_id, "village_code": d.village_code, "basis": d.basis, "policy_code": d.policy_code,
        "policy_version": d.policy_version, "project_id": d.project_id, "period": d.period, "amount": fmt(d.amount),
        "standard_amount": fmt(d.standard_amount) if d.standard_amount is not None else None,
        "allocation_id": d.allocation_id, "paid_on": d.paid_on.isoformat() if d.paid_on else None,
        "channel": d.channel, "channel_reference": d.channel_reference, "account_masked": masked},
        headers={"ETag": f'"{d.version}"'})


# -- anomalies, policies -----------------------------------------------------------------------

class AnomalyPage(BaseModel):
    total: int
    items: list[dict[str, Any]]


# An anomaly's region: its village (a payment's anomaly); the project's region (project_overspend);
# any of the villages paid into the account (shared_account: it concerns each of them). $2 is the
# caller's code prefix.
_ANOMALY_WITHIN = (
    "(e.data->>'village_code' LIKE $2::text || '%'"
    " OR (e.data->>'subject_type' = 'account' AND EXISTS (SELECT 1 FROM jsonb_array_elements_text("
    "     CASE WHEN jsonb_typeof(e.data->'evidence'->'village_codes') = 'array'"
    "          THEN e.data->'evidence'->'village_codes' ELSE '[]'::jsonb END) AS v (code)"
    "     WHERE v.code LIKE $2::text || '%'))"
    " OR (e.data->>'subject_type' = 'project' AND EXISTS (SELECT 1 FROM events p"
    "     WHERE p.stream_id = e.data->>'subject_id' AND p.version = 1 AND p.event_type = 'ProjectDeclared'"
    "     AND rpad(p.data->>'region_code', 12, '0') LIKE $2::text || '%')))")


@router.get("/anomalies", response_model=AnomalyPage, tags=["anomalies"], responses=ERRORS,
            summary="Anomalies found by the rules in the caller's jurisdiction (newest first)")
async def list_anomalies(request: Request,
                         village_code: str | None = Query(default=None, pattern=ev.VILLAGE_CODE_PATTERN),
                         household_id: uuid.UUID | None = None,
                         rule: str | None = Query(default=None, max_length=64, pattern=r"^[a-z_]+$"),
                         limit: int = Query(default=100, ge=1, le=1000)):
    where, args = ["e.stream_type = $1", _ANOMALY_WITHIN], [AnomalyRecord.stream_type, jurisdiction_prefix_of(request)]
    for column, value in (("village_code", village_code), ("household_id", str(household_id) if household_id
                                                           else None), ("rule", rule)):
        if value is not None:
            args.append(value)
            where.append(f"e.data->>'{column}' = ${len(args)}")
    sql = " AND ".join(where)
    pool = runtime_of(request).pool
    total = await pool.fetchval(f"SELECT count(*) FROM events e WHERE {sql}", *args)
    rows = await pool.fetch(f"SELECT e.data FROM events e WHERE {sql} ORDER BY e.global_position DESC LIMIT {limit}",
                            *args)
    return {"total": total, "items": [json.loads(r["data"]) if isinstance(r["data"], str) else r["data"]
                                      for r in rows]}


@router.get("/policies", tags=["reference"], summary="The policy catalogue with its dated standards")
async def policies(request: Request) -> dict[str, Any]:
    catalogue = funds_of(request).catalogue
    out = {}
    for code, p in catalogue.items():
        out[code] = {
            "code": code, "name": p.name, "label_zh": p.label_zh, "group": p.group, "paid_to": p.paid_to,
            "unit": p.unit, "period": p.period, "kind": p.kind, "statuses": sorted(p.statuses),
            "schooling_stages": sorted(p.stages) if p.stages else None,
            "channels": list(p.channels) if p.channels else None,
            "versions": [{"version": v.version, "effective_from": v.effective_from.isoformat(),
                          "until": v.until.isoformat() if v.until else None,
                          "amount": fmt(v.amount) if v.amount is not None else None,
                          "threshold": fmt(v.threshold) if v.threshold is not None else None,
                          "cap": fmt(v.cap) if v.cap is not None else None,
                          "bands": [{"from": fmt(b.start), "rate": str(b.rate)} for b in v.bands]}
                         for v in p.versions]}
    return {"policies": out}
