"""(4) End-to-end freshness: under a sustained mix of interactive commands through the gateway at
increasing rates, the p50/p95/p99 time from the HTTP 2xx to the change being visible in
monitoring, and the highest sustained rate with p99 under 1 s.

The whole platform runs as ``tpa up`` runs it: registry, monitoring, workflow, funds and gateway
processes (workflow and funds caught up with the imported register before the load starts, so
their projections and process managers compete for the cores as they would). A county
information officer, created with ``tpa users create`` and signed in at the token endpoint,
sends the commands.

The load is open-loop (``bench.worker.freshness``): command i leaves at t0 + i/rate whether or
not earlier ones were answered, so a slow platform shows as growing latency and a completed
rate below the offered one, not as a politely slower client. The mix (``MIX``), evenly
interleaved, a quarter each:

* registrations of a new household (one or two members) in a village of its own (villages made
  for the benchmark), by the county's information officer; visible when the village's
  ``village_households`` row counts it (``GET /villages/{code}/households``);
* income updates (``PUT .../incomes/{year}``) of imported households, by the same officer;
  visible when monitoring's ``mon_risk_events`` holds the household's new version (what the
  return-risk rules read);
* visits: a cadre's check-in at an imported household of the cadre's township
  (``POST /attendance/batches``, one item), by one of ``CADRES`` cadres taking turns; visible
  in ``mon_attendance`` (what the attendance and compliance queries read);
* disbursement requests: a month's minimum-living allowance to a member of an imported
  household (``POST /disbursements``), by the officer; visible in the dashboard's
  ``dash_payments`` (the funds figures of ``GET /dashboards/...``).

Visibility is polled every 20 ms in monitoring's database for all pending commands at once
(cheap for the platform, unlike polling its HTTP API hundreds of times a second). A sample of
the registrations is then checked through the gateway's query API.

A rate counts as sustained when every command got a 2xx (and, for a visit, its item was
accepted) and the platform completed at least 95 % of the offered rate over the window."""

from __future__ import annotations

import asyncio
import json
import math
import secrets
import time
import urllib.parse
from datetime import date, timedelta
from typing import Any

from .context import Ctx
from .infra import log
from .m3_projections import ensure_ledger, progress_of, topic_counts, watch
from .m5_gateway import _request, _token
from .report import Row, Target, fmt

SECTION = "4 freshness"
MIX = {"registration": 0.25, "income": 0.25, "visit": 0.25, "disbursement": 0.25}
KINDS = tuple(MIX)
CADRES = 20  # cadres taking turns for the visits, each in a township of the county
ALLOWANCE = ("minimum_living_tier1", "310.00")  # policy and standard of the disbursement requests
ID_ADDRESS = "110101"  # address code of the bench's new people: none of the generated counties
_NAMES = "王李张刘陈杨黄赵吴周"


def _person(i: int) -> str:
    from services.registry.identity import check_character

    birth = date(1950, 1, 1) + timedelta(days=i % 20000)
    first17 = f"{ID_ADDRESS}{birth:%Y%m%d}{100 + (i // 20000) % 900:03d}"
    return first17 + check_character(first17)


def _villages(county6: str, n: int) -> list[str]:
    out = []
    for t in range(900, 1000):
        for v in range(1, 1000):
            out.append(f"{county6}{t:03d}{v:03d}")
            if len(out) == n:
                return out
    raise ValueError(f"at most {len(out)} bench villages")


async def _load_villages(dsn: str, villages: list[str]) -> None:
    import asyncpg

    from services.registry import regions

    rows = []
    for code in sorted({v[:9] for v in villages}):
        rows.append(regions.Region.of(code + "000", f"测速乡{code[6:]}", "generated"))
    rows += [regions.Region.of(v, f"测速村{v[6:]}", "generated") for v in villages]
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            await regions.load_regions(conn, rows)
    finally:
        await conn.close()


