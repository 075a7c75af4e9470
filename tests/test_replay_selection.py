"""Which dead letters `guardq dlq replay` chooses, why each other one is skipped, and what a replayed
record carries: pure code, no broker and no Redis."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime

import pytest

from worker.failures.envelope import (
    H_ATTEMPTS,
    H_ERROR_CLASS,
    H_ERROR_MESSAGE,
    H_ERROR_REASON,
    H_FORCE,
    H_REPLAY_COUNT,
    H_REPLAY_TOKEN,
    H_REPLAYED_FROM,
    H_TRACEPARENT,
    H_VALUE_TRUNCATED_FROM,
    DeadLetterEnvelope,
    force_token,
    is_forced,
    replay_headers,
)
from worker.failures.listing import DeadLetter, Filter
from worker.failures.pacing import Pacer, Progress, parse_rate
from worker.failures.replay import ReplayOptions, Skip, Summary, plan

DLQ = "t.dlq"
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def envelope(**overrides: object) -> DeadLetterEnvelope:
    fields: dict[str, object] = {
        "original_topic": "t.requests",
        "original_partition": 2,
        "original_offset": 41,
        "original_timestamp": "2026-11-23T13:00:00.000Z",
        "error_class": "GuardRejected",
        "error_message": "400 Bad Request",
        "error_reason": "guard_rejected",
        "attempts": 1,
        "first_failed_at": "2026-11-23T13:00:01.000Z",
        "replay_count": 0,
        "traceparent": TRACEPARENT,
        "history": ({"at": "2026-11-23T13:00:01.000Z", "reason": "guard_rejected"},),
    }
    fields.update(overrides)
    return DeadLetterEnvelope(**fields)  # type: ignore[arg-type]


def letter(
    message_id: str,
    offset: int,
    *,
    partition: int = 0,
    extra_headers: tuple[tuple[str, bytes], ...] = (),
    **envelope_overrides: object,
) -> DeadLetter:
    env = envelope(**envelope_overrides)
    value = json.dumps({"id": message_id, "text": "t"}).encode()
    headers = (("tenant", b"acme"), *env.to_headers(), *extra_headers)
    return DeadLetter(partition, offset, 0, message_id.encode(), value, env, headers=headers)


def choose(letters: list[DeadLetter], **kwargs: object) -> dict[str, object]:
    options: dict[str, object] = {
        "replayed": set(),
        "with_verdict": set(),
        "max_replays": 3,
    }
    options.update(kwargs)
    result = plan(letters, **options)  # type: ignore[arg-type]
    return {
        "eligible": [x.coordinates for x in result.eligible],
        "skipped": {x.coordinates: cause for x, cause in result.skipped},
        "counts": result.skip_counts(),
    }


def test_every_pending_letter_without_verdict_below_the_loop_guard_is_eligible_in_order() -> None:
    letters = [letter("a", 0), letter("b", 1), letter("c", 0, partition=1)]
    assert choose(letters) == {"eligible": ["0:0", "0:1", "1:0"], "skipped": {}, "counts": {}}


def test_each_skip_cause_is_named_and_counted() -> None:
    foreign = DeadLetter(0, 9, 0, b"f", b"{}", None, problem="dead letter lacks header x")
    letters = [
        letter("replayed", 0),
        letter("looping", 1, replay_count=3),
        letter("decided", 2),
        letter("cut", 3, extra_headers=((H_VALUE_TRUNCATED_FROM, b"2000000"),)),
        foreign,
        letter("fine", 4),
    ]
    result = choose(letters, replayed={(0, 0)}, with_verdict={"decided"})
    assert result["eligible"] == ["0:4"]
    assert result["skipped"] == {
        "0:0": Skip.ALREADY_REPLAYED,
        "0:1": Skip.MAX_REPLAYS,
        "0:2": Skip.HAS_VERDICT,
        "0:3": Skip.VALUE_TRUNCATED,
        "0:9": Skip.NOT_GUARDQ,
    }
    assert result["counts"] == {
        "not_guardq": 1,
        "value_truncated": 1,
        "already_replayed": 1,
        "max_replays": 1,
        "has_verdict": 1,
    }


def test_force_takes_ids_with_a_verdict_but_never_passes_the_loop_guard_or_a_replayed_one() -> None:
    letters = [letter("decided", 0), letter("looping", 1, replay_count=3), letter("again", 2)]
    result = choose(letters, with_verdict={"decided", "looping", "again"}, force=True, replayed={(0, 2)})
    assert result["eligible"] == ["0:0"]
    assert result["skipped"] == {"0:1": Skip.MAX_REPLAYS, "0:2": Skip.ALREADY_REPLAYED}


def test_the_loop_guard_follows_max_replays() -> None:
    letters = [letter("a", 0, replay_count=1), letter("b", 1, replay_count=0)]
    assert choose(letters, max_replays=1)["skipped"] == {"0:0": Skip.MAX_REPLAYS}
    assert choose(letters, max_replays=2)["eligible"] == ["0:0", "0:1"]


def test_only_the_newest_eligible_letter_of_an_id_goes() -> None:
    letters = [letter("same", 0), letter("other", 1), letter("same", 2)]
    result = choose(letters)
    assert result["eligible"] == ["0:1", "0:2"]
    assert result["skipped"] == {"0:0": Skip.DUPLICATE_ID}
    # A replayed newer letter does not shadow an older pending one of the same id.
    assert choose(letters, replayed={(0, 2)})["eligible"] == ["0:0", "0:1"]


def test_letters_without_an_id_are_never_treated_as_duplicates() -> None:
    letters = [
        DeadLetter(0, offset, 0, None, b"not json", envelope(error_reason="invalid_json"), headers=())
        for offset in range(3)
    ]
    assert choose(letters, with_verdict={""})["eligible"] == ["0:0", "0:1", "0:2"]


def test_max_bounds_how_many_go_oldest_first_and_counts_the_rest() -> None:
    letters = [letter(f"m{i}", i) for i in range(5)]
    result = choose(letters, limit=2)
    assert result["eligible"] == ["0:0", "0:1"]
    assert result["counts"] == {"over_max": 3}
    assert choose(letters, limit=0)["eligible"] == []


def test_filters_select_by_reason_error_class_id_and_first_failure_time() -> None:
    early = letter("early", 0, first_failed_at="2026-11-01T00:00:00.000Z")
    other = letter("other", 1, error_reason="retries_exhausted", error_class="GuardUnavailable")
    plain = letter("plain", 2)
    letters = [early, other, plain]

    def ids(wanted: Filter) -> list[str]:
        return [x.message_id for x in letters if wanted.matches(x)]

    assert ids(Filter()) == ["early", "other", "plain"]
    assert ids(Filter(reason="guard_rejected")) == ["early", "plain"]
    assert ids(Filter(error_class="GuardUnavailable")) == ["other"]
    assert ids(Filter(ids={"plain", "early", "nope"})) == ["early", "plain"]
    assert ids(Filter(since=datetime(2026, 11, 20, tzinfo=UTC))) == ["other", "plain"]
    assert ids(Filter(until=datetime(2026, 11, 20, tzinfo=UTC))) == ["early"]
    foreign = DeadLetter(0, 9, 0, b"f", b"{}", None)
    assert not Filter(reason="guard_rejected").matches(foreign)
    assert Filter(ids={"f"}).matches(foreign)


def test_a_replayed_record_carries_the_original_headers_and_trace_and_a_fresh_retry_budget() -> None:
    chosen = letter("a", 7, partition=3, replay_count=1, extra_headers=((("guardq.retry.hop", b"2")),))
    assert chosen.envelope is not None
    headers = replay_headers(
        chosen.headers, chosen.envelope, replayed_from=chosen.coordinates, force=False, token="tok1"
    )
    by_name = dict(headers)
    assert headers[0] == ("tenant", b"acme")  # the producer's own header comes first, unchanged
    assert by_name[H_TRACEPARENT] == TRACEPARENT.encode()
    assert by_name[H_REPLAY_COUNT] == b"2"
    assert by_name[H_REPLAYED_FROM] == b"3:7"
    assert by_name[H_REPLAY_TOKEN] == b"tok1"
    assert by_name["guardq.original.topic"] == b"t.requests"
    assert by_name["guardq.original.partition"] == b"2"
    assert by_name["guardq.original.offset"] == b"41"
    assert by_name["guardq.original.timestamp"] == b"2026-11-23T13:00:00.000Z"
    assert by_name["guardq.first_failed_at"] == b"2026-11-23T13:00:01.000Z"
    assert json.loads(by_name["guardq.history"]) == list(chosen.envelope.history)
    for dropped in (H_ATTEMPTS, H_ERROR_CLASS, H_ERROR_MESSAGE, H_ERROR_REASON, H_FORCE, "guardq.retry.hop"):
        assert dropped not in by_name
    assert [name for name, _ in headers].count(H_TRACEPARENT) == 1
    assert not is_forced(headers)

    forced = replay_headers(
        chosen.headers, chosen.envelope, replayed_from=chosen.coordinates, force=True, token="tok2"
    )
    assert dict(forced)[H_FORCE] == b"1"
    assert is_forced(forced)
    assert force_token(forced) == "tok2"
    assert force_token(headers) is None  # not forced: its token proves provenance only


def test_is_forced_reads_only_the_exact_header() -> None:
    assert not is_forced(None)
    assert not is_forced([])
    assert not is_forced([(H_FORCE, b"0")])
    assert not is_forced([("guardq.forced", b"1"), (H_FORCE, None)])
    assert is_forced([("x", b"y"), (H_FORCE, b"1")])


@pytest.mark.parametrize(("raw", "expected"), [("50/s", 50.0), ("2", 2.0), (" 0.5 / s ", 0.5)])
def test_rate_accepts_records_per_second(raw: str, expected: float) -> None:
    assert parse_rate(raw) == expected


@pytest.mark.parametrize("raw", ["0", "0/s", "-1/s", "fast", "5/m", "", "inf"])
def test_rate_refuses_anything_else_in_one_line(raw: str) -> None:
    with pytest.raises(ValueError, match="is not a rate like 50/s") as caught:
        parse_rate(raw)
    assert "\n" not in str(caught.value)


async def test_pacer_spaces_records_by_the_rate_without_bursting() -> None:
    now = [100.0]
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(round(seconds, 6))
        now[0] += seconds

    pacer = Pacer(4.0, clock=lambda: now[0], sleep=sleep)
    for _ in range(3):
        await pacer.wait()
    assert slept == [0.25, 0.25]
    now[0] += 10  # idle for a while: no credit is saved up
    await pacer.wait()
    await pacer.wait()
    assert slept == [0.25, 0.25, 0.25]
    unpaced = Pacer(None, clock=lambda: now[0], sleep=sleep)
    for _ in range(100):
        await unpaced.wait()
    assert len(slept) == 3


def test_progress_is_a_redrawn_bar_on_a_terminal_and_plain_lines_elsewhere() -> None:
    terminal = io.StringIO()
    bar = Progress(terminal, 4, tty=True)
    bar.advance(1)
    bar.advance(3)
    bar.close()
    assert terminal.getvalue() == (
        "\rreplaying [#######.......................] 1/4\rreplaying [##############################] 4/4\n"
    )
    piped = io.StringIO()
    plain = Progress(piped, 200)
    for _ in range(200):
        plain.advance(1)
    plain.close()
    lines = piped.getvalue().splitlines()
    assert len(lines) == 10 and lines[0] == "replayed 20/200" and lines[-1] == "replayed 200/200"
    assert "\r" not in piped.getvalue()


def test_summary_counts_replayed_and_each_skip_cause() -> None:
    letters = [letter("a", 0), letter("b", 1), letter("c", 2, replay_count=3)]
    chosen = plan(letters, replayed=set(), with_verdict={"b"}, max_replays=3)
    assert Summary("t.requests", chosen, 1, dry_run=False).lines() == [
        "replayed 1 to t.requests",
        "skipped 2",
        "  max_replays        1",
        "  has_verdict        1",
    ]
    dry = Summary("t.requests", chosen, 0, dry_run=True).lines()
    assert dry[0] == "would replay 0:0 id=a guard_rejected #1"
    assert dry[1] == "would replay 1 to t.requests"
    assert ReplayOptions().filter == Filter()


def test_a_letter_with_a_bad_first_failure_time_matches_no_time_filter_and_breaks_nothing() -> None:
    good = letter("good", 1)
    junk = letter("junk", 2, first_failed_at="yesterday")
    naive = letter("naive", 3, first_failed_at="2026-11-23T13:00:01")
    since = Filter(since=datetime(2026, 11, 23, tzinfo=UTC))
    assert [x.message_id for x in (good, junk, naive) if since.matches(x)] == ["good", "naive"]
    assert all(Filter().matches(x) for x in (good, junk, naive))
    assert Filter(reason="guard_rejected").matches(junk)
