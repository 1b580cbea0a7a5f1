"""Who is calling and may they: bearer authentication, authorisation, rate limits, denial records.

``caller_of`` reads ``Authorization: Bearer <access token>`` (RFC 6750) and returns the caller
as the account is now (see ``accounts.Accounts.authenticate``), or a 401 problem with a
``WWW-Authenticate: Bearer`` challenge. ``authorise`` applies the action matrix and the
jurisdiction of the regions named in the path; a refusal is answered 403 and recorded as
``AccessDenied`` on the access topic, as is a 403 a service answers for a record outside the
caller's jurisdiction (``denied_upstream``).

Rate limits: a token bucket per caller (per client system or user; per address for anonymous
calls) of ``rate_limit_per_minute`` with bursts of ``rate_limit_burst``; an exhausted bucket is
a 429 with ``Retry-After``. Buckets live in the gateway process (each replica limits on its own).
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Sequence

from fastapi import Request
from fastapi.responses import Response

from eventkit.errors import DomainError
from eventkit.principal import allowed
from eventkit.runtime import problem, runtime_of

from .accounts import Caller

log = logging.getLogger("tpa.gateway.guard")

BEARER = "bearer"
OAUTH2 = "oauth2"
SIGNED_IN = [{BEARER: []}, {OAUTH2: []}]
"""OpenAPI security of a route for signed-in callers: a bearer token, however obtained (the
``oauth2`` scheme lets Swagger UI's Authorize button sign in with the password grant)."""
_SELF_SERVICE = ("/api/v1/me", "/api/v1/me/password", "/api/v1/auth/logout")


def _challenge(code: str, detail: str, status: int = 401) -> Response:
    response = problem(status, code, "Unauthenticated" if status == 401 else "Forbidden", detail)
    error = "invalid_token" if code != "missing_token" else None
    response.headers["WWW-Authenticate"] = 'Bearer realm="tpa"' + (f', error="{error}"' if error else "")
    return response


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else ""


async def caller_of(request: Request, *, required: bool) -> Caller | None | Response:
    """The authenticated caller; None for an anonymous call of a public route; a problem response
    (401, 403 password change required, 429 rate limit) otherwise."""
    runtime = runtime_of(request)
    token = bearer_token(request)
    caller: Caller | None = None
    if token is None:
        if required:
            return _challenge("missing_token", "this route needs an access token (Authorization: Bearer)")
    elif token == "":
        return _challenge("invalid_token", "the Authorization header must be 'Bearer <access token>'")
    else:
        try:
            caller = await runtime.state["accounts"].authenticate(token)
        except DomainError as exc:
            return _challenge(exc.code if exc.code != "invalid_token" else "invalid_token", str(exc))
        if caller.must_change_password and request.url.path not in _SELF_SERVICE:
            return problem(403, "password_change_required", "Forbidden",
                           "the password was set by an administrator: change it first (PUT /api/v1/me/password)")
    limited = runtime.state["limiter"].take(_bucket_key(request, caller))
    if limited is not None:
        response = problem(429, "rate_limited", "Too many requests",
                           f"at most {runtime.settings.rate_limit_per_minute} requests a minute; retry after "
                           f"{limited} s", retry_after_s=limited)
        response.headers["Retry-After"] = str(limited)
        return response
    request.state.caller = caller
    return caller


def _bucket_key(request: Request, caller: Caller | None) -> str:
    if caller is not None:
        return caller.principal.subject
    return "address:" + (request.client.host if request.client else "unknown")


def route_of(request: Request) -> str:
    """``METHOD /api/v1/template/{param}`` of the request (ids stay out: the records name them)."""
    route = request.scope.get("route")
    template = re.sub(r":\w+}", "}", route.path) if route is not None else request.url.path
    return f"{request.method} {template}"


async def authorise(request: Request, caller: Caller, actions: Sequence[str], regions: Sequence[str]) -> Response | None:
    """None when ``caller`` may take one of ``actions`` in every region of ``regions``; a recorded
    403 otherwise."""
    principal = caller.principal
    action = next((a for a in actions if allowed(principal, a)), None)
    if action is None:
        return await deny(request, caller, "forbidden", actions[0],
                          f"{principal.subject} may not {' or '.join(actions)}")
    outside = [r for r in regions if not principal.covers(r)]
    if outside:
        return await deny(request, caller, "outside_jurisdiction", action,
                          f"jurisdiction {principal.jurisdiction} does not cover {outside[0]}")
    return None


async def deny(request: Request, caller: Caller, reason: str, action: str | None, detail: str) -> Response:
    await record_denied(request, caller, reason, action)
    return problem(403, reason, "Forbidden", detail, action=action)


async def record_denied(request: Request, caller: Caller, reason: str, action: str | None) -> None:
    try:
        await runtime_of(request).state["accounts"].record_denied(
            caller.principal, route=route_of(request), reason=reason, action=action)
    except Exception:  # noqa: BLE001 - the refusal stands even if the record fails; it is logged
        log.error("could not record a denied request", exc_info=True)


async def denied_upstream(request: Request, caller: Caller, response: Response,
                          actions: Sequence[str] | None) -> None:
    """Record a service's 403 (a record outside the caller's jurisdiction, a step of another role)."""
    if response.status_code != 403:
        return
    try:
        reason = json.loads(response.body).get("code") or "forbidden"
    except (ValueError, AttributeError):
        reason = "forbidden"
    if not isinstance(reason, str) or not reason.replace("_", "").isalnum() or not reason[0].isalpha():
        reason = "forbidden"
    await record_denied(request, caller, reason.lower()[:100], actions[0] if actions else None)


class Refusal(Exception):
    """Raised by ``guard`` to answer with ``response`` (the gateway's handler returns it)."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status_code)
        self.response = response


_REGION_PARAMS = ("village_code", "region", "code")
_REGION = re.compile(r"^[0-9]{2}(?:[0-9]{2}(?:[0-9]{2}(?:[0-9]{3}(?:[0-9]{3})?)?)?)?$")


def guard(actions: Sequence[str] | None) -> Callable[[Request], Awaitable[None]]:
    """A route dependency: authenticate and authorise before the request is validated, so that an
    unauthenticated or unauthorised caller learns nothing about the route's input (401/403 first).
    The caller is left in ``request.state.caller`` (None: anonymous on a public route)."""
    async def dependency(request: Request) -> None:
        caller = await caller_of(request, required=actions is not None)
        if isinstance(caller, Response):
            raise Refusal(caller)
        if actions and caller is not None:  # () = any signed-in caller (the rules check the rest)
            regions = [str(v) for k, v in request.path_params.items()
                       if k in _REGION_PARAMS and _REGION.match(str(v))]
            refused = await authorise(request, caller, actions, regions)
            if refused is not None:
                raise Refusal(refused)
    return dependency


@dataclass
class RateLimiter:
    """Token buckets: ``rate`` tokens a minute, at most ``burst`` saved up."""

    per_minute: int
    burst: int
    clock: Any = time.monotonic
    _buckets: dict[str, tuple[float, float]] = field(default_factory=dict)

    def take(self, key: str) -> int | None:
        """Spend a token; None if there was one, else the seconds to wait for the next."""
        if self.per_minute <= 0:
            return None
        now = self.clock()
        rate = self.per_minute / 60.0
        tokens, at = self._buckets.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - at) * rate)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            if len(self._buckets) > 100_000:  # forget full buckets of idle callers
                self._buckets = {k: v for k, v in self._buckets.items() if v[0] < self.burst - 1}
            return None
        self._buckets[key] = (tokens, now)
        return max(1, math.ceil((1.0 - tokens) / rate))
