"""The one concurrency limit on guard calls, shared by every partition of a worker process.

It lives in one object so that a later controller can adapt ``limit`` to the guard's behaviour
(latency, 429s) without touching callers.
"""

from __future__ import annotations

import asyncio
from collections import deque
from types import TracebackType


class SlotRefused(asyncio.CancelledError):
    """A guard call asked for a slot after the limiter closed (the worker is draining). A cancellation,
    so the record's task ends as cancelled: not committed, not dead-lettered, left for the next owner."""


class ConcurrencyLimiter:
    """A resizable FIFO semaphore that also reports how many slots are in use; ``close`` refuses every
    slot not yet granted."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self._limit = limit
        self._in_flight = 0
        self._peak = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._closed = False

    @property
    def limit(self) -> int:
        return self._limit

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    @property
    def peak(self) -> int:
        """The highest ``in_flight`` seen since the last ``reset_peak``."""
        return self._peak

    def reset_peak(self) -> None:
        self._peak = self._in_flight

    def set_limit(self, limit: int) -> None:
        """Change the limit; calls already in flight are never interrupted."""
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self._limit = limit
        self._grant()

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Grant no more slots: waiting and later callers get ``SlotRefused``; calls in flight go on."""
        self._closed = True
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(SlotRefused("the worker is draining"))

    def slot(self) -> _Slot:
        """``async with limiter.slot():`` holds one slot for the duration of a guard call."""
        return _Slot(self)

    def _release(self) -> None:
        self._in_flight -= 1
        self._grant()

    async def _acquire(self) -> None:
        if self._closed:
            raise SlotRefused("the worker is draining")
        if self._in_flight < self._limit and not self._waiters:
            self._take()
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except SlotRefused:
            raise  # refused by close(): no slot was taken
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                # The slot was granted just as we were cancelled: hand it on.
                self._release()
            elif waiter in self._waiters:
                self._waiters.remove(waiter)
            raise

    def _take(self) -> None:
        self._in_flight += 1
        self._peak = max(self._peak, self._in_flight)

    def _grant(self) -> None:
        while self._waiters and self._in_flight < self._limit:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self._take()
                waiter.set_result(None)


class _Slot:
    """One slot of a ``ConcurrencyLimiter``, as an async context manager (a plain class: it is entered
    for every guard call, and a generator-based one costs several times as much)."""

    __slots__ = ("_limiter",)

    def __init__(self, limiter: ConcurrencyLimiter) -> None:
        self._limiter = limiter

    async def __aenter__(self) -> None:
        await self._limiter._acquire()

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._limiter._release()
