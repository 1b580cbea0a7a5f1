"""Server-Sent Events (WHATWG HTML, "Server-sent events"): push a feed to browsers and operators.

The wire format (``text/event-stream``, always UTF-8) is line based: an event is a
block of ``field: value`` lines ended by a blank line. ``data`` may repeat (the
client joins the values with LF), ``event`` names the event type, ``id`` sets the
id the client sends back as ``Last-Event-ID`` when it reconnects, ``retry`` sets
its reconnection delay in milliseconds, and a line starting with ``:`` is a
comment that clients ignore (used here as a heartbeat).

The feed is pull based: a *source* is an async callable ``fetch(after_id, limit)``
returning up to ``limit`` rows ``(id, event_type, payload)`` with integer ids
greater than ``after_id``, in increasing order (a global position of the event
store is such an id: `store_source`). Every connection keeps its own cursor and
asks the source for the next batch only after the previous one was handed to the
server, so a connection never holds more than one batch (at most
``max_buffer_bytes`` per write); a slow reader is held back by the ASGI server's
flow control rather than buffered in memory. A reconnecting client resumes after
its ``Last-Event-ID`` without gaps or duplicates.

Connections poll the source every ``poll_interval`` seconds, or sooner when a
`Notifier` is notified: `listen_postgres` forwards PostgreSQL ``NOTIFY`` (the
event store notifies ``eventkit.store.NOTIFY_CHANNEL`` on every append) to one
notifier shared by all connections of the process.

Typical wiring (a FastAPI route of a service)::

    notifier = Notifier()          # one per process; listen_postgres(pool, NOTIFY_CHANNEL, notifier)
    source = store_source(pool, event_types=["AlertRaised", "AlertResolved"])

    @router.get("/alerts/stream")
    async def stream(request: Request):
        return sse_response(source, request=request, notifier=notifier)
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from typing import Any, AsyncIterator, Awaitable, Callable, Mapping, Sequence

from starlette.requests import Request
from starlette.responses import StreamingResponse

log = logging.getLogger("eventkit.sse")

MEDIA_TYPE = "text/event-stream"
HEARTBEAT = b": ping\n\n"

Row = tuple[int, "str | None", Any]
Fetch = Callable[[int, int], Awaitable[Sequence[Row]]]

_LINE_BREAK = re.compile(r"\r\n|\r|\n")


# -- the wire format -------------------------------------------------------------------------


def _single_line(field: str, value: str, *, nul: bool = False) -> str:
    if "\r" in value or "\n" in value:
        raise ValueError(f"SSE {field} must be a single line (no CR or LF): {value!r}")
    if nul and "\x00" in value:
        raise ValueError(f"SSE {field} must not contain NUL (clients ignore such an id): {value!r}")
    return value


def format_event(data: Any, *, event: str | None = None, id: str | int | None = None,
                 retry_ms: int | None = None) -> bytes:
    """One event in the ``text/event-stream`` format, blank line included, UTF-8 encoded.

    `data` is sent as is when it is a string (each of its lines, whatever the line
    break, becomes one ``data:`` line, so the client gets the same text back with
    LF line breaks); anything else is sent as compact JSON (one line). `event` and
    `id` must be single lines (and `id` free of NUL): a line break there would let
    the value inject fields or events, so it is refused with ValueError rather
    than altered. An empty `event` is left out (clients then use ``message``).
    """
    out: list[str] = []
    if event is not None and event != "":
        out.append(f"event: {_single_line('event', str(event))}")
    if id is not None:
        if isinstance(id, bool):
            raise TypeError("SSE id must be a string or an integer")
        out.append(f"id: {_single_line('id', str(id), nul=True)}")
    if retry_ms is not None:
        out.append(_retry_line(retry_ms))
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    for line in _LINE_BREAK.split(text):
        out.append(f"data: {line}" if line else "data:")
    return ("\n".join(out) + "\n\n").encode("utf-8")


def format_comment(text: str = "") -> bytes:
    """A comment block (ignored by clients; keeps idle connections and proxies alive)."""
    return ("".join(f": {line}\n" if line else ":\n" for line in _LINE_BREAK.split(text)) + "\n").encode("utf-8")


def format_retry(retry_ms: int) -> bytes:
    """A block that only sets the client's reconnection delay (no event is dispatched)."""
    return (_retry_line(retry_ms) + "\n\n").encode("ascii")


