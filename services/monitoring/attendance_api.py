"""Attendance HTTP API and the registry facts it needs.

* ``POST /attendance/batches``: an offline batch from the app of the cadre named by
  ``X-TPA-Actor`` (asserted until the gateway authenticates, ADR 0010). Items are
  answered one by one (accepted with their flags, duplicate, or rejected with a
  code): a batch sent again records nothing twice.
* ``GET /cadres/{cadre_id}/compliance/{quarter}``: the duties the cadre missed in an
  ended quarter, computed now; ``POST`` to the same path publishes them as
  ``DutyNonCompliance`` (each finding once).

The projection ``household-geo`` keeps each household's village and coordinates and
the cadres' pairings from the registry's topic.
"""

from __future__ import annotations

import json
from datetime import date, datetime, timedelta
from typing import Any

from fastapi import APIRouter, Path, Request
from pydantic import BaseModel, ConfigDict, Field

from contracts.registry import HOUSEHOLD_TOPIC
from eventkit.errors import ConcurrencyError
from eventkit.events import Metadata, NewEvent
from eventkit.projection import Message
from eventkit.runtime import Problem, required_actor, runtime_of
from eventkit.aggregate import save_all
from eventkit.store import NO_STREAM
from eventkit.telemetry import correlation_id

from .attendance import AttendanceSettings, CadreAttendance, china_date
from .compliance import DutySettings, quarterly_findings

router = APIRouter(tags=["attendance"])
ERRORS = {code: {"model": Problem} for code in (401, 404, 409, 422)}
CONFLICT_RETRIES = 5


class HouseholdGeo:
    """Village, coordinates and pairings of households (from ``tpa.registry.household.v1``)."""

    name = "household-geo"
    topics = (HOUSEHOLD_TOPIC,)
    strict = False

    async def apply(self, conn: Any, message: Message) -> None:
        d, hid = message.data, message.stream_id
        if message.event_type == "HouseholdRegistered":
            await conn.execute("INSERT INTO mon_households (household_id, village_code) VALUES ($1, $2)"
                               " ON CONFLICT (household_id) DO NOTHING", hid, d["village_code"])
        elif message.event_type == "CoordinatesSet":
            await conn.execute("UPDATE mon_households SET latitude = $2, longitude = $3 WHERE household_id = $1",
                               hid, float(d["latitude"]), float(d["longitude"]))
        elif message.event_type == "CadreAssigned":
            village = await conn.fetchval("SELECT village_code FROM mon_households WHERE household_id = $1", hid)
            if village is None:
                raise LookupError(f"CadreAssigned for household {hid}, whose registration was not applied")
            await conn.execute(
                "INSERT INTO mon_pairings (cadre_id, household_id, village_code, assigned_on) VALUES ($1, $2, $3,"
                " $4::text::date) ON CONFLICT DO NOTHING", d["cadre_id"], hid, village, str(d["assigned_on"]))
        elif message.event_type == "CadreReleased":
            await conn.execute(
                "UPDATE mon_pairings SET released_on = $3::text::date WHERE cadre_id = $1 AND household_id = $2"
                " AND released_on IS NULL", d["cadre_id"], hid, str(d["released_on"]))

    async def reset(self, conn: Any) -> None:
        await conn.execute("TRUNCATE mon_households, mon_pairings")


class Batch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: list[dict[str, Any]] = Field(min_length=1, max_length=1000, description=(
        "Items as the app recorded them: {client_event_id, kind: check_in|check_out|visit_log|contact|team_day, "
        "occurred_at, ...} (see services/monitoring/attendance.py)."))


async def _mirror(conn: Any, recorded: list) -> None:
    for e in recorded:
        d = e.data
        kind = {"VisitCheckedIn": "visit", "ContactLogged": "contact", "TeamDayRecorded": "team_day"}.get(e.event_type)
        if kind is None:
            continue
        day = date.fromisoformat(d["day"]) if kind == "team_day" else china_date(datetime.fromisoformat(
            d["occurred_at"]))
        await conn.execute(
            "INSERT INTO mon_attendance (event_id, cadre_id, kind, household_id, village_code, day, outside_geofence,"
            " impossible_travel) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (event_id) DO NOTHING",
            str(e.event_id), e.stream_id, kind, d.get("household_id"), d.get("village_code"), day,
            bool(d.get("outside_geofence")), bool(d.get("impossible_travel")))


