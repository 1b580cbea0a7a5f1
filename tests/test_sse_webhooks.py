"""Server-Sent Events and outgoing webhooks, against real HTTP servers on real ports."""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections import Counter
from contextlib import asynccontextmanager
from types import SimpleNamespace
from typing import Any, AsyncIterator

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from eventkit import sse
from eventkit import webhooks as wh
from eventkit.embedded import free_port
from eventkit.events import NewEvent
from eventkit.store import NO_STREAM, NOTIFY_CHANNEL, EventStore
from eventkit.testing import background, wait_until

from .harness import serve


# -- a spec-following event-stream parser (WHATWG HTML "Interpreting an event stream") ---------


def parse_stream(text: str) -> list[dict[str, Any]]:
    """Dispatched events ({event, data, id}), comments ({comment}) and retries ({retry})."""
    out: list[dict[str, Any]] = []
    state = _ParserState()
    for line in re.split(r"\r\n|\r|\n", text):
        out.extend(state.feed(line))
    return out


class _ParserState:
    def __init__(self) -> None:
        self.data: list[str] = []
        self.event = ""
        self.last_id = ""

    def feed(self, line: str) -> list[dict[str, Any]]:
        if line == "":
            if not self.data:
                self.event = ""
                return []
            item = {"event": self.event or "message", "data": "\n".join(self.data), "id": self.last_id}
            self.data, self.event = [], ""
            return [item]
        if line.startswith(":"):
            return [{"comment": line[1:].removeprefix(" ")}]
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "event":
            self.event = value
        elif name == "data":
            self.data.append(value)
        elif name == "id" and "\x00" not in value:
            self.last_id = value
        elif name == "retry" and value.isdigit():
            return [{"retry": int(value)}]
        return []


