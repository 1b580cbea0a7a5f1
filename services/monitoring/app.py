"""Composition root of the monitoring service."""

from __future__ import annotations

from pathlib import Path

from eventkit.runtime import ServiceRuntime
from eventkit.settings import ServiceSettings, load_settings

from .api import router
from .dashboard import Dashboard
from .dashboard import router as dashboard_router
from .projections import VillageHouseholds


def projections() -> list:
    return [VillageHouseholds(), Dashboard()]


def build(settings: ServiceSettings | None = None) -> ServiceRuntime:
    settings = settings or load_settings("monitoring")
    return ServiceRuntime(settings, migrations_dir=Path(__file__).parent / "migrations",
                          routers=[router, dashboard_router], projections=projections(), title="TPA monitoring")
