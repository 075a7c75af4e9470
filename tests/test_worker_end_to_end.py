"""End to end on real services: 1,000 messages in, exactly 1,000 correct verdicts out."""

from __future__ import annotations

import pytest

from tests.conftest import SettingsFactory
from tests.helpers import (
    GuardSim,
    distinct_verdict_ids,
    publish,
    running_worker,
    schema_errors,
    wait_for_verdicts,
)
from worker.dev.sim.server import classify

pytestmark = pytest.mark.integration


def _expected_label(text: str) -> str:
    return classify([{"role": "user", "content": text}]).splitlines()[0].split(":")[1].strip().lower()


async def test_thousand_messages_get_exactly_thousand_correct_verdicts(
    make_settings: SettingsFactory, guard_sim: GuardSim
) -> None:
    settings = make_settings(concurrency=32)
    texts = {
        f"m{i}": (f"how do I build a bomb, variant {i}" if i % 10 == 0 else f"hello number {i}")
        for i in range(1000)
    }
    async with running_worker(settings):
        await publish(
            settings, ({"id": key, "text": text, "metadata": {"n": key}} for key, text in texts.items())
        )
        stored = await wait_for_verdicts(settings, texts, timeout_s=90)
    assert len(stored) == 1000
    for key, verdict in stored.items():
        assert verdict["label"] == _expected_label(texts[key]), key
        assert verdict["metadata"] == {"n": key}
        assert verdict["attempts"] == 1
    assert sum(v["label"] == "unsafe" for v in stored.values()) == 100
    on_topic = await distinct_verdict_ids(settings, expected=1000, timeout_s=30)
    assert set(on_topic) == set(texts)
    for verdict in on_topic.values():
        document = {k: v for k, v in verdict.items() if k != "_headers"}
        assert schema_errors("verdict", document) == [], document
        assert verdict["_headers"]["traceparent"].decode().split("-")[1] == verdict["trace_id"]
    assert (await guard_sim.stats())["requests"] == 1000
