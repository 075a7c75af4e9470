"""The guard's keep-alive transport reads every framing a real server or proxy may send (Content-Length,
chunked with extensions and trailers, until the close, gzip and deflate, interim 1xx), however the bytes
are split; refuses what is not HTTP; cuts bodies at the cap; and reuses a connection only when the reply
left it clean."""

from __future__ import annotations

import asyncio
import gzip
import ssl
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from worker.guard import transport
from worker.guard.reply import MAX_HEAD_BYTES, Reply, ReplyError, ReplyReader
from worker.guard.transport import HeaderError, KeepAlivePool

CAP = 1024
OK = b"HTTP/1.1 200 OK\r\n"


def read(data: bytes, *, split: bool = False, cap: int = CAP, closed: bool = False) -> Reply:
    """The reply ``data`` holds, fed whole or byte by byte; ``closed``: the connection closes after it."""
    reader = ReplyReader(cap)
    reply = None
    for piece in [data[i : i + 1] for i in range(len(data))] if split else [data]:
        reply = reader.feed(piece)
        if reply is not None:
            break
    if reply is None and closed:
        reply = reader.end()
    assert reply is not None
    return reply


def chunked(*pieces: bytes, trailer: bytes = b"") -> bytes:
    body = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(piece), piece) for piece in pieces)
    return body + b"0\r\n" + trailer + b"\r\n"


FRAMINGS = {
    "content-length": OK + b"Content-Length: 11\r\n\r\n" + b'{"ok":true}',
    "chunked": OK
    + b"Transfer-Encoding: chunked\r\n\r\n"
    + chunked(b'{"ok"', b":true}", trailer=b"X-T: 1\r\n"),
    "gzip": OK
    + b"Content-Encoding: gzip\r\nContent-Length: %d\r\n\r\n%s"
    % (len(gzip.compress(b'{"ok":true}')), gzip.compress(b'{"ok":true}')),
    "deflate, chunked": OK
    + b"Content-Encoding: deflate\r\nTransfer-Encoding: chunked\r\n\r\n"
    + chunked(zlib.compress(b'{"ok":true}')),
    "after a 100 Continue": b"HTTP/1.1 100 Continue\r\n\r\n" + OK + b'Content-Length: 11\r\n\r\n{"ok":true}',
    "HTTP/1.0": b"HTTP/1.0 200 OK\r\nContent-Length: 11\r\n\r\n" + b'{"ok":true}',
}


@pytest.mark.parametrize("split", [False, True], ids=["whole", "byte-by-byte"])
@pytest.mark.parametrize("name", list(FRAMINGS))
def test_every_framing_reads_the_same_body_however_the_bytes_arrive(name: str, split: bool) -> None:
    reply = read(FRAMINGS[name], split=split)
    assert (reply.status, reply.body, reply.whole) == (200, b'{"ok":true}', True)


def test_a_body_running_until_the_close_is_whole_only_at_the_close() -> None:
    reader = ReplyReader(CAP)
    assert reader.feed(OK + b'Content-Type: application/json\r\n\r\n{"ok"') is None
    assert reader.feed(b":true}") is None
    assert reader.end() == Reply(200, reader.end().headers, b'{"ok":true}', True)
    assert not reader.reusable


def test_headers_are_found_in_any_case_and_repeated_ones_joined() -> None:
    reply = read(OK + b"retry-after: 3\r\nX-A: 1\r\nx-a: 2\r\nContent-Length: 0\r\n\r\n")
    assert reply.headers.get("Retry-After") == "3" and reply.headers["X-A"] == "1, 2"
    assert "RETRY-AFTER" in reply.headers and "Location" not in reply.headers


def test_no_content_has_no_body_even_when_bytes_follow() -> None:
    reader = ReplyReader(CAP)
    reply = reader.feed(b"HTTP/1.1 204 No Content\r\n\r\nstray")
    assert reply is not None and (reply.status, reply.body) == (204, b"")
    assert not reader.reusable  # bytes past the reply: the stream is not trusted again


@pytest.mark.parametrize(
    ("reply", "reusable"),
    [
        (OK + b"Content-Length: 2\r\n\r\nok", True),
        (OK + b"Transfer-Encoding: chunked\r\n\r\n" + chunked(b"ok"), True),
        (OK + b"Connection: close\r\nContent-Length: 2\r\n\r\nok", False),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", False),
        (OK + b"Content-Length: 2\r\n\r\nokEXTRA", False),
        (OK + b"Transfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n" + chunked(b"ok"), False),
    ],
    ids=["length", "chunked", "connection-close", "http-1.0", "extra-bytes", "chunked-and-length"],
)
def test_a_connection_is_reused_only_after_a_clean_keep_alive_reply(reply: bytes, reusable: bool) -> None:
    reader = ReplyReader(CAP)
    assert reader.feed(reply) is not None
    assert reader.reusable is reusable


