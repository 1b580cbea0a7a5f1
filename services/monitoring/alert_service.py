"""Return-risk alerts in the monitoring service: facts, evaluation, lifecycle, queries.

The projection ``risk-facts`` keeps the registry's household events and the funds
service's medical-cost requests per household; cadres report risks through the API.
Whenever a household's facts change, the rules (``rules.evaluate``, thresholds as data
in ``rules/thresholds.yaml``) run over them, in the same transaction: each new finding
raises an ``Alert`` (``ReturnRiskAlertRaised``) unless an alert for the same household
and risk is open (a unique index) or the same evidence raised one before
(``mon_findings``). Operators acknowledge, request verification (the workflow opens
a case) and resolve through the API; a verification case concluded in the workflow
resolves its alert (``alert-resolutions``); the overdue scan escalates alerts past
their time limits. Every alert event is also queued for the webhook subscribers and
streamed to operators over Server-Sent Events.

Jurisdiction: the gateway checks the action (``alerts:read``, ``alerts:manage``; a risk
report needs ``household:write`` or ``alerts:manage``); this service checks the record.
An alert belongs to its household's village: the list holds only alerts within the
caller's jurisdiction (and within ``region`` when given: the two filters combine), and
one alert, its acknowledgement, verification request and resolution are 403
``outside_jurisdiction`` for a caller whose jurisdiction does not cover the village
(checked before the ``If-Match`` version, so that a refused caller learns nothing of the
alert's state). A risk report for a household outside the caller's jurisdiction is 403.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from contracts.funds import DISBURSEMENT_TOPIC
from contracts.registry import HOUSEHOLD_TOPIC, REGION_CODE_PATTERN
from contracts.workflow import CASE_TOPIC, derived_case_id
from eventkit.clock import Clock
from eventkit.errors import ConcurrencyError, DomainError
from eventkit.events import Metadata, RecordedEvent
from eventkit.projection import Message
from eventkit.runtime import (
    Problem, idempotent, if_match_version, jurisdiction_prefix_of, require_covers, required_actor, runtime_of,
)
from eventkit.idempotency import CommandResult
from eventkit.aggregate import save_all
from eventkit.store import EventStore
from eventkit.telemetry import correlation_id

from .alerts import Alert, OverdueLimits
from .attendance import china_date
from .rules import (
    CadreReport, Thresholds, evaluate, finding_id, fold_risk_facts, medical_costs_from_disbursements, most_severe,
    suggested_object_type,
)

log = logging.getLogger("tpa.monitoring.alerts")
ERRORS = {code: {"model": Problem} for code in (401, 403, 404, 409, 412, 422)}


def verification_case_id(alert_id: str) -> str:
    """The id the workflow gives the verification case it opens for an alert."""
    return derived_case_id(f"alert:{alert_id}")


@dataclass
class Alerts:
    store: EventStore
    clock: Clock
    thresholds: Thresholds
    limits: OverdueLimits
    on_events: Any = None  # async (conn, recorded) -> None: webhook queue

    async def load(self, conn: Any, alert_id: str, expected: int | None = None,
                   request: Request | None = None) -> Alert:
        """The alert (404 when there is none); with ``request``, 403 ``outside_jurisdiction`` unless the
        caller covers its village (checked before the ``expected`` version: 412)."""
        alert = Alert(alert_id)
        for e in await self.store.read_stream(alert_id, conn=conn):
            if e.stream_type != Alert.stream_type:
                break
            alert.replay(e)
        if not alert.exists:
            raise DomainError("alert_not_found", f"alert {alert_id} does not exist", 404)
        if request is not None:
            require_covers(request, alert.village_code, f"alert {alert_id}")
        if expected is not None and expected != alert.version:
            raise DomainError("version_mismatch", f"alert {alert_id} is at version {alert.version}", 412,
                              current_version=alert.version)
        return alert

    async def save(self, conn: Any, alert: Alert, meta: Metadata, finding: str | None = None) -> list[RecordedEvent]:
        recorded = await save_all(self.store, [alert], meta, conn=conn)
        if recorded:
            await conn.execute(
                "INSERT INTO mon_alerts (alert_id, household_id, village_code, rule, risk, severity, state, level,"
                " is_open, raised_at, updated_at, finding_id, version) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9,"
                " $10, $11, $12, $13) ON CONFLICT (alert_id) DO UPDATE SET state = $7, level = $8, is_open = $9,"
                " updated_at = $11, version = $13",
                alert.id, alert.household_id, alert.village_code, alert.rule_id, alert.risk, alert.severity,
                alert.state, alert.level, alert.is_open, alert.raised_at, alert.last_change_at or alert.raised_at,
                finding or "", alert.version)
            if self.on_events is not None:
                await self.on_events(conn, recorded)
        return recorded

    async def facts(self, conn: Any, household_id: str):
        rows = await conn.fetch("SELECT event_type, data FROM mon_risk_events WHERE household_id = $1 ORDER BY version",
                                household_id)
        if not rows:
            return None
        events = [(r["event_type"], _json(r["data"])) for r in rows]
        medical = [("DisbursementRequested", _json(r["data"])) for r in await conn.fetch(
            "SELECT data FROM mon_medical_requests WHERE household_id = $1 ORDER BY position", household_id)]
        reports = [_json(r["data"]) for r in await conn.fetch(
            "SELECT data FROM mon_reports WHERE household_id = $1 ORDER BY report_id", household_id)]
        return fold_risk_facts(events, medical_costs=medical_costs_from_disbursements(
            medical, self.thresholds.medical.policy_codes, household_id), reports=reports)

    async def evaluate_household(self, conn: Any, household_id: str, meta: Metadata,
                                 trigger_event_id: str | None = None) -> list[str]:
        """Run the rules over the household's facts; raise an alert per new finding. Returns the new alert ids."""
        facts = await self.facts(conn, household_id)
        if facts is None:
            return []
        now = self.clock.now()
        raised = []
        for finding in most_severe(evaluate(facts, self.thresholds, china_date(now))).values():
            fid = finding_id(household_id, finding)
            if await conn.fetchval("SELECT 1 FROM mon_findings WHERE finding_id = $1", fid):
                continue
            if await conn.fetchval("SELECT 1 FROM mon_alerts WHERE household_id = $1 AND risk = $2 AND is_open",
                                   household_id, finding.risk):
                continue  # the same risk is already open for the household
            alert = Alert(str(uuid.uuid4()))
            alert.raise_(finding, household_id, facts.village_code, now,
                         object_type=suggested_object_type(facts, finding),
                         evidence_event_ids=[trigger_event_id] if trigger_event_id else None)
            await self.save(conn, alert, meta, fid)
            await conn.execute("INSERT INTO mon_findings (finding_id, alert_id) VALUES ($1, $2)", fid, alert.id)
            raised.append(alert.id)
        return raised

    async def escalate_overdue(self, pool: Any, limit: int = 500) -> int:
        """Escalate open alerts past their time limits (each once per limit)."""
        now = self.clock.now()
        ids = [r["alert_id"] for r in await pool.fetch(
            "SELECT alert_id FROM mon_alerts WHERE is_open ORDER BY updated_at LIMIT $1", limit)]
        escalated = 0
        for alert_id in ids:
            async with pool.acquire() as conn:
                async with conn.transaction():
                    alert = await self.load(conn, alert_id)
                    due = alert.overdue(now, self.limits)
                    if due is None or due.next_level is None:
                        continue
                    alert.escalate(now, limits=self.limits)
                    try:
                        await self.save(conn, alert, Metadata(actor="system:overdue"))
                        escalated += 1
                    except ConcurrencyError:
                        continue
        return escalated


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


