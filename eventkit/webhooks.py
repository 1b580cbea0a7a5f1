"""Outgoing webhooks, signed and delivered per Standard Webhooks 1.0.

Receivers register *subscriptions* (an endpoint URL, the event types it wants,
and a shared secret). A service calls `enqueue` inside the transaction that
records what happened: one *delivery* row per active subscription interested in
the event type, at most one per (subscription, message id), so enqueueing the
same message twice (a redelivered Kafka message, a retried command) sends it once.
A `WebhookDispatcher` (a background task of the service; as many replicas as
wanted) claims due deliveries with ``FOR UPDATE SKIP LOCKED`` and POSTs them.

The request (Standard Webhooks)::

    POST <url>
    content-type: application/json
    webhook-id: <message id: the same for every attempt; receivers de-duplicate on it>
    webhook-timestamp: <Unix seconds of this attempt>
    webhook-signature: v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>

    {"type": "<event type>", "timestamp": "<when it happened, RFC 3339 UTC>", "data": <payload>}

Secrets are *shared* secrets: the sender and the receiver hold the same value,
``whsec_`` + base64 of 24 to 64 random bytes (the HMAC key is the decoded bytes).
They are stored as given in ``webhook_subscriptions.secret``; treat that column
(and backups of it) as credentials, and show a secret only once, when created.
Receivers check requests with `verify` (constant-time comparison, timestamp
within a tolerance against replays); the reference Standard Webhooks libraries
accept the same secrets and signatures.

Outcomes: a 2xx answer is a delivery. 410 Gone disables the subscription (the
receiver asked to stop) and ends its outstanding deliveries. Anything else (3xx:
redirects are not followed; 4xx; 5xx; timeouts; network errors) is retried with
exponential back-off and jitter, honouring ``Retry-After``, until
``max_attempts``, then the delivery is ``dead`` (it can be sent again with
`redeliver`). Every attempt is logged in ``webhook_attempts``. Delivery is at
least once: a dispatcher that dies mid-attempt leaves a lease that expires, and
the attempt is made again. There is no ordering guarantee between messages.

Endpoint URLs are fetched by the service: accept them only from trusted operators,
or route the dispatcher's HTTP client through an egress proxy that refuses
internal addresses (server-side request forgery).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import logging
import random
import secrets as _secrets
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any, AsyncIterator, Callable, Iterable, Mapping, Sequence
from urllib.parse import urlsplit

from opentelemetry import trace
from opentelemetry.trace import SpanKind

from .sse import Notifier, listen_postgres

log = logging.getLogger("eventkit.webhooks")
tracer = trace.get_tracer("eventkit.webhooks")

WEBHOOK_CHANNEL = "tpa_webhooks"  # NOTIFYed when deliveries are enqueued
SECRET_PREFIX = "whsec_"
MIN_SECRET_BYTES = 24
MAX_SECRET_BYTES = 64
DEFAULT_TOLERANCE_S = 300  # Standard Webhooks libraries use five minutes
USER_AGENT = "tpa-eventkit-webhooks/1"
STATUSES = ("pending", "failed", "delivered", "dead")


class WebhookVerificationError(Exception):
    """A request that does not carry a valid, fresh Standard Webhooks signature."""


# -- signatures ------------------------------------------------------------------------------


def generate_secret(nbytes: int = 32) -> str:
    """A new random shared secret in the Standard Webhooks form ``whsec_<base64>``."""
    if not MIN_SECRET_BYTES <= nbytes <= MAX_SECRET_BYTES:
        raise ValueError(f"a secret has {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} bytes")
    return SECRET_PREFIX + base64.b64encode(_secrets.token_bytes(nbytes)).decode("ascii")


def secret_key(secret: str | bytes) -> bytes:
    """The HMAC key of a secret: raw bytes as they are; text is ``[whsec_]<base64>``, decoded."""
    if isinstance(secret, (bytes, bytearray)):
        if not secret:
            raise ValueError("empty webhook secret")
        return bytes(secret)
    try:
        key = base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("a webhook secret is 'whsec_' followed by base64") from None
    if not key:
        raise ValueError("empty webhook secret")
    return key


def _check_msg_id(msg_id: str) -> str:
    # The id is part of the signed "{id}.{timestamp}.{body}": a '.' would make the split ambiguous,
    # and it travels in a header, so it must be visible ASCII.
    if not msg_id or len(msg_id) > 255 or "." in msg_id or not msg_id.isascii() or not msg_id.isprintable() \
            or " " in msg_id:
        raise ValueError(f"invalid webhook message id {msg_id!r}: 1-255 visible ASCII characters, no '.'")
    return msg_id


def _signature(key: bytes, msg_id: str, timestamp: str, body: bytes) -> str:
    digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


def sign(secret: str | bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value (``v1,<base64>``) of one request."""
    if isinstance(timestamp, bool) or not isinstance(timestamp, int) or timestamp < 0:
        raise ValueError("the timestamp is a non-negative integer of Unix seconds")
    return "v1," + _signature(secret_key(secret), _check_msg_id(str(msg_id)), str(timestamp), body)


