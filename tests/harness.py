"""Run TPA services in-process on real HTTP ports for end-to-end tests."""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

import uvicorn

from eventkit.embedded import free_port
from eventkit.settings import load_settings


TEST_HMAC_KEY = "test-only-hmac-key-0123456789abcdef0123456789"


@asynccontextmanager
async def serve(runtime: Any, port: int) -> AsyncIterator[str]:
    config = uvicorn.Config(runtime.app, host="127.0.0.1", port=port, lifespan="on", log_config=None,
                            access_log=False, timeout_graceful_shutdown=5,
                            # Idle keep-alive connections outlive a test's waits: a client reusing one the
                            # server just closed (uvicorn's default is 5 s) gets a spurious ReadError.
                            timeout_keep_alive=75)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()  # raises the start-up error
            raise RuntimeError("server stopped during start-up")
        await asyncio.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@asynccontextmanager
async def running_platform(infra: Any, databases: Any, group_prefix: str,
                           services: tuple[str, ...] = ("registry", "monitoring", "gateway"),
                           dsns: dict[str, str] | None = None,
                           build_kwargs: dict[str, dict[str, Any]] | None = None,
                           **setting_overrides: Any) -> AsyncIterator[dict[str, Any]]:
    """Start the given services (in this order) and yield {name: (url, runtime)}.

    `dsns` reuses databases (a restart); the DSNs used are left in it for the next start.
    `build_kwargs` passes extra arguments to a service's `build` (e.g. a workflow clock);
    other keyword arguments override settings of every service.
    """
    dsns = dsns if dsns is not None else {}
    import importlib

    ports = {s: free_port() for s in services}
    urls = {s: f"http://127.0.0.1:{p}" for s, p in ports.items()}
    out: dict[str, Any] = {}
    stack = []
    try:
        for s in services:
            settings = load_settings(
                s, database_url=dsns.get(s) or dsns.setdefault(s, await databases()),
                kafka_bootstrap_servers=infra.bootstrap_servers,
                kafka_enable_idempotence=infra.idempotence, kafka_group_prefix=group_prefix,
                relay_poll_interval=0.2, id_hmac_key=TEST_HMAC_KEY, registry_url=urls.get("registry"),
                monitoring_url=urls.get("monitoring"), workflow_url=urls.get("workflow"),
                funds_url=urls.get("funds"), **setting_overrides)
            runtime = importlib.import_module(f"services.{s}.app").build(settings, **(build_kwargs or {}).get(s, {}))
            cm = serve(runtime, ports[s])
            url = await cm.__aenter__()
            stack.append(cm)
            out[s] = (url, runtime)
        yield out
    finally:
        for cm in reversed(stack):
            await cm.__aexit__(None, None, None)
