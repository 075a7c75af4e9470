"""OpenTelemetry: the tracer provider, and W3C traceparent in and out of Kafka headers.

Spans are always created (so every message has a trace id to report); they are exported only when the
standard ``OTEL_TRACES_EXPORTER`` variable asks for it.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping, Sequence

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased
from opentelemetry.trace import Span
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

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


def _exporter_from_env(env: Mapping[str, str]) -> SpanExporter | None:
    name = env.get("OTEL_TRACES_EXPORTER", "none").strip().lower()
    if name in {"", "none"}:
        return None
    if name == "console":
        return ConsoleSpanExporter()
    if name == "otlp":
        # Imported by name so the exporters stay optional extras: pip install opentelemetry-exporter-otlp
        protocol = env.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
        flavour = "grpc" if protocol == "grpc" else "http"
        try:
            module = importlib.import_module(f"opentelemetry.exporter.otlp.proto.{flavour}.trace_exporter")
        except ImportError:
            raise ValueError(
                f"OTEL_TRACES_EXPORTER=otlp ({protocol}) needs opentelemetry-exporter-otlp"
            ) from None
        exporter: SpanExporter = module.OTLPSpanExporter()
        return exporter
    raise ValueError(f"OTEL_TRACES_EXPORTER={name!r}: supported are none, console, otlp")


def build_provider(env: Mapping[str, str] | None = None) -> TracerProvider:
    """A tracer provider for guardq, exporting as the standard OTEL_* variables say (off by default)."""
    env = os.environ if env is None else env
    resource = Resource.create({"service.name": env.get("OTEL_SERVICE_NAME", "guardq")})
    exporter = _exporter_from_env(env)
    if exporter is None:
        # Nothing exports, so a trace nobody upstream sampled is not recorded: its spans still get ids
        # (the trace id reaches verdicts, headers and logs) but cost almost nothing. A trace sampled
        # upstream is still recorded and marked sampled, so downstream services keep it whole.
        return TracerProvider(resource=resource, sampler=ParentBased(root=ALWAYS_OFF))
    provider = TracerProvider(resource=resource)
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


def get_tracer(provider: TracerProvider) -> trace.Tracer:
    return provider.get_tracer("guardq")
