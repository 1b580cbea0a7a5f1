"""Attendance HTTP API and the registry facts it needs.

* ``POST /attendance/batches``: an offline batch from the app of the signed-in cadre
  (or resident-team member): the stream is always the caller's own (the principal's
  id, vouched for by the gateway), nobody records for someone else. Items are
  answered one by one (accepted with their flags, duplicate, or rejected with a
  code): a batch sent again records nothing twice. An item about a household whose
  village the caller's jurisdiction does not cover, unless the caller is paired with
  that household (an assignment the register made), and a team day at a village
  outside the jurisdiction, are rejected with the code ``outside_jurisdiction``; the
  rest of the batch is recorded (one refused item must not lose a day of offline
  work). Items already recorded stay duplicates; unknown households stay
  ``unknown_household``.
* ``GET /cadres/{cadre_id}/compliance/{quarter}``: the duties the cadre missed in an
  ended quarter, computed now; ``POST`` to the same path publishes them as
  ``DutyNonCompliance`` (each finding once). Monitoring keeps no record of a cadre's
  own post, so a cadre's region is that of the households the cadre is (or was)
  paired with: the caller's jurisdiction must cover every one of their villages
  (403 ``outside_jurisdiction``), and a cadre with no pairing is covered by
  province-level callers only. A cadre may always read their own findings.

The projection ``household-geo`` keeps each household's village and coordinates and
the cadres' pairings from the registry's topic.
"""

from __future__ import annotations

import dataclasses
import json
import re
from datetime import date, datetime, timedelta
from typing import Any, Sequence

from fastapi import APIRouter, Path, Request
from pydantic import BaseModel, ConfigDict, Field

from contracts.registry import HOUSEHOLD_TOPIC, VILLAGE_CODE_PATTERN
from eventkit.errors import ConcurrencyError
from eventkit.events import Metadata, NewEvent
from eventkit.projection import Message
from eventkit.principal import Principal
from eventkit.runtime import Problem, current_principal, require_covers, required_actor, runtime_of
from eventkit.aggregate import save_all
from eventkit.store import NO_STREAM
from eventkit.telemetry import correlation_id
from eventkit.sqlrows import unnest_columns

from .attendance import KINDS, AttendanceSettings, BatchResult, CadreAttendance, ItemResult, china_date
from .compliance import DutySettings, quarterly_findings

router = APIRouter(tags=["attendance"])
ERRORS = {code: {"model": Problem} for code in (401, 403, 404, 409, 422)}
CONFLICT_RETRIES = 5


def _unregistered(hid: str) -> LookupError:
    return LookupError(f"CadreAssigned for household {hid}, whose registration was not applied")


