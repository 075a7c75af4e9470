"""The guard's reply is read up to a cap whatever its headers say, over a real socket from an aiohttp
server: a compressed reply (whose declared length says nothing of what it inflates to) is inflated only
up to the cap, and the connection it came on is not reused."""

from __future__ import annotations

import gzip
import ssl
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from worker.guard.transport import KeepAlivePool

CAP = 1024 * 1024


@pytest.fixture
async def server() -> AsyncIterator[str]:
    async def small(request: web.Request) -> web.Response:
        return web.Response(body=b'{"ok": true}', content_type="application/json")

    async def bomb(request: web.Request) -> web.Response:
        body = gzip.compress(b"a" * (8 * CAP))  # about 8 KB on the wire, 8 MiB inflated
        return web.Response(body=body, headers={"Content-Encoding": "gzip"}, content_type="application/json")

    app = web.Application()
    app.router.add_get("/small", small)
    app.router.add_get("/bomb", bomb)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


async def test_a_compressed_reply_is_cut_at_the_cap_however_small_its_declared_length(server: str) -> None:
    pool = KeepAlivePool(
        server,
        limit=2,
        timeout_s=10,
        connect_timeout_s=10,
        ssl_context=ssl.create_default_context(),
        max_reply_bytes=CAP,
    )
    try:
        reply = await pool.request("GET", "/bomb", None, {})
        assert int(reply.headers["Content-Length"]) < CAP
        assert (len(reply.body), reply.whole) == (CAP, False)
        small = await pool.request("GET", "/small", None, {})
        assert (small.body, small.whole) == (b'{"ok": true}', True)
    finally:
        await pool.close()
