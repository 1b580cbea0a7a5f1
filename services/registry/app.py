"""Composition root of the registry service."""

from __future__ import annotations

import asyncio
from pathlib import Path

from eventkit.runtime import ServiceRuntime
from eventkit.settings import ServiceSettings, load_settings

from .api import router
from .commands import Registry
from .decisions import WorkflowDecisions
from .exchange_api import router as exchange_router, run_jobs
from .import_api import router as import_router
from .ledger import HouseholdLedger
from .queries import router as ledger_router


def projections() -> list:
    return [WorkflowDecisions(), HouseholdLedger()]


def build(settings: ServiceSettings | None = None) -> ServiceRuntime:
    settings = settings or load_settings("registry")
    if not settings.id_hmac_key or len(settings.id_hmac_key) < 32:
        raise RuntimeError("TPA_REGISTRY_ID_HMAC_KEY must be set to a secret of at least 32 characters")
    key = settings.id_hmac_key.encode()
    decisions = WorkflowDecisions()

    async def bind(runtime: ServiceRuntime) -> None:
        registry = Registry(runtime.store, key)
        runtime.state["registry"] = registry
        runtime.state["jobs_wakeup"] = asyncio.Event()
        decisions.registry = registry
        runtime.spawn(run_jobs(runtime), "comparison-jobs")

    return ServiceRuntime(settings, migrations_dir=Path(__file__).parent / "migrations",
                          routers=[router, ledger_router, import_router, exchange_router], projections=[decisions, HouseholdLedger()],
                          title="TPA registry",
                          extra_startup=bind)