class HouseholdGeo:
    """Village, coordinates and pairings of households (from ``tpa.registry.household.v1``).

    ``apply_batch`` has the effect of ``apply`` on each message in turn: it reads the batch's
    households and their pairings at once, applies the events to them in memory and writes the
    new and changed rows in three statements.
    """

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
                               hid, *_coordinates(d))
        elif message.event_type == "CadreAssigned":
            village = await conn.fetchval("SELECT village_code FROM mon_households WHERE household_id = $1", hid)
            if village is None:
                raise _unregistered(hid)
            await conn.execute(
                "INSERT INTO mon_pairings (cadre_id, household_id, village_code, assigned_on) VALUES ($1, $2, $3,"
                " $4) ON CONFLICT DO NOTHING", d["cadre_id"], hid, village, _day(d["assigned_on"]))
        elif message.event_type == "CadreReleased":
            await conn.execute(
                "UPDATE mon_pairings SET released_on = $3 WHERE cadre_id = $1 AND household_id = $2"
                " AND released_on IS NULL", d["cadre_id"], hid, _day(d["released_on"]))

    async def apply_batch(self, conn: Any, messages: Sequence[Message]) -> None:
        messages = [m for m in messages if m.event_type in _GEO_EVENTS]
        if not messages:
            return
        ids = sorted({m.stream_id for m in messages})
        households = {r["household_id"]: dict(r) for r in await conn.fetch(
            "SELECT household_id, village_code, latitude, longitude FROM mon_households"
            " WHERE household_id = ANY($1::text[]) ORDER BY household_id FOR UPDATE", ids)}
        stored: dict[_Pairing, tuple[str, date | None]] = {
            (r["cadre_id"], r["household_id"], r["assigned_on"]): (r["village_code"], r["released_on"])
            for r in await conn.fetch(
                "SELECT cadre_id, household_id, assigned_on, village_code, released_on FROM mon_pairings"
                " WHERE household_id = ANY($1::text[]) ORDER BY cadre_id, household_id, assigned_on FOR UPDATE", ids)}
        pairings = dict(stored)
        changed: set[str] = set()
        for m in messages:
            d, hid = m.data, m.stream_id
            household = households.get(hid)
            if m.event_type == "HouseholdRegistered":
                if household is None:
                    households[hid] = {"household_id": hid, "village_code": d["village_code"], "latitude": None,
                                       "longitude": None}
                    changed.add(hid)
            elif m.event_type == "CoordinatesSet":
                latitude, longitude = _coordinates(d)
                if household is not None:
                    household.update(latitude=latitude, longitude=longitude)
                    changed.add(hid)
            elif m.event_type == "CadreAssigned":
                if household is None:
                    raise _unregistered(hid)
                pairings.setdefault((d["cadre_id"], hid, _day(d["assigned_on"])), (household["village_code"], None))
            else:  # CadreReleased: every open pairing of the cadre with the household
                released_on = _day(d["released_on"])
                for key, (village, released) in pairings.items():
                    if key[:2] == (d["cadre_id"], hid) and released is None:
                        pairings[key] = (village, released_on)
        if changed:
            rows = [[households[h][c] for c in ("household_id", "village_code", "latitude", "longitude")]
                    for h in sorted(changed)]
            await conn.execute(
                "INSERT INTO mon_households (household_id, village_code, latitude, longitude)"
                " SELECT * FROM unnest($1::text[], $2::text[], $3::float8[], $4::float8[]) ORDER BY 1"
                " ON CONFLICT (household_id) DO UPDATE SET latitude = EXCLUDED.latitude,"
                " longitude = EXCLUDED.longitude", *unnest_columns(rows))
        changes = [(*key, *value) for key, value in sorted(pairings.items()) if stored.get(key) != value]
        if changes:
            await conn.execute(
                "INSERT INTO mon_pairings (cadre_id, household_id, assigned_on, village_code, released_on)"
                " SELECT * FROM unnest($1::text[], $2::text[], $3::date[], $4::text[], $5::date[]) ORDER BY 1, 2, 3"
                " ON CONFLICT (cadre_id, household_id, assigned_on) DO UPDATE SET released_on = EXCLUDED.released_on",
                *unnest_columns(changes))

    async def reset(self, conn: Any) -> None:
        await conn.execute("TRUNCATE mon_households, mon_pairings")


_GEO_EVENTS = frozenset({"HouseholdRegistered", "CoordinatesSet", "CadreAssigned", "CadreReleased"})
_Pairing = tuple[str, str, date]  # cadre, household, assigned on


def _coordinates(d: dict[str, Any]) -> tuple[float, float]:
    return float(d["latitude"]), float(d["longitude"])


def _day(value: Any) -> date:
    return date.fromisoformat(str(value))


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


