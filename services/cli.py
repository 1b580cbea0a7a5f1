"""The `tpa` command: run services, bring the platform up, operate projections."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from eventkit.settings import SERVICES, load_settings

STATE_DIR = Path(os.environ.get("TPA_STATE_DIR", ".tpa"))
RUNTIME_ENV = "runtime.env"


def _composition_root(service: str):
    return importlib.import_module(f"services.{service}.app")


def _load_runtime_env() -> None:
    """Let operator commands find the platform `tpa up` started (explicit env wins)."""
    path = STATE_DIR / RUNTIME_ENV
    if path.is_file():
        for line in path.read_text().splitlines():
            key, sep, value = line.partition("=")
            if sep and key and key not in os.environ:
                os.environ[key] = value


# -- serve -----------------------------------------------------------------------

def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from eventkit.telemetry import instrument_libraries, setup_logging, setup_tracing

    settings = load_settings(args.service)
    setup_logging(args.service, settings.log_level, settings.log_json)
    setup_tracing(args.service)
    instrument_libraries()
    runtime = _composition_root(args.service).build(settings)
    port = args.port if args.port is not None else (settings.port or 8000)
    uvicorn.run(runtime.app, host=args.host or settings.host, port=port, log_config=None,
                access_log=False, lifespan="on")
    return 0


# -- projections -------------------------------------------------------------------

def _all_projections() -> dict[str, tuple[str, Any]]:
    found: dict[str, tuple[str, Any]] = {}
    for service in SERVICES:
        module = _composition_root(service)
        for projection in getattr(module, "projections", lambda: [])():
            found[projection.name] = (service, projection)
    return found


def cmd_projections(args: argparse.Namespace) -> int:
    _load_runtime_env()
    known = _all_projections()
    if args.action == "list":
        for name, (service, projection) in sorted(known.items()):
            print(f"{name}\t{service}\t{','.join(projection.topics)}\tstrict={projection.strict}")
        return 0
    if args.name not in known:
        print(f"unknown projection {args.name!r}; known: {', '.join(sorted(known)) or 'none'}", file=sys.stderr)
        return 2
    service, projection = known[args.name]
    settings = load_settings(service)
    if not settings.database_url:
        print(f"TPA_{service.upper()}_DATABASE_URL is not set (is `tpa up` running?)", file=sys.stderr)
        return 2

    async def run() -> int:
        import asyncpg

        from eventkit import migrations as mig
        from eventkit.projection import rebuild

        pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=2)
        try:
            runtime = _composition_root(service).build(settings)
            async with pool.acquire() as conn:
                await mig.apply(conn, runtime.migrations())
            epoch = await rebuild(pool, projection)
        finally:
            await pool.close()
        print(f"{args.name}: read model cleared; consuming from the beginning as epoch {epoch}")
        return 0

    return asyncio.run(run())


# -- up ------------------------------------------------------------------------------

def _http_json(url: str, body: Any = None, timeout: float = 5.0, headers: dict | None = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET",
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def _wait_ready(urls: dict[str, str], procs: dict[str, subprocess.Popen], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    pending = dict(urls)
    while pending:
        for name, url in list(pending.items()):
            if procs[name].poll() is not None:
                raise RuntimeError(f"{name} exited with code {procs[name].returncode} during start")
            try:
                status, _ = _http_json(url + "/readyz", timeout=1.0)
            except (OSError, ValueError):
                status = 0
            if status == 200:
                del pending[name]
        if pending and time.monotonic() > deadline:
            raise RuntimeError(f"not ready after {timeout:.0f}s: {', '.join(pending)}")
        if pending:
            time.sleep(0.3)


def demo_flow(gateway: str, timeout: float = 30.0) -> dict[str, Any]:
    """Register one household through the gateway and wait until monitoring counts it."""
    village = "620102001001"
    _, before = _http_json(f"{gateway}/api/v1/villages/{village}/households")
    status, created = _http_json(f"{gateway}/api/v1/households",
                                 {"village_code": village, "member_count": 4},
                                 headers={"Idempotency-Key": f"demo-{time.time_ns()}"})
    if status != 201:
        raise RuntimeError(f"registration through the gateway failed: {status} {created}")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _, after = _http_json(f"{gateway}/api/v1/villages/{village}/households")
        if after and after.get("households", 0) > (before or {}).get("households", 0):
            return {"household": created, "village": after}
        time.sleep(0.2)
    raise RuntimeError("the registered household did not reach monitoring in time")


def cmd_up(args: argparse.Namespace) -> int:
    from eventkit.embedded import EmbeddedBroker, EmbeddedPostgres, free_port

    STATE_DIR.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    pg = broker = None
    procs: dict[str, subprocess.Popen] = {}
    stopping = False

    def on_signal(signum, _frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        missing_db = [s for s in SERVICES if not env.get(f"TPA_{s.upper()}_DATABASE_URL")]
        if missing_db:
            pg = EmbeddedPostgres(STATE_DIR / "pgdata")
            pg.start()
            for s in missing_db:
                pg.create_database(f"tpa_{s}")
                env[f"TPA_{s.upper()}_DATABASE_URL"] = pg.dsn(f"tpa_{s}")
            print(f"PostgreSQL (embedded, data in {STATE_DIR / 'pgdata'}): {pg.dsn('postgres')}")
        if not env.get("KAFKA_BOOTSTRAP_SERVERS"):
            broker = EmbeddedBroker()
            broker.start()
            env["KAFKA_BOOTSTRAP_SERVERS"] = broker.bootstrap_servers
            env["KAFKA_ENABLE_IDEMPOTENCE"] = "false"  # the embedded broker rejects it
            print(f"Kafka-protocol broker (embedded Tansu, in memory): {broker.bootstrap_servers}")
        urls: dict[str, str] = {}
        for s in SERVICES:
            port_var = f"TPA_{s.upper()}_PORT"
            if not env.get(port_var):
                env[port_var] = str(free_port())
            urls[s] = f"http://127.0.0.1:{env[port_var]}"
            env.setdefault(f"TPA_{s.upper()}_URL", urls[s])
        (STATE_DIR / RUNTIME_ENV).write_text("".join(
            f"{k}={env[k]}\n" for k in sorted(env)
            if k.startswith(("TPA_", "KAFKA_")) and k != "TPA_STATE_DIR"))
        for s in SERVICES:
            procs[s] = subprocess.Popen([sys.executable, "-m", "services.cli", "serve", s], env=env)
        _wait_ready(urls, procs, args.timeout)
        gateway = urls["gateway"]
        print(f"\nTPA is up. Gateway: {gateway}  (OpenAPI: {gateway}/docs)")
        if not args.no_demo_event:
            result = demo_flow(gateway)
            print("Walking skeleton: registered household "
                  f"{result['household']['household_id']} through the gateway; monitoring now counts "
                  f"{result['village']['households']} household(s) in village {result['village']['village_code']}.")
        if args.exit_after_start:
            return 0
        print("Press Ctrl-C to stop.")
        while not stopping:
            for s, p in procs.items():
                if p.poll() is not None:
                    print(f"{s} exited with code {p.returncode}; stopping", file=sys.stderr)
                    return 1
            time.sleep(0.5)
        return 0
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs.values():
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        if broker is not None:
            broker.stop()
        if pg is not None:
            pg.stop()
        (STATE_DIR / RUNTIME_ENV).unlink(missing_ok=True)
        print("TPA stopped.")


# -- main ------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tpa", description="TPA platform command line")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run one service (HTTP API, relay and projections)")
    p.add_argument("service", choices=SERVICES)
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("up", help="run the whole platform (embedded PostgreSQL and broker unless configured)")
    p.add_argument("--timeout", type=float, default=90.0, help="seconds to wait for readiness")
    p.add_argument("--no-demo-event", action="store_true", help="skip the walking-skeleton registration")
    p.add_argument("--exit-after-start", action="store_true", help="stop again once up (smoke test)")
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("projections", help="list or rebuild read models")
    psub = p.add_subparsers(dest="action", required=True)
    psub.add_parser("list", help="list projections")
    r = psub.add_parser("rebuild", help="rebuild a read model from the beginning of its topics")
    r.add_argument("name")
    p.set_defaults(func=cmd_projections)

    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
