"""Composition root of the funds service.

Secrets, one per purpose: ``TPA_FUNDS_ID_HMAC_KEY`` keys the hash of payment
accounts (the funds service's own); ``TPA_REGISTRY_ID_HMAC_KEY``, the registry's
key of the hash of resident ID numbers, is read only if the deployment gives it to
the funds process too, and then only to match subsidy records named by ID number
(``services/funds/subsidy_api.py``); without it those records are refused (503) and
departments name people by household and member id.
"""

from __future__ import annotations

import os
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
from .subsidy_api import router as subsidies_router


def projections() -> list:
    return [RegistryHouseholds(), FundsLedger()]


def build(settings: ServiceSettings | None = None, *, clock: Clock | None = None,
          id_number_key: bytes | None = None) -> ServiceRuntime:
    """The funds service. The policy catalogue is loaded (and validated) here, so an invalid
    catalogue stops the service before it serves anything. ``id_number_key``: the registry's ID-number
    hashing key (default: ``TPA_REGISTRY_ID_HMAC_KEY`` from the environment, if set)."""
    settings = settings or load_settings("funds")
    catalogue = load_catalogue()
    clock = clock or SystemClock()
    households = RegistryHouseholds()
    key = settings.id_hmac_key.encode() if settings.id_hmac_key else None
    if key is not None and len(key) < 32:
        raise RuntimeError("TPA_FUNDS_ID_HMAC_KEY must be at least 32 characters")
    if id_number_key is None and os.environ.get("TPA_REGISTRY_ID_HMAC_KEY"):
        id_number_key = os.environ["TPA_REGISTRY_ID_HMAC_KEY"].encode()
    if id_number_key is not None and len(id_number_key) < 32:
        raise RuntimeError("TPA_REGISTRY_ID_HMAC_KEY must be at least 32 characters")

    async def bind(runtime: ServiceRuntime) -> None:
        funds = Funds(runtime.store, clock, catalogue, key, id_number_key)
        runtime.state["funds"] = funds
        households.funds = funds

    return ServiceRuntime(settings, migrations_dir=Path(__file__).parent / "migrations",
                          routers=[router, statements_router, ledger_router, subsidies_router],
                          projections=[households, FundsLedger()], title="TPA funds",
                          extra_startup=bind)
