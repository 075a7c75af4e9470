"""Per-partition commit watermark: the highest offset below which every fetched record is done.

Concurrency finishes records out of order; committing the newest finished offset would skip unfinished
work on a crash. Offsets need not be contiguous (compaction, transaction markers), so the tracker only
trusts offsets it was given.
"""

from __future__ import annotations

import heapq


class PartitionOffsets:
    """Tracks fetched-but-unfinished offsets of one partition. Pure code, no I/O."""

    def __init__(self) -> None:
        self._pending: set[int] = set()
        self._heap: list[int] = []  # lazily pruned: may hold offsets already done
        self._next: int | None = None  # one past the highest offset ever added

    def add(self, offset: int) -> None:
        """Record a fetched offset. Offsets must arrive in increasing order."""
        if self._next is not None and offset < self._next:
            raise ValueError(f"offset {offset} added after {self._next - 1}")
        self._pending.add(offset)
        heapq.heappush(self._heap, offset)
        self._next = offset + 1

    def seen(self, offset: int) -> bool:
        """True when ``offset`` is not above the highest offset already added."""
        return self._next is not None and offset < self._next

    def done(self, offset: int) -> None:
        """Mark a fetched offset finished (idempotent)."""
        self._pending.discard(offset)
        while self._heap and self._heap[0] not in self._pending:
            heapq.heappop(self._heap)
        if len(self._heap) > 2 * len(self._pending) + 1024:
            # One slow record must not make finished offsets behind it pile up: memory stays O(pending).
            self._heap = list(self._pending)
            heapq.heapify(self._heap)

    @property
    def next_offset(self) -> int | None:
        """One past the highest offset added (where fetching goes on), None before anything was added."""
        return self._next

    @property
    def pending(self) -> int:
        """How many fetched offsets are not finished."""
        return len(self._pending)

    @property
    def held(self) -> int:
        """How many offsets the tracker keeps in memory (bounded by about twice ``pending``)."""
        return len(self._heap) + len(self._pending)

    def committable(self) -> int | None:
        """The offset to commit (the next one to read), or None before anything was fetched."""
        if self._heap:
            return self._heap[0]
        return self._next
