"""Projection runner: Kafka consumer group -> read model in PostgreSQL.

A projection applies a batch of events in one PostgreSQL transaction together
with its tracking (last applied version per source stream), and the Kafka
offsets are committed only after that transaction has committed. Hence:

* redelivery, replay and rebalancing are harmless: an event whose version is not
  above the tracked one is a no-op (tracking rows are locked FOR UPDATE, so two
  consumers briefly owning the same partition during a rebalance cannot both
  apply it);
* an event whose predecessor is missing is never skipped: it is parked and its
  stream is held (metric ``tpa_projection_held_streams`` and a warning log) until
  the missing version arrives, then the parked events are applied in order;
* an event that still fails after bounded retries goes to ``<topic>.dlq`` with
  the error in headers and the stream goes on, unless the projection declares
  strict order (ledgers): then the event is parked and its stream held instead.

Rebuild: ``rebuild()`` clears the read model and tracking in one transaction and
bumps the projection's epoch; the consumer group id carries the epoch, so the
runner (at its next poll, or its next start) consumes the topics from the start
under a fresh group.
"""

from __future__ import annotations

import asyncio
import json
import logging
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, Sequence

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from aiokafka.structs import OffsetAndMetadata
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from contracts.topics import dlq_topic

from . import telemetry
from .kafka import ensure_topics, new_producer
from .metrics import Metrics

log = logging.getLogger("eventkit.projection")
_MAX_LINKS = 128  # the SDK's default span link limit
tracer = trace.get_tracer("eventkit.projection")


