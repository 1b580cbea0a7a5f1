"""The case board: the workflow service's read model of cases and public notices.

One row per case in ``wf_cases`` (where it stands: current step with the role
and level that decide it, its due time, notice and objection counts, comparison
hits) and one row per public notice in ``wf_notices`` (the village notice
boards). Built from the service's own topic ``tpa.workflow.case.v1``.

``evolve`` is the pure step the projection applies to each event; ``fold`` runs
it over a case's stream. The projection stores exactly what ``fold`` of the
event store gives, which the tests check. Step facts (kind, role, level, time
limit) come from the loaded case types; a step a definition no longer has keeps
its id with the other facts empty. Unknown event types change only the version,
so an older board keeps following a newer workflow service.
"""

from __future__ import annotations

import copy
import json
from datetime import datetime, timedelta
from typing import Any, Iterable, Mapping

from contracts.workflow import CASE_TOPIC

from .definitions import CaseType

CASE_COLUMNS = (
    "case_id", "case_type", "household_id", "village_code", "subject", "opened_by", "opened_at", "status",
    "outcome", "closed_on", "current_step", "step_kind", "step_role", "step_level", "step_entered_at", "due_at",
    "overdue_flagged", "notice_id", "notice_ends_at", "open_objections", "comparison_hits", "comparisons",
    "version",
)
NOTICE_COLUMNS = (
    "case_id", "notice_id", "village_code", "household_id", "case_type", "step_id", "starts_at", "ends_at",
    "ended_at", "objections", "open_objection_ids",
)


class BoardError(Exception):
    """An event that does not fit the case's board row (the stream is held)."""


def _at(value: Any) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)


def _enter_step(row: dict[str, Any], step_id: str | None, at: datetime | None,
                types: Mapping[str, CaseType]) -> None:
    row["current_step"] = step_id
    row["step_entered_at"] = at if step_id else None
    row["overdue_flagged"] = False
    row["step_kind"] = row["step_role"] = row["step_level"] = row["due_at"] = None
    definition = types.get(row["case_type"])
    if step_id is None or definition is None or not definition.has_step(step_id):
        return
    step = definition.step(step_id)
    row["step_kind"], row["step_role"], row["step_level"] = step.kind, step.role, step.level
    if step.time_limit_days is not None and at is not None:
        row["due_at"] = at + timedelta(days=step.time_limit_days)


def _end_notice(doc: dict[str, Any], at: datetime) -> None:
    row = doc["case"]
    if row["notice_id"] is not None:
        notice = doc["notices"].get(row["notice_id"])
        if notice is not None and notice["ended_at"] is None:
            notice["ended_at"] = at
    row["notice_id"] = row["notice_ends_at"] = None
    row["open_objections"] = 0


def evolve(doc: dict[str, Any] | None, event_type: str, data: Mapping[str, Any], version: int,
           types: Mapping[str, CaseType]) -> dict[str, Any]:
    """The board document after one event: {"case": row, "notices": {notice_id: row}}."""
    if event_type == "CaseOpened":
        if doc is not None:
            raise BoardError(f"case {data['case_id']} is already open")
        row: dict[str, Any] = {c: None for c in CASE_COLUMNS}
        row.update(case_id=data["case_id"], case_type=data["case_type"], household_id=data["household_id"],
                   village_code=data["village_code"], subject=data.get("subject"), opened_by=data["opened_by"],
                   opened_at=_at(data["opened_at"]), status="open", overdue_flagged=False, open_objections=0,
                   comparison_hits=0, comparisons={})
        _enter_step(row, data["first_step"], row["opened_at"], types)
        doc = {"case": row, "notices": {}}
        doc["case"]["version"] = version
        return doc
    if doc is None:
        raise BoardError(f"{event_type} for a case whose opening was not applied")
    doc = copy.deepcopy(doc)
    row = doc["case"]
    if event_type == "StepDecided":
        at = _at(data["decided_at"])
        _end_notice(doc, at)
        if data.get("next_step"):
            _enter_step(row, data["next_step"], at, types)
    elif event_type == "NoticePosted":
        doc["notices"][data["notice_id"]] = {
            "case_id": row["case_id"], "notice_id": data["notice_id"], "village_code": row["village_code"],
            "household_id": row["household_id"], "case_type": row["case_type"], "step_id": data["step_id"],
            "starts_at": _at(data["starts_at"]), "ends_at": _at(data["ends_at"]), "ended_at": None,
            "objections": 0, "open_objection_ids": []}
        row["notice_id"], row["notice_ends_at"], row["open_objections"] = (
            data["notice_id"], _at(data["ends_at"]), 0)
    elif event_type == "ObjectionFiled":
        notice = doc["notices"].get(data["notice_id"])
        if notice is None:
            raise BoardError(f"objection to unknown notice {data['notice_id']}")
        notice["objections"] += 1
        notice["open_objection_ids"] = notice["open_objection_ids"] + [data["objection_id"]]
        if row["notice_id"] == data["notice_id"]:
            row["open_objections"] += 1
    elif event_type == "ObjectionResolved":
        for notice in doc["notices"].values():
            if data["objection_id"] in notice["open_objection_ids"]:
                notice["open_objection_ids"] = [o for o in notice["open_objection_ids"]
                                                if o != data["objection_id"]]
                if row["notice_id"] == notice["notice_id"]:
                    row["open_objections"] -= 1
                break
    elif event_type == "ComparisonRecorded":
        comparisons = dict(row["comparisons"])
        comparisons[f"{data['member_id']}:{data['source']}"] = bool(data["hit"])
        row["comparisons"] = comparisons
        row["comparison_hits"] = sum(1 for hit in comparisons.values() if hit)
    elif event_type == "CaseEscalated":
        _enter_step(row, data["to_step"], _at(data["escalated_at"]), types)
    elif event_type == "StepOverdue":
        if data["step_id"] == row["current_step"]:
            row["overdue_flagged"] = True
    elif event_type == "CaseConcluded":
        at = row["step_entered_at"] or row["opened_at"]
        _end_notice(doc, at)
        row["status"], row["outcome"] = "closed", data["outcome"]
        row["closed_on"] = data["effective_on"] if not isinstance(data["effective_on"], str) \
            else datetime.fromisoformat(data["effective_on"]).date()
        _enter_step(row, None, None, types)
    row["version"] = version
    return doc


