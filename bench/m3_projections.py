"""(3) Projections: catch-up from zero of the registry's household ledger and the monitoring
projections, against a raw consume of their topics plus a COPY of the rows they produced; and
the time of ``tpa projections rebuild`` of each read model.

The services run as ``tpa serve registry`` and ``tpa serve monitoring`` processes; progress
is read from their ``/metrics`` (applied + duplicate + dead-lettered events per projection)
every 0.1 s, and a projection is caught up when that reaches the number of records on its
topics. Projections whose topics hold no record (e.g. ``workflow-decisions``) are left out.

* Cold start (per service, every run): the service's read models cleared and epochs bumped
  (``eventkit.projection.rebuild``, what ``tpa projections rebuild`` does), the process started,
  the clock running from the spawn (process start, migrations, consumer group joins included)
  to every projection caught up. Each projection's rate is counted from the first sample that
  shows it applied something to its last event, with all the service's projections running
  at once on the shared cores.
* Rebuild (per projection, every run): ``tpa projections rebuild NAME`` while the service runs,
  the clock running from the command's start to the read model complete (the runner notices the
  new epoch within about 2 s). The rate of one projection working alone is counted as above;
  it is the figure compared with the limit.
* Limit (per projection, every run): a raw consume of its topics from the beginning (manual
  partition assignment, no decoding) plus a binary COPY of the rows it wrote (its tables, found
  from the TRUNCATE/DELETE statements of its ``reset``, and its tracking rows) into empty tables
  of the same definition."""

from __future__ import annotations

import asyncio
import importlib
import re
import time
from typing import Any

from .context import Ctx
from .infra import log, projection_counts
from .report import Row, Target, fmt

SECTION = "3 projections"
SERVICES = ("registry", "monitoring")


class _Recorder:
    """A stand-in connection that records the SQL a projection's ``reset`` runs."""

    def __init__(self) -> None:
        self.sql: list[str] = []

    async def execute(self, sql: str, *args: Any) -> str:
        self.sql.append(sql)
        return ""

    fetch = fetchval = fetchrow = execute


def tables_of(projection: Any) -> list[str]:
    rec = _Recorder()
    asyncio.run(projection.reset(rec))
    tables: list[str] = []
    for sql in rec.sql:
        m = re.match(r"\s*TRUNCATE\s+(?:TABLE\s+)?(.+?)(?:\s+(?:RESTART|CONTINUE|CASCADE|RESTRICT).*)?$",
                     sql, re.I | re.S)
        if m:
            tables += [t.strip() for t in m.group(1).split(",")]
        for d in re.findall(r"DELETE\s+FROM\s+(\w+)", sql, re.I):
            tables.append(d)
    return list(dict.fromkeys(tables))


async def end_offsets(bootstrap: str, topics: list[str]) -> dict[str, int]:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, client_id="bench-offsets")
    await consumer.start()
    try:
        existing = await consumer.topics()
        out = {}
        for t in topics:
            if t not in existing:
                out[t] = 0
                continue
            parts = consumer.partitions_for_topic(t) or set()
            ends = await consumer.end_offsets([TopicPartition(t, p) for p in parts]) if parts else {}
            out[t] = sum(ends.values())
        return out
    finally:
        await consumer.stop()


async def store_counts(dsn: str, service: str) -> dict[str, int]:
    import asyncpg

    from contracts import topics as ct

    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT stream_type, count(*) AS n FROM events GROUP BY stream_type")
    finally:
        await conn.close()
    return {ct.topic_name(service, r["stream_type"]): r["n"] for r in rows}


def topic_counts(ctx: Ctx, topics: list[str]) -> dict[str, int]:
    """Records on each topic: for the registry's topics the events of its store (the relay
    published each once, on an empty broker); other topics must be empty at this point.

    Not the broker's end offsets: tansu's can trail the records it holds (seen: 1 651 reported,
    1 667 readable), so they are no completion criterion."""
    counts = asyncio.run(store_counts(ctx.infra.dsn(ctx.registry_db), "registry"))
    ends = asyncio.run(end_offsets(ctx.infra.broker.bootstrap_servers, topics))
    others = {t: n for t, n in ends.items() if t not in counts and n > 0}
    if others:
        raise RuntimeError(f"unexpected records on {others}: the projections' counts would be unknown")
    return {t: counts.get(t, 0) for t in topics}


async def reset_all(dsn: str, projections: list[Any]) -> None:
    import asyncpg

    from eventkit.projection import rebuild

    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    try:
        for p in projections:
            await rebuild(pool, p)
    finally:
        await pool.close()


