"""Idempotent HTTP commands (``Idempotency-Key``).

The first result of a command is stored in the same transaction as the events
it appended, so a retried request (flaky village networks) returns that first
result and appends nothing new. A concurrent retry waits on the key's row lock
and then finds the stored result. The same key with a different request body is
an error (422), never a silent replay of something else.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import asyncpg

from .errors import IdempotencyKeyReused


@dataclass(frozen=True)
class CommandResult:
    status_code: int
    body: Any
    replayed: bool = False


def request_fingerprint(method: str, path: str, body: Any) -> str:
    raw = json.dumps([method.upper(), path, body], sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(raw.encode()).hexdigest()


async def run_command(
    pool: Any,
    handler: Callable[[Any], Awaitable[CommandResult]],
    *,
    key: str | None,
    scope: str,
    fingerprint: str,
) -> CommandResult:
    """Run `handler(conn)` in one transaction; with a key, at most once per (scope, key)."""
    async with pool.acquire() as conn:
        if key is None:
            async with conn.transaction():
                return await handler(conn)
        for _ in range(2):
            try:
                return await _once(conn, handler, key, scope, fingerprint)
            except asyncpg.UniqueViolationError:
                pass  # the twin committed first: read its result
            except Exception:
                # The command failed, possibly because a concurrent twin with the same key
                # committed first (e.g. it claimed the same person): then its result stands.
                prior = await _stored(conn, scope, key)
                if prior is not None:
                    return _replay(prior, key, fingerprint)
                raise
        prior = await _stored(conn, scope, key)
        return _replay(prior, key, fingerprint)


async def _stored(conn: Any, scope: str, key: str) -> Any:
    return await conn.fetchrow(
        "SELECT request_hash, status_code, response FROM idempotency_keys WHERE scope = $1 AND key = $2",
        scope, key)


async def _once(conn: Any, handler: Callable[[Any], Awaitable[CommandResult]], key: str, scope: str,
                fingerprint: str) -> CommandResult:
    async with conn.transaction():
        prior = await _stored(conn, scope, key)
        if prior is not None:
            return _replay(prior, key, fingerprint)
        result = await handler(conn)
        if not 200 <= result.status_code < 300:
            return result  # only successes are remembered: a retry may succeed
        # Inserting the key takes its unique-index lock: a concurrent twin blocks
        # here until we commit, then fails and replays our result below.
        await conn.execute(
            "INSERT INTO idempotency_keys (scope, key, request_hash, status_code, response)"
            " VALUES ($1, $2, $3, $4, $5::jsonb)",
            scope, key, fingerprint, result.status_code, json.dumps(result.body, default=str))
        return result


async def expire(pool: Any, retention_hours: float) -> int:
    """Forget results older than the retention period; return how many were removed."""
    status = await pool.execute(
        "DELETE FROM idempotency_keys WHERE created_at < now() - make_interval(secs => $1)",
        float(retention_hours) * 3600.0)
    return int(status.split()[-1])


def _replay(prior: Any, key: str, fingerprint: str) -> CommandResult:
    if prior["request_hash"] != fingerprint:
        raise IdempotencyKeyReused(key)
    body = prior["response"]
    return CommandResult(prior["status_code"], json.loads(body) if isinstance(body, str) else body, True)
