"""One message, start to finish: validate → idempotency claim → guard → store → publish, or dead-letter.

``Pipeline.handle`` returns the ``Outcome`` once the message is *done*: its verdict is in Redis and the
verdict record acknowledged by the broker, or its dead letter acknowledged. The outcome is decided in one
place, ``_decide``:

- a record the fetch could not decode → dead letter ``undecodable`` (``worker.kafka.batches``);
- bad input (or headers past the caps) → dead letter (reason from the parser);
- a verdict already stored for this content → republish it, no guard call; for other content (a reused
  id), or a moderation of other content in flight → dead letter ``id_conflict``, no guard call;
- guard verdict → store (first verdict wins) and publish;
- transient guard errors that outlast the in-process retries → the next delayed retry topic, while the
  schedule has one (``worker.failures.schedule``); after its last step, or for a permanent guard error → dead letter;
- a fatal guard error (misconfiguration) → raised: the worker stops;
- an infrastructure error (Redis, Kafka) → raised: the caller retries the message, uncommitted;
- anything else (a bug) → dead letter with reason ``internal_error``, so one message cannot stop a partition.

The ``guardq.*`` headers of a record are believed (for a dead letter's coordinates, history and replay
count) only when guardq wrote them: on a retry topic, or on an input record whose replay token Redis holds.
"""

from __future__ import annotations

import functools
import logging
import time

from aiokafka.structs import ConsumerRecord
from opentelemetry.trace import SpanKind, Tracer

from worker.config.settings import Settings
from worker.core.errors import (
    GuardqError,
    InternalError,
    InvalidInput,
    UndecodableRecord,
    is_infrastructure,
    one_line,
)
from worker.core.messages import ModerationRequest, check_headers, parse_request
from worker.core.policy import Action, parse_action
from worker.core.times import utc_now_rfc3339
from worker.core.verdict import ProvisionalVerdict, Verdict, stored_for_publish
from worker.failures.envelope import force_token, replay_token
from worker.failures.outbox import TOO_LARGE, Outbox
from worker.failures.schedule import Hop, RetrySchedule
from worker.kafka.batches import Undecodable
from worker.processing.breaker import OutageFallback
from worker.processing.claims import Claims
from worker.processing.delivery import Delivery, Outcome
from worker.processing.guardcall import Answer, GuardCaller
from worker.processing.retry import GuardCallFailed, until_available
from worker.store.verdicts import LeaseKeeper, VerdictStore
from worker.telemetry import tracing
from worker.telemetry.metrics import Metrics

log = logging.getLogger(__name__)


