"""Dead letters: the closed set of reason codes and the typed header envelope.

A dead letter keeps the original key and value bytes unchanged; everything guardq knows about the failure
travels in headers, written and read only by ``DeadLetterEnvelope``. Numbers are UTF-8 decimal text and
times RFC 3339 UTC.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from worker.core.errors import GuardqError, one_line
from worker.core.reasons import Reason
from worker.core.times import parse_rfc3339, utc_now_rfc3339

# The reasons by code, with what each means (``core.reasons.Reason`` declares them).
REASONS: dict[str, str] = {reason.value: reason.description for reason in Reason}

HISTORY_LIMIT = 10

_P = "guardq."
H_TOPIC = _P + "original.topic"
H_PARTITION = _P + "original.partition"
H_OFFSET = _P + "original.offset"
H_TIMESTAMP = _P + "original.timestamp"
H_ERROR_CLASS = _P + "error.class"
H_ERROR_MESSAGE = _P + "error.message"
H_ERROR_REASON = _P + "error.reason"
H_ATTEMPTS = _P + "attempts"
H_FIRST_FAILED_AT = _P + "first_failed_at"
H_REPLAY_COUNT = _P + "replay_count"
H_HISTORY = _P + "history"
H_RETRY_HOP = _P + "retry.hop"
H_RETRY_DUE_AT = _P + "retry.due_at"
# "1" (set by `guardq dlq replay --force`): moderate again and overwrite the verdict, if Redis holds the
# replay's token (its guardq.replay.token) for the id: a header alone forces nothing.
H_FORCE = _P + "force"
H_REPLAYED_FROM = _P + "replayed_from"  # "<dlq partition>:<offset>" of the dead letter a replay came from
# A random token per republished record, registered in Redis by `guardq dlq replay` (worker.store.replay_marks).
H_REPLAY_TOKEN = _P + "replay.token"
H_TRACEPARENT = "traceparent"
# Markers of a dead letter the broker refused whole (``failures.outbox`` writes the smaller forms).
H_VALUE_TRUNCATED_FROM = _P + "value_truncated_from"  # the value's size before it was cut
H_HEADERS_DROPPED = _P + "headers_dropped"  # how many of the original record's headers were left out
# Kafka clients refuse a record with neither key nor value (a keyless tombstone, an undecodable batch):
# its dead letter carries an empty value and this marker instead.
H_VALUE_ABSENT = _P + "value_absent"
# guardq headers a retry hop carries on unchanged (the envelope rewrites the others).
KEPT_ON_RETRY = (H_FORCE, H_REPLAYED_FROM, H_REPLAY_TOKEN)

Headers = list[tuple[str, bytes]]


@dataclass(frozen=True)
class DeadLetterEnvelope:
    """Everything the dead-letter headers carry; ``to_headers``/``from_headers`` are exact inverses.

    A delayed retry hop carries the same envelope plus ``due_at`` (when it may be tried again);
    ``retry_hop`` counts the hops of the retry schedule taken so far (0 before the first)."""

    original_topic: str
    original_partition: int
    original_offset: int
    original_timestamp: str
    error_class: str
    error_message: str
    error_reason: str
    attempts: int
    first_failed_at: str
    replay_count: int = 0
    traceparent: str | None = None
    history: tuple[dict[str, Any], ...] = field(default_factory=tuple)
    retry_hop: int = 0
    due_at: str | None = None

    def __post_init__(self) -> None:
        if self.error_reason not in REASONS:
            raise ValueError(f"unknown dead-letter reason {self.error_reason!r}")

    @classmethod
    def for_failure(
        cls,
        *,
        record_topic: str,
        record_partition: int,
        record_offset: int,
        record_timestamp: str,
        incoming: Sequence[tuple[str, bytes]],
        error: GuardqError,
        attempts: int,
        now: str,
        traceparent: str | None,
    ) -> DeadLetterEnvelope:
        """The envelope for a record that failed now. Coordinates and counters already carried by the
        record's headers (a retry hop or a replay) are kept; otherwise the record's own are used."""
        carried = _carried_state(incoming)
        # An error made with a reason outside the closed set (a bug) must still reach the DLQ, as one.
        reason = error.reason if error.reason in REASONS else Reason.INTERNAL_ERROR
        return cls(
            original_topic=carried.get(H_TOPIC, record_topic),
            original_partition=_int_or(carried.get(H_PARTITION), record_partition),
            original_offset=_int_or(carried.get(H_OFFSET), record_offset),
            original_timestamp=carried.get(H_TIMESTAMP, record_timestamp),
            error_class=type(error).__name__,
            error_message=str(error),
            error_reason=reason,
            attempts=attempts,
            first_failed_at=carried.get(H_FIRST_FAILED_AT, now),
            replay_count=_int_or(carried.get(H_REPLAY_COUNT), 0),
            traceparent=traceparent,
            history=tuple(_history_or_empty(carried.get(H_HISTORY))),
            retry_hop=_int_or(carried.get(H_RETRY_HOP), 0),
        )

    def with_attempt(self, entry: dict[str, Any]) -> DeadLetterEnvelope:
        """A copy with one more history entry, keeping only the newest ``HISTORY_LIMIT``."""
        return replace(self, history=(*self.history, entry)[-HISTORY_LIMIT:])

    def to_headers(self) -> Headers:
        """Kafka record headers, in a stable order."""
        pairs = [
            (H_TOPIC, self.original_topic),
            (H_PARTITION, str(self.original_partition)),
            (H_OFFSET, str(self.original_offset)),
            (H_TIMESTAMP, self.original_timestamp),
            (H_ERROR_CLASS, self.error_class),
            (H_ERROR_MESSAGE, one_line(self.error_message)),
            (H_ERROR_REASON, self.error_reason),
            (H_ATTEMPTS, str(self.attempts)),
            (H_FIRST_FAILED_AT, self.first_failed_at),
            (H_REPLAY_COUNT, str(self.replay_count)),
            (H_HISTORY, self.history_json),
            (H_RETRY_HOP, str(self.retry_hop)),
        ]
        if self.due_at is not None:
            pairs.append((H_RETRY_DUE_AT, self.due_at))
        if self.traceparent:
            pairs.append((H_TRACEPARENT, self.traceparent))
        return [(name, value.encode("utf-8")) for name, value in pairs]

    @property
    def history_json(self) -> str:
        """The newest ``HISTORY_LIMIT`` history entries as compact JSON (the ``guardq.history`` header)."""
        return json.dumps(list(self.history[-HISTORY_LIMIT:]), separators=(",", ":"))

    @classmethod
    def from_headers(cls, headers: Sequence[tuple[str, bytes | None]]) -> DeadLetterEnvelope:
        """Read the envelope back; raises ``ValueError`` naming the first missing or bad header."""
        # Only guardq's own headers and traceparent are read: the original record's headers ride along and
        # may hold anything (no value, bytes that are not UTF-8).
        found = {
            name: value.decode("utf-8", errors="strict")
            for name, value in headers
            if (name.startswith(_P) or name == H_TRACEPARENT) and value is not None
        }

        def need(name: str) -> str:
            if name not in found:
                raise ValueError(f"dead letter lacks header {name}")
            return found[name]

        def number(name: str) -> int:
            raw = need(name)
            if not (raw.isascii() and raw.isdigit()):
                raise ValueError(f"header {name}={raw!r} is not a decimal number")
            return int(raw)

        history = json.loads(found.get(H_HISTORY, "[]"))
        if not isinstance(history, list):
            raise ValueError(f"header {H_HISTORY} is not a JSON list")
        return cls(
            original_topic=need(H_TOPIC),
            original_partition=number(H_PARTITION),
            original_offset=number(H_OFFSET),
            original_timestamp=need(H_TIMESTAMP),
            error_class=need(H_ERROR_CLASS),
            error_message=need(H_ERROR_MESSAGE),
            error_reason=need(H_ERROR_REASON),
            attempts=number(H_ATTEMPTS),
            first_failed_at=need(H_FIRST_FAILED_AT),
            replay_count=number(H_REPLAY_COUNT),
            traceparent=found.get(H_TRACEPARENT),
            history=tuple(history),
            retry_hop=number(H_RETRY_HOP) if H_RETRY_HOP in found else 0,
            due_at=found.get(H_RETRY_DUE_AT),
        )


def format_history_entry(error: GuardqError, attempts: int, topic: str) -> dict[str, Any]:
    """One bounded history entry describing a failure."""
    return {
        "at": utc_now_rfc3339(),
        "topic": topic,
        "attempts": attempts,
        "error_class": type(error).__name__,
        "reason": error.cause or error.reason,
        "message": one_line(str(error), 200),
    }


def _carried_state(headers: Sequence[tuple[str, bytes]]) -> dict[str, str]:
    found: dict[str, str] = {}
    for name, value in headers:
        if name.startswith(_P):
            try:
                found[name] = value.decode("utf-8")
            except (UnicodeDecodeError, AttributeError):
                continue  # a foreign or corrupt header: fall back to the record's own facts
    return found


def _int_or(raw: str | None, default: int) -> int:
    return int(raw) if raw is not None and raw.isascii() and raw.isdigit() and len(raw) < 19 else default


def _history_or_empty(raw: str | None) -> list[dict[str, Any]]:
    try:
        history = json.loads(raw) if raw else []
    except (ValueError, RecursionError):
        return []
    return (
        [entry for entry in history if isinstance(entry, dict)][-HISTORY_LIMIT:]
        if isinstance(history, list)
        else []
    )


def carried_headers(headers: Sequence[tuple[str, bytes]], *, keep: Sequence[str] = ()) -> Headers:
    """The original record's own headers that a dead letter or retry hop keeps (guardq's and traceparent
    are rewritten), plus those of guardq's named in ``keep``."""
    return [(k, v) for k, v in headers if (not k.startswith(_P) or k in keep) and k != H_TRACEPARENT]


