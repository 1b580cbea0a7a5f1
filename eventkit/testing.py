"""Helpers for tests of services built on eventkit (no I/O at import)."""

from __future__ import annotations

import asyncio
import json
import time
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Awaitable, Callable

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition


async def wait_until(predicate: Callable[[], Awaitable[Any]], timeout: float = 20.0,
                     interval: float = 0.05, message: str = "condition") -> Any:
    """Poll an async predicate until it returns something truthy."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await predicate()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message} (last value: {last!r})")


async def read_topic(bootstrap_servers: str, topic: str, timeout: float = 5.0) -> list[Any]:
    """Every record currently on a topic (all partitions, from the beginning), in offset order."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic)
        if partitions is None:
            await consumer._client.force_metadata_update()  # noqa: SLF001 - test helper
            partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        if not tps:
            return []
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        records: list[Any] = []
        deadline = time.monotonic() + timeout
        quiet = 0
        # Read past the reported end offsets until the topic is quiet: some brokers (Tansu 0.6)
        # report the end offset as "base offset of the last batch + 1".
        while quiet < 2:
            if time.monotonic() > deadline:
                raise AssertionError(f"could not read {topic} to its end in {timeout}s")
            batch = await consumer.getmany(timeout_ms=200)
            got = [r for recs in batch.values() for r in recs]
            records.extend(got)
            positions = [await consumer.position(tp) for tp in tps]
            at_end = all(pos >= ends[tp] for pos, tp in zip(positions, tps))
            quiet = quiet + 1 if (not got and at_end) else 0
        return sorted(records, key=lambda r: (r.partition, r.offset))
    finally:
        await consumer.stop()


def envelopes(records: list[Any]) -> list[dict[str, Any]]:
    return [json.loads(r.value) for r in records]


@asynccontextmanager
async def producer(bootstrap_servers: str, enable_idempotence: bool = False) -> AsyncIterator[AIOKafkaProducer]:
    p = AIOKafkaProducer(bootstrap_servers=bootstrap_servers, enable_idempotence=enable_idempotence, acks="all")
    await p.start()
    try:
        yield p
    finally:
        await p.stop()


@asynccontextmanager
async def background(coro: Awaitable[Any]) -> AsyncIterator[asyncio.Task]:
    """Run a coroutine (a relay, a projection runner) for the duration of a block."""
    task = asyncio.ensure_future(coro)
    try:
        yield task
    finally:
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        except Exception:
            pass
