"""Workflow HTTP API: case commands (open, decide, batch decisions, objections,
comparison results, escalation) and queries (case lists, a case with its
timeline, village notice boards, a reviewer's inbox, case types).

Who acts: the principal the gateway vouches for in the internal identity token
``X-TPA-Identity`` (user id, roles, level, jurisdiction; or a client system and its
scopes), verified by the service runtime. Commands that need a reviewer answer 401
for an anonymous call. Filing an objection to a public notice needs no identity:
anyone may object, name optional.

Jurisdiction: the gateway checks the action and the regions named in the path; this
service checks what only it knows, the village of the case or household a request is
about. Opening a case needs a jurisdiction covering the household's village; every
command on a case except filing an objection is refused 403 ``outside_jurisdiction``
for a case outside the caller's jurisdiction, before anything else about the case is
checked or disclosed (an unknown case stays a 404).

Commands honour ``Idempotency-Key`` and ``If-Match`` (the case version, also its
``ETag``); lists and boards read the case board (eventually consistent), a single
case and its timeline are folded from the event store.
"""

from __future__ import annotations

import json
import uuid
from typing import Any, Literal

from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from contracts.registry import VILLAGE_CODE_PATTERN
from contracts.workflow_cases import COMPARISON_SOURCES
from eventkit.errors import DomainError
from eventkit.events import Metadata
from eventkit.idempotency import CommandResult
from eventkit.runtime import (Problem, current_principal, idempotent, if_match_version, principal_of, problem,
                              require_covers, required_actor, runtime_of)
from eventkit.telemetry import correlation_id

from .commands import MAX_BATCH, Authorise, BatchRefused, Workflow
from .domain import Case, Reviewer

router = APIRouter()

Text = Field(min_length=1, max_length=2000)


ERRORS = {code: {"model": Problem} for code in (401, 403, 404, 409, 412, 422)}


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OpenCase(_In):
    case_type: str = Field(min_length=1, max_length=64, description="A case type id (GET /case-types).")
    household_id: uuid.UUID
    reason: str = Text
    subject: str | None = Field(default=None, min_length=1, max_length=128, description=(
        "What the case is about within its type: a risk code (return_risk), a need kind (assistance_need)."))
    monitoring_object_type: Literal["unstable_lifted_out", "marginal", "sudden_hardship"] | None = None


class Decide(_In):
    step_id: str = Field(min_length=1, max_length=64)
    decision: Literal["approve", "reject", "return"]
    comment: str | None = Field(default=None, max_length=2000,
                                description="Required for a reject or a return: the reason.")
    return_to: str | None = Field(default=None, max_length=64, description="Target step of a return.")
    override_reason: str | None = Field(default=None, max_length=2000,
                                        description="Approving a comparison step over hits needs a reason.")


class BatchDecide(_In):
    village_code: str = Field(pattern=VILLAGE_CODE_PATTERN)
    step_id: str = Field(min_length=1, max_length=64)
    decision: Literal["approve", "reject", "return"]
    comment: str | None = Field(default=None, max_length=2000)
    return_to: str | None = Field(default=None, max_length=64)
    case_ids: list[uuid.UUID] = Field(min_length=1, max_length=MAX_BATCH, json_schema_extra={"uniqueItems": True},
                                      description="Distinct case ids, all of the village.")


class FileObjection(_In):
    content: str = Text
    name: str | None = Field(default=None, max_length=50, description="Optional; only a masked form is kept.")


class ResolveObjection(_In):
    finding: str = Text
    upheld: bool


class ComparisonResult(_In):
    member_id: uuid.UUID
    source: Literal[COMPARISON_SOURCES]  # type: ignore[valid-type]
    hit: bool = Field(description="True when the member matches an exclusion rule in that department's data.")
    detail: str | None = Field(default=None, max_length=2000)


class RecordComparisons(_In):
    results: list[ComparisonResult] = Field(min_length=1, max_length=200)


class Escalate(_In):
    reason: str = Text


class Resolve(_In):
    what_was_done: str = Text


class CaseAccepted(BaseModel):
    case_id: str
    version: int
    current_step: str | None
    closed: bool
    events: list[str]
    objection_id: str | None = None


class BatchItem(BaseModel):
    case_id: str
    version: int
    current_step: str | None
    closed: bool


class BatchAccepted(BaseModel):
    decided: list[BatchItem]


