"""Delayed retry topics: a message whose in-process retries run out waits in `<input>.retry.<delay>` for
its delay, keeps its id, key, headers and trace, and completes (or, after the last step, is dead-lettered
with its whole history), while other messages keep flowing past it."""

from __future__ import annotations

import json
import time
from datetime import datetime

import pytest

from tests.conftest import SettingsFactory
from tests.helpers import (
    GuardSim,
    collect,
    publish,
    running_worker,
    stored_verdicts,
    wait_for_verdicts,
    wait_until,
)
from worker.failures.envelope import DeadLetterEnvelope

pytestmark = pytest.mark.integration


def _time(raw: str) -> float:
    return datetime.fromisoformat(raw.replace("Z", "+00:00")).timestamp()


async def test_message_waits_in_retry_topics_and_other_work_flows_past_it(
    make_settings: SettingsFactory, guard_sim: GuardSim
) -> None:
    settings = make_settings(guard_attempts=2, retry_schedule="2s,3s", topic_partitions=1)
    recovers = {"id": "recovers", "text": "comes back [[sim:503x3]]"}  # 2 fail in process, 1 more on hop 1
    never = {"id": "never", "text": "stays down [[sim:503x100]]"}
    async with running_worker(settings) as worker:
        sent = {p.id: p for p in await publish(settings, [recovers, never])}
        started = time.monotonic()

        async def first_hop_taken() -> bool:
            return worker.fetch_loop is not None and worker.fetch_loop.stats.held_back > 0

        await wait_until(first_hop_taken, timeout_s=20, what="a retry partition held back until due")
        # While both wait in the retry topic, new input is moderated at once.
        fresh = [{"id": f"fresh{i}", "text": f"fresh {i}"} for i in range(20)]
        await publish(settings, fresh)
        await wait_for_verdicts(settings, [d["id"] for d in fresh], timeout_s=20)
        assert "recovers" not in await stored_verdicts(settings, ["recovers"])
        assert time.monotonic() - started < 2.0 + 1.0

        stored = await wait_for_verdicts(settings, ["recovers"], timeout_s=30)
        waited_s = time.monotonic() - started
        dead = await collect(settings, settings.dlq_topic, count=1, timeout_s=40)

    verdict = stored["recovers"]
    assert verdict["attempts"] == 4  # exact across hops: 2 on the input topic, 2 from the retry topic
    assert verdict["trace_id"] == sent["recovers"].trace_id
    assert waited_s >= 2.0  # it waited for the first step's delay
    assert await guard_sim.calls_for(recovers["text"]) == 4

    assert len(dead) == 1
    assert json.loads(dead[0].value) == never and dead[0].key == b"never"
    envelope = DeadLetterEnvelope.from_headers(dead[0].headers)
    assert envelope.error_reason == "retries_exhausted"
    assert envelope.attempts == 6 == await guard_sim.calls_for(never["text"])
    assert envelope.retry_hop == 2
    assert (
        envelope.original_topic == settings.input_topic and envelope.original_offset == sent["never"].offset
    )
    assert envelope.traceparent is not None and envelope.traceparent.split("-")[1] == sent["never"].trace_id
    topics = [entry["topic"] for entry in envelope.history]
    assert topics == [settings.input_topic, *settings.retry_topics]
    # Each hop waited at least its delay before its first call (the history stamps each hop's failure).
    stamps = [_time(entry["at"]) for entry in envelope.history]
    assert stamps[1] - stamps[0] >= 2.0 - 0.05
    assert stamps[2] - stamps[1] >= 3.0 - 0.05