async def stream_items(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    state = _ParserState()
    async for line in response.aiter_lines():  # splits on CRLF, CR and LF, as the spec does
        for item in state.feed(line):
            yield item


async def take_events(items: AsyncIterator[dict[str, Any]], n: int, timeout: float = 5.0) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []

    async def collect() -> None:
        async for item in items:
            if "event" in item:
                got.append(item)
                if len(got) == n:
                    return

    await asyncio.wait_for(collect(), timeout)
    return got


@asynccontextmanager
async def served(app: Any) -> AsyncIterator[str]:
    async with serve(SimpleNamespace(app=app), free_port()) as url:
        yield url


# -- format_event ------------------------------------------------------------------------------


def test_format_event_splits_multiline_data_into_data_lines():
    raw = sse.format_event("first\nsecond\r\nthird\rfourth", event="note", id=7)
    assert raw == b"event: note\nid: 7\ndata: first\ndata: second\ndata: third\ndata: fourth\n\n"
    assert parse_stream(raw.decode()) == [{"event": "note", "data": "first\nsecond\nthird\nfourth", "id": "7"}]


def test_format_event_round_trips_awkward_text_and_json():
    for text in ["", " leading space", "trailing\n", "\n\nblank lines\n", "colon: inside", "data: fake field",
                 "说明 ✓", "id: 99\n\nevent: injected"]:
        parsed = parse_stream(sse.format_event(text).decode("utf-8"))
        assert parsed == [{"event": "message", "data": text.replace("\r\n", "\n"), "id": ""}], text
    payload = {"alert": "洪水", "lines": "a\nb", "n": 1}
    raw = sse.format_event(payload, event="AlertRaised", id="12", retry_ms=2500)
    assert raw.count(b"\ndata:") == 1  # compact JSON is one line: its newlines are escaped
    items = parse_stream(raw.decode("utf-8"))
    assert items[0] == {"retry": 2500}
    assert items[1]["event"] == "AlertRaised" and items[1]["id"] == "12"
    assert json.loads(items[1]["data"]) == payload
    assert "洪水".encode() in raw  # UTF-8, not \u escapes


@pytest.mark.parametrize("bad", ["a\nb", "a\rb", "a\r\nevent: x"])
def test_format_event_refuses_line_breaks_in_event_and_id(bad):
    with pytest.raises(ValueError):
        sse.format_event("x", event=bad)
    with pytest.raises(ValueError):
        sse.format_event("x", id=bad)


def test_format_event_refuses_nul_ids_and_bad_retry():
    with pytest.raises(ValueError):
        sse.format_event("x", id="1\x002")
    for retry in (-1, 1.5, True, "10"):
        with pytest.raises(ValueError):
            sse.format_event("x", retry_ms=retry)  # type: ignore[arg-type]


def test_comments_and_last_event_id_parsing():
    assert sse.format_comment("ping") == b": ping\n\n"
    assert parse_stream(sse.format_comment("two\nlines").decode()) == [{"comment": "two"}, {"comment": "lines"}]
    assert sse.parse_last_event_id(" 42 ") == 42
    for bad in (None, "", "-1", "abc", "4.2", "١٢"):
        assert sse.parse_last_event_id(bad) is None


# -- SSE over HTTP -------------------------------------------------------------------------------


async def append(store: EventStore, stream: str, *types: str) -> list[int]:
    version = await store.stream_version(stream)
    recorded = await store.append(stream, "alert", version or NO_STREAM,
                                  [NewEvent(t, {"n": i, "stream": stream}) for i, t in enumerate(types)])
    return [e.global_position for e in recorded]


async def test_sse_streams_store_events_in_order_live_and_resumes_without_duplicates(pool):
    store = EventStore(pool)
    notifier = sse.Notifier()
    source = sse.store_source(pool, event_types=["AlertRaised", "AlertResolved"])

    async def events(request: Request):
        # A long poll interval: events that arrive quickly were pushed by LISTEN/NOTIFY.
        return sse.sse_response(source, request=request, notifier=notifier, poll_interval=30.0, heartbeat_s=30.0)

    app = Starlette(routes=[Route("/events", events)])
    first = await append(store, "a-1", "AlertRaised", "Ignored", "AlertResolved")
    async with background(sse.listen_postgres(pool, NOTIFY_CHANNEL, notifier)), served(app) as url:
        async with httpx.AsyncClient(timeout=10.0) as client:
            async with client.stream("GET", f"{url}/events") as response:
                assert response.status_code == 200
                assert response.headers["content-type"].startswith("text/event-stream")
                assert response.headers["cache-control"] == "no-cache"
                assert response.headers["x-accel-buffering"] == "no"
                items = stream_items(response)
                assert await items.__anext__() == {"retry": 3000}
                backlog = await take_events(items, 2)
                assert [int(e["id"]) for e in backlog] == [first[0], first[2]]  # filtered, in order
                assert [e["event"] for e in backlog] == ["AlertRaised", "AlertResolved"]
                body = json.loads(backlog[0]["data"])
                assert body["data"] == {"n": 0, "stream": "a-1"} and body["stream_id"] == "a-1"
                assert body["type"] == "AlertRaised" and body["version"] == 1

                started = time.monotonic()
                live = await append(store, "a-2", "AlertRaised", "AlertRaised")
                got = await take_events(items, 2)
                assert [int(e["id"]) for e in got] == live
                assert time.monotonic() - started < 5.0  # woken by NOTIFY, not the 30 s poll
                last_seen = got[-1]["id"]
                await items.aclose()

            missed = await append(store, "a-3", "AlertResolved", "AlertRaised")
            async with client.stream("GET", f"{url}/events", headers={"Last-Event-ID": last_seen}) as response:
                items = stream_items(response)
                resumed = await take_events(items, 2)
                assert [int(e["id"]) for e in resumed] == missed
                more = await append(store, "a-4", "AlertRaised")
                assert [int(e["id"]) for e in await take_events(items, 1)] == more  # nothing repeated
                await items.aclose()

            # A Last-Event-ID that is not one of ours: the stream starts where a new client does.
            async with client.stream("GET", f"{url}/events", headers={"Last-Event-ID": "garbage"}) as response:
                items = stream_items(response)
                everything = await take_events(items, 7)
                assert [int(e["id"]) for e in everything] == sorted(int(e["id"]) for e in everything)
                assert int(everything[0]["id"]) == first[0]
                await items.aclose()
        notifier.close()


class MemorySource:
    """An in-memory source that records how it is called."""

    def __init__(self, count: int = 0) -> None:
        self.rows = [(i, "tick", {"i": i}) for i in range(1, count + 1)]
        self.calls: list[tuple[int, int]] = []

    async def __call__(self, after_id: int, limit: int) -> list[tuple[int, str, Any]]:
        self.calls.append((after_id, limit))
        return [r for r in self.rows if r[0] > after_id][:limit]


async def test_sse_sends_heartbeats_and_stops_polling_when_the_client_goes_away():
    source = MemorySource()
    app = FastAPI()

    @app.middleware("http")  # as ServiceRuntime's middlewares (BaseHTTPMiddleware) wrap every route
    async def correlation(request: Request, call_next):
        response = await call_next(request)
        response.headers["X-Correlation-Id"] = "c-1"
        return response

    @app.get("/events")
    async def events(request: Request):
        return sse.sse_response(source, request=request, heartbeat_s=0.2, poll_interval=0.05, retry_ms=None)

    async with served(app) as url:
        async with httpx.AsyncClient(timeout=10.0) as client:
            async with client.stream("GET", f"{url}/events") as response:
                assert response.headers["x-correlation-id"] == "c-1"
                items = stream_items(response)
                assert await items.__anext__() == {"comment": "connected"}
                started = time.monotonic()
                pings = [await asyncio.wait_for(items.__anext__(), 2.0) for _ in range(3)]
                assert pings == [{"comment": "ping"}] * 3
                assert time.monotonic() - started >= 0.4
                source.rows.append((1, "tick", {"i": 1}))
                [event] = await take_events(items, 1)
                assert event == {"event": "tick", "data": '{"i":1}', "id": "1"}
                await items.aclose()
        calls = len(source.calls)
        await asyncio.sleep(0.5)
        settled = len(source.calls)
        await asyncio.sleep(0.5)
        assert len(source.calls) == settled, "the stream kept polling after the client left"
        assert calls > 0


async def test_sse_backlog_is_fetched_in_bounded_batches_and_the_stream_can_be_time_limited():
    source = MemorySource(1000)

    async def events(request: Request):
        return sse.sse_response(source, request=request, batch_size=50, max_buffer_bytes=1024,
                                poll_interval=0.05, max_duration_s=1.0)

    app = Starlette(routes=[Route("/events", events)])
    async with served(app) as url:
        async with httpx.AsyncClient(timeout=10.0) as client:
            async with client.stream("GET", f"{url}/events", headers={"Last-Event-ID": "100"}) as response:
                got = [item async for item in stream_items(response) if "event" in item]  # ends by itself
    assert [int(e["id"]) for e in got] == list(range(101, 1001))
    assert {limit for _, limit in source.calls} == {50}
    assert source.calls[0][0] == 100


async def test_notifier_close_ends_open_streams():
    notifier = sse.Notifier()

    async def events(request: Request):
        return sse.sse_response(MemorySource(), request=request, notifier=notifier, poll_interval=30.0)

    app = Starlette(routes=[Route("/events", events)])
    async with served(app) as url:
        async with httpx.AsyncClient(timeout=10.0) as client:
            async with client.stream("GET", f"{url}/events") as response:
                items = stream_items(response)
                await items.__anext__()
                notifier.close()
                rest = await asyncio.wait_for(_drain(items), 5.0)
                assert rest == []


async def test_listen_postgres_reconnects_after_its_session_is_killed(pool):
    channel = f"tpa_test_{uuid.uuid4().hex[:8]}"
    notifier = sse.Notifier()
    connected = notifier.current()

    async def listener_pid() -> int | None:
        return await pool.fetchval("SELECT pid FROM pg_stat_activity WHERE query = $1", f'LISTEN "{channel}"')

    async with background(sse.listen_postgres(pool, channel, notifier, reconnect_delay=0.05)):
        await asyncio.wait_for(connected.wait(), 5.0)  # fires on connect: catch up
        woken = notifier.current()
        await pool.execute(f"NOTIFY {channel}")
        await asyncio.wait_for(woken.wait(), 5.0)

        first = await wait_until(listener_pid, timeout=5, message="listener session")
        await pool.execute("SELECT pg_terminate_backend($1)", first)
        await wait_until(lambda: _other_pid(listener_pid, first), timeout=5, message="a new listener session")
        await asyncio.sleep(0.1)
        woken = notifier.current()
        await pool.execute(f"NOTIFY {channel}")
        await asyncio.wait_for(woken.wait(), 5.0)


async def _other_pid(listener_pid: Any, old: int) -> bool:
    pid = await listener_pid()
    return pid is not None and pid != old


async def _drain(items: AsyncIterator[dict[str, Any]]) -> list[dict[str, Any]]:
    return [item async for item in items]


# -- webhook signatures --------------------------------------------------------------------------

VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TS = 1614265330
VECTOR_BODY = b'{"test": 2432232314}'


def test_sign_matches_the_standard_webhooks_test_vector():
    signature = wh.sign(VECTOR_SECRET, VECTOR_ID, VECTOR_TS, VECTOR_BODY)
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    assert wh.sign(wh.secret_key(VECTOR_SECRET), VECTOR_ID, VECTOR_TS, VECTOR_BODY) == signature


def test_verify_accepts_valid_and_rejects_forged_stale_or_future_requests():
    # Several signatures (a secret rotation): one valid v1 is enough.
    signature = "v1,bm90IGl0 " + wh.sign(VECTOR_SECRET, VECTOR_ID, VECTOR_TS, VECTOR_BODY)
    headers = {"Webhook-Id": VECTOR_ID, "Webhook-Timestamp": str(VECTOR_TS), "Webhook-Signature": signature}
    assert wh.verify(VECTOR_SECRET, VECTOR_BODY, headers, now=VECTOR_TS + 10) == VECTOR_ID
    cases = [
        (VECTOR_SECRET, VECTOR_BODY + b" ", headers, VECTOR_TS),  # tampered body
        (wh.generate_secret(), VECTOR_BODY, headers, VECTOR_TS),  # another secret
        (VECTOR_SECRET, VECTOR_BODY, headers, VECTOR_TS + 301),  # replayed too late
        (VECTOR_SECRET, VECTOR_BODY, headers, VECTOR_TS - 301),  # from the future
        (VECTOR_SECRET, VECTOR_BODY, {**headers, "Webhook-Id": "msg_other"}, VECTOR_TS),
        (VECTOR_SECRET, VECTOR_BODY, {**headers, "Webhook-Timestamp": str(VECTOR_TS + 1)}, VECTOR_TS),
        (VECTOR_SECRET, VECTOR_BODY, {k: v for k, v in headers.items() if k != "Webhook-Signature"}, VECTOR_TS),
        (VECTOR_SECRET, VECTOR_BODY, {**headers, "Webhook-Signature": signature.replace("v1,", "v2,")}, VECTOR_TS),
    ]
    for secret, body, hdrs, now in cases:
        with pytest.raises(wh.WebhookVerificationError):
            wh.verify(secret, body, hdrs, now=now)


def test_message_ids_with_dots_are_refused_and_secrets_validated():
    with pytest.raises(ValueError):
        wh.sign(VECTOR_SECRET, "a.b", VECTOR_TS, b"{}")
    with pytest.raises(ValueError):
        wh.secret_key("whsec_not base64!")
    secret = wh.generate_secret()
    assert secret.startswith("whsec_") and len(wh.secret_key(secret)) == 32


def test_retry_delays_grow_exponentially_with_jitter_cap_and_retry_after():
    d = wh.WebhookDispatcher(None, None, base_delay=1.0, multiplier=4.0, max_delay=3600, rng=lambda: 0.5)
    assert [d.retry_delay(n) for n in range(1, 8)] == [1, 4, 16, 64, 256, 1024, 3600]
    assert d.retry_delay(500) == 3600  # no overflow
    low = wh.WebhookDispatcher(None, None, base_delay=10.0, rng=lambda: 0.0).retry_delay(1)
    high = wh.WebhookDispatcher(None, None, base_delay=10.0, rng=lambda: 0.999999).retry_delay(1)
    assert low == 7.5 and 12.49 < high <= 12.5
    assert d.retry_delay(1, "120") == 120
    assert d.retry_delay(1, "999999") == 3600
    assert d.retry_delay(3, "garbage") == 16
    assert wh.parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0


# -- webhook deliveries against a real receiver ----------------------------------------------------


class Receiver:
    """A webhook endpoint on a real port: verifies each request, answers from a script."""

    def __init__(self) -> None:
        self.secrets: dict[str, str] = {}  # path -> shared secret
        self.script: dict[str, list[int]] = {}  # path -> statuses to answer first (then 200)
        self.delay = 0.0
        self.hold: asyncio.Event | None = None  # when set, answers wait for it
        self.requests: list[dict[str, Any]] = []  # verified requests
        self.rejected: list[str] = []
        self.url = ""
        self.app = Starlette(routes=[Route("/{name}", self.handle, methods=["POST"])])

    def endpoint(self, name: str) -> str:
        return f"{self.url}/{name}"

    async def handle(self, request: Request) -> PlainTextResponse:
        path = request.url.path
        body = await request.body()
        try:
            msg_id = wh.verify(self.secrets[path], body, request.headers)
        except (KeyError, wh.WebhookVerificationError) as exc:
            self.rejected.append(repr(exc))
            return PlainTextResponse("bad signature", status_code=401)
        statuses = self.script.get(path) or []
        status = statuses.pop(0) if statuses else 200
        self.requests.append({"path": path, "id": msg_id, "body": json.loads(body), "status": status,
                              "headers": dict(request.headers), "at": time.monotonic()})
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.hold is not None:
            await self.hold.wait()
        headers = {"Location": "/elsewhere"} if 300 <= status < 400 else None
        return PlainTextResponse("thanks" if status < 300 else "try later", status_code=status, headers=headers)

    def ids(self, path: str | None = None) -> list[str]:
        return [r["id"] for r in self.requests if path is None or r["path"] == path]


@pytest_asyncio.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    async with served(r.app) as url:
        r.url = url
        yield r


@pytest_asyncio.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


async def subscribe(pool: Any, receiver: Receiver, name: str, **kw: Any) -> wh.Subscription:
    sub = await wh.create_subscription(pool, receiver.endpoint(name), **kw)
    assert sub.secret is not None
    receiver.secrets[f"/{name}"] = sub.secret
    return sub


def fast(pool: Any, http: httpx.AsyncClient, **kw: Any) -> wh.WebhookDispatcher:
    options = dict(base_delay=0.05, multiplier=2.0, max_delay=0.5, timeout=5.0, rng=lambda: 0.5,
                   poll_interval=0.05, listen=False)
    options.update(kw)
    return wh.WebhookDispatcher(pool, http, **options)


async def enqueue(pool: Any, message_id: str, event_type: str, payload: Any) -> int:
    async with pool.acquire() as conn:
        async with conn.transaction():
            return await wh.enqueue(conn, message_id, event_type, payload)


async def deliveries(pool: Any, **kw: Any) -> list[wh.Delivery]:
    return await wh.list_deliveries(pool, **kw)


async def test_signed_delivery_is_verified_by_the_receiver(pool, receiver, http):
    alerts = await subscribe(pool, receiver, "alerts", event_types=["AlertRaised"], description="county desk")
    everything = await subscribe(pool, receiver, "all")
    await subscribe(pool, receiver, "other", event_types=["SomethingElse"])
    message = str(uuid.uuid4())
    assert await enqueue(pool, message, "AlertRaised", {"household": "h-1", "note": "说明"}) == 2
    dispatcher = fast(pool, http)
    assert await dispatcher.dispatch_once() == 2
    assert receiver.rejected == []
    assert sorted(r["path"] for r in receiver.requests) == ["/alerts", "/all"]
    request = receiver.requests[0]
    assert request["id"] == message
    assert request["headers"]["content-type"] == "application/json"
    assert abs(int(request["headers"]["webhook-timestamp"]) - time.time()) < 60
    assert request["headers"]["webhook-signature"].startswith("v1,")
    assert request["body"]["type"] == "AlertRaised"
    assert request["body"]["data"] == {"household": "h-1", "note": "说明"}
    assert request["body"]["timestamp"].endswith("Z")

    [delivery] = await deliveries(pool, subscription_id=alerts.id)
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("delivered", 1, 200)
    assert delivery.delivered_at is not None and delivery.message_id == message
    [attempt] = await wh.list_attempts(pool, delivery.id)
    assert (attempt.attempt, attempt.status_code, attempt.error) == (1, 200, None)
    assert dispatcher.stats.delivered == 2
    assert await dispatcher.dispatch_once() == 0

    listed = await wh.list_subscriptions(pool)
    assert [s.id for s in listed][:2] == [alerts.id, everything.id]
    assert all(s.secret is None for s in listed)  # secrets are shown once, at creation
    assert alerts.secret not in repr(alerts)


async def test_failed_attempts_are_retried_with_backoff_until_a_2xx(pool, receiver, http):
    await subscribe(pool, receiver, "flaky")
    receiver.script["/flaky"] = [500, 302, 503]  # a redirect is a failure, not followed
    await enqueue(pool, "m1", "AlertRaised", {"n": 1})
    dispatcher = fast(pool, http, listen=True)
    async with background(dispatcher.run()):
        await wait_until(lambda: _status(pool, "m1", "delivered"), timeout=10, message="delivery")
    assert [r["status"] for r in receiver.requests] == [500, 302, 503, 200]
    assert set(receiver.ids()) == {"m1"}  # the same webhook-id on every attempt
    gaps = [b["at"] - a["at"] for a, b in zip(receiver.requests, receiver.requests[1:])]
    assert gaps[0] >= 0.05 * 0.9 and gaps[1] >= 0.1 * 0.9 and gaps[2] >= 0.2 * 0.9  # 0.05 s, 0.1 s, 0.2 s
    [delivery] = await deliveries(pool)
    assert (delivery.status, delivery.attempts, delivery.last_status_code, delivery.last_error) == \
        ("delivered", 4, 200, None)
    attempts = await wh.list_attempts(pool, delivery.id)
    assert [(a.attempt, a.status_code) for a in attempts] == [(1, 500), (2, 302), (3, 503), (4, 200)]
    assert attempts[0].error == "HTTP 500: try later" and attempts[0].duration_ms >= 0


async def _status(pool: Any, message_id: str, status: str) -> bool:
    return bool(await pool.fetchval(
        "SELECT count(*) FROM webhook_deliveries WHERE message_id = $1 AND status = $2", message_id, status))


async def test_a_delivery_is_dead_after_max_attempts_and_can_be_redelivered(pool, receiver, http):
    await subscribe(pool, receiver, "down")
    receiver.script["/down"] = [500] * 3
    await enqueue(pool, "m-dead", "AlertRaised", {"n": 1})
    dispatcher = fast(pool, http, max_attempts=3)
    async with background(dispatcher.run()):
        await wait_until(lambda: _status(pool, "m-dead", "dead"), timeout=10, message="dead letter")
        await asyncio.sleep(0.3)  # nothing more is attempted
    assert [r["status"] for r in receiver.requests] == [500, 500, 500]
    [delivery] = await deliveries(pool, status="dead")
    assert delivery.attempts == 3 and delivery.last_status_code == 500 and delivery.next_attempt_at is None
    assert dispatcher.stats.dead == 1 and dispatcher.stats.failed == 2

    assert await wh.redeliver(pool, delivery.id)
    assert await fast(pool, http).dispatch_once() == 1
    assert (await wh.get_delivery(pool, delivery.id)).status == "delivered"
    assert len(await wh.list_attempts(pool, delivery.id)) == 4
    assert not await wh.redeliver(pool, delivery.id)  # delivered: nothing to do


async def test_network_errors_are_retried(pool, http):
    closed_port = free_port()
    sub = await wh.create_subscription(pool, f"http://127.0.0.1:{closed_port}/hook")
    await enqueue(pool, "m-net", "AlertRaised", {})
    assert await fast(pool, http).dispatch_once() == 1
    [delivery] = await deliveries(pool, subscription_id=sub.id)
    assert delivery.status == "failed" and delivery.last_status_code is None
    assert "ConnectError" in delivery.last_error and delivery.next_attempt_at is not None


async def test_410_gone_deactivates_the_subscription(pool, receiver, http):
    gone = await subscribe(pool, receiver, "gone")
    kept = await subscribe(pool, receiver, "kept")
    receiver.script["/gone"] = [410]
    await enqueue(pool, "g1", "AlertRaised", {"n": 1})
    await enqueue(pool, "g2", "AlertRaised", {"n": 2})
    dispatcher = fast(pool, http, batch_size=1)
    while await dispatcher.dispatch_once():
        pass
    assert receiver.ids("/gone") == ["g1"]  # g2 was never sent to it
    assert sorted(receiver.ids("/kept")) == ["g1", "g2"]
    sub = await wh.get_subscription(pool, gone.id)
    assert not sub.active and "410" in sub.disabled_reason
    statuses = {d.message_id: (d.status, d.last_error) for d in await deliveries(pool, subscription_id=gone.id)}
    assert statuses["g1"][0] == "dead" and statuses["g2"][0] == "dead"
    assert "deactivated" in statuses["g2"][1]
    assert dispatcher.stats.gone == 1
    assert await enqueue(pool, "g3", "AlertRaised", {}) == 1  # only the active subscription
    assert not await wh.redeliver(pool, (await deliveries(pool, subscription_id=gone.id))[0].id)

    assert await wh.activate_subscription(pool, gone.id)
    assert await wh.deactivate_subscription(pool, kept.id, "operator request")
    assert not await wh.deactivate_subscription(pool, kept.id)
    assert [s.id for s in await wh.list_subscriptions(pool, active=True)] == [gone.id]


async def test_enqueueing_a_message_twice_delivers_it_once(pool, receiver, http):
    await subscribe(pool, receiver, "once")
    assert await enqueue(pool, "dup", "AlertRaised", {"n": 1}) == 1
    assert await enqueue(pool, "dup", "AlertRaised", {"n": 1}) == 0
    dispatcher = fast(pool, http)
    while await dispatcher.dispatch_once():
        pass
    assert receiver.ids() == ["dup"]


async def test_an_enqueue_rolled_back_with_its_transaction_sends_nothing(pool, receiver, http):
    await subscribe(pool, receiver, "tx")
    with pytest.raises(RuntimeError):
        async with pool.acquire() as conn:
            async with conn.transaction():
                await wh.enqueue(conn, "rolled-back", "AlertRaised", {})
                raise RuntimeError("the command failed")
    assert await fast(pool, http).dispatch_once() == 0
    assert receiver.requests == []


async def test_concurrent_dispatchers_never_deliver_twice(pool, receiver, http):
    for name in ("r1", "r2"):
        await subscribe(pool, receiver, name)
    for i in range(30):
        await enqueue(pool, f"c{i}", "AlertRaised", {"i": i})
    receiver.delay = 0.02
    dispatchers = [fast(pool, http, batch_size=4) for _ in range(3)]
    while sum(await asyncio.gather(*(d.dispatch_once() for d in dispatchers))):
        pass
    pairs = Counter((r["path"], r["id"]) for r in receiver.requests)
    assert len(pairs) == 60 and set(pairs.values()) == {1}
    assert sum(d.stats.delivered for d in dispatchers) == 60
    assert sum(1 for d in dispatchers if d.stats.delivered) >= 2  # the work was actually shared

    # The background loops, with several replicas at once, woken by NOTIFY.
    receiver.requests.clear()
    loops = [fast(pool, http, listen=True, poll_interval=30.0, concurrency=3) for _ in range(2)]
    async with background(loops[0].run()), background(loops[1].run()):
        await asyncio.sleep(0.2)  # both are listening
        started = time.monotonic()
        for i in range(20):
            await enqueue(pool, f"l{i}", "AlertRaised", {"i": i})
        await wait_until(lambda: _count(pool, "delivered", 100), timeout=10, message="all delivered")
        assert time.monotonic() - started < 10
    pairs = Counter((r["path"], r["id"]) for r in receiver.requests)
    assert len(pairs) == 40 and set(pairs.values()) == {1}


async def _count(pool: Any, status: str, expected: int) -> bool:
    return await pool.fetchval("SELECT count(*) FROM webhook_deliveries WHERE status = $1", status) == expected


async def test_an_attempt_abandoned_mid_flight_is_retried_after_its_lease(pool, receiver, http):
    await subscribe(pool, receiver, "slow")
    await enqueue(pool, "lease", "AlertRaised", {})
    receiver.hold = hold = asyncio.Event()
    crashed = fast(pool, http, lease=0.5)
    task = asyncio.create_task(crashed.dispatch_once())
    await wait_until(lambda: _async(bool(receiver.requests)), timeout=5, message="first attempt")
    task.cancel()  # the dispatcher dies mid-request
    with pytest.raises(asyncio.CancelledError):
        await task
    receiver.hold = None
    hold.set()  # the abandoned request's handler may finish now (its client is gone)
    successor = fast(pool, http)
    assert await successor.dispatch_once() == 0  # still leased
    await asyncio.sleep(0.6)
    assert await successor.dispatch_once() == 1
    [delivery] = await deliveries(pool)
    assert delivery.status == "delivered" and delivery.attempts == 2
    assert receiver.ids() == ["lease", "lease"]  # at least once: the receiver de-duplicates on webhook-id


async def _async(value: Any) -> Any:
    return value


async def test_subscription_input_is_validated(pool):
    for url in ("ftp://example.org/x", "not a url", "http:///nohost", "https://example.org/#frag"):
        with pytest.raises(ValueError):
            await wh.create_subscription(pool, url)
    hook = "https://example.org/hook"
    with pytest.raises(ValueError):
        await wh.create_subscription(pool, "http://example.org/hook", require_https=True)
    with pytest.raises(ValueError):
        await wh.create_subscription(pool, hook, event_types=[])
    with pytest.raises(ValueError):
        await wh.create_subscription(pool, hook, event_types="AlertRaised")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        await wh.create_subscription(pool, hook, secret="whsec_c2hvcnQ=")  # 5 bytes
    sub = await wh.create_subscription(pool, hook, secret=VECTOR_SECRET, event_types=["A", "A", "B"])
    assert sub.secret == VECTOR_SECRET and sub.event_types == ["A", "B"]
    assert await pool.fetchval("SELECT secret FROM webhook_subscriptions WHERE id = $1", sub.id) == VECTOR_SECRET
    with pytest.raises(ValueError):
        await enqueue(pool, "has.dot", "A", {})
    assert await wh.purge(pool, 0) == 0