class BatchError(BaseModel):
    case_id: str
    status: int
    code: str
    detail: str


class BatchProblem(Problem):
    errors: list[BatchError]


# -- identity ------------------------------------------------------------------------

def reviewer_of(request: Request) -> Reviewer:
    """The caller as a reviewer: a user with its roles, or a department's client system (role
    ``department``, when its scopes allow sending comparison results)."""
    principal = current_principal(request, "this command")
    if principal.type == "client":
        role = "department" if "inbound:comparison_results" in principal.scopes else "client"
        return Reviewer(principal.id, role, principal.level, principal.jurisdiction)
    return Reviewer(principal.id, principal.roles[0], principal.level, principal.jurisdiction, principal.roles)


def covered_by_caller(request: Request, what: str) -> Authorise:
    """The check that the caller's jurisdiction covers a record's village (403 ``outside_jurisdiction``,
    401 for an anonymous caller)."""
    def check(village_code: str | None) -> None:
        require_covers(request, village_code, what)
    return check


def workflow_of(request: Request) -> Workflow:
    return runtime_of(request).state["workflow"]


def metadata(request: Request, actor: str | None = None) -> Metadata:
    principal = principal_of(request)
    return Metadata(actor=actor or (principal.id if principal else None), correlation_id=correlation_id.get())


def _accepted(status: int, case: Case, events: list[str], **extra: Any) -> CommandResult:
    return CommandResult(status, {"case_id": case.id, "version": case.version, "current_step": case.current_step,
                                  "closed": case.closed, "events": events, **extra})


def _with_etag(response: JSONResponse) -> JSONResponse:
    if 200 <= response.status_code < 300:
        response.headers["ETag"] = f'"{json.loads(response.body)["version"]}"'
    return response


async def _case_command(request: Request, case_id: uuid.UUID, body: BaseModel | None, action,
                        status: int = 200, public: bool = False) -> JSONResponse:
    """Load the case, run ``action`` on it, save. Unless the command is ``public`` (an objection),
    the case must lie in the caller's jurisdiction."""
    wf = workflow_of(request)
    expected = if_match_version(request)
    authorise = None if public else covered_by_caller(request, f"case {case_id}")

    async def handle(conn) -> CommandResult:
        case = await wf.load(conn, str(case_id), expected, authorise)
        out = action(case)
        recorded = await wf.save(conn, case, metadata(request))
        extra = out if isinstance(out, dict) else {}
        return _accepted(status, case, [e.event_type for e in recorded], **extra)

    return _with_etag(await idempotent(request, body.model_dump(mode="json") if body else None, handle))


# -- commands --------------------------------------------------------------------------

@router.post("/cases", status_code=201, response_model=CaseAccepted, responses=ERRORS, tags=["cases"],
             summary="Open a review case for a household")
async def open_case(body: OpenCase, request: Request):
    wf = workflow_of(request)
    actor = required_actor(request, "opening a case")

    async def handle(conn) -> CommandResult:
        case, recorded = await wf.open_case(
            conn, case_id=str(uuid.uuid4()), case_type=body.case_type, household_id=str(body.household_id),
            opened_by=actor, reason=body.reason, subject=body.subject,
            monitoring_object_type=body.monitoring_object_type, meta=metadata(request, actor),
            authorise=covered_by_caller(request, f"household {body.household_id}"))
        return _accepted(201, case, [e.event_type for e in recorded])

    response = _with_etag(await idempotent(request, body.model_dump(mode="json"), handle))
    if response.status_code == 201:
        response.headers["Location"] = f"/cases/{json.loads(response.body)['case_id']}"
    return response


@router.post("/cases/{case_id}/decisions", response_model=CaseAccepted, responses=ERRORS, tags=["cases"],
             summary="Decide the current step: approve, reject or return to an earlier step")
async def decide(case_id: uuid.UUID, body: Decide, request: Request):
    reviewer = reviewer_of(request)
    wf = workflow_of(request)
    return await _case_command(request, case_id, body, lambda case: case.decide(
        step_id=body.step_id, decision=body.decision, reviewer=reviewer, now=wf.clock.now(), comment=body.comment,
        return_to=body.return_to, override_reason=body.override_reason))