async def _imported(dsn: str, county6: str, n: int) -> list[dict[str, str]]:
    """Up to ``n`` imported, registered households of the county (not the bench's own villages),
    each with its township and an active member."""
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        return [dict(r) for r in await conn.fetch(
            "SELECT h.household_id::text, h.township_code::text AS township,"
            " (SELECT m.member_id::text FROM ledger_members m WHERE m.household_id = h.household_id AND m.active"
            "  ORDER BY m.member_id LIMIT 1) AS member_id"
            " FROM ledger_households h WHERE h.village_code LIKE $1 || '%' AND h.village_code < $2"
            " AND h.status IN ('identified', 'returned_to_poverty', 'lifted_out')"
            " ORDER BY h.household_id LIMIT $3", county6, county6 + "900000", n)]
    finally:
        await conn.close()


def _cadres(ctx: Ctx, env: dict[str, str], households: list[dict[str, str]]) -> list[dict[str, Any]]:
    """``CADRES`` cadre users, each at the township level of one of the townships with the most
    households (taking turns), with the households each may visit."""
    by_township: dict[str, list[str]] = {}
    for h in households:
        by_township.setdefault(h["township"], []).append(h["household_id"])
    townships = sorted(by_township, key=lambda t: (-len(by_township[t]), t))
    cadres = []
    for k in range(CADRES):
        township = townships[k % len(townships)]
        password = "-".join(secrets.token_urlsafe(8) for _ in range(3))
        username = f"bench-cadre-{k:02d}"
        argv = ["users", "create", username, "--role", "cadre", "--level", "township",
                "--jurisdiction", township + "000", "--password-from-stdin"]  # the township's 12-digit code
        _, res = ctx.infra.run_cli(argv, env, stdin=password + "\n")
        if res.returncode != 0:
            raise RuntimeError(f"tpa users create {username} failed: {res.stderr[-1000:]}")
        user_id = res.stdout.rsplit("(", 1)[-1].split(")", 1)[0].strip()
        cadres.append({"username": username, "password": password, "id": user_id,
                       "households": by_township[township]})
    return cadres


def _platform(ctx: Ctx) -> dict[str, Any]:
    """Every service running and caught up with the register; the gateway (re)started last."""
    infra = ctx.infra
    ensure_ledger(ctx)
    if not ctx.monitoring_db:
        ctx.fresh_db("monitoring", "bench_monitoring")
        ctx.monitoring_db = "bench_monitoring"
    dbs = ctx.report.extra.setdefault("freshness_databases", {})
    for service in ("workflow", "funds"):
        if service not in dbs:
            ctx.fresh_db(service, f"bench_{service}")
            dbs[service] = f"bench_{service}"
    if not ctx.gateway_db:
        ctx.fresh_db("gateway", "bench_gateway")
        ctx.gateway_db = "bench_gateway"
    dsns = {"registry": infra.dsn(ctx.registry_db), "monitoring": infra.dsn(ctx.monitoring_db),
            "workflow": infra.dsn(dbs["workflow"]), "funds": infra.dsn(dbs["funds"]),
            "gateway": infra.dsn(ctx.gateway_db)}
    household_events = topic_counts(ctx, ["tpa.registry.household.v1"])["tpa.registry.household.v1"]
    infra.stop_service("gateway")
    for service, wait_for in (("monitoring", ("village-households", "risk-facts")),
                              ("workflow", ("registry-households",)), ("funds", ("household-facts",))):
        if service not in infra.services:
            env = infra.service_env(dsns, "bench")
            svc = infra.start_service(service, env)
            log(f"{service}: waiting for {', '.join(wait_for)} to catch up with {household_events} events")
            have = progress_of(svc.url)
            todo = {name: household_events for name in wait_for if have.get(name, 0) < household_events}
            if todo:
                watch(infra, svc, todo, time.monotonic(), timeout=max(600.0, household_events / 20))
    env = infra.service_env(dsns, "bench", TPA_GATEWAY_RATE_LIMIT_PER_MINUTE="0")
    infra.start_service("gateway", env)
    return env


