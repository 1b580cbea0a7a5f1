"""Identity routes of the gateway: the OAuth 2.0 token endpoint, the caller's own account, users,
client systems and the access log.

``POST /api/v1/auth/token`` (RFC 6749, form-encoded) grants:

* ``password`` (console and cadres' apps): ``username``, ``password`` -> a 15-minute access token
  and a refresh token (a login session of at most 8 hours);
* ``refresh_token``: a new access token and the next refresh token of the session (a refresh
  token works once; presenting a used one ends the session);
* ``client_credentials`` (department systems): client id and secret in HTTP Basic (RFC 6749
  §2.3.1) or in the form, optional ``scope`` (a subset of the client's scopes) -> an access token.

Errors are problem documents whose ``code`` (and ``error``) is the OAuth error code:
``invalid_request``, ``invalid_grant`` (400), ``invalid_client`` (401), ``unsupported_grant_type``,
``invalid_scope``; ``account_locked`` (429) after five failed logins within 15 minutes.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from datetime import datetime, timedelta
from typing import Any, Awaitable, Callable, Literal
from urllib.parse import unquote_plus

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from contracts import gateway as ev
from eventkit.errors import DomainError
from eventkit.runtime import domain_problem, problem, runtime_of

from .accounts import Accounts, Caller
from .guard import SIGNED_IN, guard, record_denied

router = APIRouter(prefix="/api/v1")
_SECURED = {"security": SIGNED_IN}
_SIGNED_IN = [Depends(guard(()))]
_TEXT = r"^[^\u0000]*$"


def _accounts(request: Request) -> Accounts:
    return runtime_of(request).state["accounts"]


def _no_store(response: JSONResponse) -> JSONResponse:
    response.headers["Cache-Control"] = "no-store"  # RFC 6749 §5.1
    response.headers["Pragma"] = "no-cache"
    return response


async def _as_caller(request: Request, run: Callable[[Caller], Awaitable[Any]], *, status: int = 200,
                     action: str | None = None) -> Response:
    """Run for the caller the route's guard authenticated, answer; a 403 from the rules is recorded
    as AccessDenied."""
    caller: Caller = request.state.caller
    try:
        result = await run(caller)
    except DomainError as exc:
        if exc.status == 403:
            await record_denied(request, caller, exc.code, action)
        return domain_problem(exc)
    if status == 204:
        return Response(status_code=204)
    return _no_store(JSONResponse(result, status_code=status))


# -- tokens -------------------------------------------------------------------------------------

class TokenResponse(BaseModel):
    access_token: str
    token_type: Literal["Bearer"]
    expires_in: int = Field(description="Seconds the access token is valid.")
    refresh_token: str | None = Field(default=None, description="Users only: exchange it at this endpoint "
                                      "(grant_type=refresh_token) before the access token expires.")
    scope: str | None = Field(default=None, description="Client systems: the scopes granted, space-separated.")
    password_change_required: bool | None = Field(default=None, description="The password was set by an "
                                                  "administrator: change it (PUT /api/v1/me/password) first.")


def _basic_client(request: Request) -> tuple[str, str] | None:
    header = request.headers.get("authorization") or ""
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic" or not value:
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise DomainError("invalid_client", "the Basic credentials are not readable", 401,
                          error="invalid_client") from None
    client_id, sep, secret = decoded.partition(":")
    if not sep:
        raise DomainError("invalid_client", "the Basic credentials are not client_id:secret", 401,
                          error="invalid_client")
    return unquote_plus(client_id), unquote_plus(secret)  # RFC 6749 §2.3.1: form-urlencoded first


@router.post("/auth/token", tags=["identity"], response_model=TokenResponse,
             summary="OAuth 2.0 token endpoint: password, refresh_token and client_credentials grants",
             responses={400: {"description": "invalid_request, invalid_grant, unsupported_grant_type, invalid_scope"},
                        401: {"description": "invalid_client"}, 429: {"description": "account_locked"}},
             openapi_extra={"security": [{}, {"client_basic": []}]})
async def token(request: Request,
                grant_type: str = Form(max_length=40, pattern=_TEXT),
                username: str | None = Form(default=None, max_length=64, pattern=_TEXT),
                password: str | None = Form(default=None, max_length=256, pattern=_TEXT),
                refresh_token: str | None = Form(default=None, max_length=200, pattern=_TEXT),
                client_id: str | None = Form(default=None, max_length=64, pattern=_TEXT),
                client_secret: str | None = Form(default=None, max_length=256, pattern=_TEXT),
                scope: str | None = Form(default=None, max_length=500, pattern=_TEXT)) -> Response:
    accounts = _accounts(request)
    limited = runtime_of(request).state["limiter"].take(
        "token:" + (request.client.host if request.client else "unknown"))
    if limited is not None:  # besides the per-account lockout: one address guessing many accounts
        response = problem(429, "rate_limited", "Too many requests", f"retry after {limited} s",
                           retry_after_s=limited)
        response.headers["Retry-After"] = str(limited)
        return response
    try:
        if grant_type == "password":
            if not username or not password:
                raise DomainError("invalid_request", "the password grant needs username and password", 400,
                                  error="invalid_request")
            issued = await accounts.login(username, password)
        elif grant_type == "refresh_token":
            if not refresh_token:
                raise DomainError("invalid_request", "the refresh_token grant needs refresh_token", 400,
                                  error="invalid_request")
            issued = await accounts.refresh(refresh_token)
        elif grant_type == "client_credentials":
            basic = _basic_client(request)
            if basic is not None and (client_id or client_secret):
                raise DomainError("invalid_request", "send the client credentials once: in the Authorization "
                                  "header or in the form", 400, error="invalid_request")
            cid, secret = basic or (client_id, client_secret)
            if not cid or not secret:
                raise DomainError("invalid_client", "the client_credentials grant needs the client id and "
                                  "secret", 401, error="invalid_client")
            issued = await accounts.client_credentials(cid, secret, scope)
        else:
            raise DomainError("unsupported_grant_type", "grant_type must be password, refresh_token or "
                              "client_credentials", 400, error="unsupported_grant_type")
    except DomainError as exc:
        response = domain_problem(exc)
        if exc.status == 401:
            response.headers["WWW-Authenticate"] = 'Basic realm="tpa"'
        if exc.code == "account_locked" and exc.details.get("retry_after_s"):
            response.headers["Retry-After"] = str(exc.details["retry_after_s"])
        return response
    return _no_store(JSONResponse(issued.body()))


@router.post("/auth/logout", tags=["identity"], status_code=204, summary="End the login session of this token",
             openapi_extra=_SECURED, dependencies=_SIGNED_IN, response_class=Response,
             responses={204: {"description": "The session is ended: its refresh and access tokens stop working"}})
async def logout(request: Request) -> Response:
    return await _as_caller(request, lambda caller: _accounts(request).logout(caller), status=204)


# -- the caller's own account --------------------------------------------------------------------

class PasswordChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    current_password: str = Field(min_length=1, max_length=256, pattern=_TEXT)
    new_password: str = Field(min_length=1, max_length=256, pattern=_TEXT, description=(
        "12 to 128 characters, two kinds of characters at least, not common, not containing the username."))


@router.get("/me", tags=["identity"], summary="Who am I: principal, roles or scopes, jurisdiction, actions",
            openapi_extra=_SECURED, dependencies=_SIGNED_IN)
async def me(request: Request) -> Response:
    async def run(caller: Caller) -> dict[str, Any]:
        p = caller.principal
        return {"type": p.type, "id": p.id, "roles": list(p.roles), "scopes": list(p.scopes), "level": p.level,
                "jurisdiction": p.jurisdiction, "actions": sorted(p.actions()),
                "must_change_password": caller.must_change_password}
    return await _as_caller(request, run)


@router.put("/me/password", tags=["identity"], summary="Change my password", openapi_extra=_SECURED, dependencies=_SIGNED_IN)
async def change_my_password(request: Request, body: PasswordChange) -> Response:
    async def run(caller: Caller) -> dict[str, Any]:
        if caller.principal.type != "user":
            raise DomainError("not_a_user", "client systems have secrets, not passwords", 403)
        user = await _accounts(request).set_password(caller.principal, caller.principal.id, body.new_password,
                                                     current_password=body.current_password)
        return {"user_id": user.id, "version": user.version}
    return await _as_caller(request, run)


# -- users ---------------------------------------------------------------------------------------

Region = Field(pattern=r"^[1-9][0-9]{5}(?:[0-9]{6})?$", description="6- or 12-digit region code.")


class NewUser(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: str = Field(min_length=3, max_length=32, pattern=ev.USERNAME_PATTERN,
                          examples=["wang.li"])
    roles: list[ev.Role] = Field(min_length=1, max_length=9, examples=[["cadre"]])
    level: ev.Level = Field(examples=["village"])
    jurisdiction: str = Field(pattern=r"^[1-9][0-9]{5}(?:[0-9]{6})?$", examples=["620102001001"])
    password: str = Field(min_length=1, max_length=256, pattern=_TEXT,
                          description="Initial password, temporary: the user changes it at first login.")


class RolesChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    roles: list[ev.Role] = Field(min_length=1, max_length=9)
    level: ev.Level | None = None
    jurisdiction: str | None = Field(default=None, pattern=r"^[1-9][0-9]{5}(?:[0-9]{6})?$")


class PasswordReset(BaseModel):
    model_config = ConfigDict(extra="forbid")

    password: str = Field(min_length=1, max_length=256, pattern=_TEXT)


class Reason(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(min_length=1, max_length=2000, pattern=r"^[^\u0000]*\S[^\u0000]*$")


class Paging(BaseModel):
    model_config = ConfigDict(extra="forbid")

    limit: int = Field(default=50, ge=1, le=500)
    offset: int = Field(default=0, ge=0, le=1_000_000)


@router.post("/users", tags=["identity"], status_code=201, summary="Create a user (administrators)",
             openapi_extra=_SECURED, dependencies=_SIGNED_IN)
async def create_user(request: Request, body: NewUser) -> Response:
    async def run(caller: Caller) -> dict[str, Any]:
        from .accounts import user_view
        user = await _accounts(request).create_user(
            caller.principal, username=body.username, roles=body.roles, level=body.level,
            jurisdiction=body.jurisdiction, password=body.password)
        return user_view(user, _accounts(request).now())
    return await _as_caller(request, run, status=201, action="users:manage")


@router.get("/users", tags=["identity"], summary="Users in my jurisdiction (administrators)", openapi_extra=_SECURED, dependencies=_SIGNED_IN)
async def list_users(request: Request, paging: Paging = Query()) -> Response:
    return await _as_caller(request, lambda caller: _accounts(request).list_users(
        caller.principal, limit=paging.limit, offset=paging.offset), action="users:manage")


@router.get("/users/{user_id}", tags=["identity"], summary="A user (administrators, or the user)",
            openapi_extra=_SECURED, dependencies=_SIGNED_IN)
async def get_user(request: Request, user_id: uuid.UUID) -> Response:
    return await _as_caller(request, lambda caller: _accounts(request).user_view(caller.principal, str(user_id)),
                            action="users:manage")


def _user_command(command: Callable[[Accounts, Caller], Awaitable[Any]]) -> Callable[[Request], Awaitable[Response]]:
    async def run(request: Request) -> Response:
        async def inner(caller: Caller) -> dict[str, Any]:
            from .accounts import user_view
            user = await command(_accounts(request), caller)
            return user_view(user, _accounts(request).now())
        return await _as_caller(request, inner, action="users:manage")
    return run


@router.put("/users/{user_id}/roles", tags=["identity"], summary="Change a user's roles, level and jurisdiction",
            openapi_extra=_SECURED, dependencies=_SIGNED_IN)
async def change_roles(request: Request, user_id: uuid.UUID, body: RolesChange) -> Response:
    return await _user_command(lambda a, c: a.change_roles(c.principal, str(user_id), roles=body.roles,
                                                          level=body.level, jurisdiction=body.jurisdiction))(request)


@router.post("/users/{user_id}/password", tags=["identity"], openapi_extra=_SECURED, dependencies=_SIGNED_IN,
             summary="Reset a user's password (temporary; the user's sessions end)")
async def reset_password(request: Request, user_id: uuid.UUID, body: PasswordReset) -> Response:
    return await _user_command(lambda a, c: a.set_password(c.principal, str(user_id), body.password))(request)


@router.post("/users/{user_id}/unlock", tags=["identity"], summary="Lift a lockout", openapi_extra=_SECURED, dependencies=_SIGNED_IN)
async def unlock(request: Request, user_id: uuid.UUID) -> Response:
    return await _user_command(lambda a, c: a.unlock(c.principal, str(user_id)))(request)


@router.post("/users/{user_id}/deactivation", tags=["identity"], openapi_extra=_SECURED, dependencies=_SIGNED_IN,
             summary="Deactivate a user for good (the user's sessions end)")
async def deactivate(request: Request, user_id: uuid.UUID, body: Reason) -> Response:
    return await _user_command(lambda a, c: a.deactivate(c.principal, str(user_id), body.reason))(request)


# -- client systems ------------------------------------------------------------------------------

class NewClient(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200, pattern=r"^[^\u0000]*\S[^\u0000]*$",
                      examples=["County education bureau student aid system"])
    department: ev.Department
    scopes: list[ev.Scope] = Field(min_length=1, max_length=8, examples=[["comparison:education", "status:read"]])
    jurisdiction: str = Field(pattern=r"^[1-9][0-9]{5}(?:[0-9]{6})?$", examples=["620102"])


class Rotation(BaseModel):
    model_config = ConfigDict(extra="forbid")

    grace_hours: float = Field(default=0, ge=0, le=168, description="How long the current secret keeps "
                               "working (0: ends now, as after a leak; at most 7 days).")


def _secret_body(issued: Any, client: dict[str, Any]) -> dict[str, Any]:
    return {**client, "client_secret": issued.secret, "secret_id": issued.secret_id,
            "note": "the secret is shown once: store it now"}


@router.post("/clients", tags=["identity"], status_code=201, openapi_extra=_SECURED, dependencies=_SIGNED_IN,
             summary="Register a department's system; its secret is returned once")
async def register_client(request: Request, body: NewClient) -> Response:
    async def run(caller: Caller) -> dict[str, Any]:
        accounts = _accounts(request)
        issued = await accounts.register_client(caller.principal, name=body.name, department=body.department,
                                                scopes=body.scopes, jurisdiction=body.jurisdiction)
        return _secret_body(issued, await accounts.client_view(caller.principal, issued.client_id))
    return await _as_caller(request, run, status=201, action="clients:manage")


@router.get("/clients", tags=["identity"], summary="Client systems in my jurisdiction", openapi_extra=_SECURED, dependencies=_SIGNED_IN)
async def list_clients(request: Request, paging: Paging = Query()) -> Response:
    return await _as_caller(request, lambda caller: _accounts(request).list_clients(
        caller.principal, limit=paging.limit, offset=paging.offset), action="clients:manage")


@router.get("/clients/{client_id}", tags=["identity"], summary="A client system", openapi_extra=_SECURED, dependencies=_SIGNED_IN)
async def get_client(request: Request, client_id: uuid.UUID) -> Response:
    return await _as_caller(request, lambda caller: _accounts(request).client_view(caller.principal, str(client_id)),
                            action="clients:manage")


@router.post("/clients/{client_id}/secret", tags=["identity"], openapi_extra=_SECURED, dependencies=_SIGNED_IN,
             summary="Rotate a client's secret; the new one is returned once")
async def rotate_secret(request: Request, client_id: uuid.UUID, body: Rotation) -> Response:
    async def run(caller: Caller) -> dict[str, Any]:
        accounts = _accounts(request)
        issued = await accounts.rotate_client_secret(caller.principal, str(client_id),
                                                     timedelta(hours=body.grace_hours))
        return _secret_body(issued, await accounts.client_view(caller.principal, str(client_id)))
    return await _as_caller(request, run, action="clients:manage")


@router.post("/clients/{client_id}/revocation", tags=["identity"], openapi_extra=_SECURED, dependencies=_SIGNED_IN,
             summary="Revoke a client for good")
async def revoke_client(request: Request, client_id: uuid.UUID, body: Reason) -> Response:
    async def run(caller: Caller) -> dict[str, Any]:
        from .accounts import client_view
        client = await _accounts(request).revoke_client(caller.principal, str(client_id), body.reason)
        return client_view(client, _accounts(request).now())
    return await _as_caller(request, run, action="clients:manage")


# -- the access log ------------------------------------------------------------------------------

class AccessLogQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    principal_id: str | None = Field(default=None, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")
    record: str | None = Field(default=None, pattern=f"^(?:{ev.RECORD_REF_PATTERN})$",
                               description="A household or member id, or a keyed hash.")
    kind: Literal["personal_data", "denied"] | None = None
    since: datetime | None = None
    limit: int = Field(default=100, ge=1, le=1000)
    offset: int = Field(default=0, ge=0, le=1_000_000)


@router.get("/access-log", tags=["audit"], openapi_extra=_SECURED, dependencies=_SIGNED_IN,
            summary="Who read whose personal data, and who was refused (auditors)")
async def access_log(request: Request, query: AccessLogQuery = Query()) -> Response:
    if query.since is not None and query.since.tzinfo is None:
        return problem(422, "validation_error", "Invalid request", "since needs a time zone (e.g. Z)")
    return await _as_caller(request, lambda caller: _accounts(request).access_log(
        caller.principal, principal_id=query.principal_id, record=query.record, kind=query.kind,
        since=query.since, limit=query.limit, offset=query.offset), action="audit:read")
