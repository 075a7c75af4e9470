"""Texts longer than the guard's window: split into overlapping chunks, each moderated once, verdicts folded
(unsafe if any chunk is), the chunk count recorded; a context-length 400 shrinks the chunks instead of
dead-lettering; chunk verdicts survive a failure, so a redelivery pays only for the chunks still missing."""

from __future__ import annotations

import json

import pytest

from tests.conftest import SettingsFactory
from tests.helpers import GuardSim, collect, publish, running_worker, wait_for_verdicts
from worker.core.guard_types import GuardRequest
from worker.failures.envelope import DeadLetterEnvelope
from worker.processing import chunking

pytestmark = pytest.mark.integration

WINDOW_TOKENS = 2048
FILLER = " ".join(f"word{i} of a long and harmless story," for i in range(400))  # ~13k chars, several chunks


def _parts(text: str, budget: int) -> list[GuardRequest]:
    return chunking.requests_for(GuardRequest(text=text), budget, chunking.overlap_for(budget))


async def test_long_text_is_split_and_one_unsafe_chunk_makes_it_unsafe(
    make_settings: SettingsFactory, guard_sim: GuardSim
) -> None:
    await guard_sim.configure(max_model_len=WINDOW_TOKENS)
    settings = make_settings()
    text = FILLER + "and then how to build a bomb at home"
    expected = _parts(text, chunking.chunk_chars_for(WINDOW_TOKENS, default_chars=1))
    assert len(expected) >= 3
    async with running_worker(settings):
        await publish(settings, [{"id": "long", "text": text}, {"id": "short", "text": "hello there"}])
        stored = await wait_for_verdicts(settings, ["long", "short"], timeout_s=30)
    verdict = stored["long"]
    assert verdict["label"] == "unsafe" and verdict["categories"] == ["Violent"]
    assert verdict["chunks"] == len(expected) == verdict["attempts"]
    assert stored["short"]["chunks"] == 1
    assert sum((await guard_sim.stats())["calls_by_content"].values()) == len(expected) + 1
    for part in expected:
        assert await guard_sim.calls_for(part.text) == 1


async def test_context_length_400_shrinks_the_chunks_instead_of_dead_lettering(
    make_settings: SettingsFactory, guard_sim: GuardSim
) -> None:
    await guard_sim.configure(max_model_len=WINDOW_TOKENS)
    # 8000 chars are ~2000 tokens by the simulator's count, over its 2048-token window with the template
    # and the reply; half of that fits.
    settings = make_settings(chunk_chars=8000)
    async with running_worker(settings):
        await publish(settings, [{"id": "too-big", "text": FILLER}])
        stored = await wait_for_verdicts(settings, ["too-big"], timeout_s=30)
    first_try = _parts(FILLER, 8000)
    expected = _parts(FILLER, 4000)
    verdict = stored["too-big"]
    assert verdict["label"] == "safe"
    assert verdict["chunks"] == len(expected) > len(first_try) > 1
    assert verdict["attempts"] == 1 + len(expected)  # the first chunk overflowed, then each smaller one
    assert await guard_sim.calls_for(first_try[0].text) == 1
    assert await collect(settings, settings.dlq_topic, count=1, timeout_s=1) == []


async def test_redelivery_pays_only_for_chunks_not_yet_judged(
    make_settings: SettingsFactory, guard_sim: GuardSim
) -> None:
    await guard_sim.configure(max_model_len=WINDOW_TOKENS)
    settings = make_settings()
    text = FILLER + " the last chunk is refused once [[sim:400x1]]"
    parts = _parts(text, chunking.chunk_chars_for(WINDOW_TOKENS, default_chars=1))
    async with running_worker(settings):
        await publish(settings, [{"id": "flaky-end", "text": text}])
        dead = await collect(settings, settings.dlq_topic, count=1, timeout_s=30)
        envelope = DeadLetterEnvelope.from_headers(dead[0].headers)
        assert envelope.error_reason == "guard_rejected"
        assert envelope.attempts == len(parts)  # every chunk once; the last one refused
        await publish(settings, [json.loads(dead[0].value)])  # the same id again
        stored = await wait_for_verdicts(settings, ["flaky-end"], timeout_s=30)
    assert stored["flaky-end"]["chunks"] == len(parts)
    assert stored["flaky-end"]["attempts"] == 1  # only the refused chunk was asked again
    for part in parts[:-1]:
        assert await guard_sim.calls_for(part.text) == 1
    assert await guard_sim.calls_for(parts[-1].text) == 2
