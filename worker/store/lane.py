"""A Redis connection of its own on which batches of commands are pipelined back to back.

redis-py's pipeline checks a connection out of the pool, builds a pipeline object, and wraps every reply
in its own timeout: about 200 µs of client CPU for a pipeline of one command, where the write and the
read themselves cost about 60. When guard replies arrive one by one, most verdicts are saved alone, so
that overhead is paid per message. A lane writes each batch as soon as it is ready, without waiting for
the replies of the batches before it, and each batch reads its own replies once those are read: one
deadline per batch, no pool, no pipeline object.

Failure rules: an error reply (``ResponseError``) is the answer of its own command and the connection
goes on. Anything else that breaks a batch mid-way (the connection lost, the deadline passed, the caller
cancelled) leaves the stream out of step, so the connection is dropped: the batches written on it fail
with a ``ConnectionError``, and the next batch connects again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

Command = Sequence[bytes | str | int]
DEFAULT_TIMEOUT_S = 10.0  # when the client sets no socket timeout: a stalled Redis must not hang a batch


class Lane:
    """A connection configured like ``redis``'s pool (address, credentials, TLS, database) that carries
    batches of commands in order. A dropped connection is replaced by a new one (its own parser: a batch
    still reading the old one never touches the new stream). ``aclose`` drops it."""

    def __init__(self, redis: Redis) -> None:
        pool = redis.connection_pool
        self._kwargs = dict(pool.connection_kwargs)
        self._timeout_s = float(self._kwargs.get("socket_timeout") or DEFAULT_TIMEOUT_S)
        # No per-read timeout: the batch's one deadline covers its write, its turn and its replies.
        self._kwargs["socket_timeout"] = None
        self._encoding = str(self._kwargs.get("encoding", "utf-8"))
        self._class = pool.connection_class
        self._conn: AbstractConnection = self._class(**self._kwargs)
        self._connecting: asyncio.Task[None] | None = None
        self._tail: asyncio.Future[None] | None = None  # done once the last batch written has its replies

    async def execute(self, commands: Sequence[Command]) -> list[Any]:
        """The replies to ``commands`` in order, an error reply in place as its ``ResponseError``."""
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._connected()
                if self._tail is None and await self._gone_stale():
                    await self._connected()
                return await self._exchange(commands)
        except TimeoutError:
            raise RedisTimeoutError(f"no reply from Redis within {self._timeout_s:g}s") from None

    async def aclose(self) -> None:
        if self._connecting is not None:
            self._connecting.cancel()
        await self._drop(self._conn)

    async def _connected(self) -> None:
        """Connect once for every batch that finds the lane unconnected. redis-py calls a connection
        connected while its handshake (HELLO, AUTH, SELECT, CLIENT SETINFO) still reads replies: batches
        wait for the whole connect, or they would read those replies as their own."""
        while self._connecting is not None or not self._conn.is_connected:
            if self._connecting is None:
                self._connecting = asyncio.get_running_loop().create_task(self._connect(self._conn))
            # Shielded: one batch giving up (deadline, cancellation) does not abort the others' connect.
            await asyncio.shield(self._connecting)

    async def _gone_stale(self) -> bool:
        """Whether the idle connection was closed meanwhile (Redis's idle ``timeout``, a restart, CLIENT
        KILL) or holds bytes nobody asked for: then it is dropped, and the batch goes on a new one instead
        of failing on it. The same check as redis-py's pool makes on each checkout."""
        conn = self._conn
        try:
            stale = await conn.can_read()
        except (RedisConnectionError, OSError):
            stale = True
        if stale:
            await self._drop(conn)
        return stale

    async def _connect(self, conn: AbstractConnection) -> None:
        try:
            await conn.connect()  # type: ignore[no-untyped-call]  # unannotated in redis-py
        finally:
            self._connecting = None  # before the task is done: a batch never awaits a finished connect

    async def _exchange(self, commands: Sequence[Command]) -> list[Any]:
        conn, previous = self._conn, self._tail
        mine: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._tail = mine
        try:
            # The write happens before the first await inside: batches go out in the order they got here.
            await conn.send_packed_command(self._packed(commands), check_health=False)
            if previous is not None and not previous.done():
                await asyncio.wait((previous,))  # a turn, without cancelling the batch before if we give up
            if conn is not self._conn:
                raise RedisConnectionError("the Redis connection was lost before this batch's replies")
            replies = [await _reply(conn) for _ in commands]
        except BaseException:
            await self._drop(conn)
            raise
        finally:
            mine.set_result(None)
            if self._tail is mine:
                self._tail = None
        return replies

    def _packed(self, commands: Sequence[Command]) -> bytes:
        """The commands in RESP, as redis-py packs them (byte for byte) at a third of its cost: every
        argument here is bytes, text or an integer, so none of its general cases apply."""
        out = bytearray()
        for command in commands:
            out += b"*%d\r\n" % len(command)
            for arg in command:
                if isinstance(arg, str):
                    arg = arg.encode(self._encoding)
                elif isinstance(arg, int):
                    arg = b"%d" % arg
                out += b"$%d\r\n%b\r\n" % (len(arg), arg)
        return bytes(out)

    async def _drop(self, conn: AbstractConnection) -> None:
        """Drop the connection a failed batch was written on (unless it is replaced already): the batches
        written after it would read its replies. Closing without waiting does not suspend, so a
        cancelled batch still gets it done."""
        if conn is not self._conn:
            return
        self._conn, self._tail = self._class(**self._kwargs), None
        await conn.disconnect(nowait=True)


async def _reply(conn: AbstractConnection) -> Any:
    try:
        return await conn.read_response()
    except ResponseError as error:  # the command's own answer; the stream is still in step
        return error
