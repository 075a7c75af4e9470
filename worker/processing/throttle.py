"""The shared throttle: a 429 from the guard slows every call of the worker, not only the one that got it.

The guard (or a gateway in front of it) said how long to back off; sending other calls inside that window
would only earn more 429s. Every guard call waits here first.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

DEFAULT_HOLD_S = 1.0  # a 429 without Retry-After
MAX_HOLD_S = 300.0  # never trust a Retry-After beyond five minutes


class Throttle:
    """Holds every caller until the latest Retry-After window has passed."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._until = 0.0
        self.holds = 0

    @property
    def remaining_s(self) -> float:
        return max(0.0, self._until - self._clock())

    def hold_for(self, retry_after_s: float | None) -> None:
        """Start (or extend) a window in which no call is sent."""
        seconds = min(MAX_HOLD_S, DEFAULT_HOLD_S if retry_after_s is None else max(0.0, retry_after_s))
        until = self._clock() + seconds
        if until > self._until:
            self._until = until
            self.holds += 1
            log.warning("guard asked to slow down (429): holding every call for %.1f s", seconds)

    async def wait(self) -> None:
        """Return once no window is open (at once, usually)."""
        # A loop, not an Event: another 429 may extend the window while we sleep.
        while (remaining := self.remaining_s) > 0:  # noqa: ASYNC110
            await asyncio.sleep(remaining)
