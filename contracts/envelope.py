"""The JSON value of every Kafka record (see ``eventkit.events.RecordedEvent.envelope``)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class EventMetadata(BaseModel):
    """Who and what caused an event. Unknown keys are kept (forward compatible)."""

    model_config = ConfigDict(frozen=True, extra="allow")

    actor: str | None = Field(default=None, description="Authenticated principal that caused the event.")
    correlation_id: str | None = Field(default=None, description="Id shared by everything one request caused.")
    causation_id: str | None = Field(default=None, description="Id of the command or event that caused this one.")
    traceparent: str | None = Field(default=None, description="W3C Trace Context traceparent.")
    tracestate: str | None = Field(default=None, description="W3C Trace Context tracestate.")
    occurred_at: datetime | None = Field(default=None, description="Client (device) time; may be absent or skewed.")
    recorded_at: datetime = Field(description="Server time at which the event store recorded the event.")


class EventEnvelope(BaseModel):
    """One recorded event as published on Kafka. Unknown top-level keys are ignored."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    event_id: uuid.UUID = Field(description="Unique id of the event; consumers deduplicate on it.")
    event_type: str = Field(min_length=1, description="Event type, e.g. HouseholdRegistered.")
    schema_version: int = Field(ge=1, description="Version of the payload schema of this event type.")
    source: str = Field(min_length=1, description="CloudEvents source of the producing service, e.g. /tpa/registry.")
    stream_id: str = Field(min_length=1, description="Aggregate (stream) id; also the Kafka record key.")
    stream_type: str = Field(min_length=1, description="Aggregate type, e.g. household.")
    version: int = Field(ge=1, description="Position of the event in its stream (1 = first).")
    global_position: int = Field(ge=1, description="Position of the event in the producing service's store.")
    data: dict[str, Any] = Field(description="Event payload; its schema is given by event_type and schema_version.")
    metadata: EventMetadata