def verify(secret: str | bytes, body: bytes, headers: Mapping[str, str], *,
           tolerance: float = DEFAULT_TOLERANCE_S, now: float | None = None) -> str:
    """Check a received webhook; return its ``webhook-id`` or raise WebhookVerificationError.

    `body` is the raw request body (verify before parsing: re-serialised JSON does
    not match). `headers` is any mapping of header names (any case) to values. The
    timestamp must be within `tolerance` seconds of `now` (either way), and one of
    the space-separated ``v1`` signatures must match. Use the returned id to ignore
    a message already processed (retries and replays carry the same id).
    """
    lower = {str(k).lower(): v for k, v in headers.items()}
    msg_id, stamp, signatures = (lower.get("webhook-id"), lower.get("webhook-timestamp"),
                                 lower.get("webhook-signature"))
    if not msg_id or not stamp or not signatures:
        raise WebhookVerificationError("missing webhook-id, webhook-timestamp or webhook-signature header")
    try:
        _check_msg_id(msg_id)
    except ValueError as exc:
        raise WebhookVerificationError(str(exc)) from None
    stamp = stamp.strip()
    if not (stamp.isascii() and stamp.isdigit()):
        raise WebhookVerificationError("webhook-timestamp is not an integer")
    current = time.time() if now is None else now
    if current - int(stamp) > tolerance:
        raise WebhookVerificationError("webhook-timestamp is too old")
    if int(stamp) - current > tolerance:
        raise WebhookVerificationError("webhook-timestamp is in the future")
    expected = _signature(secret_key(secret), msg_id, stamp, body).encode()
    for candidate in signatures.split():
        version, _, value = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(value.encode(), expected):
            return msg_id
    raise WebhookVerificationError("no matching v1 signature")


# -- records ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Subscription:
    id: uuid.UUID
    url: str
    event_types: list[str] | None  # None: every event type
    description: str
    active: bool
    disabled_reason: str | None
    created_at: datetime
    updated_at: datetime
    secret: str | None = field(default=None, repr=False)  # only on the result of create_subscription


@dataclass(frozen=True)
class Delivery:
    id: uuid.UUID
    subscription_id: uuid.UUID
    message_id: str
    event_type: str
    payload: Any
    occurred_at: datetime
    status: str
    attempts: int
    next_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None


@dataclass(frozen=True)
class Attempt:
    attempt: int
    attempted_at: datetime
    status_code: int | None
    error: str | None
    duration_ms: int


_SUB_COLUMNS = "id, url, event_types, description, active, disabled_reason, created_at, updated_at"
_DELIVERY_COLUMNS = ("id, subscription_id, message_id, event_type, payload, occurred_at, status, attempts,"
                     " next_attempt_at, last_status_code, last_error, created_at, delivered_at")


