"""Public API routes, forwarded to the owning services.

Every route declares the action it needs (``eventkit.principal.ACTIONS``; a tuple
means any of them) or ``None`` for a public route (notice boards, objections,
reference lists, village disclosure, household cards). The gateway:

1. authenticates the caller (``Authorization: Bearer``: a 401 with
   ``WWW-Authenticate: Bearer`` otherwise; public routes take a token if sent);
2. refuses a caller whose role or scopes do not allow the action, or whose
   jurisdiction does not cover the region named in the path (403, recorded as
   ``AccessDenied``);
3. forwards the request with a 60-second internal identity token
   (``X-TPA-Identity``) naming the caller, and only the headers in ``_FORWARDED``;
   the services refuse calls without one and check what only they know (the
   region of a household, case, alert or payment; a 403 from them is recorded as
   ``AccessDenied`` too);
4. records every response that disclosed personal data as ``PersonalDataAccessed``.
"""

from __future__ import annotations

import inspect
import json
from urllib.parse import quote
import re
import uuid
from typing import Annotated, Any, Callable

import httpx
from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import Response
from typing import Literal

from pydantic import BaseModel, Field, model_validator

from contracts.registry import VILLAGE_CODE_PATTERN
from eventkit.principal import Principal
from eventkit.runtime import problem, runtime_of
from eventkit.telemetry import correlation_id
from eventkit.tokens import INTERNAL_IDENTITY_HEADER, internal_token_for
from services.registry import queries as rq
from services.registry import schemas as rs
from services.funds import api as fa
from services.monitoring import alert_service as ma
from services.monitoring import dashboard as md
from services.monitoring import delivery as ma_delivery
from services.funds import ledger_queries as fl
from services.funds import subsidies as funds_subsidies
from services.workflow import api as wa
from services.workflow import queries as wq
from services.registry import exchange_api as xa

from .guard import SIGNED_IN, Caller, denied_upstream, guard, route_of

router = APIRouter(prefix="/api/v1")

_FORWARDED = ("idempotency-key", "if-match", "x-correlation-id", "content-type", "accept")
_RETURNED = ("content-type", "content-disposition", "etag", "x-correlation-id", "idempotent-replayed",
             "cache-control", "x-tpa-read-model", "location", "allow", "www-authenticate", "x-tpa-disclosed",
             "referrer-policy", "x-robots-tag", "retry-after")
UPLOAD_TIMEOUT = httpx.Timeout(600.0, connect=2.0)  # an import runs within its request
_PARAM = re.compile(r"{(\w+)}")


class VillageCount(BaseModel):
    village_code: str
    households: int
    people: int


async def forward(request: Request, service: str, method: str, path: str, *, content: bytes | None = None,
                  query: str | None = None, timeout: httpx.Timeout | None = None,
                  principal: Principal | None = None) -> Response:
    runtime = runtime_of(request)
    client: httpx.AsyncClient = runtime.state["http"]
    base = getattr(runtime.settings, f"{service}_url")
    if not base:
        return problem(503, "upstream_not_configured", f"TPA_{service.upper()}_URL is not set")
    headers = {k: v for k, v in request.headers.items() if k.lower() in _FORWARDED}
    headers["x-correlation-id"] = correlation_id.get() or headers.get("x-correlation-id", "")
    headers[INTERNAL_IDENTITY_HEADER] = internal_token_for(principal, runtime.state["internal_keyring"],
                                                           now=runtime.state["accounts"].now())
    url = base.rstrip("/") + path + (f"?{query}" if query else "")
    try:
        upstream = await client.request(method, url, content=content, headers=headers,
                                        **({"timeout": timeout} if timeout is not None else {}))
    except httpx.TransportError as exc:
        return problem(502, "upstream_unavailable", f"{service} is unreachable", type(exc).__name__)
    passed = {k: v for k, v in upstream.headers.items() if k.lower() in _RETURNED}
    if "location" in passed and passed["location"].startswith("/"):  # the service's path, seen from outside
        passed["location"] = router.prefix + passed["location"]
    if upstream.status_code >= 300 or principal is None:  # only the audit hook reads it, on a success
        passed = {k: v for k, v in passed.items() if k.lower() != "x-tpa-disclosed"}
    return Response(upstream.content, status_code=upstream.status_code, headers=passed)


