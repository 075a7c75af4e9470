"""A guard call that hangs is cut off by the per-call timeout and retried: one verdict per id with
attempts == 2, exactly two guard calls per hanging text, and no dead letters."""

from __future__ import annotations

import time

import pytest

from tests.conftest import SettingsFactory
from tests.helpers import GuardSim, collect, publish, running_worker, wait_for_verdicts

pytestmark = pytest.mark.integration

# Fewer hanging texts than the breaker's run of 20 consecutive failures: this test is about the timeout
# and the retry, not the circuit.
HANGING = 12
PLAIN = 24


async def test_hanging_guard_call_times_out_and_the_retry_gives_the_verdict(
    make_settings: SettingsFactory, guard_sim: GuardSim
) -> None:
    settings = make_settings(guard_timeout_s=1, concurrency=32, guard_attempts=3)
    hanging = {f"h{i}": f"hangs once {i} [[sim:hangx1]]" for i in range(HANGING)}
    plain = {f"p{i}": f"answers at once {i}" for i in range(PLAIN)}
    texts = hanging | plain
    started = time.monotonic()
    async with running_worker(settings):
        await publish(settings, ({"id": i, "text": text} for i, text in texts.items()))
        stored = await wait_for_verdicts(settings, texts, timeout_s=40)
    elapsed = time.monotonic() - started
    assert set(stored) == set(texts)
    assert {i: stored[i]["attempts"] for i in hanging} == dict.fromkeys(hanging, 2)
    assert {i: stored[i]["attempts"] for i in plain} == dict.fromkeys(plain, 1)
    calls = (await guard_sim.stats())["calls_by_content"]
    for i, text in hanging.items():
        assert await guard_sim.calls_for(text) == 2, i
    for i, text in plain.items():
        assert await guard_sim.calls_for(text) == 1, i
    assert len(calls) == len(texts)
    # The first call of each hanging text was cut at the 1 s timeout, not after the simulator's 120 s hang.
    assert min(stored[i]["latency_ms"] for i in hanging) >= 1000
    assert max(stored[i]["latency_ms"] for i in hanging) < 10_000
    assert await collect(settings, settings.dlq_topic, count=1, timeout_s=2) == []
    print(f"{HANGING} hanging + {PLAIN} plain texts moderated in {elapsed:.1f} s")
