"""The fault proxy itself, against a tiny local echo server: each mode does what the fault tests rely on."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from tests.faultproxy import FaultProxy

READ_TIMEOUT_S = 2.0


@dataclass
class Echo:
    """A local echo server that counts what it received."""

    port: int
    received: int = 0


@pytest.fixture
async def echo() -> AsyncIterator[Echo]:
    server_state = Echo(port=0)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while chunk := await reader.read(65536):
                server_state.received += len(chunk)
                writer.write(chunk)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    server_state.port = int(server.sockets[0].getsockname()[1])
    async with server:
        yield server_state


async def connect(proxy: FaultProxy) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.wait_for(asyncio.open_connection("127.0.0.1", proxy.port), READ_TIMEOUT_S)


async def round_trip(proxy: FaultProxy, payload: bytes = b"ping") -> bytes:
    """Connect, send ``payload``, read it back, close."""
    reader, writer = await connect(proxy)
    try:
        writer.write(payload)
        await writer.drain()
        return await asyncio.wait_for(reader.readexactly(len(payload)), READ_TIMEOUT_S)
    finally:
        writer.close()


async def is_cut(reader: asyncio.StreamReader) -> bool:
    """True when the connection ends (EOF or RST) within the read timeout."""
    try:
        return await asyncio.wait_for(reader.read(1), READ_TIMEOUT_S) == b""
    except ConnectionResetError:
        return True


async def test_pass_forwards_both_ways(echo: Echo) -> None:
    async with FaultProxy(echo.port) as proxy:
        payload = bytes(range(256)) * 1000  # several chunks
        assert await round_trip(proxy, payload) == payload
        assert proxy.mode == "pass"
        assert proxy.stats.accepted == 1


async def test_latency_delays_each_direction(echo: Echo) -> None:
    async with FaultProxy(echo.port) as proxy:
        await proxy.set_mode("latency", latency_ms=200)
        started = time.monotonic()
        assert await round_trip(proxy) == b"ping"
        elapsed = time.monotonic() - started
        await proxy.set_mode("pass")
        started = time.monotonic()
        assert await round_trip(proxy) == b"ping"
        fast = time.monotonic() - started
    assert 0.4 <= elapsed < 2.0, elapsed  # 200 ms on the way in, 200 ms on the way back
    assert fast < 0.4, fast  # without the delays, faster than their sum even on a loaded machine


async def test_reset_cuts_live_and_new_connections(echo: Echo) -> None:
    async with FaultProxy(echo.port) as proxy:
        reader, writer = await connect(proxy)
        writer.write(b"x")
        assert await asyncio.wait_for(reader.readexactly(1), READ_TIMEOUT_S) == b"x"
        assert proxy.open_connections == 1
        await proxy.set_mode("reset")
        assert await is_cut(reader)
        writer.close()
        new_reader, new_writer = await connect(proxy)  # accepted, then reset at once
        assert await is_cut(new_reader)
        new_writer.close()
        assert proxy.stats.reset == 2
        assert proxy.open_connections == 0
        await proxy.set_mode("pass")
        assert await round_trip(proxy) == b"ping"


async def test_blackhole_reads_but_forwards_nothing_and_resets_on_restore(echo: Echo) -> None:
    async with FaultProxy(echo.port) as proxy:
        live_reader, live_writer = await connect(proxy)
        live_writer.write(b"a")
        assert await asyncio.wait_for(live_reader.readexactly(1), READ_TIMEOUT_S) == b"a"
        await proxy.set_mode("blackhole")
        before = echo.received
        live_writer.write(b"lost")
        new_reader, new_writer = await connect(proxy)  # accepted, never connected upstream
        new_writer.write(b"also lost")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(live_reader.read(1), 0.5)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(new_reader.read(1), 0.1)
        assert echo.received == before
        assert proxy.stats.blackholed_bytes == len(b"lost") + len(b"also lost")
        await proxy.set_mode("pass")
        # Both streams lost bytes, so they are cut rather than resumed with a hole in them.
        assert await is_cut(live_reader)
        assert await is_cut(new_reader)
        live_writer.close()
        new_writer.close()
        assert await round_trip(proxy) == b"ping"


async def test_refuse_closes_the_port_then_listens_again(echo: Echo) -> None:
    async with FaultProxy(echo.port) as proxy:
        live_reader, live_writer = await connect(proxy)
        port = proxy.port
        await proxy.set_mode("refuse")
        with pytest.raises(ConnectionRefusedError):
            await connect(proxy)
        # A live connection is left alone: refuse is about new connections only.
        live_writer.write(b"still")
        assert await asyncio.wait_for(live_reader.readexactly(5), READ_TIMEOUT_S) == b"still"
        live_writer.close()
        await proxy.set_mode("pass")
        assert proxy.port == port
        assert await round_trip(proxy) == b"ping"


async def test_exit_closes_connections_and_leaves_no_task(echo: Echo) -> None:
    async with FaultProxy(echo.port) as proxy:
        reader, writer = await connect(proxy)
        writer.write(b"x")
        assert await asyncio.wait_for(reader.readexactly(1), READ_TIMEOUT_S) == b"x"
        await proxy.set_mode("latency", latency_ms=50)
    assert await is_cut(reader)
    writer.close()
    left = [task for task in asyncio.all_tasks() if task.get_name().startswith("proxy-")]
    assert left == []
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", proxy.port)


async def test_upstream_down_cuts_the_client() -> None:
    async with FaultProxy(1) as proxy:  # nothing listens on port 1 of 127.0.0.1
        reader, writer = await connect(proxy)
        assert await is_cut(reader)
        writer.close()
        assert proxy.open_connections == 0


async def test_unknown_mode_is_rejected(echo: Echo) -> None:
    async with FaultProxy(echo.port) as proxy:
        with pytest.raises(ValueError, match="unknown proxy mode"):
            await proxy.set_mode("slow")  # type: ignore[arg-type]
