"""Keep-alive HTTP/1.1 for guard calls: a bounded pool of connections, one exchange at a time on each,
the reply read inside the connection's own callback, so a call costs one await.

Why not aiohttp's client here: measured against the simulated guard on one core, its request machinery
cost 240-280 µs of client CPU per call, this transport 110-125 µs; on the instant guard that was a third of the
worker's CPU per message. What a guard call needs is small and fixed: a POST or a GET with a bytes body,
a reply read up to a cap, no redirect followed, no cookie, no proxy, one timeout for the whole exchange
and one for the connect.

What the reader accepts (``ReplyReader``): HTTP/1.1 and 1.0 replies, bodies framed by Content-Length,
chunked (extensions and trailers skipped) or running until the connection closes, gzip or deflate
content encoding (inflated against the cap, so a small compressed reply cannot grow past it), 1xx
interim replies skipped. Anything else (a malformed head or framing, a head over ``MAX_HEAD_BYTES``, an
unknown encoding) is a ``ReplyError``; a connection that closes before its reply is whole is a
``ConnectionResetError``. A connection is reused only after a whole, cleanly framed HTTP/1.1 reply that
did not ask to close, and only while it has been idle less than ``IDLE_REUSE_S``.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
import time
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Final, cast
from urllib.parse import quote, unquote, urlsplit

MAX_HEAD_BYTES: Final = 64 * 1024  # status line and headers (and trailers) of one reply
# uvicorn, which serves vLLM and SGLang, closes a connection idle for 5 s; one idle longer than this is not
# reused, so a call is not written onto a connection the server is closing at that very moment.
IDLE_REUSE_S: Final = 4.0
USER_AGENT: Final = "guardq"
_HEX_DIGITS: Final = b"0123456789abcdefABCDEF"


class ReplyError(Exception):
    """The guard's bytes are not an HTTP reply guardq can read."""


class HeaderError(ValueError):
    """A header guardq was asked to send is not valid HTTP (a line break, a non-Latin-1 character)."""


class ReplyHeaders(Mapping[str, str]):
    """A reply's headers, looked up by name in any case; a repeated header's values joined by ", "."""

    __slots__ = ("_fields",)

    def __init__(self, fields: dict[str, str]) -> None:
        self._fields = fields  # names lower-cased

    def __getitem__(self, name: str) -> str:
        return self._fields[name.lower()]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._fields

    def __iter__(self) -> Iterator[str]:
        return iter(self._fields)

    def __len__(self) -> int:
        return len(self._fields)


@dataclass(frozen=True, slots=True)
class Reply:
    """One reply: its status, headers, body (at most the cap) and whether the body is whole."""

    status: int
    headers: ReplyHeaders
    body: bytes
    whole: bool


class _Framing(Enum):
    NONE = "none"
    LENGTH = "length"
    CHUNKED = "chunked"
    UNTIL_CLOSE = "until-close"


def _parse_head(head: bytes) -> tuple[int, bool, ReplyHeaders]:
    """(status, whether HTTP/1.1, headers) of a reply head (without its blank line)."""
    status_line, *lines = head.split(b"\r\n")
    version, _, rest = status_line.partition(b" ")
    code = rest[:3]
    if version not in (b"HTTP/1.1", b"HTTP/1.0") or not (code.isdigit() and len(code) == 3):
        raise ReplyError(f"not an HTTP/1.x status line: {status_line[:60]!r}")
    if len(rest) > 3 and rest[3:4] != b" ":
        raise ReplyError(f"not an HTTP/1.x status line: {status_line[:60]!r}")
    fields: dict[str, str] = {}
    for line in lines:
        name, colon, value = line.partition(b":")
        if not colon or not name or name.strip(b" \t") != name:
            raise ReplyError(f"malformed header line: {line[:60]!r}")
        key = name.decode("latin-1").lower()
        text = value.strip(b" \t").decode("latin-1")
        fields[key] = f"{fields[key]}, {text}" if key in fields else text
    return int(code), version == b"HTTP/1.1", ReplyHeaders(fields)


def _content_length(value: str) -> int:
    """A Content-Length (a list of one repeated value is accepted, as RFC 9110 allows)."""
    values = {part.strip() for part in value.split(",")}
    if len(values) != 1:
        raise ReplyError(f"conflicting Content-Length: {value[:60]!r}")
    (digits,) = values
    if not digits.isdigit() or not digits.isascii():
        raise ReplyError(f"malformed Content-Length: {value[:60]!r}")
    return int(digits)


def _decoder(encoding: str) -> zlib._Decompress | None:
    coding = encoding.strip().lower()
    if coding in {"", "identity"}:
        return None
    if coding in {"gzip", "x-gzip", "deflate"}:
        return zlib.decompressobj(zlib.MAX_WBITS | 32)  # a gzip or zlib header, told apart by itself
    raise ReplyError(f"unsupported Content-Encoding: {encoding[:40]!r}")


