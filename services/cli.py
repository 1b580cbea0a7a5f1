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

    try:
        settings = load_settings(args.service)  # a pydantic ValidationError is a ValueError
        setup_logging(args.service, settings.log_level, settings.log_json)
        setup_tracing(args.service)
        instrument_libraries()
        runtime = _composition_root(args.service).build(settings)
    except (ValueError, RuntimeError) as exc:  # invalid configuration (e.g. a case type definition)
        print(f"tpa serve {args.service}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    port = args.port if args.port is not None else (settings.port or 8000)
    uvicorn.run(runtime.app, host=args.host or settings.host, port=port, log_config=None,
                access_log=False, lifespan="on", timeout_graceful_shutdown=5)  # open SSE streams end
    return 0


# -- projections -------------------------------------------------------------------

def _all_projections() -> dict[str, tuple[str, Any]]:
    found: dict[str, tuple[str, Any]] = {}
    for service in SERVICES:
        module = _composition_root(service)
        for projection in getattr(module, "projections", lambda: [])():
            if projection.name in found:  # names address projections on the command line
                raise RuntimeError(f"projection {projection.name!r} is defined by {found[projection.name][0]} "
                                   f"and {service}")
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

def _local_secret(name: str) -> str:
    """A random secret kept in the state folder (mode 0600), stable across restarts."""
    path = STATE_DIR / "secrets" / name
    if not path.exists():
        import secrets

        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(48))
    return path.read_text().strip()


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


DEMO_COUNTY = "620102"  # Chengguan district of Lanzhou (a real GB/T 2260 code)
ADMIN_USERNAME = "province-admin"  # the first administrator `tpa up` creates (random password)


DEMO_VILLAGE = f"{DEMO_COUNTY}998001"  # a generated village kept for the walking-skeleton registration


async def seed_demo_village(dsn: str) -> str:
    """Make sure the demo county (real GB/T 2260 code) and a dedicated demo village exist."""
    import asyncpg

    from services.registry import regions

    wanted, code = set(), regions.normalise(DEMO_COUNTY)
    while code is not None:
        wanted.add(code)
        code = regions.parent_of(code)
    chain = [r for r in regions.county_divisions() if r.code in wanted]
    chain += [regions.Region.of(DEMO_VILLAGE[:9] + "000", "演示乡", "generated"),
              regions.Region.of(DEMO_VILLAGE, "演示村", "generated")]
    conn = await asyncpg.connect(dsn)
    try:
        await regions.load_regions(conn, chain)
    finally:
        await conn.close()
    return DEMO_VILLAGE


async def _has_households(dsn: str) -> bool:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        return bool(await conn.fetchval("SELECT EXISTS (SELECT 1 FROM events WHERE stream_type = 'household')"))
    finally:
        await conn.close()


def load_demo_county(env: dict[str, str], households: int) -> None:
    """First start: generate a synthetic county and load it through the bulk-import path."""
    out = STATE_DIR / "demo" / f"demo-{DEMO_COUNTY}-{households}.xlsx"
    out.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "services.cli", "demo-data", "--county", DEMO_COUNTY,
                    "--households", str(households), "--seed", "1", "--out", str(out), "--load"],
                   env=env, check=True)


def demo_flow(gateway: str, village: str, tokens: dict[str, dict[str, str]],
              timeout: float = 30.0) -> dict[str, Any]:
    """Register one household through the gateway as the demo village's cadre and wait until
    monitoring counts it; then open its identification case."""
    import random

    from services.registry.identity import check_character

    cadre = tokens["cadre"]
    _, before = _http_json(f"{gateway}/api/v1/villages/{village}/households", headers=cadre)
    rng = random.Random()
    for _ in range(10):  # a person may be registered already (by an earlier demo run): pick another
        first17 = f"{DEMO_COUNTY}{rng.randint(1950, 1999)}0{rng.randint(1, 9)}1{rng.randint(0, 8)}" \
                  f"{rng.randint(0, 999):03d}"
        head = {"name": "王建国", "id_number": first17 + check_character(first17), "relation": "head",
                "sex": "male" if int(first17[16]) % 2 else "female"}
        status, created = _http_json(f"{gateway}/api/v1/households",
                                     {"village_code": village, "address": "一组1号", "members": [head]},
                                     headers={"Idempotency-Key": f"demo-{time.time_ns()}", **cadre})
        if status != 409:
            break
    if status != 201:
        raise RuntimeError(f"registration through the gateway failed: {status} {created}")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _, after = _http_json(f"{gateway}/api/v1/villages/{village}/households", headers=cadre)
        if after and after.get("households", 0) > (before or {}).get("households", 0):
            return {"household": created, "village": after,
                    "case": demo_review(gateway, tokens, created["household_id"], deadline)}
        time.sleep(0.2)
    raise RuntimeError("the registered household did not reach monitoring in time")