@dataclass(frozen=True)
class Message:
    """An event as a projection sees it: the published envelope plus its Kafka origin."""

    event_id: str
    event_type: str
    schema_version: int
    source: str
    stream_id: str
    stream_type: str
    version: int
    global_position: int
    data: dict[str, Any]
    metadata: dict[str, Any]
    topic: str = ""
    partition: int = -1
    offset: int = -1
    headers: tuple[tuple[str, bytes], ...] = field(default=(), repr=False)

    @classmethod
    def from_envelope(cls, env: dict[str, Any], **origin: Any) -> "Message":
        try:
            return cls(
                event_id=str(env["event_id"]),
                event_type=str(env["event_type"]),
                schema_version=int(env["schema_version"]),
                source=str(env.get("source", "")),
                stream_id=str(env["stream_id"]),
                stream_type=str(env["stream_type"]),
                version=int(env["version"]),
                global_position=int(env.get("global_position", 0)),
                data=dict(env["data"]),
                metadata=dict(env.get("metadata") or {}),
                **origin,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise MalformedMessage(f"not a TPA event envelope: {exc!r}") from exc

    @property
    def key(self) -> str:
        """Tracking key: the stream within its producing service (sources never share streams)."""
        return f"{self.source}#{self.stream_id}" if self.source else self.stream_id

    def origin(self) -> dict[str, Any]:
        return {"topic": self.topic, "partition": self.partition, "offset": self.offset,
                "headers": [[k, v.decode("utf-8", "replace")] for k, v in self.headers]}

    @classmethod
    def from_parked(cls, env: dict[str, Any]) -> "Message":
        origin = env.get("_origin") or {}
        return cls.from_envelope(env, topic=origin.get("topic", ""), partition=origin.get("partition", -1),
                                 offset=origin.get("offset", -1),
                                 headers=tuple((k, v.encode()) for k, v in origin.get("headers", [])))

    def to_envelope(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id, "event_type": self.event_type,
            "schema_version": self.schema_version, "source": self.source,
            "stream_id": self.stream_id, "stream_type": self.stream_type,
            "version": self.version, "global_position": self.global_position,
            "data": self.data, "metadata": self.metadata,
        }

    @property
    def recorded_at(self) -> datetime | None:
        raw = self.metadata.get("recorded_at")
        return datetime.fromisoformat(raw) if raw else None


class MalformedMessage(Exception):
    """A record that is not a TPA event envelope at all."""


class Projection(Protocol):
    """A read model fed from one or more topics."""

    name: str
    topics: Sequence[str]
    strict: bool  # hold a stream on a failing event instead of dead-lettering it

    async def apply(self, conn: Any, message: Message) -> None: ...

    async def reset(self, conn: Any) -> None:
        """Remove everything the projection wrote (used by rebuild)."""


async def ensure_state(pool: Any, name: str) -> int:
    await pool.execute(
        "INSERT INTO projection_state (projection) VALUES ($1) ON CONFLICT (projection) DO NOTHING", name)
    return await pool.fetchval("SELECT epoch FROM projection_state WHERE projection = $1", name)


async def rebuild(pool: Any, projection: Projection) -> int:
    """Clear the read model and its tracking, bump the epoch; return the new epoch."""
    await ensure_state(pool, projection.name)
    async with pool.acquire() as conn:
        async with conn.transaction():
            epoch = await conn.fetchval(
                "SELECT epoch FROM projection_state WHERE projection = $1 FOR UPDATE", projection.name)
            await projection.reset(conn)
            await conn.execute("DELETE FROM projection_streams WHERE projection = $1", projection.name)
            await conn.execute("DELETE FROM projection_parked WHERE projection = $1", projection.name)
            await conn.execute(
                "UPDATE projection_state SET epoch = $2, rebuilt_at = now() WHERE projection = $1",
                projection.name, epoch + 1)
    return epoch + 1


class _EpochChanged(Exception):
    pass


class ProjectionRunner:
    def __init__(
        self,
        projection: Projection,
        *,
        service: str,
        pool: Any,
        bootstrap_servers: str,
        metrics: Metrics,
        enable_idempotence: bool = True,
        partitions: int = 3,
        replication_factor: int = 1,
        max_retries: int = 3,
        batch_size: int = 500,
        retry_delay: float = 0.05,
        group_prefix: str = "tpa",
        compression_type: str = "zstd",
    ) -> None:
        self.projection = projection
        self.service = service
        self.pool = pool
        self.bootstrap_servers = bootstrap_servers
        self.metrics = metrics
        self.enable_idempotence = enable_idempotence
        self.partitions = partitions
        self.replication_factor = replication_factor
        self.max_retries = max_retries
        self.batch_size = batch_size
        self.retry_delay = retry_delay
        self.group_prefix = group_prefix
        self.compression_type = compression_type
        self._dlq_topics: set[str] = set()
        self.epoch = 0
        self.assigned: set[TopicPartition] = set()
        self._dlq: AIOKafkaProducer | None = None
        self._stopping = False

    @property
    def name(self) -> str:
        return self.projection.name

    def group_id(self, epoch: int) -> str:
        return f"{self.group_prefix}.{self.service}.{self.projection.name}.e{epoch}"

    def stop(self) -> None:
        self._stopping = True

    async def run(self) -> None:
        backoff = 0.2
        try:
            while not self._stopping:
                try:
                    await self._run_once()
                    backoff = 0.2
                except asyncio.CancelledError:
                    raise
                except _EpochChanged:
                    log.info("projection %s: rebuilt, consuming from the start", self.name)
                    continue
                except (KafkaError, OSError, asyncio.TimeoutError) as exc:
                    log.warning("projection %s: broker error, retrying in %.1fs: %r", self.name, backoff, exc)
                except Exception:  # database trouble or a bug: never let the runner die
                    log.exception("projection %s: unexpected error, retrying in %.1fs", self.name, backoff)
                await asyncio.sleep(backoff)
                backoff = min(10.0, backoff * 2)
        finally:
            if self._dlq is not None:
                try:
                    await asyncio.wait_for(self._dlq.stop(), 5)
                except Exception:
                    log.debug("dlq producer stop failed", exc_info=True)
                self._dlq = None

    async def _run_once(self) -> None:
        self.epoch = await ensure_state(self.pool, self.name)
        await ensure_topics(self.bootstrap_servers, self.projection.topics, partitions=self.partitions,
                            replication_factor=self.replication_factor,
                            client_id=f"tpa-projection-admin-{self.name}")
        consumer = AIOKafkaConsumer(
            *self.projection.topics,
            bootstrap_servers=self.bootstrap_servers,
            group_id=self.group_id(self.epoch),
            client_id=f"tpa-{self.service}-{self.name}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=self.batch_size,
            metadata_max_age_ms=10_000,
        )
        try:
            await consumer.start()
            await self._drain_all_held()
            loop = asyncio.get_running_loop()
            last_epoch_check = loop.time()
            while not self._stopping:
                batches = await consumer.getmany(timeout_ms=500, max_records=self.batch_size)
                if not batches and loop.time() - last_epoch_check < 2.0:
                    continue
                last_epoch_check = loop.time()
                current = await self.pool.fetchval(
                    "SELECT epoch FROM projection_state WHERE projection = $1", self.name)
                if current != self.epoch:
                    raise _EpochChanged()
                for tp, records in batches.items():
                    await self._process_partition(consumer, tp, records)
                self.assigned = set(consumer.assignment())
                await self._update_lag(consumer)
        finally:
            try:
                await asyncio.wait_for(consumer.stop(), 10)
            except Exception:
                log.debug("consumer stop failed", exc_info=True)

    async def _update_lag(self, consumer: AIOKafkaConsumer) -> None:
        for tp in consumer.assignment():
            high = consumer.highwater(tp)
            if high is None:
                continue
            try:
                pos = await consumer.position(tp)
            except Exception:
                continue
            self.metrics.consumer_lag.labels(self.name, tp.topic, str(tp.partition)).set(max(0, high - pos))

    async def _process_partition(self, consumer: AIOKafkaConsumer, tp: TopicPartition, records: list) -> None:
        attempt = 0
        while True:
            try:
                await self._apply_batch(tp, records)
                break
            except _EpochChanged:
                raise
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # database trouble: nothing was committed; retry the batch
                attempt += 1
                log.warning("projection %s: batch on %s failed (%r), retry %d", self.name, tp, exc, attempt)
                await asyncio.sleep(min(5.0, self.retry_delay * 2 ** attempt))
        try:
            await consumer.commit({tp: OffsetAndMetadata(records[-1].offset + 1, "")})
        except (CommitFailedError, KafkaError) as exc:
            # Rebalanced away or broker trouble: the events are applied in PostgreSQL; whoever
            # consumes them again finds them tracked and skips them.
            log.info("projection %s: offset commit on %s failed: %r", self.name, tp, exc)

    async def _apply_batch(self, tp: TopicPartition, records: list) -> None:
        messages: list[Message] = []
        dead: list[tuple[Any, str]] = []
        for rec in records:
            try:
                env = json.loads(rec.value)
                if not isinstance(env, dict):
                    raise MalformedMessage("envelope is not a JSON object")
                messages.append(Message.from_envelope(
                    env, topic=rec.topic, partition=rec.partition, offset=rec.offset,
                    headers=tuple(rec.headers or ())))
            except (ValueError, MalformedMessage) as exc:
                dead.append((rec, f"malformed: {exc}"))

        held_changed = False
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                epoch = await conn.fetchval(
                    "SELECT epoch FROM projection_state WHERE projection = $1 FOR SHARE", self.name)
                if epoch != self.epoch:
                    raise _EpochChanged()
                tracked = await self._lock_tracking(conn, {m.key for m in messages})
                parked = await self._parked_streams(conn, tracked)
                ready = self._in_order(messages, tracked, parked)
                if ready is not None and await self._apply_together(conn, ready):
                    for msg in ready:
                        tracked[msg.key] = msg.version
                else:
                    held_changed = await self._apply_one_by_one(conn, messages, tracked, parked, dead)
                await self._save_tracking(conn, tracked)
                # Dead letters are sent before the commit: at worst a retried batch sends twice.
                for item, error in dead:
                    await self._dead_letter(item, error)
        if held_changed or dead:
            await self._refresh_held_metric()

    def _in_order(self, messages: list[Message], tracked: dict[str, int], parked: set[str]
                  ) -> list[Message] | None:
        """The batch without its duplicates, if every remaining event follows on its stream's last
        applied one and no stream of the batch has parked events; otherwise None."""
        ready: list[Message] = []
        last = dict(tracked)
        for msg in messages:
            if msg.version <= last[msg.key]:
                continue
            if msg.version != last[msg.key] + 1 or msg.key in parked:
                return None
            last[msg.key] = msg.version
            ready.append(msg)
        self.metrics.duplicates.labels(self.name).inc(len(messages) - len(ready))
        return ready

    async def _apply_together(self, conn: Any, messages: list[Message]) -> bool:
        """The fast path: the whole batch in one savepoint, through the projection's ``apply_batch``
        when it has one. False (and nothing written) when anything fails: the caller then applies
        the batch event by event, with retries, parking and dead letters."""
        if not messages:
            return True
        with self._process_span(messages, attempt=1) as span:
            try:
                async with conn.transaction():
                    apply_batch = getattr(self.projection, "apply_batch", None)
                    if apply_batch is not None:
                        await apply_batch(conn, messages)
                    else:
                        for msg in messages:
                            await self.projection.apply(conn, msg)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - retried event by event, where it is reported
                span.set_attribute("tpa.batch.fallback", f"{type(exc).__name__}: {exc}"[:500])
                log.info("projection %s: batch of %d failed (%r); applying it event by event",
                         self.name, len(messages), exc)
                return False
        self.metrics.applied.labels(self.name).inc(len(messages))
        return True

    async def _apply_one_by_one(self, conn: Any, messages: list[Message], tracked: dict[str, int],
                                parked: set[str], dead: list[tuple[Any, str]]) -> bool:
        """Each event in its own savepoint; gaps park, failures park (strict) or dead-letter.
        Returns whether the set of held streams may have changed."""
        held_changed = False
        for msg in messages:
            current = tracked[msg.key]
            if msg.version <= current:
                self.metrics.duplicates.labels(self.name).inc()
                continue
            if msg.version > current + 1:
                reason = f"gap: expected version {current + 1}, got {msg.version}"
                await self._park(conn, msg, reason)
                parked.add(msg.key)
                held_changed = True
                log.warning("projection %s: holding stream %s (%s)", self.name, msg.key, reason)
                continue
            error = await self._apply_with_retries(conn, msg)
            if error is not None and self.projection.strict:
                await self._park(conn, msg, f"failed: {error}")
                parked.add(msg.key)
                held_changed = True
                log.error("projection %s: holding stream %s at version %d: %s",
                          self.name, msg.key, msg.version, error)
                continue
            if error is not None:
                dead.append((msg, error))
            if msg.key in parked:
                tracked[msg.key] = await self._drain_parked(conn, msg.key, msg.version)
                held_changed = held_changed or tracked[msg.key] != msg.version
            else:
                tracked[msg.key] = msg.version
        return held_changed

    async def _parked_streams(self, conn: Any, tracked: dict[str, int]) -> set[str]:
        """Streams of the batch with parked events. Parked rows of a stream are written and removed
        only under its tracking row's lock, which this transaction holds: the set stays true."""
        if not tracked:
            return set()
        rows = await conn.fetch(
            "SELECT DISTINCT stream_id FROM projection_parked WHERE projection = $1 AND stream_id = ANY($2::text[])",
            self.name, list(tracked))
        return {r["stream_id"] for r in rows}

    async def _lock_tracking(self, conn: Any, streams: set[str]) -> dict[str, int]:
        if not streams:
            return {}
        ids = sorted(streams)  # a fixed lock order avoids deadlocks between consumers
        await conn.execute(
            "INSERT INTO projection_streams (projection, stream_id, version)"
            " SELECT $1, s, 0 FROM unnest($2::text[]) AS s ORDER BY s"
            " ON CONFLICT (projection, stream_id) DO NOTHING", self.name, ids)
        rows = await conn.fetch(
            "SELECT stream_id, version FROM projection_streams"
            " WHERE projection = $1 AND stream_id = ANY($2::text[]) ORDER BY stream_id FOR UPDATE",
            self.name, ids)
        return {r["stream_id"]: r["version"] for r in rows}

    async def _save_tracking(self, conn: Any, tracked: dict[str, int]) -> None:
        if tracked:
            await conn.execute(
                "UPDATE projection_streams p SET version = t.v"
                " FROM unnest($2::text[], $3::int[]) AS t(s, v)"
                " WHERE p.projection = $1 AND p.stream_id = t.s AND p.version <> t.v",
                self.name, list(tracked.keys()), list(tracked.values()))

    async def _park(self, conn: Any, msg: Message, reason: str) -> None:
        await conn.execute(
            "INSERT INTO projection_parked (projection, stream_id, version, envelope, reason)"
            " VALUES ($1, $2, $3, $4::jsonb, $5)"
            " ON CONFLICT (projection, stream_id, version) DO UPDATE SET reason = EXCLUDED.reason",
            self.name, msg.key, msg.version, json.dumps({**msg.to_envelope(), "_origin": msg.origin()}), reason)

    def _process_span(self, messages: Sequence[Message], attempt: int) -> Any:
        """The consumer's ``process`` span of one event or a batch (OpenTelemetry messaging
        conventions): a child of the producer's trace when the events share one trace (one
        command's events), otherwise a new trace linked to each event's."""
        if not telemetry.recording():
            return nullcontext(trace.INVALID_SPAN)
        carriers: dict[str, dict[str, str]] = {}  # traceparent -> its carrier, first seen first
        for msg in messages:
            carrier = {k.lower(): v.decode("ascii", "replace") for k, v in msg.headers
                       if k.lower() in ("traceparent", "tracestate")}
            if "traceparent" in carrier and len(carriers) < _MAX_LINKS:
                carriers.setdefault(carrier["traceparent"], carrier)
        parent, links = None, []
        if len({tp.split("-")[1] if tp.count("-") == 3 else tp for tp in carriers}) == 1:
            parent = propagate.extract(next(iter(carriers.values())))
        else:
            links = [trace.Link(trace.get_current_span(propagate.extract(c)).get_span_context())
                     for c in carriers.values()]
        first = messages[0]
        attributes: dict[str, Any] = {
            "messaging.system": "kafka", "messaging.operation.type": "process",
            "messaging.destination.name": first.topic, "messaging.consumer.group.name": self.group_id(self.epoch),
            "tpa.projection": self.name, "tpa.attempt": attempt}
        if len(messages) == 1:
            attributes["messaging.message.id"] = first.event_id
        else:
            attributes["messaging.batch.message_count"] = len(messages)
        return tracer.start_as_current_span(f"{first.topic or first.stream_type} process", context=parent,
                                            kind=SpanKind.CONSUMER, links=links, attributes=attributes)

    async def _apply_with_retries(self, conn: Any, msg: Message) -> str | None:
        """Apply in a savepoint; return None on success or the last error."""
        error = None
        for attempt in range(1, self.max_retries + 1):
            with self._process_span([msg], attempt) as span:
                try:
                    async with conn.transaction():
                        await self.projection.apply(conn, msg)
                    self.metrics.applied.labels(self.name).inc()
                    return None
                except Exception as exc:
                    error = f"{type(exc).__name__}: {exc}"
                    span.record_exception(exc)
                    span.set_status(Status(StatusCode.ERROR, error))
                    log.warning("projection %s: applying %s v%d of %s failed (attempt %d/%d): %s",
                                self.name, msg.event_type, msg.version, msg.stream_id,
                                attempt, self.max_retries, error)
            if attempt < self.max_retries:
                await asyncio.sleep(self.retry_delay * 2 ** (attempt - 1))
        return error

    async def _drain_parked(self, conn: Any, stream_id: str, version: int) -> int:
        """Apply parked events that now follow on; return the new tracked version."""
        while True:
            row = await conn.fetchrow(
                "SELECT envelope FROM projection_parked WHERE projection = $1 AND stream_id = $2"
                " AND version = $3", self.name, stream_id, version + 1)
            if row is None:
                # Parked duplicates at or below the version are obsolete.
                await conn.execute(
                    "DELETE FROM projection_parked WHERE projection = $1 AND stream_id = $2"
                    " AND version <= $3", self.name, stream_id, version)
                return version
            env = row["envelope"]
            msg = Message.from_parked(json.loads(env) if isinstance(env, str) else env)
            error = await self._apply_with_retries(conn, msg)
            if error is not None:
                if self.projection.strict:
                    await self._park(conn, msg, f"failed: {error}")
                    return version
                await self._dead_letter(msg, error)
            await conn.execute(
                "DELETE FROM projection_parked WHERE projection = $1 AND stream_id = $2 AND version = $3",
                self.name, stream_id, version + 1)
            version += 1

    async def _drain_all_held(self) -> None:
        """At start: retry held streams whose next event is parked (e.g. after a fix)."""
        rows = await self.pool.fetch(
            "SELECT k.stream_id, coalesce(s.version, 0) AS version FROM"
            " (SELECT DISTINCT stream_id FROM projection_parked WHERE projection = $1) k"
            " LEFT JOIN projection_streams s ON s.projection = $1 AND s.stream_id = k.stream_id",
            self.name)
        for r in rows:
            async with self.pool.acquire() as conn:
                async with conn.transaction():
                    tracked = await self._lock_tracking(conn, {r["stream_id"]})
                    tracked[r["stream_id"]] = await self._drain_parked(
                        conn, r["stream_id"], tracked[r["stream_id"]])
                    await self._save_tracking(conn, tracked)
        await self._refresh_held_metric()

    async def held_streams(self) -> list[dict[str, Any]]:
        rows = await self.pool.fetch(
            "SELECT stream_id, min(version) AS first_parked, count(*) AS parked, min(reason) AS reason"
            " FROM projection_parked WHERE projection = $1 GROUP BY stream_id ORDER BY stream_id",
            self.name)
        return [dict(r) for r in rows]

    async def _refresh_held_metric(self) -> None:
        n = await self.pool.fetchval(
            "SELECT count(DISTINCT stream_id) FROM projection_parked WHERE projection = $1", self.name)
        self.metrics.held_streams.labels(self.name).set(n)

    async def _dead_letter(self, item: Any, error: str) -> None:
        if isinstance(item, Message):
            topic, partition, offset = item.topic, item.partition, item.offset
            key = item.stream_id.encode()
            value = json.dumps(item.to_envelope(), ensure_ascii=False).encode()
            headers = list(item.headers)
        else:  # a raw ConsumerRecord that did not parse
            topic, partition, offset = item.topic, item.partition, item.offset
            key, value, headers = item.key, item.value, list(item.headers or ())
        headers += [
            ("tpa_error", error[:2000].encode()),
            ("tpa_projection", self.name.encode()),
            ("tpa_original_topic", topic.encode()),
            ("tpa_original_partition", str(partition).encode()),
            ("tpa_original_offset", str(offset).encode()),
        ]
        if self._dlq is None:
            self._dlq = new_producer(self.bootstrap_servers, client_id=f"tpa-dlq-{self.name}",
                                     enable_idempotence=self.enable_idempotence,
                                     compression_type=self.compression_type)
            await self._dlq.start()
        target = dlq_topic(topic)
        if target not in self._dlq_topics:
            await ensure_topics(self.bootstrap_servers, [target], partitions=self.partitions,
                                replication_factor=self.replication_factor)
            self._dlq_topics.add(target)
        await self._dlq.send_and_wait(target, value=value, key=key, headers=headers)
        self.metrics.dead_lettered.labels(self.name).inc()
        log.error("projection %s: sent %s offset %s to %s: %s", self.name, topic, offset, target, error)