def run(ctx: Ctx) -> None:
    infra = ctx.infra
    rates = [float(r) for r in ctx.args.freshness_rates.split(",") if r.strip()]
    duration = ctx.args.freshness_seconds
    env = _platform(ctx)
    gateway = infra.services["gateway"].url
    county = ctx.dataset.counties[0]
    planned = {kind: sum(math.ceil(r * duration * share) + 1 for r in rates) * ctx.repeat
               + math.ceil(max(rates) * duration * share) + 1 for kind, share in MIX.items()}  # and one profiled run
    villages = _villages(county, planned["registration"])
    asyncio.run(_load_villages(infra.dsn(ctx.registry_db), villages))
    households = asyncio.run(_imported(infra.dsn(ctx.registry_db), county, 20000))
    if not households:
        raise RuntimeError("no imported household found in the ledger for the income updates, visits and payments")
    members = [h for h in households if h["member_id"]]
    password = "-".join(secrets.token_urlsafe(8) for _ in range(3))
    _, res = infra.run_cli(["users", "create", "bench-officer", "--role", "information_officer", "--level", "county",
                            "--jurisdiction", county, "--password-from-stdin"], env, stdin=password + "\n")
    if res.returncode != 0:
        raise RuntimeError(f"tpa users create failed: {res.stderr[-1000:]}")
    cadres = _cadres(ctx, env, households)
    u = urllib.parse.urlsplit(gateway)
    year = date.today().year - 1
    # Each (member, month) is paid once: the requests go member by member, then month by month back.
    months = [f"{y}-{m:02d}" for y in range(year, 2016, -1) for m in range(12, 0, -1)]
    if planned["disbursement"] > len(members) * len(months):
        raise RuntimeError(f"{planned['disbursement']} disbursement requests planned, {len(members)} members")
    counters = {"person": 0, "village": 0, "visit": 0, "payment": 0}
    results: dict[float, list[dict[str, Any]]] = {}
    probe_villages: list[str] = []

    def one_run(rate: float) -> dict[str, Any]:
        count = {kind: math.ceil(rate * duration * share) + 1 for kind, share in MIX.items()}
        bodies = []
        for _ in range(count["registration"]):
            v = villages[counters["village"]]
            counters["village"] += 1
            i = counters["person"]
            members_ = [{"name": f"{_NAMES[i % 10]}测试", "id_number": _person(i), "relation": "head"}]
            counters["person"] += 1
            if counters["person"] % 2:
                i = counters["person"]
                members_.append({"name": f"{_NAMES[i % 10]}某", "id_number": _person(i), "relation": "10"})
                counters["person"] += 1
            bodies.append({"village_code": v, "body": {"village_code": v, "address": "测速组1号",
                                                       "members": members_}})
        probe_villages.extend(b["village_code"] for b in bodies[:3])
        visits = []
        for _ in range(count["visit"]):
            k = counters["visit"] % CADRES
            mine = cadres[k]["households"]
            visits.append({"cadre": k, "household_id": mine[(counters["visit"] // CADRES) % len(mine)]})
            counters["visit"] += 1
        payments = []
        for _ in range(count["disbursement"]):
            n = counters["payment"]
            h = members[n % len(members)]
            payments.append({"household_id": h["household_id"], "member_id": h["member_id"], "basis": "policy",
                             "policy_code": ALLOWANCE[0], "period": months[n // len(members)],
                             "amount": ALLOWANCE[1]})
            counters["payment"] += 1
        token = _token(gateway, {"grant_type": "password", "username": "bench-officer", "password": password})
        cadre_headers = [{"Authorization": "Bearer " + _token(gateway, {
            "grant_type": "password", "username": c["username"], "password": c["password"]})} for c in cadres]
        out = ctx.worker("freshness", {
            "host": u.hostname, "port": u.port, "headers": {"Authorization": f"Bearer {token}"},
            "rate": rate, "duration": duration, "mix": MIX, "registrations": bodies,
            "incomes": [h["household_id"] for h in households], "year": year,
            "visits": visits, "cadres": [{"id": c["id"], "headers": h} for c, h in zip(cadres, cadre_headers)],
            "disbursements": payments, "monitoring_dsn": infra.dsn(ctx.monitoring_db),
            "poll": 0.02, "drain": 30.0}, timeout=duration + 900)
        out["sustained"] = not out["errors"] and out["completed_rate"] >= 0.95 * rate
        return out

    for rate in rates:
        results[rate] = []
        for r in range(ctx.repeat):
            log(f"freshness: {rate:g} commands/s for {duration:g}s ({r + 1}/{ctx.repeat})")
            out = one_run(rate)
            results[rate].append(out)
            f = out["all"]["freshness_ms"]
            log(f"  completed {out['completed_rate']:.0f}/s, errors {out['errors'] or 'none'}, freshness p50 "
                f"{fmt(f['p50'])} p99 {fmt(f['p99'])} ms, command p99 {fmt(out['all']['command_ms']['p99'])} ms")
        if sum(1 for x in results[rate] if x["sustained"]) * 2 <= len(results[rate]):
            rest = [x for x in rates if x > rate]
            if rest:
                ctx.report.note(f"freshness: {rate:g}/s was not sustained; higher rates "
                                f"({', '.join(f'{x:g}' for x in rest)}) not tried")
            break
    _check_api(ctx, gateway, password, probe_villages)
    rep = ctx.report
    best = None
    for rate, runs in results.items():
        fresh = [x["all"]["freshness_ms"] for x in runs]
        p99 = [f["p99"] for f in fresh]
        rep.add(Row(SECTION, f"{rate:g}/s offered: freshness p50", "ms", [f["p50"] for f in fresh],
                    higher_is_better=False))
        rep.add(Row(SECTION, f"{rate:g}/s offered: freshness p95", "ms", [f["p95"] for f in fresh],
                    higher_is_better=False))
        rep.add(Row(SECTION, f"{rate:g}/s offered: freshness p99", "ms", p99, higher_is_better=False))
        rep.add(Row(SECTION, f"{rate:g}/s offered: command p99 (send to 2xx)", "ms",
                    [x["all"]["command_ms"]["p99"] for x in runs], higher_is_better=False))
        rep.add(Row(SECTION, f"{rate:g}/s offered: completed", "cmd/s", [x["completed_rate"] for x in runs],
                    "offered", [rate] * len(runs)))
        for kind in KINDS:
            rep.add(Row(SECTION, f"{rate:g}/s offered: {kind} freshness p99", "ms",
                        [x[kind]["freshness_ms"]["p99"] for x in runs], higher_is_better=False))
        sustained = sum(1 for x in runs if x["sustained"]) * 2 > len(runs)
        med_p99 = sorted(p99)[len(p99) // 2]
        if sustained and med_p99 is not None and med_p99 < 1000:
            best = rate
    ctx.report.extra["freshness"] = {str(k): v for k, v in results.items()}
    rep.add(Row(SECTION, "highest sustained rate with p99 < 1 s", "cmd/s", [best or 0.0],
                note=f"tried {', '.join(f'{r:g}' for r in results)}/s, {duration:g}s each"))
    met = bool(best and best >= 300)
    rep.targets.append(Target("Freshness p99 < 1 s at >= 300 interactive commands/s",
                              f"highest sustained rate with p99 < 1 s: {fmt(best) if best else 'none'} commands/s "
                              f"(rates tried: {', '.join(f'{r:g}' for r in results)})", met,
                              "mix: registrations, income updates, visits and disbursement requests, a quarter each"))
    if ctx.want_profile(not met):
        from .spy import profile_services

        over = next((rate for rate in results if rate > (best or 0)), None)
        why = "the first rate not sustained with p99 < 1 s" if over is not None else "the highest rate tried"
        over = over if over is not None else max(results)
        profile_services(ctx, "freshness", ["gateway", "registry", "monitoring", "workflow", "funds"],
                         lambda: one_run(over),
                         f"py-spy samples of each service during one more {duration:g}s run at {over:g} commands/s "
                         f"({why}).")


def _check_api(ctx: Ctx, gateway: str, password: str, villages: list[str]) -> None:
    """The read model the load polled is what monitoring's query API answers: a sample through the gateway."""
    token = _token(gateway, {"grant_type": "password", "username": "bench-officer", "password": password})
    wrong = []
    for v in villages[:20]:
        status, data, _ = _request(gateway, "GET", f"/api/v1/villages/{v}/households", None,
                                   {"Authorization": f"Bearer {token}"})
        if status != 200 or json.loads(data).get("households") != 1:
            wrong.append((v, status, data[:200]))
    if wrong:
        ctx.report.note(f"freshness: the query API disagreed with the read model for {len(wrong)} village(s): "
                        f"{wrong[:3]}")
