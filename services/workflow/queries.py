"""Workflow query API.

* ``GET /cases``: cases by region (village, township, county or above), type,
  step, status, household and overdue, from the case board (read model); only
  cases within the caller's jurisdiction (a region outside it finds nothing).
* ``GET /cases/{id}``: one case as the event store has it (with its notices,
  objections, comparison results and decisions); ``ETag`` is its version. 403
  ``outside_jurisdiction`` for a case outside the caller's jurisdiction.
* ``GET /cases/{id}/timeline``: every event of the case, in order (the same 403).
* ``GET /villages/{code}/notices``: the village's public notice board. Public:
  the household appears only by the masked name of its head, never with an ID
  number; objections are counted, not shown.
* ``GET /inbox``: open cases waiting for the caller's role and level within
  the caller's jurisdiction (the principal of the internal identity token, see
  ``api.py``).
* ``GET /case-types``: the loaded case type definitions (public).
"""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Any, Literal

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from contracts.registry import REGION_CODE_PATTERN, VILLAGE_CODE_PATTERN
from eventkit.errors import DomainError
from eventkit.runtime import jurisdiction_prefix_of, require_covers, runtime_of

from .api import ERRORS, covered_by_caller, reviewer_of, workflow_of
from .domain import jurisdiction_prefix

router = APIRouter()

REGION_PATTERN = REGION_CODE_PATTERN  # a province, city, county, township or village code
_LIST_COLUMNS = ("case_id, case_type, household_id, village_code, subject, opened_by, opened_at, status, outcome,"
                 " closed_on, current_step, step_kind, step_role, step_level, step_entered_at, due_at,"
                 " overdue_flagged, notice_id, notice_ends_at, open_objections, comparison_hits, version")


class CaseSummary(BaseModel):
    case_id: str
    case_type: str
    household_id: str
    village_code: str
    subject: str | None
    opened_by: str
    opened_at: datetime
    status: Literal["open", "closed"]
    outcome: str | None
    closed_on: date | None
    current_step: str | None
    step_kind: str | None
    step_role: str | None = Field(description="Role that decides the current step.")
    step_level: str | None
    step_entered_at: datetime | None
    due_at: datetime | None = Field(description="When the current step becomes overdue (if it has a time limit).")
    overdue: bool = Field(description="The current step is past its time limit.")
    notice_id: str | None
    notice_ends_at: datetime | None
    open_objections: int
    comparison_hits: int
    ready: bool = Field(description="The current step can be decided now (no running notice period, no "
                        "unresolved objection).")
    version: int


class CasePage(BaseModel):
    total: int
    limit: int
    offset: int
    items: list[CaseSummary]


class NoticeEntry(BaseModel):
    case_id: str
    notice_id: str
    case_type: str
    case_type_name: str | None
    case_type_label_zh: str | None
    step_id: str
    step_name: str | None
    step_label_zh: str | None
    household_id: str
    head_name_masked: str | None = Field(description="Masked name of the household head (e.g. Z*Q).")
    starts_at: datetime
    ends_at: datetime
    running: bool = Field(description="Objections may be filed now (POST /cases/{case_id}/objections).")
    ended_at: datetime | None
    objections: int


class NoticeBoard(BaseModel):
    village_code: str
    as_of: datetime
    notices: list[NoticeEntry]


class TimelineEntry(BaseModel):
    version: int
    event_id: str
    event_type: str
    recorded_at: datetime
    actor: str | None
    data: dict[str, Any]


class Timeline(BaseModel):
    case_id: str
    version: int
    events: list[TimelineEntry]


def _summary(row: Any, now: datetime) -> dict[str, Any]:
    out = dict(row)
    out["overdue"] = bool(out["status"] == "open" and out["due_at"] is not None and out["due_at"] < now)
    out.pop("overdue_flagged", None)
    notice_running = out["notice_ends_at"] is not None and now < out["notice_ends_at"]
    out["ready"] = out["status"] == "open" and not notice_running and out["open_objections"] == 0
    return out


@router.get("/cases", response_model=CasePage, responses=ERRORS, tags=["cases"],
            summary="List cases within my jurisdiction")