@pytest.mark.parametrize(
    "data",
    [
        b"SSH-2.0-OpenSSH_9.6\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"HTTP/1.1 200OK\r\n\r\n",
        OK + b"no colon here\r\n\r\n",
        OK + b" X-Folded: 1\r\n\r\n",
        OK + b"Content-Length: 2, 3\r\n\r\nok",
        OK + b"Content-Length: -2\r\n\r\nok",
        OK + b"Transfer-Encoding: chunked\r\n\r\n0x2\r\nok\r\n0\r\n\r\n",
        OK + b"Transfer-Encoding: chunked\r\n\r\n1_0\r\n",
        OK + b"Transfer-Encoding: chunked\r\n\r\n1\r\nok\r\n0\r\n\r\n",
        OK + b"Content-Encoding: br\r\nContent-Length: 2\r\n\r\nok",
        OK + b"Content-Encoding: gzip\r\nContent-Length: 8\r\n\r\nnot gzip",
        b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
        OK + b"X-Flood: " + b"a" * (MAX_HEAD_BYTES + 1),
    ],
    ids=[
        "not-http",
        "four-digit-status",
        "status-without-space",
        "header-without-colon",
        "folded-header",
        "conflicting-lengths",
        "negative-length",
        "hex-prefix-chunk-size",
        "underscore-chunk-size",
        "chunk-longer-than-declared",
        "unknown-encoding",
        "corrupt-gzip",
        "switching-protocols",
        "head-flood",
    ],
)
def test_what_is_not_a_readable_http_reply_is_a_reply_error(data: bytes) -> None:
    with pytest.raises(ReplyError):
        read(data)


@pytest.mark.parametrize(
    "data",
    [
        OK + b"Content-Length: 5000\r\n\r\n",
        OK + b"Transfer-Encoding: chunked\r\n\r\n" + chunked(b"a" * 700, b"b" * 700),
        OK + b"Content-Encoding: gzip\r\nContent-Length: 60\r\n\r\n" + gzip.compress(b"a" * 100 * CAP),
        OK + b"\r\n" + b"a" * 3000,
    ],
    ids=["declared-too-long", "chunked-past-the-cap", "gzip-bomb", "until-close-past-the-cap"],
)
def test_a_body_past_the_cap_is_cut_there_and_not_whole(data: bytes) -> None:
    reader = ReplyReader(CAP)
    reply = reader.feed(data)
    assert reply is not None and not reply.whole and len(reply.body) <= CAP
    assert not reader.reusable


def test_a_connection_closed_before_the_reply_is_whole_is_a_reset() -> None:
    empty = ReplyReader(CAP)
    with pytest.raises(ConnectionResetError, match="without replying"):
        empty.end()
    partial = ReplyReader(CAP)
    assert partial.feed(OK + b"Content-Length: 10\r\n\r\nabc") is None
    with pytest.raises(ConnectionResetError, match="before its reply was whole"):
        partial.end()


# -- the pool, against a scripted server on 127.0.0.1 ------------------------------------------------


@dataclass
class Scripted:
    """A server that answers each request (across connections, in order) with the next scripted reply;
    a reply of ``None`` closes the connection without answering, ``b"stall"`` never answers."""

    replies: list[bytes | None]
    url: str = ""
    requests: list[bytes] = field(default_factory=list)
    connections: int = 0
    open_now: int = 0
    most_open: int = 0
    delay_s: float = 0.0


