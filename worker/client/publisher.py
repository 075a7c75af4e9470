"""``Publisher``: what a service uses to send texts to guardq and, when it needs the answer now, await the
verdict. One publisher holds one producer, one reader of the verdict topic (opened at the first
``moderate``) and, when given ``redis_url``, one Redis pool; every call shares them."""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections.abc import Mapping
from types import TracebackType
from typing import Any

from opentelemetry.sdk.trace import TracerProvider
from redis.asyncio import Redis
from redis.exceptions import RedisError

from worker.client.options import settings_from_keywords
from worker.client.waiter import AnyVerdict, Expected, VerdictWaiter
from worker.config.settings import Settings
from worker.core.guard_types import Kind
from worker.core.verdict import parse_verdict
from worker.kafka.publish import InputProducer
from worker.store.connect import RedisSecurity, connect_redis
from worker.store.keys import RedisKeys

log = logging.getLogger(__name__)

# While a moderate() waits on the verdict topic, Redis (when given) is asked again after these waits:
# a safety net for a verdict the topic reader missed, never a tight loop.
REDIS_CHECKS_S = (0.5, 1.0, 2.0, 4.0)


class ModerationTimeout(TimeoutError):
    """No verdict for ``message_id`` within the timeout: the caller applies its own fail-open or
    fail-closed rule now. ``published`` says whether the broker had the request by then (if so, it will
    still be moderated, and its verdict stored under that id)."""

    def __init__(self, message_id: str, timeout_s: float, *, published: bool) -> None:
        state = "published" if published else "not yet published"
        super().__init__(f"no verdict for id {message_id!r} within {timeout_s:g} s ({state})")
        self.message_id = message_id
        self.timeout_s = timeout_s
        self.published = published


class VerdictConflict(ValueError):
    """The id already has a verdict for other content (a reused id): guardq will not judge this text
    under it. Publish it under a new id."""

    def __init__(self, message_id: str) -> None:
        super().__init__(f"id {message_id!r} already has a verdict for other content: use a new id")
        self.message_id = message_id