def _retry_line(retry_ms: int) -> str:
    if isinstance(retry_ms, bool) or not isinstance(retry_ms, int) or retry_ms < 0:
        raise ValueError(f"SSE retry must be a non-negative integer of milliseconds: {retry_ms!r}")
    return f"retry: {retry_ms}"


def parse_last_event_id(value: str | None) -> int | None:
    """The integer position in a ``Last-Event-ID`` header, or None when absent or not ours.

    Ids this module sends are non-negative integers; anything else (a stale id of
    another feed, garbage) is ignored and the stream starts where a new client starts.
    """
    if value is None:
        return None
    value = value.strip()
    if not value.isascii() or not value.isdigit():
        return None
    return int(value)


# -- waking connections up -------------------------------------------------------------------


class Notifier:
    """A broadcast wake-up signal for every connection of a process (no data, so no buffer).

    `notify` may be passed directly as an asyncpg listener callback. A connection
    takes `current()` *before* it fetches and waits on it after: a notification
    that arrives while it fetches is not lost. Use from the event loop's thread.
    """

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self.closed = False

    def current(self) -> asyncio.Event:
        return self._event

    def notify(self, *_: Any) -> None:
        event, self._event = self._event, asyncio.Event()
        event.set()

    def close(self) -> None:
        """End every stream that uses this notifier (at their next wake-up, i.e. now)."""
        self.closed = True
        self.notify()


async def listen_postgres(source: Any, channel: str, notifier: Notifier, *,
                          reconnect_delay: float = 1.0, max_reconnect_delay: float = 30.0,
                          keepalive: float = 30.0) -> None:
    """Forward PostgreSQL ``NOTIFY channel`` to `notifier`, until cancelled.

    `source` is an asyncpg pool (one connection is held for the listener) or a DSN
    (a dedicated connection). A lost connection is re-established with capped
    exponential back-off; on every (re)connect the notifier fires once, so that
    connections catch up with what was appended while nobody listened (they also
    keep polling, so a broken listener only delays them). Run it as a background
    task of the service (an ``extra_startup`` hook; cancel it on shutdown).
    """
    import asyncpg

    delay = reconnect_delay
    pooled = not isinstance(source, str)
    while True:
        conn: Any = None
        lost = asyncio.Event()

        def on_terminated(_conn: Any, lost: asyncio.Event = lost) -> None:
            lost.set()

        try:
            conn = await (source.acquire() if pooled else asyncpg.connect(source))
            conn.add_termination_listener(on_terminated)
            await conn.add_listener(channel, notifier.notify)
            notifier.notify()
            delay = reconnect_delay
            while not lost.is_set():
                try:
                    await asyncio.wait_for(lost.wait(), keepalive)
                except TimeoutError:
                    await asyncio.wait_for(conn.execute("SELECT 1"), keepalive)  # detects a dead peer
            log.warning("LISTEN %s: connection lost; reconnecting", channel)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.warning("LISTEN %s failed; retrying in %.1fs", channel, delay, exc_info=True)
        finally:
            if conn is not None:
                await _close_listener(conn, channel, notifier, on_terminated, source if pooled else None)
        await asyncio.sleep(delay)
        delay = min(delay * 2, max_reconnect_delay)


async def _close_listener(conn: Any, channel: str, notifier: Notifier, on_terminated: Any, pool: Any) -> None:
    try:
        if not _gone(conn):
            conn.remove_termination_listener(on_terminated)
            await asyncio.wait_for(conn.remove_listener(channel, notifier.notify), 5.0)
    except BaseException as exc:  # a broken session: dropping it releases everything server side
        _terminate(conn)
        if not isinstance(exc, Exception):
            raise
    finally:
        if pool is not None:
            await pool.release(conn)  # a no-op for a connection the pool already took back
        elif not _gone(conn):
            await conn.close()