async def list_cases(
    request: Request,
    region: str | None = Query(default=None, pattern=REGION_PATTERN,
                               description="Village (12 digits), township (9), county (6) or a wider region code."),
    case_type: str | None = Query(default=None, max_length=64),
    step: str | None = Query(default=None, max_length=64, description="Current step id."),
    status: Literal["open", "closed"] | None = None,
    overdue: bool | None = Query(default=None, description="Only cases whose current step is (not) overdue."),
    household_id: uuid.UUID | None = None,
    limit: int = Query(default=50, ge=1, le=500),
    offset: int = Query(default=0, ge=0, le=1_000_000),
):
    wf = workflow_of(request)
    now = wf.clock.now()
    where, args = [], []

    def add(clause: str, value: Any) -> None:
        args.append(value)
        where.append(clause.format(f"${len(args)}"))

    add("village_code LIKE {}", jurisdiction_prefix_of(request) + "%")  # only the caller's jurisdiction
    if region:
        add("village_code LIKE {}", jurisdiction_prefix(region.ljust(12, "0")) + "%")
    if case_type:
        add("case_type = {}", case_type)
    if step:
        add("current_step = {}", step)
    if status:
        add("status = {}", status)
    if household_id:
        add("household_id = {}", str(household_id))
    if overdue is not None:
        add("(status = 'open' AND due_at IS NOT NULL AND due_at < {})" if overdue
            else "NOT (status = 'open' AND due_at IS NOT NULL AND due_at < {})", now)
    sql_where = " WHERE " + " AND ".join(where)
    pool = runtime_of(request).pool
    total = await pool.fetchval(f"SELECT count(*) FROM wf_cases{sql_where}", *args)
    rows = await pool.fetch(f"SELECT {_LIST_COLUMNS} FROM wf_cases{sql_where} ORDER BY opened_at, case_id"
                            f" LIMIT {limit} OFFSET {offset}", *args)
    return {"total": total, "limit": limit, "offset": offset, "items": [_summary(r, now) for r in rows]}


@router.get("/inbox", response_model=CasePage, responses=ERRORS, tags=["cases"],
            summary="Cases waiting for my role and level in my jurisdiction")
async def inbox(request: Request, ready: bool | None = Query(default=None, description=(
                "Only cases that can (or cannot yet) be decided now.")),
                limit: int = Query(default=50, ge=1, le=500), offset: int = Query(default=0, ge=0, le=1_000_000)):
    me = reviewer_of(request)
    wf = workflow_of(request)
    now = wf.clock.now()
    args = [sorted({me.role, *me.roles}), me.level, jurisdiction_prefix(me.jurisdiction) + "%"]
    sql_where = " WHERE status = 'open' AND step_role = ANY($1) AND step_level = $2 AND village_code LIKE $3"
    if ready is not None:
        args.append(now)
        clause = "(coalesce(notice_ends_at <= $4, true) AND open_objections = 0)"
        sql_where += f" AND {clause}" if ready else f" AND NOT {clause}"
    pool = runtime_of(request).pool
    total = await pool.fetchval(f"SELECT count(*) FROM wf_cases{sql_where}", *args)
    rows = await pool.fetch(f"SELECT {_LIST_COLUMNS} FROM wf_cases{sql_where} ORDER BY due_at NULLS LAST,"
                            f" opened_at, case_id LIMIT {limit} OFFSET {offset}", *args)
    return {"total": total, "limit": limit, "offset": offset, "items": [_summary(r, now) for r in rows]}


def _iso(value: Any) -> Any:
    return value.isoformat() if isinstance(value, (datetime, date)) else value


