"""GUARDQ_OUTAGE_POLICY: once a guard outage outlasts GUARDQ_OUTAGE_AFTER_S, every message gets a
provisional verdict at once and is parked; when the guard is back each parked message gets its final
verdict, stored over the provisional one. Nothing is dead-lettered; a kill -9 loses no parked message."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

import pytest

from tests.conftest import SettingsFactory
from tests.helpers import (
    GuardSim,
    collect,
    publish,
    running_worker,
    spawn_worker,
    stored_verdicts,
    wait_until,
)
from worker.config.settings import Settings
from worker.dev.sim.verdicts import classify
from worker.failures.envelope import DeadLetterEnvelope
from worker.kafka import clients as kafka
from worker.kafka.reading import records

pytestmark = pytest.mark.integration

COUNT = 300


def _documents() -> list[dict[str, Any]]:
    texts = ["a harmless question {i}", "how to build a bomb {i}"]
    return [{"id": f"p{i}", "text": texts[i % 2].format(i=i)} for i in range(COUNT)]


def _expected_label(document: dict[str, Any]) -> str:
    reply = classify([{"role": "user", "content": document["text"]}])
    return reply.splitlines()[0].removeprefix("Safety: ").lower()


async def _verdicts_by_id(settings: Settings, *, want: int, final: bool, timeout_s: float) -> dict[str, Any]:
    """The latest verdict per id on the verdict topic, read until ``want`` ids have one of the kind."""
    import json

    latest: dict[str, dict[str, Any]] = {}
    stream = records(settings, settings.verdict_topic, from_beginning=True, timeout_s=timeout_s)
    async for record in stream:
        document = json.loads(record.value)
        if document.get("provisional", False) != (not final):
            continue
        latest[document["id"]] = document
        if len(latest) >= want:
            break
    await stream.aclose()
    return latest


async def test_an_outage_gives_provisional_verdicts_then_final_ones_when_the_guard_is_back(
    make_settings: SettingsFactory, guard_sim: GuardSim
) -> None:
    settings = make_settings(
        outage_policy="block",
        outage_after_s=3,
        concurrency=16,
        breaker_open_s=0.5,
        guard_backoff="100ms,500ms",
    )
    documents = _documents()
    await guard_sim.configure(fail_503_rate=1.0)  # down before the worker starts
    try:
        async with running_worker(settings) as worker:
            started = time.monotonic()
            await publish(settings, documents)
            provisional = await _verdicts_by_id(settings, want=COUNT, final=False, timeout_s=60)
            took_s = time.monotonic() - started
            assert len(provisional) == COUNT
            assert all(
                v["provisional"] is True
                and v["label"] is None
                and v["categories"] == []
                and v["action"] == "block"
                and v["reason"] == "guard_unavailable"
                and len(v["trace_id"]) == 32
                for v in provisional.values()
            )
            assert took_s < 3 + 20, f"provisional verdicts took {took_s:.1f} s"
            assert worker.breaker.in_fallback
            stored = await stored_verdicts(settings, [d["id"] for d in documents])
            assert all(v["provisional"] is True for v in stored.values()) and len(stored) == COUNT

            await guard_sim.configure(fail_503_rate=0.0)  # the guard is back
            final = await _verdicts_by_id(settings, want=COUNT, final=True, timeout_s=90)
        assert len(final) == COUNT
        for document in documents:
            verdict = final[document["id"]]
            assert verdict["label"] == _expected_label(document), document
            assert verdict["action"] == ("allow" if verdict["label"] == "safe" else "block")
            assert verdict["trace_id"] == provisional[document["id"]]["trace_id"]
        stored = await stored_verdicts(settings, [d["id"] for d in documents])
        assert all(v["provisional"] is False for v in stored.values()) and len(stored) == COUNT
        assert await collect(settings, settings.dlq_topic, count=1, timeout_s=2) == []
    finally:
        await guard_sim.configure(fail_503_rate=0.0)


async def test_a_worker_killed_in_the_outage_still_delivers_every_final_verdict(
    make_settings: SettingsFactory, guard_sim: GuardSim, tmp_path: Any
) -> None:
    settings = make_settings(
        outage_policy="block",
        outage_after_s=2,
        concurrency=16,
        breaker_open_s=0.5,
        guard_backoff="100ms,500ms",
    )
    documents = _documents()
    await guard_sim.configure(fail_503_rate=1.0)
    log = str(tmp_path / "worker.log")
    await kafka.ensure_topics(settings)  # read below before the worker may have made them
    try:
        first = spawn_worker(settings, log)
        await publish(settings, documents)
        # Killed once some provisional verdicts are out (and so some messages parked), others not yet.
        await _verdicts_by_id(settings, want=COUNT // 3, final=False, timeout_s=60)
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=10)
        await guard_sim.configure(fail_503_rate=0.0)
        second = spawn_worker(settings, log)
        try:
            final = await _verdicts_by_id(settings, want=COUNT, final=True, timeout_s=120)
        finally:
            second.send_signal(signal.SIGTERM)
            await asyncio.to_thread(second.wait, 30)
        assert len(final) == COUNT
        assert all(final[d["id"]]["label"] == _expected_label(d) for d in documents)
        stored = await stored_verdicts(settings, [d["id"] for d in documents])
        assert len(stored) == COUNT and not any(v["provisional"] for v in stored.values())
        assert await collect(settings, settings.dlq_topic, count=1, timeout_s=2) == []
    finally:
        await guard_sim.configure(fail_503_rate=0.0)


async def test_an_id_with_a_final_verdict_never_gets_a_provisional_one(
    make_settings: SettingsFactory, guard_sim: GuardSim
) -> None:
    settings = make_settings(
        outage_policy="allow", outage_after_s=1, breaker_open_s=0.5, guard_backoff="100ms,500ms"
    )
    async with running_worker(settings):
        await publish(settings, [{"id": "known", "text": "judged before"}])
        await wait_until(lambda: _has_final(settings, "known"), timeout_s=30, what="the verdict of 'known'")
        await guard_sim.configure(fail_503_rate=1.0)
        try:
            await publish(settings, [{"id": f"new{i}", "text": f"new text {i}"} for i in range(10)])
            await _verdicts_by_id(settings, want=10, final=False, timeout_s=60)
            await publish(settings, [{"id": "known", "text": "judged before"}])  # redelivered in the outage
            again = await collect(settings, settings.verdict_topic, count=12, timeout_s=30)
        finally:
            await guard_sim.configure(fail_503_rate=0.0)
    import json

    known = [json.loads(r.value) for r in again if json.loads(r.value)["id"] == "known"]
    assert len(known) == 2 and all(v["provisional"] is False and v["label"] == "safe" for v in known)


async def _has_final(settings: Settings, message_id: str) -> bool:
    stored = await stored_verdicts(settings, [message_id])
    return message_id in stored and stored[message_id]["provisional"] is False


async def test_a_record_too_large_to_park_is_dead_lettered_after_its_provisional_verdict(
    make_settings: SettingsFactory, guard_sim: GuardSim
) -> None:
    # The broker takes 4 KiB: the input record fits, the same bytes with guardq's park headers do not.
    settings = make_settings(
        outage_policy="review",
        outage_after_s=0,
        breaker_open_s=0.5,
        guard_backoff="100ms,200ms",
        kafka_max_message_bytes=4096,
    )
    await guard_sim.configure(fail_503_rate=1.0)
    try:
        async with running_worker(settings):
            await publish(settings, [{"id": "big", "text": "x" * 3500}, {"id": "small", "text": "hello"}])
            dead = await collect(settings, settings.dlq_topic, count=1, timeout_s=60)
            provisional = await _verdicts_by_id(settings, want=2, final=False, timeout_s=60)
            parked = await collect(settings, settings.parked_topic, count=1, timeout_s=30)
    finally:
        await guard_sim.configure(fail_503_rate=0.0)
    assert [record.key for record in dead] == [b"big"]
    envelope = DeadLetterEnvelope.from_headers(dead[0].headers)
    assert "cannot be parked: too large" in envelope.error_message
    assert set(provisional) == {"big", "small"}  # the caller got an answer for both
    assert provisional["big"]["action"] == "review"
    assert [record.key for record in parked] == [b"small"]
