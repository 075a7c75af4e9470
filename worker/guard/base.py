"""The guard backend protocol: one request in, one verdict out, or a ``worker.core.errors.GuardError``."""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import Protocol, Self, runtime_checkable

from worker.core.errors import GuardError
from worker.core.guard_types import GuardRequest, GuardVerdict


class AsyncLifecycle:
    """``async with backend:`` runs ``start()`` then ``stop()``; backends inherit it."""

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()


class GuardBackend(Protocol):
    """A guard model client. ``start``/``stop`` are idempotent; ``moderate`` is safe to call concurrently."""

    @property
    def model(self) -> str: ...

    @property
    def context_window(self) -> int | None:
        """The model's context window in tokens when the server reports it, else None."""
        ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def check(self) -> None:
        """Verify the guard is usable as configured: ``GuardConfigError`` if not, ``GuardUnavailable`` if down."""
        ...

    async def moderate(self, request: GuardRequest) -> GuardVerdict:
        """Moderate one text; raises a ``GuardError`` subclass on failure."""
        ...


@runtime_checkable
class BatchGuardBackend(GuardBackend, Protocol):
    """A backend that judges many texts in one request (the caller gathers them into batches)."""

    async def moderate_batch(self, requests: Sequence[GuardRequest]) -> list[GuardVerdict | GuardError]:
        """One request for all of ``requests``: each its verdict or its own error, in order. Raises a
        ``GuardError`` when the request as a whole fails."""
        ...