def _outside(principal: Principal, agg: CadreAttendance, items: list[Any], villages: dict[str, str],
             paired: set[str]) -> dict[int, ItemResult]:
    """The items (by index) about a household or village outside the caller's jurisdiction,
    rejected with ``outside_jurisdiction`` (items already recorded are left to ``ingest``)."""
    refused: dict[int, ItemResult] = {}
    for index, raw in enumerate(items):
        if not isinstance(raw, dict):
            continue
        client_id = raw.get("client_event_id") if isinstance(raw.get("client_event_id"), str) else None
        if client_id is not None and client_id in agg.client_event_ids:
            continue
        kind = raw.get("kind") if raw.get("kind") in KINDS else None
        household, village = raw.get("household_id"), raw.get("village_code")
        if isinstance(household, str) and household in villages and household not in paired \
                and not principal.covers(villages[household]):
            refused[index] = ItemResult(index, client_id, "rejected", kind, code="outside_jurisdiction", reason=(
                f"household {household} is outside jurisdiction {principal.jurisdiction} and not paired with "
                f"{principal.id}"), field="household_id")
        elif kind == "team_day" and isinstance(village, str) and re.fullmatch(VILLAGE_CODE_PATTERN, village) \
                and not principal.covers(village):
            refused[index] = ItemResult(index, client_id, "rejected", kind, code="outside_jurisdiction", reason=(
                f"village {village} is outside jurisdiction {principal.jurisdiction}"), field="village_code")
    return refused


@router.post("/attendance/batches", responses=ERRORS,
             summary="Record an offline batch of the signed-in cadre's own attendance")
async def record_batch(body: Batch, request: Request):
    principal = current_principal(request, "an attendance batch")
    cadre = principal.id  # one's own attendance only
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
                paired = {r["household_id"] for r in await conn.fetch(
                    "SELECT household_id FROM mon_pairings WHERE cadre_id = $1 AND household_id = ANY($2::text[])",
                    cadre, sorted(villages))}
                agg = CadreAttendance(cadre)
                for event in await runtime.store.read_stream(cadre, conn=conn):
                    agg.replay(event)
                refused = _outside(principal, agg, body.items, villages, paired)
                kept = [i for i in range(len(body.items)) if i not in refused]
                ingested = agg.ingest([body.items[i] for i in kept], now=runtime.state["clock"].now(),
                                      household_locations=locations, household_villages=villages,
                                      settings=settings)
                answers = {**refused, **{kept[r.index]: dataclasses.replace(r, index=kept[r.index])
                                         for r in ingested.items}}
                result = BatchResult(tuple(answers[i] for i in range(len(body.items))))
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
    principal = current_principal(request, "duty findings")
    if not (principal.type == "user" and principal.id == cadre_id):  # one's own findings: always
        await require_covers_cadre(request, cadre_id)
    return {"cadre_id": cadre_id, "quarter": quarter, "findings": await _findings(request, cadre_id, quarter)}


@router.post("/cadres/{cadre_id}/compliance/{quarter}", responses=ERRORS,
             summary="Publish the duties a cadre missed in an ended quarter (each finding once)")
async def publish_compliance(request: Request, cadre_id: str = Path(min_length=1, max_length=64,
                                                                   pattern=r"^[A-Za-z0-9._:-]+$"),
                             quarter: str = Path(pattern=r"^20[0-9]{2}-Q[1-4]$")):
    actor = required_actor(request, "publishing duty findings")
    await require_covers_cadre(request, cadre_id)
    findings, published = await publish_findings(runtime_of(request), cadre_id, quarter, actor)
    return {"cadre_id": cadre_id, "quarter": quarter, "findings": findings, "published": published}


async def require_covers_cadre(request: Request, cadre_id: str) -> None:
    """403 ``outside_jurisdiction`` unless the caller covers the villages of every household the cadre
    is or was paired with (the cadre's region as monitoring knows it; none: province callers only)."""
    villages = [r["village_code"] for r in await runtime_of(request).pool.fetch(
        "SELECT DISTINCT village_code FROM mon_pairings WHERE cadre_id = $1 ORDER BY village_code", cadre_id)]
    if not villages:
        require_covers(request, None, f"cadre {cadre_id} (paired with no household)")
    for village in villages:
        require_covers(request, village, f"cadre {cadre_id}'s household in village {village}")


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
