"""Relay: the store is the outbox; CloudEvents headers; outage and data-loss recovery."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import defaultdict

import pytest

from contracts.topics import topic_name
from eventkit.events import Metadata, NewEvent
from eventkit.relay import Relay
from eventkit.store import ANY, NO_STREAM, EventStore, StreamAppend
from eventkit.testing import background, read_topic, wait_until


SERVICE = "registry"


def make_relay(pool, infra, name: str, **kw) -> Relay:
    return Relay(name=name, service=SERVICE, store=EventStore(pool),
                 bootstrap_servers=infra.bootstrap_servers, enable_idempotence=infra.idempotence,
                 poll_interval=0.2, lost_data_check_interval=0.5, max_backoff=1.0, **kw)


async def checkpoint(pool, relay: Relay) -> int:
    return await pool.fetchval("SELECT position FROM relay_checkpoint WHERE relay = $1", relay.name)


def mine(records, streams: set[str]):
    return [r for r in records if r.key.decode() in streams]


def per_key_versions(records) -> dict[str, list[int]]:
    out: dict[str, list[int]] = defaultdict(list)
    for r in records:
        out[r.key.decode()].append(json.loads(r.value)["version"])
    return out


def first_occurrences(versions: list[int]) -> list[int]:
    seen: list[int] = []
    for v in versions:
        if v not in seen:
            seen.append(v)
    return seen


async def test_relay_publishes_envelope_key_and_cloudevents_headers(pool, infra, unique):
    service = unique("relay")
    kind = unique("thing")
    store = EventStore(pool)
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    stream = f"hh-{uuid.uuid4()}"
    [e1, e2] = await store.append(stream, kind, NO_STREAM,
                                  [NewEvent("HouseholdRegistered", {"a": 1}), NewEvent("Noted", {"b": "说明"})],
                                  Metadata(actor="u1", correlation_id="c1", traceparent=traceparent))
    relay = make_relay(pool, infra, service)
    topic = topic_name(SERVICE, kind)
    async with background(relay.run()):
        await wait_until(lambda: checkpoint(pool, relay), message="checkpoint")
        await wait_until(lambda: _eq(checkpoint(pool, relay), e2.global_position))
    records = await read_topic(infra.bootstrap_servers, topic)
    assert [r.key.decode() for r in records] == [stream, stream]
    assert [json.loads(r.value)["version"] for r in records] == [1, 2]
    env = json.loads(records[1].value)
    assert env["event_id"] == str(e2.event_id) and env["data"] == {"b": "说明"}
    assert env["metadata"]["actor"] == "u1" and env["metadata"]["recorded_at"]
    headers = dict((k, v.decode()) for k, v in records[0].headers)
    assert headers["ce_specversion"] == "1.0"
    assert headers["ce_id"] == str(e1.event_id)
    assert headers["ce_type"] == "tpa.registry.HouseholdRegistered.v1"
    assert headers["ce_source"] == "/tpa/registry"
    assert headers["ce_subject"] == stream
    assert headers["ce_time"] == e1.recorded_at.isoformat()
    assert headers["content-type"] == "application/json"
    # same trace as the one that appended the event
    assert headers["traceparent"].split("-")[1] == traceparent.split("-")[1]


async def _eq(coro, value):
    return (await coro) == value


async def test_relay_resumes_from_its_checkpoint_without_republishing(pool, infra, unique):
    service = unique("relay")
    kind = unique("thing")
    store = EventStore(pool)
    topic = topic_name(SERVICE, kind)
    await store.append("a", kind, NO_STREAM, [NewEvent("X", {"i": i}) for i in range(3)])
    relay = make_relay(pool, infra, service)
    async with background(relay.run()):
        await wait_until(lambda: _eq(checkpoint(pool, relay), 3))
    [last] = await store.append("a", kind, 3, [NewEvent("X", {"i": 3})])
    relay = make_relay(pool, infra, service)  # a restarted service
    async with background(relay.run()):
        await wait_until(lambda: _eq(checkpoint(pool, relay), last.global_position))
    records = await read_topic(infra.bootstrap_servers, topic)
    assert [json.loads(r.value)["version"] for r in records] == [1, 2, 3, 4]


@pytest.mark.slow
async def test_relay_survives_a_broker_outage_without_losing_or_reordering(pool, infra, unique):
    if not infra.can_restart_broker:
        pytest.skip("needs the embedded broker, which the test can pause")
    service = unique("relay")
    kind = unique("thing")
    store = EventStore(pool)
    topic = topic_name(SERVICE, kind)
    streams = {f"s{i}" for i in range(5)}
    relay = make_relay(pool, infra, service)
    async with background(relay.run()):
        for i in range(3):
            for s in sorted(streams):
                await store.append(s, kind, ANY, [NewEvent("X", {"i": i})])
        await wait_until(lambda: _eq(checkpoint(pool, relay), 15))
        infra.broker.pause()  # the broker stops answering (network partition, GC pause, ...)
        try:
            for i in range(3, 6):
                for s in sorted(streams):
                    await store.append(s, kind, ANY, [NewEvent("X", {"i": i})])
            await asyncio.sleep(3)
            assert await checkpoint(pool, relay) < 30  # nothing is recorded as published
        finally:
            infra.broker.resume()
        await wait_until(lambda: _eq(checkpoint(pool, relay), 30), timeout=60)
    records = mine(await read_topic(infra.bootstrap_servers, topic), streams)
    by_key = per_key_versions(records)
    for s in streams:
        assert first_occurrences(by_key[s]) == [1, 2, 3, 4, 5, 6], by_key[s]


@pytest.mark.slow
async def test_relay_republishes_when_the_broker_lost_its_log(pool, infra, unique):
    if not infra.can_restart_broker:
        pytest.skip("needs the embedded in-memory broker, which loses its log on restart")
    service = unique("relay")
    kind = unique("thing")
    store = EventStore(pool)
    topic = topic_name(SERVICE, kind)
    for i in range(4):
        await store.append(f"k{i % 2}", kind, ANY, [NewEvent("X", {"i": i})])
    relay = make_relay(pool, infra, service)
    async with background(relay.run()):
        await wait_until(lambda: _eq(checkpoint(pool, relay), 4))
        infra.broker.restart()  # in-memory log gone
        await store.append("k0", kind, ANY, [NewEvent("X", {"i": 4})])
        await wait_until(lambda: _eq(checkpoint(pool, relay), 5), timeout=60)

        async def all_back():
            recs = await read_topic(infra.bootstrap_servers, topic)
            return len({(r.key, json.loads(r.value)["version"]) for r in recs}) == 5 and recs
        records = await wait_until(all_back, timeout=30)
    assert relay.stats.republish_rewinds >= 1
    by_key = per_key_versions(records)
    assert first_occurrences(by_key["k0"]) == [1, 2, 3]
    assert first_occurrences(by_key["k1"]) == [1, 2]


async def test_only_one_relay_per_store_publishes(pool, infra, unique):
    name, kind = unique("relay"), unique("thing")
    store = EventStore(pool)
    first, second = make_relay(pool, infra, name), make_relay(pool, infra, name)
    async with background(first.run()):
        await wait_until(lambda: _is_connected(first))
        async with background(second.run()):
            await store.append("x", kind, NO_STREAM, [NewEvent("X", {"i": i}) for i in range(5)])
            await wait_until(lambda: _eq(checkpoint(pool, first), 5))
            await asyncio.sleep(1)
            assert first.stats.published == 5 and second.stats.published == 0  # the replica stands by
    records = await read_topic(infra.bootstrap_servers, topic_name(SERVICE, kind))
    assert [json.loads(r.value)["version"] for r in records] == [1, 2, 3, 4, 5]


async def _is_connected(relay: Relay) -> bool:
    return relay.stats.connected


async def test_relay_recovers_its_session_and_publisher_lock_after_the_database_ends_it(pool, infra, unique):
    service = unique("relay")
    kind = unique("thing")
    store = EventStore(pool)
    relay = make_relay(pool, infra, service)
    topic = topic_name(SERVICE, kind)
    async with background(relay.run()):
        first = f"hh-{uuid.uuid4()}"
        await store.append(first, kind, NO_STREAM, [NewEvent("A", {"n": 1})])
        await wait_until(lambda: _published(infra, topic, {first}), timeout=30, message="the first event")
        old_pid = relay._listen_conn.get_server_pid()  # noqa: SLF001 - the session under test
        await pool.execute("SELECT pg_terminate_backend($1)", old_pid)
        second = f"hh-{uuid.uuid4()}"
        await store.append(second, kind, NO_STREAM, [NewEvent("A", {"n": 2})])
        await wait_until(lambda: _published(infra, topic, {first, second}), timeout=30,
                         message="the event appended after the session was lost")

        async def lock_held_again():
            conn = relay._listen_conn  # noqa: SLF001
            if conn is None or conn.is_closed() or conn.get_server_pid() == old_pid:
                return False
            return await pool.fetchval(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = $1 AND granted",
                conn.get_server_pid())
        await wait_until(lock_held_again, timeout=30, message="the publisher lock on a new session")


async def _published(infra, topic: str, streams: set[str]) -> bool:
    return {r.key.decode() for r in await read_topic(infra.bootstrap_servers, topic)} >= streams


async def test_batches_in_flight_one_after_another_keep_every_key_in_order_exactly_once(pool, infra, unique):
    # The relay reads the next batch while the broker acknowledges the previous one: with batches
    # of 7 events, 200 events go out as about 30 overlapping batches.
    service = unique("relay")
    kind = unique("thing")
    store = EventStore(pool)
    topic = topic_name(SERVICE, kind)
    streams = [f"p{i}" for i in range(5)]
    for i in range(40):
        await store.append_streams([StreamAppend(s, kind, ANY, [NewEvent("X", {"i": i})]) for s in streams])
    last = await store.head_position()
    published: list[int] = []
    relay = make_relay(pool, infra, service, batch_size=7, on_published=published.append)
    async with background(relay.run()):
        await wait_until(lambda: _eq(checkpoint(pool, relay), last), timeout=60)
    records = mine(await read_topic(infra.bootstrap_servers, topic), set(streams))
    assert len(records) == 200 and sum(published) == 200  # exactly once without failures
    assert per_key_versions(records) == {s: list(range(1, 41)) for s in streams}
    assert max(published) <= 7 and len(published) >= 200 // 7


class _BatchSpy:
    """Wraps aiokafka's ``MemoryRecords`` to note the compression codec of each fetched batch."""

    seen: list[tuple[int, int]] = []  # (codec, records in the batch)

    def __init__(self, data):
        from aiokafka.record.memory_records import MemoryRecords

        self._records = MemoryRecords(data)

    def next_batch(self, *args):
        batch = self._records.next_batch(*args)
        if batch is not None:
            _BatchSpy.seen.append((batch.compression_type, batch.last_offset_delta + 1))
        return batch

    def __getattr__(self, name):
        return getattr(self._records, name)


