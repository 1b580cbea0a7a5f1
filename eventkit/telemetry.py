"""OpenTelemetry and structured logging for a service process.

Traces cover HTTP (FastAPI), database (asyncpg), outgoing HTTP (httpx) and Kafka
publish/process spans made by the relay and the projection runner. The context
travels through the stored event metadata (``traceparent``) into the Kafka
headers, so one trace spans gateway -> registry -> relay -> projection.

The exporter is chosen by the standard variables: ``OTEL_TRACES_EXPORTER``
(``otlp``, ``console`` or ``none``) and ``OTEL_EXPORTER_OTLP_ENDPOINT`` /
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``; the sampler by ``OTEL_TRACES_SAMPLER`` (and
``OTEL_TRACES_SAMPLER_ARG``), default ``parentbased_always_on``. With no exporter nothing is
recorded: spans are not sampled (unless an incoming ``traceparent`` is) and the database
statements are not instrumented, but trace ids are still made, propagated and logged, so
logs of one request correlate across services.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import sys
from datetime import datetime, timezone
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased

correlation_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("correlation_id", default=None)

_configured = False
_instrumented = False
_recording = False  # whether spans go anywhere


def exporter_from_env(env: dict[str, str] | None = None) -> SpanExporter | None:
    env = dict(os.environ if env is None else env)
    choice = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if choice == "none" or (not choice and not endpoint):
        return None
    if choice == "console":
        return ConsoleSpanExporter(out=sys.stderr)
    if choice in ("", "otlp"):
        protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
        if protocol != "http/protobuf":
            logging.getLogger("eventkit.telemetry").warning(
                "OTLP protocol %s not installed; using http/protobuf", protocol)
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()  # reads the OTEL_EXPORTER_OTLP_* variables itself
    raise ValueError(f"unsupported OTEL_TRACES_EXPORTER={choice!r} (use otlp, console or none)")


def setup_tracing(service_name: str, exporter: SpanExporter | None = None, *, processor: Any = None) -> None:
    """Install the process-wide tracer provider once (first caller wins)."""
    global _configured, _recording
    if _configured:
        return
    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", f"tpa-{service_name}")})
    if processor is None:
        exporter = exporter if exporter is not None else exporter_from_env()
        processor = BatchSpanProcessor(exporter) if exporter is not None else None
    _recording = processor is not None
    # With nowhere to send spans, record none unless the caller's trace is sampled: a span per
    # statement and per Kafka record costs a third of the CPU of a bulk path (docs/performance.md).
    sampler = None if _recording or os.environ.get("OTEL_TRACES_SAMPLER") else ParentBased(ALWAYS_OFF)
    provider = TracerProvider(resource=resource, sampler=sampler)
    if processor is not None:
        provider.add_span_processor(processor)
    trace.set_tracer_provider(provider)
    _configured = True


def recording() -> bool:
    """Whether spans are exported anywhere (false until ``setup_tracing`` installs an exporter)."""
    return _recording


def instrument_libraries() -> None:
    """Auto-instrument httpx (it carries ``traceparent`` to the next service) and, when spans
    are exported, asyncpg (FastAPI apps are instrumented per app)."""
    global _instrumented
    if _instrumented:
        return
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

    if _recording:
        from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor

        AsyncPGInstrumentor().instrument()
    HTTPXClientInstrumentor().instrument()
    _instrumented = True


class JsonFormatter(logging.Formatter):
    """One JSON object per line with trace and correlation ids."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(),
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "message": record.getMessage(),
        }
        ctx = trace.get_current_span().get_span_context()
        if ctx.is_valid:
            out["trace_id"] = format(ctx.trace_id, "032x")
            out["span_id"] = format(ctx.span_id, "016x")
        cid = correlation_id.get()
        if cid:
            out["correlation_id"] = cid
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def setup_logging(service: str, level: str = "INFO", json_lines: bool = True) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if json_lines:
        handler.setFormatter(JsonFormatter(service))
    else:
        handler.setFormatter(logging.Formatter(f"%(asctime)s {service} %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("aiokafka", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
