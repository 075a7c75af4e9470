"""A small asyncio TCP proxy for fault tests: 127.0.0.1:<port> → an upstream on 127.0.0.1, with modes
that can be switched while it runs.

- ``pass``: bytes flow both ways unchanged.
- ``latency``: every chunk is held ``latency_ms`` before it is forwarded, in each direction.
- ``reset``: every live connection is closed with a TCP RST; new ones are accepted and reset at once.
- ``blackhole``: connections are accepted and read, but nothing is forwarded (no upstream is opened for
  new ones). A stream that lost bytes this way is broken for good, so leaving ``blackhole`` resets it:
  the client sees what a real partition ends in (a dead connection), never a stream with a hole in it.
- ``refuse``: the listening socket is closed, so new connections are refused; live ones are left alone.

Only 127.0.0.1 is ever listened on or connected to. Every connection is tracked and owned: leaving the
``async with`` block closes them all and leaves no task behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal

Mode = Literal["pass", "latency", "reset", "blackhole", "refuse"]
MODES: tuple[Mode, ...] = ("pass", "latency", "reset", "blackhole", "refuse")

HOST = "127.0.0.1"
CHUNK_BYTES = 64 * 1024
QUEUE_CHUNKS = 64  # per direction: a slow side pushes back on the other instead of growing memory
CONNECT_TIMEOUT_S = 5.0
REBIND_TIMEOUT_S = 5.0
_LINGER_RST = struct.pack("ii", 1, 0)  # SO_LINGER on with a zero timeout: close() sends RST

_Queue = asyncio.Queue[tuple[float, bytes]]  # (monotonic time the chunk is due, chunk)


@dataclass
class ProxyStats:
    """Counters a test can assert on."""

    accepted: int = 0
    reset: int = 0  # connections closed with RST by the proxy (live ones and new ones)
    blackholed_bytes: int = 0
    forwarded_bytes: int = 0


@dataclass(eq=False)
class _Link:
    """One client connection and, once connected, its upstream connection."""

    reader: asyncio.StreamReader
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    tainted: bool = False  # bytes were dropped by the blackhole: the stream cannot be resumed
    task: asyncio.Task[None] | None = field(default=None, repr=False)

    def abort(self) -> None:
        """Close both sides at once with RST."""
        for writer in (self.client, self.upstream):
            if writer is None:
                continue
            sock = writer.get_extra_info("socket")
            with contextlib.suppress(OSError, AttributeError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
            writer.transport.abort()


class FaultProxy:
    """TCP proxy from 127.0.0.1:``port`` to 127.0.0.1:``upstream_port``; an async context manager.

    ``listen_port`` 0 picks a free port (read it from ``port`` after entering).
    """

    def __init__(self, upstream_port: int, *, listen_port: int = 0) -> None:
        self.upstream_port = upstream_port
        self._port = listen_port
        self._mode: Mode = "pass"
        self._latency_s = 0.0
        self._links: set[_Link] = set()
        self._listener: socket.socket | None = None
        self._acceptor: asyncio.Task[None] | None = None
        self.stats = ProxyStats()

    @property
    def port(self) -> int:
        """The port clients connect to."""
        return self._port

    @property
    def address(self) -> str:
        """``127.0.0.1:<port>``, for a bootstrap list."""
        return f"{HOST}:{self._port}"

    @property
    def mode(self) -> Mode:
        return self._mode

    @property
    def open_connections(self) -> int:
        """Client connections the proxy holds right now."""
        return len(self._links)

    async def __aenter__(self) -> FaultProxy:
        self._listen()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._stop_listening()
        await self._abort_links(list(self._links), count=False)

    async def set_mode(self, mode: Mode, *, latency_ms: float = 0.0) -> None:
        """Switch mode; takes effect for live connections and new ones alike."""
        if mode not in MODES:
            raise ValueError(f"unknown proxy mode {mode!r}")
        previous, self._mode = self._mode, mode
        self._latency_s = latency_ms / 1000.0 if mode == "latency" else 0.0
        if mode == "reset":
            await self._abort_links(list(self._links))
        if previous == "blackhole" and mode != "blackhole":
            await self._abort_links([link for link in self._links if link.tainted])
        if mode == "refuse":
            await self._stop_listening()
        elif self._listener is None:
            await self._relisten()

    # -- listening --------------------------------------------------------------------------------

    def _listen(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind((HOST, self._port))
        except OSError:
            listener.close()
            raise
        listener.listen(128)
        listener.setblocking(False)
        self._port = int(listener.getsockname()[1])
        self._listener = listener
        self._acceptor = asyncio.create_task(self._accept_loop(listener), name=f"proxy-accept:{self._port}")

    async def _relisten(self) -> None:
        """Listen on the same port again; bounded, in case the port is briefly taken."""
        deadline = time.monotonic() + REBIND_TIMEOUT_S
        while True:
            try:
                self._listen()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)

    async def _stop_listening(self) -> None:
        listener, acceptor = self._listener, self._acceptor
        self._listener = self._acceptor = None
        if acceptor is not None:
            acceptor.cancel()
            await asyncio.gather(acceptor, return_exceptions=True)
        if listener is not None:
            listener.close()

    async def _accept_loop(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            sock, _ = await loop.sock_accept(listener)
            self.stats.accepted += 1
            try:
                reader, writer = await asyncio.open_connection(sock=sock, limit=CHUNK_BYTES)
            except OSError:
                sock.close()  # the client gave up between accept and set-up
                continue
            link = _Link(reader=reader, client=writer)
            if self._mode == "reset":
                self.stats.reset += 1
                link.abort()
                continue
            self._links.add(link)
            link.task = asyncio.create_task(self._serve(link), name=f"proxy-link:{self._port}")

    # -- one connection ---------------------------------------------------------------------------

    async def _serve(self, link: _Link) -> None:
        try:
            if self._mode == "blackhole":
                link.tainted = True
                await self._read_into(link.reader, None, link)
                return
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(HOST, self.upstream_port, limit=CHUNK_BYTES), CONNECT_TIMEOUT_S
            )
            link.upstream = up_writer
            await self._forward(link, up_reader, up_writer)
        except (OSError, TimeoutError):
            pass  # the upstream is down or a side hung up: the client sees its connection cut, as it would
        finally:
            self._links.discard(link)
            link.abort()

    async def _forward(
        self, link: _Link, up_reader: asyncio.StreamReader, up_writer: asyncio.StreamWriter
    ) -> None:
        """Both directions, each a reader and a writer joined by a bounded queue, until both ended.
        One task group, so a failure anywhere cuts the whole connection instead of stalling half of it."""
        inbound: _Queue = asyncio.Queue(QUEUE_CHUNKS)
        outbound: _Queue = asyncio.Queue(QUEUE_CHUNKS)
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._read_into(link.reader, inbound, link))
                group.create_task(self._write_from(inbound, up_writer))
                group.create_task(self._read_into(up_reader, outbound, link))
                group.create_task(self._write_from(outbound, link.client))
        except* OSError:
            pass

    async def _read_into(self, source: asyncio.StreamReader, queue: _Queue | None, link: _Link) -> None:
        """Read one direction; queue each chunk due ``latency`` from now, or drop it in the blackhole."""
        while chunk := await source.read(CHUNK_BYTES):
            if self._mode == "blackhole" or queue is None:
                link.tainted = True
                self.stats.blackholed_bytes += len(chunk)
                continue
            await queue.put((time.monotonic() + self._latency_s, chunk))
        if queue is not None:
            await queue.put((0.0, b""))  # end of stream: forward the half-close after the data

    async def _write_from(self, queue: _Queue, sink: asyncio.StreamWriter) -> None:
        """Write one direction's chunks when they are due; an empty chunk is the end of the stream."""
        while True:
            due, chunk = await queue.get()
            if not chunk:
                if sink.can_write_eof():
                    sink.write_eof()
                return
            wait_s = due - time.monotonic()
            if wait_s > 0:
                await asyncio.sleep(wait_s)
            sink.write(chunk)
            self.stats.forwarded_bytes += len(chunk)
            await sink.drain()

    async def _abort_links(self, links: list[_Link], *, count: bool = True) -> None:
        """RST the given connections and wait for their tasks to end."""
        for link in links:
            if count:
                self.stats.reset += 1
            self._links.discard(link)
            link.abort()
        tasks = [link.task for link in links if link.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