def _gone(conn: Any) -> bool:
    """Closed, or (a pool's connection) already taken back by the pool when the server ended it."""
    import asyncpg

    try:
        return conn.is_closed()
    except asyncpg.InterfaceError:
        return True


def _terminate(conn: Any) -> None:
    import asyncpg

    try:
        conn.terminate()
    except asyncpg.InterfaceError:
        pass


# -- the stream ------------------------------------------------------------------------------


class EventStream:
    """The body of one SSE connection: an async iterator of ``text/event-stream`` chunks.

    Yields the events after `after_id` in id order, each with its id (so the client
    can resume), then follows the source: it fetches again when `notifier` fires or
    after `poll_interval` seconds, and writes a ``: ping`` comment when nothing was
    written for `heartbeat_s` seconds (proxies close idle connections, and a write
    is how a vanished client is noticed). It ends when the client disconnects
    (`request.is_disconnected()`), after `max_duration_s` (the client reconnects
    with ``Last-Event-ID``; this spreads long-lived connections over replicas),
    when `notifier` is closed, or when the source fails (logged; the client
    reconnects after `retry_ms`).

    An open stream is a request in progress: an ASGI server's graceful shutdown
    waits for it. Bound that wait (uvicorn ``timeout_graceful_shutdown``) or the
    stream's life (`max_duration_s`).

    At most `batch_size` rows are fetched at a time and the next batch is fetched
    only after the previous one was written, in writes of at most about
    `max_buffer_bytes`: memory per connection is bounded whatever the backlog.
    """

    def __init__(
        self,
        fetch: Fetch,
        *,
        after_id: int = 0,
        request: Request | None = None,
        notifier: Notifier | None = None,
        poll_interval: float = 2.0,
        heartbeat_s: float = 15.0,
        batch_size: int = 100,
        max_buffer_bytes: int = 64 * 1024,
        retry_ms: int | None = None,
        max_duration_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if heartbeat_s <= 0 or poll_interval <= 0:
            raise ValueError("heartbeat_s and poll_interval must be positive")
        if retry_ms is not None:
            _retry_line(retry_ms)
        self.fetch = fetch
        self.last_id = int(after_id)
        self.request = request
        self.notifier = notifier
        self.poll_interval = poll_interval
        self.heartbeat_s = heartbeat_s
        self.batch_size = batch_size
        self.max_buffer_bytes = max_buffer_bytes
        self.retry_ms = retry_ms
        self.max_duration_s = max_duration_s
        self.clock = clock
        self.sent = 0  # events written so far

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._run()

    async def _disconnected(self) -> bool:
        return self.request is not None and await self.request.is_disconnected()

    async def _run(self) -> AsyncIterator[bytes]:
        started = self.clock()
        deadline = started + self.max_duration_s if self.max_duration_s is not None else None
        # The first bytes: the reconnection delay (or a comment), so that clients and proxies
        # see a live stream at once.
        yield format_retry(self.retry_ms) if self.retry_ms is not None else format_comment("connected")
        last_write = self.clock()
        try:
            while True:
                if await self._disconnected() or (self.notifier is not None and self.notifier.closed):
                    return
                wake = self.notifier.current() if self.notifier is not None else None
                try:
                    rows = await self.fetch(self.last_id, self.batch_size)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.warning("SSE source failed after id %d; closing the stream", self.last_id,
                                exc_info=True)
                    return
                before = self.last_id
                chunk = bytearray()
                for event_id, event_type, payload in rows:
                    if isinstance(event_id, bool) or not isinstance(event_id, int):
                        raise TypeError(f"SSE source ids must be integers, got {event_id!r}")
                    if event_id <= self.last_id:
                        continue  # never send an id twice or go backwards
                    chunk += format_event(payload, event=event_type, id=event_id)
                    self.last_id = event_id
                    self.sent += 1
                    if len(chunk) >= self.max_buffer_bytes:
                        yield bytes(chunk)
                        chunk.clear()
                        last_write = self.clock()
                if chunk:
                    yield bytes(chunk)
                    last_write = self.clock()
                now = self.clock()
                if deadline is not None and now >= deadline:
                    return
                if len(rows) >= self.batch_size and self.last_id > before:
                    continue  # a backlog: fetch on without waiting
                wait = min(self.poll_interval, last_write + self.heartbeat_s - now)
                if deadline is not None:
                    wait = min(wait, deadline - now)
                if wait > 0:
                    if wake is not None:
                        try:
                            await asyncio.wait_for(wake.wait(), wait)
                        except TimeoutError:
                            pass
                    else:
                        await asyncio.sleep(wait)
                if self.notifier is not None and self.notifier.closed:
                    return
                if self.clock() - last_write >= self.heartbeat_s:
                    yield HEARTBEAT
                    last_write = self.clock()
        finally:
            log.debug("SSE stream closed after id %d (%d events sent)", self.last_id, self.sent)


_FROM_HEADER: Any = object()


def sse_response(
    source: Fetch,
    *,
    request: Request | None = None,
    last_event_id: int | None = _FROM_HEADER,
    start_after: int = 0,
    notifier: Notifier | None = None,
    heartbeat_s: float = 15.0,
    poll_interval: float = 2.0,
    batch_size: int = 100,
    retry_ms: int | None = 3000,
    max_buffer_bytes: int = 64 * 1024,
    max_duration_s: float | None = None,
    headers: Mapping[str, str] | None = None,
) -> StreamingResponse:
    """A ``text/event-stream`` response following `source` (see `EventStream`).

    The stream starts after `last_event_id`; by default that is the request's
    ``Last-Event-ID`` header (sent by a reconnecting client), or `start_after` for a
    new client (0: everything the source holds; pass the current head to send only
    what happens from now on). `request` is needed to notice disconnected clients.
    """
    if last_event_id is _FROM_HEADER:
        last_event_id = parse_last_event_id(request.headers.get("last-event-id")) if request is not None else None
    after = start_after if last_event_id is None else int(last_event_id)
    stream = EventStream(source, after_id=after, request=request, notifier=notifier,
                         poll_interval=poll_interval, heartbeat_s=heartbeat_s, batch_size=batch_size,
                         max_buffer_bytes=max_buffer_bytes, retry_ms=retry_ms, max_duration_s=max_duration_s)
    all_headers = {
        "Cache-Control": "no-cache",
        "X-Accel-Buffering": "no",  # nginx: do not buffer the stream
    }
    all_headers.update(headers or {})
    return StreamingResponse(stream, media_type=MEDIA_TYPE, headers=all_headers)


# -- a source over the event store -----------------------------------------------------------


def store_source(pool: Any, *, event_types: Sequence[str] | None = None,
                 stream_types: Sequence[str] | None = None) -> Fetch:
    """A source over a service's event store: ids are global positions, the SSE event name
    is the event type and the payload the event with its identity (``event_id``,
    ``stream_id``, ``stream_type``, ``version``, ``data``, ``occurred_at``,
    ``recorded_at``). Optionally only some event or stream types. The store makes
    positions visible strictly in order, so resuming after a position never skips one.
    """
    types = list(event_types) if event_types is not None else None
    streams = list(stream_types) if stream_types is not None else None

    async def fetch(after_id: int, limit: int) -> list[Row]:
        rows = await pool.fetch(
            "SELECT global_position, event_id, stream_id, stream_type, version, event_type, data,"
            "       occurred_at, recorded_at"
            " FROM events WHERE global_position > $1"
            "   AND ($3::text[] IS NULL OR event_type = ANY($3::text[]))"
            "   AND ($4::text[] IS NULL OR stream_type = ANY($4::text[]))"
            " ORDER BY global_position LIMIT $2",
            after_id, limit, types, streams)
        out: list[Row] = []
        for r in rows:
            data = r["data"]
            out.append((r["global_position"], r["event_type"], {
                "event_id": str(r["event_id"]),
                "stream_id": r["stream_id"],
                "stream_type": r["stream_type"],
                "version": r["version"],
                "type": r["event_type"],
                "data": json.loads(data) if isinstance(data, str) else data,
                "occurred_at": r["occurred_at"].isoformat() if r["occurred_at"] else None,
                "recorded_at": r["recorded_at"].isoformat(),
            }))
        return out

    return fetch
