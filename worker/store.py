"""Redis: the verdict store and the in-flight leases. Every key pattern and script is in this module.

Keys (``P`` = GUARDQ_REDIS_PREFIX):
- ``P verdict:<id>``  the verdict JSON, TTL = GUARDQ_VERDICT_TTL_S (the deduplication window);
- ``P lease:<id>``    the token of the worker moderating ``id`` now; short TTL, renewed by its holder;
- ``P chunk:<id>#chunk<i>/<n>@<chars>:<model>``  the guard verdict of chunk i of n (cut at most <chars>
  long) of a long text, so a redelivery does not
  pay for it again; TTL one day (or the verdict TTL, if shorter);
- ``P force:<id>``    the token of a forced replay (`guardq dlq replay --force`) allowed to moderate ``id``
  again and overwrite its verdict; the worker deletes it with that store (one use); TTL = verdict TTL;
- ``P dlq:replayed``  a hash, field ``<dlq topic>/<partition>/<offset>`` per dead letter `guardq dlq replay`
  republished, value JSON ``{"at": rfc3339, "replay_count": n, "forced": bool}``; no TTL, never pruned
  (one small field per replayed dead letter), so ``dlq list --pending`` knows what is left.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from redis.asyncio import BlockingConnectionPool, Redis
from redis.exceptions import RedisError

if TYPE_CHECKING:
    from worker.settings import Settings

log = logging.getLogger(__name__)

CHUNK_TTL_S = 86_400

# One round trip: a stored verdict wins; else take the lease if free; else report who holds it for how long.
# A forced replay (ARGV[3] = its token, equal to the value `guardq dlq replay --force` wrote at KEYS[3])
# ignores the stored verdict: the message is moderated again. A header alone, without that key, forces nothing.
_CLAIM = """
if ARGV[3] == '' or redis.call('GET', KEYS[3]) ~= ARGV[3] then
  local verdict = redis.call('GET', KEYS[1])
  if verdict then return {1, verdict} end
end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {2, ''} end
return {3, tostring(redis.call('PTTL', KEYS[2]))}
"""

# Store the verdict and drop our lease together, so no reader sees neither. The first verdict wins:
# if another worker took over a lease we lost and stored first, its verdict is returned instead.
# A forced replay whose token still stands at KEYS[3] overwrites whatever is stored, and uses the token up:
# a redelivery of the same record afterwards finds the new verdict like any duplicate.
_SAVE = """
if redis.call('GET', KEYS[2]) == ARGV[3] then redis.call('DEL', KEYS[2]) end
if ARGV[4] ~= '' and redis.call('GET', KEYS[3]) == ARGV[4] then
  redis.call('DEL', KEYS[3])
else
  local existing = redis.call('GET', KEYS[1])
  if existing then return existing end
end
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


@dataclass(frozen=True)
class RedisSecurity:
    """Redis AUTH and TLS options kept beside the URL: GUARDQ_REDIS_PASSWORD and GUARDQ_REDIS_TLS_*."""

    password: str | None = None
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    tls_verify: bool = True

    @classmethod
    def from_settings(cls, settings: Settings) -> RedisSecurity:
        """The options of ``settings``."""
        return cls(
            password=settings.redis_password,
            tls_ca_file=settings.redis_tls_ca_file,
            tls_cert_file=settings.redis_tls_cert_file,
            tls_key_file=settings.redis_tls_key_file,
            tls_verify=settings.redis_tls_verify,
        )

    def __repr__(self) -> str:
        shown = "'***'" if self.password else "None"
        return (
            f"RedisSecurity(password={shown}, tls_ca_file={self.tls_ca_file!r}, "
            f"tls_cert_file={self.tls_cert_file!r}, tls_key_file={self.tls_key_file!r}, "
            f"tls_verify={self.tls_verify})"
        )

    def connection_kwargs(self, url: str) -> dict[str, Any]:
        """The redis-py connection keyword arguments for ``url``. TLS options go only to a rediss:// URL:
        a plain connection class refuses them."""
        kwargs: dict[str, Any] = {}
        if self.password:
            kwargs["password"] = self.password
        if urlparse(url).scheme != "rediss":
            return kwargs
        kwargs["ssl_cert_reqs"] = "required" if self.tls_verify else "none"
        # Without verification there is no trusted name to check either (and the SSL module insists).
        kwargs["ssl_check_hostname"] = self.tls_verify
        if self.tls_ca_file:
            kwargs["ssl_ca_certs"] = self.tls_ca_file
        if self.tls_cert_file:
            kwargs["ssl_certfile"] = self.tls_cert_file
            kwargs["ssl_keyfile"] = self.tls_key_file
        return kwargs


def connect_redis(url: str, *, max_connections: int, security: RedisSecurity | None = None) -> Redis:
    """A Redis client whose pool blocks (rather than grows without bound) when every connection is busy;
    ``security`` adds the password and TLS options that are not in the URL."""
    extra = (security or RedisSecurity()).connection_kwargs(url)
    pool = BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=30, socket_timeout=10, socket_connect_timeout=5, **extra
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


def verdict_key(prefix: str, message_id: str) -> str:
    """The key of ``message_id``'s stored verdict."""
    return f"{prefix}verdict:{message_id}"


def force_key(prefix: str, message_id: str) -> str:
    """Where `guardq dlq replay --force` authorises one forced moderation of ``message_id``."""
    return f"{prefix}force:{message_id}"


