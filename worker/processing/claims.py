"""The verdict store as one message's moderation uses it: take the id's in-flight lease (or find its stored
verdict), store the verdict, drop the lease. Deliveries of one id in this process wait for each other on an
event instead of polling Redis; one elsewhere is polled, never past the moment its lease would expire."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging

from opentelemetry.trace import SpanKind, Tracer
from redis.exceptions import RedisError

from worker.core.errors import IdConflict
from worker.core.messages import ModerationRequest
from worker.processing.retry import until_available
from worker.store.verdicts import ClaimState, Lease, VerdictStore
from worker.telemetry import tracing

log = logging.getLogger(__name__)

LEASE_POLL_MIN_S = 0.05
LEASE_POLL_MAX_S = 1.0


class Claims:
    """Leases and verdict stores of the messages this process moderates."""

    def __init__(self, store: VerdictStore, tracer: Tracer) -> None:
        self._store = store
        self._tracer = tracer
        # Ids whose lease a delivery in this process holds: other deliveries of them wait on the event.
        self._moderating: dict[str, asyncio.Event] = {}

    def begin(self, message_id: str) -> asyncio.Event:
        """Note that this process holds ``message_id``'s lease; ``end`` it with the event returned."""
        done = self._moderating[message_id] = asyncio.Event()
        return done

    def end(self, message_id: str, done: asyncio.Event) -> None:
        """The lease is stored over or dropped: wake the deliveries of the same id waiting here."""
        if self._moderating.get(message_id) is done:
            del self._moderating[message_id]
        done.set()

    async def store(self, lease: Lease, document: bytes, *, force_token: str | None) -> bytes:
        """Store the verdict, waiting out a Redis outage here rather than calling the guard again.
        Returns what is stored: ours, or the verdict of a worker that took over a lost lease first."""
        with tracing.child_span(self._tracer, "redis store", SpanKind.CLIENT) as span:
            span.set_attribute("db.system.name", "redis")
            return await until_available(
                functools.partial(self._store.save, lease, document, force_token=force_token),
                what=f"storing the verdict of id={lease.message_id}",
            )

    async def release_quietly(self, lease: Lease) -> None:
        """Drop a lease; if Redis is down it expires by itself, and a cancellation must stay one."""
        try:
            await asyncio.shield(self._store.release(lease))
        except (RedisError, OSError) as exc:
            log.warning(
                "could not release the lease of id=%s (%s); it expires by itself", lease.message_id, exc
            )

    async def take(self, request: ModerationRequest, *, force_token: str | None) -> Lease | bytes:
        """Take the in-flight lease, or return the stored verdict (ignored for a standing force token).
        Waits while another delivery of the same content holds the lease: one of this process on its
        completion, one elsewhere by polling. Raises ``IdConflict`` when the id's verdict or lease is for
        other content."""
        poll_s = LEASE_POLL_MIN_S
        while True:
            claim, lease = await self._store.claim(
                request.id, request.content_sha256, force_token=force_token
            )
            if claim.state is ClaimState.ACQUIRED and lease is not None:
                return lease
            if claim.state is ClaimState.VERDICT and claim.verdict is not None:
                return claim.verdict
            if claim.state is ClaimState.CONFLICT:
                raise IdConflict("the id has a verdict, or a moderation in flight, for other content")
            # Busy: another delivery is moderating this content. Re-check once it is done here, or after a
            # short, growing pause, never past the moment its lease would expire.
            wait_s = min(poll_s, max(claim.lease_ttl_ms / 1000, 0.01))
            local = self._moderating.get(request.id)
            if local is not None:
                with contextlib.suppress(TimeoutError):
                    # asyncio.timeout keeps a drain's cancellation (3.11's wait_for may lose it).
                    async with asyncio.timeout(max(wait_s, self._store.lease_ttl_s)):
                        await local.wait()
                continue
            await asyncio.sleep(wait_s)
            poll_s = min(poll_s * 2, LEASE_POLL_MAX_S)
