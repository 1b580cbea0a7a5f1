"""Delivery of alerts to operators: a Server-Sent Events stream and signed webhooks.

* ``GET /alerts/stream``: every alert event (raised, acknowledged, verification
  requested, resolved, escalated) as it is recorded, as ``text/event-stream``; the
  event id is the event's position in the monitoring event store, so a client that
  reconnects with ``Last-Event-ID`` resumes without loss or duplicate. New clients
  get the events from now on (``?from_start=true`` for all).
* ``/webhooks``: subscriptions of operators' systems. Each alert event is queued in
  the transaction that records it and POSTed by the dispatcher, signed per the
  Standard Webhooks specification (``webhook-id``, ``webhook-timestamp``,
  ``webhook-signature``), retried with backoff, every attempt logged
  (``eventkit/webhooks.py``). The secret is returned once, when subscribing.

Jurisdiction: an alert belongs to its household's village (``mon_alerts``).

* The stream carries only the events of alerts whose village the caller's jurisdiction
  covers (the filter is in the query, so a backlog of other regions' alerts never
  holds the stream up; ids stay the store's global positions, with gaps).
* A subscription belongs to the jurisdiction of the principal who created it
  (``mon_webhook_owners``) and is sent only the alerts of villages within it, whoever
  acts on the alert. ``GET /webhooks`` lists the subscriptions whose owning
  jurisdiction the caller covers (a county sees those of its townships, not of its
  city); ``DELETE`` and the delivery log of another jurisdiction's subscription are 403
  ``outside_jurisdiction``. A subscription with no owner (created before owners were
  recorded) is sent nothing and is visible to province-level callers only.
"""

from __future__ import annotations

import json
import uuid
from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from contracts.monitoring import ALERT
from eventkit import sse, webhooks
from eventkit.errors import DomainError
from eventkit.principal import Principal, jurisdiction_prefix
from eventkit.runtime import (
    Problem,
    current_principal,
    jurisdiction_prefix_of,
    require_covers,
    runtime_of,
)

router = APIRouter(tags=["alerts"])
ALERT_EVENT_TYPES = ("ReturnRiskAlertRaised", "AlertAcknowledged", "AlertVerificationRequested", "AlertResolved",
                     "AlertEscalated")
ERRORS = {code: {"model": Problem} for code in (401, 403, 404, 422)}


async def queue_alert_events(conn: Any, recorded: list) -> None:
    """Queue recorded alert events for every interested webhook subscription whose owning
    jurisdiction covers the alert's village (caller's transaction; ``Alerts.save`` has
    written the alert's ``mon_alerts`` row before)."""
    villages: dict[str, str | None] = {}
    for e in recorded:
        if e.stream_type != ALERT:
            continue
        if e.stream_id not in villages:
            villages[e.stream_id] = e.data.get("village_code") or await conn.fetchval(
                "SELECT village_code FROM mon_alerts WHERE alert_id = $1", e.stream_id)
        await enqueue_within(conn, str(e.event_id), e.event_type, {**e.data, "version": e.version},
                             villages[e.stream_id])


async def enqueue_within(conn: Any, message_id: str, event_type: str, payload: Any, village_code: str | None) -> int:
    """``eventkit.webhooks.enqueue`` restricted to the subscriptions whose owner covers ``village_code``
    (None: to none); the number of deliveries added."""
    if village_code is None:
        return 0
    owned = await conn.fetch("SELECT subscription_id FROM mon_webhook_owners WHERE $1 LIKE region_prefix || '%'",
                             village_code)
    return await webhooks.enqueue(conn, message_id, event_type, payload,
                                  subscription_ids=[r["subscription_id"] for r in owned])


def alert_source(pool: Any, prefix: str) -> sse.Fetch:
    """``eventkit.sse.store_source`` over alert events, only of alerts whose village code starts
    with ``prefix`` (the same rows and payloads)."""

    async def fetch(after_id: int, limit: int) -> list[sse.Row]:
        rows = await pool.fetch(
            "SELECT e.global_position, e.event_id, e.stream_id, e.stream_type, e.version, e.event_type, e.data,"
            "       e.occurred_at, e.recorded_at"
            " FROM events e JOIN mon_alerts a ON a.alert_id = e.stream_id"
            " WHERE e.stream_type = $3 AND e.global_position > $1 AND a.village_code LIKE $4"
            " ORDER BY e.global_position LIMIT $2", after_id, limit, ALERT, prefix + "%")
        return [(r["global_position"], r["event_type"], {
            "event_id": str(r["event_id"]), "stream_id": r["stream_id"], "stream_type": r["stream_type"],
            "version": r["version"], "type": r["event_type"],
            "data": json.loads(r["data"]) if isinstance(r["data"], str) else r["data"],
            "occurred_at": r["occurred_at"].isoformat() if r["occurred_at"] else None,
            "recorded_at": r["recorded_at"].isoformat()}) for r in rows]

    return fetch


@router.get("/alerts/stream", summary="Alert events as Server-Sent Events (resumable with Last-Event-ID)",
            response_class=JSONResponse, responses={200: {"description": "text/event-stream of alert events",
                                                          "content": {"text/event-stream": {}}}})
async def alert_stream(request: Request, from_start: bool = Query(default=False, description=(
        "Send every alert event recorded so far first (default: only new ones)."))):
    runtime = runtime_of(request)
    prefix = jurisdiction_prefix_of(request)  # 401 before the stream starts
    head = 0 if from_start else await runtime.store.head_position()
    return sse.sse_response(alert_source(runtime.pool, prefix), request=request,
                            notifier=runtime.state.get("notifier"), start_after=head)