def watch(infra: Any, svc: Any, expected: dict[str, int], t0: float, baseline: dict[str, float] | None = None,
          timeout: float = 600.0, interval: float = 0.1) -> dict[str, dict[str, float | None]]:
    """Poll the service's /metrics until each projection's progress (applied + duplicates +
    dead-lettered, above ``baseline``) reaches ``expected``; per projection the seconds after
    ``t0`` of the first sample showing progress and of the sample showing completion."""
    baseline = baseline or {}
    state = {name: {"first": None, "done": None, "held": 0.0, "dead": 0.0} for name in expected}
    deadline = time.monotonic() + timeout
    while True:
        infra.check_alive(svc)
        now = time.monotonic()
        try:
            counts = projection_counts(svc.url)
        except OSError:
            counts = None  # not listening yet
        if counts is not None:
            for name, n in expected.items():
                c = counts.get(name, {})
                progress = c.get("applied", 0) + c.get("duplicates", 0) + c.get("dead", 0) - baseline.get(name, 0)
                s = state[name]
                s["held"], s["dead"] = c.get("held", 0), c.get("dead", 0)
                if progress > 0 and s["first"] is None:
                    s["first"] = now - t0
                if progress >= n and s["done"] is None:
                    s["done"] = now - t0
        if all(s["done"] is not None for s in state.values()):
            return state
        if now > deadline:
            missing = {k: v for k, v in state.items() if v["done"] is None}
            raise RuntimeError(f"projections not caught up after {timeout:.0f}s: {missing}")
        time.sleep(interval)


def progress_of(url: str) -> dict[str, float]:
    return {name: c["applied"] + c["duplicates"] + c["dead"] for name, c in projection_counts(url).items()}


def _rate(n: int, s: dict[str, Any]) -> float | None:
    span = (s["done"] or 0) - (s["first"] or 0)
    return n / span if span > 0 else None


