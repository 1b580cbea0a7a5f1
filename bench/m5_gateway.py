"""(5) Gateway: single-person status check p50/p99 and requests/s at saturation; bulk
comparison of 100 000 ID numbers, seconds end to end.

Set-up through the public paths only: ``tpa users create`` makes an administrator, who signs in
at ``POST /api/v1/auth/token`` and registers a department's client system (scopes
``status:read`` and ``comparison:education``) at ``POST /api/v1/clients``; the system signs in
with the client-credentials grant. The gateway runs with its per-caller rate limit off
(``TPA_GATEWAY_RATE_LIMIT_PER_MINUTE=0``), otherwise 600 requests a minute per caller.

* Latency: one connection, requests back to back (IDs of registered members, purpose
  ``education``), after 50 warm-up requests. Client-side time per request, keep-alive.
* Saturation: closed-loop load from a separate process with 1, 4, 16 and 64 connections for
  a few seconds each; the best requests/s. Limit: the same ladder against the gateway's
  ``/healthz`` (no authentication, no forwarding, no database): what one gateway process's HTTP
  stack serves on this machine with the same client. The load generator shares the cores.
* Comparison: one ``POST /api/v1/comparisons`` with 100 000 IDs (the registered members of the
  first county, the rest valid IDs that are not registered), from sending the body to having
  read the whole answer. Limit: HMAC of the 100 000 IDs and one indexed lookup of the hashes
  in the ledger, in a fresh process."""

from __future__ import annotations

import http.client
import json
import secrets
import time
import urllib.parse
from typing import Any

from .context import Ctx
from .m3_projections import ensure_ledger
from .data import unregistered_ids
from .infra import log
from .report import Row, Target, fmt

SECTION = "5 gateway"
LADDER = (1, 4, 16, 64)


def _request(url: str, method: str, path: str, body: bytes | None, headers: dict[str, str],
             timeout: float = 120.0) -> tuple[int, bytes, float]:
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    try:
        started = time.perf_counter()
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, data, time.perf_counter() - started
    finally:
        conn.close()


def _token(url: str, fields: dict[str, str]) -> str:
    status, data, _ = _request(url, "POST", "/api/v1/auth/token", urllib.parse.urlencode(fields).encode(),
                               {"Content-Type": "application/x-www-form-urlencoded"})
    if status != 200:
        raise RuntimeError(f"token request failed: {status} {data[:500]!r}")
    return json.loads(data)["access_token"]


class Credentials:
    """The department system's credentials; a fresh access token for each step (tokens last 15 min)."""

    def __init__(self, gateway: str, client_id: str, secret: str) -> None:
        self.gateway, self.client_id, self.secret = gateway, client_id, secret

    def headers(self) -> dict[str, str]:
        token = _token(self.gateway, {"grant_type": "client_credentials", "client_id": self.client_id,
                                      "client_secret": self.secret})
        return {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}


def department_system(ctx: Ctx, gateway: str, env: dict[str, str]) -> Credentials:
    county = ctx.dataset.counties[0]
    password = "-".join(secrets.token_urlsafe(8) for _ in range(3))
    _, res = ctx.infra.run_cli(["users", "create", "bench-admin", "--role", "administrator", "--level", "county",
                                "--jurisdiction", county, "--password-from-stdin"], env, stdin=password + "\n")
    if res.returncode != 0 and "taken" not in (res.stderr + res.stdout):
        raise RuntimeError(f"tpa users create failed: {res.stderr[-1000:]}")
    admin = _token(gateway, {"grant_type": "password", "username": "bench-admin", "password": password})
    body = json.dumps({"name": f"bench department system {secrets.token_hex(3)}", "department": "education",
                       "scopes": ["status:read", "comparison:education"], "jurisdiction": county}).encode()
    status, data, _ = _request(gateway, "POST", "/api/v1/clients", body,
                               {"Authorization": f"Bearer {admin}", "Content-Type": "application/json"})
    if status != 201:
        raise RuntimeError(f"registering the client system failed: {status} {data[:500]!r}")
    client = json.loads(data)
    return Credentials(gateway, client["client_id"], client["client_secret"])


def _load(ctx: Ctx, url: str, path: str, method: str, headers: dict[str, str], bodies: list[Any] | None,
          concurrency: int, duration: float | None = None, count: int | None = None) -> dict[str, Any]:
    u = urllib.parse.urlsplit(url)
    args: dict[str, Any] = {"host": u.hostname, "port": u.port, "path": path, "method": method,
                            "headers": headers, "bodies": bodies, "concurrency": concurrency}
    if duration is not None:
        args["duration"] = duration
    if count is not None:
        args["count"] = count
    return ctx.worker("http-load", args)


def _ok(res: dict[str, Any]) -> int:
    return sum(v for k, v in res["statuses"].items() if k.startswith("2"))