class RiskFacts:
    """Registry household events and funds medical-cost requests, per household; the rules run on each."""

    name = "risk-facts"
    topics = (HOUSEHOLD_TOPIC, DISBURSEMENT_TOPIC)
    strict = True

    def __init__(self, alerts: Alerts | None = None) -> None:
        self.alerts = alerts  # bound at start

    async def apply(self, conn: Any, message: Message) -> None:
        assert self.alerts is not None, "RiskFacts is not bound"
        if message.stream_type == "household":
            await conn.execute(
                "INSERT INTO mon_risk_events (household_id, version, event_type, data) VALUES ($1, $2, $3, $4::jsonb)"
                " ON CONFLICT DO NOTHING", message.stream_id, message.version, message.event_type,
                json.dumps(message.data, ensure_ascii=False))
            household_id = message.stream_id
        elif message.event_type == "DisbursementRequested" and message.data.get("cost_basis") is not None:
            household_id = message.data["household_id"]
            await conn.execute(
                "INSERT INTO mon_medical_requests (disbursement_id, household_id, position, data) VALUES ($1, $2, $3,"
                " $4::jsonb) ON CONFLICT DO NOTHING", message.stream_id, household_id, message.global_position,
                json.dumps({**message.data, "disbursement_id": message.stream_id}, ensure_ascii=False))
        else:
            return
        await self.alerts.evaluate_household(conn, household_id, Metadata(
            actor="system:risk-rules", causation_id=message.event_id,
            correlation_id=message.metadata.get("correlation_id")), trigger_event_id=message.event_id)

    async def reset(self, conn: Any) -> None:
        # Alerts already raised stay; their findings are remembered, so a replay raises none again.
        await conn.execute("TRUNCATE mon_risk_events, mon_medical_requests")


