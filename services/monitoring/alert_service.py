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
from typing import Any, Literal, Mapping, Sequence

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
from eventkit.sqlrows import unnest_columns

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
        return (await self.facts_of(conn, [household_id])).get(household_id)

    async def facts_of(self, conn: Any, household_ids: Sequence[str]) -> dict[str, Any]:
        """The risk facts of each household that has registry events (three queries for all)."""
        ids = list(household_ids)
        events: dict[str, list[tuple[str, Any]]] = {}
        for r in await conn.fetch("SELECT household_id, event_type, data FROM mon_risk_events"
                                  " WHERE household_id = ANY($1::text[]) ORDER BY household_id, version", ids):
            events.setdefault(r["household_id"], []).append((r["event_type"], _json(r["data"])))
        medical: dict[str, list[tuple[str, Any]]] = {}
        for r in await conn.fetch("SELECT household_id, data FROM mon_medical_requests"
                                  " WHERE household_id = ANY($1::text[]) ORDER BY household_id, position", ids):
            medical.setdefault(r["household_id"], []).append(("DisbursementRequested", _json(r["data"])))
        reports: dict[str, list[Any]] = {}
        for r in await conn.fetch("SELECT household_id, data FROM mon_reports"
                                  " WHERE household_id = ANY($1::text[]) ORDER BY household_id, report_id", ids):
            reports.setdefault(r["household_id"], []).append(_json(r["data"]))
        return {hid: fold_risk_facts(evs, medical_costs=medical_costs_from_disbursements(
                    medical.get(hid, ()), self.thresholds.medical.policy_codes, hid), reports=reports.get(hid, ()))
                for hid, evs in events.items()}

    async def evaluate_household(self, conn: Any, household_id: str, meta: Metadata,
                                 trigger_event_id: str | None = None) -> list[str]:
        """Run the rules over the household's facts; raise an alert per new finding. Returns the new alert ids."""
        raised = await self.evaluate_households(conn, {household_id: (meta, trigger_event_id)})
        return raised.get(household_id, [])

    async def evaluate_households(self, conn: Any, triggers: Mapping[str, tuple[Metadata, str | None]]
                                  ) -> dict[str, list[str]]:
        """``evaluate_household`` for each household of ``triggers`` (household -> metadata of its alerts
        and the id of the event that triggered the evaluation), in that order, with the facts, the
        findings already raised and the open alerts read in a few queries for all of them. Returns
        the new alert ids of each household that raised any."""
        all_facts = await self.facts_of(conn, list(triggers))
        now = self.clock.now()
        today = china_date(now)
        findings = {hid: [(finding_id(hid, f), f) for f in most_severe(evaluate(facts, self.thresholds, today))
                          .values()] for hid, facts in all_facts.items()}
        candidates = [fid for found in findings.values() for fid, _ in found]
        if not candidates:
            return {}
        known = {r["finding_id"] for r in await conn.fetch(
            "SELECT finding_id FROM mon_findings WHERE finding_id = ANY($1::text[])", candidates)}
        open_risks = {(r["household_id"], r["risk"]) for r in await conn.fetch(
            "SELECT household_id, risk FROM mon_alerts WHERE household_id = ANY($1::text[]) AND is_open",
            [hid for hid, found in findings.items() if found])}
        raised: dict[str, list[str]] = {}
        for hid, (meta, trigger_event_id) in triggers.items():
            facts = all_facts.get(hid)
            for fid, finding in findings.get(hid, ()):
                if fid in known or (hid, finding.risk) in open_risks:
                    continue  # raised before, or the same risk is already open for the household
                alert = Alert(str(uuid.uuid4()))
                alert.raise_(finding, hid, facts.village_code, now, object_type=suggested_object_type(facts, finding),
                             evidence_event_ids=[trigger_event_id] if trigger_event_id else None)
                await self.save(conn, alert, meta, fid)
                await conn.execute("INSERT INTO mon_findings (finding_id, alert_id) VALUES ($1, $2)", fid, alert.id)
                known.add(fid)
                open_risks.add((hid, finding.risk))
                raised.setdefault(hid, []).append(alert.id)
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
    """Registry household events and funds medical-cost requests, per household; the rules run on each.

    ``apply`` stores the event's facts and evaluates its household at once (it is ``apply_batch`` of
    one event). ``apply_batch`` stores the facts of the whole batch in two statements, then evaluates
    each household of the batch once, over its facts after all of them, with the household's last
    event of the batch (a registry event or a medical-cost request) as the alerts' trigger (evidence
    and causation).

    Alerts are about a household's current facts, so the evaluation at the end of a batch is the one
    that matters: a finding that held only between two events of one batch (an income below the
    threshold corrected by the next assessment, a labourer removed and another one added, housing
    lost and secured again, a status in scope for a moment) raises no alert, where evaluating after
    every event would raise one about a state that is already gone (typically while catching up
    on months of history); and of two findings of one risk that follow each other in a batch, the
    later one (the current evidence) raises the alert, where evaluating after every event raises the
    earlier one and then skips the later one while that alert is open. A finding that holds at the
    end of a batch raises its alert as before, unless an alert of its risk is open or it was raised.
    """

    name = "risk-facts"
    topics = (HOUSEHOLD_TOPIC, DISBURSEMENT_TOPIC)
    strict = True

    def __init__(self, alerts: Alerts | None = None) -> None:
        self.alerts = alerts  # bound at start

    async def apply(self, conn: Any, message: Message) -> None:
        await self.apply_batch(conn, [message])

    async def apply_batch(self, conn: Any, messages: Sequence[Message]) -> None:
        assert self.alerts is not None, "RiskFacts is not bound"
        events: list[tuple[Any, ...]] = []
        medical: list[tuple[Any, ...]] = []
        triggers: dict[str, Message] = {}  # household -> its last event of the batch
        for m in messages:
            if m.stream_type == "household":
                events.append((m.stream_id, m.version, m.event_type, json.dumps(m.data, ensure_ascii=False)))
                household_id = m.stream_id
            elif m.event_type == "DisbursementRequested" and m.data.get("cost_basis") is not None:
                household_id = m.data["household_id"]
                medical.append((m.stream_id, household_id, m.global_position, json.dumps(
                    {**m.data, "disbursement_id": m.stream_id}, ensure_ascii=False)))
            else:
                continue
            triggers.pop(household_id, None)  # evaluated in the order of their last events
            triggers[household_id] = m
        if events:
            await conn.execute(
                "INSERT INTO mon_risk_events (household_id, version, event_type, data) SELECT h, v, t, d::jsonb"
                " FROM unnest($1::text[], $2::int[], $3::text[], $4::text[]) AS e(h, v, t, d) ON CONFLICT DO NOTHING",
                *unnest_columns(events))
        if medical:
            await conn.execute(
                "INSERT INTO mon_medical_requests (disbursement_id, household_id, position, data) SELECT i, h, p,"
                " d::jsonb FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[]) AS r(i, h, p, d)"
                " ON CONFLICT DO NOTHING", *unnest_columns(medical))
        if triggers:
            await self.alerts.evaluate_households(conn, {hid: (Metadata(
                actor="system:risk-rules", causation_id=m.event_id, correlation_id=m.metadata.get("correlation_id")),
                m.event_id) for hid, m in triggers.items()})

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
