"""Composition root of the gateway."""

from __future__ import annotations

from pathlib import Path

import httpx

from eventkit.runtime import ServiceRuntime
from eventkit.settings import ServiceSettings, load_settings

from .api import router


async def _open_client(runtime: ServiceRuntime) -> None:
    runtime.state["http"] = httpx.AsyncClient(timeout=httpx.Timeout(10.0, connect=2.0))


async def _close_client(runtime: ServiceRuntime) -> None:
    client = runtime.state.pop("http", None)
    if client is not None:
        await client.aclose()


def build(settings: ServiceSettings | None = None) -> ServiceRuntime:
    settings = settings or load_settings("gateway")
    return ServiceRuntime(settings, migrations_dir=Path(__file__).parent / "migrations",
                          routers=[router], title="TPA gateway",
                          extra_startup=_open_client, extra_shutdown=_close_client)
