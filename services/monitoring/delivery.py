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
"""

from __future__ import annotations

import uuid
from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from contracts.monitoring import ALERT
from eventkit import sse, webhooks
from eventkit.errors import DomainError
from eventkit.runtime import Problem, required_actor, runtime_of

router = APIRouter(tags=["alerts"])
ALERT_EVENT_TYPES = ("ReturnRiskAlertRaised", "AlertAcknowledged", "AlertVerificationRequested", "AlertResolved",
                     "AlertEscalated")
ERRORS = {code: {"model": Problem} for code in (401, 404, 422)}


async def queue_alert_events(conn: Any, recorded: list) -> None:
    """Queue recorded alert events for every interested webhook subscription (caller's transaction)."""
    for e in recorded:
        if e.stream_type == ALERT:
            await webhooks.enqueue(conn, str(e.event_id), e.event_type, {**e.data, "version": e.version})


@router.get("/alerts/stream", summary="Alert events as Server-Sent Events (resumable with Last-Event-ID)",
            response_class=JSONResponse, responses={200: {"description": "text/event-stream of alert events",
                                                          "content": {"text/event-stream": {}}}})
async def alert_stream(request: Request, from_start: bool = Query(default=False, description=(
        "Send every alert event recorded so far first (default: only new ones)."))):
    runtime = runtime_of(request)
    head = 0 if from_start else await runtime.store.head_position()
    return sse.sse_response(sse.store_source(runtime.pool, stream_types=[ALERT]), request=request,
                            notifier=runtime.state.get("notifier"), start_after=head)


class Subscribe(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=8, max_length=2000, pattern=r"^https?://[^\s]+$")
    event_types: list[Literal[ALERT_EVENT_TYPES]] | None = Field(  # type: ignore[valid-type]
        default=None, min_length=1, description="Alert event types (default: all).")
    description: str = Field(default="", max_length=200)


def _subscription(s: webhooks.Subscription, secret: bool = False) -> dict[str, Any]:
    out = {"id": str(s.id), "url": s.url, "event_types": s.event_types, "description": s.description,
           "active": s.active, "disabled_reason": s.disabled_reason, "created_at": s.created_at.isoformat()}
    if secret:
        out["secret"] = s.secret
    return out


@router.post("/webhooks", status_code=201, responses=ERRORS,
             summary="Subscribe an endpoint to alert events (the signing secret is returned once)")
async def subscribe(body: Subscribe, request: Request):
    required_actor(request, "managing webhooks")
    unknown = sorted(set(body.event_types or ()) - set(ALERT_EVENT_TYPES))
    if unknown:
        raise DomainError("unknown_event_type", f"unknown event types {unknown}; expected some of "
                          f"{', '.join(ALERT_EVENT_TYPES)}", field="event_types")
    async with runtime_of(request).pool.acquire() as conn:
        try:
            s = await webhooks.create_subscription(conn, body.url, event_types=body.event_types or list(
                ALERT_EVENT_TYPES), description=body.description)
        except ValueError as exc:
            raise DomainError("invalid_subscription", str(exc), field="url") from None
    return JSONResponse(_subscription(s, secret=True), status_code=201, headers={"Location": f"/webhooks/{s.id}"})


@router.get("/webhooks", summary="Webhook subscriptions (without secrets)")
async def subscriptions(request: Request):
    async with runtime_of(request).pool.acquire() as conn:
        return {"items": [_subscription(s) for s in await webhooks.list_subscriptions(conn)]}


@router.delete("/webhooks/{subscription_id}", status_code=204, responses=ERRORS,
               summary="Deactivate a subscription (its undelivered messages are dropped)")
async def unsubscribe(subscription_id: uuid.UUID, request: Request):
    required_actor(request, "managing webhooks")
    async with runtime_of(request).pool.acquire() as conn:
        if not await webhooks.deactivate_subscription(conn, subscription_id, "deactivated by an operator"):
            raise DomainError("subscription_not_found", f"no subscription {subscription_id}", 404)
    return JSONResponse(None, status_code=204)


@router.get("/webhooks/{subscription_id}/deliveries", responses=ERRORS,
            summary="A subscription's deliveries with their attempts")
async def deliveries(subscription_id: uuid.UUID, request: Request,
                     status: str | None = Query(default=None, pattern="^(pending|failed|delivered|dead)$")):
    async with runtime_of(request).pool.acquire() as conn:
        if await webhooks.get_subscription(conn, subscription_id) is None:
            raise DomainError("subscription_not_found", f"no subscription {subscription_id}", 404)
        items = []
        for d in await webhooks.list_deliveries(conn, subscription_id=subscription_id, status=status):
            attempts = await webhooks.list_attempts(conn, d.id)
            items.append({**{k: (v.isoformat() if hasattr(v, "isoformat") else str(v) if isinstance(v, uuid.UUID)
                                 else v) for k, v in vars(d).items() if k != "payload"},
                          "attempt_log": [{k: (v.isoformat() if hasattr(v, "isoformat") else str(v)
                                            if isinstance(v, uuid.UUID) else v) for k, v in vars(a).items()}
                                       for a in attempts]})
    return {"items": items}
