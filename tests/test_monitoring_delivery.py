"""Alerts reach operators: a Server-Sent Events stream through the gateway (resumable) and
signed webhooks POSTed to a real HTTP receiver, verified there."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from eventkit.embedded import free_port
from eventkit.testing import wait_until
from eventkit.webhooks import verify

from .conftest import village_code
from .harness import running_platform, serve
from .registry_helpers import household, seed_village

API = "/api/v1"


def receiver() -> tuple[Starlette, list[tuple[dict, bytes]]]:
    received: list[tuple[dict, bytes]] = []

    async def hook(request: Request) -> Response:
        received.append((dict(request.headers), await request.body()))
        return Response(status_code=204)
    return Starlette(routes=[Route("/hook", hook, methods=["POST"])]), received


async def sse_events(client: httpx.AsyncClient, url: str, want: int, alert: dict, headers: dict | None = None,
                     params: dict | None = None) -> list[dict]:
    """Read an SSE stream (id, event, data) until `want` events of the alert whose id is (or will be)
    in ``alert["id"]``: the platform's monitoring also sees other tests' households, whose alerts
    are on the same stream."""
    events: list[dict] = []
    current: dict = {}

    def mine() -> list[dict]:
        return [e for e in events if json.loads(e["data"])["stream_id"] == alert.get("id")]
    async with client.stream("GET", url, headers=headers or {}, params=params, timeout=30) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        async for line in response.aiter_lines():
            if not line:
                if "data" in current:
                    events.append(current)
                    if len(mine()) >= want:
                        return mine()
                current = {}
            elif line.startswith(":"):
                continue
            else:
                field, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                current[field] = current.get(field, "") + value if field == "data" else value
    return mine()


async def test_alert_events_are_streamed_and_delivered_as_signed_webhooks(infra, databases, unique):
    app, received = receiver()
    port = free_port()
    async with serve(SimpleNamespace(app=app), port) as hook_base, \
            running_platform(infra, databases, unique("dlv"), services=("registry", "monitoring", "gateway"),
                             overdue_scan_interval=0) as p:
        v = village_code()
        async with p["registry"][1].pool.acquire() as conn:
            await seed_village(conn, v)
        async with httpx.AsyncClient(base_url=p["gateway"][0] + API, timeout=30,
                                     headers={"x-tpa-actor": "op-1"}) as client:
            r = await client.post("/webhooks", json={"url": f"{hook_base}/hook", "description": "county console"})
            assert r.status_code == 201, r.text
            subscription = r.json()
            secret = subscription["secret"]
            assert secret.startswith("whsec_")
            assert "secret" not in (await client.get("/webhooks")).json()["items"][0]

            hid = (await client.post("/households", json=household(v))).json()["household_id"]

            async def reported():
                r = await client.post(f"/households/{hid}/risk-reports", json={"kind": "disaster", "risk": "0203"})
                return r if r.status_code == 201 else None
            # Listen first (new events only), then make the rules raise an alert.
            ours: dict = {}
            stream = asyncio.create_task(sse_events(client, "/alerts/stream", 2, ours))
            await asyncio.sleep(0.5)
            r = await wait_until(reported, timeout=30, message="monitoring knowing the household")
            [alert_id] = r.json()["raised_alert_ids"]
            ours["id"] = alert_id
            assert (await client.post(f"/alerts/{alert_id}/acknowledgement", json={})).status_code == 200
            events = await asyncio.wait_for(stream, 30)
            assert [e["event"] for e in events] == ["ReturnRiskAlertRaised", "AlertAcknowledged"]
            first = json.loads(events[0]["data"])
            assert first["stream_id"] == alert_id and first["data"]["risk"] == "0203"
            # A client that reconnects with Last-Event-ID gets what followed, nothing twice.
            resumed = await sse_events(client, "/alerts/stream", 1, ours, headers={"Last-Event-ID": events[0]["id"]},
                                       params={"from_start": "true"})
            assert resumed[0]["id"] == events[1]["id"] and resumed[0]["event"] == "AlertAcknowledged"

            # Both events reach the receiver, signed; the receiver verifies each.
            def ours_received() -> list[tuple[dict, bytes]]:
                return [(h, b) for h, b in received if json.loads(b)["data"]["alert_id"] == alert_id]

            async def delivered() -> bool:
                return len(ours_received()) >= 2
            await wait_until(delivered, timeout=30, message="two webhook deliveries")
            types = []
            for headers, body in ours_received():
                message_id = verify(secret, body, headers)
                payload = json.loads(body)
                types.append(payload["type"])
                assert payload["data"]["alert_id"] == alert_id and message_id
            assert sorted(types) == ["AlertAcknowledged", "ReturnRiskAlertRaised"]
            ids = {h["webhook-id"] for h, _ in ours_received()}
            log = [d for d in (await client.get(f"/webhooks/{subscription['id']}/deliveries")).json()["items"]
                   if d["message_id"] in ids]
            assert len(log) == 2 and {d["status"] for d in log} == {"delivered"} and all(d["attempt_log"] for d in log)
            tampered = dict(received[0][0])
            try:
                verify(secret, received[0][1] + b" ", tampered)
                raise AssertionError("a changed body must not verify")
            except Exception as exc:  # WebhookVerificationError
                assert "signature" in str(exc).lower()
            assert (await client.delete(f"/webhooks/{subscription['id']}")).status_code == 204

