"""Composition root of the funds service."""

from __future__ import annotations

from pathlib import Path

from eventkit.clock import Clock, SystemClock
from eventkit.runtime import ServiceRuntime
from eventkit.settings import ServiceSettings, load_settings

from .api import router
from .commands import Funds
from .ledger import FundsLedger
from .ledger_queries import router as ledger_router
from .policies import load_catalogue
from .projections import RegistryHouseholds
from .reconciliation import router as statements_router


def projections() -> list:
    return [RegistryHouseholds(), FundsLedger()]


def build(settings: ServiceSettings | None = None, *, clock: Clock | None = None) -> ServiceRuntime:
    """The funds service. The policy catalogue is loaded (and validated) here, so an invalid
    catalogue stops the service before it serves anything."""
    settings = settings or load_settings("funds")
    catalogue = load_catalogue()
    clock = clock or SystemClock()
    households = RegistryHouseholds()
    key = settings.id_hmac_key.encode() if settings.id_hmac_key else None
    if key is not None and len(key) < 32:
        raise RuntimeError("TPA_FUNDS_ID_HMAC_KEY must be at least 32 characters")

    async def bind(runtime: ServiceRuntime) -> None:
        funds = Funds(runtime.store, clock, catalogue, key)
        runtime.state["funds"] = funds
        households.funds = funds

    return ServiceRuntime(settings, migrations_dir=Path(__file__).parent / "migrations",
                          routers=[router, statements_router, ledger_router],
                          projections=[households, FundsLedger()], title="TPA funds",
                          extra_startup=bind)