def demo_review(gateway: str, tokens: dict[str, dict[str, str]], household_id: str,
                deadline: float) -> dict[str, Any]:
    """Open an identification case for the demo household and let the village-group appraisal
    approve it, so that its first public notice appears on the village's notice board."""
    cadre, committee = tokens["cadre"], tokens["committee"]
    while True:  # the workflow learns of the household from the registry's topic
        status, case = _http_json(f"{gateway}/api/v1/cases", {"case_type": "identification", "household_id":
                                  household_id, "reason": "本户书面申请(演示)"}, headers=cadre)
        if status == 201 or time.monotonic() > deadline or case.get("code") != "household_unknown":
            break
        time.sleep(0.2)
    if status != 201:
        raise RuntimeError(f"opening the demo identification case failed: {status} {case}")
    status, decided = _http_json(f"{gateway}/api/v1/cases/{case['case_id']}/decisions",
                                 {"step_id": "group_appraisal", "decision": "approve"}, headers=committee)
    if status != 200:
        raise RuntimeError(f"deciding the demo case failed: {status} {decided}")
    return decided


def cmd_up(args: argparse.Namespace) -> int:
    from eventkit.embedded import EmbeddedBroker, EmbeddedPostgres, free_port
    from eventkit.embedded import die_with_parent

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
        if not env.get("TPA_REGISTRY_ID_HMAC_KEY"):
            env["TPA_REGISTRY_ID_HMAC_KEY"] = _local_secret("registry-id-hmac-key")
        if not env.get("TPA_FUNDS_ID_HMAC_KEY"):  # keyed hash of payment accounts (a key of its own)
            env["TPA_FUNDS_ID_HMAC_KEY"] = _local_secret("funds-account-hmac-key")
        # Two keyrings: the gateway's access tokens, and the internal identity tokens the gateway
        # signs for the services (never the same key: a service cannot mint API tokens).
        if not env.get("TPA_GATEWAY_TOKEN_KEYS"):
            env["TPA_GATEWAY_TOKEN_KEYS"] = "local=" + _local_secret("gateway-token-key")
        if not env.get("TPA_INTERNAL_TOKEN_KEYS"):
            env["TPA_INTERNAL_TOKEN_KEYS"] = "local=" + _local_secret("internal-token-key")
        urls: dict[str, str] = {}
        for s in SERVICES:
            port_var = f"TPA_{s.upper()}_PORT"
            if not env.get(port_var):
                env[port_var] = str(free_port())
            urls[s] = f"http://127.0.0.1:{env[port_var]}"
            env.setdefault(f"TPA_{s.upper()}_URL", urls[s])
        env.setdefault("TPA_REGISTRY_PUBLIC_BASE_URL", urls["gateway"])  # household-card QR links
        runtime_env = STATE_DIR / RUNTIME_ENV
        runtime_env.unlink(missing_ok=True)
        fd = os.open(runtime_env, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # it holds secrets
        with os.fdopen(fd, "w") as f:
            f.write("".join(f"{k}={env[k]}\n" for k in sorted(env)
                            if k.startswith(("TPA_", "KAFKA_")) and k != "TPA_STATE_DIR"))
        for s in SERVICES:
            # The services die with `tpa up`, even when it is killed without a chance to clean up.
            procs[s] = subprocess.Popen([sys.executable, "-m", "services.cli", "serve", s], env=env,
                                        preexec_fn=die_with_parent())
        _wait_ready(urls, procs, args.timeout)
        gateway = urls["gateway"]
        print(f"\nTPA is up. Gateway: {gateway}  (OpenAPI: {gateway}/docs)")
        admin_password = asyncio.run(bootstrap_admin(env))
        if admin_password:
            print(f"Administrator: user {ADMIN_USERNAME!r} (province {DEMO_COUNTY[:2]}), password {admin_password}\n"
                  f"  (shown once; `tpa users set-password {ADMIN_USERNAME}` sets another)")
        registry_dsn = env["TPA_REGISTRY_DATABASE_URL"]
        if args.demo_households > 0 and not asyncio.run(_has_households(registry_dsn)):
            print(f"Loading a synthetic county ({args.demo_households} households) through the bulk import...")
            load_demo_county(env, args.demo_households)
        if not args.no_demo_event:
            village = asyncio.run(seed_demo_village(registry_dsn))
            result = demo_flow(gateway, village, asyncio.run(demo_tokens(env, gateway, village)))
            print("Walking skeleton: registered household "
                  f"{result['household']['household_id']} through the gateway; monitoring now counts "
                  f"{result['village']['households']} household(s) in village {result['village']['village_code']}.")
            print(f"Review: identification case {result['case']['case_id']} is at step "
                  f"{result['case']['current_step']}; notice board: "
                  f"{gateway}/api/v1/villages/{result['village']['village_code']}/notices")
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


# -- users ------------------------------------------------------------------------------

async def _accounts(env: dict[str, str]) -> Any:
    """The gateway's account store on its own database (for the host operator's commands)."""
    import asyncpg

    from eventkit import migrations as mig
    from eventkit.store import EventStore
    from eventkit.tokens import parse_keyring
    from services.gateway.accounts import Accounts

    dsn = env.get("TPA_GATEWAY_DATABASE_URL")
    if not dsn:
        raise SystemExit("TPA_GATEWAY_DATABASE_URL is not set (is `tpa up` running?)")
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=3)
    async with pool.acquire() as conn:
        await mig.apply(conn, mig.load("eventkit", mig.EVENTKIT_MIGRATIONS)
                        + mig.load("gateway", Path(__file__).parent / "gateway" / "migrations"))
    keys = env.get("TPA_GATEWAY_TOKEN_KEYS") or "unused=" + "A" * 43
    return Accounts(pool, EventStore(pool), parse_keyring(keys))


