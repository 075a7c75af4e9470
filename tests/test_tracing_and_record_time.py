"""Trace context and timestamps read from odd records never crash the worker."""

from __future__ import annotations

import pytest
from opentelemetry import trace

from worker.failures.outbox import record_time
from worker.telemetry import tracing


def test_traceparent_header_without_value_carries_no_context() -> None:
    context = tracing.extract([("traceparent", None), ("other", b"x")])  # type: ignore[list-item]
    assert not trace.get_current_span(context).get_span_context().is_valid


def test_valid_traceparent_header_is_continued() -> None:
    context = tracing.extract([("traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")])
    assert format(trace.get_current_span(context).get_span_context().trace_id, "032x") == (
        "4bf92f3577b34da6a3ce929d0e0e4736"
    )


def test_malformed_traceparent_header_carries_no_context() -> None:
    for raw in (b"garbage", b"00-zz-yy-01", b"\xff\xfe"):
        context = tracing.extract([("traceparent", raw)])
        assert not trace.get_current_span(context).get_span_context().is_valid


def test_record_time_formats_milliseconds_as_rfc3339() -> None:
    assert record_time(1_700_000_000_123) == "2023-11-14T22:13:20.123Z"


def test_record_time_without_or_with_nonsense_timestamp_falls_back_to_now() -> None:
    for odd in (None, -1, 10**20, "x"):
        assert record_time(odd).endswith("Z")
    assert record_time(None)[:2] == "20"


def test_without_an_exporter_new_traces_get_ids_but_are_not_recorded() -> None:
    tracer = tracing.get_tracer(tracing.build_provider({}))
    with tracer.start_as_current_span("moderation.requests process") as span:
        assert span.get_span_context().is_valid
        assert not span.is_recording()
        assert len(tracing.trace_id_hex(span)) == 32


def test_without_an_exporter_a_trace_sampled_upstream_is_still_recorded_and_sampled() -> None:
    tracer = tracing.get_tracer(tracing.build_provider({}))
    parent = tracing.extract([("traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")])
    with tracer.start_as_current_span("moderation.requests process", context=parent) as span:
        assert span.is_recording()
        assert tracing.traceparent_of(span).endswith("-01")


def test_with_the_console_exporter_every_trace_is_recorded() -> None:
    provider = tracing.build_provider({"OTEL_TRACES_EXPORTER": "console"})
    try:
        with tracing.get_tracer(provider).start_as_current_span("moderation.requests process") as span:
            assert span.is_recording()
    finally:
        provider.shutdown()  # flush while pytest still owns stdout


def test_unknown_exporter_name_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="OTEL_TRACES_EXPORTER='zipkin'"):
        tracing.build_provider({"OTEL_TRACES_EXPORTER": "zipkin"})


def test_steps_of_an_unrecorded_trace_reuse_the_message_span() -> None:
    tracer = tracing.get_tracer(tracing.build_provider({}))
    with (
        tracer.start_as_current_span("moderation.requests process") as root,
        tracing.child_span(tracer, "guard moderate", trace.SpanKind.CLIENT) as step,
    ):
        assert step is root
        assert tracing.traceparent_of(step) == tracing.traceparent_of(root)
        assert not step.get_span_context().trace_flags.sampled


def test_steps_of_a_recorded_trace_are_child_spans() -> None:
    tracer = tracing.get_tracer(tracing.build_provider({}))
    parent = tracing.extract([("traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")])
    with (
        tracer.start_as_current_span("moderation.requests process", context=parent) as root,
        tracing.child_span(tracer, "guard moderate", trace.SpanKind.CLIENT) as step,
    ):
        assert step is not root
        assert step.is_recording()
        assert tracing.trace_id_hex(step) == "4bf92f3577b34da6a3ce929d0e0e4736"
        assert step.parent is not None  # type: ignore[attr-defined]
        assert step.parent.span_id == root.get_span_context().span_id  # type: ignore[attr-defined]


def test_a_step_outside_any_message_span_gets_a_span_of_its_own() -> None:
    tracer = tracing.get_tracer(tracing.build_provider({}))
    with tracing.child_span(tracer, "redis store", trace.SpanKind.CLIENT) as step:
        assert step.get_span_context().is_valid
