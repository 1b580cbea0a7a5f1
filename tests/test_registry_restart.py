"""The register survives a restart of every process (and of the in-memory broker)."""

from __future__ import annotations

import httpx

from eventkit.testing import wait_until

from .conftest import village_code
from .harness import ActAs, running_platform
from .registry_helpers import household, seed_village


async def test_the_register_survives_restarting_every_process(infra, databases, unique):
    village = village_code()
    dsns: dict[str, str] = {}
    group = unique("g")
    async with running_platform(infra, databases, group, dsns=dsns) as platform:
        async with platform["registry"][1].pool.acquire() as conn:
            await seed_village(conn, village)
        async with httpx.AsyncClient(base_url=platform["gateway"][0] + "/api/v1", timeout=10,
                                     auth=ActAs(platform, village=village)) as api:
            body = household(village)
            first = (await api.post("/households", json=body)).json()["household_id"]
            r = await api.put(f"/households/{first}/causes", json={"primary": "illness"})
            assert r.status_code == 200
            await wait_until(lambda: _count(api, village, 1), timeout=30)
        before = await _events(platform["registry"][1], first)

    if infra.can_restart_broker:
        infra.broker.restart()  # the embedded broker forgets everything; the stores do not

    async with running_platform(infra, databases, group, dsns=dsns) as platform:
        async with httpx.AsyncClient(base_url=platform["gateway"][0] + "/api/v1", timeout=10,
                                     auth=ActAs(platform, village=village)) as api:
            assert await _events(platform["registry"][1], first) == before
            r = await api.put(f"/households/{first}/causes", json={"primary": "illness", "others": ["disability"]},
                              headers={"If-Match": '"5"'})
            assert r.status_code == 200, r.text  # the aggregate is rebuilt from its stream
            second = await api.post("/households", json=household(village))
            assert second.status_code == 201
            # Monitoring neither loses nor double-counts after the relay republishes everything.
            await wait_until(lambda: _count(api, village, 2), timeout=60)
            dup = await api.post("/households", json=household(village, [body["members"][0]]))
            assert dup.status_code == 409 and dup.json()["household_id"] == first  # the vault survived too


async def _count(api: httpx.AsyncClient, village: str, n: int) -> bool:
    body = (await api.get(f"/villages/{village}/households")).json()
    return body.get("households") == n


async def _events(runtime, stream_id: str) -> list[tuple[int, str, str]]:
    rows = await runtime.pool.fetch(
        "SELECT version, event_type, data::text FROM events WHERE stream_id = $1 ORDER BY version", stream_id)
    return [(r["version"], r["event_type"], r["data"]) for r in rows]