def _new_password() -> str:
    import secrets

    return "-".join(secrets.token_urlsafe(6) for _ in range(3))  # 24 characters, URL-safe


async def bootstrap_admin(env: dict[str, str]) -> str | None:
    """The first administrator (province of the demo county), with a random password, unless one
    exists: there are no default passwords."""
    accounts = await _accounts(env)
    try:
        if await accounts.pool.fetchval("SELECT 1 FROM accounts WHERE 'administrator' = ANY(roles)"):
            return None
        password = _new_password()
        await accounts.create_user(None, username=ADMIN_USERNAME, roles=["administrator"], level="province",
                                   jurisdiction=DEMO_COUNTY[:2] + "0000", password=password)
        return password
    finally:
        await accounts.pool.close()


async def demo_tokens(env: dict[str, str], gateway: str, village: str) -> dict[str, dict[str, str]]:
    """Demo users of the demo village (a cadre and a village committee member) with fresh random
    passwords, signed in through the token endpoint like any app."""
    import urllib.parse

    accounts = await _accounts(env)
    out: dict[str, dict[str, str]] = {}
    try:
        for key, role in (("cadre", "cadre"), ("committee", "village_committee")):
            name, password = f"demo-{key}", _new_password()
            exists = await accounts.pool.fetchval(
                "SELECT 1 FROM accounts WHERE principal_type = 'user' AND name = $1", name)
            if exists:
                await accounts.operator_set_password(name, password)
            else:
                await accounts.create_user(None, username=name, roles=[role], level="village",
                                           jurisdiction=village, password=password)
            form = urllib.parse.urlencode({"grant_type": "password", "username": name,
                                           "password": password}).encode()
            req = urllib.request.Request(f"{gateway}/api/v1/auth/token", data=form, method="POST", headers={
                "Content-Type": "application/x-www-form-urlencoded"})
            with urllib.request.urlopen(req, timeout=10) as resp:
                out[key] = {"Authorization": f"Bearer {json.loads(resp.read())['access_token']}"}
    finally:
        await accounts.pool.close()
    return out


