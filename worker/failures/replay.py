"""`guardq dlq replay`: republish chosen dead letters to the input topic for another try, each once.

A replayed record carries the original key and value bytes, the original record's own headers, the
original ``traceparent`` (so the verdict reports the publisher's trace id), the envelope's coordinates and
history, ``guardq.replay_count`` + 1, ``guardq.replayed_from`` and a random ``guardq.replay.token``
registered in Redis first (``worker.store.replay_marks``): only with it does the worker believe those
``guardq.*`` headers. It carries no attempt counter, error or retry-hop header: a replay starts a fresh
retry budget. Which dead letters go is decided by ``plan``
(pure); ``replay`` does the reading, the republishing and the bookkeeping in Redis (``store.py``): a dead
letter is marked replayed only once the broker acknowledged its republished record, so the replayed set
never names a record that was not sent. Nothing is ever deleted.
"""

from __future__ import annotations

import asyncio
import enum
import secrets
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import TextIO

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer
from redis.asyncio import Redis

from worker.config.settings import Settings
from worker.core.times import utc_now_rfc3339
from worker.failures.envelope import (
    DeadLetterEnvelope,
    replay_headers,
    was_value_truncated,
)
from worker.failures.listing import DeadLetter, Filter, shown, stream
from worker.failures.pacing import Pacer, Progress
from worker.failures.schedule import RetrySchedule
from worker.kafka import clients as kafka
from worker.store.connect import RedisSecurity, connect_redis
from worker.store.replay_marks import (
    TOKEN_MARGIN_S,
    ReplayMark,
    ReplayToken,
    ids_with_verdict,
    mark_replayed,
    register_tokens,
    replay_marks,
)
from worker.telemetry import tracing

# Republished records in flight before their acknowledgements are awaited and marked in one HSET.
BATCH = 100


class Skip(enum.Enum):
    """Why a selected dead letter is not replayed, in the order the causes are checked."""

    NOT_GUARDQ = "not_guardq"  # its headers are not guardq's envelope: where it came from is unknown
    VALUE_TRUNCATED = "value_truncated"  # the DLQ kept only a prefix of the value: replaying it would lie
    ALREADY_REPLAYED = "already_replayed"  # replayed before (see `dlq list --pending`)
    MAX_REPLAYS = "max_replays"  # replayed GUARDQ_MAX_REPLAYS times already: the loop guard
    HAS_VERDICT = "has_verdict"  # its id has a verdict now (replay with --force to moderate it again)
    DUPLICATE_ID = "duplicate_id"  # a newer dead letter of the same id goes in this run
    OVER_MAX = "over_max"  # eligible, but --max was reached


@dataclass(frozen=True)
class Plan:
    """The outcome of selection: the dead letters to replay, in order, and each skipped one's cause."""

    eligible: tuple[DeadLetter, ...]
    skipped: tuple[tuple[DeadLetter, Skip], ...]

    def skip_counts(self) -> dict[str, int]:
        """How many were skipped for each cause, in the order of ``Skip``."""
        counts = Counter(cause for _, cause in self.skipped)
        return {cause.value: counts[cause] for cause in Skip if counts[cause]}


def skip_cause(
    letter: DeadLetter, *, replayed: bool, has_verdict: bool, max_replays: int, force: bool
) -> Skip | None:
    """Why ``letter`` may not be replayed, or None when it may."""
    envelope = letter.envelope
    if envelope is None:
        return Skip.NOT_GUARDQ
    if was_value_truncated(letter.headers):
        return Skip.VALUE_TRUNCATED
    if replayed:
        return Skip.ALREADY_REPLAYED
    if envelope.replay_count >= max_replays:
        return Skip.MAX_REPLAYS
    if has_verdict and not force:
        return Skip.HAS_VERDICT
    return None


def plan(
    letters: Sequence[DeadLetter],
    *,
    replayed: Collection[tuple[int, int]],
    with_verdict: Collection[str],
    max_replays: int,
    force: bool = False,
    limit: int | None = None,
) -> Plan:
    """Decide which of the (already filtered) ``letters`` to replay. ``replayed`` holds the (partition,
    offset) of dead letters replayed before, ``with_verdict`` the ids that have a verdict. Of several
    eligible dead letters of one id only the newest goes; ``limit`` bounds how many go, oldest first."""
    causes: dict[int, Skip] = {}
    seen_ids: set[str] = set()
    for index in reversed(range(len(letters))):  # newest first, so the newest of an id wins
        letter = letters[index]
        cause = skip_cause(
            letter,
            replayed=(letter.partition, letter.offset) in replayed,
            has_verdict=bool(letter.message_id) and letter.message_id in with_verdict,
            max_replays=max_replays,
            force=force,
        )
        if cause is None and letter.message_id:  # an empty id (no key, no JSON id) names nothing
            if letter.message_id in seen_ids:
                cause = Skip.DUPLICATE_ID
            seen_ids.add(letter.message_id)
        if cause is not None:
            causes[index] = cause
    eligible: list[DeadLetter] = []
    for index, letter in enumerate(letters):
        if index not in causes and limit is not None and len(eligible) >= limit:
            causes[index] = Skip.OVER_MAX
        elif index not in causes:
            eligible.append(letter)
    skipped = tuple((letters[index], causes[index]) for index in sorted(causes))
    return Plan(tuple(eligible), skipped)


