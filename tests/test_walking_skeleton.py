"""The walking skeleton end to end: gateway -> registry -> relay -> Kafka -> monitoring, one trace."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from eventkit import telemetry
from eventkit.testing import wait_until

from .conftest import village_code
from .harness import ActAs, running_platform
from .registry_helpers import household, seed_village


async def seeded(platform, village: str) -> None:
    async with platform["registry"][1].pool.acquire() as conn:
        await seed_village(conn, village)

EXPORTER = InMemorySpanExporter()


@pytest.fixture(scope="module", autouse=True)
def tracing():
    telemetry.setup_tracing("tests", processor=SimpleSpanProcessor(EXPORTER))
    telemetry.instrument_libraries()
    if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        yield
    else:  # pragma: no cover - setup_tracing failed
        pytest.fail("tracing was not installed")


async def test_a_registration_through_the_gateway_reaches_monitoring_in_one_trace(infra, databases, unique):
    village = village_code()
    async with running_platform(infra, databases, unique("g")) as platform:
        gateway = platform["gateway"][0]
        await seeded(platform, village)
        async with httpx.AsyncClient(base_url=gateway, timeout=10, auth=ActAs(platform, village=village)) as client:
            assert (await client.get(f"/api/v1/villages/{village}/households")).json()["households"] == 0
            EXPORTER.clear()
            r = await client.post("/api/v1/households", json=household(village))
            assert r.status_code == 201, r.text
            household_id = r.json()["household_id"]

            async def counted():
                body = (await client.get(f"/api/v1/villages/{village}/households")).json()
                return body if body["households"] == 1 else None
            body = await wait_until(counted, timeout=30, message="the household in monitoring's read model")
            assert body == {"village_code": village, "households": 1, "people": 3}
            assert household_id

    spans = EXPORTER.get_finished_spans()
    post = [s for s in spans if s.kind == SpanKind.SERVER and s.attributes.get("http.request.method",
            s.attributes.get("http.method")) == "POST" and "/api/v1/households" in s.name]
    assert post, [s.name for s in spans]
    trace_id = post[0].context.trace_id
    in_trace = [s for s in spans if s.context.trace_id == trace_id]
    names = [s.name for s in in_trace]
    kinds = {s.kind for s in in_trace}
    assert any(s.kind == SpanKind.SERVER and s.name.startswith("POST /households") for s in in_trace), names
    assert any(s.kind == SpanKind.CLIENT and "INSERT" in s.name.upper() or
               s.attributes.get("db.system") == "postgresql" for s in in_trace), names
    assert any(s.kind == SpanKind.PRODUCER and s.name.endswith("publish") for s in in_trace), names
    assert any(s.kind == SpanKind.CONSUMER and s.name.endswith("process")
               and s.attributes.get("tpa.projection") == "village-households" for s in in_trace), names
    assert {SpanKind.SERVER, SpanKind.CLIENT, SpanKind.PRODUCER, SpanKind.CONSUMER} <= kinds


async def test_an_idempotency_key_replays_the_first_result_and_appends_nothing(infra, databases, unique):
    village = village_code()
    async with running_platform(infra, databases, unique("g")) as platform:
        gateway, registry = platform["gateway"][0], platform["registry"][1]
        await seeded(platform, village)
        async with httpx.AsyncClient(base_url=gateway, timeout=10, auth=ActAs(platform, village=village)) as client:
            body = household(village)
            key = {"Idempotency-Key": unique("key")}
            # The village network drops the response; the app retries, even concurrently.
            responses = await asyncio.gather(*(client.post("/api/v1/households", json=body, headers=key)
                                               for _ in range(5)))
            assert {r.status_code for r in responses} == {201}
            assert len({r.json()["household_id"] for r in responses}) == 1
            assert sum(r.headers.get("idempotent-replayed") == "true" for r in responses) == 4
            events = await registry.pool.fetchval("SELECT count(*) FROM events")
            assert events == 4  # registration + 3 members, once
            reused = await client.post("/api/v1/households", json={**body, "address": "三组"}, headers=key)
            assert reused.status_code == 422 and reused.json()["code"] == "idempotency_key_reused"
            other = await client.post("/api/v1/households", json=household(village),
                                      headers={"Idempotency-Key": unique("k")})
            assert other.status_code == 201 and other.json()["household_id"] != responses[0].json()["household_id"]
            assert await registry.pool.fetchval("SELECT count(*) FROM events") == 8


async def test_bad_input_gets_a_clear_error_and_nothing_is_written(infra, databases, unique):
    async with running_platform(infra, databases, unique("g")) as platform:
        gateway, registry = platform["gateway"][0], platform["registry"][1]
        async with httpx.AsyncClient(base_url=gateway, timeout=10,
                                     auth=ActAs(platform, village="620102001001")) as client:
            for bad in (household("12345"), household("620102001001", members=[]),
                        {**household("620102001001"), "name": "张三"}):
                r = await client.post("/api/v1/households", json=bad)
                assert r.status_code == 422, r.text
                assert r.json()["detail"]
            r = await client.put("/api/v1/households/00000000-0000-4000-8000-000000000000/causes",
                                 json={"primary": "illness"})
            assert r.status_code == 404 and r.json()["code"] == "household_not_found"
        assert await registry.pool.fetchval("SELECT count(*) FROM events") == 0


async def test_health_readiness_and_metrics(infra, databases, unique):
    async with running_platform(infra, databases, unique("g")) as platform:
        async with httpx.AsyncClient(timeout=10) as client:
            for name, (url, _) in platform.items():
                assert (await client.get(f"{url}/healthz")).json()["status"] == "ok"
                ready = await client.get(f"{url}/readyz")
                assert ready.status_code == 200, ready.text
                assert ready.json()["checks"] == {"database": "ok", "broker": "ok"}
            village = village_code()
            await seeded(platform, village)
            client.auth = ActAs(platform, village=village)
            r = await client.post(f"{platform['gateway'][0]}/api/v1/households", json=household(village))
            assert r.status_code == 201

            async def counted():
                body = (await client.get(f"{platform['gateway'][0]}/api/v1/villages/{village}/households")).json()
                return body["households"] == 1
            await wait_until(counted, timeout=30)
            text = (await client.get(f"{platform['monitoring'][0]}/metrics")).text
            applied = [line for line in text.splitlines()
                       if line.startswith('tpa_projection_applied_events_total{projection="village-households"}')]
            assert applied and float(applied[0].split()[-1]) >= 1
            assert "tpa_projection_consumer_lag" in text and "tpa_projection_held_streams" in text
            reg = (await client.get(f"{platform['registry'][0]}/metrics")).text
            assert 'tpa_events_appended_total{service="registry"} 4.0' in reg
            assert 'tpa_relay_lag_events{relay="registry"}' in reg
