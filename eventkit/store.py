"""PostgreSQL event store with optimistic concurrency and gap-free global order.

Design (see docs/adr/0002-gap-free-global-order.md): every append transaction
takes one transaction-scoped advisory lock just before it inserts, allocates its
global positions under that lock and keeps the lock until it commits. PostgreSQL
makes a commit visible before it releases the transaction's locks, so positions
become visible strictly in increasing order: a reader that has seen position N
can never later find a committed event below N. Readers therefore tail with a
plain ``global_position > checkpoint``. Appends are serialised only for the
insert and the commit; command validation runs before the lock is taken.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from opentelemetry import propagate

from .errors import ConcurrencyError
from .events import Metadata, NewEvent, RecordedEvent

# Expected-version sentinels.
ANY: int | None = None  # no check
NO_STREAM = 0  # the stream must not exist yet

APPEND_LOCK_KEY = 0x7470_615F_6576  # "tpa_ev": one lock for all appends of a store

NOTIFY_CHANNEL = "tpa_events"

_COLUMNS = (
    "global_position, event_id, stream_id, stream_type, version, event_type,"
    " schema_version, data, metadata, occurred_at, recorded_at"
)


@dataclass(frozen=True)
class StreamAppend:
    """Events for one stream inside a multi-stream append."""

    stream_id: str
    stream_type: str
    expected_version: int | None
    events: Sequence[NewEvent]


def _row_to_event(row: Any) -> RecordedEvent:
    data = row["data"]
    meta = row["metadata"]
    return RecordedEvent(
        global_position=row["global_position"],
        event_id=row["event_id"],
        stream_id=row["stream_id"],
        stream_type=row["stream_type"],
        version=row["version"],
        event_type=row["event_type"],
        schema_version=row["schema_version"],
        data=json.loads(data) if isinstance(data, str) else data,
        metadata=json.loads(meta) if isinstance(meta, str) else meta,
        occurred_at=row["occurred_at"],
        recorded_at=row["recorded_at"],
    )


def _current_trace_metadata(meta: Metadata) -> dict[str, Any]:
    out = meta.to_json()
    if not out.get("traceparent"):
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        if "traceparent" in carrier:
            out["traceparent"] = carrier["traceparent"]
            if carrier.get("tracestate"):
                out["tracestate"] = carrier["tracestate"]
    return out


class EventStore:
    """Append-only store of one service's events. `pool` is an asyncpg pool."""

    def __init__(self, pool: Any, *, on_append: Any = None) -> None:
        self._pool = pool
        self._on_append = on_append  # callback(count) for metrics

    @property
    def pool(self) -> Any:
        return self._pool

    async def append(
        self,
        stream_id: str,
        stream_type: str,
        expected_version: int | None,
        events: Sequence[NewEvent],
        metadata: Metadata | None = None,
        *,
        conn: Any = None,
    ) -> list[RecordedEvent]:
        """Append to one stream; raises ConcurrencyError on a version conflict."""
        return await self.append_streams(
            [StreamAppend(stream_id, stream_type, expected_version, events)],
            metadata,
            conn=conn,
        )

    async def append_streams(
        self,
        appends: Iterable[StreamAppend],
        metadata: Metadata | None = None,
        *,
        conn: Any = None,
        returning: bool = True,
    ) -> list[RecordedEvent]:
        """Append to several streams atomically (all or nothing).

        ``returning=False`` does not read the recorded events back and returns an empty list
        (a bulk write that does not need them saves the transfer and the decoding).
        """
        appends = [a for a in appends if a.events]
        if not appends:
            return []
        if conn is None:
            async with self._pool.acquire() as own:
                async with own.transaction():
                    return await self._append(own, appends, metadata or Metadata(), returning)
        async with conn.transaction():  # a savepoint inside the caller's transaction
            return await self._append(conn, appends, metadata or Metadata(), returning)

    async def _append(
        self, conn: Any, appends: list[StreamAppend], metadata: Metadata, returning: bool = True
    ) -> list[RecordedEvent]:
        meta_json = json.dumps(_current_trace_metadata(metadata))
        total = sum(len(a.events) for a in appends)
        stream_ids = [a.stream_id for a in appends]
        if len(set(stream_ids)) != len(stream_ids):
            raise ValueError("each stream may appear once in an append")

        await conn.execute("SELECT pg_advisory_xact_lock($1)", APPEND_LOCK_KEY)
        rows = await conn.fetch(
            "SELECT s.stream_id, coalesce(max(e.version), 0) AS version"
            " FROM unnest($1::text[]) AS s(stream_id)"
            " LEFT JOIN events e ON e.stream_id = s.stream_id"
            " GROUP BY s.stream_id",
            stream_ids,
        )
        current = {r["stream_id"]: r["version"] for r in rows}
        for a in appends:
            actual = current[a.stream_id]
            if a.expected_version is not None and a.expected_version != actual:
                raise ConcurrencyError(a.stream_id, a.expected_version, actual)

        # A block of `total` positions, allocated under the lock.
        last = await conn.fetchval(
            "SELECT setval('events_global_position_seq',"
            " nextval('events_global_position_seq') + $1 - 1)",
            total,
        )
        position = last - total + 1
        cols: dict[str, list[Any]] = {k: [] for k in (
            "pos", "id", "sid", "stype", "ver", "etype", "sver", "data", "occ")}
        occurred_at = metadata.occurred_at
        for a in appends:
            version = current[a.stream_id]
            for ev in a.events:
                version += 1
                cols["pos"].append(position)
                cols["id"].append(ev.event_id)
                cols["sid"].append(a.stream_id)
                cols["stype"].append(a.stream_type)
                cols["ver"].append(version)
                cols["etype"].append(ev.event_type)
                cols["sver"].append(ev.schema_version)
                cols["data"].append(json.dumps(ev.data, ensure_ascii=False))
                cols["occ"].append(occurred_at)
                position += 1
        inserted = await (conn.fetch if returning else conn.execute)(
            f"INSERT INTO events ({_COLUMNS})"
            " SELECT p, i, s, st, v, et, sv, d::jsonb, $9::jsonb, o, clock_timestamp()"
            " FROM unnest($1::bigint[], $2::uuid[], $3::text[], $4::text[], $5::int[],"
            "             $6::text[], $7::int[], $8::text[], $10::timestamptz[])"
            "      AS t(p, i, s, st, v, et, sv, d, o)"
            + (f" RETURNING {_COLUMNS}" if returning else ""),
            cols["pos"], cols["id"], cols["sid"], cols["stype"], cols["ver"],
            cols["etype"], cols["sver"], cols["data"], meta_json, cols["occ"],
        )
        await conn.execute("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, str(last))
        if self._on_append is not None:
            self._on_append(total)
        if not returning:
            return []
        return sorted((_row_to_event(r) for r in inserted), key=lambda e: e.global_position)

    async def read_stream(
        self, stream_id: str, from_version: int = 1, *, conn: Any = None
    ) -> list[RecordedEvent]:
        sql = (
            f"SELECT {_COLUMNS} FROM events WHERE stream_id = $1 AND version >= $2"
            " ORDER BY version"
        )
        if conn is not None:
            rows = await conn.fetch(sql, stream_id, from_version)
        else:
            rows = await self._pool.fetch(sql, stream_id, from_version)
        return [_row_to_event(r) for r in rows]

    async def stream_version(self, stream_id: str) -> int:
        return await self._pool.fetchval(
            "SELECT coalesce(max(version), 0) FROM events WHERE stream_id = $1", stream_id
        )

    async def read_all(
        self, after_position: int, limit: int = 500, *, conn: Any = None
    ) -> list[RecordedEvent]:
        """Events after a global position, in order. Never skips a late commit."""
        sql = (
            f"SELECT {_COLUMNS} FROM events WHERE global_position > $1"
            " ORDER BY global_position LIMIT $2"
        )
        target = conn if conn is not None else self._pool
        rows = await target.fetch(sql, after_position, limit)
        return [_row_to_event(r) for r in rows]

    async def head_position(self) -> int:
        return await self._pool.fetchval("SELECT coalesce(max(global_position), 0) FROM events")

    async def get_event(self, event_id: uuid.UUID) -> RecordedEvent | None:
        row = await self._pool.fetchrow(f"SELECT {_COLUMNS} FROM events WHERE event_id = $1", event_id)
        return _row_to_event(row) if row else None