class ReplyReader:
    """Reads one reply from the bytes fed to it, keeping at most ``cap`` bytes of its (inflated) body."""

    def __init__(self, cap: int) -> None:
        self._cap = cap
        self._buffer = bytearray()
        self._status = 0
        self._headers = ReplyHeaders({})
        self._framing: _Framing | None = None  # None while the head is being read
        self._remaining = 0  # LENGTH: body bytes to come; CHUNKED: bytes of the current chunk to come
        self._chunk_state = "size"  # CHUNKED: size, data, data-end, trailer
        self._decoder: zlib._Decompress | None = None
        self._body = bytearray()
        self._whole = True
        self.reusable = False  # known once the reply is done

    def feed(self, data: bytes) -> Reply | None:
        """Take more bytes; the reply once it is done (whole, or cut at the cap), else None."""
        self._buffer += data
        if self._framing is None and not self._read_head():
            return None
        return self._read_body()

    def end(self) -> Reply:
        """The connection closed: the reply, when its body runs until the close; else ConnectionResetError."""
        if self._framing is _Framing.UNTIL_CLOSE:
            self._finish()
            return self._reply()
        if self._framing is None and not self._buffer:
            raise ConnectionResetError("the guard closed the connection without replying")
        raise ConnectionResetError("the guard closed the connection before its reply was whole")

    # -- head ---------------------------------------------------------------------------------------

    def _read_head(self) -> bool:
        """Read the head (skipping 1xx interim replies); False while it is incomplete."""
        while True:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > MAX_HEAD_BYTES:
                    raise ReplyError(f"reply head longer than {MAX_HEAD_BYTES} bytes")
                return False
            if end > MAX_HEAD_BYTES:
                raise ReplyError(f"reply head longer than {MAX_HEAD_BYTES} bytes")
            status, http11, headers = _parse_head(bytes(self._buffer[:end]))
            del self._buffer[: end + 4]
            if status == 101:
                raise ReplyError("the guard switched protocols")
            if 100 <= status < 200:
                continue  # an interim reply (100 Continue, 103 Early Hints): the real one follows
            self._start_body(status, http11, headers)
            return True

    def _start_body(self, status: int, http11: bool, headers: ReplyHeaders) -> None:
        self._status, self._headers = status, headers
        keep_alive = http11 and "close" not in headers.get("connection", "").lower()
        coding = headers.get("transfer-encoding")
        length = headers.get("content-length")
        if status in {204, 304}:
            self._framing = _Framing.NONE
        elif coding is not None:
            chunked = coding.rsplit(",", 1)[-1].strip().lower() == "chunked"
            self._framing = _Framing.CHUNKED if chunked else _Framing.UNTIL_CLOSE
            keep_alive = keep_alive and chunked and length is None
        elif length is not None:
            self._framing = _Framing.LENGTH
            self._remaining = _content_length(length)
            if self._remaining > self._cap:  # declared too large: not read at all
                self._framing = _Framing.NONE
                self._whole = keep_alive = False
        else:
            self._framing = _Framing.UNTIL_CLOSE
        self.reusable = keep_alive and self._framing is not _Framing.UNTIL_CLOSE
        if self._framing is not _Framing.NONE:
            self._decoder = _decoder(headers.get("content-encoding", ""))

    # -- body ---------------------------------------------------------------------------------------

    def _read_body(self) -> Reply | None:
        framing = self._framing
        if framing is _Framing.LENGTH:
            taken = self._buffer[: self._remaining]
            del self._buffer[: self._remaining]
            self._remaining -= len(taken)
            self._keep(taken)
            done = self._remaining == 0
        elif framing is _Framing.CHUNKED:
            done = self._read_chunks()
        elif framing is _Framing.UNTIL_CLOSE:
            self._keep(self._buffer)
            self._buffer = bytearray()
            done = False
        else:
            done = True
        if not self._whole:  # cut at the cap: the rest is never read
            self.reusable = False
            return self._reply()
        if not done:
            return None
        self._finish()
        if self._buffer:  # more than the reply framed: the stream cannot be trusted for another
            self.reusable = False
        return self._reply()

    def _read_chunks(self) -> bool:
        """Consume chunked framing from the buffer; True once the last chunk and its trailers are read."""
        buffer = self._buffer
        while self._whole:
            if self._chunk_state == "data":
                taken = buffer[: self._remaining]
                del buffer[: self._remaining]
                self._remaining -= len(taken)
                self._keep(taken)
                if self._remaining:
                    return False
                self._chunk_state = "data-end"
                continue
            end = buffer.find(b"\r\n")
            if end < 0:
                if len(buffer) > MAX_HEAD_BYTES:
                    raise ReplyError("chunk framing line too long")
                return False
            line = bytes(buffer[:end])
            del buffer[: end + 2]
            if self._chunk_state == "data-end":
                if line:
                    raise ReplyError("chunk data longer than its declared size")
                self._chunk_state = "size"
            elif self._chunk_state == "size":
                size = line.split(b";", 1)[0].strip(b" \t")
                if not size or size.strip(_HEX_DIGITS) or len(size) > 16:
                    raise ReplyError(f"malformed chunk size: {line[:40]!r}")
                self._remaining = int(size, 16)
                self._chunk_state = "data" if self._remaining else "trailer"
            elif not line:  # the blank line after the trailers: the reply is done
                return True
        return False

    def _keep(self, raw: bytes | bytearray) -> None:
        """Add body bytes (inflated when encoded), up to the cap; past it, the reply is not whole."""
        if not raw:
            return
        room = self._cap - len(self._body)
        if self._decoder is not None:
            try:
                raw = self._decoder.decompress(raw, room + 1)
            except zlib.error as exc:
                raise ReplyError(f"the reply's compressed body is corrupt: {exc}") from None
            if self._decoder.unconsumed_tail:
                self._whole = False
        if len(raw) > room:
            raw = raw[:room]
            self._whole = False
        self._body += raw

    def _finish(self) -> None:
        if self._decoder is not None and self._whole:
            try:
                self._keep(self._decoder.flush())
            except zlib.error as exc:
                raise ReplyError(f"the reply's compressed body is corrupt: {exc}") from None

    def _reply(self) -> Reply:
        return Reply(self._status, self._headers, bytes(self._body), self._whole)


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
