"""Alerts reach operators: a Server-Sent Events stream through the gateway (resumable) and
signed webhooks POSTed to a real HTTP receiver, verified there; each only within the
jurisdiction of the operator (the subscription's creator)."""

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
from .harness import ActAs, running_platform, serve
from .registry_helpers import household, seed_village

API = "/api/v1"


def receiver(*paths: str) -> tuple[Starlette, list[tuple[dict, bytes]]]:
    """A webhook receiver at each of ``paths`` (default ``/hook``); what it got, with the path in the
    ``x-path`` of the headers."""
    received: list[tuple[dict, bytes]] = []

    async def hook(request: Request) -> Response:
        received.append(({**request.headers, "x-path": request.url.path}, await request.body()))
        return Response(status_code=204)
    return Starlette(routes=[Route(path, hook, methods=["POST"]) for path in paths or ("/hook",)]), received


async def sse_events(client: httpx.AsyncClient, url: str, want: int, alert: dict, headers: dict | None = None,
                     params: dict | None = None, everything: bool = False) -> list[dict]:
    """Read an SSE stream (id, event, data) until `want` events of the alert whose id is (or will be)
    in ``alert["id"]``: the platform's monitoring also sees other tests' households, whose alerts
    are on the same stream. Those events, or with ``everything`` all the events read."""
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
                        return events if everything else mine()
                current = {}
            elif line.startswith(":"):
                continue
            else:
                field, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                current[field] = current.get(field, "") + value if field == "data" else value
    return events if everything else mine()


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
                                     auth=ActAs(p, village=v)) as client:
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



async def test_alerts_reach_only_operators_and_webhooks_within_their_jurisdiction(infra, databases, unique):
    app, received = receiver("/hook-a", "/hook-b")
    async with serve(SimpleNamespace(app=app), free_port()) as hook_base, \
            running_platform(infra, databases, unique("jur"), services=("registry", "monitoring", "gateway"),
                             overdue_scan_interval=0) as p:
        v = village_code()
        w = v[:4] + ("10" if v[4:6] != "10" else "11") + v[6:]  # a village of another county
        async with p["registry"][1].pool.acquire() as conn:
            await seed_village(conn, v)
            await seed_village(conn, w)
        monitoring = p["monitoring"][1]
        async with httpx.AsyncClient(base_url=p["gateway"][0] + API, timeout=30, auth=ActAs(p, village=v)) as a, \
                httpx.AsyncClient(base_url=p["gateway"][0] + API, timeout=30, auth=ActAs(p, village=w)) as b:
            r = await a.get("/alerts/stream", auth=None)
            assert r.status_code == 401 and r.json()["code"] == "missing_token"

            # Each county's operator subscribes; a subscription belongs to its creator's county.
            sub_a = (await a.post("/webhooks", json={"url": f"{hook_base}/hook-a"})).json()
            sub_b = (await b.post("/webhooks", json={"url": f"{hook_base}/hook-b"})).json()
            assert sub_a["jurisdiction"] == v[:6] + "000000" and sub_b["jurisdiction"] == w[:6] + "000000"
            assert [s["id"] for s in (await a.get("/webhooks")).json()["items"]] == [sub_a["id"]]
            assert [s["id"] for s in (await b.get("/webhooks")).json()["items"]] == [sub_b["id"]]
            for r in (await b.delete(f"/webhooks/{sub_a['id']}"),
                      await b.get(f"/webhooks/{sub_a['id']}/deliveries")):
                assert r.status_code == 403 and r.json()["code"] == "outside_jurisdiction", r.text

            async def alert_in(client: httpx.AsyncClient, village: str) -> str:
                hid = (await client.post("/households", json=household(village))).json()["household_id"]

                async def reported():
                    r = await client.post(f"/households/{hid}/risk-reports", json={"kind": "disaster", "risk": "0203"})
                    return r if r.status_code == 201 else None
                r = await wait_until(reported, timeout=30, message="monitoring knowing the household")
                [alert_id] = r.json()["raised_alert_ids"]
                return alert_id

            # An alert here, acknowledged; then one in the other county; then ours is resolved.
            alert_a = await alert_in(a, v)
            assert (await a.post(f"/alerts/{alert_a}/acknowledgement", json={})).status_code == 200
            alert_b = await alert_in(b, w)
            r = await a.post(f"/alerts/{alert_a}/resolution", json={"resolution": "not_confirmed"})
            assert r.status_code == 200, r.text

            # The other county's operator: 403 on our alert, not in the list, not on the stream.
            r = await b.get(f"/alerts/{alert_a}")
            assert r.status_code == 403 and r.json()["code"] == "outside_jurisdiction"
            listed = (await b.get("/alerts", params={"limit": 1000})).json()["items"]
            assert alert_a not in {x["alert_id"] for x in listed}
            assert alert_b in {x["alert_id"] for x in (await b.get("/alerts", params={"region": w})).json()["items"]}
            # Streams follow the store's order: ours precede alert_b's raising, which follows them on
            # b's stream; a's stream reaches our resolution after alert_b was raised.
            seen_b = await sse_events(b, "/alerts/stream", 1, {"id": alert_b}, params={"from_start": "true"},
                                      everything=True)
            streams_b = {json.loads(e["data"])["stream_id"] for e in seen_b}
            assert alert_b in streams_b and alert_a not in streams_b
            seen_a = await sse_events(a, "/alerts/stream", 3, {"id": alert_a}, params={"from_start": "true"},
                                      everything=True)
            streams_a = {json.loads(e["data"])["stream_id"] for e in seen_a}
            assert alert_a in streams_a and alert_b not in streams_a
            assert [e["event"] for e in seen_a if json.loads(e["data"])["stream_id"] == alert_a] == [
                "ReturnRiskAlertRaised", "AlertAcknowledged", "AlertResolved"]

            # Webhooks: each subscription is sent its own county's alerts only (queued with the events).
            events_a = {str(e.event_id) for e in await monitoring.store.read_stream(alert_a)}
            events_b = {str(e.event_id) for e in await monitoring.store.read_stream(alert_b)}
            log_a = {d["message_id"] for d in (await a.get(f"/webhooks/{sub_a['id']}/deliveries")).json()["items"]}
            log_b = {d["message_id"] for d in (await b.get(f"/webhooks/{sub_b['id']}/deliveries")).json()["items"]}
            assert events_a <= log_a and not events_b & log_a
            assert events_b <= log_b and not events_a & log_b

            def at(path: str) -> set[str]:
                return {json.loads(body)["data"]["alert_id"] for h, body in received if h["x-path"] == path}

            async def delivered() -> bool:
                return len([1 for h, _ in received if h["webhook-id"] in events_a | events_b]) >= \
                    len(events_a) + len(events_b)
            await wait_until(delivered, timeout=30, message="the webhook deliveries")
            assert alert_a in at("/hook-a") and alert_b not in at("/hook-a")
            assert alert_b in at("/hook-b") and alert_a not in at("/hook-b")
            for h, body in received:
                verify(sub_a["secret"] if h["x-path"] == "/hook-a" else sub_b["secret"], body, h)

            assert (await a.delete(f"/webhooks/{sub_a['id']}")).status_code == 204
            assert [s["active"] for s in (await b.get("/webhooks")).json()["items"]] == [True]
