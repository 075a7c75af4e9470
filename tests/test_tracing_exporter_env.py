"""Span exporters come from the standard OTEL_* variables: none (the default), console, otlp over
http/protobuf or grpc; an unknown name or protocol, or a missing OTLP package, is a one-line error."""

from __future__ import annotations

import sys

import pytest

from worker.config.extras import MissingExtra
from worker.telemetry import tracing
from worker.telemetry.tracing import TracingConfigError


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


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_otlp_exporter_of_either_protocol_is_built(protocol: str) -> None:
    env = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": protocol}
    provider = tracing.build_provider(env)
    try:
        with tracing.get_tracer(provider).start_as_current_span("probe") as span:
            assert span.is_recording()
    finally:
        provider.shutdown()


@pytest.mark.parametrize(
    ("protocol", "module", "extra"),
    [
        ("http/protobuf", "opentelemetry.exporter.otlp.proto.http", "otlp"),
        ("grpc", "opentelemetry.exporter.otlp.proto.grpc", "otlp-grpc"),
    ],
)
def test_a_missing_otlp_exporter_names_its_extra_in_one_line(
    protocol: str, module: str, extra: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # None in sys.modules makes the import fail as if the package were not installed.
    for name in [n for n in sys.modules if n == module or n.startswith(module + ".")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, module, None)
    env = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": protocol}
    with pytest.raises(MissingExtra) as caught:
        tracing.build_provider(env)
    message = str(caught.value)
    assert f"pip install 'guardq[{extra}]'" in message and "\n" not in message
    assert caught.value.extra == extra


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
