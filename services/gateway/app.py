"""Composition root of the gateway."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
from fastapi import Request
from fastapi.responses import Response

from contracts.gateway import SCOPES
from eventkit.clock import Clock
from eventkit.runtime import ServiceRuntime, problem
from eventkit.settings import ServiceSettings, load_settings
from eventkit.tokens import parse_keyring

from .accounts import Accounts
from .api import router
from .auth_api import router as auth_router
from .guard import BEARER, OAUTH2, RateLimiter, Refusal

_UPLOAD_PATHS = ("/api/v1/imports/households", "/api/v1/statements", "/api/v1/comparison-jobs",
                 "/api/v1/reconciliations/national", "/api/v1/inbound/deaths", "/api/v1/subsidy-records")
COMPARISON_BODY_BYTES = 8 * 1024 * 1024  # 100 000 ID numbers as JSON, with room for spacing


async def _refused(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Refusal)
    return exc.response


def build(settings: ServiceSettings | None = None, *, clock: Clock | None = None) -> ServiceRuntime:
    settings = settings or load_settings("gateway")
    if not settings.token_keys:
        raise RuntimeError("TPA_GATEWAY_TOKEN_KEYS is not set (the keyring of the access tokens; "
                           "`tpa keys` prints one)")
    keyring = parse_keyring(settings.token_keys, "TPA_GATEWAY_TOKEN_KEYS")
    if not settings.internal_token_keys:
        raise RuntimeError("TPA_INTERNAL_TOKEN_KEYS is not set")
    internal = parse_keyring(settings.internal_token_keys, "TPA_INTERNAL_TOKEN_KEYS")
    if keyring.shares_key_with(internal):
        raise RuntimeError("the access-token and internal-token keyrings must not share a key")

    async def startup(runtime: ServiceRuntime) -> None:
        # 30 s for a service to answer (a loaded county server can be slow; uploads get longer)
        runtime.state["http"] = httpx.AsyncClient(timeout=httpx.Timeout(30.0, connect=2.0))
        runtime.state["internal_keyring"] = internal
        runtime.state["accounts"] = Accounts(runtime.pool, runtime.store, keyring, clock=clock)
        runtime.state["limiter"] = RateLimiter(settings.rate_limit_per_minute, settings.rate_limit_burst)

    async def shutdown(runtime: ServiceRuntime) -> None:
        client = runtime.state.pop("http", None)
        if client is not None:
            await client.aclose()

    runtime = ServiceRuntime(settings, migrations_dir=Path(__file__).parent / "migrations",
                             routers=[auth_router, router], title="TPA gateway",
                             extra_startup=startup, extra_shutdown=shutdown)
    app = runtime.app
    app.add_exception_handler(Refusal, _refused)

    @app.middleware("http")
    async def limit_size(request: Request, call_next: Any) -> Response:
        """413 for a body over the limit (uploads have their own, larger one), before reading it."""
        if request.method in ("POST", "PUT", "PATCH"):
            path = request.url.path
            limit = (settings.max_upload_bytes if path in _UPLOAD_PATHS else
                     max(COMPARISON_BODY_BYTES, settings.max_body_bytes) if path == "/api/v1/comparisons" else
                     settings.max_body_bytes)
            declared = request.headers.get("content-length")
            too_big = False
            if declared is not None:
                try:
                    too_big = int(declared) > limit
                except ValueError:
                    return problem(400, "bad_request", "Bad request", "Content-Length is not a number")
            else:  # chunked: count while reading (Starlette caches the body for the route)
                size = 0
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > limit:
                        too_big = True
                        break
            if too_big:
                return problem(413, "payload_too_large", "Payload too large",
                               f"the request body may have at most {limit} bytes", max_bytes=limit)
        return await call_next(request)

    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = original()
        schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
        schemes[BEARER] = {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                           "description": "An access token from POST /api/v1/auth/token."}
        schemes["client_basic"] = {"type": "http", "scheme": "basic",
                                   "description": "A client system's id and secret (client_credentials grant)."}
        schemes[OAUTH2] = {"type": "oauth2", "flows": {
            "password": {"tokenUrl": "/api/v1/auth/token", "refreshUrl": "/api/v1/auth/token", "scopes": {}},
            "clientCredentials": {"tokenUrl": "/api/v1/auth/token", "scopes": {
                s: s for s in SCOPES}}}}
        from .examples import add_examples  # request (and a few response) examples
        add_examples(schema)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
    return runtime
