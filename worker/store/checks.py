"""Start-up checks of the verdict store: can guardq's scripts run here, and will Redis keep its keys?

A Redis that refuses the scripts for good (an ACL without EVAL/EVALSHA, a Cluster endpoint where the
multi-key scripts answer CROSSSLOT or MOVED) is configuration: the worker refuses to start, in one line.
One that refuses for now (MISCONF, BUSY, LOADING, NOREPLICAS, READONLY, OOM) may recover: the worker starts,
readiness stays false and records wait uncommitted until it does. A ``maxmemory-policy`` that evicts
keys would silently undo deduplication and forced replays: a warning says so.
"""

from __future__ import annotations

import logging

from redis.asyncio import Redis
from redis.exceptions import NoPermissionError, RedisError, ResponseError

from worker.core.errors import GuardqError, one_line
from worker.store.verdicts import VerdictStore

log = logging.getLogger(__name__)

# Answers that will not change by waiting: the deployment must change.
_CONFIGURATION_ANSWERS = ("NOPERM", "CROSSSLOT", "MOVED", "ASK", "ERR unknown command", "NOSCRIPT")


class StoreConfigError(GuardqError):
    """Redis cannot serve as guardq's store as configured (permissions, a Cluster endpoint)."""

    fatal = True


def is_configuration_answer(exc: RedisError) -> bool:
    """Whether Redis's error says the deployment, not the moment, is wrong."""
    return isinstance(exc, NoPermissionError) or (
        isinstance(exc, ResponseError) and str(exc).startswith(_CONFIGURATION_ANSWERS)
    )


async def check_store(store: VerdictStore, redis: Redis) -> None:
    """Run the claim script once and read the eviction policy; see the module docstring for what each
    answer does. Connection errors propagate (Redis must answer at start-up)."""
    try:
        await store.check_claims()
    except ResponseError as exc:
        if is_configuration_answer(exc):
            raise StoreConfigError(
                f"Redis refuses guardq's scripts ({one_line(str(exc), 200)}): guardq needs a standalone or "
                "Sentinel-managed primary (not a Cluster endpoint) and a user allowed EVAL, EVALSHA, GET, "
                "SET, DEL, PEXPIRE, PTTL and MGET"
            ) from None
        log.warning("Redis refuses writes for now (%s); starting anyway, not ready until it accepts", exc)
    await _warn_on_eviction(redis)


async def _warn_on_eviction(redis: Redis) -> None:
    try:
        answer = await redis.config_get("maxmemory-policy")
    except RedisError as exc:  # CONFIG is often renamed or forbidden on managed Redis: nothing to tell
        log.debug("cannot read maxmemory-policy: %s", exc)
        return
    policy = answer.get("maxmemory-policy") if isinstance(answer, dict) else None
    if isinstance(policy, bytes):
        policy = policy.decode()
    if policy and policy != "noeviction":
        log.warning(
            "Redis maxmemory-policy is %s: under memory pressure it evicts verdicts, leases and forced-replay "
            "tokens, so deduplication and --force silently stop working; use noeviction",
            policy,
        )
