"""Prometheus metrics of one service process (its own registry, no globals)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST  # noqa: F401  (re-exported for /metrics)


class Metrics:
    def __init__(self, service: str) -> None:
        self.service = service
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.events_appended = Counter(
            "tpa_events_appended", "Events appended to the service's event store", ["service"], registry=r)
        self.relay_published = Counter(
            "tpa_relay_published", "Events the relay published to Kafka", ["relay"], registry=r)
        self.relay_lag = Gauge(
            "tpa_relay_lag_events", "Events in the store not yet published", ["relay"], registry=r)
        self.relay_connected = Gauge(
            "tpa_relay_connected", "1 when the relay has a live producer", ["relay"], registry=r)
        self.relay_rewinds = Counter(
            "tpa_relay_republish_rewinds", "Times the relay republished after broker data loss",
            ["relay"], registry=r)
        self.consumer_lag = Gauge(
            "tpa_projection_consumer_lag", "Messages behind the partition's end offset",
            ["projection", "topic", "partition"], registry=r)
        self.held_streams = Gauge(
            "tpa_projection_held_streams", "Streams held on a gap or a failing event",
            ["projection"], registry=r)
        self.applied = Counter(
            "tpa_projection_applied_events", "Events applied by a projection", ["projection"], registry=r)
        self.duplicates = Counter(
            "tpa_projection_duplicate_events", "Redelivered events skipped as already applied",
            ["projection"], registry=r)
        self.dead_lettered = Counter(
            "tpa_projection_dead_lettered_events", "Events sent to a dead-letter topic",
            ["projection"], registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