def cmd_users(args: argparse.Namespace) -> int:
    """Operator commands on user accounts, against the gateway's database."""
    import getpass

    _load_runtime_env()
    env = dict(os.environ)

    async def run() -> int:
        from eventkit.errors import DomainError

        accounts = await _accounts(env)
        try:
            password = args.password_from_stdin and sys.stdin.readline().rstrip("\n")
            if not password:
                password = _new_password() if args.generate else getpass.getpass("New password: ")
            if args.action == "create":
                user = await accounts.create_user(None, username=args.username, roles=args.role,
                                                  level=args.level, jurisdiction=args.jurisdiction,
                                                  password=password)
                print(f"created user {user.username} ({user.id})")
            else:
                await accounts.operator_set_password(args.username, password)
                print(f"password of {args.username} set; their sessions are ended")
            if args.generate:
                print(f"password: {password}  (shown once)")
            return 0
        except DomainError as exc:
            print(f"{exc.code}: {exc}", file=sys.stderr)
            return 2
        finally:
            await accounts.pool.close()

    return asyncio.run(run())


def cmd_bench(args: argparse.Namespace) -> int:
    """The benchmarks (``bench/``; installed with ``pip install -e '.[bench]'`` or ``make bench``)."""
    from bench.cli import main as bench_main

    return bench_main(args.args)


def cmd_keys(args: argparse.Namespace) -> int:
    """Print a new keyring entry (for TPA_GATEWAY_TOKEN_KEYS or TPA_INTERNAL_TOKEN_KEYS)."""
    from eventkit.tokens import keyring_text

    print(keyring_text(args.kid))
    return 0


# -- import households / demo data -----------------------------------------------------

class _Progress:
    """A one-line progress bar on stderr, redrawn with \\r (only when stderr is a terminal)."""

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.last = 0.0
        self.shown = False

    def __call__(self, stage: str, done: int, total: int) -> None:
        if not self.tty:
            return
        now = time.monotonic()
        if 0 < done < total and now - self.last < 0.1:
            return
        self.last = now
        width = 30
        filled = width if not total else width * done // total
        percent = 100 if not total else 100 * done // total
        self.stream.write(f"\r{stage:<11}[{'#' * filled}{'.' * (width - filled)}] {done}/{total} ({percent}%)")
        self.stream.flush()
        self.shown = True

    def close(self) -> None:
        if self.shown:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self.shown = False


def _registry_migrations() -> list:
    from eventkit import migrations as mig

    return (mig.load("eventkit", mig.EVENTKIT_MIGRATIONS)
            + mig.load("registry", Path(__file__).parent / "registry" / "migrations"))


async def _registry_pool(database_url: str) -> Any:
    """A small pool on the registry database with its migrations applied."""
    import asyncpg

    from eventkit import migrations as mig

    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
    try:
        async with pool.acquire() as conn:
            await mig.apply(conn, _registry_migrations())
    except BaseException:
        await pool.close()
        raise
    return pool


def _registry_key(settings: Any) -> bytes | None:
    if not settings.id_hmac_key or len(settings.id_hmac_key) < 32:
        print("TPA_REGISTRY_ID_HMAC_KEY is not set (at least 32 characters; is `tpa up` running?)", file=sys.stderr)
        return None
    return settings.id_hmac_key.encode()


def _cli_actor() -> str:
    import getpass

    try:
        return f"cli:{getpass.getuser()}"
    except Exception:  # noqa: BLE001 - no user name in some containers
        return "cli"


async def _import_one(registry: Any, pool: Any, data: bytes, name: str, args: argparse.Namespace) -> Any:
    from services.registry import importer

    progress = _Progress()
    try:
        return await importer.import_file(registry, pool, data, file_name=name, skip_invalid=args.skip_invalid,
                                          actor=_cli_actor(), batch_size=args.batch_size, progress=progress,
                                          max_bytes=None)
    finally:
        progress.close()