class AlertResolutions:
    """A verification case concluded in the workflow resolves the alert it was opened for."""

    name = "alert-resolutions"
    topics = (CASE_TOPIC,)
    strict = False

    def __init__(self, alerts: Alerts | None = None) -> None:
        self.alerts = alerts

    async def apply(self, conn: Any, message: Message) -> None:
        if message.event_type != "CaseConcluded" or message.data.get("case_type") != "return_risk":
            return
        assert self.alerts is not None
        rows = await conn.fetch("SELECT alert_id FROM mon_alerts WHERE household_id = $1 AND is_open",
                                message.data["household_id"])
        for r in rows:
            if verification_case_id(r["alert_id"]) != message.stream_id:
                continue
            alert = await self.alerts.load(conn, r["alert_id"])
            if message.data["outcome"] == "approved":
                continue  # confirmed: the household is now a monitoring object; the alert stays until eliminated
            alert.resolve("not_confirmed", "system:workflow", self.alerts.clock.now(), case_id=message.stream_id,
                          note="the verification case was rejected")
            await self.alerts.save(conn, alert, Metadata(actor="system:workflow", causation_id=message.event_id))

    async def reset(self, conn: Any) -> None:
        """Nothing to clear: resolutions already recorded stay."""


# -- HTTP --------------------------------------------------------------------------------------

router = APIRouter(tags=["alerts"])


class RiskReport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["disaster", "other"]
    risk: str | None = Field(default=None, max_length=8, pattern=r"^[0-9]{2,4}$", description="Risk code.")
    note: str | None = Field(default=None, max_length=2000)
    reported_at: datetime | None = None


class Acknowledge(BaseModel):
    model_config = ConfigDict(extra="forbid")
    note: str | None = Field(default=None, max_length=2000)


class Resolve(BaseModel):
    model_config = ConfigDict(extra="forbid")
    resolution: Literal["risk_eliminated", "not_confirmed"]
    note: str | None = Field(default=None, max_length=2000)


def alerts_of(request: Request) -> Alerts:
    return runtime_of(request).state["alerts"]


@router.post("/households/{household_id}/risk-reports", status_code=201, responses=ERRORS,
             summary="A cadre reports a risk (disaster or other) for a household; the rules run at once")
async def report_risk(household_id: uuid.UUID, body: RiskReport, request: Request):
    actor = required_actor(request)
    alerts = alerts_of(request)
    report_id = str(uuid.uuid4())

    async def handle(conn) -> CommandResult:
        hid = str(household_id)
        if not await conn.fetchval("SELECT 1 FROM mon_risk_events WHERE household_id = $1 LIMIT 1", hid):
            raise DomainError("household_unknown", f"household {hid} is not in the register (or not yet known to "
                              "monitoring)", 404)
        village = await conn.fetchval("SELECT data->>'village_code' FROM mon_risk_events WHERE household_id = $1"
                                      " AND event_type = 'HouseholdRegistered' ORDER BY version LIMIT 1", hid)
        require_covers(request, village, f"household {hid}")
        report = CadreReport.parse({"report_id": report_id, "kind": body.kind, "risk": body.risk, "note": body.note,
                                    "reported_at": (body.reported_at or alerts.clock.now()).isoformat()})
        await conn.execute("INSERT INTO mon_reports (report_id, household_id, reported_by, data) VALUES"
                           " ($1, $2, $3, $4::jsonb)", report_id, hid, actor, json.dumps({
                               "report_id": report.report_id, "kind": report.kind, "risk": report.risk,
                               "note": report.note, "reported_at": report.reported_at.isoformat()}, ensure_ascii=False))
        raised = await alerts.evaluate_household(conn, hid, Metadata(actor=actor, correlation_id=correlation_id.get()))
        return CommandResult(201, {"report_id": report_id, "raised_alert_ids": raised})

    return await idempotent(request, body.model_dump(mode="json"), handle)


