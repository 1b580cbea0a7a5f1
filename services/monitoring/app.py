"""Composition root of the monitoring service."""

from __future__ import annotations

from pathlib import Path

from eventkit.clock import Clock, SystemClock
from eventkit.runtime import ServiceRuntime
from eventkit.settings import ServiceSettings, load_settings

from .api import router
from .attendance import AttendanceSettings
from .attendance_api import HouseholdGeo
from .attendance_api import router as attendance_router
from .compliance import DutySettings
from .dashboard import Dashboard
from .dashboard import router as dashboard_router
from .projections import VillageHouseholds


def projections() -> list:
    return [VillageHouseholds(), Dashboard(), HouseholdGeo()]


def build(settings: ServiceSettings | None = None, *, clock: Clock | None = None) -> ServiceRuntime:
    settings = settings or load_settings("monitoring")
    clock = clock or SystemClock()

    async def bind(runtime: ServiceRuntime) -> None:
        runtime.state.update(clock=clock, attendance_settings=AttendanceSettings(), duty_settings=DutySettings())

    return ServiceRuntime(settings, migrations_dir=Path(__file__).parent / "migrations",
                          routers=[router, dashboard_router, attendance_router], projections=projections(),
                          title="TPA monitoring", extra_startup=bind)