def retry_hop_headers(original: Sequence[tuple[str, bytes]], envelope: DeadLetterEnvelope) -> Headers:
    """The headers of a retry hop: the record's own, the replay state it keeps, and the envelope."""
    return carried_headers(original, keep=KEPT_ON_RETRY) + envelope.to_headers()


def replay_headers(
    original: Sequence[tuple[str, bytes]],
    envelope: DeadLetterEnvelope,
    *,
    replayed_from: str,
    force: bool,
    token: str,
) -> Headers:
    """The headers of a dead letter republished by `guardq dlq replay`: the record's own, where it came
    from, its history (bounded), one more replay, the replay token, the force flag and the trace."""
    pairs = [
        (H_TOPIC, envelope.original_topic),
        (H_PARTITION, str(envelope.original_partition)),
        (H_OFFSET, str(envelope.original_offset)),
        (H_TIMESTAMP, envelope.original_timestamp),
        (H_FIRST_FAILED_AT, envelope.first_failed_at),
        (H_HISTORY, envelope.history_json),
        (H_REPLAY_COUNT, str(envelope.replay_count + 1)),
        (H_REPLAYED_FROM, replayed_from),
        (H_REPLAY_TOKEN, token),
    ]
    if force:
        pairs.append((H_FORCE, "1"))
    if envelope.traceparent:
        pairs.append((H_TRACEPARENT, envelope.traceparent))
    return carried_headers(original) + [(name, value.encode("utf-8")) for name, value in pairs]


