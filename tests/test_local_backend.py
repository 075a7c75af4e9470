"""The offline local backend: real alt-profanity-check predictions, micro-batching and lifecycle."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import pytest

from worker.core.errors import GuardBadReply, GuardUnavailable
from worker.core.guard_types import GuardRequest
from worker.guard.local import CATEGORY, LocalBackend


@pytest.fixture
async def local() -> AsyncIterator[LocalBackend]:
    async with LocalBackend() as backend:
        yield backend


async def test_offensive_text_is_unsafe_offensive_language(local: LocalBackend) -> None:
    verdict = await local.moderate(GuardRequest(text="you are a fucking idiot, shut the fuck up"))

    assert verdict.label == "unsafe"
    assert verdict.categories == (CATEGORY,)
    assert verdict.refusal is None


async def test_benign_text_is_safe(local: LocalBackend) -> None:
    verdict = await local.moderate(GuardRequest(text="Thanks for the recipe, the soup was lovely."))

    assert (verdict.label, verdict.categories, verdict.refusal) == ("safe", (), None)


async def test_response_is_judged_on_the_response_text(local: LocalBackend) -> None:
    offensive_prompt = GuardRequest(text="Here is a polite answer.", kind="response", prompt="fuck you idiot")
    offensive_answer = GuardRequest(text="fuck off you stupid idiot", kind="response", prompt="hello")

    assert (await local.moderate(offensive_prompt)).label == "safe"
    assert (await local.moderate(offensive_answer)).label == "unsafe"


async def test_model_name_says_it_is_not_a_full_safety_model(local: LocalBackend) -> None:
    verdict = await local.moderate(GuardRequest(text="hello"))

    assert verdict.model == local.model
    assert local.model.startswith("alt-profanity-check ")
    assert "not a full safety model" in local.model


async def test_100_concurrent_calls_share_few_predict_batches(local: LocalBackend) -> None:
    texts = [f"message number {i}" if i % 2 else f"you stupid fucking idiot {i}" for i in range(100)]
    before = local.batches_run

    verdicts = await asyncio.wait_for(
        asyncio.gather(*(local.moderate(GuardRequest(text=text)) for text in texts)), timeout=30
    )

    assert len(verdicts) == 100
    assert [v.label for v in verdicts] == ["unsafe" if i % 2 == 0 else "safe" for i in range(100)]
    assert 1 <= local.batches_run - before < 100


async def test_stop_then_start_serves_again() -> None:
    backend = LocalBackend()
    await backend.start()
    await backend.start()  # idempotent
    assert (await backend.moderate(GuardRequest(text="good morning"))).label == "safe"
    await backend.stop()
    await backend.stop()  # idempotent
    with pytest.raises(RuntimeError):
        await backend.moderate(GuardRequest(text="good morning"))

    await backend.start()
    try:
        assert (await backend.moderate(GuardRequest(text="good morning"))).label == "safe"
    finally:
        await backend.stop()


async def test_classifier_failure_fails_every_caller_in_the_batch(local: LocalBackend) -> None:
    def broken(texts: list[str]) -> Sequence[float]:
        raise MemoryError("model exploded")

    local._predict = broken  # a classifier that fails, as a corrupt pickle or OOM would

    results = await asyncio.wait_for(
        asyncio.gather(
            *(local.moderate(GuardRequest(text=str(i))) for i in range(5)), return_exceptions=True
        ),
        timeout=10,
    )

    assert all(isinstance(result, GuardBadReply) for result in results)
    assert "model exploded" in str(results[0])


async def test_stop_fails_callers_waiting_mid_batch() -> None:
    release = asyncio.Event()
    loop = asyncio.get_running_loop()
    backend = LocalBackend()
    await backend.start()

    def stuck(texts: list[str]) -> Sequence[float]:
        # Blocks its worker thread until the test releases it, so the stop lands mid-predict.
        asyncio.run_coroutine_threadsafe(release.wait(), loop).result(timeout=10)
        return [0.0] * len(texts)

    backend._predict = stuck
    calls = [asyncio.create_task(backend.moderate(GuardRequest(text=str(i)))) for i in range(3)]
    for _ in range(1000):  # bounded poll until the batch is in the classifier
        if backend.batches_run:
            break
        await asyncio.sleep(0.001)
    await backend.stop()
    release.set()

    results = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), timeout=10)
    assert all(isinstance(result, GuardUnavailable) for result in results)


def test_bad_settings_are_rejected() -> None:
    with pytest.raises(ValueError):
        LocalBackend(threshold=0)
    with pytest.raises(ValueError):
        LocalBackend(max_batch=0)
