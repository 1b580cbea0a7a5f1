"""The gateway's application layer for identity: users, client systems, tokens and the access log.

Loads the aggregates of ``identity.py`` from the event store, keeps what must never be an event
(password hashes, failed-login times, client secret hashes, refresh tokens) in its own tables,
and writes both in one transaction. Password hashing (scrypt, ~0.1 s) runs in a worker thread so
the event loop keeps serving other requests.

Per request, ``authenticate`` verifies the bearer token and then reads the account row: roles,
level, jurisdiction and scopes come from the account as it is now, so a role change, a
deactivation, a revoked client or an ended session takes effect at once, not when the token expires.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Sequence

import asyncpg

from eventkit.aggregate import Repository, save_all
from eventkit.clock import Clock, SystemClock
from eventkit.errors import DomainError
from eventkit.events import Metadata
from eventkit.principal import Principal, require
from eventkit.store import EventStore
from eventkit.telemetry import correlation_id
from eventkit import tokens as tk

from . import identity as idn

SYSTEM_ACTOR = "system"


@dataclass(frozen=True)
class TokenResponse:
    """An OAuth 2.0 token response (RFC 6749 §5.1)."""

    access_token: str
    expires_in: int
    refresh_token: str | None = None
    scope: str | None = None
    password_change_required: bool = False

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"access_token": self.access_token, "token_type": "Bearer",
                               "expires_in": self.expires_in}
        if self.refresh_token is not None:
            out["refresh_token"] = self.refresh_token
        if self.scope is not None:
            out["scope"] = self.scope
        if self.password_change_required:
            out["password_change_required"] = True
        return out


@dataclass(frozen=True)
class Caller:
    """An authenticated request's principal, with its session (users) and whether it must change
    its password before anything else."""

    principal: Principal
    session_id: str | None
    must_change_password: bool


def invalid_grant(message: str = "the credentials are not valid") -> DomainError:
    return DomainError("invalid_grant", message, 400, error="invalid_grant")


class Accounts:
    def __init__(self, pool: Any, store: EventStore, keyring: tk.Keyring, *, clock: Clock | None = None) -> None:
        self.pool = pool
        self.store = store
        self.keyring = keyring
        self.clock = clock or SystemClock()
        self.users = Repository(store, idn.User)
        self.clients = Repository(store, idn.Client)

    # -- helpers ---------------------------------------------------------------------------

    def now(self) -> datetime:
        return self.clock.now()

    @staticmethod
    def _meta(actor: str | None) -> Metadata:
        return Metadata(actor=actor, correlation_id=correlation_id.get())

    async def _save_user(self, conn: Any, user: idn.User, actor: str, *, must_change: bool | None = None) -> None:
        await save_all(self.store, [user], self._meta(actor), conn=conn)
        await conn.execute(
            """INSERT INTO accounts (principal_type, principal_id, name, roles, level, jurisdiction, active,
                                     must_change_password, version, updated_at)
               VALUES ('user', $1, $2, $3, $4, $5, $6, $7, $8, now())
               ON CONFLICT (principal_type, principal_id) DO UPDATE SET
                 roles = excluded.roles, level = excluded.level, jurisdiction = excluded.jurisdiction,
                 active = excluded.active, must_change_password = excluded.must_change_password,
                 version = excluded.version, updated_at = now()""",
            user.id, user.username, list(user.roles), user.level, user.jurisdiction, user.active,
            user.must_change_password if must_change is None else must_change, user.version)

    async def _save_client(self, conn: Any, client: idn.Client, actor: str) -> None:
        await save_all(self.store, [client], self._meta(actor), conn=conn)
        await conn.execute(
            """INSERT INTO accounts (principal_type, principal_id, name, scopes, level, jurisdiction, department,
                                     active, version, updated_at)
               VALUES ('client', $1, $2, $3, $4, $5, $6, $7, $8, now())
               ON CONFLICT (principal_type, principal_id) DO UPDATE SET
                 scopes = excluded.scopes, active = excluded.active, version = excluded.version, updated_at = now()""",
            client.id, client.name, list(client.scopes), idn.region_level(client.jurisdiction), client.jurisdiction,
            client.department, not client.revoked, client.version)

    async def _user(self, user_id: str, conn: Any = None) -> idn.User:
        user = await self.users.load(user_id, conn=conn)
        if not user.exists:
            raise DomainError("user_not_found", f"user {user_id} does not exist", 404)
        return user

    async def _client(self, client_id: str, conn: Any = None) -> idn.Client:
        client = await self.clients.load(client_id, conn=conn)
        if not client.exists:
            raise DomainError("client_not_found", f"client {client_id} does not exist", 404)
        return client

    @staticmethod
    def _manage(actor: Principal, action: str, jurisdiction: str | None) -> None:
        require(actor, action, region_code=jurisdiction)

    # -- users -----------------------------------------------------------------------------

    async def create_user(self, actor: Principal | None, *, username: str, roles: Sequence[str], level: str,
                          jurisdiction: str, password: str, user_id: str | None = None) -> idn.User:
        """Create a user with an initial password. Set by an administrator, the password is
        temporary (to be changed at first login); ``actor=None`` is the operator's bootstrap from
        the command line, which sets a final password."""
        if actor is not None:
            self._manage(actor, "users:manage", jurisdiction)
        now = self.now()
        user = idn.User(user_id or str(uuid.uuid4()))
        user.create(username=username, roles=roles, level=level, jurisdiction=jurisdiction,
                    created_by=actor.id if actor else SYSTEM_ACTOR, now=now)
        set_by = actor.id if actor is not None else user.id
        hashed = await asyncio.to_thread(user.set_password, password, set_by=set_by, now=now)
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                await self._save_user(conn, user, actor.subject if actor else SYSTEM_ACTOR)
                await conn.execute("INSERT INTO user_credentials (user_id, password_hash) VALUES ($1, $2)",
                                   user.id, hashed)
        except asyncpg.UniqueViolationError:
            raise DomainError("username_taken", f"username {user.username} is taken", 409,
                              field="username") from None
        return user

    async def operator_set_password(self, username: str, password: str) -> idn.User:
        """The host operator's reset from the command line (``tpa users set-password``): whoever runs
        it holds the database credentials already. The password is final, the sessions end."""
        row = await self.pool.fetchrow("SELECT principal_id FROM accounts WHERE principal_type = 'user' AND name = $1",
                                       idn.normalise_username(username))
        if row is None:
            raise DomainError("user_not_found", f"no user {username}", 404)
        user = await self._user(row["principal_id"])
        if user.is_locked(self.now()):
            user.unlock(unlocked_by=SYSTEM_ACTOR, now=self.now())
        hashed = await asyncio.to_thread(user.set_password, password, set_by=user.id, now=self.now())
        async with self.pool.acquire() as conn, conn.transaction():
            await self._save_user(conn, user, SYSTEM_ACTOR)
            await conn.execute(
                """INSERT INTO user_credentials (user_id, password_hash) VALUES ($1, $2)
                   ON CONFLICT (user_id) DO UPDATE SET password_hash = excluded.password_hash, failures = '{}'""",
                user.id, hashed)
            await self._end_sessions(conn, f"user:{user.id}")
        return user

    async def set_password(self, actor: Principal, user_id: str, password: str, *,
                           current_password: str | None = None) -> idn.User:
        """A user's own change (``current_password`` required) or an administrator's reset (temporary)."""
        own = actor.type == "user" and actor.id == user_id
        user = await self._user(user_id)
        if not own:
            self._manage(actor, "users:manage", user.jurisdiction)
        stored = await self.pool.fetchval("SELECT password_hash FROM user_credentials WHERE user_id = $1", user_id)
        if own:
            ok = stored is not None and await asyncio.to_thread(idn.verify_password, current_password or "", stored)
            if not ok:
                raise DomainError("wrong_password", "the current password is not correct", 403,
                                  field="current_password")
        hashed = await asyncio.to_thread(user.set_password, password, set_by=actor.id, now=self.now(),
                                         previous_hash=stored)
        async with self.pool.acquire() as conn, conn.transaction():
            await self._save_user(conn, user, actor.subject)
            await conn.execute(
                """INSERT INTO user_credentials (user_id, password_hash) VALUES ($1, $2)
                   ON CONFLICT (user_id) DO UPDATE SET password_hash = excluded.password_hash, failures = '{}'""",
                user_id, hashed)
            if not own:  # a reset ends the user's sessions
                await self._end_sessions(conn, f"user:{user_id}")
        return user

    async def change_roles(self, actor: Principal, user_id: str, *, roles: Sequence[str], level: str | None,
                           jurisdiction: str | None) -> idn.User:
        user = await self._user(user_id)
        self._manage(actor, "users:manage", user.jurisdiction)
        if jurisdiction is not None:
            self._manage(actor, "users:manage", jurisdiction)
        user.change_roles(roles=roles, changed_by=actor.id, now=self.now(), level=level, jurisdiction=jurisdiction)
        async with self.pool.acquire() as conn, conn.transaction():
            await self._save_user(conn, user, actor.subject)
        return user

    async def unlock(self, actor: Principal, user_id: str) -> idn.User:
        user = await self._user(user_id)
        self._manage(actor, "users:manage", user.jurisdiction)
        user.unlock(unlocked_by=actor.id, now=self.now())
        async with self.pool.acquire() as conn, conn.transaction():
            await self._save_user(conn, user, actor.subject)
            await conn.execute("UPDATE user_credentials SET failures = '{}' WHERE user_id = $1", user_id)
        return user

    async def deactivate(self, actor: Principal, user_id: str, reason: str) -> idn.User:
        user = await self._user(user_id)
        self._manage(actor, "users:manage", user.jurisdiction)
        user.deactivate(reason=reason, deactivated_by=actor.id, now=self.now())
        async with self.pool.acquire() as conn, conn.transaction():
            await self._save_user(conn, user, actor.subject)
            await self._end_sessions(conn, f"user:{user_id}")
        return user

    async def user_view(self, actor: Principal, user_id: str) -> dict[str, Any]:
        user = await self._user(user_id)
        if not (actor.type == "user" and actor.id == user_id):
            self._manage(actor, "users:manage", user.jurisdiction)
        return user_view(user, self.now())

    async def list_users(self, actor: Principal, *, limit: int, offset: int) -> dict[str, Any]:
        self._manage(actor, "users:manage", None)
        prefix = idn.jurisdiction_prefix(actor.jurisdiction)
        rows = await self.pool.fetch(
            """SELECT principal_id, name, roles, level, jurisdiction, active, count(*) OVER () AS total
               FROM accounts WHERE principal_type = 'user' AND jurisdiction LIKE $1 || '%'
               ORDER BY name LIMIT $2 OFFSET $3""", prefix, limit, offset)
        return {"items": [{"user_id": r["principal_id"], "username": r["name"], "roles": list(r["roles"]),
                           "level": r["level"], "jurisdiction": r["jurisdiction"], "active": r["active"]}
                          for r in rows],
                "total": rows[0]["total"] if rows else 0, "limit": limit, "offset": offset}

    # -- logins and tokens -------------------------------------------------------------------

    async def _tokens_for(self, conn: Any, principal: Principal, now: datetime, *, must_change: bool,
                          refresh: tk.IssuedRefreshToken | None) -> TokenResponse:
        if refresh is None:
            refresh = tk.issue_refresh_token(principal, now=now)
        await conn.execute(
            """INSERT INTO refresh_tokens (token_hash, subject, session_id, issued_at, expires_at)
               VALUES ($1, $2, $3, $4, $5)""",
            refresh.record.token_hash, refresh.record.subject, refresh.record.session_id,
            refresh.record.issued_at, refresh.record.expires_at)
        access = tk.issue_access_token(principal, self.keyring, now=now, session_id=refresh.record.session_id)
        return TokenResponse(access.token, access.expires_in, refresh.token, None, must_change)

    async def login(self, username: str, password: str) -> TokenResponse:
        """The resource-owner password grant of the console and the cadres' apps. Unknown users and
        wrong passwords are answered alike (``invalid_grant``) and take the same time."""
        now = self.now()
        try:
            name = idn.normalise_username(username)
        except DomainError:
            name = None
        row = None if name is None else await self.pool.fetchrow(
            """SELECT a.principal_id, c.password_hash FROM accounts a
               LEFT JOIN user_credentials c ON c.user_id = a.principal_id
               WHERE a.principal_type = 'user' AND a.name = $1""", name)
        if row is None or row["password_hash"] is None:
            await asyncio.to_thread(idn.dummy_verify, password)
            raise invalid_grant()
        user = await self._user(row["principal_id"])
        try:
            user.check_login_allowed(now)
        except DomainError as exc:
            if exc.code == "account_locked":
                raise
            raise invalid_grant() from None
        ok = await asyncio.to_thread(idn.verify_password, password, row["password_hash"])
        async with self.pool.acquire() as conn, conn.transaction():
            failures = await conn.fetchval(
                "SELECT failures FROM user_credentials WHERE user_id = $1 FOR UPDATE", user.id)
            user = await self._user(user.id, conn)  # fresh, under the row lock
            now = self.now()  # after the lock: concurrent failures are recorded in order
            if not ok:
                failure = user.record_login_failure(now, failures or ())
                await conn.execute("UPDATE user_credentials SET failures = $2 WHERE user_id = $1",
                                   user.id, list(failure.failures))
                if user.pending:
                    await self._save_user(conn, user, f"user:{user.id}")
            else:
                success = user.record_login_success(now)
                await conn.execute("UPDATE user_credentials SET failures = '{}' WHERE user_id = $1", user.id)
                if idn.needs_rehash(row["password_hash"]):
                    rehashed = await asyncio.to_thread(idn.hash_password, password)
                    await conn.execute("UPDATE user_credentials SET password_hash = $2 WHERE user_id = $1",
                                       user.id, rehashed)
                return await self._tokens_for(conn, user.principal(), now, must_change=success.must_change_password,
                                              refresh=None)
        if failure.locked:
            raise DomainError("account_locked", "too many failed logins: try again later", 429,
                              until=failure.locked_until.isoformat() if failure.locked_until else None)
        raise invalid_grant()

    async def refresh(self, token: str) -> TokenResponse:
        """The refresh-token grant: the token is exchanged for a successor in the same session. A token
        presented twice ends its whole session (it was copied)."""
        now = self.now()
        if not isinstance(token, str) or len(token) > 200:
            raise invalid_grant("the refresh token is not valid")
        token_hash = tk.hash_refresh_token(token) if token else ""
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow("SELECT * FROM refresh_tokens WHERE token_hash = $1 FOR UPDATE", token_hash)
            record = None if row is None else tk.RefreshToken(
                row["token_hash"], row["subject"], row["session_id"], row["issued_at"], row["expires_at"],
                row["used_at"], row["revoked_at"])
            try:
                successor = tk.rotate_refresh_token(token, record, now=now)
            except tk.TokenError as exc:
                if exc.code == "refresh_token_reused" and record is not None:
                    await self._end_session(conn, record.session_id, now)
                    # the transaction must commit the revocation, so answer after it
                    reused = True
                else:
                    raise invalid_grant("the refresh token is not valid") from None
            else:
                reused = False
            if not reused:
                await conn.execute("UPDATE refresh_tokens SET used_at = $2 WHERE token_hash = $1", token_hash, now)
                kind, _, subject_id = successor.record.subject.partition(":")
                account = await conn.fetchrow(
                    "SELECT active, must_change_password FROM accounts WHERE principal_type = $1 AND principal_id = $2",
                    kind, subject_id)
                if account is None or not account["active"]:
                    raise invalid_grant("the account is no longer active")
                user = await self._user(subject_id, conn)
                return await self._tokens_for(conn, user.principal(), now,
                                              must_change=account["must_change_password"], refresh=successor)
        raise invalid_grant("the refresh token was already used: the session is ended")

    async def client_credentials(self, client_id: str, secret: str, scope: str | None) -> TokenResponse:
        """The client-credentials grant of department systems (no refresh token: they authenticate again)."""
        now = self.now()
        try:
            idn._check_id(client_id, "client")
        except DomainError:
            raise DomainError("invalid_client", "unknown client or wrong secret", 401, error="invalid_client") \
                from None
        client = await self.clients.load(client_id)
        stored = {r["secret_id"]: r["secret_hash"] for r in await self.pool.fetch(
            "SELECT secret_id, secret_hash FROM client_secrets WHERE client_id = $1", client_id)}
        try:
            client.authenticate(secret, stored, now)
        except DomainError as exc:
            raise DomainError("invalid_client", str(exc), 401, error="invalid_client") from None
        principal = client.principal()
        granted = principal.scopes
        if scope:
            asked = tuple(sorted(set(scope.split())))
            if not set(asked) <= set(granted):
                raise DomainError("invalid_scope", "the client may not ask for "
                                  + ", ".join(sorted(set(asked) - set(granted))), 400, error="invalid_scope")
            granted = asked
        principal = Principal("client", principal.id, (), principal.level, principal.jurisdiction, granted)
        access = tk.issue_access_token(principal, self.keyring, now=now)
        return TokenResponse(access.token, access.expires_in, None, " ".join(granted))

    async def _end_session(self, conn: Any, session_id: str, now: datetime) -> None:
        await conn.execute("UPDATE refresh_tokens SET revoked_at = $2 WHERE session_id = $1 AND revoked_at IS NULL",
                           session_id, now)
        await conn.execute("INSERT INTO revoked_sessions (session_id, revoked_at) VALUES ($1, $2) "
                           "ON CONFLICT DO NOTHING", session_id, now)

    async def _end_sessions(self, conn: Any, subject: str) -> None:
        now = self.now()
        for row in await conn.fetch("SELECT DISTINCT session_id FROM refresh_tokens WHERE subject = $1 "
                                    "AND revoked_at IS NULL", subject):
            await self._end_session(conn, row["session_id"], now)

    async def logout(self, caller: Caller) -> None:
        if caller.session_id is None:
            raise DomainError("no_session", "this token belongs to no login session", 400)
        async with self.pool.acquire() as conn, conn.transaction():
            await self._end_session(conn, caller.session_id, self.now())

    async def authenticate(self, token: str) -> Caller:
        """The caller of a request with ``Authorization: Bearer <token>``: the token is checked, then
        the account as it is now (``token_revoked`` for a deactivated user, a revoked client or an
        ended session)."""
        principal, claims = tk.verify_access_token(token, self.keyring, now=self.now())
        row = await self.pool.fetchrow(
            """SELECT a.roles, a.scopes, a.level, a.jurisdiction, a.active, a.must_change_password,
                      EXISTS (SELECT 1 FROM revoked_sessions s WHERE s.session_id = $3) AS ended
               FROM accounts a WHERE a.principal_type = $1 AND a.principal_id = $2""",
            principal.type, principal.id, claims.get("sid") or "")
        if row is None or not row["active"] or row["ended"]:
            raise tk.TokenError("token_revoked", "the session was ended or the account is no longer active")
        scopes = tuple(s for s in row["scopes"] if s in principal.scopes)
        if principal.type == "client" and not scopes:
            raise tk.TokenError("token_revoked", "the client no longer holds the token's scopes")
        current = Principal(principal.type, principal.id, tuple(row["roles"]), row["level"], row["jurisdiction"],
                            scopes)
        return Caller(current, claims.get("sid"), bool(row["must_change_password"]))

    # -- client systems ----------------------------------------------------------------------

    async def register_client(self, actor: Principal, *, name: str, department: str, scopes: Sequence[str],
                              jurisdiction: str) -> idn.IssuedSecret:
        self._manage(actor, "clients:manage", jurisdiction)
        client = idn.Client(str(uuid.uuid4()))
        issued = client.register(name=name, department=department, scopes=scopes, jurisdiction=jurisdiction,
                                 registered_by=actor.id, now=self.now())
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                await self._save_client(conn, client, actor.subject)
                await conn.execute("INSERT INTO client_secrets (client_id, secret_id, secret_hash) VALUES ($1, $2, $3)",
                                   client.id, issued.secret_id, issued.secret_hash)
        except asyncpg.UniqueViolationError:
            raise DomainError("client_name_taken", f"a client system named {name!r} is registered in this "
                              "jurisdiction already", 409, field="name") from None
        return issued

    async def rotate_client_secret(self, actor: Principal, client_id: str, grace: timedelta) -> idn.IssuedSecret:
        client = await self._client(client_id)
        self._manage(actor, "clients:manage", client.jurisdiction)
        issued = client.rotate_secret(rotated_by=actor.id, now=self.now(), grace=grace)
        async with self.pool.acquire() as conn, conn.transaction():
            await self._save_client(conn, client, actor.subject)
            await conn.execute("INSERT INTO client_secrets (client_id, secret_id, secret_hash) VALUES ($1, $2, $3)",
                               client.id, issued.secret_id, issued.secret_hash)
            await conn.execute("DELETE FROM client_secrets WHERE client_id = $1 AND NOT secret_id = ANY($2)",
                               client.id, list(client.valid_secret_ids(self.now())))
        return issued

    async def revoke_client(self, actor: Principal, client_id: str, reason: str) -> idn.Client:
        client = await self._client(client_id)
        self._manage(actor, "clients:manage", client.jurisdiction)
        client.revoke(reason=reason, revoked_by=actor.id, now=self.now())
        async with self.pool.acquire() as conn, conn.transaction():
            await self._save_client(conn, client, actor.subject)
            await conn.execute("DELETE FROM client_secrets WHERE client_id = $1", client.id)
        return client

    async def client_view(self, actor: Principal, client_id: str) -> dict[str, Any]:
        client = await self._client(client_id)
        self._manage(actor, "clients:manage", client.jurisdiction)
        return client_view(client, self.now())

    async def list_clients(self, actor: Principal, *, limit: int, offset: int) -> dict[str, Any]:
        self._manage(actor, "clients:manage", None)
        rows = await self.pool.fetch(
            """SELECT principal_id, name, department, scopes, jurisdiction, active, count(*) OVER () AS total
               FROM accounts WHERE principal_type = 'client' AND jurisdiction LIKE $1 || '%'
               ORDER BY name, principal_id LIMIT $2 OFFSET $3""",
            idn.jurisdiction_prefix(actor.jurisdiction), limit, offset)
        return {"items": [{"client_id": r["principal_id"], "name": r["name"], "department": r["department"],
                           "scopes": list(r["scopes"]), "jurisdiction": r["jurisdiction"], "active": r["active"]}
                          for r in rows],
                "total": rows[0]["total"] if rows else 0, "limit": limit, "offset": offset}

    # -- the access log ----------------------------------------------------------------------

    async def record_access(self, principal: Principal, *, route: str, purpose: str, records: Sequence[str],
                            count: int) -> None:
        """Record that a response disclosed personal data (``PersonalDataAccessed``, one per 1000 records)."""
        now = self.now()
        refs = list(dict.fromkeys(records))
        events = []
        for start in range(0, max(1, len(refs)), idn.ev.MAX_RECORDS):
            page = refs[start:start + idn.ev.MAX_RECORDS]
            if not page:
                break
            share = count if len(refs) <= idn.ev.MAX_RECORDS else max(1, round(count * len(page) / len(refs)))
            events.append(idn.personal_data_accessed(principal, route=route, purpose=purpose, records=page,
                                                     count=share, now=now))
        await self._append_access(principal, events)

    async def record_denied(self, principal: Principal, *, route: str, reason: str, action: str | None) -> None:
        await self._append_access(principal, [idn.access_denied(principal, route=route, reason=reason,
                                                                 now=self.now(), action=action)])

    async def _append_access(self, principal: Principal, events: Sequence[Any]) -> None:
        from eventkit.events import NewEvent
        from eventkit.store import NO_STREAM, StreamAppend

        if not events:
            return
        appends = [StreamAppend(e.access_id, idn.ev.ACCESS, NO_STREAM,
                                [NewEvent(e.event_type, e.model_dump(mode="json"), e.schema_version)])
                   for e in events]
        async with self.pool.acquire() as conn, conn.transaction():
            await self.store.append_streams(appends, self._meta(principal.subject), conn=conn)
            await conn.executemany(
                """INSERT INTO access_log (access_id, kind, principal_type, principal_id, route, action, purpose,
                                          reason, records, count, at)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)""",
                [(uuid.UUID(e.access_id), "personal_data" if e.event_type == "PersonalDataAccessed" else "denied",
                  e.principal_type, e.principal_id, e.route, getattr(e, "action", None), getattr(e, "purpose", None),
                  getattr(e, "reason", None), list(getattr(e, "records", [])), getattr(e, "count", 0),
                  getattr(e, "accessed_at", None) or getattr(e, "denied_at")) for e in events])

    async def access_log(self, actor: Principal, *, principal_id: str | None, record: str | None,
                         kind: str | None, since: datetime | None, limit: int, offset: int) -> dict[str, Any]:
        require(actor, "audit:read")
        rows = await self.pool.fetch(
            """SELECT l.*, count(*) OVER () AS total FROM access_log l
               LEFT JOIN accounts a ON a.principal_type = l.principal_type AND a.principal_id = l.principal_id
               WHERE ($1::text IS NULL OR l.principal_id = $1) AND ($2::text IS NULL OR l.records @> ARRAY[$2])
                 AND ($3::text IS NULL OR l.kind = $3) AND ($4::timestamptz IS NULL OR l.at >= $4)
                 AND (a.jurisdiction IS NULL OR a.jurisdiction LIKE $7 || '%')
               ORDER BY l.at DESC, l.access_id LIMIT $5 OFFSET $6""",
            principal_id, record, kind, since, limit, offset, idn.jurisdiction_prefix(actor.jurisdiction))
        items = [{"access_id": str(r["access_id"]), "kind": r["kind"], "principal_type": r["principal_type"],
                  "principal_id": r["principal_id"], "route": r["route"], "action": r["action"],
                  "purpose": r["purpose"], "reason": r["reason"], "records": list(r["records"]),
                  "count": r["count"], "at": r["at"].isoformat()} for r in rows]
        return {"items": items, "total": rows[0]["total"] if rows else 0, "limit": limit, "offset": offset}


def user_view(user: idn.User, now: datetime) -> dict[str, Any]:
    return {"user_id": user.id, "username": user.username, "roles": list(user.roles), "level": user.level,
            "jurisdiction": user.jurisdiction, "active": user.active, "locked": user.is_locked(now),
            "locked_until": user.locked_until.isoformat() if user.is_locked(now) and user.locked_until else None,
            "must_change_password": user.must_change_password, "version": user.version}


def client_view(client: idn.Client, now: datetime) -> dict[str, Any]:
    return {"client_id": client.id, "name": client.name, "department": client.department,
            "scopes": list(client.scopes), "jurisdiction": client.jurisdiction, "active": not client.revoked,
            "secret_ids": list(client.valid_secret_ids(now)), "version": client.version}
