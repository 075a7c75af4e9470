"""One message's trace survives a retry hop, the dead-letter topic and a replay: it fails on the input
topic, fails again on its retry hop, is dead-lettered, is replayed and gets its verdict; every `process`
span, the dead letter's traceparent, the replay's publish span and the verdict share the publisher's trace
id, and each span's parent is the one the previous step wrote into the record's headers."""

from __future__ import annotations

import uuid

import pytest
from opentelemetry.trace import SpanKind

from tests.conftest import SettingsFactory
from tests.helpers import GuardSim, collect, wait_for_verdicts, wait_until
from tests.spans import attrs, find, parent_hex, recording_provider, span_hex, trace_hex, worker_with_provider
from worker.failures.envelope import DeadLetterEnvelope
from worker.failures.listing import Filter
from worker.failures.replay import ReplayOptions, replay
from worker.kafka.publish import InputProducer

pytestmark = pytest.mark.integration


async def test_trace_id_is_kept_through_a_retry_hop_the_dlq_and_a_replay(
    make_settings: SettingsFactory, guard_sim: GuardSim
) -> None:
    # One guard call per delivery: the input's call fails (1st 503), the hop's fails (2nd) → dead
    # letter; the replayed delivery's call (3rd) succeeds.
    settings = make_settings(guard_attempts=1, retry_schedule="1s", topic_partitions=1)
    provider, exporter = recording_provider()
    text = f"flaky guard [[sim:503x2]] {uuid.uuid4().hex}"
    input_process, hop_process = f"{settings.input_topic} process", f"{settings.retry_topics[0]} process"
    async with worker_with_provider(settings, provider):
        async with InputProducer(settings, tracer_provider=provider) as publisher:
            sent = await publisher.publish({"id": "hops", "text": text})
        (dead,) = await collect(settings, settings.dlq_topic, count=1, timeout_s=30)
        envelope = DeadLetterEnvelope.from_headers(dead.headers)
        assert envelope.error_reason == "retries_exhausted" and envelope.attempts == 2

        summary = await replay(settings, ReplayOptions(filter=Filter(ids={"hops"})), tracer_provider=provider)
        assert summary.replayed == 1
        verdict = (await wait_for_verdicts(settings, ["hops"], timeout_s=30))["hops"]

        async def replayed_processed() -> bool:
            return len(find(exporter.get_finished_spans(), input_process)) == 2

        await wait_until(replayed_processed, timeout_s=15, what="the replayed delivery's process span")
    assert await guard_sim.calls_for(text) == 3
    trace_id = sent.trace_id
    assert verdict["trace_id"] == trace_id
    assert envelope.traceparent is not None and envelope.traceparent.split("-")[1] == trace_id

    spans = exporter.get_finished_spans()
    processes = [s for s in spans if s.name in {input_process, hop_process}]
    assert len(processes) == 3 and {trace_hex(s) for s in processes} == {trace_id}
    (publish,) = find(spans, f"{settings.input_topic} publish", lambda s: s.parent is None)
    first, replayed = find(spans, input_process)
    (hop,) = find(spans, hop_process)

    # Input delivery: child of the publish; it sends the record to the retry topic.
    assert parent_hex(first) == span_hex(publish) and trace_hex(publish) == trace_id
    assert attrs(first)["guardq.outcome"] == "retry_scheduled" and attrs(first)["guardq.retry.hop"] == 1
    (hop_send,) = find(spans, f"{settings.retry_topics[0]} publish")
    assert hop_send.kind is SpanKind.PRODUCER and parent_hex(hop_send) == span_hex(first)

    # Retry hop: its record's traceparent named the input delivery's span; it dead-letters.
    assert hop.kind is SpanKind.CONSUMER and parent_hex(hop) == span_hex(first)
    assert attrs(hop)["messaging.destination.name"] == settings.retry_topics[0]
    assert attrs(hop)["guardq.outcome"] == "dead_lettered"
    assert attrs(hop)["guardq.error.reason"] == "retries_exhausted"
    (dlq_send,) = find(spans, f"{settings.dlq_topic} publish")
    assert parent_hex(dlq_send) == span_hex(hop)
    assert envelope.traceparent.split("-")[2] == span_hex(hop)

    # Replay: its publish span joins the trace under the dead-lettering span; so does the new delivery.
    (replay_send,) = find(spans, f"{settings.input_topic} publish", lambda s: s.parent is not None)
    assert replay_send.kind is SpanKind.PRODUCER and trace_hex(replay_send) == trace_id
    assert parent_hex(replay_send) == span_hex(hop)
    assert attrs(replay_send)["guardq.replayed_from"] == f"{dead.partition}:{dead.offset}"
    assert attrs(replay_send)["messaging.message.id"] == "hops"
    assert attrs(replay_send)["messaging.destination.name"] == settings.input_topic
    assert "messaging.kafka.offset" in attrs(replay_send)
    assert parent_hex(replayed) == span_hex(hop)
    assert attrs(replayed)["guardq.outcome"] == "moderated"
    assert attrs(replayed)["messaging.kafka.offset"] == attrs(replay_send)["messaging.kafka.offset"]

    # Three guard calls, each a child of the delivery that made it, all in the one trace.
    guard_parents = sorted(parent_hex(s) or "" for s in find(spans, "guard moderate"))
    assert guard_parents == sorted(span_hex(s) for s in (first, hop, replayed))
    assert {trace_hex(s) for s in spans} == {trace_id}
