"""Event-sourced aggregates: state is the fold of the stream's events.

Domain code subclasses `Aggregate` (pure Python, no I/O); `Repository` loads an
aggregate by replaying its stream and saves new events with optimistic
concurrency on the version it was loaded at.
"""

from __future__ import annotations

from typing import Any, ClassVar, Generic, Sequence, TypeVar

from .events import Metadata, NewEvent, RecordedEvent
from .store import NO_STREAM, EventStore, StreamAppend


class Aggregate:
    """Base class. Subclasses define `when_<EventType>(data)` methods to evolve state."""

    stream_type: ClassVar[str]

    def __init__(self, aggregate_id: str) -> None:
        self.id = aggregate_id
        self.version = 0
        self.pending: list[NewEvent] = []

    def _apply(self, event_type: str, data: dict[str, Any]) -> None:
        handler = getattr(self, f"when_{event_type}", None)
        if handler is None:
            raise TypeError(f"{type(self).__name__} cannot apply {event_type}")
        handler(data)

    def replay(self, event: RecordedEvent) -> None:
        self._apply(event.event_type, event.data)
        self.version = event.version

    def record(self, event_type: str, data: dict[str, Any], schema_version: int = 1) -> None:
        """Raise a new event: apply it now, append it on save."""
        self._apply(event_type, data)
        self.pending.append(NewEvent(event_type, data, schema_version))

    @property
    def exists(self) -> bool:
        return self.version > 0 or bool(self.pending)


A = TypeVar("A", bound=Aggregate)


class Repository(Generic[A]):
    def __init__(self, store: EventStore, cls: type[A]) -> None:
        self.store = store
        self.cls = cls

    async def load(self, aggregate_id: str, *, conn: Any = None) -> A:
        agg = self.cls(aggregate_id)
        for event in await self.store.read_stream(aggregate_id, conn=conn):
            agg.replay(event)
        return agg

    async def save(self, agg: A, metadata: Metadata | None = None, *, conn: Any = None) -> list[RecordedEvent]:
        if not agg.pending:
            return []
        expected = agg.version if agg.version else NO_STREAM
        recorded = await self.store.append(agg.id, agg.stream_type, expected, agg.pending, metadata, conn=conn)
        agg.pending = []
        agg.version = recorded[-1].version
        return recorded


async def save_all(store: EventStore, aggregates: Sequence[Aggregate], metadata: Metadata | None = None, *,
                   conn: Any = None) -> list[RecordedEvent]:
    """Append the pending events of several aggregates atomically, with optimistic concurrency on
    each stream (a command that moves money on an allocation and a project, a batch of cases)."""
    appends = [StreamAppend(a.id, a.stream_type, a.version or NO_STREAM, list(a.pending))
               for a in aggregates if a.pending]
    recorded = await store.append_streams(appends, metadata, conn=conn)
    for a in aggregates:
        if a.pending:
            a.version = max(e.version for e in recorded if e.stream_id == a.id)
            a.pending = []
    return recorded
