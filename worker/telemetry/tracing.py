"""OpenTelemetry: the tracer provider, and W3C traceparent in and out of Kafka headers.

Spans are always created (so every message has a trace id to report); they are exported only when the
standard ``OTEL_TRACES_EXPORTER`` variable asks for it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased
from opentelemetry.trace import Span, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import Attributes

from worker.config.extras import require

TRACEPARENT = "traceparent"
_PROPAGATOR = TraceContextTextMapPropagator()


class _HeaderGetter(Getter[Sequence[tuple[str, bytes]]]):
    """Reads W3C trace context from Kafka record headers (a list of name, bytes pairs)."""

    def get(self, carrier: Sequence[tuple[str, bytes]], key: str) -> list[str] | None:
        # A header may have no value at all (None): such a header carries no context.
        values = [
            v.decode("ascii", errors="replace") for k, v in carrier if k.lower() == key and v is not None
        ]
        return values or None

    def keys(self, carrier: Sequence[tuple[str, bytes]]) -> list[str]:
        return [k for k, _ in carrier]


_GETTER = _HeaderGetter()


class TracingConfigError(ValueError):
    """The OTEL_* variables ask for an exporter guardq cannot build; the message is one line."""


# OTLP flavour by OTEL_EXPORTER_OTLP_PROTOCOL: (module of its span exporter, the extra that installs it).
# http/protobuf, the specification's default, is in the core install; the extra only names it again.
_OTLP: dict[str, tuple[str, str]] = {
    "http/protobuf": ("opentelemetry.exporter.otlp.proto.http.trace_exporter", "otlp"),
    "grpc": ("opentelemetry.exporter.otlp.proto.grpc.trace_exporter", "otlp-grpc"),
}


def otlp_protocol(env: Mapping[str, str]) -> str:
    """The OTLP protocol for traces: the traces-specific variable wins over the general one, as the
    OpenTelemetry specification says; ``http/protobuf`` when neither is set."""
    raw = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
    protocol = (raw or "http/protobuf").strip().lower()
    if protocol not in _OTLP:
        raise TracingConfigError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r}: supported are {', '.join(_OTLP)}"
        )
    return protocol


def exporter_names(env: Mapping[str, str]) -> list[str]:
    """The exporters OTEL_TRACES_EXPORTER names (a comma-separated list); empty when export is off."""
    names = [n.strip().lower() for n in env.get("OTEL_TRACES_EXPORTER", "none").split(",") if n.strip()]
    unknown = [n for n in names if n not in {"none", "console", "otlp"}]
    if unknown:
        raise TracingConfigError(f"OTEL_TRACES_EXPORTER={unknown[0]!r}: supported are none, console, otlp")
    # "none" turns export off even beside another name, as in the OpenTelemetry SDK's own configurator.
    return [] if "none" in names else list(dict.fromkeys(names))


def _otlp_exporter(env: Mapping[str, str]) -> SpanExporter:
    protocol = otlp_protocol(env)
    module_name, extra = _OTLP[protocol]
    module = require(module_name, feature=f"OTEL_TRACES_EXPORTER=otlp ({protocol})", extra=extra)
    # Endpoint, headers, timeout and TLS come from the standard OTEL_EXPORTER_OTLP_* variables.
    exporter: SpanExporter = module.OTLPSpanExporter()
    return exporter


def _exporters_from_env(env: Mapping[str, str]) -> list[SpanExporter]:
    exporters: list[SpanExporter] = []
    for name in exporter_names(env):
        exporters.append(ConsoleSpanExporter() if name == "console" else _otlp_exporter(env))
    return exporters


def build_provider(env: Mapping[str, str] | None = None) -> TracerProvider:
    """A tracer provider for guardq, exporting as the standard OTEL_* variables say (off by default).

    Raises ``TracingConfigError`` when they name an exporter that is unknown, ``MissingExtra`` when its
    package is not installed."""
    env = os.environ if env is None else env
    resource = Resource.create({"service.name": env.get("OTEL_SERVICE_NAME", "guardq")})
    exporters = _exporters_from_env(env)
    if not exporters:
        # Nothing exports, so a trace nobody upstream sampled is not recorded: its spans still get ids
        # (the trace id reaches verdicts, headers and logs) but cost almost nothing. A trace sampled
        # upstream is still recorded and marked sampled, so downstream services keep it whole.
        return TracerProvider(resource=resource, sampler=ParentBased(root=ALWAYS_OFF))
    provider = TracerProvider(resource=resource)
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def extract(headers: Sequence[tuple[str, bytes]]) -> Context:
    """The trace context carried by Kafka headers (empty when there is none or it is malformed)."""
    return _PROPAGATOR.extract(headers, getter=_GETTER)


def trace_id_hex(span: Span) -> str:
    """The span's trace id as 32 lowercase hex digits."""
    return format(span.get_span_context().trace_id, "032x")


def traceparent(trace_id: str, span: Span) -> str:
    """A W3C traceparent naming ``trace_id`` and the given span as parent."""
    context = span.get_span_context()
    return f"00-{trace_id}-{context.span_id:016x}-{int(context.trace_flags):02x}"


def traceparent_of(span: Span) -> str:
    """The W3C traceparent that continues ``span``."""
    return traceparent(trace_id_hex(span), span)


def child_span(
    tracer: trace.Tracer, name: str, kind: SpanKind, attributes: Callable[[], Attributes] | None = None
) -> AbstractContextManager[Span]:
    """A child of the current span, for the steps of a message's trace (guard call, store, publish);
    ``attributes`` builds its attributes, called only when the span is recorded.

    Under a span nobody records (a trace not sampled, export off) the child would be recorded by
    nobody either: the current span stands in for it, so its trace and span ids still go out in
    traceparent headers, and the message pays for one span instead of four."""
    current = trace.get_current_span()
    if not current.is_recording() and current.get_span_context().is_valid:
        return nullcontext(current)
    return _recorded_child(tracer, name, kind, attributes)


@contextmanager
def _recorded_child(
    tracer: trace.Tracer, name: str, kind: SpanKind, attributes: Callable[[], Attributes] | None
) -> Iterator[Span]:
    with tracer.start_as_current_span(name, kind=kind) as span:
        if attributes is not None and span.is_recording():
            span.set_attributes(attributes() or {})
        yield span


def get_tracer(provider: TracerProvider) -> trace.Tracer:
    """guardq's tracer from ``provider``."""
    return provider.get_tracer("guardq")


def send_attributes(topic: str, message_id: str | None = None) -> dict[str, str]:
    """Attributes of a ``<topic> publish`` (PRODUCER) span, per the OpenTelemetry messaging conventions;
    the partition and offset are added once the broker acknowledged (``set_sent``)."""
    attributes = {
        "messaging.system": "kafka",
        "messaging.operation.type": "send",
        "messaging.operation.name": "send",
        "messaging.destination.name": topic,
    }
    if message_id:
        attributes["messaging.message.id"] = message_id
    return attributes


def set_sent(span: Span, partition: int, offset: int) -> None:
    """Record where the broker put a sent record on its producer span."""
    span.set_attribute("messaging.destination.partition.id", str(partition))
    span.set_attribute("messaging.kafka.offset", offset)