async def test_relay_sends_zstd_batches_of_many_events_that_librdkafka_reads(pool, infra, unique, monkeypatch):
    """ADR 0017: the relay's batches are zstd-compressed and hold many events each; aiokafka
    and librdkafka (kcat) consumers read them as plain records."""
    import shutil
    import subprocess

    import aiokafka.consumer.fetcher as fetcher
    from aiokafka.record.default_records import DefaultRecordBase

    kind = unique("zstd")
    store = EventStore(pool)
    stream = f"hh-{uuid.uuid4()}"
    events = [NewEvent("Noted", {"n": i, "text": "两不愁三保障 " * 20}) for i in range(300)]
    recorded = await store.append(stream, kind, NO_STREAM, events, Metadata(actor="u1", correlation_id="c1"))
    relay = make_relay(pool, infra, unique("relay"))
    assert relay.compression_type == "zstd"
    async with background(relay.run()):
        await wait_until(lambda: _eq(checkpoint(pool, relay), recorded[-1].global_position))

    topic = topic_name(SERVICE, kind)
    _BatchSpy.seen = []
    monkeypatch.setattr(fetcher, "MemoryRecords", _BatchSpy)
    records = await read_topic(infra.bootstrap_servers, topic)
    assert [json.loads(r.value)["data"]["n"] for r in records] == list(range(300))
    assert _BatchSpy.seen and {codec for codec, _ in _BatchSpy.seen} == {DefaultRecordBase.CODEC_ZSTD}
    assert sum(n for _, n in _BatchSpy.seen) == 300
    assert len(_BatchSpy.seen) < 30, _BatchSpy.seen  # not one batch per event

    kcat = shutil.which("kcat")
    if kcat is None:
        pytest.skip("kcat is not installed (apt-get install kcat)")
    result = subprocess.run([kcat, "-C", "-b", infra.bootstrap_servers, "-t", topic, "-o", "beginning", "-e", "-q",
                             "-f", "%k %s\\n"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 300
    assert all(line.split(" ", 1)[0] == stream for line in lines)
    assert sorted(json.loads(line.split(" ", 1)[1])["data"]["n"] for line in lines) == list(range(300))
