"""Tracing set-up: nothing recorded when nothing is exported, yet trace ids still made and propagated."""

from __future__ import annotations

import json
import os
import subprocess
import sys

PROBE = """
import json
from opentelemetry import propagate, trace
from eventkit import telemetry
telemetry.setup_tracing("probe")
telemetry.instrument_libraries()
tracer = trace.get_tracer("probe")
with tracer.start_as_current_span("root") as root:
    root_recording = root.is_recording()
    carrier = {}
    propagate.inject(carrier)
incoming = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
with tracer.start_as_current_span("child", context=propagate.extract(incoming)) as child:
    child_recording = child.is_recording()
from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
print(json.dumps({"recording": root_recording, "valid": root.get_span_context().is_valid,
                  "traceparent": carrier.get("traceparent", ""), "sampled_parent_recorded": child_recording,
                  "asyncpg": AsyncPGInstrumentor().is_instrumented_by_opentelemetry}))
"""


def probe(**env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    out = subprocess.run([sys.executable, "-c", PROBE], env={**clean, **env}, capture_output=True, text=True,
                         check=True, timeout=60)
    return json.loads(out.stdout.strip().splitlines()[-1])


def sampled(traceparent: str) -> bool:
    version, trace_id, span_id, flags = traceparent.split("-")
    assert version == "00" and len(trace_id) == 32 and len(span_id) == 16
    return bool(int(flags, 16) & 1)


def test_without_an_exporter_spans_are_not_recorded_but_trace_ids_propagate():
    got = probe()
    assert got["recording"] is False and got["valid"] is True
    assert not sampled(got["traceparent"])  # propagated, not sampled
    assert got["sampled_parent_recorded"] is True  # a caller's sampled trace is still recorded
    assert got["asyncpg"] is False  # no span per SQL statement


def test_with_an_exporter_every_span_is_recorded_and_sql_is_traced():
    got = probe(OTEL_TRACES_EXPORTER="console")
    assert got["recording"] is True and sampled(got["traceparent"])
    assert got["asyncpg"] is True


def test_the_standard_sampler_variable_is_honoured():
    got = probe(OTEL_TRACES_EXPORTER="console", OTEL_TRACES_SAMPLER="always_off")
    assert got["recording"] is False and got["sampled_parent_recorded"] is False