def retry_due_epoch_s(headers: Sequence[tuple[str, bytes]]) -> float | None:
    """When a retry-topic record is due (``guardq.retry.due_at``), in epoch seconds; None when the
    header is absent or not an RFC 3339 time."""
    for name, value in headers:
        if name == H_RETRY_DUE_AT:
            try:
                return parse_rfc3339(value.decode("ascii")).timestamp()
            except (ValueError, UnicodeDecodeError, AttributeError):
                return None
    return None


def reduction_markers(
    *, value_absent: bool = False, value_cut_from: int | None = None, headers_dropped: int = 0
) -> Headers:
    """The headers that say how a dead letter was made smaller than its record (see ``failures.outbox``):
    no value at all, a value cut from ``value_cut_from`` bytes, ``headers_dropped`` of its own headers left out."""
    markers: Headers = []
    if value_absent:
        markers.append((H_VALUE_ABSENT, b"1"))
    if headers_dropped:
        markers.append((H_HEADERS_DROPPED, str(headers_dropped).encode()))
    if value_cut_from is not None:
        markers.append((H_VALUE_TRUNCATED_FROM, str(value_cut_from).encode()))
    return markers


def without_history(headers: Headers) -> Headers:
    """``headers`` without the failure history (the largest envelope header)."""
    return [header for header in headers if header[0] != H_HISTORY]


def was_value_truncated(headers: Sequence[tuple[str, bytes]]) -> bool:
    """Whether a dead letter holds only a prefix of its record's value."""
    return any(name == H_VALUE_TRUNCATED_FROM for name, _ in headers)


def carried_number(headers: Sequence[tuple[str, bytes]], name: str) -> int:
    """A decimal guardq header of ``headers`` (0 when it is absent or not a sane number)."""
    return _int_or(_carried_state(headers).get(name), 0)


def is_forced(headers: Sequence[tuple[str, bytes | None]] | None) -> bool:
    """Whether a record's headers ask for a forced replay (moderate again, overwrite the verdict)."""
    return any(name == H_FORCE and value == b"1" for name, value in headers or ())


def replay_token(headers: Sequence[tuple[str, bytes | None]] | None) -> str | None:
    """The token a replayed record carries (``guardq.replay.token``), None when it carries none."""
    for name, value in headers or ():
        if name == H_REPLAY_TOKEN and value:
            return value.decode("utf-8", errors="replace")[:64]
    return None


def force_token(headers: Sequence[tuple[str, bytes | None]] | None) -> str | None:
    """The token a forced replay carries, to be matched against the one `guardq dlq replay --force` wrote
    to Redis; None when the record asks for no force."""
    return replay_token(headers) if is_forced(headers) else None