def run(ctx: Ctx) -> None:
    assert ctx.registry_db, "the projections need the registration measurement first"
    infra = ctx.infra
    bootstrap = infra.broker.bootstrap_servers
    if not ctx.monitoring_db:
        ctx.fresh_db("monitoring", "bench_monitoring")
        ctx.monitoring_db = "bench_monitoring"
    dsns = {"registry": infra.dsn(ctx.registry_db), "monitoring": infra.dsn(ctx.monitoring_db)}
    env = infra.service_env(dsns, "bench")
    rep = ctx.report
    rebuilds = not getattr(ctx.args, "no_rebuilds", False)
    if not rebuilds:
        rep.note("projections: cold start only (--no-rebuilds); each projection's rate is taken with the others "
                 "of its service running on the same cores, which understates it against its limit")
    cold_total: dict[str, list[float]] = {}
    for service in SERVICES:
        projections = importlib.import_module(f"services.{service}.app").projections()
        topics = sorted({t for p in projections for t in p.topics})
        ends = topic_counts(ctx, topics)
        expected = {p.name: sum(ends[t] for t in p.topics) for p in projections}
        measured = [p for p in projections if expected[p.name] > 0]
        skipped = [p.name for p in projections if expected[p.name] == 0]
        if skipped:
            rep.note(f"{service}: {', '.join(skipped)} left out (no record on their topics in this run)")
        if not measured:
            continue
        exp = {p.name: expected[p.name] for p in measured}
        cold: dict[str, list[dict]] = {p.name: [] for p in measured}
        rebuilt: dict[str, list[dict]] = {p.name: [] for p in measured}
        limits: dict[str, list[dict]] = {p.name: [] for p in measured}
        cold_total[service] = []
        for r in range(ctx.repeat):
            infra.stop_service(service)
            asyncio.run(reset_all(dsns[service], measured))
            log(f"{service} cold start {r + 1}/{ctx.repeat}: {exp}")
            t0 = time.monotonic()
            svc = infra.start_service(service, env, wait=False)
            state = watch(infra, svc, exp, t0, timeout=max(600.0, sum(exp.values()) / 50))
            for name, s in state.items():
                cold[name].append(s)
                if s["held"] or s["dead"]:
                    rep.note(f"{name}: {s['held']:.0f} held stream(s), {s['dead']:.0f} dead-lettered event(s)")
            cold_total[service].append(max(s["done"] for s in state.values()))
            infra.wait_ready(svc)
            for p in measured:
                if rebuilds:
                    log(f"{service}: tpa projections rebuild {p.name} ({r + 1}/{ctx.repeat})")
                    base = progress_of(svc.url)
                    t0 = time.monotonic()
                    seconds, res = infra.run_cli(["projections", "rebuild", p.name], env)
                    if res.returncode != 0:
                        raise RuntimeError(f"tpa projections rebuild {p.name} failed: {res.stderr[-2000:]}")
                    state = watch(infra, svc, {p.name: exp[p.name]}, t0, baseline=base,
                                  timeout=max(600.0, exp[p.name] / 50))
                    rebuilt[p.name].append({**state[p.name], "command": seconds})
                lim_topics = [t for t in p.topics if ends[t] > 0]
                consume = ctx.worker("consume-limit", {"bootstrap": bootstrap, "topics": lim_topics,
                                                       "expected": exp[p.name]})
                copy = ctx.worker("copy-rows", {"dsn": dsns[service], "tables": tables_of(p), "projection": p.name})
                if consume["messages"] != exp[p.name]:
                    raise RuntimeError(f"raw consume read {consume['messages']} records, expected {exp[p.name]}")
                limits[p.name].append({"consume": consume["seconds"], "copy": copy["seconds"], "rows": copy["rows"]})
        for p in measured:
            n = exp[p.name]
            lim_rates = [n / (x["consume"] + x["copy"]) for x in limits[p.name]]
            if rebuilds:
                rep.add(Row(SECTION, f"{p.name}: events/s alone (after rebuild)", "events/s",
                            [_rate(n, s) for s in rebuilt[p.name]], "raw consume + COPY of its rows", lim_rates,
                            note=f"{n} events"))
            rep.add(Row(SECTION, f"{p.name}: events/s at cold start (with others)", "events/s",
                        [_rate(n, s) for s in cold[p.name]], "raw consume + COPY", lim_rates))
            if rebuilds:
                rep.add(Row(SECTION, f"{p.name}: tpa projections rebuild, s", "s",
                            [s["done"] for s in rebuilt[p.name]], "raw consume + COPY",
                            [x["consume"] + x["copy"] for x in limits[p.name]], higher_is_better=False,
                            note="command start to read model complete"))
                rep.add(Row(SECTION, f"{p.name}: the rebuild command itself", "s",
                            [s["command"] for s in rebuilt[p.name]], note="process start, migrations, reset"))
            rep.add(Row(SECTION, f"{p.name}: limit part: raw consume", "s",
                        [x["consume"] for x in limits[p.name]], note="context"))
            rep.add(Row(SECTION, f"{p.name}: limit part: COPY of its rows", "s",
                        [x["copy"] for x in limits[p.name]], note=f"{limits[p.name][-1]['rows']} rows"))
        rep.add(Row(SECTION, f"{service}: cold start to all caught up", "s", cold_total[service],
                    note=", ".join(p.name for p in measured)))
        # The service is caught up when its slowest projection is: its rate with the others running.
        slowest = min((rep.find(SECTION, f"{p.name}: events/s at cold start (with others)").value or 0.0)
                      for p in measured)
        ctx.timings.setdefault("projection_rates", {})[service] = (slowest, max(exp.values()))
    ctx.timings["projection_seconds"] = sum(sorted(v)[len(v) // 2] for v in cold_total.values() if v)
    ctx.report.extra["projection_services"] = list(cold_total)

    which = "events/s alone (after rebuild)" if rebuilds else "events/s at cold start (with others)"
    alone = [r for r in rep.rows if r.section == SECTION and r.name.endswith(which)]
    for row in alone:
        ratio = row.ratio
        rep.targets.append(Target(f"Projection catch-up >= 0.5 x raw consume + COPY: {row.name.split(':')[0]}",
                                  f"{fmt(row.value)} vs {fmt(row.limit)} events/s = {fmt(ratio, 'ratio')} x",
                                  None if ratio is None else ratio >= 0.5))
    missed = [r for r in alone if r.ratio is not None and r.ratio < 0.5]
    if missed and ctx.profile != "never":
        profile_projection(ctx, missed[0].name.split(":")[0], env)


def profile_projection(ctx: Ctx, name: str, env: dict[str, str]) -> None:
    """py-spy on the owning service during one more ``tpa projections rebuild`` of ``name``."""
    from .spy import profile_services

    service = next(s for s in SERVICES if name in
                   [p.name for p in importlib.import_module(f"services.{s}.app").projections()])
    svc = ctx.infra.services.get(service)
    if svc is None:
        return
    p = next(x for x in importlib.import_module(f"services.{service}.app").projections() if x.name == name)
    n = sum(topic_counts(ctx, list(p.topics)).values())

    def rebuild_once() -> None:
        base = progress_of(svc.url)
        t0 = time.monotonic()
        ctx.infra.run_cli(["projections", "rebuild", name], env)
        watch(ctx.infra, svc, {name: n}, t0, baseline=base, timeout=max(600.0, n / 50))

    profile_services(ctx, f"projection {name}", [service], rebuild_once,
                     f"py-spy samples of the {service} process during one more `tpa projections rebuild {name}` "
                     "(including the seconds before the runner notices the new epoch).")


def ensure_ledger(ctx: Ctx, timeout: float = 3600.0) -> None:
    """The registry service running with its household ledger complete (every household event
    applied), whether or not the projections measurement ran."""
    import asyncpg

    infra = ctx.infra
    if "registry" not in infra.services:
        infra.start_service("registry", infra.service_env({"registry": infra.dsn(ctx.registry_db)}, "bench"))

    async def complete() -> bool:
        conn = await asyncpg.connect(infra.dsn(ctx.registry_db))
        try:
            applied = await conn.fetchval("SELECT coalesce(sum(version), 0) FROM projection_streams"
                                          " WHERE projection = 'household-ledger'")
            events = await conn.fetchval("SELECT count(*) FROM events WHERE stream_type IN ('household', 'village')")
            return applied >= events
        finally:
            await conn.close()

    deadline = time.monotonic() + timeout
    while not asyncio.run(complete()):
        infra.check_alive(infra.services["registry"])
        if time.monotonic() > deadline:
            raise RuntimeError("the household ledger did not catch up")
        time.sleep(0.5)

