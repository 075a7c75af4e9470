"""Log lines are JSON and carry the trace and span ids of the message being processed."""

from __future__ import annotations

import json
import logging

from opentelemetry.sdk.trace import TracerProvider

from worker.telemetry.logs import JsonFormatter


def _record(message: str) -> logging.LogRecord:
    return logging.LogRecord("worker.processing.pipeline", logging.WARNING, __file__, 1, message, None, None)


def test_log_line_inside_a_message_span_carries_its_trace_id() -> None:
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("moderation.requests process") as span:
        line = JsonFormatter().format(_record("dead-lettering id=m1"))
    entry = json.loads(line)
    context = span.get_span_context()
    assert entry["trace_id"] == format(context.trace_id, "032x")
    assert entry["span_id"] == format(context.span_id, "016x")
    assert entry["level"] == "warning" and entry["message"] == "dead-lettering id=m1"
    assert entry["time"].endswith("Z")


def test_log_line_outside_any_span_has_no_trace_fields() -> None:
    entry = json.loads(JsonFormatter().format(_record("worker started")))
    assert "trace_id" not in entry and "span_id" not in entry


def test_a_message_with_a_lone_surrogate_is_still_one_json_line() -> None:
    line = JsonFormatter().format(_record("bytes we could not decode: \udc80 and é"))
    assert json.loads(line)["message"] == "bytes we could not decode: \udc80 and é"
    assert "\n" not in line
