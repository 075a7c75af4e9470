"""Redis: the verdict store, the in-flight leases and chunk verdicts. Every script is in this module;
every key shape is in ``worker.store.keys``.

A verdict is bound to the content it judged: the stored JSON names ``content_sha256``, and each lease
carries the hash of the content being moderated. A delivery whose id has a verdict, or a lease, for other
content gets ``ClaimState.CONFLICT`` (the pipeline dead-letters it as ``id_conflict`` without a guard call,
and the stored verdict is untouched). A verdict stored before content binding existed names no hash and
is served to any content of its id.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import uuid
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError

from worker.core.errors import IdConflict
from worker.store.batching import ScriptBatcher
from worker.store.keys import RedisKeys

log = logging.getLogger(__name__)

CHUNK_TTL_S = 86_400
CONTENT_HASH_CHARS = 64  # SHA-256, hex

# The content hash a stored verdict names (nil for a verdict stored before content binding), and whether
# it is provisional (given during a guard outage: it never counts as moderated, a final verdict replaces it).
_CONTENT_OF = """
local function facts_of(verdict)
  local ok, doc = pcall(cjson.decode, verdict)
  if ok and type(doc) == 'table' then
    local content = nil
    if type(doc['content_sha256']) == 'string' then content = doc['content_sha256'] end
    return content, doc['provisional'] == true
  end
  return nil, false
end
"""

# One round trip (KEYS: verdict, lease, force; ARGV: token, lease ms, force token, content hash): a stored
# verdict for this content wins (code 1); one for other content is a conflict (4); else take the lease if
# free (2); a lease held for other content is a conflict too (4); else report how long it is held (3).
# A forced replay (ARGV[3] = its token, equal to the value `guardq dlq replay --force` wrote at KEYS[3])
# ignores the stored verdict: the message is moderated again. A header alone, without that key, forces nothing.
_CLAIM = (
    _CONTENT_OF
    + """
if ARGV[3] == '' or redis.call('GET', KEYS[3]) ~= ARGV[3] then
  local verdict = redis.call('GET', KEYS[1])
  if verdict then
    local stored, provisional = facts_of(verdict)
    if stored and stored ~= ARGV[4] then return {4, ''} end
    if not provisional then return {1, verdict} end
  end
end
if redis.call('SET', KEYS[2], ARGV[1] .. ':' .. ARGV[4], 'NX', 'PX', ARGV[2]) then return {2, ''} end
local holder = redis.call('GET', KEYS[2])
-- A lease of an older guardq (a token alone) names no content: wait for it like any other.
if holder and string.sub(holder, -65, -65) == ':' and string.sub(holder, -64) ~= ARGV[4] then
  return {4, ''}
end
return {3, tostring(redis.call('PTTL', KEYS[2]))}
"""
)

# Store the verdict and drop our lease together, so no reader sees neither (KEYS: verdict, lease, force;
# ARGV: verdict, ttl s, lease value, force token, content hash). The first final verdict wins: if another
# worker took over a lease we lost and stored first, its verdict is returned instead (1), unless it judged
# other content (4: a conflict). A provisional verdict stored is replaced by ours (final or provisional);
# a final one is never replaced by a provisional one. A forced replay whose token still stands at KEYS[3] overwrites whatever is
# stored, and uses the token up: a redelivery of the same record afterwards finds the new verdict like any
# duplicate. Code 0: ours is stored.
_SAVE = (
    _CONTENT_OF
    + """
if redis.call('GET', KEYS[2]) == ARGV[3] then redis.call('DEL', KEYS[2]) end
if ARGV[4] ~= '' and redis.call('GET', KEYS[3]) == ARGV[4] then
  redis.call('DEL', KEYS[3])
else
  local existing = redis.call('GET', KEYS[1])
  if existing then
    local stored, provisional = facts_of(existing)
    if stored and stored ~= ARGV[5] then return {4, ''} end
    if not provisional then return {1, existing} end
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return {0, ''}
"""
)

# KEYS: lease, verdict. 1: renewed; 2: not held but a final verdict is stored (its holder just saved it,
# in a pipeline that crossed this renewal): nothing lost; 0: lost (a provisional verdict stored does not
# count: the final moderation of a parked message is what the lease was for).
_RENEW = (
    _CONTENT_OF
    + """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
