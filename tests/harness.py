"""Run TPA services in-process on real HTTP ports for end-to-end tests."""

from __future__ import annotations

import asyncio
import re
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from typing import Any, AsyncIterator

import httpx
import uvicorn

from eventkit import tokens
from eventkit.embedded import free_port
from eventkit.principal import Principal, region_code
from eventkit.regioncodes import level_of
from eventkit.settings import load_settings


TEST_HMAC_KEY = "test-only-hmac-key-0123456789abcdef0123456789"
# Test-only keyrings (fixed, so that tests can mint tokens the services accept).
TEST_TOKEN_KEYS = tokens.keyring_text("test-api", b"test-only-api-token-key-0123456789abcdef")
TEST_INTERNAL_KEYS = tokens.keyring_text("test-internal", b"test-only-internal-token-key-0123456789ab")
API_KEYRING = tokens.parse_keyring(TEST_TOKEN_KEYS)
INTERNAL_KEYRING = tokens.parse_keyring(TEST_INTERNAL_KEYS)


def principal(roles: str | tuple[str, ...], jurisdiction: str, user_id: str | None = None) -> Principal:
    """A user principal; the level is the jurisdiction's."""
    roles_t = (roles,) if isinstance(roles, str) else tuple(roles)
    code = region_code(jurisdiction)
    return Principal("user", user_id or f"{roles_t[0].replace('_', '-')}-{code}", roles_t, level_of(code), code)


def client_principal(client_id: str, scopes: tuple[str, ...], jurisdiction: str) -> Principal:
    code = region_code(jurisdiction)
    return Principal("client", client_id, (), level_of(code), code, tuple(sorted(scopes)))


async def ensure_account(gateway_runtime: Any, who: Principal) -> None:
    """Make the gateway know ``who`` as it is (created, or given these roles), without a password:
    tests mint its tokens with the test keyring instead of logging in."""

    accounts = gateway_runtime.state["accounts"]
    async with gateway_runtime.pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", who.subject)
        row = await conn.fetchrow("SELECT roles, scopes, jurisdiction, active FROM accounts WHERE principal_type = $1"
                                  " AND principal_id = $2", who.type, who.id)
        if row is not None and row["active"] and tuple(row["roles"]) == who.roles and \
                tuple(row["scopes"]) == who.scopes and row["jurisdiction"] == who.jurisdiction:
            return
        now = accounts.now()
        if who.type == "user":
            user = await accounts.users.load(who.id, conn=conn)
            if not user.exists:
                name = re.sub(r"[^a-z0-9]+", "-", who.id.lower()).strip("-")
                user.create(username=("u-" + name)[:32].rstrip("-"), roles=who.roles, level=who.level,
                            jurisdiction=who.jurisdiction, created_by="test-harness", now=now)
            else:
                user.change_roles(roles=who.roles, level=who.level, jurisdiction=who.jurisdiction,
                                  changed_by="test-harness", now=now)
            await accounts._save_user(conn, user, "test-harness")
        else:
            from eventkit.principal import DEPARTMENT_SCOPES

            client = await accounts.clients.load(who.id, conn=conn)
            if client.exists:
                raise ValueError(f"client {who.id} exists with other scopes or jurisdiction: use another id")
            department = next((DEPARTMENT_SCOPES[s] for s in who.scopes if s in DEPARTMENT_SCOPES), "other")
            client.register(name=who.id, department=department, scopes=who.scopes, jurisdiction=who.jurisdiction,
                            registered_by="test-harness", now=now)
            await accounts._save_client(conn, client, "test-harness")


def bearer(who: Principal) -> dict[str, str]:
    token = tokens.issue_access_token(who, API_KEYRING, now=datetime.now(timezone.utc))
    return {"Authorization": f"Bearer {token.token}"}

def internal_headers(who: Principal | None) -> dict[str, str]:
    """The header a service accepts only from the gateway (None: an anonymous caller)."""
    return {tokens.INTERNAL_IDENTITY_HEADER: tokens.internal_token_for(who, INTERNAL_KEYRING,
                                                                        now=datetime.now(timezone.utc))}

# Who does what in tests that are not about authorisation: the usual post for each action,
# placed over the test's village.
STAFF: dict[str, tuple[str, str]] = {
    "household:read": ("information_officer", "county"),
    "household:write": ("information_officer", "county"),
    "household:read_personal": ("information_officer", "county"),
    "case:read": ("information_officer", "county"),
    "case:open": ("information_officer", "county"),
    "case:decide": ("county_office", "county"),
    "funds:read": ("county_office", "county"),
    "funds:manage": ("county_office", "county"),
    "funds:pay": ("county_office", "county"),
    "funds:request": ("information_officer", "county"),
    "funds:declare": ("village_committee", "village"),
    "funds:review": ("township_reviewer", "township"),
    "alerts:read": ("operator", "county"),
    "alerts:manage": ("operator", "county"),
    "attendance:record": ("cadre", "village"),
    "audit:read": ("auditor", "county"),
}
_CUT = {"village": 12, "township": 9, "county": 6}