_ERRORS = {code: {"model": rs.Problem} for code in (401, 403, 404, 409, 412, 413, 422, 429, 502, 503)}
# Path parameters that are not UUIDs (every other `*_id` is).
_PATH_PARAMS: dict[str, tuple[Any, Any]] = {
    "village_code": (str, Path(pattern=VILLAGE_CODE_PATTERN)),
    "year": (int, Path(ge=2000, le=2100)),
    "cadre_id": (str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:-]+$")),
    "objection_id": (str, Path(min_length=1, max_length=64, pattern=r"^[a-z0-9-]+$")),
    "code": (str, Path(pattern=rq.REGION_CODE_PATTERN)),
    "region": (str, Path(pattern=rq.REGION_CODE_PATTERN)),
    "quarter": (str, Path(pattern=r"^20[0-9]{2}-Q[1-4]$")),
    "token": (str, Path(min_length=22, max_length=22, pattern=r"^[A-Za-z0-9_-]{22}$")),
}
AfterHook = Callable[[Request, Caller, Response, dict[str, Any]], Any]
ROUTE_ACTIONS: dict[tuple[str, str], tuple[str, ...] | None] = {}
"""Every forwarded route's actions (None: public), for the authorisation tests and the docs."""


def route(method: str, path: str, service: str, *, action: str | tuple[str, ...] | None,
          body: type[BaseModel] | None = None,
          query: type[BaseModel] | None = None, response_model: Any = None, status_code: int = 200,
          summary: str, tags: list[str], upstream: str | None = None, raw_body: bool = False,
          openapi_extra: dict[str, Any] | None = None, response_class: Any = None,
          after: AfterHook | None = None, description: str | None = None,
          timeout: httpx.Timeout | None = None) -> None:
    """Declare a forwarded route with its real request/response models (for OpenAPI and validation)
    and the action(s) it needs (None: public)."""
    names = _PARAM.findall(path)
    actions = (action,) if isinstance(action, str) else action
    ROUTE_ACTIONS[(method, router.prefix + path)] = actions

    async def endpoint(request: Request, **kwargs: Any) -> Response:
        caller: Caller | None = request.state.caller  # set by the route's guard
        target = (upstream or path).format(**{n: quote(str(kwargs[n]), safe="") for n in names})
        payload = kwargs.get("body")
        if raw_body:  # uploads pass through untouched (the service checks size and format)
            content = await request.body()
        else:
            content = payload.model_dump_json(exclude_unset=True).encode() if payload is not None else None
        response = await forward(request, service, method, target, content=content,
                                 query=request.url.query or None,
                                 timeout=timeout or (UPLOAD_TIMEOUT if raw_body else None),
                                 principal=caller.principal if caller else None)
        if caller is not None:
            await denied_upstream(request, caller, response, actions)
            if after is not None and 200 <= response.status_code < 300:
                response = await after(request, caller, response, kwargs) or response
        return response

    params = [inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Request)]
    for n in names:
        annotation, default = _PATH_PARAMS.get(n, (uuid.UUID, Path()) if n.endswith("_id") else (str, Path()))
        params.append(inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=default))
    if body is not None:
        params.append(inspect.Parameter("body", inspect.Parameter.KEYWORD_ONLY, annotation=body))
    if query is not None:  # validated here, forwarded as the client sent it
        params.append(inspect.Parameter("query", inspect.Parameter.KEYWORD_ONLY,
                                        annotation=Annotated[query, Query()]))
    endpoint.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    endpoint.__name__ = re.sub(r"\W+", "_", f"{method}_{path}").strip("_").lower()
    extra = {"response_class": response_class} if response_class is not None else {}
    route_path = path
    for n in names:
        if n.endswith("_id") and n not in _PATH_PARAMS:
            route_path = route_path.replace("{%s}" % n, "{%s:uuid}" % n)
    openapi_extra = dict(openapi_extra or {})
    if actions is not None:
        openapi_extra["security"] = SIGNED_IN
        openapi_extra["x-tpa-actions"] = list(actions)
    else:
        openapi_extra["security"] = [{}, *SIGNED_IN]
    text = description or ""
    text += ("\n\nNeeds " + " or ".join(f"`{a}`" for a in actions) + ".") if actions else "\n\nPublic."
    router.add_api_route(route_path, endpoint, methods=[method], response_model=response_model, status_code=status_code,
                         summary=summary, description=text.strip(), tags=tags, responses=_ERRORS,
                         openapi_extra=openapi_extra, dependencies=[Depends(guard(actions))], **extra)


H = ["households"]
route("POST", "/households", "registry", action="household:write", body=rs.RegisterHousehold,
      response_model=rs.CommandAccepted,
      status_code=201, summary="Register a household with its members", tags=H)
route("POST", "/households/{household_id}/members", "registry", action="household:write", body=rs.AddMember,
      response_model=rs.CommandAccepted, summary="Add a member", tags=H)
route("POST", "/households/{household_id}/members/{member_id}/removal", "registry", action="household:write",
      body=rs.RemoveMember,
      response_model=rs.CommandAccepted, summary="Remove a member", tags=H)
route("PATCH", "/households/{household_id}/members/{member_id}", "registry", action="household:write",
      body=rs.MemberFacts,
      response_model=rs.CommandAccepted, summary="Update a member's facts", tags=H)
