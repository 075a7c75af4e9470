"""`guardq dlq replay` as a script runs it: no terminal, no prompt, paced by --rate, plain progress on stderr,
a summary on stdout, exit 0 when nothing is eligible, and a one-line error with exit 2 for a bad flag."""

from __future__ import annotations

import dataclasses
import json

import pytest

from tests.conftest import SettingsFactory
from tests.helpers import run_guardq
from worker.config.settings import Settings
from worker.failures.envelope import H_REPLAYED_FROM, DeadLetterEnvelope
from worker.failures.listing import read_all
from worker.kafka import clients as kafka

pytestmark = pytest.mark.integration


async def put_dead_letters(settings: Settings, count: int) -> None:
    """Dead letters as the worker writes them (original bytes, guardq's envelope), straight to the DLQ."""
    producer = kafka.make_producer(settings)
    await producer.start()
    try:
        for i in range(count):
            envelope = DeadLetterEnvelope(
                original_topic=settings.input_topic,
                original_partition=0,
                original_offset=i,
                original_timestamp="2026-11-23T13:00:00.000Z",
                error_class="GuardRejected",
                error_message="400 Bad Request",
                error_reason="guard_rejected",
                attempts=1,
                first_failed_at="2026-11-23T13:00:01.000Z",
                traceparent=f"00-{i + 1:032x}-00f067aa0ba902b7-01",
            )
            value = json.dumps({"id": f"c{i}", "text": f"cli {i}"}).encode()
            await producer.send_and_wait(
                settings.dlq_topic, value, key=f"c{i}".encode(), headers=envelope.to_headers()
            )
    finally:
        await producer.stop()


async def test_replay_is_paced_reports_plain_progress_and_stops_at_the_end_of_the_dlq(
    make_settings: SettingsFactory,
) -> None:
    settings = make_settings()
    assert (await run_guardq(settings, "topics", "create")).returncode == 0
    await put_dead_letters(settings, 10)

    dry = await run_guardq(settings, "dlq", "replay", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert len([line for line in dry.stdout.splitlines() if line.startswith("would replay ")]) == 11
    assert dry.stderr == ""  # nothing sent, so no progress

    paced = await run_guardq(settings, "dlq", "replay", "--rate", "20/s")
    assert paced.returncode == 0, paced.stderr
    assert paced.stdout.splitlines() == [f"replayed 10 to {settings.input_topic}", "skipped 0"]
    progress = paced.stderr.splitlines()
    assert progress and progress[-1] == "replayed 10/10" and "\r" not in paced.stderr

    republished = await read_all(dataclasses.replace(settings, dlq_topic=settings.input_topic))
    assert sorted(dict(x.headers)[H_REPLAYED_FROM].decode() for x in republished) == sorted(
        x.coordinates for x in await read_all(settings)
    )
    stamps = sorted(x.timestamp_ms for x in republished)
    spread_ms = stamps[-1] - stamps[0]
    assert spread_ms >= 9 * 50 - 20, f"10 records at 20/s went out within {spread_ms} ms"

    listed = await run_guardq(settings, "dlq", "list", "--pending")
    assert listed.stdout.strip().splitlines()[-1] == "0 dead letter(s)"
    everything = await run_guardq(settings, "dlq", "list")
    assert everything.stdout.strip().splitlines()[-1] == "10 dead letter(s)"  # replay deletes nothing

    nothing = await run_guardq(settings, "dlq", "replay")
    assert nothing.returncode == 0, nothing.stderr
    assert nothing.stdout.splitlines() == [
        f"replayed 0 to {settings.input_topic}",
        "skipped 10",
        "  already_replayed   10",
    ]


async def test_replay_of_an_empty_dead_letter_topic_exits_0(make_settings: SettingsFactory) -> None:
    settings = make_settings()
    assert (await run_guardq(settings, "topics", "create")).returncode == 0
    result = await run_guardq(settings, "dlq", "replay", "--reason", "guard_rejected", timeout_s=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"replayed 0 to {settings.input_topic}", "skipped 0"]


async def test_replay_of_a_missing_dead_letter_topic_is_a_one_line_error(
    make_settings: SettingsFactory,
) -> None:
    settings = make_settings()
    result = await run_guardq(settings, "dlq", "replay")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"guardq: error: topic {settings.dlq_topic!r} does not exist"]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--rate", "0/s"], "argument --rate: '0/s' is not a rate like 50/s"),
        (["--rate", "lots"], "argument --rate: 'lots' is not a rate like 50/s"),
        (["--max", "-3"], "argument --max: '-3' is not a whole number (0 or more)"),
        (["--since", "yesterday"], "argument --since: 'yesterday' is not an RFC 3339 time"),
        (["--reason", "nope"], "argument --reason: 'nope' is not a reason; one of: invalid_json"),
        (["--max-replays", "0"], "--max-replays='0': must be a positive integer"),
    ],
)
async def test_a_bad_replay_flag_is_one_line_and_exit_2(
    make_settings: SettingsFactory, flags: list[str], message: str
) -> None:
    result = await run_guardq(make_settings(), "dlq", "replay", *flags)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
