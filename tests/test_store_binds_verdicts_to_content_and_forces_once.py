"""The Redis primitives of the verdict store, against the real Redis: verdicts are bound to the content
they judged (a reused id with other content conflicts, in flight or stored), a forced claim ignores a
stored verdict only with a token Redis holds and uses it up, and what `guardq dlq replay` keeps (tokens,
replay marks) reads back and expires."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from worker.core.errors import IdConflict
from worker.core.messages import content_digest
from worker.store.keys import RedisKeys
from worker.store.replay_marks import (
    ReplayMark,
    ReplayToken,
    ids_with_verdict,
    mark_replayed,
    register_tokens,
    replay_marks,
)
from worker.store.verdicts import ClaimState, VerdictStore

pytestmark = pytest.mark.integration

A = content_digest("prompt", None, "text a")
B = content_digest("prompt", None, "text b")


def verdict(message_id: str, label: str, content: str | None) -> bytes:
    document = {"id": message_id, "label": label}
    if content is not None:
        document["content_sha256"] = content
    return json.dumps(document).encode()


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def store(redis: Redis, redis_prefix: str) -> VerdictStore:
    return VerdictStore(redis, prefix=redis_prefix, verdict_ttl_s=600, lease_ttl_s=5)


async def force(redis: Redis, prefix: str, message_id: str, token: str) -> None:
    await register_tokens(redis, prefix, [ReplayToken(token, b"k", message_id, True)], ttl_s=600)


async def test_a_reused_id_with_other_content_conflicts_and_the_stored_verdict_stays(
    store: VerdictStore, redis: Redis
) -> None:
    claim, lease = await store.claim("m1", A)
    assert claim.state is ClaimState.ACQUIRED and lease is not None
    await store.save(lease, verdict("m1", "unsafe", A))
    same, _ = await store.claim("m1", A)
    assert same.state is ClaimState.VERDICT and same.verdict == verdict("m1", "unsafe", A)
    other, none = await store.claim("m1", B)
    assert other.state is ClaimState.CONFLICT and none is None
    assert await redis.get(store.keys.verdict("m1")) == verdict("m1", "unsafe", A)
    assert await redis.exists(store.keys.lease("m1")) == 0  # a conflict takes no lease


async def test_a_moderation_in_flight_conflicts_with_other_content_and_makes_the_same_content_wait(
    store: VerdictStore,
) -> None:
    _, lease = await store.claim("m2", A)
    assert lease is not None
    busy, _ = await store.claim("m2", A)
    assert busy.state is ClaimState.BUSY and busy.lease_ttl_ms > 0
    other, _ = await store.claim("m2", B)
    assert other.state is ClaimState.CONFLICT


async def test_a_save_after_a_lost_lease_conflicts_when_the_new_holder_judged_other_content(
    store: VerdictStore, redis: Redis
) -> None:
    _, first = await store.claim("m3", A)
    assert first is not None
    await redis.delete(store.keys.lease("m3"))  # the lease expired while the guard was slow
    _, second = await store.claim("m3", B)
    assert second is not None
    assert await store.save(second, verdict("m3", "safe", B)) == verdict("m3", "safe", B)
    with pytest.raises(IdConflict):
        await store.save(first, verdict("m3", "unsafe", A))
    assert await redis.get(store.keys.verdict("m3")) == verdict("m3", "safe", B)


async def test_a_verdict_stored_before_content_binding_answers_any_content(
    store: VerdictStore, redis: Redis
) -> None:
    await redis.set(store.keys.verdict("old"), verdict("old", "safe", None))
    claim, _ = await store.claim("old", B)
    assert claim.state is ClaimState.VERDICT


async def test_authorised_force_ignores_the_stored_verdict_overwrites_it_and_is_used_up(
    store: VerdictStore, redis: Redis, redis_prefix: str
) -> None:
    _, lease = await store.claim("m4", A)
    assert lease is not None
    await store.save(lease, verdict("m4", "unsafe", A))
    await force(redis, redis_prefix, "m4", "t0k3n")
    forced, forced_lease = await store.claim("m4", A, force_token="t0k3n")
    assert forced.state is ClaimState.ACQUIRED and forced_lease is not None
    busy, _ = await store.claim("m4", A, force_token="t0k3n")
    assert busy.state is ClaimState.BUSY
    assert (await store.claim("m4", A))[0].state is ClaimState.VERDICT  # the old verdict still answers
    stored = await store.save(forced_lease, verdict("m4", "safe", A), force_token="t0k3n")
    assert stored == verdict("m4", "safe", A)
    assert await redis.get(store.keys.verdict("m4")) == verdict("m4", "safe", A)
    assert await redis.exists(store.keys.lease("m4"), store.keys.force("m4")) == 0
    again, _ = await store.claim("m4", A, force_token="t0k3n")
    assert again.state is ClaimState.VERDICT  # used up: a redelivery is an ordinary duplicate


async def test_a_force_header_without_the_token_in_redis_forces_nothing_and_a_dropped_token_is_gone(
    store: VerdictStore, redis: Redis, redis_prefix: str
) -> None:
    _, first = await store.claim("m5", A)
    assert first is not None
    await store.save(first, verdict("m5", "unsafe", A))
    forged, _ = await store.claim("m5", A, force_token="guessed")
    assert forged.state is ClaimState.VERDICT
    await force(redis, redis_prefix, "m5", "real")
    await store.drop_force("m5", "another")  # only the token's own replay may withdraw it
    assert await redis.get(store.keys.force("m5")) == b"real"
    await store.drop_force("m5", "real")  # its message was dead-lettered again
    assert (await store.claim("m5", A, force_token="real"))[0].state is ClaimState.VERDICT


async def test_replay_tokens_name_the_record_key_and_expire(
    store: VerdictStore, redis: Redis, redis_prefix: str
) -> None:
    tokens = [ReplayToken("aa", b"key-1", "m6", False), ReplayToken("bb", b"", "m7", True)]
    await register_tokens(redis, redis_prefix, tokens, ttl_s=120)
    assert await store.replay_origin("aa") == b"key-1"
    assert await store.replay_origin("bb") == b""
    assert await store.replay_origin("cc") is None
    assert await redis.exists(store.keys.force("m6")) == 0  # not forced: no authorisation
    assert await redis.get(store.keys.force("m7")) == b"bb"
    assert 0 < await redis.ttl(store.keys.replay("aa")) <= 120


async def test_ids_with_verdict_and_replay_marks_read_back_in_batches_and_expire(
    store: VerdictStore, redis: Redis, redis_prefix: str
) -> None:
    ids = [f"v{i}" for i in range(7)]
    for message_id in ids[:5]:
        _, lease = await store.claim(message_id, A)
        assert lease is not None
        await store.save(lease, b"{}")
    assert await ids_with_verdict(redis, redis_prefix, [*ids, "v0"], batch=2) == set(ids[:5])
    assert await ids_with_verdict(redis, redis_prefix, []) == set()

    marks = {
        (0, 4): ReplayMark("2026-11-23T13:00:00.000Z", 1, False),
        (3, 9): ReplayMark("2026-11-23T13:00:01.000Z", 2, True),
    }
    await mark_replayed(redis, redis_prefix, "t.dlq", marks, ttl_s=300)
    await mark_replayed(redis, redis_prefix, "t.dlq", {}, ttl_s=300)  # nothing to mark: no error
    asked = [(0, 4), (0, 5), (3, 9)]
    assert await replay_marks(redis, redis_prefix, "t.dlq", asked, batch=1) == marks
    assert await replay_marks(redis, redis_prefix, "other.dlq", asked) == {}
    # Pruned with the verdicts: a mark lives as long as the dedup window.
    assert 0 < await redis.ttl(RedisKeys(redis_prefix).replayed("t.dlq", 3, 9)) <= 300