route("POST", "/households/{household_id}/members/{member_id}/erasure", "registry", action="household:write",
      response_model=rs.CommandAccepted, summary="Erase a member's personal data", tags=H)
route("POST", "/households/{household_id}/head", "registry", action="household:write", body=rs.ChangeHead,
      response_model=rs.CommandAccepted, summary="Change the household head", tags=H)
route("PUT", "/households/{household_id}/incomes/{year}", "registry", action="household:write",
      body=rs.IncomeAssessment,
      response_model=rs.CommandAccepted, summary="Record a year's income assessment", tags=H)
route("PUT", "/households/{household_id}/conditions", "registry", action="household:write", body=rs.LivingConditions,
      response_model=rs.CommandAccepted, summary="Assess living conditions", tags=H)
route("PUT", "/households/{household_id}/causes", "registry", action="household:write", body=rs.PovertyCauses,
      response_model=rs.CommandAccepted, summary="Record poverty causes", tags=H)
route("POST", "/households/{household_id}/cadres", "registry", action="household:write", body=rs.AssignCadre,
      response_model=rs.CommandAccepted, summary="Assign an assistance cadre", tags=H)
route("POST", "/households/{household_id}/cadres/{cadre_id}/release", "registry", action="household:write",
      body=rs.ReleaseCadre,
      response_model=rs.CommandAccepted, summary="Release an assistance cadre", tags=H)
route("PUT", "/households/{household_id}/plans/{year}", "registry", action="household:write", body=rs.AssistancePlan,
      response_model=rs.CommandAccepted, summary="Record a year's assistance plan", tags=H)
route("PUT", "/households/{household_id}/coordinates", "registry", action="household:write", body=rs.Coordinates,
      response_model=rs.CommandAccepted, summary="Set the household's coordinates", tags=H)
route("POST", "/households/{household_id}/change-requests", "registry", action="household:write",
      body=rs.ChangeRequestBody,
      response_model=rs.ChangeRequestAccepted, status_code=201,
      summary="Ask for a change to household data (applied once a data_change case approves it)", tags=H)
route("GET", "/households/{household_id}/change-requests", "registry", action="household:read",
      response_model=rs.ChangeRequestList,
      summary="A household's change requests, newest first", tags=H)
route("GET", "/households/{household_id}/change-requests/{change_request_id}", "registry", action="household:read",
      response_model=rs.ChangeRequestView, summary="One change request with its proposed values", tags=H)
route("POST", "/households/{household_id}/status-decisions", "registry", action="case:decide", body=rs.StatusDecision,
      response_model=rs.CommandAccepted, summary="Apply a review decision's status effect", tags=H)
route("PUT", "/villages/{village_code}/profile", "registry", action="household:write", body=rs.VillageProfile,
      summary="Record a dated village profile", tags=["villages"])
route("GET", "/code-lists", "registry", action=None, summary="Registry code lists with Chinese labels",
      tags=["reference"])
route("GET", "/villages/{village_code}/households", "monitoring", action="household:read", response_model=VillageCount,
      summary="Registered households and people in a village (monitoring)", tags=["dashboards"])


class SearchQuery(BaseModel):
    """Search filters (no ID number in URLs: use POST /households/search for that)."""

    model_config = {"extra": "forbid"}

    village_code: str | None = rq.SearchRequest.model_fields["village_code"]
    region: str | None = rq.SearchRequest.model_fields["region"]
    status: rq.Status | None = None
    attribute: rs.Attribute | None = None
    cause: rs.Cause | None = None
    primary_cause: rs.Cause | None = None
    monitoring_object_type: rs.MonitoringType | None = None
    limit: int = rq.SearchRequest.model_fields["limit"]
    after: uuid.UUID | None = None
    offset: int | None = rq.SearchRequest.model_fields["offset"]


class LedgerQuery(BaseModel):
    model_config = {"extra": "forbid"}

    personal: bool = Field(default=False, description="Add names, ID numbers and phones (needs "
                           "`household:read_personal` and a `purpose`; the read is recorded in the access log).")
    purpose: str | None = Field(default=None, min_length=1, max_length=500, pattern=r"^[^\u0000]*\S[^\u0000]*$",
                                description="Why the personal data is needed (required with personal=true).")

    @model_validator(mode="after")
    def _purpose_with_personal(self) -> "LedgerQuery":
        if self.personal and not self.purpose:
            raise ValueError("reading personal data needs a stated purpose")
        return self


async def _audit_personal_ledger(request: Request, caller: Caller, response: Response,
                                 kwargs: dict[str, Any]) -> None:
    """Record the disclosure of a household's personal data (one record per household and member)."""
    query: LedgerQuery = kwargs["query"]
    if not query.personal:
        return
    doc = json.loads(response.body)
    members = [m["member_id"] for m in doc.get("members", [])
               if (m.get("personal") or {}).get("erased") is False]
    await runtime_of(request).state["accounts"].record_access(
        caller.principal, route=route_of(request), purpose=query.purpose or "",
        records=[doc["household_id"], *members], count=max(1, len(members)))


