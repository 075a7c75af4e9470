"""The guard's reply is read up to a cap whatever its headers say: an uncompressed reply of a declared
length is read in one go, a compressed one (whose declared length says nothing of what it inflates to) in
chunks against the cap."""

from __future__ import annotations

import gzip
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from worker.guard.http import _read_capped

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
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def test_a_compressed_reply_is_cut_at_the_cap_however_small_its_declared_length(server: str) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(server + "/bomb") as resp:
            assert resp.content_length is not None and resp.content_length < CAP
            body, whole = await _read_capped(resp, CAP)
        assert (len(body), whole) == (CAP, False)
        async with session.get(server + "/small") as resp:
            assert await _read_capped(resp, CAP) == (b'{"ok": true}', True)
