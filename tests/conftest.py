"""Test infrastructure: PostgreSQL and a Kafka-protocol broker for the whole session.

Default (``TPA_TEST_INFRA`` unset or ``embedded``): an embedded PostgreSQL in a
temporary folder and the embedded Tansu broker, started once per session.
``TPA_TEST_INFRA=external``: use ``TPA_TEST_DATABASE_URL`` (a superuser DSN, one
database per test is created from it) and ``KAFKA_BOOTSTRAP_SERVERS``.
``TPA_TEST_INFRA=containers``: real PostgreSQL and Apache Kafka from
testcontainers (needs Docker and ``pip install -e '.[containers]'``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

import asyncpg
import pytest
import pytest_asyncio

from eventkit import migrations as mig

INFRA = os.environ.get("TPA_TEST_INFRA", "embedded")


@dataclass
class Infra:
    admin_dsn: str
    bootstrap_servers: str
    idempotence: bool
    broker: Any = None  # EmbeddedBroker when embedded: tests may restart it

    def dsn_for(self, database: str) -> str:
        base, _, _ = self.admin_dsn.rpartition("/")
        return f"{base}/{database}"

    @property
    def can_restart_broker(self) -> bool:
        return self.broker is not None


@pytest.fixture(scope="session")
def infra() -> Any:
    if INFRA == "external":
        yield Infra(os.environ["TPA_TEST_DATABASE_URL"], os.environ["KAFKA_BOOTSTRAP_SERVERS"],
                    os.environ.get("KAFKA_ENABLE_IDEMPOTENCE", "true").lower() == "true")
        return
    if INFRA == "containers":
        from testcontainers.kafka import KafkaContainer
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:16", driver=None) as pgc, KafkaContainer().with_kraft() as kc:
            yield Infra(pgc.get_connection_url(), kc.get_bootstrap_server(), True)
        return
    if INFRA != "embedded":
        raise pytest.UsageError(f"TPA_TEST_INFRA={INFRA!r}: use embedded, external or containers")
    from eventkit.embedded import EmbeddedBroker, EmbeddedPostgres

    root = Path(tempfile.mkdtemp(prefix="tpa-test-"))
    pg = EmbeddedPostgres(root / "pg", fast=True)
    broker = EmbeddedBroker()
    pg.start()
    broker.start()
    try:
        yield Infra(pg.dsn("postgres"), broker.bootstrap_servers, False, broker)
    finally:
        broker.stop()
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)


@asynccontextmanager
async def _database_factory(infra: Infra) -> AsyncIterator[Callable[[], Awaitable[str]]]:
    created: list[str] = []

    async def create() -> str:
        name = f"t_{uuid.uuid4().hex[:16]}"
        admin = await asyncpg.connect(infra.admin_dsn)
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()
        created.append(name)
        return infra.dsn_for(name)

    try:
        yield create
    finally:
        admin = await asyncpg.connect(infra.admin_dsn)
        try:
            for name in created:
                await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@pytest_asyncio.fixture
async def databases(infra: Infra) -> AsyncIterator[Callable[[], Awaitable[str]]]:
    """A factory of fresh, empty databases (DSNs), dropped after the test."""
    async with _database_factory(infra) as create:
        yield create


@pytest_asyncio.fixture(scope="module")
async def module_databases(infra: Infra) -> AsyncIterator[Callable[[], Awaitable[str]]]:
    """Like ``databases``, for a module's shared platform; dropped after the module."""
    async with _database_factory(infra) as create:
        yield create


@pytest_asyncio.fixture
async def database(databases) -> str:
    """A fresh, empty database for one test; its DSN."""
    return await databases()


@pytest_asyncio.fixture
async def pool(database: str) -> AsyncIterator[Any]:
    """A pool on a fresh database with eventkit's migrations applied."""
    p = await asyncpg.create_pool(database, min_size=1, max_size=20)
    async with p.acquire() as conn:
        await mig.apply(conn, mig.load("eventkit", mig.EVENTKIT_MIGRATIONS))
    yield p
    await p.close()


@pytest.fixture
def unique() -> Callable[[str], str]:
    """Unique names (consumer groups, village codes) so tests never see each other's data."""
    def make(prefix: str = "t") -> str:
        return f"{prefix}{uuid.uuid4().hex[:10]}"
    return make


def village_code() -> str:
    """A random, well-formed 12-digit village code (no level's digits all zero)."""
    n = uuid.uuid4().int
    parts = [(n >> 8 * i) % 90 + 10 for i in range(3)] + [(n >> 40) % 899 + 101, (n >> 60) % 899 + 101]
    return "{:02d}{:02d}{:02d}{:03d}{:03d}".format(*parts)
