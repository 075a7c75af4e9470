"""`guardq dlq list` and `guardq dlq show`: operators read the dead letters, filtered, to the end and no further."""

from __future__ import annotations

import json

import pytest

from tests.conftest import SettingsFactory
from tests.helpers import (
    GuardSim,
    collect,
    publish,
    publish_raw,
    run_guardq,
    running_worker,
    wait_for_verdicts,
)

pytestmark = pytest.mark.integration


async def test_dlq_list_filters_by_reason_and_show_decodes_one_dead_letter(
    make_settings: SettingsFactory, guard_sim: GuardSim
) -> None:
    settings = make_settings()
    async with running_worker(settings):
        await publish_raw(settings, [(b"j", b"not json"), (b"e", b'{"id": "empty", "text": " "}')])
        await publish(settings, [{"id": "rejected", "text": "x [[sim:400]]"}, {"id": "fine", "text": "fine"}])
        await wait_for_verdicts(settings, ["fine"], timeout_s=30)
        await collect(settings, settings.dlq_topic, count=3, timeout_s=30)

    everything = await run_guardq(settings, "dlq", "list")
    assert everything.returncode == 0, everything.stderr
    assert everything.stdout.strip().splitlines()[-1] == "3 dead letter(s)"
    assert everything.stdout.splitlines()[0].split()[:3] == ["AT", "ID", "REASON"]

    rejected = await run_guardq(settings, "dlq", "list", "--reason", "guard_rejected", "--json")
    rows = [json.loads(line) for line in rejected.stdout.splitlines()]
    assert [row["id"] for row in rows] == ["rejected"]
    assert rows[0]["envelope"]["attempts"] == 1

    none_yet = await run_guardq(settings, "dlq", "list", "--until", "2000-01-01T00:00:00Z")
    assert none_yet.stdout.strip().splitlines()[-1] == "0 dead letter(s)"

    shown = await run_guardq(settings, "dlq", "show", "empty")
    detail = json.loads(shown.stdout)
    assert detail["envelope"]["reason"] == "empty_text"
    assert detail["envelope"]["original"]["topic"] == settings.input_topic
    at = f"{rows[0]['partition']}:{rows[0]['offset']}"
    assert json.loads((await run_guardq(settings, "dlq", "show", at)).stdout)["id"] == "rejected"

    # replay's filters: --max, --error-class, --id
    first_two = await run_guardq(settings, "dlq", "list", "--max", "2", "--json")
    assert len(first_two.stdout.splitlines()) == 2
    by_class = await run_guardq(settings, "dlq", "list", "--error-class", "GuardRejected", "--json")
    assert [json.loads(line)["id"] for line in by_class.stdout.splitlines()] == ["rejected"]
    by_id = await run_guardq(settings, "dlq", "list", "--id", "empty", "--id", "fine")
    assert by_id.stdout.strip().splitlines()[-1] == "1 dead letter(s)"
    past_the_end = await run_guardq(settings, "dlq", "show", f"{rows[0]['partition']}:999999")
    assert past_the_end.returncode == 2

    missing = await run_guardq(settings, "dlq", "show", "no-such-id")
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines() == [
        "guardq: error: no dead letter at 'no-such-id' (give PARTITION:OFFSET or a message id)"
    ]


async def test_dlq_list_of_an_empty_dead_letter_topic_ends_by_itself(make_settings: SettingsFactory) -> None:
    settings = make_settings()
    assert (await run_guardq(settings, "topics", "create")).returncode == 0
    listed = await run_guardq(settings, "dlq", "list")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.strip().splitlines()[-1] == "0 dead letter(s)"


async def test_dlq_list_pending_leaves_out_what_was_replayed_and_nothing_is_deleted(
    make_settings: SettingsFactory,
) -> None:
    settings = make_settings()
    async with running_worker(settings):
        await publish_raw(settings, [(b"j1", b"{not json"), (b"j2", b"[1, 2")])
        await collect(settings, settings.dlq_topic, count=2, timeout_s=30)

    before = await run_guardq(settings, "dlq", "list", "--pending", "--json")
    assert before.returncode == 0, before.stderr
    assert sorted(json.loads(line)["id"] for line in before.stdout.splitlines()) == ["j1", "j2"]

    replayed = await run_guardq(settings, "dlq", "replay", "--id", "j1")
    assert replayed.returncode == 0, replayed.stderr
    after = await run_guardq(settings, "dlq", "list", "--pending", "--json")
    assert [json.loads(line)["id"] for line in after.stdout.splitlines()] == ["j2"]
    pending_table = await run_guardq(settings, "dlq", "list", "--pending", "--reason", "invalid_json")
    assert pending_table.stdout.strip().splitlines()[-1] == "1 dead letter(s)"
    everything = await run_guardq(settings, "dlq", "list")
    assert everything.stdout.strip().splitlines()[-1] == "2 dead letter(s)"


async def test_dlq_list_with_a_bad_time_is_a_one_line_error(make_settings: SettingsFactory) -> None:
    result = await run_guardq(make_settings(), "dlq", "list", "--since", "last tuesday")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "guardq dlq list: error: argument --since: 'last tuesday' is not an RFC 3339 time like 2026-11-23T13:00:00Z"
    ]
