"""How one message gets its guard verdict: the circuit breaker, the shared 429 throttle, the concurrency
limiter and the retry policy around each call, and chunking for texts longer than the model's window.

A text that does not fit (longer than the chars budget, or answered with a context-length 400) is split
into overlapping chunks (``worker.processing.chunking``); each chunk is moderated under the same rules and its verdict
kept in Redis under a key derived from the model and the chunk's content, so a redelivery does not pay for
it again; the chunk verdicts fold into one. Attempts are counted exactly, over every chunk and every retry.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from opentelemetry.context import Context
from opentelemetry.trace import Link, SpanKind, Tracer

from worker.core.errors import GuardContextOverflow, GuardError, GuardTimeout
from worker.core.guard_types import GuardRequest, GuardVerdict
from worker.guard.base import BatchGuardBackend, GuardBackend
from worker.processing import chunking
from worker.processing.adaptive import AdaptiveLimit
from worker.processing.breaker import CircuitBreaker, OutageFallback
from worker.processing.guardbatch import Answer as BatchAnswer
from worker.processing.guardbatch import GuardBatcher
from worker.processing.limiter import ConcurrencyLimiter
from worker.processing.retry import Backoffs, GuardCallFailed, RetryPolicy, until_available
from worker.processing.throttle import Throttle
from worker.store.verdicts import VerdictStore
from worker.telemetry import tracing
from worker.telemetry.metrics import Metrics

log = logging.getLogger(__name__)
_T = TypeVar("_T")

# The chars budget per call when neither GUARDQ_CHUNK_CHARS nor the guard's reported window sets one.
DEFAULT_CHUNK_CHARS = 24_000


@dataclass(frozen=True)
class Answer:
    """A message's verdict, the guard calls it cost and the number of chunks it was judged in."""

    verdict: GuardVerdict
    attempts: int
    chunks: int


def _size(request: GuardRequest) -> int:
    return len(request.text) + len(request.prompt or "")