def fold(events: Iterable[Any], types: Mapping[str, CaseType]) -> dict[str, Any] | None:
    """The board document of one case from its stream (``RecordedEvent``s or ``Message``s)."""
    doc = None
    for e in events:
        doc = evolve(doc, e.event_type, e.data, e.version, types)
    return doc


async def load_doc(conn: Any, case_id: str) -> dict[str, Any] | None:
    row = await conn.fetchrow(f"SELECT {', '.join(CASE_COLUMNS)} FROM wf_cases WHERE case_id = $1", case_id)
    if row is None:
        return None
    case = dict(row)
    if isinstance(case["comparisons"], str):
        case["comparisons"] = json.loads(case["comparisons"])
    notices = await conn.fetch(f"SELECT {', '.join(NOTICE_COLUMNS)} FROM wf_notices WHERE case_id = $1", case_id)
    return {"case": case, "notices": {n["notice_id"]: {**dict(n), "open_objection_ids": list(
        n["open_objection_ids"])} for n in notices}}


async def save_doc(conn: Any, doc: dict[str, Any]) -> None:
    case = dict(doc["case"])
    case["comparisons"] = json.dumps(case["comparisons"], sort_keys=True)
    cols = ", ".join(CASE_COLUMNS)
    params = ", ".join(f"${i}" + ("::jsonb" if c == "comparisons" else "") for i, c in enumerate(CASE_COLUMNS, 1))
    updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in CASE_COLUMNS if c != "case_id")
    await conn.execute(f"INSERT INTO wf_cases ({cols}) VALUES ({params}) ON CONFLICT (case_id) DO UPDATE SET "
                       f"{updates}", *[case[c] for c in CASE_COLUMNS])
    for notice in doc["notices"].values():
        ncols = ", ".join(NOTICE_COLUMNS)
        nparams = ", ".join(f"${i}" for i in range(1, len(NOTICE_COLUMNS) + 1))
        nupdates = ", ".join(f"{c} = EXCLUDED.{c}" for c in NOTICE_COLUMNS if c not in ("case_id", "notice_id"))
        await conn.execute(f"INSERT INTO wf_notices ({ncols}) VALUES ({nparams}) ON CONFLICT (case_id, notice_id)"
                           f" DO UPDATE SET {nupdates}", *[notice[c] for c in NOTICE_COLUMNS])


class CaseBoard:
    """Projection of ``tpa.workflow.case.v1`` into ``wf_cases`` and ``wf_notices`` (strict)."""

    name = "case-board"
    topics = (CASE_TOPIC,)
    strict = True

    def __init__(self, case_types: Mapping[str, CaseType]) -> None:
        self.case_types = case_types

    async def apply(self, conn: Any, message: Any) -> None:
        doc = await load_doc(conn, message.stream_id)
        if doc is not None and message.version <= doc["case"]["version"]:
            return  # already applied (the runner's tracking normally filters these)
        await save_doc(conn, evolve(doc, message.event_type, message.data, message.version, self.case_types))

    async def reset(self, conn: Any) -> None:
        await conn.execute("TRUNCATE wf_cases, wf_notices")