def _subscription(row: Any, secret: str | None = None) -> Subscription:
    types = row["event_types"]
    return Subscription(row["id"], row["url"], list(types) if types is not None else None, row["description"],
                        row["active"], row["disabled_reason"], row["created_at"], row["updated_at"], secret)


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


_DELIVERY_FIELDS = [name.strip() for name in _DELIVERY_COLUMNS.split(",")]


def _delivery(row: Any) -> Delivery:
    return Delivery(**{k: (_json(row[k]) if k == "payload" else row[k]) for k in _DELIVERY_FIELDS})


@asynccontextmanager
async def _transaction(conn: Any) -> AsyncIterator[Any]:
    """A transaction on a pool's connection, or on (a savepoint of) the given connection."""
    if hasattr(conn, "acquire"):
        async with conn.acquire() as own:
            async with own.transaction():
                yield own
    else:
        async with conn.transaction():
            yield conn


# -- subscriptions ---------------------------------------------------------------------------


def _check_url(url: str, require_https: bool) -> str:
    parts = urlsplit(url)
    allowed = ("https",) if require_https else ("http", "https")
    if parts.scheme not in allowed or not parts.hostname or parts.fragment or len(url) > 2048:
        raise ValueError(f"a webhook URL is an absolute {' or '.join(allowed)} URL without a fragment: {url!r}")
    return url


def _check_event_types(event_types: Sequence[str] | None) -> list[str] | None:
    if event_types is None:
        return None
    if isinstance(event_types, str):
        raise ValueError("event_types is a list of event types, not one string")
    types = list(dict.fromkeys(event_types))
    if not types or any(not isinstance(t, str) or not t.strip() for t in types):
        raise ValueError("event_types lists at least one non-empty event type (None means all)")
    return types


async def create_subscription(conn: Any, url: str, *, event_types: Sequence[str] | None = None,
                              secret: str | None = None, description: str = "",
                              require_https: bool = False) -> Subscription:
    """Register an endpoint. Without `secret` a new one is generated; the result carries
    it in ``.secret`` (give it to the receiver now: listings do not return it)."""
    _check_url(url, require_https)
    types = _check_event_types(event_types)
    secret = generate_secret() if secret is None else secret
    if not secret.startswith(SECRET_PREFIX) or not MIN_SECRET_BYTES <= len(secret_key(secret)) <= MAX_SECRET_BYTES:
        raise ValueError(f"a webhook secret is 'whsec_' + base64 of {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} bytes")
    row = await conn.fetchrow(
        f"INSERT INTO webhook_subscriptions (id, url, secret, event_types, description)"
        f" VALUES ($1, $2, $3, $4, $5) RETURNING {_SUB_COLUMNS}",
        uuid.uuid4(), url, secret, types, description)
    return _subscription(row, secret)


async def get_subscription(conn: Any, subscription_id: uuid.UUID) -> Subscription | None:
    row = await conn.fetchrow(f"SELECT {_SUB_COLUMNS} FROM webhook_subscriptions WHERE id = $1", subscription_id)
    return _subscription(row) if row else None


async def list_subscriptions(conn: Any, *, active: bool | None = None) -> list[Subscription]:
    """Subscriptions, oldest first (without their secrets)."""
    rows = await conn.fetch(
        f"SELECT {_SUB_COLUMNS} FROM webhook_subscriptions WHERE $1::boolean IS NULL OR active = $1"
        " ORDER BY created_at, id", active)
    return [_subscription(r) for r in rows]


async def deactivate_subscription(conn: Any, subscription_id: uuid.UUID, reason: str = "deactivated") -> bool:
    """Stop sending to an endpoint: nothing new is enqueued for it, and its outstanding
    deliveries become ``dead`` (they can be sent again with `redeliver` once it is
    active again). False when there is no such active subscription."""
    async with _transaction(conn) as tx:
        return await _deactivate(tx, subscription_id, reason)