class Subscribe(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=8, max_length=2000, pattern=r"^https?://[^\s]+$")
    event_types: list[Literal[ALERT_EVENT_TYPES]] | None = Field(  # type: ignore[valid-type]
        default=None, min_length=1, description="Alert event types (default: all).")
    description: str = Field(default="", max_length=200)


def _subscription(s: webhooks.Subscription, jurisdiction: str | None, secret: bool = False) -> dict[str, Any]:
    out = {"id": str(s.id), "url": s.url, "event_types": s.event_types, "description": s.description,
           "jurisdiction": jurisdiction, "active": s.active, "disabled_reason": s.disabled_reason,
           "created_at": s.created_at.isoformat()}
    if secret:
        out["secret"] = s.secret
    return out


def _covers_owner(principal: Principal, jurisdiction: str | None) -> bool:
    """Whether the caller covers a subscription's owning jurisdiction (none: province callers only)."""
    return principal.level == "province" if jurisdiction is None else principal.covers(jurisdiction)


async def _owned_subscription(request: Request, conn: Any, subscription_id: uuid.UUID) -> webhooks.Subscription:
    """The subscription (404), if the caller covers its owning jurisdiction (403)."""
    s = await webhooks.get_subscription(conn, subscription_id)
    if s is None:
        raise DomainError("subscription_not_found", f"no subscription {subscription_id}", 404)
    owner = await conn.fetchval("SELECT jurisdiction FROM mon_webhook_owners WHERE subscription_id = $1",
                                subscription_id)
    require_covers(request, owner, f"subscription {subscription_id}")
    return s


@router.post("/webhooks", status_code=201, responses=ERRORS,
             summary="Subscribe an endpoint to alert events (the signing secret is returned once)")
async def subscribe(body: Subscribe, request: Request):
    principal = current_principal(request, "managing webhooks")
    unknown = sorted(set(body.event_types or ()) - set(ALERT_EVENT_TYPES))
    if unknown:
        raise DomainError("unknown_event_type", f"unknown event types {unknown}; expected some of "
                          f"{', '.join(ALERT_EVENT_TYPES)}", field="event_types")
    async with runtime_of(request).pool.acquire() as conn, conn.transaction():
        try:
            s = await webhooks.create_subscription(conn, body.url, event_types=body.event_types or list(
                ALERT_EVENT_TYPES), description=body.description)
        except ValueError as exc:
            raise DomainError("invalid_subscription", str(exc), field="url") from None
        await conn.execute("INSERT INTO mon_webhook_owners (subscription_id, jurisdiction, region_prefix, created_by)"
                           " VALUES ($1, $2, $3, $4)", s.id, principal.jurisdiction,
                           jurisdiction_prefix(principal.jurisdiction), principal.subject)
    return JSONResponse(_subscription(s, principal.jurisdiction, secret=True), status_code=201,
                        headers={"Location": f"/webhooks/{s.id}"})


@router.get("/webhooks", responses=ERRORS,
            summary="Webhook subscriptions within the caller's jurisdiction (without secrets)")
async def subscriptions(request: Request):
    principal = current_principal(request, "managing webhooks")
    async with runtime_of(request).pool.acquire() as conn:
        owners = {r["subscription_id"]: r["jurisdiction"] for r in await conn.fetch(
            "SELECT subscription_id, jurisdiction FROM mon_webhook_owners")}
        return {"items": [_subscription(s, owners.get(s.id)) for s in await webhooks.list_subscriptions(conn)
                          if _covers_owner(principal, owners.get(s.id))]}


@router.delete("/webhooks/{subscription_id}", status_code=204, responses=ERRORS,
               summary="Deactivate a subscription (its undelivered messages are dropped)")
async def unsubscribe(subscription_id: uuid.UUID, request: Request):
    principal = current_principal(request, "managing webhooks")
    async with runtime_of(request).pool.acquire() as conn:
        await _owned_subscription(request, conn, subscription_id)
        if not await webhooks.deactivate_subscription(conn, subscription_id,
                                                      f"deactivated by {principal.subject}"):
            raise DomainError("subscription_not_found", f"no active subscription {subscription_id}", 404)
    return JSONResponse(None, status_code=204)


@router.get("/webhooks/{subscription_id}/deliveries", responses=ERRORS,
            summary="A subscription's deliveries with their attempts")
async def deliveries(subscription_id: uuid.UUID, request: Request,
                     status: str | None = Query(default=None, pattern="^(pending|failed|delivered|dead)$")):
    async with runtime_of(request).pool.acquire() as conn:
        await _owned_subscription(request, conn, subscription_id)
        items = []
        for d in await webhooks.list_deliveries(conn, subscription_id=subscription_id, status=status):
            attempts = await webhooks.list_attempts(conn, d.id)
            items.append({**{k: (v.isoformat() if hasattr(v, "isoformat") else str(v) if isinstance(v, uuid.UUID)
                                 else v) for k, v in vars(d).items() if k != "payload"},
                          "attempt_log": [{k: (v.isoformat() if hasattr(v, "isoformat") else str(v)
                                            if isinstance(v, uuid.UUID) else v) for k, v in vars(a).items()}
                                       for a in attempts]})
    return {"items": items}
