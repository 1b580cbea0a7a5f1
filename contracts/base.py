"""Base class of event payload models, and topic naming."""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict

SERVICES = ("registry", "workflow", "funds", "monitoring", "gateway")


def topic_name(service: str, stream_type: str) -> str:
    """Kafka topic of one aggregate (stream type) of one service: ``tpa.<service>.<aggregate>.v1``."""
    if service not in SERVICES:
        raise ValueError(f"unknown service {service!r}; expected one of {', '.join(SERVICES)}")
    if not stream_type or not stream_type.replace("_", "").isalnum() or not stream_type.islower():
        raise ValueError(f"stream type must be lower_snake_case, got {stream_type!r}")
    return f"tpa.{service}.{stream_type}.v1"


class EventModel(BaseModel):
    """Payload (the envelope's ``data``) of one event type at one schema version.

    A published (event_type, schema_version) never changes incompatibly: to
    remove, rename or retype a field, or to add a required one, declare a new
    model with ``schema_version + 1`` and keep the old one for stored events.
    Unknown fields are ignored when parsing, so adding optional fields is safe.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    event_type: ClassVar[str]
    schema_version: ClassVar[int]
    topic: ClassVar[str]
    stream_type: ClassVar[str]
