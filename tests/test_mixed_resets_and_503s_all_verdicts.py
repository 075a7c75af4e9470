"""20 % connection resets and 10 % 503s at random: in-process retries and the retry topics absorb them
all. Every id gets exactly one verdict, nothing is dead-lettered, and attempts match the guard's count."""

from __future__ import annotations

import hashlib

import pytest

from tests.conftest import SettingsFactory
from tests.helpers import GuardSim, collect, distinct_verdict_ids, publish, running_worker, wait_for_verdicts

pytestmark = pytest.mark.integration

COUNT = 400


async def test_mixed_resets_and_503s_end_in_verdicts_and_no_dead_letters(
    make_settings: SettingsFactory, guard_sim: GuardSim
) -> None:
    settings = make_settings(concurrency=32, guard_attempts=3, retry_schedule="1s,2s,3s")
    await guard_sim.configure(reset_rate=0.2, fail_503_rate=0.1, latency_ms=5)
    documents = [{"id": f"mix{i}", "text": f"mixed faults {i}"} for i in range(COUNT)]
    async with running_worker(settings):
        await publish(settings, documents)
        stored = await wait_for_verdicts(settings, [d["id"] for d in documents], timeout_s=90)
        on_topic = await distinct_verdict_ids(settings, expected=COUNT, timeout_s=30)
    assert set(on_topic) == set(stored) == {d["id"] for d in documents}
    assert await collect(settings, settings.dlq_topic, count=1, timeout_s=2) == []
    calls = (await guard_sim.stats())["calls_by_content"]
    for document in documents:
        digest = hashlib.sha1(document["text"].encode()).hexdigest()
        assert stored[document["id"]]["attempts"] == calls[digest], document["id"]
    retried = sum(1 for v in stored.values() if v["attempts"] > 1)
    assert retried > COUNT // 10  # the faults really happened
    print(
        f"{retried} of {COUNT} needed more than one attempt; max {max(v['attempts'] for v in stored.values())}"
    )
