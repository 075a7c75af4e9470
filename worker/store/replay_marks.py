"""What `guardq dlq replay` keeps in Redis (key shapes in ``worker.store.keys``): which dead letters it
republished, which ids have a verdict, and the random token each republished record carries.

A token proves to the worker that the ``guardq.*`` headers of an input record were written by a replay (a
producer's own ``guardq.*`` headers are ignored), and, for ``--force``, authorises one overwrite of the
id's verdict. Tokens live as long as the retry schedule plus ``TOKEN_MARGIN_S``: long enough for the worker
to reach the record and take it through every retry topic.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from redis.asyncio import Redis

from worker.store.keys import RedisKeys

TOKEN_MARGIN_S = 3600


@dataclass(frozen=True)
class ReplayMark:
    """What is kept of one republished dead letter."""

    at: str  # RFC 3339 UTC, when the broker acknowledged the republish
    replay_count: int  # the republished record's guardq.replay_count
    forced: bool

    def to_json(self) -> str:
        return json.dumps({"at": self.at, "replay_count": self.replay_count, "forced": self.forced})

    @classmethod
    def from_json(cls, raw: bytes | str) -> ReplayMark:
        document = json.loads(raw)
        return cls(str(document["at"]), int(document["replay_count"]), bool(document["forced"]))


@dataclass(frozen=True)
class ReplayToken:
    """The token of one republished record: the record's key (what the worker checks it against), and
    whether it forces a new moderation of ``message_id``."""

    token: str
    record_key: bytes
    message_id: str
    force: bool


async def ids_with_verdict(redis: Redis, prefix: str, ids: Iterable[str], *, batch: int = 500) -> set[str]:
    """Which of ``ids`` have a stored verdict (MGET in batches of ``batch``)."""
    keys = RedisKeys(prefix)
    wanted = list(dict.fromkeys(ids))
    found: set[str] = set()
    for start in range(0, len(wanted), batch):
        chunk = wanted[start : start + batch]
        values = await redis.mget([keys.verdict(message_id) for message_id in chunk])
        found.update(message_id for message_id, value in zip(chunk, values, strict=True) if value is not None)
    return found


async def replay_marks(
    redis: Redis, prefix: str, dlq_topic: str, coordinates: Iterable[tuple[int, int]], *, batch: int = 500
) -> dict[tuple[int, int], ReplayMark]:
    """The marks of those dead letters (partition, offset) that were replayed (MGET in batches)."""
    keys = RedisKeys(prefix)
    wanted = list(dict.fromkeys(coordinates))
    found: dict[tuple[int, int], ReplayMark] = {}
    for start in range(0, len(wanted), batch):
        chunk = wanted[start : start + batch]
        values = await redis.mget([keys.replayed(dlq_topic, p, o) for p, o in chunk])
        found.update(
            (where, ReplayMark.from_json(value)) for where, value in zip(chunk, values, strict=True) if value
        )
    return found


async def mark_replayed(
    redis: Redis, prefix: str, dlq_topic: str, marks: Mapping[tuple[int, int], ReplayMark], *, ttl_s: int
) -> None:
    """Record dead letters as replayed, for ``ttl_s`` (the verdict TTL); call only once the broker
    acknowledged each republished record."""
    keys = RedisKeys(prefix)
    async with redis.pipeline(transaction=False) as pipe:
        for (partition, offset), mark in marks.items():
            pipe.set(keys.replayed(dlq_topic, partition, offset), mark.to_json(), ex=ttl_s)
        await pipe.execute()


async def register_tokens(redis: Redis, prefix: str, tokens: Sequence[ReplayToken], *, ttl_s: int) -> None:
    """Register the tokens of records about to be republished (and authorise the forced ones), in one
    round trip, before they are sent: a worker may read them at once."""
    keys = RedisKeys(prefix)
    async with redis.pipeline(transaction=False) as pipe:
        for each in tokens:
            pipe.set(keys.replay(each.token), each.record_key, ex=ttl_s)
            if each.force:
                pipe.set(keys.force(each.message_id), each.token, ex=ttl_s)
        await pipe.execute()