async def _deactivate(tx: Any, subscription_id: uuid.UUID, reason: str) -> bool:
    changed = await tx.fetchval(
        "UPDATE webhook_subscriptions SET active = false, disabled_reason = $2, updated_at = now()"
        " WHERE id = $1 AND active RETURNING id", subscription_id, reason)
    if changed is None:
        return False
    await tx.execute(
        "UPDATE webhook_deliveries SET status = 'dead', next_attempt_at = NULL, lease_token = NULL,"
        " last_error = $2 WHERE subscription_id = $1 AND status IN ('pending', 'failed')",
        subscription_id, f"subscription deactivated: {reason}")
    return True


async def activate_subscription(conn: Any, subscription_id: uuid.UUID) -> bool:
    """Resume sending to an endpoint (new messages only; see `redeliver`)."""
    changed = await conn.fetchval(
        "UPDATE webhook_subscriptions SET active = true, disabled_reason = NULL, updated_at = now()"
        " WHERE id = $1 AND NOT active RETURNING id", subscription_id)
    return changed is not None


# -- deliveries ------------------------------------------------------------------------------


async def enqueue(conn: Any, message_id: Any, event_type: str, payload: Any, *,
                  occurred_at: datetime | None = None,
                  subscription_ids: Iterable[uuid.UUID] | None = None) -> int:
    """Schedule `payload` for every active subscription to `event_type`; return how many
    deliveries were added (0 for subscriptions that already have this message).

    Call it with the connection of the transaction that records the event, so that
    the deliveries exist if and only if the event does. `message_id` identifies the
    message (an event id; no '.'): it is the ``webhook-id`` receivers de-duplicate on.
    Dispatchers listening on ``WEBHOOK_CHANNEL`` are woken at commit.

    `subscription_ids` restricts the message to those subscriptions (still only the
    active ones to `event_type`): a service that sends each subscription only what its
    owner may see computes them (an empty collection: to none, and nothing is written).
    """
    msg_id = _check_msg_id(str(message_id))
    if not isinstance(event_type, str) or not event_type.strip():
        raise ValueError("event_type must be a non-empty string")
    only = None if subscription_ids is None else [uuid.UUID(str(i)) for i in subscription_ids]
    if only is not None and not only:
        return 0
    body = json.dumps(payload, ensure_ascii=False)
    async with _transaction(conn) as tx:
        rows = await tx.fetch(
            "INSERT INTO webhook_deliveries (subscription_id, message_id, event_type, payload, occurred_at)"
            " SELECT s.id, $1, $2, $3::jsonb, coalesce($4, now()) FROM webhook_subscriptions s"
            "  WHERE s.active AND (s.event_types IS NULL OR $2 = ANY(s.event_types))"
            "    AND ($5::uuid[] IS NULL OR s.id = ANY($5::uuid[]))"
            " ON CONFLICT (subscription_id, message_id) DO NOTHING RETURNING id",
            msg_id, event_type, body, occurred_at, only)
        if rows:
            await tx.execute("SELECT pg_notify($1, '')", WEBHOOK_CHANNEL)
    return len(rows)


async def list_deliveries(conn: Any, *, subscription_id: uuid.UUID | None = None, status: str | None = None,
                          limit: int = 100) -> list[Delivery]:
    """Deliveries, newest first (for operators: what failed, and why)."""
    if status is not None and status not in STATUSES:
        raise ValueError(f"status is one of {', '.join(STATUSES)}")
    rows = await conn.fetch(
        f"SELECT {_DELIVERY_COLUMNS} FROM webhook_deliveries"
        " WHERE ($1::uuid IS NULL OR subscription_id = $1) AND ($2::text IS NULL OR status = $2)"
        " ORDER BY created_at DESC, id LIMIT $3", subscription_id, status, limit)
    return [_delivery(r) for r in rows]


