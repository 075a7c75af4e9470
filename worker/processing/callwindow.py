"""The circuit breaker's sliding window of guard call outcomes: how many calls and failures it holds and
how many distinct texts failed, each kept in O(1) per call and in memory that does not grow with the call
rate."""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass
from typing import Final

# Successes within this share of the window are counted in one entry: the window holds at most about this
# many entries of successes (plus one per failure) whatever the call rate. One entry per call held every
# call of the last minute: 300,000 entries, 35 MB, at 5,000 calls/s.
SUCCESS_BUCKETS: Final = 120


@dataclass(slots=True)
class _Calls:
    """Calls of the window: one failure (its text), or successes begun at ``at`` (``text`` None)."""

    at: float
    count: int
    text: object | None


class CallWindow:
    """Outcomes of the last ``window_s`` seconds."""

    def __init__(self, window_s: float) -> None:
        self._window_s = window_s
        self._bucket_s = window_s / SUCCESS_BUCKETS
        self._entries: deque[_Calls] = deque()
        self.calls = 0
        self.failures = 0
        self._failing_texts: Counter[object] = Counter()  # failures in the window, by text

    @property
    def failing_texts(self) -> int:
        """How many distinct texts failed in the window."""
        return len(self._failing_texts)

    def add(self, now: float, *, failed_text: object | None) -> None:
        """Count a success (``failed_text`` None) or a failure of ``failed_text``, and forget the calls older
        than the window (a bucket of successes leaves whole, up to a bucket's span early)."""
        newest = self._entries[-1] if self._entries else None
        if (
            failed_text is None
            and newest is not None
            and newest.text is None
            and now - newest.at < self._bucket_s
        ):
            newest.count += 1
        else:
            self._entries.append(_Calls(now, 1, failed_text))
        self.calls += 1
        if failed_text is not None:
            self.failures += 1
            self._failing_texts[failed_text] += 1
        while self._entries and self._entries[0].at < now - self._window_s:
            old = self._entries.popleft()
            self.calls -= old.count
            if old.text is not None:
                self.failures -= 1
                self._failing_texts[old.text] -= 1
                if self._failing_texts[old.text] <= 0:
                    del self._failing_texts[old.text]

    def clear(self) -> None:
        self._entries.clear()
        self.calls = self.failures = 0
        self._failing_texts.clear()
