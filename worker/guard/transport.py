"""Keep-alive HTTP/1.1 for guard calls: a bounded pool of connections, one exchange at a time on each,
the reply read inside the connection's own callback, so a call costs one await.

Why not aiohttp's client here: measured against the simulated guard on one core, its request machinery
cost 240-280 µs of client CPU per call, this transport 110-125 µs; on the instant guard that was a third of the
worker's CPU per message. What a guard call needs is small and fixed: a POST or a GET with a bytes body,
a reply read up to a cap, no redirect followed, no cookie, no proxy, one timeout for the whole exchange
and one for the connect.

Replies are read by ``worker.guard.reply.ReplyReader``. A connection is reused only after a whole,
cleanly framed HTTP/1.1 reply that did not ask to close, and only while it has been idle less than
``IDLE_REUSE_S``.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
import time
from collections.abc import Mapping
from typing import Final, cast
from urllib.parse import quote, unquote, urlsplit

from worker.guard.reply import Reply, ReplyError, ReplyReader

# uvicorn, which serves vLLM and SGLang, closes a connection idle for 5 s; one idle longer than this is not
# reused, so a call is not written onto a connection the server is closing at that very moment.
IDLE_REUSE_S: Final = 4.0
USER_AGENT: Final = "guardq"


class HeaderError(ValueError):
    """A header guardq was asked to send is not valid HTTP (a line break, a non-Latin-1 character)."""


class _Connection(asyncio.Protocol):
    """One connection to the guard; one exchange at a time."""

    def __init__(self, cap: int) -> None:
        self._cap = cap
        self._transport: asyncio.Transport | None = None
        self._reader: ReplyReader | None = None
        self._waiter: asyncio.Future[Reply] | None = None
        self.closed = False
        self.idle_since = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass of it

    async def exchange(self, data: bytes, deadline: float) -> Reply:
        """Write a request and wait for its reply until ``deadline`` (loop time; TimeoutError)."""
        if self.closed or self._transport is None:
            raise ConnectionResetError("the guard closed the connection")
        loop = asyncio.get_running_loop()
        self._reader = ReplyReader(self._cap)
        self._waiter = waiter = loop.create_future()
        # A timer rather than asyncio.timeout: a third of its cost, and no cancellation to unwind.
        timer = loop.call_at(deadline, self._fail, TimeoutError())
        try:
            self._transport.write(data)
            reply: Reply = await waiter
        finally:
            timer.cancel()
        return reply

    @property
    def reusable(self) -> bool:
        return not self.closed and self._reader is None and self._waiter is None

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        if reader is None:  # nothing was asked: a stream that talks out of turn is not reused
            self.abort()
            return
        try:
            reply = reader.feed(data)
        except ReplyError as exc:
            self._fail(exc)
            return
        if reply is not None:
            self._done(reply, reusable=reader.reusable)

    def eof_received(self) -> bool | None:
        return None  # close the transport: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        reader = self._reader
        if reader is None:
            return
        try:
            reply = reader.end()
        except (ReplyError, ConnectionResetError) as error:
            self._fail(error)
            return
        self._done(reply, reusable=False)

    def _done(self, reply: Reply, *, reusable: bool) -> None:
        waiter, self._waiter, self._reader = self._waiter, None, None
        if not reusable:
            self.abort()
        if waiter is not None and not waiter.done():
            waiter.set_result(reply)

    def _fail(self, error: Exception) -> None:
        waiter, self._waiter, self._reader = self._waiter, None, None
        self.abort()
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)

    def abort(self) -> None:
        """Close at once (an exchange cut short leaves the stream in an unknown state)."""
        self.closed = True
        if self._transport is not None:
            self._transport.abort()


class KeepAlivePool:
    """Requests to one origin over at most ``limit`` keep-alive connections."""

    def __init__(
        self,
        base_url: str,
        *,
        limit: int,
        timeout_s: float,
        connect_timeout_s: float,
        ssl_context: ssl.SSLContext,
        max_reply_bytes: int,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {parts.scheme}://{parts.hostname}")
        self._host = parts.hostname
        self._tls = ssl_context if parts.scheme == "https" else None
        default_port = 443 if self._tls else 80
        self._port = parts.port or default_port
        self._prefix = quote(parts.path.rstrip("/"), safe="/%:@!$&'()*+,;=-._~")
        host = f"[{self._host}]" if ":" in self._host else self._host
        authority = host if self._port == default_port else f"{host}:{self._port}"
        fixed = [
            f"Host: {authority}",
            f"User-Agent: {USER_AGENT}",
            "Accept: */*",
            "Accept-Encoding: gzip, deflate",
        ]
        if parts.username is not None:  # user:password@ in the URL: basic auth, as a browser would
            pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            fixed.append(f"Authorization: Basic {base64.b64encode(pair.encode()).decode()}")
        self._fixed = "".join(f"{line}\r\n" for line in fixed)
        self._has_auth = parts.username is not None
        self._timeout_s = timeout_s
        self._connect_timeout_s = min(connect_timeout_s, timeout_s)
        self._cap = max_reply_bytes
        self._slots = asyncio.Semaphore(limit)
        self._idle: list[_Connection] = []
        self._closed = False

    async def request(self, method: str, path: str, body: bytes | None, headers: Mapping[str, str]) -> Reply:
        """One exchange, within the pool's timeout (TimeoutError). Raises ``OSError`` (unreachable, the
        connection lost), ``ssl.SSLError``, ``ReplyError`` or ``HeaderError``."""
        data = self._request_bytes(method, path, body, headers)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout_s
        if self._slots.locked():  # every connection busy: wait for one, within the deadline
            async with asyncio.timeout_at(deadline):
                await self._slots.acquire()
        else:
            await self._slots.acquire()
        try:
            connection = self._idle_connection()
            if connection is None:
                async with asyncio.timeout_at(min(deadline, loop.time() + self._connect_timeout_s)):
                    connection = await self._connect()
            try:
                reply = await connection.exchange(data, deadline)
            except BaseException:
                connection.abort()
                raise
            if connection.reusable and not self._closed:
                connection.idle_since = time.monotonic()
                self._idle.append(connection)
            return reply
        finally:
            self._slots.release()

    async def close(self) -> None:
        """Close the idle connections; those in use close when their exchange ends."""
        self._closed = True
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.abort()

    def _idle_connection(self) -> _Connection | None:
        now = time.monotonic()
        while self._idle:
            connection = self._idle.pop()
            if not connection.closed and now - connection.idle_since < IDLE_REUSE_S:
                return connection
            connection.abort()
        return None

    async def _connect(self) -> _Connection:
        if self._closed:
            raise RuntimeError("the guard's connection pool is closed")
        loop = asyncio.get_running_loop()
        _, connection = await loop.create_connection(
            lambda: _Connection(self._cap),
            self._host,
            self._port,
            ssl=self._tls,
            server_hostname=self._host if self._tls is not None else None,
        )
        return connection

    def _request_bytes(self, method: str, path: str, body: bytes | None, headers: Mapping[str, str]) -> bytes:
        lines = [f"{method} {self._prefix}{path} HTTP/1.1\r\n", self._fixed]
        for name, value in headers.items():
            if "\r" in value or "\n" in value or "\r" in name or "\n" in name or ":" in name:
                raise HeaderError(f"the {name!r} header would carry a line break")
            if self._has_auth and name.lower() == "authorization":
                raise HeaderError("an Authorization header and credentials in the guard URL at once")
            lines.append(f"{name}: {value}\r\n")
        if body is not None:
            lines.append(f"Content-Length: {len(body)}\r\n")
        lines.append("\r\n")
        try:
            head = "".join(lines).encode("latin-1")
        except UnicodeEncodeError:
            raise HeaderError("a header would carry a character outside Latin-1") from None
        return head + body if body is not None else head