@router.get("/cases/{case_id}", responses=ERRORS, tags=["cases"], summary="One case, from the event store")
async def get_case(case_id: uuid.UUID, request: Request):
    wf = workflow_of(request)
    async with runtime_of(request).pool.acquire() as conn:
        case = await wf.load(conn, str(case_id), authorise=covered_by_caller(request, f"case {case_id}"))
    definition = case.definition
    now = wf.clock.now()
    step = definition.step(case.current_step) if case.current_step else None
    body = {
        "case_id": case.id, "version": case.version, "case_type": case.case_type,
        "case_type_version": case.case_type_version, "household_id": case.household_id,
        "village_code": case.village_code, "household_status": case.household_status, "subject": case.subject,
        "monitoring_object_type": case.monitoring_object_type, "opened_by": case.opened_by,
        "opened_at": _iso(case.opened_at), "reason": case.reason, "closed": case.closed, "outcome": case.outcome,
        "status_effect": case.status_effect, "resolution": case.resolution,
        "current_step": None if step is None else {
            "id": step.id, "name": step.name, "label_zh": step.label_zh, "kind": step.kind, "role": step.role,
            "level": step.level, "entered_at": _iso(case.step_entered_at),
            "overdue": bool(case.overdue_steps(now)),
            "return_targets": list(definition.return_targets(step.id))},
        "notice": None if case.notice is None else {
            "notice_id": case.notice.notice_id, "step_id": case.notice.step_id,
            "starts_at": _iso(case.notice.starts_at), "ends_at": _iso(case.notice.ends_at),
            "running": case.notice.starts_at <= now < case.notice.ends_at},
        "objections": [{k: _iso(v) for k, v in vars(o).items()} for o in case.objections.values()],
        "comparisons": [{k: _iso(v) for k, v in vars(c).items()} for c in case.comparisons.values()],
        "decisions": case.decisions,
        "escalations": case.escalations,
    }
    return JSONResponse(body, headers={"ETag": f'"{case.version}"'})


@router.get("/cases/{case_id}/timeline", response_model=Timeline, responses=ERRORS, tags=["cases"],
            summary="Every event of a case, in order")
async def timeline(case_id: uuid.UUID, request: Request):
    events = await runtime_of(request).store.read_stream(str(case_id))
    if not events or events[0].stream_type != "case":
        raise DomainError("case_not_found", f"case {case_id} does not exist", 404)
    opened = events[0].data if events[0].event_type == "CaseOpened" else {}
    require_covers(request, opened.get("village_code"), f"case {case_id}")
    return {"case_id": str(case_id), "version": events[-1].version, "events": [
        {"version": e.version, "event_id": str(e.event_id), "event_type": e.event_type,
         "recorded_at": e.recorded_at, "actor": e.metadata.get("actor"), "data": e.data} for e in events]}


@router.get("/villages/{village_code}/notices", response_model=NoticeBoard, tags=["notices"],
            summary="Public notice board of a village (masked names only)")
async def notice_board(request: Request, village_code: str = Path(pattern=VILLAGE_CODE_PATTERN),
                       include_ended: bool = Query(default=False, description="Also notices that have ended.")):
    wf = workflow_of(request)
    now = wf.clock.now()
    sql = ("SELECT n.*, m.name_masked AS head_name_masked FROM wf_notices n"
           " LEFT JOIN wf_households h ON h.household_id = n.household_id"
           " LEFT JOIN wf_members m ON m.member_id = h.head_member_id"
           " WHERE n.village_code = $1")
    if not include_ended:
        sql += " AND n.ended_at IS NULL"
    rows = await runtime_of(request).pool.fetch(sql + " ORDER BY n.starts_at, n.case_id LIMIT 1000", village_code)
    notices = []
    for r in rows:
        definition = wf.case_types.get(r["case_type"])
        step = definition.step(r["step_id"]) if definition and definition.has_step(r["step_id"]) else None
        notices.append({
            "case_id": r["case_id"], "notice_id": r["notice_id"], "case_type": r["case_type"],
            "case_type_name": definition.name if definition else None,
            "case_type_label_zh": definition.label_zh if definition else None, "step_id": r["step_id"],
            "step_name": step.name if step else None, "step_label_zh": step.label_zh if step else None,
            "household_id": r["household_id"], "head_name_masked": r["head_name_masked"],
            "starts_at": r["starts_at"], "ends_at": r["ends_at"], "ended_at": r["ended_at"],
            "running": r["ended_at"] is None and r["starts_at"] <= now < r["ends_at"],
            "objections": r["objections"]})
    return {"village_code": village_code, "as_of": now, "notices": notices}


@router.get("/case-types", tags=["reference"], summary="The case type definitions in force")
async def case_types(request: Request) -> dict[str, Any]:
    out = {}
    for t in workflow_of(request).case_types.values():
        out[t.id] = {
            "id": t.id, "name": t.name, "label_zh": t.label_zh, "version": t.version,
            "status_effect": t.status_effect,
            "opens_for": dict(t.opens_for) if t.opens_for is not None else None,
            "steps": [{k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(s).items()} for s in t.steps]}
    return {"case_types": out}