class Pipeline:
    """Processes single input records; safe to run many at once."""

    def __init__(
        self,
        settings: Settings,
        *,
        store: VerdictStore,
        leases: LeaseKeeper,
        caller: GuardCaller,
        outbox: Outbox,
        tracer: Tracer,
        schedule: RetrySchedule,
        metrics: Metrics,
    ) -> None:
        self._settings = settings
        self._store = store
        self._leases = leases
        self._caller = caller
        self._outbox = outbox
        self._tracer = tracer
        self._schedule = schedule
        self._metrics = metrics
        self._policy = settings.policy
        self._outage_action: Action = parse_action(
            settings.outage_policy if settings.outage_policy != "wait" else "review"
        )
        self._claims = Claims(store, tracer)

    async def handle(self, record: ConsumerRecord) -> Outcome:
        """Process one record until it is done; see the module docstring for what propagates."""
        headers = list(record.headers or ())
        with self._tracer.start_as_current_span(
            f"{record.topic} process", context=tracing.extract(headers), kind=SpanKind.CONSUMER
        ) as span:
            if span.is_recording():  # most traces are not: their attributes would be built for nobody
                span.set_attributes(
                    {
                        "messaging.system": "kafka",
                        "messaging.operation.type": "process",
                        "messaging.destination.name": record.topic,
                        "messaging.destination.partition.id": str(record.partition),
                        "messaging.kafka.offset": record.offset,
                        "messaging.consumer.group.name": self._settings.group_id,
                    }
                )
            delivery = Delivery(
                record,
                span,
                started=time.monotonic(),
                hops=self._schedule.hops_taken(record),
                carried=self._schedule.carried_attempts(record),
                force=force_token(headers),
            )
            outcome = await self._decide(delivery)
            span.set_attribute("guardq.outcome", outcome.value)
            self._metrics.outcomes.labels(outcome.value).inc()
            return outcome

    async def _decide(self, delivery: Delivery) -> Outcome:
        record = delivery.record
        try:
            if isinstance(record, Undecodable):
                raise UndecodableRecord(_undecodable_message(record))
            check_headers(record.headers or ())
            request = parse_request(record.value, self._settings.max_text_chars)
        except (InvalidInput, UndecodableRecord) as exc:
            log.warning("dead-lettering %s: %s", delivery.where, exc)
            await self._dead_letter(delivery, exc, attempts=0)
            return Outcome.DEAD_LETTERED
        delivery.message_id = request.id
        delivery.span.set_attribute("messaging.message.id", request.id)
        try:
            return await self._moderate(delivery, request)
        except GuardqError as exc:
            if exc.fatal:
                raise
            error: GuardqError = exc
        except Exception as exc:
            if is_infrastructure(exc):
                raise
            log.exception("internal error on id=%s; dead-lettering it", request.id)
            error = InternalError(one_line(f"{type(exc).__name__}: {exc}"))
        await self._dead_letter(delivery, error, attempts=delivery.carried)
        return Outcome.DEAD_LETTERED

    async def _moderate(self, delivery: Delivery, request: ModerationRequest) -> Outcome:
        # `guardq dlq replay --force`: moderate again and overwrite, if Redis holds the replay's token.
        lease = await self._claims.take(request, force_token=delivery.force)
        if isinstance(lease, bytes):
            await self._publish(delivery, request.id, lease, built_by=None)
            return Outcome.DUPLICATE
        stored: bytes | None = None
        built: Verdict | ProvisionalVerdict
        done = self._claims.begin(request.id)
        try:
            with self._leases.holding(lease):
                try:
                    # A forced replay judges every chunk afresh, once: its retry hops reuse what it judged.
                    fresh = delivery.force is not None and delivery.hops == 0
                    answer = await self._caller.answer(request.id, request.guard_request(), fresh=fresh)
                except GuardCallFailed as failed:
                    if not isinstance(failed.error, OutageFallback):
                        return await self._on_guard_failure(delivery, failed)
                    attempts = delivery.carried + failed.attempts
                    if delivery.force is not None:
                        # A forced replay re-judges an id that has a final verdict: that verdict stands
                        # (never replaced by a provisional one); the replay waits on the parked topic.
                        return await self._send_to_parked(delivery, attempts)
                    built = self._provisional(delivery, request, attempts=attempts)
                else:
                    built = self._verdict(delivery, request, answer)
                document = built.to_json()
                stored = await self._claims.store(lease, document, force_token=delivery.force)
        finally:
            if stored is None:  # no verdict stored: free the id for the next delivery at once
                await self._claims.release_quietly(lease)
            self._claims.end(request.id, done)
        if isinstance(built, ProvisionalVerdict):
            return await self._park(delivery, request.id, stored, built if stored is document else None)
        # Ours is published as built; one stored first by another worker is read for its trace id.
        await self._publish(delivery, request.id, stored, built_by=built if stored is document else None)
        self._metrics.verdicts.labels(built.label, built.action).inc()
        self._observe_age(delivery.record)
        log.debug("verdict id=%s label=%s", request.id, built.label)
        return Outcome.MODERATED

    def _observe_age(self, record: ConsumerRecord) -> None:
        """Publish → final verdict, from the record's own timestamp (a producer's clock, or the broker's
        with LogAppendTime); a timestamp in the future or missing is not counted."""
        stamp = record.timestamp
        if isinstance(stamp, int) and stamp > 0:
            age_s = time.time() - stamp / 1000
            if age_s >= 0:
                self._metrics.verdict_age.observe(age_s)

    def _provisional(
        self, delivery: Delivery, request: ModerationRequest, *, attempts: int
    ) -> ProvisionalVerdict:
        return ProvisionalVerdict(
            id=request.id,
            action=self._outage_action,
            model=self._settings.guard_model,
            trace_id=tracing.trace_id_hex(delivery.span),
            attempts=attempts,
            latency_ms=round((time.monotonic() - delivery.started) * 1000, 3),
            processed_at=utc_now_rfc3339(),
            metadata=request.metadata,
            content_sha256=request.content_sha256,
        )

    async def _park(
        self, delivery: Delivery, message_id: str, stored: bytes, built: ProvisionalVerdict | None
    ) -> Outcome:
        """The guard is down past GUARDQ_OUTAGE_AFTER_S: publish the provisional verdict now and park the
        record on the parked topic, where it waits for the guard (its offset here is then committed). A
        final verdict stored meanwhile by another worker wins: it is published instead, nothing parked."""
        if built is None:
            await self._publish(delivery, message_id, stored, built_by=None)
            return Outcome.DUPLICATE
        if not self._schedule.is_parked(delivery.record):  # a parked one had its provisional verdict
            await self._publish(delivery, message_id, stored, built_by=built)
            self._metrics.provisional_verdicts.labels(built.action).inc()
        return await self._send_to_parked(delivery, built.attempts)

    async def _send_to_parked(self, delivery: Delivery, attempts: int) -> Outcome:
        """Send the record to the parked topic (it waits there for the guard); one the broker will not
        take there (too large with guardq's headers) is dead-lettered with that reason instead."""
        hop = self._schedule.park(delivery.record)
        error = OutageFallback("guard unavailable: parked until the guard is back")
        if not await self._send_hop(delivery, error, attempts, hop):
            too_large = OutageFallback("guard unavailable, and the record cannot be parked: too large")
            await self._dead_letter(delivery, too_large, attempts=attempts)
            return Outcome.DEAD_LETTERED
        self._metrics.parked.inc()
        delivery.span.set_attribute("guardq.parked", True)
        return Outcome.PARKED

    async def _on_guard_failure(self, delivery: Delivery, failed: GuardCallFailed) -> Outcome:
        """Failed for good in process: fatal → raise; transient → the next retry topic while the schedule
        has one; otherwise (permanent, or the schedule is used up) → dead letter."""
        if failed.error.fatal:
            raise failed.error from failed
        attempts = delivery.carried + failed.attempts
        hop = self._schedule.next_hop(delivery.record) if failed.exhausted else None
        if hop is not None and await self._retry_later(delivery, failed.error, attempts, hop):
            return Outcome.RETRY_SCHEDULED
        log.warning("dead-lettering %s after %d attempt(s): %s", delivery.where, attempts, failed.error)
        await self._dead_letter(delivery, failed.error, attempts=attempts)
        return Outcome.DEAD_LETTERED

    async def _retry_later(self, delivery: Delivery, error: GuardqError, attempts: int, hop: Hop) -> bool:
        """Send the record to ``hop``'s retry topic; False when the broker will not take it (too large
        with the retry headers): it is dead-lettered instead."""
        log.info(
            "retrying %s in %g s via %s after %d attempt(s): %s",
            delivery.where,
            hop.delay_s,
            hop.topic,
            attempts,
            error,
        )

        if not await self._send_hop(delivery, error, attempts, hop):
            return False
        self._metrics.retry_hops.labels(hop.topic).inc()
        delivery.span.set_attribute("guardq.retry.hop", hop.number)
        return True

    async def _send_hop(self, delivery: Delivery, error: GuardqError, attempts: int, hop: Hop) -> bool:
        """Send the record, bytes unchanged, to ``hop``'s topic (a retry topic, or the parked one) with
        guardq's headers, waiting out a broker outage; False when the broker will not take it (too large
        with those headers)."""

        async def send() -> None:
            carried = await self._believed_headers(delivery)
            await self._outbox.retry_later(
                delivery.record, delivery.span, error, attempts=attempts, hop=hop, carried=carried
            )

        try:
            await until_available(send, what=f"sending {delivery.where} to {hop.topic}")
        except TOO_LARGE as exc:
            log.warning("%s cannot go to %s (%s)", delivery.where, hop.topic, type(exc).__name__)
            return False
        return True

    def _verdict(self, delivery: Delivery, request: ModerationRequest, answer: Answer) -> Verdict:
        verdict = answer.verdict
        return Verdict(
            content_sha256=request.content_sha256,
            id=request.id,
            label=verdict.label,
            action=self._policy.action(verdict.label, verdict.categories),
            categories=list(verdict.categories),
            refusal=verdict.refusal if request.kind == "response" else None,
            model=verdict.model,
            trace_id=tracing.trace_id_hex(delivery.span),
            attempts=delivery.carried + answer.attempts,
            chunks=answer.chunks,
            latency_ms=round((time.monotonic() - delivery.started) * 1000, 3),
            processed_at=utc_now_rfc3339(),
            metadata=request.metadata,
        )

    async def _publish(
        self,
        delivery: Delivery,
        message_id: str,
        document: bytes,
        *,
        built_by: Verdict | ProvisionalVerdict | None,
    ) -> None:
        """Publish ``document`` with the trace id it names: known when we built it, read when it was
        stored (by an earlier delivery, or another worker); this delivery's own when it names none."""
        if built_by is not None:
            trace_id: str | None = built_by.trace_id
        else:
            document, trace_id = stored_for_publish(document, self._policy)
        await self._outbox.publish_verdict(
            message_id, document, trace_id or tracing.trace_id_hex(delivery.span)
        )

    async def _dead_letter(self, delivery: Delivery, error: GuardqError, *, attempts: int) -> None:
        """Dead-letter the record (waiting out a broker outage in place); a forced replay that ends here
        gives up its authorisation, so a later delivery of it overwrites nothing."""

        async def write() -> str | None:
            carried = await self._believed_headers(delivery)
            return await self._outbox.dead_letter(
                delivery.record, delivery.span, error, attempts=attempts, carried=carried
            )

        reason = await until_available(write, what=f"dead-lettering {delivery.where}")
        delivery.span.set_attribute("guardq.error.reason", error.reason if reason is None else reason)
        if reason is not None:
            self._metrics.dead_letters.labels(reason).inc()
        message_id, token = delivery.message_id, delivery.force
        if token is not None and message_id is not None:
            await until_available(
                functools.partial(self._store.drop_force, message_id, token),
                what=f"withdrawing the forced replay of id={message_id}",
            )

    async def _believed_headers(self, delivery: Delivery) -> list[tuple[str, bytes]]:
        """The record's headers when its ``guardq.*`` ones were written by guardq (a retry topic's record,
        or a replay whose token Redis holds for this record's key); else none: a producer's own
        ``guardq.*`` headers never reach a dead letter's envelope."""
        headers = list(delivery.record.headers or ())
        if delivery.hops > 0 or self._schedule.is_parked(delivery.record):
            return headers
        token = replay_token(headers)
        if token is not None and await self._store.replay_origin(token) == (delivery.record.key or b""):
            return headers
        return []


def _undecodable_message(record: Undecodable) -> str:
    if record.last_offset > record.offset:
        return f"offsets {record.offset}..{record.last_offset}: {record.problem}"
    return record.problem
