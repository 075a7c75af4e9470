"""Redis: the verdict store and the in-flight leases. Every key pattern and script is in this module.

Keys (``P`` = GUARDQ_REDIS_PREFIX):
- ``P verdict:<id>``  the verdict JSON, TTL = GUARDQ_VERDICT_TTL_S (the deduplication window);
- ``P lease:<id>``    the token of the worker moderating ``id`` now; short TTL, renewed by its holder.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from redis.asyncio import BlockingConnectionPool, Redis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

# One round trip: a stored verdict wins; else take the lease if free; else report who holds it for how long.
_CLAIM = """
local verdict = redis.call('GET', KEYS[1])
if verdict then return {1, verdict} end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {2, ''} end
return {3, tostring(redis.call('PTTL', KEYS[2]))}
"""

# Store the verdict and drop our lease together, so no reader sees neither. The first verdict wins:
# if another worker took over a lease we lost and stored first, its verdict is returned instead.
_SAVE = """
if redis.call('GET', KEYS[2]) == ARGV[3] then redis.call('DEL', KEYS[2]) end
local existing = redis.call('GET', KEYS[1])
if existing then return existing end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return false
"""

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def connect_redis(url: str, *, max_connections: int) -> Redis:
    """A Redis client whose pool blocks (rather than grows without bound) when every connection is busy."""
    pool = BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=30, socket_timeout=10, socket_connect_timeout=5
    )
    return Redis(connection_pool=pool)


async def delete_prefix(url: str, prefix: str, *, batch: int = 5000) -> int:
    """Delete every key under ``prefix`` (a test's, a demo run's or a benchmark's); returns how many."""
    client = Redis.from_url(url)
    deleted = 0
    try:
        keys: list[bytes] = []
        async for key in client.scan_iter(match=prefix + "*", count=batch):
            keys.append(key)
            if len(keys) >= batch:
                deleted += await client.delete(*keys)
                keys = []
        if keys:
            deleted += await client.delete(*keys)
    finally:
        await client.aclose()
    return deleted


class ClaimState(enum.Enum):
    """What ``VerdictStore.claim`` found."""

    VERDICT = "verdict"  # a verdict is stored: no guard call
    ACQUIRED = "acquired"  # we hold the lease: moderate
    BUSY = "busy"  # another delivery holds the lease: wait and re-check


@dataclass(frozen=True)
class Claim:
    state: ClaimState
    verdict: bytes | None = None
    lease_ttl_ms: int = 0


@dataclass(frozen=True)
class Lease:
    """A held in-flight lease; only its holder's token can renew or release it."""

    message_id: str
    token: str


class VerdictStore:
    """Idempotent verdict storage with in-flight leases."""

    def __init__(self, redis: Redis, *, prefix: str, verdict_ttl_s: int, lease_ttl_s: float) -> None:
        self._redis = redis
        self._prefix = prefix
        self._verdict_ttl_s = verdict_ttl_s
        self._lease_ttl_ms = int(lease_ttl_s * 1000)
        self._claim = redis.register_script(_CLAIM)
        self._save = redis.register_script(_SAVE)
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)

    @property
    def lease_ttl_s(self) -> float:
        return self._lease_ttl_ms / 1000

    def verdict_key(self, message_id: str) -> str:
        return f"{self._prefix}verdict:{message_id}"

    def lease_key(self, message_id: str) -> str:
        return f"{self._prefix}lease:{message_id}"

    async def claim(self, message_id: str) -> tuple[Claim, Lease | None]:
        """Look up the verdict and, if there is none, try to take the in-flight lease."""
        token = uuid.uuid4().hex
        keys = [self.verdict_key(message_id), self.lease_key(message_id)]
        code, payload = await self._claim(keys=keys, args=[token, self._lease_ttl_ms])
        if code == 1:
            return Claim(ClaimState.VERDICT, verdict=bytes(payload)), None
        if code == 2:
            return Claim(ClaimState.ACQUIRED), Lease(message_id, token)
        return Claim(ClaimState.BUSY, lease_ttl_ms=max(0, int(payload))), None

    async def save(self, lease: Lease, verdict_json: bytes) -> bytes:
        """Store the verdict with its TTL and release the lease; returns the verdict that is stored
        (``verdict_json``, or one stored first by a worker that took over a lost lease)."""
        keys = [self.verdict_key(lease.message_id), self.lease_key(lease.message_id)]
        existing = await self._save(keys=keys, args=[verdict_json, self._verdict_ttl_s, lease.token])
        if existing is None:
            return verdict_json
        return existing if isinstance(existing, bytes) else str(existing).encode()

    async def renew_many(self, leases: list[Lease]) -> list[bool]:
        """Extend many leases in one pipelined round trip; False for each one that was lost."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for lease in leases:
                await self._renew(
                    keys=[self.lease_key(lease.message_id)],
                    args=[lease.token, self._lease_ttl_ms],
                    client=pipe,
                )
            results = await pipe.execute()
        return [bool(result) for result in results]

    async def release(self, lease: Lease) -> None:
        """Give the lease up without a verdict (the message was dead-lettered or the work dropped)."""
        await self._release(keys=[self.lease_key(lease.message_id)], args=[lease.token])


class LeaseKeeper:
    """Keeps every held lease alive: one pipelined renewal of all of them every third of the lease TTL,
    so holding a lease (through retries and waits) costs no task of its own."""

    def __init__(self, store: VerdictStore) -> None:
        self._store = store
        self._held: dict[str, Lease] = {}

    @contextmanager
    def holding(self, lease: Lease) -> Iterator[None]:
        """Renew ``lease`` for as long as the block runs."""
        self._held[lease.token] = lease
        try:
            yield
        finally:
            self._held.pop(lease.token, None)

    async def run(self) -> None:
        """Renew held leases until cancelled; Redis trouble is logged and retried on the next round."""
        while True:
            await asyncio.sleep(self._store.lease_ttl_s / 3)
            leases = list(self._held.values())
            if not leases:
                continue
            try:
                results = await self._store.renew_many(leases)
            except (RedisError, OSError) as exc:
                log.warning("could not renew %d in-flight lease(s): %s", len(leases), exc)
                continue
            for lease, kept in zip(leases, results, strict=True):
                # A lease released while the renewal was under way is not lost, just finished.
                if not kept and lease.token in self._held:
                    log.warning(
                        "lost the in-flight lease of id=%s; another worker may take over", lease.message_id
                    )