class TemplateQuery(BaseModel):
    model_config = {"extra": "forbid"}

    format: Literal["xlsx", "csv"] = "xlsx"


class ImportQuery(BaseModel):
    model_config = {"extra": "forbid"}

    skip_invalid: bool = False


L = ["ledger"]
route("GET", "/households", "registry", action="household:read", query=SearchQuery, response_model=rq.HouseholdPage,
      summary="Search households (summary rows without personal data)", tags=L)
route("POST", "/households/search", "registry", action="household:read", body=rq.SearchRequest,
      response_model=rq.HouseholdPage,
      summary="Search households, filters in the body (ID-number searches)", tags=L)
route("GET", "/households/{household_id}", "registry", action="household:read", query=LedgerQuery,
      response_model=rq.HouseholdLedgerView, after=_audit_personal_ledger,
      summary="The household ledger (members masked; with personal=true, names, ID numbers and phones)", tags=L)
route("GET", "/villages/{village_code}/statistics", "registry", action="household:read", response_model=rq.Statistics,
      summary="Village statistics: status, incidence, causes", tags=L)
route("GET", "/regions/{code}/statistics", "registry", action="household:read", response_model=rq.Statistics,
      summary="County or township statistics", tags=L)
I = ["imports"]
_BINARY = {"content": {
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": {"schema": {"type": "string",
                                                                                     "format": "binary"}},
    "text/csv": {"schema": {"type": "string"}}}}
route("GET", "/imports/template", "registry", action="household:write", query=TemplateQuery,
      summary="Download the import template",
      tags=I, response_class=Response, openapi_extra={"responses": {"200": {"description": "The template",
                                                                           **_BINARY}}})
route("POST", "/imports/households", "registry", action="household:write", query=ImportQuery, raw_body=True,
      summary="Import households from a filled template (multipart field `file`, or the file as the body)",
      tags=I, openapi_extra={"requestBody": {"required": True, "content": {
          "multipart/form-data": {"schema": {"type": "object", "required": ["file"],
                                             "properties": {"file": {"type": "string", "format": "binary"}}}},
          "text/csv": {"schema": {"type": "string"}},
          "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": {"schema": {"type": "string",
                                                                                          "format": "binary"}}}}})
route("GET", "/imports/{import_id}", "registry", action="household:write", summary="An import's report", tags=I)
route("GET", "/imports/{import_id}/errors.csv", "registry", action="household:write",
      summary="An import's errors as CSV", tags=I,
      response_class=Response, openapi_extra={"responses": {"200": {"description": "CSV",
                                                                   "content": {"text/csv": {}}}}})


class CaseQuery(BaseModel):
    model_config = {"extra": "forbid"}

    region: str | None = Field(default=None, pattern=wq.REGION_PATTERN)
    case_type: str | None = Field(default=None, max_length=64)
    step: str | None = Field(default=None, max_length=64)
    status: Literal["open", "closed"] | None = None
    overdue: bool | None = None
    household_id: uuid.UUID | None = None
    limit: int = Field(default=50, ge=1, le=500)
    offset: int = Field(default=0, ge=0, le=1_000_000)


class InboxQuery(BaseModel):
    model_config = {"extra": "forbid"}

    ready: bool | None = None
    limit: int = Field(default=50, ge=1, le=500)
    offset: int = Field(default=0, ge=0, le=1_000_000)


class BoardQuery(BaseModel):
    model_config = {"extra": "forbid"}

    include_ended: bool = False


W = ["cases"]
route("POST", "/cases", "workflow", action="case:open", body=wa.OpenCase, response_model=wa.CaseAccepted,
      status_code=201,
      summary="Open a review case for a household", tags=W)
route("GET", "/cases", "workflow", action="case:read", query=CaseQuery, response_model=wq.CasePage,
      summary="List cases by region, type, step, status, overdue", tags=W)
route("GET", "/cases/{case_id}", "workflow", action="case:read", summary="One case, from the event store", tags=W)
route("GET", "/cases/{case_id}/timeline", "workflow", action="case:read", response_model=wq.Timeline,
      summary="Every event of a case, in order", tags=W)
route("POST", "/cases/{case_id}/decisions", "workflow", action="case:decide", body=wa.Decide,
      response_model=wa.CaseAccepted,
      summary="Decide the current step: approve, reject or return", tags=W)
route("POST", "/batch-decisions", "workflow", action="case:decide", body=wa.BatchDecide,
      response_model=wa.BatchAccepted,
      summary="Decide the same step of many cases of one village, all or nothing", tags=W)
