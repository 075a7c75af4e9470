"""Claims and saves made together go to the real Redis as one pipeline, and each caller still gets its own
answer: its own result, its own script error, every caller the connection error, and a script Redis
does not hold (NOSCRIPT) loaded and run."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from worker.core.messages import content_digest
from worker.store.batching import ScriptBatcher
from worker.store.verdicts import ClaimState, VerdictStore

pytestmark = pytest.mark.integration


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def test_claims_made_together_share_one_round_trip_with_their_own_answers(
    redis: Redis, redis_prefix: str
) -> None:
    store = VerdictStore(redis, prefix=redis_prefix, verdict_ttl_s=600, lease_ttl_s=5)
    digests = [content_digest("prompt", None, f"text {i}") for i in range(200)]
    claims = await asyncio.gather(*(store.claim(f"m{i}", digests[i]) for i in range(200)))
    assert all(claim.state is ClaimState.ACQUIRED and lease is not None for claim, lease in claims)
    before = store.script_round_trips
    # Same ids again, half with other content: busy for the same content, a conflict for other content.
    again = await asyncio.gather(
        *(store.claim(f"m{i}", digests[i] if i % 2 else digests[(i + 1) % 200]) for i in range(200))
    )
    assert store.script_round_trips == before + 1
    states = [claim.state for claim, _ in again]
    assert states == [ClaimState.CONFLICT if i % 2 == 0 else ClaimState.BUSY for i in range(200)]
    saved = await asyncio.gather(
        *(store.save(lease, f'{{"n": {i}}}'.encode()) for i, (_, lease) in enumerate(claims) if lease)
    )
    assert saved == [f'{{"n": {i}}}'.encode() for i in range(200)]
    assert await redis.get(store.keys.verdict("m7")) == b'{"n": 7}'


async def test_a_script_error_reaches_only_its_caller(redis: Redis, redis_prefix: str) -> None:
    batcher = ScriptBatcher(redis)
    setter = redis.register_script("return redis.call('SET', KEYS[1], ARGV[1])")
    failing = redis.register_script("return redis.error_reply('BROKEN only this one')")
    ok_key = redis_prefix + "ok"
    results = await asyncio.gather(
        batcher.run(setter, [ok_key], ["v"]), batcher.run(failing, [], []), return_exceptions=True
    )
    assert results[0] == b"OK"
    assert isinstance(results[1], ResponseError) and "BROKEN" in str(results[1])
    await redis.delete(ok_key)


async def test_a_script_redis_does_not_hold_is_loaded_and_run(redis: Redis, redis_prefix: str) -> None:
    batcher = ScriptBatcher(redis)
    # A body no one sent before (the prefix is this test's): Redis answers NOSCRIPT to its EVALSHA, as
    # after a restart or a SCRIPT FLUSH (not run here: the server is shared).
    script = redis.register_script("return ARGV[1] .. '" + redis_prefix + "'")
    answers = await asyncio.gather(*(batcher.run(script, [], [str(i)]) for i in range(5)))
    assert answers == [f"{i}{redis_prefix}".encode() for i in range(5)]


async def test_a_connection_error_reaches_every_caller_of_the_batch(redis_prefix: str) -> None:
    unreachable = Redis.from_url("redis://127.0.0.1:9/0", socket_connect_timeout=1)
    batcher = ScriptBatcher(unreachable)
    script = unreachable.register_script("return 1")
    try:
        results = await asyncio.gather(
            *(batcher.run(script, [], []) for _ in range(3)), return_exceptions=True
        )
    finally:
        await unreachable.aclose()
    assert all(isinstance(result, (RedisConnectionError, OSError)) for result in results), results
    assert len({id(result) for result in results}) == 3  # each caller its own copy


async def test_a_renewal_that_crosses_a_save_does_not_report_the_lease_lost(
    redis: Redis, redis_prefix: str
) -> None:
    store = VerdictStore(redis, prefix=redis_prefix, verdict_ttl_s=600, lease_ttl_s=5)
    digest = content_digest("prompt", None, "renewed")
    leases = []
    for message_id in ("held", "saved", "dropped"):
        _, lease = await store.claim(message_id, digest)
        assert lease is not None
        leases.append(lease)
    await store.save(leases[1], b'{"label": "safe"}')
    await store.release(leases[2])  # gone without a verdict: that one is lost
    assert await store.renew_many(leases) == [True, True, False]
    assert 4000 < await redis.pttl(store.keys.lease("held")) <= 5000


async def test_a_stored_provisional_verdict_neither_counts_as_done_nor_blocks_the_final_one(
    redis: Redis, redis_prefix: str
) -> None:
    store = VerdictStore(redis, prefix=redis_prefix, verdict_ttl_s=600, lease_ttl_s=5)
    digest = content_digest("prompt", None, "parked")
    provisional = json.dumps(
        {"id": "p", "provisional": True, "label": None, "content_sha256": digest}
    ).encode()
    final = json.dumps({"id": "p", "provisional": False, "label": "safe", "content_sha256": digest}).encode()
    _, lease = await store.claim("p", digest)
    assert lease is not None and await store.save(lease, provisional) == provisional
    claim, again = await store.claim("p", digest)  # a provisional verdict is not a verdict: moderate
    assert claim.state is ClaimState.ACQUIRED and again is not None
    await store.release(again)
    assert await store.renew_many([again]) == [False]  # lost: only a final verdict means "done"
    _, lease = await store.claim("p", digest)
    assert lease is not None and await store.save(lease, final) == final  # the final one replaces it
    claim, lease = await store.claim("p", digest)
    assert claim.state is ClaimState.VERDICT and lease is None  # a final verdict stands
    # A worker that lost its lease and stores a provisional verdict after another stored the final one:
    _, late = await store.claim("r", digest)
    assert late is not None
    await redis.set(store.keys.verdict("r"), final)
    assert await store.save(late, provisional) == final  # the final one is kept and returned