def run(ctx: Ctx) -> None:
    assert ctx.registry_db, "the gateway needs the registration measurement first"
    infra = ctx.infra
    ensure_ledger(ctx)
    if not ctx.gateway_db:
        ctx.fresh_db("gateway", "bench_gateway")
        ctx.gateway_db = "bench_gateway"
    env = infra.service_env({"gateway": infra.dsn(ctx.gateway_db), "registry": infra.dsn(ctx.registry_db)}, "bench",
                            TPA_GATEWAY_RATE_LIMIT_PER_MINUTE="0")
    if "gateway" not in infra.services:
        infra.start_service("gateway", env)
    gateway = infra.services["gateway"].url
    creds = department_system(ctx, gateway, env)
    registered = ctx.dataset.registered_ids
    bodies = [{"id_number": i, "purpose": "education"} for i in registered[:2000]]
    duration = ctx.args.gateway_seconds
    lat_count = 1000

    lat_p50, lat_p99, sat, sat_p99, floor, errors = [], [], [], [], [], 0
    for r in range(ctx.repeat):
        headers = creds.headers()
        _load(ctx, gateway, "/api/v1/status-checks", "POST", headers, bodies, 1, count=50)  # warm-up
        log(f"status checks {r + 1}/{ctx.repeat}: {lat_count} sequential")
        res = _load(ctx, gateway, "/api/v1/status-checks", "POST", headers, bodies, 1, count=lat_count)
        errors += res["requests"] - _ok(res)
        lat_p50.append(res["latencies_ms"]["p50"])
        lat_p99.append(res["latencies_ms"]["p99"])
        best = None
        for c in LADDER:
            res = _load(ctx, gateway, "/api/v1/status-checks", "POST", headers, bodies, c, duration=duration)
            errors += res["requests"] - _ok(res)
            rate = _ok(res) / res["seconds"]
            log(f"  {c} connections: {rate:.0f} status checks/s, p99 {res['latencies_ms']['p99']:.1f} ms")
            if best is None or rate > best[0]:
                best = (rate, res["latencies_ms"]["p99"], c)
        sat.append(best[0])
        sat_p99.append(best[1])
        top = 0.0
        for c in LADDER:
            res = _load(ctx, gateway, "/healthz", "GET", {}, None, c, duration=duration)
            top = max(top, _ok(res) / res["seconds"])
        floor.append(top)
        log(f"  best {best[0]:.0f}/s at {best[2]} connections; /healthz {top:.0f}/s")
    rep = ctx.report
    p50 = rep.add(Row(SECTION, "status check p50, one connection", "ms", lat_p50, higher_is_better=False))
    p99 = rep.add(Row(SECTION, "status check p99, one connection", "ms", lat_p99, higher_is_better=False))
    sat_row = rep.add(Row(SECTION, "status checks/s at saturation", "req/s", sat,
                          "GET /healthz on the same gateway, same client", floor))
    rep.add(Row(SECTION, "status check p99 at that load", "ms", sat_p99, higher_is_better=False))
    if errors:
        rep.note(f"{errors} status check(s) were answered with a non-2xx status")

    # -- 100 000-ID comparison ---------------------------------------------------------------------
    ids = registered[:100_000]
    ids = ids + unregistered_ids(ctx.dataset.counties[0], 100_000 - len(ids))
    body = json.dumps({"purpose": "education", "id_numbers": ids}).encode()
    ids_file = infra.state_dir / "comparison-ids.json"
    ids_file.write_text(json.dumps(ids))
    seconds, limits = [], []
    in_register = None
    for r in range(ctx.repeat):
        status, data, took = _request(gateway, "POST", "/api/v1/comparisons", body, creds.headers(), timeout=600)
        if status != 200:
            raise RuntimeError(f"comparison failed: {status} {data[:500]!r}")
        seconds.append(took)
        in_register = json.loads(data).get("summary")
        lim = ctx.worker("comparison-limit", {"dsn": infra.dsn(ctx.registry_db), "hmac_key": infra.hmac_key,
                                              "ids_file": str(ids_file)})
        limits.append(lim["seconds"])
        log(f"comparison {r + 1}/{ctx.repeat}: {took:.2f}s ({len(data) / 1e6:.1f} MB answer), "
            f"limit {lim['seconds']:.2f}s")
    cmp_row = rep.add(Row(SECTION, "comparison of 100 000 IDs, end to end", "s", seconds,
                          "HMAC + one indexed lookup, no HTTP", limits, higher_is_better=False,
                          note=f"{len(registered[:100_000])} registered IDs among them"))
    rep.extra["comparison_summary"] = in_register

    rep.targets.append(Target("Status check p99 < 20 ms", f"p99 {fmt(p99.value)} ms (p50 {fmt(p50.value)} ms), "
                              f"one connection", p99.value is not None and p99.value < 20))
    rep.targets.append(Target("100 000-ID comparison < 5 s", f"{fmt(cmp_row.value)} s end to end",
                              cmp_row.value is not None and cmp_row.value < 5))
    rep.extra["gateway_saturation"] = {"requests_per_second": sat_row.value, "ladder": list(LADDER),
                                       "seconds_per_step": duration}
    missed = not (p99.value is not None and p99.value < 20) or not (cmp_row.value is not None and cmp_row.value < 5)
    if ctx.want_profile(missed):
        from .spy import profile_services

        headers = creds.headers()

        def load() -> None:
            _load(ctx, gateway, "/api/v1/status-checks", "POST", headers, bodies, 1, count=lat_count)
            _request(gateway, "POST", "/api/v1/comparisons", body, headers, timeout=600)

        profile_services(ctx, "gateway", ["gateway", "registry"], load,
                         f"py-spy samples while {lat_count} status checks run one after another on one connection, "
                         "then one 100 000-ID comparison.")
