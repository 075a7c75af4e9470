"""Running a long-lived service coroutine on the fastest event loop available."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:  # uvloop is a dependency on Linux and macOS only
        return None
    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T]) -> T:
    """Like ``asyncio.run``, on uvloop where it is installed."""
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(main)


def settle_heap() -> None:
    """Once start-up is over: collect, then keep what survived (modules, classes, clients: most of the
    heap, and it lives as long as the process) out of the garbage collector's sight. A full collection
    then walks only the objects of the records in flight, in about half the time (each collection is a
    pause of the event loop while guard replies wait)."""
    gc.collect()
    gc.freeze()
