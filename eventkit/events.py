"""Event values as the store records them and as the relay publishes them."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Mapping


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class Metadata:
    """Who and what caused an event; carried with it forever."""

    actor: str | None = None
    correlation_id: str | None = None
    causation_id: str | None = None
    traceparent: str | None = None
    tracestate: str | None = None
    occurred_at: datetime | None = None  # from the client (device time); may be absent

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "actor": self.actor,
            "correlation_id": self.correlation_id,
            "causation_id": self.causation_id,
            "traceparent": self.traceparent,
        }
        if self.tracestate:
            out["tracestate"] = self.tracestate
        if self.occurred_at is not None:
            out["occurred_at"] = self.occurred_at.isoformat()
        return out


@dataclass(frozen=True)
class NewEvent:
    """An event about to be appended. `data` is the JSON-ready payload."""

    event_type: str
    data: Mapping[str, Any]
    schema_version: int = 1
    event_id: uuid.UUID = field(default_factory=uuid.uuid4)


@dataclass(frozen=True)
class RecordedEvent:
    """An event as stored: immutable, with its place in the stream and in the store."""

    global_position: int
    event_id: uuid.UUID
    stream_id: str
    stream_type: str
    version: int
    event_type: str
    schema_version: int
    data: dict[str, Any]
    metadata: dict[str, Any]
    occurred_at: datetime | None
    recorded_at: datetime

    def envelope(self, source: str) -> dict[str, Any]:
        """The JSON document published to Kafka and read back by consumers."""
        meta = dict(self.metadata)
        meta["recorded_at"] = self.recorded_at.isoformat()
        if self.occurred_at is not None:
            meta["occurred_at"] = self.occurred_at.isoformat()
        return {
            "event_id": str(self.event_id),
            "event_type": self.event_type,
            "schema_version": self.schema_version,
            "source": source,
            "stream_id": self.stream_id,
            "stream_type": self.stream_type,
            "version": self.version,
            "global_position": self.global_position,
            "data": self.data,
            "metadata": meta,
        }
