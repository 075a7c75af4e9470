"""Span exporters come from the standard OTEL_* variables: none (the default), console, otlp over
http/protobuf or grpc; an unknown name or protocol, or a missing OTLP package, is a one-line error."""

from __future__ import annotations

import importlib.util

import pytest

from worker import tracing
from worker.tracing import TracingConfigError


@pytest.mark.parametrize(
    ("raw", "names"),
    [
        (None, []),
        ("", []),
        ("none", []),
        ("console", ["console"]),
        (" OTLP ", ["otlp"]),
        ("otlp,console", ["otlp", "console"]),
        ("console,console", ["console"]),
        ("console,none", []),
    ],
)
def test_exporter_names_follow_otel_traces_exporter(raw: str | None, names: list[str]) -> None:
    env = {} if raw is None else {"OTEL_TRACES_EXPORTER": raw}
    assert tracing.exporter_names(env) == names


def test_unknown_exporter_in_a_list_is_named() -> None:
    with pytest.raises(TracingConfigError, match="OTEL_TRACES_EXPORTER='jaeger'") as caught:
        tracing.exporter_names({"OTEL_TRACES_EXPORTER": "console,jaeger"})
    assert "\n" not in str(caught.value) and isinstance(caught.value, ValueError)


@pytest.mark.parametrize(
    ("env", "protocol"),
    [
        ({}, "http/protobuf"),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "grpc"),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "HTTP/PROTOBUF"}, "http/protobuf"),
        # The traces-specific variable wins over the general one.
        (
            {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"},
            "http/protobuf",
        ),
    ],
)
def test_otlp_protocol_from_env(env: dict[str, str], protocol: str) -> None:
    assert tracing.otlp_protocol(env) == protocol


def test_unsupported_otlp_protocol_is_a_clear_error() -> None:
    with pytest.raises(TracingConfigError, match="'http/json'"):
        tracing.build_provider({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"})


@pytest.mark.parametrize(
    ("protocol", "package", "module"),
    [
        ("http/protobuf", "opentelemetry-exporter-otlp-proto-http", "opentelemetry.exporter.otlp.proto.http"),
        ("grpc", "opentelemetry-exporter-otlp-proto-grpc", "opentelemetry.exporter.otlp.proto.grpc"),
    ],
)
def test_otlp_exporter_is_built_or_its_missing_package_is_named(
    protocol: str, package: str, module: str
) -> None:
    env = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": protocol}
    try:
        installed = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing
        installed = False
    if not installed:
        with pytest.raises(TracingConfigError) as caught:
            tracing.build_provider(env)
        message = str(caught.value)
        assert package in message and "guardq[otlp]" in message and "\n" not in message
        return
    provider = tracing.build_provider(env)
    try:
        with tracing.get_tracer(provider).start_as_current_span("probe") as span:
            assert span.is_recording()
    finally:
        provider.shutdown()


def test_export_is_off_by_default_and_console_records_every_trace() -> None:
    off = tracing.build_provider({})
    with tracing.get_tracer(off).start_as_current_span("probe") as span:
        assert not span.is_recording()
    console = tracing.build_provider({"OTEL_TRACES_EXPORTER": "console"})
    try:
        with tracing.get_tracer(console).start_as_current_span("probe") as span:
            assert span.is_recording()
    finally:
        console.shutdown()
