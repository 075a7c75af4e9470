"""Gathering concurrent messages' guard calls into batch requests (backends that batch: OpenAI-style
moderation).

A batch forms while it waits: for ``max_size`` texts or ``wait_s``, then for a concurrency slot (so the
cap counts requests, not texts, and a busy guard gets fuller batches). It then takes up to ``max_size``
waiting texts and sends them as one request; the next batch starts forming at once. Each text gets its own
answer: its verdict, its own error, or a copy of the error that failed the whole request. A caller that is
cancelled before its batch is sent leaves it; one cancelled after only loses interest in its answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field

from opentelemetry.trace import Link, SpanContext

from worker.core.errors import GuardError
from worker.core.guard_types import GuardRequest, GuardVerdict
from worker.processing.limiter import SlotRefused

Answer = GuardVerdict | GuardError
Send = Callable[[list[GuardRequest], list[Link]], Awaitable[list[Answer]]]
Slot = Callable[[], AbstractAsyncContextManager[None]]


@dataclass
class _Waiting:
    request: GuardRequest
    context: SpanContext
    answer: asyncio.Future[Answer] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class GuardBatcher:
    """Sends texts submitted at about the same time as one request; safe to use from many tasks."""

    def __init__(self, send: Send, slot: Slot, *, max_size: int, wait_s: float) -> None:
        if max_size < 1 or wait_s < 0:
            raise ValueError("max_size must be >= 1 and wait_s >= 0")
        self._send = send
        self._slot = slot
        self._max_size = max_size
        self._wait_s = wait_s
        self._waiting: list[_Waiting] = []
        self._full = asyncio.Event()
        self._forming: asyncio.Task[None] | None = None

    async def submit(self, request: GuardRequest, context: SpanContext) -> GuardVerdict:
        """The verdict of ``request`` from the batch it joins; raises its ``GuardError``. ``context`` (the
        caller's span) is linked from the batch request's span."""
        item = _Waiting(request, context)
        self._waiting.append(item)
        if len(self._waiting) >= self._max_size:
            self._full.set()
        if self._forming is None:
            self._forming = asyncio.create_task(self._form())
        try:
            answer = await item.answer
        except asyncio.CancelledError:
            if item in self._waiting:
                self._waiting.remove(item)
            raise
        if isinstance(answer, GuardError):
            raise answer
        return answer

    async def _form(self) -> None:
        """Wait for a full batch (or ``wait_s``) and a slot, then send what is waiting."""
        try:
            if len(self._waiting) < self._max_size and self._wait_s > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._wait_s):
                        await self._full.wait()
            async with self._slot():
                batch, self._waiting = self._waiting[: self._max_size], self._waiting[self._max_size :]
                self._full.clear()
                if len(self._waiting) >= self._max_size:
                    self._full.set()
                self._forming = asyncio.create_task(self._form()) if self._waiting else None
                if batch:
                    await self._deliver(batch)
        except BaseException as exc:  # no slot (SlotRefused: a drain), or cancelled: nobody may hang
            if self._forming is asyncio.current_task():  # not yet handed on: the waiting are ours
                self._forming = None
                waiting, self._waiting = self._waiting, []
                for item in waiting:
                    _settle(item, exc)
            if type(exc) is asyncio.CancelledError or not isinstance(exc, Exception | SlotRefused):
                raise

    async def _deliver(self, batch: list[_Waiting]) -> None:
        try:
            answers = await self._send(
                [item.request for item in batch], [Link(item.context) for item in batch]
            )
        except BaseException as exc:  # a cancellation too: nobody in the batch may be left waiting
            for item in batch:
                _settle(item, exc)
            if not isinstance(exc, Exception):
                raise
            return
        if len(answers) != len(batch):  # a backend's bug: nobody may be left without an answer
            error = RuntimeError(f"a batch of {len(batch)} got {len(answers)} answers")
            for item in batch:
                _settle(item, error)
            return
        for item, answer in zip(batch, answers, strict=True):
            if not item.answer.done():
                item.answer.set_result(answer)


def _settle(item: _Waiting, error: BaseException) -> None:
    """Fail ``item`` with its own copy of ``error`` (each caller raises and annotates its own)."""
    if item.answer.done():
        return
    if type(error) is asyncio.CancelledError:  # not SlotRefused, a cancellation the caller must raise
        item.answer.cancel()
    else:
        item.answer.set_exception(copy.copy(error))