local verdict = redis.call('GET', KEYS[2])
if verdict then
  local _, provisional = facts_of(verdict)
  if not provisional then return 2 end
end
return 0
"""
)

# Delete a key only while it holds ARGV[1]: a lease by its holder, a force token by its replay.
_DELETE_IF = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# What readiness and the start-up check run: a script (EVALSHA allowed?) that writes (disk, replicas,
# memory, permissions) one short-lived key.
_PROBE = """
redis.call('SET', KEYS[1], ARGV[1], 'PX', 10000)
return 1
"""


class ClaimState(enum.Enum):
    """What ``VerdictStore.claim`` found."""

    VERDICT = "verdict"  # a verdict for this content is stored: no guard call
    ACQUIRED = "acquired"  # we hold the lease: moderate
    BUSY = "busy"  # another delivery of this content holds the lease: wait and re-check
    CONFLICT = "conflict"  # the id has a verdict, or a lease, for other content


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
    content_sha256: str

    @property
    def value(self) -> str:
        """What the lease key holds: the holder's token and the hash of the content it moderates."""
        return f"{self.token}:{self.content_sha256}"


class VerdictStore:
    """Idempotent verdict storage with in-flight leases, bound to content."""

    def __init__(self, redis: Redis, *, prefix: str, verdict_ttl_s: int, lease_ttl_s: float) -> None:
        self._redis = redis
        self.keys = RedisKeys(prefix)
        self._verdict_ttl_s = verdict_ttl_s
        self._lease_ttl_ms = int(lease_ttl_s * 1000)
        self._claim = redis.register_script(_CLAIM)
        self._save = redis.register_script(_SAVE)
        self._renew = redis.register_script(_RENEW)
        self._delete_if = redis.register_script(_DELETE_IF)
        self._probe = redis.register_script(_PROBE)
        self._batch = ScriptBatcher(redis)

    async def aclose(self) -> None:
        """Close the connection the claims and saves travel on (the client's pool is the caller's)."""
        await self._batch.aclose()

    @property
    def script_round_trips(self) -> int:
        """Pipelines of claims and saves sent so far."""
        return self._batch.round_trips

    @property
    def lease_ttl_s(self) -> float:
        return self._lease_ttl_ms / 1000

    def _keys_of(self, message_id: str) -> list[str]:
        return [self.keys.verdict(message_id), self.keys.lease(message_id), self.keys.force(message_id)]

    async def claim(
        self, message_id: str, content_sha256: str, *, force_token: str | None = None
    ) -> tuple[Claim, Lease | None]:
        """Look up the verdict and, if there is none, try to take the in-flight lease for this content.
        With the ``force_token`` of a forced replay that Redis still holds, a stored verdict is ignored."""
        token = os.urandom(16).hex()
        args: list[str | int] = [token, self._lease_ttl_ms, force_token or "", content_sha256]
        code, payload = await self._batch.run(self._claim, self._keys_of(message_id), args)
        if code == 1:
            return Claim(ClaimState.VERDICT, verdict=bytes(payload)), None
        if code == 2:
            return Claim(ClaimState.ACQUIRED), Lease(message_id, token, content_sha256)
        if code == 4:
            return Claim(ClaimState.CONFLICT), None
        return Claim(ClaimState.BUSY, lease_ttl_ms=max(0, int(payload))), None

    async def save(self, lease: Lease, verdict_json: bytes, *, force_token: str | None = None) -> bytes:
        """Store the verdict with its TTL and release the lease; returns the verdict that is stored
        (``verdict_json``, or one of the same content stored first by a worker that took over a lost
        lease; ``IdConflict`` if that one judged other content). With the ``force_token`` of a forced
        replay that Redis still holds, ``verdict_json`` replaces any stored verdict and the token is used up."""
        args: list[bytes | str | int] = [
            verdict_json,
            self._verdict_ttl_s,
            lease.value,
            force_token or "",
            lease.content_sha256,
        ]
        code, existing = await self._batch.run(self._save, self._keys_of(lease.message_id), args)
        if code == 0:
            return verdict_json
        if code == 4:
            raise IdConflict("a verdict for other content was stored under this id while it was moderated")
        return existing if isinstance(existing, bytes) else str(existing).encode()

    async def renew_many(self, leases: list[Lease]) -> list[bool]:
        """Extend many leases in one pipelined round trip; False for each one that was lost (True too for
        one whose verdict is stored: it was saved while the renewal was under way)."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for lease in leases:
                await self._renew(
                    keys=[self.keys.lease(lease.message_id), self.keys.verdict(lease.message_id)],
                    args=[lease.value, self._lease_ttl_ms],
                    client=pipe,
                )
            results = await pipe.execute()
        return [bool(result) for result in results]

    async def release(self, lease: Lease) -> None:
        """Give the lease up without a verdict (the message was dead-lettered or the work dropped)."""
        await self._delete_if(keys=[self.keys.lease(lease.message_id)], args=[lease.value])

    async def drop_force(self, message_id: str, token: str) -> None:
        """Withdraw a forced replay's authorisation (its message was dead-lettered again), if it still
        stands: a later delivery of that record must not overwrite anything."""
        await self._delete_if(keys=[self.keys.force(message_id)], args=[token])

    async def replay_origin(self, token: str) -> bytes | None:
        """The record key `guardq dlq replay` registered for ``token`` (None: not a replay of ours)."""
        value = await self._redis.get(self.keys.replay(token))
        return value if value is None or isinstance(value, bytes) else str(value).encode()

    async def load_chunks(self, digests: list[str]) -> list[bytes | None]:
        """The stored verdicts of chunks by content digest (``worker.processing.chunking.chunk_digest``), None where
        there is none yet."""
        values = await self._redis.mget([self.keys.chunk(digest) for digest in digests])
        return [
            value if value is None or isinstance(value, bytes) else str(value).encode() for value in values
        ]

    async def save_chunk(self, digest: str, verdict_json: bytes) -> None:
        """Keep one chunk's verdict for redeliveries (a day at most)."""
        await self._redis.set(self.keys.chunk(digest), verdict_json, ex=min(self._verdict_ttl_s, CHUNK_TTL_S))

    async def probe(self) -> None:
        """Run a script that writes one short-lived key: raises what Redis answers when scripts may not run
        or writes are refused (NOPERM, MISCONF, NOREPLICAS, READONLY, OOM, BUSY ...)."""
        await self._probe(keys=[self.keys.probe()], args=[uuid.uuid4().hex])

    async def check_claims(self) -> None:
        """Run the claim script once for a probe id and release what it took: raises what Redis answers
        when the real scripts cannot run here (CROSSSLOT/MOVED on a Cluster endpoint, NOPERM ...)."""
        probe_id = f"probe-{uuid.uuid4().hex}"
        _, lease = await self.claim(probe_id, "0" * CONTENT_HASH_CHARS)
        if lease is not None:
            await self.release(lease)


class LeaseKeeper:
    """Keeps every held lease alive: one pipelined renewal of all of them every third of the lease TTL,
    so holding a lease (through retries and waits) costs no task of its own."""

    def __init__(self, store: VerdictStore) -> None:
        self._store = store
        self._held: dict[str, Lease] = {}

    def holding(self, lease: Lease) -> _Holding:
        """``with keeper.holding(lease):`` renews ``lease`` for as long as the block runs."""
        return _Holding(self._held, lease)

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


class _Holding:
    """A lease in a ``LeaseKeeper``'s care for the duration of a block (a plain class: one per message)."""

    __slots__ = ("_held", "_lease")

    def __init__(self, held: dict[str, Lease], lease: Lease) -> None:
        self._held = held
        self._lease = lease

    def __enter__(self) -> None:
        self._held[self._lease.token] = self._lease

    def __exit__(self, *exc_info: object) -> None:
        self._held.pop(self._lease.token, None)