route("POST", "/cases/{case_id}/comparisons", "workflow", action=('case:decide', 'inbound:comparison_results'),
      body=wa.RecordComparisons,
      response_model=wa.CaseAccepted, summary="Record data comparison results (county office, departments)",
      tags=W)
route("POST", "/cases/{case_id}/escalation", "workflow", action="case:decide", body=wa.Escalate,
      response_model=wa.CaseAccepted,
      summary="Pass an assistance need up a level", tags=W)
route("POST", "/cases/{case_id}/resolution", "workflow", action="case:decide", body=wa.Resolve,
      response_model=wa.CaseAccepted,
      summary="Answer an assistance need with what was done", tags=W)
route("GET", "/inbox", "workflow", action="case:read", query=InboxQuery, response_model=wq.CasePage,
      summary="Cases waiting for my role and level in my jurisdiction", tags=W)
route("GET", "/case-types", "workflow", action=None, summary="Case type definitions in force", tags=["reference"])
N = ["notices"]
route("GET", "/villages/{village_code}/notices", "workflow", action=None, query=BoardQuery,
      response_model=wq.NoticeBoard,
      summary="Public notice board of a village (masked names only)", tags=N)
route("POST", "/cases/{case_id}/objections", "workflow", action=None, body=wa.FileObjection,
      response_model=wa.CaseAccepted,
      status_code=201, summary="Object to a running public notice (anyone; name optional)", tags=N)
route("POST", "/cases/{case_id}/objections/{objection_id}/resolution", "workflow", action="case:decide",
      body=wa.ResolveObjection,
      response_model=wa.CaseAccepted, summary="Record the finding on an objection", tags=N)


class StatementQuery(BaseModel):
    model_config = {"extra": "forbid"}

    channel: Literal["one_card", "student_aid_card", "bank_transfer"]


class AnomalyQuery(BaseModel):
    model_config = {"extra": "forbid"}

    village_code: str | None = Field(default=None, pattern=VILLAGE_CODE_PATTERN)
    household_id: uuid.UUID | None = None
    rule: str | None = Field(default=None, max_length=64, pattern=r"^[a-z_]+$")
    limit: int = Field(default=100, ge=1, le=1000)


F = ["funds"]
route("POST", "/allocations", "funds", action="funds:manage", body=fa.CreateAllocation, response_model=fa.Accepted,
      status_code=201,
      summary="Create an allocation (a budget line)", tags=F)
route("POST", "/allocations/{allocation_id}/adjustments", "funds", action="funds:manage", body=fa.AdjustAllocation,
      response_model=fa.Accepted, summary="Adjust an allocation's amount", tags=F)
route("GET", "/allocations/{allocation_id}", "funds", action="funds:read",
      summary="An allocation: amount, reserved, spent, available",
      tags=F)
route("POST", "/projects", "funds", action="funds:declare", body=fa.DeclareProject, response_model=fa.Accepted,
      status_code=201,
      summary="Declare a project", tags=F)
for _path, _model, _summary, _action in (
        ("review", fa.Review, "Record a project's review", "funds:review"),
        ("approval", fa.ApproveProject, "Approve a project with its funding lines", "funds:manage"),
        ("rejection", fa.Reason, "Reject a project", "funds:manage"),
        ("start", fa.StartProject, "Start a project", "funds:declare"),
        ("milestones", fa.Milestone, "Record a project milestone", "funds:declare"),
        ("completion", fa.CompleteProject, "Complete a project", "funds:declare"),
        ("acceptance", None, "Accept a completed project", "funds:manage"),
        ("cancellation", fa.Reason, "Cancel a project", "funds:manage")):
    route("POST", f"/projects/{{project_id}}/{_path}", "funds", action=_action, body=_model, response_model=fa.Accepted,
          summary=_summary, tags=F)
route("GET", "/projects/{project_id}", "funds", action="funds:read",
      summary="A project: budget, funding, committed, paid", tags=F)
route("POST", "/disbursements", "funds", action="funds:request", body=fa.RequestDisbursement,
      response_model=fa.Accepted, status_code=201,
      summary="Request a payment under a policy or a project", tags=F)
route("POST", "/disbursements/{disbursement_id}/approval", "funds", action="funds:manage", body=fa.ApproveDisbursement,
      response_model=fa.Accepted, summary="Approve a payment (reserves the amount)", tags=F)
route("POST", "/disbursements/{disbursement_id}/payment", "funds", action="funds:pay", body=fa.PayDisbursement,
      response_model=fa.Accepted, summary="Record the channel's payment", tags=F)
route("POST", "/disbursements/{disbursement_id}/failure", "funds", action="funds:pay", body=fa.Reason,
      response_model=fa.Accepted,
      summary="Refuse a payment or record a failed attempt", tags=F)
