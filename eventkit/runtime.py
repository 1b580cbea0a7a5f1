"""What every service process runs: pool, migrations, store, relay, projections, HTTP.

A service's composition root (``services/<name>/app.py``) builds one
`ServiceRuntime` with its routers, projections and migrations folder. Nothing
happens until the ASGI lifespan starts it: no I/O at import time.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Awaitable, Callable, Sequence

import asyncpg
from http import HTTPStatus

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from fastapi.responses import JSONResponse, Response

from . import migrations as mig
from .errors import ConcurrencyError, DomainError, IdempotencyKeyReused, StreamNotFound
from .idempotency import CommandResult, request_fingerprint, run_command
from .idempotency import expire as expire_idempotency
from .metrics import CONTENT_TYPE_LATEST, Metrics
from .principal import Principal, jurisdiction_prefix
from .problems import Problem  # noqa: F401 (re-exported for the services' response models)
from .projection import Projection, ProjectionRunner
from .relay import Relay
from .settings import ServiceSettings
from .store import EventStore
from .telemetry import correlation_id
from .tokens import INTERNAL_IDENTITY_HEADER, Keyring, parse_keyring, verify_internal_token

log = logging.getLogger("eventkit.runtime")


_REFUSAL_TITLES = {400: "Bad request", 401: "Unauthenticated", 403: "Forbidden", 404: "Not found",
                   409: "Conflict with the current state",
                   412: "Precondition failed", 422: "Invalid request"}


def domain_problem(exc: DomainError) -> JSONResponse:
    """The problem document of a command the domain refused."""
    response = problem(exc.status, exc.code, _REFUSAL_TITLES.get(exc.status, "Request refused"), str(exc),
                       **exc.details)
    if exc.status == 401:  # RFC 9110 section 11.6.1: a 401 names how to authenticate
        response.headers["WWW-Authenticate"] = 'TPA-Identity realm="tpa"'
    return response


def problem(status: int, code: str, title: str, detail: str | None = None, **extra: Any) -> JSONResponse:
    """An RFC 9457 problem document with a machine-readable `code`."""
    body = {"type": f"https://tpa.example/problems/{code}", "title": title, "status": status, "code": code}
    if detail:
        body["detail"] = detail
    body.update(extra)
    return JSONResponse(body, status_code=status, media_type="application/problem+json")


class ServiceRuntime:
    def __init__(
        self,
        settings: ServiceSettings,
        *,
        migrations_dir: Path | None = None,
        routers: Sequence[APIRouter] = (),
        projections: Sequence[Projection] = (),
        relay: bool = True,
        title: str | None = None,
        extra_startup: Callable[["ServiceRuntime"], Awaitable[None]] | None = None,
        extra_shutdown: Callable[["ServiceRuntime"], Awaitable[None]] | None = None,
    ) -> None:
        self.settings = settings
        self.service = settings.service
        self.migrations_dir = migrations_dir
        self.projections = list(projections)
        self.with_relay = relay
        self.metrics = Metrics(self.service)
        self.pool: Any = None
        self.store: EventStore | None = None
        self.relay: Relay | None = None
        self.runners: list[ProjectionRunner] = []
        self._tasks: list[asyncio.Task] = []
        self._extra_startup = extra_startup
        self._extra_shutdown = extra_shutdown
        self.state: dict[str, Any] = {}  # service-specific singletons (clients, caches)
        self._broker_ok: tuple[float, bool] = (0.0, False)
        # Every service but the gateway trusts only the gateway: each request must carry its signed
        # internal identity token (eventkit.tokens). Checked at start-up, so that a service without
        # the key refuses to run rather than to answer.
        self.internal_keyring: Keyring | None = None
        if settings.internal_token_keys:
            self.internal_keyring = parse_keyring(settings.internal_token_keys, "TPA_INTERNAL_TOKEN_KEYS")
        self.app = self._build_app(routers, title or f"TPA {self.service}")

    # -- lifecycle -------------------------------------------------------------

    def migrations(self) -> list[mig.Migration]:
        found = mig.load("eventkit", mig.EVENTKIT_MIGRATIONS)
        if self.migrations_dir is not None and self.migrations_dir.is_dir():
            found += mig.load(self.service, self.migrations_dir)
        return found

    async def start(self) -> None:
        s = self.settings
        if self.internal_keyring is None:
            raise RuntimeError("TPA_INTERNAL_TOKEN_KEYS is not set (the keyring of the gateway's internal "
                               "identity tokens; `tpa keys` prints one)")
        if not s.database_url:
            raise RuntimeError(f"TPA_{self.service.upper()}_DATABASE_URL is not set")
        if not s.kafka_bootstrap_servers and (self.with_relay or self.projections):
            raise RuntimeError("KAFKA_BOOTSTRAP_SERVERS is not set")
        self.pool = await asyncpg.create_pool(s.database_url, min_size=1, max_size=10)
        async with self.pool.acquire() as conn:
            applied = await mig.apply(conn, self.migrations())
        if applied:
            log.info("applied migrations %s", applied)
        self.store = EventStore(self.pool, on_append=self.metrics.events_appended.labels(self.service).inc)
        if self._extra_startup is not None:  # before the background tasks that may need what it binds
            await self._extra_startup(self)
        if self.with_relay:
            self.relay = Relay(
                name=self.service, service=self.service, store=self.store,
                bootstrap_servers=s.kafka_bootstrap_servers, enable_idempotence=s.kafka_enable_idempotence,
                partitions=s.kafka_topic_partitions, replication_factor=s.kafka_replication_factor,
                compression_type=s.kafka_compression_type, producer_batch_bytes=s.kafka_producer_batch_bytes,
                batch_size=s.relay_batch_size, poll_interval=s.relay_poll_interval,
                lost_data_check_interval=s.relay_lost_data_check_interval,
                on_published=self.metrics.relay_published.labels(self.service).inc,
                on_rewind=self.metrics.relay_rewinds.labels(self.service).inc,
            )
            self._spawn(self.relay.run(), f"relay-{self.service}")
        self._spawn(self._expire_idempotency_keys(), f"idempotency-expiry-{self.service}")
        for projection in self.projections:
            runner = ProjectionRunner(
                projection, service=self.service, pool=self.pool,
                bootstrap_servers=s.kafka_bootstrap_servers, metrics=self.metrics,
                enable_idempotence=s.kafka_enable_idempotence, partitions=s.kafka_topic_partitions,
                replication_factor=s.kafka_replication_factor, max_retries=s.projection_max_retries,
                batch_size=s.projection_batch_size, group_prefix=s.kafka_group_prefix,
                compression_type=s.kafka_compression_type,
            )
            self.runners.append(runner)
            self._spawn(runner.run(), f"projection-{projection.name}")

    async def _expire_idempotency_keys(self, every: float = 3600.0) -> None:
        """Forget remembered command results after the retention period, hourly."""
        while True:
            try:
                deleted = await expire_idempotency(self.pool, self.settings.idempotency_retention_hours)
                log.debug("idempotency keys expired: %d", deleted)
            except asyncio.CancelledError:
                raise
            except Exception:  # the database may be briefly away; try again next round
                log.warning("expiring idempotency keys failed", exc_info=True)
            await asyncio.sleep(every)

    def spawn(self, coro: Any, name: str) -> None:
        """Run a service's background task for the runtime's life (cancelled at stop, logged if it dies)."""
        self._spawn(coro, name)

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        task.add_done_callback(self._task_done)
        self._tasks.append(task)

    @staticmethod
    def _task_done(task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("background task %s died", task.get_name(), exc_info=task.exception())

    async def stop(self) -> None:
        if self._extra_shutdown is not None:
            await self._extra_shutdown(self)
        if self.relay is not None:
            self.relay.stop()
        for runner in self.runners:
            runner.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        self.runners.clear()
        if self.pool is not None:
            await self.pool.close()
            self.pool = None

    # -- HTTP ------------------------------------------------------------------

    async def broker_reachable(self) -> bool:
        if self.relay is not None and self.relay.stats.connected:
            return True
        now = time.monotonic()
        if now - self._broker_ok[0] < 2.0:
            return self._broker_ok[1]
        ok = False
        for server in (self.settings.kafka_bootstrap_servers or "").split(","):
            host, _, port = server.strip().rpartition(":")
            try:
                _, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), 1.0)
                writer.close()
                ok = True
                break
            except (OSError, ValueError, asyncio.TimeoutError):
                continue
        self._broker_ok = (now, ok)
        return ok

    def _build_app(self, routers: Sequence[APIRouter], title: str) -> FastAPI:
        from contextlib import asynccontextmanager

        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

        @asynccontextmanager
        async def lifespan(app: FastAPI):
            await self.start()
            try:
                yield
            finally:
                await self.stop()

        # API docs without a CDN: the Swagger UI assets are served from the installed package
        # (machines in county offices often have no Internet access).
        app = FastAPI(title=title, version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None)
        install_offline_docs(app)
        app.state.runtime = self
        runtime = self

        if self.service != "gateway":
            @app.middleware("http")
            async def internal_identity(request: Request, call_next):
                # Only the gateway may call: a valid X-TPA-Identity token, or a 401.
                path = request.url.path
                if path in _OPEN_PATHS or path.startswith("/docs"):
                    return await call_next(request)
                try:
                    request.state.principal = verify_internal_token(
                        request.headers.get(INTERNAL_IDENTITY_HEADER), runtime.internal_keyring,
                        now=datetime.now(timezone.utc), allow_anonymous=True)
                except DomainError as exc:
                    response = problem(401, "gateway_identity_required", "Unauthenticated",
                                       f"calls must come through the gateway with a valid {INTERNAL_IDENTITY_HEADER} "
                                       f"token ({exc})")
                    response.headers["WWW-Authenticate"] = 'TPA-Identity realm="tpa"'
                    return response
                return await call_next(request)

        @app.middleware("http")
        async def reject_unstorable_text(request: Request, call_next):
            # PostgreSQL cannot store NUL characters or lone UTF-16 surrogates: refuse them up front
            # with a clear 422 instead of failing half-way through a command or a query.
            for name, value in request.query_params.multi_items():
                if _unstorable(value) is not None or _unstorable(name) is not None:
                    shown = name if _unstorable(name) is None else "(a parameter)"
                    return problem(422, "invalid_text", "Invalid request",
                                   f"query.{shown}: text must not contain NUL characters or unpaired surrogates")
            if request.method in ("POST", "PUT", "PATCH") and \
                    request.headers.get("content-type", "").startswith("application/json"):
                body = await request.body()
                try:
                    bad = _unstorable(json.loads(body)) if body else None
                except ValueError:
                    bad = None  # not JSON: FastAPI's own validation answers
                if bad is not None:
                    return problem(422, "invalid_text", "Invalid request",
                                   f"{bad}: text must not contain NUL characters or unpaired surrogates")
            return await call_next(request)

        @app.middleware("http")
        async def correlation(request: Request, call_next):
            cid = request.headers.get("x-correlation-id") or str(uuid.uuid4())
            token = correlation_id.set(cid)
            try:
                response = await call_next(request)
            finally:
                correlation_id.reset(token)
            response.headers["X-Correlation-Id"] = cid
            return response

        @app.exception_handler(ConcurrencyError)
        async def on_conflict(request: Request, exc: ConcurrencyError):
            return problem(409, "concurrency_conflict", "The resource was changed by another request",
                           str(exc), stream_id=exc.stream_id, expected_version=exc.expected,
                           actual_version=exc.actual)

        @app.exception_handler(DomainError)
        async def on_refused(request: Request, exc: DomainError):
            return domain_problem(exc)

        @app.exception_handler(IdempotencyKeyReused)
        async def on_key_reused(request: Request, exc: IdempotencyKeyReused):
            return problem(422, "idempotency_key_reused", "Idempotency-Key reused with a different request",
                           str(exc))

        @app.exception_handler(StreamNotFound)
        async def on_not_found(request: Request, exc: StreamNotFound):
            return problem(404, "not_found", "Not found", str(exc))

        @app.exception_handler(RequestValidationError)
        async def on_invalid(request: Request, exc: RequestValidationError):
            errors = [{"loc": [str(p) for p in e.get("loc", ())], "msg": e.get("msg", ""), "type": e.get("type", "")}
                      for e in exc.errors()]
            first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
            return problem(422, "validation_error", "Invalid request",
                           f"{'.'.join(first['loc'])}: {first['msg']}", errors=errors)

        @app.exception_handler(Exception)
        async def on_unexpected(request: Request, exc: Exception):
            log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
            return problem(500, "internal_error", "Internal server error",
                           "the error was logged with this request's correlation id")

        @app.exception_handler(StarletteHTTPException)
        async def on_http_error(request: Request, exc: StarletteHTTPException):
            code = _HTTP_CODES.get(exc.status_code, f"http_{exc.status_code}")
            response = problem(exc.status_code, code, HTTPStatus(exc.status_code).phrase, str(exc.detail))
            for k, v in (exc.headers or {}).items():
                response.headers[k] = v
            if exc.status_code == 405:  # list every method the path supports, not the first route's
                response.headers["Allow"] = ", ".join(_allowed_methods(request))
            return response

        @app.get("/healthz", tags=["operations"], summary="Liveness")
        async def healthz() -> dict[str, str]:
            return {"status": "ok", "service": runtime.service}

        @app.get("/readyz", tags=["operations"], summary="Readiness: database and broker reachable",
                 responses={503: {"description": "Not ready"}})
        async def readyz():
            checks: dict[str, Any] = {}
            try:
                await asyncio.wait_for(runtime.pool.fetchval("SELECT 1"), 2.0)
                checks["database"] = "ok"
            except Exception as exc:  # noqa: BLE001 - reported, not raised
                checks["database"] = f"unreachable: {type(exc).__name__}"
            checks["broker"] = "ok" if await runtime.broker_reachable() else "unreachable"
            if all(v == "ok" for v in checks.values()):
                return JSONResponse({"status": "ready", "checks": checks})
            return problem(503, "not_ready", "Service not ready",
                           ", ".join(f"{k} {v}" for k, v in checks.items() if v != "ok"), checks=checks)

        @app.get("/metrics", tags=["operations"], summary="Prometheus metrics",
                 response_class=Response)
        async def metrics():
            await runtime.refresh_gauges()
            return Response(runtime.metrics.render(), media_type=CONTENT_TYPE_LATEST)

        for router in routers:
            app.include_router(router)
        install_problem_openapi(app)
        FastAPIInstrumentor.instrument_app(app, excluded_urls="healthz,readyz,metrics")
        return app

    async def refresh_gauges(self) -> None:
        if self.relay is not None and self.store is not None and self.pool is not None:
            head = await self.store.head_position()
            checkpoint = await self.pool.fetchval(  # the store's, whichever replica publishes
                "SELECT position FROM relay_checkpoint WHERE relay = $1", self.relay.name) or 0
            self.relay.stats.head = head
            self.metrics.relay_lag.labels(self.service).set(max(0, head - checkpoint))
            self.metrics.relay_connected.labels(self.service).set(1 if self.relay.stats.connected else 0)


def _allowed_methods(request: Request) -> list[str]:
    """Methods some route fully matches for this path (probing each method)."""
    from starlette.routing import Match

    methods: set[str] = set()
    for method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
        scope = {**request.scope, "method": method}
        if any(route.matches(scope)[0] == Match.FULL for route in request.app.router.routes):
            methods.add(method)
    if "GET" in methods:
        methods.add("HEAD")
    return sorted(methods)


def _unstorable(value: Any, where: str = "body") -> str | None:
    """Where a JSON value holds text PostgreSQL cannot store, or None."""
    if isinstance(value, str):
        if "\x00" in value:
            return where
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return where
        return None
    if isinstance(value, dict):
        for k, v in value.items():
            found = _unstorable(k, where) or _unstorable(v, f"{where}.{k}")
            if found:
                return found
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found = _unstorable(v, f"{where}[{i}]")
            if found:
                return found
    return None


_OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/openapi.json"})

_HTTP_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
               405: "method_not_allowed", 406: "not_acceptable", 413: "payload_too_large",
               415: "unsupported_media_type", 429: "too_many_requests"}

PROBLEM_SCHEMA = {
    "title": "Problem",
    "type": "object",
    "description": "RFC 9457 problem details with a machine-readable `code`.",
    "required": ["type", "title", "status", "code"],
    "properties": {
        "type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"},
        "code": {"type": "string"}, "detail": {"type": "string"},
        "errors": {"type": "array", "items": {"type": "object"}},
    },
    "additionalProperties": True,
}


def install_offline_docs(app: FastAPI) -> None:
    """Serve Swagger UI at /docs from the swagger-ui-bundle package (no CDN)."""
    from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
    from fastapi.staticfiles import StaticFiles
    from swagger_ui_bundle import swagger_ui_path

    app.mount("/docs/assets", StaticFiles(directory=swagger_ui_path), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> Any:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json", title=f"{app.title} API",
            swagger_js_url="/docs/assets/swagger-ui-bundle.js", swagger_css_url="/docs/assets/swagger-ui.css",
            swagger_favicon_url="/docs/assets/favicon-32x32.png",
            oauth2_redirect_url="/docs/oauth2-redirect")

    @app.get("/docs/oauth2-redirect", include_in_schema=False)
    async def oauth2_redirect() -> Any:
        return get_swagger_ui_oauth2_redirect_html()


def install_problem_openapi(app: FastAPI) -> None:
    """Document every error response as application/problem+json with the Problem schema,
    and the errors any operation can give (400 unreadable body, 422 invalid request)."""
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = original()
        schema.setdefault("components", {}).setdefault("schemas", {})["Problem"] = PROBLEM_SCHEMA
        ref = {"$ref": "#/components/schemas/Problem"}
        for path_item in schema.get("paths", {}).values():
            for operation in path_item.values():
                if not isinstance(operation, dict) or "responses" not in operation:
                    continue
                responses = operation["responses"]
                has_input = bool(operation.get("parameters") or operation.get("requestBody"))
                if has_input:
                    responses.setdefault("422", {"description": "Invalid request"})
                if operation.get("requestBody"):
                    responses.setdefault("400", {"description": "Unreadable request body"})
                for status, response in responses.items():
                    if status.isdigit() and int(status) >= 400:
                        response["content"] = {"application/problem+json": {"schema": ref}}
        schema["components"]["schemas"].pop("HTTPValidationError", None)
        schema["components"]["schemas"].pop("ValidationError", None)
        _declare_storable_text(schema)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


# Text the services accept: no NUL (PostgreSQL cannot store it; the middleware answers 422
# invalid_text). Unpaired UTF-16 surrogates are refused too, but are left out of the
# pattern: a JSON string holding one is not valid Unicode, and common regex engines of
# schema tools cannot express the class.
STORABLE_TEXT = "^[^\\u0000]*$"


def _declare_storable_text(node: Any) -> None:
    """Give every free-text string schema of the OpenAPI document the STORABLE_TEXT pattern,
    so that the document states what the middleware enforces."""
    if isinstance(node, dict):
        if node.get("type") == "string" and not {"pattern", "format", "enum", "const"} & node.keys():
            node["pattern"] = STORABLE_TEXT
        for value in node.values():
            _declare_storable_text(value)
    elif isinstance(node, list):
        for value in node:
            _declare_storable_text(value)


def principal_of(request: Request) -> Principal | None:
    """Who is calling, as the gateway vouched in the internal identity token (None: anonymous)."""
    return getattr(request.state, "principal", None)


def current_principal(request: Request, what: str = "this request") -> Principal:
    """The caller, or a 401 ``unauthenticated`` problem for an anonymous call."""
    principal = principal_of(request)
    if principal is None:
        raise DomainError("unauthenticated", f"{what} needs a signed-in caller", 401)
    return principal


def required_actor(request: Request, what: str = "this command") -> str:
    """The caller's id (a user id, or a client system's id), or a 401 ``unauthenticated`` problem."""
    return current_principal(request, what).id


def require_covers(request: Request, region_code: str | None, what: str = "this record") -> None:
    """403 ``outside_jurisdiction`` unless the caller's jurisdiction covers ``region_code`` (a record
    with no known region is covered by nobody but a province)."""
    principal = current_principal(request)
    if region_code is None:
        if principal.level != "province":
            raise DomainError("outside_jurisdiction", f"{what} is outside jurisdiction {principal.jurisdiction}",
                              403)
        return
    if not principal.covers(region_code):
        raise DomainError("outside_jurisdiction", f"{what} is outside jurisdiction {principal.jurisdiction}",
                          403, region_code=str(region_code))


def jurisdiction_prefix_of(request: Request) -> str:
    """The code prefix of the caller's jurisdiction: ``village_code LIKE prefix || '%'`` scopes a query."""
    return jurisdiction_prefix(current_principal(request).jurisdiction)


