"""`guardq dlq replay` republishes exactly the chosen dead letters, once each, with their original bytes and
trace: they get verdicts under the publisher's trace id, drop out of `dlq list --pending`, are not
replayed twice, a dry run sends nothing, an id with a verdict needs --force, and the loop guard holds."""

from __future__ import annotations

import dataclasses
import json
import uuid

import pytest

from tests.conftest import SettingsFactory
from tests.helpers import (
    GuardSim,
    publish,
    publish_raw,
    run_guardq,
    running_worker,
    stored_verdicts,
    wait_for_verdicts,
    wait_until,
)
from worker.config.settings import Settings
from worker.failures.envelope import (
    H_ATTEMPTS,
    H_ERROR_REASON,
    H_FORCE,
    H_REPLAY_COUNT,
    H_REPLAYED_FROM,
    H_TRACEPARENT,
)
from worker.failures.listing import DeadLetter, Filter, read_all
from worker.failures.replay import ReplayOptions, Summary, pending, replay

pytestmark = pytest.mark.integration


async def topic_records(settings: Settings, topic: str) -> list[DeadLetter]:
    """Every record of ``topic`` read to its highwater marks (the DLQ reader pointed at another topic)."""
    return await read_all(dataclasses.replace(settings, dlq_topic=topic))


async def replayed_records(settings: Settings) -> dict[str, DeadLetter]:
    """Records replay put on the input topic, by the DLQ coordinates they came from."""
    found = {}
    for record in await topic_records(settings, settings.input_topic):
        origin = dict(record.headers).get(H_REPLAYED_FROM)
        if origin is not None:
            found[origin.decode()] = record
    return found


async def wait_for_letters(settings: Settings, count: int) -> list[DeadLetter]:
    letters: list[DeadLetter] = []

    async def enough() -> bool:
        letters[:] = await read_all(settings)
        return len(letters) >= count

    await wait_until(enough, timeout_s=45, what=f"{count} dead letters")
    return letters


async def replay_ids(settings: Settings, *ids: str, **options: object) -> Summary:
    return await replay(settings, ReplayOptions(filter=Filter(ids=set(ids)), **options))  # type: ignore[arg-type]


async def test_dlq_replay_republishes_only_the_chosen_subset_once(
    make_settings: SettingsFactory, guard_sim: GuardSim
) -> None:
    settings = make_settings()
    run = uuid.uuid4().hex[:8]
    rejected = [{"id": f"r{i}", "text": f"[[sim:400x1]] replay {run} {i}"} for i in range(6)]
    async with running_worker(settings):
        sent = {p.id: p for p in await publish(settings, [*rejected, {"id": "ok", "text": "fine"}])}
        await publish_raw(settings, [(b"bad1", b"{not json"), (b"bad2", b"[1, 2")])
        await wait_for_verdicts(settings, ["ok"], timeout_s=30)
        letters = {x.message_id: x for x in await wait_for_letters(settings, 8)}
        assert letters["r0"].envelope and letters["r0"].envelope.error_reason == "guard_rejected"

        # A dry run decides but sends and marks nothing.
        dry = await replay_ids(settings, "r0", "r1", dry_run=True)
        assert sorted(x.message_id for x in dry.plan.eligible) == ["r0", "r1"] and dry.replayed == 0
        assert len(await topic_records(settings, settings.input_topic)) == 9
        assert len(await pending(settings, list(letters.values()))) == 8

        # In-process replay of two ids: their original bytes and trace go back; they get verdicts.
        first = await replay_ids(settings, "r0", "r1")
        assert first.replayed == 2 and first.plan.skip_counts() == {}
        verdicts = await wait_for_verdicts(settings, ["r0", "r1"], timeout_s=30)
        assert {i: verdicts[i]["trace_id"] for i in verdicts} == {i: sent[i].trace_id for i in ("r0", "r1")}
        republished = await replayed_records(settings)
        assert set(republished) == {letters["r0"].coordinates, letters["r1"].coordinates}
        for message_id in ("r0", "r1"):
            record, letter = republished[letters[message_id].coordinates], letters[message_id]
            headers = dict(record.headers)
            assert (record.key, record.value) == (letter.key, letter.value)
            assert headers[H_REPLAY_COUNT] == b"1"
            assert letter.envelope and headers[H_TRACEPARENT].decode() == letter.envelope.traceparent
            assert H_ATTEMPTS not in headers and H_ERROR_REASON not in headers and H_FORCE not in headers

        # The CLI picks pending guard_rejected letters only, at most --max of them.
        by_cli = await run_guardq(settings, "dlq", "replay", "--reason", "guard_rejected", "--max", "2")
        assert by_cli.returncode == 0, by_cli.stderr
        summary = by_cli.stdout.splitlines()
        assert summary[0] == f"replayed 2 to {settings.input_topic}"
        assert "  already_replayed   2" in summary and "  over_max           2" in summary
        republished = await replayed_records(settings)
        replayed_ids = {x.message_id for x in republished.values()}
        assert len(republished) == 4 and replayed_ids >= {"r0", "r1"}
        await wait_for_verdicts(settings, replayed_ids, timeout_s=30)

        listed = await run_guardq(settings, "dlq", "list", "--pending", "--json")
        assert listed.returncode == 0, listed.stderr
        still = {json.loads(line)["id"] for line in listed.stdout.splitlines()}
        assert still == ({f"r{i}" for i in range(6)} - replayed_ids) | {"bad1", "bad2"}

        # The same selection again replays nothing and exits 0.
        again = await replay_ids(settings, "r0", "r1")
        assert again.replayed == 0 and again.plan.skip_counts() == {"already_replayed": 2}
        id_flags = [flag for message_id in sorted(replayed_ids) for flag in ("--id", message_id)]
        by_cli_again = await run_guardq(settings, "dlq", "replay", *id_flags)
        assert by_cli_again.returncode == 0, by_cli_again.stderr
        assert by_cli_again.stdout.splitlines() == [
            f"replayed 0 to {settings.input_topic}",
            "skipped 4",
            "  already_replayed   4",
        ]
        assert len(await replayed_records(settings)) == 4

        await _an_id_with_a_verdict_needs_force(settings, run)
        await _the_loop_guard_refuses_a_letter_replayed_max_times(settings, letters["bad1"])

    everything = await stored_verdicts(settings, [f"r{i}" for i in range(6)])
    assert set(everything) == replayed_ids  # exactly the replayed ones were moderated


