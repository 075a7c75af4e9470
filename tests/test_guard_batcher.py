"""Concurrent messages' guard calls gathered into batch requests: full batches go at once, a partial one
after the wait, a busy guard gets fuller batches, and every message gets its own answer."""

from __future__ import annotations

import asyncio

import pytest
from opentelemetry.trace import INVALID_SPAN_CONTEXT, Link

from worker.core.errors import GuardBadReply, GuardError, GuardUnavailable
from worker.core.guard_types import GuardRequest, GuardVerdict
from worker.processing.guardbatch import Answer, GuardBatcher
from worker.processing.limiter import ConcurrencyLimiter, SlotRefused


class Guard:
    """A batch guard of its own making: records each batch, answers after ``delay_s``."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.batches: list[list[str]] = []
        self.delay_s = delay_s
        self.fail_whole: GuardError | None = None
        self.sent = asyncio.Event()  # set by the first batch

    async def send(self, requests: list[GuardRequest], links: list[Link]) -> list[Answer]:
        assert len(links) == len(requests)
        self.batches.append([request.text for request in requests])
        self.sent.set()
        await asyncio.sleep(self.delay_s)
        if self.fail_whole is not None:
            raise self.fail_whole
        return [
            GuardBadReply(f"bad entry for {r.text}") if r.text.startswith("bad") else _verdict(r.text)
            for r in requests
        ]


def _verdict(text: str) -> GuardVerdict:
    return GuardVerdict(label="safe", categories=(text,), refusal=None, model="m")


def _batcher(
    guard: Guard, limiter: ConcurrencyLimiter, *, max_size: int = 4, wait_s: float = 0.05
) -> GuardBatcher:
    return GuardBatcher(guard.send, limiter.slot, max_size=max_size, wait_s=wait_s)


async def _submit(batcher: GuardBatcher, text: str) -> GuardVerdict:
    return await batcher.submit(GuardRequest(text=text), INVALID_SPAN_CONTEXT)


async def test_a_full_batch_goes_at_once_and_each_caller_gets_its_own_verdict() -> None:
    guard = Guard()
    batcher = _batcher(guard, ConcurrencyLimiter(8), wait_s=10)  # only a full batch could go this fast
    async with asyncio.timeout(2):
        verdicts = await asyncio.gather(*(_submit(batcher, f"t{i}") for i in range(8)))
    assert [v.categories for v in verdicts] == [(f"t{i}",) for i in range(8)]
    assert guard.batches == [[f"t{i}" for i in range(4)], [f"t{i}" for i in range(4, 8)]]


async def test_a_partial_batch_goes_after_the_wait() -> None:
    guard = Guard()
    batcher = _batcher(guard, ConcurrencyLimiter(8), wait_s=0.05)
    started = asyncio.get_running_loop().time()
    await asyncio.gather(_submit(batcher, "a"), _submit(batcher, "b"))
    assert 0.04 <= asyncio.get_running_loop().time() - started < 1
    assert guard.batches == [["a", "b"]]


async def test_while_the_guard_is_busy_batches_fill_up_and_the_cap_counts_requests() -> None:
    guard = Guard(delay_s=0.2)
    limiter = ConcurrencyLimiter(1)
    batcher = _batcher(guard, limiter, max_size=10, wait_s=0)
    async with asyncio.timeout(5):
        first = asyncio.create_task(_submit(batcher, "first"))
        await guard.sent.wait()  # the first text holds the only slot for 0.2 s
        verdicts = await asyncio.gather(*(_submit(batcher, f"t{i}") for i in range(39)))
        await first
    assert len(verdicts) == 39
    assert [len(batch) for batch in guard.batches] == [1, 10, 10, 10, 9]
    assert [text for batch in guard.batches[1:] for text in batch] == [f"t{i}" for i in range(39)]
    assert limiter.peak == 1


async def test_a_bad_entry_fails_only_its_own_caller() -> None:
    batcher = _batcher(Guard(), ConcurrencyLimiter(8), wait_s=0.01)
    good, bad = await asyncio.gather(
        _submit(batcher, "good"), _submit(batcher, "bad one"), return_exceptions=True
    )
    assert isinstance(good, GuardVerdict) and good.categories == ("good",)
    assert isinstance(bad, GuardBadReply) and "bad one" in str(bad)


async def test_a_failed_request_fails_every_caller_with_a_copy_of_its_own() -> None:
    guard = Guard()
    guard.fail_whole = GuardUnavailable("guard HTTP 503", status=503)
    batcher = _batcher(guard, ConcurrencyLimiter(8), wait_s=0.01)
    errors = await asyncio.gather(*(_submit(batcher, f"t{i}") for i in range(3)), return_exceptions=True)
    assert all(isinstance(e, GuardUnavailable) and e.status == 503 for e in errors)
    assert len({id(e) for e in errors}) == 3


async def test_a_caller_cancelled_before_the_batch_goes_is_not_sent() -> None:
    guard = Guard()
    batcher = _batcher(guard, ConcurrencyLimiter(8), wait_s=0.05)
    leaving = asyncio.create_task(_submit(batcher, "leaving"))
    staying = asyncio.create_task(_submit(batcher, "staying"))
    await asyncio.sleep(0.01)
    leaving.cancel()
    assert (await staying).categories == ("staying",)
    assert guard.batches == [["staying"]]


async def test_a_draining_limiter_refuses_every_waiting_caller() -> None:
    limiter = ConcurrencyLimiter(1)
    guard = Guard()
    batcher = _batcher(guard, limiter, wait_s=0.01)
    limiter.close()
    others = [asyncio.create_task(_submit(batcher, f"t{i}")) for i in range(3)]
    with pytest.raises(SlotRefused):
        await _submit(batcher, "mine")
    # SlotRefused is a cancellation: a record's task ends cancelled, uncommitted, as without batching.
    results = await asyncio.gather(*others, return_exceptions=True)
    assert all(isinstance(r, asyncio.CancelledError) for r in results), results
    assert guard.batches == []


def test_a_batch_needs_room_for_one() -> None:
    with pytest.raises(ValueError):
        _batcher(Guard(), ConcurrencyLimiter(1), max_size=0)


async def test_a_batch_whose_sending_task_is_cancelled_leaves_no_caller_waiting() -> None:
    guard = Guard(delay_s=60)
    batcher = _batcher(guard, ConcurrencyLimiter(8), max_size=2, wait_s=0)
    callers = [asyncio.create_task(_submit(batcher, text)) for text in ("a", "b")]
    async with asyncio.timeout(2):
        await guard.sent.wait()
    senders = [t for t in asyncio.all_tasks() if t.get_coro().__qualname__ == "GuardBatcher._form"]  # type: ignore[union-attr]
    assert len(senders) == 1
    senders[0].cancel()  # the batch is in flight, handed on: its callers must still hear of it
    async with asyncio.timeout(2):
        outcomes = await asyncio.gather(*callers, return_exceptions=True)
    assert all(isinstance(outcome, asyncio.CancelledError) for outcome in outcomes), outcomes