async def get_delivery(conn: Any, delivery_id: uuid.UUID) -> Delivery | None:
    row = await conn.fetchrow(f"SELECT {_DELIVERY_COLUMNS} FROM webhook_deliveries WHERE id = $1", delivery_id)
    return _delivery(row) if row else None


async def list_attempts(conn: Any, delivery_id: uuid.UUID) -> list[Attempt]:
    rows = await conn.fetch(
        "SELECT attempt, attempted_at, status_code, error, duration_ms FROM webhook_attempts"
        " WHERE delivery_id = $1 ORDER BY id", delivery_id)
    return [Attempt(r["attempt"], r["attempted_at"], r["status_code"], r["error"], r["duration_ms"]) for r in rows]


async def redeliver(conn: Any, delivery_id: uuid.UUID) -> bool:
    """Send a ``dead`` (or still ``failed``) delivery again now, with a fresh attempt budget.
    False when it does not exist, was delivered, or its subscription is not active."""
    async with _transaction(conn) as tx:
        changed = await tx.fetchval(
            "UPDATE webhook_deliveries d SET status = 'pending', attempts = 0, next_attempt_at = now(),"
            " lease_token = NULL FROM webhook_subscriptions s"
            " WHERE d.id = $1 AND s.id = d.subscription_id AND s.active AND d.status IN ('dead', 'failed')"
            " RETURNING d.id", delivery_id)
        if changed is not None:
            await tx.execute("SELECT pg_notify($1, '')", WEBHOOK_CHANNEL)
    return changed is not None


async def purge(conn: Any, retention_hours: float) -> int:
    """Forget finished (delivered or dead) deliveries older than the retention; return how many."""
    status = await conn.execute(
        "DELETE FROM webhook_deliveries WHERE status IN ('delivered', 'dead')"
        " AND created_at < now() - make_interval(secs => $1)", float(retention_hours) * 3600.0)
    return int(status.split()[-1])