async def _an_id_with_a_verdict_needs_force(settings: Settings, run: str) -> None:
    await publish(settings, [{"id": "v", "text": f"[[sim:400x1]] verdict {run}"}])
    letter = next(x for x in await wait_for_letters(settings, 9) if x.message_id == "v")
    await publish(settings, [{"id": "v", "text": f"a fine text {run}"}])  # the id gets its verdict now
    await wait_for_verdicts(settings, ["v"], timeout_s=30)

    skipped = await replay_ids(settings, "v")
    assert skipped.replayed == 0 and skipped.plan.skip_counts() == {"has_verdict": 1}
    forced = await run_guardq(settings, "dlq", "replay", "--id", "v", "--force")
    assert forced.returncode == 0, forced.stderr
    assert forced.stdout.splitlines()[0] == f"replayed 1 to {settings.input_topic}"
    record = (await replayed_records(settings))[letter.coordinates]
    assert dict(record.headers)[H_FORCE] == b"1"


async def _the_loop_guard_refuses_a_letter_replayed_max_times(settings: Settings, bad: DeadLetter) -> None:
    assert (await replay_ids(settings, "bad1")).replayed == 1
    again: list[DeadLetter] = []

    async def dead_again() -> bool:
        again[:] = [
            x
            for x in await read_all(settings)
            if x.message_id == "bad1" and x.envelope is not None and x.envelope.replay_count == 1
        ]
        return bool(again)

    await wait_until(
        dead_again, timeout_s=30, what="the replayed malformed message to be dead-lettered again"
    )
    envelope, original = again[0].envelope, bad.envelope
    assert envelope is not None and original is not None
    assert (envelope.original_topic, envelope.original_offset) == (
        settings.input_topic,
        original.original_offset,
    )
    assert len(envelope.history) == 2

    guarded = await replay_ids(dataclasses.replace(settings, max_replays=1), "bad1")
    assert guarded.replayed == 0
    assert guarded.plan.skip_counts() == {"already_replayed": 1, "max_replays": 1}
    refused = await run_guardq(settings, "dlq", "replay", "--id", "bad1", "--max-replays", "1")
    assert refused.returncode == 0, refused.stderr
    assert refused.stdout.splitlines()[0] == f"replayed 0 to {settings.input_topic}"
    assert "  max_replays        1" in refused.stdout.splitlines()