route("POST", "/disbursements/{disbursement_id}/reversal", "funds", action="funds:pay", body=fa.Reason,
      response_model=fa.Accepted,
      summary="Reverse a paid payment", tags=F)
route("GET", "/disbursements/{disbursement_id}", "funds", action="funds:read", summary="A disbursement", tags=F)
route("POST", "/statements", "funds", action="funds:pay", query=StatementQuery, raw_body=True, status_code=201,
      summary="Import a payment channel's statement (CSV) and reconcile it", tags=F,
      openapi_extra={"requestBody": {"required": True, "content": {"text/csv": {"schema": {"type": "string"}}}}})
route("GET", "/statements/{statement_id}", "funds", action="funds:read",
      summary="An imported statement and its exceptions", tags=F)
class SubsidyQuery(BaseModel):
    model_config = {"extra": "forbid"}

    quarter: str = Field(pattern=r"^20[0-9]{2}-Q[1-4]$", description="The quarter the payments were made in.",
                         examples=["2025-Q1"])
    department: Literal[tuple(funds_subsidies.DEPARTMENTS)] = Field(  # type: ignore[valid-type]
        description="The department that paid.")
    skip_unmatched: bool = Field(default=False, description="Record the rows whose person is found and report the "
                                 "others (default: all or nothing).")


route("POST", "/subsidy-records", "funds", action=("inbound:subsidies", "funds:pay"), query=SubsidyQuery,
      raw_body=True, status_code=201,
      summary="Import a quarter's subsidy records from a department (CSV or XLSX; ?quarter=2025-Q1&department=...)",
      tags=F, openapi_extra={"requestBody": {"required": True, "content": {
          "text/csv": {"schema": {"type": "string"}},
          "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": {"schema": {"type": "string",
                                                                                          "format": "binary"}},
          "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
              "file": {"type": "string", "format": "binary"}}}}}}})
route("GET", "/anomalies", "funds", action="funds:read", query=AnomalyQuery, response_model=fa.AnomalyPage,
      summary="Anomalies found by the funds rules", tags=F)
route("GET", "/policies", "funds", action=None, summary="The policy catalogue with its dated standards",
      tags=["reference"])


class YearQuery(BaseModel):
    model_config = {"extra": "forbid"}

    year: int | None = Field(default=None, ge=2000, le=2100)


class TotalsQuery(YearQuery):
    source: Literal["central", "provincial", "city", "county", "social_donation"] | None = None


route("GET", "/allocations/{allocation_id}/balance", "funds", action="funds:read", response_model=fl.AllocationBalance,
      summary="An allocation's balance from the ledger", tags=["ledger"])
route("GET", "/projects/{project_id}/budget", "funds", action="funds:read", response_model=fl.ProjectBudget,
      summary="A project's budget against its payments (ledger)", tags=["ledger"])
route("GET", "/households/{household_id}/funds", "funds", action="funds:read", query=YearQuery,
      response_model=fl.HouseholdFunds,
      summary="What a household received, by policy or project and year", tags=["ledger"])
route("GET", "/villages/{village_code}/disclosure", "funds", action=None, query=YearQuery,
      response_model=fl.VillageDisclosure,
      summary="A village's public disclosure of projects and fund use (no personal data)", tags=["ledger"])
route("GET", "/ledger/totals", "funds", action="funds:read", query=TotalsQuery, response_model=fl.LedgerTotals,
      summary="Ledger totals by source and year", tags=["ledger"])


class DashboardQuery(BaseModel):
    model_config = {"extra": "forbid"}

    exit_threshold: float = Field(default=0.03, gt=0, lt=1)
    limit: int = Field(default=500, ge=1, le=5000)


route("GET", "/dashboards/{region}", "monitoring", action="alerts:read", query=DashboardQuery,
      response_model=md.RegionDashboard,
      summary="Households, incidence, causes, funds and review cases of a region (any level)", tags=["dashboards"])


class AttendanceBatch(BaseModel):
    model_config = {"extra": "forbid"}

    items: list[dict[str, Any]] = Field(min_length=1, max_length=1000)


route("POST", "/attendance/batches", "monitoring", action="attendance:record", body=AttendanceBatch,
      summary="Record an offline batch of a cadre's attendance (items answered one by one)", tags=["attendance"])
route("GET", "/cadres/{cadre_id}/compliance/{quarter}", "monitoring", action="alerts:read",
      summary="The duties a cadre missed in an ended quarter", tags=["attendance"])
route("POST", "/cadres/{cadre_id}/compliance/{quarter}", "monitoring", action="alerts:manage",
      summary="Publish a cadre's missed duties of an ended quarter", tags=["attendance"])