class GuardCaller:
    """Obtains verdicts from the guard backend; safe to use from many messages at once."""

    def __init__(
        self,
        guard: GuardBackend,
        *,
        limiter: ConcurrencyLimiter,
        breaker: CircuitBreaker,
        throttle: Throttle,
        retry: RetryPolicy,
        tracer: Tracer,
        store: VerdictStore,
        chunk_chars: int | None,
        metrics: Metrics,
        adaptive: AdaptiveLimit | None = None,
        backoffs: Backoffs | None = None,
        batch_max: int = 32,
        batch_wait_s: float = 0.005,
    ) -> None:
        self._guard = guard
        self._limiter = limiter
        self._breaker = breaker
        self._throttle = throttle
        self._retry = retry
        self._tracer = tracer
        self._store = store
        self._chunk_chars = chunk_chars
        self._metrics = metrics
        self._adaptive = adaptive
        self._backoffs = backoffs or Backoffs()
        self._batcher = (
            GuardBatcher(self._send_batch, self._limiter.slot, max_size=batch_max, wait_s=batch_wait_s)
            if isinstance(guard, BatchGuardBackend)
            else None
        )

    def _budget(self) -> int:
        if self._chunk_chars is not None:
            return self._chunk_chars
        return chunking.chunk_chars_for(self._guard.context_window, default_chars=DEFAULT_CHUNK_CHARS)

    async def answer(self, message_id: str, request: GuardRequest, *, fresh: bool = False) -> Answer:
        """The verdict of ``request``, chunked when it does not fit. Raises ``GuardCallFailed`` (with every
        attempt made) when a call fails for good: a permanent error, or retries exhausted. ``fresh`` (a
        forced replay) ignores chunk verdicts kept from earlier deliveries."""
        budget = self._budget()
        made = 0
        while True:
            parts = chunking.requests_for(request, budget, chunking.overlap_for(budget))
            try:
                verdict, attempts = await self._judge(parts, made, fresh=fresh)
                return Answer(verdict, made + attempts, len(parts))
            except GuardCallFailed as failed:
                made += failed.attempts
                overflowed = isinstance(failed.error, GuardContextOverflow)
                # Halve from what was really sent, so a short text that overflows is not cut again and again.
                longest = max(_size(part) for part in parts)
                next_budget = chunking.smaller(min(budget, longest)) if overflowed else None
                if next_budget is None:
                    raise GuardCallFailed(failed.error, made) from failed.error
                log.info(
                    "id=%s does not fit the guard's window in %d chunk(s) of %d chars; trying %d",
                    message_id,
                    len(parts),
                    budget,
                    next_budget,
                )
                budget = next_budget

    async def _judge(
        self, parts: list[GuardRequest], made_before: int, *, fresh: bool
    ) -> tuple[GuardVerdict, int]:
        """One verdict over ``parts`` (one part: a plain call), and the attempts this cost."""
        if len(parts) == 1:
            return await self._until_answered(parts[0], made_before)
        # Keyed by model and content: chunks cut another way, or judged by another model, never stand in.
        keys = [chunking.chunk_digest(self._guard.model, part) for part in parts]
        cached = [None] * len(keys) if fresh else await self._store.load_chunks(keys)
        verdicts: list[GuardVerdict] = []
        made = 0
        for key, part, known in zip(keys, parts, cached, strict=True):
            if known is not None:
                verdicts.append(_verdict_from_json(known))
                continue
            try:
                verdict, attempts = await self._until_answered(part, made_before + made)
            except GuardCallFailed as failed:
                raise GuardCallFailed(failed.error, made + failed.attempts) from failed.error
            made += attempts
            await until_available(
                functools.partial(self._store.save_chunk, key, _verdict_to_json(verdict)),
                what=f"keeping chunk {key}",
            )
            verdicts.append(verdict)
        return chunking.aggregate(verdicts, parts[0].kind), made

    async def _until_answered(self, request: GuardRequest, made_before: int) -> tuple[GuardVerdict, int]:
        """Guard calls under the retry policy; when the retries end because the circuit opened, wait for
        it to close and go on with a fresh budget (``_wait_for_guard``)."""
        made = 0
        while True:
            try:
                verdict, attempts = await self._retry.call(
                    functools.partial(self._call, request, made_before + made),
                    hold=lambda: self._breaker.is_open,
                    sleep=self._backoffs.sleep,
                )
                return verdict, made + attempts
            except GuardCallFailed as failed:
                made += failed.attempts
                if isinstance(failed.error, OutageFallback):  # its last attempt made no call
                    raise GuardCallFailed(failed.error, made - 1) from failed.error
                if not self._wait_for_guard(failed.error):
                    raise GuardCallFailed(failed.error, made) from failed.error

    def _wait_for_guard(self, error: GuardError) -> bool:
        """Whether retries that ended on a transient ``error`` ended because the circuit opened (the guard
        is down, not this message's fault): then the message waits for the guard and goes on with a fresh
        budget (a bad reply's own cap of two tries counts within each budget)."""
        return error.retriable and self._breaker.is_open

    async def _call(self, request: GuardRequest, made_before: int, attempt: int) -> GuardVerdict:
        await self._breaker.admit()  # while the circuit is open this waits: no attempt is spent
        await self._throttle.wait()  # inside a 429's Retry-After window nobody calls
        with tracing.child_span(self._tracer, "guard moderate", SpanKind.CLIENT) as span:
            span.set_attribute("guardq.guard.model", self._guard.model)
            span.set_attribute("guardq.attempt", made_before + attempt)
            if attempt > 1:
                self._metrics.guard_retries.inc()
            if self._batcher is not None:
                return await self._batcher.submit(request, span.get_span_context())
            async with self._limiter.slot():
                return await self._request(
                    functools.partial(self._guard.moderate, request), texts=1, text=request
                )

    async def _send_batch(self, requests: list[GuardRequest], links: list[Link]) -> list[BatchAnswer]:
        """One batch request (the batcher holds its slot), in a span of its own linked to each message's.
        A batch the guard refuses as a whole for what it holds (a 400, a reply it could not match to its
        inputs) is sent again one text per request, so one bad text costs the others nothing."""
        assert isinstance(self._guard, BatchGuardBackend)
        with self._tracer.start_as_current_span(
            "guard moderate batch",
            context=Context(),  # its own trace: it serves many
            kind=SpanKind.CLIENT,
            links=links,
            attributes={"guardq.guard.model": self._guard.model, "guardq.batch.size": len(requests)},
        ):
            try:
                answers = await self._batch_request(requests)
            except GuardError as exc:
                if len(requests) == 1 or exc.guard_down or exc.fatal:
                    raise
                log.info("a batch of %d was refused (%s); sending its texts one by one", len(requests), exc)
                answers = [await self._alone(request) for request in requests]  # within this one slot
        for answer in answers:
            if isinstance(answer, GuardError):  # this text's own entry was bad; the guard answered
                self._metrics.guard_errors.labels(type(answer).__name__).inc()
        return answers

    async def _batch_request(self, requests: list[GuardRequest]) -> list[BatchAnswer]:
        assert isinstance(self._guard, BatchGuardBackend)
        send = functools.partial(self._guard.moderate_batch, requests)
        return await self._request(send, texts=len(requests), text=tuple(requests))

    async def _alone(self, request: GuardRequest) -> BatchAnswer:
        try:
            (answer,) = await self._batch_request([request])
        except GuardError as exc:
            return exc
        return answer

    async def _request(self, send: Callable[[], Awaitable[_T]], *, texts: int, text: object = None) -> _T:
        """One guard request: counted, timed, and told to the breaker, the 429 throttle and the
        adaptive cap."""
        self._metrics.guard_calls.inc()
        self._metrics.guard_texts.inc(texts)
        started = time.monotonic()
        try:
            answer = await send()
        except GuardError as exc:
            self._metrics.guard_errors.labels(type(exc).__name__).inc()
            # A 400 or a reply that is not a verdict is an answer: the guard is up.
            in_flight = self._limiter.in_flight
            self._breaker.record(success=not exc.guard_down, error=exc, text=text, in_flight=in_flight)
            if exc.status == 429 and (exc.retry_after_s is not None or self._adaptive is None):
                # A Retry-After is always honoured by every call. Without one, a fixed cap has
                # nothing else to slow it (hold everyone a second); the adaptive cap shrinks
                # instead, and only the refused call waits, for its own backoff.
                self._throttle.hold_for(exc.retry_after_s)
            self._sample(started, overloaded=_overloaded(exc), timed_out=isinstance(exc, GuardTimeout))
            raise
        finally:
            self._metrics.guard_latency.observe(time.monotonic() - started)
        for _ in range(texts):  # every text answered is a success (a half-open trial each)
            self._breaker.record(success=True)
        self._sample(started, overloaded=False)
        return answer

    def _sample(self, started: float, *, overloaded: bool, timed_out: bool = False) -> None:
        """Tell the adaptive cap (GUARDQ_CONCURRENCY=auto) how this call went."""
        if self._adaptive is not None:
            self._adaptive.record(
                time.monotonic() - started, started=started, overloaded=overloaded, timed_out=timed_out
            )


def _overloaded(error: GuardError) -> bool:
    """A refusal for load (429, 503) or a timeout: the guard has more than it can serve."""
    return isinstance(error, GuardTimeout) or error.status in {429, 503}


def _verdict_to_json(verdict: GuardVerdict) -> bytes:
    return json.dumps(
        {
            "label": verdict.label,
            "categories": list(verdict.categories),
            "refusal": verdict.refusal,
            "model": verdict.model,
        },
        separators=(",", ":"),
    ).encode("utf-8")


def _verdict_from_json(raw: bytes) -> GuardVerdict:
    document = json.loads(raw)
    return GuardVerdict(
        label=document["label"],
        categories=tuple(document["categories"]),
        refusal=document["refusal"],
        model=document["model"],
    )
