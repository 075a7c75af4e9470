"""The one way guardq waits out an unavailable service (Redis, Kafka): exponential backoff with jitter.

Jitter matters: after a Redis or broker restart every worker of the fleet, and every record in flight in
each, would otherwise retry in lockstep. Guard calls have their own policy (``processing.retry``), built
on tenacity, because their attempts are counted and bounded; these waits are not: the work is kept and
tried again until the service answers (or the task is cancelled by a drain deadline).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from worker.core.errors import is_infrastructure

T = TypeVar("T")


@dataclass
class Backoff:
    """Delays that double from ``initial_s`` up to ``max_s``; each is drawn from [d/2, d] ("equal jitter")."""

    initial_s: float
    max_s: float
    _ceiling_s: float = field(init=False)

    def __post_init__(self) -> None:
        self._ceiling_s = self.initial_s

    def next_s(self) -> float:
        """The next delay; the one after it may be twice as long."""
        delay = self._ceiling_s * random.uniform(0.5, 1.0)
        self._ceiling_s = min(self._ceiling_s * 2, self.max_s)
        return delay

    def reset(self) -> None:
        """Start again from ``initial_s`` (the service answered)."""
        self._ceiling_s = self.initial_s


async def until_available(
    operation: Callable[[], Awaitable[T]],
    *,
    backoff: Backoff,
    on_retry: Callable[[Exception, float], None],
) -> T:
    """Run ``operation`` until it succeeds, waiting out infrastructure errors (``is_infrastructure``):
    ``on_retry(error, delay)`` is told of each before the wait. Any other error propagates, and so does a
    cancellation: a task being cancelled (a drain deadline) does not retry."""
    while True:
        try:
            return await operation()
        except Exception as exc:
            task = asyncio.current_task()
            if not is_infrastructure(exc) or (task is not None and task.cancelling()):
                raise
            delay = backoff.next_s()
            on_retry(exc, delay)
            await asyncio.sleep(delay)