def _print_report(report: Any, limit: int = 20) -> None:
    for e in report.errors[:limit]:
        where = f"{e.sheet} row {e.row}" + (f", {e.column}" if e.column else "")
        print(f"  {where}: {e.reason} [{e.code}]", file=sys.stderr)
    if len(report.errors) > limit:
        print(f"  ... and {len(report.errors) - limit} more error(s)", file=sys.stderr)
    print(report.summary())
    print(f"import id: {report.import_id}")


def cmd_import(args: argparse.Namespace) -> int:
    from eventkit.store import EventStore
    from services.registry import importer
    from services.registry.commands import Registry

    _load_runtime_env()
    settings = load_settings("registry")
    if not settings.database_url:
        print("TPA_REGISTRY_DATABASE_URL is not set (is `tpa up` running?)", file=sys.stderr)
        return 2
    key = _registry_key(settings)
    if key is None:
        return 2
    path = Path(args.file)
    if not path.is_file():
        print(f"{path}: no such file", file=sys.stderr)
        return 2
    data = path.read_bytes()

    async def run() -> Any:
        pool = await _registry_pool(settings.database_url)
        try:
            return await _import_one(Registry(EventStore(pool), key), pool, data, path.name, args)
        finally:
            await pool.close()

    try:
        report = asyncio.run(run())
    except importer.ImportFileError as exc:
        print(f"{path}: {exc}", file=sys.stderr)
        return 1
    _print_report(report)
    if args.report:
        Path(args.report).write_text(report.errors_csv(), encoding="utf-8-sig")
        print(f"error report written to {args.report}")
    return 1 if report.errors and report.households_imported == 0 else 0


