"""Tracing: the trace of an input's traceparent shows up in its verdict, its header and the guard call."""

from __future__ import annotations

import json

import pytest

from tests.conftest import SettingsFactory
from tests.helpers import GuardSim, collect, running_worker, wait_for_verdicts
from worker.kafka import clients as kafka

pytestmark = pytest.mark.integration

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
INCOMING = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


async def test_traceparent_of_an_input_shows_up_in_its_verdict_and_guard_call(
    make_settings: SettingsFactory, guard_sim: GuardSim
) -> None:
    settings = make_settings()
    text = "trace me please"
    async with running_worker(settings):
        producer = kafka.make_producer(settings)
        await producer.start()
        try:
            value = json.dumps({"id": "traced", "text": text}).encode()
            await producer.send_and_wait(
                settings.input_topic, value, key=b"traced", headers=[("traceparent", INCOMING.encode())]
            )
        finally:
            await producer.stop()
        stored = await wait_for_verdicts(settings, ["traced"], timeout_s=30)
        records = await collect(settings, settings.verdict_topic, count=1, timeout_s=30)
    assert stored["traced"]["trace_id"] == TRACE_ID
    verdict = json.loads(records[0].value)
    assert verdict["trace_id"] == TRACE_ID
    header = dict(records[0].headers)["traceparent"].decode()
    assert header.split("-")[1] == TRACE_ID
    assert header.split("-")[2] != "00f067aa0ba902b7", "the verdict's parent is the worker's own span"
    import hashlib

    seen = (await guard_sim.stats())["traceparent_by_content"][hashlib.sha1(text.encode()).hexdigest()]
    assert seen.split("-")[1] == TRACE_ID


async def test_message_without_traceparent_starts_a_trace_of_its_own(
    make_settings: SettingsFactory, guard_sim: GuardSim
) -> None:
    settings = make_settings()
    async with running_worker(settings):
        producer = kafka.make_producer(settings)
        await producer.start()
        try:
            await producer.send_and_wait(
                settings.input_topic, b'{"id": "untraced", "text": "hi"}', key=b"untraced"
            )
        finally:
            await producer.stop()
        stored = await wait_for_verdicts(settings, ["untraced"], timeout_s=30)
        records = await collect(settings, settings.verdict_topic, count=1, timeout_s=30)
    trace_id = stored["untraced"]["trace_id"]
    assert len(trace_id) == 32 and int(trace_id, 16) != 0
    assert dict(records[0].headers)["traceparent"].decode().split("-")[1] == trace_id
