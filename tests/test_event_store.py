"""Event store: optimistic concurrency, replay, migrations, and gap-free global order."""

from __future__ import annotations

import asyncio
import random
import uuid

import asyncpg
import pytest

from eventkit import migrations as mig
from eventkit.aggregate import Aggregate, Repository
from eventkit.errors import ConcurrencyError, MigrationError
from eventkit.events import Metadata, NewEvent
from eventkit.store import ANY, NO_STREAM, EventStore, StreamAppend


def ev(kind: str = "Happened", **data) -> NewEvent:
    return NewEvent(kind, data or {"n": 1})


async def test_append_records_every_field(pool):
    store = EventStore(pool)
    occurred = __import__("datetime").datetime(2026, 1, 2, 3, 4, 5, tzinfo=__import__("datetime").timezone.utc)
    meta = Metadata(actor="cadre-7", correlation_id="corr-1", causation_id="cause-1", occurred_at=occurred)
    [e] = await store.append("s-1", "thing", NO_STREAM, [NewEvent("Happened", {"x": "是"}, 2)], meta)
    assert e.version == 1 and e.stream_type == "thing" and e.schema_version == 2
    assert e.global_position >= 1 and isinstance(e.event_id, uuid.UUID)
    assert e.data == {"x": "是"}
    assert e.metadata["actor"] == "cadre-7" and e.metadata["correlation_id"] == "corr-1"
    assert e.metadata["causation_id"] == "cause-1"
    assert e.occurred_at == occurred and e.recorded_at is not None
    env = e.envelope("/tpa/test")
    assert env["metadata"]["occurred_at"] == occurred.isoformat()
    assert env["metadata"]["recorded_at"] == e.recorded_at.isoformat()


async def test_optimistic_concurrency_conflict_is_typed(pool):
    store = EventStore(pool)
    await store.append("s-2", "thing", NO_STREAM, [ev()])
    with pytest.raises(ConcurrencyError) as info:
        await store.append("s-2", "thing", NO_STREAM, [ev()])
    assert info.value.actual == 1 and info.value.expected == 0
    with pytest.raises(ConcurrencyError):
        await store.append("s-2", "thing", 5, [ev()])
    await store.append("s-2", "thing", 1, [ev(), ev()])
    await store.append("s-2", "thing", ANY, [ev()])
    assert [e.version for e in await store.read_stream("s-2")] == [1, 2, 3, 4]


async def test_concurrent_writers_to_one_stream_one_wins(pool):
    store = EventStore(pool)
    await store.append("s-3", "thing", NO_STREAM, [ev()])
    results = await asyncio.gather(
        *[store.append("s-3", "thing", 1, [ev(writer=i)]) for i in range(8)], return_exceptions=True)
    assert sum(1 for r in results if not isinstance(r, Exception)) == 1
    assert all(isinstance(r, ConcurrencyError) for r in results if isinstance(r, Exception))
    assert await store.stream_version("s-3") == 2


async def test_multi_stream_append_is_all_or_nothing(pool):
    store = EventStore(pool)
    await store.append("b", "thing", NO_STREAM, [ev()])
    with pytest.raises(ConcurrencyError):
        await store.append_streams([StreamAppend("a", "thing", NO_STREAM, [ev()]),
                                    StreamAppend("b", "thing", NO_STREAM, [ev()])])
    assert await store.read_stream("a") == []


async def test_events_are_immutable(pool):
    store = EventStore(pool)
    await store.append("s-4", "thing", NO_STREAM, [ev()])
    with pytest.raises(asyncpg.RaiseError):
        await pool.execute("UPDATE events SET data = '{}'")
    with pytest.raises(asyncpg.RaiseError):
        await pool.execute("DELETE FROM events")


class Counter(Aggregate):
    stream_type = "counter"

    def __init__(self, aggregate_id: str) -> None:
        super().__init__(aggregate_id)
        self.total = 0

    def add(self, n: int) -> None:
        self.record("Added", {"n": n})

    def when_Added(self, data):
        self.total += data["n"]