@router.post("/batch-decisions", response_model=BatchAccepted, tags=["cases"],
             responses={**ERRORS, 409: {"model": BatchProblem}, 422: {"model": BatchProblem}},
             summary="Decide the same step of many cases of one village, all or nothing")
async def batch_decide(body: BatchDecide, request: Request):
    reviewer = reviewer_of(request)
    wf = workflow_of(request)
    ids = [str(c) for c in body.case_ids]
    if len(set(ids)) != len(ids):
        raise DomainError("duplicate_case", "a case appears more than once in case_ids", 422, field="case_ids")

    async def handle(conn) -> CommandResult:
        cases = await wf.decide_batch(conn, village_code=body.village_code, case_ids=ids, step_id=body.step_id,
                                      decision=body.decision, reviewer=reviewer, meta=metadata(request),
                                      comment=body.comment, return_to=body.return_to)
        return CommandResult(200, {"decided": [{"case_id": c.id, "version": c.version,
                                                "current_step": c.current_step, "closed": c.closed}
                                               for c in cases]})

    try:
        return await idempotent(request, body.model_dump(mode="json"), handle)
    except BatchRefused as exc:
        statuses = {e.status for e in exc.errors}
        status = statuses.pop() if len(statuses) == 1 else 409
        return problem(status, "batch_refused", "The batch was refused; nothing was decided",
                       f"{len(exc.errors)} of {exc.total} cases cannot be decided",
                       errors=[vars(e) for e in exc.errors])


@router.post("/cases/{case_id}/objections", status_code=201, response_model=CaseAccepted, responses=ERRORS,
             tags=["notices"], summary="Object to a running public notice (anyone; name optional)")
async def file_objection(case_id: uuid.UUID, body: FileObjection, request: Request):
    wf = workflow_of(request)
    return await _case_command(request, case_id, body, lambda case: {"objection_id": case.file_objection(
        content=body.content, name=body.name, now=wf.clock.now())}, status=201, public=True)


@router.post("/cases/{case_id}/objections/{objection_id}/resolution", response_model=CaseAccepted,
             responses=ERRORS, tags=["notices"], summary="Record the finding on an objection")
async def resolve_objection(case_id: uuid.UUID, body: ResolveObjection, request: Request,
                            objection_id: str = Path(min_length=1, max_length=64, pattern=r"^[a-z0-9-]+$")):
    reviewer = reviewer_of(request)
    wf = workflow_of(request)
    return await _case_command(request, case_id, body, lambda case: case.resolve_objection(
        objection_id=objection_id, finding=body.finding, upheld=body.upheld, reviewer=reviewer,
        now=wf.clock.now()))


@router.post("/cases/{case_id}/comparisons", response_model=CaseAccepted, responses=ERRORS, tags=["cases"],
             summary="Record data comparison results (county office or another department)")
async def record_comparisons(case_id: uuid.UUID, body: RecordComparisons, request: Request):
    recorder = reviewer_of(request)
    wf = workflow_of(request)
    expected = if_match_version(request)

    async def handle(conn) -> CommandResult:
        case = await wf.record_comparisons(conn, str(case_id), expected, recorder,
                                           [r.model_dump(mode="json") for r in body.results], metadata(request),
                                           covered_by_caller(request, f"case {case_id}"))
        return _accepted(200, case, ["ComparisonRecorded"] * len(body.results))

    return _with_etag(await idempotent(request, body.model_dump(mode="json"), handle))


@router.post("/cases/{case_id}/escalation", response_model=CaseAccepted, responses=ERRORS, tags=["cases"],
             summary="Pass an assistance need up to the next level, with a reason")
async def escalate(case_id: uuid.UUID, body: Escalate, request: Request):
    reviewer = reviewer_of(request)
    wf = workflow_of(request)
    return await _case_command(request, case_id, body, lambda case: case.escalate(
        reason=body.reason, reviewer=reviewer, now=wf.clock.now()))


@router.post("/cases/{case_id}/resolution", response_model=CaseAccepted, responses=ERRORS, tags=["cases"],
             summary="Answer an assistance need with what was done (ends the case)")
async def resolve(case_id: uuid.UUID, body: Resolve, request: Request):
    reviewer = reviewer_of(request)
    wf = workflow_of(request)
    return await _case_command(request, case_id, body, lambda case: case.resolve(
        what_was_done=body.what_was_done, reviewer=reviewer, now=wf.clock.now()))
