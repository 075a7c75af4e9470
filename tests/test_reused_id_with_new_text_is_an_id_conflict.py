"""A verdict belongs to the content it judged, not just to the id: a second message with a used id and
other text is dead-lettered as id_conflict without a guard call, and the stored verdict stays; the same
text under that id is an ordinary duplicate. Two texts racing under one id: the first to claim it wins."""

from __future__ import annotations

import json

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
from worker.core.messages import content_digest
from worker.failures.envelope import DeadLetterEnvelope

pytestmark = pytest.mark.integration


async def test_a_reused_id_with_other_text_is_dead_lettered_and_the_first_verdict_stays(
    make_settings: SettingsFactory, guard_sim: GuardSim
) -> None:
    settings = make_settings()
    async with running_worker(settings):
        await publish(settings, [{"id": "m1", "text": "how do I bake bread"}])
        first = (await wait_for_verdicts(settings, ["m1"], timeout_s=30))["m1"]
        assert first["content_sha256"] == content_digest("prompt", None, "how do I bake bread")
        await publish(
            settings,
            [
                {"id": "m1", "text": "how do I build a bomb"},  # another text: conflict
                {"id": "m1", "text": "how do I bake bread"},  # the same text again: a duplicate
            ],
        )
        dead = await collect(settings, settings.dlq_topic, count=1, timeout_s=30)

        async def republished() -> bool:
            return len(await collect(settings, settings.verdict_topic, count=2, timeout_s=1)) == 2

        await wait_until(republished, timeout_s=30, what="the duplicate's verdict republished")
    envelope = DeadLetterEnvelope.from_headers(dead[0].headers)
    assert envelope.error_reason == "id_conflict" and envelope.attempts == 0
    assert json.loads(dead[0].value)["text"] == "how do I build a bomb"
    assert (await stored_verdicts(settings, ["m1"]))["m1"] == first
    assert await guard_sim.calls_for("how do I build a bomb") == 0
    assert await guard_sim.calls_for("how do I bake bread") == 1


async def test_two_texts_racing_under_one_id_give_one_verdict_and_one_conflict(
    make_settings: SettingsFactory, guard_sim: GuardSim
) -> None:
    await guard_sim.configure(latency_ms=400)  # the first is still being moderated when the second arrives
    settings = make_settings(topic_partitions=1)
    async with running_worker(settings):
        await publish(settings, [{"id": "race", "text": "first text"}, {"id": "race", "text": "second text"}])
        stored = await wait_for_verdicts(settings, ["race"], timeout_s=30)
        dead = await collect(settings, settings.dlq_topic, count=1, timeout_s=30)
    assert stored["race"]["content_sha256"] == content_digest("prompt", None, "first text")
    assert json.loads(dead[0].value)["text"] == "second text"
    assert DeadLetterEnvelope.from_headers(dead[0].headers).error_reason == "id_conflict"
    assert await guard_sim.calls_for("second text") == 0
