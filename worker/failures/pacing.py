"""How `guardq dlq replay` goes: ``--rate`` parsing, the pacer that bounds the republish rate at every
moment, and the progress bar (plain lines when stderr is not a terminal)."""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Awaitable, Callable
from typing import TextIO

_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:/\s*s)?\s*$")


def parse_rate(raw: str) -> float:
    """``--rate`` as records per second: ``50/s`` or ``50`` (a positive number); ValueError otherwise."""
    match = _RATE.match(raw)
    value = float(match.group(1)) if match else 0.0
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{raw!r} is not a rate like 50/s (records per second, more than 0)")
    return value


class Pacer:
    """Sleep pacing: each ``wait`` returns at least ``1/rate`` seconds after the previous one, with no
    burst beyond one record, so --rate bounds the republish rate at every moment, not just on average."""

    def __init__(
        self,
        rate_per_s: float | None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._interval_s = 0.0 if rate_per_s is None else 1.0 / rate_per_s
        self._clock = clock
        self._sleep = sleep
        self._next_at: float | None = None

    async def wait(self) -> None:
        """Return when the next record may go."""
        if self._interval_s == 0.0:
            return
        now = self._clock()
        if self._next_at is not None and now < self._next_at:
            await self._sleep(self._next_at - now)
            now = self._next_at
        self._next_at = now + self._interval_s


class Progress:
    """A progress bar on a terminal (redrawn in place), or a plain line at every tenth when not a TTY."""

    WIDTH = 30

    def __init__(self, stream: TextIO | None, total: int, *, tty: bool | None = None) -> None:
        self._stream = stream
        self._total = total
        self._done = 0
        self._tty = bool(tty if tty is not None else stream is not None and stream.isatty())
        self._last_tenth = 0

    def advance(self, count: int) -> None:
        """``count`` more records were replayed."""
        self._done += count
        if self._stream is None or self._total == 0:
            return
        if self._tty:
            filled = self.WIDTH * self._done // self._total
            bar = "#" * filled + "." * (self.WIDTH - filled)
            self._stream.write(f"\rreplaying [{bar}] {self._done}/{self._total}")
        else:
            tenth = 10 * self._done // self._total
            if tenth == self._last_tenth:
                return
            self._last_tenth = tenth
            self._stream.write(f"replayed {self._done}/{self._total}\n")
        self._stream.flush()

    def close(self) -> None:
        """End the bar's line (a terminal's cursor would otherwise stay on it)."""
        if self._stream is not None and self._tty and self._total:
            self._stream.write("\n")
            self._stream.flush()
