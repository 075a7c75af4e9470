"""DeadLetterEnvelope: the dead-letter headers are written and read back exactly, and survive bad input."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.core.errors import (
    MESSAGE_LIMIT,
    GuardBadReply,
    GuardContextOverflow,
    GuardError,
    GuardqError,
    GuardRejected,
    GuardTimeout,
    GuardUnavailable,
    InvalidInput,
)
from worker.failures.envelope import (
    HISTORY_LIMIT,
    REASONS,
    DeadLetterEnvelope,
    carried_headers,
    format_history_entry,
)

RFC3339_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
NOW = "2026-03-01T12:00:00.000Z"
RECORD_TIME = "2026-03-01T11:59:59.500Z"


def _envelope(**changes: Any) -> DeadLetterEnvelope:
    fields: dict[str, Any] = {
        "original_topic": "moderation.requests",
        "original_partition": 4,
        "original_offset": 123456789,
        "original_timestamp": RECORD_TIME,
        "error_class": "GuardRejected",
        "error_message": "HTTP 422",
        "error_reason": "guard_rejected",
        "attempts": 1,
        "first_failed_at": NOW,
        "replay_count": 2,
        "traceparent": TRACEPARENT,
        "history": ({"at": NOW, "reason": "guard_rejected"},),
    }
    fields.update(changes)
    return DeadLetterEnvelope(**fields)


def _for_failure(
    incoming: list[tuple[str, bytes]], error: GuardqError, attempts: int = 1
) -> DeadLetterEnvelope:
    return DeadLetterEnvelope.for_failure(
        record_topic="moderation.requests.retry.1m",
        record_partition=7,
        record_offset=99,
        record_timestamp=RECORD_TIME,
        incoming=incoming,
        error=error,
        attempts=attempts,
        now=NOW,
        traceparent=TRACEPARENT,
    )


def test_headers_round_trip_to_an_equal_envelope() -> None:
    envelope = _envelope()
    assert DeadLetterEnvelope.from_headers(envelope.to_headers()) == envelope


def test_retry_hop_envelope_round_trips_with_its_due_time() -> None:
    envelope = _envelope(retry_hop=2, due_at="2026-11-23T13:37:10.000Z")
    headers = dict(envelope.to_headers())
    assert headers["guardq.retry.hop"] == b"2"
    assert headers["guardq.retry.due_at"] == b"2026-11-23T13:37:10.000Z"
    assert DeadLetterEnvelope.from_headers(envelope.to_headers()) == envelope


def test_envelope_without_traceparent_has_no_traceparent_header() -> None:
    headers = dict(_envelope(traceparent=None).to_headers())
    assert "traceparent" not in headers
    assert DeadLetterEnvelope.from_headers(list(headers.items())).traceparent is None


def test_numbers_are_utf8_decimal_text() -> None:
    headers = dict(
        _envelope(original_partition=0, original_offset=10**15, attempts=3, replay_count=0).to_headers()
    )
    assert headers["guardq.original.partition"] == b"0"
    assert headers["guardq.original.offset"] == b"1000000000000000"
    assert headers["guardq.attempts"] == b"3"
    assert headers["guardq.replay_count"] == b"0"


def test_every_header_value_is_utf8_bytes_and_names_are_the_documented_ones() -> None:
    headers = _envelope().to_headers()
    assert [name for name, _ in headers] == [
        "guardq.original.topic",
        "guardq.original.partition",
        "guardq.original.offset",
        "guardq.original.timestamp",
        "guardq.error.class",
        "guardq.error.message",
        "guardq.error.reason",
        "guardq.attempts",
        "guardq.first_failed_at",
        "guardq.replay_count",
        "guardq.history",
        "guardq.retry.hop",
        "traceparent",
    ]
    for _, value in headers:
        assert isinstance(value, bytes)
        value.decode("utf-8")


def test_times_from_for_failure_are_rfc3339_utc() -> None:
    envelope = _for_failure([], GuardRejected("HTTP 400")).with_attempt(
        format_history_entry(GuardRejected("HTTP 400"), 1, "moderation.requests")
    )
    headers = dict(envelope.to_headers())
    assert RFC3339_UTC.match(headers["guardq.original.timestamp"].decode())
    assert RFC3339_UTC.match(headers["guardq.first_failed_at"].decode())
    (entry,) = json.loads(headers["guardq.history"])
    assert RFC3339_UTC.match(entry["at"])


def test_error_message_header_is_one_bounded_line() -> None:
    message = "line one\nline two\r\n\tindented " + "x" * (2 * MESSAGE_LIMIT)
    value = dict(_envelope(error_message=message).to_headers())["guardq.error.message"].decode()
    assert "\n" not in value
    assert "\r" not in value
    assert len(value) <= MESSAGE_LIMIT
    assert value.startswith("line one line two indented x")


def test_history_keeps_only_the_newest_entries() -> None:
    envelope = _envelope(history=())
    for number in range(HISTORY_LIMIT + 5):
        envelope = envelope.with_attempt({"n": number})
    assert len(envelope.history) == HISTORY_LIMIT
    assert envelope.history[-1] == {"n": HISTORY_LIMIT + 4}
    written = json.loads(dict(envelope.to_headers())["guardq.history"])
    assert [entry["n"] for entry in written] == list(range(5, HISTORY_LIMIT + 5))


def test_history_written_by_hand_beyond_the_limit_is_still_bounded_in_headers() -> None:
    envelope = _envelope(history=tuple({"n": n} for n in range(HISTORY_LIMIT * 3)))
    assert len(json.loads(dict(envelope.to_headers())["guardq.history"])) == HISTORY_LIMIT


def test_unknown_reason_is_rejected() -> None:
    with pytest.raises(ValueError, match="made_up"):
        _envelope(error_reason="made_up")


def test_from_headers_names_a_missing_header() -> None:
    headers = [(name, value) for name, value in _envelope().to_headers() if name != "guardq.attempts"]
    with pytest.raises(ValueError, match=re.escape("guardq.attempts")):
        DeadLetterEnvelope.from_headers(headers)


def test_from_headers_names_a_non_numeric_header() -> None:
    headers = [
        (name, b"-3" if name == "guardq.replay_count" else value) for name, value in _envelope().to_headers()
    ]
    with pytest.raises(ValueError, match=re.escape("guardq.replay_count")):
        DeadLetterEnvelope.from_headers(headers)


# -- for_failure -------------------------------------------------------------------------------------


def test_first_failure_uses_the_records_own_coordinates() -> None:
    envelope = _for_failure([("source", b"web")], GuardRejected("HTTP 400"))
    assert envelope.original_topic == "moderation.requests.retry.1m"
    assert envelope.original_partition == 7
    assert envelope.original_offset == 99
    assert envelope.original_timestamp == RECORD_TIME
    assert envelope.first_failed_at == NOW
    assert envelope.replay_count == 0
    assert envelope.history == ()
    assert envelope.error_class == "GuardRejected"
    assert envelope.error_reason == "guard_rejected"


def test_retry_hop_or_replay_keeps_carried_coordinates_counters_and_history() -> None:
    earlier = _envelope(history=({"n": 1}, {"n": 2}), replay_count=2)
    incoming = [("source", b"web"), *earlier.to_headers()]
    envelope = _for_failure(incoming, GuardContextOverflow("maximum context length"), attempts=1)
    assert envelope.original_topic == "moderation.requests"
    assert envelope.original_partition == 4
    assert envelope.original_offset == 123456789
    assert envelope.original_timestamp == RECORD_TIME
    assert envelope.first_failed_at == NOW
    assert envelope.replay_count == 2
    assert envelope.history == ({"n": 1}, {"n": 2})
    assert envelope.error_reason == "context_length"
    assert envelope.traceparent == TRACEPARENT


@pytest.mark.parametrize(
    "error",
    [
        GuardUnavailable("HTTP 503", status=503),
        GuardTimeout("timed out after 30 s"),
    ],
)
def test_transient_error_dead_letters_as_retries_exhausted(error: GuardError) -> None:
    envelope = _for_failure([], error, attempts=3)
    assert envelope.error_reason == "retries_exhausted"
    assert envelope.error_class == type(error).__name__
    assert envelope.attempts == 3


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (InvalidInput("too_large", "text has 200001 characters"), "too_large"),
        (GuardRejected("HTTP 413"), "guard_rejected"),
        (GuardError("HTTP 418"), "guard_error"),
        # The guard answered, twice, with something that is not a verdict: no retry topic, its own reason.
        (GuardBadReply("no Safety line"), "guard_bad_reply"),
    ],
)
def test_permanent_error_keeps_its_own_reason(error: GuardqError, reason: str) -> None:
    assert _for_failure([], error).error_reason == reason


def test_error_with_a_reason_outside_the_closed_set_still_gives_a_documented_reason() -> None:
    assert _for_failure([], GuardqError("something odd")).error_reason in REASONS
    made_up = InvalidInput("not_a_reason", "a bug named a reason that does not exist")  # type: ignore[arg-type]
    assert _for_failure([], made_up).error_reason == "internal_error"


@pytest.mark.parametrize(
    ("error", "cause"),
    [
        (GuardUnavailable("HTTP 503", status=503), "guard_unavailable"),
        (GuardTimeout("timed out after 30 s"), "guard_timeout"),
        (GuardRejected("HTTP 413"), "guard_rejected"),
    ],
)
def test_a_history_entry_names_what_went_wrong_on_that_attempt(error: GuardError, cause: str) -> None:
    # A timeout and an outage both dead-letter as retries_exhausted; their history tells them apart.
    assert format_history_entry(error, 3, "requests")["reason"] == cause


@pytest.mark.parametrize(
    "garbage",
    [
        [("guardq.original.partition", b"\xff\xfe"), ("guardq.original.offset", b"\xc3")],
        [("guardq.original.partition", b"four"), ("guardq.original.offset", b"-1")],
        [("guardq.original.offset", b"9" * 40), ("guardq.replay_count", b"1e3")],
        [("guardq.replay_count", b" 2"), ("guardq.history", b"{not json")],
        [("guardq.history", b'{"a": 1}'), ("guardq.original.topic", b"\x80")],
        [("guardq.history", b'[1, "two", {"ok": true}]')],
        [("guardq.history", b"\xff")],
    ],
)
def test_garbage_incoming_headers_fall_back_to_the_records_own_facts(
    garbage: list[tuple[str, bytes]],
) -> None:
    envelope = _for_failure(garbage, GuardRejected("HTTP 400"))
    assert envelope.original_partition == 7
    assert envelope.original_offset == 99
    assert envelope.original_topic == "moderation.requests.retry.1m"
    assert envelope.replay_count == 0
    assert all(isinstance(entry, dict) for entry in envelope.history)
    assert DeadLetterEnvelope.from_headers(envelope.to_headers()) == envelope


def test_carried_headers_drop_guardq_and_traceparent_but_keep_the_rest() -> None:
    incoming = [
        ("source", b"web"),
        ("traceparent", TRACEPARENT.encode()),
        ("guardq.attempts", b"3"),
        ("guardq.something.new", b"x"),
        ("tracestate", b"vendor=1"),
        ("binary", b"\xff\x00"),
        ("source", b"duplicate-name"),
    ]
    assert carried_headers(incoming) == [
        ("source", b"web"),
        ("tracestate", b"vendor=1"),
        ("binary", b"\xff\x00"),
        ("source", b"duplicate-name"),
    ]


# -- property: to_headers and from_headers are exact inverses ---------------------------------------------

header_text = st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=40)
line_text = st.text(st.characters(exclude_categories=("Cs", "Zs", "Zl", "Zp", "Cc")), min_size=1, max_size=40)
history_entries = st.dictionaries(
    st.text(max_size=8), st.one_of(st.integers(), st.text(max_size=20), st.none()), max_size=3
)


@settings(max_examples=150, deadline=None)
@given(
    topic=header_text,
    partition=st.integers(min_value=0, max_value=2**31 - 1),
    offset=st.integers(min_value=0, max_value=2**62),
    error_message=line_text,
    reason=st.sampled_from(sorted(REASONS)),
    attempts=st.integers(min_value=0, max_value=100),
    replay_count=st.integers(min_value=0, max_value=100),
    traceparent=st.one_of(st.none(), st.just(TRACEPARENT)),
    history=st.lists(history_entries, max_size=HISTORY_LIMIT).map(tuple),
)
def test_any_envelope_survives_a_round_trip_through_headers(
    topic: str,
    partition: int,
    offset: int,
    error_message: str,
    reason: str,
    attempts: int,
    replay_count: int,
    traceparent: str | None,
    history: tuple[dict[str, Any], ...],
) -> None:
    envelope = _envelope(
        original_topic=topic,
        original_partition=partition,
        original_offset=offset,
        error_message=error_message,
        error_reason=reason,
        attempts=attempts,
        replay_count=replay_count,
        traceparent=traceparent,
        history=history,
    )
    assert DeadLetterEnvelope.from_headers(envelope.to_headers()) == envelope


@pytest.mark.parametrize(
    "digits", ["²", "3²", "①"], ids=["superscript-two", "digit-then-superscript", "circled-one"]
)
def test_unicode_digit_in_carried_header_falls_back_instead_of_crashing(digits: str) -> None:
    # BUG worker/failures/envelope.py _int_or: str.isdigit() is True for "²" and "①" but int() rejects them, so a producer
    # header like guardq.original.partition: "²" makes for_failure raise ValueError on the dead-letter path.
    incoming = [
        ("guardq.original.partition", digits.encode()),
        ("guardq.original.offset", digits.encode()),
        ("guardq.replay_count", digits.encode()),
    ]
    envelope = _for_failure(incoming, GuardRejected("HTTP 400"))
    assert envelope.original_partition == 7
    assert envelope.original_offset == 99
    assert envelope.replay_count == 0


def test_foreign_headers_without_value_or_utf8_do_not_hide_the_envelope() -> None:
    envelope = _envelope()
    headers: list[tuple[str, bytes | None]] = [
        ("x-null", None),
        ("x-binary", b"\xff\xfe"),
        *envelope.to_headers(),
    ]
    assert DeadLetterEnvelope.from_headers(headers) == envelope
