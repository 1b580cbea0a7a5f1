"""Kafka topics, the topic catalogue, record headers and event parsing.

Each record on a topic has:

- key: the stream id, UTF-8 encoded (so one aggregate's events stay ordered);
- value: an ``EventEnvelope`` as JSON;
- headers: the CloudEvents Kafka binary binding (``ce_*``, ``content-type``)
  plus W3C ``traceparent``/``tracestate`` when known.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Mapping

from contracts.base import SERVICES, EventModel, topic_name  # noqa: F401 (SERVICES, topic_name re-exported)
from contracts.envelope import EventEnvelope
from contracts.funds import (
    ALLOCATION,
    ALLOCATION_EVENTS,
    ANOMALY,
    ANOMALY_EVENTS,
    DISBURSEMENT,
    DISBURSEMENT_EVENTS,
    PROJECT,
    PROJECT_EVENTS,
)
from contracts.gateway import ACCESS, ACCESS_EVENTS, CLIENT, CLIENT_EVENTS, USER, USER_EVENTS
from contracts.registry import HOUSEHOLD, HOUSEHOLD_EVENTS, VILLAGE, VILLAGE_EVENTS
from contracts.monitoring import ALERT, ALERT_EVENTS, ATTENDANCE, ATTENDANCE_EVENTS, COMPLIANCE, COMPLIANCE_EVENTS
from contracts.workflow import CASE
from contracts.workflow_cases import CASE_EVENTS

# CloudEvents Kafka binary binding headers.
HEADER_CE_SPECVERSION = "ce_specversion"
HEADER_CE_ID = "ce_id"
HEADER_CE_TYPE = "ce_type"
HEADER_CE_SOURCE = "ce_source"
HEADER_CE_SUBJECT = "ce_subject"
HEADER_CE_TIME = "ce_time"
HEADER_CONTENT_TYPE = "content-type"
# W3C Trace Context.
HEADER_TRACEPARENT = "traceparent"
HEADER_TRACESTATE = "tracestate"

CE_SPECVERSION = "1.0"
CONTENT_TYPE_JSON = "application/json"
DLQ_SUFFIX = ".dlq"


@dataclass(frozen=True)
class Topic:
    """One catalogued topic."""

    name: str
    service: str
    aggregate: str  # the stream type
    key: str  # what the record key is
    events: tuple[type[EventModel], ...]


def _topic(service: str, aggregate: str, key: str, *events: type[EventModel]) -> Topic:
    return Topic(topic_name(service, aggregate), service, aggregate, key, events)


TOPICS: dict[str, Topic] = {
    t.name: t
    for t in (
        _topic("registry", HOUSEHOLD, "stream id (household id)", *HOUSEHOLD_EVENTS),
        _topic("registry", VILLAGE, "stream id (village code)", *VILLAGE_EVENTS),
        _topic("workflow", CASE, "stream id (case id)", *CASE_EVENTS),
        _topic("monitoring", ALERT, "stream id (alert id)", *ALERT_EVENTS),
        _topic("monitoring", ATTENDANCE, "stream id (cadre id)", *ATTENDANCE_EVENTS),
        _topic("monitoring", COMPLIANCE, "stream id (finding id)", *COMPLIANCE_EVENTS),
        _topic("funds", ALLOCATION, "stream id (allocation id)", *ALLOCATION_EVENTS),
        _topic("funds", PROJECT, "stream id (project id)", *PROJECT_EVENTS),
        _topic("funds", DISBURSEMENT, "stream id (disbursement id)", *DISBURSEMENT_EVENTS),
        _topic("funds", ANOMALY, "stream id (anomaly id)", *ANOMALY_EVENTS),
        _topic("gateway", USER, "stream id (user id)", *USER_EVENTS),
        _topic("gateway", CLIENT, "stream id (client id)", *CLIENT_EVENTS),
        _topic("gateway", ACCESS, "stream id (access id)", *ACCESS_EVENTS),
    )
}


def _event_models() -> dict[tuple[str, int], type[EventModel]]:
    models: dict[tuple[str, int], type[EventModel]] = {}
    for t in TOPICS.values():
        for m in t.events:
            key = (m.event_type, m.schema_version)
            if key in models:
                raise RuntimeError(f"{m.event_type} v{m.schema_version} is catalogued twice")
            if m.topic != t.name or m.stream_type != t.aggregate:
                raise RuntimeError(f"{m.__name__} declares topic/stream type that disagree with the catalogue")
            models[key] = m
    return models


EVENT_MODELS: dict[tuple[str, int], type[EventModel]] = _event_models()


class UnknownEventError(ValueError):
    """An (event_type, schema_version) with no contract."""

    def __init__(self, event_type: str, schema_version: int) -> None:
        known = ", ".join(f"{t} v{v}" for t, v in sorted(EVENT_MODELS)) or "none"
        super().__init__(
            f"unknown event {event_type!r} schema_version {schema_version}: no contract in contracts/ "
            f"(known: {known})"
        )
        self.event_type = event_type
        self.schema_version = schema_version


def dlq_topic(topic: str) -> str:
    """Dead-letter topic of a topic."""
    return topic + DLQ_SUFFIX


def _service_of(event_type: str, schema_version: int) -> str:
    model = EVENT_MODELS.get((event_type, schema_version))
    if model is None:
        raise UnknownEventError(event_type, schema_version)
    return TOPICS[model.topic].service


def ce_type(event_type: str, schema_version: int, service: str | None = None) -> str:
    """CloudEvents type, e.g. ``tpa.registry.HouseholdRegistered.v1``.

    Without ``service`` the event must be catalogued (its service is looked up).
    """
    if service is None:
        service = _service_of(event_type, schema_version)
    return f"tpa.{service}.{event_type}.v{schema_version}"


def parse_event(
    envelope: Mapping[str, Any] | str | bytes,
) -> tuple[EventEnvelope, EventModel]:
    """Validate an envelope (dict or JSON) and its payload against the contract of its type/version.

    Raises ``UnknownEventError`` for an uncatalogued type/version and pydantic's
    ``ValidationError`` (a ``ValueError``) for an invalid envelope or payload.
    """
    if isinstance(envelope, (str, bytes)):
        envelope = json.loads(envelope)
    env = EventEnvelope.model_validate(envelope)
    model = EVENT_MODELS.get((env.event_type, env.schema_version))
    if model is None:
        raise UnknownEventError(env.event_type, env.schema_version)
    if env.stream_type != model.stream_type:
        raise ValueError(
            f"{env.event_type} v{env.schema_version} belongs to stream type {model.stream_type!r}, "
            f"envelope {env.event_id} says {env.stream_type!r}"
        )
    return env, model.model_validate(env.data)


def _rfc3339(dt: datetime) -> str:
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.isoformat()


def record_key(envelope: EventEnvelope) -> bytes:
    """Kafka record key: the stream id, UTF-8."""
    return envelope.stream_id.encode("utf-8")


def record_headers(envelope: EventEnvelope) -> list[tuple[str, bytes]]:
    """Kafka record headers (CloudEvents binary binding + W3C trace context) of a catalogued event."""
    meta = envelope.metadata
    headers = [
        (HEADER_CE_SPECVERSION, CE_SPECVERSION),
        (HEADER_CE_ID, str(envelope.event_id)),
        (HEADER_CE_TYPE, ce_type(envelope.event_type, envelope.schema_version)),
        (HEADER_CE_SOURCE, envelope.source),
        (HEADER_CE_SUBJECT, envelope.stream_id),
        (HEADER_CE_TIME, _rfc3339(meta.recorded_at)),
        (HEADER_CONTENT_TYPE, CONTENT_TYPE_JSON),
    ]
    if meta.traceparent:
        headers.append((HEADER_TRACEPARENT, meta.traceparent))
    if meta.tracestate:
        headers.append((HEADER_TRACESTATE, meta.tracestate))
    return [(name, value.encode("utf-8")) for name, value in headers]