@dataclass(frozen=True)
class ReplayOptions:
    """What `guardq dlq replay` was asked to do."""

    filter: Filter = field(default_factory=Filter)
    limit: int | None = None
    force: bool = False
    dry_run: bool = False
    rate_per_s: float | None = None


@dataclass(frozen=True)
class Summary:
    """What a replay did (or, with --dry-run, would do)."""

    topic: str
    plan: Plan
    replayed: int
    dry_run: bool

    def lines(self) -> list[str]:
        """The summary as printed: one line per replayed dead letter in a dry run, then the counts."""
        lines = []
        if self.dry_run:
            for letter in self.plan.eligible:
                count = letter.envelope.replay_count + 1 if letter.envelope else 1
                reason = letter.envelope.error_reason if letter.envelope else "-"
                lines.append(
                    f"would replay {letter.coordinates} id={shown(letter.message_id)} {reason} #{count}"
                )
        verb = "would replay" if self.dry_run else "replayed"
        lines.append(f"{verb} {len(self.plan.eligible) if self.dry_run else self.replayed} to {self.topic}")
        counts = self.plan.skip_counts()
        lines.append(f"skipped {sum(counts.values())}")
        lines.extend(f"  {cause:<18} {count}" for cause, count in counts.items())
        return lines

    def as_json(self) -> dict[str, object]:
        """The summary as a JSON-ready object: the counts, and in a dry run the coordinates to replay."""
        entry: dict[str, object] = {
            "topic": self.topic,
            "dry_run": self.dry_run,
            "replayed": 0 if self.dry_run else self.replayed,
            "eligible": len(self.plan.eligible),
            "skipped": self.plan.skip_counts(),
        }
        if self.dry_run:
            entry["would_replay"] = [
                {"at": letter.coordinates, "id": letter.message_id} for letter in self.plan.eligible
            ]
        return entry


async def replay(
    settings: Settings,
    options: ReplayOptions,
    *,
    progress: TextIO | None = None,
    tracer_provider: TracerProvider | None = None,
) -> Summary:
    """Read the DLQ to its end, choose (``plan``) and republish to the input topic; see the module
    docstring. Progress goes to ``progress``; each republish gets a ``<input> publish`` span in the
    message's original trace. Raises if the broker refuses a record (those acknowledged before are
    marked)."""
    # Read in batches, keeping only the chosen: a large DLQ is not held in memory whole.
    letters = [
        letter async for found in stream(settings) for letter in found if options.filter.matches(letter)
    ]
    # Oldest first across partitions (by when each was dead-lettered), so --max takes the oldest.
    letters.sort(key=lambda x: (x.timestamp_ms, x.partition, x.offset))
    redis = connect_redis(
        settings.redis_url, max_connections=2, security=RedisSecurity.from_settings(settings)
    )
    try:
        where = [(x.partition, x.offset) for x in letters]
        marks = await replay_marks(redis, settings.redis_prefix, settings.dlq_topic, where)
        ids = [x.message_id for x in letters if x.message_id]
        with_verdict = await ids_with_verdict(redis, settings.redis_prefix, ids)
        chosen = plan(
            letters,
            replayed=marks.keys(),
            with_verdict=with_verdict,
            max_replays=settings.max_replays,
            force=options.force,
            limit=options.limit,
        )
        sent = 0
        if not options.dry_run and chosen.eligible:
            tracer = tracing.get_tracer(tracer_provider or tracing.build_provider())
            sent = await _republish(settings, redis, chosen.eligible, options, progress, tracer)
    finally:
        await redis.aclose(close_connection_pool=True)
    return Summary(settings.input_topic, chosen, sent, options.dry_run)


async def pending(settings: Settings, letters: Sequence[DeadLetter]) -> list[DeadLetter]:
    """Those of ``letters`` that were not replayed yet (what `dlq list --pending` shows)."""
    redis = connect_redis(
        settings.redis_url, max_connections=2, security=RedisSecurity.from_settings(settings)
    )
    try:
        where = [(x.partition, x.offset) for x in letters]
        marks = await replay_marks(redis, settings.redis_prefix, settings.dlq_topic, where)
    finally:
        await redis.aclose(close_connection_pool=True)
    return [x for x in letters if (x.partition, x.offset) not in marks]