class Publisher:
    """Publishes texts to guardq's input topic and awaits their verdicts.

    ``Publisher()`` with keywords, or ``Publisher.from_env()`` with the worker's ``GUARDQ_*`` variables;
    use it as an async context manager. Values are checked as the worker checks them (``ValueError``)."""

    def __init__(
        self,
        bootstrap: str = "127.0.0.1:9092",
        topic: str = "moderation.requests",
        *,
        redis_url: str | None = None,
        redis_prefix: str = "guardq:",
        verdict_topic: str = "moderation.verdicts",
        tracer_provider: TracerProvider | None = None,
        **options: str | int | None,
    ) -> None:
        given: dict[str, Any] = {
            "bootstrap": bootstrap,
            "topic": topic,
            "redis_url": redis_url,
            "redis_prefix": redis_prefix,
            "verdict_topic": verdict_topic,
            **options,
        }
        settings = settings_from_keywords("Publisher", given)
        self._init(settings, use_redis=redis_url is not None, tracer_provider=tracer_provider)

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] | None = None, *, tracer_provider: TracerProvider | None = None
    ) -> Publisher:
        """A publisher configured by the worker's variables (GUARDQ_KAFKA_*, GUARDQ_INPUT_TOPIC,
        GUARDQ_VERDICT_TOPIC, GUARDQ_REDIS_* ...); Redis is used when GUARDQ_REDIS_URL is set."""
        env = os.environ if env is None else env
        publisher = cls.__new__(cls)
        publisher._init(
            Settings.load(env), use_redis=bool(env.get("GUARDQ_REDIS_URL")), tracer_provider=tracer_provider
        )
        return publisher

    def _init(self, settings: Settings, *, use_redis: bool, tracer_provider: TracerProvider | None) -> None:
        self._settings = settings
        self._use_redis = use_redis
        self._producer = InputProducer(settings, tracer_provider=tracer_provider)
        self._waiter: VerdictWaiter | None = None
        self._waiter_started = asyncio.Lock()
        self._redis: Redis | None = None
        self._keys = RedisKeys(settings.redis_prefix)
        self._open = False

    async def __aenter__(self) -> Publisher:
        await self._producer.__aenter__()
        try:
            if self._use_redis:
                self._redis = connect_redis(
                    self._settings.redis_url,
                    max_connections=64,
                    security=RedisSecurity.from_settings(self._settings),
                )
        except BaseException:
            await self._producer.__aexit__(None, None, None)
            raise
        self._open = True
        return self

    async def __aexit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        async with self._waiter_started:  # a reader still starting is stopped too
            self._open = False
            if self._waiter is not None:
                await self._waiter.stop()
                self._waiter = None
        if self._redis is not None:
            await self._redis.aclose(close_connection_pool=True)
            self._redis = None
        await self._producer.__aexit__(*exc)

    async def publish(
        self,
        text: str,
        *,
        id: str | None = None,
        kind: Kind = "prompt",
        prompt: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> str:
        """Publish one text for moderation and return its id once the broker has it. The trace of the
        current span (if any) continues in the request's ``traceparent``. Concurrent calls share batches.
        Raises ``InvalidInput`` for a request the worker would dead-letter (empty text, too long ...)."""
        document = _document(text, id, kind, prompt, metadata)
        await self._producer.publish(document)
        return str(document["id"])

    async def moderate(
        self,
        text: str,
        *,
        id: str | None = None,
        kind: Kind = "prompt",
        prompt: str | None = None,
        metadata: dict[str, Any] | None = None,
        timeout_s: float = 10.0,
        final_only: bool = False,
    ) -> AnyVerdict:
        """Publish one text and wait for its verdict. A verdict already stored for this id and content (with
        ``redis_url``) is returned without publishing again. During a guard outage the worker may answer
        with a ``ProvisionalVerdict`` first; ``final_only`` waits for the guard's verdict instead.

        Raises ``InvalidInput`` for a bad request (before anything else); ``ModerationTimeout`` (carrying
        the id) when no verdict comes within ``timeout_s``, which covers everything: starting the verdict
        reader, Redis, the publish; ``VerdictConflict`` when Redis holds a verdict of this id for other
        content (without Redis, the worker dead-letters such a request and the call times out)."""
        prepared = self._producer.prepare(_document(text, id, kind, prompt, metadata))
        request = prepared.request
        published = False
        try:
            async with asyncio.timeout(timeout_s):  # everything counts: the reader, Redis, the publish
                stored = await self._stored(request.id, request.content_sha256, final_only)
                if stored is not None:
                    return stored
                waiter = await self._verdict_reader()
                expected = waiter.expect(request.id, request.content_sha256, final_only=final_only)
                try:
                    await (await self._producer.enqueue_prepared(prepared))
                    published = True
                    return await self._wait(expected)
                finally:
                    waiter.forget(expected)
        except TimeoutError:
            raise ModerationTimeout(request.id, timeout_s, published=published) from None

    async def _wait(self, expected: Expected) -> AnyVerdict:
        """Until the reader hands over the verdict; with Redis, asking it too after each pause."""
        checks = iter(REDIS_CHECKS_S)
        while not expected.verdict.done():
            pause = next(checks, REDIS_CHECKS_S[-1]) if self._redis is not None else None
            await asyncio.wait([expected.verdict], timeout=pause)
            if not expected.verdict.done() and self._redis is not None:
                stored = await self._stored(expected.message_id, expected.content_sha256, expected.final_only)
                if stored is not None:
                    return stored
        return expected.verdict.result()

    async def _stored(self, message_id: str, digest: str, final_only: bool) -> AnyVerdict | None:
        """The verdict Redis holds for ``message_id`` when it answers this content (None without Redis)."""
        if self._redis is None:
            return None
        try:
            raw = await self._redis.get(self._keys.verdict(message_id))
        except (RedisError, OSError) as exc:  # the verdict topic still answers
            log.warning("Redis did not answer (%s); waiting on the verdict topic", exc)
            return None
        if raw is None:
            return None
        try:
            verdict = parse_verdict(raw)
        except ValueError:
            return None  # not a verdict guardq wrote: the worker will not trust it either
        if verdict.content_sha256 and verdict.content_sha256 != digest:
            raise VerdictConflict(message_id)
        if final_only and verdict.provisional:
            return None
        return verdict

    async def _verdict_reader(self) -> VerdictWaiter:
        async with self._waiter_started:
            if not self._open:
                raise RuntimeError("Publisher used outside 'async with'")
            if self._waiter is None:
                waiter = VerdictWaiter(self._settings)
                await waiter.start()
                self._waiter = waiter
        return self._waiter


def _document(
    text: str, message_id: str | None, kind: Kind, prompt: str | None, metadata: dict[str, Any] | None
) -> dict[str, Any]:
    document: dict[str, Any] = {"id": message_id or str(uuid.uuid4()), "text": text, "kind": kind}
    if prompt is not None:
        document["prompt"] = prompt
    if metadata:
        document["metadata"] = metadata
    return document