async def _serve(script: Scripted, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    script.connections += 1
    script.open_now += 1
    script.most_open = max(script.most_open, script.open_now)
    try:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            script.requests.append(head + await reader.readexactly(length))
            reply = script.replies.pop(0)
            if reply is None:
                return
            if reply == b"stall":
                await asyncio.sleep(30)
                return
            if script.delay_s:
                await asyncio.sleep(script.delay_s)
            writer.write(reply)
            await writer.drain()
            if b"Connection: close" in reply:
                return
    finally:
        script.open_now -= 1
        writer.close()


@pytest.fixture
async def scripted() -> AsyncIterator[Scripted]:
    script = Scripted(replies=[])
    server = await asyncio.start_server(lambda r, w: _serve(script, r, w), "127.0.0.1", 0)
    script.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1"
    async with server:
        yield script
        server.close()


def pool_for(url: str, *, limit: int = 4, timeout_s: float = 5.0) -> KeepAlivePool:
    return KeepAlivePool(
        url,
        limit=limit,
        timeout_s=timeout_s,
        connect_timeout_s=timeout_s,
        ssl_context=ssl.create_default_context(),
        max_reply_bytes=CAP,
    )


ANSWER = OK + b"Content-Length: 2\r\n\r\nok"


async def test_calls_share_one_kept_alive_connection_and_send_a_framed_request(scripted: Scripted) -> None:
    scripted.replies = [ANSWER] * 3
    pool = pool_for(scripted.url)
    try:
        for _ in range(3):
            reply = await pool.request("POST", "/chat/completions", b"{}", {"traceparent": "00-ab-cd-01"})
            assert (reply.status, reply.body) == (200, b"ok")
    finally:
        await pool.close()
    assert scripted.connections == 1
    port = scripted.url.split(":")[2].split("/")[0]
    first = scripted.requests[0]
    assert first.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
    assert f"Host: 127.0.0.1:{port}\r\n".encode() in first and b"Content-Length: 2\r\n" in first
    assert b"traceparent: 00-ab-cd-01\r\n" in first and first.endswith(b"\r\n\r\n{}")


async def test_a_connection_is_not_reused_after_close_or_a_long_idle(
    scripted: Scripted, monkeypatch: pytest.MonkeyPatch
) -> None:
    closing = OK + b"Connection: close\r\nContent-Length: 2\r\n\r\nok"
    scripted.replies = [closing, ANSWER, ANSWER, ANSWER]
    pool = pool_for(scripted.url)
    try:
        for _ in range(2):
            assert (await pool.request("GET", "/models", None, {})).body == b"ok"
        assert scripted.connections == 2
        monkeypatch.setattr(transport, "IDLE_REUSE_S", 0.0)
        for _ in range(2):
            assert (await pool.request("GET", "/models", None, {})).body == b"ok"
        assert scripted.connections == 4
    finally:
        await pool.close()


async def test_a_reply_running_until_the_close_is_read_whole(scripted: Scripted) -> None:
    scripted.replies = [OK + b"Connection: close\r\n\r\n" + b'{"ok":true}', ANSWER]
    pool = pool_for(scripted.url)
    try:
        reply = await pool.request("GET", "/models", None, {})
        assert (reply.body, reply.whole) == (b'{"ok":true}', True)
        assert (await pool.request("GET", "/models", None, {})).body == b"ok"
    finally:
        await pool.close()
    assert scripted.connections == 2


async def test_a_server_that_drops_the_call_is_a_connection_error_and_the_next_call_reconnects(
    scripted: Scripted,
) -> None:
    scripted.replies = [None, OK + b"Content-Length: 10\r\nConnection: close\r\n\r\nabc", ANSWER]
    pool = pool_for(scripted.url)
    try:
        with pytest.raises(ConnectionResetError, match="without replying"):
            await pool.request("GET", "/models", None, {})
        with pytest.raises(ConnectionResetError, match="before its reply was whole"):
            await pool.request("GET", "/models", None, {})
        assert (await pool.request("GET", "/models", None, {})).body == b"ok"
    finally:
        await pool.close()
    assert scripted.connections == 3


async def test_a_stalled_server_times_out_and_its_connection_is_dropped(scripted: Scripted) -> None:
    scripted.replies = [b"stall", ANSWER]
    pool = pool_for(scripted.url, timeout_s=0.3)
    try:
        with pytest.raises(TimeoutError):
            await pool.request("GET", "/models", None, {})
        assert (await pool.request("GET", "/models", None, {})).body == b"ok"
    finally:
        await pool.close()
    assert scripted.connections == 2


async def test_the_pool_never_holds_more_connections_than_its_limit(scripted: Scripted) -> None:
    scripted.replies = [ANSWER] * 12
    scripted.delay_s = 0.02
    pool = pool_for(scripted.url, limit=3)
    try:
        replies = await asyncio.gather(*(pool.request("GET", "/models", None, {}) for _ in range(12)))
    finally:
        await pool.close()
    assert [reply.body for reply in replies] == [b"ok"] * 12
    assert scripted.most_open <= 3 and scripted.connections <= 3


async def test_a_header_that_would_split_the_request_is_refused_before_anything_is_sent(
    scripted: Scripted,
) -> None:
    pool = pool_for(scripted.url)
    try:
        for headers in ({"Authorization": "Bearer k\r\nX-Injected: 1"}, {"X-Key": "clé→"}):
            with pytest.raises(HeaderError):
                await pool.request("GET", "/models", None, headers)
    finally:
        await pool.close()
    assert scripted.requests == []


async def test_credentials_in_the_url_are_sent_as_basic_auth(scripted: Scripted) -> None:
    scripted.replies = [ANSWER]
    pool = pool_for(scripted.url.replace("http://", "http://user%40x:p%3Ass@"))
    try:
        assert (await pool.request("GET", "/models", None, {})).body == b"ok"
        with pytest.raises(HeaderError, match="Authorization"):
            await pool.request("GET", "/models", None, {"Authorization": "Bearer k"})
    finally:
        await pool.close()
    assert b"Authorization: Basic dXNlckB4OnA6c3M=\r\n" in scripted.requests[0]  # user@x:p:ss
