"""Projection runner: idempotent under redelivery, held streams on gaps, DLQ, strict order, rebuild."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from contracts.topics import dlq_topic, topic_name
from eventkit.kafka import ensure_topics
from eventkit.metrics import Metrics
from eventkit.projection import Message, ProjectionRunner, rebuild
from eventkit.testing import background, producer, read_topic, wait_until


class Tally:
    """Test read model: sum of `n` per stream, plus a log of applied versions."""

    strict = False

    def __init__(self, name: str, topic: str, poison: set[tuple[str, int]] = frozenset()) -> None:
        self.name = name
        self.topics = (topic,)
        self.poison = set(poison)

    async def apply(self, conn: Any, message: Message) -> None:
        if (message.stream_id, message.version) in self.poison:
            raise ValueError(f"cannot apply {message.stream_id} v{message.version}")
        await conn.execute(
            "INSERT INTO tally (stream_id, total, versions) VALUES ($1, $2, ARRAY[$3::int])"
            " ON CONFLICT (stream_id) DO UPDATE SET total = tally.total + EXCLUDED.total,"
            " versions = tally.versions || EXCLUDED.versions",
            message.stream_id, message.data["n"], message.version)

    async def reset(self, conn: Any) -> None:
        await conn.execute("TRUNCATE tally")


class StrictTally(Tally):
    strict = True


def envelope(stream: str, version: int, n: int = 1, event_type: str = "Counted") -> bytes:
    return json.dumps({
        "event_id": str(uuid.uuid4()), "event_type": event_type, "schema_version": 1,
        "source": "/tpa/registry", "stream_id": stream, "stream_type": "tally", "version": version,
        "global_position": version, "data": {"n": n},
        "metadata": {"recorded_at": "2026-11-22T10:00:00+00:00"},
    }).encode()


@pytest.fixture
async def setup(pool, infra, unique):
    await pool.execute("CREATE TABLE tally (stream_id text PRIMARY KEY, total int NOT NULL, versions int[] NOT NULL)")
    topic = topic_name("registry", unique("tally"))
    await ensure_topics(infra.bootstrap_servers, [topic], partitions=3, replication_factor=1)
    return topic


def runner_for(projection, pool, infra, unique, metrics=None) -> ProjectionRunner:
    return ProjectionRunner(projection, service="monitoring", pool=pool, bootstrap_servers=infra.bootstrap_servers,
                            metrics=metrics or Metrics("monitoring"), enable_idempotence=infra.idempotence,
                            max_retries=2, retry_delay=0.01, group_prefix=unique("g"))


async def tally(pool, stream: str):
    row = await pool.fetchrow("SELECT total, versions FROM tally WHERE stream_id = $1", stream)
    return (row["total"], list(row["versions"])) if row else None


async def send(infra, topic: str, items: list[tuple[str, int, int]], *, extra: list[bytes] = ()) -> None:
    async with producer(infra.bootstrap_servers, infra.idempotence) as p:
        for stream, version, n in items:
            await p.send_and_wait(topic, key=stream.encode(), value=envelope(stream, version, n))
        for raw in extra:
            await p.send_and_wait(topic, key=b"junk", value=raw)


async def committed_offsets(infra, group: str, topic: str) -> int:
    c = AIOKafkaConsumer(bootstrap_servers=infra.bootstrap_servers, group_id=group, enable_auto_commit=False)
    await c.start()
    try:
        total = 0
        for p in range(3):
            total += (await c.committed(TopicPartition(topic, p))) or 0
        return total
    finally:
        await c.stop()


async def test_redelivered_and_replayed_events_are_no_ops(setup, pool, infra, unique):
    topic = setup
    projection = Tally("tally", topic)
    # Each event twice (producer retry), then a replay of the whole stream.
    await send(infra, topic, [("a", 1, 1), ("a", 1, 1), ("a", 2, 10), ("b", 1, 5), ("a", 2, 10),
                              ("a", 1, 1), ("a", 2, 10), ("b", 1, 5), ("a", 3, 100)])
    metrics = Metrics("monitoring")
    runner = runner_for(projection, pool, infra, unique, metrics)
    async with background(runner.run()):
        assert await wait_until(lambda: _is(tally(pool, "a"), (111, [1, 2, 3])))
        # "b" may sit in another partition, applied in a transaction of its own: waited for, not raced
        assert await wait_until(lambda: _is(tally(pool, "b"), (5, [1])))
        # offsets are committed (after the transaction) for everything consumed
        await wait_until(lambda: _is(committed_offsets(infra, runner.group_id(1), topic), 9))
    # A restarted runner in a new consumer group re-reads everything: still no double counting.
    runner2 = runner_for(projection, pool, infra, unique)
    async with background(runner2.run()):
        await wait_until(lambda: _is(committed_offsets(infra, runner2.group_id(1), topic), 9))
    assert await tally(pool, "a") == (111, [1, 2, 3])
    assert metrics.duplicates.labels("tally")._value.get() >= 5


async def _is(coro, value):
    return (await coro) == value


async def test_a_gap_holds_the_stream_until_the_missing_version_arrives(setup, pool, infra, unique):
    topic = setup
    metrics = Metrics("monitoring")
    runner = runner_for(Tally("tally", topic), pool, infra, unique, metrics)
    async with background(runner.run()):
        await send(infra, topic, [("s", 1, 1), ("s", 3, 100), ("s", 4, 1000), ("t", 1, 7)])
        await wait_until(lambda: _is(tally(pool, "t"), (7, [1])))
        await wait_until(lambda: _is(tally(pool, "s"), (1, [1])))
        held = await wait_until(runner.held_streams)
        assert held[0]["stream_id"] == "/tpa/registry#s" and held[0]["first_parked"] == 3
        assert "expected version 2" in held[0]["reason"]
        assert metrics.held_streams.labels("tally")._value.get() == 1
        await send(infra, topic, [("s", 2, 10)])  # the missing event (e.g. a relay republish)
        await wait_until(lambda: _is(tally(pool, "s"), (1111, [1, 2, 3, 4])))
        assert await runner.held_streams() == []
        assert metrics.held_streams.labels("tally")._value.get() == 0


async def test_a_poison_event_goes_to_the_dead_letter_topic_and_the_stream_goes_on(setup, pool, infra, unique):
    topic = setup
    metrics = Metrics("monitoring")
    runner = runner_for(Tally("tally", topic, poison={("p", 2)}), pool, infra, unique, metrics)
    async with background(runner.run()):
        await send(infra, topic, [("p", 1, 1), ("p", 2, 10), ("p", 3, 100)], extra=[b"not json"])
        await wait_until(lambda: _is(tally(pool, "p"), (101, [1, 3])))
        dead = await wait_until(lambda: _len(read_topic(infra.bootstrap_servers, dlq_topic(topic)), 2))
    by_key = {r.key: dict(r.headers) for r in dead}
    headers = by_key[b"p"]
    assert b"cannot apply p v2" in headers["tpa_error"]
    assert headers["tpa_original_topic"] == topic.encode()
    assert headers["tpa_projection"] == b"tally"
    assert b"malformed" in by_key[b"junk"]["tpa_error"]
    assert metrics.dead_lettered.labels("tally")._value.get() == 2


async def _len(coro, n):
    items = await coro
    return items if len(items) >= n else None


async def test_a_strict_projection_holds_the_stream_instead_of_skipping(setup, pool, infra, unique):
    topic = setup
    projection = StrictTally("ledger", topic, poison={("L", 2)})
    runner = runner_for(projection, pool, infra, unique)
    async with background(runner.run()):
        await send(infra, topic, [("L", 1, 1), ("L", 2, 10), ("L", 3, 100), ("M", 1, 5)])
        await wait_until(lambda: _is(tally(pool, "M"), (5, [1])))
        held = await wait_until(runner.held_streams)
        assert held[0]["stream_id"] == "/tpa/registry#L" and held[0]["first_parked"] == 2 and held[0]["parked"] == 2
        assert await tally(pool, "L") == (1, [1])
    assert await read_topic(infra.bootstrap_servers, dlq_topic(topic)) == []
    # The fault is fixed (a new release): on start the runner applies the held events in order.
    projection.poison.clear()
    runner2 = runner_for(projection, pool, infra, unique)
    async with background(runner2.run()):
        await wait_until(lambda: _is(tally(pool, "L"), (111, [1, 2, 3])))
        assert await runner2.held_streams() == []


async def test_rebuild_replays_the_read_model_from_the_beginning(setup, pool, infra, unique):
    topic = setup
    projection = Tally("tally", topic)
    runner = runner_for(projection, pool, infra, unique)
    async with background(runner.run()):
        await send(infra, topic, [("r", 1, 1), ("r", 2, 2)])
        await wait_until(lambda: _is(tally(pool, "r"), (3, [1, 2])))
        await pool.execute("UPDATE tally SET total = -999")  # a corrupted read model
        assert await rebuild(pool, projection) == 2
        await wait_until(lambda: _is(tally(pool, "r"), (3, [1, 2])), timeout=30)
        assert runner.epoch == 2


async def test_a_dead_lettered_event_releases_the_events_parked_behind_it(setup, pool, infra, unique):
    topic = setup
    runner = runner_for(Tally("tally", topic, poison={("q", 2)}), pool, infra, unique)
    async with background(runner.run()):
        await send(infra, topic, [("q", 1, 1), ("q", 3, 100)])
        await wait_until(runner.held_streams)
        await send(infra, topic, [("q", 2, 10)])  # arrives, fails, is dead-lettered
        await wait_until(lambda: _is(tally(pool, "q"), (101, [1, 3])))
        assert await runner.held_streams() == []
        dead = await wait_until(lambda: _len(read_topic(infra.bootstrap_servers, dlq_topic(topic)), 1))
        assert dict(dead[0].headers)["tpa_original_topic"] == topic.encode()


class BatchTally(Tally):
    """A Tally that also applies whole batches; it records the size of every batch it was given."""

    def __init__(self, name: str, topic: str, poison: set[tuple[str, int]] = frozenset()) -> None:
        super().__init__(name, topic, poison)
        self.batches: list[int] = []

    async def apply_batch(self, conn: Any, messages) -> None:
        self.batches.append(len(messages))
        for message in messages:  # the same rows as apply, and the same failures
            await self.apply(conn, message)


async def test_a_batch_is_applied_together_and_a_failing_one_event_by_event(setup, pool, infra, unique):
    topic = setup
    metrics = Metrics("monitoring")
    projection = BatchTally("tally", topic, poison={("x", 7)})
    # Sent before the runner starts, so that they arrive in batches of several events.
    await send(infra, topic, [(s, v, v) for v in range(1, 21) for s in ("w", "x", "y")])
    runner = runner_for(projection, pool, infra, unique, metrics)
    async with background(runner.run()):
        await wait_until(lambda: _is(tally(pool, "w"), (210, list(range(1, 21)))))
        await wait_until(lambda: _is(tally(pool, "y"), (210, list(range(1, 21)))))
        # The batch holding x v7 failed as a whole and was applied event by event: x v7 was
        # dead-lettered, the rest of its batch applied once.
        await wait_until(lambda: _is(tally(pool, "x"), (203, [v for v in range(1, 21) if v != 7])))
        dead = await wait_until(lambda: _len(read_topic(infra.bootstrap_servers, dlq_topic(topic)), 1))
    assert [dict(r.headers)["tpa_error"] for r in dead] == [b"ValueError: cannot apply x v7"]
    assert max(projection.batches) > 1  # batches were applied together
    assert metrics.applied.labels("tally")._value.get() == 59