async def test_loading_an_aggregate_replays_its_stream(pool):
    repo = Repository(EventStore(pool), Counter)
    c = Counter("c-1")
    c.add(2)
    c.add(3)
    await repo.save(c)
    loaded = await repo.load("c-1")
    assert loaded.total == 5 and loaded.version == 2
    stale = await repo.load("c-1")
    loaded.add(1)
    await repo.save(loaded)
    stale.add(10)
    with pytest.raises(ConcurrencyError):  # no lost update
        await repo.save(stale)
    assert (await repo.load("c-1")).total == 6


async def test_migrations_are_idempotent_and_guarded(database, tmp_path):
    conn = await asyncpg.connect(database)
    try:
        folder = tmp_path / "m"
        folder.mkdir()
        (folder / "0001_things.sql").write_text("CREATE TABLE things (id int);")
        migrations = mig.load("eventkit", mig.EVENTKIT_MIGRATIONS) + mig.load("svc", folder)
        first = await mig.apply(conn, migrations)
        assert "svc/0001_things.sql" in first
        assert await mig.apply(conn, migrations) == []  # second start: nothing to do
        # concurrent starters serialise
        await asyncio.gather(*(mig.apply(c, migrations) for c in [conn]))
        (folder / "0001_things.sql").write_text("CREATE TABLE things (id bigint);")
        with pytest.raises(MigrationError, match="changed after it was applied"):
            await mig.apply(conn, mig.load("svc", folder))
        (folder / "0001_things.sql").write_text("CREATE TABLE things (id int);")
        (folder / "0002_broken.sql").write_text("CREATE TABLE nope (;")
        with pytest.raises(MigrationError, match="0002_broken.sql failed"):
            await mig.apply(conn, mig.load("svc", folder))
        assert await conn.fetchval("SELECT count(*) FROM schema_migrations WHERE component='svc'") == 1
    finally:
        await conn.close()


async def test_tailing_reader_sees_every_event_once_and_in_order_under_concurrent_appends(pool):
    """The gap problem: positions committed late must never be skipped by a tailing reader."""
    store = EventStore(pool)
    writers, appends_per_writer = 12, 25
    done = asyncio.Event()
    seen: list[int] = []
    seen_ids: list[uuid.UUID] = []

    async def writer(w: int) -> None:
        rnd = random.Random(w)
        for i in range(appends_per_writer):
            async with pool.acquire() as conn:
                async with conn.transaction():
                    # Hold the transaction open for a random while after appending, so commits
                    # land in a different order from the one in which work started.
                    await store.append(f"w{w}-{i % 3}", "thing", ANY,
                                       [ev(w=w, i=i, k=k) for k in range(rnd.randint(1, 4))], conn=conn)
                    await asyncio.sleep(rnd.random() * 0.01)

    async def reader() -> None:
        position = 0
        while True:
            finished = done.is_set()
            batch = await store.read_all(position, 50)
            for e in batch:
                seen.append(e.global_position)
                seen_ids.append(e.event_id)
            if batch:
                position = batch[-1].global_position
            elif finished:
                return
            else:
                await asyncio.sleep(0.001)

    reader_task = asyncio.create_task(reader())
    await asyncio.gather(*(writer(w) for w in range(writers)))
    done.set()
    await reader_task

    stored = [r["global_position"] for r in await pool.fetch("SELECT global_position FROM events ORDER BY 1")]
    assert len(stored) > writers * appends_per_writer
    assert seen == stored, "the tailing reader missed or repeated events"
    assert len(set(seen_ids)) == len(seen_ids)
    assert seen == sorted(seen)


async def test_remembered_command_results_expire_after_the_retention_period(pool):
    from eventkit.idempotency import CommandResult, expire, run_command

    calls = []

    async def handler(conn):
        calls.append(1)
        return CommandResult(201, {"n": len(calls)})

    first = await run_command(pool, handler, key="k1", scope="POST /x", fingerprint="f")
    again = await run_command(pool, handler, key="k1", scope="POST /x", fingerprint="f")
    assert first.body == again.body == {"n": 1} and again.replayed
    assert await expire(pool, 1.0) == 0  # still fresh
    await pool.execute("UPDATE idempotency_keys SET created_at = now() - interval '2 hours'")
    assert await expire(pool, 1.0) == 1
    later = await run_command(pool, handler, key="k1", scope="POST /x", fingerprint="f")
    assert later.body == {"n": 2} and not later.replayed
