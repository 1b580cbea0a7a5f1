"""Embedded PostgreSQL and Kafka-protocol broker used by `tpa up` and the test suite."""

from __future__ import annotations

import asyncio
import socket

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from eventkit.embedded import EmbeddedBroker, EmbeddedPostgres, free_port
from eventkit.kafka import ensure_topics


def test_free_port_is_bindable() -> None:
    port = free_port()
    assert 0 < port < 65536
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


async def test_postgres_create_database_connect_and_survive_restart(tmp_path_factory: pytest.TempPathFactory) -> None:
    data_dir = tmp_path_factory.mktemp("pg") / "pgdata"
    pg = EmbeddedPostgres(data_dir, fast=True)
    try:
        pg.start()
        assert pg.dsn("tpa_test") == f"postgresql://postgres@127.0.0.1:{pg.port}/tpa_test"
        pg.create_database("tpa_test")
        pg.create_database("tpa_test")  # idempotent

        conn = await asyncpg.connect(pg.dsn("tpa_test"))
        try:
            assert await conn.fetchval("select 1") == 1
            assert await conn.fetchval("show max_connections") == "200"
            assert await conn.fetchval("show fsync") == "off"
            assert await conn.fetchval("show max_wal_size") == "4GB"  # SERVER_SETTINGS
            await conn.execute("create table kept (id int primary key, note text)")
            await conn.execute("insert into kept values (1, 'survives restarts')")
        finally:
            await conn.close()

        port = pg.port
        pg.stop()
        assert not pg.running
        assert (data_dir / "PG_VERSION").exists()

        pg.start()  # no initdb this time; same port
        assert pg.port == port
        conn = await asyncpg.connect(pg.dsn("tpa_test"))
        try:
            assert await conn.fetchval("select note from kept where id = 1") == "survives restarts"
        finally:
            await conn.close()

        # A second handle on the same data dir adopts the running server.
        other = EmbeddedPostgres(data_dir, fast=True)
        other.start()
        assert other.adopted and other.port == port
    finally:
        pg.stop()
    assert not pg.running


async def _topics(bootstrap: str) -> set[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    await admin.start()
    try:
        return {name for name in await admin.list_topics() if not name.startswith("__")}
    finally:
        await admin.close()


async def test_broker_produce_consume_and_lose_data_on_restart() -> None:
    topic = "tpa.test.embedded"
    with EmbeddedBroker() as broker:
        bootstrap = broker.bootstrap_servers
        assert bootstrap == f"127.0.0.1:{broker.port}"

        await ensure_topics(bootstrap, [topic], partitions=1, replication_factor=1)

        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False, acks="all")
        await producer.start()
        try:
            await producer.send_and_wait(topic, key=b"k", value=b"hello")
        finally:
            await producer.stop()

        consumer = AIOKafkaConsumer(
            topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
        )
        await consumer.start()
        try:
            batches = await asyncio.wait_for(consumer.getmany(timeout_ms=5000), timeout=15)
            values = [record.value for records in batches.values() for record in records]
        finally:
            await consumer.stop()
        assert values == [b"hello"]
        assert topic in await _topics(bootstrap)

        port = broker.port
        broker.restart()  # same port, empty in-memory log
        assert broker.port == port and broker.running
        assert topic not in await _topics(bootstrap)

        # An outage: stop, then start again on the same port.
        broker.stop()
        assert not broker.running
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", port)) != 0
        broker.start()
        assert broker.bootstrap_servers == bootstrap
    assert not broker.running
