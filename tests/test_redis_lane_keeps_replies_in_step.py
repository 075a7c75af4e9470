"""The lane that carries claims and saves pipelines batches on one connection of its own, against the real
Redis. Whatever breaks a batch mid-way (a cancelled caller, a passed deadline, a killed connection), no
later batch may ever read a reply that belongs to another: the connection is dropped and made again."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from worker.store.lane import Lane

pytestmark = pytest.mark.integration


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url, socket_timeout=2)
    yield client
    await client.aclose()


@pytest.fixture
async def lane(redis: Redis) -> AsyncIterator[Lane]:
    lane = Lane(redis)
    yield lane
    await lane.aclose()


async def until_blocked(redis: Redis, count: int = 1) -> None:
    """Wait (bounded) until ``count`` clients are blocked in BLPOP on the server."""
    for _ in range(200):
        info = await redis.info("clients")
        if int(info["blocked_clients"]) >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the lane's BLPOP never blocked")


async def until_gone(redis: Redis, client_id: int) -> None:
    """Wait (bounded) until the server has freed the connection ``client_id``: a socket closed on our side
    is noticed by the server on its next event-loop turn, so a command sent at once may still race it."""
    for _ in range(200):
        if not await redis.execute_command("CLIENT", "LIST", "ID", client_id):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"the server still holds the dropped connection {client_id}")


async def blocked_then_behind(
    lane: Lane, redis: Redis, queue: str, key: str
) -> tuple[asyncio.Task[list[Any]], asyncio.Task[list[Any]]]:
    """A batch blocked in BLPOP on ``queue``, and a GET of ``key`` written behind it, waiting its turn."""
    blocked = asyncio.create_task(lane.execute([("BLPOP", queue, 5)]))
    await until_blocked(redis)
    behind = asyncio.create_task(lane.execute([("GET", key)]))
    await asyncio.sleep(0)  # its first step writes it
    return blocked, behind


async def test_an_error_reply_is_its_commands_answer_and_the_rest_stay_in_step(
    lane: Lane, redis_prefix: str
) -> None:
    key = redis_prefix + "text"
    replies = await lane.execute([("SET", key, "v"), ("INCR", key), ("GET", key)])
    assert replies[0] is True or replies[0] == b"OK"
    assert isinstance(replies[1], ResponseError) and "not an integer" in str(replies[1])
    assert replies[2] == b"v"


async def test_batches_written_together_each_get_their_own_replies_in_order(
    lane: Lane, redis_prefix: str
) -> None:
    keys = [f"{redis_prefix}n{i}" for i in range(50)]
    answers = await asyncio.gather(
        *(lane.execute([("INCRBY", key, i), ("GET", key)]) for i, key in enumerate(keys))
    )
    assert answers == [[i, str(i).encode()] for i in range(50)]


async def test_a_batch_behind_a_blocked_one_waits_its_turn(
    lane: Lane, redis: Redis, redis_prefix: str
) -> None:
    queue, key = redis_prefix + "queue", redis_prefix + "k"
    await redis.set(key, "behind")
    first = asyncio.create_task(lane.execute([("BLPOP", queue, 5)]))
    await until_blocked(redis)
    second = asyncio.create_task(lane.execute([("GET", key)]))
    await asyncio.sleep(0.05)
    assert not second.done()  # its reply comes after the blocked one's
    await redis.rpush(queue, "item")
    assert await first == [[queue.encode(), b"item"]]
    assert await second == [b"behind"]


async def test_a_cancelled_batch_drops_the_connection_and_no_reply_goes_astray(
    lane: Lane, redis: Redis, redis_prefix: str
) -> None:
    queue, key = redis_prefix + "queue", redis_prefix + "k"
    await redis.set(key, "mine")
    before = await lane.execute([("CLIENT", "ID")])
    blocked, behind = await blocked_then_behind(lane, redis, queue, key)
    blocked.cancel()
    with pytest.raises(asyncio.CancelledError):
        await blocked
    # Written on the dropped connection: it fails rather than read the BLPOP's reply as its own.
    with pytest.raises(RedisConnectionError):
        await behind
    await until_gone(redis, before[0])
    await redis.rpush(queue, "late")  # the old connection is gone: no one takes it
    assert await lane.execute([("GET", key), ("LLEN", queue)]) == [b"mine", 1]
    assert await lane.execute([("CLIENT", "ID")]) != before  # a new connection


async def test_a_batch_past_its_deadline_fails_and_the_next_one_is_answered(
    redis_url: str, redis_prefix: str
) -> None:
    client = Redis.from_url(redis_url, socket_timeout=0.3)
    lane = Lane(client)
    try:
        with pytest.raises(RedisTimeoutError):
            await lane.execute([("BLPOP", redis_prefix + "never", 2)])
        assert await lane.execute([("PING",)]) in ([True], [b"PONG"])
    finally:
        await lane.aclose()
        await client.aclose()


async def test_a_connection_killed_mid_batch_fails_that_batch_and_the_next_connects_again(
    lane: Lane, redis: Redis, redis_prefix: str
) -> None:
    [before] = await lane.execute([("CLIENT", "ID")])
    blocked = asyncio.create_task(lane.execute([("BLPOP", redis_prefix + "queue", 5)]))
    await until_blocked(redis)
    await redis.client_kill_filter(_id=before)
    with pytest.raises(RedisConnectionError):
        await blocked
    [after] = await lane.execute([("CLIENT", "ID")])
    assert after != before


async def test_an_idle_connection_the_server_closed_is_replaced_before_the_next_batch(
    lane: Lane, redis: Redis
) -> None:
    # As Redis's idle `timeout` or a restart does: the next batch must not fail on the dead connection.
    [before] = await lane.execute([("CLIENT", "ID")])
    await redis.client_kill_filter(_id=before)
    for _ in range(100):  # until the server has let it go (its close then reached us before this reply)
        if not await redis.execute_command("CLIENT", "LIST", "ID", before):
            break
        await asyncio.sleep(0.01)
    [after] = await lane.execute([("CLIENT", "ID")])
    assert after != before


async def test_a_batch_cancelled_while_waiting_its_turn_drops_the_connection(
    lane: Lane, redis: Redis, redis_prefix: str
) -> None:
    queue, key, other = redis_prefix + "queue", redis_prefix + "k", redis_prefix + "other"
    await redis.mset({key: "waiting", other: "next"})
    blocked, waiting = await blocked_then_behind(lane, redis, queue, key)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    # Its reply would come next on that connection; kept, the next batch would read "waiting" as its own.
    with pytest.raises(RedisConnectionError):
        await blocked
    assert await lane.execute([("GET", other)]) == [b"next"]


async def test_batches_arriving_while_the_lane_connects_wait_for_the_handshake(
    lane: Lane, redis_prefix: str
) -> None:
    # redis-py reports a connection as connected while its handshake (HELLO, SELECT, CLIENT SETINFO) still
    # reads replies; a batch that starts reading then would take the handshake's replies, or clash with it.
    async def one(i: int) -> list[object]:
        return await lane.execute([("INCRBY", f"{redis_prefix}c{i}", i), ("GET", f"{redis_prefix}c{i}")])

    started = []
    for i in range(200):
        started.append(asyncio.create_task(one(i)))
        await asyncio.sleep(0)  # one per loop turn, all through the connect
    answers = await asyncio.gather(*started)
    assert answers == [[i, str(i).encode()] for i in range(200)]


async def test_text_bytes_and_numbers_reach_redis_as_the_client_sends_them(
    lane: Lane, redis: Redis, redis_prefix: str
) -> None:
    values: list[bytes | str | int] = ["ünïcode ✓", "", b"\r\n\x00\xff binary", -17, 2**62, "$3\r\nfoo\r\n"]
    keys = [f"{redis_prefix}v{i}" for i in range(len(values))]
    replies = await lane.execute([("SET", key, value) for key, value in zip(keys, values, strict=True)])
    assert all(reply in (True, b"OK") for reply in replies)
    expected = [value.encode() if isinstance(value, str) else value for value in values]
    expected = [str(value).encode() if isinstance(value, int) else value for value in expected]
    assert await redis.mget(keys) == expected
    assert await lane.execute([("GET", key) for key in keys]) == expected
