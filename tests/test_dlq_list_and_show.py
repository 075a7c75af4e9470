"""`guardq dlq list` and `guardq dlq show`: operators read the dead letters, filtered, to the end and no further."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest

from tests.conftest import SettingsFactory
from tests.helpers import (
    GuardSim,
    collect,
    publish,
    publish_raw,
    running_worker,
    settings_env,
    wait_for_verdicts,
)
from worker.settings import Settings

pytestmark = pytest.mark.integration


async def _guardq(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "worker",
        *args,
        env=settings_env(settings),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return subprocess.CompletedProcess(args, process.returncode, out.decode(), err.decode())


async def test_dlq_list_filters_by_reason_and_show_decodes_one_dead_letter(
    make_settings: SettingsFactory, guard_sim: GuardSim
) -> None:
    settings = make_settings()
    async with running_worker(settings):
        await publish_raw(settings, [(b"j", b"not json"), (b"e", b'{"id": "empty", "text": " "}')])
        await publish(settings, [{"id": "rejected", "text": "x [[sim:400]]"}, {"id": "fine", "text": "fine"}])
        await wait_for_verdicts(settings, ["fine"], timeout_s=30)
        await collect(settings, settings.dlq_topic, count=3, timeout_s=30)

    everything = await _guardq(settings, "dlq", "list")
    assert everything.returncode == 0, everything.stderr
    assert everything.stdout.strip().splitlines()[-1] == "3 dead letter(s)"
    assert everything.stdout.splitlines()[0].split()[:3] == ["AT", "ID", "REASON"]

    rejected = await _guardq(settings, "dlq", "list", "--reason", "guard_rejected", "--json")
    rows = [json.loads(line) for line in rejected.stdout.splitlines()]
    assert [row["id"] for row in rows] == ["rejected"]
    assert rows[0]["envelope"]["attempts"] == 1

    none_yet = await _guardq(settings, "dlq", "list", "--until", "2000-01-01T00:00:00Z")
    assert none_yet.stdout.strip().splitlines()[-1] == "0 dead letter(s)"

    shown = await _guardq(settings, "dlq", "show", "empty")
    detail = json.loads(shown.stdout)
    assert detail["envelope"]["reason"] == "empty_text"
    assert detail["envelope"]["original"]["topic"] == settings.input_topic
    at = f"{rows[0]['partition']}:{rows[0]['offset']}"
    assert json.loads((await _guardq(settings, "dlq", "show", at)).stdout)["id"] == "rejected"

    missing = await _guardq(settings, "dlq", "show", "no-such-id")
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines() == [
        "guardq: error: no dead letter at 'no-such-id' (give PARTITION:OFFSET or a message id)"
    ]


async def test_dlq_list_of_an_empty_dead_letter_topic_ends_by_itself(make_settings: SettingsFactory) -> None:
    settings = make_settings()
    assert (await _guardq(settings, "topics", "create")).returncode == 0
    listed = await _guardq(settings, "dlq", "list")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.strip().splitlines()[-1] == "0 dead letter(s)"
