"""One trace from `<input> publish` to the verdict: the publisher's PRODUCER span is the parent of the
worker's CONSUMER `process` span, whose children are the guard call (its HTTP request names that span in
its traceparent), the Redis store and the verdict publish; messaging attributes follow the OpenTelemetry
messaging conventions."""

from __future__ import annotations

import hashlib
import json
import uuid

import pytest
from opentelemetry.trace import SpanKind

from tests.conftest import SettingsFactory
from tests.helpers import GuardSim, collect, wait_for_verdicts, wait_until
from tests.spans import attrs, find, parent_hex, recording_provider, span_hex, trace_hex, worker_with_provider
from worker.kafka.publish import InputProducer

pytestmark = pytest.mark.integration


async def test_one_trace_runs_from_publish_through_guard_and_store_to_the_verdict(
    make_settings: SettingsFactory, guard_sim: GuardSim
) -> None:
    settings = make_settings()
    provider, exporter = recording_provider()
    text = f"please trace this bread recipe {uuid.uuid4().hex}"
    process_name = f"{settings.input_topic} process"
    async with worker_with_provider(settings, provider):
        async with InputProducer(settings, tracer_provider=provider) as publisher:
            sent = await publisher.publish({"id": "traced-1", "text": text})
        verdict = (await wait_for_verdicts(settings, ["traced-1"], timeout_s=30))["traced-1"]

        async def processed() -> bool:
            return bool(find(exporter.get_finished_spans(), process_name))

        await wait_until(processed, timeout_s=15, what="the process span to end")
        records = await collect(settings, settings.verdict_topic, count=1, timeout_s=30)
    spans = [s for s in exporter.get_finished_spans() if trace_hex(s) == sent.trace_id]

    (publish,) = find(spans, f"{settings.input_topic} publish")
    assert publish.kind is SpanKind.PRODUCER and publish.parent is None
    assert attrs(publish) == {
        "messaging.system": "kafka",
        "messaging.operation.type": "send",
        "messaging.operation.name": "send",
        "messaging.destination.name": settings.input_topic,
        "messaging.destination.partition.id": str(sent.partition),
        "messaging.kafka.offset": sent.offset,
        "messaging.message.id": "traced-1",
    }

    (process,) = find(spans, process_name)
    assert process.kind is SpanKind.CONSUMER and parent_hex(process) == span_hex(publish)
    assert attrs(process) == {
        "messaging.system": "kafka",
        "messaging.operation.type": "process",
        "messaging.destination.name": settings.input_topic,
        "messaging.destination.partition.id": str(sent.partition),
        "messaging.kafka.offset": sent.offset,
        "messaging.consumer.group.name": settings.group_id,
        "messaging.message.id": "traced-1",
        "guardq.outcome": "moderated",
    }

    (guard,) = find(spans, "guard moderate")
    (store,) = find(spans, "redis store")
    (verdict_publish,) = find(spans, f"{settings.verdict_topic} publish")
    assert (guard.kind, store.kind, verdict_publish.kind) == (
        SpanKind.CLIENT,
        SpanKind.CLIENT,
        SpanKind.PRODUCER,
    )
    assert {parent_hex(s) for s in (guard, store, verdict_publish)} == {span_hex(process)}
    assert attrs(verdict_publish)["messaging.destination.name"] == settings.verdict_topic
    assert attrs(verdict_publish)["messaging.system"] == "kafka"
    assert len(spans) == 5, [s.name for s in spans]

    # The guard's HTTP request carried the `guard moderate` span as its parent.
    by_content = (await guard_sim.stats())["traceparent_by_content"]
    guard_parent = by_content[hashlib.sha1(text.encode()).hexdigest()].split("-")
    assert guard_parent[:3] == ["00", sent.trace_id, span_hex(guard)]
    assert int(guard_parent[3], 16) & 1, "sampled"

    # The verdict names the trace, in Redis, in the record and in its header (parent: the publish span).
    assert verdict["trace_id"] == sent.trace_id
    assert json.loads(records[0].value)["trace_id"] == sent.trace_id
    header = dict(records[0].headers)["traceparent"].decode().split("-")
    assert header[:3] == ["00", sent.trace_id, span_hex(verdict_publish)]

    # No span attribute carries the moderated text.
    assert not [s.name for s in spans if any(text in str(v) for v in attrs(s).values())]
