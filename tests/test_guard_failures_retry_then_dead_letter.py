"""Guard failures: transient ones are retried with backoff, then through the retry topics, then dead-lettered;
permanent ones at once."""

from __future__ import annotations

import json

import pytest

from tests.conftest import SettingsFactory
from tests.helpers import GuardSim, collect, publish, running_worker, wait_for_verdicts
from worker.failures.envelope import DeadLetterEnvelope

pytestmark = pytest.mark.integration


async def test_transient_guard_failures_are_retried_and_counted_exactly(
    make_settings: SettingsFactory, guard_sim: GuardSim
) -> None:
    settings = make_settings(guard_attempts=3)
    documents = [
        {"id": "two-503s", "text": "recover [[sim:503x2]]"},
        {"id": "one-reset", "text": "recover [[sim:resetx1]]"},
        {"id": "one-garbage", "text": "recover [[sim:garbagex1]]"},
        {"id": "one-429", "text": "recover [[sim:429x1]]"},
    ]
    async with running_worker(settings):
        await publish(settings, documents)
        stored = await wait_for_verdicts(settings, [d["id"] for d in documents], timeout_s=60)
    assert stored["two-503s"]["attempts"] == 3
    assert stored["one-reset"]["attempts"] == 2
    assert stored["one-garbage"]["attempts"] == 2
    assert stored["one-429"]["attempts"] == 2
    for document in documents:
        calls = await guard_sim.calls_for(document["text"])
        assert calls == stored[document["id"]]["attempts"], document["id"]


async def test_persistent_503_exhausts_retries_and_400_is_dead_lettered_at_once(
    make_settings: SettingsFactory, guard_sim: GuardSim
) -> None:
    # A lone always-503 message never opens the breaker (one text's failures alone do not): it goes
    # through the retry topic to a dead letter.
    settings = make_settings(guard_attempts=3, retry_schedule="1s")
    documents = [
        {"id": "always-503", "text": "never [[sim:503x50]]"},
        {"id": "rejected", "text": "bad request [[sim:400]]"},
        {"id": "too-long-for-model", "text": "overflow [[sim:overflow]]"},
        {"id": "fine", "text": "all good"},
    ]
    async with running_worker(settings):
        await publish(settings, documents)
        await wait_for_verdicts(settings, ["fine"], timeout_s=30)
        dead = await collect(settings, settings.dlq_topic, count=3, timeout_s=60)
    by_id = {json.loads(r.value)["id"]: DeadLetterEnvelope.from_headers(r.headers) for r in dead}
    # 3 attempts on the input topic, 3 more after the one retry hop.
    assert by_id["always-503"].error_reason == "retries_exhausted"
    assert by_id["always-503"].attempts == 6
    assert by_id["always-503"].retry_hop == 1
    assert by_id["always-503"].error_class == "GuardUnavailable"
    assert by_id["rejected"].error_reason == "guard_rejected"
    assert by_id["rejected"].attempts == 1
    assert by_id["too-long-for-model"].error_reason == "context_length"
    assert await guard_sim.calls_for("never [[sim:503x50]]") == 6
    assert await guard_sim.calls_for("bad request [[sim:400]]") == 1
    assert [entry["topic"] for entry in by_id["always-503"].history] == [
        settings.input_topic,
        settings.retry_topics[0],
    ]
    assert len(by_id["rejected"].history) == 1