def cmd_demo_data(args: argparse.Namespace) -> int:
    import csv as csv_module

    from services.registry import demo_data

    started = time.monotonic()
    if args.province:
        counties = demo_data.generate_province(args.province, args.households_per_county or args.households,
                                               args.seed)
        if not counties:
            print(f"no counties known under province {args.province}", file=sys.stderr)
            return 2
    else:
        counties = [demo_data.generate_county(args.county, args.households, args.seed)]
    fmt = args.format or (Path(args.out).suffix.lstrip(".").lower() if args.out and not args.province else "") \
        or "xlsx"
    if fmt not in ("xlsx", "csv"):
        print(f"unsupported format {fmt!r}: use xlsx or csv", file=sys.stderr)
        return 2
    if args.province:
        folder = Path(args.out or f"demo-{args.province[:2]}-seed{args.seed}")
        folder.mkdir(parents=True, exist_ok=True)
        files = [folder / f"demo-{c.county_code[:6]}.{fmt}" for c in counties]
    else:
        c = counties[0]
        files = [Path(args.out or f"demo-{c.county_code[:6]}-{args.households}-seed{args.seed}.{fmt}")]
    for county, path in zip(counties, files):
        path.write_bytes(county.to_file(fmt))
        regions_path = path.with_name(path.stem + ".regions.csv")
        with regions_path.open("w", encoding="utf-8-sig", newline="") as f:
            w = csv_module.writer(f)
            w.writerow(["code", "level", "parent_code", "name", "source"])
            for r in county.regions:
                w.writerow([r.code, r.level, r.parent_code or "", r.name, r.source])
        s = county.stats()
        print(f"{path}: {s['name']} ({s['county']}): {s['townships']} townships, {s['villages']} villages, "
              f"{s['households']} households, {s['people']} people, median per-capita income "
              f"{s['median_per_capita_income']} yuan; regions in {regions_path.name}")
    print(f"generated in {time.monotonic() - started:.1f}s")

    _load_runtime_env()
    settings = load_settings("registry")
    if not settings.database_url:
        if args.load:
            print("TPA_REGISTRY_DATABASE_URL is not set (is `tpa up` running?): nothing loaded", file=sys.stderr)
            return 2
        print("TPA_REGISTRY_DATABASE_URL is not set: region rows not loaded (import the file later with "
              "`tpa import households`, after loading the regions)")
        return 0
    key = _registry_key(settings) if args.load else None
    if args.load and key is None:
        return 2

    async def run() -> int:
        from eventkit.store import EventStore
        from services.registry.commands import Registry

        pool = await _registry_pool(settings.database_url)
        failed = 0
        try:
            async with pool.acquire() as conn:
                for county in counties:
                    async with conn.transaction():
                        await demo_data.load_regions(conn, county)
            print(f"loaded {sum(len(c.regions) for c in counties)} region rows into the registry database")
            if not args.load:
                return 0
            registry = Registry(EventStore(pool), key)
            for county, path in zip(counties, files):
                report = await _import_one(registry, pool, path.read_bytes(), path.name, args)
                _print_report(report)
                if report.errors and report.households_imported == 0:
                    failed += 1
                profiles = await demo_data.record_village_profiles(registry, pool, county)
                if profiles:
                    print(f"recorded {profiles} village profile(s)")
        finally:
            await pool.close()
        return 1 if failed else 0

    return asyncio.run(run())


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
    p.add_argument("--demo-households", type=int, default=1000,
                   help="on first start, load a synthetic county of this many households (0: none)")
    p.add_argument("--exit-after-start", action="store_true", help="stop again once up (smoke test)")
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("users", help="create users or set passwords (host operator; no default passwords)")
    p.add_argument("action", choices=["create", "set-password"])
    p.add_argument("username")
    p.add_argument("--role", action="append", help="a role (repeatable; create only)")
    p.add_argument("--level", choices=["village", "township", "county", "city", "province"])
    p.add_argument("--jurisdiction", help="6- or 12-digit region code (create only)")
    p.add_argument("--generate", action="store_true", help="generate a random password and print it once")
    p.add_argument("--password-from-stdin", action="store_true", help="read the password from standard input")
    p.set_defaults(func=cmd_users)

    p = sub.add_parser("keys", help="print a new random key for a token keyring")
    p.add_argument("--kid", default=time.strftime("k%Y%m%d"), help="the key id (default: today's date)")
    p.set_defaults(func=cmd_keys)

    p = sub.add_parser("projections", help="list or rebuild read models")
    psub = p.add_subparsers(dest="action", required=True)
    psub.add_parser("list", help="list projections")
    r = psub.add_parser("rebuild", help="rebuild a read model from the beginning of its topics")
    r.add_argument("name")
    p.set_defaults(func=cmd_projections)

    p = sub.add_parser("import", help="bulk imports into the register")
    isub = p.add_subparsers(dest="what", required=True)
    i = isub.add_parser("households", help="import households from a filled template (XLSX or CSV)")
    i.add_argument("file", help="the XLSX or CSV file (see GET /imports/template)")
    i.add_argument("--skip-invalid", action="store_true",
                   help="import the valid households and report the others (default: all or nothing)")
    i.add_argument("--report", metavar="ERRORS_CSV", help="write the errors to this CSV file")
    i.add_argument("--batch-size", type=int, default=500, help="households per transaction")
    i.set_defaults(func=cmd_import)

    p = sub.add_parser("demo-data", help="generate a synthetic county register as an import file (and load it)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--county", default="620102", help="6-digit county code (default 620102)")
    where.add_argument("--province", help="2-digit province code: one file per county into --out (a folder)")
    p.add_argument("--households", type=int, default=2000, help="households in the county")
    p.add_argument("--households-per-county", type=int, help="households per county with --province")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", help="output file (folder with --province)")
    p.add_argument("--format", choices=("xlsx", "csv"), help="default: from --out, else xlsx")
    p.add_argument("--load", action="store_true",
                   help="also import the generated file(s) into the registry database")
    p.add_argument("--skip-invalid", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--batch-size", type=int, default=500, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_demo_data)

    p = sub.add_parser("bench", help="run the benchmarks (bench/README.md; `tpa bench --help`)", add_help=False,
                       prefix_chars="+")  # every argument goes to bench.cli
    p.add_argument("args", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_bench)

    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
