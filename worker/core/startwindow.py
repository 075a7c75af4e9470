"""A record's place in its worker's start window, carried in the context of the task that handles it.

The fetch loop starts a record's handler only while fewer records than the window allows still need a
guard call (``worker.kafka.inflight``). A handler leaves the window as soon as it needs no guard call any
more, not when it ends: storing and publishing a verdict waits on Redis and the broker, and records
doing that must not keep the next ones from their guard calls. The fetch loop gives each handler's task a
``Place``; the pipeline calls ``leave_start_window()`` once its guard call is over. Leaving twice (and
the fetch loop leaves for every handler that ends) counts once.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar, Token

_PLACE: ContextVar[Place | None] = ContextVar("guardq_start_window_place", default=None)


class Place:
    """One handler's place in the window; ``leave`` gives it back once."""

    __slots__ = ("_give_back", "_left")

    def __init__(self, give_back: Callable[[], None]) -> None:
        self._give_back = give_back
        self._left = False

    def leave(self) -> None:
        if not self._left:
            self._left = True
            self._give_back()


def hold(place: Place) -> Token[Place | None]:
    """Make ``place`` the current one: a task created now carries it. ``release`` the token after."""
    return _PLACE.set(place)


def release(token: Token[Place | None]) -> None:
    _PLACE.reset(token)


def leave_start_window() -> None:
    """The running handler needs no guard call any more: let the next record start (no-op outside a
    fetch loop's handler)."""
    place = _PLACE.get()
    if place is not None:
        place.leave()