def render_body(event_type: str, occurred_at: datetime, payload: Any) -> bytes:
    """The request body: the Standard Webhooks payload structure, compact JSON, UTF-8."""
    stamp = occurred_at.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")
    return json.dumps({"type": event_type, "timestamp": stamp, "data": payload},
                      ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delay-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


# -- the dispatcher --------------------------------------------------------------------------


@dataclass
class DispatcherStats:
    attempts: int = 0
    delivered: int = 0
    failed: int = 0  # attempts that failed and will be retried
    dead: int = 0
    gone: int = 0  # subscriptions disabled by 410 Gone
    last_error: str | None = None


@dataclass(frozen=True)
class _Claimed:
    id: uuid.UUID
    subscription_id: uuid.UUID
    message_id: str
    event_type: str
    payload: Any
    occurred_at: datetime
    attempt: int
    url: str
    secret: str
    active: bool
    token: uuid.UUID


class WebhookDispatcher:
    """Delivers due webhook deliveries; safe to run in several replicas at once.

    A claim marks up to `batch_size` due deliveries (``FOR UPDATE SKIP LOCKED``:
    replicas never claim the same row) as leased until now + `lease` seconds, counts
    the attempt and commits, so that no transaction stays open during HTTP calls.
    The outcome is then recorded only if the lease is still ours. A lease left by a
    dispatcher that died expires and the delivery is attempted again.

    Retry *n* (after the *n*-th failed attempt) waits
    ``min(max_delay, base_delay * multiplier ** (n - 1))`` seconds, +/- 25% jitter,
    and at least what ``Retry-After`` asks (capped at `max_delay`). With the
    defaults (8 attempts, 1 s, x4, at most 1 h) the delays are about 1 s, 4 s, 16 s,
    1 min, 4 min, 17 min and 1 h: the last attempt comes about 1.4 h after the first.
    `timeout` bounds a whole attempt (connect to last byte).

    `http_client` is an ``httpx.AsyncClient`` the caller owns. Redirects are never
    followed: a 3xx is a failed attempt (the receiver should update its URL).

    ``run()`` is the background loop: it looks for due deliveries every
    `poll_interval` seconds, sooner when a retry falls due, and at once on ``NOTIFY``
    `WEBHOOK_CHANNEL` (with `listen`, which holds one pool connection; `enqueue`
    notifies). ``dispatch_once()`` claims and sends one batch (tests, cron-style
    use). `on_outcome` is called with ``delivered``, ``failed``, ``dead`` or
    ``gone`` after each recorded attempt (metrics).
    """

    def __init__(
        self,
        pool: Any,
        http_client: Any,
        *,
        max_attempts: int = 8,
        base_delay: float = 1.0,
        max_delay: float = 3600.0,
        timeout: float = 10.0,
        multiplier: float = 4.0,
        batch_size: int = 20,
        concurrency: int = 10,
        poll_interval: float = 1.0,
        lease: float | None = None,
        listen: bool = True,
        max_response_bytes: int = 1024,
        user_agent: str = USER_AGENT,
        clock: Callable[[], float] = time.time,
        rng: Callable[[], float] = random.random,
        on_outcome: Callable[[str], None] | None = None,
    ) -> None:
        if max_attempts < 1 or batch_size < 1 or concurrency < 1:
            raise ValueError("max_attempts, batch_size and concurrency must be at least 1")
        if timeout <= 0 or base_delay < 0 or max_delay < 0 or multiplier < 1:
            raise ValueError("invalid timing parameters")
        self.pool = pool
        self.http = http_client
        self.max_attempts = max_attempts
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.timeout = timeout
        self.multiplier = multiplier
        self.batch_size = batch_size
        self.concurrency = concurrency
        self.poll_interval = poll_interval
        self.lease = lease if lease is not None else timeout + 60.0
        self.listen = listen
        self.max_response_bytes = max_response_bytes
        self.user_agent = user_agent
        self.clock = clock
        self.rng = rng
        self.on_outcome = on_outcome
        self.stats = DispatcherStats()
        self._signal = Notifier()  # wake-ups: NOTIFY, finished attempts, wake(), stop()
        self._stopping = False

    # -- the loop ----------------------------------------------------------------------------

    def wake(self, *_: Any) -> None:
        """Look for due deliveries now."""
        self._signal.notify()

    def stop(self) -> None:
        """End `run()` after the attempts in flight (each bounded by `timeout`)."""
        self._stopping = True
        self._signal.notify()

    async def run(self) -> None:
        """Deliver until `stop()` or cancellation, at most `concurrency` attempts at a time."""
        self._stopping = False
        inflight: set[asyncio.Task] = set()
        listener = (asyncio.create_task(listen_postgres(self.pool, WEBHOOK_CHANNEL, self._signal),
                                        name="webhooks-listen") if self.listen else None)

        def finished(task: asyncio.Task) -> None:
            inflight.discard(task)
            self._signal.notify()

        try:
            while not self._stopping:
                wake = self._signal.current()
                free = self.concurrency - len(inflight)
                want = min(free, self.batch_size)
                claimed: list[_Claimed] = []
                if want > 0:
                    try:
                        claimed = await self._claim(want)
                    except asyncio.CancelledError:
                        raise
                    except Exception as exc:  # the database may be briefly away
                        self.stats.last_error = f"claim failed: {exc!r}"
                        log.warning("webhook dispatcher: claiming deliveries failed", exc_info=True)
                for item in claimed:
                    task = asyncio.create_task(self._attempt_logged(item), name=f"webhook-{item.id}")
                    inflight.add(task)
                    task.add_done_callback(finished)
                if want > 0 and len(claimed) == want:
                    continue  # more may be due
                wait = self.poll_interval if want <= 0 else await self._until_next_due()
                try:
                    await asyncio.wait_for(wake.wait(), wait)
                except TimeoutError:
                    pass
            if inflight:  # graceful stop: record the outcomes of what is in flight
                await asyncio.gather(*inflight, return_exceptions=True)
        finally:
            tasks = list(inflight) + ([listener] if listener is not None else [])
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)

    async def dispatch_once(self) -> int:
        """Claim one batch of due deliveries, attempt them all, return how many were claimed."""
        claimed = await self._claim(self.batch_size)
        gate = asyncio.Semaphore(self.concurrency)

        async def one(item: _Claimed) -> None:
            async with gate:
                await self._attempt_logged(item)

        await asyncio.gather(*(one(item) for item in claimed))
        return len(claimed)

    async def _until_next_due(self) -> float:
        try:
            seconds = await self.pool.fetchval(
                "SELECT extract(epoch FROM min(next_attempt_at) - now())::float8 FROM webhook_deliveries"
                " WHERE status IN ('pending', 'failed')")
        except asyncio.CancelledError:
            raise
        except Exception:
            return self.poll_interval
        if seconds is None:
            return self.poll_interval
        return min(self.poll_interval, max(0.01, seconds))

    # -- one attempt -------------------------------------------------------------------------

    async def _claim(self, limit: int) -> list[_Claimed]:
        token = uuid.uuid4()
        rows = await self.pool.fetch(
            "WITH due AS ("
            "  SELECT id FROM webhook_deliveries"
            "   WHERE status IN ('pending', 'failed') AND next_attempt_at <= now()"
            "   ORDER BY next_attempt_at, id LIMIT $1"
            "   FOR UPDATE SKIP LOCKED)"
            " UPDATE webhook_deliveries d"
            "    SET attempts = d.attempts + 1, lease_token = $3,"
            "        next_attempt_at = now() + make_interval(secs => $2)"
            "   FROM due, webhook_subscriptions s"
            "  WHERE d.id = due.id AND s.id = d.subscription_id"
            " RETURNING d.id, d.subscription_id, d.message_id, d.event_type, d.payload, d.occurred_at,"
            "           d.attempts, s.url, s.secret, s.active",
            limit, float(self.lease), token)
        return [_Claimed(r["id"], r["subscription_id"], r["message_id"], r["event_type"], _json(r["payload"]),
                         r["occurred_at"], r["attempts"], r["url"], r["secret"], r["active"], token)
                for r in rows]

    async def _attempt_logged(self, item: _Claimed) -> None:
        try:
            await self._attempt(item)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # recording failed: the lease expires and the attempt is made again
            self.stats.last_error = f"delivery {item.id}: {exc!r}"
            log.warning("webhook delivery %s: recording the attempt failed", item.id, exc_info=True)

    def retry_delay(self, failed_attempts: int, retry_after: str | None = None) -> float:
        """Seconds before the next attempt after `failed_attempts` failures."""
        exponent = min(max(failed_attempts - 1, 0), 64)
        delay = min(self.max_delay, self.base_delay * self.multiplier ** exponent)
        delay = min(self.max_delay, delay * (0.75 + 0.5 * self.rng()))
        hint = parse_retry_after(retry_after, self.clock())
        if hint is not None:
            delay = max(delay, min(hint, self.max_delay))
        return delay

    async def _attempt(self, item: _Claimed) -> None:
        if not item.active:  # disabled after the delivery was enqueued
            await self._finish(item, "dead", None, "subscription inactive", 0, None)
            return
        body = render_body(item.event_type, item.occurred_at, item.payload)
        stamp = int(self.clock())
        headers = {
            "content-type": "application/json",
            "user-agent": self.user_agent,
            "webhook-id": item.message_id,
            "webhook-timestamp": str(stamp),
            "webhook-signature": sign(item.secret, item.message_id, stamp, body),
        }
        status: int | None = None
        error: str | None = None
        retry_after: str | None = None
        started = time.monotonic()
        with tracer.start_as_current_span("webhook deliver", kind=SpanKind.CLIENT) as span:
            span.set_attribute("webhook.id", item.message_id)
            span.set_attribute("webhook.event_type", item.event_type)
            span.set_attribute("webhook.attempt", item.attempt)
            try:
                async with asyncio.timeout(self.timeout):
                    async with self.http.stream("POST", item.url, content=body, headers=headers,
                                                timeout=self.timeout, follow_redirects=False) as response:
                        status = response.status_code
                        retry_after = response.headers.get("retry-after")
                        excerpt = await _read_some(response, self.max_response_bytes)
                if not 200 <= status < 300:
                    error = f"HTTP {status}" + (f": {excerpt}" if excerpt else "")
            except asyncio.CancelledError:
                raise
            except TimeoutError:
                error = f"timed out after {self.timeout:g}s"
            except Exception as exc:  # connection refused, reset, TLS, invalid URL...
                error = f"{type(exc).__name__}: {exc}".rstrip(": ")
            if status is not None:
                span.set_attribute("http.response.status_code", status)
        duration_ms = int((time.monotonic() - started) * 1000)
        if status is not None and 200 <= status < 300:
            outcome, next_in = "delivered", None
        elif status == 410:
            outcome, next_in = "gone", None
        elif item.attempt >= self.max_attempts:
            outcome, next_in = "dead", None
        else:
            outcome, next_in = "failed", self.retry_delay(item.attempt, retry_after)
        await self._finish(item, outcome, status, error, duration_ms, next_in)

    async def _finish(self, item: _Claimed, outcome: str, status: int | None, error: str | None,
                      duration_ms: int, next_in: float | None) -> None:
        stored = {"gone": "dead"}.get(outcome, outcome)
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                await conn.execute(
                    "INSERT INTO webhook_attempts (delivery_id, attempt, status_code, error, duration_ms)"
                    " VALUES ($1, $2, $3, $4, $5)", item.id, item.attempt, status, error, duration_ms)
                updated = await conn.fetchval(
                    "UPDATE webhook_deliveries SET status = $3, last_status_code = $4, last_error = $5,"
                    " lease_token = NULL,"
                    " next_attempt_at = CASE WHEN $6::float8 IS NULL THEN NULL"
                    "                        ELSE now() + make_interval(secs => $6::float8) END,"
                    " delivered_at = CASE WHEN $3 = 'delivered' THEN now() ELSE delivered_at END"
                    " WHERE id = $1 AND lease_token = $2 RETURNING id",
                    item.id, item.token, stored, status, error, next_in)
                if outcome == "gone" and updated is not None:
                    await _deactivate(conn, item.subscription_id, "the endpoint answered 410 Gone")
        if updated is None:
            log.info("webhook delivery %s: lease lost (taken over or cancelled); outcome %s not recorded",
                     item.id, outcome)
            return
        self.stats.attempts += 1
        if outcome == "delivered":
            self.stats.delivered += 1
        elif outcome == "failed":
            self.stats.failed += 1
        else:
            self.stats.dead += 1
            if outcome == "gone":
                self.stats.gone += 1
        if error:
            self.stats.last_error = f"{item.url}: {error}"
        level = {"delivered": logging.DEBUG, "failed": logging.INFO}.get(outcome, logging.WARNING)
        log.log(level, "webhook %s (%s) to %s, attempt %d: %s%s", item.message_id, item.event_type, item.url,
                item.attempt, outcome, f" ({error})" if error else "")
        if self.on_outcome is not None:
            try:
                self.on_outcome(outcome)
            except Exception:
                log.debug("on_outcome callback failed", exc_info=True)


async def _read_some(response: Any, limit: int) -> str:
    """At most `limit` bytes of a response body, as text (for the attempt log)."""
    if limit <= 0:
        return ""
    buf = bytearray()
    async for chunk in response.aiter_bytes():
        buf += chunk
        if len(buf) >= limit:
            break
    return bytes(buf[:limit]).decode("utf-8", "replace").strip()