def if_match_version(request: Request) -> int | None:
    """The stream version a command's ``If-Match`` header expects (None without one, or with ``*``)."""
    raw = request.headers.get("if-match")
    if raw is None or raw.strip() == "*":
        return None
    try:
        return int(raw.strip().removeprefix("W/").strip('"'))
    except ValueError:
        raise DomainError("invalid_if_match", "If-Match must be the version (an ETag)", 400) from None


def runtime_of(request: Request) -> ServiceRuntime:
    return request.app.state.runtime


async def idempotent(
    request: Request,
    body: Any,
    handler: Callable[[Any], Awaitable[CommandResult]],
) -> JSONResponse:
    """Run a command handler once per ``Idempotency-Key`` (if the client sent one)."""
    runtime = runtime_of(request)
    key = request.headers.get("idempotency-key")
    if key is not None and not (1 <= len(key) <= 255):
        return problem(400, "invalid_idempotency_key", "Idempotency-Key must be 1 to 255 characters")
    # A key is the caller's own: another caller reusing it runs its own command (or is told the key
    # was used for a different request), never gets someone else's result.
    caller = principal_of(request)
    scope = f"{caller.subject if caller else 'anonymous'} {request.method} {request.url.path}"
    result = await run_command(
        runtime.pool, handler, key=key, scope=scope,
        fingerprint=request_fingerprint(request.method, request.url.path, body))
    headers = {"Idempotent-Replayed": "true"} if result.replayed else {}
    return JSONResponse(result.body, status_code=result.status_code, headers=headers)
