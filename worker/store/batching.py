"""Script calls made in the same turn of the event loop go to Redis as one pipelined round trip.

The records of one fetch start together and each claims its id; verdicts of an instant guard come back
together and each is saved. Called one by one, every call pays redis-py's per-command cost (a pool
checkout, a send, a read); gathered, a few hundred share one. The batches travel on a ``Lane`` (a
connection of their own, pipelined back to back), so a batch of one, the usual save behind a slow guard,
costs little more than its write and its read. Each caller still gets its own answer, or
its own error: a script error (NOPERM, BUSY ...) reaches only the call that met it, a connection error
reaches every call of the batch, and a script Redis has forgotten (NOSCRIPT, after a restart or a
SCRIPT FLUSH) is loaded again and the call repeated.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from worker.store.lane import Lane

MAX_BATCH = 512  # calls per round trip; more wait for the next one


@dataclass
class _Call:
    script: AsyncScript
    keys: Sequence[str]
    args: Sequence[bytes | str | int]
    answer: asyncio.Future[Any]


class ScriptBatcher:
    """Runs ``AsyncScript`` calls, gathering those made in one loop turn into one pipeline."""

    def __init__(self, redis: Redis) -> None:
        self._lane = Lane(redis)
        self._pending: list[_Call] = []
        self._running: set[asyncio.Task[None]] = set()
        self.round_trips = 0  # pipelines sent (for tests and profiling)

    async def run(self, script: AsyncScript, keys: Sequence[str], args: Sequence[bytes | str | int]) -> Any:
        """What ``script(keys, args)`` answers (or raises), sent with the other calls of this loop turn."""
        loop = asyncio.get_running_loop()
        call = _Call(script, keys, args, loop.create_future())
        self._pending.append(call)
        if len(self._pending) == 1:
            loop.call_soon(self._flush)
        elif len(self._pending) >= MAX_BATCH:
            self._flush()
        return await call.answer

    def _flush(self) -> None:
        calls, self._pending = self._pending, []
        if not calls:
            return  # a full batch went early; its call_soon finds nothing
        task = asyncio.get_running_loop().create_task(self._send(calls))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _send(self, calls: list[_Call]) -> None:
        try:
            results = await self._pipeline(calls)
        except BaseException as exc:  # the connection failed (or we are cancelled): every call learns it
            for call in calls:
                _settle(call, exc)
            if not isinstance(exc, Exception):
                raise
            return
        for call, result in zip(calls, results, strict=True):
            if isinstance(result, NoScriptError):
                await self._again(call)
            else:
                _settle(call, result)

    async def _pipeline(self, calls: list[_Call]) -> list[Any]:
        self.round_trips += 1
        return await self._lane.execute(
            [("EVALSHA", call.script.sha, len(call.keys), *call.keys, *call.args) for call in calls]
        )

    async def aclose(self) -> None:
        """Close the lane's connection (calls still waiting fail with a connection error)."""
        await self._lane.aclose()

    async def _again(self, call: _Call) -> None:
        """One call alone, through the script object (which loads the script when Redis lacks it)."""
        try:
            result = await call.script(keys=list(call.keys), args=list(call.args))
        except Exception as exc:
            result = exc
        _settle(call, result)


def _settle(call: _Call, result: Any) -> None:
    if call.answer.done():
        return  # the caller was cancelled meanwhile
    if isinstance(result, asyncio.CancelledError):
        call.answer.cancel()
    elif isinstance(result, BaseException):
        call.answer.set_exception(_own_copy(result))
    else:
        call.answer.set_result(result)


def _own_copy(error: BaseException) -> BaseException:
    """A copy of ``error`` per caller: one instance raised in many tasks would pile up their tracebacks."""
    try:
        return copy.copy(error)
    except Exception:
        return error
