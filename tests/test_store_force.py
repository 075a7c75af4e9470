"""The Redis primitives behind `guardq dlq replay`, against the real Redis: a forced claim ignores a stored
verdict, an overwriting save replaces it, the defaults keep "first verdict wins", and the replayed hash
and the verdict look-up read back what was written."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from worker.store import (
    ClaimState,
    ReplayMark,
    VerdictStore,
    authorise_force,
    ids_with_verdict,
    mark_replayed,
    replay_marks,
    replayed_field,
    replayed_key,
)

pytestmark = pytest.mark.integration


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def store(redis: Redis, redis_prefix: str) -> VerdictStore:
    return VerdictStore(redis, prefix=redis_prefix, verdict_ttl_s=600, lease_ttl_s=5)


async def test_authorised_force_ignores_the_stored_verdict_overwrites_it_and_is_used_up(
    store: VerdictStore, redis: Redis, redis_prefix: str
) -> None:
    claim, lease = await store.claim("m1")
    assert claim.state is ClaimState.ACQUIRED and lease is not None
    assert await store.save(lease, b'{"id": "m1", "label": "unsafe"}') == b'{"id": "m1", "label": "unsafe"}'

    unforced, none = await store.claim("m1")
    assert unforced.state is ClaimState.VERDICT and none is None
    assert unforced.verdict == b'{"id": "m1", "label": "unsafe"}'

    await authorise_force(redis, redis_prefix, "m1", "0:7", ttl_s=600)
    forced, forced_lease = await store.claim("m1", force_token="0:7")
    assert forced.state is ClaimState.ACQUIRED and forced_lease is not None
    # While the forced delivery holds the lease, another forced or plain delivery of the id waits.
    busy, _ = await store.claim("m1", force_token="0:7")
    assert busy.state is ClaimState.BUSY and busy.lease_ttl_ms > 0
    assert (await store.claim("m1"))[0].state is ClaimState.VERDICT  # the old verdict still answers

    stored = await store.save(forced_lease, b'{"id": "m1", "label": "safe"}', force_token="0:7")
    assert stored == b'{"id": "m1", "label": "safe"}'
    assert await redis.get(store.verdict_key("m1")) == b'{"id": "m1", "label": "safe"}'
    assert await redis.exists(store.lease_key("m1")) == 0
    assert 0 < await redis.ttl(store.verdict_key("m1")) <= 600
    # Used up: a redelivery of the same forced record is an ordinary duplicate now.
    assert await redis.exists(store.force_key("m1")) == 0
    again, _ = await store.claim("m1", force_token="0:7")
    assert again.state is ClaimState.VERDICT and again.verdict == b'{"id": "m1", "label": "safe"}'


async def test_a_force_header_without_the_token_in_redis_forces_nothing(
    store: VerdictStore, redis: Redis, redis_prefix: str
) -> None:
    _, first = await store.claim("m2")
    assert first is not None
    await store.save(first, b"first")
    # A producer that sets guardq.force on its own record cannot replace someone's verdict.
    forged, _ = await store.claim("m2", force_token="0:1")
    assert forged.state is ClaimState.VERDICT and forged.verdict == b"first"
    # Nor with another replay's token.
    await authorise_force(redis, redis_prefix, "m2", "0:2", ttl_s=600)
    wrong, _ = await store.claim("m2", force_token="0:1")
    assert wrong.state is ClaimState.VERDICT
    # A save whose token does not stand keeps the first verdict.
    _, lease = await store.claim("m2", force_token="0:2")
    assert lease is not None
    await redis.delete(store.force_key("m2"))  # e.g. expired meanwhile
    assert await store.save(lease, b"second", force_token="0:2") == b"first"


async def test_forced_claim_of_an_id_without_verdict_is_an_ordinary_claim(
    store: VerdictStore, redis: Redis, redis_prefix: str
) -> None:
    await authorise_force(redis, redis_prefix, "m3", "1:3", ttl_s=600)
    claim, lease = await store.claim("m3", force_token="1:3")
    assert claim.state is ClaimState.ACQUIRED and lease is not None
    assert await store.save(lease, b"only", force_token="1:3") == b"only"


async def test_ids_with_verdict_and_replay_marks_read_back_in_batches(
    store: VerdictStore, redis: Redis, redis_prefix: str
) -> None:
    ids = [f"v{i}" for i in range(7)]
    for message_id in ids[:5]:
        _, lease = await store.claim(message_id)
        assert lease is not None
        await store.save(lease, b"{}")
    assert await ids_with_verdict(redis, redis_prefix, [*ids, "v0"], batch=2) == set(ids[:5])
    assert await ids_with_verdict(redis, redis_prefix, []) == set()

    marks = {
        replayed_field("t.dlq", 0, 4): ReplayMark("2026-11-23T13:00:00.000Z", 1, False),
        replayed_field("t.dlq", 3, 9): ReplayMark("2026-11-23T13:00:01.000Z", 2, True),
    }
    await mark_replayed(redis, redis_prefix, marks)
    await mark_replayed(redis, redis_prefix, {})  # nothing to mark: no empty HSET error
    asked = [replayed_field("t.dlq", 0, 4), replayed_field("t.dlq", 0, 5), replayed_field("t.dlq", 3, 9)]
    assert await replay_marks(redis, redis_prefix, asked, batch=1) == marks
    assert await redis.hlen(replayed_key(redis_prefix)) == 2
    assert await redis.ttl(replayed_key(redis_prefix)) == -1  # kept: the record of what was replayed