def _alert_command(path: str, model: type[BaseModel] | None, summary: str, run) -> None:
    async def endpoint(alert_id: uuid.UUID, request: Request, body: Any = None):
        actor = required_actor(request)
        alerts = alerts_of(request)
        expected = if_match_version(request)

        async def handle(conn) -> CommandResult:
            alert = await alerts.load(conn, str(alert_id), expected, request)
            run(alert, body, actor, alerts.clock.now())
            recorded = await alerts.save(conn, alert, Metadata(actor=actor, correlation_id=correlation_id.get()))
            return CommandResult(200, {"alert_id": alert.id, "version": alert.version, "state": alert.state,
                                       "events": [e.event_type for e in recorded]})
        return await idempotent(request, body.model_dump(mode="json") if body is not None else None, handle)

    if model is not None:
        async def handler(alert_id: uuid.UUID, body: Any, request: Request):
            return await endpoint(alert_id, request, body)
        handler.__annotations__ = {"alert_id": uuid.UUID, "body": model, "request": Request}
    else:
        async def handler(alert_id: uuid.UUID, request: Request):  # type: ignore[misc]
            return await endpoint(alert_id, request)
    handler.__name__ = f"alert_{path.replace('-', '_')}"
    router.add_api_route(f"/alerts/{{alert_id}}/{path}", handler, methods=["POST"], responses=ERRORS,
                         summary=summary)


_alert_command("acknowledgement", Acknowledge, "Acknowledge an alert",
               lambda a, b, actor, now: a.acknowledge(actor, now, b.note))
_alert_command("verification-request", None, "Request on-site verification (the workflow opens a case)",
               lambda a, b, actor, now: a.request_verification(actor, now))
_alert_command("resolution", Resolve, "Resolve an alert: risk eliminated, or not confirmed",
               lambda a, b, actor, now: a.resolve(b.resolution, actor, now, note=b.note))


class AlertRow(BaseModel):
    alert_id: str
    household_id: str
    village_code: str
    rule: str
    risk: str
    severity: str
    state: str
    level: str
    is_open: bool
    raised_at: datetime
    updated_at: datetime
    version: int


class AlertPage(BaseModel):
    total: int
    items: list[AlertRow]


@router.get("/alerts", response_model=AlertPage, responses=ERRORS,
            summary="Alerts by region, severity, state, rule and age, within the caller's jurisdiction")
async def list_alerts(request: Request,
                      region: str | None = Query(default=None, pattern=REGION_CODE_PATTERN),
                      severity: Literal["low", "medium", "high"] | None = None,
                      state: Literal["raised", "acknowledged", "verification_requested", "resolved"] | None = None,
                      rule: str | None = Query(default=None, max_length=64, pattern=r"^[a-z_]+$"),
                      older_than_hours: float | None = Query(default=None, ge=0, le=100000),
                      limit: int = Query(default=100, ge=1, le=1000), offset: int = Query(default=0, ge=0, le=10**6)):
    from .dashboard import _prefix

    where, args = [], []

    def add(clause: str, value: Any) -> None:
        args.append(value)
        where.append(clause.format(f"${len(args)}"))
    add("village_code LIKE {}", jurisdiction_prefix_of(request) + "%")  # only the caller's jurisdiction
    if region:
        add("village_code LIKE {}", _prefix(region) + "%")
    if severity:
        add("severity = {}", severity)
    if state:
        add("state = {}", state)
    if rule:
        add("rule = {}", rule)
    if older_than_hours is not None:
        add("raised_at <= {}::timestamptz - make_interval(secs => " + str(float(older_than_hours) * 3600) + ")",
            alerts_of(request).clock.now())
    sql = (" WHERE " + " AND ".join(where)) if where else ""
    pool = runtime_of(request).pool
    total = await pool.fetchval(f"SELECT count(*) FROM mon_alerts{sql}", *args)
    rows = await pool.fetch(f"SELECT * FROM mon_alerts{sql} ORDER BY raised_at DESC, alert_id LIMIT {limit}"
                            f" OFFSET {offset}", *args)
    return {"total": total, "items": [dict(r) for r in rows]}


@router.get("/alerts/{alert_id}", responses=ERRORS, summary="One alert, from the event store")
async def get_alert(alert_id: uuid.UUID, request: Request):
    alerts = alerts_of(request)
    async with runtime_of(request).pool.acquire() as conn:
        alert = await alerts.load(conn, str(alert_id), request=request)
    snap = alert.snapshot()
    out = {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in snap.items() if not k.startswith("_")}
    out["alert_id"] = alert.id
    out["version"] = alert.version
    due = alert.due_at(alerts.limits)
    out["due_at"] = due[0].isoformat() if due else None
    return json.loads(json.dumps(out, default=str))
