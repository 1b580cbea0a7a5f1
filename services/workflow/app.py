"""Composition root of the workflow service."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from eventkit.runtime import ServiceRuntime
from eventkit.settings import ServiceSettings, load_settings

from .api import router as command_router
from .board import CaseBoard
from eventkit.clock import Clock, SystemClock
from .commands import Workflow
from .definitions import CASETYPES_DIR, load_case_types
from .households import MonitoringAlerts, RegistryHouseholds
from .queries import router as query_router

log = logging.getLogger("tpa.workflow")


def build(settings: ServiceSettings | None = None, *, clock: Clock | None = None) -> ServiceRuntime:
    """The workflow service. Case types are loaded (and validated) here, so an invalid
    definition stops the service before it serves anything."""
    settings = settings or load_settings("workflow")
    case_types = load_case_types(settings.case_types_dir or CASETYPES_DIR)
    clock = clock or SystemClock()
    households, alerts, board = RegistryHouseholds(), MonitoringAlerts(), CaseBoard(case_types)
    overdue_task: list[asyncio.Task] = []

    async def scan_overdue(workflow: Workflow) -> None:
        while True:
            await asyncio.sleep(settings.overdue_scan_interval)
            try:
                flagged = await workflow.flag_overdue(runtime.pool)
                if flagged:
                    log.info("flagged %d overdue step(s)", flagged)
            except asyncio.CancelledError:
                raise
            except Exception:  # the database may be briefly away; the next round retries
                log.warning("overdue scan failed", exc_info=True)

    async def bind(rt: ServiceRuntime) -> None:
        workflow = Workflow(rt.store, clock, case_types)
        rt.state["workflow"] = workflow
        households.workflow = alerts.workflow = workflow
        if settings.overdue_scan_interval > 0:
            overdue_task.append(asyncio.create_task(scan_overdue(workflow), name="workflow-overdue-scan"))

    async def unbind(rt: ServiceRuntime) -> None:
        for task in overdue_task:
            task.cancel()
        await asyncio.gather(*overdue_task, return_exceptions=True)
        overdue_task.clear()

    runtime = ServiceRuntime(settings, migrations_dir=Path(__file__).parent / "migrations",
                             routers=[command_router, query_router], projections=[households, alerts, board],
                             title="TPA workflow", extra_startup=bind, extra_shutdown=unbind)
    return runtime


def projections() -> list:
    return [RegistryHouseholds(), MonitoringAlerts(), CaseBoard(load_case_types())]