async def authorise_force(redis: Redis, prefix: str, message_id: str, token: str, *, ttl_s: int) -> None:
    """Let the forced replay carrying ``token`` moderate ``message_id`` again, once (the worker uses it up)."""
    await redis.set(force_key(prefix, message_id), token, ex=ttl_s)


def replayed_key(prefix: str) -> str:
    """The hash of dead letters `guardq dlq replay` republished (see the module docstring)."""
    return f"{prefix}dlq:replayed"


def replayed_field(dlq_topic: str, partition: int, offset: int) -> str:
    """The field of one dead letter in the replayed hash."""
    return f"{dlq_topic}/{partition}/{offset}"


@dataclass(frozen=True)
class ReplayMark:
    """What the replayed hash records of one republished dead letter."""

    at: str  # RFC 3339 UTC, when the broker acknowledged the republish
    replay_count: int  # the republished record's guardq.replay_count
    forced: bool

    def to_json(self) -> str:
        return json.dumps({"at": self.at, "replay_count": self.replay_count, "forced": self.forced})

    @classmethod
    def from_json(cls, raw: bytes | str) -> ReplayMark:
        document = json.loads(raw)
        return cls(str(document["at"]), int(document["replay_count"]), bool(document["forced"]))


async def ids_with_verdict(redis: Redis, prefix: str, ids: Iterable[str], *, batch: int = 500) -> set[str]:
    """Which of ``ids`` have a stored verdict (MGET in batches of ``batch``)."""
    wanted = list(dict.fromkeys(ids))
    found: set[str] = set()
    for start in range(0, len(wanted), batch):
        chunk = wanted[start : start + batch]
        values = await redis.mget([verdict_key(prefix, message_id) for message_id in chunk])
        found.update(message_id for message_id, value in zip(chunk, values, strict=True) if value is not None)
    return found


async def replay_marks(
    redis: Redis, prefix: str, fields: Iterable[str], *, batch: int = 500
) -> dict[str, ReplayMark]:
    """The replay marks of those ``fields`` (see ``replayed_field``) that were replayed (HMGET in batches)."""
    wanted = list(dict.fromkeys(fields))
    found: dict[str, ReplayMark] = {}
    for start in range(0, len(wanted), batch):
        chunk = wanted[start : start + batch]
        values = await redis.hmget(replayed_key(prefix), chunk)
        found.update(
            (name, ReplayMark.from_json(value)) for name, value in zip(chunk, values, strict=True) if value
        )
    return found


async def mark_replayed(redis: Redis, prefix: str, marks: Mapping[str, ReplayMark]) -> None:
    """Record dead letters as replayed (one HSET); call only once the broker acknowledged each one."""
    if marks:
        await redis.hset(replayed_key(prefix), mapping={name: mark.to_json() for name, mark in marks.items()})


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
        return verdict_key(self._prefix, message_id)

    def lease_key(self, message_id: str) -> str:
        return f"{self._prefix}lease:{message_id}"

    def force_key(self, message_id: str) -> str:
        return force_key(self._prefix, message_id)

    async def claim(self, message_id: str, *, force_token: str | None = None) -> tuple[Claim, Lease | None]:
        """Look up the verdict and, if there is none, try to take the in-flight lease. With the
        ``force_token`` of a forced replay that Redis still holds, a stored verdict is ignored."""
        token = uuid.uuid4().hex
        keys = [self.verdict_key(message_id), self.lease_key(message_id), self.force_key(message_id)]
        args: list[str | int] = [token, self._lease_ttl_ms, force_token or ""]
        code, payload = await self._claim(keys=keys, args=args)
        if code == 1:
            return Claim(ClaimState.VERDICT, verdict=bytes(payload)), None
        if code == 2:
            return Claim(ClaimState.ACQUIRED), Lease(message_id, token)
        return Claim(ClaimState.BUSY, lease_ttl_ms=max(0, int(payload))), None

    async def save(self, lease: Lease, verdict_json: bytes, *, force_token: str | None = None) -> bytes:
        """Store the verdict with its TTL and release the lease; returns the verdict that is stored
        (``verdict_json``, or one stored first by a worker that took over a lost lease). With the
        ``force_token`` of a forced replay that Redis still holds, ``verdict_json`` replaces any stored
        verdict and the token is used up."""
        keys = [
            self.verdict_key(lease.message_id),
            self.lease_key(lease.message_id),
            self.force_key(lease.message_id),
        ]
        args: list[bytes | str | int] = [verdict_json, self._verdict_ttl_s, lease.token, force_token or ""]
        existing = await self._save(keys=keys, args=args)
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

    def chunk_key(self, key: str) -> str:
        return f"{self._prefix}chunk:{key}"

    async def load_chunks(self, keys: list[str]) -> list[bytes | None]:
        """The stored verdicts of chunks (``worker.chunking.chunk_key``), None where there is none yet."""
        values = await self._redis.mget([self.chunk_key(key) for key in keys])
        return [
            value if value is None or isinstance(value, bytes) else str(value).encode() for value in values
        ]

    async def save_chunk(self, key: str, verdict_json: bytes) -> None:
        """Keep one chunk's verdict until the message's own verdict is stored (a day at most)."""
        await self._redis.set(self.chunk_key(key), verdict_json, ex=min(self._verdict_ttl_s, CHUNK_TTL_S))


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
