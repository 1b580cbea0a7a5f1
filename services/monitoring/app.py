"""Composition root of the monitoring service."""

from __future__ import annotations

from pathlib import Path

import asyncio
import logging

import httpx

from eventkit import sse
from eventkit.clock import Clock, SystemClock
from eventkit.store import NOTIFY_CHANNEL
from eventkit.webhooks import WebhookDispatcher
from eventkit.runtime import ServiceRuntime
from eventkit.settings import ServiceSettings, load_settings

from .alert_service import AlertResolutions, Alerts, RiskFacts
from .alert_service import router as alerts_router
from .alerts import OverdueLimits
from .api import router
from .attendance import AttendanceSettings
from .attendance_api import HouseholdGeo, publish_ended_quarter
from .attendance_api import router as attendance_router
from .compliance import DutySettings
from .dashboard import Dashboard
from .dashboard import router as dashboard_router
from .delivery import queue_alert_events
from .delivery import router as delivery_router
from .projections import VillageHouseholds
from .rules import load_thresholds

log = logging.getLogger("tpa.monitoring")


def projections() -> list:
    return [VillageHouseholds(), Dashboard(), HouseholdGeo(), RiskFacts(), AlertResolutions()]


def build(settings: ServiceSettings | None = None, *, clock: Clock | None = None) -> ServiceRuntime:
    """The monitoring service. Thresholds are loaded (and validated) here, so an invalid
    thresholds file stops the service before it serves anything."""
    settings = settings or load_settings("monitoring")
    clock = clock or SystemClock()
    thresholds = load_thresholds()
    risk_facts, resolutions = RiskFacts(), AlertResolutions()
    tasks: list[asyncio.Task] = []

    async def escalate_overdue(alerts: Alerts, runtime: ServiceRuntime) -> None:
        """Escalate overdue alerts, and publish the last ended quarter's duty findings (each once)."""
        while True:
            await asyncio.sleep(settings.overdue_scan_interval)
            try:
                await alerts.escalate_overdue(runtime.pool)
                await publish_ended_quarter(runtime)
            except asyncio.CancelledError:
                raise
            except Exception:  # the database may be briefly away; the next round retries
                log.warning("alert escalation scan failed", exc_info=True)

    async def bind(runtime: ServiceRuntime) -> None:
        alerts = Alerts(runtime.store, clock, thresholds, OverdueLimits(), on_events=queue_alert_events)
        risk_facts.alerts = resolutions.alerts = alerts
        notifier = sse.Notifier()
        client = httpx.AsyncClient(follow_redirects=False)
        dispatcher = WebhookDispatcher(runtime.pool, client)
        runtime.state.update(clock=clock, attendance_settings=AttendanceSettings(), duty_settings=DutySettings(),
                             alerts=alerts, notifier=notifier, webhook_client=client, dispatcher=dispatcher)
        tasks.append(asyncio.create_task(sse.listen_postgres(runtime.pool, NOTIFY_CHANNEL, notifier),
                                         name="alert-stream-listener"))
        tasks.append(asyncio.create_task(dispatcher.run(), name="webhook-dispatcher"))
        if settings.overdue_scan_interval > 0:
            tasks.append(asyncio.create_task(escalate_overdue(alerts, runtime), name="alert-escalation"))

    async def unbind(runtime: ServiceRuntime) -> None:
        if "notifier" in runtime.state:
            runtime.state["notifier"].close()
            runtime.state["dispatcher"].stop()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        tasks.clear()
        if "webhook_client" in runtime.state:
            await runtime.state.pop("webhook_client").aclose()

    return ServiceRuntime(settings, migrations_dir=Path(__file__).parent / "migrations",
                          routers=[router, dashboard_router, attendance_router, delivery_router, alerts_router],
                          projections=[VillageHouseholds(), Dashboard(), HouseholdGeo(), risk_facts, resolutions],
                          title="TPA monitoring", extra_startup=bind, extra_shutdown=unbind)