async def _republish(
    settings: Settings,
    redis: Redis,
    letters: Sequence[DeadLetter],
    options: ReplayOptions,
    stream: TextIO | None,
    tracer: Tracer,
) -> int:
    producer = await kafka.producer_for(settings)
    pacer = Pacer(options.rate_per_s)
    progress = Progress(stream, len(letters))
    # Under a low --rate a batch would take long to fill; mark at least about once a second instead.
    batch = BATCH if options.rate_per_s is None else max(1, min(BATCH, int(options.rate_per_s)))
    # A token outlives the record's trip through every retry topic, plus a margin for a backlog.
    token_ttl_s = int(sum(RetrySchedule.from_settings(settings).delays_s)) + TOKEN_MARGIN_S
    sent = 0
    try:
        await producer.start()
        for start in range(0, len(letters), batch):
            chunk = letters[start : start + batch]
            tokens = [
                ReplayToken(secrets.token_hex(16), letter.key or b"", letter.message_id, options.force)
                for letter in chunk
            ]
            # Registered before the records go: the worker believes (and forces) only what Redis holds.
            await register_tokens(redis, settings.redis_prefix, tokens, ttl_s=token_ttl_s)
            results = await _send_chunk(producer, settings.input_topic, chunk, tokens, pacer, tracer=tracer)
            marks = _marks_of_acknowledged(chunk, results, forced=options.force)
            await mark_replayed(
                redis, settings.redis_prefix, settings.dlq_topic, marks, ttl_s=settings.verdict_ttl_s
            )
            sent += len(marks)
            progress.advance(len(marks))
            failed = next((r for r in results if isinstance(r, BaseException)), None)
            if failed is not None:
                raise failed
    finally:
        progress.close()
        await producer.stop()
    return sent


async def _send_chunk(
    producer: AIOKafkaProducer,
    topic: str,
    letters: Sequence[DeadLetter],
    tokens: Sequence[ReplayToken],
    pacer: Pacer,
    *,
    tracer: Tracer,
) -> list[object]:
    """Send ``letters`` and await every acknowledgement: one result (metadata or exception) per letter.
    A send refused at once ends the chunk; the letters after it count as failed with the same error."""
    sends: list[asyncio.Future[object]] = []
    spans: list[Span] = []
    refused: BaseException | None = None
    for letter, token in zip(letters, tokens, strict=True):
        await pacer.wait()
        assert letter.envelope is not None  # plan() never chooses one without an envelope
        headers = replay_headers(
            letter.headers,
            letter.envelope,
            replayed_from=letter.coordinates,
            force=token.force,
            token=token.token,
        )
        span = _republish_span(tracer, topic, letter, letter.envelope)
        try:
            sends.append(await producer.send(topic, letter.value, key=letter.key, headers=headers))
        except KafkaError as exc:  # e.g. too large for the client: nothing of it was sent
            _end_span(span, exc)
            refused = exc
            break
        spans.append(span)
    results: list[object] = list(await asyncio.gather(*sends, return_exceptions=True))
    for span, result in zip(spans, results, strict=True):
        _end_span(span, result)
    return results + [refused] * (len(letters) - len(results))


def _republish_span(tracer: Tracer, topic: str, letter: DeadLetter, envelope: DeadLetterEnvelope) -> Span:
    """The PRODUCER span of one republish, a child of the dead letter's trace context, so the replay shows
    up in the trace the publisher started (a dead letter without one starts a trace). The republished
    record keeps the envelope's traceparent, so its next ``process`` span is a sibling of this one."""
    carried = (envelope.traceparent or "").encode("ascii", "replace")
    parent = tracing.extract([(tracing.TRACEPARENT, carried)] if carried else [])
    attributes = tracing.send_attributes(topic, letter.message_id or None)
    attributes["guardq.replayed_from"] = letter.coordinates
    return tracer.start_span(
        f"{topic} publish", context=parent, kind=SpanKind.PRODUCER, attributes=attributes
    )


def _end_span(span: Span, result: object) -> None:
    if isinstance(result, BaseException):
        span.set_status(Status(StatusCode.ERROR, type(result).__name__))
    else:
        partition, offset = getattr(result, "partition", None), getattr(result, "offset", None)
        if isinstance(partition, int) and isinstance(offset, int):
            tracing.set_sent(span, partition, offset)
    span.end()


def _marks_of_acknowledged(
    letters: Sequence[DeadLetter], results: Sequence[object], *, forced: bool
) -> dict[tuple[int, int], ReplayMark]:
    now = utc_now_rfc3339()
    return {
        (letter.partition, letter.offset): ReplayMark(
            now, (letter.envelope.replay_count if letter.envelope else 0) + 1, forced
        )
        for letter, result in zip(letters, results, strict=True)
        if not isinstance(result, BaseException)
    }
