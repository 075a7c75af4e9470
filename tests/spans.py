"""Span helpers for tracing tests: an in-memory exporter, and an in-process worker that uses it."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.helpers import running_worker
from worker.app import Worker
from worker.config.settings import Settings


def recording_provider() -> tuple[TracerProvider, InMemorySpanExporter]:
    """A provider that records every trace and hands each finished span to an in-memory exporter."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


@contextlib.asynccontextmanager
async def worker_with_provider(settings: Settings, provider: TracerProvider) -> AsyncIterator[Worker]:
    """A worker in this event loop whose spans go to ``provider``; stopped gracefully on exit."""
    async with running_worker(settings, tracer_provider=provider) as worker:
        yield worker


def trace_hex(span: ReadableSpan) -> str:
    """The span's trace id as 32 hex digits."""
    assert span.context is not None
    return format(span.context.trace_id, "032x")


def span_hex(span: ReadableSpan) -> str:
    """The span's id as 16 hex digits."""
    assert span.context is not None
    return format(span.context.span_id, "016x")


def parent_hex(span: ReadableSpan) -> str | None:
    """The span id of the span's parent, or None for a root."""
    return None if span.parent is None else format(span.parent.span_id, "016x")


def find(
    spans: Iterable[ReadableSpan], name: str, where: Callable[[ReadableSpan], bool] = lambda s: True
) -> list[ReadableSpan]:
    """The spans called ``name`` that satisfy ``where``, in the order they ended."""
    return [span for span in spans if span.name == name and where(span)]


def attrs(span: ReadableSpan) -> dict[str, Any]:
    """The span's attributes as a plain dict."""
    return dict(span.attributes or {})