class AlertQuery(BaseModel):
    model_config = {"extra": "forbid"}

    region: str | None = Field(default=None, pattern=rq.REGION_CODE_PATTERN)
    severity: Literal["low", "medium", "high"] | None = None
    state: Literal["raised", "acknowledged", "verification_requested", "resolved"] | None = None
    rule: str | None = Field(default=None, max_length=64, pattern=r"^[a-z_]+$")
    older_than_hours: float | None = Field(default=None, ge=0, le=100000)
    limit: int = Field(default=100, ge=1, le=1000)
    offset: int = Field(default=0, ge=0, le=1_000_000)


A = ["alerts"]
route("POST", "/households/{household_id}/risk-reports", "monitoring", action=('household:write', 'alerts:manage'),
      body=ma.RiskReport, status_code=201,
      summary="Report a risk for a household (the rules run at once)", tags=A)
route("GET", "/alerts", "monitoring", action="alerts:read", query=AlertQuery, response_model=ma.AlertPage,
      summary="Return-risk alerts by region, severity, state, rule and age", tags=A)
route("GET", "/alerts/{alert_id}", "monitoring", action="alerts:read", summary="One alert", tags=A)
route("POST", "/alerts/{alert_id}/acknowledgement", "monitoring", action="alerts:manage", body=ma.Acknowledge,
      summary="Acknowledge an alert", tags=A)
route("POST", "/alerts/{alert_id}/verification-request", "monitoring", action="alerts:manage",
      summary="Request on-site verification (the workflow opens a case)", tags=A)
route("POST", "/alerts/{alert_id}/resolution", "monitoring", action="alerts:manage", body=ma.Resolve,
      summary="Resolve an alert", tags=A)


class StreamQuery(BaseModel):
    model_config = {"extra": "forbid"}

    from_start: bool = False


@router.get("/alerts/stream", tags=A, summary="Alert events as Server-Sent Events (resumable with Last-Event-ID)",
            dependencies=[Depends(guard(("alerts:read",)))],
            description="Needs `alerts:read`.", openapi_extra={"security": SIGNED_IN,
                                                              "x-tpa-actions": ["alerts:read"]},
            response_class=Response, responses={200: {"description": "text/event-stream of alert events",
                                                      "content": {"text/event-stream": {}}}})
async def alert_stream(request: Request, query: Annotated[StreamQuery, Query()]) -> Response:
    """Streamed through, chunk by chunk (the generic forwarding reads whole bodies)."""
    from starlette.background import BackgroundTask
    from starlette.responses import StreamingResponse

    runtime = runtime_of(request)
    caller: Caller = request.state.caller
    base = runtime.settings.monitoring_url
    if not base:
        return problem(503, "upstream_not_configured", "TPA_MONITORING_URL is not set")
    headers = {k: v for k, v in request.headers.items() if k.lower() in ("last-event-id", "accept")}
    headers["x-correlation-id"] = correlation_id.get() or ""
    headers[INTERNAL_IDENTITY_HEADER] = internal_token_for(caller.principal, runtime.state["internal_keyring"],
                                                           now=runtime.state["accounts"].now())
    client: httpx.AsyncClient = runtime.state["http"]
    upstream_request = client.build_request("GET", base.rstrip("/") + "/alerts/stream", headers=headers,
                                            params=request.query_params,
                                            timeout=httpx.Timeout(None, connect=2.0))  # a stream has no end
    try:
        upstream = await client.send(upstream_request, stream=True)
    except httpx.TransportError as exc:
        return problem(502, "upstream_unavailable", "monitoring is unreachable", type(exc).__name__)
    passed = {k: v for k, v in upstream.headers.items() if k.lower() in ("content-type", "cache-control",
                                                                          "x-accel-buffering")}
    return StreamingResponse(upstream.aiter_raw(), status_code=upstream.status_code, headers=passed,
                             background=BackgroundTask(upstream.aclose))


SubscribeBody = ma_delivery.Subscribe


route("POST", "/webhooks", "monitoring", action="alerts:manage", body=SubscribeBody, status_code=201,
      summary="Subscribe an endpoint to alert events (signed; the secret is returned once)", tags=A)
route("GET", "/webhooks", "monitoring", action="alerts:manage", summary="Webhook subscriptions", tags=A)
route("DELETE", "/webhooks/{subscription_id}", "monitoring", action="alerts:manage", status_code=204,
      summary="Deactivate a webhook subscription", tags=A)
# -- data exchanges -----------------------------------------------------------------------------

async def _audit_disclosure(request: Request, caller: Caller, response: Response,
                            kwargs: dict[str, Any]) -> Response | None:
    """Record who was disclosed (the service's ``_disclosed`` field, or its ``X-TPA-Disclosed``
    header on a file) and answer without it."""
    header = response.headers.get("x-tpa-disclosed")
    if header is not None:
        disclosed = json.loads(header)
        del response.headers["x-tpa-disclosed"]
        body = None
    else:
        body = json.loads(response.body)
        disclosed = body.pop("_disclosed", None) or {}
    records = [*disclosed.get("households", []), *disclosed.get("members", [])]
    if records:
        await runtime_of(request).state["accounts"].record_access(
            caller.principal, route=route_of(request),
            purpose=disclosed.get("purpose") or "data exchange", records=records,
            count=max(1, len(disclosed.get("members", [])) or len(disclosed.get("households", []))))
    if body is None:
        return response
    headers = {k: v for k, v in response.headers.items() if k.lower() != "content-length"}
    return Response(json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode(),
                    status_code=response.status_code, headers=headers)


