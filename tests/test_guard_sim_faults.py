"""The simulated guard's faults: markers in the text (503, 429, 400, overflow, garbage, truncation, hang,
counted, reset), random fault rates, latency distributions and capacity queueing."""

from __future__ import annotations

import asyncio
import random
import statistics
import time

import aiohttp
import pytest

from tests.simclient import MakeClient, chat, make_client, prompt, verdict_text
from worker.dev.sim.faults import CapacityGate, sample_latency_s, text_latency_s
from worker.dev.sim.server import SimConfig, classify

pytestmark = pytest.mark.integration

__all__ = ["make_client"]  # the fixture, used by name


# --- fault markers --------------------------------------------------------------------------------------


async def test_marker_503_is_service_unavailable(make_client: MakeClient) -> None:
    client = await make_client()
    resp = await chat(client, prompt("hello [[sim:503]]"))
    assert resp.status == 503


async def test_marker_429_sends_retry_after(make_client: MakeClient) -> None:
    client = await make_client(retry_after_s=3)
    resp = await chat(client, prompt("hello [[sim:429]]"))
    assert resp.status == 429
    assert resp.headers["Retry-After"] == "3"


async def test_marker_400_is_permanent_invalid_request(make_client: MakeClient) -> None:
    client = await make_client(error_shape="flat")
    for _ in range(3):
        resp = await chat(client, prompt("hello [[sim:400]]"))
        assert resp.status == 400
        body = await resp.json()
        assert (body["object"], body["type"], body["message"]) == (
            "error",
            "BadRequestError",
            "invalid request",
        )


async def test_marker_overflow_is_the_context_length_error(make_client: MakeClient) -> None:
    client = await make_client()
    resp = await chat(client, prompt("short [[sim:overflow]]"))
    assert resp.status == 400
    message = (await resp.json())["error"]["message"]
    assert message.startswith("This model's maximum context length is 32768 tokens. However, you requested")


async def test_marker_garbage_is_200_without_safety_line(make_client: MakeClient) -> None:
    client = await make_client()
    text = await verdict_text(client, prompt("[[sim:garbage]]"))
    assert "Safety:" not in text


async def test_marker_length_is_truncated_with_finish_reason_length(make_client: MakeClient) -> None:
    client = await make_client()
    messages = prompt("kill [[sim:length]]")
    resp = await chat(client, messages)
    choice = (await resp.json())["choices"][0]
    assert choice["finish_reason"] == "length"
    assert classify(messages).startswith(choice["message"]["content"])
    assert choice["message"]["content"] != classify(messages)


async def test_marker_hang_delays_then_answers_normally(make_client: MakeClient) -> None:
    client = await make_client(hang_s=0.2)
    started = time.monotonic()
    text = await verdict_text(client, prompt("[[sim:hang]]"))
    assert time.monotonic() - started >= 0.2
    assert text == "Safety: Safe\nCategories: None"


async def test_counted_marker_fails_first_two_calls_then_succeeds(make_client: MakeClient) -> None:
    client = await make_client()
    statuses = [(await chat(client, prompt("bomb [[sim:503x2]]"))).status for _ in range(3)]
    other = await chat(client, prompt("other [[sim:503x2]]"))
    assert statuses == [503, 503, 200]
    assert other.status == 503  # counted per content, not per marker


async def test_reset_marker_is_seen_by_client_as_disconnect(make_client: MakeClient) -> None:
    client = await make_client()
    with pytest.raises((aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)):
        await chat(client, prompt("[[sim:reset]]"))
    # The server itself is fine afterwards.
    assert (await chat(client, prompt("hi"))).status == 200
    stats = await (await client.get("/sim/stats")).json()
    assert stats["faults"]["reset"] == 1


# --- random faults, latency, capacity ---------------------------------------------------------------


async def test_random_faults_follow_rates_and_replay_after_reset(make_client: MakeClient) -> None:
    client = await make_client(fail_503_rate=0.5, seed=7)

    async def run() -> list[int]:
        return [(await chat(client, prompt(f"msg {i}"))).status for i in range(20)]

    first = await run()
    await client.post("/sim/reset")
    assert await run() == first
    assert set(first) == {200, 503}


async def test_rate_one_faults_every_call(make_client: MakeClient) -> None:
    client = await make_client(fail_429_rate=1.0)
    statuses = {(await chat(client, prompt(f"m{i}"))).status for i in range(5)}
    assert statuses == {429}


def test_lognormal_latency_mean_matches_configured_mean() -> None:
    config = SimConfig(latency_dist="lognormal", latency_mean_ms=20.0, latency_sigma=0.5)
    rng = random.Random(0)
    samples = [sample_latency_s(config, rng, "same text") for _ in range(300)]
    assert statistics.fmean(samples) == pytest.approx(0.020, rel=0.2)
    assert len(set(samples)) == 300


def test_latency_from_text_is_the_same_for_the_same_text_and_keeps_the_mean() -> None:
    config = SimConfig(
        latency_dist="lognormal", latency_mean_ms=20.0, latency_sigma=0.5, latency_from_text=True
    )
    texts = [f"message {i}" for i in range(2000)]
    first = [sample_latency_s(config, random.Random(1), text) for text in texts]
    again = [sample_latency_s(config, random.Random(2), text) for text in texts]
    assert first == again
    assert first[0] == text_latency_s("message 0", 20.0, 0.5)
    assert statistics.fmean(first) == pytest.approx(0.020, rel=0.1)
    assert len(set(first)) == 2000


def test_fixed_latency_is_latency_ms() -> None:
    assert sample_latency_s(SimConfig(latency_ms=250), random.Random(0), "text") == 0.25


async def test_reject_above_capacity_answers_429_instead_of_queueing(make_client: MakeClient) -> None:
    client = await make_client(capacity=2, latency_ms=300, reject_above_capacity=True)
    responses = await asyncio.gather(*(chat(client, prompt(f"call {i}")) for i in range(5)))
    assert sorted(r.status for r in responses) == [200, 200, 429, 429, 429]
    stats = await (await client.get("/sim/stats")).json()
    assert stats["faults"] == {"overload": 3} and stats["max_active"] == 2


async def test_capacity_queues_excess_calls_instead_of_rejecting(make_client: MakeClient) -> None:
    client = await make_client(capacity=2, latency_ms=200)
    started = time.monotonic()
    responses = await asyncio.gather(*(chat(client, prompt(f"call {i}")) for i in range(6)))
    elapsed = time.monotonic() - started
    assert [r.status for r in responses] == [200] * 6
    assert elapsed >= 0.6
    stats = await (await client.get("/sim/stats")).json()
    assert (stats["max_active"], stats["max_in_flight"], stats["in_flight"]) == (2, 6, 0)


async def test_cancelled_queued_call_does_not_leak_capacity() -> None:
    gate = CapacityGate(lambda: 1)
    await gate.acquire()
    queued = asyncio.create_task(gate.acquire())
    await asyncio.sleep(0)
    queued.cancel()
    with pytest.raises(asyncio.CancelledError):
        await queued
    gate.release()
    await asyncio.wait_for(gate.acquire(), timeout=1)
    assert gate.active == 1
