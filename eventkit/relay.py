"""The relay: the event store is the outbox.

A background task per service tails the store by global position and publishes
each event to ``tpa.<service>.<stream_type>.v1`` with the stream id as key, the
envelope JSON as value and CloudEvents binary-mode headers. It records what the
broker acknowledged in PostgreSQL and resumes from there: delivery is
at-least-once, in store order per key.

Failure handling:
* broker unreachable or a send fails: drop the producer, back off exponentially
  (capped), reconnect and resume from the last checkpoint (never skip);
* broker lost data (a partition's end offset is below the offset the broker once
  acknowledged to us, or a topic vanished, as when the in-memory embedded broker
  restarts): rewind the checkpoint to zero and republish from the store.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
from dataclasses import dataclass, field
from typing import Any, Callable

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind

from contracts import topics as ct

from . import telemetry
from .events import RecordedEvent
from .kafka import ensure_topics, new_producer
from .store import NOTIFY_CHANNEL, EventStore

log = logging.getLogger("eventkit.relay")
tracer = trace.get_tracer("eventkit.relay")


@dataclass
class RelayStats:
    published: int = 0
    republish_rewinds: int = 0
    failures: int = 0
    checkpoint: int = 0
    head: int = 0
    connected: bool = False
    last_error: str | None = None
    partition_offsets: dict[tuple[str, int], int] = field(default_factory=dict)

    @property
    def lag(self) -> int:
        return max(0, self.head - self.checkpoint)


def kafka_headers(event: RecordedEvent, service: str, source: str, traceparent: str | None,
                  tracestate: str | None = None) -> list[tuple[str, bytes]]:
    """CloudEvents Kafka binary binding headers (+ W3C trace context)."""
    headers = [
        (ct.HEADER_CE_SPECVERSION, ct.CE_SPECVERSION.encode()),
        (ct.HEADER_CE_ID, str(event.event_id).encode()),
        (ct.HEADER_CE_TYPE, ct.ce_type(event.event_type, event.schema_version, service).encode()),
        (ct.HEADER_CE_SOURCE, source.encode()),
        (ct.HEADER_CE_SUBJECT, event.stream_id.encode()),
        (ct.HEADER_CE_TIME, event.recorded_at.isoformat().encode()),
        (ct.HEADER_CONTENT_TYPE, ct.CONTENT_TYPE_JSON.encode()),
    ]
    if traceparent:
        headers.append((ct.HEADER_TRACEPARENT, traceparent.encode()))
    if tracestate:
        headers.append((ct.HEADER_TRACESTATE, tracestate.encode()))
    return headers


ProducerFactory = Callable[[], AIOKafkaProducer]


class Relay:
    """Publishes a service's events from its store to Kafka."""

    def __init__(
        self,
        *,
        name: str,
        service: str,
        store: EventStore,
        bootstrap_servers: str,
        enable_idempotence: bool,
        partitions: int = 3,
        replication_factor: int = 1,
        compression_type: str = "zstd",
        producer_batch_bytes: int = 262_144,
        batch_size: int = 500,
        poll_interval: float = 1.0,
        lost_data_check_interval: float = 5.0,
        pre_publish_check_interval: float = 0.5,
        max_backoff: float = 10.0,
        on_published: Callable[[int], None] | None = None,
        on_rewind: Callable[[], None] | None = None,
    ) -> None:
        self.name = name
        self.service = service
        self.source = f"/tpa/{service}"
        self.store = store
        self.bootstrap_servers = bootstrap_servers
        self.enable_idempotence = enable_idempotence
        self.partitions = partitions
        self.replication_factor = replication_factor
        self.compression_type = compression_type
        self.producer_batch_bytes = producer_batch_bytes
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.lost_data_check_interval = lost_data_check_interval
        self.pre_publish_check_interval = pre_publish_check_interval
        self.max_backoff = max_backoff
        self.on_published = on_published
        self.on_rewind = on_rewind
        self.stats = RelayStats()
        self._wake = asyncio.Event()
        self._stopping = False
        self._known_topics: set[str] = set()
        self._listen_conn: Any = None

    # -- lifecycle -------------------------------------------------------------

    async def run(self) -> None:
        """Run until cancelled. Never returns on broker or database errors: it retries."""
        backoff = 0.2
        try:
            while not self._stopping:
                producer: AIOKafkaProducer | None = None
                try:
                    await self._ensure_checkpoint_row()
                    if self._listen_conn is None:
                        await self._listen()
                        await self._become_leader()
                    producer = self._new_producer()
                    await producer.start()
                    self.stats.connected = True
                    self._known_topics.clear()
                    await self._check_lost_data(producer)
                    backoff = 0.2
                    await self._publish_loop(producer)
                except asyncio.CancelledError:
                    raise
                except (KafkaError, OSError, asyncio.TimeoutError) as exc:
                    self.stats.failures += 1
                    self.stats.connected = False
                    self.stats.last_error = repr(exc)
                    log.warning("relay %s: broker error, retrying in %.1fs: %r", self.name, backoff, exc)
                except Exception as exc:  # database trouble or a bug: never let the relay die
                    self.stats.failures += 1
                    self.stats.last_error = repr(exc)
                    log.exception("relay %s: unexpected error, retrying in %.1fs", self.name, backoff)
                    await self._unlisten()  # a fresh session (and publisher lock) on the next round
                finally:
                    if producer is not None:
                        await _quiet_stop(producer)
                self.stats.connected = False
                await asyncio.sleep(backoff * (0.8 + 0.4 * random.random()))
                backoff = min(self.max_backoff, backoff * 2)
        finally:
            await self._unlisten()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    # -- internals -------------------------------------------------------------

    def _new_producer(self) -> AIOKafkaProducer:
        return new_producer(self.bootstrap_servers, client_id=f"tpa-relay-{self.name}",
                            enable_idempotence=self.enable_idempotence, compression_type=self.compression_type,
                            batch_bytes=self.producer_batch_bytes)

    async def _listen(self) -> None:
        """A dedicated session: LISTEN for appends, and hold the publisher lock."""
        self._listen_conn = await self.store.pool.acquire()
        try:
            await self._listen_conn.add_listener(NOTIFY_CHANNEL, self._on_notify)
        except Exception:  # polling still works without LISTEN
            log.exception("relay %s: LISTEN failed, falling back to polling", self.name)

    async def _become_leader(self) -> None:
        """One publishing relay per store: replicas of a service wait on a session advisory lock
        (released when the holder's connection ends), so the checkpoint only moves forward."""
        key = int.from_bytes(hashlib.sha256(f"tpa-relay:{self.name}".encode()).digest()[:8], "big", signed=True)
        conn = self._listen_conn
        if conn is None:
            raise RuntimeError("relay has no database session")
        waiting = False
        while not await conn.fetchval("SELECT pg_try_advisory_lock($1)", key):
            if not waiting:
                log.info("relay %s: another replica is publishing; standing by", self.name)
                waiting = True
            await asyncio.sleep(self.poll_interval)
        if waiting:
            log.info("relay %s: took over publishing", self.name)

    async def _unlisten(self) -> None:
        conn, self._listen_conn = self._listen_conn, None
        if conn is None:
            return
        try:
            await conn.remove_listener(NOTIFY_CHANNEL, self._on_notify)
            await conn.execute("SELECT pg_advisory_unlock_all()")
        except Exception:  # the session is broken: closing it releases everything
            try:
                conn.terminate()
            except Exception:  # asyncpg's pool already took back a connection the server ended
                log.debug("relay %s: the broken session was already closed", self.name)
        finally:
            await self.store.pool.release(conn)  # a no-op for a connection the pool took back

    def _session_alive(self) -> bool:
        import asyncpg

        conn = self._listen_conn
        try:
            return conn is not None and not conn.is_closed()
        except asyncpg.InterfaceError:  # the pool took the connection back when the server ended it
            return False

    def _on_notify(self, *_: Any) -> None:
        self._wake.set()

    async def _ensure_checkpoint_row(self) -> None:
        await self.store.pool.execute(
            "INSERT INTO relay_checkpoint (relay, position) VALUES ($1, 0)"
            " ON CONFLICT (relay) DO NOTHING",
            self.name,
        )

    async def _checkpoint(self) -> int:
        return await self.store.pool.fetchval(
            "SELECT position FROM relay_checkpoint WHERE relay = $1", self.name
        )

    async def _ensure_topics(self, topics: set[str]) -> None:
        missing = topics - self._known_topics
        if missing:
            await ensure_topics(self.bootstrap_servers, missing, partitions=self.partitions,
                                replication_factor=self.replication_factor,
                                client_id=f"tpa-relay-admin-{self.name}")
            self._known_topics |= missing

    async def _check_lost_data(self, producer: AIOKafkaProducer) -> None:
        """Rewind to zero when the broker no longer holds what it acknowledged."""
        rows = await self.store.pool.fetch(
            "SELECT topic, partition, last_offset, batch_first_offset FROM relay_partition_offsets"
            " WHERE relay = $1",
            self.name,
        )
        self.stats.partition_offsets = {(r["topic"], r["partition"]): r["last_offset"] for r in rows}
        if not rows:
            return
        lost = await _broker_lost_data(
            self.bootstrap_servers, {(r["topic"], r["partition"]): r["batch_first_offset"] for r in rows})
        if lost:
            await self._rewind(lost)

    async def _rewind(self, reason: Any) -> None:
        log.warning("relay %s: broker lost data (%s); republishing from the event store",
                    self.name, reason)
        async with self.store.pool.acquire() as conn:
            async with conn.transaction():
                await conn.execute(
                    "UPDATE relay_checkpoint SET position = 0, updated_at = now() WHERE relay = $1",
                    self.name)
                await conn.execute("DELETE FROM relay_partition_offsets WHERE relay = $1", self.name)
        self._known_topics.clear()
        self.stats.partition_offsets.clear()
        self.stats.republish_rewinds += 1
        if self.on_rewind is not None:
            self.on_rewind()

    async def _publish_loop(self, producer: AIOKafkaProducer) -> None:
        """Publish batch after batch. The next batch is read from the store while the broker
        acknowledges the previous one (the producer keeps each partition's records in order); a
        batch's checkpoint is written once all its records are acknowledged. A broker that lost
        its log (and may auto-create topics on produce) must be noticed before new events go out
        ahead of the ones it lost: that check runs with nothing in flight."""
        loop = asyncio.get_running_loop()
        last_check = loop.time()
        in_flight: tuple[list[RecordedEvent], list[Any]] | None = None
        try:
            while not self._stopping:
                if not self._session_alive():
                    # The publisher lock went with the session: stop, and take the lock again (or stand by).
                    raise RuntimeError("the relay's database session (and publisher lock) was lost")
                due = loop.time() - last_check >= self.pre_publish_check_interval
                if in_flight is not None and due:
                    done, in_flight = in_flight, None
                    await self._confirm(*done)
                if in_flight is None:
                    if loop.time() - last_check >= self.lost_data_check_interval:
                        await self._check_lost_data(producer)
                        last_check = loop.time()
                    position = await self._checkpoint()
                    self.stats.checkpoint = position
                else:
                    position = in_flight[0][-1].global_position
                events = await self.store.read_all(position, self.batch_size)
                if events and in_flight is None and loop.time() - last_check >= self.pre_publish_check_interval:
                    await self._check_lost_data(producer)
                    last_check = loop.time()
                    position = await self._checkpoint()
                    events = await self.store.read_all(position, self.batch_size)
                if in_flight is not None:
                    done, in_flight = in_flight, None
                    if not await self._confirm(*done):
                        continue  # rewound: what was read after it is re-read from the checkpoint
                if not events:
                    self.stats.head = position
                    self._wake.clear()
                    try:
                        await asyncio.wait_for(self._wake.wait(), self.poll_interval)
                    except asyncio.TimeoutError:
                        pass
                    continue
                in_flight = (events, await self._send(producer, events))
            if in_flight is not None:
                done, in_flight = in_flight, None
                await self._confirm(*done)
        finally:
            if in_flight is not None:  # failing or cancelled: the batch is published again from the checkpoint
                for fut in in_flight[1]:
                    fut.cancel()

    @staticmethod
    def _publish_span(topic: str, ev: RecordedEvent) -> dict[str, str]:
        """A producer span per record, child of the command's trace; returns its context."""
        parent = propagate.extract({k: v for k in ("traceparent", "tracestate") if (v := ev.metadata.get(k))})
        carrier: dict[str, str] = {}
        with tracer.start_as_current_span(
            f"{topic} publish", context=parent, kind=SpanKind.PRODUCER,
            attributes={
                "messaging.system": "kafka",
                "messaging.operation.type": "publish",
                "messaging.destination.name": topic,
                "messaging.message.id": str(ev.event_id),
                "messaging.kafka.message.key": ev.stream_id,
                "tpa.global_position": ev.global_position,
            },
        ):
            propagate.inject(carrier)
        return carrier

    async def _send(self, producer: AIOKafkaProducer, events: list[RecordedEvent]) -> list[Any]:
        """Hand a batch to the producer; returns the futures of its acknowledgements."""
        await self._ensure_topics({ct.topic_name(self.service, e.stream_type) for e in events})
        futures = []
        traced = telemetry.recording()
        for ev in events:
            topic = ct.topic_name(self.service, ev.stream_type)
            if traced:
                carrier = self._publish_span(topic, ev)
            else:  # nothing recorded: pass the command's own trace context on
                carrier = {k: v for k in ("traceparent", "tracestate") if (v := ev.metadata.get(k))}
            value = json.dumps(ev.envelope(self.source), ensure_ascii=False,
                               separators=(",", ":")).encode()
            futures.append(await producer.send(
                topic, value=value, key=ev.stream_id.encode(),
                headers=kafka_headers(ev, self.service, self.source, carrier.get("traceparent"),
                                      carrier.get("tracestate")),
            ))
        return futures

    async def _confirm(self, events: list[RecordedEvent], futures: list[Any]) -> bool:
        """Wait for a batch's acknowledgements and write its checkpoint. False when the broker's
        offsets went backwards (it lost its log): the relay rewound to republish everything."""
        results = await asyncio.gather(*futures)  # raises on the first failure: resume from checkpoint
        offsets: dict[tuple[str, int], int] = {}
        lowest: dict[tuple[str, int], int] = {}
        for md in results:
            key = (md.topic, md.partition)
            offsets[key] = max(offsets.get(key, -1), md.offset)
            lowest[key] = min(lowest.get(key, md.offset), md.offset)
        acked = self.stats.partition_offsets
        regressed = [
            f"{t}[{p}] offset {low} <= acknowledged {acked[(t, p)]}"
            for (t, p), low in lowest.items()
            if (t, p) in acked and low <= acked[(t, p)]
        ]
        if regressed:  # offsets only grow on a broker that kept its log
            await self._rewind(regressed)
            return False
        last = events[-1].global_position
        async with self.store.pool.acquire() as conn:
            async with conn.transaction():
                await conn.execute(
                    "UPDATE relay_checkpoint SET position = $2, updated_at = now() WHERE relay = $1",
                    self.name, last)
                await conn.executemany(
                    "INSERT INTO relay_partition_offsets (relay, topic, partition, last_offset,"
                    " batch_first_offset) VALUES ($1, $2, $3, $4, $5)"
                    " ON CONFLICT (relay, topic, partition) DO UPDATE"
                    " SET last_offset = EXCLUDED.last_offset, batch_first_offset = EXCLUDED.batch_first_offset",
                    [(self.name, t, p, o, lowest[(t, p)]) for (t, p), o in offsets.items()])
        self.stats.published += len(events)
        self.stats.checkpoint = last
        self.stats.head = max(self.stats.head, last)
        self.stats.partition_offsets.update(offsets)
        if self.on_published is not None:
            self.on_published(len(events))
        return True


async def _broker_lost_data(bootstrap: str, acknowledged: dict[tuple[str, int], int]) -> list[str]:
    """Partitions whose end offset is at or below an offset the broker acknowledged (so it
    no longer holds that record), and topics that vanished."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                client_id="tpa-relay-check")
    await consumer.start()
    try:
        existing = await consumer.topics()
        lost: list[str] = []
        tps = []
        for (topic, part), _ in acknowledged.items():
            if topic not in existing:
                lost.append(f"{topic} missing")
            else:
                tps.append(TopicPartition(topic, part))
        if tps:
            ends = await consumer.end_offsets(tps)
            for tp in tps:
                if ends.get(tp, 0) <= acknowledged[(tp.topic, tp.partition)]:
                    lost.append(f"{tp.topic}[{tp.partition}] end {ends.get(tp, 0)}"
                                f" <= acknowledged {acknowledged[(tp.topic, tp.partition)]}")
        return lost
    finally:
        await consumer.stop()


async def _quiet_stop(producer: AIOKafkaProducer) -> None:
    try:
        await asyncio.wait_for(producer.stop(), 5)
    except Exception:  # the broker may be gone; nothing more to flush
        log.debug("producer stop failed", exc_info=True)