COMPARE = ("comparison:education", "comparison:health_insurance", "comparison:civil_affairs")
X = ["exchanges"]


class JobQuery(BaseModel):
    model_config = {"extra": "forbid"}

    purpose: Literal["education", "health_insurance", "civil_affairs"]


class JobResultsQuery(BaseModel):
    model_config = {"extra": "forbid"}

    offset: int = Field(default=0, ge=0, le=1_000_000)
    limit: int | None = Field(default=None, ge=1, le=1_000_000, description=(
        "Rows per page (JSON: 10 000 by default; CSV: the whole file by default)."))
    format: Literal["json", "csv"] = "json"


class ReconciliationQuery(BaseModel):
    model_config = {"extra": "forbid"}

    year: int = Field(ge=2013, le=2100)
    region: str | None = Field(default=None, pattern=r"^[1-9][0-9]{5}(?:[0-9]{6})?$")
    format: Literal["json", "csv"] = "json"


class CardQuery(BaseModel):
    model_config = {"extra": "forbid"}

    format: Literal["json", "svg", "png"] = "json"


_FILE = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["file"],
                                       "properties": {"file": {"type": "string", "format": "binary"}}}},
    "text/csv": {"schema": {"type": "string"}},
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": {"schema": {"type": "string",
                                                                                    "format": "binary"}}}}}
route("POST", "/comparisons", "registry", action=COMPARE, body=xa.ComparisonRequest, after=_audit_disclosure,
      timeout=UPLOAD_TIMEOUT,  # 100 000 IDs take seconds, more on a loaded machine
      summary="Bulk comparison: up to 100 000 ID numbers, answered per ID with the facts the purpose allows",
      tags=X, openapi_extra={"requestBody": {"content": {"application/json": {"example": {
          "purpose": "education", "id_numbers": ["620102201001011234", "620102201502020021"]}}}}})
route("POST", "/status-checks", "registry", action=("status:read", *COMPARE), body=xa.StatusCheck,
      after=_audit_disclosure, summary="One person's register status (a hospital or school desk)", tags=X)
route("POST", "/comparison-jobs", "registry", action=COMPARE, query=JobQuery, raw_body=True, status_code=202,
      summary="Bulk comparison of an uploaded ID file (CSV or XLSX, up to a million IDs), asynchronous",
      tags=X, openapi_extra=_FILE)
route("GET", "/comparison-jobs/{job_id}", "registry", action=COMPARE, summary="A comparison job's progress", tags=X)
route("GET", "/comparison-jobs/{job_id}/results", "registry", action=COMPARE, query=JobResultsQuery,
      after=_audit_disclosure, response_class=Response, tags=X,
      summary="A finished comparison job's answers by row (JSON pages or CSV)",
      openapi_extra={"responses": {"200": {"description": "The answers",
                                           "content": {"application/json": {}, "text/csv": {}}}}})
route("POST", "/reconciliations/national", "registry", action="reconciliation:national", query=ReconciliationQuery,
      raw_body=True, response_class=Response, tags=X, openapi_extra={
          **_FILE, "responses": {"200": {"description": "The difference report",
                                         "content": {"application/json": {}, "text/csv": {}}}}},
      summary="Upload the national system's household extract; get a per-household, per-field difference report")
route("POST", "/inbound/deaths", "registry", action="inbound:deaths", raw_body=True, status_code=201, tags=X,
      openapi_extra=_FILE, summary="Death records from civil registration (each becomes a reviewed member removal)")
route("GET", "/households/{household_id}/card", "registry", action="household:read", query=CardQuery,
      response_class=Response, tags=H, summary="The household card's QR link (JSON, SVG or PNG)",
      openapi_extra={"responses": {"200": {"description": "The card link", "content": {
          "application/json": {}, "image/svg+xml": {}, "image/png": {}}}}})
route("GET", "/cards/{household_id}/{token}", "registry", action=None, response_class=Response, tags=H,
      summary="A household card's public view: masked data only (HTML, or JSON with Accept: application/json)",
      openapi_extra={"responses": {"200": {"description": "The card", "content": {
          "text/html": {}, "application/json": {}}}}})

route("GET", "/webhooks/{subscription_id}/deliveries", "monitoring", action="alerts:manage",
      summary="A subscription's deliveries with their attempts", tags=A)
