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


async def test_forced_claim_ignores_the_stored_verdict_and_overwriting_save_replaces_it(
    store: VerdictStore, redis: Redis
) -> None:
    claim, lease = await store.claim("m1")
    assert claim.state is ClaimState.ACQUIRED and lease is not None
    assert await store.save(lease, b'{"id": "m1", "label": "unsafe"}') == b'{"id": "m1", "label": "unsafe"}'

    unforced, none = await store.claim("m1")
    assert unforced.state is ClaimState.VERDICT and none is None
    assert unforced.verdict == b'{"id": "m1", "label": "unsafe"}'

    forced, forced_lease = await store.claim("m1", force=True)
    assert forced.state is ClaimState.ACQUIRED and forced_lease is not None
    # While the forced delivery holds the lease, another forced or plain delivery of the id waits.
    busy, _ = await store.claim("m1", force=True)
    assert busy.state is ClaimState.BUSY and busy.lease_ttl_ms > 0
    assert (await store.claim("m1"))[0].state is ClaimState.VERDICT  # the old verdict still answers

    stored = await store.save(forced_lease, b'{"id": "m1", "label": "safe"}', overwrite=True)
    assert stored == b'{"id": "m1", "label": "safe"}'
    assert await redis.get(store.verdict_key("m1")) == b'{"id": "m1", "label": "safe"}'
    assert await redis.exists(store.lease_key("m1")) == 0
    assert 0 < await redis.ttl(store.verdict_key("m1")) <= 600


async def test_default_save_keeps_the_first_verdict_even_after_a_forced_claim(store: VerdictStore) -> None:
    _, first = await store.claim("m2")
    assert first is not None
    await store.save(first, b"first")
    _, forced = await store.claim("m2", force=True)
    assert forced is not None
    # A forced claim without an overwriting save changes nothing: first verdict wins, lease dropped.
    assert await store.save(forced, b"second") == b"first"
    assert (await store.claim("m2"))[0].verdict == b"first"


async def test_forced_claim_of_an_id_without_verdict_is_an_ordinary_claim(store: VerdictStore) -> None:
    claim, lease = await store.claim("m3", force=True)
    assert claim.state is ClaimState.ACQUIRED and lease is not None
    assert await store.save(lease, b"only", overwrite=True) == b"only"


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