@router.post("/attendance/batches", responses=ERRORS, summary="Record an offline batch of the cadre's attendance")
async def record_batch(body: Batch, request: Request):
    cadre = required_actor(request, "an attendance batch")
    runtime = runtime_of(request)
    settings: AttendanceSettings = runtime.state["attendance_settings"]
    households = {str(i.get("household_id")) for i in body.items if isinstance(i, dict) and i.get("household_id")}
    for attempt in range(CONFLICT_RETRIES):
        async with runtime.pool.acquire() as conn:
            async with conn.transaction():
                rows = await conn.fetch("SELECT household_id, village_code, latitude, longitude FROM mon_households"
                                        " WHERE household_id = ANY($1::text[])", sorted(households))
                locations = {r["household_id"]: (r["latitude"], r["longitude"]) if r["latitude"] is not None
                             else None for r in rows}
                villages = {r["household_id"]: r["village_code"] for r in rows}
                agg = CadreAttendance(cadre)
                for event in await runtime.store.read_stream(cadre, conn=conn):
                    agg.replay(event)
                result = agg.ingest(body.items, now=runtime.state["clock"].now(), household_locations=locations,
                                    household_villages=villages, settings=settings)
                try:
                    recorded = await save_all(runtime.store, [agg],
                                              Metadata(actor=cadre, correlation_id=correlation_id.get()), conn=conn)
                except ConcurrencyError:
                    if attempt == CONFLICT_RETRIES - 1:
                        raise
                    continue
                await _mirror(conn, recorded)
                return result.to_json()
    raise AssertionError("unreachable")


@router.get("/cadres/{cadre_id}/compliance/{quarter}", responses=ERRORS,
            summary="The duties a cadre missed in an ended quarter")
async def compliance(request: Request, cadre_id: str = Path(min_length=1, max_length=64,
                                                           pattern=r"^[A-Za-z0-9._:-]+$"),
                     quarter: str = Path(pattern=r"^20[0-9]{2}-Q[1-4]$")):
    return {"cadre_id": cadre_id, "quarter": quarter, "findings": await _findings(request, cadre_id, quarter)}


@router.post("/cadres/{cadre_id}/compliance/{quarter}", responses=ERRORS,
             summary="Publish the duties a cadre missed in an ended quarter (each finding once)")
async def publish_compliance(request: Request, cadre_id: str = Path(min_length=1, max_length=64,
                                                                   pattern=r"^[A-Za-z0-9._:-]+$"),
                             quarter: str = Path(pattern=r"^20[0-9]{2}-Q[1-4]$")):
    actor = required_actor(request, "publishing duty findings")
    findings, published = await publish_findings(runtime_of(request), cadre_id, quarter, actor)
    return {"cadre_id": cadre_id, "quarter": quarter, "findings": findings, "published": published}


async def publish_findings(runtime: Any, cadre_id: str, quarter: str, actor: str) -> tuple[list, list[str]]:
    """Record the cadre's findings of an ended quarter as DutyNonCompliance (each once)."""
    findings = await findings_for(runtime, cadre_id, quarter)
    published = []
    async with runtime.pool.acquire() as conn:
        async with conn.transaction():
            for f in findings:
                if await conn.fetchval("SELECT 1 FROM events WHERE stream_id = $1", f["finding_id"]):
                    continue
                await runtime.store.append(f["finding_id"], "compliance", NO_STREAM,
                                           [NewEvent("DutyNonCompliance", f)],
                                           Metadata(actor=actor, correlation_id=correlation_id.get()), conn=conn)
                published.append(f["finding_id"])
    return findings, published


async def publish_ended_quarter(runtime: Any) -> int:
    """The quarter-end run: every paired cadre's findings of the last ended quarter, published once."""
    from .compliance import quarter_bounds, quarter_of

    today = china_date(runtime.state["clock"].now())
    start, _ = quarter_bounds(quarter_of(today))
    quarter = quarter_of(start - timedelta(days=1))
    cadres = [r["cadre_id"] for r in await runtime.pool.fetch("SELECT DISTINCT cadre_id FROM mon_pairings")]
    total = 0
    for cadre in cadres:
        _, published = await publish_findings(runtime, cadre, quarter, "system:duty-compliance")
        total += len(published)
    return total


async def _findings(request: Request, cadre_id: str, quarter: str) -> list[dict[str, Any]]:
    return await findings_for(runtime_of(request), cadre_id, quarter)


async def findings_for(runtime: Any, cadre_id: str, quarter: str) -> list[dict[str, Any]]:
    pool = runtime.pool
    pairings = [(r["household_id"], r["village_code"], r["assigned_on"], r["released_on"]) for r in await pool.fetch(
        "SELECT household_id, village_code, assigned_on, released_on FROM mon_pairings WHERE cadre_id = $1",
        cadre_id)]
    rows = await pool.fetch("SELECT kind, household_id, village_code, day FROM mon_attendance WHERE cadre_id = $1",
                            cadre_id)
    visits = [(r["household_id"], r["day"]) for r in rows if r["kind"] == "visit"]
    contacts = [(r["household_id"], r["day"]) for r in rows if r["kind"] == "contact"]
    team = [(r["village_code"], r["day"]) for r in rows if r["kind"] == "team_day"]
    settings: DutySettings = runtime.state["duty_settings"]
    findings = quarterly_findings(cadre_id, quarter, pairings, visits, contacts, team or None, settings,
                                  now=runtime.state["clock"].now())
    return json.loads(json.dumps(findings, default=str))
