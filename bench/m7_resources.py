"""(7) Resource use: peak RSS per process and PostgreSQL database size per million events.

Peak RSS: each worker process reports its own ``ru_maxrss`` (the highest over the runs of that
task); each service process's ``VmHWM`` is read before it stops and at the end; the broker's
``VmHWM`` likewise; PostgreSQL's figure is the highest sum of PSS (shared pages divided among
the processes that map them, so shared buffers count once) over the postmaster and all its
backends, sampled every second during the whole run.

Database sizes: ``pg_database_size`` of each database left at the end of the run, less its size
when it was created (empty, with its migrations and region rows), and
``pg_total_relation_size('events')`` (table, indexes, TOAST), divided by the events they hold.
At small sizes fixed costs (a page per index, the free space map) still dominate: read the
county and province runs."""

from __future__ import annotations

import asyncio
import resource
from typing import Any

from .context import Ctx
from .report import Row

SECTION = "7 resources"


async def _sizes(ctx: Ctx) -> dict[str, dict[str, Any]]:
    import asyncpg

    out: dict[str, dict[str, Any]] = {}
    names = {"registry": ctx.registry_db, "monitoring": ctx.monitoring_db, "gateway": ctx.gateway_db,
             "peer (eventsourcing)": ctx.report.extra.get("peer_database")}
    names.update(ctx.report.extra.get("freshness_databases", {}))
    registry_events = ctx.registry_events or None
    for label, db in names.items():
        if not db:
            continue
        conn = await asyncpg.connect(ctx.infra.dsn(db))
        try:
            size = await conn.fetchval("SELECT pg_database_size(current_database())")
            entry: dict[str, Any] = {"database": db, "bytes": size}
            has_events = await conn.fetchval("SELECT to_regclass('events') IS NOT NULL")
            if label.startswith("peer"):
                tables = [r["table_name"] for r in await conn.fetch(
                    "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
                    " AND table_name LIKE '%\\_events'")]
                n = sum([await conn.fetchval(f'SELECT count(*) FROM "{t}"') for t in tables])
                entry["events"] = n
                if tables:
                    entry["events_table_bytes"] = sum([await conn.fetchval(
                        "SELECT pg_total_relation_size($1::regclass)", t) for t in tables])
            elif has_events:
                entry["events"] = await conn.fetchval("SELECT count(*) FROM events")
                entry["events_table_bytes"] = await conn.fetchval("SELECT pg_total_relation_size('events')")
            if label == "monitoring" and registry_events:
                entry["per"] = "registry events consumed"
                entry["events"] = registry_events
            n = entry.get("events")
            base = ctx.db_baselines.get(db)
            if base is not None:
                entry["baseline_bytes"] = base
                entry["growth_bytes"] = size - base
            if n:
                entry["mib_per_million_events"] = (size - (base or 0)) / 2 ** 20 / n * 1e6
                if entry.get("events_table_bytes") and label != "monitoring":
                    entry["events_table_mib_per_million"] = entry["events_table_bytes"] / 2 ** 20 / n * 1e6
            out[label] = entry
        finally:
            await conn.close()
    return out


def run(ctx: Ctx) -> None:
    infra = ctx.infra
    infra.note_peaks()
    peaks: dict[str, int | None] = {}
    for name, kib in sorted(infra.service_peaks.items()):
        peaks[f"service: tpa serve {name}"] = kib
    for task, kib in sorted(ctx.worker_peaks.items()):
        peaks[f"worker: {task}"] = kib
    peaks["broker: tansu"] = infra.broker_peak_rss_kib()
    if infra.pg_sampler is not None:
        peaks[f"postgresql: all processes (PSS, peak of {infra.pg_sampler.peak_processes})"] = infra.pg_sampler.peak_kib
    peaks["bench harness (this process)"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    sizes = asyncio.run(_sizes(ctx))
    ctx.report.extra["resources"] = {"peak_rss_kib": peaks, "database": sizes}
    for name, kib in peaks.items():
        if kib:
            ctx.report.add(Row(SECTION, f"peak RSS: {name}", "MiB", [kib / 1024]))
    for label, d in sizes.items():
        if d.get("mib_per_million_events") is not None:
            per = d.get("per", "events")
            grown = "growth since created (migrations, regions)" if "baseline_bytes" in d else "whole database"
            ctx.report.add(Row(SECTION, f"DB size per 1M {per}: {label}", "MiB", [d["mib_per_million_events"]],
                               note=f"{grown}; {d['bytes'] / 2 ** 20:.0f} MiB in all for {d['events']} events"))
        if d.get("events_table_mib_per_million") is not None:
            ctx.report.add(Row(SECTION, f"events table per 1M events: {label}", "MiB",
                               [d["events_table_mib_per_million"]]))