def staff(action: str, village: str) -> Principal:
    role, level = STAFF[action]
    return principal(role, village[:_CUT[level]].ljust(12, "0"))

def _route_patterns() -> list[tuple[str, re.Pattern[str], tuple[str, ...] | None]]:
    from services.gateway.api import ROUTE_ACTIONS

    out = []
    for (method, template), actions in ROUTE_ACTIONS.items():
        regex = re.sub(r"\\{\w+\\}", "[^/]+", re.escape(template))
        out.append((method, re.compile(f"^{regex}$"), actions))
    return out

class ActAs(httpx.Auth):
    """Authenticates each request of a test client, through the gateway (a bearer token of an
    account it creates) or straight to a service (an internal identity token).

    ``who`` fixes the principal; otherwise ``village`` picks the usual post for the action of the
    route (``STAFF``), and public routes go anonymous."""

    def __init__(self, platform: dict[str, Any] | None = None, *, who: Principal | None = None,
                 village: str | None = None) -> None:
        self.gateway = platform["gateway"][1] if platform and "gateway" in platform else None
        self.who = who
        self.village = village
        self._patterns: list[Any] | None = None

    def pick(self, method: str, path: str) -> Principal | None:
        if self.who is not None:
            return self.who
        if self._patterns is None:
            self._patterns = _route_patterns()
        api_path = path if path.startswith("/api/v1") else "/api/v1" + path
        actions: tuple[str, ...] | None = ("household:write",)
        for m, pattern, acts in self._patterns:
            if m == method and pattern.match(api_path):
                actions = acts
                break
        if actions is None:
            return None
        if self.village is None:
            raise RuntimeError(f"ActAs needs a village or a principal for {method} {path}")
        return staff(actions[0], self.village)

    async def async_auth_flow(self, request: httpx.Request):
        if "authorization" in request.headers or tokens.INTERNAL_IDENTITY_HEADER.lower() in request.headers:
            yield request  # the test set its own credentials
            return
        who = self.pick(request.method, request.url.path)
        if request.url.path.startswith("/api/v1"):
            if who is not None:
                if self.gateway is not None:
                    await ensure_account(self.gateway, who)
                request.headers.update(bearer(who))
        else:
            request.headers.update(internal_headers(who))
        yield request

@asynccontextmanager
async def serve(runtime: Any, port: int) -> AsyncIterator[str]:
    config = uvicorn.Config(runtime.app, host="127.0.0.1", port=port, lifespan="on", log_config=None,
                            access_log=False, timeout_graceful_shutdown=5,
                            # Idle keep-alive connections outlive a test's waits: a client reusing one the
                            # server just closed (uvicorn's default is 5 s) gets a spurious ReadError.
                            timeout_keep_alive=75)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()  # raises the start-up error
            raise RuntimeError("server stopped during start-up")
        await asyncio.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task

@asynccontextmanager
async def running_platform(infra: Any, databases: Any, group_prefix: str,
                           services: tuple[str, ...] = ("registry", "monitoring", "gateway"),
                           dsns: dict[str, str] | None = None,
                           build_kwargs: dict[str, dict[str, Any]] | None = None,
                           **setting_overrides: Any) -> AsyncIterator[dict[str, Any]]:
    """Start the given services (in this order) and yield {name: (url, runtime)}.

    `dsns` reuses databases (a restart); the DSNs used are left in it for the next start.
    `build_kwargs` passes extra arguments to a service's `build` (e.g. a workflow clock);
    other keyword arguments override settings of every service.
    """
    dsns = dsns if dsns is not None else {}
    import importlib

    # Tests poll read models many times a second: no rate limit unless a test asks for one.
    setting_overrides.setdefault("rate_limit_per_minute", 0)

    ports = {s: free_port() for s in services}
    urls = {s: f"http://127.0.0.1:{p}" for s, p in ports.items()}
    out: dict[str, Any] = {}
    stack = []
    try:
        for s in services:
            settings = load_settings(
                s, database_url=dsns.get(s) or dsns.setdefault(s, await databases()),
                kafka_bootstrap_servers=infra.bootstrap_servers,
                kafka_enable_idempotence=infra.idempotence, kafka_group_prefix=group_prefix,
                relay_poll_interval=0.2, id_hmac_key=TEST_HMAC_KEY, registry_url=urls.get("registry"),
                token_keys=TEST_TOKEN_KEYS, internal_token_keys=TEST_INTERNAL_KEYS,
                monitoring_url=urls.get("monitoring"), workflow_url=urls.get("workflow"),
                funds_url=urls.get("funds"), **setting_overrides)
            runtime = importlib.import_module(f"services.{s}.app").build(settings, **(build_kwargs or {}).get(s, {}))
            cm = serve(runtime, ports[s])
            url = await cm.__aenter__()
            stack.append(cm)
            out[s] = (url, runtime)
        yield out
    finally:
        for cm in reversed(stack):
            await cm.__aexit__(None, None, None)
